//! Attacks on the protocol core: a hostile initiator or responder (frames made by hand, or a
//! real session's frames tampered with on the simulated link) tries to get past each check.
//! Every test asserts the refusal and that nothing changed on the attacked side.

use std::collections::BTreeMap;

use cairn_store::doc::{Checkpoint, FileEntry, Manifest, PAYLOAD_VERSION};
use cairn_store::{Hash, SignedDocument};
use serde_bytes::ByteBuf;

use super::*;
use crate::proto::{ResponderConfig, Session, SessionError};
use crate::wire::{BlobRequest, FeedHello, FeedStatus, Frame, SmallBlob};

/// A responder session on `store` for a peer with `peer`'s key.
fn responder(peer: &Store) -> Session {
    Session::responder(ResponderConfig {
        peer: peer.identity().public_key(),
        now_secs: now(),
        limits: Limits::default(),
    })
}

fn drain(s: &mut Session, store: &Store) -> Vec<Frame> {
    let mut out = Vec::new();
    while let Some(f) = s.poll_transmit(store) {
        out.push(f);
    }
    out
}

fn error_code(frames: &[Frame]) -> Option<u32> {
    frames.iter().find_map(|f| match f {
        Frame::Error { code, .. } => Some(*code),
        _ => None,
    })
}

/// HELLO for `feeds` of `from`, as its initiator would say it.
fn hello(from: &Store, mode: Mode, token: &str, feeds: &[&str]) -> Frame {
    Frame::Hello {
        version: crate::wire::PROTOCOL_VERSION,
        token: token.into(),
        mode,
        feeds: feeds
            .iter()
            .map(|f| {
                let sum = from.feed_summary(f).unwrap();
                FeedHello {
                    feed: (*f).into(),
                    root: *sum.root.fingerprint.as_bytes(),
                    count: sum.root.count,
                    since: None,
                    filter: None,
                    checkpoint: (mode != Mode::Pull)
                        .then(|| from.sign_checkpoint(f, 3600).unwrap().bytes().to_vec()),
                    collected: 0,
                }
            })
            .collect(),
        heads: vec![],
        notify: false,
        max_rate: 0,
    }
}

/// Every item of the feed as one ITEM-LIST page: what an initiator with `from`'s state sends.
fn item_list(from: &Store, feed: &str) -> Frame {
    let mut items = Vec::new();
    for b in 0..=255u8 {
        for (kh, e) in from.entries_under(feed, &[b]).unwrap() {
            let leaf = cairn_store::merkle::leaf(&e.key, &e.value.doc);
            items.extend_from_slice(&kh.as_bytes()[..8]);
            items.extend_from_slice(&leaf.as_bytes()[..8]);
        }
    }
    Frame::ItemList {
        feed: feed.into(),
        buckets: vec![0xff; 32],
        items,
        last: true,
    }
}

/// Gives `spoke` an entry of `demo` that no hub holds, so that its HELLO does not say it holds
/// nothing (which a pull answers with every entry at once) and the run reconciles.
fn holding_one_of_its_own(spoke: &Store) {
    publish(spoke, "demo", 900_000, 900_001, 10);
}

/// `r` (a responder on `hub`) after `spoke`'s pull HELLO and its whole item list; the frames
/// of the answer are left to poll. `spoke` must hold something ([`holding_one_of_its_own`]).
fn listed_for_pull(r: &mut Session, hub: &Store, spoke: &Store) {
    r.handle(
        hub,
        hello(spoke, Mode::Pull, "good", &["demo"]),
        Some(&AllowAll),
    );
    drain(r, hub);
    r.handle(hub, item_list(spoke, "demo"), Some(&AllowAll));
}

