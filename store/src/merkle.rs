//! The Merkle summary of a set of entries: a trie over `BLAKE3(key)` whose nodes hold the
//! count of entries below them and an additive fingerprint, the sum modulo 2^256 of the
//! entries' leaf hashes.
//!
//! Because addition commutes, a node's fingerprint depends only on the set below it, never on
//! the order of insertion, and a write changes exactly one node per level: subtract the old
//! leaf, add the new one. The store keeps nodes for prefixes of 0 to [`MAX_DEPTH`] bytes; deeper
//! questions are answered from the entries themselves.
//!
//! Known limit: an additive set hash is only as strong as the cost of finding a subset of
//! leaves with a chosen sum. Leaves are hashes of signed documents, so nobody can choose them
//! freely, but auditors who need more than "same root" should compare entry lists too.

use std::fmt;

use crate::Hash;

/// Deepest trie level kept as stored nodes (prefix length in bytes).
pub const MAX_DEPTH: usize = 3;

/// A 256-bit additive fingerprint (little-endian integer modulo 2^256).
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Fingerprint([u8; 32]);

impl Fingerprint {
    /// The fingerprint of the empty set.
    pub const ZERO: Fingerprint = Fingerprint([0; 32]);

    /// Wraps raw bytes.
    pub const fn from_bytes(b: [u8; 32]) -> Fingerprint {
        Fingerprint(b)
    }

    /// Raw bytes (little-endian).
    pub const fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    fn limbs(&self) -> [u64; 4] {
        let mut l = [0u64; 4];
        for (i, chunk) in self.0.chunks_exact(8).enumerate() {
            let mut b = [0u8; 8];
            b.copy_from_slice(chunk);
            l[i] = u64::from_le_bytes(b);
        }
        l
    }

    fn from_limbs(l: [u64; 4]) -> Fingerprint {
        let mut out = [0u8; 32];
        for (i, limb) in l.iter().enumerate() {
            out[i * 8..i * 8 + 8].copy_from_slice(&limb.to_le_bytes());
        }
        Fingerprint(out)
    }

    /// `self + other` modulo 2^256.
    pub fn add(&self, other: &Fingerprint) -> Fingerprint {
        let (a, b) = (self.limbs(), other.limbs());
        let mut out = [0u64; 4];
        let mut carry = false;
        for i in 0..4 {
            let (s1, c1) = a[i].overflowing_add(b[i]);
            let (s2, c2) = s1.overflowing_add(u64::from(carry));
            out[i] = s2;
            carry = c1 || c2;
        }
        Fingerprint::from_limbs(out)
    }

    /// `self - other` modulo 2^256.
    pub fn sub(&self, other: &Fingerprint) -> Fingerprint {
        let (a, b) = (self.limbs(), other.limbs());
        let mut out = [0u64; 4];
        let mut borrow = false;
        for i in 0..4 {
            let (d1, b1) = a[i].overflowing_sub(b[i]);
            let (d2, b2) = d1.overflowing_sub(u64::from(borrow));
            out[i] = d2;
            borrow = b1 || b2;
        }
        Fingerprint::from_limbs(out)
    }

    /// Full hex.
    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }
}

impl fmt::Debug for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Fingerprint({})", &self.to_hex()[..12])
    }
}

impl fmt::Display for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

/// A node of the trie: how many entries are below it and their summed fingerprint.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct NodeSummary {
    /// Sum of leaf hashes.
    pub fingerprint: Fingerprint,
    /// Number of entries.
    pub count: u64,
}

impl NodeSummary {
    /// Stored encoding: 32 bytes fingerprint, 8 bytes big-endian count.
    pub fn encode(&self) -> [u8; 40] {
        let mut out = [0u8; 40];
        out[..32].copy_from_slice(&self.fingerprint.0);
        out[32..].copy_from_slice(&self.count.to_be_bytes());
        out
    }

    /// Parses [`NodeSummary::encode`]'s output.
    pub fn decode(b: &[u8]) -> Option<NodeSummary> {
        let fp: [u8; 32] = b.get(..32)?.try_into().ok()?;
        let count: [u8; 8] = b.get(32..40)?.try_into().ok()?;
        (b.len() == 40).then(|| NodeSummary {
            fingerprint: Fingerprint(fp),
            count: u64::from_be_bytes(count),
        })
    }

    /// Adds one leaf.
    pub fn insert(&mut self, leaf: &Fingerprint) {
        self.fingerprint = self.fingerprint.add(leaf);
        self.count += 1;
    }

    /// Removes one leaf.
    pub fn remove(&mut self, leaf: &Fingerprint) {
        self.fingerprint = self.fingerprint.sub(leaf);
        self.count = self.count.saturating_sub(1);
    }
}

/// Where an entry sits in the trie.
pub fn key_hash(key: &str) -> Hash {
    Hash::of(key.as_bytes())
}

/// The leaf hash of an entry: binds the key to the document it holds.
pub fn leaf(key: &str, doc: &Hash) -> Fingerprint {
    let mut h = blake3::Hasher::new();
    h.update(b"cairn/v1/leaf\0");
    h.update(&(key.len() as u64).to_le_bytes());
    h.update(key.as_bytes());
    h.update(doc.as_bytes());
    Fingerprint(*h.finalize().as_bytes())
}

/// Summarises a set of `(key, doc)` entries from scratch (reference for tests and `verify`).
pub fn summarize<'a>(entries: impl IntoIterator<Item = (&'a str, &'a Hash)>) -> NodeSummary {
    let mut n = NodeSummary::default();
    for (k, d) in entries {
        n.insert(&leaf(k, d));
    }
    n
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn add_and_sub_wrap_modulo_2_256() {
        let max = Fingerprint([0xff; 32]);
        let one = Fingerprint::from_limbs([1, 0, 0, 0]);
        assert_eq!(max.add(&one), Fingerprint::ZERO);
        assert_eq!(Fingerprint::ZERO.sub(&one), max);
        let carry = Fingerprint::from_limbs([u64::MAX, 0, 0, 0]).add(&one);
        assert_eq!(carry, Fingerprint::from_limbs([0, 1, 0, 0]));
    }

    #[test]
    fn encode_round_trips_and_rejects_bad_length() {
        let n = summarize([("a/1", &Hash::of(b"x"))]);
        assert_eq!(NodeSummary::decode(&n.encode()), Some(n));
        assert_eq!(NodeSummary::decode(&n.encode()[..39]), None);
    }

    proptest! {
        #[test]
        fn sum_is_order_independent_and_removal_inverts(
            keys in proptest::collection::btree_set("[a-z]{1,8}/[0-9]{1,3}", 1..40),
            seed in any::<u64>(),
        ) {
            let doc = Hash::of(&seed.to_le_bytes());
            let forward = summarize(keys.iter().map(|k| (k.as_str(), &doc)));
            let backward = summarize(keys.iter().rev().map(|k| (k.as_str(), &doc)));
            prop_assert_eq!(forward, backward);
            let mut n = forward;
            for k in &keys {
                n.remove(&leaf(k, &doc));
            }
            prop_assert_eq!(n, NodeSummary::default());
        }
    }
}
