//! The admin listener (127.0.0.1 by default): `/healthz` now; `/summary` and `/metrics` come
//! with the operations work. A plain blocking thread: it serves operators, not clients.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use crate::http::response;
use crate::upstream::Upstream;

/// Binds the admin listener and serves it on its own thread; returns the bound address.
pub fn start(addr: SocketAddr, up: Arc<Upstream>) -> std::io::Result<SocketAddr> {
    let l = TcpListener::bind(addr)?;
    let bound = l.local_addr()?;
    std::thread::Builder::new()
        .name("admin".into())
        .spawn(move || {
            for s in l.incoming().flatten() {
                let _ = handle(s, &up);
            }
        })?;
    Ok(bound)
}

fn handle(mut s: TcpStream, up: &Upstream) -> std::io::Result<()> {
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    let mut buf = vec![0u8; 4096];
    let mut n = 0;
    let req = loop {
        let r = s.read(&mut buf[n..])?;
        if r == 0 {
            return Ok(());
        }
        n += r;
        match crate::http::request::parse(&buf[..n], &Default::default()) {
            Ok(Some((req, _))) => break req,
            Ok(None) if n < buf.len() => continue,
            _ => {
                s.write_all(&response::simple(400, "bad request", false, &[]))?;
                return Ok(());
            }
        }
    };
    let body = match req.target.as_str() {
        "/healthz" => "ok".to_string(),
        "/stats" => format!(
            "upstream_requests {}\nupstream_bytes {}\nupstream_errors {}",
            up.stats.requests.load(Ordering::Relaxed),
            up.stats.bytes.load(Ordering::Relaxed),
            up.stats.errors.load(Ordering::Relaxed)
        ),
        _ => {
            s.write_all(&response::simple(404, "not found", false, &[]))?;
            return Ok(());
        }
    };
    s.write_all(&response::simple(200, &body, false, &[]))
}
