//! The fan-out runner: one hub and N spokes, each a real `cairn serve`, on loopback, first
//! with every spoke pulling from the hub and then through R relays (each spoke lists its relay
//! first and the hub second). Every spoke keeps a warm connection and runs on the hub's change
//! notification. A release of P wheels is published on the hub with one `cairn push`; per N the
//! runner reports the time until every spoke's root equals the hub's, whether every spoke's
//! `verify` then passes, and for the hub and each relay: CPU seconds during the release, peak
//! RSS, RSS once idle with the connections still warm (and its growth per connected spoke),
//! and bytes sent as its replication log counts them.
//!
//! With `--link P2` (as root) every instance runs in a network namespace of its own behind a
//! link of its own (`cairn-link up --sites`, a star): each relay and spoke has the profile's
//! access rate and reaches the hub in the profile's round trip, across the hub's leg, which
//! carries the loss; relays and spokes reach each other in `--site-rtt` (a region). The runner
//! talks to the instances over the link's unshaped management network and also reports the
//! bytes the hub's leg carried from the hub. With `--shared-link` the hub runs in
//! `cairnfan-a` and all relays and spokes together in `cairnfan-b`, behind one emulated link: a
//! region whose sites share one WAN path to the hub.
//!
//! `fanout --spokes 10,30,100 --relays 0,4 --release-mib 64 [--link P2]` (see `--help`).
//! Results go to `DIR/results.json`, `DIR/results.md` and `DIR/fanout.png`. With `CAIRN_LOG`
//! set (e.g. `info,cairn_sync::transport=debug`, which adds each sending connection's window,
//! RTT and losses every 5 s), each instance's log goes to `serve.log` in its data directory
//! (kept with `--keep`).

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, ensure, Result};
use cairn_benches::instance::{api, free_udp_port, unix_ms, Inst, Running};
use cairn_benches::{cpu_seconds, fill_bytes, rss_bytes, sibling};
use clap::Parser;
use serde::Serialize;

#[derive(Parser, Debug)]
#[command(about = "One hub, many spokes, directly and through relays")]
struct Args {
    /// Numbers of spokes to measure, comma-separated.
    #[arg(long, value_delimiter = ',', default_values_t = vec![10usize, 30, 100])]
    spokes: Vec<usize>,
    /// Numbers of relays to measure each spoke count with (0: every spoke pulls from the hub).
    #[arg(long, value_delimiter = ',', default_values_t = vec![0usize, 4])]
    relays: Vec<usize>,
    /// Packages in the release.
    #[arg(long, default_value_t = 100)]
    packages: usize,
    /// Size of the release in MiB (split evenly between its packages).
    #[arg(long, default_value_t = 64)]
    release_mib: u64,
    /// Make 7/8 of each package's payload zeros (every 4 KiB: 512 random bytes, then zeros).
    /// Nothing in Cairn compresses: the bytes on the wire, their hashing and their encryption
    /// are the same as for random payloads, while stores on a compressing filesystem (btrfs
    /// with `compress-force`) take about a sixth of the disk. For releases of which one copy
    /// per spoke would not fit on the machine's disk.
    #[arg(long)]
    compressible: bool,
    /// Give up on a run after this many seconds.
    #[arg(long, default_value_t = 1800)]
    timeout_secs: u64,
    /// Where instances and results go (emptied first).
    #[arg(long, default_value = "bench-scratch/fanout")]
    dir: PathBuf,
    /// Keep each run's instances (a copy of the release per spoke) instead of removing them.
    #[arg(long)]
    keep: bool,
    /// Put every instance behind an emulated link of its own with this profile (P1, P2, P3;
    /// as root).
    #[arg(long)]
    link: Option<String>,
    /// With `--link`: one link shared by all relays and spokes instead of one each.
    #[arg(long)]
    shared_link: bool,
    /// With `--link`: the round trip between two relays or spokes (a region).
    #[arg(long, default_value = "10ms")]
    site_rtt: String,
    /// With `--link`: the rate of the hub's own leg (e.g. 1gbit; default unlimited).
    #[arg(long)]
    hub_rate: Option<String>,
    /// (Set by the runner when it runs itself inside the site's namespace.)
    #[arg(long, hide = true)]
    inside: bool,
}

