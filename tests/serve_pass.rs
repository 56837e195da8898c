//! What is not for the cache goes through it untouched and is never stored: responses marked
//! `no-store` or `private` or varying on a request header, bodies of unknown length (relayed
//! chunked), requests with credentials, and unsafe methods, whose success drops the stored
//! object (RFC 9111 §4.4).

mod support;

use support::curl::curl;
use support::data::{assert_same, generate};
use support::faulty::{FaultOrigin, Obj};
use support::gate::{Gate, GateConfig};
use support::http::{self, Conn};
use support::*;

const LEN: u64 = 200 * KIB + 7;
/// Credentials: the cache is set never to handle them (RFC 9211 §2.2 `bypass`).
const BYPASS: &str = "gatecache; fwd=bypass";
/// A key remembered as not storable: a miss, not stored (RFC 9211 §2.2).
const HIT_FOR_PASS: &str = "gatecache; fwd=miss; detail=hit-for-pass";

fn setup(backend: Backend) -> (FaultOrigin, Gate) {
    let o = FaultOrigin::start();
    let g = Gate::start(GateConfig::new(backend).route("/", &o.origin_url()));
    (o, g)
}

both_backends! {
    /// no-store, private and Vary: User-Agent are relayed (whole and by range) and every
    /// request reaches the origin; Vary: Accept-Encoding alone is cached.
    fn not_storable_is_passed_through(backend) {
        let (o, g) = setup(backend);
        for (path, cc, vary) in [
            ("/nostore.bin", Some("no-store"), None),
            ("/private.bin", Some("private, max-age=600"), None),
            ("/vary.bin", Some("max-age=600"), Some("User-Agent")),
        ] {
            let data = generate(path, LEN);
            let mut ob = Obj::new(data.clone(), "\"p1\"");
            if let Some(cc) = cc {
                ob = ob.with_header("Cache-Control", cc);
            }
            if let Some(v) = vary {
                ob = ob.with_header("Vary", v);
            }
            o.put(path, ob);
            for round in 0..3 {
                let r = http::get(g.addr(), path, &[]);
                assert_eq!(r.status, 200, "{path}");
                assert_same(&r.body, &data, path);
                if round > 0 {
                    assert_eq!(r.cache_status(), HIT_FOR_PASS, "{path}");
                }
            }
            let r = http::get(g.addr(), path, &[("Range", "bytes=100-199")]);
            assert_eq!(r.status, 206, "{path}");
            assert_eq!(r.header("content-range"), Some(format!("bytes 100-199/{LEN}").as_str()));
            assert_same(&r.body, &data[100..200], path);
            // Four requests, four upstream requests: the first, a miss, is relayed as it
            // arrives rather than asked for again (issue 12).
            assert_eq!(o.requests(path), 4, "{path}: every request reached the origin once");
        }
        let data = generate("/ae.bin", LEN);
        o.put("/ae.bin", Obj::new(data.clone(), "\"a\"").with_header("Vary", "Accept-Encoding"));
        http::get(g.addr(), "/ae.bin", &[]);
        let r = http::get(g.addr(), "/ae.bin", &[("Accept-Encoding", "gzip")]);
        assert!(r.is_hit(), "{}", r.cache_status());
        assert_same(&r.body, &data, "Vary: Accept-Encoding");
        let mut g = g;
        g.stop(support::gate::Stop::Term);
        let keys: Vec<String> = g.inspect().into_iter().map(|(k, _, _)| k).collect();
        assert_eq!(keys.len(), 1, "only the cacheable object is stored: {keys:?}");
    }
}

