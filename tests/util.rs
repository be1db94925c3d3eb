//! Helpers for running `cairn` and reporting failures with everything needed to debug them.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

/// The `cairn` binary under test.
pub fn cairn_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_cairn"))
}

/// An instance in a temporary data directory.
pub struct Instance {
    pub dir: tempfile::TempDir,
}

impl Instance {
    /// A fresh, initialised instance.
    pub fn new() -> Instance {
        let inst = Instance {
            dir: tempfile::tempdir().expect("temp dir"),
        };
        inst.ok(&["init"]);
        inst
    }

    /// A fresh instance initialised with `config` as its `cairn.toml` (a store records where
    /// its blobs live when it is created, so `[blobs]` must be there from the start).
    pub fn with_config(config: &str) -> Instance {
        let inst = Instance {
            dir: tempfile::tempdir().expect("temp dir"),
        };
        std::fs::create_dir_all(inst.data()).unwrap();
        std::fs::write(inst.data().join("cairn.toml"), config).unwrap();
        inst.ok(&["init"]);
        inst
    }

    /// The data directory.
    pub fn data(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// A path inside the temp dir (outside the data directory).
    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// A `cairn` command on this instance.
    pub fn cmd(&self, args: &[&str]) -> Command {
        let mut c = Command::new(cairn_bin());
        c.arg("--data-dir").arg(self.data()).args(args);
        c.env_remove("CAIRN_DATA_DIR");
        c
    }

    /// Runs `cairn ARGS` and returns its output whatever the exit code.
    pub fn run(&self, args: &[&str]) -> Output {
        self.cmd(args).output().expect("spawn cairn")
    }

    /// Runs `cairn ARGS`, which must succeed; returns stdout.
    pub fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args);
        if !out.status.success() {
            panic!("{}", self.report(args, &out));
        }
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Runs `cairn ARGS`, which must fail with `code`; returns stderr.
    pub fn fails(&self, args: &[&str], code: i32) -> String {
        let out = self.run(args);
        if out.status.code() != Some(code) {
            panic!("expected exit code {code}\n{}", self.report(args, &out));
        }
        String::from_utf8_lossy(&out.stderr).into_owned()
    }

    /// Command, status, stdout, stderr and the data directory listing.
    pub fn report(&self, args: &[&str], out: &Output) -> String {
        format!(
            "command: cairn --data-dir {} {}\nstatus: {}\n--- stdout\n{}\n--- stderr\n{}\n--- data dir\n{}",
            self.data().display(),
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
            listing(&self.data()),
        )
    }

    /// Publishes `content` as the file `file` of `name` `version` in `feed` with `cairn push`
    /// (the server must not be running).
    pub fn push(&self, feed: &str, file: &str, name: &str, version: &str, content: &[u8]) {
        let dir = self.path(&format!("push-{feed}-{name}-{version}"));
        std::fs::create_dir_all(&dir).unwrap();
        let f = dir.join(file);
        std::fs::write(&f, content).unwrap();
        self.ok(&[
            "push",
            feed,
            f.to_str().unwrap(),
            "--name",
            name,
            "--version",
            version,
        ]);
    }

    /// Imports the OSV record `osv` (JSON) and blocks what it affects: a `Blocked` assessment
    /// of it, with `args` added to `cairn assessment create`; the assessment's id.
    pub fn block(&self, osv: &str, args: &[&str]) -> String {
        let id: serde_json::Value = serde_json::from_str(osv).expect("OSV JSON");
        let id = id["id"].as_str().expect("an OSV id").to_owned();
        let path = self.path(&format!("{id}.json"));
        std::fs::write(&path, osv).unwrap();
        self.ok(&["vuln", "import", path.to_str().unwrap()]);
        let mut create = vec!["assessment", "create", "--vuln", &id, "--type", "Blocked"];
        create.extend_from_slice(args);
        self.ok(&create).trim().to_owned()
    }

    /// A new token with `scopes`; its secret.
    pub fn token(&self, scopes: &[&str]) -> String {
        let mut args = vec!["token", "create"];
        for s in scopes {
            args.extend(["--scope", s]);
        }
        self.ok(&args).trim().to_owned()
    }

    /// `cairn ls FEED --json --all` parsed.
    pub fn ls(&self, feed: &str) -> Vec<serde_json::Value> {
        serde_json::from_str(&self.ok(&["ls", feed, "--json", "--all"])).expect("ls --json")
    }

