//! Signed documents: a deterministic-CBOR payload in an envelope with the signer's ed25519
//! public key and a domain-separated signature.
//!
//! Envelope (CBOR array): `[1, doc-type, signer-key (32 bytes), payload (bytes), signature (64 bytes)]`.
//! The signature covers `"cairn/v1/" ++ doc-type ++ 0x00 ++ payload`, so a signature over one
//! kind of document can never be replayed as another. A document's id is the BLAKE3 hash of the
//! whole envelope. Documents are kept and sent as the bytes that were signed; nothing is ever
//! re-encoded after signing.
//!
//! Invariant: a [`SignedDocument`] value exists only for bytes that passed every check in
//! [`SignedDocument::decode`] (envelope form, versions, signature, canonical payload).

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use ed25519_dalek::{Signer, SigningKey, VerifyingKey};
use serde::{de::DeserializeOwned, Deserialize, Serialize};

use crate::cbor::{self, CborError};
use crate::sig::VerifyKey;
use crate::Hash;

/// The envelope layout version this code reads and writes.
pub const ENVELOPE_VERSION: u64 = 1;
/// The payload schema version this code reads and writes (the `v` field of every payload).
pub const PAYLOAD_VERSION: u64 = 1;
/// Largest envelope accepted, checked before decoding.
pub const MAX_DOCUMENT_BYTES: usize = 1 << 20;

/// The kinds of signed document.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum DocType {
    /// A package version in a feed: its files (by blob hash) and metadata.
    Manifest,
    /// The deletion of a feed entry.
    Tombstone,
    /// A vulnerability record (OSV schema).
    Vulnerability,
    /// A decision about a vulnerability.
    Assessment,
    /// A kind of decision (Ignore, Caution, Blocked, custom).
    AssessmentType,
    /// Rules for applying assessments to feeds.
    Policy,
    /// A feed's signed state: root, count and change-log position.
    Checkpoint,
    /// An instance's move to a new key, signed by the old one.
    KeyRotation,
    /// A signed tree head of an instance's transparency log of checkpoints.
    TreeHead,
    /// A package version copied from one feed to another, and who did it.
    Promotion,
}

impl DocType {
    /// Every type, for tables and tests.
    pub const ALL: [DocType; 10] = [
        DocType::Manifest,
        DocType::Tombstone,
        DocType::Vulnerability,
        DocType::Assessment,
        DocType::AssessmentType,
        DocType::Policy,
        DocType::Checkpoint,
        DocType::KeyRotation,
        DocType::TreeHead,
        DocType::Promotion,
    ];

    /// The name used in envelopes and in the signature's domain separator.
    pub const fn as_str(self) -> &'static str {
        match self {
            DocType::Manifest => "manifest",
            DocType::Tombstone => "tombstone",
            DocType::Vulnerability => "vulnerability",
            DocType::Assessment => "assessment",
            DocType::AssessmentType => "assessment-type",
            DocType::Policy => "policy",
            DocType::Checkpoint => "checkpoint",
            DocType::KeyRotation => "key-rotation",
            DocType::TreeHead => "tree-head",
            DocType::Promotion => "promotion",
        }
    }

    /// Parses an envelope type name.
    pub fn from_name(name: &str) -> Option<DocType> {
        DocType::ALL.into_iter().find(|t| t.as_str() == name)
    }
}

impl fmt::Display for DocType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An ed25519 public key; its 64-hex-digit form is the fingerprint that peers pin.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PublicKey([u8; 32]);

impl PublicKey {
    /// The raw key bytes.
    pub const fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// Wraps raw bytes; `None` if they are not a valid ed25519 point.
    pub fn from_bytes(bytes: [u8; 32]) -> Option<PublicKey> {
        VerifyingKey::from_bytes(&bytes)
            .ok()
            .map(|_| PublicKey(bytes))
    }

    /// The fingerprint: 64 lowercase hex digits of the key.
    pub fn fingerprint(&self) -> String {
        hex::encode(self.0)
    }

    /// The first 12 hex digits, for logs.
    pub fn short(&self) -> String {
        hex::encode(&self.0[..6])
    }

    /// The key decoded for checking signatures; `None` if it is not a point or is one of
    /// small order (see [`crate::sig`]).
    fn verify_key(&self) -> Option<VerifyKey> {
        VerifyKey::new(self.0)
    }

    /// Whether `signature` is this key's signature of `message` (for signed statements that
    /// are not documents, such as a bundle's closing record), under [`crate::sig`]'s rule.
    pub fn verify(&self, message: &[u8], signature: &[u8; 64]) -> bool {
        self.verify_key()
            .is_some_and(|k| k.verify(message, signature))
    }
}

impl From<&SigningKey> for PublicKey {
    fn from(k: &SigningKey) -> PublicKey {
        PublicKey(k.verifying_key().to_bytes())
    }
}

impl fmt::Display for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.fingerprint())
    }
}

impl fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PublicKey({})", self.short())
    }
}

/// A string that is not a valid key fingerprint.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("`{0}` is not an ed25519 key fingerprint (expected the 64 hex digits that `cairn key show` prints)")]
pub struct ParseKeyError(pub String);

impl FromStr for PublicKey {
    type Err = ParseKeyError;
    fn from_str(s: &str) -> Result<PublicKey, ParseKeyError> {
        let mut out = [0u8; 32];
        hex::decode_to_slice(s.trim(), &mut out)
            .ok()
            .and_then(|()| PublicKey::from_bytes(out))
            .ok_or_else(|| ParseKeyError(s.chars().take(80).collect()))
    }
}

/// Why bytes are not an acceptable signed document. Each check has its own variant.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DocumentError {
    /// Larger than [`MAX_DOCUMENT_BYTES`].
    #[error("document of {len} bytes is over the limit of {max}")]
    TooLarge { len: usize, max: usize },
    /// The envelope is not the five-element array it must be.
    #[error("malformed document envelope: {0}")]
    MalformedEnvelope(String),
    /// An envelope version this code does not know.
    #[error(
        "unknown document envelope version {found} (this build reads version {ENVELOPE_VERSION})"
    )]
    UnknownEnvelopeVersion { found: u64 },
    /// A document type this code does not know.
    #[error("unknown document type `{found}`")]
    UnknownType { found: String },
    /// The signer key is not a valid ed25519 key.
    #[error("document signer key is not a valid ed25519 key")]
    InvalidKey,
    /// The signature does not verify for the envelope's key and payload.
    #[error("bad signature on {doc_type} document signed by {signer}")]
    BadSignature { doc_type: DocType, signer: String },
    /// The payload is not in deterministic CBOR.
    #[error("{doc_type} payload is not canonical cbor: {source}")]
    NonCanonicalPayload {
        doc_type: DocType,
        #[source]
        source: CborError,
    },
    /// A payload schema version this code does not know.
    #[error(
        "unknown {doc_type} payload version {found} (this build reads version {PAYLOAD_VERSION})"
    )]
    UnknownPayloadVersion { doc_type: DocType, found: u64 },
    /// The payload is canonical CBOR but not a valid document of its type.
    #[error("invalid {doc_type} payload: {reason}")]
    InvalidPayload { doc_type: DocType, reason: String },
    /// The document is of another type than the caller asked for.
    #[error("expected a {expected} document, found a {found}")]
    WrongType { expected: DocType, found: DocType },
    /// Signed by a key that is not trusted for the scope (feed or system).
    #[error("document signed by key {signer} which is not trusted for {scope}; add it with `cairn trust add {signer} --feed {scope}` if it should be")]
    UntrustedSigner { signer: String, scope: String },
}

