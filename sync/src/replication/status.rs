//! What each configured replication is doing and did, in the terms an operator asks about:
//! is it running, behind, failing, or has it never run, and why; for the status page, the
//! admin API and alerts.

use std::collections::HashMap;

use cairn_store::admin::{duration_words, ReplicationRecord};
use serde::Serialize;

use super::{Direction, ReplicationConfig, RunSummary};

/// A replication is behind when its last successful run is older than this many intervals.
const BEHIND_INTERVALS: u64 = 2;

/// What is remembered of one replication's runs.
#[derive(Clone, Debug, Default)]
pub(crate) struct RunState {
    running_since_ms: Option<u64>,
    last: Option<LastRun>,
    failures_in_a_row: u32,
    last_ok_ended_ms: Option<u64>,
    next_run_ms: Option<u64>,
    /// Outside its transfer windows until then (Unix ms).
    waiting_until_ms: Option<u64>,
}

#[derive(Clone, Debug, Default)]
struct LastRun {
    started_ms: u64,
    ended_ms: u64,
    ok: bool,
    held_back: bool,
    error: String,
    bytes_sent: u64,
    bytes_received: u64,
    upstream: String,
    failover: String,
}

impl RunState {
    /// What the replication log says of `name`'s runs (newest first), for a server that
    /// starts with history.
    pub(crate) fn from_log(name: &str, log: &[ReplicationRecord]) -> RunState {
        let mut state = RunState::default();
        let mut runs = log.iter().filter(|r| r.replication == name);
        if let Some(r) = runs.next() {
            state.last = Some(LastRun {
                started_ms: r.started_ms,
                ended_ms: r.ended_ms,
                ok: r.outcome == "ok",
                held_back: false,
                error: r.error.clone(),
                bytes_sent: r.bytes_sent,
                bytes_received: r.bytes_received,
                upstream: r.peer.clone(),
                failover: r.failover.clone(),
            });
            let mut all = std::iter::once(r).chain(runs);
            let mut failures = 0;
            for r in all.by_ref() {
                if r.outcome == "ok" {
                    state.last_ok_ended_ms = Some(r.ended_ms);
                    break;
                }
                failures += 1;
            }
            state.failures_in_a_row = failures;
        }
        state
    }

    pub(crate) fn started(&mut self, now_ms: u64) {
        self.running_since_ms = Some(now_ms);
    }

    pub(crate) fn finished(&mut self, started_ms: u64, s: &RunSummary, now_ms: u64) {
        let ok = s.ok(false);
        self.running_since_ms = None;
        self.last = Some(LastRun {
            started_ms,
            ended_ms: now_ms,
            ok,
            held_back: s.error.is_none() && s.feeds.iter().any(|f| f.held_back),
            error: s
                .error
                .clone()
                .or_else(|| s.feeds.iter().find_map(|f| f.error.clone()))
                .unwrap_or_default(),
            bytes_sent: s.bytes_sent,
            bytes_received: s.bytes_received,
            upstream: s.peer.clone(),
            failover: s.failover.clone(),
        });
        if ok {
            self.failures_in_a_row = 0;
            self.last_ok_ended_ms = Some(now_ms);
        } else {
            self.failures_in_a_row += 1;
        }
    }

    pub(crate) fn set_waiting(&mut self, until_ms: Option<u64>) {
        self.waiting_until_ms = until_ms;
    }

    pub(crate) fn set_next_run(&mut self, at_ms: u64) {
        self.next_run_ms = Some(at_ms);
    }
}

/// One replication as the status page and `GET /api/v1/replications` show it.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct ReplicationStatus {
    /// Name.
    pub name: String,
    /// The preferred peer (the upstream of a pull).
    pub peer: String,
    /// Every upstream, in order of preference.
    pub peers: Vec<String>,
    /// The upstream the last run used.
    pub last_upstream: String,
    /// Why the last run used `last_upstream` rather than a preferred one (empty when it used
    /// the first).
    pub last_failover: String,
    /// Outside its transfer windows, waiting until then (Unix ms).
    pub waiting_until_ms: Option<u64>,
    /// pull, push or mirror.
    pub mode: String,
    /// outgoing (this instance runs it) or incoming (the peer does).
    pub direction: String,
    /// Feeds.
    pub feeds: Vec<String>,
    /// Seconds between scheduled runs; 0 runs on demand only.
    pub interval_secs: u64,
    /// Share of a feed's entries one run may delete.
    pub max_delete_share: f64,
    /// `ok`, `running`, `behind`, `failing`, `never run` or `incoming`.
    pub state: String,
    /// Why, in words, when it is not `ok`.
    pub reason: String,
    /// When the run under way started (Unix ms).
    pub running_since_ms: Option<u64>,
    /// When the last run started and ended (Unix ms), and whether it succeeded.
    pub last_started_ms: Option<u64>,
    /// See `last_started_ms`.
    pub last_ended_ms: Option<u64>,
    /// `ok` or `failed`.
    pub last_outcome: Option<String>,
    /// The last run's error, if it failed.
    pub last_error: String,
    /// Failed runs in a row.
    pub failures_in_a_row: u32,
    /// Seconds since the last successful run ended.
    pub lag_secs: Option<u64>,
    /// When the next scheduled run starts (Unix ms).
    pub next_run_ms: Option<u64>,
    /// Bytes the last run sent and received.
    pub last_bytes_sent: u64,
    /// See `last_bytes_sent`.
    pub last_bytes_received: u64,
}

