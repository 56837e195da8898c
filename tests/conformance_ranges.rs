//! Conformance, byte ranges (RFC 9110 §14) and the end of the exchange that carries them
//! (issue 12, point 8): a `multipart/byteranges` body (RFC 9110 §14.6) arrives whole, every
//! part and the closing boundary, when the connection closes after it (`Connection: close`,
//! or an HTTP/1.0 client; RFC 9112 §9.3, §9.6), on a cold object and on a hit; and no response
//! (single, multipart, error, pass-through) loses its tail to a reset when the client sent more
//! behind a request that closes the connection (RFC 9112 §9.6: the server closes in stages).
//!
//! The client is a raw `TcpStream`: the request bytes are written as they are, and the response
//! is read to the end of the connection, the way an HTTP/1.0 client knows it ended.

mod support;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::ops::Range;
use std::time::Duration;

use support::data::{self, F1K, F1M3, F16M, assert_same};
use support::http::{self, parse_multipart};
use support::*;

/// A response read to the end of the connection.
struct Exchange {
    status: u16,
    headers: Vec<(String, String)>,
    /// Every byte after the head, up to the end of the connection.
    body: Vec<u8>,
    /// How reading ended: `None` at a clean end of stream, else the error (a reset).
    end: Option<String>,
}

impl Exchange {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// The body is exactly what `Content-Length` announced and the connection then ended
    /// cleanly (no reset, nothing after it).
    #[track_caller]
    fn assert_whole(&self, what: &str) {
        assert_eq!(self.end, None, "{what}: the connection was reset");
        let len: usize = self
            .header("content-length")
            .unwrap_or_else(|| panic!("{what}: no Content-Length"))
            .parse()
            .unwrap();
        assert_eq!(
            self.body.len(),
            len,
            "{what}: body bytes up to the end of the connection"
        );
    }
}

/// Writes `request` (then `behind`, bytes the client sends after it without waiting) on a new
/// connection and reads the response to the end of the connection; with `slow`, reads it the
/// way a slow client does (a pause before the first read and after every 64 KiB).
fn exchange(addr: SocketAddr, request: &[u8], behind: &[u8], slow: bool) -> Exchange {
    let mut s = TcpStream::connect(addr).unwrap_or_else(|e| panic!("connect {addr}: {e}"));
    s.set_read_timeout(Some(http::READ_TIMEOUT)).unwrap();
    let mut raw = request.to_vec();
    raw.extend_from_slice(behind);
    // Written from another thread: the server reads none of `behind` while it answers.
    let mut w = s.try_clone().unwrap();
    let writer = std::thread::spawn(move || {
        let _ = w.write_all(&raw);
    });
    if slow {
        std::thread::sleep(Duration::from_millis(200));
    }
    let mut got = Vec::new();
    let mut buf = vec![0u8; 64 * 1024];
    let end = loop {
        match s.read(&mut buf) {
            Ok(0) => break None,
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e) => break Some(e.to_string()),
        }
        if slow {
            std::thread::sleep(Duration::from_millis(2));
        }
    };
    let _ = writer.join();
    let head_end = got
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .unwrap_or_else(|| {
            panic!(
                "no whole head in {:?} ({end:?})",
                String::from_utf8_lossy(&got)
            )
        });
    let mut hs = [httparse::EMPTY_HEADER; 64];
    let mut r = httparse::Response::new(&mut hs);
    r.parse(&got[..head_end + 4]).expect("a response head");
    Exchange {
        status: r.code.unwrap(),
        headers: http::fields(r.headers),
        body: got[head_end + 4..].to_vec(),
        end,
    }
}

/// The two requests after which the connection closes (RFC 9112 §9.3): an HTTP/1.1 request
/// with `Connection: close`, and an HTTP/1.0 request (no keep-alive asked for).
#[derive(Clone, Copy, Debug)]
enum Closing {
    ConnectionClose,
    Http10,
}

