//! The attack suite: hostile peers, upstreams and HTTP clients against real `cairn` processes.
//!
//! A hostile peer is built from `cairn_sync`'s own types and transport (a real QUIC
//! connection with a pinned key, frames made by hand); each attack asserts the refusal, and at
//! the end the attacked instance is checked to be unchanged: the same roots, the same blob
//! files, and an entry for each failed run in its replication log. TUF's attack list is the
//! checklist: arbitrary package, rollback, indefinite freeze, mix-and-match (withholding),
//! malicious mirror, endless data, slow retrieval, extraneous dependencies (content for feeds
//! not asked for), key compromise and rotation (in `cli` and the protocol tests).

use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use cairn_store::doc::{FileEntry, Manifest, PublicKey, PAYLOAD_VERSION};
use cairn_store::identity::Identity;
use cairn_store::{Hash, SignedDocument};
use cairn_sync::transport;
use cairn_sync::wire::{self, code, BlobRequest, FeedHello, Frame, FrameReader, Mode};

use crate::feeds::{http, raw_http};
use crate::util::{Instance, Server};

fn key_of(inst: &Instance) -> String {
    inst.ok(&["key", "show"]).trim().to_owned()
}

fn token(inst: &Instance, scopes: &[&str]) -> String {
    let mut args = vec!["token", "create"];
    for s in scopes {
        args.extend(["--scope", s]);
    }
    inst.ok(&args).trim().to_owned()
}

/// Peak resident memory of a process, in bytes.
fn peak_rss(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .unwrap_or(0)
        * 1024
}

/// What a hostile conversation got back.
#[derive(Debug, Default)]
struct Reply {
    frames: Vec<Frame>,
    /// Raw bytes of blob data received (pieces).
    pieces: usize,
}

impl Reply {
    fn error_code(&self) -> Option<u32> {
        self.frames.iter().find_map(|f| match f {
            Frame::Error { code, .. } => Some(*code),
            _ => None,
        })
    }

    fn refused(&self) -> Vec<(u32, String)> {
        self.frames
            .iter()
            .filter_map(|f| match f {
                Frame::HelloReply { feeds, .. } => Some(feeds),
                _ => None,
            })
            .flatten()
            .filter_map(|s| match s {
                wire::FeedStatus::Refused { code, reason } => Some((*code, reason.clone())),
                _ => None,
            })
            .collect()
    }
}

/// A peer the hub knows (its key is pinned there) that does whatever the test says.
struct Hostile {
    rt: tokio::runtime::Runtime,
    identity: Identity,
    addr: SocketAddr,
    hub_key: PublicKey,
}

impl Hostile {
    fn new(me: &Instance, addr: SocketAddr, hub_key: &str) -> Hostile {
        Hostile {
            rt: tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .unwrap(),
            identity: Identity::load(&me.data()).unwrap(),
            addr,
            hub_key: hub_key.parse().unwrap(),
        }
    }

    /// A new connection, one control stream, `bytes` written on it (and `uni` streams opened
    /// first, each with its bytes), then frames read until the stream ends or `wait` passes.
    fn converse(&self, bytes: Vec<u8>, uni: Vec<Vec<u8>>, wait: Duration) -> Reply {
        self.rt.block_on(async {
            let conn = transport::connect(
                &self.identity,
                self.addr,
                self.hub_key,
                &transport::TransportOptions::default(),
            )
            .await
            .expect("the hub accepts the pinned attacker");
            // Written in the background: a peer that does not read them holds the writers
            // back by flow control.
            for data in uni {
                let mut s = conn.open_uni().await.unwrap();
                tokio::spawn(async move {
                    let _ = s.write_all(&data).await;
                    let _ = s.finish();
                });
            }
            let (mut send, mut recv) = conn.open_bi().await.unwrap();
            let _ = send.write_all(&bytes).await;
            let mut reply = Reply::default();
            let mut reader = FrameReader::default();
            let mut buf = vec![0u8; 64 * 1024];
            let deadline = tokio::time::Instant::now() + wait;
            while let Ok(Ok(Some(n))) = tokio::time::timeout_at(deadline, recv.read(&mut buf)).await
            {
                reader.push(&buf[..n]);
                while let Ok(Some(f)) = reader.next_frame() {
                    if matches!(f, Frame::BlobPiece { .. }) {
                        reply.pieces += 1;
                    }
                    reply.frames.push(f);
                }
            }
            // Pieces travel on streams of their own.
            while let Ok(Ok(s)) =
                tokio::time::timeout(Duration::from_millis(200), conn.accept_uni()).await
            {
                let _ = s;
                reply.pieces += 1;
            }
            conn.close(0u32.into(), b"");
            reply
        })
    }
}

fn frames(list: &[Frame]) -> Vec<u8> {
    list.iter().flat_map(wire::encode).collect()
}

fn hello(token: &str, mode: Mode, feeds: &[&str], checkpoint: Option<Vec<u8>>) -> Frame {
    Frame::Hello {
        version: wire::PROTOCOL_VERSION,
        token: token.into(),
        mode,
        feeds: feeds
            .iter()
            .map(|f| FeedHello {
                feed: (*f).into(),
                // One entry claimed: a HELLO that holds nothing is answered `all`, with every
                // document at once, and these frames drive the reconciliation.
                root: [0; 32],
                count: 1,
                since: None,
                filter: None,
                checkpoint: checkpoint.clone(),
                collected: if mode == Mode::Mirror { u64::MAX } else { 0 },
            })
            .collect(),
        heads: vec![],
        notify: false,
        max_rate: 0,
    }
}

fn all_items(feed: &str) -> Frame {
    Frame::ItemList {
        feed: feed.into(),
        buckets: vec![0xff; 32],
        items: vec![],
        last: true,
    }
}

fn want(hash: Hash, size: u64) -> Frame {
    Frame::WantBlobs {
        blobs: vec![BlobRequest {
            hash: *hash.as_bytes(),
            size,
            groups: vec![(0, 1)],
        }],
    }
}

/// The hub's state that no attack may change: roots of its feeds and its blob files.
fn state(inst: &Instance) -> (serde_json::Value, serde_json::Value, String) {
    (
        inst.root("demo"),
        inst.root("@system"),
        crate::util::listing(&inst.data().join("blobs")),
    )
}

