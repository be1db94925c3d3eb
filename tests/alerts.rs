//! Webhook alerts, received by a server the test starts: a failing replication, a stale
//! checkpoint and a verify that finds a problem each alert once, signed, retried when the
//! receiver fails, and each recovery alerts once.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::util::{bytes, Instance, Server};

/// What the receiver got: the signature header and the body of each POST it accepted.
type Received = Arc<Mutex<Vec<(String, String)>>>;

/// A webhook receiver on loopback that answers 500 to its first request and 200 after;
/// it stops by itself after `life`.
fn receiver(life: Duration) -> (String, Received, Arc<Mutex<u32>>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/hooks/cairn", listener.local_addr().unwrap());
    listener.set_nonblocking(true).unwrap();
    let got: Received = Arc::default();
    let refused = Arc::new(Mutex::new(0u32));
    let (g, r) = (got.clone(), refused.clone());
    std::thread::spawn(move || {
        let end = Instant::now() + life;
        let mut first = true;
        while Instant::now() < end {
            let Ok((stream, _)) = listener.accept() else {
                std::thread::sleep(Duration::from_millis(20));
                continue;
            };
            stream.set_nonblocking(false).unwrap();
            stream
                .set_read_timeout(Some(Duration::from_secs(5)))
                .unwrap();
            let mut reader = BufReader::new(stream);
            let (mut length, mut signature) = (0usize, String::new());
            let mut line = String::new();
            while reader.read_line(&mut line).unwrap_or(0) > 2 {
                let lower = line.to_ascii_lowercase();
                if let Some(v) = lower.strip_prefix("content-length:") {
                    length = v.trim().parse().unwrap_or(0);
                }
                if lower.starts_with("x-cairn-signature:") {
                    signature = line["x-cairn-signature:".len()..].trim().to_owned();
                }
                line.clear();
            }
            let mut body = vec![0; length.min(1 << 20)];
            let _ = reader.read_exact(&mut body);
            let mut stream = reader.into_inner();
            if first {
                first = false;
                *r.lock().unwrap() += 1;
                let _ = stream.write_all(
                    b"HTTP/1.1 500 Internal Server Error\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
                );
                continue;
            }
            g.lock()
                .unwrap()
                .push((signature, String::from_utf8_lossy(&body).into_owned()));
            let _ = stream.write_all(
                b"HTTP/1.1 204 No Content\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
            );
        }
    });
    (url, got, refused)
}

/// The events received so far, as (event, subject).
fn events(got: &Received) -> Vec<(String, String)> {
    got.lock()
        .unwrap()
        .iter()
        .map(|(_, body)| {
            let v: serde_json::Value = serde_json::from_str(body).unwrap();
            (
                v["event"].as_str().unwrap_or("").to_owned(),
                v["subject"].as_str().unwrap_or("").to_owned(),
            )
        })
        .collect()
}

