//! `cairn serve` and `cairn replicate`: the replication endpoint, scheduled outgoing
//! replications, and a control socket through which `cairn replicate NAME` asks a running
//! server to run a replication now.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{anyhow, bail, Context, Result};
use cairn_feedserver::{FeedServer, HttpConfig};
use cairn_store::admin::ReplicationRecord;
use cairn_store::{BlobsConfig, Store, StoreOptions};
use cairn_sync::proto::{Authorizer, FeedReport, GuardRail, InitiatorConfig, Limits, Refusal};
use cairn_sync::transport::{
    self, Congestion, Progress, ProgressSnapshot, RunLimits, TransportError,
};
use cairn_sync::wire::{code, Mode};
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

/// The TOML configuration (`--config`, default `<data-dir>/cairn.toml`).
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// The replication endpoint.
    #[serde(default)]
    pub sync: SyncConfig,
    /// Configured replications.
    #[serde(default, rename = "replication")]
    pub replications: Vec<ReplicationConfig>,
    /// The HTTP feed server.
    #[serde(default)]
    pub http: HttpConfig,
    /// Where large blobs live.
    #[serde(default)]
    pub blobs: BlobsSection,
}

/// `[blobs]`: `backend = "local"` (the default, files under the data directory) or `"s3"`
/// with `[blobs.s3]`.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BlobsSection {
    /// `local` or `s3`.
    #[serde(default)]
    pub backend: BackendKind,
    /// The bucket, for `backend = "s3"`.
    pub s3: Option<cairn_store::s3::S3Config>,
}

/// `[blobs] backend`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BackendKind {
    /// Files under `<data-dir>/blobs`.
    #[default]
    Local,
    /// An S3-compatible bucket.
    S3,
}

impl Config {
    /// Store options for this configuration.
    pub fn store_options(&self) -> StoreOptions {
        let blobs = match (&self.blobs.backend, &self.blobs.s3) {
            (BackendKind::S3, Some(s3)) => BlobsConfig::S3(s3.clone()),
            _ => BlobsConfig::Local,
        };
        StoreOptions {
            blobs,
            ..StoreOptions::default()
        }
    }

    /// Feeds this instance pulls from a peer, with the peer: they are read-only here.
    pub fn pull_replicas(&self, store: &Store) -> HashMap<String, String> {
        let mut out = HashMap::new();
        for r in self
            .replications
            .iter()
            .filter(|r| r.mode == Mode::Pull && r.direction == Direction::Outgoing)
        {
            for f in &r.feeds {
                if f == "*" {
                    for feed in store.list_feeds().unwrap_or_default() {
                        out.insert(feed.name, r.peer.clone());
                    }
                } else if !f.starts_with('@') {
                    out.insert(f.clone(), r.peer.clone());
                }
            }
        }
        out
    }
}

/// `[sync]`.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SyncConfig {
    /// UDP address of the QUIC endpoint.
    #[serde(default = "default_listen")]
    pub listen: SocketAddr,
    /// QUIC congestion controller: bbr, cubic or newreno.
    #[serde(default = "default_congestion")]
    pub congestion: Congestion,
    /// QUIC flow-control window per connection in MiB (a stream gets half); 0 keeps quinn's
    /// defaults, which cap a stream at about 1.25 MB in flight.
    #[serde(default = "default_window_mib")]
    pub window_mib: u32,
    /// Largest blob a received manifest may name, in MiB.
    #[serde(default = "default_max_blob_mib")]
    pub max_blob_mib: u64,
    /// A run fails as stalled when less than `min_progress_kib` moves in this many seconds.
    #[serde(default = "default_stall_secs")]
    pub stall_secs: u64,
    /// See `stall_secs`.
    #[serde(default = "default_min_progress_kib")]
    pub min_progress_kib: u64,
    /// Longest a replication run may take, in seconds.
    #[serde(default = "default_max_run_secs")]
    pub max_run_secs: u64,
    /// Most connections one peer may hold open to this instance at once.
    #[serde(default = "default_max_peer_connections")]
    pub max_peer_connections: usize,
    /// How long the checkpoints this instance signs for its peers stay valid, in seconds: how
    /// long a spoke may serve this state as current once it cannot hear from here.
    #[serde(default = "default_checkpoint_ttl_secs")]
    pub checkpoint_ttl_secs: u64,
}

fn default_checkpoint_ttl_secs() -> u64 {
    Limits::default().checkpoint_ttl_secs
}

fn default_max_blob_mib() -> u64 {
    Limits::default().max_blob_bytes >> 20
}
fn default_stall_secs() -> u64 {
    RunLimits::default().window.as_secs()
}
fn default_min_progress_kib() -> u64 {
    RunLimits::default().min_progress_bytes >> 10
}
fn default_max_run_secs() -> u64 {
    RunLimits::default().max_run.as_secs()
}
fn default_max_peer_connections() -> usize {
    4
}

