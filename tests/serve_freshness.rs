//! Freshness (RFC 9111) end to end: stale responses are revalidated with the stored
//! validators (a 304 refreshes them, no body refetched), a changed object heals, the client's
//! Cache-Control is honoured, stale content is served while the origin is down or being
//! refreshed, and operator rules (`immutable`, `[[rule]]`) override the origin.

mod support;

use std::time::{Duration, Instant};

use support::data::{assert_same, generate};
use support::faulty::{Fault, FaultOrigin, Obj};
use support::gate::{Gate, GateConfig};
use support::http;
use support::*;

const LEN: u64 = 300 * KIB;

fn setup(extra: &[&str]) -> (FaultOrigin, Gate) {
    let o = FaultOrigin::start();
    let mut cfg = GateConfig::new(Backend::Uring).route("/", &o.origin_url());
    for line in extra {
        cfg = cfg.set(line);
    }
    (o, Gate::start(cfg))
}

fn obj(name: &str, etag: &str, cc: &str) -> (Vec<u8>, Obj) {
    let data = generate(name, LEN);
    let o = Obj::new(data.clone(), etag).with_header("Cache-Control", cc);
    (data, o)
}

/// Sleeps until a response stored now with `max-age=1` is stale (ages are whole seconds).
fn let_expire() {
    std::thread::sleep(Duration::from_millis(2100));
}

#[test]
fn stale_is_revalidated_and_a_304_keeps_the_body() {
    let (o, g) = setup(&[]);
    let (data, ob) = obj("fresh-a", "\"v1\"", "max-age=1");
    o.put("/a.bin", ob);
    let r = http::get(g.addr(), "/a.bin", &[]);
    assert_eq!(r.cache_status(), "gatecache; fwd=miss; stored");
    assert_eq!(r.header("cache-control"), Some("max-age=1"));
    let r = http::get(g.addr(), "/a.bin", &[]);
    assert!(r.is_hit(), "{}", r.cache_status());
    assert_eq!(o.requests("/a.bin"), 1);

    let_expire();
    // Same version, new freshness: the 304 carries it and it replaces the stored one.
    let (_, ob) = obj("fresh-a", "\"v1\"", "max-age=60");
    o.put("/a.bin", ob);
    let r = http::get(g.addr(), "/a.bin", &[]);
    assert_eq!(r.status, 200);
    assert_same(&r.body, &data, "revalidated body");
    assert!(
        r.header("cache-status").unwrap().contains("fwd-status=304"),
        "{:?}",
        r.header("cache-status")
    );
    let seen = o.answered_for("/a.bin");
    assert_eq!(seen.len(), 2, "{seen:?}");
    assert_eq!(seen[1].if_none_match.as_deref(), Some("\"v1\""));
    assert_eq!(seen[1].status, 304);
    assert_eq!(o.bytes("/a.bin"), LEN, "the body crossed once");
    // Refreshed: fresh for a minute now.
    let r = http::get(g.addr(), "/a.bin", &[]);
    assert!(r.is_hit(), "{}", r.cache_status());
    assert_eq!(r.header("cache-control"), Some("max-age=60"));
    assert_eq!(o.requests("/a.bin"), 2);
}

#[test]
fn a_304_without_date_refreshes_the_age() {
    // The first answer is dated an hour back (so the object is an hour old when stored);
    // the 304 has no Date: the response time stands for it, and the object is young again.
    let (o, g) = setup(&[]);
    let hour_ago =
        httpdate::fmt_http_date(std::time::SystemTime::now() - Duration::from_secs(3600));
    let (_, ob) = obj("nodate", "\"v1\"", "max-age=1800");
    o.put("/d.bin", ob.with_header("Date", &hour_ago));
    let r = http::get(g.addr(), "/d.bin", &[]);
    assert_eq!(r.status, 200);
    let r = http::get(g.addr(), "/d.bin", &[]);
    assert!(
        r.header("cache-status").unwrap().contains("fwd-status=304"),
        "stale at once"
    );
    let (_, ob) = obj("nodate", "\"v1\"", "max-age=1800");
    o.put("/d.bin", ob);
    let r = http::get(g.addr(), "/d.bin", &[]);
    assert!(r.header("cache-status").unwrap().contains("fwd-status=304"));
    let before = o.requests("/d.bin");
    let r = http::get(g.addr(), "/d.bin", &[]);
    assert!(r.is_hit(), "fresh after the 304: {}", r.cache_status());
    assert_eq!(o.requests("/d.bin"), before);
}

