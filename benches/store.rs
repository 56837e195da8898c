//! Storage engine benches: index hits, pinned slices, fill throughput and recovery time.
//!
//! ```text
//! cargo bench --bench store                      # recovery of a 1 GiB store
//! GC_BENCH_RECOVERY=1 cargo bench --bench store  # recovery of a 10 GiB store
//! GC_BENCH_COLD=1 ...                            # also time opens on a dropped page cache (root)
//! GC_BENCH_DIR=/path ...                         # where the recovery store is kept
//! ```
//!
//! Stores live under the target directory (`CARGO_TARGET_TMPDIR`), on the real disk, never on a
//! tmpfs: fills must pay for page faults and `msync`. All use 1 MiB blocks, the default.
//!
//! - `lookup/*`: `Cache::claim` of a block that is cached and verified, returning
//!   `Claim::Ready(SlotBuf)`, then dropping the view. That is key hash, shard lock, entry lookup,
//!   pin (drive lock, pin table, SIEVE visited bit) and unpin. With 2 threads each thread does one
//!   claim per iteration: the time is wall time per iteration, the throughput both threads' claims.
//! - `pin_slice`: the same claim, then a 4 KiB slice of the view, reading its first and last byte
//!   (page-cache resident memory).
//! - `fill/commit/*`: `put_object` of a 4 MiB object, then for each of its four 1 MiB blocks
//!   `claim` (Write), copy 1 MiB in, `commit` (crc, `msync` of the block when `sync_data`,
//!   header). The drive holds 256 MiB and keys never repeat, so after the first ~60 objects every
//!   block allocation evicts a region (SIEVE victim, evictor callback on the index, header
//!   cleared): eviction stays in the loop, as on a full gateway.
//! - `fill/commit_background/*`: the server's path: `put_object_claiming` (metadata and all four
//!   blocks claimed at once), copy, `commit_background` (the committer thread seals batches of
//!   blocks after one `fdatasync` of the slab). `Cache::flush` every 32 objects (128 MiB) and at
//!   the end of each sample, so the time includes the data reaching the disk. 1 GiB drive, keys
//!   never repeat: eviction in the loop here too.
//! - `recovery/*`: `Cache::open` of a store that holds 1 GiB (4 objects of 256 MiB), or 10 GiB
//!   (10 objects of 1 GiB) with `GC_BENCH_RECOVERY=1`, with a warm page cache. The store is built
//!   once and reused by later runs while it recovers complete.

use std::hint::black_box;
use std::path::{Path, PathBuf};
use std::sync::Barrier;
use std::time::{Duration, Instant};

use criterion::{
    BenchmarkId, Criterion, SamplingMode, Throughput, criterion_group, criterion_main,
};
use gatecache::cache::{Cache, Claim};
use gatecache::store::format::region_len;
use gatecache::store::{DriveConfig, ObjectMeta, SlotBuf, StoreConfig};

const KIB: u64 = 1024;
const MIB: u64 = 1024 * KIB;
const GIB: u64 = 1024 * MIB;
const BLOCK: u32 = 1 << 20;

fn tmp_root() -> &'static Path {
    Path::new(env!("CARGO_TARGET_TMPDIR"))
}

fn config(dir: &Path, size: u64, sync_data: bool) -> StoreConfig {
    let mut c = StoreConfig::new(vec![DriveConfig {
        path: dir.to_path_buf(),
        size,
    }]);
    c.block_size = BLOCK;
    c.sync_data = sync_data;
    c
}

fn meta(key: &str, len: u64) -> ObjectMeta {
    ObjectMeta {
        key: key.to_string(),
        total_len: len,
        status: 200,
        etag: Some(format!("\"{len:x}-bench\"")),
        content_type: Some("application/octet-stream".into()),
        stored_at: 1_700_000_000,
        ..Default::default()
    }
}

