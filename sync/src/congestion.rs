//! The congestion controller Cairn's connections use by default: quinn's BBR with a floor
//! under its window that keeps the receiver's acknowledgements clocked by packets.
//!
//! Receivers acknowledge every tenth ack-eliciting packet, or after `max_ack_delay` (25 ms)
//! when fewer arrive (see [`crate::transport`]'s `ACK_ELICITING_THRESHOLD`). quinn's BBR
//! estimates the bottleneck's bandwidth from the bytes each acknowledgement covers over the
//! time since the one before, and keeps twice that times the smallest RTT in flight. Once its
//! window is under ten packets, every acknowledgement waits out the delay: on a 10 ms path a
//! window of 10 packets delivers at most 10 packets per 35 ms, the estimate settles at that,
//! and twice it times 10 ms is again under ten packets. The connection stays there, however
//! idle the path: in `fanout --spokes 100 --relays 4 --release-mib 128 --link P2`, some of
//! a relay's connections to its spokes (10 ms away) sent at 300 KB/s for minutes with a
//! window of 12.5 KB, no loss and the 200 Mbit/s leg mostly idle, while their neighbours'
//! windows were 60 KB to 17 MB; at 1 GiB per spoke that tail held a tenth of the spokes for
//! most of an hour. With at least two acknowledgements' worth of packets in flight, each
//! acknowledgement is sent on the tenth packet, the estimate sees the path's rate and grows
//! as BBR intends. The floor is 20 datagrams (24 KB at QUIC's smallest, 29 KB at 1,452 B):
//! 100 connections at their floor over a 200 ms path carry at most 15 MB/s.
//!
//! The floor gives way while BBR probes the RTT. BBR then keeps three quarters of its
//! bandwidth-delay product (at least 4 datagrams) in flight and leaves the probe only once
//! about that few are, for 200 ms. With the floor under it, a connection whose estimate is low
//! never gets that few in flight while it has data: it stays in the probe, at the floor, and
//! the estimate it takes there (the floor per RTT) keeps it there. quinn's BBR enters its
//! first probe at the first acknowledgement that is not application-limited, with the
//! estimate of a connection that has carried a handshake and a HELLO: in the first sync of T
//! at P2 the hub's connection stayed at the floor, 145 KB/s, for seven seconds. [`Floored`]
//! follows BBR's schedule for the probe (the first acknowledgement not application-limited,
//! then the first one ten seconds after the last probe began) and lifts the floor for 200 ms
//! and two smoothed RTTs from each.

use std::any::Any;
use std::sync::Arc;
use std::time::{Duration, Instant};

use quinn::congestion::{Bbr, BbrConfig, Controller, ControllerFactory, ControllerMetrics};
use quinn_proto::RttEstimator;

/// Packets the receiver may take before it must acknowledge, plus the one that makes it.
const PACKETS_PER_ACK: u64 = crate::transport::ACK_ELICITING_THRESHOLD as u64 + 1;

/// The window never falls below this many acknowledgements' worth of packets.
const ACKS_IN_FLIGHT: u64 = 2;

/// How often quinn's BBR probes the RTT (its `PROBE_RTT_INTERVAL`).
const PROBE_RTT_INTERVAL: Duration = Duration::from_secs(10);
/// How long BBR holds its window down once the probe has drained (`K_PROBE_RTT_TIME`).
const PROBE_RTT_TIME: Duration = Duration::from_millis(200);
/// The RTT assumed before one is measured (QUIC's initial RTT).
const INITIAL_RTT: Duration = Duration::from_millis(333);

/// The smallest window for datagrams of `mtu` bytes.
pub fn window_floor(mtu: u16) -> u64 {
    ACKS_IN_FLIGHT * PACKETS_PER_ACK * mtu as u64
}

/// Builds [`Floored`] BBR controllers.
#[derive(Debug, Default)]
pub struct FlooredBbrConfig(Arc<BbrConfig>);

impl FlooredBbrConfig {
    /// Controllers that start from a window of `initial_window` bytes (0: quinn's).
    pub fn new(initial_window: u64) -> FlooredBbrConfig {
        let mut config = BbrConfig::default();
        if initial_window > 0 {
            config.initial_window(initial_window);
        }
        FlooredBbrConfig(Arc::new(config))
    }
}

