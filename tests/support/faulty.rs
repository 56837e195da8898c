//! A small origin of our own (std threads, HTTP/1.1 keep-alive, single `Range`s) whose objects
//! can be told to misbehave: reset or cut the body half way, answer the wrong Content-Range,
//! trickle, fail with a status, or change content and ETag between requests. It records each
//! request and the body bytes it sent.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// What to do wrong.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Fault {
    None,
    /// Send the head and half the body, then reset the connection (RST).
    ResetMidBody,
    /// Send the head and half the body, then close cleanly (FIN): a short body.
    ShortBody,
    /// Answer 206 for a range that is not the one asked for (off by one byte).
    WrongContentRange,
    /// Send the body in `chunk`-byte pieces with `pause` between them.
    Slow {
        chunk: usize,
        pause: Duration,
    },
    /// Answer this status with a one-line body (and, for a 3xx, the object's headers, such
    /// as a `Location`).
    Status(u16),
    /// Answer this status with the object's headers and its data as the body (none for a
    /// 204 or a 304), whatever the request's range or validators.
    Answer(u16),
    /// Answer every conditional request 304 with another `ETag` (`"other"`) than the one it
    /// names: a 304 that cannot refresh what the cache stores (RFC 9111 §4.3.4).
    Bad304,
    /// The same bytes, but the `ETag` alternates between `<etag>0` and `<etag>1` from one
    /// response to the next (CDN edges that disagree).
    FlapEtag,
}

#[derive(Clone, Debug)]
pub struct Obj {
    pub data: Arc<Vec<u8>>,
    pub etag: String,
    pub last_modified: String,
    pub fault: Fault,
    /// The fault applies to this many more requests, then the object behaves.
    pub fault_left: usize,
    /// Extra response headers (`Cache-Control`, ...).
    pub headers: Vec<(String, String)>,
    /// Send the body chunked, with no Content-Length, and ignore Range (dynamic content).
    pub chunked: bool,
}

impl Obj {
    pub fn new(data: Vec<u8>, etag: &str) -> Obj {
        Obj {
            data: Arc::new(data),
            etag: etag.into(),
            last_modified: "Wed, 21 Oct 2015 07:28:00 GMT".into(),
            fault: Fault::None,
            fault_left: 0,
            headers: Vec::new(),
            chunked: false,
        }
    }

    /// No `ETag` and no `Last-Modified`: nothing to tell two versions apart by.
    pub fn without_validators(mut self) -> Obj {
        self.etag.clear();
        self.last_modified.clear();
        self
    }

    pub fn chunked(mut self) -> Obj {
        self.chunked = true;
        self
    }

    pub fn with_header(mut self, name: &str, value: &str) -> Obj {
        self.headers.push((name.into(), value.into()));
        self
    }

    /// The fault, for every request.
    pub fn with_fault(mut self, f: Fault) -> Obj {
        self.fault = f;
        self.fault_left = usize::MAX;
        self
    }

    /// The fault, for the next `n` requests only.
    pub fn with_fault_times(mut self, f: Fault, n: usize) -> Obj {
        self.fault = f;
        self.fault_left = n;
        self
    }
}

/// One request as the origin saw it.
#[derive(Clone, Debug)]
pub struct Seen {
    pub method: String,
    /// Path and query.
    pub target: String,
    pub host: Option<String>,
    pub range: Option<String>,
    pub if_none_match: Option<String>,
    pub authorization: Option<String>,
    /// Every request field as received (name, value), in order.
    pub headers: Vec<(String, String)>,
    /// The request body (POST, PUT, ...).
    pub body: Vec<u8>,
    pub status: u16,
    /// Body bytes written (as far as the socket accepted them).
    pub body_sent: u64,
    pub fault: Fault,
}

#[derive(Default)]
struct State {
    objs: Mutex<HashMap<String, Obj>>,
    seen: Mutex<Vec<Seen>>,
}

pub struct FaultOrigin {
    pub port: u16,
    state: Arc<State>,
    stop: Arc<AtomicBool>,
}