#[test]
fn changed_object_heals_on_revalidation() {
    let (o, g) = setup(&[]);
    let (_, ob) = obj("heal-old", "\"v1\"", "max-age=1");
    o.put("/h.bin", ob);
    assert_eq!(http::get(g.addr(), "/h.bin", &[]).status, 200);
    let (new, ob) = obj("heal-new", "\"v2\"", "max-age=60");
    o.put("/h.bin", ob);
    let_expire();
    let r = http::get(g.addr(), "/h.bin", &[]);
    assert_eq!(r.status, 200);
    assert_same(&r.body, &new, "the new version");
    assert_eq!(r.header("etag"), Some("\"v2\""));
    assert_eq!(r.cache_status(), "gatecache; fwd=stale; stored");
    let r = http::get(g.addr(), "/h.bin", &[("Range", "bytes=1000-1999")]);
    assert!(r.is_hit(), "{}", r.cache_status());
    assert_same(&r.body, &new[1000..2000], "a range of the new version");
    support::settle_commits();
    let mut g = g;
    g.stop(support::gate::Stop::Term);
    let (clean, report) = g.verify();
    assert!(clean, "{report}");
    let objs = g.inspect();
    assert_eq!(objs.len(), 1, "{objs:?}");
}

#[test]
fn client_cache_control() {
    let (o, g) = setup(&[]);
    let (data, ob) = obj("client-cc", "\"v1\"", "max-age=3600");
    o.put("/c.bin", ob);
    assert_eq!(http::get(g.addr(), "/c.bin", &[]).status, 200);
    for (name, value) in [
        ("Cache-Control", "no-cache"),
        ("Cache-Control", "max-age=0"),
        ("Pragma", "no-cache"),
    ] {
        let before = o.requests("/c.bin");
        let r = http::get(g.addr(), "/c.bin", &[(name, value)]);
        assert_same(&r.body, &data, value);
        assert_eq!(o.requests("/c.bin"), before + 1, "{name}: {value}");
        let last = o.answered_for("/c.bin").pop().unwrap();
        assert_eq!(last.status, 304, "{name}: {value}");
    }
    // A fresh answer is fine for max-age=60, and only-if-cached never goes upstream.
    let before = o.requests("/c.bin");
    let r = http::get(g.addr(), "/c.bin", &[("Cache-Control", "max-age=60")]);
    assert!(r.is_hit(), "{}", r.cache_status());
    let r = http::get(g.addr(), "/c.bin", &[("Cache-Control", "only-if-cached")]);
    assert!(r.is_hit());
    let r = http::get(
        g.addr(),
        "/other.bin",
        &[("Cache-Control", "only-if-cached")],
    );
    assert_eq!(r.status, 504);
    assert_eq!(o.requests("/c.bin"), before);
    assert_eq!(o.requests("/other.bin"), 0);
}

#[test]
fn stale_if_origin_unreachable_but_not_if_must_revalidate() {
    let (o, g) = setup(&[]);
    let (data, ob) = obj("down-a", "\"v1\"", "max-age=1");
    o.put("/a.bin", ob);
    let (_, ob) = obj("down-b", "\"v1\"", "max-age=1, must-revalidate");
    o.put("/b.bin", ob);
    assert_eq!(http::get(g.addr(), "/a.bin", &[]).status, 200);
    assert_eq!(http::get(g.addr(), "/b.bin", &[]).status, 200);
    drop(o); // the origin is gone: connections are refused
    let_expire();
    let r = http::get(g.addr(), "/a.bin", &[]);
    assert_eq!(r.status, 200);
    assert_same(&r.body, &data, "stale while the origin is down");
    assert!(
        r.header("cache-status").unwrap().contains("detail=stale"),
        "{:?}",
        r.header("cache-status")
    );
    assert!(
        r.header("age")
            .is_some_and(|a| a.parse::<u64>().unwrap() >= 2)
    );
    let r = http::get(g.addr(), "/b.bin", &[]);
    assert_eq!(r.status, 502, "must-revalidate: {}", r.body_text());
}

#[test]
fn stale_if_error_on_5xx() {
    let (o, g) = setup(&[]);
    let (data, ob) = obj("err-a", "\"v1\"", "max-age=1, stale-if-error=600");
    o.put("/a.bin", ob);
    let (_, ob) = obj("err-b", "\"v1\"", "max-age=1");
    o.put("/b.bin", ob);
    assert_eq!(http::get(g.addr(), "/a.bin", &[]).status, 200);
    assert_eq!(http::get(g.addr(), "/b.bin", &[]).status, 200);
    o.set_fault("/a.bin", Fault::Status(503));
    o.set_fault("/b.bin", Fault::Status(503));
    let_expire();
    let r = http::get(g.addr(), "/a.bin", &[]);
    assert_eq!(r.status, 200);
    assert_same(&r.body, &data, "stale-if-error");
    // Without stale-if-error the origin's 5xx is the answer, relayed (RFC 9111 §4.3.3).
    let r = http::get(g.addr(), "/b.bin", &[]);
    assert_eq!(r.status, 503);
    assert_eq!(r.body_text(), "fault-origin says 503\n");
}

