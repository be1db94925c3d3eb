//! The feed server under load, side by side with the servers people run instead, all on
//! loopback in one run: Cairn's PyPI simple page and a 1 MiB wheel against pypiserver, npm
//! packuments and tarballs against verdaccio, and a 1 MiB raw file against nginx serving it
//! from disk. `wrk` makes the load; each server gets the same packages. With `--rounds N` each
//! row is measured N times, Cairn and the other server taking turns, and the table gives the
//! medians and the median of the rounds' ratios with their range: on a small machine the
//! figures move by a fifth from one minute to the next, and turns put both servers in the same
//! minutes. Each row also gives the server's CPU time per request (its processes and their
//! children, from `/proc`), which moves far less than the throughput.
//!
//! `feeds-bench [--seconds 10] [--connections 32] [--rounds 1] [--only ROW] [--dir DIR]`;
//! needs `wrk`, `pypi-server`
//! (pip install pypiserver), verdaccio (`--verdaccio PATH` to its bin, installed with npm) and
//! `nginx` on the PATH. Writes `DIR/results.md` and `results.json`.

use std::collections::BTreeMap;
use std::fs;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use base64::Engine as _;
use cairn_store::doc::Ecosystem;
use cairn_store::package::{self, fixtures, DigestingReader, PackageFormat};
use cairn_store::{NewFile, NewPackage, Store, StoreOptions};
use clap::Parser;
use serde::Serialize;

#[derive(Parser, Debug)]
#[command(about = "Cairn's feed server against pypiserver, verdaccio and nginx, on loopback")]
struct Args {
    /// Seconds of load per measurement.
    #[arg(long, default_value_t = 10)]
    seconds: u64,
    /// Concurrent connections.
    #[arg(long, default_value_t = 32)]
    connections: u32,
    /// Where instances and results go.
    #[arg(long, default_value = "bench-scratch/feeds")]
    dir: PathBuf,
    /// verdaccio's executable.
    #[arg(long, default_value = "/opt/verdaccio/node_modules/.bin/verdaccio")]
    verdaccio: PathBuf,
    /// Projects in the PyPI feed (one wheel each).
    #[arg(long, default_value_t = 200)]
    projects: usize,
    /// Only the rows whose measurement names this (`raw`, `npm`, `wheel`...); the servers no
    /// chosen row uses are not started.
    #[arg(long)]
    only: Option<String>,
    /// Measurements of each row: Cairn and the other server take turns, and the table gives
    /// each figure's median and the median of the rounds' ratios (with their range).
    #[arg(long, default_value_t = 1)]
    rounds: usize,
}

impl Args {
    fn chosen(&self, what: &str) -> bool {
        self.only
            .as_ref()
            .is_none_or(|o| what.to_lowercase().contains(&o.to_lowercase()))
    }
}

use cairn_benches::Proc;

fn free_port() -> Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// Waits (at most 60 s) until `port` answers `path` with 200.
fn wait_ready(port: u16, path: &str) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(60);
    while Instant::now() < deadline {
        if let Ok(mut s) = TcpStream::connect(("127.0.0.1", port)) {
            let _ = write!(
                s,
                "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
            );
            let mut head = [0u8; 12];
            if s.read_exact(&mut head).is_ok()
                && head.starts_with(b"HTTP/1.")
                && &head[8..] == b" 200"
            {
                return Ok(());
            }
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    bail!("nothing answered 200 on port {port} for {path}")
}

#[derive(Debug, Clone, Serialize)]
struct Measured {
    what: String,
    server: String,
    url: String,
    requests_per_s: f64,
    mib_per_s: f64,
    p50_ms: f64,
    p99_ms: f64,
    errors: u64,
    /// The server's CPU time (its processes and their children) per request, microseconds.
    cpu_us_per_request: f64,
    /// Per round, Cairn's figure over this server's (empty for Cairn's own rows).
    round_ratios: Vec<f64>,
}

/// The unit of `/proc/PID/stat`'s times: Linux reports them in 1/100 s on every architecture
/// it runs on (`USER_HZ`, what `getconf CLK_TCK` prints).
const USER_HZ: f64 = 100.0;

/// CPU time used so far, in clock ticks, by process `pid` and its children.
fn cpu_ticks(pid: u32) -> u64 {
    let ticks_of = |stat: &str| -> Option<(u32, u64)> {
        // The fields after the command name: state, ppid, ... utime is the 14th field.
        let rest = &stat[stat.rfind(')')? + 2..];
        let f: Vec<&str> = rest.split_whitespace().collect();
        let ppid = f.get(1)?.parse().ok()?;
        let ticks = f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?;
        Some((ppid, ticks))
    };
    let mut total = 0;
    let Ok(dir) = fs::read_dir("/proc") else {
        return 0;
    };
    for e in dir.flatten() {
        let Some(p) = e.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) else {
            continue;
        };
        let Ok(stat) = fs::read_to_string(e.path().join("stat")) else {
            continue;
        };
        if let Some((ppid, ticks)) = ticks_of(&stat) {
            if p == pid || ppid == pid {
                total += ticks;
            }
        }
    }
    total
}