/// A hub with a raw feed (small files and one large) and a blocking assessment, a hostile
/// peer it knows, tokens to read and to write, and runs that stall after 3 s.
fn hub() -> (Instance, Instance, u16, [String; 3], (Hash, u64)) {
    let hub = Instance::new();
    let attacker = Instance::new();
    hub.ok(&["feed", "create", "demo", "--type", "raw"]);
    for i in 0..20u64 {
        let size = if i == 0 { 300_000 } else { 2_000 };
        hub.push(
            "demo",
            "f",
            &format!("p{i}"),
            "1",
            &crate::util::bytes(i, size),
        );
    }
    let large = Hash::of(&crate::util::bytes(0, 300_000));
    hub.block(
        r#"{"id": "GHSA-evil-0001", "modified": "2026-01-01T00:00:00Z",
            "affected": [{"package": {"ecosystem": "PyPI", "name": "p1"}, "versions": ["1"]}]}"#,
        &[],
    );
    hub.ok(&[
        "peer",
        "add",
        "attacker",
        "127.0.0.1:1",
        "--key",
        &key_of(&attacker),
    ]);
    let tokens = [
        token(&hub, &["replicate:demo", "replicate:system"]),
        token(&hub, &["replicate-write:demo"]),
        token(&hub, &["admin"]),
    ];
    let port = crate::util::free_udp_port();
    std::fs::write(
        hub.data().join("cairn.toml"),
        format!("[sync]\nlisten = \"127.0.0.1:{port}\"\nstall_secs = 3\n\n[http]\nlisten = \"127.0.0.1:0\"\n"),
    )
    .unwrap();
    (hub, attacker, port, tokens, (large, 300_000))
}

#[test]
fn a_hostile_peer_gets_nothing_past_the_hub() {
    let (hub, attacker, port, [read, write, admin], (large, size)) = hub();
    let before = state(&hub);
    let server = Server::start(&hub);
    let peer = Hostile::new(
        &attacker,
        format!("127.0.0.1:{port}").parse().unwrap(),
        &key_of(&hub),
    );
    let quick = Duration::from_secs(5);

    // Point 1: a blob request before HELLO, and after a refused HELLO.
    let r = peer.converse(frames(&[want(large, size)]), vec![], quick);
    assert_eq!(r.error_code(), Some(code::PROTOCOL), "{r:?}");
    assert_eq!(r.pieces, 0);
    let r = peer.converse(
        frames(&[
            hello("wrong", Mode::Pull, &["demo"], None),
            want(large, size),
        ]),
        vec![],
        quick,
    );
    assert_eq!(r.refused()[0].0, code::UNAUTHORIZED, "{r:?}");
    assert_eq!(r.error_code(), Some(code::UNAUTHORIZED), "{r:?}");
    assert_eq!(r.pieces, 0);
    // A refused feed named again: its manifests are not read.
    let r = peer.converse(
        frames(&[
            hello("", Mode::Pull, &["@system"], None),
            all_items("@system"),
        ]),
        vec![],
        quick,
    );
    assert_eq!(r.error_code(), Some(code::UNAUTHORIZED), "{r:?}");
    assert!(!r.frames.iter().any(|f| matches!(f, Frame::Diff { .. })));
    // A blob no document sent in the run names, with a valid token.
    let r = peer.converse(
        frames(&[hello(&read, Mode::Pull, &["demo"], None), want(large, size)]),
        vec![],
        quick,
    );
    assert_eq!(r.error_code(), Some(code::UNAUTHORIZED), "{r:?}");
    assert_eq!(r.pieces, 0);
    // A blob asked for twice after its manifest was sent.
    let r = peer.converse(
        frames(&[
            hello(&read, Mode::Pull, &["demo"], None),
            all_items("demo"),
            want(large, size),
            want(large, size),
        ]),
        vec![],
        quick,
    );
    assert!(
        r.frames.iter().any(|f| matches!(f, Frame::Diff { .. })),
        "{r:?}"
    );
    assert_eq!(r.error_code(), Some(code::UNAUTHORIZED), "{r:?}");
    assert!(r.pieces <= 1, "{r:?}");
    // A HELLO that holds nothing gets `all` and the documents at once; an item list after
    // it is out of turn.
    let mut empty = hello(&read, Mode::Pull, &["demo"], None);
    if let Frame::Hello { feeds, .. } = &mut empty {
        feeds[0].count = 0;
    }
    let r = peer.converse(frames(&[empty, all_items("demo")]), vec![], quick);
    assert!(
        r.frames.iter().any(|f| matches!(
            f,
            Frame::HelloReply { feeds, .. } if matches!(feeds[0], wire::FeedStatus::All { .. })
        )),
        "{r:?}"
    );
    assert!(
        r.frames.iter().any(|f| matches!(f, Frame::Diff { .. })),
        "{r:?}"
    );
    assert_eq!(r.error_code(), Some(code::PROTOCOL), "{r:?}");

    // Point 2: the read token every spoke holds used to push (an empty state would delete
    // every entry) or mirror with a claimed collected clock (dropping the assessment).
    let mine = cairn_store::Store::open(&attacker.data(), Default::default()).unwrap();
    mine.create_feed("demo", cairn_store::Ecosystem::Raw)
        .unwrap();
    let my_checkpoint = mine.sign_checkpoint("demo", 3600).unwrap().bytes().to_vec();
    drop(mine);
    for (mode, feed) in [(Mode::Push, "demo"), (Mode::Mirror, "@system")] {
        let r = peer.converse(
            frames(&[hello(&read, mode, &[feed], Some(my_checkpoint.clone()))]),
            vec![],
            quick,
        );
        assert_eq!(r.refused()[0].0, code::MODE_NOT_ALLOWED, "{mode:?}: {r:?}");
    }
    // A write token, but no checkpoint from a writer of the feed.
    for checkpoint in [None, Some(my_checkpoint.clone())] {
        let r = peer.converse(
            frames(&[
                hello(&write, Mode::Push, &["demo"], checkpoint),
                all_items("demo"),
            ]),
            vec![],
            quick,
        );
        assert_eq!(r.refused()[0].0, code::BAD_DATA, "{r:?}");
        assert_eq!(r.error_code(), Some(code::UNAUTHORIZED), "{r:?}");
    }

    // Point 4 and malformed input: an oversized frame, a HELLO naming a feed twice, too many
    // feeds, another protocol version.
    let mut oversized = ((wire::MAX_FRAME + 1) as u32).to_be_bytes().to_vec();
    oversized.extend_from_slice(&[0; 64]);
    let r = peer.converse(oversized, vec![], quick);
    assert!(
        r.frames.is_empty() || r.error_code() == Some(code::PROTOCOL),
        "{r:?}"
    );
    let many: Vec<String> = (0..1100).map(|i| format!("f{i}")).collect();
    let many: Vec<&str> = many.iter().map(String::as_str).collect();
    for bad in [
        hello(&read, Mode::Pull, &["demo", "demo"], None),
        hello(&read, Mode::Pull, &many, None),
    ] {
        let r = peer.converse(frames(&[bad]), vec![], quick);
        assert_eq!(r.error_code(), Some(code::PROTOCOL), "{r:?}");
    }
    let mut old = hello(&read, Mode::Pull, &["demo"], None);
    if let Frame::Hello { version, .. } = &mut old {
        *version = 1;
    }
    assert_eq!(
        peer.converse(frames(&[old]), vec![], quick).error_code(),
        Some(code::VERSION)
    );

    // A frame whose documents inflate a thousandfold (8 MiB of zeros packed into 8 KiB) is
    // malformed: the hub stops inflating at 16 times the packed size and ends the run.
    let bomb = {
        use std::io::Write;
        let mut z = flate2::write::DeflateEncoder::new(Vec::new(), flate2::Compression::best());
        z.write_all(&vec![0u8; 8 << 20]).unwrap();
        z.finish().unwrap()
    };
    assert!(bomb.len() * wire::MAX_DOCS_INFLATION < 8 << 20);
    let docs = ciborium::Value::Map(vec![(
        "docs".into(),
        ciborium::Value::Map(vec![
            ("feed".into(), "demo".into()),
            ("docs".into(), ciborium::Value::Bytes(bomb)),
            ("last".into(), true.into()),
            ("seq".into(), 0.into()),
        ]),
    )]);
    let mut body = Vec::new();
    ciborium::ser::into_writer(&docs, &mut body).unwrap();
    let mut bytes = frames(&[hello(&read, Mode::Pull, &["demo"], None)]);
    bytes.extend_from_slice(&(body.len() as u32).to_be_bytes());
    bytes.extend_from_slice(&body);
    // As with the oversized frame, the connection may close before an ERROR frame gets out;
    // the replication log's reason (checked below) says which limit it met.
    let r = peer.converse(bytes, vec![], quick);
    assert!(
        r.frames.is_empty() || r.error_code() == Some(code::PROTOCOL),
        "{r:?}"
    );
    assert!(
        !r.frames.iter().any(|f| matches!(f, Frame::Diff { .. })),
        "{r:?}"
    );

    // Point 8: bulk streams opened before HELLO are not read (the connection takes 1 MiB
    // before a run); a peer that says HELLO and then nothing is dropped once the stall window
    // passes.
    let rss_before = peak_rss(server.child.id());
    let uni: Vec<Vec<u8>> = (0..64).map(|_| vec![0x11; 1 << 20]).collect();
    let r = peer.converse(vec![], uni, Duration::from_secs(3));
    assert!(r.frames.is_empty(), "{r:?}");
    let grew = peak_rss(server.child.id()).saturating_sub(rss_before);
    assert!(
        grew < 32 << 20,
        "64 unread streams grew the hub by {} MiB",
        grew >> 20
    );
    let started = Instant::now();
    let r = peer.converse(
        frames(&[hello(&read, Mode::Pull, &["demo"], None)]),
        vec![],
        Duration::from_secs(30),
    );
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "the silent run was not ended: {:?}",
        started.elapsed()
    );
    assert!(
        r.frames
            .iter()
            .any(|f| matches!(f, Frame::HelloReply { .. })),
        "{r:?}"
    );

    // The hub still serves an honest peer, and logged each failed run with its reason.
    let r = peer.converse(
        frames(&[hello(&read, Mode::Pull, &["demo"], None), all_items("demo")]),
        vec![],
        quick,
    );
    assert!(
        r.frames.iter().any(|f| matches!(f, Frame::Diff { .. })),
        "{r:?}"
    );
    let (status, log) = crate::feeds::admin_get(&server.http, &admin, "/api/v1/replication-log");
    assert_eq!(status, 200, "{log}");
    for reason in [
        "before HELLO",
        "refused in this run",
        "no document sent",
        "stalled",
        "inflate past",
    ] {
        assert!(log.contains(reason), "no log entry says `{reason}`: {log}");
    }
    let rss = peak_rss(server.child.id());
    eprintln!("hub peak RSS under the hostile peer: {} MiB", rss >> 20);
    assert!(rss < 400 << 20, "hub peak RSS {} MiB", rss >> 20);
    server.stop();
    assert_eq!(state(&hub), before, "an attack changed the hub");
    assert!(hub.ok(&["verify"]).contains(": ok"));
}

