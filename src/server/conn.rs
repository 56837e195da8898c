//! One client connection: read heads (with timeouts), answer requests in order (keep-alive and
//! pipelining), and close cleanly or abort. Generic over the backend's [`Transport`].

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use super::Shared;
use crate::http::request::{self, HeadError};
use crate::http::response;
use crate::serve::respond::{ANSWERED, respond};
use crate::serve::transport::{Out, Transport};

/// Request bodies (allowed on GET by HTTP, never used by our clients) are skipped up to this.
const MAX_SKIPPED_BODY: u64 = 64 * 1024;
/// Bodies of passed-through requests (POST, PUT, ...) are read into memory up to this; a
/// gateway cache relays small API calls, not uploads.
const MAX_PASSED_BODY: u64 = 1 << 20;

pub async fn serve<T: Transport>(mut t: T, peer: std::net::SocketAddr, sh: Arc<Shared>) {
    let mut buf: Vec<u8> = Vec::with_capacity(8 * 1024);
    let mut head_started: Option<Instant> = None;
    loop {
        // Answer every complete request already buffered (pipelining), in order.
        loop {
            match request::parse(&buf, &sh.services.limits) {
                Ok(Some((req, n))) => {
                    buf.drain(..n);
                    head_started = None;
                    let mut keep = req.keep_alive;
                    let passed = req.method().is_passed();
                    let mut body = Vec::new();
                    if passed && req.body_len > MAX_PASSED_BODY {
                        let msg = format!("request body over {MAX_PASSED_BODY} bytes");
                        let _ = t
                            .write(Out::Bytes(response::simple(413, &msg, false, &[])))
                            .await;
                        return t.shutdown();
                    }
                    if req.body_len > 0 {
                        if !passed && req.body_len > MAX_SKIPPED_BODY {
                            keep = false;
                        } else {
                            match read_body(
                                &mut t,
                                &mut buf,
                                req.body_len,
                                sh.services.cfg.head_timeout,
                            )
                            .await
                            {
                                Some((b, rest)) => {
                                    buf = rest;
                                    if passed {
                                        body = b;
                                    }
                                }
                                None => return t.shutdown(),
                            }
                        }
                    }
                    // Stopping: a request that arrives now on a kept-alive connection is not
                    // started (the drain may already have seen zero); the client retries.
                    if sh.lifecycle.draining.load(Ordering::Relaxed) {
                        return t.shutdown();
                    }
                    let started = Instant::now();
                    let guard = InFlight::enter(&sh.lifecycle.in_flight);
                    let out = respond(&mut t, &req, body, &sh.services, keep).await;
                    drop(guard);
                    let took = started.elapsed();
                    sh.services.metrics.record(
                        out.origin.as_deref(),
                        out.status,
                        out.cache,
                        out.bytes,
                        took,
                    );
                    sh.services.access.line(format_args!(
                        "{} \"{} {}\" {} {} {} {:.3} {:.3}",
                        peer.ip(),
                        req.method_name,
                        req.target,
                        out.status,
                        out.bytes,
                        out.cache.label(),
                        out.upstream_wait.as_secs_f64(),
                        took.as_secs_f64()
                    ));
                    // Stopping: this connection's last response has gone out.
                    if !out.keep_alive || sh.lifecycle.draining.load(Ordering::Relaxed) {
                        t.shutdown();
                        return;
                    }
                }
                Ok(None) => break,
                Err(e) => {
                    bad_request(&mut t, &e).await;
                    sh.services.metrics.record(
                        None,
                        e.status(),
                        ANSWERED,
                        0,
                        std::time::Duration::ZERO,
                    );
                    sh.services.access.line(format_args!(
                        "{} \"-\" {} 0 {} 0.000 0.000 {}",
                        peer.ip(),
                        e.status(),
                        ANSWERED.label(),
                        e.reason()
                    ));
                    return;
                }
            }
        }
        if buf.capacity() - buf.len() < 4096 {
            buf.reserve(8 * 1024);
        }
        let timeout = match head_started {
            Some(t0) => sh.services.cfg.head_timeout.saturating_sub(t0.elapsed()),
            None if buf.is_empty() => sh.services.cfg.idle_timeout,
            None => {
                head_started = Some(Instant::now());
                sh.services.cfg.head_timeout
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

/// Counts a response in progress for as long as it lives, even if its task unwinds.
struct InFlight<'a>(&'a std::sync::atomic::AtomicUsize);

impl<'a> InFlight<'a> {
    fn enter(n: &'a std::sync::atomic::AtomicUsize) -> InFlight<'a> {
        n.fetch_add(1, Ordering::Relaxed);
        InFlight(n)
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

async fn bad_request<T: Transport>(t: &mut T, e: &HeadError) {
    let body = response::simple(e.status(), e.reason(), false, &[]);
    let _ = t.write(Out::Bytes(body)).await;
    t.shutdown();
}

/// Reads `len` body bytes; returns them and the buffer with what follows them.
async fn read_body<T: Transport>(
    t: &mut T,
    buf: &mut Vec<u8>,
    len: u64,
    timeout: Duration,
) -> Option<(Vec<u8>, Vec<u8>)> {
    let mut left = len as usize;
    let mut body = Vec::with_capacity(left);
    let mut b = std::mem::take(buf);
    loop {
        let n = left.min(b.len());
        body.extend(b.drain(..n));
        left -= n;
        if left == 0 {
            return Some((body, b));
        }
        b.reserve(left.min(64 * 1024));
        match tokio::time::timeout(timeout, t.read(b)).await {
            Ok((Ok(n), nb)) if n > 0 => b = nb,
            _ => return None,
        }
    }
}
