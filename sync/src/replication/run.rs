//! One run of a configured replication, start to end: resolve the peer and feeds, take the
//! warm connection or dial, drive the session, remember cursors and checkpoints, log it.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use cairn_store::admin::{Peer, ReplicationRecord};
use cairn_store::{PublicKey, Store, StoreError};
use serde::{Deserialize, Serialize};

use super::config::{Direction, ReplicationConfig, SyncConfig, WindowState};
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
    /// A filter of the replication cannot be used.
    #[error("replication `{name}`: {why}")]
    Filter { name: String, why: String },
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
    /// The peer did not complete the handshake in time.
    #[error("`{peer}` did not answer within {secs} s")]
    NoAnswer { peer: String, secs: u64 },
    /// Connecting or running the session failed.
    #[error(transparent)]
    Transport(#[from] TransportError),
}

impl ReplicationError {
    /// Whether another upstream may do better: the upstream was missing, silent, unreachable,
    /// or the run with it failed; not a local failure or a misconfigured replication.
    pub fn is_upstream_failure(&self) -> bool {
        match self {
            ReplicationError::Incoming { .. }
            | ReplicationError::Unknown(_)
            | ReplicationError::Filter { .. }
            | ReplicationError::Store(_) => false,
            ReplicationError::NoPeer(_)
            | ReplicationError::Address { .. }
            | ReplicationError::NoAnswer { .. }
            | ReplicationError::Transport(_) => true,
        }
    }
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
    /// UDP payload bytes sent: `bytes_sent` plus QUIC's headers, acknowledgements and
    /// retransmissions.
    #[serde(default)]
    pub wire_bytes_sent: u64,
    /// Bytes of packets QUIC declared lost (their data was sent again).
    #[serde(default)]
    pub lost_bytes: u64,
    /// Wall time.
    pub elapsed_ms: u64,
    /// Set when the run as a whole failed.
    #[serde(default)]
    pub error: Option<String>,
    /// Why `peer` was used rather than a preferred upstream: each one tried before it and
    /// what went wrong (empty when the first served the run).
    #[serde(default)]
    pub failover: String,
    /// The upstream said, during the run, that a feed changed again: another run is due.
    #[serde(default)]
    pub notified: bool,
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
        self.wire_bytes_sent = stats.wire_bytes_sent;
        self.lost_bytes = stats.lost_bytes;
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
            wire_bytes_sent: self.wire_bytes_sent,
            lost_bytes: self.lost_bytes,
            docs_sent: self.feeds.iter().map(|f| f.docs_sent).sum(),
            docs_received: self.feeds.iter().map(|f| f.docs_applied).sum(),
            blobs_sent: self.blobs_sent,
            blobs_received: self.feeds.iter().map(|f| f.blobs_received).sum(),
            deletions: self.feeds.iter().map(|f| f.deletions).sum(),
            outcome: if ok { "ok".into() } else { "failed".into() },
            failover: self.failover.clone(),
            error: self
                .error
                .clone()
                .or_else(|| self.feeds.iter().find_map(|f| f.error.clone()))
                .or_else(|| (!ok).then(|| self.not_converged()))
                .unwrap_or_default(),
        }
    }

    /// Why a run without an error failed: the feeds whose root still differed from the
    /// peer's at its end (one side changed during the run, say).
    fn not_converged(&self) -> String {
        let feeds: Vec<String> = self
            .feeds
            .iter()
            .filter(|f| !f.converged)
            .map(|f| format!("`{}`", f.feed))
            .collect();
        format!(
            "did not converge: {} still differed from the peer at the end of the run",
            feeds.join(", ")
        )
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
    // `started_ms` is when the connection began waiting for this run; a run that went through
    // knows how long it took, so its record does not count the idle wait before it.
    let ended_ms = now_ms();
    let started_ms = match result {
        Ok((_, stats)) if !stats.elapsed.is_zero() => {
            ended_ms.saturating_sub(stats.elapsed.as_millis() as u64)
        }
        _ => started_ms,
    };
    summary.elapsed_ms = ended_ms.saturating_sub(started_ms);
    append_log(store, summary.log_record(started_ms, ok));
}

