//! Large blobs in an S3-compatible bucket (through `object_store`), possibly shared by several
//! instances.
//!
//! Layout under the configured key prefix:
//!
//! - `blobs/<64 hex>`: a blob's bytes, written once under its BLAKE3 name;
//! - `blobs/<64 hex>.obao`: its post-order outboard, written before the bytes, so bytes are
//!   never visible without their outboard;
//! - `refs/<instance key>/<64 hex>`: empty marker, "this instance indexes the blob";
//! - `condemned/<64 hex>/<instance key>`: empty marker, "this instance is deciding whether
//!   to delete the blob";
//! - `instances/<instance key>`: empty, written at open to check the bucket, and to read the
//!   bucket's clock.
//!
//! An object appears whole or not at all (a multipart upload is invisible until completed), so
//! a crash never leaves a half-written blob visible, and every read is verified group by group
//! against the outboard and the hash anyway.
//!
//! Sharing and collection. An instance writes its reference marker before it uploads or
//! adopts a blob, then waits until no collection marker for the blob exists, then uploads (or
//! finds it there). A collector writes its own collection marker, looks for any other
//! instance's reference, deletes the blob only if there is none, then drops its own reference
//! and marker. With the bucket's read-after-write consistency, either the collector sees the
//! new reference and keeps the blob, or the other instance sees the collection marker (or the
//! blob already gone) and waits, then uploads again. Each collector removes only its own
//! marker. A collector that has held its marker for longer than [`LEASE`] sends no further
//! delete, and sends deletes without retries; a marker older, by the bucket's clock, than the
//! lease plus twice the request timeout plus a margin was left by a collector that died and is
//! cleared by whoever finds it.

use std::collections::BTreeSet;
use std::fmt;
use std::fs::File;
use std::future::Future;
use std::io::{self, Read};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::StreamExt;
use object_store::aws::{AmazonS3, AmazonS3Builder};
use object_store::path::Path as ObjectPath;
use object_store::{
    ClientOptions, GetOptions, GetRange, ObjectStore, ObjectStoreExt, PutPayload, RetryConfig,
    WriteMultipart,
};
use parking_lot::Mutex;
use serde::Deserialize;

use crate::blob::{BlobBackend, RandomAccess, StagedBlob};
use crate::Hash;

/// How long a collector may take between condemning a blob and deleting it.
pub const LEASE: Duration = Duration::from_secs(30);
/// Size of the outboard windows a reader caches.
const OUTBOARD_WINDOW: u64 = 256 * 1024;
/// Outboard windows kept per reader.
const OUTBOARD_WINDOWS: usize = 16;
/// Parts uploaded at once per blob, at most.
const UPLOAD_CONCURRENCY: usize = 8;
/// Part buffers one upload may hold in memory.
const UPLOAD_BUFFER_BYTES: usize = 128 << 20;

/// `[blobs.s3]` in the configuration.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct S3Config {
    /// `http://host:port` or `https://host`.
    pub endpoint: String,
    /// The bucket; it must exist.
    pub bucket: String,
    /// Signing region (Garage's default is `garage`).
    #[serde(default = "default_region")]
    pub region: String,
    /// Key prefix inside the bucket (`site-a` puts everything under `site-a/`).
    #[serde(default)]
    pub prefix: String,
    /// Path-style addressing (`endpoint/bucket/key`), which most self-hosted servers want;
    /// false means virtual-hosted style (`bucket.endpoint/key`).
    #[serde(default = "yes")]
    pub path_style: bool,
    /// An AWS-style credentials file (`[default]` with `aws_access_key_id` and
    /// `aws_secret_access_key`); without it, `AWS_ACCESS_KEY_ID` and `AWS_SECRET_ACCESS_KEY`
    /// (and `AWS_SESSION_TOKEN`) from the environment.
    #[serde(default)]
    pub credentials_file: Option<PathBuf>,
    /// The profile to read from `credentials_file`.
    #[serde(default = "default_profile")]
    pub profile: String,
    /// Multipart part size; blobs up to this size go up in one request.
    #[serde(default = "default_part_mib")]
    pub part_size_mib: u64,
    /// Per-request timeout.
    #[serde(default = "default_timeout")]
    pub timeout_secs: u64,
    /// Retries of a failed request (with backoff) before the operation fails.
    #[serde(default = "default_retries")]
    pub retries: usize,
}

