//! Several threads on one cache: collapsed misses streamed to waiters, aborted fills, an async
//! waiter on tokio-uring, objects replaced mid-fill, and a mixed workload under constant eviction
//! in which every byte read anywhere is compared with a model.

mod common;

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Barrier};
use std::thread;
use std::time::{Duration, Instant};

use common::*;
use gatecache::cache::{BlockStatus, BlockWriter, Cache, CacheError, Claim};
use gatecache::store::{Fill, FillState, ObjectMeta, SlotBuf};

const BS: u64 = 64 * KIB;
/// Longest any wait may take before the test calls it a lost wake-up or a hang.
const WAIT: Duration = Duration::from_secs(10);

/// xorshift64*: small, deterministic, and enough for picking operations.
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Rng {
        Rng(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1)
    }
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
    fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }
}

fn pinned(cache: &Cache) -> usize {
    cache.store().pinned_slots()
}

fn kind(c: &Claim) -> &'static str {
    match c {
        Claim::Ready(_) => "Ready",
        Claim::Wait(_) => "Wait",
        Claim::Write(_) => "Write",
    }
}

fn expect_write(c: Claim) -> BlockWriter {
    match c {
        Claim::Write(w) => w,
        other => panic!("expected Claim::Write, got {}", kind(&other)),
    }
}

fn expect_wait(c: Claim) -> Arc<Fill> {
    match c {
        Claim::Wait(f) => f,
        other => panic!("expected Claim::Wait, got {}", kind(&other)),
    }
}

fn expect_ready(c: Claim) -> SlotBuf {
    match c {
        Claim::Ready(b) => b,
        other => panic!("expected Claim::Ready, got {}", kind(&other)),
    }
}

/// Bytes of block `block` of the object version `m` (content depends on the etag, so two
/// versions of one key never share bytes).
fn block_bytes(m: &ObjectMeta, block: u32) -> Vec<u8> {
    let start = u64::from(block) * BS;
    let tag = format!("{}#{}", m.key, m.etag.as_deref().unwrap_or("-"));
    bytes_of(
        &tag,
        start..start + m.block_len(BS as u32, u64::from(block)),
    )
}

fn meta_v(key: &str, len: u64, etag: &str) -> ObjectMeta {
    let mut m = meta(key, len);
    m.etag = Some(format!("\"{etag}\""));
    m
}

/// Follows a fill to its end: every prefix it shows must match `want`, and the watermark must
/// only grow. Calls `progress` with each new length. Returns the final state and the lengths seen.
fn stream(fill: &Fill, want: &[u8], mut progress: impl FnMut(usize)) -> (FillState, Vec<usize>) {
    assert_eq!(fill.capacity(), want.len(), "fill capacity");
    let mut seen = 0;
    let mut lengths = Vec::new();
    loop {
        let state = fill
            .wait_blocking(seen, WAIT)
            .unwrap_or_else(|| panic!("fill stuck at {seen} bytes for {WAIT:?}"));
        let view = fill.readable();
        assert!(
            view.len() >= seen,
            "watermark went back: {} < {seen}",
            view.len()
        );
        assert!(
            view[..] == want[..view.len()],
            "prefix of {} bytes differs from the model",
            view.len()
        );
        if view.len() > seen {
            seen = view.len();
            lengths.push(seen);
            progress(seen);
        }
        match state {
            FillState::Filling => {}
            FillState::Committed => {
                assert_eq!(seen, want.len(), "committed fill shows a short prefix");
                return (state, lengths);
            }
            FillState::Aborted => return (state, lengths),
        }
    }
}

/// Blocks until every observer but `skip` has seen at least `at` bytes.
fn await_observers(seen: &[AtomicUsize], skip: usize, at: usize) {
    let deadline = Instant::now() + WAIT;
    for (i, s) in seen.iter().enumerate() {
        if i == skip {
            continue;
        }
        while s.load(Ordering::Acquire) < at {
            assert!(Instant::now() < deadline, "waiter {i} never saw {at} bytes");
            thread::sleep(Duration::from_millis(1));
        }
    }
}

