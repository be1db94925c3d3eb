//! Instance administration kept in the store: access tokens (stored hashed, compared in
//! constant time), known peers (address and pinned key), the replication log (capped), and
//! signed feed checkpoints (a replica keeps the newest and refuses a rollback).

use serde::{Deserialize, Serialize};

use crate::cbor;
use crate::doc::{Checkpoint, PublicKey, SignedDocument, PAYLOAD_VERSION};
use crate::store::{now_ms, StoreError, CF_META};
use crate::{Hash, Store, SYSTEM_FEED};

type Result<T, E = StoreError> = std::result::Result<T, E>;

const TOKEN_PREFIX: &[u8] = b"token\0";
const PEER_PREFIX: &[u8] = b"peer\0";
const LOG_PREFIX: &[u8] = b"replog\0";
const CHECKPOINT_PREFIX: &[u8] = b"checkpoint\0";
const LOG_NEXT: &[u8] = b"replog-next";
const CURSOR_PREFIX: &[u8] = b"cursor\0";

/// Replication log records kept; older ones are dropped.
pub const REPLICATION_LOG_CAP: u64 = 1000;

/// What a token may do.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, PartialOrd, Ord)]
pub enum Scope {
    /// Read a feed (`*` for all).
    Read(String),
    /// Publish to a feed (`*` for all).
    Publish(String),
    /// Replicate a feed, `system` for the system set, `*` for everything.
    Replicate(String),
    /// Everything.
    Admin,
}

impl std::fmt::Display for Scope {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Scope::Read(x) => write!(f, "read:{x}"),
            Scope::Publish(x) => write!(f, "publish:{x}"),
            Scope::Replicate(x) => write!(f, "replicate:{x}"),
            Scope::Admin => f.write_str("admin"),
        }
    }
}

impl std::str::FromStr for Scope {
    type Err = String;
    fn from_str(s: &str) -> Result<Scope, String> {
        let bad = || {
            format!("invalid scope `{s}` (expected read:FEED, publish:FEED, replicate:FEED, replicate:system, replicate:* or admin)")
        };
        if s == "admin" {
            return Ok(Scope::Admin);
        }
        let (kind, target) = s.split_once(':').ok_or_else(bad)?;
        let valid_target = target == "*"
            || (kind == "replicate" && target == "system")
            || crate::names::check_feed_name(target).is_ok();
        if !valid_target {
            return Err(bad());
        }
        match kind {
            "read" => Ok(Scope::Read(target.into())),
            "publish" => Ok(Scope::Publish(target.into())),
            "replicate" => Ok(Scope::Replicate(target.into())),
            _ => Err(bad()),
        }
    }
}

/// A stored token, without its secret.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenInfo {
    /// Public id (part of the token string).
    pub id: String,
    /// What it allows.
    pub scopes: Vec<Scope>,
    /// Creation time, Unix milliseconds.
    pub created_ms: u64,
    /// Free text.
    pub label: String,
}

impl TokenInfo {
    /// Whether the token may replicate `feed` (`@system` for the system set).
    pub fn may_replicate(&self, feed: &str) -> bool {
        self.scopes.iter().any(|s| match s {
            Scope::Admin => true,
            Scope::Replicate(t) => t == "*" || (feed == SYSTEM_FEED && t == "system") || t == feed,
            _ => false,
        })
    }

    /// Whether the token may read `feed`.
    pub fn may_read(&self, feed: &str) -> bool {
        self.scopes.iter().any(|s| match s {
            Scope::Admin => true,
            Scope::Read(t) | Scope::Publish(t) => t == "*" || t == feed,
            _ => false,
        })
    }

    /// Whether the token may publish to `feed`.
    pub fn may_publish(&self, feed: &str) -> bool {
        self.scopes.iter().any(|s| match s {
            Scope::Admin => true,
            Scope::Publish(t) => t == "*" || t == feed,
            _ => false,
        })
    }
}

#[derive(Serialize, Deserialize)]
struct StoredToken {
    hash: Hash,
    info: TokenInfo,
}

