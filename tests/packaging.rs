//! The Debian package: installed with `dpkg -i`, it gives `cairn` and `cairn-link`, a system
//! user and a systemd unit whose command serves and stops gracefully on SIGTERM.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::feeds::run;

fn sh(cmd: &str) -> String {
    let out = run(Command::new("sh").args(["-c", cmd]));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn the_debian_package_installs_a_service_that_serves_and_stops_gracefully() {
    let deb = std::env::var("CAIRN_DEB").unwrap_or_else(|_| {
        panic!("CAIRN_DEB must name the .deb to test (bash .ci/run builds it with `cargo deb -p cairn-tools`)")
    });
    run(Command::new("dpkg").args(["-i", &deb]));
    let version = sh("/usr/bin/cairn --version");
    assert!(
        version.starts_with("cairn ") && version.contains("replication protocol"),
        "{version}"
    );
    assert!(sh("/usr/bin/cairn-link --help").contains("Usage"));
    let unit = std::fs::read_to_string("/lib/systemd/system/cairn.service").unwrap();
    for line in [
        "ExecStart=/usr/bin/cairn serve",
        "User=cairn",
        "Environment=CAIRN_DATA_DIR=/var/lib/cairn",
        "Restart=on-failure",
        "KillSignal=SIGTERM",
    ] {
        assert!(unit.contains(line), "the unit has no {line}");
    }
    if Command::new("systemd-analyze")
        .arg("--version")
        .output()
        .is_ok()
    {
        let out = Command::new("systemd-analyze")
            .args(["verify", "/lib/systemd/system/cairn.service"])
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!err.contains("cairn.service:"), "{err}");
    }
    assert!(sh("getent passwd cairn").starts_with("cairn:"));
    assert_eq!(sh("stat -c %U /var/lib/cairn").trim(), "cairn");

    // The unit's command, as its user, on a data directory of the test's own.
    let dir = tempfile::tempdir_in("/var/lib/cairn").unwrap();
    let data = dir.path().join("data");
    std::fs::create_dir_all(&data).unwrap();
    std::fs::write(
        data.join("cairn.toml"),
        "[sync]\nlisten = \"127.0.0.1:0\"\n\n[http]\nlisten = \"127.0.0.1:0\"\n",
    )
    .unwrap();
    sh(&format!("chown -R cairn:cairn {}", dir.path().display()));
    let as_cairn = |args: &[&str]| {
        // setpriv execs (no process in between), so the signal reaches cairn itself.
        let mut c = Command::new("setpriv");
        c.args(["--reuid=cairn", "--regid=cairn", "--clear-groups", "env"])
            .arg(format!("CAIRN_DATA_DIR={}", data.display()))
            .arg("/usr/bin/cairn")
            .args(args);
        c
    };
    let mut server = as_cairn(&["serve"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = server.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let serving = rx.recv_timeout(Duration::from_secs(30)).expect("serving");
    let serving = if serving.starts_with("initialised") {
        rx.recv_timeout(Duration::from_secs(30)).expect("serving")
    } else {
        serving
    };
    assert!(serving.starts_with("cairn serving"), "{serving}");
    // Administered while it runs, as its user.
    let out = run(&mut as_cairn(&["feed", "create", "pkgs", "--type", "pypi"]));
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "created pypi feed pkgs"
    );
    // SIGTERM, as systemd stops it: a clean exit, saying so.
    run(Command::new("kill").args(["-TERM", &server.id().to_string()]));
    let deadline = Instant::now() + Duration::from_secs(40);
    let status = loop {
        if let Some(s) = server.try_wait().unwrap() {
            break s;
        }
        assert!(
            Instant::now() < deadline,
            "cairn serve did not stop on SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(status.success(), "{status}");
    let said: Vec<String> = rx.try_iter().collect();
    assert!(said.iter().any(|l| l == "cairn stopped"), "{said:?}");

    run(Command::new("dpkg").args(["-r", "cairn"]));
    assert!(!std::path::Path::new("/usr/bin/cairn").exists());
}
