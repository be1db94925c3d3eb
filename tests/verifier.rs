//! The independent verifier (`tools/verifier`, Python, written from wire-spec/ alone) checks a
//! live spoke's feed against the hub's checkpoint through the verification API, and names
//! what is wrong when it is not.

use std::process::{Command, Output};

use crate::util::{bytes, pull_section, Instance, Server};

fn cairn_verify(url: &str, key: &str) -> Output {
    Command::new("cairn-verify")
        .arg(url)
        .args(["--key", key])
        .output()
        .expect("cairn-verify runs (pip install ./tools/verifier; bash .ci/run does)")
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

#[test]
fn the_independent_verifier_passes_an_honest_spoke_and_names_a_damaged_blob() {
    let hub = Instance::new();
    let spoke = Instance::new();
    for inst in [&hub, &spoke] {
        inst.ok(&["feed", "create", "files", "--type", "raw"]);
    }
    hub.push("files", "big.bin", "tool", "1", &bytes(1, 200_000));
    hub.push("files", "small.txt", "tool", "2", b"small");
    hub.push("files", "other.bin", "other", "0.1", &bytes(2, 50_000));
    hub.ok(&["rm", "files", "other", "0.1"]);
    let (token, _) = crate::util::hub_serving(&hub, &spoke, "replicate:files");
    crate::util::serve_config(&spoke, 0, &pull_section("hub", &token, "files"));
    let hub_server = Server::start(&hub);
    let spoke_server = Server::start(&spoke);
    spoke.ok(&["replicate", "pull"]);
    let hub_key = hub.ok(&["key", "show"]).trim().to_owned();

    // Honest: both the hub and the spoke hold exactly what the hub signed.
    for server in [&hub_server, &spoke_server] {
        let out = cairn_verify(&format!("{}/feeds/files", server.http), &hub_key);
        assert!(out.status.success(), "{}", text(&out));
        assert!(
            text(&out).contains("checked 3 entries, 2 blobs of feed files")
                && text(&out).ends_with(": ok\n"),
            "{}",
            text(&out)
        );
    }
    // Only the hub's key is trusted: the spoke's own key signs nothing the auditor accepts.
    let spoke_key = spoke.ok(&["key", "show"]).trim().to_owned();
    let out = cairn_verify(&format!("{}/feeds/files", spoke_server.http), &spoke_key);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        text(&out).contains("which is not a trusted key"),
        "{}",
        text(&out)
    );

    // A blob damaged on the spoke's disk is named, with the version and file it belongs to.
    let damaged = std::fs::read_dir(spoke.data().join("blobs"))
        .unwrap()
        .flatten()
        .flat_map(|d| std::fs::read_dir(d.path()).into_iter().flatten().flatten())
        .map(|e| e.path())
        .find(|p| p.extension().is_none() && std::fs::metadata(p).is_ok_and(|m| m.len() == 200_000))
        .expect("the big blob's file on the spoke");
    let mut b = std::fs::read(&damaged).unwrap();
    b[123_456] ^= 0x40;
    std::fs::write(&damaged, &b).unwrap();
    let out = cairn_verify(&format!("{}/feeds/files", spoke_server.http), &hub_key);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        text(&out).contains("blob: tool/1 big.bin"),
        "{}",
        text(&out)
    );
    assert!(text(&out).contains("1 problems"), "{}", text(&out));
    // The hub's copy still verifies.
    let out = cairn_verify(&format!("{}/feeds/files", hub_server.http), &hub_key);
    assert!(out.status.success(), "{}", text(&out));

    // Against the hub as reference, a spoke that has not yet taken a new version is named
    // behind it, entry by entry (the spoke's own copy still adds up to what it re-serves).
    std::fs::write(&damaged, {
        b[123_456] ^= 0x40;
        &b
    })
    .unwrap();
    hub.push("files", "new.bin", "tool", "3", b"new");
    let out = Command::new("cairn-verify")
        .arg(format!("{}/feeds/files", spoke_server.http))
        .args(["--key", &hub_key, "--reference"])
        .arg(format!("{}/feeds/files", hub_server.http))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        text(&out).contains("missing: tool/3: the reference has it"),
        "{}",
        text(&out)
    );
    assert!(text(&out).contains("1 problems"), "{}", text(&out));

    // The API is read-only and stays inside the feed.
    let (status, _) = crate::feeds::http(
        &spoke_server.http,
        "DELETE /verify/v1/feeds/files/checkpoint HTTP/1.1\r\nHost: HOST\r\nConnection: close\r\n\r\n",
    );
    assert!(status == 405 || status == 404, "{status}");
    let (status, _) = crate::feeds::http(
        &spoke_server.http,
        &format!("GET /verify/v1/feeds/files/blobs/{} HTTP/1.1\r\nHost: HOST\r\nConnection: close\r\n\r\n", "00".repeat(32)),
    );
    assert_eq!(status, 404);
}

