//! The QUIC driver around [`crate::proto::Session`]: quinn endpoints whose TLS identities are
//! the instances' ed25519 keys, pinned by fingerprint on both sides, and the loop that moves
//! frames between a session and its connection.
//!
//! Identities: each side presents a self-signed certificate whose public key is its instance
//! key. Names, dates and issuers are ignored; the only check is that the certificate's
//! SubjectPublicKeyInfo is exactly the ed25519 key pinned for that peer, plus the TLS 1.3
//! handshake signature by that key. The server requires a client certificate and accepts the
//! keys of its known peers.
//!
//! Frames: the initiator opens one bidirectional control stream; every frame except the bulk
//! ones travels on it. Each DOCS frame and each blob piece travels on its own unidirectional
//! stream, so a large transfer does not hold up control frames and several are in flight at
//! once. A piece goes as a `blob-stream` head and its raw encoding; the receiving side feeds the
//! encoding to the store's [`PieceWriter`] on a blocking thread as it arrives, so every chunk
//! group is verified and kept the moment it is whole, and a cut transfer loses at most the
//! partial group of each stream.
//!
//! Transport tuning for long fat links: quinn's default windows would cap one connection far
//! below a 200 ms, 1 Gbit/s path's bandwidth-delay product (25 MB). The windows below cover
//! 64 MiB in flight per connection; BBR is used because it keeps the pipe full under random
//! loss where loss-based controllers back off. The link benchmark measures these choices.

use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use cairn_store::doc::PublicKey;
use cairn_store::identity::Identity;
use cairn_store::replica::{PieceWriter, PieceWritten};
use cairn_store::Hash;
use cairn_store::Store;
use quinn::crypto::rustls::{QuicClientConfig, QuicServerConfig};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{DigitallySignedStruct, DistinguishedName, SignatureScheme};
use tokio::sync::{mpsc, oneshot, OwnedSemaphorePermit, Semaphore};
use tracing::Instrument;

use crate::proto::{
    Authorizer, FeedReport, InitiatorConfig, Limits, ResponderConfig, Session, SessionError,
    MAX_HELLO_FEEDS, PIECE_GROUPS,
};
use crate::wire::{self, Frame, FrameReader, ALPN, MAX_FRAME};

/// A QUIC connection to a peer.
pub type Connection = quinn::Connection;

/// Why a connection could not be made or run.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TransportError {
    /// TLS or endpoint set-up failed.
    #[error("transport set-up: {0}")]
    Setup(String),
    /// Could not connect (includes a peer key that does not match the pin).
    #[error("connecting to {addr}: {reason}")]
    Connect { addr: SocketAddr, reason: String },
    /// The connection broke.
    #[error("connection: {0}")]
    Connection(#[from] ConnectionLost),
    /// The protocol session failed.
    #[error(transparent)]
    Session(#[from] SessionError),
    /// The peer moved too little data for too long, or the run took too long.
    #[error("stalled: {0}")]
    Stalled(String),
}

/// How a connection or one of its streams broke, with quinn's own error where there is one.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConnectionLost {
    /// The connection itself (closed, reset, timed out) when opening or accepting a stream.
    #[error("{0}")]
    Connection(#[from] quinn::ConnectionError),
    /// Writing to a stream.
    #[error("writing: {0}")]
    Write(#[from] quinn::WriteError),
    /// Reading from a stream.
    #[error("reading: {0}")]
    Read(#[from] quinn::ReadError),
    /// The peer ended a stream before the exchange on it was over (`what`: which).
    #[error("the peer ended {0}")]
    Ended(&'static str),
    /// A bulk stream failed while it was read (why).
    #[error("{0}")]
    Bulk(String),
}

const ED25519_SPKI_PREFIX: [u8; 12] = [
    0x30, 0x2a, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x03, 0x21, 0x00,
];
const ED25519_PKCS8_PREFIX: [u8; 16] = [
    0x30, 0x2e, 0x02, 0x01, 0x00, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x04, 0x22, 0x04, 0x20,
];

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// The ed25519 key a certificate carries, if it carries exactly one well-formed one.
pub fn certificate_key(cert: &CertificateDer<'_>) -> Option<PublicKey> {
    let parsed = webpki::EndEntityCert::try_from(cert).ok()?;
    let spki = parsed.subject_public_key_info();
    let bytes = spki.as_ref();
    if bytes.len() != 44 || bytes[..12] != ED25519_SPKI_PREFIX {
        return None;
    }
    let mut key = [0u8; 32];
    key.copy_from_slice(&bytes[12..]);
    PublicKey::from_bytes(key)
}

/// A self-signed certificate and private key for the instance identity.
pub fn tls_identity(
    identity: &Identity,
) -> Result<(CertificateDer<'static>, PrivateKeyDer<'static>), TransportError> {
    let seed = identity.signing_key().to_bytes();
    let pkcs8: Vec<u8> = [&ED25519_PKCS8_PREFIX[..], &seed[..]].concat();
    let der = PrivatePkcs8KeyDer::from(pkcs8);
    let key_pair = rcgen::KeyPair::from_pkcs8_der_and_sign_algo(&der, &rcgen::PKCS_ED25519)
        .map_err(|e| TransportError::Setup(e.to_string()))?;
    let params = rcgen::CertificateParams::new(vec!["cairn".to_string()])
        .map_err(|e| TransportError::Setup(e.to_string()))?;
    let cert = params
        .self_signed(&key_pair)
        .map_err(|e| TransportError::Setup(e.to_string()))?;
    Ok((cert.der().clone(), PrivateKeyDer::Pkcs8(der)))
}

fn verify_tls13(
    message: &[u8],
    cert: &CertificateDer<'_>,
    dss: &DigitallySignedStruct,
) -> Result<HandshakeSignatureValid, rustls::Error> {
    rustls::crypto::verify_tls13_signature(
        message,
        cert,
        dss,
        &provider().signature_verification_algorithms,
    )
}

/// Checks the server's certificate against the pinned key; `None` accepts any well-formed
/// ed25519 key (the TLS 1.3 signature still proves the peer holds it): for
/// [`connect_following`], which checks the key after the handshake.
#[derive(Debug)]
struct PinnedServer {
    expected: Option<PublicKey>,
}

impl ServerCertVerifier for PinnedServer {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        match (certificate_key(end_entity), self.expected) {
            (Some(_), None) => Ok(ServerCertVerified::assertion()),
            (Some(k), Some(expected)) if k == expected => Ok(ServerCertVerified::assertion()),
            (Some(k), Some(expected)) => Err(rustls::Error::General(format!(
                "peer presented key {} but {} is pinned",
                k.fingerprint(),
                expected.fingerprint()
            ))),
            (None, _) => Err(rustls::Error::General(
                "peer certificate carries no ed25519 key".into(),
            )),
        }
    }
    fn verify_tls12_signature(
        &self,
        _: &[u8],
        _: &CertificateDer<'_>,
        _: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Err(rustls::Error::General("TLS 1.2 is not used".into()))
    }
    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13(message, cert, dss)
    }
    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        vec![SignatureScheme::ED25519]
    }
}

/// Which client keys a server accepts.
pub type PeerFilter = Arc<dyn Fn(&PublicKey) -> bool + Send + Sync>;

struct PinnedClients {
    allowed: PeerFilter,
}

impl std::fmt::Debug for PinnedClients {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PinnedClients")
    }
}

impl ClientCertVerifier for PinnedClients {
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }
    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        match certificate_key(end_entity) {
            Some(k) if (self.allowed)(&k) => Ok(ClientCertVerified::assertion()),
            Some(k) => Err(rustls::Error::General(format!(
                "key {} is not a known peer",
                k.fingerprint()
            ))),
            None => Err(rustls::Error::General(
                "client certificate carries no ed25519 key".into(),
            )),
        }
    }
    fn verify_tls12_signature(
        &self,
        _: &[u8],
        _: &CertificateDer<'_>,
        _: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Err(rustls::Error::General("TLS 1.2 is not used".into()))
    }
    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13(message, cert, dss)
    }
    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        vec![SignatureScheme::ED25519]
    }
}

/// The congestion controllers quinn offers.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Congestion {
    /// BBR (the default): paces at the measured bottleneck rate, not backing off on random loss;
    /// with a floor under its window (see [`crate::congestion`]).
    Bbr,
    /// CUBIC.
    Cubic,
    /// NewReno.
    NewReno,
}

/// The flow-control window per connection, in MiB, unless configured otherwise: enough for
/// about 1.7 Gbit/s at 300 ms.
pub const DEFAULT_WINDOW_MIB: u32 = 64;

