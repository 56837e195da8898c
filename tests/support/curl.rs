//! curl and aria2c as real clients.

use std::process::Command;

/// What one curl run gave.
#[derive(Debug, Clone)]
pub struct CurlOut {
    /// curl's exit code (0 ok, 18 partial transfer, 52 empty reply, 56 recv failure, ...).
    pub exit: i32,
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    pub ttfb: f64,
    pub total: f64,
    pub stderr: String,
}

impl CurlOut {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn cache_status(&self) -> &str {
        self.header("cache-status").unwrap_or("")
    }

    #[track_caller]
    pub fn ok(&self) -> &Self {
        assert_eq!(self.exit, 0, "curl failed: {}", self.stderr);
        self
    }
}

/// Runs curl with `args` (URL included); the body goes to a temp file and is read back.
pub fn curl(args: &[&str]) -> CurlOut {
    let dir = tempfile::tempdir().unwrap();
    let body = dir.path().join("body");
    let heads = dir.path().join("heads");
    let out = Command::new("curl")
        .args(["-s", "-S", "--max-time", "60", "-o"])
        .arg(&body)
        .arg("-D")
        .arg(&heads)
        .args(["-w", "%{http_code} %{time_starttransfer} %{time_total}"])
        .args(args)
        .output()
        .expect("run curl");
    let w = String::from_utf8_lossy(&out.stdout).into_owned();
    let mut f = w.split_whitespace();
    let status = f.next().and_then(|v| v.parse().ok()).unwrap_or(0);
    let ttfb = f.next().and_then(|v| v.parse().ok()).unwrap_or(0.0);
    let total = f.next().and_then(|v| v.parse().ok()).unwrap_or(0.0);
    let htext = std::fs::read_to_string(&heads).unwrap_or_default();
    // The last head block (after any 1xx).
    let last = htext
        .split("\r\n\r\n")
        .filter(|b| !b.trim().is_empty())
        .last()
        .unwrap_or("");
    let headers = last
        .lines()
        .skip(1)
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect();
    CurlOut {
        exit: out.status.code().unwrap_or(-1),
        status,
        headers,
        body: std::fs::read(&body).unwrap_or_default(),
        ttfb,
        total,
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// Downloads `url` with aria2c (`extra` options added); returns (exit ok, file bytes, log).
pub fn aria2c(url: &str, extra: &[&str]) -> (bool, Vec<u8>, String) {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new("aria2c")
        .args([
            "--no-conf=true",
            "--quiet=false",
            "--console-log-level=warn",
            "--summary-interval=0",
            "--file-allocation=none",
            "--allow-overwrite=true",
            "--auto-file-renaming=false",
            "--connect-timeout=5",
            "--timeout=30",
            "--max-tries=1",
            "--retry-wait=0",
            "-o",
            "out.bin",
            "-d",
        ])
        .arg(dir.path())
        .args(extra)
        .arg(url)
        .output()
        .expect("run aria2c");
    let log = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let data = std::fs::read(dir.path().join("out.bin")).unwrap_or_default();
    (out.status.success(), data, log)
}
