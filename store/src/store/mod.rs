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
//!
//! The parts: `schema` (the layout above), `error`, `records` (the values handed in and
//! out), `open` (creating and opening a directory), `trust`, `blobs`, `documents`, `feeds`
//! (entries, Merkle summaries, the change log), `publish` (writes), `promote` (a version
//! copied between feeds, with its signed record), `gc`, `verify`, and
//! `txn` (one write batch under the write lock).

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

mod blobs;
mod documents;
mod error;
mod feeds;
mod gc;
mod open;
mod promote;
mod publish;
mod records;
mod schema;
mod trust;
mod txn;
mod verify;

pub(crate) use documents::CheckedDocs;
pub use error::*;
pub use promote::Promoted;
pub use records::*;
pub use schema::*;
pub(crate) use txn::Txn;

type Result<T, E = StoreError> = std::result::Result<T, E>;
type KeyValue = (Box<[u8]>, Box<[u8]>);

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
    /// Bumped after every committed change of a feed's entries or of a checkpoint held:
    /// what a replication responder watches to tell its downstreams.
    pub(crate) changes: tokio::sync::watch::Sender<u64>,
    /// Documents whose signatures checked, by id (see [`CheckedDocs`]).
    checked_docs: Mutex<CheckedDocs>,
    /// Held while appending to the transparency log (one append per write batch).
    pub(crate) tlog: Mutex<()>,
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
