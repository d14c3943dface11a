//! One entry of a shard's map as held in memory: a single heap block with
//! a 32-byte head, the key and the value, behind an 8-byte thin pointer.
//!
//! ```text
//! offset  0: refs     u32  atomic reference count
//! offset  4: meta     u32  atomic: bit 31 compressed, bits 0..24 access clock
//! offset  8: version  u64  Raft index of the write that stored the value
//! offset 16: expires  u64  Unix ms, 0 = never
//! offset 24: key_len  u32
//! offset 28: val_len  u32
//! offset 32: key bytes, then value bytes
//! ```
//!
//! Why: a map of `(Bytes, Stored)` slots took 88 bytes per bucket plus two
//! allocations per key (~158 bytes a key at 16-byte values, against
//! Redis's ~111). One block per key and an 8-byte bucket bring that to
//! about the size class of head + key + value plus 9 bytes a bucket.
//!
//! Invariants:
//! - everything but `refs` and `meta` is written once, before the block is
//!   shared, and never again: a changed version or expiry is a new block;
//! - the block is freed by the clone that drops `refs` to zero; readers on
//!   other cores hold a clone (the value of a reply, a snapshot's entries),
//!   so the block outlives the map's slot as long as they need it;
//! - the access clock is this replica's own bookkeeping: not replicated, not
//!   in snapshots, not compared.

use std::alloc::{alloc, dealloc, handle_alloc_error, Layout};
use std::ptr::NonNull;
use std::sync::atomic::{fence, AtomicU32, Ordering};

use bytes::Bytes;

use crate::compress;
use crate::stored::{self, Stored};

/// Bit of `meta` set when the value is a zstd frame.
const META_COMPRESSED: u32 = 1 << 31;
/// Bits of `meta` that hold the access clock.
pub const META_CLOCK_MASK: u32 = (1 << 24) - 1;
/// Values at most this long are copied into a reply; longer ones are lent
/// (the reply's `Bytes` holds a reference to the block): a copy costs less
/// than the owner allocation below this size.
const COPY_OUT_BYTES_MAX: usize = 64;

#[repr(C)]
struct Head {
    refs: AtomicU32,
    meta: AtomicU32,
    version: u64,
    expires_at_ms: u64,
    key_len: u32,
    value_len: u32,
}

/// Bytes each block spends before its key: the per-key overhead beside the
/// table's bucket.
pub const HEAD_BYTES: usize = size_of::<Head>();
const _: () = assert!(HEAD_BYTES == 32, "the head is the per-key overhead the memory numbers assume");
const _: () = assert!(META_COMPRESSED & META_CLOCK_MASK == 0);

/// A key, its value and their metadata in one reference-counted block.
pub struct Entry(NonNull<Head>);

// SAFETY: the block is immutable once built except `refs` and `meta`,
// which are atomics; the count frees it exactly once.
unsafe impl Send for Entry {}
unsafe impl Sync for Entry {}

impl Entry {
    /// A block holding copies of `key` and `value`.
    pub fn new(key: &[u8], value: &[u8], version: u64, expires_at_ms: u64, compressed: bool) -> Entry {
        let key_len = u32::try_from(key.len()).expect("keys are limited far below 4 GiB");
        let value_len = u32::try_from(value.len()).expect("values are limited far below 4 GiB");
        let layout = layout(key.len(), value.len());
        let meta = if compressed { META_COMPRESSED } else { 0 };
        let head =
            Head { refs: AtomicU32::new(1), meta: AtomicU32::new(meta), version, expires_at_ms, key_len, value_len };
        // SAFETY: the layout has a non-zero size (the head); the writes stay
        // within it: the head, then key_len + value_len bytes after it.
        unsafe {
            let block = alloc(layout) as *mut Head;
            let Some(block) = NonNull::new(block) else { handle_alloc_error(layout) };
            block.as_ptr().write(head);
            let data = (block.as_ptr() as *mut u8).add(HEAD_BYTES);
            std::ptr::copy_nonoverlapping(key.as_ptr(), data, key.len());
            std::ptr::copy_nonoverlapping(value.as_ptr(), data.add(key.len()), value.len());
            Entry(block)
        }
    }

    /// The entry `stored` describes, under `key`.
    pub fn from_stored(key: &[u8], stored: &Stored) -> Entry {
        Entry::new(key, &stored.value, stored.version, stored.expires_at_ms, stored.is_compressed())
    }

