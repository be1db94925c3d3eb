//! Feeds and what they hold: entries, Merkle summaries, the change log.

use super::*;

impl Store {
    // Feeds

    /// Creates a package feed.
    pub fn create_feed(&self, name: &str, ecosystem: Ecosystem) -> Result<FeedRecord> {
        names::check_feed_name(name)?;
        let _w = self.write.lock();
        if self.db.get_pinned_cf(self.cf(CF_FEEDS), name)?.is_some() {
            return Err(StoreError::FeedExists { feed: name.into() });
        }
        let id = self.meta_u64(META_NEXT_FEED)?.unwrap_or(1);
        let id32 = u32::try_from(id).map_err(|_| StoreError::CorruptRecord {
            what: "meta",
            detail: "feed ids exhausted".into(),
        })?;
        let rec = FeedRecord::new(id32, name, FeedKind::Package(ecosystem))?;
        let mut batch = WriteBatch::default();
        batch.put_cf(self.cf(CF_FEEDS), name, self.encode_feed(&rec)?);
        batch.put_cf(self.cf(CF_META), META_NEXT_FEED, (id + 1).to_be_bytes());
        self.db.write(batch)?;
        drop(_w);
        self.sync()?;
        Ok(rec)
    }

    /// A feed's record (the system feed included).
    pub fn feed(&self, name: &str) -> Result<FeedRecord> {
        match self.db.get_pinned_cf(self.cf(CF_FEEDS), name)? {
            Some(b) => Store::decode_feed(&b),
            None => Err(StoreError::FeedNotFound { feed: name.into() }),
        }
    }

    /// Every package feed, by name.
    pub fn list_feeds(&self) -> Result<Vec<FeedRecord>> {
        let mut out = Vec::new();
        for item in self.scan(CF_FEEDS, b"", None) {
            let (_, v) = item?;
            let f = Store::decode_feed(&v)?;
            if f.kind != FeedKind::System {
                out.push(f);
            }
        }
        Ok(out)
    }

    /// Deletes a feed and all its entries, nodes and log; its blobs go at the next GC.
    pub fn delete_feed(&self, name: &str) -> Result<()> {
        let _w = self.write.lock();
        let f = self.feed(name)?;
        if f.kind == FeedKind::System {
            return Err(StoreError::SystemFeed {
                action: "cannot be deleted",
            });
        }
        let mut batch = WriteBatch::default();
        let start = feed_prefix(f.id).to_vec();
        let end = feed_prefix(f.id + 1).to_vec();
        for cf in [CF_ENTRIES, CF_KEYHASH, CF_MERKLE, CF_CHANGELOG] {
            batch.delete_range_cf(self.cf(cf), &start, &end);
        }
        batch.delete_cf(self.cf(CF_FEEDS), name);
        self.db.write(batch)?;
        drop(_w);
        self.sync()
    }

    /// A feed's record and root.
    pub fn feed_summary(&self, name: &str) -> Result<FeedSummary> {
        let feed = self.feed(name)?;
        let root = self.node(feed.id, &[])?;
        Ok(FeedSummary { feed, root })
    }

    pub(crate) fn node(&self, feed: u32, prefix: &[u8]) -> Result<NodeSummary> {
        match self
            .db
            .get_pinned_cf(self.cf(CF_MERKLE), merkle_key(feed, prefix))?
        {
            None => Ok(NodeSummary::default()),
            Some(b) => NodeSummary::decode(&b).ok_or_else(|| StoreError::CorruptRecord {
                what: "merkle node",
                detail: format!("{} bytes", b.len()),
            }),
        }
    }

    /// The summary of the trie node at `prefix` (0 to [`MAX_DEPTH`] bytes of BLAKE3(key)).
    pub fn merkle_node(&self, feed: &str, prefix: &[u8]) -> Result<NodeSummary> {
        let f = self.feed(feed)?;
        if prefix.len() > MAX_DEPTH {
            let mut n = NodeSummary::default();
            for e in self.entries_under(feed, prefix)? {
                n.insert(&merkle::leaf(&e.1.key, &e.1.value.doc));
            }
            return Ok(n);
        }
        self.node(f.id, prefix)
    }

