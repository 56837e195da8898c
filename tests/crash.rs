//! Crash safety: a child process fills objects block by block, in chunks, several blocks at once,
//! and is killed with SIGKILL at an arbitrary point; the store is then reopened and checked. Every
//! block the index offers has exactly the right bytes, every block the child reported committed
//! is still there, fills in progress at the kill are gone, and `verify` finds nothing wrong. The
//! cycle repeats on the same directory, so each child starts from the previous recovery's output.
//!
//! The child is this test binary run again (`--exact crash_child`, with `GC_CRASH_DIR` set), so it
//! works the same under `cargo test` and `cargo nextest run`. It prints one line per step it
//! completed; the parent replays them into a model of what must be on disk. Only the step in
//! progress at the kill is unreported, so at most one thing may differ from the model.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader};
use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::time::{Duration, Instant};

use common::*;
use gatecache::cache::{BlockStatus, BlockWriter, Cache, Claim};
use gatecache::store::drive::slab_path;
use gatecache::store::format::{SlotHeader, key_hash};
use gatecache::store::verify::verify_dir;
use gatecache::store::{ObjectMeta, SlotKind};

const DIR_ENV: &str = "GC_CRASH_DIR";
const SEED_ENV: &str = "GC_CRASH_SEED";
/// Prefix of the child's progress lines (libtest prints its own lines around them).
const MARK: &str = "@@ ";

/// Far more than the pool can hold live, so nothing is ever evicted and every committed block of
/// the current version must survive.
const STORE_SIZE: u64 = 24 * MIB;
const BLOCK: u64 = 64 * KIB;
const KEYS: u64 = 12;
/// Objects being filled at once; each has at most one block in progress.
const JOBS: usize = 3;
const CYCLES: u64 = 8;
const STORED_AT: u64 = 1_700_000_000;

const SHAPES: &[u64] = &[
    0,
    1,
    777,
    5000,
    BLOCK - 1,
    BLOCK,
    BLOCK + 1,
    2 * BLOCK + 3,
    150 * KIB + 3,
    300 * KIB + 7,
    4 * BLOCK,
];

fn key(i: u64) -> String {
    match i % 3 {
        0 => format!("origin.test/crash/obj-{i}.bin"),
        1 => format!("updates.example.org/crash/img-{i}.swu"),
        _ => format!("cdn.example.org/crash/pkg-{i}.deb"),
    }
}

/// Each edition of an object has its own length and its own bytes, so a block of one edition
/// served under another would be caught.
fn object(key: &str, edition: u64, stored_at: u64) -> ObjectMeta {
    let k = key.bytes().map(u64::from).sum::<u64>();
    ObjectMeta {
        key: key.to_string(),
        total_len: SHAPES[((k + edition) % SHAPES.len() as u64) as usize],
        status: 200,
        etag: Some(format!("\"e{edition}\"")),
        content_type: Some("application/octet-stream".into()),
        stored_at,
        ..Default::default()
    }
}

fn edition(meta: &ObjectMeta) -> u64 {
    let etag = meta.etag.as_deref().expect("etag");
    etag.trim_matches('"')[1..].parse().expect("edition etag")
}

fn content(meta: &ObjectMeta, block: u32) -> Vec<u8> {
    let start = u64::from(block) * BLOCK;
    let end = (start + BLOCK).min(meta.total_len);
    bytes_of(&format!("{}#e{}", meta.key, edition(meta)), start..end)
}

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

// ---------------------------------------------------------------------------------------------
// The child.

struct Job {
    meta: ObjectMeta,
    version: u64,
    next: u32,
    writer: Option<BlockWriter>,
    done: bool,
}

fn say(line: String) {
    println!("{MARK}{line}");
}

fn start_job(cache: &Cache, rng: &mut Rng, busy: &[Job]) -> Job {
    let key = loop {
        let k = key(rng.below(KEYS));
        if busy.iter().all(|j| j.meta.key != k) {
            break k;
        }
    };
    let meta = match cache.lookup(&key) {
        Some(o) => match rng.below(10) {
            // Fill in whatever blocks are missing.
            0..=4 => (*o.meta).clone(),
            // Revalidated: a new record, same version, blocks kept.
            5..=6 => ObjectMeta {
                stored_at: o.meta.stored_at + 1,
                ..(*o.meta).clone()
            },
            // Changed upstream: a new version, the old blocks are dropped.
            _ => object(&key, edition(&o.meta) + 1, STORED_AT),
        },
        None => object(&key, rng.below(1000), STORED_AT),
    };
    let line = format!("{key} {} {}", edition(&meta), meta.stored_at);
    say(format!("W {line}"));
    let obj = cache.put_object(meta.clone()).expect("put_object");
    assert_eq!(*obj.meta, meta);
    say(format!("P {line}"));
    Job {
        meta,
        version: obj.version,
        next: 0,
        writer: None,
        done: false,
    }
}

