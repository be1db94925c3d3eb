//! `cairn`: the command line of a Cairn instance.
//!
//! Exit codes: 0 success; 1 `verify` found problems; 2 any error (bad arguments included).

use std::fs::File;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{anyhow, bail, Context, Result};
use cairn_store::admin::{Peer, Scope};
use cairn_store::doc::{Manifest, PublicKey};
use cairn_store::{Ecosystem, Store, StoreOptions, TRUST_ALL};
use clap::{CommandFactory, FromArgMatches, Parser, Subcommand};

mod bundle;
mod serve;
mod system;

#[derive(Parser, Debug)]
#[command(
    name = "cairn",
    version,
    about = "Content-addressed package store with replication"
)]
struct Cli {
    /// Data directory of the instance.
    #[arg(
        long,
        global = true,
        env = "CAIRN_DATA_DIR",
        default_value = "./cairn-data"
    )]
    data_dir: PathBuf,
    /// Configuration file (default: cairn.toml in the data directory, if present).
    #[arg(long, global = true, env = "CAIRN_CONFIG")]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Create a new instance: key pair, store and trust in its own key.
    Init,
    /// Run the instance: the QUIC replication endpoint and the configured replications
    /// (creates the instance first if the data directory has none).
    Serve,
    /// Run a configured replication now (through the running server, if there is one).
    Replicate {
        /// Replication name from the configuration.
        name: String,
        /// Print the plan (adds, deletes, bytes) without changing anything.
        #[arg(long)]
        dry_run: bool,
        /// Let the run delete more than the guard rail allows.
        #[arg(long)]
        allow_deletes: bool,
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
    },
    /// Show the instance key.
    Key {
        #[command(subcommand)]
        command: KeyCommand,
    },
    /// Manage which keys may sign documents for which feeds.
    Trust {
        #[command(subcommand)]
        command: TrustCommand,
    },
    /// Create, list and remove feeds.
    Feed {
        #[command(subcommand)]
        command: FeedCommand,
    },
    /// Publish files to a feed. Name and version come from the flags, or from the file itself
    /// for wheels, sdists, npm tarballs and .crate files.
    Push {
        /// Feed name.
        feed: String,
        /// Files to publish.
        #[arg(required = true)]
        files: Vec<PathBuf>,
        /// Package name (all files go into this package).
        #[arg(long)]
        name: Option<String>,
        /// Package version (all files go into this version).
        #[arg(long)]
        version: Option<String>,
    },
    /// List the package versions of a feed.
    Ls {
        /// Feed name.
        feed: String,
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
        /// Include deleted versions (tombstones).
        #[arg(long)]
        all: bool,
    },
    /// Write a file of a package version out, verified.
    Get {
        /// Feed name.
        feed: String,
        /// Package name.
        name: String,
        /// Version.
        version: String,
        /// File name (needed when the version has more than one file).
        file: Option<String>,
        /// Output path, or `-` for standard output.
        #[arg(short, long)]
        output: PathBuf,
    },
    /// Delete a package version (writes a signed tombstone).
    Rm {
        /// Feed name.
        feed: String,
        /// Package name.
        name: String,
        /// Version.
        version: String,
    },
    /// Copy a package version to another feed of the same type without copying its files,
    /// with a signed promotion record (it replicates with `@system`).
    Promote {
        /// The feed it is in.
        from: String,
        /// The feed it goes to.
        to: String,
        /// Package name.
        name: String,
        /// Version.
        version: String,
        /// Who promotes it, for the record.
        #[arg(long, default_value = "command line")]
        by: String,
    },
    /// Write a signed bundle for a site with no network: the feeds' documents, every blob
    /// they name and a checkpoint per feed; full, or only the changes since an earlier bundle.
    Export {
        /// The bundle file (written under a temporary name, then renamed).
        output: PathBuf,
        /// A feed to include (repeatable; `@system` for system documents). Default: every
        /// feed and `@system`.
        #[arg(long = "feed")]
        feeds: Vec<String>,
        /// Only what changed since this earlier bundle of this instance.
        #[arg(long)]
        since_bundle: Option<PathBuf>,
        /// Only what changed in FEED since a cursor, as `cairn root FEED` prints it
        /// (FEED=EPOCH:SEQ; repeatable).
        #[arg(long = "since", value_parser = bundle::parse_since)]
        since: Vec<(String, cairn_store::Cursor)>,
        /// Days the bundle's checkpoints stay valid; an import after that is refused.
        #[arg(long, default_value_t = 30)]
        valid_days: u64,
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
    },
    /// Check a bundle completely (signatures, trust, hashes, checkpoints) and apply it in one
    /// step; an interrupted import resumes, a bundle older than what is held is refused.
    Import {
        /// The bundle file.
        bundle: PathBuf,
        /// Only check it; apply nothing.
        #[arg(long)]
        check: bool,
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
    },
    /// Promotion records, newest first: of every version, of a package, or of one version.
    Promotions {
        /// Package name.
        name: Option<String>,
        /// Version.
        version: Option<String>,
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
    },
    /// Rehash every blob, check every signature, recompute every Merkle root.
    Verify {
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
    },
    /// Remove blobs no live manifest references.
    /// (Also removes this instance's tombstones once every known peer has synced past them
    /// or the horizon has passed.)
    Gc {
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
        /// Days a tombstone is kept at least (unless every known peer synced past it).
        #[arg(long, default_value_t = 30)]
        tombstone_horizon_days: u64,
    },
    /// Create, list and revoke access tokens.
    Token {
        #[command(subcommand)]
        command: TokenCommand,
    },
    /// Peers this instance replicates with, each pinned by its key.
    Peer {
        #[command(subcommand)]
        command: PeerCommand,
    },
    /// The replication log.
    Replication {
        #[command(subcommand)]
        command: ReplicationCommand,
    },
    /// Vulnerability records (OSV JSON), kept in the system set.
    Vuln {
        #[command(subcommand)]
        command: VulnCommand,
    },
    /// Kinds of assessment (Ignore, Caution, Blocked, or custom).
    AssessmentType {
        #[command(subcommand)]
        command: AssessmentTypeCommand,
    },
    /// Decisions about vulnerabilities, replicated to every site by system replication.
    Assessment {
        #[command(subcommand)]
        command: AssessmentCommand,
    },
    /// Print a feed's Merkle root, entry count and change-log cursor.
    Root {
        /// Feed name.
        feed: String,
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand, Debug)]
enum TokenCommand {
    /// Create a token; its secret is printed once.
    Create {
        /// read:FEED, publish:FEED, replicate:FEED, replicate:system, replicate:* or admin (repeatable).
        #[arg(long = "scope", required = true, value_parser = parse_scope)]
        scopes: Vec<Scope>,
        /// A note on what it is for.
        #[arg(long, default_value = "")]
        label: String,
    },
    /// List tokens (ids and scopes, never secrets).
    List,
    /// Revoke a token by id.
    Revoke {
        /// Token id.
        id: String,
    },
}

