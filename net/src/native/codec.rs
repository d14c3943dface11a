//! The native binary protocol's bytes, shared by the server and the client.
//! Pure functions over buffers: no IO here. The byte-by-byte description is
//! `docs/protocol.md`; keep the two in step.

use bytes::{Buf, Bytes};
use kv_engine::Condition;
use kv_replication::Consistency;

/// First bytes of both handshake messages.
pub const MAGIC: [u8; 4] = *b"KVDN";
/// The protocol version this build speaks.
pub const VERSION: u16 = 1;
pub const HELLO_BYTES: usize = 12;
pub const WELCOME_BYTES: usize = 36;
/// Frame header: u32 length, u8 opcode/status, u8 opcode echo, u16 reserved,
/// u64 request id. The length counts every byte after itself.
pub const FRAME_HEADER_BYTES: usize = 16;
const LEN_FIELD_BYTES: usize = 4;
/// Fixed part of a PUT body; the largest fixed part of any request.
pub const PUT_FIXED_BYTES: usize = 20;
const DELETE_FIXED_BYTES: usize = 16;
const GET_FIXED_BYTES: usize = 4;
/// The TTL in front of a PUT_TTL body.
const TTL_BYTES: usize = 8;
/// BACKUP_BEGIN's body: u32 shard.
const BACKUP_BEGIN_BYTES: usize = 4;
/// BACKUP_READ's body: u64 backup id, u64 offset, u32 most bytes wanted.
const BACKUP_READ_BYTES: usize = 20;
/// BACKUP_END's body: u64 backup id.
const BACKUP_END_BYTES: usize = 8;
/// BACKUP_BEGIN's answer: u64 id, index, term, total length, keys.
const BACKUP_BEGUN_BYTES: usize = 40;

/// Request opcodes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Opcode {
    Ping = 1,
    Get = 2,
    Put = 3,
    Delete = 4,
    /// The answering node's view of the cluster, as JSON.
    Status = 5,
    /// PUT with a time to live: a u64 TTL in milliseconds, then a PUT body.
    PutTtl = 6,
    /// The password, as the whole body.
    Auth = 7,
    /// A key's version and expiry: a GET body; answered with 16 bytes.
    GetTtl = 8,
    /// A consistent copy of one shard from its leader, held on the
    /// answering core for reading in pieces: u32 shard.
    BackupBegin = 9,
    /// A piece of a held backup: u64 id, u64 offset, u32 most bytes.
    BackupRead = 10,
    /// Drops a held backup: u64 id.
    BackupEnd = 11,
}

impl Opcode {
    pub fn from_u8(b: u8) -> Option<Opcode> {
        Some(match b {
            1 => Opcode::Ping,
            2 => Opcode::Get,
            3 => Opcode::Put,
            4 => Opcode::Delete,
            5 => Opcode::Status,
            6 => Opcode::PutTtl,
            7 => Opcode::Auth,
            8 => Opcode::GetTtl,
            9 => Opcode::BackupBegin,
            10 => Opcode::BackupRead,
            11 => Opcode::BackupEnd,
            _ => return None,
        })
    }
}

/// Response statuses. Below 16: the request was executed; from 16: an error
/// whose body is a UTF-8 message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Status {
    Ok = 0,
    NotFound = 1,
    ConditionFailed = 2,
    BadRequest = 16,
    UnknownOpcode = 17,
    KeyTooLarge = 18,
    ValueTooLarge = 19,
    FrameTooLarge = 20,
    /// The node requires a password (AUTH) and none or a wrong one was given.
    Unauthenticated = 21,
    Unavailable = 32,
    ShuttingDown = 33,
    NotLeader = 34,
    Retry = 35,
    /// The node is over its memory limit and the write needs memory.
    OutOfMemory = 36,
    Internal = 48,
}

impl Status {
    pub fn from_u8(b: u8) -> Option<Status> {
        use Status::*;
        Some(match b {
            0 => Ok,
            1 => NotFound,
            2 => ConditionFailed,
            16 => BadRequest,
            17 => UnknownOpcode,
            18 => KeyTooLarge,
            19 => ValueTooLarge,
            20 => FrameTooLarge,
            21 => Unauthenticated,
            32 => Unavailable,
            33 => ShuttingDown,
            34 => NotLeader,
            35 => Retry,
            36 => OutOfMemory,
            48 => Internal,
            _ => return None,
        })
    }

