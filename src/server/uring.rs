//! io_uring backend: a tokio-uring runtime per worker. Slot memory goes to the kernel as is.

use std::io;
use std::net::Shutdown;

use tokio_uring::buf::IoBuf;
use tokio_uring::net::TcpStream;

use crate::serve::transport::{Out, Transport};
use crate::store::SlotBuf;

/// A client connection on io_uring: a tokio-uring TCP stream with `TCP_NODELAY` set.
pub struct UringConn {
    stream: TcpStream,
}

impl UringConn {
    /// Wraps an accepted stream and sets `TCP_NODELAY` (a failure to set it is ignored: the
    /// connection works, only with Nagle's delay on small writes).
    pub fn new(stream: TcpStream) -> UringConn {
        let _ = stream.set_nodelay(true);
        UringConn { stream }
    }
}

/// One buffer of a vectored write: a head or a slot view.
enum Buf {
    Head(Vec<u8>),
    Slot(SlotBuf),
}

// SAFETY: both variants own their memory for as long as the `Buf` lives (a `Vec`, or a pinned
// slot view whose pin keeps the mapping and the bytes); the pointer never moves because
// neither is resized while the kernel holds it, and all bytes up to `bytes_init` are initialised.
unsafe impl IoBuf for Buf {
    fn stable_ptr(&self) -> *const u8 {
        match self {
            Buf::Head(v) => v.as_ptr(),
            Buf::Slot(s) => s.stable_ptr(),
        }
    }
    fn bytes_init(&self) -> usize {
        match self {
            Buf::Head(v) => v.len(),
            Buf::Slot(s) => s.len(),
        }
    }
    fn bytes_total(&self) -> usize {
        self.bytes_init()
    }
}

impl Transport for UringConn {
    async fn read(&mut self, mut buf: Vec<u8>) -> (io::Result<usize>, Vec<u8>) {
        // tokio-uring reads into the start of a Vec: read into its spare capacity instead, or
        // the bytes already buffered (a partial head, pipelined requests) are overwritten.
        if buf.len() == buf.capacity() {
            buf.reserve(4096);
        }
        let len = buf.len();
        let spare = tokio_uring::buf::BoundedBuf::slice(buf, len..);
        let (r, slice) = self.stream.read(spare).await;
        (r, slice.into_inner())
    }

    async fn write(&mut self, out: Out) -> io::Result<()> {
        match out {
            Out::Bytes(v) => self.stream.write_all(v).await.0,
            Out::Slot(s) => self.stream.write_all(s).await.0,
            Out::HeadAndSlot(h, s) => {
                let head_len = h.len();
                let total = head_len + s.len();
                let (r, mut bufs) = self.stream.writev(vec![Buf::Head(h), Buf::Slot(s)]).await;
                let n = r?;
                if n == total {
                    return Ok(());
                }
                // A short vectored write: send the rest with plain writes.
                let Some(Buf::Slot(s)) = bufs.pop() else {
                    unreachable!()
                };
                let Some(Buf::Head(h)) = bufs.pop() else {
                    unreachable!()
                };
                if n < head_len {
                    self.stream.write_all(h[n..].to_vec()).await.0?;
                    self.stream.write_all(s).await.0
                } else {
                    self.stream
                        .write_all(s.slice(n - head_len..s.len()))
                        .await
                        .0
                }
            }
        }
    }

    fn shutdown_write(&mut self) {
        let _ = self.stream.shutdown(Shutdown::Write);
    }

    fn shutdown(&mut self) {
        let _ = self.stream.shutdown(Shutdown::Both);
    }
}
