//! A value as the engine hands it out: the bytes (a zstd frame when
//! compression saved space, see [`crate::compress`]), the version that
//! wrote it and its expiry. The map itself holds [`crate::entry::Entry`]
//! blocks; this is what leaves it (reads, snapshots, backups) and what
//! restoring puts back.
//!
//! Invariant: `value` is what clients stored, or its zstd frame when the
//! compressed flag is set; every reader outside the engine gets the plain
//! bytes ([`Stored::plain`]), so compression is invisible to every
//! protocol.

use bytes::Bytes;

use crate::compress;

/// A value as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stored {
    /// The bytes as held: compressed when [`Stored::is_compressed`]. Use
    /// [`Stored::plain`] for what the client stored.
    pub value: Bytes,
    /// Raft index of the write that stored this value.
    pub version: u64,
    /// When the key expires, Unix milliseconds; 0 = never.
    pub expires_at_ms: u64,
    compressed: bool,
}

impl Stored {
    /// A plain (uncompressed) value without TTL.
    pub fn new(value: Bytes, version: u64) -> Stored {
        Stored::with_expiry(value, version, 0)
    }

    pub fn with_expiry(value: Bytes, version: u64, expires_at_ms: u64) -> Stored {
        Stored { value, version, expires_at_ms, compressed: false }
    }

    /// A value held as a zstd frame (as written by [`compress::compress`]).
    pub fn compressed(frame: Bytes, version: u64, expires_at_ms: u64) -> Stored {
        Stored { value: frame, version, expires_at_ms, compressed: true }
    }

    pub fn is_compressed(&self) -> bool {
        self.compressed
    }

    /// Whether the key still exists at `now_ms`.
    pub fn is_live(&self, now_ms: u64) -> bool {
        is_live(self.expires_at_ms, now_ms)
    }

    /// The bytes the client stored (decompressed if need be).
    pub fn plain(&self) -> Bytes {
        if self.is_compressed() {
            compress::decompress(&self.value)
        } else {
            self.value.clone()
        }
    }

    /// Length of the bytes the client stored, without decompressing.
    pub fn plain_len(&self) -> usize {
        plain_len(&self.value, self.compressed)
    }

    /// The same entry with its value plain: what leaves the engine.
    pub fn to_plain(&self) -> Stored {
        Stored::with_expiry(self.plain(), self.version, self.expires_at_ms)
    }
}

/// Whether a key expiring at `expires_at_ms` (0: never) exists at `now_ms`:
/// the one rule for [`Stored`] and the map's [`crate::entry::Entry`].
pub(crate) fn is_live(expires_at_ms: u64, now_ms: u64) -> bool {
    expires_at_ms == 0 || expires_at_ms > now_ms
}

/// Length of what the client stored, from the bytes as held.
pub(crate) fn plain_len(held: &[u8], compressed: bool) -> usize {
    if compressed {
        compress::plain_len(held)
    } else {
        held.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_compressed_value_reads_plain_and_compares_unequal_to_its_frame() {
        let text = Bytes::from(vec![b'a'; 4096]);
        let frame = Bytes::from(compress::compress(&text).expect("compresses"));
        let c = Stored::compressed(frame, 4, 0);
        assert!(c.is_compressed());
        assert_eq!((c.plain(), c.plain_len()), (text.clone(), 4096));
        assert_ne!(c, Stored::new(c.value.clone(), 4), "the compressed flag is compared");
        assert_eq!(c.to_plain(), Stored::new(text, 4));
        assert!(
            Stored::with_expiry(Bytes::new(), 1, 9).is_live(8) && !Stored::with_expiry(Bytes::new(), 1, 9).is_live(9)
        );
    }
}
