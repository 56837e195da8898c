//! Upstream faults never put a wrong byte in the cache or in a client's hands: a body reset
//! or cut half way, a wrong Content-Range, error statuses, a dead origin, a slow origin, and
//! an object that changes (content and ETag) between requests. After each, the store is
//! checked with `gatecache verify`.

mod support;

use std::time::Duration;

use support::curl::curl;
use support::data::{assert_same, generate};
use support::faulty::{Fault, FaultOrigin, Obj};
use support::gate::{Gate, GateConfig, Stop};
use support::http::{self, Conn, Response};
use support::*;

const LEN: u64 = MIB + 3;

fn setup(backend: Backend) -> (FaultOrigin, Gate) {
    let o = FaultOrigin::start();
    let g = Gate::start(
        GateConfig::new(backend)
            .route("/", &o.origin_url())
            .read_timeout("5s"),
    );
    (o, g)
}

/// A response to a request whose upstream failed: a clean 502, or a 200/206 whose body is
/// cut short — and every byte that did arrive is right.
#[track_caller]
fn failed_cleanly(r: &Response, want: &[u8], what: &str) {
    match r.status {
        502 | 504 => {}
        200 | 206 => {
            assert!(
                !r.complete,
                "{what}: a complete {} from a failed upstream",
                r.status
            );
            assert!(r.body.len() < want.len(), "{what}");
            assert_same(
                &r.body,
                &want[..r.body.len()],
                &format!("{what}: received prefix"),
            );
        }
        s => panic!("{what}: status {s}: {}", r.body_text()),
    }
}

/// A response that may or may not have succeeded: no wrong byte either way.
#[track_caller]
fn never_wrong(r: &Response, want: &[u8], what: &str) {
    if r.complete && matches!(r.status, 200 | 206) {
        assert_same(&r.body, want, what);
    } else {
        failed_cleanly(r, want, what);
    }
}

/// Stops the cache (after letting queued commits finish) and checks the store with
/// `gatecache verify`: no damage at all. Returns what `gatecache inspect` lists.
fn stop_and_verify(g: &mut Gate) -> Vec<(String, u64, u64)> {
    settle_commits();
    g.stop(Stop::Term);
    let (clean, report) = g.verify();
    assert!(clean, "gatecache verify found damage:\n{report}");
    g.inspect()
}

both_backends! {
    /// An origin that resets the connection, or closes it cleanly, half way through the
    /// body, on every request: the client gets a 502 or an aborted transfer whose bytes are
    /// all right (curl and raw); once the origin is fixed the object is served whole and
    /// right, then as a hit; the store verifies clean.
    fn body_cut_half_way(backend) {
        let (o, mut g) = setup(backend);
        let mut objs = Vec::new();
        for (path, fault) in [("/reset.bin", Fault::ResetMidBody), ("/short.bin", Fault::ShortBody)] {
            let data = generate(path, LEN);
            o.put(path, Obj::new(data.clone(), "\"v1\"").with_fault(fault.clone()));
            let r = http::get(g.addr(), path, &[]);
            failed_cleanly(&r, &data, &format!("{fault:?} raw"));
            let c = curl(&[&g.url(path)]);
            assert!(
                c.exit != 0 || c.status == 502,
                "{fault:?}: curl saw a complete transfer: {} {}",
                c.exit,
                c.status
            );
            if c.status == 200 {
                assert_same(&c.body, &data[..c.body.len()], &format!("{fault:?} curl prefix"));
            }
            // A range further on, in a partly cached object (each failed attempt stored the
            // blocks it completed): right bytes, whole or cut, or a 502.
            let r = http::get(g.addr(), path, &[("Range", "bytes=900000-999999")]);
            never_wrong(&r, &data[900_000..1_000_000], &format!("{fault:?} range"));
            println!("{fault:?}: origin requests {}, bytes {}", o.requests(path), o.bytes(path));
            o.set_fault(path, Fault::None);
            let r = http::get(g.addr(), path, &[]);
            assert_eq!(r.status, 200, "{fault:?} fixed");
            assert!(r.complete);
            assert_same(&r.body, &data, &format!("{fault:?} after the fix"));
            wait_hit(&g, path, &[]);
            let r = http::get(g.addr(), path, &[("Range", "bytes=400000-")]);
            assert!(r.is_hit());
            assert_same(&r.body, &data[400_000..], &format!("{fault:?} hit"));
            objs.push(path);
        }
        let listed = stop_and_verify(&mut g);
        for p in objs {
            let key = format!("127.0.0.1:{}{p}", o.port);
            assert!(
                listed.iter().any(|(k, len, blocks)| *k == key && *len == LEN && *blocks == 17),
                "{key} not stored whole: {listed:?}"
            );
        }
    }
}

