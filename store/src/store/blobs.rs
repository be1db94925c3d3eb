//! Blob bytes: storing, pinning, reading verified.

use super::*;

impl Store {
    // Blobs

    /// Stores a blob from a reader, hashing as it writes. Identical content is stored once.
    /// The returned value pins the blob against GC until it is dropped.
    pub fn put_blob(&self, reader: impl Read) -> Result<StoredBlob> {
        let ingested = blob::ingest(reader, &self.tmp_dir).map_err(StoreError::Input)?;
        let hash = ingested.hash();
        let size = ingested.size();
        let pin = self.pin(hash);
        let existed = self.has_blob(&hash)?;
        if !existed {
            let record = match ingested {
                Ingested::Inline { bytes, .. } => blob_record(size, Some(&bytes)),
                Ingested::Staged(staged) => {
                    self.install_files(staged)?;
                    blob_record(size, None)
                }
            };
            let _w = self.write.lock();
            self.db.put_cf(self.cf(CF_BLOBS), hash.as_bytes(), record)?;
        }
        Ok(StoredBlob {
            hash,
            size,
            existed,
            _pin: pin,
        })
    }

    /// Whether each of `blobs` is a small blob (at most [`blob::INLINE_MAX`] bytes) whose
    /// bytes hash to the name it comes with: [`StoreError::CorruptBlob`] for the first that
    /// is not.
    pub fn check_small_blobs(blobs: &[(Hash, &[u8])]) -> Result<()> {
        match blobs
            .iter()
            .find(|(hash, bytes)| bytes.len() as u64 > blob::INLINE_MAX || Hash::of(bytes) != *hash)
        {
            None => Ok(()),
            Some(&(hash, _)) => Err(StoreError::CorruptBlob(CorruptBlob {
                hash,
                offset: 0,
                location: "inline".into(),
            })),
        }
    }

    /// Stores small blobs, each named by its hash, in one write after checking them all
    /// ([`Store::check_small_blobs`]; nothing is written if one fails): a replica takes
    /// hundreds at once with their documents. Returns them pinned, in order.
    pub fn put_small_blobs(&self, blobs: &[(Hash, &[u8])]) -> Result<Vec<StoredBlob>> {
        Store::check_small_blobs(blobs)?;
        let mut out = Vec::with_capacity(blobs.len());
        let mut batch = WriteBatch::default();
        for &(hash, bytes) in blobs {
            let size = bytes.len() as u64;
            let pin = self.pin(hash);
            let existed = self.has_blob(&hash)?;
            if !existed {
                batch.put_cf(
                    self.cf(CF_BLOBS),
                    hash.as_bytes(),
                    blob_record(size, Some(bytes)),
                );
            }
            out.push(StoredBlob {
                hash,
                size,
                existed,
                _pin: pin,
            });
        }
        if !batch.is_empty() {
            let _w = self.write.lock();
            self.db.write(batch)?;
        }
        Ok(out)
    }

    pub(crate) fn install_files(&self, staged: StagedBlob) -> Result<()> {
        let path = staged.data_path().to_owned();
        self.files
            .install(staged)
            .map_err(StoreError::io("installing blob", &path))
    }

    /// Stores a staged large blob (already verified against its hash) and returns it pinned.
    pub(crate) fn install_staged(&self, staged: StagedBlob) -> Result<StoredBlob> {
        let (hash, size) = (staged.hash, staged.size);
        let pin = self.pin(hash);
        let existed = self.has_blob(&hash)?;
        if !existed {
            self.install_files(staged)?;
            let _w = self.write.lock();
            self.db
                .put_cf(self.cf(CF_BLOBS), hash.as_bytes(), blob_record(size, None))?;
        }
        Ok(StoredBlob {
            hash,
            size,
            existed,
            _pin: pin,
        })
    }

    /// Takes up a blob of `size` bytes that is already in the blob backend's storage (put there
    /// by another instance sharing the bucket), so it need not be transferred: the blob pinned,
    /// or None if the backend does not hold it.
    pub fn adopt_blob(&self, hash: Hash, size: u64) -> Result<Option<StoredBlob>> {
        if size <= blob::INLINE_MAX {
            return Ok(None);
        }
        let pin = self.pin(hash);
        let existed = match self.blob_size(&hash)? {
            Some(s) if s == size => true,
            // The same hash with another size: the index is damaged; fetch it properly.
            Some(_) => return Ok(None),
            None => false,
        };
        if !existed {
            let adopted = self.files.adopt(&hash, size).map_err(StoreError::io(
                "adopting blob",
                Path::new(&self.files.describe(&hash)),
            ))?;
            if !adopted {
                return Ok(None);
            }
            let _w = self.write.lock();
            self.db
                .put_cf(self.cf(CF_BLOBS), hash.as_bytes(), blob_record(size, None))?;
        }
        Ok(Some(StoredBlob {
            hash,
            size,
            existed,
            _pin: pin,
        }))
    }

