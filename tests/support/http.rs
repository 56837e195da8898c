//! A raw HTTP/1.1 client over `TcpStream`, for what curl hides: pipelining, repeated headers,
//! malformed heads, and watching a connection close.

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

/// A parsed response.
#[derive(Debug, Clone)]
pub struct Response {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    /// False if the connection ended before the body announced by Content-Length.
    pub complete: bool,
}

impl Response {
    /// The first header named `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn content_length(&self) -> Option<u64> {
        self.header("content-length").and_then(|v| v.parse().ok())
    }

    pub fn cache_status(&self) -> &str {
        self.header("cache-status").unwrap_or("")
    }

    pub fn is_hit(&self) -> bool {
        self.cache_status() == "gatecache; hit"
    }

    pub fn body_text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    pub fn closes(&self) -> bool {
        self.header("connection")
            .is_some_and(|v| v.eq_ignore_ascii_case("close"))
    }
}

/// A response head on its own.
#[derive(Debug, Clone)]
pub struct Head {
    pub status: u16,
    pub headers: Vec<(String, String)>,
}

pub struct Conn {
    pub stream: TcpStream,
    buf: Vec<u8>,
}

pub const READ_TIMEOUT: Duration = Duration::from_secs(30);

impl Conn {
    pub fn open(addr: SocketAddr) -> Conn {
        let stream = TcpStream::connect_timeout(&addr, Duration::from_secs(5))
            .unwrap_or_else(|e| panic!("connect {addr}: {e}"));
        stream.set_read_timeout(Some(READ_TIMEOUT)).unwrap();
        stream.set_nodelay(true).unwrap();
        Conn {
            stream,
            buf: Vec::new(),
        }
    }

    pub fn send(&mut self, data: impl AsRef<[u8]>) {
        self.stream.write_all(data.as_ref()).expect("send");
    }

    /// Like `send`, but a server that already closed is not a failure.
    pub fn try_send(&mut self, data: impl AsRef<[u8]>) -> std::io::Result<()> {
        self.stream.write_all(data.as_ref())
    }

    /// Reads more into the buffer; Ok(0) at EOF.
    fn fill(&mut self) -> std::io::Result<usize> {
        let mut tmp = [0u8; 64 * 1024];
        let n = self.stream.read(&mut tmp)?;
        self.buf.extend_from_slice(&tmp[..n]);
        Ok(n)
    }

    /// Reads a response head. `Ok(None)`: the connection ended before any byte of it.
    pub fn read_head(&mut self) -> std::io::Result<Option<Head>> {
        loop {
            let mut hs = [httparse::EMPTY_HEADER; 64];
            let mut r = httparse::Response::new(&mut hs);
            match r.parse(&self.buf) {
                Ok(httparse::Status::Complete(n)) => {
                    let head = Head {
                        status: r.code.unwrap_or(0),
                        headers: fields(r.headers),
                    };
                    self.buf.drain(..n);
                    return Ok(Some(head));
                }
                Ok(httparse::Status::Partial) => {}
                Err(e) => {
                    return Err(std::io::Error::new(
                        ErrorKind::InvalidData,
                        format!(
                            "bad response head ({e}): {:?}",
                            String::from_utf8_lossy(&self.buf[..self.buf.len().min(300)])
                        ),
                    ));
                }
            }
            if self.fill()? == 0 {
                if self.buf.is_empty() {
                    return Ok(None);
                }
                return Err(std::io::Error::new(
                    ErrorKind::UnexpectedEof,
                    "connection ended inside a response head",
                ));
            }
        }
    }

    /// Reads up to `len` body bytes, handing them to `f` as they come; returns bytes read
    /// (less than `len` if the connection ended or failed first).
    pub fn read_body_with(&mut self, len: u64, mut f: impl FnMut(&[u8])) -> u64 {
        let mut got = 0u64;
        loop {
            let take = (self.buf.len() as u64).min(len - got) as usize;
            if take > 0 {
                f(&self.buf[..take]);
                self.buf.drain(..take);
                got += take as u64;
            }
            if got == len {
                return got;
            }
            match self.fill() {
                Ok(0) | Err(_) => return got,
                Ok(_) => {}
            }
        }
    }

    /// Reads a line ending in CRLF from the connection (without it).
    fn read_line(&mut self) -> Option<String> {
        loop {
            if let Some(i) = self.buf.windows(2).position(|w| w == b"\r\n") {
                let line = String::from_utf8_lossy(&self.buf[..i]).into_owned();
                self.buf.drain(..i + 2);
                return Some(line);
            }
            match self.fill() {
                Ok(0) | Err(_) => return None,
                Ok(_) => {}
            }
        }
    }

