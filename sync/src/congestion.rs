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
//! When BBR probes the RTT it would keep three quarters of its bandwidth-delay product (at
//! least 4 datagrams) in flight, and it leaves the probe only once about that few are; with
//! the floor above that, a crowded connection can stay in the probe with
//! the floor as its window until its estimate grows past it. That costs nothing here: quinn's
//! BBR takes the connection's smallest RTT ever seen, so the probe measures nothing new, and
//! the floor is what such a connection would get anyway. The README's fan-out figures show
//! where connections sit at the floor (crowded stretches, RTTs of 42 ms and more on a 10 ms
//! path) and that none did on an idle path.

use std::any::Any;
use std::sync::Arc;
use std::time::Instant;

use quinn::congestion::{Bbr, BbrConfig, Controller, ControllerFactory, ControllerMetrics};
use quinn_proto::RttEstimator;

/// Packets the receiver may take before it must acknowledge, plus the one that makes it.
const PACKETS_PER_ACK: u64 = crate::transport::ACK_ELICITING_THRESHOLD as u64 + 1;

/// The window never falls below this many acknowledgements' worth of packets.
const ACKS_IN_FLIGHT: u64 = 2;

/// The smallest window for datagrams of `mtu` bytes.
pub fn window_floor(mtu: u16) -> u64 {
    ACKS_IN_FLIGHT * PACKETS_PER_ACK * mtu as u64
}

/// Builds [`Floored`] BBR controllers.
#[derive(Debug, Default)]
pub struct FlooredBbrConfig(Arc<BbrConfig>);

impl ControllerFactory for FlooredBbrConfig {
    fn build(self: Arc<Self>, _now: Instant, current_mtu: u16) -> Box<dyn Controller> {
        Box::new(Floored::new(
            Box::new(Bbr::new(self.0.clone(), current_mtu)),
            current_mtu,
        ))
    }
}

/// A controller (quinn's BBR) whose window is never below [`window_floor`] of the current
/// datagram size.
pub struct Floored {
    inner: Box<dyn Controller>,
    floor: u64,
}

impl std::fmt::Debug for Floored {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Floored")
            .field("window", &self.inner.window())
            .field("floor", &self.floor)
            .finish()
    }
}

impl Floored {
    /// `inner`, floored, for datagrams of `mtu` bytes.
    pub fn new(inner: Box<dyn Controller>, mtu: u16) -> Floored {
        Floored {
            inner,
            floor: window_floor(mtu),
        }
    }
}

impl Controller for Floored {
    fn on_sent(&mut self, now: Instant, bytes: u64, last_packet_number: u64) {
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
            .on_end_acks(now, in_flight, app_limited, largest_packet_num_acked)
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
        self.inner.window().max(self.floor)
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
    fn above_the_floor_the_window_is_bbrs() {
        let now = Instant::now();
        let floored = Arc::new(FlooredBbrConfig::default()).build(now, 1200);
        let plain = Bbr::new(Arc::new(BbrConfig::default()), 1200);
        assert!(plain.window() > window_floor(1200));
        assert_eq!(floored.window(), plain.window());
        assert_eq!(floored.initial_window(), plain.initial_window());
    }
}
