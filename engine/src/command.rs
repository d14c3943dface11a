//! The commands that go through Raft, and their encoding as the data of a
//! Raft log entry. Applying the same sequence of commands to the same state
//! yields the same state on every replica: a command carries everything its
//! outcome depends on (no clocks, no randomness).
//!
//! Encoding (little-endian), format version 1:
//!
//! ```text
//! 0  u8  format version (1)
//! 1  u8  op: 1 = put, 2 = delete
//! 2  u8  condition: 0 = always, 1 = if absent, 2 = if exists, 3 = if version
//! 3  u8  reserved, 0
//! 4  u64 expected version (0 unless condition = 3)
//! 12 u32 key length K
//! 16 u32 value length V (0 for delete)
//! 20 K bytes key, V bytes value
//! ```

use bytes::{BufMut, Bytes, BytesMut};

use crate::limits::COMMAND_OVERHEAD_BYTES;

const FORMAT_VERSION: u8 = 1;
const OP_PUT: u8 = 1;
const OP_DELETE: u8 = 2;

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

/// A replicated write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    Put { key: Bytes, value: Bytes, condition: Condition },
    Delete { key: Bytes, condition: Condition },
}

/// What applying a command did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// The value was stored under this version.
    Written { version: u64 },
    /// The key existed with this version and is now gone.
    Deleted { version: u64 },
    /// A delete found no key.
    NotFound,
    /// The condition did not hold; the key's current version, if it exists.
    ConditionFailed { current_version: Option<u64> },
}

/// The bytes of an entry could not be decoded. Entries are CRC-checked in
/// the WAL, so this means a bug or a version mismatch, never a torn write.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("malformed command entry: {0}")]
pub struct DecodeError(&'static str);

impl Command {
    pub fn key(&self) -> &Bytes {
        match self {
            Command::Put { key, .. } | Command::Delete { key, .. } => key,
        }
    }

    pub fn encoded_len(&self) -> usize {
        match self {
            Command::Put { key, value, .. } => COMMAND_OVERHEAD_BYTES + key.len() + value.len(),
            Command::Delete { key, .. } => COMMAND_OVERHEAD_BYTES + key.len(),
        }
    }

    pub fn encode(&self) -> Vec<u8> {
        let (op, key, value, condition) = match self {
            Command::Put { key, value, condition } => (OP_PUT, key, &value[..], condition),
            Command::Delete { key, condition } => (OP_DELETE, key, &[][..], condition),
        };
        let (cond, version) = match *condition {
            Condition::Always => (0u8, 0u64),
            Condition::IfAbsent => (1, 0),
            Condition::IfExists => (2, 0),
            Condition::IfVersion(v) => (3, v),
        };
        let mut buf = BytesMut::with_capacity(self.encoded_len());
        buf.put_u8(FORMAT_VERSION);
        buf.put_u8(op);
        buf.put_u8(cond);
        buf.put_u8(0);
        buf.put_u64_le(version);
        buf.put_u32_le(u32::try_from(key.len()).expect("key length checked against limits"));
        buf.put_u32_le(u32::try_from(value.len()).expect("value length checked against limits"));
        buf.put_slice(key);
        buf.put_slice(value);
        assert_eq!(buf.len(), self.encoded_len());
        buf.to_vec()
    }

    /// Decodes an entry. The value is a zero-copy slice of `data`; the key is
    /// copied so that a map key never pins a whole entry buffer.
    pub fn decode(data: &Bytes) -> Result<Command, DecodeError> {
        if data.len() < COMMAND_OVERHEAD_BYTES {
            return Err(DecodeError("shorter than the header"));
        }
        if data[0] != FORMAT_VERSION {
            return Err(DecodeError("unknown format version"));
        }
        let version = u64::from_le_bytes(data[4..12].try_into().expect("8 bytes"));
        let key_len = u32::from_le_bytes(data[12..16].try_into().expect("4 bytes")) as usize;
        let value_len = u32::from_le_bytes(data[16..20].try_into().expect("4 bytes")) as usize;
        if COMMAND_OVERHEAD_BYTES + key_len + value_len != data.len() {
            return Err(DecodeError("lengths do not add up"));
        }
        let condition = match data[2] {
            0 => Condition::Always,
            1 => Condition::IfAbsent,
            2 => Condition::IfExists,
            3 => Condition::IfVersion(version),
            _ => return Err(DecodeError("unknown condition")),
        };
        let key_end = COMMAND_OVERHEAD_BYTES + key_len;
        let key = Bytes::copy_from_slice(&data[COMMAND_OVERHEAD_BYTES..key_end]);
        match data[1] {
            OP_PUT => Ok(Command::Put { key, value: data.slice(key_end..), condition }),
            OP_DELETE if value_len == 0 => Ok(Command::Delete { key, condition }),
            OP_DELETE => Err(DecodeError("delete with a value")),
            _ => Err(DecodeError("unknown op")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_every_shape() {
        let conditions =
            [Condition::Always, Condition::IfAbsent, Condition::IfExists, Condition::IfVersion(u64::MAX - 3)];
        for condition in conditions {
            let put = Command::Put {
                key: Bytes::from_static(b"k\x00ey"),
                value: Bytes::from_static(b"\xffvalue"),
                condition,
            };
            let del = Command::Delete { key: Bytes::from_static(b""), condition };
            for cmd in [put, del] {
                let bytes = Bytes::from(cmd.encode());
                assert_eq!(bytes.len(), cmd.encoded_len());
                assert_eq!(Command::decode(&bytes).unwrap(), cmd);
            }
        }
    }

    #[test]
    fn rejects_malformed() {
        let good = Command::Put {
            key: Bytes::from_static(b"key"),
            value: Bytes::from_static(b"value"),
            condition: Condition::Always,
        }
        .encode();
        for cut in 0..good.len() {
            assert!(Command::decode(&Bytes::copy_from_slice(&good[..cut])).is_err(), "cut {cut}");
        }
        let mut bad_op = good.clone();
        bad_op[1] = 9;
        assert_eq!(Command::decode(&bad_op.into()), Err(DecodeError("unknown op")));
        let mut bad_version = good;
        bad_version[0] = 2;
        assert!(Command::decode(&bad_version.into()).is_err());
    }
}
