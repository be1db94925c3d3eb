//! Hub and spokes as separate `cairn serve` processes replicating over QUIC on loopback.

use std::process::Stdio;
use std::time::{Duration, Instant};

use crate::util::{Instance, Server};

fn replicate(inst: &Instance, name: &str) -> serde_json::Value {
    let out = inst.run(&["replicate", name, "--json"]);
    let json: serde_json::Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|_| panic!("{}", inst.report(&["replicate", name, "--json"], &out)));
    json
}

/// Writes the configuration, with the HTTP server on a free port (several instances run at
/// once).
fn write_config(inst: &Instance, text: &str) {
    let text = format!("{text}\n[http]\nlisten = \"127.0.0.1:0\"\n");
    std::fs::write(inst.data().join("cairn.toml"), text).unwrap();
}

struct Site {
    inst: Instance,
    port: u16,
    key: String,
}

fn site() -> Site {
    let inst = Instance::new();
    let key = inst.ok(&["key", "show"]).trim().to_owned();
    Site {
        inst,
        port: crate::util::free_udp_port(),
        key,
    }
}

#[test]
fn hub_and_two_spokes_converge_over_quic() {
    let hub = site();
    let spokes = [site(), site()];
    hub.inst.ok(&["feed", "create", "demo", "--type", "raw"]);
    for i in 0..200 {
        let f = hub.inst.path(&format!("f{i}.bin"));
        std::fs::write(
            &f,
            crate::util::bytes(i, if i % 50 == 0 { 300_000 } else { 2_000 }),
        )
        .unwrap();
        hub.inst.ok(&[
            "push",
            "demo",
            f.to_str().unwrap(),
            "--name",
            &format!("p{i}"),
            "--version",
            "1",
        ]);
    }
    let out = hub
        .inst
        .cmd(&["token", "create", "--scope", "replicate:*"])
        .output()
        .unwrap();
    let token = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    write_config(
        &hub.inst,
        &format!("[sync]\nlisten = \"127.0.0.1:{}\"\n", hub.port),
    );
    for (i, s) in spokes.iter().enumerate() {
        hub.inst.ok(&[
            "peer",
            "add",
            &format!("spoke{i}"),
            &format!("127.0.0.1:{}", s.port),
            "--key",
            &s.key,
        ]);
        s.inst.ok(&["feed", "create", "demo", "--type", "raw"]);
        s.inst.ok(&["trust", "add", &hub.key]);
        s.inst.ok(&[
            "peer",
            "add",
            "hub",
            &format!("127.0.0.1:{}", hub.port),
            "--key",
            &hub.key,
        ]);
        write_config(
            &s.inst,
            &format!(
                "[sync]\nlisten = \"127.0.0.1:{}\"\n\n[[replication]]\nname = \"from-hub\"\npeer = \"hub\"\ntoken = \"{token}\"\nfeeds = [\"demo\", \"@system\"]\nmode = \"pull\"\ninterval_secs = 3600\n\n[[replication]]\nname = \"bad-token\"\npeer = \"hub\"\ntoken = \"cairn_000000000000_nope\"\nfeeds = [\"demo\"]\nmode = \"pull\"\ninterval_secs = 3600\n",
                s.port
            ),
        );
    }
    // Security staff assess a vulnerability on the hub.
    hub.inst
        .ok(&["assessment-type", "create", "Blocked", "--blocking"]);
    let assessment = hub.inst.block(
        r#"{"id": "GHSA-test-0001", "modified": "2026-01-01T00:00:00Z", "summary": "bad",
            "affected": [{"package": {"ecosystem": "PyPI", "name": "p1"}, "versions": ["1"]}]}"#,
        &["--comment", "do not use"],
    );
    let hub_root = hub.inst.root("demo");
    let hub_server = Server::start(&hub.inst);
    let servers: Vec<Server> = spokes.iter().map(|s| Server::start(&s.inst)).collect();

    // Both spokes converge to the hub's root.
    for s in &spokes {
        let r = replicate(&s.inst, "from-hub");
        assert_eq!(r["error"], serde_json::Value::Null, "{r}");
        assert_eq!(r["feeds"][0]["converged"], true, "{r}");
        assert_eq!(r["feeds"][0]["root"], hub_root["root"], "{r}");
        assert_eq!(r["feeds"][0]["count"], 200);
        assert_eq!(r["feeds"][1]["feed"], "@system");
        assert_eq!(r["feeds"][1]["converged"], true, "{r}");
        // A wrong token is refused and writes nothing.
        let bad = s.inst.run(&["replicate", "bad-token", "--json"]);
        assert_eq!(bad.status.code(), Some(2));
        let bad: serde_json::Value = serde_json::from_slice(&bad.stdout).unwrap();
        assert!(
            bad["feeds"][0]["error"]
                .as_str()
                .unwrap_or("")
                .contains("invalid replication token"),
            "{bad}"
        );
    }
    // A no-op run is equal.
    let r = replicate(&spokes[0].inst, "from-hub");
    assert_eq!(r["feeds"][0]["path"], "equal", "{r}");
    assert_eq!(r["rounds"], 1, "a no-op is one round trip: {r}");

    // Deletions on the hub reach both spokes.
    hub_server.stop();
    for i in 0..20 {
        hub.inst.ok(&["rm", "demo", &format!("p{i}"), "1"]);
    }
    let hub_root = hub.inst.root("demo");
    let hub_server = Server::start(&hub.inst);
    for s in &spokes {
        let r = replicate(&s.inst, "from-hub");
        assert_eq!(r["feeds"][0]["converged"], true, "{r}");
        assert_eq!(r["feeds"][0]["root"], hub_root["root"], "{r}");
    }

    // A pull replica with local extras ends with exactly the hub's set.
    drop(servers);
    let extra = spokes[1].inst.path("extra.bin");
    std::fs::write(&extra, b"local only").unwrap();
    spokes[1].inst.ok(&[
        "push",
        "demo",
        extra.to_str().unwrap(),
        "--name",
        "local",
        "--version",
        "1",
    ]);
    let r = replicate(&spokes[1].inst, "from-hub");
    assert_eq!(r["feeds"][0]["converged"], true, "{r}");
    assert_eq!(r["feeds"][0]["deletions"], 1, "{r}");
    hub_server.stop();
    for s in &spokes {
        assert_eq!(s.inst.root("demo")["root"], hub_root["root"]);
        assert!(s.inst.ok(&["verify"]).contains(": ok"));
        let assessments: Vec<serde_json::Value> =
            serde_json::from_str(&s.inst.ok(&["assessment", "list", "--json"])).unwrap();
        assert_eq!(
            assessments.len(),
            1,
            "the hub's assessment reached the spoke"
        );
        assert_eq!(assessments[0]["id"], assessment.as_str());
        assert_eq!(assessments[0]["type"], "Blocked");
        let log: Vec<serde_json::Value> =
            serde_json::from_str(&s.inst.ok(&["replication", "log", "--json"])).unwrap();
        assert!(log
            .iter()
            .any(|r| r["replication"] == "from-hub" && r["outcome"] == "ok"));
        assert!(log
            .iter()
            .any(|r| r["replication"] == "bad-token" && r["outcome"] == "failed"));
    }
    let hub_log: Vec<serde_json::Value> =
        serde_json::from_str(&hub.inst.ok(&["replication", "log", "--json"])).unwrap();
    assert!(
        hub_log
            .iter()
            .any(|r| r["replication"] == "incoming" && r["peer"] == "spoke0"),
        "{hub_log:?}"
    );
}