/// A payload type that can be signed into a document.
pub trait Payload: Serialize + DeserializeOwned {
    /// The envelope type this payload travels as.
    const TYPE: DocType;
}

/// A verified signed document: the exact envelope bytes and what they say.
#[derive(Clone, PartialEq, Eq)]
pub struct SignedDocument {
    bytes: Vec<u8>,
    id: Hash,
    doc_type: DocType,
    signer: PublicKey,
    payload: Vec<u8>,
}

impl fmt::Debug for SignedDocument {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SignedDocument")
            .field("id", &self.id)
            .field("type", &self.doc_type)
            .field("signer", &self.signer)
            .field("len", &self.bytes.len())
            .finish()
    }
}

#[derive(Serialize, Deserialize)]
struct WireEnvelope(
    u64,
    String,
    #[serde(with = "serde_bytes_array")] [u8; 32],
    #[serde(with = "serde_bytes_vec")] Vec<u8>,
    #[serde(with = "serde_bytes_vec")] Vec<u8>,
);

/// An envelope whose form, type and key were checked, its signature and payload not yet.
#[derive(Debug)]
struct Envelope {
    doc_type: DocType,
    signer: PublicKey,
    payload: Vec<u8>,
    signature: [u8; 64],
}

impl Envelope {
    /// Size, envelope form and version, known type, key and signature lengths.
    fn parse(bytes: &[u8]) -> Result<Envelope, DocumentError> {
        if bytes.len() > MAX_DOCUMENT_BYTES {
            return Err(DocumentError::TooLarge {
                len: bytes.len(),
                max: MAX_DOCUMENT_BYTES,
            });
        }
        // Peek at the version before insisting on the v1 shape, so a future envelope layout
        // is reported as an unknown version rather than as garbage.
        let value = cbor::decode_canonical_value(bytes, MAX_DOCUMENT_BYTES)
            .map_err(|e| DocumentError::MalformedEnvelope(e.to_string()))?;
        let version = value
            .as_array()
            .and_then(|a| a.first())
            .and_then(|v| v.as_integer())
            .and_then(|i| u64::try_from(i).ok())
            .ok_or_else(|| {
                DocumentError::MalformedEnvelope("not an array led by a version".into())
            })?;
        if version != ENVELOPE_VERSION {
            return Err(DocumentError::UnknownEnvelopeVersion { found: version });
        }
        let WireEnvelope(_, type_name, key, payload, sig) = value
            .deserialized()
            .map_err(|e| DocumentError::MalformedEnvelope(e.to_string()))?;
        let doc_type =
            DocType::from_name(&type_name).ok_or_else(|| DocumentError::UnknownType {
                found: type_name.chars().take(64).collect(),
            })?;
        // Not decompressed here: the signature check does it (decode_many once per signer),
        // and an invalid key fails there as `InvalidKey`.
        let signer = PublicKey(key);
        let sig: [u8; 64] = sig
            .as_slice()
            .try_into()
            .map_err(|_| DocumentError::MalformedEnvelope("signature is not 64 bytes".into()))?;
        Ok(Envelope {
            doc_type,
            signer,
            payload,
            signature: sig,
        })
    }

    /// The signature, by `key` (the signer's, decompressed).
    fn check_signature(&self, key: &VerifyKey) -> Result<(), DocumentError> {
        if key.verify(
            &signing_message(self.doc_type, &self.payload),
            &self.signature,
        ) {
            Ok(())
        } else {
            Err(self.bad_signature())
        }
    }

    fn bad_signature(&self) -> DocumentError {
        DocumentError::BadSignature {
            doc_type: self.doc_type,
            signer: self.signer.fingerprint(),
        }
    }

    /// Canonical payload with the known version: the document.
    fn finish(self, bytes: &[u8]) -> Result<SignedDocument, DocumentError> {
        let doc_type = self.doc_type;
        let payload_value = cbor::decode_canonical_value(&self.payload, MAX_DOCUMENT_BYTES)
            .map_err(|source| DocumentError::NonCanonicalPayload { doc_type, source })?;
        let found = payload_value
            .as_map()
            .and_then(|m| {
                m.iter()
                    .find(|(k, _)| k.as_text() == Some("v"))
                    .and_then(|(_, v)| v.as_integer())
                    .and_then(|i| u64::try_from(i).ok())
            })
            .ok_or_else(|| DocumentError::InvalidPayload {
                doc_type,
                reason: "payload is not a map with a version field `v`".into(),
            })?;
        if found != PAYLOAD_VERSION {
            return Err(DocumentError::UnknownPayloadVersion { doc_type, found });
        }
        Ok(SignedDocument {
            id: Hash::of(bytes),
            bytes: bytes.to_vec(),
            doc_type,
            signer: self.signer,
            payload: self.payload,
        })
    }
}

fn signing_message(doc_type: DocType, payload: &[u8]) -> Vec<u8> {
    let mut msg = Vec::with_capacity(16 + payload.len());
    msg.extend_from_slice(b"cairn/v1/");
    msg.extend_from_slice(doc_type.as_str().as_bytes());
    msg.push(0);
    msg.extend_from_slice(payload);
    msg
}

impl SignedDocument {
    /// Encodes `payload` deterministically and signs it with `key`. A document whose envelope
    /// would be over [`MAX_DOCUMENT_BYTES`] is refused ([`CborError::TooLarge`]): no peer would
    /// accept it, so it is never made.
    pub fn sign<P: Payload>(payload: &P, key: &SigningKey) -> Result<SignedDocument, CborError> {
        let payload_bytes = cbor::to_canonical(payload)?;
        let signature = key.sign(&signing_message(P::TYPE, &payload_bytes));
        let signer = PublicKey::from(key);
        let env = WireEnvelope(
            ENVELOPE_VERSION,
            P::TYPE.as_str().to_owned(),
            signer.0,
            payload_bytes.clone(),
            signature.to_bytes().to_vec(),
        );
        let bytes = cbor::to_canonical(&env)?;
        if bytes.len() > MAX_DOCUMENT_BYTES {
            return Err(CborError::TooLarge {
                len: bytes.len(),
                max: MAX_DOCUMENT_BYTES,
            });
        }
        Ok(SignedDocument {
            id: Hash::of(&bytes),
            bytes,
            doc_type: P::TYPE,
            signer,
            payload: payload_bytes,
        })
    }

