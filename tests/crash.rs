//! `kill -9` at random points of a loop of pushes: the store reopens, `verify` passes, every
//! push that reported success is present, and no partial entry is visible.

use std::collections::BTreeSet;
use std::fs;
use std::io::{BufRead, BufReader};
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::util::{bytes, cairn_bin, Instance};

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
    let mut rng = 0x2545_F491_4F6C_DD1Du64;
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
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        let delay = Duration::from_millis(rng % 400);
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
