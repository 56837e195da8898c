//! Request heads: httparse for the syntax, then our own framing and limit rules.
//!
//! Framing is strict on purpose (request smuggling): `Transfer-Encoding` in a request, a repeated
//! or malformed `Content-Length`, obs-fold and a missing or repeated `Host` on HTTP/1.1 are all
//! 400, and the connection is closed after the answer.

/// Limits on what a client may send in a request head (a server sets its own: RFC 9110 §5.4,
/// RFC 9112 §3).
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Bytes of the whole head, request line to the blank line (default 16 KiB); over it: 431
    /// (414 if the request line has not ended).
    pub max_head: usize,
    /// Header fields in one head (default 64); over it: 431.
    pub max_headers: usize,
    /// Bytes of the request target (default 8 KiB); over it: 414.
    pub max_target: usize,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            max_head: 16 * 1024,
            max_headers: 64,
            max_target: 8 * 1024,
        }
    }
}

/// A request method (RFC 9110 §9). Methods the cache does not serve or relay are `Other`
/// (answered 405); the request keeps its name for the log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    /// `GET` (RFC 9110 §9.3.1): served from the cache.
    Get,
    /// `HEAD` (RFC 9110 §9.3.2): served from the cache, without a body.
    Head,
    /// `OPTIONS` (RFC 9110 §9.3.7): passed through.
    Options,
    /// `POST` (RFC 9110 §9.3.3): passed through.
    Post,
    /// `PUT` (RFC 9110 §9.3.4): passed through.
    Put,
    /// `DELETE` (RFC 9110 §9.3.5): passed through.
    Delete,
    /// `PATCH` (RFC 5789): passed through.
    Patch,
    /// Any other token (`TRACE`, `CONNECT`, extensions, a lower-case `get`): answered 405.
    Other,
}

impl Method {
    /// The method of a request line's token (case-sensitive, RFC 9110 §9.1).
    pub fn from_token(t: &str) -> Method {
        match t {
            "GET" => Method::Get,
            "HEAD" => Method::Head,
            "OPTIONS" => Method::Options,
            "POST" => Method::Post,
            "PUT" => Method::Put,
            "DELETE" => Method::Delete,
            "PATCH" => Method::Patch,
            _ => Method::Other,
        }
    }

    /// The token, for a known method; `None` for `Other` (see [`Request::method_name`]).
    pub fn as_str(self) -> Option<&'static str> {
        Some(match self {
            Method::Get => "GET",
            Method::Head => "HEAD",
            Method::Options => "OPTIONS",
            Method::Post => "POST",
            Method::Put => "PUT",
            Method::Delete => "DELETE",
            Method::Patch => "PATCH",
            Method::Other => return None,
        })
    }

    /// Read-only by definition (RFC 9110 §9.2.1): GET, HEAD, OPTIONS (TRACE is never served).
    pub fn is_safe(self) -> bool {
        matches!(self, Method::Get | Method::Head | Method::Options)
    }

    /// Repeating it has the effect of sending it once (RFC 9110 §9.2.2): the safe methods,
    /// PUT and DELETE.
    pub fn is_idempotent(self) -> bool {
        self.is_safe() || matches!(self, Method::Put | Method::Delete)
    }

    /// Served from the cache (GET and HEAD); every other known method is passed through.
    pub fn is_cacheable(self) -> bool {
        matches!(self, Method::Get | Method::Head)
    }

    /// Passed through to the upstream, never stored: OPTIONS and the unsafe methods, whose
    /// success invalidates what is stored for the target (RFC 9111 §4.4).
    pub fn is_passed(self) -> bool {
        !self.is_cacheable() && self != Method::Other
    }
}

/// Why a head was refused; each maps to one status code ([`HeadError::status`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HeadError {
    /// 400 (RFC 9112 §3, §6.3): malformed syntax or framing; the text names what.
    Bad(&'static str),
    /// 431 (RFC 6585 §5): the head is over [`Limits::max_head`].
    HeadTooLarge,
    /// 431 (RFC 6585 §5): more fields than [`Limits::max_headers`].
    TooManyHeaders,
    /// 414 (RFC 9110 §15.5.15): the target is over [`Limits::max_target`], or the request line
    /// has no end within [`Limits::max_head`].
    UriTooLong,
    /// 505 (RFC 9110 §15.6.6): a well-formed `HTTP/x.y` other than 1.0 and 1.1.
    Version,
}

