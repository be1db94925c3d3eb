//! What replication needs from the store beyond local publishing: applying documents received
//! from a peer, removing entries outright, creating system documents, and moving blobs in
//! verifiable pieces that survive a crash and resume.
//!
//! Invariant: a received document is stored only after every check a local one would pass:
//! envelope and signature, trust for the feed, consistency of its payload with the feed and
//! key, and presence of every blob it names.
//! Invariant: a chunk group of a received blob is written only after `bao-tree` has verified it
//! against the blob's hash, and its `.have` record is appended only after its bytes were
//! written, so a killed process leaves a log that names only groups on disk. The files are
//! synced at the end of every piece; an assembled blob is checked end to end before it is
//! installed, and one that fails (a machine crash between a record and its data) starts over.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bao_tree::io::outboard::PostOrderOutboard;
use bao_tree::io::sync::{
    encode_ranges_validated, DecodeResponseIter, Outboard, OutboardMut, ReadAt,
};
use bao_tree::io::BaoContentItem;
use bao_tree::{BaoTree, ChunkNum, ChunkRanges, TreeNode};

use crate::blob::{
    self, RandomAccess, StagedBlob, BLOCK_SIZE, CHUNK_GROUP_BYTES, CHUNK_GROUP_LOG, INLINE_MAX,
};
use crate::doc::{
    Assessment, AssessmentType, DocType, Manifest, Payload, Policy, Promotion, SignedDocument,
    Tombstone, Vulnerability, PAYLOAD_VERSION,
};
use crate::hlc;
use crate::names;
use crate::store::{now_ms, BlobRecord, EntryKind, EntryValue, FeedKind, StoreError, Txn};
use crate::{Hash, Store, SYSTEM_FEED};

type Result<T, E = StoreError> = std::result::Result<T, E>;

/// How a received entry meets the one already held for its key.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ApplyRule {
    /// The sender is authoritative (pull and push): its entry replaces ours.
    Authoritative,
    /// Mirror: the later hybrid logical clock wins; on a tie a tombstone wins, then the larger
    /// document id.
    LastWriterWins,
}

/// What applying one received entry did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Applied {
    /// A key that was absent.
    Inserted,
    /// A key that held something else.
    Replaced,
    /// The same document was already there.
    Unchanged,
    /// Lost to the entry already held (mirror mode).
    Superseded,
}

/// Whether `new` beats `old` under last-writer-wins.
pub fn wins(new: &EntryValue, old: &EntryValue) -> bool {
    let rank = |v: &EntryValue| (v.hlc, v.kind == EntryKind::Tombstone, v.doc);
    rank(new) > rank(old)
}

/// The key a system document lives under in the system set.
pub fn system_key(doc: &SignedDocument) -> Result<String> {
    let bad = |e: crate::doc::DocumentError| StoreError::Document(e);
    Ok(match doc.doc_type() {
        DocType::Vulnerability => format!(
            "vulnerability/{}",
            doc.payload::<Vulnerability>().map_err(bad)?.id
        ),
        DocType::Assessment => format!(
            "assessment/{}",
            doc.payload::<Assessment>().map_err(bad)?.id
        ),
        DocType::AssessmentType => format!(
            "assessment-type/{}",
            doc.payload::<AssessmentType>().map_err(bad)?.name
        ),
        DocType::Policy => format!("policy/{}", doc.payload::<Policy>().map_err(bad)?.name),
        DocType::Promotion => doc.payload::<Promotion>().map_err(bad)?.key(),
        DocType::Tombstone => doc.payload::<Tombstone>().map_err(bad)?.key,
        other => {
            return Err(StoreError::NotSystemDocument {
                doc_type: other.to_string(),
            })
        }
    })
}

/// A payload that lives in the system set; its clock is set when it is signed.
pub trait SystemPayload: Payload {
    /// Sets the hybrid logical clock before signing.
    fn set_hlc(&mut self, hlc: u64);
}

impl SystemPayload for Vulnerability {
    fn set_hlc(&mut self, hlc: u64) {
        self.hlc = hlc;
    }
}
impl SystemPayload for Assessment {
    fn set_hlc(&mut self, hlc: u64) {
        self.hlc = hlc;
    }
}
impl SystemPayload for AssessmentType {
    fn set_hlc(&mut self, hlc: u64) {
        self.hlc = hlc;
    }
}
impl SystemPayload for Policy {
    fn set_hlc(&mut self, hlc: u64) {
        self.hlc = hlc;
    }
}
impl SystemPayload for Promotion {
    fn set_hlc(&mut self, hlc: u64) {
        self.hlc = hlc;
    }
}