fn default_region() -> String {
    "us-east-1".into()
}
fn default_profile() -> String {
    "default".into()
}
fn yes() -> bool {
    true
}
fn default_part_mib() -> u64 {
    16
}
fn default_timeout() -> u64 {
    30
}
fn default_retries() -> usize {
    3
}

impl S3Config {
    /// `s3://bucket/prefix`: what the store records to recognise its blobs' home.
    pub fn location(&self) -> String {
        let prefix = self.prefix.trim_matches('/');
        if prefix.is_empty() {
            format!("s3://{}", self.bucket)
        } else {
            format!("s3://{}/{prefix}", self.bucket)
        }
    }
}

/// Large blobs in a bucket.
pub struct S3Blobs {
    client: Arc<AmazonS3>,
    /// The same client without retries, for a collector's deletes: a retried delete could land
    /// after its lease.
    once: Arc<AmazonS3>,
    /// Age (by the bucket's clock) after which a collection marker is taken as left by a
    /// collector that died: the lease plus the longest a delete sent within it can take.
    stale: Duration,
    /// In-process exclusion per blob (by its first byte): install, adopt and remove of one
    /// blob never overlap within an instance, which shares one reference marker.
    stripes: [Mutex<()>; 64],
    /// Always Some until dropped.
    rt: Option<tokio::runtime::Runtime>,
    handle: tokio::runtime::Handle,
    location: String,
    prefix: String,
    instance: String,
    part_size: usize,
}

impl fmt::Debug for S3Blobs {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("S3Blobs")
            .field("location", &self.location)
            .field("instance", &self.instance)
            .finish()
    }
}

fn read_credentials(path: &std::path::Path, profile: &str) -> io::Result<(String, String)> {
    let text = std::fs::read_to_string(path)?;
    let mut section = String::new();
    let (mut id, mut secret) = (None, None);
    for line in text.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') || line.starts_with(';') {
            continue;
        }
        if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            section = name.trim().to_owned();
            continue;
        }
        if section != profile {
            continue;
        }
        if let Some((k, v)) = line.split_once('=') {
            match k.trim() {
                "aws_access_key_id" => id = Some(v.trim().to_owned()),
                "aws_secret_access_key" => secret = Some(v.trim().to_owned()),
                _ => {}
            }
        }
    }
    match (id, secret) {
        (Some(id), Some(secret)) => Ok((id, secret)),
        _ => Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!(
                "{}: profile [{profile}] needs aws_access_key_id and aws_secret_access_key",
                path.display()
            ),
        )),
    }
}

/// Makes ring the process's TLS provider (the one QUIC uses) if none is set yet; the S3
/// client's TLS needs one before it is built.
pub fn install_tls_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

fn env(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.is_empty())
}