impl HeadError {
    /// The status code of the answer: 400, 414, 431 or 505.
    pub fn status(&self) -> u16 {
        match self {
            HeadError::Bad(_) => 400,
            HeadError::HeadTooLarge | HeadError::TooManyHeaders => 431,
            HeadError::UriTooLong => 414,
            HeadError::Version => 505,
        }
    }

    /// The one-line body of the answer, naming what was wrong.
    pub fn reason(&self) -> &'static str {
        match self {
            HeadError::Bad(why) => why,
            HeadError::HeadTooLarge => "request head too large",
            HeadError::TooManyHeaders => "too many header fields",
            HeadError::UriTooLong => "request target too long",
            HeadError::Version => "HTTP version not supported",
        }
    }
}

/// The parts of a request head that gatecache acts on.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Request {
    /// The method; `None` only in a `Request` not made by [`parse`] (read it with
    /// [`Request::method`]).
    pub method: Option<Method>,
    /// The method token as sent (the log's name for an [`Method::Other`]).
    pub method_name: String,
    /// The request target as sent (RFC 9112 §3.2): origin-form `/path?query` or absolute-form
    /// `http://host/path`; not yet checked or normalised (see [`crate::http::path`]).
    pub target: String,
    /// HTTP/1.0 (no `Host` required, connection closed unless `keep-alive`).
    pub http10: bool,
    /// The `Host` value (RFC 9110 §7.2), unparsed; never repeated (refused as 400).
    pub host: Option<String>,
    /// The **last** `Range` header: real Delivery Optimization clients send several, oldest first.
    pub range: Option<String>,
    /// `If-Range` (RFC 9110 §13.1.5): an entity-tag or an HTTP-date.
    pub if_range: Option<String>,
    /// `If-None-Match` (RFC 9110 §13.1.2), repeated fields joined with `", "`.
    pub if_none_match: Option<String>,
    /// `If-Modified-Since` (RFC 9110 §13.1.3), an HTTP-date as sent.
    pub if_modified_since: Option<String>,
    /// `Cache-Control` (RFC 9111 §5.2.1), repeated fields joined with `", "`.
    pub cache_control: Option<String>,
    /// `Pragma: no-cache` (HTTP/1.0 clients).
    pub pragma_no_cache: bool,
    /// `Via` (RFC 9110 §7.6.3), repeated fields joined with `", "`: the nodes already passed.
    pub via: Option<String>,
    /// `User-Agent`, forwarded on a pass-through.
    pub user_agent: Option<String>,
    /// Present: the response is for this client alone (never stored or served from the cache).
    pub authorization: Option<String>,
    /// `Content-Type` of a request body, forwarded with it on a pass-through.
    pub content_type: Option<String>,
    /// The connection stays open after the answer (RFC 9112 §9.3).
    pub keep_alive: bool,
    /// Bytes of body that follow the head (to be skipped).
    pub body_len: u64,
    /// `Expect: 100-continue` (RFC 9110 §10.1.1): the client waits for a `100 Continue`
    /// before it sends the body.
    pub expect_continue: bool,
    /// Every other end-to-end field, in order, names as sent (RFC 9110 §7.6.1: no hop-by-hop
    /// field, none named in `Connection`; not `Expect`, which the cache answers itself):
    /// forwarded upstream on a miss and a pass-through (`User-Agent`, `X-Request-Id`, `Accept`,
    /// ...). Shared, so that a routed target holds them without a copy of each string.
    pub fields: std::sync::Arc<[(String, String)]>,
}

impl Request {
    /// The method, [`Method::Other`] when unset.
    pub fn method(&self) -> Method {
        self.method.unwrap_or(Method::Other)
    }