/// Connections of outgoing replications kept open between runs, by replication and
/// upstream: a run on a warm connection costs no handshake (one round trip and a few hundred
/// bytes when nothing changed). Runs of one replication never overlap, so one connection per
/// upstream suffices. While a connection waits here, what its upstream says on it (NOTIFY:
/// a feed changed) is passed on as the replication's name to the channel given to
/// [`WarmConnections::notifying`].
#[derive(Clone, Debug, Default)]
pub struct WarmConnections {
    conns: Arc<tokio::sync::Mutex<HashMap<String, Kept>>>,
    notify: Option<tokio::sync::mpsc::Sender<String>>,
}

#[derive(Debug)]
struct Kept {
    conn: transport::Connection,
    /// Listens for NOTIFY while the connection waits; stopped when a run takes it.
    listener: Option<tokio::task::JoinHandle<()>>,
}

/// The largest frame an upstream may send between runs (a NOTIFY naming many feeds).
const MAX_IDLE_FRAME: usize = 64 << 10;

impl WarmConnections {
    /// Kept connections whose upstreams' notifications go to `tx`.
    pub fn notifying(tx: tokio::sync::mpsc::Sender<String>) -> WarmConnections {
        WarmConnections {
            conns: Arc::default(),
            notify: Some(tx),
        }
    }

    async fn take(&self, key: &str) -> Option<transport::Connection> {
        let kept = self.conns.lock().await.remove(key)?;
        if let Some(l) = kept.listener {
            l.abort();
        }
        kept.conn.close_reason().is_none().then_some(kept.conn)
    }

    async fn keep(&self, key: &str, name: &str, conn: transport::Connection) {
        let listener = self
            .notify
            .clone()
            .map(|tx| tokio::spawn(listen_between_runs(conn.clone(), name.to_owned(), tx)));
        let old = self
            .conns
            .lock()
            .await
            .insert(key.to_owned(), Kept { conn, listener });
        if let Some(Kept {
            listener: Some(l), ..
        }) = old
        {
            l.abort();
        }
    }

    /// Closes every kept connection, so that peers hear this instance is going.
    pub async fn close_all(&self) {
        for (_, kept) in self.conns.lock().await.drain() {
            if let Some(l) = kept.listener {
                l.abort();
            }
            transport::close(&kept.conn);
        }
    }
}

/// Reads what an upstream sends on a kept connection between runs: NOTIFY frames, each alone
/// on a unidirectional stream, small and quick, or the connection is closed (the next run
/// dials again).
async fn listen_between_runs(
    conn: transport::Connection,
    name: String,
    tx: tokio::sync::mpsc::Sender<String>,
) {
    loop {
        let Ok(mut uni) = conn.accept_uni().await else {
            return;
        };
        let read = tokio::time::timeout(
            std::time::Duration::from_secs(5),
            uni.read_to_end(MAX_IDLE_FRAME + 4),
        )
        .await;
        let mut reader = crate::wire::FrameReader::default();
        let frame = match read {
            Ok(Ok(bytes)) => {
                reader.push(&bytes);
                match reader.next_frame() {
                    Ok(Some(f)) if reader.pending() == 0 => Some(f),
                    _ => None,
                }
            }
            _ => None,
        };
        match frame {
            Some(crate::wire::Frame::Notify { feeds }) => {
                tracing::debug!(replication = %name, ?feeds, "the upstream's feeds changed");
                // A full queue already holds a run for it.
                let _ = tx.try_send(name.clone());
            }
            other => {
                let what = other.map_or("an unreadable stream", |f| f.name());
                tracing::warn!(replication = %name, "the upstream sent {what} between runs; closing the connection");
                transport::close_with(
                    &conn,
                    crate::wire::code::PROTOCOL,
                    "only NOTIFY is expected between runs",
                );
                return;
            }
        }
    }
}