/// How an endpoint's connections behave on the network: carried by value to [`server`],
/// [`connect`] and [`connect_following`] (and into each run through
/// [`RunLimits::max_receive_window`]), never held in process-wide state.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TransportOptions {
    /// The congestion controller.
    pub congestion: Congestion,
    /// The flow-control window per connection in MiB (a stream gets half), at most 1,024; 0
    /// keeps quinn's defaults (for comparison).
    pub window_mib: u32,
    /// The credit a new connection grants its peer before a run's tuner sets the window, in
    /// bytes (0: [`INITIAL_RECEIVE_WINDOW`]). Credit granted cannot be taken back, and the
    /// peer's congestion controller has all of it to burst into. A connection dialed for runs
    /// capped at a rate starts smaller still.
    pub initial_receive_window: u64,
    /// The congestion window a connection starts with under BBR, in bytes (0: quinn's, 200
    /// datagrams of 1,200 bytes): what it may send in its first round trip.
    pub initial_congestion_window: u64,
}

/// The congestion window a connection starts with unless configured otherwise. quinn's BBR
/// starts from 240 KB, and its first RTT probe, which it takes at the first acknowledgement
/// that finds the window full, holds the window at three quarters of that (its bandwidth
/// estimate is still empty) for 200 ms and a round trip: in the first sync of T at P2 the
/// first 1 MiB of documents took 1.1 s to arrive and the link was full only after three
/// seconds. From 1 MiB it arrives in 0.55 s and the link is full a second sooner. A path with
/// less than 1 MiB of bandwidth-delay product and queue together (under 13 Mbit/s at 300 ms
/// with a queue of one BDP) loses part of the first round trip's burst.
pub const INITIAL_CONGESTION_WINDOW: u64 = 1 << 20;

impl Default for TransportOptions {
    fn default() -> TransportOptions {
        TransportOptions {
            congestion: Congestion::Bbr,
            window_mib: DEFAULT_WINDOW_MIB,
            initial_receive_window: 0,
            initial_congestion_window: INITIAL_CONGESTION_WINDOW,
        }
    }
}

impl TransportOptions {
    /// The connection window in bytes (0: quinn's defaults).
    pub fn window_bytes(&self) -> u64 {
        u64::from(self.window_mib.min(1024)) << 20
    }

    /// quinn's settings for these options, for links up to about 1 Gbit/s at 300 ms.
    pub fn transport_config(&self) -> quinn::TransportConfig {
        let mut t = quinn::TransportConfig::default();
        let window = self.window_bytes();
        if window > 0 {
            t.stream_receive_window(quinn::VarInt::from_u32((window / 2) as u32));
            let initial = match self.initial_receive_window {
                0 => INITIAL_RECEIVE_WINDOW.min(window),
                n => n.clamp(MIN_CAPPED_WINDOW, window),
            };
            t.receive_window(quinn::VarInt::from_u32(initial as u32));
            t.send_window(window);
        }
        t.max_concurrent_uni_streams(quinn::VarInt::from_u32(256));
        let mut acks = quinn::AckFrequencyConfig::default();
        acks.ack_eliciting_threshold(quinn::VarInt::from_u32(ACK_ELICITING_THRESHOLD));
        t.ack_frequency_config(Some(acks));
        // A peer that vanishes (killed, partitioned) is given up on after 20 s of silence; the
        // keep-alive keeps a healthy but quiet connection well inside that.
        t.keep_alive_interval(Some(Duration::from_secs(5)));
        if let Ok(idle) = quinn::IdleTimeout::try_from(Duration::from_secs(20)) {
            t.max_idle_timeout(Some(idle));
        }
        match self.congestion {
            Congestion::Bbr => t.congestion_controller_factory(Arc::new(
                crate::congestion::FlooredBbrConfig::new(self.initial_congestion_window),
            )),
            Congestion::Cubic => {
                t.congestion_controller_factory(Arc::new(quinn::congestion::CubicConfig::default()))
            }
            Congestion::NewReno => t.congestion_controller_factory(Arc::new(
                quinn::congestion::NewRenoConfig::default(),
            )),
        };
        t
    }
}

/// How many ack-eliciting packets a receiver takes before it must acknowledge (QUIC's
/// ACK_FREQUENCY extension, which each side asks of the other; without it a receiver
/// acknowledges every second packet, or sooner). A receiver still acknowledges within its
/// `max_ack_delay` (25 ms) and at once on reordering. At low per-connection rates (a hub
/// feeding 100 spokes on two cores) every acknowledgement is a wakeup, a datagram through the
/// path and a packet for the sender to process: `fanout --spokes 100 --relays 0 --release-mib
/// 32 --link P2` converged in 162 s instead of 180 s with it, the hub spending 47 s of CPU
/// instead of 56 and the link emulator 45 s instead of 60; the first sync of T at P2 sent
/// 0.95 MB back instead of 3.0 MB.
pub(crate) const ACK_ELICITING_THRESHOLD: u32 = 9;

/// The smallest connection receive window the tuner sets in a run capped at a rate.
const MIN_CAPPED_WINDOW: u64 = 64 << 10;
/// The smallest connection receive window the tuner sets.
const MIN_TUNED_WINDOW: u64 = 2 << 20;
/// The credit a dialed connection grants before a run's tuner measures the path: enough for
/// BBR's start-up to reach the bandwidth-delay product of 200 Mbit/s at 200 ms (5 MB) before
/// the tuner's first adjustments, and the most it can put in flight unmeasured. It was the
/// whole 64 MiB window, and in the first sync of T at P2 the hub's start-up then put far
/// more in flight than a path of 5 MB and its 5 MB queue hold: 15,000-48,000 packets (up to
/// 70 MB) dropped at the bottleneck and a second at half rate while they went again. With 2 MiB the tuner held
/// start-up back (full rate a second later); with 8 MiB there were no drops and the run was
/// no slower, while a 30 MB increment at P1 took about 6% longer, paced by the tuner from
/// its first second (README, "Transport tuning").
pub const INITIAL_RECEIVE_WINDOW: u64 = 8 << 20;

/// Keeps a connection's receive window at about twice the bandwidth-delay product measured on
/// it (the peak receive rate of the last second times the smallest RTT seen), between 2 MiB
/// and the configured window. quinn paces BBR from its congestion window, which runs at up to
/// 2.5 times the bottleneck rate; a fixed 64 MiB window let it keep megabytes queued at the
/// bottleneck and lose most of them (over half the packets sent were dropped on the emulated
/// link). Twice the BDP still lets the window double every adjustment while the rate grows,
/// and caps what can queue at one BDP. Runs until the connection closes.
///
/// In a run capped at a rate (`cap`, bytes per second, set once HELLO is through), the window
/// is twice what the cap carries in the smallest RTT instead (at least 64 KiB): the sender
/// paces itself to the cap, and its congestion controller, which sees an application-limited
/// flow, must not be let loose with more in flight than that (quinn's BBR then sent bursts
/// that filled the bottleneck's queue and lost over a third of its packets).
async fn tune_receive_window(conn: quinn::Connection, max: u64, cap: Arc<AtomicU64>) {
    if max == 0 {
        return;
    }
    let step = Duration::from_millis(200);
    let mut last = (Instant::now(), conn.stats().udp_rx.bytes);
    let mut rates = std::collections::VecDeque::with_capacity(5);
    let mut current = 0u64;
    let mut min_rtt = conn.rtt();
    while conn.close_reason().is_none() {
        tokio::time::sleep(step).await;
        let now = (Instant::now(), conn.stats().udp_rx.bytes);
        let secs = now.0.duration_since(last.0).as_secs_f64().max(1e-3);
        let rate = now.1.saturating_sub(last.1) as f64 / secs;
        last = now;
        if rates.len() == 5 {
            rates.pop_front();
        }
        rates.push_back(rate);
        let peak = rates.iter().copied().fold(0.0, f64::max);
        // The smallest RTT seen is the path's; the current one includes the queue this is
        // meant to keep short.
        min_rtt = min_rtt.min(conn.rtt());
        let capped = cap.load(Ordering::Relaxed);
        let window = if capped > 0 {
            ((2.0 * capped as f64 * min_rtt.as_secs_f64()) as u64).clamp(MIN_CAPPED_WINDOW, max)
        } else {
            ((2.0 * peak * min_rtt.as_secs_f64()) as u64).clamp(MIN_TUNED_WINDOW.min(max), max)
        };
        if window != current {
            if let Ok(w) = quinn::VarInt::from_u64(window) {
                conn.set_receive_window(w);
                current = window;
            }
        }
    }
}

/// The smallest send window a connection gets: what it buffers between runs, and its floor
/// under a shared [`SendBudget`].
pub const MIN_SEND_WINDOW: u64 = 1 << 20;

/// What a sending run holds outside quinn's buffers: the frame it is writing (a blob piece of
/// [`PIECE_GROUPS`] chunk groups with its outboard, or a DOCS batch of at most
/// [`crate::proto::DOC_BATCH_BYTES`]) and its 64 KiB read buffer. Its share of a
/// [`SendBudget`] pays for this first.
pub const HELD_PER_RUN: u64 =
    PIECE_GROUPS * cairn_store::blob::CHUNK_GROUP_BYTES as u64 + (128 << 10);