fn step(cache: &Cache, job: &mut Job, rng: &mut Rng) {
    let key = &job.meta.key;
    let Some(w) = &mut job.writer else {
        if u64::from(job.next) >= job.meta.block_count(cache.block_size()) {
            say(format!("D {key}"));
            job.done = true;
            return;
        }
        match cache.claim(key, job.next, job.version).expect("claim") {
            Claim::Write(w) => {
                say(format!("S {key} {}", job.next));
                job.writer = Some(w);
            }
            Claim::Ready(_) => job.next += 1,
            Claim::Wait(_) => panic!("{key} block {} filled by someone else", job.next),
        }
        return;
    };
    // One chunk, through either write path.
    let all = content(&job.meta, job.next);
    let from = w.filled();
    let n = (1 + rng.below(24 * KIB) as usize).min(all.len() - from);
    if rng.below(2) == 0 {
        assert_eq!(w.write(&all[from..from + n]), n);
    } else {
        w.spare_mut()[..n].copy_from_slice(&all[from..from + n]);
        w.advance(n);
    }
    if w.is_complete() {
        job.writer.take().unwrap().commit().expect("commit");
        say(format!("C {key} {}", job.next));
        job.next += 1;
    }
}

/// Not a test by itself: the body of the child process (returns at once without its variable).
#[test]
fn crash_child() {
    let Some(dir) = std::env::var_os(DIR_ENV) else {
        return;
    };
    let seed: u64 = std::env::var(SEED_ENV).unwrap().parse().unwrap();
    let mut rng = Rng(seed);
    let (cache, report) = Cache::open(&config(Path::new(&dir), STORE_SIZE)).expect("child open");
    let blocks: usize = cache.objects().iter().map(|(_, n)| n).sum();
    say(format!(
        "OPEN {} {} {}",
        report.objects,
        blocks,
        report.dropped()
    ));
    // Runs until killed; the deadline only guards against a parent that vanished without it.
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut jobs: Vec<Job> = Vec::new();
    while Instant::now() < deadline {
        while jobs.len() < JOBS {
            let j = start_job(&cache, &mut rng, &jobs);
            jobs.push(j);
        }
        for j in &mut jobs {
            step(&cache, j, &mut rng);
        }
        jobs.retain(|j| !j.done);
    }
    eprintln!("crash_child: not killed within 60 s, giving up");
}

// ---------------------------------------------------------------------------------------------
// The parent.

/// Kills and reaps the child on every path out of the test.
struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Runs a child on `dir` until it reported `commits` committed blocks, kills it with SIGKILL at
/// some point after that, and returns every progress line it printed.
fn run_child(dir: &Path, seed: u64, commits: usize) -> Vec<String> {
    let mut child = Killed(
        Command::new(std::env::current_exe().unwrap())
            .args(["--exact", "crash_child", "--nocapture", "--test-threads=1"])
            .env(DIR_ENV, dir)
            .env(SEED_ENV, seed.to_string())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn the child"),
    );
    let stdout = child.0.stdout.take().unwrap();
    let (tx, rx) = mpsc::channel();
    let reader = std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if let Some(at) = line.find(MARK)
                && tx.send(line[at + MARK.len()..].to_string()).is_err()
            {
                break;
            }
        }
    });
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut lines = Vec::new();
    let mut seen = 0;
    while seen < commits {
        match rx.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
            Ok(line) => {
                seen += usize::from(line.starts_with("C "));
                lines.push(line);
            }
            Err(RecvTimeoutError::Timeout) => {
                panic!(
                    "child made {seen} commits in 30 s; last lines {:?}",
                    tail(&lines)
                )
            }
            Err(RecvTimeoutError::Disconnected) => {
                let status = child.0.wait().unwrap();
                panic!(
                    "child died on its own ({status}); last lines {:?}",
                    tail(&lines)
                )
            }
        }
    }
    // Land the kill at an arbitrary point of whatever the child is doing.
    std::thread::sleep(Duration::from_micros(seed * 7919 % 3000));
    child.0.kill().unwrap();
    let status = child.0.wait().unwrap();
    assert_eq!(status.signal(), Some(libc::SIGKILL), "{status}");
    // The rest of what it printed before it died.
    loop {
        match rx.recv_timeout(Duration::from_secs(10)) {
            Ok(line) => lines.push(line),
            Err(RecvTimeoutError::Disconnected) => break,
            Err(RecvTimeoutError::Timeout) => panic!("child's stdout still open after its death"),
        }
    }
    reader.join().unwrap();
    lines
}

