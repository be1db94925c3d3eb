//! Wire types of `cairn/sync/6` and their framing: a 4-byte big-endian length, then one CBOR
//! item. The length is checked against [`MAX_FRAME`] before anything is allocated. These types
//! are only for the wire; [`crate::proto`] converts them to and from store types explicitly.
//! `wire-spec/README.md` is the normative description.

use serde::{Deserialize, Serialize};

/// Protocol version carried in HELLO (and in the ALPN `cairn/sync/6`).
pub const PROTOCOL_VERSION: u32 = 6;
/// The ALPN of this protocol version.
pub const ALPN: &[u8] = b"cairn/sync/6";
/// Largest frame body accepted.
pub const MAX_FRAME: usize = 8 << 20;
/// Most feeds one NOTIFY names.
pub const MAX_NOTIFY_FEEDS: usize = 1024;
/// Nesting limit for frame bodies.
pub const MAX_NESTING: usize = 16;
/// Most items a DIFFERENCE frame names, both sides together: what the `summary` status's
/// table can give when it peels, with room to spare.
pub const MAX_DIFFERENCE_ITEMS: usize = 64;
/// Bytes of one packed IBLT cell: count modulo 2^16 (u16 BE), key and leaf (u64 BE each),
/// check (u32 BE).
pub const CELL_BYTES: usize = 22;

/// Where content flows, from the initiator's point of view.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// The responder is authoritative; the initiator becomes a copy of it.
    Pull,
    /// The initiator is authoritative; the responder becomes a copy of it.
    Push,
    /// Both ways; last writer wins.
    Mirror,
}

impl Mode {
    /// As configured and logged: `pull`, `push` or `mirror`.
    pub fn name(self) -> &'static str {
        match self {
            Mode::Pull => "pull",
            Mode::Push => "push",
            Mode::Mirror => "mirror",
        }
    }
}

/// A change-log position.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct WireCursor {
    /// Epoch.
    pub epoch: u64,
    /// Sequence number.
    pub seq: u64,
}

/// One feed's state as announced in HELLO.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FeedHello {
    /// Feed name (or `@system`).
    pub feed: String,
    /// Merkle root fingerprint.
    #[serde(with = "serde_bytes")]
    pub root: [u8; 32],
    /// Entry count.
    pub count: u64,
    /// The responder's cursor as of the last completed pull of this feed, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub since: Option<WireCursor>,
    /// A filtered pull: the entries of the feed to compare and move (`root` and `count` are
    /// over them, and so is the checkpoint the responder answers with).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub filter: Option<cairn_store::doc::Filter>,
    /// Push: the initiator's signed checkpoint of this feed.
    #[serde(default, with = "serde_bytes", skip_serializing_if = "Option::is_none")]
    pub checkpoint: Option<Vec<u8>>,
    /// Mirror: the highest clock of a tombstone the initiator has collected from this feed.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub collected: u64,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

fn is_false(b: &bool) -> bool {
    !*b
}

fn is_true(b: &bool) -> bool {
    *b
}

fn yes() -> bool {
    true
}

/// One changed entry: key and document envelope, or `None` for an entry removed outright.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct WireChange {
    /// Entry key.
    pub key: String,
    /// The document's envelope bytes.
    #[serde(default, with = "serde_bytes", skip_serializing_if = "Option::is_none")]
    pub doc: Option<Vec<u8>>,
}

