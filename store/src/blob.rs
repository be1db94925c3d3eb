//! Blob bytes: ingest (hash while writing), the backend seam for large blobs, and the
//! verifying reader.
//!
//! Blobs of at most [`INLINE_MAX`] bytes are returned to the caller to be kept inline in
//! RocksDB. Larger ones are streamed to a temp file while their chunk-group hashes are
//! computed, then get a BLAKE3 verified-streaming outboard (`bao-tree`, post order,
//! [`CHUNK_GROUP_BYTES`] chunk groups); both are fsynced and renamed into place by a
//! [`BlobBackend`]. Nothing ever holds a whole large blob in memory: ingest keeps one 64 KiB
//! buffer and 32 bytes per chunk group.
//!
//! Reading goes through [`VerifyingReader`], which checks every chunk group against the
//! outboard (and the outboard against the blob's hash) before handing its bytes out, so a
//! blob whose bytes changed on disk fails at the first bad group with an error that names it.

use std::fmt;
use std::fs::{self, File};
use std::io::{self, BufWriter, Read, Write};
use std::path::{Path, PathBuf};

use bao_tree::io::outboard::PostOrderOutboard;
use bao_tree::io::sync::{Outboard, ReadAt};
use bao_tree::iter::{BaoChunk, ResponseIter};
use bao_tree::{BaoTree, BlockSize, ChunkNum, ChunkRanges};
use blake3::hazmat::{merge_subtrees_non_root, merge_subtrees_root, HasherExt, Mode};

use crate::Hash;

/// Largest blob kept inline in RocksDB (one chunk group).
pub const INLINE_MAX: u64 = 16 * 1024;
/// log2 of the chunks (1 KiB each) per chunk group.
pub const CHUNK_GROUP_LOG: u8 = 4;
/// Bytes per chunk group: the unit of verification and of resumption.
pub const CHUNK_GROUP_BYTES: usize = 1024 << CHUNK_GROUP_LOG;
/// The block size of every outboard this store writes.
pub const BLOCK_SIZE: BlockSize = BlockSize::from_chunk_log(CHUNK_GROUP_LOG);

const IO_BUFFER: usize = 64 * 1024;

/// A blob whose bytes do not match its hash.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("blob {hash} is corrupt at byte {offset} ({location}): its bytes no longer match its hash")]
pub struct CorruptBlob {
    /// The blob.
    pub hash: Hash,
    /// Start of the first chunk group (or outboard node) that failed.
    pub offset: u64,
    /// Where the bytes live (a path, or `inline`).
    pub location: String,
}

impl From<CorruptBlob> for io::Error {
    fn from(e: CorruptBlob) -> io::Error {
        io::Error::new(io::ErrorKind::InvalidData, e)
    }
}

/// Extracts a [`CorruptBlob`] from an I/O error produced by a [`VerifyingReader`].
pub fn as_corrupt(e: &io::Error) -> Option<&CorruptBlob> {
    e.get_ref()
        .and_then(|inner| inner.downcast_ref::<CorruptBlob>())
}

/// A remote blob storage that did not answer, or answered with an error: the operation may
/// succeed if retried. Travels inside an `io::Error` from a backend.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct Unavailable(pub String);

/// Extracts an [`Unavailable`] from a backend's I/O error.
pub fn as_unavailable(e: &io::Error) -> Option<&Unavailable> {
    e.get_ref()
        .and_then(|inner| inner.downcast_ref::<Unavailable>())
}

/// Random access to stored bytes; what a backend hands out for reading.
pub trait RandomAccess: Send + Sync {
    /// Reads up to `buf.len()` bytes at `offset`; 0 only at the end.
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<usize>;
}

impl RandomAccess for File {
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<usize> {
        std::os::unix::fs::FileExt::read_at(self, buf, offset)
    }
}

struct DynReadAt(Box<dyn RandomAccess>);

impl ReadAt for DynReadAt {
    fn read_at(&self, pos: u64, buf: &mut [u8]) -> io::Result<usize> {
        self.0.read_at(pos, buf)
    }
}

