//! Running one pipelined batch of commands (everything one read brought,
//! up to the pipeline depth) and collecting the replies in request order.
//!
//! Commands run concurrently where no client could tell, in order where it
//! could. The batch is cut into *segments*; commands within a segment run
//! at once, and a segment starts only when the previous one has finished:
//! - a command on one key joins the current segment unless the segment
//!   already touches that key and one of the two writes it (a read or write
//!   after a write to the same key waits for it, and a write after a read
//!   does not overtake the read);
//! - a multi-key or whole-data-set command (MGET, MSET, DEL of several keys,
//!   DBSIZE, INFO, ...) waits for everything before it and runs alone;
//! - a command that touches no data (PING, AUTH, HELLO, CLIENT ...) runs in
//!   place, in order, so connection state changes apply exactly from the
//!   next command on.
//!
//! A command is looked up and its handler called only when its turn in this
//! order has come, so a handler that answers at once (a read served from
//! this core's map) still sees every earlier write of its connection.

use std::collections::HashMap;
use std::rc::Rc;
use std::time::{Duration, Instant};

use bytes::Bytes;

use super::commands::{self, Args, Class, Exec, Resolved};
use super::frame::{Frame, Proto};
use super::session::Conn;
use crate::metrics::{OpLabel, Protocol, StatusLabel};

/// The replies of a batch, each with the protocol it is to be written in.
pub struct Outcome {
    pub replies: Vec<(Proto, Frame)>,
    /// QUIT or a request that is no Redis client's: close after writing.
    pub close: bool,
}

struct Pending {
    replies: Vec<Option<(Proto, Frame)>>,
    running: Vec<(usize, Proto, glommio::Task<Frame>)>,
    /// Keys of the current segment: whether each was written.
    keys: HashMap<Bytes, bool>,
}

impl Pending {
    fn set(&mut self, i: usize, proto: Proto, frame: Frame) {
        self.replies[i] = Some((proto, frame));
    }

    /// Waits for the current segment to finish.
    async fn drain(&mut self) {
        for (i, proto, task) in std::mem::take(&mut self.running) {
            let frame = task.await;
            self.set(i, proto, frame);
        }
        self.keys.clear();
    }

    /// Whether a command on `key` must wait for the current segment.
    fn conflicts(&self, key: &Bytes, write: bool) -> bool {
        self.keys.get(key).is_some_and(|written| *written || write)
    }
}

/// Runs `commands` for `conn`.
pub async fn run(conn: &Rc<Conn>, commands: Vec<Args>) -> Outcome {
    let n = commands.len();
    let mut p = Pending { replies: (0..n).map(|_| None).collect(), running: Vec::new(), keys: HashMap::new() };
    let mut close = false;
    // One clock read for the batch: its commands arrived together, and a
    // command's latency counts from then (the ones before it in the batch
    // are part of its wait). Clock reads were 6% of a SET's CPU.
    let started = Instant::now();
    conn.last_active.set(started);
    if n > 1 {
        // GET is by far the most pipelined read: load its keys' entries
        // together before the batch reads them one by one.
        let gets = commands.iter().filter(|a| a.len() == 2 && a[0].eq_ignore_ascii_case(b"get"));
        conn.svc.prefetch(gets.map(|a| &a[1][..]));
    }
    for (i, args) in commands.into_iter().enumerate() {
        let (spec, args) = match commands::resolve(conn, args) {
            Resolved::Run(spec, args) => (spec, args),
            Resolved::Reply(frame) => {
                record(conn, OpLabel::Other, &frame, Duration::ZERO);
                p.set(i, conn.proto.get(), frame);
                continue;
            }
            Resolved::Close => {
                close = true;
                break;
            }
        };
        let class = commands::class(spec, &args);
        let barrier = class == Class::Barrier;
        match class {
            Class::Free => {}
            Class::Key { key, write } => {
                if p.conflicts(&key, write) {
                    p.drain().await;
                }
                *p.keys.entry(key).or_insert(false) |= write;
            }
            Class::Barrier => p.drain().await,
        }
        let op = op_label(spec.name);
        let exec = (spec.handler)(conn, args);
        // After the handler: HELLO answers in the protocol it switches to.
        let proto = conn.proto.get();
        match exec {
            Exec::Now(frame) => {
                record(conn, op, &frame, started.elapsed());
                p.set(i, proto, frame)
            }
            Exec::Later(future) if barrier => {
                let frame = future.await;
                record(conn, op, &frame, started.elapsed());
                p.set(i, proto, frame);
            }
            Exec::Later(future) => {
                let conn = conn.clone();
                let timed = async move {
                    let frame = future.await;
                    record(&conn, op, &frame, started.elapsed());
                    frame
                };
                p.running.push((i, proto, glommio::spawn_local(timed)))
            }
        }
        if conn.quit.get() {
            close = true;
            break;
        }
    }
    p.drain().await;
    // Commands after a QUIT or an HTTP request are dropped unanswered.
    let replies = p.replies.into_iter().map_while(|r| r).collect();
    Outcome { replies, close }
}

