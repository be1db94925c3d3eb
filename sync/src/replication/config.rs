//! What a replication is told: the `[sync]` section (the endpoint and the bounds of every
//! run) and one `[[replication]]` each.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::Duration;

use cairn_store::Store;
use serde::{Deserialize, Serialize};

use crate::proto::Limits;
use crate::transport::{self, Congestion, RunLimits};
use crate::wire::Mode;

/// `[sync]`: the replication endpoint and the bounds of every run, in or out.
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
    /// How long a checkpoint this instance signed is passed on again while its feed is
    /// unchanged, in seconds: its transparency log grows by at most one entry per feed per
    /// this long, and the checkpoints its spokes hold are at most this old when they pull.
    #[serde(default = "default_checkpoint_refresh_secs")]
    pub checkpoint_refresh_secs: u64,
}

fn default_checkpoint_refresh_secs() -> u64 {
    Limits::default().checkpoint_refresh_secs
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
fn default_window_mib() -> u32 {
    transport::DEFAULT_WINDOW_MIB
}
fn default_congestion() -> Congestion {
    Congestion::Bbr
}
fn default_listen() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 7443))
}

impl SyncConfig {
    /// What a peer may make this instance hold in one run.
    pub fn session_limits(&self) -> Limits {
        Limits {
            max_blob_bytes: self.max_blob_mib.saturating_mul(1 << 20),
            checkpoint_ttl_secs: self.checkpoint_ttl_secs.max(1),
            checkpoint_refresh_secs: self.checkpoint_refresh_secs,
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
            checkpoint_refresh_secs: default_checkpoint_refresh_secs(),
        }
    }
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

impl Direction {
    /// As configured.
    pub fn name(self) -> &'static str {
        match self {
            Direction::Outgoing => "outgoing",
            Direction::Incoming => "incoming",
        }
    }
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

impl ReplicationConfig {
    /// One line for `replication list`: name, direction, mode, peer, feeds, schedule.
    pub fn describe(&self) -> String {
        let when = match self.interval_secs {
            0 => "on demand".to_string(),
            n => format!("every {n}s"),
        };
        format!(
            "{} {} {} {} [{}] {when}",
            self.name,
            self.direction.name(),
            self.mode.name(),
            self.peer,
            self.feeds.join(","),
        )
    }

    /// What the status API shows of it.
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::json!({
            "name": self.name, "peer": self.peer, "feeds": self.feeds, "mode": self.mode.name(),
            "direction": self.direction.name(),
            "interval_secs": self.interval_secs, "max_delete_share": self.max_delete_share,
        })
    }
}

/// Feeds this instance pulls from a peer, with the peer: they are read-only here (they take
/// no pushes, mirrors or uploads).
pub fn pull_replicas(replications: &[ReplicationConfig], store: &Store) -> HashMap<String, String> {
    let mut out = HashMap::new();
    for r in replications
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
