//! The admin and status API, JSON under `/api/v1/`. Every call needs a token with the `admin`
//! scope except `GET instance`.
//!
//! | request | what |
//! | --- | --- |
//! | `GET instance` | the instance key and its feeds' count |
//! | `GET feeds`, `POST feeds` `{"name", "type"}` | feeds with type, entry count, Merkle root and cursor; create one |
//! | `POST feeds/FEED/yank` `{"name", "version", "reason"}`, `POST feeds/FEED/unyank` | mark a version yanked (PEP 592 in PyPI indexes) or not |
//! | `GET checkpoints` | per feed, the checkpoint held (signer, sequence number, age, whether it covers the feed's state now), and the newest checkpoint that came through each upstream |
//! | `GET tokens`, `POST tokens` `{"scopes": [..], "label"}` (the secret is in the answer, once), `DELETE tokens/ID` | access tokens; a change applies to the next request or run |
//! | `GET trust`, `POST trust` `{"key", "feed"}`, `DELETE trust/KEY?feed=FEED` | which keys may sign for which feeds; documents whose signer loses trust stop being served and offered at once |
//! | `GET peers`, `POST peers` `{"name", "addr", "key"}`, `DELETE peers/NAME` | peers and their pinned keys; new connections are checked against the list as it is |
//! | `GET feeds/FEED` | the feed's Merkle root, entry count and change-log cursor (`cairn root`) |
//! | `DELETE feeds/FEED` | remove a feed and its entries (`cairn feed rm`) |
//! | `GET feeds/FEED/entries?all=true` | its versions with files and metadata, tombstones with `all` (`cairn ls --json`) |
//! | `DELETE feeds/FEED/versions/NAME/VERSION` | delete a version with a signed tombstone (`cairn rm`) |
//! | `POST feeds/FEED/files/FILE?name=N&version=V` (the file as the body) | publish a file as `cairn push` does: name and version from the file itself unless given |
//! | `POST gc` `{"tombstone_horizon_days"}` | garbage collection on the live store (`cairn gc --json`) |
//! | `POST verify` | rehash and check everything (`cairn verify --json`) |
//! | `GET replications` | the configured replications (tokens left out) with their state: `ok`, `running`, `behind`, `failing`, `never run` or `incoming`, the reason in words, the last run, lag and next run |
//! | `POST replications/NAME/run` `{"dry_run", "allow_deletes"}` | run it now; the run's summary (`cairn replicate NAME --json`) |
//! | `GET replication-log?limit=N` | the newest replication runs |
//! | `GET vulnerabilities`, `POST vulnerabilities` (OSV JSON, one or an array), `DELETE vulnerabilities/ID` | vulnerability records |
//! | `GET assessment-types`, `POST assessment-types` `{"name", "blocking", "description"}`, `DELETE assessment-types/NAME` | kinds of assessment, built-in ones included |
//! | `GET promotions?name=N&version=V`, `POST promotions` `{"from", "to", "name", "version"}` | promotion records, newest first (of a package or version when given); promote a version to another feed of the same type without copying its files (`cairn promote`), the record naming the token |
//! | `GET assessments`, `POST assessments` `{"vulnerability", "type", "comment", "author", "expires_days"}`, `DELETE assessments/ID` | decisions; they replicate with `@system` |

use std::sync::Arc;

use axum::extract::{Path, Request, State};
use axum::http::{HeaderMap, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use cairn_store::admin::Scope;
use cairn_store::doc::{Assessment, Ecosystem, Vulnerability};
use cairn_store::system::NewAssessment;
use serde_json::json;

use crate::{blocking, ApiError, FeedServer};

/// The axum handler for `/api/v1/{*rest}`.
pub async fn route(
    State(server): State<Arc<FeedServer>>,
    Path(rest): Path<String>,
    request: Request,
) -> Response {
    match handle(&server, &rest, request).await {
        Ok(r) => r,
        Err(e) => e.into_response(),
    }
}

fn require_admin(
    server: &FeedServer,
    headers: &HeaderMap,
) -> Result<cairn_store::admin::TokenInfo, ApiError> {
    let Some(secret) = crate::auth::token_of(headers) else {
        return Err(ApiError::new(
            StatusCode::UNAUTHORIZED,
            "the admin API needs a token; create one with `cairn token create --scope admin`",
        ));
    };
    let info = server
        .store()
        .token_check(&secret)?
        .ok_or_else(|| ApiError::new(StatusCode::UNAUTHORIZED, "the token is not valid"))?;
    if !info.scopes.contains(&Scope::Admin) {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "the admin API needs a token with the admin scope",
        ));
    }
    Ok(info)
}

