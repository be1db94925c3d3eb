//! Signed air-gap bundles: feeds carried in one file to a site that never connects.
//!
//! [`Store::export_bundle`] writes the documents of one or more feeds, every blob they name
//! and a checkpoint per feed into one stream, reading the store as it writes (documents and
//! blobs are never all in memory). A bundle is full, or incremental from a change-log cursor
//! per feed (usually the `to` cursors of a previous bundle's header). [`Store::import_bundle`]
//! reads the file twice. The first pass checks everything and stores nothing: the framing,
//! every document's signature and trust and its fit to its feed, every checkpoint (trusted
//! signer, not a rollback, not expired), every blob's hash, that every blob a manifest names
//! is in the bundle, and the exporter's signature over the whole file. The second pass stores
//! the blobs, each checked against its hash again (blobs already held are skipped, so an
//! interrupted import resumes where it stopped), and then applies the documents, removals and
//! checkpoints of every feed in one write batch, after checking that each feed's root, as
//! the batch leaves it, is the one its checkpoint signs.
//!
//! Format (wire-spec section 19): the eight bytes `CAIRNBD1`, then records, each a kind byte,
//! a big-endian u64 body length and the body: one `HEADER` (canonical CBOR [`Header`]), one
//! `CHECKPOINT` per feed in header order (the envelope), any number of `DOC` (u16 feed index,
//! envelope) and `REMOVE` (u16 feed index, key) records, then `BLOB` records (32-byte hash,
//! bytes), and one `END` record: the exporter's ed25519 signature of
//! `"cairn/bundle/v1\0" || BLAKE3(every byte before END)`. Nothing may follow it.
//!
//! Invariant: nothing a bundle holds becomes visible before every check of both passes
//! passed; then all of it becomes visible in one write batch. Blobs stored by an import that
//! then fails are named by nothing and go at the next garbage collection.

use std::collections::{HashMap, HashSet};
use std::fs::File;
use std::io::{self, BufReader, Read, Write};
use std::path::Path;

use ed25519_dalek::Signer;
use serde::{Deserialize, Serialize};

use crate::doc::{serde_bytes_array, Checkpoint, DocType, Manifest, MAX_DOCUMENT_BYTES};
use crate::replica::VerifiedDoc;
use crate::store::{
    now_ms, BlobPin, ChangesSince, Cursor, FeedKind, FeedRecord, StoreError, Txn, CF_META,
};
use crate::{cbor, hlc, names, Ecosystem, Hash, PublicKey, SignedDocument, Store, SYSTEM_FEED};

type Result<T, E = StoreError> = std::result::Result<T, E>;

/// The first eight bytes of every bundle.
pub const MAGIC: &[u8; 8] = b"CAIRNBD1";
/// The version of [`Header`].
pub const BUNDLE_VERSION: u64 = 1;
/// The largest header accepted.
pub const MAX_HEADER_BYTES: u64 = 1 << 20;
/// The most feeds one bundle carries.
pub const MAX_FEEDS: usize = 4096;
/// The longest entry key a `REMOVE` record may carry.
pub const MAX_KEY_BYTES: usize = 1024;
/// The most `REMOVE` records one bundle carries (an export with more makes the feed's
/// section full instead).
pub const MAX_REMOVES: u64 = 100_000;
/// What the closing signature covers, before the digest.
const SIGNING_DOMAIN: &[u8] = b"cairn/bundle/v1\0";
/// Meta records: the cursor each feed was imported up to, per exporter.
const IMPORTED_PREFIX: &[u8] = b"bundle-imported\0";

/// Record kinds.
const HEADER: u8 = 1;
const CHECKPOINT: u8 = 2;
const DOC: u8 = 3;
const REMOVE: u8 = 4;
const BLOB: u8 = 5;
const END: u8 = 6;

/// What a bundle holds, written first.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Header {
    /// [`BUNDLE_VERSION`].
    pub v: u64,
    /// The key of the instance that wrote it (and signs its `END` record).
    #[serde(with = "serde_bytes_array")]
    pub exporter: [u8; 32],
    /// Unix seconds when it was written.
    pub created: u64,
    /// One section per feed, in the order of its `CHECKPOINT` records.
    pub feeds: Vec<Section>,
    /// How many `BLOB` records follow.
    pub blobs: u64,
    /// Their bytes (without the hashes).
    pub blob_bytes: u64,
}

/// One feed in a bundle.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Section {
    /// Feed name, or `@system`.
    pub name: String,
    /// `raw`, `pypi`, `npm`, `cargo` or `system`.
    pub kind: String,
    /// Absent for a full section (the feed's every entry; entries the importer holds beyond
    /// them are removed); else the exporter's change-log cursor the section continues from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub since: Option<Cursor>,
    /// The exporter's change-log cursor the section brings the feed to (the `since` of the
    /// next incremental bundle).
    pub to: Cursor,
    /// How many `DOC` records it has.
    pub docs: u64,
    /// How many `REMOVE` records it has.
    pub removes: u64,
}

impl Section {
    fn kind_of(kind: FeedKind) -> String {
        match kind {
            FeedKind::System => "system".into(),
            FeedKind::Package(e) => e.to_string(),
        }
    }
}

/// What to export.
#[derive(Clone, Debug, Default)]
pub struct ExportOptions {
    /// Feeds (and `@system`); empty for every feed and `@system`.
    pub feeds: Vec<String>,
    /// Per feed, the cursor an incremental section starts after; feeds without one are full.
    pub since: HashMap<String, Cursor>,
    /// How long the checkpoints signed for the bundle stay valid.
    pub ttl_secs: u64,
}

/// What an export wrote.
#[derive(Clone, Debug, Serialize)]
pub struct ExportReport {
    /// BLAKE3 of every byte before the `END` record: the bundle's id.
    pub id: Hash,
    /// Bytes written.
    pub bytes: u64,
    /// The header written.
    pub header: Header,
    /// Feeds asked for incrementally that went full, with the reason.
    pub full_instead: Vec<(String, String)>,
}

/// What an import did to one feed.
#[derive(Clone, Debug, Serialize)]
pub struct ImportedFeed {
    /// Feed name.
    pub feed: String,
    /// The import created the feed.
    pub created: bool,
    /// The section was incremental.
    pub incremental: bool,
    /// Entries set or removed.
    pub changed: u64,
    /// The checkpoint's change-log sequence number (the writer's).
    pub seq: u64,
}

/// What an import did, or for a check what it would do.
#[derive(Clone, Debug, Serialize)]
pub struct ImportReport {
    /// The bundle's id.
    pub id: Hash,
    /// The exporter's key.
    pub exporter: String,
    /// Unix seconds when it was written.
    pub created: u64,
    /// Whether it was applied (false for a check).
    pub applied: bool,
    /// Per feed.
    pub feeds: Vec<ImportedFeed>,
    /// Documents in the bundle.
    pub docs: u64,
    /// Blobs in the bundle.
    pub blobs: u64,
    /// Blobs stored by this import.
    pub blobs_stored: u64,
    /// Blobs this site held already (from earlier bundles, or an interrupted import).
    pub blobs_held: u64,
    /// Bytes of the blobs stored.
    pub bytes_stored: u64,
}

