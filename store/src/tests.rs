//! Store-level tests: publishing, Merkle summaries, change log, GC, verification, bad input.

use std::collections::BTreeMap;
use std::fs;

use proptest::prelude::*;

use crate::blob::CHUNK_GROUP_BYTES;
use crate::*;

fn store() -> (tempfile::TempDir, Store) {
    let dir = tempfile::tempdir().unwrap();
    let s = Store::init(dir.path(), StoreOptions::default()).unwrap();
    (dir, s)
}

fn package(s: &Store, name: &str, version: &str, content: &[u8]) -> NewPackage {
    let b = s.put_blob(content).unwrap();
    NewPackage {
        name: name.into(),
        version: version.into(),
        files: vec![NewFile {
            name: format!("{name}-{version}.bin"),
            blob: b.hash,
            size: b.size,
            digests: BTreeMap::new(),
        }],
        metadata: BTreeMap::new(),
    }
}

fn read(s: &Store, hash: &Hash) -> Result<Vec<u8>, StoreError> {
    let mut out = Vec::new();
    s.read_blob_to(hash, &mut out)?;
    Ok(out)
}

#[test]
fn amending_metadata_keeps_the_files_and_changes_the_root() {
    let (_d, s) = store();
    s.create_feed("c", Ecosystem::Cargo).unwrap();
    let p = package(&s, "foo", "1.0.0", b"crate bytes");
    let files = p.files.clone();
    s.publish("c", p).unwrap();
    let before = s.feed_summary("c").unwrap().root;
    let amend = |set: BTreeMap<String, Option<ciborium::Value>>| Amendment {
        name: "foo".into(),
        version: "1.0.0".into(),
        set,
    };
    let yank = BTreeMap::from([("yanked".to_string(), Some(ciborium::Value::Bool(true)))]);
    let r = s.amend_metadata("c", &[amend(yank.clone())]).unwrap();
    assert_eq!(r[0].outcome, PublishOutcome::Created);
    let (_, m) = s.manifest("c", "foo", "1.0.0").unwrap().unwrap();
    assert_eq!(m.metadata["yanked"], ciborium::Value::Bool(true));
    assert_eq!(m.files.len(), 1);
    assert_eq!(m.files[0].blob, files[0].blob);
    assert_ne!(s.feed_summary("c").unwrap().root, before);
    // The same change again changes nothing; removing the field restores the metadata.
    let r = s.amend_metadata("c", &[amend(yank)]).unwrap();
    assert_eq!(r[0].outcome, PublishOutcome::Unchanged);
    let unyank = BTreeMap::from([("yanked".to_string(), None)]);
    s.amend_metadata("c", &[amend(unyank)]).unwrap();
    let (_, m) = s.manifest("c", "foo", "1.0.0").unwrap().unwrap();
    assert!(!m.metadata.contains_key("yanked"));
    // A version that is not there is an error and nothing is written.
    let root = s.feed_summary("c").unwrap().root;
    assert!(matches!(
        s.amend_metadata(
            "c",
            &[Amendment {
                version: "9.9.9".into(),
                ..amend(BTreeMap::new())
            }]
        ),
        Err(StoreError::EntryNotFound { .. })
    ));
    assert_eq!(s.feed_summary("c").unwrap().root, root);
    assert!(s.verify().unwrap().ok());
}

#[test]
fn publish_get_and_dedup() {
    let (_d, s) = store();
    s.create_feed("demo", Ecosystem::Raw).unwrap();
    let big: Vec<u8> = (0..300_000u32).map(|i| (i % 253) as u8).collect();
    let p = s.publish("demo", package(&s, "x", "1", &big)).unwrap();
    assert_eq!(p.outcome, PublishOutcome::Created);
    let (_, m) = s.manifest("demo", "x", "1").unwrap().unwrap();
    assert_eq!(m.files[0].blob, Hash::of(&big));
    assert_eq!(read(&s, &m.files[0].blob).unwrap(), big);
    // The same bytes again are stored once.
    let again = s.put_blob(&big[..]).unwrap();
    assert!(again.existed);
    assert_eq!(s.backend().list().unwrap(), vec![Hash::of(&big)]);
    // Re-publishing identical content is a no-op; different content for the version is refused.
    let same = s.publish("demo", package(&s, "x", "1", &big)).unwrap();
    assert_eq!(same.outcome, PublishOutcome::Unchanged);
    let err = s
        .publish("demo", package(&s, "x", "1", b"other"))
        .unwrap_err();
    assert!(matches!(err, StoreError::VersionExists { .. }), "{err}");
    assert!(s.verify().unwrap().ok());
}

#[test]
fn a_checked_document_is_served_only_while_its_stored_bytes_hash_to_its_id() {
    let (_d, s) = store();
    s.create_feed("demo", Ecosystem::Raw).unwrap();
    let p = s.publish("demo", package(&s, "x", "1", b"one")).unwrap();
    let other = s.publish("demo", package(&s, "y", "1", b"two")).unwrap();
    // Read once: decoded, its signature checked, remembered.
    let first = s.document(&p.doc).unwrap().unwrap();
    assert_eq!(first.id(), p.doc);
    assert_eq!(s.document(&p.doc).unwrap().unwrap(), first);
    // The stored bytes change under it (another valid document's bytes): the remembered
    // check does not stand in for them.
    let swapped = s.document_bytes(&other.doc).unwrap().unwrap();
    s.db.put_cf(s.cf(crate::store::CF_DOCS), p.doc.as_bytes(), &swapped)
        .unwrap();
    let err = s.document(&p.doc).unwrap_err();
    assert!(matches!(err, StoreError::CorruptRecord { .. }), "{err}");
    assert!(s.served_document("demo", &p.doc).is_err());
    assert!(!s.verify().unwrap().ok());
}

