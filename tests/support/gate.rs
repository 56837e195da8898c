//! The real `gatecache` binary: a temp config and storage dir, free loopback ports, stderr to
//! a file, ready when the admin `/healthz` answers 200; killed on drop.

use std::fmt::Write as _;
use std::fs::File;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::{Backend, free_port};

/// What to put in the config file.
#[derive(Clone, Debug)]
pub struct GateConfig {
    pub backend: Backend,
    pub workers: usize,
    pub block_size: String,
    pub storage_size: String,
    /// `[[route]]`: (prefix, origin URL).
    pub routes: Vec<(String, String)>,
    /// `[[origin]]`: (host pattern, connect address, canonical).
    pub origins: Vec<(String, Option<SocketAddr>, Option<String>)>,
    /// More `[[origin]]` tables, after those: (host pattern, connect address, extra lines
    /// such as `ports = [8080]` or `deny_private = true`).
    pub origins_with: Vec<(String, Option<SocketAddr>, Vec<String>)>,
    pub window: Option<String>,
    pub read_timeout: Option<String>,
    pub sync_data: Option<bool>,
    /// Extra top-level lines (`head_timeout = "2s"`, ...).
    pub extra: Vec<String>,
    /// Extra lines of the `[upstream]` table (`parents = [...]`, ...).
    pub upstream: Vec<String>,
    /// Environment variables for the process (`UPSTREAM_HOST`, ...).
    pub env: Vec<(String, String)>,
    /// Listen on this port rather than a free one picked at start (a loop needs it known).
    pub port: Option<u16>,
}

impl GateConfig {
    pub fn new(backend: Backend) -> GateConfig {
        GateConfig {
            backend,
            workers: 2,
            block_size: "64KiB".into(),
            storage_size: "64MiB".into(),
            routes: Vec::new(),
            origins: Vec::new(),
            origins_with: Vec::new(),
            window: None,
            read_timeout: None,
            sync_data: None,
            extra: Vec::new(),
            upstream: Vec::new(),
            env: Vec::new(),
            port: None,
        }
    }

    /// Adds a line to the `[upstream]` table.
    pub fn upstream(mut self, line: &str) -> Self {
        self.upstream.push(line.into());
        self
    }

    /// Parent caches, in order (`[upstream] parents`).
    pub fn parents(self, addrs: &[SocketAddr]) -> Self {
        let list: Vec<String> = addrs.iter().map(|a| format!("\"{a}\"")).collect();
        self.upstream(&format!("parents = [{}]", list.join(", ")))
    }

    pub fn env(mut self, k: &str, v: &str) -> Self {
        self.env.push((k.into(), v.into()));
        self
    }

    /// Adds a top-level `key = value` line (value written as given, TOML-quoted by the caller).
    pub fn set(mut self, line: &str) -> Self {
        self.extra.push(line.into());
        self
    }

    /// Reverse-proxy mode: every path goes to `origin` (an `http://host:port` URL).
    pub fn route(mut self, prefix: &str, origin: &str) -> Self {
        self.routes.push((prefix.into(), origin.into()));
        self
    }

    /// An allowed origin host, connected at `connect`.
    pub fn origin(mut self, host: &str, connect: SocketAddr) -> Self {
        self.origins.push((host.into(), Some(connect), None));
        self
    }

    pub fn origin_canonical(mut self, host: &str, connect: SocketAddr, canonical: &str) -> Self {
        self.origins
            .push((host.into(), Some(connect), Some(canonical.into())));
        self
    }

    /// An allowed origin host (`connect` optional) with extra lines in its table.
    pub fn origin_with(mut self, host: &str, connect: Option<SocketAddr>, lines: &[&str]) -> Self {
        let lines = lines.iter().map(|l| l.to_string()).collect();
        self.origins_with.push((host.into(), connect, lines));
        self
    }

    pub fn window(mut self, w: &str) -> Self {
        self.window = Some(w.into());
        self
    }

    pub fn storage(mut self, size: &str) -> Self {
        self.storage_size = size.into();
        self
    }

    pub fn read_timeout(mut self, t: &str) -> Self {
        self.read_timeout = Some(t.into());
        self
    }