/// A document received from a peer that passed every check a local one would: envelope and
/// signature, trust for its feed, consistency with the feed and the key it goes under, valid
/// names. Only [`Store::verify_remote`] makes one; [`Store::apply_verified`] stores it.
#[derive(Clone, Debug)]
pub struct VerifiedDoc {
    doc: SignedDocument,
    key: String,
    value: EntryValue,
    blobs: Vec<(Hash, u64)>,
}

impl VerifiedDoc {
    /// The entry key it goes under.
    pub fn key(&self) -> &str {
        &self.key
    }

    /// What the entry will hold.
    pub fn value(&self) -> &EntryValue {
        &self.value
    }

    /// The blobs a manifest names, with their declared sizes (empty for other documents).
    pub fn blobs(&self) -> &[(Hash, u64)] {
        &self.blobs
    }

    /// The document.
    pub fn document(&self) -> &SignedDocument {
        &self.doc
    }
}

impl Store {
    /// Checks the envelope `bytes` received from a peer for `feed` completely (decode,
    /// signature, trust, payload against feed and key, names) before anything is done on its
    /// word.
    pub fn verify_remote(&self, feed: &crate::FeedRecord, bytes: &[u8]) -> Result<VerifiedDoc> {
        let doc = SignedDocument::decode(bytes)?;
        self.check_received(feed, doc)
    }

    /// [`Store::verify_remote`] of each of `docs`, answers in order: the signatures are
    /// checked on every core, and each signer's trust is read once.
    pub fn verify_remote_many(
        &self,
        feed: &crate::FeedRecord,
        docs: &[&[u8]],
    ) -> Vec<Result<VerifiedDoc>> {
        let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
        let mut trusted: std::collections::HashMap<crate::PublicKey, bool> =
            std::collections::HashMap::new();
        SignedDocument::decode_many(docs, threads)
            .into_iter()
            .map(|doc| {
                let doc = doc?;
                let signer = doc.signer();
                let t = match trusted.get(&signer) {
                    Some(&t) => t,
                    None => {
                        let t = self.is_trusted(&feed.name, &signer)?;
                        trusted.insert(signer, t);
                        t
                    }
                };
                self.check_received_trusted(feed, doc, t)
            })
            .collect()
    }

    pub(crate) fn check_received(
        &self,
        feed: &crate::FeedRecord,
        doc: SignedDocument,
    ) -> Result<VerifiedDoc> {
        let trusted = self.is_trusted(&feed.name, &doc.signer())?;
        self.check_received_trusted(feed, doc, trusted)
    }

    /// The checks after the signature, `trusted` saying whether the signer is trusted for the
    /// feed.
    fn check_received_trusted(
        &self,
        feed: &crate::FeedRecord,
        doc: SignedDocument,
        trusted: bool,
    ) -> Result<VerifiedDoc> {
        let scope = feed.name.as_str();
        doc.check_trusted(scope, |_| trusted)?;
        let mismatch = |why: String| StoreError::RemoteRejected {
            feed: feed.name.clone(),
            doc: doc.id(),
            reason: why,
        };
        let (key, kind, hlc, blobs) = match (feed.kind, doc.doc_type()) {
            (FeedKind::Package(ecosystem), DocType::Manifest) => {
                let m: Manifest = doc.payload()?;
                if m.feed != feed.name || m.ecosystem != ecosystem {
                    return Err(mismatch(format!(
                        "manifest is for {} feed `{}`",
                        m.ecosystem, m.feed
                    )));
                }
                names::check_package_name(ecosystem, &m.name)?;
                names::check_version(&m.version)?;
                for f in &m.files {
                    names::check_file_name(&f.name)?;
                }
                let blobs = m.files.iter().map(|f| (f.blob, f.size)).collect();
                (
                    names::package_key(&m.name, &m.version),
                    EntryKind::Manifest,
                    m.hlc,
                    blobs,
                )
            }
            (_, DocType::Tombstone) => {
                let t: Tombstone = doc.payload()?;
                if t.feed != feed.name {
                    return Err(mismatch(format!("tombstone is for feed `{}`", t.feed)));
                }
                (t.key, EntryKind::Tombstone, t.hlc, Vec::new())
            }
            (
                FeedKind::System,
                DocType::Vulnerability
                | DocType::Assessment
                | DocType::AssessmentType
                | DocType::Policy
                | DocType::Promotion,
            ) => {
                let hlc = match doc.doc_type() {
                    DocType::Vulnerability => doc.payload::<Vulnerability>()?.hlc,
                    DocType::Assessment => doc.payload::<Assessment>()?.hlc,
                    DocType::AssessmentType => doc.payload::<AssessmentType>()?.hlc,
                    DocType::Promotion => {
                        let p = doc.payload::<Promotion>()?;
                        p.check_names()?;
                        p.hlc
                    }
                    _ => doc.payload::<Policy>()?.hlc,
                };
                (system_key(&doc)?, EntryKind::Document, hlc, Vec::new())
            }
            (kind, t) => {
                return Err(mismatch(format!(
                    "a {t} document does not belong in a {kind:?} feed"
                )))
            }
        };
        Ok(VerifiedDoc {
            value: EntryValue {
                kind,
                doc: doc.id(),
                hlc,
            },
            doc,
            key,
            blobs,
        })
    }