/// A hostile upstream: a QUIC endpoint with `me`'s key that accepts `spoke` and runs
/// `behave` on each control stream it opens (reading HELLO first).
fn hostile_upstream(
    me: &Instance,
    spoke_key: &str,
    behave: impl Fn(Frame) -> Vec<(Duration, Vec<u8>)> + Send + Sync + 'static,
) -> (SocketAddr, std::thread::JoinHandle<()>) {
    let (rt, endpoint) = hostile_endpoint(me, spoke_key);
    let addr = endpoint.local_addr().unwrap();
    let behave = std::sync::Arc::new(behave);
    let thread = std::thread::spawn(move || {
        rt.block_on(async move {
            // Serve for a bounded time, then stop by itself.
            let _ = tokio::time::timeout(Duration::from_secs(60), async {
                while let Some(incoming) = endpoint.accept().await {
                    let behave = behave.clone();
                    tokio::spawn(async move {
                        let Ok(conn) = incoming.await else { return };
                        while let Ok((mut send, mut recv)) = conn.accept_bi().await {
                            let mut reader = FrameReader::default();
                            let mut buf = vec![0u8; 4096];
                            let first = loop {
                                match recv.read(&mut buf).await {
                                    Ok(Some(n)) => reader.push(&buf[..n]),
                                    _ => return,
                                }
                                if let Ok(Some(f)) = reader.next_frame() {
                                    break f;
                                }
                            };
                            for (pause, bytes) in behave(first) {
                                tokio::time::sleep(pause).await;
                                if send.write_all(&bytes).await.is_err() {
                                    return;
                                }
                            }
                            let _ = tokio::time::timeout(Duration::from_secs(20), async {
                                while let Ok(Some(_)) = recv.read(&mut buf).await {}
                            })
                            .await;
                        }
                    });
                }
            })
            .await;
        })
    });
    (addr, thread)
}

/// A QUIC endpoint on loopback with `me`'s key that accepts only `spoke`, and the runtime
/// that drives it.
fn hostile_endpoint(me: &Instance, spoke_key: &str) -> (tokio::runtime::Runtime, quinn::Endpoint) {
    let identity = Identity::load(&me.data()).unwrap();
    let spoke: PublicKey = spoke_key.parse().unwrap();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let endpoint = rt
        .block_on(async {
            transport::server(
                "127.0.0.1:0".parse().unwrap(),
                &identity,
                std::sync::Arc::new(move |k: &PublicKey| *k == spoke),
                &transport::TransportOptions::default(),
            )
        })
        .unwrap();
    (rt, endpoint)
}