impl SyncConfig {
    /// What a peer may make this instance hold in one run.
    pub fn session_limits(&self) -> Limits {
        Limits {
            max_blob_bytes: self.max_blob_mib.saturating_mul(1 << 20),
            checkpoint_ttl_secs: self.checkpoint_ttl_secs.max(1),
            ..Limits::default()
        }
    }

    /// The deadlines of a run.
    pub fn run_limits(&self) -> RunLimits {
        RunLimits {
            window: Duration::from_secs(self.stall_secs.max(1)),
            min_progress_bytes: self.min_progress_kib.saturating_mul(1 << 10),
            max_run: Duration::from_secs(self.max_run_secs.max(1)),
            max_receive_window: self.transport().window_bytes(),
            ..RunLimits::default()
        }
    }

    /// How connections behave on the network.
    pub fn transport(&self) -> transport::TransportOptions {
        transport::TransportOptions {
            congestion: self.congestion,
            window_mib: self.window_mib,
        }
    }
}

fn default_window_mib() -> u32 {
    transport::DEFAULT_WINDOW_MIB
}

impl Default for SyncConfig {
    fn default() -> SyncConfig {
        SyncConfig {
            listen: default_listen(),
            congestion: default_congestion(),
            window_mib: default_window_mib(),
            max_blob_mib: default_max_blob_mib(),
            stall_secs: default_stall_secs(),
            min_progress_kib: default_min_progress_kib(),
            max_run_secs: default_max_run_secs(),
            max_peer_connections: default_max_peer_connections(),
            checkpoint_ttl_secs: default_checkpoint_ttl_secs(),
        }
    }
}

fn default_congestion() -> Congestion {
    Congestion::Bbr
}

fn default_listen() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 7443))
}

/// Who dials.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Direction {
    /// This instance dials the peer and runs the replication.
    Outgoing,
    /// The peer dials this instance; listed for reference, run by the peer.
    Incoming,
}

/// `[[replication]]`.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReplicationConfig {
    /// Name, used by `cairn replicate NAME` and in the log.
    pub name: String,
    /// A peer added with `cairn peer add`.
    pub peer: String,
    /// The replication token the peer issued to this instance.
    #[serde(default)]
    pub token: String,
    /// Feeds; `*` for every local package feed, `@system` for system replication.
    pub feeds: Vec<String>,
    /// `pull`, `push` or `mirror`.
    pub mode: Mode,
    /// `outgoing` (default) or `incoming`.
    #[serde(default = "default_direction")]
    pub direction: Direction,
    /// Seconds between scheduled runs.
    #[serde(default = "default_interval")]
    pub interval_secs: u64,
    /// Largest share of local entries one run may delete before it stops.
    #[serde(default = "default_share")]
    pub max_delete_share: f64,
}

fn default_direction() -> Direction {
    Direction::Outgoing
}
fn default_interval() -> u64 {
    60
}
fn default_share() -> f64 {
    0.5
}

/// Reads the configuration: `path` if given, else `<data-dir>/cairn.toml` if it exists.
pub fn load_config(data_dir: &Path, path: Option<&Path>) -> Result<Config> {
    let (path, required) = match path {
        Some(p) => (p.to_path_buf(), true),
        None => (data_dir.join("cairn.toml"), false),
    };
    let text = match std::fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound && !required => {
            return Ok(Config::default())
        }
        Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
    };
    let config: Config =
        toml::from_str(&text).with_context(|| format!("parsing {}", path.display()))?;
    match (config.blobs.backend, config.blobs.s3.is_some()) {
        (BackendKind::S3, false) => bail!(
            "{}: [blobs] backend = \"s3\" needs a [blobs.s3] section with endpoint and bucket",
            path.display()
        ),
        (BackendKind::Local, true) => bail!(
            "{}: [blobs.s3] is set but [blobs] backend is \"local\"; set backend = \"s3\" or remove it",
            path.display()
        ),
        _ => {}
    }
    let mut names = std::collections::HashSet::new();
    for r in &config.replications {
        if !names.insert(&r.name) {
            bail!(
                "{}: replication `{}` is defined twice",
                path.display(),
                r.name
            );
        }
        if !(0.0..=1.0).contains(&r.max_delete_share) {
            bail!(
                "{}: replication `{}`: max_delete_share must be between 0 and 1",
                path.display(),
                r.name
            );
        }
        if r.feeds.is_empty() {
            bail!(
                "{}: replication `{}` names no feeds",
                path.display(),
                r.name
            );
        }
    }
    Ok(config)
}

