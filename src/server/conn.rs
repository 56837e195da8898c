//! One client connection: read heads (with timeouts), answer requests in order (keep-alive and
//! pipelining, RFC 9112 §9.3), and close cleanly or abort. Generic over the backend's
//! [`Transport`].
//!
//! The connection moves through the [`Phase`]s
//!
//! ```text
//! Idle --first byte--> ReadingHead --head parsed--> [ReadingBody] --> Responding
//!   ^                                                                     |
//!   +------ keep-alive (ReadingHead if a pipelined request is buffered) --+
//! any phase --timeout, EOF, error, bad head, draining, close--> Closing --> closed in stages
//! ```
//!
//! and the phase alone chooses how long the next read may wait ([`Phase::read_timeout`]).

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use super::Shared;
use crate::config::Config;
use crate::http::cache_status::{Answer, CacheStatus};
use crate::http::request::{self, HeadError, Request};
use crate::http::response;
use crate::serve::respond::{Outcome, respond};
use crate::serve::transport::{Out, Transport};

/// The cache status of what the connection refuses by itself (a bad head, a body too large).
const REFUSED: CacheStatus = CacheStatus::Answered(Answer::Refused);
/// Request bodies (allowed on GET by HTTP, never used by our clients) are skipped up to this.
const MAX_SKIPPED_BODY: u64 = 64 * 1024;
/// Bodies of passed-through requests (POST, PUT, ...) are read into memory up to this; a
/// gateway cache relays small API calls, not uploads.
const MAX_PASSED_BODY: u64 = 1 << 20;
/// A closing connection, once half-closed, reads and drops what the client still sends until
/// the client is quiet this long ([`Conn::close`])...
const LINGER_QUIET: Duration = Duration::from_secs(2);
/// ... for at most this long in all...
const LINGER_MAX: Duration = Duration::from_secs(5);
/// ... and at most this many bytes.
const LINGER_BYTES: usize = 4 << 20;

/// The two read timeouts of a connection, as configured (`head_timeout`, `idle_timeout`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timeouts {
    /// How long a request head may take to arrive, counted from its first byte; also how long
    /// each read of a request body may wait (`head_timeout`, default 10 s).
    pub head: Duration,
    /// How long a kept-alive connection may wait for the first byte of its next request
    /// (`idle_timeout`, default 60 s).
    pub idle: Duration,
}

impl Timeouts {
    /// The timeouts configured in `cfg` (`head_timeout`, `idle_timeout`).
    pub fn from_config(cfg: &Config) -> Timeouts {
        Timeouts {
            head: cfg.head_timeout,
            idle: cfg.idle_timeout,
        }
    }
}

/// Where a connection is between two of its reads or writes; it chooses the read timeout.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Between requests with nothing buffered: waiting for a next request (keep-alive).
    Idle,
    /// Part of a request head is buffered, the first of its bytes since `since`: the whole
    /// head must arrive within `head_timeout` of it (a slow-loris defence).
    ReadingHead {
        /// When the first byte of this head was read (or found buffered after a response).
        since: Instant,
    },
    /// A head is parsed and its body (`Content-Length`) is being read.
    ReadingBody,
    /// The response is being produced and written; nothing is read.
    Responding,
    /// The connection ends: no request is read or answered any more; it is closed in stages
    /// ([`Conn::close`]: half-closed, what the client still sends dropped, then shut down).
    Closing,
}

impl Phase {
    /// How long the next read may wait at `now`, or `None` where this phase makes no read
    /// (responding, closing).
    ///
    /// - `Idle`: `idle_timeout`, whole for every wait.
    /// - `ReadingHead { since }`: what is left of `head_timeout` counted from `since` (zero once
    ///   past it: a read that has bytes ready still gets them, otherwise the head timed out).
    /// - `ReadingBody`: `head_timeout`, whole for each read.
    pub fn read_timeout(self, now: Instant, t: Timeouts) -> Option<Duration> {
        match self {
            Phase::Idle => Some(t.idle),
            Phase::ReadingHead { since } => {
                Some(t.head.saturating_sub(now.saturating_duration_since(since)))
            }
            Phase::ReadingBody => Some(t.head),
            Phase::Responding | Phase::Closing => None,
        }
    }

    /// The phase after a read brought bytes at `now`: an idle connection starts reading a head
    /// (its head clock starts at its first byte); every other phase is unchanged.
    pub fn after_read(self, now: Instant) -> Phase {
        match self {
            Phase::Idle => Phase::ReadingHead { since: now },
            other => other,
        }
    }