#[test]
fn pypi_versions_gain_files() {
    let (_d, s) = store();
    s.create_feed("py", Ecosystem::Pypi).unwrap();
    s.publish("py", package(&s, "pkg", "1.0", b"wheel"))
        .unwrap();
    let mut sdist = package(&s, "pkg", "1.0", b"sdist");
    sdist.files[0].name = "pkg-1.0.tar.gz".into();
    assert_eq!(
        s.publish("py", sdist).unwrap().outcome,
        PublishOutcome::FilesAdded
    );
    let (_, m) = s.manifest("py", "pkg", "1.0").unwrap().unwrap();
    assert_eq!(m.files.len(), 2);
}

#[test]
fn bad_input_is_refused_and_changes_nothing() {
    let (_d, s) = store();
    s.create_feed("demo", Ecosystem::Raw).unwrap();
    let before = s.feed_summary("demo").unwrap();
    for name in ["a/b", "../x", "..", "x\u{0}", "x\ny", "/abs"] {
        let err = s.publish("demo", package(&s, name, "1", b"z")).unwrap_err();
        assert!(matches!(err, StoreError::Name(_)), "{name:?}: {err}");
    }
    let mut p = package(&s, "ok", "1", b"z");
    p.files[0].name = "../../etc/passwd".into();
    assert!(matches!(
        s.publish("demo", p).unwrap_err(),
        StoreError::Name(_)
    ));
    let err = s.publish("nope", package(&s, "ok", "1", b"z")).unwrap_err();
    assert!(matches!(err, StoreError::FeedNotFound { .. }));
    assert!(err.to_string().contains("cairn feed create nope"));
    let mut p = package(&s, "ok", "1", b"z");
    p.files[0].blob = Hash::of(b"never stored");
    assert!(matches!(
        s.publish("demo", p).unwrap_err(),
        StoreError::BlobNotFound { .. }
    ));
    let mut p = package(&s, "ok", "1", b"z");
    p.files[0].size = 99;
    assert!(matches!(
        s.publish("demo", p).unwrap_err(),
        StoreError::BlobSizeMismatch { .. }
    ));
    assert_eq!(s.feed_summary("demo").unwrap(), before);
    assert!(s.entries("demo").unwrap().is_empty());
}

#[test]
fn entries_come_in_pages_from_where_each_starts() {
    let (_d, s) = store();
    s.create_feed("demo", Ecosystem::Raw).unwrap();
    s.create_feed("other", Ecosystem::Raw).unwrap();
    for v in ["1", "2", "10", "3"] {
        s.publish("demo", package(&s, "x", v, v.as_bytes()))
            .unwrap();
    }
    s.publish("demo", package(&s, "x-y", "1", b"xy")).unwrap();
    s.publish("other", package(&s, "z", "1", b"z")).unwrap();
    s.delete("demo", "x", "3").unwrap();
    let all: Vec<String> = s
        .entries("demo")
        .unwrap()
        .into_iter()
        .map(|e| e.key)
        .collect();
    assert_eq!(
        all,
        ["x-y/1", "x/1", "x/10", "x/2", "x/3"],
        "byte order of the key"
    );
    for limit in 1..=6 {
        let (mut got, mut after) = (Vec::new(), None::<String>);
        loop {
            let (page, more) = s.entries_page("demo", after.as_deref(), limit).unwrap();
            assert!(page.len() <= limit);
            got.extend(page.iter().map(|e| e.key.clone()));
            if !more {
                break;
            }
            after = page.last().map(|e| e.key.clone());
        }
        assert_eq!(got, all, "pages of {limit}");
    }
    let (page, more) = s.entries_page("demo", Some("x/10"), 10).unwrap();
    assert_eq!(page.len(), 2);
    assert!(!more);
    let (page, _) = s.entries_page("demo", Some("zzz"), 10).unwrap();
    assert!(page.is_empty(), "nothing of the next feed");
}

#[test]
fn delete_writes_a_tombstone_that_changes_the_root() {
    let (_d, s) = store();
    s.create_feed("demo", Ecosystem::Raw).unwrap();
    s.publish("demo", package(&s, "x", "1", b"one")).unwrap();
    let r1 = s.feed_summary("demo").unwrap().root;
    let del = s.delete("demo", "x", "1").unwrap();
    let r2 = s.feed_summary("demo").unwrap().root;
    assert_ne!(r1.fingerprint, r2.fingerprint);
    assert_eq!(r2.count, 1, "the tombstone is an entry");
    let e = s.entry("demo", "x/1").unwrap().unwrap();
    assert_eq!(e.kind, EntryKind::Tombstone);
    assert_eq!(e.doc, del.doc);
    assert!(s.manifest("demo", "x", "1").unwrap().is_none());
    assert!(matches!(
        s.delete("demo", "x", "1").unwrap_err(),
        StoreError::EntryNotFound { .. }
    ));
    assert!(s.verify().unwrap().ok());
}

#[test]
fn change_log_returns_changes_since_a_cursor() {
    let (_d, s) = store();
    s.create_feed("demo", Ecosystem::Raw).unwrap();
    s.publish("demo", package(&s, "a", "1", b"a")).unwrap();
    let c1 = s.feed("demo").unwrap().cursor();
    s.publish("demo", package(&s, "b", "1", b"b")).unwrap();
    s.delete("demo", "a", "1").unwrap();
    match s.changes_since("demo", c1, 10).unwrap() {
        ChangesSince::Changes {
            changes,
            next,
            complete,
        } => {
            let keys: Vec<_> = changes.iter().map(|c| c.key.as_str()).collect();
            assert_eq!(keys, ["b/1", "a/1"]);
            assert_eq!(changes[1].value.unwrap().kind, EntryKind::Tombstone);
            assert_eq!(next, s.feed("demo").unwrap().cursor());
            assert!(complete);
        }
        other => panic!("{other:?}"),
    }
    let foreign = Cursor {
        epoch: c1.epoch ^ 1,
        seq: 1,
    };
    assert!(matches!(
        s.changes_since("demo", foreign, 10).unwrap(),
        ChangesSince::FullDiffNeeded { .. }
    ));
}