fn refused(offset: u64, reason: impl Into<String>) -> StoreError {
    StoreError::BundleRefused {
        offset,
        reason: reason.into(),
    }
}

fn signing_message(digest: &Hash) -> Vec<u8> {
    [SIGNING_DOMAIN, digest.as_bytes()].concat()
}

fn io_err<'a>(action: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> StoreError + 'a {
    move |source| StoreError::Io {
        action,
        path: path.to_owned(),
        source,
    }
}

/// A writer that hashes and counts what goes through it.
struct Sink<W: Write> {
    out: W,
    hasher: blake3::Hasher,
    written: u64,
}

impl<W: Write> Write for Sink<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.out.write(buf)?;
        self.hasher.update(&buf[..n]);
        self.written += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.out.flush()
    }
}

impl<W: Write> Sink<W> {
    fn head(&mut self, kind: u8, len: u64) -> io::Result<()> {
        let mut h = [0u8; 9];
        h[0] = kind;
        h[1..].copy_from_slice(&len.to_be_bytes());
        self.write_all(&h)
    }

    fn record(&mut self, kind: u8, parts: &[&[u8]]) -> io::Result<()> {
        let len: usize = parts.iter().map(|p| p.len()).sum();
        self.head(kind, len as u64)?;
        for p in parts {
            self.write_all(p)?;
        }
        Ok(())
    }
}

/// A feed's part of an export, planned before anything is written.
struct Plan {
    section: Section,
    checkpoint: Vec<u8>,
    docs: Vec<Hash>,
    removes: Vec<String>,
}

impl Store {
    /// Writes a bundle of the feeds `opts` names to `out` (see the module documentation).
    /// The caller writes to a temporary file and renames it when this returns.
    pub fn export_bundle(&self, out: impl Write, opts: &ExportOptions) -> Result<ExportReport> {
        let mut feeds = Vec::new();
        if opts.feeds.is_empty() {
            feeds.extend(self.list_feeds()?.into_iter().map(|f| f.name));
            feeds.push(SYSTEM_FEED.to_owned());
        } else {
            for f in &opts.feeds {
                if !feeds.contains(f) {
                    feeds.push(f.clone());
                }
            }
        }
        if feeds.len() > MAX_FEEDS {
            return Err(StoreError::InvalidInput {
                what: "export",
                detail: format!("{} feeds, over the limit of {MAX_FEEDS}", feeds.len()),
            });
        }
        let mut full_instead = Vec::new();
        let mut plans = Vec::with_capacity(feeds.len());
        let mut removes = 0u64;
        for name in &feeds {
            let since = opts.since.get(name).copied();
            let mut plan = self.plan_feed(name, since, opts.ttl_secs, &mut full_instead)?;
            if removes + plan.section.removes > MAX_REMOVES {
                full_instead.push((
                    name.clone(),
                    format!("the bundle would carry more than {MAX_REMOVES} removals"),
                ));
                plan = self.plan_feed(name, None, opts.ttl_secs, &mut full_instead)?;
            }
            removes += plan.section.removes;
            plans.push(plan);
        }
        // The blobs every manifest names, once each, pinned until they are written.
        let mut blobs: Vec<(Hash, u64)> = Vec::new();
        let mut seen = HashSet::new();
        let mut pins: Vec<BlobPin> = Vec::new();
        for p in &plans {
            for id in &p.docs {
                let doc = self.export_doc(&p.section.name, id)?;
                if doc.doc_type() == DocType::Manifest {
                    let m: Manifest = doc.payload()?;
                    for f in m.files {
                        if seen.insert(f.blob) {
                            pins.push(self.pin(f.blob));
                            blobs.push((f.blob, f.size));
                        }
                    }
                }
            }
        }
        let header = Header {
            v: BUNDLE_VERSION,
            exporter: *self.identity().public_key().as_bytes(),
            created: now_ms() / 1000,
            feeds: plans.iter().map(|p| p.section.clone()).collect(),
            blobs: blobs.len() as u64,
            blob_bytes: blobs.iter().map(|b| b.1).sum(),
        };
        let header_bytes = cbor::to_canonical(&header).map_err(|e| StoreError::Unencodable {
            what: "bundle header".into(),
            detail: e.to_string(),
        })?;
        let mut w = Sink {
            out,
            hasher: blake3::Hasher::new(),
            written: 0,
        };
        let wr = StoreError::Input;
        w.write_all(MAGIC).map_err(wr)?;
        w.record(HEADER, &[&header_bytes]).map_err(wr)?;
        for p in &plans {
            w.record(CHECKPOINT, &[&p.checkpoint]).map_err(wr)?;
        }
        for (i, p) in plans.iter().enumerate() {
            let index = (i as u16).to_be_bytes();
            for id in &p.docs {
                let doc = self.export_doc(&p.section.name, id)?;
                w.record(DOC, &[&index, doc.bytes()]).map_err(wr)?;
            }
            for key in &p.removes {
                w.record(REMOVE, &[&index, key.as_bytes()]).map_err(wr)?;
            }
        }
        for (hash, size) in &blobs {
            w.head(BLOB, 32 + size).map_err(wr)?;
            w.write_all(hash.as_bytes()).map_err(wr)?;
            let n = self.read_blob_to(hash, &mut w)?;
            if n != *size {
                return Err(StoreError::BlobSizeMismatch {
                    file: "(bundle)".into(),
                    hash: *hash,
                    declared: *size,
                    actual: n,
                });
            }
        }
        let id = Hash::from_bytes(*w.hasher.finalize().as_bytes());
        let signature = self.identity().signing_key().sign(&signing_message(&id));
        let mut end = [0u8; 9 + 64];
        end[0] = END;
        end[1..9].copy_from_slice(&64u64.to_be_bytes());
        end[9..].copy_from_slice(&signature.to_bytes());
        w.out.write_all(&end).map_err(wr)?;
        w.out.flush().map_err(wr)?;
        drop(pins);
        Ok(ExportReport {
            id,
            bytes: w.written + end.len() as u64,
            header,
            full_instead,
        })
    }

    fn export_doc(&self, feed: &str, id: &Hash) -> Result<SignedDocument> {
        self.document(id)?
            .ok_or_else(|| StoreError::missing_document("entry", feed, id))
    }

