//! The sans-IO core of `cairn/sync/1`: one [`Session`] per side of a connection.
//!
//! A session is fed frames with [`Session::handle`] and yields frames with
//! [`Session::poll_transmit`]; it owns no socket, reads no clock and draws no randomness (the
//! sketch seed is derived from the feed's roots). It reads and writes the store directly,
//! synchronously, which keeps every decision in one place and testable with a simulated pair.
//!
//! Per feed, the exchange is (see `wire-spec/README.md` for the normative text):
//! 1. HELLO carries the initiator's root, count and, for pulls, the responder's cursor from
//!    the last run. Equal roots end the feed here: one round trip.
//! 2. The reply carries either the responder's change-log suffix (pull with a known cursor) or
//!    its level-1 summary: 256 records of count and 8 bytes of fingerprint.
//! 3. The initiator sends an IBLT sketch of its entries in the mismatched buckets, sized from
//!    the number of mismatched buckets (or, when that is cheaper, the plain item list).
//! 4. The responder subtracts its own sketch and peels it, learning exactly which keys differ
//!    on each side, and answers with documents, removals and wants according to the mode.
//! 5. Whoever receives documents asks for the blob ranges it lacks, verifies every piece as it
//!    arrives, and applies the documents once their blobs are stored. Then it says DONE.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};

use cairn_store::doc::Manifest;
use cairn_store::merkle;
use cairn_store::replica::{
    group_count, Applied, ApplyRule, IncomingBlob, PieceWriter, PieceWritten,
};
use cairn_store::{ChangesSince, Cursor, EntryKind, Hash, SignedDocument, Store, StoreError};
use serde_bytes::ByteBuf;

use crate::iblt::{self, Cell, Iblt, Item};
use crate::wire::{
    self, code, BlobRequest, FeedHello, FeedStatus, Frame, Mode, SmallBlob, WireChange, WireCursor,
    CELL_BYTES, L1_RECORD,
};

/// Most changes sent as a log suffix; beyond this the summary path is cheaper to reason about.
pub const MAX_LOG_CHANGES: usize = 4096;
/// Chunk groups per blob piece (1 MiB).
pub const PIECE_GROUPS: u64 = 64;
/// Largest batch of documents in one frame.
pub const DOC_BATCH_BYTES: usize = 1 << 20;
/// Sketch retries before falling back to the item list.
pub const MAX_SKETCH_RETRIES: u32 = 2;
/// How long a checkpoint signed for a run stays valid.
pub const CHECKPOINT_TTL_SECS: u64 = 7 * 24 * 3600;

/// Which end of the connection this session is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// Dials and drives the run.
    Initiator,
    /// Answers.
    Responder,
}

/// Stops a pull that would delete too much.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct GuardRail {
    /// Largest share of local entries a run may delete (0.0 to 1.0).
    pub max_delete_share: f64,
    /// Let the run delete more than that.
    pub allow: bool,
}

impl Default for GuardRail {
    fn default() -> GuardRail {
        GuardRail {
            max_delete_share: 0.5,
            allow: false,
        }
    }
}

/// How the initiator wants to run.
#[derive(Clone, Debug)]
pub struct InitiatorConfig {
    /// Token presented in HELLO.
    pub token: String,
    /// Direction of content.
    pub mode: Mode,
    /// Feeds to replicate (`@system` for the system set).
    pub feeds: Vec<String>,
    /// The responder's cursor per feed from the last completed pull.
    pub since: HashMap<String, Cursor>,
    /// Deletion guard rail for what this side receives.
    pub guard: GuardRail,
    /// Plan only: report adds, deletes and bytes, change nothing.
    pub dry_run: bool,
}

/// Decides what a token may do on the responder.
pub trait Authorizer {
    /// `Ok` if `token` may replicate `feed` in `mode`; otherwise an error code and reason.
    fn authorize(&self, token: &str, feed: &str, mode: Mode) -> Result<(), (u32, String)>;
    /// The guard rail for what the responder receives (push and mirror).
    fn guard(&self) -> GuardRail {
        GuardRail::default()
    }
}

/// How a feed was reconciled.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Path {
    /// Not decided yet.
    #[default]
    Pending,
    /// Roots were equal.
    Equal,
    /// Change-log suffix.
    Log,
    /// IBLT sketch.
    Sketch,
    /// Full item list of the mismatched buckets.
    List,
}

/// What happened to one feed in a run.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct FeedReport {
    /// Feed name.
    pub feed: String,
    /// How it was reconciled.
    pub path: Path,
    /// Documents received and applied (inserted or replaced).
    pub docs_applied: u64,
    /// Documents received that lost to what was held (mirror).
    pub docs_superseded: u64,
    /// Documents sent.
    pub docs_sent: u64,
    /// Entries this side deleted (tombstones received over live entries, and removals).
    pub deletions: u64,
    /// Blobs received and stored.
    pub blobs_received: u64,
    /// Blob bytes received (payload).
    pub blob_bytes_received: u64,
    /// Blobs not transferred because the blob backend already held them (a bucket shared with
    /// another instance).
    pub blobs_adopted: u64,
    /// Bytes of those blobs.
    pub blob_bytes_adopted: u64,
    /// Sketch cells sent or received.
    pub sketch_cells: u64,
    /// Root and count at the end, here and at the peer.
    pub local_root: Option<([u8; 32], u64)>,
    /// The peer's final root and count.
    pub peer_root: Option<([u8; 32], u64)>,
    /// The responder's cursor to remember for the next pull.
    pub peer_cursor: Option<Cursor>,
    /// Dry run: entries that would be added or replaced.
    pub plan_adds: u64,
    /// Dry run: entries that would be deleted.
    pub plan_deletes: u64,
    /// Dry run: blob bytes that would be fetched.
    pub plan_bytes: u64,
    /// Why the feed failed, if it did.
    pub error: Option<String>,
}

impl FeedReport {
    /// Whether both sides ended on the same root.
    pub fn converged(&self) -> bool {
        self.error.is_none() && self.local_root.is_some() && self.local_root == self.peer_root
    }
}

/// Why a session failed as a whole.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SessionError {
    /// The peer said so.
    #[error("peer error {code}: {reason}")]
    Peer { code: u32, reason: String },
    /// The peer broke the protocol.
    #[error("protocol violation: {0}")]
    Protocol(String),
    /// Local store failure.
    #[error("local store: {0}")]
    Store(String),
    /// The peer sent data that failed verification.
    #[error("peer sent bad data: {0}")]
    BadData(String),
}

/// Totals over a session.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SessionStats {
    /// Blob pieces sent.
    pub pieces_sent: u64,
    /// Blobs the peer asked for (each sent whole or from where its copy stopped).
    pub blobs_sent: u64,
    /// Blob payload bytes sent.
    pub blob_bytes_sent: u64,
    /// Blob payload bytes the peer asked this side for (sending) plus those this side asked
    /// the peer for (receiving): the total a progress display works towards.
    pub blob_bytes_due: u64,
    /// Blob payload bytes received and verified.
    pub blob_bytes_received: u64,
}

/// Payload bytes of chunk-group ranges of a blob of `size` bytes.
fn range_bytes(groups: &[(u64, u64)], size: u64) -> u64 {
    let g = cairn_store::blob::CHUNK_GROUP_BYTES as u64;
    groups
        .iter()
        .map(|&(a, b)| {
            b.saturating_mul(g)
                .min(size)
                .saturating_sub(a.saturating_mul(g).min(size))
        })
        .sum()
}

/// Documents of one feed still to send, by key.
struct DocQueue {
    feed: String,
    keys: VecDeque<String>,
}

/// One blob piece owed to the peer: chunk groups `start..end` of `hash`.
struct PendingPiece {
    hash: Hash,
    size: u64,
    start: u64,
    end: u64,
}

impl FeedJob {
    /// Every DOCS frame of this round has arrived.
    fn docs_complete(&self) -> bool {
        self.docs_total == Some(self.docs_seen)
    }
}

struct Batch {
    docs: Vec<Vec<u8>>,
    waiting: HashSet<Hash>,
    /// Small blobs received with the batch, held out of GC until it is applied.
    _pins: Vec<cairn_store::StoredBlob>,
}

