//! One upstream request: send a (range) GET, then check the response head against what was
//! asked and what is cached, before a single byte of it is stored.

use std::time::{SystemTime, UNIX_EPOCH};

use ureq::Agent;
use ureq::http::{HeaderMap, Uri};

use super::parents::Hop;
use crate::error::{Error, Kind};
use crate::http::freshness::{self, CacheControl};
use crate::route::Target;
use crate::store::ObjectMeta;

/// What an upstream answered, when it answered something the cache can act on.
pub enum Answer {
    /// Content to store and serve.
    Store(Fetched),
    /// A 304 to a revalidation: the refreshed headers, no body (RFC 9111 §4.3.4).
    NotModified(ObjectMeta),
    /// A response that may not be stored (`no-store`, `private`, `Vary`, no length, RFC 9111
    /// §3): the request is passed through instead. A decision, not a failure.
    Pass(&'static str),
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

/// End-to-end headers worth storing and replaying beside the ones with their own fields.
const EXTRA: &[&str] = &[
    "content-encoding",
    "content-disposition",
    "content-language",
];

fn meta_from(key: &str, h: &HeaderMap, total_len: u64) -> ObjectMeta {
    let s = |n: &str| header(h, n).map(str::to_string);
    ObjectMeta {
        key: key.to_string(),
        total_len,
        status: 200,
        etag: s("etag"),
        last_modified: s("last-modified"),
        content_type: s("content-type"),
        cache_control: s("cache-control"),
        expires: s("expires"),
        date: s("date"),
        age: header(h, "age")
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0),
        stored_at: now_secs(),
        extra_headers: EXTRA
            .iter()
            .filter_map(|n| header(h, n).map(|v| (n.to_string(), v.to_string())))
            .collect(),
    }
}

/// An upstream client error: a timeout, or a connection that could not be made or broke.
pub(super) fn map_err(e: ureq::Error) -> Error {
    match e {
        ureq::Error::Timeout(_) => Error::new(Kind::Timeout),
        ureq::Error::Io(e) if e.kind() == std::io::ErrorKind::TimedOut => Error::new(Kind::Timeout),
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

/// Why a 200/206 may not be stored, if it may not.
fn refuse_to_store(h: &HeaderMap) -> Option<&'static str> {
    let cc = CacheControl::parse(header(h, "cache-control"));
    freshness::not_storable(&cc, header(h, "vary"), false)
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
    let mut req = agent
        .get(url)
        .header("Host", host)
        .header(
            "User-Agent",
            concat!("gatecache/", env!("CARGO_PKG_VERSION")),
        )
        .header("Via", via);
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
    let (parts, body) = resp.into_parts();
    let h = &parts.headers;
    let content_length = header(h, "content-length").and_then(|v| v.trim().parse::<u64>().ok());
    if matches!(status, 200 | 206)
        && let Some(why) = refuse_to_store(h)
    {
        return Ok(Answer::Pass(why));
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
            Ok(Answer::Store(Fetched {
                meta: meta_from(&target.key, h, total),
                start: a,
                end: b + 1,
                body: body.into_reader(),
            }))
        }
        200 => {
            // Chunked or close-delimited: not cacheable by range.
            let Some(total) = content_length else {
                return Ok(Answer::Pass("no Content-Length"));
            };
            if let Some((ra, _)) = range
                && ra >= total
                && total > 0
            {
                return Err(Error::new(Kind::Unsatisfiable(Some(total))));
            }
            Ok(Answer::Store(Fetched {
                meta: meta_from(&target.key, h, total),
                start: 0,
                end: total,
                body: body.into_reader(),
            }))
        }
        304 if revalidate.is_some() => Ok(Answer::NotModified(meta_from(&target.key, h, 0))),
        416 => Err(Error::new(Kind::Unsatisfiable(
            header(h, "content-range")
                .and_then(|v| v.trim().strip_prefix("bytes */"))
                .and_then(|t| t.parse().ok()),
        ))),
        // 508: a loop further up; relayed like a 4xx (asking another parent would loop too).
        s if (400..500).contains(&s) || s == 508 => {
            let mut body = body;
            let bytes = body
                .with_config()
                .limit(64 * 1024)
                .read_to_vec()
                .unwrap_or_default();
            Err(Error::new(Kind::Status {
                status: s,
                body: bytes,
            }))
        }
        // RFC 9110 §15.4: the target moved. Following it would let an origin send us anywhere.
        s if (300..400).contains(&s) && s != 304 => Err(Error::new(Kind::Redirect(s))),
        s => Err(invalid(format!("upstream status {s}"))),
    }
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
