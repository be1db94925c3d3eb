//! Deterministic CBOR (RFC 8949 section 4.2.1, "core deterministic encoding").
//!
//! Every signed payload is encoded here and every received one is checked here: definite
//! lengths, shortest integer and length heads, map keys in bytewise order of their encodings,
//! no duplicate keys, no trailing bytes. Floats and tags are refused outright: no document
//! needs them, and leaving them out removes the float-canonicalisation question.
//!
//! The check is "decode, walk, re-encode, compare": a payload is canonical exactly when
//! re-encoding what it decodes to gives back the same bytes.

use ciborium::Value;
use serde::{de::DeserializeOwned, Serialize};

/// How deep a payload may nest before it is refused (protects the decoder's stack).
pub const MAX_NESTING: usize = 32;

/// Why bytes could not be turned into a value, or a value into canonical bytes.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CborError {
    /// More bytes than the caller allows.
    #[error("cbor item of {len} bytes is over the limit of {max}")]
    TooLarge { len: usize, max: usize },
    /// Not well-formed CBOR, or nested too deep.
    #[error("malformed cbor: {0}")]
    Malformed(String),
    /// Well-formed, but not in deterministic encoding.
    #[error("cbor is not in deterministic encoding: {0}")]
    NotCanonical(&'static str),
    /// Deterministic CBOR, but not the shape the type expects.
    #[error("cbor does not match the expected shape: {0}")]
    Shape(String),
}

/// Encodes `value` deterministically.
pub fn to_canonical<T: Serialize + ?Sized>(value: &T) -> Result<Vec<u8>, CborError> {
    let mut v = Value::serialized(value).map_err(|e| CborError::Shape(e.to_string()))?;
    canonicalize(&mut v, 0)?;
    encode(&v)
}

/// Decodes `bytes`, which must be one canonical item of at most `max` bytes.
pub fn from_canonical<T: DeserializeOwned>(bytes: &[u8], max: usize) -> Result<T, CborError> {
    let value = decode_canonical_value(bytes, max)?;
    value
        .deserialized()
        .map_err(|e| CborError::Shape(e.to_string()))
}

/// Decodes one canonical item into a generic [`Value`].
pub fn decode_canonical_value(bytes: &[u8], max: usize) -> Result<Value, CborError> {
    if bytes.len() > max {
        return Err(CborError::TooLarge {
            len: bytes.len(),
            max,
        });
    }
    let mut rest = bytes;
    let value: Value = ciborium::de::from_reader_with_recursion_limit(&mut rest, MAX_NESTING)
        .map_err(|e| CborError::Malformed(e.to_string()))?;
    if !rest.is_empty() {
        return Err(CborError::NotCanonical("trailing bytes after the item"));
    }
    check_value(&value, 0)?;
    if encode(&value)? != bytes {
        return Err(CborError::NotCanonical(
            "re-encoding differs (non-shortest head or indefinite length)",
        ));
    }
    Ok(value)
}

fn encode(v: &Value) -> Result<Vec<u8>, CborError> {
    let mut out = Vec::new();
    ciborium::ser::into_writer(v, &mut out).map_err(|e| CborError::Shape(e.to_string()))?;
    Ok(out)
}

fn encoded_key(v: &Value) -> Result<Vec<u8>, CborError> {
    encode(v)
}

fn canonicalize(v: &mut Value, depth: usize) -> Result<(), CborError> {
    if depth > MAX_NESTING {
        return Err(CborError::Shape("nested too deep".into()));
    }
    match v {
        Value::Float(_) => Err(CborError::Shape("floats are not allowed".into())),
        Value::Tag(..) => Err(CborError::Shape("tags are not allowed".into())),
        Value::Array(items) => items
            .iter_mut()
            .try_for_each(|i| canonicalize(i, depth + 1)),
        Value::Map(entries) => {
            let mut keyed = Vec::with_capacity(entries.len());
            for (mut k, mut val) in entries.drain(..) {
                canonicalize(&mut k, depth + 1)?;
                canonicalize(&mut val, depth + 1)?;
                keyed.push((encoded_key(&k)?, k, val));
            }
            keyed.sort_by(|a, b| a.0.cmp(&b.0));
            if keyed.windows(2).any(|w| w[0].0 == w[1].0) {
                return Err(CborError::Shape("duplicate map key".into()));
            }
            entries.extend(keyed.into_iter().map(|(_, k, v)| (k, v)));
            Ok(())
        }
        _ => Ok(()),
    }
}