    pub fn name(self) -> &'static str {
        use Status::*;
        match self {
            Ok => "OK",
            NotFound => "NOT_FOUND",
            ConditionFailed => "CONDITION_FAILED",
            BadRequest => "BAD_REQUEST",
            UnknownOpcode => "UNKNOWN_OPCODE",
            KeyTooLarge => "KEY_TOO_LARGE",
            ValueTooLarge => "VALUE_TOO_LARGE",
            FrameTooLarge => "FRAME_TOO_LARGE",
            Unauthenticated => "UNAUTHENTICATED",
            Unavailable => "UNAVAILABLE",
            ShuttingDown => "SHUTTING_DOWN",
            NotLeader => "NOT_LEADER",
            Retry => "RETRY",
            OutOfMemory => "OUT_OF_MEMORY",
            Internal => "INTERNAL",
        }
    }
}

/// Handshake status in the server's welcome.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u16)]
pub enum WelcomeStatus {
    Ok = 0,
    UnsupportedVersion = 1,
    TooManyConnections = 2,
}

/// Client → server, first 12 bytes of a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Hello {
    pub version_min: u16,
    pub version_max: u16,
}

impl Hello {
    pub fn encode(&self) -> [u8; HELLO_BYTES] {
        let mut b = [0u8; HELLO_BYTES];
        b[0..4].copy_from_slice(&MAGIC);
        b[4..6].copy_from_slice(&self.version_min.to_le_bytes());
        b[6..8].copy_from_slice(&self.version_max.to_le_bytes());
        b
    }

    /// `None` unless the magic matches and the reserved bytes are zero.
    pub fn decode(b: &[u8; HELLO_BYTES]) -> Option<Hello> {
        (b[0..4] == MAGIC && b[8..12] == [0; 4]).then(|| Hello {
            version_min: u16::from_le_bytes([b[4], b[5]]),
            version_max: u16::from_le_bytes([b[6], b[7]]),
        })
    }
}

/// Server → client answer to [`Hello`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Welcome {
    pub status: u16,
    pub version: u16,
    pub frame_bytes_max: u32,
    pub pipeline_depth_max: u32,
    pub node_id: u64,
    pub cores: u32,
    pub shards: u32,
    /// The core (0-based) that accepted this connection.
    pub core: u32,
}

impl Welcome {
    pub fn encode(&self) -> [u8; WELCOME_BYTES] {
        let mut b = [0u8; WELCOME_BYTES];
        b[0..4].copy_from_slice(&MAGIC);
        b[4..6].copy_from_slice(&self.status.to_le_bytes());
        b[6..8].copy_from_slice(&self.version.to_le_bytes());
        b[8..12].copy_from_slice(&self.frame_bytes_max.to_le_bytes());
        b[12..16].copy_from_slice(&self.pipeline_depth_max.to_le_bytes());
        b[16..24].copy_from_slice(&self.node_id.to_le_bytes());
        b[24..28].copy_from_slice(&self.cores.to_le_bytes());
        b[28..32].copy_from_slice(&self.shards.to_le_bytes());
        b[32..36].copy_from_slice(&self.core.to_le_bytes());
        b
    }

    pub fn decode(b: &[u8; WELCOME_BYTES]) -> Option<Welcome> {
        let u32_at = |at: usize| u32::from_le_bytes(b[at..at + 4].try_into().expect("4 bytes"));
        (b[0..4] == MAGIC).then(|| Welcome {
            status: u16::from_le_bytes([b[4], b[5]]),
            version: u16::from_le_bytes([b[6], b[7]]),
            frame_bytes_max: u32_at(8),
            pipeline_depth_max: u32_at(12),
            node_id: u64::from_le_bytes(b[16..24].try_into().expect("8 bytes")),
            cores: u32_at(24),
            shards: u32_at(28),
            core: u32_at(32),
        })
    }
}

/// A frame's header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameHeader {
    /// Bytes of the whole frame, header included.
    pub frame_bytes: usize,
    /// Request: opcode. Response: status.
    pub code: u8,
    /// Response: the opcode of the request answered. Request: 0.
    pub opcode_echo: u8,
    pub id: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    #[error("frame of {0} bytes exceeds the limit of {1} bytes")]
    TooLarge(usize, usize),
    #[error("frame length {0} is shorter than a frame header")]
    TooShort(usize),
}

