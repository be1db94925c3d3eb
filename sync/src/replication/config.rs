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
    /// The congestion window a new connection starts with under BBR, in KiB: what it sends
    /// in its first round trip before it has measured the path (0: quinn's 240 KB).
    #[serde(default = "default_initial_window_kib")]
    pub initial_window_kib: u64,
    /// What all connections together may hold in their send buffers, in MiB: each run that
    /// sends gets an equal share (at least 1 MiB) and no more than twice its congestion window.
    #[serde(default = "default_send_budget_mib")]
    pub send_budget_mib: u64,
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
fn default_send_budget_mib() -> u64 {
    256
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
fn default_initial_window_kib() -> u64 {
    transport::INITIAL_CONGESTION_WINDOW >> 10
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
            initial_receive_window: 0,
            initial_congestion_window: self.initial_window_kib.saturating_mul(1 << 10),
        }
    }
}

impl Default for SyncConfig {
    fn default() -> SyncConfig {
        SyncConfig {
            listen: default_listen(),
            congestion: default_congestion(),
            window_mib: default_window_mib(),
            initial_window_kib: default_initial_window_kib(),
            send_budget_mib: default_send_budget_mib(),
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
    /// The upstreams, in order of preference: peers added with `cairn peer add`. `peer` takes
    /// one name or a list (`peers` is the same field); a run uses the first that answers.
    #[serde(rename = "peer", alias = "peers", deserialize_with = "one_or_many")]
    pub peers: Vec<String>,
    /// How long a run waits for an upstream's handshake before it tries the next, in seconds.
    #[serde(default = "default_connect_secs")]
    pub connect_secs: u64,
    /// The replication token the peer issued to this instance.
    #[serde(default)]
    pub token: String,
    /// Tokens of other upstreams by peer name, where they differ from `token` (each upstream
    /// issues its own).
    #[serde(default)]
    pub tokens: HashMap<String, String>,
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
    /// The most this replication's runs may send each way: `"20mbit"`, `"5MB"`, or bytes per
    /// second as a number; none by default. The sending side paces itself (the upstream of
    /// a pull is asked to, in HELLO).
    #[serde(default, deserialize_with = "rate")]
    pub max_rate: Option<Rate>,
    /// Transfer windows (UTC): when any is given, scheduled and notified runs start only
    /// inside one, at its `max_rate` if it has one, and a run is cut (to resume) when its
    /// window ends. `cairn replicate NAME` runs at once whatever the time.
    #[serde(default)]
    pub windows: Vec<Window>,
    /// Filtered pulls: per feed, which package names to take (`[[replication.filter]]` with
    /// `feed`, `include` and `exclude` globs). A filtered pull compares and moves only the
    /// entries its filter selects, never deletes entries outside it, and keeps the upstream
    /// writer's checkpoint over exactly that set.
    #[serde(default, rename = "filter")]
    pub filters: Vec<FeedFilter>,
}

/// One `[[replication.filter]]`.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FeedFilter {
    /// The feed it applies to (a package feed the replication names).
    pub feed: String,
    /// Package-name globs to take (none: every name).
    #[serde(default)]
    pub include: Vec<String>,
    /// Package-name globs to leave out.
    #[serde(default)]
    pub exclude: Vec<String>,
}

/// A rate in bytes per second, read from `"20mbit"`, `"2.5MB"`, `"512KiB"` or a number.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Rate(pub u64);

impl std::str::FromStr for Rate {
    type Err = String;

    fn from_str(s: &str) -> Result<Rate, String> {
        let t = s.trim();
        let split = t
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(t.len());
        let (num, unit) = t.split_at(split);
        let n: f64 = num
            .parse()
            .map_err(|_| format!("`{s}` is not a rate such as 20mbit or 5MB"))?;
        let per = match unit.trim().trim_end_matches("/s") {
            "" | "B" => 1.0,
            "bit" => 0.125,
            "kbit" => 125.0,
            "mbit" => 125_000.0,
            "gbit" => 125_000_000.0,
            "kB" | "KB" => 1e3,
            "MB" => 1e6,
            "GB" => 1e9,
            "KiB" => 1024.0,
            "MiB" => 1_048_576.0,
            "GiB" => 1_073_741_824.0,
            u => return Err(format!("`{u}` in `{s}` is not a unit: use bit, kbit, mbit, gbit, B, kB, MB, GB, KiB, MiB or GiB")),
        };
        let bytes = n * per;
        if !bytes.is_finite() || !(1.0..=1e13).contains(&bytes) {
            return Err(format!("rate `{s}` is out of range"));
        }
        Ok(Rate(bytes as u64))
    }
}

fn rate<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Rate>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Raw {
        Number(u64),
        Text(String),
    }
    match Raw::deserialize(d)? {
        Raw::Number(0) => Err(serde::de::Error::custom("a rate of 0 sends nothing")),
        Raw::Number(n) => Ok(Some(Rate(n))),
        Raw::Text(t) => t.parse().map(Some).map_err(serde::de::Error::custom),
    }
}