fn tail(lines: &[String]) -> &[String] {
    &lines[lines.len().saturating_sub(8)..]
}

/// What is on disk for one key, as far as the parent knows.
#[derive(Debug, Clone, PartialEq)]
struct Held {
    meta: ObjectMeta,
    blocks: BTreeSet<u32>,
}

/// The model after replaying one child's lines.
#[derive(Default)]
struct Replay {
    /// Keys with a job open at the kill, and the record that job was putting.
    active: BTreeMap<String, ObjectMeta>,
    /// Blocks whose fill started but was not reported committed: (key, version, block).
    torn: BTreeSet<(String, u64, u32)>,
    commits: usize,
}

fn replay(state: &mut BTreeMap<String, Held>, lines: &[String]) -> Replay {
    let mut r = Replay::default();
    for line in lines {
        let f: Vec<&str> = line.split(' ').collect();
        let num = |i: usize| -> u64 { f[i].parse().unwrap() };
        match f[0] {
            "OPEN" => {}
            "W" => {
                r.active
                    .insert(f[1].to_string(), object(f[1], num(2), num(3)));
            }
            "P" => {
                let meta = object(f[1], num(2), num(3));
                match state.get_mut(f[1]) {
                    Some(h) if h.meta.version() == meta.version() => h.meta = meta,
                    _ => {
                        state.insert(
                            f[1].to_string(),
                            Held {
                                meta,
                                blocks: BTreeSet::new(),
                            },
                        );
                    }
                }
            }
            "S" => {
                let version = state[f[1]].meta.version();
                r.torn.insert((f[1].to_string(), version, num(2) as u32));
            }
            "C" => {
                let h = state.get_mut(f[1]).unwrap();
                let b = num(2) as u32;
                assert!(r.torn.remove(&(f[1].to_string(), h.meta.version(), b)));
                h.blocks.insert(b);
                r.commits += 1;
            }
            "D" => {
                r.active.remove(f[1]);
            }
            _ => panic!("unknown progress line {line:?}"),
        }
    }
    r
}

/// Opens the killed child's store and checks it against the model; returns what it holds.
fn check_reopen(
    cfg: &gatecache::store::StoreConfig,
    model: &BTreeMap<String, Held>,
    r: &Replay,
    bad_headers: usize,
) -> (BTreeMap<String, Held>, usize) {
    let (cache, report) = Cache::open(cfg).expect("reopen after SIGKILL");
    assert_eq!(report.bad_headers, bad_headers, "{report:?}");
    assert_eq!(report.truncated_slots + report.bad_meta, 0, "{report:?}");

    let held = read_held(&cache);
    assert_eq!(report.objects, held.len());
    assert_eq!(
        report.blocks,
        held.values().map(|h| h.blocks.len()).sum::<usize>()
    );

    check_against_model(model, &held, r);

    // Fills in progress at the kill are gone (bar the one whose commit was the last step).
    let resurrected = r
        .torn
        .iter()
        .filter(|(k, v, b)| {
            held.get(k)
                .is_some_and(|h| h.meta.version() == *v && h.blocks.contains(b))
        })
        .count();
    assert!(resurrected <= 1, "{resurrected} torn fills came back");
    (held, r.torn.len())
}

/// What the index offers, every block of it read and compared.
fn read_held(cache: &Cache) -> BTreeMap<String, Held> {
    let mut held = BTreeMap::new();
    for (obj, ready) in cache.objects() {
        let m = &*obj.meta;
        assert_eq!(
            *m,
            object(&m.key, edition(m), m.stored_at),
            "malformed record"
        );
        let statuses = cache.block_statuses(&m.key).unwrap();
        let mut blocks = BTreeSet::new();
        for (b, s) in statuses.iter().enumerate() {
            let b = b as u32;
            match s {
                BlockStatus::Ready => {
                    let got = cache.get(&m.key, b).unwrap_or_else(|| {
                        panic!("{} block {b} recovered but failed its check", m.key)
                    });
                    assert!(*got == *content(m, b), "{} block {b}: wrong bytes", m.key);
                    blocks.insert(b);
                }
                BlockStatus::Missing => assert!(cache.get(&m.key, b).is_none()),
                BlockStatus::Filling => panic!("{} block {b} filling after a reopen", m.key),
            }
        }
        assert_eq!(blocks.len(), ready);
        assert!(
            !blocks.is_empty() || m.total_len == 0,
            "{} recovered with no block",
            m.key
        );
        held.insert(
            m.key.clone(),
            Held {
                meta: m.clone(),
                blocks,
            },
        );
    }
    held
}

