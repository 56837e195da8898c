//! One request to one response: the executor of the plans of `serve::plan` (route, find or
//! fetch the object, apply conditionals and ranges), with one send path for every body.

use std::ops::Range;

use super::Services;
use super::pass;
use super::stream::BlockStream;
use super::transport::{Out, Transport};
use crate::cache::Object;
use crate::cache::lock::Collapsed;
use crate::error::{Error, Kind};
use crate::http::cache_status::{Answer, BypassReason, CacheStatus};
use crate::http::freshness;
use crate::http::range;
use crate::http::request::{Method, Request};
use crate::http::response::{self, Head};
use crate::route::Target;
use crate::serve::plan::{self, AfterRevalidation, Early, Plan, Revalidated, Shape};

/// What happened, for the access log, the metrics and the connection.
pub struct Outcome {
    /// Can the connection take another request?
    pub keep_alive: bool,
    /// The status sent.
    pub status: u16,
    /// Body bytes sent.
    pub bytes: u64,
    /// What the cache did (RFC 9211).
    pub cache: CacheStatus,
    /// The origin host the request was routed to (none when refused before routing).
    pub origin: Option<String>,
    /// Time spent waiting for the upstream before the response head (misses, revalidations).
    pub upstream_wait: std::time::Duration,
}

impl Outcome {
    pub(crate) fn new(status: u16, keep_alive: bool, cache: CacheStatus) -> Outcome {
        Outcome {
            keep_alive,
            status,
            bytes: 0,
            cache,
            origin: None,
            upstream_wait: std::time::Duration::ZERO,
        }
    }
}

const NOT_STORABLE: BypassReason = BypassReason::NotStorable;

/// A short reply with a one-line body, named in `Cache-Status` as `cs`.
async fn simple<T: Transport>(
    t: &mut T,
    status: u16,
    body: &str,
    keep: bool,
    cs: CacheStatus,
    extra: &[(&str, &str)],
) -> Outcome {
    let mut fields = vec![("Cache-Status", cs.field_value())];
    fields.extend_from_slice(extra);
    let out = response::simple(status, body, keep, &fields);
    let ok = t.write(Out::Bytes(out)).await.is_ok();
    Outcome::new(status, keep && ok, cs)
}

/// Answers one request; `body` is its body (read for the methods that are passed through).
/// Plans with the pure functions of `serve::plan`, then carries the plan out.
pub async fn respond<T: Transport>(
    t: &mut T,
    req: &Request,
    body: Vec<u8>,
    sh: &Services,
    keep: bool,
) -> Outcome {
    let target = match plan::admit(req, &sh.cfg) {
        Ok(target) => target,
        Err(Early::Summary) => {
            // The original module's summary, open to anyone when the operator says so.
            let body = super::summary::summary(sh);
            let cs = CacheStatus::Answered(Answer::Summary);
            let extra = [("Cache-Status", cs.field_value())];
            let out = response::reply(200, "application/json", &body, &extra);
            let _ = t.write(Out::Bytes(out)).await;
            return Outcome::new(200, false, cs);
        }
        Err(Early::Refuse(e)) => return error_reply(t, &e, keep).await,
    };
    let origin = Some(target.origin_label.clone());
    let mut x = Exchange {
        t,
        req,
        sh,
        keep,
        target,
        now: freshness::unix_now(),
        upstream_wait: std::time::Duration::ZERO,
    };
    let mut body = body;
    // A representation that changed under the request before a byte of it was sent is served
    // from the new one (planned again); a few times at most, for an origin that keeps changing.
    let mut restarts = 0;
    let (mut out, revalidate_after) = loop {
        match x.run(&mut body).await {
            Some(done) => break done,
            None if restarts < 3 => {
                restarts += 1;
                x.now = freshness::unix_now();
            }
            None => {
                break (
                    error_reply(x.t, &Error::new(Kind::Changed), keep).await,
                    None,
                );
            }
        }
    };
    out.origin = origin;
    out.upstream_wait = x.upstream_wait;
    if let Some((stale, (first, count))) = revalidate_after {
        // After the response: a new version found meanwhile would cut a stale stream short.
        sh.upstream.revalidate(&x.target, &stale, first, count);
    }
    out
}

