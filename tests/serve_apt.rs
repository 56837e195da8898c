//! apt through the cache, for real: a small Debian repository built by the test (dpkg-deb,
//! dpkg-scanpackages, apt-ftparchive) served by nginx, then `apt-get update` and
//! `apt-get download` with a private apt state (nothing of the machine's own apt is touched),
//! once with the cache as apt's HTTP proxy and once through a `[[route]]` prefix. The second
//! run causes no origin request for a package file.

mod support;

use std::path::{Path, PathBuf};
use std::process::Command;

use support::gate::{Gate, GateConfig};
use support::nginx::Nginx;
use support::*;

const ORIGIN: &str = "deb.example.org";

#[track_caller]
fn run(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{cmd:?} failed:\n{text}");
    text
}

/// Builds `name_1.0_all.deb` holding `payload` as /usr/share/<name>/data.
fn build_deb(work: &Path, name: &str, payload: &[u8]) -> PathBuf {
    let root = work.join(format!("build-{name}"));
    std::fs::create_dir_all(root.join("DEBIAN")).unwrap();
    std::fs::create_dir_all(root.join(format!("usr/share/{name}"))).unwrap();
    std::fs::write(root.join(format!("usr/share/{name}/data")), payload).unwrap();
    std::fs::write(
        root.join("DEBIAN/control"),
        format!(
            "Package: {name}\nVersion: 1.0\nArchitecture: all\nMaintainer: Test <t@example.org>\n\
             Description: gatecache apt test package\n"
        ),
    )
    .unwrap();
    let deb = work.join(format!("{name}_1.0_all.deb"));
    run(Command::new("dpkg-deb")
        .args(["--build", "--root-owner-group", "-Zgzip"])
        .arg(&root)
        .arg(&deb));
    deb
}

/// A flat repository under `www/debian/`: the packages, Packages(.gz) and a Release file.
fn build_repo(work: &Path) -> PathBuf {
    let repo = work.join("www/debian");
    std::fs::create_dir_all(repo.join("pool")).unwrap();
    for (name, len) in [("gc-small", 10_000usize), ("gc-large", 3 << 20)] {
        let deb = build_deb(work, name, &support::data::generate(name, len as u64));
        std::fs::rename(&deb, repo.join("pool").join(deb.file_name().unwrap())).unwrap();
    }
    let packages = run(Command::new("dpkg-scanpackages")
        .args(["--multiversion", "pool", "/dev/null"])
        .current_dir(&repo));
    let packages: String = packages
        .lines()
        .filter(|l| !l.starts_with("dpkg-scanpackages:"))
        .map(|l| format!("{l}\n"))
        .collect();
    std::fs::write(repo.join("Packages"), &packages).unwrap();
    run(Command::new("gzip")
        .args(["-k", "-9", "Packages"])
        .current_dir(&repo));
    let release = run(Command::new("apt-ftparchive")
        .args(["release", "."])
        .current_dir(&repo));
    std::fs::write(repo.join("Release"), release).unwrap();
    work.join("www")
}

/// apt with everything under `state` and `source` as its only source.
fn apt(state: &Path, source: &str, proxy: Option<&str>) -> Command {
    for d in [
        "lists/partial",
        "cache/archives/partial",
        "etc/apt.conf.d",
        "etc/preferences.d",
    ] {
        std::fs::create_dir_all(state.join(d)).unwrap();
    }
    std::fs::write(state.join("etc/sources.list"), format!("{source}\n")).unwrap();
    let _ = std::fs::File::create(state.join("status"));
    let mut c = Command::new("apt-get");
    let s = state.display();
    for o in [
        format!("Dir::Etc::SourceList={s}/etc/sources.list"),
        "Dir::Etc::SourceParts=/dev/null".into(),
        format!("Dir::Etc::Parts={s}/etc/apt.conf.d"),
        format!("Dir::Etc::PreferencesParts={s}/etc/preferences.d"),
        format!("Dir::State={s}"),
        format!("Dir::State::Lists={s}/lists"),
        format!("Dir::State::status={s}/status"),
        format!("Dir::Cache={s}/cache"),
        "Debug::NoLocking=1".into(),
        "APT::Sandbox::User=root".into(),
        "Acquire::Retries=0".into(),
        "Acquire::Languages=none".into(),
        format!(
            "Acquire::http::Proxy={}",
            proxy.map_or("DIRECT".to_string(), str::to_string)
        ),
    ] {
        c.arg("-o").arg(o);
    }
    c.env("DEBIAN_FRONTEND", "noninteractive");
    c
}

/// `apt-get update` and `apt-get download` of both packages into `state/dl`; checks the files
/// are the repository's, byte for byte.
fn update_and_download(state: &Path, source: &str, proxy: Option<&str>, www: &Path) {
    let out = run(apt(state, source, proxy).arg("update"));
    assert!(!out.contains("Err:"), "apt-get update:\n{out}");
    let dl = state.join("dl");
    std::fs::create_dir_all(&dl).unwrap();
    let out = run(apt(state, source, proxy)
        .args(["download", "gc-small", "gc-large"])
        .current_dir(&dl));
    for name in ["gc-small", "gc-large"] {
        let file = format!("{name}_1.0_all.deb");
        let got = std::fs::read(dl.join(&file)).unwrap_or_else(|e| panic!("{file}: {e}\n{out}"));
        let want = std::fs::read(www.join("debian/pool").join(&file)).unwrap();
        support::data::assert_same(&got, &want, &file);
    }
}

#[test]
fn apt_through_the_proxy_form_and_a_prefix_route() {
    let work = tempfile::tempdir().unwrap();
    let www = build_repo(work.path());
    let origin = Nginx::start_root(&www);
    let g = Gate::start(
        GateConfig::new(Backend::Uring)
            .storage("128MiB")
            .origin(ORIGIN, origin.addr())
            .route("/debian/", &format!("http://{ORIGIN}/debian/")),
    );
    let debs =
        |log: &[support::nginx::OriginHit]| log.iter().filter(|h| h.uri.ends_with(".deb")).count();

    // 1. As apt's proxy: absolute-form requests naming the mirror.
    let source = format!("deb [trusted=yes] http://{ORIGIN}/debian ./");
    let proxy = format!("http://127.0.0.1:{}", g.port);
    update_and_download(&work.path().join("apt1"), &source, Some(&proxy), &www);
    let first = origin.settled_log();
    assert_eq!(debs(&first), 2, "each package fetched once: {first:?}");
    assert!(first.iter().all(|h| h.host == ORIGIN), "{first:?}");

    // 2. Through the prefix route, a fresh apt state: packages come from the cache.
    let source = format!("deb [trusted=yes] http://127.0.0.1:{}/debian ./", g.port);
    update_and_download(&work.path().join("apt2"), &source, None, &www);
    let second = origin.settled_log();
    assert_eq!(
        debs(&second),
        2,
        "no origin request for a package the second time: {:?}",
        &second[first.len()..]
    );
    // Index files were checked with the origin (apt asks max-age=0 for them), not refetched.
    let new = &second[first.len()..];
    assert!(
        new.iter().all(|h| h.status == 304 || h.status == 404),
        "{new:?}"
    );
    eprintln!(
        "apt: first run {} origin requests ({} bytes), second run {} ({} bytes, no package)",
        first.len(),
        support::nginx::body_bytes(&first),
        new.len(),
        support::nginx::body_bytes(new)
    );
}