/// The responder's answer for one feed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FeedStatus {
    /// Same root: nothing to do.
    Equal {
        /// The responder's cursor.
        cursor: WireCursor,
        /// Pull: the responder's signed checkpoint.
        #[serde(default, with = "serde_bytes", skip_serializing_if = "Option::is_none")]
        checkpoint: Option<Vec<u8>>,
    },
    /// The change-log suffix since the initiator's cursor (pull only).
    Log {
        /// The responder's root after these changes.
        #[serde(with = "serde_bytes")]
        root: [u8; 32],
        /// Its count.
        count: u64,
        /// Its cursor.
        cursor: WireCursor,
        /// The current value of every key changed since the cursor.
        changes: Vec<WireChange>,
        /// Pull: the responder's signed checkpoint.
        #[serde(default, with = "serde_bytes", skip_serializing_if = "Option::is_none")]
        checkpoint: Option<Vec<u8>>,
    },
    /// The responder's summary of a feed it holds otherwise: a small table of all its items and
    /// an estimator of the difference, for the initiator to peel at once or to size a sketch.
    Summary {
        /// Root.
        #[serde(with = "serde_bytes")]
        root: [u8; 32],
        /// Count.
        count: u64,
        /// Cursor.
        cursor: WireCursor,
        /// An IBLT of every item, [`crate::iblt::SUMMARY_CELLS`] packed cells of
        /// [`CELL_BYTES`], seeded from the feed name (wire-spec section 5).
        #[serde(with = "serde_bytes")]
        cells: Vec<u8>,
        /// The count sketch of every item: [`crate::iblt::ESTIMATOR_COUNTERS`] bytes.
        #[serde(with = "serde_bytes")]
        estimator: Vec<u8>,
        /// Pull: the responder's signed checkpoint.
        #[serde(default, with = "serde_bytes", skip_serializing_if = "Option::is_none")]
        checkpoint: Option<Vec<u8>>,
        /// Mirror: the highest clock of a tombstone the responder has collected from this feed.
        #[serde(default, skip_serializing_if = "is_zero")]
        collected: u64,
    },
    /// Pull, to an initiator that holds nothing of the feed (count 0 in HELLO): there is
    /// nothing to reconcile, so the responder sends every entry at once, in a DIFF after
    /// HELLO-REPLY (wire-spec section 5).
    All {
        /// Root.
        #[serde(with = "serde_bytes")]
        root: [u8; 32],
        /// Count.
        count: u64,
        /// Cursor.
        cursor: WireCursor,
        /// The responder's signed checkpoint.
        #[serde(default, with = "serde_bytes", skip_serializing_if = "Option::is_none")]
        checkpoint: Option<Vec<u8>>,
    },
    /// This feed cannot be replicated with this peer.
    Refused {
        /// An error code.
        code: u32,
        /// Why.
        reason: String,
    },
}

/// The responder's answer about transparency logs, in HELLO-REPLY.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct WireLog {
    /// The responder's newest signed tree head (absent while its log is empty).
    #[serde(default, with = "serde_bytes", skip_serializing_if = "Option::is_none")]
    pub head: Option<Vec<u8>>,
    /// For each head of the responder's log in HELLO, in order: the consistency proof from
    /// it to `head`, its hashes concatenated (32 bytes each).
    pub proofs: Vec<serde_bytes::ByteBuf>,
    /// The newest heads the responder holds of other logs (gossip).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub heads: Vec<serde_bytes::ByteBuf>,
}

