//! HTTP/1.1 on the wire, with raw sockets: pipelining, keep-alive, HTTP/1.0 and
//! `Connection: close`; head limits (414, 431), other methods (405), versions (505); request
//! smuggling vectors (400, closed, nothing sent upstream); slow heads timed out.

mod support;

use std::time::{Duration, Instant};

use support::data::{self, F1K, F1M3, F100K, assert_same};
use support::http::{self, Conn};
use support::*;

const CLOSE_WAIT: Duration = Duration::from_secs(3);

both_backends! {
    /// Several requests in one write, on one connection: every response complete and in
    /// order (cold misses, hits, a HEAD, a range, a 403 and a 416 mixed), then the connection
    /// is reused, then `Connection: close` is answered and closes it; nothing pipelined after
    /// the close is answered.
    fn pipelining_and_keep_alive(backend) {
        let (_n, g) = nginx_and_gate(backend);
        let mut c = Conn::open(g.addr());
        let batch = [
            http::get_req("/1k.bin", &[]),
            http::get_req("/100k.bin", &[("Range", "bytes=1000-1999")]),
            http::request("HEAD", "/1m3.bin", &[]),
            http::get_req("/1m3.bin", &[]),
            http::get_req("/x?cacheHostOrigin=evil.test", &[]),
            http::get_req("/1k.bin", &[]),
            http::get_req("/1k.bin", &[("Range", "bytes=5000-")]),
            http::get_req("/100k.bin", &[]),
        ]
        .concat();
        c.send(batch);
        let r = c.read_response(false).unwrap();
        assert_eq!(r.status, 200);
        assert_same(&r.body, &data::content(F1K), "1: /1k.bin");
        let r = c.read_response(false).unwrap();
        assert_eq!(r.status, 206);
        assert_same(&r.body, &data::content(F100K)[1000..2000], "2: range");
        let r = c.read_response(true).unwrap();
        assert_eq!((r.status, r.content_length()), (200, Some(F1M3.1)), "3: HEAD");
        let r = c.read_response(false).unwrap();
        assert_eq!(r.status, 200);
        assert_same(&r.body, &data::content(F1M3), "4: /1m3.bin");
        let r = c.read_response(false).unwrap();
        assert_eq!(r.status, 403, "5: 403");
        let r = c.read_response(false).unwrap();
        assert_eq!(r.status, 200);
        assert_same(&r.body, &data::content(F1K), "6: /1k.bin again");
        let r = c.read_response(false).unwrap();
        assert_eq!(r.status, 416, "7: 416");
        let r = c.read_response(false).unwrap();
        assert_eq!(r.status, 200);
        assert_same(&r.body, &data::content(F100K), "8: /100k.bin");
        assert!(!r.closes());
        // Reuse after a pause.
        assert!(c.still_open_after(Duration::from_millis(300)), "keep-alive connection closed");
        c.send(http::get_req("/1k.bin", &[]));
        let r = c.read_response(false).unwrap();
        assert_eq!(r.status, 200);
        assert!(r.is_hit());
        // A body on a GET (allowed, never used): skipped, not taken for the next request.
        c.send(format!(
            "{}{}",
            "GET /1k.bin HTTP/1.1\r\nHost: a\r\nContent-Length: 34\r\n\r\nGET /16m.bin HTTP/1.1\r\nHost: b\r\n\r\n",
            http::get_req("/100k.bin", &[("Range", "bytes=0-9")])
        ));
        let r = c.read_response(false).unwrap();
        assert_same(&r.body, &data::content(F1K), "GET with a body");
        let r = c.read_response(false).unwrap();
        assert_eq!((r.status, r.body.len()), (206, 10), "the request after the body");
        // Connection: close, with a request pipelined behind it.
        c.send(
            [
                http::get_req("/1k.bin", &[("Connection", "close")]),
                http::get_req("/100k.bin", &[]),
            ]
            .concat(),
        );
        let r = c.read_response(false).unwrap();
        assert_eq!(r.status, 200);
        assert!(r.closes(), "Connection: close is echoed");
        assert_same(&r.body, &data::content(F1K), "close");
        assert!(c.closed_within(CLOSE_WAIT), "not closed after Connection: close");
    }
}