both_backends! {
    /// A cut that happens once only (a flaky link), on several objects: the cache fetches
    /// the missing blocks again and each client gets the whole object, right, without
    /// noticing; the retry asks only for what is missing, from a block boundary.
    fn body_cut_once_is_retried(backend) {
        let (o, mut g) = setup(backend);
        let mut failures = Vec::new();
        for i in 0..10 {
            for fault in [Fault::ResetMidBody, Fault::ShortBody] {
                let path = format!("/once-{i}-{fault:?}.bin");
                let data = generate(&path, 2 * MIB);
                o.put(&path, Obj::new(data.clone(), "\"v1\"").with_fault_times(fault.clone(), 1));
                let r = http::get(g.addr(), &path, &[]);
                never_wrong(&r, &data, &path);
                let seen = o.seen_for(&path);
                assert!(seen.len() >= 2, "{path}: {seen:?}");
                assert_eq!(seen[0].fault, fault);
                let retry = seen[1].range.as_deref().unwrap_or("");
                let from: u64 = retry
                    .trim_start_matches("bytes=")
                    .split('-')
                    .next()
                    .unwrap()
                    .parse()
                    .unwrap();
                assert!(from > 0 && from.is_multiple_of(64 * KIB), "{path}: retry asked {retry}");
                if !(r.status == 200 && r.complete) {
                    failures.push(format!(
                        "{path}: status {}, {} of {} bytes, origin requests {}",
                        r.status,
                        r.body.len(),
                        data.len(),
                        seen.len()
                    ));
                }
            }
        }
        stop_and_verify(&mut g);
        assert!(failures.is_empty(), "one transient cut failed the client:\n{}", failures.join("\n"));
    }
}

both_backends! {
    /// A 206 for a range other than the one asked: 502, nothing stored (the next request goes
    /// upstream again), cold and on a partly cached object; fixed, the object is right.
    fn wrong_content_range_is_502(backend) {
        let (o, mut g) = setup(backend);
        let data = generate("/wcr.bin", LEN);
        o.put("/wcr.bin", Obj::new(data.clone(), "\"v1\"").with_fault(Fault::WrongContentRange));
        for round in 1..=2 {
            let r = http::get(g.addr(), "/wcr.bin", &[]);
            assert_eq!(r.status, 502, "cold, round {round}: {}", r.body_text());
            assert!(r.body_text().contains("Content-Range"), "{}", r.body_text());
            std::thread::sleep(SETTLE);
            let r = http::get(g.addr(), "/wcr.bin", &[("Range", "bytes=100000-100099")]);
            std::thread::sleep(SETTLE);
            assert_eq!(r.status, 502, "cold range, round {round}");
            assert_eq!(o.requests("/wcr.bin"), 2 * round, "nothing may be cached");
        }
        // Partly cached, then the origin goes wrong for the next blocks.
        o.set_fault("/wcr.bin", Fault::None);
        let r = http::get(g.addr(), "/wcr.bin", &[("Range", "bytes=0-65535")]);
        assert_same(&r.body, &data[..65536], "first block");
        wait_hit(&g, "/wcr.bin", &[("Range", "bytes=0-65535")]);
        o.set_fault("/wcr.bin", Fault::WrongContentRange);
        let r = http::get(g.addr(), "/wcr.bin", &[("Range", "bytes=200000-200099")]);
        assert_eq!(r.status, 502, "warm object, missing block: {}", r.body_text());
        std::thread::sleep(SETTLE);
        let r = http::get(g.addr(), "/wcr.bin", &[]);
        failed_cleanly(&r, &data, "warm object, whole");
        // Fetches the cut request had already started still fail: let them end.
        std::thread::sleep(SETTLE);
        o.set_fault("/wcr.bin", Fault::None);
        let r = http::get(g.addr(), "/wcr.bin", &[]);
        assert_eq!(r.status, 200);
        assert_same(&r.body, &data, "after the fix");
        // An object that was never answered right is not in the store at all.
        o.put("/wcr2.bin", Obj::new(generate("/wcr2.bin", 5000), "\"x\"").with_fault(Fault::WrongContentRange));
        assert_eq!(http::get(g.addr(), "/wcr2.bin", &[]).status, 502);
        let listed = stop_and_verify(&mut g);
        assert!(
            !listed.iter().any(|(k, _, _)| k.ends_with("/wcr2.bin")),
            "an object refused upstream was stored: {listed:?}"
        );
    }
}

/// A pause between requests that fail upstream: a request sent the instant the previous
/// failure was answered may be given that failure again (see `failure_is_not_reused`).
const SETTLE: Duration = Duration::from_millis(50);

