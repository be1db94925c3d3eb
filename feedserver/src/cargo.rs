//! Cargo feeds: a sparse registry (RFC 2789) and the publish, yank and unyank web API.
//!
//! Under `/feeds/NAME/`:
//!
//! | path | what |
//! | --- | --- |
//! | `GET config.json` | `dl` and `api` pointing back at this feed |
//! | `GET 1/a`, `2/ab`, `3/a/abc`, `ab/cd/abcd...` | the index file of a crate: one JSON line per version |
//! | `GET api/v1/crates/NAME/VERSION/download` | the `.crate` |
//! | `PUT api/v1/crates/new` | `cargo publish`: the JSON metadata and the `.crate`, each after a 32-bit little-endian length |
//! | `DELETE api/v1/crates/NAME/VERSION/yank`, `PUT .../unyank` | `cargo yank [--undo]` |
//!
//! A version's index line is built at publish time from the publish JSON (dependencies,
//! features, `links`, `rust_version`) and the `.crate`'s sha256, and kept in the version's
//! manifest, so a replica serves the same line. Yanking amends the manifest. The `.crate` must
//! be a gzip tarball whose `Cargo.toml` names the same crate and version as the JSON.

use std::io::{Cursor, Read};
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::Request;
use axum::http::{header, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use cairn_store::doc::{Ecosystem, Manifest};
use cairn_store::names;
use cairn_store::package::{self, DigestingReader, PackageFormat};
use cairn_store::store::{NewFile, NewPackage, PublishOutcome};
use ciborium::Value;
use serde_json::json;

use crate::auth::Access;
use crate::blocking::now_secs;
use crate::connector::{Connector, UpstreamError};
use crate::{blocking, ApiError, FeedRequest, FeedServer};
use cairn_store::store::FeedRecord;

/// Largest publish JSON accepted.
const MAX_PUBLISH_JSON: u32 = 1 << 20;
/// Metadata key of a version's index line (JSON text).
const INDEX_LINE: &str = "cargo_index_line";
/// Metadata key of a yank.
const YANKED: &str = "yanked";

/// Answers a request for `rest` (the path after `/feeds/NAME/`) of a Cargo feed.
pub(crate) async fn handle(
    server: &Arc<FeedServer>,
    req: FeedRequest<'_>,
    request: Request,
) -> Result<Response, ApiError> {
    let FeedRequest {
        feed,
        method,
        headers,
        rest,
    } = req;
    let segments: Vec<&str> = rest.split('/').collect();
    match (&method, segments.as_slice()) {
        (&Method::GET, ["config.json"]) => {
            let base = format!("{}/feeds/{}", crate::client_origin(&headers)?, feed.name);
            let mut config = json!({
                "dl": format!("{base}/api/v1/crates"),
                "api": base,
            });
            if !server.config().anonymous_read(&feed.name) {
                config["auth-required"] = json!(true);
            }
            Ok(axum::Json(config).into_response())
        }
        (&Method::PUT, ["api", "v1", "crates", "new"]) => {
            server.authorize(&headers, &feed.name, Access::Publish)?;
            server.check_writable(&feed.name)?;
            let limit = usize::try_from(server.config().max_upload_bytes()).unwrap_or(usize::MAX);
            let body = axum::body::to_bytes(request.into_body(), limit)
                .await
                .map_err(|e| {
                    ApiError::new(
                        StatusCode::PAYLOAD_TOO_LARGE,
                        format!("the publish body could not be read whole: {e}"),
                    )
                })?;
            let (s, f) = (server.clone(), feed.name.clone());
            let warnings = blocking(move || publish(&s, &f, body)).await?;
            Ok(axum::Json(json!({ "warnings": warnings })).into_response())
        }
        (&Method::DELETE | &Method::PUT, ["api", "v1", "crates", name, version, action])
            if matches!(*action, "yank" | "unyank") =>
        {
            let yank = *action == "yank";
            if yank != (method == Method::DELETE) {
                return Err(ApiError::new(
                    StatusCode::METHOD_NOT_ALLOWED,
                    "yank is DELETE, unyank is PUT",
                ));
            }
            server.authorize(&headers, &feed.name, Access::Publish)?;
            server.check_writable(&feed.name)?;
            let (s, f, n, v) = (
                server.clone(),
                feed.name.clone(),
                name.to_string(),
                version.to_string(),
            );
            blocking(move || set_yanked(&s, &f, &n, &v, yank)).await?;
            Ok(axum::Json(json!({ "ok": true })).into_response())
        }
        (&Method::GET | &Method::HEAD, ["api", "v1", "crates", name, version, "download"]) => {
            server.authorize(&headers, &feed.name, Access::Read)?;
            names::check_package_name(Ecosystem::Cargo, name)?;
            names::check_version(version)?;
            let head = method == Method::HEAD;
            let (s, f, n) = (server.clone(), feed.name.clone(), name.to_string());
            let stored = blocking(move || Ok(stored_name(&s, &f, &n)?.unwrap_or(n))).await?;
            match serve_crate(server, &feed, &stored, version, &headers, head).await {
                Err(e) if e.status == StatusCode::NOT_FOUND => {
                    let (s, f, n) = (server.clone(), feed.clone(), name.to_string());
                    let key = crate_key(name);
                    let upstream =
                        blocking(move || s.upstream_for(&f, &n, |x| crate_key(x) == key)).await?;
                    let Some(c) = upstream else {
                        return Err(e);
                    };
                    let stored = cache_from_upstream(server, &feed, &c, name, version).await?;
                    serve_crate(server, &feed, &stored, version, &headers, head).await
                }
                other => other,
            }
        }
        (&Method::GET, path) if is_index_path(path) => {
            server.authorize(&headers, &feed.name, Access::Read)?;
            let name = path.last().copied().unwrap_or("").to_owned();
            names::check_package_name(Ecosystem::Cargo, &name)?;
            let (s, f, n) = (server.clone(), feed.clone(), name.clone());
            let key = crate_key(&name);
            let upstream =
                blocking(move || s.upstream_for(&f, &n, |x| crate_key(x) == key)).await?;
            let (lines, note) = match upstream {
                Some(c) => upstream_index(server, &feed, &name, &c).await?,
                None => {
                    let (s, f) = (server.clone(), feed.name.clone());
                    let lines = blocking(move || {
                        let record = s.store().feed(&f)?;
                        let key = format!("cargo-index {name}");
                        s.rendered(&record, &key, || index_lines(&s, &f, &name))
                    })
                    .await?;
                    (lines.to_string(), None)
                }
            };
            if lines.is_empty() {
                return Err(ApiError::not_found(format!(
                    "no crate `{}` in feed `{}`",
                    path.last().copied().unwrap_or(""),
                    feed.name
                )));
            }
            let response =
                ([(header::CONTENT_TYPE, "text/plain; charset=utf-8")], lines).into_response();
            Ok(crate::connector::with_note(response, note))
        }
        _ => Err(ApiError::not_found(format!(
            "no such Cargo registry resource `{rest}` in feed `{}`",
            feed.name
        ))),
    }
}

/// The `.crate` of `name` (as stored) `version`.
async fn serve_crate(
    server: &Arc<FeedServer>,
    feed: &FeedRecord,
    name: &str,
    version: &str,
    headers: &axum::http::HeaderMap,
    head: bool,
) -> Result<Response, ApiError> {
    crate::pypi::serve_file(
        server,
        feed,
        Ecosystem::Cargo,
        name,
        version,
        &format!("{name}-{version}.crate"),
        headers,
        head,
        "application/x-tar",
    )
    .await
}

/// The index directory of a crate name (lowercased): `1/a`, `2/ab`, `3/a/abc`, `ab/cd/abcd`.
pub fn index_path(name: &str) -> String {
    let n = name.to_ascii_lowercase();
    match n.len() {
        1 => format!("1/{n}"),
        2 => format!("2/{n}"),
        3 => format!("3/{}/{n}", &n[..1]),
        _ => format!("{}/{}/{n}", &n[..2], &n[2..4]),
    }
}

fn is_index_path(path: &[&str]) -> bool {
    let Some(name) = path.last() else {
        return false;
    };
    let joined = path.join("/");
    !name.is_empty() && name.is_ascii() && joined == index_path(name)
}

/// Crate names are unique regardless of case and of `-` against `_`.
pub(crate) fn crate_key(name: &str) -> String {
    name.to_ascii_lowercase().replace('_', "-")
}

fn manifests(server: &FeedServer, feed: &str, name: &str) -> Result<Vec<Manifest>, ApiError> {
    let wanted = crate_key(name);
    server.manifests(feed, |n| crate_key(n) == wanted)
}

/// The spelling a crate was first published with, if it is here.
fn stored_name(server: &FeedServer, feed: &str, name: &str) -> Result<Option<String>, ApiError> {
    Ok(manifests(server, feed, name)?
        .into_iter()
        .next()
        .map(|m| m.name))
}

fn index_lines(server: &FeedServer, feed: &str, name: &str) -> Result<String, ApiError> {
    let blocks = server.blocklist.get(server.store())?;
    let now = now_secs();
    let mut versions = manifests(server, feed, name)?;
    let hidden = server.hidden_cached(feed, &crate_key(name), &versions);
    versions.retain(|m| !hidden.hides(m));
    versions.sort_by(|a, b| crate::versions::compare(&a.version, &b.version));
    let mut out = String::new();
    for m in versions {
        let Some(Value::Text(line)) = m.metadata.get(INDEX_LINE) else {
            continue;
        };
        let mut line: serde_json::Value = serde_json::from_str(line).map_err(|e| {
            ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                format!(
                    "stored index line of {} {} is not JSON: {e}",
                    m.name, m.version
                ),
            )
        })?;
        // A version a blocking assessment covers is offered as yanked: resolvers keep away
        // from it, and its download is refused anyway.
        let yanked = matches!(m.metadata.get(YANKED), Some(Value::Bool(true)))
            || blocks
                .check(feed, Ecosystem::Cargo, &m.name, &m.version, now)
                .is_some();
        line["yanked"] = json!(yanked);
        out.push_str(&line.to_string());
        out.push('\n');
    }
    Ok(out)
}

