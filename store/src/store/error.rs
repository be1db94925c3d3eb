//! The store's errors.

use super::*;

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
    #[error("invalid package {name} {version}: {problem}")]
    InvalidPackage {
        name: String,
        version: String,
        problem: PackageProblem,
    },
    /// Input the caller gave (a token, an OSV record) does not say what it must.
    #[error("invalid {what}: {detail}")]
    InvalidInput { what: &'static str, detail: String },
    /// Something named by the caller (an assessment type, a vulnerability) does not exist.
    #[error("no {what} `{name}`; {advice}")]
    UnknownReference {
        what: &'static str,
        name: String,
        advice: String,
    },
    /// A document could not be encoded.
    #[error("the {what} cannot be encoded: {detail}")]
    Unencodable { what: String, detail: String },
    /// A peer declared a blob larger than any this store accepts.
    #[error("blob {hash} declared as {size} bytes, over the limit of {max}")]
    BlobTooLarge { hash: Hash, size: u64, max: u64 },
    /// A received blob was to be installed before every group arrived.
    #[error("blob {hash} is incomplete")]
    BlobIncomplete { hash: Hash },
    /// An air-gap bundle failed a check: nothing in it was applied.
    #[error("bundle refused (at byte {offset}): {reason}; nothing in it was applied")]
    BundleRefused { offset: u64, reason: String },
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
    /// Operation not allowed on the system feed (`action`: what was tried).
    #[error("the system feed {action}")]
    SystemFeed { action: &'static str },
    /// A document of a type the system feed does not hold.
    #[error("a {doc_type} document is not a system document")]
    NotSystemDocument { doc_type: String },
    /// Merkle nodes asked for below the depth they are stored to.
    #[error("merkle nodes are stored to depth {max}; list entries under deeper prefixes (asked for depth {depth})")]
    MerkleTooDeep { depth: usize, max: usize },
    /// The blob storage (an object store) did not answer or refused: nothing was changed, and
    /// the operation may be retried.
    #[error("blob storage unavailable while {action}: {detail}; nothing was stored, retry later")]
    BlobStoreUnavailable {
        action: &'static str,
        detail: String,
    },
    /// The configured blob backend is not the one this store's blobs are in.
    #[error("this store keeps its large blobs in {stored}, but the configuration says {configured}; use the [blobs] configuration the store was created with")]
    BlobHomeMismatch { stored: String, configured: String },
    /// The configured blob backend cannot be used.
    #[error("blob backend {location}: {source}")]
    BlobBackend {
        location: String,
        #[source]
        source: std::io::Error,
    },
    /// A peer's key-rotation statements do not hold.
    #[error(transparent)]
    Rotation(#[from] crate::rotation::RotationError),
}

/// What is wrong with a package version's file list.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PackageProblem {
    /// It lists no files.
    #[error("it has no files")]
    NoFiles,
    /// It lists one file name twice.
    #[error("file `{0}` is listed twice")]
    FileTwice(String),
    /// Nothing was published.
    #[error("nothing was published")]
    Empty,
}

impl StoreError {
    /// An entry (`what`: which kind) whose document is not in the store: the database is
    /// damaged.
    pub fn missing_document(what: &'static str, key: &str, doc: &Hash) -> StoreError {
        StoreError::CorruptRecord {
            what,
            detail: format!("`{key}` names missing document {doc}"),
        }
    }

    /// The error for a document that could not be signed: [`StoreError::DocumentTooLarge`]
    /// when it is over the limit, else [`StoreError::Unencodable`].
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
            other => StoreError::Unencodable {
                what,
                detail: other.to_string(),
            },
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
