//! A blocking Rust client for the native protocol (what `kvctl` uses).
//!
//! ```no_run
//! use kv_net::client::Client;
//! use kv_engine::Condition;
//! let mut c = Client::connect(&["127.0.0.1:7379".to_string()], std::time::Duration::from_secs(5)).unwrap();
//! let version = c.put(b"greeting", b"hello", Condition::Always).unwrap();
//! assert_eq!(c.get(b"greeting").unwrap().unwrap().0, b"hello".to_vec());
//! # let _ = version;
//! ```
//!
//! Pipelining: [`Client::send`] any number of requests, then [`Client::recv`]
//! the answers; they may come back in any order, matched by request id.

use std::io::{self, Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::time::Duration;

use bytes::Bytes;
use kv_engine::Condition;
use kv_replication::Consistency;

use crate::native::codec::{self, Hello, Request, Response, Status, Welcome, WelcomeStatus};

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("could not connect to any of {endpoints}: {reason}")]
    Connect { endpoints: String, reason: String },
    #[error("connection error: {0}")]
    Io(#[from] io::Error),
    #[error("protocol error: {0}")]
    Protocol(String),
    #[error("server error {}: {message}", status.name())]
    Server { status: Status, message: String },
}

/// The outcome of a write: done (for a delete, `version` is the version the
/// deleted value had), or why not.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WriteResult {
    Written {
        version: u64,
    },
    /// For deletes: the key was absent.
    NotFound,
    ConditionFailed {
        current_version: Option<u64>,
    },
}

/// A shard copy the server holds for this client (BACKUP_BEGIN's answer).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BackupBegun {
    /// What BACKUP_READ and BACKUP_END name it by.
    pub id: u64,
    /// The Raft index and term the copy is as of.
    pub index: u64,
    pub term: u64,
    /// Bytes of the copy (a snapshot file, `kv_engine::snapshot`).
    pub total: u64,
    /// Entries in it.
    pub keys: u64,
}

/// Largest piece asked for in one BACKUP_READ (less when the server's frame
/// limit is lower).
pub const BACKUP_PIECE_BYTES_MAX: usize = 8 << 20;

pub struct Client {
    stream: TcpStream,
    welcome: Welcome,
    next_id: u64,
    out: Vec<u8>,
    endpoint: String,
}

impl Client {
    /// Connects to the first endpoint that answers the handshake.
    pub fn connect(endpoints: &[String], timeout: Duration) -> Result<Client, ClientError> {
        let mut reasons = Vec::new();
        for endpoint in endpoints {
            match Client::connect_one(endpoint, timeout) {
                Ok(c) => return Ok(c),
                Err(e) => reasons.push(format!("{endpoint}: {e}")),
            }
        }
        Err(ClientError::Connect { endpoints: endpoints.join(","), reason: reasons.join("; ") })
    }

    fn connect_one(endpoint: &str, timeout: Duration) -> Result<Client, ClientError> {
        let addrs: Vec<_> = endpoint.to_socket_addrs()?.collect();
        let addr = addrs.first().ok_or_else(|| ClientError::Protocol(format!("{endpoint} resolves to nothing")))?;
        let mut stream = TcpStream::connect_timeout(addr, timeout)?;
        stream.set_nodelay(true)?;
        stream.set_read_timeout(Some(timeout))?;
        stream.set_write_timeout(Some(timeout))?;
        stream.write_all(&Hello { version_min: codec::VERSION, version_max: codec::VERSION }.encode())?;
        let mut w = [0u8; codec::WELCOME_BYTES];
        stream.read_exact(&mut w)?;
        let welcome =
            Welcome::decode(&w).ok_or_else(|| ClientError::Protocol("not a kvd server (bad magic)".into()))?;
        match welcome.status {
            s if s == WelcomeStatus::Ok as u16 => {}
            s if s == WelcomeStatus::TooManyConnections as u16 => {
                return Err(ClientError::Protocol("server has too many connections".into()))
            }
            s if s == WelcomeStatus::UnsupportedVersion as u16 => {
                return Err(ClientError::Protocol(format!(
                    "server speaks protocol {}, not {}",
                    welcome.version,
                    codec::VERSION
                )))
            }
            s => return Err(ClientError::Protocol(format!("unknown handshake status {s}"))),
        }
        Ok(Client { stream, welcome, next_id: 1, out: Vec::new(), endpoint: endpoint.to_string() })
    }

    /// Gives the node's password (needed before any other request when the
    /// node has one).
    pub fn authenticate(&mut self, password: &[u8]) -> Result<(), ClientError> {
        match self.call(&Request::Auth { password: Bytes::copy_from_slice(password) })? {
            Response::Pong => Ok(()),
            other => Err(unexpected(other)),
        }
    }

