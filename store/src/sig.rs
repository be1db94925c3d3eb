//! The ed25519 verification rule of every signature Cairn checks, alone or many at once.
//!
//! A signature `(R, s)` by key `A` over message `M` is valid when `s` is canonical (below the
//! group order L), `A` and `R` decode to curve points, `A` is not of small order, and
//!
//! ```text
//! [8]([s]B - R - [k]A) = 0,    k = SHA-512(R || A || M) mod L
//! ```
//!
//! with `R` and `A` hashed as the bytes that were sent. This is the cofactored equation of
//! RFC 8032 section 5.1.7 (ZIP 215's rule): the one equation that checking signatures one at
//! a time and checking a batch of them together answer alike, so which way a receiver checks
//! (how many documents a frame carried, how many threads it had) never changes what it
//! accepts. Every signature made by RFC 8032 signing is valid under it and under the strict
//! cofactorless check of libsodium. The two differ only on a signature whose `R` carries a
//! small-order component, which only the holder of the private key can make: a strict
//! verifier refusing a document that Cairn accepted is evidence against the key's holder, not
//! a way for anyone else in between to split receivers.
//!
//! The small-order key is refused because under the cofactored equation it would sign every
//! message for anyone.

use curve25519_dalek::constants::ED25519_BASEPOINT_POINT;
use curve25519_dalek::edwards::{CompressedEdwardsY, EdwardsPoint};
use curve25519_dalek::scalar::Scalar;
use curve25519_dalek::traits::{IsIdentity, VartimeMultiscalarMul};
use sha2::{Digest, Sha512};

/// A signer's key, decoded once for any number of signatures.
#[derive(Clone, Copy, Debug)]
pub struct VerifyKey {
    bytes: [u8; 32],
    point: EdwardsPoint,
}

impl VerifyKey {
    /// The key of `bytes`; `None` if they are not a point, or a point of small order.
    pub fn new(bytes: [u8; 32]) -> Option<VerifyKey> {
        let point = CompressedEdwardsY(bytes).decompress()?;
        if point.is_small_order() {
            return None;
        }
        Some(VerifyKey { bytes, point })
    }

    /// Whether `signature` is valid for `message` under the rule above.
    pub fn verify(&self, message: &[u8], signature: &[u8; 64]) -> bool {
        let Some(t) = self.terms(message, signature) else {
            return false;
        };
        let sb_minus_ka =
            EdwardsPoint::vartime_double_scalar_mul_basepoint(&t.k, &-self.point, &t.s);
        (sb_minus_ka - t.r).mul_by_cofactor().is_identity()
    }

    /// Whether every one of `items` (message, signature) is valid, checked together: one
    /// multiscalar multiplication for all, each signature weighted by a fresh random 128-bit
    /// factor so that invalid ones cannot cancel out (the chance that a set with an invalid
    /// signature passes is at most 2^-128). `false` says only that some signature is invalid,
    /// not which: check them one by one to find out.
    pub fn verify_all(&self, items: &[(&[u8], &[u8; 64])]) -> bool {
        let mut weights = vec![0u8; 16 * items.len()];
        if getrandom::fill(&mut weights).is_err() {
            return false;
        }
        let mut scalars = Vec::with_capacity(items.len() + 2);
        let mut points = Vec::with_capacity(items.len() + 2);
        let (mut b, mut a) = (Scalar::ZERO, Scalar::ZERO);
        for ((message, signature), w) in items.iter().zip(weights.chunks_exact(16)) {
            let Some(t) = self.terms(message, signature) else {
                return false;
            };
            let mut z = [0u8; 16];
            z.copy_from_slice(w);
            let z = Scalar::from(u128::from_le_bytes(z));
            // Each valid signature has R + [k]A - [s]B = 0.
            b -= z * t.s;
            a += z * t.k;
            scalars.push(z);
            points.push(t.r);
        }
        scalars.push(b);
        points.push(ED25519_BASEPOINT_POINT);
        scalars.push(a);
        points.push(self.point);
        EdwardsPoint::vartime_multiscalar_mul(scalars, points)
            .mul_by_cofactor()
            .is_identity()
    }