#[derive(Default)]
struct FeedJob {
    name: String,
    report: FeedReport,
    /// This side receives documents for this feed.
    sink: bool,
    rule: Option<ApplyRule>,
    /// Mirror: the peer's collected-tombstone clock for this feed.
    peer_collected: u64,
    guard: GuardRail,
    dry_run: bool,
    /// Key prefixes (8 bytes of key hash) to our keys, for the buckets in play.
    local_keys: HashMap<u64, Vec<String>>,
    local_items: Vec<Item>,
    buckets: Vec<u8>,
    sketch_cells: usize,
    sketch_retries: u32,
    batches: Vec<Batch>,
    incoming: HashMap<Hash, IncomingBlob>,
    /// This side has sent everything it will send unasked for this feed.
    sent_all: bool,
    /// Whether documents are coming to this side (unknown until the exchange shows it).
    expect_docs: Option<bool>,
    /// DOCS frames received this round, and how many there are in all once the one marked
    /// `last` (or a DIFF marked `last`) has arrived; they may arrive in any order, each on
    /// its own stream.
    docs_seen: u64,
    docs_total: Option<u64>,
    /// Sequence number of the next DOCS frame this side sends for the feed.
    docs_seq_out: u64,
    /// The authoritative side's signed checkpoint, accepted once our state is final.
    checkpoint: Option<Vec<u8>>,
    peer_done: bool,
    local_done: bool,
    failed: bool,
}

/// One side of a replication connection.
pub struct Session {
    role: Role,
    mode: Mode,
    token: String,
    outbox: VecDeque<Frame>,
    /// Blob pieces asked for and not yet encoded: read from the store one at a time as the
    /// transport takes them, so a large blob is never held in memory whole.
    pieces: VecDeque<PendingPiece>,
    /// Documents still to send, per feed, read a batch at a time as the transport takes them.
    doc_queue: VecDeque<DocQueue>,
    jobs: BTreeMap<String, FeedJob>,
    order: Vec<String>,
    error: Option<SessionError>,
    hello_done: bool,
    stats: SessionStats,
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session")
            .field("role", &self.role)
            .field("mode", &self.mode)
            .field("feeds", &self.order)
            .finish_non_exhaustive()
    }
}

fn cursor_to_wire(c: Cursor) -> WireCursor {
    WireCursor {
        epoch: c.epoch,
        seq: c.seq,
    }
}

fn cursor_from_wire(c: WireCursor) -> Cursor {
    Cursor {
        epoch: c.epoch,
        seq: c.seq,
    }
}

fn key8(h: &Hash) -> u64 {
    let mut b = [0u8; 8];
    b.copy_from_slice(&h.as_bytes()[..8]);
    u64::from_be_bytes(b)
}

fn pack_u64s(v: impl IntoIterator<Item = u64>) -> Vec<u8> {
    v.into_iter().flat_map(u64::to_be_bytes).collect()
}

fn unpack_u64s(b: &[u8]) -> Result<Vec<u64>, SessionError> {
    if b.len() % 8 != 0 {
        return Err(SessionError::Protocol(
            "packed key list is not a multiple of 8 bytes".into(),
        ));
    }
    Ok(b.chunks_exact(8)
        .map(|c| u64::from_be_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]))
        .collect())
}

fn bitmap(buckets: &[u8]) -> Vec<u8> {
    let mut m = vec![0u8; 32];
    for &b in buckets {
        m[(b / 8) as usize] |= 1 << (b % 8);
    }
    m
}

fn from_bitmap(m: &[u8]) -> Result<Vec<u8>, SessionError> {
    if m.len() != 32 {
        return Err(SessionError::Protocol(
            "bucket bitmap is not 32 bytes".into(),
        ));
    }
    Ok((0..=255u8)
        .filter(|b| m[(b / 8) as usize] & (1 << (b % 8)) != 0)
        .collect())
}

fn pack_cells(t: &Iblt) -> Vec<u8> {
    let mut out = Vec::with_capacity(t.cells().len() * CELL_BYTES);
    for c in t.cells() {
        // Counts travel modulo 2^16: a pure cell of the difference is still exactly +1 or -1.
        out.extend_from_slice(&(c.count as u16).to_be_bytes());
        out.extend_from_slice(&c.key_sum.to_be_bytes());
        out.extend_from_slice(&c.leaf_sum.to_be_bytes());
        out.extend_from_slice(&c.check_sum.to_be_bytes());
    }
    out
}

fn unpack_cells(b: &[u8]) -> Result<Vec<Cell>, SessionError> {
    if b.len() % CELL_BYTES != 0 || b.len() / CELL_BYTES > iblt::MAX_CELLS {
        return Err(SessionError::Protocol(
            "sketch cells malformed or too many".into(),
        ));
    }
    let u64_at = |c: &[u8], i: usize| {
        u64::from_be_bytes([
            c[i],
            c[i + 1],
            c[i + 2],
            c[i + 3],
            c[i + 4],
            c[i + 5],
            c[i + 6],
            c[i + 7],
        ])
    };
    Ok(b.chunks_exact(CELL_BYTES)
        .map(|c| Cell {
            count: i64::from(u16::from_be_bytes([c[0], c[1]])),
            key_sum: u64_at(c, 2),
            leaf_sum: u64_at(c, 10),
            check_sum: u64_at(c, 18),
        })
        .collect())
}

fn pack_items(items: &[Item]) -> Vec<u8> {
    items
        .iter()
        .flat_map(|i| [i.key.to_be_bytes(), i.leaf.to_be_bytes()].concat())
        .collect()
}

fn unpack_items(b: &[u8]) -> Result<Vec<Item>, SessionError> {
    let v = unpack_u64s(b)?;
    if v.len() % 2 != 0 {
        return Err(SessionError::Protocol(
            "item list is not a multiple of 16 bytes".into(),
        ));
    }
    Ok(v.chunks_exact(2)
        .map(|p| Item {
            key: p[0],
            leaf: p[1],
        })
        .collect())
}

fn sketch_seed(feed: &str, root: &[u8; 32]) -> u64 {
    let h = Hash::of(&[feed.as_bytes(), root].concat());
    key8(&h)
}

fn store_err(e: StoreError) -> SessionError {
    SessionError::Store(e.to_string())
}

impl Session {
    /// Starts the initiator side: HELLO is queued at once.
    pub fn initiator(store: &Store, config: InitiatorConfig) -> Result<Session, SessionError> {
        let mut feeds = Vec::new();
        let mut s = Session::new(Role::Initiator, config.mode, config.token.clone());
        for name in &config.feeds {
            let sum = store.feed_summary(name).map_err(store_err)?;
            let since = if config.mode == Mode::Pull {
                config.since.get(name).copied()
            } else {
                None
            };
            feeds.push(FeedHello {
                feed: name.clone(),
                root: *sum.root.fingerprint.as_bytes(),
                count: sum.root.count,
                since: since.map(cursor_to_wire),
                checkpoint: if config.mode == Mode::Push {
                    Some(
                        store
                            .sign_checkpoint(name, CHECKPOINT_TTL_SECS)
                            .map_err(store_err)?
                            .bytes()
                            .to_vec(),
                    )
                } else {
                    None
                },
                collected: if config.mode == Mode::Mirror {
                    sum.feed.collected_hlc
                } else {
                    0
                },
            });
            let sink = config.mode != Mode::Push;
            s.jobs.insert(
                name.clone(),
                FeedJob {
                    name: name.clone(),
                    report: FeedReport {
                        feed: name.clone(),
                        ..FeedReport::default()
                    },
                    sink,
                    rule: sink.then_some(if config.mode == Mode::Mirror {
                        ApplyRule::LastWriterWins
                    } else {
                        ApplyRule::Authoritative
                    }),
                    guard: config.guard,
                    dry_run: config.dry_run,
                    ..FeedJob::default()
                },
            );
            s.order.push(name.clone());
        }
        s.outbox.push_back(Frame::Hello {
            version: wire::PROTOCOL_VERSION,
            token: config.token,
            mode: config.mode,
            feeds,
        });
        Ok(s)
    }

    /// Starts the responder side; it waits for HELLO.
    pub fn responder() -> Session {
        Session::new(Role::Responder, Mode::Pull, String::new())
    }

