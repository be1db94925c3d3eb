//! The store: RocksDB for every index and document, a [`BlobBackend`] for large blob bytes.
//!
//! Column families:
//! - `meta`: schema version, hybrid logical clock, next feed id, trust list;
//! - `feeds`: feed name -> [`FeedRecord`] (id, kind, change-log position);
//! - `entries`: feed id ++ key -> [`EntryValue`] (kind, document id, hlc);
//! - `keyhash`: feed id ++ BLAKE3(key) -> key, the entries in trie order;
//! - `merkle`: feed id ++ depth ++ prefix -> [`NodeSummary`];
//! - `changelog`: feed id ++ seq -> change;
//! - `docs`: document id -> envelope bytes;
//! - `blobs`: blob hash -> size and, for small blobs, the bytes.
//!
//! Invariant: every write that changes what a reader can see (an entry, its Merkle nodes, its
//! change-log record, its document, the feed's sequence number) goes into one RocksDB write
//! batch, so after a crash the store holds either the state before or the state after.
//! Invariant: an entry's manifest refers only to blobs whose index records are committed
//! before or with it; large blob files are fsynced and renamed before their record is written.
//! Invariant: all writers take `write` (a short mutex, never held across I/O other than the
//! batch write); the WAL fsync that makes a commit durable happens after it is released, so
//! concurrent publishers share fsyncs.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt;
use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use parking_lot::Mutex;
use rocksdb::{
    ColumnFamily, ColumnFamilyDescriptor, IteratorMode, Options, PrefixRange, ReadOptions,
    WriteBatch, WriteOptions, DB,
};
use serde::{Deserialize, Serialize};

use crate::blob::{
    self, BlobBackend, CorruptBlob, Ingested, LocalFiles, StagedBlob, VerifyingReader,
};
use crate::cbor;
use crate::doc::{
    DocType, DocumentError, Ecosystem, FileEntry, Manifest, PublicKey, SignedDocument, Tombstone,
    PAYLOAD_VERSION,
};
use crate::hlc;
use crate::identity::{Identity, IdentityError};
use crate::merkle::{self, NodeSummary, MAX_DEPTH};
use crate::names::{self, NameError};
use crate::Hash;

/// The reserved feed that holds system documents (assessments, types, policies, vulnerabilities).
pub const SYSTEM_FEED: &str = "@system";
const SYSTEM_FEED_ID: u32 = 0;
const SCHEMA_VERSION: u64 = 1;
/// Tombstones are kept at least this long unless every known peer has synced past them.
pub const DEFAULT_TOMBSTONE_HORIZON_MS: u64 = 30 * 24 * 3600 * 1000;
/// Trust scope that covers every feed and the system set.
pub const TRUST_ALL: &str = "*";

pub(crate) const CF_META: &str = "meta";
const CF_FEEDS: &str = "feeds";
pub(crate) const CF_ENTRIES: &str = "entries";
pub(crate) const CF_KEYHASH: &str = "keyhash";
const CF_MERKLE: &str = "merkle";
const CF_CHANGELOG: &str = "changelog";
pub(crate) const CF_DOCS: &str = "docs";
const CF_BLOBS: &str = "blobs";
const ALL_CFS: [&str; 8] = [
    CF_META,
    CF_FEEDS,
    CF_ENTRIES,
    CF_KEYHASH,
    CF_MERKLE,
    CF_CHANGELOG,
    CF_DOCS,
    CF_BLOBS,
];

const META_SCHEMA: &[u8] = b"schema";
const META_HLC: &[u8] = b"hlc";
const META_NEXT_FEED: &[u8] = b"next-feed-id";
const META_TRUST: &[u8] = b"trust\0";
/// Where the store's large blobs live (`BlobsConfig::location`).
const META_BLOBS: &[u8] = b"blobs";

/// Everything that can go wrong in the store, each with the evidence.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// RocksDB failed.
    #[error("database error: {0}")]
    Db(#[from] rocksdb::Error),
    /// Another process has the data directory open.
    #[error("data directory {path} is in use by another cairn process")]
    Locked { path: PathBuf },
    /// No store in this directory.
    #[error("no cairn store at {path}; run `cairn init` first")]
    NotInitialized { path: PathBuf },
    /// `init` on an existing store.
    #[error("a cairn store already exists at {path}")]
    AlreadyInitialized { path: PathBuf },
    /// Filesystem failure.
    #[error("{action} {path}: {source}")]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// Reading the caller's input failed.
    #[error("reading input: {0}")]
    Input(#[source] std::io::Error),
    /// The instance key.
    #[error(transparent)]
    Identity(#[from] IdentityError),
    /// A stored record does not parse: the database was damaged or written by something else.
    #[error("corrupt {what} record in the store: {detail}")]
    CorruptRecord { what: &'static str, detail: String },
    /// A blob's bytes do not match its hash.
    #[error(transparent)]
    CorruptBlob(#[from] CorruptBlob),
    /// A document failed its checks.
    #[error(transparent)]
    Document(#[from] DocumentError),
    /// A name failed validation.
    #[error(transparent)]
    Name(#[from] NameError),
    /// No such feed.
    #[error("feed `{feed}` does not exist; create it with `cairn feed create {feed} --type TYPE`")]
    FeedNotFound { feed: String },
    /// Feed name taken.
    #[error("feed `{feed}` already exists")]
    FeedExists { feed: String },
    /// No such blob.
    #[error("blob {hash} is not in the store")]
    BlobNotFound { hash: Hash },
    /// The index names a blob file that is gone.
    #[error("blob {hash} is indexed but its file {location} is missing")]
    BlobFileMissing { hash: Hash, location: String },
    /// A manifest names a blob with another size than the stored one.
    #[error("file `{file}` declares {declared} bytes but blob {hash} has {actual}")]
    BlobSizeMismatch {
        file: String,
        hash: Hash,
        declared: u64,
        actual: u64,
    },
    /// No such package version.
    #[error("`{key}` is not in feed `{feed}`")]
    EntryNotFound { feed: String, key: String },
    /// The version exists with other content.
    #[error("{name} {version} already exists in feed `{feed}` with a different file `{file}`; versions are immutable, publish a new version")]
    VersionExists {
        feed: String,
        name: String,
        version: String,
        file: String,
    },
    /// A package version lists no files, or one file twice.
    #[error("invalid package: {0}")]
    InvalidPackage(String),
    /// A document received from a peer does not fit where it was sent.
    #[error("rejected document {doc} for feed `{feed}`: {reason}")]
    RemoteRejected {
        feed: String,
        doc: Hash,
        reason: String,
    },
    /// A document that would be larger than any peer accepts: it is not made, and nothing is
    /// stored.
    #[error(
        "the {what} would be a signed document of {len} bytes, over the limit of {max}; {advice}"
    )]
    DocumentTooLarge {
        what: String,
        len: usize,
        max: usize,
        advice: &'static str,
    },
    /// A received manifest names blobs that are not stored yet.
    #[error("`{key}` in feed `{feed}` names {} blob(s) not stored yet", missing.len())]
    MissingBlobs {
        feed: String,
        key: String,
        missing: Vec<Hash>,
    },
    /// Operation not allowed on this feed.
    #[error("{0}")]
    WrongFeedKind(String),
    /// The blob storage (an object store) did not answer or refused: nothing was changed, and
    /// the operation may be retried.
    #[error("blob storage unavailable while {action}: {detail}; nothing was stored, retry later")]
    BlobStoreUnavailable {
        action: &'static str,
        detail: String,
    },
    /// The configured blob backend is not the one this store's blobs are in, or cannot be used.
    #[error("{0}")]
    BlobBackend(String),
    /// A peer's key-rotation statements do not hold.
    #[error(transparent)]
    Rotation(#[from] crate::rotation::RotationError),
}

impl StoreError {
    /// An entry (`what`: which kind) whose document is not in the store: the database is
    /// damaged.
    pub(crate) fn missing_document(what: &'static str, key: &str, doc: &Hash) -> StoreError {
        StoreError::CorruptRecord {
            what,
            detail: format!("`{key}` names missing document {doc}"),
        }
    }

    /// The error for a document that could not be signed: [`StoreError::DocumentTooLarge`]
    /// when it is over the limit, else `InvalidPackage`.
    pub(crate) fn signing(
        what: String,
        advice: &'static str,
    ) -> impl FnOnce(cbor::CborError) -> StoreError {
        move |e| match e {
            cbor::CborError::TooLarge { len, max } => StoreError::DocumentTooLarge {
                what,
                len,
                max,
                advice,
            },
            other => StoreError::InvalidPackage(format!("{what} cannot be encoded: {other}")),
        }
    }

    pub(crate) fn io(
        action: &'static str,
        path: &Path,
    ) -> impl FnOnce(std::io::Error) -> StoreError {
        let path = path.to_owned();
        move |source| match blob::as_unavailable(&source) {
            Some(u) => StoreError::BlobStoreUnavailable {
                action,
                detail: u.0.clone(),
            },
            None => StoreError::Io {
                action,
                path,
                source,
            },
        }
    }
}

type Result<T, E = StoreError> = std::result::Result<T, E>;
type KeyValue = (Box<[u8]>, Box<[u8]>);

/// Tunables.
#[derive(Clone, Debug)]
pub struct StoreOptions {
    /// fsync the write-ahead log before a publish or delete returns (durable across power loss;
    /// without it a commit survives a process crash but not a power cut).
    pub sync_writes: bool,
    /// Change-log records kept per feed; a peer further behind gets a full diff.
    pub change_log_retain: u64,
    /// Where large blobs live.
    pub blobs: BlobsConfig,
}

/// Where a store keeps its large blobs (`[blobs]` in the configuration). Metadata and small
/// blobs always stay in RocksDB.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum BlobsConfig {
    /// Files under `<data-dir>/blobs` (the default).
    #[default]
    Local,
    /// An S3-compatible bucket, possibly shared with other instances.
    S3(crate::s3::S3Config),
}

impl BlobsConfig {
    /// What the store records about its blobs' home: `local` or `s3://bucket/prefix`.
    pub fn location(&self) -> String {
        match self {
            BlobsConfig::Local => "local".into(),
            BlobsConfig::S3(c) => c.location(),
        }
    }
}

impl Default for StoreOptions {
    fn default() -> StoreOptions {
        StoreOptions {
            sync_writes: true,
            change_log_retain: 1_000_000,
            blobs: BlobsConfig::Local,
        }
    }
}

/// What a feed holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FeedKind {
    /// Package versions of one ecosystem.
    Package(Ecosystem),
    /// The system documents.
    System,
}

/// A feed's stored record.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FeedRecord {
    /// Internal id, the prefix of all its keys; never reused.
    pub id: u32,
    /// Name.
    pub name: String,
    /// What it holds.
    pub kind: FeedKind,
    /// Creation time, Unix milliseconds.
    pub created_ms: u64,
    /// Change-log epoch: random, new for every incarnation of the feed.
    pub epoch: u64,
    /// Sequence number of the last change.
    pub seq: u64,
    /// Changes with sequence numbers up to this one have been trimmed from the log.
    pub log_floor: u64,
    /// The highest clock of a tombstone this instance has collected from the feed. A mirror
    /// peer's entry for a key absent here with a clock at or below it may be one whose
    /// deletion was collected, so it is not taken back (see wire-spec section 9).
    #[serde(default)]
    pub collected_hlc: u64,
}

impl FeedRecord {
    /// The ecosystem, for package feeds.
    pub fn ecosystem(&self) -> Option<Ecosystem> {
        match self.kind {
            FeedKind::Package(e) => Some(e),
            FeedKind::System => None,
        }
    }

    /// Where the change log stands.
    pub fn cursor(&self) -> Cursor {
        Cursor {
            epoch: self.epoch,
            seq: self.seq,
        }
    }
}

/// A position in a feed's change log.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Cursor {
    /// Epoch of the feed incarnation.
    pub epoch: u64,
    /// Last change seen.
    pub seq: u64,
}

impl fmt::Display for Cursor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:016x}:{}", self.epoch, self.seq)
    }
}