    /// The non-empty children of the node at `prefix` (which must be shorter than
    /// [`MAX_DEPTH`]), as `(next byte, summary)` in byte order.
    pub fn merkle_children(&self, feed: &str, prefix: &[u8]) -> Result<Vec<(u8, NodeSummary)>> {
        let f = self.feed(feed)?;
        if prefix.len() >= MAX_DEPTH {
            return Err(StoreError::MerkleTooDeep {
                depth: prefix.len(),
                max: MAX_DEPTH,
            });
        }
        let mut child_prefix = merkle_key(f.id, prefix);
        child_prefix[4] += 1;
        let mut out = Vec::new();
        for item in self.scan(CF_MERKLE, &child_prefix, None) {
            let (k, v) = item?;
            let n = NodeSummary::decode(&v).ok_or_else(|| StoreError::CorruptRecord {
                what: "merkle node",
                detail: format!("{} bytes", v.len()),
            })?;
            if n.count > 0 {
                if let Some(&b) = k.last() {
                    out.push((b, n));
                }
            }
        }
        Ok(out)
    }

    /// Entries whose BLAKE3(key) starts with `prefix`, in trie order, with their key hashes.
    pub fn entries_under(&self, feed: &str, prefix: &[u8]) -> Result<Vec<(Hash, Entry)>> {
        let f = self.feed(feed)?;
        let mut p = feed_prefix(f.id).to_vec();
        p.extend_from_slice(prefix);
        let mut out = Vec::new();
        for item in self.scan(CF_KEYHASH, &p, None) {
            let (k, v) = item?;
            let e = self
                .keyhash_entry(f.id, &k, &v)?
                .ok_or_else(|| StoreError::CorruptRecord {
                    what: "keyhash",
                    detail: format!("`{}` indexed but has no entry", String::from_utf8_lossy(&v)),
                })?;
            out.push(e);
        }
        Ok(out)
    }

    /// The entries under each of `key8s` (the first 8 bytes of BLAKE3(key), big-endian), in
    /// that order: what [`Store::entries_under`] gives for each, read with one iterator, so a
    /// long ascending list costs a seek per prefix rather than an iterator. An entry removed
    /// between reading its index record and reading it is left out: a run sending documents
    /// while another removes them sends what is there.
    pub fn entries_at_key8s(&self, feed: &str, key8s: &[u64]) -> Result<Vec<(Hash, Entry)>> {
        let f = self.feed(feed)?;
        let feed_p = feed_prefix(f.id);
        let mut ro = rocksdb::ReadOptions::default();
        ro.set_iterate_range(rocksdb::PrefixRange(feed_p.to_vec()));
        let mut it = self.db.raw_iterator_cf_opt(self.cf(CF_KEYHASH), ro);
        let mut out = Vec::new();
        for k8 in key8s {
            let p = [feed_p.as_slice(), &k8.to_be_bytes()].concat();
            it.seek(&p);
            while let (Some(k), Some(v)) = (it.key(), it.value()) {
                if !k.starts_with(&p) {
                    break;
                }
                out.extend(self.keyhash_entry(f.id, k, v)?);
                it.next();
            }
            it.status()?;
        }
        Ok(out)
    }

    /// A `keyhash` record and the entry it indexes (`None` when there is none now).
    fn keyhash_entry(&self, feed: u32, k: &[u8], v: &[u8]) -> Result<Option<(Hash, Entry)>> {
        let kh =
            k.get(4..)
                .and_then(Hash::from_slice)
                .ok_or_else(|| StoreError::CorruptRecord {
                    what: "keyhash",
                    detail: format!("{} bytes", k.len()),
                })?;
        let key = String::from_utf8(v.to_vec()).map_err(|_| StoreError::CorruptRecord {
            what: "keyhash",
            detail: "key is not utf-8".into(),
        })?;
        Ok(self
            .entry_by_id(feed, &key)?
            .map(|value| (kh, Entry { key, value })))
    }

    /// One entry of the feed whose id is `feed` ([`FeedRecord::id`]): for reading many
    /// entries of one feed without reading its record for each.
    pub fn entry_by_id(&self, feed: u32, key: &str) -> Result<Option<EntryValue>> {
        match self
            .db
            .get_pinned_cf(self.cf(CF_ENTRIES), entry_key(feed, key))?
        {
            None => Ok(None),
            Some(b) => EntryValue::decode(&b).map(Some),
        }
    }

    /// One entry.
    pub fn entry(&self, feed: &str, key: &str) -> Result<Option<EntryValue>> {
        let f = self.feed(feed)?;
        self.entry_by_id(f.id, key)
    }

    /// Every entry of a feed in key order (tombstones included).
    pub fn entries(&self, feed: &str) -> Result<Vec<Entry>> {
        let f = self.feed(feed)?;
        let mut out = Vec::new();
        for item in self.scan(CF_ENTRIES, &feed_prefix(f.id), None) {
            let (k, v) = item?;
            out.push(entry_record(&k, &v)?);
        }
        Ok(out)
    }

