//! The WAN scenario runner: Cairn against rsync (daemon mode and over ssh) over the same
//! emulated link (`cairn-link`), one results table per run. Linux, as root.
//!
//! The hub (Cairn `serve`, the rsync daemon, sshd) runs in namespace `<link>-b` (10.77.0.2), the
//! spoke in `<link>-a` (10.77.0.1). Every figure comes from this run: time to consistency (wall
//! time of the client command), bytes each way as the link counted them, goodput (payload over
//! time, and the median of the per-second samples after slow start) as a share of the link
//! rate, client and server CPU seconds, client peak RSS, and for Cairn its round trips.
//!
//! `wan --profile P1 --scenarios cold-L,noop-T,incr-T` (see `--help`); `--quick` uses small
//! corpora and P1 only, for CI.

use std::collections::BTreeMap;
use std::fs;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, ensure, Context, Result};
use cairn_benches::{cpu_seconds, sibling};
use cairn_store::rng::Xorshift;
use cairn_store::{NewFile, NewPackage, Store, StoreOptions};
use clap::Parser;
use serde::Serialize;

#[derive(Parser, Debug)]
#[command(about = "Cairn against rsync over an emulated WAN link")]
struct Args {
    /// Link profile: P1, P2, P3.
    #[arg(long, default_value = "P1")]
    profile: String,
    /// Scenarios, comma-separated: cold-M, cold-L, noop-T, incr-T, resume-L, loss-L (the
    /// congestion controllers at 0, 0.1% and 1% loss), tune-L (flow-control windows).
    #[arg(long, value_delimiter = ',', default_values_t = vec!["cold-L".to_string(), "noop-T".to_string(), "incr-T".to_string()])]
    scenarios: Vec<String>,
    /// Tools, comma-separated: cairn, rsyncd, rsync-ssh.
    #[arg(long, value_delimiter = ',', default_values_t = vec!["cairn".to_string(), "rsyncd".to_string(), "rsync-ssh".to_string()])]
    tools: Vec<String>,
    /// Small corpora (M: 200 files, T: 1,000, L: 2 x 8 MiB), P1 only: a smoke test.
    #[arg(long)]
    quick: bool,
    /// Where corpora, instances and results go.
    #[arg(long, default_value = "bench-scratch/wan")]
    dir: PathBuf,
    /// Corpus seed.
    #[arg(long, default_value_t = 42)]
    seed: u64,
    /// QUIC congestion controller for Cairn (bbr, cubic, newreno) where the scenario does not
    /// set its own (loss-L runs all three).
    #[arg(long, default_value = "bbr")]
    congestion: String,
    /// Stop each run after this many seconds and report the goodput it reached (TCP, or a
    /// loss-based controller, on a lossy 300 ms link may need hours for a full corpus); such
    /// rows are marked capped. Meant for cold and loss scenarios.
    #[arg(long)]
    cap_secs: Option<u64>,
}

const LINK: &str = "cairnbench";

/// What a replica check says: consistent, round trips (Cairn), a note.
type Checked = Result<(bool, Option<u64>, String)>;
const HUB_ADDR: &str = "10.77.0.2";

// ---------------------------------------------------------------------------------------------
// Corpora

#[derive(Clone, Debug)]
struct Corpus {
    name: String,
    dir: PathBuf,
    /// Relative path, size, content seed.
    files: Vec<(String, u64, u64)>,
}

impl Corpus {
    fn bytes(&self) -> u64 {
        self.files.iter().map(|f| f.1).sum()
    }
}

/// Standard normal (Box-Muller).
fn normal(rng: &mut Xorshift) -> f64 {
    let (u, v) = (rng.unit().max(1e-12), rng.unit());
    (-2.0 * u.ln()).sqrt() * (2.0 * std::f64::consts::PI * v).cos()
}

fn corpus_spec(name: &str, quick: bool, seed: u64) -> Result<Vec<(String, u64, u64)>> {
    let mut rng = Xorshift::new(seed);
    let path = |i: usize| format!("d{:03}/f{i:06}.bin", i / 1000);
    let seed_of = |i: usize| seed.wrapping_mul(1_000_003).wrapping_add(i as u64);
    Ok(match name {
        // Log-normal, median 40 KiB, clamped to 1 KiB..10 MiB: about 2 GiB for 20,000 files.
        "M" => (0..if quick { 200 } else { 20_000 })
            .map(|i| {
                let size = (40_960.0 * (1.38 * normal(&mut rng)).exp()).clamp(1024.0, 10_485_760.0);
                (path(i), size as u64, seed_of(i))
            })
            .collect(),
        "T" => (0..if quick { 1_000 } else { 100_000 })
            .map(|i| (path(i), 1024 + (rng.unit() * 3072.0) as u64, seed_of(i)))
            .collect(),
        "L" => (0..if quick { 2 } else { 8 })
            .map(|i| (path(i), if quick { 8 << 20 } else { 128 << 20 }, seed_of(i)))
            .collect(),
        other => bail!("unknown corpus `{other}`"),
    })
}

fn write_file(path: &Path, size: u64, seed: u64) -> Result<()> {
    if let Some(p) = path.parent() {
        fs::create_dir_all(p)?;
    }
    let mut f = std::io::BufWriter::new(fs::File::create(path)?);
    let mut buf = vec![0u8; 1 << 16];
    let mut left = size;
    let mut s = seed;
    while left > 0 {
        let n = left.min(buf.len() as u64) as usize;
        cairn_benches::fill_bytes(s, &mut buf[..n]);
        s = s.wrapping_add(1);
        f.write_all(&buf[..n])?;
        left -= n as u64;
    }
    f.flush()?;
    Ok(())
}

fn make_corpus(root: &Path, name: &str, quick: bool, seed: u64) -> Result<Corpus> {
    let dir = root.join(format!("corpus-{name}"));
    let files = corpus_spec(name, quick, seed)?;
    let stamp = dir.join(".complete");
    if !stamp.exists() {
        if dir.exists() {
            fs::remove_dir_all(&dir)?;
        }
        eprintln!("wan: writing corpus {name} ({} files)", files.len());
        for (p, size, s) in &files {
            write_file(&dir.join(p), *size, *s)?;
        }
        fs::write(&stamp, b"")?;
    }
    Ok(Corpus {
        name: name.to_string(),
        dir,
        files,
    })
}