impl Closing {
    fn request(self, path: &str, range: &str) -> Vec<u8> {
        let range = if range.is_empty() {
            String::new()
        } else {
            format!("Range: {range}\r\n")
        };
        match self {
            Closing::ConnectionClose => format!(
                "GET {path} HTTP/1.1\r\nHost: gatecache.test\r\n{range}Connection: close\r\n\r\n"
            ),
            Closing::Http10 => format!("GET {path} HTTP/1.0\r\n{range}\r\n"),
        }
        .into_bytes()
    }
}

/// Checks a `multipart/byteranges` 206 read to the end of the connection: the whole announced
/// body, then every part (its Content-Type, Content-Range and bytes, in the order asked) and
/// the closing boundary with nothing after it (RFC 9110 §14.6).
#[track_caller]
fn check_multipart(e: &Exchange, file: (&str, u64), want: &[Range<u64>], what: &str) {
    assert_eq!(
        e.status,
        206,
        "{what}: {}",
        String::from_utf8_lossy(&e.body)
    );
    assert_eq!(e.header("connection"), Some("close"), "{what}");
    e.assert_whole(what);
    let ct = e.header("content-type").expect("Content-Type");
    assert!(
        ct.starts_with("multipart/byteranges; boundary="),
        "{what}: {ct}"
    );
    // Strict: each part's bytes by its Content-Range, then the closing delimiter.
    let parts = parse_multipart(ct, &e.body).unwrap_or_else(|err| panic!("{what}: {err}"));
    assert_eq!(parts.len(), want.len(), "{what}: every part");
    let all = data::content(file);
    for (p, w) in parts.iter().zip(want) {
        assert_eq!(p.range, (w.start, w.end - 1, file.1), "{what}");
        assert_eq!(
            p.content_type.as_deref(),
            Some("application/octet-stream"),
            "{what}"
        );
        assert_same(&p.data, &all[w.start as usize..w.end as usize], what);
    }
    let boundary = ct.rsplit("boundary=").next().unwrap();
    let closing = format!("\r\n--{boundary}--\r\n");
    assert!(
        e.body.ends_with(closing.as_bytes()),
        "{what}: the closing boundary"
    );
}