    /// Has this request already passed through the node `name` (a `Via` entry received by it)?
    pub fn via_has(&self, name: &str) -> bool {
        self.via.as_deref().is_some_and(|via| {
            via.split(',').any(|hop| {
                // "1.1 name (comment)": the second token is the receiving node.
                hop.split_whitespace().nth(1) == Some(name)
            })
        })
    }
}

fn join(slot: &mut Option<String>, v: &str) {
    match slot {
        Some(s) => {
            s.push_str(", ");
            s.push_str(v);
        }
        None => *slot = Some(v.to_string()),
    }
}

/// httparse reads whatever follows the second space as the version, so a space inside the
/// target (`GET /a b HTTP/1.1`) reaches it as a bad version. Only a well-formed request line
/// naming another `HTTP/x.y` is a 505 (RFC 9110 §15.6.6); anything else is a 400 (RFC 9112 §3).
fn version_error(buf: &[u8]) -> HeadError {
    let line = buf.split(|&b| b == b'\n').next().unwrap_or_default();
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    let parts: Vec<&[u8]> = line.split(|&b| b == b' ').collect();
    match parts.as_slice() {
        [_, _, v]
            if v.len() == 8
                && v.starts_with(b"HTTP/")
                && v[5].is_ascii_digit()
                && v[6] == b'.'
                && v[7].is_ascii_digit() =>
        {
            HeadError::Version
        }
        _ => HeadError::Bad("malformed request line"),
    }
}

/// Parses one request head from the front of `buf` (RFC 9112 §2-3, §5-6).
///
/// `Ok(None)`: the head is incomplete, read more. `Ok(Some((req, n)))`: the head took the first
/// `n` bytes of `buf` (the body, `req.body_len` bytes, follows). Errors: [`HeadError::UriTooLong`]
/// (target over `max_target`, or no line end within `max_head`), [`HeadError::HeadTooLarge`],
/// [`HeadError::TooManyHeaders`], [`HeadError::Version`] (505) and [`HeadError::Bad`] (400) for
/// malformed syntax or framing (see the module).
pub fn parse(buf: &[u8], limits: &Limits) -> Result<Option<(Request, usize)>, HeadError> {
    let mut headers = vec![httparse::EMPTY_HEADER; limits.max_headers];
    let mut raw = httparse::Request::new(&mut headers);
    let Some(n) = head_len(raw.parse(buf), buf, limits)? else {
        return Ok(None);
    };
    if n > limits.max_head {
        return Err(HeadError::HeadTooLarge);
    }
    let target = raw.path.unwrap_or_default();
    if target.len() > limits.max_target {
        return Err(HeadError::UriTooLong);
    }
    let method_name = raw.method.unwrap_or_default();
    let mut req = Request {
        method: Some(Method::from_token(method_name)),
        method_name: method_name.to_string(),
        target: target.to_string(),
        http10: raw.version == Some(0),
        ..Request::default()
    };
    let mut framing = Framing::default();
    for h in raw.headers.iter() {
        let value = std::str::from_utf8(h.value)
            .map_err(|_| HeadError::Bad("header value is not UTF-8"))?
            .trim_matches([' ', '\t']);
        framing.field(&mut req, h.name, value)?;
    }
    framing.finish(&mut req)?;
    Ok(Some((req, n)))
}

/// httparse's verdict as ours: `Some(n)` for a complete head of `n` bytes, `None` to read more
/// (unless `buf` already holds `max_head` bytes: 431 once the request line ended, else 414).
fn head_len(
    parsed: httparse::Result<usize>,
    buf: &[u8],
    limits: &Limits,
) -> Result<Option<usize>, HeadError> {
    match parsed {
        Ok(httparse::Status::Complete(n)) => Ok(Some(n)),
        Ok(httparse::Status::Partial) => {
            if buf.len() >= limits.max_head {
                let line_done = buf.contains(&b'\n');
                return Err(if line_done {
                    HeadError::HeadTooLarge
                } else {
                    HeadError::UriTooLong
                });
            }
            Ok(None)
        }
        Err(httparse::Error::TooManyHeaders) => Err(HeadError::TooManyHeaders),
        Err(httparse::Error::Version) => Err(version_error(buf)),
        Err(httparse::Error::HeaderName) | Err(httparse::Error::HeaderValue) => {
            Err(HeadError::Bad("malformed header field"))
        }
        Err(_) => Err(HeadError::Bad("malformed request line")),
    }
}