#[derive(Subcommand, Debug)]
enum PeerCommand {
    /// Add (or replace) a peer: its replication address and the key fingerprint it must present.
    Add {
        /// Local name of the peer.
        name: String,
        /// host:port of its replication endpoint.
        addr: String,
        /// Its key fingerprint, as its `cairn key show` prints.
        #[arg(long)]
        key: String,
    },
    /// List peers.
    List,
    /// Remove a peer.
    Rm {
        /// Peer name.
        name: String,
    },
}

#[derive(Subcommand, Debug)]
enum ReplicationCommand {
    /// The configured replications.
    List,
    /// Show the newest runs.
    Log {
        /// How many.
        #[arg(long, default_value_t = 20)]
        limit: usize,
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand, Debug)]
enum VulnCommand {
    /// Import OSV JSON records (one record per file, or a JSON array of records).
    Import {
        /// Files.
        #[arg(required = true)]
        files: Vec<PathBuf>,
    },
    /// List vulnerability records.
    List,
}

#[derive(Subcommand, Debug)]
enum AssessmentTypeCommand {
    /// Create or replace an assessment type.
    Create {
        /// Name.
        name: String,
        /// Downloads of affected versions are refused.
        #[arg(long)]
        blocking: bool,
        /// What it means.
        #[arg(long, default_value = "")]
        description: String,
    },
    /// List assessment types.
    List,
    /// Delete a created assessment type (a built-in one of the same name takes its place).
    Rm {
        /// Name.
        name: String,
    },
}

#[derive(Subcommand, Debug)]
enum AssessmentCommand {
    /// Record a decision about a vulnerability.
    Create {
        /// Vulnerability id (as imported).
        #[arg(long = "vuln")]
        vulnerability: String,
        /// Assessment type name.
        #[arg(long = "type")]
        assessment_type: String,
        /// Why.
        #[arg(long, default_value = "")]
        comment: String,
        /// Who decided.
        #[arg(long, default_value = "admin")]
        author: String,
        /// Days until it no longer applies.
        #[arg(long)]
        expires_days: Option<u64>,
    },
    /// List assessments.
    List {
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
    },
    /// Delete an assessment (a signed tombstone replicates the deletion).
    Rm {
        /// Assessment id.
        id: String,
    },
}