    /// The phase of a kept-alive connection once a response is sent at `now`: idle if nothing
    /// is buffered, else reading the head of the next (pipelined) request, clock starting now.
    pub fn after_response(buffered: bool, now: Instant) -> Phase {
        if buffered {
            Phase::ReadingHead { since: now }
        } else {
            Phase::Idle
        }
    }
}

/// Serves one accepted connection until it closes: parses each request head from the bytes
/// read, answers the requests in order, and shuts the transport down at the end.
///
/// `peer` is the client's address (logged in the access log). Nothing is returned: every end
/// (EOF, a timeout, a transport error, a bad head answered with its 4xx, a response that
/// closes, the process draining) is handled here and ends in [`Conn::close`].
pub async fn serve<T: Transport>(t: T, peer: SocketAddr, sh: Arc<Shared>) {
    let mut c = Conn {
        timeouts: Timeouts::from_config(&sh.services.cfg),
        t,
        peer,
        sh,
        buf: Vec::with_capacity(8 * 1024),
        phase: Phase::Idle,
    };
    while let Some(req) = c.next_request().await {
        c.answer(&req).await;
    }
    c.close().await;
}

/// A connection's state: the transport, the bytes read but not parsed yet, and the phase.
struct Conn<T> {
    t: T,
    peer: SocketAddr,
    sh: Arc<Shared>,
    timeouts: Timeouts,
    /// Bytes read and not consumed yet: a partial head, or whole pipelined requests.
    buf: Vec<u8>,
    phase: Phase,
}

impl<T: Transport> Conn<T> {
    /// Closes the connection in stages (RFC 9112 §9.6), so that every byte of the last response
    /// reaches the client whatever the client still sends: first a half-close (the client reads
    /// the whole response, then the end of the stream), then what the client still sends (a
    /// pipelined request, the rest of a body that was not read) is read and dropped until it
    /// closes its side, is quiet for [`LINGER_QUIET`], or [`LINGER_MAX`] or [`LINGER_BYTES`] run
    /// out; only then is the socket shut down. Closed at once with unread input, the socket
    /// would answer with a reset, and the kernel throws away what of the response it had not
    /// transmitted yet (the tail of a body on a `Connection: close` or HTTP/1.0 exchange).
    async fn close(&mut self) {
        self.phase = Phase::Closing;
        self.t.shutdown_write();
        let until = Instant::now() + LINGER_MAX;
        let mut dropped = 0;
        let mut buf = std::mem::take(&mut self.buf);
        buf.reserve(64 * 1024);
        while dropped < LINGER_BYTES {
            let wait = LINGER_QUIET.min(until.saturating_duration_since(Instant::now()));
            if wait.is_zero() {
                break;
            }
            buf.clear();
            match tokio::time::timeout(wait, self.t.read(buf)).await {
                Ok((Ok(n), b)) if n > 0 => {
                    dropped += n;
                    buf = b;
                }
                // The client closed its side, the read failed, or the client went quiet.
                _ => break,
            }
        }
        // The read op may still be in the kernel (io_uring): shutdown ends it.
        self.t.shutdown();
    }

    /// Reads until a whole request head is buffered and returns it, its bytes consumed; `None`
    /// once the connection is closing (timeout, EOF, read error, or a bad head, answered here).
    async fn next_request(&mut self) -> Option<Request> {
        loop {
            if self.phase == Phase::Closing {
                return None;
            }
            // Answer every complete request already buffered (pipelining), in order.
            match request::parse(&self.buf, &self.sh.services.limits) {
                Ok(Some((req, n))) => {
                    self.buf.drain(..n);
                    return Some(req);
                }
                Ok(None) => self.read_more().await,
                Err(e) => {
                    self.bad_request(&e).await;
                    self.phase = Phase::Closing;
                }
            }
        }
    }

    /// One read of more head bytes, waiting as long as the phase allows; closes on a
    /// timeout, EOF or error.
    async fn read_more(&mut self) {
        if self.buf.capacity() - self.buf.len() < 4096 {
            self.buf.reserve(8 * 1024);
        }
        // Bytes buffered are always a head being read, never idle time (see `after_response`).
        debug_assert!(self.phase != Phase::Idle || self.buf.is_empty());
        let Some(timeout) = self.phase.read_timeout(Instant::now(), self.timeouts) else {
            self.phase = Phase::Closing;
            return;
        };
        let buf = std::mem::take(&mut self.buf);
        match tokio::time::timeout(timeout, self.t.read(buf)).await {
            Ok((Ok(n), b)) if n > 0 => {
                self.buf = b;
                self.phase = self.phase.after_read(Instant::now());
            }
            // Timed out, EOF or a read error.
            _ => self.phase = Phase::Closing,
        }
    }

