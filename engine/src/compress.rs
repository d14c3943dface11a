//! zstd compression of large values.
//!
//! A value of at least the configured size (`--compress-min-bytes`) is
//! compressed when its write is proposed, if that saves at least an eighth;
//! the compressed frame is what the Raft entry, the WAL, the map and the
//! snapshots hold, and every read decompresses it. Frames carry their
//! content size, so a value's length is known without decompressing.
//!
//! Compression happens once, on the proposing leader; applying a command
//! never compresses (so replicas hold the same bytes whatever their
//! version of zstd), and a value rewritten in place (APPEND, SETRANGE,
//! INCR) is stored plain.

use std::cell::RefCell;

use bytes::Bytes;

/// Values below this are stored as they are by default: a zstd frame's
/// overhead and the CPU per operation are not worth it for small values.
pub const COMPRESS_MIN_BYTES_DEFAULT: usize = 1024;
/// zstd level: the fastest, which still halves typical text.
const LEVEL: i32 = 1;

/// Bytes of a long value compressed first, to tell incompressible values
/// (random, already compressed) without paying for all of them.
const PROBE_BYTES: usize = 512;

thread_local! {
    // One context each per core thread: creating a zstd context costs more
    // than compressing a few kilobytes with it.
    static COMPRESSOR: RefCell<zstd::bulk::Compressor<'static>> =
        RefCell::new(zstd::bulk::Compressor::new(LEVEL).expect("a zstd context"));
    static DECOMPRESSOR: RefCell<zstd::bulk::Decompressor<'static>> =
        RefCell::new(zstd::bulk::Decompressor::new().expect("a zstd context"));
}

fn frame_of(value: &[u8]) -> Vec<u8> {
    COMPRESSOR.with(|c| c.borrow_mut().compress(value).expect("compressing into memory cannot fail"))
}

/// `value`'s zstd frame, if it is at most 7/8 of `value`.
pub fn compress(value: &[u8]) -> Option<Vec<u8>> {
    if value.len() > 2 * PROBE_BYTES && !saves(&value[..PROBE_BYTES]) {
        return None;
    }
    let frame = frame_of(value);
    (frame.len() <= value.len() - value.len() / 8).then_some(frame)
}

/// Whether `sample` compresses by an eighth or more.
fn saves(sample: &[u8]) -> bool {
    frame_of(sample).len() <= sample.len() - sample.len() / 8
}

/// The bytes of a frame [`compress`] wrote. A frame in a map came through a
/// checksummed WAL record or snapshot from kvd itself: one that does not
/// decode is a bug, not bad input.
pub fn decompress(frame: &[u8]) -> Bytes {
    let len = plain_len(frame);
    let plain = DECOMPRESSOR.with(|d| d.borrow_mut().decompress(frame, len));
    Bytes::from(plain.expect("a stored zstd frame decompresses"))
}

/// The content size a frame records.
pub fn plain_len(frame: &[u8]) -> usize {
    match zstd::zstd_safe::get_frame_content_size(frame) {
        Ok(Some(n)) => n as usize,
        other => panic!("a stored zstd frame records its content size: {other:?}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_compresses_random_bytes_do_not() {
        let text: Vec<u8> = (0..4096).map(|i| b"the quick brown fox "[i % 20]).collect();
        let frame = compress(&text).expect("text compresses");
        assert!(frame.len() < text.len() / 4, "{} bytes", frame.len());
        assert_eq!(plain_len(&frame), text.len());
        assert_eq!(decompress(&frame), text);
        let mut x = 0x9E37_79B9_7F4A_7C15u64;
        let random: Vec<u8> = (0..4096)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect();
        assert_eq!(compress(&random), None, "random bytes are kept as they are");
    }
}
