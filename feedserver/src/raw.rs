//! Raw feeds: plain files by path, `/feeds/NAME/PACKAGE/VERSION/FILE`, the same
//! package-version-file model as `cairn push FEED FILE --name PACKAGE --version VERSION`.
//!
//! | method | path | what |
//! | --- | --- | --- |
//! | `GET` | (none) | every version with its files, JSON |
//! | `GET`, `HEAD` | `PACKAGE/VERSION/FILE` | the file, with `Range` (206, 416) |
//! | `PUT` | `PACKAGE/VERSION/FILE` | store the request body (201; 200 if identical; 409 if that file exists with other bytes) |
//! | `DELETE` | `PACKAGE/VERSION/FILE` or `PACKAGE/VERSION` | delete the version (a signed tombstone); a version with several files is deleted by its own path |

use std::sync::atomic::Ordering;
use std::sync::Arc;

use axum::extract::Request;
use axum::http::{Method, StatusCode};
use axum::response::{IntoResponse, Response};
use cairn_store::doc::Ecosystem;
use cairn_store::names;
use cairn_store::store::{FeedRecord, NewFile, NewPackage, PublishOutcome};
use futures_util::StreamExt;

use crate::auth::Access;
use crate::{blocking, ApiError, FeedRequest, FeedServer};

/// Body chunks queued between the request and the store's ingest.
const BODY_QUEUE: usize = 16;

/// What the request side hands the ingesting thread.
enum Body {
    Data(bytes::Bytes),
    /// The body ended as declared.
    End,
    /// The upload is refused (too large, cut short): nothing may be stored.
    Abort,
}

/// The request body as a blocking reader. It reaches its end only on [`Body::End`]; a
/// request side that goes away without it (the client disconnected) is an error, so a cut
/// upload never becomes a blob.
struct BodyReader {
    rx: tokio::sync::mpsc::Receiver<Body>,
    pending: bytes::Bytes,
}

impl std::io::Read for BodyReader {
    fn read(&mut self, out: &mut [u8]) -> std::io::Result<usize> {
        while self.pending.is_empty() {
            match self.rx.blocking_recv() {
                Some(Body::Data(b)) => self.pending = b,
                Some(Body::End) => return Ok(0),
                Some(Body::Abort) | None => {
                    return Err(std::io::Error::new(
                        std::io::ErrorKind::UnexpectedEof,
                        "the upload ended before its declared length",
                    ))
                }
            }
        }
        let n = self.pending.len().min(out.len());
        out[..n].copy_from_slice(&self.pending[..n]);
        let rest = self.pending.split_off(n);
        self.pending = rest;
        Ok(n)
    }
}

/// Answers a request for `rest` (the path after `/feeds/NAME/`) of a raw feed.
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
        (&Method::GET, [""]) => {
            server.authorize(&headers, &feed.name, Access::Read)?;
            list(server, &feed).await
        }
        (&Method::GET | &Method::HEAD, [name, version, file]) => {
            server.authorize(&headers, &feed.name, Access::Read)?;
            crate::pypi::serve_file(
                server,
                &feed,
                Ecosystem::Raw,
                name,
                version,
                file,
                &headers,
                method == Method::HEAD,
                "application/octet-stream",
            )
            .await
        }
        (&Method::PUT, [name, version, file]) => {
            server.authorize(&headers, &feed.name, Access::Publish)?;
            server.check_writable(&feed.name)?;
            put(server, &feed, name, version, file, request).await
        }
        (&Method::DELETE, [name, version, file]) => {
            server.authorize(&headers, &feed.name, Access::Publish)?;
            server.check_writable(&feed.name)?;
            delete(server, &feed, name, version, Some(file)).await
        }
        (&Method::DELETE, [name, version]) => {
            server.authorize(&headers, &feed.name, Access::Publish)?;
            server.check_writable(&feed.name)?;
            delete(server, &feed, name, version, None).await
        }
        _ => Err(ApiError::not_found(format!(
            "no such resource `{rest}` in raw feed `{}`; files live at /feeds/{}/PACKAGE/VERSION/FILE",
            feed.name, feed.name
        ))),
    }
}

async fn list(server: &Arc<FeedServer>, feed: &FeedRecord) -> Result<Response, ApiError> {
    let (s, f) = (server.clone(), feed.clone());
    // Rendered once per state of the feed: a listing does not decode every manifest again.
    let body = blocking(move || {
        s.rendered(&f, "raw-list", || {
            let mut versions = Vec::new();
            for m in s.manifests(&f.name, |_| true)? {
                versions.push(serde_json::json!({
                    "name": m.name,
                    "version": m.version,
                    "files": m.files.iter().map(|file| serde_json::json!({
                        "name": file.name,
                        "size": file.size,
                        "blake3": file.blob.to_string(),
                        "url": format!("/feeds/{}/{}/{}/{}", m.feed, m.name, m.version, file.name),
                    })).collect::<Vec<_>>(),
                }));
            }
            Ok(serde_json::json!({ "feed": f.name, "versions": versions }).to_string())
        })
    })
    .await?;
    Ok((
        [(axum::http::header::CONTENT_TYPE, "application/json")],
        body.to_string(),
    )
        .into_response())
}

