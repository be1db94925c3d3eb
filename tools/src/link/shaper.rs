//! The link model, one per direction, without I/O or clocks: a packet offered at a time gets
//! either a delivery time or a drop cause. The bridge threads feed it real time; the tests feed
//! it virtual time.
//!
//! Order of effects, as on a real path: a partition drops everything; then the bottleneck
//! queue (tail drop when the backlog would exceed the queue limit); then serialization at the
//! configured rate (token bucket with a one-packet bucket, so the output is smooth); then the
//! loss model (a packet lost on the wire still used its slot of the link); then the one-way
//! delay plus jitter, never earlier than the packet before it, so jitter does not reorder.

/// Nanoseconds.
pub type Nanos = u64;

/// Loss on the wire.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Loss {
    /// No loss.
    None,
    /// Each packet lost independently with probability `p`.
    Bernoulli { p: f64 },
    /// Gilbert-Elliott: a good and a bad state; `p` = P(good -> bad), `r` = P(bad -> good)
    /// per packet; a packet is lost with probability `k_loss` in the good state and
    /// `h_loss` in the bad one.
    GilbertElliott {
        p: f64,
        r: f64,
        k_loss: f64,
        h_loss: f64,
    },
}

impl Loss {
    /// Gilbert-Elliott with bursts of mean length `burst` packets and an average loss rate
    /// `rate`, everything lost in the bad state and nothing in the good one.
    pub fn bursty(rate: f64, burst: f64) -> Loss {
        let r = 1.0 / burst.max(1.0);
        // Stationary share of the bad state = p / (p + r) = rate.
        let p = if rate >= 1.0 {
            1.0
        } else {
            rate * r / (1.0 - rate)
        };
        Loss::GilbertElliott {
            p,
            r,
            k_loss: 0.0,
            h_loss: 1.0,
        }
    }

    /// The long-run loss rate.
    pub fn mean(&self) -> f64 {
        match *self {
            Loss::None => 0.0,
            Loss::Bernoulli { p } => p,
            Loss::GilbertElliott {
                p,
                r,
                k_loss,
                h_loss,
            } => {
                if p + r == 0.0 {
                    k_loss
                } else {
                    let bad = p / (p + r);
                    bad * h_loss + (1.0 - bad) * k_loss
                }
            }
        }
    }
}

/// One direction's settings.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Profile {
    /// Bits per second; 0 means unlimited.
    pub rate_bps: u64,
    /// One-way delay.
    pub delay: Nanos,
    /// Extra delay drawn uniformly from 0..=jitter per packet (clamped so order is kept).
    pub jitter: Nanos,
    /// Bottleneck queue, bytes.
    pub queue_bytes: u64,
    /// Loss model.
    pub loss: Loss,
}

/// Why a packet was dropped.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Drop {
    /// The queue was full.
    Queue,
    /// The loss model.
    Loss,
    /// The link is partitioned.
    Partition,
}

/// What happens to an offered packet.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Deliver at this time.
    Deliver(Nanos),
    /// Dropped.
    Drop(Drop),
}

/// The seeded generator: runs with the same seed drop the same packets.
pub use cairn_store::rng::Xorshift as Rng;

/// The state of one direction.
#[derive(Debug)]
pub struct Shaper {
    profile: Profile,
    rng: Rng,
    /// When the link finishes sending what is already queued.
    busy_until: Nanos,
    /// Delivery time of the last delivered packet (jitter never reorders).
    last_delivery: Nanos,
    bad_state: bool,
    partitioned: bool,
}

impl Shaper {
    /// A direction with `profile`, its randomness from `seed`.
    pub fn new(profile: Profile, seed: u64) -> Shaper {
        Shaper {
            profile,
            rng: Rng::new(seed),
            busy_until: 0,
            last_delivery: 0,
            bad_state: false,
            partitioned: false,
        }
    }

    /// Drops everything from now on (true) or carries traffic again (false).
    pub fn set_partitioned(&mut self, on: bool) {
        self.partitioned = on;
    }

    /// Whether the link is partitioned.
    pub fn partitioned(&self) -> bool {
        self.partitioned
    }

    fn serialization(&self, len: usize) -> Nanos {
        if self.profile.rate_bps == 0 {
            return 0;
        }
        (len as u64 * 8).saturating_mul(1_000_000_000) / self.profile.rate_bps
    }

    fn lost(&mut self) -> bool {
        match self.profile.loss {
            Loss::None => false,
            Loss::Bernoulli { p } => self.rng.unit() < p,
            Loss::GilbertElliott {
                p,
                r,
                k_loss,
                h_loss,
            } => {
                let flip = self.rng.unit();
                self.bad_state = if self.bad_state { flip >= r } else { flip < p };
                let chance = if self.bad_state { h_loss } else { k_loss };
                self.rng.unit() < chance
            }
        }
    }