    /// Pins `hash` against GC until the returned guard is dropped.
    pub fn pin(&self, hash: Hash) -> BlobPin {
        *self.pins.lock().entry(hash).or_insert(0) += 1;
        BlobPin {
            pins: self.pins.clone(),
            hash,
        }
    }

    pub(crate) fn blob_record(&self, hash: &Hash) -> Result<Option<BlobRecord>> {
        match self.db.get_pinned_cf(self.cf(CF_BLOBS), hash.as_bytes())? {
            None => Ok(None),
            Some(v) => BlobRecord::decode(&v).map(Some),
        }
    }

    /// Whether the blob is stored.
    pub fn has_blob(&self, hash: &Hash) -> Result<bool> {
        Ok(self
            .db
            .get_pinned_cf(self.cf(CF_BLOBS), hash.as_bytes())?
            .is_some())
    }

    /// The blob's size, if stored.
    pub fn blob_size(&self, hash: &Hash) -> Result<Option<u64>> {
        Ok(self.blob_record(hash)?.map(|r| r.size()))
    }

    /// Opens a blob for reading; every chunk group is verified before it is returned.
    pub fn blob_reader(&self, hash: &Hash) -> Result<VerifyingReader> {
        match self.blob_record(hash)? {
            None => Err(StoreError::BlobNotFound { hash: *hash }),
            Some(BlobRecord::Inline(bytes)) => Ok(VerifyingReader::inline(*hash, bytes)?),
            Some(BlobRecord::Backend(size)) => {
                let (data, outboard) = self.open_blob_files(hash)?;
                Ok(VerifyingReader::tree(
                    *hash,
                    size,
                    data,
                    outboard,
                    self.files.describe(hash),
                ))
            }
        }
    }

    pub(crate) fn open_blob_files(
        &self,
        hash: &Hash,
    ) -> Result<(Box<dyn blob::RandomAccess>, Box<dyn blob::RandomAccess>)> {
        self.files.open(hash).map_err(|e| {
            if e.kind() == std::io::ErrorKind::NotFound {
                StoreError::BlobFileMissing {
                    hash: *hash,
                    location: self.files.describe(hash),
                }
            } else {
                StoreError::io("opening blob", Path::new(&self.files.describe(hash)))(e)
            }
        })
    }

    /// A stored blob's bytes as an open local file and its size, when the blob backend keeps
    /// it in one (not inline, not in object storage). Nothing here is verified: the caller
    /// hashes what it reads (the feed server does, before it sends the file).
    pub fn open_local_blob(&self, hash: &Hash) -> Result<Option<(std::fs::File, u64)>> {
        let Some(BlobRecord::Backend(size)) = self.blob_record(hash)? else {
            return Ok(None);
        };
        match self.files.local_file(hash) {
            None => Ok(None),
            Some(Ok(file)) => Ok(Some((file, size))),
            Some(Err(e)) if e.kind() == std::io::ErrorKind::NotFound => {
                Err(StoreError::BlobFileMissing {
                    hash: *hash,
                    location: self.files.describe(hash),
                })
            }
            Some(Err(e)) => Err(StoreError::io(
                "opening blob",
                Path::new(&self.files.describe(hash)),
            )(e)),
        }
    }

    /// The local file of a blob [`Store::open_local_blob`] found before, opened again without
    /// looking the blob up (`None`: the backend keeps no local files). Unverified, as there.
    pub fn reopen_local_blob(&self, hash: &Hash) -> Option<std::io::Result<std::fs::File>> {
        self.files.local_file(hash)
    }

    /// A verified reader over bytes `start..end` of a blob that reads and checks only the
    /// chunk groups holding them; its first byte is byte `start`, and it may run past `end` to
    /// the end of that group (the caller takes `end - start` bytes).
    pub fn blob_range_reader(&self, hash: &Hash, start: u64, end: u64) -> Result<VerifyingReader> {
        match self.blob_record(hash)? {
            None => Err(StoreError::BlobNotFound { hash: *hash }),
            Some(BlobRecord::Inline(bytes)) => {
                let mut r = VerifyingReader::inline(*hash, bytes)?;
                std::io::copy(&mut (&mut r).take(start), &mut std::io::sink())
                    .map_err(StoreError::Input)?;
                Ok(r)
            }
            Some(BlobRecord::Backend(size)) => {
                let (data, outboard) = self.open_blob_files(hash)?;
                Ok(VerifyingReader::tree_range(
                    *hash,
                    size,
                    data,
                    outboard,
                    self.files.describe(hash),
                    start,
                    end,
                ))
            }
        }
    }

    /// Copies a verified blob into `out`; on corruption, fails before writing the bad group.
    pub fn read_blob_to(&self, hash: &Hash, out: &mut impl std::io::Write) -> Result<u64> {
        let mut r = self.blob_reader(hash)?;
        std::io::copy(&mut r, out).map_err(|e| match blob::as_corrupt(&e) {
            Some(c) => StoreError::CorruptBlob(c.clone()),
            None => StoreError::io("reading blob", Path::new(&self.files.describe(hash)))(e),
        })
    }
}