/// The two local temp files of a large blob that has been ingested but not yet installed.
/// Dropping it removes the files.
#[derive(Debug)]
pub struct StagedBlob {
    /// The blob's hash.
    pub hash: Hash,
    /// Its size (larger than [`INLINE_MAX`]).
    pub size: u64,
    data: PathBuf,
    outboard: PathBuf,
}

impl StagedBlob {
    /// Takes ownership of two fsynced files holding a blob and its post-order outboard.
    pub(crate) fn from_parts(
        hash: Hash,
        size: u64,
        data: PathBuf,
        outboard: PathBuf,
    ) -> StagedBlob {
        StagedBlob {
            hash,
            size,
            data,
            outboard,
        }
    }

    /// The fsynced temp file holding the bytes.
    pub fn data_path(&self) -> &Path {
        &self.data
    }

    /// The fsynced temp file holding the post-order outboard.
    pub fn outboard_path(&self) -> &Path {
        &self.outboard
    }
}

impl Drop for StagedBlob {
    fn drop(&mut self) {
        let _ = fs::remove_file(&self.data);
        let _ = fs::remove_file(&self.outboard);
    }
}

/// What ingest produced.
#[derive(Debug)]
pub enum Ingested {
    /// Small enough to keep inline.
    Inline { hash: Hash, bytes: Vec<u8> },
    /// Staged in temp files, ready for [`BlobBackend::install`].
    Staged(StagedBlob),
}

impl Ingested {
    /// The hash of what was read.
    pub fn hash(&self) -> Hash {
        match self {
            Ingested::Inline { hash, .. } => *hash,
            Ingested::Staged(s) => s.hash,
        }
    }

    /// The number of bytes read.
    pub fn size(&self) -> u64 {
        match self {
            Ingested::Inline { bytes, .. } => bytes.len() as u64,
            Ingested::Staged(s) => s.size,
        }
    }
}

/// Where large blobs live. The store keeps the index (hash, size) in RocksDB and calls the
/// backend only for bytes; a backend must make [`BlobBackend::install`] atomic (a blob is
/// either wholly there with its outboard or absent) and idempotent.
pub trait BlobBackend: Send + Sync + fmt::Debug {
    /// Moves a staged blob into place; a blob that is already there is left as it is.
    fn install(&self, staged: StagedBlob) -> io::Result<()>;
    /// Checks once at open that the storage is usable: an error of kind `InvalidInput` is a
    /// configuration mistake (no such bucket, refused credentials); an [`Unavailable`] one
    /// may pass.
    fn check(&self) -> io::Result<()> {
        Ok(())
    }
    /// Takes up a blob that is already in the backend's storage (put there by another
    /// instance sharing it) with `size` bytes: true if it is there and is now held for this
    /// instance too. A backend that is never shared has nothing to adopt.
    fn adopt(&self, hash: &Hash, size: u64) -> io::Result<bool> {
        let _ = (hash, size);
        Ok(false)
    }
    /// Removes blobs that no instance sharing the storage references (a leak that racing
    /// collectors can leave); how many. Storage that is never shared has none.
    fn sweep_unreferenced(&self) -> io::Result<u64> {
        Ok(0)
    }
    /// Opens a blob's bytes and outboard for reading.
    fn open(&self, hash: &Hash) -> io::Result<(Box<dyn RandomAccess>, Box<dyn RandomAccess>)>;
    /// A blob's bytes as a local file, opened, for backends that keep them in one (the feed
    /// server hands such a file to the socket once it verified it); `None` for others.
    fn local_file(&self, hash: &Hash) -> Option<io::Result<File>> {
        let _ = hash;
        None
    }
    /// Removes a blob (both parts); absent is not an error.
    fn remove(&self, hash: &Hash) -> io::Result<()>;
    /// Every blob the backend holds.
    fn list(&self) -> io::Result<Vec<Hash>>;
    /// Where a blob's bytes are, for messages.
    fn describe(&self, hash: &Hash) -> String;
}

/// Large blobs as files `blobs/<2 hex>/<64 hex>` with `<64 hex>.obao` beside them.
#[derive(Debug)]
pub struct LocalFiles {
    root: PathBuf,
}

impl LocalFiles {
    /// Uses (and creates) `root`.
    pub fn new(root: PathBuf) -> io::Result<LocalFiles> {
        fs::create_dir_all(&root)?;
        Ok(LocalFiles { root })
    }

