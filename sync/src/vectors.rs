//! The test vectors of `wire-spec/vectors/`, built from real values: documents signed with the
//! published test key, the Merkle values of a small feed made of them, an IBLT of its items,
//! blob encodings cut at the chunk-group boundaries, a transparency log, and every frame with
//! every optional field, carrying those values. `CAIRN_BLESS=1 cargo test -p cairn-sync
//! vectors` rewrites the files; the test fails when they are stale. `tools/verifier`
//! (`cairn-verify vectors`) recomputes each from the spec alone.

use std::collections::BTreeMap;

use cairn_store::doc::{
    Assessment, AssessmentType, Checkpoint, DocType, Ecosystem, FileEntry, KeyRotation, Manifest,
    OsvAffected, OsvEvent, OsvPackage, OsvRange, Policy, Promotion, SignedDocument, Tombstone,
    Vulnerability,
};
use cairn_store::tlog::{self, Nodes, TreeHead};
use cairn_store::{merkle, Hash};
use ed25519_dalek::SigningKey;
use serde_bytes::ByteBuf;
use serde_json::{json, Value};

use crate::iblt::{Estimator, Iblt, Item, SUMMARY_CELLS};
use crate::wire::{
    code, encode, FeedHello, FeedStatus, Frame, Mode, SmallBlob, WireChange, WireCursor, WireLog,
    CELL_BYTES, PROTOCOL_VERSION,
};

/// The published test key's seed: bytes 0x00 to 0x1f.
pub fn test_key() -> SigningKey {
    let mut seed = [0u8; 32];
    for (i, b) in seed.iter_mut().enumerate() {
        *b = i as u8;
    }
    SigningKey::from_bytes(&seed)
}

/// A second key (seed 0x20 to 0x3f): the one the test key moves to in the rotation vector.
fn next_key() -> SigningKey {
    let mut seed = [0u8; 32];
    for (i, b) in seed.iter_mut().enumerate() {
        *b = 0x20 + i as u8;
    }
    SigningKey::from_bytes(&seed)
}

/// The content of the vector blob of `n` bytes: byte `i` is `i mod 251`.
pub fn blob_content(n: usize) -> Vec<u8> {
    (0..n).map(|i| (i % 251) as u8).collect()
}

const HLC: u64 = 0x0001_9a00_0000_0005;
const TIME: u64 = 1_796_000_000;