/// What all the connections of an instance may hold in their send buffers together, with the
/// frame each sending run is writing. quinn accepts writes until a connection's
/// unacknowledged data reaches its send window, whatever the peer's credit; with a fixed
/// 64 MiB window a hub serving a release to N spokes at once held up to N × 64 MiB. Each run
/// that sends gets an equal share of the budget, which pays for the frame it holds
/// ([`HELD_PER_RUN`]) and its send window; the window is never less than [`MIN_SEND_WINDOW`]
/// and no more than twice the congestion window, which is all a sender needs in flight to
/// keep its path full.
#[derive(Clone, Debug)]
pub struct SendBudget(Arc<SendBudgetInner>);

#[derive(Debug)]
struct SendBudgetInner {
    total: u64,
    active: AtomicU64,
}

impl Default for SendBudget {
    /// No budget beyond each connection's window.
    fn default() -> SendBudget {
        SendBudget::new(u64::MAX)
    }
}

impl SendBudget {
    /// A budget of `total` bytes.
    pub fn new(total: u64) -> SendBudget {
        SendBudget(Arc::new(SendBudgetInner {
            total,
            active: AtomicU64::new(0),
        }))
    }

    /// Runs sending under this budget right now.
    pub fn active(&self) -> u64 {
        self.0.active.load(Ordering::Relaxed)
    }

    /// One active run's share.
    fn share(&self) -> u64 {
        (self.0.total / self.active().max(1)).max(MIN_SEND_WINDOW)
    }

    /// The send window of an active run that `want`s that much: what its share leaves after
    /// the frame it holds, at least [`MIN_SEND_WINDOW`].
    pub(crate) fn window(&self, want: u64) -> u64 {
        want.min(
            self.share()
                .saturating_sub(HELD_PER_RUN)
                .max(MIN_SEND_WINDOW),
        )
    }

    /// Counts a sending run in until the guard is dropped.
    pub(crate) fn enter(&self) -> ActiveSender {
        self.0.active.fetch_add(1, Ordering::Relaxed);
        ActiveSender(self.clone())
    }
}

/// A run counted in a [`SendBudget`] (see [`SendBudget::enter`]).
pub(crate) struct ActiveSender(SendBudget);