/// One request being answered: the executor of a [`Plan`].
struct Exchange<'a, T: Transport> {
    t: &'a mut T,
    req: &'a Request,
    sh: &'a Services,
    keep: bool,
    target: Target,
    now: u64,
    upstream_wait: std::time::Duration,
}

/// A revalidation to start once the response is sent: the stale object and its first blocks.
type RevalidateAfter = Option<(Object, (u32, u32))>;

impl<'a, T: Transport> Exchange<'a, T> {
    /// Plans and carries out the request once; `None` when the representation changed before
    /// the response head was sent (the caller plans again).
    async fn run(&mut self, body: &mut Vec<u8>) -> Option<(Outcome, RevalidateAfter)> {
        let body = std::mem::take(body);
        let stored = self.sh.cache.lookup(&self.target.key);
        let hit_for_pass = self
            .sh
            .cache
            .pass_hints()
            .is_pass(&self.target.key, std::time::Instant::now());
        let meta = stored.as_ref().map(|o| &*o.meta);
        // The blocks a fetch starts with: only misses and revalidations need them.
        let window = || plan::first_blocks(self.req, u64::from(self.sh.cache.block_size()));
        let mut after = None;
        let (obj, status) = match (
            plan::plan(self.req, &self.target, hit_for_pass, meta, self.now),
            stored,
        ) {
            (Plan::Refuse(e), _) => return Some((error_reply(self.t, &e, self.keep).await, None)),
            (Plan::Pass(why), _) => return Some((self.pass(body, why).await, None)),
            (Plan::Hit, Some(o)) => (o, None),
            (Plan::StaleThenRevalidate, Some(o)) => {
                after = Some((o.clone(), window()));
                (o, Some(CacheStatus::Stale))
            }
            (
                Plan::Revalidate {
                    stale_if_unreachable,
                    stale_if_5xx,
                },
                Some(o),
            ) => match self
                .revalidate(o, window(), (stale_if_unreachable, stale_if_5xx), body)
                .await
            {
                Ok(served) => served,
                Err(out) => return Some((out, None)),
            },
            (Plan::Miss, _) | (_, None) => match self.miss(window(), body).await {
                Ok(served) => served,
                Err(out) => return Some((out, None)),
            },
        };
        Some((self.serve(&obj, status).await?, after))
    }

    /// The stored response's fields for a head of kind `kind` (RFC 9111 §3.1, §4): every
    /// end-to-end field the origin sent, the freshness fields a child cache needs, `Age`
    /// (RFC 9111 §5.1: always when served from storage, `Age: 0` included; on a miss or after
    /// a revalidation only what the upstream reported), and this node's `Via` entry after the
    /// stored ones (RFC 9110 §7.6.3). The origin's `Server` stands; ours only when it sent none.
    fn stored_fields(&self, h: &mut Head, obj: &Object, kind: Fields, status: CacheStatus) {
        let m = &obj.meta;
        if let Some(e) = &m.etag {
            h.field("ETag", e);
        }
        if let Some(lm) = &m.last_modified {
            h.field("Last-Modified", lm);
        }
        if let (Fields::Whole, Some(ct)) = (kind, &m.content_type) {
            h.field("Content-Type", ct);
        }
        if let Some(cc) = &m.cache_control {
            h.field("Cache-Control", cc);
        }
        if let Some(x) = &m.expires {
            h.field("Expires", x);
        }
        let age = freshness::age(m, self.now);
        if age > 0
            || matches!(
                status,
                CacheStatus::Hit | CacheStatus::Stale | CacheStatus::Partial
            )
        {
            h.number("Age", age);
        }
        // A 304 (RFC 9110 §15.4.5) and the head of a multipart body (its parts carry the
        // representation's, RFC 9110 §14.6) leave out representation metadata.
        // The upstream caches' members are news only on a response fetched just now.
        let fetched = matches!(
            status,
            CacheStatus::Miss | CacheStatus::Refreshed | CacheStatus::Partial
        );
        let cs = (status.field_value(), fetched);
        h.forwarded_fields(&m.fields, self.sh.upstream.via(), cs, |k| {
            kind != Fields::Whole
                && k.len() > 8
                && k[..8].eq_ignore_ascii_case("content-")
                && !k.eq_ignore_ascii_case("content-location")
        });
    }