    /// One feed's section: its checkpoint and the entries (or changes) it covers, read until
    /// the feed stood still while they were read.
    fn plan_feed(
        &self,
        name: &str,
        since: Option<Cursor>,
        ttl_secs: u64,
        full_instead: &mut Vec<(String, String)>,
    ) -> Result<Plan> {
        for _ in 0..8 {
            let s0 = self.feed_summary(name)?;
            let checkpoint = self.checkpoint_to_serve(name, ttl_secs, 300)?;
            let cp: Checkpoint = SignedDocument::peek_payload(&checkpoint)?;
            let mut docs = Vec::new();
            let mut removes = Vec::new();
            let mut used = None;
            let changes = match since {
                Some(c) => match self.changes_since(name, c, usize::MAX)? {
                    ChangesSince::Changes { changes, .. } => Some((c, changes)),
                    ChangesSince::FullDiffNeeded { reason } => {
                        full_instead.push((name.to_owned(), reason));
                        None
                    }
                },
                None => None,
            };
            match changes {
                Some((c, changes)) => {
                    used = Some(c);
                    let mut keys = HashSet::new();
                    for ch in changes {
                        if !keys.insert(ch.key.clone()) {
                            continue;
                        }
                        match self.entry(name, &ch.key)? {
                            Some(v) => docs.push(v.doc),
                            None => removes.push(ch.key),
                        }
                    }
                }
                None => docs.extend(self.entries(name)?.into_iter().map(|e| e.value.doc)),
            }
            let s1 = self.feed_summary(name)?;
            if s1.feed.epoch == s0.feed.epoch
                && s1.feed.seq == s0.feed.seq
                && cp.root.as_bytes() == s1.root.fingerprint.as_bytes()
                && cp.count == s1.root.count
            {
                return Ok(Plan {
                    section: Section {
                        name: name.to_owned(),
                        kind: Section::kind_of(s1.feed.kind),
                        since: used,
                        to: s1.feed.cursor(),
                        docs: docs.len() as u64,
                        removes: removes.len() as u64,
                    },
                    checkpoint,
                    docs,
                    removes,
                });
            }
            full_instead.retain(|(f, _)| f != name);
        }
        Err(StoreError::InvalidInput {
            what: "export",
            detail: format!("feed `{name}` kept changing while it was read; try again"),
        })
    }

    /// Checks the bundle at `path` completely and stores nothing: what importing it would do.
    pub fn check_bundle(&self, path: &Path) -> Result<ImportReport> {
        let p = self.read_bundle(path, false, &mut |_, _| {})?;
        Ok(p.report(false, Vec::new()))
    }

    /// Imports the bundle at `path` (see the module documentation); `progress` hears bytes
    /// read of both passes.
    pub fn import_bundle(
        &self,
        path: &Path,
        progress: &mut dyn FnMut(u64, u64),
    ) -> Result<ImportReport> {
        let first = self.read_bundle(path, false, &mut |done, total| {
            progress(done, total.saturating_mul(2))
        })?;
        let mut second = self.read_bundle(path, true, &mut |done, total| {
            progress(total.saturating_add(done), total.saturating_mul(2))
        })?;
        if second.id != first.id {
            return Err(refused(0, "the file changed while it was read"));
        }
        let feeds = self.apply_bundle(&mut second)?;
        Ok(second.report(true, feeds))
    }

    /// The cursor of `feed` a bundle of `exporter` was last imported up to.
    pub fn bundle_imported(&self, exporter: &PublicKey, feed: &str) -> Result<Option<Cursor>> {
        let key = imported_key(exporter, feed);
        match self.db.get_pinned_cf(self.cf(CF_META), key)? {
            None => Ok(None),
            Some(b) => {
                cbor::from_canonical(&b, 256)
                    .map(Some)
                    .map_err(|e| StoreError::CorruptRecord {
                        what: "bundle cursor",
                        detail: e.to_string(),
                    })
            }
        }
    }

