//! Garbage collection: tombstones past the horizon, unreferenced blobs and documents, leftovers of interrupted transfers.

use super::*;
use std::time::Instant;

/// Removals gc makes per hold of the write lock: publishes and replication wait at most this
/// many record deletions, one fsync and their file removals.
const GC_BATCH: usize = 32;

impl GcReport {
    fn note_pause(&mut self, held: Instant) {
        let us = u64::try_from(held.elapsed().as_micros()).unwrap_or(u64::MAX);
        self.longest_pause_us = self.longest_pause_us.max(us);
    }
}

impl Store {
    // Garbage collection

    /// Removes blobs that no live manifest references, documents no entry references, and blob
    /// files left without an index record by a crash. Safe to run while publishing: blobs
    /// pinned by an unfinished publish and everything committed after the mark started are kept.
    pub fn gc(&self) -> Result<GcReport> {
        self.gc_with(DEFAULT_TOMBSTONE_HORIZON_MS)
    }

    /// Garbage collection with an explicit tombstone horizon: a tombstone this instance signed
    /// is removed once it is older than the horizon, or once every known peer has completed a replication since it
    /// was written (a peer that never did holds every tombstone until the horizon). Removal is
    /// recorded in the change log, so peers that follow it drop the tombstone too; a peer older
    /// than the log gets the full reconciliation, which is authoritative.
    pub fn gc_with(&self, tombstone_horizon_ms: u64) -> Result<GcReport> {
        let mut report = self.gc_blobs_and_docs()?;
        let mut pause = report.longest_pause_us;
        report.partial_removed =
            self.collect_partial(std::time::Duration::from_secs(PARTIAL_MAX_AGE_SECS))?;
        report.tombstones_removed = self.collect_tombstones(tombstone_horizon_ms)?;
        if report.tombstones_removed > 0 {
            // The tombstones' documents are unreferenced now.
            let again = self.gc_blobs_and_docs()?;
            report.docs_removed += again.docs_removed;
            pause = pause.max(again.longest_pause_us);
        }
        report.longest_pause_us = pause;
        report.blob_file_bytes_freed = self.maybe_reclaim_blob_files()?;
        Ok(report)
    }

    /// Once the values gc removed from blob files since the last reclaim add up to an eighth
    /// of the blob files' bytes, runs [`Store::reclaim_blob_files`]; what that did not give
    /// back stays counted. Below that, the compaction would rewrite far more than it frees
    /// (at 1,000,000 entries it takes about 2.5 minutes), so the garbage waits.
    fn maybe_reclaim_blob_files(&self) -> Result<u64> {
        let garbage = self.meta_u64(META_BLOB_GARBAGE)?.unwrap_or(0);
        let total: u64 = [CF_DOCS, CF_BLOBS]
            .iter()
            .map(|name| self.blob_file_bytes(name))
            .sum();
        if garbage == 0 || garbage < total / 8 {
            return Ok(0);
        }
        let freed = self.reclaim_blob_files()?;
        // Under the write lock, as the sweep's additions are: another gc may have counted more
        // meanwhile.
        let _w = self.write.lock();
        let now = self.meta_u64(META_BLOB_GARBAGE)?.unwrap_or(0);
        self.db.put_cf(
            self.cf(CF_META),
            META_BLOB_GARBAGE,
            now.saturating_sub(freed).to_be_bytes(),
        )?;
        Ok(freed)
    }

    /// Compacts the column families whose values live in blob files with RocksDB's blob GC
    /// on, so the oldest quarter of the blob files give up the space of removed values: their
    /// live values move to new files and the old files go. The GC is off otherwise (see
    /// `open`), because it rewrites live values in every compaction. Returns the bytes of
    /// blob files this gave back. A crash meanwhile leaves RocksDB's files as they were
    /// before or after the compaction, and `open` sets the GC off again.
    fn reclaim_blob_files(&self) -> Result<u64> {
        let mut freed = 0;
        for name in [CF_DOCS, CF_BLOBS] {
            let cf = self.cf(name);
            let before = self.blob_file_bytes(name);
            self.db
                .set_options_cf(cf, &[("enable_blob_garbage_collection", "true")])?;
            let mut opts = rocksdb::CompactOptions::default();
            opts.set_bottommost_level_compaction(rocksdb::BottommostLevelCompaction::Force);
            self.db
                .compact_range_cf_opt(cf, None::<&[u8]>, None::<&[u8]>, &opts);
            self.db
                .set_options_cf(cf, &[("enable_blob_garbage_collection", "false")])?;
            freed += before.saturating_sub(self.blob_file_bytes(name));
        }
        Ok(freed)
    }

