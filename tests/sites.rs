//! Two spokes of one site behind one HTTP load balancer (nginx, round-robin): clients that may
//! hit either spoke on each request install packages that only one spoke has replicated yet.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::feeds::{http, npm, pip_install, run};
use crate::util::{free_udp_port, peer_spoke_with_hub, Instance, Server};
use cairn_store::package::fixtures;

/// nginx in the foreground with `conf` (its prefix is `dir`), stopped on drop.
struct Nginx(std::process::Child);

impl Nginx {
    /// Round-robin over `backends` (host:port) on a free loopback port; its address.
    fn start(dir: &Path, backends: &[&str]) -> (Nginx, String) {
        std::fs::create_dir_all(dir.join("logs")).unwrap();
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let servers: String = backends
            .iter()
            .map(|b| format!("    server {b} max_fails=0;\n"))
            .collect();
        let conf = std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../tests/nginx-site.conf"
        ))
        .unwrap()
        .replace("@PREFIX@", dir.to_str().unwrap())
        .replace("@PORT@", &port.to_string())
        .replace("@SERVERS@", &servers);
        let conf_path = dir.join("nginx.conf");
        std::fs::write(&conf_path, conf).unwrap();
        let child = Command::new(nginx_bin())
            .arg("-p")
            .arg(dir)
            .arg("-c")
            .arg(&conf_path)
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("nginx runs (apt-get install nginx)");
        let addr = format!("127.0.0.1:{port}");
        let start = Instant::now();
        while std::net::TcpStream::connect(&addr).is_err() {
            assert!(
                start.elapsed() < Duration::from_secs(10),
                "nginx did not start"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        (Nginx(child), format!("http://{addr}"))
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        cairn_benches::stop_child(&mut self.0, Duration::from_secs(5));
    }
}

fn nginx_bin() -> PathBuf {
    ["/usr/sbin/nginx", "/usr/bin/nginx"]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.exists())
        .unwrap_or_else(|| PathBuf::from("nginx"))
}

fn push(hub: &Instance, feed: &str, file: &str, bytes: &[u8]) {
    let dir = hub.path(&format!("push-{file}"));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(file);
    std::fs::write(&path, bytes).unwrap();
    hub.ok(&["push", feed, path.to_str().unwrap()]);
}

fn replicate(spoke: &Instance) {
    let r: serde_json::Value =
        serde_json::from_str(&spoke.ok(&["replicate", "from-hub", "--json"])).unwrap();
    for f in r["feeds"].as_array().unwrap() {
        assert_eq!(f["converged"], true, "{r}");
    }
}

/// The files of `project` that the simple index at `base` lists, with their URLs.
fn listed(base: &str, project: &str) -> Vec<String> {
    let (status, page) = http(
        base,
        &format!(
            "GET /feeds/pypi/simple/{project}/ HTTP/1.1\r\nHost: HOST\r\nConnection: close\r\n\r\n"
        ),
    );
    if status != 200 {
        return Vec::new();
    }
    page.split("href=\"")
        .skip(1)
        .filter_map(|s| s.split('"').next())
        .map(|u| u.split('#').next().unwrap_or(u).to_owned())
        .collect()
}

fn status_of(base: &str, path: &str) -> u16 {
    http(
        base,
        &format!("GET {path} HTTP/1.1\r\nHost: HOST\r\nConnection: close\r\n\r\n"),
    )
    .0
}