/// An upstream that answers a spoke's connection by pushing bulk streams at it before saying
/// anything (endless data before HELLO-REPLY): the spoke reads none of them, and the upstream
/// gets no more onto the wire than the credit the spoke granted at the handshake,
/// [`transport::INITIAL_RECEIVE_WINDOW`] (it took 8.2 MiB of the 64 it tried to send); the
/// run ends as stalled, storing nothing.
#[test]
fn an_upstream_cannot_push_more_than_the_initial_credit_before_its_reply() {
    let relay = Instance::new();
    let spoke = Instance::new();
    let (rt, endpoint) = hostile_endpoint(&relay, &key_of(&spoke));
    let addr = endpoint.local_addr().unwrap();
    let flood = std::thread::spawn(move || {
        rt.block_on(async move {
            let Ok(Some(incoming)) =
                tokio::time::timeout(Duration::from_secs(30), endpoint.accept()).await
            else {
                return 0u64;
            };
            let Ok(conn) = incoming.await else { return 0 };
            // Wait for the spoke's HELLO to open the control stream, then flood, for at most
            // 4 s: 64 streams of 1 MiB, as much of each as the spoke's credit lets through.
            let Ok(Ok((_send, _recv))) =
                tokio::time::timeout(Duration::from_secs(10), conn.accept_bi()).await
            else {
                return 0;
            };
            let chunk = vec![0x11u8; 64 << 10];
            let before = conn.stats().udp_tx.bytes;
            let _ = tokio::time::timeout(Duration::from_secs(4), async {
                for _ in 0..64 {
                    let Ok(mut uni) = conn.open_uni().await else {
                        return;
                    };
                    for _ in 0..16 {
                        if uni.write_all(&chunk).await.is_err() {
                            return;
                        }
                    }
                }
            })
            .await;
            // quinn takes writes into its send buffer (64 MiB here) whatever the peer's
            // credit; what went on the wire is what the credit let through.
            conn.stats().udp_tx.bytes - before
        })
    });
    pull_from(&spoke, &key_of(&relay), addr, &key_of(&relay));
    let r = replicate(&spoke);
    assert!(!run_error(&r).is_empty(), "{r}");
    let sent = flood.join().unwrap();
    eprintln!(
        "the upstream got {} KiB onto the wire; the spoke: {}",
        sent >> 10,
        run_error(&r)
    );
    assert!(sent > 1 << 20, "the flood did not start: {sent} bytes sent");
    assert!(
        sent < 2 * transport::INITIAL_RECEIVE_WINDOW,
        "an upstream pushed {} MiB before HELLO-REPLY",
        sent >> 20
    );
    assert_eq!(spoke.root("demo")["count"], 0);
    assert!(spoke.ok(&["verify"]).contains(": ok"));
}

/// Makes `spoke` pull `demo` from the peer `up` at `addr` (pinned to `upstream_key`),
/// trusting `trusted`, with runs that stall after 3 s.
fn pull_from(spoke: &Instance, upstream_key: &str, addr: SocketAddr, trusted: &str) {
    spoke.ok(&["feed", "create", "demo", "--type", "raw"]);
    spoke.ok(&["trust", "add", trusted]);
    spoke.ok(&[
        "peer",
        "add",
        "up",
        &addr.to_string(),
        "--key",
        upstream_key,
    ]);
    std::fs::write(
        spoke.data().join("cairn.toml"),
        "[sync]\nstall_secs = 3\n\n[[replication]]\nname = \"pull\"\npeer = \"up\"\nfeeds = [\"demo\"]\nmode = \"pull\"\ninterval_secs = 0\n",
    )
    .unwrap();
}

fn replicate(inst: &Instance) -> serde_json::Value {
    let out = inst.run(&["replicate", "pull", "--json"]);
    serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|_| panic!("{}", inst.report(&["replicate", "pull", "--json"], &out)))
}

fn run_error(r: &serde_json::Value) -> String {
    r["error"]
        .as_str()
        .or(r["feeds"][0]["error"].as_str())
        .unwrap_or("")
        .to_owned()
}

