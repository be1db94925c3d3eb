//! Filtered pulls: each spoke takes the packages its filter selects, keeps the hub's
//! checkpoint over exactly that set, never deletes what lies outside it, and a filter change
//! moves only the difference.

use cairn_store::doc::Filter;
use cairn_store::EntryKind;

use super::*;
use crate::wire::{FeedStatus, Frame};

/// A hub whose raw feed `demo` holds `alpha-0..n`, `beta-0..n` and `gamma-0..n` (version 1
/// each, a blob of 40 KiB), two spokes, every store trusting the hub.
fn hub_and_spokes(n: u64) -> (tempfile::TempDir, Store, Store, Store) {
    let dir = tempfile::tempdir().unwrap();
    let hub = new_store(&dir.path().join("hub"));
    let a = new_store(&dir.path().join("a"));
    let b = new_store(&dir.path().join("b"));
    hub.create_feed("demo", Ecosystem::Raw).unwrap();
    for s in [&a, &b] {
        s.create_feed("demo", Ecosystem::Raw).unwrap();
        s.trust_add("*", &hub.identity().public_key()).unwrap();
    }
    let mut pkgs = Vec::new();
    for family in ["alpha", "beta", "gamma"] {
        for i in 0..n {
            let content: Vec<u8> = format!("{family}-{i}")
                .bytes()
                .cycle()
                .take(40 << 10)
                .collect();
            let blob = hub.put_blob(&content[..]).unwrap();
            pkgs.push(NewPackage {
                name: format!("{family}-{i}"),
                version: "1".into(),
                files: vec![NewFile {
                    name: format!("{family}-{i}.bin"),
                    blob: blob.hash,
                    size: blob.size,
                    digests: BTreeMap::new(),
                }],
                metadata: BTreeMap::new(),
            });
        }
    }
    hub.publish_many("demo", pkgs).unwrap();
    (dir, hub, a, b)
}

fn filter(include: &[&str], exclude: &[&str]) -> Filter {
    Filter {
        include: include.iter().map(|s| s.to_string()).collect(),
        exclude: exclude.iter().map(|s| s.to_string()).collect(),
    }
    .canonical()
    .unwrap()
}

fn pull_filtered(f: &Filter) -> InitiatorConfig {
    let mut c = config(Mode::Pull, &["demo"]);
    c.filters.insert("demo".into(), f.clone());
    c
}

fn keys(s: &Store) -> Vec<String> {
    let mut k: Vec<String> = s
        .entries("demo")
        .unwrap()
        .into_iter()
        .map(|e| e.key)
        .collect();
    k.sort();
    k
}

fn selected(hub: &Store, f: &Filter) -> Vec<String> {
    keys(hub).into_iter().filter(|k| f.selects(k)).collect()
}

/// A tamper that puts `cp` in place of the checkpoint of every summary status the responder
/// sends (and, with `done`, of its DONE frames).
fn swap_checkpoints(from_initiator: bool, frame: Frame, cp: &[u8], done: bool) -> Vec<Frame> {
    if from_initiator {
        return vec![frame];
    }
    let cp = Some(cp.to_vec());
    vec![match frame {
        Frame::HelloReply { feeds, log } => Frame::HelloReply {
            feeds: feeds
                .into_iter()
                .map(|s| match s {
                    FeedStatus::Summary {
                        root,
                        count,
                        cursor,
                        cells,
                        estimator,
                        collected,
                        ..
                    } => FeedStatus::Summary {
                        root,
                        count,
                        cursor,
                        cells,
                        estimator,
                        checkpoint: cp.clone(),
                        collected,
                    },
                    FeedStatus::All {
                        root,
                        count,
                        cursor,
                        ..
                    } => FeedStatus::All {
                        root,
                        count,
                        cursor,
                        checkpoint: cp.clone(),
                    },
                    other => other,
                })
                .collect(),
            log,
        },
        Frame::Done {
            feed, root, count, ..
        } if done => Frame::Done {
            feed,
            root,
            count,
            checkpoint: cp,
        },
        other => other,
    }]
}