    fn read_bundle(
        &self,
        path: &Path,
        apply: bool,
        progress: &mut dyn FnMut(u64, u64),
    ) -> Result<Parsed> {
        let (mut src, header, total) = open_bundle(path)?;
        let mut parsed = self.check_header(header)?;
        let now = now_ms() / 1000;
        for f in &mut parsed.feeds {
            let at = src.offset;
            let (kind, len) = src.head(true)?;
            if kind != CHECKPOINT || len > MAX_DOCUMENT_BYTES as u64 {
                return Err(refused(at, format!("no checkpoint for feed `{}`", f.name)));
            }
            let body = src.body(len)?;
            let name = f.name.clone();
            let on = |e: StoreError| refused(at, format!("the checkpoint of feed `{name}`: {e}"));
            let cp = self
                .check_checkpoint(&f.name, &body, now, true)
                .map_err(on)?;
            if cp.filter.is_some() {
                return Err(refused(
                    at,
                    format!(
                        "the checkpoint of feed `{}` is over a filter: it says nothing about the whole feed a bundle carries",
                        f.name
                    ),
                ));
            }
            f.cp_doc = Some(SignedDocument::decode(&body).map_err(|e| on(e.into()))?);
            f.cp = Some(cp);
        }
        let mut named: HashMap<Hash, u64> = HashMap::new();
        let mut blobs: HashSet<Hash> = HashSet::new();
        let mut blob_bytes = 0u64;
        loop {
            progress(src.offset, total);
            let at = src.offset;
            let (kind, len) = src.head(false)?;
            if kind != END {
                src.hasher.update(&[kind]);
                src.hasher.update(&len.to_be_bytes());
            }
            match kind {
                DOC | REMOVE => {
                    if !blobs.is_empty() {
                        return Err(refused(at, "a document after the blobs"));
                    }
                    let max = if kind == DOC {
                        MAX_DOCUMENT_BYTES
                    } else {
                        MAX_KEY_BYTES
                    };
                    if len < 3 || len > 2 + max as u64 {
                        return Err(refused(at, format!("a record of {len} bytes")));
                    }
                    let body = src.body(len)?;
                    let index = u16::from_be_bytes([body[0], body[1]]) as usize;
                    let f = parsed.feeds.get_mut(index).ok_or_else(|| {
                        refused(at, format!("feed index {index} is not in the header"))
                    })?;
                    if kind == DOC {
                        f.doc_count += 1;
                        if f.doc_count > f.section.docs {
                            return Err(refused(
                                at,
                                format!(
                                    "more documents for feed `{}` than its header says",
                                    f.name
                                ),
                            ));
                        }
                        let name = f.name.clone();
                        let on = |e: StoreError| {
                            refused(at, format!("a document of feed `{name}`: {e}"))
                        };
                        let doc = SignedDocument::decode(&body[2..]).map_err(|e| on(e.into()))?;
                        let v = self.check_received(&f.record, doc).map_err(on)?;
                        if !f.keys.insert(v.key().to_owned()) {
                            return Err(refused(
                                at,
                                format!("two records for `{}` in feed `{}`", v.key(), f.name),
                            ));
                        }
                        for (h, size) in v.blobs() {
                            if let Some(other) = named.insert(*h, *size) {
                                if other != *size {
                                    return Err(refused(
                                        at,
                                        format!(
                                            "blob {h} is named with two sizes ({other} and {size})"
                                        ),
                                    ));
                                }
                            }
                        }
                        if apply {
                            f.docs.push(v);
                        }
                    } else {
                        f.remove_count += 1;
                        if f.remove_count > f.section.removes {
                            return Err(refused(
                                at,
                                format!("more removals for feed `{}` than its header says", f.name),
                            ));
                        }
                        if f.section.since.is_none() {
                            return Err(refused(
                                at,
                                format!("a removal in the full section of feed `{}`", f.name),
                            ));
                        }
                        let key = String::from_utf8(body[2..].to_vec())
                            .map_err(|_| refused(at, "a removed key is not UTF-8"))?;
                        if let Some(eco) = f.record.ecosystem() {
                            let valid = names::split_package_key(&key).is_some_and(|(n, v)| {
                                names::check_package_name(eco, n).is_ok()
                                    && names::check_version(v).is_ok()
                            });
                            if !valid {
                                return Err(refused(
                                    at,
                                    format!("removed key `{key}` is not a package version"),
                                ));
                            }
                        }
                        if !f.keys.insert(key.clone()) {
                            return Err(refused(
                                at,
                                format!("two records for `{key}` in feed `{}`", f.name),
                            ));
                        }
                        f.removes.push(key);
                    }
                }
                BLOB => {
                    if len < 32 {
                        return Err(refused(at, format!("a blob record of {len} bytes")));
                    }
                    let mut h = [0u8; 32];
                    src.read_hashed(&mut h)?;
                    let hash = Hash::from_bytes(h);
                    let size = len - 32;
                    match named.get(&hash) {
                        Some(s) if *s == size => {}
                        Some(s) => {
                            return Err(refused(
                                at,
                                format!("blob {hash} has {size} bytes, its manifest says {s}"),
                            ))
                        }
                        None => {
                            return Err(refused(
                                at,
                                format!("blob {hash} is named by no document in the bundle"),
                            ))
                        }
                    }
                    if !blobs.insert(hash) || blobs.len() as u64 > parsed.header.blobs {
                        return Err(refused(
                            at,
                            format!("blob {hash} twice, or more blobs than the header says"),
                        ));
                    }
                    blob_bytes += size;
                    let got = if apply {
                        self.import_blob(&mut src, hash, size, &mut parsed)?
                    } else {
                        let mut blob = BlobReader::new(&mut src, size);
                        io::copy(&mut blob, &mut io::sink()).map_err(|e| src_err(at, e))?;
                        blob.hash()
                    };
                    if got != hash {
                        return Err(refused(at, format!("blob {hash} does not match its hash")));
                    }
                }
                END => {
                    if len != 64 {
                        return Err(refused(at, "a closing record that is not a signature"));
                    }
                    let id = Hash::from_bytes(*src.hasher.finalize().as_bytes());
                    let mut sig = [0u8; 64];
                    src.read_raw(&mut sig)?;
                    let mut more = [0u8; 1];
                    if src.r.read(&mut more).map_err(|e| src_err(src.offset, e))? != 0 {
                        return Err(refused(src.offset, "bytes after the closing signature"));
                    }
                    if !parsed.exporter.verify(&signing_message(&id), &sig) {
                        return Err(refused(at, format!("the exporter's signature (key {}) does not match the bundle: it was changed after it was written", parsed.exporter.short())));
                    }
                    parsed.id = id;
                    break;
                }
                other => return Err(refused(at, format!("a record of kind {other} here"))),
            }
        }
        progress(total, total);
        for f in &parsed.feeds {
            if f.doc_count != f.section.docs || f.remove_count != f.section.removes {
                return Err(refused(
                    src.offset,
                    format!(
                        "feed `{}` has {} documents and {} removals, its header says {} and {}",
                        f.name, f.doc_count, f.remove_count, f.section.docs, f.section.removes
                    ),
                ));
            }
        }
        if blobs.len() != named.len()
            || blobs.len() as u64 != parsed.header.blobs
            || blob_bytes != parsed.header.blob_bytes
        {
            return Err(refused(src.offset, format!("the bundle holds {} blobs ({blob_bytes} bytes); its documents name {} and its header says {} ({} bytes)", blobs.len(), named.len(), parsed.header.blobs, parsed.header.blob_bytes)));
        }
        Ok(parsed)
    }

    /// The header's checks, and what the site holds of each feed it names.
    fn check_header(&self, header: Header) -> Result<Parsed> {
        let bad = |why: String| refused(17, why);
        if header.v != BUNDLE_VERSION {
            return Err(bad(format!(
                "bundle version {} is not {BUNDLE_VERSION}; upgrade cairn",
                header.v
            )));
        }
        let exporter = PublicKey::from_bytes(header.exporter)
            .ok_or_else(|| bad("the exporter's key is not a valid key".into()))?;
        if header.feeds.is_empty() || header.feeds.len() > MAX_FEEDS {
            return Err(bad(format!("{} feeds", header.feeds.len())));
        }
        let removes: u64 = header
            .feeds
            .iter()
            .map(|s| s.removes)
            .fold(0, u64::saturating_add);
        if removes > MAX_REMOVES {
            return Err(bad(format!(
                "{removes} removals, over the limit of {MAX_REMOVES}"
            )));
        }
        let mut feeds = Vec::with_capacity(header.feeds.len());
        let mut seen = HashSet::new();
        for s in &header.feeds {
            if !seen.insert(s.name.as_str()) {
                return Err(bad(format!("feed `{}` twice", s.name)));
            }
            let kind = if s.name == SYSTEM_FEED && s.kind == "system" {
                FeedKind::System
            } else {
                names::check_feed_name(&s.name).map_err(|e| bad(e.to_string()))?;
                FeedKind::Package(s.kind.parse::<Ecosystem>().map_err(bad)?)
            };
            let (record, exists) = match self.feed(&s.name) {
                Ok(f) if f.kind == kind => (f, true),
                Ok(f) => {
                    return Err(bad(format!(
                        "feed `{}` is a {} feed here and a {} feed in the bundle",
                        s.name,
                        Section::kind_of(f.kind),
                        s.kind
                    )))
                }
                Err(StoreError::FeedNotFound { .. }) => (FeedRecord::new(0, &s.name, kind)?, false),
                Err(e) => return Err(e),
            };
            feeds.push(ParsedFeed {
                name: s.name.clone(),
                section: s.clone(),
                record,
                exists,
                cp: None,
                cp_doc: None,
                keys: HashSet::new(),
                docs: Vec::new(),
                removes: Vec::new(),
                doc_count: 0,
                remove_count: 0,
            });
        }
        Ok(Parsed {
            header,
            exporter,
            id: Hash::from_bytes([0; 32]),
            feeds,
            pins: Vec::new(),
            blobs_stored: 0,
            blobs_held: 0,
            bytes_stored: 0,
        })
    }

