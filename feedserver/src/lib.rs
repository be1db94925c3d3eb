//! `cairn-feedserver`: the HTTP face of a Cairn instance.
//!
//! Every feed is served under `/feeds/NAME/...` in the protocol of its ecosystem, straight
//! from the [`cairn_store::Store`]:
//!
//! - [`pypi`]: the simple repository API (PEP 503 HTML and PEP 691 JSON, chosen by the
//!   `Accept` header), PEP 658/714 metadata files, PEP 592 yanking, and the legacy upload API
//!   that `twine upload` speaks.
//! - [`cargo`]: a sparse registry (`config.json`, index files, downloads) and the publish,
//!   yank and unyank API that `cargo` speaks.
//! - [`npm`]: packuments (full and abbreviated), tarballs, dist-tags, scoped names, and the
//!   publish and unpublish calls of the npm client.
//! - [`raw`]: files by path (`NAME/VERSION/FILE`), with `PUT`, `GET`, `HEAD`, `DELETE` and
//!   `Range`.
//! - [`auth`]: tokens as each client sends them (HTTP Basic with any user name and the token
//!   as password, `Bearer`, or the bare token), checked against the store's hashed tokens.
//! - [`blocking`]: the vulnerability assessments that refuse downloads.
//! - [`connector`]: pull-through caching: a feed answers for what it lacks from an upstream
//!   registry, each file checked against the upstream's digest and stored signed here.
//! - [`admin`]: the JSON admin and status API (feeds, replications and their log, vulnerabilities,
//!   assessment types, assessments), and `/metrics` in Prometheus text format.
//! - [`body`]: downloads streamed from the store, verified chunk group by chunk group, or
//!   sent from a blob's verified file without a copy.
//! - [`zerocopy`]: the HTTP/1.1 connections [`zerocopy::serve`] owns, which hand a verified
//!   file to the socket (`sendfile`) and check it did not change before the last bytes.
//!
//! Invariants: nothing is stored until an upload has been read whole, its declared digests
//! checked and its metadata read; a download never sends a byte of a chunk group that failed
//! verification (the response is cut instead); a name from a URL is validated before it
//! reaches the store. This crate never speaks the sync wire format.
//!
//! ```no_run
//! # async fn run(store: std::sync::Arc<cairn_store::Store>) -> std::io::Result<()> {
//! let server = cairn_feedserver::FeedServer::new(store, cairn_feedserver::HttpConfig::default());
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:8080").await?;
//! cairn_feedserver::zerocopy::serve(listener, server.router()).await
//! # }
//! ```

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use axum::extract::DefaultBodyLimit;
use axum::extract::{Request, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get};
use axum::Router;
use cairn_store::Store;
use serde::Deserialize;

pub mod admin;
pub mod alerts;
pub mod audit;
pub mod auth;
pub mod blocking;
pub mod body;
pub mod cargo;
pub mod connector;
pub mod npm;
pub mod push;
pub mod pypi;
pub mod raw;
pub mod status;
pub mod versions;
pub mod zerocopy;

/// The `[http]` section of the configuration.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpConfig {
    /// TCP address of the HTTP server.
    #[serde(default = "default_listen")]
    pub listen: SocketAddr,
    /// Feeds anyone may read without a token (`"*"` for all).
    #[serde(default = "default_anonymous_read")]
    pub anonymous_read: Vec<String>,
    /// Largest upload accepted, in MiB.
    #[serde(default = "default_max_upload_mib")]
    pub max_upload_mib: u64,
    /// Memory for the verified bytes of recently downloaded blobs, in MiB (0 turns it off).
    #[serde(default = "default_verified_cache_mib")]
    pub verified_cache_mib: u64,
}

fn default_verified_cache_mib() -> u64 {
    256
}

fn default_listen() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 8080))
}

fn default_anonymous_read() -> Vec<String> {
    vec!["*".into()]
}

fn default_max_upload_mib() -> u64 {
    1024
}

impl Default for HttpConfig {
    fn default() -> HttpConfig {
        HttpConfig {
            listen: default_listen(),
            anonymous_read: default_anonymous_read(),
            max_upload_mib: default_max_upload_mib(),
            verified_cache_mib: default_verified_cache_mib(),
        }
    }
}

impl HttpConfig {
    /// Largest upload in bytes.
    pub fn max_upload_bytes(&self) -> u64 {
        self.max_upload_mib.saturating_mul(1 << 20)
    }

