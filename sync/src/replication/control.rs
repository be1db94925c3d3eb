//! The control socket (`<data-dir>/control.sock`): how a `cairn` command reaches the server
//! that holds the store. One request line, then the answer:
//!
//! - `replicate NAME [dry-run] [allow-deletes]`: progress lines
//!   `progress DONE DUE SENT RECEIVED` every 200 ms, then the [`RunSummary`] as one JSON line;
//! - `run ARGV-JSON`: a command line run on the server by the embedder's [`Forward`], answered
//!   as `{"code":..,"stdout":..,"stderr":..}`.

use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

use super::{Replicator, RunOptions, RunSummary};
use crate::transport::{Progress, ProgressSnapshot};

/// Longest request line read.
const MAX_REQUEST: u64 = 1 << 20;

/// Runs a forwarded command line: exit code, standard output, standard error.
pub type Forward = Arc<dyn Fn(Vec<String>) -> (u8, String, String) + Send + Sync>;

/// Where the control socket of the instance at `data_dir` lives.
pub fn socket_path(data_dir: &Path) -> PathBuf {
    data_dir.join("control.sock")
}

/// The server side, while it lives; dropping it stops answering and removes the socket.
#[derive(Debug)]
pub struct ControlSocket {
    path: PathBuf,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for ControlSocket {
    fn drop(&mut self) {
        self.task.abort();
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Listens on `path` (replacing a stale socket) and answers each request.
pub fn serve(
    path: &Path,
    replicator: Replicator,
    forward: Forward,
) -> std::io::Result<ControlSocket> {
    let _ = std::fs::remove_file(path);
    let listener = tokio::net::UnixListener::bind(path)?;
    let task = tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let (replicator, forward) = (replicator.clone(), forward.clone());
            tokio::spawn(answer(stream, replicator, forward));
        }
    });
    Ok(ControlSocket {
        path: path.to_owned(),
        task,
    })
}

async fn answer(stream: tokio::net::UnixStream, replicator: Replicator, forward: Forward) {
    let (read, mut write) = stream.into_split();
    let mut line = String::new();
    let mut reader = BufReader::new(tokio::io::AsyncReadExt::take(read, MAX_REQUEST));
    if reader.read_line(&mut line).await.is_err() {
        return;
    }
    if let Some(argv) = line.strip_prefix("run ") {
        let argv: Vec<String> = serde_json::from_str(argv).unwrap_or_default();
        let (code, out, err) = tokio::task::spawn_blocking(move || forward(argv))
            .await
            .unwrap_or((2, String::new(), "the command failed on the server".into()));
        let reply = serde_json::json!({ "code": code, "stdout": out, "stderr": err });
        let _ = write.write_all(format!("{reply}\n").as_bytes()).await;
        return;
    }
    let words: Vec<&str> = line.split_whitespace().collect();
    let summary = match words.as_slice() {
        ["replicate", name, flags @ ..] => {
            let options = RunOptions {
                dry_run: flags.contains(&"dry-run"),
                allow_deletes: flags.contains(&"allow-deletes"),
            };
            let progress = Progress::default();
            let run = replicator.run_now(name, options, &progress);
            tokio::pin!(run);
            let mut tick = tokio::time::interval(Duration::from_millis(200));
            loop {
                tokio::select! {
                    s = &mut run => break s,
                    _ = tick.tick() => {
                        // If the client went away, the run still finishes and is logged.
                        let _ = write.write_all(progress_line(&progress.snapshot()).as_bytes()).await;
                    }
                }
            }
        }
        _ => RunSummary {
            error: Some("unknown control command".into()),
            ..RunSummary::default()
        },
    };
    let reply = serde_json::to_string(&summary).unwrap_or_default();
    let _ = write.write_all(format!("{reply}\n").as_bytes()).await;
}

fn other(reason: &str) -> std::io::Error {
    std::io::Error::other(reason.to_owned())
}

/// Asks the server at `path` to run the replication `name` now, calling `on_progress` with
/// each progress line; `None` when no server answers there.
pub fn request_run(
    path: &Path,
    name: &str,
    options: RunOptions,
    mut on_progress: impl FnMut(&ProgressSnapshot),
) -> std::io::Result<Option<RunSummary>> {
    let Ok(mut stream) = std::os::unix::net::UnixStream::connect(path) else {
        return Ok(None);
    };
    let mut line = format!("replicate {name}");
    if options.dry_run {
        line.push_str(" dry-run");
    }
    if options.allow_deletes {
        line.push_str(" allow-deletes");
    }
    line.push('\n');
    stream.write_all(line.as_bytes())?;
    let mut reader = std::io::BufReader::new(stream);
    loop {
        let mut reply = String::new();
        if reader.read_line(&mut reply)? == 0 {
            return Err(other(
                "the server closed the control socket without an answer",
            ));
        }
        if reply.starts_with("progress ") {
            if let Some(p) = parse_progress_line(&reply) {
                on_progress(&p);
            }
            continue;
        }
        return serde_json::from_str(&reply)
            .map(Some)
            .map_err(|e| other(&format!("reading the server's answer: {e}")));
    }
}

/// Runs a command line on the server at `path`: its exit code, standard output and error;
/// `None` when no server answers.
pub fn forward(path: &Path, argv: &[String]) -> std::io::Result<Option<(u8, String, String)>> {
    let Ok(mut stream) = std::os::unix::net::UnixStream::connect(path) else {
        return Ok(None);
    };
    let argv = serde_json::to_string(argv).map_err(|e| other(&e.to_string()))?;
    stream.write_all(format!("run {argv}\n").as_bytes())?;
    let mut reply = String::new();
    std::io::BufReader::new(stream).read_line(&mut reply)?;
    let reply: serde_json::Value = serde_json::from_str(&reply)
        .map_err(|e| other(&format!("reading the server's answer: {e}")))?;
    Ok(Some((
        reply["code"].as_u64().unwrap_or(2).min(255) as u8,
        reply["stdout"].as_str().unwrap_or("").to_owned(),
        reply["stderr"].as_str().unwrap_or("").to_owned(),
    )))
}

/// The progress line the control socket sends: `progress DONE DUE SENT RECEIVED`.
fn progress_line(p: &ProgressSnapshot) -> String {
    format!(
        "progress {} {} {} {}\n",
        p.blob_bytes_done, p.blob_bytes_due, p.bytes_sent, p.bytes_received
    )
}

/// The other end of [`progress_line`].
fn parse_progress_line(line: &str) -> Option<ProgressSnapshot> {
    let n: Vec<u64> = line
        .strip_prefix("progress ")?
        .split_whitespace()
        .map(|w| w.parse().ok())
        .collect::<Option<_>>()?;
    match n[..] {
        [blob_bytes_done, blob_bytes_due, bytes_sent, bytes_received] => Some(ProgressSnapshot {
            blob_bytes_done,
            blob_bytes_due,
            bytes_sent,
            bytes_received,
        }),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn progress_lines_round_trip_and_garbage_is_ignored() {
        let p = ProgressSnapshot {
            blob_bytes_done: 1,
            blob_bytes_due: 2,
            bytes_sent: 3,
            bytes_received: u64::MAX,
        };
        assert_eq!(parse_progress_line(progress_line(&p).trim_end()), Some(p));
        assert_eq!(parse_progress_line("progress 1 2 3"), None);
        assert_eq!(parse_progress_line("progress 1 2 x 4"), None);
        assert_eq!(parse_progress_line("{\"replication\":\"x\"}"), None);
    }
}