    /// Revalidates the stale `o` (RFC 9111 §4.3), fetching the blocks `window` if it changed:
    /// the object and cache status to serve, or the outcome of an answer already given.
    async fn revalidate(
        &mut self,
        o: Object,
        window: (u32, u32),
        (stale_if_unreachable, stale_if_5xx): (bool, bool),
        body: Vec<u8>,
    ) -> Result<(Object, Option<CacheStatus>), Outcome> {
        let up = &self.sh.upstream;
        let (first, count) = window;
        let asked = std::time::Instant::now();
        let fetch = up.revalidate(&self.target, &o, first, count);
        let answer = fetch.pending.wait().await;
        self.upstream_wait = asked.elapsed();
        let reduced = match &answer {
            Ok(Collapsed::Object(n)) => Ok(Revalidated::Version(n.version)),
            Ok(Collapsed::Pass(_)) => Ok(Revalidated::NotStorable),
            Ok(Collapsed::Status(s)) => Ok(Revalidated::Answered(*s)),
            Err(e) => Err(e),
        };
        match plan::after_revalidation(o.version, reduced, stale_if_unreachable, stale_if_5xx) {
            AfterRevalidation::Serve(cs) => match answer {
                Ok(Collapsed::Object(n)) => Ok((n, Some(cs))),
                _ => unreachable!("served only after an object"),
            },
            AfterRevalidation::DropAndPass => {
                // No longer storable: drop what is held and pass through.
                log::info!(
                    "{}: now not storable; dropped, passing through",
                    self.target.key
                );
                self.sh.cache.remove(&self.target.key);
                self.sh
                    .cache
                    .pass_hints()
                    .mark(&self.target.key, std::time::Instant::now());
                return Err(self.relay(fetch.relay, body, NOT_STORABLE).await);
            }
            AfterRevalidation::Relay => {
                return Err(self.relay(fetch.relay, body, NOT_STORABLE).await);
            }
            AfterRevalidation::ServeStale => {
                if let Err(e) = &answer {
                    log::info!("{}: serving stale: {}", self.target.key, e.message());
                }
                Ok((o, Some(CacheStatus::Stale)))
            }
            AfterRevalidation::Fail(e) => Err(error_reply(self.t, &e, self.keep).await),
        }
    }

    /// Fetches the object that is not stored (its blocks `window` first): the object and
    /// cache status to serve, or the outcome of an answer already given.
    async fn miss(
        &mut self,
        window: (u32, u32),
        body: Vec<u8>,
    ) -> Result<(Object, Option<CacheStatus>), Outcome> {
        let up = &self.sh.upstream;
        let asked = std::time::Instant::now();
        let (first, count) = window;
        let fetch = up.fetch_cold(&self.target, first, count);
        let answer = fetch.pending.wait().await;
        self.upstream_wait = asked.elapsed();
        match answer {
            Ok(Collapsed::Object(o)) => Ok((o, Some(CacheStatus::Miss))),
            Ok(Collapsed::Pass(why)) => {
                log::debug!("{}: {why}; relayed", self.target.key);
                self.sh
                    .cache
                    .pass_hints()
                    .mark(&self.target.key, std::time::Instant::now());
                return Err(self.relay(fetch.relay, body, NOT_STORABLE).await);
            }
            Ok(Collapsed::Status(_)) => {
                return Err(self.relay(fetch.relay, body, NOT_STORABLE).await);
            }
            Err(e) => Err(error_reply(self.t, &e, self.keep).await),
        }
    }