impl ControllerFactory for FlooredBbrConfig {
    fn build(self: Arc<Self>, _now: Instant, current_mtu: u16) -> Box<dyn Controller> {
        Box::new(Floored::new(
            Box::new(Bbr::new(self.0.clone(), current_mtu)),
            current_mtu,
        ))
    }
}

/// BBR's RTT probe, as [`Floored`] follows it.
#[derive(Clone, Copy, Debug)]
struct Probe {
    /// When the last probe began (as BBR counts it), if one has.
    began: Option<Instant>,
    /// The floor is lifted until then.
    until: Option<Instant>,
    /// The smoothed RTT, from the last acknowledgement.
    rtt: Duration,
}

/// A controller (quinn's BBR) whose window is never below [`window_floor`] of the current
/// datagram size, except while it probes the RTT (see the module's text).
pub struct Floored {
    inner: Box<dyn Controller>,
    floor: u64,
    probe: Probe,
}

impl std::fmt::Debug for Floored {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Floored")
            .field("window", &self.inner.window())
            .field("floor", &self.floor)
            .field("probe", &self.probe)
            .finish()
    }
}

impl Floored {
    /// `inner`, floored, for datagrams of `mtu` bytes.
    pub fn new(inner: Box<dyn Controller>, mtu: u16) -> Floored {
        Floored {
            inner,
            floor: window_floor(mtu),
            probe: Probe {
                began: None,
                until: None,
                rtt: INITIAL_RTT,
            },
        }
    }

    /// Whether the floor is lifted now.
    fn probing(&self) -> bool {
        self.probe.until.is_some()
    }

    /// Ends a lifted floor whose time is up.
    fn settle(&mut self, now: Instant) {
        if self.probe.until.is_some_and(|until| now >= until) {
            self.probe.until = None;
        }
    }
}

impl Controller for Floored {
    fn on_sent(&mut self, now: Instant, bytes: u64, last_packet_number: u64) {
        self.settle(now);
        self.inner.on_sent(now, bytes, last_packet_number)
    }

    fn on_ack(
        &mut self,
        now: Instant,
        sent: Instant,
        bytes: u64,
        app_limited: bool,
        rtt: &RttEstimator,
    ) {
        self.probe.rtt = rtt.get();
        self.settle(now);
        self.inner.on_ack(now, sent, bytes, app_limited, rtt)
    }

    fn on_end_acks(
        &mut self,
        now: Instant,
        in_flight: u64,
        app_limited: bool,
        largest_packet_num_acked: Option<u64>,
    ) {
        self.inner
            .on_end_acks(now, in_flight, app_limited, largest_packet_num_acked);
        self.settle(now);
        // BBR's own test for a probe: not application-limited, and none begun in the last
        // ten seconds (or ever).
        let due = self
            .probe
            .began
            .is_none_or(|began| now.saturating_duration_since(began) > PROBE_RTT_INTERVAL);
        if !app_limited && due {
            self.probe.began = Some(now);
            self.probe.until = Some(now + PROBE_RTT_TIME + 2 * self.probe.rtt);
        }
    }

    fn on_congestion_event(
        &mut self,
        now: Instant,
        sent: Instant,
        is_persistent_congestion: bool,
        lost_bytes: u64,
    ) {
        self.inner
            .on_congestion_event(now, sent, is_persistent_congestion, lost_bytes)
    }

    fn on_mtu_update(&mut self, new_mtu: u16) {
        self.floor = window_floor(new_mtu);
        self.inner.on_mtu_update(new_mtu)
    }

    fn window(&self) -> u64 {
        if self.probing() {
            self.inner.window()
        } else {
            self.inner.window().max(self.floor)
        }
    }

    fn metrics(&self) -> ControllerMetrics {
        let mut m = self.inner.metrics();
        m.congestion_window = self.window();
        m
    }

    fn clone_box(&self) -> Box<dyn Controller> {
        Box::new(Floored {
            inner: self.inner.clone_box(),
            floor: self.floor,
            probe: self.probe,
        })
    }

    fn initial_window(&self) -> u64 {
        self.inner.initial_window().max(self.floor)
    }

