//! Serving basics against the real binary: a cold GET streams the origin's bytes and stores
//! them, the next GET is a hit with no origin request; HEAD and conditional requests; routing
//! by `cacheHostOrigin`, absolute-form and `Host`, and 403 for origins not allowed.

mod support;

use support::curl::curl;
use support::data::{self, F1K, F1M3, F16M, F100K, assert_same};
use support::gate::{Gate, GateConfig};
use support::http::{self, Conn};
use support::nginx::{Nginx, body_bytes};
use support::*;

const MISS: &str = "gatecache; fwd=miss; stored";
const HIT: &str = "gatecache; hit";

both_backends! {
    /// curl GET of objects smaller than a block, of several blocks and of 16 MiB: the bytes
    /// are the origin's and one origin request carried exactly them; the second GET is a hit
    /// and the origin is not asked again.
    fn cold_get_then_hit(backend) {
        let (n, g) = nginx_and_gate(backend);
        for f in [F1K, F100K, F1M3, F16M] {
            let path = format!("/{}", f.0);
            let want = data::content(f);
            let c = curl(&[&g.url(&path)]);
            c.ok();
            assert_eq!(c.status, 200, "{path}");
            assert_same(&c.body, &want, &path);
            assert_eq!(c.header("content-length"), Some(f.1.to_string().as_str()));
            assert_eq!(c.cache_status(), MISS, "{path}: first GET");
            let log = n.wait_log(|l| body_bytes(l) >= f.1 && l.iter().any(|h| h.uri == path));
            let mine: Vec<_> = log.iter().filter(|h| h.uri == path).collect();
            assert_eq!(mine.len(), 1, "{path}: origin requests {mine:?}");
            assert_eq!(mine[0].body_bytes, f.1, "{path}: origin bytes");
        }
        let before = n.settled_log();
        for f in [F1K, F100K, F1M3, F16M] {
            let path = format!("/{}", f.0);
            wait_hit(&g, &path, &[]);
            let c = curl(&[&g.url(&path)]);
            c.ok();
            assert_eq!(c.status, 200);
            assert_same(&c.body, &data::content(f), &path);
            assert_eq!(c.cache_status(), HIT, "{path}: second GET");
        }
        assert_eq!(n.settled_log(), before, "hits must not reach the origin");
        assert_eq!(g.stat("upstream_requests"), 4);
    }
}

fn nginx_validators(n: &Nginx, path: &str) -> (String, String) {
    let r = http::head(n.addr(), path, &[]);
    (
        r.header("etag").expect("nginx ETag").to_string(),
        r.header("last-modified")
            .expect("nginx Last-Modified")
            .to_string(),
    )
}