    /// Checks `bytes` completely: size, envelope form and version, known type, valid key,
    /// signature, canonical payload, payload version. Trust is checked separately with
    /// [`SignedDocument::check_trusted`] because it depends on the scope.
    pub fn decode(bytes: &[u8]) -> Result<SignedDocument, DocumentError> {
        let parts = Envelope::parse(bytes)?;
        let key = parts.signer.verify_key().ok_or(DocumentError::InvalidKey)?;
        parts.check_signature(&key)?;
        parts.finish(bytes)
    }

    /// [`SignedDocument::decode`] of each of `docs`, with the same checks and answers in the
    /// same order. The signatures (most of the time it takes) are checked on up to `threads`
    /// threads, each signer's key decoded once, and each thread's share of one signer's
    /// documents checked together ([`VerifyKey::verify_all`], about twice as fast as one by
    /// one); a share that fails is checked again one by one to name what is wrong.
    pub fn decode_many(
        docs: &[&[u8]],
        threads: usize,
    ) -> Vec<Result<SignedDocument, DocumentError>> {
        let parsed: Vec<Result<Envelope, DocumentError>> =
            docs.iter().map(|b| Envelope::parse(b)).collect();
        let mut keys: std::collections::HashMap<[u8; 32], Option<VerifyKey>> =
            std::collections::HashMap::new();
        for p in parsed.iter().flatten() {
            keys.entry(p.signer.0)
                .or_insert_with(|| p.signer.verify_key());
        }
        let check = |share: &[Result<Envelope, DocumentError>]| -> Vec<Result<(), DocumentError>> {
            // A parse error is reported below, in its place.
            let mut out: Vec<Result<(), DocumentError>> = share.iter().map(|_| Ok(())).collect();
            let mut by_signer: std::collections::HashMap<[u8; 32], Vec<usize>> =
                std::collections::HashMap::new();
            for (i, p) in share.iter().enumerate() {
                if let Ok(p) = p {
                    by_signer.entry(p.signer.0).or_default().push(i);
                }
            }
            for (signer, at) in by_signer {
                let Some(key) = keys.get(&signer).copied().flatten() else {
                    for i in at {
                        out[i] = Err(DocumentError::InvalidKey);
                    }
                    continue;
                };
                let envelopes: Vec<&Envelope> =
                    at.iter().filter_map(|&i| share[i].as_ref().ok()).collect();
                let messages: Vec<Vec<u8>> = envelopes
                    .iter()
                    .map(|e| signing_message(e.doc_type, &e.payload))
                    .collect();
                let items: Vec<(&[u8], &[u8; 64])> = messages
                    .iter()
                    .map(Vec::as_slice)
                    .zip(envelopes.iter().map(|e| &e.signature))
                    .collect();
                if items.len() > 1 && key.verify_all(&items) {
                    continue;
                }
                for ((&i, e), (m, sig)) in at.iter().zip(&envelopes).zip(&items) {
                    if !key.verify(m, sig) {
                        out[i] = Err(e.bad_signature());
                    }
                }
            }
            out
        };
        let threads = threads.clamp(1, 8).min(parsed.len().div_ceil(32)).max(1);
        let checked: Vec<Result<(), DocumentError>> = if threads == 1 {
            check(&parsed)
        } else {
            let chunk = parsed.len().div_ceil(threads);
            std::thread::scope(|scope| {
                let handles: Vec<_> = parsed
                    .chunks(chunk)
                    .map(|c| (c.len(), scope.spawn(|| check(c))))
                    .collect();
                handles
                    .into_iter()
                    .flat_map(|(n, h)| {
                        h.join().unwrap_or_else(|_| {
                            (0..n)
                                .map(|_| {
                                    Err(DocumentError::MalformedEnvelope(
                                        "signature check failed".into(),
                                    ))
                                })
                                .collect()
                        })
                    })
                    .collect()
            })
        };
        parsed
            .into_iter()
            .zip(checked)
            .zip(docs)
            .map(|((p, c), bytes)| {
                let p = p?;
                c?;
                p.finish(bytes)
            })
            .collect()
    }

    /// The payload of envelope `bytes` as `P`, checking the envelope's form and type but *not*
    /// its signature. Only for planning: which blobs to ask for or send along, how many
    /// deletions a batch would make. Nothing is stored or trusted on its word; the bytes are
    /// checked in full by [`SignedDocument::decode`] where they are stored. It never yields a
    /// [`SignedDocument`].
    pub fn peek_payload<P: Payload>(bytes: &[u8]) -> Result<P, DocumentError> {
        let WireEnvelope(version, type_name, _key, payload, _sig) =
            cbor::from_canonical(bytes, MAX_DOCUMENT_BYTES)
                .map_err(|e| DocumentError::MalformedEnvelope(e.to_string()))?;
        if version != ENVELOPE_VERSION {
            return Err(DocumentError::UnknownEnvelopeVersion { found: version });
        }
        let found = DocType::from_name(&type_name).ok_or_else(|| DocumentError::UnknownType {
            found: type_name.chars().take(64).collect(),
        })?;
        if found != P::TYPE {
            return Err(DocumentError::WrongType {
                expected: P::TYPE,
                found,
            });
        }
        cbor::from_canonical(&payload, MAX_DOCUMENT_BYTES).map_err(|e| {
            DocumentError::InvalidPayload {
                doc_type: found,
                reason: e.to_string(),
            }
        })
    }

    /// The signer's key bytes named in envelope `bytes` and, when the document is a `P`
    /// whose payload decodes, the payload, from one parse and checking neither the signature
    /// nor the key: for planning, as [`SignedDocument::peek_payload`].
    pub fn peek_signer_and_payload<P: Payload>(
        bytes: &[u8],
    ) -> Result<([u8; 32], Option<P>), DocumentError> {
        let WireEnvelope(version, type_name, key, payload, _sig) =
            cbor::from_canonical(bytes, MAX_DOCUMENT_BYTES)
                .map_err(|e| DocumentError::MalformedEnvelope(e.to_string()))?;
        if version != ENVELOPE_VERSION {
            return Err(DocumentError::UnknownEnvelopeVersion { found: version });
        }
        let payload = match DocType::from_name(&type_name) {
            Some(t) if t == P::TYPE => cbor::from_canonical(&payload, MAX_DOCUMENT_BYTES).ok(),
            _ => None,
        };
        Ok((key, payload))
    }