    /// Stores one blob of the bundle (unless it is held already), pinned until the import
    /// ends; returns the hash its bytes have.
    fn import_blob(
        &self,
        src: &mut Source<BufReader<File>>,
        hash: Hash,
        size: u64,
        parsed: &mut Parsed,
    ) -> Result<Hash> {
        let at = src.offset;
        parsed.pins.push(self.pin(hash));
        let mut blob = BlobReader::new(src, size);
        if self.blob_size(&hash)? == Some(size) {
            io::copy(&mut blob, &mut io::sink()).map_err(|e| src_err(at, e))?;
            parsed.blobs_held += 1;
            return Ok(blob.hash());
        }
        let stored = match self.put_blob(&mut blob) {
            Ok(s) => s,
            Err(StoreError::Input(e)) => return Err(src_err(at, e)),
            Err(e) => return Err(e),
        };
        if blob.left != 0 {
            return Err(refused(at, "a blob ends early"));
        }
        parsed.blobs_stored += 1;
        parsed.bytes_stored += size;
        tracing::info!(blob = %hash.short(), size, "stored a blob of the bundle");
        Ok(stored.hash)
    }

    /// Applies a bundle both passes checked: every feed in one write batch, committed only if
    /// each feed's root is then the one its checkpoint signs.
    fn apply_bundle(&self, p: &mut Parsed) -> Result<Vec<ImportedFeed>> {
        let mut w = self.write.lock();
        let mut txn = Txn::new(self, w.hlc);
        let mut out = Vec::new();
        for f in &p.feeds {
            let name = f.name.as_str();
            let (Some(cp), Some(cp_doc)) = (&f.cp, &f.cp_doc) else {
                return Err(refused(0, format!("no checkpoint for feed `{name}`")));
            };
            // Checked again under the write lock: a pull may have taken a newer checkpoint, or a
            // feed of another type appeared, since the bundle was read.
            let exists = match self.feed(name) {
                Ok(held) if held.kind == f.record.kind => true,
                Ok(held) => {
                    return Err(refused(
                        0,
                        format!(
                            "feed `{name}` is a {} feed here now",
                            Section::kind_of(held.kind)
                        ),
                    ))
                }
                Err(StoreError::FeedNotFound { .. }) => false,
                Err(e) => return Err(e),
            };
            self.check_checkpoint(name, cp_doc.bytes(), now_ms() / 1000, true)
                .map_err(|e| refused(0, format!("the checkpoint of feed `{name}`: {e}")))?;
            if !exists {
                let FeedKind::Package(e) = f.record.kind else {
                    return Err(StoreError::FeedNotFound { feed: name.into() });
                };
                txn.create_feed(name, e)?;
            }
            let feed_id = txn.feed(name)?.id;
            let mut changed = 0u64;
            if f.section.since.is_none() && exists {
                for e in self.entries(name)? {
                    if !f.keys.contains(&e.key) {
                        txn.set_entry(name, &e.key, None)?;
                        changed += 1;
                    }
                }
            }
            for key in &f.removes {
                if txn.entry(feed_id, key)?.is_some() {
                    txn.set_entry(name, key, None)?;
                    changed += 1;
                }
            }
            for v in &f.docs {
                let missing: Vec<Hash> = v
                    .blobs()
                    .iter()
                    .filter(|(h, size)| {
                        !matches!(self.blob_record(h), Ok(Some(r)) if r.size() == *size)
                    })
                    .map(|b| b.0)
                    .collect();
                if !missing.is_empty() {
                    return Err(StoreError::MissingBlobs {
                        feed: name.into(),
                        key: v.key().into(),
                        missing,
                    });
                }
                let doc = v.document();
                if !self.is_trusted(name, &doc.signer())? {
                    return Err(refused(
                        0,
                        format!(
                            "key {} is no longer trusted for feed `{name}`",
                            doc.signer().short()
                        ),
                    ));
                }
                if txn.entry(feed_id, v.key())? != Some(*v.value()) {
                    txn.hlc = hlc::observe(txn.hlc, v.value().hlc, now_ms());
                    txn.put_doc(doc);
                    txn.protect.extend(v.blobs().iter().map(|b| b.0));
                    txn.set_entry(name, v.key(), Some(*v.value()))?;
                    changed += 1;
                }
            }
            let root = txn.root(feed_id)?;
            if root.fingerprint.as_bytes() != cp.root.as_bytes() || root.count != cp.count {
                let why = match f.section.since {
                    Some(since) => {
                        let held = self.bundle_imported(&p.exporter, name)?;
                        format!(
                            "this site does not hold the state this incremental bundle continues from (the exporter's cursor {since}; {}): import the bundles in between, or a full one",
                            match held {
                                Some(c) => format!("the last bundle imported here reached {c}"),
                                None => "no bundle of this exporter was imported here".into(),
                            }
                        )
                    }
                    None => "the bundle does not hold the entries its checkpoint signs".into(),
                };
                return Err(refused(0, format!("feed `{name}`: applied, its root would be {} with {} entries, not {} with {} as its checkpoint signs; {why}", root.fingerprint, root.count, cp.root, cp.count)));
            }
            self.stage_checkpoint(&mut txn, name, cp, cp_doc)?;
            let cursor =
                cbor::to_canonical(&f.section.to).map_err(|e| StoreError::Unencodable {
                    what: "bundle cursor".into(),
                    detail: e.to_string(),
                })?;
            txn.meta_put(imported_key(&p.exporter, name), cursor);
            out.push(ImportedFeed {
                feed: name.into(),
                created: !exists,
                incremental: f.section.since.is_some(),
                changed,
                seq: cp.seq,
            });
        }
        txn.commit(&mut w)?;
        drop(w);
        self.sync()?;
        for f in &p.feeds {
            if let Some(cp) = &f.cp {
                self.record_upstream_checkpoint("bundle", &f.name, cp)?;
            }
        }
        Ok(out)
    }
}

/// Reads the header of the bundle at `path` (for the cursors an incremental export continues
/// from); the rest of the file is not read.
pub fn read_header(path: &Path) -> Result<Header> {
    Ok(open_bundle(path)?.1)
}

/// Opens the bundle at `path` and reads its magic and header: the reader (hashing from the
/// first byte), the header, and the file's size.
fn open_bundle(path: &Path) -> Result<(Source<BufReader<File>>, Header, u64)> {
    let file = File::open(path).map_err(io_err("opening", path))?;
    let total = file
        .metadata()
        .map_err(io_err("reading the size of", path))?
        .len();
    let mut src = Source {
        r: BufReader::with_capacity(1 << 20, file),
        hasher: blake3::Hasher::new(),
        offset: 0,
    };
    let mut magic = [0u8; 8];
    src.read_hashed(&mut magic)?;
    if &magic != MAGIC {
        return Err(refused(0, "this is not a cairn bundle"));
    }
    let (kind, len) = src.head(true)?;
    if kind != HEADER || len > MAX_HEADER_BYTES {
        return Err(refused(8, "the bundle does not start with its header"));
    }
    let body = src.body(len)?;
    let header = cbor::from_canonical(&body, MAX_HEADER_BYTES as usize)
        .map_err(|e| refused(17, format!("its header does not parse: {e}")))?;
    Ok((src, header, total))
}

