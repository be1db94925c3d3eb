//! Connectors: a package feed that names an upstream registry (a PyPI simple index, an npm
//! registry or a Cargo sparse index) answers for the packages it lacks from that upstream.
//!
//! - A project page, packument or crate index file lists the upstream's versions beside the
//!   ones held here, every file under this feed's own URLs. Upstream metadata is kept for
//!   `metadata_ttl_secs`.
//! - The first download of an upstream file fetches it once into a temporary file, checks it
//!   against the digest the upstream published for it (PyPI's `sha256`, npm's `sha512`
//!   integrity, Cargo's `cksum`) and against the name and version it was listed under, and
//!   publishes it as an ordinary version signed by this instance, with `cached_from` in its
//!   metadata. From then on it is served, blocked, replicated and kept like any other.
//! - Dependency confusion (an upstream package taking the place of a private one of the same
//!   name) is prevented two ways: a name with any version published here (not cached) is
//!   never looked up upstream unless it matches the connector's `merge` patterns, and names
//!   matching its `local` patterns never are, even before their first version is published
//!   here.
//! - When the upstream cannot be reached, the feed serves what it holds and says so in the
//!   `Cairn-Upstream: unreachable` response header and on the status page.
//! - Credentials go to the upstream's own origin only, never to a file host elsewhere.

use std::collections::HashMap;
use std::io::Write;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::http::StatusCode;
use bytes::Bytes;
use cairn_store::doc::{Ecosystem, Filter, FilterMatcher};
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use sha2::Digest as _;

use crate::ApiError;

/// Metadata key of a cached version: the URL its file was fetched from.
pub const CACHED_FROM: &str = "cached_from";
/// Metadata key of a version cached under the connector's `merge` patterns: listed beside
/// versions of its name published here.
pub const CACHED_MERGED: &str = "cached_merged";

/// Whether a version was cached from an upstream (not published here).
pub fn is_cached(m: &cairn_store::doc::Manifest) -> bool {
    m.metadata.contains_key(CACHED_FROM)
}

/// Which cached versions of one package are hidden ([`crate::FeedServer::hidden_cached`]).
#[derive(Clone, Copy, Debug)]
pub struct Hidden {
    /// The connector's decision, where the feed has one.
    pub(crate) by_connector: Option<bool>,
    /// Whether the package has a version published here (not cached).
    pub(crate) published_here: bool,
}

impl Hidden {
    /// Whether version `m` is hidden.
    pub fn hides(&self, m: &cairn_store::doc::Manifest) -> bool {
        is_cached(m)
            && match self.by_connector {
                Some(hide) => hide,
                None => self.published_here && !m.metadata.contains_key(CACHED_MERGED),
            }
    }
}

/// The response header that says the upstream could not be reached.
pub const UPSTREAM_HEADER: &str = "cairn-upstream";
/// Largest upstream metadata document read (a project page, a packument, an index file).
pub const MAX_METADATA_BYTES: usize = 64 << 20;
/// Upstream metadata documents kept at most per connector (the cache starts over beyond).
const MAX_METADATA_CACHED: usize = 4096;
/// Bytes of upstream metadata kept at most per connector (the cache starts over beyond).
const MAX_METADATA_CACHED_BYTES: usize = 256 << 20;
/// How many times `timeout_secs` a whole file download may take (a trickle is cut).
const FETCH_DEADLINE_FACTOR: u32 = 20;
/// Upstream downloads under way at once per connector.
const MAX_FETCHES: usize = 8;
/// Upstream metadata reads under way at once per connector.
const MAX_METADATA_READS: usize = 16;

