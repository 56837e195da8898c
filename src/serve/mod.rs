//! The serving wing: what to do with a request (`plan`, pure functions), and doing it
//! (`respond` executes a plan, `stream` reads an object's blocks as they are ready or filled,
//! `pass` relays what is not for the cache) over the [`transport::Transport`] that the
//! io_uring and epoll backends of `server` implement.
//!
//! Arrows: `server` (threads, listeners, connections) -> `serve` -> `route`, `http`,
//! `upstream` -> `cache` -> `store`. `admin` reads [`Services`] and [`Lifecycle`], never
//! `server`.

pub mod pass;
pub mod plan;
pub mod respond;
pub mod stream;
pub mod summary;
pub mod transport;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize};

use crate::access::AccessLog;
use crate::cache::Cache;
use crate::config::Config;
use crate::http::request::Limits;
use crate::metrics::Metrics;
use crate::upstream::Upstream;

/// What answering requests uses: the configuration, the request limits, the cache (with its
/// fetch lock and hit-for-pass memory), the fetcher pool, the metrics and the access log. One
/// per process, shared by every worker and the admin listener.
pub struct Services {
    /// The validated configuration.
    pub cfg: Config,
    /// What a request head may hold (bytes, fields, target length).
    pub limits: Limits,
    /// The cache (index, fetch lock, hit-for-pass memory, store).
    pub cache: Cache,
    /// The fetcher pool (upstream requests, parents).
    pub upstream: Arc<Upstream>,
    /// Requests and bytes by cache status and origin; response times.
    pub metrics: Metrics,
    /// One line per response.
    pub access: AccessLog,
}

/// Where the process is in its life (start-up, serving, stopping).
#[derive(Default)]
pub struct Lifecycle {
    /// Storage recovered and listeners up (`/readyz` answers 200).
    pub ready: AtomicBool,
    /// Stopping: accept nothing more, close connections once their response is sent.
    pub draining: AtomicBool,
    /// Responses being produced right now (the drain waits for zero).
    pub in_flight: AtomicUsize,
}

/// The services and the lifecycle, behind one `Arc` for every worker and the admin listener.
pub struct Shared {
    /// What answering requests uses.
    pub services: Services,
    /// Ready, draining, in flight.
    pub lifecycle: Lifecycle,
}
