//! The commands that go through Raft, and their encoding as the data of a
//! Raft log entry. Applying the same sequence of commands to the same state
//! yields the same state on every replica: a command carries everything its
//! outcome depends on, including the leader's clock reading at proposal
//! (`now_ms`), which decides whether a key with a TTL still exists. No
//! replica consults its own clock while applying.
//!
//! Encoding (little-endian), format version 2:
//!
//! ```text
//! 0  u8  format version (2)
//! 1  u8  op (see the OP_* constants)
//! 2  u8  condition: 0 = always, 1 = if absent, 2 = if exists, 3 = if version
//! 3  u8  flags: bit 0 = return the old value, bit 1 = only if absent (rename, multi-put),
//!          bit 2 = the value (put, set) is a zstd frame (see `compress.rs`)
//! 4  u64 expected version (0 unless condition = 3)
//! 12 u64 now_ms: the proposer's clock, Unix milliseconds
//! 20 u64 arg: expiry time / increment (i64 or f64 bits) / offset / length cap
//! 28 u64 arg2: length cap of set-range
//! 36 u8  expiry kind: 0 = clear, 1 = keep, 2 = at `arg`
//! 37 u8  expire-when: 0 = always, 1 = NX, 2 = XX, 3 = GT, 4 = LT
//! 38 u16 reserved, 0
//! 40 u32 field count F
//! 44 F × { u32 length L, L bytes }   keys and values, per op
//! ```

use bytes::{BufMut, Bytes};

use crate::limits::COMMAND_OVERHEAD_BYTES;

const FORMAT_VERSION: u8 = 2;
const HEADER_BYTES: usize = 44;
const FIELD_HEADER_BYTES: usize = 4;
const _: () = assert!(COMMAND_OVERHEAD_BYTES == HEADER_BYTES + 2 * FIELD_HEADER_BYTES);

const OP_PUT: u8 = 1;
const OP_DELETE: u8 = 2;
const OP_SET: u8 = 3;
const OP_EXPIRE: u8 = 4;
const OP_INCR: u8 = 5;
const OP_INCR_FLOAT: u8 = 6;
const OP_APPEND: u8 = 7;
const OP_SET_RANGE: u8 = 8;
const OP_RENAME: u8 = 9;
const OP_MULTI_PUT: u8 = 10;
const OP_CLEAR: u8 = 11;
const OP_REAP: u8 = 12;
const OP_EVICT: u8 = 13;

const FLAG_GET: u8 = 1;
const FLAG_IF_ABSENT: u8 = 2;
const FLAG_COMPRESSED: u8 = 4;

/// When a write takes effect.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Condition {
    /// Unconditionally.
    Always,
    /// Only if the key does not exist (put-if-absent).
    IfAbsent,
    /// Only if the key exists (update).
    IfExists,
    /// Only if the key exists with exactly this version (compare-and-set).
    IfVersion(u64),
}

/// What a write does to the key's time to live.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expiry {
    /// The key no longer expires.
    Clear,
    /// The key keeps the expiry it had.
    Keep,
    /// The key expires at this Unix time in milliseconds.
    At(u64),
}

/// When an expiry change takes effect (Redis's EXPIRE options). A key
/// without a TTL counts as expiring never: GT never holds for it, LT does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExpireWhen {
    Always,
    /// NX: only if the key has no TTL.
    IfNone,
    /// XX: only if the key has a TTL.
    IfSome,
    /// GT: only if the new expiry is later than the current one.
    IfLater,
    /// LT: only if the new expiry is earlier than the current one.
    IfEarlier,
}