/// One `[[connector]]` of the configuration.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConnectorConfig {
    /// The feed that answers from the upstream.
    pub feed: String,
    /// The upstream: a PyPI simple index (`https://pypi.org/simple/`), an npm registry
    /// (`https://registry.npmjs.org/`) or a Cargo sparse index (the URL of its `config.json`'s
    /// directory, `https://index.crates.io/`).
    pub upstream: String,
    /// HTTP Basic user name (with `password`).
    #[serde(default)]
    pub username: Option<String>,
    /// HTTP Basic password.
    #[serde(default)]
    pub password: Option<String>,
    /// A token: `Bearer` for npm, the `Authorization` value itself for Cargo, the password of
    /// user `__token__` for PyPI.
    #[serde(default)]
    pub token: Option<String>,
    /// How long upstream metadata is reused before it is asked for again.
    #[serde(default = "default_ttl")]
    pub metadata_ttl_secs: u64,
    /// How long a connection or a read from the upstream may take.
    #[serde(default = "default_timeout")]
    pub timeout_secs: u64,
    /// Name patterns (globs, compared as PyPI compares names) that are private: never looked
    /// up upstream, even while no version of them is published here.
    #[serde(default)]
    pub local: Vec<String>,
    /// Name patterns whose versions published here are listed beside the upstream's (a
    /// patched build of a public package), instead of hiding them: a version held here wins
    /// over the upstream's of the same version. Empty: every name published here shadows
    /// the upstream's entirely.
    #[serde(default)]
    pub merge: Vec<String>,
}

fn default_ttl() -> u64 {
    300
}

fn default_timeout() -> u64 {
    30
}

impl ConnectorConfig {
    /// Refuses a configuration that cannot work: a bad feed name or URL, half of a user name
    /// and password, both kinds of credentials, bad patterns, absurd durations.
    pub fn check(&self) -> Result<(), String> {
        cairn_store::names::check_feed_name(&self.feed).map_err(|e| e.to_string())?;
        let url = reqwest::Url::parse(&self.upstream)
            .map_err(|e| format!("upstream `{}` is not a URL: {e}", self.upstream))?;
        if !url.username().is_empty() || url.password().is_some() {
            return Err(
                "put the upstream's credentials in username and password or token, not in its URL (it is shown on the status page)"
                    .into(),
            );
        }
        if !matches!(url.scheme(), "http" | "https") || url.host_str().is_none() {
            return Err(format!(
                "upstream `{}` is not an http or https URL",
                self.upstream
            ));
        }
        if self.username.is_some() != self.password.is_some() {
            return Err("give both username and password, or neither".into());
        }
        if self.username.is_some() && self.token.is_some() {
            return Err("give a token or a username and password, not both".into());
        }
        if !(1..=3600).contains(&self.timeout_secs) {
            return Err("timeout_secs must be between 1 and 3600".into());
        }
        if self.metadata_ttl_secs > 30 * 86_400 {
            return Err("metadata_ttl_secs must be at most 30 days".into());
        }
        patterns("local", &self.local)?;
        patterns("merge", &self.merge)?;
        Ok(())
    }
}

/// The matcher of a list of name globs (none for an empty list).
fn patterns(what: &str, list: &[String]) -> Result<Option<FilterMatcher>, String> {
    if list.is_empty() {
        return Ok(None);
    }
    let filter = Filter {
        include: list.to_vec(),
        exclude: Vec::new(),
    }
    .canonical()
    .map_err(|e| format!("{what}: {e}"))?;
    Ok(Some(filter.matcher()))
}

/// What went wrong asking the upstream.
#[derive(Debug)]
pub enum UpstreamError {
    /// It could not be reached, timed out or failed (5xx): serve what is held.
    Unreachable(String),
    /// It has no such thing.
    NotFound,
    /// It answered something this instance will not take: a digest mismatch, a document
    /// too large or malformed, a file of another package.
    Refused(String),
}