/// Every document vector: its name, its entry key (if it is one) and the document.
pub fn documents() -> Vec<(&'static str, Option<String>, SignedDocument)> {
    let key = test_key();
    let sign = |r: Result<SignedDocument, _>| r.expect("vector documents sign");
    let small = blob_content(5);
    let big = blob_content(100_000);
    let manifest = Manifest {
        v: 1,
        feed: "pypi".into(),
        ecosystem: Ecosystem::Pypi,
        name: "demo".into(),
        version: "1.0".into(),
        files: vec![
            FileEntry {
                name: "demo-1.0.tar.gz".into(),
                blob: Hash::of(&big),
                size: big.len() as u64,
                digests: BTreeMap::from([(
                    "sha256".into(),
                    "0000000000000000000000000000000000000000000000000000000000000000".into(),
                )]),
            },
            FileEntry {
                name: "demo-1.0.txt".into(),
                blob: Hash::of(&small),
                size: small.len() as u64,
                digests: BTreeMap::new(),
            },
        ],
        metadata: BTreeMap::from([(
            "requires_python".into(),
            ciborium::Value::Text(">=3.9".into()),
        )]),
        hlc: HLC,
    };
    let manifest = sign(SignedDocument::sign(&manifest, &key));
    let scoped = Manifest {
        v: 1,
        feed: "npm".into(),
        ecosystem: Ecosystem::Npm,
        name: "@scope/pkg".into(),
        version: "2.0.0".into(),
        files: vec![FileEntry {
            name: "pkg-2.0.0.tgz".into(),
            blob: Hash::of(&small),
            size: small.len() as u64,
            digests: BTreeMap::new(),
        }],
        metadata: BTreeMap::new(),
        hlc: HLC + 1,
    };
    let scoped = sign(SignedDocument::sign(&scoped, &key));
    let tombstone = sign(SignedDocument::sign(
        &Tombstone {
            v: 1,
            feed: "pypi".into(),
            key: "demo/0.9".into(),
            hlc: HLC + 2,
            previous: Some(Hash::of(b"the document demo/0.9 held")),
        },
        &key,
    ));
    let vulnerability = sign(SignedDocument::sign(
        &Vulnerability {
            v: 1,
            id: "OSV-2026-1".into(),
            modified: "2026-11-01T00:00:00Z".into(),
            published: None,
            withdrawn: None,
            aliases: vec!["CVE-2026-0001".into()],
            summary: Some("demo mishandles input".into()),
            details: None,
            severity: vec![],
            affected: vec![OsvAffected {
                package: OsvPackage {
                    ecosystem: "PyPI".into(),
                    name: "demo".into(),
                    purl: None,
                },
                ranges: vec![OsvRange {
                    range_type: "ECOSYSTEM".into(),
                    repo: None,
                    events: vec![
                        OsvEvent {
                            introduced: Some("0".into()),
                            ..OsvEvent::default()
                        },
                        OsvEvent {
                            fixed: Some("1.1".into()),
                            ..OsvEvent::default()
                        },
                    ],
                }],
                versions: vec!["1.0".into()],
            }],
            references: vec![],
            hlc: HLC + 3,
        },
        &key,
    ));
    let assessment_type = sign(SignedDocument::sign(
        &AssessmentType {
            v: 1,
            name: "Blocked".into(),
            blocking: true,
            description: "downloads of affected versions are refused".into(),
            hlc: HLC + 4,
        },
        &key,
    ));
    let assessment = sign(SignedDocument::sign(
        &Assessment {
            v: 1,
            id: "a1".into(),
            vulnerability: "OSV-2026-1".into(),
            assessment_type: "Blocked".into(),
            comment: "until 1.1 is vetted".into(),
            author: "security@example.com".into(),
            created: TIME,
            expires: Some(TIME + 86_400),
            hlc: HLC + 5,
        },
        &key,
    ));
    let policy = sign(SignedDocument::sign(
        &Policy {
            v: 1,
            name: "default".into(),
            feeds: vec!["pypi".into()],
            unassessed: Some("Caution".into()),
            hlc: HLC + 6,
        },
        &key,
    ));
    let promotion = sign(SignedDocument::sign(
        &Promotion {
            v: 1,
            ecosystem: Ecosystem::Pypi,
            from: "staging".into(),
            to: "pypi".into(),
            name: "demo".into(),
            version: "1.0".into(),
            source: Hash::of(b"the staging manifest of demo 1.0"),
            manifest: manifest.id(),
            by: "token 5f3a (release CI)".into(),
            time: TIME,
            hlc: HLC + 7,
        },
        &key,
    ));
    let leaves = feed_entries(&manifest, &tombstone);
    let summary = merkle::summarize(leaves.iter().map(|(k, d)| (k.as_str(), d)));
    let checkpoint = sign(SignedDocument::sign(
        &Checkpoint {
            v: 1,
            feed: "pypi".into(),
            root: Hash::from_bytes(*summary.fingerprint.as_bytes()),
            count: summary.count,
            epoch: 0x0123_4567_89ab_cdef,
            seq: 42,
            time: TIME,
            expires: TIME + 7 * 86_400,
            covers: Vec::new(),
            filter: None,
        },
        &key,
    ));
    let rotation = sign(SignedDocument::sign(
        &KeyRotation {
            v: 1,
            old: key.verifying_key().to_bytes(),
            new: next_key().verifying_key().to_bytes(),
            time: TIME,
        },
        &key,
    ));
    let log = log_of(&[checkpoint.bytes()]);
    let tree_head = sign(SignedDocument::sign(
        &TreeHead {
            v: 1,
            size: 1,
            root: log.root(1).unwrap(),
            time: TIME,
        },
        &key,
    ));
    vec![
        ("manifest", Some("demo/1.0".into()), manifest),
        (
            "manifest-npm-scoped",
            Some("@scope/pkg/2.0.0".into()),
            scoped,
        ),
        ("tombstone", Some("demo/0.9".into()), tombstone),
        (
            "vulnerability",
            Some("vulnerability/OSV-2026-1".into()),
            vulnerability,
        ),
        (
            "assessment-type",
            Some("assessment-type/Blocked".into()),
            assessment_type,
        ),
        ("assessment", Some("assessment/a1".into()), assessment),
        ("policy", Some("policy/default".into()), policy),
        (
            "promotion",
            Some("promotion/pypi/demo/1.0".into()),
            promotion,
        ),
        ("checkpoint", None, checkpoint),
        ("key-rotation", None, rotation),
        ("tree-head", None, tree_head),
    ]
}

