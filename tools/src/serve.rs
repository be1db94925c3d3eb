//! `cairn serve` and `cairn replicate`: reads the TOML configuration and starts the feed
//! server, the replications ([`cairn_sync::replication::Replicator`]) and the control socket;
//! `cairn replicate NAME` asks a running server for a run, or runs it itself.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use cairn_feedserver::{FeedServer, HttpConfig};
use cairn_store::{BlobsConfig, Store, StoreOptions};
use cairn_sync::replication::{self, control, Replicator, RunOptions};
pub use cairn_sync::replication::{ReplicationConfig, RunSummary, SyncConfig};
use cairn_sync::transport::{Progress, ProgressSnapshot};
use serde::Deserialize;

/// The TOML configuration (`--config`, default `<data-dir>/cairn.toml`).
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// The replication endpoint.
    #[serde(default)]
    pub sync: SyncConfig,
    /// Configured replications.
    #[serde(default, rename = "replication")]
    pub replications: Vec<ReplicationConfig>,
    /// The HTTP feed server.
    #[serde(default)]
    pub http: HttpConfig,
    /// Where large blobs live.
    #[serde(default)]
    pub blobs: BlobsSection,
    /// The webhook told when things go wrong and right again.
    #[serde(default)]
    pub alerts: cairn_feedserver::alerts::AlertsConfig,
    /// Feeds that answer for what they lack from an upstream registry.
    #[serde(default, rename = "connector")]
    pub connectors: Vec<cairn_feedserver::connector::ConnectorConfig>,
    /// The process itself.
    #[serde(default)]
    pub server: ServerSection,
}

/// `[server]`: the process that runs the feed server and the replications.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerSection {
    /// Threads of the runtime that runs QUIC, HTTP and the replications (default: one per
    /// core). Blocking work (RocksDB, hashing, writing blobs) has threads of its own.
    pub worker_threads: Option<usize>,
}

/// The most `[server] worker_threads` may ask for.
const MAX_WORKER_THREADS: usize = 1024;

impl ServerSection {
    /// The runtime `cairn serve` and a standalone `cairn replicate` run on.
    fn runtime(&self) -> std::io::Result<tokio::runtime::Runtime> {
        let mut builder = tokio::runtime::Builder::new_multi_thread();
        if let Some(n) = self.worker_threads {
            builder.worker_threads(n);
        }
        builder.enable_all().build()
    }
}

/// `[blobs]`: `backend = "local"` (the default, files under the data directory) or `"s3"`
/// with `[blobs.s3]`.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BlobsSection {
    /// `local` or `s3`.
    #[serde(default)]
    pub backend: BackendKind,
    /// The bucket, for `backend = "s3"`.
    pub s3: Option<cairn_store::s3::S3Config>,
}

/// `[blobs] backend`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BackendKind {
    /// Files under `<data-dir>/blobs`.
    #[default]
    Local,
    /// An S3-compatible bucket.
    S3,
}

impl Config {
    /// Store options for this configuration.
    pub fn store_options(&self) -> StoreOptions {
        let blobs = match (&self.blobs.backend, &self.blobs.s3) {
            (BackendKind::S3, Some(s3)) => BlobsConfig::S3(s3.clone()),
            _ => BlobsConfig::Local,
        };
        StoreOptions {
            blobs,
            ..StoreOptions::default()
        }
    }

    /// Feeds this instance pulls from a peer, with the peer: they are read-only here.
    pub fn pull_replicas(&self, store: &Store) -> HashMap<String, String> {
        replication::pull_replicas(&self.replications, store)
    }
}