    fn new(role: Role, mode: Mode, token: String) -> Session {
        Session {
            role,
            mode,
            token,
            outbox: VecDeque::new(),
            pieces: VecDeque::new(),
            doc_queue: VecDeque::new(),
            jobs: BTreeMap::new(),
            order: Vec::new(),
            error: None,
            hello_done: false,
            stats: SessionStats::default(),
        }
    }

    /// Totals for the session.
    pub fn stats(&self) -> &SessionStats {
        &self.stats
    }

    /// The next frame to send, if any. Control frames go first, then queued documents, then
    /// blob pieces; both are read from `store` only when asked for, so the caller's pace
    /// bounds the memory they take.
    pub fn poll_transmit(&mut self, store: &Store) -> Option<Frame> {
        if let Some(f) = self.outbox.pop_front() {
            return Some(f);
        }
        if self.error.is_some() {
            self.pieces.clear();
            self.doc_queue.clear();
            return None;
        }
        if let Some(mut q) = self.doc_queue.pop_front() {
            let feed = q.feed.clone();
            let frame = match self
                .next_batch(store, &feed, &mut q.keys)
                .and_then(|b| Ok((b, self.next_docs_seq(&feed)?)))
            {
                Ok(((docs, blobs), seq)) => Frame::Docs {
                    feed: feed.clone(),
                    docs,
                    blobs,
                    last: q.keys.is_empty(),
                    seq,
                },
                Err(e) => {
                    self.fail(e);
                    return self.outbox.pop_front();
                }
            };
            if q.keys.is_empty() {
                // This feed's last documents are out: it may be done now (DONE follows them).
                if let Err(e) = self.maybe_done(store, &feed) {
                    self.fail(e);
                }
            } else {
                self.doc_queue.push_front(q);
            }
            return Some(frame);
        }
        let p = self.pieces.pop_front()?;
        let mut data = Vec::new();
        if let Err(e) = store.encode_blob(&p.hash, &[(p.start, p.end)], &mut data) {
            self.fail(store_err(e));
            return self.outbox.pop_front();
        }
        let payload = range_bytes(&[(p.start, p.end)], p.size);
        self.stats.pieces_sent += 1;
        self.stats.blob_bytes_sent += payload;
        Some(Frame::BlobPiece {
            hash: *p.hash.as_bytes(),
            size: p.size,
            groups: vec![(p.start, p.end)],
            data,
        })
    }

    /// The fatal error, if the session failed.
    pub fn error(&self) -> Option<&SessionError> {
        self.error.as_ref()
    }

    /// Whether this side has nothing more to do: every feed finished here and at the peer
    /// (or the session failed).
    pub fn is_finished(&self) -> bool {
        self.error.is_some()
            || (self.hello_done
                && self.outbox.is_empty()
                && self.doc_queue.is_empty()
                && self.pieces.is_empty()
                && self
                    .jobs
                    .values()
                    .all(|j| j.failed || (j.local_done && j.peer_done)))
    }

    /// Per-feed reports, in HELLO order.
    pub fn reports(&self) -> Vec<FeedReport> {
        self.order
            .iter()
            .filter_map(|n| self.jobs.get(n))
            .map(|j| j.report.clone())
            .collect()
    }

    /// The replication token the peer presented (responder side).
    pub fn token(&self) -> &str {
        &self.token
    }

    /// The mode of the run.
    pub fn mode(&self) -> Mode {
        self.mode
    }

    fn fail(&mut self, e: SessionError) {
        tracing::warn!(role = ?self.role, "replication session failed: {e}");
        let code = match &e {
            SessionError::Protocol(_) => code::PROTOCOL,
            SessionError::Store(_) => code::INTERNAL,
            SessionError::BadData(_) => code::BAD_DATA,
            SessionError::Peer { .. } => 0,
        };
        if code != 0 {
            self.outbox.push_back(Frame::Error {
                code,
                reason: e.to_string(),
            });
        }
        self.error = Some(e);
    }

    /// Feeds one received frame in; every outcome is frames in the outbox or state here.
    pub fn handle(&mut self, store: &Store, frame: Frame, authorizer: Option<&dyn Authorizer>) {
        if self.error.is_some() {
            return;
        }
        if let Err(e) = self.dispatch(store, frame, authorizer) {
            self.fail(e);
        }
    }

    fn job(&mut self, feed: &str) -> Result<&mut FeedJob, SessionError> {
        self.jobs.get_mut(feed).ok_or_else(|| {
            SessionError::Protocol(format!("frame for feed `{feed}` that is not in this run"))
        })
    }