impl Drop for ActiveSender {
    fn drop(&mut self) {
        self.0 .0.active.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Keeps a connection's send window at twice its congestion window (at least
/// [`MIN_SEND_WINDOW`], at most `max`), within its share of `budget`, for as long as the run
/// lasts (the task is aborted with it); the caller sets the idle window after.
async fn tune_send_window(conn: quinn::Connection, max: u64, budget: SendBudget) {
    if max == 0 {
        return;
    }
    let _active = budget.enter();
    let mut current = 0u64;
    let mut tick = 0u64;
    let mut last = conn.stats();
    while conn.close_reason().is_none() {
        let stats = conn.stats();
        let want = stats
            .path
            .cwnd
            .saturating_mul(2)
            .clamp(MIN_SEND_WINDOW, max.max(MIN_SEND_WINDOW));
        let window = budget.window(want);
        if window != current {
            conn.set_send_window(window);
            current = window;
        }
        // Every 5 s, what the path did since: the figures that say whether a slow run is held
        // by its congestion controller, its losses or its windows.
        tick += 1;
        if tick % 100 == 0 {
            tracing::debug!(
                cwnd = stats.path.cwnd,
                rtt_ms = stats.path.rtt.as_millis() as u64,
                send_window = current,
                sent = stats.udp_tx.bytes - last.udp_tx.bytes,
                lost_packets = stats.path.lost_packets - last.path.lost_packets,
                congestion_events = stats.path.congestion_events - last.path.congestion_events,
                "sending over the last 5 s"
            );
            last = stats;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A server endpoint on `addr` accepting the peers `allowed` lets through.
pub fn server(
    addr: SocketAddr,
    identity: &Identity,
    allowed: PeerFilter,
    options: &TransportOptions,
) -> Result<quinn::Endpoint, TransportError> {
    let (cert, key) = tls_identity(identity)?;
    let mut tls = rustls::ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| TransportError::Setup(e.to_string()))?
        .with_client_cert_verifier(Arc::new(PinnedClients { allowed }))
        .with_single_cert(vec![cert], key)
        .map_err(|e| TransportError::Setup(e.to_string()))?;
    tls.alpn_protocols = vec![ALPN.to_vec()];
    let crypto =
        QuicServerConfig::try_from(tls).map_err(|e| TransportError::Setup(e.to_string()))?;
    let mut config = quinn::ServerConfig::with_crypto(Arc::new(crypto));
    // A peer gets 1 MiB of credit on a new connection: until a run's tuner opens the window,
    // streams it opens before saying HELLO cannot make this side buffer more.
    let mut transport = options.transport_config();
    transport.receive_window(quinn::VarInt::from_u32(1 << 20));
    config.transport_config(Arc::new(transport));
    // Stateless resets are keyed by the instance identity rather than at random, so after a
    // restart (or a crash) this endpoint's resets are ones its peers recognise: a peer whose
    // connection died with the old process learns it at its next packet instead of waiting
    // out the idle timeout.
    let seed = identity.signing_key().to_bytes();
    let reset = blake3::derive_key("cairn/sync/1 stateless reset key", &seed);
    let mut endpoint_config = quinn::EndpointConfig::default();
    endpoint_config.reset_key(Arc::new(ring::hmac::Key::new(
        ring::hmac::HMAC_SHA256,
        &reset,
    )));
    let socket = udp_socket(addr)?;
    quinn::Endpoint::new(
        endpoint_config,
        Some(config),
        socket,
        Arc::new(quinn::TokioRuntime),
    )
    .map_err(|e| TransportError::Setup(format!("binding {addr}: {e}")))
}

/// The UDP socket buffers an endpoint asks for, each way.
pub const UDP_BUFFER_BYTES: usize = 8 << 20;

/// A UDP socket bound to `addr` with buffers of [`UDP_BUFFER_BYTES`] each way, or as much of
/// them as the kernel grants (`net.core.rmem_max`, `wmem_max`). With the kernel's default
/// (about 208 KiB, 8 ms at 200 Mbit/s) a receiver that is off the CPU for a moment drops
/// datagrams in its own socket, which QUIC then counts as loss on the path: its sending
/// rate falls and the data goes again. A smaller grant is said once per process, with the
/// setting to raise.
fn udp_socket(addr: SocketAddr) -> Result<std::net::UdpSocket, TransportError> {
    use socket2::{Domain, Protocol, Socket, Type};
    let setup = |e: std::io::Error| TransportError::Setup(format!("binding {addr}: {e}"));
    let socket =
        Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP)).map_err(setup)?;
    // Best effort: the kernel caps what it grants, and a smaller buffer still works.
    let _ = socket.set_recv_buffer_size(UDP_BUFFER_BYTES);
    let _ = socket.set_send_buffer_size(UDP_BUFFER_BYTES);
    socket.bind(&addr.into()).map_err(setup)?;
    // Linux reports twice what it grants (the other half is its bookkeeping).
    let granted = socket.recv_buffer_size().unwrap_or(0) / 2;
    static SAID: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
    if granted < UDP_BUFFER_BYTES / 2 && !SAID.swap(true, Ordering::Relaxed) {
        tracing::warn!(
            granted_kib = granted >> 10,
            wanted_kib = UDP_BUFFER_BYTES >> 10,
            "the kernel grants QUIC's socket a small receive buffer: a busy process will drop \
             datagrams at high rates; raise net.core.rmem_max (and wmem_max) to 8388608"
        );
    }
    Ok(socket.into())
}

/// Connects to a peer whose key must be `expected`.
pub async fn connect(
    identity: &Identity,
    addr: SocketAddr,
    expected: PublicKey,
    options: &TransportOptions,
) -> Result<quinn::Connection, TransportError> {
    connect_with(
        identity,
        addr,
        Arc::new(PinnedServer {
            expected: Some(expected),
        }),
        options,
    )
    .await
}

/// A peer that moved to a new key, and the statements that lead to it from the one pinned.
#[derive(Clone, Debug)]
pub struct Followed {
    /// The key it presented.
    pub presented: PublicKey,
    /// Key-rotation documents from the pinned key to it, checked.
    pub statements: Vec<Vec<u8>>,
}

/// Connects to a peer pinned to `expected`, following it if it moved to a new key: the
/// handshake accepts any ed25519 key (TLS 1.3 proves the peer holds it), and when it is not
/// the pinned one, the only thing said on the connection is a ROTATION-REQUEST; the
/// statements must lead from the pinned key to the presented one, or the connection is
/// closed and refused. The caller records what it followed.
pub async fn connect_following(
    identity: &Identity,
    addr: SocketAddr,
    expected: PublicKey,
    options: &TransportOptions,
) -> Result<(quinn::Connection, Option<Followed>), TransportError> {
    let conn = connect_with(
        identity,
        addr,
        Arc::new(PinnedServer { expected: None }),
        options,
    )
    .await?;
    let refused = |reason: String| TransportError::Connect { addr, reason };
    let presented = peer_key(&conn).ok_or_else(|| refused("the peer presented no key".into()))?;
    if presented == expected {
        return Ok((conn, None));
    }
    let statements = match ask_rotation(&conn, expected).await {
        Ok(s) => s,
        Err(e) => {
            close(&conn);
            return Err(e);
        }
    };
    if let Err(e) = cairn_store::rotation::check_chain(&expected, &presented, &statements) {
        close_with(&conn, wire::code::UNAUTHORIZED, "key not pinned");
        return Err(refused(e.to_string()));
    }
    Ok((
        conn,
        Some(Followed {
            presented,
            statements,
        }),
    ))
}

/// Asks a peer how it moved away from `from`.
async fn ask_rotation(
    conn: &quinn::Connection,
    from: PublicKey,
) -> Result<Vec<Vec<u8>>, TransportError> {
    let broken = |e: ConnectionLost| TransportError::Connection(e);
    let (mut send, mut recv) = conn.open_bi().await.map_err(|e| broken(e.into()))?;
    send.write_all(&wire::encode(&Frame::RotationRequest {
        key: *from.as_bytes(),
    }))
    .await
    .map_err(|e| broken(e.into()))?;
    let _ = send.finish();
    let mut reader = FrameReader::default();
    let mut buf = vec![0u8; 64 * 1024];
    let answer = tokio::time::timeout(Duration::from_secs(30), async {
        loop {
            match reader.next_frame() {
                Ok(Some(Frame::Rotation { statements })) => return Ok(statements),
                Ok(Some(other)) => {
                    return Err(TransportError::Session(SessionError::Protocol(format!(
                        "the peer answered a rotation request with {other:?}"
                    ))))
                }
                Ok(None) => {}
                Err(e) => {
                    return Err(TransportError::Session(SessionError::Protocol(
                        e.to_string(),
                    )))
                }
            }
            match recv.read(&mut buf).await {
                Ok(Some(n)) => reader.push(&buf[..n]),
                Ok(None) => {
                    return Err(broken(ConnectionLost::Ended(
                        "the rotation request's stream unanswered",
                    )))
                }
                Err(e) => return Err(broken(e.into())),
            }
        }
    })
    .await
    .map_err(|_| TransportError::Stalled("no answer to a rotation request in 30 s".into()))??;
    let _ = tokio::time::timeout(Duration::from_secs(5), async {
        while let Ok(Some(_)) = recv.read(&mut buf).await {}
    })
    .await;
    Ok(answer.into_iter().map(|b| b.into_vec()).collect())
}

async fn connect_with(
    identity: &Identity,
    addr: SocketAddr,
    verifier: Arc<dyn ServerCertVerifier>,
    options: &TransportOptions,
) -> Result<quinn::Connection, TransportError> {
    let (cert, key) = tls_identity(identity)?;
    let mut tls = rustls::ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| TransportError::Setup(e.to_string()))?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_client_auth_cert(vec![cert], key)
        .map_err(|e| TransportError::Setup(e.to_string()))?;
    tls.alpn_protocols = vec![ALPN.to_vec()];
    let crypto =
        QuicClientConfig::try_from(tls).map_err(|e| TransportError::Setup(e.to_string()))?;
    let mut config = quinn::ClientConfig::new(Arc::new(crypto));
    config.transport_config(Arc::new(options.transport_config()));
    let bind: SocketAddr = if addr.is_ipv6() {
        "[::]:0"
    } else {
        "0.0.0.0:0"
    }
    .parse()
    .map_err(|_| TransportError::Setup("bind address".into()))?;
    let mut endpoint = quinn::Endpoint::new(
        quinn::EndpointConfig::default(),
        None,
        udp_socket(bind)?,
        Arc::new(quinn::TokioRuntime),
    )
    .map_err(|e| TransportError::Setup(e.to_string()))?;
    endpoint.set_default_client_config(config);
    let connecting = endpoint
        .connect(addr, "cairn")
        .map_err(|e| TransportError::Connect {
            addr,
            reason: e.to_string(),
        })?;
    connecting.await.map_err(|e| TransportError::Connect {
        addr,
        reason: e.to_string(),
    })
}

/// The key a connected peer presented.
pub fn peer_key(conn: &quinn::Connection) -> Option<PublicKey> {
    let certs = conn
        .peer_identity()?
        .downcast::<Vec<CertificateDer<'static>>>()
        .ok()?;
    certificate_key(certs.first()?)
}

/// Wall-clock time, Unix seconds (sessions take it as an input).
pub fn unix_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Totals of one driven session.
#[derive(Clone, Debug, Default)]
pub struct RunStats {
    /// Bytes written to the connection (frames, prefixes included).
    pub bytes_sent: u64,
    /// Bytes read.
    pub bytes_received: u64,
    /// Frames each way.
    pub frames_sent: u64,
    /// Frames received.
    pub frames_received: u64,
    /// Blobs sent (asked for by the peer, or small ones sent along with documents).
    pub blobs_sent: u64,
    /// Blob payload bytes sent.
    pub blob_bytes_sent: u64,
    /// Round trips as this side saw them: how often it sent and then heard back.
    pub rounds: u64,
    /// Wall time.
    pub elapsed: Duration,
    /// The peer said during the run that a feed changed again ([`Frame::Notify`]).
    pub notified: bool,
    /// UDP payload bytes the connection sent during the run: frames plus QUIC's headers,
    /// acknowledgements and retransmissions (and anything else the connection carried
    /// meanwhile, such as a NOTIFY).
    pub wire_bytes_sent: u64,
    /// Bytes of the packets QUIC declared lost during the run (their frames, other than
    /// acknowledgements, were sent again).
    pub lost_bytes: u64,
}

impl RunStats {
    fn add(&mut self, o: &RunStats) {
        self.bytes_sent += o.bytes_sent;
        self.bytes_received += o.bytes_received;
        self.frames_sent += o.frames_sent;
        self.frames_received += o.frames_received;
        self.blobs_sent += o.blobs_sent;
        self.blob_bytes_sent += o.blob_bytes_sent;
        self.rounds += o.rounds;
        self.elapsed += o.elapsed;
        self.notified |= o.notified;
        self.wire_bytes_sent += o.wire_bytes_sent;
        self.lost_bytes += o.lost_bytes;
    }
}

/// Live counters of a run, for a progress display; updated by the driver as it goes.
#[derive(Debug, Default)]
pub struct Progress {
    /// Bytes written to the connection.
    pub bytes_sent: AtomicU64,
    /// Bytes read from it.
    pub bytes_received: AtomicU64,
    /// Blob payload bytes to move, both directions (grows as wants are learnt).
    pub blob_bytes_due: AtomicU64,
    /// Blob payload bytes moved so far, both directions.
    pub blob_bytes_done: AtomicU64,
}

/// One reading of a [`Progress`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ProgressSnapshot {
    /// Blob payload bytes moved so far, both directions.
    pub blob_bytes_done: u64,
    /// Blob payload bytes to move, both directions.
    pub blob_bytes_due: u64,
    /// Bytes written to the connection.
    pub bytes_sent: u64,
    /// Bytes read from it.
    pub bytes_received: u64,
}

impl Progress {
    /// The counters now.
    pub fn snapshot(&self) -> ProgressSnapshot {
        ProgressSnapshot {
            blob_bytes_done: self.blob_bytes_done.load(Ordering::Relaxed),
            blob_bytes_due: self.blob_bytes_due.load(Ordering::Relaxed),
            bytes_sent: self.bytes_sent.load(Ordering::Relaxed),
            bytes_received: self.bytes_received.load(Ordering::Relaxed),
        }
    }

    fn update(&self, stats: &RunStats, session: &Session) {
        let s = session.stats();
        self.bytes_sent.store(stats.bytes_sent, Ordering::Relaxed);
        self.bytes_received
            .store(stats.bytes_received, Ordering::Relaxed);
        self.blob_bytes_due
            .store(s.blob_bytes_due, Ordering::Relaxed);
        self.blob_bytes_done
            .store(s.blob_bytes_sent + s.blob_bytes_received, Ordering::Relaxed);
    }
}

/// Aborts a task when dropped.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

enum Incoming {
    /// A bulk frame, its wire bytes, and the share of the connection's buffer budget it holds
    /// until the session has taken it.
    Frame(Frame, u64, Option<OwnedSemaphorePermit>),
    /// The head of a `blob-stream`: the session says whether it asked for the blob.
    PieceStart {
        hash: [u8; 32],
        size: u64,
        reply: oneshot::Sender<Option<PieceWriter>>,
    },
    /// A streamed piece has ended, whole or cut, with what was written of it.
    PieceDone {
        hash: Hash,
        written: PieceWritten,
        bytes: u64,
    },
    Failed(String),
}

