//! Round trips and bytes of `cairn/sync/2` per scenario, from the simulated pair (virtual
//! time, so the figures are exact counts, not timings): a hub with N entries, a spoke that has
//! pulled it, then d differences (60% new entries, 40% deletions) and a pull.
//!
//! `sync-sim --entries 100000 --diffs 0,1,100,10000`

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::time::Instant;

use anyhow::Result;
use cairn_store::{Ecosystem, NewFile, NewPackage, Store, StoreOptions};
use cairn_sync::proto::{Authorizer, GuardRail, InitiatorConfig};
use cairn_sync::sim::{self, Link};
use cairn_sync::wire::Mode;
use clap::Parser;

#[derive(Parser, Debug)]
struct Args {
    /// Entries in the feed.
    #[arg(long, default_value_t = 100_000)]
    entries: u64,
    /// Differences to test, comma-separated.
    #[arg(long, value_delimiter = ',', default_values_t = vec![0u64, 1, 100, 10_000])]
    diffs: Vec<u64>,
    /// Scratch directory.
    #[arg(long, default_value = "bench-scratch/sync-sim")]
    dir: std::path::PathBuf,
}

struct Open;
impl Authorizer for Open {
    fn authorize(&self, _: &str, _: &str, _: Mode) -> Result<(), cairn_sync::proto::Refusal> {
        Ok(())
    }
}

fn opts() -> StoreOptions {
    StoreOptions {
        sync_writes: false,
        ..StoreOptions::default()
    }
}

fn publish(s: &Store, from: u64, to: u64) -> Result<()> {
    let mut i = from;
    while i < to {
        let end = (i + 5000).min(to);
        let mut batch = Vec::new();
        for j in i..end {
            let b = s.put_blob(&j.to_le_bytes()[..])?;
            batch.push(NewPackage {
                name: format!("p{}", j % 997),
                version: format!("1.{j}"),
                files: vec![NewFile {
                    name: format!("p-{j}.tgz"),
                    blob: b.hash,
                    size: b.size,
                    digests: BTreeMap::new(),
                }],
                metadata: BTreeMap::new(),
            });
        }
        s.publish_many("demo", batch)?;
        i = end;
    }
    Ok(())
}

fn pull(spoke: &Store, hub: &Store) -> sim::Outcome {
    let config = InitiatorConfig {
        // The simulator names the responder's key itself.
        peer: hub.identity().public_key(),
        now_secs: cairn_sync::transport::unix_secs(),
        limits: cairn_sync::proto::Limits::default(),
        token: String::new(),
        mode: Mode::Pull,
        feeds: vec!["demo".into()],
        since: HashMap::new(),
        filters: Default::default(),
        guard: GuardRail {
            allow: true,
            ..GuardRail::default()
        },
        dry_run: false,
        notify: false,
        max_rate: 0,
    };
    sim::run(
        spoke,
        hub,
        config,
        &Open,
        Link {
            rtt_us: 200_000,
            bandwidth_bps: 200_000_000,
            loss: 0.0,
            seed: 1,
            ..Link::default()
        },
    )
}

fn copy_dir(from: &Path, to: &Path) -> Result<()> {
    std::fs::create_dir_all(to)?;
    for e in std::fs::read_dir(from)? {
        let e = e?;
        if e.file_type()?.is_dir() {
            copy_dir(&e.path(), &to.join(e.file_name()))?;
        } else {
            std::fs::copy(e.path(), to.join(e.file_name()))?;
        }
    }
    Ok(())
}

fn main() -> Result<()> {
    let args = Args::parse();
    if args.dir.exists() {
        std::fs::remove_dir_all(&args.dir)?;
    }
    let (hub_dir, spoke_dir) = (args.dir.join("hub"), args.dir.join("spoke"));
    let t = Instant::now();
    {
        let hub = Store::init(&hub_dir, opts())?;
        let spoke = Store::init(&spoke_dir, opts())?;
        hub.trust_add("*", &spoke.identity().public_key())?;
        spoke.trust_add("*", &hub.identity().public_key())?;
        hub.create_feed("demo", Ecosystem::Raw)?;
        spoke.create_feed("demo", Ecosystem::Raw)?;
        publish(&hub, 0, args.entries)?;
        let o = pull(&spoke, &hub);
        anyhow::ensure!(
            o.initiator_error.is_none(),
            "initial pull failed: {:?}",
            o.initiator_error
        );
    }
    eprintln!(
        "built hub and spoke of {} entries in {:?}",
        args.entries,
        t.elapsed()
    );
    println!("| N | d | round trips | bytes spoke->hub | bytes hub->spoke | payload | protocol bytes | protocol bytes per difference | path |");
    println!("| --- | --- | --- | --- | --- | --- | --- | --- | --- |");
    for &d in &args.diffs {
        let run_dir = args.dir.join(format!("d{d}"));
        copy_dir(&hub_dir, &run_dir.join("hub"))?;
        copy_dir(&spoke_dir, &run_dir.join("spoke"))?;
        let hub = Store::open(&run_dir.join("hub"), opts())?;
        let spoke = Store::open(&run_dir.join("spoke"), opts())?;
        let adds = d * 6 / 10;
        publish(&hub, 10_000_000, 10_000_000 + adds)?;
        for i in 0..(d - adds) {
            hub.delete("demo", &format!("p{}", i % 997), &format!("1.{i}"))?;
        }
        let o = pull(&spoke, &hub);
        anyhow::ensure!(
            o.initiator_error.is_none() && o.initiator[0].converged(),
            "pull did not converge: {o:?}"
        );
        let per = if d == 0 {
            "-".to_string()
        } else {
            format!("{:.0}", o.protocol_bytes() as f64 / d as f64)
        };
        println!(
            "| {} | {d} | {} | {} | {} | {} | {} | {per} | {:?} |",
            args.entries,
            o.round_trips,
            o.bytes[0],
            o.bytes[1],
            o.payload_bytes[0] + o.payload_bytes[1],
            o.protocol_bytes(),
            o.initiator[0].path
        );
        drop((hub, spoke));
        std::fs::remove_dir_all(&run_dir)?;
    }
    std::fs::remove_dir_all(&args.dir)?;
    Ok(())
}