    async fn pass(&mut self, body: Vec<u8>, why: BypassReason) -> Outcome {
        pass::relay(self.t, self.sh, self.passed(body, why)).await
    }

    /// Relays the response the fetch this request led got and did not store (one upstream
    /// request per client request); a joined request, which has none, passes its own.
    async fn relay(
        &mut self,
        rx: Option<tokio::sync::mpsc::Receiver<crate::upstream::pass::PassMsg>>,
        body: Vec<u8>,
        why: BypassReason,
    ) -> Outcome {
        let p = self.passed(body, why);
        match rx {
            Some(rx) => pass::relay_fetched(self.t, self.sh, p, rx).await,
            None => pass::relay(self.t, self.sh, p).await,
        }
    }

    fn passed(&self, body: Vec<u8>, why: BypassReason) -> pass::Passed<'a> {
        pass::Passed {
            req: self.req,
            target: self.target.clone(),
            body,
            keep: self.keep,
            why,
        }
    }

    /// Serves `obj` in the shape the request asks for; `status` is the cache status decided
    /// so far (none: a hit, partial if some blocks are missing).
    /// `None`: the representation changed before the head was sent (see [`Exchange::run`]).
    async fn serve(&mut self, obj: &Object, status: Option<CacheStatus>) -> Option<Outcome> {
        let keep = self.keep;
        let shape = plan::shape(self.req, &obj.meta);
        let total = obj.meta.total_len;
        let status = match (&shape, status) {
            (_, Some(cs)) => cs,
            (Shape::NotModified | Shape::Unsatisfiable, None) => CacheStatus::Hit,
            (s, None) => {
                let bs = u64::from(self.sh.cache.block_size());
                cache_status_for(self.sh, &self.target, s.ranges(), bs)
            }
        };
        let (code, mut h, parts) = match shape {
            Shape::Unsatisfiable => {
                let e = Error::new(Kind::Unsatisfiable(Some(total)));
                return Some(error_reply(self.t, &e, keep).await);
            }
            Shape::NotModified => {
                let mut h = Head::dated(304, obj.meta.date.as_deref());
                self.stored_fields(&mut h, obj, Fields::NotModified, status);
                let ok = self.t.write(Out::Bytes(h.finish(keep))).await.is_ok();
                return Some(Outcome::new(304, keep && ok, status));
            }
            Shape::Single { range, partial } => {
                let code = if partial { 206 } else { obj.meta.status };
                let mut h = Head::dated(code, obj.meta.date.as_deref());
                // A 204 has no content and says no length (RFC 9110 §8.6, §15.3.5).
                if code != 204 {
                    h.number("Content-Length", range.end - range.start);
                }
                if code / 100 == 2 && code != 204 {
                    h.field("Accept-Ranges", "bytes");
                }
                if partial {
                    h.field("Content-Range", &range::content_range(&range, total));
                }
                self.stored_fields(&mut h, obj, Fields::Whole, status);
                (code, h, Parts::single(range))
            }
            Shape::Multipart(ranges) => {
                let parts = Parts::multipart(obj, &ranges);
                let mut h = Head::dated(206, obj.meta.date.as_deref());
                h.header(
                    "Content-Type",
                    format!("multipart/byteranges; boundary={}", parts.boundary),
                )
                .header("Content-Length", parts.len())
                .header("Accept-Ranges", "bytes");
                self.stored_fields(&mut h, obj, Fields::Multipart, status);
                (206, h, parts)
            }
        };
        let mut out = Outcome::new(code, keep, status);
        let head = h.finish(keep);
        if self.req.method() == Method::Head || parts.len() == 0 {
            out.keep_alive &= self.t.write(Out::Bytes(head)).await.is_ok();
            return Some(out);
        }
        match send_parts(self.t, self.sh, &self.target, obj, head, &parts, &mut out).await {
            Sent::Done => Some(out),
            Sent::ChangedBeforeHead => None,
        }
    }
}

