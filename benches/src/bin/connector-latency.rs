//! First-request latency through a connector against a direct request to the upstream: what
//! pip does for one package (the project page, then the file), timed three ways per package:
//! straight from the upstream (pypiserver on loopback), through a hub's connector the first
//! time (the hub asks the upstream, fetches the file, checks its sha256, stores and signs it,
//! then serves it), and through the hub again (served from its store).
//!
//! Needs `pypiserver` importable by the PATH's `python3`.
//!
//! `connector-latency --packages 20 --size-kib 1024`.

use std::io::{Read, Write};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, ensure, Context, Result};
use cairn_benches::instance::Inst;
use cairn_benches::{median, sibling, Proc};
use clap::Parser;

#[derive(Parser, Debug)]
#[command(about = "first-request latency through a connector against the upstream directly")]
struct Args {
    /// Packages to measure (one wheel each).
    #[arg(long, default_value_t = 20)]
    packages: usize,
    /// Size of each wheel's payload in KiB.
    #[arg(long, default_value_t = 1024)]
    size_kib: usize,
    /// Where instances and results go (emptied first).
    #[arg(long, default_value = "bench-scratch/connector-latency")]
    dir: PathBuf,
}

/// One GET: the status and the body.
fn get(addr: &str, path: &str) -> Result<(u16, Vec<u8>)> {
    let mut s = std::net::TcpStream::connect(addr)?;
    s.set_read_timeout(Some(Duration::from_secs(120)))?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nAccept: text/html\r\nConnection: close\r\n\r\n"
    )?;
    let mut bytes = Vec::new();
    s.read_to_end(&mut bytes)?;
    let split = bytes
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(|| anyhow!("no HTTP answer from {addr}{path}"))?;
    let head = String::from_utf8_lossy(&bytes[..split]);
    let code = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    Ok((code, bytes[split + 4..].to_vec()))
}

/// What pip does for one package: the project page, then the file it links to. The time of
/// each, and the file's size.
fn install_like(addr: &str, index: &str, project: &str) -> Result<(Duration, Duration, usize)> {
    let start = Instant::now();
    let (code, page) = get(addr, &format!("{index}{project}/"))?;
    ensure!(code == 200, "{addr}{index}{project}/: {code}");
    let page_time = start.elapsed();
    let page = String::from_utf8_lossy(&page);
    let href = page
        .split("href=\"")
        .nth(1)
        .and_then(|h| h.split(['"', '#']).next())
        .ok_or_else(|| anyhow!("no link on {project}'s page: {page}"))?
        .replace("&amp;", "&");
    let path = if href.starts_with('/') {
        href
    } else {
        // pypiserver links relative to the page.
        format!("{index}{project}/{href}")
    };
    let start = Instant::now();
    let (code, file) = get(addr, &path)?;
    ensure!(code == 200, "{addr}{path}: {code}");
    Ok((page_time, start.elapsed(), file.len()))
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn main() -> Result<()> {
    let args = Args::parse();
    let cairn = sibling("cairn")?;
    let dir = cairn_benches::fresh_dir(&args.dir)?;
    let upstream = dir.join("upstream");
    std::fs::create_dir_all(&upstream)?;
    let script = r#"
import os, sys, zipfile
out, count, size = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
for i in range(count):
    name = f"lat_pkg_{i}"
    with zipfile.ZipFile(os.path.join(out, f"{name}-1.0.0-py3-none-any.whl"), "w") as z:
        z.writestr(f"{name}/__init__.py", "VALUE = 1\n")
        z.writestr(f"{name}/payload.bin", os.urandom(size))
        z.writestr(f"{name}-1.0.0.dist-info/METADATA", f"Metadata-Version: 2.1\nName: lat-pkg-{i}\nVersion: 1.0.0\n")
        z.writestr(f"{name}-1.0.0.dist-info/WHEEL", "Wheel-Version: 1.0\nGenerator: bench\nRoot-Is-Purelib: true\nTag: py3-none-any\n")
        z.writestr(f"{name}-1.0.0.dist-info/RECORD", "")
"#;
    let status = Command::new("python3")
        .args(["-c", script])
        .arg(&upstream)
        .arg(args.packages.to_string())
        .arg((args.size_kib * 1024).to_string())
        .status()?;
    ensure!(status.success(), "building the wheels");
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let up_addr = format!("127.0.0.1:{port}");
    let _pypiserver = Proc(
        Command::new("python3")
            .args(["-m", "pypiserver", "run", "-i", "127.0.0.1", "-p"])
            .arg(port.to_string())
            .args(["--disable-fallback", "-a", ".", "-P", "."])
            .arg(&upstream)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("starting pypiserver (pip install pypiserver)")?,
    );
    let started = Instant::now();
    while get(&up_addr, "/simple/").map(|(c, _)| c).unwrap_or(0) != 200 {
        if started.elapsed() > Duration::from_secs(60) {
            bail!("pypiserver did not answer within 60 s");
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    let hub = Inst::init(&cairn, &dir.join("hub"), "py", "pypi")?;
    hub.config(
        "127.0.0.1:0",
        "127.0.0.1:0",
        &format!("[[connector]]\nfeed = \"py\"\nupstream = \"http://{up_addr}/simple/\"\n"),
    )?;
    let running = hub.serve(&cairn, None)?;

    let mut direct = Vec::new();
    let mut first = Vec::new();
    let mut again = Vec::new();
    let mut size = 0;
    for i in 0..args.packages {
        let project = format!("lat-pkg-{i}");
        let (p, f, n) = install_like(&up_addr, "/simple/", &project)?;
        direct.push((p, f));
        size = n;
        let (p, f, n) = install_like(&running.http, "/feeds/py/simple/", &project)?;
        ensure!(n == size, "the hub served {n} bytes, the upstream {size}");
        first.push((p, f));
        let (p, f, _) = install_like(&running.http, "/feeds/py/simple/", &project)?;
        again.push((p, f));
    }
    let row = |what: &str, s: &[(Duration, Duration)]| {
        let page = median(&s.iter().map(|x| x.0).collect::<Vec<_>>());
        let file = median(&s.iter().map(|x| x.1).collect::<Vec<_>>());
        let total = median(&s.iter().map(|x| x.0 + x.1).collect::<Vec<_>>());
        (
            format!(
                "| {what} | {:.1} | {:.1} | {:.1} |",
                ms(page),
                ms(file),
                ms(total)
            ),
            total,
        )
    };
    let (d_row, d) = row("upstream directly", &direct);
    let (f_row, f) = row("through the connector, first request", &first);
    let (a_row, a) = row("through the connector, cached", &again);
    let report = format!(
        "connector-latency: {} packages, one wheel of {} bytes each, pypiserver on loopback; medians in ms\n\n\
| path | project page | file | both |\n| --- | --- | --- | --- |\n{d_row}\n{f_row}\n{a_row}\n\n\
first request / direct: {:.2}x; cached / direct: {:.2}x\n",
        args.packages,
        size,
        f.as_secs_f64() / d.as_secs_f64(),
        a.as_secs_f64() / d.as_secs_f64(),
    );
    print!("{report}");
    std::fs::write(dir.join("report.md"), &report)?;
    drop(running);
    Ok(())
}
