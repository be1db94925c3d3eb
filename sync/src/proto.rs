//! The sans-IO core of `cairn/sync/6`: one [`Session`] per side of a connection.
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
//!    its summary: a 12-cell IBLT of all its items and a 256-counter estimator of the difference.
//! 3. The initiator subtracts its own 12-cell table. When that peels (a difference of a few
//!    items), it sends the whole difference (DIFFERENCE); otherwise an IBLT sketch of all its
//!    items sized from the estimate (or, when that is cheaper, the plain item list).
//! 4. The responder peels the sketch (or takes the difference), knowing exactly which keys
//!    differ on each side, and answers with documents, removals and wants according to the mode.
//! 5. Whoever receives documents asks for the blob ranges it lacks, verifies every piece as it
//!    arrives, and applies the documents once their blobs are stored. Then it says DONE.
//!
//! Trust (wire-spec section 12): nothing but HELLO is accepted before HELLO; a feed refused at
//! HELLO is gone from the session, and any later frame naming it is a protocol error; a side
//! answers a blob request only for a blob that a document it sent in this run names, once;
//! every received document is decoded, signature-checked and trust-checked before any blob
//! it names is stored, asked for or allocated for; the authoritative side's checkpoint is
//! required and checked (trusted signer, fresh, not a rollback) before anything is applied.
//! No authorizer means every feed is refused.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::sync::Arc;

use cairn_store::doc::{Checkpoint, DocumentError, Filter, Manifest, PublicKey};
use cairn_store::merkle::{self, Fingerprint, NodeSummary};
use cairn_store::replica::{
    group_count, Applied, ApplyRule, IncomingBlob, PieceWriter, PieceWritten, VerifiedDoc,
};
use cairn_store::{
    ChangesSince, Cursor, Entry, EntryKind, FeedSummary, Hash, SignedDocument, Store, StoreError,
};
use serde_bytes::ByteBuf;

use crate::iblt::{self, Cell, Estimator, Iblt, Item, ESTIMATOR_COUNTERS, SUMMARY_CELLS};
use crate::wire::{
    self, code, BlobRequest, FeedHello, FeedStatus, Frame, Mode, SmallBlob, WireChange, WireCursor,
    CELL_BYTES, MAX_DIFFERENCE_ITEMS,
};

/// Most changes sent as a log suffix; beyond this the summary path is cheaper to reason about.
pub const MAX_LOG_CHANGES: usize = 4096;
/// Most bytes of documents the change-log suffixes of one HELLO-REPLY carry, all feeds
/// together; a feed over the rest of the budget gets the summary instead, so the reply stays
/// well inside [`wire::MAX_FRAME`].
pub const MAX_LOG_BYTES: usize = 4 << 20;
/// Most feeds in one HELLO (the reply's summaries stay inside one frame); a run over
/// more feeds is split into several sessions by the driver.
pub const MAX_HELLO_FEEDS: usize = 1024;
/// Most 8-byte key prefixes in one list of a DIFF page (1 MiB); longer lists take more pages.
pub const MAX_DIFF_KEYS: usize = 128 * 1024;
/// Most items in one ITEM-LIST page (4 MiB); a page always holds whole buckets.
pub const MAX_LIST_ITEMS: usize = 256 * 1024;
/// Largest sketch sent (about 6.5 MiB); a difference that needs more goes as an item list.
pub const MAX_SKETCH_CELLS: usize = 256 * 1024;
/// Chunk groups per blob piece (1 MiB).
pub const PIECE_GROUPS: u64 = 64;
/// Largest batch of documents in one frame.
pub const DOC_BATCH_BYTES: usize = 1 << 20;
/// Sketch retries before falling back to the item list.
pub const MAX_SKETCH_RETRIES: u32 = 2;
/// How long a checkpoint signed for a run stays valid.
pub const CHECKPOINT_TTL_SECS: u64 = cairn_store::admin::CHECKPOINT_TTL_SECS;

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

/// Bounds on what a peer can make this side hold.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Largest blob a received manifest may name; a document naming a larger one is refused
    /// before anything is allocated for it.
    pub max_blob_bytes: u64,
    /// Most bytes of verified documents one feed may hold waiting for their blobs; beyond it
    /// the feed stops for this run (what arrived is kept, and the next run continues).
    pub max_waiting_doc_bytes: u64,
    /// How long a checkpoint this side signs for a peer stays valid, in seconds: how long a
    /// site may go on serving this state as current when it can no longer hear from here.
    pub checkpoint_ttl_secs: u64,
    /// How long a checkpoint this side signed is given again while its feed is unchanged,
    /// in seconds (see [`Store::own_checkpoint`]).
    pub checkpoint_refresh_secs: u64,
    /// Items per ITEM-LIST page this side sends ([`MAX_LIST_ITEMS`]; smaller in tests).
    pub list_page_items: usize,
    /// Keys per list of a DIFF page this side sends ([`MAX_DIFF_KEYS`]; smaller in tests).
    pub diff_page_keys: usize,
    /// Bytes of documents and small blobs per DOCS frame this side sends
    /// ([`DOC_BATCH_BYTES`]; smaller in tests).
    pub doc_batch_bytes: usize,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            max_blob_bytes: 64 << 30,
            max_waiting_doc_bytes: 256 << 20,
            checkpoint_ttl_secs: CHECKPOINT_TTL_SECS,
            checkpoint_refresh_secs: cairn_store::admin::CHECKPOINT_REFRESH_SECS,
            list_page_items: MAX_LIST_ITEMS,
            diff_page_keys: MAX_DIFF_KEYS,
            doc_batch_bytes: DOC_BATCH_BYTES,
        }
    }
}

/// How the initiator wants to run.
#[derive(Clone, Debug)]
pub struct InitiatorConfig {
    /// The responder's instance key (its TLS identity).
    pub peer: PublicKey,
    /// Wall-clock time of the run, Unix seconds: checkpoints are checked against it.
    pub now_secs: u64,
    /// What the peer may make this side hold.
    pub limits: Limits,
    /// Token presented in HELLO.
    pub token: String,
    /// Direction of content.
    pub mode: Mode,
    /// Feeds to replicate (`@system` for the system set).
    pub feeds: Vec<String>,
    /// The responder's cursor per feed from the last completed pull.
    pub since: HashMap<String, Cursor>,
    /// Pull: per feed, the entries to take (by package name); feeds without one are whole.
    pub filters: HashMap<String, Filter>,
    /// Deletion guard rail for what this side receives.
    pub guard: GuardRail,
    /// Plan only: report adds, deletes and bytes, change nothing.
    pub dry_run: bool,
    /// Ask the responder to say on this connection, between runs, when a pulled feed changes
    /// ([`Frame::Notify`]).
    pub notify: bool,
    /// The most bytes per second either side may send in this run's bulk data (0: no cap):
    /// this side paces what it sends, and HELLO asks the responder to do the same.
    pub max_rate: u64,
}

/// How the responder runs.
#[derive(Clone, Copy, Debug)]
pub struct ResponderConfig {
    /// The initiator's instance key (its TLS identity).
    pub peer: PublicKey,
    /// Wall-clock time of the run, Unix seconds.
    pub now_secs: u64,
    /// What the peer may make this side hold.
    pub limits: Limits,
}

/// Why a feed is refused at HELLO.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Refusal {
    /// An error code ([`wire::code`]).
    pub code: u32,
    /// What is wrong, for the peer's operator.
    pub reason: String,
}

impl Refusal {
    /// A refusal with `code`.
    pub fn new(code: u32, reason: impl Into<String>) -> Refusal {
        Refusal {
            code,
            reason: reason.into(),
        }
    }
}

/// Decides what a token may do on the responder.
pub trait Authorizer {
    /// `Ok` if `token` may replicate `feed` in `mode`: reading (pull) and writing (push, mirror)
    /// are separate rights, and a refusal for the mode is [`wire::code::MODE_NOT_ALLOWED`].
    fn authorize(&self, token: &str, feed: &str, mode: Mode) -> Result<(), Refusal>;
    /// The guard rail for what the responder receives (push and mirror).
    fn guard(&self) -> GuardRail {
        GuardRail::default()
    }
    /// Whether the peer with this key may still run replications on its open connection (a
    /// peer removed since it connected is not).
    fn peer_allowed(&self, _peer: &PublicKey) -> bool {
        true
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
    /// A pull into a side that held nothing of the feed: every entry sent unasked.
    All,
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
    /// The authoritative side's checkpoint this side accepted at the end (pull), to record
    /// where it came from.
    pub checkpoint: Option<Checkpoint>,
    /// Dry run: entries that would be added or replaced.
    pub plan_adds: u64,
    /// Dry run: entries that would be deleted.
    pub plan_deletes: u64,
    /// Dry run: blob bytes that would be fetched.
    pub plan_bytes: u64,
    /// Why the feed failed, if it did.
    pub error: Option<String>,
    /// The deletion guard rail stopped the feed: the replica is held back, not broken.
    pub held_back: bool,
}

impl FeedReport {
    /// Whether both sides ended on the same root.
    pub fn converged(&self) -> bool {
        self.error.is_none() && self.local_root.is_some() && self.local_root == self.peer_root
    }
}

/// Why a session failed as a whole.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum SessionError {
    /// The peer said so.
    #[error("peer error {code}: {reason}")]
    Peer { code: u32, reason: String },
    /// The peer broke the protocol (a frame it may not send, or not now).
    #[error("protocol violation: {0}")]
    Protocol(String),
    /// The peer asked for something it may not have: a feed it was refused, a blob no
    /// document sent to it names.
    #[error("unauthorized request: {0}")]
    Unauthorized(String),
    /// The peer speaks another protocol version.
    #[error("{0}")]
    Version(String),
    /// Local store failure, with the store's own error (shared: a session error is cloned
    /// into every feed report it ends).
    #[error("local store: {0}")]
    Store(Arc<StoreError>),
    /// The peer sent data that failed verification.
    #[error("peer sent bad data: {0}")]
    BadData(String),
}

impl SessionError {
    /// The error code (wire-spec section 10) the peer hears, and the connection closes with;
    /// 0 for the peer's own error.
    pub fn code(&self) -> u32 {
        match self {
            SessionError::Protocol(_) => code::PROTOCOL,
            SessionError::Unauthorized(_) => code::UNAUTHORIZED,
            SessionError::Version(_) => code::VERSION,
            SessionError::Store(_) => code::INTERNAL,
            SessionError::BadData(_) => code::BAD_DATA,
            SessionError::Peer { .. } => 0,
        }
    }
}

/// Totals over a session.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SessionStats {
    /// Blob pieces sent.
    pub pieces_sent: u64,
    /// Blobs sent: those the peer asked for (each sent whole or from where its copy stopped)
    /// and small ones sent along with their documents.
    pub blobs_sent: u64,
    /// Blob payload bytes sent.
    pub blob_bytes_sent: u64,
    /// Blob payload bytes the peer asked this side for or that went with documents (sending)
    /// plus those this side asked the peer for (receiving): the total a progress display
    /// works towards.
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
    keys: DocKeys,
}

/// The documents owed to the peer for one feed, as 8-byte key prefixes (the first 8 bytes of
/// BLAKE3(key)): they become entries (those under each prefix that the run's filter selects,
/// as they are when read) a few hundred at a time while frames are filled, so a long list costs
/// 8 bytes an entry until it goes out, whatever the feed's size.
#[derive(Default)]
struct DocKeys {
    key8s: VecDeque<u64>,
    /// Buckets (first bytes of the key hash) whose every entry is still to go, read one
    /// bucket at a time after `key8s`: a feed sent whole to a side that holds none of it.
    buckets: VecDeque<u8>,
    /// Read from the store, next to go.
    entries: VecDeque<Entry>,
    /// Keys not to send after all (dropped as stale while the list was made).
    skip: HashSet<String>,
}

/// Prefixes a [`DocKeys`] reads at a time.
pub(crate) const DOC_KEYS_READ: usize = 256;

impl DocKeys {
    fn new(key8s: impl IntoIterator<Item = u64>) -> DocKeys {
        DocKeys {
            key8s: key8s.into_iter().collect(),
            ..DocKeys::default()
        }
    }

    /// Every entry of the feed (that the run's filter selects), in key-hash order.
    fn everything() -> DocKeys {
        DocKeys {
            buckets: (0..=255).collect(),
            ..DocKeys::default()
        }
    }

    fn is_empty(&self) -> bool {
        self.entries.is_empty() && self.key8s.is_empty() && self.buckets.is_empty()
    }

    /// The next entry to send, reading the next prefixes when those read are used up.
    fn front(
        &mut self,
        store: &Store,
        feed: &str,
        filter: Option<&Filter>,
    ) -> Result<Option<&Entry>, SessionError> {
        while self.entries.is_empty() && !(self.key8s.is_empty() && self.buckets.is_empty()) {
            let read = if self.key8s.is_empty() {
                let b = self.buckets.pop_front().unwrap_or_default();
                view_entries_under(store, feed, &[b], filter)?
            } else {
                let n = self.key8s.len().min(DOC_KEYS_READ);
                let batch: Vec<u64> = self.key8s.drain(..n).collect();
                view_entries_at_key8s(store, feed, &batch, filter)?
            };
            for (_, e) in read {
                if !self.skip.contains(&e.key) {
                    self.entries.push_back(e);
                }
            }
        }
        Ok(self.entries.front())
    }
}