    /// Applies documents received from a peer to `feed`. Each is checked completely first; a
    /// document that fails is reported in its slot and not stored, the others are committed
    /// together. A manifest whose blobs are not all stored fails with
    /// [`StoreError::MissingBlobs`].
    pub fn apply_remote(
        &self,
        feed: &str,
        docs: &[Vec<u8>],
        rule: ApplyRule,
    ) -> Result<Vec<Result<(String, Applied)>>> {
        let f = self.feed(feed)?;
        let checked: Vec<Result<VerifiedDoc>> =
            docs.iter().map(|b| self.verify_remote(&f, b)).collect();
        self.apply_checked(&f, checked, rule)
    }

    /// Applies documents that [`Store::verify_remote`] checked. Trust is looked at once more
    /// (it may have been withdrawn since), and every blob a manifest names must be stored; a
    /// document that fails is reported in its slot and not stored, the others are committed
    /// together in one write batch.
    pub fn apply_verified(
        &self,
        feed: &str,
        docs: Vec<VerifiedDoc>,
        rule: ApplyRule,
    ) -> Result<Vec<Result<(String, Applied)>>> {
        let f = self.feed(feed)?;
        let mut trust: std::collections::HashMap<crate::PublicKey, bool> =
            std::collections::HashMap::new();
        let checked = docs
            .into_iter()
            .map(|v| {
                let signer = v.doc.signer();
                let trusted = match trust.get(&signer) {
                    Some(&t) => t,
                    None => *trust
                        .entry(signer)
                        .or_insert(self.is_trusted(&f.name, &signer)?),
                };
                v.doc.check_trusted(&f.name, |_| trusted)?;
                Ok(v)
            })
            .collect();
        self.apply_checked(&f, checked, rule)
    }

    fn apply_checked(
        &self,
        f: &crate::FeedRecord,
        checked: Vec<Result<VerifiedDoc>>,
        rule: ApplyRule,
    ) -> Result<Vec<Result<(String, Applied)>>> {
        let feed = f.name.as_str();
        let mut w = self.write.lock();
        let mut txn = Txn::new(self, w.hlc);
        let mut out = Vec::with_capacity(checked.len());
        for item in checked {
            let c = match item {
                Ok(x) => x,
                Err(e) => {
                    out.push(Err(e));
                    continue;
                }
            };
            let doc = &c.doc;
            let mut missing = Vec::new();
            for (hash, size) in &c.blobs {
                match self.blob_record(hash)? {
                    Some(r) if r.size() == *size => {}
                    _ => missing.push(*hash),
                }
            }
            if !missing.is_empty() {
                out.push(Err(StoreError::MissingBlobs {
                    feed: feed.into(),
                    key: c.key,
                    missing,
                }));
                continue;
            }
            let old = txn.entry(f.id, &c.key)?;
            let applied = match old {
                None => Applied::Inserted,
                Some(o) if o.doc == c.value.doc => Applied::Unchanged,
                Some(o) if rule == ApplyRule::LastWriterWins && !wins(&c.value, &o) => {
                    Applied::Superseded
                }
                Some(_) => Applied::Replaced,
            };
            if matches!(applied, Applied::Inserted | Applied::Replaced) {
                txn.hlc = hlc::observe(txn.hlc, c.value.hlc, now_ms());
                txn.put_doc(doc);
                txn.protect_blobs(c.blobs.iter().map(|b| b.0));
                txn.set_entry(feed, &c.key, Some(c.value))?;
            }
            out.push(Ok((c.key, applied)));
        }
        txn.commit(&mut w)?;
        drop(w);
        self.sync()?;
        Ok(out)
    }

    /// Removes entries outright (no tombstone): for a pull replica dropping what its upstream
    /// never had. Returns how many were present.
    pub fn remove_entries(&self, feed: &str, keys: &[String]) -> Result<u64> {
        let f = self.feed(feed)?;
        let mut w = self.write.lock();
        let mut txn = Txn::new(self, w.hlc);
        let mut n = 0;
        for key in keys {
            if txn.entry(f.id, key)?.is_some() {
                txn.set_entry(feed, key, None)?;
                n += 1;
            }
        }
        txn.commit(&mut w)?;
        drop(w);
        self.sync()?;
        Ok(n)
    }