    /// Answers one request (reading or skipping its body first), logs it, and moves to the
    /// next phase: idle or reading the next head if kept alive, else closing.
    async fn answer(&mut self, req: &Request) {
        let Some((body, keep)) = self.request_body(req).await else {
            self.phase = Phase::Closing;
            return;
        };
        // Stopping: a request that arrives now on a kept-alive connection is not started
        // (the drain may already have seen zero); the client retries.
        if self.draining() {
            self.phase = Phase::Closing;
            return;
        }
        self.phase = Phase::Responding;
        let started = Instant::now();
        let guard = InFlight::enter(&self.sh.lifecycle.in_flight);
        let out = respond(&mut self.t, req, body, &self.sh.services, keep).await;
        drop(guard);
        self.log(req, &out, started.elapsed());
        // Stopping: this connection's last response has gone out.
        self.phase = if !out.keep_alive || self.draining() {
            Phase::Closing
        } else {
            Phase::after_response(!self.buf.is_empty(), Instant::now())
        };
    }

    /// The request's body (kept for passed-through methods, read and dropped for others) and
    /// whether the connection may be kept alive after it; `None` when the connection must
    /// close now (a passed body over [`MAX_PASSED_BODY`], answered 413; a body cut short).
    async fn request_body(&mut self, req: &Request) -> Option<(Vec<u8>, bool)> {
        let passed = req.method().is_passed();
        if passed && req.body_len > MAX_PASSED_BODY {
            let msg = format!("request body over {MAX_PASSED_BODY} bytes");
            let cs = [("Cache-Status", REFUSED.field_value())];
            let reply = response::simple(413, &msg, false, &cs);
            let _ = self.t.write(Out::Bytes(reply)).await;
            self.log(req, &Outcome::new(413, false, REFUSED), Duration::ZERO);
            return None;
        }
        if req.body_len == 0 {
            return Some((Vec::new(), req.keep_alive));
        }
        if !passed && req.body_len > MAX_SKIPPED_BODY {
            // Not read: the connection closes after the response instead.
            return Some((Vec::new(), false));
        }
        self.phase = Phase::ReadingBody;
        if req.expect_continue && !req.http10 && (self.buf.len() as u64) < req.body_len {
            // RFC 9110 §10.1.1: the client waits for this before it sends the body.
            let go_on = b"HTTP/1.1 100 Continue\r\n\r\n".to_vec();
            self.t.write(Out::Bytes(go_on)).await.ok()?;
        }
        let body = self.read_body(req.body_len).await?;
        Some((if passed { body } else { Vec::new() }, req.keep_alive))
    }

    /// Reads `len` body bytes (those already buffered first); the buffer keeps what follows
    /// them. `None` if a read times out, fails or meets EOF.
    async fn read_body(&mut self, len: u64) -> Option<Vec<u8>> {
        let mut left = len as usize;
        let mut body = Vec::with_capacity(left);
        loop {
            let n = left.min(self.buf.len());
            body.extend(self.buf.drain(..n));
            left -= n;
            if left == 0 {
                return Some(body);
            }
            self.buf.reserve(left.min(64 * 1024));
            let timeout = self.phase.read_timeout(Instant::now(), self.timeouts)?;
            let buf = std::mem::take(&mut self.buf);
            match tokio::time::timeout(timeout, self.t.read(buf)).await {
                Ok((Ok(n), b)) if n > 0 => self.buf = b,
                _ => return None,
            }
        }
    }

    /// Answers a head that does not parse with its status (400, 414, 431, ...) and logs it.
    async fn bad_request(&mut self, e: &HeadError) {
        let cs = [("Cache-Status", REFUSED.field_value())];
        let body = response::simple(e.status(), e.reason(), false, &cs);
        let _ = self.t.write(Out::Bytes(body)).await;
        let services = &self.sh.services;
        services
            .metrics
            .record(None, e.status(), REFUSED, 0, Duration::ZERO);
        services.access.line(format_args!(
            "{} \"-\" {} 0 {} 0.000 0.000 {}",
            self.peer.ip(),
            e.status(),
            REFUSED.label(),
            e.reason()
        ));
    }