/// A daily time span, UTC: `from` to `to` (`"HH:MM"` or `"HH:MM:SS"`); it wraps past
/// midnight when `to` is earlier, and covers the whole day when they are equal.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Window {
    /// Start, UTC.
    #[serde(deserialize_with = "time_of_day")]
    pub from: u32,
    /// End, UTC.
    #[serde(deserialize_with = "time_of_day")]
    pub to: u32,
    /// The rate inside this window (else the replication's).
    #[serde(default, deserialize_with = "rate")]
    pub max_rate: Option<Rate>,
}

const DAY: u32 = 86_400;

fn time_of_day<'de, D: serde::Deserializer<'de>>(d: D) -> Result<u32, D::Error> {
    let s = String::deserialize(d)?;
    parse_time_of_day(&s).map_err(serde::de::Error::custom)
}

/// Seconds after midnight of `"HH:MM"` or `"HH:MM:SS"` (`"24:00"` is the day's end).
fn parse_time_of_day(s: &str) -> Result<u32, String> {
    let bad = || format!("`{s}` is not a time of day such as 22:00 or 06:30:00");
    let parts: Vec<u32> = s
        .split(':')
        .map(|p| {
            if p.len() == 2 {
                p.parse().map_err(|_| bad())
            } else {
                Err(bad())
            }
        })
        .collect::<Result<_, _>>()?;
    let t = match parts[..] {
        [h, m] if h < 24 && m < 60 => h * 3600 + m * 60,
        [h, m, sec] if h < 24 && m < 60 && sec < 60 => h * 3600 + m * 60 + sec,
        [24, 0] | [24, 0, 0] => DAY,
        _ => return Err(bad()),
    };
    Ok(t % DAY)
}

impl Window {
    /// Seconds from `t` (seconds after midnight) until this window ends, if `t` is inside it.
    fn remaining(&self, t: u32) -> Option<u32> {
        let len = (self.to + DAY - self.from) % DAY;
        let len = if len == 0 { DAY } else { len };
        let into = (t + DAY - self.from) % DAY;
        (into < len).then_some(len - into)
    }

    /// Seconds from `t` until this window next opens (0 if open).
    fn until_open(&self, t: u32) -> u32 {
        if self.remaining(t).is_some() {
            0
        } else {
            (self.from + DAY - t) % DAY
        }
    }
}

/// Where a replication stands against its transfer windows at one moment.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WindowState {
    /// It may run, at this rate (bytes per second, 0 for none), for at most this long
    /// (`None`: no window ends it).
    Open {
        rate: u64,
        until: Option<std::time::Duration>,
    },
    /// It must wait this long.
    Closed(std::time::Duration),
}

fn default_connect_secs() -> u64 {
    5
}

