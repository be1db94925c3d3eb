//! The read-only verification API, `/verify/v1/`: what a third party needs to check a feed
//! against its writer's signature without a replication token and without trusting this
//! instance. Each feed is open to whoever may read it (anonymously where the feed is).
//!
//! | request | answer |
//! | --- | --- |
//! | `GET /verify/v1/feeds/FEED/checkpoint` | the signed checkpoint document (`application/cbor`, the exact bytes): the writer's when this instance holds one that covers its current state (for a filtered replica, the writer's checkpoint over its filter when the entries it selects are exactly those), else one this instance signs now |
//! | `GET /verify/v1/feeds/FEED/entries?after=KEY&limit=N` | `{"feed", "entries": [{"key", "doc", "kind"}], "next"}`: the feed's entries in key order (byte order of the key), tombstones included, at most `limit` (default and most 10,000) after `after`; `next` is the `after` of the next page, absent on the last |
//! | `GET /verify/v1/feeds/FEED/docs/ID` | a document an entry of FEED names (or its checkpoint), as its exact bytes |
//! | `GET /verify/v1/feeds/FEED/blobs/HASH` | a blob a manifest of FEED names (`Range` works); sent verified like every download, so a blob damaged on this instance answers an error |
//!
//! And this instance's transparency log of the checkpoints it signed (open to everyone: it
//! holds hashes; an entry is served to whoever may read its feed):
//!
//! | request | answer |
//! | --- | --- |
//! | `GET /verify/v1/log/head` | the newest signed tree head (`application/cbor`) |
//! | `GET /verify/v1/log/entries/N` | entry N, a checkpoint document (`application/cbor`) |
//! | `GET /verify/v1/log/inclusion?doc=ID&size=N` | `{"index", "size", "proof": [hex]}`: the inclusion proof of checkpoint ID in the first N entries (default: the whole log) |
//! | `GET /verify/v1/log/consistency?first=M&second=N` | `{"first", "second", "proof": [hex]}` |
//! | `GET /verify/v1/log/views` | `{"log", "size", "head", "seen": [...], "split_views": [...]}`: this log, the newest head proven of every log this instance follows, and the split views it found |

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use axum::extract::{Path, Request, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use cairn_store::{EntryKind, Hash};
use serde_json::json;

use crate::auth::Access;
use crate::{blocking, ApiError, FeedServer};

/// Entries per page at most.
const MAX_PAGE: usize = 10_000;

/// What the API may hand out of one feed: the documents its entries name (and its
/// checkpoint), and the blobs its manifests name.
#[derive(Debug, Default)]
pub(crate) struct FeedIndex {
    docs: HashSet<Hash>,
    blobs: HashSet<Hash>,
}

/// A feed's index and the store write sequence it was read at.
type Indexed = (u64, Arc<FeedIndex>);

/// Per feed, its index (built once per store write sequence, so a verifier fetching every
/// document and blob does not scan the feed for each).
#[derive(Debug, Default)]
pub(crate) struct FeedIndexes(parking_lot::Mutex<HashMap<String, Indexed>>);

/// The axum handler for `/verify/v1/feeds/{feed}/{*rest}`.
pub async fn route(
    State(server): State<Arc<FeedServer>>,
    Path((feed, rest)): Path<(String, String)>,
    request: Request,
) -> Response {
    match handle(&server, feed, &rest, request).await {
        Ok(r) => r,
        Err(e) => e.into_response(),
    }
}

fn cbor(bytes: Vec<u8>) -> Response {
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, "application/cbor")],
        bytes,
    )
        .into_response()
}

fn hash_of(text: &str) -> Result<Hash, ApiError> {
    text.parse()
        .map_err(|_| ApiError::bad_request(format!("`{text}` is not a hash (64 hex digits)")))
}

