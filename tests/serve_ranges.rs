//! Byte ranges against the origin's bytes, on cold and warm objects: every single-range form
//! (inside a block, across block boundaries, in the short last block, `a-`, `-n`), several
//! `Range` headers (the last one wins, as Delivery Optimization needs), multi-range
//! `multipart/byteranges`, `If-Range`, and 416.

mod support;

use std::ops::Range;

use support::curl::curl;
use support::data::{self, F1K, F1M3, F16M, assert_same};
use support::http::{self, Conn, Response, parse_multipart};
use support::nginx::body_bytes;
use support::*;

const LEN: u64 = F1M3.1; // 1 MiB + 3: 16 blocks of 64 KiB and one of 3 bytes
const BS: u64 = 64 * KIB;

/// Range forms on the 1 MiB + 3 object, with the bytes each selects.
fn cases() -> Vec<(&'static str, Range<u64>)> {
    vec![
        ("bytes=100-199", 100..200),
        ("bytes=0-0", 0..1),
        ("bytes=65000-70000", 65000..70001),
        ("bytes=65535-65536", 65535..65537),
        ("bytes=65536-131071", 65536..131072),
        ("bytes=100000-400000", 100_000..400_001),
        ("bytes=1048000-1048578", 1_048_000..LEN),
        ("bytes=1048576-1048578", 1_048_576..LEN),
        ("bytes=1048578-1048578", 1_048_578..LEN),
        ("bytes=500000-99999999", 500_000..LEN),
        ("bytes=1000000-", 1_000_000..LEN),
        ("bytes=0-", 0..LEN),
        ("bytes=-70000", LEN - 70_000..LEN),
        ("bytes=-2", LEN - 2..LEN),
        ("bytes=-99999999", 0..LEN),
        (" bytes = 7-9 ", 7..10),
    ]
}

#[track_caller]
fn check_206(r: &Response, want: &Range<u64>, what: &str) {
    let all = data::content(F1M3);
    assert_eq!(r.status, 206, "{what}: {}", r.body_text());
    assert!(r.complete, "{what}: body cut short");
    assert_eq!(
        r.header("content-range"),
        Some(format!("bytes {}-{}/{LEN}", want.start, want.end - 1).as_str()),
        "{what}"
    );
    assert_eq!(r.content_length(), Some(want.end - want.start), "{what}");
    assert_same(&r.body, &all[want.start as usize..want.end as usize], what);
}

/// Blocks a range touches, as bytes of the object (what one fetch of exactly them costs).
fn block_span(r: &Range<u64>) -> u64 {
    let first = r.start / BS * BS;
    let end = (r.end.div_ceil(BS) * BS).min(LEN);
    end - first
}

both_backends! {
    /// Each form on a cold object (its own key): the right 206; for `a-b` the origin was
    /// asked for exactly the blocks it touches. The same request again is a hit with no
    /// origin request. Then every form on a fully cached object: hits, no origin request.
    fn single_ranges_cold_then_warm(backend) {
        let (n, g) = nginx_and_gate(backend);
        let mut exact = Vec::new();
        for (i, (range, want)) in cases().into_iter().enumerate() {
            let path = format!("/1m3.bin?cold={i}");
            let what = format!("cold {range:?}");
            let r = http::get(g.addr(), &path, &[("Range", range)]);
            check_206(&r, &want, &what);
            assert_eq!(r.cache_status(), "gatecache; fwd=miss; stored", "{what}");
            if !range.contains("=-") && !range.ends_with('-') && !range.contains("99999999") {
                exact.push((path.clone(), want.clone()));
            }
            // Again: served from the blocks just stored, with no upstream request.
            wait_hit(&g, &path, &[("Range", range)]);
            let fetches = g.stat("upstream_requests");
            let r = http::get(g.addr(), &path, &[("Range", range)]);
            check_206(&r, &want, &format!("repeat {range:?}"));
            assert!(r.is_hit(), "repeat {range:?}: {}", r.cache_status());
            assert_eq!(g.stat("upstream_requests"), fetches, "repeat {range:?} went upstream");
        }
        // `a-b` forms cost exactly one origin request for exactly the blocks they touch.
        let origin = n.settled_log();
        for (path, want) in &exact {
            let mine: Vec<_> = origin.iter().filter(|h| &h.uri == path).collect();
            assert_eq!(mine.len(), 1, "{path}: {mine:?}");
            assert_eq!(mine[0].body_bytes, block_span(want), "{path}: origin bytes");
        }
        assert_eq!(origin.len() as u64, g.stat("upstream_requests"));
        // Warm: the whole object cached first.
        let full = http::get(g.addr(), "/1m3.bin?warm", &[]);
        assert_same(&full.body, &data::content(F1M3), "warm-up");
        wait_hit(&g, "/1m3.bin?warm", &[]);
        let origin = n.settled_log();
        for (range, want) in cases() {
            let r = http::get(g.addr(), "/1m3.bin?warm", &[("Range", range)]);
            check_206(&r, &want, &format!("warm {range:?}"));
            assert!(r.is_hit(), "warm {range:?}: {}", r.cache_status());
        }
        assert_eq!(n.settled_log(), origin, "warm ranges reached the origin");
    }
}

