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
        let mut child = Command::new(link_bin())
            .args([
                "up",
                "--name",
                name,
                "--rate",
                "50mbit",
                "--rtt",
                "40ms",
                "--replace",
            ])
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