#[test]
fn a_spoke_gives_up_on_a_silent_or_trickling_upstream_and_on_forged_content() {
    let relay = Instance::new();
    let hub = Instance::new();
    let spoke = Instance::new();
    let spoke_key = key_of(&spoke);
    // Slow retrieval: HELLO-REPLY's first bytes, then one byte a second.
    let trickle = |_first: Frame| {
        let mut steps = vec![(Duration::ZERO, vec![0, 0, 1, 0])];
        for _ in 0..15 {
            steps.push((Duration::from_secs(1), vec![0xa1]));
        }
        steps
    };
    let (addr, _t) = hostile_upstream(&relay, &spoke_key, trickle);
    pull_from(&spoke, &key_of(&relay), addr, &key_of(&hub));
    let started = Instant::now();
    let r = replicate(&spoke);
    let err = run_error(&r);
    assert!(err.contains("stalled"), "{r}");
    assert!(
        started.elapsed() < Duration::from_secs(15),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(spoke.root("demo")["count"], 0);

    // Arbitrary package and extraneous content: an upstream answers with a manifest signed
    // by its own key (not trusted by the spoke), or with documents of another feed.
    let relay_store_dir = relay.data();
    let forged = {
        let id = Identity::load(&relay_store_dir).unwrap();
        SignedDocument::sign(
            &Manifest {
                v: PAYLOAD_VERSION,
                feed: "demo".into(),
                ecosystem: cairn_store::Ecosystem::Raw,
                name: "evil".into(),
                version: "1".into(),
                files: vec![FileEntry {
                    name: "evil".into(),
                    blob: Hash::of(b"evil"),
                    size: 4,
                    digests: Default::default(),
                }],
                metadata: Default::default(),
                hlc: 1,
            },
            id.signing_key(),
        )
        .unwrap()
        .bytes()
        .to_vec()
    };
    for (what, reply) in [
        (
            "forged",
            Frame::HelloReply {
                feeds: vec![wire::FeedStatus::Log {
                    root: [1; 32],
                    count: 1,
                    cursor: wire::WireCursor { epoch: 1, seq: 1 },
                    changes: vec![wire::WireChange {
                        key: "evil/1".into(),
                        doc: Some(forged.clone()),
                    }],
                    checkpoint: None,
                }],
                log: None,
            },
        ),
        (
            "extraneous",
            Frame::Docs {
                feed: "other".into(),
                docs: vec![serde_bytes::ByteBuf::from(forged.clone())],
                blobs: vec![],
                last: true,
                seq: 0,
            },
        ),
    ] {
        let reply = std::sync::Arc::new(wire::encode(&reply));
        let (addr, _t) = hostile_upstream(&relay, &spoke_key, move |_| {
            vec![(Duration::ZERO, reply.to_vec())]
        });
        spoke.ok(&[
            "peer",
            "add",
            "up",
            &addr.to_string(),
            "--key",
            &key_of(&relay),
        ]);
        let r = replicate(&spoke);
        assert_ne!(r["feeds"][0]["converged"], true, "{what}: {r}");
        assert!(!run_error(&r).is_empty(), "{what}: {r}");
        assert_eq!(spoke.root("demo")["count"], 0, "{what}");
        assert!(
            !spoke.data().join("partial").exists()
                || crate::util::listing(&spoke.data().join("partial")).is_empty()
        );
    }
    assert!(spoke.ok(&["verify"]).contains(": ok"));
}

/// A hub, a relay that pulls from it, and a spoke that pulls from the relay trusting only the
/// hub: the relay passes the hub's checkpoint on and signs nothing. Then the attacks a relay
/// or an old copy of the hub can make: rollback, freeze, its own signature.
#[test]
fn a_relay_passes_the_hubs_checkpoint_and_cannot_roll_back_freeze_or_sign() {
    let hub = Instance::new();
    let relay = Instance::new();
    let spoke = Instance::new();
    let (hub_port, relay_port) = (crate::util::free_udp_port(), crate::util::free_udp_port());
    for i in [&hub, &relay, &spoke] {
        i.ok(&["feed", "create", "demo", "--type", "raw"]);
    }
    let push = |n: u64| {
        hub.push(
            "demo",
            "f",
            "p",
            &n.to_string(),
            &crate::util::bytes(n, 30_000),
        )
    };
    push(1);
    let hub_token = token(&hub, &["replicate:demo"]);
    let relay_token = token(&relay, &["replicate:demo"]);
    hub.ok(&[
        "peer",
        "add",
        "relay",
        "127.0.0.1:1",
        "--key",
        &key_of(&relay),
    ]);
    relay.ok(&["trust", "add", &key_of(&hub)]);
    relay.ok(&[
        "peer",
        "add",
        "hub",
        &format!("127.0.0.1:{hub_port}"),
        "--key",
        &key_of(&hub),
    ]);
    relay.ok(&[
        "peer",
        "add",
        "spoke",
        "127.0.0.1:1",
        "--key",
        &key_of(&spoke),
    ]);
    spoke.ok(&["trust", "add", &key_of(&hub), "--feed", "demo"]);
    spoke.ok(&[
        "peer",
        "add",
        "up",
        &format!("127.0.0.1:{relay_port}"),
        "--key",
        &key_of(&relay),
    ]);
    // The hub's checkpoints live 4 s: a site cut off longer than that must not serve its copy
    // as current.
    std::fs::write(
        hub.data().join("cairn.toml"),
        format!("[sync]\nlisten = \"127.0.0.1:{hub_port}\"\ncheckpoint_ttl_secs = 4\n\n[http]\nlisten = \"127.0.0.1:0\"\n"),
    )
    .unwrap();
    std::fs::write(
        relay.data().join("cairn.toml"),
        format!(
            "[sync]\nlisten = \"127.0.0.1:{relay_port}\"\n\n[http]\nlisten = \"127.0.0.1:0\"\n\n{}",
            crate::util::pull_section("hub", &hub_token, "demo")
        ),
    )
    .unwrap();
    std::fs::write(
        spoke.data().join("cairn.toml"),
        crate::util::pull_section("up", &relay_token, "demo"),
    )
    .unwrap();
    let hub_root = hub.root("demo");
    let hub_server = Server::start(&hub);
    assert_eq!(replicate(&relay)["feeds"][0]["converged"], true);
    let relay_server = Server::start(&relay);
    let r = replicate(&spoke);
    assert_eq!(r["feeds"][0]["converged"], true, "{r}");
    assert_eq!(spoke.root("demo")["root"], hub_root["root"]);

    // Rollback: the hub moves on; then an old copy of the relay serves the old state.
    relay_server.stop();
    let (old_relay, current_relay) = (relay.path("old"), relay.path("current"));
    copy_dir(&relay.data(), &old_relay);
    let relay_server = Server::start(&relay);
    hub_server.stop();
    push(2);
    let hub_server = Server::start(&hub);
    let r = replicate(&relay);
    assert_eq!(r["feeds"][0]["converged"], true, "{r}");
    let r = replicate(&spoke);
    assert_eq!(r["feeds"][0]["converged"], true, "{r}");
    let current = spoke.root("demo");
    relay_server.stop();
    copy_dir(&relay.data(), &current_relay);
    replace_dir(&relay.data(), &old_relay);
    let relay_server = Server::start(&relay);
    let r = replicate(&spoke);
    assert!(run_error(&r).contains("rollback"), "{r}");
    assert_eq!(spoke.root("demo"), current);

    // Freeze: the relay cannot reach the hub any more; once the hub's checkpoint it holds
    // expires, the spoke refuses it rather than take the relay's copy as current.
    relay_server.stop();
    hub_server.stop();
    replace_dir(&relay.data(), &current_relay);
    let relay_server = Server::start(&relay);
    std::thread::sleep(Duration::from_secs(5));
    let r = replicate(&spoke);
    assert!(run_error(&r).contains("expired"), "{r}");
    assert_eq!(spoke.root("demo"), current);

    // A relay whose copy is no writer's state signs its own checkpoint, which the spoke does
    // not trust.
    relay_server.stop();
    relay.push("demo", "f", "own", "1", b"relay's own");
    let _relay_server = Server::start(&relay);
    let r = replicate(&spoke);
    assert!(run_error(&r).contains("not trusted"), "{r}");
    assert_eq!(spoke.root("demo"), current);
    assert!(spoke.ok(&["verify"]).contains(": ok"));
}

fn replace_dir(dir: &Path, with: &Path) {
    std::fs::remove_dir_all(dir).unwrap();
    copy_dir(with, dir);
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        let target = to.join(e.file_name());
        if e.file_type().unwrap().is_dir() {
            copy_dir(&e.path(), &target);
        } else if e.file_name() != "LOCK" && e.file_name() != "control.sock" {
            std::fs::copy(e.path(), target).unwrap();
        }
    }
}

// ---------------------------------------------------------------------------------------------
// HTTP

/// A ustar header block for `name` of `size` bytes and type `kind`.
fn tar_header(name: &str, size: u64, kind: u8) -> Vec<u8> {
    let mut h = vec![0u8; 512];
    h[..name.len()].copy_from_slice(name.as_bytes());
    h[100..107].copy_from_slice(b"0000644");
    h[108..115].copy_from_slice(b"0000000");
    h[116..123].copy_from_slice(b"0000000");
    h[124..135].copy_from_slice(format!("{size:011o}").as_bytes());
    h[136..147].copy_from_slice(b"00000000000");
    h[156] = kind;
    h[257..263].copy_from_slice(b"ustar\0");
    h[263..265].copy_from_slice(b"00");
    h[148..156].copy_from_slice(b"        ");
    let sum: u32 = h.iter().map(|&b| u32::from(b)).sum();
    h[148..155].copy_from_slice(format!("{sum:06o}\0").as_bytes());
    h
}