both_backends! {
    /// HEAD gives the object's headers and no body, cold and warm; If-None-Match with the
    /// ETag and If-Modified-Since with the Last-Modified give 304 (no body, validators kept),
    /// other validators the full 200.
    fn head_and_conditionals(backend) {
        let (n, g) = nginx_and_gate(backend);
        let (etag, lm) = nginx_validators(&n, "/100k.bin");
        let want = data::content(F100K);

        // Cold HEAD: raw (no body may follow: the next response on the connection must parse).
        let mut c = Conn::open(g.addr());
        c.send(http::request("HEAD", "/100k.bin", &[]));
        c.send(http::get_req("/1k.bin", &[]));
        let h = c.read_response(true).unwrap();
        assert_eq!(h.status, 200);
        assert_eq!(h.content_length(), Some(F100K.1));
        assert_eq!(h.header("etag"), Some(etag.as_str()));
        assert_eq!(h.header("last-modified"), Some(lm.as_str()));
        assert_eq!(h.header("accept-ranges"), Some("bytes"));
        assert_eq!(h.cache_status(), MISS);
        let next = c.read_response(false).unwrap();
        assert_eq!(next.status, 200, "the response after a HEAD");
        assert_same(&next.body, &data::content(F1K), "GET after HEAD");

        // curl -I agrees (it writes the head where the body would go: no body was read).
        let ci = curl(&["-I", &g.url("/100k.bin")]);
        ci.ok();
        assert_eq!(ci.status, 200);
        assert!(ci.body.starts_with(b"HTTP/1.1 200"));
        assert_eq!(ci.header("content-length"), Some("102400"));

        // HEAD with a Range: the 206 head, no body.
        let hr = http::head(g.addr(), "/100k.bin", &[("Range", "bytes=100-199")]);
        assert_eq!(hr.status, 206);
        assert_eq!(hr.content_length(), Some(100));
        assert_eq!(hr.header("content-range"), Some("bytes 100-199/102400"));

        // Warm it, then conditionals.
        let full = http::get(g.addr(), "/100k.bin", &[]);
        assert_same(&full.body, &want, "GET");
        wait_hit(&g, "/100k.bin", &[]);
        let origin_before = n.settled_log();

        let r = http::get(g.addr(), "/100k.bin", &[("If-None-Match", &etag)]);
        assert_eq!(r.status, 304, "If-None-Match: the ETag");
        assert!(r.body.is_empty());
        assert_eq!(r.header("etag"), Some(etag.as_str()));
        let r = http::get(g.addr(), "/100k.bin", &[("If-None-Match", &format!("\"x\", W/{etag}"))]);
        assert_eq!(r.status, 304, "If-None-Match: a list with the weak form");
        let r = http::get(g.addr(), "/100k.bin", &[("If-None-Match", "*")]);
        assert_eq!(r.status, 304, "If-None-Match: *");
        let r = http::get(g.addr(), "/100k.bin", &[("If-None-Match", "\"other\"")]);
        assert_eq!(r.status, 200, "If-None-Match: another ETag");
        assert_same(&r.body, &want, "If-None-Match other");
        let r = http::get(g.addr(), "/100k.bin", &[("If-Modified-Since", &lm)]);
        assert_eq!(r.status, 304, "If-Modified-Since: Last-Modified");
        assert!(r.body.is_empty());
        let r = http::get(
            g.addr(),
            "/100k.bin",
            &[("If-Modified-Since", "Thu, 01 Jan 1998 00:00:00 GMT")],
        );
        assert_eq!(r.status, 200, "If-Modified-Since: long before");
        assert_same(&r.body, &want, "IMS old");
        let r = http::head(g.addr(), "/100k.bin", &[("If-None-Match", &etag)]);
        assert_eq!(r.status, 304, "HEAD + If-None-Match");
        let r = http::head(g.addr(), "/100k.bin", &[]);
        assert_eq!((r.status, r.content_length()), (200, Some(F100K.1)));
        assert!(r.is_hit(), "warm HEAD: {}", r.cache_status());
        assert_eq!(n.settled_log(), origin_before, "conditionals on a warm object");

        // curl's own conditional flags.
        let z = curl(&["-H", &format!("If-None-Match: {etag}"), &g.url("/100k.bin")]);
        z.ok();
        assert_eq!(z.status, 304);
        assert!(z.body.is_empty());

        // A conditional on a cold object.
        let (etag1, _) = nginx_validators(&n, "/1m3.bin");
        let r = http::get(g.addr(), "/1m3.bin", &[("If-None-Match", &etag1)]);
        assert_eq!(r.status, 304, "cold If-None-Match");
        assert!(r.body.is_empty());
        assert_eq!(r.cache_status(), MISS);
    }
}

fn origins_gate(backend: Backend, n: &Nginx) -> Gate {
    Gate::start(
        GateConfig::new(backend)
            .origin("*.example.org", n.addr())
            .origin_canonical("a.mirror.test", n.addr(), "mirror")
            .origin_canonical("b.mirror.test", n.addr(), "mirror"),
    )
}