    pub fn welcome(&self) -> &Welcome {
        &self.welcome
    }

    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    /// Sets how long `recv` waits for an answer.
    pub fn set_timeout(&mut self, timeout: Option<Duration>) -> io::Result<()> {
        self.stream.set_read_timeout(timeout)
    }

    /// Queues a request; it is written by the next `flush` or `recv`. The
    /// caller keeps keys and values within the server's limits (the server
    /// refuses larger ones with an error answer).
    pub fn send(&mut self, req: &Request) -> u64 {
        let id = self.next_id;
        self.next_id += 1;
        codec::encode_request(id, req, &mut self.out);
        id
    }

    pub fn flush(&mut self) -> Result<(), ClientError> {
        if !self.out.is_empty() {
            self.stream.write_all(&self.out)?;
            self.out.clear();
        }
        Ok(())
    }

    /// The next answer, whichever request it is for.
    pub fn recv(&mut self) -> Result<(u64, Response), ClientError> {
        self.flush()?;
        let mut header = [0u8; codec::FRAME_HEADER_BYTES];
        self.stream.read_exact(&mut header)?;
        // The server never answers with more than its own frame limit.
        let h = codec::parse_header(&header, self.welcome.frame_bytes_max as usize)
            .map_err(|e| ClientError::Protocol(e.to_string()))?
            .expect("a whole header was read");
        let mut body = vec![0u8; h.frame_bytes - codec::FRAME_HEADER_BYTES];
        self.stream.read_exact(&mut body)?;
        let resp = codec::decode_response(h.code, h.opcode_echo, Bytes::from(body)).map_err(ClientError::Protocol)?;
        Ok((h.id, resp))
    }

    /// Sends one request and waits for its answer. Errors from the server
    /// become [`ClientError::Server`]. Not for use while pipelined requests
    /// are outstanding (their answers would arrive first).
    pub fn call(&mut self, req: &Request) -> Result<Response, ClientError> {
        let id = self.send(req);
        let (got, resp) = self.recv()?;
        if got != id {
            return Err(ClientError::Protocol(format!("answer for request {got}, expected {id}")));
        }
        match resp {
            Response::Error { status, message } => Err(ClientError::Server { status, message }),
            other => Ok(other),
        }
    }

    pub fn ping(&mut self) -> Result<(), ClientError> {
        match self.call(&Request::Ping)? {
            Response::Pong => Ok(()),
            other => Err(unexpected(other)),
        }
    }

    /// The value and its version, or `None` if the key does not exist
    /// (a lease read).
    pub fn get(&mut self, key: &[u8]) -> Result<Option<(Vec<u8>, u64)>, ClientError> {
        self.get_with(key, Consistency::Lease)
    }

    /// A read at the given consistency.
    pub fn get_with(&mut self, key: &[u8], consistency: Consistency) -> Result<Option<(Vec<u8>, u64)>, ClientError> {
        match self.call(&Request::Get { key: Bytes::copy_from_slice(key), consistency })? {
            Response::Value { version, value } => Ok(Some((value.to_vec(), version))),
            Response::NotFound => Ok(None),
            other => Err(unexpected(other)),
        }
    }

    /// The key's version and expiry (Unix milliseconds; `None`: it never
    /// expires), or `None` if the key does not exist.
    pub fn expiry(&mut self, key: &[u8], consistency: Consistency) -> Result<Option<(u64, Option<u64>)>, ClientError> {
        match self.call(&Request::GetTtl { key: Bytes::copy_from_slice(key), consistency })? {
            Response::Expiry { version, expires_at_ms } => {
                Ok(Some((version, (expires_at_ms != 0).then_some(expires_at_ms))))
            }
            Response::NotFound => Ok(None),
            other => Err(unexpected(other)),
        }
    }

    /// The answering node's view of the cluster, as JSON text.
    pub fn status(&mut self) -> Result<String, ClientError> {
        match self.call(&Request::Status)? {
            Response::Status(json) => Ok(json),
            other => Err(unexpected(other)),
        }
    }

    /// Has the leader of `shard` (which must be the node this client is
    /// connected to) copy it and hold the copy for [`Client::backup_read`].
    /// NOT_LEADER comes back as a server error from any other node.
    pub fn backup_begin(&mut self, shard: u32) -> Result<BackupBegun, ClientError> {
        match self.call(&Request::BackupBegin { shard })? {
            Response::BackupBegun { id, index, term, total, keys } => Ok(BackupBegun { id, index, term, total, keys }),
            other => Err(unexpected(other)),
        }
    }

