//! The `gatecache verify` and `gatecache inspect` commands, run as the real binary against
//! stores written through the library: exit statuses, counts, damage lines, the directory lock.

mod common;

use std::collections::BTreeMap;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::*;
use gatecache::cache::Cache;
use gatecache::store::drive::slab_path;
use gatecache::store::format::{SLOT_HEADER_LEN, SlotHeader, key_hash};
use gatecache::store::{SlotKind, StoreConfig};

const STORE_SIZE: u64 = 16 * MIB;
const BLOCK: u64 = 64 * KIB;

const OBJECTS: &[(&str, u64)] = &[
    ("origin.test/fw/image-1.swu", 3 * BLOCK + 1000),
    ("origin.test/pkg/tool_1.2_arm64.deb", 5000),
    ("updates.example.org/img/rootfs.img", 10 * BLOCK),
    ("cdn.example.org/manifest.json", 1),
];

fn gatecache(args: &[&str]) -> Output {
    let child = Command::new(env!("CARGO_BIN_EXE_gatecache"))
        .args(args)
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run gatecache");
    let pid = child.id();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || tx.send(child.wait_with_output()));
    match rx.recv_timeout(Duration::from_secs(30)) {
        Ok(out) => out.expect("wait for gatecache"),
        Err(_) => {
            // SAFETY: signals our own child, which has not been reaped (its waiter is stuck).
            unsafe { libc::kill(pid as libc::pid_t, libc::SIGKILL) };
            panic!("gatecache {args:?} did not finish in 30 s");
        }
    }
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn dir_arg(dir: &Path) -> &str {
    dir.to_str().expect("utf-8 temp dir")
}

/// `name: value` lines of `verify`'s summary.
fn counts(stdout: &str) -> BTreeMap<String, u64> {
    stdout
        .lines()
        .filter_map(|l| l.split_once(": "))
        .filter_map(|(k, v)| Some((k.to_string(), v.parse().ok()?)))
        .collect()
}

fn store(dir: &Path, objects: &[(&str, u64)]) -> StoreConfig {
    let cfg = config(dir, STORE_SIZE);
    let (cache, _) = Cache::open(&cfg).unwrap();
    for &(key, len) in objects {
        put_full(&cache, key, len);
    }
    cfg
}

/// Slab file and header offset of a data block, found by scanning for slot headers.
fn find_block(dir: &Path, key: &str, block: u32) -> (PathBuf, u64) {
    let h = key_hash(key);
    for n in 0.. {
        let path = slab_path(dir, n);
        let Ok(bytes) = std::fs::read(&path) else {
            break;
        };
        for off in (0..bytes.len() - 64).step_by(64) {
            if &bytes[off..off + 4] != b"GCBK" {
                continue;
            }
            let Ok(sh) = SlotHeader::decode(bytes[off..off + 64].try_into().unwrap()) else {
                continue;
            };
            if sh.kind == SlotKind::Data && sh.key_hash == h && sh.block == block {
                return (path, off as u64);
            }
        }
    }
    panic!("no slot header for {key} block {block}");
}

#[test]
fn verify_passes_a_clean_store_and_prints_its_counts() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = store(dir.path(), OBJECTS);
    let out = gatecache(&["verify", dir_arg(dir.path())]);
    let stdout = text(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{stdout}{}", text(&out.stderr));
    let c = counts(&stdout);
    let blocks: u64 = OBJECTS.iter().map(|(_, l)| l.div_ceil(BLOCK)).sum();
    let bytes: u64 = OBJECTS.iter().map(|(_, l)| l).sum();
    assert_eq!(c["slabs"], 4, "{stdout}");
    assert_eq!(c["objects"], OBJECTS.len() as u64, "{stdout}");
    assert_eq!(c["blocks"], blocks, "{stdout}");
    assert_eq!(c["bytes"], bytes, "{stdout}");
    assert_eq!(c["bad"], 0, "{stdout}");
    assert!(!stdout.contains("BAD"), "{stdout}");
    // The same numbers recovery finds.
    let (_cache, report) = Cache::open(&cfg).unwrap();
    assert_eq!(
        (report.objects as u64, report.blocks as u64, report.bytes),
        (c["objects"], c["blocks"], c["bytes"])
    );
}