/// The body of `GET path` on a server, with its status.
fn get(server: &Server, path: &str) -> (u16, String) {
    let (status, text) = crate::feeds::http(
        &server.http,
        &format!("GET {path} HTTP/1.1\r\nHost: HOST\r\nConnection: close\r\n\r\n"),
    );
    let body = text.split_once("\r\n\r\n").map(|(_, b)| b.to_owned());
    (status, body.unwrap_or_default())
}

fn split_views(server: &Server) -> Vec<serde_json::Value> {
    let (status, body) = get(server, "/verify/v1/log/views");
    assert_eq!(status, 200, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    v["split_views"].as_array().cloned().unwrap_or_default()
}

/// A hub whose key signs two histories (its data directory copied and both copies kept
/// publishing) shows each spoke a consistent log on its own; the spokes' exchange of tree
/// heads exposes the fork at the second spoke's next run, on its status page, `/metrics` and
/// the log API.
#[test]
fn a_hub_forked_into_two_histories_is_caught_by_the_second_spoke() {
    let hub = Instance::new();
    let (a, b) = (Instance::new(), Instance::new());
    for inst in [&hub, &a, &b] {
        inst.ok(&["feed", "create", "files", "--type", "raw"]);
    }
    hub.push("files", "one.txt", "tool", "1", b"one");
    let hub_key = hub.ok(&["key", "show"]).trim().to_owned();
    let a_key = a.ok(&["key", "show"]).trim().to_owned();
    let token = hub.token(&["replicate:files"]);
    let hub_port = crate::util::free_udp_port();
    crate::util::peer_spoke_with_hub(&hub, &a, "a", hub_port);
    crate::util::peer_spoke_with_hub(&hub, &b, "b", hub_port);
    crate::util::serve_config(&hub, hub_port, "");
    // b also pulls from a (its second upstream), so the two spokes talk.
    let a_port = crate::util::free_udp_port();
    let a_token = a.token(&["replicate:files"]);
    let b_key = b.ok(&["key", "show"]).trim().to_owned();
    a.ok(&["peer", "add", "b", "127.0.0.1:1", "--key", &b_key]);
    b.ok(&[
        "peer",
        "add",
        "a",
        &format!("127.0.0.1:{a_port}"),
        "--key",
        &a_key,
    ]);
    crate::util::serve_config(&a, a_port, &pull_section("hub", &token, "files"));
    crate::util::serve_config(
        &b,
        0,
        &format!(
            "{}\n[[replication]]\nname = \"sibling\"\npeer = \"a\"\ntoken = \"{a_token}\"\nfeeds = [\"files\"]\nmode = \"pull\"\ninterval_secs = 0\n",
            pull_section("hub", &token, "files")
        ),
    );

    // Honest: both spokes see one history, and exchanging heads finds nothing.
    let hub_server = Server::start(&hub);
    let a_server = Server::start(&a);
    let b_server = Server::start(&b);
    a.ok(&["replicate", "pull"]);
    b.ok(&["replicate", "pull"]);
    b.run(&["replicate", "sibling"]);
    b.ok(&["replicate", "pull"]);
    for s in [&a_server, &b_server] {
        assert_eq!(split_views(s), Vec::<serde_json::Value>::new());
    }
    let (_, views) = get(&b_server, "/verify/v1/log/views");
    assert!(views.contains(&hub_key), "b follows the hub's log: {views}");

    // The fork: the hub's directory copied, each copy publishing something else.
    hub_server.stop();
    let fork = Instance {
        dir: tempfile::tempdir().unwrap(),
    };
    let copied = Command::new("cp")
        .arg("-a")
        .arg(hub.data())
        .arg(fork.data())
        .status()
        .unwrap();
    assert!(copied.success());
    let fork_port = crate::util::free_udp_port();
    crate::util::serve_config(&fork, fork_port, "");
    let hub_server = Server::start(&hub);
    let fork_server = Server::start(&fork);
    hub.push("files", "two.txt", "tool", "2", b"the hub's second version");
    fork.push(
        "files",
        "two.txt",
        "tool",
        "2",
        b"the fork's second version",
    );
    assert_eq!(fork.ok(&["key", "show"]).trim(), hub_key);

    // a stays with the hub; b is sent to the fork (same key, so the handshake succeeds).
    a.ok(&["replicate", "pull"]);
    // An auditor checks a against the hub's log and keeps the head it saw.
    let state = hub.path("auditor-log-state.json");
    let audit = |server: &Server, log: &Server| {
        Command::new("cairn-verify")
            .arg(format!("{}/feeds/files", server.http))
            .args(["--key", &hub_key, "--log", &log.http, "--log-state"])
            .arg(&state)
            .output()
            .unwrap()
    };
    let out = audit(&a_server, &hub_server);
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        text(&out).contains("log: the checkpoint is entry "),
        "{}",
        text(&out)
    );
    b.ok(&["peer", "rm", "hub"]);
    b.ok(&[
        "peer",
        "add",
        "hub",
        &format!("127.0.0.1:{fork_port}"),
        "--key",
        &hub_key,
    ]);
    b.ok(&["replicate", "pull"]);
    // Each history on its own is consistent: nothing yet.
    assert_eq!(split_views(&a_server), Vec::<serde_json::Value>::new());
    assert_eq!(split_views(&b_server), Vec::<serde_json::Value>::new());

    // b's next runs: with a (which gossips the hub's head), then with its upstream again.
    b.run(&["replicate", "sibling"]);
    b.run(&["replicate", "pull"]);
    let views = split_views(&b_server);
    assert!(!views.is_empty(), "the fork went unnoticed");
    assert!(views.iter().all(|v| v["log"] == hub_key), "{views:?}");
    let (_, metrics) = get(&b_server, "/metrics");
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("cairn_transparency_split_views_total ")
                && l != "cairn_transparency_split_views_total 0"),
        "{metrics}"
    );
    assert!(
        metrics.contains(&format!(
            "cairn_transparency_split_views{{log=\"{hub_key}\"}}"
        )),
        "{metrics}"
    );
    let (_, page) = get(&b_server, "/");
    assert!(page.contains("Split view"), "{page}");
    // The auditor, checking b against the log of the hub b knows (the fork), finds that its
    // head does not extend the one the hub showed before.
    let out = audit(&b_server, &fork_server);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        text(&out).contains("split view: the head of"),
        "{}",
        text(&out)
    );
    // While a, checked again against the honest hub, still passes, the head extending.
    let out = audit(&a_server, &hub_server);
    assert!(out.status.success(), "{}", text(&out));
    drop((hub_server, fork_server));
}