    fn dispatch(
        &mut self,
        store: &Store,
        frame: Frame,
        authorizer: Option<&dyn Authorizer>,
    ) -> Result<(), SessionError> {
        match (self.role, frame) {
            (_, Frame::Error { code, reason }) => Err(SessionError::Peer { code, reason }),
            (
                Role::Responder,
                Frame::Hello {
                    version,
                    token,
                    mode,
                    feeds,
                },
            ) => {
                if self.hello_done {
                    return Err(SessionError::Protocol("second HELLO".into()));
                }
                self.hello_done = true;
                if version != wire::PROTOCOL_VERSION {
                    self.outbox.push_back(Frame::Error {
                        code: code::VERSION,
                        reason: format!(
                            "protocol version {version} is not supported; this peer speaks {}",
                            wire::PROTOCOL_VERSION
                        ),
                    });
                    return Err(SessionError::Protocol(format!(
                        "peer speaks protocol version {version}"
                    )));
                }
                self.mode = mode;
                self.token = token.clone();
                let guard = authorizer.map(|a| a.guard()).unwrap_or_default();
                let mut statuses = Vec::new();
                for h in feeds {
                    let status =
                        self.responder_hello(store, &token, mode, guard, &h, authorizer)?;
                    statuses.push(status);
                }
                self.outbox.push_back(Frame::HelloReply { feeds: statuses });
                for name in self.order.clone() {
                    self.maybe_done(store, &name)?;
                }
                Ok(())
            }
            (Role::Initiator, Frame::HelloReply { feeds }) => {
                if self.hello_done || feeds.len() != self.order.len() {
                    return Err(SessionError::Protocol("unexpected HELLO reply".into()));
                }
                self.hello_done = true;
                let names = self.order.clone();
                for (name, status) in names.iter().zip(feeds) {
                    self.initiator_status(store, name, status)?;
                }
                Ok(())
            }
            (Role::Responder, Frame::SummaryRequest { feed }) => {
                let status = summary(store, &feed, self.mode, None)?;
                self.job(&feed)?.docs_seq_out = 0;
                self.outbox.push_back(Frame::Summary { feed, status });
                Ok(())
            }
            (Role::Initiator, Frame::Summary { feed, status }) => {
                self.initiator_status(store, &feed, status)
            }
            (
                Role::Responder,
                Frame::Sketch {
                    feed,
                    buckets,
                    seed,
                    cells,
                },
            ) => {
                let buckets = from_bitmap(&buckets)?;
                let theirs = Iblt::from_cells(unpack_cells(&cells)?, seed)
                    .map_err(|e| SessionError::Protocol(e.to_string()))?;
                self.job(&feed)?.report.sketch_cells += theirs.cells().len() as u64;
                self.job(&feed)?.report.path = Path::Sketch;
                collect_items(store, self.job(&feed)?, &buckets)?;
                let job = self.job(&feed)?;
                let mut mine = Iblt::new(theirs.cells().len(), seed)
                    .map_err(|e| SessionError::Protocol(e.to_string()))?;
                for i in &job.local_items {
                    mine.insert(i);
                }
                // Subtract with counts modulo 2^16, as they travelled.
                let cells: Vec<Cell> = theirs
                    .cells()
                    .iter()
                    .zip(mine.cells())
                    .map(|(t, m)| Cell {
                        count: i64::from((t.count as u16).wrapping_sub(m.count as u16) as i16),
                        key_sum: t.key_sum ^ m.key_sum,
                        leaf_sum: t.leaf_sum ^ m.leaf_sum,
                        check_sum: t.check_sum ^ m.check_sum,
                    })
                    .collect();
                let diff = Iblt::from_cells(cells, seed)
                    .map_err(|e| SessionError::Protocol(e.to_string()))?;
                match diff.decode() {
                    Ok((theirs_only, mine_only)) => {
                        self.responder_resolve(store, &feed, &theirs_only, &mine_only)
                    }
                    Err(_) => {
                        self.outbox.push_back(Frame::SketchFailed { feed });
                        Ok(())
                    }
                }
            }
            (
                Role::Responder,
                Frame::ItemList {
                    feed,
                    buckets,
                    items,
                },
            ) => {
                let buckets = from_bitmap(&buckets)?;
                let theirs: HashSet<Item> = unpack_items(&items)?.into_iter().collect();
                self.job(&feed)?.report.path = Path::List;
                collect_items(store, self.job(&feed)?, &buckets)?;
                let job = self.job(&feed)?;
                let mine: HashSet<Item> = job.local_items.iter().copied().collect();
                let theirs_only: Vec<Item> = theirs.difference(&mine).copied().collect();
                let mine_only: Vec<Item> = mine.difference(&theirs).copied().collect();
                self.responder_resolve(store, &feed, &theirs_only, &mine_only)
            }
            (Role::Initiator, Frame::SketchFailed { feed }) => {
                let job = self.job(&feed)?;
                job.sketch_retries += 1;
                if job.sketch_retries > MAX_SKETCH_RETRIES {
                    let frame = Frame::ItemList {
                        feed,
                        buckets: bitmap(&job.buckets),
                        items: pack_items(&job.local_items),
                    };
                    job.report.path = Path::List;
                    self.outbox.push_back(frame);
                } else {
                    job.sketch_cells = iblt::cells_for(job.sketch_cells.saturating_mul(2));
                    let frame = sketch_frame(job)?;
                    self.outbox.push_back(frame);
                }
                Ok(())
            }
            (
                Role::Initiator,
                Frame::Diff {
                    feed,
                    docs,
                    remove,
                    want,
                    absent,
                    blobs,
                    last,
                },
            ) => {
                let removals = unpack_u64s(&remove)?;
                let mut wants = unpack_u64s(&want)?;
                let absent: HashSet<u64> = unpack_u64s(&absent)?.into_iter().collect();
                if self.mode == Mode::Mirror && !absent.is_empty() {
                    let absent_keys: Vec<u64> = wants
                        .iter()
                        .copied()
                        .filter(|k| absent.contains(k))
                        .collect();
                    let keys = keys_by_key8(store, &feed, &absent_keys)?;
                    let Some(gone) = self.drop_stale(store, &feed, &keys)? else {
                        return Ok(());
                    };
                    let gone: HashSet<u64> = gone
                        .iter()
                        .map(|k| key8(&cairn_store::merkle::key_hash(k)))
                        .collect();
                    wants.retain(|k| !gone.contains(k));
                }
                let mode = self.mode;
                if self.job(&feed)?.failed {
                    return Ok(());
                }
                if !removals.is_empty() && !self.remove_by_key8(store, &feed, &removals)? {
                    return Ok(());
                }
                if !wants.is_empty() {
                    if mode == Mode::Pull {
                        return Err(SessionError::Protocol(
                            "a pull responder asked for documents".into(),
                        ));
                    }
                    self.send_docs_by_key8(store, &feed, &wants)?;
                }
                let job = self.job(&feed)?;
                job.sent_all = true;
                job.expect_docs = Some(mode != Mode::Push);
                if last {
                    job.docs_total = Some(0);
                }
                if !docs.is_empty() {
                    self.receive_docs(
                        store,
                        &feed,
                        docs.into_iter().map(ByteBuf::into_vec).collect(),
                        blobs,
                    )?;
                }
                self.maybe_done(store, &feed)
            }
            (
                _,
                Frame::Docs {
                    feed,
                    docs,
                    blobs,
                    last,
                    seq,
                },
            ) => {
                let job = self.job(&feed)?;
                job.docs_seen += 1;
                if last {
                    job.docs_total = Some(seq + 1);
                }
                if job.docs_total.is_some_and(|t| job.docs_seen > t) {
                    return Err(SessionError::Protocol(format!(
                        "more DOCS frames for `{feed}` than the last one announced"
                    )));
                }
                self.receive_docs(
                    store,
                    &feed,
                    docs.into_iter().map(ByteBuf::into_vec).collect(),
                    blobs,
                )?;
                self.maybe_done(store, &feed)
            }
            (_, Frame::FeedFailed { feed, code, reason }) => {
                let job = self.job(&feed)?;
                job.failed = true;
                job.report.error = Some(format!("peer stopped this feed (code {code}): {reason}"));
                Ok(())
            }
            (_, Frame::WantBlobs { blobs }) => self.serve_blobs(store, &blobs),
            (
                _,
                Frame::BlobPiece {
                    hash,
                    size,
                    groups,
                    data,
                },
            ) => self.receive_piece(store, Hash::from_bytes(hash), size, &groups, &data),
            (_, Frame::Done { feed, root, count }) => {
                let job = self.job(&feed)?;
                job.peer_done = true;
                job.report.peer_root = Some((root, count));
                self.maybe_done(store, &feed)
            }
            (role, other) => Err(SessionError::Protocol(format!(
                "{role:?} cannot receive {}",
                frame_name(&other)
            ))),
        }
    }

    /// Checks an announced checkpoint against rollback; false (feed failed) when refused.
    fn take_checkpoint(
        &self,
        store: &Store,
        job: &mut FeedJob,
        checkpoint: Option<Vec<u8>>,
    ) -> bool {
        let Some(cp) = checkpoint else { return true };
        match store.check_checkpoint(&job.name, &cp) {
            Ok(_) => {
                job.checkpoint = Some(cp);
                true
            }
            Err(e) => {
                tracing::warn!(feed = %job.name, "refusing the peer's checkpoint: {e}");
                job.failed = true;
                job.report.error = Some(format!("checkpoint refused: {e}"));
                false
            }
        }
    }

    fn take_checkpoint_for(
        &mut self,
        store: &Store,
        feed: &str,
        checkpoint: Option<Vec<u8>>,
    ) -> Result<bool, SessionError> {
        let mut job = self.jobs.remove(feed).ok_or_else(|| {
            SessionError::Protocol(format!("frame for feed `{feed}` that is not in this run"))
        })?;
        let ok = self.take_checkpoint(store, &mut job, checkpoint);
        self.jobs.insert(feed.to_owned(), job);
        Ok(ok)
    }

    fn responder_hello(
        &mut self,
        store: &Store,
        token: &str,
        mode: Mode,
        guard: GuardRail,
        h: &FeedHello,
        authorizer: Option<&dyn Authorizer>,
    ) -> Result<FeedStatus, SessionError> {
        let mut job = FeedJob {
            name: h.feed.clone(),
            report: FeedReport {
                feed: h.feed.clone(),
                ..FeedReport::default()
            },
            sink: mode != Mode::Pull,
            rule: match mode {
                Mode::Pull => None,
                Mode::Push => Some(ApplyRule::Authoritative),
                Mode::Mirror => Some(ApplyRule::LastWriterWins),
            },
            guard,
            peer_collected: h.collected,
            ..FeedJob::default()
        };
        self.order.push(h.feed.clone());
        let refuse = |job: &mut FeedJob, code: u32, reason: String| {
            job.failed = true;
            job.report.error = Some(reason.clone());
            FeedStatus::Refused { code, reason }
        };
        let status = match authorizer.map(|a| a.authorize(token, &h.feed, mode)) {
            Some(Err((code, reason))) => refuse(&mut job, code, reason),
            _ => match store.feed_summary(&h.feed) {
                Err(StoreError::FeedNotFound { .. }) => refuse(
                    &mut job,
                    code::NO_SUCH_FEED,
                    format!("feed `{}` does not exist on this peer", h.feed),
                ),
                Err(e) => return Err(store_err(e)),
                Ok(_)
                    if mode == Mode::Push
                        && !self.take_checkpoint(store, &mut job, h.checkpoint.clone()) =>
                {
                    FeedStatus::Refused {
                        code: code::BAD_DATA,
                        reason: job.report.error.clone().unwrap_or_default(),
                    }
                }
                Ok(sum)
                    if sum.root.fingerprint.as_bytes() == &h.root && sum.root.count == h.count =>
                {
                    job.report.path = Path::Equal;
                    job.local_done = true;
                    job.peer_done = true;
                    job.report.local_root = Some((h.root, h.count));
                    job.report.peer_root = Some((h.root, h.count));
                    if let Some(cp) = job.checkpoint.take() {
                        if let Err(e) = store.accept_checkpoint(&h.feed, &cp) {
                            job.report.error = Some(format!("checkpoint: {e}"));
                        }
                    }
                    FeedStatus::Equal {
                        cursor: cursor_to_wire(sum.feed.cursor()),
                        checkpoint: pull_checkpoint(store, mode, &h.feed)?,
                    }
                }
                Ok(sum) => match (mode, h.since) {
                    (Mode::Pull, Some(since)) => {
                        match log_suffix(store, &h.feed, cursor_from_wire(since))? {
                            Some(changes) => {
                                job.report.path = Path::Log;
                                job.report.docs_sent +=
                                    changes.iter().filter(|c| c.doc.is_some()).count() as u64;
                                job.sent_all = true;
                                job.expect_docs = Some(false);
                                FeedStatus::Log {
                                    root: *sum.root.fingerprint.as_bytes(),
                                    count: sum.root.count,
                                    cursor: cursor_to_wire(sum.feed.cursor()),
                                    changes,
                                    checkpoint: pull_checkpoint(store, mode, &h.feed)?,
                                }
                            }
                            None => summary(
                                store,
                                &h.feed,
                                mode,
                                pull_checkpoint(store, mode, &h.feed)?,
                            )?,
                        }
                    }
                    _ => summary(store, &h.feed, mode, pull_checkpoint(store, mode, &h.feed)?)?,
                },
            },
        };
        self.jobs.insert(h.feed.clone(), job);
        Ok(status)
    }