    /// The signer's key bytes named in envelope `bytes`, checking neither the signature nor
    /// the key ([`PublicKey::from_bytes`] does): for documents read back from this store
    /// (checked when stored) on their way to a peer, which checks them itself.
    pub fn peek_signer(bytes: &[u8]) -> Result<[u8; 32], DocumentError> {
        let WireEnvelope(_, _, key, _, _) = cbor::from_canonical(bytes, MAX_DOCUMENT_BYTES)
            .map_err(|e| DocumentError::MalformedEnvelope(e.to_string()))?;
        Ok(key)
    }

    /// The same payload signed by `key` instead: for an instance that moves to a new key and
    /// re-signs what it signed with the old one.
    pub fn resign(&self, key: &SigningKey) -> Result<SignedDocument, CborError> {
        let signature = key.sign(&signing_message(self.doc_type, &self.payload));
        let signer = PublicKey::from(key);
        let env = WireEnvelope(
            ENVELOPE_VERSION,
            self.doc_type.as_str().to_owned(),
            signer.0,
            self.payload.clone(),
            signature.to_bytes().to_vec(),
        );
        let bytes = cbor::to_canonical(&env)?;
        Ok(SignedDocument {
            id: Hash::of(&bytes),
            bytes,
            doc_type: self.doc_type,
            signer,
            payload: self.payload.clone(),
        })
    }

    /// The envelope bytes, exactly as signed.
    pub fn bytes(&self) -> &[u8] {
        &self.bytes
    }

    /// BLAKE3 of the envelope.
    pub fn id(&self) -> Hash {
        self.id
    }

    /// What kind of document this is.
    pub fn doc_type(&self) -> DocType {
        self.doc_type
    }

    /// Who signed it.
    pub fn signer(&self) -> PublicKey {
        self.signer
    }

    /// The canonical payload bytes.
    pub fn payload_bytes(&self) -> &[u8] {
        &self.payload
    }

    /// Decodes the payload as `P`, which must match the envelope type.
    pub fn payload<P: Payload>(&self) -> Result<P, DocumentError> {
        if P::TYPE != self.doc_type {
            return Err(DocumentError::WrongType {
                expected: P::TYPE,
                found: self.doc_type,
            });
        }
        cbor::from_canonical(&self.payload, MAX_DOCUMENT_BYTES).map_err(|e| {
            DocumentError::InvalidPayload {
                doc_type: self.doc_type,
                reason: e.to_string(),
            }
        })
    }

    /// Fails with [`DocumentError::UntrustedSigner`] unless `trusted` accepts the signer.
    pub fn check_trusted(
        &self,
        scope: &str,
        trusted: impl FnOnce(&PublicKey) -> bool,
    ) -> Result<(), DocumentError> {
        if trusted(&self.signer) {
            Ok(())
        } else {
            Err(DocumentError::UntrustedSigner {
                signer: self.signer.fingerprint(),
                scope: scope.to_owned(),
            })
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Payloads

/// Which client ecosystem a feed serves.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Ecosystem {
    /// Plain files by name and version.
    Raw,
    /// Python packages (wheels, sdists).
    Pypi,
    /// npm tarballs.
    Npm,
    /// Rust crates.
    Cargo,
}

impl Ecosystem {
    /// Every ecosystem.
    pub const ALL: [Ecosystem; 4] = [
        Ecosystem::Raw,
        Ecosystem::Pypi,
        Ecosystem::Npm,
        Ecosystem::Cargo,
    ];

    /// The lowercase name used in configs and on the command line.
    pub const fn as_str(self) -> &'static str {
        match self {
            Ecosystem::Raw => "raw",
            Ecosystem::Pypi => "pypi",
            Ecosystem::Npm => "npm",
            Ecosystem::Cargo => "cargo",
        }
    }
}

impl fmt::Display for Ecosystem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Ecosystem {
    type Err = String;
    fn from_str(s: &str) -> Result<Ecosystem, String> {
        Ecosystem::ALL
            .into_iter()
            .find(|e| e.as_str() == s)
            .ok_or_else(|| format!("unknown feed type `{s}` (expected raw, pypi, npm or cargo)"))
    }
}

/// One file of a package version.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileEntry {
    /// File name as clients see it (no path separators).
    pub name: String,
    /// The blob holding the bytes.
    pub blob: Hash,
    /// Length in bytes.
    pub size: u64,
    /// Ecosystem digests the clients check, by algorithm (`sha256`, `sha512`, `sha1`), lowercase hex.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub digests: BTreeMap<String, String>,
}

/// A package version in a feed.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    /// Payload version, [`PAYLOAD_VERSION`].
    pub v: u64,
    /// The feed it belongs to.
    pub feed: String,
    /// The feed's ecosystem.
    pub ecosystem: Ecosystem,
    /// Package name as published.
    pub name: String,
    /// Version string.
    pub version: String,
    /// The files, each by blob hash.
    pub files: Vec<FileEntry>,
    /// Ecosystem metadata taken from the package (summary, dependencies, ...).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub metadata: BTreeMap<String, ciborium::Value>,
    /// Hybrid logical clock at publication.
    pub hlc: u64,
}

impl Payload for Manifest {
    const TYPE: DocType = DocType::Manifest;
}

/// The deletion of a feed entry.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Tombstone {
    /// Payload version.
    pub v: u64,
    /// Feed (or `@system`) the entry was in.
    pub feed: String,
    /// The deleted entry's key.
    pub key: String,
    /// Hybrid logical clock at deletion.
    pub hlc: u64,
    /// Id of the document the entry held when it was deleted, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub previous: Option<Hash>,
}

impl Payload for Tombstone {
    const TYPE: DocType = DocType::Tombstone;
}

/// OSV `affected[].package`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct OsvPackage {
    /// OSV ecosystem (`PyPI`, `npm`, `crates.io`, ...).
    pub ecosystem: String,
    /// Package name.
    pub name: String,
    /// Package URL, if given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub purl: Option<String>,
}

/// OSV `affected[].ranges[].events[]`: exactly one of the fields is set.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct OsvEvent {
    /// Affected from this version on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub introduced: Option<String>,
    /// Fixed in this version.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fixed: Option<String>,
    /// Last affected version.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_affected: Option<String>,
    /// Upper limit of the range.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit: Option<String>,
}

/// OSV `affected[].ranges[]`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct OsvRange {
    /// `SEMVER`, `ECOSYSTEM` or `GIT`.
    #[serde(rename = "type")]
    pub range_type: String,
    /// Repository, for `GIT` ranges.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub repo: Option<String>,
    /// Range events in order.
    #[serde(default)]
    pub events: Vec<OsvEvent>,
}

/// OSV `affected[]`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct OsvAffected {
    /// The package.
    pub package: OsvPackage,
    /// Version ranges.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ranges: Vec<OsvRange>,
    /// Explicit versions.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub versions: Vec<String>,
}

