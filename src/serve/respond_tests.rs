//! The executor against a scripted in-memory transport: no binary, no socket. The cache is a
//! real store in a temporary directory; the configured origin refuses connections, so every
//! block the cache lacks ends in an upstream failure.

use std::collections::VecDeque;
use std::io;
use std::sync::atomic::Ordering;

use super::{Outcome, respond};
use crate::access::AccessLog;
use crate::cache::{Cache, Claim, Object};
use crate::config::RawConfig;
use crate::http::cache_status::{Answer, CacheStatus};
use crate::http::freshness;
use crate::http::request::{Limits, Request, parse};
use crate::serve::Services;
use crate::serve::plan;
use crate::serve::transport::{Out, Transport};
use crate::store::ObjectMeta;
use crate::upstream::Upstream;

/// The store's block size in these tests (the smallest allowed).
const BS: u64 = 64 * 1024;
/// Two whole blocks and a short third one.
const LEN: u64 = 2 * BS + 1000;
const ETAG: &str = "\"v1\"";
const LAST_MODIFIED: &str = "Tue, 01 Apr 2025 00:00:00 GMT";

/// Byte `i` of the test object: changes every byte and differs across block boundaries
/// (65536 is not a multiple of 251); never spells a status line.
fn byte(i: u64) -> u8 {
    (i % 251) as u8
}

fn bytes(r: std::ops::Range<u64>) -> Vec<u8> {
    r.map(byte).collect()
}

/// What the executor handed the transport, one entry per write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Wrote {
    Bytes(usize),
    Slot(usize),
    HeadAndSlot(usize, usize),
}

/// An in-memory [`Transport`]: reads come from a script, every byte written is recorded (slot
/// views copied out), the `fail_at`-th write (1-based) and every one after it fail like a
/// broken connection, and a shutdown is noted.
#[derive(Default)]
struct ScriptedTransport {
    input: VecDeque<Vec<u8>>,
    sent: Vec<u8>,
    writes: Vec<Wrote>,
    attempts: usize,
    fail_at: Option<usize>,
    shut_down: bool,
}

impl ScriptedTransport {
    fn failing_write(n: usize) -> Self {
        ScriptedTransport {
            fail_at: Some(n),
            ..Default::default()
        }
    }
}

impl Transport for ScriptedTransport {
    async fn read(&mut self, mut buf: Vec<u8>) -> (io::Result<usize>, Vec<u8>) {
        match self.input.pop_front() {
            Some(chunk) => {
                buf.extend_from_slice(&chunk);
                (Ok(chunk.len()), buf)
            }
            None => (Ok(0), buf),
        }
    }

    async fn write(&mut self, out: Out) -> io::Result<()> {
        self.attempts += 1;
        if self.fail_at.is_some_and(|n| self.attempts >= n) {
            return Err(io::Error::from(io::ErrorKind::BrokenPipe));
        }
        let wrote = match &out {
            Out::Bytes(b) => {
                self.sent.extend_from_slice(b);
                Wrote::Bytes(b.len())
            }
            Out::Slot(s) => {
                self.sent.extend_from_slice(s);
                Wrote::Slot(s.len())
            }
            Out::HeadAndSlot(h, s) => {
                self.sent.extend_from_slice(h);
                self.sent.extend_from_slice(s);
                Wrote::HeadAndSlot(h.len(), s.len())
            }
        };
        self.writes.push(wrote);
        Ok(())
    }

    fn shutdown_write(&mut self) {
        self.shut_down = true;
    }

    fn shutdown(&mut self) {
        self.shut_down = true;
    }
}

/// Services over a cache in a temporary directory, routed to an origin that refuses.
struct Fixture {
    sh: Services,
    _dir: tempfile::TempDir,
}

