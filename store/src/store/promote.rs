//! Promotion: a package version copied from one feed to another of the same ecosystem without
//! copying a byte of its files, with a signed record of who did it.

use std::time::{SystemTime, UNIX_EPOCH};

use super::{
    EntryKind, EntryValue, NewFile, NewPackage, PublishOutcome, Result, Store, StoreError, Txn,
};
use crate::doc::{Ecosystem, Manifest, Promotion, SignedDocument, PAYLOAD_VERSION};
use crate::names;
use crate::{Hash, SYSTEM_FEED};

/// What [`Store::promote`] did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Promoted {
    /// The version's manifest in the target feed.
    pub manifest: Hash,
    /// Whether the target got the version now, or already held it with the same files.
    pub outcome: PublishOutcome,
    /// The promotion record's key in the system set and its document id.
    pub record: (String, Hash),
}

impl Promotion {
    /// The names it carries are valid names of their kind, so its key is a well-formed
    /// system key.
    pub(crate) fn check_names(&self) -> Result<()> {
        names::check_feed_name(&self.from)?;
        names::check_feed_name(&self.to)?;
        names::check_package_name(self.ecosystem, &self.name)?;
        names::check_version(&self.version)?;
        if self.from == self.to {
            return Err(StoreError::InvalidInput {
                what: "promotion",
                detail: format!("it promotes from feed `{}` to itself", self.from),
            });
        }
        if self.by.len() > 256 {
            return Err(StoreError::InvalidInput {
                what: "promotion",
                detail: "`by` is longer than 256 bytes".into(),
            });
        }
        Ok(())
    }
}

impl Store {
    /// Copies `name` `version` from feed `from` to feed `to`: `to` gets a manifest signed by
    /// this instance naming the same files (so the same blobs: nothing is copied), and the
    /// system set a [`Promotion`] record naming both manifests, `by` and the time, both in one
    /// write batch. The source version must be live and signed by a key trusted for `from`;
    /// the feeds must hold the same ecosystem. A target that holds the version with the same
    /// files keeps it and the record of the promotion that brought it (a new one is written
    /// only if there is none); one that holds other files for it refuses, as a publish would.
    pub fn promote(
        &self,
        from: &str,
        to: &str,
        name: &str,
        version: &str,
        by: &str,
    ) -> Result<Promoted> {
        let (source_feed, target_feed) = (self.feed(from)?, self.feed(to)?);
        let invalid = |detail: String| StoreError::InvalidInput {
            what: "promotion",
            detail,
        };
        let (Some(ecosystem), Some(target_ecosystem)) =
            (source_feed.ecosystem(), target_feed.ecosystem())
        else {
            return Err(StoreError::SystemFeed {
                action: "holds no packages to promote",
            });
        };
        if ecosystem != target_ecosystem {
            return Err(invalid(format!(
                "feed `{from}` holds {ecosystem} packages and `{to}` holds {target_ecosystem} packages"
            )));
        }
        let Some((source, manifest)) = self.manifest_to_promote(from, ecosystem, name, version)?
        else {
            return Err(StoreError::EntryNotFound {
                feed: from.into(),
                key: names::package_key(name, version),
            });
        };
        // The record names the package as it was published.
        let name = manifest.name.as_str();
        let doc = self
            .document(&source)?
            .ok_or_else(|| StoreError::missing_document("entry", name, &source))?;
        if !self.is_trusted(from, &doc.signer())? {
            return Err(invalid(format!(
                "{name} {version} in `{from}` is signed by {}, a key no longer trusted for it",
                doc.signer().short()
            )));
        }
        let record = |manifest: Hash| Promotion {
            v: PAYLOAD_VERSION,
            ecosystem,
            from: from.into(),
            to: to.into(),
            name: name.into(),
            version: version.into(),
            source,
            manifest,
            by: by.into(),
            time: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_secs()),
            hlc: 0,
        };
        // Checked before anything is written, with a placeholder for the id to come.
        record(source).check_names()?;
        let package = NewPackage {
            name: manifest.name.clone(),
            version: manifest.version.clone(),
            files: manifest
                .files
                .iter()
                .map(|f| NewFile {
                    name: f.name.clone(),
                    blob: f.blob,
                    size: f.size,
                    digests: f.digests.clone(),
                })
                .collect(),
            metadata: manifest.metadata.clone(),
        };
        let mut w = self.write.lock();
        let mut txn = Txn::new(self, w.hlc);
        for f in &package.files {
            if self.blob_record(&f.blob)?.is_none() {
                return Err(StoreError::BlobNotFound { hash: f.blob });
            }
        }
        let published = txn.publish(to, ecosystem, package)?;
        let key = record(published.doc).key();
        if published.outcome == PublishOutcome::Unchanged {
            // The target already held these files: the record of how they got there stands.
            let system = self.feed(SYSTEM_FEED)?.id;
            if let Some(held) = txn
                .entry(system, &key)?
                .filter(|v| v.kind == EntryKind::Document)
            {
                return Ok(Promoted {
                    manifest: published.doc,
                    outcome: published.outcome,
                    record: (key, held.doc),
                });
            }
        }
        let mut promotion = record(published.doc);
        promotion.hlc = txn.tick();
        let signed = SignedDocument::sign(&promotion, self.identity().signing_key()).map_err(
            StoreError::signing("promotion record".into(), "shorten `by`"),
        )?;
        txn.put_doc(&signed);
        txn.set_entry(
            SYSTEM_FEED,
            &key,
            Some(EntryValue {
                kind: EntryKind::Document,
                doc: signed.id(),
                hlc: promotion.hlc,
            }),
        )?;
        txn.commit(&mut w)?;
        drop(w);
        self.sync()?;
        Ok(Promoted {
            manifest: published.doc,
            outcome: published.outcome,
            record: (key, signed.id()),
        })
    }

    /// The live manifest of `name` `version` in `feed`: by its exact name, or for PyPI by its
    /// normalized one (PEP 503), as clients name projects.
    fn manifest_to_promote(
        &self,
        feed: &str,
        ecosystem: Ecosystem,
        name: &str,
        version: &str,
    ) -> Result<Option<(Hash, Manifest)>> {
        if let Some(found) = self.manifest(feed, name, version)? {
            return Ok(Some(found));
        }
        if ecosystem != Ecosystem::Pypi {
            return Ok(None);
        }
        let wanted = names::normalize_pypi(name);
        for e in self.entries(feed)? {
            if e.value.kind != EntryKind::Manifest {
                continue;
            }
            let Some((n, v)) = names::split_package_key(&e.key) else {
                continue;
            };
            if v == version && names::normalize_pypi(n) == wanted {
                return self.manifest(feed, n, v);
            }
        }
        Ok(None)
    }

    /// The promotion records held, trusted ones only, newest first; of `name` (and `version`)
    /// only when given (a PyPI name compared normalized).
    pub fn promotions(&self, name: Option<&str>, version: Option<&str>) -> Result<Vec<Promotion>> {
        let mut all: Vec<Promotion> = self
            .system_documents::<Promotion>("promotion/")?
            .into_iter()
            .filter(|p| {
                name.is_none_or(|n| {
                    p.name == n
                        || (p.ecosystem == Ecosystem::Pypi
                            && names::normalize_pypi(&p.name) == names::normalize_pypi(n))
                })
            })
            .filter(|p| version.is_none_or(|v| p.version == v))
            .collect();
        all.sort_by_key(|p| std::cmp::Reverse(p.hlc));
        Ok(all)
    }
}