/// Bounds of one run: how little data may move before the peer counts as stalled, how long a
/// run may take, and how much the peer's bulk streams may make this side buffer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RunLimits {
    /// The window over which progress is measured.
    pub window: Duration,
    /// Bytes that must move in every window (stream data read from the peer, or packets sent
    /// to it), or the run fails as stalled: a silent peer, one that stops reading, or one that
    /// trickles.
    pub min_progress_bytes: u64,
    /// Longest a run may take.
    pub max_run: Duration,
    /// `max_run` is when the transfer window the run started in closes: a run cut then says
    /// so, and resumes at the next window.
    pub max_run_is_window_end: bool,
    /// Bytes of bulk frames (DOCS) held in memory before the session takes them.
    pub bulk_buffer_bytes: u32,
    /// Blob pieces verified and written at once (each holds a blocking thread).
    pub concurrent_pieces: u32,
    /// The largest receive window the run's tuner opens on the connection (the transport's
    /// window, [`TransportOptions::window_bytes`]); 0 leaves the window as configured.
    pub max_receive_window: u64,
}

impl Default for RunLimits {
    fn default() -> RunLimits {
        RunLimits {
            window: Duration::from_secs(60),
            min_progress_bytes: 64 << 10,
            max_run: Duration::from_secs(24 * 3600),
            max_run_is_window_end: false,
            bulk_buffer_bytes: 16 << 20,
            concurrent_pieces: 32,
            max_receive_window: TransportOptions::default().window_bytes(),
        }
    }
}

/// Fails a run whose peer moves too little data per window, or that runs too long.
struct Watchdog {
    conn: quinn::Connection,
    received: Arc<AtomicU64>,
    limits: RunLimits,
    run_deadline: Instant,
    mark_at: Instant,
    mark_bytes: u64,
}

impl Watchdog {
    fn new(conn: &quinn::Connection, received: Arc<AtomicU64>, limits: RunLimits) -> Watchdog {
        let now = Instant::now();
        let mut w = Watchdog {
            conn: conn.clone(),
            received,
            limits,
            run_deadline: now + limits.max_run,
            mark_at: now,
            mark_bytes: 0,
        };
        w.mark_bytes = w.progress();
        w
    }

    /// Stream bytes read from the peer plus UDP bytes sent to it: while a send buffer drains
    /// over a slow link nothing is read, but packets leave.
    fn progress(&self) -> u64 {
        self.received.load(Ordering::Relaxed) + self.conn.stats().udp_tx.bytes
    }

    fn check(&mut self) -> Result<(), TransportError> {
        let now = Instant::now();
        if now >= self.run_deadline {
            return Err(TransportError::Stalled(
                if self.limits.max_run_is_window_end {
                    format!(
                    "its transfer window closed after {} s; what was transferred is kept and the next window resumes it",
                    self.limits.max_run.as_secs()
                )
                } else {
                    format!(
                        "the run took longer than {} s",
                        self.limits.max_run.as_secs()
                    )
                },
            ));
        }
        if now.duration_since(self.mark_at) >= self.limits.window {
            let p = self.progress();
            let moved = p.saturating_sub(self.mark_bytes);
            if moved < self.limits.min_progress_bytes {
                return Err(TransportError::Stalled(format!(
                    "the peer moved {moved} bytes in {} s (at least {} are needed): silent, not reading, or too slow",
                    self.limits.window.as_secs(),
                    self.limits.min_progress_bytes
                )));
            }
            self.mark_at = now;
            self.mark_bytes = p;
        }
        Ok(())
    }

    /// Awaits `fut` while checking progress every second.
    async fn guard<T>(
        &mut self,
        fut: impl std::future::Future<Output = T>,
    ) -> Result<T, TransportError> {
        tokio::pin!(fut);
        loop {
            tokio::select! {
                v = &mut fut => return Ok(v),
                _ = tokio::time::sleep(Duration::from_secs(1)) => self.check()?,
            }
        }
    }
}

/// Holds what this side sends on a connection to a rate: before each write it waits until
/// the bytes that have left (the larger of what was written to streams and what went out as
/// UDP datagrams, with their IP and UDP headers) fit in the time since the run started at
/// that rate. Writes are cut to [`PACE_SLICE`] bytes, so the link sees no burst longer than
/// that.
struct Pacer {
    conn: quinn::Connection,
    start: Instant,
    udp_base: u64,
    written: u64,
}

/// The largest write between two looks at the rate.
const PACE_SLICE: usize = 16 * 1024;
/// Bytes of IPv4 and UDP headers on each datagram (the link carries them too).
const DATAGRAM_OVERHEAD: u64 = 28;

impl Pacer {
    fn new(conn: &quinn::Connection) -> Pacer {
        let mut p = Pacer {
            conn: conn.clone(),
            start: Instant::now(),
            udp_base: 0,
            written: 0,
        };
        p.udp_base = p.udp_bytes();
        p
    }

    fn udp_bytes(&self) -> u64 {
        let tx = self.conn.stats().udp_tx;
        tx.bytes + tx.datagrams * DATAGRAM_OVERHEAD
    }

    /// Waits until `n` more bytes may go at `rate` bytes per second (0: at once).
    async fn wait(&mut self, rate: u64, n: usize) {
        self.written += n as u64;
        if rate == 0 {
            return;
        }
        let sent = self
            .written
            .max(self.udp_bytes().saturating_sub(self.udp_base));
        let due = self.start + Duration::from_secs_f64(sent as f64 / rate as f64);
        tokio::time::sleep_until(due.into()).await;
    }
}

/// What one connection's stream readers share: the count of stream bytes read (for the
/// watchdog), the budget of bytes bulk frames may hold, and the slots of pieces being written.
#[derive(Clone)]
struct StreamBudget {
    received: Arc<AtomicU64>,
    bulk: Arc<Semaphore>,
    pieces: Arc<Semaphore>,
}

impl StreamBudget {
    fn new(limits: &RunLimits) -> StreamBudget {
        StreamBudget {
            received: Arc::new(AtomicU64::new(0)),
            bulk: Arc::new(Semaphore::new(
                (limits.bulk_buffer_bytes >> 10).max(1) as usize
            )),
            pieces: Arc::new(Semaphore::new(limits.concurrent_pieces.max(1) as usize)),
        }
    }
}

/// Reads one unidirectional stream: a bulk frame alone, or a `blob-stream` head followed by
/// the piece's encoding, which is verified and written chunk group by chunk group on a
/// blocking thread as it arrives, so a cut transfer keeps every whole group that arrived.
/// A frame takes its size from the connection's bulk budget before it is read (waiting, and
/// so holding the peer back by flow control, while the budget is spent).
async fn read_uni(mut recv: quinn::RecvStream, tx: mpsc::Sender<Incoming>, budget: StreamBudget) {
    // Chunks are taken as quinn holds them (no buffer of our own per stream: a peer may keep
    // hundreds of streams open while they wait for the bulk budget).
    let mut reader = FrameReader::default();
    let mut n = 0u64;
    let mut permit = None;
    let head = loop {
        if permit.is_none() {
            if let Some(len) = reader.next_len() {
                if len > MAX_FRAME {
                    let why = format!("frame of {len} bytes is over the limit of {MAX_FRAME}");
                    let _ = tx.send(Incoming::Failed(why)).await;
                    return;
                }
                let kib = (len >> 10) as u32 + 1;
                match budget.bulk.clone().acquire_many_owned(kib).await {
                    Ok(p) => permit = Some(p),
                    Err(_) => return,
                }
                // The budget holds the frame's size now: take it in one allocation.
                reader.reserve_frame();
            }
        }
        match reader.next_frame() {
            Ok(Some(f)) => break f,
            Ok(None) => {}
            Err(e) => {
                let _ = tx.send(Incoming::Failed(e.to_string())).await;
                return;
            }
        }
        match recv.read_chunk(READ_CHUNK, true).await {
            Ok(Some(c)) => {
                let k = c.bytes.len();
                n += k as u64;
                budget.received.fetch_add(k as u64, Ordering::Relaxed);
                reader.push(&c.bytes);
            }
            Ok(None) => {
                let why = "unidirectional stream ended before its frame".to_string();
                let _ = tx.send(Incoming::Failed(why)).await;
                return;
            }
            Err(e) => {
                let why = format!("reading a unidirectional stream: {e}");
                let _ = tx.send(Incoming::Failed(why)).await;
                return;
            }
        }
    };
    let Frame::BlobStream {
        hash,
        size,
        groups,
        len,
    } = head
    else {
        // A bulk frame travels alone: the stream must end right after it.
        let mut probe = [0u8; 1];
        let msg = match recv.read(&mut probe).await {
            Ok(None) if reader.pending() == 0 => Incoming::Frame(head, n, permit),
            Ok(_) => {
                Incoming::Failed("unidirectional stream did not hold exactly one frame".into())
            }
            Err(e) => Incoming::Failed(format!("reading a unidirectional stream: {e}")),
        };
        let _ = tx.send(msg).await;
        return;
    };
    drop(permit);
    let Ok(_slot) = budget.pieces.clone().acquire_owned().await else {
        return;
    };
    let (reply, answer) = oneshot::channel();
    if tx
        .send(Incoming::PieceStart { hash, size, reply })
        .await
        .is_err()
    {
        return;
    }
    let Ok(Some(writer)) = answer.await else {
        return;
    };
    let (data_tx, data_rx) = mpsc::channel::<Vec<u8>>(WRITE_QUEUE);
    let write = tokio::task::spawn_blocking(move || {
        writer.write_from(
            &groups,
            ChannelReader {
                rx: data_rx,
                chunk: Vec::new(),
                at: 0,
            },
        )
    });
    let (read, failure) = forward_blob_stream(
        &mut recv,
        reader.take_pending(),
        len,
        Hash::from_bytes(hash),
        &data_tx,
        &budget.received,
    )
    .await;
    n += read;
    // The writer sees the end of its input and finishes what verified.
    drop(data_tx);
    let Ok(written) = write.await else {
        let _ = tx
            .send(Incoming::Failed("blob writer stopped".into()))
            .await;
        return;
    };
    if let Some(why) = failure {
        let _ = tx.send(Incoming::Failed(why)).await;
        return;
    }
    let _ = tx
        .send(Incoming::PieceDone {
            hash: Hash::from_bytes(hash),
            written,
            bytes: n,
        })
        .await;
}