    /// Removes collected tombstones: each only if the key still holds exactly that value (a
    /// newer write in between wins), raising the feed's collected clock. Returns how many went.
    pub(crate) fn collect_entries(&self, feed: &str, old: &[(String, EntryValue)]) -> Result<u64> {
        let f = self.feed(feed)?;
        let mut w = self.write.lock();
        let mut txn = Txn::new(self, w.hlc);
        let mut n = 0;
        let mut high = f.collected_hlc;
        for (key, value) in old {
            if txn.entry(f.id, key)?.as_ref() == Some(value) {
                txn.set_entry(feed, key, None)?;
                high = high.max(value.hlc);
                n += 1;
            }
        }
        txn.feed(feed)?.collected_hlc = high;
        txn.commit(&mut w)?;
        drop(w);
        self.sync()?;
        Ok(n)
    }

    /// Signs a system document (vulnerability, assessment, type, policy) with the instance key
    /// and stores it in the system set, replacing what its key held.
    pub fn publish_system<P: SystemPayload>(&self, mut payload: P) -> Result<(String, Hash)> {
        let mut w = self.write.lock();
        let mut txn = Txn::new(self, w.hlc);
        let hlc = txn.tick();
        payload.set_hlc(hlc);
        let doc = SignedDocument::sign(&payload, self.identity().signing_key()).map_err(
            StoreError::signing("system document".into(), "shorten its text"),
        )?;
        let key = system_key(&doc)?;
        txn.put_doc(&doc);
        txn.set_entry(
            SYSTEM_FEED,
            &key,
            Some(EntryValue {
                kind: EntryKind::Document,
                doc: doc.id(),
                hlc,
            }),
        )?;
        txn.commit(&mut w)?;
        drop(w);
        self.sync()?;
        Ok((key, doc.id()))
    }

    /// Deletes a system document by key with a signed tombstone.
    pub fn delete_system(&self, key: &str) -> Result<Hash> {
        let f = self.feed(SYSTEM_FEED)?;
        let mut w = self.write.lock();
        let mut txn = Txn::new(self, w.hlc);
        let previous = match txn.entry(f.id, key)? {
            Some(v) if v.kind != EntryKind::Tombstone => v.doc,
            _ => {
                return Err(StoreError::EntryNotFound {
                    feed: SYSTEM_FEED.into(),
                    key: key.into(),
                })
            }
        };
        let hlc = txn.tick();
        let doc = SignedDocument::sign(
            &Tombstone {
                v: PAYLOAD_VERSION,
                feed: SYSTEM_FEED.into(),
                key: key.into(),
                hlc,
                previous: Some(previous),
            },
            self.identity().signing_key(),
        )
        .map_err(StoreError::signing("tombstone".into(), "shorten the key"))?;
        txn.put_doc(&doc);
        txn.set_entry(
            SYSTEM_FEED,
            key,
            Some(EntryValue {
                kind: EntryKind::Tombstone,
                doc: doc.id(),
                hlc,
            }),
        )?;
        txn.commit(&mut w)?;
        drop(w);
        self.sync()?;
        Ok(doc.id())
    }

    // -----------------------------------------------------------------------------------------
    // Blob transfer

    /// Encodes the chunk groups `groups` of a stored blob for sending: the `bao-tree` encoding
    /// of those ranges (the parent hashes on their paths and the verified data). Small blobs are
    /// sent whole as their bytes.
    pub fn encode_blob(&self, hash: &Hash, groups: &[(u64, u64)], out: &mut Vec<u8>) -> Result<()> {
        match self.blob_record(hash)? {
            None => Err(StoreError::BlobNotFound { hash: *hash }),
            Some(BlobRecord::Inline(bytes)) => {
                if Hash::of(&bytes) != *hash {
                    return Err(StoreError::CorruptBlob(blob::CorruptBlob {
                        hash: *hash,
                        offset: 0,
                        location: "inline".into(),
                    }));
                }
                out.extend_from_slice(&bytes);
                Ok(())
            }
            Some(BlobRecord::Backend(size)) => {
                let (data, outboard) = self.open_for_sending(hash)?;
                let tree = BaoTree::new(size, BLOCK_SIZE);
                let ob = PostOrderOutboard {
                    root: (*hash).into(),
                    tree,
                    data: Dyn(outboard),
                };
                encode_ranges_validated(Dyn(data), ob, &group_ranges(groups), out).map_err(|e| {
                    let location = self.files.describe(hash);
                    match e {
                        bao_tree::io::EncodeError::Io(io)
                            if blob::as_unavailable(&io).is_some() =>
                        {
                            StoreError::io("reading blob", Path::new(&location))(io)
                        }
                        e => StoreError::CorruptBlob(blob::CorruptBlob {
                            hash: *hash,
                            offset: 0,
                            location: format!("{location} ({e})"),
                        }),
                    }
                })
            }
        }
    }