fn fixture() -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    // Port 1 on loopback: nothing listens there, so every connection is refused at once.
    let toml = format!(
        "workers = 1\naccess_log = \"off\"\nblock_size = \"64KiB\"\nslab_size = \"4MiB\"\n\
         [[storage]]\npath = \"{}\"\nsize = \"16MiB\"\n\
         [[route]]\nprefix = \"/\"\norigin = \"http://127.0.0.1:1\"\n\
         [upstream]\nfetchers = 2\nconnect_timeout = \"2s\"\n",
        dir.path().display()
    );
    let cfg = RawConfig::from_toml(&toml).unwrap().validate().unwrap();
    let (cache, _) = Cache::open_with_shards(&cfg.store, 4).unwrap();
    assert_eq!(u64::from(cache.block_size()), BS);
    let upstream = Upstream::start(cache.clone(), &cfg).unwrap();
    let access = AccessLog::from_setting(&cfg.access_log).unwrap();
    Fixture {
        sh: Services {
            cfg,
            limits: Limits::default(),
            cache,
            upstream,
            metrics: Default::default(),
            access,
        },
        _dir: dir,
    }
}

fn request(head: &str) -> Request {
    let text = format!("{head}\r\n\r\n");
    parse(text.as_bytes(), &Limits::default())
        .unwrap()
        .unwrap()
        .0
}

/// `GET /obj` with `extra` header lines.
fn get(extra: &str) -> Request {
    request(&format!("GET /obj HTTP/1.1\r\nHost: gw{extra}"))
}

impl Fixture {
    /// The cache key `/obj` routes to.
    fn key(&self) -> String {
        plan::admit(&get(""), &self.sh.cfg).unwrap().key
    }

    /// Stores the fresh object's metadata and the blocks `blocks` of it (the others stay
    /// missing), the way a fill does: a claimed writer per block, filled and committed.
    fn store(&self, blocks: &[u32]) -> Object {
        let cache = &self.sh.cache;
        let o = cache
            .put_object(ObjectMeta {
                key: self.key(),
                total_len: LEN,
                status: 200,
                etag: Some(ETAG.into()),
                last_modified: Some(LAST_MODIFIED.into()),
                content_type: Some("application/octet-stream".into()),
                cache_control: Some("max-age=3600".into()),
                stored_at: freshness::unix_now(),
                ..Default::default()
            })
            .unwrap();
        for &b in blocks {
            let Ok(Claim::Write(mut w)) = cache.claim(&o.meta.key, b, o.version) else {
                panic!("block {b} should be missing");
            };
            let start = u64::from(b) * BS;
            let data = bytes(start..start + w.capacity() as u64);
            assert_eq!(w.write(&data), data.len());
            w.commit().unwrap();
        }
        o
    }

    /// Answers `req` on a keep-alive connection through `t`.
    fn respond(&self, t: &mut ScriptedTransport, req: &Request) -> Outcome {
        self.respond_keep(t, req, true)
    }

    /// Answers `req` through `t` on a connection kept alive after it or not (`keep`).
    fn respond_keep(&self, t: &mut ScriptedTransport, req: &Request, keep: bool) -> Outcome {
        tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .unwrap()
            .block_on(respond(t, req, Vec::new(), &self.sh, keep))
    }

    fn upstream_requests(&self) -> u64 {
        self.sh.upstream.stats.requests.load(Ordering::Relaxed)
    }
}

/// A response as the client reads it.
struct Response {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Response {
    fn parse(sent: &[u8]) -> Response {
        let end = sent
            .windows(4)
            .position(|w| w == b"\r\n\r\n")
            .expect("a complete head");
        let head = std::str::from_utf8(&sent[..end]).unwrap();
        let mut lines = head.split("\r\n");
        let status_line = lines.next().unwrap();
        let status = status_line
            .strip_prefix("HTTP/1.1 ")
            .and_then(|s| s.get(..3))
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("bad status line {status_line:?}"));
        let headers = lines
            .map(|l| {
                let (k, v) = l.split_once(": ").unwrap();
                (k.to_string(), v.to_string())
            })
            .collect();
        Response {
            status,
            headers,
            body: sent[end + 4..].to_vec(),
        }
    }

    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    fn content_length(&self) -> usize {
        self.header("Content-Length").unwrap().parse().unwrap()
    }
}