impl Args {
    fn topology(&self) -> Topology {
        match (&self.link, self.shared_link) {
            (None, _) => Topology::Loopback,
            (Some(_), true) => Topology::Shared,
            (Some(_), false) => Topology::Star,
        }
    }
}

const LINK: &str = "cairnfan";
/// The hub's QUIC and HTTP address with `--link`: namespace `cairnfan-a`.
const LINK_HUB: &str = "10.77.0.1";

/// Where the instances of a run are.
#[derive(Clone, Copy, PartialEq)]
enum Topology {
    /// All on loopback.
    Loopback,
    /// The hub across one link from a namespace holding everything else.
    Shared,
    /// Each in its own namespace behind its own leg; site k of the star is relay k, then the
    /// spokes.
    Star,
}

const FEED: &str = "rel";

#[derive(Serialize, Debug, Default, Clone)]
struct Figures {
    /// Bytes resident before any spoke connected.
    rss_start: u64,
    /// Peak resident bytes over the whole run.
    rss_peak: u64,
    /// Resident bytes 15 s after the last spoke converged, connections still warm.
    rss_idle: u64,
    cpu_secs: f64,
    bytes_sent: u64,
    /// Bytes of packets QUIC declared lost and sent again, as its replication log counts them.
    lost_bytes: u64,
    /// Spokes (or relays) connected to it.
    downstreams: usize,
}

impl Figures {
    /// Growth of the resident set per connected downstream once idle.
    fn idle_per_downstream(&self) -> u64 {
        self.rss_idle.saturating_sub(self.rss_start) / self.downstreams.max(1) as u64
    }
}

#[derive(Serialize, Debug, Default, Clone)]
struct Row {
    spokes: usize,
    relays: usize,
    release_bytes: u64,
    /// Seconds from the push to the last spoke's root equal to the hub's.
    converged_secs: f64,
    /// Median and slowest spoke.
    median_spoke_secs: f64,
    verified: usize,
    hub: Figures,
    relay: Vec<Figures>,
    /// With `--link`: bytes the link carried from the hub's side during the release.
    link_bytes: Option<u64>,
    /// CPU seconds of all spokes together during the release.
    spokes_cpu_secs: f64,
    /// With a star link: CPU seconds of the link emulator during the release.
    link_cpu_secs: Option<f64>,
    /// Payloads 7/8 zeros (`--compressible`).
    compressible: bool,
}

