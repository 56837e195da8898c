//! One upstream request: send a (range) GET, then check the response head against what was
//! asked and what is cached, before a single byte of it is stored.

use std::time::{SystemTime, UNIX_EPOCH};

use ureq::Agent;
use ureq::http::{HeaderMap, Uri};

use super::parents::Hop;
use crate::error::{Error, Kind};
use crate::http::fields;
use crate::http::freshness::{self, CacheControl};
use crate::route::Target;
use crate::store::ObjectMeta;

/// What an upstream answered, when it answered something the cache can act on.
pub enum Answer {
    /// Content to store and serve.
    Store(Fetched),
    /// A 304 to a revalidation: the refreshed headers, no body (RFC 9111 §4.3.4).
    NotModified(ObjectMeta),
    /// A response the cache does not store, relayed to the request that asked as it arrives
    /// (one upstream request per client request). A decision, not a failure.
    Relay(Relay),
}

/// Why a response is relayed and not stored.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Unstored {
    /// It may not be stored (`no-store`, `private`, `Vary`, no length, RFC 9111 §3).
    NotStorable(&'static str),
    /// Its status is passed on, not stored (redirects, errors, ... RFC 9110 §15).
    Status(u16),
}

/// A response to relay: why, and the response itself (head read, body unread).
pub struct Relay {
    /// Why it is not stored.
    pub why: Unstored,
    /// The upstream's response.
    pub resp: ureq::http::Response<ureq::Body>,
}

/// A checked upstream response, ready to be streamed into blocks.
pub struct Fetched {
    /// The response metadata to store.
    pub meta: ObjectMeta,
    /// Offset of the first body byte within the object.
    pub start: u64,
    /// Offset one past the last body byte.
    pub end: u64,
    /// The body, from `start`.
    pub body: ureq::BodyReader<'static>,
}

fn header<'a>(h: &'a HeaderMap, name: &str) -> Option<&'a str> {
    h.get(name).and_then(|v| v.to_str().ok())
}

/// The body's length from `Content-Length`, unless `Transfer-Encoding` is present: then the
/// framing is the coding's and `Content-Length` means nothing (RFC 9112 §6.3).
pub(super) fn body_length(h: &HeaderMap) -> Option<u64> {
    if h.contains_key("transfer-encoding") {
        return None;
    }
    header(h, "content-length").and_then(|v| v.trim().parse::<u64>().ok())
}

/// Was this 5xx relayed by a parent cache from further up (its `Cache-Status` member says
/// `fwd`), rather than made by the parent itself (a member with only a `detail`, or none)?
/// An origin's answer is the client's (RFC 9110 §15.6.3); a parent's own failure is a reason to
/// ask the next hop.
pub(super) fn relayed_by_parent(h: &HeaderMap) -> bool {
    let last = h
        .get_all("cache-status")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .last();
    last.is_some_and(|m| m.split(';').any(|p| p.trim().starts_with("fwd=")))
}

/// Parses `bytes a-b/total` (total must be known).
pub fn parse_content_range(v: &str) -> Option<(u64, u64, u64)> {
    let rest = v.trim().strip_prefix("bytes ")?;
    let (range, total) = rest.split_once('/')?;
    let (a, b) = range.split_once('-')?;
    let (a, b, total): (u64, u64, u64) = (a.parse().ok()?, b.parse().ok()?, total.parse().ok()?);
    (a <= b && b < total).then_some((a, b, total))
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Fields with a member of their own in [`ObjectMeta`] (lower-case), or written anew for
/// every response: `Age` (RFC 9111 §5.1) and the framing, which differs for a range, a
/// multipart body or a whole one (RFC 9112 §6, RFC 9110 §14.4).
const OWN: &[&str] = &[
    "content-length",
    "content-range",
    "etag",
    "last-modified",
    "content-type",
    "cache-control",
    "expires",
    "date",
    "age",
];

/// The response's fields as (name, value) lines in the order received, each value byte for
/// byte (obs-text included, RFC 9110 §5.5; see [`fields::from_wire`]).
pub(super) fn lines(h: &HeaderMap) -> Vec<(String, String)> {
    h.iter()
        .map(|(k, v)| (k.as_str().to_string(), fields::from_wire(v.as_bytes())))
        .collect()
}

/// The metadata to store for a response with fields `h` (RFC 9111 §3.1: every end-to-end
/// field, repeated `Cache-Control` lines combined per RFC 9110 §5.3).
fn meta_from(key: &str, h: &HeaderMap, status: u16, total_len: u64) -> ObjectMeta {
    let all = lines(h);
    let it = || all.iter().map(|(k, v)| (k.as_str(), v.as_str()));
    let s = |n: &str| header(h, n).map(str::to_string);
    let mut m = ObjectMeta {
        key: key.to_string(),
        total_len,
        status,
        etag: s("etag"),
        last_modified: s("last-modified"),
        content_type: s("content-type"),
        cache_control: fields::combined(it(), "cache-control"),
        expires: s("expires"),
        date: s("date"),
        age: header(h, "age")
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0),
        stored_at: now_secs(),
        fields: fields::end_to_end(it(), OWN),
        instance: 0,
    };
    if !m.has_strong_validator() {
        // Nothing tells two responses apart: a nonce of this one keeps its bytes from ever
        // being joined to another's (RFC 9111 §3.4).
        use std::hash::{BuildHasher, Hasher};
        m.instance = std::collections::hash_map::RandomState::new()
            .build_hasher()
            .finish()
            | 1;
    }
    m
}

