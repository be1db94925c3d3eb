//! A real Garage (S3-compatible object store) on loopback, for tests and benchmarks: one node,
//! or a cluster whose replication factor is its node count. Processes are stopped on drop.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

/// The access key the harness imports (Garage key ids are `GK` and 24 hex digits).
pub const KEY_ID: &str = "GK0123456789abcdef01234567";
/// Its secret (64 hex digits).
pub const SECRET: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";
/// The signing region the harness configures.
pub const REGION: &str = "garage";

/// The `garage` binary: `$GARAGE`, else `garage` on the PATH, else `~/.cargo/bin/garage`.
pub fn garage_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("GARAGE") {
        return PathBuf::from(p);
    }
    if let Some(path) = std::env::var_os("PATH") {
        for dir in std::env::split_paths(&path) {
            let p = dir.join("garage");
            if p.is_file() {
                return p;
            }
        }
    }
    let home = std::env::var_os("HOME").unwrap_or_default();
    PathBuf::from(home).join(".cargo/bin/garage")
}

fn free_port() -> Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// One Garage node.
#[derive(Debug)]
pub struct Node {
    config: PathBuf,
    log: PathBuf,
    /// Port of its S3 API.
    pub s3_port: u16,
    rpc_port: u16,
    child: Option<Child>,
}

impl Node {
    /// The running process's id.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
    }

    /// `http://127.0.0.1:PORT`.
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.s3_port)
    }
}

/// A running Garage cluster.
#[derive(Debug)]
pub struct Garage {
    dir: PathBuf,
    /// The nodes, node 0 first.
    pub nodes: Vec<Node>,
}