    /// Bytes of RocksDB's blob files of column family `name` (0 if RocksDB cannot say).
    pub(crate) fn blob_file_bytes(&self, name: &str) -> u64 {
        self.db
            .property_int_value_cf(self.cf(name), "rocksdb.total-blob-file-size")
            .ok()
            .flatten()
            .unwrap_or(0)
    }

    /// Removes interrupted transfers from `partial/`: a blob's `.data`, `.obao` and `.have`
    /// files go together, when the newest of them is older than `max_age` (a run resumes
    /// within minutes, not days) or the blob is stored now. Returns how many blobs went.
    pub fn collect_partial(&self, max_age: std::time::Duration) -> Result<u64> {
        let dir = self.dir.join("partial");
        let rd = match fs::read_dir(&dir) {
            Ok(rd) => rd,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(0),
            Err(e) => return Err(StoreError::io("listing", &dir)(e)),
        };
        let mut newest: HashMap<String, (std::time::SystemTime, Vec<PathBuf>)> = HashMap::new();
        for entry in rd {
            let entry = entry.map_err(StoreError::io("listing", &dir))?;
            let path = entry.path();
            let name = entry.file_name().to_string_lossy().into_owned();
            let stem = name.split('.').next().unwrap_or_default().to_owned();
            let modified = entry
                .metadata()
                .and_then(|m| m.modified())
                .unwrap_or(std::time::UNIX_EPOCH);
            let slot = newest
                .entry(stem)
                .or_insert((std::time::UNIX_EPOCH, Vec::new()));
            slot.0 = slot.0.max(modified);
            slot.1.push(path);
        }
        let now = std::time::SystemTime::now();
        let mut removed = 0;
        for (stem, (modified, paths)) in newest {
            let stale = now.duration_since(modified).unwrap_or_default() > max_age;
            let stored = match stem.parse::<Hash>().ok() {
                Some(h) => self.has_blob(&h)?,
                None => true,
            };
            if stale || stored {
                for p in &paths {
                    fs::remove_file(p).map_err(StoreError::io("removing", p))?;
                }
                removed += 1;
            }
        }
        Ok(removed)
    }

    pub(crate) fn collect_tombstones(&self, horizon_ms: u64) -> Result<u64> {
        let now = now_ms();
        let mut cutoff = now.saturating_sub(horizon_ms);
        let peers = self.peer_list()?;
        if !peers.is_empty() {
            let log = self.replication_log(usize::MAX)?;
            let synced_by_all = peers
                .iter()
                .map(|p| {
                    log.iter()
                        .filter(|r| r.peer == p.name && r.outcome == "ok")
                        .map(|r| r.started_ms)
                        .max()
                        .unwrap_or(0)
                })
                .min()
                .unwrap_or(0);
            cutoff = cutoff.max(synced_by_all);
        }
        let mut removed = 0;
        let mut feeds = self.list_feeds()?;
        feeds.push(self.feed(SYSTEM_FEED)?);
        for f in feeds {
            // Only this instance's own deletions: a replica drops an upstream's tombstone when
            // the upstream's change log or reconciliation says so, never on its own.
            let me = self.identity.public_key();
            let mut old = Vec::new();
            for e in self.entries(&f.name)? {
                if e.value.kind != EntryKind::Tombstone || hlc::unix_ms(e.value.hlc) >= cutoff {
                    continue;
                }
                if self
                    .document(&e.value.doc)?
                    .is_some_and(|d| d.signer() == me)
                {
                    old.push((e.key, e.value));
                }
            }
            if !old.is_empty() {
                removed += self.collect_entries(&f.name, &old)?;
            }
        }
        Ok(removed)
    }

