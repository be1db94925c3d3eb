//! Publish-to-installable latency across an emulated WAN link (`cairn-link`, P2 by default):
//! a wheel uploaded to the hub with `twine` until `pip install` of it succeeds on a spoke.
//! Linux, as root, with `twine` and `pip` on the PATH's `python3`.
//!
//! The hub runs in namespace `<link>-b`; in `<link>-a` run a relay that pulls from the hub, a
//! spoke that pulls from the hub directly and a spoke that pulls from the relay, so every
//! publish is measured both ways at once. Each replication polls every 60 s as a fallback and
//! runs at once on the upstream's change notification. Per publish: `twine upload` in the
//! hub's namespace; from its return, how long until each spoke's simple index lists the file
//! (polled every 10 ms from inside the namespace) and until `pip install --no-deps` of that
//! version from the spoke succeeds (started once the file is listed, so it includes pip's own
//! run time, reported apart).
//!
//! `publish-latency --profile P2 --publishes 20`.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, ensure, Context, Result};
use cairn_benches::instance::{http, unix_ms, Inst, Running};
use cairn_benches::{fill_bytes, sibling, Proc};
use clap::{Parser, Subcommand};
use serde::Serialize;

#[derive(Parser, Debug)]
#[command(about = "twine upload on the hub to pip install on a spoke, across an emulated link")]
struct Args {
    #[command(subcommand)]
    watch: Option<Watch>,
    /// Link profile: P1, P2, P3.
    #[arg(long, default_value = "P2")]
    profile: String,
    /// Publishes to measure.
    #[arg(long, default_value_t = 20)]
    publishes: usize,
    /// Size of each wheel's payload in KiB.
    #[arg(long, default_value_t = 256)]
    size_kib: usize,
    /// Where instances and results go (emptied first).
    #[arg(long, default_value = "bench-scratch/publish-latency")]
    dir: PathBuf,
}

#[derive(Subcommand, Debug)]
enum Watch {
    /// (Run inside a namespace by the runner.) Polls `index` until it lists `file`, then runs
    /// pip until `spec` installs; prints `listed MS` and `installed MS` (Unix milliseconds).
    Watch {
        index: String,
        file: String,
        spec: String,
        target: PathBuf,
    },
}

const LINK: &str = "cairnlat";
const FEED: &str = "py";
const PACKAGE: &str = "lat-pkg";
const HUB_SYNC: &str = "10.77.0.2:7443";
const RELAY_SYNC: &str = "127.0.0.1:7444";

#[derive(Serialize, Debug, Default, Clone)]
struct Sample {
    version: String,
    twine_ms: u64,
    /// From twine's return, per spoke (direct, via relay).
    listed_ms: [u64; 2],
    installed_ms: [u64; 2],
}