    /// Whether `feed` may be read without a token.
    pub fn anonymous_read(&self, feed: &str) -> bool {
        self.anonymous_read.iter().any(|f| f == "*" || f == feed)
    }
}

/// Counters for `/metrics`.
#[derive(Debug, Default)]
pub struct Metrics {
    /// Requests answered.
    pub requests: AtomicU64,
    /// Requests answered with a 4xx or 5xx status.
    pub errors: AtomicU64,
    /// Bytes of package files sent.
    pub bytes_sent: AtomicU64,
    /// Bytes of package files received.
    pub bytes_received: AtomicU64,
    /// Downloads refused by a blocking assessment.
    pub blocked: AtomicU64,
}

/// The HTTP server's shared state.
#[derive(Debug)]
pub struct FeedServer {
    store: Arc<Store>,
    config: HttpConfig,
    /// Feeds that are pull replicas, with the peer they replicate from: read-only here.
    replicas: HashMap<String, String>,
    /// The replications of the server this feed server is part of, if any.
    operations: Option<Arc<dyn Operations>>,
    /// Per feed, what the verification API may hand out.
    feed_indexes: audit::FeedIndexes,
    /// The webhook alerts, once started.
    alerter: std::sync::OnceLock<Arc<alerts::Alerter>>,
    metrics: Metrics,
    blocklist: blocking::Cache,
    /// Rendered index documents by (feed, key), with the state they were rendered from.
    rendered: parking_lot::Mutex<HashMap<(String, String), RenderedDoc>>,
    /// What recent downloads resolved to, by (feed, name, version, file), with the store's
    /// write sequence, the second and the trust generation they were resolved at.
    resolved: parking_lot::Mutex<HashMap<DownloadKey, ([u64; 3], Resolved)>>,
    /// Verified bytes of hot blobs.
    verified: body::VerifiedBlobs,
    /// Blob files verified recently.
    verified_files: body::VerifiedFiles,
    /// Feed records by name, with the store's write sequence they were read at.
    feeds: parking_lot::Mutex<HashMap<String, (u64, cairn_store::FeedRecord)>>,
    /// The feeds' connectors to upstream registries, once started.
    connectors: std::sync::OnceLock<HashMap<String, Arc<connector::Connector>>>,
}

/// The manifests of `feed` whose package name `keep` accepts, as served: a version signed by
/// a key no longer trusted for the feed is left out.
pub(crate) fn served_manifests(
    store: &Store,
    feed: &str,
    keep: impl Fn(&str) -> bool,
) -> Result<Vec<cairn_store::doc::Manifest>, ApiError> {
    let mut out = Vec::new();
    for e in store.entries(feed)? {
        if e.value.kind != cairn_store::EntryKind::Manifest {
            continue;
        }
        if !cairn_store::names::split_package_key(&e.key).is_some_and(|(n, _)| keep(n)) {
            continue;
        }
        if let Some(doc) = store.served_document(feed, &e.value.doc)? {
            out.push(doc.payload().map_err(cairn_store::StoreError::from)?);
        }
    }
    Ok(out)
}

/// What the server around a feed server does besides serving feeds: its replications, for
/// the status page and the admin API.
pub trait Operations: Send + Sync + std::fmt::Debug {
    /// Every configured replication and its state, as JSON objects (name, peer, mode,
    /// direction, feeds, interval_secs, state, reason, last_*, lag_secs, next_run_ms).
    fn replications(&self) -> Vec<serde_json::Value>;

    /// Runs the replication `name` now; its summary as JSON (an `error` member if it failed).
    fn run(
        &self,
        name: String,
        dry_run: bool,
        allow_deletes: bool,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = serde_json::Value> + Send>>;
}

/// A download's (feed, name, version, file).
pub(crate) type DownloadKey = (String, String, String, String);

/// What a download resolved to: the file's blob and size, and the block that refuses it.
#[derive(Clone, Debug)]
pub(crate) struct Resolved {
    pub(crate) blob: cairn_store::Hash,
    pub(crate) size: u64,
    pub(crate) block: Option<blocking::Block>,
}

/// A rendered document and the (feed epoch, feed seq, system epoch, system seq, minute, trust
/// generation) it was rendered at.
type RenderedDoc = ([u64; 6], Arc<String>);

/// Rendered documents kept at most (the cache starts over beyond).
const MAX_RENDERED: usize = 10_000;
/// Feed records kept at most (the cache starts over beyond).
const MAX_FEEDS_CACHED: usize = 1024;

impl FeedServer {
    /// A server for `store`.
    pub fn new(store: Arc<Store>, config: HttpConfig) -> Arc<FeedServer> {
        FeedServer::with_replicas(store, config, HashMap::new())
    }