fn parse_scope(s: &str) -> Result<Scope, String> {
    s.parse()
}

#[derive(Subcommand, Debug)]
enum KeyCommand {
    /// Print the instance's public key fingerprint (what peers pin).
    Show,
    /// Move the instance to a new key: the old key signs a statement naming the new one,
    /// every document it signed is signed again, and the old key's secret is discarded.
    /// Peers that pin and trust the old key follow on their next run. Stop `cairn serve`
    /// first.
    Rotate,
}

#[derive(Subcommand, Debug)]
enum TrustCommand {
    /// Trust a key to sign for a feed (or `*` for all feeds, `@system` for system documents).
    Add {
        /// Key fingerprint as `cairn key show` prints it.
        key: String,
        /// Feed the key may sign for.
        #[arg(long, default_value = TRUST_ALL)]
        feed: String,
    },
    /// Stop trusting a key for a feed.
    Rm {
        /// Key fingerprint.
        key: String,
        /// Feed.
        #[arg(long, default_value = TRUST_ALL)]
        feed: String,
    },
    /// List trusted keys.
    List,
}

#[derive(Subcommand, Debug)]
enum FeedCommand {
    /// Create a feed.
    Create {
        /// Feed name (a-z, 0-9, '.', '_', '-').
        name: String,
        /// Feed type: raw, pypi, npm or cargo.
        #[arg(long = "type", value_parser = parse_ecosystem)]
        ecosystem: Ecosystem,
    },
    /// List feeds.
    List {
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
    },
    /// Remove a feed and its entries.
    Rm {
        /// Feed name.
        name: String,
    },
}

fn parse_ecosystem(s: &str) -> Result<Ecosystem, String> {
    s.parse()
}

/// What `cairn --version` prints after the name: the release and the replication protocol.
fn version() -> &'static str {
    let v = format!(
        "{} (replication protocol {})",
        env!("CARGO_PKG_VERSION"),
        cairn_sync::wire::PROTOCOL_VERSION
    );
    Box::leak(v.into_boxed_str())
}

/// jemalloc hands freed pages back to the system (after about 10 s). With glibc's malloc, a
/// hub that had served a release to many spokes at once kept most of the freed send buffers
/// resident for as long as it ran, pinned by small allocations made after them.
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// The allocators' settings, read from the environment when the process starts:
/// - RocksDB allocates with glibc's malloc: one arena rather than one per thread;
/// - jemalloc: two arenas, and freed pages handed back at once rather than after 10 s.
///
/// Together they take about 20 MiB off a spoke's first sync (see the README's memory
/// figures), at no measured cost to the feed server's throughput.
const ALLOCATOR_ENV: [(&str, &str); 2] = [
    ("MALLOC_ARENA_MAX", "1"),
    (
        "_RJEM_MALLOC_CONF",
        "narenas:2,dirty_decay_ms:0,muzzy_decay_ms:0",
    ),
];

/// Runs this binary again with [`ALLOCATOR_ENV`] when the first of them is not set (by the
/// user, or by this). A setting the user gave is kept; if the binary cannot be run again,
/// this one goes on as it is.
fn exec_with_allocator_settings() {
    use std::os::unix::process::CommandExt;
    if std::env::var_os(ALLOCATOR_ENV[0].0).is_some() {
        return;
    }
    let Ok(exe) = std::env::current_exe() else {
        return;
    };
    let mut args = std::env::args_os();
    let mut cmd = std::process::Command::new(exe);
    if let Some(arg0) = args.next() {
        cmd.arg0(arg0);
    }
    cmd.args(args);
    for (name, value) in ALLOCATOR_ENV {
        if std::env::var_os(name).is_none() {
            cmd.env(name, value);
        }
    }
    // Returns only if it failed.
    let _ = cmd.exec();
}

