//! One request to one response: route, find or fetch the object, apply conditionals and ranges,
//! send the head and the body.

use std::ops::Range;

use super::Shared;
use super::pass;
use super::stream::BlockStream;
use super::transport::{Out, Transport};
use crate::cache::Object;
use crate::error::{Error, Side};
use crate::http::cache_status::{BypassReason, CacheStatus};
use crate::http::conditional;
use crate::http::freshness::{self, CacheControl, Decision};
use crate::http::range::{self, Resolved, Spec};
use crate::http::request::{Method, Request};
use crate::http::response::{self, Head};
use crate::route::{self, Refusal, Target};
use crate::upstream::Collapsed;

/// What happened, for the access log, the metrics and the connection.
pub struct Outcome {
    pub keep_alive: bool,
    pub status: u16,
    pub bytes: u64,
    pub cache: CacheStatus,
    /// The origin host the request was routed to (none when refused before routing).
    pub origin: Option<String>,
    /// Time spent waiting for the upstream before the response head (misses, revalidations).
    pub upstream_wait: std::time::Duration,
}

impl Outcome {
    pub(super) fn new(status: u16, keep_alive: bool, cache: CacheStatus) -> Outcome {
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

/// What the cache answers by itself (refusals, errors, the summary).
pub(super) const ANSWERED: CacheStatus = CacheStatus::Bypass(BypassReason::Answered);
const NOT_STORABLE: BypassReason = BypassReason::NotStorable;

async fn simple<T: Transport>(
    t: &mut T,
    status: u16,
    body: &str,
    keep: bool,
    extra: &[(&str, &str)],
) -> Outcome {
    let out = response::simple(status, body, keep, extra);
    let ok = t.write(Out::Bytes(out)).await.is_ok();
    Outcome::new(status, keep && ok, ANSWERED)
}

/// What a response leaves behind for after it is sent.
#[derive(Default)]
struct After {
    /// A revalidation to start once the response is out (stale-while-revalidate).
    revalidate: Option<(Target, Object, u32, u32)>,
    origin: Option<String>,
    upstream_wait: std::time::Duration,
}

/// Answers one request; `body` is its body (read for the methods that are passed through).
pub async fn respond<T: Transport>(
    t: &mut T,
    req: &Request,
    body: Vec<u8>,
    sh: &Shared,
    keep: bool,
) -> Outcome {
    let mut after = After::default();
    let mut out = respond_to(t, req, body, sh, keep, &mut after).await;
    if let Some((target, stale, first, count)) = after.revalidate {
        sh.upstream.revalidate(&target, &stale, first, count);
    }
    out.origin = after.origin;
    out.upstream_wait = after.upstream_wait;
    out
}

async fn respond_to<T: Transport>(
    t: &mut T,
    req: &Request,
    body: Vec<u8>,
    sh: &Shared,
    keep: bool,
    after: &mut After,
) -> Outcome {
    let head_only = match req.method() {
        Method::Get => false,
        Method::Head => true,
        Method::Options | Method::Post | Method::Put | Method::Delete | Method::Patch => false,
        Method::Other => {
            return simple(
                t,
                405,
                &format!("method {} not allowed", req.method_name),
                false,
                &[("Allow", "GET, HEAD, POST, PUT, DELETE, PATCH, OPTIONS")],
            )
            .await;
        }
    };
    if sh.cfg.summary_unrestricted && req.target == "/summary" {
        // The original module's summary, open to anyone when the operator says so.
        let body = crate::admin::summary(sh);
        let out = crate::admin::reply(200, "application/json", &body);
        let _ = t.write(Out::Bytes(out)).await;
        return Outcome::new(200, false, ANSWERED);
    }
    if req.via_has(&sh.cfg.node_name) {
        // A loop (a route or a parent that leads back here): answer rather than fetch again.
        let msg = format!("loop detected: request already passed {}", sh.cfg.node_name);
        return simple(t, 508, &msg, false, &[]).await;
    }
    let target = match route::route(req, &sh.cfg) {
        Ok(t) => t,
        Err(r) => {
            // A 400 closes the connection: what follows a bad head cannot be trusted.
            let keep = keep && !matches!(r, Refusal::BadTarget(_));
            return error_reply(t, &Error::from(r), keep).await;
        }
    };
    after.origin = Some(target.origin_label.clone());
    // Not for the cache: other methods, a client's credentials, content known not storable.
    let bypass = if req.method().is_passed() {
        Some(BypassReason::Method)
    } else if req.authorization.is_some() {
        Some(BypassReason::Authorization)
    } else if sh.upstream.is_pass(&target.key) {
        Some(BypassReason::HitForPass)
    } else {
        None
    };
    if let Some(why) = bypass {
        return pass::relay(t, sh, req, target, body, keep, why).await;
    }
    let specs = req.range.as_deref().and_then(range::parse);
    let bs = u64::from(sh.upstream.cache().block_size());
    let mut cold = false;
    // What this request says about stored responses, and the status it is served with.
    let req_cc = CacheControl::parse(req.cache_control.as_deref());
    let now = freshness::unix_now();
    let mut status_override = None;
    let obj = match sh.upstream.cache().lookup(&target.key) {
        Some(o) => {
            match freshness::decide(&o.meta, &req_cc, req.pragma_no_cache, &target.rule, now) {
                Decision::Fresh => o,
                Decision::StaleWhileRevalidate => {
                    // Revalidated once this response is sent: a new version found meanwhile
                    // would cut this stale stream short.
                    let (first, count) = cold_window(specs.as_deref(), bs, head_only);
                    after.revalidate = Some((target.clone(), o.clone(), first, count));
                    status_override = Some(CacheStatus::Stale);
                    o
                }
                Decision::Revalidate { .. } if req_cc.only_if_cached => {
                    return simple(t, 504, "stale (only-if-cached)", keep, &[]).await;
                }
                Decision::Revalidate {
                    stale_if_unreachable,
                    stale_if_5xx,
                } => {
                    let (first, count) = cold_window(specs.as_deref(), bs, head_only);
                    let asked = std::time::Instant::now();
                    let answer = sh
                        .upstream
                        .revalidate(&target, &o, first, count)
                        .wait()
                        .await;
                    after.upstream_wait = asked.elapsed();
                    match answer {
                        Ok(Collapsed::Object(n)) if n.version == o.version => {
                            status_override = Some(CacheStatus::Revalidated);
                            n
                        }
                        Ok(Collapsed::Object(n)) => {
                            status_override = Some(CacheStatus::Refreshed);
                            n
                        }
                        Ok(Collapsed::Pass(why)) => {
                            // No longer storable: drop what is held and pass through.
                            log::info!("{}: now {why}; dropped, passing through", target.key);
                            sh.upstream.cache().remove(&target.key);
                            sh.upstream.mark_pass(&target.key);
                            return pass::relay(t, sh, req, target, body, keep, NOT_STORABLE).await;
                        }
                        // RFC 9111 §4.2.4 / RFC 5861: a stale response may stand in for an
                        // upstream that failed; never for a failure of our own storage.
                        Err(e)
                            if e.side() == Side::Upstream
                                && ((stale_if_unreachable && e.is_unreachable())
                                    || (stale_if_5xx && e.status() >= 500)) =>
                        {
                            log::info!("{}: serving stale: {}", target.key, e.message());
                            status_override = Some(CacheStatus::Stale);
                            o
                        }
                        Err(e) => return error_reply(t, &e, keep).await,
                    }
                }
            }
        }
        None if req_cc.only_if_cached => {
            return simple(t, 504, "not cached (only-if-cached)", keep, &[]).await;
        }
        None => {
            cold = true;
            let (first, count) = cold_window(specs.as_deref(), bs, head_only);
            let asked = std::time::Instant::now();
            let answer = sh.upstream.fetch_cold(&target, first, count).wait().await;
            after.upstream_wait = asked.elapsed();
            match answer {
                Ok(Collapsed::Object(o)) => o,
                Ok(Collapsed::Pass(why)) => {
                    log::debug!("{}: {why}; passing through", target.key);
                    sh.upstream.mark_pass(&target.key);
                    return pass::relay(t, sh, req, target, body, keep, NOT_STORABLE).await;
                }
                Err(e) => return error_reply(t, &e, keep).await,
            }
        }
    };
    let meta = &obj.meta;
    let etag = meta.etag.as_deref();
    let lm = meta.last_modified.as_deref();
    if conditional::not_modified(req, etag, lm) {
        let cs = status_override.unwrap_or(if cold {
            CacheStatus::Miss
        } else {
            CacheStatus::Hit
        });
        let mut h = Head::dated(304, obj.meta.date.as_deref());
        h.header("Server", "gatecache")
            .header("Cache-Status", cs.field_value());
        validators(&mut h, &obj);
        freshness_headers(&mut h, &obj, now);
        let ok = t.write(Out::Bytes(h.finish(keep))).await.is_ok();
        return Outcome::new(304, keep && ok, cs);
    }
    let total = meta.total_len;
    let resolved = match &specs {
        Some(s) if conditional::if_range_allows(req, etag, lm) => range::resolve(s, total),
        _ => Resolved::Full,
    };
    let (ranges, partial): (Vec<Range<u64>>, bool) = match resolved {
        Resolved::Full => (std::iter::once(0..total).collect(), false),
        Resolved::Partial(r) => (r, true),
        Resolved::Unsatisfiable => {
            let cr = format!("bytes */{total}");
            return simple(
                t,
                416,
                "range not satisfiable",
                keep,
                &[("Content-Range", &cr)],
            )
            .await;
        }
    };
    let cache_status = match status_override {
        _ if cold => CacheStatus::Miss,
        Some(s) => s,
        None => cache_status_for(sh, &target, &ranges, bs),
    };
    if ranges.len() > 1 {
        return multipart(t, sh, &target, &obj, &ranges, head_only, keep, cache_status).await;
    }
    let r = ranges[0].clone();
    let status = if partial { 206 } else { 200 };
    let mut h = Head::dated(status, obj.meta.date.as_deref());
    h.header("Server", "gatecache")
        .header("Content-Length", r.end - r.start)
        .header("Accept-Ranges", "bytes")
        .header("Cache-Status", cache_status.field_value());
    if partial {
        h.header("Content-Range", range::content_range(&r, total));
    }
    validators(&mut h, &obj);
    entity_headers(&mut h, &obj);
    freshness_headers(&mut h, &obj, now);
    if head_only || r.is_empty() {
        let ok = t.write(Out::Bytes(h.finish(keep))).await.is_ok();
        return Outcome::new(status, keep && ok, cache_status);
    }
    let mut stream = BlockStream::new(&sh.upstream, &target, &obj, r);
    // The first bytes are in hand before the head goes out, so an upstream failure can still
    // be a clean 502/504 rather than a cut connection.
    let first = match stream.next().await {
        Ok(Some(c)) => c,
        Ok(None) => unreachable!("non-empty range"),
        Err(e) => return error_reply(t, &e, keep).await,
    };
    let mut out = Outcome::new(status, keep, cache_status);
    out.bytes = first.len() as u64;
    if t.write(Out::HeadAndSlot(h.finish(keep), first))
        .await
        .is_err()
    {
        out.keep_alive = false;
        return out;
    }
    send_rest(t, &mut stream, &mut out).await;
    out
}

/// Sends the rest of a stream; on any failure the connection is marked for abort.
async fn send_rest<T: Transport>(t: &mut T, stream: &mut BlockStream<'_>, out: &mut Outcome) {
    loop {
        match stream.next().await {
            Ok(Some(c)) => {
                out.bytes += c.len() as u64;
                if t.write(Out::Slot(c)).await.is_err() {
                    out.keep_alive = false;
                    return;
                }
            }
            Ok(None) => return,
            Err(e) => {
                log::warn!("response cut after {} bytes: {e:?}", out.bytes);
                out.keep_alive = false;
                return;
            }
        }
    }
}

#[allow(clippy::too_many_arguments)]
async fn multipart<T: Transport>(
    t: &mut T,
    sh: &Shared,
    target: &Target,
    obj: &Object,
    ranges: &[Range<u64>],
    head_only: bool,
    keep: bool,
    cache_status: CacheStatus,
) -> Outcome {
    let total = obj.meta.total_len;
    let boundary = format!("gatecache-{:016x}", obj.version ^ total.rotate_left(17));
    let ctype = obj
        .meta
        .content_type
        .as_deref()
        .unwrap_or("application/octet-stream");
    let part_heads: Vec<String> = ranges
        .iter()
        .map(|r| {
            format!(
                "\r\n--{boundary}\r\nContent-Type: {ctype}\r\nContent-Range: {}\r\n\r\n",
                range::content_range(r, total)
            )
        })
        .collect();
    let closing = format!("\r\n--{boundary}--\r\n");
    let len: u64 = ranges
        .iter()
        .zip(&part_heads)
        .map(|(r, h)| h.len() as u64 + r.end - r.start)
        .sum::<u64>()
        + closing.len() as u64;
    let mut h = Head::dated(206, obj.meta.date.as_deref());
    h.header("Server", "gatecache")
        .header(
            "Content-Type",
            format!("multipart/byteranges; boundary={boundary}"),
        )
        .header("Content-Length", len)
        .header("Accept-Ranges", "bytes")
        .header("Cache-Status", cache_status.field_value());
    validators(&mut h, obj);
    freshness_headers(&mut h, obj, freshness::unix_now());
    let mut out = Outcome::new(206, keep, cache_status);
    if head_only {
        out.keep_alive &= t.write(Out::Bytes(h.finish(keep))).await.is_ok();
        return out;
    }
    let mut first_stream = BlockStream::new(&sh.upstream, target, obj, ranges[0].clone());
    let first = match first_stream.next().await {
        Ok(Some(c)) => c,
        Ok(None) => unreachable!("satisfiable ranges are not empty"),
        Err(e) => return error_reply(t, &e, keep).await,
    };
    let mut head = h.finish(keep);
    head.extend_from_slice(part_heads[0].as_bytes());
    out.bytes = first.len() as u64;
    if t.write(Out::HeadAndSlot(head, first)).await.is_err() {
        out.keep_alive = false;
        return out;
    }
    send_rest(t, &mut first_stream, &mut out).await;
    drop(first_stream);
    for (r, ph) in ranges.iter().zip(&part_heads).skip(1) {
        if !out.keep_alive || t.write(Out::Bytes(ph.as_bytes().to_vec())).await.is_err() {
            out.keep_alive = false;
            return out;
        }
        let mut s = BlockStream::new(&sh.upstream, target, obj, r.clone());
        send_rest(t, &mut s, &mut out).await;
    }
    if out.keep_alive && t.write(Out::Bytes(closing.into_bytes())).await.is_err() {
        out.keep_alive = false;
    }
    out
}

/// Blocks to fetch for an object not cached at all: from the block the client's range starts
/// in, as many as it asks for (up to the upstream window).
fn cold_window(specs: Option<&[Spec]>, bs: u64, head_only: bool) -> (u32, u32) {
    if head_only {
        return (0, 1);
    }
    match specs {
        Some([Spec::FromTo(a, b)]) => ((a / bs) as u32, (b / bs - a / bs + 1) as u32),
        Some([Spec::From(a)]) => ((a / bs) as u32, u32::MAX),
        // A suffix needs the length first; several ranges start from the first one.
        Some([Spec::Suffix(_)]) => (0, 1),
        Some(specs) => match specs.iter().find_map(|s| match s {
            Spec::FromTo(a, _) | Spec::From(a) => Some(*a),
            Spec::Suffix(_) => None,
        }) {
            Some(a) => ((a / bs) as u32, 1),
            None => (0, 1),
        },
        None => (0, u32::MAX),
    }
}

fn cache_status_for(sh: &Shared, target: &Target, ranges: &[Range<u64>], bs: u64) -> CacheStatus {
    let (mut all, mut any) = (true, false);
    for r in ranges.iter().filter(|r| !r.is_empty()) {
        let blocks = (r.start / bs) as u32..((r.end - 1) / bs) as u32 + 1;
        match sh.upstream.cache().ready_in(&target.key, blocks) {
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

fn validators(h: &mut Head, obj: &Object) {
    if let Some(e) = &obj.meta.etag {
        h.header("ETag", e);
    }
    if let Some(lm) = &obj.meta.last_modified {
        h.header("Last-Modified", lm);
    }
}

fn entity_headers(h: &mut Head, obj: &Object) {
    if let Some(ct) = &obj.meta.content_type {
        h.header("Content-Type", ct);
    }
    for (k, v) in &obj.meta.extra_headers {
        h.header(k, v);
    }
}

/// What a downstream cache (a child gateway) needs to judge freshness itself: the origin's
/// Cache-Control and Expires, and how long the response has been held (`Age`; the head's
/// `Date` is the origin's, so a child's Expires - Date is the origin's lifetime).
fn freshness_headers(h: &mut Head, obj: &Object, now: u64) {
    let m = &obj.meta;
    if let Some(cc) = &m.cache_control {
        h.header("Cache-Control", cc);
    }
    if let Some(x) = &m.expires {
        h.header("Expires", x);
    }
    if let Some(a) = freshness::age_header(m, now) {
        h.header("Age", a);
    }
}

/// Answers a request that failed before its response head was sent: the one mapping from an
/// [`Error`] to what the client gets (status, a one-line body naming the cause, and
/// `Content-Range` with a 416).
pub(super) async fn error_reply<T: Transport>(t: &mut T, e: &Error, keep: bool) -> Outcome {
    let extra = e.reply_headers();
    let extra: Vec<(&str, &str)> = extra.iter().map(|(k, v)| (*k, v.as_str())).collect();
    simple(t, e.status(), &e.message(), keep, &extra).await
}
