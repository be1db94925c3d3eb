//! Invertible Bloom lookup tables for set reconciliation.
//!
//! Each side inserts the items of the part of a feed it believes differs; one side sends its
//! table, the other subtracts its own and *peels* the result, recovering the symmetric
//! difference exactly when the table is large enough (about 1.5 cells per differing item, plus
//! a small constant). Cost is linear in the difference, not in the feed.
//!
//! Each item goes into one cell of each of [`HASH_COUNT`] partitions; with four, two items
//! that share all their cells (the usual way peeling gets stuck on small tables) are rare
//! enough that a table sized 1.5x the difference almost always decodes.
//!
//! An item is 16 bytes: the first 8 bytes of `BLAKE3(key)` (to find the entry again) and the
//! first 8 bytes of the entry's Merkle leaf (to tell a changed entry from an unchanged one).
//! Both halves are outputs of a hash, so items are uniformly distributed and the table needs no
//! further hashing to spread them; cell positions still mix in a per-table seed so a bad
//! choice of items cannot make every table fail.
//!
//! No I/O, no clock, no randomness: the seed is an input.

use std::collections::HashSet;

/// Number of cells each item is added to.
pub const HASH_COUNT: usize = 4;
/// Cells of the table a `summary` status carries: enough to peel a difference of a few items
/// (one changed entry is two) at once.
pub const SUMMARY_CELLS: usize = 12;
/// Counters of an [`Estimator`].
pub const ESTIMATOR_COUNTERS: usize = 256;
/// Largest table accepted from a peer, checked before allocating.
pub const MAX_CELLS: usize = 1 << 22;

/// A reconciliation item: 8 bytes of key hash, 8 bytes of leaf hash.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Item {
    /// First 8 bytes of `BLAKE3(key)`, big-endian.
    pub key: u64,
    /// First 8 bytes of the Merkle leaf, big-endian.
    pub leaf: u64,
}

impl Item {
    /// Builds an item from a key hash and a leaf hash.
    pub fn new(key_hash: &[u8; 32], leaf: &[u8; 32]) -> Item {
        let mut k = [0u8; 8];
        let mut l = [0u8; 8];
        k.copy_from_slice(&key_hash[..8]);
        l.copy_from_slice(&leaf[..8]);
        Item {
            key: u64::from_be_bytes(k),
            leaf: u64::from_be_bytes(l),
        }
    }
}

/// One cell: how many items were added minus removed, and the XOR of their ids and checksums.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Cell {
    /// Insertions minus removals.
    pub count: i64,
    /// XOR of item keys.
    pub key_sum: u64,
    /// XOR of item leaves.
    pub leaf_sum: u64,
    /// XOR of item checksums.
    pub check_sum: u64,
}

impl Cell {
    fn is_empty(&self) -> bool {
        self.count == 0 && self.key_sum == 0 && self.leaf_sum == 0 && self.check_sum == 0
    }
}

/// Why a table could not be decoded or built.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum IbltError {
    /// The difference is larger than the table can resolve; retry with a larger one.
    #[error("set difference too large for a table of {cells} cells ({recovered} items recovered before it stuck)")]
    Undecodable { cells: usize, recovered: usize },
    /// Tables of different shape cannot be subtracted.
    #[error("tables differ in size or seed ({a} vs {b} cells)")]
    Mismatch { a: usize, b: usize },
    /// A table size outside `1..=MAX_CELLS`, or not a multiple of the hash count.
    #[error("invalid table size {0}")]
    BadSize(usize),
}

/// An invertible Bloom lookup table with [`HASH_COUNT`] partitions.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Iblt {
    seed: u64,
    cells: Vec<Cell>,
}