/// What an entry holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EntryKind {
    /// A package manifest.
    Manifest,
    /// A deletion.
    Tombstone,
    /// A system document (assessment, type, policy, vulnerability).
    Document,
}

/// The value of a feed entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct EntryValue {
    /// What the document is.
    pub kind: EntryKind,
    /// The document's id.
    pub doc: Hash,
    /// Its hybrid logical clock.
    pub hlc: u64,
}

impl EntryValue {
    fn encode(&self) -> [u8; 41] {
        let mut out = [0u8; 41];
        out[0] = match self.kind {
            EntryKind::Manifest => 1,
            EntryKind::Tombstone => 2,
            EntryKind::Document => 3,
        };
        out[1..33].copy_from_slice(self.doc.as_bytes());
        out[33..].copy_from_slice(&self.hlc.to_be_bytes());
        out
    }

    fn decode(b: &[u8]) -> Result<EntryValue> {
        let bad = || StoreError::CorruptRecord {
            what: "entry",
            detail: format!("{} bytes", b.len()),
        };
        if b.len() != 41 {
            return Err(bad());
        }
        let kind = match b[0] {
            1 => EntryKind::Manifest,
            2 => EntryKind::Tombstone,
            3 => EntryKind::Document,
            _ => return Err(bad()),
        };
        let doc = Hash::from_slice(&b[1..33]).ok_or_else(bad)?;
        let hlc = u64::from_be_bytes(b[33..41].try_into().map_err(|_| bad())?);
        Ok(EntryValue { kind, doc, hlc })
    }
}

/// One entry of a feed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    /// The key (`name/version` for packages).
    pub key: String,
    /// What it holds.
    pub value: EntryValue,
}

/// One change-log record.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Change {
    /// Its sequence number.
    pub seq: u64,
    /// The entry's key.
    pub key: String,
    /// The new value; `None` when the entry was removed outright.
    pub value: Option<EntryValue>,
}

/// Answer to "what changed since this cursor".
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ChangesSince {
    /// The changes after the cursor, oldest first, and the cursor after the last one returned.
    Changes {
        changes: Vec<Change>,
        next: Cursor,
        complete: bool,
    },
    /// The cursor is from another epoch or older than the retained log: do a full diff.
    FullDiffNeeded { reason: String },
}

/// A feed, its size and root.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FeedSummary {
    /// The record.
    pub feed: FeedRecord,
    /// Root node (fingerprint and count, tombstones included).
    pub root: NodeSummary,
}

/// A file of a package being published.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NewFile {
    /// File name.
    pub name: String,
    /// Blob with its bytes (already stored).
    pub blob: Hash,
    /// Its size.
    pub size: u64,
    /// Ecosystem digests.
    pub digests: BTreeMap<String, String>,
}

/// A package version being published.
#[derive(Clone, Debug, PartialEq)]
pub struct NewPackage {
    /// Name.
    pub name: String,
    /// Version.
    pub version: String,
    /// Files.
    pub files: Vec<NewFile>,
    /// Metadata from the package.
    pub metadata: BTreeMap<String, ciborium::Value>,
}

/// Metadata fields to change on one package version ([`Store::amend_metadata`]).
#[derive(Clone, Debug, PartialEq)]
pub struct Amendment {
    /// Package name.
    pub name: String,
    /// Version.
    pub version: String,
    /// Fields to set (`Some`) or remove (`None`).
    pub set: BTreeMap<String, Option<ciborium::Value>>,
}

/// What a publish did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PublishOutcome {
    /// A new version.
    Created,
    /// New files were added to an existing version.
    FilesAdded,
    /// Everything was already there.
    Unchanged,
}

/// Result of a publish.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Published {
    /// Entry key.
    pub key: String,
    /// Manifest id.
    pub doc: Hash,
    /// What happened.
    pub outcome: PublishOutcome,
}

/// A blob just stored, pinned against garbage collection until dropped.
#[derive(Debug)]
pub struct StoredBlob {
    /// Its hash.
    pub hash: Hash,
    /// Its size.
    pub size: u64,
    /// Whether it was already in the store.
    pub existed: bool,
    _pin: BlobPin,
}

impl StoredBlob {
    /// The pin alone, once hash and size are no longer needed.
    pub fn into_pin(self) -> BlobPin {
        self._pin
    }
}

/// Holds a blob out of garbage collection while it is not yet referenced by a manifest.
pub struct BlobPin {
    pins: Arc<Mutex<HashMap<Hash, usize>>>,
    hash: Hash,
}

impl fmt::Debug for BlobPin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "BlobPin({})", self.hash.short())
    }
}

impl Drop for BlobPin {
    fn drop(&mut self) {
        let mut pins = self.pins.lock();
        if let Some(n) = pins.get_mut(&self.hash) {
            *n -= 1;
            if *n == 0 {
                pins.remove(&self.hash);
            }
        }
    }
}

/// What garbage collection did.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct GcReport {
    /// Blobs referenced by live manifests.
    pub blobs_live: u64,
    /// Unreferenced blobs removed.
    pub blobs_removed: u64,
    /// Bytes they held.
    pub bytes_freed: u64,
    /// Blob files with no index record removed (left by a crash).
    pub orphan_files_removed: u64,
    /// Blobs in a shared bucket that no instance referenced any more, removed (left when
    /// two instances dropped their last references at the same moment).
    pub shared_orphans_removed: u64,
    /// Unreferenced documents removed.
    pub docs_removed: u64,
    /// Tombstones removed (past the horizon, or synced by every known peer).
    pub tombstones_removed: u64,
    /// Interrupted blob transfers removed from `partial/`: untouched for a day, or of a blob
    /// stored since.
    pub partial_removed: u64,
}

/// A blob transfer in `partial/` that nothing has written to for this long is given up.
pub const PARTIAL_MAX_AGE_SECS: u64 = 24 * 3600;

/// One problem found by [`Store::verify`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Problem {
    /// Short kind: `blob`, `document`, `entry`, `merkle`, `index`.
    pub kind: &'static str,
    /// What it is about (a blob hash, a feed and key, ...).
    pub subject: String,
    /// What is wrong.
    pub detail: String,
}

/// What [`Store::verify`] checked and found.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct VerifyReport {
    /// Blobs rehashed.
    pub blobs: u64,
    /// Bytes rehashed.
    pub blob_bytes: u64,
    /// Documents whose signatures were checked.
    pub documents: u64,
    /// Entries checked.
    pub entries: u64,
    /// Feeds whose Merkle nodes were recomputed (the system set included).
    pub feeds: u64,
    /// Everything wrong.
    pub problems: Vec<Problem>,
}

impl VerifyReport {
    /// True when nothing is wrong.
    pub fn ok(&self) -> bool {
        self.problems.is_empty()
    }
}

pub(crate) struct WriteState {
    pub(crate) hlc: u64,
    /// While a GC runs: blobs and documents committed since its snapshot, which it must keep.
    pub(crate) gc_protect: Option<HashSet<Hash>>,
}

/// A Cairn data directory: identity, RocksDB and blob files.
pub struct Store {
    dir: PathBuf,
    pub(crate) db: DB,
    pub(crate) files: Box<dyn BlobBackend>,
    pub(crate) tmp_dir: PathBuf,
    identity: Identity,
    pub(crate) options: StoreOptions,
    pub(crate) write: Mutex<WriteState>,
    pins: Arc<Mutex<HashMap<Hash, usize>>>,
    /// Readers of the blobs most recently sent to peers: a blob goes out piece by piece, and
    /// reopening it for every piece costs requests when it lives in a bucket.
    pub(crate) sending: Mutex<Vec<SendingBlob>>,
    /// Bumped by every change of trust: caches of what is served key on it.
    trust_generation: std::sync::atomic::AtomicU64,
    /// Documents whose signatures checked, by id (see [`CheckedDocs`]).
    checked_docs: Mutex<CheckedDocs>,
}

/// Documents decoded and signature-checked recently, so that serving a hot manifest does not
/// check its ed25519 signature on every request. A document's id is the BLAKE3 of its bytes,
/// so a hit is taken only when the bytes read from the database now hash to the id: a change
/// of the stored bytes is a miss and is decoded and checked again. Two generations of at most
/// [`CheckedDocs::GENERATION_BYTES`] each bound the memory; `cairn verify` never uses it.
#[derive(Default)]
pub(crate) struct CheckedDocs {
    current: HashMap<Hash, SignedDocument>,
    current_bytes: usize,
    previous: HashMap<Hash, SignedDocument>,
}

impl CheckedDocs {
    const GENERATION_BYTES: usize = 16 << 20;

    fn get(&mut self, id: &Hash) -> Option<SignedDocument> {
        if let Some(d) = self.current.get(id) {
            return Some(d.clone());
        }
        let d = self.previous.remove(id)?;
        self.insert(d.clone());
        Some(d)
    }

    fn insert(&mut self, doc: SignedDocument) {
        let size = doc.bytes().len() * 2 + 128;
        if self.current_bytes + size > Self::GENERATION_BYTES {
            self.previous = std::mem::take(&mut self.current);
            self.current_bytes = 0;
        }
        self.current_bytes += size;
        self.current.insert(doc.id(), doc);
    }
}

/// An open blob being sent: its hash, bytes and outboard.
pub(crate) type SendingBlob = (
    Hash,
    Arc<dyn blob::RandomAccess>,
    Arc<dyn blob::RandomAccess>,
);

impl Drop for Store {
    /// Writes the memtables out on a clean close, so the next open does not replay the whole
    /// write-ahead log (after a large replication that took seconds and a lot of memory).
    /// Durability does not depend on it: the log is still there until the flush completes.
    fn drop(&mut self) {
        for name in ALL_CFS {
            if let Some(cf) = self.db.cf_handle(name) {
                if let Err(e) = self.db.flush_cf(cf) {
                    tracing::warn!("flushing {name} on close: {e}");
                }
            }
        }
    }
}

