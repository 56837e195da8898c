//! What the connection logic needs from a socket; implemented by the io_uring and epoll
//! backends, so both drive exactly the same HTTP code.

use std::io;

use crate::store::SlotBuf;

/// Bytes to send: owned (heads, error bodies) or pinned slot memory (sent with no copy).
pub enum Out {
    /// Owned bytes (heads, error bodies, multipart separators).
    Bytes(Vec<u8>),
    /// A pinned view of slot memory, sent without a userspace copy.
    Slot(SlotBuf),
    /// A head and the first body chunk in one vectored write.
    HeadAndSlot(Vec<u8>, SlotBuf),
}

impl Out {
    /// Bytes to send.
    pub fn len(&self) -> usize {
        match self {
            Out::Bytes(b) => b.len(),
            Out::Slot(s) => s.len(),
            Out::HeadAndSlot(h, s) => h.len() + s.len(),
        }
    }

    /// Nothing to send?
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// A client connection as the HTTP code sees it.
#[allow(async_fn_in_trait)] // Connections never leave their worker thread: no Send bound wanted.
pub trait Transport {
    /// Reads into the spare capacity of `buf` (appending); returns bytes read, 0 at EOF.
    async fn read(&mut self, buf: Vec<u8>) -> (io::Result<usize>, Vec<u8>);
    /// Writes all of `out`.
    async fn write(&mut self, out: Out) -> io::Result<()>;
    /// Ends the sending side only (a TCP half-close): the peer reads every byte written so
    /// far, then the end of the stream; reads go on (the first stage of a close, RFC 9112 §9.6).
    fn shutdown_write(&mut self);
    /// Ends the connection both ways, including any read still pending in the kernel.
    fn shutdown(&mut self);
}
