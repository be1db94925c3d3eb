//! Downloads streamed from the store with bounded memory, verified as they go.
//!
//! The blob is read chunk group by chunk group through the store's `VerifyingReader` on a
//! blocking thread and handed to the response 64 KiB at a time through a small channel. A
//! blob that fails verification before its first byte is sent gets a 500 naming it; one that
//! fails later has its response cut, so a client never receives a byte that did not verify
//! and never mistakes a cut response for a whole one (the length was announced).

use std::io::Read;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use axum::body::{Body, Bytes};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::Response;
use cairn_store::Hash;

use crate::{ApiError, FeedServer};

const CHUNK: usize = 64 * 1024;

/// A byte range asked for with `Range`, resolved against the size: `start..end`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ByteRange {
    /// First byte.
    pub start: u64,
    /// One past the last byte.
    pub end: u64,
}

/// A `Range` that no byte of the resource satisfies (answered with 416).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Unsatisfiable;

/// What a `Range` header asks of a resource of `size` bytes: `Ok(None)` for the whole
/// (no header, or a form this server does not serve partially, such as several ranges),
/// `Err` when the range cannot be satisfied.
pub fn parse_range(
    value: Option<&HeaderValue>,
    size: u64,
) -> Result<Option<ByteRange>, Unsatisfiable> {
    let Some(text) = value.and_then(|v| v.to_str().ok()) else {
        return Ok(None);
    };
    let Some(spec) = text.trim().strip_prefix("bytes=") else {
        return Ok(None);
    };
    if spec.contains(',') {
        return Ok(None);
    }
    let Some((a, b)) = spec.trim().split_once('-') else {
        return Ok(None);
    };
    let (a, b) = (a.trim(), b.trim());
    let range = match (a.is_empty(), b.is_empty()) {
        // bytes=-N: the last N bytes.
        (true, false) => {
            let n: u64 = b.parse().map_err(|_| Unsatisfiable)?;
            if n == 0 {
                return Err(Unsatisfiable);
            }
            ByteRange {
                start: size.saturating_sub(n),
                end: size,
            }
        }
        (false, _) => {
            let start: u64 = a.parse().map_err(|_| Unsatisfiable)?;
            let end = if b.is_empty() {
                size
            } else {
                let last: u64 = b.parse().map_err(|_| Unsatisfiable)?;
                if last < start {
                    return Err(Unsatisfiable);
                }
                last.saturating_add(1).min(size)
            };
            ByteRange { start, end }
        }
        (true, true) => return Err(Unsatisfiable),
    };
    if range.start >= size {
        return Err(Unsatisfiable);
    }
    Ok(Some(range))
}

/// The response for a stored blob of `size` bytes: whole, or the part `Range` asks for;
/// `head` leaves the body out.
pub async fn blob_response(
    server: &Arc<FeedServer>,
    hash: Hash,
    size: u64,
    request: &HeaderMap,
    content_type: &'static str,
    head: bool,
) -> Result<Response, ApiError> {
    let range = match parse_range(request.get(header::RANGE), size) {
        Ok(r) => r,
        Err(Unsatisfiable) => {
            let mut response = Response::new(Body::empty());
            *response.status_mut() = StatusCode::RANGE_NOT_SATISFIABLE;
            response.headers_mut().insert(
                header::CONTENT_RANGE,
                HeaderValue::from_str(&format!("bytes */{size}"))
                    .unwrap_or(HeaderValue::from_static("bytes */0")),
            );
            return Ok(response);
        }
    };
    let (start, end) = range.map_or((0, size), |r| (r.start, r.end));
    let len = end - start;
    let mut builder = Response::builder()
        .header(header::CONTENT_TYPE, content_type)
        .header(header::CONTENT_LENGTH, len)
        .header(header::ACCEPT_RANGES, "bytes")
        .header(header::ETAG, format!("\"{hash}\""));
    builder = match range {
        Some(r) => builder.status(StatusCode::PARTIAL_CONTENT).header(
            header::CONTENT_RANGE,
            format!("bytes {}-{}/{size}", r.start, r.end - 1),
        ),
        None => builder.status(StatusCode::OK),
    };
    if head {
        return builder
            .body(Body::empty())
            .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()));
    }
    // Open, skip to the start and read the first chunk before answering, so a blob that is
    // damaged from the start gets a clear 500 rather than a cut response.
    let s = server.clone();
    let (first, reader) = crate::blocking(move || {
        let mut reader = s.store().blob_reader(&hash)?;
        std::io::copy(&mut (&mut reader).take(start), &mut std::io::sink())
            .map_err(|e| corrupt(hash, e))?;
        let mut buf = vec![0u8; CHUNK.min(len as usize)];
        reader.read_exact(&mut buf).map_err(|e| corrupt(hash, e))?;
        Ok((buf, reader))
    })
    .await?;
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Bytes, std::io::Error>>(4);
    let sent = first.len() as u64;
    server
        .metrics()
        .bytes_sent
        .fetch_add(sent, Ordering::Relaxed);
    let s = server.clone();
    let _ = tx.try_send(Ok(Bytes::from(first)));
    tokio::task::spawn_blocking(move || {
        let mut reader = reader;
        let mut left = len - sent;
        while left > 0 {
            let mut buf = vec![0u8; CHUNK.min(left as usize)];
            let item = reader.read_exact(&mut buf).map(|()| Bytes::from(buf));
            let failed = item.is_err();
            if let Err(e) = &item {
                tracing::error!(blob = %hash, "download cut: {e}");
            }
            let n = item.as_ref().map_or(0, |b| b.len() as u64);
            if tx.blocking_send(item).is_err() || failed {
                return;
            }
            s.metrics().bytes_sent.fetch_add(n, Ordering::Relaxed);
            left -= n;
        }
    });
    let stream = futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|item| (item, rx))
    });
    builder
        .body(Body::from_stream(stream))
        .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))
}

fn corrupt(hash: Hash, e: std::io::Error) -> ApiError {
    tracing::error!(blob = %hash, "download refused: {e}");
    if cairn_store::blob::as_unavailable(&e).is_some() {
        return ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("blob {hash} cannot be read now ({e}); retry later"),
        );
    }
    ApiError::new(
        StatusCode::INTERNAL_SERVER_ERROR,
        format!("blob {hash} failed verification in this store ({e}); run `cairn verify`"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(header: &str, size: u64, expect: Result<Option<(u64, u64)>, Unsatisfiable>) {
        let v = HeaderValue::from_str(header).unwrap();
        let got = parse_range(Some(&v), size).map(|r| r.map(|r| (r.start, r.end)));
        assert_eq!(got, expect, "{header}");
    }

    #[test]
    fn ranges() {
        check("bytes=0-9", 100, Ok(Some((0, 10))));
        check("bytes=90-", 100, Ok(Some((90, 100))));
        check("bytes=-10", 100, Ok(Some((90, 100))));
        check("bytes=-1000", 100, Ok(Some((0, 100))));
        check("bytes=50-1000", 100, Ok(Some((50, 100))));
        check("bytes=100-", 100, Err(Unsatisfiable));
        check("bytes=9-3", 100, Err(Unsatisfiable));
        check("bytes=x-3", 100, Err(Unsatisfiable));
        check("bytes=0-1,5-6", 100, Ok(None));
        check("items=0-1", 100, Ok(None));
        assert_eq!(parse_range(None, 10), Ok(None));
    }
}