    /// A server for `store` whose feeds in `replicas` are pull replicas of the named peer, so
    /// publishing to them is refused.
    pub fn with_replicas(
        store: Arc<Store>,
        config: HttpConfig,
        replicas: HashMap<String, String>,
    ) -> Arc<FeedServer> {
        FeedServer::with_operations(store, config, replicas, None)
    }

    /// [`FeedServer::with_replicas`], also showing the replications of `operations` (their
    /// state, without tokens) on the status page and in the admin API, which can run them.
    pub fn with_operations(
        store: Arc<Store>,
        config: HttpConfig,
        replicas: HashMap<String, String>,
        operations: Option<Arc<dyn Operations>>,
    ) -> Arc<FeedServer> {
        Arc::new(FeedServer {
            store,
            replicas,
            operations,
            alerter: std::sync::OnceLock::new(),
            feed_indexes: audit::FeedIndexes::default(),
            metrics: Metrics::default(),
            blocklist: blocking::Cache::default(),
            rendered: parking_lot::Mutex::new(HashMap::new()),
            resolved: parking_lot::Mutex::new(HashMap::new()),
            feeds: parking_lot::Mutex::new(HashMap::new()),
            verified: body::VerifiedBlobs::new(
                usize::try_from(config.verified_cache_mib.saturating_mul(1 << 20))
                    .unwrap_or(usize::MAX),
            ),
            verified_files: body::VerifiedFiles::default(),
            connectors: std::sync::OnceLock::new(),
            config,
        })
    }

    /// The store served.
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// The replications around this feed server, if it is part of a server that runs them.
    pub fn operations(&self) -> Option<&Arc<dyn Operations>> {
        self.operations.as_ref()
    }

    /// Starts the webhook alerts of `config` (nothing without a webhook); once.
    pub fn start_alerts(self: &Arc<Self>, config: alerts::AlertsConfig) {
        if self.alerter.get().is_none() {
            if let Some(a) = alerts::start(self, config) {
                let _ = self.alerter.set(a);
            }
        }
    }

    /// Starts the connectors of `configs` (once): each feed answers for what it lacks from
    /// its upstream. Refuses two connectors on one feed, a connector on a pull replica and a
    /// bad configuration.
    pub fn start_connectors(&self, configs: &[connector::ConnectorConfig]) -> Result<(), String> {
        let mut map = HashMap::new();
        for c in configs {
            if let Some(peer) = self.replicas.get(&c.feed) {
                return Err(format!(
                    "connector of feed `{}`: the feed is a pull replica of `{peer}`; configure the connector there",
                    c.feed
                ));
            }
            if let Ok(record) = self.store.feed(&c.feed) {
                if !matches!(
                    record.ecosystem(),
                    Some(
                        cairn_store::Ecosystem::Pypi
                            | cairn_store::Ecosystem::Npm
                            | cairn_store::Ecosystem::Cargo
                    )
                ) {
                    return Err(format!(
                        "connector of feed `{}`: only PyPI, npm and Cargo feeds have upstream registries",
                        c.feed
                    ));
                }
            }
            let made = connector::Connector::new(c.clone())
                .map_err(|e| format!("connector of feed `{}`: {e}", c.feed))?;
            if map.insert(c.feed.clone(), Arc::new(made)).is_some() {
                return Err(format!("feed `{}` has two connectors", c.feed));
            }
        }
        self.connectors
            .set(map)
            .map_err(|_| "the connectors were started already".to_string())
    }

    /// Every connector's state, by feed.
    pub fn connector_states(&self) -> Vec<connector::ConnectorState> {
        let mut out: Vec<_> = self
            .connectors
            .get()
            .map(|m| m.values().map(|c| c.state()).collect())
            .unwrap_or_default();
        out.sort_by(|a, b| a.feed.cmp(&b.feed));
        out
    }

