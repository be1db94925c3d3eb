//! Store benchmarks. `store-bench all` runs every one; each prints medians and the baseline
//! measured in the same run.
//!
//! - `ingest`: 1 GiB of large files through `Store::put_blob` against `cp` of the same files
//!   to the same disk (and `cp` followed by `sync`, since the store fsyncs what it writes).
//! - `publish`: 20,000 small packages (one 10 KiB file each) published one at a time by one
//!   thread, by four threads, and in batches of 100; the baseline is signing alone.
//! - `merkle`: per-write cost of a publish into a feed of 1,000 entries and one of 1,000,000
//!   (the difference is what a larger trie costs), and the cost of reading the root.
//! - `verify`: 20,000 received manifests checked as a replica checks them (decode, signature,
//!   payload): one at a time (the baseline), and as one batch with each signer's key
//!   decompressed once, on one thread and on every core, and in batches of 100 on every core
//!   (a DOCS frame of small packages holds about that many).
//! - `gc`: 10,000 unreferenced blobs of 20 KiB collected while another thread publishes small
//!   versions one at a time: the longest hold of the write lock gc reports, and the publish
//!   latency during gc against the same publisher with no gc (the baseline).

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use cairn_benches::{fill_bytes, median, mib_per_s};
use cairn_store::doc::{Manifest, PAYLOAD_VERSION};
use cairn_store::{Ecosystem, NewFile, NewPackage, SignedDocument, Store, StoreOptions};
use clap::{Parser, ValueEnum};