/// OSV `severity[]`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct OsvSeverity {
    /// `CVSS_V3`, `CVSS_V4`, ...
    #[serde(rename = "type")]
    pub severity_type: String,
    /// The score vector.
    pub score: String,
}

/// OSV `references[]`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct OsvReference {
    /// `ADVISORY`, `WEB`, `FIX`, ...
    #[serde(rename = "type")]
    pub reference_type: String,
    /// Where.
    pub url: String,
}

/// A vulnerability record: the OSV schema's fields that Cairn uses and re-serves.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Vulnerability {
    /// Payload version.
    pub v: u64,
    /// OSV id (`GHSA-...`, `PYSEC-...`, `CVE-...`).
    pub id: String,
    /// RFC 3339 time of last modification.
    pub modified: String,
    /// RFC 3339 publication time.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub published: Option<String>,
    /// RFC 3339 withdrawal time.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub withdrawn: Option<String>,
    /// Other ids for the same vulnerability.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub aliases: Vec<String>,
    /// One line.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub summary: Option<String>,
    /// Longer text.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub details: Option<String>,
    /// Severity scores.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub severity: Vec<OsvSeverity>,
    /// What it affects.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub affected: Vec<OsvAffected>,
    /// Links.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub references: Vec<OsvReference>,
    /// Hybrid logical clock when this copy was imported (orders re-imports of one id).
    #[serde(default)]
    pub hlc: u64,
}

impl Payload for Vulnerability {
    const TYPE: DocType = DocType::Vulnerability;
}

/// OSV top-level fields a [`Vulnerability`] keeps; others (`schema_version`,
/// `database_specific`, `credits`, ...) are dropped on import.
const OSV_FIELDS: [&str; 10] = [
    "id",
    "modified",
    "published",
    "withdrawn",
    "aliases",
    "summary",
    "details",
    "severity",
    "affected",
    "references",
];

impl Vulnerability {
    /// Reads an OSV JSON record (<https://ossf.github.io/osv-schema/>), keeping the fields Cairn
    /// uses and re-serves.
    pub fn from_osv_json(text: &str) -> Result<Vulnerability, String> {
        let value: serde_json::Value =
            serde_json::from_str(text).map_err(|e| format!("not json: {e}"))?;
        let mut obj = match value {
            serde_json::Value::Object(o) => o,
            _ => return Err("an OSV record is a JSON object".into()),
        };
        obj.retain(|k, _| OSV_FIELDS.contains(&k.as_str()));
        // Drop fields that OSV allows inside nested objects but Cairn does not keep.
        if let Some(serde_json::Value::Array(affected)) = obj.get_mut("affected") {
            for a in affected.iter_mut() {
                if let serde_json::Value::Object(a) = a {
                    a.retain(|k, _| ["package", "ranges", "versions"].contains(&k.as_str()));
                    if let Some(serde_json::Value::Array(ranges)) = a.get_mut("ranges") {
                        for r in ranges.iter_mut() {
                            if let serde_json::Value::Object(r) = r {
                                r.retain(|k, _| ["type", "repo", "events"].contains(&k.as_str()));
                            }
                        }
                    }
                }
            }
        }
        obj.insert("v".into(), PAYLOAD_VERSION.into());
        obj.insert("hlc".into(), 0.into());
        serde_json::from_value(serde_json::Value::Object(obj))
            .map_err(|e| format!("invalid OSV record: {e}"))
    }
}

/// A decision about one vulnerability.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Assessment {
    /// Payload version.
    pub v: u64,
    /// Assessment id (unique per system set).
    pub id: String,
    /// The vulnerability's OSV id.
    pub vulnerability: String,
    /// Name of an assessment type.
    pub assessment_type: String,
    /// Why.
    #[serde(default)]
    pub comment: String,
    /// Who decided.
    pub author: String,
    /// Unix seconds when it was made.
    pub created: u64,
    /// Unix seconds after which it no longer applies.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires: Option<u64>,
    /// Hybrid logical clock at creation.
    pub hlc: u64,
}

impl Payload for Assessment {
    const TYPE: DocType = DocType::Assessment;
}

/// A kind of assessment; `blocking` types make downloads of affected versions fail.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AssessmentType {
    /// Payload version.
    pub v: u64,
    /// Name (`Ignore`, `Caution`, `Blocked`, or custom).
    pub name: String,
    /// Whether downloads of affected versions are refused.
    pub blocking: bool,
    /// What it means.
    #[serde(default)]
    pub description: String,
    /// Hybrid logical clock at creation.
    pub hlc: u64,
}

impl Payload for AssessmentType {
    const TYPE: DocType = DocType::AssessmentType;
}

/// The assessment types every instance has without a document: name, blocking, description.
/// A signed assessment type of the same name takes their place.
pub const BUILTIN_ASSESSMENT_TYPES: [(&str, bool, &str); 3] = [
    ("Ignore", false, "not relevant here; downloads go on"),
    (
        "Caution",
        false,
        "known and accepted for now; downloads go on",
    ),
    (
        "Blocked",
        true,
        "downloads of affected versions are refused",
    ),
];

/// How assessments apply to feeds.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Policy {
    /// Payload version.
    pub v: u64,
    /// Name.
    pub name: String,
    /// Feeds it applies to; empty means every feed.
    #[serde(default)]
    pub feeds: Vec<String>,
    /// Assessment type applied to vulnerabilities that have no assessment yet.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unassessed: Option<String>,
    /// Hybrid logical clock at creation.
    pub hlc: u64,
}

impl Payload for Policy {
    const TYPE: DocType = DocType::Policy;
}

/// A package version copied from feed `from` to feed `to` (of the same ecosystem): `to` got a
/// manifest of its own naming the same files, so the same blobs, as the one promoted. It
/// lives in the system set under `promotion/TO/NAME/VERSION`, so every site sees where a
/// version it serves came from, who moved it and when.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Promotion {
    /// Payload version.
    pub v: u64,
    /// The ecosystem of both feeds.
    pub ecosystem: Ecosystem,
    /// The feed the version was promoted from.
    pub from: String,
    /// The feed it was promoted to.
    pub to: String,
    /// Package name as published.
    pub name: String,
    /// Version string.
    pub version: String,
    /// The id of the manifest promoted (in `from`).
    pub source: Hash,
    /// The id of the manifest the version has in `to`.
    pub manifest: Hash,
    /// Who promoted it: an admin token's id and label, or the operator of the command line.
    pub by: String,
    /// Unix seconds when it was promoted.
    pub time: u64,
    /// Hybrid logical clock at promotion.
    pub hlc: u64,
}

impl Payload for Promotion {
    const TYPE: DocType = DocType::Promotion;
}