/// Everything that travels on the control stream.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Frame {
    /// Initiator -> responder: who, how, and the state of each feed.
    Hello {
        /// [`PROTOCOL_VERSION`].
        version: u32,
        /// Replication token.
        token: String,
        /// Direction of content.
        mode: Mode,
        /// The feeds to replicate.
        feeds: Vec<FeedHello>,
        /// Signed tree heads of transparency logs the initiator holds: the responder's own
        /// (each gets a consistency proof) and the newest of other logs (gossip).
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        heads: Vec<serde_bytes::ByteBuf>,
        /// Ask the responder to send [`Frame::Notify`] on this connection when a feed pulled
        /// in this run changes, until the next run or the connection's end.
        #[serde(default, skip_serializing_if = "is_false")]
        notify: bool,
        /// The most bytes per second the responder may send in this run (0: no cap).
        #[serde(default, skip_serializing_if = "is_zero")]
        max_rate: u64,
    },
    /// Responder -> initiator, alone on a unidirectional stream of a connection whose last
    /// HELLO asked for it: these feeds changed here since that run (pull again).
    Notify {
        /// Feed names, at most [`MAX_NOTIFY_FEEDS`].
        feeds: Vec<String>,
    },
    /// Responder -> initiator: one status per feed, in HELLO's order.
    HelloReply {
        /// Statuses.
        feeds: Vec<FeedStatus>,
        /// The responder's transparency log: its head and the proofs HELLO's heads ask for.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        log: Option<WireLog>,
    },
    /// Ask for the level-1 summary of a feed again (after applying a log that did not converge).
    SummaryRequest {
        /// Feed.
        feed: String,
    },
    /// The level-1 summary, answering [`Frame::SummaryRequest`].
    Summary {
        /// Feed.
        feed: String,
        /// Status (always `Summary`).
        status: FeedStatus,
    },
    /// An IBLT of the sender's items in the named level-1 buckets.
    Sketch {
        /// Feed.
        feed: String,
        /// 256-bit bitmap of the buckets covered.
        #[serde(with = "serde_bytes")]
        buckets: Vec<u8>,
        /// Table seed.
        seed: u64,
        /// Packed cells, [`CELL_BYTES`] each.
        #[serde(with = "serde_bytes")]
        cells: Vec<u8>,
    },
    /// The sketch did not decode; send a larger one or a list.
    SketchFailed {
        /// Feed.
        feed: String,
    },
    /// Initiator -> responder: the whole difference, peeled from the `summary` status's
    /// table, for the responder to answer with DIFF as it would a sketch it decoded.
    Difference {
        /// Feed.
        feed: String,
        /// Packed items (16 bytes each) the initiator holds and the responder does not.
        #[serde(with = "serde_bytes")]
        mine: Vec<u8>,
        /// Packed items the responder holds and the initiator does not.
        #[serde(with = "serde_bytes")]
        yours: Vec<u8>,
    },
    /// Every item of the sender in the named buckets, 16 bytes each (key hash 8, leaf 8). A
    /// long list travels as several pages, each covering whole buckets of its own.
    ItemList {
        /// Feed.
        feed: String,
        /// Bitmap of buckets.
        #[serde(with = "serde_bytes")]
        buckets: Vec<u8>,
        /// Packed items.
        #[serde(with = "serde_bytes")]
        items: Vec<u8>,
        /// The last page of this list.
        #[serde(default = "yes", skip_serializing_if = "is_true")]
        last: bool,
    },
    /// Result of reconciliation as the decoding side sends it.
    Diff {
        /// Feed.
        feed: String,
        /// Documents the receiver lacks (for it to apply); packed on the wire (see
        /// [`packed_docs`]).
        #[serde(with = "packed_docs")]
        docs: Vec<serde_bytes::ByteBuf>,
        /// Key hashes (8 bytes each) the receiver should remove (pull: not upstream).
        #[serde(with = "serde_bytes")]
        remove: Vec<u8>,
        /// Key hashes (8 bytes each) whose documents the sender wants.
        #[serde(with = "serde_bytes")]
        want: Vec<u8>,
        /// Mirror: the subset of `want` the sender holds no entry for at all.
        #[serde(default, with = "serde_bytes", skip_serializing_if = "Vec::is_empty")]
        absent: Vec<u8>,
        /// Small blobs the documents name, sent unasked.
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        blobs: Vec<SmallBlob>,
        /// No DOCS frames follow for this feed.
        last: bool,
        /// More DIFF frames of this round follow (long key lists travel as pages; only the
        /// last page carries documents).
        #[serde(default, skip_serializing_if = "is_false")]
        more: bool,
    },
    /// Documents sent on request.
    Docs {
        /// Feed.
        feed: String,
        /// Envelopes; packed on the wire (see [`packed_docs`]).
        #[serde(with = "packed_docs")]
        docs: Vec<serde_bytes::ByteBuf>,
        /// Small blobs the documents name, sent unasked.
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        blobs: Vec<SmallBlob>,
        /// The last DOCS frame the sender will send for this feed in this round.
        last: bool,
        /// Position among this round's DOCS frames for the feed, from 0: they travel on
        /// separate streams and may arrive in any order.
        #[serde(default)]
        seq: u64,
    },
    /// The sender stops working on one feed (the rest of the run goes on).
    FeedFailed {
        /// Feed.
        feed: String,
        /// Error code.
        code: u32,
        /// Why.
        reason: String,
    },
    /// Ask for blob ranges.
    WantBlobs {
        /// Requests.
        blobs: Vec<BlobRequest>,
    },
    /// A verified-streaming piece of a blob.
    BlobPiece {
        /// Blob hash.
        #[serde(with = "serde_bytes")]
        hash: [u8; 32],
        /// Blob size.
        size: u64,
        /// Chunk-group ranges encoded.
        groups: Vec<(u64, u64)>,
        /// `bao-tree` encoding of those ranges (or the whole bytes of a small blob).
        #[serde(with = "serde_bytes")]
        data: Vec<u8>,
    },
    /// The head of a blob piece whose `bao-tree` encoding follows it on the same
    /// unidirectional stream as `len` raw bytes, up to the stream's end: the QUIC binding sends
    /// pieces this way so the receiver can verify and keep each chunk group as it arrives.
    BlobStream {
        /// Blob hash.
        #[serde(with = "serde_bytes")]
        hash: [u8; 32],
        /// Blob size.
        size: u64,
        /// Chunk-group ranges encoded.
        groups: Vec<(u64, u64)>,
        /// Bytes of the encoding that follow.
        len: u64,
    },
    /// The sender has finished with a feed; its root and count now.
    Done {
        /// Feed.
        feed: String,
        /// Root.
        #[serde(with = "serde_bytes")]
        root: [u8; 32],
        /// Count.
        count: u64,
        /// Pull, from the responder: the checkpoint covering its state now (the state may have
        /// moved on since HELLO-REPLY).
        #[serde(default, with = "serde_bytes", skip_serializing_if = "Option::is_none")]
        checkpoint: Option<Vec<u8>>,
    },
    /// Initiator -> responder, alone on a control stream, before HELLO: the responder
    /// presented another key than `key`, the one pinned for it; it answers with the
    /// statements that lead from `key` to its key now ([`Frame::Rotation`]).
    RotationRequest {
        /// The key pinned for the responder.
        #[serde(with = "serde_bytes")]
        key: [u8; 32],
    },
    /// The key-rotation statements from the asked key to the responder's key, oldest first
    /// (none when it never held the asked key).
    Rotation {
        /// Signed key-rotation documents.
        statements: Vec<serde_bytes::ByteBuf>,
    },
    /// A fatal error; the connection closes after it.
    Error {
        /// Error code (see the wire spec).
        code: u32,
        /// Human-readable reason.
        reason: String,
    },
}

