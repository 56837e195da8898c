//! The deployment files hold together: the example and packaged configurations are valid and
//! the example documents every key; the IoT Edge manifest and the seccomp profile are valid JSON
//! and agree with each other and with the Dockerfile; the systemd unit carries its hardening;
//! and the binary runs the way the container runs it (environment only, port 8081 inside,
//! `gatecache healthcheck`).

use std::collections::BTreeSet;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn repo(p: &str) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join(p);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn check_config(file: &str) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_gatecache"))
        .args(["check-config", "--config"])
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join(file))
        .env("RUST_LOG", "warn")
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// `key =` names in a TOML text, commented-out ones included.
fn keys(text: &str) -> BTreeSet<String> {
    text.lines()
        .map(|l| l.trim_start().trim_start_matches('#').trim_start())
        .filter_map(|l| l.split_once(" = ").map(|(k, _)| k.trim().to_string()))
        .filter(|k| k.chars().all(|c| c.is_ascii_lowercase() || c == '_'))
        .collect()
}

#[test]
fn example_config_is_valid_and_documents_every_key() {
    let (ok, effective, err) = check_config("deploy/gatecache.example.toml");
    assert!(ok, "{err}");
    let documented = keys(&repo("deploy/gatecache.example.toml"));
    // Every key the effective configuration has (so every key there is) is in the example.
    let mut all = keys(&effective);
    // Keys of optional tables the effective configuration of the example does not show.
    all.extend(
        [
            "proxy",
            "ca_file",
            "node_name",
            "connect",
            "scheme",
            "key_query",
            "ports",
            "host",
        ]
        .map(String::from),
    );
    let missing: Vec<_> = all.difference(&documented).collect();
    assert!(
        missing.is_empty(),
        "not documented in the example: {missing:?}"
    );
    let (ok, _, err) = check_config("deploy/gatecache.toml");
    assert!(ok, "the packaged configuration: {err}");
}

fn json(p: &str) -> serde_json::Value {
    serde_json::from_str(&repo(p)).unwrap_or_else(|e| panic!("{p}: {e}"))
}

#[test]
fn seccomp_profile_allows_io_uring_and_refuses_the_rest() {
    let p = json("deploy/seccomp/gatecache.json");
    assert_eq!(p["defaultAction"], "SCMP_ACT_ERRNO");
    let allowed: BTreeSet<&str> = p["syscalls"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["action"] == "SCMP_ACT_ALLOW")
        .flat_map(|r| r["names"].as_array().unwrap())
        .map(|n| n.as_str().unwrap())
        .collect();
    for s in [
        "io_uring_setup",
        "io_uring_enter",
        "io_uring_register",
        "epoll_wait",
        "accept4",
        "pwrite64",
        "fdatasync",
        "mmap",
        "execve",
        // runc, after it loads the filter and before it executes gatecache.
        "fstatfs",
        "close_range",
        // aarch64's glibc for calls x86_64 has in older forms.
        "ppoll",
        "mkdirat",
        "faccessat",
        "renameat",
    ] {
        assert!(allowed.contains(s), "{s} not allowed");
    }
    for s in ["ptrace", "mount", "kexec_load", "bpf", "init_module"] {
        assert!(!allowed.contains(s), "{s} allowed");
    }
}