/// Runs one configured replication now and logs it (unless a dry run); `warm` keeps its
/// connection open for the next run (a server), `None` closes it at the end (a one-off run).
/// The upstreams are tried in the configured order: a run uses the first that answers within
/// `connect_secs` and completes; when one fails (before or during the run), the same run goes
/// on with the next, which resumes what was partly transferred (blobs are kept group by
/// group, whoever sent them). Every run starts again from the first, so runs go back to the
/// preferred upstream as soon as it answers. Runs of one replication must not overlap:
/// [`super::Replicator::run_now`] holds its lock.
#[tracing::instrument(name = "replication", skip_all, fields(name = %rep.name, peers = %rep.peer_list()))]
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
        peer: rep.peer().to_owned(),
        mode: rep.mode.name().into(),
        ..RunSummary::default()
    };
    let mut tried: Vec<String> = Vec::new();
    for (i, upstream) in rep.peers.iter().enumerate() {
        let last = i + 1 == rep.peers.len();
        summary.peer = upstream.clone();
        match drive(store, sync, rep, upstream, options, progress, warm).await {
            Ok((reports, stats)) => {
                let failed = reports
                    .iter()
                    .find(|r| r.error.is_some() && !r.held_back)
                    .map(|r| format!("`{}`: {}", r.feed, r.error.clone().unwrap_or_default()));
                let filters = rep.filters().unwrap_or_default();
                for r in &reports {
                    if rep.mode == Mode::Pull && r.converged() && !options.dry_run {
                        if let Some(c) = r.peer_cursor {
                            let _ = store.set_replication_cursor(
                                &filtered_cursor_key(
                                    &cursor_key(rep, upstream),
                                    filters.get(&r.feed),
                                ),
                                &r.feed,
                                c,
                            );
                        }
                    }
                    if let Some(cp) = &r.checkpoint {
                        if let Err(e) = store.record_upstream_checkpoint(upstream, &r.feed, cp) {
                            tracing::error!("recording a checkpoint: {e}");
                        }
                    }
                }
                summary.add_session(&reports, &stats, options.dry_run);
                summary.notified |= stats.notified;
                match failed {
                    Some(why) if !last => {
                        tracing::info!(upstream = %upstream, "trying the next upstream: {why}");
                        tried.push(format!("{upstream}: {why}"));
                    }
                    _ => break,
                }
            }
            Err(e) => {
                let why = e.to_string();
                if last || !e.is_upstream_failure() {
                    summary.error = Some(why);
                    break;
                }
                tracing::info!(upstream = %upstream, "trying the next upstream: {why}");
                tried.push(format!("{upstream}: {why}"));
            }
        }
    }
    summary.failover = tried.join("; ");
    summary.elapsed_ms = now_ms().saturating_sub(started);
    if !options.dry_run {
        append_log(store, summary.log_record(started, summary.ok(false)));
    }
    summary
}

/// Where the change-log cursor of `rep` against `upstream` is kept: each upstream has a change
/// log of its own, so a position in one means nothing to another.
fn cursor_key(rep: &ReplicationConfig, upstream: &str) -> String {
    if upstream == rep.peer() {
        rep.name.clone()
    } else {
        format!("{}\0{upstream}", rep.name)
    }
}

/// The cursor key of `feed` in a filtered pull: the filter is part of it, so a changed
/// filter starts from a full comparison (a change log since the old cursor would miss the
/// entries the new filter adds).
fn filtered_cursor_key(base: &str, filter: Option<&cairn_store::doc::Filter>) -> String {
    match filter {
        Some(f) => format!("{base}\0filter:{}", f.digest()),
        None => base.to_owned(),
    }
}

/// The key of `rep`'s warm connection to `upstream`.
fn warm_key(rep: &ReplicationConfig, upstream: &str) -> String {
    format!("{}\0{upstream}", rep.name)
}

