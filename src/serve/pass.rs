//! Relays a pass-through exchange to the client: the upstream's status and end-to-end headers,
//! then its body, with our own framing (the length when known, else chunked, or close for
//! HTTP/1.0). Nothing of it is stored.

use std::ops::Range;

use tokio::sync::mpsc;

use super::Services;
use super::respond::{Outcome, error_reply};
use super::transport::{Out, Transport};
use crate::error::{Error, Kind};
use crate::http::cache_status::{BypassReason, CacheStatus};
use crate::http::conditional;
use crate::http::range::{self, Resolved};
use crate::http::request::{Method, Request};
use crate::http::response::Head;
use crate::route::Target;
use crate::upstream::pass::{PassMsg, PassRequest};

/// The client's end-to-end fields (RFC 9110 §7.6): those the cache reads itself, then every
/// other one in the order sent.
fn forwarded(req: &Request) -> Vec<(String, String)> {
    let mut h = Vec::new();
    for (name, v) in [
        ("Range", &req.range),
        ("If-Range", &req.if_range),
        ("If-None-Match", &req.if_none_match),
        ("If-Modified-Since", &req.if_modified_since),
        ("Cache-Control", &req.cache_control),
        ("Authorization", &req.authorization),
        ("Content-Type", &req.content_type),
    ] {
        if let Some(v) = v {
            h.push((name.to_string(), v.clone()));
        }
    }
    h.extend(req.fields.iter().cloned());
    h
}

/// A request to pass through: the client's request, where it goes, its body, whether the
/// connection may stay open, and why it is not answered from the cache.
pub struct Passed<'a> {
    /// The client's request.
    pub req: &'a Request,
    /// Where it goes.
    pub target: Target,
    /// Its body (at most 1 MiB, read before routing).
    pub body: Vec<u8>,
    /// The connection may take another request after this one.
    pub keep: bool,
    /// Why it is passed (its `Cache-Status`).
    pub why: BypassReason,
}

/// Passes the request to the upstream and relays the answer. A successful unsafe method drops
/// what is stored for the target (RFC 9111 §4.4).
pub async fn relay<T: Transport>(t: &mut T, sh: &Services, p: Passed<'_>) -> Outcome {
    let reply = Reply {
        req: p.req,
        key: p.target.key.clone(),
        keep: p.keep,
        cs: CacheStatus::Bypass(p.why),
        part: None,
    };
    let mut rx = sh.upstream.pass(PassRequest {
        method: p.req.method(),
        target: p.target,
        headers: forwarded(p.req),
        body: p.body,
    });
    let first = rx.recv().await;
    send(t, sh, &reply, first, rx).await
}

/// Relays the response a fill got for this request and did not store (`rx`, from
/// [`crate::upstream::Fetch::relay`]), so the request costs one upstream request. The fill
/// asked for its own range: a 206 that is not the part the client asked for cannot answer it
/// (RFC 9110 §14.2); that one, or a fill that relayed nothing, is asked again as a
/// pass-through. A 206 that holds the whole representation answers a request for all of it
/// as a 200 (RFC 9111 §3.4).
pub async fn relay_fetched<T: Transport>(
    t: &mut T,
    sh: &Services,
    p: Passed<'_>,
    mut rx: mpsc::Receiver<PassMsg>,
) -> Outcome {
    let first = match rx.recv().await {
        Some(PassMsg::Head {
            status,
            headers,
            len,
        }) => match fit(p.req, status, headers, len) {
            Some(fitted) => fitted,
            None => return relay(t, sh, p).await,
        },
        None => return relay(t, sh, p).await,
        Some(failed) => (failed, None),
    };
    let reply = Reply {
        req: p.req,
        key: p.target.key.clone(),
        keep: p.keep,
        cs: CacheStatus::Bypass(p.why),
        part: first.1,
    };
    send(t, sh, &reply, Some(first.0), rx).await
}

/// The head to relay for `req` from a fill's answer, and the part of the answer's body that
/// answers it (`None`: all of it); `None` when that answer cannot be this request's (see
/// [`relay_fetched`]). The body the fill got holds bytes `have` of a representation of
/// `total` bytes: a client's single range within them is cut out of it as a 206 (RFC 9110
/// §14.2); a request for all of it takes a body that holds all of it as a 200.
fn fit(
    req: &Request,
    status: u16,
    mut headers: Vec<(String, String)>,
    len: Option<u64>,
) -> Option<(PassMsg, Option<Range<u64>>)> {
    let field = |name: &str| {
        headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    };
    let (have, total) = match (status, len) {
        (206, _) => {
            let (a, b, total) =
                crate::upstream::fetch::parse_content_range(field("content-range")?)?;
            (a..b + 1, total)
        }
        (200, Some(l)) => (0..l, l),
        // Another status, or a body of unknown length: relayed as it is (a 200 may answer
        // any range request whole, RFC 9110 §14.2).
        _ => {
            return Some((
                PassMsg::Head {
                    status,
                    headers,
                    len,
                },
                None,
            ));
        }
    };
    // The fill sent no If-Range: judge the client's against this answer (RFC 9110 §13.1.5);
    // one that fails asks for the whole representation.
    let range_allowed = conditional::if_range_allows(req, field("etag"), field("last-modified"));
    let client_range = req.range.as_deref().filter(|_| range_allowed);
    let asked = match client_range.and_then(crate::http::range::parse) {
        None => None,
        Some(specs) => match crate::http::range::resolve(&specs, total) {
            Resolved::Full => None,
            Resolved::Partial(r) if r.len() == 1 => Some(r[0].clone()),
            // Several ranges, or none satisfiable: a whole 200 answers it; a part cannot.
            _ if status == 200 => None,
            _ => return None,
        },
    };
    match asked {
        None if have == (0..total) => {
            headers.retain(|(k, _)| !k.eq_ignore_ascii_case("content-range"));
            Some((
                PassMsg::Head {
                    status: 200,
                    headers,
                    len: Some(total),
                },
                None,
            ))
        }
        Some(r) if have.start <= r.start && r.end <= have.end => {
            headers.retain(|(k, _)| !k.eq_ignore_ascii_case("content-range"));
            headers.push(("Content-Range".into(), range::content_range(&r, total)));
            let part = r.start - have.start..r.end - have.start;
            let head = PassMsg::Head {
                status: 206,
                headers,
                len: Some(r.end - r.start),
            };
            Some((head, Some(part)))
        }
        _ => None,
    }
}