/// What one run did, as `cairn replicate` prints it.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct RunSummary {
    /// Replication name.
    pub replication: String,
    /// Peer.
    pub peer: String,
    /// Mode.
    pub mode: String,
    /// Per feed.
    pub feeds: Vec<FeedSummaryOut>,
    /// Bytes sent.
    pub bytes_sent: u64,
    /// Bytes received.
    pub bytes_received: u64,
    /// Round trips the initiator waited for.
    #[serde(default)]
    pub rounds: u64,
    /// Blobs sent to the peer.
    #[serde(default)]
    pub blobs_sent: u64,
    /// Blob payload bytes sent.
    #[serde(default)]
    pub blob_bytes_sent: u64,
    /// Wall time.
    pub elapsed_ms: u64,
    /// Set when the run as a whole failed.
    #[serde(default)]
    pub error: Option<String>,
}

/// One feed of a run.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct FeedSummaryOut {
    /// Feed.
    pub feed: String,
    /// equal, log, sketch or list.
    pub path: String,
    /// Same root on both sides at the end.
    pub converged: bool,
    /// Root here, hex.
    pub root: String,
    /// Entries here.
    pub count: u64,
    /// Documents applied here.
    pub docs_applied: u64,
    /// Documents sent.
    pub docs_sent: u64,
    /// Deletions applied here.
    pub deletions: u64,
    /// Blobs received.
    pub blobs_received: u64,
    /// Blob bytes received.
    pub blob_bytes_received: u64,
    /// Blobs found already in a shared bucket, not transferred.
    #[serde(default)]
    pub blobs_adopted: u64,
    /// Their bytes.
    #[serde(default)]
    pub blob_bytes_adopted: u64,
    /// Dry run: adds, deletes, bytes.
    pub plan: Option<(u64, u64, u64)>,
    /// Error.
    pub error: Option<String>,
}

impl RunSummary {
    /// True when every feed converged (or, for a dry run, was planned without error).
    pub fn ok(&self, dry_run: bool) -> bool {
        self.error.is_none()
            && self
                .feeds
                .iter()
                .all(|f| f.error.is_none() && (dry_run || f.converged))
    }
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

fn mode_name(m: Mode) -> &'static str {
    match m {
        Mode::Pull => "pull",
        Mode::Push => "push",
        Mode::Mirror => "mirror",
    }
}

fn feed_out(r: &FeedReport, dry_run: bool) -> FeedSummaryOut {
    FeedSummaryOut {
        feed: r.feed.clone(),
        path: format!("{:?}", r.path).to_lowercase(),
        converged: r.converged(),
        root: r
            .local_root
            .map(|(root, _)| root.iter().map(|b| format!("{b:02x}")).collect())
            .unwrap_or_default(),
        count: r.local_root.map(|(_, c)| c).unwrap_or_default(),
        docs_applied: r.docs_applied,
        docs_sent: r.docs_sent,
        deletions: r.deletions,
        blobs_received: r.blobs_received,
        blob_bytes_received: r.blob_bytes_received,
        blobs_adopted: r.blobs_adopted,
        blob_bytes_adopted: r.blob_bytes_adopted,
        plan: dry_run.then_some((r.plan_adds, r.plan_deletes, r.plan_bytes)),
        error: r.error.clone(),
    }
}

/// Connections of outgoing replications kept open between runs, by replication name: a run
/// on a warm connection costs no handshake (one round trip and a few hundred bytes when
/// nothing changed). Runs of one replication never overlap, so one connection each suffices.
#[derive(Clone, Debug, Default)]
pub struct WarmConnections(Arc<tokio::sync::Mutex<HashMap<String, transport::Connection>>>);

impl WarmConnections {
    async fn take(&self, name: &str) -> Option<transport::Connection> {
        let conn = self.0.lock().await.remove(name)?;
        conn.close_reason().is_none().then_some(conn)
    }

    async fn keep(&self, name: &str, conn: transport::Connection) {
        self.0.lock().await.insert(name.to_owned(), conn);
    }

    async fn close_all(&self) {
        for (_, conn) in self.0.lock().await.drain() {
            transport::close(&conn);
        }
    }
}