#[derive(Parser, Debug)]
struct Args {
    /// Which benchmark.
    #[arg(value_enum)]
    which: Which,
    /// Scratch directory (on the disk under test).
    #[arg(long, default_value = "bench-scratch")]
    dir: PathBuf,
    /// Repetitions per measurement.
    #[arg(long, default_value_t = 3)]
    runs: usize,
    /// Entries in the large feed of the merkle benchmark.
    #[arg(long, default_value_t = 1_000_000)]
    merkle_entries: u64,
    /// Write results as JSON to this file too.
    #[arg(long)]
    json: Option<PathBuf>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum Which {
    Ingest,
    Publish,
    Merkle,
    Verify,
    Gc,
    All,
}

fn main() -> Result<()> {
    let args = Args::parse();
    fs::create_dir_all(&args.dir).with_context(|| format!("creating {}", args.dir.display()))?;
    let mut results = serde_json::Map::new();
    if matches!(args.which, Which::Ingest | Which::All) {
        results.insert("ingest".into(), ingest(&args)?);
    }
    if matches!(args.which, Which::Publish | Which::All) {
        results.insert("publish".into(), publish(&args)?);
    }
    if matches!(args.which, Which::Merkle | Which::All) {
        results.insert("merkle".into(), merkle(&args)?);
    }
    if matches!(args.which, Which::Verify | Which::All) {
        results.insert("verify".into(), verify(&args)?);
    }
    if matches!(args.which, Which::Gc | Which::All) {
        results.insert("gc".into(), gc(&args)?);
    }
    if let Some(path) = &args.json {
        fs::write(path, serde_json::to_string_pretty(&results)?)?;
    }
    Ok(())
}

fn scratch(args: &Args, name: &str) -> Result<PathBuf> {
    let p = args.dir.join(name);
    if p.exists() {
        fs::remove_dir_all(&p)?;
    }
    fs::create_dir_all(&p)?;
    Ok(p)
}

fn sync_all() -> Result<()> {
    if !Command::new("sync").status()?.success() {
        bail!("sync failed");
    }
    Ok(())
}

fn ingest(args: &Args) -> Result<serde_json::Value> {
    const FILES: usize = 8;
    const SIZE: usize = 128 << 20;
    let total = (FILES * SIZE) as u64;
    let src = scratch(args, "ingest-src")?;
    let mut buf = vec![0u8; SIZE];
    let mut inputs = Vec::new();
    for i in 0..FILES {
        fill_bytes(i as u64 + 1, &mut buf);
        let p = src.join(format!("file{i}.bin"));
        fs::write(&p, &buf)?;
        inputs.push(p);
    }
    drop(buf);
    sync_all()?;
    let (mut cairn, mut cp, mut cp_sync) = (Vec::new(), Vec::new(), Vec::new());
    for run in 0..args.runs {
        // cp, then cp + sync, then the store; each into a fresh directory on the same disk.
        for with_sync in [false, true] {
            let dst = scratch(args, "ingest-cp")?;
            sync_all()?;
            let t = Instant::now();
            for p in &inputs {
                let ok = Command::new("cp").arg(p).arg(&dst).status()?.success();
                if !ok {
                    bail!("cp failed");
                }
            }
            if with_sync {
                sync_all()?;
                cp_sync.push(t.elapsed());
            } else {
                cp.push(t.elapsed());
            }
            fs::remove_dir_all(&dst)?;
        }
        let dst = scratch(args, "ingest-cairn")?;
        let store = Store::init(&dst, StoreOptions::default())?;
        sync_all()?;
        let t = Instant::now();
        for p in &inputs {
            let f = fs::File::open(p)?;
            let b = store.put_blob(f)?;
            if b.size != SIZE as u64 {
                bail!("stored {} bytes of {}", b.size, SIZE);
            }
        }
        store.sync()?;
        cairn.push(t.elapsed());
        drop(store);
        fs::remove_dir_all(&dst)?;
        eprintln!(
            "ingest run {run}: cairn {:?} cp {:?} cp+sync {:?}",
            cairn[run], cp[run], cp_sync[run]
        );
    }
    fs::remove_dir_all(&src)?;
    let (c, p, ps) = (median(&cairn), median(&cp), median(&cp_sync));
    println!(
        "ingest of {FILES} x {} MiB ({} MiB), median of {} runs:",
        SIZE >> 20,
        total >> 20,
        args.runs
    );
    println!(
        "  cairn put_blob (hash, outboard, fsync) {:>8.1} MiB/s",
        mib_per_s(total, c)
    );
    println!(
        "  cp                                    {:>8.1} MiB/s",
        mib_per_s(total, p)
    );
    println!(
        "  cp + sync                             {:>8.1} MiB/s",
        mib_per_s(total, ps)
    );
    println!(
        "  ratio cairn/cp {:.2}x, cairn/(cp + sync) {:.2}x",
        p.as_secs_f64() / c.as_secs_f64(),
        ps.as_secs_f64() / c.as_secs_f64()
    );
    Ok(serde_json::json!({
        "bytes": total,
        "cairn_mib_s": mib_per_s(total, c),
        "cp_mib_s": mib_per_s(total, p),
        "cp_sync_mib_s": mib_per_s(total, ps),
    }))
}

fn small_package(store: &Store, i: u64, content: &mut [u8]) -> Result<NewPackage> {
    fill_bytes(i, content);
    let b = store.put_blob(&content[..])?;
    Ok(NewPackage {
        name: format!("pkg{}", i % 1000),
        version: format!("1.0.{i}"),
        files: vec![NewFile {
            name: format!("pkg-1.0.{i}.tar.gz"),
            blob: b.hash,
            size: b.size,
            digests: Default::default(),
        }],
        metadata: Default::default(),
    })
}

fn publish_run(dir: &Path, n: u64, threads: u64, batch: u64) -> Result<Duration> {
    let store = Store::init(dir, StoreOptions::default())?;
    store.create_feed("bench", Ecosystem::Raw)?;
    let t = Instant::now();
    std::thread::scope(|scope| -> Result<()> {
        let mut handles = Vec::new();
        for th in 0..threads {
            let store = &store;
            handles.push(scope.spawn(move || -> Result<()> {
                let mut content = vec![0u8; 10 * 1024];
                let mut pending = Vec::new();
                let mut i = th;
                while i < n {
                    pending.push(small_package(store, i, &mut content)?);
                    if pending.len() as u64 == batch {
                        store.publish_many("bench", std::mem::take(&mut pending))?;
                    }
                    i += threads;
                }
                if !pending.is_empty() {
                    store.publish_many("bench", pending)?;
                }
                Ok(())
            }));
        }
        for h in handles {
            h.join()
                .map_err(|_| anyhow::anyhow!("publisher thread panicked"))??;
        }
        Ok(())
    })?;
    let d = t.elapsed();
    if store.feed_summary("bench")?.root.count != n {
        bail!("expected {n} entries");
    }
    Ok(d)
}

fn publish(args: &Args) -> Result<serde_json::Value> {
    const N: u64 = 20_000;
    let mut out = serde_json::Map::new();
    // Baseline: what signing the manifests alone costs.
    let key = ed25519_dalek::SigningKey::from_bytes(&[7; 32]);
    let mut sign = Vec::new();
    for _ in 0..args.runs {
        let t = Instant::now();
        for i in 0..N {
            let m = bench_manifest(i, vec![]);
            SignedDocument::sign(&m, &key)?;
        }
        sign.push(t.elapsed());
    }
    let per_s = |d: Duration| N as f64 / d.as_secs_f64();
    println!(
        "publish of {N} packages (one 10 KiB file each), median of {} runs:",
        args.runs
    );
    println!(
        "  baseline: encode + sign manifests only    {:>9.0} /s",
        per_s(median(&sign))
    );
    out.insert("sign_only_per_s".into(), per_s(median(&sign)).into());
    for (label, threads, batch) in [
        ("1 thread, one publish each (fsync each)", 1, 1),
        ("4 threads, one publish each", 4, 1),
        ("1 thread, batches of 100", 1, 100),
    ] {
        let mut samples = Vec::new();
        for _ in 0..args.runs {
            let dir = scratch(args, "publish")?;
            samples.push(publish_run(&dir, N, threads, batch)?);
            fs::remove_dir_all(&dir)?;
        }
        let m = median(&samples);
        println!("  {label:<41} {:>9.0} /s  ({:?} total)", per_s(m), m);
        out.insert(
            format!("threads{threads}_batch{batch}_per_s"),
            per_s(m).into(),
        );
    }
    Ok(out.into())
}

fn fill_feed(store: &Store, from: u64, to: u64) -> Result<()> {
    let mut content = vec![0u8; 64];
    let mut i = from;
    while i < to {
        let end = (i + 2000).min(to);
        let mut batch = Vec::new();
        for j in i..end {
            batch.push(small_package(store, j, &mut content)?);
        }
        store.publish_many("bench", batch)?;
        i = end;
    }
    Ok(())
}

fn merkle(args: &Args) -> Result<serde_json::Value> {
    let mut out = serde_json::Map::new();
    println!("merkle cost, median of {} runs:", args.runs);
    for size in [1_000u64, args.merkle_entries] {
        let dir = scratch(args, "merkle")?;
        let store = Store::init(&dir, StoreOptions::default())?;
        store.create_feed("bench", Ecosystem::Raw)?;
        let t = Instant::now();
        fill_feed(&store, 0, size)?;
        eprintln!("filled {size} entries in {:?}", t.elapsed());
        // Per-write: batches of 1000 publishes on top of the feed, timed per write.
        let mut write = Vec::new();
        let mut next = size;
        for _ in 0..args.runs {
            let mut content = vec![0u8; 64];
            let batch: Vec<_> = (next..next + 1000)
                .map(|i| small_package(&store, i, &mut content))
                .collect::<Result<_>>()?;
            next += 1000;
            let t = Instant::now();
            store.publish_many("bench", batch)?;
            write.push(t.elapsed() / 1000);
        }
        // Root read: the summary a peer asks for first.
        let mut read = Vec::new();
        for _ in 0..args.runs {
            let t = Instant::now();
            for _ in 0..10_000 {
                std::hint::black_box(store.merkle_node("bench", &[])?);
            }
            read.push(t.elapsed() / 10_000);
        }
        let (w, r) = (median(&write), median(&read));
        println!("  {size:>9} entries: publish (sign + merkle + commit) {:>7.1} us/write, root read {:>6.2} us", w.as_secs_f64() * 1e6, r.as_secs_f64() * 1e6);
        out.insert(format!("n{size}_write_us"), (w.as_secs_f64() * 1e6).into());
        out.insert(
            format!("n{size}_root_read_us"),
            (r.as_secs_f64() * 1e6).into(),
        );
        drop(store);
        fs::remove_dir_all(&dir)?;
    }
    Ok(out.into())
}

/// The manifest of version `1.0.i` of one of 1,000 packages in the feed `bench`.
fn bench_manifest(i: u64, files: Vec<cairn_store::doc::FileEntry>) -> Manifest {
    Manifest {
        v: PAYLOAD_VERSION,
        feed: "bench".into(),
        ecosystem: Ecosystem::Raw,
        name: format!("pkg{}", i % 1000),
        version: format!("1.0.{i}"),
        files,
        metadata: Default::default(),
        hlc: i,
    }
}

fn verify(args: &Args) -> Result<serde_json::Value> {
    const N: u64 = 20_000;
    let key = ed25519_dalek::SigningKey::from_bytes(&[9; 32]);
    let docs: Vec<Vec<u8>> = (0..N)
        .map(|i| {
            let m = bench_manifest(
                i,
                vec![cairn_store::doc::FileEntry {
                    name: format!("pkg-1.0.{i}.tgz"),
                    blob: cairn_store::Hash::of(&i.to_le_bytes()),
                    size: 2048,
                    digests: Default::default(),
                }],
            );
            Ok(SignedDocument::sign(&m, &key)?.bytes().to_vec())
        })
        .collect::<Result<_>>()?;
    let slices: Vec<&[u8]> = docs.iter().map(Vec::as_slice).collect();
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let (mut alone, mut batch1, mut batch_all, mut frames) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for _ in 0..args.runs {
        let t = Instant::now();
        for d in &slices {
            SignedDocument::decode(d)?;
        }
        alone.push(t.elapsed());
        for (threads, out) in [(1, &mut batch1), (cores, &mut batch_all)] {
            let t = Instant::now();
            for r in SignedDocument::decode_many(&slices, threads) {
                r?;
            }
            out.push(t.elapsed());
        }
        let t = Instant::now();
        for frame in slices.chunks(100) {
            for r in SignedDocument::decode_many(frame, cores) {
                r?;
            }
        }
        frames.push(t.elapsed());
    }
    let per_s = |d: Duration| N as f64 / d.as_secs_f64();
    let (a, b1, ba, fr) = (
        median(&alone),
        median(&batch1),
        median(&batch_all),
        median(&frames),
    );
    println!(
        "verify {N} received manifests, median of {} runs:",
        args.runs
    );
    println!("  baseline: one at a time           {:>9.0} /s", per_s(a));
    println!(
        "  one batch, 1 thread               {:>9.0} /s ({:.2}x)",
        per_s(b1),
        a.as_secs_f64() / b1.as_secs_f64()
    );
    println!(
        "  one batch, {cores} threads              {:>9.0} /s ({:.2}x)",
        per_s(ba),
        a.as_secs_f64() / ba.as_secs_f64()
    );
    println!(
        "  batches of 100, {cores} threads        {:>9.0} /s ({:.2}x)",
        per_s(fr),
        a.as_secs_f64() / fr.as_secs_f64()
    );
    Ok(serde_json::json!({
        "alone_per_s": per_s(a), "batch_1_thread_per_s": per_s(b1),
        "batch_all_cores_per_s": per_s(ba), "batches_of_100_per_s": per_s(fr), "cores": cores,
    }))
}

/// Publish latencies (median, p99, max in ms) of one thread publishing small versions until
/// `stop` is set.
fn publish_latencies(
    store: &Store,
    from: u64,
    stop: &std::sync::atomic::AtomicBool,
) -> Result<(f64, f64, f64, usize)> {
    let mut content = vec![0u8; 1024];
    let mut lat = Vec::new();
    let mut i = from;
    while !stop.load(std::sync::atomic::Ordering::Relaxed) && lat.len() < 100_000 {
        let t = Instant::now();
        let p = small_package(store, i, &mut content)?;
        store.publish_many("live", vec![p])?;
        lat.push(t.elapsed());
        i += 1;
    }
    lat.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    let n = lat.len().max(1);
    Ok((
        ms(median(&lat)),
        ms(lat[(n * 99 / 100).min(lat.len().saturating_sub(1))]),
        ms(*lat.last().unwrap_or(&Duration::ZERO)),
        lat.len(),
    ))
}

fn gc(args: &Args) -> Result<serde_json::Value> {
    use std::sync::atomic::{AtomicBool, Ordering};
    const BLOBS: u64 = 10_000;
    let mut runs = Vec::new();
    for run in 0..args.runs {
        let dir = scratch(args, &format!("gc-{run}"))?;
        let store = Store::init(&dir, StoreOptions::default())?;
        store.create_feed("old", Ecosystem::Raw)?;
        store.create_feed("live", Ecosystem::Raw)?;
        let mut content = vec![0u8; 20 * 1024];
        let mut batch = Vec::new();
        for i in 0..BLOBS {
            batch.push(small_package(&store, i, &mut content)?);
            if batch.len() == 500 {
                store.publish_many("old", std::mem::take(&mut batch))?;
            }
        }
        store.delete_feed("old")?;
        sync_all()?;
        // Baseline: the publisher alone, for 3 s.
        let stop = AtomicBool::new(false);
        let base = std::thread::scope(|scope| {
            let h = scope.spawn(|| publish_latencies(&store, 1_000_000, &stop));
            std::thread::sleep(Duration::from_secs(3));
            stop.store(true, Ordering::Relaxed);
            h.join().map_err(|_| anyhow::anyhow!("publisher panicked"))
        })??;
        // The same publisher while gc runs.
        let stop = AtomicBool::new(false);
        let (during, report, gc_time) = std::thread::scope(|scope| -> Result<_> {
            let h = scope.spawn(|| publish_latencies(&store, 2_000_000, &stop));
            std::thread::sleep(Duration::from_millis(200));
            let t = Instant::now();
            let report = store.gc();
            let gc_time = t.elapsed();
            stop.store(true, Ordering::Relaxed);
            let during = h
                .join()
                .map_err(|_| anyhow::anyhow!("publisher panicked"))??;
            Ok((during, report?, gc_time))
        })?;
        if report.blobs_removed < BLOBS {
            bail!("gc removed {} of {BLOBS} blobs", report.blobs_removed);
        }
        println!(
            "gc run {run}: {} blobs in {:.2} s, longest lock hold {:.1} ms; publish ms median/p99/max alone {:.2}/{:.2}/{:.2}, during gc {:.2}/{:.2}/{:.2} ({} publishes)",
            report.blobs_removed,
            gc_time.as_secs_f64(),
            report.longest_pause_us as f64 / 1000.0,
            base.0, base.1, base.2, during.0, during.1, during.2, during.3
        );
        runs.push(serde_json::json!({
            "blobs_removed": report.blobs_removed,
            "gc_secs": gc_time.as_secs_f64(),
            "longest_pause_ms": report.longest_pause_us as f64 / 1000.0,
            "publish_alone_ms": {"median": base.0, "p99": base.1, "max": base.2},
            "publish_during_gc_ms": {"median": during.0, "p99": during.1, "max": during.2, "count": during.3},
        }));
        drop(store);
        fs::remove_dir_all(&dir)?;
    }
    Ok(serde_json::json!(runs))
}
