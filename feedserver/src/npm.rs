//! npm feeds: the registry API that `npm publish`, `npm install`, `npm dist-tag` and
//! `npm unpublish` speak.
//!
//! Under `/feeds/NAME/` (a scoped name may arrive as `@scope/name` or `@scope%2fname`):
//!
//! | request | what |
//! | --- | --- |
//! | `GET PACKAGE` | the packument; abbreviated when `Accept` asks for `application/vnd.npm.install-v1+json` |
//! | `GET PACKAGE/-/FILE.tgz` | a tarball |
//! | `PUT PACKAGE` | `npm publish`: the version's manifest and the tarball, base64, in `_attachments` |
//! | `PUT PACKAGE/-rev/REV` | `npm unpublish PACKAGE@VERSION`: the packument without the versions to remove |
//! | `DELETE PACKAGE/-rev/REV` | `npm unpublish PACKAGE --force`: every version |
//! | `DELETE PACKAGE/-/FILE.tgz/-rev/REV` | the tarball of a version already removed |
//! | `GET -/package/PACKAGE/dist-tags`, `PUT`/`DELETE .../dist-tags/TAG` | `npm dist-tag` |
//!
//! A version's manifest in the packument is the `package.json` inside its tarball (not the
//! publish body), with `dist.tarball`, `dist.shasum` (sha1) and `dist.integrity` (sha512). A
//! publish whose attachment does not match the integrity and shasum it declares, or whose
//! tarball's `package.json` names another package or version, is refused. Dist-tags live in the
//! manifests of the versions they point to (`npm_tags`), so they replicate with them; `latest`
//! falls back to the highest version. A version a blocking assessment covers is listed as
//! deprecated with the vulnerability as the reason, and its tarball answers 403.

use std::collections::BTreeMap;
use std::io::Cursor;
use std::sync::Arc;