/// The most a unidirectional stream's reader takes from quinn at once.
const READ_CHUNK: usize = 64 * 1024;

/// Where a blob stream's bytes come from: quinn's stream, or a script in tests.
pub(crate) trait ChunkSource {
    /// The next chunk as it arrived, `None` at the stream's end.
    fn next_chunk(&mut self) -> impl Future<Output = Result<Option<Bytes>, String>> + Send;
}

impl ChunkSource for quinn::RecvStream {
    async fn next_chunk(&mut self) -> Result<Option<Bytes>, String> {
        match self.read_chunk(READ_CHUNK, true).await {
            Ok(c) => Ok(c.map(|c| c.bytes)),
            Err(e) => Err(format!("reading a blob stream: {e}")),
        }
    }
}

/// The writer thread is handed a stream's bytes in batches of this: quinn yields about a
/// packet at a time, and a receiver at a low rate (one of many spokes) would otherwise wake the
/// writer, and copy into a buffer of its own, for every packet.
pub(crate) const WRITE_BATCH: usize = 64 * 1024;
/// Batches queued for a stream's writer: with the one being filled, at most
/// (WRITE_QUEUE + 1) x WRITE_BATCH bytes, plus a chunk, wait per stream.
const WRITE_QUEUE: usize = 8;

/// Hands the body of a blob stream (`first`, then what `source` yields) to its writer in
/// batches of [`WRITE_BATCH`], up to the `len` bytes its head announced; the stream must end
/// there. What arrived before an early end or a fault still goes to the writer, which keeps
/// the groups that verify (a later run resumes after them). Returns the bytes read from
/// `source` and why the stream was refused, if it was.
pub(crate) async fn forward_blob_stream(
    source: &mut impl ChunkSource,
    first: Vec<u8>,
    len: u64,
    hash: Hash,
    data_tx: &mpsc::Sender<Vec<u8>>,
    received: &AtomicU64,
) -> (u64, Option<String>) {
    let too_much =
        || format!("blob stream for {hash} carries more than the {len} bytes its head announced");
    let mut read = 0u64;
    let mut left = len;
    let mut failure = None;
    let mut batch = first;
    if batch.len() as u64 > left {
        return (0, Some(too_much()));
    }
    left -= batch.len() as u64;
    loop {
        if (batch.len() >= WRITE_BATCH || left == 0)
            && !batch.is_empty()
            && data_tx.send(std::mem::take(&mut batch)).await.is_err()
        {
            break;
        }
        if left == 0 {
            match source.next_chunk().await {
                Ok(None) => {}
                Ok(Some(_)) => failure = Some(too_much()),
                Err(e) => failure = Some(e),
            }
            break;
        }
        match source.next_chunk().await {
            Ok(Some(c)) => {
                let k = c.len();
                read += k as u64;
                received.fetch_add(k as u64, Ordering::Relaxed);
                if k as u64 > left {
                    failure = Some(too_much());
                    break;
                }
                left -= k as u64;
                if batch.capacity() == 0 {
                    batch.reserve(WRITE_BATCH.min((left as usize).saturating_add(k)) + 2048);
                }
                batch.extend_from_slice(&c);
            }
            Ok(None) => break,
            Err(e) => {
                failure = Some(e);
                break;
            }
        }
    }
    if !batch.is_empty() {
        let _ = data_tx.send(batch).await;
    }
    (read, failure)
}

/// A blocking reader over chunks sent from an async task.
struct ChannelReader {
    rx: mpsc::Receiver<Vec<u8>>,
    chunk: Vec<u8>,
    at: usize,
}

impl std::io::Read for ChannelReader {
    fn read(&mut self, out: &mut [u8]) -> std::io::Result<usize> {
        while self.at >= self.chunk.len() {
            match self.rx.blocking_recv() {
                Some(c) => {
                    self.chunk = c;
                    self.at = 0;
                }
                None => return Ok(0),
            }
        }
        let k = out.len().min(self.chunk.len() - self.at);
        out[..k].copy_from_slice(&self.chunk[self.at..self.at + k]);
        self.at += k;
        Ok(k)
    }
}

/// One line per frame of a run, with the milliseconds since it started: control frames at
/// debug level (a run's story under `CAIRN_LOG=debug`: how long its handshake, HELLO and
/// reconciliation took before the documents flowed), bulk frames (DOCS, BLOB-PIECE), of which
/// a first sync has thousands, at trace level.
fn log_frame(what: &str, frame: &Frame, start: Instant) {
    let ms = start.elapsed().as_millis() as u64;
    match frame {
        Frame::Docs { feed, docs, .. } => {
            tracing::trace!(ms, feed = %feed, docs = docs.len(), "{what} {}", frame.name())
        }
        Frame::BlobPiece { data, .. } => {
            tracing::trace!(ms, bytes = data.len(), "{what} {}", frame.name())
        }
        _ => tracing::debug!(ms, "{what} {}", frame.name()),
    }
}