/// What the fields say about the message's framing and the connection (RFC 9112 §6, §9.3),
/// gathered over the whole head and judged once it is read.
#[derive(Default)]
struct Framing {
    hosts: usize,
    content_length: Option<u64>,
    conn_close: bool,
    conn_keep_alive: bool,
    /// Names listed in `Connection` (hop-by-hop, RFC 9110 §7.6.1), lower-cased.
    conn_options: Vec<String>,
    /// The end-to-end fields to forward, gathered until the head is judged.
    fields: Vec<(String, String)>,
}

impl Framing {
    /// Takes one field: a framing field here, any other into `req`.
    fn field(&mut self, req: &mut Request, name: &str, value: &str) -> Result<(), HeadError> {
        if name.eq_ignore_ascii_case("host") {
            self.hosts += 1;
            req.host = Some(value.to_string());
        } else if name.eq_ignore_ascii_case("content-length") {
            self.content_length(value)?;
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            return Err(HeadError::Bad(
                "request bodies with Transfer-Encoding are refused",
            ));
        } else if name.eq_ignore_ascii_case("connection") {
            for t in value.split(',') {
                let t = t.trim();
                self.conn_close |= t.eq_ignore_ascii_case("close");
                self.conn_keep_alive |= t.eq_ignore_ascii_case("keep-alive");
                if !t.is_empty() {
                    self.conn_options.push(t.to_ascii_lowercase());
                }
            }
        } else if keep_field(req, name, value) {
            self.fields.push((name.to_string(), value.to_string()));
        }
        Ok(())
    }

    /// One `Content-Length`: digits only, and only once (RFC 9112 §6.3 item 5).
    fn content_length(&mut self, value: &str) -> Result<(), HeadError> {
        if self.content_length.is_some() {
            return Err(HeadError::Bad("repeated Content-Length"));
        }
        if value.is_empty() || !value.bytes().all(|b| b.is_ascii_digit()) {
            return Err(HeadError::Bad("malformed Content-Length"));
        }
        self.content_length = Some(
            value
                .parse()
                .map_err(|_| HeadError::Bad("malformed Content-Length"))?,
        );
        Ok(())
    }

    /// Judges the head as a whole: exactly one `Host` on HTTP/1.1 (RFC 9112 §3.2), at most one
    /// on HTTP/1.0; then sets the body length and whether the connection stays open
    /// (RFC 9112 §9.3: HTTP/1.0 only with `keep-alive`).
    fn finish(self, req: &mut Request) -> Result<(), HeadError> {
        if !req.http10 && self.hosts != 1 {
            return Err(HeadError::Bad(if self.hosts == 0 {
                "missing Host"
            } else {
                "repeated Host"
            }));
        }
        if self.hosts > 1 {
            return Err(HeadError::Bad("repeated Host"));
        }
        req.body_len = self.content_length.unwrap_or(0);
        let options = &self.conn_options;
        let mut fields = self.fields;
        fields.retain(|(k, _)| !options.iter().any(|o| k.eq_ignore_ascii_case(o)));
        if !fields.is_empty() {
            req.fields = fields.into();
        }
        req.keep_alive = if req.http10 {
            self.conn_keep_alive && !self.conn_close
        } else {
            !self.conn_close
        };
        Ok(())
    }
}

