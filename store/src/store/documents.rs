//! Stored documents, and the cache of those whose signatures checked.

use super::*;

/// Documents decoded and signature-checked recently, so that serving a hot manifest does not
/// check its ed25519 signature on every request. A document's id is the BLAKE3 of its bytes,
/// so a hit is taken only when the bytes read from the database now hash to the id: a change
/// of the stored bytes is a miss and is decoded and checked again. Two generations of at most
/// [`CheckedDocs::GENERATION_BYTES`] each bound the memory; `cairn verify` never uses it.
#[derive(Default)]
pub(crate) struct CheckedDocs {
    current: HashMap<Hash, SignedDocument>,
    current_bytes: usize,
    previous: HashMap<Hash, SignedDocument>,
}

impl CheckedDocs {
    pub(crate) const GENERATION_BYTES: usize = 16 << 20;

    pub(crate) fn get(&mut self, id: &Hash) -> Option<SignedDocument> {
        if let Some(d) = self.current.get(id) {
            return Some(d.clone());
        }
        let d = self.previous.remove(id)?;
        self.insert(d.clone());
        Some(d)
    }

    pub(crate) fn insert(&mut self, doc: SignedDocument) {
        let size = doc.bytes().len() * 2 + 128;
        if self.current_bytes + size > Self::GENERATION_BYTES {
            self.previous = std::mem::take(&mut self.current);
            self.current_bytes = 0;
        }
        self.current_bytes += size;
        self.current.insert(doc.id(), doc);
    }
}

impl Store {
    // Documents

    /// A stored document's envelope bytes by id, as stored (not checked again: for handing on
    /// to a peer, which checks them itself).
    pub fn document_bytes(&self, id: &Hash) -> Result<Option<Vec<u8>>> {
        Ok(self
            .db
            .get_pinned_cf(self.cf(CF_DOCS), id.as_bytes())?
            .map(|b| b.to_vec()))
    }

    /// A stored document of `feed` to serve: decoded, its signature checked again, and `None`
    /// when it is missing or its signer is no longer trusted for the feed.
    pub fn served_document(&self, feed: &str, id: &Hash) -> Result<Option<SignedDocument>> {
        match self.document(id)? {
            Some(d) if self.is_trusted(feed, &d.signer())? => Ok(Some(d)),
            _ => Ok(None),
        }
    }

    /// A stored document, decoded and its signature checked (once for the same bytes: see
    /// [`CheckedDocs`]). Bytes that do not hash to `id` are a corrupt record.
    pub fn document(&self, id: &Hash) -> Result<Option<SignedDocument>> {
        let Some(b) = self.db.get_pinned_cf(self.cf(CF_DOCS), id.as_bytes())? else {
            return Ok(None);
        };
        if Hash::of(&b) != *id {
            return Err(StoreError::CorruptRecord {
                what: "document",
                detail: format!("the bytes stored for document {id} do not hash to its id"),
            });
        }
        if let Some(d) = self.checked_docs.lock().get(id) {
            return Ok(Some(d));
        }
        let d = SignedDocument::decode(&b)?;
        self.checked_docs.lock().insert(d.clone());
        Ok(Some(d))
    }
}
