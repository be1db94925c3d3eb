//! The control socket (`<data-dir>/control.sock`): how a `cairn` command reaches the server
//! that holds the store. One request line, then the answer:
//!
//! - `replicate NAME [dry-run] [allow-deletes]`: progress lines
//!   `progress DONE DUE SENT RECEIVED` every 200 ms, then the [`RunSummary`] as one JSON line;
//! - `exec {"argv": [..], "cwd": ".."}`: a command line run on the server by the embedder's
//!   [`Forward`] (relative paths in it are relative to `cwd`), answered as it runs by frames of
//!   one tag byte, a 4-byte big-endian length and that many bytes: `o` standard output, `e`
//!   standard error, `p` progress (`DONE DUE` in ASCII), and last `x` with the exit code (one
//!   byte). A client that goes away makes the command's next write fail.

use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

use super::{Replicator, RunOptions, RunSummary};
use crate::transport::{Progress, ProgressSnapshot};

/// Longest request line read.
const MAX_REQUEST: u64 = 1 << 20;

/// Runs a forwarded command line (its words and the client's working directory), writing to
/// the [`Output`]; returns the exit code.
pub type Forward = Arc<dyn Fn(Vec<String>, PathBuf, &Output) -> u8 + Send + Sync>;

/// Frames queued for the client at most; a command writing faster waits.
const FRAMES_QUEUED: usize = 64;

/// Largest frame payload written (output is cut into frames of at most this).
const MAX_FRAME: usize = 256 * 1024;

/// Where a forwarded command writes: its standard output and error and its progress go to the
/// client as they are written.
#[derive(Clone, Debug)]
pub struct Output {
    tx: tokio::sync::mpsc::Sender<(u8, Vec<u8>)>,
}

impl Output {
    fn send(&self, tag: u8, bytes: &[u8]) -> std::io::Result<()> {
        for chunk in bytes.chunks(MAX_FRAME) {
            self.tx
                .blocking_send((tag, chunk.to_vec()))
                .map_err(|_| std::io::Error::from(std::io::ErrorKind::BrokenPipe))?;
        }
        Ok(())
    }

    /// The command's standard output.
    pub fn stdout(&self) -> impl Write + '_ {
        std::io::BufWriter::with_capacity(64 * 1024, Stream(self, b'o'))
    }

    /// The command's standard error.
    pub fn stderr(&self) -> impl Write + '_ {
        Stream(self, b'e')
    }

    /// Tells the client how far the command is: `done` of `due` (units of the command's
    /// choosing, bytes for `verify`).
    pub fn progress(&self, done: u64, due: u64) {
        let _ = self.send(b'p', format!("{done} {due}").as_bytes());
    }
}

struct Stream<'a>(&'a Output, u8);

impl Write for Stream<'_> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.send(self.1, buf)?;
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[derive(serde::Serialize, serde::Deserialize)]
struct ExecRequest {
    argv: Vec<String>,
    cwd: PathBuf,
}

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
    // Whoever reaches the socket administers the instance: its owner only.
    std::fs::set_permissions(path, std::os::unix::fs::PermissionsExt::from_mode(0o600))?;
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
    if let Some(request) = line.strip_prefix("exec ") {
        let request: ExecRequest = match serde_json::from_str(request) {
            Ok(r) => r,
            Err(e) => {
                let _ = write_frame(&mut write, b'e', format!("error: {e}\n").as_bytes()).await;
                let _ = write_frame(&mut write, b'x', &[2]).await;
                return;
            }
        };
        let (tx, mut rx) = tokio::sync::mpsc::channel(FRAMES_QUEUED);
        let output = Output { tx };
        let mut command = tokio::task::spawn_blocking(move || {
            let code = forward(request.argv, request.cwd, &output);
            drop(output);
            code
        });
        let mut client_gone = false;
        let code = loop {
            tokio::select! {
                frame = rx.recv(), if !client_gone => match frame {
                    Some((tag, bytes)) => {
                        if write_frame(&mut write, tag, &bytes).await.is_err() {
                            // The command's next write fails; it stops there.
                            client_gone = true;
                            rx.close();
                        }
                    }
                    None => client_gone = true,
                },
                code = &mut command => {
                    // Whatever the command wrote before it returned.
                    while let Ok((tag, bytes)) = rx.try_recv() {
                        let _ = write_frame(&mut write, tag, &bytes).await;
                    }
                    break code.unwrap_or(2);
                }
            }
        };
        let _ = write_frame(&mut write, b'x', &[code]).await;
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

async fn write_frame(
    write: &mut (impl tokio::io::AsyncWrite + Unpin),
    tag: u8,
    bytes: &[u8],
) -> std::io::Result<()> {
    let len = u32::try_from(bytes.len()).map_err(|_| other("frame too long"))?;
    let mut head = [0u8; 5];
    head[0] = tag;
    head[1..].copy_from_slice(&len.to_be_bytes());
    write.write_all(&head).await?;
    write.write_all(bytes).await
}

/// Runs a command line on the server at `path`, from the working directory `cwd`, copying
/// its standard output and error to `stdout` and `stderr` as they come and its progress to
/// `on_progress`; its exit code, or `None` when no server answers.
pub fn forward(
    path: &Path,
    argv: &[String],
    cwd: &Path,
    stdout: &mut dyn Write,
    stderr: &mut dyn Write,
    on_progress: &mut dyn FnMut(u64, u64),
) -> std::io::Result<Option<u8>> {
    use std::io::Read;
    let Ok(mut stream) = std::os::unix::net::UnixStream::connect(path) else {
        return Ok(None);
    };
    let request = ExecRequest {
        argv: argv.to_vec(),
        cwd: cwd.to_owned(),
    };
    let request = serde_json::to_string(&request).map_err(|e| other(&e.to_string()))?;
    stream.write_all(format!("exec {request}\n").as_bytes())?;
    let mut reader = std::io::BufReader::new(stream);
    let mut payload = Vec::new();
    loop {
        let mut head = [0u8; 5];
        if let Err(e) = reader.read_exact(&mut head) {
            stdout.flush()?;
            return Err(other(&format!(
                "the server closed the control socket before the command finished: {e}"
            )));
        }
        let len = u32::from_be_bytes([head[1], head[2], head[3], head[4]]) as usize;
        if len > MAX_FRAME {
            return Err(other("the server sent a frame longer than allowed"));
        }
        payload.resize(len, 0);
        reader.read_exact(&mut payload)?;
        match head[0] {
            b'o' => stdout.write_all(&payload)?,
            b'e' => {
                stdout.flush()?;
                stderr.write_all(&payload)?;
            }
            b'p' => {
                let text = String::from_utf8_lossy(&payload);
                let mut n = text.split(' ').filter_map(|w| w.parse::<u64>().ok());
                if let (Some(done), Some(due)) = (n.next(), n.next()) {
                    on_progress(done, due);
                }
            }
            b'x' => {
                stdout.flush()?;
                return Ok(Some(payload.first().copied().unwrap_or(2)));
            }
            _ => return Err(other("the server sent a frame of an unknown kind")),
        }
    }
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
