//! Creating and opening a data directory, and the basics every other part uses.

use super::*;

/// Bytes of memtables all column families may hold together before the largest is flushed.
/// With the block cache, what bounds a replica's memory whatever the size of its feeds: a
/// first sync of 1,000,000 entries peaked at 120 MiB with 24 + 16 MiB, 123 MiB with 32 + 16
/// and 140 MiB with 32 + 32 (`first-sync`); 24 MiB cost it about 8% more CPU than 32.
const MEMTABLE_BUDGET: usize = 24 << 20;
/// Bytes of the block cache the column families share (index and filter partitions, data
/// blocks, hot blob-file values).
const BLOCK_CACHE_BYTES: usize = 16 << 20;
/// Documents and inline blobs of at least this many bytes live in RocksDB's blob files.
pub(crate) const BLOB_FILE_MIN_VALUE: u64 = 256;

impl Store {
    /// Creates a new store in `dir`: instance key, database, the system feed, and trust in the
    /// instance's own key for every feed.
    pub fn init(dir: &Path, options: StoreOptions) -> Result<Store> {
        if dir.join("db").join("CURRENT").exists() || crate::identity::key_path(dir).exists() {
            return Err(StoreError::AlreadyInitialized {
                path: dir.to_owned(),
            });
        }
        fs::create_dir_all(dir).map_err(StoreError::io("creating", dir))?;
        let identity = Identity::create(dir)?;
        let store = match Store::open_with(dir, identity, options, true) {
            Ok(store) => store,
            Err(e) => {
                // Nothing half-made stays behind (a bucket that is not there, say): the next
                // `init` starts afresh.
                let _ = fs::remove_dir_all(dir.join("db"));
                let _ = fs::remove_dir_all(dir.join("identity"));
                return Err(e);
            }
        };
        let me = store.identity.public_key();
        store.trust_add(TRUST_ALL, &me)?;
        Ok(store)
    }

    /// Opens an existing store (finishing or dropping a move to a new key that a crash
    /// interrupted).
    pub fn open(dir: &Path, options: StoreOptions) -> Result<Store> {
        if dir.join("db").join("CURRENT").exists() {
            Store::settle_rotation(dir, &options)?;
        }
        Store::open_unsettled(dir, options)
    }

    pub(crate) fn open_unsettled(dir: &Path, options: StoreOptions) -> Result<Store> {
        if !dir.join("db").join("CURRENT").exists() {
            return Err(StoreError::NotInitialized {
                path: dir.to_owned(),
            });
        }
        let identity = Identity::load(dir)?;
        Store::open_with(dir, identity, options, false)
    }