fn imported_key(exporter: &PublicKey, feed: &str) -> Vec<u8> {
    [IMPORTED_PREFIX, exporter.as_bytes(), feed.as_bytes()].concat()
}

fn src_err(at: u64, e: io::Error) -> StoreError {
    if e.kind() == io::ErrorKind::UnexpectedEof {
        refused(at, "the file ends early (was it copied whole?)")
    } else {
        StoreError::Input(e)
    }
}

/// A bundle being read: every byte before the closing record goes into `hasher`.
struct Source<R: Read> {
    r: R,
    hasher: blake3::Hasher,
    offset: u64,
}

impl<R: Read> Source<R> {
    fn read_raw(&mut self, buf: &mut [u8]) -> Result<()> {
        let at = self.offset;
        self.r.read_exact(buf).map_err(|e| src_err(at, e))?;
        self.offset += buf.len() as u64;
        Ok(())
    }

    fn read_hashed(&mut self, buf: &mut [u8]) -> Result<()> {
        self.read_raw(buf)?;
        self.hasher.update(buf);
        Ok(())
    }

    /// A record's kind and body length (hashed now if `hash`, else by the caller).
    fn head(&mut self, hash: bool) -> Result<(u8, u64)> {
        let mut h = [0u8; 9];
        self.read_raw(&mut h)?;
        if hash {
            self.hasher.update(&h);
        }
        let mut len = [0u8; 8];
        len.copy_from_slice(&h[1..]);
        Ok((h[0], u64::from_be_bytes(len)))
    }

    /// A body the caller bounded.
    fn body(&mut self, len: u64) -> Result<Vec<u8>> {
        let mut b = vec![0u8; len as usize];
        self.read_hashed(&mut b)?;
        Ok(b)
    }
}

/// The `size` bytes of one blob record, hashed as the bundle and as the blob.
struct BlobReader<'a, R: Read> {
    src: &'a mut Source<R>,
    left: u64,
    blob: blake3::Hasher,
}

impl<'a, R: Read> BlobReader<'a, R> {
    fn new(src: &'a mut Source<R>, size: u64) -> Self {
        BlobReader {
            src,
            left: size,
            blob: blake3::Hasher::new(),
        }
    }

    fn hash(&self) -> Hash {
        Hash::from_bytes(*self.blob.finalize().as_bytes())
    }
}

impl<R: Read> Read for BlobReader<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.left == 0 {
            return Ok(0);
        }
        let want = buf
            .len()
            .min(usize::try_from(self.left).unwrap_or(usize::MAX));
        let n = self.src.r.read(&mut buf[..want])?;
        if n == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        self.src.hasher.update(&buf[..n]);
        self.blob.update(&buf[..n]);
        self.src.offset += n as u64;
        self.left -= n as u64;
        Ok(n)
    }
}

/// A bundle read so far.
struct Parsed {
    header: Header,
    exporter: PublicKey,
    id: Hash,
    feeds: Vec<ParsedFeed>,
    pins: Vec<BlobPin>,
    blobs_stored: u64,
    blobs_held: u64,
    bytes_stored: u64,
}

impl Parsed {
    fn report(&self, applied: bool, feeds: Vec<ImportedFeed>) -> ImportReport {
        let feeds = if feeds.is_empty() {
            self.feeds
                .iter()
                .map(|f| ImportedFeed {
                    feed: f.name.clone(),
                    created: !f.exists,
                    incremental: f.section.since.is_some(),
                    changed: 0,
                    seq: f.cp.as_ref().map_or(0, |c| c.seq),
                })
                .collect()
        } else {
            feeds
        };
        ImportReport {
            id: self.id,
            exporter: self.exporter.fingerprint(),
            created: self.header.created,
            applied,
            feeds,
            docs: self.feeds.iter().map(|f| f.doc_count).sum(),
            blobs: self.header.blobs,
            blobs_stored: self.blobs_stored,
            blobs_held: self.blobs_held,
            bytes_stored: self.bytes_stored,
        }
    }
}

/// One feed of a bundle read so far.
struct ParsedFeed {
    name: String,
    section: Section,
    /// The site's record, or for a feed it lacks the one the import would create.
    record: FeedRecord,
    exists: bool,
    cp: Option<Checkpoint>,
    cp_doc: Option<SignedDocument>,
    /// Keys of its documents and removals.
    keys: HashSet<String>,
    /// Its documents, checked (kept only when applying).
    docs: Vec<VerifiedDoc>,
    removes: Vec<String>,
    doc_count: u64,
    remove_count: u64,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{NewFile, NewPackage};
    use crate::{StoreOptions, TRUST_ALL};
    use ed25519_dalek::SigningKey;

    fn store() -> (tempfile::TempDir, Store) {
        let d = tempfile::tempdir().unwrap();
        let s = Store::init(d.path(), StoreOptions::default()).unwrap();
        (d, s)
    }

    fn publish(s: &Store, name: &str, version: &str, content: &[u8]) {
        let blob = s.put_blob(content).unwrap();
        s.publish(
            "demo",
            NewPackage {
                name: name.into(),
                version: version.into(),
                files: vec![NewFile {
                    name: format!("{name}-{version}.bin"),
                    blob: blob.hash,
                    size: blob.size,
                    digests: Default::default(),
                }],
                metadata: Default::default(),
            },
        )
        .unwrap();
    }

    fn export(s: &Store, since: &HashMap<String, Cursor>) -> (Vec<u8>, ExportReport) {
        let mut out = Vec::new();
        let r = s
            .export_bundle(
                &mut out,
                &ExportOptions {
                    feeds: Vec::new(),
                    since: since.clone(),
                    ttl_secs: 86_400,
                },
            )
            .unwrap();
        assert_eq!(r.bytes, out.len() as u64);
        (out, r)
    }

    fn import(s: &Store, dir: &Path, bytes: &[u8]) -> Result<ImportReport> {
        let path = dir.join("in.bundle");
        std::fs::write(&path, bytes).unwrap();
        s.import_bundle(&path, &mut |_, _| {})
    }

    /// What a site visibly holds.
    fn state(s: &Store) -> Vec<(String, String, u64)> {
        let mut out = Vec::new();
        for f in s
            .list_feeds()
            .unwrap()
            .into_iter()
            .map(|f| f.name)
            .chain([SYSTEM_FEED.to_owned()])
        {
            let sum = s.feed_summary(&f).unwrap();
            out.push((f, sum.root.fingerprint.to_hex(), sum.root.count));
        }
        out
    }

    fn hub_and_site() -> (tempfile::TempDir, Store, tempfile::TempDir, Store) {
        let (hd, hub) = store();
        let (sd, site) = store();
        site.trust_add(TRUST_ALL, &hub.identity().public_key())
            .unwrap();
        hub.create_feed("demo", Ecosystem::Raw).unwrap();
        publish(&hub, "small", "1", b"a small file");
        publish(&hub, "large", "1", &vec![7u8; 300_000]);
        (hd, hub, sd, site)
    }

