//! Support for the serving integration tests (`tests/serve_*.rs`): the real `gatecache` binary
//! on loopback ([`gate`]), an nginx origin ([`nginx`]), a fault-injecting origin ([`faulty`]),
//! real clients ([`curl`]), a raw HTTP/1.1 client ([`http`]) and a listener that counts the
//! connections it should never get ([`canary`]).
#![allow(dead_code)]

pub mod canary;
pub mod curl;
pub mod data;
pub mod faulty;
pub mod gate;
pub mod http;
pub mod nginx;
pub mod proxy;

use std::net::TcpListener;

#[allow(unused_imports)]
pub use data::{KIB, MIB};

/// The I/O backend a test runs the server on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    Uring,
    Epoll,
}

impl Backend {
    pub fn as_str(self) -> &'static str {
        match self {
            Backend::Uring => "uring",
            Backend::Epoll => "epoll",
        }
    }
}

/// A loopback port that was free a moment ago (bind to 0, read, drop). Callers retry on
/// "address in use", since another test process may take it in between.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .expect("bind 127.0.0.1:0")
        .local_addr()
        .unwrap()
        .port()
}

/// Instantiates a test for both backends: `both_backends! { fn name(backend) { ... } }`
/// gives `name::uring` and `name::epoll`. Attributes (`#[ignore = "..."]`) go on both;
/// a leading `#[uring_ignore = "why"]` ignores only the io_uring one (a backend-specific bug).
#[macro_export]
macro_rules! both_backends {
    (@gen [$(#[$m:meta])*] [$(#[$u:meta])*] $name:ident $b:ident $body:block) => {
        mod $name {
            #[allow(unused_imports)]
            use super::*;

            fn run($b: $crate::support::Backend) $body

            $(#[$m])*
            $(#[$u])*
            #[test]
            fn uring() {
                run($crate::support::Backend::Uring)
            }

            $(#[$m])*
            #[test]
            fn epoll() {
                run($crate::support::Backend::Epoll)
            }
        }
    };
    (#[uring_ignore = $why:literal] $(#[$m:meta])* fn $name:ident($b:ident) $body:block) => {
        $crate::both_backends!(@gen [$(#[$m])*] [#[ignore = $why]] $name $b $body);
    };
    ($(#[$m:meta])* fn $name:ident($b:ident) $body:block) => {
        $crate::both_backends!(@gen [$(#[$m])*] [] $name $b $body);
    };
}

/// A cache in reverse-proxy mode in front of a fresh nginx origin: the common setup.
pub fn nginx_and_gate(backend: Backend) -> (nginx::Nginx, gate::Gate) {
    nginx_and_gate_with(backend, &[])
}

/// Like [`nginx_and_gate`], with extra top-level config lines.
pub fn nginx_and_gate_with(backend: Backend, lines: &[&str]) -> (nginx::Nginx, gate::Gate) {
    let n = nginx::Nginx::start();
    let mut cfg = gate::GateConfig::new(backend).route("/", &n.origin_url());
    for l in lines {
        cfg = cfg.set(l);
    }
    let g = gate::Gate::start(cfg);
    (n, g)
}

/// Waits (up to 5 s) until a HEAD for `path` (with `extra` headers, e.g. a Range) reports a
/// cache hit: every block it needs is committed. HEAD never fetches for a cached object.
pub fn wait_hit(g: &gate::Gate, path: &str, extra: &[(&str, &str)]) {
    let t0 = std::time::Instant::now();
    loop {
        let r = http::head(g.addr(), path, extra);
        if r.is_hit() {
            return;
        }
        assert!(
            t0.elapsed() < std::time::Duration::from_secs(5),
            "{path} {extra:?} never became a hit: {:?}",
            r.cache_status()
        );
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
}

/// How long the background committer gets to make what is cached durable. The cache has no
/// "everything committed" signal, and a hit may be served from blocks whose commit (a
/// batched flush) is still queued, so tests that kill the cache or inspect its store first
/// wait for the hits they need ([`wait_hit`]), then this.
pub const COMMIT_SETTLE: std::time::Duration = std::time::Duration::from_millis(300);

pub fn settle_commits() {
    std::thread::sleep(COMMIT_SETTLE);
}