/// Reads the configuration: `path` if given, else `<data-dir>/cairn.toml` if it exists.
pub fn load_config(data_dir: &Path, path: Option<&Path>) -> Result<Config> {
    let (path, required) = match path {
        Some(p) => (p.to_path_buf(), true),
        None => (data_dir.join("cairn.toml"), false),
    };
    let text = match std::fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound && !required => {
            return Ok(Config::default())
        }
        Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
    };
    let config: Config =
        toml::from_str(&text).with_context(|| format!("parsing {}", path.display()))?;
    match (config.blobs.backend, config.blobs.s3.is_some()) {
        (BackendKind::S3, false) => bail!(
            "{}: [blobs] backend = \"s3\" needs a [blobs.s3] section with endpoint and bucket",
            path.display()
        ),
        (BackendKind::Local, true) => bail!(
            "{}: [blobs.s3] is set but [blobs] backend is \"local\"; set backend = \"s3\" or remove it",
            path.display()
        ),
        _ => {}
    }
    if let Some(n) = config.server.worker_threads {
        if !(1..=MAX_WORKER_THREADS).contains(&n) {
            bail!(
                "{}: [server] worker_threads must be between 1 and {MAX_WORKER_THREADS}, not {n}",
                path.display()
            );
        }
    }
    config
        .alerts
        .check()
        .map_err(|e| anyhow!("{}: {e}", path.display()))?;
    let mut connected = std::collections::HashSet::new();
    for c in &config.connectors {
        c.check()
            .map_err(|e| anyhow!("{}: connector of feed `{}`: {e}", path.display(), c.feed))?;
        if !connected.insert(&c.feed) {
            bail!("{}: feed `{}` has two connectors", path.display(), c.feed);
        }
    }
    let mut names = std::collections::HashSet::new();
    for r in &config.replications {
        if !names.insert(&r.name) {
            bail!(
                "{}: replication `{}` is defined twice",
                path.display(),
                r.name
            );
        }
        if !(0.0..=1.0).contains(&r.max_delete_share) {
            bail!(
                "{}: replication `{}`: max_delete_share must be between 0 and 1",
                path.display(),
                r.name
            );
        }
        if r.feeds.is_empty() {
            bail!(
                "{}: replication `{}` names no feeds",
                path.display(),
                r.name
            );
        }
        if let Err(e) = r.filters() {
            bail!("{}: replication `{}`: {e}", path.display(), r.name);
        }
    }
    Ok(config)
}

/// Where the control socket lives.
pub fn control_socket(data_dir: &Path) -> PathBuf {
    control::socket_path(data_dir)
}

/// How long a stopping server lets the runs under way finish (systemd's stop timeout, 90 s by
/// default, leaves room for it).
const SHUTDOWN_GRACE: Duration = Duration::from_secs(30);

/// Runs the server until interrupted (SIGINT or SIGTERM).
pub fn serve(data_dir: &Path, config: Config) -> Result<()> {
    let runtime = config.server.runtime()?;
    runtime.block_on(async move {
        let store = Arc::new(Store::open(data_dir, config.store_options())?);
        let replicator = Replicator::new(
            store.clone(),
            config.sync.clone(),
            config.replications.clone(),
        );
        let endpoint = replicator.listen()?;
        let local = endpoint.local_addr()?;
        let http = tokio::net::TcpListener::bind(config.http.listen)
            .await
            .with_context(|| {
                format!(
                    "binding the HTTP server to {}; set [http] listen in cairn.toml",
                    config.http.listen
                )
            })?;
        let http_addr = http.local_addr()?;
        let feeds = FeedServer::with_operations(
            store.clone(),
            config.http.clone(),
            config.pull_replicas(&store),
            Some(Arc::new(Replications(replicator.clone()))),
        );
        feeds.start_alerts(config.alerts.clone());
        feeds
            .start_connectors(&config.connectors)
            .map_err(|e| anyhow!("{e}"))?;
        let router = feeds.router();
        tokio::spawn(async move {
            if let Err(e) = cairn_feedserver::zerocopy::serve(http, router).await {
                tracing::error!("HTTP server stopped: {e}");
            }
        });
        replicator.schedule();
        let sock = control_socket(data_dir);
        let forward_feeds = feeds.clone();
        // A command line forwarded by `cairn` while this server holds the store.
        let forward: control::Forward = Arc::new(move |argv, cwd, output| {
            let on_verify = |problems: &[cairn_store::Problem]| {
                if let Some(a) = forward_feeds.alerter() {
                    a.verified(problems);
                }
            };
            crate::run_forwarded(forward_feeds.store(), &argv, &cwd, output, &on_verify)
        });
        let control = control::serve(&sock, replicator.clone(), forward)
            .with_context(|| format!("binding {}", sock.display()))?;
        // Said once every part answers, the control socket included. A server whose standard
        // output was closed (its reader gone) goes on serving.
        say(format_args!(
            "cairn serving {} on {} (replication, QUIC) and http://{} (feeds); key {}; blobs {}",
            data_dir.display(),
            local,
            http_addr,
            store.identity().public_key(),
            config.store_options().blobs.location()
        ));
        shutdown_signal().await;
        drop(control);
        say(format_args!(
            "cairn stopping: letting runs under way finish (at most {} s)",
            SHUTDOWN_GRACE.as_secs()
        ));
        let cut = replicator.shut_down(&endpoint, SHUTDOWN_GRACE).await;
        if cut > 0 {
            say(format_args!(
                "{cut} run(s) cut at the deadline; they resume where they stopped at the next start"
            ));
        }
        say(format_args!("cairn stopped"));
        anyhow::Ok(())
    })
}