fn doc(name: &str) -> SignedDocument {
    documents()
        .into_iter()
        .find(|(n, _, _)| *n == name)
        .map(|(_, _, d)| d)
        .expect("a vector document")
}

/// The vector feed `pypi`: the manifest, the tombstone, and two entries naming made-up ids.
fn feed_entries(manifest: &SignedDocument, tombstone: &SignedDocument) -> Vec<(String, Hash)> {
    vec![
        ("demo/1.0".into(), manifest.id()),
        ("demo/0.9".into(), tombstone.id()),
        ("other/3".into(), Hash::of(b"other/3")),
        ("zeta/0.1.0".into(), Hash::of(b"zeta/0.1.0")),
    ]
}

/// An in-memory log of `entries`.
struct MemLog(std::collections::HashMap<(u32, u64), Hash>);

impl Nodes for MemLog {
    fn node(&self, level: u32, index: u64) -> Result<Hash, cairn_store::StoreError> {
        self.0
            .get(&(level, index))
            .copied()
            .ok_or(cairn_store::StoreError::CorruptRecord {
                what: "vector log",
                detail: format!("{level}/{index}"),
            })
    }
}

fn log_of(entries: &[&[u8]]) -> MemLog {
    let mut log = MemLog(Default::default());
    for (i, e) in entries.iter().enumerate() {
        for (l, n, h) in tlog::append_nodes(&log, i as u64, tlog::leaf_hash(e)).unwrap() {
            log.0.insert((l, n), h);
        }
    }
    log
}

fn items_of(entries: &[(String, Hash)]) -> Vec<Item> {
    entries
        .iter()
        .map(|(k, d)| {
            Item::new(
                merkle::key_hash(k).as_bytes(),
                merkle::leaf(k, d).as_bytes(),
            )
        })
        .collect()
}

/// The `summary` status's table and estimator of feed `pypi`'s items.
fn summary_of(entries: &[(String, Hash)]) -> (u64, Vec<u8>, Vec<u8>) {
    let seed = crate::proto::summary_seed("pypi");
    let mut t = Iblt::new(SUMMARY_CELLS, seed).unwrap();
    let mut e = Estimator::new();
    for i in items_of(entries) {
        t.insert(&i);
        e.insert(&i);
    }
    (seed, crate::proto::pack_cells(&t), e.as_bytes().to_vec())
}

fn buckets_of(entries: &[(String, Hash)]) -> Vec<u8> {
    let mut bits = vec![0u8; 32];
    for (k, _) in entries {
        let b = merkle::key_hash(k).as_bytes()[0] as usize;
        bits[b / 8] |= 1 << (b % 8);
    }
    bits
}

fn pack_items(items: &[Item]) -> Vec<u8> {
    items
        .iter()
        .flat_map(|i| [i.key.to_be_bytes(), i.leaf.to_be_bytes()].concat())
        .collect()
}

/// The IBLT vector: the feed's items in 12 cells (k = 3 per partition), seed 7.
fn sketch_cells(entries: &[(String, Hash)]) -> (u64, Vec<u8>) {
    let seed = 7;
    let mut t = Iblt::new(12, seed).unwrap();
    for i in items_of(entries) {
        t.insert(&i);
    }
    (seed, crate::proto::pack_cells(&t))
}

/// A blob's encoding for `groups` (raw bytes for a blob of at most 16 KiB), and its outboard.
fn blob_encoding(content: &[u8], groups: &[(u64, u64)]) -> (Vec<u8>, Vec<u8>) {
    let dir = tempfile::tempdir().unwrap();
    let store = cairn_store::Store::init(&dir.path().join("s"), Default::default()).unwrap();
    let b = store.put_blob(content).unwrap();
    let mut out = Vec::new();
    store.encode_blob(&b.hash, groups, &mut out).unwrap();
    let outboard = if content.len() as u64 > cairn_store::blob::INLINE_MAX {
        let ingested = cairn_store::blob::ingest(content, dir.path()).unwrap();
        match ingested {
            cairn_store::blob::Ingested::Staged(s) => std::fs::read(s.outboard_path()).unwrap(),
            cairn_store::blob::Ingested::Inline { .. } => Vec::new(),
        }
    } else {
        Vec::new()
    };
    (out, outboard)
}

