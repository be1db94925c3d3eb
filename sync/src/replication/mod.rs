//! Configured replications end to end: their configuration ([`SyncConfig`],
//! [`ReplicationConfig`]), one run ([`run`]: resolve, dial or reuse the warm connection,
//! drive the session, remember cursors and checkpoints, log), the schedule, the responder's
//! side (tokens, per-peer connection slots, the log record of incoming runs), and the control
//! socket through which a command asks the running server for a run now ([`control`]).
//!
//! A server builds one [`Replicator`], calls [`Replicator::listen`] and
//! [`Replicator::schedule`], and [`Replicator::shut_down`] at the end; a one-off run without a
//! server calls [`run`] directly.

mod config;
pub mod control;
mod incoming;
mod run;
mod status;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use cairn_store::Store;

pub use config::{
    pull_replicas, Direction, Rate, ReplicationConfig, SyncConfig, Window, WindowState,
};
pub use incoming::TokenAuthorizer;
pub use run::{run, FeedSummary, ReplicationError, RunOptions, RunSummary, WarmConnections};
pub use status::ReplicationStatus;

use crate::transport::{self, Progress, TransportError};

/// The replications of one instance: runs them on schedule or on request (never two runs of
/// one replication at once), keeps their connections warm, and answers peers' runs.
#[derive(Clone)]
pub struct Replicator(Arc<Inner>);

impl std::fmt::Debug for Replicator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let names: Vec<&str> = self
            .0
            .replications
            .iter()
            .map(|r| r.name.as_str())
            .collect();
        f.debug_struct("Replicator")
            .field("replications", &names)
            .finish_non_exhaustive()
    }
}

struct Inner {
    store: Arc<Store>,
    sync: SyncConfig,
    replications: Vec<ReplicationConfig>,
    /// One per replication: a run never overlaps another run of the same replication.
    locks: HashMap<String, Arc<tokio::sync::Mutex<()>>>,
    warm: WarmConnections,
    tasks: parking_lot::Mutex<Vec<tokio::task::JoinHandle<()>>>,
    /// What each replication is doing and did.
    states: parking_lot::Mutex<HashMap<String, status::RunState>>,
    /// Set by [`Replicator::shut_down`]: no new run starts.
    stopping: std::sync::atomic::AtomicBool,
    /// Per replication: a run is queued (by a notification) and has not started yet.
    queued: HashMap<String, std::sync::atomic::AtomicBool>,
    /// Names of replications whose upstream said a feed changed, until
    /// [`Replicator::schedule`] takes it.
    notified: parking_lot::Mutex<Option<tokio::sync::mpsc::Receiver<String>>>,
}

impl Replicator {
    /// The replications configured for `store`.
    pub fn new(
        store: Arc<Store>,
        sync: SyncConfig,
        replications: Vec<ReplicationConfig>,
    ) -> Replicator {
        let locks = replications
            .iter()
            .map(|r| (r.name.clone(), Arc::default()))
            .collect();
        let log = store.replication_log(usize::MAX).unwrap_or_default();
        let states = replications
            .iter()
            .map(|r| (r.name.clone(), status::RunState::from_log(&r.name, &log)))
            .collect();
        let queued = replications
            .iter()
            .map(|r| (r.name.clone(), Default::default()))
            .collect();
        let (tx, rx) = tokio::sync::mpsc::channel(64);
        Replicator(Arc::new(Inner {
            store,
            sync,
            replications,
            locks,
            warm: WarmConnections::notifying(tx),
            tasks: parking_lot::Mutex::default(),
            states: parking_lot::Mutex::new(states),
            stopping: std::sync::atomic::AtomicBool::new(false),
            queued,
            notified: parking_lot::Mutex::new(Some(rx)),
        }))
    }

    /// The store replicated.
    pub fn store(&self) -> &Arc<Store> {
        &self.0.store
    }

    /// As configured.
    pub fn replications(&self) -> &[ReplicationConfig] {
        &self.0.replications
    }

    /// Opens the QUIC endpoint on `[sync] listen` (only peers added here get through the
    /// handshake) and answers their runs until [`Replicator::shut_down`].
    pub fn listen(&self) -> Result<quinn::Endpoint, TransportError> {
        let inner = &self.0;
        let filter_store = inner.store.clone();
        let filter: transport::PeerFilter =
            Arc::new(move |k| incoming::is_known_peer(&filter_store, k));
        let endpoint = transport::server(
            inner.sync.listen,
            inner.store.identity(),
            filter,
            &inner.sync.transport(),
        )?;
        let responder = incoming::Responder {
            store: inner.store.clone(),
            pull_replicas: pull_replicas(&inner.replications, &inner.store),
            run_limits: inner.sync.run_limits(),
            session_limits: inner.sync.session_limits(),
            max_peer_connections: inner.sync.max_peer_connections,
            send_budget: transport::SendBudget::new(
                inner.sync.send_budget_mib.saturating_mul(1 << 20),
            ),
        };
        let task = tokio::spawn(incoming::accept_loop(endpoint.clone(), responder));
        inner.tasks.lock().push(task);
        Ok(endpoint)
    }