use axum::extract::Request;
use axum::http::{header, HeaderMap, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use cairn_store::doc::{Ecosystem, Manifest};
use cairn_store::names;
use cairn_store::package::{self, DigestingReader, PackageFormat};
use cairn_store::store::{FeedRecord, NewFile, NewPackage};
use cairn_store::Amendment;
use ciborium::Value;
use serde_json::json;

use crate::auth::Access;
use crate::blocking::now_secs;
use crate::connector::{Connector, UpstreamError};
use crate::versions::compare;
use crate::{blocking, ApiError, FeedRequest, FeedServer};

/// Metadata key of the dist-tags that point at a version.
pub(crate) const TAGS: &str = "npm_tags";
const ABBREVIATED: &str = "application/vnd.npm.install-v1+json";

/// Answers a request for `rest` (the path after `/feeds/NAME/`) of an npm feed.
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
    let segments: Vec<&str> = rest.split('/').filter(|s| !s.is_empty()).collect();
    if let ["-", "ping"] = segments.as_slice() {
        return Ok(axum::Json(json!({})).into_response());
    }
    if let ["-", "whoami"] = segments.as_slice() {
        let who = server
            .authorize(&headers, &feed.name, Access::Read)?
            .map_or("anonymous".to_string(), |t| format!("token {}", t.id));
        return Ok(axum::Json(json!({ "username": who })).into_response());
    }
    if let ["-", "package", tail @ ..] = segments.as_slice() {
        let (name, tail) = split_name(tail)?;
        return dist_tags(server, &feed, &method, &headers, name, tail, request).await;
    }
    let (name, tail) = split_name(&segments)?;
    names::check_package_name(Ecosystem::Npm, &name)?;
    match (&method, tail) {
        (&Method::GET, []) => {
            server.authorize(&headers, &feed.name, Access::Read)?;
            let abbreviated = headers
                .get(header::ACCEPT)
                .and_then(|v| v.to_str().ok())
                .is_some_and(|a| a.contains(ABBREVIATED));
            let origin = crate::client_origin(&headers)?;
            let content_type = if abbreviated {
                ABBREVIATED
            } else {
                "application/json"
            };
            let (s, f, n) = (server.clone(), feed.clone(), name.clone());
            let upstream = blocking(move || s.upstream_for(&f, &n, |x| x == n)).await?;
            if let Some(c) = upstream {
                let (doc, note) = upstream_packument(server, &feed, &name, abbreviated, &c).await?;
                let body = doc.replace(crate::ORIGIN_PLACEHOLDER, &origin);
                let response = ([(header::CONTENT_TYPE, content_type)], body).into_response();
                return Ok(crate::connector::with_note(response, note));
            }
            let (s, f, n) = (server.clone(), feed.name.clone(), name.clone());
            // Cached per feed state, never per Host header: rendered with a placeholder origin
            // that the client's own replaces on the way out.
            let key = format!("npm-packument {n} {abbreviated}");
            let doc = blocking(move || {
                let record = s.store().feed(&f)?;
                s.rendered(&record, &key, || {
                    let base = format!("{}/feeds/{f}", crate::ORIGIN_PLACEHOLDER);
                    Ok(packument(&s, &f, &n, &base, abbreviated)?.to_string())
                })
            })
            .await?;
            let body = doc.replace(crate::ORIGIN_PLACEHOLDER, &origin);
            Ok(([(header::CONTENT_TYPE, content_type)], body).into_response())
        }
        (&Method::GET | &Method::HEAD, ["-", file]) => {
            server.authorize(&headers, &feed.name, Access::Read)?;
            let version = version_of_file(&name, file).ok_or_else(|| {
                ApiError::not_found(format!("`{file}` is not a tarball name of {name}"))
            })?;
            let served = crate::pypi::serve_file(
                server,
                &feed,
                Ecosystem::Npm,
                &name,
                &version,
                file,
                &headers,
                method == Method::HEAD,
                "application/octet-stream",
            )
            .await;
            match served {
                Err(e) if e.status == StatusCode::NOT_FOUND => {
                    let (s, f, n) = (server.clone(), feed.clone(), name.clone());
                    let upstream = blocking(move || s.upstream_for(&f, &n, |x| x == n)).await?;
                    let Some(c) = upstream else {
                        return Err(e);
                    };
                    cache_from_upstream(server, &feed, &c, &name, &version).await?;
                    crate::pypi::serve_file(
                        server,
                        &feed,
                        Ecosystem::Npm,
                        &name,
                        &version,
                        file,
                        &headers,
                        method == Method::HEAD,
                        "application/octet-stream",
                    )
                    .await
                }
                other => other,
            }
        }
        (&Method::PUT, []) => {
            server.authorize(&headers, &feed.name, Access::Publish)?;
            server.check_writable(&feed.name)?;
            let body = read_json(server, request).await?;
            let (s, f) = (server.clone(), feed.name.clone());
            blocking(move || publish(&s, &f, &name, body)).await?;
            Ok((StatusCode::CREATED, axum::Json(json!({ "ok": true }))).into_response())
        }
        (&Method::PUT, ["-rev", _]) => {
            server.authorize(&headers, &feed.name, Access::Publish)?;
            server.check_writable(&feed.name)?;
            let body = read_json(server, request).await?;
            let keep: Vec<String> = body
                .get("versions")
                .and_then(|v| v.as_object())
                .map(|o| o.keys().cloned().collect())
                .unwrap_or_default();
            let (s, f) = (server.clone(), feed.name.clone());
            blocking(move || remove_versions(&s, &f, &name, Some(&keep))).await?;
            Ok((StatusCode::CREATED, axum::Json(json!({ "ok": true }))).into_response())
        }
        (&Method::DELETE, ["-rev", _]) => {
            server.authorize(&headers, &feed.name, Access::Publish)?;
            server.check_writable(&feed.name)?;
            let (s, f) = (server.clone(), feed.name.clone());
            blocking(move || remove_versions(&s, &f, &name, None)).await?;
            Ok(axum::Json(json!({ "ok": true })).into_response())
        }
        (&Method::DELETE, ["-", _file, "-rev", _]) => {
            // The version went with the packument update before; its blob goes at the next gc.
            server.authorize(&headers, &feed.name, Access::Publish)?;
            Ok(axum::Json(json!({ "ok": true })).into_response())
        }
        _ => Err(ApiError::not_found(format!(
            "no such npm registry resource `{rest}` in feed `{}`",
            feed.name
        ))),
    }
}

