//! Filtered replication over real QUIC: two spokes pull different subsets of one hub feed,
//! each keeps the hub's checkpoint over exactly its subset (which the independent verifier
//! checks), local entries outside the filter stay, and a filter change moves only the
//! difference.

use std::process::Command;

use crate::util::{bytes, peer_spoke_with_hub, serve_config, Instance, Server};

fn keys(inst: &Instance) -> Vec<String> {
    let mut k: Vec<String> = inst
        .ls("files")
        .iter()
        .map(|v| {
            format!(
                "{}/{}",
                v["name"].as_str().unwrap(),
                v["version"].as_str().unwrap()
            )
        })
        .collect();
    k.sort();
    k
}

fn pull(filter: &str) -> String {
    format!("[[replication]]\nname = \"pull\"\npeer = \"hub\"\ntoken = \"TOKEN\"\nfeeds = [\"files\"]\nmode = \"pull\"\ninterval_secs = 0\n{filter}")
}

fn replicate(spoke: &Instance) -> serde_json::Value {
    let out = spoke.ok(&["replicate", "pull", "--json"]);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["feeds"][0]["converged"], true, "{v}");
    v
}

#[test]
fn two_spokes_pull_their_own_subsets_and_a_filter_change_moves_only_the_difference() {
    let hub = Instance::new();
    hub.ok(&["feed", "create", "files", "--type", "raw"]);
    for (i, name) in [
        "cairn-core",
        "Cairn_Web",
        "cairn-internal-ci",
        "other",
        "tools",
    ]
    .iter()
    .enumerate()
    {
        hub.push("files", "f.bin", name, "1.0", &bytes(i as u64, 30_000));
    }
    let token = hub.token(&["replicate:files"]);
    let port = crate::util::free_udp_port();
    serve_config(&hub, port, "");
    let (a, b) = (Instance::new(), Instance::new());
    let filter_a = "[[replication.filter]]\nfeed = \"files\"\ninclude = [\"cairn-*\"]\nexclude = [\"cairn-internal-*\"]\n";
    let filter_b = "[[replication.filter]]\nfeed = \"files\"\ninclude = [\"other\", \"tools\"]\n";
    for (spoke, name, filter) in [(&a, "a", filter_a), (&b, "b", filter_b)] {
        spoke.ok(&["feed", "create", "files", "--type", "raw"]);
        peer_spoke_with_hub(&hub, spoke, name, port);
        serve_config(spoke, 0, &pull(filter).replace("TOKEN", &token));
    }
    // Spoke a publishes a package of its own, outside its filter.
    a.push("files", "mine.bin", "site-tool", "1", b"local");
    let hub_server = Server::start(&hub);

    let ra = replicate(&a);
    let rb = replicate(&b);
    assert_eq!(
        keys(&a),
        ["Cairn_Web/1.0", "cairn-core/1.0", "site-tool/1"],
        "{ra}"
    );
    assert_eq!(keys(&b), ["other/1.0", "tools/1.0"], "{rb}");
    assert_eq!(ra["feeds"][0]["blobs_received"], 2, "{ra}");
    assert_eq!(rb["feeds"][0]["blobs_received"], 2, "{rb}");

    // An auditor checks spoke a against the hub's key: the checkpoint it re-serves is the
    // hub's over exactly the filtered set, and the set is whole.
    let hub_key = hub.ok(&["key", "show"]).trim().to_owned();
    let a_server = Server::start(&a);
    let out = Command::new("cairn-verify")
        .arg(format!("{}/feeds/files", a_server.http))
        .args(["--key", &hub_key])
        .output()
        .expect("cairn-verify runs (bash .ci/run installs it)");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{text}");
    assert!(
        text.contains("2 of the 3 entries served are selected"),
        "{text}"
    );
    assert!(text.contains("checked 2 entries"), "{text}");
    drop(a_server);

    // Spoke b widens its filter: only the package it adds moves.
    serve_config(
        &b,
        0,
        &pull("[[replication.filter]]\nfeed = \"files\"\ninclude = [\"other\", \"tools\", \"cairn-core\"]\n")
            .replace("TOKEN", &token),
    );
    let rb = replicate(&b);
    assert_eq!(rb["feeds"][0]["docs_applied"], 1, "{rb}");
    assert_eq!(rb["feeds"][0]["blobs_received"], 1, "{rb}");
    assert_eq!(keys(&b), ["cairn-core/1.0", "other/1.0", "tools/1.0"]);

    // A deletion on the hub inside a's filter reaches a; the next run of b changes nothing
    // that is not b's.
    hub.ok(&["rm", "files", "Cairn_Web", "1.0"]);
    replicate(&a);
    let all = a.ls("files");
    let web = all.iter().find(|v| v["name"] == "Cairn_Web").unwrap();
    assert_eq!(web["kind"], "tombstone", "{all:?}");
    let rb = replicate(&b);
    assert_eq!(rb["feeds"][0]["docs_applied"], 0, "{rb}");
    assert_eq!(keys(&b), ["cairn-core/1.0", "other/1.0", "tools/1.0"]);

    // A filter the configuration cannot have is refused when the configuration is read.
    serve_config(
        &b,
        0,
        &pull("[[replication.filter]]\nfeed = \"@system\"\ninclude = [\"x\"]\n")
            .replace("TOKEN", &token),
    );
    let err = b.fails(&["replicate", "pull"], 2);
    assert!(
        err.contains("does not replicate") || err.contains("replicated whole"),
        "{err}"
    );
    drop(hub_server);
}
