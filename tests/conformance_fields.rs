//! Conformance, fields: every end-to-end field the origin sends reaches the client, on the miss
//! and on every hit, and a 304 updates them (RFC 9111 §3.1, §3.2, §4.3.4); hop-by-hop fields
//! and those named in `Connection` never do (RFC 9110 §7.6.1); the origin receives the client's
//! own fields (RFC 9110 §7.6); repeated list lines combine (RFC 9110 §5.3); `Age` is on every
//! response served from storage (RFC 9111 §4, §5.1); `Via` names this node (RFC 9110 §7.6.3).

mod support;

use std::time::Duration;

use support::data::{assert_same, generate};
use support::faulty::{FaultOrigin, Obj};
use support::gate::{Gate, GateConfig};
use support::http;
use support::*;

const LEN: u64 = 300 * KIB + 11;

fn setup(backend: Backend) -> (FaultOrigin, Gate) {
    let o = FaultOrigin::start();
    let g = Gate::start(GateConfig::new(backend).route("/", &o.origin_url()));
    (o, g)
}

/// Every line named `name` (any case), in order.
fn all<'a>(r: &'a http::Response, name: &str) -> Vec<&'a str> {
    r.headers
        .iter()
        .filter(|(k, _)| k.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_str())
        .collect()
}

/// Every request field named `name` the origin received on request `seen`.
fn sent<'a>(seen: &'a support::faulty::Seen, name: &str) -> Vec<&'a str> {
    seen.headers
        .iter()
        .filter(|(k, _)| k.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_str())
        .collect()
}

both_backends! {
    /// Fields the cache knows nothing about (a content digest, two `Link` lines, a
    /// `Content-Disposition`) are on the miss, the hit, a range hit and (but for the
    /// representation's `Content-*`) the multipart hit; `X-Hop`, named in `Connection`, and
    /// `Keep-Alive` are not.
    fn unknown_origin_fields_reach_the_client_on_the_miss_and_every_hit(backend) {
        let (o, g) = setup(backend);
        let data = generate("/f.bin", LEN);
        o.put(
            "/f.bin",
            Obj::new(data.clone(), "\"f1\"")
                .with_header("Cache-Control", "max-age=600")
                .with_header("X-Content-Sha256", "ab12")
                .with_header("Link", "<https://example.org/a>; rel=\"describedby\"")
                .with_header("Content-Disposition", "attachment; filename=f.bin")
                .with_header("Link", "<https://example.org/b>; rel=\"alternate\"")
                .with_header("Connection", "X-Hop")
                .with_header("X-Hop", "secret")
                .with_header("Keep-Alive", "timeout=5"),
        );
        let links = [
            "<https://example.org/a>; rel=\"describedby\"",
            "<https://example.org/b>; rel=\"alternate\"",
        ];
        for (round, range) in [(0, None), (1, None), (2, Some("bytes=10-99"))] {
            let extra: Vec<(&str, &str)> = range.iter().map(|r| ("Range", *r)).collect();
            let r = http::get(g.addr(), "/f.bin", &extra);
            let what = format!("round {round}");
            assert_eq!(r.status, if range.is_some() { 206 } else { 200 }, "{what}");
            assert_eq!(r.header("x-content-sha256"), Some("ab12"), "{what}");
            assert_eq!(all(&r, "link"), links, "{what}: both lines, in order");
            assert_eq!(
                r.header("content-disposition"),
                Some("attachment; filename=f.bin"),
                "{what}"
            );
            assert_eq!(r.header("x-hop"), None, "{what}: named in Connection");
            assert_eq!(r.header("keep-alive"), None, "{what}: hop-by-hop");
            assert_eq!(r.header("server"), Some("fault-origin"), "{what}: the origin's Server");
            let via = r.header("via").unwrap_or_default();
            assert!(via.starts_with("1.1 ") && via.contains("gatecache"), "{what}: Via {via:?}");
            if round == 0 {
                assert_same(&r.body, &data, "miss");
            } else {
                assert!(r.is_hit(), "{what}: {}", r.cache_status());
            }
        }
        let r = http::get(g.addr(), "/f.bin", &[("Range", "bytes=0-9,50-59")]);
        assert_eq!(r.status, 206);
        assert_eq!(r.header("x-content-sha256"), Some("ab12"));
        assert_eq!(all(&r, "link"), links);
        assert_eq!(
            r.header("content-disposition"),
            None,
            "representation metadata belongs to the parts (RFC 9110 §14.6)"
        );
        assert_eq!(o.requests("/f.bin"), 1);
    }
}