    fn initiator_status(
        &mut self,
        store: &Store,
        feed: &str,
        status: FeedStatus,
    ) -> Result<(), SessionError> {
        match status {
            FeedStatus::Refused { code, reason } => {
                let job = self.job(feed)?;
                job.failed = true;
                job.report.error = Some(format!("refused by peer (code {code}): {reason}"));
                Ok(())
            }
            FeedStatus::Equal { cursor, checkpoint } => {
                let sum = store.feed_summary(feed).map_err(store_err)?;
                let mut job = self.jobs.remove(feed).ok_or_else(|| {
                    SessionError::Protocol(format!(
                        "frame for feed `{feed}` that is not in this run"
                    ))
                })?;
                let ok = self.take_checkpoint(store, &mut job, checkpoint);
                if ok {
                    if let Some(cp) = job.checkpoint.take() {
                        if let Err(e) = store.accept_checkpoint(feed, &cp) {
                            job.report.error = Some(format!("checkpoint: {e}"));
                        }
                    }
                }
                self.jobs.insert(feed.to_owned(), job);
                let job = self.job(feed)?;
                job.report.path = Path::Equal;
                job.report.peer_cursor = Some(cursor_from_wire(cursor));
                let r = (*sum.root.fingerprint.as_bytes(), sum.root.count);
                job.report.local_root = Some(r);
                job.report.peer_root = Some(r);
                job.local_done = true;
                job.peer_done = true;
                Ok(())
            }
            FeedStatus::Log {
                root,
                count,
                cursor,
                changes,
                checkpoint,
            } => {
                if !self.take_checkpoint_for(store, feed, checkpoint)? {
                    return Ok(());
                }
                {
                    let job = self.job(feed)?;
                    job.report.path = Path::Log;
                    job.report.peer_cursor = Some(cursor_from_wire(cursor));
                    job.report.peer_root = Some((root, count));
                    job.sent_all = true;
                    job.expect_docs = Some(true);
                    job.docs_total = Some(0);
                }
                let removed: Vec<String> = changes
                    .iter()
                    .filter(|c| c.doc.is_none())
                    .map(|c| c.key.clone())
                    .collect();
                if !removed.is_empty() && !self.remove_keys(store, feed, &removed)? {
                    return Ok(());
                }
                let docs: Vec<Vec<u8>> = changes.into_iter().filter_map(|c| c.doc).collect();
                if !docs.is_empty() {
                    self.receive_docs(store, feed, docs, Vec::new())?;
                }
                self.maybe_done(store, feed)
            }
            FeedStatus::Summary {
                root,
                count,
                cursor,
                l1,
                checkpoint,
                collected,
            } => {
                self.job(feed)?.peer_collected = collected;
                if checkpoint.is_some() && !self.take_checkpoint_for(store, feed, checkpoint)? {
                    return Ok(());
                }
                if l1.len() != 256 * L1_RECORD {
                    return Err(SessionError::Protocol(
                        "level-1 summary is not 256 records".into(),
                    ));
                }
                let mine = pack_l1(store, feed)?;
                let job = self.job(feed)?;
                job.report.peer_cursor = Some(cursor_from_wire(cursor));
                job.report.peer_root = Some((root, count));
                let mut mismatched = Vec::new();
                let mut count_diff = 0u64;
                for b in 0..256usize {
                    let (a, z) = (
                        &mine[b * L1_RECORD..(b + 1) * L1_RECORD],
                        &l1[b * L1_RECORD..(b + 1) * L1_RECORD],
                    );
                    if a != z {
                        mismatched.push(b as u8);
                        let ca = u32::from_be_bytes([a[0], a[1], a[2], a[3]]);
                        let cz = u32::from_be_bytes([z[0], z[1], z[2], z[3]]);
                        count_diff += u64::from(ca.abs_diff(cz));
                    }
                }
                if mismatched.is_empty() {
                    // Same level-1 summary but different roots: a fingerprint prefix collision.
                    mismatched = (0..=255).collect();
                }
                // Differing keys from the share of mismatched buckets (balls in bins); a key whose
                // entry changed is two items of the symmetric difference, an added or removed
                // key (seen in the count differences) is one.
                let m = mismatched.len() as f64;
                let per_bucket = if mismatched.len() >= 256 {
                    6.0
                } else {
                    -(1.0 - m / 256.0).ln()
                };
                let keys = (256.0 * per_bucket).max(count_diff as f64);
                let items = (2.0 * keys - count_diff as f64).max(count_diff as f64);
                let estimate = (items * 1.15).ceil() as usize + 4;
                job.buckets = mismatched.clone();
                collect_items(store, job, &mismatched)?;
                job.sketch_cells = iblt::cells_for(estimate);
                // A plain list is cheaper when our side of the buckets is small.
                let frame = if job.local_items.len() * 16 <= job.sketch_cells * CELL_BYTES {
                    job.report.path = Path::List;
                    Frame::ItemList {
                        feed: feed.to_owned(),
                        buckets: bitmap(&job.buckets),
                        items: pack_items(&job.local_items),
                    }
                } else {
                    job.report.path = Path::Sketch;
                    sketch_frame(job)?
                };
                self.outbox.push_back(frame);
                Ok(())
            }
        }
    }

