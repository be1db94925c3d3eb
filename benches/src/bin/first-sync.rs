//! A spoke's first sync of a feed of many small files, on loopback: its time and peak memory
//! at several feed sizes, to show what the memory depends on. For each N: a hub of N entries
//! (one file of 1-4 KiB each, as corpus T), `cairn serve` on it, a fresh spoke running
//! `cairn replicate` once; the spoke's peak RSS is its `VmHWM`, read while it runs, and the
//! hub's is its `VmHWM` before the sync and at its end.
//!
//! `first-sync --entries 100000,1000000`

use std::collections::BTreeMap;
use std::fs;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use cairn_benches::{cairn_cli, Proc};
use cairn_store::{Ecosystem, NewFile, NewPackage, Store, StoreOptions};
use clap::Parser;

#[derive(Parser, Debug)]
#[command(about = "Time and peak RSS of a spoke's first sync, by feed size")]
struct Args {
    /// Feed sizes to measure, comma-separated.
    #[arg(long, value_delimiter = ',', default_values_t = vec![100_000u64, 1_000_000])]
    entries: Vec<u64>,
    /// Where instances go.
    #[arg(long, default_value = "bench-scratch/first-sync")]
    dir: std::path::PathBuf,
    /// Keep each hub built here (as `n<entries>`) and copy it for later runs instead of
    /// building it again: a hub of 1,000,000 entries takes minutes to build.
    #[arg(long)]
    hub_cache: Option<std::path::PathBuf>,
    /// Print the spoke's RSS every this many seconds while it syncs (0: never), to show
    /// whether its memory grows with what it has taken.
    #[arg(long, default_value_t = 0)]
    rss_every: u64,
}