#[test]
fn verify_fails_and_names_the_object_after_a_data_flip() {
    let dir = tempfile::tempdir().unwrap();
    store(dir.path(), OBJECTS);
    let key = "updates.example.org/img/rootfs.img";
    let (path, off) = find_block(dir.path(), key, 7);
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&path)
        .unwrap();
    let mut b = [0u8];
    let at = off + SLOT_HEADER_LEN + 40_000;
    f.read_exact_at(&mut b, at).unwrap();
    f.write_all_at(&[!b[0]], at).unwrap();
    drop(f);

    let out = gatecache(&["verify", dir_arg(dir.path())]);
    let stdout = text(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{stdout}{}", text(&out.stderr));
    assert_eq!(counts(&stdout)["bad"], 1, "{stdout}");
    let bad: Vec<_> = stdout.lines().filter(|l| l.starts_with("BAD")).collect();
    let slab = path.file_name().unwrap().to_str().unwrap();
    let slab_no: u32 = slab["slab-".len()..slab.len() - ".dat".len()]
        .parse()
        .unwrap();
    assert_eq!(
        bad,
        [format!(
            "BAD slab {slab_no} offset {off}: data crc mismatch, object {key}, block 7"
        )],
        "{stdout}"
    );
    // Nothing was repaired by looking: a second run says the same.
    let again = gatecache(&["verify", dir_arg(dir.path())]);
    assert_eq!(again.status.code(), Some(1));
    assert_eq!(text(&again.stdout), stdout);
}

#[test]
fn verify_and_inspect_refuse_a_directory_in_use() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = store(dir.path(), OBJECTS);
    {
        let (_cache, _) = Cache::open(&cfg).unwrap();
        for cmd in ["verify", "inspect"] {
            let out = gatecache(&[cmd, dir_arg(dir.path())]);
            let stderr = text(&out.stderr);
            assert_eq!(out.status.code(), Some(2), "{cmd}: {stderr}");
            assert!(stderr.contains("in use"), "{cmd}: {stderr}");
            assert!(stderr.contains(dir_arg(dir.path())), "{cmd}: {stderr}");
            assert_eq!(text(&out.stdout), "", "{cmd} printed a report");
        }
    }
    // Closed: the same directory verifies.
    let out = gatecache(&["verify", dir_arg(dir.path())]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
}

#[test]
fn inspect_lists_every_key_with_its_length() {
    let dir = tempfile::tempdir().unwrap();
    let mut objects = OBJECTS.to_vec();
    objects.push(("cdn.example.org/empty.txt", 0));
    objects.push(("origin.test/pkg/Packages.gz?arch=arm64", 777));
    store(dir.path(), &objects);
    let out = gatecache(&["inspect", dir_arg(dir.path())]);
    let stdout = text(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{stdout}{}", text(&out.stderr));
    let listed: BTreeMap<String, (u64, u64)> = stdout
        .lines()
        .map(|l| {
            let f: Vec<_> = l.split('\t').collect();
            assert_eq!(f.len(), 3, "{l:?}");
            let len = f[1].strip_suffix(" bytes").expect(l).parse().unwrap();
            let blocks = f[2].strip_suffix(" blocks").expect(l).parse().unwrap();
            (f[0].to_string(), (len, blocks))
        })
        .collect();
    let want: BTreeMap<String, (u64, u64)> = objects
        .iter()
        .map(|&(k, len)| (k.to_string(), (len, len.div_ceil(BLOCK))))
        .collect();
    assert_eq!(listed, want, "{stdout}");
    // Sorted by key, one line per object.
    assert_eq!(stdout.lines().count(), objects.len());
    let keys: Vec<_> = stdout
        .lines()
        .map(|l| l.split('\t').next().unwrap())
        .collect();
    assert!(keys.is_sorted(), "{stdout}");
}

/// Regression test: a region freed and then given a smaller slot class still holds the old
/// block's bytes where the new slots' headers go; unused slots are then read as damaged headers.
#[test]
fn verify_passes_a_healthy_store_whose_regions_were_reused() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), STORE_SIZE);
    {
        let (cache, _) = Cache::open(&cfg).unwrap();
        put_full(&cache, "origin.test/old/image.swu", 3 * BLOCK);
        assert!(cache.remove("origin.test/old/image.swu"));
        // Small objects: a free full-block region is given a small slot class.
        put_full(&cache, "origin.test/new/a.deb", 5000);
        put_full(&cache, "origin.test/new/b.json", 700);
    }
    let out = gatecache(&["verify", dir_arg(dir.path())]);
    let stdout = text(&out.stdout);
    let first_bad = stdout.lines().find(|l| l.starts_with("BAD"));
    assert_eq!(
        (out.status.code(), counts(&stdout)["bad"]),
        (Some(0), 0),
        "healthy store reported damaged, e.g. {first_bad:?}"
    );
    let (cache, report) = Cache::open(&cfg).unwrap();
    assert_eq!(report.bad_headers, 0, "{report:?}");
    assert_eq!(
        read_full(&cache, "origin.test/new/a.deb").unwrap(),
        bytes_of("origin.test/new/a.deb", 0..5000)
    );
}