/// Splits a package name (`name`, or `@scope` and `name`) off the front of the segments.
fn split_name<'a, 'b>(segments: &'a [&'b str]) -> Result<(String, &'a [&'b str]), ApiError> {
    match segments {
        [scope, name, rest @ ..] if scope.starts_with('@') => Ok((format!("{scope}/{name}"), rest)),
        [name, rest @ ..] if !name.starts_with('@') => Ok(((*name).to_owned(), rest)),
        _ => Err(ApiError::bad_request(
            "expected a package name (`name` or `@scope/name`)",
        )),
    }
}

/// The tarball file name of a version: the name without its scope, `-`, the version.
pub(crate) fn tarball_name(name: &str, version: &str) -> String {
    let base = name.rsplit('/').next().unwrap_or(name);
    format!("{base}-{version}.tgz")
}

fn version_of_file(name: &str, file: &str) -> Option<String> {
    let base = name.rsplit('/').next().unwrap_or(name);
    file.strip_prefix(base)?
        .strip_prefix('-')?
        .strip_suffix(".tgz")
        .map(str::to_owned)
}

async fn read_json(server: &FeedServer, request: Request) -> Result<serde_json::Value, ApiError> {
    let limit = usize::try_from(server.config().max_upload_bytes().saturating_mul(4) / 3 + 65_536)
        .unwrap_or(usize::MAX);
    let bytes = axum::body::to_bytes(request.into_body(), limit)
        .await
        .map_err(|e| {
            ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!("the request body could not be read whole: {e}"),
            )
        })?;
    serde_json::from_slice(&bytes)
        .map_err(|e| ApiError::bad_request(format!("the request body is not JSON: {e}")))
}

/// The versions of `name`, lowest first.
fn versions(server: &FeedServer, feed: &str, name: &str) -> Result<Vec<Manifest>, ApiError> {
    let mut out = server.manifests(feed, |n| n == name)?;
    let hidden = server.hidden_cached(feed, name, &out);
    out.retain(|m| !hidden.hides(m));
    out.sort_by(|a, b| compare(&a.version, &b.version));
    Ok(out)
}

fn tags_of(m: &Manifest) -> Vec<String> {
    match m.metadata.get(TAGS) {
        Some(Value::Array(tags)) => tags
            .iter()
            .filter_map(|t| match t {
                Value::Text(t) => Some(t.clone()),
                _ => None,
            })
            .collect(),
        _ => Vec::new(),
    }
}

/// Tag -> version, with `latest` on the highest version when no version carries it.
fn dist_tag_map(versions: &[Manifest]) -> BTreeMap<String, String> {
    let mut tags = BTreeMap::new();
    for m in versions {
        for t in tags_of(m) {
            tags.insert(t, m.version.clone());
        }
    }
    if !tags.contains_key("latest") {
        if let Some(m) = versions.last() {
            tags.insert("latest".into(), m.version.clone());
        }
    }
    tags
}

/// The `deprecated` message of a version a blocking assessment covers.
fn blocked_note(b: &crate::blocking::Block) -> serde_json::Value {
    json!(format!(
        "blocked by {} ({}): {}",
        b.vulnerability, b.assessment_type, b.reason
    ))
}

/// The members of a version an abbreviated packument keeps.
const ABBREVIATED_KEEP: [&str; 17] = [
    "name",
    "version",
    "dist",
    "dependencies",
    "optionalDependencies",
    "devDependencies",
    "bundleDependencies",
    "bundledDependencies",
    "peerDependencies",
    "peerDependenciesMeta",
    "bin",
    "directories",
    "engines",
    "cpu",
    "os",
    "deprecated",
    "_hasShrinkwrap",
];