    /// The connector of `feed` if it should be asked about package `name`: none when the
    /// name is private by configuration (`local`), or has a version published here (not
    /// cached) and is not one the connector merges, so an upstream package never takes the
    /// place of a local one. `same` tells names the ecosystem counts as one.
    pub(crate) fn upstream_for(
        &self,
        feed: &cairn_store::FeedRecord,
        name: &str,
        same: impl Fn(&str) -> bool,
    ) -> Result<Option<Arc<connector::Connector>>, ApiError> {
        let Some(c) = self.connectors.get().and_then(|m| m.get(&feed.name)) else {
            return Ok(None);
        };
        if let Some(e) = feed.ecosystem() {
            c.serving(e);
        }
        if c.is_local_name(name) {
            return Ok(None);
        }
        if c.merges(name) {
            return Ok(Some(c.clone()));
        }
        let published_here = self
            .manifests(&feed.name, same)?
            .iter()
            .any(|m| !connector::is_cached(m));
        Ok((!published_here).then(|| c.clone()))
    }

    /// Refuses `name` `version` of `feed` when a blocking assessment covers it (403).
    pub(crate) fn refuse_blocked(
        &self,
        feed: &str,
        ecosystem: cairn_store::Ecosystem,
        name: &str,
        version: &str,
    ) -> Result<(), ApiError> {
        match self.blocklist.get(self.store())?.check(
            feed,
            ecosystem,
            name,
            version,
            blocking::now_secs(),
        ) {
            Some(b) => Err(pypi::blocked(name, version, b)),
            None => Ok(()),
        }
    }

    /// Which of a package's versions cached from an upstream `feed` hides, given `versions`
    /// (all of the package's), so a version cached before a name became local never stands
    /// beside the local ones. With a connector: all of them when the name is private by
    /// configuration, or has a version published here and is not merged. Without one (a
    /// replica of the feed that cached them), the decision travels with each version: a
    /// version cached under `merge` says so, and the others are hidden once the name has a
    /// version published at the source.
    pub(crate) fn hidden_cached(
        &self,
        feed: &str,
        name: &str,
        versions: &[cairn_store::doc::Manifest],
    ) -> connector::Hidden {
        let published_here = versions.iter().any(|m| !connector::is_cached(m));
        let by_connector = self
            .connectors
            .get()
            .and_then(|m| m.get(feed))
            .map(|c| c.is_local_name(name) || (!c.merges(name) && published_here));
        connector::Hidden {
            by_connector,
            published_here,
        }
    }

    /// The alerts, when a webhook is configured.
    pub fn alerter(&self) -> Option<&Arc<alerts::Alerter>> {
        self.alerter.get()
    }

    /// Every replication with its state (none without [`Operations`]).
    pub fn replication_states(&self) -> Vec<serde_json::Value> {
        self.operations
            .as_ref()
            .map(|o| o.replications())
            .unwrap_or_default()
    }

    /// The configuration.
    pub fn config(&self) -> &HttpConfig {
        &self.config
    }

    /// The counters.
    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// The blob files verified recently, sent without a copy.
    pub fn verified_files(&self) -> &body::VerifiedFiles {
        &self.verified_files
    }

    /// The verified bytes of hot blobs.
    pub fn verified(&self) -> &body::VerifiedBlobs {
        &self.verified
    }

    /// The routes: the feeds, `/healthz` and `/metrics`.
    pub fn router(self: &Arc<Self>) -> Router {
        let limit = usize::try_from(self.config.max_upload_bytes()).unwrap_or(usize::MAX);
        Router::new()
            .route("/", get(status::page))
            .route("/verify/v1/feeds/{feed}/{*rest}", get(audit::route))
            .route("/verify/v1/log/{*rest}", get(audit::log_route))
            .route("/healthz", get(|| async { "ok\n" }))
            .route("/metrics", get(metrics))
            .route("/api/v1/{*rest}", any(admin::route))
            .route("/feeds/{feed}", any(feed_request))
            .route("/feeds/{feed}/", any(feed_request))
            .route("/feeds/{feed}/{*rest}", any(feed_request))
            .layer(DefaultBodyLimit::max(limit))
            .layer(axum::middleware::from_fn_with_state(self.clone(), count))
            .with_state(self.clone())
    }

