//! Instance administration kept in the store: access tokens (stored hashed, compared in
//! constant time), known peers (address and pinned key), the replication log (capped), and
//! signed feed checkpoints (a replica keeps the newest and refuses a rollback).

use serde::{Deserialize, Serialize};

use crate::cbor;
use crate::doc::{Checkpoint, Covered, Filter, PublicKey, SignedDocument, PAYLOAD_VERSION};
use crate::merkle::{self, NodeSummary};
use crate::store::{now_ms, StoreError, CF_META};
use crate::{Hash, Store, SYSTEM_FEED};

type Result<T, E = StoreError> = std::result::Result<T, E>;

const TOKEN_PREFIX: &[u8] = b"token\0";
const PEER_PREFIX: &[u8] = b"peer\0";
const LOG_PREFIX: &[u8] = b"replog\0";
const CHECKPOINT_PREFIX: &[u8] = b"checkpoint\0";
const LOG_NEXT: &[u8] = b"replog-next";
const CURSOR_PREFIX: &[u8] = b"cursor\0";
const PEER_SEEN_PREFIX: &[u8] = b"peer-seen\0";
const UPSTREAM_CHECKPOINT_PREFIX: &[u8] = b"upstream-checkpoint\0";
const OWN_CHECKPOINT_PREFIX: &[u8] = b"own-checkpoint\0";
const COVERS_PREFIX: &[u8] = b"covers\0";
const OWN_FILTERED_PREFIX: &[u8] = b"own-filtered-checkpoint\0";

/// Most other writers one checkpoint names as covered.
pub const MAX_COVERED_WRITERS: usize = 64;

/// How long a checkpoint this instance signed is served again while its feed is unchanged,
/// unless configured otherwise.
pub const CHECKPOINT_REFRESH_SECS: u64 = 300;

/// How far in the future a checkpoint's signing time may be (clocks disagree a little).
pub const CHECKPOINT_CLOCK_SKEW_SECS: u64 = 300;

/// Replication log records kept; older ones are dropped.
pub const REPLICATION_LOG_CAP: u64 = 1000;

/// What a token may do.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, PartialOrd, Ord)]
pub enum Scope {
    /// Read a feed (`*` for all).
    Read(String),
    /// Publish to a feed (`*` for all).
    Publish(String),
    /// Replicate a feed from this instance (the holder pulls), `system` for the system set,
    /// `*` for everything.
    Replicate(String),
    /// Replicate a feed into this instance as well (the holder pushes or mirrors), `system`,
    /// `*`; implies [`Scope::Replicate`].
    ReplicateWrite(String),
    /// Everything.
    Admin,
}

impl std::fmt::Display for Scope {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Scope::Read(x) => write!(f, "read:{x}"),
            Scope::Publish(x) => write!(f, "publish:{x}"),
            Scope::Replicate(x) => write!(f, "replicate:{x}"),
            Scope::ReplicateWrite(x) => write!(f, "replicate-write:{x}"),
            Scope::Admin => f.write_str("admin"),
        }
    }
}