#[test]
fn change_log_is_trimmed_and_old_cursors_need_a_full_diff() {
    let dir = tempfile::tempdir().unwrap();
    let opts = StoreOptions {
        change_log_retain: 4,
        ..StoreOptions::default()
    };
    let s = Store::init(dir.path(), opts).unwrap();
    s.create_feed("demo", Ecosystem::Raw).unwrap();
    let start = s.feed("demo").unwrap().cursor();
    for i in 0..20 {
        s.publish("demo", package(&s, "p", &i.to_string(), &[i as u8]))
            .unwrap();
    }
    let f = s.feed("demo").unwrap();
    assert!(f.log_floor > 0);
    assert!(matches!(
        s.changes_since("demo", start, 100).unwrap(),
        ChangesSince::FullDiffNeeded { .. }
    ));
    let recent = Cursor {
        epoch: f.epoch,
        seq: f.seq - 2,
    };
    match s.changes_since("demo", recent, 100).unwrap() {
        ChangesSince::Changes { changes, .. } => assert_eq!(changes.len(), 2),
        other => panic!("{other:?}"),
    }
}

#[test]
fn merkle_children_and_entries_under_prefix() {
    let (_d, s) = store();
    s.create_feed("demo", Ecosystem::Raw).unwrap();
    let pkgs: Vec<_> = (0..300)
        .map(|i| package(&s, "p", &i.to_string(), b"same"))
        .collect();
    s.publish_many("demo", pkgs).unwrap();
    let root = s.merkle_node("demo", &[]).unwrap();
    assert_eq!(root.count, 300);
    let children = s.merkle_children("demo", &[]).unwrap();
    assert_eq!(children.iter().map(|c| c.1.count).sum::<u64>(), 300);
    let mut sum = merkle::NodeSummary::default();
    for (b, n) in &children {
        sum.fingerprint = sum.fingerprint.add(&n.fingerprint);
        let under = s.entries_under("demo", &[*b]).unwrap();
        assert_eq!(under.len() as u64, n.count);
        assert!(under
            .iter()
            .all(|(kh, e)| kh.as_bytes()[0] == *b && merkle::key_hash(&e.key) == *kh));
    }
    assert_eq!(sum.fingerprint, root.fingerprint);
    // Deeper than the stored nodes: computed from the entries.
    let (b, _) = children[0];
    let deep = s.entries_under("demo", &[b]).unwrap()[0].0;
    let n = s.merkle_node("demo", &deep.as_bytes()[..5]).unwrap();
    assert_eq!(n.count, 1);
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(12))]
    #[test]
    fn root_is_independent_of_order_and_tracks_every_change(
        versions in proptest::collection::btree_set(0u16..2000, 2..40),
        seed in any::<u64>(),
    ) {
        let versions: Vec<u16> = versions.into_iter().collect();
        let mut shuffled = versions.clone();
        // Deterministic shuffle from the seed.
        let mut rng = crate::rng::Xorshift::new(seed);
        for i in (1..shuffled.len()).rev() {
            shuffled.swap(i, rng.below(i as u64 + 1) as usize);
        }
        let (_d1, a) = store();
        let (_d2, b) = store();
        // Same signer so the documents are byte-identical apart from their clocks: compare the
        // root over (key, doc) sets rebuilt from scratch rather than across stores.
        for (s, order) in [(&a, &versions), (&b, &shuffled)] {
            s.create_feed("f", Ecosystem::Raw).unwrap();
            for v in order.iter() {
                s.publish("f", package(s, "p", &v.to_string(), &v.to_le_bytes())).unwrap();
            }
        }
        for s in [&a, &b] {
            let entries = s.entries("f").unwrap();
            let fresh = merkle::summarize(entries.iter().map(|e| (e.key.as_str(), &e.value.doc)));
            prop_assert_eq!(s.feed_summary("f").unwrap().root, fresh);
        }
        // The root must not depend on the order: rebuild a's entry set in b's order.
        let ea = a.entries("f").unwrap();
        let mut reordered: Vec<_> = ea.iter().collect();
        reordered.reverse();
        let r1 = merkle::summarize(ea.iter().map(|e| (e.key.as_str(), &e.value.doc)));
        let r2 = merkle::summarize(reordered.iter().map(|e| (e.key.as_str(), &e.value.doc)));
        prop_assert_eq!(r1, r2);
        // Any change moves the root.
        let before = a.feed_summary("f").unwrap().root;
        a.delete("f", "p", &versions[0].to_string()).unwrap();
        prop_assert_ne!(a.feed_summary("f").unwrap().root.fingerprint, before.fingerprint);
        prop_assert!(a.verify().unwrap().ok());
    }
}

#[test]
fn same_documents_in_any_order_give_the_same_stored_root() {
    // Two feeds in one store fed the same signed manifests in opposite orders.
    let (_d, s) = store();
    s.create_feed("one", Ecosystem::Raw).unwrap();
    s.create_feed("two", Ecosystem::Raw).unwrap();
    let pkgs: Vec<_> = (0..50)
        .map(|i| package(&s, "p", &i.to_string(), &[i]))
        .collect();
    s.publish_many("one", pkgs.clone()).unwrap();
    let docs: Vec<_> = s.entries("one").unwrap();
    // Rebuild "two" from "one"'s (key, doc) pairs in reverse through the Merkle summary.
    let forward = merkle::summarize(docs.iter().map(|e| (e.key.as_str(), &e.value.doc)));
    let backward = merkle::summarize(docs.iter().rev().map(|e| (e.key.as_str(), &e.value.doc)));
    assert_eq!(forward, backward);
    assert_eq!(s.feed_summary("one").unwrap().root, forward);
}