/// Asks for the fully stored object with `extra` header lines: the transport, what the client
/// got, and the outcome.
fn ask_stored(extra: &str) -> (ScriptedTransport, Response, Outcome) {
    let f = fixture();
    f.store(&[0, 1, 2]);
    let mut t = ScriptedTransport::default();
    let out = f.respond(&mut t, &get(extra));
    let r = Response::parse(&t.sent);
    (t, r, out)
}

/// How many status lines are in what was sent (the body bytes never spell one).
fn heads_in(sent: &[u8]) -> usize {
    sent.windows(9).filter(|w| w == b"HTTP/1.1 ").count()
}

#[test]
fn a_fresh_stored_object_is_a_200_hit_with_exactly_its_bytes() {
    let f = fixture();
    f.store(&[0, 1, 2]);
    let mut t = ScriptedTransport::default();
    let out = f.respond(&mut t, &get(""));
    let r = Response::parse(&t.sent);
    assert_eq!(r.status, 200);
    assert_eq!(r.content_length() as u64, LEN);
    assert_eq!(r.body, bytes(0..LEN));
    assert_eq!(r.header("Cache-Status"), Some("gatecache; hit"));
    assert_eq!(r.header("ETag"), Some(ETAG));
    assert_eq!(r.header("Last-Modified"), Some(LAST_MODIFIED));
    assert_eq!(r.header("Accept-Ranges"), Some("bytes"));
    assert_eq!(r.header("Content-Range"), None);
    assert_eq!(r.header("Connection"), None, "kept alive");
    // The head goes out with the first block; one slot write per further block.
    assert_eq!(
        t.writes[1..],
        [Wrote::Slot(BS as usize), Wrote::Slot(1000)],
        "{:?}",
        t.writes
    );
    assert!(matches!(t.writes[0], Wrote::HeadAndSlot(_, n) if n as u64 == BS));
    assert_eq!(out.status, 200);
    assert_eq!(out.bytes, LEN);
    assert!(out.keep_alive);
    assert_eq!(out.cache, CacheStatus::Hit);
    assert_eq!(out.origin.as_deref(), Some("127.0.0.1:1"));
    assert_eq!(f.upstream_requests(), 0, "a hit asks no upstream");
    assert!(!t.shut_down, "closing is the connection's job");
}

#[test]
fn a_single_range_is_a_206_with_exactly_its_bytes_within_and_across_blocks() {
    let f = fixture();
    f.store(&[0, 1, 2]);
    for (spec, range) in [
        ("10-99", 10..100),
        // Ends in block 0, starts again in block 1.
        ("65500-65599", 65_500..65_600),
        // From inside block 0 to the end of the short last block.
        ("100-", 100..LEN),
    ] {
        let mut t = ScriptedTransport::default();
        let out = f.respond(&mut t, &get(&format!("\r\nRange: bytes={spec}")));
        let r = Response::parse(&t.sent);
        assert_eq!(r.status, 206, "{spec}");
        let want_cr = format!("bytes {}-{}/{LEN}", range.start, range.end - 1);
        assert_eq!(r.header("Content-Range"), Some(want_cr.as_str()), "{spec}");
        assert_eq!(r.content_length() as u64, range.end - range.start, "{spec}");
        assert_eq!(r.body, bytes(range.clone()), "{spec}");
        assert_eq!(r.header("Cache-Status"), Some("gatecache; hit"), "{spec}");
        assert_eq!(out.status, 206, "{spec}");
        assert_eq!(out.bytes, range.end - range.start, "{spec}");
        assert!(out.keep_alive, "{spec}");
        assert_eq!(heads_in(&t.sent), 1, "{spec}");
    }
}

