//! The star form of the link: a hub namespace and N site namespaces, each behind an access leg
//! of its own, joined by a core that routes packets by their destination address.
//!
//! A packet from X to Y goes through X's leg towards the core, then Y's leg from the core;
//! each leg direction is a [`Shaper`] (rate with a bounded queue, delay, loss, partition). The
//! hub's leg carries the long haul (most of the round trip, the loss, the jitter, and a rate if
//! given); each site's leg carries the site's access rate and a short delay. So a site reaches
//! the hub in the profile's round trip through its own access link, and reaches another site
//! of the region in the short site round trip. A partition cuts the hub's leg: the sites still
//! reach each other.
//!
//! One reader thread per TUN device offers each packet to its own leg; one scheduler thread
//! holds every packet in flight in a heap by due time, hands it from the first leg to the
//! second and writes it to the destination's device when due.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::net::Ipv4Addr;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use super::shaper::{self, Nanos, Shaper, Verdict};
use super::{CounterSnapshot, Counters};

/// Most sites a star may have (addresses 10.77.1.1 to 10.77.4.250): with the hub, the
/// management bridge's ports stay under Linux's limit of 1,023.
pub const MAX_SITES: usize = 1_000;

/// The emulated address of the hub.
pub const HUB: Ipv4Addr = Ipv4Addr::new(10, 77, 0, 1);

/// The emulated address of site `i` (0-based): 10.77.(1 + i / 250).(1 + i % 250).
pub fn site_addr(i: usize) -> Ipv4Addr {
    Ipv4Addr::new(10, 77, 1 + (i / 250) as u8, 1 + (i % 250) as u8)
}

/// The same host part on the management network, 10.78.0.0/16.
pub fn mgmt_addr(emulated: Ipv4Addr) -> Ipv4Addr {
    let [_, _, c, d] = emulated.octets();
    Ipv4Addr::new(10, 78, c, d)
}

/// The leg (0: the hub, 1 + i: site i) that owns `dst`, if any of `sites`.
fn leg_of(dst: [u8; 4], sites: usize) -> Option<usize> {
    match dst {
        [10, 77, 0, 1] => Some(0),
        [10, 77, c, d] if c >= 1 && (1..=250).contains(&d) => {
            let i = (usize::from(c) - 1) * 250 + usize::from(d) - 1;
            (i < sites).then_some(i + 1)
        }
        _ => None,
    }
}

/// One access leg: a shaper and counters per direction.
pub struct Leg {
    /// Towards the core (sent by the leg's namespace).
    up: Mutex<Shaper>,
    /// From the core (to the leg's namespace).
    down: Mutex<Shaper>,
    up_counters: Counters,
    down_counters: Counters,
}

impl Leg {
    pub fn new(profile: shaper::Profile, seed: u64) -> Leg {
        Leg {
            up: Mutex::new(Shaper::new(profile, seed)),
            down: Mutex::new(Shaper::new(profile, seed.wrapping_add(1))),
            up_counters: Counters::default(),
            down_counters: Counters::default(),
        }
    }
}

#[derive(PartialEq, Eq, PartialOrd, Ord)]
enum Stage {
    /// Leaving leg `n` towards the core.
    Up(usize),
    /// Leaving leg `n` into its namespace.
    Down(usize),
}

#[derive(PartialEq, Eq, PartialOrd, Ord)]
struct Event {
    at: Nanos,
    seq: u64,
    stage: Stage,
    packet: Vec<u8>,
}

#[derive(Default)]
struct Queue {
    heap: BinaryHeap<Reverse<Event>>,
    seq: u64,
}

/// How late the scheduler may move a packet: it wakes this long after the earliest packet falls
/// due and moves every packet due by then. A hub feeding 100 spokes sends each a burst at a
/// time, which the shapers spread over a site's access rate (0.1 ms a packet at 100 Mbit/s);
/// moved one by one, each packet was a wakeup of the scheduler and of the spoke it went to,
/// on a machine running a hundred of them. A packet reaches its namespace never early (a round
/// trip is never shorter than the profile's) and at most 1 ms late (a leg's handover keeps the
/// due time), as a network card's interrupt coalescing delays packets; the order is kept.
const BATCH: Nanos = 1_000_000;
/// Most packets moved in one wakeup (the queue's lock is held while they are taken).
const MAX_BATCH: usize = 256;

