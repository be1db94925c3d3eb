//! The transparency log of checkpoints: every checkpoint an instance signs is appended to an
//! append-only Merkle tree (the Certificate Transparency design, RFC 9162 section 2.1, with
//! BLAKE3 for SHA-256), whose signed tree heads peers exchange on every run. A log owner proves
//! that a tree head it showed earlier is a prefix of its current one (a consistency proof); a
//! peer that holds two heads of one log that no proof joins has found a split view: the log's
//! key showed different histories to different sites.
//!
//! Storage (meta column family, one write batch per append): the log's size, the hash of every
//! complete aligned subtree (level, index), each entry's bytes and the index of each entry's
//! document id, and the newest signed tree head. What peers showed: per log key the newest
//! head proven consistent, heads not proven yet (at most [`PENDING_PER_LOG`]), and the
//! evidence of each split view found.

use serde::{Deserialize, Serialize};

use crate::cbor;
use crate::doc::{DocType, Payload, PublicKey, SignedDocument, PAYLOAD_VERSION};
use crate::store::{now_ms, StoreError, CF_META};
use crate::{Hash, Store};

type Result<T, E = StoreError> = std::result::Result<T, E>;

const SIZE_KEY: &[u8] = b"tlog\0size";
const HEAD_KEY: &[u8] = b"tlog\0head";
const NODE_PREFIX: &[u8] = b"tlog\0node\0";
const ENTRY_PREFIX: &[u8] = b"tlog\0entry\0";
const AT_PREFIX: &[u8] = b"tlog\0at\0";
const SEEN_PREFIX: &[u8] = b"tlog\0seen\0";
const PENDING_PREFIX: &[u8] = b"tlog\0pending\0";
const SPLIT_PREFIX: &[u8] = b"tlog\0split\0";

/// Heads of one other log kept until its owner proves them (newest kept when full).
pub const PENDING_PER_LOG: usize = 16;
/// Tree heads one side offers in a run, at most.
pub const MAX_HEADS: usize = 64;
/// Hashes in one proof, at most (a tree of 2^64 leaves needs 64 plus one).
pub const MAX_PROOF: usize = 65;

/// A signed tree head's payload: the log's size and root when signed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TreeHead {
    /// Payload version.
    pub v: u64,
    /// Entries in the log.
    pub size: u64,
    /// The Merkle tree hash of those entries.
    pub root: Hash,
    /// Unix seconds when signed.
    pub time: u64,
}

impl Payload for TreeHead {
    const TYPE: DocType = DocType::TreeHead;
}

/// A checked tree head: the signer is the log.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Head {
    /// The log's key.
    pub log: PublicKey,
    /// What it signed.
    pub head: TreeHead,
    /// The document, exact bytes.
    pub doc: SignedDocument,
}

impl Head {
    /// Decodes and checks a signed tree head (envelope, signature, type, payload).
    pub fn decode(bytes: &[u8]) -> Result<Head> {
        let doc = SignedDocument::decode(bytes)?;
        let head: TreeHead = doc.payload()?;
        Ok(Head {
            log: doc.signer(),
            head,
            doc,
        })
    }
}

/// Two tree heads of one log that no consistency proof joins.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SplitView {
    /// The log (its key's fingerprint).
    pub log: String,
    /// The head held before, its exact bytes in hex.
    pub first: String,
    /// The head that contradicts it, in hex.
    pub second: String,
    /// The peer (or `this instance`) through which the contradiction showed.
    pub via: String,
    /// What was found, in words.
    pub reason: String,
    /// When it was found, Unix milliseconds.
    pub detected_ms: u64,
}

/// What a log owner answers to the heads of its log that a peer holds.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LogAnswer {
    /// The owner's newest signed tree head (none while its log is empty).
    pub head: Option<Vec<u8>>,
    /// One consistency proof per head of the owner's log that the peer offered, in order:
    /// from that head to `head` (empty where none exists).
    pub proofs: Vec<Vec<Hash>>,
    /// The newest heads the owner holds of other logs (gossip).
    pub heads: Vec<Vec<u8>>,
}