/// Drives `session` over `conn` until it is finished; the initiator passes the control stream
/// it opened, the responder the one it accepted. Bulk streams are accepted only once HELLO is
/// through, and the run fails as stalled when the peer moves too little (see [`RunLimits`]).
#[allow(clippy::too_many_arguments)]
async fn drive(
    store: &Store,
    mut session: Session,
    conn: &quinn::Connection,
    mut send: quinn::SendStream,
    mut recv: quinn::RecvStream,
    authorizer: Option<&(dyn Authorizer + Sync)>,
    progress: &Progress,
    limits: RunLimits,
    send_budget: &SendBudget,
) -> Result<(Session, RunStats), TransportError> {
    let start = Instant::now();
    let quic_before = conn.stats();
    let cap = Arc::new(AtomicU64::new(session.max_rate()));
    let tuner = tokio::spawn(tune_receive_window(
        conn.clone(),
        limits.max_receive_window,
        cap.clone(),
    ));
    let _stop_tuner = AbortOnDrop(tuner);
    let send_tuner = tokio::spawn(
        tune_send_window(conn.clone(), limits.max_receive_window, send_budget.clone())
            .instrument(tracing::Span::current()),
    );
    let _stop_send_tuner = AbortOnDrop(send_tuner);
    let mut stats = RunStats::default();
    let budget = StreamBudget::new(&limits);
    let mut watchdog = Watchdog::new(conn, budget.received.clone(), limits);
    let (tx, mut rx) = mpsc::channel::<Incoming>(64);
    let mut reader = FrameReader::default();
    let mut buf = vec![0u8; 64 * 1024];
    // Set when this side has sent something and not yet heard back: each answer is one round.
    let mut awaiting = false;
    let mut pieces_opened = 0u64;
    let mut pacer = Pacer::new(conn);
    let result: Result<(), TransportError> = async {
        loop {
            // Flush whatever the session wants to say.
            while let Some(frame) = tokio::task::block_in_place(|| session.poll_transmit(store)) {
                awaiting = true;
                stats.frames_sent += 1;
                // Bulk frames (documents, blob pieces) each take their own stream: a stream that
                // carried megabytes through a lossy queue would collect more gaps than quinn
                // keeps per stream, and a cut run keeps what it received. A piece goes as a
                // `blob-stream` head followed by its encoding, raw, which the receiver verifies
                // and keeps chunk group by chunk group as it arrives.
                log_frame("sent", &frame, start);
                let (bulk, parts) = match frame {
                    Frame::BlobPiece {
                        hash,
                        size,
                        groups,
                        data,
                    } => {
                        let head = wire::encode(&Frame::BlobStream {
                            hash,
                            size,
                            groups,
                            len: data.len() as u64,
                        });
                        (true, [head, data])
                    }
                    f @ Frame::Docs { .. } => (true, [wire::encode(&f), Vec::new()]),
                    f => (false, [wire::encode(&f), Vec::new()]),
                };
                stats.bytes_sent += parts.iter().map(|p| p.len() as u64).sum::<u64>();
                if bulk {
                    let mut uni = watchdog
                        .guard(conn.open_uni())
                        .await?
                        .map_err(ConnectionLost::from)?;
                    // They go out one after another rather than interleaved, so when a run is
                    // cut the receiver holds whole verified pieces, not many partial ones;
                    // control frames (priority 0) still go first.
                    pieces_opened += 1;
                    let _ = uni.set_priority(-(pieces_opened.min(i32::MAX as u64) as i32));
                    for slice in parts.iter().flat_map(|p| p.chunks(PACE_SLICE)) {
                        watchdog
                            .guard(pacer.wait(session.max_rate(), slice.len()))
                            .await?;
                        watchdog
                            .guard(uni.write_all(slice))
                            .await?
                            .map_err(ConnectionLost::from)?;
                    }
                    let _ = uni.finish();
                } else {
                    watchdog
                        .guard(pacer.wait(session.max_rate(), parts[0].len()))
                        .await?;
                    watchdog
                        .guard(send.write_all(&parts[0]))
                        .await?
                        .map_err(ConnectionLost::from)?;
                }
            }
            progress.update(&stats, &session);
            if session.is_finished() {
                return Ok(());
            }
            let hello_done = session.hello_done();
            let incoming = tokio::select! {
                read = recv.read(&mut buf) => match read {
                    Ok(Some(n)) => {
                        stats.bytes_received += n as u64;
                        budget.received.fetch_add(n as u64, Ordering::Relaxed);
                        reader.push(&buf[..n]);
                        None
                    }
                    Ok(None) => return Err(ConnectionLost::Ended("the control stream").into()),
                    Err(e) => return Err(ConnectionLost::from(e).into()),
                },
                // Bulk streams only once HELLO is through: before it, a peer can make this side
                // buffer no more than the connection's flow-control window.
                uni = conn.accept_uni(), if hello_done => match uni {
                    Ok(stream) => {
                        tokio::spawn(read_uni(stream, tx.clone(), budget.clone()));
                        None
                    }
                    Err(e) => return Err(ConnectionLost::from(e).into()),
                },
                msg = rx.recv() => msg,
                _ = tokio::time::sleep(Duration::from_secs(1)) => {
                    watchdog.check()?;
                    None
                }
            };
            let mut frames = Vec::new();
            let mut heard = false;
            match incoming {
                Some(Incoming::Frame(Frame::Notify { .. }, n, _)) => {
                    // The peer's state moved on again since this run's HELLO: the next run
                    // follows at once.
                    stats.bytes_received += n;
                    stats.notified = true;
                }
                Some(Incoming::Frame(f, n, permit)) => {
                    stats.bytes_received += n;
                    frames.push((f, permit));
                }
                Some(Incoming::PieceStart { hash, size, reply }) => {
                    let _ = reply.send(session.begin_piece(hash, size));
                }
                Some(Incoming::PieceDone {
                    hash,
                    written,
                    bytes,
                }) => {
                    stats.bytes_received += bytes;
                    stats.frames_received += 1;
                    heard = true;
                    tokio::task::block_in_place(|| session.end_piece(store, hash, written));
                }
                Some(Incoming::Failed(e)) => {
                    session.fail(SessionError::Protocol(e.clone()));
                    return Err(ConnectionLost::Bulk(e).into());
                }
                None => {}
            }
            loop {
                match reader.next_frame() {
                    Ok(Some(f)) => frames.push((f, None)),
                    Ok(None) => break,
                    Err(e) => {
                        let reason = e.to_string();
                        session.fail(SessionError::Protocol(reason.clone()));
                        return Err(TransportError::Session(SessionError::Protocol(reason)));
                    }
                }
            }
            if awaiting && (heard || !frames.is_empty()) {
                stats.rounds += 1;
                awaiting = false;
            }
            for (f, permit) in frames {
                stats.frames_received += 1;
                log_frame("received", &f, start);
                let auth = authorizer.map(|a| a as &dyn Authorizer);
                tokio::task::block_in_place(|| session.handle(store, f, auth));
                drop(permit);
            }
            cap.store(session.max_rate(), Ordering::Relaxed);
        }
    }
    .await;
    if let Err(e) = &result {
        // The peer hears why before the connection goes (a stalled or broken run included).
        session.fail(SessionError::Protocol(e.to_string()));
    }
    // Say the last words before the session's error, if any, ends the run.
    while let Some(frame) = session.poll_transmit(store) {
        let bytes = wire::encode(&frame);
        let _ = tokio::time::timeout(Duration::from_secs(2), send.write_all(&bytes)).await;
    }
    let _ = send.finish();
    if let Err(e) = result {
        if let Some(err @ (SessionError::Protocol(_) | SessionError::Unauthorized(_))) =
            session.error()
        {
            conn.close(
                quinn::VarInt::from_u32(err.code()),
                e.to_string().as_bytes(),
            );
        }
        return Err(e);
    }
    if session.error().is_none() {
        // Each side waits (briefly) for the other to end its side of the control stream: then
        // the other has everything it needs (and what it still said, such as a feed it refused
        // at the last moment, is read rather than cut off), and the connection may close or
        // carry the next run.
        let _ = tokio::time::timeout(Duration::from_secs(10), async {
            while let Ok(Some(_)) = recv.read(&mut buf).await {}
        })
        .await;
    }
    stats.elapsed = start.elapsed();
    stats.blobs_sent = session.stats().blobs_sent;
    stats.blob_bytes_sent = session.stats().blob_bytes_sent;
    let quic = conn.stats();
    stats.wire_bytes_sent = quic.udp_tx.bytes.saturating_sub(quic_before.udp_tx.bytes);
    stats.lost_bytes = quic
        .path
        .lost_bytes
        .saturating_sub(quic_before.path.lost_bytes);
    progress.update(&stats, &session);
    Ok((session, stats))
}

/// Runs a replication as initiator over an established connection, which stays open for the
/// next run unless the session failed (then it is closed with the error).
pub async fn run_initiator(
    store: &Store,
    conn: &quinn::Connection,
    config: InitiatorConfig,
) -> Result<(Vec<FeedReport>, RunStats), TransportError> {
    run_initiator_with_progress(
        store,
        conn,
        config,
        RunLimits::default(),
        &Progress::default(),
    )
    .await
}

/// [`run_initiator`] within `limits`, keeping `progress` current as the run goes. A run over
/// more feeds than one HELLO carries ([`MAX_HELLO_FEEDS`]) is several sessions in turn.
#[tracing::instrument(name = "run", skip_all, fields(
    role = "initiator",
    peer = %config.peer.short(),
    addr = %conn.remote_address(),
    mode = ?config.mode,
    feeds = config.feeds.len(),
))]
pub async fn run_initiator_with_progress(
    store: &Store,
    conn: &quinn::Connection,
    config: InitiatorConfig,
    limits: RunLimits,
    progress: &Progress,
) -> Result<(Vec<FeedReport>, RunStats), TransportError> {
    let mut reports = Vec::new();
    let mut total = RunStats::default();
    // The peer is who the handshake proved it is (its transparency log is judged by it).
    let config = InitiatorConfig {
        peer: peer_key(conn).unwrap_or(config.peer),
        ..config
    };
    for feeds in config.feeds.chunks(MAX_HELLO_FEEDS) {
        let part = InitiatorConfig {
            feeds: feeds.to_vec(),
            ..config.clone()
        };
        let session = tokio::task::block_in_place(|| Session::initiator(store, part))?;
        let (send, recv) = conn.open_bi().await.map_err(ConnectionLost::from)?;
        let (session, stats) = drive(
            store,
            session,
            conn,
            send,
            recv,
            None,
            progress,
            limits,
            &SendBudget::default(),
        )
        .await?;
        if let Some(e) = session.error() {
            conn.close(quinn::VarInt::from_u32(e.code()), e.to_string().as_bytes());
            return Err(TransportError::Session(e.clone()));
        }
        reports.extend(session.reports());
        total.add(&stats);
    }
    Ok((reports, total))
}

/// Closes every connection of `endpoint` and waits (at most 2 s) until the peers have heard.
pub async fn shut_down(endpoint: &quinn::Endpoint) {
    endpoint.close(quinn::VarInt::from_u32(0), b"shutting down");
    let _ = tokio::time::timeout(Duration::from_secs(2), endpoint.wait_idle()).await;
}

