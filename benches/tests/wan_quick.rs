//! The WAN runner's quick mode as a smoke test: small corpora over the emulated P1 link, every
//! tool, and the replicas must match. It asserts outputs and consistency, never timings.

use std::path::PathBuf;
use std::process::Command;

#[test]
fn quick_run_writes_results_and_every_replica_matches() {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_wan"))
        .args([
            "--quick",
            "--scenarios",
            "cold-L,noop-T,incr-T,resume-L",
            "--dir",
        ])
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "wan --quick failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let results: PathBuf = dir.path().join("results.json");
    let rows: Vec<serde_json::Value> =
        serde_json::from_str(&std::fs::read_to_string(&results).unwrap()).unwrap();
    assert!(dir.path().join("results.md").exists());
    for chart in ["goodput-cold-L.png", "goodput-resume-L.png"] {
        let png = std::fs::read(dir.path().join(chart)).unwrap_or_default();
        assert!(png.starts_with(b"\x89PNG"), "{chart} is a PNG");
    }
    for scenario in ["cold-L", "noop-T", "incr-T +1 -10", "resume-L"] {
        for tool in ["cairn", "rsyncd", "rsync-ssh"] {
            let row = rows
                .iter()
                .find(|r| r["scenario"] == scenario && r["tool"] == tool)
                .unwrap_or_else(|| panic!("no row for {scenario} {tool}"));
            assert_eq!(row["consistent"], true, "{row}");
            assert!(row["bytes_hub_to_spoke"].as_u64().unwrap() > 0, "{row}");
        }
    }
    let noop = rows
        .iter()
        .find(|r| r["scenario"] == "noop-T" && r["tool"] == "cairn")
        .unwrap();
    assert_eq!(noop["round_trips"], 1, "a no-op is one round trip: {noop}");
}