/// An upstream client error: a timeout, or a connection that could not be made or broke.
pub(super) fn map_err(e: ureq::Error) -> Error {
    match e {
        ureq::Error::Timeout(_) => Error::new(Kind::Timeout),
        ureq::Error::Io(e) if e.kind() == std::io::ErrorKind::TimedOut => Error::new(Kind::Timeout),
        // The upstream answered, with something that is not HTTP we accept (a malformed or
        // oversized head): an invalid response, not an unreachable upstream.
        e @ (ureq::Error::Protocol(_)
        | ureq::Error::LargeResponseHeader(..)
        | ureq::Error::BadUri(_)
        | ureq::Error::Http(_)) => Error::with(Kind::InvalidResponse, e.to_string()),
        e => Error::with(Kind::Connect, e.to_string()),
    }
}

/// The URL to ask `hop` for `target` (assembled from validated parts, see
/// [`Target::uri_for`]), and the `Host` to send.
pub(super) fn upstream_url<'a>(target: &'a Target, hop: &'a Hop) -> Result<(Uri, &'a str), Error> {
    let (uri, host) = match hop {
        Hop::Parent(_, addr) => (target.uri_for(Some(addr)), addr.as_str()),
        // A `connect` override is applied when the name is resolved (see agent.rs).
        Hop::Direct => (target.uri_for(None), target.host.as_str()),
    };
    uri.map(|u| (u, host))
        .map_err(|e| Error::caused(Kind::Internal, e))
}

/// The `Via` to send: the client's entries, then ours.
pub(super) fn via_chain(target: &Target, ours: &str) -> String {
    match &target.via {
        Some(v) => format!("{v}, {ours}"),
        None => ours.to_string(),
    }
}

/// Statuses other than 200 and 206 that are stored (RFC 9110 §15.1: heuristically cacheable,
/// so a cache understands them; 204 and 206 aside, with a body to keep).
fn storable_status(s: u16) -> bool {
    matches!(s, 203 | 204 | 300 | 301 | 308 | 404 | 405 | 410 | 414 | 501)
}

/// Does the response give its own lifetime (RFC 9111 §4.2.1: `s-maxage`, `max-age` or
/// `Expires`)?
fn explicitly_fresh(cc: &CacheControl, h: &HeaderMap) -> bool {
    cc.s_maxage.is_some() || cc.max_age.is_some() || header(h, "expires").is_some()
}

/// Why a response may not be stored, if it may not (`cc`: its `Cache-Control`).
fn refuse_to_store(cc: &CacheControl, h: &HeaderMap) -> Option<&'static str> {
    freshness::not_storable(cc, header(h, "vary"), false)
}

/// The response's `Cache-Control`, its lines combined (RFC 9110 §5.3).
fn cache_control(h: &HeaderMap) -> CacheControl {
    let lines = h
        .get_all("cache-control")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .map(|v| ("cache-control", v));
    CacheControl::parse(fields::combined(lines, "cache-control").as_deref())
}

/// Request fields a fill sets itself (RFC 9111 §4.3.1: the cache's own conditionals and
/// range), that a bodyless `GET` must not carry, or that would make the stored bytes fit one
/// client only: a fill asks for the identity coding, which every client can take (a client's
/// `Accept-Encoding: gzip` could otherwise store a gzip body for clients that cannot).
fn fill_computes(name: &str) -> bool {
    name.len() > 3 && name[..3].eq_ignore_ascii_case("if-")
        || [
            "range",
            "cache-control",
            "content-type",
            "authorization",
            "accept-encoding",
        ]
        .iter()
        .any(|n| name.eq_ignore_ascii_case(n))
}