/// A .crate whose first entry declares `size` bytes of `kind` (a GNU long name `L`, or a
/// plain file `0`) filled with zeros: a few MB of gzip, gigabytes unpacked.
fn bomb(size: u64, kind: u8) -> Vec<u8> {
    use std::io::Write;
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    gz.write_all(&tar_header("././@LongLink", size, kind))
        .unwrap();
    let zeros = vec![0u8; 1 << 20];
    let mut left = size.div_ceil(512) * 512;
    while left > 0 {
        let n = left.min(zeros.len() as u64) as usize;
        gz.write_all(&zeros[..n]).unwrap();
        left -= n as u64;
    }
    let toml = b"[package]\nname = \"bomb\"\nversion = \"1.0.0\"\n";
    gz.write_all(&tar_header(
        "bomb-1.0.0/Cargo.toml",
        toml.len() as u64,
        b'0',
    ))
    .unwrap();
    let mut padded = toml.to_vec();
    padded.resize(512, 0);
    gz.write_all(&padded).unwrap();
    gz.write_all(&[0u8; 1024]).unwrap();
    gz.finish().unwrap()
}

fn publish_body(krate: &[u8]) -> Vec<u8> {
    let json = br#"{"name":"bomb","vers":"1.0.0","deps":[],"features":{}}"#;
    [
        &(json.len() as u32).to_le_bytes()[..],
        json,
        &(krate.len() as u32).to_le_bytes()[..],
        krate,
    ]
    .concat()
}

#[test]
fn a_decompression_bomb_is_refused_in_bounded_memory() {
    let inst = Instance::new();
    inst.ok(&["feed", "create", "crates", "--type", "cargo"]);
    let token = token(&inst, &["publish:crates"]);
    std::fs::write(
        inst.data().join("cairn.toml"),
        "[sync]\nlisten = \"127.0.0.1:0\"\n\n[http]\nlisten = \"127.0.0.1:0\"\nmax_upload_mib = 16\n",
    )
    .unwrap();
    let server = Server::start(&inst);
    for (what, krate, says) in [
        ("a 1 GiB long name", bomb(1 << 30, b'L'), "extension header"),
        (
            "2 GiB of zeros before the metadata",
            bomb(2 << 30, b'0'),
            "decompressed",
        ),
    ] {
        let body = publish_body(&krate);
        let started = Instant::now();
        let (status, text) = raw_http(
            &server.http,
            &format!("PUT /feeds/crates/api/v1/crates/new HTTP/1.1\r\nHost: HOST\r\nAuthorization: {token}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n", body.len()),
            &body,
        );
        assert_eq!(status, 400, "{what}: {text}");
        assert!(text.contains(says), "{what}: {text}");
        eprintln!(
            "{what}: {} KiB uploaded, refused in {:?}",
            krate.len() >> 10,
            started.elapsed()
        );
    }
    let rss = peak_rss(server.child.id());
    eprintln!("server peak RSS: {} MiB", rss >> 20);
    assert!(rss < 300 << 20, "peak RSS {} MiB", rss >> 20);
    server.stop();
    assert_eq!(inst.root("crates")["count"], 0);
}

#[test]
fn six_hundred_stalled_downloads_leave_the_server_responsive() {
    use std::io::{Read, Write};
    let inst = Instance::new();
    inst.ok(&["feed", "create", "files", "--type", "raw"]);
    // Larger than the verified cache keeps: streamed at first, then sent from its file once
    // one download verified it, never by a thread waiting on a client.
    inst.push("files", "big", "big", "1", &crate::util::bytes(9, 24 << 20));
    std::fs::write(
        inst.data().join("cairn.toml"),
        "[sync]\nlisten = \"127.0.0.1:0\"\n\n[http]\nlisten = \"127.0.0.1:0\"\n",
    )
    .unwrap();
    let server = Server::start(&inst);
    let host = server.http.trim_start_matches("http://").to_owned();
    let mut stalled = Vec::new();
    for _ in 0..600 {
        let mut s = std::net::TcpStream::connect(&host).unwrap();
        s.write_all(
            format!("GET /feeds/files/big/1/big HTTP/1.1\r\nHost: {host}\r\n\r\n").as_bytes(),
        )
        .unwrap();
        stalled.push(s);
    }
    // Give the server time to fill every socket it can.
    std::thread::sleep(Duration::from_secs(2));
    let mut worst = Duration::ZERO;
    for _ in 0..10 {
        let started = Instant::now();
        let (status, body) = http(
            &server.http,
            "GET /healthz HTTP/1.1\r\nHost: HOST\r\nConnection: close\r\n\r\n",
        );
        worst = worst.max(started.elapsed());
        assert_eq!(status, 200, "{body}");
    }
    eprintln!("/healthz with 600 stalled downloads: slowest of 10 in {worst:?}");
    assert!(worst < Duration::from_millis(100), "{worst:?}");
    // A download still completes whole.
    let mut s = std::net::TcpStream::connect(&host).unwrap();
    s.write_all(
        format!("GET /feeds/files/big/1/big HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n")
            .as_bytes(),
    )
    .unwrap();
    let mut got = Vec::new();
    s.read_to_end(&mut got).unwrap();
    assert!(got.len() > 24 << 20);
    drop(stalled);
}