impl std::str::FromStr for Scope {
    type Err = String;
    fn from_str(s: &str) -> Result<Scope, String> {
        let bad = || {
            format!("invalid scope `{s}` (expected read:FEED, publish:FEED, replicate:FEED, replicate-write:FEED (FEED may be `system` or `*` for these two) or admin)")
        };
        if s == "admin" {
            return Ok(Scope::Admin);
        }
        let (kind, target) = s.split_once(':').ok_or_else(bad)?;
        let valid_target = target == "*"
            || (kind.starts_with("replicate") && target == "system")
            || crate::names::check_feed_name(target).is_ok();
        if !valid_target {
            return Err(bad());
        }
        match kind {
            "read" => Ok(Scope::Read(target.into())),
            "publish" => Ok(Scope::Publish(target.into())),
            "replicate" => Ok(Scope::Replicate(target.into())),
            "replicate-write" => Ok(Scope::ReplicateWrite(target.into())),
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
    /// Whether the token may replicate `feed` (`@system` for the system set) from this
    /// instance: pull.
    pub fn may_replicate(&self, feed: &str) -> bool {
        let covers = |t: &str| t == "*" || (feed == SYSTEM_FEED && t == "system") || t == feed;
        self.scopes.iter().any(|s| match s {
            Scope::Admin => true,
            Scope::Replicate(t) | Scope::ReplicateWrite(t) => covers(t),
            _ => false,
        })
    }

    /// Whether the token may also write `feed` on this instance by replication: push and
    /// mirror.
    pub fn may_replicate_write(&self, feed: &str) -> bool {
        let covers = |t: &str| t == "*" || (feed == SYSTEM_FEED && t == "system") || t == feed;
        self.scopes.iter().any(|s| match s {
            Scope::Admin => true,
            Scope::ReplicateWrite(t) => covers(t),
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

/// The newest checkpoint of a feed that came through one upstream.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct UpstreamCheckpoint {
    /// The replication's peer it came from.
    pub upstream: String,
    /// The feed.
    pub feed: String,
    /// When the writer signed it, Unix seconds.
    pub signed_secs: u64,
    /// When it expires, Unix seconds.
    pub expires_secs: u64,
    /// The change-log sequence number it covers.
    pub seq: u64,
    /// When it arrived here, Unix milliseconds.
    pub received_ms: u64,
}

/// The most valid checkpoints over different filters this instance signs per feed.
pub const MAX_FILTERED_CHECKPOINTS: usize = 256;

/// How long a checkpoint this instance signs stays valid unless configured otherwise.
pub const CHECKPOINT_TTL_SECS: u64 = 7 * 24 * 3600;

/// What [`Store::filtered_summary`] finds.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FilteredSummary {
    /// The root over the selected entries.
    pub root: NodeSummary,
    /// The non-empty level-1 nodes, by first byte of the key hash, in order.
    pub l1: Vec<(u8, NodeSummary)>,
}

/// A duration in seconds as a person says it: `45 s`, `12 min`, `3 h`, `2 d`.
pub fn duration_words(secs: u64) -> String {
    match secs {
        0..=119 => format!("{secs} s"),
        120..=7199 => format!("{} min", secs / 60),
        7200..=172_799 => format!("{} h", secs / 3600),
        _ => format!("{} d", secs / 86_400),
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
    /// UDP payload bytes sent: `bytes_sent` plus QUIC's headers, acknowledgements and
    /// retransmissions (0 in records older than the field).
    #[serde(default)]
    pub wire_bytes_sent: u64,
    /// Bytes of packets QUIC declared lost (their data was sent again).
    #[serde(default)]
    pub lost_bytes: u64,
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
    /// Why the run used `peer` rather than a preferred upstream (each one tried before it,
    /// and what went wrong), empty when it used the first.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub failover: String,
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

/// The meta record of this instance's last checkpoint of `feed`.
fn own_key(feed: &str) -> Vec<u8> {
    prefixed(OWN_CHECKPOINT_PREFIX, feed.as_bytes())
}

impl Store {
    // ---------------------------------------------------------------------------------------
    // Tokens

    /// Creates a token; the secret string is returned once and stored only as a hash.
    pub fn token_create(&self, scopes: Vec<Scope>, label: &str) -> Result<(String, TokenInfo)> {
        if scopes.is_empty() {
            return Err(StoreError::InvalidInput {
                what: "token",
                detail: "a token needs at least one scope".into(),
            });
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

    /// Signs this instance's current state of `feed`, valid for `ttl_secs`, and appends the
    /// checkpoint to this instance's transparency log (one write batch: the checkpoint, the
    /// log entry and the new signed tree head).
    pub fn sign_checkpoint(&self, feed: &str, ttl_secs: u64) -> Result<SignedDocument> {
        let _log = self.tlog.lock();
        self.sign_checkpoint_locked(feed, ttl_secs)
    }

    fn sign_checkpoint_locked(&self, feed: &str, ttl_secs: u64) -> Result<SignedDocument> {
        let state = self.state_to_sign(feed)?;
        self.own_checkpoint_of(own_key(feed), state, ttl_secs, None)
    }

    /// A checkpoint of this instance's current state of `feed`: the one it signed last while
    /// that still covers the state and is younger than `refresh_secs` (and than half of
    /// `ttl_secs`), else a new one. Every run and every auditor asks for one; signing each
    /// time would grow the transparency log with reads rather than with changes.
    pub fn own_checkpoint(
        &self,
        feed: &str,
        ttl_secs: u64,
        refresh_secs: u64,
    ) -> Result<SignedDocument> {
        let _log = self.tlog.lock();
        let state = self.state_to_sign(feed)?;
        self.own_checkpoint_of(own_key(feed), state, ttl_secs, Some(refresh_secs))
    }

    /// The current state of `feed` as a checkpoint says it, `time` and `expires` still 0.
    fn state_to_sign(&self, feed: &str) -> Result<Checkpoint> {
        let s = self.feed_summary(feed)?;
        Ok(Checkpoint {
            v: PAYLOAD_VERSION,
            feed: feed.into(),
            root: Hash::from_bytes(*s.root.fingerprint.as_bytes()),
            count: s.root.count,
            epoch: s.feed.epoch,
            seq: s.feed.seq,
            time: 0,
            expires: 0,
            covers: self.covered(feed)?,
            filter: None,
        })
    }

    /// This instance's checkpoint of `state` (whose `time` and `expires` are set here): with
    /// `refresh_secs`, the one stored under the meta record `key` while it says exactly
    /// `state` and is younger than `refresh_secs` (and than half of `ttl_secs`); else a new
    /// one, stored under `key` and appended to the transparency log in the same batch. The
    /// caller holds the log's lock.
    fn own_checkpoint_of(
        &self,
        key: Vec<u8>,
        state: Checkpoint,
        ttl_secs: u64,
        refresh_secs: Option<u64>,
    ) -> Result<SignedDocument> {
        let now = now_ms() / 1000;
        if let Some(refresh_secs) = refresh_secs {
            if let Some(bytes) = self.db.get_pinned_cf(self.cf(CF_META), &key)? {
                let doc = SignedDocument::decode(&bytes)?;
                let cp: Checkpoint = doc.payload()?;
                let fresh = now < cp.time + refresh_secs.min(ttl_secs / 2)
                    && cp.expires == cp.time + ttl_secs;
                let same = cp
                    == Checkpoint {
                        time: cp.time,
                        expires: cp.expires,
                        ..state.clone()
                    };
                if fresh && same && doc.signer() == self.identity().public_key() {
                    return Ok(doc);
                }
            }
        }
        let advice = if state.filter.is_some() {
            "use fewer or shorter filter patterns"
        } else {
            "name a shorter feed"
        };
        let cp = Checkpoint {
            time: now,
            expires: now + ttl_secs,
            ..state
        };
        let doc = SignedDocument::sign(&cp, self.identity().signing_key())
            .map_err(StoreError::signing("checkpoint".into(), advice))?;
        let mut batch = rocksdb::WriteBatch::default();
        batch.put_cf(self.cf(CF_META), key, doc.bytes());
        self.log_append(&mut batch, &doc)?;
        self.db.write(batch)?;
        Ok(doc)
    }

    /// The writer's checkpoint this replica holds for `feed`, when it is over `filter` (none:
    /// the whole feed) and says exactly `root`: what a replica passes on unchanged.
    fn held_writer_checkpoint(
        &self,
        feed: &str,
        filter: Option<&Filter>,
        root: &NodeSummary,
    ) -> Result<Option<SignedDocument>> {
        Ok(self.checkpoint(feed)?.and_then(|(held, doc)| {
            (doc.signer() != self.identity().public_key()
                && held.filter.as_ref() == filter
                && held.root.as_bytes() == root.fingerprint.as_bytes()
                && held.count == root.count)
                .then_some(doc)
        }))
    }

    /// Checks an upstream checkpoint for `feed` before applying anything: signed by a key
    /// trusted for the feed, for this feed, signed no later than a few minutes from `now_secs`,
    /// not expired, and not older than the one held. From the writer of the one held, a lower
    /// sequence number in the same change-log epoch, or an earlier signing time, is a
    /// rollback. From another writer, when this replica would become a copy of its state
    /// (`replace`: a pull or a push), it must cover the one held (see [`Checkpoint::covers`]):
    /// otherwise taking it would undo what the first writer made since the two last mirrored.
    /// That holds until the writers mirror, or until the held checkpoint expires or its
    /// signer is no longer trusted. A checkpoint of exactly the state held (same epoch,
    /// sequence number and root) is not a rollback even if it was signed earlier (two relays
    /// may pass on two signings of one state).
    pub fn check_checkpoint(
        &self,
        feed: &str,
        bytes: &[u8],
        now_secs: u64,
        replace: bool,
    ) -> Result<Checkpoint> {
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
        if cp.time > now_secs.saturating_add(CHECKPOINT_CLOCK_SKEW_SECS) {
            return Err(reject(format!(
                "checkpoint was signed {} s in the future; check the clocks of both sites",
                cp.time - now_secs
            )));
        }
        if let Some((held, held_doc)) = self.checkpoint(feed)? {
            let same_state = cp.epoch == held.epoch && cp.seq == held.seq && cp.root == held.root;
            let (signer, held_signer) = (doc.signer(), held_doc.signer());
            if replace && signer != held_signer {
                let covered = cp.covers.iter().any(|c| {
                    c.key == *held_signer.as_bytes() && c.epoch == held.epoch && c.seq >= held.seq
                });
                if !same_state
                    && !covered
                    && held.expires > now_secs
                    && self.is_trusted(feed, &held_signer)?
                {
                    return Err(reject(format!(
                        "the state writer {} signed (at {}) does not include the one writer {} signed here (epoch {:016x}, seq {}, at {}): taking it would undo what {} made since the two last mirrored; keeping the state held until they mirror or that checkpoint expires (at {})",
                        signer.short(),
                        cp.time,
                        held_signer.short(),
                        held.epoch,
                        held.seq,
                        held.time,
                        held_signer.short(),
                        held.expires
                    )));
                }
            } else if !same_state
                && ((cp.epoch == held.epoch && cp.seq < held.seq) || cp.time < held.time)
            {
                return Err(reject(format!(
                    "checkpoint (epoch {:016x}, seq {}, signed at {}) is older than the one held (epoch {:016x}, seq {}, signed at {}): refusing a rollback",
                    cp.epoch, cp.seq, cp.time, held.epoch, held.seq, held.time
                )));
            }
        }
        if cp.expires <= now_secs {
            return Err(reject(format!(
                "checkpoint expired {} s ago (signed at {}): the upstream has not heard from the feed's writer since; refusing stale data",
                now_secs - cp.expires,
                cp.time
            )));
        }
        Ok(cp)
    }

    /// Accepts an upstream checkpoint for `feed`: everything [`Store::check_checkpoint`]
    /// checks, and it must match this replica's recomputed root and count. It is kept unless
    /// the one held is a later signing of the same state.
    pub fn accept_checkpoint(&self, feed: &str, bytes: &[u8], now_secs: u64) -> Result<Checkpoint> {
        let cp = self.check_checkpoint(feed, bytes, now_secs, true)?;
        let doc = SignedDocument::decode(bytes)?;
        let root = match &cp.filter {
            Some(filter) => self.filtered_summary(feed, filter)?.root,
            None => self.feed_summary(feed)?.root,
        };
        if cp.root.as_bytes() != root.fingerprint.as_bytes() || cp.count != root.count {
            return Err(StoreError::RemoteRejected {
                feed: feed.into(),
                doc: doc.id(),
                reason: "checkpoint root does not match this replica's recomputed root".into(),
            });
        }
        if let Some((held, _)) = self.checkpoint(feed)? {
            let same_state = held.epoch == cp.epoch && held.seq == cp.seq && held.root == cp.root;
            if same_state && held.time >= cp.time {
                return Ok(cp);
            }
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
        self.bump_changes();
        Ok(cp)
    }

    /// Writes a checkpoint of `feed` that was checked and matches the state `txn` leaves into
    /// `txn` (see [`Store::accept_checkpoint`]), unless the one held is a later signing of the
    /// same state.
    pub(crate) fn stage_checkpoint(
        &self,
        txn: &mut crate::store::Txn,
        feed: &str,
        cp: &Checkpoint,
        doc: &SignedDocument,
    ) -> Result<()> {
        if let Some((held, _)) = self.checkpoint(feed)? {
            let same_state = held.epoch == cp.epoch && held.seq == cp.seq && held.root == cp.root;
            if same_state && held.time >= cp.time {
                return Ok(());
            }
        }
        txn.put_doc(doc);
        txn.meta_put(
            prefixed(CHECKPOINT_PREFIX, feed.as_bytes()),
            doc.id().as_bytes().to_vec(),
        );
        Ok(())
    }

    /// The summary of the entries of `feed` that `filter` selects: the root and the non-empty
    /// level-1 nodes (by the first byte of the key hash), in order. It reads every entry of
    /// the feed, one level-1 bucket at a time.
    pub fn filtered_summary(&self, feed: &str, filter: &Filter) -> Result<FilteredSummary> {
        let f = self.feed(feed)?;
        if f.ecosystem().is_none() {
            return Err(StoreError::InvalidInput {
                what: "filter",
                detail: format!("feed `{feed}` is the system set, which is replicated whole"),
            });
        }
        let mut out = FilteredSummary {
            root: NodeSummary::default(),
            l1: Vec::new(),
        };
        let matcher = filter.matcher();
        for b in 0..=255u8 {
            let mut node = NodeSummary::default();
            for (_, e) in self.entries_under(feed, &[b])? {
                if matcher.selects(&e.key) {
                    node.insert(&merkle::leaf(&e.key, &e.value.doc));
                }
            }
            if node.count > 0 {
                out.root.fingerprint = out.root.fingerprint.add(&node.fingerprint);
                out.root.count += node.count;
                out.l1.push((b, node));
            }
        }
        Ok(out)
    }

    /// The checkpoint to give a peer that pulls the entries of `feed` that `filter` selects:
    /// the one held from the feed's writer over exactly this filter when it matches this
    /// instance's filtered state (passed on unchanged), else this instance's own over the
    /// filtered state, reused while that stands still as [`Store::own_checkpoint`] does.
    pub fn filtered_checkpoint_to_serve(
        &self,
        feed: &str,
        filter: &Filter,
        ttl_secs: u64,
        refresh_secs: u64,
    ) -> Result<Vec<u8>> {
        // The summary and the cursor of one state: read again while a write moved the feed.
        let mut tries = 0;
        let (sum, f) = loop {
            let before = self.feed(feed)?;
            let sum = self.filtered_summary(feed, filter)?;
            let f = self.feed(feed)?;
            if (f.epoch, f.seq) == (before.epoch, before.seq) {
                break (sum, f);
            }
            tries += 1;
            if tries >= 8 {
                return Err(StoreError::InvalidInput {
                    what: "filter",
                    detail: format!(
                        "feed `{feed}` kept changing while its filtered state was read"
                    ),
                });
            }
        };
        if let Some(doc) = self.held_writer_checkpoint(feed, Some(filter), &sum.root)? {
            return Ok(doc.bytes().to_vec());
        }
        let _log = self.tlog.lock();
        let key = [
            OWN_FILTERED_PREFIX,
            feed.as_bytes(),
            b"\0",
            filter.digest().as_bytes(),
        ]
        .concat();
        if self.db.get_pinned_cf(self.cf(CF_META), &key)?.is_none() {
            self.bound_filtered_checkpoints(feed, now_ms() / 1000)?;
        }
        let state = Checkpoint {
            v: PAYLOAD_VERSION,
            feed: feed.into(),
            root: Hash::from_bytes(*sum.root.fingerprint.as_bytes()),
            count: sum.root.count,
            epoch: f.epoch,
            seq: f.seq,
            time: 0,
            expires: 0,
            covers: Vec::new(),
            filter: Some(filter.clone()),
        };
        Ok(self
            .own_checkpoint_of(key, state, ttl_secs, Some(refresh_secs))?
            .bytes()
            .to_vec())
    }

    /// The checkpoint to give a peer that pulls `feed` from here. A replica passes on,
    /// unchanged, the writer's checkpoint it holds when that covers exactly its current state:
    /// downstream sites check the writer's signature end to end and never need to trust this
    /// instance. Otherwise (this instance writes the feed, or its copy is between two
    /// checkpoints) it signs its own, valid for `ttl_secs`, which a peer accepts only if it
    /// trusts this instance for the feed.
    pub fn checkpoint_to_serve(
        &self,
        feed: &str,
        ttl_secs: u64,
        refresh_secs: u64,
    ) -> Result<Vec<u8>> {
        let root = self.feed_summary(feed)?.root;
        if let Some(doc) = self.held_writer_checkpoint(feed, None, &root)? {
            return Ok(doc.bytes().to_vec());
        }
        Ok(self
            .own_checkpoint(feed, ttl_secs, refresh_secs)?
            .bytes()
            .to_vec())
    }

    /// Before a checkpoint over a filter not seen before is signed for `feed`: forgets the
    /// expired ones, and refuses when [`MAX_FILTERED_CHECKPOINTS`] are still valid, so a
    /// peer that asks for ever new filters cannot grow the transparency log by one entry per
    /// request.
    fn bound_filtered_checkpoints(&self, feed: &str, now: u64) -> Result<()> {
        let prefix = [OWN_FILTERED_PREFIX, feed.as_bytes(), b"\0"].concat();
        let mut live = 0usize;
        let mut batch = rocksdb::WriteBatch::default();
        for item in self.scan(CF_META, &prefix, None) {
            let (k, v) = item?;
            let expired =
                SignedDocument::peek_payload::<Checkpoint>(&v).map_or(true, |cp| cp.expires <= now);
            if expired {
                batch.delete_cf(self.cf(CF_META), k);
            } else {
                live += 1;
            }
        }
        self.db.write(batch)?;
        if live >= MAX_FILTERED_CHECKPOINTS {
            return Err(StoreError::InvalidInput {
                what: "filter",
                detail: format!(
                    "this instance already holds {live} valid checkpoints over different filters of feed `{feed}`, the most it signs; use a filter another site uses, or wait until some expire"
                ),
            });
        }
        Ok(())
    }

    /// The checkpoint an auditor is given for `feed`: as [`Store::checkpoint_to_serve`], except
    /// that a filtered replica whose selected entries are exactly what the writer's filtered
    /// checkpoint signs passes that one on (the auditor then checks the filtered set).
    pub fn checkpoint_to_audit(
        &self,
        feed: &str,
        ttl_secs: u64,
        refresh_secs: u64,
    ) -> Result<Vec<u8>> {
        if let Some(filter) = self.checkpoint(feed)?.and_then(|(held, _)| held.filter) {
            let root = self.filtered_summary(feed, &filter)?.root;
            if let Some(doc) = self.held_writer_checkpoint(feed, Some(&filter), &root)? {
                return Ok(doc.bytes().to_vec());
            }
        }
        self.checkpoint_to_serve(feed, ttl_secs, refresh_secs)
    }

    /// The root of `feed` a downstream pulling now would take with a checkpoint from its
    /// writer: the current root, unless this instance replicates the feed from upstream and
    /// its copy is between two of the writer's checkpoints (then `None`: a downstream told to
    /// pull now would be handed this instance's own signature, which it need not trust).
    pub fn servable_root(&self, feed: &str) -> Result<Option<[u8; 32]>> {
        let s = self.feed_summary(feed)?;
        let root = *s.root.fingerprint.as_bytes();
        if let Some((held, doc)) = self.checkpoint(feed)? {
            if doc.signer() != self.identity().public_key()
                && (held.filter.is_some()
                    || held.root.as_bytes() != &root
                    || held.count != s.root.count)
            {
                return Ok(None);
            }
        }
        Ok(Some(root))
    }

    /// Records that a checkpoint of `feed` came through `upstream` (a replication's peer), for
    /// the freshness figures of `/metrics` and the status API.
    pub fn record_upstream_checkpoint(
        &self,
        upstream: &str,
        feed: &str,
        cp: &Checkpoint,
    ) -> Result<()> {
        let key = [
            UPSTREAM_CHECKPOINT_PREFIX,
            upstream.as_bytes(),
            b"\0",
            feed.as_bytes(),
        ]
        .concat();
        let seen = UpstreamCheckpoint {
            upstream: upstream.into(),
            feed: feed.into(),
            signed_secs: cp.time,
            expires_secs: cp.expires,
            seq: cp.seq,
            received_ms: now_ms(),
        };
        let bytes = cbor::to_canonical(&seen).map_err(meta_err("upstream checkpoint"))?;
        self.db.put_cf(self.cf(CF_META), key, bytes)?;
        Ok(())
    }

    /// The newest checkpoint seen per upstream and feed.
    pub fn upstream_checkpoints(&self) -> Result<Vec<UpstreamCheckpoint>> {
        let mut out = Vec::new();
        for item in self.scan(CF_META, UPSTREAM_CHECKPOINT_PREFIX, None) {
            let (_, v) = item?;
            out.push(cbor::from_canonical(&v, 1 << 12).map_err(meta_err("upstream checkpoint"))?);
        }
        Ok(out)
    }

    /// The highest clock this instance knows a mirror peer (by key) to have held of `feed`:
    /// the local clock at the end of the last run in which the two converged. A peer's
    /// `collected` clock is never taken above it.
    pub fn peer_seen_hlc(&self, peer: &PublicKey, feed: &str) -> Result<u64> {
        let key = [PEER_SEEN_PREFIX, peer.as_bytes(), feed.as_bytes()].concat();
        Ok(match self.db.get_pinned_cf(self.cf(CF_META), key)? {
            Some(b) => u64::from_be_bytes(b.as_ref().try_into().map_err(|_| {
                StoreError::CorruptRecord {
                    what: "peer clock",
                    detail: format!("{} bytes", b.len()),
                }
            })?),
            None => 0,
        })
    }

    /// Raises [`Store::peer_seen_hlc`] to `hlc`.
    pub fn raise_peer_seen_hlc(&self, peer: &PublicKey, feed: &str, hlc: u64) -> Result<()> {
        if self.peer_seen_hlc(peer, feed)? >= hlc {
            return Ok(());
        }
        let key = [PEER_SEEN_PREFIX, peer.as_bytes(), feed.as_bytes()].concat();
        self.db.put_cf(self.cf(CF_META), key, hlc.to_be_bytes())?;
        Ok(())
    }

    /// The other writers' states this instance's state of `feed` includes (see
    /// [`Checkpoint::covers`]), sorted by key.
    pub fn covered(&self, feed: &str) -> Result<Vec<Covered>> {
        match self
            .db
            .get_pinned_cf(self.cf(CF_META), prefixed(COVERS_PREFIX, feed.as_bytes()))?
        {
            Some(b) => cbor::from_canonical(&b, 1 << 16).map_err(meta_err("covered writers")),
            None => Ok(Vec::new()),
        }
    }

    /// Records that this instance's state of `feed` now includes the state a checkpoint
    /// (already checked) attests, and every state that one covers: called when a mirror with
    /// its signer converged. Its own key, keys not trusted for the feed, and writers beyond
    /// [`MAX_COVERED_WRITERS`] are left out; a writer's cursor only moves forward within an
    /// epoch, and a new epoch replaces the old one only when seen directly.
    pub fn record_covered(&self, feed: &str, checkpoint: &[u8]) -> Result<()> {
        let doc = SignedDocument::decode(checkpoint)?;
        let cp: Checkpoint = doc.payload()?;
        let me = *self.identity().public_key().as_bytes();
        let mut covers = self.covered(feed)?;
        let before = covers.clone();
        let direct = Covered {
            key: *doc.signer().as_bytes(),
            epoch: cp.epoch,
            seq: cp.seq,
        };
        let seen = std::iter::once((direct, true)).chain(cp.covers.iter().map(|c| (*c, false)));
        for (c, direct) in seen {
            let trusted = match PublicKey::from_bytes(c.key) {
                Some(k) => self.is_trusted(feed, &k)?,
                None => false,
            };
            if c.key == me || !trusted {
                continue;
            }
            let full = covers.len() >= MAX_COVERED_WRITERS;
            match covers.iter_mut().find(|h| h.key == c.key) {
                Some(h) if h.epoch == c.epoch => h.seq = h.seq.max(c.seq),
                Some(h) if direct => *h = c,
                Some(_) => {}
                None if !full => covers.push(c),
                None => {}
            }
        }
        covers.sort();
        if covers == before {
            return Ok(());
        }
        let bytes = cbor::to_canonical(&covers).map_err(meta_err("covered writers"))?;
        self.db.put_cf(
            self.cf(CF_META),
            prefixed(COVERS_PREFIX, feed.as_bytes()),
            bytes,
        )?;
        Ok(())
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

    fn now() -> u64 {
        now_ms() / 1000
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
        spoke.accept_checkpoint("demo", old.bytes(), now()).unwrap();
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
            spoke.accept_checkpoint("demo", new.bytes(), now()),
            Err(StoreError::RemoteRejected { .. })
        ));
        // A checkpoint from a key not trusted for the feed.
        let (_f, other) = store();
        other.create_feed("demo", Ecosystem::Raw).unwrap();
        let foreign = other.sign_checkpoint("demo", 3600).unwrap();
        assert!(matches!(
            spoke.accept_checkpoint("demo", foreign.bytes(), now()),
            Err(StoreError::Document(_))
        ));
        assert_eq!(spoke.checkpoint("demo").unwrap().unwrap().1, old);
    }

    /// Freshness and rollback, on checkpoints signed with chosen fields against one held
    /// checkpoint (epoch 7, seq 10, signed at T, root of the empty feed).
    #[test]
    fn stale_expired_future_and_rolled_back_checkpoints_are_refused() {
        let (_d, hub) = store();
        let (_e, spoke) = store();
        spoke
            .trust_add("demo", &hub.identity().public_key())
            .unwrap();
        spoke.create_feed("demo", Ecosystem::Raw).unwrap();
        let t = now();
        let root = spoke.feed_summary("demo").unwrap().root;
        let cp = |epoch: u64, seq: u64, time: u64, expires: u64| Checkpoint {
            v: PAYLOAD_VERSION,
            feed: "demo".into(),
            root: Hash::from_bytes(*root.fingerprint.as_bytes()),
            count: root.count,
            epoch,
            seq,
            time,
            expires,
            covers: Vec::new(),
            filter: None,
        };
        let sign = |c: &Checkpoint| {
            SignedDocument::sign(c, hub.identity().signing_key())
                .unwrap()
                .bytes()
                .to_vec()
        };
        spoke
            .accept_checkpoint("demo", &sign(&cp(7, 10, t - 100, t + 3600)), t)
            .unwrap();
        let check = |c: Checkpoint, expect: Option<&str>| {
            let got = spoke.check_checkpoint("demo", &sign(&c), t, true);
            match (got, expect) {
                (Ok(_), None) => {}
                (Err(e), Some(part)) => assert!(e.to_string().contains(part), "{c:?}: {e}"),
                (got, _) => panic!("{c:?}: expected {expect:?}, got {got:?}"),
            }
        };
        check(cp(7, 11, t - 50, t + 3600), None);
        check(cp(7, 10, t - 200, t + 3600), None); // the same state, signed earlier
        check(cp(7, 9, t - 50, t + 3600), Some("rollback"));
        check(cp(8, 500, t - 150, t + 3600), Some("rollback")); // another epoch, signed earlier
        check(cp(8, 1, t - 50, t + 3600), None); // another epoch, signed later
        check(cp(7, 11, t - 50, t - 1), Some("expired"));
        check(cp(7, 11, t + 3600, t + 7200), Some("future"));
        // The held checkpoint stays the newest of one state.
        spoke
            .accept_checkpoint("demo", &sign(&cp(7, 10, t - 200, t + 3600)), t)
            .unwrap();
        assert_eq!(spoke.checkpoint("demo").unwrap().unwrap().0.time, t - 100);
    }

    /// Two writers of one feed: a replica holding the first's checkpoint takes the second's
    /// state only once the second has mirrored what the first had signed (its checkpoint
    /// covers the one held), or once the held checkpoint expired or its signer is no longer
    /// trusted; a mirror's check does not ask for it.
    #[test]
    fn another_writers_checkpoint_must_cover_the_one_held() {
        let (_d, hub1) = store();
        let (_e, hub2) = store();
        let (_f, spoke) = store();
        let keys = [hub1.identity().public_key(), hub2.identity().public_key()];
        for s in [&hub1, &hub2, &spoke] {
            s.create_feed("demo", Ecosystem::Raw).unwrap();
            for k in &keys {
                s.trust_add("demo", k).unwrap();
            }
        }
        let t = now();
        let root = spoke.feed_summary("demo").unwrap().root;
        let held = SignedDocument::sign(
            &Checkpoint {
                v: PAYLOAD_VERSION,
                feed: "demo".into(),
                root: Hash::from_bytes(*root.fingerprint.as_bytes()),
                count: root.count,
                epoch: 7,
                seq: 10,
                time: t - 100,
                expires: t + 3600,
                covers: Vec::new(),
                filter: None,
            },
            hub1.identity().signing_key(),
        )
        .unwrap();
        spoke.accept_checkpoint("demo", held.bytes(), t).unwrap();
        let held_cp: Checkpoint = held.payload().unwrap();
        assert!(held_cp.seq > 0);
        // hub2 has not mirrored with hub1: its checkpoint (of another state: it signs at a
        // later time, so the time rule alone would take it) is refused.
        let sign2 = |covers: Vec<Covered>, time: u64, expires: u64| {
            let mut cp: Checkpoint = hub2
                .sign_checkpoint("demo", 3600)
                .unwrap()
                .payload()
                .unwrap();
            cp.root = Hash::from_bytes([9; 32]);
            (cp.covers, cp.time, cp.expires) = (covers, time, expires);
            SignedDocument::sign(&cp, hub2.identity().signing_key())
                .unwrap()
                .bytes()
                .to_vec()
        };
        let err = spoke
            .check_checkpoint("demo", &sign2(Vec::new(), t + 5, t + 3600), t + 10, true)
            .unwrap_err()
            .to_string();
        assert!(err.contains("does not include"), "{err}");
        // A mirror takes it (it merges; nothing of the first writer's is undone).
        spoke
            .check_checkpoint("demo", &sign2(Vec::new(), t + 5, t + 3600), t + 10, false)
            .unwrap();
        let covering = |seq: u64, epoch: u64| Covered {
            key: *keys[0].as_bytes(),
            epoch,
            seq,
        };
        // Covering an earlier cursor of hub1, or another epoch, is not enough.
        for c in [
            covering(held_cp.seq.wrapping_sub(1), held_cp.epoch),
            covering(held_cp.seq, held_cp.epoch ^ 1),
        ] {
            let got =
                spoke.check_checkpoint("demo", &sign2(vec![c], t + 5, t + 3600), t + 10, true);
            assert!(got.is_err(), "{c:?}");
        }
        // Covering the held cursor (or a later one) is, even if signed before the held one.
        for seq in [held_cp.seq, held_cp.seq + 3] {
            spoke
                .check_checkpoint(
                    "demo",
                    &sign2(vec![covering(seq, held_cp.epoch)], t - 50, t + 3600),
                    t + 10,
                    true,
                )
                .unwrap();
        }
        // Once the held checkpoint expired, or hub1 is no longer trusted, hub2's is taken.
        spoke
            .check_checkpoint(
                "demo",
                &sign2(Vec::new(), t + 3700, t + 9000),
                t + 3700,
                true,
            )
            .unwrap();
        spoke.trust_remove("demo", &keys[0]).unwrap();
        spoke
            .check_checkpoint("demo", &sign2(Vec::new(), t + 5, t + 3600), t + 10, true)
            .unwrap();

        // record_covered: a mirror that converged with hub1 records hub1's cursor and
        // what hub1 covers (never its own key); the next checkpoint hub2 signs carries it.
        hub2.record_covered("demo", held.bytes()).unwrap();
        assert_eq!(
            hub2.covered("demo").unwrap(),
            vec![covering(held_cp.seq, held_cp.epoch)]
        );
        let again: Checkpoint = hub2
            .own_checkpoint("demo", 3600, 300)
            .unwrap()
            .payload()
            .unwrap();
        assert_eq!(again.covers, vec![covering(held_cp.seq, held_cp.epoch)]);
        let back: Checkpoint = {
            hub1.record_covered(
                "demo",
                hub2.own_checkpoint("demo", 3600, 300).unwrap().bytes(),
            )
            .unwrap();
            hub1.own_checkpoint("demo", 3600, 300)
                .unwrap()
                .payload()
                .unwrap()
        };
        assert_eq!(
            back.covers.len(),
            1,
            "hub1 covers hub2, not itself: {back:?}"
        );
        assert_eq!(back.covers[0].key, *keys[1].as_bytes());
        // A cursor only moves forward within an epoch.
        let mut older = held_cp.clone();
        older.seq = 0;
        older.covers = Vec::new();
        let older = SignedDocument::sign(&older, hub1.identity().signing_key()).unwrap();
        hub2.record_covered("demo", older.bytes()).unwrap();
        assert_eq!(hub2.covered("demo").unwrap()[0].seq, held_cp.seq);
    }

    #[test]
    fn filtered_checkpoints_are_over_the_selected_entries_reused_and_bounded_per_feed() {
        let (_d, s) = store();
        s.create_feed("demo", Ecosystem::Raw).unwrap();
        for name in ["cairn-a", "cairn-b", "other"] {
            let blob = s.put_blob(name.as_bytes()).unwrap();
            s.publish(
                "demo",
                crate::NewPackage {
                    name: name.into(),
                    version: "1".into(),
                    files: vec![crate::NewFile {
                        name: "f".into(),
                        blob: blob.hash,
                        size: blob.size,
                        digests: Default::default(),
                    }],
                    metadata: Default::default(),
                },
            )
            .unwrap();
        }
        let filter = |p: &str| Filter {
            include: vec![p.into()],
            exclude: vec![],
        };
        let f = filter("cairn-*");
        let bytes = s
            .filtered_checkpoint_to_serve("demo", &f, 3600, 300)
            .unwrap();
        let cp: Checkpoint = SignedDocument::decode(&bytes).unwrap().payload().unwrap();
        assert_eq!(cp.filter.as_ref(), Some(&f));
        assert_eq!(cp.count, 2);
        assert_eq!(
            cp.root.as_bytes(),
            s.filtered_summary("demo", &f)
                .unwrap()
                .root
                .fingerprint
                .as_bytes()
        );
        // Asked again while nothing changed: the same signature.
        assert_eq!(
            s.filtered_checkpoint_to_serve("demo", &f, 3600, 300)
                .unwrap(),
            bytes
        );
        // Ever new filters: at most MAX_FILTERED_CHECKPOINTS valid ones per feed.
        for i in 1..MAX_FILTERED_CHECKPOINTS {
            s.filtered_checkpoint_to_serve("demo", &filter(&format!("x{i}")), 3600, 300)
                .unwrap();
        }
        let e = s
            .filtered_checkpoint_to_serve("demo", &filter("one-more"), 3600, 300)
            .unwrap_err()
            .to_string();
        assert!(e.contains("the most it signs"), "{e}");
        // A filter already held is still served.
        assert!(s
            .filtered_checkpoint_to_serve("demo", &f, 3600, 300)
            .is_ok());
        // The system set is never filtered.
        assert!(s.filtered_summary(SYSTEM_FEED, &f).is_err());
    }
}