/// Waits (at most 40 s) until `event` about `subject` has arrived.
fn wait_for(got: &Received, event: &str, subject: &str) {
    let end = Instant::now() + Duration::from_secs(40);
    while Instant::now() < end {
        if events(got).iter().any(|(e, s)| e == event && s == subject) {
            return;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("no {event} alert about {subject}; got {:?}", events(got));
}

#[test]
fn a_webhook_hears_of_failures_stale_checkpoints_and_verify_problems_and_of_recovery() {
    let (url, got, refused) = receiver(Duration::from_secs(150));
    let hub = Instance::new();
    let spoke = Instance::new();
    for inst in [&hub, &spoke] {
        inst.ok(&["feed", "create", "files", "--type", "raw"]);
    }
    spoke.ok(&["feed", "create", "east", "--type", "raw"]);
    let content = bytes(7, 100_000);
    hub.push("files", "tool.bin", "tool", "1", &content);
    let (replicate, port) = crate::util::hub_serving(&hub, &spoke, "replicate:*");
    // The hub signs a fresh checkpoint for every pull a second apart (by default it passes
    // on the one it signed for five minutes while the feed is unchanged).
    std::fs::write(
        hub.data().join("cairn.toml"),
        format!("[sync]\nlisten = \"127.0.0.1:{port}\"\ncheckpoint_refresh_secs = 1\n\n[http]\nlisten = \"127.0.0.1:0\"\n"),
    )
    .unwrap();
    let secret = "webhook-secret";
    crate::util::serve_config(
        &spoke,
        0,
        &format!("[alerts]\nwebhook = \"{url}\"\nsecret = \"{secret}\"\nreplication_failures = 2\ncheck_secs = 1\n\
feed_checkpoint_max_age_secs = {{ files = 3 }}\n\n\
[[replication]]\nname = \"from-hub\"\npeer = \"hub\"\ntoken = \"{replicate}\"\nfeeds = [\"files\"]\nmode = \"pull\"\ninterval_secs = 0\n\n\
[[replication]]\nname = \"from-tokyo\"\npeer = \"tokyo\"\ntoken = \"{replicate}\"\nfeeds = [\"east\"]\nmode = \"pull\"\ninterval_secs = 1\n"),
    );
    let _hub_server = Server::start(&hub);
    let _spoke_server = Server::start(&spoke);
    spoke.ok(&["replicate", "from-hub"]);

    // A replication failing twice in a row alerts once (after the receiver's first refusal).
    wait_for(&got, "replication.failing", "from-tokyo");
    assert!(*refused.lock().unwrap() >= 1);
    // The checkpoint of `files` gets older than its 3 s.
    wait_for(&got, "checkpoint.stale", "files");
    // Fixed: the peer is added and the feed exists upstream.
    hub.ok(&["feed", "create", "east", "--type", "raw"]);
    let hub_key = hub.ok(&["key", "show"]).trim().to_owned();
    spoke.ok(&[
        "peer",
        "add",
        "tokyo",
        &format!("127.0.0.1:{port}"),
        "--key",
        &hub_key,
    ]);
    wait_for(&got, "replication.recovered", "from-tokyo");
    spoke.ok(&["replicate", "from-hub"]);
    wait_for(&got, "checkpoint.fresh", "files");

    // A blob damaged on disk: verify (through the running server) finds it and alerts.
    let blob = std::fs::read_dir(spoke.data().join("blobs"))
        .unwrap()
        .flatten()
        .flat_map(|d| std::fs::read_dir(d.path()).into_iter().flatten().flatten())
        .map(|e| e.path())
        .find(|p| p.extension().is_none())
        .expect("the replicated blob's file");
    let good = std::fs::read(&blob).unwrap();
    let mut bad = good.clone();
    bad[50_000] ^= 1;
    std::fs::write(&blob, &bad).unwrap();
    spoke.fails(&["verify"], 1);
    wait_for(&got, "verify.problems", "verify");
    std::fs::write(&blob, &good).unwrap();
    spoke.ok(&["verify"]);
    wait_for(&got, "verify.ok", "verify");

    // Each problem and each recovery alerted once.
    let seen = events(&got);
    for (event, subject) in [
        ("replication.failing", "from-tokyo"),
        ("replication.recovered", "from-tokyo"),
        ("checkpoint.stale", "files"),
        ("checkpoint.fresh", "files"),
        ("verify.problems", "verify"),
        ("verify.ok", "verify"),
    ] {
        let n = seen
            .iter()
            .filter(|(e, s)| e == event && s == subject)
            .count();
        assert_eq!(n, 1, "{event} {subject}: {seen:?}");
    }
    // Every alert is signed: HMAC-SHA256 over `TIME.BODY`, checked with Python's hmac.
    for (signature, body) in got.lock().unwrap().iter() {
        let (t, v1) = signature
            .strip_prefix("t=")
            .and_then(|s| s.split_once(",v1="))
            .unwrap_or_else(|| panic!("signature {signature:?}"));
        let out = std::process::Command::new("python3")
            .args([
                "-c",
                "import hmac,hashlib,sys; print(hmac.new(sys.argv[1].encode(), sys.argv[2].encode(), hashlib.sha256).hexdigest())",
                secret,
                &format!("{t}.{body}"),
            ])
            .output()
            .unwrap();
        assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), v1, "{body}");
        let v: serde_json::Value = serde_json::from_str(body).unwrap();
        assert_eq!(v["instance"], spoke.ok(&["key", "show"]).trim(), "{body}");
        assert_eq!(v["time"].as_u64().unwrap().to_string(), t);
        assert!(!v["message"].as_str().unwrap_or("").is_empty(), "{body}");
    }
}
