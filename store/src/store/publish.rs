//! Writes: publishing, deleting and amending packages.

use super::*;

impl Store {
    // Writes

    /// The instance's hybrid logical clock: at or above the clock of every entry it holds.
    pub fn clock(&self) -> u64 {
        self.write.lock().hlc
    }

    /// Makes committed writes durable (fsyncs the WAL) when `sync_writes` is on.
    pub fn sync(&self) -> Result<()> {
        if self.options.sync_writes {
            self.db.flush_wal(true)?;
        }
        Ok(())
    }

    /// Publishes one package version: checks every file's blob is stored with the declared
    /// size, signs a manifest and makes it visible in one write batch.
    pub fn publish(&self, feed: &str, package: NewPackage) -> Result<Published> {
        let mut out = self.publish_many(feed, vec![package])?;
        out.pop().ok_or_else(|| StoreError::InvalidPackage {
            name: String::new(),
            version: String::new(),
            problem: PackageProblem::Empty,
        })
    }

    /// Publishes several package versions in one commit (all or none).
    pub fn publish_many(&self, feed: &str, packages: Vec<NewPackage>) -> Result<Vec<Published>> {
        let f = self.feed(feed)?;
        let ecosystem = f.ecosystem().ok_or(StoreError::SystemFeed {
            action: "holds no packages: publish to a package feed",
        })?;
        for p in &packages {
            names::check_package_name(ecosystem, &p.name)?;
            names::check_version(&p.version)?;
            if p.files.is_empty() {
                return Err(StoreError::InvalidPackage {
                    name: p.name.clone(),
                    version: p.version.clone(),
                    problem: PackageProblem::NoFiles,
                });
            }
            let mut seen = HashSet::new();
            for file in &p.files {
                names::check_file_name(&file.name)?;
                if !seen.insert(&file.name) {
                    return Err(StoreError::InvalidPackage {
                        name: p.name.clone(),
                        version: p.version.clone(),
                        problem: PackageProblem::FileTwice(file.name.clone()),
                    });
                }
            }
        }
        let mut results = Vec::with_capacity(packages.len());
        let mut w = self.write.lock();
        let mut txn = Txn::new(self, w.hlc);
        for p in packages {
            for file in &p.files {
                match self.blob_record(&file.blob)? {
                    None => return Err(StoreError::BlobNotFound { hash: file.blob }),
                    Some(r) if r.size() != file.size => {
                        return Err(StoreError::BlobSizeMismatch {
                            file: file.name.clone(),
                            hash: file.blob,
                            declared: file.size,
                            actual: r.size(),
                        })
                    }
                    Some(_) => {}
                }
            }
            results.push(txn.publish(&f.name, ecosystem, p)?);
        }
        txn.commit(&mut w)?;
        drop(w);
        self.sync()?;
        Ok(results)
    }

    /// Deletes a package version by writing a signed tombstone.
    pub fn delete(&self, feed: &str, name: &str, version: &str) -> Result<Published> {
        let f = self.feed(feed)?;
        let key = names::package_key(name, version);
        let mut w = self.write.lock();
        let mut txn = Txn::new(self, w.hlc);
        let feed_id = f.id;
        let previous = match txn.entry(feed_id, &key)? {
            Some(v) if v.kind != EntryKind::Tombstone => v.doc,
            _ => {
                return Err(StoreError::EntryNotFound {
                    feed: feed.into(),
                    key,
                })
            }
        };
        let hlc = txn.tick();
        let doc = SignedDocument::sign(
            &Tombstone {
                v: PAYLOAD_VERSION,
                feed: feed.into(),
                key: key.clone(),
                hlc,
                previous: Some(previous),
            },
            self.identity.signing_key(),
        )
        .map_err(|e| StoreError::CorruptRecord {
            what: "tombstone",
            detail: e.to_string(),
        })?;
        let id = doc.id();
        txn.put_doc(&doc);
        txn.set_entry(
            &f.name,
            &key,
            Some(EntryValue {
                kind: EntryKind::Tombstone,
                doc: id,
                hlc,
            }),
        )?;
        txn.commit(&mut w)?;
        drop(w);
        self.sync()?;
        Ok(Published {
            key,
            doc: id,
            outcome: PublishOutcome::Created,
        })
    }

    /// Changes metadata fields of live package versions without touching their files (a yank,
    /// a dist-tag moving): each version named gets a newly signed manifest with `set` applied
    /// (`None` removes a field), all in one write batch. Versions whose metadata would not
    /// change are left as they are.
    pub fn amend_metadata(&self, feed: &str, changes: &[Amendment]) -> Result<Vec<Published>> {
        let f = self.feed(feed)?;
        let ecosystem = f.ecosystem().ok_or(StoreError::SystemFeed {
            action: "holds no package versions",
        })?;
        let mut w = self.write.lock();
        let mut txn = Txn::new(self, w.hlc);
        let mut out = Vec::new();
        for Amendment { name, version, set } in changes {
            let key = names::package_key(name, version);
            let doc = match txn.entry(f.id, &key)? {
                Some(v) if v.kind == EntryKind::Manifest => v.doc,
                _ => {
                    return Err(StoreError::EntryNotFound {
                        feed: feed.into(),
                        key,
                    })
                }
            };
            let existing: Manifest = txn
                .doc(&doc)?
                .ok_or_else(|| StoreError::missing_document("entry", &key, &doc))?
                .payload()?;
            let mut metadata = existing.metadata.clone();
            for (k, v) in set {
                match v {
                    Some(v) => {
                        metadata.insert(k.clone(), v.clone());
                    }
                    None => {
                        metadata.remove(k);
                    }
                }
            }
            if metadata == existing.metadata {
                out.push(Published {
                    key,
                    doc,
                    outcome: PublishOutcome::Unchanged,
                });
                continue;
            }
            let hlc = txn.tick();
            let manifest = Manifest {
                metadata,
                hlc,
                ecosystem,
                ..existing
            };
            let signed = SignedDocument::sign(&manifest, self.identity.signing_key()).map_err(
                StoreError::signing(
                    format!("manifest of {} {}", manifest.name, manifest.version),
                    "keep the metadata shorter",
                ),
            )?;
            let id = signed.id();
            txn.protect.extend(manifest.files.iter().map(|f| f.blob));
            txn.put_doc(&signed);
            txn.set_entry(
                &f.name,
                &key,
                Some(EntryValue {
                    kind: EntryKind::Manifest,
                    doc: id,
                    hlc,
                }),
            )?;
            out.push(Published {
                key,
                doc: id,
                outcome: PublishOutcome::Created,
            });
        }
        txn.commit(&mut w)?;
        drop(w);
        self.sync()?;
        Ok(out)
    }
}