    fn render(&self, port: u16, admin: u16, storage: &Path) -> String {
        let mut s = String::new();
        let _ = writeln!(s, "listen = \"127.0.0.1:{port}\"");
        let _ = writeln!(s, "admin_listen = \"127.0.0.1:{admin}\"");
        let _ = writeln!(s, "workers = {}", self.workers);
        let _ = writeln!(s, "io_backend = \"{}\"", self.backend.as_str());
        let _ = writeln!(s, "block_size = \"{}\"", self.block_size);
        if let Some(sd) = self.sync_data {
            let _ = writeln!(s, "sync_data = {sd}");
        }
        for line in &self.extra {
            let _ = writeln!(s, "{line}");
        }
        let _ = writeln!(
            s,
            "[[storage]]\npath = \"{}\"\nsize = \"{}\"",
            storage.display(),
            self.storage_size
        );
        for (prefix, origin) in &self.routes {
            let _ = writeln!(s, "[[route]]\nprefix = \"{prefix}\"\norigin = \"{origin}\"");
        }
        for (host, connect, canonical) in &self.origins {
            let _ = writeln!(s, "[[origin]]\nhost = \"{host}\"");
            if let Some(c) = connect {
                let _ = writeln!(s, "connect = \"{c}\"");
            }
            if let Some(c) = canonical {
                let _ = writeln!(s, "canonical = \"{c}\"");
            }
        }
        for (host, connect, lines) in &self.origins_with {
            let _ = writeln!(s, "[[origin]]\nhost = \"{host}\"");
            if let Some(c) = connect {
                let _ = writeln!(s, "connect = \"{c}\"");
            }
            for l in lines {
                let _ = writeln!(s, "{l}");
            }
        }
        let _ = writeln!(s, "[upstream]");
        if let Some(w) = &self.window {
            let _ = writeln!(s, "window = \"{w}\"");
        }
        if let Some(t) = &self.read_timeout {
            let _ = writeln!(s, "read_timeout = \"{t}\"");
        }
        for line in &self.upstream {
            let _ = writeln!(s, "{line}");
        }
        s
    }
}

/// How to stop the cache.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stop {
    /// SIGKILL: a crash.
    Kill,
    /// SIGTERM: what systemd and Docker send.
    Term,
}

pub struct Gate {
    child: Option<Child>,
    pub cfg: GateConfig,
    pub port: u16,
    pub admin: u16,
    dir: tempfile::TempDir,
    starts: u32,
}

const READY_TIMEOUT: Duration = Duration::from_secs(10);

impl Gate {
    pub fn start(cfg: GateConfig) -> Gate {
        let dir = tempfile::Builder::new()
            .prefix("serve-gate-")
            .tempdir()
            .expect("tempdir");
        std::fs::create_dir_all(dir.path().join("storage")).unwrap();
        let mut g = Gate {
            child: None,
            cfg,
            port: 0,
            admin: 0,
            dir,
            starts: 0,
        };
        g.launch_with_retries(true);
        g
    }

    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    pub fn storage_dir(&self) -> PathBuf {
        self.dir.path().join("storage")
    }

    fn log_path(&self) -> PathBuf {
        self.dir.path().join("gatecache.log")
    }