fn packument(
    server: &FeedServer,
    feed: &str,
    name: &str,
    base: &str,
    abbreviated: bool,
) -> Result<serde_json::Value, ApiError> {
    let all = versions(server, feed, name)?;
    if all.is_empty() {
        return Err(ApiError::not_found(format!(
            "no package `{name}` in feed `{feed}`"
        )));
    }
    let blocks = server.blocklist.get(server.store())?;
    let now = now_secs();
    let mut out_versions = serde_json::Map::new();
    for m in &all {
        let mut pj = match m.metadata.get("package_json") {
            Some(v) => package::cbor_to_json(v),
            None => json!({}),
        };
        let Some(obj) = pj.as_object_mut() else {
            continue;
        };
        let file = tarball_name(name, &m.version);
        let entry = m.files.iter().find(|f| f.name == file);
        let integrity = entry
            .and_then(|f| f.digests.get("sha512"))
            .and_then(|h| hex::decode(h).ok())
            .map(|b| {
                format!(
                    "sha512-{}",
                    base64::engine::general_purpose::STANDARD.encode(b)
                )
            });
        obj.insert("name".into(), json!(name));
        obj.insert("version".into(), json!(m.version));
        obj.insert("_id".into(), json!(format!("{name}@{}", m.version)));
        obj.insert(
            "dist".into(),
            json!({
                "tarball": format!("{base}/{name}/-/{file}"),
                "shasum": entry.and_then(|f| f.digests.get("sha1")).cloned().unwrap_or_default(),
                "integrity": integrity,
            }),
        );
        if let Some(b) = blocks.check(feed, Ecosystem::Npm, name, &m.version, now) {
            obj.insert("deprecated".into(), blocked_note(b));
        }
        if abbreviated {
            obj.retain(|k, _| ABBREVIATED_KEEP.contains(&k.as_str()));
            if obj
                .get("scripts")
                .and_then(|s| s.as_object())
                .is_some_and(|s| s.contains_key("install") || s.contains_key("preinstall"))
            {
                obj.insert("hasInstallScript".into(), json!(true));
            }
        }
        out_versions.insert(m.version.clone(), pj);
    }
    let tags = dist_tag_map(&all);
    if abbreviated {
        return Ok(json!({
            "name": name,
            "dist-tags": tags,
            "versions": out_versions,
        }));
    }
    // `_rev` changes whenever the set of versions does; npm sends it back on unpublish.
    let rev = blake3::hash(
        all.iter()
            .map(|m| format!("{}\n", m.version))
            .collect::<String>()
            .as_bytes(),
    );
    Ok(json!({
        "_id": name,
        "_rev": format!("{}-{}", all.len(), &rev.to_hex()[..16]),
        "name": name,
        "dist-tags": tags,
        "versions": out_versions,
    }))
}