/// Writes `data[filled..upto]` in `chunk`-sized pieces, calling `after` with the new watermark.
fn write_chunks(
    w: &mut BlockWriter,
    data: &[u8],
    chunk: usize,
    upto: usize,
    mut after: impl FnMut(usize),
) {
    let mut off = w.filled();
    while off < upto {
        let n = chunk.min(upto - off);
        assert_eq!(w.write(&data[off..off + n]), n);
        off += n;
        assert_eq!(w.filled(), off);
        after(off);
    }
}

// ------------------------------------------------------------------------------------------------
// Collapse: one writer, many streaming waiters.

#[test]
fn concurrent_misses_collapse_into_one_writer_that_streams_to_all_waiters() {
    const N: usize = 6;
    const CHUNK: usize = 4096;
    let dir = tempfile::tempdir().unwrap();
    let (cache, _) = Cache::open(&config(dir.path(), 32 * MIB)).unwrap();
    let key = "origin.test/collapse/firmware.swu";
    let obj = cache.put_object(meta(key, 200 * KIB)).unwrap();
    let want = Arc::new(bytes_of(key, BS..2 * BS));

    let claimed = Arc::new(Barrier::new(N));
    let seen: Arc<Vec<AtomicUsize>> = Arc::new((0..N).map(|_| AtomicUsize::new(0)).collect());
    let handles: Vec<_> = (0..N)
        .map(|t| {
            let (cache, claimed, seen, want) =
                (cache.clone(), claimed.clone(), seen.clone(), want.clone());
            let version = obj.version;
            thread::spawn(move || {
                let claim = cache.claim(key, 1, version).expect("claim");
                // Nobody writes before everyone has claimed: the others must all get Wait.
                claimed.wait();
                match claim {
                    Claim::Write(mut w) => {
                        assert_eq!(w.capacity(), want.len());
                        write_chunks(&mut w, &want, CHUNK, want.len(), |at| {
                            thread::sleep(Duration::from_millis(1));
                            await_observers(&seen, t, at);
                        });
                        let buf = w.commit().expect("commit");
                        assert!(buf[..] == want[..]);
                        ("Write", Vec::new(), None)
                    }
                    Claim::Wait(fill) => {
                        let (state, lengths) =
                            stream(&fill, &want, |n| seen[t].store(n, Ordering::Release));
                        ("Wait", lengths, Some(state))
                    }
                    Claim::Ready(_) => ("Ready", Vec::new(), None),
                }
            })
        })
        .collect();
    let results: Vec<_> = handles.into_iter().map(|h| h.join().unwrap()).collect();

    let writers = results.iter().filter(|r| r.0 == "Write").count();
    let waiters = results.iter().filter(|r| r.0 == "Wait").count();
    assert_eq!((writers, waiters), (1, N - 1), "claims: {:?}", results);
    // The writer waited for every waiter after each chunk, so each saw every step of the fill.
    let steps: Vec<usize> = (1..=want.len() / CHUNK).map(|k| k * CHUNK).collect();
    for (kind, lengths, state) in &results {
        if *kind == "Wait" {
            assert_eq!(*state, Some(FillState::Committed));
            assert_eq!(lengths, &steps, "a waiter missed part of the stream");
        }
    }
    let buf = expect_ready(cache.claim(key, 1, obj.version).unwrap());
    assert!(buf[..] == want[..]);
    drop(buf);
    assert_eq!(pinned(&cache), 0, "a pin leaked");
}

// ------------------------------------------------------------------------------------------------
// Abort: waiters are told, the block is claimable again, the old slot is kept until let go.

