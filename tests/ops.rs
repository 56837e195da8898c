//! Operating the cache: `check-config`, the admin endpoints (`/summary` with the original
//! module's fields, `/metrics`, `/healthz`, `/readyz`), the summary on the client port when
//! IS_SUMMARY_ACCESS_UNRESTRICTED says so, and an access log file reopened on SIGHUP.

mod support;

use std::process::Command;
use std::time::{Duration, Instant};

use support::data::{F1M3, F16M, F100K};
use support::gate::{Gate, GateConfig, admin_get};
use support::http;
use support::*;

fn check_config(args: &[&str], env: &[(&str, &str)]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_gatecache"))
        .arg("check-config")
        .args(args)
        .envs(env.iter().copied())
        .env("RUST_LOG", "warn")
        .output()
        .expect("run gatecache check-config");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn check_config_prints_the_effective_config_or_names_the_bad_value() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("gatecache.toml");
    std::fs::write(
        &file,
        "listen = \"127.0.0.1:8081\"\n[[storage]]\npath = \"/tmp/x\"\nsize = \"1GiB\"\n",
    )
    .unwrap();
    let f = file.to_str().unwrap();
    let (code, out, err) = check_config(
        &["--config", f],
        &[
            ("UPSTREAM_HOST", "l4.example.org"),
            ("CACHEABLE_CUSTOM_1_HOST", "pkgs.example.com:80"),
        ],
    );
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("listen = \"127.0.0.1:8081\""), "{out}");
    assert!(out.contains("parents = [\"l4.example.org:80\"]"), "{out}");
    assert!(out.contains("host = \"pkgs.example.com\""), "{out}");
    assert!(
        out.contains("read_timeout = \"15s\""),
        "defaults are shown: {out}"
    );
    // What it prints is a configuration that starts the same way.
    let again = dir.path().join("effective.toml");
    std::fs::write(&again, &out).unwrap();
    let (code, out2, err) = check_config(&["--config", again.to_str().unwrap()], &[]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(out2, out);

    for (args, env, key) in [
        (vec!["--config", f, "--listen", "nowhere"], vec![], "listen"),
        (
            vec!["--config", f],
            vec![("STORAGE_1_SIZE_GB", "lots")],
            "STORAGE_1_SIZE_GB",
        ),
        (
            vec!["--config", f],
            vec![("UPSTREAM_PROXY", "a b")],
            "UPSTREAM_PROXY",
        ),
        (
            vec!["--config", "/nonexistent/gatecache.toml"],
            vec![],
            "/nonexistent",
        ),
    ] {
        let (code, out, err) = check_config(&args, &env);
        assert_eq!(code, 1, "{args:?} {env:?}: {out}");
        assert!(err.contains(key), "{key}: {err}");
        assert!(out.is_empty());
    }
}

