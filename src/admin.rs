//! The admin listener (127.0.0.1 by default): `/summary` (JSON, the original module's fields and
//! ours), `/metrics` (Prometheus text), `/healthz` (alive), `/readyz` (storage recovered and
//! listeners up), `/stats` (plain counters, for scripts). A plain blocking thread: it serves
//! operators, not clients.

use std::fmt::Write as _;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use crate::http::response::{self, reply};
use crate::serve::summary::summary;
use crate::serve::{Services, Shared};

/// Binds the admin listener and serves it on its own thread; returns the bound address (the
/// real port when `addr` asked for port 0).
///
/// # Errors
///
/// The address cannot be bound, or the thread cannot be started.
pub fn start(addr: SocketAddr, sh: Arc<Shared>) -> std::io::Result<SocketAddr> {
    let l = TcpListener::bind(addr)?;
    let bound = l.local_addr()?;
    std::thread::Builder::new()
        .name("admin".into())
        .spawn(move || {
            for s in l.incoming().flatten() {
                let _ = handle(s, &sh);
            }
        })?;
    Ok(bound)
}

fn handle(mut s: TcpStream, sh: &Shared) -> std::io::Result<()> {
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
    let path = req.target.split('?').next().unwrap_or("");
    let (status, ctype, body) = match path {
        "/healthz" => (200, "text/plain; charset=utf-8", "ok\n".to_string()),
        "/readyz" if sh.lifecycle.ready.load(Ordering::Relaxed) => {
            (200, "text/plain; charset=utf-8", "ready\n".to_string())
        }
        "/readyz" => (503, "text/plain; charset=utf-8", "not ready\n".to_string()),
        "/summary" => (200, "application/json", summary(&sh.services)),
        "/metrics" => (
            200,
            "text/plain; version=0.0.4; charset=utf-8",
            metrics(&sh.services),
        ),
        "/stats" => (200, "text/plain; charset=utf-8", stats(&sh.services)),
        _ => {
            s.write_all(&response::simple(404, "not found", false, &[]))?;
            return Ok(());
        }
    };
    s.write_all(&reply(status, ctype, &body, &[]))
}

fn stats(sh: &Services) -> String {
    let s = &sh.upstream.stats;
    format!(
        "upstream_requests {}\nupstream_bytes {}\nupstream_errors {}\n",
        s.requests.load(Ordering::Relaxed),
        s.bytes.load(Ordering::Relaxed),
        s.errors.load(Ordering::Relaxed)
    )
}

fn metrics(sh: &Services) -> String {
    let up = &sh.upstream;
    let mut out = String::with_capacity(4096);
    sh.metrics.write_prometheus(&mut out);
    let cache = up.cache();
    let (objects, blocks, filling) = cache.counts();
    let mut gauge = |name: &str, help: &str, kind: &str, v: u64| {
        let _ = writeln!(
            out,
            "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {v}"
        );
    };
    let st = &up.stats;
    gauge(
        "gatecache_upstream_requests_total",
        "Requests sent upstream (origins and parents).",
        "counter",
        st.requests.load(Ordering::Relaxed),
    );
    gauge(
        "gatecache_upstream_received_bytes_total",
        "Body bytes received from upstream.",
        "counter",
        st.bytes.load(Ordering::Relaxed),
    );
    gauge(
        "gatecache_upstream_errors_total",
        "Upstream requests that failed.",
        "counter",
        st.errors.load(Ordering::Relaxed),
    );
    gauge(
        "gatecache_fills_in_flight",
        "Blocks being filled from upstream now.",
        "gauge",
        filling,
    );
    gauge("gatecache_objects", "Objects cached.", "gauge", objects);
    gauge("gatecache_blocks", "Blocks cached.", "gauge", blocks);
    gauge(
        "gatecache_uptime_seconds",
        "Seconds since start.",
        "gauge",
        sh.metrics.started.elapsed().as_secs(),
    );
    let _ = writeln!(
        out,
        "# HELP gatecache_storage_bytes Drive capacity and use.\n# TYPE gatecache_storage_bytes gauge"
    );
    for d in cache.store().drives() {
        let p = d
            .path()
            .display()
            .to_string()
            .replace(['"', '\\', '\n'], "_");
        let _ = writeln!(
            out,
            "gatecache_storage_bytes{{drive=\"{p}\",kind=\"capacity\"}} {}\n\
             gatecache_storage_bytes{{drive=\"{p}\",kind=\"used\"}} {}",
            d.capacity_bytes(),
            d.used_bytes()
        );
    }
    let _ = writeln!(
        out,
        "# HELP gatecache_parent_up Whether a parent cache is answering (1) or backing off (0).\n\
         # TYPE gatecache_parent_up gauge"
    );
    for (a, ok) in up.parents.health(Instant::now()) {
        let _ = writeln!(
            out,
            "gatecache_parent_up{{parent=\"{a}\"}} {}",
            u8::from(ok)
        );
    }
    out
}