fn abort_mid_fill(explicit_abort: bool) {
    const WAITERS: usize = 3;
    const CHUNK: usize = 4096;
    const WRITTEN: usize = 5 * CHUNK;
    let dir = tempfile::tempdir().unwrap();
    let (cache, _) = Cache::open(&config(dir.path(), 32 * MIB)).unwrap();
    let key = "origin.test/abort/image.bin";
    let obj = cache.put_object(meta(key, 2 * BS)).unwrap();
    // Block 1 is stored, so the object outlives the aborted fill of block 0.
    let mut w1 = expect_write(cache.claim(key, 1, obj.version).unwrap());
    w1.write(&bytes_of(key, BS..2 * BS));
    drop(w1.commit().unwrap());
    let want = Arc::new(bytes_of(key, 0..BS));

    let mut writer = expect_write(cache.claim(key, 0, obj.version).unwrap());
    let old_addr = writer.fill().unwrap().addr();
    let seen: Arc<Vec<AtomicUsize>> = Arc::new(
        (0..=WAITERS)
            .map(|_| AtomicUsize::new(0))
            .collect::<Vec<_>>(),
    );
    let waiters: Vec<_> = (1..=WAITERS)
        .map(|t| {
            let fill = expect_wait(cache.claim(key, 0, obj.version).unwrap());
            assert_eq!(fill.addr(), old_addr);
            let (seen, want) = (seen.clone(), want.clone());
            thread::spawn(move || {
                let (state, lengths) =
                    stream(&fill, &want, |n| seen[t].store(n, Ordering::Release));
                // Keep a view of what arrived: it must stay intact after the slot is given up.
                (state, lengths, fill.readable())
            })
        })
        .collect();
    write_chunks(&mut writer, &want, CHUNK, WRITTEN, |at| {
        thread::sleep(Duration::from_millis(1));
        await_observers(&seen, 0, at);
    });
    if explicit_abort {
        writer.abort();
    } else {
        drop(writer);
    }
    let views: Vec<SlotBuf> = waiters
        .into_iter()
        .map(|h| {
            let (state, lengths, view) = h.join().unwrap();
            assert_eq!(state, FillState::Aborted);
            assert_eq!(lengths.last(), Some(&WRITTEN));
            assert!(view[..] == want[..WRITTEN]);
            view
        })
        .collect();

    // The block is missing again; the object and its other block are intact.
    let o = cache
        .lookup(key)
        .expect("object survives an aborted fill of one block");
    assert_eq!(o.version, obj.version);
    assert_eq!(
        cache.block_statuses(key).unwrap(),
        vec![BlockStatus::Missing, BlockStatus::Ready]
    );
    assert!(cache.get(key, 0).is_none());
    let drive = cache.store().drive(old_addr.drive()).clone();
    assert!(
        drive.is_pinned(old_addr),
        "aborted slot released under readers"
    );

    // Someone else fills it, into another slot: the old one is still held by the views.
    let refill = thread::spawn({
        let (cache, want) = (cache.clone(), want.clone());
        move || {
            let mut w = expect_write(cache.claim(key, 0, obj.version).unwrap());
            let addr = w.fill().unwrap().addr();
            write_chunks(&mut w, &want, 8192, want.len(), |_| {});
            drop(w.commit().expect("refill commit"));
            addr
        }
    });
    let new_addr = refill.join().unwrap();
    assert_ne!(new_addr, old_addr, "a slot still read was handed out again");
    for v in &views {
        assert!(v[..] == want[..WRITTEN], "held prefix changed");
    }
    assert!(cache.get(key, 0).unwrap()[..] == want[..]);
    assert_eq!(read_full(&cache, key).unwrap(), bytes_of(key, 0..2 * BS));
    drop(views);
    assert!(!drive.is_pinned(old_addr));
    assert_eq!(pinned(&cache), 0, "a pin leaked");
}

#[test]
fn dropped_writer_aborts_waiters_and_the_block_can_be_filled_again() {
    abort_mid_fill(false);
}

#[test]
fn explicit_abort_aborts_waiters_and_the_block_can_be_filled_again() {
    abort_mid_fill(true);
}