/// Closes a connection whose runs are over.
pub fn close(conn: &quinn::Connection) {
    conn.close(quinn::VarInt::from_u32(0), b"done");
}

/// Closes a connection with an error code ([`wire::code`]) and reason.
pub fn close_with(conn: &quinn::Connection, code: u32, reason: &str) {
    conn.close(quinn::VarInt::from_u32(code), reason.as_bytes());
}

/// How long the responder waits after a change before it tells its downstreams (so a burst
/// of writes becomes one NOTIFY).
const NOTIFY_COALESCE: Duration = Duration::from_millis(20);
/// The least time between two NOTIFYs on one connection.
const NOTIFY_GAP: Duration = Duration::from_millis(200);

/// Sends NOTIFY for every feed in `watched` whose servable root (see
/// [`Store::servable_root`]) differs from the one recorded, and records it; true if one went
/// out. A peer that does not take it within a few seconds is not waited for (it polls).
async fn notify_changed(
    store: &Store,
    conn: &quinn::Connection,
    watched: &mut HashMap<String, Option<[u8; 32]>>,
) -> bool {
    let changed: Vec<String> = tokio::task::block_in_place(|| {
        watched
            .iter_mut()
            .filter_map(|(feed, seen)| match store.servable_root(feed) {
                Ok(Some(root)) if *seen != Some(root) => {
                    *seen = Some(root);
                    Some(feed.clone())
                }
                _ => None,
            })
            .collect()
    });
    if changed.is_empty() {
        return false;
    }
    send_notify(conn, changed).await;
    true
}

/// Sends one NOTIFY naming `feeds` on a stream of its own, waiting at most a few seconds.
async fn send_notify(conn: &quinn::Connection, mut feeds: Vec<String>) {
    feeds.sort();
    feeds.truncate(wire::MAX_NOTIFY_FEEDS);
    tracing::debug!(?feeds, "telling the peer its feeds changed");
    let frame = wire::encode(&Frame::Notify { feeds });
    let sent = tokio::time::timeout(Duration::from_secs(5), async {
        let mut uni = conn.open_uni().await?;
        uni.write_all(&frame).await?;
        uni.finish()?;
        Ok::<_, Box<dyn std::error::Error + Send + Sync>>(())
    })
    .await;
    if !matches!(sent, Ok(Ok(()))) {
        tracing::debug!("the peer did not take a NOTIFY");
    }
}

/// Answers the runs an incoming connection carries, one after another (a peer keeps its
/// connection warm between runs), until the peer closes it or a run fails; `on_run` gets
/// each run's outcome.
#[tracing::instrument(name = "connection", skip_all, fields(addr = %conn.remote_address()))]
pub async fn serve_connection(
    store: &Store,
    conn: &quinn::Connection,
    authorizer: &(dyn Authorizer + Sync),
    limits: RunLimits,
    session_limits: Limits,
    send_budget: &SendBudget,
    mut on_run: impl FnMut(Result<(Session, RunStats), TransportError>),
) {
    let Some(peer) = peer_key(conn) else {
        conn.close(
            quinn::VarInt::from_u32(wire::code::UNAUTHORIZED),
            b"no peer key",
        );
        return;
    };
    // Between runs (and before the first) the peer may make this side buffer 1 MiB at most;
    // a run's tuner opens the window to what the path needs.
    let idle_window = quinn::VarInt::from_u32(1 << 20);
    conn.set_receive_window(idle_window);
    conn.set_send_window(MIN_SEND_WINDOW);
    let mut runs = 0u64;
    let mut changes = store.watch_changes();
    // Feeds the peer's last run pulled and asked to hear about, with the servable root it was
    // last told of or had its chance at (`None`: none was servable then).
    let mut watched: HashMap<String, Option<[u8; 32]>> = HashMap::new();
    let mut last_notify: Option<Instant> = None;
    loop {
        let accepted = loop {
            tokio::select! {
                bi = conn.accept_bi() => break bi,
                changed = changes.changed(), if !watched.is_empty() => {
                    if changed.is_err() {
                        watched.clear();
                        continue;
                    }
                    // A burst of writes (a publish, a run applying many documents) becomes
                    // one NOTIFY, and one connection hears at most one per NOTIFY_GAP.
                    let wait = last_notify.map_or(NOTIFY_COALESCE, |t| {
                        (t + NOTIFY_GAP).saturating_duration_since(Instant::now()).max(NOTIFY_COALESCE)
                    });
                    tokio::time::sleep(wait).await;
                    changes.borrow_and_update();
                    if notify_changed(store, conn, &mut watched).await {
                        last_notify = Some(Instant::now());
                    }
                }
            }
        };
        let Ok((send, recv)) = accepted else {
            return;
        };
        if !authorizer.peer_allowed(&peer) {
            close_with(conn, wire::code::UNAUTHORIZED, "no longer a known peer");
            return;
        }
        let session = Session::responder(ResponderConfig {
            peer,
            now_secs: unix_secs(),
            limits: session_limits,
        });
        runs += 1;
        let changes_before = *changes.borrow_and_update();
        let result = drive(
            store,
            session,
            conn,
            send,
            recv,
            Some(authorizer),
            &Progress::default(),
            limits,
            send_budget,
        )
        .instrument(tracing::info_span!("run", role = "responder", run = runs))
        .await;
        // What this connection sends between runs (NOTIFY frames) needs little buffer.
        conn.set_send_window(MIN_SEND_WINDOW);
        let failed = match &result {
            Err(e) => {
                tracing::warn!("incoming replication failed: {e}");
                true
            }
            Ok((session, _)) => session.error().is_some(),
        };
        conn.set_receive_window(idle_window);
        if let Ok((session, _)) = &result {
            // The peer has had its chance at the state as it is now: it hears of what changes
            // from here on (a peer that could not take it, such as one held back by its
            // deletion guard rail, is not woken again for the same state).
            let changed_during_run = *changes.borrow_and_update() != changes_before;
            watched = tokio::task::block_in_place(|| {
                session
                    .notify_feeds()
                    .into_iter()
                    .map(|f| {
                        let root = store.servable_root(&f).ok().flatten();
                        (f, root)
                    })
                    .collect()
            });
            if changed_during_run && !failed && !watched.is_empty() {
                // The run may have missed what changed while it went on: say so now, once.
                let feeds: Vec<String> = watched.keys().cloned().collect();
                send_notify(conn, feeds).await;
                last_notify = Some(Instant::now());
            }
        }
        on_run(result);
        if failed {
            // The initiator closes the connection once it has read the error; give it a
            // moment, then close it from here (a hostile peer would hold it open).
            let _ = tokio::time::timeout(Duration::from_secs(2), conn.closed()).await;
            close_with(conn, wire::code::PROTOCOL, "the run failed");
            return;
        }
    }
}

#[cfg(test)]
mod send_budget_tests {
    use super::{SendBudget, MIN_SEND_WINDOW};

    #[test]
    fn a_send_budget_is_shared_equally_with_a_floor() {
        let budget = SendBudget::new(64 << 20);
        assert_eq!(budget.share(), 64 << 20);
        let a = budget.enter();
        let b = budget.enter();
        assert_eq!(budget.active(), 2);
        assert_eq!(budget.share(), 32 << 20);
        let many: Vec<_> = (0..200).map(|_| budget.enter()).collect();
        assert_eq!(budget.share(), MIN_SEND_WINDOW);
        drop(many);
        drop(a);
        assert_eq!(budget.share(), 64 << 20);
        drop(b);
        assert_eq!(budget.active(), 0);
    }
}

#[cfg(test)]
mod socket_tests {
    use super::{udp_socket, UDP_BUFFER_BYTES};

    #[test]
    fn endpoint_sockets_ask_for_large_buffers() {
        let sock = udp_socket("127.0.0.1:0".parse().unwrap()).unwrap();
        let max = |what: &str| -> usize {
            std::fs::read_to_string(format!("/proc/sys/net/core/{what}"))
                .ok()
                .and_then(|v| v.trim().parse().ok())
                .unwrap_or(0)
        };
        let r = socket2::SockRef::from(&sock);
        // Linux reports twice what it grants; it grants up to its maximum.
        let (recv, send) = (
            r.recv_buffer_size().unwrap() / 2,
            r.send_buffer_size().unwrap() / 2,
        );
        assert!(
            recv >= UDP_BUFFER_BYTES.min(max("rmem_max"))
                && send >= UDP_BUFFER_BYTES.min(max("wmem_max")),
            "granted {recv} / {send} bytes"
        );
        if max("rmem_max") > max("rmem_default") {
            assert!(
                recv > max("rmem_default"),
                "more than the default of {} bytes: {recv}",
                max("rmem_default")
            );
        }
    }
}