/// BLAKE3 over every regular file under `dir` (sorted by path, names and contents), skipping
/// dot-files: equal for two trees with the same files.
fn tree_digest(dir: &Path) -> Result<(u64, String)> {
    let mut paths = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in fs::read_dir(&d)? {
            let e = e?;
            let name = e.file_name().to_string_lossy().into_owned();
            if name.starts_with('.') {
                continue;
            }
            if e.file_type()?.is_dir() {
                stack.push(e.path());
            } else {
                paths.push(e.path());
            }
        }
    }
    paths.sort();
    let mut h = blake3::Hasher::new();
    for p in &paths {
        h.update(p.strip_prefix(dir)?.to_string_lossy().as_bytes());
        h.update(&[0]);
        h.update_reader(fs::File::open(p)?)?;
    }
    Ok((paths.len() as u64, h.finalize().to_hex().to_string()))
}

// ---------------------------------------------------------------------------------------------
// Processes

/// The children alive now (servers, clients, the link), oldest first: what the signal handler
/// stops when `wan` is interrupted.
static LIVE: std::sync::Mutex<Vec<u32>> = std::sync::Mutex::new(Vec::new());

fn track(pid: u32) {
    if let Ok(mut live) = LIVE.lock() {
        live.push(pid);
    }
}

fn untrack(pid: u32) {
    if let Ok(mut live) = LIVE.lock() {
        live.retain(|p| *p != pid);
    }
}

/// Whether `pid` is still running (a zombie is not).
fn running(pid: u32) -> bool {
    fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| {
            s.rsplit_once(')')
                .map(|(_, rest)| !rest.trim_start().starts_with('Z'))
        })
        .unwrap_or(false)
}

/// On SIGINT, SIGTERM or SIGHUP: stop every child, newest first (so the link, which removes
/// its namespaces when it stops, goes last), wait up to 10 s for them, then exit with 130.
fn stop_children_on_signal() -> Result<()> {
    use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
    let mut signals = signal_hook::iterator::Signals::new([SIGINT, SIGTERM, SIGHUP])?;
    std::thread::spawn(move || {
        let Some(sig) = signals.forever().next() else {
            return;
        };
        eprintln!("wan: signal {sig}: stopping the servers, clients and link it started");
        let pids: Vec<u32> = LIVE.lock().map(|l| l.clone()).unwrap_or_default();
        for pid in pids.iter().rev() {
            let _ = Command::new("kill")
                .args(["-TERM", &pid.to_string()])
                .stderr(Stdio::null())
                .status();
            let deadline = Instant::now() + Duration::from_secs(10);
            while running(*pid) && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(50));
            }
            if running(*pid) {
                let _ = Command::new("kill")
                    .args(["-KILL", &pid.to_string()])
                    .stderr(Stdio::null())
                    .status();
            }
        }
        std::process::exit(130);
    });
    Ok(())
}

/// A child stopped (SIGTERM, then SIGKILL) on drop.
struct Proc {
    child: Child,
}

impl Proc {
    fn new(child: Child) -> Proc {
        track(child.id());
        Proc { child }
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        untrack(self.child.id());
        cairn_benches::stop_child(&mut self.child, Duration::from_secs(10));
    }
}

fn ns_cmd(side: char, program: &Path) -> Command {
    let mut c = Command::new("ip");
    c.args(["netns", "exec", &format!("{LINK}-{side}")])
        .arg(program);
    c
}

/// Starts `cmd` and waits (at most 60 s) for a line of its stdout containing `ready`.
fn start_until(mut cmd: Command, ready: &str) -> Result<Proc> {
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .with_context(|| format!("starting {cmd:?}"))?;
    let stdout = child.stdout.take().ok_or_else(|| anyhow!("no stdout"))?;
    let (tx, rx) = std::sync::mpsc::channel();
    let ready = ready.to_string();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if line.contains(&ready) {
                let _ = tx.send(());
            }
        }
    });
    let proc = Proc::new(child);
    rx.recv_timeout(Duration::from_secs(60))
        .map_err(|_| anyhow!("{cmd:?} did not become ready"))?;
    Ok(proc)
}

#[derive(Debug, Default, Clone, Copy)]
struct Timed {
    wall: f64,
    cpu: f64,
    rss_mb: f64,
    code: i32,
}

/// Runs `cmd` under GNU time, stopped after `cap` seconds if given (exit code 124); returns its
/// stdout and the figures.
fn timed(
    side: char,
    program: &Path,
    args: &[&str],
    scratch: &Path,
    cap: Option<u64>,
) -> Result<(String, Timed)> {
    let tfile = scratch.join("time.txt");
    let mut c = Command::new("ip");
    c.args(["netns", "exec", &format!("{LINK}-{side}")])
        .args(["/usr/bin/time", "-f", "%e %U %S %M", "-o"])
        .arg(&tfile);
    if let Some(secs) = cap {
        c.args(["timeout", &secs.to_string()]);
    }
    c.arg(program).args(args);
    let child = c
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .with_context(|| format!("running {c:?}"))?;
    let pid = child.id();
    track(pid);
    let out = child.wait_with_output();
    untrack(pid);
    let out = out.with_context(|| format!("running {c:?}"))?;
    let text = fs::read_to_string(&tfile).unwrap_or_default();
    let last = text.lines().last().unwrap_or("");
    let v: Vec<f64> = last
        .split_whitespace()
        .filter_map(|w| w.parse().ok())
        .collect();
    let t = match v[..] {
        [e, u, s, m] => Timed {
            wall: e,
            cpu: u + s,
            rss_mb: m / 1024.0,
            code: out.status.code().unwrap_or(-1),
        },
        _ => Timed {
            code: out.status.code().unwrap_or(-1),
            ..Timed::default()
        },
    };
    Ok((String::from_utf8_lossy(&out.stdout).into_owned(), t))
}

// ---------------------------------------------------------------------------------------------
// The link

struct Link {
    _proc: Proc,
    samples: PathBuf,
    rate_bps: u64,
    started: Instant,
}