    /// `R` and `s` decoded, and the challenge `k`; `None` if `s` is not canonical or `R` is not
    /// a point.
    fn terms(&self, message: &[u8], signature: &[u8; 64]) -> Option<Terms> {
        let (r_bytes, s_bytes) = signature.split_at(32);
        let mut s = [0u8; 32];
        s.copy_from_slice(s_bytes);
        let s = Option::<Scalar>::from(Scalar::from_canonical_bytes(s))?;
        let mut r = [0u8; 32];
        r.copy_from_slice(r_bytes);
        let r = CompressedEdwardsY(r).decompress()?;
        let mut h = Sha512::new();
        h.update(r_bytes);
        h.update(self.bytes);
        h.update(message);
        let mut wide = [0u8; 64];
        wide.copy_from_slice(&h.finalize());
        Some(Terms {
            r,
            s,
            k: Scalar::from_bytes_mod_order_wide(&wide),
        })
    }
}

struct Terms {
    r: EdwardsPoint,
    s: Scalar,
    k: Scalar,
}

/// A signature made with `key`'s secret whose R carries the small-order point
/// `EIGHT_TORSION[torsion]`: valid under the rule above, refused by a strict verifier.
#[cfg(test)]
pub(crate) fn torsioned(
    key: &ed25519_dalek::SigningKey,
    message: &[u8],
    torsion: usize,
) -> [u8; 64] {
    let r = Scalar::from(0x1234_5678_9abc_def0_u64 + torsion as u64);
    let big_r = (ED25519_BASEPOINT_POINT * r + curve25519_dalek::constants::EIGHT_TORSION[torsion])
        .compress();
    let mut h = Sha512::new();
    h.update(big_r.as_bytes());
    h.update(key.verifying_key().as_bytes());
    h.update(message);
    let mut wide = [0u8; 64];
    wide.copy_from_slice(&h.finalize());
    let k = Scalar::from_bytes_mod_order_wide(&wide);
    let s = r + k * key.to_scalar();
    let mut sig = [0u8; 64];
    sig[..32].copy_from_slice(big_r.as_bytes());
    sig[32..].copy_from_slice(s.as_bytes());
    sig
}

#[cfg(test)]
mod tests {
    use super::*;
    use curve25519_dalek::constants::EIGHT_TORSION;
    use ed25519_dalek::{Signer, SigningKey, Verifier};

    fn key(seed: u8) -> SigningKey {
        SigningKey::from_bytes(&[seed; 32])
    }

    fn vk(k: &SigningKey) -> VerifyKey {
        VerifyKey::new(k.verifying_key().to_bytes()).unwrap()
    }

