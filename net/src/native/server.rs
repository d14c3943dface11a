//! Serving one native-protocol connection.
//!
//! A reader loop decodes frames and starts each request; answers are encoded
//! into an outbox ([`crate::outbox`]) that a writer task drains with one
//! `write` per batch.
//! At most `pipeline_depth_max` requests are in flight per connection: the
//! reader takes a permit per request and the writer returns it once the
//! answer is on the wire, so a client that does not read its answers stops
//! being read (backpressure, bounded memory). Answers may be sent in any
//! order; clients match them by request id.
//!
//! Bad input: an unknown opcode, a malformed body or an oversized key or
//! value gets an error answer and the connection goes on. A frame header
//! that cannot be trusted (too short, or longer than the frame limit) gets an
//! error answer and the connection is closed, since the stream cannot be
//! resynchronised.

use std::cell::Cell;
use std::io;
use std::rc::Rc;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use futures_lite::{AsyncReadExt, AsyncWriteExt};
use glommio::net::TcpStream;
use kv_engine::{Command, Expiry, Outcome};
use kv_replication::keyspace::wall_clock_ms;
use kv_replication::CoreError;

use super::codec::{self, FrameError, Hello, Opcode, Request, Response, Status, Welcome, WelcomeStatus};
use crate::mesh::{Op, Reply};
use crate::metrics::{OpLabel, Protocol, StatusLabel};
use crate::outbox;
use crate::readbuf::{Reader, CHUNK_BYTES};
use crate::service::Service;

/// A client must complete the handshake within this time.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Largest frame read from a connection that has not authenticated yet.
const PREAUTH_FRAME_BYTES_MAX: usize = 64 * 1024;

/// A connection's answer queue (see [`crate::outbox`]) and whether it may
/// make requests.
struct Outbox {
    queue: Rc<outbox::Outbox>,
    /// It gave the password with AUTH, or the node needs none.
    authenticated: Cell<bool>,
}

impl Outbox {
    fn push(&self, id: u64, echo: u8, resp: &Response) {
        self.queue.push(1, |bytes| codec::encode_response(id, echo, resp, bytes));
    }

    /// Answers that go out without taking a pipeline slot (errors about the
    /// stream itself, sent just before closing).
    fn push_unpermitted(&self, id: u64, echo: u8, resp: &Response) {
        self.queue.push_unpermitted(|bytes| codec::encode_response(id, echo, resp, bytes));
    }
}

/// Serves one accepted connection until the client leaves, the stream breaks
/// or the core shuts down.
pub async fn serve(stream: TcpStream, svc: Rc<Service>) {
    let peer = stream.peer_addr().map(|a| a.to_string()).unwrap_or_default();
    svc.connections.set(svc.connections.get() + 1);
    let result = serve_connection(stream, &svc).await;
    svc.connections.set(svc.connections.get() - 1);
    if let Err(e) = result {
        tracing::debug!(%peer, "connection closed: {e}");
    }
}

async fn serve_connection(mut stream: TcpStream, svc: &Rc<Service>) -> io::Result<()> {
    stream.set_nodelay(true)?;
    stream.set_write_timeout(Some(HANDSHAKE_TIMEOUT))?;
    if !handshake(&mut stream, svc).await? {
        return Ok(());
    }
    let depth = svc.limits.pipeline_depth_max as u64;
    let (queue, writer) = outbox::start(&stream, depth, |_| {})?;
    let outbox = Rc::new(Outbox { queue, authenticated: Cell::new(svc.frontend.password.is_none()) });
    let read_result = read_loop(&mut stream, svc, &outbox).await;
    // Let every started request answer before closing.
    if !writer.finish().await {
        tracing::debug!("connection closed with answers still in flight");
    }
    read_result
}

/// Reads the client's hello and answers it. Returns whether to go on.
async fn handshake(stream: &mut TcpStream, svc: &Service) -> io::Result<bool> {
    let mut hello = [0u8; codec::HELLO_BYTES];
    let read = glommio::timer::timeout(HANDSHAKE_TIMEOUT, async {
        stream.read_exact(&mut hello).await.map_err(glommio::GlommioError::from)
    });
    read.await.map_err(|e| io::Error::other(format!("handshake: {e}")))?;
    let Some(hello) = Hello::decode(&hello) else {
        return Err(io::Error::other("not a kvd native-protocol client (bad magic)"));
    };
    let status = if !(hello.version_min..=hello.version_max).contains(&codec::VERSION) {
        WelcomeStatus::UnsupportedVersion
    } else if svc.connections.get() > svc.connections_max() {
        WelcomeStatus::TooManyConnections
    } else {
        WelcomeStatus::Ok
    };
    let welcome = Welcome {
        status: status as u16,
        version: codec::VERSION,
        frame_bytes_max: svc.limits.frame_bytes_max as u32,
        pipeline_depth_max: svc.limits.pipeline_depth_max as u32,
        node_id: svc.layout.node_id,
        cores: svc.layout.cores,
        shards: svc.layout.shards,
        core: svc.core_index,
    };
    stream.write_all(&welcome.encode()).await?;
    Ok(status == WelcomeStatus::Ok)
}