/// A replicated write.
#[derive(Debug, Clone, PartialEq)]
pub enum Command {
    /// Stores a value; the key loses any TTL.
    Put {
        key: Bytes,
        value: Bytes,
        condition: Condition,
    },
    Delete {
        key: Bytes,
        condition: Condition,
    },
    /// Redis SET with every option; `get` answers the old value.
    Set {
        key: Bytes,
        value: Bytes,
        condition: Condition,
        expiry: Expiry,
        get: bool,
    },
    /// Changes the TTL of an existing key; an expiry in the past deletes it.
    /// With `get`, answers the value (GETEX).
    Expire {
        key: Bytes,
        expiry: Expiry,
        when: ExpireWhen,
        get: bool,
    },
    /// Adds to a decimal integer value (absent = 0); keeps the TTL.
    Incr {
        key: Bytes,
        by: i64,
    },
    /// Adds to a decimal float value (absent = 0); keeps the TTL.
    IncrFloat {
        key: Bytes,
        by: f64,
    },
    /// Appends; refused if the result would exceed `length_max`.
    Append {
        key: Bytes,
        value: Bytes,
        length_max: u64,
    },
    /// Overwrites from `offset`, zero-padding; refused past `length_max`.
    SetRange {
        key: Bytes,
        offset: u64,
        value: Bytes,
        length_max: u64,
    },
    /// Moves a value and its TTL to another key of the same shard.
    Rename {
        from: Bytes,
        to: Bytes,
        if_absent: bool,
    },
    /// Stores several keys of one shard at once; with `if_absent`, all or
    /// none, only if none of them exists (MSETNX).
    MultiPut {
        pairs: Vec<(Bytes, Bytes)>,
        if_absent: bool,
    },
    /// Removes every key of the shard (FLUSHDB).
    Clear,
    /// Removes those of `keys` that have expired by the command's `now_ms`
    /// (active expiry; a key given a new TTL meanwhile survives).
    Reap {
        keys: Vec<Bytes>,
    },
    /// Removes `keys` (those still present): the leader's choice of victims
    /// when its node is over its memory limit.
    Evict {
        keys: Vec<Bytes>,
    },
}

/// A log entry decoded.
#[derive(Debug, Clone, PartialEq)]
pub struct Decoded {
    /// The proposer's clock, Unix milliseconds.
    pub now_ms: u64,
    pub command: Command,
    /// The value of a put or set is a zstd frame, not the client's bytes.
    pub compressed: bool,
}

/// Why a command was refused without changing anything.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    NotInteger,
    NotFloat,
    Overflow,
    NoSuchKey,
    TooLarge,
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Refusal::NotInteger => "value is not an integer or out of range",
            Refusal::NotFloat => "value is not a valid float",
            Refusal::Overflow => "increment or decrement would overflow",
            Refusal::NoSuchKey => "no such key",
            Refusal::TooLarge => "string exceeds maximum allowed size",
        })
    }
}

/// What applying a command did.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// The value was stored under this version.
    Written {
        version: u64,
    },
    /// The key existed with this version and is now gone.
    Deleted {
        version: u64,
    },
    /// A delete found no key.
    NotFound,
    /// The condition did not hold; the key's current version, if it exists.
    ConditionFailed {
        current_version: Option<u64>,
    },
    /// The key's value before the command, and the version the command
    /// wrote if it wrote.
    Previous {
        value: Option<Bytes>,
        version: Option<u64>,
    },
    /// A number: a new counter value, a length, a count of keys, or 1/0 for
    /// whether the command took effect.
    Integer(i64),
    /// A new value as text (INCRBYFLOAT).
    Bulk(Bytes),
    Refused(Refusal),
}