/// Parses the header at the start of `buf`: `Ok(None)` if more bytes are
/// needed to know it.
pub fn parse_header(buf: &[u8], frame_bytes_max: usize) -> Result<Option<FrameHeader>, FrameError> {
    // Checks the length only: reserved bytes are the decoder's business, so
    // a bad one costs one error answer, not the connection.
    if buf.len() < FRAME_HEADER_BYTES {
        return Ok(None);
    }
    let len = u32::from_le_bytes(buf[0..4].try_into().expect("4 bytes")) as usize;
    let frame_bytes = len + LEN_FIELD_BYTES;
    if frame_bytes < FRAME_HEADER_BYTES {
        return Err(FrameError::TooShort(len));
    }
    if frame_bytes > frame_bytes_max {
        return Err(FrameError::TooLarge(frame_bytes, frame_bytes_max));
    }
    let id = u64::from_le_bytes(buf[8..16].try_into().expect("8 bytes"));
    Ok(Some(FrameHeader { frame_bytes, code: buf[4], opcode_echo: buf[5], id }))
}

fn put_header(out: &mut Vec<u8>, body_bytes: usize, code: u8, echo: u8, id: u64) {
    let len = u32::try_from(FRAME_HEADER_BYTES - LEN_FIELD_BYTES + body_bytes).expect("frame fits u32");
    out.extend_from_slice(&len.to_le_bytes());
    out.extend_from_slice(&[code, echo, 0, 0]);
    out.extend_from_slice(&id.to_le_bytes());
}

/// Header byte 5 of a GET: how fresh the read must be.
fn consistency_byte(c: Consistency) -> u8 {
    match c {
        Consistency::Lease => 0,
        Consistency::Strict => 1,
        Consistency::Stale => 2,
    }
}

/// A decoded request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Request {
    Ping,
    Get {
        key: Bytes,
        consistency: Consistency,
    },
    /// A key's version and expiry, without its value.
    GetTtl {
        key: Bytes,
        consistency: Consistency,
    },
    Put {
        key: Bytes,
        value: Bytes,
        condition: Condition,
    },
    /// A put whose key expires `ttl_ms` after the server receives it.
    PutTtl {
        key: Bytes,
        value: Bytes,
        condition: Condition,
        ttl_ms: u64,
    },
    Delete {
        key: Bytes,
        condition: Condition,
    },
    Status,
    Auth {
        password: Bytes,
    },
    /// Copy `shard` on its leader and hold the copy for BACKUP_READ.
    BackupBegin {
        shard: u32,
    },
    /// Up to `max_len` bytes of held backup `id` from `offset` on.
    BackupRead {
        id: u64,
        offset: u64,
        max_len: u32,
    },
    /// Drop held backup `id`.
    BackupEnd {
        id: u64,
    },
}

impl Request {
    pub fn opcode(&self) -> Opcode {
        match self {
            Request::Ping => Opcode::Ping,
            Request::Get { .. } => Opcode::Get,
            Request::GetTtl { .. } => Opcode::GetTtl,
            Request::Put { .. } => Opcode::Put,
            Request::PutTtl { .. } => Opcode::PutTtl,
            Request::Delete { .. } => Opcode::Delete,
            Request::Auth { .. } => Opcode::Auth,
            Request::Status => Opcode::Status,
            Request::BackupBegin { .. } => Opcode::BackupBegin,
            Request::BackupRead { .. } => Opcode::BackupRead,
            Request::BackupEnd { .. } => Opcode::BackupEnd,
        }
    }

    pub fn key(&self) -> Option<&Bytes> {
        match self {
            Request::Ping
            | Request::Status
            | Request::Auth { .. }
            | Request::BackupBegin { .. }
            | Request::BackupRead { .. }
            | Request::BackupEnd { .. } => None,
            Request::Get { key, .. }
            | Request::GetTtl { key, .. }
            | Request::Put { key, .. }
            | Request::PutTtl { key, .. }
            | Request::Delete { key, .. } => Some(key),
        }
    }
}

fn condition_code(c: Condition) -> (u8, u64) {
    match c {
        Condition::Always => (0, 0),
        Condition::IfAbsent => (1, 0),
        Condition::IfExists => (2, 0),
        Condition::IfVersion(v) => (3, v),
    }
}