    /// Path of a blob's bytes.
    pub fn data_path(&self, hash: &Hash) -> PathBuf {
        let hex = hash.to_hex();
        self.root.join(&hex[..2]).join(hex)
    }

    /// Path of a blob's outboard.
    pub fn outboard_path(&self, hash: &Hash) -> PathBuf {
        let hex = hash.to_hex();
        self.root.join(&hex[..2]).join(format!("{hex}.obao"))
    }
}

impl BlobBackend for LocalFiles {
    fn install(&self, staged: StagedBlob) -> io::Result<()> {
        let data = self.data_path(&staged.hash);
        let outboard = self.outboard_path(&staged.hash);
        let dir = data.parent().unwrap_or(&self.root).to_owned();
        fs::create_dir_all(&dir)?;
        // Outboard first: a data file is never in place without its outboard.
        fs::rename(&staged.outboard, &outboard)?;
        fs::rename(&staged.data, &data)?;
        sync_dir(&dir)?;
        sync_dir(&self.root)?;
        Ok(())
    }

    fn open(&self, hash: &Hash) -> io::Result<(Box<dyn RandomAccess>, Box<dyn RandomAccess>)> {
        let data = File::open(self.data_path(hash))?;
        let outboard = File::open(self.outboard_path(hash))?;
        Ok((Box::new(data), Box::new(outboard)))
    }

    fn local_file(&self, hash: &Hash) -> Option<io::Result<File>> {
        Some(File::open(self.data_path(hash)))
    }