fn publish(
    server: &FeedServer,
    feed: &str,
    name: &str,
    body: serde_json::Value,
) -> Result<(), ApiError> {
    if body.get("name").and_then(|n| n.as_str()) != Some(name) {
        return Err(ApiError::bad_request(format!(
            "the publish body names another package than `{name}`"
        )));
    }
    let published = body
        .get("versions")
        .and_then(|v| v.as_object())
        .filter(|v| v.len() == 1)
        .ok_or_else(|| ApiError::bad_request("a publish carries exactly one version"))?;
    let (version, manifest) = published
        .iter()
        .next()
        .ok_or_else(|| ApiError::bad_request("a publish carries exactly one version"))?;
    names::check_version(version)?;
    let attachments = body
        .get("_attachments")
        .and_then(|a| a.as_object())
        .filter(|a| !a.is_empty())
        .ok_or_else(|| ApiError::bad_request("the publish has no tarball in `_attachments`"))?;
    let (_, attachment) = attachments
        .iter()
        .next()
        .ok_or_else(|| ApiError::bad_request("the publish has no tarball in `_attachments`"))?;
    let data = attachment
        .get("data")
        .and_then(|d| d.as_str())
        .ok_or_else(|| ApiError::bad_request("the attachment has no `data`"))?;
    let tarball = base64::engine::general_purpose::STANDARD
        .decode(data)
        .map_err(|e| ApiError::bad_request(format!("the attachment is not base64: {e}")))?;
    if let Some(len) = attachment.get("length").and_then(|l| l.as_u64()) {
        if len != tarball.len() as u64 {
            return Err(ApiError::bad_request(format!(
                "the attachment declares {len} bytes but holds {}",
                tarball.len()
            )));
        }
    }
    let mut reader = DigestingReader::new(&tarball[..], Ecosystem::Npm);
    std::io::copy(&mut reader, &mut std::io::sink())
        .map_err(|e| ApiError::bad_request(e.to_string()))?;
    let digests = reader.finish();
    let sha512 = digests
        .get("sha512")
        .and_then(|h| hex::decode(h).ok())
        .map(|b| {
            format!(
                "sha512-{}",
                base64::engine::general_purpose::STANDARD.encode(b)
            )
        })
        .unwrap_or_default();
    let dist = manifest.get("dist");
    if let Some(declared) = dist
        .and_then(|d| d.get("integrity"))
        .and_then(|i| i.as_str())
    {
        // An integrity string may list several hashes; the sha512 one must match.
        let sha512_declared: Vec<&str> = declared
            .split_whitespace()
            .filter(|h| h.starts_with("sha512-"))
            .collect();
        if !sha512_declared.is_empty() && !sha512_declared.contains(&sha512.as_str()) {
            return Err(ApiError::bad_request(format!(
                "the tarball does not match its dist.integrity: declared {declared}, received {sha512}"
            )));
        }
    }
    if let Some(declared) = dist.and_then(|d| d.get("shasum")).and_then(|s| s.as_str()) {
        let actual = digests.get("sha1").cloned().unwrap_or_default();
        if !declared.eq_ignore_ascii_case(&actual) {
            return Err(ApiError::bad_request(format!(
                "the tarball does not match its dist.shasum: declared {declared}, received {actual}"
            )));
        }
    }
    let info = package::inspect(PackageFormat::NpmTarball, Cursor::new(&tarball[..]))
        .map_err(|e| ApiError::bad_request(format!("the tarball: {e}")))?;
    if info.name != name || info.version != *version {
        return Err(ApiError::bad_request(format!(
            "the publish names {name} {version} but the tarball's package.json is {} {}",
            info.name, info.version
        )));
    }
    let store = server.store();
    let existing = versions(server, feed, name)?;
    if existing.iter().any(|m| m.version == *version) {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            format!("{name} {version} is already published; versions are immutable, publish a new version"),
        ));
    }
    let tags: Vec<String> = body
        .get("dist-tags")
        .and_then(|t| t.as_object())
        .map(|t| {
            t.iter()
                .filter(|(_, v)| v.as_str() == Some(version.as_str()))
                .map(|(k, _)| k.clone())
                .collect()
        })
        .unwrap_or_default();
    let stored = store.put_blob(&tarball[..])?;
    let mut metadata = info.metadata;
    if !tags.is_empty() {
        metadata.insert(
            TAGS.into(),
            Value::Array(tags.iter().map(|t| Value::Text(t.clone())).collect()),
        );
    }
    store.publish(
        feed,
        NewPackage {
            name: name.to_owned(),
            version: version.clone(),
            files: vec![NewFile {
                name: tarball_name(name, version),
                blob: stored.hash,
                size: stored.size,
                digests,
            }],
            metadata,
        },
    )?;
    drop(stored);
    // The tags the new version took leave the versions that had them.
    let moved = untag_others(&existing, version, &tags);
    if !moved.is_empty() {
        store.amend_metadata(feed, &moved)?;
    }
    tracing::info!(feed, %name, %version, "published npm package");
    Ok(())
}

/// The dist-tag `npm publish` gives a version it publishes (its default `--tag`).
pub(crate) const PUBLISH_TAG: &str = "latest";

/// The metadata a pushed tarball's version carries so that, as after `npm publish`, `latest`
/// points at it.
pub(crate) fn publish_tag_metadata() -> (String, Value) {
    (
        TAGS.to_owned(),
        Value::Array(vec![Value::Text(PUBLISH_TAG.to_owned())]),
    )
}

/// After `version` of `name` took `latest` by a push: the amendments that take it off the
/// other versions, as a publish does.
pub(crate) fn untag_after_push(
    store: &cairn_store::Store,
    feed: &str,
    name: &str,
    version: &str,
) -> Result<Vec<Amendment>, ApiError> {
    let all = crate::served_manifests(store, feed, |n| n == name)?;
    Ok(untag_others(&all, version, &[PUBLISH_TAG.to_owned()]))
}