fn check_value(v: &Value, depth: usize) -> Result<(), CborError> {
    if depth > MAX_NESTING {
        return Err(CborError::Malformed("nested too deep".into()));
    }
    match v {
        Value::Float(_) => Err(CborError::NotCanonical("floats are not allowed")),
        Value::Tag(..) => Err(CborError::NotCanonical("tags are not allowed")),
        Value::Array(items) => items.iter().try_for_each(|i| check_value(i, depth + 1)),
        Value::Map(entries) => {
            let mut previous: Option<Vec<u8>> = None;
            for (k, val) in entries {
                check_value(k, depth + 1)?;
                check_value(val, depth + 1)?;
                let key = encoded_key(k)?;
                if let Some(prev) = &previous {
                    if *prev == key {
                        return Err(CborError::NotCanonical("duplicate map key"));
                    }
                    if *prev > key {
                        return Err(CborError::NotCanonical("map keys out of order"));
                    }
                }
                previous = Some(key);
            }
            Ok(())
        }
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    fn check_rejects(hex_input: &str, expect: &str) {
        let bytes = hex::decode(hex_input).unwrap();
        let err = decode_canonical_value(&bytes, 1024)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains(expect),
            "{hex_input}: got `{err}`, want `{expect}`"
        );
    }

    /// Whatever encodes must decode: a value nested right at the limit survives the round
    /// trip, one level deeper is refused when it is encoded (so it is never signed).
    #[test]
    fn nesting_that_encodes_also_decodes() {
        fn nested(depth: usize) -> Value {
            (0..depth).fold(Value::Integer(1.into()), |v, _| Value::Array(vec![v]))
        }
        let mut deepest = 0;
        for depth in 0..MAX_NESTING + 4 {
            match to_canonical(&nested(depth)) {
                Ok(bytes) => {
                    decode_canonical_value(&bytes, 1 << 20).unwrap_or_else(|e| {
                        panic!("depth {depth} encoded but does not decode: {e}")
                    });
                    deepest = depth;
                }
                Err(_) => break,
            }
        }
        assert!(deepest >= MAX_NESTING - 2, "{deepest}");
    }

    #[test]
    fn encodes_maps_in_bytewise_key_order() {
        let mut m = BTreeMap::new();
        m.insert("bb", 1u8);
        m.insert("a", 2);
        m.insert("c", 3);
        // a(61) < c(63) < bb(62 6262): the length head sorts one-byte keys first.
        assert_eq!(
            hex::encode(to_canonical(&m).unwrap()),
            "a361610261630362626201"
        );
    }

    #[test]
    fn rejects_non_canonical_forms() {
        check_rejects("1817", "re-encoding differs"); // 23 with a one-byte head
        check_rejects("9f01ff", "re-encoding differs"); // indefinite array
        check_rejects("a2616201616101", "out of order");
        check_rejects("a2616101616102", "duplicate");
        check_rejects("0102", "trailing");
        check_rejects("f93c00", "floats");
        check_rejects("c101", "tags");
        check_rejects("5a", "malformed");
        check_rejects(&"81".repeat(100), "malformed");
    }

    #[test]
    fn size_bound_is_checked_before_decoding() {
        let err = decode_canonical_value(&[0u8; 10], 9).unwrap_err();
        assert!(matches!(err, CborError::TooLarge { len: 10, max: 9 }));
    }

    #[test]
    fn round_trips() {
        let v = (1u64, "x".to_string(), vec![true, false]);
        let bytes = to_canonical(&v).unwrap();
        let back: (u64, String, Vec<bool>) = from_canonical(&bytes, 1024).unwrap();
        assert_eq!(back, v);
    }
}