/// A small blob (at most one chunk group) sent whole beside the documents that name it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SmallBlob {
    /// The bytes; their BLAKE3 hash must be a blob a document of the same frame names.
    #[serde(with = "serde_bytes")]
    pub data: Vec<u8>,
}

/// A request for ranges of one blob.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BlobRequest {
    /// Blob hash.
    #[serde(with = "serde_bytes")]
    pub hash: [u8; 32],
    /// Its size, as the manifest says.
    pub size: u64,
    /// Chunk-group ranges wanted.
    pub groups: Vec<(u64, u64)>,
}

/// Error codes carried in [`Frame::Error`] and [`FeedStatus::Refused`].
pub mod code {
    /// Malformed or oversized frame.
    pub const PROTOCOL: u32 = 1;
    /// Protocol version not supported.
    pub const VERSION: u32 = 2;
    /// Token missing, wrong, or not valid for this feed.
    pub const UNAUTHORIZED: u32 = 3;
    /// No such feed here.
    pub const NO_SUCH_FEED: u32 = 4;
    /// The mode is not allowed for this token or feed.
    pub const MODE_NOT_ALLOWED: u32 = 5;
    /// The peer sent data that failed verification.
    pub const BAD_DATA: u32 = 6;
    /// A local failure.
    pub const INTERNAL: u32 = 7;
    /// The guard rail stopped a plan that would delete too much.
    pub const GUARD_RAIL: u32 = 8;
}