fn main() -> Result<()> {
    let args = Args::parse();
    ensure!(
        args.packages > 0 && args.release_mib > 0,
        "--packages and --release-mib must be positive"
    );
    let cairn = sibling("cairn")?;
    let topology = args.topology();
    if let (Some(profile), false, Topology::Shared) = (&args.link, args.inside, topology) {
        // Bring the link up, then run again inside the site's namespace (its instances and
        // this runner's API calls on loopback there; the hub across the link).
        let _link = cairn_benches::instance::link_up(LINK, profile)?;
        let status = Command::new("ip")
            .args(["netns", "exec", &format!("{LINK}-b")])
            .arg(std::env::current_exe()?)
            .args(std::env::args_os().skip(1))
            .arg("--inside")
            .status()?;
        ensure!(status.success(), "the runner inside the namespace failed");
        return Ok(());
    }
    let root = cairn_benches::fresh_dir(&args.dir)?;
    let release = make_release(
        &root.join("release"),
        args.packages,
        args.release_mib,
        args.compressible,
    )?;
    let mut rows = Vec::new();
    for &relays in &args.relays {
        for &spokes in &args.spokes {
            eprintln!("fanout: {spokes} spokes, {relays} relays");
            let dir = root.join(format!("n{spokes}-r{relays}"));
            // A star has as many sites as the run has relays and spokes: one link per run.
            let star = match (&args.link, topology) {
                (Some(profile), Topology::Star) => {
                    let sites = (relays + spokes).to_string();
                    let mut more = vec!["--sites", &sites, "--site-rtt", &args.site_rtt];
                    if let Some(r) = &args.hub_rate {
                        more.extend(["--hub-rate", r.as_str()]);
                    }
                    Some(cairn_benches::instance::link_up_with(LINK, profile, &more)?)
                }
                _ => None,
            };
            let link_pid = star.as_ref().map(|p| p.0.id());
            let row = run(&cairn, &dir, spokes, relays, &release, &args, link_pid)?;
            drop(star);
            print_row(&row);
            rows.push(row);
            // Each run's instances hold a copy of the release per spoke.
            if !args.keep {
                let _ = fs::remove_dir_all(&dir);
            }
        }
    }
    fs::write(
        root.join("results.json"),
        serde_json::to_string_pretty(&rows)?,
    )?;
    let mut table = table(&rows);
    if args.compressible {
        table.push_str("\nPayloads 7/8 zeros (`--compressible`).\n");
    }
    fs::write(root.join("results.md"), &table)?;
    println!("\n{table}");
    if let Err(e) = draw_chart(&root.join("fanout.png"), &rows) {
        eprintln!("fanout: no chart: {e:#}");
    }
    Ok(())
}

/// Bytes the link has carried from the hub's side so far.
fn link_bytes_to_site() -> Result<u64> {
    let out = Command::new(sibling("cairn-link")?)
        .args(["stats", "--name", LINK])
        .output()?;
    let v: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    v["a_to_b"]["bytes"]
        .as_u64()
        .ok_or_else(|| anyhow!("no link counters"))
}

/// Bytes of each 4 KiB block of a `--compressible` payload that stay random.
const COMPRESSIBLE_RANDOM: usize = 512;

/// P wheels of about `mib / P` MiB each, incompressible unless `compressible`; their paths.
fn make_release(dir: &Path, packages: usize, mib: u64, compressible: bool) -> Result<Vec<PathBuf>> {
    fs::create_dir_all(dir)?;
    let each = ((mib << 20) / packages as u64) as usize;
    let mut out = Vec::new();
    let mut payload = vec![0u8; each];
    for i in 0..packages {
        let name = format!("fan-pkg-{i:03}");
        fill_bytes(1000 + i as u64, &mut payload);
        if compressible {
            for block in payload.chunks_mut(4096) {
                if let Some(rest) = block.get_mut(COMPRESSIBLE_RANDOM..) {
                    rest.fill(0);
                }
            }
        }
        let wheel = cairn_store::package::fixtures::wheel_with_payload(&name, "1.0", &[], &payload);
        let path = dir.join(format!("{}-1.0-py3-none-any.whl", name.replace('-', "_")));
        fs::write(&path, wheel)?;
        out.push(path);
    }
    Ok(out)
}

/// Where an instance listens and how the runner reaches it.
struct Place {
    /// Its namespace, if not the runner's.
    netns: Option<String>,
    /// The host others dial for QUIC.
    sync_host: String,
    /// The host its HTTP server listens on (the runner's way in).
    http_host: String,
}

