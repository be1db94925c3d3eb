//! Downloads from the store with bounded memory, verified as they go.
//!
//! Four ways, all sending only bytes that verified against the blob's BLAKE3:
//! - a blob asked for whole whose local file was hashed whole recently ([`VerifiedFiles`])
//!   and has not changed since (its [`FileStamp`]) is handed to the socket by the kernel
//!   (`sendfile`, [`crate::zerocopy`]): no read, no copy, no hashing, no thread. A file of up
//!   to [`MAX_SENT_FILE`] not verified yet is hashed whole first, and again at least every
//!   [`REVERIFY`];
//! - a blob that is *hot* (read whole and verified recently) is served from [`VerifiedBlobs`],
//!   a cache of verified bytes bounded in total size (blobs with no local file: inline in the
//!   index, in object storage, or under a server not run by [`crate::zerocopy::serve`]);
//! - a blob of up to [`VerifiedBlobs::max_blob`] asked for whole is read and verified whole on
//!   the blocking pool (within a bound on the bytes being filled at once), kept, and served;
//! - anything else streams: chunk groups are read and verified a batch at a time on the
//!   blocking pool, only when the client has taken the batch before, so no thread waits on a
//!   slow client. A `Range` reads and verifies only the chunk groups it covers.
//!
//! A blob that fails verification before its first byte is sent gets a 500 naming it; one
//! that fails later has its response cut, so a client never receives a byte that did not
//! verify and never mistakes a cut response for a whole one (the length was announced). A file
//! sent by the kernel is stat'ed again before the response's last bytes: changed meanwhile,
//! the response is cut the same way.
//!
//! What the file path trusts that the others do not: that a file whose stamp (inode, size,
//! modification and change times) is unchanged holds the bytes it held when it was hashed,
//! for at most [`REVERIFY`]. Every write through the file system moves the change time, which
//! no user can set back; damage below the file system (a failing disk) is caught at the next
//! hashing, within [`REVERIFY`], or by `cairn verify`.

use std::collections::{BTreeMap, HashMap};
use std::io::Read;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::{Body, Bytes};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::Response;
use cairn_store::Hash;
use parking_lot::Mutex;
use tokio::sync::Semaphore;

use crate::zerocopy::{self, FileStamp};
use crate::{ApiError, FeedServer};

/// Verified bytes of recently downloaded blobs, least recently used out first.
#[derive(Debug)]
pub struct VerifiedBlobs {
    inner: Mutex<Lru<Bytes>>,
    max_bytes: usize,
    /// KiB of blobs being read whole to be kept, at once (a burst of first downloads of large
    /// blobs streams instead of filling memory).
    filling: Arc<Semaphore>,
}

/// Values by blob, each with a weight, the least recently used dropped beyond a total weight.
#[derive(Debug)]
struct Lru<V> {
    map: HashMap<Hash, (V, u64, usize)>,
    order: BTreeMap<u64, Hash>,
    weight: usize,
    max_weight: usize,
    tick: u64,
}

impl<V: Clone> Lru<V> {
    fn new(max_weight: usize) -> Lru<V> {
        Lru {
            map: HashMap::new(),
            order: BTreeMap::new(),
            weight: 0,
            max_weight,
            tick: 0,
        }
    }

    fn get(&mut self, hash: &Hash) -> Option<V> {
        self.tick += 1;
        let tick = self.tick;
        let (value, old) = {
            let (value, t, _) = self.map.get_mut(hash)?;
            let old = std::mem::replace(t, tick);
            (value.clone(), old)
        };
        self.order.remove(&old);
        self.order.insert(tick, *hash);
        Some(value)
    }

    /// Keeps `value` (replacing what `hash` had), dropping the least recently used beyond the
    /// bound; a value heavier than the bound is not kept.
    fn insert(&mut self, hash: Hash, value: V, weight: usize) {
        self.remove(&hash);
        if weight > self.max_weight {
            return;
        }
        while self.weight + weight > self.max_weight {
            let Some((_, oldest)) = self.order.pop_first() else {
                break;
            };
            if let Some((_, _, w)) = self.map.remove(&oldest) {
                self.weight -= w;
            }
        }
        self.tick += 1;
        self.weight += weight;
        self.order.insert(self.tick, hash);
        self.map.insert(hash, (value, self.tick, weight));
    }

    fn remove(&mut self, hash: &Hash) {
        if let Some((_, t, w)) = self.map.remove(hash) {
            self.order.remove(&t);
            self.weight -= w;
        }
    }
}