#[test]
fn tampered_blob_file_fails_get_and_verify_names_it() {
    let (_d, s) = store();
    s.create_feed("demo", Ecosystem::Raw).unwrap();
    let big = vec![7u8; 5 * CHUNK_GROUP_BYTES];
    s.publish("demo", package(&s, "x", "1", &big)).unwrap();
    let hash = Hash::of(&big);
    let path = s.backend().describe(&hash);
    let mut bytes = fs::read(&path).unwrap();
    bytes[3 * CHUNK_GROUP_BYTES] ^= 1;
    fs::write(&path, bytes).unwrap();
    let err = read(&s, &hash).unwrap_err();
    assert!(matches!(err, StoreError::CorruptBlob(_)), "{err}");
    assert!(err.to_string().contains(&hash.to_hex()));
    let report = s.verify().unwrap();
    assert!(!report.ok());
    assert!(report
        .problems
        .iter()
        .any(|p| p.kind == "blob" && p.subject == hash.to_hex() && p.detail.contains(&path)));
}

#[test]
fn deleted_blob_file_is_reported() {
    let (_d, s) = store();
    s.create_feed("demo", Ecosystem::Raw).unwrap();
    let big = vec![9u8; 3 * CHUNK_GROUP_BYTES];
    s.publish("demo", package(&s, "x", "1", &big)).unwrap();
    let hash = Hash::of(&big);
    fs::remove_file(s.backend().describe(&hash)).unwrap();
    assert!(matches!(
        read(&s, &hash).unwrap_err(),
        StoreError::BlobFileMissing { .. }
    ));
    assert!(!s.verify().unwrap().ok());
}

#[test]
fn gc_removes_only_unreferenced_blobs() {
    let (_d, s) = store();
    s.create_feed("demo", Ecosystem::Raw).unwrap();
    let keep = vec![1u8; 2 * CHUNK_GROUP_BYTES];
    let drop_me = vec![2u8; 2 * CHUNK_GROUP_BYTES];
    s.publish("demo", package(&s, "keep", "1", &keep)).unwrap();
    s.publish("demo", package(&s, "gone", "1", &drop_me))
        .unwrap();
    s.delete("demo", "gone", "1").unwrap();
    let loose = s.put_blob(&b"never published"[..]).unwrap();
    let loose_hash = loose.hash;
    // Pinned: kept.
    let r = s.gc().unwrap();
    assert_eq!(r.blobs_removed, 1);
    assert!(s.has_blob(&loose_hash).unwrap());
    drop(loose);
    let r = s.gc().unwrap();
    assert_eq!(r.blobs_removed, 1);
    assert!(!s.has_blob(&loose_hash).unwrap());
    assert!(s.has_blob(&Hash::of(&keep)).unwrap());
    assert!(!s.has_blob(&Hash::of(&drop_me)).unwrap());
    assert_eq!(s.backend().list().unwrap(), vec![Hash::of(&keep)]);
    assert!(s.verify().unwrap().ok());
}

#[test]
fn gc_gives_back_the_blob_file_space_of_what_it_removed() {
    use crate::store::{CF_BLOBS, CF_DOCS};
    let (_d, s) = store();
    s.create_feed("demo", Ecosystem::Raw).unwrap();
    let blob_files = |s: &Store| -> u64 {
        let bytes = s.blob_file_bytes(CF_DOCS) + s.blob_file_bytes(CF_BLOBS);
        assert!(bytes > 0, "RocksDB reports no blob files");
        bytes
    };
    // Eight generations of 40 packages of 3 KiB each (small blobs, kept in the database),
    // each flushed to blob files of its own. Three in four of each of the oldest two are
    // deleted, so no blob file is all garbage and only moving the live values out frees space.
    for generation in 0..8u32 {
        for i in 0..40u32 {
            let content = crate::rng::Xorshift::new(u64::from(generation * 1000 + i)).bytes(3072);
            let p = package(&s, &format!("p{generation}-{i}"), "1", &content);
            s.publish("demo", p).unwrap();
        }
        for cf in [CF_DOCS, CF_BLOBS] {
            s.db.flush_cf(s.cf(cf)).unwrap();
        }
    }
    let deleted = |generation: u32, i: u32| generation < 2 && i % 4 != 0;
    let delete = |s: &Store, generations: std::ops::Range<u32>| {
        for generation in generations {
            for i in (0..40u32).filter(|&i| deleted(generation, i)) {
                s.delete("demo", &format!("p{generation}-{i}"), "1")
                    .unwrap();
            }
        }
    };
    // A little garbage (30 blobs, under an eighth of the blob files) is only counted.
    delete(&s, 0..1);
    let before = blob_files(&s);
    let r = s.gc_with(0).unwrap();
    assert_eq!((r.blobs_removed, r.blob_file_bytes_freed), (30, 0));
    assert_eq!(blob_files(&s), before);
    // Twice as much is worth the compaction.
    delete(&s, 1..2);
    let r = s.gc_with(0).unwrap();
    assert_eq!(r.blobs_removed, 30);
    let after = blob_files(&s);
    // 60 blobs of 3 KiB and their documents went: at least the blobs' bytes came back.
    assert!(
        r.blob_file_bytes_freed >= 60 * 3072 && before - after == r.blob_file_bytes_freed,
        "blob files {before} -> {after} bytes, report says {} freed",
        r.blob_file_bytes_freed
    );
    // Everything still held reads back and checks.
    for generation in 0..8u32 {
        for i in (0..40u32).filter(|&i| !deleted(generation, i)) {
            let (_, m) = s
                .manifest("demo", &format!("p{generation}-{i}"), "1")
                .unwrap()
                .unwrap();
            assert_eq!(read(&s, &m.files[0].blob).unwrap().len(), 3072);
        }
    }
    assert!(s.verify().unwrap().ok());
    // Nothing removed: no compaction, nothing freed.
    assert_eq!(s.gc_with(0).unwrap().blob_file_bytes_freed, 0);
}