    fn into_any(self: Box<Self>) -> Box<dyn Any> {
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A controller that has shrunk its window to 4 datagrams, as quinn's BBR does when it
    /// probes the RTT or its bandwidth estimate is low.
    #[derive(Clone)]
    struct Shrunk {
        mtu: u64,
        mtu_updates: Arc<std::sync::atomic::AtomicU32>,
    }

    impl Controller for Shrunk {
        fn on_congestion_event(&mut self, _: Instant, _: Instant, _: bool, _: u64) {}
        fn on_mtu_update(&mut self, new_mtu: u16) {
            self.mtu = new_mtu as u64;
            self.mtu_updates
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
        fn window(&self) -> u64 {
            4 * self.mtu
        }
        fn clone_box(&self) -> Box<dyn Controller> {
            Box::new(self.clone())
        }
        fn initial_window(&self) -> u64 {
            4 * self.mtu
        }
        fn into_any(self: Box<Self>) -> Box<dyn Any> {
            self
        }
    }

    #[test]
    fn the_window_stays_at_or_above_two_acknowledgements_of_packets() {
        let updates = Arc::new(std::sync::atomic::AtomicU32::new(0));
        let shrunk = Shrunk {
            mtu: 1200,
            mtu_updates: updates.clone(),
        };
        let mut c = Floored::new(Box::new(shrunk), 1200);
        assert_eq!(c.window(), 24_000);
        assert_eq!(c.initial_window(), 24_000);
        assert_eq!(c.metrics().congestion_window, 24_000);
        // It follows the datagram size (and passes it on), and copies keep it.
        c.on_mtu_update(1452);
        assert_eq!(updates.load(std::sync::atomic::Ordering::Relaxed), 1);
        assert_eq!(c.window(), 20 * 1452);
        assert_eq!(c.clone_box().window(), 20 * 1452);
    }

    #[test]
    fn the_floor_gives_way_while_bbr_probes_the_rtt() {
        let shrunk = Shrunk {
            mtu: 1200,
            mtu_updates: Arc::default(),
        };
        let mut c = Floored::new(Box::new(shrunk), 1200);
        let t0 = Instant::now();
        // Application-limited acknowledgements (a handshake, a HELLO) start no probe.
        c.on_end_acks(t0, 0, true, Some(1));
        assert_eq!(c.window(), 24_000);
        // The first that is not: BBR probes, and the floor is lifted for 200 ms and two RTTs
        // (the initial 333 ms before any is measured).
        c.on_end_acks(t0, 24_000, false, Some(2));
        assert_eq!(c.window(), 4 * 1200);
        let lifted = PROBE_RTT_TIME + 2 * INITIAL_RTT;
        c.on_sent(t0 + lifted - Duration::from_millis(1), 1200, 3);
        assert_eq!(c.window(), 4 * 1200, "still probing");
        c.on_sent(t0 + lifted, 1200, 4);
        assert_eq!(c.window(), 24_000, "the probe is over");
        // No other probe for ten seconds, then the next.
        c.on_end_acks(t0 + Duration::from_secs(5), 24_000, false, Some(5));
        assert_eq!(c.window(), 24_000);
        let next = t0 + PROBE_RTT_INTERVAL + Duration::from_millis(1);
        c.on_end_acks(next, 24_000, true, Some(6));
        assert_eq!(c.window(), 24_000, "an application-limited ack starts none");
        c.on_end_acks(next, 24_000, false, Some(7));
        assert_eq!(c.window(), 4 * 1200);
        assert_eq!(c.clone_box().window(), 4 * 1200, "copies keep the probe");
        c.on_end_acks(next + lifted, 24_000, false, Some(8));
        assert_eq!(c.window(), 24_000);
    }

    #[test]
    fn a_controller_starts_from_the_configured_window() {
        let now = Instant::now();
        let c = Arc::new(FlooredBbrConfig::new(1 << 20)).build(now, 1200);
        assert_eq!(c.window(), 1 << 20);
        assert_eq!(c.initial_window(), 1 << 20);
        let quinns = Arc::new(FlooredBbrConfig::new(0)).build(now, 1200);
        let plain = Bbr::new(Arc::new(BbrConfig::default()), 1200);
        assert_eq!(quinns.window(), plain.window());
    }

    #[test]
    fn above_the_floor_the_window_is_bbrs() {
        let now = Instant::now();
        let floored = Arc::new(FlooredBbrConfig::default()).build(now, 1200);
        let plain = Bbr::new(Arc::new(BbrConfig::default()), 1200);
        assert!(plain.window() > window_floor(1200));
        assert_eq!(floored.window(), plain.window());
        assert_eq!(floored.initial_window(), plain.initial_window());
    }
}