/// The bytes of an entry could not be decoded. Entries are CRC-checked in
/// the WAL, so this means a bug or a version mismatch, never a torn write.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("malformed command entry: {0}")]
pub struct DecodeError(&'static str);

/// The fixed part of an encoded command.
#[derive(Default)]
struct Header {
    op: u8,
    condition: u8,
    flags: u8,
    version: u64,
    arg: u64,
    arg2: u64,
    expiry: u8,
    when: u8,
}

impl Command {
    /// The key that decides where the command runs (its shard). `Clear` has
    /// none: it is sent to each shard explicitly.
    pub fn key(&self) -> &Bytes {
        static NONE: Bytes = Bytes::new();
        match self {
            Command::Put { key, .. }
            | Command::Delete { key, .. }
            | Command::Set { key, .. }
            | Command::Expire { key, .. }
            | Command::Incr { key, .. }
            | Command::IncrFloat { key, .. }
            | Command::Append { key, .. }
            | Command::SetRange { key, .. } => key,
            Command::Rename { from, .. } => from,
            Command::MultiPut { pairs, .. } => pairs.first().map_or(&NONE, |(k, _)| k),
            Command::Reap { keys } | Command::Evict { keys } => keys.first().unwrap_or(&NONE),
            Command::Clear => &NONE,
        }
    }

    /// Whether the command may need more memory (Redis's `denyoom`): what a
    /// node over its memory limit refuses under `noeviction`. Deletes,
    /// expiry changes, reaps and evictions never do.
    pub fn needs_memory(&self) -> bool {
        matches!(
            self,
            Command::Put { .. }
                | Command::Set { .. }
                | Command::Incr { .. }
                | Command::IncrFloat { .. }
                | Command::Append { .. }
                | Command::SetRange { .. }
                | Command::MultiPut { .. }
        )
    }

    pub fn encoded_len(&self) -> usize {
        HEADER_BYTES + self.fields().iter().map(|f| FIELD_HEADER_BYTES + f.len()).sum::<usize>()
    }

    fn fields(&self) -> Vec<&Bytes> {
        match self {
            Command::Put { key, value, .. }
            | Command::Set { key, value, .. }
            | Command::Append { key, value, .. }
            | Command::SetRange { key, value, .. } => vec![key, value],
            Command::Delete { key, .. }
            | Command::Expire { key, .. }
            | Command::Incr { key, .. }
            | Command::IncrFloat { key, .. } => vec![key],
            Command::Rename { from, to, .. } => vec![from, to],
            Command::MultiPut { pairs, .. } => pairs.iter().flat_map(|(k, v)| [k, v]).collect(),
            Command::Reap { keys } | Command::Evict { keys } => keys.iter().collect(),
            Command::Clear => Vec::new(),
        }
    }

    fn header(&self) -> Header {
        let get = |g: bool| if g { FLAG_GET } else { 0 };
        let absent = |a: bool| if a { FLAG_IF_ABSENT } else { 0 };
        match *self {
            Command::Put { condition, .. } => with_condition(Header { op: OP_PUT, ..Header::default() }, condition),
            Command::Delete { condition, .. } => {
                with_condition(Header { op: OP_DELETE, ..Header::default() }, condition)
            }
            Command::Set { condition, expiry, get: g, .. } => {
                let (expiry, arg) = expiry_code(expiry);
                with_condition(Header { op: OP_SET, flags: get(g), expiry, arg, ..Header::default() }, condition)
            }
            Command::Expire { expiry, when, get: g, .. } => {
                let (expiry, arg) = expiry_code(expiry);
                Header { op: OP_EXPIRE, flags: get(g), expiry, arg, when: when_code(when), ..Header::default() }
            }
            Command::Incr { by, .. } => Header { op: OP_INCR, arg: by as u64, ..Header::default() },
            Command::IncrFloat { by, .. } => Header { op: OP_INCR_FLOAT, arg: by.to_bits(), ..Header::default() },
            Command::Append { length_max, .. } => Header { op: OP_APPEND, arg: length_max, ..Header::default() },
            Command::SetRange { offset, length_max, .. } => {
                Header { op: OP_SET_RANGE, arg: offset, arg2: length_max, ..Header::default() }
            }
            Command::Rename { if_absent, .. } => {
                Header { op: OP_RENAME, flags: absent(if_absent), ..Header::default() }
            }
            Command::MultiPut { if_absent, .. } => {
                Header { op: OP_MULTI_PUT, flags: absent(if_absent), ..Header::default() }
            }
            Command::Clear => Header { op: OP_CLEAR, ..Header::default() },
            Command::Reap { .. } => Header { op: OP_REAP, ..Header::default() },
            Command::Evict { .. } => Header { op: OP_EVICT, ..Header::default() },
        }
    }

    /// Encodes the command as proposed at `now_ms` (Unix milliseconds).
    pub fn encode(&self, now_ms: u64) -> Vec<u8> {
        self.encode_with(now_ms, None)
    }

    /// Encodes the command, compressing the value of a put or set of at
    /// least `compress_min_bytes` when that saves space (see `compress.rs`).
    pub fn encode_compressing(&self, now_ms: u64, compress_min_bytes: usize) -> Vec<u8> {
        let frame = match self {
            Command::Put { value, .. } | Command::Set { value, .. } if value.len() >= compress_min_bytes.max(1) => {
                crate::compress::compress(value)
            }
            _ => None,
        };
        self.encode_with(now_ms, frame.map(Bytes::from))
    }

    /// Encodes the command; `frame`, if given, replaces the value (and the
    /// compressed flag says so).
    fn encode_with(&self, now_ms: u64, frame: Option<Bytes>) -> Vec<u8> {
        let h = self.header();
        let mut fields = self.fields();
        let flags = h.flags | if frame.is_some() { FLAG_COMPRESSED } else { 0 };
        if let Some(f) = &frame {
            fields[1] = f;
        }
        let len = HEADER_BYTES + fields.iter().map(|f| FIELD_HEADER_BYTES + f.len()).sum::<usize>();
        let mut buf = Vec::with_capacity(len);
        buf.put_u8(FORMAT_VERSION);
        buf.put_u8(h.op);
        buf.put_u8(h.condition);
        buf.put_u8(flags);
        buf.put_u64_le(h.version);
        buf.put_u64_le(now_ms);
        buf.put_u64_le(h.arg);
        buf.put_u64_le(h.arg2);
        buf.put_u8(h.expiry);
        buf.put_u8(h.when);
        buf.put_u16_le(0);
        buf.put_u32_le(u32::try_from(fields.len()).expect("field count fits: bounded by the request size"));
        for f in fields {
            buf.put_u32_le(u32::try_from(f.len()).expect("field length checked against limits"));
            buf.put_slice(f);
        }
        assert_eq!(buf.len(), len);
        buf
    }

    /// Decodes an entry. Values are zero-copy slices of `data`; keys are
    /// copied so that a map key never pins a whole entry buffer.
    pub fn decode(data: &Bytes) -> Result<Decoded, DecodeError> {
        if data.len() < HEADER_BYTES {
            return Err(DecodeError("shorter than the header"));
        }
        if data[0] != FORMAT_VERSION {
            return Err(DecodeError("unknown format version"));
        }
        let u64_at = |at: usize| u64::from_le_bytes(data[at..at + 8].try_into().expect("8 bytes"));
        let h = Header {
            op: data[1],
            condition: data[2],
            flags: data[3],
            version: u64_at(4),
            arg: u64_at(20),
            arg2: u64_at(28),
            expiry: data[36],
            when: data[37],
        };
        let compressed = h.flags & FLAG_COMPRESSED != 0;
        if compressed && !matches!(h.op, OP_PUT | OP_SET) {
            return Err(DecodeError("a compressed value in a command that has none"));
        }
        let fields = split_fields(data)?;
        Ok(Decoded { now_ms: u64_at(12), command: build(&h, fields)?, compressed })
    }
}

fn with_condition(mut h: Header, condition: Condition) -> Header {
    (h.condition, h.version) = match condition {
        Condition::Always => (0, 0),
        Condition::IfAbsent => (1, 0),
        Condition::IfExists => (2, 0),
        Condition::IfVersion(v) => (3, v),
    };
    h
}

fn expiry_code(expiry: Expiry) -> (u8, u64) {
    match expiry {
        Expiry::Clear => (0, 0),
        Expiry::Keep => (1, 0),
        Expiry::At(ms) => (2, ms),
    }
}

fn when_code(when: ExpireWhen) -> u8 {
    match when {
        ExpireWhen::Always => 0,
        ExpireWhen::IfNone => 1,
        ExpireWhen::IfSome => 2,
        ExpireWhen::IfLater => 3,
        ExpireWhen::IfEarlier => 4,
    }
}

fn split_fields(data: &Bytes) -> Result<Vec<Bytes>, DecodeError> {
    let count = u32::from_le_bytes(data[40..44].try_into().expect("4 bytes")) as usize;
    // Every field takes at least its length prefix: bounds the allocation.
    if count > (data.len() - HEADER_BYTES) / FIELD_HEADER_BYTES {
        return Err(DecodeError("more fields than bytes"));
    }
    let mut fields = Vec::with_capacity(count);
    let mut at = HEADER_BYTES;
    for _ in 0..count {
        let len = data.get(at..at + FIELD_HEADER_BYTES).ok_or(DecodeError("field header overruns"))?;
        let len = u32::from_le_bytes(len.try_into().expect("4 bytes")) as usize;
        at += FIELD_HEADER_BYTES;
        if data.len() - at < len {
            return Err(DecodeError("field overruns"));
        }
        fields.push(data.slice(at..at + len));
        at += len;
    }
    if at != data.len() {
        return Err(DecodeError("lengths do not add up"));
    }
    Ok(fields)
}

fn build(h: &Header, fields: Vec<Bytes>) -> Result<Command, DecodeError> {
    let condition = match h.condition {
        0 => Condition::Always,
        1 => Condition::IfAbsent,
        2 => Condition::IfExists,
        3 => Condition::IfVersion(h.version),
        _ => return Err(DecodeError("unknown condition")),
    };
    let expiry = match h.expiry {
        0 => Expiry::Clear,
        1 => Expiry::Keep,
        2 => Expiry::At(h.arg),
        _ => return Err(DecodeError("unknown expiry kind")),
    };
    let when = match h.when {
        0 => ExpireWhen::Always,
        1 => ExpireWhen::IfNone,
        2 => ExpireWhen::IfSome,
        3 => ExpireWhen::IfLater,
        4 => ExpireWhen::IfEarlier,
        _ => return Err(DecodeError("unknown expire condition")),
    };
    let (get, if_absent) = (h.flags & FLAG_GET != 0, h.flags & FLAG_IF_ABSENT != 0);
    // Keys are copied out of the entry buffer; values stay slices of it.
    let key = |f: &Bytes| Bytes::copy_from_slice(f);
    let command = match (h.op, &fields[..]) {
        (OP_PUT, [k, v]) => Command::Put { key: key(k), value: v.clone(), condition },
        (OP_DELETE, [k]) => Command::Delete { key: key(k), condition },
        (OP_SET, [k, v]) => Command::Set { key: key(k), value: v.clone(), condition, expiry, get },
        (OP_EXPIRE, [k]) => Command::Expire { key: key(k), expiry, when, get },
        (OP_INCR, [k]) => Command::Incr { key: key(k), by: h.arg as i64 },
        (OP_INCR_FLOAT, [k]) => Command::IncrFloat { key: key(k), by: f64::from_bits(h.arg) },
        (OP_APPEND, [k, v]) => Command::Append { key: key(k), value: v.clone(), length_max: h.arg },
        (OP_SET_RANGE, [k, v]) => {
            Command::SetRange { key: key(k), offset: h.arg, value: v.clone(), length_max: h.arg2 }
        }
        (OP_RENAME, [from, to]) => Command::Rename { from: key(from), to: key(to), if_absent },
        (OP_MULTI_PUT, f) if f.len() % 2 == 0 => {
            Command::MultiPut { pairs: f.chunks(2).map(|p| (key(&p[0]), p[1].clone())).collect(), if_absent }
        }
        (OP_CLEAR, []) => Command::Clear,
        (OP_REAP, keys) => Command::Reap { keys: keys.iter().map(key).collect() },
        (OP_EVICT, keys) => Command::Evict { keys: keys.iter().map(key).collect() },
        (OP_PUT..=OP_EVICT, _) => return Err(DecodeError("wrong number of fields for the op")),
        _ => return Err(DecodeError("unknown op")),
    };
    Ok(command)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn b(s: &str) -> Bytes {
        Bytes::copy_from_slice(s.as_bytes())
    }

    fn every_shape() -> Vec<Command> {
        let mut all = Vec::new();
        let conditions =
            [Condition::Always, Condition::IfAbsent, Condition::IfExists, Condition::IfVersion(u64::MAX - 3)];
        for condition in conditions {
            all.push(Command::Put { key: b("k\x00ey"), value: Bytes::from_static(b"\xffvalue"), condition });
            all.push(Command::Delete { key: b(""), condition });
            for expiry in [Expiry::Clear, Expiry::Keep, Expiry::At(1_700_000_000_123)] {
                all.push(Command::Set { key: b("s"), value: b("v"), condition, expiry, get: expiry == Expiry::Keep });
            }
        }
        for when in
            [ExpireWhen::Always, ExpireWhen::IfNone, ExpireWhen::IfSome, ExpireWhen::IfLater, ExpireWhen::IfEarlier]
        {
            all.push(Command::Expire { key: b("e"), expiry: Expiry::At(42), when, get: when == ExpireWhen::Always });
        }
        all.extend([
            Command::Incr { key: b("n"), by: -7 },
            Command::IncrFloat { key: b("f"), by: 2.5e-3 },
            Command::Append { key: b("a"), value: b("tail"), length_max: 99 },
            Command::SetRange { key: b("r"), offset: 5, value: b("xy"), length_max: 1 << 20 },
            Command::Rename { from: b("{t}a"), to: b("{t}b"), if_absent: true },
            Command::MultiPut { pairs: vec![(b("x"), b("1")), (b("y"), b(""))], if_absent: true },
            Command::MultiPut { pairs: vec![], if_absent: false },
            Command::Clear,
            Command::Reap { keys: vec![b("old1"), b("old2")] },
            Command::Evict { keys: vec![b("cold1"), b("cold2"), b("cold3")] },
        ]);
        all
    }

    #[test]
    fn round_trip_every_shape() {
        for (i, cmd) in every_shape().into_iter().enumerate() {
            let bytes = Bytes::from(cmd.encode(1_000 + i as u64));
            assert_eq!(bytes.len(), cmd.encoded_len());
            let decoded = Decoded { now_ms: 1_000 + i as u64, command: cmd, compressed: false };
            assert_eq!(Command::decode(&bytes).unwrap(), decoded);
        }
    }

    #[test]
    fn large_compressible_values_are_encoded_as_frames() {
        let text = Bytes::from("abc".repeat(1000));
        let put = Command::Put { key: b("k"), value: text.clone(), condition: Condition::Always };
        let bytes = Bytes::from(put.encode_compressing(5, 1024));
        assert!(bytes.len() < 500, "{} bytes", bytes.len());
        let d = Command::decode(&bytes).unwrap();
        assert!(d.compressed);
        let Command::Put { value: frame, .. } = &d.command else { panic!("a put") };
        assert_eq!(crate::compress::decompress(frame), text);
        // Below the threshold, incompressible, or not a put: as they are.
        for (cmd, min) in [(put.clone(), 4096), (Command::Delete { key: b("k"), condition: Condition::Always }, 1)] {
            let d = Command::decode(&Bytes::from(cmd.encode_compressing(5, min))).unwrap();
            assert!(!d.compressed);
            assert_eq!(d.command, cmd);
        }
        // A compressed flag on a command without a value is refused.
        let mut bad = Command::Delete { key: b("k"), condition: Condition::Always }.encode(0);
        bad[3] |= FLAG_COMPRESSED;
        assert!(Command::decode(&bad.into()).is_err());
    }

    #[test]
    fn rejects_malformed() {
        for cmd in every_shape() {
            let good = cmd.encode(7);
            for cut in 0..good.len() {
                assert!(Command::decode(&Bytes::copy_from_slice(&good[..cut])).is_err(), "{cmd:?} cut {cut}");
            }
        }
        let good = Command::Put { key: b("key"), value: b("value"), condition: Condition::Always }.encode(0);
        let mut bad_op = good.clone();
        bad_op[1] = 99;
        assert_eq!(Command::decode(&bad_op.into()), Err(DecodeError("unknown op")));
        let mut wrong_fields = good.clone();
        wrong_fields[1] = OP_DELETE;
        assert_eq!(Command::decode(&wrong_fields.into()), Err(DecodeError("wrong number of fields for the op")));
        let mut bad_version = good.clone();
        bad_version[0] = 1;
        assert!(Command::decode(&bad_version.into()).is_err());
        let mut huge_count = good;
        huge_count[40..44].copy_from_slice(&u32::MAX.to_le_bytes());
        assert_eq!(Command::decode(&huge_count.into()), Err(DecodeError("more fields than bytes")));
    }
}