/// Runs one configured replication now; `warm` keeps its connection open for the next run
/// (the server), `None` closes it at the end (a one-off `cairn replicate`).
#[tracing::instrument(name = "replication", skip_all, fields(name = %rep.name, peer = %rep.peer))]
pub async fn run_replication(
    store: &Store,
    sync: &SyncConfig,
    rep: &ReplicationConfig,
    dry_run: bool,
    allow_deletes: bool,
    progress: &Progress,
    warm: Option<&WarmConnections>,
) -> RunSummary {
    let started = now_ms();
    let mut summary = RunSummary {
        replication: rep.name.clone(),
        peer: rep.peer.clone(),
        mode: mode_name(rep.mode).into(),
        ..RunSummary::default()
    };
    let result = async {
        if rep.direction == Direction::Incoming {
            bail!(
                "replication `{}` is incoming: the peer `{}` runs it",
                rep.name,
                rep.peer
            );
        }
        let peer = store.peer(&rep.peer)?.ok_or_else(|| {
            anyhow!(
                "no peer named `{}`; add it with `cairn peer add {} ADDR --key FINGERPRINT`",
                rep.peer,
                rep.peer
            )
        })?;
        let mut feeds = Vec::new();
        for f in &rep.feeds {
            if f == "*" {
                feeds.extend(store.list_feeds()?.into_iter().map(|f| f.name));
            } else {
                store.feed(f)?;
                feeds.push(f.clone());
            }
        }
        let mut since = HashMap::new();
        if rep.mode == Mode::Pull {
            for f in &feeds {
                if let Some(c) = store.replication_cursor(&rep.name, f)? {
                    since.insert(f.clone(), c);
                }
            }
        }
        let addr: SocketAddr = peer
            .addr
            .parse()
            .with_context(|| format!("peer `{}` address `{}`", peer.name, peer.addr))?;
        let mut config = InitiatorConfig {
            peer: peer.key,
            now_secs: transport::unix_secs(),
            limits: sync.session_limits(),
            token: rep.token.clone(),
            mode: rep.mode,
            feeds: feeds.clone(),
            since,
            guard: GuardRail {
                max_delete_share: rep.max_delete_share,
                allow: allow_deletes,
            },
            dry_run,
        };
        let reused = match warm {
            Some(w) => w.take(&rep.name).await,
            None => None,
        };
        let was_warm = reused.is_some();
        let conn = match reused {
            Some(c) => c,
            None => {
                let (conn, key) = connect_peer(store, &peer, addr, &sync.transport()).await?;
                config.peer = key;
                conn
            }
        };
        let limits = sync.run_limits();
        let mut result =
            transport::run_initiator_with_progress(store, &conn, config.clone(), limits, progress)
                .await;
        let mut conn = conn;
        if was_warm && matches!(result, Err(TransportError::Connection(_))) {
            // The peer restarted or the path changed while the connection sat idle: once more
            // on a new one.
            tracing::debug!(replication = %rep.name, "warm connection failed; reconnecting");
            let (fresh, key) = connect_peer(store, &peer, addr, &sync.transport()).await?;
            conn = fresh;
            config.peer = key;
            result = transport::run_initiator_with_progress(store, &conn, config, limits, progress)
                .await;
        }
        match (&result, warm) {
            (Ok(_), Some(w)) => w.keep(&rep.name, conn).await,
            _ => transport::close(&conn),
        }
        let (reports, stats) = result?;
        anyhow::Ok((reports, stats))
    }
    .await;
    match result {
        Ok((reports, stats)) => {
            for r in &reports {
                if rep.mode == Mode::Pull && r.converged() && !dry_run {
                    if let Some(c) = r.peer_cursor {
                        let _ = store.set_replication_cursor(&rep.name, &r.feed, c);
                    }
                }
                if let Some(cp) = &r.checkpoint {
                    if let Err(e) = store.record_upstream_checkpoint(&rep.peer, &r.feed, cp) {
                        tracing::error!("recording a checkpoint: {e}");
                    }
                }
            }
            summary.feeds = reports.iter().map(|r| feed_out(r, dry_run)).collect();
            summary.bytes_sent = stats.bytes_sent;
            summary.bytes_received = stats.bytes_received;
            summary.rounds = stats.rounds;
            summary.blobs_sent = stats.blobs_sent;
            summary.blob_bytes_sent = stats.blob_bytes_sent;
        }
        Err(e) => summary.error = Some(format!("{e:#}")),
    }
    summary.elapsed_ms = now_ms().saturating_sub(started);
    if !dry_run {
        let record = ReplicationRecord {
            seq: 0,
            replication: rep.name.clone(),
            peer: rep.peer.clone(),
            mode: summary.mode.clone(),
            feeds: summary.feeds.iter().map(|f| f.feed.clone()).collect(),
            started_ms: started,
            ended_ms: started + summary.elapsed_ms,
            rounds: summary.rounds,
            bytes_sent: summary.bytes_sent,
            bytes_received: summary.bytes_received,
            docs_sent: summary.feeds.iter().map(|f| f.docs_sent).sum(),
            docs_received: summary.feeds.iter().map(|f| f.docs_applied).sum(),
            blobs_sent: summary.blobs_sent,
            blobs_received: summary.feeds.iter().map(|f| f.blobs_received).sum(),
            deletions: summary.feeds.iter().map(|f| f.deletions).sum(),
            outcome: if summary.ok(false) {
                "ok".into()
            } else {
                "failed".into()
            },
            error: summary
                .error
                .clone()
                .or_else(|| summary.feeds.iter().find_map(|f| f.error.clone()))
                .unwrap_or_default(),
        };
        if let Err(e) = store.replication_log_append(record) {
            tracing::error!("writing the replication log: {e}");
        }
    }
    summary
}