impl VerifiedBlobs {
    /// A cache of at most `max_bytes` (0 turns it off).
    pub fn new(max_bytes: usize) -> VerifiedBlobs {
        VerifiedBlobs {
            inner: Mutex::new(Lru::new(max_bytes)),
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
        self.inner.lock().get(hash)
    }

    /// Keeps the verified bytes of `hash`, dropping the least recently used beyond the bound.
    pub fn insert(&self, hash: Hash, bytes: Bytes) {
        if bytes.len() as u64 > self.max_blob() {
            return;
        }
        let n = bytes.len();
        self.inner.lock().insert(hash, bytes, n);
    }

    /// Bytes kept now.
    pub fn bytes(&self) -> usize {
        self.inner.lock().weight
    }
}

/// Blob files read whole and verified, remembered by their [`FileStamp`], so that later
/// downloads hand the file to the socket (see [`crate::zerocopy`]) without reading it again.
///
/// A remembered verification holds while the file's stamp is the one it had when it was
/// hashed (any write through the file system changes it) and for at most [`REVERIFY`]; after
/// that the next download hashes the file again. The stamp is checked again when the file's
/// bytes have gone out, before the response's last bytes (kept here), so a file changed in
/// between leaves the client a cut response, never a whole unverified one.
#[derive(Debug)]
pub struct VerifiedFiles {
    inner: Mutex<Lru<Remembered>>,
    /// The most recently sent of those files, kept open: a hot download opens nothing. An
    /// open file whose stamp moved (written to, or unlinked: that moves the change time too)
    /// is closed at its next use.
    open: Mutex<Lru<Arc<std::fs::File>>>,
    /// Files being hashed at once; more first downloads stream instead.
    verifying: Arc<Semaphore>,
}

#[derive(Clone, Debug)]
struct Remembered {
    stamp: FileStamp,
    at: Instant,
    tail: Bytes,
}

/// How long a verification of a file is trusted without hashing it again.
pub const REVERIFY: Duration = Duration::from_secs(60);
/// The largest blob sent from its file; larger ones stream, verified as they go.
pub const MAX_SENT_FILE: u64 = 64 << 20;
/// Verifications remembered.
const FILES_REMEMBERED: usize = 8192;
/// Bytes of verified files kept open: each counts at least [`KEPT_OPEN_MIN_WEIGHT`], so at
/// most 64 are open, and a file deleted while open holds at most this much disk until it is
/// used again or pushed out.
const KEPT_OPEN_BYTES: usize = 256 << 20;
/// The least a kept-open file counts for.
const KEPT_OPEN_MIN_WEIGHT: usize = 4 << 20;
/// Bytes at the end of a file sent from memory after the check that it did not change.
const TAIL: u64 = 64;

impl Default for VerifiedFiles {
    fn default() -> VerifiedFiles {
        VerifiedFiles {
            inner: Mutex::new(Lru::new(FILES_REMEMBERED)),
            open: Mutex::new(Lru::new(KEPT_OPEN_BYTES)),
            verifying: Arc::new(Semaphore::new(4)),
        }
    }
}

impl VerifiedFiles {
    fn get(&self, hash: &Hash) -> Option<Remembered> {
        self.inner
            .lock()
            .get(hash)
            .filter(|r| r.at.elapsed() < REVERIFY)
    }

    fn insert(&self, hash: Hash, remembered: Remembered) {
        self.inner.lock().insert(hash, remembered, 1);
    }
}

/// The body of a whole blob of `size` bytes sent from its local file, verified before (now or
/// within [`REVERIFY`]); `None` when it cannot be (no local file, not this kind of
/// connection, too many first verifications at once, the file changing while it is hashed):
/// the caller serves it another way.
async fn file_body(
    server: &Arc<FeedServer>,
    hash: Hash,
    size: u64,
) -> Result<Option<Body>, ApiError> {
    if size == 0 || size > MAX_SENT_FILE || !zerocopy::available() {
        return Ok(None);
    }
    // Verified before and unchanged: an `fstat` of the file kept open (or an open), here (no
    // disk read).
    let files = server.verified_files();
    if let Some(r) = files.get(&hash) {
        let kept = files.open.lock().get(&hash);
        let was_kept = kept.is_some();
        let file = match kept {
            Some(f) => Some(f),
            None => server
                .store()
                .reopen_local_blob(&hash)
                .and_then(Result::ok)
                .map(Arc::new),
        };
        if let Some(file) = file {
            if r.stamp.size() == size && FileStamp::of(&file).is_ok_and(|s| s == r.stamp) {
                if !was_kept {
                    let weight = usize::try_from(size).unwrap_or(usize::MAX);
                    files
                        .open
                        .lock()
                        .insert(hash, file.clone(), weight.max(KEPT_OPEN_MIN_WEIGHT));
                }
                return Ok(zerocopy::file_body(file, r.tail, r.stamp));
            }
            files.open.lock().remove(&hash);
        }
    }
    let s = server.clone();
    let found = crate::blocking(move || {
        let Some((file, stored)) = s.store().open_local_blob(&hash)? else {
            return Ok(None);
        };
        if stored != size {
            return Ok(None);
        }
        let files = s.verified_files();
        let stamp = FileStamp::of(&file).map_err(|e| corrupt(hash, e))?;
        let Ok(_permit) = files.verifying.clone().try_acquire_owned() else {
            return Ok(None);
        };
        let tail = verify_file(&file, hash, size).map_err(|e| corrupt(hash, e))?;
        if FileStamp::of(&file).map_err(|e| corrupt(hash, e))? != stamp {
            return Ok(None);
        }
        files.insert(
            hash,
            Remembered {
                stamp,
                at: Instant::now(),
                tail: tail.clone(),
            },
        );
        Ok(Some((Arc::new(file), tail, stamp)))
    })
    .await?;
    Ok(found.and_then(|(file, tail, stamp)| zerocopy::file_body(file, tail, stamp)))
}

/// Hashes the whole file, which must hold `size` bytes hashing to `hash`; its last bytes.
fn verify_file(file: &std::fs::File, hash: Hash, size: u64) -> std::io::Result<Bytes> {
    use std::os::unix::fs::FileExt;
    let mut hasher = blake3::Hasher::new();
    let mut buf = vec![0u8; CHUNK];
    let mut at = 0u64;
    loop {
        let n = file.read_at(&mut buf, at)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        at += n as u64;
        if at > size {
            break;
        }
    }
    if at != size || Hash::from(hasher.finalize()) != hash {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("its file holds {at} bytes that do not hash to it"),
        ));
    }
    let tail = TAIL.min(size);
    let mut end = vec![0u8; tail as usize];
    file.read_exact_at(&mut end, size - tail)?;
    Ok(Bytes::from(end))
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
    // Whole, from its verified file, without a copy.
    if range.is_none() {
        if let Some(body) = file_body(server, hash, size).await? {
            sent(len);
            return ok(builder, body);
        }
    }
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
