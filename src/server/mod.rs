//! The server: one worker thread per core, each with its own runtime and SO_REUSEPORT listener,
//! on io_uring (tokio-uring) or, where that is not allowed, epoll (tokio).

pub mod conn;
pub mod epoll;
pub mod uring;

use std::net::{SocketAddr, TcpListener};
use std::sync::Arc;

use crate::cache::Cache;
use crate::config::{Config, IoBackend};
use crate::http::request::Limits;
use crate::upstream::Upstream;

pub use crate::serve::Shared;
use crate::serve::{Lifecycle, Services};

/// The backend that will run, and why.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Uring,
    Epoll,
}

/// Chooses the backend: io_uring unless configured otherwise or unavailable (the probe sets up
/// a real ring, which is what seccomp or `kernel.io_uring_disabled` refuse).
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

/// A listening socket with SO_REUSEPORT, so each worker accepts on its own.
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

/// Opens the cache, starts fetchers, admin and workers; returns when the workers end.
pub fn run(cfg: Config) -> Result<(), String> {
    let (backend, why) = choose_backend(cfg.io_backend)?;
    let (cache, report) = Cache::open(&cfg.store).map_err(|e| e.to_string())?;
    log::info!(
        "cache: {} objects, {} bytes in {} drive(s); capacity {} bytes",
        report.objects,
        report.bytes,
        cfg.store.drives.len(),
        cache.store().capacity_bytes()
    );
    let upstream = Upstream::start(cache, &cfg)?;
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
    let mut signals = signal_hook::iterator::Signals::new([
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
    shared
        .lifecycle
        .ready
        .store(true, std::sync::atomic::Ordering::Relaxed);
    notify(&[sd_notify::NotifyState::Ready]);

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
        notify(&[sd_notify::NotifyState::Stopping]);
        shared
            .lifecycle
            .ready
            .store(false, std::sync::atomic::Ordering::Relaxed);
        shared
            .lifecycle
            .draining
            .store(true, std::sync::atomic::Ordering::Relaxed);
        for l in &stoppers {
            let _ = socket2::SockRef::from(l).shutdown(std::net::Shutdown::Read);
        }
        let until = std::time::Instant::now() + shared.services.cfg.shutdown_grace;
        while shared
            .lifecycle
            .in_flight
            .load(std::sync::atomic::Ordering::Relaxed)
            > 0
            && std::time::Instant::now() < until
        {
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        let left = shared
            .lifecycle
            .in_flight
            .load(std::sync::atomic::Ordering::Relaxed);
        if left > 0 {
            log::warn!("{left} responses still running at the deadline; they are cut");
        }
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        let quiet = shared.services.upstream.quiesce(deadline);
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        if !quiet || !shared.services.upstream.cache().flush_within(left) {
            log::warn!("fetches still running after 10 s; exiting without their blocks");
        }
        shared.services.access.flush();
        break;
    }
    Ok(())
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
            let mut next_period = std::time::Instant::now() + crate::metrics::PERIOD;
            loop {
                std::thread::sleep(std::time::Duration::from_secs(1));
                sh.services.access.flush();
                if std::time::Instant::now() >= next_period {
                    next_period += crate::metrics::PERIOD;
                    let up = sh
                        .services
                        .upstream
                        .stats
                        .bytes
                        .load(std::sync::atomic::Ordering::Relaxed);
                    sh.services.metrics.tick(up);
                }
            }
        })
        .map(drop)
        .map_err(|e| format!("spawn housekeeping: {e}"))
}

fn run_uring(l: TcpListener, sh: Arc<Shared>) -> Result<(), String> {
    tokio_uring::start(async move {
        let listener = tokio_uring::net::TcpListener::from_std(l);
        loop {
            match listener.accept().await {
                Ok((s, peer)) => {
                    tokio_uring::spawn(conn::serve(uring::UringConn::new(s), peer, sh.clone()));
                }
                Err(_)
                    if sh
                        .lifecycle
                        .draining
                        .load(std::sync::atomic::Ordering::Relaxed) =>
                {
                    // Keep the runtime (and the connections on it) until the process ends.
                    std::future::pending::<()>().await;
                }
                Err(e) => {
                    log::warn!("accept: {e}");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                }
            }
        }
    })
}

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
                Err(_)
                    if sh
                        .lifecycle
                        .draining
                        .load(std::sync::atomic::Ordering::Relaxed) =>
                {
                    std::future::pending::<()>().await;
                }
                Err(e) => {
                    log::warn!("accept: {e}");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                }
            }
        }
    })
}