    /// `(message, signature)` pairs for [`VerifyKey::verify_all`].
    fn pairs<'a>(messages: &'a [Vec<u8>], sigs: &'a [[u8; 64]]) -> Vec<(&'a [u8], &'a [u8; 64])> {
        messages.iter().map(Vec::as_slice).zip(sigs).collect()
    }

    /// Two valid signatures, one's `s` raised by one and the other's lowered by one: each is
    /// invalid, and the plain sum of their equations still holds. Only the random weights
    /// tell: someone holding signed documents but no key (a relay) cannot get such a pair
    /// past a batch.
    #[test]
    fn tweaks_that_cancel_in_a_sum_fail_the_batch() {
        let k = key(9);
        let v = vk(&k);
        let messages: Vec<Vec<u8>> = vec![b"one".to_vec(), b"two".to_vec()];
        let mut sigs: Vec<[u8; 64]> = messages.iter().map(|m| k.sign(m).to_bytes()).collect();
        let s =
            |sig: &[u8; 64]| Scalar::from_canonical_bytes(sig[32..].try_into().unwrap()).unwrap();
        let (s0, s1) = (s(&sigs[0]) + Scalar::ONE, s(&sigs[1]) - Scalar::ONE);
        sigs[0][32..].copy_from_slice(s0.as_bytes());
        sigs[1][32..].copy_from_slice(s1.as_bytes());
        for (m, sig) in messages.iter().zip(&sigs) {
            assert!(!v.verify(m, sig));
        }
        // The unweighted sum of [s]B - R - [k]A over the pair is the identity.
        let sum = (0..2)
            .map(|i| {
                let t = v.terms(&messages[i], &sigs[i]).unwrap();
                EdwardsPoint::vartime_double_scalar_mul_basepoint(&t.k, &-v.point, &t.s) - t.r
            })
            .fold(EdwardsPoint::default(), |a, b| a + b);
        assert!(sum.is_identity());
        assert!(!v.verify_all(&pairs(&messages, &sigs)));
    }

    #[test]
    fn rfc8032_signatures_are_valid_alone_and_together() {
        let k = key(3);
        let v = vk(&k);
        let messages: Vec<Vec<u8>> = (0..40u8).map(|i| vec![i; i as usize * 7]).collect();
        let sigs: Vec<[u8; 64]> = messages.iter().map(|m| k.sign(m).to_bytes()).collect();
        for (m, s) in messages.iter().zip(&sigs) {
            assert!(v.verify(m, s));
        }
        let items = pairs(&messages, &sigs);
        assert!(v.verify_all(&items));
        assert!(v.verify_all(&items[..1]));
        assert!(v.verify_all(&[]));
    }

    #[test]
    fn one_bad_signature_fails_the_batch_wherever_it_is() {
        let k = key(4);
        let v = vk(&k);
        let messages: Vec<Vec<u8>> = (0..17u8).map(|i| vec![i; 100]).collect();
        let sigs: Vec<[u8; 64]> = messages.iter().map(|m| k.sign(m).to_bytes()).collect();
        for bad in [0, 8, 16] {
            for edit in 0..3 {
                let mut sigs = sigs.clone();
                let mut messages = messages.clone();
                match edit {
                    0 => sigs[bad][40] ^= 1,
                    1 => sigs[bad][5] ^= 1,
                    _ => messages[bad][50] ^= 1,
                }
                assert!(!v.verify(&messages[bad], &sigs[bad]), "{bad} {edit}");
                let items = pairs(&messages, &sigs);
                assert!(!v.verify_all(&items), "{bad} {edit}");
            }
        }
        // A signature from another key.
        let mut sigs = sigs.clone();
        sigs[3] = key(5).sign(&messages[3]).to_bytes();
        let items = pairs(&messages, &sigs);
        assert!(!v.verify_all(&items));
    }

    #[test]
    fn a_non_canonical_s_is_refused() {
        let k = key(6);
        let v = vk(&k);
        let mut sig = k.sign(b"m").to_bytes();
        // s + L has the same value mod L.
        let s = Scalar::from_canonical_bytes(sig[32..].try_into().unwrap()).unwrap();
        let l_plus = {
            // L = 2^252 + 27742317777372353535851937790883648493, little-endian.
            let l: [u8; 32] = [
                0xed, 0xd3, 0xf5, 0x5c, 0x1a, 0x63, 0x12, 0x58, 0xd6, 0x9c, 0xf7, 0xa2, 0xde, 0xf9,
                0xde, 0x14, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x10,
            ];
            let mut out = [0u8; 32];
            let mut carry = 0u16;
            for i in 0..32 {
                let t = s.as_bytes()[i] as u16 + l[i] as u16 + carry;
                out[i] = t as u8;
                carry = t >> 8;
            }
            out
        };
        sig[32..].copy_from_slice(&l_plus);
        assert!(!v.verify(b"m", &sig));
        assert!(!v.verify_all(&[(b"m".as_slice(), &sig)]));
    }

    /// The rule's one difference from a strict verifier, pinned: a signature made with the key
    /// whose R has a small-order component is valid here, alone and in a batch, and refused
    /// by the cofactorless check.
    #[test]
    fn a_key_holders_torsioned_signature_is_valid_alone_and_together() {
        let k = key(7);
        let v = vk(&k);
        let messages: Vec<Vec<u8>> = (0..8u8).map(|i| vec![i; 64]).collect();
        let sigs: Vec<[u8; 64]> = messages
            .iter()
            .enumerate()
            .map(|(i, m)| torsioned(&k, m, i))
            .collect();
        for (i, (m, s)) in messages.iter().zip(&sigs).enumerate() {
            assert!(v.verify(m, s), "torsion {i}");
            let strict = k
                .verifying_key()
                .verify(m, &ed25519_dalek::Signature::from_bytes(s));
            // EIGHT_TORSION[0] is the identity: that one is an ordinary signature.
            assert_eq!(strict.is_ok(), i == 0, "torsion {i}");
        }
        let items = pairs(&messages, &sigs);
        assert!(v.verify_all(&items));
    }

    /// A key of small order would make (R = [s]B) a signature of every message: refused.
    #[test]
    fn small_order_keys_are_refused() {
        for t in EIGHT_TORSION {
            assert!(VerifyKey::new(t.compress().to_bytes()).is_none());
        }
        assert!(VerifyKey::new(key(8).verifying_key().to_bytes()).is_some());
    }
}