    /// The responder knows the exact difference: act on it according to the mode.
    fn responder_resolve(
        &mut self,
        store: &Store,
        feed: &str,
        theirs_only: &[Item],
        mine_only: &[Item],
    ) -> Result<(), SessionError> {
        let mode = self.mode;
        let their_keys: HashSet<u64> = theirs_only.iter().map(|i| i.key).collect();
        let my_keys: HashSet<u64> = mine_only.iter().map(|i| i.key).collect();
        let mut send_keys = Vec::new();
        if mode != Mode::Push {
            let job = self.job(feed)?;
            let mut keys: Vec<String> = mine_only
                .iter()
                .flat_map(|i| job.local_keys.get(&i.key).cloned().unwrap_or_default())
                .collect();
            if mode == Mode::Mirror {
                let only_here: Vec<String> = mine_only
                    .iter()
                    .filter(|i| !their_keys.contains(&i.key))
                    .flat_map(|i| job.local_keys.get(&i.key).cloned().unwrap_or_default())
                    .collect();
                let Some(gone) = self.drop_stale(store, feed, &only_here)? else {
                    return Ok(());
                };
                keys.retain(|k| !gone.contains(k));
            }
            send_keys = keys;
        }
        let remove: Vec<u64> = if mode == Mode::Pull {
            their_keys.difference(&my_keys).copied().collect()
        } else {
            Vec::new()
        };
        let want: Vec<u64> = if mode == Mode::Pull {
            Vec::new()
        } else {
            their_keys.iter().copied().collect()
        };
        if mode == Mode::Push {
            // We become a copy of the initiator: drop what it does not have at all.
            let extras: Vec<u64> = my_keys.difference(&their_keys).copied().collect();
            if !self.remove_by_key8(store, feed, &extras)? {
                return Ok(());
            }
        }
        let mut queue: VecDeque<String> = send_keys.into();
        let (first, first_blobs) = self.next_batch(store, feed, &mut queue)?;
        let absent: Vec<u64> = if mode == Mode::Mirror {
            their_keys.difference(&my_keys).copied().collect()
        } else {
            Vec::new()
        };
        self.outbox.push_back(Frame::Diff {
            feed: feed.to_owned(),
            docs: first,
            remove: pack_u64s(remove),
            want: pack_u64s(want.iter().copied()),
            absent: pack_u64s(absent),
            blobs: first_blobs,
            last: queue.is_empty(),
        });
        self.queue_docs(feed, queue);
        let job = self.job(feed)?;
        job.sent_all = true;
        job.expect_docs = Some(mode != Mode::Pull && !want.is_empty());
        self.maybe_done(store, feed)
    }

    /// Mirror: removes those of `keys` (entries the peer holds nothing for) that the peer may
    /// have deleted and forgotten (wire-spec 9); the removed keys, or `None` when the guard
    /// rail stopped the feed.
    fn drop_stale(
        &mut self,
        store: &Store,
        feed: &str,
        keys: &[String],
    ) -> Result<Option<Vec<String>>, SessionError> {
        let stale = stale_for_peer(store, feed, keys, self.job(feed)?.peer_collected)?;
        if !stale.is_empty() && !self.remove_keys(store, feed, &stale)? {
            return Ok(None);
        }
        Ok(Some(stale))
    }

    /// Removes keys after the guard rail allows it; false when the guard rail stopped the feed.
    fn remove_keys(
        &mut self,
        store: &Store,
        feed: &str,
        keys: &[String],
    ) -> Result<bool, SessionError> {
        let total = store.feed_summary(feed).map_err(store_err)?.root.count;
        if !self.check_guard(feed, total, keys.len() as u64)? {
            return Ok(false);
        }
        let job = self.job(feed)?;
        if job.dry_run {
            job.report.plan_deletes += keys.len() as u64;
            return Ok(true);
        }
        let n = store.remove_entries(feed, keys).map_err(store_err)?;
        self.job(feed)?.report.deletions += n;
        Ok(true)
    }

    /// False (and the feed failed, the peer told) when `deletes` is over the guard rail.
    fn check_guard(&mut self, feed: &str, total: u64, deletes: u64) -> Result<bool, SessionError> {
        let job = self.job(feed)?;
        if deletes == 0 || job.guard.allow || total == 0 {
            return Ok(true);
        }
        let share = deletes as f64 / total as f64;
        if share <= job.guard.max_delete_share {
            return Ok(true);
        }
        let reason = format!(
            "this run would delete {deletes} of {total} entries in `{feed}` ({:.0}%), over the guard rail of {:.0}%; run with --allow-deletes to proceed or --dry-run to see the plan",
            share * 100.0,
            job.guard.max_delete_share * 100.0
        );
        tracing::warn!(feed, "{reason}");
        job.failed = true;
        job.report.error = Some(reason.clone());
        self.outbox.push_back(Frame::FeedFailed {
            feed: feed.to_owned(),
            code: code::GUARD_RAIL,
            reason,
        });
        Ok(false)
    }

    fn remove_by_key8(
        &mut self,
        store: &Store,
        feed: &str,
        key8s: &[u64],
    ) -> Result<bool, SessionError> {
        let keys = keys_by_key8(store, feed, key8s)?;
        if keys.is_empty() {
            return Ok(true);
        }
        self.remove_keys(store, feed, &keys)
    }

    fn send_docs_by_key8(
        &mut self,
        store: &Store,
        feed: &str,
        key8s: &[u64],
    ) -> Result<(), SessionError> {
        let mut queue: VecDeque<String> = keys_by_key8(store, feed, key8s)?.into();
        let (docs, blobs) = self.next_batch(store, feed, &mut queue)?;
        let seq = self.next_docs_seq(feed)?;
        self.outbox.push_back(Frame::Docs {
            feed: feed.to_owned(),
            docs,
            blobs,
            last: queue.is_empty(),
            seq,
        });
        self.queue_docs(feed, queue);
        Ok(())
    }

    /// Keys whose documents follow in DOCS frames as the transport takes them.
    fn queue_docs(&mut self, feed: &str, keys: VecDeque<String>) {
        if !keys.is_empty() {
            self.doc_queue.push_back(DocQueue {
                feed: feed.to_owned(),
                keys,
            });
        }
    }

    fn next_docs_seq(&mut self, feed: &str) -> Result<u64, SessionError> {
        let job = self.job(feed)?;
        job.docs_seq_out += 1;
        Ok(job.docs_seq_out - 1)
    }

    /// The next batch of documents (up to [`DOC_BATCH_BYTES`]) for the keys at the front of
    /// `keys`, with the small blobs their manifests name; counted as sent.
    fn next_batch(
        &mut self,
        store: &Store,
        feed: &str,
        keys: &mut VecDeque<String>,
    ) -> Result<DocBatch, SessionError> {
        let mut docs = Vec::new();
        let mut blobs: Vec<SmallBlob> = Vec::new();
        let mut seen = HashSet::new();
        let mut bytes = 0;
        while let Some(key) = keys.front() {
            let Some(v) = store.entry(feed, key).map_err(store_err)? else {
                keys.pop_front();
                continue;
            };
            let d = store
                .document_bytes(&v.doc)
                .map_err(store_err)?
                .ok_or_else(|| SessionError::Store(format!("document {} missing", v.doc)))?;
            let mut small = Vec::new();
            if let Ok(m) = SignedDocument::peek_payload::<Manifest>(&d) {
                for f in m.files {
                    if f.size <= cairn_store::blob::INLINE_MAX && seen.insert(f.blob) {
                        let mut data = Vec::with_capacity(f.size as usize);
                        store.read_blob_to(&f.blob, &mut data).map_err(store_err)?;
                        small.push(SmallBlob {
                            hash: *f.blob.as_bytes(),
                            data,
                        });
                    }
                }
            }
            let size = d.len() + small.iter().map(|b| b.data.len() + 40).sum::<usize>();
            if bytes + size > DOC_BATCH_BYTES && !docs.is_empty() {
                break;
            }
            keys.pop_front();
            bytes += size;
            docs.push(ByteBuf::from(d));
            blobs.extend(small);
        }
        self.job(feed)?.report.docs_sent += docs.len() as u64;
        Ok((docs, blobs))
    }