#[test]
fn aborting_the_only_fill_of_an_object_forgets_the_object() {
    let dir = tempfile::tempdir().unwrap();
    let (cache, _) = Cache::open(&config(dir.path(), 32 * MIB)).unwrap();
    let key = "origin.test/abort/only.bin";
    let obj = cache.put_object(meta(key, 3 * BS)).unwrap();
    let mut w = expect_write(cache.claim(key, 2, obj.version).unwrap());
    let fill = w.fill().unwrap().clone();
    w.write(&bytes_of(key, 2 * BS..2 * BS + 1000));
    drop(w);
    assert_eq!(fill.state(), FillState::Aborted);
    assert!(cache.lookup(key).is_none(), "nothing was stored: no object");
    assert!(matches!(
        cache.claim(key, 2, obj.version),
        Err(CacheError::NoObject)
    ));
    drop(fill);
    assert_eq!(pinned(&cache), 0);
    // A new request starts over.
    put_full(&cache, key, 3 * BS);
    assert_eq!(read_full(&cache, key).unwrap(), bytes_of(key, 0..3 * BS));
}

// ------------------------------------------------------------------------------------------------
// Async waiter on a tokio-uring task, writer on a plain thread.

async fn stream_async(fill: &Fill, want: &[u8], seen_out: &AtomicUsize) -> (FillState, usize) {
    let mut seen = 0;
    let mut steps = 0;
    loop {
        let state = tokio::time::timeout(WAIT, fill.wait_async(seen))
            .await
            .unwrap_or_else(|_| panic!("async waiter not woken past {seen} bytes"));
        let view = fill.readable();
        assert!(view.len() >= seen);
        assert!(view[..] == want[..view.len()], "async prefix differs");
        if view.len() > seen {
            seen = view.len();
            steps += 1;
            seen_out.store(seen, Ordering::Release);
        }
        if state != FillState::Filling {
            return (state, steps);
        }
    }
}

#[test]
fn async_task_waits_for_a_block_written_by_a_thread() {
    const CHUNK: usize = 8192;
    let dir = tempfile::tempdir().unwrap();
    let (cache, _) = Cache::open(&config(dir.path(), 32 * MIB)).unwrap();
    let key = "origin.test/async/pkg.deb";
    let obj = cache.put_object(meta(key, BS + 100)).unwrap();
    let want = Arc::new(bytes_of(key, 0..BS));
    let writer = expect_write(cache.claim(key, 0, obj.version).unwrap());
    let fill = expect_wait(cache.claim(key, 0, obj.version).unwrap());
    let seen = Arc::new([AtomicUsize::new(0), AtomicUsize::new(0)]);

    let task = {
        let (want, seen) = (want.clone(), seen.clone());
        async move {
            let handle = thread::spawn({
                let (want, seen) = (want.clone(), seen.clone());
                let mut writer = writer;
                move || {
                    write_chunks(&mut writer, &want, CHUNK, want.len(), |at| {
                        thread::sleep(Duration::from_millis(1));
                        await_observers(&seen[..], 0, at);
                    });
                    writer.commit().expect("commit").len()
                }
            });
            let (state, steps) = stream_async(&fill, &want, &seen[1]).await;
            assert_eq!(handle.join().unwrap(), want.len());
            (state, steps, fill.readable().len())
        }
    };
    // io_uring may be unavailable (old kernel, seccomp): then run the same task on plain tokio,
    // so the waiting logic is still checked.
    let (state, steps, len) = match tokio_uring::Runtime::new(&tokio_uring::builder()) {
        Ok(rt) => rt.block_on(task),
        Err(e) => {
            eprintln!("io_uring unavailable ({e}); running the task on a tokio runtime");
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap()
                .block_on(task)
        }
    };
    assert_eq!(state, FillState::Committed);
    assert_eq!(
        steps,
        want.len() / CHUNK,
        "the task missed part of the stream"
    );
    assert_eq!(len, want.len());
    assert!(cache.get(key, 0).unwrap()[..] == want[..]);
    assert_eq!(pinned(&cache), 0);
}