fn parse_ms(s: &str) -> Option<f64> {
    let s = s.trim();
    let (num, factor) = if let Some(v) = s.strip_suffix("us") {
        (v, 0.001)
    } else if let Some(v) = s.strip_suffix("ms") {
        (v, 1.0)
    } else if let Some(v) = s.strip_suffix('s') {
        (v, 1000.0)
    } else {
        (s, 1.0)
    };
    num.parse::<f64>().ok().map(|v| v * factor)
}

fn parse_size(s: &str) -> Option<f64> {
    let s = s.trim();
    for (suffix, f) in [
        ("GB", 1024.0),
        ("MB", 1.0),
        ("KB", 1.0 / 1024.0),
        ("B", 1.0 / 1048576.0),
    ] {
        if let Some(v) = s.strip_suffix(suffix) {
            return v.parse::<f64>().ok().map(|v| v * f);
        }
    }
    None
}

/// Runs wrk against `url` and reads its summary.
fn wrk(
    args: &Args,
    what: &str,
    (server, pid): (&str, u32),
    url: &str,
    headers: &[&str],
) -> Result<Measured> {
    let cpu_before = cpu_ticks(pid);
    let mut c = Command::new("wrk");
    c.args(["-t2", "-c", &args.connections.to_string(), "-d"])
        .arg(format!("{}s", args.seconds))
        .arg("--latency");
    for h in headers {
        c.args(["-H", h]);
    }
    let out = c
        .arg(url)
        .output()
        .context("running wrk (apt-get install wrk)")?;
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let field = |prefix: &str| {
        text.lines()
            .find(|l| l.trim_start().starts_with(prefix))
            .map(|l| l.trim_start()[prefix.len()..].trim().to_owned())
    };
    let rps = field("Requests/sec:")
        .and_then(|v| v.parse().ok())
        .ok_or_else(|| anyhow!("wrk printed no Requests/sec:\n{text}"))?;
    let mib = field("Transfer/sec:")
        .and_then(|v| parse_size(&v))
        .unwrap_or(0.0);
    let pct = |p: &str| {
        text.lines()
            .find(|l| l.trim_start().starts_with(p))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(parse_ms)
            .unwrap_or(f64::NAN)
    };
    let non2xx = field("Non-2xx or 3xx responses:")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let cpu_s = cpu_ticks(pid).saturating_sub(cpu_before) as f64 / USER_HZ;
    let requests = rps * args.seconds as f64;
    let m = Measured {
        what: what.into(),
        server: server.into(),
        url: url.into(),
        requests_per_s: rps,
        mib_per_s: mib,
        p50_ms: pct("50%"),
        p99_ms: pct("99%"),
        errors: non2xx,
        cpu_us_per_request: cpu_s * 1e6 / requests.max(1.0),
        round_ratios: Vec::new(),
    };
    eprintln!(
        "feeds-bench: {what} {server}: {:.0} req/s, {:.1} MiB/s, p99 {:.2} ms, {} non-2xx, {:.0} us CPU per request",
        m.requests_per_s, m.mib_per_s, m.p99_ms, m.errors, m.cpu_us_per_request
    );
    Ok(m)
}