/// Which head the stored fields go into.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Fields {
    /// A 200 or a single-range 206: every field.
    Whole,
    /// The head of a `multipart/byteranges` 206: no `Content-*` field of the representation.
    Multipart,
    /// A 304: no representation metadata but the validators (RFC 9110 §15.4.5).
    NotModified,
}

/// How a body's sending ended.
enum Sent {
    /// Sent, or failed (answered with an error, or cut).
    Done,
    /// The representation changed before a byte of it was sent: nothing was written.
    ChangedBeforeHead,
}

/// A body made of ranges of one object, each after a prefix (a multipart part's head), then
/// a trailer (the closing boundary). A single range has no prefix and no trailer.
struct Parts {
    boundary: String,
    parts: Vec<(String, Range<u64>)>,
    trailer: String,
}

impl Parts {
    fn single(r: Range<u64>) -> Parts {
        Parts {
            boundary: String::new(),
            parts: vec![(String::new(), r)],
            trailer: String::new(),
        }
    }

    /// `multipart/byteranges` (RFC 9110 §14.6): each part with its Content-Type and
    /// Content-Range.
    fn multipart(obj: &Object, ranges: &[Range<u64>]) -> Parts {
        let total = obj.meta.total_len;
        let boundary = format!("gatecache-{:016x}", obj.version ^ total.rotate_left(17));
        let ctype = obj
            .meta
            .content_type
            .as_deref()
            .unwrap_or("application/octet-stream");
        let parts = ranges
            .iter()
            .map(|r| {
                let head = format!(
                    "\r\n--{boundary}\r\nContent-Type: {ctype}\r\nContent-Range: {}\r\n\r\n",
                    range::content_range(r, total)
                );
                (head, r.clone())
            })
            .collect();
        let trailer = format!("\r\n--{boundary}--\r\n");
        Parts {
            boundary,
            parts,
            trailer,
        }
    }

    /// Body length in bytes.
    fn len(&self) -> u64 {
        let parts: u64 = self
            .parts
            .iter()
            .map(|(h, r)| h.len() as u64 + r.end - r.start)
            .sum();
        parts + self.trailer.len() as u64
    }
}

/// The one send path for a body: the first bytes are in hand before the head goes out (so an
/// upstream failure can still be a clean 502/504 rather than a cut connection), then every
/// part's prefix and blocks, then the trailer. Failures after the head cut the connection.
/// `out.bytes` counts the body bytes written (multipart part heads and the closing boundary
/// included, as the access log's bytes sent), never a chunk whose write failed.
async fn send_parts<T: Transport>(
    t: &mut T,
    sh: &Services,
    target: &Target,
    obj: &Object,
    head: Vec<u8>,
    parts: &Parts,
    out: &mut Outcome,
) -> Sent {
    let mut head = Some(head);
    for (prefix, r) in &parts.parts {
        let mut stream = BlockStream::new(sh, target, obj, r.clone());
        match head.take() {
            Some(mut h) => {
                let first = match stream.next().await {
                    Ok(Some(c)) => c,
                    Ok(None) => unreachable!("satisfiable ranges are not empty"),
                    // Nothing sent yet: the caller serves the new representation.
                    Err(e) if matches!(e.kind, Kind::Changed) => return Sent::ChangedBeforeHead,
                    Err(e) => {
                        *out = error_reply(t, &e, out.keep_alive).await;
                        return Sent::Done;
                    }
                };
                h.extend_from_slice(prefix.as_bytes());
                let body = (prefix.len() + first.len()) as u64;
                if t.write(Out::HeadAndSlot(h, first)).await.is_err() {
                    out.keep_alive = false;
                    return Sent::Done;
                }
                out.bytes = body;
            }
            None => {
                if t.write(Out::Bytes(prefix.as_bytes().to_vec()))
                    .await
                    .is_err()
                {
                    out.keep_alive = false;
                    return Sent::Done;
                }
                out.bytes += prefix.len() as u64;
            }
        }
        // Whether the connection is kept afterwards is not whether this body is whole: a
        // response on a connection that closes (`Connection: close`, HTTP/1.0; RFC 9112
        // §9.6) gets every part and the closing boundary all the same (RFC 9110 §14.6).
        if !send_rest(t, &mut stream, out).await {
            return Sent::Done;
        }
    }
    if parts.trailer.is_empty() {
        return Sent::Done;
    }
    match t
        .write(Out::Bytes(parts.trailer.clone().into_bytes()))
        .await
    {
        Ok(()) => out.bytes += parts.trailer.len() as u64,
        Err(_) => out.keep_alive = false,
    }
    Sent::Done
}