fn read_u32(r: &mut Cursor<&[u8]>, what: &str) -> Result<u32, ApiError> {
    let mut b = [0u8; 4];
    r.read_exact(&mut b).map_err(|_| {
        ApiError::bad_request(format!("the publish body ends before the length of {what}"))
    })?;
    Ok(u32::from_le_bytes(b))
}

fn take<'a>(r: &mut Cursor<&'a [u8]>, len: u32, what: &str) -> Result<&'a [u8], ApiError> {
    let all: &'a [u8] = r.get_ref();
    let start = usize::try_from(r.position()).unwrap_or(usize::MAX);
    let end = start.saturating_add(len as usize);
    let bytes = all.get(start..end).ok_or_else(|| {
        ApiError::bad_request(format!(
            "the publish body declares {len} bytes of {what} but holds {}",
            all.len().saturating_sub(start)
        ))
    })?;
    r.set_position(end as u64);
    Ok(bytes)
}

fn publish(server: &FeedServer, feed: &str, body: Bytes) -> Result<serde_json::Value, ApiError> {
    let mut r = Cursor::new(&body[..]);
    let json_len = read_u32(&mut r, "the metadata")?;
    if json_len > MAX_PUBLISH_JSON {
        return Err(ApiError::bad_request(format!(
            "the publish metadata declares {json_len} bytes; at most {MAX_PUBLISH_JSON} are accepted"
        )));
    }
    let meta: serde_json::Value = serde_json::from_slice(take(&mut r, json_len, "metadata")?)
        .map_err(|e| ApiError::bad_request(format!("the publish metadata is not JSON: {e}")))?;
    let crate_len = read_u32(&mut r, "the .crate")?;
    let crate_bytes = take(&mut r, crate_len, ".crate")?;
    if r.position() != body.len() as u64 {
        return Err(ApiError::bad_request(format!(
            "{} bytes follow the .crate in the publish body",
            body.len() as u64 - r.position()
        )));
    }
    let field = |k: &str| {
        meta.get(k)
            .and_then(|v| v.as_str())
            .map(str::to_owned)
            .ok_or_else(|| ApiError::bad_request(format!("the publish metadata has no `{k}`")))
    };
    let (name, version) = (field("name")?, field("vers")?);
    names::check_package_name(Ecosystem::Cargo, &name)?;
    names::check_version(&version)?;
    let info = package::inspect(PackageFormat::Crate, Cursor::new(crate_bytes))
        .map_err(|e| ApiError::bad_request(format!("the .crate: {e}")))?;
    if info.name != name || info.version != version {
        return Err(ApiError::bad_request(format!(
            "the publish metadata names {name} {version} but the .crate's Cargo.toml is {} {}",
            info.name, info.version
        )));
    }
    if let Some(existing) = stored_name(server, feed, &name)? {
        if existing != name {
            return Err(ApiError::bad_request(format!(
                "crate `{existing}` exists; `{name}` differs from it only by case or `-`/`_`"
            )));
        }
    }
    let store = server.store();
    let mut reader = DigestingReader::new(crate_bytes, Ecosystem::Cargo);
    let stored = store.put_blob(&mut reader)?;
    let digests = reader.finish();
    let cksum = digests.get("sha256").cloned().unwrap_or_default();
    let line = index_line(&meta, &name, &version, &cksum);
    let mut metadata = info.metadata;
    metadata.insert(INDEX_LINE.into(), Value::Text(line.to_string()));
    let published = store.publish(
        feed,
        NewPackage {
            name: name.clone(),
            version: version.clone(),
            files: vec![NewFile {
                name: format!("{name}-{version}.crate"),
                blob: stored.hash,
                size: stored.size,
                digests,
            }],
            metadata,
        },
    )?;
    drop(stored);
    if published.outcome == PublishOutcome::Unchanged {
        return Ok(
            json!({ "other": [format!("{name} {version} was already published with these bytes")] }),
        );
    }
    tracing::info!(feed, %name, %version, "published crate");
    Ok(json!({ "invalid_categories": [], "invalid_badges": [], "other": [] }))
}