#[test]
fn gc_running_beside_publishers_never_removes_a_referenced_blob() {
    let (_d, s) = store();
    s.create_feed("demo", Ecosystem::Raw).unwrap();
    std::thread::scope(|scope| {
        let publisher = scope.spawn(|| {
            for i in 0..200u32 {
                let content = [i.to_le_bytes().as_slice(), &[0u8; 20_000]].concat();
                s.publish("demo", package(&s, "p", &i.to_string(), &content))
                    .unwrap();
            }
        });
        for _ in 0..20 {
            s.gc().unwrap();
        }
        publisher.join().unwrap();
    });
    s.gc().unwrap();
    let report = s.verify().unwrap();
    assert!(report.ok(), "{:?}", report.problems);
    assert_eq!(s.entries("demo").unwrap().len(), 200);
}

#[test]
fn reopen_keeps_everything_and_cleans_temp_files() {
    let dir = tempfile::tempdir().unwrap();
    let root = {
        let s = Store::init(dir.path(), StoreOptions::default()).unwrap();
        s.create_feed("demo", Ecosystem::Raw).unwrap();
        s.publish("demo", package(&s, "x", "1", b"abc")).unwrap();
        s.feed_summary("demo").unwrap()
    };
    fs::write(dir.path().join("tmp").join("leftover.data"), b"junk").unwrap();
    let s = Store::open(dir.path(), StoreOptions::default()).unwrap();
    assert_eq!(s.feed_summary("demo").unwrap(), root);
    assert_eq!(fs::read_dir(dir.path().join("tmp")).unwrap().count(), 0);
    assert!(matches!(
        Store::init(dir.path(), StoreOptions::default()).unwrap_err(),
        StoreError::AlreadyInitialized { .. }
    ));
    // A second open of the same directory is refused while the first holds it.
    assert!(matches!(
        Store::open(dir.path(), StoreOptions::default()).unwrap_err(),
        StoreError::Locked { .. }
    ));
}

#[test]
fn untrusted_signer_is_reported_by_verify() {
    let (_d, s) = store();
    s.create_feed("demo", Ecosystem::Raw).unwrap();
    s.publish("demo", package(&s, "x", "1", b"abc")).unwrap();
    let me = s.identity().public_key();
    assert!(s.trust_remove(TRUST_ALL, &me).unwrap());
    let report = s.verify().unwrap();
    assert!(report
        .problems
        .iter()
        .any(|p| p.detail.contains("untrusted")));
    s.trust_add("demo", &me).unwrap();
    assert!(s.verify().unwrap().ok());
    assert!(s.trust_list().unwrap().contains(&("demo".to_string(), me)));
}

#[test]
fn feed_lifecycle() {
    let (_d, s) = store();
    s.create_feed("demo", Ecosystem::Npm).unwrap();
    assert!(matches!(
        s.create_feed("demo", Ecosystem::Raw).unwrap_err(),
        StoreError::FeedExists { .. }
    ));
    assert!(matches!(
        s.create_feed("../x", Ecosystem::Raw).unwrap_err(),
        StoreError::Name(_)
    ));
    let mut p = package(&s, "@acme/x", "1.0.0", b"t");
    p.files[0].name = "x-1.0.0.tgz".into();
    s.publish("demo", p).unwrap();
    assert_eq!(s.list_feeds().unwrap().len(), 1);
    let old_epoch = s.feed("demo").unwrap().epoch;
    s.delete_feed("demo").unwrap();
    assert!(s.list_feeds().unwrap().is_empty());
    s.create_feed("demo", Ecosystem::Npm).unwrap();
    assert_ne!(s.feed("demo").unwrap().epoch, old_epoch);
    assert!(s.entries("demo").unwrap().is_empty());
    assert_eq!(s.feed_summary("demo").unwrap().root.count, 0);
    assert!(s.verify().unwrap().ok());
}

mod replication {
    use super::*;
    use crate::doc::{AssessmentType, PAYLOAD_VERSION};
    use crate::replica::{group_count, Applied, ApplyRule};

    /// Copies every entry of `feed` from `a` to `b` the way a replication would: blobs in
    /// verified pieces, then the documents.
    fn copy_feed(
        a: &Store,
        b: &Store,
        feed: &str,
        rule: ApplyRule,
    ) -> Vec<Result<(String, Applied), StoreError>> {
        let mut docs = Vec::new();
        for e in a.entries(feed).unwrap() {
            let doc = a.document(&e.value.doc).unwrap().unwrap();
            if e.value.kind == EntryKind::Manifest {
                let m: doc::Manifest = doc.payload().unwrap();
                for f in m.files {
                    let mut incoming = b.receive_blob(f.blob, f.size).unwrap();
                    for (start, end) in incoming.missing() {
                        let mut piece = Vec::new();
                        a.encode_blob(&f.blob, &[(start, end)], &mut piece).unwrap();
                        incoming.write_piece(&[(start, end)], &piece).unwrap();
                    }
                    b.finish_blob(incoming).unwrap();
                }
            }
            docs.push(doc.bytes().to_vec());
        }
        b.apply_remote(feed, &docs, rule).unwrap()
    }

    fn pair() -> (tempfile::TempDir, Store, tempfile::TempDir, Store) {
        let (da, a) = store();
        let (db, b) = store();
        b.trust_add("demo", &a.identity().public_key()).unwrap();
        a.create_feed("demo", Ecosystem::Raw).unwrap();
        b.create_feed("demo", Ecosystem::Raw).unwrap();
        (da, a, db, b)
    }

    #[test]
    fn applied_documents_reproduce_the_root() {
        let (_da, a, _db, b) = pair();
        a.publish("demo", package(&a, "big", "1", &vec![3u8; 200_000]))
            .unwrap();
        a.publish("demo", package(&a, "small", "1", b"tiny"))
            .unwrap();
        a.publish("demo", package(&a, "gone", "1", b"bye")).unwrap();
        a.delete("demo", "gone", "1").unwrap();
        let results = copy_feed(&a, &b, "demo", ApplyRule::Authoritative);
        assert!(
            results
                .iter()
                .all(|r| matches!(r, Ok((_, Applied::Inserted)))),
            "{results:?}"
        );
        assert_eq!(
            a.feed_summary("demo").unwrap().root,
            b.feed_summary("demo").unwrap().root
        );
        assert!(b.verify().unwrap().ok());
        // Applying again changes nothing.
        let again = copy_feed(&a, &b, "demo", ApplyRule::Authoritative);
        assert!(again
            .iter()
            .all(|r| matches!(r, Ok((_, Applied::Unchanged)))));
    }

