//! Never an open proxy (issue 10), against the real binary: each way a LAN client can name an
//! origin (`cacheHostOrigin`, an absolute-form target, `Host`), other ports, redirects and
//! route dot-segments; every attack is answered (status and a body naming why) and no
//! connection reaches a canary listener on another loopback port and address.

mod support;

use support::canary::{self, Canary};
use support::data::assert_same;
use support::faulty::{Fault, FaultOrigin, Obj};
use support::gate::{Gate, GateConfig, admin_get};
use support::http::{self, Conn, Response};
use support::*;

/// One request written byte for byte (a space, '#' or non-ASCII cannot be sent through an
/// ordinary client), with what it must get.
struct Case {
    raw: Vec<u8>,
    status: u16,
    /// Texts the body must contain (the field and the reason).
    says: Vec<String>,
}

/// `method target HTTP/1.1` and `headers`, as bytes.
fn raw_request(method: &str, target: &[u8], headers: &[(&str, &[u8])]) -> Vec<u8> {
    let mut v = Vec::new();
    v.extend_from_slice(method.as_bytes());
    v.push(b' ');
    v.extend_from_slice(target);
    v.extend_from_slice(b" HTTP/1.1\r\n");
    for (k, val) in headers {
        v.extend_from_slice(k.as_bytes());
        v.extend_from_slice(b": ");
        v.extend_from_slice(val);
        v.extend_from_slice(b"\r\n");
    }
    v.extend_from_slice(b"\r\n");
    v
}

/// A GET with only a `Host`.
fn get_raw(target: &[u8], host: &[u8]) -> Vec<u8> {
    raw_request("GET", target, &[("Host", host)])
}

/// Sends `raw` on a fresh connection; the response.
fn send(g: &Gate, raw: &[u8]) -> Response {
    let mut c = Conn::open(g.addr());
    c.send(raw);
    c.read_response(raw.starts_with(b"HEAD "))
        .unwrap_or_else(|e| panic!("{:?}: {e}", String::from_utf8_lossy(raw)))
}

/// Where the host text under test goes.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Via {
    /// `GET /x?cacheHostOrigin=<text>`.
    Param,
    /// `GET <text>`: the whole request target (absolute-form, or a path).
    Target,
    /// `GET /x` with `Host: <text>`.
    HostField,
}

impl Via {
    /// How a 400 names the field.
    fn field(self) -> &'static str {
        match self {
            Via::Param => "malformed cacheHostOrigin",
            Via::Target => "malformed host in request target",
            Via::HostField => "malformed Host",
        }
    }
}

