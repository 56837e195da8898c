//! Conformance, statuses: who made the response (issue 12, point 11). A response the cache
//! makes itself (a refusal, an error of its own, the summary) says so in `Cache-Status`: a
//! member with neither `hit` (RFC 9211 §2.1: a generated response is no hit) nor `fwd` (§2.2:
//! nothing was relayed from upstream), only `detail` (§2.8) naming why; the access log labels
//! it `ANSWERED:<detail>` and the metrics count it under `cache="ANSWERED"`, never as forwarded
//! (`fwd=...`, `BYPASS`).

mod support;

use std::time::{Duration, Instant};

use support::data::F1K;
use support::gate::{Gate, GateConfig, admin_get};
use support::http::{self, Conn};
use support::*;

/// The access-log line of the response to `"<request>" <status>` (waiting up to 5 s for it:
/// the line is written once the response is sent) and its label (the field after the status
/// and the bytes sent).
#[track_caller]
fn access_label(g: &Gate, request: &str, status: u16) -> String {
    let needle = format!("\"{request}\" {status} ");
    let t0 = Instant::now();
    loop {
        let log = g.log();
        if let Some(line) = log.lines().rev().find(|l| l.contains(&needle)) {
            let rest = &line[line.find(&needle).unwrap() + needle.len()..];
            let mut f = rest.split_whitespace();
            let _bytes = f.next();
            return f.next().unwrap_or_default().to_string();
        }
        assert!(
            t0.elapsed() < Duration::from_secs(5),
            "no access line with {needle:?} in:\n{log}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Asserts what names the cache's own answer `detail`: the `Cache-Status` member, and the
/// access-log label of `request`.
#[track_caller]
fn assert_answered(g: &Gate, r: &http::Response, request: &str, detail: &str) {
    assert_eq!(
        r.cache_status(),
        format!("gatecache; detail={detail}"),
        "{request}: {}",
        r.body_text()
    );
    assert!(
        !r.cache_status().contains("fwd"),
        "{request}: not forwarded"
    );
    assert_eq!(
        access_label(g, request, r.status),
        format!("ANSWERED:{detail}"),
        "{request}"
    );
}

/// The count of `gatecache_requests_total{cache="<label>"}` on `/metrics`.
fn requests_total(g: &Gate, label: &str) -> u64 {
    let (_, text) = admin_get(g.admin, "/metrics").expect("admin /metrics");
    let name = format!("gatecache_requests_total{{cache=\"{label}\"}} ");
    text.lines()
        .find_map(|l| l.strip_prefix(&name))
        .unwrap_or_else(|| panic!("no {name} in:\n{text}"))
        .trim()
        .parse()
        .unwrap()
}

both_backends! {
    /// Refusals of the cache's own, each named `detail=refused` (or why), never `fwd=bypass`:
    /// a host that is not an allowed origin (403), a method the cache does not serve (405), a
    /// head that does not parse (400), a request that already passed this node (508, a loop,
    /// RFC 9110 §7.6.3). The metrics count them as ANSWERED, none as BYPASS.
    fn refusals_are_named_as_the_caches_own_answers(backend) {
        let (_n, g) = nginx_and_gate_with(backend, &["node_name = \"gw-conformance\""]);
        let bypass_before = requests_total(&g, "BYPASS");

        let target = "/x.bin?cacheHostOrigin=not-allowed.example";
        let r = http::get(g.addr(), target, &[]);
        assert_eq!(r.status, 403, "{}", r.body_text());
        assert_answered(&g, &r, &format!("GET {target}"), "refused");

        let r = http::fetch(g.addr(), "TRACE", "/1k.bin", &[]);
        assert_eq!(r.status, 405, "{}", r.body_text());
        assert_answered(&g, &r, "TRACE /1k.bin", "refused");

        let via = [("Via", "1.1 gw-conformance (gatecache)")];
        let r = http::get(g.addr(), "/1k.bin?loop", &via);
        assert_eq!(r.status, 508, "{}", r.body_text());
        assert_answered(&g, &r, "GET /1k.bin?loop", "loop");

        // A head that does not parse: logged with no request line ("-").
        let mut c = Conn::open(g.addr());
        c.send("GET /1k.bin HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n");
        let r = c.read_response(false).unwrap();
        assert_eq!(r.status, 400, "{}", r.body_text());
        assert_answered(&g, &r, "-", "refused");

        assert_eq!(requests_total(&g, "ANSWERED"), 4);
        assert_eq!(requests_total(&g, "BYPASS"), bypass_before, "none counted as BYPASS");
    }
}

both_backends! {
    /// A range that starts past the end (416, RFC 9110 §15.5.17) is the cache's own answer,
    /// `detail=range-not-satisfiable`, on a cold object and on a cached one; the fetch that
    /// found the length is still a plain miss in the log.
    fn an_unsatisfiable_range_is_named_as_the_caches_own_answer(backend) {
        let (_n, g) = nginx_and_gate(backend);
        let path = format!("/{}?unsatisfiable", F1K.0);
        let range = [("Range", "bytes=5000-")];
        for pass in ["cold", "cached"] {
            let r = http::get(g.addr(), &path, &range);
            assert_eq!(r.status, 416, "{pass}: {}", r.body_text());
            assert_eq!(r.header("content-range"), Some("bytes */1024"), "{pass}");
            assert_answered(&g, &r, &format!("GET {path}"), "range-not-satisfiable");
            wait_hit(&g, &path, &[]);
        }
        // A response relayed from the origin keeps its forwarded name.
        let fresh = format!("/{}?forwarded", F1K.0);
        let r = http::get(g.addr(), &fresh, &[]);
        assert_eq!(r.status, 200);
        assert_eq!(r.cache_status(), "gatecache; fwd=miss; stored");
        assert_eq!(access_label(&g, &format!("GET {fresh}"), 200), "MISS");
    }
}

both_backends! {
    /// An origin that refuses connections: a 502 the cache makes itself (RFC 9110 §15.6.3, no
    /// valid answer came), `detail=upstream-unreachable`, labelled so in the access log and
    /// counted as ANSWERED, for a GET and a HEAD.
    fn an_origin_that_refuses_connections_is_the_caches_own_502(backend) {
        let closed = free_port();
        let g = Gate::start(
            GateConfig::new(backend).route("/", &format!("http://127.0.0.1:{closed}")),
        );
        let r = http::get(g.addr(), "/refused.bin", &[]);
        assert_eq!(r.status, 502, "{}", r.body_text());
        assert_answered(&g, &r, "GET /refused.bin", "upstream-unreachable");
        let r = http::head(g.addr(), "/refused.bin?head", &[]);
        assert_eq!(r.status, 502);
        assert_answered(&g, &r, "HEAD /refused.bin?head", "upstream-unreachable");
        assert_eq!(requests_total(&g, "ANSWERED"), 2);
        assert_eq!(requests_total(&g, "BYPASS"), 0);
    }
}