    /// A blob's readers for sending, reused from the last few blobs sent: a peer asks for a
    /// blob one piece after another, and each piece continues where the last one ended.
    fn open_for_sending(
        &self,
        hash: &Hash,
    ) -> Result<(Arc<dyn RandomAccess>, Arc<dyn RandomAccess>)> {
        const KEEP: usize = 4;
        {
            let sending = self.sending.lock();
            if let Some((_, d, o)) = sending.iter().find(|(h, _, _)| h == hash) {
                return Ok((d.clone(), o.clone()));
            }
        }
        let (data, outboard) = self.files.open(hash).map_err(StoreError::io(
            "opening blob",
            Path::new(&self.files.describe(hash)),
        ))?;
        let (data, outboard): (Arc<dyn RandomAccess>, Arc<dyn RandomAccess>) =
            (Arc::from(data), Arc::from(outboard));
        let mut sending = self.sending.lock();
        if sending.len() >= KEEP {
            sending.remove(0);
        }
        sending.push((*hash, data.clone(), outboard.clone()));
        Ok((data, outboard))
    }

    /// Opens (or resumes) the reception of a blob of `size` bytes.
    pub fn receive_blob(&self, hash: Hash, size: u64) -> Result<IncomingBlob> {
        IncomingBlob::open(&self.dir().join("partial"), hash, size)
    }

    /// Stores a completed incoming blob and returns it pinned.
    pub fn finish_blob(&self, incoming: IncomingBlob) -> Result<crate::StoredBlob> {
        match incoming.finish()? {
            Finished::Inline(bytes) => self.put_blob(&bytes[..]),
            Finished::Staged(staged) => self.install_staged(staged),
        }
    }
}

impl Txn<'_> {
    fn protect_blobs(&mut self, blobs: impl Iterator<Item = Hash>) {
        self.protect.extend(blobs);
    }
}

struct Dyn(Arc<dyn RandomAccess>);

impl ReadAt for Dyn {
    fn read_at(&self, pos: u64, buf: &mut [u8]) -> io::Result<usize> {
        self.0.read_at(pos, buf)
    }
}

/// Chunk ranges from chunk-group ranges.
pub fn group_ranges(groups: &[(u64, u64)]) -> ChunkRanges {
    let mut r = ChunkRanges::empty();
    for &(a, b) in groups {
        if a < b {
            r |= ChunkRanges::from(
                ChunkNum(a << CHUNK_GROUP_LOG)..ChunkNum(b.saturating_mul(1 << CHUNK_GROUP_LOG)),
            );
        }
    }
    r
}

/// Number of chunk groups in a blob of `size` bytes.
pub fn group_count(size: u64) -> u64 {
    size.div_ceil(CHUNK_GROUP_BYTES as u64).max(1)
}

/// A blob being received: data and outboard written as verified pieces arrive, with a log of
/// the pieces that are on disk so a restarted transfer asks only for the rest.
#[derive(Debug)]
pub struct IncomingBlob {
    hash: Hash,
    size: u64,
    data_path: PathBuf,
    outboard_path: PathBuf,
    have_path: PathBuf,
    have: GroupSet,
    small: Option<Vec<u8>>,
}

/// The largest blob a transfer is opened for, whatever a peer declares: a terabyte is 2^26
/// chunk groups, a 8 MiB bit set. Replication limits it further by configuration.
pub const MAX_RECEIVED_BLOB_BYTES: u64 = 1 << 40;

/// Which chunk groups of a blob are present: one bit each.
#[derive(Debug)]
struct GroupSet {
    bits: Vec<u64>,
    len: u64,
}

impl GroupSet {
    fn new(len: u64) -> GroupSet {
        GroupSet {
            bits: vec![0; len.div_ceil(64) as usize],
            len,
        }
    }

    fn get(&self, g: u64) -> bool {
        g < self.len && self.bits[(g / 64) as usize] & (1 << (g % 64)) != 0
    }

    fn insert_range(&mut self, a: u64, b: u64) {
        for g in a..b.min(self.len) {
            self.bits[(g / 64) as usize] |= 1 << (g % 64);
        }
    }

    fn count(&self) -> u64 {
        self.bits.iter().map(|w| u64::from(w.count_ones())).sum()
    }