    /// Offers a packet of `len` bytes at `now`.
    pub fn offer(&mut self, now: Nanos, len: usize) -> Verdict {
        if self.partitioned {
            return Verdict::Drop(Drop::Partition);
        }
        let start = self.busy_until.max(now);
        if self.profile.rate_bps > 0 {
            // Bytes still waiting ahead of this packet.
            let backlog = (start - now).saturating_mul(self.profile.rate_bps) / 8 / 1_000_000_000;
            if backlog + len as u64 > self.profile.queue_bytes.max(len as u64) {
                return Verdict::Drop(Drop::Queue);
            }
        }
        let sent = start + self.serialization(len);
        self.busy_until = sent;
        if self.lost() {
            return Verdict::Drop(Drop::Loss);
        }
        let jitter = if self.profile.jitter > 0 {
            (self.rng.unit() * (self.profile.jitter + 1) as f64) as Nanos
        } else {
            0
        };
        let at = (sent + self.profile.delay + jitter).max(self.last_delivery);
        self.last_delivery = at;
        Verdict::Deliver(at)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Nanos = 1_000_000;

    fn profile(rate_bps: u64, delay: Nanos) -> Profile {
        Profile {
            rate_bps,
            delay,
            jitter: 0,
            queue_bytes: 1 << 20,
            loss: Loss::None,
        }
    }

    #[test]
    fn a_lone_packet_arrives_after_serialization_and_delay() {
        let mut s = Shaper::new(profile(100_000_000, 75 * MS), 1);
        // 1500 bytes at 100 Mbit/s take 120 us.
        assert_eq!(s.offer(0, 1500), Verdict::Deliver(75 * MS + 120_000));
    }

    #[test]
    fn a_burst_leaves_at_the_configured_rate() {
        let mut s = Shaper::new(profile(10_000_000, 0), 1);
        let mut last = 0;
        for _ in 0..100 {
            match s.offer(0, 1250) {
                Verdict::Deliver(at) => last = at,
                v => panic!("{v:?}"),
            }
        }
        // 100 x 1250 bytes = 1 Mbit at 10 Mbit/s: 100 ms.
        assert_eq!(last, 100 * MS);
    }

    #[test]
    fn a_full_queue_drops_the_tail() {
        let mut p = profile(8_000_000, 0);
        p.queue_bytes = 10_000;
        let mut s = Shaper::new(p, 1);
        let verdicts: Vec<Verdict> = (0..20).map(|_| s.offer(0, 1000)).collect();
        let delivered = verdicts
            .iter()
            .filter(|v| matches!(v, Verdict::Deliver(_)))
            .count();
        assert_eq!(delivered, 10);
        assert_eq!(verdicts[19], Verdict::Drop(Drop::Queue));
        // Once the queue drains, packets pass again.
        assert!(matches!(s.offer(20 * MS, 1000), Verdict::Deliver(_)));
    }

    #[test]
    fn jitter_never_reorders() {
        let mut p = profile(0, 50 * MS);
        p.jitter = 20 * MS;
        let mut s = Shaper::new(p, 7);
        let mut last = 0;
        let mut spread = (u64::MAX, 0);
        for i in 0..10_000u64 {
            let Verdict::Deliver(at) = s.offer(i * 100_000, 100) else {
                panic!()
            };
            assert!(at >= last);
            last = at;
            let d = at - i * 100_000;
            spread = (spread.0.min(d), spread.1.max(d));
        }
        assert!(spread.0 >= 50 * MS && spread.1 <= 70 * MS && spread.1 > 60 * MS);
    }

    fn loss_share(loss: Loss, seed: u64, n: usize) -> (f64, f64) {
        let mut p = profile(0, 0);
        p.loss = loss;
        let mut s = Shaper::new(p, seed);
        let drops: Vec<bool> = (0..n)
            .map(|i| s.offer(i as u64, 100) == Verdict::Drop(Drop::Loss))
            .collect();
        let lost = drops.iter().filter(|d| **d).count();
        let bursts = drops.windows(2).filter(|w| w[1] && !w[0]).count().max(1);
        (lost as f64 / n as f64, lost as f64 / bursts as f64)
    }

    #[test]
    fn bernoulli_loss_has_its_rate_and_is_repeatable() {
        let (rate, burst) = loss_share(Loss::Bernoulli { p: 0.01 }, 3, 200_000);
        assert!((rate - 0.01).abs() < 0.001, "{rate}");
        assert!(
            burst < 1.1,
            "independent losses come one at a time: {burst}"
        );
        assert_eq!(
            loss_share(Loss::Bernoulli { p: 0.01 }, 3, 10_000),
            loss_share(Loss::Bernoulli { p: 0.01 }, 3, 10_000)
        );
    }

    #[test]
    fn gilbert_elliott_loss_is_bursty_at_the_same_rate() {
        let model = Loss::bursty(0.01, 4.0);
        assert!((model.mean() - 0.01).abs() < 1e-9);
        let (rate, burst) = loss_share(model, 5, 400_000);
        assert!((rate - 0.01).abs() < 0.002, "{rate}");
        assert!(burst > 3.0 && burst < 5.0, "mean burst {burst}");
    }

    #[test]
    fn a_partition_drops_everything_until_healed() {
        let mut s = Shaper::new(profile(0, MS), 1);
        s.set_partitioned(true);
        assert_eq!(s.offer(0, 100), Verdict::Drop(Drop::Partition));
        s.set_partitioned(false);
        assert_eq!(s.offer(1, 100), Verdict::Deliver(MS + 1));
    }
}