    fn remove(&self, hash: &Hash) -> io::Result<()> {
        for path in [self.data_path(hash), self.outboard_path(hash)] {
            match fs::remove_file(&path) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    fn list(&self) -> io::Result<Vec<Hash>> {
        let mut out = Vec::new();
        for dir in fs::read_dir(&self.root)? {
            let dir = dir?;
            if !dir.file_type()?.is_dir() {
                continue;
            }
            for f in fs::read_dir(dir.path())? {
                let name = f?.file_name();
                let name = name.to_string_lossy();
                let stem = name.strip_suffix(".obao").unwrap_or(&name);
                if let Ok(h) = stem.parse::<Hash>() {
                    out.push(h);
                }
            }
        }
        out.sort();
        out.dedup();
        Ok(out)
    }

    fn describe(&self, hash: &Hash) -> String {
        self.data_path(hash).display().to_string()
    }
}

/// The size of the post-order outboard of a blob of `size` bytes.
pub fn outboard_size(size: u64) -> u64 {
    BaoTree::new(size, BLOCK_SIZE).outboard_size()
}

/// fsyncs a directory so a rename in it is durable.
pub fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// Reads `reader` to its end: small input comes back inline, larger input is staged as two
/// fsynced temp files in `tmp_dir`.
pub fn ingest(mut reader: impl Read, tmp_dir: &Path) -> io::Result<Ingested> {
    let mut head = Vec::with_capacity(INLINE_MAX as usize + 1);
    (&mut reader).take(INLINE_MAX + 1).read_to_end(&mut head)?;
    if head.len() as u64 <= INLINE_MAX {
        return Ok(Ingested::Inline {
            hash: Hash::of(&head),
            bytes: head,
        });
    }
    let (data_path, data_file) = temp_file(tmp_dir, "data")?;
    let (outboard_path, outboard_file) = temp_file(tmp_dir, "obao")?;
    // From here on the staged value owns the temp files and removes them on any error.
    let mut staged = StagedBlob {
        hash: Hash::default(),
        size: 0,
        data: data_path,
        outboard: outboard_path,
    };
    let mut groups = ChunkGroupHasher::default();
    groups.update(&head);
    // Hashing runs here while a writer thread writes and flushes behind it, so the two cores
    // overlap and the final fsync finds little left to do.
    let _synced_data: File = std::thread::scope(|scope| -> io::Result<File> {
        let (to_writer, from_reader) = std::sync::mpsc::sync_channel::<Vec<u8>>(WRITE_QUEUE);
        let (recycle, recycled) = std::sync::mpsc::channel::<Vec<u8>>();
        let writer = scope.spawn(move || write_behind(data_file, from_reader, recycle));
        let mut first = Some(head);
        let result = (|| -> io::Result<()> {
            if let Some(h) = first.take() {
                to_writer.send(h).map_err(|_| writer_gone())?;
            }
            loop {
                let mut buf = recycled.try_recv().unwrap_or_default();
                buf.resize(WRITE_BLOCK, 0);
                let n = read_full(&mut reader, &mut buf)?;
                if n == 0 {
                    return Ok(());
                }
                buf.truncate(n);
                groups.update(&buf);
                to_writer.send(buf).map_err(|_| writer_gone())?;
                if n < WRITE_BLOCK {
                    return Ok(());
                }
            }
        })();
        drop(to_writer);
        let written = writer
            .join()
            .map_err(|_| io::Error::other("blob writer thread panicked"))?;
        result?;
        written
    })?;
    let (size, leaves) = groups.finish();
    let tree = BaoTree::new(size, BLOCK_SIZE);
    let mut ob = BufWriter::with_capacity(IO_BUFFER, outboard_file);
    let root = write_post_order_outboard(tree, &leaves, &mut ob)?;
    let outboard_file = ob.into_inner().map_err(|e| e.into_error())?;
    outboard_file.sync_all()?;
    staged.hash = root;
    staged.size = size;
    Ok(Ingested::Staged(staged))
}

/// Bytes per buffer handed to the writer thread.
const WRITE_BLOCK: usize = 1 << 20;
/// Buffers in flight to the writer thread (bounds ingest memory to about 8 MiB).
const WRITE_QUEUE: usize = 8;
/// The writer starts writeback of what it has written every this many bytes.
const FLUSH_EVERY: u64 = 32 << 20;

fn writer_gone() -> io::Error {
    io::Error::other("blob writer stopped early")
}

/// Reads until `buf` is full or the input ends; returns the bytes read.
fn read_full(reader: &mut impl Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        match reader.read(&mut buf[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        }
    }
    Ok(filled)
}

/// Writes buffers in order, flushing to disk as it goes, and fsyncs at the end.
fn write_behind(
    mut file: File,
    buffers: std::sync::mpsc::Receiver<Vec<u8>>,
    recycle: std::sync::mpsc::Sender<Vec<u8>>,
) -> io::Result<File> {
    let mut since_flush = 0u64;
    for buf in buffers {
        file.write_all(&buf)?;
        since_flush += buf.len() as u64;
        if since_flush >= FLUSH_EVERY {
            file.sync_data()?;
            since_flush = 0;
        }
        let _ = recycle.send(buf);
    }
    file.sync_all()?;
    Ok(file)
}

fn temp_file(dir: &Path, suffix: &str) -> io::Result<(PathBuf, File)> {
    fs::create_dir_all(dir)?;
    loop {
        let mut r = [0u8; 8];
        getrandom::fill(&mut r).map_err(|e| io::Error::other(e.to_string()))?;
        let path = dir.join(format!("{}.{suffix}", hex::encode(r)));
        match fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&path)
        {
            Ok(f) => return Ok((path, f)),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(e),
        }
    }
}

/// Hashes a stream into non-root chaining values of its chunk groups.
#[derive(Default)]
struct ChunkGroupHasher {
    current: Option<blake3::Hasher>,
    in_group: usize,
    groups: u64,
    leaves: Vec<blake3::Hash>,
}

impl ChunkGroupHasher {
    fn update(&mut self, mut data: &[u8]) {
        while !data.is_empty() {
            let take = (CHUNK_GROUP_BYTES - self.in_group).min(data.len());
            let hasher = self.current.get_or_insert_with(|| {
                let mut h = blake3::Hasher::new();
                h.set_input_offset(self.groups * CHUNK_GROUP_BYTES as u64);
                h
            });
            hasher.update(&data[..take]);
            self.in_group += take;
            data = &data[take..];
            if self.in_group == CHUNK_GROUP_BYTES {
                self.close_group();
            }
        }
    }

    fn close_group(&mut self) {
        if let Some(h) = self.current.take() {
            self.leaves.push(blake3::Hash::from(h.finalize_non_root()));
            self.groups += 1;
            self.in_group = 0;
        }
    }