    pub(crate) fn open_with(
        dir: &Path,
        identity: Identity,
        options: StoreOptions,
        create: bool,
    ) -> Result<Store> {
        let db_dir = dir.join("db");
        let mut opts = Options::default();
        opts.create_if_missing(create);
        opts.create_missing_column_families(true);
        opts.increase_parallelism(2);
        opts.set_compression_type(rocksdb::DBCompressionType::Lz4);
        opts.set_keep_log_file_num(4);
        // RocksDB's memory is bounded whatever the feeds hold: the memtables of all column
        // families together, and one block cache they share (by default each column family
        // would fill memtables of 64 MiB and keep a cache of its own).
        opts.set_db_write_buffer_size(MEMTABLE_BUDGET);
        let cache = rocksdb::Cache::new_lru_cache(BLOCK_CACHE_BYTES);
        let cfs = ALL_CFS.iter().map(|name| {
            let mut o = Options::default();
            o.set_compression_type(rocksdb::DBCompressionType::Lz4);
            o.set_write_buffer_size(MEMTABLE_BUDGET / 2);
            // The same for the memtables, for 2% of their size.
            o.set_memtable_whole_key_filtering(true);
            o.set_memtable_prefix_bloom_ratio(0.02);
            if [CF_DOCS, CF_BLOBS].contains(name) {
                // Envelopes and small blobs are written once into blob files, and compactions
                // move only their keys: a replica taking a whole feed does not rewrite its
                // bytes level after level.
                o.set_enable_blob_files(true);
                o.set_min_blob_size(BLOB_FILE_MIN_VALUE);
                // Off while writing: RocksDB's blob GC rewrites the live values of the oldest
                // quarter of blob files in every compaction that meets them, garbage or not,
                // which for a replica taking a large feed rewrote its bytes over and over
                // (4.7 GB relocated 60% of the way into a first sync of 1,000,000 entries).
                // `gc` turns it on for one compaction once the values it removed reach an
                // eighth of the blob files (`Store::maybe_reclaim_blob_files`).
                o.set_enable_blob_gc(false);
                // Hot documents stay in memory for the feed server, within the same budget.
                o.set_blob_cache(&cache);
            }
            let mut table = rocksdb::BlockBasedOptions::default();
            table.set_block_cache(&cache);
            // Index and filter blocks are charged to the cache too, or they would grow with
            // the number of table files outside any bound. They are partitioned: a lookup
            // loads the small top level (pinned) and one partition of 4 KiB, not a table's
            // whole filter. Whole filters of a feed's size (1.2 MB per table at 1,000,000
            // entries) were evicted by data blocks and read again, checksummed, for every
            // lookup: three quarters of a replica's session thread at that size.
            table.set_cache_index_and_filter_blocks(true);
            table.set_pin_l0_filter_and_index_blocks_in_cache(true);
            table.set_index_type(rocksdb::BlockBasedIndexType::TwoLevelIndexSearch);
            table.set_partition_filters(true);
            table.set_metadata_block_size(4096);
            table.set_pin_top_level_index_and_filter(true);
            // Most lookups while a replica fills are for what is not there yet (an entry, a
            // Merkle node): a filter answers them without reading a data block of each table.
            table.set_bloom_filter(10.0, false);
            table.set_optimize_filters_for_memory(true);
            o.set_block_based_table_factory(&table);
            ColumnFamilyDescriptor::new(*name, o)
        });
        let db = DB::open_cf_descriptors(&opts, &db_dir, cfs).map_err(|e| {
            if e.as_ref().contains("lock") {
                StoreError::Locked {
                    path: dir.to_owned(),
                }
            } else {
                StoreError::Db(e)
            }
        })?;
        let tmp_dir = dir.join("tmp");
        // Startup cleans what a crash left: temp files of blobs that were never installed.
        if tmp_dir.exists() {
            fs::remove_dir_all(&tmp_dir).map_err(StoreError::io("cleaning", &tmp_dir))?;
        }
        fs::create_dir_all(&tmp_dir).map_err(StoreError::io("creating", &tmp_dir))?;
        let files: Box<dyn BlobBackend> = match &options.blobs {
            BlobsConfig::Local => Box::new(
                LocalFiles::new(dir.join("blobs"))
                    .map_err(StoreError::io("creating", &dir.join("blobs")))?,
            ),
            BlobsConfig::S3(config) => Box::new(
                crate::s3::S3Blobs::new(config, &identity.public_key().fingerprint()).map_err(
                    |source| StoreError::BlobBackend {
                        location: options.blobs.location(),
                        source,
                    },
                )?,
            ),
        };
        match files.check() {
            Ok(()) => {}
            // Metadata can still be read and served; blob operations will report it.
            Err(e) if blob::as_unavailable(&e).is_some() => tracing::warn!("{e}"),
            Err(source) => {
                return Err(StoreError::BlobBackend {
                    location: options.blobs.location(),
                    source,
                })
            }
        }
        let mut store = Store {
            dir: dir.to_owned(),
            db,
            files,
            tmp_dir,
            identity,
            options,
            write: Mutex::new(WriteState {
                hlc: 0,
                gc_protect: None,
            }),
            pins: Arc::new(Mutex::new(HashMap::new())),
            sending: Mutex::new(Vec::new()),
            trust_generation: std::sync::atomic::AtomicU64::new(0),
            changes: tokio::sync::watch::channel(0).0,
            checked_docs: Mutex::new(CheckedDocs::default()),
            tlog: Mutex::new(()),
        };
        store.write.get_mut().hlc = store.meta_u64(META_HLC)?.unwrap_or(0);
        match store.meta_u64(META_SCHEMA)? {
            Some(SCHEMA_VERSION) => {}
            None if create => store.bootstrap()?,
            None => {
                return Err(StoreError::CorruptRecord {
                    what: "meta",
                    detail: "schema version missing".into(),
                })
            }
            Some(other) => {
                return Err(StoreError::CorruptRecord {
                    what: "meta",
                    detail: format!("schema version {other}, this build reads {SCHEMA_VERSION}"),
                })
            }
        }
        store.check_blob_home(create)?;
        Ok(store)
    }