impl fmt::Debug for Store {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Store")
            .field("dir", &self.dir)
            .field("identity", &self.identity)
            .finish_non_exhaustive()
    }
}

pub(crate) fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

fn random_u64() -> Result<u64> {
    let mut b = [0u8; 8];
    getrandom::fill(&mut b).map_err(|e| StoreError::Io {
        action: "getting randomness for",
        path: PathBuf::from("feed epoch"),
        source: std::io::Error::other(e.to_string()),
    })?;
    Ok(u64::from_le_bytes(b))
}

pub(crate) fn feed_prefix(id: u32) -> [u8; 4] {
    id.to_be_bytes()
}

fn entry_key(feed: u32, key: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(4 + key.len());
    k.extend_from_slice(&feed_prefix(feed));
    k.extend_from_slice(key.as_bytes());
    k
}

fn keyhash_key(feed: u32, kh: &Hash) -> Vec<u8> {
    let mut k = Vec::with_capacity(36);
    k.extend_from_slice(&feed_prefix(feed));
    k.extend_from_slice(kh.as_bytes());
    k
}

fn merkle_key(feed: u32, prefix: &[u8]) -> Vec<u8> {
    let mut k = Vec::with_capacity(5 + prefix.len());
    k.extend_from_slice(&feed_prefix(feed));
    k.push(prefix.len() as u8);
    k.extend_from_slice(prefix);
    k
}

fn changelog_key(feed: u32, seq: u64) -> [u8; 12] {
    let mut k = [0u8; 12];
    k[..4].copy_from_slice(&feed_prefix(feed));
    k[4..].copy_from_slice(&seq.to_be_bytes());
    k
}

pub(crate) fn trust_key(scope: &str, key: &PublicKey) -> Vec<u8> {
    let mut k = META_TRUST.to_vec();
    k.extend_from_slice(scope.as_bytes());
    k.push(0);
    k.extend_from_slice(key.as_bytes());
    k
}

#[derive(Serialize, Deserialize)]
struct ChangeRecord {
    key: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    value: Option<Vec<u8>>,
}

const BLOB_INLINE: u8 = 0;
const BLOB_BACKEND: u8 = 1;

fn blob_record(size: u64, inline: Option<&[u8]>) -> Vec<u8> {
    let mut v = Vec::with_capacity(9 + inline.map_or(0, <[u8]>::len));
    v.push(if inline.is_some() {
        BLOB_INLINE
    } else {
        BLOB_BACKEND
    });
    v.extend_from_slice(&size.to_be_bytes());
    if let Some(b) = inline {
        v.extend_from_slice(b);
    }
    v
}

/// A decoded blob index record.
pub(crate) enum BlobRecord {
    Inline(Vec<u8>),
    Backend(u64),
}

impl BlobRecord {
    fn decode(b: &[u8]) -> Result<BlobRecord> {
        let bad = || StoreError::CorruptRecord {
            what: "blob",
            detail: format!("{} bytes", b.len()),
        };
        let size = u64::from_be_bytes(b.get(1..9).ok_or_else(bad)?.try_into().map_err(|_| bad())?);
        match b.first() {
            Some(&BLOB_INLINE) if Some(b.len() as u64) == size.checked_add(9) => {
                Ok(BlobRecord::Inline(b[9..].to_vec()))
            }
            Some(&BLOB_BACKEND) if b.len() == 9 => Ok(BlobRecord::Backend(size)),
            _ => Err(bad()),
        }
    }

    pub(crate) fn size(&self) -> u64 {
        match self {
            BlobRecord::Inline(b) => b.len() as u64,
            BlobRecord::Backend(s) => *s,
        }
    }
}

impl Store {
    /// Creates a new store in `dir`: instance key, database, the system feed, and trust in the
    /// instance's own key for every feed.
    pub fn init(dir: &Path, options: StoreOptions) -> Result<Store> {
        if dir.join("db").join("CURRENT").exists() || crate::identity::key_path(dir).exists() {
            return Err(StoreError::AlreadyInitialized {
                path: dir.to_owned(),
            });
        }
        fs::create_dir_all(dir).map_err(StoreError::io("creating", dir))?;
        let identity = Identity::create(dir)?;
        let store = match Store::open_with(dir, identity, options, true) {
            Ok(store) => store,
            Err(e) => {
                // Nothing half-made stays behind (a bucket that is not there, say): the next
                // `init` starts afresh.
                let _ = fs::remove_dir_all(dir.join("db"));
                let _ = fs::remove_dir_all(dir.join("identity"));
                return Err(e);
            }
        };
        let me = store.identity.public_key();
        store.trust_add(TRUST_ALL, &me)?;
        Ok(store)
    }

    /// Opens an existing store (finishing or dropping a move to a new key that a crash
    /// interrupted).
    pub fn open(dir: &Path, options: StoreOptions) -> Result<Store> {
        if dir.join("db").join("CURRENT").exists() {
            Store::settle_rotation(dir, &options)?;
        }
        Store::open_unsettled(dir, options)
    }

    pub(crate) fn open_unsettled(dir: &Path, options: StoreOptions) -> Result<Store> {
        if !dir.join("db").join("CURRENT").exists() {
            return Err(StoreError::NotInitialized {
                path: dir.to_owned(),
            });
        }
        let identity = Identity::load(dir)?;
        Store::open_with(dir, identity, options, false)
    }

    fn open_with(
        dir: &Path,
        identity: Identity,
        options: StoreOptions,
        create: bool,
    ) -> Result<Store> {
        let db_dir = dir.join("db");
        let mut opts = Options::default();
        opts.create_if_missing(create);
        opts.create_missing_column_families(true);
        opts.increase_parallelism(2);
        opts.set_compression_type(rocksdb::DBCompressionType::Lz4);
        opts.set_keep_log_file_num(4);
        let cfs = ALL_CFS.iter().map(|name| {
            let mut o = Options::default();
            o.set_compression_type(rocksdb::DBCompressionType::Lz4);
            ColumnFamilyDescriptor::new(*name, o)
        });
        let db = DB::open_cf_descriptors(&opts, &db_dir, cfs).map_err(|e| {
            if e.as_ref().contains("lock") {
                StoreError::Locked {
                    path: dir.to_owned(),
                }
            } else {
                StoreError::Db(e)
            }
        })?;
        let tmp_dir = dir.join("tmp");
        // Startup cleans what a crash left: temp files of blobs that were never installed.
        if tmp_dir.exists() {
            fs::remove_dir_all(&tmp_dir).map_err(StoreError::io("cleaning", &tmp_dir))?;
        }
        fs::create_dir_all(&tmp_dir).map_err(StoreError::io("creating", &tmp_dir))?;
        let files: Box<dyn BlobBackend> = match &options.blobs {
            BlobsConfig::Local => Box::new(
                LocalFiles::new(dir.join("blobs"))
                    .map_err(StoreError::io("creating", &dir.join("blobs")))?,
            ),
            BlobsConfig::S3(config) => Box::new(
                crate::s3::S3Blobs::new(config, &identity.public_key().fingerprint())
                    .map_err(|e| StoreError::BlobBackend(e.to_string()))?,
            ),
        };
        match files.check() {
            Ok(()) => {}
            // Metadata can still be read and served; blob operations will report it.
            Err(e) if blob::as_unavailable(&e).is_some() => tracing::warn!("{e}"),
            Err(e) => return Err(StoreError::BlobBackend(e.to_string())),
        }
        let mut store = Store {
            dir: dir.to_owned(),
            db,
            files,
            tmp_dir,
            identity,
            options,
            write: Mutex::new(WriteState {
                hlc: 0,
                gc_protect: None,
            }),
            pins: Arc::new(Mutex::new(HashMap::new())),
            sending: Mutex::new(Vec::new()),
            trust_generation: std::sync::atomic::AtomicU64::new(0),
            checked_docs: Mutex::new(CheckedDocs::default()),
        };
        store.write.get_mut().hlc = store.meta_u64(META_HLC)?.unwrap_or(0);
        match store.meta_u64(META_SCHEMA)? {
            Some(SCHEMA_VERSION) => {}
            None if create => store.bootstrap()?,
            None => {
                return Err(StoreError::CorruptRecord {
                    what: "meta",
                    detail: "schema version missing".into(),
                })
            }
            Some(other) => {
                return Err(StoreError::CorruptRecord {
                    what: "meta",
                    detail: format!("schema version {other}, this build reads {SCHEMA_VERSION}"),
                })
            }
        }
        store.check_blob_home(create)?;
        Ok(store)
    }

    /// Records where the blobs live on first open, and refuses to open with another backend
    /// later: the index would name blobs that are not there.
    fn check_blob_home(&self, create: bool) -> Result<()> {
        let configured = self.options.blobs.location();
        match self.db.get_cf(self.cf(CF_META), META_BLOBS)? {
            // A store made before blob backends existed keeps its blobs on local disk.
            None if !create && configured != "local" => Err(StoreError::BlobBackend(format!(
                "this store keeps its large blobs in local, but the configuration says {configured}; \
                 use the [blobs] configuration the store was created with"
            ))),
            None => {
                self.db
                    .put_cf(self.cf(CF_META), META_BLOBS, configured.as_bytes())?;
                self.db.flush_wal(true)?;
                Ok(())
            }
            Some(v) if v == configured.as_bytes() => Ok(()),
            Some(v) => Err(StoreError::BlobBackend(format!(
                "this store keeps its large blobs in {}, but the configuration says {configured}; \
                 use the [blobs] configuration the store was created with",
                String::from_utf8_lossy(&v)
            ))),
        }
    }

    fn bootstrap(&self) -> Result<()> {
        let system = FeedRecord {
            id: SYSTEM_FEED_ID,
            name: SYSTEM_FEED.into(),
            kind: FeedKind::System,
            created_ms: now_ms(),
            epoch: random_u64()?,
            seq: 0,
            log_floor: 0,
            collected_hlc: 0,
        };
        let mut batch = WriteBatch::default();
        batch.put_cf(self.cf(CF_FEEDS), SYSTEM_FEED, self.encode_feed(&system)?);
        batch.put_cf(self.cf(CF_META), META_NEXT_FEED, 1u64.to_be_bytes());
        batch.put_cf(self.cf(CF_META), META_SCHEMA, SCHEMA_VERSION.to_be_bytes());
        self.db.write(batch)?;
        self.db.flush_wal(true)?;
        Ok(())
    }

    // -----------------------------------------------------------------------------------------
    // Basics

    /// The data directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The instance identity.
    pub fn identity(&self) -> &Identity {
        &self.identity
    }

    /// The large-blob backend.
    pub fn backend(&self) -> &dyn BlobBackend {
        self.files.as_ref()
    }

    pub(crate) fn cf(&self, name: &str) -> &ColumnFamily {
        // Every name in ALL_CFS is opened (and created if missing) in `open_with`.
        #[allow(clippy::expect_used)]
        self.db
            .cf_handle(name)
            .expect("column family opened at start")
    }

