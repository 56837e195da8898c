//! An nginx origin on loopback, serving the deterministic files of [`super::data`], with an
//! access log that records what each request asked for and how many body bytes it got.

use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::data;
use super::free_port;

pub const NGINX: &str = "/usr/sbin/nginx";

/// One line of the origin's access log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OriginHit {
    pub method: String,
    pub status: u16,
    pub body_bytes: u64,
    /// The `Range` header, or "-".
    pub range: String,
    /// Path and query as received.
    pub uri: String,
    pub host: String,
}

pub struct Nginx {
    child: Option<Child>,
    pub port: u16,
    dir: tempfile::TempDir,
    /// What it serves (default: the shared data dir).
    root: Option<PathBuf>,
    /// https with this certificate chain and key (PEM files).
    tls: Option<(PathBuf, PathBuf)>,
}

impl Nginx {
    /// Starts nginx serving the standard files.
    pub fn start() -> Nginx {
        Self::start_with(data::STANDARD)
    }

    /// Starts nginx after making sure `files` exist in the data dir.
    pub fn start_with(files: &[(&str, u64)]) -> Nginx {
        for (name, len) in files {
            data::ensure_file(name, *len);
        }
        Self::launch_serving(None, None)
    }

    /// Starts nginx serving the standard files over https with `cert` and `key` (PEM).
    pub fn start_tls(cert: &std::path::Path, key: &std::path::Path) -> Nginx {
        for (name, len) in data::STANDARD {
            data::ensure_file(name, *len);
        }
        Self::launch_serving(None, Some((cert.to_path_buf(), key.to_path_buf())))
    }

    /// Starts nginx serving the directory `root`.
    pub fn start_root(root: &std::path::Path) -> Nginx {
        Self::launch_serving(Some(root.to_path_buf()), None)
    }

    fn launch_serving(root: Option<PathBuf>, tls: Option<(PathBuf, PathBuf)>) -> Nginx {
        let mut last = String::new();
        for _ in 0..4 {
            let dir = tempfile::Builder::new()
                .prefix("serve-nginx-")
                .tempdir()
                .expect("tempdir");
            let mut n = Nginx {
                child: None,
                port: free_port(),
                dir,
                root: root.clone(),
                tls: tls.clone(),
            };
            match n.launch() {
                Ok(()) => return n,
                Err(e) if e.contains("Address already in use") => last = e,
                Err(e) => panic!("nginx did not start:\n{e}"),
            }
        }
        panic!("nginx did not start (ports taken 4 times):\n{last}");
    }

    fn launch(&mut self) -> Result<(), String> {
        let d = self.dir.path();
        let conf = format!(
            r#"daemon off;
master_process off;
worker_processes 1;
pid {d}/nginx.pid;
error_log {d}/error.log warn;
events {{ worker_connections 1024; }}
http {{
    log_format counts '$request_method|$status|$body_bytes_sent|$http_range|$request_uri|$http_host';
    access_log {d}/access.log counts;
    client_body_temp_path {d}/body;
    proxy_temp_path {d}/proxy;
    fastcgi_temp_path {d}/fastcgi;
    uwsgi_temp_path {d}/uwsgi;
    scgi_temp_path {d}/scgi;
    default_type application/octet-stream;
    sendfile on;
    keepalive_requests 100000;
    server {{
        listen 127.0.0.1:{port}{ssl};
        root {root};
        # Fresh for an hour, as a mirror would say: the tests of plain caching must not
        # depend on how recently the data files were written (heuristic freshness).
        location / {{ expires 1h; }}
    }}
}}
"#,
            d = d.display(),
            port = self.port,
            root = self.root.clone().unwrap_or_else(data::data_dir).display(),
            ssl = match &self.tls {
                Some((c, k)) => format!(
                    " ssl; ssl_certificate {}; ssl_certificate_key {}",
                    c.display(),
                    k.display()
                ),
                None => String::new(),
            },
        );
        std::fs::write(d.join("nginx.conf"), conf).unwrap();
        let _ = std::fs::remove_file(d.join("error.log"));
        let child = Command::new(NGINX)
            .arg("-c")
            .arg(d.join("nginx.conf"))
            .arg("-p")
            .arg(d)
            .arg("-e")
            .arg(d.join("error.log"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| format!("spawn {NGINX}: {e}"))?;
        self.child = Some(child);
        let t0 = Instant::now();
        loop {
            if let Some(st) = self.child.as_mut().unwrap().try_wait().unwrap() {
                self.child = None;
                let err = std::fs::read_to_string(d.join("error.log")).unwrap_or_default();
                return Err(format!("nginx exited with {st}: {err}"));
            }
            if TcpStream::connect_timeout(&self.addr(), Duration::from_millis(200)).is_ok() {
                return Ok(());
            }
            if t0.elapsed() > Duration::from_secs(10) {
                return Err("nginx not listening within 10 s".into());
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    /// `http://127.0.0.1:PORT` (for a `[[route]]`).
    pub fn origin_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    fn log_path(&self) -> PathBuf {
        self.dir.path().join("access.log")
    }

    /// The access log as it is now.
    pub fn log(&self) -> Vec<OriginHit> {
        let text = std::fs::read_to_string(self.log_path()).unwrap_or_default();
        text.lines()
            .filter_map(|l| {
                let f: Vec<&str> = l.splitn(6, '|').collect();
                (f.len() == 6).then(|| OriginHit {
                    method: f[0].to_string(),
                    status: f[1].parse().unwrap_or(0),
                    body_bytes: f[2].parse().unwrap_or(0),
                    range: f[3].to_string(),
                    uri: f[4].to_string(),
                    host: f[5].to_string(),
                })
            })
            .collect()
    }

    /// The log once it has not changed for 300 ms (nginx writes a line when a request ends,
    /// a moment after its last byte went out). Bounded to 10 s.
    pub fn settled_log(&self) -> Vec<OriginHit> {
        let t0 = Instant::now();
        let mut last = self.log();
        let mut stable_since = Instant::now();
        loop {
            std::thread::sleep(Duration::from_millis(50));
            let now = self.log();
            if now != last {
                last = now;
                stable_since = Instant::now();
            } else if stable_since.elapsed() >= Duration::from_millis(300)
                || t0.elapsed() > Duration::from_secs(10)
            {
                return last;
            }
        }
    }

    /// Waits (up to 10 s) until `pred` holds for the log; returns the log either way.
    pub fn wait_log(&self, pred: impl Fn(&[OriginHit]) -> bool) -> Vec<OriginHit> {
        let t0 = Instant::now();
        loop {
            let l = self.log();
            if pred(&l) || t0.elapsed() > Duration::from_secs(10) {
                return l;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Requests whose path (without query) is `path`.
    pub fn hits_for(&self, path: &str) -> Vec<OriginHit> {
        self.log()
            .into_iter()
            .filter(|h| h.uri.split('?').next() == Some(path))
            .collect()
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        if std::thread::panicking() {
            let log = std::fs::read_to_string(self.log_path()).unwrap_or_default();
            let lines: Vec<&str> = log.lines().collect();
            let from = lines.len().saturating_sub(30);
            eprintln!(
                "---- nginx access log (last lines) ----\n{}",
                lines[from..].join("\n")
            );
        }
    }
}

/// Sum of body bytes in a log.
pub fn body_bytes(log: &[OriginHit]) -> u64 {
    log.iter().map(|h| h.body_bytes).sum()
}
