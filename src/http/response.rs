//! Response heads, written straight into a byte buffer.

use std::cell::RefCell;
use std::fmt::Write as _;
use std::time::{SystemTime, UNIX_EPOCH};

/// The reason phrase of the status line: RFC 9110 §15's for every status it defines (the
/// `http` crate's table; a relayed 301 reads `Moved Permanently`), `Unknown` for any other
/// (clients ignore it, RFC 9112 §4).
pub fn reason(status: u16) -> &'static str {
    match status {
        // RFC 9110 renamed these two; the crate keeps RFC 7231's names.
        413 => "Content Too Large",
        422 => "Unprocessable Content",
        s => ureq::http::StatusCode::from_u16(s)
            .ok()
            .and_then(|s| s.canonical_reason())
            .unwrap_or("Unknown"),
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
        let mut h = Head {
            buf: Vec::with_capacity(512),
        };
        h.buf.extend_from_slice(b"HTTP/1.1 ");
        push_decimal(&mut h.buf, status.into());
        h.buf.push(b' ');
        h.buf.extend_from_slice(reason(status).as_bytes());
        h.buf.extend_from_slice(b"\r\n");
        match date {
            Some(d) => h.field("Date", d),
            None => h.field("Date", &date_now()),
        };
        h
    }

    /// Appends the field `name: value`. Neither is checked: both must come from the cache or
    /// from validated input (a CR or LF in them would split the head).
    pub fn header(&mut self, name: &str, value: impl std::fmt::Display) -> &mut Head {
        let _ = write!(Writer(&mut self.buf), "{name}: {value}\r\n");
        self
    }

    /// [`Head::header`] for a text value, copied as it is: the formatting machinery costs
    /// several times the copy, for each of the dozen fields of every response.
    pub fn field(&mut self, name: &str, value: &str) -> &mut Head {
        self.buf.extend_from_slice(name.as_bytes());
        self.buf.extend_from_slice(b": ");
        self.buf.extend_from_slice(value.as_bytes());
        self.buf.extend_from_slice(b"\r\n");
        self
    }

    /// A field whose value is held as received ([`crate::http::fields::from_wire`]): its
    /// bytes go out as they came in.
    pub fn wire_field(&mut self, name: &str, value: &str) -> &mut Head {
        self.buf.extend_from_slice(name.as_bytes());
        self.buf.extend_from_slice(b": ");
        crate::http::fields::write_wire(value, &mut self.buf);
        self.buf.extend_from_slice(b"\r\n");
        self
    }

    /// [`Head::header`] for a number (`Content-Length`, `Age`), written in decimal.
    pub fn number(&mut self, name: &str, value: u64) -> &mut Head {
        self.buf.extend_from_slice(name.as_bytes());
        self.buf.extend_from_slice(b": ");
        push_decimal(&mut self.buf, value);
        self.buf.extend_from_slice(b"\r\n");
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
        for (k, v) in fields {
            // `Via` and `Cache-Status` are joined with ours below.
            if k.eq_ignore_ascii_case("via") || k.eq_ignore_ascii_case("cache-status") || skip(k) {
                continue;
            }
            server |= k.eq_ignore_ascii_case("server");
            self.wire_field(k, v);
        }
        if !server {
            self.field("Server", "gatecache");
        }
        let upstream_statuses: &[(String, String)] = if status.1 { fields } else { &[] };
        self.joined("Via", fields, "via", via).joined(
            "Cache-Status",
            upstream_statuses,
            "cache-status",
            status.0,
        )
    }

    /// Writes the field `name`: the values of the fields of `fields` named `from`, in order,
    /// then `last`, separated by `", "` (RFC 9110 §5.3), straight into the head (no string
    /// put together first).
    fn joined(
        &mut self,
        name: &str,
        fields: &[(String, String)],
        from: &str,
        last: &str,
    ) -> &mut Head {
        self.buf.extend_from_slice(name.as_bytes());
        self.buf.extend_from_slice(b": ");
        for (_, v) in fields.iter().filter(|(k, _)| k.eq_ignore_ascii_case(from)) {
            self.buf.extend_from_slice(v.as_bytes());
            self.buf.extend_from_slice(b", ");
        }
        self.buf.extend_from_slice(last.as_bytes());
        self.buf.extend_from_slice(b"\r\n");
        self
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

/// Appends `n` in decimal (what `Display` writes for it).
fn push_decimal(buf: &mut Vec<u8>, mut n: u64) {
    let mut digits = [0u8; 20];
    let mut i = digits.len();
    loop {
        i -= 1;
        digits[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    buf.extend_from_slice(&digits[i..]);
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
    fn reason_phrases_are_rfc_9110s() {
        assert_eq!(reason(301), "Moved Permanently");
        assert_eq!(reason(302), "Found");
        assert_eq!(reason(413), "Content Too Large");
        assert_eq!(reason(508), "Loop Detected");
        assert_eq!(reason(599), "Unknown");
    }

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
    fn direct_writers_write_what_formatting_wrote() {
        for n in [0, 7, 10, 99, 100, 65_535, u64::from(u32::MAX) + 1, u64::MAX] {
            let mut buf = Vec::new();
            push_decimal(&mut buf, n);
            assert_eq!(String::from_utf8(buf).unwrap(), n.to_string());
        }
        let (mut a, mut b) = (Head::dated(206, Some("d")), Head::dated(206, Some("d")));
        a.field("ETag", "\"x\"").number("Age", 12);
        b.header("ETag", "\"x\"").header("Age", 12);
        assert_eq!(a.finish(true), b.finish(true));
        let s = String::from_utf8(Head::dated(599, Some("d")).finish(true)).unwrap();
        assert_eq!(s, "HTTP/1.1 599 Unknown\r\nDate: d\r\n\r\n");
    }

    #[test]
    fn forwarded_fields_join_via_and_cache_status() {
        let fields: Vec<(String, String)> = [
            ("Via", "1.1 a"),
            ("X-A", "1"),
            ("cache-status", "up; hit"),
            ("VIA", "1.0 b"),
            ("Content-Type", "t"),
            ("Cache-Status", "up2; fwd=miss"),
        ]
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        let head = |fetched| {
            let mut h = Head::dated(200, Some("d"));
            h.forwarded_fields(&fields, "1.1 me", ("me; hit", fetched), |k| {
                k.eq_ignore_ascii_case("content-type")
            });
            String::from_utf8(h.finish(true)).unwrap()
        };
        assert_eq!(
            head(true),
            "HTTP/1.1 200 OK\r\nDate: d\r\nX-A: 1\r\nServer: gatecache\r\n\
             Via: 1.1 a, 1.0 b, 1.1 me\r\nCache-Status: up; hit, up2; fwd=miss, me; hit\r\n\r\n"
        );
        assert!(head(false).contains("\r\nCache-Status: me; hit\r\n"));
    }

    #[test]
    fn simple_response_body_matches_length() {
        let r = String::from_utf8(simple(403, "origin not allowed: x.test", true, &[])).unwrap();
        let (head, body) = r.split_once("\r\n\r\n").unwrap();
        assert!(head.contains(&format!("Content-Length: {}", body.len())));
        assert_eq!(body, "origin not allowed: x.test\n");
    }
}