fn mix(mut x: u64) -> u64 {
    // splitmix64 finaliser.
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

/// How many cells to use for an expected symmetric difference of `diff` items.
pub fn cells_for(diff: usize) -> usize {
    let raw = diff.saturating_mul(3) / 2 + 12;
    let rounded = raw.div_ceil(HASH_COUNT) * HASH_COUNT;
    rounded.min(MAX_CELLS / HASH_COUNT * HASH_COUNT)
}

impl Iblt {
    /// An empty table of `cells` cells (a multiple of [`HASH_COUNT`], at most [`MAX_CELLS`]).
    pub fn new(cells: usize, seed: u64) -> Result<Iblt, IbltError> {
        if cells == 0 || cells > MAX_CELLS || cells % HASH_COUNT != 0 {
            return Err(IbltError::BadSize(cells));
        }
        Ok(Iblt {
            seed,
            cells: vec![Cell::default(); cells],
        })
    }

    /// Rebuilds a table received from a peer (its size checked first).
    pub fn from_cells(cells: Vec<Cell>, seed: u64) -> Result<Iblt, IbltError> {
        if cells.is_empty() || cells.len() > MAX_CELLS || cells.len() % HASH_COUNT != 0 {
            return Err(IbltError::BadSize(cells.len()));
        }
        Ok(Iblt { seed, cells })
    }

    /// The cells, for encoding.
    pub fn cells(&self) -> &[Cell] {
        &self.cells
    }

    /// The seed.
    pub fn seed(&self) -> u64 {
        self.seed
    }

    /// The item's checksum: 32 bits, as cells carry it.
    fn check(&self, item: &Item) -> u64 {
        mix(item.key ^ mix(item.leaf ^ self.seed)) & 0xffff_ffff
    }

    fn positions(&self, item: &Item) -> [usize; HASH_COUNT] {
        let part = self.cells.len() / HASH_COUNT;
        let mut out = [0; HASH_COUNT];
        for (i, slot) in out.iter_mut().enumerate() {
            let h = mix(item.key
                ^ item.leaf.rotate_left(17)
                ^ self.seed
                ^ (i as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15));
            *slot = i * part + (h % part as u64) as usize;
        }
        out
    }

    fn apply(&mut self, item: &Item, delta: i64) {
        let check = self.check(item);
        for p in self.positions(item) {
            let c = &mut self.cells[p];
            c.count += delta;
            c.key_sum ^= item.key;
            c.leaf_sum ^= item.leaf;
            c.check_sum ^= check;
        }
    }

    /// Adds an item.
    pub fn insert(&mut self, item: &Item) {
        self.apply(item, 1);
    }

    /// Subtracts `other` (same size and seed) from this table.
    pub fn subtract(&mut self, other: &Iblt) -> Result<(), IbltError> {
        if self.cells.len() != other.cells.len() || self.seed != other.seed {
            return Err(IbltError::Mismatch {
                a: self.cells.len(),
                b: other.cells.len(),
            });
        }
        for (a, b) in self.cells.iter_mut().zip(&other.cells) {
            a.count -= b.count;
            a.key_sum ^= b.key_sum;
            a.leaf_sum ^= b.leaf_sum;
            a.check_sum ^= b.check_sum;
        }
        Ok(())
    }

    /// Peels a difference table: returns the items only in the minuend (count +1) and those
    /// only in the subtrahend (count -1).
    pub fn decode(mut self) -> Result<(Vec<Item>, Vec<Item>), IbltError> {
        let mut plus = Vec::new();
        let mut minus = Vec::new();
        let mut seen = HashSet::new();
        let mut queue: Vec<usize> = (0..self.cells.len()).collect();
        while let Some(i) = queue.pop() {
            let c = self.cells[i];
            if c.count != 1 && c.count != -1 {
                continue;
            }
            let item = Item {
                key: c.key_sum,
                leaf: c.leaf_sum,
            };
            if self.check(&item) != c.check_sum || !self.positions(&item).contains(&i) {
                continue;
            }
            if !seen.insert((item, c.count)) {
                // The same item peeled twice means the table is inconsistent.
                return Err(IbltError::Undecodable {
                    cells: self.cells.len(),
                    recovered: plus.len() + minus.len(),
                });
            }
            if plus.len() + minus.len() >= self.cells.len() {
                // More items than cells can hold: a forged or corrupt table.
                return Err(IbltError::Undecodable {
                    cells: self.cells.len(),
                    recovered: plus.len() + minus.len(),
                });
            }
            if c.count == 1 {
                plus.push(item);
            } else {
                minus.push(item);
            }
            let delta = -c.count;
            self.apply(&item, delta);
            queue.extend(self.positions(&item));
        }
        if self.cells.iter().all(Cell::is_empty) {
            plus.sort();
            minus.sort();
            Ok((plus, minus))
        } else {
            Err(IbltError::Undecodable {
                cells: self.cells.len(),
                recovered: plus.len() + minus.len(),
            })
        }
    }
}

/// A count sketch of a set of items, for estimating the size of a symmetric difference before
/// a table is sized for it.
///
/// Each item adds its sign (+1 or -1) to one of [`ESTIMATOR_COUNTERS`] counters, modulo 256.
/// Subtracting two sketches counter by counter leaves the signed sum of the differing items
/// in each counter; the sum of the squares of those sums has the size of the difference as its
/// expectation (cross terms cancel on average), with a relative standard deviation of about
/// `sqrt(2 / 256)`, 9%, whatever the size of the sets. Counters wrap, so a counter's
/// difference is read as a signed byte: right while it stays within +-127, which holds (more
/// than 10 standard deviations) for differences up to about 100,000 items; beyond that the
/// estimate is low, and a side sizing a table from it should compare with a plain list.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Estimator {
    counters: [u8; ESTIMATOR_COUNTERS],
}