/// The replications as the feed server's status page and admin API see them.
#[derive(Debug)]
struct Replications(Replicator);

impl cairn_feedserver::Operations for Replications {
    fn replications(&self) -> Vec<serde_json::Value> {
        self.0
            .status()
            .into_iter()
            .map(|s| serde_json::to_value(s).unwrap_or_default())
            .collect()
    }

    fn run(
        &self,
        name: String,
        dry_run: bool,
        allow_deletes: bool,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = serde_json::Value> + Send>> {
        let replicator = self.0.clone();
        Box::pin(async move {
            let options = RunOptions {
                dry_run,
                allow_deletes,
            };
            let summary = replicator
                .run_now(&name, options, &Progress::default())
                .await;
            serde_json::to_value(summary).unwrap_or_default()
        })
    }
}

/// A line on standard output, unless nobody reads it any more.
fn say(line: std::fmt::Arguments<'_>) {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{line}").and_then(|()| out.flush());
}

async fn shutdown_signal() {
    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(s) => s,
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
            return;
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}

/// A progress bar on stderr (drawn only when stderr is a terminal): blob bytes moved against
/// blob bytes due, with the connection's bytes each way.
struct Bar(indicatif::ProgressBar);

impl Bar {
    fn new(name: &str) -> Bar {
        let bar = indicatif::ProgressBar::with_draw_target(
            Some(0),
            indicatif::ProgressDrawTarget::stderr_with_hz(5),
        );
        bar.set_style(
            indicatif::ProgressStyle::with_template(
                "{prefix} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} {msg}",
            )
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
            .progress_chars("=> "),
        );
        bar.set_prefix(name.to_string());
        Bar(bar)
    }

    fn set(&self, p: &ProgressSnapshot) {
        self.0.set_length(p.blob_bytes_due.max(p.blob_bytes_done));
        self.0.set_position(p.blob_bytes_done);
        self.0.set_message(format!(
            "(sent {}, received {})",
            indicatif::HumanBytes(p.bytes_sent),
            indicatif::HumanBytes(p.bytes_received)
        ));
    }
}

impl Drop for Bar {
    fn drop(&mut self) {
        self.0.finish_and_clear();
    }
}

/// `cairn replicate NAME`: through the running server if there is one, else directly. Shows
/// a progress bar on a terminal.
pub fn replicate(
    data_dir: &Path,
    config: &Config,
    name: &str,
    options: RunOptions,
) -> Result<RunSummary> {
    let bar = Bar::new(name);
    if let Some(summary) =
        control::request_run(&control_socket(data_dir), name, options, |p| bar.set(p))?
    {
        return Ok(summary);
    }
    let rep = config
        .replications
        .iter()
        .find(|r| r.name == name)
        .ok_or_else(|| anyhow!("no replication named `{name}` in the configuration"))?
        .clone();
    let store = Store::open(data_dir, config.store_options())?;
    let runtime = config.server.runtime()?;
    let progress = Progress::default();
    Ok(runtime.block_on(async {
        let run = replication::run(&store, &config.sync, &rep, options, &progress, None);
        tokio::pin!(run);
        let mut tick = tokio::time::interval(Duration::from_millis(200));
        loop {
            tokio::select! {
                s = &mut run => break s,
                _ = tick.tick() => bar.set(&progress.snapshot()),
            }
        }
    }))
}

/// Runs a command line on the server that holds the store at `data_dir`, if one is running,
/// copying its output to `stdout` and `stderr` as it comes: its exit code; `None` when no
/// server answers.
pub fn forward(
    data_dir: &Path,
    argv: &[String],
    cwd: &Path,
    stdout: &mut dyn std::io::Write,
    stderr: &mut dyn std::io::Write,
    on_progress: &mut dyn FnMut(u64, u64),
) -> Result<Option<u8>> {
    Ok(control::forward(
        &control_socket(data_dir),
        argv,
        cwd,
        stdout,
        stderr,
        on_progress,
    )?)
}
