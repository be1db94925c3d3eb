//! `kill -9` at random points of a loop of pushes: the store reopens, `verify` passes, every
//! push that reported success is present, and no partial entry is visible.

use std::collections::BTreeSet;
use std::fs;
use std::io::{BufRead, BufReader};
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::util::{bytes, cairn_bin, Instance};
use cairn_store::rng::Xorshift;

#[test]
fn kill_9_during_pushes_never_leaves_a_mix() {
    let c = Instance::new();
    c.ok(&["feed", "create", "demo", "--type", "raw"]);
    // A few large files (killed mid-ingest) and small ones (killed mid-commit).
    let sizes = [300, 5_000, 40_000, 2_000_000, 9_000_000];
    let mut inputs = Vec::new();
    for (i, size) in sizes.iter().enumerate() {
        let p = c.path(&format!("in{i}.bin"));
        fs::write(&p, bytes(i as u64, *size)).unwrap();
        inputs.push(p);
    }
    let mut succeeded = BTreeSet::new();
    let mut rng = Xorshift::new(0x2545_F491_4F6C_DD1D);
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut version = 0u64;
    let mut kills = 0;
    for round in 0..30 {
        if Instant::now() > deadline {
            break;
        }
        // A shell loop of real `cairn push` processes; it reports each success on stdout.
        let mut script = String::from("set -e\n");
        for _ in 0..6 {
            version += 1;
            let input = &inputs[(version as usize) % inputs.len()];
            script.push_str(&format!(
                "'{}' --data-dir '{}' push demo '{}' --name p --version {version} >/dev/null\necho ok {version}\n",
                cairn_bin().display(),
                c.data().display(),
                input.display(),
            ));
        }
        let mut child = Command::new("sh")
            .arg("-c")
            .arg(&script)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .process_group(0)
            .spawn()
            .unwrap();
        let delay = Duration::from_millis(rng.below(400));
        let pid = child.id() as i32;
        let killer = std::thread::spawn(move || {
            std::thread::sleep(delay);
            Command::new("kill")
                .args(["-9", "--", &format!("-{pid}")])
                .stderr(Stdio::null())
                .status()
                .map(|s| s.success())
                .unwrap_or(false)
        });
        let stdout = child.stdout.take().unwrap();
        for line in BufReader::new(stdout).lines() {
            let line = line.unwrap();
            if let Some(v) = line.strip_prefix("ok ") {
                succeeded.insert(v.parse::<u64>().unwrap());
            }
        }
        let _ = child.wait();
        if killer.join().unwrap() {
            kills += 1;
        }
        // The killed `cairn` may still be exiting (it holds the store's lock until its files
        // are closed): retry, boundedly, while the store says it is in use.
        let gone_by = Instant::now() + Duration::from_secs(10);
        while Instant::now() < gone_by {
            let out = c.run(&["root", "demo"]);
            if !String::from_utf8_lossy(&out.stderr).contains("in use by another") {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        // After every round: the store opens and holds exactly a consistent state.
        let verify = c.run(&["verify"]);
        assert_eq!(
            verify.status.code(),
            Some(0),
            "round {round}\n{}",
            c.report(&["verify"], &verify)
        );
        let present: BTreeSet<u64> = c
            .ls("demo")
            .iter()
            .map(|r| {
                assert_eq!(r["kind"], "manifest");
                assert_eq!(r["files"].as_array().unwrap().len(), 1, "no partial entry");
                r["version"].as_str().unwrap().parse().unwrap()
            })
            .collect();
        let missing: Vec<_> = succeeded.difference(&present).collect();
        assert!(
            missing.is_empty(),
            "round {round}: successful pushes lost: {missing:?}"
        );
        // Whatever is present reads back whole and verified.
        for v in present.iter().rev().take(2) {
            let out = c.path("check.out");
            c.ok(&[
                "get",
                "demo",
                "p",
                &v.to_string(),
                "-o",
                out.to_str().unwrap(),
            ]);
            let expected = &inputs[(*v as usize) % inputs.len()];
            assert_eq!(fs::read(&out).unwrap(), fs::read(expected).unwrap());
        }
    }
    assert!(
        kills > 5,
        "the test must actually kill pushes (killed {kills})"
    );
    assert!(!succeeded.is_empty());
    // Leftovers of killed pushes are collectable and collecting them breaks nothing.
    c.ok(&["gc"]);
    assert!(c.ok(&["verify"]).contains(": ok"));
    assert!(fs::read_dir(c.data().join("tmp")).unwrap().next().is_none());
}

/// Runs `cairn ARGS` on `inst`, killing it if it has not finished within `bound`; returns its
/// output and how long it took, or panics with everything needed to debug a hang.
fn run_within(inst: &Instance, args: &[&str], bound: Duration) -> (std::process::Output, Duration) {
    let started = Instant::now();
    let child = inst
        .cmd(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id();
    let watchdog = std::thread::spawn(move || {
        let deadline = Instant::now() + bound;
        while Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
            if fs::metadata(format!("/proc/{pid}")).is_err() {
                return false;
            }
        }
        let _ = Command::new("kill").args(["-9", &pid.to_string()]).status();
        true
    });
    let out = child.wait_with_output().unwrap();
    let elapsed = started.elapsed();
    let hung = watchdog.join().unwrap();
    if hung {
        panic!(
            "`cairn {}` did not finish within {bound:?}\n{}",
            args.join(" "),
            inst.report(args, &out)
        );
    }
    (out, elapsed)
}

/// Waits (boundedly) until no killed `cairn` holds the store's lock any more.
fn wait_for_lock(inst: &Instance) {
    let gone_by = Instant::now() + Duration::from_secs(10);
    while Instant::now() < gone_by {
        let out = inst.run(&["root", "demo"]);
        if !String::from_utf8_lossy(&out.stderr).contains("in use by another") {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Liveness after crashes: a spoke pulls while the hub takes new uploads before every round,
/// and `kill -9` hits the pulling spoke (and, every fifth round, the hub) at a random moment.
/// After each kill the spoke verifies, and the next clean run converges within the bound.
#[test]
fn kill_9_during_pulls_and_of_the_hub_leaves_runs_that_finish() {
    const ROUNDS: u64 = 115;
    const BOUND: Duration = Duration::from_secs(60);
    let hub = Instance::new();
    let spoke = Instance::new();
    hub.ok(&["feed", "create", "demo", "--type", "raw"]);
    spoke.ok(&["feed", "create", "demo", "--type", "raw"]);
    let port = crate::util::free_udp_port();
    let publish = hub
        .ok(&["token", "create", "--scope", "publish:demo"])
        .trim()
        .to_owned();
    let replicate = hub
        .ok(&["token", "create", "--scope", "replicate:demo"])
        .trim()
        .to_owned();
    crate::util::peer_spoke_with_hub(&hub, &spoke, "spoke", port);
    fs::write(
        hub.data().join("cairn.toml"),
        format!("[sync]\nlisten = \"127.0.0.1:{port}\"\n\n[http]\nlisten = \"127.0.0.1:0\"\nmax_upload_mib = 64\n"),
    )
    .unwrap();
    fs::write(
        spoke.data().join("cairn.toml"),
        crate::util::pull_section("hub", &replicate, "demo"),
    )
    .unwrap();
    let mut server = crate::util::Server::start(&hub);
    let mut rng = Xorshift::new(1);
    let mut next = || rng.next_u64();
    let (mut spoke_kills, mut hub_kills, mut slowest) = (0, 0, Duration::ZERO);
    for round in 0..ROUNDS {
        // New uploads on the hub: ten small files and a large one (24 MiB every 25th round).
        let large = if round % 25 == 0 { 24 << 20 } else { 1 << 20 };
        for (i, size) in (0..10).map(|i| (i, 20_000)).chain([(10, large)]) {
            let data = bytes(round * 100 + i, size);
            let (status, text) = crate::feeds::raw_http(
                &server.http,
                &format!("PUT /feeds/demo/r{round}/1/f{i} HTTP/1.1\r\nHost: HOST\r\nAuthorization: Bearer {publish}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n", data.len()),
                &data,
            );
            assert_eq!(status, 201, "round {round}: {text}");
        }
        // A pull, killed at a random moment of it (a pull here takes 50-300 ms).
        let pull = || {
            spoke
                .cmd(&["replicate", "pull"])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap()
        };
        let mut child = pull();
        std::thread::sleep(Duration::from_millis(10 + next() % 90));
        if child.try_wait().unwrap().is_none() {
            spoke_kills += 1;
        }
        let _ = child.kill();
        let _ = child.wait();
        // Every fifth round another pull loses its hub mid-run.
        if round % 5 == 4 {
            wait_for_lock(&spoke);
            let mut child = pull();
            std::thread::sleep(Duration::from_millis(20 + next() % 100));
            let _ = Command::new("kill")
                .args(["-9", &server.child.id().to_string()])
                .status();
            let _ = server.child.wait();
            hub_kills += 1;
            let _ = child.wait();
            server = crate::util::Server::start(&hub);
        }
        wait_for_lock(&spoke);
        let verify = spoke.run(&["verify"]);
        assert_eq!(
            verify.status.code(),
            Some(0),
            "round {round}\n{}",
            spoke.report(&["verify"], &verify)
        );
        // The next clean run finishes, converged, within the bound.
        let (out, took) = run_within(&spoke, &["replicate", "pull", "--json"], BOUND);
        let summary: serde_json::Value = serde_json::from_slice(&out.stdout)
            .unwrap_or_else(|_| panic!("round {round}\n{}", spoke.report(&["replicate"], &out)));
        assert_eq!(
            summary["feeds"][0]["converged"], true,
            "round {round}: {summary}"
        );
        slowest = slowest.max(took);
    }
    eprintln!(
        "{spoke_kills} pulls and {hub_kills} hubs killed mid-run; slowest clean run after a kill {slowest:?}"
    );
    assert!(
        spoke_kills >= 100,
        "only {spoke_kills} pulls were killed while running"
    );
    server.stop();
    assert_eq!(spoke.root("demo")["root"], hub.root("demo")["root"]);
    assert!(hub.ok(&["verify"]).contains(": ok"));
    spoke.ok(&["gc"]);
    assert!(spoke.ok(&["verify"]).contains(": ok"));
}
