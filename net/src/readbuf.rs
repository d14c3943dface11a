//! Reading a socket into a growing buffer without zero-filling it.
//!
//! A safe read needs initialised memory. Growing the buffer by a whole read
//! chunk (64 KiB) and zero-filling it before every read cost more CPU than
//! parsing and answering a small request, and split-off frames kept the
//! buffer shared, so the growth reallocated too. Instead a connection reads
//! small amounts into a scratch chunk zeroed once and copies what arrived
//! (usually a few dozen bytes) onto the buffer; only a large frame still
//! missing more than a chunk is read in place.

use std::io;
use std::ops::DerefMut;

use bytes::BytesMut;
use futures_lite::AsyncReadExt;
use glommio::net::TcpStream;

/// A byte buffer a socket can be read onto.
pub trait Growable: DerefMut<Target = [u8]> {
    fn resize_zeroed(&mut self, len: usize);
    fn truncate_to(&mut self, len: usize);
    fn append(&mut self, bytes: &[u8]);
}

/// `BytesMut` and `Vec<u8>` have the same inherent methods for this.
macro_rules! growable {
    ($($t:ty),*) => {$(
        impl Growable for $t {
            fn resize_zeroed(&mut self, len: usize) {
                self.resize(len, 0);
            }
            fn truncate_to(&mut self, len: usize) {
                self.truncate(len);
            }
            fn append(&mut self, bytes: &[u8]) {
                self.extend_from_slice(bytes);
            }
        }
    )*};
}

growable!(BytesMut, Vec<u8>);

/// Bytes asked of a socket per read when no large frame is pending.
pub const CHUNK_BYTES: usize = 64 * 1024;

/// One connection's reader: its scratch chunk.
pub struct Reader {
    scratch: Box<[u8]>,
}

impl Default for Reader {
    fn default() -> Reader {
        Reader { scratch: vec![0; CHUNK_BYTES].into_boxed_slice() }
    }
}

impl Reader {
    /// Reads once from `stream` onto the end of `buf`: up to a chunk, or up
    /// to `want` bytes in place when more than a chunk is awaited. Returns
    /// the bytes read (0: the peer closed its side).
    pub async fn read<B: Growable>(&mut self, stream: &mut TcpStream, buf: &mut B, want: usize) -> io::Result<usize> {
        if want > self.scratch.len() {
            let start = buf.len();
            buf.resize_zeroed(start + want);
            let n = stream.read(&mut buf[start..]).await;
            buf.truncate_to(start + *n.as_ref().unwrap_or(&0));
            return n;
        }
        let n = stream.read(&mut self.scratch).await?;
        buf.append(&self.scratch[..n]);
        Ok(n)
    }
}
