//! One client connection: read heads (with timeouts), answer requests in order (keep-alive and
//! pipelining), and close cleanly or abort. Generic over the backend's [`Transport`].

use std::sync::Arc;
use std::time::{Duration, Instant};

use super::Shared;
use super::respond::respond;
use super::transport::{Out, Transport};
use crate::http::request::{self, HeadError};
use crate::http::response;

/// Request bodies (allowed on GET by HTTP, never used by our clients) are skipped up to this.
const MAX_SKIPPED_BODY: u64 = 64 * 1024;

pub async fn serve<T: Transport>(mut t: T, peer: std::net::SocketAddr, sh: Arc<Shared>) {
    let mut buf: Vec<u8> = Vec::with_capacity(8 * 1024);
    let mut head_started: Option<Instant> = None;
    loop {
        // Answer every complete request already buffered (pipelining), in order.
        loop {
            match request::parse(&buf, &sh.limits) {
                Ok(Some((req, n))) => {
                    buf.drain(..n);
                    head_started = None;
                    let mut keep = req.keep_alive;
                    if req.body_len > 0 {
                        if req.body_len > MAX_SKIPPED_BODY {
                            keep = false;
                        } else {
                            match skip_body(&mut t, &mut buf, req.body_len, sh.cfg.head_timeout)
                                .await
                            {
                                Some(b) => buf = b,
                                None => return t.shutdown(),
                            }
                        }
                    }
                    let started = Instant::now();
                    let out = respond(&mut t, &req, &sh, keep).await;
                    log::info!(
                        target: "access",
                        "{} \"{} {}\" {} {} {} {:.3}",
                        peer.ip(),
                        req.method_name,
                        req.target,
                        out.status,
                        out.bytes,
                        out.cache,
                        started.elapsed().as_secs_f64()
                    );
                    if !out.keep_alive {
                        t.shutdown();
                        return;
                    }
                }
                Ok(None) => break,
                Err(e) => {
                    bad_request(&mut t, &e).await;
                    log::info!(target: "access", "{} \"-\" {} 0 {}", peer.ip(), e.status(), e.reason());
                    return;
                }
            }
        }
        if buf.capacity() - buf.len() < 4096 {
            buf.reserve(8 * 1024);
        }
        let timeout = match head_started {
            Some(t0) => sh.cfg.head_timeout.saturating_sub(t0.elapsed()),
            None if buf.is_empty() => sh.cfg.idle_timeout,
            None => {
                head_started = Some(Instant::now());
                sh.cfg.head_timeout
            }
        };
        match tokio::time::timeout(timeout, t.read(buf)).await {
            Err(_) => {
                // The read op may still be in the kernel (io_uring): shutdown ends it.
                t.shutdown();
                return;
            }
            Ok((Ok(0), _)) | Ok((Err(_), _)) => {
                t.shutdown();
                return;
            }
            Ok((Ok(_), b)) => {
                buf = b;
                if head_started.is_none() {
                    head_started = Some(Instant::now());
                }
            }
        }
    }
}

async fn bad_request<T: Transport>(t: &mut T, e: &HeadError) {
    let body = response::simple(e.status(), e.reason(), false, &[]);
    let _ = t.write(Out::Bytes(body)).await;
    t.shutdown();
}

/// Reads and drops `len` body bytes; returns the buffer with what follows them.
async fn skip_body<T: Transport>(
    t: &mut T,
    buf: &mut Vec<u8>,
    len: u64,
    timeout: Duration,
) -> Option<Vec<u8>> {
    let mut left = len as usize;
    let mut b = std::mem::take(buf);
    loop {
        let n = left.min(b.len());
        b.drain(..n);
        left -= n;
        if left == 0 {
            return Some(b);
        }
        b.reserve(left.min(64 * 1024));
        match tokio::time::timeout(timeout, t.read(b)).await {
            Ok((Ok(n), nb)) if n > 0 => b = nb,
            _ => return None,
        }
    }
}