impl Promotion {
    /// The key it lives under in the system set.
    pub fn key(&self) -> String {
        format!("promotion/{}/{}/{}", self.to, self.name, self.version)
    }
}

/// A feed's state as signed by its authority, for auditing replicas.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Checkpoint {
    /// Payload version.
    pub v: u64,
    /// Feed name (or `@system`).
    pub feed: String,
    /// Merkle root fingerprint.
    pub root: Hash,
    /// Number of entries (tombstones included).
    pub count: u64,
    /// Change-log epoch.
    pub epoch: u64,
    /// Change-log sequence number.
    pub seq: u64,
    /// Unix seconds when signed.
    pub time: u64,
    /// Unix seconds after which it should not be relied on.
    pub expires: u64,
    /// The other writers' states this one includes: for each, the change-log cursor of the
    /// newest of its checkpoints this instance converged with in a mirror (sorted by key;
    /// absent when empty). A replica holding one writer's checkpoint takes another writer's
    /// state only if it covers the one held, so failing over to a writer that is behind
    /// cannot undo what the first one published.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub covers: Vec<Covered>,
    /// For a filtered replication: the filter the checkpoint's root, count and covers are
    /// over (the entries it selects); absent for the whole feed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub filter: Option<Filter>,
}

/// Which entries of a package feed a filtered replication moves: by package name, each
/// pattern a glob (`*` any run of characters, `?` one). Names and patterns compare as PyPI
/// compares names, in every feed type: ASCII case is ignored and each run of `-`, `_` and
/// `.` counts as one `-`. An entry is selected when `include` is empty or one of its
/// patterns matches, and none of `exclude` does.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Filter {
    /// Patterns of names to take (empty: every name).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub include: Vec<String>,
    /// Patterns of names to leave out.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub exclude: Vec<String>,
}

/// The most patterns in a filter's include or exclude list.
pub const MAX_FILTER_PATTERNS: usize = 64;
/// The longest filter pattern.
pub const MAX_FILTER_PATTERN_BYTES: usize = 128;

impl Filter {
    /// The filter in its one form: patterns in byte order, each once. Refuses lists over
    /// [`MAX_FILTER_PATTERNS`], patterns over [`MAX_FILTER_PATTERN_BYTES`], empty patterns
    /// and patterns with characters no package name has (spaces, control characters).
    pub fn canonical(mut self) -> Result<Filter, String> {
        for (what, list) in [
            ("include", &mut self.include),
            ("exclude", &mut self.exclude),
        ] {
            if list.len() > MAX_FILTER_PATTERNS {
                return Err(format!(
                    "{} {what} patterns, over the limit of {MAX_FILTER_PATTERNS}",
                    list.len()
                ));
            }
            for p in list.iter() {
                if p.is_empty()
                    || p.len() > MAX_FILTER_PATTERN_BYTES
                    || !p.bytes().all(|b| b.is_ascii_graphic())
                {
                    return Err(format!(
                        "{what} pattern {p:?} is not 1 to {MAX_FILTER_PATTERN_BYTES} printable ASCII characters"
                    ));
                }
            }
            list.sort();
            list.dedup();
        }
        Ok(self)
    }

    /// Whether the filter selects every entry.
    pub fn is_everything(&self) -> bool {
        self.include.is_empty() && self.exclude.is_empty()
    }

    /// Whether the entry under `key` (`name/version`) is selected. Keys without a version
    /// (none in a package feed) are not. For many keys, [`Filter::matcher`] folds the
    /// patterns once.
    pub fn selects(&self, key: &str) -> bool {
        self.matcher().selects(key)
    }

    /// The filter with its patterns folded, to test many keys.
    pub fn matcher(&self) -> FilterMatcher {
        let fold = |l: &[String]| l.iter().map(|p| crate::names::normalize_pypi(p)).collect();
        FilterMatcher {
            include: fold(&self.include),
            exclude: fold(&self.exclude),
        }
    }
}

/// A [`Filter`] ready to test keys.
#[derive(Clone, Debug)]
pub struct FilterMatcher {
    include: Vec<String>,
    exclude: Vec<String>,
}

impl FilterMatcher {
    /// See [`Filter::selects`].
    pub fn selects(&self, key: &str) -> bool {
        let Some((name, _)) = crate::names::split_package_key(key) else {
            return false;
        };
        let name = crate::names::normalize_pypi(name);
        let hit = |list: &[String]| list.iter().any(|p| glob(p.as_bytes(), name.as_bytes()));
        (self.include.is_empty() || hit(&self.include)) && !hit(&self.exclude)
    }
}

impl Filter {
    /// A short stable name for the filter (BLAKE3 of its canonical CBOR).
    pub fn digest(&self) -> Hash {
        Hash::of(&crate::cbor::to_canonical(self).unwrap_or_default())
    }
}

/// Glob match: `*` any run of bytes, `?` one byte, everything else itself.
fn glob(pattern: &[u8], text: &[u8]) -> bool {
    let (mut p, mut t) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while t < text.len() {
        match pattern.get(p) {
            Some(b'*') => {
                star = Some((p, t));
                p += 1;
            }
            Some(&c) if c == b'?' || c == text[t] => {
                p += 1;
                t += 1;
            }
            _ => match star {
                Some((sp, st)) => {
                    p = sp + 1;
                    t = st + 1;
                    star = Some((sp, st + 1));
                }
                None => return false,
            },
        }
    }
    pattern[p..].iter().all(|&c| c == b'*')
}

/// One writer's state another writer's checkpoint includes (see [`Checkpoint::covers`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Covered {
    /// The writer's key.
    #[serde(with = "serde_bytes_array")]
    pub key: [u8; 32],
    /// Its change-log epoch.
    pub epoch: u64,
    /// Its change-log sequence number: everything it had made by then is included.
    pub seq: u64,
}

impl Payload for Checkpoint {
    const TYPE: DocType = DocType::Checkpoint;
}

/// An instance's move from one key to another, signed by the old key: peers that trust and
/// pin the old key follow it to the new one.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeyRotation {
    /// Payload version.
    pub v: u64,
    /// The key given up.
    #[serde(with = "serde_bytes_array")]
    pub old: [u8; 32],
    /// The key taken on.
    #[serde(with = "serde_bytes_array")]
    pub new: [u8; 32],
    /// Unix seconds when it was made.
    pub time: u64,
}

impl Payload for KeyRotation {
    const TYPE: DocType = DocType::KeyRotation;
}

mod serde_bytes_vec {
    use serde::{Deserializer, Serializer};

    pub fn serialize<S: Serializer>(v: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_bytes(v)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = Vec<u8>;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a byte string")
            }
            fn visit_bytes<E: serde::de::Error>(self, v: &[u8]) -> Result<Vec<u8>, E> {
                Ok(v.to_vec())
            }
            fn visit_byte_buf<E: serde::de::Error>(self, v: Vec<u8>) -> Result<Vec<u8>, E> {
                Ok(v)
            }
        }
        d.deserialize_bytes(V)
    }
}