both_backends! {
    /// A 304 to a revalidation carries a new value of a field: the response and the next
    /// hit carry it (RFC 9111 §3.2, §4.3.4).
    fn a_304_updates_the_stored_fields(backend) {
        let (o, g) = setup(backend);
        let data = generate("/u.bin", LEN);
        let obj = |sum: &str| {
            Obj::new(data.clone(), "\"u1\"")
                .with_header("Cache-Control", "max-age=1")
                .with_header("X-Content-Sha256", sum)
        };
        o.put("/u.bin", obj("old"));
        let r = http::get(g.addr(), "/u.bin", &[]);
        assert_eq!(r.header("x-content-sha256"), Some("old"));
        std::thread::sleep(Duration::from_millis(2100));
        o.put("/u.bin", obj("new"));
        let r = http::get(g.addr(), "/u.bin", &[]);
        assert_eq!(r.status, 200);
        assert_same(&r.body, &data, "revalidated");
        assert_eq!(r.header("x-content-sha256"), Some("new"), "{}", r.cache_status());
        let seen = o.seen_for("/u.bin");
        assert_eq!(seen.last().map(|s| s.status), Some(304), "revalidated with a 304");
        let r = http::get(g.addr(), "/u.bin", &[]);
        assert!(r.is_hit(), "{}", r.cache_status());
        assert_eq!(all(&r, "x-content-sha256"), ["new"], "replaced, not added");
    }
}

both_backends! {
    /// The origin receives the client's own fields on a miss and on a pass-through:
    /// `User-Agent` and `X-Request-Id` as sent; not a field the client named in `Connection`.
    fn the_origin_receives_the_clients_end_to_end_fields(backend) {
        let (o, g) = setup(backend);
        let data = generate("/r.bin", LEN);
        o.put("/r.bin", Obj::new(data.clone(), "\"r1\"").with_header("Cache-Control", "max-age=600"));
        o.put("/p.bin", Obj::new(data.clone(), "\"p1\"").with_header("Cache-Control", "no-store"));
        for path in ["/r.bin", "/p.bin"] {
            let r = http::get(
                g.addr(),
                path,
                &[
                    ("User-Agent", "device-agent/7.1"),
                    ("X-Request-Id", "req-42"),
                    ("Connection", "X-Secret"),
                    ("X-Secret", "hop only"),
                ],
            );
            assert_eq!(r.status, 200, "{path}");
            assert_same(&r.body, &data, path);
            let seen = o.seen_for(path);
            let first = seen.first().expect("the origin was asked");
            assert_eq!(sent(first, "user-agent"), ["device-agent/7.1"], "{path}");
            assert_eq!(sent(first, "x-request-id"), ["req-42"], "{path}");
            assert!(sent(first, "x-secret").is_empty(), "{path}: named in Connection");
            // The client sent no `Accept`: none is made up for it.
            assert!(sent(first, "accept").is_empty(), "{path}: {:?}", sent(first, "accept"));
            let via = sent(first, "via");
            assert!(via.iter().any(|v| v.contains("gatecache")), "{path}: Via {via:?}");
        }
    }
}

both_backends! {
    /// `Cache-Control: max-age=1` on one line and `s-maxage=60` on another: a shared cache
    /// uses 60 (RFC 9110 §5.3 combines the lines; RFC 9111 §5.2.2.10), so two seconds later
    /// it is still a hit with no upstream request.
    fn repeated_cache_control_lines_combine(backend) {
        let (o, g) = setup(backend);
        let data = generate("/c.bin", LEN);
        o.put(
            "/c.bin",
            Obj::new(data.clone(), "\"c1\"")
                .with_header("Cache-Control", "max-age=1")
                .with_header("Cache-Control", "s-maxage=60"),
        );
        http::get(g.addr(), "/c.bin", &[]);
        std::thread::sleep(Duration::from_millis(2100));
        let r = http::get(g.addr(), "/c.bin", &[]);
        assert!(r.is_hit(), "{}", r.cache_status());
        assert_same(&r.body, &data, "hit");
        assert_eq!(o.requests("/c.bin"), 1);
        assert_eq!(r.header("cache-control"), Some("max-age=1, s-maxage=60"));
    }
}

both_backends! {
    /// Every response served from storage carries `Age`, `Age: 0` included (RFC 9111 §4).
    fn a_hit_carries_age_even_when_it_is_zero(backend) {
        let (o, g) = setup(backend);
        let data = generate("/a.bin", LEN);
        o.put("/a.bin", Obj::new(data, "\"a1\"").with_header("Cache-Control", "max-age=600"));
        http::get(g.addr(), "/a.bin", &[]);
        let r = http::get(g.addr(), "/a.bin", &[]);
        assert!(r.is_hit(), "{}", r.cache_status());
        let age: u64 = r.header("age").expect("Age on a hit").parse().expect("Age is a number");
        assert!(age < 5, "age {age}");
    }
}