pub fn encode_request(id: u64, req: &Request, out: &mut Vec<u8>) {
    match req {
        Request::Ping => put_header(out, 0, Opcode::Ping as u8, 0, id),
        Request::Status => put_header(out, 0, Opcode::Status as u8, 0, id),
        Request::Auth { password } => {
            put_header(out, password.len(), Opcode::Auth as u8, 0, id);
            out.extend_from_slice(password);
        }
        Request::Get { key, consistency } | Request::GetTtl { key, consistency } => {
            let (opcode, flags) = (req.opcode() as u8, consistency_byte(*consistency));
            put_header(out, GET_FIXED_BYTES + key.len(), opcode, flags, id);
            out.extend_from_slice(&(key.len() as u32).to_le_bytes());
            out.extend_from_slice(key);
        }
        Request::Put { key, value, condition } => {
            put_header(out, PUT_FIXED_BYTES + key.len() + value.len(), Opcode::Put as u8, 0, id);
            put_body(out, key, value, *condition);
        }
        Request::PutTtl { key, value, condition, ttl_ms } => {
            let len = TTL_BYTES + PUT_FIXED_BYTES + key.len() + value.len();
            put_header(out, len, Opcode::PutTtl as u8, 0, id);
            out.extend_from_slice(&ttl_ms.to_le_bytes());
            put_body(out, key, value, *condition);
        }
        Request::BackupBegin { shard } => {
            put_header(out, BACKUP_BEGIN_BYTES, Opcode::BackupBegin as u8, 0, id);
            out.extend_from_slice(&shard.to_le_bytes());
        }
        Request::BackupRead { id: backup, offset, max_len } => {
            put_header(out, BACKUP_READ_BYTES, Opcode::BackupRead as u8, 0, id);
            out.extend_from_slice(&backup.to_le_bytes());
            out.extend_from_slice(&offset.to_le_bytes());
            out.extend_from_slice(&max_len.to_le_bytes());
        }
        Request::BackupEnd { id: backup } => {
            put_header(out, BACKUP_END_BYTES, Opcode::BackupEnd as u8, 0, id);
            out.extend_from_slice(&backup.to_le_bytes());
        }
        Request::Delete { key, condition } => {
            put_header(out, DELETE_FIXED_BYTES + key.len(), Opcode::Delete as u8, 0, id);
            let (cond, version) = condition_code(*condition);
            out.extend_from_slice(&[cond, 0, 0, 0]);
            out.extend_from_slice(&version.to_le_bytes());
            out.extend_from_slice(&(key.len() as u32).to_le_bytes());
            out.extend_from_slice(key);
        }
    }
}

fn put_body(out: &mut Vec<u8>, key: &[u8], value: &[u8], condition: Condition) {
    let (cond, version) = condition_code(condition);
    out.extend_from_slice(&[cond, 0, 0, 0]);
    out.extend_from_slice(&version.to_le_bytes());
    out.extend_from_slice(&(key.len() as u32).to_le_bytes());
    out.extend_from_slice(&(value.len() as u32).to_le_bytes());
    out.extend_from_slice(key);
    out.extend_from_slice(value);
}

/// Why a request body was refused; becomes an error response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    pub status: Status,
    pub message: String,
}

fn bad(message: &str) -> Refusal {
    Refusal { status: Status::BadRequest, message: message.to_string() }
}

/// The keys of the GET and GET_TTL frames complete at the start of `buf`
/// (up to `frame_bytes_max` each), without decoding anything else: what a
/// batch of reads will look up. Malformed frames are skipped here and
/// refused when decoded.
pub fn get_keys(buf: &[u8], frame_bytes_max: usize) -> Vec<&[u8]> {
    let mut keys = Vec::new();
    let mut at = 0;
    while let Ok(Some(h)) = parse_header(&buf[at..], frame_bytes_max) {
        let Some(frame) = buf.get(at..at + h.frame_bytes) else { break };
        let get = [Opcode::Get as u8, Opcode::GetTtl as u8].contains(&h.code);
        if get && frame.len() >= FRAME_HEADER_BYTES + GET_FIXED_BYTES {
            keys.push(&frame[FRAME_HEADER_BYTES + GET_FIXED_BYTES..]);
        }
        at += h.frame_bytes;
    }
    keys
}

