//! epoll backend: a current-thread tokio runtime per worker, for where io_uring is not allowed
//! (Docker's default seccomp profile, `kernel.io_uring_disabled`). Slot bytes are written from
//! the mapping by the kernel (`write` from mmap'd memory): still no userspace copy.

use std::io::{self, IoSlice};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::serve::transport::{Out, Transport};

/// A client connection on epoll: a tokio TCP stream with `TCP_NODELAY` set.
pub struct EpollConn {
    stream: TcpStream,
}

impl EpollConn {
    /// Wraps an accepted stream and sets `TCP_NODELAY` (a failure to set it is ignored: the
    /// connection works, only with Nagle's delay on small writes).
    pub fn new(stream: TcpStream) -> EpollConn {
        let _ = stream.set_nodelay(true);
        EpollConn { stream }
    }
}

impl Transport for EpollConn {
    async fn read(&mut self, mut buf: Vec<u8>) -> (io::Result<usize>, Vec<u8>) {
        let r = self.stream.read_buf(&mut buf).await;
        (r, buf)
    }

    async fn write(&mut self, out: Out) -> io::Result<()> {
        match out {
            Out::Bytes(v) => self.stream.write_all(&v).await,
            Out::Slot(s) => self.stream.write_all(&s).await,
            Out::HeadAndSlot(h, s) => {
                let total = h.len() + s.len();
                let n = self
                    .stream
                    .write_vectored(&[IoSlice::new(&h), IoSlice::new(&s)])
                    .await?;
                if n == total {
                    return Ok(());
                }
                if n < h.len() {
                    self.stream.write_all(&h[n..]).await?;
                    self.stream.write_all(&s).await
                } else {
                    self.stream.write_all(&s[n - h.len()..]).await
                }
            }
        }
    }

    fn shutdown_write(&mut self) {
        let _ = socket2::SockRef::from(&self.stream).shutdown(std::net::Shutdown::Write);
    }

    fn shutdown(&mut self) {
        // No operation is left in the kernel with epoll: closing the socket is enough, but say
        // so to the peer now rather than when the connection is dropped.
        let sock = socket2::SockRef::from(&self.stream);
        let _ = sock.shutdown(std::net::Shutdown::Both);
    }
}
