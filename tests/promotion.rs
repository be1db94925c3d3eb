//! Promotion between feeds: a version published to a hub's `staging` feed is promoted to
//! `release` through the admin API, reaches a spoke that pulls only `release` (and `@system`),
//! and installs there with pip; its history shows on the spoke.

use crate::feeds::{admin_get, build_python_packages, http, pip_install, raw_http, twine_upload};
use crate::util::{hub_serving, listing, serve_config, Instance, Server};

/// Files under the instance's blob directory.
fn blob_files(inst: &Instance) -> usize {
    listing(&inst.data().join("blobs")).lines().count()
}

#[test]
fn a_version_promoted_from_staging_to_release_installs_on_a_spoke_with_its_history() {
    let (hub, spoke) = (Instance::new(), Instance::new());
    for f in ["staging", "release"] {
        hub.ok(&["feed", "create", f, "--type", "pypi"]);
    }
    spoke.ok(&["feed", "create", "release", "--type", "pypi"]);
    let (replicate, _port) = hub_serving(&hub, &spoke, "replicate:*");
    serve_config(
        &spoke,
        0,
        &format!("[[replication]]\nname = \"from-hub\"\npeer = \"hub\"\ntoken = \"{replicate}\"\nfeeds = [\"release\", \"@system\"]\nmode = \"pull\"\ninterval_secs = 0\n"),
    );
    let publish = hub.token(&["publish:staging"]);
    let admin = hub
        .ok(&[
            "token",
            "create",
            "--scope",
            "admin",
            "--label",
            "release CI",
        ])
        .trim()
        .to_owned();
    let (wheel, sdist) = build_python_packages(&hub);
    let hub_server = Server::start(&hub);
    for file in [&wheel, &sdist] {
        let out = twine_upload(
            &format!("{}/feeds/staging/legacy/", hub_server.http),
            &publish,
            file,
        );
        assert!(out.status.success(), "{out:?}");
    }
    let blobs_before = blob_files(&hub);

    // A promotion to a feed of another type, or of a version staging lacks, is refused.
    hub.ok(&["feed", "create", "npm", "--type", "npm"]);
    let post = |body: &str| {
        raw_http(
            &hub_server.http,
            &format!("POST /api/v1/promotions HTTP/1.1\r\nHost: HOST\r\nAuthorization: Bearer {admin}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n", body.len()),
            body.as_bytes(),
        )
    };
    let (status, text) =
        post(r#"{"from":"staging","to":"npm","name":"cairn-beta","version":"2.0.0"}"#);
    assert_eq!(status, 400, "{text}");
    let (status, text) =
        post(r#"{"from":"staging","to":"release","name":"cairn-beta","version":"9.9"}"#);
    assert_eq!(status, 404, "{text}");
    assert!(hub.ls("release").is_empty());

    // The dependency through the command line (on the running server), the package through
    // the admin API.
    let said = hub.ok(&[
        "promote",
        "staging",
        "release",
        "cairn-alpha",
        "1.0.0",
        "--by",
        "alice",
    ]);
    assert!(said.contains("promoted cairn-alpha 1.0.0"), "{said}");
    let (status, text) =
        post(r#"{"from":"staging","to":"release","name":"cairn-beta","version":"2.0.0"}"#);
    assert_eq!(status, 200, "{text}");
    assert!(text.contains("release CI"), "{text}");
    // A token's label is free text of any length: the record keeps a bounded part of it.
    let long = "é".repeat(300);
    let long_admin = hub
        .ok(&["token", "create", "--scope", "admin", "--label", &long])
        .trim()
        .to_owned();
    let body = r#"{"from":"staging","to":"release","name":"cairn-alpha","version":"1.0.0"}"#;
    let (status, text) = raw_http(
        &hub_server.http,
        &format!("POST /api/v1/promotions HTTP/1.1\r\nHost: HOST\r\nAuthorization: Bearer {long_admin}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n", body.len()),
        body.as_bytes(),
    );
    assert_eq!(status, 200, "{text}");
    assert!(text.contains("\"already_held\":true"), "{text}");
    assert_eq!(
        blob_files(&hub),
        blobs_before,
        "a promotion copies no bytes"
    );
    let mut release: Vec<String> = hub
        .ls("release")
        .iter()
        .map(|e| e["name"].as_str().unwrap_or("").to_owned())
        .collect();
    release.sort();
    // Each keeps the spelling it was published with; a client may name either normalized.
    assert_eq!(release, ["Cairn_Beta", "cairn-alpha"]);

    // The spoke pulls release and the system set only; pip installs the promoted version.
    let spoke_server = Server::start(&spoke);
    let r: serde_json::Value =
        serde_json::from_str(&spoke.ok(&["replicate", "from-hub", "--json"])).unwrap();
    for f in r["feeds"].as_array().unwrap() {
        assert_eq!(f["converged"], true, "{r}");
    }
    let target = spoke.path("site-packages");
    let out = pip_install(
        &format!("{}/feeds/release/simple/", spoke_server.http),
        &target,
        "cairn-beta==2.0.0",
    );
    assert!(out.status.success(), "pip install from the spoke: {out:?}");
    assert!(target.join("cairn_beta").exists() && target.join("cairn_alpha.py").exists());

    // The history: on the spoke's API and status page, named by the token that promoted it.
    let spoke_admin = spoke.token(&["admin"]);
    let (status, text) = admin_get(
        &spoke_server.http,
        &spoke_admin,
        "/api/v1/promotions?name=cairn-beta&version=2.0.0",
    );
    assert_eq!(status, 200, "{text}");
    let body: serde_json::Value =
        serde_json::from_str(text.split("\r\n\r\n").nth(1).unwrap_or("")).unwrap();
    assert_eq!(body.as_array().map(Vec::len), Some(1), "{body}");
    assert_eq!(body[0]["from"], "staging");
    assert_eq!(body[0]["to"], "release");
    assert!(
        body[0]["by"].as_str().unwrap().contains("release CI"),
        "{body}"
    );
    let (status, page) = http(
        &spoke_server.http,
        "GET / HTTP/1.1\r\nHost: HOST\r\nConnection: close\r\n\r\n",
    );
    assert_eq!(status, 200);
    assert!(page.contains("id=\"promotions\""), "{page}");
    assert!(
        page.contains("<code>staging</code> &rarr; <code>release</code> by token"),
        "{page}"
    );
    assert!(page.contains("by alice"), "{page}");
    // The command line reads the same records on the hub.
    let listed = hub.ok(&["promotions", "cairn-alpha", "--json"]);
    assert!(listed.contains("\"by\": \"alice\""), "{listed}");
}