    /// At most `limit` entries of a feed in byte order of the key after `after` (from the
    /// first when `None`), tombstones included, and whether more follow: a page read from
    /// where it starts, however large the feed.
    pub fn entries_page(
        &self,
        feed: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Result<(Vec<Entry>, bool)> {
        let f = self.feed(feed)?;
        let prefix = feed_prefix(f.id);
        let mut ro = rocksdb::ReadOptions::default();
        ro.set_iterate_range(rocksdb::PrefixRange(prefix.to_vec()));
        let start = match after {
            Some(a) => [prefix.as_slice(), a.as_bytes(), b"\0"].concat(),
            None => prefix.to_vec(),
        };
        let iter = self.db.iterator_cf_opt(
            self.cf(CF_ENTRIES),
            ro,
            rocksdb::IteratorMode::From(&start, rocksdb::Direction::Forward),
        );
        let mut out = Vec::new();
        for item in iter {
            let (k, v) = item?;
            if out.len() == limit {
                return Ok((out, true));
            }
            out.push(entry_record(&k, &v)?);
        }
        Ok((out, false))
    }

    /// The live manifest of a package version (`None` as well when its signer is no longer
    /// trusted for the feed: such a version is not served).
    pub fn manifest(
        &self,
        feed: &str,
        name: &str,
        version: &str,
    ) -> Result<Option<(Hash, Manifest)>> {
        let key = names::package_key(name, version);
        match self.entry(feed, &key)? {
            Some(EntryValue {
                kind: EntryKind::Manifest,
                doc,
                ..
            }) => {
                let d = self
                    .document(&doc)?
                    .ok_or_else(|| StoreError::missing_document("entry", &key, &doc))?;
                // A version signed by a key no longer trusted for the feed is not served.
                if !self.is_trusted(feed, &d.signer())? {
                    return Ok(None);
                }
                Ok(Some((doc, d.payload()?)))
            }
            _ => Ok(None),
        }
    }

    /// Changes after `cursor`, at most `limit` of them.
    pub fn changes_since(&self, feed: &str, cursor: Cursor, limit: usize) -> Result<ChangesSince> {
        let f = self.feed(feed)?;
        if cursor.epoch != f.epoch {
            return Ok(ChangesSince::FullDiffNeeded {
                reason: format!(
                    "cursor epoch {:016x} is not the feed's epoch {:016x}",
                    cursor.epoch, f.epoch
                ),
            });
        }
        if cursor.seq > f.seq {
            return Ok(ChangesSince::FullDiffNeeded {
                reason: format!("cursor seq {} is ahead of the feed's {}", cursor.seq, f.seq),
            });
        }
        if cursor.seq < f.log_floor {
            return Ok(ChangesSince::FullDiffNeeded {
                reason: format!(
                    "changes up to {} have been trimmed from the log",
                    f.log_floor
                ),
            });
        }
        let mut ro = ReadOptions::default();
        ro.set_iterate_range(
            changelog_key(f.id, cursor.seq + 1).to_vec()..changelog_key(f.id + 1, 0).to_vec(),
        );
        let mut changes = Vec::new();
        let mut next = cursor;
        let mut complete = true;
        for item in self
            .db
            .iterator_cf_opt(self.cf(CF_CHANGELOG), ro, IteratorMode::Start)
        {
            let (k, v) = item?;
            if changes.len() >= limit {
                complete = false;
                break;
            }
            let seq =
                u64::from_be_bytes(k[4..12].try_into().map_err(|_| StoreError::CorruptRecord {
                    what: "changelog",
                    detail: "bad key".into(),
                })?);
            let rec: ChangeRecord =
                cbor::from_canonical(&v, 4096).map_err(|e| StoreError::CorruptRecord {
                    what: "changelog",
                    detail: e.to_string(),
                })?;
            let value = rec.value.as_deref().map(EntryValue::decode).transpose()?;
            changes.push(Change {
                seq,
                key: rec.key,
                value,
            });
            next.seq = seq;
        }
        Ok(ChangesSince::Changes {
            changes,
            next,
            complete,
        })
    }
}

/// An entry from its record in the entries column family (feed id ++ key -> value).
fn entry_record(k: &[u8], v: &[u8]) -> Result<Entry> {
    let corrupt = |detail: &str| StoreError::CorruptRecord {
        what: "entry",
        detail: detail.into(),
    };
    let rest = k
        .get(4..)
        .ok_or_else(|| corrupt("key shorter than a feed id"))?;
    let key = String::from_utf8(rest.to_vec()).map_err(|_| corrupt("key is not utf-8"))?;
    Ok(Entry {
        key,
        value: EntryValue::decode(v)?,
    })
}
