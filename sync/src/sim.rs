//! A simulated link between two [`Session`]s in virtual time: latency, bandwidth and packet
//! loss, with no sockets and no sleeping, so a 300 ms, lossy run of thousands of frames
//! finishes in moments and gives the same answer every time.
//!
//! Streams are modelled as QUIC has them (wire-spec section 3): control frames travel in
//! order on one stream; each bulk frame (DOCS, BLOB-PIECE) travels on a stream of its own,
//! with its own delay ([`Link::bulk_jitter_us`]) and its own losses, so it may arrive after
//! control frames sent later (a DONE overtaking the DOCS before it, DOCS overtaking the
//! HELLO-REPLY of an `all`); as in the transport, a side takes no bulk frame before its
//! session is through HELLO (or HELLO-REPLY), and one that arrives sooner waits until then. A
//! connection may be cut ([`Link::cut_after_frames`]): the frames still in flight are lost, a
//! piece partly written stays as written, and both sessions stop where they are, as after a
//! crash or a broken path.
//!
//! Round trips are counted causally: HELLO has depth 1 and a frame sent while handling a frame
//! of depth `d` has depth `d + 1`; the run's round trips are half the deepest frame the
//! initiator needed (rounded up).

use std::collections::BinaryHeap;

use cairn_store::Store;

use crate::proto::{
    Authorizer, FeedReport, InitiatorConfig, ResponderConfig, Session, SessionError,
};
use crate::wire::{self, Frame};

/// The simulated link.
#[derive(Clone, Copy, Debug)]
pub struct Link {
    /// Round-trip time in microseconds.
    pub rtt_us: u64,
    /// Bits per second each way.
    pub bandwidth_bps: u64,
    /// Probability that a 1200-byte packet is lost (a loss delays its frame by one RTT).
    pub loss: f64,
    /// Seed of the loss and delay pattern.
    pub seed: u64,
    /// Extra delay of each bulk frame, uniform in `0..bulk_jitter_us`.
    pub bulk_jitter_us: u64,
    /// Cut the connection once this many frames have been delivered (both ways together).
    pub cut_after_frames: Option<u64>,
}

impl Default for Link {
    /// A LAN: 1 ms, 1 Gbit/s, no loss, bulk frames in order, never cut.
    fn default() -> Link {
        Link {
            rtt_us: 1_000,
            bandwidth_bps: 1_000_000_000,
            loss: 0.0,
            seed: 1,
            bulk_jitter_us: 0,
            cut_after_frames: None,
        }
    }
}

impl Link {
    /// 300 ms RTT, 100 Mbit/s, 1% loss.
    pub fn far_lossy() -> Link {
        Link {
            rtt_us: 300_000,
            bandwidth_bps: 100_000_000,
            loss: 0.01,
            seed: 7,
            ..Link::default()
        }
    }
}

/// What a simulated run measured.
#[derive(Clone, Debug, Default)]
pub struct Outcome {
    /// Causal round trips the initiator waited for.
    pub round_trips: u64,
    /// Virtual time until the initiator was finished, in microseconds.
    pub elapsed_us: u64,
    /// Frames initiator -> responder and back.
    pub frames: [u64; 2],
    /// Wire bytes (length prefixes included) each way.
    pub bytes: [u64; 2],
    /// Of those, payload: document envelopes (as packed on the wire) and blob data.
    pub payload_bytes: [u64; 2],
    /// Initiator's per-feed reports.
    pub initiator: Vec<FeedReport>,
    /// Responder's per-feed reports.
    pub responder: Vec<FeedReport>,
    /// Initiator's error, if the session failed.
    pub initiator_error: Option<SessionError>,
    /// Responder's error, if the session failed.
    pub responder_error: Option<SessionError>,
    /// The connection was cut before the run ended.
    pub cut: bool,
}

impl Outcome {
    /// Wire bytes that are not payload, both ways.
    pub fn protocol_bytes(&self) -> u64 {
        (self.bytes[0] + self.bytes[1])
            .saturating_sub(self.payload_bytes[0] + self.payload_bytes[1])
    }
}

#[derive(PartialEq, Eq)]
struct InFlight {
    arrival: u64,
    order: u64,
    /// DOCS or a blob piece: on a stream of its own.
    bulk: bool,
    to_responder: bool,
    depth: u64,
    frame_bytes: Vec<u8>,
}

impl Ord for InFlight {
    fn cmp(&self, o: &Self) -> std::cmp::Ordering {
        (o.arrival, o.order).cmp(&(self.arrival, self.order))
    }
}

impl PartialOrd for InFlight {
    fn partial_cmp(&self, o: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(o))
    }
}

fn payload_of(f: &Frame) -> u64 {
    match f {
        Frame::BlobPiece { data, .. } => data.len() as u64,
        // Documents count as what they take on the wire, packed.
        Frame::Diff { docs, blobs, .. } | Frame::Docs { docs, blobs, .. } => {
            wire::packed_docs::pack(docs).len() as u64
                + blobs.iter().map(|b| b.data.len() as u64).sum::<u64>()
        }
        Frame::HelloReply { feeds, .. } => feeds
            .iter()
            .map(|s| match s {
                wire::FeedStatus::Log { changes, .. } => changes
                    .iter()
                    .filter_map(|c| c.doc.as_ref())
                    .map(|d| d.len() as u64)
                    .sum(),
                _ => 0,
            })
            .sum(),
        _ => 0,
    }
}

/// Runs one replication between `initiator` and `responder` stores over `link`.
pub fn run(
    initiator: &Store,
    responder: &Store,
    config: InitiatorConfig,
    authorizer: &dyn Authorizer,
    link: Link,
) -> Outcome {
    run_tampered(
        initiator,
        responder,
        config,
        authorizer,
        link,
        &mut |_, f| vec![f],
    )
}