async fn read_loop(stream: &mut TcpStream, svc: &Rc<Service>, outbox: &Rc<Outbox>) -> io::Result<()> {
    let mut buf = BytesMut::with_capacity(CHUNK_BYTES);
    let mut reader = Reader::default();
    let mut want = CHUNK_BYTES;
    loop {
        loop {
            // Checked before every request: a client that keeps its pipeline
            // full always has data ready, so the read below never yields to
            // the shutdown signal by itself.
            if svc.shutdown.is_triggered() {
                return Ok(());
            }
            // Before authentication only small frames are read, so a
            // stranger cannot make the node buffer large requests.
            let frame_bytes_max = match outbox.authenticated.get() {
                true => svc.limits.frame_bytes_max,
                false => svc.limits.frame_bytes_max.min(PREAUTH_FRAME_BYTES_MAX),
            };
            let header = match codec::parse_header(&buf, frame_bytes_max) {
                Ok(Some(h)) => h,
                Ok(None) => break,
                Err(e) => {
                    let id = u64::from_le_bytes(buf[8..16].try_into().expect("header is buffered"));
                    let (status, label) = match e {
                        FrameError::TooLarge(..) => (Status::FrameTooLarge, StatusLabel::TooLarge),
                        FrameError::TooShort(_) => (Status::BadRequest, StatusLabel::BadRequest),
                    };
                    svc.metrics.request(Protocol::Native, OpLabel::Other, label, Duration::ZERO);
                    outbox.push_unpermitted(id, buf[4], &Response::Error { status, message: e.to_string() });
                    return Err(io::Error::other(e.to_string()));
                }
            };
            if buf.len() < header.frame_bytes {
                want = header.frame_bytes - buf.len();
                break;
            }
            let frame = buf.split_to(header.frame_bytes).freeze();
            let slot = futures_lite::future::or(async { outbox.queue.permits.acquire(1).await.is_ok() }, async {
                svc.shutdown.wait().await;
                false
            });
            if !slot.await {
                return Ok(());
            }
            dispatch(svc, outbox, header.id, header.code, frame);
        }
        let read = futures_lite::future::or(async { Some(reader.read(stream, &mut buf, want).await) }, async {
            svc.shutdown.wait().await;
            None
        });
        let n = match read.await {
            Some(Ok(n)) => n,
            Some(Err(e)) => return Err(e),
            None => return Ok(()),
        };
        if n == 0 {
            return Ok(());
        }
        want = CHUNK_BYTES;
        if outbox.authenticated.get() {
            // A pipelined batch of reads: load their keys' entries together
            // before they are looked up one by one (see `Service::prefetch`).
            let keys = codec::get_keys(&buf, svc.limits.frame_bytes_max);
            if keys.len() > 1 {
                svc.prefetch(keys.into_iter());
            }
        }
    }
}