impl FaultOrigin {
    pub fn start() -> FaultOrigin {
        let l = TcpListener::bind("127.0.0.1:0").expect("bind fault origin");
        let port = l.local_addr().unwrap().port();
        let state = Arc::new(State::default());
        let stop = Arc::new(AtomicBool::new(false));
        let (st, sp) = (state.clone(), stop.clone());
        std::thread::Builder::new()
            .name("fault-origin".into())
            .spawn(move || {
                for s in l.incoming() {
                    if sp.load(Ordering::Relaxed) {
                        return;
                    }
                    let Ok(s) = s else { continue };
                    let st = st.clone();
                    let sp = sp.clone();
                    std::thread::spawn(move || serve(s, &st, &sp));
                }
            })
            .unwrap();
        FaultOrigin { port, state, stop }
    }

    pub fn origin_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    /// Serves `obj` at `path` (replacing what was there).
    pub fn put(&self, path: &str, obj: Obj) {
        self.state.objs.lock().unwrap().insert(path.into(), obj);
    }

    /// Changes only the fault of `path` (for every following request).
    pub fn set_fault(&self, path: &str, f: Fault) {
        let mut objs = self.state.objs.lock().unwrap();
        let o = objs.get_mut(path).expect("no such object");
        o.fault = f;
        o.fault_left = usize::MAX;
    }

    pub fn seen(&self) -> Vec<Seen> {
        self.state.seen.lock().unwrap().clone()
    }

    /// Requests for `path` (query ignored).
    pub fn seen_for(&self, path: &str) -> Vec<Seen> {
        self.seen()
            .into_iter()
            .filter(|s| s.target.split('?').next() == Some(path))
            .collect()
    }