/// What a man in the middle (or a hostile side) does to a frame: the frames to deliver in its
/// place. The flag says whether it travels to the responder.
pub type Tamper<'a> = dyn FnMut(bool, Frame) -> Vec<Frame> + 'a;

/// [`run`], with every frame passed through `tamper` on its way: the attack tests use it to
/// drop, forge or add frames between two real sessions.
pub fn run_tampered(
    initiator: &Store,
    responder: &Store,
    config: InitiatorConfig,
    authorizer: &dyn Authorizer,
    link: Link,
    tamper: &mut Tamper<'_>,
) -> Outcome {
    let mut out = Outcome::default();
    let config = InitiatorConfig {
        peer: responder.identity().public_key(),
        ..config
    };
    let responder_config = ResponderConfig {
        peer: initiator.identity().public_key(),
        now_secs: config.now_secs,
        limits: config.limits,
    };
    let mut sessions = match Session::initiator(initiator, config) {
        Ok(s) => [s, Session::responder(responder_config)],
        Err(e) => {
            out.initiator_error = Some(e);
            return out;
        }
    };
    let stores = [initiator, responder];
    let mut queue = BinaryHeap::new();
    let mut link_free = [0u64; 2];
    let mut last_scheduled = [0u64; 2];
    let mut order = 0u64;
    let mut rng = cairn_store::rng::Xorshift::new(link.seed);
    let mut max_needed_depth = 0u64;
    let mut send = |side: usize,
                    depth: u64,
                    now: u64,
                    queue: &mut BinaryHeap<InFlight>,
                    sessions: &mut [Session; 2],
                    out: &mut Outcome| {
        while let Some(sent) = sessions[side].poll_transmit(stores[side]) {
            for frame in tamper(side == 0, sent) {
                let bytes = wire::encode(&frame);
                out.frames[side] += 1;
                out.bytes[side] += bytes.len() as u64;
                out.payload_bytes[side] += payload_of(&frame);
                let ser_us =
                    (bytes.len() as u64 * 8).saturating_mul(1_000_000) / link.bandwidth_bps.max(1);
                let start = link_free[side].max(now);
                link_free[side] = start + ser_us;
                let mut arrival = start + ser_us + link.rtt_us / 2;
                let packets = bytes.len().div_ceil(1200) as u64;
                for _ in 0..packets {
                    if rng.unit() < link.loss {
                        arrival += link.rtt_us;
                        break;
                    }
                }
                let bulk = matches!(
                    frame,
                    Frame::Docs { .. } | Frame::BlobPiece { .. } | Frame::BlobStream { .. }
                );
                if bulk {
                    // A stream of its own: its delay is its own.
                    if link.bulk_jitter_us > 0 {
                        arrival += rng.below(link.bulk_jitter_us);
                    }
                } else {
                    // The control stream delivers in order: never before the frame sent ahead
                    // of it.
                    arrival = arrival.max(last_scheduled[side]);
                    last_scheduled[side] = arrival;
                }
                order += 1;
                queue.push(InFlight {
                    arrival,
                    order,
                    bulk,
                    to_responder: side == 0,
                    depth,
                    frame_bytes: bytes,
                });
            }
        }
    };
    send(0, 1, 0, &mut queue, &mut sessions, &mut out);
    let mut last_arrival = [0u64; 2];
    let mut steps = 0u64;
    // Bulk frames that reached a side before its session was through HELLO (or HELLO-REPLY):
    // the transport accepts no bulk stream until then, and they wait in flow control.
    let mut held: [Vec<InFlight>; 2] = [Vec::new(), Vec::new()];
    while let Some(f) = queue.pop() {
        steps += 1;
        if steps > 50_000_000 {
            break;
        }
        let to = if f.to_responder { 1 } else { 0 };
        if link.cut_after_frames.is_some_and(|n| steps > n) {
            out.cut = true;
            // The frame on the wire is cut mid-way: a blob piece leaves the groups of its first
            // half written (and verified) at the receiver, as a broken stream does.
            if let Ok(Frame::BlobPiece {
                hash,
                size,
                groups,
                data,
            }) = wire::decode_body(&f.frame_bytes[4..])
            {
                if let Some(writer) = sessions[to].begin_piece(hash, size) {
                    let _ = writer.write_from(&groups, &data[..data.len() / 2]);
                }
            }
            break;
        }
        let now = f.arrival.max(last_arrival[to]);
        if f.bulk && !sessions[to].hello_done() {
            held[to].push(f);
            continue;
        }
        last_arrival[to] = now;
        let frame = match wire::decode_body(&f.frame_bytes[4..]) {
            Ok(fr) => fr,
            Err(e) => {
                out.initiator_error = Some(SessionError::Protocol(e.to_string()));
                break;
            }
        };
        let (store, auth): (&Store, Option<&dyn Authorizer>) = if to == 1 {
            (responder, Some(authorizer))
        } else {
            (initiator, None)
        };
        let was_finished = sessions[0].is_finished();
        sessions[to].handle(store, frame, auth);
        if to == 0 && !was_finished {
            max_needed_depth = max_needed_depth.max(f.depth);
            out.elapsed_us = now;
        }
        send(to, f.depth + 1, now, &mut queue, &mut sessions, &mut out);
        if sessions[to].hello_done() {
            for mut h in held[to].drain(..) {
                h.arrival = now;
                queue.push(h);
            }
        }
    }
    out.round_trips = max_needed_depth.div_ceil(2);
    out.initiator = sessions[0].reports();
    out.responder = sessions[1].reports();
    out.initiator_error = out.initiator_error.or(sessions[0].error().cloned());
    out.responder_error = sessions[1].error().cloned();
    out
}
