//! Downloads from the store with bounded memory, verified as they go.
//!
//! Three ways, all sending only bytes that verified against the blob's BLAKE3:
//! - a blob that is *hot* (read whole and verified recently) is served from [`VerifiedBlobs`],
//!   a cache of verified bytes bounded in total size: no disk read, no hashing, no thread;
//! - a blob of up to [`VerifiedBlobs::max_blob`] asked for whole is read and verified whole on
//!   the blocking pool (within a bound on the bytes being filled at once), kept, and served;
//! - anything else streams: chunk groups are read and verified a batch at a time on the
//!   blocking pool, only when the client has taken the batch before, so no thread waits on a
//!   slow client. A `Range` reads and verifies only the chunk groups it covers.
//!
//! A blob that fails verification before its first byte is sent gets a 500 naming it; one
//! that fails later has its response cut, so a client never receives a byte that did not
//! verify and never mistakes a cut response for a whole one (the length was announced).
//!
//! The cache holds the verified bytes themselves, so a later change of the file on disk can
//! never reach a client through it; what it trades is memory (bounded) for the hashing.

use std::collections::{BTreeMap, HashMap};
use std::io::Read;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use axum::body::{Body, Bytes};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::Response;
use cairn_store::Hash;
use parking_lot::Mutex;
use tokio::sync::Semaphore;

use crate::{ApiError, FeedServer};

/// Verified bytes of recently downloaded blobs, least recently used out first.
#[derive(Debug)]
pub struct VerifiedBlobs {
    inner: Mutex<Lru>,
    max_bytes: usize,
    /// KiB of blobs being read whole to be kept, at once (a burst of first downloads of large
    /// blobs streams instead of filling memory).
    filling: Arc<Semaphore>,
}

#[derive(Debug, Default)]
struct Lru {
    map: HashMap<Hash, (Bytes, u64)>,
    order: BTreeMap<u64, Hash>,
    bytes: usize,
    tick: u64,
}

impl VerifiedBlobs {
    /// A cache of at most `max_bytes` (0 turns it off).
    pub fn new(max_bytes: usize) -> VerifiedBlobs {
        VerifiedBlobs {
            inner: Mutex::new(Lru::default()),
            max_bytes,
            filling: Arc::new(Semaphore::new((max_bytes / 4) >> 10)),
        }
    }

    /// The largest blob kept: a sixteenth of the cache, at most 16 MiB.
    pub fn max_blob(&self) -> u64 {
        (self.max_bytes / 16).min(16 << 20) as u64
    }

    /// The verified bytes of `hash`, if kept.
    pub fn get(&self, hash: &Hash) -> Option<Bytes> {
        let mut lru = self.inner.lock();
        let tick = lru.tick + 1;
        lru.tick = tick;
        let (bytes, old) = {
            let (bytes, t) = lru.map.get_mut(hash)?;
            let old = std::mem::replace(t, tick);
            (bytes.clone(), old)
        };
        lru.order.remove(&old);
        lru.order.insert(tick, *hash);
        Some(bytes)
    }

    /// Keeps the verified bytes of `hash`, dropping the least recently used beyond the bound.
    pub fn insert(&self, hash: Hash, bytes: Bytes) {
        if bytes.len() as u64 > self.max_blob() || self.max_bytes == 0 {
            return;
        }
        let mut lru = self.inner.lock();
        if lru.map.contains_key(&hash) {
            return;
        }
        while lru.bytes + bytes.len() > self.max_bytes {
            let Some((_, oldest)) = lru.order.pop_first() else {
                break;
            };
            if let Some((b, _)) = lru.map.remove(&oldest) {
                lru.bytes -= b.len();
            }
        }
        lru.tick += 1;
        let tick = lru.tick;
        lru.bytes += bytes.len();
        lru.order.insert(tick, hash);
        lru.map.insert(hash, (bytes, tick));
    }

    /// Bytes kept now.
    pub fn bytes(&self) -> usize {
        self.inner.lock().bytes
    }
}

/// Bytes read and verified per step of a streamed download (16 chunk groups).
const CHUNK: usize = 256 * 1024;
/// The first step is shorter: the headers go out as soon as it verified.
const FIRST_CHUNK: usize = 64 * 1024;

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
    let sent = |n: u64| server.metrics().bytes_sent.fetch_add(n, Ordering::Relaxed);
    let ok = |builder: axum::http::response::Builder, body: Body| {
        builder
            .body(body)
            .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))
    };
    // Hot: verified bytes from memory.
    let cache = server.verified();
    if let Some(bytes) = cache.get(&hash) {
        sent(len);
        return ok(
            builder,
            Body::from(bytes.slice(start as usize..end as usize)),
        );
    }
    // Small and asked for whole: read and verified whole, kept, served.
    if range.is_none() && size <= cache.max_blob() {
        let kib = (size >> 10) as u32 + 1;
        if let Ok(permit) = cache.filling.clone().try_acquire_many_owned(kib) {
            let s = server.clone();
            let bytes = crate::blocking(move || {
                let mut reader = s.store().blob_reader(&hash)?;
                let mut v = Vec::with_capacity(size as usize);
                reader.read_to_end(&mut v).map_err(|e| corrupt(hash, e))?;
                Ok(v)
            })
            .await?;
            drop(permit);
            let bytes = Bytes::from(bytes);
            cache.insert(hash, bytes.clone());
            sent(len);
            return ok(builder, Body::from(bytes));
        }
    }
    // Streamed. Open, skip to the start and read the first batch before answering, so a
    // blob that is damaged where the response starts gets a clear 500 rather than a cut one.
    let s = server.clone();
    let (first, reader) = crate::blocking(move || {
        let mut reader = s.store().blob_range_reader(&hash, start, end)?;
        let mut buf = vec![0u8; FIRST_CHUNK.min(len as usize)];
        reader.read_exact(&mut buf).map_err(|e| corrupt(hash, e))?;
        Ok((buf, reader))
    })
    .await?;
    sent(first.len() as u64);
    let left = len - first.len() as u64;
    let first =
        futures_util::stream::once(async move { Ok::<_, std::io::Error>(Bytes::from(first)) });
    // Each further batch is read on the blocking pool only when the client has taken the one
    // before: a client that stalls holds no thread.
    let rest = futures_util::stream::unfold(
        (Some(reader), left, server.clone()),
        move |(reader, left, s)| async move {
            let mut reader = reader?;
            if left == 0 {
                return None;
            }
            let n = CHUNK.min(left as usize);
            let step = tokio::task::spawn_blocking(move || {
                let mut buf = vec![0u8; n];
                let r = reader.read_exact(&mut buf);
                (reader, buf, r)
            })
            .await;
            match step {
                Ok((reader, buf, Ok(()))) => {
                    s.metrics()
                        .bytes_sent
                        .fetch_add(n as u64, Ordering::Relaxed);
                    Some((Ok(Bytes::from(buf)), (Some(reader), left - n as u64, s)))
                }
                Ok((_, _, Err(e))) => {
                    tracing::error!(blob = %hash, "download cut: {e}");
                    Some((Err(e), (None, 0, s)))
                }
                Err(e) => Some((Err(std::io::Error::other(e.to_string())), (None, 0, s))),
            }
        },
    );
    ok(
        builder,
        Body::from_stream(futures_util::StreamExt::chain(first, rest)),
    )
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