// ------------------------------------------------------------------------------------------------
// The object changes upstream while one of its blocks is being filled.

#[test]
fn object_replaced_mid_fill_fails_the_old_commit_and_aborts_its_waiters() {
    let dir = tempfile::tempdir().unwrap();
    let (cache, _) = Cache::open(&config(dir.path(), 32 * MIB)).unwrap();
    let key = "origin.test/replace/app.tar";
    let m1 = meta_v(key, 3 * BS, "v1");
    let m2 = meta_v(key, 3 * BS, "v2");
    let v1 = cache.put_object(m1.clone()).unwrap();
    // v1 has block 2 stored and block 0 being filled, with a waiter.
    let mut w = expect_write(cache.claim(key, 2, v1.version).unwrap());
    w.write(&block_bytes(&m1, 2));
    drop(w.commit().unwrap());
    let old_want = Arc::new(block_bytes(&m1, 0));
    let mut old = expect_write(cache.claim(key, 0, v1.version).unwrap());
    old.write(&old_want[..BS as usize / 2]);
    let old_fill = expect_wait(cache.claim(key, 0, v1.version).unwrap());
    let waiter = thread::spawn({
        let want = old_want.clone();
        move || stream(&old_fill, &want, |_| {}).0
    });

    let v2 = cache.put_object(m2.clone()).unwrap();
    assert_ne!(v2.version, v1.version);
    assert_eq!(*cache.lookup(key).unwrap().meta, m2);
    // The new version starts empty; the old one can no longer be claimed.
    assert_eq!(
        cache.block_statuses(key).unwrap(),
        vec![BlockStatus::Missing; 3]
    );
    assert!(cache.get(key, 2).is_none(), "a v1 block served as v2");
    assert!(matches!(
        cache.claim(key, 1, v1.version),
        Err(CacheError::VersionChanged)
    ));

    // v2's block 0 is claimed and filled while the v1 writer is still going.
    let new_want = block_bytes(&m2, 0);
    let mut new = expect_write(cache.claim(key, 0, v2.version).unwrap());
    let new_fill = new.fill().unwrap().clone();
    new.write(&new_want[..1000]);
    // A v2 reader of block 0 waits on the v2 fill, not the old one.
    let f = expect_wait(cache.claim(key, 0, v2.version).unwrap());
    assert!(Arc::ptr_eq(&f, &new_fill));
    drop(f);

    old.write(&old_want[BS as usize / 2..]);
    assert!(matches!(old.commit(), Err(CacheError::VersionChanged)));
    assert_eq!(waiter.join().unwrap(), FillState::Aborted);
    // The failed v1 commit left v2's fill alone.
    assert_eq!(new_fill.state(), FillState::Filling);
    assert!(Arc::ptr_eq(
        &expect_wait(cache.claim(key, 0, v2.version).unwrap()),
        &new_fill
    ));
    new.write(&new_want[1000..]);
    assert!(new.commit().unwrap()[..] == new_want[..]);
    assert_eq!(new_fill.state(), FillState::Committed);
    drop(new_fill);

    for b in 1..3 {
        let mut w = expect_write(cache.claim(key, b, v2.version).unwrap());
        w.write(&block_bytes(&m2, b));
        drop(w.commit().unwrap());
    }
    for b in 0..3 {
        assert!(cache.get(key, b).unwrap()[..] == block_bytes(&m2, b)[..]);
    }
    assert_eq!(pinned(&cache), 0, "a pin leaked");

    // Only v2 is on disk.
    let cfg = config(dir.path(), 32 * MIB);
    drop(cache);
    let (cache, report) = Cache::open(&cfg).unwrap();
    assert_eq!(report.dropped(), 0, "{report:?}");
    assert_eq!(*cache.lookup(key).unwrap().meta, m2);
    for b in 0..3 {
        assert!(cache.get(key, b).unwrap()[..] == block_bytes(&m2, b)[..]);
    }
}

// ------------------------------------------------------------------------------------------------
// Mixed workload under constant eviction.