fn main() -> ExitCode {
    exec_with_allocator_settings();
    let parsed = Cli::command()
        .version(version())
        .try_get_matches()
        .and_then(|m| Cli::from_arg_matches(&m));
    let cli = match parsed {
        Ok(cli) => cli,
        Err(e) => {
            let _ = e.print();
            return if e.use_stderr() {
                ExitCode::from(2)
            } else {
                ExitCode::SUCCESS
            };
        }
    };
    tracing_subscriber::fmt()
        .with_writer(io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("CAIRN_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .init();
    match run(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(2)
        }
    }
}

/// A promotion record as the command line and the admin API show it.
fn promotion_json(p: &cairn_store::doc::Promotion) -> serde_json::Value {
    cairn_feedserver::admin::promotion_json(p)
}

/// Runs a command that needs the store, writing to `out` and `err`: the same code serves the
/// command line and a running server's control socket (which forwards the command line to
/// it). Returns the exit code.
fn run_on_store(
    store: &Store,
    command: Command,
    out: &mut dyn Write,
    err: &mut dyn Write,
    progress: &mut dyn FnMut(u64, u64),
    on_verify: &dyn Fn(&[cairn_store::Problem]),
) -> Result<u8> {
    match command {
        Command::Trust { command } => trust(store, out, command)?,
        Command::Token { command } => token(store, out, err, command)?,
        Command::Peer { command } => peer(store, out, command)?,
        Command::Feed { command } => feed(store, out, command)?,
        Command::Push {
            feed,
            files,
            name,
            version,
        } => push(store, out, &feed, &files, name, version)?,
        Command::Ls { feed, json, all } => ls(store, out, &feed, json, all)?,
        Command::Get {
            feed,
            name,
            version,
            file,
            output,
        } => get(store, out, &feed, &name, &version, file.as_deref(), &output)?,
        Command::Rm {
            feed,
            name,
            version,
        } => {
            let d = store.delete(&feed, &name, &version)?;
            writeln!(
                out,
                "deleted {name} {version} from {feed} (tombstone {})",
                d.doc
            )?;
        }
        Command::Promote {
            from,
            to,
            name,
            version,
            by,
        } => {
            let p = store.promote(&from, &to, &name, &version, &by)?;
            let what = match p.outcome {
                cairn_store::PublishOutcome::Unchanged => "already held the same files",
                _ => "holds it now",
            };
            writeln!(
                out,
                "promoted {name} {version} from {from} to {to}: {to} {what} (manifest {}); record {}",
                p.manifest, p.record.0
            )?;
        }
        Command::Promotions {
            name,
            version,
            json,
        } => {
            let all = store.promotions(name.as_deref(), version.as_deref())?;
            if json {
                let rows: Vec<serde_json::Value> = all.iter().map(promotion_json).collect();
                writeln!(out, "{}", serde_json::to_string_pretty(&rows)?)?;
            } else if all.is_empty() {
                writeln!(out, "no promotions")?;
            } else {
                for p in all {
                    writeln!(
                        out,
                        "{} {}: {} -> {} by {} at {}",
                        p.name, p.version, p.from, p.to, p.by, p.time
                    )?;
                }
            }
        }
        Command::Export {
            output,
            feeds,
            since_bundle,
            since,
            valid_days,
            json,
        } => bundle::export(
            store,
            out,
            bundle::Export {
                output,
                feeds,
                since_bundle,
                since,
                valid_days,
                json,
            },
        )?,
        Command::Import {
            bundle: path,
            check,
            json,
        } => bundle::import(store, out, &path, check, json, progress)?,
        Command::Verify { json } => return verify(store, out, json, progress, on_verify),
        Command::Gc {
            json,
            tombstone_horizon_days,
        } => {
            let r = store.gc_with(tombstone_horizon_days.saturating_mul(86_400_000))?;
            if json {
                writeln!(out, "{}", serde_json::to_string_pretty(&r)?)?;
            } else {
                writeln!(
                    out,
                    "removed {} blobs ({} bytes), {} orphan files, {} documents, {} tombstones, {} interrupted transfers; {} bytes of the database's blob files given back; {} blobs live{}",
                    r.blobs_removed,
                    r.bytes_freed,
                    r.orphan_files_removed,
                    r.docs_removed,
                    r.tombstones_removed,
                    r.partial_removed,
                    r.blob_file_bytes_freed,
                    r.blobs_live,
                    if r.shared_orphans_removed > 0 {
                        format!("; {} blobs nobody sharing the bucket referenced", r.shared_orphans_removed)
                    } else {
                        String::new()
                    }
                )?;
            }
        }
        Command::Vuln { command } => system::vuln(store, out, command)?,
        Command::AssessmentType { command } => system::assessment_type(store, out, command)?,
        Command::Assessment { command } => system::assessment(store, out, command)?,
        Command::Replication {
            command: ReplicationCommand::Log { limit, json },
        } => {
            let log = store.replication_log(limit)?;
            if json {
                writeln!(out, "{}", serde_json::to_string_pretty(&log)?)?;
            } else if log.is_empty() {
                writeln!(out, "no replication runs yet")?;
            } else {
                for r in log {
                    writeln!(
                    out,
                        "#{} {} {} with {} [{}] {} ms: {} docs in, {} out, {} blobs in, {} deletions, {} bytes in, {} out{}",
                        r.seq,
                        r.replication,
                        r.mode,
                        r.peer,
                        r.feeds.join(","),
                        r.ended_ms.saturating_sub(r.started_ms),
                        r.docs_received,
                        r.docs_sent,
                        r.blobs_received,
                        r.deletions,
                        r.bytes_received,
                        r.bytes_sent,
                        if r.outcome == "ok" { String::new() } else { format!(": FAILED {}", r.error) }
                    )?;
                }
            }
        }
        Command::Root { feed, json } => {
            let s = store.feed_summary(&feed)?;
            let cursor = s.feed.cursor();
            if json {
                let v = serde_json::json!({
                    "feed": feed,
                    "root": s.root.fingerprint.to_hex(),
                    "count": s.root.count,
                    "epoch": format!("{:016x}", cursor.epoch),
                    "seq": cursor.seq,
                });
                writeln!(out, "{}", serde_json::to_string_pretty(&v)?)?;
            } else {
                writeln!(out, "root   {}", s.root.fingerprint)?;
                writeln!(out, "count  {}", s.root.count)?;
                writeln!(out, "cursor {cursor}")?;
            }
        }
        Command::Init
        | Command::Serve
        | Command::Replicate { .. }
        | Command::Replication {
            command: ReplicationCommand::List,
        }
        | Command::Key { .. } => bail!("this command does not run on a server"),
    }
    out.flush()?;
    Ok(0)
}

/// A command line forwarded to a running server from the working directory `cwd`, run with
/// its output going to the client as it is written; returns the exit code.
pub(crate) fn run_forwarded(
    store: &Store,
    argv: &[String],
    cwd: &Path,
    output: &cairn_sync::replication::control::Output,
    on_verify: &dyn Fn(&[cairn_store::Problem]),
) -> u8 {
    let mut err = output.stderr();
    let cli = match Cli::try_parse_from(
        std::iter::once("cairn".to_owned()).chain(argv.iter().cloned()),
    ) {
        Ok(cli) => cli,
        Err(e) => {
            let _ = write!(err, "{e}");
            return 2;
        }
    };
    let mut command = cli.command;
    rebase(&mut command, cwd);
    let mut out = output.stdout();
    let mut last = std::time::Instant::now();
    let mut progress = |done: u64, due: u64| {
        // At most five progress frames a second, and the last one.
        if done >= due || last.elapsed() >= std::time::Duration::from_millis(200) {
            last = std::time::Instant::now();
            output.progress(done, due);
        }
    };
    match run_on_store(store, command, &mut out, &mut err, &mut progress, on_verify) {
        Ok(code) => code,
        Err(e) => {
            let _ = out.flush();
            let _ = writeln!(err, "error: {e:#}");
            2
        }
    }
}

/// Makes the relative paths of a forwarded command relative to the client's directory.
fn rebase(command: &mut Command, cwd: &Path) {
    let fix = |p: &mut PathBuf| {
        if p.is_relative() && p.as_path() != Path::new("-") {
            *p = cwd.join(&*p);
        }
    };
    match command {
        Command::Push { files, .. }
        | Command::Vuln {
            command: VulnCommand::Import { files },
        } => files.iter_mut().for_each(fix),
        Command::Get { output, .. } => fix(output),
        Command::Export {
            output,
            since_bundle,
            ..
        } => {
            fix(output);
            since_bundle.iter_mut().for_each(fix);
        }
        Command::Import { bundle, .. } => fix(bundle),
        _ => {}
    }
}

/// A progress bar on standard error, drawn only when it is a terminal.
fn progress_bar() -> indicatif::ProgressBar {
    let bar = indicatif::ProgressBar::with_draw_target(
        Some(0),
        indicatif::ProgressDrawTarget::stderr_with_hz(5),
    );
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "[{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta}",
        )
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
        .progress_chars("=> "),
    );
    bar
}