/// Connects to `peer`, following it to a new key if it moved (its pin and the trust in it
/// move with it; the old key is refused from then on); the key it is reached with.
async fn connect_peer(
    store: &Store,
    peer: &cairn_store::admin::Peer,
    addr: SocketAddr,
    options: &transport::TransportOptions,
) -> Result<(transport::Connection, cairn_store::PublicKey)> {
    let (conn, followed) =
        transport::connect_following(store.identity(), addr, peer.key, options).await?;
    match followed {
        None => Ok((conn, peer.key)),
        Some(f) => {
            tokio::task::block_in_place(|| {
                store.follow_rotation(&peer.key, &f.presented, &f.statements)
            })?;
            Ok((conn, f.presented))
        }
    }
}

/// Tokens decide what an incoming peer may replicate: `replicate:FEED` lets it pull,
/// `replicate-write:FEED` also push and mirror. A feed this instance pulls from a peer takes no
/// writes from any other.
struct TokenAuthorizer {
    store: Arc<Store>,
    /// Feeds pulled from a peer here, with that peer.
    pull_replicas: HashMap<String, String>,
}

impl Authorizer for TokenAuthorizer {
    fn authorize(&self, token: &str, feed: &str, mode: Mode) -> Result<(), Refusal> {
        let info = match self.store.token_check(token) {
            Ok(Some(t)) => t,
            Ok(None) => {
                return Err(Refusal::new(
                    code::UNAUTHORIZED,
                    "missing or invalid replication token",
                ))
            }
            Err(e) => return Err(Refusal::new(code::INTERNAL, e.to_string())),
        };
        if !info.may_replicate(feed) {
            return Err(Refusal::new(
                code::UNAUTHORIZED,
                format!("the token does not allow replicating `{feed}`"),
            ));
        }
        if mode == Mode::Pull {
            return Ok(());
        }
        if !info.may_replicate_write(feed) {
            return Err(Refusal::new(
                code::MODE_NOT_ALLOWED,
                format!(
                    "the token allows pulling `{feed}` but not a {}; writing needs a `replicate-write:` scope",
                    mode_name(mode)
                ),
            ));
        }
        if let Some(upstream) = self.pull_replicas.get(feed) {
            return Err(Refusal::new(
                code::MODE_NOT_ALLOWED,
                format!("`{feed}` is a pull replica of `{upstream}` here; write to `{upstream}`"),
            ));
        }
        Ok(())
    }

    fn peer_allowed(&self, peer: &cairn_store::PublicKey) -> bool {
        self.store
            .peer_list()
            .map(|peers| peers.iter().any(|p| p.key == *peer))
            .unwrap_or(false)
    }
}

/// The connections each peer holds open to this instance.
type OpenConnections = Arc<
    parking_lot::Mutex<HashMap<cairn_store::doc::PublicKey, Vec<(u64, transport::Connection)>>>,
>;

/// One of a peer's open connections, counted while it lives. A peer holds a few at most: when
/// it opens one more, its oldest is closed (a peer that crashed leaves connections that would
/// otherwise lock it out until they time out).
struct ConnectionSlot {
    open: OpenConnections,
    key: cairn_store::doc::PublicKey,
    id: u64,
}

impl ConnectionSlot {
    fn take(
        open: &OpenConnections,
        key: cairn_store::doc::PublicKey,
        conn: &transport::Connection,
        max: usize,
    ) -> ConnectionSlot {
        let mut map = open.lock();
        let list = map.entry(key).or_default();
        while list.len() >= max.max(1) {
            let (_, oldest) = list.remove(0);
            tracing::debug!(peer = %key.short(), "closing the oldest of its connections for a new one");
            transport::close_with(
                &oldest,
                code::PROTOCOL,
                "replaced by a newer connection from the same peer",
            );
        }
        let id = conn.stable_id() as u64;
        list.push((id, conn.clone()));
        ConnectionSlot {
            open: open.clone(),
            key,
            id,
        }
    }
}

impl Drop for ConnectionSlot {
    fn drop(&mut self) {
        let mut map = self.open.lock();
        if let Some(list) = map.get_mut(&self.key) {
            list.retain(|(id, _)| *id != self.id);
            if list.is_empty() {
                map.remove(&self.key);
            }
        }
    }
}

/// Where the control socket lives.
pub fn control_socket(data_dir: &Path) -> PathBuf {
    data_dir.join("control.sock")
}

