//! Connectors: a hub's feeds answer for what they lack from real upstream registries started
//! on loopback (pypiserver for PyPI, verdaccio for npm, another Cairn for Cargo). pip, npm and
//! cargo install through the hub; what they fetched is checked, stored, signed by the hub and
//! replicated, and installs go on from a spoke with every upstream and the hub stopped. A
//! lying upstream, a private name an upstream also has, and a blocked version are refused.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::feeds::{
    build_python_packages, cargo_app_prints, cargo_registry, http, npm, pip_install, publish_crate,
    python, run, twine_upload, write_package,
};
use crate::util::{free_udp_port, peer_spoke_with_hub, serve_config, Instance, Server};

/// A process started for a test, killed when dropped.
struct Upstream {
    child: Child,
    url: String,
}

impl Drop for Upstream {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_tcp_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Waits (at most 60 s) until `url` answers an HTTP GET with `ok`.
fn wait_for(url: &str, ok: u16) {
    let addr = url.trim_start_matches("http://");
    let (host, path) = addr.split_once('/').unwrap_or((addr, ""));
    let start = Instant::now();
    loop {
        if std::net::TcpStream::connect(host).is_ok() {
            let (status, _) = http(
                &format!("http://{host}"),
                &format!("GET /{path} HTTP/1.1\r\nHost: HOST\r\nConnection: close\r\n\r\n"),
            );
            if status == ok {
                return;
            }
        }
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "{url} did not answer {ok} within 60 s"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// pypiserver serving the package files in `dir` (`/simple/`), without authentication.
fn pypiserver(dir: &Path) -> Upstream {
    let port = free_tcp_port();
    let child = python(&["-m", "pypiserver", "run", "-i", "127.0.0.1", "-p"])
        .arg(port.to_string())
        .args(["--disable-fallback", "-a", ".", "-P", "."])
        .arg(dir)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("pypiserver runs (pip install pypiserver)");
    let url = format!("http://127.0.0.1:{port}");
    wait_for(&format!("{url}/simple/"), 200);
    Upstream {
        child,
        url: format!("{url}/simple/"),
    }
}

/// verdaccio with its storage under `dir`, no uplinks, publishing for signed-in users; the
/// registry URL and a token of a user made for the test.
fn verdaccio(dir: &Path) -> (Upstream, String) {
    std::fs::create_dir_all(dir).unwrap();
    let config = dir.join("config.yaml");
    std::fs::write(
        &config,
        "storage: ./storage\nauth:\n  htpasswd:\n    file: ./htpasswd\n    max_users: 10\nuplinks: {}\npackages:\n  '**':\n    access: $all\n    publish: $authenticated\nlog: { type: stdout, format: pretty, level: warn }\n",
    )
    .unwrap();
    let port = free_tcp_port();
    let child = Command::new("verdaccio")
        .arg("--config")
        .arg(&config)
        .arg("--listen")
        .arg(format!("127.0.0.1:{port}"))
        .current_dir(dir)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("verdaccio runs (npm install -g verdaccio)");
    let url = format!("http://127.0.0.1:{port}");
    wait_for(&format!("{url}/-/ping"), 200);
    let body = r#"{"name":"tester","password":"connector-test"}"#;
    let (status, text) = crate::feeds::raw_http(
        &url,
        &format!("PUT /-/user/org.couchdb.user:tester HTTP/1.1\r\nHost: HOST\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n", body.len()),
        body.as_bytes(),
    );
    assert_eq!(status, 201, "{text}");
    let json: serde_json::Value =
        serde_json::from_str(&text[text.find("\r\n\r\n").unwrap() + 4..]).unwrap();
    let token = json["token"].as_str().unwrap().to_owned();
    (
        Upstream {
            child,
            url: format!("{url}/"),
        },
        token,
    )
}

/// An npm home whose registry is `registry`, with `token` for it if given.
fn npm_home(home: &Path, registry: &str, token: Option<&str>) {
    std::fs::create_dir_all(home).unwrap();
    let host = registry.trim_start_matches("http://").trim_end_matches('/');
    let mut rc = format!("registry={}/\n", registry.trim_end_matches('/'));
    if let Some(t) = token {
        rc.push_str(&format!("//{host}/:_authToken={t}\n"));
    }
    std::fs::write(home.join("npmrc"), rc).unwrap();
}

/// Installs `spec` into a new app under `dir` from the registry of `home`; what
/// `require(module)` gives.
fn npm_app_requires(home: &Path, dir: &Path, spec: &str, module: &str) -> String {
    write_package(dir, r#"{"name":"app","version":"1.0.0"}"#, "");
    run(&mut npm(home, dir, &["install", spec]));
    let out = run(Command::new("node")
        .arg("-e")
        .arg(format!("console.log(require('{module}'))"))
        .current_dir(dir));
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

fn get(server: &str, path: &str) -> (u16, String) {
    http(
        server,
        &format!("GET {path} HTTP/1.1\r\nHost: HOST\r\nConnection: close\r\n\r\n"),
    )
}

fn cached_from(inst: &Instance, feed: &str) -> Vec<String> {
    inst.ls(feed)
        .iter()
        .filter_map(|m| m["metadata"]["cached_from"].as_str().map(str::to_owned))
        .collect()
}

#[test]
fn pip_npm_and_cargo_install_through_a_hubs_connectors_and_from_a_spoke_with_every_upstream_gone() {
    // The upstreams, each holding real packages.
    let work = Instance::new();
    let (beta_wheel, alpha_sdist) = build_python_packages(&work);
    // And a package the hub will come to publish itself.
    wheel(beta_wheel.parent().unwrap(), "shadowed", "2.0.0", 666);
    let pypi = pypiserver(beta_wheel.parent().unwrap());
    let (verdaccio, npm_token) = verdaccio(&work.path("verdaccio"));
    let npm_up = work.path("npm-up");
    npm_home(&npm_up, &verdaccio.url, Some(&npm_token));
    write_package(
        &work.path("lib"),
        r#"{"name":"@cairn/lib","version":"1.0.0","main":"index.js"}"#,
        "module.exports = 7;\n",
    );
    run(&mut npm(
        &npm_up,
        &work.path("lib"),
        &["publish", "--access", "public"],
    ));
    let crates_up = Instance::new();
    crates_up.ok(&["feed", "create", "crates", "--type", "cargo"]);
    serve_config(&crates_up, 0, "");
    let crates_publish = crates_up.token(&["publish:*"]);
    let crates_server = Server::start(&crates_up);
    let cargo_up = work.path("cargo-up");
    cargo_registry(&cargo_up, &crates_server.http);
    publish_crate(
        &cargo_up,
        &work.path("cairn-lib"),
        "cairn-lib",
        "0.3.0",
        "pub fn seven() -> u32 { 7 }\n",
        &crates_publish,
    );

    // The hub: three feeds with connectors, and a spoke that pulls them.
    let hub = Instance::new();
    let spoke = Instance::new();
    for inst in [&hub, &spoke] {
        for (feed, kind) in [("pypi", "pypi"), ("npm", "npm"), ("crates", "cargo")] {
            inst.ok(&["feed", "create", feed, "--type", kind]);
        }
    }
    let port = free_udp_port();
    peer_spoke_with_hub(&hub, &spoke, "spoke", port);
    let replicate = hub.token(&["replicate:*"]);
    let publish = hub.token(&["publish:*"]);
    let connectors = format!(
        "[[connector]]\nfeed = \"pypi\"\nupstream = \"{}\"\nmetadata_ttl_secs = 0\n\n[[connector]]\nfeed = \"npm\"\nupstream = \"{}\"\nmetadata_ttl_secs = 0\n\n[[connector]]\nfeed = \"crates\"\nupstream = \"{}/feeds/crates/\"\nmetadata_ttl_secs = 0\n",
        pypi.url, verdaccio.url, crates_server.http
    );
    serve_config(&hub, port, &connectors);
    serve_config(
        &spoke,
        0,
        &format!("[[replication]]\nname = \"from-hub\"\npeer = \"hub\"\ntoken = \"{replicate}\"\nfeeds = [\"pypi\", \"npm\", \"crates\", \"@system\"]\nmode = \"pull\"\ninterval_secs = 0\n"),
    );
    let hub_server = Server::start(&hub);

    // pip: a wheel that needs an sdist, both only upstream.
    let target = work.path("pip-hub");
    let out = pip_install(
        &format!("{}/feeds/pypi/simple/", hub_server.http),
        &target,
        "cairn-beta==2.0.0",
    );
    assert!(out.status.success(), "{out:?}");
    assert!(
        target.join("cairn_beta").exists(),
        "pip installed cairn-beta"
    );
    let pypi_cached = cached_from(&hub, "pypi");
    assert_eq!(pypi_cached.len(), 2, "{pypi_cached:?}");
    for file in [&beta_wheel, &alpha_sdist] {
        let name = file.file_name().unwrap().to_str().unwrap();
        assert!(
            pypi_cached.iter().any(|u| u.ends_with(name)),
            "{pypi_cached:?}"
        );
    }
    // npm and cargo.
    let npm_hub = work.path("npm-hub");
    npm_home(&npm_hub, &format!("{}/feeds/npm/", hub_server.http), None);
    assert_eq!(
        npm_app_requires(
            &npm_hub,
            &work.path("app-hub"),
            "@cairn/lib@1.0.0",
            "@cairn/lib"
        ),
        "7"
    );
    assert_eq!(cached_from(&hub, "npm").len(), 1);
    let cargo_hub = work.path("cargo-hub");
    cargo_registry(&cargo_hub, &hub_server.http);
    assert_eq!(
        cargo_app_prints(
            &cargo_hub,
            &work.path("cargo-app-hub"),
            "cairn-lib",
            "0.3",
            "cairn",
            "cairn_lib::seven()"
        ),
        "7"
    );
    assert_eq!(cached_from(&hub, "crates").len(), 1);
    // The cached crate is the upstream's to the byte.
    for (inst, feed) in [(&crates_up, "crates"), (&hub, "crates")] {
        let ls = inst.ls(feed);
        assert_eq!(ls.len(), 1);
    }
    assert_eq!(
        hub.ls("crates")[0]["files"][0]["digests"],
        crates_up.ls("crates")[0]["files"][0]["digests"]
    );
    // The status page and the admin API count what was cached.
    let (_, page) = get(&hub_server.http, "/");
    assert!(
        page.contains("Connectors") && page.contains("reachable"),
        "{page}"
    );

    // The spoke replicates the cached versions like any others; then every upstream and the
    // hub stop, and the spoke goes on serving.
    let spoke_server = Server::start(&spoke);
    // `shadowed` 2.0.0 is cached, then the hub publishes a `shadowed` of its own: the cached
    // version is hidden on the hub and on the spoke, which has no connector to ask.
    let shadowed = "/feeds/pypi/files/shadowed/2.0.0/shadowed-2.0.0-py3-none-any.whl";
    assert_eq!(get(&hub_server.http, shadowed).0, 200);
    let own = wheel(&work.path("own"), "shadowed", "1.0.0", 1);
    let out = twine_upload(
        &format!("{}/feeds/pypi/legacy/", hub_server.http),
        &publish,
        &own,
    );
    assert!(out.status.success(), "{out:?}");
    spoke.ok(&["replicate", "from-hub"]);
    for server in [&hub_server.http, &spoke_server.http] {
        let (status, page) = get(server, "/feeds/pypi/simple/shadowed/");
        assert_eq!(status, 200, "{page}");
        assert!(
            page.contains("shadowed-1.0.0") && !page.contains("shadowed-2.0.0"),
            "{page}"
        );
        assert_eq!(get(server, shadowed).0, 404, "{server}");
    }
    for feed in ["pypi", "npm", "crates"] {
        assert_eq!(spoke.root(feed)["root"], hub.root(feed)["root"], "{feed}");
    }
    drop(pypi);
    drop(verdaccio);
    crates_server.stop();

    // The hub, with its upstreams gone, serves what it holds and says so.
    let (status, page) = get(&hub_server.http, "/feeds/pypi/simple/cairn-beta/");
    assert_eq!(status, 200, "{page}");
    assert!(
        page.to_ascii_lowercase()
            .contains("cairn-upstream: unreachable"),
        "{page}"
    );
    assert!(page.contains("cairn_beta-2.0.0-py3-none-any.whl"), "{page}");
    // npm and cargo say so too.
    for (path, holds) in [
        ("/feeds/npm/@cairn%2flib", "lib-1.0.0.tgz"),
        ("/feeds/crates/ca/ir/cairn-lib", "\"vers\":\"0.3.0\""),
    ] {
        let (status, page) = get(&hub_server.http, path);
        assert_eq!(status, 200, "{path}: {page}");
        assert!(
            page.to_ascii_lowercase()
                .contains("cairn-upstream: unreachable"),
            "{path}: {page}"
        );
        assert!(page.contains(holds), "{path}: {page}");
    }
    let (status, page) = get(&hub_server.http, "/feeds/pypi/simple/never-cached/");
    assert_eq!(status, 502, "{page}");
    let (_, page) = get(&hub_server.http, "/");
    assert!(page.contains("unreachable: serving what is held"), "{page}");
    hub_server.stop();

    let target = work.path("pip-spoke");
    let out = pip_install(
        &format!("{}/feeds/pypi/simple/", spoke_server.http),
        &target,
        "cairn-beta==2.0.0",
    );
    assert!(out.status.success(), "{out:?}");
    assert!(target.join("cairn_beta").exists());
    let npm_spoke = work.path("npm-spoke");
    npm_home(
        &npm_spoke,
        &format!("{}/feeds/npm/", spoke_server.http),
        None,
    );
    assert_eq!(
        npm_app_requires(
            &npm_spoke,
            &work.path("app-spoke"),
            "@cairn/lib@1.0.0",
            "@cairn/lib"
        ),
        "7"
    );
    let cargo_spoke = work.path("cargo-spoke");
    cargo_registry(&cargo_spoke, &spoke_server.http);
    assert_eq!(
        cargo_app_prints(
            &cargo_spoke,
            &work.path("cargo-app-spoke"),
            "cairn-lib",
            "0.3",
            "cairn",
            "cairn_lib::seven()"
        ),
        "7"
    );
    spoke_server.stop();
}

/// Builds the wheel `NAME-VERSION-py3-none-any.whl` of a module that holds `VALUE = value`.
fn wheel(dir: &Path, name: &str, version: &str, value: u32) -> PathBuf {
    std::fs::create_dir_all(dir).unwrap();
    let module = name.replace('-', "_");
    let file = format!("{module}-{version}-py3-none-any.whl");
    let script = format!(
        r#"
import zipfile, sys
with zipfile.ZipFile(sys.argv[1], "w") as z:
    z.writestr("{module}/__init__.py", "VALUE = {value}\n")
    z.writestr("{module}-{version}.dist-info/METADATA", "Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n")
    z.writestr("{module}-{version}.dist-info/WHEEL", "Wheel-Version: 1.0\nGenerator: t\nRoot-Is-Purelib: true\nTag: py3-none-any\n")
    z.writestr("{module}-{version}.dist-info/RECORD", "")
"#
    );
    let path = dir.join(&file);
    run(python(&["-c", &script]).arg(&path));
    path
}

#[test]
fn a_connector_refuses_a_changed_upstream_file_a_private_name_and_a_blocked_version() {
    let work = Instance::new();
    let up_dir = work.path("upstream");
    // What the upstream holds: a public package, a decoy of a package published here, and a
    // decoy of a private name not published anywhere yet.
    let public = wheel(&up_dir, "public-lib", "1.0.0", 1);
    wheel(&up_dir, "acme-internal", "9.9.9", 666);
    wheel(&up_dir, "acme-secret", "9.9.9", 666);
    wheel(&up_dir, "risky", "1.0.0", 3);
    // A public package with a patched build published here, listed together by `merge`.
    wheel(&up_dir, "mixed", "1.0.0", 666);
    wheel(&up_dir, "mixed", "2.0.0", 2);
    // A version with two files upstream.
    let multi = wheel(&up_dir, "multi", "1.0.0", 4);
    std::fs::copy(&multi, up_dir.join("multi-1.0.0-py2.py3-none-any.whl")).unwrap();
    let pypi = pypiserver(&up_dir);

    let hub = Instance::new();
    hub.ok(&["feed", "create", "pypi", "--type", "pypi"]);
    serve_config(
        &hub,
        0,
        &format!(
            "[[connector]]\nfeed = \"pypi\"\nupstream = \"{}\"\nlocal = [\"acme-secret*\"]\nmerge = [\"mixed\"]\n",
            pypi.url
        ),
    );
    let publish = hub.token(&["publish:*"]);
    let hub_server = Server::start(&hub);
    for (name, version) in [("acme-internal", "1.0.0"), ("mixed", "1.0.0")] {
        let file = wheel(&work.path("local"), name, version, 1);
        let out = twine_upload(
            &format!("{}/feeds/pypi/legacy/", hub_server.http),
            &publish,
            &file,
        );
        assert!(out.status.success(), "{out:?}");
    }

    // Dependency confusion: a name published here never comes from upstream, however high
    // the upstream's version; a private name never does, even unpublished.
    let (status, page) = get(&hub_server.http, "/feeds/pypi/simple/acme-internal/");
    assert_eq!(status, 200, "{page}");
    assert!(page.contains("acme_internal-1.0.0"), "{page}");
    assert!(!page.contains("9.9.9"), "{page}");
    let (status, page) = get(
        &hub_server.http,
        "/feeds/pypi/files/acme-internal/9.9.9/acme_internal-9.9.9-py3-none-any.whl",
    );
    assert_eq!(status, 404, "{page}");
    let (status, page) = get(&hub_server.http, "/feeds/pypi/simple/acme-secret/");
    assert_eq!(status, 404, "{page}");
    let (status, _) = get(
        &hub_server.http,
        "/feeds/pypi/files/acme-secret/9.9.9/acme_secret-9.9.9-py3-none-any.whl",
    );
    assert_eq!(status, 404);
    let target = work.path("pip");
    let out = pip_install(
        &format!("{}/feeds/pypi/simple/", hub_server.http),
        &target,
        "acme-internal",
    );
    assert!(out.status.success(), "{out:?}");
    let value = std::fs::read_to_string(target.join("acme_internal/__init__.py")).unwrap();
    assert_eq!(
        value, "VALUE = 1\n",
        "the local package, not the upstream's"
    );

    // Where `merge` says so, the local versions are listed beside the upstream's, and a
    // version held here keeps its own file.
    let (status, page) = get(&hub_server.http, "/feeds/pypi/simple/mixed/");
    assert_eq!(status, 200, "{page}");
    assert!(
        page.contains("mixed-1.0.0") && page.contains("mixed-2.0.0"),
        "{page}"
    );
    for (spec, value) in [("mixed==1.0.0", 1), ("mixed", 2)] {
        let target = work.path(&format!("pip-{value}"));
        let out = pip_install(
            &format!("{}/feeds/pypi/simple/", hub_server.http),
            &target,
            spec,
        );
        assert!(out.status.success(), "{out:?}");
        let got = std::fs::read_to_string(target.join("mixed/__init__.py")).unwrap();
        assert_eq!(got, format!("VALUE = {value}\n"), "{spec}");
    }
    assert_eq!(cached_from(&hub, "pypi").len(), 1, "mixed 2.0.0 only");
    // Marked so, a replica without the connector's configuration lists it too.
    let merged = hub.ls("pypi");
    let merged = merged
        .iter()
        .find(|m| m["name"] == "mixed" && m["version"] == "2.0.0");
    assert_eq!(merged.unwrap()["metadata"]["cached_merged"], true);

    // The upstream changes a file after listing it: its bytes no longer match the sha256 it
    // published, and nothing is stored.
    let (status, page) = get(&hub_server.http, "/feeds/pypi/simple/public-lib/");
    assert_eq!(status, 200, "{page}");
    let original = std::fs::read(&public).unwrap();
    let mut changed = original.clone();
    let at = changed.len() / 2;
    changed[at] ^= 0x01;
    std::fs::write(&public, &changed).unwrap();
    let path = "/feeds/pypi/files/public-lib/1.0.0/public_lib-1.0.0-py3-none-any.whl";
    let (status, page) = get(&hub_server.http, path);
    assert_eq!(status, 502, "{page}");
    assert!(
        page.contains("sha256") && page.contains("nothing was stored"),
        "{page}"
    );
    assert_eq!(
        cached_from(&hub, "pypi").len(),
        1,
        "the changed file was not stored"
    );
    let (_, api) = get(&hub_server.http, "/");
    assert!(api.contains("Connectors"), "{api}");
    // Put back, it is fetched, checked and stored once.
    std::fs::write(&public, &original).unwrap();
    let (status, page) = get(&hub_server.http, path);
    assert_eq!(status, 200, "{page}");
    assert_eq!(cached_from(&hub, "pypi").len(), 2);

    // Every file of an upstream version is cached as it is asked for, into one version.
    for file in [
        "multi-1.0.0-py3-none-any.whl",
        "multi-1.0.0-py2.py3-none-any.whl",
    ] {
        let (status, page) = get(&hub_server.http, "/feeds/pypi/simple/multi/");
        assert_eq!(status, 200, "{page}");
        assert!(
            page.contains("multi-1.0.0-py3-none-any.whl")
                && page.contains("multi-1.0.0-py2.py3-none-any.whl"),
            "{page}"
        );
        let (status, page) = get(
            &hub_server.http,
            &format!("/feeds/pypi/files/multi/1.0.0/{file}"),
        );
        assert_eq!(status, 200, "{file}: {page}");
    }
    let multi = hub
        .ls("pypi")
        .into_iter()
        .find(|m| m["name"] == "multi")
        .unwrap();
    assert_eq!(
        multi["files"].as_array().unwrap().len(),
        4,
        "two wheels, two METADATA"
    );

    // A name that becomes local hides what was cached of it before.
    let local = wheel(&work.path("local"), "public-lib", "0.5.0", 5);
    let out = twine_upload(
        &format!("{}/feeds/pypi/legacy/", hub_server.http),
        &publish,
        &local,
    );
    assert!(out.status.success(), "{out:?}");
    let (status, page) = get(&hub_server.http, "/feeds/pypi/simple/public-lib/");
    assert_eq!(status, 200, "{page}");
    assert!(
        page.contains("public_lib-0.5.0") && !page.contains("public_lib-1.0.0"),
        "{page}"
    );
    let (status, page) = get(&hub_server.http, path);
    assert_eq!(status, 404, "{page}");

    // A version blocked here is refused before anything is fetched, and listed as yanked.
    hub.block(
        r#"{"id":"CAIRN-2026-0101","modified":"2026-11-01T00:00:00Z","summary":"test","affected":[{"package":{"ecosystem":"PyPI","name":"risky"},"ranges":[{"type":"ECOSYSTEM","events":[{"introduced":"0"},{"fixed":"2.0"}]}]}]}"#,
        &["--comment", "malware", "--author", "security"],
    );
    let (status, page) = get(&hub_server.http, "/feeds/pypi/simple/risky/");
    assert_eq!(status, 200, "{page}");
    assert!(
        page.contains("data-yanked=\"blocked: CAIRN-2026-0101"),
        "{page}"
    );
    let (status, page) = get(
        &hub_server.http,
        "/feeds/pypi/files/risky/1.0.0/risky-1.0.0-py3-none-any.whl",
    );
    assert_eq!(status, 403, "{page}");
    assert!(page.contains("CAIRN-2026-0101"), "{page}");
    assert_eq!(
        cached_from(&hub, "pypi").len(),
        3,
        "nothing more was cached"
    );
    hub_server.stop();
}