    /// Splits a bundle into its records: (kind, body), after the magic.
    fn records(b: &[u8]) -> Vec<(u8, Vec<u8>)> {
        let mut out = Vec::new();
        let mut i = 8;
        while i < b.len() {
            let len = u64::from_be_bytes(b[i + 1..i + 9].try_into().unwrap()) as usize;
            out.push((b[i], b[i + 9..i + 9 + len].to_vec()));
            i += 9 + len;
        }
        out
    }

    /// Writes records back into a bundle signed by `key` (its header names that key).
    fn assemble(records: &[(u8, Vec<u8>)], key: &SigningKey) -> Vec<u8> {
        let mut b = MAGIC.to_vec();
        for (kind, body) in records.iter().filter(|r| r.0 != END) {
            let body = if *kind == HEADER {
                let mut h: Header = cbor::from_canonical(body, 1 << 20).unwrap();
                h.exporter = *PublicKey::from(key).as_bytes();
                cbor::to_canonical(&h).unwrap()
            } else {
                body.clone()
            };
            b.push(*kind);
            b.extend_from_slice(&(body.len() as u64).to_be_bytes());
            b.extend_from_slice(&body);
        }
        let id = Hash::of(&b);
        let sig = key.sign(&signing_message(&id));
        b.push(END);
        b.extend_from_slice(&64u64.to_be_bytes());
        b.extend_from_slice(&sig.to_bytes());
        b
    }

    #[test]
    fn a_full_bundle_then_an_incremental_one_bring_a_site_to_the_hubs_state() {
        let (_hd, hub, sd, site) = hub_and_site();
        let (full, r) = export(&hub, &HashMap::new());
        assert_eq!(r.header.blobs, 2);
        let got = import(&site, sd.path(), &full).unwrap();
        assert!(got.applied);
        assert_eq!((got.blobs_stored, got.blobs_held), (2, 0));
        assert!(got
            .feeds
            .iter()
            .any(|f| f.feed == "demo" && f.created && f.changed == 2));
        assert_eq!(state(&site), state(&hub));
        assert!(site.checkpoint("demo").unwrap().is_some());
        let mut out = Vec::new();
        let (_, m) = site.manifest("demo", "large", "1").unwrap().unwrap();
        site.read_blob_to(&m.files[0].blob, &mut out).unwrap();
        assert_eq!(out, vec![7u8; 300_000]);

        // Importing it again changes nothing.
        let again = import(&site, sd.path(), &full).unwrap();
        assert_eq!((again.blobs_stored, again.blobs_held), (0, 2));
        assert!(again.feeds.iter().all(|f| f.changed == 0));

        // Ten changes, one of them a deletion: the incremental bundle carries them only.
        for i in 0..9 {
            publish(
                &hub,
                "more",
                &i.to_string(),
                format!("version {i}").as_bytes(),
            );
        }
        hub.delete("demo", "small", "1").unwrap();
        let since: HashMap<String, Cursor> = r
            .header
            .feeds
            .iter()
            .map(|s| (s.name.clone(), s.to))
            .collect();
        let (inc, ri) = export(&hub, &since);
        let demo = ri.header.feeds.iter().find(|s| s.name == "demo").unwrap();
        assert_eq!((demo.docs, demo.removes), (10, 0));
        assert_eq!(ri.header.blobs, 9);
        assert!(inc.len() < full.len(), "{} >= {}", inc.len(), full.len());
        import(&site, sd.path(), &inc).unwrap();
        assert_eq!(state(&site), state(&hub));

        // The older full bundle is refused now, and changes nothing.
        let before = state(&site);
        let e = import(&site, sd.path(), &full).unwrap_err().to_string();
        assert!(e.contains("older than the one held"), "{e}");
        assert_eq!(state(&site), before);
    }

    #[test]
    fn an_incremental_bundle_without_its_base_is_refused_and_changes_nothing() {
        let (_hd, hub, sd, site) = hub_and_site();
        let (_, r) = export(&hub, &HashMap::new());
        publish(&hub, "more", "1", b"more");
        let since: HashMap<String, Cursor> = r
            .header
            .feeds
            .iter()
            .map(|s| (s.name.clone(), s.to))
            .collect();
        let (inc, _) = export(&hub, &since);
        let before = state(&site);
        let e = import(&site, sd.path(), &inc).unwrap_err().to_string();
        assert!(
            e.contains("does not hold the state this incremental bundle continues from"),
            "{e}"
        );
        assert!(e.contains("no bundle of this exporter"), "{e}");
        assert_eq!(state(&site), before);
        assert!(site.list_feeds().unwrap().is_empty());
    }

    #[test]
    fn a_bundle_with_any_byte_flipped_is_refused_and_nothing_is_applied() {
        let (_hd, hub, sd, site) = hub_and_site();
        let (full, _) = export(&hub, &HashMap::new());
        let path = sd.path().join("flipped.bundle");
        // Every 97th byte, and the first and last few.
        let positions: Vec<usize> = (0..full.len())
            .step_by(97)
            .chain([0, 8, 9, full.len() - 1, full.len() - 65])
            .collect();
        for &i in &positions {
            let mut b = full.clone();
            b[i] ^= 0x01;
            std::fs::write(&path, &b).unwrap();
            let e = site.check_bundle(&path);
            assert!(e.is_err(), "byte {i} flipped was accepted");
            assert!(site.import_bundle(&path, &mut |_, _| {}).is_err());
        }
        // Truncated anywhere, or with a byte more.
        for cut in [full.len() - 1, full.len() - 64, full.len() / 2, 20] {
            std::fs::write(&path, &full[..cut]).unwrap();
            assert!(
                site.import_bundle(&path, &mut |_, _| {}).is_err(),
                "cut at {cut}"
            );
        }
        let mut longer = full.clone();
        longer.push(0);
        std::fs::write(&path, &longer).unwrap();
        assert!(site.import_bundle(&path, &mut |_, _| {}).is_err());
        assert!(site.list_feeds().unwrap().is_empty());
        assert_eq!(site.feed_summary(SYSTEM_FEED).unwrap().root.count, 0);
        // No blob was stored either: the first pass checks before the second stores.
        assert!(site
            .blob_size(&Hash::of(b"a small file"))
            .unwrap()
            .is_none());
        import(&site, sd.path(), &full).unwrap();
    }