/// Runs the server until interrupted.
pub fn serve(data_dir: &Path, config: Config) -> Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    runtime.block_on(async move {
        let store = Arc::new(Store::open(data_dir, config.store_options())?);
        let filter_store = store.clone();
        let filter: transport::PeerFilter = Arc::new(move |k| filter_store.peer_list().map(|peers| peers.iter().any(|p| p.key == *k)).unwrap_or(false));
        let endpoint = transport::server(config.sync.listen, store.identity(), filter, &config.sync.transport())?;
        let local = endpoint.local_addr()?;
        let http = tokio::net::TcpListener::bind(config.http.listen).await.with_context(|| format!("binding the HTTP server to {}; set [http] listen in cairn.toml", config.http.listen))?;
        let http_addr = http.local_addr()?;
        let shown: Vec<serde_json::Value> = config.replications.iter().map(|r| serde_json::json!({
            "name": r.name, "peer": r.peer, "feeds": r.feeds, "mode": mode_name(r.mode),
            "direction": match r.direction { Direction::Outgoing => "outgoing", Direction::Incoming => "incoming" },
            "interval_secs": r.interval_secs, "max_delete_share": r.max_delete_share,
        })).collect();
        let feeds = FeedServer::with_replications(store.clone(), config.http.clone(), config.pull_replicas(&store), shown);
        let router = feeds.router();
        tokio::spawn(async move {
            if let Err(e) = axum::serve(http, router).await {
                tracing::error!("HTTP server stopped: {e}");
            }
        });
        println!("cairn serving {} on {} (replication, QUIC) and http://{} (feeds); key {}; blobs {}", data_dir.display(), local, http_addr, store.identity().public_key(), config.store_options().blobs.location());
        let accept_store = store.clone();
        let accepting = endpoint.clone();
        let pull_replicas = config.pull_replicas(&store);
        let (run_limits, session_limits) = (config.sync.run_limits(), config.sync.session_limits());
        let max_peer_connections = config.sync.max_peer_connections;
        let open_connections: OpenConnections = Arc::default();
        tokio::spawn(async move {
            while let Some(incoming) = accepting.accept().await {
                let store = accept_store.clone();
                let pull_replicas = pull_replicas.clone();
                let open_connections = open_connections.clone();
                tokio::spawn(async move {
                    let Ok(conn) = incoming.await else { return };
                    // A peer holds a few connections at most: each can make this side buffer
                    // up to its flow-control window.
                    let Some(key) = transport::peer_key(&conn) else { return };
                    let _slot = ConnectionSlot::take(&open_connections, key, &conn, max_peer_connections);
                    let peer = transport::peer_key(&conn)
                        .and_then(|k| store.peer_list().ok()?.into_iter().find(|p| p.key == k).map(|p| p.name))
                        .unwrap_or_else(|| "unknown".into());
                    let auth = TokenAuthorizer { store: store.clone(), pull_replicas: pull_replicas.clone() };
                    let mut started = now_ms();
                    transport::serve_connection(&store, &conn, &auth, run_limits, session_limits, |result| {
                    let mut record = ReplicationRecord { replication: "incoming".into(), peer: peer.clone(), started_ms: started, ended_ms: now_ms(), ..Default::default() };
                    match result {
                        Ok((session, stats)) => {
                            record.mode = mode_name(session.mode()).into();
                            let reports = session.reports();
                            record.feeds = reports.iter().map(|r| r.feed.clone()).collect();
                            record.docs_sent = reports.iter().map(|r| r.docs_sent).sum();
                            record.docs_received = reports.iter().map(|r| r.docs_applied).sum();
                            record.blobs_received = reports.iter().map(|r| r.blobs_received).sum();
                            record.blobs_sent = session.stats().blobs_sent;
                            record.deletions = reports.iter().map(|r| r.deletions).sum();
                            record.bytes_sent = stats.bytes_sent;
                            record.bytes_received = stats.bytes_received;
                            record.rounds = stats.rounds;
                            let failed = reports.iter().find_map(|r| r.error.clone());
                            record.outcome = if failed.is_none() && session.error().is_none() { "ok".into() } else { "failed".into() };
                            record.error = session.error().map(|e| e.to_string()).or(failed).unwrap_or_default();
                        }
                        Err(e) => {
                            record.outcome = "failed".into();
                            record.error = e.to_string();
                        }
                    }
                    record.ended_ms = now_ms();
                    if let Err(e) = store.replication_log_append(record) {
                        tracing::error!("writing the replication log: {e}");
                    }
                    started = now_ms();
                    }).await;
                });
            }
        });
        // One lock per replication: a run never overlaps another run of the same replication.
        let locks: HashMap<String, Arc<tokio::sync::Mutex<()>>> = config.replications.iter().map(|r| (r.name.clone(), Arc::new(tokio::sync::Mutex::new(())))).collect();
        let locks = Arc::new(locks);
        let warm = WarmConnections::default();
        for rep in config.replications.iter().filter(|r| r.direction == Direction::Outgoing && r.interval_secs > 0).cloned() {
            let store = store.clone();
            let lock = locks[&rep.name].clone();
            let warm = warm.clone();
            let sync = config.sync.clone();
            tokio::spawn(async move {
                let mut tick = tokio::time::interval(Duration::from_secs(rep.interval_secs.max(1)));
                tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                loop {
                    tick.tick().await;
                    let _guard = lock.lock().await;
                    let s = run_replication(&store, &sync, &rep, false, false, &Progress::default(), Some(&warm)).await;
                    if !s.ok(false) {
                        tracing::warn!(replication = %rep.name, "scheduled run failed: {}", s.error.clone().unwrap_or_else(|| format!("{:?}", s.feeds)));
                    }
                }
            });
        }
        let sock = control_socket(data_dir);
        let _ = std::fs::remove_file(&sock);
        let listener = tokio::net::UnixListener::bind(&sock).with_context(|| format!("binding {}", sock.display()))?;
        let reps: Arc<Vec<ReplicationConfig>> = Arc::new(config.replications.clone());
        let control_store = store.clone();
        let control_warm = warm.clone();
        let control_sync = config.sync.clone();
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else { continue };
                let (store, reps, locks, warm, sync) = (control_store.clone(), reps.clone(), locks.clone(), control_warm.clone(), control_sync.clone());
                tokio::spawn(async move {
                    let (read, mut write) = stream.into_split();
                    let mut line = String::new();
                    if BufReader::new(read).read_line(&mut line).await.is_err() {
                        return;
                    }
                    // A command line forwarded by `cairn` while this server holds the store.
                    if let Some(argv) = line.strip_prefix("run ") {
                        let argv: Vec<String> = serde_json::from_str(argv).unwrap_or_default();
                        let store = store.clone();
                        let (code, out, err) = tokio::task::spawn_blocking(move || crate::run_forwarded(&store, &argv))
                            .await
                            .unwrap_or((2, String::new(), "the command failed on the server".into()));
                        let reply = serde_json::json!({ "code": code, "stdout": out, "stderr": err });
                        let _ = write.write_all(format!("{reply}\n").as_bytes()).await;
                        return;
                    }
                    let words: Vec<&str> = line.split_whitespace().collect();
                    let reply = match words.as_slice() {
                        ["replicate", name, flags @ ..] => match reps.iter().find(|r| r.name == *name) {
                            Some(rep) => {
                                let _guard = locks[&rep.name].lock().await;
                                let progress = Progress::default();
                                let run = run_replication(&store, &sync, rep, flags.contains(&"dry-run"), flags.contains(&"allow-deletes"), &progress, Some(&warm));
                                tokio::pin!(run);
                                // Progress lines every 200 ms until the summary is ready.
                                let mut tick = tokio::time::interval(Duration::from_millis(200));
                                let s = loop {
                                    tokio::select! {
                                        s = &mut run => break s,
                                        _ = tick.tick() => {
                                            // If the client went away, the run still finishes and is logged.
                                            let _ = write.write_all(progress_line(&progress.snapshot()).as_bytes()).await;
                                        }
                                    }
                                };
                                serde_json::to_string(&s).unwrap_or_default()
                            }
                            None => serde_json::to_string(&RunSummary { replication: name.to_string(), error: Some(format!("no replication named `{name}` in the configuration")), ..Default::default() }).unwrap_or_default(),
                        },
                        _ => serde_json::to_string(&RunSummary { error: Some("unknown control command".into()), ..Default::default() }).unwrap_or_default(),
                    };
                    let _ = write.write_all(format!("{reply}\n").as_bytes()).await;
                });
            }
        });
        shutdown_signal().await;
        // Peers hear that this instance is going rather than waiting out the idle timeout.
        warm.close_all().await;
        transport::shut_down(&endpoint).await;
        let _ = std::fs::remove_file(&sock);
        println!("cairn stopped");
        anyhow::Ok(())
    })
}