/// Against the model: exact for keys nobody was working on at the kill; for the others, the
/// one unreported step may have landed.
fn check_against_model(model: &BTreeMap<String, Held>, held: &BTreeMap<String, Held>, r: &Replay) {
    let mut surprises = Vec::new();
    let keys: BTreeSet<&String> = model.keys().chain(held.keys()).collect();
    for key in keys {
        let want = model
            .get(key)
            .filter(|h| !h.blocks.is_empty() || h.meta.total_len == 0);
        let got = held.get(key);
        let Some(putting) = r.active.get(key) else {
            assert_eq!(got, want, "{key}: not what the child reported");
            continue;
        };
        let torn_here = |h: &Held, b: &u32| r.torn.contains(&(key.clone(), h.meta.version(), *b));
        match (got, model.get(key)) {
            (Some(g), Some(m)) if g.meta.version() == m.meta.version() => {
                if g.meta != m.meta {
                    assert_eq!(&g.meta, putting, "{key}");
                    surprises.push(format!("{key}: unreported revalidation"));
                }
                assert!(
                    g.blocks.is_superset(&m.blocks),
                    "{key}: reported blocks lost: {:?}",
                    m.blocks.difference(&g.blocks).collect::<Vec<_>>()
                );
                for b in g.blocks.difference(&m.blocks) {
                    assert!(torn_here(g, b), "{key} block {b} came from nowhere");
                    surprises.push(format!("{key}: block {b} committed at the kill"));
                }
            }
            (Some(g), _) => {
                assert_eq!(&g.meta, putting, "{key}: unknown record");
                assert!(
                    g.blocks.is_empty(),
                    "{key}: blocks of an unreported version"
                );
                surprises.push(format!("{key}: unreported new version"));
            }
            (None, m) => {
                let dropped_anyway = want.is_none();
                let replaced = m.is_some_and(|m| m.meta.version() != putting.version());
                assert!(dropped_anyway || replaced, "{key}: lost");
                if !dropped_anyway {
                    surprises.push(format!("{key}: replaced by an unreported version"));
                }
            }
        }
    }
    assert!(
        surprises.len() <= 1,
        "more than the step at the kill: {surprises:?}"
    );
}

#[test]
fn sigkill_mid_fill_then_reopen_serves_only_whole_blocks() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), STORE_SIZE);
    let started = Instant::now();
    let mut model: BTreeMap<String, Held> = BTreeMap::new();
    let (mut torn, mut commits) = (0, 0);
    for cycle in 0..CYCLES {
        let lines = run_child(dir.path(), cycle + 1, 20 + (cycle as usize * 17) % 30);
        // The child recovered what the parent saw, and found nothing left to drop.
        let open: Vec<usize> = lines[0]
            .strip_prefix("OPEN ")
            .unwrap_or_else(|| panic!("first line {:?}", lines[0]))
            .split(' ')
            .map(|n| n.parse().unwrap())
            .collect();
        let blocks = model.values().map(|h| h.blocks.len()).sum();
        assert_eq!(open, [model.len(), blocks, 0], "cycle {cycle}");

        let r = replay(&mut model, &lines);
        commits += r.commits;

        // Verify reads the killed child's files as they are: nothing torn is damage.
        let v = verify_dir(dir.path()).unwrap();
        assert!(v.is_clean(), "cycle {cycle}:\n{}", v.render());

        let (held, t) = check_reopen(&cfg, &model, &r, 0);
        torn += t;
        model = held;

        // Recovery repaired everything it dropped.
        let v = verify_dir(dir.path()).unwrap();
        assert!(
            v.is_clean(),
            "cycle {cycle} after recovery:\n{}",
            v.render()
        );
    }
    assert!(torn > 0, "no fill was ever in progress at a kill");
    assert!(!model.is_empty());
    eprintln!(
        "{CYCLES} kills, {commits} commits, {torn} fills torn, {} objects left, {:.1?}",
        model.len(),
        started.elapsed()
    );
}

// ---------------------------------------------------------------------------------------------
// The narrow windows of `put_object`, made exact: a new record is committed before the old record
// (and, for a new version, the old blocks) are freed. A crash in between leaves both on disk. The
// window is rebuilt by putting back the headers the second session cleared.

