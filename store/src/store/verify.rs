//! `cairn verify`: every record, document and blob checked against what names it.

use super::*;

impl Store {
    // Verification

    /// Rehashes every blob, checks every document's signature and trust, every entry against
    /// its document, and recomputes every Merkle node. Reports each problem found.
    pub fn verify(&self) -> Result<VerifyReport> {
        self.verify_with_progress(&mut |_| {})
    }

    /// [`Store::verify`], telling `progress` how many blob bytes of how many it has rehashed
    /// (after each blob). Safe to run while the store is written to: it checks the state at
    /// the moment it starts (one RocksDB snapshot); a blob collected meanwhile is not a
    /// problem, and one stored meanwhile is left for the next run.
    pub fn verify_with_progress(
        &self,
        progress: &mut dyn FnMut(VerifyProgress),
    ) -> Result<VerifyReport> {
        let mut report = VerifyReport::default();
        let snapshot = self.db.snapshot();
        let snap = Some(&snapshot);
        let problem = |kind, subject: String, detail: String| Problem {
            kind,
            subject,
            detail,
        };
        let mut problems = Vec::new();

        // Blobs. What the backend says it holds for this instance: in a shared bucket, a blob
        // without this instance's reference marker could be collected by another instance.
        let list = || {
            self.files
                .list()
                .map_err(StoreError::io("listing blobs in", &self.dir.join("blobs")))
        };
        let held: HashSet<Hash> = list()?.into_iter().collect();
        let mut not_held = Vec::new();
        let mut total = VerifyProgress::default();
        for item in self.scan(CF_BLOBS, b"", snap) {
            let (_, v) = item?;
            total.blobs_due += 1;
            total.bytes_due += BlobRecord::decode(&v).map(|r| r.size()).unwrap_or(0);
        }
        let mut done = total;
        progress(done);
        for item in self.scan(CF_BLOBS, b"", snap) {
            let (k, v) = item?;
            let Some(hash) = Hash::from_slice(&k) else {
                problems.push(problem(
                    "index",
                    hex::encode(&k),
                    "blob key is not a hash".into(),
                ));
                continue;
            };
            report.blobs += 1;
            let record = match BlobRecord::decode(&v) {
                Ok(r) => r,
                Err(e) => {
                    problems.push(problem("blob", hash.to_hex(), e.to_string()));
                    continue;
                }
            };
            let size = record.size();
            let mut sink = CountingSink(0);
            match self.read_blob_to(&hash, &mut sink) {
                Ok(n)
                    if n == size
                        && matches!(record, BlobRecord::Backend(_))
                        && !held.contains(&hash) =>
                {
                    // Perhaps stored after the listing: looked at again below.
                    not_held.push(hash);
                    report.blob_bytes += n;
                }
                Ok(n) if n == size => report.blob_bytes += n,
                Ok(n) => problems.push(problem(
                    "blob",
                    hash.to_hex(),
                    format!("read {n} bytes, index says {size}"),
                )),
                // Collected since the snapshot: nothing references it any more.
                Err(_) if !self.has_blob(&hash)? => report.blobs -= 1,
                Err(e) => problems.push(problem("blob", hash.to_hex(), e.to_string())),
            }
            done.blobs_done += 1;
            done.bytes_done += size;
            progress(done);
        }
        if !not_held.is_empty() {
            let held: HashSet<Hash> = list()?.into_iter().collect();
            for hash in not_held.into_iter().filter(|h| !held.contains(h)) {
                problems.push(problem(
                    "blob",
                    hash.to_hex(),
                    format!(
                        "{} is readable but not held for this instance (no reference marker); another instance's gc may delete it",
                        self.files.describe(&hash)
                    ),
                ));
            }
        }

        // Documents.
        let feeds: Vec<FeedRecord> = {
            let mut v = self.list_feeds()?;
            v.push(self.feed(SYSTEM_FEED)?);
            v
        };
        let mut docs = HashMap::new();
        for item in self.scan(CF_DOCS, b"", snap) {
            let (k, v) = item?;
            report.documents += 1;
            let id = Hash::from_slice(&k).unwrap_or_default();
            match SignedDocument::decode(&v) {
                Ok(d) if d.id() == id => {
                    docs.insert(id, d);
                }
                Ok(d) => problems.push(problem(
                    "document",
                    id.to_hex(),
                    format!("stored under the wrong id (content is {})", d.id()),
                )),
                Err(e) => problems.push(problem("document", id.to_hex(), e.to_string())),
            }
        }

        // Entries and Merkle nodes, feed by feed.
        for f in &feeds {
            report.feeds += 1;
            let mut expected: HashMap<Vec<u8>, NodeSummary> = HashMap::new();
            for item in self.scan(CF_ENTRIES, &feed_prefix(f.id), snap) {
                let (k, v) = item?;
                report.entries += 1;
                let key = String::from_utf8_lossy(&k[4..]).into_owned();
                let subject = format!("{}/{}", f.name, key);
                let value = match EntryValue::decode(&v) {
                    Ok(v) => v,
                    Err(e) => {
                        problems.push(problem("entry", subject, e.to_string()));
                        continue;
                    }
                };
                let kh = merkle::key_hash(&key);
                let leaf = merkle::leaf(&key, &value.doc);
                for depth in 0..=MAX_DEPTH {
                    expected
                        .entry(merkle_key(f.id, &kh.as_bytes()[..depth]))
                        .or_default()
                        .insert(&leaf);
                }
                if snapshot
                    .get_pinned_cf(self.cf(CF_KEYHASH), keyhash_key(f.id, &kh))?
                    .as_deref()
                    != Some(key.as_bytes())
                {
                    problems.push(problem(
                        "index",
                        subject.clone(),
                        "missing from the key-hash index".into(),
                    ));
                }
                let Some(doc) = docs.get(&value.doc) else {
                    problems.push(problem(
                        "entry",
                        subject,
                        format!("document {} is missing or invalid", value.doc),
                    ));
                    continue;
                };
                if let Err(e) = self.check_entry_doc(f, &key, &value, doc, snap) {
                    problems.push(problem("entry", subject, e));
                }
            }
            let mut stored = 0usize;
            for item in self.scan(CF_MERKLE, &feed_prefix(f.id), snap) {
                let (k, v) = item?;
                let Some(n) = NodeSummary::decode(&v) else {
                    problems.push(problem("merkle", f.name.clone(), "unreadable node".into()));
                    continue;
                };
                if n.count == 0 && n.fingerprint == merkle::Fingerprint::ZERO {
                    continue;
                }
                stored += 1;
                if expected.get(k.as_ref()) != Some(&n) {
                    problems.push(problem(
                        "merkle",
                        format!("{} node {}", f.name, hex::encode(&k[5..])),
                        "stored node does not match the entries below it".into(),
                    ));
                }
            }
            if stored != expected.len() {
                problems.push(problem(
                    "merkle",
                    f.name.clone(),
                    format!(
                        "{} nodes stored, {} expected from the entries",
                        stored,
                        expected.len()
                    ),
                ));
            }
        }
        report.problems = problems;
        Ok(report)
    }

