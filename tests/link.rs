//! The link emulator, started for real as root: namespaces made and removed, traffic carried
//! with at least the configured delay, partitions that drop everything until healed.

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

fn link_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_cairn-link"))
}

fn link(args: &[&str]) -> std::process::Output {
    Command::new(link_bin()).args(args).output().unwrap()
}

struct Up(Child);

impl Up {
    fn start(name: &str) -> Up {
        Up::start_with(name, &["--rate", "50mbit", "--rtt", "40ms"])
    }

    /// `cairn-link up --name NAME --replace ARGS`, once it says it is up.
    fn start_with(name: &str, args: &[&str]) -> Up {
        let mut child = Command::new(link_bin())
            .args(["up", "--name", name, "--replace"])
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        assert!(line.starts_with("cairn-link up"), "{line}");
        Up(child)
    }

    fn stop(mut self) {
        self.terminate();
    }

    fn terminate(&mut self) {
        cairn_benches::stop_child(&mut self.0, Duration::from_secs(10));
    }
}

impl Drop for Up {
    fn drop(&mut self) {
        self.terminate();
    }
}

fn in_ns(ns: &str, args: &[&str]) -> Command {
    let mut c = Command::new("ip");
    c.args(["netns", "exec", ns]).arg(link_bin()).args(args);
    c
}

fn namespaces() -> String {
    String::from_utf8_lossy(
        &Command::new("ip")
            .args(["netns", "list"])
            .output()
            .unwrap()
            .stdout,
    )
    .into_owned()
}

#[test]
fn the_link_carries_tcp_with_its_delay_partitions_and_cleans_up() {
    let uid = Command::new("id").arg("-u").output().unwrap();
    assert!(
        std::path::Path::new("/dev/net/tun").exists()
            && String::from_utf8_lossy(&uid.stdout).trim() == "0",
        "the link emulator needs root and /dev/net/tun"
    );
    // Without a running link, the control commands say so.
    let none = link(&["stats", "--name", "ctest-none"]);
    assert_eq!(none.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&none.stderr).contains("no link `ctest-none` is running"));
    let name = "ctest";
    let up = Up::start(name);
    assert!(namespaces().contains("ctest-a") && namespaces().contains("ctest-b"));

    // A second link of the same name is refused while namespaces exist.
    let again = link(&["up", "--name", name, "--rtt", "10ms"]);
    assert_eq!(again.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&again.stderr).contains("--replace"));

    let mut sink = in_ns("ctest-b", &["probe", "sink", "5002"])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut ready = String::new();
    BufReader::new(sink.stdout.take().unwrap())
        .read_line(&mut ready)
        .unwrap();
    let connect = || {
        in_ns("ctest-a", &["probe", "connect", "10.77.0.2:5002", "3"])
            .output()
            .unwrap()
    };
    let out = connect();
    assert!(out.status.success());
    let us: u64 = String::from_utf8_lossy(&out.stdout).trim().parse().unwrap();
    assert!(
        us >= 40_000,
        "a TCP handshake takes at least the 40 ms RTT: {us} us"
    );

    // Partitioned, nothing gets through; healed, traffic flows again.
    assert_eq!(
        String::from_utf8_lossy(&link(&["partition", "--name", name]).stdout).trim(),
        "partitioned"
    );
    assert!(
        !connect().status.success(),
        "a partition drops the handshake"
    );
    let stats: serde_json::Value =
        serde_json::from_slice(&link(&["stats", "--name", name]).stdout).unwrap();
    assert!(
        stats["partitioned"] == true && stats["a_to_b"]["drop_partition"].as_u64().unwrap() > 0,
        "{stats}"
    );
    link(&["heal", "--name", name]);
    assert!(connect().status.success());
    let _ = sink.kill();
    let _ = sink.wait();

    up.stop();
    assert!(
        !namespaces().contains("ctest-"),
        "namespaces removed on exit"
    );
}

/// A `cairn serve` inside namespace `ns`, stopped on drop.
fn serve_in(ns: &str, inst: &crate::util::Instance) -> crate::util::Server {
    let mut cmd = Command::new("ip");
    cmd.args(["netns", "exec", ns])
        .arg(crate::util::cairn_bin())
        .arg("--data-dir")
        .arg(inst.data())
        .arg("serve");
    crate::util::Server::start_with(cmd)
}