    /// The ranges of groups not present.
    fn missing(&self) -> Vec<(u64, u64)> {
        let mut out = Vec::new();
        let mut start = None;
        let mut g = 0;
        while g < self.len {
            // Whole words at once where they are all present or all missing.
            let word = self.bits[(g / 64) as usize];
            if g % 64 == 0 && g + 64 <= self.len && (word == u64::MAX || word == 0) {
                match (word == u64::MAX, start) {
                    (false, None) => start = Some(g),
                    (true, Some(s)) => {
                        out.push((s, g));
                        start = None;
                    }
                    _ => {}
                }
                g += 64;
                continue;
            }
            match (self.get(g), start) {
                (false, None) => start = Some(g),
                (true, Some(s)) => {
                    out.push((s, g));
                    start = None;
                }
                _ => {}
            }
            g += 1;
        }
        if let Some(s) = start {
            out.push((s, self.len));
        }
        out
    }
}

/// Writes the verified chunk groups of a blob's incoming pieces into its partial files as they
/// are decoded from a stream, so a transfer cut at any point keeps every whole group that
/// arrived. Made by [`IncomingBlob::writer`].
#[derive(Clone, Debug)]
pub struct PieceWriter {
    hash: Hash,
    size: u64,
    data_path: PathBuf,
    outboard_path: PathBuf,
    have_path: PathBuf,
}

/// What one [`PieceWriter::write_from`] did.
#[derive(Debug)]
pub struct PieceWritten {
    /// Chunk-group ranges written and logged.
    pub groups: Vec<(u64, u64)>,
    /// The bytes of a blob small enough to be kept inline, once they verified.
    pub small: Option<Vec<u8>>,
    /// Verified payload bytes written.
    pub bytes: u64,
    /// How the piece ended: `Ok` only if every group asked for arrived and verified.
    pub result: Result<()>,
}

impl PieceWriter {
    /// The blob.
    pub fn hash(&self) -> Hash {
        self.hash
    }

    /// Reads the `bao-tree` encoding of `groups` from `encoded` (blocking) and writes each chunk
    /// group once it has verified against the blob's hash, appending it to the `.have` log right
    /// after its bytes; the files are synced when the piece ends, however it ends.
    pub fn write_from(&self, groups: &[(u64, u64)], encoded: impl io::Read) -> PieceWritten {
        let mut written = PieceWritten {
            groups: Vec::new(),
            small: None,
            bytes: 0,
            result: Ok(()),
        };
        written.result = self.write_groups(groups, encoded, &mut written);
        written
    }

    fn corrupt(&self, offset: u64, why: String) -> StoreError {
        StoreError::CorruptBlob(blob::CorruptBlob {
            hash: self.hash,
            offset,
            location: format!("received piece ({why})"),
        })
    }

    fn write_groups(
        &self,
        groups: &[(u64, u64)],
        mut encoded: impl io::Read,
        written: &mut PieceWritten,
    ) -> Result<()> {
        if self.size <= INLINE_MAX {
            let mut bytes = Vec::with_capacity(self.size as usize);
            (&mut encoded)
                .take(INLINE_MAX + 1)
                .read_to_end(&mut bytes)
                .map_err(|e| self.corrupt(0, e.to_string()))?;
            if bytes.len() as u64 != self.size || Hash::of(&bytes) != self.hash {
                return Err(self.corrupt(0, "bytes do not match the hash".into()));
            }
            written.bytes = self.size;
            written.groups.push((0, 1));
            written.small = Some(bytes);
            return Ok(());
        }
        let tree = BaoTree::new(self.size, BLOCK_SIZE);
        let ranges = group_ranges(groups);
        let open = |p: &Path, read: bool| {
            OpenOptions::new()
                .read(read)
                .write(true)
                .open(p)
                .map_err(StoreError::io("opening", p))
        };
        let data = open(&self.data_path, false)?;
        let ob_file = open(&self.outboard_path, true)?;
        let mut have = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.have_path)
            .map_err(StoreError::io("opening", &self.have_path))?;
        let mut ob = FileOutboard {
            root: self.hash.into(),
            tree,
            file: &ob_file,
        };
        let mut outcome = Ok(());
        for item in DecodeResponseIter::new(self.hash.into(), tree, encoded, &ranges) {
            match item {
                Ok(BaoContentItem::Parent(p)) => {
                    if let Err(e) = ob.save(p.node, &p.pair) {
                        outcome = Err(StoreError::io("writing", &self.outboard_path)(e));
                        break;
                    }
                }
                Ok(BaoContentItem::Leaf(l)) => {
                    // Leaves are whole chunk groups (the last one may be short).
                    let g = l.offset / CHUNK_GROUP_BYTES as u64;
                    let mut rec = [0u8; 16];
                    rec[..8].copy_from_slice(&g.to_be_bytes());
                    rec[8..].copy_from_slice(&(g + 1).to_be_bytes());
                    let step = std::os::unix::fs::FileExt::write_all_at(&data, &l.data, l.offset)
                        .map_err(StoreError::io("writing", &self.data_path))
                        .and_then(|()| {
                            have.write_all(&rec)
                                .map_err(StoreError::io("writing", &self.have_path))
                        });
                    if let Err(e) = step {
                        outcome = Err(e);
                        break;
                    }
                    written.bytes += l.data.len() as u64;
                    match written.groups.last_mut() {
                        Some(last) if last.1 == g => last.1 = g + 1,
                        _ => written.groups.push((g, g + 1)),
                    }
                }
                Err(e) => {
                    let at = written.groups.last().map_or(0, |r| r.1) * CHUNK_GROUP_BYTES as u64;
                    outcome = Err(self.corrupt(at, e.to_string()));
                    break;
                }
            }
        }
        // Data and outboard first, then the log that names them.
        data.sync_data()
            .map_err(StoreError::io("syncing", &self.data_path))?;
        ob_file
            .sync_data()
            .map_err(StoreError::io("syncing", &self.outboard_path))?;
        have.sync_data()
            .map_err(StoreError::io("syncing", &self.have_path))?;
        outcome?;
        let asked: u64 = groups
            .iter()
            .map(|&(a, b)| b.min(group_count(self.size)).saturating_sub(a))
            .sum();
        let got: u64 = written.groups.iter().map(|&(a, b)| b - a).sum();
        if got < asked {
            return Err(self.corrupt(
                got * CHUNK_GROUP_BYTES as u64,
                format!("the piece ended after {got} of {asked} chunk groups"),
            ));
        }
        Ok(())
    }
}