/// The parts of a `multipart/byteranges` body: (Content-Type, Content-Range, bytes) each, and
/// whether the closing delimiter ends the body with nothing after it.
fn multipart(body: &[u8], boundary: &str) -> (Vec<(String, String, Vec<u8>)>, bool) {
    let delim = format!("\r\n--{boundary}");
    let find = |from: usize| {
        body[from..]
            .windows(delim.len())
            .position(|w| w == delim.as_bytes())
            .map(|p| from + p)
    };
    let mut parts = Vec::new();
    let mut at = find(0).expect("a first delimiter");
    assert_eq!(at, 0, "the body starts with the first delimiter");
    loop {
        let after = at + delim.len();
        if body[after..].starts_with(b"--") {
            return (parts, &body[after..] == b"--\r\n");
        }
        let head_end = after
            + body[after..]
                .windows(4)
                .position(|w| w == b"\r\n\r\n")
                .expect("a part head");
        let head = std::str::from_utf8(&body[after + 2..head_end]).unwrap();
        let field = |name: &str| {
            head.split("\r\n")
                .find_map(|l| l.strip_prefix(name))
                .unwrap_or_default()
                .to_string()
        };
        let next = find(head_end).expect("a delimiter after each part");
        parts.push((
            field("Content-Type: "),
            field("Content-Range: "),
            body[head_end + 4..next].to_vec(),
        ));
        at = next;
    }
}

#[test]
fn several_ranges_are_a_206_multipart_body_with_each_part_and_a_closing_boundary() {
    let (t, r, out) = ask_stored("\r\nRange: bytes=0-9,50-59");
    assert_eq!(r.status, 206);
    let ctype = r.header("Content-Type").unwrap();
    let boundary = ctype
        .strip_prefix("multipart/byteranges; boundary=")
        .unwrap_or_else(|| panic!("not multipart: {ctype:?}"));
    assert!(!boundary.is_empty());
    assert_eq!(r.header("Content-Range"), None, "only the parts have one");
    assert_eq!(
        r.content_length(),
        r.body.len(),
        "Content-Length is the body"
    );
    let (parts, closed) = multipart(&r.body, boundary);
    assert!(closed, "the body ends with the closing boundary");
    let want = |a: u64, b: u64| {
        (
            "application/octet-stream".to_string(),
            format!("bytes {a}-{b}/{LEN}"),
            bytes(a..b + 1),
        )
    };
    assert_eq!(parts, [want(0, 9), want(50, 59)]);
    assert_eq!(out.status, 206);
    assert!(out.keep_alive);
    assert_eq!(out.cache, CacheStatus::Hit);
    assert_eq!(heads_in(&t.sent), 1);
}

/// Regression (issue 12, point 8): on a connection that closes after the response
/// (`Connection: close`, HTTP/1.0; RFC 9112 §9.6) only the first part was sent: the sender
/// took "not kept alive" for "the send failed" and stopped after it, without the other parts
/// or the closing boundary (RFC 9110 §14.6).
#[test]
fn several_ranges_on_a_closing_connection_are_sent_whole() {
    let f = fixture();
    f.store(&[0, 1, 2]);
    let mut t = ScriptedTransport::default();
    let out = f.respond_keep(&mut t, &get("\r\nRange: bytes=1-2,6-7,70000-70009"), false);
    let r = Response::parse(&t.sent);
    assert_eq!(r.status, 206);
    assert_eq!(r.header("Connection"), Some("close"));
    assert_eq!(r.content_length(), r.body.len(), "the whole announced body");
    let ctype = r.header("Content-Type").unwrap();
    let boundary = ctype
        .strip_prefix("multipart/byteranges; boundary=")
        .unwrap();
    let (parts, closed) = multipart(&r.body, boundary);
    assert!(closed, "the body ends with the closing boundary");
    let ranges: Vec<_> = parts.iter().map(|p| (p.1.clone(), p.2.clone())).collect();
    let want = |a: u64, b: u64| (format!("bytes {a}-{b}/{LEN}"), bytes(a..b + 1));
    assert_eq!(ranges, [want(1, 2), want(6, 7), want(70000, 70009)]);
    assert_eq!(out.bytes, r.body.len() as u64);
    assert!(!out.keep_alive);
}

