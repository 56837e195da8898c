//! Conformance, statuses and redirects: every status the origin answers reaches the client
//! with its fields and its whole body (RFC 9110 §15); redirects are relayed, never followed
//! (RFC 9110 §15.4); a response the cache does not store costs one upstream request, relayed
//! as it arrives (RFC 9111 §3: not storing it is no reason to ask twice).

mod support;

use support::canary::Canary;
use support::data::{assert_same, generate};
use support::faulty::{Fault, FaultOrigin, Obj};
use support::gate::{Gate, GateConfig};
use support::http;
use support::*;

/// (path, status, body, fields) of an answer the origin gives.
type Case = (
    &'static str,
    u16,
    Vec<u8>,
    Vec<(&'static str, &'static str)>,
);

fn setup(backend: Backend) -> (FaultOrigin, Gate) {
    let o = FaultOrigin::start();
    let g = Gate::start(GateConfig::new(backend).route("/", &o.origin_url()));
    (o, g)
}

both_backends! {
    /// A 302 with a `Location` on another loopback listener: the client gets the 302 and its
    /// `Location` as sent; nothing is requested from the `Location`; one upstream request.
    fn a_redirect_reaches_the_client_and_is_not_followed(backend) {
        let (o, g) = setup(backend);
        let canary = Canary::start();
        let location = format!("http://127.0.0.1:{}/elsewhere.bin", canary.port);
        o.put(
            "/moved.bin",
            Obj::new(b"moved\n".to_vec(), "\"m\"")
                .with_header("Location", &location)
                .with_header("Cache-Control", "max-age=60")
                .with_fault(Fault::Answer(302)),
        );
        for range in [None, Some("bytes=0-9")] {
            let extra: Vec<(&str, &str)> = range.iter().map(|r| ("Range", *r)).collect();
            let before = o.requests("/moved.bin");
            let r = http::get(g.addr(), "/moved.bin", &extra);
            assert_eq!(r.status, 302, "{range:?}: {}", r.body_text());
            assert_eq!(r.header("location"), Some(location.as_str()), "{range:?}");
            assert_eq!(r.body, b"moved\n", "{range:?}: the origin's body");
            assert_eq!(o.requests("/moved.bin") - before, 1, "{range:?}: one upstream request");
        }
        canary.assert_settled_untouched("the redirect's Location");
    }
}

both_backends! {
    /// A 204, a 500 with a 2 KB body, a 503 with `Retry-After`, a 404 with an HTML body: each
    /// relayed with its status, its fields and its body byte for byte, one upstream request
    /// each.
    fn every_status_is_relayed_with_its_fields_and_whole_body(backend) {
        let (o, g) = setup(backend);
        let html = b"<!doctype html>\n<title>Not here</title>\n<p>No such update.</p>\n".to_vec();
        let cases: Vec<Case> = vec![
            ("/nothing", 204, Vec::new(), vec![("X-Trace", "t204")]),
            ("/broken", 500, generate("/broken", 2048), vec![("X-Trace", "t500")]),
            ("/busy", 503, b"busy, come back later\n".to_vec(), vec![("Retry-After", "120")]),
            ("/gone", 404, html, vec![("Content-Type", "text/html; charset=utf-8")]),
        ];
        for (path, status, body, fields) in &cases {
            let mut ob = Obj::new(body.clone(), "\"s\"").with_fault(Fault::Answer(*status));
            for (k, v) in fields {
                ob = ob.with_header(k, v);
            }
            o.put(path, ob);
            let r = http::get(g.addr(), path, &[]);
            assert_eq!(r.status, *status, "{path}: {}", r.body_text());
            assert_same(&r.body, body, path);
            for (k, v) in fields {
                assert_eq!(r.header(k), Some(*v), "{path}: {k}");
            }
            assert_eq!(o.requests(path), 1, "{path}: one upstream request");
            if *status == 204 {
                // RFC 9110 §8.6: no Content-Length on a 204.
                assert_eq!(r.header("content-length"), None, "{path}");
            }
        }
    }
}