    /// The live package versions of `feed` whose package name `keep` accepts (the name is
    /// read from the entry key, so others are not decoded), in key order.
    pub fn manifests(
        &self,
        feed: &str,
        keep: impl Fn(&str) -> bool,
    ) -> Result<Vec<cairn_store::doc::Manifest>, ApiError> {
        served_manifests(self.store(), feed, keep)
    }

    /// An index document (a PyPI page, a packument, a cargo index file) for `feed`, rendered by
    /// `build` only when the feed or the system set changed since it was last rendered under
    /// `key`, or a minute passed (assessments expire); `build`'s errors are not kept.
    pub(crate) fn rendered(
        &self,
        feed: &cairn_store::FeedRecord,
        key: &str,
        build: impl FnOnce() -> Result<String, ApiError>,
    ) -> Result<Arc<String>, ApiError> {
        let system = self.feed_record(cairn_store::SYSTEM_FEED)?.cursor();
        let cursor = feed.cursor();
        let stamp = [
            cursor.epoch,
            cursor.seq,
            system.epoch,
            system.seq,
            blocking::now_secs() / 60,
            self.store.trust_generation(),
        ];
        let cache_key = (feed.name.clone(), key.to_owned());
        if let Some((s, body)) = self.rendered.lock().get(&cache_key) {
            if *s == stamp {
                return Ok(body.clone());
            }
        }
        let body = Arc::new(build()?);
        let mut cache = self.rendered.lock();
        if cache.len() >= MAX_RENDERED {
            cache.clear();
        }
        cache.insert(cache_key, (stamp, body.clone()));
        Ok(body)
    }

    /// The record of feed `name`, read again only when something was written to the store
    /// since it was last read: a download reads no feed record from RocksDB.
    pub(crate) fn feed_record(&self, name: &str) -> Result<cairn_store::FeedRecord, ApiError> {
        // The sequence is read before the record, so a write in between makes the next
        // request read it again.
        let seq = self.store.write_sequence();
        if let Some((s, record)) = self.feeds.lock().get(name) {
            if *s == seq {
                return Ok(record.clone());
            }
        }
        let record = self.store.feed(name)?;
        let mut cache = self.feeds.lock();
        if cache.len() >= MAX_FEEDS_CACHED {
            cache.clear();
        }
        cache.insert(name.to_owned(), (seq, record.clone()));
        Ok(record)
    }

    /// What a download of `key` resolved to within this second, with nothing written to the
    /// store and no trust changed since; `resolve` finds it otherwise (on the blocking pool).
    /// An error from `resolve` is not kept.
    pub(crate) async fn resolve_download(
        self: &Arc<Self>,
        key: DownloadKey,
        resolve: impl FnOnce(&FeedServer, DownloadKey) -> Result<Resolved, ApiError> + Send + 'static,
    ) -> Result<Resolved, ApiError> {
        let stamp = [
            self.store.write_sequence(),
            blocking::now_secs(),
            self.store.trust_generation(),
        ];
        if let Some((s, r)) = self.resolved.lock().get(&key) {
            if *s == stamp {
                return Ok(r.clone());
            }
        }
        let (s, k) = (self.clone(), key.clone());
        let resolved = blocking(move || resolve(&s, k)).await?;
        let mut cache = self.resolved.lock();
        if cache.len() >= MAX_RENDERED {
            cache.clear();
        }
        cache.insert(key, (stamp, resolved.clone()));
        Ok(resolved)
    }

