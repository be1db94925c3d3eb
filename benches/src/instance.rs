//! Real `cairn` instances for scenario runners: made with the CLI, served with `cairn serve`
//! (in a network namespace if asked), read through the admin API.

use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::{anyhow, ensure, Context, Result};

use crate::{cairn_cli, Proc};

/// An initialised data directory with one feed.
#[derive(Debug)]
pub struct Inst {
    pub dir: PathBuf,
    /// The instance's public key.
    pub key: String,
    /// An admin token's secret.
    pub admin: String,
}

/// A running `cairn serve`.
#[derive(Debug)]
pub struct Running {
    pub proc: Proc,
    /// `host:port` of its HTTP server.
    pub http: String,
}

impl Running {
    pub fn pid(&self) -> u32 {
        self.proc.0.id()
    }
}

impl Inst {
    /// `cairn init` in `dir`, a feed `feed` of type `kind`, and an admin token.
    pub fn init(cairn: &Path, dir: &Path, feed: &str, kind: &str) -> Result<Inst> {
        std::fs::create_dir_all(dir)?;
        cairn_cli(cairn, dir, &["init"])?;
        cairn_cli(cairn, dir, &["feed", "create", feed, "--type", kind])?;
        Ok(Inst {
            dir: dir.to_owned(),
            key: cairn_cli(cairn, dir, &["key", "show"])?,
            admin: cairn_cli(cairn, dir, &["token", "create", "--scope", "admin"])?,
        })
    }

    /// `cairn ARGS` on this instance; its stdout.
    pub fn cli(&self, cairn: &Path, args: &[&str]) -> Result<String> {
        cairn_cli(cairn, &self.dir, args)
    }

    /// Knows `key` as peer `name` at `addr`.
    pub fn add_peer(&self, cairn: &Path, name: &str, key: &str, addr: &str) -> Result<()> {
        self.cli(cairn, &["peer", "add", name, addr, "--key", key])?;
        Ok(())
    }

    /// Writes `cairn.toml`: QUIC on `sync`, HTTP on `http`, then `rest`.
    pub fn config(&self, sync: &str, http: &str, rest: &str) -> Result<()> {
        std::fs::write(
            self.dir.join("cairn.toml"),
            format!("[sync]\nlisten = \"{sync}\"\n\n[http]\nlisten = \"{http}\"\n\n{rest}"),
        )?;
        Ok(())
    }

    /// `cairn serve`, in network namespace `netns` if given, once it says it is serving. With
    /// `CAIRN_LOG` set in the runner's environment, its log goes to `serve.log` in its data
    /// directory.
    pub fn serve(&self, cairn: &Path, netns: Option<&str>) -> Result<Running> {
        let stderr = match std::env::var_os("CAIRN_LOG") {
            Some(_) => {
                Stdio::from(std::fs::File::create(self.dir.join("serve.log")).context("serve.log")?)
            }
            None => Stdio::null(),
        };
        let mut cmd = match netns {
            Some(ns) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", ns]).arg(cairn);
                c
            }
            None => Command::new(cairn),
        };
        let mut child = cmd
            .arg("--data-dir")
            .arg(&self.dir)
            .arg("serve")
            .stdout(Stdio::piped())
            .stderr(stderr)
            .spawn()
            .context("starting cairn serve")?;
        let waited = serving_address(&mut child, Duration::from_secs(60));
        let proc = Proc(child);
        let http = waited
            .with_context(|| format!("cairn serve in {}", self.dir.display()))?
            .trim_start_matches("http://")
            .to_owned();
        Ok(Running { proc, http })
    }
}

/// Waits (at most `limit`) for `cairn serve` (started with its stdout piped) to say it is
/// serving; the URL of its HTTP server (`http://host:port`). Its stdout is read to the end
/// on a thread of its own.
pub fn serving_address(child: &mut std::process::Child, limit: Duration) -> Result<String> {
    let stdout = child.stdout.take().ok_or_else(|| anyhow!("no stdout"))?;
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if line.starts_with("cairn serving") {
                let _ = tx.send(line);
            }
        }
    });
    let line = rx
        .recv_timeout(limit)
        .map_err(|_| anyhow!("it did not start within {} s", limit.as_secs()))?;
    Ok(line
        .split_whitespace()
        .find(|w| w.starts_with("http://"))
        .ok_or_else(|| anyhow!("no address in {line:?}"))?
        .trim_end_matches('/')
        .to_owned())
}

/// `cairn-link up --name NAME --replace --profile PROFILE` (as root), once it says it is up;
/// the link goes down when the returned process is dropped.
pub fn link_up(name: &str, profile: &str) -> Result<Proc> {
    link_up_with(name, profile, &[])
}

/// [`link_up`] with more of `cairn-link up`'s options (`--sites N` for a star).
pub fn link_up_with(name: &str, profile: &str, more: &[&str]) -> Result<Proc> {
    let mut child = Command::new(crate::sibling("cairn-link")?)
        .args(["up", "--name", name, "--replace", "--profile", profile])
        .args(more)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .context("cairn-link up (as root)")?;
    let stdout = child.stdout.take().ok_or_else(|| anyhow!("no stdout"))?;
    let proc = Proc(child);
    let mut line = String::new();
    BufReader::new(stdout).read_line(&mut line)?;
    ensure!(line.starts_with("cairn-link up"), "cairn-link: {line}");
    Ok(proc)
}

/// In a star of `cairn-link up --sites N`: the emulated address of site `i` (0-based),
/// 10.77.(1 + i/250).(1 + i%250), behind its own leg. The hub is 10.77.0.1.
pub fn star_site_addr(i: usize) -> std::net::Ipv4Addr {
    std::net::Ipv4Addr::new(10, 77, 1 + (i / 250) as u8, 1 + (i % 250) as u8)
}

/// The unshaped management address of the namespace whose emulated address is `emulated`
/// (the same host part in 10.78.0.0/16, reachable from the initial namespace).
pub fn star_mgmt_addr(emulated: std::net::Ipv4Addr) -> std::net::Ipv4Addr {
    let [_, _, c, d] = emulated.octets();
    std::net::Ipv4Addr::new(10, 78, c, d)
}

/// One plain HTTP/1.1 request; the status code and body.
pub fn http(addr: &str, method: &str, path: &str, headers: &str) -> Result<(u16, String)> {
    let mut s = std::net::TcpStream::connect(addr)?;
    s.set_read_timeout(Some(Duration::from_secs(300)))?;
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\n{headers}Content-Length: 0\r\nConnection: close\r\n\r\n"
    )?;
    let mut text = String::new();
    s.read_to_string(&mut text)?;
    let (head, body) = text
        .split_once("\r\n\r\n")
        .ok_or_else(|| anyhow!("no HTTP answer from {addr}"))?;
    let code = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    Ok((code, body.to_owned()))
}

/// One admin API call (`/api/v1/PATH`); the JSON it answers.
pub fn api(addr: &str, admin: &str, method: &str, path: &str) -> Result<serde_json::Value> {
    let (code, body) = http(
        addr,
        method,
        &format!("/api/v1/{path}"),
        &format!("Authorization: Bearer {admin}\r\n"),
    )?;
    ensure!(code == 200, "{method} {path} on {addr}: {code} {body}");
    Ok(serde_json::from_str(&body)?)
}

/// A UDP port free on loopback right now.
pub fn free_udp_port() -> Result<u16> {
    Ok(std::net::UdpSocket::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// Milliseconds since the Unix epoch.
pub fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}
