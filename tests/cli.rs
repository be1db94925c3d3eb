//! The `cairn` command line on a real data directory.

use std::fs;
use std::process::Command;

use cairn_store::package::fixtures;

use crate::util::{bytes, Instance};

fn b3sum(path: &std::path::Path) -> String {
    let out = Command::new("b3sum")
        .arg("--no-names")
        .arg(path)
        .output()
        .expect("b3sum must be installed (.ci/run installs it with `cargo install b3sum`)");
    assert!(out.status.success());
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

#[test]
fn quick_start_round_trip_matches_b3sum() {
    let c = Instance::new();
    c.ok(&["feed", "create", "demo", "--type", "raw"]);
    let input = c.path("some.tar.gz");
    fs::write(&input, bytes(1, 3_000_000)).unwrap();
    let pushed = c.ok(&[
        "push",
        "demo",
        input.to_str().unwrap(),
        "--name",
        "x",
        "--version",
        "1",
    ]);
    assert!(pushed.contains("published x 1"), "{pushed}");
    let out = c.path("out");
    c.ok(&["get", "demo", "x", "1", "-o", out.to_str().unwrap()]);
    assert_eq!(fs::read(&out).unwrap(), fs::read(&input).unwrap());
    let ls = c.ls("demo");
    assert_eq!(ls.len(), 1);
    assert_eq!(ls[0]["files"][0]["blob"].as_str().unwrap(), b3sum(&input));
    assert_eq!(ls[0]["files"][0]["name"], "some.tar.gz");
    // A small file goes inline and still matches b3sum.
    let small = c.path("small.txt");
    fs::write(&small, b"hello cairn\n").unwrap();
    c.ok(&[
        "push",
        "demo",
        small.to_str().unwrap(),
        "--name",
        "s",
        "--version",
        "1",
    ]);
    let ls = c.ls("demo");
    let s = ls.iter().find(|r| r["name"] == "s").unwrap();
    assert_eq!(s["files"][0]["blob"].as_str().unwrap(), b3sum(&small));
    let verify = c.ok(&["verify"]);
    assert!(verify.contains(": ok"), "{verify}");
    let root = c.root("demo");
    assert_eq!(root["count"], 2);
    assert_eq!(root["root"].as_str().unwrap().len(), 64);
}

#[test]
fn package_files_name_themselves() {
    let c = Instance::new();
    for (feed, ty) in [("py", "pypi"), ("js", "npm"), ("rs", "cargo")] {
        c.ok(&["feed", "create", feed, "--type", ty]);
    }
    let files = [
        (
            "py",
            "demo_pkg-1.0.0-py3-none-any.whl",
            fixtures::wheel("demo-pkg", "1.0.0", &["other>=1"]),
        ),
        (
            "py",
            "demo-pkg-1.0.0.tar.gz",
            fixtures::sdist("demo-pkg", "1.0.0"),
        ),
        (
            "js",
            "left-pad-1.3.0.tgz",
            fixtures::npm_tarball("@acme/left-pad", "1.3.0"),
        ),
        (
            "rs",
            "foo-0.2.0.crate",
            fixtures::crate_file("foo", "0.2.0"),
        ),
    ];
    for (feed, name, data) in &files {
        let p = c.path(name);
        fs::write(&p, data).unwrap();
        c.ok(&["push", feed, p.to_str().unwrap()]);
    }
    let py = c.ls("py");
    assert_eq!(py.len(), 1, "wheel and sdist are one version");
    assert_eq!(py[0]["name"], "demo-pkg");
    // The wheel's core metadata goes beside it (PEP 658), as an upload stores it.
    let names: Vec<&str> = py[0]["files"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        names,
        [
            "demo_pkg-1.0.0-py3-none-any.whl",
            "demo_pkg-1.0.0-py3-none-any.whl.metadata",
            "demo-pkg-1.0.0.tar.gz"
        ]
    );
    assert_eq!(py[0]["metadata"]["requires_dist"][0], "other>=1");
    assert_eq!(
        py[0]["files"][0]["digests"]["sha256"]
            .as_str()
            .unwrap()
            .len(),
        64
    );
    let js = c.ls("js");
    assert_eq!(js[0]["name"], "@acme/left-pad");
    assert_eq!(js[0]["version"], "1.3.0");
    assert_eq!(
        js[0]["files"][0]["digests"]["sha512"]
            .as_str()
            .unwrap()
            .len(),
        128
    );
    let rs = c.ls("rs");
    assert_eq!(
        (rs[0]["name"].as_str(), rs[0]["version"].as_str()),
        (Some("foo"), Some("0.2.0"))
    );
    // Getting a file of a version of several files needs its name.
    let err = c.fails(
        &[
            "get",
            "py",
            "demo-pkg",
            "1.0.0",
            "-o",
            c.path("o").to_str().unwrap(),
        ],
        2,
    );
    assert!(err.contains("has 3 files"), "{err}");
    c.ok(&[
        "get",
        "py",
        "demo-pkg",
        "1.0.0",
        "demo-pkg-1.0.0.tar.gz",
        "-o",
        c.path("o").to_str().unwrap(),
    ]);
    assert_eq!(fs::read(c.path("o")).unwrap(), files[1].2);
    assert!(c.ok(&["verify"]).contains(": ok"));
}

#[test]
fn bad_input_is_a_clear_error_and_changes_nothing() {
    let c = Instance::new();
    c.ok(&["feed", "create", "demo", "--type", "raw"]);
    let good = c.path("good.bin");
    fs::write(&good, b"content").unwrap();
    let before = c.root("demo");
    let good = good.to_str().unwrap();
    let missing = c.path("missing.bin");
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (
            vec![
                "push",
                "demo",
                missing.to_str().unwrap(),
                "--name",
                "x",
                "--version",
                "1",
            ],
            "missing.bin",
        ),
        (
            vec!["push", "nope", good, "--name", "x", "--version", "1"],
            "feed `nope` does not exist",
        ),
        (
            vec!["push", "demo", good, "--name", "a/b", "--version", "1"],
            "invalid package name",
        ),
        (
            vec!["push", "demo", good, "--name", "../x", "--version", "1"],
            "invalid package name",
        ),
        (
            vec!["push", "demo", good, "--name", "..", "--version", "1"],
            "must not contain '..'",
        ),
        (
            vec!["push", "demo", good, "--name", "x\u{1}y", "--version", "1"],
            "control characters",
        ),
        (
            vec!["push", "demo", good, "--name", "x", "--version", "../1"],
            "invalid version",
        ),
        (vec!["push", "demo", good], "pass --name and --version"),
        (
            vec!["push", "demo", good, "--name", "x"],
            "both --name and --version",
        ),
        (
            vec!["feed", "create", "../evil", "--type", "raw"],
            "invalid feed name",
        ),
        (
            vec!["feed", "create", "x", "--type", "maven"],
            "unknown feed type",
        ),
        (vec!["get", "demo", "x", "1", "-o", "out"], "not in feed"),
        (vec!["rm", "demo", "x", "1"], "not in feed"),
        (
            vec!["trust", "add", "not-a-key"],
            "not an ed25519 key fingerprint",
        ),
    ];
    for (args, expect) in cases {
        let err = c.fails(&args, 2);
        let first = err.lines().next().unwrap_or("");
        assert!(
            first.starts_with("error: ") && first.contains(expect),
            "cairn {args:?}: first line of stderr `{err}` lacks `{expect}`"
        );
        assert!(!err.contains("panicked"), "{err}");
    }
    assert_eq!(c.root("demo"), before);
    assert!(c.ls("demo").is_empty());
    // A package file that is not what its name says.
    let fake = c.path("fake-1.0.0.crate");
    fs::write(&fake, b"definitely not gzip").unwrap();
    c.ok(&["feed", "create", "rs", "--type", "cargo"]);
    let err = c.fails(&["push", "rs", fake.to_str().unwrap()], 2);
    assert!(err.contains("not gzip"), "{err}");
    assert!(c.ls("rs").is_empty());
    // No store at all.
    let empty = tempfile::tempdir().unwrap();
    let out = std::process::Command::new(crate::util::cairn_bin())
        .args(["--data-dir", empty.path().to_str().unwrap(), "ls", "demo"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("run `cairn init` first"));
}

#[test]
fn tampered_blob_is_never_served_and_verify_names_it() {
    let c = Instance::new();
    c.ok(&["feed", "create", "demo", "--type", "raw"]);
    let input = c.path("pkg.tar.gz");
    let data = bytes(7, 500_000);
    fs::write(&input, &data).unwrap();
    c.ok(&[
        "push",
        "demo",
        input.to_str().unwrap(),
        "--name",
        "x",
        "--version",
        "1",
    ]);
    let blob = b3sum(&input);
    let path = c.data().join("blobs").join(&blob[..2]).join(&blob);
    let mut stored = fs::read(&path).unwrap();
    stored[400_000] ^= 0x01;
    fs::write(&path, &stored).unwrap();

    let out_path = c.path("out");
    let err = c.fails(
        &["get", "demo", "x", "1", "-o", out_path.to_str().unwrap()],
        2,
    );
    assert!(err.contains(&blob) && err.contains("corrupt"), "{err}");
    assert!(!out_path.exists(), "no output file from a corrupt blob");
    let stdout = c.run(&["get", "demo", "x", "1", "-o", "-"]);
    assert_eq!(stdout.status.code(), Some(2));
    assert!(
        stdout.stdout.len() < 400_000,
        "stops before the bad chunk group"
    );
    assert_eq!(&stdout.stdout[..], &data[..stdout.stdout.len()]);

    let out = c.run(&["verify"]);
    assert_eq!(
        out.status.code(),
        Some(1),
        "{}",
        c.report(&["verify"], &out)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains(&blob) && text.contains(path.to_str().unwrap()),
        "{text}"
    );
    let json: serde_json::Value =
        serde_json::from_slice(&c.run(&["verify", "--json"]).stdout).unwrap();
    assert_eq!(json["problems"][0]["kind"], "blob");
    assert_eq!(json["problems"][0]["subject"], blob.as_str());
}

#[test]
fn rm_then_gc_frees_the_blob() {
    let c = Instance::new();
    c.ok(&["feed", "create", "demo", "--type", "raw"]);
    let a = c.path("a.bin");
    let b = c.path("b.bin");
    fs::write(&a, bytes(1, 100_000)).unwrap();
    fs::write(&b, bytes(2, 100_000)).unwrap();
    c.ok(&[
        "push",
        "demo",
        a.to_str().unwrap(),
        "--name",
        "a",
        "--version",
        "1",
    ]);
    c.ok(&[
        "push",
        "demo",
        b.to_str().unwrap(),
        "--name",
        "b",
        "--version",
        "1",
    ]);
    let root_before = c.root("demo");
    c.ok(&["rm", "demo", "a", "1"]);
    assert_ne!(c.root("demo")["root"], root_before["root"]);
    let ls = c.ls("demo");
    assert_eq!(ls.iter().filter(|r| r["kind"] == "tombstone").count(), 1);
    let gc: serde_json::Value = serde_json::from_str(&c.ok(&["gc", "--json"])).unwrap();
    assert_eq!(gc["blobs_removed"], 1);
    assert_eq!(gc["bytes_freed"], 100_000);
    let gone = b3sum(&a);
    assert!(!c.data().join("blobs").join(&gone[..2]).join(&gone).exists());
    c.ok(&[
        "get",
        "demo",
        "b",
        "1",
        "-o",
        c.path("b.out").to_str().unwrap(),
    ]);
    assert!(c.ok(&["verify"]).contains(": ok"));
}

/// `[server] worker_threads` outside 1..=1024, or an unknown `[server]` option, is refused by
/// every command that reads the configuration, naming it; a valid one loads.
#[test]
fn server_options_are_checked() {
    let c = Instance::new();
    let toml = c.data().join("cairn.toml");
    for (text, wanted) in [
        (
            "[server]\nworker_threads = 0\n",
            "worker_threads must be between 1 and 1024",
        ),
        (
            "[server]\nworker_threads = 5000\n",
            "worker_threads must be between 1 and 1024",
        ),
        ("[server]\nthreads = 4\n", "unknown field `threads`"),
    ] {
        fs::write(&toml, text).unwrap();
        let err = c.fails(&["replication", "list"], 2);
        assert!(
            err.contains(wanted) && err.contains("cairn.toml"),
            "{text}: {err}"
        );
        let err = c.fails(&["serve"], 2);
        assert!(err.contains(wanted), "{text}: {err}");
    }
    fs::write(&toml, "[server]\nworker_threads = 3\n").unwrap();
    assert!(c.ok(&["replication", "list"]).contains("no replications"));
}

#[test]
fn key_and_trust() {
    let c = Instance::new();
    let key = c.ok(&["key", "show"]).trim().to_owned();
    assert_eq!(key.len(), 64);
    let listed = c.ok(&["trust", "list"]);
    assert!(listed.contains(&format!("{key} *")), "{listed}");
    let other = Instance::new();
    let other_key = other.ok(&["key", "show"]).trim().to_owned();
    c.ok(&["trust", "add", &other_key, "--feed", "demo"]);
    assert!(c
        .ok(&["trust", "list"])
        .contains(&format!("{other_key} demo")));
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = fs::metadata(c.data().join("identity/instance.key"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }
    let err = c.fails(&["init"], 2);
    assert!(err.contains("already exists"), "{err}");
}

#[test]
fn tokens_peers_and_the_replication_log() {
    let c = Instance::new();
    let out = c
        .cmd(&[
            "token",
            "create",
            "--scope",
            "replicate:*",
            "--label",
            "spoke",
        ])
        .output()
        .unwrap();
    assert!(out.status.success());
    let secret = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    assert!(secret.starts_with("cairn_"), "{secret}");
    let list = c.ok(&["token", "list"]);
    assert!(
        list.contains("replicate:*") && !list.contains(&secret),
        "{list}"
    );
    let err = c.fails(&["token", "create", "--scope", "replicate:../x"], 2);
    assert!(err.contains("invalid scope"), "{err}");
    let other = Instance::new();
    let key = other.ok(&["key", "show"]).trim().to_owned();
    c.ok(&["peer", "add", "hub", "127.0.0.1:7443", "--key", &key]);
    assert!(c
        .ok(&["peer", "list"])
        .contains(&format!("hub 127.0.0.1:7443 {key}")));
    let err = c.fails(
        &["peer", "add", "hub2", "127.0.0.1:7443", "--key", "abc"],
        2,
    );
    assert!(err.contains("fingerprint"), "{err}");
    let err = c.fails(&["peer", "add", "hub3", "not-an-address", "--key", &key], 2);
    assert!(err.contains("host:port"), "{err}");
    assert!(c
        .ok(&["replication", "log"])
        .contains("no replication runs yet"));
    let id = list.split_whitespace().next().unwrap().to_owned();
    c.ok(&["token", "revoke", &id]);
    assert!(!c.ok(&["token", "list"]).contains(&id));
}

#[test]
fn vulnerabilities_and_assessments() {
    let c = Instance::new();
    let osv = c.path("osv.json");
    fs::write(&osv, r#"[{"id": "PYSEC-1", "modified": "2026-01-01T00:00:00Z", "summary": "one", "database_specific": {"x": 1.5}},
                       {"id": "PYSEC-2", "modified": "2026-01-02T00:00:00Z"}]"#).unwrap();
    c.ok(&["vuln", "import", osv.to_str().unwrap()]);
    let list = c.ok(&["vuln", "list"]);
    assert!(
        list.contains("PYSEC-1") && list.contains("PYSEC-2"),
        "{list}"
    );
    let bad = c.path("bad.json");
    fs::write(&bad, r#"{"summary": "no id"}"#).unwrap();
    assert!(c
        .fails(&["vuln", "import", bad.to_str().unwrap()], 2)
        .contains("invalid OSV record"));
    let err = c.fails(
        &[
            "assessment",
            "create",
            "--vuln",
            "PYSEC-1",
            "--type",
            "Quarantine",
        ],
        2,
    );
    assert!(err.contains("no assessment type `Quarantine`"), "{err}");
    // Ignore, Caution and Blocked are built in; a created type joins them.
    c.ok(&["assessment-type", "create", "Quarantine", "--blocking"]);
    let types = c.ok(&["assessment-type", "list"]);
    for t in [
        "Blocked blocking",
        "Caution -",
        "Ignore -",
        "Quarantine blocking",
    ] {
        assert!(types.contains(t), "{types}");
    }
    c.ok(&["assessment-type", "create", "Gone"]);
    c.ok(&["assessment-type", "rm", "Gone"]);
    assert!(!c.ok(&["assessment-type", "list"]).contains("Gone"));
    assert!(c
        .fails(&["assessment-type", "rm", "Gone"], 2)
        .contains("not in feed"));
    let err = c.fails(
        &[
            "assessment",
            "create",
            "--vuln",
            "NOPE",
            "--type",
            "Blocked",
        ],
        2,
    );
    assert!(err.contains("no vulnerability"), "{err}");
    let id = c
        .ok(&[
            "assessment",
            "create",
            "--vuln",
            "PYSEC-1",
            "--type",
            "Blocked",
            "--comment",
            "no",
        ])
        .trim()
        .to_owned();
    let list: Vec<serde_json::Value> =
        serde_json::from_str(&c.ok(&["assessment", "list", "--json"])).unwrap();
    assert_eq!(list[0]["id"], id.as_str());
    c.ok(&["assessment", "rm", &id]);
    assert_eq!(c.ok(&["assessment", "list"]).trim(), "");
    assert!(c.ok(&["verify"]).contains(": ok"));
}