/// The running star.
pub struct Star {
    legs: Vec<Leg>,
    tuns: Vec<Arc<tun_rs::SyncDevice>>,
    queue: Mutex<Queue>,
    wake: Condvar,
    epoch: Instant,
    /// Packets to an address no leg owns.
    unroutable: AtomicU64,
}

fn count_drop(counters: &Counters, why: shaper::Drop) {
    match why {
        shaper::Drop::Queue => counters.drop_queue.fetch_add(1, Relaxed),
        shaper::Drop::Loss => counters.drop_loss.fetch_add(1, Relaxed),
        shaper::Drop::Partition => counters.drop_partition.fetch_add(1, Relaxed),
    };
}

impl Star {
    /// Starts the threads: `legs[0]` and `tuns[0]` are the hub's, then one per site.
    pub fn start(legs: Vec<Leg>, tuns: Vec<Arc<tun_rs::SyncDevice>>) -> Arc<Star> {
        let star = Arc::new(Star {
            legs,
            tuns,
            queue: Mutex::new(Queue::default()),
            wake: Condvar::new(),
            epoch: Instant::now(),
            unroutable: AtomicU64::new(0),
        });
        for leg in 0..star.tuns.len() {
            let star = star.clone();
            std::thread::spawn(move || star.read(leg));
        }
        let scheduler = star.clone();
        std::thread::spawn(move || scheduler.schedule());
        star
    }

    fn now(&self) -> Nanos {
        self.epoch.elapsed().as_nanos() as Nanos
    }

    /// Queues a packet to move at `at`, waking the scheduler only when it falls due before
    /// everything queued (the scheduler sleeps until the earliest event).
    fn push(&self, at: Nanos, stage: Stage, packet: Vec<u8>) {
        let Ok(mut q) = self.queue.lock() else { return };
        let earliest = q.heap.peek().is_none_or(|Reverse(e)| at < e.at);
        let seq = q.seq;
        q.seq += 1;
        q.heap.push(Reverse(Event {
            at,
            seq,
            stage,
            packet,
        }));
        drop(q);
        if earliest {
            self.wake.notify_one();
        }
    }

    /// Reads leg `n`'s device and offers each packet to its way towards the core.
    fn read(&self, n: usize) {
        let mut buf = vec![0u8; 65_536];
        loop {
            let len = match self.tuns[n].recv(&mut buf) {
                Ok(len) => len,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(_) => return,
            };
            let verdict = match self.legs[n].up.lock() {
                Ok(mut s) => s.offer(self.now(), len),
                Err(_) => return,
            };
            match verdict {
                Verdict::Deliver(at) => self.push(at, Stage::Up(n), buf[..len].to_vec()),
                Verdict::Drop(why) => count_drop(&self.legs[n].up_counters, why),
            }
        }
    }

    /// Moves packets along as they fall due, in batches: the scheduler wakes [`BATCH`] after
    /// the earliest event falls due and takes every event due by then (in time order).
    fn schedule(&self) {
        let mut due = Vec::with_capacity(MAX_BATCH);
        loop {
            {
                let Ok(mut q) = self.queue.lock() else { return };
                loop {
                    let now = self.now();
                    match q.heap.peek() {
                        Some(Reverse(e)) if e.at + BATCH <= now => break,
                        Some(Reverse(e)) => {
                            let wait = Duration::from_nanos(e.at + BATCH - now);
                            q = match self.wake.wait_timeout(q, wait) {
                                Ok((q, _)) => q,
                                Err(_) => return,
                            };
                        }
                        None => {
                            q = match self.wake.wait(q) {
                                Ok(q) => q,
                                Err(_) => return,
                            };
                        }
                    }
                }
                let now = self.now();
                while due.len() < MAX_BATCH && q.heap.peek().is_some_and(|e| e.0.at <= now) {
                    if let Some(Reverse(e)) = q.heap.pop() {
                        due.push(e);
                    }
                }
            }
            for event in due.drain(..) {
                self.forward(event);
            }
        }
    }

