//! Conformance, representation changes: bytes of two upstream responses are joined only when
//! both carry the same strong validator (RFC 9110 §8.8.1, §15.3.7.3; RFC 9111 §3.4); a
//! representation that changed is served whole from the new one when the client has received
//! nothing yet, and cut (never mixed) after; an `ETag` that flaps between edges for identical
//! bytes costs no client an error and the object still ends up stored whole.

mod support;

use std::time::Duration;

use support::data::{assert_same, generate};
use support::faulty::{Fault, FaultOrigin, Obj};
use support::gate::{Gate, GateConfig};
use support::http;
use support::*;

fn setup(backend: Backend, window: &str) -> (FaultOrigin, Gate) {
    let o = FaultOrigin::start();
    let g = Gate::start(
        GateConfig::new(backend)
            .route("/", &o.origin_url())
            .window(window),
    );
    (o, g)
}

both_backends! {
    /// 3,000,000 bytes with only `Cache-Control: max-age=3600` (no validator at all);
    /// `bytes=0-99` is cached; the origin swaps the content for other bytes of the same
    /// length. A full GET is all old or all new, and so is every later one.
    fn bytes_without_a_validator_are_never_spliced(backend) {
        let (o, g) = setup(backend, "64KiB");
        let (old, new) = (generate("/s-old", 3_000_000), generate("/s-new", 3_000_000));
        let obj = |d: &Vec<u8>| {
            Obj::new(d.clone(), "")
                .without_validators()
                .with_header("Cache-Control", "max-age=3600")
        };
        o.put("/s.bin", obj(&old));
        let r = http::get(g.addr(), "/s.bin", &[("Range", "bytes=0-99")]);
        assert_eq!(r.status, 206);
        assert_same(&r.body, &old[..100], "the first piece");
        o.put("/s.bin", obj(&new));
        for round in 0..3 {
            let r = http::get(g.addr(), "/s.bin", &[]);
            assert_eq!(r.status, 200, "round {round}: {}", r.cache_status());
            assert!(r.complete, "round {round}: cut");
            assert!(
                r.body == old || r.body == new,
                "round {round}: the body mixes two representations"
            );
        }
    }
}

both_backends! {
    /// An `ETag` that alternates between two values for identical bytes (CDN edges that
    /// disagree): 1 MiB range pieces, then full GETs, all answered 200/206 with the right
    /// bytes, never a 502; in the end the object is served from the cache.
    fn an_etag_that_flaps_for_identical_bytes_costs_no_client_an_error(backend) {
        let (o, g) = setup(backend, "1MiB");
        let data = generate("/flap", 3 * MIB);
        o.put(
            "/flap.bin",
            Obj::new(data.clone(), "\"e\"")
                .with_header("Cache-Control", "max-age=3600")
                .with_fault(Fault::FlapEtag),
        );
        for i in 0..3u64 {
            let (a, b) = (i * MIB, (i + 1) * MIB - 1);
            let r = http::get(g.addr(), "/flap.bin", &[("Range", &format!("bytes={a}-{b}"))]);
            assert_eq!(r.status, 206, "piece {i}: {}", r.body_text());
            assert_same(&r.body, &data[a as usize..=b as usize], &format!("piece {i}"));
        }
        let mut hit = false;
        for round in 0..4 {
            let r = http::get(g.addr(), "/flap.bin", &[]);
            assert_eq!(r.status, 200, "round {round}: {}", r.body_text());
            assert_same(&r.body, &data, &format!("round {round}"));
            hit |= r.is_hit();
        }
        assert!(hit, "the object never settled in the cache");
    }
}

both_backends! {
    /// An index file of 150,000 bytes with `max-age=1`, republished as 151,234 bytes: the
    /// first request after it went stale gets all 151,234 new bytes, whole or by range.
    fn a_republished_index_with_another_size_is_served_whole_at_once(backend) {
        let (o, g) = setup(backend, "64KiB");
        let (v1, v2) = (generate("/idx1", 150_000), generate("/idx2", 151_234));
        let obj = |d: &Vec<u8>, e: &str| {
            Obj::new(d.clone(), e).with_header("Cache-Control", "max-age=1")
        };
        o.put("/Packages.gz", obj(&v1, "\"i1\""));
        assert_same(&http::get(g.addr(), "/Packages.gz", &[]).body, &v1, "v1");
        std::thread::sleep(Duration::from_millis(2100));
        o.put("/Packages.gz", obj(&v2, "\"i2\""));
        let r = http::get(g.addr(), "/Packages.gz", &[]);
        assert_eq!(r.status, 200, "{}", r.body_text());
        assert_same(&r.body, &v2, "the first request after the publish");
        std::thread::sleep(Duration::from_millis(2100));
        let (v3, tail) = (generate("/idx3", 152_000), "bytes=140000-");
        o.put("/Packages.gz", obj(&v3, "\"i3\""));
        let r = http::get(g.addr(), "/Packages.gz", &[("Range", tail)]);
        assert_eq!(r.status, 206, "{}", r.body_text());
        assert_eq!(r.header("content-range"), Some("bytes 140000-151999/152000"));
        assert_same(&r.body, &v3[140_000..], "a range of the new version");
    }
}