both_backends! {
    /// Error statuses: 404, 410, 500 and 503 relayed with the origin's body (RFC 9110 §15; a
    /// 502 only when no valid answer came, §15.6.3), an origin that refuses connections is a
    /// 502 — never cached (each request
    /// asks again), the client connection stays usable; once the origin has the object it is
    /// served right.
    fn error_statuses(backend) {
        let (o, mut g) = setup(backend);
        let data = generate("/later.bin", 70_000);
        o.put("/later.bin", Obj::new(data.clone(), "\"v1\"").with_fault(Fault::Status(404)));
        let mut c = Conn::open(g.addr());
        for round in 1..=2usize {
            c.send(http::get_req("/missing.bin", &[]));
            let r = c.read_response(false).unwrap();
            assert_eq!(r.status, 404, "round {round}");
            assert_eq!(r.body_text(), "no such object\n");
            assert_eq!(o.requests("/missing.bin"), round, "a 404 must not be cached");
            std::thread::sleep(SETTLE);
            c.send(http::get_req("/later.bin", &[("Range", "bytes=0-99")]));
            let r = c.read_response(false).unwrap();
            assert_eq!(r.status, 404);
            assert_eq!(r.body_text(), "fault-origin says 404\n");
            std::thread::sleep(SETTLE);
        }
        o.set_fault("/later.bin", Fault::Status(410));
        c.send(http::get_req("/later.bin", &[]));
        assert_eq!(c.read_response(false).unwrap().status, 410);
        std::thread::sleep(SETTLE);
        for code in [500, 503] {
            o.set_fault("/later.bin", Fault::Status(code));
            for _ in 0..2 {
                c.send(http::get_req("/later.bin", &[]));
                let r = c.read_response(false).unwrap();
                assert_eq!(r.status, code, "relayed");
                assert_eq!(r.body_text(), format!("fault-origin says {code}\n"));
                std::thread::sleep(SETTLE);
            }
        }
        assert_eq!(o.requests("/later.bin"), 7, "every failing request went upstream");
        o.set_fault("/later.bin", Fault::None);
        c.send(http::get_req("/later.bin", &[]));
        let r = c.read_response(false).unwrap();
        assert_eq!(r.status, 200);
        assert_same(&r.body, &data, "after the errors");
        // A dead origin.
        let dead = free_port();
        let mut g2 = Gate::start(
            GateConfig::new(backend)
                .route("/", &format!("http://127.0.0.1:{dead}"))
                .read_timeout("2s"),
        );
        let r = http::get(g2.addr(), "/x.bin", &[]);
        assert_eq!(r.status, 502, "dead origin: {}", r.body_text());
        let listed = stop_and_verify(&mut g);
        assert!(
            !listed.iter().any(|(k, _, _)| k.ends_with("/missing.bin")),
            "{listed:?}"
        );
        assert!(stop_and_verify(&mut g2).is_empty());
    }
}

both_backends! {
    /// Back-to-back requests for an object that fails upstream: each one asks the origin
    /// and gets the origin's current answer — a 404 is not cached even for a moment, and once
    /// the origin is fixed the very next request gets the object.
    fn failure_is_not_reused(backend) {
        let (o, g) = setup(backend);
        let data = generate("/flaky.bin", 5000);
        o.put("/flaky.bin", Obj::new(data.clone(), "\"v1\"").with_fault(Fault::Status(404)));
        let mut c = Conn::open(g.addr());
        for i in 1..=300usize {
            c.send(http::get_req("/missing.bin", &[]));
            assert_eq!(c.read_response(false).unwrap().status, 404);
            assert_eq!(o.requests("/missing.bin"), i, "request {i} did not reach the origin");
        }
        let mut stale = 0;
        for _ in 0..30 {
            o.set_fault("/flaky.bin", Fault::Status(503));
            c.send(http::get_req("/flaky.bin?x", &[]));
            assert_eq!(c.read_response(false).unwrap().status, 503, "relayed");
            o.set_fault("/flaky.bin", Fault::None);
            c.send(http::get_req("/flaky.bin?x", &[]));
            let r = c.read_response(false).unwrap();
            if r.status == 200 {
                assert_same(&r.body, &data, "fixed");
                break;
            }
            stale += 1;
        }
        assert_eq!(stale, 0, "the origin's earlier failure was served again");
    }
}