    /// Refuses a publish to a pull replica.
    pub fn check_writable(&self, feed: &str) -> Result<(), ApiError> {
        match self.replicas.get(feed) {
            Some(peer) => Err(ApiError::new(
                StatusCode::FORBIDDEN,
                format!("feed `{feed}` is a pull replica of `{peer}`; publish to `{peer}`"),
            )),
            None => Ok(()),
        }
    }
}

async fn feed_request(
    State(server): State<Arc<FeedServer>>,
    params: axum::extract::RawPathParams,
    request: Request,
) -> Response {
    let param = |name: &str| {
        params
            .iter()
            .find_map(|(k, v)| (k == name).then_some(v))
            .unwrap_or("")
    };
    let (feed, rest) = (param("feed"), param("rest"));
    match dispatch(&server, feed, rest, request).await {
        Ok(r) => r,
        Err(e) => e.into_response(),
    }
}

async fn dispatch(
    server: &Arc<FeedServer>,
    feed: &str,
    rest: &str,
    request: Request,
) -> Result<Response, ApiError> {
    cairn_store::names::check_feed_name(feed)?;
    // Decoded paths reach here: refuse traversal and absolute paths before any module
    // parses them (names are checked again where they become keys).
    if rest.starts_with('/')
        || rest
            .split('/')
            .any(|seg| seg == ".." || seg == "." || seg.contains(['\\', '\0']))
    {
        return Err(ApiError::bad_request(format!(
            "path `{rest}` must not contain `..`, `.`, `\\` or NUL segments or start with `/`"
        )));
    }
    let record = server.feed_record(feed)?;
    let Some(ecosystem) = record.ecosystem() else {
        return Err(ApiError::not_found(format!(
            "`{feed}` is not a package feed"
        )));
    };
    let req = FeedRequest {
        feed: record,
        method: request.method().clone(),
        headers: request.headers().clone(),
        rest,
    };
    match ecosystem {
        cairn_store::Ecosystem::Pypi => pypi::handle(server, req, request).await,
        cairn_store::Ecosystem::Raw => raw::handle(server, req, request).await,
        cairn_store::Ecosystem::Cargo => cargo::handle(server, req, request).await,
        cairn_store::Ecosystem::Npm => npm::handle(server, req, request).await,
    }
}

/// What every ecosystem handler starts from: the feed, the request's method and headers, and
/// the path after `/feeds/NAME/` (already refused if it holds `..`, `.`, `\\` or NUL segments).
pub(crate) struct FeedRequest<'a> {
    pub(crate) feed: cairn_store::FeedRecord,
    pub(crate) method: axum::http::Method,
    pub(crate) headers: axum::http::HeaderMap,
    pub(crate) rest: &'a str,
}

async fn count(
    axum::extract::State(server): axum::extract::State<Arc<FeedServer>>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    // Copied only when they will be logged: a download does no more work than it must.
    let logged = tracing::enabled!(tracing::Level::DEBUG)
        .then(|| (request.method().clone(), request.uri().path().to_owned()));
    let response = next.run(request).await;
    server.metrics.requests.fetch_add(1, Ordering::Relaxed);
    let status = response.status();
    if status.is_client_error() || status.is_server_error() {
        server.metrics.errors.fetch_add(1, Ordering::Relaxed);
    }
    if let Some((method, path)) = logged {
        tracing::debug!(%method, %path, status = status.as_u16(), "http request");
    }
    response
}

async fn metrics(axum::extract::State(server): axum::extract::State<Arc<FeedServer>>) -> String {
    let m = &server.metrics;
    let mut out = String::new();
    for (name, help, value) in [
        (
            "cairn_http_requests_total",
            "HTTP requests answered",
            m.requests.load(Ordering::Relaxed),
        ),
        (
            "cairn_http_errors_total",
            "HTTP requests answered with 4xx or 5xx",
            m.errors.load(Ordering::Relaxed),
        ),
        (
            "cairn_http_sent_bytes_total",
            "bytes of package files sent",
            m.bytes_sent.load(Ordering::Relaxed),
        ),
        (
            "cairn_http_received_bytes_total",
            "bytes of package files received",
            m.bytes_received.load(Ordering::Relaxed),
        ),
        (
            "cairn_downloads_blocked_total",
            "downloads refused by a blocking assessment",
            m.blocked.load(Ordering::Relaxed),
        ),
    ] {
        out.push_str(&format!(
            "# HELP {name} {help}\n# TYPE {name} counter\n{name} {value}\n"
        ));
    }
    let s = server.clone();
    if let Ok(Ok(log)) = tokio::task::spawn_blocking(move || s.store().replication_log(1000)).await
    {
        out.push_str(&replication_metrics(&log, blocking::now_secs()));
    }
    let s = server.clone();
    if let Ok(Ok(seen)) =
        tokio::task::spawn_blocking(move || s.store().upstream_checkpoints()).await
    {
        out.push_str(&checkpoint_metrics(&seen, blocking::now_secs()));
    }
    let s = server.clone();
    if let Ok(Ok(text)) = tokio::task::spawn_blocking(move || transparency_metrics(s.store())).await
    {
        out.push_str(&text);
    }
    out
}