enum Finished {
    Inline(Vec<u8>),
    Staged(StagedBlob),
}

struct FileOutboard<'a> {
    root: blake3::Hash,
    tree: BaoTree,
    file: &'a File,
}

impl Outboard for FileOutboard<'_> {
    fn root(&self) -> blake3::Hash {
        self.root
    }
    fn tree(&self) -> BaoTree {
        self.tree
    }
    fn load(&self, node: TreeNode) -> io::Result<Option<(blake3::Hash, blake3::Hash)>> {
        let Some(offset) = self.tree.post_order_offset(node) else {
            return Ok(None);
        };
        let mut buf = [0u8; 64];
        std::os::unix::fs::FileExt::read_exact_at(self.file, &mut buf, offset.value() * 64)?;
        let mut l = [0u8; 32];
        let mut r = [0u8; 32];
        l.copy_from_slice(&buf[..32]);
        r.copy_from_slice(&buf[32..]);
        Ok(Some((
            blake3::Hash::from_bytes(l),
            blake3::Hash::from_bytes(r),
        )))
    }
}

impl OutboardMut for FileOutboard<'_> {
    fn save(&mut self, node: TreeNode, pair: &(blake3::Hash, blake3::Hash)) -> io::Result<()> {
        let Some(offset) = self.tree.post_order_offset(node) else {
            return Ok(());
        };
        let mut buf = [0u8; 64];
        buf[..32].copy_from_slice(pair.0.as_bytes());
        buf[32..].copy_from_slice(pair.1.as_bytes());
        std::os::unix::fs::FileExt::write_all_at(self.file, &buf, offset.value() * 64)
    }
    fn sync(&mut self) -> io::Result<()> {
        self.file.sync_data()
    }
}

impl IncomingBlob {
    fn open(dir: &Path, hash: Hash, size: u64) -> Result<IncomingBlob> {
        let hex = hash.to_hex();
        let data_path = dir.join(format!("{hex}.data"));
        let outboard_path = dir.join(format!("{hex}.obao"));
        let have_path = dir.join(format!("{hex}.have"));
        if size > MAX_RECEIVED_BLOB_BYTES {
            return Err(StoreError::BlobTooLarge {
                hash,
                size,
                max: MAX_RECEIVED_BLOB_BYTES,
            });
        }
        let groups = group_count(size);
        let mut incoming = IncomingBlob {
            hash,
            size,
            data_path,
            outboard_path,
            have_path,
            have: GroupSet::new(groups),
            small: None,
        };
        if size <= INLINE_MAX {
            return Ok(incoming);
        }
        fs::create_dir_all(dir).map_err(StoreError::io("creating", dir))?;
        // A previous attempt's log: 16-byte records of (start group, end group), big-endian.
        if let Ok(log) = fs::read(&incoming.have_path) {
            for rec in log.chunks_exact(16) {
                let a = u64::from_be_bytes(rec[..8].try_into().unwrap_or_default());
                let b = u64::from_be_bytes(rec[8..].try_into().unwrap_or_default());
                incoming.have.insert_range(a, b);
            }
        }
        for p in [&incoming.data_path, &incoming.outboard_path] {
            OpenOptions::new()
                .create(true)
                .append(true)
                .open(p)
                .map_err(StoreError::io("opening", p))?;
        }
        Ok(incoming)
    }

