//! Which keys may sign for which feeds.

use super::*;

impl Store {
    // Trust

    /// Trusts `key` to sign for `scope` (a feed name, [`SYSTEM_FEED`], or [`TRUST_ALL`]).
    pub fn trust_add(&self, scope: &str, key: &PublicKey) -> Result<()> {
        if scope != TRUST_ALL && scope != SYSTEM_FEED {
            names::check_feed_name(scope)?;
        }
        self.db
            .put_cf(self.cf(CF_META), trust_key(scope, key), b"")?;
        self.db.flush_wal(true)?;
        self.bump_trust_generation();
        Ok(())
    }

    /// Removes trust in `key` for `scope`; false if it was not trusted there. Documents that
    /// only this trust covered stop being served and offered at once.
    pub fn trust_remove(&self, scope: &str, key: &PublicKey) -> Result<bool> {
        let had = self.remove_meta(&trust_key(scope, key))?;
        self.bump_trust_generation();
        Ok(had)
    }

    /// A number that grows with every write to the store (within this process): what a cache
    /// of anything read from it is keyed by.
    pub fn write_sequence(&self) -> u64 {
        self.db.latest_sequence_number()
    }

    /// Wakes when a feed's entries or a checkpoint held change (its value counts the
    /// changes within this process): a replication responder tells its downstreams.
    pub fn watch_changes(&self) -> tokio::sync::watch::Receiver<u64> {
        self.changes.subscribe()
    }

    pub(crate) fn bump_changes(&self) {
        self.changes.send_modify(|n| *n += 1);
    }

    /// A number that changes whenever trust does (within this process).
    pub fn trust_generation(&self) -> u64 {
        self.trust_generation
            .load(std::sync::atomic::Ordering::Acquire)
    }

    pub(crate) fn bump_trust_generation(&self) {
        self.trust_generation
            .fetch_add(1, std::sync::atomic::Ordering::AcqRel);
    }

    /// Deletes one `meta` record durably; false if it was not there.
    pub(crate) fn remove_meta(&self, key: &[u8]) -> Result<bool> {
        let had = self.db.get_pinned_cf(self.cf(CF_META), key)?.is_some();
        self.db.delete_cf(self.cf(CF_META), key)?;
        self.db.flush_wal(true)?;
        Ok(had)
    }

    /// Every `(scope, key)` trusted.
    pub fn trust_list(&self) -> Result<Vec<(String, PublicKey)>> {
        let mut out = Vec::new();
        for item in self.scan(CF_META, META_TRUST, None) {
            let (k, _) = item?;
            let rest = &k[META_TRUST.len()..];
            let bad = || StoreError::CorruptRecord {
                what: "trust",
                detail: format!("{} bytes", rest.len()),
            };
            let split = rest.len().checked_sub(33).ok_or_else(bad)?;
            let scope = std::str::from_utf8(&rest[..split]).map_err(|_| bad())?;
            let key: [u8; 32] = rest[split + 1..].try_into().map_err(|_| bad())?;
            out.push((
                scope.to_owned(),
                PublicKey::from_bytes(key).ok_or_else(bad)?,
            ));
        }
        Ok(out)
    }

    /// Whether `key` may sign documents for `scope`.
    pub fn is_trusted(&self, scope: &str, key: &PublicKey) -> Result<bool> {
        Ok(self
            .db
            .get_pinned_cf(self.cf(CF_META), trust_key(scope, key))?
            .is_some()
            || self
                .db
                .get_pinned_cf(self.cf(CF_META), trust_key(TRUST_ALL, key))?
                .is_some())
    }
}
