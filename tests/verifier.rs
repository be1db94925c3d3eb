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