/// Decodes a request frame (header included).
pub fn decode_request_frame(frame: &Bytes) -> Result<Request, Refusal> {
    if frame[6..8] != [0; 2] {
        return Err(bad("reserved header bytes 6..8 of a request must be zero"));
    }
    let request = decode_request(frame[4], frame.slice(FRAME_HEADER_BYTES..))?;
    let consistency = |flags: u8| match flags {
        0 => Ok(Consistency::Lease),
        1 => Ok(Consistency::Strict),
        2 => Ok(Consistency::Stale),
        _ => Err(bad("GET consistency (header byte 5) must be 0 lease, 1 strict or 2 stale")),
    };
    match (request, frame[5]) {
        (Request::Get { key, .. }, flags) => Ok(Request::Get { key, consistency: consistency(flags)? }),
        (Request::GetTtl { key, .. }, flags) => Ok(Request::GetTtl { key, consistency: consistency(flags)? }),
        (request, 0) => Ok(request),
        _ => Err(bad("header byte 5 must be zero except for GET and GET_TTL")),
    }
}

/// Decodes a request body (the frame minus its header); a GET's consistency
/// comes from the header (see [`decode_request_frame`]) and is `Lease` here.
pub fn decode_request(opcode: u8, mut body: Bytes) -> Result<Request, Refusal> {
    let Some(op) = Opcode::from_u8(opcode) else {
        return Err(Refusal { status: Status::UnknownOpcode, message: format!("unknown opcode {opcode}") });
    };
    match op {
        Opcode::Ping if body.is_empty() => Ok(Request::Ping),
        Opcode::Ping => Err(bad("PING takes no body")),
        Opcode::Status if body.is_empty() => Ok(Request::Status),
        Opcode::Status => Err(bad("STATUS takes no body")),
        Opcode::Auth => Ok(Request::Auth { password: body }),
        Opcode::BackupBegin if body.len() == BACKUP_BEGIN_BYTES => {
            Ok(Request::BackupBegin { shard: body.get_u32_le() })
        }
        Opcode::BackupBegin => Err(bad("BACKUP_BEGIN body is not 4 bytes")),
        Opcode::BackupRead if body.len() == BACKUP_READ_BYTES => {
            Ok(Request::BackupRead { id: body.get_u64_le(), offset: body.get_u64_le(), max_len: body.get_u32_le() })
        }
        Opcode::BackupRead => Err(bad("BACKUP_READ body is not 20 bytes")),
        Opcode::BackupEnd if body.len() == BACKUP_END_BYTES => Ok(Request::BackupEnd { id: body.get_u64_le() }),
        Opcode::BackupEnd => Err(bad("BACKUP_END body is not 8 bytes")),
        Opcode::Get | Opcode::GetTtl => {
            if body.len() < GET_FIXED_BYTES {
                return Err(bad("GET body shorter than its fixed part"));
            }
            let key_len = body.get_u32_le() as usize;
            if key_len != body.len() {
                return Err(bad("GET key length does not match the body"));
            }
            match op {
                Opcode::Get => Ok(Request::Get { key: body, consistency: Consistency::Lease }),
                _ => Ok(Request::GetTtl { key: body, consistency: Consistency::Lease }),
            }
        }
        Opcode::PutTtl => {
            if body.len() < TTL_BYTES {
                return Err(bad("PUT_TTL body shorter than its TTL"));
            }
            let ttl_ms = body.get_u64_le();
            if ttl_ms == 0 {
                return Err(bad("PUT_TTL with a TTL of 0"));
            }
            match decode_request(Opcode::Put as u8, body)? {
                Request::Put { key, value, condition } => Ok(Request::PutTtl { key, value, condition, ttl_ms }),
                other => unreachable!("a PUT body decodes to a PUT, not {other:?}"),
            }
        }
        Opcode::Put => {
            if body.len() < PUT_FIXED_BYTES {
                return Err(bad("PUT body shorter than its fixed part"));
            }
            let condition = decode_condition(&mut body)?;
            let key_len = body.get_u32_le() as usize;
            let value_len = body.get_u32_le() as usize;
            if key_len.checked_add(value_len) != Some(body.len()) {
                return Err(bad("PUT key and value lengths do not match the body"));
            }
            let key = body.split_to(key_len);
            Ok(Request::Put { key, value: body, condition })
        }
        Opcode::Delete => {
            if body.len() < DELETE_FIXED_BYTES {
                return Err(bad("DELETE body shorter than its fixed part"));
            }
            let condition = decode_condition(&mut body)?;
            if condition == Condition::IfAbsent {
                return Err(bad("DELETE cannot be conditional on absence"));
            }
            let key_len = body.get_u32_le() as usize;
            if key_len != body.len() {
                return Err(bad("DELETE key length does not match the body"));
            }
            Ok(Request::Delete { key: body, condition })
        }
    }
}