both_backends! {
    /// Through a parent: one `Cache-Status` field, the parent's member first (RFC 9211 §2:
    /// the first member is the cache closest to the origin), on a miss and on a pass-through;
    /// a hit at the child is the child's alone.
    fn cache_status_lists_the_cache_closest_to_the_origin_first(backend) {
        let o = FaultOrigin::start();
        let parent = Gate::start(GateConfig::new(backend).route("/", &o.origin_url()));
        let child = Gate::start(
            GateConfig::new(backend)
                .route("/", &o.origin_url())
                .parents(&[parent.addr()]),
        );
        let data = generate("/cs.bin", LEN);
        o.put("/cs.bin", Obj::new(data.clone(), "\"cs\"").with_header("Cache-Control", "max-age=600"));
        o.put("/ns.bin", Obj::new(data.clone(), "\"ns\"").with_header("Cache-Control", "no-store"));
        let r = http::get(child.addr(), "/cs.bin", &[]);
        assert_same(&r.body, &data, "miss");
        let lines = all(&r, "cache-status");
        assert_eq!(lines.len(), 1, "one field: {lines:?}");
        assert_eq!(
            lines[0],
            "gatecache; fwd=miss; stored, gatecache; fwd=miss; stored",
            "the parent's member first"
        );
        let r = http::get(child.addr(), "/cs.bin", &[]);
        assert_eq!(all(&r, "cache-status"), ["gatecache; hit"], "a hit is the child's alone");
        let r = http::get(child.addr(), "/ns.bin", &[]);
        assert_same(&r.body, &data, "pass");
        let lines = all(&r, "cache-status");
        assert_eq!(lines.len(), 1, "one field: {lines:?}");
        let members: Vec<&str> = lines[0].split(", ").collect();
        assert_eq!(members.len(), 2, "the parent's and the child's: {lines:?}");
        let via = r.header("via").unwrap_or_default();
        assert_eq!(via.matches("gatecache").count(), 2, "both nodes in Via: {via}");
    }
}

both_backends! {
    /// `Transfer-Encoding` and `Content-Length` together: the coding frames the body and the
    /// length means nothing (RFC 9112 §6.3). The whole body reaches the client, never the first
    /// `Content-Length` bytes of it, and nothing cut is stored.
    fn a_body_framed_by_transfer_encoding_ignores_content_length(backend) {
        let (o, g) = setup(backend);
        let data = generate("/te", 30_000);
        o.put(
            "/te.bin",
            Obj::new(data.clone(), "\"te\"")
                .chunked()
                .with_header("Cache-Control", "max-age=600")
                .with_header("Content-Length", "3"),
        );
        for round in 0..2 {
            let r = http::get(g.addr(), "/te.bin", &[]);
            assert_eq!(r.status, 200, "round {round}");
            assert_same(&r.body, &data, &format!("round {round}"));
        }
    }
}

both_backends! {
    /// A field value with obs-text (bytes 0x80-0xFF, RFC 9110 §5.5: opaque to a recipient)
    /// reaches the client byte for byte, on the miss and on the hit.
    fn a_field_value_with_obs_text_comes_back_byte_for_byte(backend) {
        use std::io::{Read, Write};
        let (o, g) = setup(backend);
        o.put(
            "/obs.bin",
            Obj::new(b"x".to_vec(), "\"o\"")
                .with_header("Cache-Control", "max-age=600")
                .with_header("X-Obs", "caf\u{e9} \u{ff}"),
        );
        for round in 0..2 {
            let mut c = std::net::TcpStream::connect(g.addr()).unwrap();
            c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
            c.write_all(b"GET /obs.bin HTTP/1.1\r\nHost: gatecache.test\r\nConnection: close\r\n\r\n")
                .unwrap();
            let mut got = Vec::new();
            c.read_to_end(&mut got).unwrap();
            // Field names are case-insensitive (RFC 9110 §5.1): the value's bytes are the test.
            let want = b"x-obs: caf\xe9 \xff\r\n";
            let lower = got.to_ascii_lowercase();
            assert!(
                lower.windows(want.len()).any(|w| w == want),
                "round {round}: {}",
                String::from_utf8_lossy(&got)
            );
        }
    }
}