/// Regression test: recovery counts a zero-length object (it is complete with no block), verify
/// counts only objects that have blocks.
#[test]
fn verify_counts_zero_length_objects_like_recovery() {
    let dir = tempfile::tempdir().unwrap();
    let mut objects = OBJECTS.to_vec();
    objects.push(("cdn.example.org/empty.txt", 0));
    let cfg = store(dir.path(), &objects);
    let out = gatecache(&["verify", dir_arg(dir.path())]);
    assert_eq!(out.status.code(), Some(0));
    let (_cache, report) = Cache::open(&cfg).unwrap();
    assert_eq!(report.objects, objects.len());
    assert_eq!(
        counts(&text(&out.stdout))["objects"],
        report.objects as u64,
        "{}",
        text(&out.stdout)
    );
}

/// Regression test: a mistyped directory must not verify as a clean, empty cache.
#[test]
fn verify_of_a_missing_directory_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("no-such-cache");
    let out = gatecache(&["verify", dir_arg(&missing)]);
    assert_eq!(out.status.code(), Some(2), "stdout: {}", text(&out.stdout));
    assert!(text(&out.stderr).contains("no-such-cache"));
}

/// Regression test: verify must keep the directory lock for the whole scan, or a cache can open
/// (and resize or rewrite slabs under verify's read-only maps) while it runs.
///
/// The slab file is a FIFO, so verify blocks opening it, mid-scan, for as long as the test
/// likes; meanwhile the test tries to take the lock a cache would take.
#[test]
fn verify_holds_the_directory_lock_while_it_scans() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("lock"), b"").unwrap();
    let fifo = slab_path(dir.path(), 0);
    let c = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
    // SAFETY: a plain syscall with a valid NUL-terminated path.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);

    let mut child = Command::new(env!("CARGO_BIN_EXE_gatecache"))
        .args(["verify", dir_arg(dir.path())])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    struct Reap<'a>(&'a mut std::process::Child);
    impl Drop for Reap<'_> {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let wchan = format!("/proc/{}/wchan", child.id());
    let guard = Reap(&mut child);
    // Wait until verify sits in open() of the FIFO (past its lock check).
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline {
        let w = std::fs::read_to_string(&wchan).unwrap_or_default();
        if w.contains("partner") || w.contains("fifo") {
            break;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    std::thread::sleep(Duration::from_millis(50));

    let lock = std::fs::File::open(dir.path().join("lock")).unwrap();
    // SAFETY: a plain syscall on a descriptor we own.
    let rc = unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
    drop(lock);

    // Let verify go on: a writer on the FIFO unblocks its open.
    let _writer = std::fs::OpenOptions::new()
        .write(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(&fifo);
    drop(guard);
    assert_eq!(rc, -1, "took the cache lock while verify was scanning");
}