fn decode_condition(body: &mut Bytes) -> Result<Condition, Refusal> {
    let code = body.get_u8();
    let reserved = [body.get_u8(), body.get_u8(), body.get_u8()];
    let version = body.get_u64_le();
    if reserved != [0; 3] {
        return Err(bad("reserved bytes after the condition must be zero"));
    }
    if code != 3 && version != 0 {
        return Err(bad("expected version must be zero unless the condition is if-version"));
    }
    match code {
        0 => Ok(Condition::Always),
        1 => Ok(Condition::IfAbsent),
        2 => Ok(Condition::IfExists),
        3 => Ok(Condition::IfVersion(version)),
        _ => Err(bad("unknown condition")),
    }
}

/// A response as the client sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Response {
    Pong,
    /// The cluster as the answering node sees it (JSON).
    Status(String),
    Value {
        version: u64,
        value: Bytes,
    },
    NotFound,
    /// A key's version and when it expires (Unix milliseconds; 0: never).
    Expiry {
        version: u64,
        expires_at_ms: u64,
    },
    Written {
        version: u64,
    },
    Deleted {
        version: u64,
    },
    /// BACKUP_BEGIN: the held copy's id, what it is as of, and its size.
    BackupBegun {
        id: u64,
        index: u64,
        term: u64,
        total: u64,
        keys: u64,
    },
    /// BACKUP_READ: a piece of the copy (empty at its end).
    BackupChunk(Bytes),
    ConditionFailed {
        current_version: Option<u64>,
    },
    Error {
        status: Status,
        message: String,
    },
}

/// Encodes an answer; `echo` is the opcode byte of the request answered.
pub fn encode_response(id: u64, echo: u8, resp: &Response, out: &mut Vec<u8>) {
    match resp {
        Response::Pong => put_header(out, 0, Status::Ok as u8, echo, id),
        Response::Status(json) => {
            put_header(out, json.len(), Status::Ok as u8, echo, id);
            out.extend_from_slice(json.as_bytes());
        }
        Response::Value { version, value } => {
            put_header(out, 8 + value.len(), Status::Ok as u8, echo, id);
            out.extend_from_slice(&version.to_le_bytes());
            out.extend_from_slice(value);
        }
        Response::NotFound => put_header(out, 0, Status::NotFound as u8, echo, id),
        Response::BackupBegun { id: backup, index, term, total, keys } => {
            put_header(out, BACKUP_BEGUN_BYTES, Status::Ok as u8, echo, id);
            for v in [backup, index, term, total, keys] {
                out.extend_from_slice(&v.to_le_bytes());
            }
        }
        Response::BackupChunk(bytes) => {
            put_header(out, bytes.len(), Status::Ok as u8, echo, id);
            out.extend_from_slice(bytes);
        }
        Response::Expiry { version, expires_at_ms } => {
            put_header(out, 16, Status::Ok as u8, echo, id);
            out.extend_from_slice(&version.to_le_bytes());
            out.extend_from_slice(&expires_at_ms.to_le_bytes());
        }
        Response::Written { version } | Response::Deleted { version } => {
            put_header(out, 8, Status::Ok as u8, echo, id);
            out.extend_from_slice(&version.to_le_bytes());
        }
        Response::ConditionFailed { current_version } => {
            put_header(out, 9, Status::ConditionFailed as u8, echo, id);
            out.push(current_version.is_some() as u8);
            out.extend_from_slice(&current_version.unwrap_or(0).to_le_bytes());
        }
        Response::Error { status, message } => {
            put_header(out, message.len(), *status as u8, echo, id);
            out.extend_from_slice(message.as_bytes());
        }
    }
}