/// Starts one request: answered at once if it needs no waiting, otherwise
/// in a task of its own.
fn dispatch(svc: &Rc<Service>, outbox: &Rc<Outbox>, id: u64, opcode: u8, frame: Bytes) {
    let answer = Answer { id, opcode, started: Instant::now() };
    let decoded = codec::decode_request_frame(&frame).and_then(|r| check_limits(svc, r));
    let req = match decoded {
        Ok(req) => req,
        Err(refusal) => {
            let resp = Response::Error { status: refusal.status, message: refusal.message };
            return answer.send(svc, outbox, &resp);
        }
    };
    if !outbox.authenticated.get() && !matches!(req, Request::Auth { .. } | Request::Ping) {
        let message = "authentication required: send AUTH with the password first".to_string();
        return outbox.push(id, opcode, &Response::Error { status: Status::Unauthenticated, message });
    }
    let (key, op) = match req {
        Request::Ping => return answer.send(svc, outbox, &Response::Pong),
        Request::BackupBegin { shard } => return backup_begin(svc, outbox, answer, shard),
        Request::BackupRead { id: backup, offset, max_len } => {
            // An answer never exceeds the frame limit the client was told.
            let max_len = (max_len as usize).min(svc.limits.frame_bytes_max - codec::FRAME_HEADER_BYTES);
            let resp = match crate::backup::read(backup, offset, max_len) {
                Ok(bytes) => Response::BackupChunk(bytes),
                Err(crate::backup::ReadError::Unknown) => Response::NotFound,
                Err(crate::backup::ReadError::PastEnd { total }) => Response::Error {
                    status: Status::BadRequest,
                    message: format!("offset {offset} is past the backup's end ({total} bytes)"),
                },
            };
            return answer.send(svc, outbox, &resp);
        }
        Request::BackupEnd { id: backup } => {
            let resp = if crate::backup::end(backup) { Response::Pong } else { Response::NotFound };
            return answer.send(svc, outbox, &resp);
        }
        Request::Auth { password } => return answer.send(svc, outbox, &authenticate(svc, outbox, &password)),
        Request::Status => {
            let (svc, outbox) = (svc.clone(), outbox.clone());
            glommio::spawn_local(async move {
                let resp = match svc.node_status().await {
                    Ok(json) => Response::Status(json.to_string()),
                    Err(e) => to_response(Err(e)),
                };
                answer.send(&svc, &outbox, &resp);
            })
            .detach();
            return;
        }
        Request::Get { key, consistency } | Request::GetTtl { key, consistency } => {
            if let Some(reply) = svc.try_read_now(&key, consistency) {
                return answer.send(svc, outbox, &respond(opcode, Ok(reply)));
            }
            (key.clone(), Op::Get { key, consistency })
        }
        Request::Put { key, value, condition } => (key.clone(), Op::Write(Command::Put { key, value, condition })),
        Request::PutTtl { key, value, condition, ttl_ms } => {
            let expiry = Expiry::At(wall_clock_ms().saturating_add(ttl_ms));
            (key.clone(), Op::Write(Command::Set { key, value, condition, expiry, get: false }))
        }
        Request::Delete { key, condition } => (key.clone(), Op::Write(Command::Delete { key, condition })),
    };
    let (svc, outbox) = (svc.clone(), outbox.clone());
    glommio::spawn_local(async move {
        let result = svc.execute(&key, op).await;
        answer.send(&svc, &outbox, &respond(opcode, result));
    })
    .detach();
}

/// BACKUP_BEGIN: the shard's owning core copies it if this node leads it
/// (never forwarded: see `route::execute`); the copy is held on this core,
/// the connection's, for BACKUP_READ.
fn backup_begin(svc: &Rc<Service>, outbox: &Rc<Outbox>, answer: Answer, shard: u32) {
    if shard >= svc.layout.shards {
        let message = format!("shard {shard} does not exist: there are {} shards", svc.layout.shards);
        return answer.send(svc, outbox, &Response::Error { status: Status::BadRequest, message });
    }
    let (svc, outbox) = (svc.clone(), outbox.clone());
    glommio::spawn_local(async move {
        let result = svc.execute_on(shard, svc.layout.core_of_shard(shard), Op::Backup).await;
        let resp = match result {
            Ok(Reply::Backup(copy)) => {
                let (index, term, total, keys) = (copy.index, copy.term, copy.bytes.len() as u64, copy.keys);
                match crate::backup::hold(svc.core_index, copy) {
                    Ok(id) => Response::BackupBegun { id, index, term, total, keys },
                    Err(message) => Response::Error { status: Status::Retry, message },
                }
            }
            other => to_response(other),
        };
        answer.send(&svc, &outbox, &resp);
    })
    .detach();
}

/// A request being answered: where the answer goes, and when it started
/// (for the latency metric).
struct Answer {
    id: u64,
    opcode: u8,
    started: Instant,
}

impl Answer {
    fn send(self, svc: &Service, outbox: &Outbox, resp: &Response) {
        outbox.push(self.id, self.opcode, resp);
        let op = match Opcode::from_u8(self.opcode) {
            Some(Opcode::Ping) => OpLabel::Ping,
            Some(Opcode::Get) => OpLabel::Get,
            Some(Opcode::Put | Opcode::PutTtl) => OpLabel::Set,
            Some(Opcode::Auth) => OpLabel::Auth,
            Some(Opcode::GetTtl) => OpLabel::Ttl,
            Some(Opcode::Delete) => OpLabel::Del,
            Some(Opcode::Status) => OpLabel::Status,
            Some(Opcode::BackupBegin | Opcode::BackupRead | Opcode::BackupEnd) | None => OpLabel::Other,
        };
        svc.metrics.request(Protocol::Native, op, status_label(resp), self.started.elapsed());
    }
}