fn assert_ok(o: &Outcome) {
    assert!(
        o.initiator_error.is_none() && o.responder_error.is_none(),
        "{o:?}"
    );
    assert!(o.initiator.iter().all(|r| r.converged()), "{o:?}");
}

#[test]
fn two_spokes_with_different_filters_converge_to_exactly_their_subsets() {
    let (_d, hub, a, b) = hub_and_spokes(20);
    // Spoke a keeps a package of its own outside its filter: a filtered pull never deletes it.
    let own = a.put_blob(&b"local"[..]).unwrap();
    a.publish(
        "demo",
        NewPackage {
            name: "local-tool".into(),
            version: "1".into(),
            files: vec![NewFile {
                name: "tool.bin".into(),
                blob: own.hash,
                size: own.size,
                digests: BTreeMap::new(),
            }],
            metadata: BTreeMap::new(),
        },
    )
    .unwrap();
    let fa = filter(&["alpha-*"], &[]);
    let fb = filter(&["*"], &["alpha-*", "gamma-1?"]);
    let oa = sim::run(&a, &hub, pull_filtered(&fa), &AllowAll, Link::far_lossy());
    let ob = sim::run(&b, &hub, pull_filtered(&fb), &AllowAll, Link::far_lossy());
    assert_ok(&oa);
    assert_ok(&ob);
    let mut want_a = selected(&hub, &fa);
    want_a.push("local-tool/1".into());
    want_a.sort();
    assert_eq!(keys(&a), want_a);
    assert_eq!(keys(&b), selected(&hub, &fb));
    assert_eq!(keys(&b).len(), 20 + 10);
    // Each keeps the hub's checkpoint over exactly its filter's set.
    for (s, f) in [(&a, &fa), (&b, &fb)] {
        let (cp, doc) = s.checkpoint("demo").unwrap().unwrap();
        assert_eq!(doc.signer(), hub.identity().public_key());
        assert_eq!(cp.filter.as_ref(), Some(f));
        let sub = hub.filtered_summary("demo", f).unwrap().root;
        assert_eq!(cp.root.as_bytes(), sub.fingerprint.as_bytes());
        assert_eq!(cp.count, sub.count);
        assert_eq!(s.filtered_summary("demo", f).unwrap().root, sub);
    }
    // Both pulled only blobs of their own set.
    assert_eq!(oa.initiator[0].blobs_received, 20);
    assert_eq!(ob.initiator[0].blobs_received, 30);

    // A second run of each changes nothing and moves no documents.
    for (s, f) in [(&a, &fa), (&b, &fb)] {
        let o = sim::run(s, &hub, pull_filtered(f), &AllowAll, lan());
        assert_ok(&o);
        assert_eq!(o.initiator[0].path, SyncPath::Equal, "{o:?}");
    }
    // A deletion on the hub inside b's filter reaches b; one outside it is not b's business.
    hub.delete("demo", "beta-3", "1").unwrap();
    hub.delete("demo", "alpha-3", "1").unwrap();
    let cursor_b = ob.initiator[0].peer_cursor.unwrap();
    let mut c = pull_filtered(&fb);
    c.since.insert("demo".into(), cursor_b);
    let o = sim::run(&b, &hub, c, &AllowAll, lan());
    assert_ok(&o);
    assert_eq!(o.initiator[0].path, SyncPath::Log, "{o:?}");
    assert_eq!(o.initiator[0].docs_applied, 1, "{o:?}");
    assert_eq!(keys(&b), selected(&hub, &fb));
    assert_eq!(
        b.entry("demo", "beta-3/1").unwrap().unwrap().kind,
        EntryKind::Tombstone
    );
}