/// pip and npm install through nginx while one spoke holds a release and the other does
/// not yet: every file an index lists is served, because a spoke lists only what it holds
/// and answers 404 for the rest, and nginx passes a 404 on to the other spoke. With the
/// first spoke stopped, installs go on from the second once it has caught up.
#[test]
fn two_spokes_behind_nginx_serve_every_file_either_one_lists() {
    let hub = Instance::new();
    let spokes = [Instance::new(), Instance::new()];
    for inst in [&hub, &spokes[0], &spokes[1]] {
        inst.ok(&["feed", "create", "pypi", "--type", "pypi"]);
        inst.ok(&["feed", "create", "npm", "--type", "npm"]);
    }
    let replicate_token = hub.token(&["replicate:*"]);
    let port = free_udp_port();
    for (i, s) in spokes.iter().enumerate() {
        peer_spoke_with_hub(&hub, s, &format!("spoke{i}"), port);
        std::fs::write(
            s.data().join("cairn.toml"),
            format!("[sync]\nlisten = \"127.0.0.1:0\"\n\n[http]\nlisten = \"127.0.0.1:0\"\n\n[[replication]]\nname = \"from-hub\"\npeer = \"hub\"\ntoken = \"{replicate_token}\"\nfeeds = [\"pypi\", \"npm\"]\nmode = \"pull\"\ninterval_secs = 0\n"),
        )
        .unwrap();
    }
    std::fs::write(
        hub.data().join("cairn.toml"),
        format!("[sync]\nlisten = \"127.0.0.1:{port}\"\n\n[http]\nlisten = \"127.0.0.1:0\"\n"),
    )
    .unwrap();
    let wheel = |name: &str, version: &str| {
        (
            format!("{}-{version}-py3-none-any.whl", name.replace('-', "_")),
            fixtures::wheel(name, version, &[]),
        )
    };
    let tarball = |name: &str, version: &str| {
        (
            format!("{name}-{version}.tgz"),
            fixtures::npm_tarball(name, version),
        )
    };
    // Version 1 everywhere.
    let (f, b) = wheel("lb-pkg", "1.0");
    push(&hub, "pypi", &f, &b);
    let (f, b) = tarball("lb-js", "1.0.0");
    push(&hub, "npm", &f, &b);
    let _hub_server = Server::start(&hub);
    for s in &spokes {
        replicate(s);
    }
    // A release (a new version of each package and two new packages) reaches spoke 0 only.
    for (name, version) in [("lb-pkg", "2.0"), ("lb-new", "1.0")] {
        let (f, b) = wheel(name, version);
        push(&hub, "pypi", &f, &b);
    }
    for (name, version) in [("lb-js", "2.0.0"), ("lb-new-js", "1.0.0")] {
        let (f, b) = tarball(name, version);
        push(&hub, "npm", &f, &b);
    }
    replicate(&spokes[0]);
    let servers: Vec<Server> = spokes.iter().map(Server::start).collect();
    let backends: Vec<&str> = servers
        .iter()
        .map(|s| s.http.trim_start_matches("http://"))
        .collect();

    // The race is real: spoke 0 lists files that spoke 1 answers 404 for.
    let new_files = listed(&servers[0].http, "lb-pkg");
    let new_file = new_files
        .iter()
        .find(|u| u.contains("2.0"))
        .unwrap_or_else(|| panic!("spoke 0 lists lb-pkg 2.0: {new_files:?}"));
    assert!(listed(&servers[1].http, "lb-pkg")
        .iter()
        .all(|u| !u.contains("2.0")));
    assert_eq!(status_of(&servers[0].http, new_file), 200);
    assert_eq!(status_of(&servers[1].http, new_file), 404);
    assert_eq!(status_of(&servers[1].http, "/feeds/npm/lb-new-js"), 404);

    let (_nginx, lb) = Nginx::start(&hub.path("nginx"), &backends);
    // Through the balancer, index and file requests alternate between the spokes: every file
    // an index lists downloads.
    for _ in 0..6 {
        for url in listed(&lb, "lb-pkg").iter().chain(&listed(&lb, "lb-new")) {
            assert_eq!(status_of(&lb, url), 200, "{url}");
        }
    }
    let npm_home = hub.path("npm-home");
    std::fs::create_dir_all(&npm_home).unwrap();
    let install_all = |round: &str| {
        for i in 0..3 {
            let target = hub.path(&format!("site-{round}-{i}"));
            let out = pip_install(&format!("{lb}/feeds/pypi/simple/"), &target, "lb-pkg");
            assert!(
                out.status.success(),
                "{}",
                String::from_utf8_lossy(&out.stderr)
            );
            let out = pip_install(&format!("{lb}/feeds/pypi/simple/"), &target, "lb-new");
            assert!(
                out.status.success(),
                "{}",
                String::from_utf8_lossy(&out.stderr)
            );
            let app = hub.path(&format!("app-{round}-{i}"));
            std::fs::create_dir_all(&app).unwrap();
            std::fs::write(
                app.join("package.json"),
                r#"{"name":"app","version":"1.0.0"}"#,
            )
            .unwrap();
            std::fs::write(
                npm_home.join("npmrc"),
                format!("registry={lb}/feeds/npm/\n"),
            )
            .unwrap();
            run(&mut npm(
                &npm_home,
                &app,
                &["install", "lb-js", "lb-new-js"],
            ));
            assert!(app.join("node_modules/lb-new-js/package.json").exists());
        }
    };
    install_all("racing");

    // Spoke 1 catches up; with spoke 0 stopped, everything installs from spoke 1 alone.
    replicate(&spokes[1]);
    let mut servers = servers;
    servers.remove(0).stop();
    install_all("one-left");
    let target = hub.path("site-pinned");
    let out = pip_install(&format!("{lb}/feeds/pypi/simple/"), &target, "lb-pkg==2.0");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