/// A file of the origin, a `Range` value, and the ranges it selects.
type Set = ((&'static str, u64), &'static str, Vec<Range<u64>>);

/// The range sets asked: the issue's own (`bytes=1-2,6-7`, inside one block), and parts in
/// several blocks of the 1 MiB + 3 object, the last one open-ended into its short last block.
fn sets() -> Vec<Set> {
    vec![
        (F1K, "bytes=1-2,6-7", vec![1..3, 6..8]),
        (
            F1M3,
            "bytes=1-2,65530-65545,1048570-",
            vec![1..3, 65530..65546, 1_048_570..F1M3.1],
        ),
    ]
}

/// Every set, as `closing` asks it, on a cold object (a key of its own: fetched while
/// answered) and then on the same object cached (a hit).
fn closing_multipart_cold_then_hit(backend: Backend, closing: Closing) {
    let (_n, g) = nginx_and_gate(backend);
    for (i, (file, spec, want)) in sets().into_iter().enumerate() {
        let path = format!("/{}?closing={closing:?}&set={i}", file.0);
        let e = exchange(g.addr(), &closing.request(&path, spec), b"", false);
        let what = format!("{closing:?}, cold {}, {spec}", file.0);
        check_multipart(&e, file, &want, &what);
        assert!(
            e.header("cache-status")
                .unwrap_or("")
                .starts_with("gatecache; fwd=miss"),
            "{what}: {:?}",
            e.header("cache-status")
        );
        // The whole object cached, then the same ranges again: a hit.
        let whole = http::get(g.addr(), &path, &[]);
        assert_eq!(whole.status, 200, "{what}");
        wait_hit(&g, &path, &[("Range", spec)]);
        let e = exchange(g.addr(), &closing.request(&path, spec), b"", false);
        let what = format!("{closing:?}, hit {}, {spec}", file.0);
        check_multipart(&e, file, &want, &what);
        assert_eq!(e.header("cache-status"), Some("gatecache; hit"), "{what}");
    }
}

both_backends! {
    /// Issue 12's failing input: `Range: bytes=1-2,6-7` with `Connection: close`. Every part
    /// and the closing boundary arrive (the sender stopped after the first part when the
    /// connection was not to be kept), cold and cached.
    fn multipart_byteranges_are_whole_when_the_request_says_connection_close(backend) {
        closing_multipart_cold_then_hit(backend, Closing::ConnectionClose);
    }
}

both_backends! {
    /// The same ranges from an HTTP/1.0 client (no keep-alive: the connection closes after the
    /// response, RFC 9112 §9.3): every part and the closing boundary, cold and cached.
    fn multipart_byteranges_are_whole_for_an_http10_client(backend) {
        closing_multipart_cold_then_hit(backend, Closing::Http10);
    }
}

/// `n` keep-alive requests, pipelined: what a client sends behind a request it does not yet
/// know closes the connection (RFC 9112 §9.6's "another request sent by the client before
/// receiving the server's response").
fn pipelined_behind(n: usize) -> Vec<u8> {
    http::get_req("/1k.bin?behind", &[]).repeat(n).into_bytes()
}

both_backends! {
    /// Point 8, the whole kind (RFC 9112 §9.6): a response after which the connection closes,
    /// with more requests pipelined behind it that the cache never reads, reaches a slow client
    /// whole: a single 200 on a miss and on a hit, a large multipart 206, a pass-through 200 and
    /// an error. (Closed at once, the socket with unread input answered with a reset that threw
    /// away the untransmitted tail of the response.)
    fn every_response_is_whole_when_the_connection_closes_with_requests_pipelined_behind_it(backend) {
        let (_n, g) = nginx_and_gate(backend);
        let behind = pipelined_behind(2000);
        let all = data::content(F16M);
        for closing in [Closing::ConnectionClose, Closing::Http10] {
            let path = &format!("/16m.bin?behind={closing:?}");
            // Single: the whole object, cold (a key of its own) then a hit.
            for pass in ["cold", "hit"] {
                let what = format!("{closing:?}, {pass} 200");
                let e = exchange(g.addr(), &closing.request(path, ""), &behind, true);
                assert_eq!(e.status, 200, "{what}");
                e.assert_whole(&what);
                assert_same(&e.body, &all, &what);
                if pass == "cold" {
                    wait_hit(&g, path, &[]);
                }
            }
            // Multipart, large parts.
            let spec = "bytes=0-4999999,8000000-";
            let e = exchange(g.addr(), &closing.request(path, spec), &behind, true);
            let what = format!("{closing:?}, multipart");
            check_multipart(&e, F16M, &[0..5_000_000, 8_000_000..F16M.1], &what);
            // Pass-through (a request with credentials is relayed, RFC 9111 §3.5).
            let mut req = closing.request("/16m.bin?pass", "");
            let at = req.len() - 2;
            req.splice(at..at, b"Authorization: Bearer t\r\n".iter().copied());
            let e = exchange(g.addr(), &req, &behind, true);
            let what = format!("{closing:?}, pass-through");
            assert_eq!(e.status, 200, "{what}");
            let cs = e.header("cache-status").unwrap_or_default();
            assert!(cs.starts_with("gatecache; fwd="), "{what}: relayed, {cs:?}");
            e.assert_whole(&what);
            assert_same(&e.body, &all, &what);
            // An error of the cache's own.
            let e = exchange(g.addr(), &closing.request(path, "bytes=99999999-"), &behind, true);
            let what = format!("{closing:?}, 416");
            assert_eq!(e.status, 416, "{what}");
            e.assert_whole(&what);
        }
    }
}