async fn body_json(request: Request) -> Result<serde_json::Value, ApiError> {
    let bytes = axum::body::to_bytes(request.into_body(), 16 << 20)
        .await
        .map_err(|e| ApiError::bad_request(format!("the request body could not be read: {e}")))?;
    serde_json::from_slice(&bytes)
        .map_err(|e| ApiError::bad_request(format!("the request body is not JSON: {e}")))
}

/// A request body written to a temporary file under the data directory, refused beyond the
/// upload limit.
async fn receive_body(
    server: &FeedServer,
    request: Request,
    file: &str,
) -> Result<tempfile::NamedTempFile, ApiError> {
    use futures_util::StreamExt;
    use std::io::Write;
    let internal = |e: std::io::Error| {
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("writing the upload: {e}"),
        )
    };
    let tmp_dir = server.store().dir().join("tmp");
    std::fs::create_dir_all(&tmp_dir).map_err(internal)?;
    let mut staged = tempfile::NamedTempFile::new_in(&tmp_dir).map_err(internal)?;
    let limit = server.config().max_upload_bytes();
    let mut size = 0u64;
    let mut stream = request.into_body().into_data_stream();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|e| {
            ApiError::bad_request(format!("the upload of {file} was cut short: {e}"))
        })?;
        size += chunk.len() as u64;
        if size > limit {
            return Err(ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!(
                    "{file} is larger than the {} MiB upload limit",
                    server.config().max_upload_mib
                ),
            ));
        }
        staged.write_all(&chunk).map_err(internal)?;
    }
    Ok(staged)
}

/// A JSON body, or `{}` when there is none.
async fn body_json_or_empty(request: Request) -> Result<serde_json::Value, ApiError> {
    let bytes = axum::body::to_bytes(request.into_body(), 1 << 20)
        .await
        .map_err(|e| ApiError::bad_request(format!("the request body could not be read: {e}")))?;
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Ok(json!({}));
    }
    serde_json::from_slice(&bytes)
        .map_err(|e| ApiError::bad_request(format!("the request body is not JSON: {e}")))
}

/// The entries of `feed` as `cairn ls --json` prints them: live versions with their files and
/// metadata, and with `all` tombstones (and system documents) too.
pub fn entry_rows(
    store: &cairn_store::Store,
    feed: &str,
    all: bool,
) -> Result<Vec<serde_json::Value>, cairn_store::StoreError> {
    use cairn_store::{names, package, EntryKind};
    let mut rows = Vec::new();
    for entry in store.entries(feed)? {
        let (name, version) = names::split_package_key(&entry.key).unwrap_or((&entry.key, ""));
        let mut row = json!({
            "key": entry.key,
            "name": name,
            "version": version,
            "kind": match entry.value.kind {
                EntryKind::Manifest => "manifest",
                EntryKind::Tombstone => "tombstone",
                EntryKind::Document => "document",
            },
            "doc": entry.value.doc.to_hex(),
            "hlc": entry.value.hlc,
        });
        match entry.value.kind {
            EntryKind::Manifest => {
                let doc = store.document(&entry.value.doc)?.ok_or_else(|| {
                    cairn_store::StoreError::CorruptRecord {
                        what: "entry",
                        detail: format!(
                            "document {} of {} is missing; run `cairn verify`",
                            entry.value.doc, entry.key
                        ),
                    }
                })?;
                let m: cairn_store::doc::Manifest = doc.payload()?;
                row["files"] = m
                    .files
                    .iter()
                    .map(|f| json!({"name": f.name, "blob": f.blob.to_hex(), "size": f.size, "digests": f.digests}))
                    .collect();
                row["metadata"] = m
                    .metadata
                    .iter()
                    .map(|(k, v)| (k.clone(), package::cbor_to_json(v)))
                    .collect::<serde_json::Map<_, _>>()
                    .into();
            }
            _ if !all => continue,
            _ => {}
        }
        rows.push(row);
    }
    Ok(rows)
}

fn text(v: &serde_json::Value, key: &str) -> Result<String, ApiError> {
    v.get(key)
        .and_then(|x| x.as_str())
        .map(str::to_owned)
        .ok_or_else(|| ApiError::bad_request(format!("`{key}` (a string) is required")))
}