    /// Starts every outgoing replication with an interval on its schedule (the first run at
    /// once, each inside its transfer windows); a failed run is logged and retried at the next
    /// tick. From then on, an upstream's notification that a feed changed starts a run at
    /// once (several arriving during a run make one more run after it).
    pub fn schedule(&self) {
        if let Some(mut rx) = self.0.notified.lock().take() {
            let this = self.clone();
            let task = tokio::spawn(async move {
                while let Some(name) = rx.recv().await {
                    this.run_soon(&name);
                }
            });
            self.0.tasks.lock().push(task);
        }
        for rep in self
            .0
            .replications
            .iter()
            .filter(|r| r.direction == Direction::Outgoing && r.interval_secs > 0)
        {
            let this = self.clone();
            let name = rep.name.clone();
            let every = Duration::from_secs(rep.interval_secs.max(1));
            let task = tokio::spawn(async move {
                let mut tick = tokio::time::interval(every);
                tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                loop {
                    tick.tick().await;
                    this.wait_for_window(&name).await;
                    let started = run::now_ms();
                    let s = this
                        .run_now(&name, RunOptions::default(), &Progress::default())
                        .await;
                    // A missed tick fires at once (`Delay`), else one interval after the last.
                    let next = (started + every.as_millis() as u64).max(run::now_ms());
                    if let Some(state) = this.0.states.lock().get_mut(&name) {
                        state.set_next_run(next);
                    }
                    if !s.ok(false) {
                        tracing::warn!(replication = %name, "scheduled run failed: {}", s.error.clone().unwrap_or_else(|| format!("{:?}", s.feeds)));
                    }
                }
            });
            self.0.tasks.lock().push(task);
        }
    }

    /// Queues one run of `name` (after the one under way, inside its transfer windows) unless
    /// one is queued already.
    fn run_soon(&self, name: &str) {
        let Some(flag) = self.0.queued.get(name) else {
            return;
        };
        if flag.swap(true, std::sync::atomic::Ordering::SeqCst) {
            return;
        }
        let this = self.clone();
        let name = name.to_owned();
        tokio::spawn(async move {
            this.wait_for_window(&name).await;
            let s = this
                .run_now(&name, RunOptions::default(), &Progress::default())
                .await;
            if !s.ok(false) {
                tracing::warn!(replication = %name, "notified run failed: {}", s.error.clone().unwrap_or_else(|| format!("{:?}", s.feeds)));
            }
        });
    }

    /// Waits until `name` is inside one of its transfer windows (at once when it has none),
    /// showing the wait in its status.
    async fn wait_for_window(&self, name: &str) {
        let Some(rep) = self.0.replications.iter().find(|r| r.name == name) else {
            return;
        };
        loop {
            match rep.window_at(transport::unix_secs()) {
                WindowState::Open { .. } => break,
                WindowState::Closed(wait) => {
                    if let Some(state) = self.0.states.lock().get_mut(name) {
                        state.set_waiting(Some(run::now_ms() + wait.as_millis() as u64));
                    }
                    // Clocks jump and windows are checked again: never sleep past a minute.
                    tokio::time::sleep(wait.min(Duration::from_secs(60))).await;
                }
            }
        }
        if let Some(state) = self.0.states.lock().get_mut(name) {
            state.set_waiting(None);
        }
    }

    /// Runs the replication `name` now, after any run of it under way; `progress` is updated
    /// as it goes.
    pub async fn run_now(
        &self,
        name: &str,
        options: RunOptions,
        progress: &Progress,
    ) -> RunSummary {
        let inner = &self.0;
        let (Some(rep), Some(lock)) = (
            inner.replications.iter().find(|r| r.name == name),
            inner.locks.get(name),
        ) else {
            return RunSummary {
                replication: name.to_owned(),
                error: Some(ReplicationError::Unknown(name.to_owned()).to_string()),
                ..RunSummary::default()
            };
        };
        let _guard = lock.lock().await;
        if let Some(flag) = inner.queued.get(name) {
            // Whatever is notified from here on needs a run after this one.
            flag.store(false, std::sync::atomic::Ordering::SeqCst);
        }
        if inner.stopping.load(std::sync::atomic::Ordering::SeqCst) {
            return RunSummary {
                replication: name.to_owned(),
                error: Some("the server is stopping".into()),
                ..RunSummary::default()
            };
        }
        let started = run::now_ms();
        if !options.dry_run {
            if let Some(state) = inner.states.lock().get_mut(name) {
                state.started(started);
            }
        }
        let summary = run(
            &inner.store,
            &inner.sync,
            rep,
            options,
            progress,
            Some(&inner.warm),
        )
        .await;
        if !options.dry_run {
            if let Some(state) = inner.states.lock().get_mut(name) {
                state.finished(started, &summary, run::now_ms());
            }
            if summary.notified {
                self.run_soon(name);
            }
        }
        summary
    }

    /// What every configured replication is doing and did.
    pub fn status(&self) -> Vec<ReplicationStatus> {
        status::all(&self.0.replications, &self.0.states.lock(), run::now_ms())
    }

    /// Stops starting runs, lets the runs under way finish for at most `grace` (a run cut
    /// after that resumes its partly transferred blobs at the next start), then stops the
    /// schedule and the accept loop, closes the warm connections (peers hear that this
    /// instance is going rather than waiting out the idle timeout) and `endpoint`. Returns
    /// how many runs were still going when the grace ran out.
    pub async fn shut_down(&self, endpoint: &quinn::Endpoint, grace: Duration) -> usize {
        self.0
            .stopping
            .store(true, std::sync::atomic::Ordering::SeqCst);
        let deadline = tokio::time::Instant::now() + grace;
        let mut cut = 0;
        for lock in self.0.locks.values() {
            if tokio::time::timeout_at(deadline, lock.lock())
                .await
                .is_err()
            {
                cut += 1;
            }
        }
        for task in self.0.tasks.lock().drain(..) {
            task.abort();
        }
        self.0.warm.close_all().await;
        transport::shut_down(endpoint).await;
        cut
    }
}