/// Issue 12, point 11: an error the cache makes itself names the cache as the answerer and why
/// (RFC 9211 §2.8 `detail`), never `fwd` as if an upstream answer were relayed.
#[test]
fn an_error_of_the_cache_is_named_as_its_own_answer() {
    let f = fixture();
    // Block 2 stored keeps the object while the fills of blocks 0-1 fail (with nothing stored
    // the request would be planned again and name the unreachable upstream instead).
    f.store(&[2]);
    let mut t = ScriptedTransport::default();
    let out = f.respond(&mut t, &get(""));
    let r = Response::parse(&t.sent);
    assert_eq!(r.status, 502);
    assert_eq!(
        r.header("Cache-Status"),
        Some("gatecache; detail=upstream-error")
    );
    assert_eq!(out.cache, CacheStatus::Answered(Answer::UpstreamError));
    assert_eq!(out.cache.label(), "ANSWERED:upstream-error");
    // A range past the end of the stored object: the cache's own 416.
    let f = fixture();
    f.store(&[0, 1, 2]);
    let mut t = ScriptedTransport::default();
    let out = f.respond(&mut t, &get("\r\nRange: bytes=999999-"));
    let r = Response::parse(&t.sent);
    assert_eq!(r.status, 416);
    assert_eq!(
        r.header("Cache-Status"),
        Some("gatecache; detail=range-not-satisfiable")
    );
    assert_eq!(out.cache.label(), "ANSWERED:range-not-satisfiable");
}

/// Regression: the bytes sent of a multipart response counted only its ranges' data (20 of
/// 270 here), so the access log and the metrics under-counted every multipart reply.
#[test]
fn bytes_sent_of_a_multipart_response_count_the_whole_body() {
    let (_, r, out) = ask_stored("\r\nRange: bytes=0-9,50-59");
    assert_eq!(r.status, 206);
    assert_eq!(out.bytes, r.body.len() as u64);
    assert_eq!(out.bytes, r.content_length() as u64);
}

/// Regression: a chunk was counted as sent before its write, so a failed write still showed
/// in the bytes sent (131,072 where 65,536 reached the client).
#[test]
fn bytes_sent_count_only_chunks_whose_write_succeeded() {
    let f = fixture();
    f.store(&[0, 1, 2]);
    for fail in [1, 2, 3] {
        let mut t = ScriptedTransport::failing_write(fail);
        let out = f.respond(&mut t, &get(""));
        let delivered = if fail == 1 {
            0
        } else {
            Response::parse(&t.sent).body.len() as u64
        };
        assert_eq!(out.bytes, delivered, "write {fail} fails");
        assert!(!out.keep_alive);
    }
}

#[test]
fn a_stream_error_before_the_head_is_a_complete_502_reply() {
    let f = fixture();
    // The record is stored, none of its blocks: the fill asks the origin, which refuses.
    f.store(&[]);
    let mut t = ScriptedTransport::default();
    let out = f.respond(&mut t, &get(""));
    let r = Response::parse(&t.sent);
    assert_eq!(r.status, 502, "{}", String::from_utf8_lossy(&t.sent));
    assert_eq!(heads_in(&t.sent), 1, "one head: the error's, no 200");
    assert_eq!(r.content_length(), r.body.len());
    assert!(
        r.body.len() > 1 && r.body.ends_with(b"\n"),
        "a one-line body"
    );
    assert_eq!(r.header("Content-Type"), Some("text/plain; charset=utf-8"));
    assert_eq!(
        t.writes,
        [Wrote::Bytes(t.sent.len())],
        "one write: the reply"
    );
    assert_eq!(out.status, 502);
    assert_eq!(out.bytes, 0);
    // The reply is whole: the connection can take the next request.
    assert!(out.keep_alive);
    assert!(f.upstream_requests() >= 1, "the origin was asked");
}