    /// Hands a due packet from the first leg to the second, or writes it to its namespace.
    fn forward(&self, event: Event) {
        match event.stage {
            Stage::Up(from) => {
                let carried = &self.legs[from].up_counters;
                carried.packets.fetch_add(1, Relaxed);
                carried.bytes.fetch_add(event.packet.len() as u64, Relaxed);
                let to = match event.packet.get(16..20) {
                    Some(d) if event.packet[0] >> 4 == 4 => {
                        leg_of([d[0], d[1], d[2], d[3]], self.legs.len() - 1)
                    }
                    _ => None,
                };
                let Some(to) = to.filter(|&to| to != from) else {
                    self.unroutable.fetch_add(1, Relaxed);
                    return;
                };
                // Offered at the time it left the first leg: events leave the heap in
                // time order, so each leg's down shaper sees time go forward (all but a
                // reader thread held up for longer than a leg's delay, which the shaper
                // tolerates: it never delivers before what it delivered last).
                let verdict = match self.legs[to].down.lock() {
                    Ok(mut s) => s.offer(event.at, event.packet.len()),
                    Err(_) => return,
                };
                match verdict {
                    Verdict::Deliver(at) => self.push(at, Stage::Down(to), event.packet),
                    Verdict::Drop(why) => count_drop(&self.legs[to].down_counters, why),
                }
            }
            Stage::Down(to) => {
                if self.tuns[to].send(&event.packet).is_ok() {
                    let c = &self.legs[to].down_counters;
                    c.packets.fetch_add(1, Relaxed);
                    c.bytes.fetch_add(event.packet.len() as u64, Relaxed);
                }
            }
        }
    }

    /// Cuts the hub's leg (true) or mends it (false); the sites still reach each other.
    pub fn set_partitioned(&self, on: bool) {
        for s in [&self.legs[0].up, &self.legs[0].down] {
            if let Ok(mut s) = s.lock() {
                s.set_partitioned(on);
            }
        }
    }

    pub fn partitioned(&self) -> bool {
        self.legs[0]
            .up
            .lock()
            .map(|s| s.partitioned())
            .unwrap_or(false)
    }

    /// What the hub's leg carried from the hub and to it.
    pub fn hub_counters(&self) -> (CounterSnapshot, CounterSnapshot) {
        (
            self.legs[0].up_counters.snapshot(),
            self.legs[0].down_counters.snapshot(),
        )
    }

    /// What every site's leg carried towards the sites, summed, and packets nobody owned.
    pub fn site_totals(&self) -> (CounterSnapshot, u64) {
        let mut sum = CounterSnapshot::default();
        for leg in &self.legs[1..] {
            let s = leg.down_counters.snapshot();
            sum.packets += s.packets;
            sum.bytes += s.bytes;
            sum.drop_queue += s.drop_queue;
            sum.drop_loss += s.drop_loss;
            sum.drop_partition += s.drop_partition;
        }
        (sum, self.unroutable.load(Relaxed))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_route_to_their_legs_and_nothing_else() {
        assert_eq!(leg_of(HUB.octets(), 3), Some(0));
        for i in [0, 1, 249, 250, 251, 999] {
            assert_eq!(leg_of(site_addr(i).octets(), 1000), Some(i + 1), "site {i}");
        }
        assert_eq!(site_addr(250), Ipv4Addr::new(10, 77, 2, 1));
        assert_eq!(leg_of(site_addr(3).octets(), 3), None);
        assert_eq!(leg_of([10, 77, 1, 0], 10), None);
        assert_eq!(leg_of([10, 77, 1, 251], 10_000), None);
        assert_eq!(leg_of([10, 77, 0, 2], 10), None);
        assert_eq!(leg_of([10, 78, 1, 1], 10), None);
        assert_eq!(
            mgmt_addr(site_addr(251)),
            Ipv4Addr::new(10, 78, 2, 2),
            "management addresses mirror the emulated ones"
        );
        assert_eq!(site_addr(MAX_SITES - 1), Ipv4Addr::new(10, 77, 4, 250));
    }
}