    /// Records where the blobs live on first open, and refuses to open with another backend
    /// later: the index would name blobs that are not there.
    pub(crate) fn check_blob_home(&self, create: bool) -> Result<()> {
        let configured = self.options.blobs.location();
        match self.db.get_cf(self.cf(CF_META), META_BLOBS)? {
            // A store made before blob backends existed keeps its blobs on local disk.
            None if !create && configured != "local" => Err(StoreError::BlobHomeMismatch {
                stored: "local".into(),
                configured,
            }),
            None => {
                self.db
                    .put_cf(self.cf(CF_META), META_BLOBS, configured.as_bytes())?;
                self.db.flush_wal(true)?;
                Ok(())
            }
            Some(v) if v == configured.as_bytes() => Ok(()),
            Some(v) => Err(StoreError::BlobHomeMismatch {
                stored: String::from_utf8_lossy(&v).into_owned(),
                configured,
            }),
        }
    }

    pub(crate) fn bootstrap(&self) -> Result<()> {
        let system = FeedRecord::new(SYSTEM_FEED_ID, SYSTEM_FEED, FeedKind::System)?;
        let mut batch = WriteBatch::default();
        batch.put_cf(self.cf(CF_FEEDS), SYSTEM_FEED, self.encode_feed(&system)?);
        batch.put_cf(self.cf(CF_META), META_NEXT_FEED, 1u64.to_be_bytes());
        batch.put_cf(self.cf(CF_META), META_SCHEMA, SCHEMA_VERSION.to_be_bytes());
        self.db.write(batch)?;
        self.db.flush_wal(true)?;
        Ok(())
    }

    // Basics

    /// The data directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The instance identity.
    pub fn identity(&self) -> &Identity {
        &self.identity
    }

    /// The large-blob backend.
    pub fn backend(&self) -> &dyn BlobBackend {
        self.files.as_ref()
    }

    pub(crate) fn cf(&self, name: &str) -> &ColumnFamily {
        // Every name in ALL_CFS is opened (and created if missing) in `open_with`.
        #[allow(clippy::expect_used)]
        self.db
            .cf_handle(name)
            .expect("column family opened at start")
    }

    pub(crate) fn meta_u64(&self, key: &[u8]) -> Result<Option<u64>> {
        match self.db.get_pinned_cf(self.cf(CF_META), key)? {
            None => Ok(None),
            Some(v) => {
                let b: [u8; 8] = v
                    .as_ref()
                    .try_into()
                    .map_err(|_| StoreError::CorruptRecord {
                        what: "meta",
                        detail: String::from_utf8_lossy(key).into_owned(),
                    })?;
                Ok(Some(u64::from_be_bytes(b)))
            }
        }
    }

    pub(crate) fn encode_feed(&self, f: &FeedRecord) -> Result<Vec<u8>> {
        cbor::to_canonical(f).map_err(|e| StoreError::CorruptRecord {
            what: "feed",
            detail: e.to_string(),
        })
    }

    pub(crate) fn decode_feed(b: &[u8]) -> Result<FeedRecord> {
        cbor::from_canonical(b, 4096).map_err(|e| StoreError::CorruptRecord {
            what: "feed",
            detail: e.to_string(),
        })
    }

    /// Iterates `(key, value)` of a column family under a prefix, in key order.
    pub(crate) fn scan<'a>(
        &'a self,
        cf: &str,
        prefix: &[u8],
        snapshot: Option<&'a rocksdb::Snapshot<'a>>,
    ) -> impl Iterator<Item = Result<KeyValue>> + 'a {
        let mut ro = ReadOptions::default();
        ro.set_iterate_range(PrefixRange(prefix.to_vec()));
        if let Some(s) = snapshot {
            ro.set_snapshot(s);
        }
        self.db
            .iterator_cf_opt(self.cf(cf), ro, IteratorMode::Start)
            .map(|r| r.map_err(StoreError::from))
    }
}