both_backends! {
    /// Several `Range` headers (Delivery Optimization's resumed transfers): the last one is
    /// served, whether it is larger or smaller than the first, cold or warm, from curl (two
    /// -H) and raw sockets (three headers); resuming with `bytes=N-<total-1>` gives the rest
    /// with `/total` in Content-Range.
    fn several_range_headers_last_wins(backend) {
        let (_n, g) = nginx_and_gate(backend);
        let all = data::content(F1M3);
        for (pass, path) in [("cold", "/1m3.bin?dup=1"), ("warm", "/1m3.bin?dup=1")] {
            let c = curl(&[
                "-H", "Range: bytes=0-99",
                "-H", "Range: bytes=500000-1048578",
                &g.url(path),
            ]);
            c.ok();
            assert_eq!(c.status, 206, "{pass}");
            assert_eq!(c.header("content-range"), Some("bytes 500000-1048578/1048579"));
            assert_same(&c.body, &all[500_000..], pass);
            let mut conn = Conn::open(g.addr());
            conn.send(http::get_req(
                path,
                &[
                    ("Range", "bytes=0-"),
                    ("User-Agent", "Microsoft-Delivery-Optimization-Lite/10.0.0.1"),
                    ("Range", "bytes=1000-"),
                    ("Range", "bytes=70000-70099"),
                ],
            ));
            let r = conn.read_response(false).unwrap();
            check_206(&r, &(70_000..70_100), &format!("{pass} three Range headers"));
        }
        // DO resume on a cold object: whole file first (cut), then bytes=N-<total-1>.
        let r = http::get(g.addr(), "/1m3.bin?resume", &[("Range", "bytes=0-99"), ("Range", "bytes=300000-1048578")]);
        check_206(&r, &(300_000..LEN), "resume");
        // Windows DO: 1 MiB-aligned ranges, the last one short.
        let w = http::get(g.addr(), "/1m3.bin?win", &[("Range", "bytes=0-1048575")]);
        check_206(&w, &(0..1_048_576), "aligned 1");
        let w = http::get(g.addr(), "/1m3.bin?win", &[("Range", "bytes=1048576-2097151")]);
        check_206(&w, &(1_048_576..LEN), "aligned 2 (short)");
    }
}

fn check_multipart(r: &Response, want: &[Range<u64>], what: &str) {
    let all = data::content(F1M3);
    assert_eq!(r.status, 206, "{what}");
    assert!(r.complete, "{what}: cut short");
    assert_eq!(r.content_length(), Some(r.body.len() as u64), "{what}");
    let ct = r.header("content-type").expect("Content-Type");
    assert!(
        ct.starts_with("multipart/byteranges; boundary="),
        "{what}: {ct}"
    );
    let parts = parse_multipart(ct, &r.body).unwrap_or_else(|e| panic!("{what}: {e}"));
    assert_eq!(parts.len(), want.len(), "{what}");
    for (p, w) in parts.iter().zip(want) {
        assert_eq!(p.range, (w.start, w.end - 1, LEN), "{what}");
        assert_eq!(p.content_type.as_deref(), Some("application/octet-stream"));
        assert_same(&p.data, &all[w.start as usize..w.end as usize], what);
    }
}