pub(crate) mod serde_bytes_array {
    use serde::{Deserializer, Serializer};

    pub fn serialize<S: Serializer>(v: &[u8; 32], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_bytes(v)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<[u8; 32], D::Error> {
        let v = super::serde_bytes_vec::deserialize(d)?;
        <[u8; 32]>::try_from(v.as_slice())
            .map_err(|_| serde::de::Error::invalid_length(v.len(), &"32 bytes"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(seed: u8) -> SigningKey {
        SigningKey::from_bytes(&[seed; 32])
    }

    fn tombstone() -> Tombstone {
        Tombstone {
            v: PAYLOAD_VERSION,
            feed: "demo".into(),
            key: "x/1".into(),
            hlc: 42,
            previous: None,
        }
    }

    /// Many documents checked at once answer exactly as each checked alone, whatever is
    /// wrong with some of them and however many threads check the signatures.
    #[test]
    fn decode_many_answers_as_decode_does() {
        let mut docs: Vec<Vec<u8>> = Vec::new();
        for i in 0..300u64 {
            let t = Tombstone {
                key: format!("x/{i}"),
                hlc: i,
                ..tombstone()
            };
            let d = SignedDocument::sign(&t, &key(1 + (i % 3) as u8)).unwrap();
            docs.push(match i % 7 {
                // A flipped signature bit.
                1 => reenvelope(&d, |e| e.4[5] ^= 1),
                // A payload that is not the one signed.
                2 => reenvelope(&d, |e| {
                    let last = e.3.len() - 1;
                    e.3[last] ^= 1
                }),
                // Not CBOR at all, or cut short.
                3 => vec![0xff, 0x00, 0x13],
                4 => d.bytes()[..d.bytes().len() / 2].to_vec(),
                // A signer that is not a valid key.
                5 => reenvelope(&d, |e| e.2 = [0xff; 32]),
                _ => d.bytes().to_vec(),
            });
        }
        let slices: Vec<&[u8]> = docs.iter().map(Vec::as_slice).collect();
        let alone: Vec<String> = slices
            .iter()
            .map(|b| match SignedDocument::decode(b) {
                Ok(d) => format!("ok {}", d.id()),
                Err(e) => format!("error {e}"),
            })
            .collect();
        assert!(alone.iter().any(|a| a.starts_with("ok")));
        assert!(alone.iter().any(|a| a.contains("signature")));
        for threads in [1, 2, 4] {
            let many: Vec<String> = SignedDocument::decode_many(&slices, threads)
                .into_iter()
                .map(|r| match r {
                    Ok(d) => format!("ok {}", d.id()),
                    Err(e) => format!("error {e}"),
                })
                .collect();
            assert_eq!(many, alone, "{threads} threads");
        }
    }

    /// Re-encodes an envelope with `edit` applied to its fields (the payload left as bytes).
    fn reenvelope(doc: &SignedDocument, edit: impl FnOnce(&mut WireEnvelope)) -> Vec<u8> {
        let mut env: WireEnvelope = cbor::from_canonical(doc.bytes(), MAX_DOCUMENT_BYTES).unwrap();
        edit(&mut env);
        cbor::to_canonical(&env).unwrap()
    }

    #[test]
    fn sign_then_decode_round_trips() {
        let doc = SignedDocument::sign(&tombstone(), &key(1)).unwrap();
        let back = SignedDocument::decode(doc.bytes()).unwrap();
        assert_eq!(back, doc);
        assert_eq!(back.id(), Hash::of(doc.bytes()));
        assert_eq!(back.payload::<Tombstone>().unwrap(), tombstone());
        assert!(matches!(
            back.payload::<Manifest>(),
            Err(DocumentError::WrongType { .. })
        ));
    }

    #[test]
    fn flipped_signature_bit_is_a_bad_signature() {
        let doc = SignedDocument::sign(&tombstone(), &key(1)).unwrap();
        let bytes = reenvelope(&doc, |e| e.4[10] ^= 1);
        assert!(matches!(
            SignedDocument::decode(&bytes),
            Err(DocumentError::BadSignature { .. })
        ));
    }

    #[test]
    fn flipped_payload_bit_is_a_bad_signature() {
        let doc = SignedDocument::sign(&tombstone(), &key(1)).unwrap();
        let bytes = reenvelope(&doc, |e| {
            let last = e.3.len() - 1;
            e.3[last] ^= 1
        });
        assert!(matches!(
            SignedDocument::decode(&bytes),
            Err(DocumentError::BadSignature { .. })
        ));
    }

    #[test]
    fn a_signer_key_off_the_curve_is_an_invalid_key_alone_and_in_a_batch() {
        // The key is checked where the signature is, not when the envelope is parsed: it must
        // still be `InvalidKey`, one document at a time and among good ones.
        let bad_key = (0u8..=255)
            .map(|b| {
                let mut k = [0u8; 32];
                k[0] = b;
                k[1] = 0x80;
                k
            })
            .find(|k| PublicKey::from_bytes(*k).is_none())
            .expect("some 32 bytes are not a point");
        let doc = SignedDocument::sign(&tombstone(), &key(1)).unwrap();
        let bytes = reenvelope(&doc, |e| e.2 = bad_key);
        assert!(matches!(
            SignedDocument::decode(&bytes),
            Err(DocumentError::InvalidKey)
        ));
        // 41 documents: enough for `decode_many` to use two threads when given them.
        let mut batch: Vec<&[u8]> = vec![doc.bytes(); 41];
        batch[20] = &bytes;
        for threads in [1, 2] {
            let out = SignedDocument::decode_many(&batch, threads);
            for (i, r) in out.iter().enumerate() {
                if i == 20 {
                    assert!(
                        matches!(r, Err(DocumentError::InvalidKey)),
                        "{threads} threads: {r:?}"
                    );
                } else {
                    assert!(r.is_ok(), "{threads} threads, document {i}: {r:?}");
                }
            }
        }
    }

    /// The signature rule of [`crate::sig`], through documents: a torsioned signature made with
    /// the key is valid alone and among others (whatever the threads and batches), and a
    /// small-order signer, which would sign anything, is an invalid key.
    #[test]
    fn documents_follow_the_cofactored_rule_alone_and_in_a_batch() {
        let k = key(1);
        let good: Vec<SignedDocument> = (0..60u64)
            .map(|i| {
                let t = Tombstone {
                    key: format!("x/{i}"),
                    hlc: i,
                    ..tombstone()
                };
                SignedDocument::sign(&t, &k).unwrap()
            })
            .collect();
        let torsioned = reenvelope(&good[0], |e| {
            e.4 = crate::sig::torsioned(&k, &signing_message(DocType::Tombstone, &e.3), 3).to_vec()
        });
        assert_ne!(torsioned, good[0].bytes());
        assert!(SignedDocument::decode(&torsioned).is_ok());
        // The identity as signer, with R = [0]B and s = 0: a "signature" of every message.
        let weak = reenvelope(&good[1], |e| {
            let mut id = [0u8; 32];
            id[0] = 1;
            e.2 = id;
            let mut sig = vec![0u8; 64];
            sig[0] = 1;
            e.4 = sig;
        });
        assert!(matches!(
            SignedDocument::decode(&weak),
            Err(DocumentError::InvalidKey)
        ));
        let mut batch: Vec<&[u8]> = good.iter().map(|d| d.bytes()).collect();
        batch[30] = &torsioned;
        for threads in [1, 2] {
            let out = SignedDocument::decode_many(&batch, threads);
            assert!(out.iter().all(Result::is_ok), "{threads} threads");
        }
        batch[45] = &weak;
        for threads in [1, 2] {
            let out = SignedDocument::decode_many(&batch, threads);
            for (i, r) in out.iter().enumerate() {
                if i == 45 {
                    assert!(matches!(r, Err(DocumentError::InvalidKey)), "{r:?}");
                } else {
                    assert!(r.is_ok(), "{threads} threads, document {i}: {r:?}");
                }
            }
        }
    }

    #[test]
    fn other_key_is_untrusted() {
        let doc = SignedDocument::sign(&tombstone(), &key(1)).unwrap();
        let trusted = PublicKey::from(&key(2));
        let err = doc.check_trusted("demo", |k| *k == trusted).unwrap_err();
        assert!(matches!(err, DocumentError::UntrustedSigner { .. }));
        assert!(err.to_string().contains("not trusted for demo"));
    }

    #[test]
    fn signature_does_not_transfer_between_types() {
        // Same payload bytes and signature, relabelled as a manifest: domain separation fails it.
        let doc = SignedDocument::sign(&tombstone(), &key(1)).unwrap();
        let bytes = reenvelope(&doc, |e| e.1 = "manifest".into());
        assert!(matches!(
            SignedDocument::decode(&bytes),
            Err(DocumentError::BadSignature { .. })
        ));
    }

    #[test]
    fn non_canonical_payload_is_rejected_even_when_signed() {
        // Sign a payload whose map keys are out of order: the signature is good, the encoding is not.
        let k = key(1);
        let payload = hex::decode("a2617601616100").unwrap(); // {"v":1,"a":0}, keys unsorted
        let sig = k.sign(&signing_message(DocType::Tombstone, &payload));
        let env = WireEnvelope(
            1,
            "tombstone".into(),
            PublicKey::from(&k).0,
            payload,
            sig.to_bytes().to_vec(),
        );
        let bytes = cbor::to_canonical(&env).unwrap();
        assert!(matches!(
            SignedDocument::decode(&bytes),
            Err(DocumentError::NonCanonicalPayload { .. })
        ));
    }

    #[test]
    fn unknown_versions_are_distinct_errors() {
        let doc = SignedDocument::sign(&tombstone(), &key(1)).unwrap();
        let bytes = reenvelope(&doc, |e| e.0 = 2);
        assert!(matches!(
            SignedDocument::decode(&bytes),
            Err(DocumentError::UnknownEnvelopeVersion { found: 2 })
        ));
        let mut t = tombstone();
        t.v = 9;
        let doc = SignedDocument::sign(&t, &key(1)).unwrap();
        assert!(matches!(
            SignedDocument::decode(doc.bytes()),
            Err(DocumentError::UnknownPayloadVersion { found: 9, .. })
        ));
        let bytes = reenvelope(&doc, |e| e.1 = "mystery".into());
        assert!(matches!(
            SignedDocument::decode(&bytes),
            Err(DocumentError::UnknownType { .. })
        ));
    }

    #[test]
    fn garbage_and_oversized_input_are_errors() {
        for bytes in [&b""[..], b"\xff", b"\x85\x01", &[0x40; 3]] {
            assert!(SignedDocument::decode(bytes).is_err());
        }
        let big = vec![0u8; MAX_DOCUMENT_BYTES + 1];
        assert!(matches!(
            SignedDocument::decode(&big),
            Err(DocumentError::TooLarge { .. })
        ));
    }

    #[test]
    fn osv_records_import_and_sign() {
        let osv = r#"{
            "schema_version": "1.6.0",
            "id": "GHSA-xxxx-yyyy-zzzz",
            "modified": "2024-01-02T03:04:05Z",
            "aliases": ["CVE-2024-0001"],
            "summary": "bad thing",
            "severity": [{"type": "CVSS_V3", "score": "CVSS:3.1/AV:N/AC:L/PR:N/UI:N/S:U/C:H/I:H/A:H"}],
            "affected": [{
                "package": {"ecosystem": "PyPI", "name": "demo-pkg"},
                "ranges": [{"type": "ECOSYSTEM", "events": [{"introduced": "0"}, {"fixed": "1.2.0"}]}],
                "versions": ["1.0.0", "1.1.0"],
                "database_specific": {"score": 9.8}
            }],
            "database_specific": {"cwe_ids": ["CWE-79"], "weight": 0.5}
        }"#;
        let v = Vulnerability::from_osv_json(osv).unwrap();
        assert_eq!(v.id, "GHSA-xxxx-yyyy-zzzz");
        assert_eq!(
            v.affected[0].ranges[0].events[1].fixed.as_deref(),
            Some("1.2.0")
        );
        let doc = SignedDocument::sign(&v, &key(4)).unwrap();
        let back: Vulnerability = SignedDocument::decode(doc.bytes())
            .unwrap()
            .payload()
            .unwrap();
        assert_eq!(back, v);
        assert!(Vulnerability::from_osv_json("[1]").is_err());
        assert!(Vulnerability::from_osv_json(r#"{"id": "X"}"#).is_err());
    }

    proptest::proptest! {
        #[test]
        fn decode_never_panics_on_garbage(bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..512)) {
            let _ = SignedDocument::decode(&bytes);
        }

        #[test]
        fn any_single_byte_change_is_rejected(pos in 0usize..10_000, xor in 1u8..=255) {
            let doc = SignedDocument::sign(&tombstone(), &key(1)).unwrap();
            let mut bytes = doc.bytes().to_vec();
            let i = pos % bytes.len();
            bytes[i] ^= xor;
            proptest::prop_assert!(SignedDocument::decode(&bytes).is_err());
        }
    }

    #[test]
    fn public_key_parses_its_fingerprint() {
        let pk = PublicKey::from(&key(3));
        assert_eq!(pk.fingerprint().parse::<PublicKey>().unwrap(), pk);
        assert!("zz".parse::<PublicKey>().is_err());
    }
}
