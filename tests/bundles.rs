//! Signed air-gap bundles: a hub's feeds reach a site that never connects, by file. pip, npm
//! and cargo install from the site; a damaged bundle, an older one and an interrupted import
//! leave nothing half-applied.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};

use crate::feeds::{
    build_python_packages, cargo_app_prints, cargo_registry, npm, npm_registry, pip_install,
    publish_crate, publish_npm, run, twine_upload,
};
use crate::util::{bytes, listing, serve_config, Instance, Server};

fn path(p: &std::path::Path) -> &str {
    p.to_str().unwrap()
}

#[test]
fn a_site_that_never_connects_installs_from_a_bundle_and_refuses_a_damaged_or_older_one() {
    let hub = Instance::new();
    for (feed, kind) in [
        ("pypi", "pypi"),
        ("npm", "npm"),
        ("crates", "cargo"),
        ("files", "raw"),
    ] {
        hub.ok(&["feed", "create", feed, "--type", kind]);
    }
    serve_config(&hub, 0, "");
    let publish = hub.token(&["publish:*"]);
    let hub_server = Server::start(&hub);
    let (wheel, sdist) = build_python_packages(&hub);
    for file in [&wheel, &sdist] {
        let out = twine_upload(
            &format!("{}/feeds/pypi/legacy/", hub_server.http),
            &publish,
            file,
        );
        assert!(out.status.success(), "{out:?}");
    }
    let npm_home = hub.path("npm-home");
    npm_registry(&npm_home, &hub_server.http, &publish);
    publish_npm(
        &npm_home,
        &hub.path("npm-lib"),
        r#"{"name":"@cairn/lib","version":"1.0.0","main":"index.js"}"#,
        "module.exports = 7;\n",
    );
    let cargo_home = hub.path("cargo-home");
    cargo_registry(&cargo_home, &hub_server.http);
    publish_crate(
        &cargo_home,
        &hub.path("cairn-lib"),
        "cairn-lib",
        "0.3.0",
        "pub fn seven() -> u32 { 7 }\n",
        &publish,
    );
    hub.push("files", "base.bin", "base", "1", &bytes(1, 2 << 20));
    // Exported through the running server.
    let full = hub.path("full.cairn");
    let said = hub.ok(&["export", path(&full)]);
    assert!(said.contains("wrote bundle"), "{said}");
    let full_bytes = std::fs::read(&full).unwrap();

    let site = Instance::new();
    let hub_key = hub.ok(&["key", "show"]).trim().to_owned();
    site.ok(&["trust", "add", &hub_key]);

    // One flipped byte anywhere: refused, nothing applied, no blob stored.
    for at in [full_bytes.len() / 3, full_bytes.len() - 100, 40] {
        let mut bad = full_bytes.clone();
        bad[at] ^= 0x40;
        let bad_path = site.path("bad.cairn");
        std::fs::write(&bad_path, &bad).unwrap();
        let err = site.fails(&["import", path(&bad_path)], 2);
        assert!(
            err.contains("nothing in it was applied"),
            "byte {at}: {err}"
        );
    }
    assert!(!site.ok(&["feed", "list"]).contains("pypi"));
    assert!(
        listing(&site.data().join("blobs")).is_empty(),
        "{}",
        listing(&site.data().join("blobs"))
    );

    let said = site.ok(&["import", path(&full)]);
    assert!(said.contains("imported bundle"), "{said}");
    for feed in ["pypi", "npm", "crates", "files", "@system"] {
        assert_eq!(site.root(feed)["root"], hub.root(feed)["root"], "{feed}");
    }
    site.ok(&["verify"]);

    // The site serves what the bundle brought to the clients people use.
    serve_config(&site, 0, "");
    let site_server = Server::start(&site);
    let target = site.path("pip-target");
    let out = pip_install(
        &format!("{}/feeds/pypi/simple/", site_server.http),
        &target,
        "cairn-beta==2.0.0",
    );
    assert!(out.status.success(), "{out:?}");
    assert!(
        target.join("cairn_alpha").exists() || target.join("cairn_alpha.py").exists(),
        "{}",
        listing(&target)
    );
    npm_registry(&npm_home, &site_server.http, &publish);
    let app = site.path("npm-app");
    std::fs::create_dir_all(&app).unwrap();
    std::fs::write(
        app.join("package.json"),
        r#"{"name":"app","version":"1.0.0"}"#,
    )
    .unwrap();
    run(&mut npm(&npm_home, &app, &["install", "@cairn/lib@1.0.0"]));
    let out = run(Command::new("node")
        .args(["-e", "console.log(require('@cairn/lib'))"])
        .current_dir(&app));
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "7");
    cargo_registry(&cargo_home, &site_server.http);
    assert_eq!(
        cargo_app_prints(
            &cargo_home,
            &site.path("crate-app"),
            "cairn-lib",
            "=0.3.0",
            "cairn",
            "cairn_lib::seven()"
        ),
        "7"
    );

    // Ten changes: the incremental bundle carries them and little more.
    let mut payload = 0;
    for i in 0..10u64 {
        let content = bytes(100 + i, 10_000);
        payload += content.len();
        hub.push("files", "f.bin", "data", &i.to_string(), &content);
    }
    let inc = hub.path("inc.cairn");
    hub.ok(&["export", "--since-bundle", path(&full), path(&inc)]);
    let inc_len = std::fs::metadata(&inc).unwrap().len() as usize;
    assert!(
        inc_len > payload && inc_len < payload + 16 * 1024,
        "incremental bundle of {inc_len} bytes for {payload} bytes of changes"
    );
    assert!(
        inc_len * 10 < full_bytes.len(),
        "{inc_len} vs {}",
        full_bytes.len()
    );
    // Imported into the running site.
    let said = site.ok(&["import", path(&inc)]);
    assert!(said.contains("files: incremental"), "{said}");
    assert_eq!(site.ls("files").len(), 11);
    assert_eq!(site.root("files")["root"], hub.root("files")["root"]);

    // The older full bundle is refused now, and changes nothing.
    let err = site.fails(&["import", path(&full)], 2);
    assert!(err.contains("older than the one held"), "{err}");
    assert_eq!(site.ls("files").len(), 11);
    drop(site_server);
    drop(hub_server);
}