/// Every 64-byte-aligned slot header of `key` in the store's slab files: (slab, offset, bytes).
fn headers_of(dir: &Path, key: &str) -> Vec<(u32, u64, [u8; 64])> {
    let mut out = Vec::new();
    for n in 0.. {
        let Ok(bytes) = std::fs::read(slab_path(dir, n)) else {
            break;
        };
        for (i, chunk) in bytes.chunks_exact(64).enumerate() {
            let h: [u8; 64] = chunk.try_into().unwrap();
            if SlotHeader::decode(&h).is_ok_and(|h| h.key_hash == key_hash(key)) {
                out.push((n, i as u64 * 64, h));
            }
        }
    }
    out
}

/// Writes back headers a later session cleared (their slots were freed, not reused).
fn put_back(dir: &Path, headers: &[(u32, u64, [u8; 64])]) -> usize {
    use std::os::unix::fs::FileExt;
    let mut restored = 0;
    for (n, off, h) in headers {
        let f = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(slab_path(dir, *n))
            .unwrap();
        let mut now = [0u8; 64];
        f.read_exact_at(&mut now, *off).unwrap();
        if now == [0u8; 64] {
            f.write_all_at(h, *off).unwrap();
            restored += 1;
        }
    }
    restored
}

#[test]
fn crash_after_a_new_version_record_never_serves_old_blocks() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), 16 * MIB);
    let key = "updates.example.org/fw/changing.swu";
    let v1 = meta(key, 3 * BLOCK + 10);
    // Changed upstream: same length, another etag, so old blocks would fit the new version.
    let v2 = ObjectMeta {
        etag: Some("\"v2\"".into()),
        ..v1.clone()
    };
    assert_ne!(v1.version(), v2.version());
    {
        let (cache, _) = Cache::open(&cfg).unwrap();
        // Written first, so the records below carry sequence numbers well above the start.
        put_full(&cache, "origin.test/bystander.bin", 2 * BLOCK + 1);
        put_full(&cache, key, v1.total_len);
    }
    let before = headers_of(dir.path(), key);
    assert_eq!(before.len(), 1 + 4, "one record and four blocks");
    {
        let (cache, _) = Cache::open(&cfg).unwrap();
        cache.put_object(v2.clone()).unwrap();
        assert!(cache.get(key, 0).is_none());
    }
    // The crash: the old record and blocks were never freed.
    assert_eq!(put_back(dir.path(), &before), 5);

    let (cache, report) = Cache::open(&cfg).unwrap();
    assert_eq!(report.superseded, 1, "{report:?}");
    assert_eq!(report.orphan_blocks, 4, "{report:?}");
    // The new record won; with no block of its own it is an empty object, dropped whole.
    assert_eq!(report.empty_objects, 1, "{report:?}");
    assert!(cache.lookup(key).is_none());
    assert_eq!(
        read_full(&cache, "origin.test/bystander.bin").unwrap(),
        bytes_of("origin.test/bystander.bin", 0..2 * BLOCK + 1)
    );
    drop(cache);
    let v = verify_dir(dir.path()).unwrap();
    assert!(v.is_clean(), "{}", v.render());
    assert!(
        headers_of(dir.path(), key).is_empty(),
        "recovery left headers of dropped slots on disk"
    );
}

#[test]
fn crash_after_a_revalidated_record_keeps_the_newer_one_and_the_blocks() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), 16 * MIB);
    let key = "origin.test/pkg/revalidated.deb";
    let len = 2 * BLOCK + 99;
    {
        let (cache, _) = Cache::open(&cfg).unwrap();
        put_full(&cache, "origin.test/bystander.bin", 3 * BLOCK);
        put_full(&cache, key, len);
    }
    let before = headers_of(dir.path(), key);
    let newer = ObjectMeta {
        stored_at: meta(key, len).stored_at + 3600,
        cache_control: Some("max-age=86400".into()),
        ..meta(key, len)
    };
    {
        // A new session: the newer record must also win over a record of an earlier run.
        let (cache, _) = Cache::open(&cfg).unwrap();
        cache.put_object(newer.clone()).unwrap();
    }
    // Only the old record was freed (the blocks are kept on a revalidation).
    assert_eq!(put_back(dir.path(), &before), 1);

    let (cache, report) = Cache::open(&cfg).unwrap();
    assert_eq!(report.superseded, 1, "{report:?}");
    assert_eq!(report.dropped(), 1, "{report:?}");
    assert_eq!(*cache.lookup(key).unwrap().meta, newer);
    assert_eq!(read_full(&cache, key).unwrap(), bytes_of(key, 0..len));
    drop(cache);
    let records = headers_of(dir.path(), key)
        .iter()
        .filter(|(_, _, h)| SlotHeader::decode(h).unwrap().kind == SlotKind::Meta)
        .count();
    assert_eq!(records, 1, "the superseded record was not cleared");
}