async fn put(
    server: &Arc<FeedServer>,
    feed: &FeedRecord,
    name: &str,
    version: &str,
    file: &str,
    request: Request,
) -> Result<Response, ApiError> {
    names::check_package_name(Ecosystem::Raw, name)?;
    names::check_version(version)?;
    names::check_file_name(file)?;
    // The body goes straight into the store's ingest (hashed and written once) on a blocking
    // thread, instead of being spooled to disk first; nothing is stored unless the body ends
    // as declared.
    let (tx, rx) = tokio::sync::mpsc::channel(BODY_QUEUE);
    let (s, f, n, v, fname) = (
        server.clone(),
        feed.name.clone(),
        name.to_owned(),
        version.to_owned(),
        file.to_owned(),
    );
    let task = tokio::task::spawn_blocking(move || -> Result<_, ApiError> {
        let store = s.store();
        let stored = store.put_blob(BodyReader {
            rx,
            pending: bytes::Bytes::new(),
        })?;
        let blob = stored.hash;
        let published = store.publish(
            &f,
            NewPackage {
                name: n,
                version: v,
                files: vec![NewFile {
                    name: fname,
                    blob: stored.hash,
                    size: stored.size,
                    digests: Default::default(),
                }],
                metadata: Default::default(),
            },
        )?;
        drop(stored);
        Ok((published, blob))
    });
    let limit = server.config().max_upload_bytes();
    let mut size = 0u64;
    let mut refused = None;
    let mut stream = request.into_body().into_data_stream();
    while let Some(chunk) = stream.next().await {
        let chunk = match chunk {
            Ok(chunk) => chunk,
            Err(e) => {
                refused = Some(ApiError::bad_request(format!(
                    "the upload of {file} was cut short: {e}"
                )));
                break;
            }
        };
        size += chunk.len() as u64;
        if size > limit {
            refused = Some(ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!(
                    "{file} is larger than the {} MiB upload limit",
                    server.config().max_upload_mib
                ),
            ));
            break;
        }
        // A closed channel means the store stopped reading: its error is the answer.
        if tx.send(Body::Data(chunk)).await.is_err() {
            break;
        }
    }
    let _ = tx
        .send(if refused.is_some() {
            Body::Abort
        } else {
            Body::End
        })
        .await;
    drop(tx);
    server
        .metrics()
        .bytes_received
        .fetch_add(size, Ordering::Relaxed);
    let result = task
        .await
        .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
    if let Some(refused) = refused {
        return Err(refused);
    }
    let (published, blob) = result?;
    let status = match published.outcome {
        PublishOutcome::Unchanged => StatusCode::OK,
        PublishOutcome::Created | PublishOutcome::FilesAdded => StatusCode::CREATED,
    };
    Ok((
        status,
        axum::Json(serde_json::json!({
            "name": name, "version": version, "file": file,
            "size": size, "blake3": blob.to_string(), "manifest": published.doc.to_string(),
        })),
    )
        .into_response())
}

async fn delete(
    server: &Arc<FeedServer>,
    feed: &FeedRecord,
    name: &str,
    version: &str,
    file: Option<&str>,
) -> Result<Response, ApiError> {
    names::check_package_name(Ecosystem::Raw, name)?;
    names::check_version(version)?;
    if let Some(f) = file {
        names::check_file_name(f)?;
    }
    let (s, f, n, v, file) = (
        server.clone(),
        feed.name.clone(),
        name.to_owned(),
        version.to_owned(),
        file.map(str::to_owned),
    );
    blocking(move || {
        let store = s.store();
        let Some((_, m)) = store.manifest(&f, &n, &v)? else {
            return Err(ApiError::not_found(format!("{n} {v} is not in feed `{f}`")));
        };
        if let Some(file) = &file {
            if !m.files.iter().any(|x| &x.name == file) {
                return Err(ApiError::not_found(format!("{n} {v} has no file `{file}`")));
            }
            if m.files.len() > 1 {
                return Err(ApiError::new(
                    StatusCode::CONFLICT,
                    format!(
                        "{n} {v} has {} files and versions are deleted whole; DELETE /feeds/{f}/{n}/{v} to delete them all",
                        m.files.len()
                    ),
                ));
            }
        }
        store.delete(&f, &n, &v)?;
        Ok(())
    })
    .await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}