    fn meta_u64(&self, key: &[u8]) -> Result<Option<u64>> {
        match self.db.get_pinned_cf(self.cf(CF_META), key)? {
            None => Ok(None),
            Some(v) => {
                let b: [u8; 8] = v
                    .as_ref()
                    .try_into()
                    .map_err(|_| StoreError::CorruptRecord {
                        what: "meta",
                        detail: String::from_utf8_lossy(key).into_owned(),
                    })?;
                Ok(Some(u64::from_be_bytes(b)))
            }
        }
    }

    fn encode_feed(&self, f: &FeedRecord) -> Result<Vec<u8>> {
        cbor::to_canonical(f).map_err(|e| StoreError::CorruptRecord {
            what: "feed",
            detail: e.to_string(),
        })
    }

    fn decode_feed(b: &[u8]) -> Result<FeedRecord> {
        cbor::from_canonical(b, 4096).map_err(|e| StoreError::CorruptRecord {
            what: "feed",
            detail: e.to_string(),
        })
    }

    /// Iterates `(key, value)` of a column family under a prefix, in key order.
    pub(crate) fn scan<'a>(
        &'a self,
        cf: &str,
        prefix: &[u8],
        snapshot: Option<&'a rocksdb::Snapshot<'a>>,
    ) -> impl Iterator<Item = Result<KeyValue>> + 'a {
        let mut ro = ReadOptions::default();
        ro.set_iterate_range(PrefixRange(prefix.to_vec()));
        if let Some(s) = snapshot {
            ro.set_snapshot(s);
        }
        self.db
            .iterator_cf_opt(self.cf(cf), ro, IteratorMode::Start)
            .map(|r| r.map_err(StoreError::from))
    }

    // -----------------------------------------------------------------------------------------
    // Trust

    /// Trusts `key` to sign for `scope` (a feed name, [`SYSTEM_FEED`], or [`TRUST_ALL`]).
    pub fn trust_add(&self, scope: &str, key: &PublicKey) -> Result<()> {
        if scope != TRUST_ALL && scope != SYSTEM_FEED {
            names::check_feed_name(scope)?;
        }
        self.db
            .put_cf(self.cf(CF_META), trust_key(scope, key), b"")?;
        self.db.flush_wal(true)?;
        self.bump_trust_generation();
        Ok(())
    }

    /// Removes trust in `key` for `scope`; false if it was not trusted there. Documents that
    /// only this trust covered stop being served and offered at once.
    pub fn trust_remove(&self, scope: &str, key: &PublicKey) -> Result<bool> {
        let had = self.remove_meta(&trust_key(scope, key))?;
        self.bump_trust_generation();
        Ok(had)
    }

    /// A number that changes whenever trust does (within this process).
    pub fn trust_generation(&self) -> u64 {
        self.trust_generation
            .load(std::sync::atomic::Ordering::Acquire)
    }

    fn bump_trust_generation(&self) {
        self.trust_generation
            .fetch_add(1, std::sync::atomic::Ordering::AcqRel);
    }

    /// Deletes one `meta` record durably; false if it was not there.
    pub(crate) fn remove_meta(&self, key: &[u8]) -> Result<bool> {
        let had = self.db.get_pinned_cf(self.cf(CF_META), key)?.is_some();
        self.db.delete_cf(self.cf(CF_META), key)?;
        self.db.flush_wal(true)?;
        Ok(had)
    }

    /// Every `(scope, key)` trusted.
    pub fn trust_list(&self) -> Result<Vec<(String, PublicKey)>> {
        let mut out = Vec::new();
        for item in self.scan(CF_META, META_TRUST, None) {
            let (k, _) = item?;
            let rest = &k[META_TRUST.len()..];
            let bad = || StoreError::CorruptRecord {
                what: "trust",
                detail: format!("{} bytes", rest.len()),
            };
            let split = rest.len().checked_sub(33).ok_or_else(bad)?;
            let scope = std::str::from_utf8(&rest[..split]).map_err(|_| bad())?;
            let key: [u8; 32] = rest[split + 1..].try_into().map_err(|_| bad())?;
            out.push((
                scope.to_owned(),
                PublicKey::from_bytes(key).ok_or_else(bad)?,
            ));
        }
        Ok(out)
    }

    /// Whether `key` may sign documents for `scope`.
    pub fn is_trusted(&self, scope: &str, key: &PublicKey) -> Result<bool> {
        Ok(self
            .db
            .get_pinned_cf(self.cf(CF_META), trust_key(scope, key))?
            .is_some()
            || self
                .db
                .get_pinned_cf(self.cf(CF_META), trust_key(TRUST_ALL, key))?
                .is_some())
    }

    // -----------------------------------------------------------------------------------------
    // Blobs

    /// Stores a blob from a reader, hashing as it writes. Identical content is stored once.
    /// The returned value pins the blob against GC until it is dropped.
    pub fn put_blob(&self, reader: impl Read) -> Result<StoredBlob> {
        let ingested = blob::ingest(reader, &self.tmp_dir).map_err(StoreError::Input)?;
        let hash = ingested.hash();
        let size = ingested.size();
        let pin = self.pin(hash);
        let existed = self.has_blob(&hash)?;
        if !existed {
            let record = match ingested {
                Ingested::Inline { bytes, .. } => blob_record(size, Some(&bytes)),
                Ingested::Staged(staged) => {
                    self.install_files(staged)?;
                    blob_record(size, None)
                }
            };
            let _w = self.write.lock();
            self.db.put_cf(self.cf(CF_BLOBS), hash.as_bytes(), record)?;
        }
        Ok(StoredBlob {
            hash,
            size,
            existed,
            _pin: pin,
        })
    }

    fn install_files(&self, staged: StagedBlob) -> Result<()> {
        let path = staged.data_path().to_owned();
        self.files
            .install(staged)
            .map_err(StoreError::io("installing blob", &path))
    }

    /// Stores a staged large blob (already verified against its hash) and returns it pinned.
    pub(crate) fn install_staged(&self, staged: StagedBlob) -> Result<StoredBlob> {
        let (hash, size) = (staged.hash, staged.size);
        let pin = self.pin(hash);
        let existed = self.has_blob(&hash)?;
        if !existed {
            self.install_files(staged)?;
            let _w = self.write.lock();
            self.db
                .put_cf(self.cf(CF_BLOBS), hash.as_bytes(), blob_record(size, None))?;
        }
        Ok(StoredBlob {
            hash,
            size,
            existed,
            _pin: pin,
        })
    }

    /// Takes up a blob of `size` bytes that is already in the blob backend's storage (put there
    /// by another instance sharing the bucket), so it need not be transferred: the blob pinned,
    /// or None if the backend does not hold it.
    pub fn adopt_blob(&self, hash: Hash, size: u64) -> Result<Option<StoredBlob>> {
        if size <= blob::INLINE_MAX {
            return Ok(None);
        }
        let pin = self.pin(hash);
        let existed = match self.blob_size(&hash)? {
            Some(s) if s == size => true,
            // The same hash with another size: the index is damaged; fetch it properly.
            Some(_) => return Ok(None),
            None => false,
        };
        if !existed {
            let adopted = self.files.adopt(&hash, size).map_err(StoreError::io(
                "adopting blob",
                Path::new(&self.files.describe(&hash)),
            ))?;
            if !adopted {
                return Ok(None);
            }
            let _w = self.write.lock();
            self.db
                .put_cf(self.cf(CF_BLOBS), hash.as_bytes(), blob_record(size, None))?;
        }
        Ok(Some(StoredBlob {
            hash,
            size,
            existed,
            _pin: pin,
        }))
    }

    /// Pins `hash` against GC until the returned guard is dropped.
    pub fn pin(&self, hash: Hash) -> BlobPin {
        *self.pins.lock().entry(hash).or_insert(0) += 1;
        BlobPin {
            pins: self.pins.clone(),
            hash,
        }
    }

    pub(crate) fn blob_record(&self, hash: &Hash) -> Result<Option<BlobRecord>> {
        match self.db.get_pinned_cf(self.cf(CF_BLOBS), hash.as_bytes())? {
            None => Ok(None),
            Some(v) => BlobRecord::decode(&v).map(Some),
        }
    }

    /// Whether the blob is stored.
    pub fn has_blob(&self, hash: &Hash) -> Result<bool> {
        Ok(self
            .db
            .get_pinned_cf(self.cf(CF_BLOBS), hash.as_bytes())?
            .is_some())
    }

    /// The blob's size, if stored.
    pub fn blob_size(&self, hash: &Hash) -> Result<Option<u64>> {
        Ok(self.blob_record(hash)?.map(|r| r.size()))
    }

    /// Opens a blob for reading; every chunk group is verified before it is returned.
    pub fn blob_reader(&self, hash: &Hash) -> Result<VerifyingReader> {
        match self.blob_record(hash)? {
            None => Err(StoreError::BlobNotFound { hash: *hash }),
            Some(BlobRecord::Inline(bytes)) => Ok(VerifyingReader::inline(*hash, bytes)?),
            Some(BlobRecord::Backend(size)) => {
                let (data, outboard) = self.open_blob_files(hash)?;
                Ok(VerifyingReader::tree(
                    *hash,
                    size,
                    data,
                    outboard,
                    self.files.describe(hash),
                ))
            }
        }
    }

    fn open_blob_files(
        &self,
        hash: &Hash,
    ) -> Result<(Box<dyn blob::RandomAccess>, Box<dyn blob::RandomAccess>)> {
        self.files.open(hash).map_err(|e| {
            if e.kind() == std::io::ErrorKind::NotFound {
                StoreError::BlobFileMissing {
                    hash: *hash,
                    location: self.files.describe(hash),
                }
            } else {
                StoreError::io("opening blob", Path::new(&self.files.describe(hash)))(e)
            }
        })
    }

    /// A verified reader over bytes `start..end` of a blob that reads and checks only the
    /// chunk groups holding them; its first byte is byte `start`, and it may run past `end` to
    /// the end of that group (the caller takes `end - start` bytes).
    pub fn blob_range_reader(&self, hash: &Hash, start: u64, end: u64) -> Result<VerifyingReader> {
        match self.blob_record(hash)? {
            None => Err(StoreError::BlobNotFound { hash: *hash }),
            Some(BlobRecord::Inline(bytes)) => {
                let mut r = VerifyingReader::inline(*hash, bytes)?;
                std::io::copy(&mut (&mut r).take(start), &mut std::io::sink())
                    .map_err(StoreError::Input)?;
                Ok(r)
            }
            Some(BlobRecord::Backend(size)) => {
                let (data, outboard) = self.open_blob_files(hash)?;
                Ok(VerifyingReader::tree_range(
                    *hash,
                    size,
                    data,
                    outboard,
                    self.files.describe(hash),
                    start,
                    end,
                ))
            }
        }
    }

    /// Copies a verified blob into `out`; on corruption, fails before writing the bad group.
    pub fn read_blob_to(&self, hash: &Hash, out: &mut impl std::io::Write) -> Result<u64> {
        let mut r = self.blob_reader(hash)?;
        std::io::copy(&mut r, out).map_err(|e| match blob::as_corrupt(&e) {
            Some(c) => StoreError::CorruptBlob(c.clone()),
            None => StoreError::io("reading blob", Path::new(&self.files.describe(hash)))(e),
        })
    }

    // -----------------------------------------------------------------------------------------
    // Documents

    /// A stored document's envelope bytes by id, as stored (not checked again: for handing on
    /// to a peer, which checks them itself).
    pub fn document_bytes(&self, id: &Hash) -> Result<Option<Vec<u8>>> {
        Ok(self
            .db
            .get_pinned_cf(self.cf(CF_DOCS), id.as_bytes())?
            .map(|b| b.to_vec()))
    }

    /// A stored document of `feed` to serve: decoded, its signature checked again, and `None`
    /// when it is missing or its signer is no longer trusted for the feed.
    pub fn served_document(&self, feed: &str, id: &Hash) -> Result<Option<SignedDocument>> {
        match self.document(id)? {
            Some(d) if self.is_trusted(feed, &d.signer())? => Ok(Some(d)),
            _ => Ok(None),
        }
    }

    /// A stored document, decoded and its signature checked (once for the same bytes: see
    /// [`CheckedDocs`]). Bytes that do not hash to `id` are a corrupt record.
    pub fn document(&self, id: &Hash) -> Result<Option<SignedDocument>> {
        let Some(b) = self.db.get_pinned_cf(self.cf(CF_DOCS), id.as_bytes())? else {
            return Ok(None);
        };
        if Hash::of(&b) != *id {
            return Err(StoreError::CorruptRecord {
                what: "document",
                detail: format!("the bytes stored for document {id} do not hash to its id"),
            });
        }
        if let Some(d) = self.checked_docs.lock().get(id) {
            return Ok(Some(d));
        }
        let d = SignedDocument::decode(&b)?;
        self.checked_docs.lock().insert(d.clone());
        Ok(Some(d))
    }

    // -----------------------------------------------------------------------------------------
    // Feeds

    /// Creates a package feed.
    pub fn create_feed(&self, name: &str, ecosystem: Ecosystem) -> Result<FeedRecord> {
        names::check_feed_name(name)?;
        let _w = self.write.lock();
        if self.db.get_pinned_cf(self.cf(CF_FEEDS), name)?.is_some() {
            return Err(StoreError::FeedExists { feed: name.into() });
        }
        let id = self.meta_u64(META_NEXT_FEED)?.unwrap_or(1);
        let id32 = u32::try_from(id).map_err(|_| StoreError::CorruptRecord {
            what: "meta",
            detail: "feed ids exhausted".into(),
        })?;
        let rec = FeedRecord {
            id: id32,
            name: name.into(),
            kind: FeedKind::Package(ecosystem),
            created_ms: now_ms(),
            epoch: random_u64()?,
            seq: 0,
            log_floor: 0,
            collected_hlc: 0,
        };
        let mut batch = WriteBatch::default();
        batch.put_cf(self.cf(CF_FEEDS), name, self.encode_feed(&rec)?);
        batch.put_cf(self.cf(CF_META), META_NEXT_FEED, (id + 1).to_be_bytes());
        self.db.write(batch)?;
        drop(_w);
        self.sync()?;
        Ok(rec)
    }

    /// A feed's record (the system feed included).
    pub fn feed(&self, name: &str) -> Result<FeedRecord> {
        match self.db.get_pinned_cf(self.cf(CF_FEEDS), name)? {
            Some(b) => Store::decode_feed(&b),
            None => Err(StoreError::FeedNotFound { feed: name.into() }),
        }
    }

    /// Every package feed, by name.
    pub fn list_feeds(&self) -> Result<Vec<FeedRecord>> {
        let mut out = Vec::new();
        for item in self.scan(CF_FEEDS, b"", None) {
            let (_, v) = item?;
            let f = Store::decode_feed(&v)?;
            if f.kind != FeedKind::System {
                out.push(f);
            }
        }
        Ok(out)
    }

    /// Deletes a feed and all its entries, nodes and log; its blobs go at the next GC.
    pub fn delete_feed(&self, name: &str) -> Result<()> {
        let _w = self.write.lock();
        let f = self.feed(name)?;
        if f.kind == FeedKind::System {
            return Err(StoreError::WrongFeedKind(
                "the system feed cannot be deleted".into(),
            ));
        }
        let mut batch = WriteBatch::default();
        let start = feed_prefix(f.id).to_vec();
        let end = feed_prefix(f.id + 1).to_vec();
        for cf in [CF_ENTRIES, CF_KEYHASH, CF_MERKLE, CF_CHANGELOG] {
            batch.delete_range_cf(self.cf(cf), &start, &end);
        }
        batch.delete_cf(self.cf(CF_FEEDS), name);
        self.db.write(batch)?;
        drop(_w);
        self.sync()
    }

    /// A feed's record and root.
    pub fn feed_summary(&self, name: &str) -> Result<FeedSummary> {
        let feed = self.feed(name)?;
        let root = self.node(feed.id, &[])?;
        Ok(FeedSummary { feed, root })
    }

    pub(crate) fn node(&self, feed: u32, prefix: &[u8]) -> Result<NodeSummary> {
        match self
            .db
            .get_pinned_cf(self.cf(CF_MERKLE), merkle_key(feed, prefix))?
        {
            None => Ok(NodeSummary::default()),
            Some(b) => NodeSummary::decode(&b).ok_or_else(|| StoreError::CorruptRecord {
                what: "merkle node",
                detail: format!("{} bytes", b.len()),
            }),
        }
    }

    /// The summary of the trie node at `prefix` (0 to [`MAX_DEPTH`] bytes of BLAKE3(key)).
    pub fn merkle_node(&self, feed: &str, prefix: &[u8]) -> Result<NodeSummary> {
        let f = self.feed(feed)?;
        if prefix.len() > MAX_DEPTH {
            let mut n = NodeSummary::default();
            for e in self.entries_under(feed, prefix)? {
                n.insert(&merkle::leaf(&e.1.key, &e.1.value.doc));
            }
            return Ok(n);
        }
        self.node(f.id, prefix)
    }

    /// The non-empty children of the node at `prefix` (which must be shorter than
    /// [`MAX_DEPTH`]), as `(next byte, summary)` in byte order.
    pub fn merkle_children(&self, feed: &str, prefix: &[u8]) -> Result<Vec<(u8, NodeSummary)>> {
        let f = self.feed(feed)?;
        if prefix.len() >= MAX_DEPTH {
            return Err(StoreError::WrongFeedKind(format!(
                "merkle nodes are stored to depth {MAX_DEPTH}; list entries under deeper prefixes"
            )));
        }
        let mut child_prefix = merkle_key(f.id, prefix);
        child_prefix[4] += 1;
        let mut out = Vec::new();
        for item in self.scan(CF_MERKLE, &child_prefix, None) {
            let (k, v) = item?;
            let n = NodeSummary::decode(&v).ok_or_else(|| StoreError::CorruptRecord {
                what: "merkle node",
                detail: format!("{} bytes", v.len()),
            })?;
            if n.count > 0 {
                if let Some(&b) = k.last() {
                    out.push((b, n));
                }
            }
        }
        Ok(out)
    }

    /// Entries whose BLAKE3(key) starts with `prefix`, in trie order, with their key hashes.
    pub fn entries_under(&self, feed: &str, prefix: &[u8]) -> Result<Vec<(Hash, Entry)>> {
        let f = self.feed(feed)?;
        let mut p = feed_prefix(f.id).to_vec();
        p.extend_from_slice(prefix);
        let mut out = Vec::new();
        for item in self.scan(CF_KEYHASH, &p, None) {
            let (k, v) = item?;
            let kh = Hash::from_slice(&k[4..]).ok_or_else(|| StoreError::CorruptRecord {
                what: "keyhash",
                detail: format!("{} bytes", k.len()),
            })?;
            let key = String::from_utf8(v.to_vec()).map_err(|_| StoreError::CorruptRecord {
                what: "keyhash",
                detail: "key is not utf-8".into(),
            })?;
            let value = self
                .entry_by_id(f.id, &key)?
                .ok_or_else(|| StoreError::CorruptRecord {
                    what: "keyhash",
                    detail: format!("`{key}` indexed but has no entry"),
                })?;
            out.push((kh, Entry { key, value }));
        }
        Ok(out)
    }

    pub(crate) fn entry_by_id(&self, feed: u32, key: &str) -> Result<Option<EntryValue>> {
        match self
            .db
            .get_pinned_cf(self.cf(CF_ENTRIES), entry_key(feed, key))?
        {
            None => Ok(None),
            Some(b) => EntryValue::decode(&b).map(Some),
        }
    }

    /// One entry.
    pub fn entry(&self, feed: &str, key: &str) -> Result<Option<EntryValue>> {
        let f = self.feed(feed)?;
        self.entry_by_id(f.id, key)
    }

    /// Every entry of a feed in key order (tombstones included).
    pub fn entries(&self, feed: &str) -> Result<Vec<Entry>> {
        let f = self.feed(feed)?;
        let mut out = Vec::new();
        for item in self.scan(CF_ENTRIES, &feed_prefix(f.id), None) {
            let (k, v) = item?;
            let key =
                String::from_utf8(k[4..].to_vec()).map_err(|_| StoreError::CorruptRecord {
                    what: "entry",
                    detail: "key is not utf-8".into(),
                })?;
            out.push(Entry {
                key,
                value: EntryValue::decode(&v)?,
            });
        }
        Ok(out)
    }

    /// The live manifest of a package version (`None` as well when its signer is no longer
    /// trusted for the feed: such a version is not served).
    pub fn manifest(
        &self,
        feed: &str,
        name: &str,
        version: &str,
    ) -> Result<Option<(Hash, Manifest)>> {
        let key = names::package_key(name, version);
        match self.entry(feed, &key)? {
            Some(EntryValue {
                kind: EntryKind::Manifest,
                doc,
                ..
            }) => {
                let d = self
                    .document(&doc)?
                    .ok_or_else(|| StoreError::missing_document("entry", &key, &doc))?;
                // A version signed by a key no longer trusted for the feed is not served.
                if !self.is_trusted(feed, &d.signer())? {
                    return Ok(None);
                }
                Ok(Some((doc, d.payload()?)))
            }
            _ => Ok(None),
        }
    }

    /// Changes after `cursor`, at most `limit` of them.
    pub fn changes_since(&self, feed: &str, cursor: Cursor, limit: usize) -> Result<ChangesSince> {
        let f = self.feed(feed)?;
        if cursor.epoch != f.epoch {
            return Ok(ChangesSince::FullDiffNeeded {
                reason: format!(
                    "cursor epoch {:016x} is not the feed's epoch {:016x}",
                    cursor.epoch, f.epoch
                ),
            });
        }
        if cursor.seq > f.seq {
            return Ok(ChangesSince::FullDiffNeeded {
                reason: format!("cursor seq {} is ahead of the feed's {}", cursor.seq, f.seq),
            });
        }
        if cursor.seq < f.log_floor {
            return Ok(ChangesSince::FullDiffNeeded {
                reason: format!(
                    "changes up to {} have been trimmed from the log",
                    f.log_floor
                ),
            });
        }
        let mut ro = ReadOptions::default();
        ro.set_iterate_range(
            changelog_key(f.id, cursor.seq + 1).to_vec()..changelog_key(f.id + 1, 0).to_vec(),
        );
        let mut changes = Vec::new();
        let mut next = cursor;
        let mut complete = true;
        for item in self
            .db
            .iterator_cf_opt(self.cf(CF_CHANGELOG), ro, IteratorMode::Start)
        {
            let (k, v) = item?;
            if changes.len() >= limit {
                complete = false;
                break;
            }
            let seq =
                u64::from_be_bytes(k[4..12].try_into().map_err(|_| StoreError::CorruptRecord {
                    what: "changelog",
                    detail: "bad key".into(),
                })?);
            let rec: ChangeRecord =
                cbor::from_canonical(&v, 4096).map_err(|e| StoreError::CorruptRecord {
                    what: "changelog",
                    detail: e.to_string(),
                })?;
            let value = rec.value.as_deref().map(EntryValue::decode).transpose()?;
            changes.push(Change {
                seq,
                key: rec.key,
                value,
            });
            next.seq = seq;
        }
        Ok(ChangesSince::Changes {
            changes,
            next,
            complete,
        })
    }

    // -----------------------------------------------------------------------------------------
    // Writes

    /// The instance's hybrid logical clock: at or above the clock of every entry it holds.
    pub fn clock(&self) -> u64 {
        self.write.lock().hlc
    }

    /// Makes committed writes durable (fsyncs the WAL) when `sync_writes` is on.
    pub fn sync(&self) -> Result<()> {
        if self.options.sync_writes {
            self.db.flush_wal(true)?;
        }
        Ok(())
    }

    /// Publishes one package version: checks every file's blob is stored with the declared
    /// size, signs a manifest and makes it visible in one write batch.
    pub fn publish(&self, feed: &str, package: NewPackage) -> Result<Published> {
        let mut out = self.publish_many(feed, vec![package])?;
        out.pop()
            .ok_or_else(|| StoreError::InvalidPackage("nothing published".into()))
    }

    /// Publishes several package versions in one commit (all or none).
    pub fn publish_many(&self, feed: &str, packages: Vec<NewPackage>) -> Result<Vec<Published>> {
        let f = self.feed(feed)?;
        let ecosystem = f.ecosystem().ok_or_else(|| {
            StoreError::WrongFeedKind("packages cannot be published to the system feed".into())
        })?;
        for p in &packages {
            names::check_package_name(ecosystem, &p.name)?;
            names::check_version(&p.version)?;
            if p.files.is_empty() {
                return Err(StoreError::InvalidPackage(format!(
                    "{} {} has no files",
                    p.name, p.version
                )));
            }
            let mut seen = HashSet::new();
            for file in &p.files {
                names::check_file_name(&file.name)?;
                if !seen.insert(&file.name) {
                    return Err(StoreError::InvalidPackage(format!(
                        "file `{}` listed twice",
                        file.name
                    )));
                }
            }
        }
        let mut results = Vec::with_capacity(packages.len());
        let mut w = self.write.lock();
        let mut txn = Txn::new(self, w.hlc);
        for p in packages {
            for file in &p.files {
                match self.blob_record(&file.blob)? {
                    None => return Err(StoreError::BlobNotFound { hash: file.blob }),
                    Some(r) if r.size() != file.size => {
                        return Err(StoreError::BlobSizeMismatch {
                            file: file.name.clone(),
                            hash: file.blob,
                            declared: file.size,
                            actual: r.size(),
                        })
                    }
                    Some(_) => {}
                }
            }
            results.push(txn.publish(&f.name, ecosystem, p)?);
        }
        txn.commit(&mut w)?;
        drop(w);
        self.sync()?;
        Ok(results)
    }

    /// Deletes a package version by writing a signed tombstone.
    pub fn delete(&self, feed: &str, name: &str, version: &str) -> Result<Published> {
        let f = self.feed(feed)?;
        let key = names::package_key(name, version);
        let mut w = self.write.lock();
        let mut txn = Txn::new(self, w.hlc);
        let feed_id = f.id;
        let previous = match txn.entry(feed_id, &key)? {
            Some(v) if v.kind != EntryKind::Tombstone => v.doc,
            _ => {
                return Err(StoreError::EntryNotFound {
                    feed: feed.into(),
                    key,
                })
            }
        };
        let hlc = txn.tick();
        let doc = SignedDocument::sign(
            &Tombstone {
                v: PAYLOAD_VERSION,
                feed: feed.into(),
                key: key.clone(),
                hlc,
                previous: Some(previous),
            },
            self.identity.signing_key(),
        )
        .map_err(|e| StoreError::CorruptRecord {
            what: "tombstone",
            detail: e.to_string(),
        })?;
        let id = doc.id();
        txn.put_doc(&doc);
        txn.set_entry(
            &f.name,
            &key,
            Some(EntryValue {
                kind: EntryKind::Tombstone,
                doc: id,
                hlc,
            }),
        )?;
        txn.commit(&mut w)?;
        drop(w);
        self.sync()?;
        Ok(Published {
            key,
            doc: id,
            outcome: PublishOutcome::Created,
        })
    }

    /// Changes metadata fields of live package versions without touching their files (a yank,
    /// a dist-tag moving): each version named gets a newly signed manifest with `set` applied
    /// (`None` removes a field), all in one write batch. Versions whose metadata would not
    /// change are left as they are.
    pub fn amend_metadata(&self, feed: &str, changes: &[Amendment]) -> Result<Vec<Published>> {
        let f = self.feed(feed)?;
        let ecosystem = f.ecosystem().ok_or_else(|| {
            StoreError::WrongFeedKind("the system feed holds no package versions".into())
        })?;
        let mut w = self.write.lock();
        let mut txn = Txn::new(self, w.hlc);
        let mut out = Vec::new();
        for Amendment { name, version, set } in changes {
            let key = names::package_key(name, version);
            let doc = match txn.entry(f.id, &key)? {
                Some(v) if v.kind == EntryKind::Manifest => v.doc,
                _ => {
                    return Err(StoreError::EntryNotFound {
                        feed: feed.into(),
                        key,
                    })
                }
            };
            let existing: Manifest = txn
                .doc(&doc)?
                .ok_or_else(|| StoreError::missing_document("entry", &key, &doc))?
                .payload()?;
            let mut metadata = existing.metadata.clone();
            for (k, v) in set {
                match v {
                    Some(v) => {
                        metadata.insert(k.clone(), v.clone());
                    }
                    None => {
                        metadata.remove(k);
                    }
                }
            }
            if metadata == existing.metadata {
                out.push(Published {
                    key,
                    doc,
                    outcome: PublishOutcome::Unchanged,
                });
                continue;
            }
            let hlc = txn.tick();
            let manifest = Manifest {
                metadata,
                hlc,
                ecosystem,
                ..existing
            };
            let signed = SignedDocument::sign(&manifest, self.identity.signing_key()).map_err(
                StoreError::signing(
                    format!("manifest of {} {}", manifest.name, manifest.version),
                    "keep the metadata shorter",
                ),
            )?;
            let id = signed.id();
            txn.protect.extend(manifest.files.iter().map(|f| f.blob));
            txn.put_doc(&signed);
            txn.set_entry(
                &f.name,
                &key,
                Some(EntryValue {
                    kind: EntryKind::Manifest,
                    doc: id,
                    hlc,
                }),
            )?;
            out.push(Published {
                key,
                doc: id,
                outcome: PublishOutcome::Created,
            });
        }
        txn.commit(&mut w)?;
        drop(w);
        self.sync()?;
        Ok(out)
    }

    // -----------------------------------------------------------------------------------------
    // Garbage collection

    /// Removes blobs that no live manifest references, documents no entry references, and blob
    /// files left without an index record by a crash. Safe to run while publishing: blobs
    /// pinned by an unfinished publish and everything committed after the mark started are kept.
    pub fn gc(&self) -> Result<GcReport> {
        self.gc_with(DEFAULT_TOMBSTONE_HORIZON_MS)
    }

    /// Garbage collection with an explicit tombstone horizon: a tombstone this instance signed
    /// is removed once it is older than the horizon, or once every known peer has completed a replication since it
    /// was written (a peer that never did holds every tombstone until the horizon). Removal is
    /// recorded in the change log, so peers that follow it drop the tombstone too; a peer older
    /// than the log gets the full reconciliation, which is authoritative.
    pub fn gc_with(&self, tombstone_horizon_ms: u64) -> Result<GcReport> {
        let mut report = self.gc_blobs_and_docs()?;
        report.partial_removed =
            self.collect_partial(std::time::Duration::from_secs(PARTIAL_MAX_AGE_SECS))?;
        report.tombstones_removed = self.collect_tombstones(tombstone_horizon_ms)?;
        if report.tombstones_removed > 0 {
            // The tombstones' documents are unreferenced now.
            report.docs_removed += self.gc_blobs_and_docs()?.docs_removed;
        }
        Ok(report)
    }

    /// Removes interrupted transfers from `partial/`: a blob's `.data`, `.obao` and `.have`
    /// files go together, when the newest of them is older than `max_age` (a run resumes
    /// within minutes, not days) or the blob is stored now. Returns how many blobs went.
    pub fn collect_partial(&self, max_age: std::time::Duration) -> Result<u64> {
        let dir = self.dir.join("partial");
        let rd = match fs::read_dir(&dir) {
            Ok(rd) => rd,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(0),
            Err(e) => return Err(StoreError::io("listing", &dir)(e)),
        };
        let mut newest: HashMap<String, (std::time::SystemTime, Vec<PathBuf>)> = HashMap::new();
        for entry in rd {
            let entry = entry.map_err(StoreError::io("listing", &dir))?;
            let path = entry.path();
            let name = entry.file_name().to_string_lossy().into_owned();
            let stem = name.split('.').next().unwrap_or_default().to_owned();
            let modified = entry
                .metadata()
                .and_then(|m| m.modified())
                .unwrap_or(std::time::UNIX_EPOCH);
            let slot = newest
                .entry(stem)
                .or_insert((std::time::UNIX_EPOCH, Vec::new()));
            slot.0 = slot.0.max(modified);
            slot.1.push(path);
        }
        let now = std::time::SystemTime::now();
        let mut removed = 0;
        for (stem, (modified, paths)) in newest {
            let stale = now.duration_since(modified).unwrap_or_default() > max_age;
            let stored = match stem.parse::<Hash>().ok() {
                Some(h) => self.has_blob(&h)?,
                None => true,
            };
            if stale || stored {
                for p in &paths {
                    fs::remove_file(p).map_err(StoreError::io("removing", p))?;
                }
                removed += 1;
            }
        }
        Ok(removed)
    }

    fn collect_tombstones(&self, horizon_ms: u64) -> Result<u64> {
        let now = now_ms();
        let mut cutoff = now.saturating_sub(horizon_ms);
        let peers = self.peer_list()?;
        if !peers.is_empty() {
            let log = self.replication_log(usize::MAX)?;
            let synced_by_all = peers
                .iter()
                .map(|p| {
                    log.iter()
                        .filter(|r| r.peer == p.name && r.outcome == "ok")
                        .map(|r| r.started_ms)
                        .max()
                        .unwrap_or(0)
                })
                .min()
                .unwrap_or(0);
            cutoff = cutoff.max(synced_by_all);
        }
        let mut removed = 0;
        let mut feeds = self.list_feeds()?;
        feeds.push(self.feed(SYSTEM_FEED)?);
        for f in feeds {
            // Only this instance's own deletions: a replica drops an upstream's tombstone when
            // the upstream's change log or reconciliation says so, never on its own.
            let me = self.identity.public_key();
            let mut old = Vec::new();
            for e in self.entries(&f.name)? {
                if e.value.kind != EntryKind::Tombstone || hlc::unix_ms(e.value.hlc) >= cutoff {
                    continue;
                }
                if self
                    .document(&e.value.doc)?
                    .is_some_and(|d| d.signer() == me)
                {
                    old.push((e.key, e.value));
                }
            }
            if !old.is_empty() {
                removed += self.collect_entries(&f.name, &old)?;
            }
        }
        Ok(removed)
    }

    fn gc_blobs_and_docs(&self) -> Result<GcReport> {
        struct Reset<'a>(&'a Mutex<WriteState>);
        impl Drop for Reset<'_> {
            fn drop(&mut self) {
                self.0.lock().gc_protect = None;
            }
        }
        let mut report = GcReport::default();
        self.write.lock().gc_protect = Some(HashSet::new());
        let _reset = Reset(&self.write);
        let snapshot = self.db.snapshot();

        // Mark.
        let mut live_blobs = HashSet::new();
        let mut live_docs: HashSet<Hash> = self.checkpoint_doc_ids()?.into_iter().collect();
        for item in self.scan(CF_ENTRIES, b"", Some(&snapshot)) {
            let (_, v) = item?;
            let value = EntryValue::decode(&v)?;
            live_docs.insert(value.doc);
            if value.kind == EntryKind::Manifest {
                let bytes = snapshot
                    .get_cf(self.cf(CF_DOCS), value.doc.as_bytes())?
                    .ok_or_else(|| StoreError::CorruptRecord {
                        what: "entry",
                        detail: format!("names missing document {}", value.doc),
                    })?;
                let m: Manifest = SignedDocument::decode(&bytes)?.payload()?;
                live_blobs.extend(m.files.iter().map(|f| f.blob));
            }
        }
        report.blobs_live = live_blobs.len() as u64;

        // Sweep blobs and documents, a few at a time under the write lock.
        for (cf, live) in [(CF_BLOBS, &live_blobs), (CF_DOCS, &live_docs)] {
            let mut candidates = Vec::new();
            for item in self.scan(cf, b"", Some(&snapshot)) {
                let (k, _) = item?;
                if let Some(h) = Hash::from_slice(&k) {
                    if !live.contains(&h) {
                        candidates.push(h);
                    }
                }
            }
            for chunk in candidates.chunks(256) {
                let w = self.write.lock();
                let pins = self.pins.lock();
                let protect = w.gc_protect.as_ref();
                let mut batch = WriteBatch::default();
                let mut removed_files = Vec::new();
                for h in chunk {
                    if pins.contains_key(h) || protect.is_some_and(|p| p.contains(h)) {
                        continue;
                    }
                    if cf == CF_BLOBS {
                        match self.blob_record(h)? {
                            None => continue,
                            Some(r) => {
                                report.blobs_removed += 1;
                                report.bytes_freed += r.size();
                                if matches!(r, BlobRecord::Backend(_)) {
                                    removed_files.push(*h);
                                }
                            }
                        }
                    } else {
                        report.docs_removed += 1;
                    }
                    batch.delete_cf(self.cf(cf), h.as_bytes());
                }
                self.db.write(batch)?;
                self.sync()?;
                for h in removed_files {
                    self.files.remove(&h).map_err(StoreError::io(
                        "removing blob",
                        Path::new(&self.files.describe(&h)),
                    ))?;
                }
                drop(pins);
                drop(w);
            }
        }

        // Orphan files: installed by a put that crashed before writing its record.
        let on_disk = self
            .files
            .list()
            .map_err(StoreError::io("listing blobs in", &self.dir.join("blobs")))?;
        for h in on_disk {
            let _w = self.write.lock();
            let pinned = self.pins.lock().contains_key(&h);
            if !pinned && !self.has_blob(&h)? {
                self.files.remove(&h).map_err(StoreError::io(
                    "removing blob",
                    Path::new(&self.files.describe(&h)),
                ))?;
                report.orphan_files_removed += 1;
            }
        }
        // Blobs in a shared bucket that nobody references any more.
        report.shared_orphans_removed = self
            .files
            .sweep_unreferenced()
            .map_err(StoreError::io("sweeping", &self.dir.join("blobs")))?;
        Ok(report)
    }

    // -----------------------------------------------------------------------------------------
    // Verification

    /// Rehashes every blob, checks every document's signature and trust, every entry against
    /// its document, and recomputes every Merkle node. Reports each problem found.
    pub fn verify(&self) -> Result<VerifyReport> {
        let mut report = VerifyReport::default();
        let problem = |kind, subject: String, detail: String| Problem {
            kind,
            subject,
            detail,
        };
        let mut problems = Vec::new();

        // Blobs. What the backend says it holds for this instance: in a shared bucket, a blob
        // without this instance's reference marker could be collected by another instance.
        let held: HashSet<Hash> = self
            .files
            .list()
            .map_err(StoreError::io("listing blobs in", &self.dir.join("blobs")))?
            .into_iter()
            .collect();
        for item in self.scan(CF_BLOBS, b"", None) {
            let (k, v) = item?;
            let Some(hash) = Hash::from_slice(&k) else {
                problems.push(problem(
                    "index",
                    hex::encode(&k),
                    "blob key is not a hash".into(),
                ));
                continue;
            };
            report.blobs += 1;
            let record = match BlobRecord::decode(&v) {
                Ok(r) => r,
                Err(e) => {
                    problems.push(problem("blob", hash.to_hex(), e.to_string()));
                    continue;
                }
            };
            let size = record.size();
            let mut sink = CountingSink(0);
            match self.read_blob_to(&hash, &mut sink) {
                Ok(n) if n == size && matches!(record, BlobRecord::Backend(_)) && !held.contains(&hash) => {
                    problems.push(problem(
                        "blob",
                        hash.to_hex(),
                        format!(
                            "{} is readable but not held for this instance (no reference marker); another instance's gc may delete it",
                            self.files.describe(&hash)
                        ),
                    ))
                }
                Ok(n) if n == size => report.blob_bytes += n,
                Ok(n) => problems.push(problem(
                    "blob",
                    hash.to_hex(),
                    format!("read {n} bytes, index says {size}"),
                )),
                Err(e) => problems.push(problem("blob", hash.to_hex(), e.to_string())),
            }
        }

        // Documents.
        let feeds: Vec<FeedRecord> = {
            let mut v = self.list_feeds()?;
            v.push(self.feed(SYSTEM_FEED)?);
            v
        };
        let mut docs = HashMap::new();
        for item in self.scan(CF_DOCS, b"", None) {
            let (k, v) = item?;
            report.documents += 1;
            let id = Hash::from_slice(&k).unwrap_or_default();
            match SignedDocument::decode(&v) {
                Ok(d) if d.id() == id => {
                    docs.insert(id, d);
                }
                Ok(d) => problems.push(problem(
                    "document",
                    id.to_hex(),
                    format!("stored under the wrong id (content is {})", d.id()),
                )),
                Err(e) => problems.push(problem("document", id.to_hex(), e.to_string())),
            }
        }

        // Entries and Merkle nodes, feed by feed.
        for f in &feeds {
            report.feeds += 1;
            let mut expected: HashMap<Vec<u8>, NodeSummary> = HashMap::new();
            for item in self.scan(CF_ENTRIES, &feed_prefix(f.id), None) {
                let (k, v) = item?;
                report.entries += 1;
                let key = String::from_utf8_lossy(&k[4..]).into_owned();
                let subject = format!("{}/{}", f.name, key);
                let value = match EntryValue::decode(&v) {
                    Ok(v) => v,
                    Err(e) => {
                        problems.push(problem("entry", subject, e.to_string()));
                        continue;
                    }
                };
                let kh = merkle::key_hash(&key);
                let leaf = merkle::leaf(&key, &value.doc);
                for depth in 0..=MAX_DEPTH {
                    expected
                        .entry(merkle_key(f.id, &kh.as_bytes()[..depth]))
                        .or_default()
                        .insert(&leaf);
                }
                if self
                    .db
                    .get_pinned_cf(self.cf(CF_KEYHASH), keyhash_key(f.id, &kh))?
                    .as_deref()
                    != Some(key.as_bytes())
                {
                    problems.push(problem(
                        "index",
                        subject.clone(),
                        "missing from the key-hash index".into(),
                    ));
                }
                let Some(doc) = docs.get(&value.doc) else {
                    problems.push(problem(
                        "entry",
                        subject,
                        format!("document {} is missing or invalid", value.doc),
                    ));
                    continue;
                };
                if let Err(e) = self.check_entry_doc(f, &key, &value, doc) {
                    problems.push(problem("entry", subject, e));
                }
            }
            let mut stored = 0usize;
            for item in self.scan(CF_MERKLE, &feed_prefix(f.id), None) {
                let (k, v) = item?;
                let Some(n) = NodeSummary::decode(&v) else {
                    problems.push(problem("merkle", f.name.clone(), "unreadable node".into()));
                    continue;
                };
                if n.count == 0 && n.fingerprint == merkle::Fingerprint::ZERO {
                    continue;
                }
                stored += 1;
                if expected.get(k.as_ref()) != Some(&n) {
                    problems.push(problem(
                        "merkle",
                        format!("{} node {}", f.name, hex::encode(&k[5..])),
                        "stored node does not match the entries below it".into(),
                    ));
                }
            }
            if stored != expected.len() {
                problems.push(problem(
                    "merkle",
                    f.name.clone(),
                    format!(
                        "{} nodes stored, {} expected from the entries",
                        stored,
                        expected.len()
                    ),
                ));
            }
        }
        report.problems = problems;
        Ok(report)
    }

    fn check_entry_doc(
        &self,
        f: &FeedRecord,
        key: &str,
        value: &EntryValue,
        doc: &SignedDocument,
    ) -> Result<(), String> {
        let trusted = self
            .is_trusted(&f.name, &doc.signer())
            .map_err(|e| e.to_string())?;
        if !trusted {
            return Err(format!("signed by untrusted key {}", doc.signer()));
        }
        match (value.kind, doc.doc_type()) {
            (EntryKind::Manifest, DocType::Manifest) => {
                let m: Manifest = doc.payload().map_err(|e| e.to_string())?;
                if m.feed != f.name
                    || names::package_key(&m.name, &m.version) != key
                    || m.hlc != value.hlc
                {
                    return Err("manifest does not match its entry".into());
                }
                for file in &m.files {
                    match self.blob_size(&file.blob) {
                        Ok(Some(s)) if s == file.size => {}
                        Ok(Some(s)) => {
                            return Err(format!(
                                "file `{}` is {} bytes, blob has {s}",
                                file.name, file.size
                            ))
                        }
                        Ok(None) => {
                            return Err(format!(
                                "file `{}` blob {} is missing",
                                file.name, file.blob
                            ))
                        }
                        Err(e) => return Err(e.to_string()),
                    }
                }
                Ok(())
            }
            (EntryKind::Tombstone, DocType::Tombstone) => {
                let t: Tombstone = doc.payload().map_err(|e| e.to_string())?;
                if t.feed != f.name || t.key != key || t.hlc != value.hlc {
                    return Err("tombstone does not match its entry".into());
                }
                Ok(())
            }
            (EntryKind::Document, t)
                if f.kind == FeedKind::System
                    && t != DocType::Manifest
                    && t != DocType::Tombstone =>
            {
                Ok(())
            }
            (kind, t) => Err(format!("entry of kind {kind:?} holds a {t} document")),
        }
    }
}