#[derive(Debug, Clone, Copy, Default)]
struct Bytes {
    a_to_b: u64,
    b_to_a: u64,
    /// Packets hub -> spoke the link's queue dropped (the sender outran the rate).
    queue_drops_b_to_a: u64,
}

impl Link {
    fn up(profile: &str, loss: Option<&str>, samples: PathBuf) -> Result<Link> {
        let mut cmd = Command::new(sibling("cairn-link")?);
        cmd.args(["up", "--name", LINK, "--replace", "--profile", profile])
            .arg("--samples")
            .arg(&samples);
        if let Some(l) = loss {
            cmd.args(["--loss", l]);
        }
        let _ = fs::remove_file(&samples);
        let proc = start_until(cmd, "cairn-link up")?;
        let rate_bps = match profile.to_uppercase().as_str() {
            "P1" => 100_000_000,
            "P2" => 200_000_000,
            "P3" => 20_000_000,
            other => bail!("unknown profile `{other}`"),
        };
        Ok(Link {
            _proc: proc,
            samples,
            rate_bps,
            started: Instant::now(),
        })
    }

    fn bytes(&self) -> Result<Bytes> {
        let out = Command::new(sibling("cairn-link")?)
            .args(["stats", "--name", LINK])
            .output()?;
        let v: serde_json::Value = serde_json::from_slice(&out.stdout)
            .with_context(|| "reading the link's counters".to_string())?;
        Ok(Bytes {
            a_to_b: v["a_to_b"]["bytes"].as_u64().unwrap_or(0),
            b_to_a: v["b_to_a"]["bytes"].as_u64().unwrap_or(0),
            queue_drops_b_to_a: v["b_to_a"]["drop_queue"].as_u64().unwrap_or(0),
        })
    }

    fn now(&self) -> f64 {
        self.started.elapsed().as_secs_f64()
    }

    /// Bytes per second hub -> spoke for each whole second in `from..to` (link time).
    fn series(&self, from: f64, to: f64) -> Vec<u64> {
        let text = fs::read_to_string(&self.samples).unwrap_or_default();
        let mut points: Vec<(u64, u64)> = text
            .lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .filter_map(|v| Some((v["t"].as_u64()?, v["stats"]["b_to_a"]["bytes"].as_u64()?)))
            .collect();
        points.sort_unstable();
        points
            .windows(2)
            .filter(|w| (w[1].0 as f64) > from && (w[1].0 as f64) <= to.ceil())
            .map(|w| w[1].1.saturating_sub(w[0].1))
            .collect()
    }
}

// ---------------------------------------------------------------------------------------------
// Tools