both_backends! {
    /// HTTP/1.0 without keep-alive: answered, `Connection: close`, closed; HTTP/1.0 with
    /// `Connection: keep-alive`: kept; `Connection: foo, close` on 1.1: closed.
    fn http10_and_connection_close(backend) {
        let (_n, g) = nginx_and_gate(backend);
        let mut c = Conn::open(g.addr());
        c.send("GET /1k.bin HTTP/1.0\r\n\r\n");
        let r = c.read_response(false).unwrap();
        assert_eq!(r.status, 200);
        assert_same(&r.body, &data::content(F1K), "HTTP/1.0");
        assert!(r.closes());
        assert!(c.closed_within(CLOSE_WAIT), "HTTP/1.0 connection not closed");

        let mut c = Conn::open(g.addr());
        c.send("GET /1k.bin HTTP/1.0\r\nConnection: keep-alive\r\n\r\n");
        let r = c.read_response(false).unwrap();
        assert_eq!(r.status, 200);
        assert!(!r.closes());
        assert!(c.still_open_after(Duration::from_millis(300)));
        c.send("HEAD /1k.bin HTTP/1.0\r\n\r\n");
        let r = c.read_response(true).unwrap();
        assert_eq!((r.status, r.content_length()), (200, Some(1024)));
        assert!(c.closed_within(CLOSE_WAIT));

        let mut c = Conn::open(g.addr());
        c.send(http::get_req("/100k.bin", &[("Connection", "foo, Close")]));
        let r = c.read_response(false).unwrap();
        assert_same(&r.body, &data::content(F100K), "close token in a list");
        assert!(c.closed_within(CLOSE_WAIT));
    }
}

/// Sends `raw`, expects one response with `status` and the connection closed after it.
#[track_caller]
fn refused(g: &gate::Gate, raw: &[u8], status: u16, what: &str) -> http::Response {
    let mut c = Conn::open(g.addr());
    // A server that answers early may reset the rest of a big write: not a failure.
    let _ = c.try_send(raw);
    let r = c
        .read_response(false)
        .unwrap_or_else(|e| panic!("{what}: no response: {e}"));
    assert_eq!(r.status, status, "{what}: {}", r.body_text());
    assert!(c.closed_within(CLOSE_WAIT), "{what}: connection left open");
    r
}

both_backends! {
    /// Small heads refused: more than 64 header fields (431), methods a cache does not relay
    /// (405 with `Allow`), HTTP/2.0 on the request line (505). Each closes the connection and
    /// nothing reaches the origin.
    fn small_head_refusals(backend) {
        let (n, g) = nginx_and_gate(backend);
        let many: String = (0..70).map(|i| format!("X-H{i}: v\r\n")).collect();
        let r = refused(
            &g,
            format!("GET /1k.bin HTTP/1.1\r\nHost: a\r\n{many}\r\n").as_bytes(),
            431,
            "70 header fields",
        );
        assert!(r.body_text().contains("too many"), "{}", r.body_text());
        const ALLOW: &str = "GET, HEAD, POST, PUT, DELETE, PATCH, OPTIONS";
        for m in ["TRACE", "PURGE", "get", "post"] {
            let raw = format!("{m} /1k.bin HTTP/1.1\r\nHost: a\r\nContent-Length: 0\r\n\r\n");
            let r = refused(&g, raw.as_bytes(), 405, m);
            assert_eq!(r.header("allow"), Some(ALLOW), "{m}");
            assert_eq!(r.body_text(), format!("method {m} not allowed\n"));
        }
        let r = refused(
            &g,
            b"CONNECT example.org:443 HTTP/1.1\r\nHost: example.org:443\r\n\r\n",
            405,
            "CONNECT",
        );
        assert_eq!(r.header("allow"), Some(ALLOW));
        refused(&g, b"GET /1k.bin HTTP/2.0\r\nHost: a\r\n\r\n", 505, "HTTP/2.0");
        // Still serving.
        let ok = http::get(g.addr(), "/1k.bin", &[]);
        assert_eq!(ok.status, 200);
        let log = n.settled_log();
        assert_eq!(log.len(), 1, "only the last GET reaches the origin: {log:?}");
    }
}