    /// [`FaultOrigin::seen_for`] once every one of those requests has been answered (the
    /// status is recorded after the response is written, which a client may see first).
    pub fn answered_for(&self, path: &str) -> Vec<Seen> {
        let t0 = std::time::Instant::now();
        loop {
            let v = self.seen_for(path);
            if v.iter().all(|s| s.status != 0) || t0.elapsed() > Duration::from_secs(5) {
                return v;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    pub fn requests(&self, path: &str) -> usize {
        self.seen_for(path).len()
    }

    pub fn bytes(&self, path: &str) -> u64 {
        self.seen_for(path).iter().map(|s| s.body_sent).sum()
    }
}

impl Drop for FaultOrigin {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        // Wake the accept loop so it sees the flag.
        let _ = TcpStream::connect_timeout(&self.addr(), Duration::from_millis(200));
    }
}

struct ReqHead {
    method: String,
    target: String,
    host: Option<String>,
    range: Option<String>,
    if_none_match: Option<String>,
    authorization: Option<String>,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
    close: bool,
}

fn read_head(s: &mut TcpStream, buf: &mut Vec<u8>) -> Option<ReqHead> {
    loop {
        let mut hs = [httparse::EMPTY_HEADER; 64];
        let mut r = httparse::Request::new(&mut hs);
        if let Ok(httparse::Status::Complete(n)) = r.parse(buf) {
            let h = |name: &str| {
                r.headers
                    .iter()
                    .find(|h| h.name.eq_ignore_ascii_case(name))
                    .map(|h| String::from_utf8_lossy(h.value).into_owned())
            };
            let body_len: usize = h("content-length")
                .and_then(|v| v.trim().parse().ok())
                .unwrap_or(0);
            let head = ReqHead {
                method: r.method.unwrap_or("").to_string(),
                target: r.path.unwrap_or("").to_string(),
                host: h("host"),
                range: h("range"),
                if_none_match: h("if-none-match"),
                authorization: h("authorization"),
                headers: super::http::fields(r.headers),
                body: Vec::new(),
                close: h("connection").is_some_and(|v| v.eq_ignore_ascii_case("close"))
                    || r.version == Some(0),
            };
            buf.drain(..n);
            let mut head = head;
            while buf.len() < body_len {
                let mut tmp = [0u8; 8192];
                match s.read(&mut tmp) {
                    Ok(0) | Err(_) => return None,
                    Ok(k) => buf.extend_from_slice(&tmp[..k]),
                }
            }
            head.body = buf.drain(..body_len).collect();
            return Some(head);
        }
        let mut tmp = [0u8; 8192];
        match s.read(&mut tmp) {
            Ok(0) | Err(_) => return None,
            Ok(n) => buf.extend_from_slice(&tmp[..n]),
        }
    }
}

/// A single `bytes=` range resolved against `len`: Ok(Some(range)), Ok(None) = whole,
/// Err(()) = unsatisfiable.
fn resolve(range: Option<&str>, len: u64) -> Result<Option<(u64, u64)>, ()> {
    let Some(v) = range.and_then(|r| r.trim().strip_prefix("bytes=")) else {
        return Ok(None);
    };
    if v.contains(',') {
        return Ok(None);
    }
    let Some((a, b)) = v.split_once('-') else {
        return Ok(None);
    };
    let (a, b) = (a.trim(), b.trim());
    let r = if a.is_empty() {
        let n: u64 = b.parse().map_err(|_| ())?;
        if n == 0 || len == 0 {
            return Err(());
        }
        (len - n.min(len), len - 1)
    } else {
        let a: u64 = a.parse().map_err(|_| ())?;
        let b: u64 = if b.is_empty() {
            len.saturating_sub(1)
        } else {
            b.parse::<u64>().map_err(|_| ())?.min(len.saturating_sub(1))
        };
        if a >= len {
            return Err(());
        }
        (a, b)
    };
    Ok(Some(r))
}

fn serve(mut s: TcpStream, st: &State, stop: &AtomicBool) {
    let _ = s.set_read_timeout(Some(Duration::from_secs(60)));
    let _ = s.set_nodelay(true);
    let mut buf = Vec::new();
    while !stop.load(Ordering::Relaxed) {
        let Some(req) = read_head(&mut s, &mut buf) else {
            return;
        };
        let path = req.target.split('?').next().unwrap_or("").to_string();
        let answered = st.seen.lock().unwrap().len();
        let obj = {
            let mut objs = st.objs.lock().unwrap();
            objs.get_mut(&path).map(|o| {
                let mut snapshot = o.clone();
                if o.fault == Fault::FlapEtag {
                    let q = o.etag.trim_end_matches('"');
                    snapshot.etag = format!("{q}{}\"", answered % 2);
                }
                if o.fault_left > 0 && o.fault_left != usize::MAX {
                    o.fault_left -= 1;
                }
                if o.fault_left == 0 {
                    o.fault = Fault::None;
                }
                snapshot
            })
        };
        let mut seen = Seen {
            method: req.method.clone(),
            target: req.target.clone(),
            host: req.host.clone(),
            range: req.range.clone(),
            if_none_match: req.if_none_match.clone(),
            authorization: req.authorization.clone(),
            headers: req.headers.clone(),
            body: req.body.clone(),
            status: 0,
            body_sent: 0,
            fault: obj.as_ref().map_or(Fault::None, |o| o.fault.clone()),
        };
        // Recorded as soon as it arrives (counts are right while a slow body is still going
        // out); status and bytes are filled in when the response ends.
        let idx = {
            let mut v = st.seen.lock().unwrap();
            v.push(seen.clone());
            v.len() - 1
        };
        let keep = answer(&mut s, &req, obj.as_ref(), &mut seen);
        let reset = seen.fault == Fault::ResetMidBody && seen.status / 100 == 2;
        st.seen.lock().unwrap()[idx] = seen;
        if !keep || req.close {
            if reset {
                // SO_LINGER 0 is set: dropping the socket sends a reset, not a FIN.
                return;
            }
            let _ = s.shutdown(Shutdown::Both);
            return;
        }
    }
}

fn write_head(s: &mut TcpStream, status: u16, headers: &[(String, String)]) -> bool {
    let reason = match status {
        200 => "OK",
        206 => "Partial Content",
        304 => "Not Modified",
        404 => "Not Found",
        416 => "Range Not Satisfiable",
        204 => "No Content",
        302 => "Found",
        503 => "Service Unavailable",
        500 => "Internal Server Error",
        _ => "Whatever",
    };
    let mut h = format!("HTTP/1.1 {status} {reason}\r\nServer: fault-origin\r\n").into_bytes();
    for (k, v) in headers {
        h.extend_from_slice(format!("{k}: ").as_bytes());
        // A char up to U+00FF is sent as that one byte (obs-text, RFC 9110 §5.5).
        for c in v.chars() {
            match u8::try_from(u32::from(c)) {
                Ok(b) => h.push(b),
                Err(_) => h.extend_from_slice(c.encode_utf8(&mut [0; 4]).as_bytes()),
            }
        }
        h.extend_from_slice(b"\r\n");
    }
    h.extend_from_slice(b"\r\n");
    s.write_all(&h).is_ok()
}

/// Writes the response; returns whether the connection may be reused.
fn answer(s: &mut TcpStream, req: &ReqHead, obj: Option<&Obj>, seen: &mut Seen) -> bool {
    let Some(obj) = obj else {
        seen.status = 404;
        let body = b"no such object\n";
        return write_head(s, 404, &[("Content-Length".into(), body.len().to_string())])
            && s.write_all(body).is_ok();
    };
    if let Fault::Status(code) = obj.fault {
        return answer_status_fault(s, req, obj, code, seen);
    }
    if let Fault::Answer(code) = obj.fault {
        seen.status = code;
        let body: &[u8] = if matches!(code, 204 | 304) {
            &[]
        } else {
            &obj.data
        };
        let mut headers = obj.headers.clone();
        if !matches!(code, 204 | 304) {
            headers.push(("Content-Length".into(), body.len().to_string()));
        }
        if !write_head(s, code, &headers) || req.method == "HEAD" {
            return req.method == "HEAD";
        }
        seen.body_sent = body.len() as u64;
        return s.write_all(body).is_ok();
    }
    if !matches!(req.method.as_str(), "GET" | "HEAD") {
        return answer_api_call(s, req, seen);
    }
    answer_content(s, req, obj, seen)
}

/// Answers with the status `code` the object is set to fail with, and a short text body.
fn answer_status_fault(
    s: &mut TcpStream,
    req: &ReqHead,
    obj: &Obj,
    code: u16,
    seen: &mut Seen,
) -> bool {
    seen.status = code;
    let body = format!("fault-origin says {code}\n");
    let mut headers = vec![("Content-Length".into(), body.len().to_string())];
    if (300..400).contains(&code) {
        // A redirect carries the object's headers (its `Location`).
        headers.extend(obj.headers.iter().cloned());
    }
    // No body after the head of a HEAD (RFC 9110 §9.3.2): the connection is reused.
    write_head(s, code, &headers) && (req.method == "HEAD" || s.write_all(body.as_bytes()).is_ok())
}

/// An API call: answered, never content.
fn answer_api_call(s: &mut TcpStream, req: &ReqHead, seen: &mut Seen) -> bool {
    seen.status = 200;
    let body = format!(
        "{} {} took {} bytes\n",
        req.method,
        req.target,
        req.body.len()
    );
    write_head(s, 200, &[("Content-Length".into(), body.len().to_string())])
        && s.write_all(body.as_bytes()).is_ok()
}

/// Answers a GET or HEAD for the object's content: 304, 416, 200 or 206, faults applied.
fn answer_content(s: &mut TcpStream, req: &ReqHead, obj: &Obj, seen: &mut Seen) -> bool {
    let len = obj.data.len() as u64;
    let mut headers = vec![
        ("ETag".to_string(), obj.etag.clone()),
        ("Last-Modified".to_string(), obj.last_modified.clone()),
        (
            "Content-Type".to_string(),
            "application/octet-stream".to_string(),
        ),
        ("Accept-Ranges".to_string(), "bytes".to_string()),
    ];
    headers.retain(|(_, v)| !v.is_empty());
    if obj.fault == Fault::Bad304 && req.if_none_match.is_some() {
        seen.status = 304;
        return write_head(s, 304, &[("ETag".into(), "\"other\"".into())]);
    }
    headers.extend(obj.headers.iter().cloned());
    if req
        .if_none_match
        .as_deref()
        .is_some_and(|v| !obj.etag.is_empty() && v.split(',').any(|t| t.trim() == obj.etag))
    {
        seen.status = 304;
        return write_head(s, 304, &headers);
    }
    // RFC 9110 §13.1.5: an If-Range that does not name this representation asks for all of it.
    let if_range = req
        .headers
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case("if-range"))
        .map(|(_, v)| v.trim().to_string());
    let range_ok = if_range.is_none_or(|v| !obj.etag.is_empty() && v == obj.etag);
    let range = req.range.as_deref().filter(|_| !obj.chunked && range_ok);
    let (status, mut a, mut b) = match resolve(range, len) {
        Err(()) => {
            seen.status = 416;
            headers.push(("Content-Range".into(), format!("bytes */{len}")));
            headers.push(("Content-Length".into(), "0".into()));
            return write_head(s, 416, &headers);
        }
        Ok(None) => (200, 0, len.saturating_sub(1)),
        Ok(Some((a, b))) => (206, a, b),
    };
    if obj.fault == Fault::WrongContentRange && status == 206 {
        // A valid Content-Range, just not the one asked for: shifted down a byte, or (from
        // byte 0) starting one byte late.
        if a > 0 {
            a -= 1;
            b -= 1;
        } else if b > a {
            a += 1;
        }
    }
    let body_len = if len == 0 { 0 } else { b - a + 1 };
    if status == 206 {
        headers.push(("Content-Range".into(), format!("bytes {a}-{b}/{len}")));
    }
    let span = a as usize..(a + body_len) as usize;
    if obj.chunked {
        seen.status = status;
        headers.push(("Transfer-Encoding".into(), "chunked".into()));
        if !write_head(s, status, &headers) || req.method == "HEAD" {
            return req.method == "HEAD";
        }
        return send_chunked(s, &obj.data[span], seen);
    }
    headers.push(("Content-Length".into(), body_len.to_string()));
    seen.status = status;
    if !write_head(s, status, &headers) || req.method == "HEAD" {
        return req.method == "HEAD";
    }
    send_body(s, obj, &obj.data[span], seen)
}

/// Sends `body` chunked, in 10 000-byte chunks, and the last chunk.
fn send_chunked(s: &mut TcpStream, body: &[u8], seen: &mut Seen) -> bool {
    for c in body.chunks(10_000) {
        if s.write_all(format!("{:x}\r\n", c.len()).as_bytes())
            .is_err()
            || s.write_all(c).is_err()
            || s.write_all(b"\r\n").is_err()
        {
            return false;
        }
        seen.body_sent += c.len() as u64;
    }
    s.write_all(b"0\r\n\r\n").is_ok()
}

/// Sends `body` (after a Content-Length head) with the object's fault applied; returns
/// whether the connection may be reused.
fn send_body(s: &mut TcpStream, obj: &Obj, body: &[u8], seen: &mut Seen) -> bool {
    match &obj.fault {
        Fault::ResetMidBody | Fault::ShortBody => {
            let half = body.len() / 2;
            if s.write_all(&body[..half]).is_ok() {
                seen.body_sent = half as u64;
            }
            let _ = s.flush();
            // Let the half arrive before the connection goes away.
            std::thread::sleep(Duration::from_millis(50));
            if obj.fault == Fault::ResetMidBody {
                let _ = socket2::SockRef::from(&*s).set_linger(Some(Duration::ZERO));
            } else {
                let _ = s.shutdown(Shutdown::Write);
            }
            false
        }
        Fault::Slow { chunk, pause } => {
            for c in body.chunks(*chunk) {
                if s.write_all(c).is_err() {
                    return false;
                }
                seen.body_sent += c.len() as u64;
                std::thread::sleep(*pause);
            }
            true
        }
        _ => {
            let ok = s.write_all(body).is_ok();
            if ok {
                seen.body_sent = body.len() as u64;
            }
            ok
        }
    }
}