#[test]
fn http_attacks_are_refused_and_change_nothing() {
    let inst = Instance::new();
    inst.ok(&["feed", "create", "files", "--type", "raw"]);
    inst.ok(&["feed", "create", "npm", "--type", "npm"]);
    let token = token(&inst, &["publish:files", "publish:npm"]);
    let data = crate::util::bytes(3, 200_000);
    inst.push("files", "big", "t", "1", &data);
    std::fs::write(
        inst.data().join("cairn.toml"),
        "[sync]\nlisten = \"127.0.0.1:0\"\n\n[http]\nlisten = \"127.0.0.1:0\"\nmax_upload_mib = 1\n",
    )
    .unwrap();
    let before = crate::util::listing(&inst.data().join("blobs"));
    let server = Server::start(&inst);
    let auth = format!("Authorization: Bearer {token}\r\n");
    // Traversal, plain and encoded.
    for path in [
        "/feeds/files/../x",
        "/feeds/files/t/%2e%2e/x",
        "/feeds/files/t/1/..%2f..%2fetc",
    ] {
        let (status, text) = raw_http(
            &server.http,
            &format!("PUT {path} HTTP/1.1\r\nHost: HOST\r\n{auth}Content-Length: 3\r\nConnection: close\r\n\r\n"),
            b"abc",
        );
        assert!(status == 400 || status == 404, "{path}: {status} {text}");
    }
    // Over the upload limit, and cut short.
    let big = vec![7u8; 2 << 20];
    let (status, _) = raw_http(
        &server.http,
        &format!("PUT /feeds/files/x/1/x HTTP/1.1\r\nHost: HOST\r\n{auth}Content-Length: {}\r\nConnection: close\r\n\r\n", big.len()),
        &big,
    );
    assert_eq!(status, 413);
    {
        use std::io::Write;
        let host = server.http.trim_start_matches("http://");
        let mut s = std::net::TcpStream::connect(host).unwrap();
        s.write_all(format!("PUT /feeds/files/y/1/y HTTP/1.1\r\nHost: {host}\r\n{auth}Content-Length: 100000\r\n\r\n").as_bytes()).unwrap();
        s.write_all(&[1u8; 50_000]).unwrap();
    }
    // An npm tarball whose declared integrity is wrong.
    let (status, text) = raw_http(
        &server.http,
        &format!("PUT /feeds/npm/evil HTTP/1.1\r\nHost: HOST\r\n{auth}Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n", NPM_BAD.len()),
        NPM_BAD.as_bytes(),
    );
    assert_eq!(status, 400, "{text}");
    // A Host header that is not a host: refused, not reflected.
    let (status, _) = http(
        &server.http,
        "GET /feeds/npm/evil HTTP/1.1\r\nHost: a\"b<c>\r\nConnection: close\r\n\r\n",
    );
    assert_eq!(status, 400);
    // The last byte: read from its own chunk group, even when the first group is damaged.
    let blob = crate::util::listing(&inst.data().join("blobs"))
        .lines()
        .map(|l| l.rsplit_once(' ').unwrap().0.to_owned())
        .find(|p| !p.ends_with(".obao"))
        .unwrap();
    let original = std::fs::read(&blob).unwrap();
    let mut damaged = original.clone();
    damaged[5] ^= 1;
    std::fs::write(&blob, &damaged).unwrap();
    let (status, body) = crate::feeds::http_bytes(
        &server.http,
        "GET /feeds/files/t/1/big HTTP/1.1\r\nHost: HOST\r\nRange: bytes=-1\r\nConnection: close\r\n\r\n",
        b"",
    );
    assert_eq!(status, 206);
    assert_eq!(body, data[data.len() - 1..]);
    std::fs::write(&blob, &original).unwrap();
    server.stop();
    std::thread::sleep(Duration::from_millis(100));
    assert_eq!(crate::util::listing(&inst.data().join("blobs")), before);
    assert_eq!(inst.root("files")["count"], 1);
    assert_eq!(inst.root("npm")["count"], 0);
    assert!(inst.ok(&["verify"]).contains(": ok"));
}

/// A blob file changed under a running server after downloads verified it (and had it sent
/// from the file without a copy) is noticed at the next download and refused, however it was
/// changed: in place with its modification time set back, replaced by another file, or
/// deleted while the server keeps it open.
#[test]
fn a_blob_changed_on_disk_under_a_running_server_is_refused() {
    use std::os::unix::fs::FileExt;
    let inst = Instance::new();
    inst.ok(&["feed", "create", "files", "--type", "raw"]);
    let data = crate::util::bytes(5, 300_000);
    inst.push("files", "big", "t", "1", &data);
    std::fs::write(
        inst.data().join("cairn.toml"),
        "[sync]\nlisten = \"127.0.0.1:0\"\n\n[http]\nlisten = \"127.0.0.1:0\"\n",
    )
    .unwrap();
    let blob = crate::util::listing(&inst.data().join("blobs"))
        .lines()
        .map(|l| l.rsplit_once(' ').unwrap().0.to_owned())
        .find(|p| !p.ends_with(".obao"))
        .unwrap();
    let server = Server::start(&inst);
    let get = || {
        crate::feeds::http_bytes(
            &server.http,
            "GET /feeds/files/t/1/big HTTP/1.1\r\nHost: HOST\r\nConnection: close\r\n\r\n",
            b"",
        )
    };
    // Verified by the first download, sent from the file by the next ones.
    for _ in 0..3 {
        assert_eq!(get(), (200, data.clone()));
    }
    // One byte changed in place, the modification time put back.
    let original = std::fs::read(&blob).unwrap();
    let modified = std::fs::metadata(&blob).unwrap().modified().unwrap();
    let f = std::fs::OpenOptions::new().write(true).open(&blob).unwrap();
    f.write_all_at(&[original[250_000] ^ 1], 250_000).unwrap();
    f.set_modified(modified).unwrap();
    drop(f);
    let (status, body) = get();
    assert_eq!(status, 500);
    assert!(String::from_utf8_lossy(&body).contains("failed verification"));
    // Put right: served again, after a new verification.
    std::fs::write(&blob, &original).unwrap();
    assert_eq!(get(), (200, data.clone()));
    // Replaced by another file of the same size.
    let mut other = original.clone();
    other[10] ^= 1;
    let tmp = format!("{blob}.new");
    std::fs::write(&tmp, &other).unwrap();
    std::fs::rename(&tmp, &blob).unwrap();
    let (status, body) = get();
    assert_eq!(status, 500);
    assert!(String::from_utf8_lossy(&body).contains("failed verification"));
    std::fs::write(&blob, &original).unwrap();
    assert_eq!(get(), (200, data.clone()));
    // Deleted while the server keeps it open from the downloads before (an unlink moves the
    // open file's change time too): nothing is sent from the descriptor it still holds.
    assert_eq!(get(), (200, data));
    std::fs::remove_file(&blob).unwrap();
    let (status, _) = get();
    assert_eq!(
        status, 500,
        "a deleted blob file was sent from a descriptor kept open"
    );
    server.stop();
}

/// `npm publish` of `evil@1.0.0` whose `dist.integrity` is not its tarball's.
const NPM_BAD: &str = r#"{"name":"evil","versions":{"1.0.0":{"name":"evil","version":"1.0.0","dist":{"integrity":"sha512-AAAA","shasum":"00"}}},"_attachments":{"evil-1.0.0.tgz":{"data":"H4sIAAAAAAAAA+3OMQ6AIBAF0d/ctkROyDEILYVKgbqX2x/fnvoYAAAAAAAAAAD+6QCHkVb8ACgAAA=="}}}"#;