    /// Up to `max_len` bytes of held copy `id` from `offset` on (clamped to
    /// the server's frame limit); `None` if the server no longer holds it.
    pub fn backup_read(&mut self, id: u64, offset: u64, max_len: u32) -> Result<Option<Bytes>, ClientError> {
        match self.call(&Request::BackupRead { id, offset, max_len })? {
            Response::BackupChunk(bytes) => Ok(Some(bytes)),
            Response::NotFound => Ok(None),
            other => Err(unexpected(other)),
        }
    }

    /// Drops held copy `id`; whether the server still held it.
    pub fn backup_end(&mut self, id: u64) -> Result<bool, ClientError> {
        match self.call(&Request::BackupEnd { id })? {
            Response::Pong => Ok(true),
            Response::NotFound => Ok(false),
            other => Err(unexpected(other)),
        }
    }

    /// A whole copy of `shard` from its leader (this client's node):
    /// BACKUP_BEGIN, BACKUP_READ in pieces that fit the frame limit, then
    /// BACKUP_END. The bytes are those of a snapshot file; the caller
    /// verifies them (`kv_engine::snapshot::decode`).
    pub fn backup_shard(&mut self, shard: u32) -> Result<(BackupBegun, Vec<u8>), ClientError> {
        let begun = self.backup_begin(shard)?;
        let piece = (self.welcome.frame_bytes_max as usize)
            .saturating_sub(codec::FRAME_HEADER_BYTES)
            .clamp(1, BACKUP_PIECE_BYTES_MAX) as u32;
        let mut bytes = Vec::with_capacity(begun.total.min(1 << 30) as usize);
        while (bytes.len() as u64) < begun.total {
            match self.backup_read(begun.id, bytes.len() as u64, piece)? {
                Some(got) if !got.is_empty() => bytes.extend_from_slice(&got),
                Some(_) => {
                    return Err(ClientError::Protocol(format!(
                        "backup of shard {shard} ended at {} of {} bytes",
                        bytes.len(),
                        begun.total
                    )))
                }
                None => {
                    return Err(ClientError::Protocol(format!(
                        "the server dropped the backup of shard {shard} while it was read"
                    )))
                }
            }
        }
        self.backup_end(begun.id)?;
        Ok((begun, bytes))
    }

    /// Writes under `condition`; returns the new version or why not.
    pub fn put_if(&mut self, key: &[u8], value: &[u8], condition: Condition) -> Result<WriteResult, ClientError> {
        self.put_with_ttl(key, value, condition, None)
    }

    /// Writes under `condition`, the key expiring `ttl` after the server
    /// receives it (`None`: never).
    pub fn put_with_ttl(
        &mut self,
        key: &[u8],
        value: &[u8],
        condition: Condition,
        ttl: Option<std::time::Duration>,
    ) -> Result<WriteResult, ClientError> {
        let frame = codec::FRAME_HEADER_BYTES + codec::PUT_FIXED_BYTES + 8 + key.len() + value.len();
        if frame > self.welcome.frame_bytes_max as usize {
            let max = self.welcome.frame_bytes_max;
            return Err(ClientError::Protocol(format!(
                "a {frame}-byte request exceeds the server's frame limit of {max}"
            )));
        }
        let (key, value) = (Bytes::copy_from_slice(key), Bytes::copy_from_slice(value));
        let req = match ttl {
            None => Request::Put { key, value, condition },
            Some(ttl) => {
                let ttl_ms = u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX).max(1);
                Request::PutTtl { key, value, condition, ttl_ms }
            }
        };
        write_result(self.call(&req)?)
    }

    /// Unconditional or conditional put that treats a failed condition as
    /// an error. Returns the new version.
    pub fn put(&mut self, key: &[u8], value: &[u8], condition: Condition) -> Result<u64, ClientError> {
        match self.put_if(key, value, condition)? {
            WriteResult::Written { version } => Ok(version),
            other => Err(ClientError::Protocol(format!("write not applied: {other:?}"))),
        }
    }

    pub fn delete(&mut self, key: &[u8], condition: Condition) -> Result<WriteResult, ClientError> {
        write_result(self.call(&Request::Delete { key: Bytes::copy_from_slice(key), condition })?)
    }
}

fn write_result(resp: Response) -> Result<WriteResult, ClientError> {
    match resp {
        Response::Written { version } | Response::Deleted { version } => Ok(WriteResult::Written { version }),
        Response::NotFound => Ok(WriteResult::NotFound),
        Response::ConditionFailed { current_version } => Ok(WriteResult::ConditionFailed { current_version }),
        other => Err(unexpected(other)),
    }
}

fn unexpected(resp: Response) -> ClientError {
    ClientError::Protocol(format!("unexpected answer {resp:?}"))
}