    /// Reads a chunked body strictly: (body, whether the last chunk arrived).
    fn read_chunked(&mut self) -> (Vec<u8>, bool) {
        let mut body = Vec::new();
        loop {
            let Some(line) = self.read_line() else {
                return (body, false);
            };
            let size = u64::from_str_radix(line.split(';').next().unwrap().trim(), 16)
                .unwrap_or_else(|_| panic!("bad chunk size line {line:?}"));
            if size == 0 {
                let end = self.read_line();
                assert_eq!(end.as_deref(), Some(""), "no trailers expected");
                return (body, true);
            }
            if self.read_body_with(size, |c| body.extend_from_slice(c)) < size {
                return (body, false);
            }
            assert_eq!(self.read_line().as_deref(), Some(""), "CRLF after a chunk");
        }
    }

    /// Reads one whole response. `head_only`: the request was HEAD (no body follows).
    pub fn read_response(&mut self, head_only: bool) -> std::io::Result<Response> {
        let head = self.read_head()?.ok_or_else(|| {
            std::io::Error::new(ErrorKind::UnexpectedEof, "connection closed, no response")
        })?;
        let mut resp = Response {
            status: head.status,
            headers: head.headers,
            body: Vec::new(),
            complete: true,
        };
        if head_only || resp.status == 304 || resp.status == 204 || resp.status < 200 {
            return Ok(resp);
        }
        let chunked = resp
            .header("transfer-encoding")
            .is_some_and(|v| v.eq_ignore_ascii_case("chunked"));
        match resp.content_length() {
            _ if chunked => {
                let (body, complete) = self.read_chunked();
                resp.body = body;
                resp.complete = complete;
            }
            Some(len) => {
                let mut body = Vec::with_capacity(len as usize);
                let got = self.read_body_with(len, |c| body.extend_from_slice(c));
                resp.complete = got == len;
                resp.body = body;
            }
            None => {
                let mut body = std::mem::take(&mut self.buf);
                loop {
                    let mut tmp = [0u8; 64 * 1024];
                    match self.stream.read(&mut tmp) {
                        Ok(0) | Err(_) => break,
                        Ok(n) => body.extend_from_slice(&tmp[..n]),
                    }
                }
                resp.body = body;
            }
        }
        Ok(resp)
    }

    /// True if the server ends the connection within `within` (EOF or reset) without sending
    /// anything more; panics if it sends bytes.
    pub fn closed_within(&mut self, within: Duration) -> bool {
        assert!(
            self.buf.is_empty(),
            "unread bytes: {:?}",
            String::from_utf8_lossy(&self.buf)
        );
        if within.is_zero() {
            return false;
        }
        self.stream.set_read_timeout(Some(within)).unwrap();
        let mut b = [0u8; 4096];
        let r = self.stream.read(&mut b);
        self.stream.set_read_timeout(Some(READ_TIMEOUT)).unwrap();
        match r {
            Ok(0) => true,
            Ok(n) => panic!(
                "server sent more bytes on a connection that should close: {:?}",
                String::from_utf8_lossy(&b[..n])
            ),
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => false,
            Err(_) => true, // reset: closed as well
        }
    }

    /// True if the connection is still open and idle after `wait` (no EOF, no bytes).
    pub fn still_open_after(&mut self, wait: Duration) -> bool {
        !self.closed_within(wait)
    }
}

/// A GET request head in origin form, keep-alive.
pub fn get_req(path: &str, extra: &[(&str, &str)]) -> String {
    request("GET", path, extra)
}

pub fn request(method: &str, path: &str, extra: &[(&str, &str)]) -> String {
    let mut s = format!("{method} {path} HTTP/1.1\r\n");
    if !extra.iter().any(|(k, _)| k.eq_ignore_ascii_case("host")) {
        s.push_str("Host: gatecache.test\r\n");
    }
    for (k, v) in extra {
        s.push_str(&format!("{k}: {v}\r\n"));
    }
    s.push_str("\r\n");
    s
}

