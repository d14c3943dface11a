//! Serving one RESP connection, on the core that accepted it.
//!
//! The reader parses every complete command in its buffer (up to the
//! pipeline depth) into a batch, runs the batch ([`super::batch`]) and hands
//! the replies, in order, to an outbox ([`crate::outbox`]) that a writer
//! task drains with one `write` per batch, so writing one batch overlaps
//! running the next. The
//! reader takes a pipeline permit per command and the writer returns them
//! once the replies are on the wire: a client that does not read its
//! replies stops being read (backpressure, bounded memory). The buffer is
//! read from the socket only when it holds no complete command, so it never
//! holds more than one command plus one read.
//!
//! Until a client has authenticated (when a password is set) commands are
//! read one at a time under Redis's pre-authentication caps, so AUTH takes
//! effect from the very next command. A protocol error is answered
//! `-ERR Protocol error: ...` and closes the connection, as does a request
//! that looks like HTTP (without an answer). Over the connection limit, a
//! client gets `-ERR max number of clients reached`. On shutdown the reader
//! stops, the batch in flight is answered, and the connection closes.

use std::io;
use std::rc::Rc;

use bytes::BytesMut;
use futures_lite::AsyncWriteExt;
use glommio::net::TcpStream;

use super::codec::Parser;
use super::frame::{Frame, Proto};
use super::session::Conn;
use super::{batch, stats};
use crate::outbox;
use crate::readbuf::{Reader, CHUNK_BYTES};
use crate::service::Service;

/// Most bytes asked of the socket per read while a large argument arrives:
/// the buffer grows with the data actually sent, not with the length a
/// client announced.
const READ_BYTES_MAX: usize = 1024 * 1024;

/// A connection's reply queue (see [`crate::outbox`]).
struct Outbox {
    queue: Rc<outbox::Outbox>,
}

impl Outbox {
    /// Queues the replies of `commands` commands (each took a permit).
    fn push(&self, replies: &[(Proto, Frame)], commands: u64, conn: &Conn) {
        let errors = replies.iter().filter(|(_, f)| f.is_error()).count() as u64;
        stats::add(&conn.counters.error_replies, errors);
        self.queue.push(commands, |bytes| {
            for (proto, frame) in replies {
                frame.encode(*proto, bytes);
            }
        });
    }

    /// A last reply that takes no permit (a protocol error before closing).
    fn push_unpermitted(&self, frame: &Frame, proto: Proto) {
        self.queue.push_unpermitted(|bytes| frame.encode(proto, bytes));
    }
}

/// Serves one accepted connection until the client leaves, the stream
/// breaks or the core shuts down.
pub async fn serve(stream: TcpStream, svc: Rc<Service>) {
    let peer = stream.peer_addr().map(|a| a.to_string()).unwrap_or_default();
    let counters = stats::of_core(svc.core_index);
    svc.connections.set(svc.connections.get() + 1);
    stats::add(&counters.clients, 1);
    stats::add(&counters.connections_total, 1);
    let result = serve_connection(stream, &svc, peer.clone()).await;
    stats::sub(&counters.clients, 1);
    svc.connections.set(svc.connections.get() - 1);
    if let Err(e) = result {
        tracing::debug!(%peer, "RESP connection closed: {e}");
    }
}

async fn serve_connection(mut stream: TcpStream, svc: &Rc<Service>, peer: String) -> io::Result<()> {
    stream.set_nodelay(true)?;
    stream.set_write_timeout(Some(outbox::WRITE_TIMEOUT))?;
    if svc.connections.get() > svc.connections_max() {
        stats::add(&stats::of_core(svc.core_index).rejected_connections, 1);
        stream.write_all(b"-ERR max number of clients reached\r\n").await?;
        return Ok(());
    }
    let local = stream.local_addr().map(|a| a.to_string()).unwrap_or_default();
    let conn = Conn::register(svc.clone(), peer, local);
    let depth = svc.limits.pipeline_depth_max as u64;
    let counters = conn.counters;
    let (queue, writer) = outbox::start(&stream, depth, move |n| stats::add(&counters.net_output_bytes, n as u64))?;
    let outbox = Rc::new(Outbox { queue });
    let read_result = read_loop(&mut stream, &conn, &outbox).await;
    if !writer.finish().await {
        tracing::debug!("RESP connection closed with replies still unsent");
    }
    read_result
}

async fn read_loop(stream: &mut TcpStream, conn: &Rc<Conn>, outbox: &Rc<Outbox>) -> io::Result<()> {
    let svc = &conn.svc;
    let depth = svc.limits.pipeline_depth_max;
    let mut buf = BytesMut::with_capacity(CHUNK_BYTES);
    let mut reader = Reader::default();
    let mut parser = Parser::default();
    loop {
        // Checked before every batch: a client that keeps its pipeline full
        // always has data ready, so the read never yields to shutdown.
        if svc.shutdown.is_triggered() {
            return Ok(());
        }
        // One command at a time before authentication: AUTH changes the caps.
        let batch_max = if conn.needs_auth() { 1 } else { depth };
        let mut batch = Vec::new();
        let mut failure = None;
        while batch.len() < batch_max {
            match parser.next(&mut buf, conn.caps()) {
                Ok(Some(command)) => batch.push(command),
                Ok(None) => break,
                Err(e) => {
                    failure = Some(e);
                    break;
                }
            }
        }
        let full = batch.len() == batch_max;
        if !batch.is_empty() {
            let count = batch.len() as u64;
            let permitted =
                futures_lite::future::or(async { outbox.queue.permits.acquire(count).await.is_ok() }, async {
                    svc.shutdown.wait().await;
                    false
                });
            if !permitted.await {
                return Ok(());
            }
            let done = batch::run(conn, batch).await;
            outbox.push(&done.replies, count, conn);
            if done.close {
                return Ok(());
            }
        }
        if let Some(e) = failure {
            outbox.push_unpermitted(&Frame::error(format!("ERR {e}")), conn.proto.get());
            return Err(io::Error::other(e.to_string()));
        }
        if full {
            continue;
        }
        let want = parser.wanted(buf.len()).clamp(CHUNK_BYTES, READ_BYTES_MAX);
        let read = futures_lite::future::or(async { Some(reader.read(stream, &mut buf, want).await) }, async {
            svc.shutdown.wait().await;
            None
        });
        let n = match read.await {
            Some(Ok(n)) => n,
            Some(Err(e)) => return Err(e),
            None => return Ok(()),
        };
        stats::add(&conn.counters.net_input_bytes, n as u64);
        if n == 0 {
            return Ok(());
        }
    }
}