async fn handle(
    server: &Arc<FeedServer>,
    rest: &str,
    request: Request,
) -> Result<Response, ApiError> {
    let method = request.method().clone();
    let segments: Vec<&str> = rest.split('/').filter(|s| !s.is_empty()).collect();
    if let (&Method::GET, ["instance"]) = (&method, segments.as_slice()) {
        let s = server.clone();
        let body = blocking(move || {
            Ok(json!({
                "key": s.store().identity().public_key().to_string(),
                "feeds": s.store().list_feeds()?.len(),
                "version": env!("CARGO_PKG_VERSION"),
            }))
        })
        .await?;
        return Ok(axum::Json(body).into_response());
    }
    let admin = require_admin(server, request.headers())?;
    let s = server.clone();
    let reply = match (&method, segments.as_slice()) {
        (&Method::GET, ["feeds"]) => {
            blocking(move || {
                let mut out = Vec::new();
                for f in s.store().list_feeds()? {
                    let summary = s.store().feed_summary(&f.name)?;
                    let cursor = f.cursor();
                    out.push(json!({
                        "name": f.name,
                        "type": f.ecosystem().map(|e| e.to_string()),
                        "entries": summary.root.count,
                        "root": summary.root.fingerprint.to_string(),
                        "cursor": { "epoch": format!("{:016x}", cursor.epoch), "seq": cursor.seq },
                        "replica_of": s.replicas.get(&f.name),
                        "checkpoint": held_checkpoint(s.store(), &f.name)?,
                    }));
                }
                Ok(json!(out))
            })
            .await?
        }
        (&Method::POST, ["feeds"]) => {
            let body = body_json(request).await?;
            let (name, kind) = (text(&body, "name")?, text(&body, "type")?);
            let ecosystem: Ecosystem = kind.parse().map_err(|_| {
                ApiError::bad_request(format!(
                    "unknown feed type `{kind}` (raw, pypi, npm, cargo)"
                ))
            })?;
            blocking(move || {
                s.store().create_feed(&name, ecosystem)?;
                Ok(json!({ "created": name }))
            })
            .await?
        }
        (&Method::POST, ["feeds", feed, "yank" | "unyank"]) => {
            // PEP 592 (and the same field for any feed): the version stays, marked yanked.
            let yank = segments.get(2) == Some(&"yank");
            let body = body_json(request).await?;
            let (name, version) = (text(&body, "name")?, text(&body, "version")?);
            let reason = body
                .get("reason")
                .and_then(|r| r.as_str())
                .unwrap_or("")
                .to_owned();
            let feed = (*feed).to_owned();
            blocking(move || {
                let value = yank.then_some(ciborium::Value::Text(reason));
                s.store().amend_metadata(
                    &feed,
                    &[cairn_store::Amendment {
                        name: name.clone(),
                        version: version.clone(),
                        set: std::collections::BTreeMap::from([("yanked".to_string(), value)]),
                    }],
                )?;
                Ok(json!({ "feed": feed, "name": name, "version": version, "yanked": yank }))
            })
            .await?
        }
        (&Method::GET, ["checkpoints"]) => {
            blocking(move || {
                let store = s.store();
                let mut feeds = serde_json::Map::new();
                for name in store
                    .list_feeds()?
                    .into_iter()
                    .map(|f| f.name)
                    .chain([cairn_store::SYSTEM_FEED.to_owned()])
                {
                    feeds.insert(name.clone(), held_checkpoint(store, &name)?);
                }
                let now = crate::blocking::now_secs();
                let upstreams: Vec<serde_json::Value> = store
                    .upstream_checkpoints()?
                    .into_iter()
                    .map(|u| {
                        json!({
                            "upstream": u.upstream,
                            "feed": u.feed,
                            "seq": u.seq,
                            "signed_secs": u.signed_secs,
                            "age_secs": now.saturating_sub(u.signed_secs),
                            "expires_in_secs": u.expires_secs as i64 - now as i64,
                            "received_ms": u.received_ms,
                        })
                    })
                    .collect();
                Ok(json!({ "feeds": feeds, "upstreams": upstreams }))
            })
            .await?
        }
        (&Method::GET, ["tokens"]) => blocking(move || Ok(json!(s.store().token_list()?))).await?,
        (&Method::POST, ["tokens"]) => {
            let body = body_json(request).await?;
            let scopes = body
                .get("scopes")
                .and_then(|v| v.as_array())
                .ok_or_else(|| ApiError::bad_request("`scopes` must be a list of scopes"))?
                .iter()
                .map(|v| {
                    v.as_str()
                        .unwrap_or("")
                        .parse::<cairn_store::admin::Scope>()
                        .map_err(ApiError::bad_request)
                })
                .collect::<Result<Vec<_>, _>>()?;
            let label = body
                .get("label")
                .and_then(|l| l.as_str())
                .unwrap_or("")
                .to_owned();
            blocking(move || {
                let (secret, info) = s.store().token_create(scopes, &label)?;
                Ok(json!({ "token": secret, "info": info }))
            })
            .await?
        }
        (&Method::DELETE, ["tokens", id]) => {
            let id = (*id).to_owned();
            blocking(move || match s.store().token_revoke(&id)? {
                true => Ok(json!({ "revoked": id })),
                false => Err(ApiError::not_found(format!("no token with id {id}"))),
            })
            .await?
        }
        (&Method::GET, ["trust"]) => {
            blocking(move || {
                Ok(json!(s
                    .store()
                    .trust_list()?
                    .into_iter()
                    .map(|(scope, key)| json!({ "key": key.fingerprint(), "feed": scope }))
                    .collect::<Vec<_>>()))
            })
            .await?
        }
        (&Method::POST, ["trust"]) => {
            let body = body_json(request).await?;
            let key = parse_key(&text(&body, "key")?)?;
            let feed = body
                .get("feed")
                .and_then(|f| f.as_str())
                .unwrap_or(cairn_store::TRUST_ALL)
                .to_owned();
            blocking(move || {
                s.store().trust_add(&feed, &key)?;
                Ok(json!({ "trusted": key.fingerprint(), "feed": feed }))
            })
            .await?
        }
        (&Method::DELETE, ["trust", key]) => {
            let key = parse_key(key)?;
            let feed = query_param(request.uri(), "feed")
                .unwrap_or_else(|| cairn_store::TRUST_ALL.to_owned());
            blocking(move || match s.store().trust_remove(&feed, &key)? {
                true => Ok(json!({ "untrusted": key.fingerprint(), "feed": feed })),
                false => Err(ApiError::not_found(format!(
                    "key {} was not trusted for {feed}",
                    key.short()
                ))),
            })
            .await?
        }
        (&Method::GET, ["peers"]) => blocking(move || Ok(json!(s.store().peer_list()?))).await?,
        (&Method::POST, ["peers"]) => {
            let body = body_json(request).await?;
            let peer = cairn_store::admin::Peer {
                name: text(&body, "name")?,
                addr: text(&body, "addr")?,
                key: parse_key(&text(&body, "key")?)?,
            };
            peer.addr.parse::<std::net::SocketAddr>().map_err(|_| {
                ApiError::bad_request(format!(
                    "`{}` is not host:port with a numeric address",
                    peer.addr
                ))
            })?;
            blocking(move || {
                s.store().peer_add(&peer)?;
                Ok(json!({ "peer": peer.name, "key": peer.key.fingerprint() }))
            })
            .await?
        }
        (&Method::DELETE, ["peers", name]) => {
            let name = (*name).to_owned();
            blocking(move || match s.store().peer_remove(&name)? {
                true => Ok(json!({ "removed": name })),
                false => Err(ApiError::not_found(format!("no peer named {name}"))),
            })
            .await?
        }
        (&Method::GET, ["replications"]) => json!(server.replication_states()),
        (&Method::GET, ["connectors"]) => json!(server.connector_states()),
        (&Method::POST, ["replications", name, "run"]) => {
            let Some(ops) = server.operations() else {
                return Err(ApiError::new(
                    StatusCode::NOT_FOUND,
                    "this server runs no replications",
                ));
            };
            let body = body_json_or_empty(request).await?;
            let flag = |k: &str| body.get(k).and_then(|b| b.as_bool()).unwrap_or(false);
            ops.run((*name).to_owned(), flag("dry_run"), flag("allow_deletes"))
                .await
        }
        (&Method::GET, ["feeds", feed]) => {
            let feed = (*feed).to_owned();
            blocking(move || {
                let summary = s.store().feed_summary(&feed)?;
                let cursor = summary.feed.cursor();
                Ok(json!({
                    "feed": feed,
                    "root": summary.root.fingerprint.to_hex(),
                    "count": summary.root.count,
                    "epoch": format!("{:016x}", cursor.epoch),
                    "seq": cursor.seq,
                }))
            })
            .await?
        }
        (&Method::DELETE, ["feeds", feed]) => {
            let feed = (*feed).to_owned();
            blocking(move || {
                s.store().delete_feed(&feed)?;
                Ok(json!({ "removed": feed }))
            })
            .await?
        }
        (&Method::GET, ["feeds", feed, "entries"]) => {
            let feed = (*feed).to_owned();
            let all = query_param(request.uri(), "all").is_some_and(|v| v == "true" || v == "1");
            blocking(move || Ok(json!(entry_rows(s.store(), &feed, all)?))).await?
        }
        (&Method::DELETE, ["feeds", feed, "versions", name, version]) => {
            let (feed, name, version) = (
                (*feed).to_owned(),
                (*name).to_owned(),
                (*version).to_owned(),
            );
            blocking(move || {
                let d = s.store().delete(&feed, &name, &version)?;
                Ok(json!({ "feed": feed, "name": name, "version": version, "tombstone": d.doc.to_hex() }))
            })
            .await?
        }
        (&Method::POST, ["feeds", feed, "files", file]) => {
            let (feed, file) = ((*feed).to_owned(), (*file).to_owned());
            cairn_store::names::check_file_name(&file)?;
            let name = query_param(request.uri(), "name");
            let version = query_param(request.uri(), "version");
            let staged = receive_body(server, request, &file).await?;
            blocking(move || {
                let files = [crate::push::PushFile {
                    path: staged.path().to_owned(),
                    file_name: file.clone(),
                    shown: file,
                }];
                let pushed = crate::push::push(s.store(), &feed, &files, name, version)?;
                drop(staged);
                Ok(json!(pushed
                    .iter()
                    .map(|p| json!({
                        "name": p.name,
                        "version": p.version,
                        "manifest": p.doc.to_hex(),
                        "line": p.line(),
                    }))
                    .collect::<Vec<_>>()))
            })
            .await?
        }
        (&Method::POST, ["gc"]) => {
            let body = body_json_or_empty(request).await?;
            let days = body
                .get("tombstone_horizon_days")
                .and_then(|d| d.as_u64())
                .unwrap_or(30);
            blocking(move || Ok(json!(s.store().gc_with(days.saturating_mul(86_400_000))?))).await?
        }
        (&Method::POST, ["verify"]) => {
            blocking(move || {
                let report = s.store().verify()?;
                if let Some(a) = s.alerter() {
                    a.verified(&report.problems);
                }
                Ok(json!(report))
            })
            .await?
        }
        (&Method::GET, ["replication-log"]) => {
            blocking(move || Ok(json!(s.store().replication_log(1000)?))).await?
        }
        (&Method::GET, ["vulnerabilities"]) => {
            blocking(move || {
                Ok(json!(s
                    .store()
                    .system_documents::<Vulnerability>("vulnerability/")?))
            })
            .await?
        }
        (&Method::POST, ["vulnerabilities"]) => {
            let body = body_json(request).await?;
            blocking(move || Ok(json!({ "imported": s.store().import_osv(&body.to_string())? })))
                .await?
        }
        (&Method::GET, ["assessment-types"]) => {
            blocking(move || Ok(json!(s.store().assessment_types()?))).await?
        }
        (&Method::POST, ["assessment-types"]) => {
            let body = body_json(request).await?;
            let name = text(&body, "name")?;
            let blocking_flag = body
                .get("blocking")
                .and_then(|b| b.as_bool())
                .unwrap_or(false);
            let description = body
                .get("description")
                .and_then(|d| d.as_str())
                .unwrap_or("")
                .to_owned();
            blocking(move || {
                s.store()
                    .create_assessment_type(&name, blocking_flag, &description)?;
                Ok(json!({ "created": name }))
            })
            .await?
        }
        (&Method::GET, ["assessments"]) => {
            blocking(move || {
                Ok(json!(s
                    .store()
                    .system_documents::<Assessment>("assessment/")?))
            })
            .await?
        }
        (&Method::POST, ["assessments"]) => {
            let body = body_json(request).await?;
            let new = NewAssessment {
                vulnerability: text(&body, "vulnerability")?,
                assessment_type: text(&body, "type")?,
                comment: body
                    .get("comment")
                    .and_then(|c| c.as_str())
                    .unwrap_or("")
                    .into(),
                author: body
                    .get("author")
                    .and_then(|c| c.as_str())
                    .unwrap_or("")
                    .into(),
                expires_days: body.get("expires_days").and_then(|d| d.as_u64()),
            };
            blocking(move || Ok(json!({ "id": s.store().create_assessment(new)? }))).await?
        }
        (&Method::GET, ["promotions"]) => {
            let (name, version) = {
                let uri = request.uri();
                let param = |n: &str| {
                    query_param(uri, n)
                        .map(|v| crate::audit::percent_decode(&v))
                        .transpose()
                };
                (param("name")?, param("version")?)
            };
            blocking(move || {
                let all = s.store().promotions(name.as_deref(), version.as_deref())?;
                Ok(json!(all.iter().map(promotion_json).collect::<Vec<_>>()))
            })
            .await?
        }
        (&Method::POST, ["promotions"]) => {
            let body = body_json(request).await?;
            let (from, to) = (text(&body, "from")?, text(&body, "to")?);
            let (name, version) = (text(&body, "name")?, text(&body, "version")?);
            // A label is free text of any length; the record keeps at most 256 bytes of `by`.
            let mut end = admin.label.len().min(160);
            while !admin.label.is_char_boundary(end) {
                end -= 1;
            }
            let label = &admin.label[..end];
            let by = if label.is_empty() {
                format!("token {}", admin.id)
            } else {
                format!("token {} ({label})", admin.id)
            };
            blocking(move || {
                let p = s.store().promote(&from, &to, &name, &version, &by)?;
                Ok(json!({
                    "manifest": p.manifest.to_string(),
                    "already_held": p.outcome == cairn_store::PublishOutcome::Unchanged,
                    "record": p.record.0,
                    "by": by,
                }))
            })
            .await?
        }
        (
            &Method::DELETE,
            [kind @ ("vulnerabilities" | "assessment-types" | "assessments"), id],
        ) => {
            let prefix = match *kind {
                "vulnerabilities" => "vulnerability",
                "assessment-types" => "assessment-type",
                _ => "assessment",
            };
            cairn_store::names::check_version(id)?;
            let key = format!("{prefix}/{id}");
            blocking(move || {
                s.store().delete_system_document(&key)?;
                Ok(json!({ "deleted": key }))
            })
            .await?
        }
        _ => {
            return Err(ApiError::not_found(format!(
                "no admin resource `{method} /api/v1/{rest}`"
            )))
        }
    };
    Ok(axum::Json(reply).into_response())
}