impl S3Blobs {
    /// Connects to the bucket (no request is made yet) as `instance` (the instance key).
    pub fn new(config: &S3Config, instance: &str) -> io::Result<S3Blobs> {
        install_tls_provider();
        let (id, secret) = match &config.credentials_file {
            Some(path) => read_credentials(path, &config.profile)?,
            None => match (env("AWS_ACCESS_KEY_ID"), env("AWS_SECRET_ACCESS_KEY")) {
                (Some(id), Some(secret)) => (id, secret),
                _ => {
                    return Err(io::Error::new(
                        io::ErrorKind::InvalidInput,
                        "[blobs.s3] needs credentials: set credentials_file, or AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY",
                    ))
                }
            },
        };
        if config.part_size_mib < 5 || config.part_size_mib > 1024 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "[blobs.s3] part_size_mib must be between 5 and 1024",
            ));
        }
        if config.timeout_secs == 0 || config.timeout_secs > 3600 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "[blobs.s3] timeout_secs must be between 1 and 3600",
            ));
        }
        let endpoint = config.endpoint.trim_end_matches('/');
        let timeout = Duration::from_secs(config.timeout_secs);
        let build = |retries: usize| {
            let mut builder = AmazonS3Builder::new()
                .with_endpoint(endpoint)
                .with_bucket_name(&config.bucket)
                .with_region(&config.region)
                .with_access_key_id(&id)
                .with_secret_access_key(&secret)
                .with_virtual_hosted_style_request(!config.path_style)
                // Bodies are not hashed for the signature: every blob is checked against its
                // BLAKE3 outboard on the way back, and TLS protects it on the way there.
                .with_unsigned_payload(true)
                .with_retry(RetryConfig {
                    max_retries: retries,
                    retry_timeout: timeout * 2,
                    ..RetryConfig::default()
                })
                .with_client_options(
                    // Set here, not on the builder: these options replace the builder's.
                    ClientOptions::new()
                        .with_allow_http(endpoint.starts_with("http://"))
                        .with_timeout(timeout)
                        .with_connect_timeout(Duration::from_secs(5)),
                );
            if config.credentials_file.is_none() {
                if let Some(token) = env("AWS_SESSION_TOKEN") {
                    builder = builder.with_token(token);
                }
            }
            builder.build().map_err(|e| {
                io::Error::new(io::ErrorKind::InvalidInput, format!("[blobs.s3]: {e}"))
            })
        };
        let client = build(config.retries)?;
        let once = build(0)?;
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("cairn-s3")
            .enable_all()
            .build()?;
        let prefix = config.prefix.trim_matches('/');
        Ok(S3Blobs {
            client: Arc::new(client),
            once: Arc::new(once),
            stale: LEASE + 2 * timeout + Duration::from_secs(30),
            stripes: std::array::from_fn(|_| Mutex::new(())),
            handle: rt.handle().clone(),
            rt: Some(rt),
            location: config.location(),
            prefix: if prefix.is_empty() {
                String::new()
            } else {
                format!("{prefix}/")
            },
            instance: instance.to_owned(),
            part_size: (config.part_size_mib as usize) << 20,
        })
    }

    fn key(&self, rest: &str) -> ObjectPath {
        ObjectPath::from(format!("{}{rest}", self.prefix))
    }

    fn data_key(&self, hash: &Hash) -> ObjectPath {
        self.key(&format!("blobs/{}", hash.to_hex()))
    }

    fn outboard_key(&self, hash: &Hash) -> ObjectPath {
        self.key(&format!("blobs/{}.obao", hash.to_hex()))
    }

    fn ref_key(&self, instance: &str, hash: &Hash) -> ObjectPath {
        self.key(&format!("refs/{instance}/{}", hash.to_hex()))
    }

    /// This instance's collection marker for a blob.
    fn condemned_key(&self, hash: &Hash) -> ObjectPath {
        self.key(&format!("condemned/{}/{}", hash.to_hex(), self.instance))
    }

    fn stripe(&self, hash: &Hash) -> parking_lot::MutexGuard<'_, ()> {
        self.stripes[usize::from(hash.as_bytes()[0]) % self.stripes.len()].lock()
    }

    /// Runs a future on the backend's own runtime and waits for it; callable from any thread,
    /// including a thread of another runtime.
    fn run<F>(&self, f: F) -> io::Result<F::Output>
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        run_on(&self.handle, f)
    }

    fn error(&self, action: &str, e: object_store::Error) -> io::Error {
        to_io(&self.location, action, e)
    }

    /// The size of an object, or None if it is absent.
    fn size_of(&self, key: ObjectPath) -> io::Result<Option<u64>> {
        let client = self.client.clone();
        match self.run(async move { client.head(&key).await })? {
            Ok(meta) => Ok(Some(meta.size)),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(self.error("looking up an object in", e)),
        }
    }

    fn put_marker(&self, key: ObjectPath) -> io::Result<()> {
        let client = self.client.clone();
        self.run(async move { client.put(&key, PutPayload::new()).await })?
            .map(|_| ())
            .map_err(|e| self.error("writing a marker to", e))
    }

    fn delete(&self, key: ObjectPath) -> io::Result<()> {
        let client = self.client.clone();
        match self.run(async move { client.delete(&key).await })? {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(self.error("deleting from", e)),
        }
    }

    /// The bucket's clock, read from an object written now: collection markers are aged by
    /// it, so no instance's own clock matters.
    fn server_now_ms(&self) -> io::Result<u64> {
        let key = self.key(&format!("instances/{}", self.instance));
        self.put_marker(key.clone())?;
        let client = self.client.clone();
        let meta = self
            .run(async move { client.head(&key).await })?
            .map_err(|e| self.error("reading the clock of", e))?;
        Ok(meta.last_modified.timestamp_millis().max(0) as u64)
    }

    /// Waits while any collector (this instance's included) holds a collection marker for the
    /// blob; clears exactly those markers older than `stale` by the bucket's clock (left by a
    /// collector that died).
    fn wait_not_condemned(&self, hash: &Hash) -> io::Result<()> {
        let prefix = self.key(&format!("condemned/{}", hash.to_hex()));
        let deadline = Instant::now() + self.stale + LEASE;
        loop {
            let client = self.client.clone();
            let p = prefix.clone();
            let listed: Vec<object_store::Result<object_store::ObjectMeta>> =
                self.run(async move { client.list(Some(&p)).collect().await })?;
            let mut markers = Vec::new();
            for item in listed {
                markers.push(item.map_err(|e| self.error("checking collection markers in", e))?);
            }
            if markers.is_empty() {
                return Ok(());
            }
            let now = self.server_now_ms()?;
            let stale_ms = self.stale.as_millis() as u64;
            for m in &markers {
                let age = now.saturating_sub(m.last_modified.timestamp_millis().max(0) as u64);
                if age > stale_ms {
                    tracing::warn!(blob = %hash.short(), marker = %m.location, "clearing a stale collection marker");
                    self.delete(m.location.clone())?;
                }
            }
            if Instant::now() > deadline {
                return Err(unavailable(
                    io::ErrorKind::TimedOut,
                    format!(
                        "blob {hash} is being collected by another instance sharing {}; retry",
                        self.location
                    ),
                ));
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// Whether the blob and its outboard are in the bucket with the sizes a blob of `size`
    /// bytes has.
    fn present(&self, hash: &Hash, size: u64) -> io::Result<bool> {
        let outboard_size = crate::blob::outboard_size(size);
        Ok(
            self.size_of(self.outboard_key(hash))? == Some(outboard_size)
                && self.size_of(self.data_key(hash))? == Some(size),
        )
    }

    /// Streams a local file into an object: one PUT up to the part size, else a multipart
    /// upload with a few parts in flight, aborted on failure.
    fn upload(&self, file: &std::path::Path, key: ObjectPath) -> io::Result<()> {
        let mut f = File::open(file)?;
        let len = f.metadata()?.len();
        let client = self.client.clone();
        if len <= self.part_size as u64 {
            let mut buf = Vec::with_capacity(len as usize);
            f.read_to_end(&mut buf)?;
            return self
                .run(async move { client.put(&key, PutPayload::from(buf)).await })?
                .map(|_| ())
                .map_err(|e| self.error("uploading to", e));
        }
        let part_size = self.part_size;
        let concurrency = (UPLOAD_BUFFER_BYTES / part_size.max(1)).clamp(1, UPLOAD_CONCURRENCY);
        let location = self.location.clone();
        self.run(async move {
            let upload = client
                .put_multipart(&key)
                .await
                .map_err(|e| to_io(&location, "starting an upload to", e))?;
            let mut writer = WriteMultipart::new_with_chunk_size(upload, part_size);
            let result: io::Result<()> = async {
                loop {
                    writer
                        .wait_for_capacity(concurrency)
                        .await
                        .map_err(|e| to_io(&location, "uploading to", e))?;
                    let mut buf = vec![0u8; part_size];
                    let n = read_full(&mut f, &mut buf)?;
                    if n == 0 {
                        return Ok(());
                    }
                    buf.truncate(n);
                    writer.put(Bytes::from(buf));
                }
            }
            .await;
            match result {
                Ok(()) => writer
                    .finish()
                    .await
                    .map(|_| ())
                    .map_err(|e| to_io(&location, "completing an upload to", e)),
                Err(e) => {
                    if let Err(abort) = writer.abort().await {
                        tracing::warn!("aborting a failed upload: {abort}");
                    }
                    Err(e)
                }
            }
        })?
    }

    /// Instances with a reference-marker prefix in the bucket.
    fn instances(&self) -> io::Result<Vec<String>> {
        let client = self.client.clone();
        let prefix = self.key("refs");
        let listed = self
            .run(async move { client.list_with_delimiter(Some(&prefix)).await })?
            .map_err(|e| self.error("listing instances in", e))?;
        Ok(listed
            .common_prefixes
            .iter()
            .filter_map(|p| p.filename().map(str::to_owned))
            .collect())
    }

    /// Whether any other instance holds a reference to the blob.
    fn referenced_by_others(&self, hash: &Hash) -> io::Result<bool> {
        for instance in self.instances()? {
            if instance != self.instance && self.size_of(self.ref_key(&instance, hash))?.is_some() {
                return Ok(true);
            }
        }
        Ok(false)
    }

    /// The blob hashes of the objects under `prefix` (`.obao` names count for their blob).
    fn hashes_under(&self, prefix: ObjectPath) -> io::Result<BTreeSet<Hash>> {
        let client = self.client.clone();
        let listed: Vec<object_store::Result<object_store::ObjectMeta>> =
            self.run(async move { client.list(Some(&prefix)).collect().await })?;
        let mut out = BTreeSet::new();
        for item in listed {
            let meta = item.map_err(|e| self.error("listing", e))?;
            if let Some(name) = meta.location.filename() {
                if let Ok(h) = name.strip_suffix(".obao").unwrap_or(name).parse() {
                    out.insert(h);
                }
            }
        }
        Ok(out)
    }

    /// Collects a blob under this instance's collection marker: deletes it if, with the
    /// marker standing, no other instance references it (nor this one, if `own_counts`), then
    /// drops this instance's reference (unless `own_counts`) and the marker; whether it was
    /// deleted. On any failure this instance's reference stays (so a later gc tries again).
    fn collect(&self, hash: &Hash, own_counts: bool) -> io::Result<bool> {
        let _one = self.stripe(hash);
        // One collection of a blob at a time: waiting out another collector makes it likelier
        // that the last reference's holder is the one that deletes.
        self.wait_not_condemned(hash)?;
        let mine = self.condemned_key(hash);
        let started = Instant::now();
        self.put_marker(mine.clone())?;
        let held = (own_counts && self.size_of(self.ref_key(&self.instance, hash))?.is_some())
            || self.referenced_by_others(hash)?;
        if !held {
            // On failure the marker stays and goes stale: a delete may still be under way.
            self.delete_blob_within_lease(hash, started)?;
        }
        if !own_counts {
            self.delete(self.ref_key(&self.instance, hash))?;
        }
        self.delete(mine)?;
        Ok(!held)
    }

    /// Deletes a blob's bytes and outboard for a collector whose marker went up at `started`:
    /// no delete once the lease is over, none retried (a failed one may still land, so the
    /// caller's marker must stay).
    fn delete_blob_within_lease(&self, hash: &Hash, started: Instant) -> io::Result<()> {
        for key in [self.data_key(hash), self.outboard_key(hash)] {
            if started.elapsed() > LEASE {
                return Err(unavailable(
                    io::ErrorKind::TimedOut,
                    format!("collecting blob {hash} took longer than its lease; retry"),
                ));
            }
            let client = self.once.clone();
            match self.run(async move { client.delete(&key).await })? {
                Ok(()) | Err(object_store::Error::NotFound { .. }) => {}
                Err(e) => return Err(self.error("deleting from", e)),
            }
        }
        Ok(())
    }
}

fn run_on<F>(handle: &tokio::runtime::Handle, f: F) -> io::Result<F::Output>
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    let (tx, rx) = std::sync::mpsc::sync_channel(1);
    handle.spawn(async move {
        let _ = tx.send(f.await);
    });
    // The task only ends without sending if the runtime shuts down under it.
    rx.recv().map_err(|_| {
        unavailable(
            io::ErrorKind::Other,
            "the object store client has shut down".into(),
        )
    })
}

/// An error the caller may retry later (503 at the feed server).
fn unavailable(kind: io::ErrorKind, text: String) -> io::Error {
    io::Error::new(kind, crate::blob::Unavailable(text))
}

fn to_io(location: &str, action: &str, e: object_store::Error) -> io::Error {
    let kind = match &e {
        object_store::Error::NotFound { .. } => io::ErrorKind::NotFound,
        _ => io::ErrorKind::Other,
    };
    // object_store's message stops short of the cause (refused, timed out, ...): add it.
    let mut text = e.to_string();
    let mut source = std::error::Error::source(&e);
    while let Some(cause) = source {
        let c = cause.to_string();
        if !text.contains(&c) {
            text.push_str(": ");
            text.push_str(&c);
        }
        source = cause.source();
    }
    let text = format!("{action} object store {location}: {text}");
    match kind {
        io::ErrorKind::NotFound => io::Error::new(kind, text),
        _ => unavailable(kind, text),
    }
}

fn read_full(f: &mut File, buf: &mut [u8]) -> io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        match f.read(&mut buf[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(filled)
}

impl BlobBackend for S3Blobs {
    fn install(&self, staged: StagedBlob) -> io::Result<()> {
        let hash = staged.hash;
        let _one = self.stripe(&hash);
        self.put_marker(self.ref_key(&self.instance, &hash))?;
        self.wait_not_condemned(&hash)?;
        if self.present(&hash, staged.size)? {
            return Ok(());
        }
        // Outboard first: bytes are never visible without their outboard.
        self.upload(staged.outboard_path(), self.outboard_key(&hash))?;
        self.upload(staged.data_path(), self.data_key(&hash))?;
        Ok(())
    }

    fn check(&self) -> io::Result<()> {
        // A write, because the store needs to write, and because S3 errors of writes keep
        // their status (404: no such bucket, 403: refused) where listings lose it.
        let client = self.client.clone();
        let key = self.key(&format!("instances/{}", self.instance));
        match self.run(async move { client.put(&key, PutPayload::new()).await })? {
            Ok(_) => Ok(()),
            Err(
                e @ (object_store::Error::NotFound { .. }
                | object_store::Error::PermissionDenied { .. }
                | object_store::Error::Unauthenticated { .. }),
            ) => Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "object store {}: {e}; check the bucket and credentials in [blobs.s3]",
                    self.location
                ),
            )),
            Err(e) => Err(self.error("reaching", e)),
        }
    }

    fn adopt(&self, hash: &Hash, size: u64) -> io::Result<bool> {
        let _one = self.stripe(hash);
        if !self.present(hash, size)? {
            return Ok(false);
        }
        self.put_marker(self.ref_key(&self.instance, hash))?;
        self.wait_not_condemned(hash)?;
        // Checked again after the marker: a collection that started before it may have
        // deleted the blob in between.
        if self.present(hash, size)? {
            Ok(true)
        } else {
            self.delete(self.ref_key(&self.instance, hash))?;
            Ok(false)
        }
    }

    fn open(&self, hash: &Hash) -> io::Result<(Box<dyn RandomAccess>, Box<dyn RandomAccess>)> {
        let Some(outboard_size) = self.size_of(self.outboard_key(hash))? else {
            return Err(io::Error::new(
                io::ErrorKind::NotFound,
                format!("{} is missing", self.describe(hash)),
            ));
        };
        let data = StreamReader {
            client: self.client.clone(),
            handle: self.handle.clone(),
            key: self.data_key(hash),
            location: self.location.clone(),
            state: Mutex::new(StreamState::default()),
        };
        let outboard = WindowReader {
            client: self.client.clone(),
            handle: self.handle.clone(),
            key: self.outboard_key(hash),
            location: self.location.clone(),
            size: outboard_size,
            windows: Mutex::new(Vec::new()),
        };
        Ok((Box::new(data), Box::new(outboard)))
    }

    fn remove(&self, hash: &Hash) -> io::Result<()> {
        self.collect(hash, false).map(|_| ())
    }

    fn sweep_unreferenced(&self) -> io::Result<u64> {
        let mut referenced = BTreeSet::new();
        for instance in self.instances()? {
            referenced.extend(self.hashes_under(self.key(&format!("refs/{instance}")))?);
        }
        let mut removed = 0;
        for hash in self.hashes_under(self.key("blobs"))? {
            // Checked again, under a collection marker, before anything is deleted.
            if !referenced.contains(&hash) && self.collect(&hash, true)? {
                removed += 1;
            }
        }
        Ok(removed)
    }

    fn list(&self) -> io::Result<Vec<Hash>> {
        let client = self.client.clone();
        let prefix = self.key(&format!("refs/{}", self.instance));
        let listed: Vec<object_store::Result<object_store::ObjectMeta>> =
            self.run(async move { client.list(Some(&prefix)).collect().await })?;
        let mut out = Vec::new();
        for item in listed {
            let meta = item.map_err(|e| self.error("listing", e))?;
            if let Some(h) = meta.location.filename().and_then(|n| n.parse().ok()) {
                out.push(h);
            }
        }
        out.sort();
        out.dedup();
        Ok(out)
    }

    fn describe(&self, hash: &Hash) -> String {
        format!("{}/blobs/{}", self.location, hash.to_hex())
    }
}

