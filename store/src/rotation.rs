//! Moving an instance to a new key, and following a peer that moved.
//!
//! `cairn key rotate` makes a new key pair, a statement that the old key signs ("`old` is
//! now `new`"), and signs again with the new key every document the old key signed. The
//! documents, their entries and Merkle nodes, the trust in the new key where the old one was
//! trusted, and the statement are one write batch; the new key file replaces the old one only
//! after that batch is durable, so a crash leaves the instance on the old key with nothing
//! changed, or on the new key with everything re-signed (an unfinished move is finished or
//! dropped when the store next opens).
//!
//! A peer that pins and trusts the old key finds the new one in the TLS handshake, asks for
//! the statements, checks that they lead from the key it pinned to the key presented, each
//! signed by the key before, and then pins the new key and trusts it wherever it trusted the
//! old one, which it trusts no longer. The new key proved in the handshake that it holds the
//! secret half; the statement proves the old key's holder named it.
//!
//! Invariant: the old key's secret is gone once the move is committed; nothing this instance
//! signs afterwards carries the old key.

use crate::doc::{DocumentError, KeyRotation, PublicKey, SignedDocument, PAYLOAD_VERSION};
use crate::identity::Identity;
use crate::store::{now_ms, EntryValue, StoreError, Txn, CF_META};
use crate::{Store, StoreOptions, SYSTEM_FEED};
use std::path::Path;

type Result<T, E = StoreError> = std::result::Result<T, E>;

const ROTATION_PREFIX: &[u8] = b"rotation\0";
/// The key a committed move went to (until the key file is renamed).
pub(crate) const META_IDENTITY_NEXT: &[u8] = b"identity-next";
/// Most statements a chain may hold.
pub const MAX_ROTATION_CHAIN: usize = 16;

/// What a move to a new key did.
#[derive(Clone, Debug)]
pub struct Rotated {
    /// The key given up.
    pub old: PublicKey,
    /// The key taken on.
    pub new: PublicKey,
    /// Documents signed again with the new key.
    pub resigned: u64,
}

/// Why a chain of rotation statements does not lead from one key to another.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RotationError {
    /// A statement is not a valid signed document.
    #[error(transparent)]
    Document(#[from] DocumentError),
    /// The statements do not connect the pinned key to the presented one.
    #[error("the peer presented key {presented} but {pinned} is pinned, and its statements do not lead from one to the other: {why}")]
    Broken {
        pinned: String,
        presented: String,
        why: String,
    },
}

/// Checks that `statements` lead from `pinned` to `presented`: each a key-rotation document
/// signed by the key it moves from, the first from `pinned`, each from the one before's new
/// key, the last to `presented`.
pub fn check_chain(
    pinned: &PublicKey,
    presented: &PublicKey,
    statements: &[Vec<u8>],
) -> std::result::Result<Vec<KeyRotation>, RotationError> {
    let broken = |why: String| RotationError::Broken {
        pinned: pinned.fingerprint(),
        presented: presented.fingerprint(),
        why,
    };
    if statements.is_empty() || statements.len() > MAX_ROTATION_CHAIN {
        return Err(broken(format!("{} statements", statements.len())));
    }
    let mut at = *pinned;
    let mut out = Vec::with_capacity(statements.len());
    for bytes in statements {
        let doc = SignedDocument::decode(bytes)?;
        let r: KeyRotation = doc.payload()?;
        if doc.signer() != at || r.old != *at.as_bytes() {
            return Err(broken(format!(
                "a statement from {} is not signed by it",
                at.short()
            )));
        }
        at = PublicKey::from_bytes(r.new).ok_or(DocumentError::InvalidKey)?;
        out.push(r);
    }
    if at != *presented {
        return Err(broken(format!("they end at {}", at.short())));
    }
    Ok(out)
}

