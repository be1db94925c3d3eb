//! Several upstreams per replication, relays, notifications and transfer windows, with every
//! instance a real `cairn serve` (or `cairn replicate`) talking QUIC on loopback.

use std::time::{Duration, Instant};

use crate::feeds::admin_get;
use crate::util::{free_udp_port, Instance, Server};

fn key_of(inst: &Instance) -> String {
    inst.ok(&["key", "show"]).trim().to_owned()
}

fn token(inst: &Instance, scope: &str) -> String {
    inst.ok(&["token", "create", "--scope", scope])
        .trim()
        .to_owned()
}

fn replicate(inst: &Instance, name: &str) -> serde_json::Value {
    let out = inst.run(&["replicate", name, "--json"]);
    serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|_| panic!("{}", inst.report(&["replicate", name, "--json"], &out)))
}

fn config(inst: &Instance, port: u16, rest: &str) {
    std::fs::write(
        inst.data().join("cairn.toml"),
        format!(
            "[sync]\nlisten = \"127.0.0.1:{port}\"\n\n[http]\nlisten = \"127.0.0.1:0\"\n\n{rest}"
        ),
    )
    .unwrap();
}

/// `to` knows `from` as peer `name` at `port` (0: it never dials it).
fn add_peer(to: &Instance, name: &str, from: &Instance, port: u16) {
    let port = if port == 0 { 1 } else { port };
    to.ok(&[
        "peer",
        "add",
        name,
        &format!("127.0.0.1:{port}"),
        "--key",
        &key_of(from),
    ]);
}

fn versions(inst: &Instance, feed: &str) -> Vec<String> {
    let mut v: Vec<String> = inst
        .ls(feed)
        .iter()
        .map(|e| e["version"].as_str().unwrap_or("").to_owned())
        .collect();
    v.sort();
    v
}