fn main() -> Result<()> {
    let args = Args::parse();
    if let Some(Watch::Watch {
        index,
        file,
        spec,
        target,
    }) = &args.watch
    {
        return watch(index, file, spec, target);
    }
    ensure!(args.publishes > 0, "--publishes must be positive");
    let cairn = sibling("cairn")?;
    let me = std::env::current_exe()?;
    let root = cairn_benches::fresh_dir(&args.dir)?;
    let _link = cairn_benches::instance::link_up(LINK, &args.profile)?;
    let (ns_a, ns_b) = (format!("{LINK}-a"), format!("{LINK}-b"));

    let hub = Inst::init(&cairn, &root.join("hub"), FEED, "pypi")?;
    let relay = Inst::init(&cairn, &root.join("relay"), FEED, "pypi")?;
    let direct = Inst::init(&cairn, &root.join("spoke-direct"), FEED, "pypi")?;
    let via = Inst::init(&cairn, &root.join("spoke-relay"), FEED, "pypi")?;
    let publish = hub.cli(&cairn, &["token", "create", "--scope", "publish:py"])?;
    let hub_token = hub.cli(&cairn, &["token", "create", "--scope", "replicate:py"])?;
    let relay_token = relay.cli(&cairn, &["token", "create", "--scope", "replicate:py"])?;
    for (name, i) in [("relay", &relay), ("direct", &direct)] {
        hub.add_peer(&cairn, name, &i.key, "127.0.0.1:1")?;
    }
    relay.add_peer(&cairn, "spoke", &via.key, "127.0.0.1:1")?;
    for i in [&relay, &direct, &via] {
        i.add_peer(&cairn, "hub", &hub.key, HUB_SYNC)?;
        i.cli(&cairn, &["trust", "add", &hub.key, "--feed", FEED])?;
    }
    via.add_peer(&cairn, "relay", &relay.key, RELAY_SYNC)?;
    let pull = |peer: &str, token: &str| {
        format!("[[replication]]\nname = \"up\"\npeer = \"{peer}\"\ntoken = \"{token}\"\nfeeds = [\"{FEED}\"]\nmode = \"pull\"\ninterval_secs = 60\n")
    };
    hub.config(HUB_SYNC, "127.0.0.1:0", "")?;
    relay.config(RELAY_SYNC, "127.0.0.1:0", &pull("hub", &hub_token))?;
    direct.config("127.0.0.1:0", "127.0.0.1:0", &pull("hub", &hub_token))?;
    via.config("127.0.0.1:0", "127.0.0.1:0", &pull("relay", &relay_token))?;
    let hub_run = hub.serve(&cairn, Some(&ns_b))?;
    let _relay_run = relay.serve(&cairn, Some(&ns_a))?;
    let spokes: [Running; 2] = [
        direct.serve(&cairn, Some(&ns_a))?,
        via.serve(&cairn, Some(&ns_a))?,
    ];

    let wheels = root.join("wheels");
    std::fs::create_dir_all(&wheels)?;
    let mut samples = Vec::new();
    // Publish 0 warms up: the spokes' first runs, their warm connections, pip's imports.
    for n in 0..=args.publishes {
        let version = format!("1.0.{n}");
        let file = format!("{}-{version}-py3-none-any.whl", PACKAGE.replace('-', "_"));
        let mut payload = vec![0u8; args.size_kib << 10];
        fill_bytes(n as u64 + 7, &mut payload);
        let wheel =
            cairn_store::package::fixtures::wheel_with_payload(PACKAGE, &version, &[], &payload);
        let path = wheels.join(&file);
        std::fs::write(&path, wheel)?;
        let watchers: Vec<Proc> = spokes
            .iter()
            .enumerate()
            .map(|(k, s)| {
                let target = root.join(format!("site-{k}-{n}"));
                let child = Command::new("ip")
                    .args(["netns", "exec", &ns_a])
                    .arg(&me)
                    .arg("watch")
                    .arg(format!("http://{}/feeds/{FEED}/simple/{PACKAGE}/", s.http))
                    .arg(&file)
                    .arg(format!("{PACKAGE}=={version}"))
                    .arg(&target)
                    .stdout(Stdio::piped())
                    .stderr(Stdio::inherit())
                    .spawn()?;
                Ok(Proc(child))
            })
            .collect::<Result<_>>()?;
        // The watchers are polling before the upload starts.
        std::thread::sleep(Duration::from_millis(300));
        let started = Instant::now();
        let out = Command::new("ip")
            .args(["netns", "exec", &ns_b, "python3", "-m", "twine", "upload"])
            .args(["--non-interactive", "--disable-progress-bar"])
            .arg("--repository-url")
            .arg(format!("http://{}/feeds/{FEED}/legacy/", hub_run.http))
            .args(["-u", "__token__", "-p", &publish])
            .arg(&path)
            .env("PIP_CONFIG_FILE", "/dev/null")
            .output()
            .context("twine (pip install twine)")?;
        ensure!(
            out.status.success(),
            "twine upload: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let uploaded = unix_ms();
        let twine_ms = started.elapsed().as_millis() as u64;
        let mut sample = Sample {
            version: version.clone(),
            twine_ms,
            ..Sample::default()
        };
        for (k, mut w) in watchers.into_iter().enumerate() {
            let Some(stdout) = w.0.stdout.take() else {
                bail!("no watcher output");
            };
            let mut text = String::new();
            std::io::Read::read_to_string(&mut { stdout }, &mut text)?;
            let at = |what: &str| -> Result<u64> {
                text.lines()
                    .find_map(|l| l.strip_prefix(what))
                    .and_then(|ms| ms.trim().parse::<u64>().ok())
                    .ok_or_else(|| anyhow!("spoke {k}, {version}: no `{what}` in {text:?}"))
            };
            sample.listed_ms[k] = at("listed ")?.saturating_sub(uploaded);
            sample.installed_ms[k] = at("installed ")?.saturating_sub(uploaded);
        }
        eprintln!(
            "publish-latency: {version}: twine {} ms; listed {} / {} ms, installed {} / {} ms (direct / via relay)",
            sample.twine_ms,
            sample.listed_ms[0],
            sample.listed_ms[1],
            sample.installed_ms[0],
            sample.installed_ms[1]
        );
        if n > 0 {
            samples.push(sample);
        }
        std::thread::sleep(Duration::from_secs(1));
    }
    let report = report(&args, &samples);
    println!("{report}");
    std::fs::write(root.join("results.md"), &report)?;
    std::fs::write(
        root.join("results.json"),
        serde_json::to_string_pretty(&samples)?,
    )?;
    Ok(())
}

fn watch(index: &str, file: &str, spec: &str, target: &Path) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(180);
    let addr = index
        .strip_prefix("http://")
        .and_then(|r| r.split_once('/'))
        .ok_or_else(|| anyhow!("not an http URL: {index}"))?;
    let path = format!("/{}", addr.1);
    loop {
        ensure!(Instant::now() < deadline, "{file} not listed within 180 s");
        if let Ok((200, body)) = http(addr.0, "GET", &path, "") {
            if body.contains(file) {
                break;
            }
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    println!("listed {}", unix_ms());
    let simple = index
        .trim_end_matches('/')
        .rsplit_once('/')
        .map_or(index, |p| p.0);
    loop {
        ensure!(
            Instant::now() < deadline,
            "{spec} did not install within 180 s"
        );
        let out = Command::new("python3")
            .args([
                "-m",
                "pip",
                "install",
                "--no-deps",
                "--no-cache-dir",
                "--quiet",
            ])
            .args(["--index-url", &format!("{simple}/")])
            .arg("--target")
            .arg(target)
            .arg(spec)
            .env("PIP_CONFIG_FILE", "/dev/null")
            .env("PIP_DISABLE_PIP_VERSION_CHECK", "1")
            .output()?;
        if out.status.success() {
            break;
        }
    }
    println!("installed {}", unix_ms());
    Ok(())
}

fn percentile(mut v: Vec<u64>, p: f64) -> u64 {
    v.sort_unstable();
    let i = ((v.len() as f64 - 1.0) * p).round() as usize;
    v.get(i).copied().unwrap_or(0)
}

fn report(args: &Args, samples: &[Sample]) -> String {
    let mut t = format!(
        "{} publishes of a {} KiB wheel, link {}; milliseconds from `twine upload` returning on the hub\n\n| spoke | listed: median | p95 | `pip install` done: median | p95 | pip's own time: median |\n| --- | --- | --- | --- | --- | --- |\n",
        samples.len(),
        args.size_kib,
        args.profile
    );
    for (k, name) in ["direct", "through a relay"].iter().enumerate() {
        let listed: Vec<u64> = samples.iter().map(|s| s.listed_ms[k]).collect();
        let installed: Vec<u64> = samples.iter().map(|s| s.installed_ms[k]).collect();
        let pip: Vec<u64> = samples
            .iter()
            .map(|s| s.installed_ms[k].saturating_sub(s.listed_ms[k]))
            .collect();
        t.push_str(&format!(
            "| {name} | {} | {} | {} | {} | {} |\n",
            percentile(listed.clone(), 0.5),
            percentile(listed, 0.95),
            percentile(installed.clone(), 0.5),
            percentile(installed, 0.95),
            percentile(pip, 0.5),
        ));
    }
    let twine: Vec<u64> = samples.iter().map(|s| s.twine_ms).collect();
    t.push_str(&format!(
        "\n`twine upload` itself: median {} ms.\n",
        percentile(twine, 0.5)
    ));
    t
}
