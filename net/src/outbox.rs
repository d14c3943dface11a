//! A client connection's answers on their way out, for the native and RESP
//! servers alike.
//!
//! Request handlers append encoded answers to the [`Outbox`]; a writer task
//! on a duplicate of the socket drains it with one `write` per batch, so
//! reading the next requests never waits for a slow client's window. Each
//! request holds a pipeline permit until its answer has been written (or
//! the connection broke), which bounds the answers buffered per connection.

use std::cell::{Cell, RefCell};
use std::io;
use std::os::fd::{AsRawFd, FromRawFd};
use std::rc::Rc;
use std::time::Duration;

use futures_lite::AsyncWriteExt;
use glommio::channels::local_channel::{self, LocalReceiver, LocalSender};
use glommio::net::TcpStream;
use glommio::sync::Semaphore;

/// A write to a client that does not read for this long fails the connection.
pub const WRITE_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a closing connection waits for the answers still in flight.
pub const DRAIN_TIMEOUT: Duration = Duration::from_secs(30);

/// Answers waiting to be written, plus how many requests they complete.
pub struct Outbox {
    bytes: RefCell<Vec<u8>>,
    answers: Cell<u64>,
    broken: Cell<bool>,
    closed: Cell<bool>,
    wake: LocalSender<()>,
    /// One per request in flight, up to the pipeline depth.
    pub permits: Semaphore,
}

impl Outbox {
    /// Queues what `encode` appends as the answers to `answers` requests
    /// (each took a permit). On a broken connection nothing is queued and
    /// the permits come back at once.
    pub fn push(&self, answers: u64, encode: impl FnOnce(&mut Vec<u8>)) {
        if self.broken.get() {
            self.permits.signal(answers);
            return;
        }
        encode(&mut self.bytes.borrow_mut());
        self.answers.set(self.answers.get() + answers);
        let _ = self.wake.try_send(());
    }

    /// Queues an answer that took no permit (an error about the stream
    /// itself, sent just before closing).
    pub fn push_unpermitted(&self, encode: impl FnOnce(&mut Vec<u8>)) {
        encode(&mut self.bytes.borrow_mut());
        let _ = self.wake.try_send(());
    }
}

/// The writing half of a connection.
pub struct Writer {
    task: glommio::Task<()>,
    outbox: Rc<Outbox>,
    depth: u64,
}

/// Starts the writer task on a duplicate of `stream`'s socket (writes
/// bounded by [`WRITE_TIMEOUT`]), with
/// `depth` permits; `on_written` hears the size of every write that succeeded.
pub fn start(stream: &TcpStream, depth: u64, on_written: impl Fn(usize) + 'static) -> io::Result<(Rc<Outbox>, Writer)> {
    let writer = dup(stream)?;
    writer.set_write_timeout(Some(WRITE_TIMEOUT))?;
    let (wake, woken) = local_channel::new_bounded(1);
    let outbox = Rc::new(Outbox {
        bytes: RefCell::new(Vec::new()),
        answers: Cell::new(0),
        broken: Cell::new(false),
        closed: Cell::new(false),
        wake,
        permits: Semaphore::new(depth),
    });
    let task = glommio::spawn_local(write_loop(writer, outbox.clone(), woken, on_written));
    Ok((outbox.clone(), Writer { task, outbox, depth }))
}

/// A second handle on `stream`'s socket, so that one task can write while
/// another reads, with no lock between them.
pub fn dup(stream: &TcpStream) -> io::Result<TcpStream> {
    // SAFETY: duplicating a descriptor we own; close-on-exec like the original.
    let fd = unsafe { libc::fcntl(stream.as_raw_fd(), libc::F_DUPFD_CLOEXEC, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` is a fresh duplicate of a connected TCP socket we own.
    Ok(unsafe { TcpStream::from_raw_fd(fd) })
}

impl Writer {
    /// Waits up to [`DRAIN_TIMEOUT`] for the answers of every request
    /// started, then writes what is queued and closes the writing half.
    /// Returns whether every answer was in before the timeout.
    pub async fn finish(self) -> bool {
        let (outbox, depth) = (&self.outbox, self.depth);
        let drained =
            glommio::timer::timeout(DRAIN_TIMEOUT, async { outbox.permits.acquire(depth).await }).await.is_ok();
        self.outbox.closed.set(true);
        let _ = self.outbox.wake.try_send(());
        self.task.await;
        drained
    }
}

async fn write_loop(mut writer: TcpStream, outbox: Rc<Outbox>, woken: LocalReceiver<()>, on_written: impl Fn(usize)) {
    loop {
        let bytes = std::mem::take(&mut *outbox.bytes.borrow_mut());
        let answers = outbox.answers.replace(0);
        if !bytes.is_empty() && !outbox.broken.get() {
            match writer.write_all(&bytes).await {
                Ok(()) => on_written(bytes.len()),
                Err(e) => {
                    tracing::debug!("write to client failed: {e}");
                    outbox.broken.set(true);
                    // Wake the reader too: the connection is over.
                    let _ = writer.shutdown(std::net::Shutdown::Both).await;
                }
            }
        }
        if answers > 0 {
            outbox.permits.signal(answers);
        }
        if bytes.is_empty() {
            if outbox.closed.get() {
                break;
            }
            woken.recv().await;
        }
    }
    let _ = writer.close().await;
}