both_backends! {
    /// Long heads: a target over 8 KiB (414), a request line with no end (414), a head over
    /// 16 KiB (431). Each closes the connection and nothing reaches the origin.
    fn long_head_refusals(backend) {
        let (n, g) = nginx_and_gate(backend);
        let long = format!("GET /{} HTTP/1.1\r\nHost: a\r\n\r\n", "a".repeat(9000));
        refused(&g, long.as_bytes(), 414, "9000-byte target");
        let endless = format!("GET /{}", "a".repeat(17 * 1024));
        refused(&g, endless.as_bytes(), 414, "endless request line");
        let huge = format!(
            "GET /1k.bin HTTP/1.1\r\nHost: a\r\nX-Big: {}\r\n\r\n",
            "b".repeat(17 * 1024)
        );
        let r = refused(&g, huge.as_bytes(), 431, "17 KiB header");
        assert!(r.body_text().contains("too large"), "{}", r.body_text());
        let ok = http::get(g.addr(), "/1k.bin", &[]);
        assert_eq!(ok.status, 200);
        let log = n.settled_log();
        assert_eq!(log.len(), 1, "only the last GET reaches the origin: {log:?}");
    }
}

both_backends! {
    /// Heads that take several reads: one sent in pieces with pauses, a 12 KiB head (under
    /// the 16 KiB limit), a pipeline of 40 requests (14 KB) in one write — all answered, in
    /// order. A client trickling its head a byte at a time is closed by the head timeout
    /// (2 s here).
    fn heads_across_reads(backend) {
        let (_n, g) = nginx_and_gate_with(backend, &["head_timeout = \"2s\""]);
        let mut c = Conn::open(g.addr());
        for piece in ["GET /1k.b", "in HTTP/1.1\r\nHo", "st: a\r\nRange: bytes=0-9\r\n", "\r\n"] {
            c.send(piece);
            std::thread::sleep(Duration::from_millis(100));
        }
        let r = c.read_response(false).unwrap();
        assert_eq!(r.status, 206, "head in pieces: {}", r.body_text());
        assert_same(&r.body, &data::content(F1K)[..10], "head in pieces");

        // Three 4 KiB fields: the client's fields now reach the origin (RFC 9110 §7.6), and
        // nginx refuses a single line over its 8 KiB buffer.
        let pad = "c".repeat(4 * 1024);
        c.send(http::get_req(
            "/100k.bin",
            &[("X-Pad-1", &pad), ("X-Pad-2", &pad), ("X-Pad-3", &pad)],
        ));
        let r = c.read_response(false).unwrap();
        assert_eq!(r.status, 200, "12 KiB head: {}", r.body_text());
        assert_same(&r.body, &data::content(F100K), "12 KiB head");

        let batch: String = (0..40)
            .map(|i| {
                let range = format!("bytes={i}-{}", i + 9);
                http::get_req(
                    "/100k.bin",
                    &[("Range", &range), ("User-Agent", &"u".repeat(300))],
                )
            })
            .collect();
        assert!(batch.len() > 12_000);
        c.send(batch);
        for i in 0..40usize {
            let r = c.read_response(false).unwrap();
            assert_eq!(r.status, 206, "pipelined #{i}: {}", r.body_text());
            assert_same(&r.body, &data::content(F100K)[i..i + 10], &format!("pipelined #{i}"));
        }

        // Trickling: one byte every 300 ms never completes a head within 2 s.
        let mut c = Conn::open(g.addr());
        let head = format!("GET /1k.bin HTTP/1.1\r\nHost: a\r\nX-Slow: {}", "a".repeat(100));
        let t = Instant::now();
        let mut closed = None;
        for b in head.bytes() {
            if c.try_send([b]).is_err() || c.closed_within(Duration::from_millis(300)) {
                closed = Some(t.elapsed());
                break;
            }
        }
        let after = closed.expect("trickling connection never closed");
        assert!(
            (Duration::from_millis(1800)..Duration::from_secs(5)).contains(&after),
            "trickling client closed after {after:?}"
        );
    }
}

