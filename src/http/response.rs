//! Response heads, written straight into a byte buffer.

use std::cell::RefCell;
use std::fmt::Write as _;
use std::time::{SystemTime, UNIX_EPOCH};

/// The reason phrase of the status line (RFC 9110 §15) for the codes gatecache sends;
/// `Unknown` for any other (clients ignore it, RFC 9112 §4).
pub fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        204 => "No Content",
        206 => "Partial Content",
        304 => "Not Modified",
        400 => "Bad Request",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        412 => "Precondition Failed",
        413 => "Content Too Large",
        414 => "URI Too Long",
        416 => "Range Not Satisfiable",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        504 => "Gateway Timeout",
        505 => "HTTP Version Not Supported",
        508 => "Loop Detected",
        _ => "Unknown",
    }
}

thread_local! {
    static DATE: RefCell<(u64, String)> = const { RefCell::new((u64::MAX, String::new())) };
}

/// The current `Date` value as an IMF-fixdate (RFC 9110 §5.6.7), formatted once per second
/// per thread.
pub fn date_now() -> String {
    let now = SystemTime::now();
    let secs = now.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    DATE.with(|d| {
        let mut d = d.borrow_mut();
        if d.0 != secs {
            *d = (secs, httpdate::fmt_http_date(now));
        }
        d.1.clone()
    })
}

/// A response head being built: the status line and `Date` first, then fields in the order
/// given, then [`Head::finish`].
pub struct Head {
    buf: Vec<u8>,
}

impl Head {
    /// A head with `status` and the current `Date` (RFC 9110 §6.6.1).
    pub fn new(status: u16) -> Head {
        Head::dated(status, None)
    }

    /// A head with a given `Date` (a stored response keeps its origin's; RFC 9111 §4), or
    /// the current one.
    pub fn dated(status: u16, date: Option<&str>) -> Head {
        let mut buf = Vec::with_capacity(512);
        let now;
        let date = match date {
            Some(d) => d,
            None => {
                now = date_now();
                &now
            }
        };
        let _ = write!(
            Writer(&mut buf),
            "HTTP/1.1 {status} {}\r\nDate: {date}\r\n",
            reason(status)
        );
        Head { buf }
    }

    /// Appends the field `name: value`. Neither is checked: both must come from the cache or
    /// from validated input (a CR or LF in them would split the head).
    pub fn header(&mut self, name: &str, value: impl std::fmt::Display) -> &mut Head {
        let _ = write!(Writer(&mut self.buf), "{name}: {value}\r\n");
        self
    }

    /// Writes the fields of a response the cache forwards (stored or relayed), those `skip`
    /// does not exclude, then `Server: gatecache` if they carry no `Server` (the origin's
    /// stands, RFC 9110 §10.2.4), `Via` with this node's entry `via` after the forwarded ones
    /// (RFC 9110 §7.6.3), and `Cache-Status` with this cache's member `status.0` last, after
    /// the upstream caches' members when `status.1` says the response came from upstream just
    /// now (RFC 9211 §2: the first member is the cache closest to the origin; a response
    /// served from storage is this cache's alone).
    pub fn forwarded_fields(
        &mut self,
        fields: &[(String, String)],
        via: &str,
        status: (&str, bool),
        skip: impl Fn(&str) -> bool,
    ) -> &mut Head {
        let mut server = false;
        let (mut vias, mut statuses) = (String::new(), String::new());
        for (k, v) in fields {
            if k.eq_ignore_ascii_case("via") {
                vias.push_str(v);
                vias.push_str(", ");
                continue;
            }
            if k.eq_ignore_ascii_case("cache-status") {
                if status.1 {
                    statuses.push_str(v);
                    statuses.push_str(", ");
                }
                continue;
            }
            if skip(k) {
                continue;
            }
            server |= k.eq_ignore_ascii_case("server");
            self.header(k, v);
        }
        if !server {
            self.header("Server", "gatecache");
        }
        self.header("Via", format_args!("{vias}{via}"))
            .header("Cache-Status", format_args!("{statuses}{}", status.0))
    }

    /// Ends the head with the blank line and returns its bytes; without `keep_alive`, a
    /// `Connection: close` first (RFC 9112 §9.6).
    pub fn finish(&mut self, keep_alive: bool) -> Vec<u8> {
        if !keep_alive {
            self.buf.extend_from_slice(b"Connection: close\r\n");
        }
        self.buf.extend_from_slice(b"\r\n");
        std::mem::take(&mut self.buf)
    }
}

struct Writer<'a>(&'a mut Vec<u8>);

impl std::fmt::Write for Writer<'_> {
    fn write_str(&mut self, s: &str) -> std::fmt::Result {
        self.0.extend_from_slice(s.as_bytes());
        Ok(())
    }
}

/// A complete short response with a one-line text body (`body` and a newline; errors, 403,
/// 405, ...) and the `extra` fields (the client port's answers add their `Cache-Status`).
pub fn simple(status: u16, body: &str, keep_alive: bool, extra: &[(&str, &str)]) -> Vec<u8> {
    let mut h = Head::new(status);
    h.header("Server", "gatecache")
        .header("Content-Type", "text/plain; charset=utf-8")
        .header("Content-Length", body.len() + 1);
    for (k, v) in extra {
        h.header(k, v);
    }
    let mut out = h.finish(keep_alive);
    out.extend_from_slice(body.as_bytes());
    out.push(b'\n');
    out
}

/// A whole response with a body of type `ctype`, `Cache-Control: no-store`, the `extra`
/// fields, connection closed (the admin listener's answers, the summary).
pub fn reply(status: u16, ctype: &str, body: &str, extra: &[(&str, &str)]) -> Vec<u8> {
    let mut h = Head::new(status);
    h.header("Server", "gatecache")
        .header("Content-Type", ctype)
        .header("Content-Length", body.len())
        .header("Cache-Control", "no-store");
    for (k, v) in extra {
        h.header(k, v);
    }
    let mut out = h.finish(false);
    out.extend_from_slice(body.as_bytes());
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn head_has_status_date_and_framing() {
        let mut h = Head::new(206);
        h.header("Content-Length", 10);
        let s = String::from_utf8(h.finish(false)).unwrap();
        assert!(
            s.starts_with("HTTP/1.1 206 Partial Content\r\nDate: "),
            "{s}"
        );
        assert!(s.contains("\r\nContent-Length: 10\r\n"));
        assert!(s.ends_with("Connection: close\r\n\r\n"));
        let date = s.lines().nth(1).unwrap().trim_start_matches("Date: ");
        assert!(httpdate::parse_http_date(date).is_ok(), "{date}");
    }

    #[test]
    fn simple_response_body_matches_length() {
        let r = String::from_utf8(simple(403, "origin not allowed: x.test", true, &[])).unwrap();
        let (head, body) = r.split_once("\r\n\r\n").unwrap();
        assert!(head.contains(&format!("Content-Length: {}", body.len())));
        assert_eq!(body, "origin not allowed: x.test\n");
    }
}