/// Counts one answered command in the Prometheus request metrics.
fn record(conn: &Conn, op: OpLabel, reply: &Frame, latency: Duration) {
    conn.svc.metrics.request(Protocol::Resp, op, status_label(reply), latency);
}

/// The metrics' name for a command (`container|sub` counts as the container).
fn op_label(name: &str) -> OpLabel {
    match name.split('|').next().unwrap_or(name) {
        "get" | "getrange" | "substr" | "strlen" | "getdel" | "getex" => OpLabel::Get,
        "set" | "setnx" | "setex" | "psetex" | "getset" | "setrange" | "rename" | "renamenx" => OpLabel::Set,
        "del" | "unlink" | "flushdb" | "flushall" => OpLabel::Del,
        "exists" | "type" => OpLabel::Exists,
        "mget" => OpLabel::MGet,
        "mset" | "msetnx" => OpLabel::MSet,
        "incr" | "decr" | "incrby" | "decrby" | "incrbyfloat" => OpLabel::Incr,
        "append" => OpLabel::Append,
        "expire" | "pexpire" | "expireat" | "pexpireat" | "persist" => OpLabel::Expire,
        "ttl" | "pttl" | "expiretime" | "pexpiretime" => OpLabel::Ttl,
        "scan" | "keys" | "randomkey" | "dbsize" => OpLabel::Scan,
        "ping" | "echo" => OpLabel::Ping,
        "auth" | "hello" => OpLabel::Auth,
        "info" => OpLabel::Info,
        "cluster" | "readonly" | "readwrite" | "asking" => OpLabel::Cluster,
        _ => OpLabel::Other,
    }
}

/// The outcome of a reply, by the error code clients act on.
fn status_label(reply: &Frame) -> StatusLabel {
    let Frame::Error(message) = reply else {
        return if matches!(reply, Frame::Null) { StatusLabel::NotFound } else { StatusLabel::Ok };
    };
    match message.split(' ').next().unwrap_or("") {
        "NOAUTH" | "WRONGPASS" | "NOPERM" => StatusLabel::Unauthorized,
        "TRYAGAIN" | "CLUSTERDOWN" | "MOVED" | "ASK" | "LOADING" | "BUSY" => StatusLabel::Unavailable,
        "CROSSSLOT" | "WRONGTYPE" => StatusLabel::BadRequest,
        "MISCONF" => StatusLabel::Error,
        _ if message.contains("too large") || message.contains("too big") => StatusLabel::TooLarge,
        "ERR"
            if ["syntax", "wrong number", "unknown", "not", "invalid", "out of range", "overflow"]
                .iter()
                .any(|w| message.contains(w)) =>
        {
            StatusLabel::BadRequest
        }
        _ => StatusLabel::Error,
    }
}