both_backends! {
    /// Routing: the Delivery Optimization `cacheHostOrigin` form (alone, or after and among
    /// other query parameters), absolute-form (apt's proxy style) and `Host`. The origin gets
    /// the right Host, path and query (without `cacheHostOrigin`); canonical names share one
    /// cached copy.
    fn routing_to_allowed_origins(backend) {
        let n = Nginx::start();
        let g = origins_gate(backend, &n);
        let ua = "User-Agent: Microsoft-Delivery-Optimization-Lite/10.0.0.1";
        // (curl arguments, file, path and query at the origin, Host at the origin)
        type Case<'a> = (Vec<&'a str>, (&'a str, u64), &'a str, &'a str);
        let cases: &[Case] = &[
            (
                vec!["-H", ua, "URL/1k.bin?cacheHostOrigin=files.example.org"],
                F1K,
                "/1k.bin",
                "files.example.org",
            ),
            (
                vec!["URL/100k.bin?a=1&cacheHostOrigin=dl.example.org"],
                F100K,
                "/100k.bin?a=1",
                "dl.example.org",
            ),
            (
                vec!["URL/1m3.bin?a=1&cacheHostOrigin=x.y.example.org&b=2"],
                F1M3,
                "/1m3.bin?a=1&b=2",
                "x.y.example.org",
            ),
            (
                vec!["-x", "PROXY", "http://mirror.example.org/1k.bin?suite=stable"],
                F1K,
                "/1k.bin?suite=stable",
                "mirror.example.org",
            ),
            (
                vec!["-H", "Host: cdn.example.org:8080", "URL/100k.bin"],
                F100K,
                "/100k.bin",
                "cdn.example.org",
            ),
        ];
        for (args, file, uri, host) in cases {
            let args: Vec<String> = args
                .iter()
                .map(|a| {
                    a.replace("URL", &g.url(""))
                        .replace("PROXY", &format!("http://127.0.0.1:{}", g.port))
                })
                .collect();
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            let c = curl(&args);
            c.ok();
            assert_eq!(c.status, 200, "{args:?}");
            assert_same(&c.body, &data::content(*file), &format!("{args:?}"));
            let log = n.wait_log(|l| l.iter().any(|h| h.uri == *uri));
            let hit = log
                .iter()
                .find(|h| h.uri == *uri)
                .unwrap_or_else(|| panic!("{args:?}: origin never saw {uri}: {log:?}"));
            assert_eq!(hit.host, *host, "{args:?}: Host at the origin");
            assert!(
                log.iter().all(|h| !h.uri.contains("cacheHostOrigin")),
                "cacheHostOrigin leaked upstream: {log:?}"
            );
        }
        // Two names with one canonical name: one cached copy.
        let a = curl(&[&g.url("/1m3.bin?cacheHostOrigin=a.mirror.test")]);
        a.ok();
        assert_same(&a.body, &data::content(F1M3), "a.mirror.test");
        wait_hit(&g, "/1m3.bin?cacheHostOrigin=a.mirror.test", &[]);
        let before = n.settled_log();
        let b = curl(&[&g.url("/1m3.bin?cacheHostOrigin=b.mirror.test")]);
        b.ok();
        assert_same(&b.body, &data::content(F1M3), "b.mirror.test");
        assert_eq!(b.cache_status(), HIT, "canonical alias");
        assert_eq!(n.settled_log(), before, "the alias must not reach the origin");
    }
}

both_backends! {
    /// An origin not allowed is a 403 with a one-line body naming the host, whatever form
    /// names it; nothing reaches any origin, and the connection stays usable (a 4xx bans the
    /// cache for that origin only, so the client goes on with others).
    fn origin_not_allowed_is_403(backend) {
        let n = Nginx::start();
        let g = origins_gate(backend, &n);
        // (target, headers, host named in the 403)
        type Case<'a> = (&'a str, &'a [(&'a str, &'a str)], &'a str);
        let cases: &[Case] = &[
            ("/1k.bin?cacheHostOrigin=evil.test", &[], "evil.test"),
            ("/1k.bin?a=1&cacheHostOrigin=EVIL.test", &[], "evil.test"),
            ("http://evil.test/1k.bin", &[("Host", "evil.test")], "evil.test"),
            ("/1k.bin", &[("Host", "evil.test")], "evil.test"),
            ("/1k.bin", &[("Host", "evil.test:8080")], "evil.test"),
            ("/1k.bin", &[("Host", "example.org")], "example.org"),
            (
                "/1k.bin?cacheHostOrigin=files.example.org.evil.test",
                &[],
                "files.example.org.evil.test",
            ),
            ("http://notexample.org/1k.bin", &[("Host", "x")], "notexample.org"),
        ];
        let mut c = Conn::open(g.addr());
        for (target, headers, host) in cases {
            c.send(http::get_req(target, headers));
            let r = c.read_response(false).unwrap();
            assert_eq!(r.status, 403, "{target} {headers:?}");
            assert_eq!(r.body_text(), format!("origin not allowed: {host}\n"), "{target}");
            assert!(!r.closes(), "a 403 keeps the connection");
        }
        // curl sees the same.
        let k = curl(&[&g.url("/1k.bin?cacheHostOrigin=evil.test")]);
        assert_eq!(k.status, 403);
        assert_eq!(String::from_utf8_lossy(&k.body), "origin not allowed: evil.test\n");
        let k = curl(&["-x", &format!("http://127.0.0.1:{}", g.port), "http://evil.test/x"]);
        assert_eq!(k.status, 403);
        // The same connection still serves an allowed origin.
        c.send(http::get_req("/1k.bin?cacheHostOrigin=files.example.org", &[]));
        let r = c.read_response(false).unwrap();
        assert_eq!(r.status, 200);
        assert_same(&r.body, &data::content(F1K), "after 403s");
        let log = n.settled_log();
        assert_eq!(log.len(), 1, "only the allowed request reaches the origin: {log:?}");
    }
}

both_backends! {
    /// A GET repeated right after the first one completed is answered from the cache with no
    /// upstream request — and says so: `Cache-Status: gatecache; hit`.
    fn immediate_repeat_is_reported_hit(backend) {
        let (_n, g) = nginx_and_gate(backend);
        let mut wrong = Vec::new();
        for i in 0..40 {
            let path = format!("/1m3.bin?again={i}");
            let first = http::get(g.addr(), &path, &[]);
            assert_eq!(first.cache_status(), MISS);
            let fetches = g.stat("upstream_requests");
            let again = http::get(g.addr(), &path, &[]);
            assert_same(&again.body, &data::content(F1M3), &path);
            assert_eq!(g.stat("upstream_requests"), fetches, "{path}: went upstream");
            if !again.is_hit() {
                wrong.push(format!("{path}: {}", again.cache_status()));
            }
        }
        assert!(wrong.is_empty(), "served from the cache but not reported a hit:\n{}", wrong.join("\n"));
    }
}