    #[test]
    fn a_rewritten_bundle_that_withholds_or_forges_an_entry_is_refused() {
        let (_hd, hub, sd, site) = hub_and_site();
        let (full, _) = export(&hub, &HashMap::new());
        let recs = records(&full);
        let relay = SigningKey::from_bytes(&[9u8; 32]);

        // A relay drops the `large` manifest and its blob, fixes the counts and signs anew.
        let mut withheld: Vec<(u8, Vec<u8>)> = Vec::new();
        let large = hub.manifest("demo", "large", "1").unwrap().unwrap();
        let large_doc = hub.document(&large.0).unwrap().unwrap();
        for (kind, body) in &recs {
            if *kind == DOC && body[2..] == *large_doc.bytes() {
                continue;
            }
            if *kind == BLOB && body[..32] == *large.1.files[0].blob.as_bytes() {
                continue;
            }
            let body = if *kind == HEADER {
                let mut h: Header = cbor::from_canonical(body, 1 << 20).unwrap();
                for s in &mut h.feeds {
                    if s.name == "demo" {
                        s.docs -= 1;
                    }
                }
                h.blobs -= 1;
                h.blob_bytes -= 300_000;
                cbor::to_canonical(&h).unwrap()
            } else {
                body.clone()
            };
            withheld.push((*kind, body));
        }
        let e = import(&site, sd.path(), &assemble(&withheld, &relay))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("does not hold the entries its checkpoint signs"),
            "{e}"
        );
        assert!(site.list_feeds().unwrap().is_empty());

        // A document signed by a key the site does not trust.
        let mut forged = recs.clone();
        let m = Manifest {
            feed: "demo".into(),
            name: "small".into(),
            ..large.1.clone()
        };
        let doc = SignedDocument::sign(&m, &relay).unwrap();
        for (kind, body) in &mut forged {
            if *kind == DOC && body[2..] == *large_doc.bytes() {
                *body = [&body[..2], doc.bytes()].concat();
            }
        }
        let e = import(&site, sd.path(), &assemble(&forged, &relay))
            .unwrap_err()
            .to_string();
        assert!(e.contains("not trusted"), "{e}");

        // A blob no document names.
        let mut extra = recs.clone();
        let end = extra.len() - 1;
        extra.insert(
            end,
            (BLOB, [Hash::of(b"x").as_bytes().as_slice(), b"x"].concat()),
        );
        let e = import(&site, sd.path(), &assemble(&extra, &relay))
            .unwrap_err()
            .to_string();
        assert!(e.contains("named by no document"), "{e}");
        assert!(site.list_feeds().unwrap().is_empty());

        // A removal slipped into the stream: over the header's count, or (the header
        // rewritten too) of a key the bundle also sets.
        let idx = recs.iter().position(|r| r.0 == BLOB).unwrap();
        let small = names::package_key("small", "1");
        let mut removal = recs.clone();
        removal.insert(idx, (REMOVE, [&[0u8, 0][..], small.as_bytes()].concat()));
        let e = import(&site, sd.path(), &assemble(&removal, &relay))
            .unwrap_err()
            .to_string();
        assert!(e.contains("more removals"), "{e}");
        for (kind, body) in &mut removal {
            if *kind == HEADER {
                let mut h: Header = cbor::from_canonical(body, 1 << 20).unwrap();
                h.feeds
                    .iter_mut()
                    .find(|s| s.name == "demo")
                    .unwrap()
                    .removes = 1;
                *body = cbor::to_canonical(&h).unwrap();
            }
        }
        let e = import(&site, sd.path(), &assemble(&removal, &relay))
            .unwrap_err()
            .to_string();
        assert!(e.contains("a removal in the full section"), "{e}");
        assert!(site.list_feeds().unwrap().is_empty());

        // The hub's checkpoint over a filter that selects nothing, with every document left
        // out: it would empty the feed on the site. A bundle carries whole feeds only.
        let nothing = crate::doc::Filter {
            include: vec!["nothing-matches".into()],
            exclude: vec![],
        };
        let filtered = hub
            .filtered_checkpoint_to_serve("demo", &nothing, 3600, 300)
            .unwrap();
        let mut emptied: Vec<(u8, Vec<u8>)> = Vec::new();
        for (kind, body) in &recs {
            match *kind {
                DOC | BLOB if body.len() > 2 && (*kind == BLOB || body[..2] == [0, 0]) => {}
                HEADER => {
                    let mut h: Header = cbor::from_canonical(body, 1 << 20).unwrap();
                    for s in &mut h.feeds {
                        if s.name == "demo" {
                            s.docs = 0;
                        }
                    }
                    (h.blobs, h.blob_bytes) = (0, 0);
                    emptied.push((HEADER, cbor::to_canonical(&h).unwrap()));
                }
                CHECKPOINT
                    if SignedDocument::peek_payload::<Checkpoint>(body)
                        .unwrap()
                        .feed
                        == "demo" =>
                {
                    emptied.push((CHECKPOINT, filtered.clone()));
                }
                _ => emptied.push((*kind, body.clone())),
            }
        }
        site.create_feed("demo", Ecosystem::Raw).unwrap();
        let own = site.put_blob(&b"own"[..]).unwrap();
        site.publish(
            "demo",
            NewPackage {
                name: "own".into(),
                version: "1".into(),
                files: vec![NewFile {
                    name: "own.bin".into(),
                    blob: own.hash,
                    size: own.size,
                    digests: Default::default(),
                }],
                metadata: Default::default(),
            },
        )
        .unwrap();
        let e = import(&site, sd.path(), &assemble(&emptied, &relay))
            .unwrap_err()
            .to_string();
        assert!(e.contains("is over a filter"), "{e}");
        assert_eq!(site.feed_summary("demo").unwrap().root.count, 1);
    }

    #[test]
    fn records_that_declare_huge_lengths_are_refused_before_anything_is_allocated() {
        let (_hd, hub, sd, site) = hub_and_site();
        let (full, _) = export(&hub, &HashMap::new());
        let recs = records(&full);
        let header_len = 8 + 9 + recs[0].1.len();
        // The header's length, then a document's, then a blob's, set to 2^63.
        let mut at = vec![8];
        let mut i = header_len;
        for (kind, body) in &recs[1..] {
            if (*kind == DOC && at.len() == 1) || (*kind == BLOB && at.len() == 2) {
                at.push(i);
            }
            i += 9 + body.len();
        }
        assert_eq!(at.len(), 3);
        for head in at {
            let mut b = full.clone();
            b[head + 1..head + 9].copy_from_slice(&(1u64 << 63).to_be_bytes());
            let e = import(&site, sd.path(), &b).unwrap_err().to_string();
            assert!(e.contains("bundle refused"), "{e}");
        }
        assert!(site.list_feeds().unwrap().is_empty());
    }

    #[test]
    fn a_bundle_of_an_untrusted_hub_or_into_a_feed_of_another_type_is_refused() {
        let (_hd, hub, sd, site) = hub_and_site();
        let (full, _) = export(&hub, &HashMap::new());
        site.trust_remove(TRUST_ALL, &hub.identity().public_key())
            .unwrap();
        let e = import(&site, sd.path(), &full).unwrap_err().to_string();
        assert!(e.contains("not trusted"), "{e}");
        site.trust_add(TRUST_ALL, &hub.identity().public_key())
            .unwrap();
        site.create_feed("demo", Ecosystem::Npm).unwrap();
        let e = import(&site, sd.path(), &full).unwrap_err().to_string();
        assert!(
            e.contains("is a npm feed here and a raw feed in the bundle"),
            "{e}"
        );
    }
}