fn free_udp_port() -> Result<u16> {
    Ok(std::net::UdpSocket::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// A hub store of `n` entries in feed `corpus`.
fn build_hub(dir: &Path, n: u64) -> Result<()> {
    let store = Store::init(
        dir,
        StoreOptions {
            sync_writes: false,
            ..StoreOptions::default()
        },
    )?;
    store.create_feed("corpus", Ecosystem::Raw)?;
    let mut seed = 0x5eed_u64;
    let mut i = 0;
    while i < n {
        let end = (i + 2000).min(n);
        let mut files = Vec::new();
        for j in i..end {
            seed = seed
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            let mut bytes = vec![0u8; 1024 + (seed >> 33) as usize % 3072];
            cairn_benches::fill_bytes(j, &mut bytes);
            files.push(bytes);
        }
        let named: Vec<(cairn_store::Hash, &[u8])> = files
            .iter()
            .map(|f| (cairn_store::Hash::of(f), f.as_slice()))
            .collect();
        let blobs = store.put_small_blobs(&named)?;
        let batch = blobs
            .into_iter()
            .zip(i..end)
            .map(|(b, j)| NewPackage {
                name: format!("d{:04}", j / 1000),
                version: format!("1.{j}"),
                files: vec![NewFile {
                    name: format!("f{j:07}.bin"),
                    blob: b.hash,
                    size: b.size,
                    digests: BTreeMap::new(),
                }],
                metadata: BTreeMap::new(),
            })
            .collect();
        store.publish_many("corpus", batch)?;
        i = end;
    }
    Ok(())
}

fn key_of(bin: &Path, dir: &Path) -> Result<String> {
    let out = cairn_cli(bin, dir, &["key", "show"])?;
    out.split_whitespace()
        .find(|w| w.len() == 64 && w.bytes().all(|b| b.is_ascii_hexdigit()))
        .map(str::to_owned)
        .context("no key in `cairn key show`")
}

/// A memory figure of process `pid` from `/proc/<pid>/status` (`VmHWM`, `VmRSS`), KiB.
fn status_kib(pid: u32, field: &str) -> Option<u64> {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

/// What one first sync took.
struct Measured {
    secs: f64,
    /// The spoke's peak RSS, KiB.
    peak_kib: u64,
    /// CPU seconds of the spoke (its last reading before it exited) and of the hub (during
    /// the sync).
    spoke_cpu: f64,
    hub_cpu: f64,
    /// The hub's peak resident set once serving, before the sync, and by the end, KiB.
    hub_start_kib: u64,
    hub_peak_kib: u64,
}

/// The spoke's first sync of a hub of `n` entries.
fn measure(bin: &Path, root: &Path, n: u64, args: &Args) -> Result<Measured> {
    let (hub, spoke) = (root.join("hub"), root.join("spoke"));
    let t = Instant::now();
    match &args.hub_cache {
        Some(cache) => {
            let kept = cache.join(format!("n{n}"));
            if !kept.join("db").exists() {
                let building = cache.join(format!("n{n}.building"));
                if building.exists() {
                    fs::remove_dir_all(&building)?;
                }
                build_hub(&building, n)?;
                fs::rename(&building, &kept)?;
                eprintln!("first-sync: hub of {n} entries built in {:?}", t.elapsed());
            }
            fs::create_dir_all(root)?;
            let copied = Command::new("cp").arg("-a").arg(&kept).arg(&hub).status()?;
            ensure!(copied.success(), "copying {} failed", kept.display());
            eprintln!("first-sync: hub of {n} entries copied in {:?}", t.elapsed());
        }
        None => {
            build_hub(&hub, n)?;
            eprintln!("first-sync: hub of {n} entries built in {:?}", t.elapsed());
        }
    }
    cairn_cli(bin, &spoke, &["init"])?;
    cairn_cli(bin, &spoke, &["feed", "create", "corpus", "--type", "raw"])?;
    let (hub_key, spoke_key) = (key_of(bin, &hub)?, key_of(bin, &spoke)?);
    let token = cairn_cli(
        bin,
        &hub,
        &["token", "create", "--scope", "replicate:corpus"],
    )?;
    let token = token
        .split_whitespace()
        .find(|w| w.starts_with("cairn_"))
        .context("no token printed")?
        .to_owned();
    let (hub_port, spoke_port) = (free_udp_port()?, free_udp_port()?);
    cairn_cli(
        bin,
        &hub,
        &[
            "peer",
            "add",
            "spoke",
            &format!("127.0.0.1:{spoke_port}"),
            "--key",
            &spoke_key,
        ],
    )?;
    cairn_cli(
        bin,
        &spoke,
        &[
            "peer",
            "add",
            "hub",
            &format!("127.0.0.1:{hub_port}"),
            "--key",
            &hub_key,
        ],
    )?;
    cairn_cli(bin, &spoke, &["trust", "add", &hub_key])?;
    fs::write(
        hub.join("cairn.toml"),
        format!("[sync]\nlisten = \"127.0.0.1:{hub_port}\"\n\n[http]\nlisten = \"127.0.0.1:0\"\n"),
    )?;
    fs::write(
        spoke.join("cairn.toml"),
        format!(
            "[sync]\nlisten = \"127.0.0.1:{spoke_port}\"\n\n[[replication]]\nname = \"from-hub\"\npeer = \"hub\"\ntoken = \"{token}\"\nfeeds = [\"corpus\"]\nmode = \"pull\"\ninterval_secs = 0\n"
        ),
    )?;
    let mut hub_proc = Proc(
        Command::new(bin)
            .arg("--data-dir")
            .arg(&hub)
            .arg("serve")
            .env("CAIRN_LOG", "warn")
            .stdout(Stdio::piped())
            .spawn()?,
    );
    // The start line comes once both servers listen.
    let mut hub_out = std::io::BufReader::new(hub_proc.0.stdout.take().context("hub stdout")?);
    let mut line = String::new();
    std::io::BufRead::read_line(&mut hub_out, &mut line)?;
    ensure!(line.contains("cairn serving"), "hub did not start: {line}");
    let hub_cpu_before = cairn_benches::cpu_seconds(hub_proc.0.id());
    let hub_start_kib = status_kib(hub_proc.0.id(), "VmHWM").unwrap_or(0);
    let started = Instant::now();
    let mut child = Command::new(bin)
        .arg("--data-dir")
        .arg(&spoke)
        .args(["replicate", "from-hub"])
        .env("CAIRN_LOG", "warn")
        .stdout(Stdio::piped())
        .spawn()?;
    let pid = child.id();
    let (mut peak, mut spoke_cpu) = (0, 0.0);
    let mut next_report = args.rss_every;
    let status = loop {
        if let Some(kib) = status_kib(pid, "VmHWM") {
            peak = peak.max(kib);
            spoke_cpu = cairn_benches::cpu_seconds(pid);
        }
        if args.rss_every > 0 && started.elapsed().as_secs() >= next_report {
            next_report += args.rss_every;
            eprintln!(
                "first-sync: {:>5} s: spoke RSS {} MiB, peak {} MiB, CPU {spoke_cpu:.1} s",
                started.elapsed().as_secs(),
                status_kib(pid, "VmRSS").unwrap_or(0) >> 10,
                peak >> 10
            );
        }
        if let Some(s) = child.try_wait()? {
            break s;
        }
        if started.elapsed() > Duration::from_secs(3600) {
            let _ = child.kill();
            bail!("the first sync of {n} entries took over an hour");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let secs = started.elapsed().as_secs_f64();
    let hub_cpu = cairn_benches::cpu_seconds(hub_proc.0.id()) - hub_cpu_before;
    let hub_peak_kib = status_kib(hub_proc.0.id(), "VmHWM").unwrap_or(0);
    let mut out = String::new();
    if let Some(mut o) = child.stdout.take() {
        use std::io::Read;
        o.read_to_string(&mut out)?;
    }
    ensure!(
        status.success() && out.contains("converged"),
        "the spoke did not converge: {out}"
    );
    drop(hub_proc);
    drop(hub_out);
    Ok(Measured {
        secs,
        peak_kib: peak,
        spoke_cpu,
        hub_cpu,
        hub_start_kib,
        hub_peak_kib,
    })
}

fn main() -> Result<()> {
    let args = Args::parse();
    let bin = std::env::current_exe()?.with_file_name("cairn");
    let root = cairn_benches::fresh_dir(&args.dir)?;
    let mut rows = Vec::new();
    for &n in &args.entries {
        let dir = root.join(format!("n{n}"));
        let m = measure(&bin, &dir, n, &args)?;
        eprintln!(
            "first-sync: {n} entries in {:.1} s, spoke peak RSS {} MiB, CPU spoke {:.1} s hub {:.1} s, hub peak RSS {} MiB before the sync, {} MiB by its end",
            m.secs,
            m.peak_kib >> 10,
            m.spoke_cpu,
            m.hub_cpu,
            m.hub_start_kib >> 10,
            m.hub_peak_kib >> 10
        );
        rows.push((n, m));
        fs::remove_dir_all(&dir)?;
    }
    println!(
        "| entries | first sync | spoke peak RSS | spoke CPU | hub CPU | hub peak RSS before, after |\n| --- | --- | --- | --- | --- | --- |"
    );
    for (n, m) in rows {
        println!(
            "| {n} | {:.1} s | {:.0} MiB | {:.1} s | {:.1} s | {:.0} MiB, {:.0} MiB |",
            m.secs,
            m.peak_kib as f64 / 1024.0,
            m.spoke_cpu,
            m.hub_cpu,
            m.hub_start_kib as f64 / 1024.0,
            m.hub_peak_kib as f64 / 1024.0
        );
    }
    Ok(())
}