impl Frame {
    /// The frame's name in the spec (`HELLO`, `DOCS`, ...).
    pub fn name(&self) -> &'static str {
        match self {
            Frame::Hello { .. } => "HELLO",
            Frame::HelloReply { .. } => "HELLO-REPLY",
            Frame::Notify { .. } => "NOTIFY",
            Frame::SummaryRequest { .. } => "SUMMARY-REQUEST",
            Frame::Summary { .. } => "SUMMARY",
            Frame::Sketch { .. } => "SKETCH",
            Frame::SketchFailed { .. } => "SKETCH-FAILED",
            Frame::Difference { .. } => "DIFFERENCE",
            Frame::ItemList { .. } => "ITEM-LIST",
            Frame::Diff { .. } => "DIFF",
            Frame::Docs { .. } => "DOCS",
            Frame::WantBlobs { .. } => "WANT-BLOBS",
            Frame::BlobPiece { .. } => "BLOB-PIECE",
            Frame::BlobStream { .. } => "BLOB-STREAM",
            Frame::Done { .. } => "DONE",
            Frame::FeedFailed { .. } => "FEED-FAILED",
            Frame::RotationRequest { .. } => "ROTATION-REQUEST",
            Frame::Rotation { .. } => "ROTATION",
            Frame::Error { .. } => "ERROR",
        }
    }

    /// The feed a frame is about, for frames that are about one.
    pub fn feed(&self) -> Option<&str> {
        match self {
            Frame::SummaryRequest { feed, .. }
            | Frame::Summary { feed, .. }
            | Frame::Sketch { feed, .. }
            | Frame::SketchFailed { feed, .. }
            | Frame::Difference { feed, .. }
            | Frame::ItemList { feed, .. }
            | Frame::Diff { feed, .. }
            | Frame::Docs { feed, .. }
            | Frame::FeedFailed { feed, .. }
            | Frame::Done { feed, .. } => Some(feed),
            _ => None,
        }
    }
}

/// How many times its packed size a DOCS or DIFF frame's documents may inflate to (and never
/// past [`MAX_FRAME`]). Envelopes of this protocol pack to about 45% of their size (the
/// signatures and blob hashes do not compress); the bound keeps a few bytes on the
/// wire from costing a receiver megabytes of memory and inflation.
pub const MAX_DOCS_INFLATION: usize = 16;
/// Bytes a DOCS or DIFF frame's documents may inflate to beyond [`MAX_DOCS_INFLATION`] times
/// their packed size, so one small document is never refused.
pub const DOCS_INFLATION_SLACK: usize = 1024;

/// The documents of DOCS and DIFF frames travel as one byte string: empty for none, else the
/// raw DEFLATE stream (RFC 1951) of the CBOR array of their envelopes. Envelopes of one feed
/// repeat their signer's key, the feed, the type and the payload's field names: in the first
/// sync of corpus T (100,000 one-file packages) 260 bytes each become 118 on the wire.
pub mod packed_docs {
    use std::io::{Read, Write};

    use serde::{Deserialize, Deserializer, Serializer};
    use serde_bytes::ByteBuf;

    use super::{DOCS_INFLATION_SLACK, MAX_DOCS_INFLATION, MAX_FRAME, MAX_NESTING};

    /// Packs envelopes for the wire.
    pub fn pack(docs: &[ByteBuf]) -> Vec<u8> {
        if docs.is_empty() {
            return Vec::new();
        }
        let mut array = Vec::with_capacity(docs.iter().map(|d| d.len() + 3).sum::<usize>() + 9);
        // Serialising byte strings into a Vec cannot fail.
        if let Err(e) = ciborium::ser::into_writer(docs, &mut array) {
            tracing::error!("document array encoding failed: {e}");
        }
        let mut deflate =
            flate2::write::DeflateEncoder::new(Vec::new(), flate2::Compression::fast());
        // Writing into a Vec cannot fail either.
        let _ = deflate.write_all(&array);
        deflate.finish().unwrap_or_default()
    }

    /// Unpacks what [`pack`] made, refusing a stream that is not one whole DEFLATE stream,
    /// inflates past [`MAX_DOCS_INFLATION`] times its size (plus [`DOCS_INFLATION_SLACK`]) or
    /// [`super::MAX_FRAME`], or is not an array of byte strings.
    pub fn unpack(packed: &[u8]) -> Result<Vec<ByteBuf>, String> {
        if packed.is_empty() {
            return Ok(Vec::new());
        }
        let limit = packed
            .len()
            .saturating_mul(MAX_DOCS_INFLATION)
            .saturating_add(DOCS_INFLATION_SLACK)
            .min(MAX_FRAME);
        // Envelopes deflate to about half (a signature and hashes do not shrink): room for
        // three times the packed bytes saves the growing copies in the common case.
        let mut array = Vec::with_capacity(packed.len().saturating_mul(3).min(limit + 1));
        let mut inflate = flate2::read::DeflateDecoder::new(packed);
        (&mut inflate)
            .take(limit as u64 + 1)
            .read_to_end(&mut array)
            .map_err(|e| format!("documents do not inflate: {e}"))?;
        if array.len() > limit {
            return Err(format!(
                "documents inflate past {limit} bytes ({} packed)",
                packed.len()
            ));
        }
        if inflate.total_in() != packed.len() as u64 {
            return Err(format!(
                "{} bytes after the DEFLATE stream",
                packed.len() as u64 - inflate.total_in().min(packed.len() as u64)
            ));
        }
        let mut rest = &array[..];
        let docs = ciborium::de::from_reader_with_recursion_limit(&mut rest, MAX_NESTING)
            .map_err(|e| format!("documents are not an array of byte strings: {e}"))?;
        if !rest.is_empty() {
            return Err(format!("{} bytes after the documents", rest.len()));
        }
        Ok(docs)
    }