#[test]
fn summary_metrics_and_health() {
    let (_n, g) = nginx_and_gate(Backend::Uring);
    assert_eq!(admin_get(g.admin, "/healthz").unwrap().0, 200);
    assert_eq!(admin_get(g.admin, "/readyz").unwrap().0, 200);
    let path = format!("/{}", F100K.0);
    assert_eq!(http::get(g.addr(), &path, &[]).status, 200); // miss
    assert!(http::get(g.addr(), &path, &[]).is_hit());
    assert!(http::get(g.addr(), &path, &[("Range", "bytes=0-99")]).is_hit());

    // Counted once each response is sent, a moment after the client has it.
    let t0 = Instant::now();
    let (status, body) = loop {
        let (status, body) = admin_get(g.admin, "/summary").unwrap();
        let s: serde_json::Value = serde_json::from_str(&body).unwrap();
        if s["requests"].as_u64() == Some(3) || t0.elapsed() > Duration::from_secs(5) {
            break (status, body);
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    assert_eq!(status, 200);
    let s: serde_json::Value =
        serde_json::from_str(&body).unwrap_or_else(|e| panic!("{e}: {body}"));
    let n = |v: &serde_json::Value| v.as_u64().unwrap_or_else(|| panic!("not a number: {v}"));
    assert_eq!(n(&s["hitBytes"]), F100K.1 + 100, "{body}");
    assert_eq!(n(&s["missBytes"]), F100K.1);
    assert_eq!(n(&s["eggressBytes"]), 2 * F100K.1 + 100);
    let ratio = s["hitRatioBytes"].as_f64().unwrap();
    assert!((ratio - (F100K.1 + 100) as f64 / (2 * F100K.1 + 100) as f64).abs() < 1e-9);
    assert_eq!(n(&s["upstreamBytes"]), F100K.1);
    assert_eq!(n(&s["cacheStatus"]["HIT"]["requests"]), 2);
    assert_eq!(n(&s["storage"]["objects"]), 1);
    assert!(n(&s["storage"]["drives"][0]["usedBytes"]) > 0);
    assert!(s["period"]["totals"]["hitBytes"].is_u64());
    let origin = s["origins"].as_object().unwrap();
    assert_eq!(origin.len(), 1, "{body}");

    let (status, text) = admin_get(g.admin, "/metrics").unwrap();
    assert_eq!(status, 200);
    for line in [
        "gatecache_requests_total{cache=\"HIT\"} 2",
        "gatecache_requests_total{cache=\"MISS\"} 1",
        &format!(
            "gatecache_response_body_bytes_total{{cache=\"MISS\"}} {}",
            F100K.1
        ),
        "gatecache_responses_total{code=\"2xx\"} 3",
        "gatecache_response_seconds_count 3",
        &format!("gatecache_upstream_received_bytes_total {}", F100K.1),
        "gatecache_objects 1",
    ] {
        assert!(
            text.lines().any(|l| l == line),
            "missing {line:?} in\n{text}"
        );
    }
    // Every sample line is `name{labels} value` with a numeric value, after its TYPE line.
    let mut typed = std::collections::HashSet::new();
    for l in text.lines() {
        if let Some(rest) = l.strip_prefix("# TYPE ") {
            typed.insert(rest.split(' ').next().unwrap().to_string());
        } else if !l.starts_with('#') {
            let (name, value) = l.rsplit_once(' ').unwrap();
            let base = name.split('{').next().unwrap();
            let family = ["_bucket", "_sum", "_count"]
                .iter()
                .find_map(|s| base.strip_suffix(s))
                .filter(|f| typed.contains(*f))
                .unwrap_or(base);
            assert!(typed.contains(family), "{l}: no TYPE before it");
            assert!(value.parse::<f64>().is_ok(), "{l}");
        }
    }
}

#[test]
fn summary_on_the_client_port_only_when_unrestricted() {
    let n = support::nginx::Nginx::start();
    let closed = Gate::start(GateConfig::new(Backend::Uring).route("/data/", &n.origin_url()));
    let r = http::get(closed.addr(), "/summary", &[]);
    assert_eq!(r.status, 403, "{}", r.body_text());
    let open = Gate::start(
        GateConfig::new(Backend::Uring)
            .route("/data/", &n.origin_url())
            .env("IS_SUMMARY_ACCESS_UNRESTRICTED", "true"),
    );
    let r = http::get(open.addr(), "/summary", &[]);
    assert_eq!(r.status, 200);
    let s: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
    assert!(s["eggressBytes"].is_u64(), "{}", r.body_text());
}

#[test]
fn access_log_file_is_reopened_on_sighup() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("access.log");
    let n = support::nginx::Nginx::start();
    let g = Gate::start(
        GateConfig::new(Backend::Uring)
            .route("/", &n.origin_url())
            .set(&format!("access_log = \"{}\"", log.display())),
    );
    let wait_for = |file: &std::path::Path, needle: &str| {
        let t0 = Instant::now();
        loop {
            let text = std::fs::read_to_string(file).unwrap_or_default();
            if text.contains(needle) {
                return text;
            }
            assert!(
                t0.elapsed() < Duration::from_secs(5),
                "{needle:?} not in {file:?}: {text}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    };
    let p1 = format!("/{}", F100K.0);
    http::get(g.addr(), &p1, &[]);
    let text = wait_for(&log, &p1);
    let line = text.lines().find(|l| l.contains(&p1)).unwrap();
    // client "request line" status bytes cache upstream-seconds total-seconds
    let f: Vec<&str> = line.split_whitespace().collect();
    assert_eq!(f[0], "127.0.0.1", "{line}");
    assert_eq!(f[1], "\"GET");
    assert_eq!(f[3], "200");
    assert_eq!(f[4], F100K.1.to_string());
    assert_eq!(f[5], "MISS");
    assert!(
        f[6].parse::<f64>().unwrap() > 0.0,
        "upstream time of a miss: {line}"
    );
    assert!(f[7].parse::<f64>().is_ok());
    assert!(
        !g.log().contains(&p1),
        "the service log has no access lines now"
    );

    // logrotate: move the file away, SIGHUP, and the next lines go to a new file.
    let rotated = dir.path().join("access.log.1");
    std::fs::rename(&log, &rotated).unwrap();
    g.signal("HUP");
    let p2 = format!("/{}", F1M3.0);
    let t0 = Instant::now();
    while !log.exists() && t0.elapsed() < Duration::from_secs(5) {
        std::thread::sleep(Duration::from_millis(20));
    }
    http::get(g.addr(), &p2, &[]);
    wait_for(&log, &p2);
    assert!(!std::fs::read_to_string(&rotated).unwrap().contains(&p2));
}

both_backends! {
    /// SIGTERM: no new connections; a response in progress (a hit, going to a slow reader, so
    /// no fetch keeps the process up) completes whole; exit 0.
    fn sigterm_finishes_responses_in_progress_and_refuses_new_ones(backend) {
        let (_n, mut g) = nginx_and_gate(backend);
        let path = format!("/{}", F16M.0);
        let want = support::data::content(F16M);
        assert_eq!(http::get(g.addr(), &path, &[]).status, 200);
        support::wait_hit(&g, &path, &[]);
        let mut c = http::Conn::open(g.addr());
        c.send(http::get_req(&path, &[]));
        let head = c.read_head().unwrap().expect("a head");
        assert_eq!(head.status, 200);
        let addr = g.addr();
        g.signal("TERM");
        // New connections are refused soon after the signal.
        let t0 = Instant::now();
        while std::net::TcpStream::connect(addr).is_ok() {
            assert!(t0.elapsed() < Duration::from_secs(3), "still accepting");
            std::thread::sleep(Duration::from_millis(20));
        }
        // The response in progress completes, read slowly, whole; then the connection closes.
        let mut body = Vec::new();
        let got = c.read_body_with(F16M.1, |b| {
            body.extend_from_slice(b);
            std::thread::sleep(Duration::from_micros(200));
        });
        assert_eq!(got, F16M.1, "the body was cut");
        support::data::assert_same(&body, &want, "drained response");
        assert!(c.closed_within(Duration::from_secs(3)));
        let status = g.wait_exit(Duration::from_secs(15));
        assert!(status.success(), "{status:?}");
    }
}

#[test]
fn tells_systemd_when_ready_and_when_stopping() {
    // systemd's side of Type=notify: a datagram socket named by NOTIFY_SOCKET.
    use std::os::unix::net::UnixDatagram;
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("notify");
    let rx = UnixDatagram::bind(&sock).unwrap();
    rx.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let n = support::nginx::Nginx::start();
    let mut g = Gate::start(
        GateConfig::new(Backend::Uring)
            .route("/", &n.origin_url())
            .env("NOTIFY_SOCKET", sock.to_str().unwrap()),
    );
    let mut buf = [0u8; 256];
    let k = rx.recv(&mut buf).expect("READY=1 within 10 s");
    assert_eq!(String::from_utf8_lossy(&buf[..k]).trim(), "READY=1");
    assert_eq!(admin_get(g.admin, "/readyz").unwrap().0, 200);
    g.signal("TERM");
    let k = rx.recv(&mut buf).expect("STOPPING=1");
    assert_eq!(String::from_utf8_lossy(&buf[..k]).trim(), "STOPPING=1");
    assert!(g.wait_exit(Duration::from_secs(15)).success());
}
