//! The HTTP server's connections, and files handed to the socket without a copy.
//!
//! [`serve`] runs the feed server's router over HTTP/1.1 on connections it owns. A response
//! body made by [`file_body`] does not carry its bytes: it carries placeholders, slices of one
//! static zeroed buffer, and queues on its connection one [`FileSend`] per placeholder (the
//! file, the offset, the length, the file's [`FileStamp`] when it was verified). When the HTTP
//! stack writes a placeholder, the connection sends the file's bytes instead with `sendfile`,
//! in order, so the bytes go from the page cache to the socket without passing through this
//! process. Placeholders never reach the socket: a placeholder with no file queued for it
//! ends the connection.
//!
//! A body always ends with a few real bytes (the *tail*, kept from the verification), and the
//! file is stat'ed again when its last placeholder byte went out: if it changed since it was
//! verified (inode, size, modification or change time), the connection ends before the tail,
//! so the client holds a response shorter than its `Content-Length`, never a whole one made of
//! bytes that were not verified.

use std::collections::VecDeque;
use std::fs::File;
use std::io;
use std::os::unix::fs::MetadataExt;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::Router;
use http_body::Frame;
use hyper_util::rt::{TokioIo, TokioTimer};
use parking_lot::Mutex;
use tokio::io::Interest;
use tokio::net::{TcpListener, TcpStream};

/// What the placeholders are sliced from.
static ZEROS: [u8; PLACEHOLDER] = [0; PLACEHOLDER];
/// The largest placeholder, so the most a body hands the HTTP stack at once.
const PLACEHOLDER: usize = 1 << 20;
/// How long a client has to send a request's headers.
const HEADER_TIMEOUT: Duration = Duration::from_secs(30);

/// What identifies a file's contents as they were verified: any write through the file
/// system moves the change time, which cannot be set back.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FileStamp {
    dev: u64,
    ino: u64,
    size: u64,
    mtime: (i64, i64),
    ctime: (i64, i64),
}

impl FileStamp {
    /// The stamp of an open file (one `fstat`).
    pub fn of(file: &File) -> io::Result<FileStamp> {
        let m = file.metadata()?;
        Ok(FileStamp {
            dev: m.dev(),
            ino: m.ino(),
            size: m.size(),
            mtime: (m.mtime(), m.mtime_nsec()),
            ctime: (m.ctime(), m.ctime_nsec()),
        })
    }

    /// The file's size.
    pub fn size(&self) -> u64 {
        self.size
    }
}

/// One placeholder's bytes: `len` bytes of `file` from `offset`.
#[derive(Debug)]
struct FileSend {
    file: Arc<File>,
    offset: u64,
    len: u64,
    /// Checked once the last byte of the last send of a body went out.
    check: Option<FileStamp>,
}

/// The files queued to replace a connection's placeholders, in the order they are written.
#[derive(Clone, Debug, Default)]
pub struct SendQueue(Arc<Mutex<VecDeque<FileSend>>>);

tokio::task_local! {
    /// The queue of the connection whose request is being answered (set for the whole
    /// connection task by [`serve`]; absent when the router is served some other way).
    static QUEUE: SendQueue;
}

/// Whether responses on this task can carry files (the router runs under [`serve`]).
pub fn available() -> bool {
    QUEUE.try_with(|_| ()).is_ok()
}

/// A body of the whole of `file` as it was when verified (`stamp`, its size included): its
/// bytes but the last `tail.len()` sent from the file, then `tail`, those last bytes as they
/// were verified (at least one); `None` when this task's connection cannot carry files.
pub fn file_body(file: Arc<File>, tail: Bytes, stamp: FileStamp) -> Option<Body> {
    let queue = QUEUE.try_with(|q| q.clone()).ok()?;
    Some(Body::new(FileBody {
        queue,
        file,
        offset: 0,
        left: stamp.size.saturating_sub(tail.len() as u64),
        tail: Some(tail),
        stamp,
    }))
}

struct FileBody {
    queue: SendQueue,
    file: Arc<File>,
    offset: u64,
    left: u64,
    tail: Option<Bytes>,
    stamp: FileStamp,
}

impl http_body::Body for FileBody {
    type Data = Bytes;
    type Error = io::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, io::Error>>> {
        let this = &mut *self;
        if this.left > 0 {
            let n = this.left.min(PLACEHOLDER as u64);
            this.left -= n;
            this.queue.0.lock().push_back(FileSend {
                file: this.file.clone(),
                offset: this.offset,
                len: n,
                check: (this.left == 0).then_some(this.stamp),
            });
            this.offset += n;
            return Poll::Ready(Some(Ok(Frame::data(Bytes::from_static(
                &ZEROS[..n as usize],
            )))));
        }
        Poll::Ready(this.tail.take().map(|t| Ok(Frame::data(t))))
    }