impl Store {
    /// Moves the instance in `dir` to a new key (see the module documentation). The store
    /// must not be open elsewhere.
    pub fn rotate_key(dir: &Path, options: StoreOptions) -> Result<Rotated> {
        let store = Store::open(dir, options)?;
        let old = store.identity().public_key();
        let next = Identity::create_next(dir)?;
        let new = next.public_key();
        let statement = SignedDocument::sign(
            &KeyRotation {
                v: PAYLOAD_VERSION,
                old: *old.as_bytes(),
                new: *new.as_bytes(),
                time: now_ms() / 1000,
            },
            store.identity().signing_key(),
        )
        .map_err(StoreError::signing("key rotation".into(), ""))?;
        let mut resigned = 0;
        {
            let mut w = store.write.lock();
            let mut txn = Txn::new(&store, w.hlc);
            let mut feeds: Vec<String> = store.list_feeds()?.into_iter().map(|f| f.name).collect();
            feeds.push(SYSTEM_FEED.into());
            for feed in feeds {
                for e in store.entries(&feed)? {
                    let Some(doc) = store.document(&e.value.doc)? else {
                        continue;
                    };
                    if doc.signer() != old {
                        continue;
                    }
                    let again = doc
                        .resign(next.signing_key())
                        .map_err(StoreError::signing(format!("{feed}/{}", e.key), ""))?;
                    txn.put_doc(&again);
                    txn.set_entry(
                        &feed,
                        &e.key,
                        Some(EntryValue {
                            doc: again.id(),
                            ..e.value
                        }),
                    )?;
                    resigned += 1;
                }
            }
            for (scope, key) in store.trust_list()? {
                if key == old {
                    txn.meta_put(crate::store::trust_key(&scope, &new), Vec::new());
                    txn.meta_delete(crate::store::trust_key(&scope, &old));
                }
            }
            txn.meta_put(
                [ROTATION_PREFIX, old.as_bytes()].concat(),
                statement.bytes().to_vec(),
            );
            txn.meta_put(META_IDENTITY_NEXT.to_vec(), new.as_bytes().to_vec());
            txn.commit(&mut w)?;
        }
        store.db.flush_wal(true)?;
        drop(store);
        Identity::commit_next(dir)?;
        Ok(Rotated { old, new, resigned })
    }

    /// Finishes or drops a move to a new key that a crash interrupted; called before a store
    /// opens. Returns whether the instance key changed.
    pub(crate) fn settle_rotation(dir: &Path, options: &StoreOptions) -> Result<bool> {
        let Some(next) = Identity::load_next(dir)? else {
            return Ok(false);
        };
        let store = Store::open_unsettled(dir, options.clone())?;
        let committed = store
            .db
            .get_pinned_cf(store.cf(CF_META), META_IDENTITY_NEXT)?
            .is_some_and(|k| k.as_ref() == next.public_key().as_bytes());
        drop(store);
        if committed {
            Identity::commit_next(dir)?;
        } else {
            Identity::discard_next(dir)?;
        }
        Ok(committed)
    }

    /// The statements that lead from `from` to this instance's key (empty when `from` is
    /// its key, or it never held `from`).
    pub fn rotation_chain(&self, from: &PublicKey) -> Result<Vec<Vec<u8>>> {
        let me = self.identity().public_key();
        let mut at = *from;
        let mut out = Vec::new();
        while at != me && out.len() < MAX_ROTATION_CHAIN {
            let Some(bytes) = self
                .db
                .get_pinned_cf(self.cf(CF_META), [ROTATION_PREFIX, at.as_bytes()].concat())?
            else {
                break;
            };
            let r: KeyRotation = SignedDocument::decode(&bytes)?.payload()?;
            at = PublicKey::from_bytes(r.new).ok_or(DocumentError::InvalidKey)?;
            out.push(bytes.to_vec());
        }
        if at != me {
            return Ok(Vec::new());
        }
        Ok(out)
    }

    /// Follows a peer that moved from `pinned` to `presented`, after [`check_chain`]: every
    /// peer pinned to the old key is pinned to the new one, and the new key is trusted wherever
    /// the old one was, which is trusted no longer.
    pub fn follow_rotation(
        &self,
        pinned: &PublicKey,
        presented: &PublicKey,
        statements: &[Vec<u8>],
    ) -> Result<()> {
        check_chain(pinned, presented, statements)?;
        for mut peer in self.peer_list()? {
            if peer.key == *pinned {
                peer.key = *presented;
                self.peer_add(&peer)?;
            }
        }
        for (scope, key) in self.trust_list()? {
            if key == *pinned {
                self.trust_add(&scope, presented)?;
                self.trust_remove(&scope, pinned)?;
            }
        }
        tracing::warn!(
            old = %pinned.short(),
            new = %presented.short(),
            "a peer moved to a new key; it is pinned and trusted in place of the old one"
        );
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Ecosystem, NewFile, NewPackage};
    use std::collections::BTreeMap;

    fn opts() -> StoreOptions {
        StoreOptions {
            sync_writes: false,
            ..StoreOptions::default()
        }
    }