    /// Asks the CPU to start loading the block's first cache line (the
    /// head and the start of the key) without waiting for it.
    #[inline]
    pub(crate) fn prefetch(&self) {
        prefetch(self.0.as_ptr() as *const u8);
    }

    fn head(&self) -> &Head {
        // SAFETY: the block lives as long as any clone, and `self` is one.
        unsafe { self.0.as_ref() }
    }

    fn data(&self) -> *const u8 {
        // SAFETY: the key and value follow the head in the same allocation.
        unsafe { (self.0.as_ptr() as *const u8).add(HEAD_BYTES) }
    }

    pub fn key(&self) -> &[u8] {
        // SAFETY: key_len bytes were written after the head at creation.
        unsafe { std::slice::from_raw_parts(self.data(), self.head().key_len as usize) }
    }

    /// The value as held: a zstd frame when [`Entry::is_compressed`].
    pub fn value(&self) -> &[u8] {
        let head = self.head();
        // SAFETY: value_len bytes were written after the key at creation.
        unsafe { std::slice::from_raw_parts(self.data().add(head.key_len as usize), head.value_len as usize) }
    }

    pub fn version(&self) -> u64 {
        self.head().version
    }

    pub fn expires_at_ms(&self) -> u64 {
        self.head().expires_at_ms
    }

    pub fn is_compressed(&self) -> bool {
        self.head().meta.load(Ordering::Relaxed) & META_COMPRESSED != 0
    }

    /// Whether the key still exists at `now_ms`.
    pub fn is_live(&self, now_ms: u64) -> bool {
        stored::is_live(self.expires_at_ms(), now_ms)
    }

    /// The access clock eviction reads (see `evict.rs`).
    pub fn clock(&self) -> u32 {
        self.head().meta.load(Ordering::Relaxed) & META_CLOCK_MASK
    }

    pub fn set_clock(&self, clock: u32) {
        let meta = &self.head().meta;
        let flags = meta.load(Ordering::Relaxed) & !META_CLOCK_MASK;
        meta.store(flags | (clock & META_CLOCK_MASK), Ordering::Relaxed);
    }

    /// Bytes of key and value (what `ShardMap::data_bytes` counts).
    pub fn data_len(&self) -> usize {
        let head = self.head();
        head.key_len as usize + head.value_len as usize
    }

    /// Length of the bytes the client stored, without decompressing.
    pub fn plain_len(&self) -> usize {
        stored::plain_len(self.value(), self.is_compressed())
    }

    /// The bytes the client stored (decompressed if need be).
    pub fn plain(&self) -> Bytes {
        if self.is_compressed() {
            compress::decompress(self.value())
        } else {
            self.value_bytes()
        }
    }

    /// The value as held, as `Bytes`: copied when short, else lent.
    fn value_bytes(&self) -> Bytes {
        if self.value().len() <= COPY_OUT_BYTES_MAX {
            Bytes::copy_from_slice(self.value())
        } else {
            Bytes::from_owner(ValueOf(self.clone()))
        }
    }

    /// The entry as held (compressed or not), as the engine hands it out.
    pub fn to_stored(&self) -> Stored {
        let value = self.value_bytes();
        match self.is_compressed() {
            true => Stored::compressed(value, self.version(), self.expires_at_ms()),
            false => Stored::with_expiry(value, self.version(), self.expires_at_ms()),
        }
    }

    /// The entry as a client reads it: the value plain.
    pub fn to_plain(&self) -> Stored {
        Stored::with_expiry(self.plain(), self.version(), self.expires_at_ms())
    }

    /// The same value, held the same way, under `key`, another version and
    /// another expiry (the access clock starts again).
    pub fn rewritten(&self, key: &[u8], version: u64, expires_at_ms: u64) -> Entry {
        Entry::new(key, self.value(), version, expires_at_ms, self.is_compressed())
    }
}

impl Clone for Entry {
    fn clone(&self) -> Entry {
        let before = self.head().refs.fetch_add(1, Ordering::Relaxed);
        // A count this high means leaked clones: stop before it wraps to a
        // use after free.
        assert!(before < u32::MAX / 2, "entry reference count overflows");
        Entry(self.0)
    }
}