/// The metadata entry that lists a crate in the sparse index, for a `.crate` stored without
/// cargo (`cairn push`): built from its normalized `Cargo.toml` as cargo builds its publish
/// request, so the index line is the one a `cargo publish` of the same file gives. `cksum` is
/// the file's SHA-256 (hex).
pub fn pushed_crate_metadata(
    dot_crate: impl Read,
    cksum: &str,
) -> Result<(String, Value), package::PackageError> {
    let meta = package::crate_publish_metadata(dot_crate)?;
    let field = |k: &str| meta[k].as_str().unwrap_or_default().to_owned();
    let line = index_line(&meta, &field("name"), &field("vers"), cksum);
    Ok((INDEX_LINE.to_owned(), Value::Text(line.to_string())))
}

/// The index line of a version, from the publish metadata (cargo's registry web API format
/// turned into the index format).
fn index_line(
    meta: &serde_json::Value,
    name: &str,
    version: &str,
    cksum: &str,
) -> serde_json::Value {
    let mut deps: Vec<serde_json::Value> = meta
        .get("deps")
        .and_then(|d| d.as_array())
        .map(|deps| {
            deps.iter()
                .map(|d| {
                    let dep_name = d.get("name").cloned().unwrap_or(json!(""));
                    // Renamed dependencies: the index names the key in Cargo.toml and gives the
                    // real crate as `package`.
                    let (name, package) = match d.get("explicit_name_in_toml") {
                        Some(serde_json::Value::String(alias)) => (json!(alias), dep_name),
                        _ => (dep_name, serde_json::Value::Null),
                    };
                    let mut out = json!({
                        "name": name,
                        "req": d.get("version_req").cloned().unwrap_or(json!("*")),
                        "features": d.get("features").cloned().unwrap_or(json!([])),
                        "optional": d.get("optional").cloned().unwrap_or(json!(false)),
                        "default_features": d.get("default_features").cloned().unwrap_or(json!(true)),
                        "target": d.get("target").cloned().unwrap_or(serde_json::Value::Null),
                        "kind": d.get("kind").cloned().unwrap_or(json!("normal")),
                    });
                    if let Some(r) = d.get("registry").filter(|r| !r.is_null()) {
                        out["registry"] = r.clone();
                    }
                    if !package.is_null() {
                        out["package"] = package;
                    }
                    out
                })
                .collect()
        })
        .unwrap_or_default();
    // In one order whatever order the request listed them in.
    deps.sort_by_key(|d| d.to_string());
    let mut line = json!({
        "name": name,
        "vers": version,
        "deps": deps,
        "cksum": cksum,
        "features": meta.get("features").cloned().unwrap_or(json!({})),
        "yanked": false,
        "v": 2,
    });
    if let Some(links) = meta.get("links").filter(|l| !l.is_null()) {
        line["links"] = links.clone();
    }
    if let Some(rv) = meta.get("rust_version").filter(|l| !l.is_null()) {
        line["rust_version"] = rv.clone();
    }
    line
}

