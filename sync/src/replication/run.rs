//! One run of a configured replication, start to end: resolve the peer and feeds, take the
//! warm connection or dial, drive the session, remember cursors and checkpoints, log it.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use cairn_store::admin::{Peer, ReplicationRecord};
use cairn_store::{PublicKey, Store, StoreError};
use serde::{Deserialize, Serialize};

use super::config::{Direction, ReplicationConfig, SyncConfig};
use crate::proto::{FeedReport, GuardRail, InitiatorConfig, Session};
use crate::transport::{self, Progress, RunStats, TransportError};
use crate::wire::Mode;

/// How a run is asked for.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RunOptions {
    /// Plan only: nothing is stored, deleted or logged.
    pub dry_run: bool,
    /// Let the run delete more than the replication's `max_delete_share`.
    pub allow_deletes: bool,
}

/// Why a run could not start or finish, before or around the session's own errors.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ReplicationError {
    /// The replication is run by the peer.
    #[error("replication `{name}` is incoming: the peer `{peer}` runs it")]
    Incoming { name: String, peer: String },
    /// The configuration names a replication that does not exist.
    #[error("no replication named `{0}` in the configuration")]
    Unknown(String),
    /// The replication names a peer that was never added.
    #[error("no peer named `{0}`; add it with `cairn peer add {0} ADDR --key FINGERPRINT`")]
    NoPeer(String),
    /// The peer's address does not parse.
    #[error("peer `{peer}` address `{addr}`: {source}")]
    Address {
        peer: String,
        addr: String,
        source: std::net::AddrParseError,
    },
    /// The local store failed (or a configured feed does not exist).
    #[error(transparent)]
    Store(#[from] StoreError),
    /// Connecting or running the session failed.
    #[error(transparent)]
    Transport(#[from] TransportError),
}

/// What one run did, as `cairn replicate` prints it and the control socket carries it.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct RunSummary {
    /// Replication name.
    pub replication: String,
    /// Peer.
    pub peer: String,
    /// Mode.
    pub mode: String,
    /// Per feed.
    pub feeds: Vec<FeedSummary>,
    /// Bytes sent.
    pub bytes_sent: u64,
    /// Bytes received.
    pub bytes_received: u64,
    /// Round trips the initiator waited for.
    #[serde(default)]
    pub rounds: u64,
    /// Blobs sent to the peer: asked for, or sent along with their documents.
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
pub struct FeedSummary {
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
    /// The deletion guard rail held the feed back (the error says by how much).
    #[serde(default)]
    pub held_back: bool,
}

impl FeedSummary {
    fn of(r: &FeedReport, dry_run: bool) -> FeedSummary {
        FeedSummary {
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
            held_back: r.held_back,
        }
    }
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

    /// The totals of a driven session: both roles count the same way (blobs sent are those
    /// the peer asked for plus those sent along with documents).
    fn add_session(&mut self, reports: &[FeedReport], stats: &RunStats, dry_run: bool) {
        self.feeds = reports
            .iter()
            .map(|r| FeedSummary::of(r, dry_run))
            .collect();
        self.bytes_sent = stats.bytes_sent;
        self.bytes_received = stats.bytes_received;
        self.rounds = stats.rounds;
        self.blobs_sent = stats.blobs_sent;
        self.blob_bytes_sent = stats.blob_bytes_sent;
    }

    /// The replication log's record of this run; `ok` is its outcome.
    fn log_record(&self, started_ms: u64, ok: bool) -> ReplicationRecord {
        ReplicationRecord {
            seq: 0,
            replication: self.replication.clone(),
            peer: self.peer.clone(),
            mode: self.mode.clone(),
            feeds: self.feeds.iter().map(|f| f.feed.clone()).collect(),
            started_ms,
            ended_ms: started_ms + self.elapsed_ms,
            rounds: self.rounds,
            bytes_sent: self.bytes_sent,
            bytes_received: self.bytes_received,
            docs_sent: self.feeds.iter().map(|f| f.docs_sent).sum(),
            docs_received: self.feeds.iter().map(|f| f.docs_applied).sum(),
            blobs_sent: self.blobs_sent,
            blobs_received: self.feeds.iter().map(|f| f.blobs_received).sum(),
            deletions: self.feeds.iter().map(|f| f.deletions).sum(),
            outcome: if ok { "ok".into() } else { "failed".into() },
            error: self
                .error
                .clone()
                .or_else(|| self.feeds.iter().find_map(|f| f.error.clone()))
                .unwrap_or_default(),
        }
    }
}

pub(crate) fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

fn append_log(store: &Store, record: ReplicationRecord) {
    if let Err(e) = store.replication_log_append(record) {
        tracing::error!("writing the replication log: {e}");
    }
}

/// Logs one run a peer drove against this instance (the responder's side).
pub(crate) fn log_incoming(
    store: &Store,
    peer: &str,
    started_ms: u64,
    result: &Result<(Session, RunStats), TransportError>,
) {
    let mut summary = RunSummary {
        replication: "incoming".into(),
        peer: peer.to_owned(),
        ..RunSummary::default()
    };
    let ok = match result {
        Ok((session, stats)) => {
            summary.mode = session.mode().name().into();
            summary.add_session(&session.reports(), stats, false);
            summary.error = session.error().map(|e| e.to_string());
            summary.error.is_none() && summary.feeds.iter().all(|f| f.error.is_none())
        }
        Err(e) => {
            summary.error = Some(e.to_string());
            false
        }
    };
    summary.elapsed_ms = now_ms().saturating_sub(started_ms);
    append_log(store, summary.log_record(started_ms, ok));
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

    /// Closes every kept connection, so that peers hear this instance is going.
    pub async fn close_all(&self) {
        for (_, conn) in self.0.lock().await.drain() {
            transport::close(&conn);
        }
    }
}

/// Runs one configured replication now and logs it (unless a dry run); `warm` keeps its
/// connection open for the next run (a server), `None` closes it at the end (a one-off run).
/// Runs of one replication must not overlap: [`super::Replicator::run_now`] holds its lock.
#[tracing::instrument(name = "replication", skip_all, fields(name = %rep.name, peer = %rep.peer))]
pub async fn run(
    store: &Store,
    sync: &SyncConfig,
    rep: &ReplicationConfig,
    options: RunOptions,
    progress: &Progress,
    warm: Option<&WarmConnections>,
) -> RunSummary {
    let started = now_ms();
    let mut summary = RunSummary {
        replication: rep.name.clone(),
        peer: rep.peer.clone(),
        mode: rep.mode.name().into(),
        ..RunSummary::default()
    };
    match drive(store, sync, rep, options, progress, warm).await {
        Ok((reports, stats)) => {
            for r in &reports {
                if rep.mode == Mode::Pull && r.converged() && !options.dry_run {
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
            summary.add_session(&reports, &stats, options.dry_run);
        }
        Err(e) => summary.error = Some(e.to_string()),
    }
    summary.elapsed_ms = now_ms().saturating_sub(started);
    if !options.dry_run {
        append_log(store, summary.log_record(started, summary.ok(false)));
    }
    summary
}

/// Resolves what `rep` names and drives the session, on the warm connection if there is one
/// (once more on a new one if that connection turns out dead).
async fn drive(
    store: &Store,
    sync: &SyncConfig,
    rep: &ReplicationConfig,
    options: RunOptions,
    progress: &Progress,
    warm: Option<&WarmConnections>,
) -> Result<(Vec<FeedReport>, RunStats), ReplicationError> {
    if rep.direction == Direction::Incoming {
        return Err(ReplicationError::Incoming {
            name: rep.name.clone(),
            peer: rep.peer.clone(),
        });
    }
    let peer = store
        .peer(&rep.peer)?
        .ok_or_else(|| ReplicationError::NoPeer(rep.peer.clone()))?;
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
        .map_err(|source| ReplicationError::Address {
            peer: peer.name.clone(),
            addr: peer.addr.clone(),
            source,
        })?;
    let mut config = InitiatorConfig {
        peer: peer.key,
        now_secs: transport::unix_secs(),
        limits: sync.session_limits(),
        token: rep.token.clone(),
        mode: rep.mode,
        feeds,
        since,
        guard: GuardRail {
            max_delete_share: rep.max_delete_share,
            allow: options.allow_deletes,
        },
        dry_run: options.dry_run,
    };
    let reused = match warm {
        Some(w) => w.take(&rep.name).await,
        None => None,
    };
    let was_warm = reused.is_some();
    let mut conn = match reused {
        Some(c) => c,
        None => {
            let (conn, key) = connect_peer(store, &peer, addr, sync).await?;
            config.peer = key;
            conn
        }
    };
    let limits = sync.run_limits();
    let mut result =
        transport::run_initiator_with_progress(store, &conn, config.clone(), limits, progress)
            .await;
    if was_warm && matches!(result, Err(TransportError::Connection(_))) {
        // The peer restarted or the path changed while the connection sat idle: once more on
        // a new one.
        tracing::debug!("warm connection failed; reconnecting");
        let (fresh, key) = connect_peer(store, &peer, addr, sync).await?;
        conn = fresh;
        config.peer = key;
        result =
            transport::run_initiator_with_progress(store, &conn, config, limits, progress).await;
    }
    match (&result, warm) {
        (Ok(_), Some(w)) => w.keep(&rep.name, conn).await,
        _ => transport::close(&conn),
    }
    Ok(result?)
}

/// Connects to `peer`, following it to a new key if it moved (its pin and the trust in it
/// move with it; the old key is refused from then on); the key it is reached with.
async fn connect_peer(
    store: &Store,
    peer: &Peer,
    addr: SocketAddr,
    sync: &SyncConfig,
) -> Result<(transport::Connection, PublicKey), ReplicationError> {
    let (conn, followed) =
        transport::connect_following(store.identity(), addr, peer.key, &sync.transport()).await?;
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