/// A peer this instance replicates with.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Peer {
    /// Local name.
    pub name: String,
    /// `host:port` of its replication endpoint.
    pub addr: String,
    /// Its pinned instance key.
    pub key: PublicKey,
}

impl Serialize for PublicKey {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.fingerprint())
    }
}

impl<'de> Deserialize<'de> for PublicKey {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<PublicKey, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// One run of a replication, as kept in the replication log.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReplicationRecord {
    /// Sequence number in the log.
    #[serde(default)]
    pub seq: u64,
    /// Replication name (or `incoming` for runs a peer started).
    pub replication: String,
    /// Peer name or key.
    pub peer: String,
    /// `pull`, `push` or `mirror`.
    pub mode: String,
    /// Feeds in the run.
    pub feeds: Vec<String>,
    /// Start, Unix milliseconds.
    pub started_ms: u64,
    /// End, Unix milliseconds.
    pub ended_ms: u64,
    /// Round trips this side waited for (sent, then heard back).
    pub rounds: u64,
    /// Bytes sent on the connection.
    pub bytes_sent: u64,
    /// Bytes received on the connection.
    pub bytes_received: u64,
    /// Documents sent.
    pub docs_sent: u64,
    /// Documents received and applied.
    pub docs_received: u64,
    /// Blobs sent (pieces).
    pub blobs_sent: u64,
    /// Blobs received.
    pub blobs_received: u64,
    /// Deletions applied here.
    pub deletions: u64,
    /// `ok` or `failed`.
    pub outcome: String,
    /// Error text when failed.
    #[serde(default)]
    pub error: String,
}

fn meta_err(what: &'static str) -> impl Fn(cbor::CborError) -> StoreError {
    move |e| StoreError::CorruptRecord {
        what,
        detail: e.to_string(),
    }
}

fn random_hex(bytes: usize) -> Result<String> {
    let mut b = vec![0u8; bytes];
    getrandom::fill(&mut b).map_err(|e| StoreError::Io {
        action: "getting randomness for",
        path: "a token".into(),
        source: std::io::Error::other(e.to_string()),
    })?;
    Ok(hex::encode(b))
}

fn prefixed(prefix: &[u8], rest: &[u8]) -> Vec<u8> {
    [prefix, rest].concat()
}

impl Store {
    // ---------------------------------------------------------------------------------------
    // Tokens

    /// Creates a token; the secret string is returned once and stored only as a hash.
    pub fn token_create(&self, scopes: Vec<Scope>, label: &str) -> Result<(String, TokenInfo)> {
        if scopes.is_empty() {
            return Err(StoreError::InvalidPackage(
                "a token needs at least one scope".into(),
            ));
        }
        let id = random_hex(6)?;
        let secret = format!("cairn_{id}_{}", random_hex(20)?);
        let info = TokenInfo {
            id: id.clone(),
            scopes,
            created_ms: now_ms(),
            label: label.into(),
        };
        let stored = StoredToken {
            hash: Hash::of(secret.as_bytes()),
            info: info.clone(),
        };
        let bytes = cbor::to_canonical(&stored).map_err(meta_err("token"))?;
        self.db.put_cf(
            self.cf(CF_META),
            prefixed(TOKEN_PREFIX, id.as_bytes()),
            bytes,
        )?;
        self.db.flush_wal(true)?;
        Ok((secret, info))
    }