fn set_yanked(
    server: &FeedServer,
    feed: &str,
    name: &str,
    version: &str,
    yank: bool,
) -> Result<(), ApiError> {
    names::check_package_name(Ecosystem::Cargo, name)?;
    names::check_version(version)?;
    let stored = stored_name(server, feed, name)?
        .ok_or_else(|| ApiError::not_found(format!("no crate `{name}` in feed `{feed}`")))?;
    let change =
        std::collections::BTreeMap::from([(YANKED.to_string(), yank.then_some(Value::Bool(true)))]);
    server.store().amend_metadata(
        feed,
        &[cairn_store::Amendment {
            name: stored,
            version: version.to_owned(),
            set: change,
        }],
    )?;
    Ok(())
}

/// The upstream's index lines of crate `name`, parsed; lines that are not JSON objects with
/// this crate's `name`, a version and a 64-digit `cksum` are left out.
async fn upstream_lines(
    c: &Connector,
    name: &str,
) -> Result<Vec<serde_json::Value>, UpstreamError> {
    let url = c.url(&index_path(name))?;
    let (body, _) = c.metadata(&url, "text/plain, */*").await?;
    let text = std::str::from_utf8(&body)
        .map_err(|_| c.refused(UpstreamError::Refused(format!("{url} is not UTF-8"))))?;
    let key = crate_key(name);
    Ok(text
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|l| {
            l["name"].as_str().is_some_and(|n| crate_key(n) == key)
                && l["vers"]
                    .as_str()
                    .is_some_and(|v| names::check_version(v).is_ok())
                && l["cksum"]
                    .as_str()
                    .is_some_and(|h| h.len() == 64 && h.bytes().all(|b| b.is_ascii_hexdigit()))
        })
        .collect())
}