struct CountingSink(u64);

impl std::io::Write for CountingSink {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0 += buf.len() as u64;
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// One write batch being built under the write lock, with overlays so that several changes in
/// the same batch see each other.
pub(crate) struct Txn<'s> {
    store: &'s Store,
    batch: WriteBatch,
    pub(crate) hlc: u64,
    feeds: HashMap<String, FeedRecord>,
    nodes: HashMap<Vec<u8>, NodeSummary>,
    entries: HashMap<Vec<u8>, Option<EntryValue>>,
    docs: HashMap<Hash, SignedDocument>,
    pub(crate) protect: Vec<Hash>,
}

impl<'s> Txn<'s> {
    pub(crate) fn new(store: &'s Store, hlc: u64) -> Txn<'s> {
        Txn {
            store,
            batch: WriteBatch::default(),
            hlc,
            feeds: HashMap::new(),
            nodes: HashMap::new(),
            entries: HashMap::new(),
            docs: HashMap::new(),
            protect: Vec::new(),
        }
    }

    pub(crate) fn tick(&mut self) -> u64 {
        self.hlc = hlc::tick(self.hlc, now_ms());
        self.hlc
    }

    pub(crate) fn feed(&mut self, name: &str) -> Result<&mut FeedRecord> {
        if !self.feeds.contains_key(name) {
            let f = self.store.feed(name)?;
            self.feeds.insert(name.to_owned(), f);
        }
        self.feeds
            .get_mut(name)
            .ok_or_else(|| StoreError::FeedNotFound { feed: name.into() })
    }

    pub(crate) fn entry(&self, feed: u32, key: &str) -> Result<Option<EntryValue>> {
        match self.entries.get(&entry_key(feed, key)) {
            Some(v) => Ok(*v),
            None => self.store.entry_by_id(feed, key),
        }
    }

    fn doc(&self, id: &Hash) -> Result<Option<SignedDocument>> {
        match self.docs.get(id) {
            Some(d) => Ok(Some(d.clone())),
            None => self.store.document(id),
        }
    }

    pub(crate) fn put_doc(&mut self, doc: &SignedDocument) {
        self.batch
            .put_cf(self.store.cf(CF_DOCS), doc.id().as_bytes(), doc.bytes());
        self.protect.push(doc.id());
        self.docs.insert(doc.id(), doc.clone());
    }

    /// Sets (or with `None` removes) an entry: Merkle nodes, key-hash index, change log and
    /// the feed's sequence number move with it.
    pub(crate) fn set_entry(
        &mut self,
        feed: &str,
        key: &str,
        new: Option<EntryValue>,
    ) -> Result<()> {
        let retain = self.store.options.change_log_retain;
        let (feed_id, seq, floor) = {
            let f = self.feed(feed)?;
            (f.id, f.seq, f.log_floor)
        };
        let old = self.entry(feed_id, key)?;
        if old == new {
            return Ok(());
        }
        let kh = merkle::key_hash(key);
        for depth in 0..=MAX_DEPTH {
            let nk = merkle_key(feed_id, &kh.as_bytes()[..depth]);
            let mut node = match self.nodes.get(&nk) {
                Some(n) => *n,
                None => self.store.node(feed_id, &kh.as_bytes()[..depth])?,
            };
            if let Some(o) = &old {
                node.remove(&merkle::leaf(key, &o.doc));
            }
            if let Some(n) = &new {
                node.insert(&merkle::leaf(key, &n.doc));
            }
            self.nodes.insert(nk, node);
        }
        let ek = entry_key(feed_id, key);
        let cf_entries = self.store.cf(CF_ENTRIES);
        let cf_keyhash = self.store.cf(CF_KEYHASH);
        match &new {
            Some(v) => self.batch.put_cf(cf_entries, &ek, v.encode()),
            None => self.batch.delete_cf(cf_entries, &ek),
        }
        match (&old, &new) {
            (None, Some(_)) => self
                .batch
                .put_cf(cf_keyhash, keyhash_key(feed_id, &kh), key),
            (Some(_), None) => self.batch.delete_cf(cf_keyhash, keyhash_key(feed_id, &kh)),
            _ => {}
        }
        self.entries.insert(ek, new);
        let seq = seq + 1;
        let rec = ChangeRecord {
            key: key.to_owned(),
            value: new.map(|v| v.encode().to_vec()),
        };
        let rec = cbor::to_canonical(&rec).map_err(|e| StoreError::CorruptRecord {
            what: "changelog",
            detail: e.to_string(),
        })?;
        let cf_log = self.store.cf(CF_CHANGELOG);
        self.batch.put_cf(cf_log, changelog_key(feed_id, seq), rec);
        let mut new_floor = floor;
        // Trim in steps so most writes add one record and delete nothing.
        if seq.saturating_sub(floor) > retain + retain / 8 + 1 {
            new_floor = seq - retain;
            self.batch.delete_range_cf(
                cf_log,
                changelog_key(feed_id, floor + 1),
                changelog_key(feed_id, new_floor + 1),
            );
        }
        let f = self.feed(feed)?;
        f.seq = seq;
        f.log_floor = new_floor;
        Ok(())
    }

    fn publish(&mut self, feed: &str, ecosystem: Ecosystem, p: NewPackage) -> Result<Published> {
        let feed_id = self.feed(feed)?.id;
        let key = names::package_key(&p.name, &p.version);
        let new_files: Vec<FileEntry> = p
            .files
            .into_iter()
            .map(|f| FileEntry {
                name: f.name,
                blob: f.blob,
                size: f.size,
                digests: f.digests,
            })
            .collect();
        let (files, metadata, outcome) = match self.entry(feed_id, &key)? {
            Some(EntryValue {
                kind: EntryKind::Manifest,
                doc,
                ..
            }) => {
                let existing: Manifest = self
                    .doc(&doc)?
                    .ok_or_else(|| StoreError::missing_document("entry", &key, &doc))?
                    .payload()?;
                let mut files = existing.files.clone();
                let mut added = false;
                for nf in new_files {
                    match files.iter().find(|f| f.name == nf.name) {
                        Some(f) if f.blob == nf.blob => {}
                        Some(_) => {
                            return Err(StoreError::VersionExists {
                                feed: feed.into(),
                                name: p.name,
                                version: p.version,
                                file: nf.name,
                            })
                        }
                        // One file per version in npm and cargo.
                        None if matches!(ecosystem, Ecosystem::Npm | Ecosystem::Cargo) => {
                            return Err(StoreError::VersionExists {
                                feed: feed.into(),
                                name: p.name,
                                version: p.version,
                                file: nf.name,
                            })
                        }
                        None => {
                            files.push(nf);
                            added = true;
                        }
                    }
                }
                if !added {
                    return Ok(Published {
                        key,
                        doc,
                        outcome: PublishOutcome::Unchanged,
                    });
                }
                let mut metadata = existing.metadata;
                for (k, v) in p.metadata {
                    metadata.entry(k).or_insert(v);
                }
                (files, metadata, PublishOutcome::FilesAdded)
            }
            _ => (new_files, p.metadata, PublishOutcome::Created),
        };
        let hlc = self.tick();
        self.protect.extend(files.iter().map(|f| f.blob));
        let manifest = Manifest {
            v: PAYLOAD_VERSION,
            feed: feed.into(),
            ecosystem,
            name: p.name,
            version: p.version,
            files,
            metadata,
            hlc,
        };
        let doc = SignedDocument::sign(&manifest, self.store.identity.signing_key()).map_err(
            StoreError::signing(
                format!("manifest of {} {}", manifest.name, manifest.version),
                "publish fewer files, shorter file names or less metadata per version",
            ),
        )?;
        let id = doc.id();
        self.put_doc(&doc);
        self.set_entry(
            feed,
            &key,
            Some(EntryValue {
                kind: EntryKind::Manifest,
                doc: id,
                hlc,
            }),
        )?;
        Ok(Published {
            key,
            doc: id,
            outcome,
        })
    }

    /// Writes the batch; the caller syncs after releasing the lock.
    /// A `meta` record written with the batch.
    pub(crate) fn meta_put(&mut self, key: Vec<u8>, value: Vec<u8>) {
        self.batch.put_cf(self.store.cf(CF_META), key, value);
    }

    /// A `meta` record deleted with the batch.
    pub(crate) fn meta_delete(&mut self, key: Vec<u8>) {
        self.batch.delete_cf(self.store.cf(CF_META), key);
    }

    pub(crate) fn commit(mut self, state: &mut WriteState) -> Result<()> {
        let store = self.store;
        for (k, n) in &self.nodes {
            self.batch.put_cf(store.cf(CF_MERKLE), k, n.encode());
        }
        for f in self.feeds.values() {
            self.batch
                .put_cf(store.cf(CF_FEEDS), &f.name, store.encode_feed(f)?);
        }
        self.batch
            .put_cf(store.cf(CF_META), META_HLC, self.hlc.to_be_bytes());
        let mut wo = WriteOptions::default();
        wo.set_sync(false);
        store.db.write_opt(self.batch, &wo)?;
        state.hlc = self.hlc;
        if let Some(p) = state.gc_protect.as_mut() {
            p.extend(self.protect);
        }
        Ok(())
    }
}