fn store_file(store: &Store, ecosystem: Ecosystem, name: &str, bytes: &[u8]) -> Result<NewFile> {
    let mut reader = DigestingReader::new(bytes, ecosystem);
    let stored = store.put_blob(&mut reader)?;
    Ok(NewFile {
        name: name.into(),
        blob: stored.hash,
        size: stored.size,
        digests: reader.finish(),
    })
}

/// A wheel of about `size` bytes (a payload file of seeded bytes, stored uncompressed).
fn wheel(name: &str, version: &str, size: usize) -> Result<Vec<u8>> {
    let mut pad = vec![0u8; size];
    cairn_benches::fill_bytes(7, &mut pad);
    Ok(cairn_store::package::fixtures::wheel_with_payload(
        name,
        version,
        &[],
        &pad,
    ))
}

fn main() -> Result<()> {
    let args = Args::parse();
    let root = cairn_benches::fresh_dir(&args.dir)?;
    let cairn_bin = std::env::current_exe()?.with_file_name("cairn");

    // The packages: one wheel per project (the middle one 1 MiB), npm versions, a raw file.
    let big = args.projects / 2;
    let wheels: Vec<(String, String, Vec<u8>)> = (0..args.projects)
        .map(|i| {
            let name = format!("proj-{i:04}");
            let size = if i == big { 1 << 20 } else { 2048 };
            let file = format!("{}-1.0.0-py3-none-any.whl", name.replace('-', "_"));
            Ok((name.clone(), file, wheel(&name, "1.0.0", size)?))
        })
        .collect::<Result<_>>()?;
    let npm_versions: Vec<(String, Vec<u8>)> = (0..20)
        .map(|i| {
            let v = format!("1.0.{i}");
            (v.clone(), fixtures::npm_tarball("bench-pkg", &v))
        })
        .collect();
    let mut raw = vec![0u8; 1 << 20];
    cairn_benches::fill_bytes(11, &mut raw);

    // Cairn.
    let cairn_dir = root.join("cairn");
    let status = Command::new(&cairn_bin)
        .arg("--data-dir")
        .arg(&cairn_dir)
        .arg("init")
        .status()?;
    anyhow::ensure!(status.success(), "cairn init failed");
    {
        let store = Store::open(&cairn_dir, StoreOptions::default())?;
        store.create_feed("pypi", Ecosystem::Pypi)?;
        store.create_feed("npm", Ecosystem::Npm)?;
        store.create_feed("files", Ecosystem::Raw)?;
        let mut pkgs = Vec::new();
        for (name, file, bytes) in &wheels {
            let info = package::inspect(PackageFormat::Wheel, std::io::Cursor::new(bytes))?;
            let meta = package::wheel_metadata(std::io::Cursor::new(bytes))?;
            pkgs.push(NewPackage {
                name: name.clone(),
                version: "1.0.0".into(),
                files: vec![
                    store_file(&store, Ecosystem::Pypi, file, bytes)?,
                    store_file(
                        &store,
                        Ecosystem::Pypi,
                        &format!("{file}.metadata"),
                        meta.as_bytes(),
                    )?,
                ],
                metadata: info.metadata,
            });
        }
        store.publish_many("pypi", pkgs)?;
        for (v, tgz) in &npm_versions {
            let info = package::inspect(PackageFormat::NpmTarball, std::io::Cursor::new(tgz))?;
            store.publish(
                "npm",
                NewPackage {
                    name: "bench-pkg".into(),
                    version: v.clone(),
                    files: vec![store_file(
                        &store,
                        Ecosystem::Npm,
                        &format!("bench-pkg-{v}.tgz"),
                        tgz,
                    )?],
                    metadata: info.metadata,
                },
            )?;
        }
        store.publish(
            "files",
            NewPackage {
                name: "blob".into(),
                version: "1".into(),
                files: vec![store_file(&store, Ecosystem::Raw, "1mib.bin", &raw)?],
                metadata: BTreeMap::new(),
            },
        )?;
    }
    let cairn_port = free_port()?;
    fs::write(
        cairn_dir.join("cairn.toml"),
        format!(
            "[sync]\nlisten = \"127.0.0.1:0\"\n\n[http]\nlisten = \"127.0.0.1:{cairn_port}\"\n"
        ),
    )?;
    let _cairn = Proc(
        Command::new(&cairn_bin)
            .arg("--data-dir")
            .arg(&cairn_dir)
            .arg("serve")
            .env("CAIRN_LOG", "warn")
            .stdout(Stdio::null())
            .spawn()?,
    );
    wait_ready(cairn_port, "/healthz")?;

    // pypiserver, with the same wheels.
    let pypi_dir = root.join("pypiserver");
    fs::create_dir_all(&pypi_dir)?;
    for (_, file, bytes) in &wheels {
        fs::write(pypi_dir.join(file), bytes)?;
    }
    let pypi_port = free_port()?;
    let pypi_wanted = args.chosen("PyPI simple page") || args.chosen("PyPI 1 MiB wheel");
    let _pypi = pypi_wanted.then(|| -> Result<Proc> {
        let p = Proc(
            Command::new("pypi-server")
                .args([
                    "run",
                    "-p",
                    &pypi_port.to_string(),
                    "-i",
                    "127.0.0.1",
                    "-a",
                    ".",
                    "-P",
                    ".",
                ])
                .arg(&pypi_dir)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .context("starting pypi-server (pip install pypiserver)")?,
        );
        wait_ready(pypi_port, "/simple/")?;
        Ok(p)
    });
    let _pypi = _pypi.transpose()?;

    // verdaccio, with the same npm versions published through its own API.
    let v_dir = root.join("verdaccio");
    fs::create_dir_all(v_dir.join("storage"))?;
    let v_port = free_port()?;
    fs::write(
        v_dir.join("config.yaml"),
        format!(
            "storage: {}\nauth:\n  htpasswd:\n    file: {}\n    max_users: -1\nuplinks: {{}}\npackages:\n  '**':\n    access: $all\n    publish: $all\n    unpublish: $all\nlisten: 127.0.0.1:{v_port}\nlog: {{ type: stdout, format: pretty, level: fatal }}\nmax_body_size: 100mb\n",
            v_dir.join("storage").display(),
            v_dir.join("htpasswd").display()
        ),
    )?;
    let npm_wanted = args.chosen("npm packument") || args.chosen("npm tarball");
    let _verdaccio = npm_wanted.then(|| -> Result<Proc> {
        let p = Proc(
            Command::new(&args.verdaccio)
                .arg("--config")
                .arg(v_dir.join("config.yaml"))
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .context("starting verdaccio")?,
        );
        wait_ready(v_port, "/-/ping")?;
        for (v, tgz) in &npm_versions {
            publish_to_verdaccio(v_port, "bench-pkg", v, tgz)?;
        }
        Ok(p)
    });
    let _verdaccio = _verdaccio.transpose()?;

    // nginx, serving the raw file from disk.
    let ng_dir = root.join("nginx");
    fs::create_dir_all(ng_dir.join("html"))?;
    fs::write(ng_dir.join("html/1mib.bin"), &raw)?;
    let ng_port = free_port()?;
    fs::write(
        ng_dir.join("nginx.conf"),
        format!(
            "worker_processes 2;\npid {pid};\nerror_log {err} error;\nevents {{ worker_connections 1024; }}\nhttp {{\n  access_log off;\n  sendfile on;\n  tcp_nopush on;\n  keepalive_requests 100000;\n  client_body_temp_path {tmp};\n  proxy_temp_path {tmp};\n  fastcgi_temp_path {tmp};\n  uwsgi_temp_path {tmp};\n  scgi_temp_path {tmp};\n  server {{ listen 127.0.0.1:{ng_port}; root {root}; }}\n}}\n",
            pid = ng_dir.join("nginx.pid").display(),
            err = ng_dir.join("error.log").display(),
            tmp = ng_dir.display(),
            root = ng_dir.join("html").display(),
        ),
    )?;
    let _nginx = Proc(
        Command::new("nginx")
            .arg("-c")
            .arg(ng_dir.join("nginx.conf"))
            .args(["-g", "daemon off;"])
            .spawn()
            .context("starting nginx (apt-get install nginx-light)")?,
    );
    wait_ready(ng_port, "/1mib.bin")?;

    // The set-up's writes reach the disk before any measurement, so that no server is
    // measured while the kernel writes them back.
    Command::new("sync").status()?;
    let page = format!("proj-{:04}", args.projects / 3);
    let (big_name, big_file, _) = &wheels[big];
    let c = format!("http://127.0.0.1:{cairn_port}");
    let p = format!("http://127.0.0.1:{pypi_port}");
    let vd = format!("http://127.0.0.1:{v_port}");
    let ng = format!("http://127.0.0.1:{ng_port}");
    let html = "Accept: text/html";
    let table = [
        (
            "PyPI simple page",
            "cairn",
            format!("{c}/feeds/pypi/simple/{page}/"),
            vec![html],
        ),
        (
            "PyPI simple page",
            "pypiserver",
            format!("{p}/simple/{page}/"),
            vec![html],
        ),
        (
            "PyPI 1 MiB wheel",
            "cairn",
            format!("{c}/feeds/pypi/files/{big_name}/1.0.0/{big_file}"),
            vec![],
        ),
        (
            "PyPI 1 MiB wheel",
            "pypiserver",
            format!("{p}/packages/{big_file}"),
            vec![],
        ),
        (
            "npm packument",
            "cairn",
            format!("{c}/feeds/npm/bench-pkg"),
            vec!["Accept: application/json"],
        ),
        (
            "npm packument",
            "verdaccio",
            format!("{vd}/bench-pkg"),
            vec!["Accept: application/json"],
        ),
        (
            "npm tarball",
            "cairn",
            format!("{c}/feeds/npm/bench-pkg/-/bench-pkg-1.0.7.tgz"),
            vec![],
        ),
        (
            "npm tarball",
            "verdaccio",
            format!("{vd}/bench-pkg/-/bench-pkg-1.0.7.tgz"),
            vec![],
        ),
        (
            "raw 1 MiB file",
            "cairn",
            format!("{c}/feeds/files/blob/1/1mib.bin"),
            vec![],
        ),
        ("raw 1 MiB file", "nginx", format!("{ng}/1mib.bin"), vec![]),
    ];
    let pid = |server: &str| match server {
        "cairn" => _cairn.0.id(),
        "pypiserver" => _pypi.as_ref().map_or(0, |p| p.0.id()),
        "verdaccio" => _verdaccio.as_ref().map_or(0, |p| p.0.id()),
        _ => _nginx.0.id(),
    };
    // Each round measures every chosen row, Cairn and the other server in turn, so that both
    // see the same state of the machine.
    let mut samples: Vec<Vec<Measured>> = Vec::new();
    for _ in 0..args.rounds.max(1) {
        let mut round = Vec::new();
        for (what, server, url, headers) in &table {
            if args.chosen(what) {
                round.push(wrk(&args, what, (server, pid(server)), url, headers)?);
            }
        }
        samples.push(round);
    }
    let rows = medians(&samples);
    write_results(&root, &args, &rows)
}

