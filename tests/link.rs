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
        let (child, line) = spawn_to_first_line(
            Command::new(link_bin())
                .args(["up", "--name", name, "--replace"])
                .args(args)
                .stderr(Stdio::null()),
        );
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

/// Starts `cmd` with its stdout piped and waits for its first line (a sink's `ready`, the
/// link's banner).
fn spawn_to_first_line(cmd: &mut Command) -> (Child, String) {
    let mut child = cmd.stdout(Stdio::piped()).spawn().unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    (child, line)
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

    let (sink, _) = spawn_to_first_line(&mut in_ns("ctest-b", &["probe", "sink", "5002"]));
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
    take_down(up, &mut [sink], "ctest-");
}

/// Stops the probes and the link; its namespaces (`PREFIX*`) are gone after.
fn take_down(up: Up, probes: &mut [Child], prefix: &str) {
    for p in probes {
        let _ = p.kill();
        let _ = p.wait();
    }
    up.stop();
    assert!(!namespaces().contains(prefix), "namespaces removed on exit");
}

#[test]
fn a_star_gives_each_site_its_own_leg_and_a_partition_cuts_only_the_hub() {
    let name = "cstar";
    let up = Up::start_with(
        name,
        &[
            "--sites",
            "3",
            "--rate",
            "50mbit",
            "--rtt",
            "60ms",
            "--site-rtt",
            "8ms",
        ],
    );
    for ns in ["cstar-a", "cstar-s0", "cstar-s1", "cstar-s2"] {
        assert!(namespaces().contains(ns), "{ns} made");
    }
    // A sink in the hub's namespace and one in site 1, each on every address of its namespace.
    let sink = |ns: &str| spawn_to_first_line(&mut in_ns(ns, &["probe", "sink", "5003"])).0;
    let mut sinks = [sink("cstar-a"), sink("cstar-s1")];
    let hub = "10.77.0.1:5003".to_owned();
    let site1 = format!("{}:5003", cairn_benches::instance::star_site_addr(1));
    let connect_us = |from: &str, to: &str| -> Option<u64> {
        let out = in_ns(from, &["probe", "connect", to, "3"])
            .output()
            .unwrap();
        out.status
            .success()
            .then(|| String::from_utf8_lossy(&out.stdout).trim().parse().unwrap())
    };
    let to_hub = connect_us("cstar-s0", &hub).expect("site 0 reaches the hub");
    assert!(
        to_hub >= 60_000,
        "the hub is the full 60 ms away: {to_hub} us"
    );
    let to_site = connect_us("cstar-s0", &site1).expect("site 0 reaches site 1");
    assert!(
        (8_000..60_000).contains(&to_site),
        "another site is the 8 ms site round trip away, not through the hub: {to_site} us"
    );
    // The management network reaches every namespace from here, without the link.
    let mgmt = cairn_benches::instance::star_mgmt_addr(cairn_benches::instance::star_site_addr(1));
    let direct = Command::new(link_bin())
        .args(["probe", "connect", &format!("{mgmt}:5003"), "1"])
        .output()
        .unwrap();
    assert!(direct.status.success(), "management address {mgmt} reached");

    // A partition cuts the hub off; the sites still reach each other.
    link(&["partition", "--name", name]);
    assert_eq!(connect_us("cstar-s0", &hub), None, "the hub is cut off");
    assert!(connect_us("cstar-s2", &site1).is_some(), "sites still talk");
    let stats: serde_json::Value =
        serde_json::from_slice(&link(&["stats", "--name", name]).stdout).unwrap();
    assert!(
        stats["partitioned"] == true
            && stats["b_to_a"]["drop_partition"].as_u64().unwrap() > 0
            && stats["star"]["sites"] == 3
            && stats["star"]["to_sites"]["packets"].as_u64().unwrap() > 0,
        "{stats}"
    );
    link(&["heal", "--name", name]);
    assert!(connect_us("cstar-s2", &hub).is_some(), "healed");
    take_down(up, &mut sinks, "cstar-");
    assert!(
        !std::path::Path::new("/sys/class/net/cstar-br").exists(),
        "the management bridge removed on exit"
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

/// The hub is killed (`kill -9`) while two relays pull a release from it across the link;
/// four spokes (two per relay, each listing both relays) converge on what their relays hold.
/// A secondary hub that mirrors with the first takes a publish while the first is down and
/// the relays fail over to it; once the first hub is back, all eight instances converge on
/// everything either hub published, the blocking assessment still holds everywhere, and
/// `cairn verify` passes everywhere.
#[test]
fn sites_keep_working_when_the_hub_is_killed_mid_release() {
    use crate::util::Instance;
    let name = "cfail";
    let up = Up::start_with(name, &["--rate", "100mbit", "--rtt", "40ms"]);
    let (ns_hubs, ns_site) = (format!("{name}-a"), format!("{name}-b"));
    let key = |i: &Instance| i.ok(&["key", "show"]).trim().to_owned();
    let hubs = [Instance::new(), Instance::new()];
    let relays = [Instance::new(), Instance::new()];
    let spokes: Vec<Instance> = (0..4).map(|_| Instance::new()).collect();
    let all: Vec<&Instance> = hubs.iter().chain(&relays).chain(&spokes).collect();
    for i in &all {
        i.ok(&["feed", "create", "demo", "--type", "raw"]);
    }
    let hub_addr = ["10.77.0.1:7443", "10.77.0.1:7444"];
    let relay_addr = ["10.77.0.2:7445", "10.77.0.2:7446"];
    // Both hubs are writers of `demo` and `@system`: everyone trusts both.
    for i in &all {
        for h in &hubs {
            i.ok(&["trust", "add", &key(h)]);
        }
    }
    hubs[0].ok(&[
        "peer",
        "add",
        "hub2",
        "10.77.0.1:1",
        "--key",
        &key(&hubs[1]),
    ]);
    hubs[1].ok(&["peer", "add", "hub1", hub_addr[0], "--key", &key(&hubs[0])]);
    let mirror_token = hubs[0].token(&["replicate-write:*"]);
    let pull_tokens: Vec<String> = hubs.iter().map(|h| h.token(&["replicate:*"])).collect();
    for (r, relay) in relays.iter().enumerate() {
        for (h, hub) in hubs.iter().enumerate() {
            hub.ok(&[
                "peer",
                "add",
                &format!("relay{r}"),
                "10.77.0.2:1",
                "--key",
                &key(relay),
            ]);
            relay.ok(&[
                "peer",
                "add",
                &format!("hub{}", h + 1),
                hub_addr[h],
                "--key",
                &key(hub),
            ]);
        }
    }
    let relay_tokens: Vec<String> = relays.iter().map(|r| r.token(&["replicate:*"])).collect();
    for (s, spoke) in spokes.iter().enumerate() {
        for (r, relay) in relays.iter().enumerate() {
            relay.ok(&[
                "peer",
                "add",
                &format!("spoke{s}"),
                "10.77.0.2:1",
                "--key",
                &key(spoke),
            ]);
            spoke.ok(&[
                "peer",
                "add",
                &format!("relay{r}"),
                relay_addr[r],
                "--key",
                &key(relay),
            ]);
        }
    }
    let config = |i: &Instance, listen: &str, rest: &str| {
        std::fs::write(
            i.data().join("cairn.toml"),
            format!("[sync]\nlisten = \"{listen}\"\n\n[http]\nlisten = \"127.0.0.1:0\"\n\n{rest}"),
        )
        .unwrap();
    };
    let feeds = "feeds = [\"demo\", \"@system\"]\n";
    config(&hubs[0], hub_addr[0], "");
    config(
        &hubs[1],
        hub_addr[1],
        &format!("[[replication]]\nname = \"mirror\"\npeer = \"hub1\"\ntoken = \"{mirror_token}\"\n{feeds}mode = \"mirror\"\ninterval_secs = 2\nconnect_secs = 1\n"),
    );
    for (r, relay) in relays.iter().enumerate() {
        config(
            relay,
            relay_addr[r],
            &format!("[[replication]]\nname = \"up\"\npeer = [\"hub1\", \"hub2\"]\ntoken = \"{}\"\ntokens = {{ hub2 = \"{}\" }}\n{feeds}mode = \"pull\"\ninterval_secs = 2\nconnect_secs = 1\n", pull_tokens[0], pull_tokens[1]),
        );
    }
    for (s, spoke) in spokes.iter().enumerate() {
        let (first, second) = (s % 2, 1 - s % 2);
        config(
            spoke,
            "127.0.0.1:0",
            &format!("[[replication]]\nname = \"up\"\npeer = [\"relay{first}\", \"relay{second}\"]\ntoken = \"{}\"\ntokens = {{ relay{second} = \"{}\" }}\n{feeds}mode = \"pull\"\ninterval_secs = 2\nconnect_secs = 1\n", relay_tokens[first], relay_tokens[second]),
        );
    }

    // Before: 20 packages and a blocking assessment of one of them, everywhere.
    for n in 0..20u64 {
        hubs[0].push(
            "demo",
            "f.bin",
            &format!("p{n}"),
            "1",
            &crate::util::bytes(n, 20_000),
        );
    }
    let assessment = hubs[0].block(
        r#"{"id": "GHSA-fail-0001", "modified": "2026-01-01T00:00:00Z", "summary": "bad",
            "affected": [{"package": {"ecosystem": "PyPI", "name": "p1"}, "versions": ["1"]}]}"#,
        &["--comment", "no"],
    );
    let mut hub1 = Some(serve_in(&ns_hubs, &hubs[0]));
    let _hub2 = serve_in(&ns_hubs, &hubs[1]);
    let _relays: Vec<_> = relays.iter().map(|r| serve_in(&ns_site, r)).collect();
    let _spokes: Vec<_> = spokes.iter().map(|s| serve_in(&ns_site, s)).collect();
    let count = |i: &Instance| {
        i.ls("demo")
            .iter()
            .filter(|e| e["kind"] == "manifest")
            .count()
    };
    let wait_until = |what: &str, limit: u64, ok: &dyn Fn() -> bool| {
        let start = std::time::Instant::now();
        while !ok() {
            assert!(
                start.elapsed() < Duration::from_secs(limit),
                "{what} within {limit} s"
            );
            std::thread::sleep(Duration::from_millis(250));
        }
    };
    wait_until("everyone holds the first 20", 120, &|| {
        all.iter().all(|i| count(i) == 20)
    });

    // The release: 40 packages of 400 kB (16 MB; about 1.3 s per relay at the link's rate).
    // The hub is killed while the relays pull it (most runs; the counts are printed).
    for n in 0..40u64 {
        hubs[0].push(
            "demo",
            "f.bin",
            &format!("r{n}"),
            "1",
            &crate::util::bytes(100 + n, 400_000),
        );
    }
    // The secondary hub mirrors the whole release before the first one dies: a relay takes
    // the secondary's state only once it includes what the first had signed (a writer that is
    // behind would undo a publish or a block on every site; `upstreams` and sync's tests
    // cover that refusal). Its log shows a run that began once it held everything.
    let hub1_root = hubs[0].root("demo")["root"].clone();
    wait_until("the secondary hub holds the release", 60, &|| {
        hubs[1].root("demo")["root"] == hub1_root
    });
    let caught_up_ms = cairn_benches::instance::unix_ms();
    wait_until("a mirror run of the secondary hub after that", 30, &|| {
        let log: Vec<serde_json::Value> =
            serde_json::from_str(&hubs[1].ok(&["replication", "log", "--json"])).unwrap();
        log.iter().any(|e| {
            e["replication"] == "mirror"
                && e["outcome"] == "ok"
                && e["started_ms"].as_u64().unwrap_or(0) > caught_up_ms
        })
    });
    hub1.take().unwrap().kill();
    eprintln!(
        "at the kill: relays hold {} and {} packages, the secondary hub {}",
        count(&relays[0]),
        count(&relays[1]),
        count(&hubs[1])
    );
    // The spokes converge on what their relays hold: each spoke's root is one of the relays'.
    wait_until("every spoke holds what a relay holds", 60, &|| {
        let relay_roots: Vec<serde_json::Value> = relays
            .iter()
            .map(|r| r.root("demo")["root"].clone())
            .collect();
        spokes
            .iter()
            .all(|s| relay_roots.contains(&s.root("demo")["root"]))
    });
    // A publish on the secondary hub reaches every spoke through the relays.
    hubs[1].push(
        "demo",
        "f.bin",
        "second",
        "1",
        &crate::util::bytes(999, 30_000),
    );
    let has_second = |i: &Instance| i.ls("demo").iter().any(|e| e["name"] == "second");
    wait_until("the secondary hub's publish on every spoke", 60, &|| {
        spokes.iter().all(has_second)
    });
    eprintln!(
        "with the secondary hub's publish: relays hold {} and {}, spokes {:?}",
        count(&relays[0]),
        count(&relays[1]),
        spokes.iter().map(count).collect::<Vec<_>>()
    );
    for r in &relays {
        let log: Vec<serde_json::Value> =
            serde_json::from_str(&r.ok(&["replication", "log", "--json"])).unwrap();
        assert!(
            log.iter()
                .any(|e| e["peer"] == "hub2" && e["outcome"] == "ok"),
            "a relay failed over to the secondary hub: {log:?}"
        );
    }

    // The first hub comes back: everything converges on all 61 packages.
    let _hub1 = serve_in(&ns_hubs, &hubs[0]);
    wait_until(
        "all eight instances on one root with 61 packages",
        120,
        &|| {
            let root = hubs[0].root("demo")["root"].clone();
            all.iter()
                .all(|i| count(i) == 61 && i.root("demo")["root"] == root)
        },
    );
    for i in &all {
        let assessments: Vec<serde_json::Value> =
            serde_json::from_str(&i.ok(&["assessment", "list", "--json"])).unwrap();
        assert!(
            assessments
                .iter()
                .any(|a| a["id"] == assessment.as_str() && a["type"] == "Blocked"),
            "the block holds: {assessments:?}"
        );
        assert!(i.ok(&["verify"]).contains(": ok"));
    }
    up.stop();
}