// -------------------------------------------------------------------------------------------
// Hashing and proofs (pure)

/// The hash of a log entry: `BLAKE3(0x00 || entry)`.
pub fn leaf_hash(entry: &[u8]) -> Hash {
    let mut h = blake3::Hasher::new();
    h.update(&[0]);
    h.update(entry);
    h.finalize().into()
}

/// The hash of an interior node: `BLAKE3(0x01 || left || right)`.
pub fn node_hash(left: &Hash, right: &Hash) -> Hash {
    let mut h = blake3::Hasher::new();
    h.update(&[1]);
    h.update(left.as_bytes());
    h.update(right.as_bytes());
    h.finalize().into()
}

/// The root of the empty log: `BLAKE3("")`.
pub fn empty_root() -> Hash {
    Hash::of(b"")
}

/// The largest power of two smaller than `n` (`n` at least 2).
fn split(n: u64) -> u64 {
    1 << (63 - (n - 1).leading_zeros())
}

/// Complete subtrees of a log: the hash of the 2^level entries from `index << level`.
pub trait Nodes {
    /// The stored hash of a complete subtree.
    fn node(&self, level: u32, index: u64) -> Result<Hash>;

    /// The Merkle tree hash of entries `[start, end)` (not empty).
    fn subtree(&self, start: u64, end: u64) -> Result<Hash> {
        let n = end - start;
        if n.is_power_of_two() && start % n == 0 {
            return self.node(n.trailing_zeros(), start >> n.trailing_zeros());
        }
        let k = split(n);
        Ok(node_hash(
            &self.subtree(start, start + k)?,
            &self.subtree(start + k, end)?,
        ))
    }

    /// The root of the first `size` entries.
    fn root(&self, size: u64) -> Result<Hash> {
        if size == 0 {
            Ok(empty_root())
        } else {
            self.subtree(0, size)
        }
    }

    /// The inclusion proof of entry `index` in the first `size` entries (RFC 9162 2.1.3.1).
    fn inclusion(&self, index: u64, size: u64) -> Result<Vec<Hash>> {
        let mut out = Vec::new();
        self.path(index, 0, size, &mut out)?;
        Ok(out)
    }

    #[doc(hidden)]
    fn path(&self, m: u64, start: u64, end: u64, out: &mut Vec<Hash>) -> Result<()> {
        let n = end - start;
        if n <= 1 {
            return Ok(());
        }
        let k = split(n);
        if m < k {
            self.path(m, start, start + k, out)?;
            out.push(self.subtree(start + k, end)?);
        } else {
            self.path(m - k, start + k, end, out)?;
            out.push(self.subtree(start, start + k)?);
        }
        Ok(())
    }

    /// The consistency proof from the first `first` entries to the first `second`
    /// (RFC 9162 2.1.4.1; empty when `first` is 0 or equals `second`).
    fn consistency(&self, first: u64, second: u64) -> Result<Vec<Hash>> {
        let mut out = Vec::new();
        if first > 0 && first < second {
            self.subproof(first, 0, second, true, &mut out)?;
        }
        Ok(out)
    }

    #[doc(hidden)]
    fn subproof(
        &self,
        m: u64,
        start: u64,
        end: u64,
        whole: bool,
        out: &mut Vec<Hash>,
    ) -> Result<()> {
        let n = end - start;
        if m == n {
            if !whole {
                out.push(self.subtree(start, end)?);
            }
            return Ok(());
        }
        let k = split(n);
        if m <= k {
            self.subproof(m, start, start + k, whole, out)?;
            out.push(self.subtree(start + k, end)?);
        } else {
            self.subproof(m - k, start + k, end, false, out)?;
            out.push(self.subtree(start, start + k)?);
        }
        Ok(())
    }
}