    /// Total size and the chaining values of all groups (the last may be partial).
    /// Only called with more than one chunk group of input.
    fn finish(mut self) -> (u64, Vec<blake3::Hash>) {
        let size = self.groups * CHUNK_GROUP_BYTES as u64 + self.in_group as u64;
        self.close_group();
        (size, self.leaves)
    }
}

/// Writes the post-order outboard of a tree from its leaf chaining values, returning the root.
fn write_post_order_outboard(
    tree: BaoTree,
    leaves: &[blake3::Hash],
    out: &mut impl Write,
) -> io::Result<Hash> {
    let mut stack: Vec<blake3::Hash> = Vec::with_capacity(64);
    let mut next_leaf = leaves.iter();
    let broken = || io::Error::other("outboard construction out of step with the tree");
    for item in tree.post_order_chunks_iter() {
        match item {
            BaoChunk::Parent { is_root, .. } => {
                let right = stack.pop().ok_or_else(broken)?;
                let left = stack.pop().ok_or_else(broken)?;
                out.write_all(left.as_bytes())?;
                out.write_all(right.as_bytes())?;
                stack.push(parent_cv(&left, &right, is_root));
            }
            BaoChunk::Leaf { .. } => stack.push(*next_leaf.next().ok_or_else(broken)?),
        }
    }
    match (stack.pop(), stack.is_empty(), next_leaf.next()) {
        (Some(root), true, None) => Ok(root.into()),
        _ => Err(broken()),
    }
}

fn parent_cv(left: &blake3::Hash, right: &blake3::Hash, is_root: bool) -> blake3::Hash {
    if is_root {
        merge_subtrees_root(left.as_bytes(), right.as_bytes(), Mode::Hash)
    } else {
        blake3::Hash::from(merge_subtrees_non_root(
            left.as_bytes(),
            right.as_bytes(),
            Mode::Hash,
        ))
    }
}

fn leaf_cv(start_chunk: u64, data: &[u8], is_root: bool) -> blake3::Hash {
    if is_root {
        blake3::hash(data)
    } else {
        let mut h = blake3::Hasher::new();
        h.set_input_offset(start_chunk * 1024);
        h.update(data);
        blake3::Hash::from(h.finalize_non_root())
    }
}

/// Reads a blob, verifying each chunk group before returning its bytes.
pub struct VerifyingReader {
    hash: Hash,
    location: String,
    source: Source,
    buf: Vec<u8>,
    pos: usize,
    done_bytes: u64,
    /// A read failed: the tree walk has moved past the group, so every later read fails too
    /// (rather than look like an early end).
    failed: bool,
    /// Bytes of the first chunk group before the first byte wanted.
    skip: usize,
}

enum Source {
    Inline,
    Tree {
        data: Box<dyn RandomAccess>,
        outboard: PostOrderOutboard<DynReadAt>,
        iter: ResponseIter,
        stack: Vec<blake3::Hash>,
    },
}

impl fmt::Debug for VerifyingReader {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("VerifyingReader")
            .field("hash", &self.hash)
            .field("location", &self.location)
            .field("done_bytes", &self.done_bytes)
            .finish()
    }
}

impl VerifyingReader {
    /// A reader over inline bytes, checked whole before anything is returned.
    pub fn inline(hash: Hash, bytes: Vec<u8>) -> Result<VerifyingReader, CorruptBlob> {
        if Hash::of(&bytes) != hash {
            return Err(CorruptBlob {
                hash,
                offset: 0,
                location: "inline".into(),
            });
        }
        Ok(VerifyingReader {
            hash,
            location: "inline".into(),
            source: Source::Inline,
            buf: bytes,
            pos: 0,
            done_bytes: 0,
            failed: false,
            skip: 0,
        })
    }

    /// A reader over a large blob's bytes and outboard.
    pub fn tree(
        hash: Hash,
        size: u64,
        data: Box<dyn RandomAccess>,
        outboard: Box<dyn RandomAccess>,
        location: String,
    ) -> VerifyingReader {
        let tree = BaoTree::new(size, BLOCK_SIZE);
        VerifyingReader {
            hash,
            location,
            source: Source::Tree {
                data,
                outboard: PostOrderOutboard {
                    root: hash.into(),
                    tree,
                    data: DynReadAt(outboard),
                },
                iter: ResponseIter::new(tree, ChunkRanges::all()),
                stack: vec![hash.into()],
            },
            buf: Vec::new(),
            pos: 0,
            done_bytes: 0,
            failed: false,
            skip: 0,
        }
    }