/// A string or a list of strings, as a list of at least one.
fn one_or_many<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum OneOrMany {
        One(String),
        Many(Vec<String>),
    }
    let v = match OneOrMany::deserialize(d)? {
        OneOrMany::One(s) => vec![s],
        OneOrMany::Many(v) => v,
    };
    if v.is_empty() || v.iter().any(|p| p.is_empty()) {
        return Err(serde::de::Error::custom(
            "`peer` names at least one peer, and no empty name",
        ));
    }
    Ok(v)
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
    /// The token to present to `upstream`.
    pub fn token_for(&self, upstream: &str) -> &str {
        self.tokens.get(upstream).unwrap_or(&self.token)
    }

    /// The preferred upstream (the first listed).
    pub fn peer(&self) -> &str {
        self.peers.first().map(String::as_str).unwrap_or("")
    }

    /// The filters by feed, each in its canonical form; an error says what is wrong with one
    /// (a filter outside a pull, on `@system`, on a feed the replication does not name, twice
    /// for one feed, or with bad patterns).
    pub fn filters(&self) -> Result<HashMap<String, cairn_store::doc::Filter>, String> {
        let mut out = HashMap::new();
        for f in &self.filters {
            if self.mode != Mode::Pull {
                return Err("only a pull can be filtered".into());
            }
            if f.feed == cairn_store::SYSTEM_FEED {
                return Err("the system set is replicated whole; it cannot be filtered".into());
            }
            if !self.feeds.iter().any(|n| n == &f.feed || n == "*") {
                return Err(format!(
                    "a filter for feed `{}`, which it does not replicate",
                    f.feed
                ));
            }
            let filter = cairn_store::doc::Filter {
                include: f.include.clone(),
                exclude: f.exclude.clone(),
            }
            .canonical()
            .map_err(|e| format!("feed `{}`: {e}", f.feed))?;
            if out.insert(f.feed.clone(), filter).is_some() {
                return Err(format!("two filters for feed `{}`", f.feed));
            }
        }
        Ok(out)
    }

    /// Whether and how fast the replication may run at `unix_secs` (see `windows`).
    pub fn window_at(&self, unix_secs: u64) -> WindowState {
        let rate = self.max_rate.map_or(0, |r| r.0);
        if self.windows.is_empty() {
            return WindowState::Open { rate, until: None };
        }
        let t = (unix_secs % u64::from(DAY)) as u32;
        let open = self
            .windows
            .iter()
            .filter_map(|w| w.remaining(t).map(|left| (w, left)))
            .max_by_key(|(_, left)| *left);
        match open {
            Some((w, left)) => WindowState::Open {
                rate: w.max_rate.map_or(rate, |r| r.0),
                until: Some(std::time::Duration::from_secs(u64::from(left))),
            },
            None => WindowState::Closed(std::time::Duration::from_secs(u64::from(
                self.windows
                    .iter()
                    .map(|w| w.until_open(t))
                    .min()
                    .unwrap_or(0)
                    .max(1),
            ))),
        }
    }

    /// The upstreams as one word: `hub` or `hub,relay-tokyo`.
    pub fn peer_list(&self) -> String {
        self.peers.join(",")
    }

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
            self.peer_list(),
            self.feeds.join(","),
        )
    }

    /// What the status API shows of it.
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::json!({
            "name": self.name, "peer": self.peer(), "peers": self.peers, "feeds": self.feeds, "mode": self.mode.name(),
            "direction": self.direction.name(),
            "interval_secs": self.interval_secs, "max_delete_share": self.max_delete_share,
            "connect_secs": self.connect_secs,
            "max_rate": self.max_rate.map(|r| r.0),
            "windows": self.windows.iter().map(|w| serde_json::json!({
                "from": w.from, "to": w.to, "max_rate": w.max_rate.map(|r| r.0),
            })).collect::<Vec<_>>(),
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
                    out.insert(feed.name, r.peer().to_owned());
                }
            } else if !f.starts_with('@') {
                out.insert(f.clone(), r.peer().to_owned());
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_read_as_people_write_them() {
        assert_eq!("20mbit".parse::<Rate>(), Ok(Rate(2_500_000)));
        assert_eq!("2.5MB".parse::<Rate>(), Ok(Rate(2_500_000)));
        assert_eq!("512KiB".parse::<Rate>(), Ok(Rate(524_288)));
        assert_eq!("1gbit/s".parse::<Rate>(), Ok(Rate(125_000_000)));
        assert!("20 furlongs"
            .parse::<Rate>()
            .unwrap_err()
            .contains("not a unit"));
        assert!("fast".parse::<Rate>().is_err());
        assert!("0mbit".parse::<Rate>().is_err());
    }

    fn rep(toml_text: &str) -> ReplicationConfig {
        toml::from_str(&format!(
            "name = \"r\"\nfeeds = [\"demo\"]\nmode = \"pull\"\n{toml_text}"
        ))
        .unwrap()
    }

    #[test]
    fn peer_takes_one_name_or_an_ordered_list() {
        assert_eq!(rep("peer = \"hub\"").peers, ["hub"]);
        let r = rep("peers = [\"hub\", \"relay\"]");
        assert_eq!(r.peers, ["hub", "relay"]);
        assert_eq!(r.peer(), "hub");
        let e = toml::from_str::<ReplicationConfig>(
            "name = \"r\"\nfeeds = []\nmode = \"pull\"\npeer = []",
        )
        .unwrap_err();
        assert!(e.to_string().contains("at least one peer"), "{e}");
    }

    #[test]
    fn windows_open_close_wrap_midnight_and_set_the_rate() {
        let r = rep(
            "peer = \"hub\"\nmax_rate = \"10mbit\"\nwindows = [{ from = \"22:00\", to = \"06:00\" }, { from = \"12:00\", to = \"13:00\", max_rate = \"1mbit\" }]",
        );
        let at = |h: u64, m: u64| 86_400 * 100 + h * 3600 + m * 60;
        let secs = std::time::Duration::from_secs;
        let open = |rate, left| WindowState::Open {
            rate,
            until: Some(secs(left)),
        };
        assert_eq!(r.window_at(at(23, 0)), open(1_250_000, 7 * 3600));
        assert_eq!(r.window_at(at(5, 59)), open(1_250_000, 60));
        assert_eq!(r.window_at(at(6, 0)), WindowState::Closed(secs(6 * 3600)));
        assert_eq!(r.window_at(at(12, 30)), open(125_000, 1800));
        assert_eq!(r.window_at(at(13, 0)), WindowState::Closed(secs(9 * 3600)));
        let always = rep("peer = \"hub\"");
        assert_eq!(
            always.window_at(at(3, 0)),
            WindowState::Open {
                rate: 0,
                until: None
            }
        );
        assert!(toml::from_str::<Window>("from = \"25:00\"\nto = \"01:00\"").is_err());
        assert!(toml::from_str::<Window>("from = \"1:00\"\nto = \"01:00\"").is_err());
    }
}