    /// serde's side of [`pack`].
    pub fn serialize<S: Serializer>(docs: &[ByteBuf], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_bytes(&pack(docs))
    }

    /// serde's side of [`unpack`].
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<ByteBuf>, D::Error> {
        let packed = ByteBuf::deserialize(d)?;
        unpack(&packed).map_err(serde::de::Error::custom)
    }
}

/// Why bytes are not a frame.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum FrameError {
    /// The length prefix is over the limit.
    #[error("frame of {len} bytes is over the limit of {MAX_FRAME}")]
    TooLarge { len: usize },
    /// The body is not a frame.
    #[error("malformed frame: {0}")]
    Malformed(String),
}

/// Encodes a frame with its length prefix.
pub fn encode(frame: &Frame) -> Vec<u8> {
    let mut body = Vec::new();
    // Serialising these plain data types into a Vec cannot fail.
    if let Err(e) = ciborium::ser::into_writer(frame, &mut body) {
        tracing::error!("frame encoding failed: {e}");
    }
    let mut out = Vec::with_capacity(4 + body.len());
    out.extend_from_slice(&(body.len() as u32).to_be_bytes());
    out.extend_from_slice(&body);
    out
}

/// Decodes one frame body (without its length prefix).
pub fn decode_body(body: &[u8]) -> Result<Frame, FrameError> {
    if body.len() > MAX_FRAME {
        return Err(FrameError::TooLarge { len: body.len() });
    }
    let mut rest = body;
    let frame = ciborium::de::from_reader_with_recursion_limit(&mut rest, MAX_NESTING)
        .map_err(|e| FrameError::Malformed(e.to_string()))?;
    if !rest.is_empty() {
        return Err(FrameError::Malformed(format!(
            "{} trailing bytes",
            rest.len()
        )));
    }
    Ok(frame)
}

/// Splits a byte stream into frames as bytes arrive.
#[derive(Debug, Default)]
pub struct FrameReader {
    buf: Vec<u8>,
}

impl FrameReader {
    /// Adds received bytes.
    pub fn push(&mut self, bytes: &[u8]) {
        self.buf.extend_from_slice(bytes);
    }

    /// The next complete frame, `Ok(None)` if more bytes are needed. An error is final: the
    /// stream is out of step and must be closed.
    pub fn next_frame(&mut self) -> Result<Option<Frame>, FrameError> {
        let Some(prefix) = self.buf.get(..4) else {
            return Ok(None);
        };
        let len = u32::from_be_bytes([prefix[0], prefix[1], prefix[2], prefix[3]]) as usize;
        if len > MAX_FRAME {
            return Err(FrameError::TooLarge { len });
        }
        if self.buf.len() < 4 + len {
            return Ok(None);
        }
        let frame = decode_body(&self.buf[4..4 + len]);
        self.buf.drain(..4 + len);
        frame.map(Some)
    }

    /// The length of the next frame's body, once its 4-byte prefix has arrived.
    pub fn next_len(&self) -> Option<usize> {
        let p = self.buf.get(..4)?;
        Some(u32::from_be_bytes([p[0], p[1], p[2], p[3]]) as usize)
    }

    /// Makes room for the whole of the next frame at once, once its prefix has arrived and
    /// the caller has accounted for its size: a buffer grown by doubling as bytes arrive
    /// copies the frame about twice over and touches about twice its size in fresh pages.
    /// Does nothing before the prefix, or for a length over [`MAX_FRAME`].
    pub fn reserve_frame(&mut self) {
        if let Some(len) = self.next_len().filter(|&len| len <= MAX_FRAME) {
            let want = (4 + len).saturating_sub(self.buf.len());
            self.buf.reserve_exact(want);
        }
    }