impl Garage {
    /// Starts `count` nodes under `dir` (which it creates), with replication factor `count`,
    /// a layout of all of them, and the harness key imported. Waits until the cluster is up.
    pub fn start(dir: &Path, count: usize) -> Result<Garage> {
        std::fs::create_dir_all(dir)?;
        let secret: String = (0..32)
            .map(|i| format!("{:02x}", (i * 37 + 11) % 256))
            .collect();
        let mut nodes = Vec::new();
        for i in 0..count {
            let (s3_port, rpc_port, admin_port) = (free_port()?, free_port()?, free_port()?);
            let node_dir = dir.join(format!("node{i}"));
            std::fs::create_dir_all(&node_dir)?;
            let config = node_dir.join("garage.toml");
            std::fs::write(
                &config,
                format!(
                    "metadata_dir = \"{meta}\"\ndata_dir = \"{data}\"\ndb_engine = \"lmdb\"\n\
                     replication_factor = {count}\n\
                     rpc_bind_addr = \"127.0.0.1:{rpc_port}\"\nrpc_public_addr = \"127.0.0.1:{rpc_port}\"\n\
                     rpc_secret = \"{secret}\"\n\n\
                     [s3_api]\ns3_region = \"{REGION}\"\napi_bind_addr = \"127.0.0.1:{s3_port}\"\n\
                     root_domain = \".s3.garage.localhost\"\n\n\
                     [admin]\napi_bind_addr = \"127.0.0.1:{admin_port}\"\n",
                    meta = node_dir.join("meta").display(),
                    data = node_dir.join("data").display(),
                ),
            )?;
            nodes.push(Node {
                config,
                log: node_dir.join("garage.log"),
                s3_port,
                rpc_port,
                child: None,
            });
        }
        let mut garage = Garage {
            dir: dir.to_owned(),
            nodes,
        };
        for i in 0..count {
            garage.start_node(i)?;
        }
        let ids: Vec<String> = (0..count)
            .map(|i| garage.node_id(i))
            .collect::<Result<_>>()?;
        for (i, id) in ids.iter().enumerate().skip(1) {
            garage.cli(
                0,
                &[
                    "node",
                    "connect",
                    &format!("{id}@127.0.0.1:{}", garage.nodes[i].rpc_port),
                ],
            )?;
        }
        for id in &ids {
            garage.cli(
                0,
                &["layout", "assign", "-z", "dc1", "-c", "1GB", &id[..16]],
            )?;
        }
        garage.cli(0, &["layout", "apply", "--version", "1"])?;
        garage.cli(
            0,
            &["key", "import", "--yes", "-n", "cairn", KEY_ID, SECRET],
        )?;
        // The layout takes a moment to reach every node.
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            match garage.cli(0, &["bucket", "create", "cairn-probe"]) {
                Ok(_) => break,
                Err(e) if Instant::now() > deadline => return Err(e),
                Err(_) => std::thread::sleep(Duration::from_millis(300)),
            }
        }
        garage.cli(0, &["bucket", "delete", "--yes", "cairn-probe"])?;
        Ok(garage)
    }

    /// Creates a bucket the harness key may read and write.
    pub fn create_bucket(&self, name: &str) -> Result<()> {
        self.cli(0, &["bucket", "create", name])?;
        self.cli(
            0,
            &[
                "bucket", "allow", "--read", "--write", "--owner", name, "--key", KEY_ID,
            ],
        )?;
        Ok(())
    }

    /// Runs `garage ARGS` against node `i`; its stdout.
    pub fn cli(&self, i: usize, args: &[&str]) -> Result<String> {
        let out = Command::new(garage_bin())
            .arg("-c")
            .arg(&self.nodes[i].config)
            .args(args)
            .output()
            .with_context(|| {
                format!(
                    "running {} (install it with `cargo install garage --locked`)",
                    garage_bin().display()
                )
            })?;
        if !out.status.success() {
            bail!(
                "garage {}: {}{}",
                args.join(" "),
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    fn node_id(&self, i: usize) -> Result<String> {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            match self.cli(i, &["node", "id", "-q"]) {
                Ok(out) => {
                    let id = out.trim().split('@').next().unwrap_or_default().to_owned();
                    if id.len() >= 16 {
                        return Ok(id);
                    }
                    bail!("garage node id printed {out:?}");
                }
                Err(e) if Instant::now() > deadline => return Err(e),
                Err(_) => std::thread::sleep(Duration::from_millis(200)),
            }
        }
    }

    /// Starts (or restarts) node `i` and waits until its S3 port accepts connections.
    pub fn start_node(&mut self, i: usize) -> Result<()> {
        let node = &mut self.nodes[i];
        if node.child.is_some() {
            return Ok(());
        }
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&node.log)?;
        let child = Command::new(garage_bin())
            .arg("-c")
            .arg(&node.config)
            .arg("server")
            .env("RUST_LOG", "garage=warn")
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .with_context(|| {
                format!(
                    "starting {} (install it with `cargo install garage --locked`)",
                    garage_bin().display()
                )
            })?;
        node.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(30);
        while std::net::TcpStream::connect(("127.0.0.1", node.s3_port)).is_err() {
            if Instant::now() > deadline {
                bail!(
                    "garage node {i} did not listen within 30 s; see {}",
                    node.log.display()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(())
    }

    /// Stops node `i` with SIGKILL (a node that dies, not one that leaves).
    pub fn kill_node(&mut self, i: usize) {
        if let Some(mut child) = self.nodes[i].child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// A credentials file for the harness key, in the AWS format `[blobs.s3]` reads.
    pub fn credentials_file(&self) -> Result<PathBuf> {
        let path = self.dir.join("credentials");
        std::fs::write(
            &path,
            format!("[default]\naws_access_key_id = {KEY_ID}\naws_secret_access_key = {SECRET}\n"),
        )?;
        Ok(path)
    }

    /// The `[blobs]` section of a `cairn.toml` that keeps blobs in `bucket` under `prefix`,
    /// through node `node`.
    pub fn cairn_config(&self, node: usize, bucket: &str, prefix: &str) -> Result<String> {
        Ok(format!(
            "[blobs]\nbackend = \"s3\"\n\n[blobs.s3]\nendpoint = \"{}\"\nbucket = \"{bucket}\"\nregion = \"{REGION}\"\nprefix = \"{prefix}\"\ncredentials_file = \"{}\"\ntimeout_secs = 10\nretries = 2\n",
            self.nodes[node].endpoint(),
            self.credentials_file()?.display()
        ))
    }

    /// Bytes Garage holds in node `i`'s data directory.
    pub fn data_bytes(&self, i: usize) -> u64 {
        fn walk(p: &Path) -> u64 {
            let Ok(rd) = std::fs::read_dir(p) else {
                return 0;
            };
            rd.filter_map(|e| e.ok())
                .map(|e| match e.file_type() {
                    Ok(t) if t.is_dir() => walk(&e.path()),
                    Ok(_) => e.metadata().map(|m| m.len()).unwrap_or(0),
                    Err(_) => 0,
                })
                .sum()
        }
        walk(&self.nodes[i].config.with_file_name("data"))
    }
}

impl Drop for Garage {
    fn drop(&mut self) {
        for i in 0..self.nodes.len() {
            self.kill_node(i);
        }
    }
}