impl UpstreamError {
    /// The client's error for it.
    pub fn api(self, upstream: &str) -> ApiError {
        match self {
            UpstreamError::Unreachable(e) => ApiError::new(
                StatusCode::BAD_GATEWAY,
                format!("upstream {upstream} is unreachable: {e}"),
            ),
            UpstreamError::NotFound => {
                ApiError::not_found(format!("upstream {upstream} has no such resource"))
            }
            UpstreamError::Refused(e) => ApiError::new(
                StatusCode::BAD_GATEWAY,
                format!("refused what upstream {upstream} sent: {e}"),
            ),
        }
    }
}

impl UpstreamError {
    /// The `Cairn-Upstream` header value of a listing made without the upstream.
    pub fn header(&self) -> &'static str {
        match self {
            UpstreamError::Unreachable(_) => "unreachable",
            UpstreamError::Refused(_) => "refused",
            UpstreamError::NotFound => "not-found",
        }
    }
}

/// What a listing takes from the upstream's answer: the document (the default when the
/// upstream has none), and the failure that left it out, if any.
pub(crate) fn listing<T: Default>(r: Result<T, UpstreamError>) -> (T, Option<UpstreamError>) {
    match r {
        Ok(t) => (t, None),
        Err(UpstreamError::NotFound) => (T::default(), None),
        Err(e) => (T::default(), Some(e)),
    }
}

/// The listing response with the `Cairn-Upstream` header when the upstream was left out.
pub(crate) fn with_note(
    mut response: axum::response::Response,
    note: Option<&'static str>,
) -> axum::response::Response {
    if let Some(n) = note {
        response
            .headers_mut()
            .insert(UPSTREAM_HEADER, axum::http::HeaderValue::from_static(n));
    }
    response
}

/// A connector's state, for the status page and the admin API.
#[derive(Clone, Debug, Default, Serialize)]
pub struct ConnectorState {
    /// The feed.
    pub feed: String,
    /// The upstream's URL.
    pub upstream: String,
    /// Whether the last request to the upstream was answered (none made yet: absent).
    pub reachable: Option<bool>,
    /// When the upstream last answered (ms since the epoch).
    pub last_ok_ms: Option<u64>,
    /// The last failure to reach it, and when.
    pub last_error: Option<String>,
    /// When that failure was (ms since the epoch).
    pub last_error_ms: Option<u64>,
    /// Files fetched, checked and stored since the start.
    pub files_cached: u64,
    /// Files or documents refused since the start (digest mismatch, wrong package, too large).
    pub refused: u64,
}

/// A file fetched from the upstream into a temporary file, with its digests.
#[derive(Debug)]
pub struct Fetched {
    /// The bytes.
    pub file: tempfile::NamedTempFile,
    /// How many.
    pub size: u64,
    /// SHA-256, hex.
    pub sha256: String,
    /// SHA-512, raw.
    pub sha512: Vec<u8>,
}

/// A cached metadata document: its body and content type, or none when the upstream said
/// it has no such document.
type CachedDoc = Option<(Bytes, String)>;

/// Documents by accept and URL with when they were fetched, and the bytes held in all.
type MetadataCache = (HashMap<String, (Instant, CachedDoc)>, usize);