/// Every frame kind, each optional field in at least one, carrying the vector values.
pub fn frames() -> Vec<(&'static str, Frame)> {
    let (manifest, tombstone, checkpoint) = (doc("manifest"), doc("tombstone"), doc("checkpoint"));
    let entries = feed_entries(&manifest, &tombstone);
    let summary = merkle::summarize(entries.iter().map(|(k, d)| (k.as_str(), d)));
    let (root, count) = (*summary.fingerprint.as_bytes(), summary.count);
    let cursor = WireCursor {
        epoch: 0x0123_4567_89ab_cdef,
        seq: 42,
    };
    let cp = || Some(checkpoint.bytes().to_vec());
    let small = blob_content(5);
    let small_blob = SmallBlob {
        data: small.clone(),
    };
    let big = blob_content(100_000);
    let big_hash = *Hash::of(&big).as_bytes();
    let items = items_of(&entries);
    let (seed, cells) = sketch_cells(&entries);
    let (_, summary_cells, estimator) = summary_of(&entries);
    let summary_status = FeedStatus::Summary {
        root,
        count,
        cursor,
        cells: summary_cells,
        estimator,
        checkpoint: cp(),
        collected: HLC,
    };
    let head = doc("tree-head");
    let feed_hello = |since, checkpoint, collected| FeedHello {
        feed: "pypi".into(),
        root,
        count,
        since,
        filter: None,
        checkpoint,
        collected,
    };
    let hello = |mode, feeds, heads| Frame::Hello {
        version: PROTOCOL_VERSION,
        token: "cairn_rt_example".into(),
        mode,
        feeds,
        heads,
        notify: false,
        max_rate: 0,
    };
    let key_prefix = |k: &str| merkle::key_hash(k).as_bytes()[..8].to_vec();
    vec![
        (
            "hello",
            hello(Mode::Pull, vec![feed_hello(Some(cursor), None, 0)], vec![]),
        ),
        (
            "hello-push",
            hello(Mode::Push, vec![feed_hello(None, cp(), 0)], vec![]),
        ),
        (
            "hello-mirror",
            hello(Mode::Mirror, vec![feed_hello(None, cp(), HLC)], vec![]),
        ),
        (
            "hello-heads",
            hello(
                Mode::Pull,
                vec![feed_hello(None, None, 0)],
                vec![ByteBuf::from(head.bytes().to_vec())],
            ),
        ),
        (
            "hello-filtered",
            hello(
                Mode::Pull,
                vec![FeedHello {
                    filter: Some(cairn_store::doc::Filter {
                        include: vec!["cairn-*".into()],
                        exclude: vec!["cairn-internal-?".into()],
                    }),
                    ..feed_hello(Some(cursor), None, 0)
                }],
                vec![],
            ),
        ),
        (
            "hello-notify-rate",
            Frame::Hello {
                version: PROTOCOL_VERSION,
                token: "cairn_rt_example".into(),
                mode: Mode::Pull,
                feeds: vec![feed_hello(None, None, 0)],
                heads: vec![],
                notify: true,
                max_rate: 2_500_000,
            },
        ),
        (
            "notify",
            Frame::Notify {
                feeds: vec!["pypi".into(), "@system".into()],
            },
        ),
        (
            "hello-reply-equal",
            Frame::HelloReply {
                feeds: vec![FeedStatus::Equal {
                    cursor,
                    checkpoint: cp(),
                }],
                log: None,
            },
        ),
        (
            "hello-reply-log",
            Frame::HelloReply {
                feeds: vec![FeedStatus::Log {
                    root,
                    count,
                    cursor,
                    changes: vec![
                        WireChange {
                            key: "demo/1.0".into(),
                            doc: Some(manifest.bytes().to_vec()),
                        },
                        WireChange {
                            key: "gone/1".into(),
                            doc: None,
                        },
                    ],
                    checkpoint: cp(),
                }],
                log: None,
            },
        ),
        (
            "hello-reply-summary",
            Frame::HelloReply {
                feeds: vec![summary_status.clone()],
                log: None,
            },
        ),
        (
            "hello-reply-all",
            Frame::HelloReply {
                feeds: vec![FeedStatus::All {
                    root,
                    count,
                    cursor,
                    checkpoint: cp(),
                }],
                log: None,
            },
        ),
        (
            "hello-reply-refused",
            Frame::HelloReply {
                feeds: vec![FeedStatus::Refused {
                    code: code::UNAUTHORIZED,
                    reason: "bad token".into(),
                }],
                log: None,
            },
        ),
        (
            "hello-reply-log-heads",
            Frame::HelloReply {
                feeds: vec![FeedStatus::Equal {
                    cursor,
                    checkpoint: cp(),
                }],
                log: Some(WireLog {
                    head: Some(head.bytes().to_vec()),
                    proofs: vec![ByteBuf::from(Vec::new())],
                    heads: vec![ByteBuf::from(head.bytes().to_vec())],
                }),
            },
        ),
        (
            "summary-request",
            Frame::SummaryRequest {
                feed: "pypi".into(),
            },
        ),
        (
            "summary",
            Frame::Summary {
                feed: "pypi".into(),
                status: summary_status,
            },
        ),
        (
            "sketch",
            Frame::Sketch {
                feed: "pypi".into(),
                buckets: buckets_of(&entries),
                seed,
                cells,
            },
        ),
        (
            "sketch-failed",
            Frame::SketchFailed {
                feed: "pypi".into(),
            },
        ),
        (
            "difference",
            Frame::Difference {
                feed: "pypi".into(),
                mine: pack_items(&items[..1]),
                yours: pack_items(&items[1..3]),
            },
        ),
        (
            "item-list",
            Frame::ItemList {
                feed: "pypi".into(),
                buckets: buckets_of(&entries),
                items: pack_items(&items),
                last: true,
            },
        ),
        (
            "item-list-page",
            Frame::ItemList {
                feed: "pypi".into(),
                buckets: buckets_of(&entries[..1]),
                items: pack_items(&items[..1]),
                last: false,
            },
        ),
        (
            "diff",
            Frame::Diff {
                feed: "pypi".into(),
                docs: vec![ByteBuf::from(manifest.bytes().to_vec())],
                remove: key_prefix("other/3"),
                want: vec![],
                absent: vec![],
                blobs: vec![small_blob.clone()],
                last: true,
                more: false,
            },
        ),
        (
            "diff-push",
            Frame::Diff {
                feed: "pypi".into(),
                docs: vec![],
                remove: vec![],
                want: [key_prefix("demo/1.0"), key_prefix("zeta/0.1.0")].concat(),
                absent: vec![],
                blobs: vec![],
                last: true,
                more: false,
            },
        ),
        (
            "diff-mirror",
            Frame::Diff {
                feed: "pypi".into(),
                docs: vec![ByteBuf::from(tombstone.bytes().to_vec())],
                remove: vec![],
                want: [key_prefix("demo/1.0"), key_prefix("zeta/0.1.0")].concat(),
                absent: key_prefix("zeta/0.1.0"),
                blobs: vec![],
                last: false,
                more: false,
            },
        ),
        (
            "diff-more",
            Frame::Diff {
                feed: "pypi".into(),
                docs: vec![],
                remove: key_prefix("other/3"),
                want: vec![],
                absent: vec![],
                blobs: vec![],
                last: false,
                more: true,
            },
        ),
        (
            "docs",
            Frame::Docs {
                feed: "pypi".into(),
                docs: vec![ByteBuf::from(manifest.bytes().to_vec())],
                blobs: vec![small_blob],
                last: true,
                seq: 3,
            },
        ),
        (
            "want-blobs",
            Frame::WantBlobs {
                blobs: vec![crate::wire::BlobRequest {
                    hash: big_hash,
                    size: big.len() as u64,
                    groups: vec![(0, 2), (5, 7)],
                }],
            },
        ),
        (
            "blob-piece",
            Frame::BlobPiece {
                hash: big_hash,
                size: big.len() as u64,
                groups: vec![(5, 7)],
                data: blob_encoding(&big, &[(5, 7)]).0,
            },
        ),
        (
            "blob-stream",
            Frame::BlobStream {
                hash: big_hash,
                size: big.len() as u64,
                groups: vec![(0, 2)],
                len: blob_encoding(&big, &[(0, 2)]).0.len() as u64,
            },
        ),
        (
            "done",
            Frame::Done {
                feed: "pypi".into(),
                root,
                count,
                checkpoint: cp(),
            },
        ),
        (
            "feed-failed",
            Frame::FeedFailed {
                feed: "pypi".into(),
                code: code::GUARD_RAIL,
                reason: "would delete 90%".into(),
            },
        ),
        (
            "rotation-request",
            Frame::RotationRequest {
                key: test_key().verifying_key().to_bytes(),
            },
        ),
        (
            "rotation",
            Frame::Rotation {
                statements: vec![ByteBuf::from(doc("key-rotation").bytes().to_vec())],
            },
        ),
        (
            "error",
            Frame::Error {
                code: code::VERSION,
                reason: "protocol version 2 is not supported".into(),
            },
        ),
    ]
}