impl Default for Estimator {
    fn default() -> Self {
        Estimator {
            counters: [0; ESTIMATOR_COUNTERS],
        }
    }
}

impl Estimator {
    /// An empty sketch.
    pub fn new() -> Estimator {
        Estimator::default()
    }

    /// From the bytes of the wire (`None` unless exactly [`ESTIMATOR_COUNTERS`] of them).
    pub fn from_bytes(b: &[u8]) -> Option<Estimator> {
        Some(Estimator {
            counters: b.try_into().ok()?,
        })
    }

    /// The counters as they travel.
    pub fn as_bytes(&self) -> &[u8] {
        &self.counters
    }

    /// Adds an item: counter `h mod 256` gains +1 if bit 8 of `h` is clear and -1 if it is
    /// set, where `h = mix(key ^ mix(leaf ^ ESTIMATOR_SALT))`.
    pub fn insert(&mut self, item: &Item) {
        let h = mix(item.key ^ mix(item.leaf ^ ESTIMATOR_SALT));
        let c = &mut self.counters[(h & 0xff) as usize];
        *c = if h & 0x100 == 0 {
            c.wrapping_add(1)
        } else {
            c.wrapping_sub(1)
        };
    }

    /// The estimated number of items in one of the two sets but not the other.
    pub fn difference(&self, other: &Estimator) -> f64 {
        self.counters
            .iter()
            .zip(&other.counters)
            .map(|(a, b)| {
                let d = f64::from(a.wrapping_sub(*b) as i8);
                d * d
            })
            .sum()
    }
}