async fn shutdown_signal() {
    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(s) => s,
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
            return;
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}

/// The progress line the control socket sends: `progress DONE DUE SENT RECEIVED`.
fn progress_line(p: &ProgressSnapshot) -> String {
    format!(
        "progress {} {} {} {}\n",
        p.blob_bytes_done, p.blob_bytes_due, p.bytes_sent, p.bytes_received
    )
}

/// The other end of [`progress_line`].
fn parse_progress_line(line: &str) -> Option<ProgressSnapshot> {
    let n: Vec<u64> = line
        .strip_prefix("progress ")?
        .split_whitespace()
        .map(|w| w.parse().ok())
        .collect::<Option<_>>()?;
    match n[..] {
        [blob_bytes_done, blob_bytes_due, bytes_sent, bytes_received] => Some(ProgressSnapshot {
            blob_bytes_done,
            blob_bytes_due,
            bytes_sent,
            bytes_received,
        }),
        _ => None,
    }
}

/// A progress bar on stderr (drawn only when stderr is a terminal): blob bytes moved against
/// blob bytes due, with the connection's bytes each way.
struct Bar(indicatif::ProgressBar);

impl Bar {
    fn new(name: &str) -> Bar {
        let bar = indicatif::ProgressBar::with_draw_target(
            Some(0),
            indicatif::ProgressDrawTarget::stderr_with_hz(5),
        );
        bar.set_style(
            indicatif::ProgressStyle::with_template(
                "{prefix} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} {msg}",
            )
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
            .progress_chars("=> "),
        );
        bar.set_prefix(name.to_string());
        Bar(bar)
    }