/// One blob piece owed to the peer: chunk groups `start..end` of `hash`.
struct PendingPiece {
    hash: Hash,
    size: u64,
    start: u64,
    end: u64,
}

/// Verified documents of one feed waiting for the blobs they name.
struct Batch {
    docs: Vec<VerifiedDoc>,
    bytes: u64,
    waiting: HashSet<Hash>,
    /// Blobs received with or for the batch, held out of GC until it is applied.
    _pins: Vec<cairn_store::BlobPin>,
}

/// Where one feed of a session stands. Every per-feed frame that arrives is first judged by
/// [`verdict`] from the feed's phase alone (wire-spec section 13 tabulates it per role and
/// mode); the handlers then check what the frame says.
///
/// A feed moves forward only: `Hello` (initiator) → `Reconcile` → `Documents` → `Blobs` →
/// `Final` → `Done`, skipping what its path does not need (equal roots go straight to
/// `Final`, a change log to `Documents`), or to `Failed` from anywhere. The one step back is a
/// pull whose change log did not reach the upstream's root: both sides go from `Documents` or
/// `Final` back to `Reconcile` for a second round by summary.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Phase {
    /// Initiator: named in HELLO, its status not read yet.
    #[default]
    Hello,
    /// The difference is being worked out: summary, sketches, item lists, DIFF pages.
    Reconcile(Recon),
    /// The difference is known and this side has sent or queued everything it sends
    /// unasked; documents (`receiving`: also to this side) are still moving.
    Documents {
        /// Documents come to this side in this round.
        receiving: bool,
    },
    /// Every document for this side has arrived; blobs they name are still coming before
    /// the last of them can be applied.
    Blobs,
    /// This side's state for the feed is final and it has said so (DONE, or equal roots);
    /// waiting for the peer's DONE.
    Final,
    /// Both sides are final and the end was handled (checkpoint accepted, mirror clock
    /// raised).
    Done,
    /// Stopped here or by the peer (FEED-FAILED); frames still in flight for it are ignored.
    Failed,
}

/// The steps of [`Phase::Reconcile`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Recon {
    /// Initiator: its sketch or item list is out. Responder: waiting for a sketch or the
    /// first item-list page (after HELLO or SUMMARY-REQUEST).
    #[default]
    Open,
    /// Initiator: a SUMMARY-REQUEST is outstanding (second round of a pull).
    SummaryRequested,
    /// Responder: sketches answered with SKETCH-FAILED so far.
    Sketched {
        /// How many.
        failures: u32,
    },
    /// Responder: item-list pages are arriving.
    Listing,
    /// Responder of a pull to an initiator that holds nothing of the feed: its status was
    /// `all`, and every entry follows HELLO-REPLY without reconciliation.
    All,
}

impl Phase {
    /// The phase's name in wire-spec section 13.
    pub fn name(self) -> &'static str {
        match self {
            Phase::Hello => "hello",
            Phase::Reconcile(_) => "reconcile",
            Phase::Documents { .. } => "documents",
            Phase::Blobs => "blobs",
            Phase::Final => "final",
            Phase::Done => "done",
            Phase::Failed => "failed",
        }
    }

    /// One phase of each name, in order (a reconcile at its first step, documents coming to
    /// this side).
    pub const EACH: [Phase; 7] = [
        Phase::Hello,
        Phase::Reconcile(Recon::Open),
        Phase::Documents { receiving: true },
        Phase::Blobs,
        Phase::Final,
        Phase::Done,
        Phase::Failed,
    ];
}

/// What a feed does with a frame that names it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Handled.
    Accept,
    /// Read and dropped: the feed failed, and the peer may not have heard yet.
    Ignore,
    /// A protocol violation that ends the session.
    Refuse,
}

/// The frames that name one feed, as wire-spec section 13 lists them.
pub const FEED_FRAMES: [&str; 10] = [
    "SUMMARY-REQUEST",
    "SUMMARY",
    "SKETCH",
    "SKETCH-FAILED",
    "DIFFERENCE",
    "ITEM-LIST",
    "DIFF",
    "DOCS",
    "DONE",
    "FEED-FAILED",
];

/// Which per-feed frames (by wire name, [`FEED_FRAMES`]) a feed in `phase` accepts at `role`
/// in `mode`: the one place where a frame out of turn is refused. Frames
/// travel on several streams, so a phase accepts what an honest peer can send before it
/// hears this side's latest: DOCS may overtake the DIFF pages they follow, and a pull
/// responder's DONE after a change log may arrive when the initiator has already asked for a
/// second round.
pub fn verdict(role: Role, mode: Mode, phase: Phase, frame: &str) -> Verdict {
    use Verdict::{Accept, Ignore, Refuse};
    let to_initiator = role == Role::Initiator;
    // Who may receive the frame at all in this mode.
    let direction = match frame {
        "SUMMARY" => to_initiator && mode == Mode::Pull,
        "SKETCH-FAILED" | "DIFF" => to_initiator,
        "SUMMARY-REQUEST" => !to_initiator && mode == Mode::Pull,
        "SKETCH" | "ITEM-LIST" | "DIFFERENCE" => !to_initiator,
        "DOCS" => match mode {
            Mode::Pull => to_initiator,
            Mode::Push => !to_initiator,
            Mode::Mirror => true,
        },
        "DONE" | "FEED-FAILED" => true,
        _ => false,
    };
    if !direction {
        return Refuse;
    }
    if phase == Phase::Failed {
        return Ignore;
    }
    let accepted: &[&str] = match frame {
        "SUMMARY" | "SKETCH-FAILED" | "DIFF" | "SKETCH" | "ITEM-LIST" | "DIFFERENCE" => {
            &["reconcile"]
        }
        "SUMMARY-REQUEST" => &["final"],
        "DOCS" if to_initiator => &["reconcile", "documents"],
        "DOCS" => &["documents"],
        "DONE" if to_initiator && mode == Mode::Pull => {
            &["reconcile", "documents", "blobs", "final"]
        }
        "DONE" => &["documents", "blobs", "final"],
        // The initiator checks the writer's checkpoint against what it ends up with only once
        // both sides said DONE: its refusal reaches a responder already done.
        "FEED-FAILED" => &["reconcile", "documents", "blobs", "final", "done"],
        _ => &[],
    };
    if accepted.contains(&phase.name()) {
        Accept
    } else {
        Refuse
    }
}

/// What the initiator gathers while DIFF pages arrive: nothing is removed or sent until the
/// last page, so the deletions of the whole round meet the guard rail together.
#[derive(Default)]
struct DiffPages {
    wants: Vec<u64>,
    removals: Vec<u64>,
    absent: HashSet<u64>,
    pages: u64,
}

#[derive(Default)]
struct FeedJob {
    name: String,
    report: FeedReport,
    /// A filtered pull: the entries of the feed this run moves and compares.
    filter: Option<Filter>,
    /// How received documents meet what is held; `None` when this side receives none.
    rule: Option<ApplyRule>,
    /// Mirror: the peer's collected-tombstone clock for this feed, capped at what this side
    /// has seen the peer hold.
    peer_collected: u64,
    guard: GuardRail,
    /// Entries held when the run began: what the guard rail's share is of.
    run_base: u64,
    /// Deletions made (or, in a dry run, planned) so far in this run, counted against the
    /// guard rail together.
    run_deletes: u64,
    /// Responder: keys of this round's item-list pages to act on once the last page is in
    /// (push: extras to remove, as 8-byte key hashes; mirror: entries only this side holds,
    /// which may be stale).
    pending_removals: Vec<u64>,
    pending_stale: Vec<u64>,
    dry_run: bool,
    /// Responder of a pull: the checkpoint its status carried, so DONE need not repeat it.
    sent_checkpoint: Option<Vec<u8>>,
    local_items: Vec<Item>,
    /// Where each bucket's items start in `local_items` (initiator, for paging the list).
    bucket_starts: Vec<(u8, usize)>,
    buckets: Vec<u8>,
    sketch_cells: usize,
    sketch_retries: u32,
    phase: Phase,
    /// Responder: buckets item-list pages have covered this round (each may come once).
    listed_buckets: HashSet<u8>,
    diff_pages: DiffPages,
    /// Responder: 8-byte key prefixes whose documents go with the last DIFF page of the round.
    to_send: Vec<u64>,
    /// Responder: keys asked for in this round's DIFF pages.
    wants_sent: u64,
    batches: Vec<Batch>,
    waiting_bytes: u64,
    incoming: HashMap<Hash, IncomingBlob>,
    /// DOCS frames received this round, and how many there are in all once the one marked
    /// `last` (or a DIFF marked `last`) has arrived; they may arrive in any order, each on
    /// its own stream.
    docs_seen: u64,
    docs_total: Option<u64>,
    /// Sequence number of the next DOCS frame this side sends for the feed.
    docs_seq_out: u64,
    /// The authoritative side's checkpoints (from its status, then from its DONE), checked
    /// for trust and freshness when they arrived; one is accepted once both sides are done.
    checkpoints: Vec<Vec<u8>>,
    /// The peer said DONE for the feed in this run (it does once).
    peer_done: bool,
    /// This side said DONE (or had nothing to say: equal roots); once per run, so a second
    /// round after a change log ends without another.
    local_done: bool,
}

impl FeedJob {
    fn new(name: &str, rule: Option<ApplyRule>, guard: GuardRail, dry_run: bool) -> FeedJob {
        FeedJob {
            name: name.to_owned(),
            report: FeedReport {
                feed: name.to_owned(),
                ..FeedReport::default()
            },
            rule,
            guard,
            dry_run,
            ..FeedJob::default()
        }
    }

    /// Every DOCS frame of this round has arrived.
    fn docs_complete(&self) -> bool {
        self.docs_total == Some(self.docs_seen)
    }

    /// Starts a new reconciliation round (after a log that did not converge).
    fn new_round(&mut self, step: Recon) {
        self.phase = Phase::Reconcile(step);
        self.docs_seen = 0;
        self.docs_total = None;
        self.docs_seq_out = 0;
        self.listed_buckets.clear();
        self.diff_pages = DiffPages::default();
        self.to_send.clear();
        self.wants_sent = 0;
        self.pending_removals.clear();
        self.pending_stale.clear();
        self.sketch_retries = 0;
        self.sketch_cells = 0;
    }

    fn fail(&mut self, reason: String) {
        self.phase = Phase::Failed;
        self.report.error = Some(reason);
    }
}