    fn receive_docs(
        &mut self,
        store: &Store,
        feed: &str,
        docs: Vec<Vec<u8>>,
        small: Vec<SmallBlob>,
    ) -> Result<(), SessionError> {
        let job = self.job(feed)?;
        if !job.sink {
            return Err(SessionError::Protocol(format!(
                "documents for `{feed}` sent to a side that does not receive in this mode"
            )));
        }
        if job.failed {
            return Ok(());
        }
        // Small blobs first: each is checked against its hash as it is stored.
        let mut pins = Vec::with_capacity(small.len());
        if !job.dry_run {
            for b in small {
                let want = Hash::from_bytes(b.hash);
                if b.data.len() as u64 > cairn_store::blob::INLINE_MAX || Hash::of(&b.data) != want
                {
                    tracing::warn!(blob = %want, "peer sent a small blob whose bytes do not match its hash");
                    return Err(SessionError::BadData(format!(
                        "blob {want} does not match its hash"
                    )));
                }
                let stored = store.put_blob(&b.data[..]).map_err(store_err)?;
                job.report.blobs_received += 1;
                job.report.blob_bytes_received += stored.size;
                pins.push(stored);
            }
        }
        // Deletions the batch would cause count against the guard rail.
        let mut deletes = 0u64;
        let mut wanted: BTreeMap<Hash, u64> = BTreeMap::new();
        // Planning only (what to fetch, what would be deleted): the signatures are checked
        // once, where the documents are stored.
        for bytes in &docs {
            if let Ok(m) = SignedDocument::peek_payload::<Manifest>(bytes) {
                for f in m.files {
                    if store.blob_size(&f.blob).map_err(store_err)? != Some(f.size) {
                        wanted.insert(f.blob, f.size);
                    }
                }
            } else if let Ok(t) = SignedDocument::peek_payload::<cairn_store::doc::Tombstone>(bytes)
            {
                let live = store.entry(feed, &t.key).map_err(store_err)?;
                if live.is_some_and(|v| v.kind != EntryKind::Tombstone) {
                    deletes += 1;
                }
            }
        }
        let total = store.feed_summary(feed).map_err(store_err)?.root.count;
        if !self.check_guard(feed, total, deletes)? {
            return Ok(());
        }
        let job = self.job(feed)?;
        if job.dry_run {
            job.report.plan_adds += docs.len() as u64 - deletes;
            job.report.plan_deletes += deletes;
            job.report.plan_bytes += wanted.values().sum::<u64>();
            return self.maybe_done(store, feed);
        }
        let mut requests = Vec::new();
        let mut waiting = HashSet::new();
        let mut due = 0;
        let mut adopted = Vec::new();
        for (hash, size) in wanted {
            if let std::collections::hash_map::Entry::Vacant(slot) = job.incoming.entry(hash) {
                // A bucket shared with another instance may hold it already.
                if let Some(stored) = store.adopt_blob(hash, size).map_err(store_err)? {
                    job.report.blobs_adopted += 1;
                    job.report.blob_bytes_adopted += size;
                    adopted.push(stored);
                    continue;
                }
                let incoming = store.receive_blob(hash, size).map_err(store_err)?;
                let missing = incoming.missing();
                due += range_bytes(&missing, size);
                requests.push(BlobRequest {
                    hash: *hash.as_bytes(),
                    size,
                    groups: missing,
                });
                slot.insert(incoming);
            }
            waiting.insert(hash);
        }
        pins.extend(adopted);
        job.batches.push(Batch {
            docs,
            waiting,
            _pins: pins,
        });
        self.stats.blob_bytes_due += due;
        if !requests.is_empty() {
            self.outbox.push_back(Frame::WantBlobs { blobs: requests });
        }
        self.apply_ready(store, feed)
    }

    fn receive_piece(
        &mut self,
        store: &Store,
        hash: Hash,
        size: u64,
        groups: &[(u64, u64)],
        data: &[u8],
    ) -> Result<(), SessionError> {
        let writer = self.piece_writer(hash, size)?;
        let written = writer.write_from(groups, data);
        self.piece_written(store, hash, written)
    }

    fn piece_writer(&mut self, hash: Hash, size: u64) -> Result<PieceWriter, SessionError> {
        let incoming = self
            .jobs
            .values()
            .find_map(|j| j.incoming.get(&hash))
            .ok_or_else(|| {
                SessionError::Protocol(format!("blob piece for {hash} that was not asked for"))
            })?;
        if incoming.size() != size {
            return Err(SessionError::Protocol(format!(
                "blob {hash} announced as {size} bytes, asked for {}",
                incoming.size()
            )));
        }
        Ok(incoming.writer())
    }

    fn piece_written(
        &mut self,
        store: &Store,
        hash: Hash,
        written: PieceWritten,
    ) -> Result<(), SessionError> {
        let Some((feed, mut incoming)) = self
            .jobs
            .iter_mut()
            .find_map(|(n, j)| j.incoming.remove(&hash).map(|i| (n.clone(), i)))
        else {
            return Err(SessionError::Protocol(format!(
                "blob piece for {hash} that was not asked for"
            )));
        };
        incoming.record(&written);
        self.stats.blob_bytes_received += written.bytes;
        let job = self.job(&feed)?;
        job.report.blob_bytes_received += written.bytes;
        if let Err(e) = written.result {
            job.incoming.insert(hash, incoming);
            // Only bytes that fail their hash are the peer's fault; a full disk is ours.
            return Err(match e {
                cairn_store::StoreError::CorruptBlob(_) => {
                    tracing::warn!(blob = %hash, "peer sent a blob piece that failed verification: {e}");
                    SessionError::BadData(format!("blob {hash} failed verification: {e}"))
                }
                other => store_err(other),
            });
        }
        if incoming.is_complete() {
            store.finish_blob(incoming).map_err(store_err)?;
            let job = self.job(&feed)?;
            job.report.blobs_received += 1;
            for b in &mut job.batches {
                b.waiting.remove(&hash);
            }
            self.apply_ready(store, &feed)
        } else {
            job.incoming.insert(hash, incoming);
            Ok(())
        }
    }

    /// A blob piece whose encoding arrives as a stream (the head of a `blob-stream`): if this
    /// side asked for the blob, a writer the caller feeds the encoding to, on any thread,
    /// then hands the outcome to [`Session::end_piece`]. `None` when the session has failed
    /// (a piece it did not ask for fails it).
    pub fn begin_piece(&mut self, hash: [u8; 32], size: u64) -> Option<PieceWriter> {
        if self.error.is_some() {
            return None;
        }
        match self.piece_writer(Hash::from_bytes(hash), size) {
            Ok(w) => Some(w),
            Err(e) => {
                self.fail(e);
                None
            }
        }
    }

    /// What a writer from [`Session::begin_piece`] did.
    pub fn end_piece(&mut self, store: &Store, hash: Hash, written: PieceWritten) {
        if self.error.is_some() {
            return;
        }
        if let Err(e) = self.piece_written(store, hash, written) {
            self.fail(e);
        }
    }

    fn apply_ready(&mut self, store: &Store, feed: &str) -> Result<(), SessionError> {
        let job = self.job(feed)?;
        let rule = job.rule.unwrap_or(ApplyRule::Authoritative);
        let (ready, waiting): (Vec<Batch>, Vec<Batch>) = std::mem::take(&mut job.batches)
            .into_iter()
            .partition(|b| b.waiting.is_empty());
        job.batches = waiting;
        for batch in ready {
            let results = store
                .apply_remote(feed, &batch.docs, rule)
                .map_err(store_err)?;
            let job = self.job(feed)?;
            for r in results {
                match r {
                    Ok((_, Applied::Inserted | Applied::Replaced)) => job.report.docs_applied += 1,
                    Ok((_, Applied::Superseded)) => job.report.docs_superseded += 1,
                    Ok((_, Applied::Unchanged)) => {}
                    Err(e) => {
                        tracing::warn!(feed, "rejected a document from the peer: {e}");
                        return Err(SessionError::BadData(format!(
                            "document for `{feed}` rejected: {e}"
                        )));
                    }
                }
            }
        }
        self.maybe_done(store, feed)
    }

    /// Sends DONE once this side's state for the feed is final.
    /// Sends DONE once this side's state for the feed is final: it has sent what it had to,
    /// and every document it was to receive is applied.
    fn maybe_done(&mut self, store: &Store, feed: &str) -> Result<(), SessionError> {
        if self.doc_queue.iter().any(|q| q.feed == feed) {
            return Ok(());
        }
        let role = self.role;
        let job = self.job(feed)?;
        if job.failed || job.local_done || !job.sent_all {
            return Ok(());
        }
        let receiving = !job.batches.is_empty() || !job.incoming.is_empty();
        let final_here = match job.expect_docs {
            None => false,
            Some(false) => true,
            Some(true) => job.docs_complete() && !receiving,
        };
        if !final_here {
            return Ok(());
        }
        let sum = store.feed_summary(feed).map_err(store_err)?;
        let root = (*sum.root.fingerprint.as_bytes(), sum.root.count);
        let job = self.job(feed)?;
        // A pull by log that did not reach the upstream root (local extras): reconcile fully.
        if role == Role::Initiator
            && job.report.path == Path::Log
            && job.report.peer_root.is_some_and(|p| p != root)
            && !job.dry_run
        {
            job.report.path = Path::Sketch;
            job.sent_all = false;
            job.expect_docs = None;
            job.docs_seen = 0;
            job.docs_total = None;
            self.outbox.push_back(Frame::SummaryRequest {
                feed: feed.to_owned(),
            });
            return Ok(());
        }
        job.local_done = true;
        job.report.local_root = Some(root);
        if let Some(cp) = job.checkpoint.take() {
            if !job.dry_run {
                if let Err(e) = store.accept_checkpoint(feed, &cp) {
                    tracing::warn!(feed, "upstream checkpoint not accepted: {e}");
                    job.report.error = Some(format!("checkpoint: {e}"));
                }
            }
        }
        self.outbox.push_back(Frame::Done {
            feed: feed.to_owned(),
            root: root.0,
            count: root.1,
        });
        Ok(())
    }