/// Keeps a field the cache acts on in `req`; says whether it is also one to forward (an
/// end-to-end field the cache does not compute itself: `User-Agent` and any it does not know).
fn keep_field(req: &mut Request, name: &str, value: &str) -> bool {
    if name.eq_ignore_ascii_case("range") {
        req.range = Some(value.to_string());
    } else if name.eq_ignore_ascii_case("if-range") {
        req.if_range = Some(value.to_string());
    } else if name.eq_ignore_ascii_case("if-none-match") {
        join(&mut req.if_none_match, value);
    } else if name.eq_ignore_ascii_case("if-modified-since") {
        req.if_modified_since = Some(value.to_string());
    } else if name.eq_ignore_ascii_case("cache-control") {
        join(&mut req.cache_control, value);
    } else if name.eq_ignore_ascii_case("pragma") {
        req.pragma_no_cache |= value
            .split(',')
            .any(|t| t.trim().eq_ignore_ascii_case("no-cache"));
    } else if name.eq_ignore_ascii_case("via") {
        join(&mut req.via, value);
    } else if name.eq_ignore_ascii_case("user-agent") {
        req.user_agent = Some(value.to_string());
        return true;
    } else if name.eq_ignore_ascii_case("authorization") {
        req.authorization = Some(value.to_string());
    } else if name.eq_ignore_ascii_case("content-type") {
        req.content_type = Some(value.to_string());
    } else if name.eq_ignore_ascii_case("expect") {
        // Answered here (a 100 before the body is read), never forwarded.
        req.expect_continue |= value.eq_ignore_ascii_case("100-continue");
    } else {
        return !crate::http::fields::HOP_BY_HOP
            .iter()
            .any(|h| name.eq_ignore_ascii_case(h));
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> Result<Option<(Request, usize)>, HeadError> {
        parse(s.as_bytes(), &Limits::default())
    }

    fn ok(s: &str) -> Request {
        p(s).unwrap().unwrap().0
    }

    #[test]
    fn do_client_request_with_several_ranges_keeps_the_last() {
        let r = ok(
            "GET /mscomtest/wuidt.gif?cacheHostOrigin=au.download.windowsupdate.com HTTP/1.1\r\n\
                    Host: cache.example.org\r\nRange: bytes=0-99\r\nUser-Agent: Microsoft-Delivery-Optimization-Lite/10.0.0.1\r\n\
                    Range: bytes=100-199\r\n\r\n",
        );
        assert_eq!(r.method(), Method::Get);
        assert_eq!(r.range.as_deref(), Some("bytes=100-199"));
        assert!(r.keep_alive);
        assert_eq!(
            r.user_agent.as_deref(),
            Some("Microsoft-Delivery-Optimization-Lite/10.0.0.1")
        );
    }

    #[test]
    fn incomplete_head_asks_for_more() {
        assert_eq!(p("GET / HTTP/1.1\r\nHost: a\r\n"), Ok(None));
    }

    #[test]
    fn keep_alive_rules() {
        assert!(!ok("GET / HTTP/1.0\r\n\r\n").keep_alive);
        assert!(ok("GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n").keep_alive);
        assert!(!ok("GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n").keep_alive);
        assert!(!ok("GET / HTTP/1.1\r\nHost: a\r\nConnection: foo, Close\r\n\r\n").keep_alive);
    }

    #[test]
    fn smuggling_vectors_are_refused() {
        for head in [
            "GET / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n",
            "GET / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n",
            "GET / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nContent-Length: 5\r\n\r\n",
            "GET / HTTP/1.1\r\nHost: a\r\nContent-Length: 5, 6\r\n\r\n",
            "GET / HTTP/1.1\r\nHost: a\r\nContent-Length: -1\r\n\r\n",
            "GET / HTTP/1.1\r\nHost: a\r\nContent-Length: +5\r\n\r\n",
            "GET / HTTP/1.1\r\nHost: a\r\nX-A: b\r\n  folded\r\n\r\n",
            "GET / HTTP/1.1\r\nHost : a\r\n\r\n",
            "GET / HTTP/1.1\r\n\r\n",
            "GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
            "GET  / HTTP/1.1\r\nHost: a\r\n\r\n",
            "GET / HTTP/1.1 extra\r\nHost: a\r\n\r\n",
            // A space inside the target is a malformed line, not another version.
            "GET /x?cacheHostOrigin=127.0.0.1:9 .example.org HTTP/1.1\r\nHost: a\r\n\r\n",
            "GET http://a b/x HTTP/1.1\r\nHost: a\r\n\r\n",
        ] {
            let e = p(head).unwrap_err();
            assert_eq!(e.status(), 400, "{head:?}: {e:?}");
        }
    }

    #[test]
    fn limits_map_to_their_status() {
        let l = Limits::default();
        let long = format!(
            "GET /{} HTTP/1.1\r\nHost: a\r\n\r\n",
            "a".repeat(l.max_target)
        );
        assert_eq!(p(&long).unwrap_err(), HeadError::UriTooLong);
        let endless_line = format!("GET /{}", "a".repeat(l.max_head));
        assert_eq!(p(&endless_line).unwrap_err(), HeadError::UriTooLong);
        let many: String = (0..l.max_headers + 1)
            .map(|i| format!("X-{i}: v\r\n"))
            .collect();
        let h = format!("GET / HTTP/1.1\r\nHost: a\r\n{many}\r\n");
        assert_eq!(p(&h).unwrap_err(), HeadError::TooManyHeaders);
        let big = format!(
            "GET / HTTP/1.1\r\nHost: a\r\nX-Big: {}\r\n\r\n",
            "b".repeat(l.max_head)
        );
        assert_eq!(p(&big).unwrap_err(), HeadError::HeadTooLarge);
        assert_eq!(p("GET / HTTP/2.0\r\n\r\n").unwrap_err().status(), 505);
    }

    #[test]
    fn body_length_and_conditionals_are_kept() {
        let r = ok(
            "GET /x HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nIf-None-Match: \"a\"\r\n\
                    If-None-Match: \"b\"\r\nIf-Modified-Since: Wed, 21 Oct 2015 07:28:00 GMT\r\n\
                    If-Range: \"a\"\r\nVia: 1.1 gw1\r\n\r\n",
        );
        assert_eq!(r.body_len, 3);
        assert_eq!(r.if_none_match.as_deref(), Some("\"a\", \"b\""));
        assert_eq!(r.if_range.as_deref(), Some("\"a\""));
        assert_eq!(r.via.as_deref(), Some("1.1 gw1"));
    }

    #[test]
    fn via_names_the_nodes_passed() {
        let r =
            ok("GET / HTTP/1.1\r\nHost: a\r\nVia: 1.1 gw1:80, 1.1 gw2:8080 (gatecache)\r\n\r\n");
        assert!(r.via_has("gw1:80"));
        assert!(r.via_has("gw2:8080"));
        assert!(!r.via_has("gw2"));
        assert!(!ok("GET / HTTP/1.1\r\nHost: a\r\n\r\n").via_has("gw1:80"));
    }

    #[test]
    fn absolute_form_and_other_methods() {
        let r = ok(
            "GET http://mirror.example.org/debian/dists/x HTTP/1.1\r\nHost: mirror.example.org\r\n\r\n",
        );
        assert_eq!(r.target, "http://mirror.example.org/debian/dists/x");
        let r = ok("DELETE / HTTP/1.1\r\nHost: a\r\n\r\n");
        assert_eq!(r.method(), Method::Delete);
        assert_eq!(r.method_name, "DELETE");
    }

    #[test]
    fn method_properties_rfc9110_9_2() {
        use Method::*;
        // (method, safe, idempotent, cacheable, passed)
        for (m, safe, idem, cache, pass) in [
            (Get, true, true, true, false),
            (Head, true, true, true, false),
            (Options, true, true, false, true),
            (Post, false, false, false, true),
            (Put, false, true, false, true),
            (Delete, false, true, false, true),
            (Patch, false, false, false, true),
            (Other, false, false, false, false),
        ] {
            assert_eq!(
                (
                    m.is_safe(),
                    m.is_idempotent(),
                    m.is_cacheable(),
                    m.is_passed()
                ),
                (safe, idem, cache, pass),
                "{m:?}"
            );
            if m != Other {
                assert_eq!(Method::from_token(m.as_str().unwrap()), m);
            }
        }
        assert_eq!(
            Method::from_token("get"),
            Other,
            "methods are case-sensitive"
        );
    }
}