both_backends! {
    /// A slow origin (16 KiB every 10 ms): the client gets its first bytes long before the
    /// last (streamed while fetching, not stored then served) and every byte right; a second
    /// client arriving half way joins the same fetch (one origin request).
    fn slow_origin_streams(backend) {
        let (o, g) = setup(backend);
        let data = generate("/slow.bin", LEN);
        o.put(
            "/slow.bin",
            Obj::new(data.clone(), "\"v1\"").with_fault(Fault::Slow {
                chunk: 16 * 1024,
                pause: Duration::from_millis(10),
            }),
        );
        let url = g.url("/slow.bin");
        let second = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(300));
            curl(&[&url])
        });
        let c = curl(&[&g.url("/slow.bin")]);
        c.ok();
        assert_eq!(c.status, 200);
        assert_same(&c.body, &data, "slow origin");
        println!(
            "slow origin: first byte after {:.3}s, last after {:.3}s",
            c.ttfb, c.total
        );
        assert!(c.total > 0.5, "the origin was not slow: {:.3}s", c.total);
        assert!(c.ttfb < c.total / 2.0, "not streamed: ttfb {:.3}s of {:.3}s", c.ttfb, c.total);
        let c2 = second.join().unwrap();
        c2.ok();
        assert_same(&c2.body, &data, "second client");
        assert_eq!(o.requests("/slow.bin"), 1, "{:?}", o.seen());
    }
}

both_backends! {
    /// The object changes upstream (new content and ETag: same length, longer, shorter)
    /// while part of the old one is cached. A request that needs new blocks never gets a mix:
    /// its body is entirely the old version (with the old ETag) or entirely the new one, or
    /// it is cut short with only right bytes of the version its head announced. Soon after,
    /// requests get the new version, whole and right.
    fn changed_object_is_never_mixed(backend) {
        let (o, mut g) = setup(backend);
        for (label, new_len) in [("same", LEN), ("longer", LEN + 5000), ("shorter", LEN - 200_000)] {
            let path = format!("/chg-{label}.bin");
            let v1 = generate(&format!("{path}#1"), LEN);
            let v2 = generate(&format!("{path}#2"), new_len);
            o.put(&path, Obj::new(v1.clone(), "\"v1\""));
            let r = http::get(g.addr(), &path, &[("Range", "bytes=0-131071")]);
            assert_same(&r.body, &v1[..131_072], "v1 head");
            wait_hit(&g, &path, &[("Range", "bytes=0-131071")]);

            let versions = [("\"v1\"", &v1), ("\"v2\"", &v2)];
            let check = |r: &Response, range: std::ops::Range<usize>, what: &str| {
                let etag = r.header("etag").unwrap_or("");
                if r.status == 502 {
                    return;
                }
                let (_, v) = versions
                    .iter()
                    .find(|(e, _)| *e == etag)
                    .unwrap_or_else(|| panic!("{what}: ETag {etag:?}, status {}", r.status));
                assert!(matches!(r.status, 200 | 206), "{what}: {}", r.status);
                let want = &v[range.start.min(v.len())..range.end.min(v.len())];
                if r.complete {
                    assert_same(&r.body, want, &format!("{what} ({etag}, complete)"));
                } else {
                    assert_same(&r.body, &want[..r.body.len()], &format!("{what} ({etag}, cut)"));
                }
            };

            o.put(&path, Obj::new(v2.clone(), "\"v2\""));
            // Needs the cached (old) blocks and missing ones.
            let r = http::get(g.addr(), &path, &[]);
            check(&r, 0..LEN.max(new_len) as usize, &format!("{label}: whole"));
            println!(
                "{label}: first request after the change: status {}, ETag {:?}, complete {}, {} bytes",
                r.status,
                r.header("etag"),
                r.complete,
                r.body.len()
            );
            let r = http::get(g.addr(), &path, &[("Range", "bytes=60000-200000")]);
            check(&r, 60_000..200_001, &format!("{label}: range"));
            // The new version replaces the old one once a refetch has stored its record (a
            // few ms: the record is synced first); requests before that see the old one.
            let t0 = std::time::Instant::now();
            while http::head(g.addr(), &path, &[]).header("etag") != Some("\"v2\"") {
                assert!(t0.elapsed() < Duration::from_secs(5), "{label}: v2 never stored");
                std::thread::sleep(Duration::from_millis(5));
            }
            println!("{label}: new version visible after {:?}", t0.elapsed());
            let r = http::get(g.addr(), &path, &[]);
            assert_eq!(r.status, 200, "{label}");
            assert_eq!(r.header("etag"), Some("\"v2\""), "{label}: the next request");
            assert!(r.complete);
            assert_same(&r.body, &v2, &format!("{label}: the next request"));
            wait_hit(&g, &path, &[]);
            let r = http::get(g.addr(), &path, &[("Range", "bytes=-100")]);
            assert_same(&r.body, &v2[v2.len() - 100..], &format!("{label}: tail"));
        }
        let listed = stop_and_verify(&mut g);
        for (label, new_len) in [("same", LEN), ("longer", LEN + 5000), ("shorter", LEN - 200_000)] {
            let key = format!("127.0.0.1:{}/chg-{label}.bin", o.port);
            assert!(
                listed.iter().any(|(k, len, _)| *k == key && *len == new_len),
                "{key}: {listed:?}"
            );
        }
    }
}