/// One block of incompressible-looking bytes (the content does not matter to the store).
fn block_bytes() -> Vec<u8> {
    let mut x = 0x243f_6a88_85a3_08d3u64;
    (0..BLOCK)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// Stores an object of `len` bytes whole: `put_object`, then claim, write and commit each block.
fn put_full(cache: &Cache, key: &str, len: u64, data: &[u8]) -> u64 {
    let obj = cache.put_object(meta(key, len)).expect("put_object");
    for b in 0..obj.meta.block_count(BLOCK) {
        match cache.claim(key, b as u32, obj.version).expect("claim") {
            Claim::Write(mut w) => {
                let n = w.capacity();
                assert_eq!(w.write(&data[..n]), n);
                w.commit().expect("commit");
            }
            Claim::Ready(_) => {}
            Claim::Wait(_) => panic!("nobody else fills in this bench"),
        }
    }
    obj.version
}

/// A cached block to claim.
struct Target {
    key: String,
    block: u32,
    version: u64,
}

fn claim_ready(cache: &Cache, t: &Target) -> SlotBuf {
    match cache.claim(&t.key, t.block, t.version) {
        Ok(Claim::Ready(b)) => b,
        Ok(_) => panic!("{} block {} is not cached", t.key, t.block),
        Err(e) => panic!("{}: {e}", t.key),
    }
}

/// A 64 MiB store of 16 objects x 4 blocks, all cached and verified.
struct Hits {
    _dir: tempfile::TempDir,
    cache: Cache,
    targets: Vec<Target>,
}

impl Hits {
    fn new() -> Hits {
        let dir = tempfile::tempdir_in(tmp_root()).expect("tempdir");
        let (cache, _) = Cache::open(&config(dir.path(), 96 * MIB, false)).expect("open");
        let data = block_bytes();
        let mut targets = Vec::new();
        for o in 0..16 {
            let key = format!("updates.example.net/adu/v2/firmware-{o:02}.swu");
            let version = put_full(&cache, &key, 4 * MIB, &data);
            for block in 0..4 {
                targets.push(Target {
                    key: key.clone(),
                    block,
                    version,
                });
            }
        }
        Hits {
            _dir: dir,
            cache,
            targets,
        }
    }
}

/// Each of two threads claims `iters` times from its own list; returns the slower thread's time.
fn two_threads(cache: &Cache, lists: [&[Target]; 2], iters: u64) -> Duration {
    let barrier = Barrier::new(2);
    std::thread::scope(|s| {
        let handles: Vec<_> = lists
            .iter()
            .map(|list| {
                let barrier = &barrier;
                s.spawn(move || {
                    barrier.wait();
                    let start = Instant::now();
                    for i in 0..iters as usize {
                        black_box(claim_ready(cache, &list[i % list.len()]));
                    }
                    start.elapsed()
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("bench thread"))
            .max()
            .unwrap()
    })
}

fn bench_lookup(c: &mut Criterion) {
    let mut hits: Option<Hits> = None;
    let mut g = c.benchmark_group("lookup");
    g.throughput(Throughput::Elements(1));
    g.bench_function("1_thread", |b| {
        let h = hits.get_or_insert_with(Hits::new);
        let mut i = 0;
        b.iter(|| {
            i = (i + 1) % h.targets.len();
            claim_ready(&h.cache, &h.targets[i])
        })
    });
    g.throughput(Throughput::Elements(2));
    // Different objects: thread 0 the first half of the blocks, thread 1 the second half.
    g.bench_function("2_threads_distinct_objects", |b| {
        let h = hits.get_or_insert_with(Hits::new);
        let (a, z) = h.targets.split_at(h.targets.len() / 2);
        b.iter_custom(|iters| two_threads(&h.cache, [a, z], iters))
    });
    // The same block from both threads: many devices downloading one update.
    g.bench_function("2_threads_same_block", |b| {
        let h = hits.get_or_insert_with(Hits::new);
        let one = &h.targets[..1];
        b.iter_custom(|iters| two_threads(&h.cache, [one, one], iters))
    });
    g.finish();

    let mut g = c.benchmark_group("pin_slice");
    g.throughput(Throughput::Elements(1));
    g.bench_function("4KiB", |b| {
        let h = hits.get_or_insert_with(Hits::new);
        let mut i = 0;
        b.iter(|| {
            i += 1;
            let buf = claim_ready(&h.cache, &h.targets[i % h.targets.len()]);
            // A page-aligned 4 KiB range that walks the block.
            let off = (i * 7 % 255) * 4096;
            let s = buf.slice(off..off + 4096);
            black_box(s[0]) ^ black_box(s[4095])
        })
    });
    g.finish();
}

/// A store that new objects keep flowing through.
struct Filler {
    _dir: tempfile::TempDir,
    cache: Cache,
    data: Vec<u8>,
    next: u64,
}

impl Filler {
    fn new(size: u64, sync: bool) -> Filler {
        let dir = tempfile::tempdir_in(tmp_root()).expect("tempdir");
        let (cache, _) = Cache::open(&config(dir.path(), size, sync)).expect("open");
        Filler {
            _dir: dir,
            cache,
            data: block_bytes(),
            next: 0,
        }
    }

    fn key(&mut self) -> String {
        self.next += 1;
        format!("updates.example.net/fill/{}.bin", self.next)
    }

    /// The server's path: claim every block with the metadata, write, commit in the background.
    fn put_claiming(&mut self) {
        let key = self.key();
        let (_, writers) = self
            .cache
            .put_object_claiming(meta(&key, FILL_OBJECT), 0..FILL_BLOCKS)
            .expect("put_object_claiming");
        assert_eq!(
            writers.len(),
            FILL_BLOCKS as usize,
            "{key}: blocks not claimed"
        );
        for mut w in writers {
            let n = w.capacity();
            assert_eq!(w.write(&self.data[..n]), n);
            w.commit_background();
        }
    }
}

const FILL_OBJECT: u64 = 4 * MIB;
const FILL_BLOCKS: u32 = 4;
/// Objects written between two `Cache::flush` calls in the batched fill (128 MiB in flight).
const FLUSH_EVERY: u64 = 32;

fn bench_fill(c: &mut Criterion) {
    let mut g = c.benchmark_group("fill");
    g.throughput(Throughput::Bytes(FILL_OBJECT));
    g.sample_size(20);
    g.measurement_time(Duration::from_secs(10));
    for sync in [false, true] {
        let name = if sync { "sync_data" } else { "no_sync" };
        let mut state: Option<Filler> = None;
        g.bench_function(BenchmarkId::new("commit", name), |b| {
            let f = state.get_or_insert_with(|| Filler::new(256 * MIB, sync));
            b.iter(|| {
                let key = f.key();
                put_full(&f.cache, &key, FILL_OBJECT, &f.data)
            })
        });
        let mut state: Option<Filler> = None;
        g.bench_function(BenchmarkId::new("commit_background", name), |b| {
            let f = state.get_or_insert_with(|| Filler::new(GIB, sync));
            b.iter_custom(|iters| {
                let start = Instant::now();
                for i in 1..=iters {
                    f.put_claiming();
                    if i % FLUSH_EVERY == 0 {
                        f.cache.flush();
                    }
                }
                f.cache.flush();
                start.elapsed()
            })
        });
    }
    g.finish();
}

/// The recovery store: its size, where it lives, and its config.
struct RecoveryStore {
    objects: u64,
    object_len: u64,
    dir: PathBuf,
}

impl RecoveryStore {
    fn from_env() -> RecoveryStore {
        let big = std::env::var("GC_BENCH_RECOVERY").is_ok_and(|v| v != "0" && !v.is_empty());
        let (objects, object_len) = if big { (10, GIB) } else { (4, 256 * MIB) };
        let dir = match std::env::var_os("GC_BENCH_DIR") {
            Some(d) => PathBuf::from(d),
            None => tmp_root().join(format!("recovery-{}g", objects * object_len / GIB)),
        };
        RecoveryStore {
            objects,
            object_len,
            dir,
        }
    }

    fn blocks(&self) -> u64 {
        self.objects * self.object_len / u64::from(BLOCK)
    }

    fn config(&self) -> StoreConfig {
        // Every block plus a few regions for the metadata records.
        let size = (self.blocks() + 8) * region_len(BLOCK);
        config(&self.dir, size, false)
    }

    fn label(&self) -> String {
        format!("{}GiB", self.objects * self.object_len / GIB)
    }

    fn complete(&self, report: &gatecache::store::RecoveryReport) -> bool {
        report.objects as u64 == self.objects
            && report.blocks as u64 == self.blocks()
            && report.dropped() == 0
    }

    /// Reuses the store if it recovers complete, else builds it from scratch.
    fn prepare(&self) {
        let cfg = self.config();
        if self.dir.exists() {
            let (_, report) = Cache::open(&cfg).expect("open recovery store");
            if self.complete(&report) {
                println!(
                    "recovery store {}: reused ({} objects, {} blocks)",
                    self.dir.display(),
                    report.objects,
                    report.blocks
                );
                return;
            }
            println!(
                "recovery store {}: incomplete, rebuilding",
                self.dir.display()
            );
            std::fs::remove_dir_all(&self.dir).expect("remove old recovery store");
        }
        let started = Instant::now();
        {
            let (cache, _) = Cache::open(&cfg).expect("create recovery store");
            let data = block_bytes();
            for o in 0..self.objects {
                let key = format!("updates.example.net/recovery/image-{o:02}.swu");
                put_full(&cache, &key, self.object_len, &data);
            }
        }
        // Written back before anything is timed, so writeback does not run under the opens.
        // SAFETY: `sync` takes no arguments and cannot fail.
        unsafe { libc::sync() };
        println!(
            "recovery store {}: built {} in {:.1?}",
            self.dir.display(),
            self.label(),
            started.elapsed()
        );
    }

    fn open_timed(&self, cfg: &StoreConfig) -> Duration {
        let start = Instant::now();
        let (cache, report) = Cache::open(cfg).expect("open recovery store");
        let t = start.elapsed();
        assert!(self.complete(&report), "recovery lost data: {report:?}");
        // Unmapping happens outside the timed part.
        drop(black_box(cache));
        t
    }

    /// Opens on a dropped page cache (`GC_BENCH_COLD=1`; needs root). Printed, not in criterion:
    /// each sample needs the whole cache dropped, which criterion cannot do between iterations.
    fn cold_opens(&self) {
        if !std::env::var("GC_BENCH_COLD").is_ok_and(|v| v == "1") {
            return;
        }
        let cfg = self.config();
        let mut times = Vec::new();
        for _ in 0..5 {
            // SAFETY: `sync` takes no arguments and cannot fail.
            unsafe { libc::sync() };
            if let Err(e) = std::fs::write("/proc/sys/vm/drop_caches", "3\n") {
                println!("cold recovery: cannot drop the page cache ({e}); skipped");
                return;
            }
            times.push(self.open_timed(&cfg));
        }
        times.sort();
        println!(
            "recovery/{} cold page cache: median {:.1?} of {:?}",
            self.label(),
            times[times.len() / 2],
            times
        );
    }
}

fn bench_recovery(c: &mut Criterion) {
    let store = RecoveryStore::from_env();
    let mut prepared = false;
    let mut g = c.benchmark_group("recovery");
    g.sample_size(10);
    g.sampling_mode(SamplingMode::Flat);
    g.measurement_time(Duration::from_secs(10));
    g.bench_function(BenchmarkId::new("open_warm", store.label()), |b| {
        if !prepared {
            store.prepare();
            store.cold_opens();
            prepared = true;
        }
        let cfg = store.config();
        b.iter_custom(|iters| (0..iters).map(|_| store.open_timed(&cfg)).sum())
    });
    g.finish();
}

criterion_group!(benches, bench_lookup, bench_fill, bench_recovery);
criterion_main!(benches);