/// The index file of a feed with a connector: the versions held here and the upstream's
/// others; and whether the upstream answered.
async fn upstream_index(
    server: &Arc<FeedServer>,
    feed: &FeedRecord,
    name: &str,
    c: &Arc<Connector>,
) -> Result<(String, Option<&'static str>), ApiError> {
    let (upstream, problem) = crate::connector::listing(upstream_lines(c, name).await);
    let note = problem.as_ref().map(UpstreamError::header);
    let (s, f, n) = (server.clone(), feed.name.clone(), name.to_owned());
    let upstream_url = c.config().upstream.clone();
    blocking(move || {
        // The upstream's yanks hold for the versions cached from it too.
        let yanked_upstream: std::collections::HashSet<String> = upstream
            .iter()
            .filter(|l| l["yanked"] == json!(true))
            .filter_map(|l| l["vers"].as_str().map(str::to_owned))
            .collect();
        let mut held = std::collections::HashSet::new();
        let mut out = String::new();
        for line in index_lines(&s, &f, &n)?.lines() {
            let Ok(mut l) = serde_json::from_str::<serde_json::Value>(line) else {
                continue;
            };
            let v = l["vers"].as_str().unwrap_or_default().to_owned();
            if yanked_upstream.contains(&v) {
                l["yanked"] = json!(true);
            }
            held.insert(v);
            out.push_str(&l.to_string());
            out.push('\n');
        }
        let blocks = s.blocklist.get(s.store())?;
        let now = now_secs();
        for mut line in upstream {
            let v = line["vers"].as_str().unwrap_or_default().to_owned();
            if held.contains(&v) {
                continue;
            }
            if blocks.check(&f, Ecosystem::Cargo, &n, &v, now).is_some() {
                line["yanked"] = json!(true);
            }
            out.push_str(&line.to_string());
            out.push('\n');
        }
        if let (true, Some(e)) = (out.is_empty(), problem) {
            return Err(e.api(&upstream_url));
        }
        Ok((out, note))
    })
    .await
}

/// The download URL of a crate version by the upstream's `config.json` `dl` (a template with
/// `{crate}`, `{version}`, `{prefix}`, `{lowerprefix}`, `{sha256-checksum}`, or a base URL
/// that `/{crate}/{version}/download` is added to).
fn download_url(dl: &str, name: &str, version: &str, cksum: &str) -> String {
    const MARKERS: [&str; 5] = [
        "{crate}",
        "{version}",
        "{prefix}",
        "{lowerprefix}",
        "{sha256-checksum}",
    ];
    if !MARKERS.iter().any(|m| dl.contains(m)) {
        return format!("{}/{name}/{version}/download", dl.trim_end_matches('/'));
    }
    let prefix = index_path(name);
    let prefix = prefix.rsplit_once('/').map_or("", |(p, _)| p);
    let real_prefix = match name.len() {
        1 | 2 => prefix.to_owned(),
        3 => format!("3/{}", &name[..1]),
        _ => format!("{}/{}", &name[..2], &name[2..4]),
    };
    dl.replace("{crate}", name)
        .replace("{version}", version)
        .replace("{prefix}", &real_prefix)
        .replace("{lowerprefix}", prefix)
        .replace("{sha256-checksum}", cksum)
}