    /// A reader over bytes `start..` of a large blob that reads and verifies only the chunk
    /// groups from the one holding `start` to the one holding `end - 1` (with the outboard
    /// nodes on their paths from the root); its first byte is byte `start`. The caller stops
    /// at `end`.
    pub fn tree_range(
        hash: Hash,
        size: u64,
        data: Box<dyn RandomAccess>,
        outboard: Box<dyn RandomAccess>,
        location: String,
        start: u64,
        end: u64,
    ) -> VerifyingReader {
        let group = CHUNK_GROUP_BYTES as u64;
        let first = start.min(size) / group;
        let last = end.min(size).div_ceil(group).max(first + 1);
        let chunks_per_group = 1u64 << CHUNK_GROUP_LOG;
        // A range that reaches the last group is open-ended: bao-tree reads a closed range
        // past the end of the data as a request for the last chunk alone.
        let ranges = if last.saturating_mul(group) >= size {
            ChunkRanges::from(ChunkNum(first * chunks_per_group)..)
        } else {
            ChunkRanges::from(ChunkNum(first * chunks_per_group)..ChunkNum(last * chunks_per_group))
        };
        let mut r = VerifyingReader::tree(hash, size, data, outboard, location);
        if let Source::Tree { iter, .. } = &mut r.source {
            *iter = ResponseIter::new(BaoTree::new(size, BLOCK_SIZE), ranges);
        }
        r.skip = (start.min(size) - first * group) as usize;
        r
    }

    /// The blob being read.
    pub fn hash(&self) -> Hash {
        self.hash
    }

    fn corrupt(&self, offset: u64) -> io::Error {
        CorruptBlob {
            hash: self.hash,
            offset,
            location: self.location.clone(),
        }
        .into()
    }

    /// Loads and verifies the next chunk group into `buf`; false at the end.
    fn fill(&mut self) -> io::Result<bool> {
        let Source::Tree {
            data,
            outboard,
            iter,
            stack,
        } = &mut self.source
        else {
            return Ok(false);
        };
        loop {
            let Some(item) = iter.next() else {
                return Ok(false);
            };
            match item {
                BaoChunk::Parent {
                    node,
                    is_root,
                    left,
                    right,
                    ..
                } => {
                    let offset = node.chunk_range().start.to_bytes();
                    let pair = outboard.load(node);
                    let expected = stack.pop();
                    let (l, r) = match (pair, expected) {
                        (Ok(Some(pair)), Some(expected))
                            if parent_cv(&pair.0, &pair.1, is_root) == expected =>
                        {
                            pair
                        }
                        (Err(e), _) if e.kind() != io::ErrorKind::UnexpectedEof => return Err(e),
                        _ => {
                            return Err(CorruptBlob {
                                hash: self.hash,
                                offset,
                                location: self.location.clone(),
                            }
                            .into())
                        }
                    };
                    if right {
                        stack.push(r);
                    }
                    if left {
                        stack.push(l);
                    }
                }
                BaoChunk::Leaf {
                    start_chunk,
                    size,
                    is_root,
                    ..
                } => {
                    let offset = start_chunk.to_bytes();
                    self.buf.resize(size, 0);
                    let mut filled = 0;
                    while filled < size {
                        let n = data.read_at(offset + filled as u64, &mut self.buf[filled..])?;
                        if n == 0 {
                            break;
                        }
                        filled += n;
                    }
                    let expected = stack.pop();
                    if filled < size || Some(leaf_cv(start_chunk.0, &self.buf, is_root)) != expected
                    {
                        self.buf.clear();
                        return Err(self.corrupt(offset));
                    }
                    self.pos = 0;
                    return Ok(true);
                }
            }
        }
    }
}