/// A pull capped at 20 Mbit/s over a 100 Mbit/s link: the hub paces what it sends so that the
/// bytes on the link (IP headers included) stay within 5% of the cap over a run of more than
/// 30 s, and within 10% over every 5 s of it.
#[test]
fn a_capped_replication_holds_its_rate_on_the_link() {
    use crate::util::Instance;
    let name = "ccap";
    let samples = std::env::temp_dir().join(format!("ccap-samples-{}", std::process::id()));
    let _ = std::fs::remove_file(&samples);
    let samples_arg = samples.to_string_lossy().into_owned();
    let up = Up::start_with(
        name,
        &[
            "--rate",
            "100mbit",
            "--rtt",
            "40ms",
            "--samples",
            &samples_arg,
        ],
    );

    let (hub, spoke) = (Instance::new(), Instance::new());
    for i in [&hub, &spoke] {
        i.ok(&["feed", "create", "demo", "--type", "raw"]);
    }
    // 84 MB: about 34 s at 2.5 MB/s, under 8 s at the link's rate.
    for n in 0..24u64 {
        hub.push(
            "demo",
            &format!("f{n}"),
            "p",
            &n.to_string(),
            &crate::util::bytes(n, 3_500_000),
        );
    }
    let key = |i: &Instance| i.ok(&["key", "show"]).trim().to_owned();
    hub.ok(&["peer", "add", "spoke", "10.77.0.2:1", "--key", &key(&spoke)]);
    spoke.ok(&["peer", "add", "hub", "10.77.0.1:7443", "--key", &key(&hub)]);
    spoke.ok(&["trust", "add", &key(&hub)]);
    let token = hub.token(&["replicate:demo"]);
    std::fs::write(
        hub.data().join("cairn.toml"),
        "[sync]\nlisten = \"10.77.0.1:7443\"\n\n[http]\nlisten = \"10.77.0.1:0\"\n",
    )
    .unwrap();
    std::fs::write(
        spoke.data().join("cairn.toml"),
        format!("[[replication]]\nname = \"up\"\npeer = \"hub\"\ntoken = \"{token}\"\nfeeds = [\"demo\"]\nmode = \"pull\"\ninterval_secs = 0\nmax_rate = \"20mbit\"\n"),
    )
    .unwrap();
    let _hub = serve_in(&format!("{name}-a"), &hub);
    let stats = || -> (u64, u64, u64) {
        let v: serde_json::Value =
            serde_json::from_slice(&link(&["stats", "--name", name]).stdout).unwrap();
        let d = &v["a_to_b"];
        let n = |k: &str| d[k].as_u64().unwrap();
        (n("bytes"), n("packets"), n("drop_queue"))
    };
    let before = stats();
    let out = Command::new("ip")
        .args(["netns", "exec", &format!("{name}-b")])
        .arg(crate::util::cairn_bin())
        .arg("--data-dir")
        .arg(spoke.data())
        .args(["replicate", "up", "--json"])
        .output()
        .unwrap();
    let after = stats();
    let wire = after.0 - before.0;
    // Paced, the flow never fills the bottleneck's queue.
    let (packets, dropped) = (after.1 - before.1, after.2 - before.2);
    assert!(
        dropped * 100 <= packets,
        "{dropped} of {packets} packets were dropped at the link's queue"
    );
    let r: serde_json::Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|_| panic!("{}", String::from_utf8_lossy(&out.stderr)));
    assert_eq!(r["feeds"][0]["converged"], true, "{r}");
    assert_eq!(spoke.root("demo")["root"], hub.root("demo")["root"]);
    let secs = r["elapsed_ms"].as_u64().unwrap() as f64 / 1000.0;
    let cap = 2_500_000.0;
    let rate = wire as f64 / secs;
    eprintln!(
        "{wire} bytes on the link in {secs:.1} s: {:.2} Mbit/s",
        rate * 8e-6
    );
    assert!(secs >= 30.0, "the run took {secs} s");
    assert!(
        (rate - cap).abs() / cap <= 0.05,
        "{rate:.0} B/s on the link against a cap of {cap} B/s"
    );
    // Every 5 s of the run (from the link's samples, one per second) holds the cap too.
    let text = std::fs::read_to_string(&samples).unwrap_or_default();
    let points: Vec<u64> = text
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter_map(|v| v["stats"]["a_to_b"]["bytes"].as_u64())
        .collect();
    let busy: Vec<u64> = points
        .windows(2)
        .map(|w| w[1] - w[0])
        .skip_while(|d| *d < 100_000)
        .collect();
    for w in busy.windows(5).take(busy.len().saturating_sub(6)) {
        let r = w.iter().sum::<u64>() as f64 / 5.0;
        assert!(r <= cap * 1.10, "{r:.0} B/s over 5 s: {w:?}");
    }
    up.stop();
    let _ = std::fs::remove_file(&samples);
}