    /// The blob.
    pub fn hash(&self) -> Hash {
        self.hash
    }

    /// Its size.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// Chunk-group ranges still missing.
    pub fn missing(&self) -> Vec<(u64, u64)> {
        if self.size <= INLINE_MAX {
            return if self.small.is_some() {
                vec![]
            } else {
                vec![(0, 1)]
            };
        }
        self.have.missing()
    }

    /// Bytes already received and kept.
    pub fn bytes_present(&self) -> u64 {
        if self.size <= INLINE_MAX {
            return if self.small.is_some() { self.size } else { 0 };
        }
        let full = self.have.count() * CHUNK_GROUP_BYTES as u64;
        full.min(self.size)
    }

    /// Verifies and writes one piece, the encoding of chunk groups `groups` (as produced by
    /// [`Store::encode_blob`]). Each chunk group is written as soon as it has verified; nothing
    /// of a group that fails is kept, and the groups before it are.
    pub fn write_piece(&mut self, groups: &[(u64, u64)], encoded: &[u8]) -> Result<()> {
        let written = self.writer().write_from(groups, encoded);
        self.record(&written);
        written.result
    }

    /// A writer for pieces of this blob that can run on another thread while this value keeps
    /// the record of what is present; give what it returns to [`IncomingBlob::record`].
    pub fn writer(&self) -> PieceWriter {
        PieceWriter {
            hash: self.hash,
            size: self.size,
            data_path: self.data_path.clone(),
            outboard_path: self.outboard_path.clone(),
            have_path: self.have_path.clone(),
        }
    }

    /// Takes note of what a [`PieceWriter`] wrote.
    pub fn record(&mut self, written: &PieceWritten) {
        if let Some(bytes) = &written.small {
            self.small = Some(bytes.clone());
        }
        for &(a, b) in &written.groups {
            self.have.insert_range(a, b);
        }
    }

    /// True when every chunk group is present.
    pub fn is_complete(&self) -> bool {
        if self.size <= INLINE_MAX {
            return self.small.is_some();
        }
        self.have.count() == self.have.len
    }

    fn finish(self) -> Result<Finished> {
        if let Some(b) = self.small {
            return Ok(Finished::Inline(b));
        }
        if !self.is_complete() {
            return Err(StoreError::BlobIncomplete { hash: self.hash });
        }
        // Check the assembled file once more end to end before it becomes a stored blob.
        let data =
            File::open(&self.data_path).map_err(StoreError::io("opening", &self.data_path))?;
        let ob = File::open(&self.outboard_path)
            .map_err(StoreError::io("opening", &self.outboard_path))?;
        let mut reader = blob::VerifyingReader::tree(
            self.hash,
            self.size,
            Box::new(data),
            Box::new(ob),
            self.data_path.display().to_string(),
        );
        if let Err(e) = io::copy(&mut reader, &mut io::sink()) {
            return Err(match blob::as_corrupt(&e) {
                Some(c) => {
                    // Only a crash of the machine between a log record and its data reaching
                    // the disk can get here; start this blob over rather than fail for ever.
                    for p in [&self.data_path, &self.outboard_path, &self.have_path] {
                        let _ = fs::remove_file(p);
                    }
                    StoreError::CorruptBlob(c.clone())
                }
                None => StoreError::Io {
                    action: "verifying",
                    path: self.data_path.clone(),
                    source: e,
                },
            });
        }
        let _ = fs::remove_file(&self.have_path);
        Ok(Finished::Staged(StagedBlob::from_parts(
            self.hash,
            self.size,
            self.data_path,
            self.outboard_path,
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        /// The bit set answers what a plain list of flags would, whatever ranges are added.
        #[test]
        fn group_set_matches_a_list_of_flags(
            len in 0u64..300,
            ranges in proptest::collection::vec((0u64..320, 0u64..320), 0..12),
        ) {
            let mut set = GroupSet::new(len);
            let mut flags = vec![false; len as usize];
            for &(a, b) in &ranges {
                set.insert_range(a, b);
                for g in a..b.min(len) {
                    flags[g as usize] = true;
                }
            }
            let mut missing = Vec::new();
            let mut start = None;
            for (g, &have) in flags.iter().enumerate() {
                match (have, start) {
                    (false, None) => start = Some(g as u64),
                    (true, Some(s)) => {
                        missing.push((s, g as u64));
                        start = None;
                    }
                    _ => {}
                }
            }
            if let Some(s) = start {
                missing.push((s, len));
            }
            prop_assert_eq!(set.missing(), missing);
            prop_assert_eq!(set.count(), flags.iter().filter(|f| **f).count() as u64);
        }
    }
}