    /// The process's stderr so far (access log lines and warnings).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    fn launch_with_retries(&mut self, new_ports: bool) {
        let mut last = String::new();
        for attempt in 0..4 {
            if new_ports || attempt > 0 {
                self.port = self.cfg.port.unwrap_or_else(free_port);
                self.admin = free_port();
            }
            match self.launch() {
                Ok(()) => return,
                Err(e) if e.contains("Address already in use") => last = e,
                Err(e) => panic!("gatecache did not start:\n{e}"),
            }
        }
        panic!("gatecache did not start (ports taken 4 times):\n{last}");
    }

    fn launch(&mut self) -> Result<(), String> {
        let conf = self.dir.path().join("gatecache.toml");
        std::fs::write(
            &conf,
            self.cfg.render(self.port, self.admin, &self.storage_dir()),
        )
        .unwrap();
        let log = File::options()
            .create(true)
            .append(true)
            .open(self.log_path())
            .unwrap();
        self.starts += 1;
        writeln!(&log, "===== start #{} =====", self.starts).unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_gatecache"))
            .arg("serve")
            .arg("--config")
            .arg(&conf)
            // SERVE_TEST_LOG=debug (say) for more detail when a test fails.
            .env(
                "RUST_LOG",
                std::env::var("SERVE_TEST_LOG").unwrap_or_else(|_| "info".into()),
            )
            .envs(self.cfg.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("spawn gatecache");
        self.child = Some(child);
        let t0 = Instant::now();
        loop {
            if let Some(status) = self.child.as_mut().unwrap().try_wait().unwrap() {
                self.child = None;
                return Err(format!("exited with {status}:\n{}", self.log()));
            }
            if admin_get(self.admin, "/healthz").is_some_and(|(s, _)| s == 200) {
                return Ok(());
            }
            if t0.elapsed() > READY_TIMEOUT {
                self.kill_now();
                return Err(format!(
                    "not ready within {READY_TIMEOUT:?}:\n{}",
                    self.log()
                ));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn kill_now(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Stops the process (and waits for it to end); returns how it exited.
    pub fn stop(&mut self, how: Stop) -> Option<std::process::ExitStatus> {
        let mut c = self.child.take()?;
        match how {
            Stop::Kill => {
                let _ = c.kill();
            }
            Stop::Term => {
                // SAFETY: plain kill(2) on our own child's pid.
                unsafe {
                    libc::kill(c.id() as libc::pid_t, libc::SIGTERM);
                }
            }
        }
        let t0 = Instant::now();
        loop {
            if let Some(status) = c.try_wait().unwrap() {
                return Some(status);
            }
            if t0.elapsed() > Duration::from_secs(10) {
                let _ = c.kill();
                let _ = c.wait();
                panic!("gatecache did not stop on {how:?} within 10 s");
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Waits for the process to end by itself (after a signal sent with [`Gate::signal`]).
    pub fn wait_exit(&mut self, within: Duration) -> std::process::ExitStatus {
        let mut c = self.child.take().expect("running");
        let t0 = Instant::now();
        loop {
            if let Some(status) = c.try_wait().unwrap() {
                return status;
            }
            if t0.elapsed() > within {
                let _ = c.kill();
                let _ = c.wait();
                panic!("gatecache did not exit within {within:?}");
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Stops, then starts again on the same storage and ports.
    pub fn restart(&mut self, how: Stop) {
        self.stop(how);
        self.launch_with_retries(false);
    }

    /// Runs `gatecache verify` on the storage dir (the cache must be stopped): (clean, output).
    pub fn verify(&self) -> (bool, String) {
        assert!(self.child.is_none(), "verify needs the cache stopped");
        let out = Command::new(env!("CARGO_BIN_EXE_gatecache"))
            .arg("verify")
            .arg(self.storage_dir())
            .env("RUST_LOG", "warn")
            .output()
            .expect("run gatecache verify");
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        (out.status.success(), text)
    }

    /// `gatecache inspect`: (key, length, blocks) of each stored object (cache stopped).
    pub fn inspect(&self) -> Vec<(String, u64, u64)> {
        assert!(self.child.is_none(), "inspect needs the cache stopped");
        let out = Command::new(env!("CARGO_BIN_EXE_gatecache"))
            .arg("inspect")
            .arg(self.storage_dir())
            .env("RUST_LOG", "warn")
            .output()
            .expect("run gatecache inspect");
        assert!(out.status.success(), "inspect failed: {out:?}");
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|l| {
                let mut f = l.split('\t');
                let key = f.next()?.to_string();
                let len = f.next()?.strip_suffix(" bytes")?.parse().ok()?;
                let blocks = f.next()?.strip_suffix(" blocks")?.parse().ok()?;
                Some((key, len, blocks))
            })
            .collect()
    }

    /// The admin `/stats` counters (upstream_requests, upstream_bytes, upstream_errors).
    pub fn stats(&self) -> Vec<(String, u64)> {
        let (_, body) = admin_get(self.admin, "/stats").expect("admin /stats");
        body.lines()
            .filter_map(|l| {
                let (k, v) = l.split_once(' ')?;
                Some((k.to_string(), v.trim().parse().ok()?))
            })
            .collect()
    }

    pub fn stat(&self, name: &str) -> u64 {
        self.stats()
            .into_iter()
            .find(|(k, _)| k == name)
            .map_or_else(|| panic!("no stat {name}"), |(_, v)| v)
    }

    /// Sends a signal by name (`HUP`, `TERM`, ...) with kill(1).
    pub fn signal(&self, sig: &str) {
        let pid = self.child.as_ref().expect("running").id();
        let st = Command::new("kill")
            .arg(format!("-{sig}"))
            .arg(pid.to_string())
            .status()
            .expect("run kill");
        assert!(st.success(), "kill -{sig} {pid}");
    }

    pub fn is_running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| c.try_wait().unwrap().is_none())
    }
}

impl Drop for Gate {
    fn drop(&mut self) {
        self.kill_now();
        if std::thread::panicking() {
            let keep = std::path::PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
                .join("serve-failed-logs")
                .join(format!(
                    "gatecache-{}-{}.log",
                    std::process::id(),
                    self.port
                ));
            let _ = std::fs::create_dir_all(keep.parent().unwrap());
            if std::fs::copy(self.log_path(), &keep).is_ok() {
                eprintln!("---- full gatecache log kept in {} ----", keep.display());
            }
            let log = self.log();
            let lines: Vec<&str> = log.lines().collect();
            let from = lines.len().saturating_sub(150);
            eprintln!(
                "---- gatecache stderr (last {} lines) ----\n{}",
                lines.len() - from,
                lines[from..].join("\n")
            );
        }
    }
}

/// GET on the admin port: (status, body).
pub fn admin_get(port: u16, path: &str) -> Option<(u16, String)> {
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_millis(500)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    s.write_all(
        format!("GET {path} HTTP/1.1\r\nHost: admin\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .ok()?;
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    let text = String::from_utf8_lossy(&out).into_owned();
    let status = text.split(' ').nth(1)?.parse().ok()?;
    let body = text.split_once("\r\n\r\n")?.1.to_string();
    Some((status, body))
}