const THREADS: usize = 4;
const OPS: usize = 1200;
const KEYS: usize = 48;
const MAX_HELD: usize = 6;
const LENS: &[u64] = &[
    10 * KIB + 3,
    200 * KIB + 7,
    MIB + 123,
    640 * KIB,
    64 * KIB,
    300 * KIB,
    5 * KIB,
    130 * KIB,
];

fn wkey(k: usize) -> String {
    format!("dl{}.example.org/pool/{k}.deb", k % 3)
}

/// The two versions each key alternates between (different lengths and etags).
fn versions(k: usize) -> [ObjectMeta; 2] {
    let m = |v: usize| {
        let len = LENS[(k * 3 + v * 5) % LENS.len()];
        meta_v(&wkey(k), len, &format!("{k}.{v}"))
    };
    [m(0), m(1)]
}

/// The model's answer to "which version is this": the cached meta must be one of ours, exactly.
fn version_of(k: usize, meta: &ObjectMeta) -> ObjectMeta {
    versions(k)
        .into_iter()
        .find(|m| m == meta)
        .unwrap_or_else(|| panic!("cached meta of key {k} is none of its versions: {meta:?}"))
}

#[derive(Default)]
struct Stats {
    committed_bytes: AtomicU64,
    writes: AtomicU64,
    waits: AtomicU64,
    aborted_waits: AtomicU64,
    aborts: AtomicU64,
    lost_commits: AtomicU64,
    raced_claims: AtomicU64,
    raced_puts: AtomicU64,
    held_checks: AtomicU64,
    gets: AtomicU64,
}

struct Held {
    buf: SlotBuf,
    want: Vec<u8>,
    what: String,
}

impl Held {
    fn check(&self) {
        assert!(
            self.buf[..] == self.want[..],
            "pinned bytes of {} changed",
            self.what
        );
    }
}

fn add(c: &AtomicU64, n: u64) {
    c.fetch_add(n, Ordering::Relaxed);
}

/// One claim of block `b` of version `m`, handled as a request would: read it, wait for it, or
/// fill it (sometimes giving up half-way). False when the object changed or went meanwhile.
fn claim_block(
    cache: &Cache,
    rng: &mut Rng,
    held: &mut Vec<Held>,
    stats: &Stats,
    m: &ObjectMeta,
    b: u32,
) -> bool {
    let key = &m.key;
    let want = block_bytes(m, b);
    let what = format!("{key} {:?} block {b}", m.etag);
    match cache.claim(key, b, m.version()) {
        Ok(Claim::Ready(buf)) => {
            assert!(buf[..] == want[..], "Ready bytes of {what}");
            if rng.chance(40) {
                held.push(Held { buf, want, what });
            }
        }
        Ok(Claim::Wait(fill)) => {
            add(&stats.waits, 1);
            let (state, _) = stream(&fill, &want, |_| {});
            if state == FillState::Aborted {
                add(&stats.aborted_waits, 1);
            } else if rng.chance(40) {
                held.push(Held {
                    buf: fill.readable(),
                    want,
                    what,
                });
            }
        }
        Ok(Claim::Write(mut w)) => {
            add(&stats.writes, 1);
            assert_eq!(w.capacity(), want.len());
            let give_up = rng.chance(10);
            let upto = if give_up {
                rng.below(want.len() as u64) as usize
            } else {
                want.len()
            };
            let pieces = 1 + rng.below(4) as usize;
            let chunk = want.len().div_ceil(pieces).max(1);
            let use_spare = rng.chance(50);
            let mut off = 0;
            while off < upto {
                let n = chunk.min(upto - off);
                if use_spare {
                    w.spare_mut()[..n].copy_from_slice(&want[off..off + n]);
                    w.advance(n);
                } else {
                    assert_eq!(w.write(&want[off..off + n]), n);
                }
                off += n;
                // Leave a window for other claimers to find the fill in progress.
                thread::sleep(Duration::from_micros(200));
            }
            if give_up {
                add(&stats.aborts, 1);
                if rng.chance(50) {
                    w.abort();
                } else {
                    drop(w);
                }
            } else {
                match w.commit() {
                    Ok(buf) => {
                        assert!(buf[..] == want[..], "committed bytes of {what}");
                        add(&stats.committed_bytes, want.len() as u64);
                        if rng.chance(20) {
                            held.push(Held { buf, want, what });
                        }
                    }
                    Err(CacheError::VersionChanged) => add(&stats.lost_commits, 1),
                    Err(e) => panic!("commit of {what}: {e}"),
                }
            }
        }
        // Replaced or dropped by another thread between lookup and claim.
        Err(CacheError::VersionChanged | CacheError::NoObject) => add(&stats.raced_claims, 1),
        Err(e) => panic!("claim of {what}: {e}"),
    }
    true
}