/// The nodes an append of the entry with `leaf` at position `index` completes, bottom up:
/// `(level, index, hash)`, given the log's existing complete subtrees.
pub fn append_nodes(nodes: &impl Nodes, index: u64, leaf: Hash) -> Result<Vec<(u32, u64, Hash)>> {
    let mut out = vec![(0, index, leaf)];
    let (mut level, mut i, mut cur) = (0u32, index, leaf);
    while i & 1 == 1 {
        cur = node_hash(&nodes.node(level, i - 1)?, &cur);
        level += 1;
        i >>= 1;
        out.push((level, i, cur));
    }
    Ok(out)
}

/// Checks an inclusion proof (RFC 9162 2.1.3.2).
pub fn verify_inclusion(leaf: &Hash, index: u64, size: u64, path: &[Hash], root: &Hash) -> bool {
    if index >= size {
        return false;
    }
    let (mut fn_, mut sn, mut r) = (index, size - 1, *leaf);
    for p in path {
        if sn == 0 {
            return false;
        }
        if fn_ & 1 == 1 || fn_ == sn {
            r = node_hash(p, &r);
            if fn_ & 1 == 0 {
                while fn_ & 1 == 0 && fn_ != 0 {
                    fn_ >>= 1;
                    sn >>= 1;
                }
            }
        } else {
            r = node_hash(&r, p);
        }
        fn_ >>= 1;
        sn >>= 1;
    }
    sn == 0 && r == *root
}

/// Checks a consistency proof (RFC 9162 2.1.4.2) from a log of `first` entries with root
/// `first_root` to one of `second` entries with root `second_root`.
pub fn verify_consistency(
    first: u64,
    first_root: &Hash,
    second: u64,
    second_root: &Hash,
    path: &[Hash],
) -> bool {
    if first > second {
        return false;
    }
    if first == second {
        return path.is_empty() && first_root == second_root;
    }
    if first == 0 {
        return path.is_empty() && *first_root == empty_root();
    }
    if path.is_empty() {
        return false;
    }
    let mut path: Vec<Hash> = path.to_vec();
    if first.is_power_of_two() {
        path.insert(0, *first_root);
    }
    let (mut fn_, mut sn) = (first - 1, second - 1);
    while fn_ & 1 == 1 {
        fn_ >>= 1;
        sn >>= 1;
    }
    let (mut fr, mut sr) = (path[0], path[0]);
    for c in &path[1..] {
        if sn == 0 {
            return false;
        }
        if fn_ & 1 == 1 || fn_ == sn {
            fr = node_hash(c, &fr);
            sr = node_hash(c, &sr);
            if fn_ & 1 == 0 {
                while fn_ & 1 == 0 && fn_ != 0 {
                    fn_ >>= 1;
                    sn >>= 1;
                }
            }
        } else {
            sr = node_hash(&sr, c);
        }
        fn_ >>= 1;
        sn >>= 1;
    }
    fr == *first_root && sr == *second_root && sn == 0
}

// -------------------------------------------------------------------------------------------
// The store's own log

struct StoredNodes<'a>(&'a Store);

impl Nodes for StoredNodes<'_> {
    fn node(&self, level: u32, index: u64) -> Result<Hash> {
        let key = node_key(level, index);
        let v = self.0.db.get_pinned_cf(self.0.cf(CF_META), key)?;
        v.and_then(|v| Hash::from_slice(&v))
            .ok_or_else(|| StoreError::CorruptRecord {
                what: "transparency log",
                detail: format!("node {level}/{index} missing"),
            })
    }
}

fn node_key(level: u32, index: u64) -> Vec<u8> {
    [NODE_PREFIX, &[level as u8], &index.to_be_bytes()].concat()
}

fn u64_value(v: Option<impl AsRef<[u8]>>, what: &'static str) -> Result<Option<u64>> {
    v.map(|v| {
        <[u8; 8]>::try_from(v.as_ref())
            .map(u64::from_be_bytes)
            .map_err(|_| StoreError::CorruptRecord {
                what,
                detail: "not a u64".into(),
            })
    })
    .transpose()
}