/// Sends the rest of a stream: true once all of it is written; on any failure false, and the
/// connection is marked for abort.
async fn send_rest<T: Transport>(
    t: &mut T,
    stream: &mut BlockStream<'_>,
    out: &mut Outcome,
) -> bool {
    loop {
        match stream.next().await {
            Ok(Some(c)) => {
                let n = c.len() as u64;
                if t.write(Out::Slot(c)).await.is_err() {
                    out.keep_alive = false;
                    return false;
                }
                out.bytes += n;
            }
            Ok(None) => return true,
            Err(e) => {
                log::warn!("response cut after {} bytes: {e:?}", out.bytes);
                out.keep_alive = false;
                return false;
            }
        }
    }
}

fn cache_status_for(sh: &Services, target: &Target, ranges: &[Range<u64>], bs: u64) -> CacheStatus {
    let (mut all, mut any) = (true, false);
    for r in ranges.iter().filter(|r| !r.is_empty()) {
        let blocks = (r.start / bs) as u32..((r.end - 1) / bs) as u32 + 1;
        match sh.cache.ready_in(&target.key, blocks) {
            Some((a, y)) => {
                all &= a;
                any |= y;
            }
            None => return CacheStatus::Miss,
        }
    }
    match (all, any) {
        (true, _) => CacheStatus::Hit,
        (false, true) => CacheStatus::Partial,
        _ => CacheStatus::Miss,
    }
}

/// Answers a request that failed before its response head was sent: the one mapping from an
/// [`Error`] to what the client gets (status, a one-line body naming the cause, `Allow` with a
/// 405, `Content-Range` with a 416; the connection closes after a 400, 405 or 508).
pub(crate) async fn error_reply<T: Transport>(t: &mut T, e: &Error, keep: bool) -> Outcome {
    let keep = keep && !e.closes_connection();
    let extra = e.reply_headers();
    let extra: Vec<(&str, &str)> = extra.iter().map(|(k, v)| (*k, v.as_str())).collect();
    simple(t, e.status(), &e.message(), keep, answered(e), &extra).await
}

/// The cache status of the reply to `e`: the cache's own answer, with why (RFC 9211 §2.8
/// `detail`), for everything but an upstream's final status relayed (that one was forwarded).
fn answered(e: &Error) -> CacheStatus {
    let why = match e.kind {
        Kind::Status { .. } => return CacheStatus::Bypass(NOT_STORABLE),
        Kind::Refused { status: 508, .. } => Answer::Loop,
        // RFC 9111 §5.2.1.7: the only 504 the cache refuses with.
        Kind::Refused { status: 504, .. } => Answer::OnlyIfCached,
        Kind::Refused { .. } => Answer::Refused,
        Kind::Unsatisfiable(_) => Answer::RangeNotSatisfiable,
        Kind::Connect => Answer::UpstreamUnreachable,
        Kind::Timeout | Kind::FillStalled => Answer::UpstreamTimeout,
        Kind::InvalidResponse | Kind::Redirect(_) | Kind::FillAborted | Kind::Changed => {
            Answer::UpstreamError
        }
        Kind::Storage => Answer::StorageError,
        Kind::Internal => Answer::InternalError,
    };
    CacheStatus::Answered(why)
}

#[cfg(test)]
#[path = "respond_tests.rs"]
mod tests;
