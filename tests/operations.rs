//! A day of operations on a hub and a spoke whose servers are never stopped: every command
//! runs against the live instances through their control sockets.

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crate::feeds::{
    build_python_packages, cargo_registry, http, http_bytes, npm, npm_registry, pip_install,
    publish_crate, publish_npm, run, twine_upload,
};
use crate::util::{bytes, Instance, Server};

/// Both servers are still the ones started at the beginning.
fn still_running(servers: &mut [&mut Server]) {
    for s in servers {
        assert!(
            s.child.try_wait().unwrap().is_none(),
            "a server stopped during the day"
        );
    }
}

fn get(server: &Server, path: &str) -> (u16, Vec<u8>) {
    http_bytes(
        &server.http,
        &format!("GET {path} HTTP/1.1\r\nHost: HOST\r\nConnection: close\r\n\r\n"),
        b"",
    )
}

/// `cairn verify` through the control socket, as the command line runs it, with the progress
/// it reports.
fn verify_with_progress(inst: &Instance) -> (u8, String, Vec<(u64, u64)>) {
    let mut progress = Vec::new();
    let (mut out, mut err) = (Vec::new(), Vec::new());
    let code = cairn_sync::replication::control::forward(
        &inst.data().join("control.sock"),
        &["verify".to_owned()],
        Path::new("/"),
        &mut out,
        &mut err,
        &mut |done, due| progress.push((done, due)),
    )
    .unwrap()
    .expect("the server answers on its control socket");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out),
        String::from_utf8_lossy(&err)
    );
    (code, text, progress)
}