impl Drop for S3Blobs {
    /// Without waiting: the store may be dropped on a thread of another runtime, where a
    /// blocking shutdown is not allowed.
    fn drop(&mut self) {
        if let Some(rt) = self.rt.take() {
            rt.shutdown_background();
        }
    }
}

/// Sequential reads from one ranged GET per run of consecutive reads: a task on the backend's
/// runtime reads the response ahead into a bounded channel, so a reader that moves on in order
/// finds its bytes waiting; a jump drops the response and starts a new one at the new offset.
struct StreamReader {
    client: Arc<AmazonS3>,
    handle: tokio::runtime::Handle,
    key: ObjectPath,
    location: String,
    state: Mutex<StreamState>,
}

/// Response chunks read ahead per reader (hyper hands out up to a few tens of KiB each).
const READ_AHEAD_CHUNKS: usize = 128;

#[derive(Default)]
struct StreamState {
    /// Offset of the first byte of `pending`.
    pos: u64,
    pending: Bytes,
    chunks: Option<tokio::sync::mpsc::Receiver<Chunk>>,
    /// The object ended at `pos` (with nothing pending).
    ended: bool,
}

/// What the read-ahead task hands the reader.
enum Chunk {
    Data(Bytes),
    Failed(object_store::Error),
    /// The response ended where the object does.
    End,
}

