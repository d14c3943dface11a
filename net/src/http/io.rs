//! hyper's IO traits over glommio's `TcpStream` (which speaks the `futures`
//! `AsyncRead`/`AsyncWrite` traits). The stream is polled on the core that
//! accepted it, like every connection.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use futures_lite::{AsyncRead, AsyncWrite};
use glommio::net::TcpStream;
use hyper::rt::ReadBufCursor;

/// Bytes asked of the socket per read at most. hyper's read buffer decides
/// how much it wants; this only bounds how much of it is zeroed first.
const READ_CHUNK_BYTES: usize = 64 * 1024;

/// A glommio TCP stream as hyper IO.
pub struct GlommioIo(pub TcpStream);

impl hyper::rt::Read for GlommioIo {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, mut buf: ReadBufCursor<'_>) -> Poll<io::Result<()>> {
        // SAFETY: the bytes are zeroed below before anyone reads them, and
        // only the bytes the socket filled are reported with `advance`.
        let unfilled = unsafe { buf.as_mut() };
        let len = unfilled.len().min(READ_CHUNK_BYTES);
        let unfilled = &mut unfilled[..len];
        for b in unfilled.iter_mut() {
            b.write(0);
        }
        // SAFETY: every byte of `unfilled` was initialised just above, and
        // `MaybeUninit<u8>` has the layout of `u8`.
        let bytes = unsafe { std::slice::from_raw_parts_mut(unfilled.as_mut_ptr().cast::<u8>(), len) };
        match Pin::new(&mut self.get_mut().0).poll_read(cx, bytes) {
            Poll::Ready(Ok(n)) => {
                assert!(n <= len, "a read reports no more bytes than it was given");
                // SAFETY: the first `n` bytes were written by the read.
                unsafe { buf.advance(n) };
                Poll::Ready(Ok(()))
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending => Poll::Pending,
        }
    }
}

impl hyper::rt::Write for GlommioIo {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().0).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().0).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().0).poll_close(cx)
    }
}