#[test]
fn a_days_operations_on_a_hub_and_a_spoke_that_are_never_stopped() {
    // Morning: two fresh instances, started before anything is set up.
    let hub = Instance::new();
    let spoke = Instance::new();
    let hub_port = crate::util::free_udp_port();
    crate::util::serve_config(&hub, hub_port, "");
    let mut hub_server = Server::start(&hub);
    // Whoever reaches the control socket administers the instance: its owner only.
    let mode = std::os::unix::fs::PermissionsExt::mode(
        &std::fs::metadata(hub.data().join("control.sock"))
            .unwrap()
            .permissions(),
    );
    assert_eq!(mode & 0o777, 0o600);

    // Feeds, tokens, peers and trust, all on the running hub.
    for (name, kind) in [
        ("pypi", "pypi"),
        ("npm", "npm"),
        ("crates", "cargo"),
        ("files", "raw"),
    ] {
        let out = hub.ok(&["feed", "create", name, "--type", kind]);
        assert_eq!(out.trim(), format!("created {kind} feed {name}"));
    }
    let token = |scopes: &[&str]| hub.token(scopes);
    let publish = token(&["publish:*"]);
    let replicate = token(&["replicate:*"]);
    let hub_key = hub.ok(&["key", "show"]).trim().to_owned();
    let spoke_key = spoke.ok(&["key", "show"]).trim().to_owned();
    hub.ok(&["peer", "add", "spoke", "127.0.0.1:1", "--key", &spoke_key]);
    assert!(hub.ok(&["peer", "list"]).contains(&spoke_key));

    // The spoke starts with its replication configured, then gets its feeds, trust and peer.
    crate::util::serve_config(
        &spoke,
        0,
        &format!("[[replication]]\nname = \"from-hub\"\npeer = \"hub\"\ntoken = \"{replicate}\"\nfeeds = [\"pypi\", \"npm\", \"crates\", \"files\", \"@system\"]\nmode = \"pull\"\ninterval_secs = 0\n"),
    );
    let mut spoke_server = Server::start(&spoke);
    for (name, kind) in [
        ("pypi", "pypi"),
        ("npm", "npm"),
        ("crates", "cargo"),
        ("files", "raw"),
    ] {
        spoke.ok(&["feed", "create", name, "--type", kind]);
    }
    // Before the spoke trusts the hub and knows it, the run fails and says why.
    let out = spoke.fails(&["replicate", "from-hub"], 2);
    assert!(out.contains("no peer named `hub`"), "{out}");
    spoke.ok(&["trust", "add", &hub_key]);
    spoke.ok(&[
        "peer",
        "add",
        "hub",
        &format!("127.0.0.1:{hub_port}"),
        "--key",
        &hub_key,
    ]);

    // Publishing with every client, and with `cairn push`, to the running hub.
    let (wheel, sdist) = build_python_packages(&hub);
    let url = format!("{}/feeds/pypi/legacy/", hub_server.http);
    let out = twine_upload(&url, &publish, &wheel);
    assert!(out.status.success(), "{out:?}");
    let pushed = hub.ok(&["push", "pypi", sdist.to_str().unwrap()]);
    assert!(pushed.contains("published cairn-alpha 1.0.0"), "{pushed}");
    let npm_home = hub.path("npm-home");
    npm_registry(&npm_home, &hub_server.http, &publish);
    publish_npm(
        &npm_home,
        &hub.path("npm-lib"),
        r#"{"name":"@cairn/day","version":"1.0.0","main":"index.js"}"#,
        "module.exports = 'day';\n",
    );
    let cargo_home = hub.path("cargo-home");
    cargo_registry(&cargo_home, &hub_server.http);
    publish_crate(
        &cargo_home,
        &hub.path("cairn-day"),
        "cairn-day",
        "0.1.0",
        "pub fn day() {}\n",
        &publish,
    );
    // Raw files pushed from a relative path: the server reads them where the command runs.
    let files_dir = hub.path("raw");
    std::fs::create_dir_all(&files_dir).unwrap();
    let (keep, drop_later) = (bytes(1, 3 << 20), bytes(2, 2 << 20));
    std::fs::write(files_dir.join("keep.bin"), &keep).unwrap();
    std::fs::write(files_dir.join("old.bin"), &drop_later).unwrap();
    for (file, version) in [("keep.bin", "1"), ("old.bin", "0.9")] {
        let out = hub
            .cmd(&[
                "push",
                "files",
                file,
                "--name",
                "tool",
                "--version",
                version,
            ])
            .current_dir(&files_dir)
            .output()
            .unwrap();
        assert!(out.status.success(), "{out:?}");
    }
    let ls = hub.ls("files");
    assert_eq!(ls.len(), 2, "{ls:?}");
    // `cairn get` writes where the command runs, from the running server.
    let got = hub
        .cmd(&["get", "files", "tool", "1", "-o", "got.bin"])
        .current_dir(&files_dir)
        .output()
        .unwrap();
    assert!(got.status.success(), "{got:?}");
    assert_eq!(std::fs::read(files_dir.join("got.bin")).unwrap(), keep);

    // The spoke takes everything, and a developer installs from it.
    let r: serde_json::Value =
        serde_json::from_str(&spoke.ok(&["replicate", "from-hub", "--json"])).unwrap();
    assert!(r["error"].is_null(), "{r}");
    for f in r["feeds"].as_array().unwrap() {
        assert_eq!(f["converged"], true, "{r}");
    }
    for feed in ["pypi", "npm", "crates", "files"] {
        assert_eq!(hub.root(feed)["root"], spoke.root(feed)["root"], "{feed}");
    }
    let out = pip_install(
        &format!("{}/feeds/pypi/simple/", spoke_server.http),
        &spoke.path("site"),
        "cairn-beta==2.0.0",
    );
    assert!(out.status.success(), "{out:?}");
    let out = std::process::Command::new("uv")
        .args([
            "pip",
            "install",
            "--no-cache",
            "--no-build-isolation",
            "--python",
            "python3",
            "--index-url",
        ])
        .arg(format!("{}/feeds/pypi/simple/", spoke_server.http))
        .arg("--target")
        .arg(spoke.path("site-uv"))
        .arg("cairn-beta==2.0.0")
        .env_remove("PIP_FIND_LINKS")
        .env_remove("UV_INDEX_URL")
        .env_remove("UV_EXTRA_INDEX_URL")
        .env_remove("UV_FIND_LINKS")
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    npm_registry(&npm_home, &spoke_server.http, &publish);
    let app = spoke.path("npm-app");
    std::fs::create_dir_all(&app).unwrap();
    std::fs::write(
        app.join("package.json"),
        r#"{"name":"app","version":"1.0.0"}"#,
    )
    .unwrap();
    run(&mut npm(&npm_home, &app, &["install", "@cairn/day@1.0.0"]));
    assert!(app.join("node_modules/@cairn/day/index.js").exists());
    let (status, line) = get(&spoke_server, "/feeds/crates/ca/ir/cairn-day");
    assert_eq!(status, 200);
    assert!(String::from_utf8_lossy(&line).contains("\"vers\":\"0.1.0\""));

    // A token is revoked at noon and refused at once, with no restart.
    let id = hub
        .ok(&["token", "list"])
        .lines()
        .find(|l| l.contains("publish:*"))
        .and_then(|l| l.split_whitespace().next())
        .unwrap()
        .to_owned();
    assert_eq!(
        hub.ok(&["token", "revoke", &id]).trim(),
        format!("revoked {id}")
    );
    let out = twine_upload(&url, &publish, &wheel);
    assert!(!out.status.success(), "a revoked token still published");
    let (status, text) = http(
        &hub_server.http,
        &format!("PUT /feeds/files/tool/2/x.bin HTTP/1.1\r\nHost: HOST\r\nAuthorization: Bearer {publish}\r\nContent-Length: 1\r\nConnection: close\r\n\r\nx"),
    );
    assert_eq!(status, 401, "{text}");

    // Security staff record a block on the live hub; it reaches the spoke at its next run.
    let osv = hub.path("osv.json");
    std::fs::write(
        &osv,
        r#"{"id":"CAIRN-2026-0009","modified":"2026-11-01T00:00:00Z","summary":"day","affected":[{"package":{"ecosystem":"npm","name":"@cairn/day"},"ranges":[{"type":"SEMVER","events":[{"introduced":"0"}]}]}]}"#,
    )
    .unwrap();
    assert!(hub
        .ok(&["vuln", "import", osv.to_str().unwrap()])
        .contains("imported CAIRN-2026-0009"));
    hub.ok(&[
        "assessment",
        "create",
        "--vuln",
        "CAIRN-2026-0009",
        "--type",
        "Blocked",
        "--comment",
        "withdrawn",
    ]);
    spoke.ok(&["replicate", "from-hub"]);
    let (status, _) = get(&spoke_server, "/feeds/npm/@cairn/day/-/day-1.0.0.tgz");
    assert_eq!(status, 403, "the block did not hold on the spoke");

    // Afternoon: gc and verify on both sites while clients download.
    hub.ok(&["rm", "files", "tool", "0.9"]);
    spoke.ok(&["replicate", "from-hub"]);
    let stop = Arc::new(AtomicBool::new(false));
    let downloaders: Vec<_> = [hub_server.http.clone(), spoke_server.http.clone()]
        .into_iter()
        .map(|addr| {
            let (stop, keep) = (stop.clone(), keep.clone());
            std::thread::spawn(move || {
                let mut n = 0u32;
                // Bounded: at most 2,000 downloads or until told to stop.
                while n < 2_000 && !stop.load(Ordering::Relaxed) {
                    let (status, response) = http_bytes(
                        &addr,
                        "GET /feeds/files/tool/1/keep.bin HTTP/1.1\r\nHost: HOST\r\nConnection: close\r\n\r\n",
                        b"",
                    );
                    assert_eq!(status, 200);
                    assert!(response == keep, "a download differed");
                    n += 1;
                }
                n
            })
        })
        .collect();
    std::thread::sleep(Duration::from_millis(300));
    for inst in [&hub, &spoke] {
        let gc: serde_json::Value = serde_json::from_str(&inst.ok(&["gc", "--json"])).unwrap();
        assert!(gc["blobs_removed"].as_u64().unwrap() >= 1, "{gc}");
        assert!(gc["bytes_freed"].as_u64().unwrap() >= 2 << 20, "{gc}");
        assert!(gc["longest_pause_us"].is_u64(), "{gc}");
        let (code, text, progress) = verify_with_progress(inst);
        assert_eq!(code, 0, "{text}");
        assert!(text.contains(": ok"), "{text}");
        let last = *progress.last().expect("verify reported progress");
        assert!(last.1 >= 3 << 20 && last.0 == last.1, "{progress:?}");
    }
    stop.store(true, Ordering::Relaxed);
    for d in downloaders {
        let n = d.join().expect("a download failed while gc and verify ran");
        assert!(n > 0);
    }

    // Evening: a publish token made now works at once, and the spoke follows.
    let late = token(&["publish:files"]);
    let (status, text) = http(
        &hub_server.http,
        &format!("PUT /feeds/files/tool/2/late.bin HTTP/1.1\r\nHost: HOST\r\nAuthorization: Bearer {late}\r\nContent-Length: 4\r\nConnection: close\r\n\r\nlate"),
    );
    assert!(status == 200 || status == 201, "{text}");
    spoke.ok(&["replicate", "from-hub"]);
    assert_eq!(hub.root("files")["root"], spoke.root("files")["root"]);
    let (status, response) = get(&spoke_server, "/feeds/files/tool/2/late.bin");
    assert_eq!((status, &response[..]), (200, &b"late"[..]));
    still_running(&mut [&mut hub_server, &mut spoke_server]);
    let log = spoke.ok(&["replication", "log"]);
    assert!(log.contains("from-hub"), "{log}");
}