fn cairn(dir: &Path, args: &[&str]) -> Result<String> {
    let out = Command::new(sibling("cairn")?)
        .arg("--data-dir")
        .arg(dir)
        .args(args)
        .output()?;
    if !out.status.success() {
        bail!(
            "cairn {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

struct CairnHub {
    dir: PathBuf,
    key: String,
    token: String,
    root: String,
    quic: Quic,
}

/// The QUIC settings both Cairn instances of a run get.
#[derive(Clone, Debug)]
struct Quic {
    congestion: String,
    window_mib: u32,
}

impl Default for Quic {
    fn default() -> Quic {
        Quic {
            congestion: "bbr".into(),
            window_mib: cairn_sync::transport::DEFAULT_WINDOW_MIB,
        }
    }
}

impl Quic {
    /// Its lines of a `[sync]` section.
    fn toml(&self) -> String {
        format!(
            "congestion = \"{}\"\nwindow_mib = {}\n",
            self.congestion, self.window_mib
        )
    }
}

fn publish_corpus(store: &Store, corpus: &Corpus, files: &[(String, u64, u64)]) -> Result<()> {
    for chunk in files.chunks(500) {
        let mut batch = Vec::new();
        for (p, _, _) in chunk {
            let b = store.put_blob(fs::File::open(corpus.dir.join(p))?)?;
            batch.push(NewPackage {
                name: package_name(p),
                version: "1".into(),
                files: vec![NewFile {
                    name: p.rsplit('/').next().unwrap_or(p).to_string(),
                    blob: b.hash,
                    size: b.size,
                    digests: BTreeMap::new(),
                }],
                metadata: BTreeMap::new(),
            });
        }
        store.publish_many("corpus", batch)?;
    }
    Ok(())
}

/// The package a corpus file is published as.
fn package_name(path: &str) -> String {
    path.replace(['/', '.'], "-")
}

impl CairnHub {
    fn create(root: &Path, corpus: &Corpus) -> Result<CairnHub> {
        let dir = root.join(format!("cairn-hub-{}", corpus.name));
        if dir.exists() {
            fs::remove_dir_all(&dir)?;
        }
        cairn(&dir, &["init"])?;
        cairn(&dir, &["feed", "create", "corpus", "--type", "raw"])?;
        {
            let store = Store::open(&dir, StoreOptions::default())?;
            publish_corpus(&store, corpus, &corpus.files)?;
        }
        let key = cairn(&dir, &["key", "show"])?;
        let token = cairn(&dir, &["token", "create", "--scope", "replicate:corpus"])?;
        let mut hub = CairnHub {
            dir,
            key,
            token,
            root: String::new(),
            quic: Quic::default(),
        };
        hub.refresh_root()?;
        Ok(hub)
    }

    fn refresh_root(&mut self) -> Result<()> {
        let v: serde_json::Value =
            serde_json::from_str(&cairn(&self.dir, &["root", "corpus", "--json"])?)?;
        self.root = v["root"].as_str().unwrap_or("").to_string();
        Ok(())
    }

    fn serve(&self, spoke_key: &str) -> Result<Proc> {
        let _ = cairn(&self.dir, &["peer", "rm", "spoke"]);
        cairn(
            &self.dir,
            &["peer", "add", "spoke", "10.77.0.1:7443", "--key", spoke_key],
        )?;
        fs::write(
            self.dir.join("cairn.toml"),
            format!("[sync]\nlisten = \"{HUB_ADDR}:7443\"\n{}", self.quic.toml()),
        )?;
        let mut cmd = ns_cmd('b', &sibling("cairn")?);
        cmd.arg("--data-dir").arg(&self.dir).arg("serve");
        start_until(cmd, "cairn serving")
    }
}

fn cairn_spoke(root: &Path, name: &str, hub: &CairnHub) -> Result<PathBuf> {
    let dir = root.join(name);
    if dir.exists() {
        fs::remove_dir_all(&dir)?;
    }
    cairn(&dir, &["init"])?;
    cairn(&dir, &["feed", "create", "corpus", "--type", "raw"])?;
    cairn(&dir, &["trust", "add", &hub.key])?;
    cairn(
        &dir,
        &[
            "peer",
            "add",
            "hub",
            &format!("{HUB_ADDR}:7443"),
            "--key",
            &hub.key,
        ],
    )?;
    fs::write(
        dir.join("cairn.toml"),
        format!(
            "[sync]\nlisten = \"10.77.0.1:7443\"\n{}\n[[replication]]\nname = \"from-hub\"\npeer = \"hub\"\ntoken = \"{}\"\nfeeds = [\"corpus\"]\nmode = \"pull\"\ninterval_secs = 0\nmax_delete_share = 1.0\n",
            hub.quic.toml(),
            hub.token
        ),
    )?;
    Ok(dir)
}

struct RsyncHub {
    _daemon: Proc,
    _sshd: Proc,
    key: PathBuf,
}

impl RsyncHub {
    fn start(root: &Path, corpus: &Corpus) -> Result<RsyncHub> {
        let conf = root.join("rsyncd.conf");
        fs::write(
            &conf,
            format!(
                "pid file = {}\nuse chroot = no\n[corpus]\npath = {}\nread only = yes\nuid = root\ngid = root\n",
                root.join("rsyncd.pid").display(),
                corpus.dir.display()
            ),
        )?;
        let _ = fs::remove_file(root.join("rsyncd.pid"));
        let mut daemon = Command::new("ip");
        daemon
            .args(["netns", "exec", &format!("{LINK}-b")])
            .args(["rsync", "--daemon", "--no-detach", "--port", "8730"])
            .arg(format!("--config={}", conf.display()));
        let daemon = Proc::new(daemon.stdout(Stdio::null()).spawn()?);
        let key = root.join("ssh-key");
        if !key.exists() {
            let st = Command::new("ssh-keygen")
                .args(["-q", "-t", "ed25519", "-N", "", "-f"])
                .arg(&key)
                .status()?;
            ensure!(st.success(), "ssh-keygen failed");
        }
        let host_key = root.join("ssh-host-key");
        if !host_key.exists() {
            Command::new("ssh-keygen")
                .args(["-q", "-t", "ed25519", "-N", "", "-f"])
                .arg(&host_key)
                .status()?;
        }
        fs::copy(key.with_extension("pub"), root.join("authorized_keys"))?;
        let sshd_conf = root.join("sshd_config");
        fs::write(
            &sshd_conf,
            format!(
                "Port 2222\nListenAddress {HUB_ADDR}\nHostKey {}\nAuthorizedKeysFile {}\nPermitRootLogin prohibit-password\nPasswordAuthentication no\nStrictModes no\nPidFile none\nUsePAM no\n",
                host_key.display(),
                root.join("authorized_keys").display()
            ),
        )?;
        fs::create_dir_all("/run/sshd")?;
        let mut sshd = Command::new("ip");
        sshd.args(["netns", "exec", &format!("{LINK}-b")])
            .args(["/usr/sbin/sshd", "-D", "-e", "-f"])
            .arg(&sshd_conf);
        let sshd = Proc::new(sshd.stdout(Stdio::null()).stderr(Stdio::null()).spawn()?);
        // Both listen within a moment; wait for the ports.
        std::thread::sleep(Duration::from_millis(500));
        Ok(RsyncHub {
            _daemon: daemon,
            _sshd: sshd,
            key,
        })
    }

    fn server_pids(&self) -> [u32; 2] {
        [self._daemon.pid(), self._sshd.pid()]
    }
}

// ---------------------------------------------------------------------------------------------
// Results

/// One tool's client command, and the hub processes it talks to (for their CPU time).
#[derive(Clone)]
struct Client {
    tool: String,
    program: PathBuf,
    args: Vec<String>,
    servers: Vec<u32>,
    /// Where the client keeps what it received (Cairn's data directory, rsync's destination).
    dest: PathBuf,
}

impl Client {
    /// Payload bytes the client holds on disk now: for Cairn, stored blobs plus the verified
    /// chunk groups its `partial/` logs name; for rsync, every file (partial ones included).
    fn kept_bytes(&self) -> u64 {
        fn walk(dir: &Path, f: &mut dyn FnMut(&Path, u64)) {
            for e in fs::read_dir(dir).into_iter().flatten().flatten() {
                let p = e.path();
                match e.metadata() {
                    Ok(m) if m.is_dir() => walk(&p, f),
                    Ok(m) => f(&p, m.len()),
                    Err(_) => {}
                }
            }
        }
        let mut total = 0;
        if self.tool == "cairn" {
            walk(&self.dest.join("blobs"), &mut |p, len| {
                if p.extension().is_none() {
                    total += len;
                }
            });
            walk(&self.dest.join("partial"), &mut |p, _| {
                if p.extension().is_some_and(|e| e == "have") {
                    let log = fs::read(p).unwrap_or_default();
                    let mut groups = std::collections::BTreeSet::new();
                    for rec in log.chunks_exact(16) {
                        let mut a = [0u8; 8];
                        let mut b = [0u8; 8];
                        a.copy_from_slice(&rec[..8]);
                        b.copy_from_slice(&rec[8..]);
                        groups.extend(u64::from_be_bytes(a)..u64::from_be_bytes(b));
                    }
                    total += groups.len() as u64 * 16 * 1024;
                }
            });
        } else {
            walk(&self.dest, &mut |_, len| total += len);
        }
        total
    }
}

/// Link bytes hub -> spoke of a run cut by `kill -9`.
struct Cut {
    at_kill: u64,
    after_kill: u64,
}

/// What a resumed run shows about the cut before it.
#[derive(Debug, Clone, Copy, Serialize, Default)]
struct Resume {
    crossed_before_kill: u64,
    crossed_after_kill: u64,
    kept_payload: u64,
    /// Payload that reached the client before the kill but was not on its disk after it.
    lost_in_client: u64,
}

#[derive(Debug, Clone, Serialize, Default)]
struct Row {
    scenario: String,
    tool: String,
    seconds: f64,
    round_trips: Option<u64>,
    bytes_hub_to_spoke: u64,
    bytes_spoke_to_hub: u64,
    /// Packets hub -> spoke dropped at the link's full queue during the run.
    queue_drops: u64,
    payload_bytes: u64,
    /// Payload over the whole run, as a share of the link rate.
    goodput_share: f64,
    /// Median per-second goodput after the first 3 s, as a share of the link rate.
    steady_share: Option<f64>,
    cpu_client_s: f64,
    cpu_server_s: f64,
    peak_rss_client_mb: f64,
    consistent: bool,
    /// Stopped at `--rsync-cap-secs` before it finished (not a failure).
    capped: bool,
    /// Per-second bytes hub -> spoke on the link.
    series: Vec<u64>,
    /// Resume scenarios: the cut run's figures.
    #[serde(skip_serializing_if = "Option::is_none")]
    resume: Option<Resume>,
    note: String,
}

struct Bench {
    args: Args,
    root: PathBuf,
    rows: Vec<Row>,
    link: Option<Link>,
    /// The rate of the last link brought up, for the charts' scale.
    link_rate: u64,
}

impl Bench {
    fn link(&self) -> Result<&Link> {
        self.link.as_ref().ok_or_else(|| anyhow!("no link"))
    }

    /// Runs `client` once, measured, and records the row.
    fn measure(
        &mut self,
        scenario: &str,
        client: &Client,
        payload: u64,
        check: &mut dyn FnMut(&str) -> Checked,
    ) -> Result<Row> {
        let (tool, server_pids) = (client.tool.as_str(), &client.servers);
        let args: Vec<&str> = client.args.iter().map(String::as_str).collect();
        let link = self.link()?;
        let before = link.bytes()?;
        let cpu_before: f64 = server_pids.iter().map(|p| cpu_seconds(*p)).sum();
        let cap = self.args.cap_secs;
        let kept_before = if cap.is_some() {
            client.kept_bytes()
        } else {
            0
        };
        let t0 = link.now();
        let (stdout, t) = timed('a', &client.program, &args, &self.root, cap)?;
        let t1 = link.now();
        // Let the last per-second sample land.
        std::thread::sleep(Duration::from_millis(1100));
        let after = link.bytes()?;
        let cpu_after: f64 = server_pids.iter().map(|p| cpu_seconds(*p)).sum();
        let series = link.series(t0, t1);
        let rate = link.rate_bps as f64 / 8.0;
        let steady = (series.len() > 4).then(|| {
            let mut s: Vec<u64> = series[3..series.len() - 1].to_vec();
            s.sort_unstable();
            s.get(s.len() / 2).copied().unwrap_or(0) as f64 / rate
        });
        let capped = cap.is_some() && t.code == 124;
        // A capped run's payload is what it had written by then.
        let payload = if capped {
            client.kept_bytes().saturating_sub(kept_before).min(payload)
        } else {
            payload
        };
        let (consistent, rounds, note) = if t.code == 0 {
            check(&stdout)?
        } else if capped {
            (
                false,
                None,
                format!(
                    "stopped at the cap of {} s with {payload} B of payload written",
                    cap.unwrap_or(0)
                ),
            )
        } else {
            // Cairn prints its summary (with the error) even when it fails.
            let why = serde_json::from_str::<serde_json::Value>(&stdout)
                .ok()
                .and_then(|v| {
                    v["error"]
                        .as_str()
                        .or(v["feeds"][0]["error"].as_str())
                        .map(str::to_string)
                })
                .unwrap_or_default();
            (false, None, format!("exit code {}: {why}", t.code))
        };
        let row = Row {
            scenario: scenario.to_string(),
            tool: tool.to_string(),
            seconds: t.wall,
            round_trips: rounds,
            bytes_hub_to_spoke: after.b_to_a - before.b_to_a,
            bytes_spoke_to_hub: after.a_to_b - before.a_to_b,
            queue_drops: after.queue_drops_b_to_a - before.queue_drops_b_to_a,
            payload_bytes: payload,
            goodput_share: if t.wall > 0.0 {
                payload as f64 / t.wall / rate
            } else {
                0.0
            },
            steady_share: steady,
            cpu_client_s: t.cpu,
            cpu_server_s: cpu_after - cpu_before,
            peak_rss_client_mb: t.rss_mb,
            consistent,
            capped,
            series,
            resume: None,
            note,
        };
        eprintln!(
            "wan: {scenario} {tool}: {:.2} s, {} B down, {} B up, consistent: {}",
            row.seconds, row.bytes_hub_to_spoke, row.bytes_spoke_to_hub, row.consistent
        );
        self.rows.push(row.clone());
        Ok(row)
    }
}

fn cairn_check(hub_root: &str) -> impl FnMut(&str) -> Checked + '_ {
    move |stdout: &str| {
        let v: serde_json::Value = serde_json::from_str(stdout)
            .with_context(|| format!("cairn replicate printed: {stdout}"))?;
        let f = &v["feeds"][0];
        let ok = f["converged"] == true && f["root"].as_str() == Some(hub_root);
        Ok((
            ok,
            v["rounds"].as_u64(),
            format!(
                "path {}, {} blob bytes",
                f["path"].as_str().unwrap_or("?"),
                f["blob_bytes_received"]
            ),
        ))
    }
}

fn rsync_args(tool: &str, key: &Path, src: &Path, dest: &Path) -> Vec<String> {
    let mut a = vec!["-a".to_string(), "--delete".into(), "--partial".into()];
    if tool == "rsyncd" {
        a.push(format!("rsync://{HUB_ADDR}:8730/corpus/"));
    } else {
        a.push("-e".into());
        a.push(format!(
            "ssh -p 2222 -i {} -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null -o BatchMode=yes -o LogLevel=ERROR",
            key.display()
        ));
        a.push(format!("root@{HUB_ADDR}:{}/", src.display()));
    }
    a.push(format!("{}/", dest.display()));
    a
}

fn main() -> Result<()> {
    let mut args = Args::parse();
    if args.quick {
        args.profile = "P1".into();
    }
    ensure!(
        Path::new("/dev/net/tun").exists(),
        "the WAN runner needs root and /dev/net/tun"
    );
    stop_children_on_signal()?;
    fs::create_dir_all(&args.dir)?;
    let root = fs::canonicalize(&args.dir)?;
    let mut bench = Bench {
        args,
        root: root.clone(),
        rows: Vec::new(),
        link: None,
        link_rate: 0,
    };
    let scenarios = bench.args.scenarios.clone();
    for sc in &scenarios {
        let (kind, corpus_name) = sc
            .split_once('-')
            .ok_or_else(|| anyhow!("scenario `{sc}`: e.g. cold-L"))?;
        let corpus = make_corpus(&root, corpus_name, bench.args.quick, bench.args.seed)?;
        match kind {
            "cold" | "noop" | "incr" | "resume" => {
                bench.link = Some(Link::up(
                    &bench.args.profile,
                    None,
                    root.join(format!("link-{sc}.jsonl")),
                )?);
                bench.link_rate = bench.link()?.rate_bps;
                let quic = Quic {
                    congestion: bench.args.congestion.clone(),
                    ..Quic::default()
                };
                run_scenario(&mut bench, sc, kind, &corpus, &quic)?;
                bench.link = None;
            }
            "loss" => {
                for loss in ["0%", "0.1%", "1%"] {
                    for cc in ["bbr", "cubic", "newreno"] {
                        bench.link = Some(Link::up(
                            &bench.args.profile,
                            Some(loss),
                            root.join(format!("link-{sc}-{loss}-{cc}.jsonl")),
                        )?);
                        bench.link_rate = bench.link()?.rate_bps;
                        let label = format!("loss-{corpus_name} {loss} {cc}");
                        let quic = Quic {
                            congestion: cc.into(),
                            ..Quic::default()
                        };
                        run_scenario(&mut bench, &label, "cold", &corpus, &quic)?;
                        bench.link = None;
                    }
                }
            }
            "tune" => {
                // The same cold mirror with quinn's default flow-control windows and with
                // Cairn's, so the tuning's effect is measured, not assumed.
                for window_mib in [0, 8, cairn_sync::transport::DEFAULT_WINDOW_MIB] {
                    bench.link = Some(Link::up(
                        &bench.args.profile,
                        None,
                        root.join(format!("link-{sc}-{window_mib}.jsonl")),
                    )?);
                    bench.link_rate = bench.link()?.rate_bps;
                    let label = if window_mib == 0 {
                        format!("tune-{corpus_name} quinn default windows")
                    } else {
                        format!("tune-{corpus_name} window {window_mib} MiB")
                    };
                    let quic = Quic {
                        congestion: bench.args.congestion.clone(),
                        window_mib,
                    };
                    run_scenario(&mut bench, &label, "cold", &corpus, &quic)?;
                    bench.link = None;
                }
            }
            other => bail!("unknown scenario kind `{other}`"),
        }
    }
    write_results(&bench)?;
    let bad: Vec<String> = bench
        .rows
        .iter()
        .filter(|r| !r.consistent && !r.capped)
        .map(|r| format!("{} {}", r.scenario, r.tool))
        .collect();
    ensure!(
        bad.is_empty(),
        "replicas do not match after: {}",
        bad.join(", ")
    );
    Ok(())
}

fn run_scenario(
    bench: &mut Bench,
    sc: &str,
    kind: &str,
    corpus: &Corpus,
    quic: &Quic,
) -> Result<()> {
    let root = bench.root.clone();
    let tools = bench.args.tools.clone();
    let payload_all = corpus.bytes();
    for tool in &tools {
        match tool.as_str() {
            "cairn" => {
                let mut hub = CairnHub::create(&root, corpus)?;
                hub.quic = quic.clone();
                let spoke = cairn_spoke(&root, "cairn-spoke", &hub)?;
                let spoke_key = cairn(&spoke, &["key", "show"])?;
                let mut server = hub.serve(&spoke_key)?;
                let mut client = Client {
                    tool: "cairn".into(),
                    program: sibling("cairn")?,
                    args: [
                        "--data-dir",
                        &spoke.display().to_string(),
                        "replicate",
                        "from-hub",
                        "--json",
                    ]
                    .map(String::from)
                    .to_vec(),
                    servers: vec![server.pid()],
                    dest: spoke.clone(),
                };
                if kind == "incr" {
                    bench.measure(
                        &format!("{sc} (initial)"),
                        &client,
                        payload_all,
                        &mut cairn_check(&hub.root),
                    )?;
                    let mut current = corpus.files.clone();
                    for (step, add) in incremental_steps(bench.args.quick) {
                        // The hub's store is changed directly, with its server stopped.
                        drop(server);
                        let (added, removed) =
                            change_corpus(corpus, &mut current, step, add, bench.args.seed)?;
                        {
                            let store = Store::open(&hub.dir, StoreOptions::default())?;
                            publish_corpus(&store, corpus, &added)?;
                            for (p, _, _) in &removed {
                                store.delete("corpus", &package_name(p), "1")?;
                            }
                        }
                        hub.refresh_root()?;
                        server = hub.serve(&spoke_key)?;
                        client.servers = vec![server.pid()];
                        let payload: u64 = added.iter().map(|f| f.1).sum();
                        let label = format!("{sc} +{add} -{}", removed.len());
                        bench.measure(&label, &client, payload, &mut cairn_check(&hub.root))?;
                    }
                    // Put the corpus back for the other tools.
                    restore_corpus(corpus)?;
                } else {
                    bench.common(sc, kind, &client, payload_all, &mut cairn_check(&hub.root))?;
                }
                if kind == "noop" {
                    // The same no-op through a spoke server, which keeps its connection to the
                    // hub warm between runs: the second run costs no handshake.
                    let mut cmd = ns_cmd('a', &sibling("cairn")?);
                    cmd.arg("--data-dir").arg(&spoke).arg("serve");
                    let spoke_server = start_until(cmd, "cairn serving")?;
                    let through_server = Client {
                        servers: vec![server.pid(), spoke_server.pid()],
                        ..client.clone()
                    };
                    for label in ["server, first run", "server, warm connection"] {
                        bench.measure(
                            &format!("{sc} ({label})"),
                            &through_server,
                            0,
                            &mut cairn_check(&hub.root),
                        )?;
                    }
                    drop(spoke_server);
                }
                drop(server);
            }
            "rsyncd" | "rsync-ssh" => {
                let hub = RsyncHub::start(&root, corpus)?;
                let dest = root.join("rsync-spoke");
                if dest.exists() {
                    fs::remove_dir_all(&dest)?;
                }
                fs::create_dir_all(&dest)?;
                let client = Client {
                    tool: tool.clone(),
                    program: PathBuf::from("/usr/bin/rsync"),
                    args: rsync_args(tool, &hub.key, &corpus.dir, &dest),
                    servers: hub.server_pids().to_vec(),
                    dest: dest.clone(),
                };
                let mut check = |_: &str| -> Checked {
                    Ok((
                        tree_digest(&dest)? == tree_digest(&corpus.dir)?,
                        None,
                        String::new(),
                    ))
                };
                if kind == "incr" {
                    bench.measure(&format!("{sc} (initial)"), &client, payload_all, &mut check)?;
                    let mut current = corpus.files.clone();
                    for (step, add) in incremental_steps(bench.args.quick) {
                        let (added, removed) =
                            change_corpus(corpus, &mut current, step, add, bench.args.seed)?;
                        let payload: u64 = added.iter().map(|f| f.1).sum();
                        let label = format!("{sc} +{add} -{}", removed.len());
                        bench.measure(&label, &client, payload, &mut check)?;
                    }
                    restore_corpus(corpus)?;
                } else {
                    bench.common(sc, kind, &client, payload_all, &mut check)?;
                }
            }
            other => bail!("unknown tool `{other}`"),
        }
    }
    Ok(())
}

fn incremental_steps(quick: bool) -> Vec<(usize, usize)> {
    if quick {
        vec![(0, 1), (1, 10)]
    } else {
        vec![(0, 1), (1, 100), (2, 10_000)]
    }
}

/// Adds `add` new files and deletes 1% of the current ones, on disk; returns both lists.
#[allow(clippy::type_complexity)]
fn change_corpus(
    corpus: &Corpus,
    current: &mut Vec<(String, u64, u64)>,
    step: usize,
    add: usize,
    seed: u64,
) -> Result<(Vec<(String, u64, u64)>, Vec<(String, u64, u64)>)> {
    // The corpus no longer matches its spec until restore_corpus rewrites it.
    let _ = fs::remove_file(corpus.dir.join(".complete"));
    let mut rng = Xorshift::new(seed ^ ((step as u64 + 1) * 0x5151));
    let added: Vec<(String, u64, u64)> = (0..add)
        .map(|i| {
            (
                format!("new{step}/n{i:06}.bin"),
                1024 + (rng.unit() * 3072.0) as u64,
                seed ^ 0xabcd_0000 ^ ((step as u64) << 24) ^ i as u64,
            )
        })
        .collect();
    for (p, size, s) in &added {
        write_file(&corpus.dir.join(p), *size, *s)?;
    }
    let n_del = (current.len() / 100).max(1);
    let mut removed = Vec::new();
    for _ in 0..n_del {
        let i = (rng.unit() * current.len() as f64) as usize % current.len();
        let f = current.swap_remove(i);
        fs::remove_file(corpus.dir.join(&f.0))?;
        removed.push(f);
    }
    current.extend(added.iter().cloned());
    Ok((added, removed))
}

/// Undoes [`change_corpus`]: the corpus is rewritten from its spec.
fn restore_corpus(corpus: &Corpus) -> Result<()> {
    fs::remove_dir_all(&corpus.dir)?;
    for (p, size, s) in &corpus.files {
        write_file(&corpus.dir.join(p), *size, *s)?;
    }
    fs::write(corpus.dir.join(".complete"), b"")?;
    Ok(())
}

impl Bench {
    /// The scenarios every tool runs the same way: cold, no-op (after an initial run), and
    /// resume (a run killed once half the payload crossed the link, then a complete one).
    fn common(
        &mut self,
        sc: &str,
        kind: &str,
        client: &Client,
        payload: u64,
        check: &mut dyn FnMut(&str) -> Checked,
    ) -> Result<()> {
        match kind {
            "cold" => {
                self.measure(sc, client, payload, check)?;
            }
            "noop" => {
                self.measure(&format!("{sc} (initial)"), client, payload, check)?;
                self.measure(sc, client, 0, check)?;
            }
            "resume" => {
                let cut = self.cut_at_half(client, payload)?;
                let kept = client.kept_bytes();
                let row = self.measure(sc, client, payload, check)?;
                let total = cut.at_kill + cut.after_kill + row.bytes_hub_to_spoke;
                // The second run's link bytes per payload byte it fetched, applied to what had
                // crossed when the client died, estimate the payload that reached the client;
                // what of it the client did not keep was lost with the process.
                let overhead =
                    row.bytes_hub_to_spoke as f64 / payload.saturating_sub(kept).max(1) as f64;
                let reached = (cut.at_kill as f64 / overhead.max(1.0)) as u64;
                if let Some(r) = self.rows.last_mut() {
                    r.note = format!(
                        "{}; {} B crossed before the kill and {} B after it (in flight); the client had kept {kept} B of payload, about {} B of what reached it was lost; both runs moved {total} B hub->spoke for {payload} B of payload",
                        r.note,
                        cut.at_kill,
                        cut.after_kill,
                        reached.saturating_sub(kept),
                    );
                    r.resume = Some(Resume {
                        crossed_before_kill: cut.at_kill,
                        crossed_after_kill: cut.after_kill,
                        kept_payload: kept,
                        lost_in_client: reached.saturating_sub(kept),
                    });
                }
            }
            other => bail!("unknown scenario kind `{other}`"),
        }
        Ok(())
    }

    /// Starts `client` and kills its whole process group (`kill -9`) once half of `payload`
    /// has crossed the link; returns the bytes that crossed before the kill and after it (what
    /// was in flight, counted once the link drained).
    fn cut_at_half(&self, client: &Client, payload: u64) -> Result<Cut> {
        use std::os::unix::process::CommandExt;
        let link = self.link()?;
        let before = link.bytes()?;
        let mut c = ns_cmd('a', &client.program);
        c.args(&client.args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .process_group(0);
        let mut child = c.spawn()?;
        track(child.id());
        let t0 = Instant::now();
        let at_kill = loop {
            let crossed = link.bytes()?.b_to_a - before.b_to_a;
            if crossed >= payload / 2 {
                let _ = Command::new("kill")
                    .args(["-KILL", "--", &format!("-{}", child.id())])
                    .status();
                break crossed;
            }
            if child.try_wait()?.is_some() || t0.elapsed() > Duration::from_secs(3600) {
                bail!("the first run ended before it could be cut");
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        let _ = child.wait();
        untrack(child.id());
        // What was already queued on the link still arrives (and is counted as the cut run's).
        std::thread::sleep(Duration::from_secs(3));
        let total = link.bytes()?.b_to_a - before.b_to_a;
        Ok(Cut {
            at_kill,
            after_kill: total.saturating_sub(at_kill),
        })
    }
}

/// Draws goodput over time (hub -> spoke, per second, as the link counted it) of every tool in
/// a scenario, one PNG per scenario.
fn draw_chart(
    path: &Path,
    title: &str,
    series: &[(String, Vec<u64>)],
    rate_bps: u64,
) -> Result<()> {
    use plotters::prelude::*;
    let err = |e: &dyn std::fmt::Debug| anyhow!("drawing {}: {e:?}", path.display());
    let root = BitMapBackend::new(path, (960, 520)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| err(&e))?;
    let max_t = series.iter().map(|s| s.1.len()).max().unwrap_or(1).max(1) as f64;
    let max_y = rate_bps as f64 / 1e6 * 1.1;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 22))
        .margin(16)
        .x_label_area_size(40)
        .y_label_area_size(64)
        .build_cartesian_2d(0f64..max_t + 1.0, 0f64..max_y)
        .map_err(|e| err(&e))?;
    chart
        .configure_mesh()
        .x_desc("seconds")
        .y_desc("Mbit/s, hub to spoke")
        .draw()
        .map_err(|e| err(&e))?;
    for (i, (name, s)) in series.iter().enumerate() {
        let color = Palette99::pick(i).to_rgba();
        chart
            .draw_series(LineSeries::new(
                s.iter()
                    .enumerate()
                    .map(|(t, b)| (t as f64 + 1.0, *b as f64 * 8.0 / 1e6)),
                color.stroke_width(2),
            ))
            .map_err(|e| err(&e))?
            .label(name.as_str())
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2))
            });
    }
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .draw()
        .map_err(|e| err(&e))?;
    root.present().map_err(|e| err(&e))?;
    Ok(())
}

