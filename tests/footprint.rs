//! Footprint targets: index memory per cached block, and disk space per small object.
//!
//! Memory is counted by a global allocator installed in this test binary, per thread (so tests
//! running side by side do not count each other), both as bytes requested and as bytes malloc
//! really set aside (`malloc_usable_size`, which includes its rounding).

mod common;

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::sync::Arc;

use gatecache::cache::index::{Index, ObjectEntry};
use gatecache::cache::{BlockState, Cache, Claim};
use gatecache::store::alloc::Allocator;
use gatecache::store::format::{self, class_for, key_hash, region_len, slot_classes};
use gatecache::store::{DriveConfig, ObjectMeta, SlotKind, StoreConfig};

use common::{KIB, MIB};

struct Counting;

thread_local! {
    static REQUESTED: Cell<isize> = const { Cell::new(0) };
    static USABLE: Cell<isize> = const { Cell::new(0) };
}

fn usable(p: *mut u8) -> isize {
    // SAFETY: `p` is a live block from the system allocator (glibc malloc or posix_memalign),
    // which is what malloc_usable_size accepts.
    unsafe { libc::malloc_usable_size(p.cast()) as isize }
}

fn count(requested: isize, usable: isize) {
    // `try_with`: a thread being torn down may still free memory after its counters are gone.
    let _ = REQUESTED.try_with(|c| c.set(c.get() + requested));
    let _ = USABLE.try_with(|c| c.set(c.get() + usable));
}

// SAFETY: every call is forwarded to `System` unchanged; the counting only reads the pointers.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: forwarded with the caller's guarantees.
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() {
            count(layout.size() as isize, usable(p));
        }
        p
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: forwarded with the caller's guarantees.
        let p = unsafe { System.alloc_zeroed(layout) };
        if !p.is_null() {
            count(layout.size() as isize, usable(p));
        }
        p
    }

    unsafe fn dealloc(&self, p: *mut u8, layout: Layout) {
        count(-(layout.size() as isize), -usable(p));
        // SAFETY: forwarded with the caller's guarantees.
        unsafe { System.dealloc(p, layout) }
    }

    unsafe fn realloc(&self, p: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let old = usable(p);
        // SAFETY: forwarded with the caller's guarantees.
        let q = unsafe { System.realloc(p, layout, new_size) };
        if !q.is_null() {
            count(new_size as isize - layout.size() as isize, usable(q) - old);
        }
        q
    }
}

#[global_allocator]
static ALLOC: Counting = Counting;

/// Heap bytes this thread holds now: (requested, usable).
fn heap() -> (isize, isize) {
    (REQUESTED.with(Cell::get), USABLE.with(Cell::get))
}

const BS: u32 = 1 << 20;

/// Metadata as an update server sends it (the record each object keeps in memory).
fn meta(i: usize, blocks: u64) -> ObjectMeta {
    ObjectMeta {
        key: format!("updates.example.net/adu/v2/instance-7/0f8c2a91-5d3e/firmware-{i:07}.swu"),
        total_len: blocks * u64::from(BS),
        status: 200,
        etag: Some(format!("\"0x8DC{i:012X}\"")),
        last_modified: Some("Wed, 21 Oct 2015 07:28:00 GMT".into()),
        content_type: Some("application/octet-stream".into()),
        cache_control: Some("public, max-age=86400".into()),
        date: Some("Wed, 21 Oct 2015 07:28:00 GMT".into()),
        stored_at: 1_700_000_000,
        ..Default::default()
    }
}

struct Footprint {
    blocks: usize,
    /// Requested and usable heap bytes of the allocator and of the index.
    allocator: (isize, isize),
    index: (isize, isize),
    /// What the allocator reports about itself (`Allocator::heap_bytes`).
    allocator_self_report: usize,
}

fn delta(from: (isize, isize)) -> (isize, isize) {
    let now = heap();
    (now.0 - from.0, now.1 - from.1)
}