/// Waits (at most `limit`) until `inst` lists `version` of package `p` in `demo`; how long it took.
fn wait_for_version(inst: &Instance, version: &str, limit: Duration) -> Option<Duration> {
    let start = Instant::now();
    while start.elapsed() < limit {
        if versions(inst, "demo").iter().any(|v| v == version) {
            return Some(start.elapsed());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    None
}

struct Three {
    hub: Instance,
    relay: Instance,
    spoke: Instance,
    hub_port: u16,
    relay_port: u16,
}

/// A hub, a relay that pulls `demo` from it, and a spoke that knows both, trusting the hub's
/// key alone; `spoke_rep` is the spoke's `[[replication]]` body after its name.
fn three(relay_interval: u64, spoke_rep: &dyn Fn(&str, &str) -> String) -> Three {
    let (hub, relay, spoke) = (Instance::new(), Instance::new(), Instance::new());
    let (hub_port, relay_port) = (free_udp_port(), free_udp_port());
    for i in [&hub, &relay, &spoke] {
        i.ok(&["feed", "create", "demo", "--type", "raw"]);
    }
    add_peer(&hub, "relay", &relay, 0);
    add_peer(&hub, "spoke", &spoke, 0);
    add_peer(&relay, "hub", &hub, hub_port);
    add_peer(&relay, "spoke", &spoke, 0);
    add_peer(&spoke, "hub", &hub, hub_port);
    add_peer(&spoke, "relay", &relay, relay_port);
    relay.ok(&["trust", "add", &key_of(&hub), "--feed", "demo"]);
    spoke.ok(&["trust", "add", &key_of(&hub), "--feed", "demo"]);
    let (hub_token, relay_token) = (
        token(&hub, "replicate:demo"),
        token(&relay, "replicate:demo"),
    );
    config(&hub, hub_port, "");
    config(
        &relay,
        relay_port,
        &format!("[[replication]]\nname = \"up\"\npeer = \"hub\"\ntoken = \"{hub_token}\"\nfeeds = [\"demo\"]\nmode = \"pull\"\ninterval_secs = {relay_interval}\n"),
    );
    config(
        &spoke,
        free_udp_port(),
        &format!(
            "[[replication]]\nname = \"up\"\n{}",
            spoke_rep(&hub_token, &relay_token)
        ),
    );
    Three {
        hub,
        relay,
        spoke,
        hub_port,
        relay_port,
    }
}

fn push(inst: &Instance, version: u64) {
    inst.push(
        "demo",
        "f",
        "p",
        &version.to_string(),
        &crate::util::bytes(version, 40_000),
    );
}

/// The spoke lists the hub first and the relay second. With the hub killed, a run is served
/// by the relay (which holds what the hub had sent it, under the hub's signature) and says
/// why; with the hub back, runs go back to it.
#[test]
fn a_spoke_fails_over_to_a_relay_and_returns_to_its_hub() {
    let t = three(0, &|hub_token, relay_token| {
        format!("peer = [\"hub\", \"relay\"]\ntoken = \"{hub_token}\"\ntokens = {{ relay = \"{relay_token}\" }}\nfeeds = [\"demo\"]\nmode = \"pull\"\ninterval_secs = 0\nconnect_secs = 2\n")
    });
    push(&t.hub, 1);
    let mut hub_server = Server::start(&t.hub);
    let _relay_server = Server::start(&t.relay);
    let r = replicate(&t.relay, "up");
    assert_eq!(r["feeds"][0]["converged"], true, "{r}");
    let r = replicate(&t.spoke, "up");
    assert_eq!(r["feeds"][0]["converged"], true, "{r}");
    assert_eq!(r["peer"], "hub", "{r}");
    assert_eq!(r["failover"], "", "{r}");

    // A release reaches the relay; then the hub dies before the spoke pulls it.
    push(&t.hub, 2);
    assert_eq!(replicate(&t.relay, "up")["feeds"][0]["converged"], true);
    let hub_root = t.hub.root("demo");
    hub_server.child.kill().unwrap();
    let _ = hub_server.child.wait();
    let started = Instant::now();
    let r = replicate(&t.spoke, "up");
    assert_eq!(r["feeds"][0]["converged"], true, "{r}");
    assert_eq!(r["peer"], "relay", "{r}");
    let why = r["failover"].as_str().unwrap();
    assert!(
        why.starts_with("hub: ") && why.contains("did not answer within 2 s"),
        "{r}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(15),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(t.spoke.root("demo")["root"], hub_root["root"]);
    assert_eq!(versions(&t.spoke, "demo"), ["1", "2"]);
    // The log says which upstream served the run and why.
    let log: serde_json::Value =
        serde_json::from_str(&t.spoke.ok(&["replication", "log", "--json"])).unwrap();
    assert_eq!(log[0]["peer"], "relay", "{log}");
    assert_eq!(log[0]["outcome"], "ok", "{log}");
    assert!(
        log[0]["failover"].as_str().unwrap().starts_with("hub: "),
        "{log}"
    );

    // The hub is back with a newer release: the next run takes it from the hub.
    drop(hub_server);
    push(&t.hub, 3);
    let _hub_server = Server::start(&t.hub);
    let r = replicate(&t.spoke, "up");
    assert_eq!(r["feeds"][0]["converged"], true, "{r}");
    assert_eq!(r["peer"], "hub", "{r}");
    assert_eq!(r["failover"], "", "{r}");
    assert_eq!(versions(&t.spoke, "demo"), ["1", "2", "3"]);
    assert!(t.spoke.ok(&["verify"]).contains(": ok"));
}

/// A relay whose copy is behind the hub is not taken as current: with the hub down and the
/// relay holding only an expired checkpoint, the run fails and says so for both upstreams.
#[test]
fn a_relay_with_stale_data_is_refused_after_the_hub() {
    let t = three(0, &|hub_token, relay_token| {
        format!("peer = [\"hub\", \"relay\"]\ntoken = \"{hub_token}\"\ntokens = {{ relay = \"{relay_token}\" }}\nfeeds = [\"demo\"]\nmode = \"pull\"\ninterval_secs = 0\nconnect_secs = 2\n")
    });
    // The hub's checkpoints live 3 s.
    config(&t.hub, t.hub_port, "");
    let text = std::fs::read_to_string(t.hub.data().join("cairn.toml")).unwrap();
    std::fs::write(
        t.hub.data().join("cairn.toml"),
        text.replace("[sync]\n", "[sync]\ncheckpoint_ttl_secs = 3\n"),
    )
    .unwrap();
    push(&t.hub, 1);
    let hub_server = Server::start(&t.hub);
    let _relay_server = Server::start(&t.relay);
    assert_eq!(replicate(&t.relay, "up")["feeds"][0]["converged"], true);
    drop(hub_server);
    std::thread::sleep(Duration::from_secs(4));
    let r = replicate(&t.spoke, "up");
    assert_eq!(r["peer"], "relay", "{r}");
    let feed_error = r["feeds"][0]["error"].as_str().unwrap_or("");
    assert!(feed_error.contains("expired"), "{r}");
    assert!(r["failover"].as_str().unwrap().starts_with("hub: "), "{r}");
    assert!(versions(&t.spoke, "demo").is_empty());
    let _ = t.relay_port;
}

/// Spokes that poll once an hour still take a publish within a second or two: the hub tells
/// its connected downstreams, directly and through a relay that passes the news on once it
/// holds the hub's checkpoint of the new state.
#[test]
fn a_publish_reaches_notified_spokes_directly_and_through_a_relay() {
    let t = three(3600, &|_, relay_token| {
        format!("peer = \"relay\"\ntoken = \"{relay_token}\"\nfeeds = [\"demo\"]\nmode = \"pull\"\ninterval_secs = 3600\n")
    });
    // A second spoke pulls from the hub directly.
    let direct = Instance::new();
    direct.ok(&["feed", "create", "demo", "--type", "raw"]);
    add_peer(&t.hub, "direct", &direct, 0);
    add_peer(&direct, "hub", &t.hub, t.hub_port);
    direct.ok(&["trust", "add", &key_of(&t.hub), "--feed", "demo"]);
    let hub_token = token(&t.hub, "replicate:demo");
    config(
        &direct,
        free_udp_port(),
        &format!("[[replication]]\nname = \"up\"\npeer = \"hub\"\ntoken = \"{hub_token}\"\nfeeds = [\"demo\"]\nmode = \"pull\"\ninterval_secs = 3600\n"),
    );
    push(&t.hub, 1);
    let _hub = Server::start(&t.hub);
    let _relay = Server::start(&t.relay);
    let _spoke = Server::start(&t.spoke);
    let _direct = Server::start(&direct);
    // The first scheduled runs (at start) take version 1; the relay may come up after the
    // spoke's first run, so that one is nudged by hand once.
    assert!(wait_for_version(&direct, "1", Duration::from_secs(30)).is_some());
    assert!(wait_for_version(&t.relay, "1", Duration::from_secs(30)).is_some());
    if wait_for_version(&t.spoke, "1", Duration::from_secs(3)).is_none() {
        t.spoke.ok(&["replicate", "up"]);
    }
    assert!(wait_for_version(&t.spoke, "1", Duration::from_secs(30)).is_some());
    // From here on, only notifications can bring a publish within the test's time: the next
    // scheduled runs are an hour away.
    for v in 2..=4u64 {
        push(&t.hub, v);
        let d = wait_for_version(&direct, &v.to_string(), Duration::from_secs(20));
        let s = wait_for_version(&t.spoke, &v.to_string(), Duration::from_secs(20));
        assert!(
            d.is_some() && s.is_some(),
            "version {v}: direct {d:?}, via the relay {s:?}"
        );
        eprintln!("version {v}: direct {d:?}, via the relay {s:?}");
    }
    assert_eq!(t.spoke.root("demo")["root"], t.hub.root("demo")["root"]);
    assert_eq!(direct.root("demo")["root"], t.hub.root("demo")["root"]);
}

/// A replication with a transfer window that opens a few seconds from now waits for it, says
/// so in its status, and then runs.
#[test]
fn a_run_outside_its_transfer_window_waits_for_it() {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let opens = (now + 8) % 86_400;
    let closes = (now + 3600) % 86_400;
    let hms = |t: u64| format!("{:02}:{:02}:{:02}", t / 3600, t / 60 % 60, t % 60);
    let window = format!(
        "windows = [{{ from = \"{}\", to = \"{}\" }}]\n",
        hms(opens),
        hms(closes)
    );
    let t = three(0, &|hub_token, _| {
        format!("peer = \"hub\"\ntoken = \"{hub_token}\"\nfeeds = [\"demo\"]\nmode = \"pull\"\ninterval_secs = 3600\n{window}")
    });
    push(&t.hub, 1);
    let _hub = Server::start(&t.hub);
    let spoke = Server::start(&t.spoke);
    let admin = token(&t.spoke, "admin");
    std::thread::sleep(Duration::from_secs(2));
    let (status, text) = admin_get(&spoke.http, &admin, "/api/v1/replications");
    assert_eq!(status, 200, "{text}");
    let body: serde_json::Value =
        serde_json::from_str(text.split("\r\n\r\n").nth(1).unwrap_or("")).unwrap();
    assert_eq!(body[0]["state"], "waiting", "{body}");
    assert!(
        body[0]["reason"]
            .as_str()
            .unwrap()
            .contains("outside its transfer windows"),
        "{body}"
    );
    assert!(versions(&t.spoke, "demo").is_empty());
    let took = wait_for_version(&t.spoke, "1", Duration::from_secs(30));
    assert!(
        took.is_some(),
        "the run did not happen once its window opened"
    );
}

/// Two writers that mirror a feed once an hour still hold each other's writes within seconds:
/// the first tells the second, over the warm mirror connection, when the feed changes, so a
/// failover to the second loses nothing the first had written.
#[test]
fn a_second_writer_hears_of_the_first_ones_writes_at_once() {
    let (first, second) = (Instance::new(), Instance::new());
    let first_port = free_udp_port();
    for i in [&first, &second] {
        i.ok(&["feed", "create", "demo", "--type", "raw"]);
    }
    add_peer(&first, "second", &second, 0);
    add_peer(&second, "first", &first, first_port);
    first.ok(&["trust", "add", &key_of(&second), "--feed", "demo"]);
    second.ok(&["trust", "add", &key_of(&first), "--feed", "demo"]);
    let write_token = token(&first, "replicate-write:demo");
    config(&first, first_port, "");
    config(
        &second,
        free_udp_port(),
        &format!("[[replication]]\nname = \"mirror\"\npeer = \"first\"\ntoken = \"{write_token}\"\nfeeds = [\"demo\"]\nmode = \"mirror\"\ninterval_secs = 3600\n"),
    );
    push(&first, 1);
    let _first = Server::start(&first);
    let _second = Server::start(&second);
    // The run at start takes version 1; the next scheduled one is an hour away.
    if wait_for_version(&second, "1", Duration::from_secs(5)).is_none() {
        second.ok(&["replicate", "mirror"]);
    }
    assert!(wait_for_version(&second, "1", Duration::from_secs(30)).is_some());
    for v in 2..=3u64 {
        push(&first, v);
        let took = wait_for_version(&second, &v.to_string(), Duration::from_secs(20));
        assert!(
            took.is_some(),
            "version {v} did not reach the second writer"
        );
        eprintln!("version {v}: {took:?}");
    }
    assert_eq!(second.root("demo")["root"], first.root("demo")["root"]);
}