/// Decodes a response body given its header's status and opcode echo.
pub fn decode_response(status: u8, opcode: u8, mut body: Bytes) -> Result<Response, String> {
    let status = Status::from_u8(status).ok_or_else(|| format!("unknown status {status}"))?;
    let op = Opcode::from_u8(opcode);
    let version = |b: &mut Bytes| if b.len() >= 8 { Ok(b.get_u64_le()) } else { Err("short body".to_string()) };
    match (status, op) {
        (Status::Ok, Some(Opcode::Ping | Opcode::Auth | Opcode::BackupEnd)) => Ok(Response::Pong),
        (Status::Ok, Some(Opcode::BackupBegin)) if body.len() == BACKUP_BEGUN_BYTES => Ok(Response::BackupBegun {
            id: body.get_u64_le(),
            index: body.get_u64_le(),
            term: body.get_u64_le(),
            total: body.get_u64_le(),
            keys: body.get_u64_le(),
        }),
        (Status::Ok, Some(Opcode::BackupBegin)) => Err("BACKUP_BEGIN answer is not 40 bytes".to_string()),
        (Status::Ok, Some(Opcode::BackupRead)) => Ok(Response::BackupChunk(body)),
        (Status::Ok, Some(Opcode::Get)) => Ok(Response::Value { version: version(&mut body)?, value: body }),
        (Status::Ok, Some(Opcode::GetTtl)) if body.len() == 16 => {
            Ok(Response::Expiry { version: body.get_u64_le(), expires_at_ms: body.get_u64_le() })
        }
        (Status::Ok, Some(Opcode::GetTtl)) => Err("GET_TTL answer is not 16 bytes".to_string()),
        (Status::Ok, Some(Opcode::Put | Opcode::PutTtl)) => Ok(Response::Written { version: version(&mut body)? }),
        (Status::Ok, Some(Opcode::Delete)) => Ok(Response::Deleted { version: version(&mut body)? }),
        (Status::Ok, Some(Opcode::Status)) => Ok(Response::Status(String::from_utf8_lossy(&body).into_owned())),
        (Status::Ok, None) => Err(format!("OK for unknown opcode {opcode}")),
        (Status::NotFound, _) => Ok(Response::NotFound),
        (Status::ConditionFailed, _) if body.len() == 9 => {
            let exists = body.get_u8() != 0;
            let v = body.get_u64_le();
            Ok(Response::ConditionFailed { current_version: exists.then_some(v) })
        }
        (Status::ConditionFailed, _) => Err("malformed CONDITION_FAILED body".to_string()),
        (status, _) => Ok(Response::Error { status, message: String::from_utf8_lossy(&body).into_owned() }),
    }
}

#[cfg(test)]
mod tests {

    #[test]
    fn get_keys_lists_the_keys_of_complete_get_frames_only() {
        let mut buf = Vec::new();
        let get = |key: &'static [u8]| Request::Get { key: Bytes::from_static(key), consistency: Consistency::Lease };
        encode_request(1, &get(b"a"), &mut buf);
        let put = Request::Put {
            key: Bytes::from_static(b"p"),
            value: Bytes::from_static(b"v"),
            condition: Condition::Always,
        };
        encode_request(2, &put, &mut buf);
        let ttl = Request::GetTtl { key: Bytes::from_static(b"bb"), consistency: Consistency::Stale };
        encode_request(3, &ttl, &mut buf);
        let complete = buf.len();
        encode_request(4, &get(b"cut"), &mut buf);
        assert_eq!(get_keys(&buf[..buf.len() - 1], 1 << 20), vec![&b"a"[..], b"bb"], "a cut frame is not read");
        assert_eq!(get_keys(&buf, 1 << 20), vec![&b"a"[..], b"bb", b"cut"]);
        assert_eq!(get_keys(&buf[..complete], 8), Vec::<&[u8]>::new(), "frames over the limit stop the walk");
    }
    use super::*;

    fn requests() -> Vec<Request> {
        vec![
            Request::Ping,
            Request::Get { key: Bytes::from_static(b"k"), consistency: Consistency::Strict },
            Request::GetTtl { key: Bytes::from_static(b"k"), consistency: Consistency::Stale },
            Request::Status,
            Request::Put {
                key: Bytes::from_static(b"key"),
                value: Bytes::from_static(b"\x00v"),
                condition: Condition::IfVersion(9),
            },
            Request::Put { key: Bytes::new(), value: Bytes::new(), condition: Condition::IfAbsent },
            Request::PutTtl {
                key: Bytes::from_static(b"t"),
                value: Bytes::from_static(b"v"),
                condition: Condition::Always,
                ttl_ms: 1500,
            },
            Request::Delete { key: Bytes::from_static(b"k"), condition: Condition::Always },
            Request::Auth { password: Bytes::from_static(b"secret") },
            Request::BackupBegin { shard: 7 },
            Request::BackupRead { id: u64::MAX - 1, offset: 1 << 33, max_len: 4 << 20 },
            Request::BackupEnd { id: 3 },
        ]
    }