fn names(inst: &Instance, feed: &str) -> Vec<String> {
    let mut v: Vec<String> = inst
        .ls(feed)
        .iter()
        .filter(|e| e["kind"] == "manifest")
        .map(|e| e["name"].as_str().unwrap_or("").to_owned())
        .collect();
    v.sort();
    v
}

/// The hub dials both spokes (outgoing) and pushes one feed to them and mirrors another with
/// them; the spokes only answer. Three `cairn serve` processes throughout.
#[test]
fn hub_pushes_to_and_mirrors_with_two_spokes() {
    let hub = site();
    let spokes = [site(), site()];
    for s in std::iter::once(&hub).chain(&spokes) {
        s.inst.ok(&["feed", "create", "pushed", "--type", "raw"]);
        s.inst.ok(&["feed", "create", "shared", "--type", "raw"]);
    }
    let mut config = format!("[sync]\nlisten = \"127.0.0.1:{}\"\n", hub.port);
    for (i, s) in spokes.iter().enumerate() {
        hub.inst.ok(&["trust", "add", &s.key]);
        s.inst.ok(&["trust", "add", &hub.key]);
        hub.inst.ok(&[
            "peer",
            "add",
            &format!("spoke{i}"),
            &format!("127.0.0.1:{}", s.port),
            "--key",
            &s.key,
        ]);
        s.inst.ok(&[
            "peer",
            "add",
            "hub",
            &format!("127.0.0.1:{}", hub.port),
            "--key",
            &hub.key,
        ]);
        // The hub writes into the spokes: pushing and mirroring need the write scope.
        let out = s
            .inst
            .cmd(&["token", "create", "--scope", "replicate-write:*"])
            .output()
            .unwrap();
        let token = String::from_utf8_lossy(&out.stdout).trim().to_owned();
        for (mode, feed) in [("push", "pushed"), ("mirror", "shared")] {
            config.push_str(&format!(
                "\n[[replication]]\nname = \"{mode}-{i}\"\npeer = \"spoke{i}\"\ntoken = \"{token}\"\nfeeds = [\"{feed}\"]\nmode = \"{mode}\"\ninterval_secs = 3600\n"
            ));
        }
        // Both spokes trust each other too: mirrored entries signed by one reach the other.
        write_config(
            &s.inst,
            &format!("[sync]\nlisten = \"127.0.0.1:{}\"\n", s.port),
        );
    }
    spokes[0].inst.ok(&["trust", "add", &spokes[1].key]);
    spokes[1].inst.ok(&["trust", "add", &spokes[0].key]);
    write_config(&hub.inst, &config);
    for i in 0..200u64 {
        let size = if i % 50 == 0 { 300_000 } else { 2_000 };
        hub.inst.push(
            "pushed",
            "f.bin",
            &format!("p{i}"),
            "1",
            &crate::util::bytes(i, size),
        );
    }
    for i in 0..40u64 {
        hub.inst.push(
            "shared",
            "f.bin",
            &format!("h{i}"),
            "1",
            &crate::util::bytes(1000 + i, 3_000),
        );
    }
    for (n, s) in spokes.iter().enumerate() {
        for i in 0..10u64 {
            s.inst.push(
                "shared",
                "f.bin",
                &format!("s{n}-{i}"),
                "1",
                &crate::util::bytes(2000 + 10 * n as u64 + i, 3_000),
            );
        }
    }
    let all_runs = |hub: &Site| {
        for name in ["push-0", "push-1", "mirror-0", "mirror-1", "mirror-0"] {
            let r = replicate(&hub.inst, name);
            assert_eq!(r["error"], serde_json::Value::Null, "{name}: {r}");
            assert_eq!(r["feeds"][0]["converged"], true, "{name}: {r}");
        }
    };
    let check = |hub: &Site, pushed: usize, shared: usize| {
        let (p, s) = (hub.inst.root("pushed"), hub.inst.root("shared"));
        assert_eq!(names(&hub.inst, "pushed").len(), pushed);
        assert_eq!(names(&hub.inst, "shared").len(), shared);
        for sp in &spokes {
            assert_eq!(
                sp.inst.root("pushed")["root"],
                p["root"],
                "push makes each spoke a copy"
            );
            assert_eq!(
                sp.inst.root("shared")["root"],
                s["root"],
                "mirror converges all three"
            );
            assert_eq!(names(&sp.inst, "shared"), names(&hub.inst, "shared"));
            assert!(sp.inst.ok(&["verify"]).contains(": ok"));
        }
    };

    let servers: Vec<Server> = std::iter::once(&hub)
        .chain(&spokes)
        .map(|s| Server::start(&s.inst))
        .collect();
    all_runs(&hub);
    drop(servers);
    check(&hub, 200, 60);

    // Deletions: 20 on the hub in each feed, 2 on spoke 0 in the mirrored feed.
    for i in 0..20 {
        hub.inst.ok(&["rm", "pushed", &format!("p{i}"), "1"]);
        hub.inst.ok(&["rm", "shared", &format!("h{i}"), "1"]);
    }
    for i in 0..2 {
        spokes[0]
            .inst
            .ok(&["rm", "shared", &format!("s0-{i}"), "1"]);
    }
    let servers: Vec<Server> = std::iter::once(&hub)
        .chain(&spokes)
        .map(|s| Server::start(&s.inst))
        .collect();
    all_runs(&hub);
    drop(servers);
    check(&hub, 180, 38);
    assert!(!names(&spokes[1].inst, "pushed").contains(&"local".to_string()));
    for sp in &spokes {
        let shared = names(&sp.inst, "shared");
        assert!(!shared.contains(&"h0".to_string()) && !shared.contains(&"s0-1".to_string()));
        assert!(shared.contains(&"s1-9".to_string()) && shared.contains(&"h39".to_string()));
    }
    // Every run of the test: a run retried after a concurrent mirror changed the hub would
    // push the first push out of the last 20.
    let log: Vec<serde_json::Value> =
        serde_json::from_str(
            &hub.inst
                .ok(&["replication", "log", "--json", "--limit", "1000"]),
        )
        .unwrap();
    let pushed_blobs: u64 = log
        .iter()
        .filter(|r| r["replication"] == "push-0")
        .map(|r| r["blobs_sent"].as_u64().unwrap_or(0))
        .sum();
    assert!(
        pushed_blobs >= 4,
        "the 300 KB files travelled as blobs: {log:?}"
    );
}