/// Amendments that take `tags` off every version but `keep`.
fn untag_others(all: &[Manifest], keep: &str, tags: &[String]) -> Vec<Amendment> {
    all.iter()
        .filter(|m| m.version != keep)
        .filter_map(|m| {
            let old = tags_of(m);
            let new: Vec<String> = old.iter().filter(|t| !tags.contains(t)).cloned().collect();
            (new.len() != old.len()).then(|| tag_amendment(m, &new))
        })
        .collect()
}

fn tag_amendment(m: &Manifest, tags: &[String]) -> Amendment {
    let value = (!tags.is_empty())
        .then(|| Value::Array(tags.iter().map(|t| Value::Text(t.clone())).collect()));
    Amendment {
        name: m.name.clone(),
        version: m.version.clone(),
        set: BTreeMap::from([(TAGS.to_string(), value)]),
    }
}

/// Deletes the versions of `name` not in `keep` (all of them for `None`).
fn remove_versions(
    server: &FeedServer,
    feed: &str,
    name: &str,
    keep: Option<&[String]>,
) -> Result<(), ApiError> {
    let all = versions(server, feed, name)?;
    if all.is_empty() {
        return Err(ApiError::not_found(format!(
            "no package `{name}` in feed `{feed}`"
        )));
    }
    for m in &all {
        if keep.is_some_and(|k| k.contains(&m.version)) {
            continue;
        }
        server.store().delete(feed, name, &m.version)?;
        tracing::info!(feed, %name, version = %m.version, "unpublished npm version");
    }
    Ok(())
}

async fn dist_tags(
    server: &Arc<FeedServer>,
    feed: &FeedRecord,
    method: &Method,
    headers: &HeaderMap,
    name: String,
    tail: &[&str],
    request: Request,
) -> Result<Response, ApiError> {
    names::check_package_name(Ecosystem::Npm, &name)?;
    match (method, tail) {
        (&Method::GET, ["dist-tags"]) => {
            server.authorize(headers, &feed.name, Access::Read)?;
            let (s, f) = (server.clone(), feed.name.clone());
            let tags = blocking(move || Ok(dist_tag_map(&versions(&s, &f, &name)?))).await?;
            Ok(axum::Json(tags).into_response())
        }
        (&Method::PUT | &Method::POST, ["dist-tags", tag]) => {
            server.authorize(headers, &feed.name, Access::Publish)?;
            server.check_writable(&feed.name)?;
            let body = read_json(server, request).await?;
            let version = body
                .as_str()
                .ok_or_else(|| ApiError::bad_request("the body is the version, a JSON string"))?
                .to_owned();
            names::check_version(tag)?;
            let (s, f, t) = (server.clone(), feed.name.clone(), tag.to_string());
            blocking(move || {
                let all = versions(&s, &f, &name)?;
                let target = all.iter().find(|m| m.version == version).ok_or_else(|| {
                    ApiError::not_found(format!("{name} has no version {version}"))
                })?;
                let mut changes = untag_others(&all, &version, std::slice::from_ref(&t));
                let mut tags = tags_of(target);
                if !tags.contains(&t) {
                    tags.push(t);
                    changes.push(tag_amendment(target, &tags));
                }
                if !changes.is_empty() {
                    s.store().amend_metadata(&f, &changes)?;
                }
                Ok(())
            })
            .await?;
            Ok((StatusCode::CREATED, axum::Json(json!({ "ok": true }))).into_response())
        }
        (&Method::DELETE, ["dist-tags", tag]) => {
            server.authorize(headers, &feed.name, Access::Publish)?;
            server.check_writable(&feed.name)?;
            if *tag == "latest" {
                return Err(ApiError::bad_request("the latest tag cannot be removed"));
            }
            let (s, f, t) = (server.clone(), feed.name.clone(), tag.to_string());
            blocking(move || {
                let all = versions(&s, &f, &name)?;
                let changes = untag_others(&all, "", std::slice::from_ref(&t));
                if !changes.is_empty() {
                    s.store().amend_metadata(&f, &changes)?;
                }
                Ok(())
            })
            .await?;
            Ok(axum::Json(json!({ "ok": true })).into_response())
        }
        _ => Err(ApiError::not_found("no such dist-tags resource")),
    }
}

