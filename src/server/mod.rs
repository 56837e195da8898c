//! The server: one worker thread per core, each with its own runtime and SO_REUSEPORT listener,
//! on io_uring (tokio-uring) or, where that is not allowed, epoll (tokio).

pub mod conn;
pub mod epoll;
pub mod uring;

use std::net::{SocketAddr, TcpListener};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use crate::cache::Cache;
use crate::config::{Config, IoBackend};
use crate::http::request::Limits;
use crate::upstream::Upstream;

pub use crate::serve::Shared;
use crate::serve::{Lifecycle, Services};

/// The I/O backend the workers run on (chosen once, by [`choose_backend`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// io_uring through tokio-uring: slot memory is handed to the kernel as is.
    Uring,
    /// epoll through a current-thread tokio runtime: where io_uring is refused (Docker's
    /// default seccomp profile, `kernel.io_uring_disabled`).
    Epoll,
}

/// Chooses the backend: io_uring unless configured otherwise or unavailable (the probe sets up
/// a real ring, which is what seccomp or `kernel.io_uring_disabled` refuse).
///
/// Returns the backend and why it was chosen (a line for the start-up log; on `auto` without
/// io_uring, how to allow it).
///
/// # Errors
///
/// `io_backend = "uring"` and no ring can be set up: the message gives the kernel's error.
pub fn choose_backend(want: IoBackend) -> Result<(Backend, String), String> {
    let probe = || tokio_uring::Runtime::new(&tokio_uring::builder()).map(drop);
    match want {
        IoBackend::Epoll => Ok((Backend::Epoll, "io_backend = epoll".into())),
        IoBackend::Uring => match probe() {
            Ok(()) => Ok((Backend::Uring, "io_backend = uring".into())),
            Err(e) => Err(format!(
                "io_backend = \"uring\" but io_uring is unavailable: {e}"
            )),
        },
        IoBackend::Auto => match probe() {
            Ok(()) => Ok((Backend::Uring, "io_uring is available".into())),
            Err(e) => Ok((
                Backend::Epoll,
                format!(
                    "io_uring is unavailable ({e}); allow it (see deploy/) for better performance"
                ),
            )),
        },
    }
}

/// A listening socket with SO_REUSEPORT, so each worker accepts on its own: bound to `addr`,
/// non-blocking, with a backlog of 1024.
///
/// # Errors
///
/// Creating, configuring, binding or listening failed (the address is in use or not local).
pub fn listener(addr: SocketAddr) -> std::io::Result<TcpListener> {
    use socket2::{Domain, Protocol, Socket, Type};
    let s = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    s.set_reuse_address(true)?;
    s.set_reuse_port(true)?;
    s.set_nonblocking(true)?;
    s.bind(&addr.into())?;
    s.listen(1024)?;
    Ok(s.into())
}