impl Place {
    /// Site `k` of the run's topology (relays first, then spokes); `None`: the hub.
    fn of(topology: Topology, site: Option<usize>) -> Place {
        use cairn_benches::instance::{star_mgmt_addr, star_site_addr};
        match (topology, site) {
            (Topology::Star, Some(k)) => Place {
                netns: Some(format!("{LINK}-s{k}")),
                sync_host: star_site_addr(k).to_string(),
                http_host: star_mgmt_addr(star_site_addr(k)).to_string(),
            },
            (Topology::Star, None) => Place {
                netns: Some(format!("{LINK}-a")),
                sync_host: LINK_HUB.to_owned(),
                http_host: star_mgmt_addr(LINK_HUB.parse().expect("an address")).to_string(),
            },
            (Topology::Shared, None) => Place {
                netns: Some(format!("{LINK}-a")),
                sync_host: LINK_HUB.to_owned(),
                http_host: LINK_HUB.to_owned(),
            },
            (Topology::Loopback | Topology::Shared, _) => Place {
                netns: None,
                sync_host: "127.0.0.1".to_owned(),
                http_host: "127.0.0.1".to_owned(),
            },
        }
    }
}

/// `to` knows `of` as peer `name` at `place`, `port` (0: it never dials it).
fn add_peer(
    cairn: &Path,
    to: &Inst,
    name: &str,
    of: &Inst,
    place: &Place,
    port: u16,
) -> Result<()> {
    to.add_peer(
        cairn,
        name,
        &of.key,
        &format!("{}:{}", place.sync_host, port.max(1)),
    )
}

fn write_config(inst: &Inst, place: &Place, port: u16, replication: &str) -> Result<()> {
    inst.config(
        &format!("{}:{port}", place.sync_host),
        &format!("{}:0", place.http_host),
        replication,
    )
}

/// The pause between two rounds of asking the `pending` spokes for their root: 100 ms, longer
/// when many are pending, so the runner asks at most 100 times a second in all. Each question
/// is an HTTP connection, a token check and a feed summary in the spoke (0.12 ms of its CPU
/// during a release, 0.8 ms when it is otherwise idle): at 10 a second to each of 100 spokes
/// the runner took CPU from the run it measures (a 100-spoke run of 32 MiB at P2: 215.4 s
/// before, 195.2 s after). A spoke's time is then at most a second late, against minutes.
fn poll_interval(pending: usize) -> Duration {
    Duration::from_millis(100).max(Duration::from_millis(10) * pending as u32)
}

fn root_of(addr: &str, admin: &str) -> Result<String> {
    let v = api(addr, admin, "GET", &format!("feeds/{FEED}"))?;
    Ok(v["root"].as_str().unwrap_or_default().to_owned())
}

/// Whether the instance's replication has finished at least one run.
fn has_run(addr: &str, admin: &str) -> bool {
    api(addr, admin, "GET", "replications")
        .map(|v| v[0]["last_ended_ms"].is_u64())
        .unwrap_or(false)
}

/// Bytes the instance's replication log says it sent in runs that started at or after
/// `since`, and of those, bytes of packets QUIC declared lost and sent again.
fn sent_since(addr: &str, admin: &str, since: u64) -> (u64, u64) {
    api(addr, admin, "GET", "replication-log")
        .ok()
        .and_then(|v| v.as_array().cloned())
        .unwrap_or_default()
        .iter()
        .filter(|r| r["started_ms"].as_u64().unwrap_or(0) >= since)
        .fold((0, 0), |(sent, lost), r| {
            (
                sent + r["bytes_sent"].as_u64().unwrap_or(0),
                lost + r["lost_bytes"].as_u64().unwrap_or(0),
            )
        })
}

