//! Blobs in a real Garage on loopback (`cargo install garage --locked`): the feed server's
//! clients install from an instance whose blobs are in a bucket, a local hub replicates to
//! spokes that share one bucket (the second one moves no blob bytes, and GC on one keeps what
//! the other still needs), a three-node cluster keeps working with a node down, and a bucket
//! that stops answering fails publishes cleanly while replication retries.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use cairn_benches::garage::{Garage, KEY_ID, REGION, SECRET};
use object_store::aws::AmazonS3Builder;
use object_store::path::Path as ObjectPath;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload};

use crate::feeds::{
    cargo, cargo_publish, cargo_registry, http_bytes, npm, npm_registry, pip_install, python,
    raw_http, run, twine_upload, write_package,
};
use crate::util::{Instance, Server};

/// Direct access to a bucket, to look at (and damage) what Cairn wrote.
struct Bucket {
    store: object_store::aws::AmazonS3,
    rt: tokio::runtime::Runtime,
}

impl Bucket {
    fn new(garage: &Garage, name: &str) -> Bucket {
        cairn_store::s3::install_tls_provider();
        let store = AmazonS3Builder::new()
            .with_endpoint(garage.nodes[0].endpoint())
            .with_bucket_name(name)
            .with_region(REGION)
            .with_access_key_id(KEY_ID)
            .with_secret_access_key(SECRET)
            .with_allow_http(true)
            .build()
            .unwrap();
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        Bucket { store, rt }
    }

    /// Keys (with sizes) under `prefix`.
    fn list(&self, prefix: &str) -> Vec<(String, u64)> {
        use futures::StreamExt;
        let prefix = ObjectPath::from(prefix);
        let items: Vec<_> = self
            .rt
            .block_on(self.store.list(Some(&prefix)).collect::<Vec<_>>());
        let mut out: Vec<(String, u64)> = items
            .into_iter()
            .map(|m| {
                let m = m.unwrap();
                (m.location.to_string(), m.size)
            })
            .collect();
        out.sort();
        out
    }

    fn get(&self, key: &str) -> Vec<u8> {
        let key = ObjectPath::from(key);
        self.rt
            .block_on(async { self.store.get(&key).await.unwrap().bytes().await })
            .unwrap()
            .to_vec()
    }

    fn delete(&self, key: &str) {
        let key = ObjectPath::from(key);
        self.rt.block_on(self.store.delete(&key)).unwrap();
    }

    fn put(&self, key: &str, bytes: Vec<u8>) {
        let key = ObjectPath::from(key);
        self.rt
            .block_on(self.store.put(&key, PutPayload::from(bytes)))
            .unwrap();
    }
}

fn garage(dir: &Path, nodes: usize, bucket: &str) -> Garage {
    let g = Garage::start(dir, nodes).unwrap_or_else(|e| panic!("starting garage: {e:#}"));
    g.create_bucket(bucket).unwrap();
    g
}

const LISTEN: &str =
    "[sync]\nlisten = \"127.0.0.1:0\"\n\n[http]\nlisten = \"127.0.0.1:0\"\nmax_upload_mib = 300\n";

fn token(inst: &Instance, scope: &str) -> String {
    inst.ok(&["token", "create", "--scope", scope])
        .trim()
        .to_owned()
}

/// Files directly under a directory tree (blob files of the local backend).
fn files_under(dir: &Path) -> usize {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return 0;
    };
    rd.filter_map(|e| e.ok())
        .map(|e| {
            if e.file_type().unwrap().is_dir() {
                files_under(&e.path())
            } else {
                1
            }
        })
        .sum()
}

fn get_raw(server: &Server, feed: &str, path: &str) -> (u16, Vec<u8>) {
    http_bytes(
        &server.http,
        &format!("GET /feeds/{feed}/{path} HTTP/1.1\r\nHost: HOST\r\nConnection: close\r\n\r\n"),
        b"",
    )
}

const BIG: usize = 200_000;