    #[test]
    fn requests_round_trip() {
        for (i, req) in requests().into_iter().enumerate() {
            let mut buf = Vec::new();
            encode_request(i as u64, &req, &mut buf);
            let h = parse_header(&buf, 1 << 20).unwrap().unwrap();
            assert_eq!((h.frame_bytes, h.id, h.code), (buf.len(), i as u64, req.opcode() as u8));
            assert_eq!(decode_request_frame(&Bytes::from(buf)).unwrap(), req);
        }
    }

    #[test]
    fn responses_round_trip() {
        let cases = [
            (Opcode::Ping, Response::Pong),
            (Opcode::Status, Response::Status("{\"node\":1}".into())),
            (Opcode::Get, Response::Value { version: 7, value: Bytes::from_static(b"v") }),
            (Opcode::Get, Response::NotFound),
            (Opcode::GetTtl, Response::Expiry { version: 9, expires_at_ms: 1_800_000_000_000 }),
            (Opcode::GetTtl, Response::Expiry { version: 9, expires_at_ms: 0 }),
            (Opcode::GetTtl, Response::NotFound),
            (Opcode::Put, Response::Written { version: 3 }),
            (Opcode::Delete, Response::Deleted { version: 3 }),
            (Opcode::Put, Response::ConditionFailed { current_version: None }),
            (Opcode::Put, Response::ConditionFailed { current_version: Some(4) }),
            (Opcode::Get, Response::Error { status: Status::KeyTooLarge, message: "too big".into() }),
            (Opcode::BackupBegin, Response::BackupBegun { id: 1 << 48, index: 9, term: 2, total: 1234, keys: 5 }),
            (Opcode::BackupRead, Response::BackupChunk(Bytes::from_static(b"\x00snapshot bytes"))),
            (Opcode::BackupRead, Response::BackupChunk(Bytes::new())),
            (Opcode::BackupEnd, Response::Pong),
            (Opcode::BackupRead, Response::NotFound),
        ];
        for (op, resp) in cases {
            let mut buf = Vec::new();
            encode_response(42, op as u8, &resp, &mut buf);
            let h = parse_header(&buf, 1 << 20).unwrap().unwrap();
            let body = Bytes::copy_from_slice(&buf[FRAME_HEADER_BYTES..]);
            assert_eq!(decode_response(h.code, h.opcode_echo, body).unwrap(), resp);
        }
    }

    #[test]
    fn every_truncated_body_is_refused_not_panicking() {
        let fixed_size =
            |r: &Request| matches!(r.opcode(), Opcode::BackupBegin | Opcode::BackupRead | Opcode::BackupEnd);
        for req in requests().into_iter().filter(|r| r.key().is_some() || fixed_size(r)) {
            let mut buf = Vec::new();
            encode_request(1, &req, &mut buf);
            for cut in FRAME_HEADER_BYTES..buf.len() {
                let body = Bytes::copy_from_slice(&buf[FRAME_HEADER_BYTES..cut]);
                assert!(decode_request(buf[4], body).is_err(), "{req:?} cut at {cut}");
            }
        }
    }

    #[test]
    fn random_bodies_never_panic() {
        use rand::{Rng, SeedableRng};
        let seed = rand::random::<u64>();
        println!("seed {seed}");
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        for _ in 0..20_000 {
            let len = rng.gen_range(0..64);
            let body: Vec<u8> = (0..len).map(|_| rng.gen()).collect();
            let _ = decode_request(rng.gen_range(0..12), Bytes::from(body.clone()));
            let _ = decode_response(rng.gen_range(0..50), rng.gen_range(0..12), Bytes::from(body));
        }
    }

    #[test]
    fn header_limits() {
        let mut buf = Vec::new();
        put_header(&mut buf, 100, 2, 0, 1);
        assert_eq!(parse_header(&buf, 116), Ok(Some(FrameHeader { frame_bytes: 116, code: 2, opcode_echo: 0, id: 1 })));
        assert_eq!(parse_header(&buf, 115), Err(FrameError::TooLarge(116, 115)));
        assert_eq!(parse_header(&buf[..15], 115), Ok(None));
        let short = [3u8, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0];
        assert_eq!(parse_header(&short, 100), Err(FrameError::TooShort(3)));
    }
}
