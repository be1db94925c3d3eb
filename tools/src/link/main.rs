//! `cairn-link`: a WAN link between two network namespaces, emulated in user space.
//!
//! `cairn-link up` creates the namespaces `<name>-a` (10.77.0.1) and `<name>-b` (10.77.0.2),
//! each with one TUN device, and bridges the two devices through a [`shaper::Shaper`] per
//! direction: rate with a bounded queue, one-way delay, jitter that keeps order, seeded
//! Bernoulli or Gilbert-Elliott loss, and partitions on demand. It carries anything IP (TCP,
//! UDP, ICMP). Programs run on either side with `ip netns exec <name>-a ...`.
//!
//! The namespaces go away when it exits (Ctrl-C, SIGTERM, or `cairn-link down`); it refuses to
//! start over namespaces left by a crashed run unless given `--replace`.

mod shaper;
mod star;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use clap::{Parser, Subcommand};
use serde::Serialize;
use shaper::{Loss, Nanos, Profile, Shaper, Verdict};

const ADDR_A: Ipv4Addr = Ipv4Addr::new(10, 77, 0, 1);
const ADDR_B: Ipv4Addr = Ipv4Addr::new(10, 77, 0, 2);
const MTU: usize = 1500;

#[derive(Parser, Debug)]
#[command(
    name = "cairn-link",
    about = "An emulated WAN link between two network namespaces"
)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(clap::Args, Debug, Clone)]
struct LinkArgs {
    /// Prefix of the namespaces (`NAME-a`, `NAME-b`) and devices.
    #[arg(long, default_value = "cairn")]
    name: String,
    /// A named profile: P1 (100 Mbit/s, 150 ms, no loss), P2 (200 Mbit/s, 200 ms, 0.1%),
    /// P3 (20 Mbit/s, 300 ms, 1% bursty). Other options override its parts.
    #[arg(long)]
    profile: Option<String>,
    /// Rate each way, e.g. 100mbit, 20mbit, 1gbit (0 = unlimited).
    #[arg(long)]
    rate: Option<String>,
    /// Round-trip time, e.g. 150ms (half each way).
    #[arg(long)]
    rtt: Option<String>,
    /// Jitter added to each direction's delay, e.g. 2ms (order is kept).
    #[arg(long)]
    jitter: Option<String>,
    /// Independent loss, e.g. 0.1%.
    #[arg(long)]
    loss: Option<String>,
    /// Bursty (Gilbert-Elliott) loss RATE:BURST, e.g. 1%:4 (mean burst of 4 packets).
    #[arg(long)]
    bursty_loss: Option<String>,
    /// Queue per direction as a multiple of the bandwidth-delay product.
    #[arg(long, default_value_t = 1.0)]
    queue_bdp: f64,
    /// Seed of the loss and jitter draws.
    #[arg(long, default_value_t = 1)]
    seed: u64,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Create the namespaces and run the link until Ctrl-C, SIGTERM or `down`.
    Up {
        #[command(flatten)]
        link: LinkArgs,
        /// Append one JSON line of counters per second to this file.
        #[arg(long)]
        samples: Option<PathBuf>,
        /// Remove namespaces of the same name left by an earlier run first.
        #[arg(long)]
        replace: bool,
        /// A star instead of a pair: the hub in `NAME-a` (10.77.0.1) and this many sites in
        /// `NAME-s0`, `NAME-s1`, ... (10.77.1.1, 10.77.1.2, ...: site i is
        /// 10.77.(1 + i/250).(1 + i%250)), each behind an access leg of its own with the
        /// profile's rate. The hub's leg carries the rest of the round trip, the loss and the
        /// jitter; sites reach each other in `--site-rtt`. Every namespace also gets an
        /// unshaped management address, the same host part in 10.78.0.0/16, on a bridge
        /// `NAME-br` that the initial namespace reaches at 10.78.0.254.
        #[arg(long, default_value_t = 0)]
        sites: usize,
        /// With `--sites`: the round trip between two sites of the star.
        #[arg(long, default_value = "10ms")]
        site_rtt: String,
        /// With `--sites`: the rate of the hub's own leg (default unlimited).
        #[arg(long)]
        hub_rate: Option<String>,
    },
    /// Drop everything on the running link until `heal` (also: SIGUSR1 to `up`).
    Partition {
        #[arg(long, default_value = "cairn")]
        name: String,
    },
    /// End a partition (also: SIGUSR2 to `up`).
    Heal {
        #[arg(long, default_value = "cairn")]
        name: String,
    },
    /// Print the running link's counters as JSON.
    Stats {
        #[arg(long, default_value = "cairn")]
        name: String,
    },
    /// Stop the running link.
    Down {
        #[arg(long, default_value = "cairn")]
        name: String,
    },
    /// Bring a link up, measure its RTT, TCP throughput and loss, compare them with the
    /// configuration, and take it down. Exits 1 when a figure is off by more than 5%.
    Check {
        #[command(flatten)]
        link: LinkArgs,
        /// Seconds of bulk TCP transfer.
        #[arg(long, default_value_t = 10)]
        seconds: u64,
        #[arg(long)]
        replace: bool,
    },
    /// Measuring helpers run inside a namespace by `check`.
    #[command(hide = true)]
    Probe {
        #[command(subcommand)]
        probe: Probe,
    },
}