/// The first large blob a feed's manifests name.
fn a_blob(store: &Store, feed: &str) -> (Hash, u64) {
    for e in store.entries(feed).unwrap() {
        let m: Manifest = store
            .document(&e.value.doc)
            .unwrap()
            .unwrap()
            .payload()
            .unwrap();
        if let Some(f) = m.files.iter().find(|f| f.size > 16384) {
            return (f.blob, f.size);
        }
    }
    panic!("no large blob in {feed}")
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

fn pieces(frames: &[Frame]) -> usize {
    frames
        .iter()
        .filter(|f| matches!(f, Frame::BlobPiece { .. }))
        .count()
}

#[test]
fn nothing_but_hello_is_answered_before_hello() {
    let (_d, hub, spoke) = small_pair();
    publish(&hub, "demo", 0, 1, 100_000);
    let (hash, size) = a_blob(&hub, "demo");
    for first in [
        want(hash, size),
        item_list(&spoke, "demo"),
        Frame::SummaryRequest {
            feed: "demo".into(),
        },
    ] {
        let mut r = responder(&spoke);
        r.handle(&hub, first, Some(&AllowAll));
        let out = drain(&mut r, &hub);
        assert_eq!(error_code(&out), Some(code::PROTOCOL), "{out:?}");
        assert_eq!(pieces(&out), 0);
        assert!(r.is_finished());
    }
}

#[test]
fn no_authorizer_refuses_every_feed() {
    let (_d, hub, spoke) = small_pair();
    publish(&hub, "demo", 0, 3, 10);
    let mut r = responder(&spoke);
    r.handle(&hub, hello(&spoke, Mode::Pull, "good", &["demo"]), None);
    let out = drain(&mut r, &hub);
    match &out[..] {
        [Frame::HelloReply { feeds, .. }] => assert!(
            matches!(&feeds[0], FeedStatus::Refused { code: c, .. } if *c == code::UNAUTHORIZED),
            "{feeds:?}"
        ),
        other => panic!("{other:?}"),
    }
}

#[test]
fn a_refused_feed_is_gone_and_naming_it_ends_the_connection() {
    let (_d, hub, spoke) = small_pair();
    publish(&hub, "demo", 0, 20, 10);
    publish(&hub, "demo", 100, 101, 100_000);
    let before = root(&hub, "demo");
    let (hash, size) = a_blob(&hub, "demo");
    for (mode, later) in [
        (Mode::Pull, item_list(&spoke, "demo")),
        (Mode::Push, item_list(&spoke, "demo")),
        (
            Mode::Pull,
            Frame::Sketch {
                feed: "demo".into(),
                buckets: vec![0xff; 32],
                seed: 1,
                cells: vec![0; 26 * 8],
            },
        ),
        (Mode::Pull, want(hash, size)),
    ] {
        let mut r = responder(&spoke);
        r.handle(&hub, hello(&spoke, mode, "bad", &["demo"]), Some(&AllowAll));
        let out = drain(&mut r, &hub);
        assert!(
            matches!(&out[..], [Frame::HelloReply { feeds, .. }] if matches!(feeds[0], FeedStatus::Refused { .. })),
            "{out:?}"
        );
        r.handle(&hub, later, Some(&AllowAll));
        let out = drain(&mut r, &hub);
        assert!(
            matches!(error_code(&out), Some(c) if c == code::UNAUTHORIZED),
            "{out:?}"
        );
        assert!(!out.iter().any(|f| matches!(f, Frame::Diff { .. })));
        assert_eq!(pieces(&out), 0);
        assert_eq!(
            root(&hub, "demo"),
            before,
            "a push after refusal changed the hub"
        );
    }
}

#[test]
fn blobs_are_served_once_and_only_for_documents_sent_in_the_run() {
    let (_d, hub, spoke) = small_pair();
    publish(&hub, "demo", 0, 1, 100_000);
    holding_one_of_its_own(&spoke);
    let (hash, size) = a_blob(&hub, "demo");
    // Asked for before any document named it.
    let mut r = responder(&spoke);
    r.handle(
        &hub,
        hello(&spoke, Mode::Pull, "good", &["demo"]),
        Some(&AllowAll),
    );
    drain(&mut r, &hub);
    r.handle(&hub, want(hash, size), Some(&AllowAll));
    let out = drain(&mut r, &hub);
    assert_eq!(error_code(&out), Some(code::UNAUTHORIZED), "{out:?}");
    assert_eq!(pieces(&out), 0);
    // After the DIFF that sent its manifest: once, and not twice.
    let mut r = responder(&spoke);
    listed_for_pull(&mut r, &hub, &spoke);
    let out = drain(&mut r, &hub);
    assert!(out
        .iter()
        .any(|f| matches!(f, Frame::Diff { docs, .. } if !docs.is_empty())));
    r.handle(&hub, want(hash, size + 1), Some(&AllowAll));
    assert_eq!(error_code(&drain(&mut r, &hub)), Some(code::PROTOCOL));
    let mut r = responder(&spoke);
    listed_for_pull(&mut r, &hub, &spoke);
    drain(&mut r, &hub);
    r.handle(&hub, want(hash, size), Some(&AllowAll));
    assert_eq!(pieces(&drain(&mut r, &hub)), 1);
    r.handle(&hub, want(hash, size), Some(&AllowAll));
    let out = drain(&mut r, &hub);
    assert_eq!(error_code(&out), Some(code::UNAUTHORIZED), "{out:?}");
    assert_eq!(pieces(&out), 0);
}

#[test]
fn ranges_must_be_inside_the_blob_and_in_order() {
    let (_d, hub, spoke) = small_pair();
    publish(&hub, "demo", 0, 1, 100_000);
    holding_one_of_its_own(&spoke);
    let (hash, size) = a_blob(&hub, "demo");
    for groups in [vec![], vec![(3, 2)], vec![(0, 99)], vec![(2, 4), (0, 1)]] {
        let mut r = responder(&spoke);
        r.handle(
            &hub,
            hello(&spoke, Mode::Pull, "good", &["demo"]),
            Some(&AllowAll),
        );
        drain(&mut r, &hub);
        r.handle(&hub, item_list(&spoke, "demo"), Some(&AllowAll));
        drain(&mut r, &hub);
        r.handle(
            &hub,
            Frame::WantBlobs {
                blobs: vec![BlobRequest {
                    hash: *hash.as_bytes(),
                    size,
                    groups: groups.clone(),
                }],
            },
            Some(&AllowAll),
        );
        let out = drain(&mut r, &hub);
        assert_eq!(
            error_code(&out),
            Some(code::PROTOCOL),
            "{groups:?}: {out:?}"
        );
        assert_eq!(pieces(&out), 0);
    }
}

/// Reading and writing are separate rights.
struct ReadOnly;
impl Authorizer for ReadOnly {
    fn authorize(&self, _: &str, _: &str, mode: Mode) -> Result<(), Refusal> {
        match mode {
            Mode::Pull => Ok(()),
            _ => Err(Refusal::new(code::MODE_NOT_ALLOWED, "read only")),
        }
    }
}

#[test]
fn a_reader_cannot_push_or_mirror_and_a_writer_needs_a_trusted_checkpoint() {
    let (_d, hub, spoke) = small_pair();
    publish(&hub, "demo", 0, 30, 10);
    let before = root(&hub, "demo");
    // The spoke's state is empty: a push would delete everything on the hub.
    let refused = |r: &mut Session| {
        let out = drain(r, &hub);
        match &out[..] {
            [Frame::HelloReply { feeds, .. }] => match &feeds[0] {
                FeedStatus::Refused { code, reason } => (*code, reason.clone()),
                other => panic!("{other:?}"),
            },
            other => panic!("{other:?}"),
        }
    };
    for mode in [Mode::Push, Mode::Mirror] {
        let mut r = responder(&spoke);
        r.handle(
            &hub,
            hello(&spoke, mode, "good", &["demo"]),
            Some(&ReadOnly),
        );
        assert_eq!(refused(&mut r).0, code::MODE_NOT_ALLOWED);
    }
    // No checkpoint.
    let mut r = responder(&spoke);
    let mut h = hello(&spoke, Mode::Push, "good", &["demo"]);
    if let Frame::Hello { feeds, .. } = &mut h {
        feeds[0].checkpoint = None;
    }
    r.handle(&hub, h, Some(&AllowAll));
    let (c, reason) = refused(&mut r);
    assert_eq!(c, code::BAD_DATA);
    assert!(reason.contains("must carry a checkpoint"), "{reason}");
    // A checkpoint from a key the hub does not trust.
    let dir = tempfile::tempdir().unwrap();
    let stranger = new_store(dir.path());
    stranger.create_feed("demo", Ecosystem::Raw).unwrap();
    let mut r = responder(&stranger);
    r.handle(
        &hub,
        hello(&stranger, Mode::Push, "good", &["demo"]),
        Some(&AllowAll),
    );
    let (c, reason) = refused(&mut r);
    assert_eq!(c, code::BAD_DATA);
    assert!(reason.contains("not trusted"), "{reason}");
    assert_eq!(root(&hub, "demo"), before);
}

#[test]
fn a_mirror_peer_cannot_claim_a_collected_clock_it_was_never_seen_at() {
    let (_d, hub, spoke) = small_pair();
    publish(&hub, "demo", 0, 20, 10);
    let before = root(&hub, "demo");
    // A peer that never converged with the hub claims it collected everything: were the claim
    // believed, the hub would drop every entry the peer lacks without a tombstone.
    let mut h = hello(&spoke, Mode::Mirror, "good", &["demo"]);
    if let Frame::Hello { feeds, .. } = &mut h {
        feeds[0].collected = u64::MAX;
    }
    let mut r = responder(&spoke);
    r.handle(&hub, h, Some(&AllowAll));
    drain(&mut r, &hub);
    r.handle(&hub, item_list(&spoke, "demo"), Some(&AllowAll));
    let out = drain(&mut r, &hub);
    assert!(error_code(&out).is_none(), "{out:?}");
    assert_eq!(
        root(&hub, "demo"),
        before,
        "entries were dropped on a claim"
    );
    assert_eq!(
        out.iter()
            .map(|f| match f {
                Frame::Diff { docs, .. } | Frame::Docs { docs, .. } => docs.len(),
                _ => 0,
            })
            .sum::<usize>(),
        20,
        "the hub's entries were offered instead"
    );
}

/// An initiator that has said HELLO for `demo` and got the responder's checkpoint and summary
/// (from `hub`); the next frame it receives is the attack.
fn initiator_after_summary(spoke: &Store, hub: &Store) -> Session {
    let cp = hub.sign_checkpoint("demo", 3600).unwrap().bytes().to_vec();
    let status = crate::proto::summary(hub, "demo", Mode::Pull, Some(cp), None).unwrap();
    initiator_given(spoke, hub, status).0
}

/// A pull of `demo` by `spoke` from `hub` whose HELLO was answered with `status`, and what
/// the initiator sent after it.
fn initiator_given(spoke: &Store, hub: &Store, status: FeedStatus) -> (Session, Vec<Frame>) {
    let mut c = config(Mode::Pull, &["demo"]);
    c.peer = hub.identity().public_key();
    let mut s = Session::initiator(spoke, c).unwrap();
    drain(&mut s, spoke);
    s.handle(
        spoke,
        Frame::HelloReply {
            feeds: vec![status],
            log: None,
        },
        None,
    );
    let out = drain(&mut s, spoke);
    (s, out)
}

fn diff_with(docs: Vec<Vec<u8>>, blobs: Vec<SmallBlob>) -> Frame {
    Frame::Diff {
        feed: "demo".into(),
        docs: docs.into_iter().map(ByteBuf::from).collect(),
        remove: vec![],
        want: vec![],
        absent: vec![],
        blobs,
        last: true,
        more: false,
    }
}

fn manifest(files: Vec<FileEntry>) -> Manifest {
    Manifest {
        v: PAYLOAD_VERSION,
        feed: "demo".into(),
        ecosystem: Ecosystem::Raw,
        name: "evil".into(),
        version: "1".into(),
        files,
        metadata: BTreeMap::new(),
        hlc: 1,
    }
}

/// Adds `delta` (1 or -1) to the `s` half of an envelope's signature, its last 32 bytes,
/// little-endian, as an integer: still canonical for any `s` but 0 and L - 1.
fn shift_s(doc: &mut [u8], delta: i8) {
    let n = doc.len();
    for b in &mut doc[n - 32..] {
        let (v, carry) = if delta > 0 {
            b.overflowing_add(1)
        } else {
            b.overflowing_sub(1)
        };
        *b = v;
        if !carry {
            break;
        }
    }
}

/// A relay holds the hub's documents but not its key. Raising one signature's `s` by one and
/// lowering another's by one makes both invalid while the plain sum of their verification
/// equations still holds: a batch check without random weights would take the pair. The
/// receiver refuses it and stores nothing; the same pair untouched is taken.
#[test]
fn signatures_tweaked_to_cancel_in_a_batch_are_refused() {
    let (_d, hub, spoke) = small_pair();
    publish(&hub, "demo", 0, 3, 10);
    let data = b"payload of a genuine package".to_vec();
    let hash = Hash::of(&data);
    let sign = |version: &str| {
        let m = Manifest {
            version: version.into(),
            ..manifest(vec![FileEntry {
                name: format!("p-{version}.bin"),
                blob: hash,
                size: data.len() as u64,
                digests: BTreeMap::new(),
            }])
        };
        SignedDocument::sign(&m, hub.identity().signing_key())
            .unwrap()
            .bytes()
            .to_vec()
    };
    let genuine = vec![sign("1"), sign("2")];
    let mut tweaked = genuine.clone();
    shift_s(&mut tweaked[0], 1);
    shift_s(&mut tweaked[1], -1);
    for (what, docs) in [("tweaked", tweaked), ("genuine", genuine)] {
        let mut s = initiator_after_summary(&spoke, &hub);
        s.handle(
            &spoke,
            diff_with(docs, vec![SmallBlob { data: data.clone() }]),
            None,
        );
        let out = drain(&mut s, &spoke);
        if what == "genuine" {
            assert!(s.error().is_none(), "{:?}", s.error());
            assert!(spoke.has_blob(&hash).unwrap());
            continue;
        }
        match s.error() {
            Some(SessionError::BadData(why)) => assert!(why.contains("signature"), "{why}"),
            other => panic!("{other:?}"),
        }
        assert_eq!(error_code(&out), Some(code::BAD_DATA));
        assert!(!spoke.has_blob(&hash).unwrap(), "the blob was stored");
        assert_eq!(root(&spoke, "demo").count, 0);
    }
}

#[test]
fn documents_are_verified_before_any_blob_they_name_is_stored_or_asked_for() {
    let (_d, hub, spoke) = small_pair();
    publish(&hub, "demo", 0, 3, 10);
    let data = b"payload of an arbitrary package".to_vec();
    let hash = Hash::of(&data);
    let file = FileEntry {
        name: "evil.bin".into(),
        blob: hash,
        size: data.len() as u64,
        digests: BTreeMap::new(),
    };
    let dir = tempfile::tempdir().unwrap();
    let stranger = new_store(dir.path());
    let signed_by_stranger = SignedDocument::sign(
        &manifest(vec![file.clone()]),
        stranger.identity().signing_key(),
    )
    .unwrap()
    .bytes()
    .to_vec();
    let mut tampered =
        SignedDocument::sign(&manifest(vec![file.clone()]), hub.identity().signing_key())
            .unwrap()
            .bytes()
            .to_vec();
    let n = tampered.len();
    tampered[n - 70] ^= 1; // inside the payload: the signature no longer holds
    let huge = SignedDocument::sign(
        &manifest(vec![FileEntry {
            size: u64::MAX,
            ..file.clone()
        }]),
        hub.identity().signing_key(),
    )
    .unwrap()
    .bytes()
    .to_vec();
    for (what, doc) in [
        ("untrusted signer", signed_by_stranger),
        ("bad signature", tampered),
        ("declared size", huge),
    ] {
        let mut s = initiator_after_summary(&spoke, &hub);
        s.handle(
            &spoke,
            diff_with(vec![doc], vec![SmallBlob { data: data.clone() }]),
            None,
        );
        let out = drain(&mut s, &spoke);
        assert!(
            matches!(s.error(), Some(SessionError::BadData(_))),
            "{what}: {:?}",
            s.error()
        );
        assert_eq!(error_code(&out), Some(code::BAD_DATA), "{what}");
        assert!(
            !out.iter().any(|f| matches!(f, Frame::WantBlobs { .. })),
            "{what}"
        );
        assert!(
            !spoke.has_blob(&hash).unwrap(),
            "{what}: the blob was stored"
        );
        assert_eq!(root(&spoke, "demo").count, 0, "{what}");
    }
}

#[test]
fn small_blobs_no_document_of_the_frame_names_are_refused() {
    let (_d, hub, spoke) = small_pair();
    publish(&hub, "demo", 0, 1, 10);
    let doc = hub
        .document_bytes(&hub.entries("demo").unwrap()[0].value.doc)
        .unwrap()
        .unwrap();
    let stray = b"not named by anything".to_vec();
    let mut s = initiator_after_summary(&spoke, &hub);
    s.handle(
        &spoke,
        diff_with(
            vec![doc],
            vec![SmallBlob {
                data: stray.clone(),
            }],
        ),
        None,
    );
    assert!(
        matches!(s.error(), Some(SessionError::Protocol(_))),
        "{:?}",
        s.error()
    );
    assert!(!spoke.has_blob(&Hash::of(&stray)).unwrap());
}

#[test]
fn a_small_blob_whose_bytes_do_not_match_the_name_its_document_gives_is_refused() {
    let (_d, hub, spoke) = small_pair();
    publish(&hub, "demo", 0, 1, 10);
    let entry = &hub.entries("demo").unwrap()[0];
    let doc = hub.document_bytes(&entry.value.doc).unwrap().unwrap();
    let m: Manifest = SignedDocument::peek_payload(&doc).unwrap();
    let named = m.files[0].blob;
    // Same length as the real blob, other bytes: only the hash tells them apart.
    let forged = vec![0x5a; m.files[0].size as usize];
    let mut s = initiator_after_summary(&spoke, &hub);
    s.handle(
        &spoke,
        diff_with(vec![doc], vec![SmallBlob { data: forged }]),
        None,
    );
    assert!(
        matches!(s.error(), Some(SessionError::BadData(_))),
        "{:?}",
        s.error()
    );
    assert!(!spoke.has_blob(&named).unwrap());
    assert_eq!(root(&spoke, "demo").count, 0);
}

#[test]
fn a_pull_without_a_checkpoint_or_with_an_expired_one_applies_nothing() {
    let (_d, hub, spoke) = small_pair();
    publish(&hub, "demo", 0, 10, 10);
    let expired = {
        let sum = hub.feed_summary("demo").unwrap();
        let t = now();
        SignedDocument::sign(
            &Checkpoint {
                v: PAYLOAD_VERSION,
                feed: "demo".into(),
                root: Hash::from_bytes(*sum.root.fingerprint.as_bytes()),
                count: sum.root.count,
                epoch: sum.feed.epoch,
                seq: sum.feed.seq,
                time: t - 7200,
                expires: t - 3600,
                covers: Vec::new(),
                filter: None,
            },
            hub.identity().signing_key(),
        )
        .unwrap()
        .bytes()
        .to_vec()
    };
    for (what, replace) in [("none", None), ("expired", Some(expired))] {
        let mut strip = |_to_responder: bool, f: Frame| match f {
            Frame::HelloReply { mut feeds, log } => {
                for s in &mut feeds {
                    if let FeedStatus::Summary { checkpoint, .. }
                    | FeedStatus::All { checkpoint, .. } = s
                    {
                        *checkpoint = replace.clone();
                    }
                }
                vec![Frame::HelloReply { feeds, log }]
            }
            f => vec![f],
        };
        let o = sim::run_tampered(
            &spoke,
            &hub,
            config(Mode::Pull, &["demo"]),
            &AllowAll,
            lan(),
            &mut strip,
        );
        let err = o.initiator[0].error.clone().unwrap_or_default();
        assert!(
            err.contains(if replace.is_some() {
                "expired"
            } else {
                "no checkpoint"
            }),
            "{what}: {err}"
        );
        assert_eq!(root(&spoke, "demo").count, 0, "{what}");
        assert!(
            o.responder.iter().all(|r| r.error.is_some()),
            "the hub heard: {o:?}"
        );
    }
}

#[test]
fn a_withheld_entry_leaves_a_replica_no_checkpoint_covers() {
    let (_d, hub, spoke) = small_pair();
    publish(&hub, "demo", 0, 10, 10);
    // A relay in the middle drops one document and passes the hub's checkpoints on.
    let mut withhold = |to_responder: bool, f: Frame| match f {
        Frame::Diff {
            feed,
            mut docs,
            remove,
            want,
            absent,
            mut blobs,
            last,
            more,
        } if !to_responder => {
            // The document and the small blob it names, so the rest looks consistent.
            if let Some(gone) = docs.pop() {
                let m: Manifest = SignedDocument::decode(&gone).unwrap().payload().unwrap();
                blobs.retain(|b| Hash::of(&b.data) != m.files[0].blob);
            }
            vec![Frame::Diff {
                feed,
                docs,
                remove,
                want,
                absent,
                blobs,
                last,
                more,
            }]
        }
        f => vec![f],
    };
    let o = sim::run_tampered(
        &spoke,
        &hub,
        config(Mode::Pull, &["demo"]),
        &AllowAll,
        lan(),
        &mut withhold,
    );
    let err = o.initiator[0].error.clone().unwrap_or_default();
    assert!(err.contains("withheld"), "{o:?}");
    assert!(!o.initiator[0].converged());
    assert_eq!(root(&spoke, "demo").count, 9);
    assert!(
        spoke.checkpoint("demo").unwrap().is_none(),
        "a checkpoint was kept"
    );
}

#[test]
fn frames_for_feeds_not_in_the_run_are_refused() {
    let (_d, hub, spoke) = small_pair();
    hub.create_feed("other", Ecosystem::Raw).unwrap();
    spoke.create_feed("other", Ecosystem::Raw).unwrap();
    publish(&hub, "other", 0, 3, 10);
    let doc = hub
        .document_bytes(&hub.entries("other").unwrap()[0].value.doc)
        .unwrap()
        .unwrap();
    // An upstream slips documents of another feed into the run: extraneous content.
    let mut extra = |to_responder: bool, f: Frame| {
        if !to_responder && matches!(f, Frame::Diff { .. }) {
            vec![
                f,
                Frame::Docs {
                    feed: "other".into(),
                    docs: vec![ByteBuf::from(doc.clone())],
                    blobs: vec![],
                    last: true,
                    seq: 0,
                },
            ]
        } else {
            vec![f]
        }
    };
    publish(&hub, "demo", 0, 3, 10);
    let o = sim::run_tampered(
        &spoke,
        &hub,
        config(Mode::Pull, &["demo"]),
        &AllowAll,
        lan(),
        &mut extra,
    );
    assert!(
        matches!(o.initiator_error, Some(SessionError::Protocol(_))),
        "{o:?}"
    );
    assert_eq!(root(&spoke, "other").count, 0);
}

#[test]
fn a_complete_transfer_left_by_a_crash_is_installed_without_asking() {
    let (_d, hub, spoke) = small_pair();
    publish(&hub, "demo", 0, 1, 3_000_000);
    let (hash, size) = a_blob(&hub, "demo");
    // Every chunk group arrived and was logged, then the process died before installing it.
    let mut incoming = spoke.receive_blob(hash, size).unwrap();
    let groups = cairn_store::replica::group_count(size);
    let mut encoded = Vec::new();
    hub.encode_blob(&hash, &[(0, groups)], &mut encoded)
        .unwrap();
    incoming.write_piece(&[(0, groups)], &encoded).unwrap();
    assert!(incoming.is_complete());
    drop(incoming);
    let o = sim::run(
        &spoke,
        &hub,
        config(Mode::Pull, &["demo"]),
        &AllowAll,
        lan(),
    );
    assert_converged(&o, &spoke, &hub, "demo");
    assert_eq!(o.initiator[0].blob_bytes_received, 0, "{o:?}");
    assert!(spoke.verify().unwrap().ok());
}

#[test]
fn a_version_with_many_small_files_and_long_lists_replicate_in_pages() {
    let (_d, hub, spoke) = small_pair();
    // 600 files of 16 KiB: their bytes are six times a DOCS frame's budget.
    let files: Vec<NewFile> = (0..600u64)
        .map(|i| {
            let content: Vec<u8> = (0..16384u64).map(|j| (i * 7 + j) as u8).collect();
            let b = hub.put_blob(&content[..]).unwrap();
            NewFile {
                name: format!("f{i}.bin"),
                blob: b.hash,
                size: b.size,
                digests: BTreeMap::new(),
            }
        })
        .collect();
    hub.publish(
        "demo",
        NewPackage {
            name: "wide".into(),
            version: "1".into(),
            files,
            metadata: BTreeMap::new(),
        },
    )
    .unwrap();
    publish(&hub, "demo", 0, 2000, 10);
    let mut c = config(Mode::Pull, &["demo"]);
    c.limits.list_page_items = 100;
    c.limits.diff_page_keys = 50;
    let mut biggest = 0;
    let mut pages = 0;
    let mut watch = |_: bool, f: Frame| {
        biggest = biggest.max(crate::wire::encode(&f).len());
        if matches!(
            f,
            Frame::ItemList { last: false, .. } | Frame::Diff { more: true, .. }
        ) {
            pages += 1;
        }
        vec![f]
    };
    publish(&spoke, "demo", 5000, 5600, 10);
    let mut c2 = c.clone();
    c2.guard.allow = true;
    let o = sim::run_tampered(&spoke, &hub, c2, &AllowAll, lan(), &mut watch);
    assert_converged(&o, &spoke, &hub, "demo");
    assert!(biggest <= 2 << 20, "a frame of {biggest} bytes");
    assert!(pages > 2, "{pages} pages");
    assert!(spoke.verify().unwrap().ok());
}

#[test]
fn documents_whose_signer_lost_trust_are_not_offered() {
    let dir = tempfile::tempdir().unwrap();
    let hub = new_store(&dir.path().join("hub"));
    let relay = new_store(&dir.path().join("relay"));
    let spoke = new_store(&dir.path().join("spoke"));
    for s in [&hub, &relay, &spoke] {
        s.create_feed("demo", Ecosystem::Raw).unwrap();
    }
    relay.trust_add("*", &hub.identity().public_key()).unwrap();
    spoke.trust_add("*", &hub.identity().public_key()).unwrap();
    publish(&hub, "demo", 0, 10, 10);
    let o = sim::run(
        &relay,
        &hub,
        config(Mode::Pull, &["demo"]),
        &AllowAll,
        lan(),
    );
    assert_converged(&o, &relay, &hub, "demo");
    // The relay stops trusting the hub: it keeps the entries but offers none of them.
    relay
        .trust_remove("*", &hub.identity().public_key())
        .unwrap();
    let o = sim::run(
        &spoke,
        &relay,
        config(Mode::Pull, &["demo"]),
        &AllowAll,
        lan(),
    );
    assert_eq!(o.responder[0].docs_sent, 0, "{o:?}");
    assert_eq!(root(&spoke, "demo").count, 0);
    assert!(!o.initiator[0].converged());
    let report = relay.verify().unwrap();
    assert!(
        report
            .problems
            .iter()
            .any(|p| p.detail.contains("untrusted")),
        "{report:?}"
    );
}

/// Rollback through a second writer: a replica that holds the primary hub's checkpoint is
/// offered the state of a secondary writer that has not mirrored the primary's latest
/// publishes, signed later (a failover to a secondary that is behind, or a relay replaying
/// the secondary's older state to undo a publish or lift a block). It applies nothing until
/// the secondary's checkpoint covers the one held, i.e. the writers have mirrored.
#[test]
fn failing_over_to_a_writer_that_is_behind_undoes_nothing_until_it_catches_up() {
    let dir = tempfile::tempdir().unwrap();
    let hub1 = new_store(&dir.path().join("hub1"));
    let hub2 = new_store(&dir.path().join("hub2"));
    let spoke = new_store(&dir.path().join("spoke"));
    for s in [&hub1, &hub2, &spoke] {
        s.create_feed("demo", Ecosystem::Raw).unwrap();
        for k in [&hub1, &hub2] {
            s.trust_add("demo", &k.identity().public_key()).unwrap();
        }
    }
    trust_each_other(&hub1, &hub2);
    publish(&hub1, "demo", 0, 5, 10);
    converge(&hub2, &hub1, config(Mode::Mirror, &["demo"]), lan(), "demo");
    // hub1 publishes 5 more; the spoke takes them, hub2 does not (hub1 then goes down).
    publish(&hub1, "demo", 5, 10, 10);
    converge(&spoke, &hub1, config(Mode::Pull, &["demo"]), lan(), "demo");
    publish(&hub2, "demo", 100, 101, 10);
    let before = root(&spoke, "demo");
    assert_eq!(before.count, 10);
    let mut c = config(Mode::Pull, &["demo"]);
    c.guard.allow = true;
    let o = sim::run(&spoke, &hub2, c.clone(), &AllowAll, lan());
    let err = o.initiator[0].error.clone().unwrap_or_default();
    assert!(err.contains("does not include"), "{o:?}");
    assert_eq!(
        root(&spoke, "demo"),
        before,
        "nothing of hub2's state was applied"
    );
    // hub1 is back and the writers mirror: hub2's state now covers what the spoke holds.
    converge(&hub2, &hub1, config(Mode::Mirror, &["demo"]), lan(), "demo");
    converge(&spoke, &hub2, c.clone(), lan(), "demo");
    assert_eq!(root(&spoke, "demo").count, 11);
    let (cp, doc) = spoke.checkpoint("demo").unwrap().unwrap();
    assert_eq!(doc.signer(), hub2.identity().public_key());
    assert_eq!(cp.covers.len(), 1);
    assert_eq!(cp.covers[0].key, *hub1.identity().public_key().as_bytes());
    // And back to hub1 once it covers hub2's state: as the responder of the writers' next
    // mirror it records the checkpoint hub2 opens with.
    converge(&hub2, &hub1, config(Mode::Mirror, &["demo"]), lan(), "demo");
    publish(&hub1, "demo", 200, 201, 10);
    converge(&spoke, &hub1, c, lan(), "demo");
    assert_eq!(root(&spoke, "demo").count, 12);
}

/// A forged history: an upstream passes on a promotion record (who moved which version into
/// which feed) signed by a key the spoke does not trust for the system set. The spoke's run
/// refuses it, keeps no record and changes nothing (records its hub signs replicate: the
/// store's and the end-to-end promotion tests).
#[test]
fn a_promotion_record_signed_by_an_untrusted_key_is_refused() {
    let (dir, hub, spoke) = small_pair();
    let stranger = new_store(&dir.path().join("stranger"));
    for f in ["staging", "release"] {
        stranger.create_feed(f, Ecosystem::Raw).unwrap();
    }
    publish(&stranger, "staging", 0, 1, 10);
    let (name, version) = stranger.entries("staging").unwrap()[0]
        .key
        .rsplit_once('/')
        .map(|(n, v)| (n.to_owned(), v.to_owned()))
        .unwrap();
    stranger
        .promote(
            "staging",
            "release",
            &name,
            &version,
            "someone claiming to be CI",
        )
        .unwrap();
    // The hub trusts the stranger for the system set; the spoke trusts the hub alone.
    hub.trust_add(SYSTEM_FEED, &stranger.identity().public_key())
        .unwrap();
    converge(
        &hub,
        &stranger,
        config(Mode::Pull, &[SYSTEM_FEED]),
        lan(),
        SYSTEM_FEED,
    );
    assert_eq!(hub.promotions(None, None).unwrap().len(), 1);
    let before = root(&spoke, SYSTEM_FEED);
    let o = sim::run(
        &spoke,
        &hub,
        config(Mode::Pull, &[SYSTEM_FEED]),
        &AllowAll,
        lan(),
    );
    let err = o
        .initiator_error
        .map(|e| e.to_string())
        .or(o.initiator[0].error.clone())
        .unwrap_or_default();
    assert!(err.contains("not trusted"), "{err}");
    assert!(spoke.promotions(None, None).unwrap().is_empty());
    assert_eq!(root(&spoke, SYSTEM_FEED), before);
}

/// A filter where none may be (a mirror or push, the system set) or one over the limits is
/// refused at HELLO with the reason, and the responder does nothing else for the feed.
#[test]
fn a_filter_in_a_write_on_the_system_set_or_over_the_limits_is_refused_at_hello() {
    let (_d, hub, spoke) = small_pair();
    publish(&hub, "demo", 0, 3, 10);
    publish(&spoke, "demo", 10, 13, 10);
    let pattern = |n: usize| (0..n).map(|i| format!("p{i}*")).collect::<Vec<_>>();
    let mut too_many = cairn_store::doc::Filter {
        include: pattern(cairn_store::doc::MAX_FILTER_PATTERNS + 1),
        exclude: vec![],
    };
    too_many.include.sort();
    let cases = [
        (Mode::Mirror, "demo", pattern(1), "only a pull can"),
        (Mode::Push, "demo", pattern(1), "only a pull can"),
        (Mode::Pull, "@system", pattern(1), "replicated whole"),
        (
            Mode::Pull,
            "demo",
            vec!["has space".into()],
            "printable ASCII",
        ),
        (
            Mode::Pull,
            "demo",
            too_many.include.clone(),
            "over the limit",
        ),
    ];
    for (mode, feed, include, why) in cases {
        let mut frame = hello(&spoke, mode, "good", &[feed]);
        if let Frame::Hello { feeds, .. } = &mut frame {
            feeds[0].filter = Some(cairn_store::doc::Filter {
                include,
                exclude: vec![],
            });
        }
        let mut r = responder(&spoke);
        r.handle(&hub, frame, Some(&AllowAll));
        let out = drain(&mut r, &hub);
        let reason = match &out[..] {
            [Frame::HelloReply { feeds, .. }] => match &feeds[0] {
                FeedStatus::Refused { code, reason } if *code == code::BAD_DATA => reason.clone(),
                other => panic!("{mode:?} {feed}: {other:?}"),
            },
            other => panic!("{mode:?} {feed}: {other:?}"),
        };
        assert!(reason.contains(why), "{mode:?} {feed}: {reason}");
    }
    assert_eq!(root(&hub, "demo").count, 3);
}

/// A responder that answered HELLO for `demo` with its summary: what DIFFERENCE meets.
fn responder_after_summary(hub: &Store, spoke: &Store) -> Session {
    let mut s = responder(spoke);
    s.handle(
        hub,
        hello(spoke, Mode::Pull, "good", &["demo"]),
        Some(&AllowAll),
    );
    let reply = drain(&mut s, hub);
    assert!(
        matches!(&reply[0], Frame::HelloReply { feeds, .. } if matches!(feeds[0], FeedStatus::Summary { .. })),
        "{reply:?}"
    );
    s
}

fn difference(mine: &[u8], yours: &[u8]) -> Frame {
    Frame::Difference {
        feed: "demo".into(),
        mine: mine.to_vec(),
        yours: yours.to_vec(),
    }
}

#[test]
fn a_difference_claiming_what_the_responder_does_not_hold_gets_nothing_and_a_long_one_is_refused() {
    let (_d, hub, spoke) = small_pair();
    publish(&hub, "demo", 0, 5, 10);
    let held = hub.entries("demo").unwrap();
    let real = {
        let e = &held[0];
        let kh = cairn_store::merkle::key_hash(&e.key);
        let leaf = cairn_store::merkle::leaf(&e.key, &e.value.doc);
        [&kh.as_bytes()[..8], &leaf.as_bytes()[..8]].concat()
    };
    // An item of a held key with another leaf, and one of no key at all: neither is answered.
    let mut wrong_leaf = real.clone();
    wrong_leaf[15] ^= 1;
    let made_up = [7u8; 16];
    holding_one_of_its_own(&spoke);
    let mut s = responder_after_summary(&hub, &spoke);
    s.handle(
        &hub,
        difference(&[], &[wrong_leaf, made_up.to_vec()].concat()),
        None,
    );
    let out = drain(&mut s, &hub);
    assert!(s.error().is_none(), "{:?}", s.error());
    let sent: usize = out
        .iter()
        .map(|f| match f {
            Frame::Diff { docs, .. } | Frame::Docs { docs, .. } => docs.len(),
            _ => 0,
        })
        .sum();
    assert_eq!(sent, 0, "{out:?}");
    // Said twice, it is out of turn.
    s.handle(&hub, difference(&[], &real), None);
    assert!(
        matches!(s.error(), Some(SessionError::Protocol(_))),
        "{:?}",
        s.error()
    );

    // The real item is answered with its document.
    let mut s = responder_after_summary(&hub, &spoke);
    s.handle(&hub, difference(&[], &real), None);
    let out = drain(&mut s, &hub);
    assert!(
        out.iter()
            .any(|f| matches!(f, Frame::Diff { docs, .. } if docs.len() == 1)),
        "{out:?}"
    );

    // More items than a summary's table can give is a protocol error.
    let mut s = responder_after_summary(&hub, &spoke);
    s.handle(&hub, difference(&[3u8; 16 * 65], &[]), None);
    assert_eq!(
        error_code(&drain(&mut s, &hub)),
        Some(crate::wire::code::PROTOCOL)
    );
    assert_eq!(root(&hub, "demo").count, 5);
}

#[test]
fn status_all_is_refused_by_an_initiator_that_holds_entries_or_does_not_pull() {
    // `all` tells an initiator that it held nothing: one that holds entries would keep
    // extras the responder does not have, and a push or a mirror is never answered so.
    let (_d, hub, spoke) = small_pair();
    publish(&hub, "demo", 0, 3, 10);
    holding_one_of_its_own(&spoke);
    let sum = hub.feed_summary("demo").unwrap();
    let all = FeedStatus::All {
        root: *sum.root.fingerprint.as_bytes(),
        count: sum.root.count,
        cursor: crate::proto::cursor_to_wire(sum.feed.cursor()),
        checkpoint: Some(hub.sign_checkpoint("demo", 3600).unwrap().bytes().to_vec()),
    };
    let (s, out) = initiator_given(&spoke, &hub, all.clone());
    assert!(
        matches!(s.error(), Some(SessionError::Protocol(_))),
        "{:?}",
        s.error()
    );
    assert_eq!(error_code(&out), Some(code::PROTOCOL));
    let (_d2, hub2, empty) = small_pair();
    publish(&hub2, "demo", 0, 3, 10);
    for mode in [Mode::Push, Mode::Mirror] {
        let mut c = config(mode, &["demo"]);
        c.peer = hub2.identity().public_key();
        let mut s = Session::initiator(&empty, c).unwrap();
        drain(&mut s, &empty);
        s.handle(
            &empty,
            Frame::HelloReply {
                feeds: vec![all.clone()],
                log: None,
            },
            None,
        );
        assert!(
            matches!(s.error(), Some(SessionError::Protocol(_))),
            "{mode:?}: {:?}",
            s.error()
        );
        assert_eq!(error_code(&drain(&mut s, &empty)), Some(code::PROTOCOL));
    }
    assert_eq!(root(&spoke, "demo").count, 1);
    assert_eq!(root(&empty, "demo").count, 0);
}

#[test]
fn a_summary_with_a_table_or_estimator_of_the_wrong_shape_is_refused_and_nothing_applied() {
    let (_d, hub, spoke) = small_pair();
    publish(&hub, "demo", 0, 3, 10);
    let cp = hub.sign_checkpoint("demo", 3600).unwrap().bytes().to_vec();
    let good = crate::proto::summary(&hub, "demo", Mode::Pull, Some(cp), None).unwrap();
    let reshaped = |cells: usize, counters: usize| match good.clone() {
        FeedStatus::Summary {
            root,
            count,
            cursor,
            cells: c,
            estimator: e,
            checkpoint,
            collected,
        } => FeedStatus::Summary {
            root,
            count,
            cursor,
            cells: c
                .iter()
                .copied()
                .cycle()
                .take(cells * crate::wire::CELL_BYTES)
                .collect(),
            estimator: e.iter().copied().cycle().take(counters).collect(),
            checkpoint,
            collected,
        },
        _ => unreachable!("a summary"),
    };
    for (what, status) in [
        ("16 cells", reshaped(16, 256)),
        ("no cells", reshaped(0, 256)),
        ("255 counters", reshaped(12, 255)),
        ("257 counters", reshaped(12, 257)),
    ] {
        let (s, out) = initiator_given(&spoke, &hub, status);
        assert!(
            matches!(s.error(), Some(SessionError::Protocol(_))),
            "{what}: {:?}",
            s.error()
        );
        assert_eq!(error_code(&out), Some(code::PROTOCOL), "{what}");
        assert_eq!(root(&spoke, "demo").count, 0, "{what}");
    }
}

#[test]
fn a_peer_asking_for_a_whole_feed_does_not_make_the_responder_hold_it() {
    // A first sync owes the peer every document: the responder keeps 8-byte prefixes (after
    // an item list) or bucket numbers (to a peer that holds nothing) and reads entries a few
    // hundred at a time, so many such peers at once cost it little.
    for listed in [true, false] {
        let (_d, hub, spoke) = small_pair();
        publish(&hub, "demo", 0, 3000, 10);
        let mut r = Session::responder(ResponderConfig {
            peer: spoke.identity().public_key(),
            now_secs: now(),
            limits: Limits {
                doc_batch_bytes: 16 << 10,
                ..Limits::default()
            },
        });
        if listed {
            holding_one_of_its_own(&spoke);
            listed_for_pull(&mut r, &hub, &spoke);
        } else {
            r.handle(
                &hub,
                hello(&spoke, Mode::Pull, "good", &["demo"]),
                Some(&AllowAll),
            );
        }
        let (mut most_read, mut most_pending) = r.docs_queued();
        let mut sent = std::collections::HashSet::new();
        let mut frames = 0;
        while let Some(f) = r.poll_transmit(&hub) {
            let (read, pending) = r.docs_queued();
            most_read = most_read.max(read);
            most_pending = most_pending.max(pending);
            if let Frame::Diff { docs, .. } | Frame::Docs { docs, .. } = f {
                frames += 1;
                for d in docs {
                    assert!(sent.insert(d.into_vec()), "a document sent twice");
                }
            }
        }
        assert_eq!(sent.len(), 3000, "every document sent, in {frames} frames");
        assert!(frames > 10, "{frames} frames");
        assert!(
            most_read <= crate::proto::DOC_KEYS_READ,
            "listed {listed}: {most_read} entries held at once"
        );
        let rest = if listed { 2000 } else { 200 };
        assert!(
            most_pending > rest,
            "listed {listed}: the rest waited as prefixes or buckets: {most_pending}"
        );
    }
}

#[test]
fn many_peers_pulling_at_once_cannot_make_a_sender_hold_more_than_its_send_budget() {
    // Each run that sends holds the frame it is writing (HELD_PER_RUN) beside quinn's
    // buffers; a hub serving 100 spokes at once went past its budget by that much per run.
    use crate::transport::{SendBudget, HELD_PER_RUN, MIN_SEND_WINDOW};
    let total = 256u64 << 20;
    let budget = SendBudget::new(total);
    let mut runs = Vec::new();
    for n in 1..=300u64 {
        runs.push(budget.enter());
        let window = budget.window(u64::MAX);
        assert!(window >= MIN_SEND_WINDOW);
        // Within the budget for as many runs as leave each at least the floor.
        if total / n >= HELD_PER_RUN + MIN_SEND_WINDOW {
            assert!(n * (window + HELD_PER_RUN) <= total, "{n} runs: {window}");
        } else {
            assert_eq!(window, MIN_SEND_WINDOW, "{n} runs");
        }
        // A run never gets more than it wants.
        assert_eq!(budget.window(MIN_SEND_WINDOW), MIN_SEND_WINDOW);
    }
    // 100 runs sending at once (a hub's release to 100 spokes): 1.56 MiB of window each.
    runs.truncate(100);
    assert_eq!(budget.window(u64::MAX), total / 100 - HELD_PER_RUN);
}

/// A blob stream's body as a peer sends it: chunks, an end, or a fault.
struct Script(std::collections::VecDeque<Result<Option<bytes::Bytes>, String>>);

impl crate::transport::ChunkSource for Script {
    async fn next_chunk(&mut self) -> Result<Option<bytes::Bytes>, String> {
        self.0.pop_front().unwrap_or(Ok(None))
    }
}

/// `chunks` chunks of `size` bytes (byte i of the stream is i mod 251), then `end`.
fn script(chunks: usize, size: usize, end: Result<Option<bytes::Bytes>, String>) -> Script {
    let mut steps: std::collections::VecDeque<_> = (0..chunks)
        .map(|c| {
            let bytes: Vec<u8> = (c * size..(c + 1) * size)
                .map(|i| (i % 251) as u8)
                .collect();
            Ok(Some(bytes::Bytes::from(bytes)))
        })
        .collect();
    steps.push_back(end);
    Script(steps)
}

/// Runs a blob stream of announced length `len` from `source` into a writer's queue; returns
/// what the writer was handed (each batch), the bytes read and the refusal.
async fn forward(mut source: Script, len: u64) -> (Vec<Vec<u8>>, u64, Option<String>) {
    let (tx, mut rx) = tokio::sync::mpsc::channel(8);
    let received = std::sync::atomic::AtomicU64::new(0);
    let writer = tokio::spawn(async move {
        let mut batches = Vec::new();
        while let Some(b) = rx.recv().await {
            batches.push(b);
        }
        batches
    });
    let (read, failure) = crate::transport::forward_blob_stream(
        &mut source,
        Vec::new(),
        len,
        Hash::from_bytes([7; 32]),
        &tx,
        &received,
    )
    .await;
    drop(tx);
    assert_eq!(received.load(std::sync::atomic::Ordering::Relaxed), read);
    (writer.await.unwrap(), read, failure)
}

fn in_order(batches: &[Vec<u8>]) -> bool {
    batches
        .concat()
        .iter()
        .enumerate()
        .all(|(i, &b)| b == (i % 251) as u8)
}

#[tokio::test]
async fn a_blob_stream_longer_than_its_head_announced_is_refused_at_the_announced_length() {
    // 100 chunks of 1,200 bytes for a head that announced 50,000: the chunk that crosses the
    // announced length is not handed on, and the stream is refused.
    let (batches, _, failure) = forward(script(100, 1_200, Ok(None)), 50_000).await;
    let failure = failure.expect("an over-long stream is refused");
    assert!(
        failure.contains("carries more than the 50000 bytes"),
        "{failure}"
    );
    let handed: usize = batches.iter().map(Vec::len).sum();
    assert_eq!(handed, 41 * 1_200);
    assert!(in_order(&batches));
    // Exactly the announced length, then one byte more after it: refused too.
    let mut extra = script(10, 1_000, Ok(Some(bytes::Bytes::from_static(b"x"))));
    extra.0.push_back(Ok(None));
    let (batches, _, failure) = forward(extra, 10_000).await;
    assert!(failure.unwrap().contains("carries more than"));
    assert_eq!(batches.concat().len(), 10_000);
}

#[tokio::test]
async fn a_blob_stream_cut_or_failing_midway_hands_on_what_arrived_before_it() {
    // Cut after 36,000 of 100,000 bytes: all of them reach the writer, which keeps the groups
    // that verify for a later run to resume after.
    let (batches, read, failure) = forward(script(30, 1_200, Ok(None)), 100_000).await;
    assert_eq!(failure, None);
    assert_eq!(read, 36_000);
    assert_eq!(batches.concat().len(), 36_000);
    assert!(in_order(&batches));
    // A transport fault midway: the fault is the refusal, and what came before is handed on.
    let (batches, _, failure) =
        forward(script(30, 1_200, Err("connection lost".into())), 100_000).await;
    assert_eq!(failure.as_deref(), Some("connection lost"));
    assert_eq!(batches.concat().len(), 36_000);
}

#[tokio::test]
async fn a_blob_stream_of_packet_sized_chunks_wakes_its_writer_once_per_batch() {
    // 1,000 chunks of 1,200 bytes (about a packet each): the writer is handed them in
    // batches of WRITE_BATCH, not one by one, and in order.
    let len = 1_000 * 1_200;
    let (batches, read, failure) = forward(script(1_000, 1_200, Ok(None)), len as u64).await;
    assert_eq!(failure, None);
    assert_eq!(read, len as u64);
    assert_eq!(batches.concat().len(), len);
    assert!(in_order(&batches));
    assert!(
        batches.len() <= len / crate::transport::WRITE_BATCH + 1 && batches.len() <= 20,
        "{} batches",
        batches.len()
    );
    assert!(batches[..batches.len() - 1]
        .iter()
        .all(|b| b.len() >= crate::transport::WRITE_BATCH
            && b.len() < crate::transport::WRITE_BATCH + 1_200));
}