/// The checkpoint held for `feed`: who signed it, what it covers, how old it is, and whether
/// it covers the feed's state now (`null` when none is held).
fn held_checkpoint(store: &cairn_store::Store, feed: &str) -> Result<serde_json::Value, ApiError> {
    let Some((cp, doc)) = store.checkpoint(feed)? else {
        return Ok(serde_json::Value::Null);
    };
    let now = crate::blocking::now_secs();
    let root = store.feed_summary(feed)?.root;
    Ok(json!({
        "signer": doc.signer().fingerprint(),
        "seq": cp.seq,
        "signed_secs": cp.time,
        "age_secs": now.saturating_sub(cp.time),
        "expires_in_secs": cp.expires as i64 - now as i64,
        "covers_current_state": cp.root.as_bytes() == root.fingerprint.as_bytes() && cp.count == root.count,
    }))
}

/// A promotion record as the admin API and `cairn promotions --json` show it.
pub fn promotion_json(p: &cairn_store::doc::Promotion) -> serde_json::Value {
    json!({
        "name": p.name,
        "version": p.version,
        "type": p.ecosystem.to_string(),
        "from": p.from,
        "to": p.to,
        "source": p.source.to_string(),
        "manifest": p.manifest.to_string(),
        "by": p.by,
        "time": p.time,
    })
}

fn parse_key(text: &str) -> Result<cairn_store::PublicKey, ApiError> {
    text.parse()
        .map_err(|e: cairn_store::doc::ParseKeyError| ApiError::bad_request(e.to_string()))
}

fn query_param(uri: &axum::http::Uri, name: &str) -> Option<String> {
    uri.query()?.split('&').find_map(|kv| {
        let (k, v) = kv.split_once('=')?;
        (k == name).then(|| v.to_owned())
    })
}