#[derive(Subcommand, Debug)]
enum Probe {
    /// Accept TCP connections: discard what arrives, printing bytes per 100 ms; answer UDP
    /// datagrams with a count when asked.
    Sink { port: u16 },
    /// Median TCP connect time to ADDR over COUNT connections, in microseconds.
    Connect { addr: SocketAddr, count: u32 },
    /// Send as fast as TCP allows to ADDR for SECONDS.
    Bulk { addr: SocketAddr, seconds: u64 },
    /// Send COUNT UDP datagrams to ADDR at RATE packets per second, then ask how many arrived.
    Udp {
        addr: SocketAddr,
        count: u32,
        rate: u32,
    },
}

fn parse_duration(s: &str) -> Result<Nanos> {
    let s = s.trim();
    let (num, mult) = if let Some(n) = s.strip_suffix("us") {
        (n, 1_000.0)
    } else if let Some(n) = s.strip_suffix("ms") {
        (n, 1_000_000.0)
    } else if let Some(n) = s.strip_suffix('s') {
        (n, 1_000_000_000.0)
    } else {
        bail!("`{s}`: give a unit, e.g. 150ms");
    };
    let v: f64 = num
        .parse()
        .map_err(|_| anyhow!("`{s}` is not a duration"))?;
    if !(0.0..=60_000.0).contains(&(v * mult / 1e6)) {
        bail!("`{s}` is out of range");
    }
    Ok((v * mult) as Nanos)
}

fn parse_rate(s: &str) -> Result<u64> {
    let l = s.trim().to_ascii_lowercase();
    let (num, mult) = if let Some(n) = l.strip_suffix("gbit") {
        (n, 1e9)
    } else if let Some(n) = l.strip_suffix("mbit") {
        (n, 1e6)
    } else if let Some(n) = l.strip_suffix("kbit") {
        (n, 1e3)
    } else if let Some(n) = l.strip_suffix("bit") {
        (n, 1.0)
    } else {
        bail!("`{s}`: give a unit, e.g. 100mbit");
    };
    let v: f64 = num.parse().map_err(|_| anyhow!("`{s}` is not a rate"))?;
    if !(0.0..=100e9).contains(&(v * mult)) {
        bail!("`{s}` is out of range");
    }
    Ok((v * mult) as u64)
}

fn parse_share(s: &str) -> Result<f64> {
    let t = s.trim();
    let v: f64 = match t.strip_suffix('%') {
        Some(n) => n.parse::<f64>().map(|v| v / 100.0),
        None => t.parse::<f64>(),
    }
    .map_err(|_| anyhow!("`{s}` is not a share (e.g. 0.1%)"))?;
    if !(0.0..=1.0).contains(&v) {
        bail!("`{s}` is not between 0 and 100%");
    }
    Ok(v)
}

/// The settings of both directions (they are symmetric).
#[derive(Clone, Copy, Debug, Serialize)]
struct Settings {
    rate_bps: u64,
    rtt_ns: Nanos,
    jitter_ns: Nanos,
    queue_bytes: u64,
    #[serde(skip)]
    loss: Loss,
    loss_mean: f64,
    seed: u64,
}

impl LinkArgs {
    fn settings(&self) -> Result<Settings> {
        let (mut rate, mut rtt, mut loss) = match self.profile.as_deref().map(str::to_uppercase) {
            None => (0, 0, Loss::None),
            Some(p) if p == "P1" => (100_000_000, 150_000_000, Loss::None),
            Some(p) if p == "P2" => (200_000_000, 200_000_000, Loss::Bernoulli { p: 0.001 }),
            Some(p) if p == "P3" => (20_000_000, 300_000_000, Loss::bursty(0.01, 4.0)),
            Some(p) => bail!("unknown profile `{p}`: P1, P2 or P3"),
        };
        if let Some(r) = &self.rate {
            rate = parse_rate(r)?;
        }
        if let Some(r) = &self.rtt {
            rtt = parse_duration(r)?;
        }
        if let Some(l) = &self.loss {
            loss = Loss::Bernoulli { p: parse_share(l)? };
        }
        if let Some(b) = &self.bursty_loss {
            let (r, burst) = b
                .split_once(':')
                .ok_or_else(|| anyhow!("--bursty-loss is RATE:BURST, e.g. 1%:4"))?;
            let burst: f64 = burst
                .parse()
                .map_err(|_| anyhow!("`{burst}` is not a burst length"))?;
            loss = Loss::bursty(parse_share(r)?, burst);
        }
        let jitter = self
            .jitter
            .as_deref()
            .map(parse_duration)
            .transpose()?
            .unwrap_or(0);
        let bdp = (rate as f64 / 8.0 * rtt as f64 / 1e9 * self.queue_bdp) as u64;
        Ok(Settings {
            rate_bps: rate,
            rtt_ns: rtt,
            jitter_ns: jitter,
            queue_bytes: bdp.max(64 * MTU as u64),
            loss,
            loss_mean: loss.mean(),
            seed: self.seed,
        })
    }
}

impl Settings {
    fn profile(&self) -> Profile {
        Profile {
            rate_bps: self.rate_bps,
            delay: self.rtt_ns / 2,
            jitter: self.jitter_ns,
            queue_bytes: self.queue_bytes,
            loss: self.loss,
        }
    }