#[test]
fn an_import_killed_midway_resumes_and_applies_once() {
    let hub = Instance::new();
    hub.ok(&["feed", "create", "files", "--type", "raw"]);
    for i in 0..12u64 {
        hub.push("files", "f.bin", "big", &i.to_string(), &bytes(i, 4 << 20));
    }
    let full = hub.path("full.cairn");
    hub.ok(&["export", path(&full)]);
    let site = Instance::new();
    let hub_key = hub.ok(&["key", "show"]).trim().to_owned();
    site.ok(&["trust", "add", &hub_key]);

    // Killed once it has stored its first blob.
    let mut child = site
        .cmd(&["import", path(&full)])
        .env("CAIRN_LOG", "info")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let stored = lines
        .by_ref()
        .map_while(Result::ok)
        .any(|l| l.contains("stored a blob of the bundle"));
    assert!(stored, "the import never stored a blob");
    child.kill().unwrap();
    let status = child.wait().unwrap();
    assert!(
        !status.success(),
        "the import finished before it was killed"
    );
    // Nothing of it is visible.
    assert!(!site.ok(&["feed", "list"]).contains("files"));

    let said = site.ok(&["import", path(&full)]);
    let held: u64 = said
        .split("stored (")
        .nth(1)
        .and_then(|rest| rest.split(", ").nth(1))
        .and_then(|s| s.split(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("{said}"));
    assert!((1..12).contains(&held), "{said}");
    assert_eq!(site.ls("files").len(), 12);
    assert_eq!(site.root("files")["root"], hub.root("files")["root"]);
    site.ok(&["verify"]);
}