impl Store {
    /// Entries in this instance's transparency log.
    pub fn log_size(&self) -> Result<u64> {
        u64_value(
            self.db.get_pinned_cf(self.cf(CF_META), SIZE_KEY)?,
            "transparency log size",
        )
        .map(|s| s.unwrap_or(0))
    }

    /// The newest signed tree head of this instance's log (none while it is empty).
    pub fn log_head(&self) -> Result<Option<Head>> {
        match self.db.get_pinned_cf(self.cf(CF_META), HEAD_KEY)? {
            Some(b) => Head::decode(&b).map(Some),
            None => Ok(None),
        }
    }

    /// The root of the first `size` entries of this instance's log.
    pub fn log_root(&self, size: u64) -> Result<Hash> {
        StoredNodes(self).root(size)
    }

    /// Entry `index` of this instance's log (a checkpoint document).
    pub fn log_entry(&self, index: u64) -> Result<Option<SignedDocument>> {
        let key = [ENTRY_PREFIX, &index.to_be_bytes()].concat();
        match self.db.get_pinned_cf(self.cf(CF_META), key)? {
            Some(b) => Ok(Some(SignedDocument::decode(&b)?)),
            None => Ok(None),
        }
    }

    /// Where the document `id` is in this instance's log.
    pub fn log_index_of(&self, id: &Hash) -> Result<Option<u64>> {
        let key = [AT_PREFIX, id.as_bytes().as_slice()].concat();
        u64_value(
            self.db.get_pinned_cf(self.cf(CF_META), key)?,
            "transparency log index",
        )
    }

    /// The inclusion proof of entry `index` in the first `size` entries.
    pub fn log_inclusion(&self, index: u64, size: u64) -> Result<Vec<Hash>> {
        if index >= size || size > self.log_size()? {
            return Err(StoreError::InvalidInput {
                what: "inclusion proof",
                detail: format!(
                    "entry {index} of a log of {size} (this log has {})",
                    self.log_size()?
                ),
            });
        }
        StoredNodes(self).inclusion(index, size)
    }

    /// The consistency proof between the first `first` and the first `second` entries.
    pub fn log_consistency(&self, first: u64, second: u64) -> Result<Vec<Hash>> {
        if first > second || second > self.log_size()? {
            return Err(StoreError::InvalidInput {
                what: "consistency proof",
                detail: format!(
                    "from {first} to {second} entries (this log has {})",
                    self.log_size()?
                ),
            });
        }
        StoredNodes(self).consistency(first, second)
    }