/// A wheel holding BIG incompressible bytes, so its blob goes to the bucket.
const BUILD_WHEEL: &str = r#"
import base64, hashlib, random, sys, zipfile, os
out = sys.argv[1]
def record_line(path, data):
    digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
    return f"{path},sha256={digest},{len(data)}"
files = {
    "cairn_big/__init__.py": b"import os\nSIZE = os.path.getsize(os.path.join(os.path.dirname(__file__), 'data.bin'))\n",
    "cairn_big/data.bin": random.Random(7).randbytes(200000),
    "cairn_big-1.0.0.dist-info/METADATA": b"Metadata-Version: 2.1\nName: cairn-big\nVersion: 1.0.0\n",
    "cairn_big-1.0.0.dist-info/WHEEL": b"Wheel-Version: 1.0\nGenerator: cairn-tests\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
}
record = [record_line(p, d) for p, d in files.items()] + ["cairn_big-1.0.0.dist-info/RECORD,,"]
with zipfile.ZipFile(os.path.join(out, "cairn_big-1.0.0-py3-none-any.whl"), "w") as z:
    for p, d in files.items():
        z.writestr(p, d)
    z.writestr("cairn_big-1.0.0.dist-info/RECORD", "\n".join(record) + "\n")
"#;

#[test]
fn pip_npm_and_cargo_install_from_an_instance_whose_blobs_are_in_garage() {
    let tmp = tempfile::tempdir().unwrap();
    let g = garage(&tmp.path().join("garage"), 1, "pkgs");
    let inst = Instance::with_config(&format!(
        "{LISTEN}\n{}",
        g.cairn_config(0, "pkgs", "").unwrap()
    ));
    for (name, kind) in [("pypi", "pypi"), ("npm", "npm"), ("crates", "cargo")] {
        inst.ok(&["feed", "create", name, "--type", kind]);
    }
    let publish = token(&inst, "publish:*");
    let server = Server::start(&inst);

    // PyPI: twine uploads, pip installs.
    let pkgs = inst.path("pkgs");
    std::fs::create_dir_all(&pkgs).unwrap();
    run(python(&["-c", BUILD_WHEEL]).arg(&pkgs));
    let out = twine_upload(
        &format!("{}/feeds/pypi/legacy/", server.http),
        &publish,
        &pkgs.join("cairn_big-1.0.0-py3-none-any.whl"),
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    let site = inst.path("site");
    let out = pip_install(
        &format!("{}/feeds/pypi/simple/", server.http),
        &site,
        "cairn-big==1.0.0",
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out =
        run(python(&["-c", "import cairn_big; print(cairn_big.SIZE)"]).env("PYTHONPATH", &site));
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), BIG.to_string());

    // npm: publish a package with a large file, install it.
    let npm_home = inst.path("npm-home");
    npm_registry(&npm_home, &server.http, &publish);
    let lib = inst.path("npm-big");
    write_package(
        &lib,
        r#"{"name":"cairn-big","version":"1.0.0","main":"index.js"}"#,
        "module.exports = require('fs').statSync(__dirname + '/data.bin').size;\n",
    );
    std::fs::write(lib.join("data.bin"), crate::util::bytes(8, BIG)).unwrap();
    run(&mut npm(&npm_home, &lib, &["publish"]));
    let app = inst.path("npm-app");
    std::fs::create_dir_all(&app).unwrap();
    std::fs::write(
        app.join("package.json"),
        r#"{"name":"app","version":"1.0.0"}"#,
    )
    .unwrap();
    run(&mut npm(&npm_home, &app, &["install", "cairn-big@1.0.0"]));
    let out = run(Command::new("node")
        .args(["-e", "console.log(require('cairn-big'))"])
        .current_dir(&app));
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), BIG.to_string());

    // Cargo: publish a crate with a large file, build a dependent.
    let cargo_home = inst.path("cargo-home");
    cargo_registry(&cargo_home, &server.http);
    let dep = inst.path("cairn-big");
    std::fs::create_dir_all(dep.join("src")).unwrap();
    std::fs::write(dep.join("Cargo.toml"), "[package]\nname = \"cairn-big\"\nversion = \"0.1.0\"\nedition = \"2021\"\ndescription = \"t\"\nlicense = \"MIT\"\n").unwrap();
    std::fs::write(dep.join("src/data.bin"), crate::util::bytes(9, BIG)).unwrap();
    std::fs::write(
        dep.join("src/lib.rs"),
        "pub fn size() -> usize { include_bytes!(\"data.bin\").len() }\n",
    )
    .unwrap();
    run(&mut cargo_publish(&cargo_home, &dep, &publish));
    let crate_app = inst.path("crate-app");
    std::fs::create_dir_all(crate_app.join("src")).unwrap();
    std::fs::write(crate_app.join("Cargo.toml"), "[package]\nname = \"crate-app\"\nversion = \"0.1.0\"\nedition = \"2021\"\n\n[dependencies]\ncairn-big = { version = \"=0.1.0\", registry = \"cairn\" }\n").unwrap();
    std::fs::write(
        crate_app.join("src/main.rs"),
        "fn main() { println!(\"{}\", cairn_big::size()); }\n",
    )
    .unwrap();
    let out = run(&mut cargo(&cargo_home, &crate_app, &["run", "--quiet"]));
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), BIG.to_string());

    // The three packages are in the bucket, each blob beside its outboard; none on local disk.
    let bucket = Bucket::new(&g, "pkgs");
    let blobs = bucket.list("blobs");
    let data: Vec<_> = blobs
        .iter()
        .filter(|(k, _)| !k.ends_with(".obao"))
        .collect();
    assert_eq!(data.len(), 3, "{blobs:?}");
    assert_eq!(blobs.len(), 6, "{blobs:?}");
    assert!(data.iter().all(|(_, size)| *size > BIG as u64), "{blobs:?}");
    assert_eq!(files_under(&inst.data().join("blobs")), 0);
    server.stop();
    let verified = inst.ok(&["verify"]);
    assert!(verified.contains("ok"), "{verified}");

    // A blob damaged in the bucket is never served and verify names it.
    let (key, _) = data[0].clone();
    let mut bytes = bucket.get(&key);
    bytes[100_000] ^= 1;
    bucket.put(&key, bytes);
    let out = inst.run(&["verify"]);
    assert_eq!(
        out.status.code(),
        Some(1),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    let hash = key.trim_start_matches("blobs/");
    assert!(text.contains(hash) && text.contains("corrupt"), "{text}");
    let server = Server::start(&inst);
    let mut served_whole = 0;
    for path in [
        "/feeds/pypi/files/cairn-big/1.0.0/cairn_big-1.0.0-py3-none-any.whl",
        "/feeds/npm/cairn-big/-/cairn-big-1.0.0.tgz",
        "/feeds/crates/api/v1/crates/cairn-big/0.1.0/download",
    ] {
        let (status, body) = http_bytes(
            &server.http,
            &format!("GET {path} HTTP/1.1\r\nHost: HOST\r\nConnection: close\r\n\r\n"),
            b"",
        );
        // The damaged one is cut short (or refused); the other two come whole.
        if status == 200 && body.len() > BIG {
            served_whole += 1;
        }
    }
    assert_eq!(served_whole, 2);
}