both_backends! {
    /// A response that may not be stored (`no-store`, and `private`) costs one upstream
    /// request per client request, whole or by range: it is relayed as it arrives, not thrown
    /// away and asked for again.
    fn a_response_that_may_not_be_stored_is_fetched_once(backend) {
        let (o, g) = setup(backend);
        for (path, cc) in [("/ns.bin", "no-store"), ("/pv.bin", "private, max-age=60")] {
            let data = generate(path, 100 * KIB + 3);
            o.put(path, Obj::new(data.clone(), "\"n\"").with_header("Cache-Control", cc));
            let r = http::get(g.addr(), path, &[]);
            assert_eq!(r.status, 200, "{path}");
            assert_same(&r.body, &data, path);
            assert_eq!(o.requests(path), 1, "{path}: the first request asked once");
            assert!(
                r.cache_status().contains("fwd="),
                "{path}: forwarded, {}",
                r.cache_status()
            );
        }
    }
}

both_backends! {
    /// A 404 and a 301 that the origin gives a lifetime (`max-age=60`) are stored (RFC 9111
    /// §3; RFC 9110 §15.1: heuristically cacheable statuses) and served again with their
    /// status, fields and body, ranges and conditionals aside; without a lifetime a 404 is
    /// asked for every time.
    fn statuses_with_a_lifetime_are_stored_and_served_as_they_were(backend) {
        let (o, g) = setup(backend);
        let page = b"<p>No such update.</p>\n".to_vec();
        o.put(
            "/gone-for-now",
            Obj::new(page.clone(), "\"g\"")
                .with_header("Cache-Control", "max-age=60")
                .with_header("Content-Type", "text/html")
                .with_fault(Fault::Answer(404)),
        );
        o.put(
            "/old-name.bin",
            Obj::new(b"moved\n".to_vec(), "\"m\"")
                .with_header("Cache-Control", "max-age=60")
                .with_header("Location", "http://origin.example.org/new-name.bin")
                .with_fault(Fault::Answer(301)),
        );
        o.put("/missing", Obj::new(page.clone(), "\"x\"").with_fault(Fault::Answer(404)));
        for (path, status) in [("/gone-for-now", 404), ("/old-name.bin", 301)] {
            for (round, extra) in [(0, None), (1, None), (2, Some(("Range", "bytes=0-3")))] {
                let extra: Vec<(&str, &str)> = extra.into_iter().collect();
                let r = http::get(g.addr(), path, &extra);
                assert_eq!(r.status, status, "{path} round {round}");
                if round > 0 {
                    assert!(r.is_hit(), "{path} round {round}: {}", r.cache_status());
                }
                if status == 301 {
                    assert_eq!(
                        r.header("location"),
                        Some("http://origin.example.org/new-name.bin"),
                        "{path}"
                    );
                    assert_eq!(r.body, b"moved\n", "{path}");
                } else {
                    assert_eq!(r.body, page, "{path}");
                    assert_eq!(r.header("content-type"), Some("text/html"), "{path}");
                }
            }
            assert_eq!(o.requests(path), 1, "{path}: stored");
        }
        // A 204 with a lifetime: stored, and sent again with no Content-Length (RFC 9110 §8.6).
        o.put(
            "/empty",
            Obj::new(Vec::new(), "\"e\"")
                .with_header("Cache-Control", "max-age=60")
                .with_fault(Fault::Answer(204)),
        );
        for round in 0..2 {
            let r = http::get(g.addr(), "/empty", &[]);
            assert_eq!(r.status, 204, "round {round}");
            assert_eq!(r.header("content-length"), None, "round {round}");
            assert!(r.body.is_empty());
        }
        assert_eq!(o.requests("/empty"), 1, "a 204 with a lifetime is stored");
        for _ in 0..2 {
            assert_eq!(http::get(g.addr(), "/missing", &[]).status, 404);
        }
        assert_eq!(o.requests("/missing"), 2, "no lifetime: not stored");
    }
}