/// Store options from the configuration (its `[blobs]` section).
fn options(dir: &Path, config: Option<&Path>) -> Result<StoreOptions> {
    Ok(serve::load_config(dir, config)?.store_options())
}

fn run(cli: Cli) -> Result<ExitCode> {
    let dir = cli.data_dir.as_path();
    let config_path = cli.config.clone();
    let open = |dir: &Path| -> Result<Store> {
        Ok(Store::open(dir, options(dir, config_path.as_deref())?)?)
    };
    match cli.command {
        Command::Init => {
            let store = Store::init(dir, options(dir, config_path.as_deref())?)?;
            println!("initialised {}", dir.display());
            println!("key {}", store.identity().public_key());
        }
        Command::Serve => {
            let config = serve::load_config(dir, config_path.as_deref())?;
            if !dir.join("db").join("CURRENT").exists()
                && !cairn_store::identity::key_path(dir).exists()
            {
                let store = Store::init(dir, config.store_options())?;
                println!(
                    "initialised {} with key {}",
                    dir.display(),
                    store.identity().public_key()
                );
            }
            serve::serve(dir, config)?;
        }
        Command::Replicate {
            name,
            dry_run,
            allow_deletes,
            json,
        } => {
            let config = serve::load_config(dir, config_path.as_deref())?;
            let options = cairn_sync::replication::RunOptions {
                dry_run,
                allow_deletes,
            };
            let s = serve::replicate(dir, &config, &name, options)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&s)?);
            } else {
                print_summary(&s, dry_run);
            }
            if !s.ok(dry_run) {
                return Ok(ExitCode::from(2));
            }
        }
        Command::Replication {
            command: ReplicationCommand::List,
        } => {
            let config = serve::load_config(dir, config_path.as_deref())?;
            if config.replications.is_empty() {
                println!("no replications configured");
            }
            for r in &config.replications {
                println!("{}", r.describe());
            }
        }
        Command::Key {
            command: KeyCommand::Show,
        } => {
            let id = cairn_store::identity::Identity::load(dir)?;
            println!("{}", id.public_key());
        }
        Command::Key {
            command: KeyCommand::Rotate,
        } => {
            if serve::control_socket(dir).exists()
                && std::os::unix::net::UnixStream::connect(serve::control_socket(dir)).is_ok()
            {
                bail!(
                    "`cairn serve` is running on {}; stop it, rotate, and start it again",
                    dir.display()
                );
            }
            let r = Store::rotate_key(dir, options(dir, config_path.as_deref())?)?;
            eprintln!(
                "moved from key {} to the new key; {} documents signed again; peers that pin the old key follow on their next run",
                r.old.short(),
                r.resigned
            );
            println!("{}", r.new);
        }
        command => {
            // A running server holds the store: the command runs there, and takes effect at
            // once.
            let argv = std::env::args_os()
                .skip(1)
                .map(|a| {
                    a.into_string()
                        .map_err(|a| anyhow!("argument {a:?} is not UTF-8"))
                })
                .collect::<Result<Vec<String>>>()?;
            let cwd = std::env::current_dir().context("reading the working directory")?;
            let bar = progress_bar();
            let mut on_progress = |done, due| {
                bar.set_length(due);
                bar.set_position(done);
            };
            let (mut out, mut err) = (io::stdout(), io::stderr());
            if let Some(code) =
                serve::forward(dir, &argv, &cwd, &mut out, &mut err, &mut on_progress)?
            {
                return Ok(ExitCode::from(code));
            }
            let code = run_on_store(
                &open(dir)?,
                command,
                &mut out.lock(),
                &mut err,
                &mut on_progress,
                &|_| {},
            )?;
            return Ok(ExitCode::from(code));
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn trust(store: &Store, out: &mut dyn Write, command: TrustCommand) -> Result<()> {
    match command {
        TrustCommand::Add { key, feed } => {
            let k: PublicKey = key.parse()?;
            store.trust_add(&feed, &k)?;
            writeln!(out, "trusted {} for {feed}", k.short())?;
        }
        TrustCommand::Rm { key, feed } => {
            let k: PublicKey = key.parse()?;
            if !store.trust_remove(&feed, &k)? {
                bail!("key {} was not trusted for {feed}", k.short());
            }
            writeln!(out, "no longer trusting {} for {feed}", k.short())?;
        }
        TrustCommand::List => {
            for (scope, key) in store.trust_list()? {
                writeln!(out, "{key} {scope}")?;
            }
        }
    }
    Ok(())
}

fn print_summary(s: &serve::RunSummary, dry_run: bool) {
    if let Some(e) = &s.error {
        eprintln!("error: replication `{}` failed: {e}", s.replication);
        return;
    }
    for f in &s.feeds {
        if let Some(e) = &f.error {
            eprintln!("error: {}: {e}", f.feed);
            continue;
        }
        match (dry_run, f.plan) {
            (true, Some((adds, deletes, bytes))) => println!("{}: would add or replace {adds}, delete {deletes}, fetch {bytes} bytes", f.feed),
            _ => println!(
                "{}: {} via {}; {} applied, {} sent, {} deleted, {} blobs ({} bytes) received{}; root {} ({} entries)",
                f.feed,
                if f.converged { "converged" } else { "NOT converged" },
                f.path,
                f.docs_applied,
                f.docs_sent,
                f.deletions,
                f.blobs_received,
                f.blob_bytes_received,
                if f.blobs_adopted > 0 {
                    format!(", {} ({} bytes) already in the shared bucket", f.blobs_adopted, f.blob_bytes_adopted)
                } else {
                    String::new()
                },
                f.root.get(..12).unwrap_or(""),
                f.count
            ),
        }
    }
    println!(
        "{} {} with {}: {} round trips, {} bytes sent, {} received, {} blobs ({} bytes) sent, in {} ms; {} bytes on the wire, {} of them lost and sent again",
        s.replication,
        s.mode,
        s.peer,
        s.rounds,
        s.bytes_sent,
        s.bytes_received,
        s.blobs_sent,
        s.blob_bytes_sent,
        s.elapsed_ms,
        s.wire_bytes_sent,
        s.lost_bytes
    );
}

fn token(
    store: &Store,
    out: &mut dyn Write,
    err: &mut dyn Write,
    command: TokenCommand,
) -> Result<()> {
    match command {
        TokenCommand::Create { scopes, label } => {
            let (secret, info) = store.token_create(scopes, &label)?;
            writeln!(
                err,
                "created token {} ({}); the secret is shown only now:",
                info.id,
                info.scopes
                    .iter()
                    .map(|s| s.to_string())
                    .collect::<Vec<_>>()
                    .join(" ")
            )?;
            writeln!(out, "{secret}")?;
        }
        TokenCommand::List => {
            for t in store.token_list()? {
                let scopes: Vec<String> = t.scopes.iter().map(|s| s.to_string()).collect();
                writeln!(out, "{} {} {}", t.id, scopes.join(","), t.label)?;
            }
        }
        TokenCommand::Revoke { id } => {
            if !store.token_revoke(&id)? {
                bail!("no token with id {id}");
            }
            writeln!(out, "revoked {id}")?;
        }
    }
    Ok(())
}

fn peer(store: &Store, out: &mut dyn Write, command: PeerCommand) -> Result<()> {
    match command {
        PeerCommand::Add { name, addr, key } => {
            let key: PublicKey = key.parse()?;
            addr.parse::<std::net::SocketAddr>()
                .with_context(|| format!("`{addr}` is not host:port with a numeric address"))?;
            store.peer_add(&Peer {
                name: name.clone(),
                addr,
                key,
            })?;
            writeln!(out, "peer {name} pinned to key {}", key.short())?;
        }
        PeerCommand::List => {
            for p in store.peer_list()? {
                writeln!(out, "{} {} {}", p.name, p.addr, p.key)?;
            }
        }
        PeerCommand::Rm { name } => {
            if !store.peer_remove(&name)? {
                bail!("no peer named {name}");
            }
            writeln!(out, "removed peer {name}")?;
        }
    }
    Ok(())
}

fn feed(store: &Store, out: &mut dyn Write, command: FeedCommand) -> Result<()> {
    match command {
        FeedCommand::Create { name, ecosystem } => {
            store.create_feed(&name, ecosystem)?;
            writeln!(out, "created {ecosystem} feed {name}")?;
        }
        FeedCommand::List { json } => {
            let mut rows = Vec::new();
            for f in store.list_feeds()? {
                let s = store.feed_summary(&f.name)?;
                rows.push(serde_json::json!({
                    "name": f.name,
                    "type": f.ecosystem().map(|e| e.as_str()).unwrap_or("system"),
                    "entries": s.root.count,
                    "root": s.root.fingerprint.to_hex(),
                }));
            }
            if json {
                writeln!(out, "{}", serde_json::to_string_pretty(&rows)?)?;
            } else {
                for r in rows {
                    writeln!(
                        out,
                        "{:<24} {:<6} {:>8} entries  root {}",
                        r["name"].as_str().unwrap_or(""),
                        r["type"].as_str().unwrap_or(""),
                        r["entries"],
                        &r["root"].as_str().unwrap_or("")[..12]
                    )?;
                }
            }
        }
        FeedCommand::Rm { name } => {
            store.delete_feed(&name)?;
            writeln!(out, "removed feed {name}; run `cairn gc` to free its blobs")?;
        }
    }
    Ok(())
}

fn push(
    store: &Store,
    out: &mut dyn Write,
    feed: &str,
    files: &[PathBuf],
    name: Option<String>,
    version: Option<String>,
) -> Result<()> {
    let files = files
        .iter()
        .map(|path| {
            let file_name = path
                .file_name()
                .and_then(|n| n.to_str())
                .ok_or_else(|| anyhow!("{} has no usable file name", path.display()))?
                .to_owned();
            Ok(cairn_feedserver::push::PushFile {
                path: path.clone(),
                file_name,
                shown: path.display().to_string(),
            })
        })
        .collect::<Result<Vec<_>>>()?;
    let pushed = cairn_feedserver::push::push(store, feed, &files, name, version)
        .map_err(|e| anyhow!(e.message))?;
    for p in pushed {
        writeln!(out, "{}", p.line())?;
    }
    Ok(())
}

fn ls(store: &Store, out: &mut dyn Write, feed: &str, json: bool, all: bool) -> Result<()> {
    let rows = cairn_feedserver::admin::entry_rows(store, feed, all)?;
    if json {
        writeln!(out, "{}", serde_json::to_string_pretty(&rows)?)?;
        return Ok(());
    }
    for r in rows {
        let files = r["files"].as_array().map(|a| a.len()).unwrap_or(0);
        let size: u64 = r["files"]
            .as_array()
            .map(|a| a.iter().filter_map(|f| f["size"].as_u64()).sum())
            .unwrap_or(0);
        writeln!(
            out,
            "{:<32} {:<16} {:<10} {} file(s) {} bytes",
            r["name"].as_str().unwrap_or(""),
            r["version"].as_str().unwrap_or(""),
            r["kind"].as_str().unwrap_or(""),
            files,
            size
        )?;
    }
    Ok(())
}

fn get(
    store: &Store,
    out: &mut dyn Write,
    feed: &str,
    name: &str,
    version: &str,
    file: Option<&str>,
    output: &Path,
) -> Result<()> {
    let (_, m) = store
        .manifest(feed, name, version)?
        .ok_or_else(|| anyhow!("{name} {version} is not in feed `{feed}`"))?;
    let f = match file {
        Some(want) => m.files.iter().find(|f| f.name == want).ok_or_else(|| {
            anyhow!(
                "{name} {version} has no file `{want}`; it has: {}",
                file_list(&m)
            )
        })?,
        None if m.files.len() == 1 => &m.files[0],
        None => bail!(
            "{name} {version} has {} files; name one of: {}",
            m.files.len(),
            file_list(&m)
        ),
    };
    if output == Path::new("-") {
        store.read_blob_to(&f.blob, &mut &mut *out)?;
        return Ok(());
    }
    // Write beside the target and rename, so a failed verification leaves no partial file.
    let tmp = output.with_file_name(format!(
        ".{}.partial",
        output
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or("cairn-get")
    ));
    let result = (|| -> Result<()> {
        let mut out = File::create(&tmp).with_context(|| format!("creating {}", tmp.display()))?;
        store.read_blob_to(&f.blob, &mut out)?;
        out.sync_all()?;
        std::fs::rename(&tmp, output).with_context(|| format!("writing {}", output.display()))?;
        Ok(())
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

fn file_list(m: &Manifest) -> String {
    m.files
        .iter()
        .map(|f| f.name.as_str())
        .collect::<Vec<_>>()
        .join(", ")
}

fn verify(
    store: &Store,
    out: &mut dyn Write,
    json: bool,
    progress: &mut dyn FnMut(u64, u64),
    on_verify: &dyn Fn(&[cairn_store::Problem]),
) -> Result<u8> {
    let report = store.verify_with_progress(&mut |p| progress(p.bytes_done, p.bytes_due))?;
    on_verify(&report.problems);
    if json {
        writeln!(out, "{}", serde_json::to_string_pretty(&report)?)?;
    } else {
        for p in &report.problems {
            writeln!(out, "problem: {} {}: {}", p.kind, p.subject, p.detail)?;
        }
        writeln!(
            out,
            "checked {} blobs ({} bytes), {} documents, {} entries, {} feeds: {}",
            report.blobs,
            report.blob_bytes,
            report.documents,
            report.entries,
            report.feeds,
            if report.ok() {
                "ok".to_string()
            } else {
                format!("{} problems", report.problems.len())
            }
        )?;
    }
    out.flush()?;
    Ok(if report.ok() { 0 } else { 1 })
}