/// One feed's connector.
#[derive(Debug)]
pub struct Connector {
    config: ConnectorConfig,
    base: reqwest::Url,
    client: reqwest::Client,
    local: Option<FilterMatcher>,
    merge: Option<FilterMatcher>,
    /// The feed's type, once a request told it (it picks how a token is sent).
    ecosystem: Mutex<Option<Ecosystem>>,
    /// Documents by accept and URL: when fetched, and the body and content type (none: the
    /// upstream has no such document), with the bytes held in all.
    metadata: Mutex<MetadataCache>,
    state: Mutex<ConnectorState>,
    fetches: tokio::sync::Semaphore,
    reads: tokio::sync::Semaphore,
    inflight: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

impl Connector {
    /// A connector for `config` (checked with [`ConnectorConfig::check`]).
    pub fn new(config: ConnectorConfig) -> Result<Connector, String> {
        config.check()?;
        cairn_store::s3::install_tls_provider();
        let mut base = reqwest::Url::parse(&config.upstream).map_err(|e| e.to_string())?;
        if !base.path().ends_with('/') {
            let path = format!("{}/", base.path());
            base.set_path(&path);
        }
        let timeout = Duration::from_secs(config.timeout_secs);
        let client = reqwest::Client::builder()
            .connect_timeout(timeout)
            .read_timeout(timeout)
            .user_agent(concat!("cairn/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| format!("building the HTTP client: {e}"))?;
        let local = patterns("local", &config.local)?;
        let merge = patterns("merge", &config.merge)?;
        let state = ConnectorState {
            feed: config.feed.clone(),
            upstream: config.upstream.clone(),
            ..ConnectorState::default()
        };
        Ok(Connector {
            base,
            client,
            local,
            merge,
            ecosystem: Mutex::new(None),
            metadata: Mutex::new((HashMap::new(), 0)),
            state: Mutex::new(state),
            fetches: tokio::sync::Semaphore::new(MAX_FETCHES),
            reads: tokio::sync::Semaphore::new(MAX_METADATA_READS),
            inflight: Mutex::new(HashMap::new()),
            config,
        })
    }

    /// The configuration.
    pub fn config(&self) -> &ConnectorConfig {
        &self.config
    }

    /// The upstream's base URL (ending in `/`).
    pub fn base(&self) -> &reqwest::Url {
        &self.base
    }

    /// The state shown on the status page.
    pub fn state(&self) -> ConnectorState {
        self.state.lock().clone()
    }

    /// Whether package `name` is private by configuration (never looked up upstream).
    pub fn is_local_name(&self, name: &str) -> bool {
        self.local
            .as_ref()
            .is_some_and(|m| m.selects(&cairn_store::names::package_key(name, "0")))
    }

    /// Whether versions of `name` published here are listed beside the upstream's.
    pub fn merges(&self, name: &str) -> bool {
        self.merge
            .as_ref()
            .is_some_and(|m| m.selects(&cairn_store::names::package_key(name, "0")))
    }

    /// `relative` resolved against the upstream's base URL.
    pub fn url(&self, relative: &str) -> Result<reqwest::Url, UpstreamError> {
        self.base
            .join(relative)
            .map_err(|e| UpstreamError::Refused(format!("`{relative}` makes no URL: {e}")))
    }

    fn reached(&self, ok: bool, error: Option<String>) {
        let mut s = self.state.lock();
        s.reachable = Some(ok);
        if ok {
            s.last_ok_ms = Some(now_ms());
        } else {
            s.last_error = error;
            s.last_error_ms = Some(now_ms());
        }
    }

    /// Counts a refusal of what the upstream sent.
    pub fn refused(&self, e: UpstreamError) -> UpstreamError {
        if let UpstreamError::Refused(reason) = &e {
            tracing::warn!(feed = %self.config.feed, upstream = %self.config.upstream, "refused: {reason}");
            self.state.lock().refused += 1;
        }
        e
    }

    fn request(&self, url: &reqwest::Url, accept: &str) -> reqwest::RequestBuilder {
        let mut r = self
            .client
            .get(url.clone())
            .header(reqwest::header::ACCEPT, accept);
        // Credentials go to the upstream's own origin only.
        if url.origin() == self.base.origin() {
            if let (Some(u), Some(p)) = (&self.config.username, &self.config.password) {
                r = r.basic_auth(u, Some(p));
            } else if let Some(t) = &self.config.token {
                r = match self.ecosystem_hint() {
                    Some(Ecosystem::Cargo) => r.header(reqwest::header::AUTHORIZATION, t),
                    Some(Ecosystem::Pypi) => r.basic_auth("__token__", Some(t)),
                    _ => r.bearer_auth(t),
                };
            }
        }
        r
    }

    fn ecosystem_hint(&self) -> Option<Ecosystem> {
        *self.ecosystem.lock()
    }

    /// Records the type of the feed it serves.
    pub(crate) fn serving(&self, ecosystem: Ecosystem) {
        *self.ecosystem.lock() = Some(ecosystem);
    }

    async fn send(
        &self,
        url: &reqwest::Url,
        accept: &str,
    ) -> Result<reqwest::Response, UpstreamError> {
        let timeout = Duration::from_secs(self.config.timeout_secs);
        let sent = tokio::time::timeout(timeout, self.request(url, accept).send()).await;
        let response = match sent {
            Err(_) => Err(format!(
                "no answer from {url} within {} s",
                timeout.as_secs()
            )),
            Ok(Err(e)) => Err(format!("{url}: {}", error_chain(&e))),
            Ok(Ok(r)) => Ok(r),
        };
        let response = match response {
            Ok(r) => r,
            Err(e) => {
                self.reached(false, Some(e.clone()));
                return Err(UpstreamError::Unreachable(e));
            }
        };
        let status = response.status();
        if status.is_server_error() || status == reqwest::StatusCode::TOO_MANY_REQUESTS {
            let e = format!("{url} answered {status}");
            self.reached(false, Some(e.clone()));
            return Err(UpstreamError::Unreachable(e));
        }
        self.reached(true, None);
        if status == reqwest::StatusCode::NOT_FOUND || status == reqwest::StatusCode::GONE {
            return Err(UpstreamError::NotFound);
        }
        if !status.is_success() {
            return Err(self.refused(UpstreamError::Refused(format!("{url} answered {status}"))));
        }
        Ok(response)
    }

    /// A metadata document at `url` and its content type, reused for `metadata_ttl_secs`
    /// (an answer that there is no such document too, so a flood of requests for names the
    /// upstream lacks is not passed on). The whole read must end within `timeout_secs`.
    pub async fn metadata(
        &self,
        url: &reqwest::Url,
        accept: &str,
    ) -> Result<(Bytes, String), UpstreamError> {
        let key = format!("{accept} {url}");
        let ttl = Duration::from_secs(self.config.metadata_ttl_secs);
        if let Some((at, doc)) = self.metadata.lock().0.get(&key) {
            if at.elapsed() < ttl {
                return doc.clone().ok_or(UpstreamError::NotFound);
            }
        }
        // One read per document at a time: the others wait for it and take its answer.
        let _one = self.one_at_a_time(&key).await;
        if let Some((at, doc)) = self.metadata.lock().0.get(&key) {
            if at.elapsed() < ttl {
                return doc.clone().ok_or(UpstreamError::NotFound);
            }
        }
        let _permit = self
            .reads
            .acquire()
            .await
            .map_err(|e| UpstreamError::Unreachable(e.to_string()))?;
        let timeout = Duration::from_secs(self.config.timeout_secs);
        let read = match tokio::time::timeout(timeout, self.read_metadata(url, accept)).await {
            Ok(r) => r,
            Err(_) => {
                let e = format!("{url} was not read whole within {} s", timeout.as_secs());
                self.reached(false, Some(e.clone()));
                Err(UpstreamError::Unreachable(e))
            }
        };
        let doc = match read {
            Ok(doc) => Some(doc),
            Err(UpstreamError::NotFound) => None,
            Err(e) => return Err(e),
        };
        let mut cache = self.metadata.lock();
        let size = doc.as_ref().map_or(0, |(b, _)| b.len());
        if cache.0.len() >= MAX_METADATA_CACHED || cache.1 + size > MAX_METADATA_CACHED_BYTES {
            // Expired documents go first; only if that is not enough does it start over.
            let (docs, bytes) = &mut *cache;
            docs.retain(|_, (at, doc)| {
                let keep = at.elapsed() < ttl;
                if !keep {
                    *bytes -= doc.as_ref().map_or(0, |(b, _)| b.len());
                }
                keep
            });
            if docs.len() >= MAX_METADATA_CACHED || *bytes + size > MAX_METADATA_CACHED_BYTES {
                *cache = (HashMap::new(), 0);
            }
        }
        if let Some((_, Some((old, _)))) = cache.0.insert(key, (Instant::now(), doc.clone())) {
            cache.1 -= old.len();
        }
        cache.1 += size;
        doc.ok_or(UpstreamError::NotFound)
    }

    async fn read_metadata(
        &self,
        url: &reqwest::Url,
        accept: &str,
    ) -> Result<(Bytes, String), UpstreamError> {
        let mut response = self.send(url, accept).await?;
        let kind = response
            .headers()
            .get(reqwest::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_owned();
        if response
            .content_length()
            .is_some_and(|n| n > MAX_METADATA_BYTES as u64)
        {
            return Err(self.refused(UpstreamError::Refused(format!(
                "{url} is larger than {MAX_METADATA_BYTES} bytes"
            ))));
        }
        let mut body = Vec::new();
        loop {
            match response.chunk().await {
                Ok(Some(chunk)) => {
                    if body.len() + chunk.len() > MAX_METADATA_BYTES {
                        return Err(self.refused(UpstreamError::Refused(format!(
                            "{url} is larger than {MAX_METADATA_BYTES} bytes"
                        ))));
                    }
                    body.extend_from_slice(&chunk);
                }
                Ok(None) => break,
                Err(e) => {
                    let e = format!("reading {url}: {}", error_chain(&e));
                    self.reached(false, Some(e.clone()));
                    return Err(UpstreamError::Unreachable(e));
                }
            }
        }
        Ok((Bytes::from(body), kind))
    }

    /// Fetches the file at `url` into a temporary file under `dir`, computing its digests;
    /// refuses more than `limit` bytes, and cuts a download that takes longer than
    /// [`FETCH_DEADLINE_FACTOR`] times `timeout_secs`.
    pub async fn fetch(
        &self,
        url: &reqwest::Url,
        limit: u64,
        dir: &Path,
    ) -> Result<Fetched, UpstreamError> {
        let deadline = Duration::from_secs(self.config.timeout_secs) * FETCH_DEADLINE_FACTOR;
        match tokio::time::timeout(deadline, self.fetch_within(url, limit, dir)).await {
            Ok(r) => r,
            Err(_) => {
                let e = format!("{url} was not read whole within {} s", deadline.as_secs());
                self.reached(false, Some(e.clone()));
                Err(UpstreamError::Unreachable(e))
            }
        }
    }

    async fn fetch_within(
        &self,
        url: &reqwest::Url,
        limit: u64,
        dir: &Path,
    ) -> Result<Fetched, UpstreamError> {
        if !matches!(url.scheme(), "http" | "https") {
            return Err(self.refused(UpstreamError::Refused(format!(
                "{url} is not an http or https URL"
            ))));
        }
        let _permit = self
            .fetches
            .acquire()
            .await
            .map_err(|e| UpstreamError::Unreachable(e.to_string()))?;
        let mut response = self.send(url, "application/octet-stream, */*").await?;
        if response.content_length().is_some_and(|n| n > limit) {
            return Err(self.refused(UpstreamError::Refused(format!(
                "{url} is larger than the {limit}-byte upload limit"
            ))));
        }
        let internal = |e: std::io::Error| UpstreamError::Unreachable(format!("writing: {e}"));
        std::fs::create_dir_all(dir).map_err(internal)?;
        let mut file = tempfile::NamedTempFile::new_in(dir).map_err(internal)?;
        let (mut sha256, mut sha512) = (sha2::Sha256::new(), sha2::Sha512::new());
        let mut size = 0u64;
        loop {
            match response.chunk().await {
                Ok(Some(chunk)) => {
                    size += chunk.len() as u64;
                    if size > limit {
                        return Err(self.refused(UpstreamError::Refused(format!(
                            "{url} is larger than the {limit}-byte upload limit"
                        ))));
                    }
                    sha256.update(&chunk);
                    sha512.update(&chunk);
                    file.write_all(&chunk).map_err(internal)?;
                }
                Ok(None) => break,
                Err(e) => {
                    let e = format!("reading {url}: {}", error_chain(&e));
                    self.reached(false, Some(e.clone()));
                    return Err(UpstreamError::Unreachable(e));
                }
            }
        }
        file.flush().map_err(internal)?;
        Ok(Fetched {
            file,
            size,
            sha256: hex::encode(sha256.finalize()),
            sha512: sha512.finalize().to_vec(),
        })
    }

    /// Serializes the fetches of one file: the second request waits for the first and then
    /// finds it stored.
    pub async fn one_at_a_time(&self, key: &str) -> tokio::sync::OwnedMutexGuard<()> {
        let lock = {
            let mut map = self.inflight.lock();
            if map.len() >= MAX_METADATA_CACHED {
                map.retain(|_, l| Arc::strong_count(l) > 1);
            }
            map.entry(key.to_owned()).or_default().clone()
        };
        lock.lock_owned().await
    }

    /// Counts a file stored.
    pub fn cached(&self) {
        self.state.lock().files_cached += 1;
    }
}

/// An error and its causes on one line.
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        out.push_str(": ");
        out.push_str(&s.to_string());
        source = s.source();
    }
    out
}

/// The digest an upstream published for a file.
#[derive(Clone, Debug)]
pub(crate) enum Published {
    /// SHA-256, hex (PyPI's `sha256`, Cargo's `cksum`).
    Sha256(String),
    /// SHA-512, raw (npm's `sha512-` integrity).
    Sha512(Vec<u8>),
}

/// A file to cache from the upstream.
#[derive(Debug)]
pub(crate) struct ToCache {
    /// Where it is.
    pub(crate) url: reqwest::Url,
    /// The digest it must have.
    pub(crate) digest: Published,
    /// Its name here.
    pub(crate) file_name: String,
    /// The package and version it must be, read from the file itself.
    pub(crate) expect: (String, String),
    /// Metadata set on the version besides what the file gives and `cached_from`.
    pub(crate) metadata: std::collections::BTreeMap<String, ciborium::Value>,
}

/// Fetches `file` into a temporary file, checks it against the digest the upstream
/// published and publishes it to `feed` as a version cached from the upstream (or a file
/// added to one); nothing is stored unless the digest and the package and version inside
/// are the ones expected.
pub(crate) async fn cache_file(
    server: &Arc<crate::FeedServer>,
    connector: &Connector,
    feed: &str,
    file: ToCache,
) -> Result<crate::push::Pushed, ApiError> {
    let upstream = &connector.config.upstream;
    let ToCache {
        url,
        digest,
        file_name,
        expect,
        mut metadata,
    } = file;
    let fetched = connector
        .fetch(
            &url,
            server.config().max_upload_bytes(),
            &server.store().dir().join("tmp"),
        )
        .await
        .map_err(|e| e.api(upstream))?;
    let (what, published, received) = match &digest {
        Published::Sha256(h) => ("sha256", h.to_ascii_lowercase(), fetched.sha256.clone()),
        Published::Sha512(b) => ("sha512", hex::encode(b), hex::encode(&fetched.sha512)),
    };
    if published != received {
        return Err(connector
            .refused(UpstreamError::Refused(format!(
                "{url}: its {what} is {received} but the upstream published {published}; nothing was stored"
            )))
            .api(upstream));
    }
    metadata.insert(CACHED_FROM.into(), ciborium::Value::Text(url.to_string()));
    if connector.merges(&expect.0) {
        metadata.insert(CACHED_MERGED.into(), ciborium::Value::Bool(true));
    }
    let (s, f, shown) = (server.clone(), feed.to_owned(), url.to_string());
    let pushed = crate::blocking(move || {
        let file = crate::push::PushFile {
            path: fetched.file.path().to_owned(),
            file_name,
            shown,
        };
        let options = crate::push::PushOptions {
            expect: Some(expect),
            metadata,
            keep_tags: true,
        };
        let out = crate::push::push_with(s.store(), &f, &[file], None, None, &options);
        drop(fetched);
        out
    })
    .await;
    match pushed {
        Ok(mut v) if v.len() == 1 => {
            let p = v.remove(0);
            connector.cached();
            tracing::info!(feed, name = %p.name, version = %p.version, %url, "cached from upstream");
            Ok(p)
        }
        Ok(_) => Err(ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "a cached file made other than one version",
        )),
        Err(e) if e.status == StatusCode::BAD_REQUEST => Err(connector
            .refused(UpstreamError::Refused(e.message))
            .api(upstream)),
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(upstream: &str, local: &[&str]) -> ConnectorConfig {
        ConnectorConfig {
            feed: "pypi".into(),
            upstream: upstream.into(),
            username: None,
            password: None,
            token: None,
            metadata_ttl_secs: 300,
            timeout_secs: 30,
            local: local.iter().map(|s| s.to_string()).collect(),
            merge: Vec::new(),
        }
    }

    #[test]
    fn private_names_are_matched_as_pypi_folds_them_scopes_included() {
        let c = Connector::new(config("http://up.example/simple", &["acme-*", "@acme/*"])).unwrap();
        assert_eq!(c.base().as_str(), "http://up.example/simple/");
        for private in ["acme-internal", "Acme_Internal", "acme.x", "@acme/lib"] {
            assert!(c.is_local_name(private), "{private}");
        }
        for public in ["requests", "acme", "@other/lib", "not-acme-x"] {
            assert!(!c.is_local_name(public), "{public}");
        }
        let none = Connector::new(config("http://up.example/", &[])).unwrap();
        assert!(!none.is_local_name("acme-internal"));
    }

    #[test]
    fn configurations_that_cannot_work_are_refused() {
        let refused = |c: ConnectorConfig| c.check().unwrap_err();
        assert!(refused(config("ftp://up.example/", &[])).contains("http"));
        assert!(refused(config("not a url", &[])).contains("not a URL"));
        assert!(refused(config("https://u:secret@up.example/", &[])).contains("credentials"));
        assert!(refused(config("http://up.example/", &["has space"])).contains("local"));
        let mut c = config("http://up.example/", &[]);
        c.username = Some("u".into());
        assert!(refused(c.clone()).contains("both"));
        c.password = Some("p".into());
        c.token = Some("t".into());
        assert!(refused(c).contains("not both"));
        let mut c = config("http://up.example/", &[]);
        c.timeout_secs = 0;
        assert!(refused(c).contains("timeout_secs"));
        let mut c = config("http://up.example/", &[]);
        c.feed = "../x".into();
        assert!(c.check().is_err());
    }

    #[tokio::test]
    async fn an_upstream_that_is_not_there_is_unreachable_and_says_so() {
        // A port nothing listens on: bound, then closed.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let c = Connector::new(config(&format!("http://127.0.0.1:{port}/simple/"), &[])).unwrap();
        let url = c.url("x/").unwrap();
        assert!(matches!(
            c.metadata(&url, "text/html").await,
            Err(UpstreamError::Unreachable(_))
        ));
        let state = c.state();
        assert_eq!(state.reachable, Some(false));
        assert!(state.last_error.is_some());
        let dir = tempfile::tempdir().unwrap();
        assert!(matches!(
            c.fetch(&url, 10, dir.path()).await,
            Err(UpstreamError::Unreachable(_))
        ));
        let ftp = reqwest::Url::parse("ftp://127.0.0.1/x").unwrap();
        assert!(matches!(
            c.fetch(&ftp, 10, dir.path()).await,
            Err(UpstreamError::Refused(_))
        ));
    }
}