/// The transparency log: this instance's size, the newest proven size of each log it
/// follows, and the split views found per log (any is an alarm).
fn transparency_metrics(store: &cairn_store::Store) -> Result<String, cairn_store::StoreError> {
    let mut out = format!(
        "# HELP cairn_transparency_log_size entries in this instance's transparency log of checkpoints\n# TYPE cairn_transparency_log_size gauge\ncairn_transparency_log_size {}\n",
        store.log_size()?
    );
    out.push_str("# HELP cairn_transparency_seen_size size of the newest tree head proven consistent, per log followed\n# TYPE cairn_transparency_seen_size gauge\n");
    for h in store.log_seen_all()? {
        out.push_str(&format!(
            "cairn_transparency_seen_size{{log=\"{}\"}} {}\n",
            h.log.fingerprint(),
            h.head.size
        ));
    }
    let views = store.split_views()?;
    let mut per: std::collections::BTreeMap<&str, u64> = std::collections::BTreeMap::new();
    for v in &views {
        *per.entry(v.log.as_str()).or_default() += 1;
    }
    out.push_str(&format!(
        "# HELP cairn_transparency_split_views_total split views found in all: tree heads of one log that no consistency proof joins (a log showing different histories to different sites)\n# TYPE cairn_transparency_split_views_total gauge\ncairn_transparency_split_views_total {}\n",
        views.len()
    ));
    out.push_str("# HELP cairn_transparency_split_views split views found per log\n# TYPE cairn_transparency_split_views gauge\n");
    for (log, n) in per {
        out.push_str(&format!(
            "cairn_transparency_split_views{{log=\"{log}\"}} {n}\n"
        ));
    }
    Ok(out)
}

/// How fresh the state each upstream gave is: the age of the newest checkpoint that came
/// through it per feed, and the seconds until it expires (negative once it has).
fn checkpoint_metrics(seen: &[cairn_store::admin::UpstreamCheckpoint], now_secs: u64) -> String {
    let mut out = String::from(
        "# HELP cairn_checkpoint_age_seconds age of the newest checkpoint received per feed and upstream\n# TYPE cairn_checkpoint_age_seconds gauge\n",
    );
    for c in seen {
        out.push_str(&format!(
            "cairn_checkpoint_age_seconds{{feed=\"{}\",upstream=\"{}\"}} {}\n",
            c.feed,
            c.upstream,
            now_secs.saturating_sub(c.signed_secs)
        ));
    }
    out.push_str("# HELP cairn_checkpoint_expires_in_seconds seconds until that checkpoint expires\n# TYPE cairn_checkpoint_expires_in_seconds gauge\n");
    for c in seen {
        out.push_str(&format!(
            "cairn_checkpoint_expires_in_seconds{{feed=\"{}\",upstream=\"{}\"}} {}\n",
            c.feed,
            c.upstream,
            c.expires_secs as i64 - now_secs as i64
        ));
    }
    out
}

/// Per replication (and `incoming`): runs by outcome, bytes each way, the end of the last
/// successful run, and the lag since then, from the replication log.
fn replication_metrics(log: &[cairn_store::admin::ReplicationRecord], now_secs: u64) -> String {
    use std::collections::BTreeMap;
    #[derive(Default)]
    struct Per {
        ok: u64,
        failed: u64,
        sent: u64,
        received: u64,
        last_ok_ms: Option<u64>,
    }
    let mut per: BTreeMap<&str, Per> = BTreeMap::new();
    for r in log {
        let p = per.entry(r.replication.as_str()).or_default();
        if r.outcome == "ok" {
            p.ok += 1;
            p.last_ok_ms = p.last_ok_ms.max(Some(r.ended_ms));
        } else {
            p.failed += 1;
        }
        p.sent += r.bytes_sent;
        p.received += r.bytes_received;
    }
    let mut out = String::from(
        "# HELP cairn_replication_runs_total replication runs in the log, by outcome\n# TYPE cairn_replication_runs_total counter\n",
    );
    for (name, p) in &per {
        out.push_str(&format!(
            "cairn_replication_runs_total{{replication=\"{name}\",outcome=\"ok\"}} {}\ncairn_replication_runs_total{{replication=\"{name}\",outcome=\"failed\"}} {}\n",
            p.ok, p.failed
        ));
    }
    out.push_str("# HELP cairn_replication_bytes_total bytes moved by replication runs in the log\n# TYPE cairn_replication_bytes_total counter\n");
    for (name, p) in &per {
        out.push_str(&format!(
            "cairn_replication_bytes_total{{replication=\"{name}\",direction=\"sent\"}} {}\ncairn_replication_bytes_total{{replication=\"{name}\",direction=\"received\"}} {}\n",
            p.sent, p.received
        ));
    }
    out.push_str("# HELP cairn_replication_last_success_timestamp_seconds end of the last successful run\n# TYPE cairn_replication_last_success_timestamp_seconds gauge\n# HELP cairn_replication_lag_seconds seconds since the last successful run ended\n# TYPE cairn_replication_lag_seconds gauge\n");
    for (name, p) in &per {
        if let Some(ms) = p.last_ok_ms {
            out.push_str(&format!(
                "cairn_replication_last_success_timestamp_seconds{{replication=\"{name}\"}} {}\ncairn_replication_lag_seconds{{replication=\"{name}\"}} {}\n",
                ms / 1000,
                now_secs.saturating_sub(ms / 1000)
            ));
        }
    }
    out
}