    /// Records one answered request in the metrics and the access log.
    fn log(&self, req: &Request, out: &Outcome, took: Duration) {
        let services = &self.sh.services;
        services.metrics.record(
            out.origin.as_deref(),
            out.status,
            out.cache,
            out.bytes,
            took,
        );
        services.access.line(format_args!(
            "{} \"{} {}\" {} {} {} {:.3} {:.3}",
            self.peer.ip(),
            req.method_name,
            req.target,
            out.status,
            out.bytes,
            out.cache.label(),
            out.upstream_wait.as_secs_f64(),
            took.as_secs_f64()
        ));
    }

    fn draining(&self) -> bool {
        self.sh.lifecycle.draining.load(Ordering::Relaxed)
    }
}

/// Counts a response in progress for as long as it lives, even if its task unwinds.
struct InFlight<'a>(&'a AtomicUsize);

impl<'a> InFlight<'a> {
    fn enter(n: &'a AtomicUsize) -> InFlight<'a> {
        n.fetch_add(1, Ordering::Relaxed);
        InFlight(n)
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const T: Timeouts = Timeouts {
        head: Duration::from_secs(10),
        idle: Duration::from_secs(60),
    };

    #[test]
    fn each_phase_chooses_its_read_timeout() {
        let now = Instant::now();
        let s = Duration::from_secs;
        let rows: [(Phase, Instant, Option<Duration>); 8] = [
            // Idle: the whole idle timeout, however long it has been idle.
            (Phase::Idle, now, Some(s(60))),
            (Phase::Idle, now + s(3600), Some(s(60))),
            // Reading a head: what is left of the head timeout since its first byte.
            (Phase::ReadingHead { since: now }, now, Some(s(10))),
            (Phase::ReadingHead { since: now }, now + s(4), Some(s(6))),
            (Phase::ReadingHead { since: now }, now + s(10), Some(s(0))),
            (Phase::ReadingHead { since: now }, now + s(25), Some(s(0))),
            // Reading a body: the whole head timeout for each read.
            (Phase::ReadingBody, now + s(25), Some(s(10))),
            // Responding: no read is made.
            (Phase::Responding, now, None),
        ];
        for (phase, at, want) in rows {
            assert_eq!(
                phase.read_timeout(at, T),
                want,
                "{phase:?} at +{:?}",
                at - now
            );
        }
        assert_eq!(Phase::Closing.read_timeout(now, T), None);
    }

    #[test]
    fn the_head_clock_starting_in_the_future_leaves_the_whole_head_timeout() {
        // `since` after `now` (clocks read in another order) never lengthens the wait.
        let now = Instant::now();
        let since = now + Duration::from_secs(1);
        assert_eq!(
            Phase::ReadingHead { since }.read_timeout(now, T),
            Some(T.head)
        );
    }

    #[test]
    fn the_timeouts_come_from_the_configuration() {
        let text = "head_timeout = \"1500ms\"\nidle_timeout = \"1s\"";
        let cfg = crate::config::RawConfig::from_toml(text)
            .unwrap()
            .validate()
            .unwrap();
        let t = Timeouts::from_config(&cfg);
        let now = Instant::now();
        assert_eq!(
            Phase::Idle.read_timeout(now, t),
            Some(Duration::from_secs(1))
        );
        assert_eq!(
            Phase::ReadingHead { since: now }.read_timeout(now, t),
            Some(Duration::from_millis(1500))
        );
        assert_eq!(
            Phase::ReadingBody.read_timeout(now, t),
            Some(Duration::from_millis(1500))
        );
    }

    #[test]
    fn the_head_clock_starts_at_the_first_byte() {
        let t0 = Instant::now();
        let t1 = t0 + Duration::from_secs(2);
        assert_eq!(Phase::Idle.after_read(t1), Phase::ReadingHead { since: t1 });
        // More bytes of the same head do not restart its clock.
        let reading = Phase::ReadingHead { since: t0 };
        assert_eq!(reading.after_read(t1), reading);
        assert_eq!(Phase::ReadingBody.after_read(t1), Phase::ReadingBody);
    }

    #[test]
    fn after_a_response_the_connection_idles_or_reads_the_pipelined_head() {
        let now = Instant::now();
        assert_eq!(Phase::after_response(false, now), Phase::Idle);
        assert_eq!(
            Phase::after_response(true, now),
            Phase::ReadingHead { since: now }
        );
    }
}