/// The font the charts use (Debian's fonts-dejavu-core), registered once.
fn write_results(bench: &Bench) -> Result<()> {
    let root = &bench.root;
    cairn_benches::register_font()?;
    let mut scenarios: Vec<&str> = Vec::new();
    for r in &bench.rows {
        if !scenarios.contains(&r.scenario.as_str()) {
            scenarios.push(&r.scenario);
        }
    }
    let rate = bench.link_rate;
    for sc in scenarios {
        let series: Vec<(String, Vec<u64>)> = bench
            .rows
            .iter()
            .filter(|r| r.scenario == sc)
            .map(|r| (r.tool.clone(), r.series.clone()))
            .collect();
        let file: String = sc
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || c == '-' {
                    c
                } else {
                    '_'
                }
            })
            .collect();
        draw_chart(
            &root.join(format!("goodput-{file}.png")),
            &format!("{sc}, {}", bench.args.profile),
            &series,
            rate,
        )?;
    }
    fs::write(
        root.join("results.json"),
        serde_json::to_string_pretty(&bench.rows)?,
    )?;
    let mut md = String::new();
    md.push_str(&format!(
        "Profile {}{}\n\n",
        bench.args.profile,
        if bench.args.quick {
            " (quick corpora)"
        } else {
            ""
        }
    ));
    md.push_str("| scenario | tool | seconds | vs rsyncd | vs rsync-ssh | round trips | bytes hub->spoke | bytes spoke->hub | queue drops hub->spoke | goodput (whole run) | goodput (steady) | CPU client / server s | client peak RSS MB | consistent | note |\n");
    md.push_str(
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |\n",
    );
    for r in &bench.rows {
        let ratio = |other: &str| {
            bench
                .rows
                .iter()
                .find(|o| o.scenario == r.scenario && o.tool == other)
                .filter(|o| o.seconds > 0.0 && r.tool == "cairn")
                .map(|o| {
                    if o.capped || r.capped {
                        // One had not finished at the cap: compare goodput instead.
                        format!(
                            "{:.1}x its goodput (capped)",
                            r.goodput_share / o.goodput_share.max(1e-9)
                        )
                    } else {
                        format!("{:.2}x faster", o.seconds / r.seconds.max(1e-3))
                    }
                })
                .unwrap_or_default()
        };
        md.push_str(&format!(
            "| {} | {} | {:.2} | {} | {} | {} | {} | {} | {} | {:.0}% | {} | {:.1} / {:.1} | {:.0} | {} | {} |\n",
            r.scenario,
            r.tool,
            r.seconds,
            ratio("rsyncd"),
            ratio("rsync-ssh"),
            r.round_trips.map(|n| n.to_string()).unwrap_or_else(|| "-".into()),
            r.bytes_hub_to_spoke,
            r.bytes_spoke_to_hub,
            r.queue_drops,
            r.goodput_share * 100.0,
            r.steady_share.map(|s| format!("{:.0}%", s * 100.0)).unwrap_or_else(|| "-".into()),
            r.cpu_client_s,
            r.cpu_server_s,
            r.peak_rss_client_mb,
            if r.consistent {
                "yes"
            } else if r.capped {
                "capped"
            } else {
                "NO"
            },
            r.note
        ));
    }
    fs::write(root.join("results.md"), &md)?;
    print!("{md}");
    Ok(())
}
