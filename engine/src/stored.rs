//! A value as a shard holds it: the bytes (zstd-compressed when that saved
//! space, see [`crate::compress`]), the version that wrote it, its expiry,
//! and the access clock eviction samples.
//!
//! Invariants:
//! - `value` is what clients stored, or its zstd frame when the compressed
//!   bit is set; every reader outside the engine gets the plain bytes
//!   ([`Stored::plain`]), so compression is invisible to every protocol;
//! - the access clock is this replica's own bookkeeping (reads touch it, on
//!   the leader): it is not replicated, not in snapshots, and not part of
//!   equality.

use std::cell::Cell;

use bytes::Bytes;

use crate::compress;

/// Bit of `meta` set when `value` is compressed.
const META_COMPRESSED: u32 = 1 << 31;
/// Bits of `meta` that hold the access clock.
pub const META_CLOCK_MASK: u32 = (1 << 24) - 1;

/// A value as stored.
#[derive(Debug, Clone)]
pub struct Stored {
    /// The bytes as held: compressed when [`Stored::is_compressed`]. Use
    /// [`Stored::plain`] for what the client stored.
    pub value: Bytes,
    /// Raft index of the write that stored this value.
    pub version: u64,
    /// When the key expires, Unix milliseconds; 0 = never.
    pub expires_at_ms: u64,
    /// Compressed bit and access clock (see the constants above).
    meta: Cell<u32>,
}

impl PartialEq for Stored {
    fn eq(&self, other: &Stored) -> bool {
        (self.value == other.value)
            && self.version == other.version
            && self.expires_at_ms == other.expires_at_ms
            && self.is_compressed() == other.is_compressed()
    }
}

impl Eq for Stored {}

impl Stored {
    /// A plain (uncompressed) value without TTL.
    pub fn new(value: Bytes, version: u64) -> Stored {
        Stored::with_expiry(value, version, 0)
    }

    pub fn with_expiry(value: Bytes, version: u64, expires_at_ms: u64) -> Stored {
        Stored { value, version, expires_at_ms, meta: Cell::new(0) }
    }

    /// A value held as a zstd frame (as written by [`compress::compress`]).
    pub fn compressed(frame: Bytes, version: u64, expires_at_ms: u64) -> Stored {
        Stored { value: frame, version, expires_at_ms, meta: Cell::new(META_COMPRESSED) }
    }

    /// The same value, held the same way, under another version and expiry.
    pub fn rewritten(&self, version: u64, expires_at_ms: u64) -> Stored {
        let meta = Cell::new(self.meta.get() & META_COMPRESSED);
        Stored { value: self.value.clone(), version, expires_at_ms, meta }
    }

    pub fn is_compressed(&self) -> bool {
        self.meta.get() & META_COMPRESSED != 0
    }

    /// Whether the key still exists at `now_ms`.
    pub fn is_live(&self, now_ms: u64) -> bool {
        self.expires_at_ms == 0 || self.expires_at_ms > now_ms
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
        if self.is_compressed() {
            compress::plain_len(&self.value)
        } else {
            self.value.len()
        }
    }

    /// The same entry with its value plain: what leaves the engine.
    pub fn to_plain(&self) -> Stored {
        Stored::with_expiry(self.plain(), self.version, self.expires_at_ms)
    }

    /// The access clock eviction reads (see `evict.rs`).
    pub fn clock(&self) -> u32 {
        self.meta.get() & META_CLOCK_MASK
    }

    pub fn set_clock(&self, clock: u32) {
        let flags = self.meta.get() & !META_CLOCK_MASK;
        self.meta.set(flags | (clock & META_CLOCK_MASK));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_clock_and_the_compressed_bit_are_independent_and_not_compared() {
        let plain = Stored::with_expiry(Bytes::from_static(b"v"), 3, 9);
        plain.set_clock(u32::MAX);
        assert_eq!(plain.clock(), META_CLOCK_MASK);
        assert!(!plain.is_compressed());
        assert_eq!(plain, Stored::with_expiry(Bytes::from_static(b"v"), 3, 9), "clock not compared");
        let text = Bytes::from(vec![b'a'; 4096]);
        let frame = Bytes::from(compress::compress(&text).expect("compresses"));
        let c = Stored::compressed(frame, 4, 0);
        c.set_clock(77);
        assert!(c.is_compressed() && c.clock() == 77);
        assert_eq!(c.plain(), text);
        assert_eq!(c.plain_len(), 4096);
        assert_ne!(c, Stored::new(c.value.clone(), 4), "the compressed bit is compared");
        let moved = c.rewritten(9, 5);
        assert!(moved.is_compressed() && moved.clock() == 0 && moved.version == 9 && moved.expires_at_ms == 5);
        assert_eq!(c.to_plain(), Stored::new(text, 4));
    }
}