#[test]
fn iot_edge_manifest_runs_the_image_as_the_original_module_did() {
    let m = json("deploy/iotedge/deployment.template.json");
    let module = &m["modulesContent"]["$edgeAgent"]["properties.desired"]["modules"]["gatecache"];
    assert_eq!(module["type"], "docker");
    assert_eq!(module["restartPolicy"], "always");
    let env = module["env"].as_object().unwrap();
    for k in [
        "UPSTREAM_HOST",
        "UPSTREAM_PROXY",
        "STORAGE_1_SIZE_GB",
        "CACHEABLE_CUSTOM_1_HOST",
        "CACHEABLE_CUSTOM_1_CANONICAL",
        "IS_SUMMARY_ACCESS_UNRESTRICTED",
    ] {
        assert!(env.contains_key(k), "env {k}");
    }
    let create = &module["settings"]["createOptions"];
    let host = &create["HostConfig"];
    assert_eq!(host["PortBindings"]["8081/tcp"][0]["HostPort"], "80");
    assert_eq!(
        host["Binds"][0],
        "/var/lib/gatecache/1:/var/cache/gatecache/1"
    );
    // The profile inline is the profile file.
    let inline = host["SecurityOpt"][0].as_str().unwrap();
    let inline: serde_json::Value =
        serde_json::from_str(inline.strip_prefix("seccomp=").expect("seccomp=")).unwrap();
    assert_eq!(inline, json("deploy/seccomp/gatecache.json"));
    assert_eq!(
        create["Healthcheck"]["Test"],
        serde_json::json!(["CMD", "/usr/local/bin/gatecache", "healthcheck"])
    );
    // What IoT Edge accepts: createOptions, stringified, in at most 8 chunks of 512.
    let s = serde_json::to_string(create).unwrap();
    assert!(s.len() <= 8 * 512, "createOptions is {} bytes", s.len());

    let docker = repo("Dockerfile");
    assert!(docker.contains("\nEXPOSE 8081\n"));
    assert!(docker.contains("CMD [\"serve\", \"--listen\", \"0.0.0.0:8081\"]"));
    assert!(docker.contains("CMD [\"/usr/local/bin/gatecache\", \"healthcheck\"]"));
    assert!(docker.contains("\nRUN cargo build --release --locked\n"));
    assert!(docker.contains("\nUSER gatecache\n"));
}

#[test]
fn systemd_unit_is_hardened() {
    let unit = repo("systemd/gatecache.service");
    for line in [
        "Type=notify",
        "User=gatecache",
        "CacheDirectory=gatecache",
        "AmbientCapabilities=CAP_NET_BIND_SERVICE",
        "LimitNOFILE=1048576",
        "LimitMEMLOCK=infinity",
        "NoNewPrivileges=yes",
        "ProtectSystem=strict",
        "ProtectHome=yes",
        "RestrictAddressFamilies=AF_INET AF_INET6 AF_UNIX",
        "ExecReload=/bin/kill -HUP $MAINPID",
    ] {
        assert!(unit.lines().any(|l| l == line), "{line}");
    }
    assert!(repo("systemd/gatecache.sysusers").contains("u gatecache "));
    assert!(repo("systemd/gatecache.tmpfiles").contains("d /var/cache/gatecache "));
}

#[test]
fn runs_like_the_container() {
    // The image's environment and command, on loopback: no configuration file at all.
    let dir = tempfile::tempdir().unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let admin = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    // An empty file stands for "no configuration" (the machine may have /etc/gatecache).
    let empty = dir.path().join("empty.toml");
    std::fs::write(&empty, format!("admin_listen = \"{admin}\"\n")).unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_gatecache"))
        .args(["serve", "--config"])
        .arg(&empty)
        .args(["--listen", &format!("127.0.0.1:{port}")])
        .env("GATECACHE_STORAGE_ROOT", dir.path())
        .env("STORAGE_1_SIZE_GB", "1")
        .env("UPSTREAM_HOST", "")
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let health = || {
        Command::new(env!("CARGO_BIN_EXE_gatecache"))
            .args(["healthcheck", "--admin", &admin.to_string()])
            .stderr(Stdio::null())
            .status()
            .unwrap()
            .success()
    };
    let t0 = Instant::now();
    while !health() {
        assert!(t0.elapsed() < Duration::from_secs(10), "never healthy");
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(
        dir.path().join("1").is_dir(),
        "drive 1 from STORAGE_1_SIZE_GB"
    );
    let _ = child.kill();
    let _ = child.wait();
    // Nothing listening: unhealthy.
    let t0 = Instant::now();
    while health() {
        assert!(t0.elapsed() < Duration::from_secs(5));
        std::thread::sleep(Duration::from_millis(50));
    }
}