/// The status of `rep` from what is remembered of its runs, at `now_ms`.
pub(crate) fn status(rep: &ReplicationConfig, state: &RunState, now_ms: u64) -> ReplicationStatus {
    let last = state.last.as_ref();
    let mut s = ReplicationStatus {
        name: rep.name.clone(),
        peer: rep.peer().to_owned(),
        peers: rep.peers.clone(),
        last_upstream: last.map(|l| l.upstream.clone()).unwrap_or_default(),
        last_failover: last.map(|l| l.failover.clone()).unwrap_or_default(),
        waiting_until_ms: state.waiting_until_ms,
        mode: rep.mode.name().to_owned(),
        direction: rep.direction.name().to_owned(),
        feeds: rep.feeds.clone(),
        interval_secs: rep.interval_secs,
        max_delete_share: rep.max_delete_share,
        running_since_ms: state.running_since_ms,
        last_started_ms: last.map(|l| l.started_ms),
        last_ended_ms: last.map(|l| l.ended_ms),
        last_outcome: last.map(|l| if l.ok { "ok".into() } else { "failed".into() }),
        last_error: last.map(|l| l.error.clone()).unwrap_or_default(),
        failures_in_a_row: state.failures_in_a_row,
        lag_secs: state
            .last_ok_ended_ms
            .map(|t| now_ms.saturating_sub(t) / 1000),
        next_run_ms: state.next_run_ms.filter(|_| rep.interval_secs > 0),
        last_bytes_sent: last.map(|l| l.bytes_sent).unwrap_or(0),
        last_bytes_received: last.map(|l| l.bytes_received).unwrap_or(0),
        ..ReplicationStatus::default()
    };
    let interval_ms = rep.interval_secs.saturating_mul(1000);
    let ago = |t: u64| duration_words(now_ms.saturating_sub(t) / 1000);
    let (state_word, reason) = if rep.direction == Direction::Incoming {
        (
            "incoming",
            format!("`{}` runs it against this instance", rep.peer()),
        )
    } else if let Some(until) = state
        .waiting_until_ms
        .filter(|_| state.running_since_ms.is_none())
    {
        (
            "waiting",
            format!(
                "outside its transfer windows; the next opens in {}",
                duration_words(until.saturating_sub(now_ms) / 1000)
            ),
        )
    } else if let Some(since) = state.running_since_ms {
        if interval_ms > 0 && now_ms.saturating_sub(since) > interval_ms {
            (
                "behind",
                format!(
                    "a run has been going for {}, longer than its interval of {}",
                    ago(since),
                    duration_words(rep.interval_secs)
                ),
            )
        } else {
            ("running", format!("running for {}", ago(since)))
        }
    } else {
        match last {
            None if rep.interval_secs == 0 => (
                "never run",
                format!(
                    "runs on demand only (`cairn replicate {}`), and has not yet",
                    rep.name
                ),
            ),
            None => ("never run", "its first run has not happened yet".into()),
            Some(l) if l.held_back => (
                "behind",
                format!("held back by the deletion guard rail: {}", l.error),
            ),
            Some(l) if !l.ok => (
                "failing",
                format!(
                    "{} failed run{} in a row; the last, {} ago: {}",
                    state.failures_in_a_row,
                    if state.failures_in_a_row == 1 {
                        ""
                    } else {
                        "s"
                    },
                    ago(l.ended_ms),
                    l.error
                ),
            ),
            Some(_)
                if interval_ms > 0
                    && state.last_ok_ended_ms.is_some_and(|t| {
                        now_ms.saturating_sub(t) > BEHIND_INTERVALS * interval_ms
                    }) =>
            {
                (
                    "behind",
                    format!(
                        "its last successful run ended {} ago; it runs every {}",
                        ago(state.last_ok_ended_ms.unwrap_or(0)),
                        duration_words(rep.interval_secs)
                    ),
                )
            }
            Some(l) if !l.failover.is_empty() => {
                ("ok", format!("served by `{}`: {}", l.upstream, l.failover))
            }
            Some(_) => ("ok", String::new()),
        }
    };
    s.state = state_word.to_owned();
    s.reason = reason;
    s
}

/// The status of every replication in `states`' keys order of `replications`.
pub(crate) fn all(
    replications: &[ReplicationConfig],
    states: &HashMap<String, RunState>,
    now_ms: u64,
) -> Vec<ReplicationStatus> {
    replications
        .iter()
        .map(|r| {
            status(
                r,
                states.get(&r.name).unwrap_or(&RunState::default()),
                now_ms,
            )
        })
        .collect()
}
