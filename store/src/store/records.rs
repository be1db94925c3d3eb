//! The values the store hands out and takes in: feeds, entries, packages, reports.

use super::*;

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
    /// A new, empty feed: created now, in a fresh change-log epoch.
    pub(crate) fn new(id: u32, name: &str, kind: FeedKind) -> Result<FeedRecord> {
        Ok(FeedRecord {
            id,
            name: name.into(),
            kind,
            created_ms: now_ms(),
            epoch: random_u64()?,
            seq: 0,
            log_floor: 0,
            collected_hlc: 0,
        })
    }

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
    pub(crate) fn encode(&self) -> [u8; 41] {
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

    pub(crate) fn decode(b: &[u8]) -> Result<EntryValue> {
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
    pub(crate) _pin: BlobPin,
}

impl StoredBlob {
    /// The pin alone, once hash and size are no longer needed.
    pub fn into_pin(self) -> BlobPin {
        self._pin
    }
}

/// Holds a blob out of garbage collection while it is not yet referenced by a manifest.
pub struct BlobPin {
    pub(crate) pins: Arc<Mutex<HashMap<Hash, usize>>>,
    pub(crate) hash: Hash,
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
    /// Bytes of RocksDB's blob files (where documents and small blobs are kept) given back
    /// by the compaction gc runs once the values it removed, over this and earlier runs,
    /// reach an eighth of those files (0 below that).
    pub blob_file_bytes_freed: u64,
    /// The longest time, in microseconds, gc held the store's write lock at once (publishes
    /// and replication wait for it meanwhile; gc takes it for at most 32 removals at a time).
    pub longest_pause_us: u64,
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

/// How far [`Store::verify_with_progress`] is with the blobs (the long part).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct VerifyProgress {
    /// Blobs rehashed so far.
    pub blobs_done: u64,
    /// Blobs to rehash.
    pub blobs_due: u64,
    /// Their bytes rehashed so far.
    pub bytes_done: u64,
    /// Bytes to rehash.
    pub bytes_due: u64,
}

impl VerifyReport {
    /// True when nothing is wrong.
    pub fn ok(&self) -> bool {
        self.problems.is_empty()
    }
}