#[test]
fn stale_while_revalidate_answers_at_once() {
    let (o, g) = setup(&[]);
    let (data, ob) = obj("swr", "\"v1\"", "max-age=1, stale-while-revalidate=60");
    o.put("/s.bin", ob);
    assert_eq!(http::get(g.addr(), "/s.bin", &[]).status, 200);
    // The origin now takes a second per body byte: the stale answer must not wait for it.
    // Its next answer makes the object fresh for a minute.
    let (_, ob) = obj("swr", "\"v1\"", "max-age=60");
    o.put(
        "/s.bin",
        ob.with_fault(Fault::Slow {
            chunk: 1,
            pause: Duration::from_secs(1),
        }),
    );
    let_expire();
    let t0 = Instant::now();
    let r = http::get(g.addr(), "/s.bin", &[]);
    assert_same(&r.body, &data, "stale while revalidating");
    assert!(r.header("cache-status").unwrap().contains("detail=stale"));
    assert!(
        t0.elapsed() < Duration::from_millis(900),
        "{:?}",
        t0.elapsed()
    );
    // The revalidation went out in the background (a 304: Slow only paces bodies).
    let t0 = Instant::now();
    while o.seen_for("/s.bin").len() < 2 && t0.elapsed() < Duration::from_secs(5) {
        std::thread::sleep(Duration::from_millis(20));
    }
    let seen = o.answered_for("/s.bin");
    assert_eq!(seen.len(), 2, "{seen:?}");
    assert_eq!(seen[1].if_none_match.as_deref(), Some("\"v1\""));
    std::thread::sleep(Duration::from_millis(200));
    let r = http::get(g.addr(), "/s.bin", &[]);
    assert!(r.is_hit(), "refreshed: {}\n{}", r.cache_status(), g.log());
}

#[test]
fn operator_rules_override_the_origin() {
    let o = FaultOrigin::start();
    let g = Gate::start(
        GateConfig::new(Backend::Uring)
            .origin("origin.test", o.addr())
            .origin("pkgs.test", o.addr())
            .origin("du.test", o.addr())
            .set("[[rule]]\nhost = \"du.test\"\npath = \"*\"\nimmutable = true")
            .set("[[rule]]\npath = \"*/InRelease\"\nmax_age = \"0s\"")
            .set("[[rule]]\nhost = \"pkgs.test\"\npath = \"/pool/*\"\nimmutable = true"),
    );
    for (p, cc) in [
        ("/blob.bin", "no-cache"),
        ("/dists/InRelease", "max-age=3600"),
        ("/pool/a.deb", "no-cache"),
    ] {
        let (_, ob) = obj(p, "\"v1\"", cc);
        o.put(p, ob);
    }
    let get = |host: &str, p: &str| {
        let r = http::get(g.addr(), &format!("{p}?cacheHostOrigin={host}"), &[]);
        assert_eq!(r.status, 200, "{host}{p}");
        r
    };
    // Immutable: the origin's no-cache is overridden, no revalidation.
    get("du.test", "/blob.bin");
    assert!(get("du.test", "/blob.bin").is_hit());
    get("pkgs.test", "/pool/a.deb");
    assert!(get("pkgs.test", "/pool/a.deb").is_hit());
    assert_eq!(o.requests("/pool/a.deb"), 1);
    assert_eq!(o.requests("/blob.bin"), 1);
    // max_age 0 overrides the origin's hour: every request checks with the origin.
    get("pkgs.test", "/dists/InRelease");
    let r = get("pkgs.test", "/dists/InRelease");
    assert!(r.header("cache-status").unwrap().contains("fwd-status=304"));
    assert_eq!(o.requests("/dists/InRelease"), 2);
    // Without a rule, the origin's no-cache means a revalidation per request.
    get("origin.test", "/blob.bin");
    assert_eq!(o.requests("/blob.bin"), 2);
    let r = get("origin.test", "/blob.bin");
    assert!(r.header("cache-status").unwrap().contains("fwd-status=304"));
    assert_eq!(o.requests("/blob.bin"), 3);
}