/// Who a relayed response is for.
struct Reply<'a> {
    req: &'a Request,
    /// The cache key of the target (dropped after a successful unsafe method).
    key: String,
    keep: bool,
    cs: CacheStatus,
    /// The part of the relayed body to send (`None`: all of it).
    part: Option<Range<u64>>,
}

/// Sends a relayed response: `first` (its head, or a failure), then the rest from `rx`.
async fn send<T: Transport>(
    t: &mut T,
    sh: &Services,
    r: &Reply<'_>,
    first: Option<PassMsg>,
    mut rx: mpsc::Receiver<PassMsg>,
) -> Outcome {
    let (req, cs) = (r.req, r.cs);
    let (status, chunked, keep) = match first {
        Some(PassMsg::Head {
            status,
            headers,
            len,
        }) => {
            let chunked = len.is_none() && !req.http10 && !matches!(status, 204 | 304);
            // The origin's Date stands (RFC 9110 §6.6.1), with its other end-to-end fields.
            let date = headers
                .iter()
                .find(|(k, _)| k.eq_ignore_ascii_case("date"))
                .map(|(_, v)| v.as_str());
            let mut h = Head::dated(status, date);
            h.forwarded_fields(&headers, sh.upstream.via(), (cs.field_value(), true), |k| {
                k.eq_ignore_ascii_case("date")
            });
            match len {
                Some(l) => {
                    h.header("Content-Length", l);
                }
                None if chunked && req.method() != Method::Head => {
                    h.header("Transfer-Encoding", "chunked");
                }
                None => {}
            }
            // Without a length or chunking, the end of the body is the end of the connection
            // (no body follows the head of a HEAD, RFC 9110 §9.3.2).
            let head_only = req.method() == Method::Head;
            let keep =
                r.keep && (head_only || len.is_some() || chunked || matches!(status, 204 | 304));
            if !req.method().is_safe() && status < 400 && sh.cache.remove(&r.key) {
                log::info!("{}: invalidated by {}", r.key, req.method_name);
            }
            if t.write(Out::Bytes(h.finish(keep))).await.is_err() {
                return Outcome::new(status, false, cs);
            }
            if head_only {
                // The head is the whole answer (a fill's GET may have answered a HEAD).
                return Outcome::new(status, keep, cs);
            }
            (status, chunked, keep)
        }
        Some(PassMsg::Failed(e)) => return error_reply(t, &e, r.keep).await,
        _ => {
            let e = Error::with(Kind::Connect, "pass-through ended");
            return error_reply(t, &e, r.keep).await;
        }
    };
    let mut out = Outcome::new(status, keep, cs);
    relay_body(t, &mut rx, chunked, r.part.clone(), &mut out).await;
    out
}

/// Relays the body from `rx` (all of it, or its bytes `part`), chunked or not; a failure after
/// the head cuts the connection, never a short body that looks whole.
async fn relay_body<T: Transport>(
    t: &mut T,
    rx: &mut mpsc::Receiver<PassMsg>,
    chunked: bool,
    part: Option<Range<u64>>,
    out: &mut Outcome,
) {
    let mut pos = 0u64;
    loop {
        match rx.recv().await {
            Some(PassMsg::Data(d)) => {
                let at = pos;
                pos += d.len() as u64;
                let d = match &part {
                    None => d,
                    Some(p) if pos <= p.start => continue,
                    Some(p) => {
                        let from = p.start.saturating_sub(at) as usize;
                        let to = (p.end.min(pos) - at) as usize;
                        d[from..to].to_vec()
                    }
                };
                let n = d.len() as u64;
                let framed = if chunked {
                    let mut f = format!("{:x}\r\n", d.len()).into_bytes();
                    f.extend_from_slice(&d);
                    f.extend_from_slice(b"\r\n");
                    f
                } else {
                    d
                };
                if t.write(Out::Bytes(framed)).await.is_err() {
                    out.keep_alive = false;
                    return;
                }
                out.bytes += n;
                if part.as_ref().is_some_and(|p| pos >= p.end) {
                    // The part is sent; the rest of the upstream body is not needed.
                    return;
                }
            }
            Some(PassMsg::End) => {
                if chunked && t.write(Out::Bytes(b"0\r\n\r\n".to_vec())).await.is_err() {
                    out.keep_alive = false;
                }
                return;
            }
            _ => {
                log::warn!("pass-through cut after {} bytes", out.bytes);
                out.keep_alive = false;
                return;
            }
        }
    }
}