impl StreamReader {
    fn start(&self, offset: u64) -> tokio::sync::mpsc::Receiver<Chunk> {
        let (tx, rx) = tokio::sync::mpsc::channel(READ_AHEAD_CHUNKS);
        let client = self.client.clone();
        let key = self.key.clone();
        self.handle.spawn(async move {
            let options = GetOptions {
                range: Some(GetRange::Offset(offset)),
                ..GetOptions::default()
            };
            match client.get_opts(&key, options).await {
                Err(e) => {
                    let _ = tx.send(Chunk::Failed(e)).await;
                }
                Ok(got) => {
                    let mut stream = got.into_stream();
                    loop {
                        let chunk = match stream.next().await {
                            Some(Ok(bytes)) => Chunk::Data(bytes),
                            Some(Err(e)) => Chunk::Failed(e),
                            None => Chunk::End,
                        };
                        let last = !matches!(chunk, Chunk::Data(_));
                        // A closed channel means the reader moved on or was dropped.
                        if tx.send(chunk).await.is_err() || last {
                            break;
                        }
                    }
                }
            }
        });
        rx
    }
}

impl RandomAccess for StreamReader {
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<usize> {
        let mut state = self.state.lock();
        if offset != state.pos {
            // A jump: start again at the new offset.
            *state = StreamState {
                pos: offset,
                ..StreamState::default()
            };
        }
        while state.pending.is_empty() {
            if state.ended {
                return Ok(0);
            }
            if state.chunks.is_none() {
                state.chunks = Some(self.start(offset));
            }
            let Some(chunks) = state.chunks.as_mut() else {
                return Ok(0);
            };
            match futures::executor::block_on(chunks.recv()) {
                Some(Chunk::Data(bytes)) => state.pending = bytes,
                Some(Chunk::Failed(e)) => {
                    state.chunks = None;
                    return Err(to_io(&self.location, "reading from", e));
                }
                Some(Chunk::End) => {
                    state.chunks = None;
                    state.ended = true;
                }
                None => {
                    state.chunks = None;
                    return Err(unavailable(
                        io::ErrorKind::UnexpectedEof,
                        format!(
                            "reading from object store {}: the response stopped",
                            self.location
                        ),
                    ));
                }
            }
        }
        let n = state.pending.len().min(buf.len());
        buf[..n].copy_from_slice(&state.pending[..n]);
        let rest = state.pending.slice(n..);
        state.pending = rest;
        state.pos += n as u64;
        Ok(n)
    }
}