    /// `cairn root FEED --json` parsed.
    pub fn root(&self, feed: &str) -> serde_json::Value {
        serde_json::from_str(&self.ok(&["root", feed, "--json"])).expect("root --json")
    }
}

/// A UDP port free on loopback now (for a `[sync] listen` a peer must know in advance).
pub fn free_udp_port() -> u16 {
    std::net::UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Writes the instance's `cairn.toml`: the QUIC endpoint on loopback `sync_port` (0: any),
/// HTTP on any loopback port, then `rest` (replications, alerts, ...).
pub fn serve_config(inst: &Instance, sync_port: u16, rest: &str) {
    std::fs::write(
        inst.data().join("cairn.toml"),
        format!("[sync]\nlisten = \"127.0.0.1:{sync_port}\"\n\n[http]\nlisten = \"127.0.0.1:0\"\n\n{rest}"),
    )
    .unwrap();
}

/// Makes `spoke` pull from `hub`: the hub knows the spoke's key as peer `spoke_name`, and the
/// spoke trusts the hub's key and knows it as peer `hub` at `127.0.0.1:port` (UDP).
pub fn peer_spoke_with_hub(hub: &Instance, spoke: &Instance, spoke_name: &str, port: u16) {
    let hub_key = hub.ok(&["key", "show"]).trim().to_owned();
    let spoke_key = spoke.ok(&["key", "show"]).trim().to_owned();
    hub.ok(&[
        "peer",
        "add",
        spoke_name,
        "127.0.0.1:1",
        "--key",
        &spoke_key,
    ]);
    spoke.ok(&["trust", "add", &hub_key]);
    spoke.ok(&[
        "peer",
        "add",
        "hub",
        &format!("127.0.0.1:{port}"),
        "--key",
        &hub_key,
    ]);
}

/// Makes `hub` a server `spoke` can pull from: a replicate token of `scope` (returned), the
/// two pinned to each other as peers (`hub` and `spoke`), the spoke trusting the hub, and the
/// hub's `cairn.toml` on a free loopback port (also returned).
pub fn hub_serving(hub: &Instance, spoke: &Instance, scope: &str) -> (String, u16) {
    let token = hub.token(&[scope]);
    let port = free_udp_port();
    peer_spoke_with_hub(hub, spoke, "spoke", port);
    serve_config(hub, port, "");
    (token, port)
}

/// A `[[replication]]` section named "pull" that pulls `feed` from `peer` with `token`, run
/// on demand (`interval_secs = 0`).
pub fn pull_section(peer: &str, token: &str, feed: &str) -> String {
    format!("[[replication]]\nname = \"pull\"\npeer = \"{peer}\"\ntoken = \"{token}\"\nfeeds = [\"{feed}\"]\nmode = \"pull\"\ninterval_secs = 0\n")
}

/// Every file below `dir` with its size.
pub fn listing(dir: &Path) -> String {
    let mut out = String::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(rd) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in rd.flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else {
                let len = e.metadata().map(|m| m.len()).unwrap_or(0);
                out.push_str(&format!("{} {len}\n", p.display()));
            }
        }
    }
    out
}

/// Deterministic pseudo-random bytes.
pub fn bytes(seed: u64, len: usize) -> Vec<u8> {
    cairn_store::rng::Xorshift::new(seed).bytes(len)
}

/// A running `cairn serve`, stopped on drop.
pub struct Server {
    pub child: Child,
    /// `http://ADDR` of its feed server, as it printed it.
    pub http: String,
}

impl Server {
    /// Starts `cairn serve` and waits (at most 30 s) until it says it is serving.
    pub fn start(inst: &Instance) -> Server {
        Server::start_with(inst.cmd(&["serve"]))
    }

    /// Starts `cmd` (a `cairn serve`, perhaps wrapped, as in `ip netns exec`) and waits (at
    /// most 30 s) until it says it is serving.
    pub fn start_with(mut cmd: Command) -> Server {
        let mut child = cmd
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let http = cairn_benches::instance::serving_address(&mut child, Duration::from_secs(30))
            .unwrap_or_else(|e| panic!("cairn serve: {e:#}"));
        Server { child, http }
    }

    pub fn stop(mut self) {
        self.terminate();
    }

    /// `kill -9`, and reaped.
    pub fn kill(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    fn terminate(&mut self) {
        cairn_benches::stop_child(&mut self.child, Duration::from_secs(10));
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.terminate();
    }
}