/// The verifier's second half, written from the spec alone, recomputes every published vector
/// (frames byte for byte, documents re-signed with the test key, Merkle values, the IBLT, blob
/// outboards and encodings with its own BLAKE3, the transparency log's proofs).
#[test]
fn an_implementation_from_the_spec_alone_reproduces_every_vector() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../wire-spec/vectors");
    let out = Command::new("cairn-verify")
        .arg("vectors")
        .arg(&dir)
        .output()
        .expect("cairn-verify runs");
    assert!(out.status.success(), "{}", text(&out));
    assert!(text(&out).ends_with("vectors: ok\n"), "{}", text(&out));
    // And it is not a rubber stamp: one byte changed in a copy is found.
    let copy = tempfile::tempdir().unwrap();
    for f in std::fs::read_dir(&dir).unwrap().flatten() {
        std::fs::copy(f.path(), copy.path().join(f.file_name())).unwrap();
    }
    let frames = std::fs::read_to_string(copy.path().join("frames.txt")).unwrap();
    let tampered: String = frames
        .lines()
        .map(|l| match l.strip_prefix("blob-piece: ") {
            Some(hex) => format!(
                "blob-piece: {}{}\n",
                &hex[..hex.len() - 2],
                if hex.ends_with("00") { "01" } else { "00" }
            ),
            None => format!("{l}\n"),
        })
        .collect();
    std::fs::write(copy.path().join("frames.txt"), tampered).unwrap();
    let out = Command::new("cairn-verify")
        .arg("vectors")
        .arg(copy.path())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        text(&out).contains("frame blob-piece: data is not the encoding of its groups"),
        "{}",
        text(&out)
    );
}