fn worker(cache: &Cache, t: usize, stats: &Stats) {
    let mut rng = Rng::new(1 + t as u64);
    let mut held: Vec<Held> = Vec::new();
    for _ in 0..OPS {
        // Half the traffic goes to a few hot keys, so fills collide and readers wait.
        let k = if rng.chance(50) {
            rng.below(4) as usize
        } else {
            rng.below(KEYS as u64) as usize
        };
        let key = wkey(k);
        match rng.below(100) {
            // Claim a block: read it, wait for it, or fill it (sometimes giving up).
            0..45 => {
                let m = match cache.lookup(&key) {
                    Some(o) => version_of(k, &o.meta),
                    None => {
                        let m = versions(k)[rng.below(2) as usize].clone();
                        match cache.put_object(m.clone()) {
                            Ok(_) => m,
                            // Another thread put the other version at the same time, and won.
                            Err(CacheError::VersionChanged) => {
                                add(&stats.raced_puts, 1);
                                continue;
                            }
                            Err(e) => panic!("put_object {key}: {e}"),
                        }
                    }
                };
                let nb = m.block_count(BS as u32);
                if nb == 0 {
                    continue;
                }
                // A run of consecutive blocks, like a range request.
                let first = rng.below(nb) as u32;
                let last = (first + rng.below(4) as u32).min(nb as u32 - 1);
                for b in first..=last {
                    if !claim_block(cache, &mut rng, &mut held, stats, &m, b) {
                        break;
                    }
                }
            }
            // Plain reads of whatever version is cached.
            45..75 => {
                add(&stats.gets, 1);
                let b = rng.below(17) as u32;
                if let Some(buf) = cache.get(&key, b) {
                    let ok = versions(k).iter().any(|m| {
                        u64::from(b) < m.block_count(BS as u32) && buf[..] == block_bytes(m, b)[..]
                    });
                    assert!(ok, "get({key}, {b}) returned bytes of no version");
                    if rng.chance(20) && held.len() < MAX_HELD {
                        let want = buf.to_vec();
                        held.push(Held {
                            buf,
                            want,
                            what: format!("{key} block {b} (get)"),
                        });
                    }
                }
            }
            // The object changes upstream (or is re-put unchanged).
            75..81 => {
                let m = versions(k)[rng.below(2) as usize].clone();
                match cache.put_object(m) {
                    // A racing put of the same version may win: the answer is still ours.
                    Ok(o) => drop(version_of(k, &o.meta)),
                    Err(CacheError::VersionChanged) => add(&stats.raced_puts, 1),
                    Err(e) => panic!("put_object {key}: {e}"),
                }
            }
            // Re-check every held view, let some go.
            _ => {
                for h in &held {
                    h.check();
                    add(&stats.held_checks, 1);
                }
                held.retain(|_| rng.chance(60));
            }
        }
        while held.len() > MAX_HELD {
            let h = held.swap_remove(rng.below(held.len() as u64) as usize);
            h.check();
        }
    }
    for h in &held {
        h.check();
    }
}