    fn serve_blobs(&mut self, store: &Store, blobs: &[BlobRequest]) -> Result<(), SessionError> {
        for req in blobs {
            let hash = Hash::from_bytes(req.hash);
            let size = store.blob_size(&hash).map_err(store_err)?.ok_or_else(|| {
                SessionError::Protocol(format!("peer asked for blob {hash} which is not here"))
            })?;
            if size != req.size {
                return Err(SessionError::Protocol(format!(
                    "peer asked for blob {hash} as {} bytes; it has {size}",
                    req.size
                )));
            }
            let groups = group_count(size);
            self.stats.blobs_sent += 1;
            for &(a, b) in &req.groups {
                let (a, b) = (a.min(groups), b.min(groups));
                let mut start = a;
                while start < b {
                    let end = (start + PIECE_GROUPS).min(b);
                    self.stats.blob_bytes_due += range_bytes(&[(start, end)], size);
                    self.pieces.push_back(PendingPiece {
                        hash,
                        size,
                        start,
                        end,
                    });
                    start = end;
                }
            }
        }
        Ok(())
    }
}

fn frame_name(f: &Frame) -> &'static str {
    match f {
        Frame::Hello { .. } => "HELLO",
        Frame::HelloReply { .. } => "HELLO-REPLY",
        Frame::SummaryRequest { .. } => "SUMMARY-REQUEST",
        Frame::Summary { .. } => "SUMMARY",
        Frame::Sketch { .. } => "SKETCH",
        Frame::SketchFailed { .. } => "SKETCH-FAILED",
        Frame::ItemList { .. } => "ITEM-LIST",
        Frame::Diff { .. } => "DIFF",
        Frame::Docs { .. } => "DOCS",
        Frame::WantBlobs { .. } => "WANT-BLOBS",
        Frame::BlobPiece { .. } => "BLOB-PIECE",
        Frame::BlobStream { .. } => "BLOB-STREAM",
        Frame::Done { .. } => "DONE",
        Frame::FeedFailed { .. } => "FEED-FAILED",
        Frame::Error { .. } => "ERROR",
    }
}

fn pack_l1(store: &Store, feed: &str) -> Result<Vec<u8>, SessionError> {
    let mut out = vec![0u8; 256 * L1_RECORD];
    for (b, n) in store.merkle_children(feed, &[]).map_err(store_err)? {
        let at = b as usize * L1_RECORD;
        out[at..at + 4].copy_from_slice(&(n.count.min(u32::MAX as u64) as u32).to_be_bytes());
        out[at + 4..at + 12].copy_from_slice(&n.fingerprint.as_bytes()[..8]);
    }
    Ok(out)
}

fn summary(
    store: &Store,
    feed: &str,
    mode: Mode,
    checkpoint: Option<Vec<u8>>,
) -> Result<FeedStatus, SessionError> {
    let sum = store.feed_summary(feed).map_err(store_err)?;
    Ok(FeedStatus::Summary {
        root: *sum.root.fingerprint.as_bytes(),
        count: sum.root.count,
        cursor: cursor_to_wire(sum.feed.cursor()),
        l1: pack_l1(store, feed)?,
        checkpoint,
        collected: if mode == Mode::Mirror {
            sum.feed.collected_hlc
        } else {
            0
        },
    })
}

/// Mirror: of `keys` (entries here that the peer holds nothing for), those the peer may have
/// deleted and since collected the tombstone of: live entries whose clock is at or below the
/// peer's collected clock. They are removed here rather than offered back (wire-spec 9).
fn stale_for_peer(
    store: &Store,
    feed: &str,
    keys: &[String],
    peer_collected: u64,
) -> Result<Vec<String>, SessionError> {
    if peer_collected == 0 {
        return Ok(Vec::new());
    }
    let mut out = Vec::new();
    for k in keys {
        if let Some(v) = store.entry(feed, k).map_err(store_err)? {
            if v.kind != EntryKind::Tombstone && v.hlc <= peer_collected {
                out.push(k.clone());
            }
        }
    }
    Ok(out)
}

/// In a pull the responder is authoritative and signs its state for the replica to keep.
fn pull_checkpoint(store: &Store, mode: Mode, feed: &str) -> Result<Option<Vec<u8>>, SessionError> {
    if mode != Mode::Pull {
        return Ok(None);
    }
    Ok(Some(
        store
            .sign_checkpoint(feed, CHECKPOINT_TTL_SECS)
            .map_err(store_err)?
            .bytes()
            .to_vec(),
    ))
}

/// The current value of every key changed since `since`, or `None` when a log cannot answer.
fn log_suffix(
    store: &Store,
    feed: &str,
    since: Cursor,
) -> Result<Option<Vec<WireChange>>, SessionError> {
    match store
        .changes_since(feed, since, MAX_LOG_CHANGES + 1)
        .map_err(store_err)?
    {
        ChangesSince::FullDiffNeeded { .. } => Ok(None),
        ChangesSince::Changes {
            changes, complete, ..
        } => {
            if !complete || changes.len() > MAX_LOG_CHANGES {
                return Ok(None);
            }
            let keys: Vec<String> = changes
                .iter()
                .map(|c| c.key.clone())
                .collect::<std::collections::BTreeSet<_>>()
                .into_iter()
                .collect();
            let mut out = Vec::with_capacity(keys.len());
            for key in keys {
                let doc = match store.entry(feed, &key).map_err(store_err)? {
                    Some(v) => Some(
                        store
                            .document_bytes(&v.doc)
                            .map_err(store_err)?
                            .ok_or_else(|| {
                                SessionError::Store(format!("document {} missing", v.doc))
                            })?,
                    ),
                    None => None,
                };
                out.push(WireChange { key, doc });
            }
            Ok(Some(out))
        }
    }
}

fn collect_items(store: &Store, job: &mut FeedJob, buckets: &[u8]) -> Result<(), SessionError> {
    job.local_items.clear();
    job.local_keys.clear();
    job.buckets = buckets.to_vec();
    for &b in buckets {
        for (kh, e) in store.entries_under(&job.name, &[b]).map_err(store_err)? {
            let leaf = merkle::leaf(&e.key, &e.value.doc);
            let item = Item::new(kh.as_bytes(), leaf.as_bytes());
            job.local_keys.entry(item.key).or_default().push(e.key);
            job.local_items.push(item);
        }
    }
    Ok(())
}

fn sketch_frame(job: &mut FeedJob) -> Result<Frame, SessionError> {
    let seed = sketch_seed(&job.name, &[job.sketch_retries as u8; 32]);
    let mut t =
        Iblt::new(job.sketch_cells, seed).map_err(|e| SessionError::Protocol(e.to_string()))?;
    for i in &job.local_items {
        t.insert(i);
    }
    job.report.sketch_cells += t.cells().len() as u64;
    Ok(Frame::Sketch {
        feed: job.name.clone(),
        buckets: bitmap(&job.buckets),
        seed,
        cells: pack_cells(&t),
    })
}

/// The local keys whose key hash starts with each of the 8-byte prefixes.
fn keys_by_key8(store: &Store, feed: &str, key8s: &[u64]) -> Result<Vec<String>, SessionError> {
    let mut keys = Vec::new();
    for k in key8s {
        for (_, e) in store
            .entries_under(feed, &k.to_be_bytes())
            .map_err(store_err)?
        {
            keys.push(e.key);
        }
    }
    Ok(keys)
}

/// Documents for one frame and the small blobs they name.
type DocBatch = (Vec<ByteBuf>, Vec<SmallBlob>);