async fn handle(
    server: &Arc<FeedServer>,
    feed: String,
    rest: &str,
    request: Request,
) -> Result<Response, ApiError> {
    if request.method() != axum::http::Method::GET && request.method() != axum::http::Method::HEAD {
        return Err(ApiError::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "the verification API is read-only",
        ));
    }
    server.authorize(request.headers(), &feed, Access::Read)?;
    // Nothing of the request is held across an await (its body is not `Sync`).
    let (headers, uri) = (request.headers().clone(), request.uri().clone());
    drop(request);
    let s = server.clone();
    let segments: Vec<String> = rest
        .split('/')
        .filter(|p| !p.is_empty())
        .map(str::to_owned)
        .collect();
    let query = |name: &str| query_param(&uri, name);
    match segments.iter().map(String::as_str).collect::<Vec<_>>()[..] {
        ["checkpoint"] => {
            let ttl = cairn_store::admin::CHECKPOINT_TTL_SECS;
            blocking(move || {
                s.store().feed(&feed)?;
                Ok(cbor(s.store().checkpoint_to_audit(
                    &feed,
                    ttl,
                    cairn_store::admin::CHECKPOINT_REFRESH_SECS,
                )?))
            })
            .await
        }
        ["entries"] => {
            let after = query("after").map(|a| percent_decode(&a)).transpose()?;
            let limit = query("limit")
                .map(|l| l.parse::<usize>())
                .transpose()
                .map_err(|_| ApiError::bad_request("`limit` is a number"))?
                .unwrap_or(MAX_PAGE)
                .clamp(1, MAX_PAGE);
            blocking(move || {
                let (page, more) = s.store().entries_page(&feed, after.as_deref(), limit)?;
                let rows: Vec<_> = page
                    .iter()
                    .map(|e| {
                        json!({
                            "key": e.key,
                            "doc": e.value.doc.to_hex(),
                            "kind": match e.value.kind {
                                EntryKind::Manifest => "manifest",
                                EntryKind::Tombstone => "tombstone",
                                EntryKind::Document => "document",
                            },
                        })
                    })
                    .collect();
                let mut body = json!({ "feed": feed, "entries": rows });
                if more {
                    if let Some(last) = page.last() {
                        body["next"] = json!(last.key);
                    }
                }
                Ok(axum::Json(body).into_response())
            })
            .await
        }
        ["docs", id] => {
            let id = hash_of(id)?;
            // Only documents of this feed: an entry names it, or it is its checkpoint.
            if !s.feed_index(&feed).await?.docs.contains(&id) {
                return Err(ApiError::not_found(format!(
                    "no document {id} in feed `{feed}`"
                )));
            }
            blocking(move || {
                let doc = s.store().document(&id)?.ok_or_else(|| {
                    ApiError::not_found(format!("no document {id} in feed `{feed}`"))
                })?;
                Ok(cbor(doc.bytes().to_vec()))
            })
            .await
        }
        ["blobs", hash] => {
            let hash = hash_of(hash)?;
            if !s.feed_index(&feed).await?.blobs.contains(&hash) {
                return Err(ApiError::not_found(format!(
                    "no blob {hash} in feed `{feed}`"
                )));
            }
            let (st, h) = (s.clone(), hash);
            let size = blocking(move || Ok(st.store().blob_size(&h)?))
                .await?
                .ok_or_else(|| ApiError::not_found(format!("blob {hash} is not stored here")))?;
            // Sent verified, as every download: a blob damaged here is an error, not bytes.
            crate::body::blob_response(
                server,
                hash,
                size,
                &headers,
                "application/octet-stream",
                false,
            )
            .await
        }
        _ => Err(ApiError::not_found(
            "the verification API has checkpoint, entries, docs/ID and blobs/HASH",
        )),
    }
}

fn query_param(uri: &axum::http::Uri, name: &str) -> Option<String> {
    uri.query().and_then(|q| {
        q.split('&').find_map(|kv| {
            let (k, v) = kv.split_once('=')?;
            (k == name).then(|| v.to_owned())
        })
    })
}

fn number(uri: &axum::http::Uri, name: &str) -> Result<Option<u64>, ApiError> {
    query_param(uri, name)
        .map(|v| v.parse::<u64>())
        .transpose()
        .map_err(|_| ApiError::bad_request(format!("`{name}` is a number")))
}

fn hexes(proof: &[Hash]) -> Vec<String> {
    proof.iter().map(Hash::to_hex).collect()
}

/// The axum handler for `/verify/v1/log/{*rest}`.
pub async fn log_route(
    State(server): State<Arc<FeedServer>>,
    Path(rest): Path<String>,
    request: Request,
) -> Response {
    match log_handle(&server, &rest, request).await {
        Ok(r) => r,
        Err(e) => e.into_response(),
    }
}