both_backends! {
    /// Request smuggling: Content-Length with Transfer-Encoding, Transfer-Encoding alone,
    /// two Content-Length, malformed Content-Length, obs-fold, missing or repeated Host on
    /// HTTP/1.1, whitespace before the colon. Each is a 400 and the connection is closed, so
    /// the request hidden behind it is never answered; nothing at all reaches the origin.
    fn smuggling_vectors_are_400(backend) {
        let (n, g) = nginx_and_gate(backend);
        let hidden = "GET /16m.bin HTTP/1.1\r\nHost: a\r\n\r\n";
        let vectors = [
            ("CL + TE", "GET /1k.bin HTTP/1.1\r\nHost: a\r\nContent-Length: 40\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"),
            ("TE + CL", "GET /1k.bin HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n0\r\n\r\n"),
            ("TE alone", "GET /1k.bin HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"),
            ("TE identity", "GET /1k.bin HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: identity\r\n\r\n"),
            ("two CL", "GET /1k.bin HTTP/1.1\r\nHost: a\r\nContent-Length: 0\r\nContent-Length: 36\r\n\r\n"),
            ("same CL twice", "GET /1k.bin HTTP/1.1\r\nHost: a\r\nContent-Length: 0\r\nContent-Length: 0\r\n\r\n"),
            ("CL list", "GET /1k.bin HTTP/1.1\r\nHost: a\r\nContent-Length: 0, 36\r\n\r\n"),
            ("CL negative", "GET /1k.bin HTTP/1.1\r\nHost: a\r\nContent-Length: -1\r\n\r\n"),
            ("CL plus", "GET /1k.bin HTTP/1.1\r\nHost: a\r\nContent-Length: +0\r\n\r\n"),
            ("CL hex", "GET /1k.bin HTTP/1.1\r\nHost: a\r\nContent-Length: 0x10\r\n\r\n"),
            ("CL huge", "GET /1k.bin HTTP/1.1\r\nHost: a\r\nContent-Length: 99999999999999999999999\r\n\r\n"),
            ("obs-fold", "GET /1k.bin HTTP/1.1\r\nHost: a\r\nX-A: b\r\n  folded\r\n\r\n"),
            ("obs-fold CL", "GET /1k.bin HTTP/1.1\r\nHost: a\r\nContent-Length:\r\n 36\r\n\r\n"),
            ("no Host", "GET /1k.bin HTTP/1.1\r\n\r\n"),
            ("two Host", "GET /1k.bin HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n"),
            ("space before colon", "GET /1k.bin HTTP/1.1\r\nHost : a\r\n\r\n"),
            ("TE space before colon", "GET /1k.bin HTTP/1.1\r\nHost: a\r\nTransfer-Encoding : chunked\r\n\r\n"),
            ("bare LF in request line", "GET /1k.bin HTTP/1.1 x\r\nHost: a\r\n\r\n"),
        ];
        for (what, head) in vectors {
            let raw = format!("{head}{hidden}");
            let r = refused(&g, raw.as_bytes(), 400, what);
            assert!(r.closes(), "{what}: 400 without Connection: close");
        }
        std::thread::sleep(Duration::from_millis(200));
        let log = n.settled_log();
        assert!(log.is_empty(), "smuggling vectors reached the origin: {log:?}");
        assert_eq!(g.stat("upstream_requests"), 0);
    }
}