/// The upstream's packument of `name` (a JSON object with a `versions` object).
async fn upstream_document(c: &Connector, name: &str) -> Result<serde_json::Value, UpstreamError> {
    // A scoped name is one path segment upstream: `@scope%2fname`.
    let url = c.url(&name.replace('/', "%2f"))?;
    let (body, _) = c.metadata(&url, "application/json").await?;
    let doc: serde_json::Value = serde_json::from_slice(&body)
        .map_err(|e| c.refused(UpstreamError::Refused(format!("{url} is not JSON: {e}"))))?;
    if !doc["versions"].is_object() {
        return Err(c.refused(UpstreamError::Refused(format!(
            "{url} is not a packument (no `versions` object)"
        ))));
    }
    Ok(doc)
}

/// The packument of a feed with a connector: the versions held here and the upstream's
/// others (those it gives a sha512 integrity for), every tarball under this feed's URLs, with
/// the upstream's dist-tags where they point at a listed version; and whether the upstream
/// answered. Rendered with the placeholder origin.
async fn upstream_packument(
    server: &Arc<FeedServer>,
    feed: &FeedRecord,
    name: &str,
    abbreviated: bool,
    c: &Arc<Connector>,
) -> Result<(String, Option<&'static str>), ApiError> {
    let (upstream, problem) = crate::connector::listing(upstream_document(c, name).await.map(Some));
    let note = problem.as_ref().map(UpstreamError::header);
    let (s, f, n) = (server.clone(), feed.name.clone(), name.to_owned());
    let upstream_url = c.config().upstream.clone();
    let doc = blocking(move || {
        let base = format!("{}/feeds/{f}", crate::ORIGIN_PLACEHOLDER);
        let mut out = match packument(&s, &f, &n, &base, abbreviated) {
            Ok(v) => v,
            Err(e) if e.status == StatusCode::NOT_FOUND => {
                json!({ "_id": n, "name": n, "dist-tags": {}, "versions": {} })
            }
            Err(e) => return Err(e),
        };
        let blocks = s.blocklist.get(s.store())?;
        let now = now_secs();
        if let Some(up) = upstream {
            let mut added = serde_json::Map::new();
            // The upstream's deprecations hold for the versions cached from it too.
            if let Some(versions) = out["versions"].as_object_mut() {
                for (v, obj) in versions.iter_mut() {
                    let note = up["versions"][v.as_str()]["deprecated"].clone();
                    if note.is_string() && obj.get("deprecated").is_none() {
                        obj["deprecated"] = note;
                    }
                }
            }
            let held = out["versions"].as_object().cloned().unwrap_or_default();
            for (v, obj) in up["versions"].as_object().into_iter().flatten() {
                if held.contains_key(v) || names::check_version(v).is_err() {
                    continue;
                }
                let Some(mut o) = obj.as_object().cloned() else {
                    continue;
                };
                let integrity = o
                    .get("dist")
                    .and_then(|d| d.get("integrity"))
                    .and_then(|i| i.as_str())
                    .filter(|i| i.starts_with("sha512-"))
                    .map(str::to_owned);
                let Some(integrity) = integrity else {
                    continue;
                };
                let shasum = o.get("dist").and_then(|d| d.get("shasum")).cloned();
                o.insert(
                    "dist".into(),
                    json!({
                        "tarball": format!("{base}/{n}/-/{}", tarball_name(&n, v)),
                        "integrity": integrity,
                        "shasum": shasum.unwrap_or(json!("")),
                    }),
                );
                o.insert("name".into(), json!(n));
                o.insert("version".into(), json!(v));
                if let Some(b) = blocks.check(&f, Ecosystem::Npm, &n, v, now) {
                    o.insert("deprecated".into(), blocked_note(b));
                }
                if abbreviated {
                    o.retain(|k, _| ABBREVIATED_KEEP.contains(&k.as_str()));
                }
                added.insert(v.clone(), serde_json::Value::Object(o));
            }
            if let Some(versions) = out["versions"].as_object_mut() {
                versions.extend(added);
            }
            let listed = out["versions"].as_object().cloned().unwrap_or_default();
            for (tag, v) in up["dist-tags"].as_object().into_iter().flatten() {
                if v.as_str().is_some_and(|v| listed.contains_key(v)) {
                    out["dist-tags"][tag] = v.clone();
                }
            }
        }
        if out["versions"].as_object().is_none_or(|v| v.is_empty()) {
            return Err(match problem {
                None => ApiError::not_found(format!("no package `{n}` in feed `{f}` or upstream")),
                Some(e) => e.api(&upstream_url),
            });
        }
        Ok(out.to_string())
    })
    .await?;
    Ok((doc, note))
}