    /// The token a secret string belongs to, if it is valid. The comparison of hashes is
    /// constant-time.
    pub fn token_check(&self, secret: &str) -> Result<Option<TokenInfo>> {
        let Some(id) = secret
            .strip_prefix("cairn_")
            .and_then(|r| r.split_once('_'))
            .map(|(id, _)| id)
        else {
            return Ok(None);
        };
        if id.len() != 12 || !id.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Ok(None);
        }
        let Some(bytes) = self
            .db
            .get_pinned_cf(self.cf(CF_META), prefixed(TOKEN_PREFIX, id.as_bytes()))?
        else {
            return Ok(None);
        };
        let stored: StoredToken =
            cbor::from_canonical(&bytes, 1 << 16).map_err(meta_err("token"))?;
        // blake3::Hash equality is constant-time.
        let given = blake3::hash(secret.as_bytes());
        if given == blake3::Hash::from(stored.hash) {
            Ok(Some(stored.info))
        } else {
            Ok(None)
        }
    }

    /// Every token (without secrets).
    pub fn token_list(&self) -> Result<Vec<TokenInfo>> {
        let mut out = Vec::new();
        for item in self.scan(CF_META, TOKEN_PREFIX, None) {
            let (_, v) = item?;
            let stored: StoredToken =
                cbor::from_canonical(&v, 1 << 16).map_err(meta_err("token"))?;
            out.push(stored.info);
        }
        Ok(out)
    }

    /// Revokes a token by id; false if there was none.
    pub fn token_revoke(&self, id: &str) -> Result<bool> {
        self.remove_meta(&prefixed(TOKEN_PREFIX, id.as_bytes()))
    }

    // ---------------------------------------------------------------------------------------
    // Peers

    /// Adds or replaces a peer.
    pub fn peer_add(&self, peer: &Peer) -> Result<()> {
        crate::names::check_feed_name(&peer.name).map_err(|mut e| {
            e.what = "peer name";
            StoreError::Name(e)
        })?;
        let bytes = cbor::to_canonical(peer).map_err(meta_err("peer"))?;
        self.db.put_cf(
            self.cf(CF_META),
            prefixed(PEER_PREFIX, peer.name.as_bytes()),
            bytes,
        )?;
        self.db.flush_wal(true)?;
        Ok(())
    }

    /// A peer by name.
    pub fn peer(&self, name: &str) -> Result<Option<Peer>> {
        match self
            .db
            .get_pinned_cf(self.cf(CF_META), prefixed(PEER_PREFIX, name.as_bytes()))?
        {
            None => Ok(None),
            Some(b) => Ok(Some(
                cbor::from_canonical(&b, 1 << 16).map_err(meta_err("peer"))?,
            )),
        }
    }

    /// Every peer.
    pub fn peer_list(&self) -> Result<Vec<Peer>> {
        let mut out = Vec::new();
        for item in self.scan(CF_META, PEER_PREFIX, None) {
            let (_, v) = item?;
            out.push(cbor::from_canonical(&v, 1 << 16).map_err(meta_err("peer"))?);
        }
        Ok(out)
    }

    /// Removes a peer; false if there was none.
    pub fn peer_remove(&self, name: &str) -> Result<bool> {
        self.remove_meta(&prefixed(PEER_PREFIX, name.as_bytes()))
    }

    // ---------------------------------------------------------------------------------------
    // Replication log

    /// Appends a record (dropping the oldest beyond [`REPLICATION_LOG_CAP`]); returns its seq.
    pub fn replication_log_append(&self, mut record: ReplicationRecord) -> Result<u64> {
        let _w = self.write.lock();
        let next = match self.db.get_pinned_cf(self.cf(CF_META), LOG_NEXT)? {
            Some(b) => u64::from_be_bytes(b.as_ref().try_into().map_err(|_| {
                StoreError::CorruptRecord {
                    what: "replication log",
                    detail: "bad counter".into(),
                }
            })?),
            None => 1,
        };
        record.seq = next;
        let bytes = cbor::to_canonical(&record).map_err(meta_err("replication log"))?;
        let mut batch = rocksdb::WriteBatch::default();
        batch.put_cf(
            self.cf(CF_META),
            prefixed(LOG_PREFIX, &next.to_be_bytes()),
            bytes,
        );
        batch.put_cf(self.cf(CF_META), LOG_NEXT, (next + 1).to_be_bytes());
        if next > REPLICATION_LOG_CAP {
            let drop_below = next - REPLICATION_LOG_CAP + 1;
            batch.delete_range_cf(
                self.cf(CF_META),
                prefixed(LOG_PREFIX, &0u64.to_be_bytes()),
                prefixed(LOG_PREFIX, &drop_below.to_be_bytes()),
            );
        }
        self.db.write(batch)?;
        self.db.flush_wal(true)?;
        Ok(next)
    }

    /// The newest `limit` records, newest first.
    pub fn replication_log(&self, limit: usize) -> Result<Vec<ReplicationRecord>> {
        let mut all = Vec::new();
        for item in self.scan(CF_META, LOG_PREFIX, None) {
            let (_, v) = item?;
            all.push(
                cbor::from_canonical::<ReplicationRecord>(&v, 1 << 20)
                    .map_err(meta_err("replication log"))?,
            );
        }
        all.reverse();
        all.truncate(limit);
        Ok(all)
    }

    /// The upstream cursor remembered for `(replication, feed)` after its last complete pull.
    pub fn replication_cursor(
        &self,
        replication: &str,
        feed: &str,
    ) -> Result<Option<crate::Cursor>> {
        let key = [
            CURSOR_PREFIX,
            replication.as_bytes(),
            b"\0",
            feed.as_bytes(),
        ]
        .concat();
        match self.db.get_pinned_cf(self.cf(CF_META), key)? {
            None => Ok(None),
            Some(b) => Ok(Some(
                cbor::from_canonical(&b, 256).map_err(meta_err("cursor"))?,
            )),
        }
    }

    /// Remembers the upstream cursor for `(replication, feed)`.
    pub fn set_replication_cursor(
        &self,
        replication: &str,
        feed: &str,
        cursor: crate::Cursor,
    ) -> Result<()> {
        let key = [
            CURSOR_PREFIX,
            replication.as_bytes(),
            b"\0",
            feed.as_bytes(),
        ]
        .concat();
        let bytes = cbor::to_canonical(&cursor).map_err(meta_err("cursor"))?;
        self.db.put_cf(self.cf(CF_META), key, bytes)?;
        Ok(())
    }

    // ---------------------------------------------------------------------------------------
    // Checkpoints

    /// Signs this instance's current state of `feed`, valid for `ttl_secs`.
    pub fn sign_checkpoint(&self, feed: &str, ttl_secs: u64) -> Result<SignedDocument> {
        let s = self.feed_summary(feed)?;
        let now = now_ms() / 1000;
        let cp = Checkpoint {
            v: PAYLOAD_VERSION,
            feed: feed.into(),
            root: Hash::from_bytes(*s.root.fingerprint.as_bytes()),
            count: s.root.count,
            epoch: s.feed.epoch,
            seq: s.feed.seq,
            time: now,
            expires: now + ttl_secs,
        };
        SignedDocument::sign(&cp, self.identity().signing_key())
            .map_err(|e| StoreError::InvalidPackage(e.to_string()))
    }

    /// Checks an upstream checkpoint for `feed` before applying anything: signed by a key
    /// trusted for the feed, for this feed, and not older than the one held (a rollback).
    pub fn check_checkpoint(&self, feed: &str, bytes: &[u8]) -> Result<Checkpoint> {
        let doc = SignedDocument::decode(bytes)?;
        let trusted = self.is_trusted(feed, &doc.signer())?;
        doc.check_trusted(feed, |_| trusted)?;
        let cp: Checkpoint = doc.payload()?;
        let reject = |reason: String| StoreError::RemoteRejected {
            feed: feed.into(),
            doc: doc.id(),
            reason,
        };
        if cp.feed != feed {
            return Err(reject(format!("checkpoint is for feed `{}`", cp.feed)));
        }
        if let Some((held, _)) = self.checkpoint(feed)? {
            if (cp.epoch == held.epoch && cp.seq < held.seq)
                || (cp.epoch == held.epoch && cp.seq == held.seq && cp.time < held.time)
            {
                return Err(reject(format!(
                    "checkpoint at seq {} is older than the one held (seq {}): refusing a rollback",
                    cp.seq, held.seq
                )));
            }
        }
        Ok(cp)
    }

    /// Accepts an upstream checkpoint for `feed`: everything [`Store::check_checkpoint`]
    /// checks, and it must match this replica's recomputed root and count.
    pub fn accept_checkpoint(&self, feed: &str, bytes: &[u8]) -> Result<Checkpoint> {
        let cp = self.check_checkpoint(feed, bytes)?;
        let doc = SignedDocument::decode(bytes)?;
        let s = self.feed_summary(feed)?;
        if cp.root.as_bytes() != s.root.fingerprint.as_bytes() || cp.count != s.root.count {
            return Err(StoreError::RemoteRejected {
                feed: feed.into(),
                doc: doc.id(),
                reason: "checkpoint root does not match this replica's recomputed root".into(),
            });
        }
        let mut batch = rocksdb::WriteBatch::default();
        batch.put_cf(
            self.cf(crate::store::CF_DOCS),
            doc.id().as_bytes(),
            doc.bytes(),
        );
        batch.put_cf(
            self.cf(CF_META),
            prefixed(CHECKPOINT_PREFIX, feed.as_bytes()),
            doc.id().as_bytes(),
        );
        self.db.write(batch)?;
        self.db.flush_wal(true)?;
        Ok(cp)
    }

    /// The checkpoint held for `feed`, with its document.
    pub fn checkpoint(&self, feed: &str) -> Result<Option<(Checkpoint, SignedDocument)>> {
        let Some(id) = self.db.get_pinned_cf(
            self.cf(CF_META),
            prefixed(CHECKPOINT_PREFIX, feed.as_bytes()),
        )?
        else {
            return Ok(None);
        };
        let id = Hash::from_slice(&id).ok_or_else(|| StoreError::CorruptRecord {
            what: "checkpoint",
            detail: "bad id".into(),
        })?;
        let doc = self
            .document(&id)?
            .ok_or_else(|| StoreError::CorruptRecord {
                what: "checkpoint",
                detail: format!("document {id} missing"),
            })?;
        Ok(Some((doc.payload()?, doc)))
    }

    /// Ids of every held checkpoint document (kept by garbage collection).
    pub(crate) fn checkpoint_doc_ids(&self) -> Result<Vec<Hash>> {
        let mut out = Vec::new();
        for item in self.scan(CF_META, CHECKPOINT_PREFIX, None) {
            let (_, v) = item?;
            if let Some(h) = Hash::from_slice(&v) {
                out.push(h);
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Ecosystem, StoreOptions};

    fn store() -> (tempfile::TempDir, Store) {
        let d = tempfile::tempdir().unwrap();
        let s = Store::init(d.path(), StoreOptions::default()).unwrap();
        (d, s)
    }

    #[test]
    fn tokens_are_checked_by_hash_and_scoped() {
        let (_d, s) = store();
        let (secret, info) = s
            .token_create(
                vec!["replicate:pypi".parse().unwrap(), "read:*".parse().unwrap()],
                "spoke berlin",
            )
            .unwrap();
        let got = s.token_check(&secret).unwrap().unwrap();
        assert_eq!(got, info);
        assert!(
            got.may_replicate("pypi")
                && !got.may_replicate("npm")
                && !got.may_replicate(SYSTEM_FEED)
        );
        assert!(got.may_read("npm") && !got.may_publish("npm"));
        let mut wrong = secret.clone();
        wrong.pop();
        wrong.push('x');
        assert_eq!(s.token_check(&wrong).unwrap(), None);
        for bad in [
            "",
            "cairn_",
            "cairn_zz_yy",
            "nope",
            &secret[..secret.len() - 1],
        ] {
            assert_eq!(s.token_check(bad).unwrap(), None, "{bad}");
        }
        assert!(s.token_revoke(&info.id).unwrap());
        assert_eq!(s.token_check(&secret).unwrap(), None);
        let sys: Scope = "replicate:system".parse().unwrap();
        assert!(TokenInfo {
            id: String::new(),
            scopes: vec![sys],
            created_ms: 0,
            label: String::new()
        }
        .may_replicate(SYSTEM_FEED));
        for bad in ["replicate:", "write:x", "read:../x", "replicate"] {
            assert!(bad.parse::<Scope>().is_err(), "{bad}");
        }
    }

    #[test]
    fn peers_round_trip() {
        let (_d, s) = store();
        let p = Peer {
            name: "hub".into(),
            addr: "127.0.0.1:7443".into(),
            key: s.identity().public_key(),
        };
        s.peer_add(&p).unwrap();
        assert_eq!(s.peer("hub").unwrap(), Some(p.clone()));
        assert_eq!(s.peer_list().unwrap(), vec![p]);
        assert!(s
            .peer_add(&Peer {
                name: "../x".into(),
                addr: String::new(),
                key: s.identity().public_key()
            })
            .is_err());
        assert!(s.peer_remove("hub").unwrap());
        assert!(s.peer("hub").unwrap().is_none());
    }

    #[test]
    fn replication_log_is_capped_and_newest_first() {
        let (_d, s) = store();
        for i in 0..(REPLICATION_LOG_CAP + 5) {
            s.replication_log_append(ReplicationRecord {
                replication: format!("r{i}"),
                outcome: "ok".into(),
                ..Default::default()
            })
            .unwrap();
        }
        let log = s.replication_log(usize::MAX).unwrap();
        assert_eq!(log.len() as u64, REPLICATION_LOG_CAP);
        assert_eq!(log[0].replication, format!("r{}", REPLICATION_LOG_CAP + 4));
        assert_eq!(log.last().unwrap().replication, "r5");
    }

    #[test]
    fn checkpoints_verify_against_the_replica_and_refuse_rollback() {
        let (_d, hub) = store();
        let (_e, spoke) = store();
        spoke
            .trust_add("demo", &hub.identity().public_key())
            .unwrap();
        hub.create_feed("demo", Ecosystem::Raw).unwrap();
        spoke.create_feed("demo", Ecosystem::Raw).unwrap();
        let old = hub.sign_checkpoint("demo", 3600).unwrap();
        spoke.accept_checkpoint("demo", old.bytes()).unwrap();
        // Both publish the same (empty) state; now the hub moves on and the spoke does not:
        // the hub's new checkpoint does not match the spoke's root.
        let b = hub.put_blob(&b"x"[..]).unwrap();
        hub.publish(
            "demo",
            crate::NewPackage {
                name: "x".into(),
                version: "1".into(),
                files: vec![crate::NewFile {
                    name: "x".into(),
                    blob: b.hash,
                    size: 1,
                    digests: Default::default(),
                }],
                metadata: Default::default(),
            },
        )
        .unwrap();
        let new = hub.sign_checkpoint("demo", 3600).unwrap();
        assert!(matches!(
            spoke.accept_checkpoint("demo", new.bytes()),
            Err(StoreError::RemoteRejected { .. })
        ));
        // A checkpoint from a key not trusted for the feed.
        let (_f, other) = store();
        other.create_feed("demo", Ecosystem::Raw).unwrap();
        let foreign = other.sign_checkpoint("demo", 3600).unwrap();
        assert!(matches!(
            spoke.accept_checkpoint("demo", foreign.bytes()),
            Err(StoreError::Document(_))
        ));
        assert_eq!(spoke.checkpoint("demo").unwrap().unwrap().1, old);
    }

    #[test]
    fn an_older_checkpoint_is_a_rollback() {
        let (_d, hub) = store();
        let (_e, spoke) = store();
        spoke
            .trust_add("demo", &hub.identity().public_key())
            .unwrap();
        hub.create_feed("demo", Ecosystem::Raw).unwrap();
        spoke.create_feed("demo", Ecosystem::Raw).unwrap();
        let first = hub.sign_checkpoint("demo", 3600).unwrap();
        std::thread::sleep(std::time::Duration::from_millis(1100));
        let second = hub.sign_checkpoint("demo", 3600).unwrap();
        spoke.accept_checkpoint("demo", second.bytes()).unwrap();
        let err = spoke.accept_checkpoint("demo", first.bytes()).unwrap_err();
        assert!(err.to_string().contains("rollback"), "{err}");
    }
}