both_backends! {
    /// A response that may not be stored, relayed from the fill that got it: the fill sent no
    /// `If-Range`, so the client's is judged against the answer (RFC 9110 §13.1.5). One that
    /// names another representation gets the whole new one, never a part to join to old bytes.
    fn a_failing_if_range_on_a_relayed_answer_gets_the_whole_representation(backend) {
        let (o, g) = setup(backend);
        let data = generate("/ir", 200_000);
        o.put("/ir.bin", Obj::new(data.clone(), "\"new\"").with_header("Cache-Control", "no-store"));
        let r = http::get(g.addr(), "/ir.bin", &[("Range", "bytes=0-65535"), ("If-Range", "\"old\"")]);
        assert_eq!(r.status, 200, "{}", r.body_text());
        assert_same(&r.body, &data, "the whole representation");
        let r = http::get(g.addr(), "/ir.bin", &[("Range", "bytes=0-65535"), ("If-Range", "\"new\"")]);
        assert_eq!(r.status, 206, "{}", r.body_text());
        assert_same(&r.body, &data[..65_536], "the part asked for");
    }
}

both_backends! {
    /// Through a parent: the origin's 503 (with `Retry-After` and its body) reaches the client
    /// of the child as the origin sent it; it is not taken for the parent's own failure
    /// (RFC 9110 §15.6.3: a 502 only when no valid answer came).
    fn an_origins_5xx_through_a_parent_reaches_the_client(backend) {
        let o = FaultOrigin::start();
        let parent = Gate::start(GateConfig::new(backend).route("/", &o.origin_url()));
        let child = Gate::start(
            GateConfig::new(backend)
                .route("/", &o.origin_url())
                .parents(&[parent.addr()]),
        );
        o.put(
            "/busy",
            Obj::new(b"busy, come back later\n".to_vec(), "\"b\"")
                .with_header("Retry-After", "120")
                .with_fault(Fault::Answer(503)),
        );
        let r = http::get(child.addr(), "/busy", &[]);
        assert_eq!(r.status, 503, "{}", r.body_text());
        assert_eq!(r.header("retry-after"), Some("120"));
        assert_eq!(r.body, b"busy, come back later\n");
        assert_eq!(o.requests("/busy"), 1, "asked once, through the parent");
    }
}

both_backends! {
    /// A small range of an answer that may not be stored: the fill asked for its own window
    /// and got more than the client asked for; the client's part is cut out of it (a 206 of
    /// exactly that range), with no second upstream request.
    fn a_part_of_a_relayed_answer_is_cut_out_for_the_client(backend) {
        let (o, g) = setup(backend);
        let data = generate("/part", 5000);
        o.put("/part.bin", Obj::new(data.clone(), "\"p\"").with_header("Cache-Control", "no-store"));
        for (spec, range) in [("bytes=5-9", 5..10), ("bytes=-10", 4990..5000), ("bytes=4000-", 4000..5000)] {
            let before = o.requests("/part.bin");
            let r = http::get(g.addr(), "/part.bin", &[("Range", spec)]);
            assert_eq!(r.status, 206, "{spec}: {}", r.body_text());
            let cr = format!("bytes {}-{}/5000", range.start, range.end - 1);
            assert_eq!(r.header("content-range"), Some(cr.as_str()), "{spec}");
            assert_same(&r.body, &data[range], spec);
            assert_eq!(o.requests("/part.bin") - before, 1, "{spec}: one upstream request");
        }
    }
}

both_backends! {
    /// `Expect: 100-continue` on a POST: the client waits for `100 Continue` before it sends
    /// the body (RFC 9110 §10.1.1); it comes at once, then the final answer.
    fn expect_100_continue_is_answered_before_the_body(backend) {
        let (o, g) = setup(backend);
        o.put("/api", Obj::new(Vec::new(), "\"a\""));
        let mut c = http::Conn::open(g.addr());
        c.stream.set_read_timeout(Some(std::time::Duration::from_secs(2))).unwrap();
        c.send(http::request(
            "POST",
            "/api",
            &[("Content-Length", "4"), ("Expect", "100-continue")],
        ));
        let head = c.read_head().expect("a 100 within 2 s").expect("a head");
        assert_eq!(head.status, 100);
        c.send("data");
        let r = c.read_response(false).unwrap();
        assert_eq!(r.status, 200, "{}", r.body_text());
        assert_eq!(r.body_text(), "POST /api took 4 bytes\n");
        let seen = o.seen_for("/api");
        assert!(
            seen[0].headers.iter().all(|(k, _)| !k.eq_ignore_ascii_case("expect")),
            "Expect is answered here, never forwarded"
        );
    }
}
