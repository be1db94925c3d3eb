//! The status page, read by a real browser (headless Chromium) from a live hub and spoke.

use std::path::Path;
use std::process::Command;

use crate::feeds::http;
use crate::util::{Instance, Server};

/// Runs headless Chromium on `url`: the DOM after load, and a screenshot at `png`.
fn chromium(profile: &Path, url: &str, png: &Path) -> String {
    let base = |c: &mut Command| {
        c.args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--no-first-run",
            "--hide-scrollbars",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .env("HOME", profile);
    };
    let mut dump = Command::new("chromium");
    base(&mut dump);
    let out = dump
        .arg("--dump-dom")
        .arg(url)
        .output()
        .expect("chromium runs (apt-get install chromium)");
    assert!(out.status.success(), "{out:?}");
    let dom = String::from_utf8_lossy(&out.stdout).into_owned();
    let mut shot = Command::new("chromium");
    base(&mut shot);
    let out = shot
        .arg("--window-size=1280,1000")
        .arg(format!("--screenshot={}", png.display()))
        .arg(url)
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    dom
}

#[test]
fn the_status_page_shows_a_replication_behind_and_one_failing_with_their_reasons() {
    let hub = Instance::new();
    let spoke = Instance::new();
    for inst in [&hub, &spoke] {
        inst.ok(&["feed", "create", "files", "--type", "raw"]);
    }
    spoke.ok(&["feed", "create", "east", "--type", "raw"]);
    for v in ["1", "2", "3", "4"] {
        hub.push("files", "tool.bin", "tool", v, v.as_bytes());
    }
    let (replicate, _) = crate::util::hub_serving(&hub, &spoke, "replicate:*");
    // Two replications on the spoke: one from the hub, one from a peer never added.
    crate::util::serve_config(
        &spoke,
        0,
        &format!("[[replication]]\nname = \"from-hub\"\npeer = \"hub\"\ntoken = \"{replicate}\"\nfeeds = [\"files\"]\nmode = \"pull\"\ninterval_secs = 0\n\n\
[[replication]]\nname = \"from-tokyo\"\npeer = \"tokyo\"\ntoken = \"x\"\nfeeds = [\"east\"]\nmode = \"pull\"\ninterval_secs = 0\n"),
    );
    let _hub_server = Server::start(&hub);
    let spoke_server = Server::start(&spoke);
    spoke.ok(&["replicate", "from-hub"]);
    // The hub deletes three of the four versions: more than the spoke's guard rail lets one
    // run follow, so the spoke is held back, behind its upstream.
    for v in ["1", "2", "3"] {
        hub.ok(&["rm", "files", "tool", v]);
    }
    spoke.fails(&["replicate", "from-hub"], 2);
    spoke.fails(&["replicate", "from-tokyo"], 2);

    // The admin API says the same as the page.
    let admin = spoke
        .ok(&["token", "create", "--scope", "admin"])
        .trim()
        .to_owned();
    let (status, text) =
        crate::feeds::admin_get(&spoke_server.http, &admin, "/api/v1/replications");
    assert_eq!(status, 200, "{text}");
    let body: serde_json::Value =
        serde_json::from_str(text.split("\r\n\r\n").nth(1).unwrap_or("")).unwrap();
    let states: Vec<(&str, &str)> = body
        .as_array()
        .unwrap()
        .iter()
        .map(|r| (r["name"].as_str().unwrap(), r["state"].as_str().unwrap()))
        .collect();
    assert_eq!(states, [("from-hub", "behind"), ("from-tokyo", "failing")]);

    // Without a token, small, without script, with its landmarks.
    let (status, raw) = http(
        &spoke_server.http,
        "GET / HTTP/1.1\r\nHost: HOST\r\nConnection: close\r\n\r\n",
    );
    assert_eq!(status, 200, "{raw}");
    let html = raw.split("\r\n\r\n").nth(1).unwrap_or("");
    assert!(html.len() < 32 * 1024, "{} bytes", html.len());
    for needle in [
        "<html lang=\"en\"",
        "<main>",
        "<nav aria-label=",
        "<header>",
        "http-equiv=\"refresh\"",
        "<th scope=\"col\">",
    ] {
        assert!(html.contains(needle), "no {needle}: {html}");
    }
    assert!(!html.contains("<script"), "{html}");
    assert!(
        !html.contains(&replicate) && !html.contains("127.0.0.1"),
        "{html}"
    );

    // What a person sees in a browser.
    let profile = spoke.path("chromium");
    std::fs::create_dir_all(&profile).unwrap();
    let png = std::env::var_os("CAIRN_STATUS_SCREENSHOT")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| spoke.path("status.png"));
    let dom = chromium(&profile, &format!("{}/", spoke_server.http), &png);
    let text = dom.replace("&nbsp;", " ");
    for needle in [
        "from-hub",
        ">behind<",
        "held back by the deletion guard rail: this run would delete 3 of 4 entries in `files`",
        "from-tokyo",
        ">failing<",
        "1 failed run in a row",
        "no peer named `tokyo`",
        "pulled from hub",
        "yes: the last run reached it",
    ] {
        assert!(
            text.contains(needle),
            "the page does not show {needle:?}:\n{dom}"
        );
    }
    let shot = std::fs::metadata(&png).expect("chromium wrote the screenshot");
    assert!(shot.len() > 10_000, "{} bytes", shot.len());
}