/// The requests a test tries, built from texts with `{c}` (the canary's port) and the like
/// filled in, and `<FF>` standing for the byte 0xFF (not UTF-8).
struct Tries {
    via: Via,
    /// `Host` for [`Via::Param`] and [`Via::Target`].
    host: String,
    subs: Vec<(&'static str, String)>,
    cases: Vec<Case>,
}

impl Tries {
    fn new(via: Via, host: &str, subs: &[(&'static str, u16)]) -> Tries {
        Tries {
            via,
            host: host.into(),
            subs: subs.iter().map(|(k, v)| (*k, v.to_string())).collect(),
            cases: Vec::new(),
        }
    }

    fn text(&self, s: &str) -> String {
        self.subs
            .iter()
            .fold(s.to_string(), |s, (k, v)| s.replace(k, v))
    }

    fn bytes(&self, s: &str) -> Vec<u8> {
        let mut out = Vec::new();
        for (i, part) in self.text(s).split("<FF>").enumerate() {
            if i > 0 {
                out.push(0xff);
            }
            out.extend_from_slice(part.as_bytes());
        }
        out
    }

    /// The request carrying `text` where [`Tries::via`] says.
    fn request(&self, text: &str) -> Vec<u8> {
        match self.via {
            Via::Param => {
                let mut t = b"/x?cacheHostOrigin=".to_vec();
                t.extend(self.bytes(text));
                get_raw(&t, self.host.as_bytes())
            }
            Via::Target => get_raw(&self.bytes(text), self.host.as_bytes()),
            Via::HostField => get_raw(b"/x", &self.bytes(text)),
        }
    }

    /// `text` must get `status` with a body saying each of `says`.
    fn answer(&mut self, text: &str, status: u16, says: &[&str]) {
        let raw = self.request(text);
        self.raw(raw, status, says);
    }

    /// A 400 whose body names the field and `reason` (RFC 3986 §3.2.2-3.2.3 for a host).
    fn malformed(&mut self, text: &str, reason: &str) {
        let field = self.via.field();
        self.answer(text, 400, &[field, reason]);
    }

    /// A 400 for the request line or a header as a whole, which says `reason`.
    fn bad(&mut self, text: &str, reason: &str) {
        self.answer(text, 400, &[reason]);
    }

    /// A request of its own.
    fn raw(&mut self, raw: Vec<u8>, status: u16, says: &[&str]) {
        let says = says.iter().map(|s| self.text(s)).collect();
        self.cases.push(Case { raw, status, says });
    }

    /// Sends each: the status, every text of `says` in the body, never the canary's body, a
    /// 400 closes the connection, and the canary saw nothing. The bodies, in order.
    fn check(&self, g: &Gate, canary: &Canary) -> Vec<String> {
        let mut wrong = Vec::new();
        let mut bodies = Vec::new();
        for c in &self.cases {
            let r = send(g, &c.raw);
            let body = r.body_text();
            let what = String::from_utf8_lossy(&c.raw).trim_end().to_string();
            if r.status != c.status {
                wrong.push(format!(
                    "{what:?}: {} (want {}): {body:?}",
                    r.status, c.status
                ));
            }
            for s in &c.says {
                if !body.contains(s.as_str()) {
                    wrong.push(format!("{what:?}: {body:?} does not say {s:?}"));
                }
            }
            assert!(!body.contains(canary::BODY), "{what:?}: the canary's body");
            if c.status == 400 && !r.closes() {
                wrong.push(format!("{what:?}: a 400 must close the connection"));
            }
            canary.assert_untouched(&what);
            bodies.push(body);
        }
        assert!(wrong.is_empty(), "wrong answers:\n{}", wrong.join("\n"));
        bodies
    }
}

/// A gate on its embedded default origins: no `[[origin]]`, no `[[route]]`.
fn default_gate(backend: Backend) -> Gate {
    let g = Gate::start(GateConfig::new(backend));
    // The defaults are in force: the Device Update hosts are allowed, at port 80 only.
    let r = http::get(g.addr(), "/x?cacheHostOrigin=x.dl.adu.microsoft.com:1", &[]);
    assert_eq!(
        r.body_text(),
        "port not allowed: x.dl.adu.microsoft.com:1\n"
    );
    assert_eq!(r.status, 403);
    g
}

/// The gate's own address, as a client names it in `Host`.
fn gate_host(g: &Gate) -> String {
    format!("127.0.0.1:{}", g.port)
}

/// No request left the gate at all (covers the addresses the canary cannot stand for, such as
/// 169.254.169.254 and 10.0.0.1).
fn assert_no_upstream(g: &Gate, canary: &Canary, what: &str) {
    canary.assert_settled_untouched(what);
    assert_eq!(g.stat("upstream_requests"), 0, "{what}: went upstream");
}

// The host texts below are shaped like the attacks of issue 10: an allowed suffix after a
// character that ends or changes an authority (RFC 3986 §3.2.2 host, §3.2.3 port), aimed at
// the canary ({c}).

both_backends! {
    /// `cacheHostOrigin` was matched by suffix and then put in a URL, so
    /// `169.254.169.254:x.dl.delivery.mp.microsoft.com` fetched the metadata service. Every
    /// delimiter, encoding, whitespace and non-ASCII character is a 400 naming the parameter;
    /// a valid host at another port is a 403.
    fn do_param_host_text_reached_another_host(backend) {
        let canary = Canary::start();
        let g = default_gate(backend);
        let mut t = Tries::new(Via::Param, &gate_host(&g), &[("{c}", canary.port)]);
        let pct = "percent-encoding";
        // ':' (a port is digits, 1-65535)
        t.malformed("127.0.0.1:{c}.dl.adu.microsoft.com", "bad port");
        t.malformed("127.0.0.1:{c}:x.dl.adu.microsoft.com", "bad port");
        t.malformed("169.254.169.254:x.dl.delivery.mp.microsoft.com", "bad port");
        t.malformed("10.0.0.1:x.dl.adu.microsoft.com", "bad port");
        t.malformed("x.dl.adu.microsoft.com:0", "bad port");
        t.malformed("x.dl.adu.microsoft.com:65536", "bad port");
        t.malformed("x.dl.adu.microsoft.com:", "bad port");
        let port = "port not allowed: x.dl.adu.microsoft.com:{c}";
        t.answer("x.dl.adu.microsoft.com:{c}", 403, &[port]);
        // '?', '/', '\'
        t.malformed("127.0.0.1:{c}?.dl.adu.microsoft.com", "'?' is not allowed");
        t.malformed("127.0.0.1:{c}/.dl.adu.microsoft.com", "'/' is not allowed");
        t.malformed("127.0.0.2:{c}/.dl.adu.microsoft.com", "'/' is not allowed");
        t.malformed("127.0.0.1:{c}\\.dl.adu.microsoft.com", "'\\\\' is not allowed");
        // '#': never part of a request target (RFC 9112 §3.2), raw or encoded
        t.bad("127.0.0.1:{c}#.dl.adu.microsoft.com", "request target has a fragment");
        t.malformed("127.0.0.1:{c}%23.dl.adu.microsoft.com", pct);
        // '@'
        t.malformed("origin.test@x.dl.adu.microsoft.com", "userinfo");
        t.malformed("127.0.0.1:{c}@x.dl.adu.microsoft.com", "userinfo");
        // '%'
        t.malformed("127.0.0.1%3A{c}.dl.adu.microsoft.com", pct);
        t.malformed("127.0.0.1:{c}%2F.dl.adu.microsoft.com", pct);
        t.malformed("127.0.0.1%2e.dl.adu.microsoft.com", pct);
        t.malformed("[::1%25lo]:{c}", pct);
        // Whitespace: encoded, a raw tab (a raw space: raw_space_in_target_was_not_a_400)
        t.malformed("127.0.0.1:{c}%20.dl.adu.microsoft.com", pct);
        t.bad("127.0.0.1:{c}\t.dl.adu.microsoft.com", "malformed request line");
        // Non-ASCII: raw UTF-8, a byte that is not UTF-8, encoded
        t.bad("127.0.0.1:{c}\u{e9}.dl.adu.microsoft.com", "target has a non-ASCII");
        t.bad("127.0.0.1:{c}<FF>.dl.adu.microsoft.com", "malformed request line");
        t.malformed("127.0.0.1:{c}%C3%A9.dl.adu.microsoft.com", pct);
        // Names a resolver reads as numbers
        t.malformed("0x7f.1:{c}", "numeric, but not a dotted-quad");
        t.malformed("2130706433:{c}", "numeric, but not a dotted-quad");
        // Valid, but not allowed
        t.answer("127.0.0.1:{c}", 403, &["origin not allowed: 127.0.0.1\n"]);
        t.answer("127.0.0.2:{c}", 403, &["origin not allowed: 127.0.0.2\n"]);
        t.answer("[::1]:{c}", 403, &["origin not allowed: [::1]\n"]);
        let mapped = "origin not allowed: [::ffff:127.0.0.1]\n";
        t.answer("[::ffff:127.0.0.1]:{c}", 403, &[mapped]);
        // Empty, twice
        t.malformed("", "empty host");
        let twice = "x.dl.adu.microsoft.com&cacheHostOrigin=127.0.0.1:{c}";
        t.bad(twice, "repeated cacheHostOrigin");
        // The pass-through forms are routed the same way.
        let target = t.bytes("/x?cacheHostOrigin=127.0.0.1:{c}?.dl.adu.microsoft.com");
        let auth = raw_request("GET", &target, &[("Host", b"gw"), ("Authorization", b"Bearer x")]);
        t.raw(auth, 400, &["malformed cacheHostOrigin"]);
        let post = raw_request("POST", &target, &[("Host", b"gw"), ("Content-Length", b"0")]);
        t.raw(post, 400, &["malformed cacheHostOrigin"]);
        t.check(&g, &canary);
        assert_no_upstream(&g, &canary, "cacheHostOrigin");
    }
}

both_backends! {
    /// An absolute-form target (apt's proxy style) carried the same authority text, so
    /// `GET http://10.0.0.1:x.dl.adu.microsoft.com/x` was fetched from 10.0.0.1. Its authority
    /// ends at the first '/' or '?' (RFC 3986 §3.2): what follows is path or query, and the
    /// host left is not allowed (403); anything else wrong in it is a 400 naming the target.
    fn absolute_form_host_text_reached_another_host(backend) {
        let canary = Canary::start();
        let g = default_gate(backend);
        let mut t = Tries::new(Via::Target, &gate_host(&g), &[("{c}", canary.port)]);
        let pct = "percent-encoding";
        let not_allowed = "origin not allowed: 127.0.0.1\n";
        // ':'
        t.malformed("http://127.0.0.1:{c}.dl.adu.microsoft.com/x", "bad port");
        t.malformed("http://127.0.0.1:{c}:x.dl.adu.microsoft.com/x", "bad port");
        t.malformed("http://169.254.169.254:x.dl.delivery.mp.microsoft.com/x", "bad port");
        t.malformed("http://10.0.0.1:x.dl.adu.microsoft.com/x", "bad port");
        t.malformed("http://x.dl.adu.microsoft.com:0/x", "bad port");
        let port = "port not allowed: x.dl.adu.microsoft.com:{c}";
        t.answer("http://x.dl.adu.microsoft.com:{c}/x", 403, &[port]);
        // '?' and '/' end the authority
        t.answer("http://127.0.0.1:{c}?.dl.adu.microsoft.com/x", 403, &[not_allowed]);
        t.answer("http://127.0.0.1:{c}/.dl.adu.microsoft.com/x", 403, &[not_allowed]);
        let other = "origin not allowed: 127.0.0.2\n";
        t.answer("http://127.0.0.2:{c}?.dl.adu.microsoft.com/x", 403, &[other]);
        t.malformed("http://127.0.0.1:{c}\\.dl.adu.microsoft.com/x", "'\\\\' is not allowed");
        // '#' (RFC 9112 §3.2), raw or encoded
        t.bad("http://127.0.0.1:{c}#.dl.adu.microsoft.com/x", "target has a fragment");
        t.malformed("http://127.0.0.1:{c}%23.dl.adu.microsoft.com/x", pct);
        // '@'
        t.malformed("http://origin.test@x.dl.adu.microsoft.com/x", "userinfo");
        t.malformed("http://127.0.0.1:{c}@x.dl.adu.microsoft.com/x", "userinfo");
        t.malformed("http://x.dl.adu.microsoft.com@127.0.0.1:{c}/x", "userinfo");
        // '%'
        t.malformed("http://127.0.0.1%3A{c}.dl.adu.microsoft.com/x", pct);
        t.malformed("http://127.0.0.1:{c}%2F.dl.adu.microsoft.com/x", pct);
        // Whitespace: encoded, a raw tab
        t.malformed("http://127.0.0.1:{c}%20.dl.adu.microsoft.com/x", pct);
        t.bad("http://127.0.0.1:{c}\t.dl.adu.microsoft.com/x", "malformed request line");
        // Non-ASCII: raw UTF-8, not UTF-8, encoded
        t.bad("http://127.0.0.1:{c}\u{e9}.dl.adu.microsoft.com/x", "target has a non-ASCII");
        t.bad("http://127.0.0.1:{c}<FF>.dl.adu.microsoft.com/x", "malformed request line");
        t.malformed("http://127.0.0.1:{c}%C3%A9.dl.adu.microsoft.com/x", pct);
        // Numbers, empty
        t.malformed("http://2130706433:{c}/x", "numeric, but not a dotted-quad");
        t.malformed("http://:{c}/x", "empty host");
        // Valid, but not allowed; other shapes of target
        t.answer("http://127.0.0.1:{c}/x", 403, &[not_allowed]);
        t.answer("http://[::1]:{c}/x", 403, &["origin not allowed: [::1]\n"]);
        t.answer("HTTP://127.0.0.1:{c}/x", 403, &[not_allowed]);
        t.answer("http://127.0.0.1:{c}", 403, &[not_allowed]);
        t.bad("https://127.0.0.1:{c}/x", "https targets are not proxied");
        let not_url = "request target must be a path or an http:// URL";
        t.bad("http:/127.0.0.1:{c}/x", not_url);
        // Authority-form is for CONNECT only (RFC 9112 §3.2.3).
        t.bad("127.0.0.1:{c}", not_url);
        // A network-path reference is a path in a request target (RFC 9112 §3.2.1).
        t.answer("//127.0.0.1:{c}/x", 403, &[not_allowed]);

        // RFC 9112 §3.2.2: with an absolute-form target the Host is ignored, so an allowed
        // Host is no fallback.
        let target = t.bytes("http://127.0.0.1:{c}?.dl.adu.microsoft.com/x");
        let at = t.bytes("http://origin.test@x.dl.adu.microsoft.com/x");
        let allowed: &[u8] = b"x.dl.adu.microsoft.com";
        t.raw(get_raw(&target, allowed), 403, &[not_allowed]);
        t.raw(get_raw(&at, allowed), 400, &["malformed host in request target", "userinfo"]);
        // The pass-through forms, and HTTP/1.0 without a Host.
        let auth = raw_request("GET", &at, &[("Host", b"gw"), ("Authorization", b"Bearer x")]);
        t.raw(auth, 400, &["malformed host in request target", "userinfo"]);
        let post = raw_request("POST", &target, &[("Host", b"gw"), ("Content-Length", b"0")]);
        t.raw(post, 403, &[not_allowed]);
        let http10 = t.bytes("GET http://127.0.0.1:{c}/x HTTP/1.0\r\n\r\n");
        t.raw(http10, 403, &[not_allowed]);
        // No tunnel is ever opened (RFC 9110 §9.3.6: CONNECT is for proxies).
        let to = t.bytes("127.0.0.1:{c}");
        t.raw(raw_request("CONNECT", &to, &[("Host", &to)]), 405, &["method CONNECT"]);
        let to: &[u8] = b"x.dl.adu.microsoft.com:443";
        t.raw(raw_request("CONNECT", to, &[("Host", to)]), 405, &["method CONNECT"]);
        t.check(&g, &canary);
        assert_no_upstream(&g, &canary, "absolute-form");
    }
}

both_backends! {
    /// `Host` was matched against the allowed origins without validation, so
    /// `Host: 10.0.0.1?.dl.adu.microsoft.com` sent the request to 10.0.0.1. An invalid `Host`
    /// is a 400 naming it (RFC 9112 §3.2), whatever else the request says.
    fn host_header_text_reached_another_host(backend) {
        let canary = Canary::start();
        let g = default_gate(backend);
        let mut t = Tries::new(Via::HostField, "", &[("{c}", canary.port)]);
        let ws = "whitespace";
        // ':'
        t.malformed("127.0.0.1:{c}.dl.adu.microsoft.com", "bad port");
        t.malformed("127.0.0.1:{c}:x.dl.adu.microsoft.com", "bad port");
        t.malformed("169.254.169.254:x.dl.delivery.mp.microsoft.com", "bad port");
        t.malformed("10.0.0.1:x.dl.adu.microsoft.com", "bad port");
        // '?', '/', '#', '\'
        t.malformed("127.0.0.1:{c}?.dl.adu.microsoft.com", "'?' is not allowed");
        t.malformed("10.0.0.1?.dl.adu.microsoft.com", "'?' is not allowed");
        t.malformed("127.0.0.1:{c}/.dl.adu.microsoft.com", "'/' is not allowed");
        t.malformed("127.0.0.1:{c}#.dl.adu.microsoft.com", "'#' is not allowed");
        t.malformed("127.0.0.2:{c}#.dl.adu.microsoft.com", "'#' is not allowed");
        t.malformed("127.0.0.1:{c}\\.dl.adu.microsoft.com", "'\\\\' is not allowed");
        // '@', '%'
        t.malformed("origin.test@x.dl.adu.microsoft.com", "userinfo");
        t.malformed("127.0.0.1:{c}@x.dl.adu.microsoft.com", "userinfo");
        t.malformed("127.0.0.1%3A{c}.dl.adu.microsoft.com", "percent-encoding");
        t.malformed("[::1%lo]:{c}", "percent-encoding");
        // Whitespace: a space, a tab (a field value may hold both)
        t.malformed("127.0.0.1:{c} .dl.adu.microsoft.com", ws);
        t.malformed("127.0.0.1:{c}\t.dl.adu.microsoft.com", ws);
        // Non-ASCII: UTF-8, not UTF-8; a control byte
        t.malformed("127.0.0.1:{c}\u{e9}.dl.adu.microsoft.com", "non-ASCII");
        t.bad("127.0.0.1:{c}<FF>.dl.adu.microsoft.com", "header value is not UTF-8");
        t.bad("127.0.0.1:{c}\u{1}.dl.adu.microsoft.com", "malformed header field");
        // Numbers; valid, but not allowed
        t.malformed("0x7f.1:{c}", "numeric, but not a dotted-quad");
        t.answer("127.0.0.1:{c}", 403, &["origin not allowed: 127.0.0.1\n"]);
        t.answer("[::1]:{c}", 403, &["origin not allowed: [::1]\n"]);

        // An invalid Host is a 400 even when the request names an allowed origin, and for the
        // pass-through forms; two Hosts are one too many.
        let host = t.bytes("127.0.0.1:{c}?.dl.adu.microsoft.com");
        let named: &[u8] = b"/x?cacheHostOrigin=x.dl.adu.microsoft.com";
        t.raw(get_raw(named, &host), 400, &["malformed Host"]);
        let absolute: &[u8] = b"http://x.dl.adu.microsoft.com/x";
        t.raw(get_raw(absolute, &host), 400, &["malformed Host"]);
        let auth = raw_request("GET", b"/x", &[("Host", &host), ("Authorization", b"Bearer x")]);
        t.raw(auth, 400, &["malformed Host"]);
        let post = raw_request("POST", b"/x", &[("Host", &host), ("Content-Length", b"0")]);
        t.raw(post, 400, &["malformed Host"]);
        let allowed: &[u8] = b"x.dl.adu.microsoft.com";
        let twice = raw_request("GET", b"/x", &[("Host", allowed), ("Host", &host)]);
        t.raw(twice, 400, &["repeated Host"]);
        t.check(&g, &canary);
        assert_no_upstream(&g, &canary, "Host");
    }
}

both_backends! {
    /// A raw space in the request target must be a 400 (RFC 9112 §3: no whitespace in a
    /// request-target; an invalid request-line SHOULD get a 400 and must not be "corrected").
    fn raw_space_in_target_was_not_a_400(backend) {
        let canary = Canary::start();
        let g = default_gate(backend);
        let mut t = Tries::new(Via::Target, &gate_host(&g), &[("{c}", canary.port)]);
        let line = "malformed request line";
        t.bad("/x?cacheHostOrigin=127.0.0.1:{c} .dl.adu.microsoft.com", line);
        t.bad("http://127.0.0.1:{c} .dl.adu.microsoft.com/x", line);
        t.check(&g, &canary);
        assert_no_upstream(&g, &canary, "raw space");
    }
}

both_backends! {
    /// An allowed origin without a `connect` address was fetched at any port a request named:
    /// the gate's own loopback-only `/summary`, or a port scan of the host. Ports are part of
    /// the allow-list (RFC 3986 §3.2.3): another port is a 403 and nothing is contacted.
    fn allowed_origin_was_fetched_at_another_port(backend) {
        let canary = Canary::start();
        let g = Gate::start(GateConfig::new(backend).origin_with("localhost", None, &[]));
        let subs = [("{c}", canary.port), ("{a}", g.admin)];
        let mut t = Tries::new(Via::Target, "gw", &subs);
        let to_canary = "port not allowed: localhost:{c}\n";
        let to_admin = "port not allowed: localhost:{a}\n";
        t.answer("/x?cacheHostOrigin=localhost:{c}", 403, &[to_canary]);
        t.answer("/x?cacheHostOrigin=LocalHost:{c}", 403, &[to_canary]);
        t.answer("/x?cacheHostOrigin=localhost.:{c}", 403, &[to_canary]);
        t.answer("http://localhost:{c}/x", 403, &[to_canary]);
        t.answer("/summary?cacheHostOrigin=localhost:{a}", 403, &[to_admin]);
        t.answer("http://localhost:{a}/summary", 403, &[to_admin]);
        t.answer("/x?cacheHostOrigin=localhost:22", 403, &["port not allowed: localhost:22\n"]);
        // The pass-through forms.
        let target = t.bytes("/x?cacheHostOrigin=localhost:{c}");
        let auth = raw_request("GET", &target, &[("Host", b"gw"), ("Authorization", b"Bearer x")]);
        t.raw(auth, 403, &[to_canary]);
        let post = raw_request("POST", &target, &[("Host", b"gw"), ("Content-Length", b"0")]);
        t.raw(post, 403, &[to_canary]);
        for body in t.check(&g, &canary) {
            assert!(!body.contains("hitBytes"), "the summary: {body}");
            assert!(!body.to_ascii_lowercase().contains("refused"), "a port oracle: {body}");
        }
        assert_eq!(g.stat("upstream_requests"), 0, "a refused port went upstream");
        // What a leak would have shown: the admin listener does serve the summary.
        let (status, summary) = admin_get(g.admin, "/summary").expect("admin /summary");
        assert_eq!(status, 200);
        assert!(summary.contains("hitBytes"), "{summary}");

        // `Host` naming the origin itself: the port in it is the gate's own (DNS pointed the
        // client at us), so the origin is asked at its configured port (80), never the one in
        // `Host`. What port 80 says depends on the machine; only the canary is checked.
        let _ = send(&g, &get_raw(b"/x", t.text("localhost:{c}").as_bytes()));
        canary.assert_settled_untouched("allowed origin, other ports");
    }
}

both_backends! {
    /// The positive control that makes every "zero connections" here meaningful: a configured
    /// origin whose DNS name points at the canary reaches it. With `deny_private = true` the
    /// loopback answer is refused (a 502 naming the rule) and the canary stays untouched, for
    /// each way of naming the origin and for pass-through alike.
    fn loopback_dns_answer_was_used_despite_deny_private(backend) {
        let canary = Canary::start();
        let origin = format!("localhost:{}", canary.port);
        let deny = ["deny_private = true"];
        let denied = Gate::start(GateConfig::new(backend).origin_with(&origin, None, &deny));
        let named: &[u8] = b"/canary.txt?cacheHostOrigin=localhost";
        for (what, raw) in [
            ("cacheHostOrigin", get_raw(named, b"gw")),
            ("absolute-form", get_raw(b"http://localhost/canary.txt", b"localhost")),
            ("Host", get_raw(b"/canary.txt", b"localhost")),
            (
                "with Authorization",
                raw_request("GET", named, &[("Host", b"gw"), ("Authorization", b"Bearer x")]),
            ),
            (
                "POST",
                raw_request("POST", named, &[("Host", b"gw"), ("Content-Length", b"0")]),
            ),
        ] {
            let r = send(&denied, &raw);
            let body = r.body_text();
            assert_eq!(r.status, 502, "deny_private, {what}: {body}");
            assert!(body.contains("not public (deny_private)"), "deny_private, {what}: {body}");
            canary.assert_untouched(&format!("deny_private, {what}"));
        }
        canary.assert_settled_untouched("deny_private");

        let allowed = Gate::start(GateConfig::new(backend).origin_with(&origin, None, &[]));
        let r = http::get(allowed.addr(), "/canary.txt?cacheHostOrigin=localhost", &[]);
        assert_eq!((r.status, r.body_text().as_str()), (200, canary::BODY), "the control");
        assert!(canary.hits() >= 1, "the control never reached the canary");
        let report = canary.report();
        assert!(report.contains("GET /canary.txt HTTP/1.1"), "the canary saw: {report}");
    }
}

/// The redirects: 301, 302, 303, 307, 308 (RFC 9110 §15.4.2-15.4.9) and 300 (§15.4.1).
const REDIRECTS: [u16; 6] = [300, 301, 302, 303, 307, 308];

/// A request that met redirect `code` (a fill, a revalidation or a pass-through): the 3xx
/// itself and its `Location`, for the client to judge (RFC 9110 §15.4), never followed, and
/// the canary untouched.
#[track_caller]
fn redirect_relayed(r: &Response, code: u16, location: &str, canary: &Canary, what: &str) {
    assert_eq!(r.status, code, "{what}: {}", r.body_text());
    assert_eq!(r.header("location"), Some(location), "{what}");
    assert!(!r.body_text().contains(canary::BODY), "{what}");
    canary.assert_untouched(what);
}

both_backends! {
    /// The upstream client followed an allowed origin's `302 Location:
    /// http://127.0.0.1:<port>/...`, served the target's body and stored it under the origin's
    /// key. Now nothing follows a redirect: a cache fill that meets a 3xx (even one that says
    /// `max-age=3600`) relays it to the client as sent and stores nothing, a revalidation
    /// likewise, and a pass-through request (credentials, POST) gets the 3xx itself (RFC 9110
    /// §15.4). Both through a route and through an origin with a `connect` address.
    fn redirect_was_followed_to_loopback(backend) {
        let canary = Canary::start();
        let o = FaultOrigin::start();
        let g = Gate::start(
            GateConfig::new(backend)
                .route("/r/", &format!("{}/r/", o.origin_url()))
                .origin("redirect.test", o.addr()),
        );
        let c = canary.port;
        let location = |path: &str| format!("http://127.0.0.1:{c}/stolen{path}");
        let vias = [("route", "r", ""), ("origin", "o", "?cacheHostOrigin=redirect.test")];
        for code in REDIRECTS {
            for (_, dir, _) in vias {
                let path = format!("/{dir}/{code}.bin");
                let obj = Obj::new(b"never served".to_vec(), "\"r\"")
                    .with_header("Location", &location(&path))
                    .with_header("Cache-Control", "max-age=3600");
                o.put(&path, obj.with_fault(Fault::Status(code)));
                // Stored first, then redirected: met on revalidation.
                let path = format!("/{dir}/stored-{code}.bin");
                let obj = Obj::new(b"stored content".to_vec(), "\"s\"")
                    .with_header("Location", &location(&path))
                    .with_header("Cache-Control", "max-age=3600");
                o.put(&path, obj);
            }
        }
        for code in REDIRECTS {
            for (via, dir, query) in vias {
                let path = format!("/{dir}/{code}.bin");
                let target = format!("{path}{query}");
                let loc = location(&path);
                let what = |s: &str| format!("{code} via {via}, {s}");

                // Cache fills: twice (the first stored nothing), a range, a HEAD.
                let again = http::get(g.addr(), &target, &[]);
                redirect_relayed(&again, code, &loc, &canary, &what("GET"));
                assert!(!again.is_hit(), "{}", what("GET: not stored"));
                // 300, 301 and 308 with a lifetime are stored (RFC 9110 §15.1, heuristically
                // cacheable) and served again as they were; the others are asked each time.
                let stored = matches!(code, 300 | 301 | 308);
                let again = http::get(g.addr(), &target, &[]);
                redirect_relayed(&again, code, &loc, &canary, &what("GET again"));
                assert_eq!(again.is_hit(), stored, "{}", what("GET again: stored?"));
                let range = http::get(g.addr(), &target, &[("Range", "bytes=0-3")]);
                redirect_relayed(&range, code, &loc, &canary, &what("GET a range"));
                let head = http::head(g.addr(), &target, &[]);
                redirect_relayed(&head, code, &loc, &canary, &what("HEAD"));
                let seen = o.answered_for(&path);
                let asked = if stored { 1 } else { 4 };
                assert_eq!(seen.len(), asked, "{}: {seen:?}", what("fills asking the origin"));
                assert!(seen.iter().all(|s| s.status == code), "{seen:?}");

                // Pass-through: the 3xx relayed.
                let auth = [("Authorization", "Bearer x")];
                let r = http::get(g.addr(), &target, &auth);
                redirect_relayed(&r, code, &loc, &canary, &what("GET with Authorization"));
                let r = http::head(g.addr(), &target, &auth);
                redirect_relayed(&r, code, &loc, &canary, &what("HEAD with Authorization"));
                let len = [("Content-Length", "4")];
                let r = http::fetch_with_body(g.addr(), "POST", &target, &len, b"data");
                redirect_relayed(&r, code, &loc, &canary, &what("POST"));
                let seen = o.answered_for(&path);
                assert_eq!(seen.len(), asked + 3, "{}: {seen:?}", what("origin requests"));
                let with_auth = seen
                    .iter()
                    .filter(|s| s.authorization.as_deref() == Some("Bearer x"))
                    .count();
                assert_eq!(with_auth, 2, "{}: {seen:?}", what("credentials passed on"));

                // Revalidation: stored, then the origin redirects, and the client insists on
                // a revalidation (RFC 9111 §5.2.1.4 no-cache).
                let path = format!("/{dir}/stored-{code}.bin");
                let target = format!("{path}{query}");
                let r = http::get(g.addr(), &target, &[]);
                let got = (r.status, r.body_text());
                assert_eq!(got, (200, "stored content".into()), "{}", what("fill"));
                wait_hit(&g, &target, &[]);
                o.set_fault(&path, Fault::Status(code));
                let r = http::get(g.addr(), &target, &[("Cache-Control", "no-cache")]);
                redirect_relayed(&r, code, &location(&path), &canary, &what("revalidation"));
                let seen = o.answered_for(&path);
                let last = seen.last().expect("requests");
                assert!(
                    last.if_none_match.is_some() && last.status == code,
                    "{}: {seen:?}",
                    what("a conditional request met the redirect")
                );
            }
        }
        // The canary listens where every Location points: nothing ever followed one.
        canary.assert_settled_untouched("redirects");
        let seen = o.seen();
        assert!(seen.iter().all(|s| !s.target.contains("stolen")), "{seen:?}");
    }
}

both_backends! {
    /// A `[[route]]` prefix could be left with dot-segments: `/debian/../a.bin` fetched `/a.bin`
    /// of the route's origin and cached it, plain or percent-encoded. Dot-segments are removed
    /// after decoding percent-encoded unreserved characters (RFC 3986 §5.2.4, §6.2.2.2); one
    /// that climbs above the prefix, or an encoded '/' or '\', is a 400. Naming the route's
    /// origin directly gets only what the route serves.
    fn route_prefix_was_left_with_dot_segments(backend) {
        let canary = Canary::start();
        let o = FaultOrigin::start();
        let ok = data::generate("inside the route", 5000);
        o.put("/a.bin", Obj::new(data::generate("outside the route", 4096), "\"a\""));
        o.put("/debian/ok.bin", Obj::new(ok.clone(), "\"ok\""));
        let route = format!("{}/debian/", o.origin_url());
        let g = Gate::start(GateConfig::new(backend).route("/debian/", &route));
        let subs = [("{c}", canary.port), ("{o}", o.port)];
        let mut t = Tries::new(Via::Target, "gw", &subs);
        let (climbs, sep) = ("path climbs above its route prefix", "encoded '/' or '\\'");
        t.bad("/debian/../a.bin", climbs);
        t.bad("/debian/%2e%2e/a.bin", climbs);
        t.bad("/debian/%2E%2e/a.bin", climbs);
        t.bad("/debian/.%2e/a.bin", climbs);
        t.bad("/debian/%2e./a.bin", climbs);
        t.bad("/debian/pool/../../a.bin", climbs);
        t.bad("/debian/./../a.bin", climbs);
        t.bad("/debian/..", climbs);
        t.bad("/debian/%2e%2e", climbs);
        t.bad("/debian/..%2fa.bin", sep);
        t.bad("/debian/..%2Fa.bin", sep);
        t.bad("/debian/..%5Ca.bin", sep);
        t.bad("/debian/..%5ca.bin", sep);
        t.bad("/debian/..\\a.bin", sep);
        // The route's origin named directly: its routes' paths are a boundary too.
        t.bad("/debian/../a.bin?cacheHostOrigin=127.0.0.1:{o}", climbs);
        t.bad("http://127.0.0.1:{o}/debian/../a.bin", climbs);
        let outside = "origin not allowed: 127.0.0.1/a.bin (outside the routes to this origin)";
        t.answer("/a.bin?cacheHostOrigin=127.0.0.1:{o}", 403, &[outside]);
        t.answer("http://127.0.0.1:{o}/a.bin", 403, &[outside]);
        t.answer("/a.bin", 403, &["origin not allowed: gw\n"]);
        // The route's host at the canary's port is not the route's origin.
        let not_allowed = "origin not allowed: 127.0.0.1\n";
        t.answer("/debian/ok.bin?cacheHostOrigin=127.0.0.1:{c}", 403, &[not_allowed]);
        t.answer("http://127.0.0.1:{c}/debian/ok.bin", 403, &[not_allowed]);
        t.check(&g, &canary);
        assert!(o.seen().is_empty(), "a refused path reached the origin: {:?}", o.seen());

        // Dot-segments that stay inside the prefix are removed, and the origin is asked for
        // the normalised path.
        for target in [
            "/debian/ok.bin",
            "/debian/./ok.bin",
            "/debian/x/../ok.bin",
            "/debian/%2e/ok.bin",
            "/debian/x/%2E%2E/ok.bin",
            "/debian/../debian/ok.bin",
            "/debian/ok.bin?cacheHostOrigin=127.0.0.1:{o}",
        ] {
            let target = t.text(target);
            let r = send(&g, &get_raw(target.as_bytes(), b"gw"));
            assert_eq!(r.status, 200, "{target}: {}", r.body_text());
            assert_same(&r.body, &ok, &target);
        }
        // A routed path is served whatever port `Host` names.
        let r = send(&g, &get_raw(b"/debian/./ok.bin", t.text("127.0.0.1:{c}").as_bytes()));
        assert_eq!(r.status, 200, "Host with the canary's port: {}", r.body_text());
        assert_same(&r.body, &ok, "Host with the canary's port");

        let seen = o.seen();
        assert_eq!(o.requests("/a.bin"), 0, "{seen:?}");
        let normalised = seen.iter().all(|s| s.target == "/debian/ok.bin");
        assert!(normalised, "only the normalised path goes upstream: {seen:?}");
        canary.assert_settled_untouched("dot-segments");
    }
}