    fn publish(s: &Store, n: u64) {
        let b = s.put_blob(&n.to_le_bytes()[..]).unwrap();
        s.publish(
            "demo",
            NewPackage {
                name: format!("p{n}"),
                version: "1".into(),
                files: vec![NewFile {
                    name: "f".into(),
                    blob: b.hash,
                    size: b.size,
                    digests: BTreeMap::new(),
                }],
                metadata: BTreeMap::new(),
            },
        )
        .unwrap();
    }

    #[test]
    fn a_rotation_resigns_everything_moves_trust_and_leaves_a_chain_peers_can_check() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::init(dir.path(), opts()).unwrap();
        store.create_feed("demo", Ecosystem::Raw).unwrap();
        for n in 0..5 {
            publish(&store, n);
        }
        store.delete("demo", "p0", "1").unwrap();
        let old = store.identity().public_key();
        drop(store);
        let r = Store::rotate_key(dir.path(), opts()).unwrap();
        assert_eq!((r.old, r.resigned), (old, 5));
        let store = Store::open(dir.path(), opts()).unwrap();
        assert_eq!(store.identity().public_key(), r.new);
        for e in store.entries("demo").unwrap() {
            assert_eq!(
                store.document(&e.value.doc).unwrap().unwrap().signer(),
                r.new
            );
        }
        assert!(store.is_trusted("demo", &r.new).unwrap());
        assert!(!store.is_trusted("demo", &old).unwrap());
        assert!(store.verify().unwrap().ok());
        let chain = store.rotation_chain(&old).unwrap();
        assert_eq!(check_chain(&old, &r.new, &chain).unwrap().len(), 1);
        // A second move: the chain from the first key has two links.
        drop(store);
        let r2 = Store::rotate_key(dir.path(), opts()).unwrap();
        let store = Store::open(dir.path(), opts()).unwrap();
        let chain = store.rotation_chain(&old).unwrap();
        assert_eq!(check_chain(&old, &r2.new, &chain).unwrap().len(), 2);
        assert!(store.rotation_chain(&r2.new).unwrap().is_empty());
    }

    #[test]
    fn a_chain_that_does_not_lead_from_the_pinned_key_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::init(dir.path(), opts()).unwrap();
        let old = store.identity().public_key();
        drop(store);
        let r = Store::rotate_key(dir.path(), opts()).unwrap();
        let chain = Store::open(dir.path(), opts())
            .unwrap()
            .rotation_chain(&old)
            .unwrap();
        // Someone else's key, a statement not signed by the pinned key, a chain that ends
        // elsewhere, none at all.
        let other = Store::init(&dir.path().join("other"), opts()).unwrap();
        let forged = SignedDocument::sign(
            &KeyRotation {
                v: PAYLOAD_VERSION,
                old: *old.as_bytes(),
                new: *other.identity().public_key().as_bytes(),
                time: 1,
            },
            other.identity().signing_key(),
        )
        .unwrap()
        .bytes()
        .to_vec();
        let cases: Vec<(PublicKey, PublicKey, Vec<Vec<u8>>)> = vec![
            (old, other.identity().public_key(), vec![forged]),
            (other.identity().public_key(), r.new, chain.clone()),
            (old, other.identity().public_key(), chain.clone()),
            (old, r.new, vec![]),
        ];
        for (pinned, presented, statements) in cases {
            assert!(check_chain(&pinned, &presented, &statements).is_err());
        }
    }

    #[test]
    fn a_move_cut_short_by_a_crash_is_finished_or_dropped_when_the_store_opens() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::init(dir.path(), opts()).unwrap();
        let old = store.identity().public_key();
        drop(store);
        // Crash after the new key was written, before the documents were committed.
        let next = Identity::create_next(dir.path()).unwrap();
        let store = Store::open(dir.path(), opts()).unwrap();
        assert_eq!(store.identity().public_key(), old);
        assert!(Identity::load_next(dir.path()).unwrap().is_none());
        // Crash after the commit, before the key file was renamed.
        let next2 = Identity::create_next(dir.path()).unwrap();
        assert_ne!(next.public_key(), next2.public_key());
        let mut w = store.write.lock();
        let mut txn = Txn::new(&store, w.hlc);
        txn.meta_put(
            META_IDENTITY_NEXT.to_vec(),
            next2.public_key().as_bytes().to_vec(),
        );
        txn.commit(&mut w).unwrap();
        drop(w);
        drop(store);
        let store = Store::open(dir.path(), opts()).unwrap();
        assert_eq!(store.identity().public_key(), next2.public_key());
    }
}