/// Runs the server with `cfg` until SIGTERM or SIGINT, then drains and returns.
///
/// In order: chooses the backend ([`choose_backend`]), opens the cache (recovering the store),
/// starts the fetchers, binds one listener per worker, opens the access log, starts the admin
/// listener and the housekeeping thread, installs the signal handlers, starts the workers and
/// reports ready (to systemd too, `READY=1`). SIGHUP reopens the access log; SIGTERM or SIGINT
/// stops accepting, lets responses in flight finish (up to `shutdown_grace`), then fetches and
/// flushes (up to 10 s).
///
/// # Errors
///
/// A message naming what failed, before anything is served: io_uring required but unavailable,
/// the store, the upstream setup, a listen or admin address, the access log, a thread or the
/// signal handlers. A worker whose runtime fails later logs it and exits the process (status 1).
pub fn run(cfg: Config) -> Result<(), String> {
    let (backend, why) = choose_backend(cfg.io_backend)?;
    let (cache, upstream) = open_cache(&cfg)?;
    // Bind every listener before reporting ready, so a bad address fails start-up.
    let listeners = (0..cfg.workers)
        .map(|_| listener(cfg.listen))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("listen {}: {e}", cfg.listen))?;
    let access = crate::access::AccessLog::from_setting(&cfg.access_log)
        .map_err(|e| format!("access_log {}: {e}", cfg.access_log))?;
    let shared = Arc::new(Shared {
        services: Services {
            cfg,
            upstream,
            limits: Limits::default(),
            cache,
            metrics: Default::default(),
            access,
        },
        lifecycle: Lifecycle::default(),
    });
    let cfg = &shared.services.cfg;
    let admin = crate::admin::start(cfg.admin_listen, shared.clone())
        .map_err(|e| format!("admin_listen {}: {e}", cfg.admin_listen))?;
    log::info!(
        "serving on {} with {} {:?} workers ({why}); admin on {}",
        cfg.listen,
        cfg.workers,
        backend,
        admin
    );
    housekeeping(shared.clone())?;
    // Installed before any worker runs and before READY=1, so that a stop or a reload sent as
    // soon as the service is up is handled, not fatal. SIGTERM (systemd, Docker) and SIGINT
    // drain and flush (a stop loses only transfers in flight); SIGHUP reopens the access log.
    let signals = signal_hook::iterator::Signals::new([
        signal_hook::consts::SIGTERM,
        signal_hook::consts::SIGINT,
        signal_hook::consts::SIGHUP,
    ])
    .map_err(|e| format!("signals: {e}"))?;
    // Kept to stop the accept loops at shutdown (a shut-down listener fails its accept).
    let stoppers = listeners
        .iter()
        .map(|l| l.try_clone())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("listener: {e}"))?;
    spawn_workers(listeners, backend, &shared)?;
    shared.lifecycle.ready.store(true, Ordering::Relaxed);
    notify(&[sd_notify::NotifyState::Ready]);
    until_stopped(signals, &shared, &stoppers);
    Ok(())
}

/// Opens the cache (recovering the store, logged) and starts the fetchers that fill it.
fn open_cache(cfg: &Config) -> Result<(Cache, Arc<Upstream>), String> {
    let (cache, report) = Cache::open(&cfg.store).map_err(|e| e.to_string())?;
    log::info!(
        "cache: {} objects, {} bytes in {} drive(s); capacity {} bytes",
        report.objects,
        report.bytes,
        cfg.store.drives.len(),
        cache.store().capacity_bytes()
    );
    let upstream = Upstream::start(cache.clone(), cfg)?;
    Ok((cache, upstream))
}

/// Starts one worker thread per listener, each running `backend`'s accept loop; a worker whose
/// runtime fails logs it and exits the process.
fn spawn_workers(
    listeners: Vec<TcpListener>,
    backend: Backend,
    shared: &Arc<Shared>,
) -> Result<(), String> {
    for (i, l) in listeners.into_iter().enumerate() {
        let sh = shared.clone();
        std::thread::Builder::new()
            .name(format!("worker-{i}"))
            .spawn(move || {
                let r = match backend {
                    Backend::Uring => run_uring(l, sh),
                    Backend::Epoll => run_epoll(l, sh),
                };
                if let Err(e) = r {
                    log::error!("worker {i}: {e}");
                    std::process::exit(1);
                }
            })
            .map_err(|e| format!("spawn worker: {e}"))?;
    }
    Ok(())
}

/// Handles signals until a stop: SIGHUP reopens the access log; SIGTERM or SIGINT drains
/// ([`drain`]) and returns.
fn until_stopped(
    mut signals: signal_hook::iterator::Signals,
    shared: &Shared,
    stoppers: &[TcpListener],
) {
    for sig in signals.forever() {
        if sig == signal_hook::consts::SIGHUP {
            log::info!("SIGHUP: reopening the access log");
            shared.services.access.reopen();
            continue;
        }
        log::info!(
            "signal {sig}: no new connections; finishing responses (up to {:?}), fetches and \
             flushes, then exiting",
            shared.services.cfg.shutdown_grace
        );
        drain(shared, stoppers);
        break;
    }
}