/// [`frames`], built once (they sign documents and encode blobs).
pub fn all_frames() -> &'static [(&'static str, Frame)] {
    static FRAMES: std::sync::OnceLock<Vec<(&'static str, Frame)>> = std::sync::OnceLock::new();
    FRAMES.get_or_init(frames)
}

fn hx(b: &[u8]) -> String {
    hex::encode(b)
}

/// The frame vector file's text: `name: hex` per line, length prefix included.
pub fn frames_text() -> String {
    let mut out = String::from("# cairn/sync/6 frame vectors: name, then the frame with its 4-byte length prefix, in hex.\n# The documents, blobs, items and cells they carry are the ones of documents.json, merkle.json and blobs.json.\n# Generated by `CAIRN_BLESS=1 cargo test -p cairn-sync vectors`; checked byte for byte by that test.\n");
    for (name, frame) in frames() {
        out.push_str(&format!("{name}: {}\n", hx(&encode(&frame))));
    }
    out
}

/// documents.json: the test key and every document type.
pub fn documents_json() -> Value {
    let key = test_key();
    let docs: Vec<Value> = documents()
        .into_iter()
        .map(|(name, entry, d)| {
            let payload =
                cairn_store::cbor::decode_canonical_value(&ciborium_payload(d.bytes()), 1 << 20)
                    .map(|_| ())
                    .is_ok();
            assert!(payload, "{name}: payload is canonical CBOR");
            json!({
                "name": name,
                "type": d.doc_type().as_str(),
                "entry_key": entry,
                "signer": hx(d.signer().as_bytes()),
                "payload": hx(&ciborium_payload(d.bytes())),
                "bytes": hx(d.bytes()),
                "id": d.id().to_hex(),
            })
        })
        .collect();
    json!({
        "comment": "Signed documents (wire-spec section 1 and 14). The test key's ed25519 seed is bytes 0x00..0x1f; ed25519 signatures are deterministic, so bytes and ids are reproducible. `payload` is the CBOR byte string's content; `id` is BLAKE3 of `bytes`.",
        "seed": hx(&(0u8..32).collect::<Vec<u8>>()),
        "public_key": hx(&key.verifying_key().to_bytes()),
        "types": DocType::ALL.iter().map(|t| t.as_str()).collect::<Vec<_>>(),
        "documents": docs,
    })
}

/// The payload byte string of an envelope.
fn ciborium_payload(envelope: &[u8]) -> Vec<u8> {
    let v: ciborium::Value = ciborium::from_reader(envelope).unwrap();
    match v {
        ciborium::Value::Array(a) => match &a[3] {
            ciborium::Value::Bytes(b) => b.clone(),
            _ => panic!("payload is a byte string"),
        },
        _ => panic!("an envelope is an array"),
    }
}

/// merkle.json: a feed's keys, leaves and items, its root, level-1 summary and an IBLT.
pub fn merkle_json() -> Value {
    let (manifest, tombstone) = (doc("manifest"), doc("tombstone"));
    let entries = feed_entries(&manifest, &tombstone);
    let summary = merkle::summarize(entries.iter().map(|(k, d)| (k.as_str(), d)));
    let items = items_of(&entries);
    let (seed, cells) = sketch_cells(&entries);
    let (summary_seed, summary_cells, estimator) = summary_of(&entries);
    json!({
        "comment": "Merkle values of feed `pypi` (wire-spec section 1 and 5): key_hash = BLAKE3(key); leaf; item = key_hash[..8] || leaf[..8]; root = count and the sum of leaves modulo 2^256, little-endian; summary = the `summary` status's table (12 cells, seed = BLAKE3(feed || 32 x 0xff)[..8] BE) and estimator (256 counters) of every item; the IBLT holds every item.",
        "entries": entries.iter().zip(&items).map(|((k, d), i)| json!({
            "key": k,
            "doc": d.to_hex(),
            "key_hash": merkle::key_hash(k).to_hex(),
            "leaf": merkle::leaf(k, d).to_hex(),
            "item": hx(&pack_items(std::slice::from_ref(i))),
        })).collect::<Vec<_>>(),
        "root": { "count": summary.count, "fingerprint": summary.fingerprint.to_hex() },
        "summary": {
            "seed": summary_seed,
            "cells": hx(&summary_cells),
            "estimator": hx(&estimator),
        },
        "buckets": hx(&buckets_of(&entries)),
        "iblt": { "seed": seed, "cells": 12, "cell_bytes": CELL_BYTES, "packed": hx(&cells) },
    })
}

/// blobs.json: the hash, outboard and encodings of blobs around the chunk-group boundaries.
pub fn blobs_json() -> Value {
    let mut out = Vec::new();
    for size in [
        0usize, 1, 1024, 16_384, 16_385, 32_768, 32_769, 49_153, 100_000,
    ] {
        let content = blob_content(size);
        let groups = (size as u64).div_ceil(16_384).max(1);
        let (whole, outboard) = blob_encoding(&content, &[(0, groups)]);
        let mut ranges = Vec::new();
        if size > 16_384 {
            for r in [(0, 1), (groups - 1, groups), (1, groups)] {
                if r.0 >= r.1 {
                    continue;
                }
                let (enc, _) = blob_encoding(&content, &[r]);
                ranges.push(json!({
                    "groups": [[r.0, r.1]],
                    "len": enc.len(),
                    "blake3": Hash::of(&enc).to_hex(),
                    "encoding": if enc.len() <= 20_000 { Value::from(hx(&enc)) } else { Value::Null },
                }));
            }
        }
        out.push(json!({
            "size": size,
            "hash": Hash::of(&content).to_hex(),
            "outboard": hx(&outboard),
            "whole": {
                "len": whole.len(),
                "blake3": Hash::of(&whole).to_hex(),
            },
            "ranges": ranges,
        }));
    }
    json!({
        "comment": "Blob encodings (wire-spec section 6): content byte i is i mod 251; chunk groups of 16 KiB; a blob of at most 16 KiB travels raw with no outboard; `outboard` is the post-order list of (left, right) chaining-value pairs; an encoding of ranges is the pre-order list of the pairs on the paths to the groups, each group's bytes after the pairs above it. `encoding` is given in full when at most 20,000 bytes, else by length and BLAKE3.",
        "blobs": out,
    })
}

/// tlog.json: a log of eight entries (checkpoints' bytes), its roots, proofs and a tree head.
pub fn tlog_json() -> Value {
    let entries: Vec<Vec<u8>> = (0..8u8).map(|i| vec![i; i as usize + 1]).collect();
    let refs: Vec<&[u8]> = entries.iter().map(Vec::as_slice).collect();
    let log = log_of(&refs);
    let roots: Vec<Value> = (0..=8u64)
        .map(|n| json!({ "size": n, "root": log.root(n).unwrap().to_hex() }))
        .collect();
    let mut inclusion = Vec::new();
    for (i, n) in [(0u64, 1u64), (0, 8), (5, 8), (6, 7), (2, 3)] {
        inclusion.push(json!({
            "index": i, "size": n,
            "proof": log.inclusion(i, n).unwrap().iter().map(Hash::to_hex).collect::<Vec<_>>(),
        }));
    }
    let mut consistency = Vec::new();
    for (m, n) in [(1u64, 8u64), (3, 7), (4, 8), (6, 8), (5, 5)] {
        consistency.push(json!({
            "first": m, "second": n,
            "proof": log.consistency(m, n).unwrap().iter().map(Hash::to_hex).collect::<Vec<_>>(),
        }));
    }
    let head = doc("tree-head");
    json!({
        "comment": "The transparency log (wire-spec section 16): leaf = BLAKE3(0x00 || entry), node = BLAKE3(0x01 || left || right), the empty log's root is BLAKE3(\"\"), proofs as in RFC 9162 section 2.1. Entry i is i+1 bytes of value i. `head` is the tree-head document of documents.json: the log holding the checkpoint vector alone.",
        "entries": entries.iter().map(|e| hx(e)).collect::<Vec<_>>(),
        "leaves": entries.iter().map(|e| tlog::leaf_hash(e).to_hex()).collect::<Vec<_>>(),
        "roots": roots,
        "inclusion": inclusion,
        "consistency": consistency,
        "head": hx(head.bytes()),
        "head_log_entry": hx(doc("checkpoint").bytes()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::FrameReader;

    fn vector_dir() -> std::path::PathBuf {
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../wire-spec/vectors")
    }

    /// Compares (or with CAIRN_BLESS, writes) one vector file.
    fn fresh(name: &str, text: &str) {
        let path = vector_dir().join(name);
        if std::env::var_os("CAIRN_BLESS").is_some() {
            std::fs::create_dir_all(vector_dir()).unwrap();
            std::fs::write(&path, text).unwrap();
        }
        let on_disk = std::fs::read_to_string(&path)
            .unwrap_or_else(|_| panic!("wire-spec/vectors/{name} exists"));
        assert!(
            on_disk == text,
            "wire-spec/vectors/{name} is stale: run CAIRN_BLESS=1 cargo test -p cairn-sync vectors and review the change"
        );
    }

    #[test]
    fn vectors_are_fresh_and_decode_to_their_frames() {
        let text = frames_text();
        fresh("frames.txt", &text);
        for ((name, frame), line) in frames()
            .into_iter()
            .zip(text.lines().filter(|l| !l.starts_with('#')))
        {
            let hex = line.strip_prefix(&format!("{name}: ")).unwrap();
            let bytes = hex::decode(hex).unwrap();
            let mut r = FrameReader::default();
            r.push(&bytes);
            assert_eq!(r.next_frame().unwrap(), Some(frame), "{name}");
            assert_eq!(r.pending(), 0, "{name}");
        }
        for (name, value) in [
            ("documents.json", documents_json()),
            ("merkle.json", merkle_json()),
            ("blobs.json", blobs_json()),
            ("tlog.json", tlog_json()),
        ] {
            fresh(
                name,
                &(serde_json::to_string_pretty(&value).unwrap() + "\n"),
            );
        }
    }

    #[test]
    fn vector_values_are_what_they_claim() {
        // Every document verifies, and its type's payload decodes.
        for (name, _, d) in documents() {
            let again = SignedDocument::decode(d.bytes()).unwrap();
            assert_eq!(again.id(), Hash::of(d.bytes()), "{name}");
            assert_eq!(
                again.signer().as_bytes(),
                &test_key().verifying_key().to_bytes()
            );
        }
        // The summary's estimator counts every item once (against an empty one); the sketch
        // has 4k cells and subtracting an empty table of the same shape and peeling gives the
        // items back.
        let (m, t) = (doc("manifest"), doc("tombstone"));
        let entries = feed_entries(&m, &t);
        let (_, summary_cells, estimator) = summary_of(&entries);
        assert_eq!(summary_cells.len(), SUMMARY_CELLS * CELL_BYTES);
        let e = Estimator::from_bytes(&estimator).unwrap();
        assert_eq!(e.difference(&Estimator::new()), entries.len() as f64);
        let (seed, cells) = sketch_cells(&entries);
        assert_eq!(cells.len(), 12 * CELL_BYTES);
        let mut t = Iblt::new(12, seed).unwrap();
        for i in items_of(&entries) {
            t.insert(&i);
        }
        let (mut found, _) = t.decode().unwrap();
        found.sort();
        let mut want = items_of(&entries);
        want.sort();
        assert_eq!(found, want);
        // The small blob the manifest names is BLAKE3 of its bytes; the big one's whole
        // encoding is its bytes plus the outboard's pairs.
        let big = blob_content(100_000);
        let (whole, outboard) = blob_encoding(&big, &[(0, 7)]);
        assert_eq!(whole.len(), big.len() + outboard.len());
        assert_eq!(
            outboard.len() as u64,
            cairn_store::blob::outboard_size(100_000)
        );
    }
}
