//! Relays a pass-through exchange to the client: the upstream's status and end-to-end headers,
//! then its body, with our own framing (the length when known, else chunked, or close for
//! HTTP/1.0). Nothing of it is stored.

use super::Services;
use super::respond::{Outcome, error_reply};
use super::transport::{Out, Transport};
use crate::error::{Error, Kind};
use crate::http::cache_status::{BypassReason, CacheStatus};
use crate::http::request::Request;
use crate::http::response::Head;
use crate::route::Target;
use crate::upstream::pass::{PassMsg, PassRequest};

/// The client's end-to-end headers worth forwarding.
fn forwarded(req: &Request) -> Vec<(&'static str, String)> {
    let mut h = Vec::new();
    for (name, v) in [
        ("Range", &req.range),
        ("If-Range", &req.if_range),
        ("If-None-Match", &req.if_none_match),
        ("If-Modified-Since", &req.if_modified_since),
        ("Cache-Control", &req.cache_control),
        ("User-Agent", &req.user_agent),
        ("Authorization", &req.authorization),
        ("Content-Type", &req.content_type),
    ] {
        if let Some(v) = v {
            h.push((name, v.clone()));
        }
    }
    h
}

/// Passes `req` (with `body`) to the upstream, for reason `why`, and relays the answer. A
/// successful unsafe method drops what is stored for the target (RFC 9111 §4.4).
pub async fn relay<T: Transport>(
    t: &mut T,
    sh: &Services,
    req: &Request,
    target: Target,
    body: Vec<u8>,
    keep: bool,
    why: BypassReason,
) -> Outcome {
    let cs = CacheStatus::Bypass(why);
    let key = target.key.clone();
    let mut rx = sh.upstream.pass(PassRequest {
        method: req.method(),
        target,
        headers: forwarded(req),
        body,
    });
    let (status, chunked, keep) = match rx.recv().await {
        Some(PassMsg::Head {
            status,
            headers,
            len,
        }) => {
            let chunked = len.is_none() && !req.http10 && !matches!(status, 204 | 304);
            let mut h = Head::new(status);
            h.header("Server", "gatecache")
                .header("Cache-Status", cs.field_value());
            for (k, v) in &headers {
                h.header(k, v);
            }
            match len {
                Some(l) => {
                    h.header("Content-Length", l);
                }
                None if chunked => {
                    h.header("Transfer-Encoding", "chunked");
                }
                None => {}
            }
            // Without a length or chunking, the end of the body is the end of the connection.
            let keep = keep && (len.is_some() || chunked || matches!(status, 204 | 304));
            if !req.method().is_safe() && status < 400 && sh.cache.remove(&key) {
                log::info!("{key}: invalidated by {}", req.method_name);
            }
            if t.write(Out::Bytes(h.finish(keep))).await.is_err() {
                return Outcome::new(status, false, cs);
            }
            (status, chunked, keep)
        }
        Some(PassMsg::Failed(e)) => return error_reply(t, &e, keep).await,
        _ => {
            let e = Error::with(Kind::Connect, "pass-through ended");
            return error_reply(t, &e, keep).await;
        }
    };
    let mut out = Outcome::new(status, keep, cs);
    loop {
        match rx.recv().await {
            Some(PassMsg::Data(d)) => {
                out.bytes += d.len() as u64;
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
                    return out;
                }
            }
            Some(PassMsg::End) => {
                if chunked && t.write(Out::Bytes(b"0\r\n\r\n".to_vec())).await.is_err() {
                    out.keep_alive = false;
                }
                return out;
            }
            // A failure after the head: cut the connection, never a short body that looks whole.
            _ => {
                log::warn!("pass-through cut after {} bytes", out.bytes);
                out.keep_alive = false;
                return out;
            }
        }
    }
}