/// Fetches the tarball of `name` `version` from the upstream into the feed unless it is here
/// already, checked against the upstream's sha512 integrity.
async fn cache_from_upstream(
    server: &Arc<FeedServer>,
    feed: &FeedRecord,
    c: &Arc<Connector>,
    name: &str,
    version: &str,
) -> Result<(), ApiError> {
    let file = tarball_name(name, version);
    let _one = c
        .one_at_a_time(&format!("{}/{name}/{file}", feed.name))
        .await;
    let (s, f, n, v) = (
        server.clone(),
        feed.name.clone(),
        name.to_owned(),
        version.to_owned(),
    );
    let held = blocking(move || {
        s.refuse_blocked(&f, Ecosystem::Npm, &n, &v)?;
        Ok(s.store().manifest(&f, &n, &v)?.is_some())
    })
    .await?;
    if held {
        return Ok(());
    }
    let upstream = &c.config().upstream;
    let doc = upstream_document(c, name)
        .await
        .map_err(|e| e.api(upstream))?;
    let Some(dist) = doc["versions"].get(version).and_then(|v| v.get("dist")) else {
        return Err(ApiError::not_found(format!(
            "{name} {version} is neither here nor upstream"
        )));
    };
    let integrity = dist["integrity"]
        .as_str()
        .and_then(|i| i.strip_prefix("sha512-"))
        .and_then(|b| base64::engine::general_purpose::STANDARD.decode(b).ok())
        .filter(|b| b.len() == 64);
    let Some(integrity) = integrity else {
        return Err(c
            .refused(UpstreamError::Refused(format!(
                "{name} {version} has no sha512 integrity upstream; it cannot be checked, so it is not cached"
            )))
            .api(upstream));
    };
    let url = dist["tarball"]
        .as_str()
        .ok_or_else(|| {
            c.refused(UpstreamError::Refused(format!(
                "{name} {version} has no tarball URL upstream"
            )))
        })
        .and_then(|t| c.url(t))
        .map_err(|e| e.api(upstream))?;
    crate::connector::cache_file(
        server,
        c,
        &feed.name,
        crate::connector::ToCache {
            url,
            digest: crate::connector::Published::Sha512(integrity),
            file_name: file,
            expect: (name.to_owned(), version.to_owned()),
            metadata: BTreeMap::new(),
        },
    )
    .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_files() {
        assert_eq!(
            tarball_name("@acme/left-pad", "1.3.0"),
            "left-pad-1.3.0.tgz"
        );
        assert_eq!(
            version_of_file("@acme/left-pad", "left-pad-1.3.0-beta.1.tgz").as_deref(),
            Some("1.3.0-beta.1")
        );
        assert_eq!(version_of_file("left-pad", "other-1.0.0.tgz"), None);
        let (n, rest) = split_name(&["@acme", "left-pad", "-", "x.tgz"]).unwrap();
        assert_eq!((n.as_str(), rest), ("@acme/left-pad", &["-", "x.tgz"][..]));
        let (n, rest) = split_name(&["left-pad"]).unwrap();
        assert_eq!((n.as_str(), rest.len()), ("left-pad", 0));
        assert!(split_name(&["@acme"]).is_err());
    }
}