/// A parsed head's fields as (name, value) lines, in order, values read lossily as UTF-8.
pub fn fields(headers: &[httparse::Header<'_>]) -> Vec<(String, String)> {
    headers
        .iter()
        .map(|h| {
            (
                h.name.to_string(),
                String::from_utf8_lossy(h.value).into_owned(),
            )
        })
        .collect()
}

/// One request on a fresh connection.
pub fn fetch(addr: SocketAddr, method: &str, path: &str, extra: &[(&str, &str)]) -> Response {
    let mut c = Conn::open(addr);
    c.send(request(method, path, extra));
    c.read_response(method == "HEAD")
        .unwrap_or_else(|e| panic!("{method} {path}: {e}"))
}

/// One request with a body on a fresh connection.
pub fn fetch_with_body(
    addr: SocketAddr,
    method: &str,
    path: &str,
    extra: &[(&str, &str)],
    body: &[u8],
) -> Response {
    let mut c = Conn::open(addr);
    let mut raw = request(method, path, extra).into_bytes();
    raw.extend_from_slice(body);
    c.send(raw);
    c.read_response(method == "HEAD")
        .unwrap_or_else(|e| panic!("{method} {path}: {e}"))
}

pub fn get(addr: SocketAddr, path: &str, extra: &[(&str, &str)]) -> Response {
    fetch(addr, "GET", path, extra)
}

pub fn head(addr: SocketAddr, path: &str, extra: &[(&str, &str)]) -> Response {
    fetch(addr, "HEAD", path, extra)
}

/// One part of a `multipart/byteranges` body.
#[derive(Debug, Clone)]
pub struct Part {
    pub content_type: Option<String>,
    /// (first, last, total) from the part's Content-Range.
    pub range: (u64, u64, u64),
    pub data: Vec<u8>,
}

/// Parses a `multipart/byteranges` body strictly, using each part's Content-Range length.
pub fn parse_multipart(content_type: &str, body: &[u8]) -> Result<Vec<Part>, String> {
    let boundary = content_type
        .split(';')
        .map(str::trim)
        .find_map(|p| p.strip_prefix("boundary="))
        .ok_or("no boundary")?
        .trim_matches('"');
    let delim = format!("--{boundary}");
    let mut pos = 0usize;
    let expect = |pos: &mut usize, s: &[u8]| -> Result<(), String> {
        if body.get(*pos..*pos + s.len()) == Some(s) {
            *pos += s.len();
            Ok(())
        } else {
            Err(format!(
                "expected {:?} at byte {}, found {:?}",
                String::from_utf8_lossy(s),
                *pos,
                String::from_utf8_lossy(&body[*pos..(*pos + 40).min(body.len())])
            ))
        }
    };
    if body.starts_with(b"\r\n") {
        pos = 2;
    }
    expect(&mut pos, delim.as_bytes())?;
    let mut parts = Vec::new();
    loop {
        if body.get(pos..pos + 2) == Some(b"--") {
            pos += 2;
            let rest = &body[pos..];
            if !(rest.is_empty() || rest == b"\r\n") {
                return Err(format!("junk after the closing delimiter: {rest:?}"));
            }
            return Ok(parts);
        }
        expect(&mut pos, b"\r\n")?;
        let end = body[pos..]
            .windows(4)
            .position(|w| w == b"\r\n\r\n")
            .ok_or("part head never ends")?;
        let heads = std::str::from_utf8(&body[pos..pos + end]).map_err(|e| e.to_string())?;
        pos += end + 4;
        let mut content_type = None;
        let mut range = None;
        for line in heads.split("\r\n") {
            let (k, v) = line.split_once(':').ok_or("bad part header")?;
            let v = v.trim();
            if k.eq_ignore_ascii_case("content-type") {
                content_type = Some(v.to_string());
            } else if k.eq_ignore_ascii_case("content-range") {
                range = Some(parse_content_range(v).ok_or("bad part Content-Range")?);
            }
        }
        let range = range.ok_or("part without Content-Range")?;
        let len = (range.1 - range.0 + 1) as usize;
        let data = body
            .get(pos..pos + len)
            .ok_or("part data cut short")?
            .to_vec();
        pos += len;
        parts.push(Part {
            content_type,
            range,
            data,
        });
        expect(&mut pos, b"\r\n")?;
        expect(&mut pos, delim.as_bytes())?;
    }
}

/// `bytes a-b/total` -> (a, b, total).
pub fn parse_content_range(v: &str) -> Option<(u64, u64, u64)> {
    let rest = v.trim().strip_prefix("bytes ")?;
    let (r, total) = rest.split_once('/')?;
    let (a, b) = r.split_once('-')?;
    Some((a.parse().ok()?, b.parse().ok()?, total.parse().ok()?))
}