#[test]
fn a_run_cut_by_killing_the_hub_resumes_and_converges() {
    let hub = site();
    let spoke = site();
    hub.inst.ok(&["feed", "create", "demo", "--type", "raw"]);
    spoke.inst.ok(&["feed", "create", "demo", "--type", "raw"]);
    let big = hub.inst.path("big.bin");
    let size = 256usize << 20;
    std::fs::write(&big, crate::util::bytes(9, size)).unwrap();
    hub.inst.ok(&[
        "push",
        "demo",
        big.to_str().unwrap(),
        "--name",
        "big",
        "--version",
        "1",
    ]);
    std::fs::remove_file(&big).unwrap();
    let out = hub
        .inst
        .cmd(&["token", "create", "--scope", "replicate:demo"])
        .output()
        .unwrap();
    let token = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    hub.inst.ok(&[
        "peer",
        "add",
        "spoke",
        &format!("127.0.0.1:{}", spoke.port),
        "--key",
        &spoke.key,
    ]);
    spoke.inst.ok(&["trust", "add", &hub.key]);
    spoke.inst.ok(&[
        "peer",
        "add",
        "hub",
        &format!("127.0.0.1:{}", hub.port),
        "--key",
        &hub.key,
    ]);
    write_config(
        &hub.inst,
        &format!("[sync]\nlisten = \"127.0.0.1:{}\"\n", hub.port),
    );
    write_config(
        &spoke.inst,
        &format!("[[replication]]\nname = \"from-hub\"\npeer = \"hub\"\ntoken = \"{token}\"\nfeeds = [\"demo\"]\nmode = \"pull\"\n"),
    );
    let hub_root = hub.inst.root("demo");
    let mut hub_server = Server::start(&hub.inst);
    // The spoke replicates without a server of its own; kill the hub once pieces are landing.
    let mut run = spoke
        .inst
        .cmd(&["replicate", "from-hub", "--json"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let partial = spoke.inst.data().join("partial");
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut killed = false;
    while Instant::now() < deadline {
        let landed = std::fs::read_dir(&partial)
            .map(|d| {
                d.flatten().any(|e| {
                    e.file_name().to_string_lossy().ends_with(".have")
                        && e.metadata().map(|m| m.len() >= 16).unwrap_or(false)
                })
            })
            .unwrap_or(false);
        if landed {
            let _ = hub_server.child.kill();
            let _ = hub_server.child.wait();
            killed = true;
            break;
        }
        if let Ok(Some(_)) = run.try_wait() {
            break;
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    assert!(killed, "the transfer finished before it could be cut");
    let first = run.wait_with_output().unwrap();
    assert_eq!(first.status.code(), Some(2), "the cut run reports failure");
    // Nothing half-written is visible.
    assert_eq!(spoke.inst.root("demo")["count"], 0);
    drop(hub_server);
    let _hub_server = Server::start(&hub.inst);
    let r = replicate(&spoke.inst, "from-hub");
    assert_eq!(r["feeds"][0]["converged"], true, "{r}");
    assert_eq!(r["feeds"][0]["root"], hub_root["root"]);
    let resent = r["feeds"][0]["blob_bytes_received"].as_u64().unwrap();
    assert!(
        resent < size as u64,
        "the second run fetched only what was missing ({resent} of {size} bytes)"
    );
    assert!(spoke.inst.ok(&["verify"]).contains(": ok"));
}