    pub(crate) fn gc_blobs_and_docs(&self) -> Result<GcReport> {
        struct Reset<'a>(&'a Mutex<WriteState>);
        impl Drop for Reset<'_> {
            fn drop(&mut self) {
                self.0.lock().gc_protect = None;
            }
        }
        let mut report = GcReport::default();
        self.write.lock().gc_protect = Some(HashSet::new());
        let _reset = Reset(&self.write);
        let snapshot = self.db.snapshot();

        // Mark.
        let mut live_blobs = HashSet::new();
        let mut live_docs: HashSet<Hash> = self.checkpoint_doc_ids()?.into_iter().collect();
        for item in self.scan(CF_ENTRIES, b"", Some(&snapshot)) {
            let (_, v) = item?;
            let value = EntryValue::decode(&v)?;
            live_docs.insert(value.doc);
            if value.kind == EntryKind::Manifest {
                let bytes = snapshot
                    .get_cf(self.cf(CF_DOCS), value.doc.as_bytes())?
                    .ok_or_else(|| StoreError::CorruptRecord {
                        what: "entry",
                        detail: format!("names missing document {}", value.doc),
                    })?;
                let m: Manifest = SignedDocument::decode(&bytes)?.payload()?;
                live_blobs.extend(m.files.iter().map(|f| f.blob));
            }
        }
        report.blobs_live = live_blobs.len() as u64;

        // Sweep blobs and documents, a few at a time under the write lock.
        for (cf, live) in [(CF_BLOBS, &live_blobs), (CF_DOCS, &live_docs)] {
            let mut candidates = Vec::new();
            for item in self.scan(cf, b"", Some(&snapshot)) {
                let (k, v) = item?;
                if let Some(h) = Hash::from_slice(&k) {
                    if !live.contains(&h) {
                        candidates.push((h, v.len() as u64));
                    }
                }
            }
            for chunk in candidates.chunks(GC_BATCH) {
                let w = self.write.lock();
                let held = Instant::now();
                let pins = self.pins.lock();
                let protect = w.gc_protect.as_ref();
                let mut batch = WriteBatch::default();
                let mut removed_files = Vec::new();
                let mut garbage = 0;
                for (h, len) in chunk {
                    if pins.contains_key(h) || protect.is_some_and(|p| p.contains(h)) {
                        continue;
                    }
                    if cf == CF_BLOBS {
                        match self.blob_record(h)? {
                            None => continue,
                            Some(r) => {
                                report.blobs_removed += 1;
                                report.bytes_freed += r.size();
                                if matches!(r, BlobRecord::Backend(_)) {
                                    removed_files.push(*h);
                                }
                            }
                        }
                    } else {
                        report.docs_removed += 1;
                    }
                    batch.delete_cf(self.cf(cf), h.as_bytes());
                    if *len >= super::open::BLOB_FILE_MIN_VALUE {
                        garbage += len;
                    }
                }
                if garbage > 0 {
                    let before = self.meta_u64(META_BLOB_GARBAGE)?.unwrap_or(0);
                    batch.put_cf(
                        self.cf(CF_META),
                        META_BLOB_GARBAGE,
                        before.saturating_add(garbage).to_be_bytes(),
                    );
                }
                self.db.write(batch)?;
                self.sync()?;
                for h in removed_files {
                    self.files.remove(&h).map_err(StoreError::io(
                        "removing blob",
                        Path::new(&self.files.describe(&h)),
                    ))?;
                }
                drop(pins);
                drop(w);
                report.note_pause(held);
            }
        }

        // Orphan files: installed by a put that crashed before writing its record.
        let on_disk = self
            .files
            .list()
            .map_err(StoreError::io("listing blobs in", &self.dir.join("blobs")))?;
        for h in on_disk {
            let _w = self.write.lock();
            let held = Instant::now();
            let pinned = self.pins.lock().contains_key(&h);
            if !pinned && !self.has_blob(&h)? {
                self.files.remove(&h).map_err(StoreError::io(
                    "removing blob",
                    Path::new(&self.files.describe(&h)),
                ))?;
                report.orphan_files_removed += 1;
            }
            report.note_pause(held);
        }
        // Blobs in a shared bucket that nobody references any more.
        report.shared_orphans_removed = self
            .files
            .sweep_unreferenced()
            .map_err(StoreError::io("sweeping", &self.dir.join("blobs")))?;
        Ok(report)
    }
}