/// Revocation on a running instance: withdrawn trust stops documents being served at once
/// (and `verify` reports them), a revoked token stops the next run, a removed peer is cut off.
#[test]
fn trust_token_and_peer_changes_take_effect_without_a_restart() {
    let hub = Instance::new();
    let spoke = Instance::new();
    for i in [&hub, &spoke] {
        i.ok(&["feed", "create", "files", "--type", "raw"]);
    }
    hub.push("files", "f", "p", "1", &crate::util::bytes(1, 40_000));
    let port = crate::util::free_udp_port();
    crate::util::peer_spoke_with_hub(&hub, &spoke, "spoke", port);
    let replicate_token = token(&hub, &["replicate:files"]);
    let (hub_admin, spoke_admin) = (token(&hub, &["admin"]), token(&spoke, &["admin"]));
    std::fs::write(
        hub.data().join("cairn.toml"),
        format!("[sync]\nlisten = \"127.0.0.1:{port}\"\n\n[http]\nlisten = \"127.0.0.1:0\"\n"),
    )
    .unwrap();
    std::fs::write(
        spoke.data().join("cairn.toml"),
        format!(
            "[sync]\nlisten = \"127.0.0.1:0\"\n\n[http]\nlisten = \"127.0.0.1:0\"\n\n{}",
            crate::util::pull_section("hub", &replicate_token, "files")
        ),
    )
    .unwrap();
    let hub_server = Server::start(&hub);
    let spoke_server = Server::start(&spoke);
    assert_eq!(replicate(&spoke)["feeds"][0]["converged"], true);
    let call = |server: &Server, method: &str, path: &str, token: &str| {
        http(
            &server.http,
            &format!("{method} {path} HTTP/1.1\r\nHost: HOST\r\nAuthorization: Bearer {token}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"),
        )
    };
    let get = || {
        http(
            &spoke_server.http,
            "GET /feeds/files/p/1/f HTTP/1.1\r\nHost: HOST\r\nConnection: close\r\n\r\n",
        )
        .0
    };
    assert_eq!(get(), 200);
    // Trust: the spoke stops trusting the hub through its admin API.
    let (status, text) = call(
        &spoke_server,
        "DELETE",
        &format!("/api/v1/trust/{}?feed=*", key_of(&hub)),
        &spoke_admin,
    );
    assert_eq!(status, 200, "{text}");
    assert_eq!(get(), 404);
    let (_, listing) = http(
        &spoke_server.http,
        "GET /feeds/files/ HTTP/1.1\r\nHost: HOST\r\nConnection: close\r\n\r\n",
    );
    assert!(!listing.contains("\"name\":\"p\""), "{listing}");
    // The command line reaches the running server too, with the same effect at once.
    assert!(spoke
        .ok(&["trust", "add", &key_of(&hub)])
        .contains("trusted"));
    assert_eq!(get(), 200);
    spoke.ok(&["trust", "rm", &key_of(&hub)]);
    assert_eq!(get(), 404);
    assert!(spoke.ok(&["peer", "list"]).contains("hub"));
    let out = spoke.run(&["trust", "rm", &key_of(&hub)]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("was not trusted"));
    // Token: the hub revokes the spoke's replication token.
    let id = replicate_token.split('_').nth(1).unwrap();
    let (status, text) = call(
        &hub_server,
        "DELETE",
        &format!("/api/v1/tokens/{id}"),
        &hub_admin,
    );
    assert_eq!(status, 200, "{text}");
    let r = replicate(&spoke);
    assert!(run_error(&r).contains("invalid replication token"), "{r}");
    // Peer: the hub forgets the spoke; its open connection is cut at the next run.
    let (status, text) = call(&hub_server, "DELETE", "/api/v1/peers/spoke", &hub_admin);
    assert_eq!(status, 200, "{text}");
    let r = replicate(&spoke);
    assert!(
        !run_error(&r).is_empty() && r["feeds"].as_array().is_none_or(|f| f.is_empty()),
        "{r}"
    );
    spoke_server.stop();
    let out = spoke.run(&["verify"]);
    assert_eq!(
        out.status.code(),
        Some(1),
        "{}",
        spoke.report(&["verify"], &out)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("untrusted"));
    drop(hub_server);
}

/// Key rotation and compromise: the hub moves to a new key; the spoke that pinned and trusted
/// the old one follows on its next run without manual steps; then someone holding the old key
/// (a copy of the hub from before) is refused, connection and documents alike.
#[test]
fn a_spoke_follows_its_hub_to_a_new_key_and_the_old_key_is_refused() {
    let hub = Instance::new();
    let spoke = Instance::new();
    for i in [&hub, &spoke] {
        i.ok(&["feed", "create", "demo", "--type", "raw"]);
    }
    for n in 0..3u64 {
        hub.push(
            "demo",
            "f",
            &format!("p{n}"),
            "1",
            &crate::util::bytes(n, 30_000),
        );
    }
    let port = crate::util::free_udp_port();
    crate::util::peer_spoke_with_hub(&hub, &spoke, "spoke", port);
    let replicate_token = token(&hub, &["replicate:demo"]);
    std::fs::write(
        hub.data().join("cairn.toml"),
        format!("[sync]\nlisten = \"127.0.0.1:{port}\"\n\n[http]\nlisten = \"127.0.0.1:0\"\n"),
    )
    .unwrap();
    std::fs::write(
        spoke.data().join("cairn.toml"),
        crate::util::pull_section("hub", &replicate_token, "demo"),
    )
    .unwrap();
    let server = Server::start(&hub);
    assert_eq!(replicate(&spoke)["feeds"][0]["converged"], true);
    server.stop();
    let old_key = key_of(&hub);
    // Someone keeps a copy of the hub with the old key.
    let impostor = hub.path("impostor");
    copy_dir(&hub.data(), &impostor);
    let new_key = hub.ok(&["key", "rotate"]).trim().to_owned();
    assert_ne!(new_key, old_key);
    assert_eq!(key_of(&hub), new_key);
    assert!(hub.ok(&["verify"]).contains(": ok"));
    let server = Server::start(&hub);
    let r = replicate(&spoke);
    assert_eq!(r["feeds"][0]["converged"], true, "{r}");
    assert!(spoke.ok(&["peer", "list"]).contains(&new_key));
    let trusted = spoke.ok(&["trust", "list"]);
    assert!(
        trusted.contains(&new_key) && !trusted.contains(&old_key),
        "{trusted}"
    );
    let listed = spoke.ls("demo");
    assert_eq!(listed.len(), 3);
    server.stop();
    assert!(spoke.ok(&["verify"]).contains(": ok"));
    assert_eq!(spoke.root("demo")["root"], hub.root("demo")["root"]);
    // The old key, on the hub's address: refused in the handshake's aftermath.
    replace_dir(&hub.data(), &impostor);
    let before = spoke.root("demo");
    let _impostor_server = Server::start(&hub);
    let r = replicate(&spoke);
    assert!(run_error(&r).contains("pinned"), "{r}");
    assert_eq!(spoke.root("demo"), before);
}