/// Sends `GET` for `range` (inclusive; `None` = whole object) to `hop` and checks the answer.
/// `via` is this node's `Via` entry; it follows the entries the client's request carried.
/// With `revalidate`, the stored validators make it conditional: a 304 comes back as
/// [`Answer::NotModified`].
pub fn fetch(
    agent: &Agent,
    target: &Target,
    range: Option<(u64, u64)>,
    via: &str,
    hop: &Hop,
    revalidate: Option<&ObjectMeta>,
) -> Result<Answer, Error> {
    let (url, host) = upstream_url(target, hop)?;
    let via = via_chain(target, via);
    let mut req = agent.get(url).header("Host", host).header("Via", via);
    // The client's end-to-end fields (RFC 9110 §7.6), but those the fill computes itself: its
    // own range and validators, and no body.
    let mut agent_named = false;
    for (k, v) in target.fields.iter().filter(|(k, _)| !fill_computes(k)) {
        agent_named |= k.eq_ignore_ascii_case("user-agent");
        req = req.header(k.as_str(), v.as_str());
    }
    if !agent_named {
        req = req.header(
            "User-Agent",
            concat!("gatecache/", env!("CARGO_PKG_VERSION")),
        );
    }
    if let Some((a, b)) = range {
        req = req.header("Range", format!("bytes={a}-{b}"));
    }
    if let Some(cc) = &target.client_cc {
        req = req.header("Cache-Control", cc);
    }
    if let Some(m) = revalidate {
        if let Some(e) = &m.etag {
            req = req.header("If-None-Match", e);
        }
        if let Some(lm) = &m.last_modified {
            req = req.header("If-Modified-Since", lm);
        }
    }
    let resp = req.call().map_err(map_err)?;
    let status = resp.status().as_u16();
    let h = resp.headers().clone();
    let h = &h;
    let relay = |why, resp| Ok(Answer::Relay(Relay { why, resp }));
    let content_length = body_length(h);
    let cc = cache_control(h);
    if matches!(status, 200 | 206)
        && let Some(why) = refuse_to_store(&cc, h)
    {
        return relay(Unstored::NotStorable(why), resp);
    }
    let invalid = |text: String| Error::with(Kind::InvalidResponse, text);
    match status {
        206 => {
            let cr = header(h, "content-range")
                .ok_or_else(|| invalid("206 without Content-Range".into()))?;
            let (a, b, total) = parse_content_range(cr)
                .ok_or_else(|| invalid(format!("bad Content-Range {cr:?}")))?;
            if let Some((ra, rb)) = range
                && (a != ra || b != rb.min(total - 1))
            {
                return Err(invalid(format!(
                    "asked bytes {ra}-{rb}, got Content-Range {cr:?}"
                )));
            }
            if content_length.is_some_and(|n| n != b - a + 1) {
                return Err(invalid(
                    "Content-Length does not match Content-Range".into(),
                ));
            }
            Ok(store(meta_from(&target.key, h, 200, total), a, b + 1, resp))
        }
        200 => {
            // Chunked or close-delimited: not cacheable by range.
            let Some(total) = content_length else {
                return relay(Unstored::NotStorable("no Content-Length"), resp);
            };
            if let Some((ra, _)) = range
                && ra >= total
                && total > 0
            {
                return Err(Error::new(Kind::Unsatisfiable(Some(total))));
            }
            Ok(store(meta_from(&target.key, h, 200, total), 0, total, resp))
        }
        304 if revalidate.is_some() => Ok(Answer::NotModified(meta_from(&target.key, h, 304, 0))),
        // RFC 9111 §3, RFC 9110 §15.1: other statuses a cache may store, stored when the
        // origin gives them an explicit lifetime (no heuristic for them) and a length.
        s if storable_status(s)
            && explicitly_fresh(&cc, h)
            && refuse_to_store(&cc, h).is_none() =>
        {
            match content_length.or((s == 204).then_some(0)) {
                Some(len) => Ok(store(meta_from(&target.key, h, s, len), 0, len, resp)),
                None => relay(Unstored::NotStorable("no Content-Length"), resp),
            }
        }
        // The cache's own range lay past the end (the client's range is judged against the
        // length the 416 gives).
        416 => Err(Error::new(Kind::Unsatisfiable(
            header(h, "content-range")
                .and_then(|v| v.trim().strip_prefix("bytes */"))
                .and_then(|t| t.parse().ok()),
        ))),
        // A parent relaying a failure: the next hop may do better (508, a loop, would not).
        s if s >= 500 && s != 508 && matches!(hop, Hop::Parent(..)) && !relayed_by_parent(h) => {
            Err(invalid(format!("upstream status {s}")))
        }
        // Everything else reaches the client as sent (RFC 9110 §15): redirects are never
        // followed (RFC 9110 §15.4: following one would let an origin send the cache anywhere).
        s => relay(Unstored::Status(s), resp),
    }
}

/// A response to store, unless a field of it would not fit the metadata record (then it is
/// passed: a cut field would be a wrong one).
fn store(meta: ObjectMeta, start: u64, end: u64, resp: ureq::http::Response<ureq::Body>) -> Answer {
    if !meta.fits_record() {
        return Answer::Relay(Relay {
            why: Unstored::NotStorable("a field too long to store"),
            resp,
        });
    }
    Answer::Store(Fetched {
        meta,
        start,
        end,
        body: resp.into_body().into_reader(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_range_parsing() {
        assert_eq!(parse_content_range("bytes 0-99/1000"), Some((0, 99, 1000)));
        assert_eq!(parse_content_range("bytes 5-5/6"), Some((5, 5, 6)));
        assert_eq!(parse_content_range("bytes 5-4/6"), None);
        assert_eq!(parse_content_range("bytes 0-99/*"), None);
        assert_eq!(parse_content_range("bytes 0-1000/1000"), None);
        assert_eq!(parse_content_range("items 0-1/2"), None);
    }
}