fn run(
    cairn: &Path,
    dir: &Path,
    spokes: usize,
    relays: usize,
    release: &[PathBuf],
    args: &Args,
    link_pid: Option<u32>,
) -> Result<Row> {
    let topology = args.topology();
    fs::create_dir_all(dir)?;
    // Instances are made on two threads: each is a few CLI calls that open a store.
    let names: Vec<String> = std::iter::once("hub".to_owned())
        .chain((0..relays).map(|j| format!("relay{j}")))
        .chain((0..spokes).map(|i| format!("spoke{i}")))
        .collect();
    let made: Vec<Result<Inst>> = std::thread::scope(|s| {
        let halves: Vec<_> = [0, 1]
            .iter()
            .map(|&half| {
                let names = &names;
                s.spawn(move || {
                    names
                        .iter()
                        .enumerate()
                        .filter(|(i, _)| i % 2 == half)
                        .map(|(i, n)| (i, Inst::init(cairn, &dir.join(n), FEED, "pypi")))
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        let mut all: Vec<(usize, Result<Inst>)> = halves
            .into_iter()
            .flat_map(|h| h.join().unwrap_or_default())
            .collect();
        all.sort_by_key(|(i, _)| *i);
        all.into_iter().map(|(_, r)| r).collect()
    });
    ensure!(made.len() == names.len(), "an instance thread failed");
    let mut made = made.into_iter().collect::<Result<Vec<_>>>()?;
    let spoke_insts: Vec<Inst> = made.split_off(1 + relays);
    let relay_insts: Vec<Inst> = made.split_off(1);
    let hub = made.pop().ok_or_else(|| anyhow!("no hub"))?;

    // Behind a link the hub is alone in its namespace, on a fixed port; so is each site of a
    // star.
    let hub_place = Place::of(topology, None);
    let relay_places: Vec<Place> = (0..relays).map(|j| Place::of(topology, Some(j))).collect();
    let spoke_places: Vec<Place> = (0..spokes)
        .map(|i| Place::of(topology, Some(relays + i)))
        .collect();
    let hub_port = match topology {
        Topology::Loopback => free_udp_port()?,
        Topology::Shared | Topology::Star => 7443,
    };
    let relay_ports: Vec<u16> = (0..relays)
        .map(|_| match topology {
            Topology::Star => Ok(7443),
            Topology::Loopback | Topology::Shared => free_udp_port(),
        })
        .collect::<Result<_>>()?;
    let hub_addr = format!("{}:{hub_port}", hub_place.sync_host);
    let hub_token = hub.cli(cairn, &["token", "create", "--scope", "replicate:rel"])?;
    write_config(&hub, &hub_place, hub_port, "")?;
    for (j, r) in relay_insts.iter().enumerate() {
        add_peer(cairn, &hub, &format!("relay{j}"), r, &relay_places[j], 0)?;
        r.add_peer(cairn, "hub", &hub.key, &hub_addr)?;
        r.cli(cairn, &["trust", "add", &hub.key, "--feed", FEED])?;
        write_config(
            r,
            &relay_places[j],
            relay_ports[j],
            &format!("[[replication]]\nname = \"up\"\npeer = \"hub\"\ntoken = \"{hub_token}\"\nfeeds = [\"{FEED}\"]\nmode = \"pull\"\ninterval_secs = 3600\n"),
        )?;
    }
    let relay_tokens: Vec<String> = relay_insts
        .iter()
        .map(|r| r.cli(cairn, &["token", "create", "--scope", "replicate:rel"]))
        .collect::<Result<_>>()?;
    for (i, s) in spoke_insts.iter().enumerate() {
        add_peer(cairn, &hub, &format!("spoke{i}"), s, &spoke_places[i], 0)?;
        s.add_peer(cairn, "hub", &hub.key, &hub_addr)?;
        s.cli(cairn, &["trust", "add", &hub.key, "--feed", FEED])?;
        let upstream = if relays > 0 {
            let j = i % relays;
            add_peer(
                cairn,
                &relay_insts[j],
                &format!("spoke{i}"),
                s,
                &spoke_places[i],
                0,
            )?;
            add_peer(
                cairn,
                s,
                "relay",
                &relay_insts[j],
                &relay_places[j],
                relay_ports[j],
            )?;
            format!(
                "peer = [\"relay\", \"hub\"]\ntoken = \"{}\"\ntokens = {{ hub = \"{hub_token}\" }}\n",
                relay_tokens[j]
            )
        } else {
            format!("peer = \"hub\"\ntoken = \"{hub_token}\"\n")
        };
        write_config(
            s,
            &spoke_places[i],
            match topology {
                Topology::Star => 7443,
                Topology::Loopback | Topology::Shared => 0,
            },
            &format!("[[replication]]\nname = \"up\"\n{upstream}feeds = [\"{FEED}\"]\nmode = \"pull\"\ninterval_secs = 3600\n"),
        )?;
    }

    let hub_run = hub.serve(cairn, hub_place.netns.as_deref())?;
    let relay_runs: Vec<Running> = relay_insts
        .iter()
        .zip(&relay_places)
        .map(|(r, p)| r.serve(cairn, p.netns.as_deref()))
        .collect::<Result<_>>()?;
    // Every downstream connected once, with nothing to pull yet, before the start figures.
    let wait_for_first_runs = |runs: &[Running], insts: &[Inst]| -> Result<()> {
        let deadline = Instant::now() + Duration::from_secs(300);
        for (r, inst) in runs.iter().zip(insts) {
            while !has_run(&r.http, &inst.admin) {
                ensure!(
                    Instant::now() < deadline,
                    "{} never ran",
                    inst.dir.display()
                );
                std::thread::sleep(Duration::from_millis(200));
            }
        }
        Ok(())
    };
    wait_for_first_runs(&relay_runs, &relay_insts)?;
    std::thread::sleep(Duration::from_secs(1));
    let hub_pid = hub_run.pid();
    let relay_pids: Vec<u32> = relay_runs.iter().map(Running::pid).collect();
    let mut hub_fig = Figures {
        rss_start: rss_bytes(hub_pid).0,
        downstreams: if relays > 0 { relays } else { spokes },
        ..Figures::default()
    };
    let mut relay_figs: Vec<Figures> = vec![Figures::default(); relays];
    let mut spoke_runs = Vec::new();
    for (j, r) in relay_pids.iter().enumerate() {
        relay_figs[j].rss_start = rss_bytes(*r).0;
        relay_figs[j].downstreams = (0..spokes).filter(|i| i % relays == j).count();
    }
    for (s, p) in spoke_insts.iter().zip(&spoke_places) {
        spoke_runs.push(s.serve(cairn, p.netns.as_deref())?);
    }
    wait_for_first_runs(&spoke_runs, &spoke_insts)?;
    std::thread::sleep(Duration::from_secs(2));

    let cpu0 = cpu_seconds(hub_pid);
    let spoke_pids: Vec<u32> = spoke_runs.iter().map(Running::pid).collect();
    let spokes_cpu0: f64 = spoke_pids.iter().map(|p| cpu_seconds(*p)).sum();
    let link_cpu0 = link_pid.map(cpu_seconds);
    let relay_cpu0: Vec<f64> = relay_pids.iter().map(|p| cpu_seconds(*p)).collect();
    let link_before = match args.link {
        Some(_) => Some(link_bytes_to_site()?),
        None => None,
    };
    let since = unix_ms();
    let start = Instant::now();
    let mut push = Command::new(cairn);
    push.arg("--data-dir")
        .arg(&hub.dir)
        .args(["push", FEED])
        .args(release);
    let out = push.output()?;
    ensure!(
        out.status.success(),
        "push: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let pushed = start.elapsed();
    let hub_root = root_of(&hub_run.http, &hub.admin)?;
    eprintln!(
        "fanout: release pushed in {:.1} s; waiting for {spokes} spokes",
        pushed.as_secs_f64()
    );
    let mut done: BTreeMap<usize, f64> = BTreeMap::new();
    let deadline = start + Duration::from_secs(args.timeout_secs);
    while done.len() < spokes {
        if Instant::now() > deadline {
            bail!(
                "{} of {spokes} spokes converged within {} s",
                done.len(),
                args.timeout_secs
            );
        }
        for (i, (r, inst)) in spoke_runs.iter().zip(&spoke_insts).enumerate() {
            if done.contains_key(&i) {
                continue;
            }
            if root_of(&r.http, &inst.admin).is_ok_and(|root| root == hub_root) {
                done.insert(i, start.elapsed().as_secs_f64());
            }
        }
        std::thread::sleep(poll_interval(spokes - done.len()));
    }
    let converged = start.elapsed().as_secs_f64();
    let link_bytes = match link_before {
        Some(before) => Some(link_bytes_to_site()?.saturating_sub(before)),
        None => None,
    };
    hub_fig.cpu_secs = cpu_seconds(hub_pid) - cpu0;
    let spokes_cpu_secs = spoke_pids.iter().map(|p| cpu_seconds(*p)).sum::<f64>() - spokes_cpu0;
    let link_cpu_secs = link_pid.zip(link_cpu0).map(|(p, c0)| cpu_seconds(p) - c0);
    for (j, p) in relay_pids.iter().enumerate() {
        relay_figs[j].cpu_secs = cpu_seconds(*p) - relay_cpu0[j];
    }
    std::thread::sleep(Duration::from_secs(15));
    (hub_fig.rss_idle, hub_fig.rss_peak) = rss_bytes(hub_pid);
    (hub_fig.bytes_sent, hub_fig.lost_bytes) = sent_since(&hub_run.http, &hub.admin, since);
    for (j, p) in relay_pids.iter().enumerate() {
        (relay_figs[j].rss_idle, relay_figs[j].rss_peak) = rss_bytes(*p);
        (relay_figs[j].bytes_sent, relay_figs[j].lost_bytes) =
            sent_since(&relay_runs[j].http, &relay_insts[j].admin, since);
    }
    let mut verified = 0;
    for (r, inst) in spoke_runs.iter().zip(&spoke_insts) {
        let report = api(&r.http, &inst.admin, "POST", "verify")?;
        if report["problems"].as_array().is_some_and(|p| p.is_empty()) {
            verified += 1;
        }
    }
    let mut times: Vec<f64> = done.values().copied().collect();
    times.sort_by(f64::total_cmp);
    let release_bytes = release
        .iter()
        .map(|p| fs::metadata(p).map_or(0, |m| m.len()))
        .sum();
    drop(spoke_runs);
    drop(relay_runs);
    drop(hub_run);
    Ok(Row {
        spokes,
        relays,
        release_bytes,
        converged_secs: converged,
        median_spoke_secs: times[times.len() / 2],
        verified,
        hub: hub_fig,
        relay: relay_figs,
        link_bytes,
        spokes_cpu_secs,
        link_cpu_secs,
        compressible: args.compressible,
    })
}

fn mib(b: u64) -> f64 {
    b as f64 / (1u64 << 20) as f64
}

fn print_row(r: &Row) {
    let t = table(std::slice::from_ref(r));
    eprintln!("fanout: {}", t.lines().last().unwrap_or_default());
}

fn table(rows: &[Row]) -> String {
    let mut t = String::from(
        "| spokes | relays | release | all converged | median spoke | verified | hub CPU | hub peak RSS | hub idle RSS (per downstream) | hub sent (lost and sent again) | on the link | relays: CPU, peak RSS, sent (each, max) | spokes' CPU (all) | link emulator CPU |\n| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |\n",
    );
    for r in rows {
        let relays = if r.relay.is_empty() {
            "-".to_owned()
        } else {
            let max = |f: &dyn Fn(&Figures) -> f64| r.relay.iter().map(f).fold(0.0f64, f64::max);
            format!(
                "{:.1} s, {:.0} MiB, {:.0} MiB",
                max(&|f| f.cpu_secs),
                max(&|f| mib(f.rss_peak)),
                max(&|f| mib(f.bytes_sent))
            )
        };
        t.push_str(&format!(
            "| {} | {} | {:.0} MiB | {:.1} s | {:.1} s | {}/{} | {:.1} s | {:.0} MiB | {:.0} MiB ({:.2} MiB) | {:.0} MiB ({:.1} MiB) | {} | {} | {:.1} s | {} |\n",
            r.spokes,
            r.relays,
            mib(r.release_bytes),
            r.converged_secs,
            r.median_spoke_secs,
            r.verified,
            r.spokes,
            r.hub.cpu_secs,
            mib(r.hub.rss_peak),
            mib(r.hub.rss_idle),
            mib(r.hub.idle_per_downstream()),
            mib(r.hub.bytes_sent),
            mib(r.hub.lost_bytes),
            r.link_bytes
                .map_or("-".to_owned(), |b| format!("{:.0} MiB", mib(b))),
            relays,
            r.spokes_cpu_secs,
            r.link_cpu_secs
                .map_or("-".to_owned(), |c| format!("{c:.1} s"))
        ));
    }
    t
}

/// The hub's peak RSS and CPU seconds against the number of spokes, one line per relay count.
fn draw_chart(path: &Path, rows: &[Row]) -> Result<()> {
    use plotters::prelude::*;
    cairn_benches::register_font()?;
    let root = BitMapBackend::new(path, (1000, 420)).into_drawing_area();
    root.fill(&WHITE)?;
    let (left, right) = root.split_horizontally(500);
    let max_n = rows.iter().map(|r| r.spokes).max().unwrap_or(1) as f64;
    let relay_counts: std::collections::BTreeSet<usize> = rows.iter().map(|r| r.relays).collect();
    let rss: fn(&Row) -> f64 = |r| mib(r.hub.rss_peak);
    let cpu: fn(&Row) -> f64 = |r| r.hub.cpu_secs;
    let panels = [
        (&left, "hub peak RSS (MiB)", rss),
        (&right, "hub CPU seconds", cpu),
    ];
    for (area, title, value) in panels {
        let max_y = rows.iter().map(value).fold(1.0f64, f64::max) * 1.15;
        let mut chart = ChartBuilder::on(area)
            .caption(title, ("sans-serif", 18))
            .margin(12)
            .x_label_area_size(36)
            .y_label_area_size(56)
            .build_cartesian_2d(0.0..max_n * 1.05, 0.0..max_y)?;
        chart
            .configure_mesh()
            .x_desc("spokes")
            .label_style(("sans-serif", 13))
            .draw()?;
        for (k, relays) in relay_counts.iter().enumerate() {
            let color = Palette99::pick(k).to_rgba();
            let points: Vec<(f64, f64)> = rows
                .iter()
                .filter(|r| r.relays == *relays)
                .map(|r| (r.spokes as f64, value(r)))
                .collect();
            chart
                .draw_series(LineSeries::new(points.clone(), color.stroke_width(2)))?
                .label(if *relays == 0 {
                    "direct".to_owned()
                } else {
                    format!("{relays} relays")
                })
                .legend(move |(x, y)| PathElement::new([(x, y), (x + 16, y)], color));
            chart.draw_series(points.iter().map(|p| Circle::new(*p, 3, color.filled())))?;
        }
        chart
            .configure_series_labels()
            .border_style(BLACK)
            .background_style(WHITE)
            .label_font(("sans-serif", 13))
            .draw()?;
    }
    root.present()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_runner_asks_at_most_a_hundred_times_a_second() {
        assert_eq!(poll_interval(0), Duration::from_millis(100));
        assert_eq!(poll_interval(10), Duration::from_millis(100));
        assert_eq!(poll_interval(30), Duration::from_millis(300));
        assert_eq!(poll_interval(100), Duration::from_secs(1));
        for pending in 1..=200 {
            // pending / interval <= 100 per second, in whole milliseconds.
            let ms = poll_interval(pending).as_millis();
            assert!(
                pending as u128 * 1000 <= 100 * ms,
                "{pending} pending every {ms} ms"
            );
        }
    }
}
