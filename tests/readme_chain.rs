//! The README's walkthrough, run: the two-level chain of `deploy/examples/` (ports, storage and
//! the origin's address moved to free ones for the test), two devices through the child, and
//! the savings read from `/summary` as the README says they read.

mod support;

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use support::data::{F16M, assert_same, content};
use support::gate::admin_get;
use support::nginx::Nginx;
use support::{free_port, http};

struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts `gatecache serve` on `deploy/examples/<name>` with addresses replaced.
fn start(dir: &Path, name: &str, swaps: &[(&str, String)], admin: u16) -> Proc {
    let mut text = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("deploy/examples")
            .join(name),
    )
    .unwrap();
    for (from, to) in swaps {
        assert!(text.contains(from), "{name} has no {from}");
        text = text.replace(from, to);
    }
    let conf = dir.join(name);
    std::fs::write(&conf, text).unwrap();
    let child = Command::new(env!("CARGO_BIN_EXE_gatecache"))
        .args(["serve", "--config"])
        .arg(&conf)
        .current_dir(dir)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let p = Proc(child);
    let t0 = Instant::now();
    while admin_get(admin, "/readyz").is_none_or(|(s, _)| s != 200) {
        assert!(t0.elapsed() < Duration::from_secs(10), "{name} not ready");
        std::thread::sleep(Duration::from_millis(20));
    }
    p
}

fn summary(admin: u16) -> serde_json::Value {
    serde_json::from_str(&admin_get(admin, "/summary").unwrap().1).unwrap()
}

#[test]
fn the_readme_two_level_chain() {
    let dir = tempfile::tempdir().unwrap();
    let origin = Nginx::start_with(&[F16M]);
    let (top, top_admin, child, child_admin) = (free_port(), free_port(), free_port(), free_port());
    let _top = start(
        dir.path(),
        "top.toml",
        &[
            ("127.0.0.1:8081", format!("127.0.0.1:{top}")),
            ("127.0.0.1:9181", format!("127.0.0.1:{top_admin}")),
            ("127.0.0.1:8000", origin.addr().to_string()),
        ],
        top_admin,
    );
    let _child = start(
        dir.path(),
        "child.toml",
        &[
            ("127.0.0.1:8082", format!("127.0.0.1:{child}")),
            ("127.0.0.1:9182", format!("127.0.0.1:{child_admin}")),
            ("127.0.0.1:8081", format!("127.0.0.1:{top}")),
        ],
        child_admin,
    );
    let url = format!("/{}?cacheHostOrigin=origin.example.org", F16M.0);
    let addr = format!("127.0.0.1:{child}").parse().unwrap();
    for device in ["first", "second"] {
        let r = http::get(addr, &url, &[]);
        assert_eq!(r.status, 200, "{device}");
        assert_same(&r.body, &content(F16M), device);
    }
    // Counted once each response is out: give the second one a moment.
    let t0 = Instant::now();
    let mut s = summary(child_admin);
    while s["requests"] != 2 && t0.elapsed() < Duration::from_secs(5) {
        std::thread::sleep(Duration::from_millis(20));
        s = summary(child_admin);
    }
    let len = F16M.1;
    assert_eq!(s["hitBytes"], len, "{s}");
    assert_eq!(s["missBytes"], len);
    assert_eq!(s["eggressBytes"], 2 * len);
    assert_eq!(s["hitRatioBytes"], 0.5);
    let t = summary(top_admin);
    assert_eq!(t["missBytes"], len, "{t}");
    assert_eq!(t["hitBytes"], 0);
    let log = origin.settled_log();
    assert_eq!(
        support::nginx::body_bytes(&log),
        len,
        "the origin sent it once: {log:?}"
    );
}