    fn set(&self, p: &ProgressSnapshot) {
        self.0.set_length(p.blob_bytes_due.max(p.blob_bytes_done));
        self.0.set_position(p.blob_bytes_done);
        self.0.set_message(format!(
            "(sent {}, received {})",
            indicatif::HumanBytes(p.bytes_sent),
            indicatif::HumanBytes(p.bytes_received)
        ));
    }
}

impl Drop for Bar {
    fn drop(&mut self) {
        self.0.finish_and_clear();
    }
}

/// `cairn replicate NAME`: through the running server if there is one, else directly. Shows
/// a progress bar on a terminal.
pub fn replicate(
    data_dir: &Path,
    config: &Config,
    name: &str,
    dry_run: bool,
    allow_deletes: bool,
) -> Result<RunSummary> {
    let sock = control_socket(data_dir);
    if let Ok(mut stream) = std::os::unix::net::UnixStream::connect(&sock) {
        use std::io::{BufRead, Write};
        let mut line = format!("replicate {name}");
        if dry_run {
            line.push_str(" dry-run");
        }
        if allow_deletes {
            line.push_str(" allow-deletes");
        }
        line.push('\n');
        stream.write_all(line.as_bytes())?;
        let bar = Bar::new(name);
        let mut reader = std::io::BufReader::new(stream);
        loop {
            let mut reply = String::new();
            if reader.read_line(&mut reply)? == 0 {
                bail!("the server closed the control socket without an answer");
            }
            if reply.starts_with("progress ") {
                if let Some(p) = parse_progress_line(&reply) {
                    bar.set(&p);
                }
                continue;
            }
            drop(bar);
            return serde_json::from_str(&reply)
                .with_context(|| "reading the server's answer".to_string());
        }
    }
    let rep = config
        .replications
        .iter()
        .find(|r| r.name == name)
        .ok_or_else(|| anyhow!("no replication named `{name}` in the configuration"))?
        .clone();
    let store = Store::open(data_dir, config.store_options())?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let progress = Progress::default();
    let bar = Bar::new(name);
    Ok(runtime.block_on(async {
        let run = run_replication(
            &store,
            &config.sync,
            &rep,
            dry_run,
            allow_deletes,
            &progress,
            None,
        );
        tokio::pin!(run);
        let mut tick = tokio::time::interval(Duration::from_millis(200));
        loop {
            tokio::select! {
                s = &mut run => break s,
                _ = tick.tick() => bar.set(&progress.snapshot()),
            }
        }
    }))
}

/// Runs a command line on the server that holds the store at `data_dir`, if one is running:
/// its exit code, standard output and error; `None` when no server answers.
pub fn forward(data_dir: &Path, argv: &[String]) -> Result<Option<(u8, String, String)>> {
    use std::io::{BufRead, Write};
    let Ok(mut stream) = std::os::unix::net::UnixStream::connect(control_socket(data_dir)) else {
        return Ok(None);
    };
    stream.write_all(format!("run {}\n", serde_json::to_string(argv)?).as_bytes())?;
    let mut reply = String::new();
    std::io::BufReader::new(stream).read_line(&mut reply)?;
    let reply: serde_json::Value =
        serde_json::from_str(&reply).with_context(|| "reading the server's answer".to_string())?;
    Ok(Some((
        reply["code"].as_u64().unwrap_or(2).min(255) as u8,
        reply["stdout"].as_str().unwrap_or("").to_owned(),
        reply["stderr"].as_str().unwrap_or("").to_owned(),
    )))
}

/// For `replication list`.
pub fn describe(r: &ReplicationConfig) -> String {
    let dir = match r.direction {
        Direction::Outgoing => "outgoing",
        Direction::Incoming => "incoming",
    };
    let when = match r.interval_secs {
        0 => "on demand".to_string(),
        n => format!("every {n}s"),
    };
    format!(
        "{} {} {} {} [{}] {when}",
        r.name,
        dir,
        mode_name(r.mode),
        r.peer,
        r.feeds.join(","),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn progress_lines_round_trip_and_garbage_is_ignored() {
        let p = ProgressSnapshot {
            blob_bytes_done: 1,
            blob_bytes_due: 2,
            bytes_sent: 3,
            bytes_received: u64::MAX,
        };
        assert_eq!(parse_progress_line(progress_line(&p).trim_end()), Some(p));
        assert_eq!(parse_progress_line("progress 1 2 3"), None);
        assert_eq!(parse_progress_line("progress 1 2 x 4"), None);
        assert_eq!(parse_progress_line("{\"replication\":\"x\"}"), None);
    }
}