/// An error answered to a client: a status and one line that says what is wrong. The body is
/// JSON in the shapes npm (`error`) and cargo (`errors[].detail`) print.
#[derive(Debug)]
pub struct ApiError {
    /// Status code.
    pub status: StatusCode,
    /// What is wrong, lowercase, no trailing period.
    pub message: String,
}

impl ApiError {
    /// An error with `status`.
    pub fn new(status: StatusCode, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            message: message.into(),
        }
    }

    /// 400.
    pub fn bad_request(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, message)
    }

    /// 404.
    pub fn not_found(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::NOT_FOUND, message)
    }
}

impl From<cairn_store::store::StoreError> for ApiError {
    fn from(e: cairn_store::store::StoreError) -> ApiError {
        use cairn_store::store::StoreError as E;
        let status = match &e {
            E::FeedNotFound { .. } | E::EntryNotFound { .. } => StatusCode::NOT_FOUND,
            E::VersionExists { .. } | E::FeedExists { .. } => StatusCode::CONFLICT,
            E::Name(_)
            | E::InvalidPackage { .. }
            | E::InvalidInput { .. }
            | E::UnknownReference { .. }
            | E::SystemFeed { .. }
            | E::NotSystemDocument { .. }
            | E::Input(_) => StatusCode::BAD_REQUEST,
            E::BlobStoreUnavailable { .. } => StatusCode::SERVICE_UNAVAILABLE,
            E::DocumentTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            _ => StatusCode::INTERNAL_SERVER_ERROR,
        };
        if status == StatusCode::INTERNAL_SERVER_ERROR || status == StatusCode::SERVICE_UNAVAILABLE
        {
            tracing::error!("store: {e}");
        }
        ApiError::new(status, e.to_string())
    }
}

impl From<cairn_store::names::NameError> for ApiError {
    fn from(e: cairn_store::names::NameError) -> ApiError {
        ApiError::bad_request(e.to_string())
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = serde_json::json!({
            "error": self.message,
            "errors": [{ "detail": self.message }],
        });
        let mut response = (self.status, axum::Json(body)).into_response();
        if self.status == StatusCode::UNAUTHORIZED {
            response.headers_mut().insert(
                axum::http::header::WWW_AUTHENTICATE,
                axum::http::HeaderValue::from_static("Basic realm=\"cairn\""),
            );
        }
        response
    }
}

/// The scheme and authority index documents are rendered with and cached under; replaced by
/// the one the client used ([`client_origin`]) when they are served, so a cached document never
/// depends on a request header.
pub(crate) const ORIGIN_PLACEHOLDER: &str = "http://cairn.invalid";

/// `http://HOST` as the client reached this server, from its `Host` header: a host name or
/// address with an optional port, nothing else (anything else is refused rather than
/// reflected into a document).
pub(crate) fn client_origin(headers: &axum::http::HeaderMap) -> Result<String, ApiError> {
    let host = headers
        .get(axum::http::header::HOST)
        .and_then(|h| h.to_str().ok())
        .unwrap_or("127.0.0.1");
    let valid = !host.is_empty()
        && host.len() <= 255
        && host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-.:[]".contains(&b));
    if !valid {
        return Err(ApiError::bad_request(
            "the Host header is not a host name or address with an optional port",
        ));
    }
    Ok(format!("http://{host}"))
}

/// Runs `f` (store work that blocks) off the async threads.
pub(crate) async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, ApiError> + Send + 'static,
) -> Result<T, ApiError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?
}