    pub(crate) fn check_entry_doc(
        &self,
        f: &FeedRecord,
        key: &str,
        value: &EntryValue,
        doc: &SignedDocument,
        snapshot: Option<&rocksdb::Snapshot<'_>>,
    ) -> Result<(), String> {
        let trusted = self
            .is_trusted(&f.name, &doc.signer())
            .map_err(|e| e.to_string())?;
        if !trusted {
            return Err(format!("signed by untrusted key {}", doc.signer()));
        }
        match (value.kind, doc.doc_type()) {
            (EntryKind::Manifest, DocType::Manifest) => {
                let m: Manifest = doc.payload().map_err(|e| e.to_string())?;
                if m.feed != f.name
                    || names::package_key(&m.name, &m.version) != key
                    || m.hlc != value.hlc
                {
                    return Err("manifest does not match its entry".into());
                }
                for file in &m.files {
                    let size = match snapshot {
                        Some(s) => s
                            .get_pinned_cf(self.cf(CF_BLOBS), file.blob.as_bytes())
                            .map_err(StoreError::from)
                            .and_then(|v| v.map(|v| BlobRecord::decode(&v)).transpose())
                            .map(|r| r.map(|r| r.size())),
                        None => self.blob_size(&file.blob),
                    };
                    match size {
                        Ok(Some(s)) if s == file.size => {}
                        Ok(Some(s)) => {
                            return Err(format!(
                                "file `{}` is {} bytes, blob has {s}",
                                file.name, file.size
                            ))
                        }
                        Ok(None) => {
                            return Err(format!(
                                "file `{}` blob {} is missing",
                                file.name, file.blob
                            ))
                        }
                        Err(e) => return Err(e.to_string()),
                    }
                }
                Ok(())
            }
            (EntryKind::Tombstone, DocType::Tombstone) => {
                let t: Tombstone = doc.payload().map_err(|e| e.to_string())?;
                if t.feed != f.name || t.key != key || t.hlc != value.hlc {
                    return Err("tombstone does not match its entry".into());
                }
                Ok(())
            }
            (EntryKind::Document, t)
                if f.kind == FeedKind::System
                    && t != DocType::Manifest
                    && t != DocType::Tombstone =>
            {
                Ok(())
            }
            (kind, t) => Err(format!("entry of kind {kind:?} holds a {t} document")),
        }
    }
}

pub(crate) struct CountingSink(u64);

impl std::io::Write for CountingSink {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0 += buf.len() as u64;
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}