both_backends! {
    /// A fresh object of which only the first block is stored; the origin republishes it
    /// (another `ETag`, another size) and a client asks for a later block. The fill meets the
    /// new representation before a byte was sent: the client gets the new one, not a 502.
    fn a_change_met_by_a_fill_before_the_head_is_served_from_the_new_representation(backend) {
        let (o, g) = setup(backend, "64KiB");
        let (v1, v2) = (generate("/c1", 400_000), generate("/c2", 420_000));
        let obj = |d: &Vec<u8>, e: &str| {
            Obj::new(d.clone(), e).with_header("Cache-Control", "max-age=3600")
        };
        o.put("/c.bin", obj(&v1, "\"c1\""));
        let r = http::get(g.addr(), "/c.bin", &[("Range", "bytes=0-99")]);
        assert_same(&r.body, &v1[..100], "v1 first block");
        o.put("/c.bin", obj(&v2, "\"c2\""));
        let r = http::get(g.addr(), "/c.bin", &[("Range", "bytes=300000-300099")]);
        assert_eq!(r.status, 206, "{}", r.body_text());
        assert_eq!(r.header("content-range"), Some("bytes 300000-300099/420000"));
        assert_same(&r.body, &v2[300_000..300_100], "the new representation");
        let r = http::get(g.addr(), "/c.bin", &[]);
        assert_eq!(r.status, 200, "{}", r.body_text());
        assert_same(&r.body, &v2, "whole, new");
    }
}

both_backends! {
    /// A stored object of which only the first block is held; the origin now answers 404 (and,
    /// for another object, `no-store`). A client asking for a later block gets the origin's
    /// answer, not a 502: what is stored no longer stands and is dropped.
    fn a_fill_that_meets_an_answer_not_stored_relays_it_and_drops_the_object(backend) {
        let (o, g) = setup(backend, "64KiB");
        let data = generate("/g1", 400_000);
        let page = b"<p>withdrawn</p>\n".to_vec();
        for path in ["/withdrawn.bin", "/private-now.bin"] {
            o.put(path, Obj::new(data.clone(), "\"g1\"").with_header("Cache-Control", "max-age=3600"));
            let r = http::get(g.addr(), path, &[("Range", "bytes=0-99")]);
            assert_same(&r.body, &data[..100], path);
        }
        o.put("/withdrawn.bin", Obj::new(page.clone(), "\"w\"").with_fault(Fault::Answer(404)));
        o.put(
            "/private-now.bin",
            Obj::new(data.clone(), "\"g2\"").with_header("Cache-Control", "no-store"),
        );
        let r = http::get(g.addr(), "/withdrawn.bin", &[("Range", "bytes=300000-300099")]);
        assert_eq!(r.status, 404, "{}", r.body_text());
        assert_eq!(r.body, page);
        let r = http::get(g.addr(), "/withdrawn.bin", &[("Range", "bytes=0-99")]);
        assert_eq!(r.status, 404, "the stored block no longer stands: {}", r.cache_status());
        let r = http::get(g.addr(), "/private-now.bin", &[("Range", "bytes=300000-300099")]);
        assert_eq!(r.status, 206, "{}", r.body_text());
        assert_same(&r.body, &data[300_000..300_100], "relayed");
        let r = http::get(g.addr(), "/private-now.bin", &[("Range", "bytes=0-99")]);
        assert!(!r.is_hit(), "no longer served from storage: {}", r.cache_status());
    }
}

both_backends! {
    /// Objects with no strong validator (none at all, a weak `ETag`), twenty times the fill
    /// window: three clients at once each get the whole body, whole (the representation comes
    /// from one response, every block claimed at once, so no reader starts a fill of its own
    /// whose bytes could not be joined); then it is a hit.
    fn an_object_without_a_strong_validator_comes_whole_to_concurrent_clients(backend) {
        let (o, g) = setup(backend, "64KiB");
        let data = generate("/nv", 20 * 64 * 1024 + 5);
        o.put(
            "/none.bin",
            Obj::new(data.clone(), "").without_validators().with_header("Cache-Control", "max-age=600"),
        );
        o.put("/weak.bin", Obj::new(data.clone(), "W/\"w\"").with_header("Cache-Control", "max-age=600"));
        for path in ["/none.bin", "/weak.bin"] {
            let addr = g.addr();
            let clients: Vec<_> = (0..3)
                .map(|_| std::thread::spawn(move || http::get(addr, path, &[])))
                .collect();
            for c in clients {
                let r = c.join().unwrap();
                assert_eq!(r.status, 200, "{path}");
                assert!(r.complete, "{path}: cut after {} bytes", r.body.len());
                assert_same(&r.body, &data, path);
            }
            let r = http::get(g.addr(), path, &[("Range", "bytes=1000000-1000099")]);
            assert!(r.is_hit(), "{path}: {}", r.cache_status());
            assert_same(&r.body, &data[1_000_000..1_000_100], path);
        }
    }
}

both_backends! {
    /// A 304 that names another `ETag` than the stored one cannot refresh it (RFC 9111 §4.3.4):
    /// the cache asks again unconditionally and serves that answer, never a 502.
    fn a_304_naming_other_validators_is_followed_by_an_unconditional_request(backend) {
        let (o, g) = setup(backend, "1MiB");
        let data = generate("/b304", 100_000);
        let obj = Obj::new(data.clone(), "\"v1\"").with_header("Cache-Control", "max-age=1");
        o.put("/b304.bin", obj.clone());
        assert_same(&http::get(g.addr(), "/b304.bin", &[]).body, &data, "stored");
        std::thread::sleep(Duration::from_millis(2100));
        o.put("/b304.bin", obj.with_fault(Fault::Bad304));
        let r = http::get(g.addr(), "/b304.bin", &[]);
        assert_eq!(r.status, 200, "{}", r.body_text());
        assert_same(&r.body, &data, "after the odd 304");
        let seen = o.seen_for("/b304.bin");
        let last_two: Vec<bool> = seen.iter().rev().take(2).map(|s| s.if_none_match.is_some()).collect();
        assert_eq!(last_two, [false, true], "a conditional request, then an unconditional one");
    }
}