    fn is_end_stream(&self) -> bool {
        self.left == 0 && self.tail.is_none()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        http_body::SizeHint::with_exact(
            self.left + self.tail.as_ref().map_or(0, |t| t.len() as u64),
        )
    }
}

fn is_placeholder(b: &[u8]) -> bool {
    let z = ZEROS.as_ptr() as usize;
    let p = b.as_ptr() as usize;
    p >= z && p < z + ZEROS.len()
}

/// A connection: reads as tokio's stream does, writes placeholders from their files.
struct Conn {
    io: TokioIo<TcpStream>,
    queue: SendQueue,
}

impl Conn {
    /// Sends up to `want` bytes of the front queued file; how many went.
    fn poll_send_file(&mut self, cx: &mut Context<'_>, want: usize) -> Poll<io::Result<usize>> {
        let tcp = self.io.inner();
        loop {
            ready!(tcp.poll_write_ready(cx))?;
            let mut queue = self.queue.0.lock();
            let Some(front) = queue.front_mut() else {
                return Poll::Ready(Err(io::Error::other(
                    "a placeholder reached the socket with no file queued for it",
                )));
            };
            let count = want.min(usize::try_from(front.len).unwrap_or(usize::MAX));
            let mut offset = front.offset;
            let sent = tcp.try_io(Interest::WRITABLE, || {
                rustix::fs::sendfile(tcp, &*front.file, Some(&mut offset), count)
                    .map_err(io::Error::from)
            });
            match sent {
                Ok(0) => {
                    return Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "a file being sent ended early (it changed since it was verified)",
                    )))
                }
                Ok(n) => {
                    front.offset = offset;
                    front.len -= n as u64;
                    if front.len == 0 {
                        if let Some(stamp) = front.check {
                            if FileStamp::of(&front.file)? != stamp {
                                return Poll::Ready(Err(io::Error::new(
                                    io::ErrorKind::InvalidData,
                                    "a file being sent changed since it was verified",
                                )));
                            }
                        }
                        queue.pop_front();
                    }
                    return Poll::Ready(Ok(n));
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
    }

    /// Writes `buf`, which a file's bytes follow, holding it back to go out with them.
    fn poll_send_more(&mut self, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        let tcp = self.io.inner();
        loop {
            ready!(tcp.poll_write_ready(cx))?;
            match tcp.try_io(Interest::WRITABLE, || {
                rustix::net::send(tcp, buf, rustix::net::SendFlags::MORE).map_err(io::Error::from)
            }) {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                r => return Poll::Ready(r),
            }
        }
    }
}