    fn describe(&self) -> String {
        format!(
            "{} each way, {} ms RTT, jitter {} ms, queue {} KiB, loss {:.3}%",
            if self.rate_bps == 0 {
                "unlimited".to_string()
            } else {
                format!("{} Mbit/s", self.rate_bps as f64 / 1e6)
            },
            self.rtt_ns as f64 / 1e6,
            self.jitter_ns as f64 / 1e6,
            self.queue_bytes / 1024,
            self.loss_mean * 100.0
        )
    }
}

fn ns_names(name: &str) -> [String; 2] {
    [format!("{name}-a"), format!("{name}-b")]
}

/// The namespaces of a star's sites that exist now (`NAME-s<i>`).
fn site_namespaces(name: &str) -> Vec<String> {
    let prefix = format!("{name}-s");
    std::fs::read_dir("/run/netns")
        .map(|d| {
            d.flatten()
                .filter_map(|e| e.file_name().into_string().ok())
                .filter(|n| {
                    n.strip_prefix(&prefix)
                        .is_some_and(|i| !i.is_empty() && i.bytes().all(|b| b.is_ascii_digit()))
                })
                .collect()
        })
        .unwrap_or_default()
}

fn bridge_name(name: &str) -> String {
    format!("{name}-br")
}

fn device_exists(dev: &str) -> bool {
    Path::new("/sys/class/net").join(dev).exists()
}

fn control_path(name: &str) -> PathBuf {
    PathBuf::from(format!("/run/cairn-link-{name}.sock"))
}