/// Fetches the `.crate` of `name` `version` from the upstream into the feed unless it is here
/// already, checked against the upstream's `cksum`, with the upstream's index line; the name
/// it is stored under.
async fn cache_from_upstream(
    server: &Arc<FeedServer>,
    feed: &FeedRecord,
    c: &Arc<Connector>,
    name: &str,
    version: &str,
) -> Result<String, ApiError> {
    let _one = c
        .one_at_a_time(&format!("{}/{}/{version}", feed.name, crate_key(name)))
        .await;
    let (s, f, n, v) = (
        server.clone(),
        feed.name.clone(),
        name.to_owned(),
        version.to_owned(),
    );
    let held = blocking(move || {
        s.refuse_blocked(&f, Ecosystem::Cargo, &n, &v)?;
        Ok(manifests(&s, &f, &n)?
            .into_iter()
            .find(|m| m.version == v)
            .map(|m| m.name))
    })
    .await?;
    if let Some(stored) = held {
        return Ok(stored);
    }
    let upstream = &c.config().upstream;
    let lines = upstream_lines(c, name).await.map_err(|e| e.api(upstream))?;
    let Some(mut line) = lines.into_iter().find(|l| l["vers"] == version) else {
        return Err(ApiError::not_found(format!(
            "{name} {version} is neither here nor upstream"
        )));
    };
    let real = line["name"].as_str().unwrap_or(name).to_owned();
    let cksum = line["cksum"]
        .as_str()
        .unwrap_or_default()
        .to_ascii_lowercase();
    let config_url = c.url("config.json").map_err(|e| e.api(upstream))?;
    let (config, _) = c
        .metadata(&config_url, "application/json")
        .await
        .map_err(|e| e.api(upstream))?;
    let dl = serde_json::from_slice::<serde_json::Value>(&config)
        .ok()
        .and_then(|c| c["dl"].as_str().map(str::to_owned))
        .ok_or_else(|| {
            c.refused(UpstreamError::Refused(format!("{config_url} has no `dl`")))
                .api(upstream)
        })?;
    let url = c
        .url(&download_url(&dl, &real, version, &cksum))
        .map_err(|e| e.api(upstream))?;
    // Served as the upstream listed it; yanks here are this feed's own.
    line["yanked"] = json!(false);
    let metadata =
        std::collections::BTreeMap::from([(INDEX_LINE.to_owned(), Value::Text(line.to_string()))]);
    let pushed = crate::connector::cache_file(
        server,
        c,
        &feed.name,
        crate::connector::ToCache {
            url,
            digest: crate::connector::Published::Sha256(cksum),
            file_name: format!("{real}-{version}.crate"),
            expect: (real, version.to_owned()),
            metadata,
        },
    )
    .await?;
    Ok(pushed.name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn index_paths() {
        assert_eq!(index_path("a"), "1/a");
        assert_eq!(index_path("ab"), "2/ab");
        assert_eq!(index_path("abc"), "3/a/abc");
        assert_eq!(index_path("Serde_Json"), "se/rd/serde_json");
        assert!(is_index_path(&["se", "rd", "serde_json"]));
        assert!(!is_index_path(&["xx", "rd", "serde_json"]));
        assert!(!is_index_path(&["config.json"]));
    }

    #[test]
    fn download_urls_follow_the_upstreams_template() {
        let ck = "ab";
        assert_eq!(
            download_url("https://up/api/v1/crates", "Serde", "1.0.0", ck),
            "https://up/api/v1/crates/Serde/1.0.0/download"
        );
        assert_eq!(
            download_url("https://up/{prefix}/{lowerprefix}/{crate}/{crate}-{version}.crate?{sha256-checksum}", "Serde", "1.0.0", ck),
            "https://up/Se/rd/se/rd/Serde/Serde-1.0.0.crate?ab"
        );
        assert_eq!(
            download_url("https://up/{prefix}/{crate}", "abc", "1", ck),
            "https://up/3/a/abc"
        );
        assert_eq!(
            download_url("https://up/{prefix}/{crate}", "x", "1", ck),
            "https://up/1/x"
        );
    }

    #[test]
    fn renamed_dependencies_become_package() {
        let meta = json!({"deps": [
            {"name": "serde", "version_req": "^1", "features": [], "optional": false, "default_features": true, "target": null, "kind": "normal", "explicit_name_in_toml": "s"}
        ], "features": {}});
        let line = index_line(&meta, "x", "1.0.0", "ab");
        assert_eq!(line["deps"][0]["name"], "s");
        assert_eq!(line["deps"][0]["package"], "serde");
        assert_eq!(line["deps"][0]["req"], "^1");
    }
}