    #[test]
    fn untrusted_tampered_and_incomplete_documents_are_refused() {
        let (_da, a, _db, b) = pair();
        a.publish("demo", package(&a, "x", "1", b"data")).unwrap();
        let e = &a.entries("demo").unwrap()[0];
        let doc = a.document(&e.value.doc).unwrap().unwrap().bytes().to_vec();
        // Blob not there yet.
        let r = b
            .apply_remote("demo", std::slice::from_ref(&doc), ApplyRule::Authoritative)
            .unwrap();
        assert!(
            matches!(r[0], Err(StoreError::MissingBlobs { .. })),
            "{r:?}"
        );
        // A flipped bit anywhere.
        let mut bad = doc.clone();
        let n = bad.len();
        bad[n - 3] ^= 1;
        let r = b
            .apply_remote("demo", &[bad], ApplyRule::Authoritative)
            .unwrap();
        assert!(matches!(r[0], Err(StoreError::Document(_))), "{r:?}");
        // Signed by a key `b` does not trust for this feed.
        let (_dc, c) = store();
        c.create_feed("demo", Ecosystem::Raw).unwrap();
        c.publish("demo", package(&c, "y", "1", b"data")).unwrap();
        let foreign = c
            .document(&c.entries("demo").unwrap()[0].value.doc)
            .unwrap()
            .unwrap();
        b.put_blob(&b"data"[..]).unwrap();
        let r = b
            .apply_remote(
                "demo",
                &[foreign.bytes().to_vec()],
                ApplyRule::Authoritative,
            )
            .unwrap();
        assert!(
            matches!(
                r[0],
                Err(StoreError::Document(
                    crate::doc::DocumentError::UntrustedSigner { .. }
                ))
            ),
            "{r:?}"
        );
        // A manifest for another feed.
        b.create_feed("other", Ecosystem::Raw).unwrap();
        b.trust_add("other", &a.identity().public_key()).unwrap();
        let r = b
            .apply_remote("other", &[doc], ApplyRule::Authoritative)
            .unwrap();
        assert!(
            matches!(r[0], Err(StoreError::RemoteRejected { .. })),
            "{r:?}"
        );
        assert!(b.entries("demo").unwrap().is_empty());
        assert!(b.entries("other").unwrap().is_empty());
    }

    #[test]
    fn last_writer_wins_and_a_tombstone_wins_a_tie() {
        let (_da, a, _db, b) = pair();
        a.trust_add("demo", &b.identity().public_key()).unwrap();
        b.publish("demo", package(&b, "x", "1", b"old")).unwrap();
        std::thread::sleep(std::time::Duration::from_millis(5));
        a.publish("demo", package(&a, "x", "1", b"new")).unwrap();
        // a's manifest is later: it replaces b's under LWW; b's does not replace a's.
        let r = copy_feed(&a, &b, "demo", ApplyRule::LastWriterWins);
        assert!(matches!(r[0], Ok((_, Applied::Replaced))), "{r:?}");
        let r = copy_feed(&b, &a, "demo", ApplyRule::LastWriterWins);
        assert!(matches!(r[0], Ok((_, Applied::Unchanged))), "{r:?}");
        assert_eq!(
            a.feed_summary("demo").unwrap().root,
            b.feed_summary("demo").unwrap().root
        );
        let t = EntryValue {
            kind: EntryKind::Tombstone,
            doc: Hash::of(b"t"),
            hlc: 5,
        };
        let m = EntryValue {
            kind: EntryKind::Manifest,
            doc: Hash::of(b"m"),
            hlc: 5,
        };
        assert!(crate::replica::wins(&t, &m));
        assert!(!crate::replica::wins(&m, &t));
    }

    #[test]
    fn blob_transfer_resumes_and_rejects_tampered_pieces() {
        let (_da, a, _db, b) = pair();
        let data: Vec<u8> = (0..1_000_000u32).map(|i| (i % 251) as u8).collect();
        let stored = a.put_blob(&data[..]).unwrap();
        let groups = group_count(stored.size);
        {
            let mut incoming = b.receive_blob(stored.hash, stored.size).unwrap();
            let mut piece = Vec::new();
            a.encode_blob(&stored.hash, &[(0, groups / 2)], &mut piece)
                .unwrap();
            incoming.write_piece(&[(0, groups / 2)], &piece).unwrap();
            // A tampered piece is refused at the group that fails; the groups before it
            // verified and are kept, nothing of the bad one is.
            let mut bad = Vec::new();
            a.encode_blob(&stored.hash, &[(groups / 2, groups / 2 + 3)], &mut bad)
                .unwrap();
            let last = bad.len() - 100;
            bad[last] ^= 1;
            assert!(matches!(
                incoming.write_piece(&[(groups / 2, groups / 2 + 3)], &bad),
                Err(StoreError::CorruptBlob(_))
            ));
            // Dropped here: the process "dies" half way.
        }
        let mut incoming = b.receive_blob(stored.hash, stored.size).unwrap();
        assert_eq!(incoming.missing(), vec![(groups / 2 + 2, groups)]);
        assert_eq!(
            incoming.bytes_present(),
            (groups / 2 + 2) * CHUNK_GROUP_BYTES as u64
        );
        let mut rest = Vec::new();
        a.encode_blob(&stored.hash, &incoming.missing(), &mut rest)
            .unwrap();
        let missing = incoming.missing();
        incoming.write_piece(&missing, &rest).unwrap();
        assert!(incoming.is_complete());
        let got = b.finish_blob(incoming).unwrap();
        assert_eq!(got.hash, stored.hash);
        assert_eq!(read(&b, &stored.hash).unwrap(), data);
    }