/// Random reads through a small cache of aligned windows (for outboards, whose post-order
/// layout is read back and forth).
struct WindowReader {
    client: Arc<AmazonS3>,
    handle: tokio::runtime::Handle,
    key: ObjectPath,
    location: String,
    size: u64,
    /// Most recently used last.
    windows: Mutex<Vec<(u64, Bytes)>>,
}

impl RandomAccess for WindowReader {
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<usize> {
        if offset >= self.size || buf.is_empty() {
            return Ok(0);
        }
        let start = offset - offset % OUTBOARD_WINDOW;
        let mut windows = self.windows.lock();
        let bytes = match windows.iter().position(|(s, _)| *s == start) {
            Some(i) => {
                let w = windows.remove(i);
                let bytes = w.1.clone();
                windows.push(w);
                bytes
            }
            None => {
                let end = (start + OUTBOARD_WINDOW).min(self.size);
                let client = self.client.clone();
                let key = self.key.clone();
                let bytes = run_on(&self.handle, async move {
                    client.get_range(&key, start..end).await
                })?
                .map_err(|e| to_io(&self.location, "reading from", e))?;
                if windows.len() >= OUTBOARD_WINDOWS {
                    windows.remove(0);
                }
                windows.push((start, bytes.clone()));
                bytes
            }
        };
        let at = (offset - start) as usize;
        if at >= bytes.len() {
            return Ok(0);
        }
        let n = (bytes.len() - at).min(buf.len());
        buf[..n].copy_from_slice(&bytes[at..at + n]);
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_file_profiles() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("credentials");
        std::fs::write(
            &path,
            "# comment\n[default]\naws_access_key_id = AK1\naws_secret_access_key = S1\n\n[other]\naws_access_key_id=AK2\naws_secret_access_key=S2\n",
        )
        .unwrap();
        assert_eq!(
            read_credentials(&path, "default").unwrap(),
            ("AK1".into(), "S1".into())
        );
        assert_eq!(
            read_credentials(&path, "other").unwrap(),
            ("AK2".into(), "S2".into())
        );
        let err = read_credentials(&path, "missing").unwrap_err();
        assert!(err.to_string().contains("[missing]"), "{err}");
    }

    #[test]
    fn location_names_bucket_and_prefix() {
        let mut c: S3Config = toml::from_str(
            "endpoint = \"http://127.0.0.1:3900\"\nbucket = \"pkgs\"\nprefix = \"/site-a/\"\n",
        )
        .unwrap();
        assert_eq!(c.location(), "s3://pkgs/site-a");
        assert!(c.path_style);
        assert_eq!(c.part_size_mib, 16);
        c.prefix.clear();
        assert_eq!(c.location(), "s3://pkgs");
        assert!(
            toml::from_str::<S3Config>("endpoint = \"x\"\nbucket = \"b\"\nbogus = 1\n").is_err()
        );
    }
}