/// Every cached object and block, as the index reports them (for comparing across a reopen).
fn snapshot(cache: &Cache) -> Vec<(String, ObjectMeta, Vec<BlockStatus>)> {
    let mut out = Vec::new();
    for k in 0..KEYS {
        let key = wkey(k);
        if let Some(o) = cache.lookup(&key) {
            let statuses = cache.block_statuses(&key).unwrap();
            out.push((key, (*o.meta).clone(), statuses));
        }
    }
    out
}

#[test]
fn threads_fill_read_pin_and_evict_at_once_and_every_byte_matches_the_model() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(dir.path(), 8 * MIB);
    // Durability is not under test here; skipping msync keeps the run short.
    cfg.sync_data = false;
    let (cache, _) = Cache::open(&cfg).unwrap();
    let capacity = cache.store().capacity_bytes();
    let stats = Stats::default();
    thread::scope(|s| {
        for t in 0..THREADS {
            let (cache, stats) = (&cache, &stats);
            s.spawn(move || worker(cache, t, stats));
        }
    });
    let st = |c: &AtomicU64| c.load(Ordering::Relaxed);
    eprintln!(
        "committed {} MiB in {} writes ({} aborted, {} lost to replacement); {} waits \
         ({} aborted); {} raced claims, {} raced puts; {} gets; {} held checks; capacity {} MiB",
        st(&stats.committed_bytes) >> 20,
        st(&stats.writes),
        st(&stats.aborts),
        st(&stats.lost_commits),
        st(&stats.waits),
        st(&stats.aborted_waits),
        st(&stats.raced_claims),
        st(&stats.raced_puts),
        st(&stats.gets),
        st(&stats.held_checks),
        capacity >> 20
    );
    // The workload really exercised what it claims to.
    assert!(
        st(&stats.committed_bytes) > 3 * capacity,
        "too little written to force eviction"
    );
    assert!(st(&stats.waits) > 0, "no reader ever waited on a fill");
    assert!(st(&stats.aborts) > 0 && st(&stats.held_checks) > 0);
    assert_eq!(pinned(&cache), 0, "a pin leaked");

    // Quiet now: every cached block must be exactly the cached version's bytes.
    let mut ready_bytes = 0;
    for k in 0..KEYS {
        let key = wkey(k);
        let Some(o) = cache.lookup(&key) else {
            continue;
        };
        let m = version_of(k, &o.meta);
        for b in 0..m.block_count(BS as u32) as u32 {
            if let Some(buf) = cache.get(&key, b) {
                assert!(buf[..] == block_bytes(&m, b)[..], "{key} block {b}");
                ready_bytes += buf.len() as u64;
            }
        }
    }
    assert!(ready_bytes <= capacity, "{ready_bytes} cached > {capacity}");
    assert_eq!(pinned(&cache), 0);

    // And the disk says the same after a reopen.
    let before = snapshot(&cache);
    drop(cache);
    let (cache, report) = Cache::open(&cfg).unwrap();
    // Objects whose every fill was lost or that were only just put hold no block: recovery
    // drops them by design. Nothing else may be dropped.
    let empty: Vec<_> = before
        .iter()
        .filter(|(_, m, s)| m.total_len > 0 && !s.contains(&BlockStatus::Ready))
        .map(|(k, _, _)| k.clone())
        .collect();
    assert_eq!(report.empty_objects, empty.len(), "{report:?}");
    // Nothing else may be dropped: no bad, stale, orphan or superseded slot.
    assert_eq!(report.dropped(), report.empty_objects, "{report:?}");
    let expected: Vec<_> = before
        .into_iter()
        .filter(|(k, _, _)| !empty.contains(k))
        .collect();
    assert_eq!(snapshot(&cache), expected);
    for (key, m, statuses) in &expected {
        for (b, s) in statuses.iter().enumerate() {
            let got = cache.get(key, b as u32);
            assert_eq!(got.is_some(), *s == BlockStatus::Ready, "{key} block {b}");
            if let Some(buf) = got {
                assert!(buf[..] == block_bytes(m, b as u32)[..], "{key} block {b}");
            }
        }
    }
}