    #[test]
    fn a_cut_piece_keeps_every_whole_group_that_arrived() {
        let (_da, a, _db, b) = pair();
        let mut data = vec![0u8; 2_000_000];
        blake3::Hasher::new()
            .update(b"cut piece")
            .finalize_xof()
            .fill(&mut data);
        let stored = a.put_blob(&data[..]).unwrap();
        let groups = group_count(stored.size);
        let mut piece = Vec::new();
        a.encode_blob(&stored.hash, &[(0, groups)], &mut piece)
            .unwrap();
        // The stream breaks half way through the fifth group (parents included before it).
        let group = CHUNK_GROUP_BYTES as u64;
        let fifth = &data[4 * group as usize..4 * group as usize + 64];
        let at = piece.windows(64).position(|w| w == fifth).unwrap();
        let cut = at + group as usize / 2;
        {
            let incoming = b.receive_blob(stored.hash, stored.size).unwrap();
            let written = incoming.writer().write_from(&[(0, groups)], &piece[..cut]);
            assert_eq!(written.groups, vec![(0, 4)]);
            assert_eq!(written.bytes, 4 * group);
            assert!(matches!(written.result, Err(StoreError::CorruptBlob(_))));
        }
        // A new attempt (as after a restart) asks only for what is missing.
        let mut incoming = b.receive_blob(stored.hash, stored.size).unwrap();
        assert_eq!(incoming.missing(), vec![(4, groups)]);
        let mut rest = Vec::new();
        a.encode_blob(&stored.hash, &[(4, groups)], &mut rest)
            .unwrap();
        incoming.write_piece(&[(4, groups)], &rest).unwrap();
        let got = b.finish_blob(incoming).unwrap();
        assert_eq!(read(&b, &got.hash).unwrap(), data);
    }

    #[test]
    fn system_documents_publish_replicate_and_delete() {
        let (_da, a, _db, b) = pair();
        b.trust_add(SYSTEM_FEED, &a.identity().public_key())
            .unwrap();
        let (key, _) = a
            .publish_system(AssessmentType {
                v: PAYLOAD_VERSION,
                name: "Blocked".into(),
                blocking: true,
                description: "downloads refused".into(),
                hlc: 0,
            })
            .unwrap();
        assert_eq!(key, "assessment-type/Blocked");
        let r = copy_feed(&a, &b, SYSTEM_FEED, ApplyRule::Authoritative);
        assert!(matches!(r[0], Ok((_, Applied::Inserted))), "{r:?}");
        assert_eq!(
            a.feed_summary(SYSTEM_FEED).unwrap().root,
            b.feed_summary(SYSTEM_FEED).unwrap().root
        );
        a.delete_system(&key).unwrap();
        copy_feed(&a, &b, SYSTEM_FEED, ApplyRule::Authoritative);
        assert_eq!(
            b.entry(SYSTEM_FEED, &key).unwrap().unwrap().kind,
            EntryKind::Tombstone
        );
        assert!(a.verify().unwrap().ok());
        assert!(b.verify().unwrap().ok());
        // Pull replicas drop what upstream never had.
        b.create_feed("extra", Ecosystem::Raw).unwrap();
        b.publish("extra", package(&b, "local", "1", b"l")).unwrap();
        assert_eq!(
            b.remove_entries("extra", &["local/1".to_string()]).unwrap(),
            1
        );
        assert_eq!(b.feed_summary("extra").unwrap().root.count, 0);
    }

    #[test]
    fn a_promotion_copies_a_version_without_its_bytes_and_signs_a_record_that_replicates() {
        let (_da, a, _db, b) = pair();
        b.trust_add(SYSTEM_FEED, &a.identity().public_key())
            .unwrap();
        a.create_feed("release", Ecosystem::Raw).unwrap();
        a.create_feed("wheels", Ecosystem::Pypi).unwrap();
        a.publish("demo", package(&a, "tool", "1.0", &vec![7u8; 100_000]))
            .unwrap();
        let (source, staged) = a.manifest("demo", "tool", "1.0").unwrap().unwrap();
        let p = a
            .promote("demo", "release", "tool", "1.0", "token t1 (CI)")
            .unwrap();
        assert_eq!(p.outcome, PublishOutcome::Created);
        assert_eq!(p.record.0, "promotion/release/tool/1.0");
        let (id, promoted) = a.manifest("release", "tool", "1.0").unwrap().unwrap();
        assert_eq!(id, p.manifest);
        assert_eq!(promoted.feed, "release");
        assert_eq!(
            promoted.files, staged.files,
            "the same blobs, nothing copied"
        );
        let history = a.promotions(Some("tool"), None).unwrap();
        assert_eq!(history.len(), 1);
        let r = &history[0];
        assert_eq!(
            (r.from.as_str(), r.to.as_str(), r.by.as_str()),
            ("demo", "release", "token t1 (CI)")
        );
        assert_eq!((r.source, r.manifest), (source, id));
        // Promoting again changes nothing: the first record of how it got there stands.
        let again = a
            .promote("demo", "release", "tool", "1.0", "someone")
            .unwrap();
        assert_eq!(again.outcome, PublishOutcome::Unchanged);
        assert_eq!(again.record, p.record);
        assert_eq!(a.promotions(None, None).unwrap()[0].by, "token t1 (CI)");
        // Refusals change nothing.
        let before = a.feed_summary(SYSTEM_FEED).unwrap().root;
        for (from, to, name) in [
            ("demo", "wheels", "tool"),
            ("demo", "demo", "tool"),
            ("demo", "release", "absent"),
            ("demo", SYSTEM_FEED, "tool"),
            ("demo", "no-such-feed", "tool"),
        ] {
            assert!(
                a.promote(from, to, name, "1.0", "x").is_err(),
                "{from} -> {to} {name}"
            );
        }
        assert_eq!(a.feed_summary(SYSTEM_FEED).unwrap().root, before);
        // Other files under the same version in the target are a conflict, as in a publish.
        a.publish("demo", package(&a, "other", "2", b"staged"))
            .unwrap();
        a.publish("release", package(&a, "other", "2", b"different"))
            .unwrap();
        assert!(matches!(
            a.promote("demo", "release", "other", "2", "x"),
            Err(StoreError::VersionExists { .. })
        ));
        // The record replicates with the system set and reads the same on the replica.
        let r = copy_feed(&a, &b, SYSTEM_FEED, ApplyRule::Authoritative);
        assert!(r.iter().all(|x| x.is_ok()), "{r:?}");
        assert_eq!(
            b.promotions(None, None).unwrap(),
            a.promotions(None, None).unwrap()
        );
        assert!(a.verify().unwrap().ok());
        assert!(b.verify().unwrap().ok());
        // A forged history is refused: a record signed by a key not trusted for the system
        // set, and one from a trusted key that promotes a feed to itself.
        let held = b.feed_summary(SYSTEM_FEED).unwrap().root;
        let (_dc, c) = store();
        let mut forged = b.promotions(None, None).unwrap()[0].clone();
        forged.by = "someone else".into();
        let untrusted = SignedDocument::sign(&forged, c.identity().signing_key()).unwrap();
        forged.from = forged.to.clone();
        let to_itself = SignedDocument::sign(&forged, a.identity().signing_key()).unwrap();
        let r = b
            .apply_remote(
                SYSTEM_FEED,
                &[untrusted.bytes().to_vec(), to_itself.bytes().to_vec()],
                ApplyRule::Authoritative,
            )
            .unwrap();
        assert!(r.iter().all(|x| x.is_err()), "{r:?}");
        assert_eq!(b.feed_summary(SYSTEM_FEED).unwrap().root, held);
    }
}