/// Builds the index of `objects` objects of `blocks_each` full blocks, every block Ready at a
/// slot taken from an allocator of exactly enough regions (the blocks, plus regions of small
/// slots for the metadata records), and measures the heap each holds.
fn footprint(objects: usize, blocks_each: usize) -> Footprint {
    let classes = slot_classes(BS);
    let large = (classes.len() - 1) as u8;
    let record_len = meta(objects, blocks_each as u64).encode().len() as u32;
    let meta_class = class_for(&classes, record_len).unwrap();
    let metas_per_region = format::slots_per_region(BS, classes[meta_class as usize]) as usize;
    let blocks = objects * blocks_each;
    let regions = blocks + objects.div_ceil(metas_per_region);

    // Addresses handed from the allocator to the index; allocated before counting starts.
    let mut addrs = Vec::with_capacity(blocks + objects);
    let start = heap();
    let mut alloc = Allocator::new(0, BS, classes, regions as u32);
    for _ in 0..objects {
        addrs.push(alloc.take(SlotKind::Meta, meta_class).unwrap().addr);
        for _ in 0..blocks_each {
            addrs.push(alloc.take(SlotKind::Data, large).unwrap().addr);
        }
    }
    let allocator = delta(start);

    let start = heap();
    let index = Index::new(Index::default_shards());
    for (o, addrs) in addrs.chunks(blocks_each + 1).enumerate() {
        let m = meta(o, blocks_each as u64);
        let h = key_hash(&m.key);
        let entry = ObjectEntry {
            version: m.version(),
            meta: Arc::new(m),
            meta_addr: addrs[0],
            meta_seq: o as u64,
            blocks: addrs[1..]
                .iter()
                .map(|&a| BlockState::ready(a, true))
                .collect(),
        };
        let freed = index.insert(h, entry);
        assert!(freed.is_empty(), "two keys of the test share a hash");
    }
    let index_bytes = delta(start);
    let allocator_self_report = alloc.heap_bytes();
    // Freeing a million entries one by one (through the counting allocator, unoptimised) takes
    // seconds in a debug build; the test process ends soon and returns the memory at once.
    std::mem::forget(index);
    std::mem::forget(alloc);
    Footprint {
        blocks,
        allocator,
        index: index_bytes,
        allocator_self_report,
    }
}

/// Prints the figures; returns index + allocator bytes per block (the larger of requested and
/// usable).
fn report(what: &str, f: &Footprint) -> f64 {
    let per = |b: isize| b as f64 / f.blocks as f64;
    let total = (f.allocator.0 + f.index.0, f.allocator.1 + f.index.1);
    println!(
        "{what}: {} blocks: {:.1} B/block requested, {:.1} B/block usable (malloc rounding): \
         index {:.1} / {:.1}, allocator {:.1} / {:.1} (its heap_bytes() says {:.1})",
        f.blocks,
        per(total.0),
        per(total.1),
        per(f.index.0),
        per(f.index.1),
        per(f.allocator.0),
        per(f.allocator.1),
        f.allocator_self_report as f64 / f.blocks as f64,
    );
    per(total.0.max(total.1))
}

#[test]
fn index_memory_per_block_is_at_most_64_bytes() {
    let f = footprint(1_000, 1_000);
    let per_block = report("1,000 objects x 1,000 blocks", &f);
    assert!(
        per_block <= 64.0,
        "index + allocator use {per_block:.1} bytes per cached block (target: 64)"
    );
}

/// Informational: with one block per object the per-object cost (metadata record, hash table
/// entry, block array) dominates.
#[test]
fn index_memory_for_single_block_objects_is_reported() {
    let f = footprint(1_000_000, 1);
    report("1,000,000 objects x 1 block (informational)", &f);
}

/// Stores 10,000 objects of 10 KiB whole and returns the bytes of the regions in use and the
/// payload bytes.
fn disk_used_for_small_objects(block_size: u32) -> (u64, u64) {
    const OBJECTS: usize = 10_000;
    const LEN: u64 = 10 * KIB;
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = StoreConfig::new(vec![DriveConfig {
        path: dir.path().to_path_buf(),
        size: 256 * MIB,
    }]);
    cfg.block_size = block_size;
    cfg.slab_size = 64 * MIB;
    // Space is the question here, not durability: skip the msync per block.
    cfg.sync_data = false;
    let (cache, _) = Cache::open(&cfg).unwrap();
    let data = vec![0x5au8; LEN as usize];
    for i in 0..OBJECTS {
        let key = format!("updates.example.net/small/{i:05}.json");
        let obj = cache.put_object(common::meta(&key, LEN)).unwrap();
        match cache.claim(&key, 0, obj.version).unwrap() {
            Claim::Write(mut w) => {
                assert_eq!(w.write(&data), data.len());
                w.commit().unwrap();
            }
            _ => panic!("{key}: block 0 already claimed"),
        }
    }
    // Nothing was evicted: every object is whole, so the space measured is theirs.
    let objects = cache.objects();
    assert_eq!(objects.len(), OBJECTS);
    assert!(objects.iter().all(|(_, ready)| *ready == 1));
    let d = &cache.store().drives()[0];
    let regions = u64::from(d.region_count()) - d.free_regions() as u64;
    (regions * region_len(block_size), OBJECTS as u64 * LEN)
}

#[test]
fn small_objects_take_at_most_twice_their_size_on_disk() {
    for block_size in [1 << 20, 64 * 1024] {
        let (used, payload) = disk_used_for_small_objects(block_size);
        let ratio = used as f64 / payload as f64;
        println!(
            "10,000 x 10 KiB with {} KiB blocks: {} regions in use, {:.1} MiB for {:.1} MiB of \
             data: {ratio:.3}x",
            block_size / 1024,
            used / region_len(block_size),
            used as f64 / MIB as f64,
            payload as f64 / MIB as f64,
        );
        assert!(
            used <= 2 * payload,
            "{used} bytes on disk for {payload} bytes of 10 KiB objects ({ratio:.2}x, target 2x)"
        );
    }
}