    /// Appends `entry` to this instance's log and signs the new tree head, all in `batch`.
    /// The caller holds [`Store::tlog`] until the batch is written.
    pub(crate) fn log_append(
        &self,
        batch: &mut rocksdb::WriteBatch,
        entry: &SignedDocument,
    ) -> Result<()> {
        let index = self.log_size()?;
        let nodes = StoredNodes(self);
        let new = append_nodes(&nodes, index, leaf_hash(entry.bytes()))?;
        let meta = self.cf(CF_META);
        for (level, i, h) in &new {
            batch.put_cf(meta, node_key(*level, *i), h.as_bytes());
        }
        // The new root: the completed subtrees plus the untouched ones to their left.
        let size = index + 1;
        let root = {
            let fresh: std::collections::HashMap<(u32, u64), Hash> =
                new.iter().map(|(l, i, h)| ((*l, *i), *h)).collect();
            struct With<'a>(
                &'a StoredNodes<'a>,
                &'a std::collections::HashMap<(u32, u64), Hash>,
            );
            impl Nodes for With<'_> {
                fn node(&self, level: u32, index: u64) -> Result<Hash> {
                    match self.1.get(&(level, index)) {
                        Some(h) => Ok(*h),
                        None => self.0.node(level, index),
                    }
                }
            }
            With(&nodes, &fresh).root(size)?
        };
        let head = TreeHead {
            v: PAYLOAD_VERSION,
            size,
            root,
            time: now_ms() / 1000,
        };
        let signed = SignedDocument::sign(&head, self.identity().signing_key())
            .map_err(StoreError::signing("tree head".into(), "report this"))?;
        batch.put_cf(
            meta,
            [ENTRY_PREFIX, &index.to_be_bytes()].concat(),
            entry.bytes(),
        );
        batch.put_cf(
            meta,
            [AT_PREFIX, entry.id().as_bytes().as_slice()].concat(),
            index.to_be_bytes(),
        );
        batch.put_cf(meta, SIZE_KEY, size.to_be_bytes());
        batch.put_cf(meta, HEAD_KEY, signed.bytes());
        Ok(())
    }

    // ---------------------------------------------------------------------------------------
    // Other logs: heads peers showed, proofs, split views

    /// The newest head of `log` proven consistent (or this instance's own head).
    pub fn log_seen(&self, log: &PublicKey) -> Result<Option<Head>> {
        if *log == self.identity().public_key() {
            return self.log_head();
        }
        let key = [SEEN_PREFIX, log.as_bytes().as_slice()].concat();
        match self.db.get_pinned_cf(self.cf(CF_META), key)? {
            Some(b) => Head::decode(&b).map(Some),
            None => Ok(None),
        }
    }

    /// Every other log's newest proven head.
    pub fn log_seen_all(&self) -> Result<Vec<Head>> {
        let mut out = Vec::new();
        for item in self.scan(CF_META, SEEN_PREFIX, None) {
            let (_, v) = item?;
            out.push(Head::decode(&v)?);
        }
        Ok(out)
    }

    fn log_pending(&self, log: &PublicKey) -> Result<Vec<(Vec<u8>, Head)>> {
        let prefix = [PENDING_PREFIX, log.as_bytes().as_slice()].concat();
        let mut out = Vec::new();
        for item in self.scan(CF_META, &prefix, None) {
            let (k, v) = item?;
            out.push((k.to_vec(), Head::decode(&v)?));
        }
        Ok(out)
    }

    /// The split views found, oldest first.
    pub fn split_views(&self) -> Result<Vec<SplitView>> {
        let mut out = Vec::new();
        for item in self.scan(CF_META, SPLIT_PREFIX, None) {
            let (_, v) = item?;
            out.push(
                cbor::from_canonical(&v, 1 << 20).map_err(|e| StoreError::CorruptRecord {
                    what: "split view",
                    detail: e.to_string(),
                })?,
            );
        }
        out.sort_by_key(|s: &SplitView| s.detected_ms);
        Ok(out)
    }

    fn record_split_view(
        &self,
        first: &Head,
        second: &Head,
        via: &str,
        reason: String,
    ) -> Result<()> {
        tracing::error!(
            log = %first.log.short(),
            via,
            "split view: {reason}"
        );
        let view = SplitView {
            log: first.log.fingerprint(),
            first: hex::encode(first.doc.bytes()),
            second: hex::encode(second.doc.bytes()),
            via: via.into(),
            reason,
            detected_ms: now_ms(),
        };
        // One record per pair of heads: the same contradiction seen again is not news.
        let pair = Hash::of(
            &[
                first.doc.id().as_bytes().as_slice(),
                second.doc.id().as_bytes(),
            ]
            .concat(),
        );
        let key = [
            SPLIT_PREFIX,
            first.log.as_bytes().as_slice(),
            pair.as_bytes(),
        ]
        .concat();
        if self.db.get_pinned_cf(self.cf(CF_META), &key)?.is_some() {
            return Ok(());
        }
        let bytes = cbor::to_canonical(&view).map_err(|e| StoreError::Unencodable {
            what: "split view".into(),
            detail: e.to_string(),
        })?;
        self.db.put_cf(self.cf(CF_META), key, bytes)?;
        self.db.flush_wal(true)?;
        Ok(())
    }

    /// A peer's name for reports: the pinned peer with that key, else its key's short form.
    pub fn peer_label(&self, key: &PublicKey) -> Result<String> {
        Ok(self
            .peer_list()?
            .into_iter()
            .find(|p| p.key == *key)
            .map(|p| p.name)
            .unwrap_or_else(|| key.short()))
    }

    /// Whether this instance keeps heads of `log`: its own, a pinned peer's or a trusted
    /// writer's key.
    fn follows_log(&self, log: &PublicKey) -> Result<bool> {
        if *log == self.identity().public_key() {
            return Ok(true);
        }
        Ok(self.peer_list()?.iter().any(|p| p.key == *log)
            || self.trust_list()?.iter().any(|(_, k)| k == log))
    }

    /// The tree heads to offer `peer` (whose log key is `peer_key`) in a run: first those of
    /// the peer's own log (the newest proven and every one not yet proven: it answers with a
    /// proof for each), then this instance's own head and the newest of every other log it
    /// follows (gossip). At most [`MAX_HEADS`].
    pub fn log_heads_to_offer(&self, peer_key: &PublicKey) -> Result<Vec<Vec<u8>>> {
        let mut out = Vec::new();
        if *peer_key != self.identity().public_key() {
            if let Some(h) = self.log_seen(peer_key)? {
                out.push(h.doc.bytes().to_vec());
            }
            for (_, h) in self.log_pending(peer_key)? {
                out.push(h.doc.bytes().to_vec());
            }
        }
        if let Some(h) = self.log_head()? {
            out.push(h.doc.bytes().to_vec());
        }
        for h in self.log_seen_all()? {
            if h.log != *peer_key {
                out.push(h.doc.bytes().to_vec());
            }
        }
        out.truncate(MAX_HEADS);
        Ok(out)
    }

    /// Answers the heads a peer offered: a consistency proof from each head of this
    /// instance's log to its newest head, and learns the heads of other logs (gossip). A head
    /// of this log that is not a prefix of it (its key signed another history) is recorded as
    /// a split view.
    pub fn log_answer(&self, offered: &[Vec<u8>], via: &str) -> Result<LogAnswer> {
        let mut heads: Vec<Vec<u8>> = self
            .log_seen_all()?
            .into_iter()
            .map(|h| h.doc.bytes().to_vec())
            .collect();
        heads.truncate(MAX_HEADS);
        let own = self.log_head()?;
        let me = self.identity().public_key();
        let mut proofs = Vec::new();
        for bytes in offered.iter().take(MAX_HEADS) {
            let Ok(h) = Head::decode(bytes) else { continue };
            if h.log != me {
                continue;
            }
            let size = own.as_ref().map_or(0, |o| o.head.size);
            let mine = (h.head.size <= size)
                .then(|| self.log_root(h.head.size))
                .transpose()?;
            if mine != Some(h.head.root) {
                if let Some(own) = &own {
                    self.record_split_view(
                        &h,
                        own,
                        via,
                        format!(
                            "a peer holds a head of this instance's log (size {}) that is not in its history: its key signed another history",
                            h.head.size
                        ),
                    )?;
                }
                proofs.push(Vec::new());
                continue;
            }
            proofs.push(self.log_consistency(h.head.size, size)?);
        }
        self.log_learn(offered, &me, via)?;
        Ok(LogAnswer {
            head: own.map(|h| h.doc.bytes().to_vec()),
            proofs,
            heads,
        })
    }

    /// Checks what `peer_key`'s instance answered to the heads offered (`offered`, as
    /// [`Store::log_heads_to_offer`] gave them): its newest head must extend every head of its
    /// log offered, by the proof given for it. A head that no proof joins is a split view.
    pub fn log_check_answer(
        &self,
        peer_key: &PublicKey,
        offered: &[Vec<u8>],
        answer: &LogAnswer,
        via: &str,
        now_secs: u64,
    ) -> Result<()> {
        let offered: Vec<Head> = offered
            .iter()
            .filter_map(|b| Head::decode(b).ok())
            .filter(|h| h.log == *peer_key)
            .collect();
        self.log_learn(&answer.heads, peer_key, via)?;
        let Some(bytes) = &answer.head else {
            if let Some(first) = offered.iter().find(|h| h.head.size > 0) {
                self.record_split_view(
                    first,
                    first,
                    via,
                    format!(
                        "the log showed {} entries before and now shows none",
                        first.head.size
                    ),
                )?;
            }
            return Ok(());
        };
        let new = Head::decode(bytes)?;
        if new.log != *peer_key {
            return Err(StoreError::InvalidInput {
                what: "tree head",
                detail: format!("signed by {} instead of the peer's key", new.log.short()),
            });
        }
        if new.head.time > now_secs + crate::admin::CHECKPOINT_CLOCK_SKEW_SECS {
            return Err(StoreError::InvalidInput {
                what: "tree head",
                detail: "signed in the future".into(),
            });
        }
        let mut all_joined = true;
        for (i, old) in offered.iter().enumerate() {
            let proof = answer.proofs.get(i).map(Vec::as_slice).unwrap_or(&[]);
            if verify_consistency(
                old.head.size,
                &old.head.root,
                new.head.size,
                &new.head.root,
                proof,
            ) {
                let key = pending_key(old);
                self.db.delete_cf(self.cf(CF_META), key)?;
            } else {
                all_joined = false;
                self.record_split_view(
                    old,
                    &new,
                    via,
                    format!(
                        "the log's head of {} entries does not extend the one of {} entries seen before",
                        new.head.size, old.head.size
                    ),
                )?;
            }
        }
        if all_joined {
            let key = [SEEN_PREFIX, peer_key.as_bytes().as_slice()].concat();
            self.db.put_cf(self.cf(CF_META), key, new.doc.bytes())?;
        }
        Ok(())
    }

    /// Learns heads of logs other than `owner`'s (the peer answering or asking): a head of a
    /// followed log that contradicts the proven one at the same size is a split view at once;
    /// one of another size waits until its log proves it.
    pub fn log_learn(&self, heads: &[Vec<u8>], owner: &PublicKey, via: &str) -> Result<()> {
        let me = self.identity().public_key();
        for bytes in heads.iter().take(MAX_HEADS) {
            let Ok(h) = Head::decode(bytes) else { continue };
            if h.log == *owner || !self.follows_log(&h.log)? {
                continue;
            }
            if h.log == me {
                let size = self.log_size()?;
                if h.head.size > size || self.log_root(h.head.size)? != h.head.root {
                    if let Some(own) = self.log_head()? {
                        self.record_split_view(
                            &own,
                            &h,
                            via,
                            format!(
                                "a head of this instance's log (size {}) that is not in its history: its key signed another history",
                                h.head.size
                            ),
                        )?;
                    }
                }
                continue;
            }
            let seen = self.log_seen(&h.log)?;
            match &seen {
                Some(s) if s.head.size == h.head.size && s.head.root == h.head.root => continue,
                Some(s) if s.head.size == h.head.size => {
                    self.record_split_view(
                        s,
                        &h,
                        via,
                        format!("two heads of {} entries with different roots", h.head.size),
                    )?;
                    continue;
                }
                _ => {}
            }
            let pending = self.log_pending(&h.log)?;
            if pending.iter().any(|(_, p)| p.head == h.head) {
                continue;
            }
            if pending.len() >= PENDING_PER_LOG {
                // Keep the newest: drop the smallest.
                if let Some((k, _)) = pending.iter().min_by_key(|(_, p)| p.head.size) {
                    self.db.delete_cf(self.cf(CF_META), k)?;
                }
            }
            // Not proven yet: the log's owner proves it (or cannot) at the next run with it.
            self.db
                .put_cf(self.cf(CF_META), pending_key(&h), h.doc.bytes())?;
        }
        Ok(())
    }
}