#[test]
fn a_filter_change_moves_only_the_difference() {
    let (_d, hub, a, _) = hub_and_spokes(20);
    let first = filter(&["alpha-*"], &[]);
    let o = sim::run(&a, &hub, pull_filtered(&first), &AllowAll, lan());
    assert_ok(&o);
    let wider = filter(&["alpha-*", "beta-*"], &["beta-1?"]);
    let o = sim::run(
        &a,
        &hub,
        pull_filtered(&wider),
        &AllowAll,
        Link::far_lossy(),
    );
    assert_ok(&o);
    assert_eq!(keys(&a), selected(&hub, &wider));
    // Only the 10 beta packages the wider filter adds came, documents and blobs.
    assert_eq!(o.initiator[0].docs_applied, 10, "{o:?}");
    assert_eq!(o.initiator[0].blobs_received, 10, "{o:?}");
    assert_eq!(o.responder[0].docs_sent, 10, "{o:?}");
    assert_eq!(keys(&a).len(), 30);
    // Another filter deletes nothing: what the old one brought stays.
    let narrower = filter(&["beta-*"], &[]);
    let o = sim::run(&a, &hub, pull_filtered(&narrower), &AllowAll, lan());
    assert_ok(&o);
    assert_eq!(o.initiator[0].deletions, 0, "{o:?}");
    assert_eq!(o.initiator[0].docs_applied, 10, "{o:?}");
    assert_eq!(keys(&a).len(), 40);
}

#[test]
fn an_entry_withheld_by_a_relay_that_passes_on_the_hubs_checkpoint_is_detected() {
    let (_d, hub, relay, spoke) = hub_and_spokes(10);
    let f = filter(&["beta-*"], &[]);
    assert_ok(&sim::run(&relay, &hub, pull_filtered(&f), &AllowAll, lan()));
    let (_, hub_cp) = relay.checkpoint("demo").unwrap().unwrap();
    let hub_cp = hub_cp.bytes().to_vec();
    // An honest relay passes the hub's checkpoint on: the spoke takes the set from it.
    let honest = tempfile::tempdir().unwrap();
    let s2 = new_store(honest.path());
    s2.create_feed("demo", Ecosystem::Raw).unwrap();
    s2.trust_add("*", &hub.identity().public_key()).unwrap();
    let o = sim::run(&s2, &relay, pull_filtered(&f), &AllowAll, lan());
    assert_ok(&o);
    assert_eq!(keys(&s2), selected(&hub, &f));
    assert_eq!(
        s2.checkpoint("demo").unwrap().unwrap().1.signer(),
        hub.identity().public_key()
    );

    // The relay drops one entry and still hands out the hub's checkpoint.
    assert_eq!(
        relay.remove_entries("demo", &["beta-4/1".into()]).unwrap(),
        1
    );
    let mut forge =
        |from_initiator: bool, frame: Frame| swap_checkpoints(from_initiator, frame, &hub_cp, true);
    let o = sim::run_tampered(
        &spoke,
        &relay,
        pull_filtered(&f),
        &AllowAll,
        lan(),
        &mut forge,
    );
    let err = o.initiator[0].error.clone().unwrap_or_default();
    assert!(err.contains("withheld"), "{o:?}");
    assert!(!o.initiator[0].converged());
    assert!(spoke.checkpoint("demo").unwrap().is_none());

    // A checkpoint over another filter (or the whole feed) proves nothing about this set.
    let whole = hub.sign_checkpoint("demo", 3600).unwrap().bytes().to_vec();
    let mut swap =
        |from_initiator: bool, frame: Frame| swap_checkpoints(from_initiator, frame, &whole, false);
    let fresh = tempfile::tempdir().unwrap();
    let s3 = new_store(fresh.path());
    s3.create_feed("demo", Ecosystem::Raw).unwrap();
    s3.trust_add("*", &hub.identity().public_key()).unwrap();
    let o = sim::run_tampered(&s3, &hub, pull_filtered(&f), &AllowAll, lan(), &mut swap);
    let err = o.initiator[0].error.clone().unwrap_or_default();
    assert!(
        err.contains("the checkpoint is over the whole feed"),
        "{o:?}"
    );
    assert_eq!(root(&s3, "demo").count, 0);
}