    /// Bytes buffered but not yet a frame.
    pub fn pending(&self) -> usize {
        self.buf.len()
    }

    /// Takes the bytes buffered after the last frame (what followed a `blob-stream` head).
    pub fn take_pending(&mut self) -> Vec<u8> {
        std::mem::take(&mut self.buf)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn hello() -> Frame {
        Frame::Hello {
            version: PROTOCOL_VERSION,
            token: "t".into(),
            mode: Mode::Pull,
            feeds: vec![FeedHello {
                feed: "demo".into(),
                root: [7; 32],
                count: 3,
                since: None,
                filter: None,
                checkpoint: None,
                collected: 0,
            }],
            heads: Vec::new(),
            notify: false,
            max_rate: 0,
        }
    }

    #[test]
    fn frames_round_trip_in_pieces() {
        let bytes = [
            encode(&hello()),
            encode(&Frame::SketchFailed { feed: "x".into() }),
        ]
        .concat();
        let mut r = FrameReader::default();
        let mut got = Vec::new();
        for b in bytes.chunks(3) {
            r.push(b);
            while let Some(f) = r.next_frame().unwrap() {
                got.push(f);
            }
        }
        assert_eq!(got, vec![hello(), Frame::SketchFailed { feed: "x".into() }]);
        assert_eq!(r.pending(), 0);
    }

    #[test]
    fn a_reserved_frame_is_read_into_one_allocation_and_an_oversized_prefix_reserves_nothing() {
        let bytes = encode(&Frame::Docs {
            feed: "demo".into(),
            docs: envelopes(2_000),
            blobs: vec![SmallBlob {
                data: vec![7u8; 300_000],
            }],
            last: true,
            seq: 1,
        });
        let mut r = FrameReader::default();
        r.reserve_frame();
        assert_eq!(r.buf.capacity(), 0, "nothing is reserved before the prefix");
        r.push(&bytes[..10]);
        r.reserve_frame();
        let reserved = r.buf.capacity();
        assert!(reserved >= bytes.len(), "{reserved} < {}", bytes.len());
        let at = r.buf.as_ptr();
        for b in bytes[10..].chunks(1200) {
            r.push(b);
        }
        assert_eq!(r.buf.as_ptr(), at, "the buffer moved: it was grown again");
        assert_eq!(r.buf.capacity(), reserved);
        assert!(matches!(r.next_frame().unwrap(), Some(Frame::Docs { .. })));

        let mut r = FrameReader::default();
        r.push(&((MAX_FRAME as u32) + 1).to_be_bytes());
        r.reserve_frame();
        assert!(
            r.buf.capacity() < 1024,
            "an oversized prefix reserved {}",
            r.buf.capacity()
        );
        assert!(matches!(r.next_frame(), Err(FrameError::TooLarge { .. })));
    }

    fn envelopes(n: usize) -> Vec<serde_bytes::ByteBuf> {
        (0..n)
            .map(|i| serde_bytes::ByteBuf::from(format!("envelope {i} of the feed demo")))
            .collect()
    }

    #[test]
    fn documents_travel_packed_and_unpack_to_the_same_envelopes() {
        let docs = envelopes(300);
        let frame = Frame::Docs {
            feed: "demo".into(),
            docs: docs.clone(),
            blobs: Vec::new(),
            last: true,
            seq: 0,
        };
        let bytes = encode(&frame);
        let plain: usize = docs.iter().map(|d| d.len()).sum();
        assert!(bytes.len() < plain / 2, "{} bytes for {plain}", bytes.len());
        assert_eq!(decode_body(&bytes[4..]), Ok(frame));
        // None is an empty byte string.
        assert!(packed_docs::pack(&[]).is_empty());
        assert_eq!(packed_docs::unpack(&[]), Ok(Vec::new()));
    }

    #[test]
    fn packed_documents_that_inflate_too_far_or_are_not_envelopes_are_refused() {
        use std::io::Write;
        let deflate = |bytes: &[u8]| {
            let mut d = flate2::write::DeflateEncoder::new(Vec::new(), flate2::Compression::best());
            d.write_all(bytes).unwrap();
            d.finish().unwrap()
        };
        // A bomb: 4 MiB of one byte string of zeros packs to a few KiB.
        let mut bomb = vec![0x5a, 0x00, 0x40, 0x00, 0x00];
        bomb.resize(bomb.len() + (4 << 20), 0);
        let packed = deflate(&[&[0x81][..], &bomb].concat());
        assert!(packed.len() * MAX_DOCS_INFLATION < 4 << 20);
        let err = packed_docs::unpack(&packed).unwrap_err();
        assert!(err.contains("inflate past"), "{err}");
        // Not DEFLATE, not an array of byte strings, bytes after it.
        assert!(packed_docs::unpack(&[0xff; 16]).is_err());
        assert!(packed_docs::unpack(&deflate(&[0x81, 0x01])).is_err());
        assert!(packed_docs::unpack(&deflate(&[0x80, 0x00])).is_err());
        let mut trailing = packed_docs::pack(&envelopes(3));
        assert_eq!(packed_docs::unpack(&trailing), Ok(envelopes(3)));
        trailing.extend_from_slice(&[0; 4]);
        let err = packed_docs::unpack(&trailing).unwrap_err();
        assert!(err.contains("after the DEFLATE stream"), "{err}");
        // And inside a frame it is a malformed frame, not a panic.
        let mut frame = encode(&Frame::Docs {
            feed: "demo".into(),
            docs: envelopes(1),
            blobs: Vec::new(),
            last: true,
            seq: 0,
        });
        let body = frame.split_off(4);
        let good = packed_docs::pack(&envelopes(1));
        let at = body
            .windows(good.len())
            .position(|w| w == good.as_slice())
            .unwrap();
        let mut bad = body.clone();
        bad[at] ^= 0xff;
        assert!(matches!(decode_body(&bad), Err(FrameError::Malformed(_))));
    }

    #[test]
    fn oversized_length_is_refused_before_reading_the_body() {
        let mut r = FrameReader::default();
        r.push(&((MAX_FRAME as u32) + 1).to_be_bytes());
        assert_eq!(
            r.next_frame(),
            Err(FrameError::TooLarge { len: MAX_FRAME + 1 })
        );
    }

    #[test]
    fn truncated_and_garbage_frames_are_errors() {
        let bytes = encode(&hello());
        let mut r = FrameReader::default();
        r.push(&bytes[..bytes.len() - 1]);
        assert_eq!(r.next_frame(), Ok(None), "truncated: wait for more");
        let mut body = bytes[4..].to_vec();
        body.truncate(body.len() - 1);
        assert!(matches!(decode_body(&body), Err(FrameError::Malformed(_))));
        assert!(matches!(
            decode_body(&[0xff, 0x00]),
            Err(FrameError::Malformed(_))
        ));
        let mut trailing = bytes[4..].to_vec();
        trailing.push(0);
        assert!(matches!(
            decode_body(&trailing),
            Err(FrameError::Malformed(_))
        ));
    }

    proptest! {
        /// Every published frame, with bytes changed, dropped or added: decoding never
        /// panics, and what decodes re-encodes to a frame that decodes the same.
        #[test]
        fn mutated_frames_never_panic(
            pick in 0usize..64,
            edits in proptest::collection::vec((any::<usize>(), any::<u8>(), 0u8..3), 1..12),
        ) {
            let frames = crate::vectors::all_frames();
            let mut bytes = encode(&frames[pick % frames.len()].1);
            for (at, byte, kind) in edits {
                let i = at % (bytes.len() + 1);
                match kind {
                    0 if i < bytes.len() => bytes[i] ^= byte | 1,
                    1 if i < bytes.len() => { bytes.remove(i); }
                    _ => bytes.insert(i, byte),
                }
            }
            let mut r = FrameReader::default();
            r.push(&bytes);
            if let Ok(Some(f)) = r.next_frame() {
                let mut again = FrameReader::default();
                again.push(&encode(&f));
                prop_assert_eq!(again.next_frame(), Ok(Some(f)));
            }
        }

        #[test]
        fn garbage_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
            let mut r = FrameReader::default();
            r.push(&bytes);
            for _ in 0..4 {
                match r.next_frame() {
                    Ok(Some(_)) => continue,
                    _ => break,
                }
            }
        }
    }
}
