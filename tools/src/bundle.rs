//! `cairn export` and `cairn import`: signed air-gap bundles (see `cairn_store::bundle`).

use std::collections::HashMap;
use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use cairn_store::bundle::{self, ExportOptions};
use cairn_store::{Cursor, Store};

/// The longest a bundle's checkpoints may stay valid (ten years).
const MAX_VALID_DAYS: u64 = 3650;

/// `FEED=EPOCH:SEQ`, the cursor as `cairn root` prints it.
pub(crate) fn parse_since(s: &str) -> Result<(String, Cursor), String> {
    let bad = || format!("`{s}` is not FEED=EPOCH:SEQ (the cursor `cairn root FEED` prints)");
    let (feed, cursor) = s.split_once('=').ok_or_else(bad)?;
    let (epoch, seq) = cursor.split_once(':').ok_or_else(bad)?;
    Ok((
        feed.to_owned(),
        Cursor {
            epoch: u64::from_str_radix(epoch, 16).map_err(|_| bad())?,
            seq: seq.parse().map_err(|_| bad())?,
        },
    ))
}

/// What `cairn export` was asked for.
pub(crate) struct Export {
    pub output: PathBuf,
    pub feeds: Vec<String>,
    pub since_bundle: Option<PathBuf>,
    pub since: Vec<(String, Cursor)>,
    pub valid_days: u64,
    pub json: bool,
}

pub(crate) fn export(store: &Store, out: &mut dyn Write, e: Export) -> Result<()> {
    let mut since = HashMap::new();
    if let Some(prev) = &e.since_bundle {
        let h = bundle::read_header(prev)
            .with_context(|| format!("reading the header of {}", prev.display()))?;
        if h.exporter != *store.identity().public_key().as_bytes() {
            bail!(
                "{} was written by another instance; an incremental bundle continues one of this instance's",
                prev.display()
            );
        }
        since.extend(h.feeds.into_iter().map(|s| (s.name, s.to)));
    }
    since.extend(e.since);
    let opts = ExportOptions {
        feeds: e.feeds,
        since,
        ttl_secs: e.valid_days.clamp(1, MAX_VALID_DAYS) * 86_400,
    };
    // Written beside the target and renamed, so an interrupted export leaves no bundle.
    let tmp = e.output.with_file_name(format!(
        ".{}.partial",
        e.output
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or("cairn-bundle")
    ));
    let result = (|| -> Result<bundle::ExportReport> {
        let file = File::create(&tmp).with_context(|| format!("creating {}", tmp.display()))?;
        let mut w = BufWriter::with_capacity(1 << 20, file);
        let r = store.export_bundle(&mut w, &opts)?;
        let file = w.into_inner().map_err(|e| e.into_error())?;
        file.sync_all()?;
        std::fs::rename(&tmp, &e.output)
            .with_context(|| format!("writing {}", e.output.display()))?;
        if let Some(dir) = e.output.parent().filter(|d| !d.as_os_str().is_empty()) {
            cairn_store::blob::sync_dir(dir)?;
        }
        Ok(r)
    })();
    let r = match result {
        Ok(r) => r,
        Err(err) => {
            let _ = std::fs::remove_file(&tmp);
            return Err(err);
        }
    };
    if e.json {
        writeln!(out, "{}", serde_json::to_string_pretty(&r)?)?;
        return Ok(());
    }
    writeln!(
        out,
        "wrote bundle {} to {}: {} bytes, {} blobs ({} bytes of files)",
        r.id,
        e.output.display(),
        r.bytes,
        r.header.blobs,
        r.header.blob_bytes
    )?;
    for s in &r.header.feeds {
        let what = match s.since {
            Some(c) => format!("changes {c} -> {}", s.to),
            None => format!("full at {}", s.to),
        };
        writeln!(
            out,
            "  {}: {what}, {} documents, {} removals",
            s.name, s.docs, s.removes
        )?;
    }
    for (feed, why) in &r.full_instead {
        writeln!(out, "  {feed} is full: {why}")?;
    }
    Ok(())
}

pub(crate) fn import(
    store: &Store,
    out: &mut dyn Write,
    path: &Path,
    check: bool,
    json: bool,
    progress: &mut dyn FnMut(u64, u64),
) -> Result<()> {
    let r = if check {
        store.check_bundle(path)?
    } else {
        store.import_bundle(path, progress)?
    };
    if json {
        writeln!(out, "{}", serde_json::to_string_pretty(&r)?)?;
        return Ok(());
    }
    writeln!(
        out,
        "{} bundle {} of {} (written at {}): {} documents, {} blobs",
        if r.applied { "imported" } else { "checked" },
        r.id,
        &r.exporter[..12],
        r.created,
        r.docs,
        r.blobs
    )?;
    for f in &r.feeds {
        writeln!(
            out,
            "  {}: {}{} at seq {}{}",
            f.feed,
            if f.incremental { "incremental" } else { "full" },
            if f.created { ", feed created" } else { "" },
            f.seq,
            if r.applied {
                format!(", {} entries changed", f.changed)
            } else {
                String::new()
            }
        )?;
    }
    if r.applied {
        writeln!(
            out,
            "  blobs: {} stored ({} bytes), {} already here",
            r.blobs_stored, r.bytes_stored, r.blobs_held
        )?;
    } else {
        writeln!(out, "  every check passed; nothing was applied")?;
    }
    Ok(())
}
