//! The one deterministic generator of the simulations, the link emulator, tests and
//! benchmarks: xorshift64, seeded, so that a run with the same seed repeats exactly. Never for
//! anything secret (keys, tokens and ids come from the operating system).

/// A seeded xorshift64 generator.
#[derive(Clone, Debug)]
pub struct Xorshift(u64);

impl Xorshift {
    /// A generator from any seed (mixed, and never the all-zero state xorshift cannot leave).
    pub fn new(seed: u64) -> Xorshift {
        Xorshift(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    /// The next 64 bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    /// Uniform in `[0, 1)`.
    pub fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// Below `n` (0 when `n` is 0).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64().checked_rem(n).unwrap_or(0)
    }

    /// Fills `out` with pseudo-random bytes, incompressible enough for storage benchmarks.
    pub fn fill(&mut self, out: &mut [u8]) {
        for chunk in out.chunks_mut(8) {
            let b = self.next_u64().to_le_bytes();
            chunk.copy_from_slice(&b[..chunk.len()]);
        }
    }

    /// `len` pseudo-random bytes.
    pub fn bytes(&mut self, len: usize) -> Vec<u8> {
        let mut v = vec![0; len];
        self.fill(&mut v);
        v
    }
}

#[cfg(test)]
mod tests {
    use super::Xorshift;

    #[test]
    fn the_same_seed_repeats_and_another_differs() {
        let (mut a, mut b, mut c) = (Xorshift::new(7), Xorshift::new(7), Xorshift::new(8));
        let (x, y, z) = (a.bytes(1000), b.bytes(1000), c.bytes(1000));
        assert_eq!(x, y);
        assert_ne!(x, z);
        // Not stuck: the bytes are spread over the whole range.
        let distinct: std::collections::HashSet<u8> = x.iter().copied().collect();
        assert!(distinct.len() > 200, "{}", distinct.len());
        assert!((0..1000).all(|_| a.below(10) < 10 && (0.0..1.0).contains(&a.unit())));
        assert_eq!(Xorshift::new(0).below(0), 0);
    }
}