/// Resolves what `rep` names and drives the session with `upstream`, on the warm connection
/// if there is one (once more on a new one if that connection turns out dead).
async fn drive(
    store: &Store,
    sync: &SyncConfig,
    rep: &ReplicationConfig,
    upstream: &str,
    options: RunOptions,
    progress: &Progress,
    warm: Option<&WarmConnections>,
) -> Result<(Vec<FeedReport>, RunStats), ReplicationError> {
    if rep.direction == Direction::Incoming {
        return Err(ReplicationError::Incoming {
            name: rep.name.clone(),
            peer: rep.peer_list(),
        });
    }
    let peer = store
        .peer(upstream)?
        .ok_or_else(|| ReplicationError::NoPeer(upstream.to_owned()))?;
    let mut feeds = Vec::new();
    for f in &rep.feeds {
        if f == "*" {
            feeds.extend(store.list_feeds()?.into_iter().map(|f| f.name));
        } else {
            store.feed(f)?;
            feeds.push(f.clone());
        }
    }
    let filters = rep.filters().map_err(|why| ReplicationError::Filter {
        name: rep.name.clone(),
        why,
    })?;
    let mut since = HashMap::new();
    if rep.mode == Mode::Pull {
        for f in &feeds {
            let key = filtered_cursor_key(&cursor_key(rep, upstream), filters.get(f));
            if let Some(c) = store.replication_cursor(&key, f)? {
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
        token: rep.token_for(upstream).to_owned(),
        mode: rep.mode,
        feeds,
        since,
        filters,
        guard: GuardRail {
            max_delete_share: rep.max_delete_share,
            allow: options.allow_deletes,
        },
        dry_run: options.dry_run,
        // A scheduled replication run by a server hears of changes between runs; one run on
        // demand only stays on demand.
        notify: warm.is_some() && rep.interval_secs > 0,
        max_rate: 0,
    };
    let mut limits = sync.run_limits();
    // The transfer window in force now sets the rate and when the run must end (a run
    // outside every window, asked for by hand, goes at the replication's own rate).
    match rep.window_at(transport::unix_secs()) {
        WindowState::Open { rate, until } => {
            config.max_rate = rate;
            if let Some(until) = until {
                let until = until.max(Duration::from_secs(1));
                if until < limits.max_run {
                    limits.max_run = until;
                    limits.max_run_is_window_end = true;
                }
            }
        }
        WindowState::Closed(_) => config.max_rate = rep.max_rate.map_or(0, |r| r.0),
    }
    let key = warm_key(rep, upstream);
    let reused = match warm {
        Some(w) => w.take(&key).await,
        None => None,
    };
    let was_warm = reused.is_some();
    let connect_within = Duration::from_secs(rep.connect_secs.max(1));
    let mut conn = match reused {
        Some(c) => c,
        None => {
            let (conn, key) =
                connect_peer(store, &peer, addr, sync, connect_within, config.max_rate).await?;
            config.peer = key;
            conn
        }
    };
    let mut result =
        transport::run_initiator_with_progress(store, &conn, config.clone(), limits, progress)
            .await;
    if was_warm && matches!(result, Err(TransportError::Connection(_))) {
        // The peer restarted or the path changed while the connection sat idle: once more on
        // a new one.
        tracing::debug!("warm connection failed; reconnecting");
        let (fresh, key) =
            connect_peer(store, &peer, addr, sync, connect_within, config.max_rate).await?;
        conn = fresh;
        config.peer = key;
        result =
            transport::run_initiator_with_progress(store, &conn, config, limits, progress).await;
    }
    match (&result, warm) {
        (Ok(_), Some(w)) => w.keep(&key, &rep.name, conn).await,
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
    within: Duration,
    max_rate: u64,
) -> Result<(transport::Connection, PublicKey), ReplicationError> {
    let mut options = sync.transport();
    // A run capped at a rate grants its upstream a tenth of a second's worth to start with.
    options.initial_receive_window = max_rate / 10;
    let dialed = std::time::Instant::now();
    let (conn, followed) = tokio::time::timeout(
        within,
        transport::connect_following(store.identity(), addr, peer.key, &options),
    )
    .await
    .map_err(|_| ReplicationError::NoAnswer {
        peer: peer.name.clone(),
        secs: within.as_secs(),
    })??;
    tracing::debug!(
        peer = %peer.name,
        %addr,
        ms = dialed.elapsed().as_millis() as u64,
        "connected"
    );
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_run_that_did_not_converge_says_so_in_its_log_record() {
        let feed = |name: &str, converged| FeedSummary {
            feed: name.into(),
            converged,
            ..FeedSummary::default()
        };
        let summary = RunSummary {
            feeds: vec![feed("pypi", true), feed("npm", false)],
            ..RunSummary::default()
        };
        assert!(!summary.ok(false));
        let record = summary.log_record(0, summary.ok(false));
        assert_eq!(record.outcome, "failed");
        assert!(
            record.error.contains("did not converge"),
            "{}",
            record.error
        );
        assert!(record.error.contains("`npm`") && !record.error.contains("`pypi`"));
        // An error of the run stands first; a run that converged has none.
        let failed = RunSummary {
            error: Some("the peer went away".into()),
            ..summary.clone()
        };
        assert_eq!(failed.log_record(0, false).error, "the peer went away");
        let fine = RunSummary {
            feeds: vec![feed("pypi", true)],
            ..RunSummary::default()
        };
        assert_eq!(fine.log_record(0, fine.ok(false)).error, "");
    }
}
