//! BLAKE3 content hashes: the names of blobs and documents.

use std::fmt;
use std::str::FromStr;

/// A BLAKE3 hash (plain BLAKE3, so `b3sum` agrees).
///
/// Shown in full as 64 lowercase hex digits; [`Hash::short`] gives the first 12 for logs.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Hash([u8; 32]);

/// A string that is not 64 hex digits.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("`{input}` is not a BLAKE3 hash (expected 64 hex digits)")]
pub struct ParseHashError {
    /// What was given, cut to 80 characters.
    pub input: String,
}

impl Hash {
    /// The hash of `bytes`.
    pub fn of(bytes: &[u8]) -> Hash {
        Hash(*blake3::hash(bytes).as_bytes())
    }

    /// Wraps raw hash bytes.
    pub const fn from_bytes(bytes: [u8; 32]) -> Hash {
        Hash(bytes)
    }

    /// The raw bytes.
    pub const fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// Builds a hash from a slice that must be exactly 32 bytes long.
    pub fn from_slice(bytes: &[u8]) -> Option<Hash> {
        <[u8; 32]>::try_from(bytes).ok().map(Hash)
    }

    /// Full lowercase hex.
    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }

    /// The first 12 hex digits, for logs and tables.
    pub fn short(&self) -> String {
        hex::encode(&self.0[..6])
    }
}

impl From<blake3::Hash> for Hash {
    fn from(h: blake3::Hash) -> Hash {
        Hash(*h.as_bytes())
    }
}

impl From<Hash> for blake3::Hash {
    fn from(h: Hash) -> blake3::Hash {
        blake3::Hash::from_bytes(h.0)
    }
}

impl FromStr for Hash {
    type Err = ParseHashError;

    fn from_str(s: &str) -> Result<Hash, ParseHashError> {
        let mut out = [0u8; 32];
        match hex::decode_to_slice(s, &mut out) {
            Ok(()) => Ok(Hash(out)),
            Err(_) => Err(ParseHashError {
                input: s.chars().take(80).collect(),
            }),
        }
    }
}

impl fmt::Display for Hash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

impl fmt::Debug for Hash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Hash({})", self.short())
    }
}

impl serde::Serialize for Hash {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        if s.is_human_readable() {
            s.serialize_str(&self.to_hex())
        } else {
            s.serialize_bytes(&self.0)
        }
    }
}

impl<'de> serde::Deserialize<'de> for Hash {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Hash, D::Error> {
        struct Visitor;
        impl<'de> serde::de::Visitor<'de> for Visitor {
            type Value = Hash;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("32 bytes or 64 hex digits")
            }
            fn visit_bytes<E: serde::de::Error>(self, v: &[u8]) -> Result<Hash, E> {
                Hash::from_slice(v).ok_or_else(|| E::invalid_length(v.len(), &self))
            }
            fn visit_byte_buf<E: serde::de::Error>(self, v: Vec<u8>) -> Result<Hash, E> {
                self.visit_bytes(&v)
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Hash, E> {
                v.parse().map_err(E::custom)
            }
        }
        if d.is_human_readable() {
            d.deserialize_str(Visitor)
        } else {
            d.deserialize_bytes(Visitor)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_round_trip_and_known_value() {
        // b3sum of the empty input.
        let empty = Hash::of(b"");
        assert_eq!(
            empty.to_hex(),
            "af1349b9f5f9a1a6a0404dea36dcc9499bcb25c9adc112b7cc9a93cae41f3262"
        );
        assert_eq!(empty.to_hex().parse::<Hash>(), Ok(empty));
        assert_eq!(empty.short(), "af1349b9f5f9");
    }

    #[test]
    fn rejects_bad_hex() {
        for bad in ["", "xyz", &"a".repeat(63), &"a".repeat(66), &"g".repeat(64)] {
            assert!(bad.parse::<Hash>().is_err(), "{bad}");
        }
    }
}