#[test]
fn tombstones_are_collected_past_the_horizon_or_once_every_peer_synced() {
    let (_d, s) = store();
    s.create_feed("demo", Ecosystem::Raw).unwrap();
    s.publish("demo", package(&s, "x", "1", b"one")).unwrap();
    s.delete("demo", "x", "1").unwrap();
    // A known peer that never synced holds the tombstone until the horizon.
    s.peer_add(&admin::Peer {
        name: "spoke".into(),
        addr: "127.0.0.1:1".into(),
        key: s.identity().public_key(),
    })
    .unwrap();
    assert_eq!(s.gc().unwrap().tombstones_removed, 0);
    assert_eq!(
        s.entry("demo", "x/1").unwrap().unwrap().kind,
        EntryKind::Tombstone
    );
    // Once it has synced after the deletion, the tombstone can go.
    std::thread::sleep(std::time::Duration::from_millis(5));
    s.replication_log_append(admin::ReplicationRecord {
        peer: "spoke".into(),
        outcome: "ok".into(),
        started_ms: store::now_ms(),
        ..Default::default()
    })
    .unwrap();
    std::thread::sleep(std::time::Duration::from_millis(5));
    let r = s.gc().unwrap();
    assert_eq!(r.tombstones_removed, 1);
    assert!(s.entry("demo", "x/1").unwrap().is_none());
    assert!(s.verify().unwrap().ok());
    // Without peers, the horizon alone decides.
    s.peer_remove("spoke").unwrap();
    s.publish("demo", package(&s, "y", "1", b"two")).unwrap();
    s.delete("demo", "y", "1").unwrap();
    assert_eq!(s.gc().unwrap().tombstones_removed, 0);
    std::thread::sleep(std::time::Duration::from_millis(5));
    assert_eq!(s.gc_with(1).unwrap().tombstones_removed, 1);
}

#[test]
fn a_replica_never_collects_an_upstream_tombstone_on_its_own() {
    use crate::replica::ApplyRule;
    let (_da, hub) = store();
    let (_db, spoke) = store();
    spoke
        .trust_add("demo", &hub.identity().public_key())
        .unwrap();
    hub.create_feed("demo", Ecosystem::Raw).unwrap();
    spoke.create_feed("demo", Ecosystem::Raw).unwrap();
    hub.publish("demo", package(&hub, "x", "1", b"one"))
        .unwrap();
    hub.delete("demo", "x", "1").unwrap();
    let e = hub.entry("demo", "x/1").unwrap().unwrap();
    let doc = hub.document(&e.doc).unwrap().unwrap();
    spoke
        .apply_remote("demo", &[doc.bytes().to_vec()], ApplyRule::Authoritative)
        .unwrap();
    std::thread::sleep(std::time::Duration::from_millis(5));
    assert_eq!(spoke.gc_with(1).unwrap().tombstones_removed, 0);
    assert_eq!(hub.gc_with(1).unwrap().tombstones_removed, 1);
}

#[test]
fn small_blobs_stored_together_must_match_their_hashes_and_nothing_is_kept_otherwise() {
    let (_d, s) = store();
    let (a, b) = (b"first small blob".to_vec(), b"second small blob".to_vec());
    let stored = s
        .put_small_blobs(&[(Hash::of(&a), &a[..]), (Hash::of(&b), &b[..])])
        .unwrap();
    assert_eq!(stored.len(), 2);
    assert_eq!(read(&s, &Hash::of(&b)).unwrap(), b);
    // One that does not hash to its name fails the whole write: the good one with it is
    // not stored either.
    let (c, d) = (b"third".to_vec(), b"fourth".to_vec());
    let err = s
        .put_small_blobs(&[(Hash::of(&c), &c[..]), (Hash::of(&a), &d[..])])
        .unwrap_err();
    assert!(matches!(err, StoreError::CorruptBlob(_)), "{err}");
    assert!(!s.has_blob(&Hash::of(&c)).unwrap());
    assert!(!s.has_blob(&Hash::of(&d)).unwrap());
    // Too large to be a small blob.
    let big = vec![7u8; crate::blob::INLINE_MAX as usize + 1];
    assert!(s.put_small_blobs(&[(Hash::of(&big), &big[..])]).is_err());
}