fn status_label(resp: &Response) -> StatusLabel {
    match resp {
        Response::Pong
        | Response::Status(_)
        | Response::Value { .. }
        | Response::Expiry { .. }
        | Response::Written { .. }
        | Response::Deleted { .. }
        | Response::BackupBegun { .. }
        | Response::BackupChunk(_) => StatusLabel::Ok,
        Response::NotFound => StatusLabel::NotFound,
        Response::ConditionFailed { .. } => StatusLabel::Conflict,
        Response::Error { status, .. } => match status {
            Status::Ok | Status::NotFound => StatusLabel::Error,
            Status::ConditionFailed => StatusLabel::Conflict,
            Status::BadRequest | Status::UnknownOpcode => StatusLabel::BadRequest,
            Status::KeyTooLarge | Status::ValueTooLarge | Status::FrameTooLarge => StatusLabel::TooLarge,
            Status::Unavailable | Status::ShuttingDown | Status::NotLeader | Status::Retry | Status::OutOfMemory => {
                StatusLabel::Unavailable
            }
            Status::Unauthenticated => StatusLabel::Unauthorized,
            Status::Internal => StatusLabel::Error,
        },
    }
}

fn authenticate(svc: &Service, outbox: &Outbox, password: &[u8]) -> Response {
    if svc.frontend.password.is_none() {
        let message = "AUTH given, but this node has no password set".to_string();
        return Response::Error { status: Status::BadRequest, message };
    }
    if !svc.frontend.password_matches(password) {
        let message = "invalid password".to_string();
        return Response::Error { status: Status::Unauthenticated, message };
    }
    outbox.authenticated.set(true);
    Response::Pong
}

fn check_limits(svc: &Service, req: Request) -> Result<Request, codec::Refusal> {
    let limits = &svc.limits;
    if let Some(key) = req.key() {
        if key.len() > limits.key_bytes_max {
            let message = format!("key of {} bytes exceeds the limit of {} bytes", key.len(), limits.key_bytes_max);
            return Err(codec::Refusal { status: Status::KeyTooLarge, message });
        }
    }
    if let Request::Put { value, .. } | Request::PutTtl { value, .. } = &req {
        if value.len() > limits.value_bytes_max {
            let message =
                format!("value of {} bytes exceeds the limit of {} bytes", value.len(), limits.value_bytes_max);
            return Err(codec::Refusal { status: Status::ValueTooLarge, message });
        }
    }
    Ok(req)
}

/// The answer to a request with this opcode: GET_TTL answers a value with
/// its expiry instead.
fn respond(opcode: u8, result: Result<Reply, CoreError>) -> Response {
    match (Opcode::from_u8(opcode), result) {
        (Some(Opcode::GetTtl), Ok(Reply::Value(Some(stored)))) => {
            Response::Expiry { version: stored.version, expires_at_ms: stored.expires_at_ms }
        }
        (_, result) => to_response(result),
    }
}

fn to_response(result: Result<Reply, CoreError>) -> Response {
    match result {
        Ok(Reply::Value(Some(stored))) => Response::Value { version: stored.version, value: stored.value },
        Ok(Reply::Value(None)) => Response::NotFound,
        Ok(Reply::Outcome(Outcome::Written { version })) => Response::Written { version },
        Ok(Reply::Outcome(Outcome::Deleted { version })) => Response::Deleted { version },
        Ok(Reply::Outcome(Outcome::NotFound)) => Response::NotFound,
        Ok(Reply::Outcome(Outcome::ConditionFailed { current_version })) => {
            Response::ConditionFailed { current_version }
        }
        Ok(Reply::Status(json)) => Response::Status(json),
        Ok(other) => Response::Error { status: Status::Internal, message: format!("unexpected answer {other:?}") },
        Err(e) => {
            let status = match e {
                CoreError::NotLeader { .. } => Status::NotLeader,
                CoreError::Poisoned(_) | CoreError::Unavailable(_) => Status::Unavailable,
                CoreError::ShuttingDown => Status::ShuttingDown,
                CoreError::Dropped | CoreError::Busy => Status::Retry,
                CoreError::WrongCore(_) => Status::Internal,
                CoreError::OutOfMemory => Status::OutOfMemory,
            };
            Response::Error { status, message: e.to_string() }
        }
    }
}