fn ip(args: &[&str]) -> Result<()> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .with_context(|| "running `ip` (iproute2)".to_string())?;
    if !out.status.success() {
        bail!(
            "`ip {}` failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

fn ns_exists(ns: &str) -> bool {
    Path::new("/run/netns").join(ns).exists()
}

fn remove_namespaces(name: &str) {
    for ns in ns_names(name).into_iter().chain(site_namespaces(name)) {
        if ns_exists(&ns) {
            let _ = ip(&["netns", "del", &ns]);
        }
    }
    // A deleted namespace is freed by the kernel later; the host ends of a star's management
    // veths go now, so a star brought up straight after finds their names free.
    let veth = format!("{name}-m");
    if let Ok(dir) = std::fs::read_dir("/sys/class/net") {
        for dev in dir
            .flatten()
            .filter_map(|e| e.file_name().into_string().ok())
        {
            if dev.strip_prefix(&veth).is_some_and(|t| {
                t == "a" || (!t.is_empty() && t.bytes().all(|b| b.is_ascii_digit()))
            }) {
                let _ = ip(&["link", "del", &dev]);
            }
        }
    }
    if device_exists(&bridge_name(name)) {
        let _ = ip(&["link", "del", &bridge_name(name)]);
    }
    let _ = std::fs::remove_file(control_path(name));
}

/// Per-direction counters.
#[derive(Default, Debug)]
struct Counters {
    packets: AtomicU64,
    bytes: AtomicU64,
    drop_queue: AtomicU64,
    drop_loss: AtomicU64,
    drop_partition: AtomicU64,
}

#[derive(Serialize, Debug, Clone, Copy, Default, PartialEq)]
struct CounterSnapshot {
    packets: u64,
    bytes: u64,
    drop_queue: u64,
    drop_loss: u64,
    drop_partition: u64,
}

impl Counters {
    fn snapshot(&self) -> CounterSnapshot {
        CounterSnapshot {
            packets: self.packets.load(Relaxed),
            bytes: self.bytes.load(Relaxed),
            drop_queue: self.drop_queue.load(Relaxed),
            drop_loss: self.drop_loss.load(Relaxed),
            drop_partition: self.drop_partition.load(Relaxed),
        }
    }
}

/// The running link's counters. For a star, `a_to_b` and `b_to_a` are what the hub's leg
/// carried from the hub and to it.
#[derive(Serialize, Debug)]
struct Stats {
    partitioned: bool,
    a_to_b: CounterSnapshot,
    b_to_a: CounterSnapshot,
    #[serde(skip_serializing_if = "Option::is_none")]
    star: Option<StarStats>,
}

#[derive(Serialize, Debug)]
struct StarStats {
    sites: usize,
    /// Summed over the sites' legs, towards the sites.
    to_sites: CounterSnapshot,
    /// Packets to an address no leg owns.
    unroutable: u64,
}

enum Link {
    /// Two namespaces, a shaper each way.
    Pair {
        shapers: [Arc<Mutex<Shaper>>; 2],
        counters: [Arc<Counters>; 2],
    },
    Star {
        star: Arc<star::Star>,
        sites: usize,
    },
}

impl Link {
    fn set_partitioned(&self, on: bool) {
        match self {
            Link::Pair { shapers, .. } => {
                for s in shapers {
                    if let Ok(mut s) = s.lock() {
                        s.set_partitioned(on);
                    }
                }
            }
            Link::Star { star, .. } => star.set_partitioned(on),
        }
    }

    fn stats(&self) -> Stats {
        match self {
            Link::Pair { shapers, counters } => Stats {
                partitioned: shapers[0].lock().map(|s| s.partitioned()).unwrap_or(false),
                a_to_b: counters[0].snapshot(),
                b_to_a: counters[1].snapshot(),
                star: None,
            },
            Link::Star { star, sites } => {
                let (a_to_b, b_to_a) = star.hub_counters();
                let (to_sites, unroutable) = star.site_totals();
                Stats {
                    partitioned: star.partitioned(),
                    a_to_b,
                    b_to_a,
                    star: Some(StarStats {
                        sites: *sites,
                        to_sites,
                        unroutable,
                    }),
                }
            }
        }
    }
}

/// One direction: read from `from`, shape, and write to `to` when due.
fn bridge(
    from: Arc<tun_rs::SyncDevice>,
    to: Arc<tun_rs::SyncDevice>,
    shaper: Arc<Mutex<Shaper>>,
    counters: Arc<Counters>,
    epoch: Instant,
) {
    let (tx, rx) = mpsc::channel::<(Nanos, Vec<u8>)>();
    let drops = counters.clone();
    std::thread::spawn(move || {
        let mut buf = vec![0u8; 65_536];
        loop {
            let n = match from.recv(&mut buf) {
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(_) => return,
            };
            let now = epoch.elapsed().as_nanos() as Nanos;
            let verdict = match shaper.lock() {
                Ok(mut s) => s.offer(now, n),
                Err(_) => return,
            };
            match verdict {
                Verdict::Deliver(at) => {
                    if tx.send((at, buf[..n].to_vec())).is_err() {
                        return;
                    }
                }
                Verdict::Drop(shaper::Drop::Queue) => {
                    drops.drop_queue.fetch_add(1, Relaxed);
                }
                Verdict::Drop(shaper::Drop::Loss) => {
                    drops.drop_loss.fetch_add(1, Relaxed);
                }
                Verdict::Drop(shaper::Drop::Partition) => {
                    drops.drop_partition.fetch_add(1, Relaxed);
                }
            }
        }
    });
    std::thread::spawn(move || {
        // Delivery times never go down, so a FIFO is enough.
        while let Ok((at, packet)) = rx.recv() {
            let now = epoch.elapsed().as_nanos() as Nanos;
            if at > now {
                std::thread::sleep(Duration::from_nanos(at - now));
            }
            if to.send(&packet).is_ok() {
                counters.packets.fetch_add(1, Relaxed);
                counters.bytes.fetch_add(packet.len() as u64, Relaxed);
            }
        }
    });
}

fn setup_namespace(ns: &str, dev: &str, addr: Ipv4Addr, prefix: u8) -> Result<()> {
    ip(&["link", "set", "dev", dev, "netns", ns])?;
    ip(&["-n", ns, "link", "set", "lo", "up"])?;
    ip(&[
        "-n",
        ns,
        "addr",
        "add",
        &format!("{addr}/{prefix}"),
        "dev",
        dev,
    ])?;
    ip(&[
        "-n",
        ns,
        "link",
        "set",
        "dev",
        dev,
        "mtu",
        &MTU.to_string(),
        "up",
    ])?;
    ip(&["-n", ns, "link", "set", "dev", dev, "txqueuelen", "10000"])?;
    // Hosts tuned for long fat paths, as both sides of a benchmark run are: TCP may grow its
    // windows to 64 MiB and UDP sockets may ask for 64 MiB buffers. Best effort: some of these
    // are per-namespace only on newer kernels.
    for (k, v) in [
        ("net.ipv4.tcp_rmem", "4096 131072 67108864"),
        ("net.ipv4.tcp_wmem", "4096 65536 67108864"),
        ("net.core.rmem_max", "67108864"),
        ("net.core.wmem_max", "67108864"),
    ] {
        let _ = Command::new("ip")
            .args([
                "netns",
                "exec",
                ns,
                "sysctl",
                "-q",
                "-w",
                &format!("{k}={v}"),
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
    Ok(())
}

/// The star's own options (`up --sites`).
struct StarArgs {
    sites: usize,
    site_rtt: Nanos,
    hub_rate: u64,
}

fn up(
    args: &LinkArgs,
    samples: Option<&Path>,
    replace: bool,
    star_args: Option<StarArgs>,
) -> Result<()> {
    let settings = args.settings()?;
    let [ns_a, ns_b] = ns_names(&args.name);
    if !Path::new("/dev/net/tun").exists() {
        bail!("/dev/net/tun is missing: this needs TUN support (and root)");
    }
    if let Some(st) = &star_args {
        // Device names (`NAME-t<i>`, `NAME-m<i>`) must fit the kernel's 15 bytes.
        let longest = format!("{}-t{}", args.name, st.sites.saturating_sub(1));
        if st.sites == 0 || st.sites > star::MAX_SITES || longest.len() > 15 {
            bail!(
                "--sites must be 1 to {} and `{longest}` at most 15 bytes (use a shorter --name)",
                star::MAX_SITES
            );
        }
    }
    let left: Vec<String> = [&ns_a, &ns_b]
        .into_iter()
        .filter(|ns| ns_exists(ns))
        .cloned()
        .chain(site_namespaces(&args.name))
        .collect();
    for ns in &left {
        if replace {
            eprintln!("cairn-link: removing namespace {ns} left by an earlier run");
        } else {
            bail!(
                "namespace {ns} exists (from a run that did not clean up?); pass --replace to remove it"
            );
        }
    }
    if replace {
        remove_namespaces(&args.name);
    }
    // From here on, whatever happens, the namespaces are removed on the way out.
    struct Cleanup(String);
    impl std::ops::Drop for Cleanup {
        fn drop(&mut self) {
            remove_namespaces(&self.0);
        }
    }
    let _cleanup = Cleanup(args.name.clone());
    let make = |dev: &str| -> Result<Arc<tun_rs::SyncDevice>> {
        let d = tun_rs::DeviceBuilder::new()
            .name(dev)
            .mtu(MTU as u16)
            .build_sync()
            .with_context(|| format!("creating TUN device {dev}"))?;
        Ok(Arc::new(d))
    };
    let epoch = Instant::now();
    let (link, banner) = match star_args {
        None => {
            ip(&["netns", "add", &ns_a])?;
            ip(&["netns", "add", &ns_b])?;
            let dev_a = format!("{}-ta", args.name);
            let dev_b = format!("{}-tb", args.name);
            let (tun_a, tun_b) = (make(&dev_a)?, make(&dev_b)?);
            setup_namespace(&ns_a, &dev_a, ADDR_A, 24)?;
            setup_namespace(&ns_b, &dev_b, ADDR_B, 24)?;
            let profile = settings.profile();
            let shapers = [
                Arc::new(Mutex::new(Shaper::new(profile, settings.seed))),
                Arc::new(Mutex::new(Shaper::new(
                    profile,
                    settings.seed.wrapping_add(1),
                ))),
            ];
            let counters: [Arc<Counters>; 2] = [Arc::default(), Arc::default()];
            bridge(
                tun_a.clone(),
                tun_b.clone(),
                shapers[0].clone(),
                counters[0].clone(),
                epoch,
            );
            bridge(tun_b, tun_a, shapers[1].clone(), counters[1].clone(), epoch);
            (
                Link::Pair { shapers, counters },
                format!(
                    "{ns_a} {ADDR_A} <-> {ns_b} {ADDR_B}; {}",
                    settings.describe()
                ),
            )
        }
        Some(st) => {
            let (star, banner) = up_star(&args.name, &settings, &st, &make)?;
            (
                Link::Star {
                    star,
                    sites: st.sites,
                },
                banner,
            )
        }
    };
    let link = Arc::new(link);

    let stop = Arc::new(AtomicBool::new(false));
    if let Some(path) = samples {
        let mut file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .with_context(|| format!("opening {}", path.display()))?;
        let (link, stop) = (link.clone(), stop.clone());
        std::thread::spawn(move || {
            let mut next = epoch + Duration::from_secs(1);
            while !stop.load(Relaxed) {
                std::thread::sleep(next.saturating_duration_since(Instant::now()));
                let t = next.duration_since(epoch).as_secs();
                next += Duration::from_secs(1);
                let line = serde_json::json!({"t": t, "stats": link.stats()});
                if writeln!(file, "{line}").is_err() {
                    return;
                }
            }
        });
    }
    let sock_path = control_path(&args.name);
    let _ = std::fs::remove_file(&sock_path);
    let listener = UnixListener::bind(&sock_path)
        .with_context(|| format!("binding {}", sock_path.display()))?;
    {
        let (link, stop) = (link.clone(), stop.clone());
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let mut line = String::new();
                let mut reader = BufReader::new(&stream);
                if reader.read_line(&mut line).is_err() {
                    continue;
                }
                let reply = match line.trim() {
                    "partition" => {
                        link.set_partitioned(true);
                        "partitioned".to_string()
                    }
                    "heal" => {
                        link.set_partitioned(false);
                        "healed".to_string()
                    }
                    "stats" => serde_json::to_string(&link.stats()).unwrap_or_default(),
                    "down" => {
                        stop.store(true, Relaxed);
                        let _ = signal_hook::low_level::raise(signal_hook::consts::SIGTERM);
                        "stopping".to_string()
                    }
                    other => format!("error: unknown command `{other}`"),
                };
                let mut w = &stream;
                let _ = writeln!(w, "{reply}");
            }
        });
    }
    println!("cairn-link up: {banner}");
    let _ = std::io::stdout().flush();
    let mut signals = signal_hook::iterator::Signals::new([
        signal_hook::consts::SIGINT,
        signal_hook::consts::SIGTERM,
        signal_hook::consts::SIGHUP,
        signal_hook::consts::SIGUSR1,
        signal_hook::consts::SIGUSR2,
    ])?;
    for sig in signals.forever() {
        match sig {
            signal_hook::consts::SIGUSR1 => link.set_partitioned(true),
            signal_hook::consts::SIGUSR2 => link.set_partitioned(false),
            _ => break,
        }
    }
    stop.store(true, Relaxed);
    let stats = link.stats();
    eprintln!(
        "cairn-link down: {}",
        serde_json::to_string(&stats).unwrap_or_default()
    );
    Ok(())
}

/// Makes the star's namespaces, devices and management bridge and starts it; a line for the
/// banner.
fn up_star(
    name: &str,
    settings: &Settings,
    st: &StarArgs,
    make: &dyn Fn(&str) -> Result<Arc<tun_rs::SyncDevice>>,
) -> Result<(Arc<star::Star>, String)> {
    let bridge = bridge_name(name);
    ip(&["link", "add", &bridge, "type", "bridge"])?;
    ip(&["addr", "add", "10.78.0.254/16", "dev", &bridge])?;
    ip(&["link", "set", &bridge, "up"])?;
    // The hub's leg: the long haul. The sites' legs: their access rate and a short delay.
    let site_delay = st.site_rtt / 4;
    let hub_delay = (settings.rtt_ns / 2).saturating_sub(site_delay);
    let hub_queue = if st.hub_rate == 0 {
        settings.queue_bytes
    } else {
        ((st.hub_rate as f64 / 8.0 * settings.rtt_ns as f64 / 1e9) as u64).max(64 * MTU as u64)
    };
    let hub_profile = shaper::Profile {
        rate_bps: st.hub_rate,
        delay: hub_delay,
        jitter: settings.jitter_ns,
        queue_bytes: hub_queue,
        loss: settings.loss,
    };
    let site_profile = shaper::Profile {
        rate_bps: settings.rate_bps,
        delay: site_delay,
        jitter: 0,
        queue_bytes: settings.queue_bytes,
        loss: Loss::None,
    };
    let mut legs = Vec::with_capacity(st.sites + 1);
    let mut tuns = Vec::with_capacity(st.sites + 1);
    let members = std::iter::once((format!("{name}-a"), "a".to_owned(), star::HUB))
        .chain((0..st.sites).map(|i| (format!("{name}-s{i}"), i.to_string(), star::site_addr(i))));
    for (k, (ns, tag, addr)) in members.enumerate() {
        ip(&["netns", "add", &ns])?;
        let dev = format!("{name}-t{tag}");
        tuns.push(make(&dev)?);
        setup_namespace(&ns, &dev, addr, 16)?;
        let veth = format!("{name}-m{tag}");
        ip(&[
            "link", "add", &veth, "type", "veth", "peer", "name", "mgmt", "netns", &ns,
        ])?;
        ip(&["link", "set", &veth, "master", &bridge, "up"])?;
        let mgmt = format!("{}/16", star::mgmt_addr(addr));
        ip(&["-n", &ns, "addr", "add", &mgmt, "dev", "mgmt"])?;
        ip(&["-n", &ns, "link", "set", "mgmt", "up"])?;
        let profile = if k == 0 { hub_profile } else { site_profile };
        legs.push(star::Leg::new(
            profile,
            settings.seed.wrapping_add(2 * k as u64),
        ));
    }
    let banner = format!(
        "star {name}-a {} (hub) and {} sites {name}-s0.. from {}; each site {} Mbit/s, hub leg {}, {} ms RTT to the hub, {} ms between sites, loss {:.3}% on the hub leg; management 10.78.0.0/16 on {bridge}",
        star::HUB,
        st.sites,
        star::site_addr(0),
        settings.rate_bps as f64 / 1e6,
        if st.hub_rate == 0 {
            "unlimited".to_owned()
        } else {
            format!("{} Mbit/s", st.hub_rate as f64 / 1e6)
        },
        (hub_delay + site_delay) as f64 * 2.0 / 1e6,
        site_delay as f64 * 4.0 / 1e6,
        settings.loss_mean * 100.0
    );
    Ok((star::Star::start(legs, tuns), banner))
}

fn control(name: &str, command: &str) -> Result<String> {
    let path = control_path(name);
    let mut s = UnixStream::connect(&path)
        .with_context(|| format!("no link `{name}` is running ({})", path.display()))?;
    writeln!(s, "{command}")?;
    let mut reply = String::new();
    BufReader::new(s).read_line(&mut reply)?;
    Ok(reply.trim().to_string())
}

// ---------------------------------------------------------------------------------------------
// Probes, run inside the namespaces by `check`.

fn probe(p: Probe) -> Result<()> {
    match p {
        Probe::Sink { port } => {
            let udp = UdpSocket::bind(("0.0.0.0", port))?;
            std::thread::spawn(move || {
                let mut buf = [0u8; 2048];
                let mut count = 0u64;
                while let Ok((n, from)) = udp.recv_from(&mut buf) {
                    if &buf[..n] == b"count?" {
                        let _ = udp.send_to(count.to_string().as_bytes(), from);
                        count = 0;
                    } else {
                        count += 1;
                    }
                }
            });
            let listener = TcpListener::bind(("0.0.0.0", port))?;
            println!("ready");
            let _ = std::io::stdout().flush();
            for stream in listener.incoming().flatten() {
                std::thread::spawn(move || {
                    let mut stream = stream;
                    let mut buf = vec![0u8; 1 << 20];
                    let start = Instant::now();
                    let mut slot = 0u64;
                    let mut bytes = 0u64;
                    let mut report = Vec::new();
                    loop {
                        match stream.read(&mut buf) {
                            Ok(0) | Err(_) => break,
                            Ok(n) => {
                                let s = start.elapsed().as_millis() as u64 / 100;
                                while slot < s {
                                    report.push(bytes);
                                    bytes = 0;
                                    slot += 1;
                                }
                                bytes += n as u64;
                            }
                        }
                    }
                    if !report.is_empty() || bytes > 0 {
                        report.push(bytes);
                        let line: Vec<String> = report.iter().map(u64::to_string).collect();
                        println!("bulk {}", line.join(" "));
                        let _ = std::io::stdout().flush();
                    }
                });
            }
            Ok(())
        }
        Probe::Connect { addr, count } => {
            let mut times = Vec::new();
            for _ in 0..count {
                let t = Instant::now();
                let s = TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
                times.push(t.elapsed().as_micros() as u64);
                drop(s);
                std::thread::sleep(Duration::from_millis(20));
            }
            times.sort_unstable();
            println!("{}", times[times.len() / 2]);
            Ok(())
        }
        Probe::Bulk { addr, seconds } => {
            let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
            let buf = vec![0x5au8; 1 << 20];
            let end = Instant::now() + Duration::from_secs(seconds);
            while Instant::now() < end {
                s.write_all(&buf)?;
            }
            Ok(())
        }
        Probe::Udp { addr, count, rate } => {
            let sock = UdpSocket::bind("0.0.0.0:0")?;
            let payload = [0u8; 1200];
            let gap = Duration::from_secs_f64(1.0 / f64::from(rate.max(1)));
            let start = Instant::now();
            for i in 0..count {
                let due = start + gap * i;
                std::thread::sleep(due.saturating_duration_since(Instant::now()));
                sock.send_to(&payload, addr)?;
            }
            std::thread::sleep(Duration::from_secs(1));
            sock.set_read_timeout(Some(Duration::from_secs(2)))?;
            let mut buf = [0u8; 64];
            for _ in 0..5 {
                sock.send_to(b"count?", addr)?;
                if let Ok(n) = sock.recv(&mut buf) {
                    println!("{}", String::from_utf8_lossy(&buf[..n]));
                    return Ok(());
                }
            }
            bail!("the sink did not answer")
        }
    }
}

fn spawn_in(ns: &str, args: &[&str]) -> Result<Child> {
    let me = std::env::current_exe()?;
    Command::new("ip")
        .args(["netns", "exec", ns])
        .arg(me)
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .with_context(|| format!("starting a probe in {ns}"))
}

fn run_in(ns: &str, args: &[&str]) -> Result<String> {
    let out = spawn_in(ns, args)?.wait_with_output()?;
    if !out.status.success() {
        bail!("probe {} failed", args.join(" "));
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// A child killed on drop.
struct Guard(Child);

impl std::ops::Drop for Guard {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.0.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.0.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn start_link(args: &LinkArgs, extra: &[&str]) -> Result<Guard> {
    let me = std::env::current_exe()?;
    let mut cmd = Command::new(me);
    cmd.args(["up", "--name", &args.name, "--seed", &args.seed.to_string()]);
    cmd.args(["--queue-bdp", &args.queue_bdp.to_string()]);
    for (flag, v) in [
        ("--profile", &args.profile),
        ("--rate", &args.rate),
        ("--rtt", &args.rtt),
        ("--jitter", &args.jitter),
        ("--loss", &args.loss),
        ("--bursty-loss", &args.bursty_loss),
    ] {
        if let Some(v) = v {
            cmd.args([flag, v]);
        }
    }
    cmd.args(extra);
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()?;
    let mut line = String::new();
    let stdout = child.stdout.take().ok_or_else(|| anyhow!("no stdout"))?;
    BufReader::new(stdout).read_line(&mut line)?;
    if !line.starts_with("cairn-link up") {
        let _ = child.wait();
        bail!("the link did not come up");
    }
    Ok(Guard(child))
}

#[derive(Serialize, Debug)]
struct CheckReport {
    settings: String,
    rtt_configured_ms: f64,
    rtt_measured_ms: f64,
    rate_configured_mbit: f64,
    /// What the link delivered per second during the bulk transfer (median of the second
    /// half), IP packets included.
    rate_measured_mbit: f64,
    /// The most TCP payload the rate can carry: 1448 of every 1500 bytes (timestamps on).
    tcp_ceiling_mbit: f64,
    tcp_goodput_mbit: f64,
    loss_configured: f64,
    loss_measured: f64,
    ok: bool,
}

fn check(args: &LinkArgs, seconds: u64, replace: bool) -> Result<bool> {
    let settings = args.settings()?;
    let [ns_a, ns_b] = ns_names(&args.name);
    let port = "5001";
    // Phase 1: delay and rate, without loss (TCP over a lossy long path measures TCP's loss
    // response, not the link's rate).
    let mut lossless = args.clone();
    lossless.loss = Some("0%".into());
    lossless.bursty_loss = None;
    let mut extra = vec![];
    if replace {
        extra.push("--replace");
    }
    let link = start_link(&lossless, &extra)?;
    let mut sink = spawn_in(&ns_b, &["probe", "sink", port])?;
    let mut sink_out = BufReader::new(sink.stdout.take().ok_or_else(|| anyhow!("sink"))?);
    let mut line = String::new();
    sink_out.read_line(&mut line)?;
    let sink = Guard(sink);
    let to = format!("{ADDR_B}:{port}");
    let rtt_us: f64 = run_in(&ns_a, &["probe", "connect", &to, "20"])?.parse()?;
    // While TCP pushes, sample what the link delivers a -> b each second: the link's own rate,
    // whatever TCP's loss response does to the goodput.
    let stop = Arc::new(AtomicBool::new(false));
    let sampler = {
        let (stop, name) = (stop.clone(), args.name.clone());
        std::thread::spawn(move || {
            let mut per_second = Vec::new();
            let mut last: Option<u64> = None;
            while !stop.load(Relaxed) {
                let bytes = control(&name, "stats")
                    .ok()
                    .and_then(|r| serde_json::from_str::<serde_json::Value>(&r).ok())
                    .and_then(|v| v["a_to_b"]["bytes"].as_u64());
                if let (Some(b), Some(l)) = (bytes, last) {
                    per_second.push(b - l);
                }
                last = bytes;
                std::thread::sleep(Duration::from_secs(1));
            }
            per_second
        })
    };
    run_in(&ns_a, &["probe", "bulk", &to, &seconds.to_string()])?;
    stop.store(true, Relaxed);
    let per_second = sampler.join().unwrap_or_default();
    let mut steady: Vec<u64> = per_second[per_second.len() / 2..].to_vec();
    steady.sort_unstable();
    let link_bps = steady.get(steady.len() / 2).copied().unwrap_or(0) as f64 * 8.0;
    line.clear();
    sink_out.read_line(&mut line)?;
    let slots: Vec<u64> = line
        .trim()
        .strip_prefix("bulk ")
        .unwrap_or("")
        .split(' ')
        .filter_map(|w| w.parse().ok())
        .collect();
    // Steady state: the second half of the transfer, past slow start.
    let half = &slots[slots.len() / 2..slots.len().saturating_sub(1).max(slots.len() / 2)];
    let goodput_bps = if half.is_empty() {
        0.0
    } else {
        half.iter().sum::<u64>() as f64 * 8.0 / (half.len() as f64 * 0.1)
    };
    drop(sink);
    drop(link);
    // Phase 2: loss, with a paced UDP train well under the rate.
    let mut loss_packets = 0u32;
    let loss_measured = if settings.loss_mean > 0.0 {
        let link = start_link(args, &[])?;
        let mut sink = spawn_in(&ns_b, &["probe", "sink", port])?;
        let mut out = BufReader::new(sink.stdout.take().ok_or_else(|| anyhow!("sink"))?);
        let mut l = String::new();
        out.read_line(&mut l)?;
        let _sink = Guard(sink);
        // Half the link's rate in 1,228-byte packets (1,200 of payload), for at most 15 s.
        let pps = if settings.rate_bps == 0 {
            5_000
        } else {
            ((settings.rate_bps / 2) / (1228 * 8)).clamp(100, 5_000) as u32
        };
        let n = (pps * 15).min(50_000);
        loss_packets = n;
        let got: f64 = run_in(
            &ns_a,
            &["probe", "udp", &to, &n.to_string(), &pps.to_string()],
        )?
        .parse()?;
        drop(link);
        1.0 - got / f64::from(n)
    } else {
        0.0
    };
    let rtt_ms = rtt_us / 1000.0;
    let rtt_conf = settings.rtt_ns as f64 / 1e6;
    let ceiling = settings.rate_bps as f64 * 1448.0 / 1500.0;
    let within = |measured: f64, configured: f64| {
        configured == 0.0 || (measured - configured).abs() / configured <= 0.05
    };
    // Loss is a count of rare events: allow 5% of the rate plus three standard deviations of
    // the number of loss episodes (independent losses, or bursts of the Gilbert-Elliott model).
    let loss_ok = {
        let p = settings.loss_mean;
        let burst = match settings.loss {
            Loss::GilbertElliott { r, .. } if r > 0.0 => 1.0 / r,
            _ => 1.0,
        };
        let episodes = (loss_packets as f64 * p / burst).max(1.0);
        (loss_measured - p).abs() <= 0.05 * p + 3.0 * p / episodes.sqrt()
    };
    let report = CheckReport {
        settings: settings.describe(),
        rtt_configured_ms: rtt_conf,
        rtt_measured_ms: rtt_ms,
        rate_configured_mbit: settings.rate_bps as f64 / 1e6,
        rate_measured_mbit: link_bps / 1e6,
        tcp_ceiling_mbit: ceiling / 1e6,
        tcp_goodput_mbit: goodput_bps / 1e6,
        loss_configured: settings.loss_mean,
        loss_measured,
        ok: within(rtt_ms, rtt_conf) && within(link_bps, settings.rate_bps as f64) && loss_ok,
    };
    println!("{}", serde_json::to_string_pretty(&report)?);
    Ok(report.ok)
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Cmd::Up {
            link,
            samples,
            replace,
            sites,
            site_rtt,
            hub_rate,
        } => (|| {
            let star = match sites {
                0 => None,
                sites => Some(StarArgs {
                    sites,
                    site_rtt: parse_duration(&site_rtt)?,
                    hub_rate: hub_rate
                        .as_deref()
                        .map(parse_rate)
                        .transpose()?
                        .unwrap_or(0),
                }),
            };
            up(&link, samples.as_deref(), replace, star)
        })()
        .map(|_| true),
        Cmd::Partition { name } => control(&name, "partition").map(|r| {
            println!("{r}");
            true
        }),
        Cmd::Heal { name } => control(&name, "heal").map(|r| {
            println!("{r}");
            true
        }),
        Cmd::Stats { name } => control(&name, "stats").map(|r| {
            println!("{r}");
            true
        }),
        Cmd::Down { name } => control(&name, "down").map(|r| {
            println!("{r}");
            true
        }),
        Cmd::Check {
            link,
            seconds,
            replace,
        } => check(&link, seconds, replace),
        Cmd::Probe { probe: p } => probe(p).map(|_| true),
    };
    match result {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(1),
        Err(e) => {
            eprintln!("cairn-link: {e:#}");
            ExitCode::from(2)
        }
    }
}