both_backends! {
    /// Several ranges in one header: a correct `multipart/byteranges` body (parsed: each
    /// part's Content-Range and bytes), in the client's order, cold and warm; overlapping
    /// ranges get the whole object (200); a HEAD gives the same framing with no body.
    fn multiple_ranges_multipart(backend) {
        let (_n, g) = nginx_and_gate(backend);
        let sets: &[(&str, Vec<Range<u64>>)] = &[
            ("bytes=0-99,200000-200099,-50", vec![0..100, 200_000..200_100, LEN - 50..LEN]),
            ("bytes=65530-65541, 1048570-", vec![65530..65542, 1_048_570..LEN]),
            ("bytes=900000-900009,10-19", vec![900_000..900_010, 10..20]),
            ("bytes=0-0,2-2,4-4,6-6", vec![0..1, 2..3, 4..5, 6..7]),
        ];
        for (i, (spec, want)) in sets.iter().enumerate() {
            let path = format!("/1m3.bin?mp={i}");
            let r = http::get(g.addr(), &path, &[("Range", spec)]);
            check_multipart(&r, want, &format!("cold {spec}"));
            let h = http::head(g.addr(), &path, &[("Range", spec)]);
            assert_eq!(h.status, 206);
            assert_eq!(h.content_length(), r.content_length(), "HEAD {spec}");
            let r2 = http::get(g.addr(), &path, &[("Range", spec)]);
            check_multipart(&r2, want, &format!("warm {spec}"));
        }
        // curl agrees on the framing.
        let c = curl(&["-r", "0-99,200000-200099", &g.url("/1m3.bin?mp=curl")]);
        c.ok();
        assert_eq!(c.status, 206);
        let ct = c.header("content-type").unwrap().to_string();
        let parts = parse_multipart(&ct, &c.body).unwrap();
        assert_eq!(parts.len(), 2);
        // Overlapping: the whole object.
        let r = http::get(g.addr(), "/1m3.bin?mp=overlap", &[("Range", "bytes=0-99,50-150")]);
        assert_eq!(r.status, 200);
        assert_same(&r.body, &data::content(F1M3), "overlapping ranges");
    }
}

both_backends! {
    /// `If-Range` with the current strong ETag or exact Last-Modified: 206; with anything
    /// else: the whole object (200). Cold and warm.
    fn if_range(backend) {
        let (n, g) = nginx_and_gate(backend);
        let o = http::head(n.addr(), "/1m3.bin", &[]);
        let etag = o.header("etag").unwrap().to_string();
        let lm = o.header("last-modified").unwrap().to_string();
        let all = data::content(F1M3);
        for pass in ["cold", "warm"] {
            for (i, (if_range, partial)) in [
                (etag.as_str(), true),
                (lm.as_str(), true),
                ("\"not-it\"", false),
                ("W/\"weak\"", false),
                ("Thu, 01 Jan 1998 00:00:00 GMT", false),
            ]
            .into_iter()
            .enumerate()
            {
                let path = format!("/1m3.bin?ir={i}");
                let r = http::get(
                    g.addr(),
                    &path,
                    &[("Range", "bytes=70000-70999"), ("If-Range", if_range)],
                );
                let what = format!("{pass} If-Range {if_range}");
                if partial {
                    check_206(&r, &(70_000..71_000), &what);
                } else {
                    assert_eq!(r.status, 200, "{what}");
                    assert!(r.header("content-range").is_none(), "{what}");
                    assert_same(&r.body, &all, &what);
                }
            }
        }
    }
}

both_backends! {
    /// A range that starts at or past the end: 416 with `Content-Range: bytes */len`, cold
    /// (the origin's 416 relayed, nothing stored) and warm; malformed Range values are
    /// ignored (200, whole object).
    fn unsatisfiable_and_malformed(backend) {
        let (n, g) = nginx_and_gate(backend);
        for pass in ["cold", "warm"] {
            for (path, range, len) in [
                ("/1m3.bin?u=1", "bytes=2000000-", LEN),
                ("/1m3.bin?u=2", "bytes=1048579-1048600", LEN),
                ("/1m3.bin?u=3", "bytes=-0", LEN),
                ("/1k.bin?u=4", "bytes=1024-", F1K.1),
                ("/16m.bin?u=5", "bytes=16777216-", F16M.1),
            ] {
                let r = http::get(g.addr(), path, &[("Range", range)]);
                assert_eq!(r.status, 416, "{pass} {path} {range}: {}", r.body_text());
                assert_eq!(
                    r.header("content-range"),
                    Some(format!("bytes */{len}").as_str()),
                    "{pass} {path} {range}"
                );
                assert!(!r.closes(), "a 416 keeps the connection");
            }
            if pass == "cold" {
                // Now make them warm.
                for path in ["/1m3.bin?u=1", "/1m3.bin?u=2", "/1m3.bin?u=3", "/1k.bin?u=4", "/16m.bin?u=5"] {
                    let r = http::get(g.addr(), path, &[]);
                    assert_eq!(r.status, 200, "{path}");
                    wait_hit(&g, path, &[]);
                }
            }
        }
        let before = n.settled_log();
        for bad in ["bytes=abc", "items=0-5", "bytes=5-1", "bytes=", "bytes=1-2-3"] {
            let r = http::get(g.addr(), "/1m3.bin?u=1", &[("Range", bad)]);
            assert_eq!(r.status, 200, "Range: {bad}");
            assert_same(&r.body, &data::content(F1M3), bad);
        }
        assert_eq!(n.settled_log(), before);
        assert!(body_bytes(&before) >= LEN);
    }
}