/// Stops the process cleanly: not ready, no new connections or requests, responses in flight
/// finished (up to `shutdown_grace`), then fetches finished and blocks flushed (up to 10 s),
/// then the access log flushed.
fn drain(shared: &Shared, stoppers: &[TcpListener]) {
    notify(&[sd_notify::NotifyState::Stopping]);
    let life = &shared.lifecycle;
    life.ready.store(false, Ordering::Relaxed);
    life.draining.store(true, Ordering::Relaxed);
    for l in stoppers {
        let _ = socket2::SockRef::from(l).shutdown(std::net::Shutdown::Read);
    }
    let until = Instant::now() + shared.services.cfg.shutdown_grace;
    while life.in_flight.load(Ordering::Relaxed) > 0 && Instant::now() < until {
        std::thread::sleep(Duration::from_millis(20));
    }
    let left = life.in_flight.load(Ordering::Relaxed);
    if left > 0 {
        log::warn!("{left} responses still running at the deadline; they are cut");
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    let quiet = shared.services.upstream.quiesce(deadline);
    let left = deadline.saturating_duration_since(Instant::now());
    if !quiet || !shared.services.cache.flush_within(left) {
        log::warn!("fetches still running after 10 s; exiting without their blocks");
    }
    shared.services.access.flush();
}

/// Tells systemd (Type=notify) where we are; nothing when not started by it.
fn notify(state: &[sd_notify::NotifyState]) {
    if std::env::var_os("NOTIFY_SOCKET").is_some()
        && let Err(e) = sd_notify::notify(state)
    {
        log::warn!("sd_notify: {e}");
    }
}

/// Once a second: flush the access log; every 15 s: close a summary period.
fn housekeeping(sh: Arc<Shared>) -> Result<(), String> {
    std::thread::Builder::new()
        .name("housekeeping".into())
        .spawn(move || {
            let mut next_period = Instant::now() + crate::metrics::PERIOD;
            loop {
                std::thread::sleep(Duration::from_secs(1));
                sh.services.access.flush();
                if Instant::now() >= next_period {
                    next_period += crate::metrics::PERIOD;
                    let up = sh.services.upstream.stats.bytes.load(Ordering::Relaxed);
                    sh.services.metrics.tick(up);
                }
            }
        })
        .map(drop)
        .map_err(|e| format!("spawn housekeeping: {e}"))
}

/// One io_uring worker: accepts on `l` and serves each connection as a task of its own, until
/// the process ends.
fn run_uring(l: TcpListener, sh: Arc<Shared>) -> Result<(), String> {
    tokio_uring::start(async move {
        let listener = tokio_uring::net::TcpListener::from_std(l);
        loop {
            match listener.accept().await {
                Ok((s, peer)) => {
                    tokio_uring::spawn(conn::serve(uring::UringConn::new(s), peer, sh.clone()));
                }
                Err(_) if sh.lifecycle.draining.load(Ordering::Relaxed) => {
                    // Keep the runtime (and the connections on it) until the process ends.
                    std::future::pending::<()>().await;
                }
                Err(e) => {
                    log::warn!("accept: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
    })
}

/// One epoll worker: accepts on `l` and serves each connection as a local task of its own,
/// until the process ends.
fn run_epoll(l: TcpListener, sh: Arc<Shared>) -> Result<(), String> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("runtime: {e}"))?;
    let local = tokio::task::LocalSet::new();
    local.block_on(&rt, async move {
        let listener = tokio::net::TcpListener::from_std(l).map_err(|e| e.to_string())?;
        loop {
            match listener.accept().await {
                Ok((s, peer)) => {
                    tokio::task::spawn_local(conn::serve(
                        epoll::EpollConn::new(s),
                        peer,
                        sh.clone(),
                    ));
                }
                Err(_) if sh.lifecycle.draining.load(Ordering::Relaxed) => {
                    std::future::pending::<()>().await;
                }
                Err(e) => {
                    log::warn!("accept: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
    })
}
