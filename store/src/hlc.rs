//! Hybrid logical clock: 48 bits of Unix milliseconds and 16 bits of logical counter in a `u64`,
//! so timestamps order like wall time when clocks agree and still only go forward when they don't.
//! The clock takes the wall time as an argument; the store feeds it `SystemTime::now()`.

/// Bits of the logical counter.
pub const LOGICAL_BITS: u32 = 16;

/// Builds a timestamp from milliseconds and a counter.
pub const fn pack(unix_ms: u64, logical: u16) -> u64 {
    (unix_ms << LOGICAL_BITS) | logical as u64
}

/// The wall-clock part of a timestamp, in Unix milliseconds.
pub const fn unix_ms(hlc: u64) -> u64 {
    hlc >> LOGICAL_BITS
}

/// The next local timestamp after `last`, given the wall time `now_ms`.
pub fn tick(last: u64, now_ms: u64) -> u64 {
    let wall = pack(now_ms, 0);
    if wall > last {
        wall
    } else {
        last.saturating_add(1)
    }
}

/// The clock after seeing a remote timestamp `remote` (so later local events order after it).
pub fn observe(last: u64, remote: u64, now_ms: u64) -> u64 {
    tick(last.max(remote), now_ms)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn moves_forward_even_when_the_wall_clock_does_not() {
        let a = tick(0, 1000);
        assert_eq!(a, pack(1000, 0));
        let b = tick(a, 1000);
        assert_eq!(b, pack(1000, 1));
        let c = tick(b, 999); // clock stepped back
        assert!(c > b);
        assert_eq!(tick(c, 2000), pack(2000, 0));
        let d = observe(pack(2000, 0), pack(5000, 7), 2001);
        assert_eq!(d, pack(5000, 8));
        assert_eq!(unix_ms(d), 5000);
    }
}