impl Read for VerifyingReader {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        if self.failed {
            return Err(io::Error::other(format!(
                "reading blob {} failed earlier",
                self.hash
            )));
        }
        while self.pos >= self.buf.len() {
            match self.fill() {
                Ok(true) => {}
                Ok(false) => return Ok(0),
                Err(e) => {
                    self.failed = true;
                    return Err(e);
                }
            }
            if self.skip > 0 {
                let k = self.skip.min(self.buf.len());
                self.pos = k;
                self.skip -= k;
            }
        }
        let n = (self.buf.len() - self.pos).min(out.len());
        out[..n].copy_from_slice(&self.buf[self.pos..self.pos + n]);
        self.pos += n;
        self.done_bytes += n as u64;
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn data(len: usize) -> Vec<u8> {
        (0..len).map(|i| (i * 31 % 251) as u8).collect()
    }

    fn stage_and_install(len: usize) -> (tempfile::TempDir, LocalFiles, Hash, u64) {
        let dir = tempfile::tempdir().unwrap();
        let files = LocalFiles::new(dir.path().join("blobs")).unwrap();
        let bytes = data(len);
        match ingest(&bytes[..], &dir.path().join("tmp")).unwrap() {
            Ingested::Staged(s) => {
                let (hash, size) = (s.hash, s.size);
                assert_eq!(hash, Hash::of(&bytes), "root of a {len} byte blob");
                files.install(s).unwrap();
                (dir, files, hash, size)
            }
            Ingested::Inline { .. } => panic!("{len} bytes should be staged"),
        }
    }

    fn read_all(files: &LocalFiles, hash: Hash, size: u64) -> io::Result<Vec<u8>> {
        let (d, o) = files.open(&hash).unwrap();
        let mut r = VerifyingReader::tree(hash, size, d, o, files.describe(&hash));
        let mut out = Vec::new();
        r.read_to_end(&mut out)?;
        Ok(out)
    }

    #[test]
    fn small_input_is_inline() {
        let dir = tempfile::tempdir().unwrap();
        for len in [0, 1, INLINE_MAX as usize] {
            let bytes = data(len);
            match ingest(&bytes[..], dir.path()).unwrap() {
                Ingested::Inline { hash, bytes: b } => {
                    assert_eq!(hash, Hash::of(&bytes));
                    assert_eq!(b, bytes);
                }
                Ingested::Staged(_) => panic!("{len} bytes should be inline"),
            }
        }
    }

    #[test]
    fn large_blobs_hash_to_plain_blake3_and_read_back() {
        for len in [
            INLINE_MAX as usize + 1,
            2 * CHUNK_GROUP_BYTES,
            3 * CHUNK_GROUP_BYTES + 5,
            1_000_003,
        ] {
            let (_dir, files, hash, size) = stage_and_install(len);
            assert_eq!(size, len as u64);
            assert_eq!(read_all(&files, hash, size).unwrap(), data(len));
        }
    }

    #[test]
    fn a_flipped_byte_fails_at_its_chunk_group() {
        let len = 10 * CHUNK_GROUP_BYTES + 100;
        let (_dir, files, hash, size) = stage_and_install(len);
        let path = files.data_path(&hash);
        let mut bytes = fs::read(&path).unwrap();
        bytes[5 * CHUNK_GROUP_BYTES + 7] ^= 0x40;
        fs::write(&path, &bytes).unwrap();
        let (d, o) = files.open(&hash).unwrap();
        let mut r = VerifyingReader::tree(hash, size, d, o, files.describe(&hash));
        let mut out = Vec::new();
        let err = r.read_to_end(&mut out).unwrap_err();
        let corrupt = as_corrupt(&err).expect("corruption error");
        assert_eq!(corrupt.hash, hash);
        assert_eq!(corrupt.offset, 5 * CHUNK_GROUP_BYTES as u64);
        // Only the good groups before the bad one were handed out.
        assert_eq!(out.len(), 5 * CHUNK_GROUP_BYTES);
        assert!(err.to_string().contains(&hash.to_hex()));
    }