/// `npm publish` as verdaccio receives it: the version manifest and the tarball in base64.
fn publish_to_verdaccio(port: u16, name: &str, version: &str, tgz: &[u8]) -> Result<()> {
    use sha2::Digest as _;
    let sha512 = sha2::Sha512::digest(tgz);
    let sha1 = sha1::Sha1::digest(tgz);
    let b64 = |b: &[u8]| base64::engine::general_purpose::STANDARD.encode(b);
    let file = format!("{name}-{version}.tgz");
    let body = serde_json::json!({
        "_id": name, "name": name, "dist-tags": { "latest": version },
        "versions": { version: {
            "name": name, "version": version, "main": "index.js",
            "dist": {
                "integrity": format!("sha512-{}", b64(&sha512)),
                "shasum": hex_lower(&sha1),
                "tarball": format!("http://127.0.0.1:{port}/{name}/-/{file}"),
            },
        }},
        "_attachments": { file: { "content_type": "application/octet-stream", "data": b64(tgz), "length": tgz.len() } },
    })
    .to_string();
    let mut s = TcpStream::connect(("127.0.0.1", port))?;
    write!(
        s,
        "PUT /{name} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )?;
    let mut status = String::new();
    BufReader::new(s).read_line(&mut status)?;
    anyhow::ensure!(
        status.contains(" 201") || status.contains(" 200"),
        "verdaccio refused {name} {version}: {status}"
    );
    Ok(())
}

fn hex_lower(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// The median of `xs` (the mean of the middle two of an even count).
fn median(mut xs: Vec<f64>) -> f64 {
    xs.sort_by(f64::total_cmp);
    match xs.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => xs[n / 2],
        n => (xs[n / 2 - 1] + xs[n / 2]) / 2.0,
    }
}

/// Whether a row compares bytes per second (downloads) rather than requests per second.
fn by_throughput(what: &str) -> bool {
    what.contains("MiB") || what.contains("tarball")
}

/// One row per measurement, each figure the median over the rounds, with each round's ratio
/// of Cairn's figure to the other server's kept on the other server's row.
fn medians(samples: &[Vec<Measured>]) -> Vec<Measured> {
    let Some(first) = samples.first() else {
        return Vec::new();
    };
    let mut rows = Vec::new();
    for (i, m) in first.iter().enumerate() {
        let all: Vec<&Measured> = samples.iter().filter_map(|r| r.get(i)).collect();
        let med = |f: fn(&Measured) -> f64| median(all.iter().map(|m| f(m)).collect());
        let cairn = first
            .iter()
            .position(|c| c.what == m.what && c.server == "cairn");
        let round_ratios = match cairn {
            Some(c) if m.server != "cairn" => samples
                .iter()
                .filter_map(|r| {
                    let (c, o) = (r.get(c)?, r.get(i)?);
                    Some(if by_throughput(&m.what) {
                        c.mib_per_s / o.mib_per_s.max(1e-9)
                    } else {
                        c.requests_per_s / o.requests_per_s.max(1e-9)
                    })
                })
                .collect(),
            _ => Vec::new(),
        };
        rows.push(Measured {
            what: m.what.clone(),
            server: m.server.clone(),
            url: m.url.clone(),
            requests_per_s: med(|m| m.requests_per_s),
            mib_per_s: med(|m| m.mib_per_s),
            p50_ms: med(|m| m.p50_ms),
            p99_ms: med(|m| m.p99_ms),
            errors: all.iter().map(|m| m.errors).sum(),
            cpu_us_per_request: med(|m| m.cpu_us_per_request),
            round_ratios,
        });
    }
    rows
}

fn write_results(root: &Path, args: &Args, rows: &[Measured]) -> Result<()> {
    fs::write(
        root.join("results.json"),
        serde_json::to_string_pretty(rows)?,
    )?;
    let rounds = args.rounds.max(1);
    let mut md = format!(
        "wrk -t2 -c{} -d{}s --latency, loopback, {rounds} round(s) (medians)\n\n| what | server | requests/s | MiB/s | p50 ms | p99 ms | non-2xx | CPU us/request | Cairn against it |\n| --- | --- | --- | --- | --- | --- | --- | --- | --- |\n",
        args.connections, args.seconds
    );
    for r in rows {
        let ratio = if r.round_ratios.is_empty() {
            String::new()
        } else {
            let unit = if by_throughput(&r.what) {
                "the throughput"
            } else {
                "the requests/s"
            };
            let lo = r.round_ratios.iter().copied().fold(f64::INFINITY, f64::min);
            let hi = r.round_ratios.iter().copied().fold(0.0, f64::max);
            let mut text = format!("{:.2}x {unit}", median(r.round_ratios.clone()));
            if r.round_ratios.len() > 1 {
                text.push_str(&format!(" (rounds {lo:.2}-{hi:.2}x)"));
            }
            text
        };
        md.push_str(&format!(
            "| {} | {} | {:.0} | {:.1} | {:.2} | {:.2} | {} | {:.0} | {} |\n",
            r.what,
            r.server,
            r.requests_per_s,
            r.mib_per_s,
            r.p50_ms,
            r.p99_ms,
            r.errors,
            r.cpu_us_per_request,
            ratio
        ));
    }
    fs::write(root.join("results.md"), &md)?;
    print!("{md}");
    Ok(())
}
