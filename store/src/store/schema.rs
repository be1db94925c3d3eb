//! The on-disk layout: column families, meta keys, key encodings and blob records.

use super::*;

/// The reserved feed that holds system documents (assessments, types, policies, vulnerabilities).
pub const SYSTEM_FEED: &str = "@system";
pub(crate) const SYSTEM_FEED_ID: u32 = 0;
pub(crate) const SCHEMA_VERSION: u64 = 1;
/// Tombstones are kept at least this long unless every known peer has synced past them.
pub const DEFAULT_TOMBSTONE_HORIZON_MS: u64 = 30 * 24 * 3600 * 1000;
/// Trust scope that covers every feed and the system set.
pub const TRUST_ALL: &str = "*";

pub(crate) const CF_META: &str = "meta";
pub(crate) const CF_FEEDS: &str = "feeds";
pub(crate) const CF_ENTRIES: &str = "entries";
pub(crate) const CF_KEYHASH: &str = "keyhash";
pub(crate) const CF_MERKLE: &str = "merkle";
pub(crate) const CF_CHANGELOG: &str = "changelog";
pub(crate) const CF_DOCS: &str = "docs";
pub(crate) const CF_BLOBS: &str = "blobs";
pub(crate) const ALL_CFS: [&str; 8] = [
    CF_META,
    CF_FEEDS,
    CF_ENTRIES,
    CF_KEYHASH,
    CF_MERKLE,
    CF_CHANGELOG,
    CF_DOCS,
    CF_BLOBS,
];

pub(crate) const META_SCHEMA: &[u8] = b"schema";
pub(crate) const META_HLC: &[u8] = b"hlc";
pub(crate) const META_NEXT_FEED: &[u8] = b"next-feed-id";
pub(crate) const META_TRUST: &[u8] = b"trust\0";
/// Where the store's large blobs live (`BlobsConfig::location`).
pub(crate) const META_BLOBS: &[u8] = b"blobs";
/// Bytes of values gc removed from RocksDB's blob files and has not given back yet (an
/// estimate, for when to run the blob GC's compaction).
pub(crate) const META_BLOB_GARBAGE: &[u8] = b"blob-garbage";

pub(crate) fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

pub(crate) fn random_u64() -> Result<u64> {
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

pub(crate) fn entry_key(feed: u32, key: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(4 + key.len());
    k.extend_from_slice(&feed_prefix(feed));
    k.extend_from_slice(key.as_bytes());
    k
}

pub(crate) fn keyhash_key(feed: u32, kh: &Hash) -> Vec<u8> {
    let mut k = Vec::with_capacity(36);
    k.extend_from_slice(&feed_prefix(feed));
    k.extend_from_slice(kh.as_bytes());
    k
}

pub(crate) fn merkle_key(feed: u32, prefix: &[u8]) -> Vec<u8> {
    let mut k = Vec::with_capacity(5 + prefix.len());
    k.extend_from_slice(&feed_prefix(feed));
    k.push(prefix.len() as u8);
    k.extend_from_slice(prefix);
    k
}

pub(crate) fn changelog_key(feed: u32, seq: u64) -> [u8; 12] {
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
pub(crate) struct ChangeRecord {
    pub(crate) key: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) value: Option<Vec<u8>>,
}

pub(crate) const BLOB_INLINE: u8 = 0;
pub(crate) const BLOB_BACKEND: u8 = 1;

pub(crate) fn blob_record(size: u64, inline: Option<&[u8]>) -> Vec<u8> {
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
    pub(crate) fn decode(b: &[u8]) -> Result<BlobRecord> {
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