fn pending_key(h: &Head) -> Vec<u8> {
    [
        PENDING_PREFIX,
        h.log.as_bytes().as_slice(),
        &h.head.size.to_be_bytes(),
        h.head.root.as_bytes(),
    ]
    .concat()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    #[derive(Default)]
    struct Mem {
        nodes: HashMap<(u32, u64), Hash>,
        leaves: Vec<Hash>,
    }

    impl Nodes for Mem {
        fn node(&self, level: u32, index: u64) -> Result<Hash> {
            self.nodes
                .get(&(level, index))
                .copied()
                .ok_or(StoreError::CorruptRecord {
                    what: "node",
                    detail: format!("{level}/{index}"),
                })
        }
    }

    impl Mem {
        fn push(&mut self, entry: &[u8]) {
            let leaf = leaf_hash(entry);
            for (l, i, h) in append_nodes(self, self.leaves.len() as u64, leaf).unwrap() {
                self.nodes.insert((l, i), h);
            }
            self.leaves.push(leaf);
        }
    }

    /// MTH straight from the definition.
    fn mth(leaves: &[Hash]) -> Hash {
        match leaves.len() {
            0 => empty_root(),
            1 => leaves[0],
            n => {
                let k = split(n as u64) as usize;
                node_hash(&mth(&leaves[..k]), &mth(&leaves[k..]))
            }
        }
    }

    #[test]
    fn roots_match_the_definition_and_every_proof_verifies() {
        let mut log = Mem::default();
        for n in 1..=40u64 {
            log.push(format!("entry {n}").as_bytes());
            let root = log.root(n).unwrap();
            assert_eq!(root, mth(&log.leaves), "size {n}");
            for i in 0..n {
                let path = log.inclusion(i, n).unwrap();
                assert!(verify_inclusion(
                    &log.leaves[i as usize],
                    i,
                    n,
                    &path,
                    &root
                ));
                let other = (i + 1) % n;
                if other != i {
                    assert!(!verify_inclusion(
                        &log.leaves[other as usize],
                        i,
                        n,
                        &path,
                        &root
                    ));
                }
            }
            for m in 0..=n {
                let first = log.root(m).unwrap();
                let proof = log.consistency(m, n).unwrap();
                assert!(
                    verify_consistency(m, &first, n, &root, &proof),
                    "{m} -> {n}"
                );
                if m > 0 && m < n {
                    let wrong = node_hash(&first, &first);
                    assert!(
                        !verify_consistency(m, &wrong, n, &root, &proof),
                        "{m} -> {n}"
                    );
                    let mut bad = proof.clone();
                    bad[0] = wrong;
                    assert!(!verify_consistency(m, &first, n, &root, &bad), "{m} -> {n}");
                    assert!(!verify_consistency(n, &root, m, &first, &proof));
                }
            }
        }
    }

    #[test]
    fn a_forked_history_has_no_consistency_proof() {
        let (mut a, mut b) = (Mem::default(), Mem::default());
        for n in 0..5 {
            a.push(format!("{n}").as_bytes());
            b.push(format!("{n}").as_bytes());
        }
        a.push(b"left");
        b.push(b"right");
        a.push(b"more");
        let (ra, rb) = (a.root(6).unwrap(), b.root(6).unwrap());
        assert_ne!(ra, rb);
        // b's head of 6 cannot be extended by a's log of 7, whatever proof a offers.
        let proof = a.consistency(6, 7).unwrap();
        assert!(verify_consistency(6, &ra, 7, &a.root(7).unwrap(), &proof));
        assert!(!verify_consistency(6, &rb, 7, &a.root(7).unwrap(), &proof));
        // Both extend the common prefix.
        let p5 = a.consistency(5, 7).unwrap();
        assert!(verify_consistency(
            5,
            &b.root(5).unwrap(),
            7,
            &a.root(7).unwrap(),
            &p5
        ));
    }
}