#[test]
fn a_filter_is_refused_on_the_system_set_and_outside_a_pull() {
    let (_d, hub, a, _) = hub_and_spokes(1);
    let f = filter(&["alpha-*"], &[]);
    let mut c = config(Mode::Pull, &["@system"]);
    c.filters.insert("@system".into(), f.clone());
    let o = sim::run(&a, &hub, c, &AllowAll, lan());
    let err = format!("{:?}", o.initiator_error);
    assert!(err.contains("replicated whole"), "{o:?}");
    // Non-canonical patterns are refused by the responder too.
    let mut c = config(Mode::Pull, &["demo"]);
    c.filters.insert(
        "demo".into(),
        Filter {
            include: vec!["b*".into(), "a*".into()],
            exclude: vec![],
        },
    );
    let o = sim::run(&a, &hub, c, &AllowAll, lan());
    let err = o.initiator[0].error.clone().unwrap_or_default();
    assert!(err.contains("canonical"), "{o:?}");
    assert_eq!(root(&a, "demo").count, 0);
}

#[test]
fn a_change_log_that_removes_an_entry_outside_the_filter_is_refused() {
    let (_d, hub, a, _) = hub_and_spokes(3);
    let own = a.put_blob(&b"mine"[..]).unwrap();
    a.publish(
        "demo",
        NewPackage {
            name: "alpha-local".into(),
            version: "1".into(),
            files: vec![NewFile {
                name: "mine.bin".into(),
                blob: own.hash,
                size: own.size,
                digests: BTreeMap::new(),
            }],
            metadata: BTreeMap::new(),
        },
    )
    .unwrap();
    let f = filter(&["beta-*"], &[]);
    let o = sim::run(&a, &hub, pull_filtered(&f), &AllowAll, lan());
    assert_ok(&o);
    let cursor = o.initiator[0].peer_cursor.unwrap();
    hub.delete("demo", "beta-1", "1").unwrap();
    // The upstream's log also "removes" the spoke's own package, outside the filter.
    let mut inject = |from_initiator: bool, frame: Frame| -> Vec<Frame> {
        if from_initiator {
            return vec![frame];
        }
        vec![match frame {
            Frame::HelloReply { feeds, log } => Frame::HelloReply {
                feeds: feeds
                    .into_iter()
                    .map(|s| match s {
                        FeedStatus::Log {
                            root,
                            count,
                            cursor,
                            mut changes,
                            checkpoint,
                        } => {
                            changes.push(crate::wire::WireChange {
                                key: "alpha-local/1".into(),
                                doc: None,
                            });
                            FeedStatus::Log {
                                root,
                                count,
                                cursor,
                                changes,
                                checkpoint,
                            }
                        }
                        other => other,
                    })
                    .collect(),
                log,
            },
            other => other,
        }]
    };
    let mut c = pull_filtered(&f);
    c.since.insert("demo".into(), cursor);
    let o = sim::run_tampered(&a, &hub, c, &AllowAll, lan(), &mut inject);
    let err = format!("{:?} {:?}", o.initiator_error, o.initiator);
    assert!(err.contains("outside the filter"), "{o:?}");
    assert!(a.entry("demo", "alpha-local/1").unwrap().is_some());
}

#[test]
fn a_push_carrying_a_filtered_checkpoint_is_refused() {
    let (_d, hub, a, _) = hub_and_spokes(2);
    a.trust_add("*", &hub.identity().public_key()).unwrap();
    hub.trust_add("*", &a.identity().public_key()).unwrap();
    // The pusher's checkpoint over a filter that selects nothing would make the final root
    // check say nothing about what is pushed.
    let nothing = filter(&["nothing-matches"], &[]);
    let cp = a
        .filtered_checkpoint_to_serve("demo", &nothing, 3600, 300)
        .unwrap();
    let mut swap = |from_initiator: bool, frame: Frame| -> Vec<Frame> {
        if !from_initiator {
            return vec![frame];
        }
        let mut frame = frame;
        if let Frame::Hello { feeds, .. } = &mut frame {
            for h in feeds {
                h.checkpoint = Some(cp.clone());
            }
        }
        vec![frame]
    };
    let before = root(&hub, "demo");
    let o = sim::run_tampered(
        &a,
        &hub,
        config(Mode::Push, &["demo"]),
        &AllowAll,
        lan(),
        &mut swap,
    );
    let err = o.initiator[0].error.clone().unwrap_or_default();
    assert!(err.contains("the checkpoint is over include"), "{o:?}");
    assert_eq!(root(&hub, "demo"), before);
}