/// Salt of the estimator's hash, so that its counters are independent of table positions.
pub const ESTIMATOR_SALT: u64 = 0x6361_6972_6e65_7374;

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn item(i: u64) -> Item {
        Item {
            key: mix(i),
            leaf: mix(i ^ 0xdead_beef),
        }
    }

    fn table(items: impl IntoIterator<Item = Item>, cells: usize) -> Iblt {
        let mut t = Iblt::new(cells, 42).unwrap();
        for i in items {
            t.insert(&i);
        }
        t
    }

    #[test]
    fn recovers_a_difference_from_large_sets() {
        let common: Vec<Item> = (0..100_000).map(item).collect();
        let only_a: Vec<Item> = (1_000_000..1_000_060).map(item).collect();
        let only_b: Vec<Item> = (2_000_000..2_000_040).map(item).collect();
        let cells = cells_for(100);
        let mut a = table(common.iter().chain(&only_a).copied(), cells);
        let b = table(common.iter().chain(&only_b).copied(), cells);
        a.subtract(&b).unwrap();
        let (plus, minus) = a.decode().unwrap();
        let mut want_a = only_a.clone();
        want_a.sort();
        let mut want_b = only_b.clone();
        want_b.sort();
        assert_eq!(plus, want_a);
        assert_eq!(minus, want_b);
    }

    #[test]
    fn the_estimator_is_near_the_difference_whatever_the_common_part() {
        let common: Vec<Item> = (0..200_000).map(item).collect();
        for (m, slack) in [(0u64, 0.0), (1, 0.0), (2, 0.0), (140, 0.35), (14_000, 0.35)] {
            let mut a = Estimator::new();
            let mut b = Estimator::new();
            for i in &common {
                a.insert(i);
                b.insert(i);
            }
            // Half the difference on each side.
            for j in 0..m {
                let x = item(10_000_000 + j);
                if j % 2 == 0 {
                    a.insert(&x);
                } else {
                    b.insert(&x);
                }
            }
            let e = a.difference(&b);
            let lo = m as f64 * (1.0 - slack);
            let hi = m as f64 * (1.0 + slack);
            assert!(e >= lo && e <= hi, "estimate {e} for {m}");
            assert_eq!(Estimator::from_bytes(a.as_bytes()), Some(a.clone()));
        }
        assert!(Estimator::from_bytes(&[0; 255]).is_none());
    }

    #[test]
    fn too_small_a_table_says_so() {
        let a = table((0..500).map(item), cells_for(10));
        let b = table(std::iter::empty(), cells_for(10));
        let mut d = a;
        d.subtract(&b).unwrap();
        assert!(matches!(d.decode(), Err(IbltError::Undecodable { .. })));
    }

    #[test]
    fn shapes_are_checked() {
        assert!(Iblt::new(0, 1).is_err());
        assert!(Iblt::new(10, 1).is_err());
        assert!(Iblt::new(MAX_CELLS + 3, 1).is_err());
        let mut a = Iblt::new(12, 1).unwrap();
        assert!(a.subtract(&Iblt::new(16, 1).unwrap()).is_err());
        assert!(a.subtract(&Iblt::new(12, 2).unwrap()).is_err());
        assert!(Iblt::from_cells(vec![Cell::default(); 7], 1).is_err());
    }

    proptest! {
        #[test]
        fn decodes_whenever_sized_for_the_difference(
            n_common in 0u64..2000,
            n_a in 0u64..80,
            n_b in 0u64..80,
            seed in any::<u64>(),
        ) {
            let cells = cells_for((n_a + n_b) as usize);
            let mut a = Iblt::new(cells, seed).unwrap();
            let mut b = Iblt::new(cells, seed).unwrap();
            for i in 0..n_common { a.insert(&item(i)); b.insert(&item(i)); }
            for i in 0..n_a { a.insert(&item(10_000 + i)); }
            for i in 0..n_b { b.insert(&item(20_000 + i)); }
            a.subtract(&b).unwrap();
            // Decoding can fail with small probability; it must never return a wrong answer.
            if let Ok((plus, minus)) = a.decode() {
                prop_assert_eq!(plus.len() as u64, n_a);
                prop_assert_eq!(minus.len() as u64, n_b);
            }
        }

        #[test]
        fn garbage_cells_never_panic(cells in proptest::collection::vec((any::<i64>(), any::<u64>(), any::<u64>(), any::<u64>()), 4..60)) {
            let n = cells.len() / HASH_COUNT * HASH_COUNT;
            let cells: Vec<Cell> = cells[..n].iter().map(|&(count, key_sum, leaf_sum, check_sum)| Cell { count, key_sum, leaf_sum, check_sum }).collect();
            let t = Iblt::from_cells(cells, 7).unwrap();
            let _ = t.decode();
        }
    }

    #[test]
    fn decode_success_rate_at_the_chosen_size() {
        // 200 trials of 100 differences: the sizing rule must almost always succeed.
        let mut ok = 0;
        for trial in 0..200u64 {
            let cells = cells_for(100);
            let mut a = Iblt::new(cells, trial).unwrap();
            for i in 0..100 {
                a.insert(&item(trial * 1000 + i));
            }
            if a.decode().is_ok() {
                ok += 1;
            }
        }
        assert!(ok >= 190, "{ok}/200 decoded");
    }
}