/// A hub with a raw feed `files` and `blobs` as its `[blobs]` section (empty: local disk),
/// serving on a fixed UDP port; returns it with that port and a replication token.
fn hub(blobs: &str) -> (Instance, u16, String) {
    let port = crate::util::free_udp_port();
    let hub = Instance::with_config(&format!(
        "[sync]\nlisten = \"127.0.0.1:{port}\"\n\n[http]\nlisten = \"127.0.0.1:0\"\n\n{blobs}"
    ));
    hub.ok(&["feed", "create", "files", "--type", "raw"]);
    let replicate = token(&hub, "replicate:*");
    (hub, port, replicate)
}

/// A spoke whose `[blobs]` section is `blobs` (empty: local disk) and that pulls
/// `files` and `@system` from the hub on demand (or every `interval` seconds).
fn spoke(hub: &Instance, port: u16, replicate: &str, blobs: &str, interval: u64) -> Instance {
    let spoke = Instance::with_config(&format!("{LISTEN}\n{blobs}"));
    spoke.ok(&["feed", "create", "files", "--type", "raw"]);
    let spoke_key = spoke.ok(&["key", "show"]).trim().to_owned();
    crate::util::peer_spoke_with_hub(hub, &spoke, &format!("spoke-{}", &spoke_key[..8]), port);
    std::fs::write(
        spoke.data().join("cairn.toml"),
        format!("{LISTEN}\n{blobs}\n[[replication]]\nname = \"from-hub\"\npeer = \"hub\"\ntoken = \"{replicate}\"\nfeeds = [\"files\", \"@system\"]\nmode = \"pull\"\ninterval_secs = {interval}\n"),
    )
    .unwrap();
    spoke
}