async fn log_handle(
    server: &Arc<FeedServer>,
    rest: &str,
    request: Request,
) -> Result<Response, ApiError> {
    let (headers, uri) = (request.headers().clone(), request.uri().clone());
    drop(request);
    let s = server.clone();
    let segments: Vec<&str> = rest.split('/').filter(|p| !p.is_empty()).collect();
    match segments[..] {
        ["head"] => {
            blocking(move || {
                let head = s.store().log_head()?.ok_or_else(|| {
                    ApiError::not_found("this instance has signed no checkpoint yet")
                })?;
                Ok(cbor(head.doc.bytes().to_vec()))
            })
            .await
        }
        ["entries", n] => {
            let n: u64 = n
                .parse()
                .map_err(|_| ApiError::bad_request("an entry is named by its number"))?;
            let doc = blocking(move || {
                s.store()
                    .log_entry(n)?
                    .ok_or_else(|| ApiError::not_found(format!("no entry {n} in the log")))
            })
            .await?;
            let cp: cairn_store::doc::Checkpoint = doc.payload().map_err(|e| {
                ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, format!("entry {n}: {e}"))
            })?;
            server.authorize(&headers, &cp.feed, Access::Read)?;
            Ok(cbor(doc.bytes().to_vec()))
        }
        ["inclusion"] => {
            let id = hash_of(
                &query_param(&uri, "doc")
                    .ok_or_else(|| ApiError::bad_request("name the checkpoint: `?doc=ID`"))?,
            )?;
            let size = number(&uri, "size")?;
            blocking(move || {
                let store = s.store();
                let index = store.log_index_of(&id)?.ok_or_else(|| {
                    ApiError::not_found(format!("checkpoint {id} is not in this log"))
                })?;
                let size = size.unwrap_or(store.log_size()?);
                let proof = store
                    .log_inclusion(index, size)
                    .map_err(|e| ApiError::bad_request(e.to_string()))?;
                Ok(
                    axum::Json(json!({ "index": index, "size": size, "proof": hexes(&proof) }))
                        .into_response(),
                )
            })
            .await
        }
        ["consistency"] => {
            let first = number(&uri, "first")?.unwrap_or(0);
            let second = match number(&uri, "second")? {
                Some(n) => n,
                None => {
                    blocking({
                        let s = s.clone();
                        move || Ok(s.store().log_size()?)
                    })
                    .await?
                }
            };
            blocking(move || {
                let proof = s
                    .store()
                    .log_consistency(first, second)
                    .map_err(|e| ApiError::bad_request(e.to_string()))?;
                Ok(
                    axum::Json(json!({ "first": first, "second": second, "proof": hexes(&proof) }))
                        .into_response(),
                )
            })
            .await
        }
        ["views"] => {
            blocking(move || {
                let store = s.store();
                let head = store.log_head()?;
                let seen: Vec<_> = store
                    .log_seen_all()?
                    .iter()
                    .map(|h| {
                        json!({
                            "log": h.log.fingerprint(),
                            "size": h.head.size,
                            "root": h.head.root.to_hex(),
                            "time": h.head.time,
                            "head": hex::encode(h.doc.bytes()),
                        })
                    })
                    .collect();
                Ok(axum::Json(json!({
                    "log": store.identity().public_key().fingerprint(),
                    "size": store.log_size()?,
                    "head": head.map(|h| hex::encode(h.doc.bytes())),
                    "seen": seen,
                    "split_views": store.split_views()?,
                }))
                .into_response())
            })
            .await
        }
        _ => Err(ApiError::not_found(
            "the log API has head, entries/N, inclusion, consistency and views",
        )),
    }
}

pub(crate) fn percent_decode(s: &str) -> Result<String, ApiError> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' if i + 2 < bytes.len() => {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3])
                    .ok()
                    .and_then(|h| u8::from_str_radix(h, 16).ok())
                    .ok_or_else(|| ApiError::bad_request("a bad %-escape"))?;
                out.push(hex);
                i += 3;
            }
            b'%' => return Err(ApiError::bad_request("a bad %-escape")),
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8(out).map_err(|_| ApiError::bad_request("`after` is not UTF-8"))
}

impl FeedServer {
    /// What the API may hand out of `feed` (cached per store write sequence).
    pub(crate) async fn feed_index(
        self: &Arc<Self>,
        feed: &str,
    ) -> Result<Arc<FeedIndex>, ApiError> {
        let seq = self.store().write_sequence();
        let cached = self.feed_indexes.0.lock().get(feed).cloned();
        if let Some((at, index)) = cached {
            if at == seq {
                return Ok(index);
            }
        }
        let (s, f) = (self.clone(), feed.to_owned());
        let index = blocking(move || {
            let store = s.store();
            let mut index = FeedIndex::default();
            for e in store.entries(&f)? {
                index.docs.insert(e.value.doc);
                if e.value.kind != EntryKind::Manifest {
                    continue;
                }
                // A damaged document is reported when it is asked for; it must not hide the
                // feed's other documents and blobs from an auditor.
                let manifest = store.document(&e.value.doc).and_then(|d| match d {
                    Some(d) => Ok(Some(d.payload::<cairn_store::doc::Manifest>()?)),
                    None => Ok(None),
                });
                match manifest {
                    Ok(Some(m)) => index.blobs.extend(m.files.iter().map(|file| file.blob)),
                    Ok(None) => {}
                    Err(err) => tracing::warn!(feed = %f, key = %e.key, "verification API: {err}"),
                }
            }
            if let Some((_, doc)) = store.checkpoint(&f)? {
                index.docs.insert(doc.id());
            }
            Ok(Arc::new(index))
        })
        .await?;
        let mut cache = self.feed_indexes.0.lock();
        if cache.len() > 1000 {
            cache.clear();
        }
        cache.insert(feed.to_owned(), (seq, index.clone()));
        Ok(index)
    }
}