impl hyper::rt::Read for Conn {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: hyper::rt::ReadBufCursor<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl hyper::rt::Write for Conn {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        if is_placeholder(buf) {
            return self.poll_send_file(cx, buf.len());
        }
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let Some(first) = bufs.iter().position(|b| is_placeholder(b)) else {
            return Pin::new(&mut self.io).poll_write_vectored(cx, bufs);
        };
        match first {
            0 => self.poll_send_file(cx, bufs[0].len()),
            // Headers (or a body's end) right before a file: corked, to leave with its bytes.
            1 => self.poll_send_more(cx, &bufs[0]),
            _ => Pin::new(&mut self.io).poll_write_vectored(cx, &bufs[..first]),
        }
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

/// Serves `router` over HTTP/1.1 on every connection `listener` accepts, until the listener
/// fails. Each connection runs in a task of its own.
pub async fn serve(listener: TcpListener, router: Router) -> io::Result<()> {
    loop {
        let (tcp, _) = match listener.accept().await {
            Ok(c) => c,
            // Out of descriptors or a connection reset before it was taken: wait, go on.
            Err(e) if is_transient(&e) => {
                tracing::warn!("accepting an HTTP connection: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
            Err(e) => return Err(e),
        };
        let _ = tcp.set_nodelay(true);
        let queue = SendQueue::default();
        let conn = Conn {
            io: TokioIo::new(tcp),
            queue: queue.clone(),
        };
        let router = router.clone();
        let service = hyper::service::service_fn(move |request| {
            tower_service::Service::call(&mut router.clone(), request)
        });
        tokio::spawn(QUEUE.scope(queue, async move {
            let served = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_TIMEOUT)
                .serve_connection(conn, service)
                .await;
            if let Err(e) = served {
                tracing::debug!("HTTP connection ended: {e}");
            }
        }));
    }
}

fn is_transient(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::Interrupted
            | io::ErrorKind::WouldBlock
    ) || e.raw_os_error().is_some_and(|c| c == 24 || c == 23)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::future::poll_fn;
    use std::os::unix::fs::FileExt;
    use tokio::io::AsyncReadExt;

    /// A connection of this server and the client's end, which is read to its end in a task.
    async fn pair() -> (Conn, tokio::task::JoinHandle<Vec<u8>>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let mut client = TcpStream::connect(addr).await.unwrap();
        let (server, _) = listener.accept().await.unwrap();
        let reader = tokio::spawn(async move {
            let mut got = Vec::new();
            let _ = client.read_to_end(&mut got).await;
            got
        });
        let conn = Conn {
            io: TokioIo::new(server),
            queue: SendQueue::default(),
        };
        (conn, reader)
    }

    /// Writes `n` placeholder bytes as the HTTP stack would; the first error, if any.
    async fn write_placeholders(conn: &mut Conn, n: usize) -> io::Result<usize> {
        let mut sent = 0;
        while sent < n {
            let slice = &ZEROS[sent..n];
            sent +=
                poll_fn(|cx| hyper::rt::Write::poll_write(Pin::new(&mut *conn), cx, slice)).await?;
        }
        Ok(sent)
    }

    fn file_with(bytes: &[u8]) -> (tempfile::TempDir, std::path::PathBuf, File) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("blob");
        std::fs::write(&path, bytes).unwrap();
        let file = File::open(&path).unwrap();
        (dir, path, file)
    }

    #[tokio::test]
    async fn placeholders_go_out_as_the_files_bytes() {
        let data: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
        let (_dir, _, file) = file_with(&data);
        let stamp = FileStamp::of(&file).unwrap();
        let (mut conn, reader) = pair().await;
        let file = Arc::new(file);
        // Two sends of one body, the second checked at its end, as `FileBody` queues them.
        conn.queue.0.lock().extend([
            FileSend {
                file: file.clone(),
                offset: 0,
                len: 100_000,
                check: None,
            },
            FileSend {
                file,
                offset: 100_000,
                len: 200_000,
                check: Some(stamp),
            },
        ]);
        assert_eq!(
            write_placeholders(&mut conn, 100_000).await.unwrap(),
            100_000
        );
        assert_eq!(
            write_placeholders(&mut conn, 200_000).await.unwrap(),
            200_000
        );
        assert!(conn.queue.0.lock().is_empty());
        drop(conn);
        assert_eq!(reader.await.unwrap(), data);
    }

    #[tokio::test]
    async fn a_file_changed_since_it_was_verified_ends_the_connection_before_its_tail() {
        let data = vec![7u8; 200_000];
        let (_dir, path, file) = file_with(&data);
        let stamp = FileStamp::of(&file).unwrap();
        // Changed in place after it was verified, its modification time set back.
        let modified = file.metadata().unwrap().modified().unwrap();
        let w = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
        w.write_all_at(b"X", 150_000).unwrap();
        w.set_modified(modified).unwrap();
        let (mut conn, reader) = pair().await;
        conn.queue.0.lock().push_back(FileSend {
            file: Arc::new(file),
            offset: 0,
            len: data.len() as u64,
            check: Some(stamp),
        });
        let err = write_placeholders(&mut conn, data.len()).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidData, "{err}");
        drop(conn);
        // The client holds at most the file's bytes, never the tail that would complete it.
        assert!(reader.await.unwrap().len() <= data.len());
    }

    #[tokio::test]
    async fn a_file_cut_short_or_a_placeholder_without_a_file_ends_the_connection() {
        let (_dir, path, file) = file_with(&[1u8; 50_000]);
        let stamp = FileStamp::of(&file).unwrap();
        std::fs::OpenOptions::new()
            .write(true)
            .open(&path)
            .unwrap()
            .set_len(10_000)
            .unwrap();
        let (mut conn, _reader) = pair().await;
        conn.queue.0.lock().push_back(FileSend {
            file: Arc::new(file),
            offset: 0,
            len: 50_000,
            check: Some(stamp),
        });
        let err = write_placeholders(&mut conn, 50_000).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::UnexpectedEof, "{err}");
        let (mut conn, _reader) = pair().await;
        assert!(write_placeholders(&mut conn, 10).await.is_err());
    }
}