/// Tampering with a spoke's store on disk, below the server: a document's bytes changed in
/// place, and an index entry pointed at another version's document. The verifier names each.
#[test]
fn tampering_with_a_spokes_documents_and_index_on_disk_is_named() {
    let hub = Instance::new();
    let spoke = Instance::new();
    for inst in [&hub, &spoke] {
        inst.ok(&["feed", "create", "files", "--type", "raw"]);
    }
    for v in ["1", "2", "3"] {
        hub.push(
            "files",
            &format!("tool-{v}.txt"),
            "tool",
            v,
            format!("version {v}").as_bytes(),
        );
    }
    let (token, _) = crate::util::hub_serving(&hub, &spoke, "replicate:files");
    crate::util::serve_config(&spoke, 0, &pull_section("hub", &token, "files"));
    let _hub_server = Server::start(&hub);
    let spoke_server = Server::start(&spoke);
    spoke.ok(&["replicate", "pull"]);
    let hub_key = hub.ok(&["key", "show"]).trim().to_owned();
    let url = format!("{}/feeds/files", spoke_server.http);
    let out = cairn_verify(&url, &hub_key);
    assert!(out.status.success(), "{}", text(&out));
    let (_, body) = get(&spoke_server, "/verify/v1/feeds/files/entries");
    let entries: serde_json::Value = serde_json::from_str(&body).unwrap();
    let doc_of = |key: &str| -> Vec<u8> {
        let hex = entries["entries"]
            .as_array()
            .unwrap()
            .iter()
            .find(|e| e["key"] == key)
            .unwrap()["doc"]
            .as_str()
            .unwrap()
            .to_owned();
        (0..64)
            .step_by(2)
            .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap())
            .collect()
    };
    let (doc1, doc2, doc3) = (doc_of("tool/1"), doc_of("tool/2"), doc_of("tool/3"));
    // Pages: two entries and where the next page starts, then the last one.
    let (_, body) = get(&spoke_server, "/verify/v1/feeds/files/entries?limit=2");
    let page: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(page["entries"].as_array().unwrap().len(), 2, "{page}");
    assert_eq!(page["next"], "tool/2", "{page}");
    let (_, body) = get(
        &spoke_server,
        "/verify/v1/feeds/files/entries?limit=2&after=tool%2F2",
    );
    let page: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(page["entries"][0]["key"], "tool/3", "{page}");
    assert!(page.get("next").is_none(), "{page}");
    spoke_server.stop();

    {
        let path = spoke.data().join("db");
        let opts = rocksdb::Options::default();
        let cfs = rocksdb::DB::list_cf(&opts, &path).unwrap();
        let db = rocksdb::DB::open_cf(&opts, &path, &cfs).unwrap();
        // tool/2's manifest, one byte of its payload changed where it is stored.
        let docs = db.cf_handle("docs").unwrap();
        let mut bytes = db.get_cf(&docs, &doc2).unwrap().expect("tool/2's document");
        let at = bytes
            .windows(4)
            .position(|w| w == b"tool")
            .expect("the name in the payload");
        bytes[at] = b'T';
        db.put_cf(&docs, &doc2, &bytes).unwrap();
        // tool/1's index entry pointed at tool/3's document.
        let index = db.cf_handle("entries").unwrap();
        let (key, mut value) = db
            .iterator_cf(&index, rocksdb::IteratorMode::Start)
            .flatten()
            .find(|(_, v)| v.windows(32).any(|w| w == doc1.as_slice()))
            .map(|(k, v)| (k.to_vec(), v.to_vec()))
            .expect("tool/1's entry");
        let at = value
            .windows(32)
            .position(|w| w == doc1.as_slice())
            .unwrap();
        value[at..at + 32].copy_from_slice(&doc3);
        db.put_cf(&index, &key, &value).unwrap();
    }

    let spoke_server = Server::start(&spoke);
    let out = cairn_verify(&format!("{}/feeds/files", spoke_server.http), &hub_key);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let t = text(&out);
    assert!(
        t.contains("document: tool/2: ") && t.contains("do not hash to its id"),
        "the altered document: {t}"
    );
    assert!(
        t.contains("document: tool/1: the manifest is of tool/3"),
        "the altered index entry: {t}"
    );
    assert!(!t.contains("document: tool/3: "), "tool/3 is intact: {t}");
    assert!(
        t.contains("root: files: "),
        "the entries no longer add up: {t}"
    );
}