/// Regression: the failed fill of an object with no block stored dropped the object, and the
/// stream's retry then found no object and told the client "object changed during the
/// request": an upstream failure read as a change of representation.
#[test]
fn a_failed_fill_that_dropped_the_object_is_reported_as_the_failed_fetch() {
    let f = fixture();
    f.store(&[]);
    let mut t = ScriptedTransport::default();
    let out = f.respond(&mut t, &get(""));
    let r = Response::parse(&t.sent);
    assert_eq!(r.status, 502);
    // The object is gone with the failed fill: the request is planned again and meets the
    // upstream's failure itself (or the fill's, if it is still the one in hand).
    let body = String::from_utf8_lossy(&r.body);
    assert!(
        body.starts_with("upstream fetch failed") || body.starts_with("upstream connection failed"),
        "{body}"
    );
    assert!(!body.contains("changed"), "{body}");
    assert_eq!(out.status, 502);
}

#[test]
fn a_stream_error_before_the_head_of_a_range_names_the_failed_fetch() {
    let f = fixture();
    // Block 2 stored keeps the object in the index while the fills of blocks 0-1 fail.
    f.store(&[2]);
    let mut t = ScriptedTransport::default();
    let out = f.respond(&mut t, &get("\r\nRange: bytes=10-70000"));
    let r = Response::parse(&t.sent);
    assert_eq!(r.status, 502, "{}", String::from_utf8_lossy(&t.sent));
    assert_eq!(heads_in(&t.sent), 1, "one head: the error's, no 206");
    assert_eq!(r.header("Content-Range"), None);
    assert_eq!(r.body, b"upstream fetch failed\n");
    assert_eq!(out.status, 502);
    assert!(out.keep_alive);
    // The first try and the two retries of the stream each asked the origin.
    assert_eq!(f.upstream_requests(), 3);
}

#[test]
fn a_stream_error_after_the_head_cuts_the_response_and_the_connection() {
    let f = fixture();
    // Block 0 is there; blocks 1 and 2 must be fetched, and the origin refuses.
    f.store(&[0]);
    for (extra, code, len) in [("", 200, LEN), ("\r\nRange: bytes=100-70000", 206, 69_901)] {
        let mut t = ScriptedTransport::default();
        let out = f.respond(&mut t, &get(extra));
        let r = Response::parse(&t.sent);
        assert_eq!(r.status, code, "{extra:?}");
        assert_eq!(heads_in(&t.sent), 1, "{extra:?}: never a second head");
        assert_eq!(r.content_length() as u64, len, "{extra:?}");
        let start = 100 * u64::from(code == 206);
        assert_eq!(r.body, bytes(start..BS), "{extra:?}: block 0, then nothing");
        assert_eq!(
            r.header("Cache-Status"),
            Some("gatecache; fwd=partial; stored")
        );
        assert_eq!(t.writes.len(), 1, "{extra:?}: {:?}", t.writes);
        assert_eq!(out.status, code, "{extra:?}");
        assert_eq!(out.bytes, BS - start, "{extra:?}");
        assert!(out.bytes < len, "{extra:?}");
        assert!(
            !out.keep_alive,
            "{extra:?}: a cut body must close the connection"
        );
        assert!(!t.shut_down, "closing is the connection's job");
    }
}

#[test]
fn a_failed_write_after_the_head_ends_the_response_and_the_connection() {
    let f = fixture();
    f.store(&[0, 1, 2]);
    // Write 1 is the head with block 0; write 2 (block 1) fails.
    let mut t = ScriptedTransport::failing_write(2);
    let out = f.respond(&mut t, &get(""));
    let r = Response::parse(&t.sent);
    assert_eq!(r.status, 200);
    assert_eq!(r.body, bytes(0..BS));
    assert_eq!(t.attempts, 2, "nothing is written after the failure");
    assert_eq!(out.status, 200);
    assert!(!out.keep_alive);
}

#[test]
fn a_failed_write_of_the_head_ends_the_connection() {
    let f = fixture();
    f.store(&[0, 1, 2]);
    for extra in ["", "\r\nRange: bytes=0-9,50-59"] {
        let mut t = ScriptedTransport::failing_write(1);
        let out = f.respond(&mut t, &get(extra));
        assert!(t.sent.is_empty(), "{extra:?}");
        assert_eq!(
            t.attempts, 1,
            "{extra:?}: nothing is written after the failure"
        );
        assert!(!out.keep_alive, "{extra:?}");
    }
}