/// One side of a replication connection.
pub struct Session {
    role: Role,
    mode: Mode,
    token: String,
    /// The other side's instance key.
    peer: PublicKey,
    now_secs: u64,
    limits: Limits,
    outbox: VecDeque<Frame>,
    /// Blob pieces asked for and not yet encoded: read from the store one at a time as the
    /// transport takes them, so a large blob is never held in memory whole.
    pieces: VecDeque<PendingPiece>,
    /// Documents still to send, per feed, read a batch at a time as the transport takes them.
    doc_queue: VecDeque<DocQueue>,
    /// Blobs named by documents this side sent in this run, with their sizes: the only blobs
    /// the peer may ask for, each once.
    offered: HashMap<Hash, u64>,
    /// Initiator: the signed tree heads offered in HELLO (the answer proves them).
    heads_offered: Vec<Vec<u8>>,
    jobs: BTreeMap<String, FeedJob>,
    /// Feeds refused at HELLO: reported, and gone from the session.
    refused: HashMap<String, FeedReport>,
    order: Vec<String>,
    error: Option<SessionError>,
    hello_done: bool,
    stats: SessionStats,
    /// Initiator: asked for notifications; responder: the initiator asked for them.
    notify: bool,
    /// The cap on this side's sending rate, bytes per second (0: none).
    max_rate: u64,
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

pub(crate) fn cursor_to_wire(c: Cursor) -> WireCursor {
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

pub(crate) fn pack_cells(t: &Iblt) -> Vec<u8> {
    let mut out = Vec::with_capacity(t.cells().len() * CELL_BYTES);
    for c in t.cells() {
        // Counts travel modulo 2^16: a pure cell of the difference is still exactly +1 or -1.
        out.extend_from_slice(&(c.count as u16).to_be_bytes());
        out.extend_from_slice(&c.key_sum.to_be_bytes());
        out.extend_from_slice(&c.leaf_sum.to_be_bytes());
        out.extend_from_slice(&(c.check_sum as u32).to_be_bytes());
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
            check_sum: u64::from(u32::from_be_bytes([c[18], c[19], c[20], c[21]])),
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
    SessionError::Store(Arc::new(e))
}

/// The first byte of an item's key hash: its level-1 bucket.
fn item_bucket(i: &Item) -> u8 {
    (i.key >> 56) as u8
}

impl Session {
    /// Starts the initiator side: HELLO is queued at once.
    pub fn initiator(store: &Store, config: InitiatorConfig) -> Result<Session, SessionError> {
        if config.feeds.len() > MAX_HELLO_FEEDS {
            return Err(SessionError::Protocol(format!(
                "a session carries at most {MAX_HELLO_FEEDS} feeds; this run names {}",
                config.feeds.len()
            )));
        }
        let mut feeds = Vec::new();
        let mut s = Session::new(
            Role::Initiator,
            config.mode,
            config.token.clone(),
            config.peer,
            config.now_secs,
            config.limits,
        );
        for name in &config.feeds {
            if s.jobs.contains_key(name) {
                continue;
            }
            let filter = match config.mode {
                Mode::Pull => config.filters.get(name).cloned(),
                _ => None,
            };
            let sum = view_summary(store, name, filter.as_ref())?;
            let since = if config.mode == Mode::Pull {
                config.since.get(name).copied()
            } else {
                None
            };
            // A write (push, mirror) carries the writer's checkpoint: the responder takes it
            // only from a key it trusts for the feed.
            let checkpoint = match config.mode {
                Mode::Pull => None,
                Mode::Push | Mode::Mirror => Some(
                    store
                        .checkpoint_to_serve(
                            name,
                            config.limits.checkpoint_ttl_secs,
                            config.limits.checkpoint_refresh_secs,
                        )
                        .map_err(store_err)?,
                ),
            };
            feeds.push(FeedHello {
                feed: name.clone(),
                root: *sum.root.fingerprint.as_bytes(),
                count: sum.root.count,
                since: since.map(cursor_to_wire),
                filter: filter.clone(),
                checkpoint,
                collected: if config.mode == Mode::Mirror {
                    sum.feed.collected_hlc
                } else {
                    0
                },
            });
            let rule = match config.mode {
                Mode::Push => None,
                Mode::Pull => Some(ApplyRule::Authoritative),
                Mode::Mirror => Some(ApplyRule::LastWriterWins),
            };
            let mut job = FeedJob::new(name, rule, config.guard, config.dry_run);
            job.run_base = sum.root.count;
            job.filter = filter;
            s.jobs.insert(name.clone(), job);
            s.order.push(name.clone());
        }
        s.heads_offered = store.log_heads_to_offer(&s.peer).map_err(store_err)?;
        s.notify = config.notify;
        s.max_rate = config.max_rate;
        s.outbox.push_back(Frame::Hello {
            version: wire::PROTOCOL_VERSION,
            token: config.token,
            mode: config.mode,
            feeds,
            heads: s.heads_offered.iter().cloned().map(ByteBuf::from).collect(),
            notify: config.notify,
            max_rate: config.max_rate,
        });
        Ok(s)
    }

    /// Starts the responder side; it waits for HELLO.
    pub fn responder(config: ResponderConfig) -> Session {
        Session::new(
            Role::Responder,
            Mode::Pull,
            String::new(),
            config.peer,
            config.now_secs,
            config.limits,
        )
    }

    fn new(
        role: Role,
        mode: Mode,
        token: String,
        peer: PublicKey,
        now_secs: u64,
        limits: Limits,
    ) -> Session {
        Session {
            role,
            mode,
            token,
            peer,
            now_secs,
            limits,
            outbox: VecDeque::new(),
            pieces: VecDeque::new(),
            doc_queue: VecDeque::new(),
            offered: HashMap::new(),
            heads_offered: Vec::new(),
            jobs: BTreeMap::new(),
            refused: HashMap::new(),
            order: Vec::new(),
            error: None,
            hello_done: false,
            stats: SessionStats::default(),
            notify: false,
            max_rate: 0,
        }
    }

    /// The most bytes per second this side may send (0: no cap): the initiator's own
    /// setting, or what the initiator's HELLO asked of the responder.
    pub fn max_rate(&self) -> u64 {
        self.max_rate
    }

    /// Responder: the feeds the initiator pulled or mirrored in this run and asked to hear
    /// about when they change (none unless HELLO asked, the mode is pull or mirror and the
    /// feed was accepted). A mirror peer told at once is a second writer that holds the first
    /// one's writes, and covers its checkpoint, seconds after they were made: a failover to
    /// it loses nothing it could have had.
    pub fn notify_feeds(&self) -> Vec<String> {
        if self.role != Role::Responder || !self.notify || self.mode == Mode::Push {
            return Vec::new();
        }
        self.order
            .iter()
            .filter(|f| self.jobs.contains_key(*f) && !self.refused.contains_key(*f))
            .cloned()
            .collect()
    }

    /// Totals for the session.
    pub fn stats(&self) -> &SessionStats {
        &self.stats
    }

    /// Whether HELLO (responder) or its reply (initiator) has been handled: before it, the
    /// transport accepts no bulk streams.
    pub fn hello_done(&self) -> bool {
        self.hello_done
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
                    .all(|j| matches!(j.phase, Phase::Failed | Phase::Done)))
    }

    /// Per-feed reports, in HELLO order (refused feeds included).
    pub fn reports(&self) -> Vec<FeedReport> {
        self.order
            .iter()
            .filter_map(|n| {
                self.jobs
                    .get(n)
                    .map(|j| &j.report)
                    .or_else(|| self.refused.get(n))
            })
            .cloned()
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

    /// Ends the session with `e`: every frame still queued is dropped and the peer hears the
    /// error (unless the peer's own error ended it).
    pub fn fail(&mut self, e: SessionError) {
        if self.error.is_some() {
            return;
        }
        tracing::warn!(role = ?self.role, "replication session failed: {e}");
        // Control frames already queued answer earlier frames and go first; the error ends
        // the session after them (documents and pieces not yet read are dropped).
        let code = e.code();
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
        // Everything said while handling a frame about a feed is told under that feed.
        let span = frame
            .feed()
            .map(|feed| tracing::debug_span!("feed", feed = %feed).entered());
        if let Err(e) = self.dispatch(store, frame, authorizer) {
            self.fail(e);
        }
        drop(span);
    }

    /// The job of a feed in this run; a feed refused at HELLO, or never in it, is an error
    /// that ends the session.
    fn job(&mut self, feed: &str) -> Result<&mut FeedJob, SessionError> {
        if self.refused.contains_key(feed) {
            return Err(SessionError::Unauthorized(format!(
                "frame for feed `{feed}`, which was refused in this run"
            )));
        }
        self.jobs.get_mut(feed).ok_or_else(|| {
            SessionError::Protocol(format!("frame for feed `{feed}` that is not in this run"))
        })
    }

    /// Marks `feed` failed here and tells the peer, so both sides finish the run.
    fn fail_feed(&mut self, feed: &str, code: u32, reason: String) -> Result<(), SessionError> {
        tracing::warn!(feed, "{reason}");
        self.job(feed)?.fail(reason.clone());
        self.outbox.push_back(Frame::FeedFailed {
            feed: feed.to_owned(),
            code,
            reason,
        });
        Ok(())
    }

    fn dispatch(
        &mut self,
        store: &Store,
        frame: Frame,
        authorizer: Option<&dyn Authorizer>,
    ) -> Result<(), SessionError> {
        if !self.hello_done {
            let opening = matches!(
                (self.role, &frame),
                (_, Frame::Error { .. })
                    | (
                        Role::Responder,
                        Frame::Hello { .. } | Frame::RotationRequest { .. }
                    )
                    | (Role::Initiator, Frame::HelloReply { .. })
            );
            if !opening {
                return Err(SessionError::Protocol(format!(
                    "{} before HELLO",
                    frame.name()
                )));
            }
        }
        // Every frame about one feed is judged first by that feed's phase, here alone.
        if let Some(feed) = frame.feed() {
            let (role, mode, name) = (self.role, self.mode, frame.name());
            let phase = self.job(feed)?.phase;
            match verdict(role, mode, phase, name) {
                Verdict::Accept => {}
                Verdict::Ignore => return Ok(()),
                Verdict::Refuse => {
                    return Err(SessionError::Protocol(format!(
                        "{name} for `{feed}` in phase {} at the {role:?} of a {mode:?}",
                        phase.name()
                    )))
                }
            }
        }
        match (self.role, frame) {
            (_, Frame::Error { code, reason }) => Err(SessionError::Peer { code, reason }),
            (Role::Responder, Frame::RotationRequest { key }) if !self.hello_done => {
                // A peer that pinned a key this instance moved away from asks how it moved;
                // the answer ends the session (the run follows on a new stream).
                let from = PublicKey::from_bytes(key).ok_or_else(|| {
                    SessionError::Protocol("ROTATION-REQUEST names no valid key".into())
                })?;
                let statements = store.rotation_chain(&from).map_err(store_err)?;
                self.outbox.push_back(Frame::Rotation {
                    statements: statements.into_iter().map(ByteBuf::from).collect(),
                });
                self.hello_done = true;
                Ok(())
            }
            (
                Role::Responder,
                Frame::Hello {
                    version,
                    token,
                    mode,
                    feeds,
                    heads,
                    notify,
                    max_rate,
                },
            ) => {
                self.notify = notify;
                self.max_rate = max_rate;
                self.on_hello(store, version, token, mode, feeds, authorizer)?;
                self.answer_log(store, heads)
            }
            (Role::Initiator, Frame::HelloReply { feeds, log }) => {
                if self.hello_done || feeds.len() != self.order.len() {
                    return Err(SessionError::Protocol("unexpected HELLO reply".into()));
                }
                self.hello_done = true;
                self.check_log(store, log.unwrap_or_default())?;
                let names = self.order.clone();
                for (name, status) in names.iter().zip(feeds) {
                    self.initiator_status(store, name, status)?;
                }
                Ok(())
            }
            (Role::Responder, Frame::SummaryRequest { feed }) => {
                let mode = self.mode;
                let job = self.job(&feed)?;
                if job.report.path != Path::Log {
                    return Err(SessionError::Protocol(format!(
                        "SUMMARY-REQUEST for `{feed}`, which was not answered with a log"
                    )));
                }
                job.report.path = Path::Sketch;
                job.new_round(Recon::Open);
                let filter = job.filter.clone();
                let checkpoint =
                    serve_checkpoint(store, mode, &feed, &self.limits, filter.as_ref())?;
                self.job(&feed)?.sent_checkpoint.clone_from(&checkpoint);
                let status = summary(store, &feed, mode, checkpoint, filter.as_ref())?;
                self.outbox.push_back(Frame::Summary { feed, status });
                Ok(())
            }
            (Role::Initiator, Frame::Summary { feed, status }) => {
                let job = self.job(&feed)?;
                if job.phase != Phase::Reconcile(Recon::SummaryRequested)
                    || !matches!(status, FeedStatus::Summary { .. })
                {
                    return Err(SessionError::Protocol(format!(
                        "SUMMARY for `{feed}` that was not asked for"
                    )));
                }
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
            ) => self.on_sketch(store, &feed, &buckets, seed, &cells),
            (Role::Responder, Frame::Difference { feed, mine, yours }) => {
                self.on_difference(store, &feed, &mine, &yours)
            }
            (
                Role::Responder,
                Frame::ItemList {
                    feed,
                    buckets,
                    items,
                    last,
                },
            ) => self.on_item_list(store, &feed, &buckets, &items, last),
            (Role::Initiator, Frame::SketchFailed { feed }) => {
                let job = self.job(&feed)?;
                if job.report.path != Path::Sketch
                    || job.phase != Phase::Reconcile(Recon::Open)
                    || job.sketch_cells == 0
                {
                    return Err(SessionError::Protocol(format!(
                        "SKETCH-FAILED for `{feed}`, which has no sketch outstanding"
                    )));
                }
                job.sketch_retries += 1;
                let bigger = iblt::cells_for(job.sketch_cells.saturating_mul(2));
                if job.sketch_retries > MAX_SKETCH_RETRIES || bigger > MAX_SKETCH_CELLS {
                    job.report.path = Path::List;
                    self.send_item_list(&feed)
                } else {
                    job.sketch_cells = bigger;
                    let frame = sketch_frame(job)?;
                    self.outbox.push_back(frame);
                    Ok(())
                }
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
                    more,
                },
            ) => self.on_diff(
                store, &feed, docs, &remove, &want, &absent, blobs, last, more,
            ),
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
                if job.docs_total.is_some_and(|t| seq >= t) {
                    return Err(SessionError::Protocol(format!(
                        "DOCS frame {seq} for `{feed}` after the last one"
                    )));
                }
                job.docs_seen += 1;
                if last {
                    job.docs_total = Some(seq.saturating_add(1));
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
                job.fail(format!("peer stopped this feed (code {code}): {reason}"));
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
            (
                _,
                Frame::Done {
                    feed,
                    root,
                    count,
                    checkpoint,
                },
            ) => self.on_done(store, &feed, root, count, checkpoint),
            (role, other) => Err(SessionError::Protocol(format!(
                "{role:?} cannot receive {}",
                other.name()
            ))),
        }
    }

    /// Responder: answers the transparency-log heads HELLO offered, in the HELLO-REPLY just
    /// queued (after the statuses, so its head covers the checkpoints they carry).
    fn answer_log(&mut self, store: &Store, heads: Vec<ByteBuf>) -> Result<(), SessionError> {
        let heads: Vec<Vec<u8>> = heads.into_iter().map(ByteBuf::into_vec).collect();
        let via = store.peer_label(&self.peer).map_err(store_err)?;
        let answer = store.log_answer(&heads, &via).map_err(store_err)?;
        let log = wire::WireLog {
            head: answer.head,
            proofs: answer
                .proofs
                .iter()
                .map(|p| ByteBuf::from(p.iter().flat_map(|h| *h.as_bytes()).collect::<Vec<u8>>()))
                .collect(),
            heads: answer.heads.into_iter().map(ByteBuf::from).collect(),
        };
        if let Some(Frame::HelloReply { log: slot, .. }) = self
            .outbox
            .iter_mut()
            .rev()
            .find(|f| matches!(f, Frame::HelloReply { .. }))
        {
            *slot = Some(log);
        }
        Ok(())
    }

    /// Initiator: checks the responder's transparency-log answer against the heads offered.
    /// A contradiction is recorded as a split view (it does not stop the run: the feeds'
    /// own checks still hold); a head not signed by the responder is bad data.
    fn check_log(&mut self, store: &Store, log: wire::WireLog) -> Result<(), SessionError> {
        let proofs = log
            .proofs
            .iter()
            .map(|p| {
                if p.len() % 32 != 0 || p.len() / 32 > cairn_store::tlog::MAX_PROOF {
                    return Err(SessionError::Protocol(
                        "a consistency proof is not a list of at most 65 hashes".into(),
                    ));
                }
                Ok(p.chunks(32).filter_map(Hash::from_slice).collect())
            })
            .collect::<Result<Vec<Vec<Hash>>, _>>()?;
        let answer = cairn_store::tlog::LogAnswer {
            head: log.head,
            proofs,
            heads: log.heads.into_iter().map(ByteBuf::into_vec).collect(),
        };
        let via = store.peer_label(&self.peer).map_err(store_err)?;
        let offered = std::mem::take(&mut self.heads_offered);
        store
            .log_check_answer(&self.peer, &offered, &answer, &via, self.now_secs)
            .map_err(|e| SessionError::BadData(format!("transparency log: {e}")))
    }

    fn on_hello(
        &mut self,
        store: &Store,
        version: u32,
        token: String,
        mode: Mode,
        feeds: Vec<FeedHello>,
        authorizer: Option<&dyn Authorizer>,
    ) -> Result<(), SessionError> {
        if self.hello_done {
            return Err(SessionError::Protocol("second HELLO".into()));
        }
        self.hello_done = true;
        if version != wire::PROTOCOL_VERSION {
            return Err(SessionError::Version(format!(
                "protocol version {version} is not supported; this peer speaks {}",
                wire::PROTOCOL_VERSION
            )));
        }
        if feeds.len() > MAX_HELLO_FEEDS {
            return Err(SessionError::Protocol(format!(
                "HELLO names {} feeds; at most {MAX_HELLO_FEEDS} are allowed",
                feeds.len()
            )));
        }
        let mut names = HashSet::new();
        if let Some(dup) = feeds.iter().find(|h| !names.insert(h.feed.as_str())) {
            return Err(SessionError::Protocol(format!(
                "HELLO names feed `{}` twice",
                dup.feed
            )));
        }
        self.mode = mode;
        self.token = token.clone();
        let guard = authorizer.map(|a| a.guard()).unwrap_or_default();
        let mut log_budget = MAX_LOG_BYTES;
        let mut statuses = Vec::with_capacity(feeds.len());
        for h in feeds {
            let status =
                self.responder_hello(store, &token, guard, h, authorizer, &mut log_budget)?;
            statuses.push(status);
        }
        self.outbox.push_back(Frame::HelloReply {
            feeds: statuses,
            log: None,
        });
        for name in self.order.clone() {
            if self
                .jobs
                .get(&name)
                .is_some_and(|j| j.phase == Phase::Reconcile(Recon::All))
            {
                self.send_everything(store, &name)?;
            }
            if self.jobs.contains_key(&name) {
                self.maybe_done(store, &name)?;
                self.finish_feed(store, &name)?;
            }
        }
        Ok(())
    }

    /// The responder's answer for one feed of HELLO. A refused feed is recorded for the
    /// report and gets no job: nothing later may name it.
    fn responder_hello(
        &mut self,
        store: &Store,
        token: &str,
        guard: GuardRail,
        h: FeedHello,
        authorizer: Option<&dyn Authorizer>,
        log_budget: &mut usize,
    ) -> Result<FeedStatus, SessionError> {
        let (mode, limits) = (self.mode, self.limits);
        self.order.push(h.feed.clone());
        match self.admit(store, token, mode, &h, authorizer)? {
            Err(refusal) => {
                tracing::debug!(feed = %h.feed, code = refusal.code, "refused: {}", refusal.reason);
                self.refused.insert(
                    h.feed.clone(),
                    FeedReport {
                        feed: h.feed.clone(),
                        error: Some(refusal.reason.clone()),
                        ..FeedReport::default()
                    },
                );
                Ok(FeedStatus::Refused {
                    code: refusal.code,
                    reason: refusal.reason,
                })
            }
            Ok((sum, signed)) => {
                let rule = match mode {
                    Mode::Pull => None,
                    Mode::Push => Some(ApplyRule::Authoritative),
                    Mode::Mirror => Some(ApplyRule::LastWriterWins),
                };
                let mut job = FeedJob::new(&h.feed, rule, guard, false);
                job.phase = Phase::Reconcile(Recon::Open);
                job.run_base = sum.root.count;
                job.filter = h.filter.clone();
                let filter = h.filter.as_ref();
                let checkpoint = match signed {
                    Some(cp) => Some(cp),
                    None => serve_checkpoint(store, mode, &h.feed, &limits, filter)?,
                };
                job.sent_checkpoint.clone_from(&checkpoint);
                if mode != Mode::Pull {
                    job.checkpoints.extend(h.checkpoint.clone());
                }
                if mode == Mode::Mirror {
                    let seen = store
                        .peer_seen_hlc(&self.peer, &h.feed)
                        .map_err(store_err)?;
                    job.peer_collected = h.collected.min(seen);
                }
                let status = if sum.root.fingerprint.as_bytes() == &h.root
                    && sum.root.count == h.count
                {
                    job.report.path = Path::Equal;
                    job.phase = Phase::Final;
                    job.local_done = true;
                    job.peer_done = true;
                    job.report.local_root = Some((h.root, h.count));
                    job.report.peer_root = Some((h.root, h.count));
                    FeedStatus::Equal {
                        cursor: cursor_to_wire(sum.feed.cursor()),
                        checkpoint,
                    }
                } else {
                    let log = match (mode, h.since) {
                        (Mode::Pull, Some(since)) => {
                            log_suffix(store, &h.feed, cursor_from_wire(since), log_budget, filter)?
                        }
                        _ => None,
                    };
                    match log {
                        Some(changes) => {
                            job.report.path = Path::Log;
                            job.report.docs_sent +=
                                changes.iter().filter(|c| c.doc.is_some()).count() as u64;
                            job.phase = Phase::Documents { receiving: false };
                            for c in &changes {
                                if let Some(d) = &c.doc {
                                    offer_blobs(&mut self.offered, d);
                                }
                            }
                            FeedStatus::Log {
                                root: *sum.root.fingerprint.as_bytes(),
                                count: sum.root.count,
                                cursor: cursor_to_wire(sum.feed.cursor()),
                                changes,
                                checkpoint,
                            }
                        }
                        // An initiator that holds nothing of the feed gets all of it, with no
                        // summary to build here or to peel there.
                        None if mode == Mode::Pull && h.count == 0 => {
                            job.phase = Phase::Reconcile(Recon::All);
                            job.report.path = Path::All;
                            FeedStatus::All {
                                root: *sum.root.fingerprint.as_bytes(),
                                count: sum.root.count,
                                cursor: cursor_to_wire(sum.feed.cursor()),
                                checkpoint,
                            }
                        }
                        None => summary(store, &h.feed, mode, checkpoint, filter)?,
                    }
                };
                self.jobs.insert(h.feed.clone(), job);
                Ok(status)
            }
        }
    }

    /// Whether a feed of HELLO may be replicated: the authorizer says so (none means no), the
    /// feed exists, and a write carries a checkpoint from a key trusted for the feed here.
    fn admit(
        &self,
        store: &Store,
        token: &str,
        mode: Mode,
        h: &FeedHello,
        authorizer: Option<&dyn Authorizer>,
    ) -> Result<Result<Admitted, Refusal>, SessionError> {
        let Some(authorizer) = authorizer else {
            return Ok(Err(Refusal::new(
                code::UNAUTHORIZED,
                "this instance accepts no replication",
            )));
        };
        if let Err(r) = authorizer.authorize(token, &h.feed, mode) {
            return Ok(Err(r));
        }
        if let Some(f) = &h.filter {
            let canonical = f.clone().canonical();
            let why = match (&canonical, mode) {
                (Err(e), _) => Some(e.clone()),
                (Ok(c), _) if c != f => Some(
                    "the filter is not in its canonical form (patterns sorted, each once)".into(),
                ),
                (_, Mode::Pull) if h.feed == cairn_store::SYSTEM_FEED => {
                    Some("the system set is replicated whole".into())
                }
                (_, Mode::Pull) => None,
                (_, m) => {
                    Some(format!("a {m:?} cannot be filtered; only a pull can").to_lowercase())
                }
            };
            if let Some(why) = why {
                return Ok(Err(Refusal::new(
                    code::BAD_DATA,
                    format!("filter for `{}` refused: {why}", h.feed),
                )));
            }
        }
        let no_feed = || {
            Ok(Err(Refusal::new(
                code::NO_SUCH_FEED,
                format!("feed `{}` does not exist on this peer", h.feed),
            )))
        };
        // A filtered pull's checkpoint is signed here: one the responder will not sign (over
        // its bound of filters) refuses this feed rather than ending the session, and its
        // root and count are the filtered state's, read once.
        let (sum, checkpoint) = match (&h.filter, mode) {
            (Some(f), Mode::Pull) => match store.filtered_checkpoint_to_serve(
                &h.feed,
                f,
                self.limits.checkpoint_ttl_secs,
                self.limits.checkpoint_refresh_secs,
            ) {
                Ok(bytes) => {
                    let cp: Checkpoint = SignedDocument::peek_payload(&bytes)
                        .map_err(|e| store_err(StoreError::Document(e)))?;
                    let feed = match store.feed(&h.feed) {
                        Ok(feed) => feed,
                        Err(StoreError::FeedNotFound { .. }) => return no_feed(),
                        Err(e) => return Err(store_err(e)),
                    };
                    let root = NodeSummary {
                        fingerprint: Fingerprint::from_bytes(*cp.root.as_bytes()),
                        count: cp.count,
                    };
                    (FeedSummary { feed, root }, Some(bytes))
                }
                Err(StoreError::FeedNotFound { .. }) => return no_feed(),
                Err(e @ StoreError::InvalidInput { .. }) => {
                    return Ok(Err(Refusal::new(
                        code::BAD_DATA,
                        format!("filter for `{}` refused: {e}", h.feed),
                    )))
                }
                Err(e) => return Err(store_err(e)),
            },
            _ => match store.feed_summary(&h.feed) {
                Ok(sum) => (sum, None),
                Err(StoreError::FeedNotFound { .. }) => return no_feed(),
                Err(e) => return Err(store_err(e)),
            },
        };
        if mode != Mode::Pull {
            let Some(cp) = &h.checkpoint else {
                return Ok(Err(Refusal::new(
                    code::BAD_DATA,
                    format!(
                        "a {mode:?} of `{}` must carry a checkpoint signed by a key trusted for it here",
                        h.feed
                    )
                    .to_lowercase(),
                )));
            };
            if let Err(e) = checkpoint_filter_matches(cp, None) {
                return Ok(Err(Refusal::new(
                    code::BAD_DATA,
                    format!("checkpoint refused: {e}"),
                )));
            }
            if let Err(e) = store.check_checkpoint(&h.feed, cp, self.now_secs, mode == Mode::Push) {
                tracing::warn!(feed = %h.feed, "refusing the peer's checkpoint: {e}");
                return Ok(Err(Refusal::new(
                    code::BAD_DATA,
                    format!("checkpoint refused: {e}"),
                )));
            }
        }
        Ok(Ok((sum, checkpoint)))
    }

    /// Checks the authoritative side's checkpoint for `feed` before anything of the feed is
    /// applied: required in a pull and a mirror, from a key trusted for the feed, fresh, not a
    /// rollback. False (the feed failed, the peer told) when it is missing or refused.
    fn take_checkpoint(
        &mut self,
        store: &Store,
        feed: &str,
        checkpoint: Option<Vec<u8>>,
    ) -> Result<bool, SessionError> {
        if self.mode == Mode::Push {
            return Ok(true);
        }
        let Some(cp) = checkpoint else {
            self.fail_feed(
                feed,
                code::BAD_DATA,
                format!(
                    "the peer sent no checkpoint for `{feed}`; refusing state no writer signed"
                ),
            )?;
            return Ok(false);
        };
        if let Err(e) = checkpoint_filter_matches(&cp, self.job(feed)?.filter.as_ref()) {
            self.fail_feed(feed, code::BAD_DATA, format!("checkpoint refused: {e}"))?;
            return Ok(false);
        }
        match store.check_checkpoint(feed, &cp, self.now_secs, self.mode == Mode::Pull) {
            Ok(_) => {
                self.job(feed)?.checkpoints.push(cp);
                Ok(true)
            }
            Err(e) => {
                self.fail_feed(feed, code::BAD_DATA, format!("checkpoint refused: {e}"))?;
                Ok(false)
            }
        }
    }

    fn initiator_status(
        &mut self,
        store: &Store,
        feed: &str,
        status: FeedStatus,
    ) -> Result<(), SessionError> {
        match status {
            FeedStatus::Refused { code, reason } => {
                let mut job = self.jobs.remove(feed).ok_or_else(|| {
                    SessionError::Protocol(format!("status for feed `{feed}` not in this run"))
                })?;
                job.report.error = Some(format!("refused by peer (code {code}): {reason}"));
                self.refused.insert(feed.to_owned(), job.report);
                Ok(())
            }
            FeedStatus::Equal { cursor, checkpoint } => {
                if !self.take_checkpoint(store, feed, checkpoint)? {
                    return Ok(());
                }
                let filter = self.job(feed)?.filter.clone();
                let sum = view_summary(store, feed, filter.as_ref())?;
                let job = self.job(feed)?;
                job.report.path = Path::Equal;
                job.report.peer_cursor = Some(cursor_from_wire(cursor));
                let r = (*sum.root.fingerprint.as_bytes(), sum.root.count);
                job.report.local_root = Some(r);
                job.report.peer_root = Some(r);
                job.phase = Phase::Final;
                job.local_done = true;
                job.peer_done = true;
                self.finish_feed(store, feed)
            }
            FeedStatus::Log {
                root,
                count,
                cursor,
                changes,
                checkpoint,
            } => {
                if self.mode != Mode::Pull {
                    return Err(SessionError::Protocol(format!(
                        "a change log for `{feed}` in a {:?}",
                        self.mode
                    )));
                }
                if !self.take_checkpoint(store, feed, checkpoint)? {
                    return Ok(());
                }
                {
                    let job = self.job(feed)?;
                    job.report.path = Path::Log;
                    job.report.peer_cursor = Some(cursor_from_wire(cursor));
                    job.report.peer_root = Some((root, count));
                    job.phase = Phase::Documents { receiving: true };
                    job.docs_total = Some(0);
                }
                let removed: Vec<String> = changes
                    .iter()
                    .filter(|c| c.doc.is_none())
                    .map(|c| c.key.clone())
                    .collect();
                if let Some(f) = &self.job(feed)?.filter {
                    if let Some(k) = removed.iter().find(|k| !f.selects(k)) {
                        tracing::warn!(feed, key = %k, "the peer's log removes an entry outside the filter");
                        return Err(SessionError::BadData(format!(
                            "the change log for `{feed}` removes `{k}`, which is outside the filter this pull asked for"
                        )));
                    }
                }
                if !removed.is_empty() && !self.remove_keys(store, feed, &removed)? {
                    return Ok(());
                }
                let docs: Vec<Vec<u8>> = changes.into_iter().filter_map(|c| c.doc).collect();
                if !docs.is_empty() {
                    self.receive_docs(store, feed, docs, Vec::new())?;
                }
                self.maybe_done(store, feed)
            }
            FeedStatus::All {
                root,
                count,
                cursor,
                checkpoint,
            } => {
                let (mode, held) = (self.mode, self.job(feed)?.run_base);
                if mode != Mode::Pull || held != 0 {
                    return Err(SessionError::Protocol(format!(
                        "status `all` for `{feed}` in a {mode:?} from a side that held {held} entries"
                    )));
                }
                if !self.take_checkpoint(store, feed, checkpoint)? {
                    return Ok(());
                }
                let job = self.job(feed)?;
                job.phase = Phase::Reconcile(Recon::Open);
                job.report.peer_cursor = Some(cursor_from_wire(cursor));
                job.report.peer_root = Some((root, count));
                job.report.path = Path::All;
                Ok(())
            }
            FeedStatus::Summary {
                root,
                count,
                cursor,
                cells,
                estimator,
                checkpoint,
                collected,
            } => {
                if !self.take_checkpoint(store, feed, checkpoint)? {
                    return Ok(());
                }
                if self.mode == Mode::Mirror {
                    let seen = store.peer_seen_hlc(&self.peer, feed).map_err(store_err)?;
                    self.job(feed)?.peer_collected = collected.min(seen);
                }
                let seed = summary_seed(feed);
                let theirs = Iblt::from_cells(unpack_cells(&cells)?, seed)
                    .map_err(|e| SessionError::Protocol(e.to_string()))?;
                let their_estimator = Estimator::from_bytes(&estimator).ok_or_else(|| {
                    SessionError::Protocol(format!(
                        "the estimator of `{feed}` is not {ESTIMATOR_COUNTERS} bytes"
                    ))
                })?;
                if theirs.cells().len() != SUMMARY_CELLS {
                    return Err(SessionError::Protocol(format!(
                        "the summary table of `{feed}` is not {SUMMARY_CELLS} cells"
                    )));
                }
                let filter = self.job(feed)?.filter.clone();
                let (mine, my_estimator) = summary_sketch(store, feed, filter.as_ref())?;
                let job = self.job(feed)?;
                job.phase = Phase::Reconcile(Recon::Open);
                job.report.peer_cursor = Some(cursor_from_wire(cursor));
                job.report.peer_root = Some((root, count));
                job.report.path = Path::Sketch;
                job.report.sketch_cells += SUMMARY_CELLS as u64;
                // A small difference peels from the summary's table at once: the responder
                // hears it whole and answers as it would a sketch.
                if let Ok((theirs_only, mine_only)) = subtract_tables(&theirs, &mine)?.decode() {
                    let n = theirs_only.len() + mine_only.len();
                    if n > 0 && n <= MAX_DIFFERENCE_ITEMS {
                        self.outbox.push_back(Frame::Difference {
                            feed: feed.to_owned(),
                            mine: pack_items(&mine_only),
                            yours: pack_items(&theirs_only),
                        });
                        return Ok(());
                    }
                }
                // Otherwise a sketch of every item, sized from the estimate (or a plain list
                // when that is not smaller).
                let estimate = their_estimator.difference(&my_estimator).ceil() as usize;
                let all: Vec<u8> = (0..=255).collect();
                let job = self.job(feed)?;
                collect_items(store, job, &all)?;
                job.sketch_cells = iblt::cells_for(estimate);
                // A plain list is cheaper when our side of the buckets is small, and the only
                // way when the difference is too large for one sketch frame.
                if job.local_items.len() * 16 <= job.sketch_cells * CELL_BYTES
                    || job.sketch_cells > MAX_SKETCH_CELLS
                {
                    job.report.path = Path::List;
                    self.send_item_list(feed)
                } else {
                    job.report.path = Path::Sketch;
                    let frame = sketch_frame(job)?;
                    self.outbox.push_back(frame);
                    Ok(())
                }
            }
        }
    }

    /// Sends this side's items of the buckets in play as ITEM-LIST pages of whole buckets.
    fn send_item_list(&mut self, feed: &str) -> Result<(), SessionError> {
        let page_items = self.limits.list_page_items.clamp(1, MAX_LIST_ITEMS);
        let job = self.job(feed)?;
        let mut frames = Vec::new();
        let mut page_buckets = Vec::new();
        let mut page_start = 0;
        let spans: Vec<(u8, usize, usize)> = job
            .bucket_starts
            .iter()
            .enumerate()
            .map(|(i, &(b, start))| {
                let end = job
                    .bucket_starts
                    .get(i + 1)
                    .map_or(job.local_items.len(), |n| n.1);
                (b, start, end)
            })
            .collect();
        for (b, start, end) in spans {
            if !page_buckets.is_empty() && end - page_start > page_items {
                frames.push(Frame::ItemList {
                    feed: feed.to_owned(),
                    buckets: bitmap(&page_buckets),
                    items: pack_items(&job.local_items[page_start..start]),
                    last: false,
                });
                page_buckets.clear();
                page_start = start;
            }
            page_buckets.push(b);
        }
        frames.push(Frame::ItemList {
            feed: feed.to_owned(),
            buckets: bitmap(&page_buckets),
            items: pack_items(&job.local_items[page_start..]),
            last: true,
        });
        self.outbox.extend(frames);
        Ok(())
    }

    fn on_sketch(
        &mut self,
        store: &Store,
        feed: &str,
        buckets: &[u8],
        seed: u64,
        cells: &[u8],
    ) -> Result<(), SessionError> {
        let failures = match self.job(feed)?.phase {
            Phase::Reconcile(Recon::Open) => 0,
            Phase::Reconcile(Recon::Sketched { failures }) if failures <= MAX_SKETCH_RETRIES => {
                failures
            }
            _ => {
                return Err(SessionError::Protocol(format!(
                    "SKETCH for `{feed}` after its difference was settled or past the retries"
                )))
            }
        };
        let buckets = from_bitmap(buckets)?;
        let theirs = Iblt::from_cells(unpack_cells(cells)?, seed)
            .map_err(|e| SessionError::Protocol(e.to_string()))?;
        let job = self.job(feed)?;
        job.report.sketch_cells += theirs.cells().len() as u64;
        job.report.path = Path::Sketch;
        collect_items(store, job, &buckets)?;
        let mut mine = Iblt::new(theirs.cells().len(), seed)
            .map_err(|e| SessionError::Protocol(e.to_string()))?;
        for i in &job.local_items {
            mine.insert(i);
        }
        match subtract_tables(&theirs, &mine)?.decode() {
            Ok((theirs_only, mine_only)) => {
                self.responder_resolve(store, feed, &theirs_only, &mine_only, true)
            }
            Err(_) => {
                self.job(feed)?.phase = Phase::Reconcile(Recon::Sketched {
                    failures: failures + 1,
                });
                self.outbox.push_back(Frame::SketchFailed {
                    feed: feed.to_owned(),
                });
                Ok(())
            }
        }
    }

    /// Responder of a pull whose status was `all`: the DIFF that ends the round, with the
    /// first documents, and DOCS frames for the rest, read bucket by bucket as frames are
    /// filled.
    fn send_everything(&mut self, store: &Store, feed: &str) -> Result<(), SessionError> {
        let mut queue = DocKeys::everything();
        let (docs, blobs) = self.next_batch(store, feed, &mut queue)?;
        let last = queue.is_empty();
        self.queue_docs(feed, queue);
        self.outbox.push_back(Frame::Diff {
            feed: feed.to_owned(),
            docs,
            remove: Vec::new(),
            want: Vec::new(),
            absent: Vec::new(),
            blobs,
            last,
            more: false,
        });
        self.job(feed)?.phase = Phase::Documents { receiving: false };
        self.maybe_done(store, feed)
    }

    /// The difference the initiator peeled from the `summary` status's table. Of the items it
    /// says this side holds, only those that are entries here as named are taken: the rest
    /// cannot be answered and the run's closing roots will tell.
    fn on_difference(
        &mut self,
        store: &Store,
        feed: &str,
        mine: &[u8],
        yours: &[u8],
    ) -> Result<(), SessionError> {
        let theirs_only = unpack_items(mine)?;
        let claimed = unpack_items(yours)?;
        if theirs_only.len() + claimed.len() > MAX_DIFFERENCE_ITEMS {
            return Err(SessionError::Protocol(format!(
                "DIFFERENCE for `{feed}` names {} items, over {MAX_DIFFERENCE_ITEMS}",
                theirs_only.len() + claimed.len()
            )));
        }
        let job = self.job(feed)?;
        if job.phase != Phase::Reconcile(Recon::Open) {
            return Err(SessionError::Protocol(format!(
                "DIFFERENCE for `{feed}` after its difference was settled"
            )));
        }
        job.report.path = Path::Sketch;
        job.local_items.clear();
        job.bucket_starts.clear();
        let mut mine_only = Vec::new();
        for item in claimed {
            for (kh, e) in
                view_entries_under(store, feed, &item.key.to_be_bytes(), job.filter.as_ref())?
            {
                if Item::new(kh.as_bytes(), merkle::leaf(&e.key, &e.value.doc).as_bytes()) == item {
                    mine_only.push(item);
                }
            }
        }
        self.responder_resolve(store, feed, &theirs_only, &mine_only, true)
    }

    /// One page of the initiator's item list: the difference in its buckets is answered at
    /// once (a DIFF page), so nothing of the page is kept but the keys to send.
    fn on_item_list(
        &mut self,
        store: &Store,
        feed: &str,
        buckets: &[u8],
        items: &[u8],
        last: bool,
    ) -> Result<(), SessionError> {
        let buckets = from_bitmap(buckets)?;
        let theirs: HashSet<Item> = unpack_items(items)?.into_iter().collect();
        let job = self.job(feed)?;
        match job.phase {
            Phase::Reconcile(Recon::Open | Recon::Sketched { .. }) => {
                job.phase = Phase::Reconcile(Recon::Listing);
                job.listed_buckets.clear();
            }
            Phase::Reconcile(Recon::Listing) => {}
            _ => {
                return Err(SessionError::Protocol(format!(
                    "ITEM-LIST for `{feed}` after its difference was settled"
                )))
            }
        }
        for &b in &buckets {
            if !job.listed_buckets.insert(b) {
                return Err(SessionError::Protocol(format!(
                    "ITEM-LIST for `{feed}` covers bucket {b} twice"
                )));
            }
        }
        let in_page: HashSet<u8> = buckets.iter().copied().collect();
        if let Some(stray) = theirs.iter().find(|i| !in_page.contains(&item_bucket(i))) {
            return Err(SessionError::Protocol(format!(
                "ITEM-LIST for `{feed}` holds an item of bucket {}, which the page does not cover",
                item_bucket(stray)
            )));
        }
        job.report.path = Path::List;
        collect_items(store, job, &buckets)?;
        let mine: HashSet<Item> = job.local_items.iter().copied().collect();
        let theirs_only: Vec<Item> = theirs.difference(&mine).copied().collect();
        let mine_only: Vec<Item> = mine.difference(&theirs).copied().collect();
        self.responder_resolve(store, feed, &theirs_only, &mine_only, last)
    }

    /// The responder knows the exact difference of some buckets (all of them when `last`):
    /// act on it according to the mode. Key lists go out as DIFF pages; documents to send
    /// are gathered and go with the last page and the DOCS frames after it.
    fn responder_resolve(
        &mut self,
        store: &Store,
        feed: &str,
        theirs_only: &[Item],
        mine_only: &[Item],
        last: bool,
    ) -> Result<(), SessionError> {
        let mode = self.mode;
        let their_keys: HashSet<u64> = theirs_only.iter().map(|i| i.key).collect();
        let my_keys: HashSet<u64> = mine_only.iter().map(|i| i.key).collect();
        if mode != Mode::Push {
            let job = self.job(feed)?;
            job.to_send.extend(mine_only.iter().map(|i| i.key));
            if mode == Mode::Mirror {
                job.pending_stale.extend(
                    mine_only
                        .iter()
                        .map(|i| i.key)
                        .filter(|k| !their_keys.contains(k)),
                );
            }
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
            // We become a copy of the initiator: drop what it does not have at all (once the
            // last page is in, all together against the guard rail).
            let job = self.job(feed)?;
            job.pending_removals
                .extend(my_keys.difference(&their_keys).copied());
        }
        let mut withheld = HashSet::new();
        if last {
            let job = self.job(feed)?;
            let (extras, only_here) = (
                std::mem::take(&mut job.pending_removals),
                std::mem::take(&mut job.pending_stale),
            );
            if !extras.is_empty() && !self.remove_by_key8(store, feed, &extras)? {
                return Ok(());
            }
            if !only_here.is_empty() {
                let filter = self.job(feed)?.filter.clone();
                let only_here = keys_by_key8(store, feed, &only_here, filter.as_ref())?;
                let Some(gone) = self.drop_stale(store, feed, &only_here)? else {
                    return Ok(());
                };
                withheld.extend(gone);
            }
        }
        let absent: Vec<u64> = if mode == Mode::Mirror {
            their_keys.difference(&my_keys).copied().collect()
        } else {
            Vec::new()
        };
        self.job(feed)?.wants_sent += want.len() as u64;
        let page_keys = self.limits.diff_page_keys.clamp(1, MAX_DIFF_KEYS);
        // Long lists go in pages of their own; the page that ends the round carries the first
        // documents.
        let pages = remove
            .len()
            .max(want.len())
            .max(absent.len())
            .div_ceil(page_keys)
            .max(1);
        let page = |v: &[u64], i: usize| -> Vec<u8> {
            pack_u64s(v.iter().skip(i * page_keys).take(page_keys).copied())
        };
        for i in 0..pages {
            let final_page = last && i + 1 == pages;
            let (docs, blobs, docs_last) = if final_page {
                // In key-hash order: the store reads them in its own order.
                let mut key8s = std::mem::take(&mut self.job(feed)?.to_send);
                key8s.sort_unstable();
                key8s.dedup();
                let mut queue = DocKeys::new(key8s);
                queue.skip = std::mem::take(&mut withheld);
                let (docs, blobs) = self.next_batch(store, feed, &mut queue)?;
                let done = queue.is_empty();
                self.queue_docs(feed, queue);
                (docs, blobs, done)
            } else {
                (Vec::new(), Vec::new(), false)
            };
            self.outbox.push_back(Frame::Diff {
                feed: feed.to_owned(),
                docs,
                remove: page(&remove, i),
                want: page(&want, i),
                absent: page(&absent, i),
                blobs,
                last: docs_last,
                more: !final_page,
            });
        }
        if !last {
            return Ok(());
        }
        let job = self.job(feed)?;
        job.phase = Phase::Documents {
            receiving: mode != Mode::Pull && job.wants_sent > 0,
        };
        self.maybe_done(store, feed)
    }

    /// One DIFF page at the initiator: removals and mirror drops at once, wants gathered; the
    /// last page sends the wanted documents and takes the first of the peer's.
    #[allow(clippy::too_many_arguments)]
    fn on_diff(
        &mut self,
        store: &Store,
        feed: &str,
        docs: Vec<ByteBuf>,
        remove: &[u8],
        want: &[u8],
        absent: &[u8],
        blobs: Vec<SmallBlob>,
        last: bool,
        more: bool,
    ) -> Result<(), SessionError> {
        let mode = self.mode;
        let job = self.job(feed)?;
        if !matches!(job.report.path, Path::Sketch | Path::List | Path::All)
            || job.phase != Phase::Reconcile(Recon::Open)
        {
            return Err(SessionError::Protocol(format!(
                "DIFF for `{feed}`, which has no reconciliation outstanding"
            )));
        }
        if more && (!docs.is_empty() || !blobs.is_empty() || last) {
            return Err(SessionError::Protocol(format!(
                "DIFF page for `{feed}` before the last one carries documents"
            )));
        }
        let removals = unpack_u64s(remove)?;
        let wants = unpack_u64s(want)?;
        let absent = unpack_u64s(absent)?;
        if mode == Mode::Pull && !wants.is_empty() {
            return Err(SessionError::Protocol(
                "a pull responder asked for documents".into(),
            ));
        }
        if mode != Mode::Pull && !removals.is_empty() {
            return Err(SessionError::Protocol(format!(
                "a {mode:?} responder told this side to remove entries"
            )));
        }
        let filter = self.job(feed)?.filter.clone();
        let held = view_summary(store, feed, filter.as_ref())?.root.count;
        let job = self.job(feed)?;
        job.diff_pages.pages += 1;
        job.diff_pages.wants.extend(wants);
        job.diff_pages.removals.extend(removals);
        job.diff_pages.absent.extend(absent);
        // Every want and every removal names one of our keys; more than we hold is a peer
        // making us allocate.
        if job.diff_pages.wants.len() as u64 > held || job.diff_pages.removals.len() as u64 > held {
            return Err(SessionError::Protocol(format!(
                "DIFF for `{feed}` wants or removes more documents than this side holds"
            )));
        }
        if more {
            return Ok(());
        }
        // The last page: the round's removals and mirror drops meet the guard rail together,
        // before any is made; then the wanted documents go out.
        let DiffPages {
            mut wants,
            removals,
            absent,
            ..
        } = std::mem::take(&mut job.diff_pages);
        if mode == Mode::Mirror && !absent.is_empty() {
            let absent_keys: Vec<u64> = wants
                .iter()
                .copied()
                .filter(|k| absent.contains(k))
                .collect();
            let keys = keys_by_key8(store, feed, &absent_keys, filter.as_ref())?;
            let Some(gone) = self.drop_stale(store, feed, &keys)? else {
                return Ok(());
            };
            let gone: HashSet<u64> = gone
                .iter()
                .map(|k| key8(&cairn_store::merkle::key_hash(k)))
                .collect();
            wants.retain(|k| !gone.contains(k));
        }
        if !removals.is_empty() && !self.remove_by_key8(store, feed, &removals)? {
            return Ok(());
        }
        if !wants.is_empty() {
            self.send_docs_by_key8(store, feed, &wants)?;
        }
        let job = self.job(feed)?;
        job.phase = Phase::Documents {
            receiving: mode != Mode::Push,
        };
        if last {
            job.docs_total = Some(0);
        }
        if !docs.is_empty() || !blobs.is_empty() {
            self.receive_docs(
                store,
                feed,
                docs.into_iter().map(ByteBuf::into_vec).collect(),
                blobs,
            )?;
        }
        self.maybe_done(store, feed)
    }

    fn on_done(
        &mut self,
        store: &Store,
        feed: &str,
        root: [u8; 32],
        count: u64,
        checkpoint: Option<Vec<u8>>,
    ) -> Result<(), SessionError> {
        let (role, mode, now) = (self.role, self.mode, self.now_secs);
        let job = self.job(feed)?;
        if job.peer_done {
            return Err(SessionError::Protocol(format!("second DONE for `{feed}`")));
        }
        job.peer_done = true;
        job.report.peer_root = Some((root, count));
        if let Some(cp) = checkpoint {
            if role != Role::Initiator || mode != Mode::Pull {
                return Err(SessionError::Protocol(format!(
                    "a checkpoint in DONE for `{feed}` from a side that is not authoritative"
                )));
            }
            // The upstream's state now; the one from its status may be older than what it sent.
            let filtered = checkpoint_filter_matches(&cp, job.filter.as_ref());
            match filtered.and_then(|()| {
                store
                    .check_checkpoint(feed, &cp, now, true)
                    .map_err(|e| e.to_string())
            }) {
                Ok(_) => job.checkpoints.push(cp),
                Err(e) => tracing::warn!(feed, "the peer's closing checkpoint is refused: {e}"),
            }
        }
        self.maybe_done(store, feed)?;
        self.finish_feed(store, feed)
    }

    /// Once both sides are done with `feed`: the receiving side of an authoritative run keeps
    /// the newest checkpoint that matches its recomputed root (refusing to call the run good
    /// otherwise), and mirror peers that converged remember how far they have seen each other.
    fn finish_feed(&mut self, store: &Store, feed: &str) -> Result<(), SessionError> {
        let (role, mode, now, peer) = (self.role, self.mode, self.now_secs, self.peer);
        let job = self.job(feed)?;
        if matches!(job.phase, Phase::Failed | Phase::Done) || !job.local_done || !job.peer_done {
            return Ok(());
        }
        job.phase = Phase::Done;
        if job.dry_run {
            return Ok(());
        }
        let receives_authoritatively = matches!(
            (role, mode),
            (Role::Initiator, Mode::Pull) | (Role::Responder, Mode::Push)
        );
        if receives_authoritatively {
            let mut last_error = None;
            for cp in std::mem::take(&mut job.checkpoints).iter().rev() {
                match store.accept_checkpoint(feed, cp, now) {
                    Ok(accepted) => {
                        job.report.checkpoint = Some(accepted);
                        last_error = None;
                        break;
                    }
                    Err(e) => last_error = Some(e),
                }
            }
            if let Some(e) = last_error {
                tracing::warn!(feed, "no checkpoint of the peer covers this replica: {e}");
                job.report.error = Some(format!(
                    "checkpoint: {e} (documents were withheld, mixed or changed during the run)"
                ));
            }
        }
        let converged =
            job.report.local_root.is_some() && job.report.local_root == job.report.peer_root;
        if mode == Mode::Mirror && converged {
            store
                .raise_peer_seen_hlc(&peer, feed, store.clock())
                .map_err(store_err)?;
            // This state now includes the peer's as its checkpoint attests: a replica holding
            // the peer's checkpoint may take this instance's next one (wire-spec 11).
            for cp in std::mem::take(&mut self.job(feed)?.checkpoints) {
                store.record_covered(feed, &cp).map_err(store_err)?;
            }
        }
        Ok(())
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
        if !self.check_guard(feed, keys.len() as u64)? {
            return Ok(false);
        }
        let job = self.job(feed)?;
        if job.dry_run {
            job.report.plan_deletes += keys.len() as u64;
            job.run_deletes += keys.len() as u64;
            return Ok(true);
        }
        let n = store.remove_entries(feed, keys).map_err(store_err)?;
        let job = self.job(feed)?;
        job.report.deletions += n;
        job.run_deletes += n;
        Ok(true)
    }

    /// False (and the feed failed, the peer told) when `deletes` more deletions, with those
    /// already made in this run, are over the guard rail: a share of the entries held when
    /// the run began (entries received since do not raise it).
    fn check_guard(&mut self, feed: &str, deletes: u64) -> Result<bool, SessionError> {
        let job = self.job(feed)?;
        let before = job.run_base;
        if deletes == 0 || job.guard.allow || before == 0 {
            return Ok(true);
        }
        let planned = job.run_deletes + deletes;
        let share = planned as f64 / before as f64;
        if share <= job.guard.max_delete_share {
            return Ok(true);
        }
        let reason = format!(
            "this run would delete {planned} of {before} entries in `{feed}` ({:.0}%), over the guard rail of {:.0}%; run with --allow-deletes to proceed or --dry-run to see the plan",
            share * 100.0,
            job.guard.max_delete_share * 100.0
        );
        self.fail_feed(feed, code::GUARD_RAIL, reason)?;
        self.job(feed)?.report.held_back = true;
        Ok(false)
    }

    fn remove_by_key8(
        &mut self,
        store: &Store,
        feed: &str,
        key8s: &[u64],
    ) -> Result<bool, SessionError> {
        let filter = self.job(feed)?.filter.clone();
        let keys = keys_by_key8(store, feed, key8s, filter.as_ref())?;
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
        let mut queue = DocKeys::new(key8s.iter().copied());
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
    fn queue_docs(&mut self, feed: &str, keys: DocKeys) {
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

    /// The next batch of documents (up to [`Limits::doc_batch_bytes`]) for the keys at the front of
    /// `keys`, with as many of the small blobs their manifests name as fit in the same budget
    /// (the rest the peer asks for); counted as sent, and every blob they name offered.
    fn next_batch(
        &mut self,
        store: &Store,
        feed: &str,
        keys: &mut DocKeys,
    ) -> Result<DocBatch, SessionError> {
        let mut docs = Vec::new();
        let mut blobs: Vec<SmallBlob> = Vec::new();
        let mut seen = HashSet::new();
        let mut bytes = 0;
        let budget = self.limits.doc_batch_bytes.clamp(1, DOC_BATCH_BYTES);
        let filter = self.job(feed)?.filter.clone();
        let mut trust = SignerTrust::default();
        while let Some(e) = keys.front(store, feed, filter.as_ref())? {
            let Some(d) = store.document_bytes(&e.value.doc).map_err(store_err)? else {
                // Entries are read a little ahead of sending: this one may have changed since,
                // and gc taken its old document. Send what it is now; a gap is an error.
                let (key, doc) = (e.key.clone(), e.value.doc);
                match store.entry(feed, &key).map_err(store_err)? {
                    Some(now) if now.doc != doc => {
                        if let Some(front) = keys.entries.front_mut() {
                            front.value = now;
                        }
                    }
                    None => {
                        keys.entries.pop_front();
                    }
                    Some(_) => {
                        return Err(store_err(StoreError::missing_document("entry", &key, &doc)))
                    }
                }
                continue;
            };
            let (signer, manifest) = SignedDocument::peek_signer_and_payload::<Manifest>(&d)
                .map_err(|e| store_err(StoreError::Document(e)))?;
            if !trust.offerable(store, feed, signer)? {
                keys.entries.pop_front();
                continue;
            }
            // A document goes with its small blobs: one whose blobs would not fit waits for the
            // next batch (asking for them would cost the peer a round of its own).
            let inline_need: usize = manifest.as_ref().map_or(0, |m| {
                m.files
                    .iter()
                    .filter(|f| f.size <= cairn_store::blob::INLINE_MAX && !seen.contains(&f.blob))
                    .map(|f| f.size as usize + 48)
                    .sum()
            });
            if bytes + d.len() + inline_need > budget && !docs.is_empty() {
                break;
            }
            keys.entries.pop_front();
            bytes += d.len();
            if let Some(m) = manifest {
                for f in m.files {
                    self.offered.insert(f.blob, f.size);
                    let inline = f.size <= cairn_store::blob::INLINE_MAX;
                    let fits = bytes + f.size as usize + 48 <= budget;
                    if inline && fits && seen.insert(f.blob) {
                        let mut data = Vec::with_capacity(f.size as usize);
                        store.read_blob_to(&f.blob, &mut data).map_err(store_err)?;
                        bytes += data.len() + 48;
                        // Counted as sent like a blob the peer asks for: both roles' logs
                        // count blobs, not pieces or requests.
                        self.stats.blobs_sent += 1;
                        self.stats.blob_bytes_sent += data.len() as u64;
                        self.stats.blob_bytes_due += data.len() as u64;
                        blobs.push(SmallBlob { data });
                    }
                }
            }
            docs.push(ByteBuf::from(d));
        }
        self.job(feed)?.report.docs_sent += docs.len() as u64;
        Ok((docs, blobs))
    }

    /// Documents received for `feed`: each is verified completely (decode, signature, trust,
    /// consistency, declared blob sizes) before anything is stored, asked for or allocated
    /// for on its word; then the small blobs that came with them (only those they name), then
    /// requests for the blobs still missing.
    fn receive_docs(
        &mut self,
        store: &Store,
        feed: &str,
        docs: Vec<Vec<u8>>,
        small: Vec<SmallBlob>,
    ) -> Result<(), SessionError> {
        let limits = self.limits;
        let job = self.job(feed)?;
        if job.rule.is_none() {
            return Err(SessionError::Protocol(format!(
                "documents for `{feed}` sent to a side that does not receive in this mode"
            )));
        }
        if job.phase == Phase::Failed {
            return Ok(());
        }
        let dry_run = job.dry_run;
        let filter = job.filter.clone();
        let record = store.feed(feed).map_err(store_err)?;
        let mut verified = Vec::with_capacity(docs.len());
        let doc_bytes: u64 = docs.iter().map(|d| d.len() as u64).sum();
        let slices: Vec<&[u8]> = docs.iter().map(Vec::as_slice).collect();
        for v in store.verify_remote_many(&record, &slices) {
            let v = v.map_err(|e| {
                tracing::warn!(feed, "rejected a document from the peer: {e}");
                SessionError::BadData(format!("document for `{feed}` rejected: {e}"))
            })?;
            if let Some(&(hash, size)) = v
                .blobs()
                .iter()
                .find(|&&(_, size)| size > limits.max_blob_bytes)
            {
                tracing::warn!(feed, "a document names a blob over the size limit");
                return Err(SessionError::BadData(format!(
                    "`{}` in `{feed}` names blob {hash} of {size} bytes, over this instance's limit of {} bytes",
                    v.key(),
                    limits.max_blob_bytes
                )));
            }
            if let Some(f) = &filter {
                if !f.selects(v.key()) {
                    tracing::warn!(
                        feed,
                        key = v.key(),
                        "the peer sent an entry outside the filter"
                    );
                    return Err(SessionError::BadData(format!(
                        "`{}` in `{feed}` is outside the filter this pull asked for",
                        v.key()
                    )));
                }
            }
            verified.push(v);
        }
        // Small blobs: only those a document of this frame names. They travel without their
        // hash: the bytes' hash must be one a document names, at the size it gives.
        let named: HashMap<Hash, u64> = verified
            .iter()
            .flat_map(|v| v.blobs().iter().copied())
            .collect();
        let named_sizes: HashSet<u64> = named.values().copied().collect();
        let mut checked = Vec::with_capacity(small.len());
        for b in &small {
            let size = b.data.len() as u64;
            if size > cairn_store::blob::INLINE_MAX {
                return Err(SessionError::Protocol(format!(
                    "small blob of {size} bytes, over the inline limit"
                )));
            }
            let hash = Hash::of(&b.data);
            if named.get(&hash) != Some(&size) {
                if named_sizes.contains(&size) {
                    // The size of a blob a document names, other bytes: changed on the way.
                    tracing::warn!(
                        feed,
                        size,
                        "peer sent a small blob whose bytes match no hash its documents name"
                    );
                    return Err(SessionError::BadData(format!(
                        "a small blob of {size} bytes matches no blob its documents name: its bytes do not match its hash"
                    )));
                }
                return Err(SessionError::Protocol(format!(
                    "small blob {hash} of {size} bytes that no document of its frame names"
                )));
            }
            checked.push((hash, &b.data[..]));
        }
        let mut pins = Vec::with_capacity(checked.len());
        if !checked.is_empty() {
            // All of the frame's small blobs in one write, each checked against its hash
            // first (nothing is written if one fails); a dry run only checks.
            let stored = if dry_run {
                Store::check_small_blobs(&checked).map(|()| Vec::new())
            } else {
                store.put_small_blobs(&checked)
            };
            let stored = stored.map_err(|e| match e {
                StoreError::CorruptBlob(c) => {
                    tracing::warn!(blob = %c.hash, "peer sent a small blob whose bytes do not match its hash");
                    SessionError::BadData(format!("blob {} does not match its hash", c.hash))
                }
                other => store_err(other),
            })?;
            let job = self.job(feed)?;
            for b in stored {
                job.report.blobs_received += 1;
                job.report.blob_bytes_received += b.size;
                pins.push(b.into_pin());
            }
        }
        // Deletions the batch would cause count against the guard rail.
        let mut deletes = 0u64;
        let mut wanted: BTreeMap<Hash, u64> = BTreeMap::new();
        for v in &verified {
            if v.value().kind == EntryKind::Tombstone {
                let live = store.entry(feed, v.key()).map_err(store_err)?;
                if live.is_some_and(|e| e.kind != EntryKind::Tombstone) {
                    deletes += 1;
                }
            }
            for &(hash, size) in v.blobs() {
                if store.blob_size(&hash).map_err(store_err)? != Some(size) {
                    wanted.insert(hash, size);
                }
            }
        }
        if !self.check_guard(feed, deletes)? {
            return Ok(());
        }
        let job = self.job(feed)?;
        job.run_deletes += deletes;
        if dry_run {
            job.report.plan_adds += verified.len() as u64 - deletes;
            job.report.plan_deletes += deletes;
            job.report.plan_bytes += wanted.values().sum::<u64>();
            return self.maybe_done(store, feed);
        }
        if !wanted.is_empty() && job.waiting_bytes + doc_bytes > limits.max_waiting_doc_bytes {
            let reason = format!(
                "more than {} MiB of documents of `{feed}` are waiting for their blobs; this run stops here and the next one continues from what arrived",
                limits.max_waiting_doc_bytes >> 20
            );
            self.fail_feed(feed, code::INTERNAL, reason)?;
            return Ok(());
        }
        let mut requests = Vec::new();
        let mut waiting = HashSet::new();
        let mut due = 0;
        for (hash, size) in wanted {
            // Another batch (of any feed) already fetches it: wait for that.
            if self.jobs.values().any(|j| j.incoming.contains_key(&hash)) {
                waiting.insert(hash);
                continue;
            }
            // A bucket shared with another instance may hold it already.
            if let Some(stored) = store.adopt_blob(hash, size).map_err(store_err)? {
                let job = self.job(feed)?;
                job.report.blobs_adopted += 1;
                job.report.blob_bytes_adopted += size;
                pins.push(stored.into_pin());
                continue;
            }
            let mut incoming = store.receive_blob(hash, size).map_err(store_err)?;
            if incoming.is_complete() {
                // Every group arrived in an earlier run that ended before installing it.
                match store.finish_blob(incoming) {
                    Ok(stored) => {
                        let job = self.job(feed)?;
                        job.report.blobs_received += 1;
                        pins.push(stored.into_pin());
                        continue;
                    }
                    // It did not hold up end to end (its files are gone now): fetch it anew.
                    Err(StoreError::CorruptBlob(_)) => {
                        incoming = store.receive_blob(hash, size).map_err(store_err)?;
                    }
                    Err(e) => return Err(store_err(e)),
                }
            }
            let missing = incoming.missing();
            due += range_bytes(&missing, size);
            requests.push(BlobRequest {
                hash: *hash.as_bytes(),
                size,
                groups: missing,
            });
            self.job(feed)?.incoming.insert(hash, incoming);
            waiting.insert(hash);
        }
        let job = self.job(feed)?;
        if !waiting.is_empty() {
            job.waiting_bytes += doc_bytes;
        }
        job.batches.push(Batch {
            docs: verified,
            bytes: if waiting.is_empty() { 0 } else { doc_bytes },
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
        if !incoming.is_complete() {
            job.incoming.insert(hash, incoming);
            return Ok(());
        }
        let stored = store.finish_blob(incoming).map_err(store_err)?;
        self.job(&feed)?.report.blobs_received += 1;
        // Every batch waiting for it, in any feed, may be ready now.
        let mut ready = Vec::new();
        for (name, job) in &mut self.jobs {
            let mut touched = false;
            for b in &mut job.batches {
                if b.waiting.remove(&hash) {
                    touched = true;
                    b._pins.push(store.pin(hash));
                }
            }
            if touched {
                ready.push(name.clone());
            }
        }
        drop(stored);
        for name in ready {
            self.apply_ready(store, &name)?;
        }
        Ok(())
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
        if job.phase == Phase::Failed {
            return Ok(());
        }
        let rule = job.rule.unwrap_or(ApplyRule::Authoritative);
        let (ready, waiting): (Vec<Batch>, Vec<Batch>) = std::mem::take(&mut job.batches)
            .into_iter()
            .partition(|b| b.waiting.is_empty());
        job.batches = waiting;
        for batch in ready {
            self.job(feed)?.waiting_bytes -= batch.bytes;
            let results = store
                .apply_verified(feed, batch.docs, rule)
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

    /// Sends DONE once this side's state for the feed is final: it has sent what it had to,
    /// and every document it was to receive is applied.
    fn maybe_done(&mut self, store: &Store, feed: &str) -> Result<(), SessionError> {
        if self.doc_queue.iter().any(|q| q.feed == feed) {
            return Ok(());
        }
        let (role, mode) = (self.role, self.mode);
        let job = self.job(feed)?;
        let receiving = match job.phase {
            Phase::Documents { receiving } => receiving,
            Phase::Blobs => true,
            _ => return Ok(()),
        };
        if receiving {
            if !job.docs_complete() {
                return Ok(());
            }
            if !job.batches.is_empty() || !job.incoming.is_empty() {
                job.phase = Phase::Blobs;
                return Ok(());
            }
        }
        let filter = self.job(feed)?.filter.clone();
        let sum = view_summary(store, feed, filter.as_ref())?;
        let root = (*sum.root.fingerprint.as_bytes(), sum.root.count);
        let job = self.job(feed)?;
        // A pull by log that did not reach the upstream root (local extras): reconcile fully.
        if role == Role::Initiator
            && job.report.path == Path::Log
            && job.report.peer_root.is_some_and(|p| p != root)
            && !job.dry_run
        {
            job.report.path = Path::Sketch;
            job.new_round(Recon::SummaryRequested);
            self.outbox.push_back(Frame::SummaryRequest {
                feed: feed.to_owned(),
            });
            return Ok(());
        }
        job.phase = Phase::Final;
        job.report.local_root = Some(root);
        if std::mem::replace(&mut job.local_done, true) {
            // A second round after a change log: the DONE of the first stands.
            return self.finish_feed(store, feed);
        }
        // The authoritative side of a pull says what its state is as it finishes.
        let job_filter = job.filter.clone();
        let checkpoint = if role == Role::Responder && mode == Mode::Pull {
            serve_checkpoint(store, mode, feed, &self.limits, job_filter.as_ref())?
        } else {
            None
        };
        // One the initiator already holds from this run's status is not sent again.
        let job = self.job(feed)?;
        let checkpoint = checkpoint.filter(|cp| job.sent_checkpoint.as_ref() != Some(cp));
        self.outbox.push_back(Frame::Done {
            feed: feed.to_owned(),
            root: root.0,
            count: root.1,
            checkpoint,
        });
        self.finish_feed(store, feed)
    }

    /// Answers WANT-BLOBS: each blob must be one a document this side sent in this run names,
    /// asked for once, at the size the document gives, with ranges inside it in order.
    fn serve_blobs(&mut self, store: &Store, blobs: &[BlobRequest]) -> Result<(), SessionError> {
        if blobs.is_empty() {
            return Err(SessionError::Protocol("WANT-BLOBS asks for nothing".into()));
        }
        for req in blobs {
            let hash = Hash::from_bytes(req.hash);
            let Some(size) = self.offered.remove(&hash) else {
                return Err(SessionError::Unauthorized(format!(
                    "peer asked for blob {hash}, which no document sent to it in this run names (or asked for it twice)"
                )));
            };
            if size != req.size {
                return Err(SessionError::Protocol(format!(
                    "peer asked for blob {hash} as {} bytes; its document says {size}",
                    req.size
                )));
            }
            let held = store.blob_size(&hash).map_err(store_err)?;
            if held != Some(size) {
                return Err(store_err(StoreError::CorruptRecord {
                    what: "blob",
                    detail: format!(
                        "blob {hash} is named by a document here but not stored at {size} bytes"
                    ),
                }));
            }
            let groups = group_count(size);
            let mut prev_end = 0;
            if req.groups.is_empty() {
                return Err(SessionError::Protocol(format!(
                    "peer asked for no ranges of blob {hash}"
                )));
            }
            for &(a, b) in &req.groups {
                if a >= b || b > groups || a < prev_end {
                    return Err(SessionError::Protocol(format!(
                        "peer asked for chunk groups {a}..{b} of blob {hash}, which has {groups}, out of order or empty"
                    )));
                }
                prev_end = b;
            }
            self.stats.blobs_sent += 1;
            for &(a, b) in &req.groups {
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

/// Whether stored documents may go to a peer: each one's signer is still trusted for the
/// feed (a document whose only signer lost that trust is neither served nor offered). Each
/// signer's key is checked and its trust read once per batch.
#[derive(Default)]
struct SignerTrust(HashMap<[u8; 32], bool>);

impl SignerTrust {
    fn offerable(
        &mut self,
        store: &Store,
        feed: &str,
        signer: [u8; 32],
    ) -> Result<bool, SessionError> {
        if let Some(&t) = self.0.get(&signer) {
            return Ok(t);
        }
        let key = PublicKey::from_bytes(signer)
            .ok_or_else(|| store_err(StoreError::Document(DocumentError::InvalidKey)))?;
        let t = store.is_trusted(feed, &key).map_err(store_err)?;
        self.0.insert(signer, t);
        Ok(t)
    }

    /// [`SignerTrust::offerable`] of envelope `doc`.
    fn offerable_doc(
        &mut self,
        store: &Store,
        feed: &str,
        doc: &[u8],
    ) -> Result<bool, SessionError> {
        let signer =
            SignedDocument::peek_signer(doc).map_err(|e| store_err(StoreError::Document(e)))?;
        self.offerable(store, feed, signer)
    }
}

/// Records the blobs a manifest names as offered to the peer (other documents name none).
fn offer_blobs(offered: &mut HashMap<Hash, u64>, doc: &[u8]) {
    if let Ok(m) = SignedDocument::peek_payload::<Manifest>(doc) {
        for f in m.files {
            offered.insert(f.blob, f.size);
        }
    }
}

/// A feed's record and root as a run sees it: the whole feed, or the entries its filter
/// selects.
fn view_summary(
    store: &Store,
    feed: &str,
    filter: Option<&Filter>,
) -> Result<FeedSummary, SessionError> {
    let mut sum = store.feed_summary(feed).map_err(store_err)?;
    if let Some(f) = filter {
        sum.root = store.filtered_summary(feed, f).map_err(store_err)?.root;
    }
    Ok(sum)
}

/// The entries under `prefix` as a run sees them (those its filter selects).
fn view_entries_under(
    store: &Store,
    feed: &str,
    prefix: &[u8],
    filter: Option<&Filter>,
) -> Result<Vec<(Hash, Entry)>, SessionError> {
    let out = store.entries_under(feed, prefix).map_err(store_err)?;
    Ok(as_the_run_sees(out, filter))
}

/// The entries under each of `key8s` (8-byte key prefixes) as a run sees them, read with one
/// iterator; an entry removed meanwhile is left out.
fn view_entries_at_key8s(
    store: &Store,
    feed: &str,
    key8s: &[u64],
    filter: Option<&Filter>,
) -> Result<Vec<(Hash, Entry)>, SessionError> {
    let out = store.entries_at_key8s(feed, key8s).map_err(store_err)?;
    Ok(as_the_run_sees(out, filter))
}

/// Those of `entries` the run's filter selects.
fn as_the_run_sees(mut entries: Vec<(Hash, Entry)>, filter: Option<&Filter>) -> Vec<(Hash, Entry)> {
    if let Some(f) = filter {
        let m = f.matcher();
        entries.retain(|(_, e)| m.selects(&e.key));
    }
    entries
}

/// Whether a checkpoint is over the filter the run asked for (none for the whole feed): a
/// checkpoint of another set proves nothing about this one.
fn checkpoint_filter_matches(cp: &[u8], filter: Option<&Filter>) -> Result<(), String> {
    let got = SignedDocument::peek_payload::<Checkpoint>(cp)
        .map_err(|e| format!("the checkpoint does not parse: {e}"))?
        .filter;
    if got.as_ref() == filter {
        return Ok(());
    }
    let show = |f: Option<&Filter>| match f {
        None => "the whole feed".to_owned(),
        Some(f) => format!("include {:?} exclude {:?}", f.include, f.exclude),
    };
    Err(format!(
        "the checkpoint is over {}, this pull asked for {}",
        show(got.as_ref()),
        show(filter)
    ))
}

/// The seed of a feed's `summary` table: fixed per feed, so each side builds its own alike.
pub(crate) fn summary_seed(feed: &str) -> u64 {
    sketch_seed(feed, &[0xff; 32])
}

/// The `summary` status's table ([`SUMMARY_CELLS`] cells) and estimator of every item of the
/// feed as the run sees it: one read of the feed, bucket by bucket, keeping nothing else.
fn summary_sketch(
    store: &Store,
    feed: &str,
    filter: Option<&Filter>,
) -> Result<(Iblt, Estimator), SessionError> {
    let mut table = Iblt::new(SUMMARY_CELLS, summary_seed(feed))
        .map_err(|e| SessionError::Protocol(e.to_string()))?;
    let mut estimator = Estimator::new();
    for b in 0..=255u8 {
        for (kh, e) in view_entries_under(store, feed, &[b], filter)? {
            let item = Item::new(kh.as_bytes(), merkle::leaf(&e.key, &e.value.doc).as_bytes());
            table.insert(&item);
            estimator.insert(&item);
        }
    }
    Ok((table, estimator))
}

/// A peer's table less this side's, with counts modulo 2^16 as they travelled.
fn subtract_tables(theirs: &Iblt, mine: &Iblt) -> Result<Iblt, SessionError> {
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
    Iblt::from_cells(cells, theirs.seed()).map_err(|e| SessionError::Protocol(e.to_string()))
}

/// The `summary` status of a feed as this side holds it.
pub(crate) fn summary(
    store: &Store,
    feed: &str,
    mode: Mode,
    checkpoint: Option<Vec<u8>>,
    filter: Option<&Filter>,
) -> Result<FeedStatus, SessionError> {
    let record = store.feed(feed).map_err(store_err)?;
    let root = match filter {
        Some(f) => store.filtered_summary(feed, f).map_err(store_err)?.root,
        None => store.feed_summary(feed).map_err(store_err)?.root,
    };
    let (table, estimator) = summary_sketch(store, feed, filter)?;
    Ok(FeedStatus::Summary {
        root: *root.fingerprint.as_bytes(),
        count: root.count,
        cursor: cursor_to_wire(record.cursor()),
        cells: pack_cells(&table),
        estimator: estimator.as_bytes().to_vec(),
        checkpoint,
        collected: if mode == Mode::Mirror {
            record.collected_hlc
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

/// The responder's checkpoint in a pull (it is authoritative: the replica keeps it) and in a
/// mirror (the initiator checks that a writer of the feed answers): the writer's own, passed
/// on unchanged by a replica, or this instance's signature (see
/// [`Store::checkpoint_to_serve`]).
fn serve_checkpoint(
    store: &Store,
    mode: Mode,
    feed: &str,
    limits: &Limits,
    filter: Option<&Filter>,
) -> Result<Option<Vec<u8>>, SessionError> {
    if mode == Mode::Push {
        return Ok(None);
    }
    if let Some(f) = filter {
        return store
            .filtered_checkpoint_to_serve(
                feed,
                f,
                limits.checkpoint_ttl_secs,
                limits.checkpoint_refresh_secs,
            )
            .map(Some)
            .map_err(store_err);
    }
    store
        .checkpoint_to_serve(
            feed,
            limits.checkpoint_ttl_secs,
            limits.checkpoint_refresh_secs,
        )
        .map(Some)
        .map_err(store_err)
}

/// The current value of every key changed since `since`, or `None` when a log cannot answer
/// (or its documents would take more than what is left of `budget`, which it then uses up).
fn log_suffix(
    store: &Store,
    feed: &str,
    since: Cursor,
    budget: &mut usize,
    filter: Option<&Filter>,
) -> Result<Option<Vec<WireChange>>, SessionError> {
    let selected = |key: &str| filter.is_none_or(|f| f.selects(key));
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
                .filter(|c| selected(&c.key))
                .map(|c| c.key.clone())
                .collect::<std::collections::BTreeSet<_>>()
                .into_iter()
                .collect();
            let mut out = Vec::with_capacity(keys.len());
            let mut bytes = 0;
            let mut trust = SignerTrust::default();
            for key in keys {
                let doc = match store.entry(feed, &key).map_err(store_err)? {
                    Some(v) => Some(
                        store
                            .document_bytes(&v.doc)
                            .map_err(store_err)?
                            .ok_or_else(|| {
                                store_err(StoreError::missing_document("entry", &key, &v.doc))
                            })?,
                    ),
                    None => None,
                };
                // A document no longer offered: the summary path leaves it out.
                if let Some(d) = &doc {
                    if !trust.offerable_doc(store, feed, d)? {
                        return Ok(None);
                    }
                }
                bytes += key.len() + doc.as_ref().map_or(0, Vec::len) + 16;
                if bytes > *budget {
                    return Ok(None);
                }
                out.push(WireChange { key, doc });
            }
            *budget -= bytes;
            Ok(Some(out))
        }
    }
}

/// This side's items in `buckets`, grouped by bucket in order.
fn collect_items(store: &Store, job: &mut FeedJob, buckets: &[u8]) -> Result<(), SessionError> {
    job.local_items.clear();
    job.bucket_starts.clear();
    job.buckets = buckets.to_vec();
    for &b in buckets {
        job.bucket_starts.push((b, job.local_items.len()));
        for (kh, e) in view_entries_under(store, &job.name, &[b], job.filter.as_ref())? {
            let leaf = merkle::leaf(&e.key, &e.value.doc);
            job.local_items
                .push(Item::new(kh.as_bytes(), leaf.as_bytes()));
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
fn keys_by_key8(
    store: &Store,
    feed: &str,
    key8s: &[u64],
    filter: Option<&Filter>,
) -> Result<Vec<String>, SessionError> {
    Ok(view_entries_at_key8s(store, feed, key8s, filter)?
        .into_iter()
        .map(|(_, e)| e.key)
        .collect())
}

/// A feed HELLO admitted: its state as the run sees it, and for a filtered pull the
/// checkpoint signed while admitting it.
type Admitted = (FeedSummary, Option<Vec<u8>>);

/// Documents for one frame and the small blobs they name.
type DocBatch = (Vec<ByteBuf>, Vec<SmallBlob>);

#[cfg(test)]
impl Session {
    /// Documents queued to send: entries read from the store and prefixes not read yet.
    pub(crate) fn docs_queued(&self) -> (usize, usize) {
        self.doc_queue.iter().fold((0, 0), |(read, pending), q| {
            (
                read + q.keys.entries.len(),
                pending + q.keys.key8s.len() + q.keys.buckets.len(),
            )
        })
    }

    /// A session past HELLO whose one feed `feed` is in `phase`: for walking the phase table.
    pub(crate) fn with_feed_in_phase(
        role: Role,
        mode: Mode,
        peer: PublicKey,
        feed: &str,
        phase: Phase,
    ) -> Session {
        let mut s = Session::new(role, mode, String::new(), peer, 0, Limits::default());
        let rule = match (role, mode) {
            (_, Mode::Mirror) => Some(ApplyRule::LastWriterWins),
            (Role::Initiator, Mode::Pull) | (Role::Responder, Mode::Push) => {
                Some(ApplyRule::Authoritative)
            }
            _ => None,
        };
        let mut job = FeedJob::new(feed, rule, GuardRail::default(), false);
        job.phase = phase;
        s.jobs.insert(feed.to_owned(), job);
        s.order.push(feed.to_owned());
        s.hello_done = true;
        s
    }

    /// The phase `feed` is in.
    pub(crate) fn phase_of(&self, feed: &str) -> Option<Phase> {
        self.jobs.get(feed).map(|j| j.phase)
    }
}