fn push(inst: &Instance, name: &str, seed: u64, len: usize) -> Vec<u8> {
    let data = crate::util::bytes(seed, len);
    let f = inst.path(&format!("{name}.bin"));
    std::fs::write(&f, &data).unwrap();
    inst.ok(&[
        "push",
        "files",
        f.to_str().unwrap(),
        "--name",
        name,
        "--version",
        "1",
    ]);
    data
}

/// One pull run; its summary of the `files` feed.
fn pull(spoke: &Instance) -> serde_json::Value {
    let r: serde_json::Value =
        serde_json::from_str(&spoke.ok(&["replicate", "from-hub", "--json"])).unwrap();
    for f in r["feeds"].as_array().unwrap() {
        assert_eq!(f["converged"], true, "{r}");
    }
    r["feeds"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["feed"] == "files")
        .cloned()
        .unwrap()
}

fn get(inst: &Instance, name: &str) -> Result<Vec<u8>, String> {
    let out = inst.run(&["get", "files", name, "1", "--output", "-"]);
    if out.status.success() {
        Ok(out.stdout)
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

#[test]
fn a_local_hub_replicates_to_two_spokes_sharing_a_bucket_and_gc_keeps_what_the_other_needs() {
    let tmp = tempfile::tempdir().unwrap();
    let g = garage(&tmp.path().join("garage"), 1, "shared");
    let blobs = g.cairn_config(0, "shared", "sites").unwrap();
    let (hub, port, replicate) = hub("");
    let files: Vec<Vec<u8>> = (0..6)
        .map(|i| push(&hub, &format!("p{i}"), i, 300_000))
        .collect();
    let total = 6 * 300_000;
    let a = spoke(&hub, port, &replicate, &blobs, 0);
    let b = spoke(&hub, port, &replicate, &blobs, 0);
    let hub_server = Server::start(&hub);

    // The first spoke fetches every blob; the second finds them in the bucket.
    let first = pull(&a);
    assert_eq!(first["blob_bytes_received"], total, "{first}");
    assert_eq!(first["blobs_adopted"], 0, "{first}");
    let second = pull(&b);
    assert_eq!(second["blob_bytes_received"], 0, "{second}");
    assert_eq!(second["blobs_adopted"], 6, "{second}");
    assert_eq!(second["blob_bytes_adopted"], total, "{second}");
    let bucket = Bucket::new(&g, "shared");
    assert_eq!(
        bucket.list("sites/blobs").len(),
        12,
        "six blobs and their outboards"
    );
    assert_eq!(bucket.list("sites/refs").len(), 12, "each spoke holds six");
    for inst in [&a, &b] {
        assert!(inst.ok(&["verify"]).contains("ok"));
    }
    for (i, data) in files.iter().enumerate() {
        assert!(&get(&b, &format!("p{i}")).unwrap() == data, "p{i}");
    }

    // The hub deletes p0 and adds p6; only B hears of it, then collects garbage.
    hub_server.stop();
    hub.ok(&["rm", "files", "p0", "1"]);
    let p6 = push(&hub, "p6", 6, 300_000);
    let hub_server = Server::start(&hub);
    let run = pull(&b);
    assert_eq!(run["blob_bytes_received"], 300_000, "{run}");
    let gc = b.ok(&["gc"]);
    assert!(gc.starts_with("removed 1 blobs"), "{gc}");
    // A still holds p0, so its blob stays in the bucket; p6 is B's alone.
    assert_eq!(bucket.list("sites/blobs").len(), 14);
    assert!(a.ok(&["verify"]).contains("ok"));
    assert!(get(&a, "p0").unwrap() == files[0]);
    assert!(get(&b, "p0").is_err());

    // A hears of it: p6 is already in the bucket, and its GC removes p0's blob for good.
    let run = pull(&a);
    assert_eq!(run["blob_bytes_received"], 0, "{run}");
    assert_eq!(run["blobs_adopted"], 1, "{run}");
    a.ok(&["gc"]);
    let left = bucket.list("sites/blobs");
    assert_eq!(left.len(), 12, "{left:?}");
    assert!(bucket.list("sites/condemned").is_empty());
    for inst in [&a, &b] {
        assert!(inst.ok(&["verify"]).contains("ok"));
        assert!(get(inst, "p6").unwrap() == p6);
    }
    hub_server.stop();

    // While another instance's collection marker stands, a spoke waits before taking a blob
    // from the bucket; once the collector is done (here: its marker removed), it goes on.
    let p7 = push(&hub, "p7", 7, 300_000);
    let hub_server = Server::start(&hub);
    pull(&a);
    let blob = a
        .ls("files")
        .iter()
        .find(|v| v["name"] == "p7")
        .map(|v| v["files"][0]["blob"].as_str().unwrap().to_owned())
        .unwrap();
    let marker = format!("sites/condemned/{blob}/{}", "c".repeat(64));
    bucket.put(&marker, Vec::new());
    let lifted = {
        let marker = marker.clone();
        let collector = Bucket::new(&g, "shared");
        std::thread::spawn(move || {
            std::thread::sleep(Duration::from_secs(2));
            collector.delete(&marker);
        })
    };
    let started = Instant::now();
    let run = pull(&b);
    lifted.join().unwrap();
    assert!(
        started.elapsed() >= Duration::from_secs(2),
        "did not wait for the collector"
    );
    assert_eq!(run["blobs_adopted"], 1, "{run}");
    assert_eq!(run["blob_bytes_received"], 0, "{run}");
    assert!(get(&b, "p7").unwrap() == p7);
    hub_server.stop();

    // A reference marker lost from the bucket is a problem verify reports: without it,
    // another instance's gc could delete a blob this one serves.
    let refs = bucket.list("sites/refs");
    let (marker, _) = refs[0].clone();
    bucket.delete(&marker);
    let owner = if marker.contains(&a.ok(&["key", "show"]).trim().to_owned()) {
        &a
    } else {
        &b
    };
    let out = owner.run(&["verify"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(text.contains("no reference marker"), "{text}");
    bucket.put(&marker, Vec::new());
    assert!(owner.ok(&["verify"]).contains("ok"));

    // A blob nobody references any more (two collectors dropping the last two references at
    // once leave one behind) is removed by any sharing instance's gc; nothing else is.
    let held = bucket.list("sites/blobs");
    let leaked = "ab".repeat(32);
    bucket.put(&format!("sites/blobs/{leaked}"), vec![1; 20_000]);
    bucket.put(&format!("sites/blobs/{leaked}.obao"), vec![2; 64]);
    let gc = b.ok(&["gc"]);
    assert!(
        gc.contains("1 blobs nobody sharing the bucket referenced"),
        "{gc}"
    );
    assert_eq!(bucket.list("sites/blobs"), held);
    for inst in [&a, &b] {
        assert!(inst.ok(&["verify"]).contains("ok"));
    }
}

#[test]
fn a_three_node_garage_with_a_node_down_keeps_publishing_serving_and_replicating() {
    let tmp = tempfile::tempdir().unwrap();
    let mut g = garage(&tmp.path().join("garage"), 3, "ha-bucket");
    let blobs = g.cairn_config(0, "ha-bucket", "").unwrap();
    let (hub, port, replicate) = hub("");
    let p0 = push(&hub, "p0", 1, 300_000);
    let site = spoke(&hub, port, &replicate, &blobs, 0);
    site.ok(&["feed", "create", "uploads", "--type", "raw"]);
    let publish = token(&site, "publish:uploads");
    let hub_server = Server::start(&hub);
    let server = Server::start(&site);
    let put = |name: &str, body: &[u8]| {
        raw_http(
            &server.http,
            &format!(
                "PUT /feeds/uploads/{name}/1/{name}.bin HTTP/1.1\r\nHost: HOST\r\nAuthorization: Bearer {publish}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                body.len()
            ),
            body,
        )
    };
    let u0 = crate::util::bytes(10, 2_000_000);
    let (status, text) = put("u0", &u0);
    assert_eq!(status, 201, "{text}");
    pull(&site);

    // One of three nodes dies; with replication factor 3 a quorum is still there.
    g.kill_node(2);
    let u1 = crate::util::bytes(11, 2_000_000);
    let (status, text) = put("u1", &u1);
    assert_eq!(status, 201, "{text}");
    hub_server.stop();
    let p1 = push(&hub, "p1", 2, 300_000);
    let hub_server = Server::start(&hub);
    let run = pull(&site);
    assert_eq!(run["blob_bytes_received"], 300_000, "{run}");
    for (feed, path, want) in [
        ("uploads", "u0/1/u0.bin", &u0),
        ("uploads", "u1/1/u1.bin", &u1),
        ("files", "p0/1/p0.bin", &p0),
        ("files", "p1/1/p1.bin", &p1),
    ] {
        let (status, body) = get_raw(&server, feed, path);
        assert_eq!(status, 200, "{path}");
        assert!(&body == want, "{path}: {} bytes", body.len());
    }
    server.stop();
    hub_server.stop();
    assert!(site.ok(&["verify"]).contains("ok"));
}

fn signal(pid: u32, sig: &str) {
    let ok = Command::new("kill")
        .args([sig, &pid.to_string()])
        .status()
        .unwrap()
        .success();
    assert!(ok, "kill {sig} {pid}");
}

#[test]
fn an_object_store_that_stops_answering_fails_publishes_cleanly_and_replication_retries() {
    let tmp = tempfile::tempdir().unwrap();
    let mut g = garage(&tmp.path().join("garage"), 1, "flaky");
    // Short timeouts, so a frozen store fails requests quickly.
    let blobs = g
        .cairn_config(0, "flaky", "")
        .unwrap()
        .replace("timeout_secs = 10", "timeout_secs = 2")
        .replace("retries = 2", "retries = 1");
    let (hub, port, replicate) = hub("");
    let site = spoke(&hub, port, &replicate, &blobs, 1);
    site.ok(&["feed", "create", "uploads", "--type", "raw"]);
    let publish = token(&site, "publish:uploads");
    let admin = token(&site, "admin");
    let mut server = Server::start(&site);
    let put = move |http: &str, name: &str, body: &[u8]| {
        raw_http(
            http,
            &format!(
                "PUT /feeds/uploads/{name}/1/{name}.bin HTTP/1.1\r\nHost: HOST\r\nAuthorization: Bearer {publish}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                body.len()
            ),
            body,
        )
    };
    let bucket = Bucket::new(&g, "flaky");

    // A bucket that does not exist, or a key the store refuses, is a clear error at start.
    let bad_credentials = tmp.path().join("bad-credentials");
    std::fs::write(
        &bad_credentials,
        format!(
            "[default]\naws_access_key_id = {KEY_ID}\naws_secret_access_key = {}\n",
            "0".repeat(64)
        ),
    )
    .unwrap();
    let wrong_key: Vec<String> = blobs
        .lines()
        .map(|l| {
            if l.starts_with("credentials_file") {
                format!("credentials_file = \"{}\"", bad_credentials.display())
            } else {
                l.to_owned()
            }
        })
        .collect();
    for (name, config) in [
        (
            "no bucket",
            blobs.replace("bucket = \"flaky\"", "bucket = \"no-such-bucket\""),
        ),
        ("wrong key", wrong_key.join("\n")),
    ] {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("cairn.toml"), &config).unwrap();
        let out = Command::new(crate::util::cairn_bin())
            .arg("--data-dir")
            .arg(dir.path())
            .arg("init")
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{name}: {err}");
        assert!(
            err.contains("check the bucket and credentials in [blobs.s3]"),
            "{name}: {err}"
        );
    }

    // Unreachable: the publish fails with a clear error and nothing is visible.
    g.kill_node(0);
    let small = crate::util::bytes(20, 300_000);
    let (status, text) = put(&server.http, "small", &small);
    assert_eq!(status, 503, "{text}");
    assert!(
        text.contains("object store") && text.contains("retry"),
        "{text}"
    );
    assert_eq!(get_raw(&server, "uploads", "small/1/small.bin").0, 404);
    g.start_node(0).unwrap();
    assert_eq!(put(&server.http, "small", &small).0, 201);
    let (status, body) = get_raw(&server, "uploads", "small/1/small.bin");
    assert!(
        status == 200 && body == small,
        "{status}: {}",
        String::from_utf8_lossy(&body[..body.len().min(300)])
    );
    let before = bucket.list("blobs");
    assert_eq!(before.len(), 2, "{before:?}");

    // Frozen in the middle of a multipart upload: the publish fails, and neither the entry
    // nor any part of the blob becomes visible.
    let big = crate::util::bytes(21, 200 << 20);
    let pid = g.nodes[0].pid().unwrap();
    let baseline = g.data_bytes(0);
    let upload = {
        let big = big.clone();
        let http = server.http.clone();
        let put = put.clone();
        std::thread::spawn(move || put(&http, "big", &big))
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    while g.data_bytes(0) < baseline + (8 << 20) {
        assert!(Instant::now() < deadline, "the upload never reached garage");
        std::thread::sleep(Duration::from_millis(2));
    }
    signal(pid, "-STOP");
    let (status, text) = upload.join().unwrap();
    signal(pid, "-CONT");
    assert_eq!(status, 503, "{text}");
    assert_eq!(get_raw(&server, "uploads", "big/1/big.bin").0, 404);
    let data: Vec<_> = bucket
        .list("blobs")
        .into_iter()
        .filter(|(k, _)| !k.ends_with(".obao"))
        .collect();
    assert_eq!(data, before[..1], "no part of the blob is visible");
    // What the failed upload left (its outboard and this instance's reference) is garbage
    // that gc collects.
    server.stop();
    let gc = site.ok(&["gc"]);
    assert!(gc.contains(" 1 orphan files"), "{gc}");
    assert_eq!(bucket.list("blobs"), before);
    assert_eq!(bucket.list("refs").len(), 1);
    server = Server::start(&site);
    let (status, text) = put(&server.http, "big", &big);
    assert_eq!(status, 201, "{text}");
    assert!(get_raw(&server, "uploads", "big/1/big.bin").1 == big);

    // Replication while the store is down fails and is retried until it is back.
    g.kill_node(0);
    let p0 = push(&hub, "p0", 22, 300_000);
    let hub_server = Server::start(&hub);
    let log = |server: &Server| {
        let (status, text) =
            crate::feeds::admin_get(&server.http, &admin, "/api/v1/replication-log?limit=50");
        assert_eq!(status, 200, "{text}");
        text
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    while !log(&server).contains("unavailable") {
        assert!(
            Instant::now() < deadline,
            "no failed run logged: {}",
            log(&server)
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_eq!(get_raw(&server, "files", "p0/1/p0.bin").0, 404);
    g.start_node(0).unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let (status, body) = get_raw(&server, "files", "p0/1/p0.bin");
        if status == 200 {
            assert!(body == p0);
            break;
        }
        assert!(
            Instant::now() < deadline,
            "replication did not recover: {}",
            log(&server)
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    server.stop();
    hub_server.stop();
    assert!(site.ok(&["verify"]).contains("ok"));
}

#[test]
fn pushes_killed_mid_upload_leave_the_old_state_and_gc_clears_what_they_left() {
    let tmp = tempfile::tempdir().unwrap();
    let g = garage(&tmp.path().join("garage"), 1, "crash");
    let inst = Instance::with_config(&format!(
        "{LISTEN}\n{}",
        g.cairn_config(0, "crash", "").unwrap()
    ));
    inst.ok(&["feed", "create", "files", "--type", "raw"]);
    let bucket = Bucket::new(&g, "crash");
    let file = inst.path("big.bin");
    let mut outcomes = Vec::new();
    for (i, delay_ms) in [100u64, 250, 400, 550, 700, 2000].into_iter().enumerate() {
        // New bytes each time, so every push has to upload.
        std::fs::write(&file, crate::util::bytes(30 + i as u64, 96 << 20)).unwrap();
        let name = format!("k{i}");
        let mut child = inst
            .cmd(&[
                "push",
                "files",
                file.to_str().unwrap(),
                "--name",
                &name,
                "--version",
                "1",
            ])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(Duration::from_millis(delay_ms));
        let _ = child.kill();
        let status = child.wait().unwrap();
        // The old state or the new one: the version is there whole, or not at all.
        let listed = inst.ls("files");
        let present = listed.iter().any(|v| v["name"] == name.as_str());
        outcomes.push((delay_ms, status.success(), present));
        if present {
            assert!(get(&inst, &name).unwrap().len() == 96 << 20);
        } else {
            assert!(get(&inst, &name).is_err());
        }
        assert!(
            inst.ok(&["verify"]).contains("ok"),
            "after a kill at {delay_ms} ms"
        );
    }
    eprintln!(
        "kill delay (ms), push finished, version present: {outcomes:?}; before gc: {} objects, {} markers",
        bucket.list("blobs").len(),
        bucket.list("refs").len()
    );
    // After gc the bucket holds exactly the blobs of the versions that are there, each one
    // marked as this instance's.
    inst.ok(&["gc"]);
    let blobs: Vec<_> = bucket
        .list("blobs")
        .into_iter()
        .filter(|(k, _)| !k.ends_with(".obao"))
        .collect();
    let refs = bucket.list("refs");
    let present = outcomes.iter().filter(|(_, _, p)| *p).count();
    assert_eq!(blobs.len(), present, "{outcomes:?} {blobs:?}");
    assert_eq!(refs.len(), present, "{outcomes:?} {refs:?}");
    assert_eq!(
        bucket.list("blobs").len(),
        2 * present,
        "each with its outboard"
    );
    assert!(inst.ok(&["verify"]).contains("ok"));
}

#[test]
fn a_hub_with_its_blobs_in_garage_serves_replication_to_a_local_spoke() {
    let tmp = tempfile::tempdir().unwrap();
    let g = garage(&tmp.path().join("garage"), 1, "hub-blobs");
    let (hub, port, replicate) = hub(&g.cairn_config(0, "hub-blobs", "").unwrap());
    let files: Vec<Vec<u8>> = [300_000, 5_000_000, 2_000]
        .iter()
        .enumerate()
        .map(|(i, len)| push(&hub, &format!("h{i}"), 40 + i as u64, *len))
        .collect();
    let spoke = spoke(&hub, port, &replicate, "", 0);
    let hub_server = Server::start(&hub);
    let run = pull(&spoke);
    assert_eq!(run["blob_bytes_received"], 5_302_000, "{run}");
    for (i, data) in files.iter().enumerate() {
        assert!(&get(&spoke, &format!("h{i}")).unwrap() == data, "h{i}");
    }
    assert!(spoke.ok(&["verify"]).contains("ok"));
    hub_server.stop();
    assert!(hub.ok(&["verify"]).contains("ok"));
}
