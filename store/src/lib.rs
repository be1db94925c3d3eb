//! `cairn-store`: Cairn's bytes and documents at rest.
//!
//! - [`admin`]: tokens (hashed, scoped), peers, the replication log, checkpoints.
//! - [`hash`]: BLAKE3 hashes, the names of blobs and documents.
//! - [`bundle`]: signed air-gap bundles, written by export and checked whole before import.
//! - [`blob`]: ingest (hash while writing), the [`blob::BlobBackend`] seam for large blobs,
//!   verified-streaming outboards and the [`blob::VerifyingReader`].
//! - [`cbor`]: deterministic CBOR (RFC 8949 section 4.2.1), encoding and checking.
//! - [`doc`]: signed documents and their payload types (manifest, tombstone, vulnerability,
//!   assessment, assessment type, policy, checkpoint).
//! - [`identity`]: the instance's ed25519 key.
//! - [`merkle`]: additive-fingerprint trie summaries.
//! - [`names`]: validation of feed, package, version and file names.
//! - [`hlc`]: the hybrid logical clock.
//! - [`package`]: reading name, version and metadata out of wheels, sdists, npm tarballs and crates.
//! - [`replica`]: what replication needs: applying received documents, removing entries,
//!   system documents, blob transfer in verified, resumable pieces.
//! - [`store`]: the [`Store`] itself: feeds, publishing, change log, GC, verification.
//!
//! The store knows nothing of QUIC or HTTP.
//!
//! ```
//! use cairn_store::{Ecosystem, NewFile, NewPackage, Store, StoreOptions};
//!
//! let dir = tempfile::tempdir()?;
//! let store = Store::init(dir.path(), StoreOptions::default())?;
//! store.create_feed("demo", Ecosystem::Raw)?;
//! let blob = store.put_blob(&b"hello"[..])?;
//! store.publish("demo", NewPackage {
//!     name: "greeting".into(),
//!     version: "1".into(),
//!     files: vec![NewFile { name: "hello.txt".into(), blob: blob.hash, size: blob.size, digests: Default::default() }],
//!     metadata: Default::default(),
//! })?;
//! let (_, manifest) = store.manifest("demo", "greeting", "1")?.expect("published");
//! let mut out = Vec::new();
//! store.read_blob_to(&manifest.files[0].blob, &mut out)?;
//! assert_eq!(out, b"hello");
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

#![cfg_attr(
    not(test),
    deny(clippy::unwrap_used, clippy::expect_used, clippy::panic)
)]

pub mod admin;
pub mod blob;
pub mod bundle;
pub mod cbor;
pub mod doc;
pub mod hash;
pub mod hlc;
pub mod identity;
pub mod merkle;
pub mod names;
pub mod package;
pub mod replica;
pub mod rng;
pub mod rotation;
pub mod s3;
pub mod sig;
pub mod store;
pub mod system;
pub mod tlog;

#[cfg(test)]
mod tests;

pub use doc::{Ecosystem, PublicKey, SignedDocument};
pub use hash::Hash;
pub use store::{
    Amendment, BlobPin, BlobsConfig, Change, ChangesSince, Cursor, Entry, EntryKind, EntryValue,
    FeedKind, FeedRecord, FeedSummary, GcReport, NewFile, NewPackage, PackageProblem, Problem,
    PublishOutcome, Published, Store, StoreError, StoreOptions, StoredBlob, VerifyProgress,
    VerifyReport, SYSTEM_FEED, TRUST_ALL,
};