impl Drop for Entry {
    fn drop(&mut self) {
        // The Arc protocol: release our writes, and the last owner acquires
        // everyone's before freeing.
        if self.head().refs.fetch_sub(1, Ordering::Release) != 1 {
            return;
        }
        fence(Ordering::Acquire);
        let layout = layout(self.head().key_len as usize, self.head().value_len as usize);
        // SAFETY: the count reached zero: no other clone exists, and the
        // block was allocated with this layout.
        unsafe { dealloc(self.0.as_ptr() as *mut u8, layout) }
    }
}

impl std::fmt::Debug for Entry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Entry")
            .field("key", &Bytes::copy_from_slice(self.key()))
            .field("value_len", &self.value().len())
            .field("version", &self.version())
            .field("expires_at_ms", &self.expires_at_ms())
            .field("compressed", &self.is_compressed())
            .finish()
    }
}

/// Starts loading the cache line at `at` into every cache level. Only a
/// hint: it never faults, whatever the address, and changes no result.
#[inline]
pub(crate) fn prefetch(at: *const u8) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: PREFETCHT0 reads nothing architecturally and cannot fault.
    unsafe {
        std::arch::x86_64::_mm_prefetch(at as *const i8, std::arch::x86_64::_MM_HINT_T0)
    };
    #[cfg(not(target_arch = "x86_64"))]
    let _ = at;
}

fn layout(key_len: usize, value_len: usize) -> Layout {
    Layout::from_size_align(HEAD_BYTES + key_len + value_len, align_of::<Head>()).expect("entry size fits isize")
}

/// An entry's value lent to a `Bytes`.
struct ValueOf(Entry);

impl AsRef<[u8]> for ValueOf {
    fn as_ref(&self) -> &[u8] {
        self.0.value()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_block_holds_key_value_and_metadata_and_lends_long_values() {
        let long = vec![b'v'; 1000];
        let e = Entry::new(b"key", &long, 7, 99, false);
        assert_eq!((e.key(), e.value(), e.version(), e.expires_at_ms()), (&b"key"[..], &long[..], 7, 99));
        assert!(!e.is_compressed() && e.is_live(98) && !e.is_live(99));
        assert_eq!(e.data_len(), 1003);
        let lent = e.to_stored();
        assert_eq!(e.head().refs.load(Ordering::Relaxed), 2, "a long value is lent, not copied");
        assert_eq!(lent.value.as_ptr(), e.value().as_ptr());
        drop(e);
        assert_eq!(&lent.value[..], &long[..], "the lent value outlives the map's entry");
        let short = Entry::new(b"", b"abc", 1, 0, false);
        assert_eq!(short.to_stored(), Stored::new(Bytes::from_static(b"abc"), 1));
        assert_eq!(short.head().refs.load(Ordering::Relaxed), 1, "a short value is copied");
        assert_eq!(short.key(), b"");
    }

    #[test]
    fn the_clock_and_the_compressed_bit_are_independent() {
        let text = vec![b'a'; 4096];
        let frame = compress::compress(&text).expect("compresses");
        let c = Entry::new(b"k", &frame, 4, 0, true);
        c.set_clock(u32::MAX);
        assert!(c.is_compressed() && c.clock() == META_CLOCK_MASK);
        assert_eq!((c.plain(), c.plain_len()), (Bytes::from(text.clone()), 4096));
        assert_eq!(c.to_plain(), Stored::new(Bytes::from(text), 4));
        let moved = c.rewritten(b"other", 9, 5);
        assert!(moved.is_compressed() && moved.clock() == 0);
        assert_eq!((moved.key(), moved.version(), moved.expires_at_ms()), (&b"other"[..], 9, 5));
        assert_eq!(moved.value(), c.value());
    }

    #[test]
    fn clones_share_the_block_across_threads() {
        let e = Entry::new(b"k", &[1u8; 200], 1, 0, false);
        let handles: Vec<_> = (0..4)
            .map(|_| {
                let c = e.clone();
                std::thread::spawn(move || (0..1000).map(|_| c.clone().value().len()).sum::<usize>())
            })
            .collect();
        for h in handles {
            assert_eq!(h.join().expect("thread"), 200_000);
        }
        assert_eq!(e.head().refs.load(Ordering::Relaxed), 1, "every clone was dropped");
    }
}
