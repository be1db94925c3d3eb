//! One write batch under the write lock, with overlays so that changes in it see each other.

use super::*;

/// One write batch being built under the write lock, with overlays so that several changes in
/// the same batch see each other.
pub(crate) struct Txn<'s> {
    store: &'s Store,
    batch: WriteBatch,
    pub(crate) hlc: u64,
    feeds: HashMap<String, FeedRecord>,
    nodes: HashMap<Vec<u8>, NodeSummary>,
    entries: HashMap<Vec<u8>, Option<EntryValue>>,
    docs: HashMap<Hash, SignedDocument>,
    pub(crate) protect: Vec<Hash>,
    /// The next feed id, once this batch has created a feed.
    next_feed: Option<u64>,
}

impl<'s> Txn<'s> {
    pub(crate) fn new(store: &'s Store, hlc: u64) -> Txn<'s> {
        Txn {
            store,
            batch: WriteBatch::default(),
            hlc,
            feeds: HashMap::new(),
            nodes: HashMap::new(),
            entries: HashMap::new(),
            docs: HashMap::new(),
            protect: Vec::new(),
            next_feed: None,
        }
    }

    pub(crate) fn tick(&mut self) -> u64 {
        self.hlc = hlc::tick(self.hlc, now_ms());
        self.hlc
    }

    pub(crate) fn feed(&mut self, name: &str) -> Result<&mut FeedRecord> {
        if !self.feeds.contains_key(name) {
            let f = self.store.feed(name)?;
            self.feeds.insert(name.to_owned(), f);
        }
        self.feeds
            .get_mut(name)
            .ok_or_else(|| StoreError::FeedNotFound { feed: name.into() })
    }

    /// Creates a package feed in this batch (it exists for readers once the batch commits).
    pub(crate) fn create_feed(&mut self, name: &str, ecosystem: Ecosystem) -> Result<()> {
        names::check_feed_name(name)?;
        if self.feeds.contains_key(name)
            || self
                .store
                .db
                .get_pinned_cf(self.store.cf(CF_FEEDS), name)?
                .is_some()
        {
            return Err(StoreError::FeedExists { feed: name.into() });
        }
        let id = match self.next_feed {
            Some(id) => id,
            None => self.store.meta_u64(META_NEXT_FEED)?.unwrap_or(1),
        };
        self.next_feed = Some(id + 1);
        let id32 = u32::try_from(id).map_err(|_| StoreError::CorruptRecord {
            what: "meta",
            detail: "feed ids exhausted".into(),
        })?;
        let rec = FeedRecord::new(id32, name, FeedKind::Package(ecosystem))?;
        self.meta_put(META_NEXT_FEED.to_vec(), (id + 1).to_be_bytes().to_vec());
        self.feeds.insert(name.to_owned(), rec);
        Ok(())
    }

    /// The root summary of a feed as this batch leaves it.
    pub(crate) fn root(&self, feed: u32) -> Result<NodeSummary> {
        match self.nodes.get(&merkle_key(feed, &[])) {
            Some(n) => Ok(*n),
            None => self.store.node(feed, &[]),
        }
    }

    pub(crate) fn entry(&self, feed: u32, key: &str) -> Result<Option<EntryValue>> {
        match self.entries.get(&entry_key(feed, key)) {
            Some(v) => Ok(*v),
            None => self.store.entry_by_id(feed, key),
        }
    }

    pub(crate) fn doc(&self, id: &Hash) -> Result<Option<SignedDocument>> {
        match self.docs.get(id) {
            Some(d) => Ok(Some(d.clone())),
            None => self.store.document(id),
        }
    }

    pub(crate) fn put_doc(&mut self, doc: &SignedDocument) {
        self.batch
            .put_cf(self.store.cf(CF_DOCS), doc.id().as_bytes(), doc.bytes());
        self.protect.push(doc.id());
        self.docs.insert(doc.id(), doc.clone());
    }

    /// Sets (or with `None` removes) an entry: Merkle nodes, key-hash index, change log and
    /// the feed's sequence number move with it.
    pub(crate) fn set_entry(
        &mut self,
        feed: &str,
        key: &str,
        new: Option<EntryValue>,
    ) -> Result<()> {
        let retain = self.store.options.change_log_retain;
        let (feed_id, seq, floor) = {
            let f = self.feed(feed)?;
            (f.id, f.seq, f.log_floor)
        };
        let old = self.entry(feed_id, key)?;
        if old == new {
            return Ok(());
        }
        let kh = merkle::key_hash(key);
        for depth in 0..=MAX_DEPTH {
            let nk = merkle_key(feed_id, &kh.as_bytes()[..depth]);
            let mut node = match self.nodes.get(&nk) {
                Some(n) => *n,
                None => self.store.node(feed_id, &kh.as_bytes()[..depth])?,
            };
            if let Some(o) = &old {
                node.remove(&merkle::leaf(key, &o.doc));
            }
            if let Some(n) = &new {
                node.insert(&merkle::leaf(key, &n.doc));
            }
            self.nodes.insert(nk, node);
        }
        let ek = entry_key(feed_id, key);
        let cf_entries = self.store.cf(CF_ENTRIES);
        let cf_keyhash = self.store.cf(CF_KEYHASH);
        match &new {
            Some(v) => self.batch.put_cf(cf_entries, &ek, v.encode()),
            None => self.batch.delete_cf(cf_entries, &ek),
        }
        match (&old, &new) {
            (None, Some(_)) => self
                .batch
                .put_cf(cf_keyhash, keyhash_key(feed_id, &kh), key),
            (Some(_), None) => self.batch.delete_cf(cf_keyhash, keyhash_key(feed_id, &kh)),
            _ => {}
        }
        self.entries.insert(ek, new);
        let seq = seq + 1;
        let rec = ChangeRecord {
            key: key.to_owned(),
            value: new.map(|v| v.encode().to_vec()),
        };
        let rec = cbor::to_canonical(&rec).map_err(|e| StoreError::CorruptRecord {
            what: "changelog",
            detail: e.to_string(),
        })?;
        let cf_log = self.store.cf(CF_CHANGELOG);
        self.batch.put_cf(cf_log, changelog_key(feed_id, seq), rec);
        let mut new_floor = floor;
        // Trim in steps so most writes add one record and delete nothing.
        if seq.saturating_sub(floor) > retain + retain / 8 + 1 {
            new_floor = seq - retain;
            self.batch.delete_range_cf(
                cf_log,
                changelog_key(feed_id, floor + 1),
                changelog_key(feed_id, new_floor + 1),
            );
        }
        let f = self.feed(feed)?;
        f.seq = seq;
        f.log_floor = new_floor;
        Ok(())
    }

    pub(crate) fn publish(
        &mut self,
        feed: &str,
        ecosystem: Ecosystem,
        p: NewPackage,
    ) -> Result<Published> {
        let feed_id = self.feed(feed)?.id;
        let key = names::package_key(&p.name, &p.version);
        let new_files: Vec<FileEntry> = p
            .files
            .into_iter()
            .map(|f| FileEntry {
                name: f.name,
                blob: f.blob,
                size: f.size,
                digests: f.digests,
            })
            .collect();
        let (files, metadata, outcome) = match self.entry(feed_id, &key)? {
            Some(EntryValue {
                kind: EntryKind::Manifest,
                doc,
                ..
            }) => {
                let existing: Manifest = self
                    .doc(&doc)?
                    .ok_or_else(|| StoreError::missing_document("entry", &key, &doc))?
                    .payload()?;
                let mut files = existing.files.clone();
                let mut added = false;
                for nf in new_files {
                    match files.iter().find(|f| f.name == nf.name) {
                        Some(f) if f.blob == nf.blob => {}
                        Some(_) => {
                            return Err(StoreError::VersionExists {
                                feed: feed.into(),
                                name: p.name,
                                version: p.version,
                                file: nf.name,
                            })
                        }
                        // One file per version in npm and cargo.
                        None if matches!(ecosystem, Ecosystem::Npm | Ecosystem::Cargo) => {
                            return Err(StoreError::VersionExists {
                                feed: feed.into(),
                                name: p.name,
                                version: p.version,
                                file: nf.name,
                            })
                        }
                        None => {
                            files.push(nf);
                            added = true;
                        }
                    }
                }
                if !added {
                    return Ok(Published {
                        key,
                        doc,
                        outcome: PublishOutcome::Unchanged,
                    });
                }
                let mut metadata = existing.metadata;
                for (k, v) in p.metadata {
                    metadata.entry(k).or_insert(v);
                }
                (files, metadata, PublishOutcome::FilesAdded)
            }
            _ => (new_files, p.metadata, PublishOutcome::Created),
        };
        let hlc = self.tick();
        self.protect.extend(files.iter().map(|f| f.blob));
        let manifest = Manifest {
            v: PAYLOAD_VERSION,
            feed: feed.into(),
            ecosystem,
            name: p.name,
            version: p.version,
            files,
            metadata,
            hlc,
        };
        let doc = SignedDocument::sign(&manifest, self.store.identity.signing_key()).map_err(
            StoreError::signing(
                format!("manifest of {} {}", manifest.name, manifest.version),
                "publish fewer files, shorter file names or less metadata per version",
            ),
        )?;
        let id = doc.id();
        self.put_doc(&doc);
        self.set_entry(
            feed,
            &key,
            Some(EntryValue {
                kind: EntryKind::Manifest,
                doc: id,
                hlc,
            }),
        )?;
        Ok(Published {
            key,
            doc: id,
            outcome,
        })
    }

    /// Writes the batch; the caller syncs after releasing the lock.
    /// A `meta` record written with the batch.
    pub(crate) fn meta_put(&mut self, key: Vec<u8>, value: Vec<u8>) {
        self.batch.put_cf(self.store.cf(CF_META), key, value);
    }

    /// A `meta` record deleted with the batch.
    pub(crate) fn meta_delete(&mut self, key: Vec<u8>) {
        self.batch.delete_cf(self.store.cf(CF_META), key);
    }

    pub(crate) fn commit(mut self, state: &mut WriteState) -> Result<()> {
        let store = self.store;
        for (k, n) in &self.nodes {
            self.batch.put_cf(store.cf(CF_MERKLE), k, n.encode());
        }
        for f in self.feeds.values() {
            self.batch
                .put_cf(store.cf(CF_FEEDS), &f.name, store.encode_feed(f)?);
        }
        self.batch
            .put_cf(store.cf(CF_META), META_HLC, self.hlc.to_be_bytes());
        let mut wo = WriteOptions::default();
        wo.set_sync(false);
        store.db.write_opt(self.batch, &wo)?;
        state.hlc = self.hlc;
        if !self.feeds.is_empty() {
            store.bump_changes();
        }
        if let Some(p) = state.gc_protect.as_mut() {
            p.extend(self.protect);
        }
        Ok(())
    }
}