both_backends! {
    /// A body without Content-Length is relayed chunked to HTTP/1.1 clients (curl checks the
    /// framing) and close-delimited to HTTP/1.0 ones; the connection stays usable after it.
    fn unknown_length_is_relayed(backend) {
        let (o, g) = setup(backend);
        let data = generate("chunked", LEN);
        o.put("/c.bin", Obj::new(data.clone(), "\"c\"").chunked());
        let c = curl(&[&g.url("/c.bin")]);
        c.ok();
        assert_eq!(c.status, 200);
        assert_eq!(c.header("transfer-encoding"), Some("chunked"));
        assert_same(&c.body, &data, "chunked via curl");

        let mut conn = Conn::open(g.addr());
        conn.send(http::get_req("/c.bin", &[]));
        let r = conn.read_response(false).unwrap();
        assert_same(&r.body, &data, "chunked, raw client");
        // The origin ignores Range here: its 200 is relayed as it is.
        conn.send(http::get_req("/c.bin", &[("Range", "bytes=0-9")]));
        let r = conn.read_response(false).unwrap();
        assert_eq!(r.status, 200);
        assert_same(&r.body, &data, "the same connection afterwards");

        let mut c10 = Conn::open(g.addr());
        c10.send("GET /c.bin HTTP/1.0\r\n\r\n");
        let r = c10.read_response(false).unwrap();
        assert_eq!(r.header("transfer-encoding"), None);
        assert_same(&r.body, &data, "HTTP/1.0, close-delimited");
        assert!(r.closes());
    }
}

both_backends! {
    /// A request with credentials is passed through (the header reaches the origin) and what
    /// it got is not served to anyone else.
    fn credentials_are_never_cached(backend) {
        let (o, g) = setup(backend);
        let data = generate("auth", LEN);
        o.put("/a.bin", Obj::new(data.clone(), "\"a\"").with_header("Cache-Control", "max-age=600"));
        let r = http::get(g.addr(), "/a.bin", &[("Authorization", "Bearer t0ken")]);
        assert_eq!(r.cache_status(), BYPASS);
        assert_same(&r.body, &data, "with credentials");
        assert_eq!(o.seen_for("/a.bin")[0].authorization.as_deref(), Some("Bearer t0ken"));
        let r = http::get(g.addr(), "/a.bin", &[]);
        assert_eq!(r.cache_status(), "gatecache; fwd=miss; stored");
        assert_eq!(o.seen_for("/a.bin")[1].authorization, None);
    }
}

both_backends! {
    /// POST, PUT, DELETE go upstream with their bodies; success drops the stored object, so
    /// the next GET is a miss.
    fn unsafe_methods_pass_and_invalidate(backend) {
        let (o, g) = setup(backend);
        let data = generate("inval", LEN);
        o.put("/doc.bin", Obj::new(data.clone(), "\"d\"").with_header("Cache-Control", "max-age=600"));
        http::get(g.addr(), "/doc.bin", &[]);
        assert!(http::get(g.addr(), "/doc.bin", &[]).is_hit());
        for (m, body) in [("POST", "a=1&b=2"), ("PUT", "new content"), ("DELETE", "")] {
            let r = http::fetch_with_body(
                g.addr(),
                m,
                "/doc.bin",
                &[("Content-Length", &body.len().to_string()), ("Content-Type", "text/plain")],
                body.as_bytes(),
            );
            assert_eq!(r.status, 200, "{m}: {}", r.body_text());
            assert_eq!(
                r.body_text(),
                format!("{m} /doc.bin took {} bytes\n", body.len()),
            );
            let seen = o.seen_for("/doc.bin").pop().unwrap();
            assert_eq!((seen.method.as_str(), seen.body.as_slice()), (m, body.as_bytes()));
            let r = http::get(g.addr(), "/doc.bin", &[]);
            assert_eq!(r.cache_status(), "gatecache; fwd=miss; stored", "after {m}");
            assert_same(&r.body, &data, m);
        }
        // Too large a body: 413, and the origin never sees it.
        let before = o.seen().len();
        let mut c = Conn::open(g.addr());
        c.send("POST /doc.bin HTTP/1.1\r\nHost: a\r\nContent-Length: 2000000\r\n\r\n");
        let r = c.read_response(false).unwrap();
        assert_eq!(r.status, 413);
        assert_eq!(o.seen().len(), before);
    }
}