both_backends! {
    /// Slow heads: connections that send half a head and stop are closed by the head timeout
    /// (10 s, `HEAD_TIMEOUT` in src/server/conn.rs) — not before it, not much after — while
    /// other clients are served normally the whole time. (Trickling clients: see
    /// `heads_across_reads`.)
    fn slow_heads_are_timed_out(backend) {
        let (_n, g) = nginx_and_gate_with(backend, &["head_timeout = \"2s\""]);
        let t0 = Instant::now();
        let mut idle: Vec<Conn> = (0..8)
            .map(|_| {
                let mut c = Conn::open(g.addr());
                c.send("GET /1k.bin HTTP/1.1\r\nHost: a\r\nX-Half: ");
                c
            })
            .collect();
        // Others are served meanwhile.
        for _ in 0..5 {
            let r = http::get(g.addr(), "/1k.bin", &[]);
            assert_eq!(r.status, 200);
            std::thread::sleep(Duration::from_millis(100));
        }
        for (i, c) in idle.iter_mut().enumerate() {
            assert!(
                c.closed_within(Duration::from_secs(5).saturating_sub(t0.elapsed())),
                "half head {i} still open after {:?}",
                t0.elapsed()
            );
            if i == 0 {
                let at = t0.elapsed();
                assert!(at >= Duration::from_millis(1900), "closed too early: {at:?}");
            }
        }
        let r = http::get(g.addr(), "/1k.bin", &[]);
        assert_eq!(r.status, 200);
        assert!(r.is_hit());
    }
}

both_backends! {
    /// An idle keep-alive connection is closed after `idle_timeout` (1 s here), not before, and
    /// one in use is not: the timer starts when the last response was sent.
    fn idle_keep_alive_is_closed(backend) {
        let (_n, g) = nginx_and_gate_with(backend, &["idle_timeout = \"1s\""]);
        let mut busy = Conn::open(g.addr());
        let mut idle = Conn::open(g.addr());
        idle.send(http::get_req("/1k.bin", &[]));
        assert_eq!(idle.read_response(false).unwrap().status, 200);
        let t0 = Instant::now();
        // The busy connection sends a request every 200 ms: it must survive past 1 s.
        for _ in 0..8 {
            busy.send(http::get_req("/1k.bin", &[]));
            assert_eq!(busy.read_response(false).unwrap().status, 200);
            std::thread::sleep(Duration::from_millis(200));
        }
        assert!(
            idle.closed_within(Duration::from_secs(3).saturating_sub(t0.elapsed())),
            "idle connection still open after {:?}",
            t0.elapsed()
        );
        busy.send(http::get_req("/1k.bin", &[]));
        assert_eq!(busy.read_response(false).unwrap().status, 200, "busy connection survived");
        let quiet = Instant::now();
        assert!(busy.closed_within(Duration::from_secs(3)), "busy connection never idled out");
        assert!(quiet.elapsed() >= Duration::from_millis(900), "closed before idle_timeout");
    }
}

both_backends! {
    /// A request that already passed this node (its `Via` names us) is a loop: 508 at once,
    /// the connection closed, and nothing asked of the origin; other Via entries are fine.
    fn via_loop_is_refused(backend) {
        let (n, g) = nginx_and_gate_with(backend, &["node_name = \"gw-test-1\""]);
        let mut c = Conn::open(g.addr());
        c.send(http::get_req("/1k.bin", &[("Via", "1.1 edge.example.org, 1.1 gw-test-1 (gatecache)")]));
        let r = c.read_response(false).unwrap();
        assert_eq!(r.status, 508, "{}", r.body_text());
        assert!(r.body_text().contains("gw-test-1"), "{}", r.body_text());
        assert!(c.closed_within(Duration::from_secs(2)), "loop answer keeps the connection");
        let ok = http::get(g.addr(), "/1k.bin", &[("Via", "1.1 gw-test-2")]);
        assert_eq!(ok.status, 200);
        let log = n.settled_log();
        assert_eq!(log.len(), 1, "only the request without a loop reached the origin: {log:?}");
    }
}