    #[test]
    fn ranges_at_the_end_of_blobs_of_many_sizes() {
        for len in [
            200_000usize,
            16 * CHUNK_GROUP_BYTES,
            1536 * CHUNK_GROUP_BYTES,
            3 * CHUNK_GROUP_BYTES + 1,
        ] {
            let (_dir, files, hash, size) = stage_and_install(len);
            let bytes = data(len);
            for (start, end) in [(0, size), (size - 1, size), (size / 2, size), (0, size - 1)] {
                let (d, o) = files.open(&hash).unwrap();
                let r = VerifyingReader::tree_range(hash, size, d, o, String::new(), start, end);
                let mut out = Vec::new();
                r.take(end - start)
                    .read_to_end(&mut out)
                    .unwrap_or_else(|e| panic!("{len}: {start}..{end}: {e}"));
                assert_eq!(
                    out,
                    bytes[start as usize..end as usize],
                    "{len}: {start}..{end}"
                );
            }
        }
    }

    #[test]
    fn a_range_reads_and_verifies_only_its_groups() {
        let len = 10 * CHUNK_GROUP_BYTES + 100;
        let (_dir, files, hash, size) = stage_and_install(len);
        let bytes = data(len);
        let g = CHUNK_GROUP_BYTES as u64;
        let read = |files: &LocalFiles, start: u64, end: u64| -> io::Result<Vec<u8>> {
            let (d, o) = files.open(&hash).unwrap();
            let r = VerifyingReader::tree_range(hash, size, d, o, String::new(), start, end);
            let mut out = Vec::new();
            r.take(end - start).read_to_end(&mut out)?;
            Ok(out)
        };
        for (start, end) in [
            (0, 1),
            (5, g + 7),
            (3 * g, 4 * g),
            (size - 1, size),
            (g - 1, size),
        ] {
            assert_eq!(
                read(&files, start, end).unwrap(),
                bytes[start as usize..end as usize],
                "{start}..{end}"
            );
        }
        // Damage in group 2: a range in groups 5..7 never reads it; one across it fails.
        let path = files.describe(&hash);
        let mut damaged = fs::read(&path).unwrap();
        damaged[2 * CHUNK_GROUP_BYTES + 9] ^= 1;
        fs::write(&path, &damaged).unwrap();
        assert_eq!(
            read(&files, 5 * g + 1, 7 * g).unwrap(),
            bytes[(5 * g + 1) as usize..(7 * g) as usize]
        );
        let err = read(&files, g, 3 * g).unwrap_err();
        assert_eq!(as_corrupt(&err).unwrap().offset, 2 * g);
    }

    #[test]
    fn truncated_data_or_outboard_is_corruption() {
        let len = 4 * CHUNK_GROUP_BYTES;
        let (_dir, files, hash, size) = stage_and_install(len);
        let ob = files.outboard_path(&hash);
        let saved = fs::read(&ob).unwrap();
        fs::write(&ob, &saved[..saved.len() - 1]).unwrap();
        assert!(as_corrupt(&read_all(&files, hash, size).unwrap_err()).is_some());
        fs::write(&ob, &saved).unwrap();
        let path = files.data_path(&hash);
        let bytes = fs::read(&path).unwrap();
        fs::write(&path, &bytes[..len - 10]).unwrap();
        assert!(as_corrupt(&read_all(&files, hash, size).unwrap_err()).is_some());
    }

    #[test]
    fn inline_reader_checks_before_returning() {
        let bytes = data(100);
        let hash = Hash::of(&bytes);
        let mut wrong = bytes.clone();
        wrong[3] ^= 1;
        assert!(VerifyingReader::inline(hash, wrong).is_err());
        let mut out = Vec::new();
        VerifyingReader::inline(hash, bytes.clone())
            .unwrap()
            .read_to_end(&mut out)
            .unwrap();
        assert_eq!(out, bytes);
    }

    #[test]
    fn outboard_matches_bao_tree() {
        let len = 7 * CHUNK_GROUP_BYTES + 3;
        let bytes = data(len);
        let tree = BaoTree::new(len as u64, BLOCK_SIZE);
        let mut theirs = Vec::new();
        let root = bao_tree::io::sync::outboard_post_order(&bytes[..], tree, &mut theirs).unwrap();
        let (_dir, files, hash, _) = stage_and_install(len);
        assert_eq!(Hash::from(root), hash);
        assert_eq!(fs::read(files.outboard_path(&hash)).unwrap(), theirs);
    }
}
