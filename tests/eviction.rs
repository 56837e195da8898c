//! Eviction: a store filled far past its budget keeps working, keeps read blocks over cold ones,
//! never takes a pinned slot, drops objects only with their last block, says `Full` when it must,
//! and reopens to exactly what it served.

mod common;

use common::*;
use gatecache::cache::{BlockStatus, Cache, CacheError, Claim};
use gatecache::store::format::{self, RegionHeader, SlotHeader, SlotKind};
use gatecache::store::verify::verify_dir;
use gatecache::store::{SlotBuf, StoreConfig, StoreError};

const BS: u64 = 64 * KIB;
/// What one full-block region takes on disk (block + headers).
const REGION: u64 = 64 * KIB + 4 * KIB;

/// 8 MiB of 64 KiB blocks (120 regions), without msync: these tests move many megabytes and do
/// not test power loss.
fn small_store(dir: &std::path::Path) -> StoreConfig {
    let mut c = config(dir, 8 * MIB);
    c.sync_data = false;
    c
}

fn pinned(cache: &Cache) -> usize {
    cache.store().pinned_slots()
}

/// Stores a whole object the way a client streaming it through the cache does: each block is
/// read back as soon as it is committed (so it counts as used, as in production).
fn put_streamed(cache: &Cache, key: &str, len: u64) {
    let obj = cache.put_object(meta(key, len)).unwrap();
    for b in 0..obj.meta.block_count(BS as u32) {
        let start = b * BS;
        let data = bytes_of(key, start..start + obj.meta.block_len(BS as u32, b));
        match cache.claim(key, b as u32, obj.version).unwrap() {
            Claim::Write(mut w) => {
                assert_eq!(w.write(&data), data.len());
                assert!(w.commit().unwrap()[..] == data[..]);
            }
            _ => panic!("{key} block {b}: nobody else fills in this test"),
        }
        let got = cache
            .get(key, b as u32)
            .expect("block gone right after its commit");
        assert!(got[..] == data[..], "{key} block {b}");
    }
}

fn cold(i: usize) -> String {
    format!("mirror.example.org/cold/{i}.bin")
}

/// Writes `n` objects of `len` bytes that nobody reads.
fn stream_cold(cache: &Cache, from: usize, n: usize, len: u64) {
    for i in from..from + n {
        put_full(cache, &cold(i), len);
    }
}

/// Every block the index holds of `key` is the right bytes; returns how many it holds.
fn check_cached_blocks(cache: &Cache, key: &str) -> usize {
    let Some(o) = cache.lookup(key) else { return 0 };
    let mut held = 0;
    for b in 0..o.meta.block_count(BS as u32) {
        if let Some(buf) = cache.get(key, b as u32) {
            let start = b * BS;
            assert!(
                buf[..] == bytes_of(key, start..start + buf.len() as u64)[..],
                "{key} block {b} bytes"
            );
            assert_eq!(buf.len() as u64, o.meta.block_len(BS as u32, b));
            held += 1;
        }
    }
    held
}

fn ready_bytes(cache: &Cache, keys: impl IntoIterator<Item = String>) -> u64 {
    keys.into_iter()
        .filter_map(|k| {
            let o = cache.lookup(&k)?;
            let statuses = cache.block_statuses(&k)?;
            Some(
                statuses
                    .iter()
                    .enumerate()
                    .filter(|(_, s)| **s == BlockStatus::Ready)
                    .map(|(b, _)| o.meta.block_len(BS as u32, b as u64))
                    .sum::<u64>(),
            )
        })
        .sum()
}

#[test]
fn filling_far_more_than_the_budget_succeeds_by_evicting() {
    let dir = tempfile::tempdir().unwrap();
    let (cache, _) = Cache::open(&small_store(dir.path())).unwrap();
    let capacity = cache.store().capacity_bytes();
    assert_eq!(capacity, 120 * BS);
    const N: usize = 48;
    for i in 0..N {
        // Panics if any claim fails: every allocation must find room by evicting.
        put_streamed(&cache, &cold(i), MIB);
        assert_eq!(
            read_full(&cache, &cold(i)).expect("the newest object is whole"),
            bytes_of(&cold(i), 0..MIB)
        );
    }
    let keys = || (0..N).map(cold);
    let cached = ready_bytes(&cache, keys());
    assert!(cached <= capacity, "{cached} bytes cached in {capacity}");
    // Nearly all of the budget holds data (one region holds the metadata records).
    assert!(
        cached >= capacity - 4 * BS,
        "only {cached} of {capacity} in use"
    );
    let gone = keys().filter(|k| cache.lookup(k).is_none()).count();
    assert!(gone >= N - 8, "only {gone} of {N} objects were evicted");
    for k in keys() {
        check_cached_blocks(&cache, &k);
    }
    assert_eq!(pinned(&cache), 0);
}

#[test]
fn a_hot_object_outlives_a_stream_of_cold_ones() {
    let dir = tempfile::tempdir().unwrap();
    let (cache, _) = Cache::open(&small_store(dir.path())).unwrap();
    let hot = "updates.example.org/hot/index.json";
    let lukewarm = "updates.example.org/lukewarm/index.json";
    put_full(&cache, hot, 256 * KIB);
    put_full(&cache, lukewarm, 256 * KIB);
    // Twice the budget of cold objects, with the hot one read between every two of them.
    for i in 0..64 {
        put_full(&cache, &cold(i), 256 * KIB);
        assert_eq!(
            read_full(&cache, hot).unwrap_or_else(|| panic!("hot object lost after {i} cold")),
            bytes_of(hot, 0..256 * KIB)
        );
    }
    // The object written at the same time but never read is gone, as are the oldest cold ones.
    assert!(
        cache.lookup(lukewarm).is_none(),
        "an unread object outlived the stream"
    );
    assert!(cache.lookup(&cold(0)).is_none());
    assert!(read_full(&cache, &cold(63)).is_some());
}

/// SIEVE inserts new entries unvisited: of a block that was read once and blocks that were only
/// written, the written-only ones must go first.
#[test]
fn a_block_read_once_outlives_blocks_that_were_only_written() {
    let dir = tempfile::tempdir().unwrap();
    let (cache, _) = Cache::open(&small_store(dir.path())).unwrap();
    let read_once = "updates.example.org/once/manifest.json";
    put_full(&cache, read_once, BS);
    assert!(cache.get(read_once, 0).is_some());
    // Written, never read, until the drive has no free region left.
    let drive = cache.store().drive(0).clone();
    let mut i = 0;
    while drive.free_regions() > 0 {
        put_full(&cache, &cold(i), BS);
        i += 1;
    }
    assert!(
        cache.lookup(&cold(0)).is_some(),
        "evicted before the drive was full"
    );
    // One more block: exactly one region is evicted, and it must be a never-read one.
    put_full(&cache, &cold(i), BS);
    assert!(
        cache.get(read_once, 0).is_some(),
        "the one block that was read was evicted first"
    );
    assert!(
        cache.lookup(&cold(0)).is_none(),
        "the oldest unread block stayed"
    );
}

/// Writes `n` objects of `len` bytes, each block read once: every region gets its visited bit, so
/// the SIEVE hand keeps sweeping the whole queue (with never-read objects it stays at the new end
/// and never comes back to older entries).
fn stream_read_once(cache: &Cache, from: usize, n: usize, len: u64) {
    for i in from..from + n {
        put_streamed(cache, &cold(i), len);
    }
}

#[test]
fn a_pinned_block_is_never_evicted_and_its_bytes_stay_intact() {
    let dir = tempfile::tempdir().unwrap();
    let (cache, _) = Cache::open(&small_store(dir.path())).unwrap();
    // P and Q are twins, read the same; only P's blocks are held.
    let p = "updates.example.org/pinned/kernel.img";
    let q = "updates.example.org/unpinned/kernel.img";
    put_full(&cache, p, 4 * BS);
    put_full(&cache, q, 4 * BS);
    assert!(read_full(&cache, q).is_some());
    let views: Vec<SlotBuf> = (0..4).map(|b| cache.get(p, b).unwrap()).collect();
    let addrs: Vec<_> = views.iter().map(|v| v.pin().addr()).collect();
    // Three times the budget goes through while the views are held.
    stream_read_once(&cache, 0, 96, 256 * KIB);
    assert!(
        cache.lookup(q).is_none(),
        "the unpinned twin was not evicted"
    );
    assert!(cache.lookup(&cold(0)).is_none());
    let drive = cache.store().drive(0).clone();
    for (b, v) in views.iter().enumerate() {
        let start = b as u64 * BS;
        assert!(
            v[..] == bytes_of(p, start..start + BS)[..],
            "pinned block {b} changed"
        );
        assert!(drive.is_pinned(addrs[b]));
        // Still cached, in the same slot.
        let again = cache.get(p, b as u32).expect("pinned block evicted");
        assert_eq!(again.pin().addr(), addrs[b]);
    }
    assert_eq!(pinned(&cache), 4);
    drop(views);
    assert_eq!(pinned(&cache), 0);
    // Unpinned, it goes the way its twin went.
    stream_read_once(&cache, 96, 96, 256 * KIB);
    assert!(cache.lookup(p).is_none(), "the pins were not what kept it");
}

#[test]
fn an_object_that_lost_some_blocks_stays_valid_and_refills() {
    let dir = tempfile::tempdir().unwrap();
    let (cache, _) = Cache::open(&small_store(dir.path())).unwrap();
    let key = "updates.example.org/partial/rootfs.squashfs";
    let len = 16 * BS - 1000;
    let obj = put_full(&cache, key, len);
    // Even blocks are read all along; odd ones are never read again.
    for i in 0..48 {
        put_full(&cache, &cold(i), 256 * KIB);
        for b in (0..16).step_by(2) {
            assert!(cache.get(key, b).is_some(), "read block {b} evicted at {i}");
        }
    }
    let o = cache
        .lookup(key)
        .expect("object with cached blocks is kept");
    assert_eq!(*o.meta, *obj.meta);
    let statuses = cache.block_statuses(key).unwrap();
    for (b, s) in statuses.iter().enumerate() {
        let want = if b % 2 == 0 {
            BlockStatus::Ready
        } else {
            BlockStatus::Missing
        };
        assert_eq!(*s, want, "block {b}: {statuses:?}");
    }
    assert_eq!(check_cached_blocks(&cache, key), 8);
    assert!(read_full(&cache, key).is_none());
    // The missing blocks are claimed and filled again.
    for b in (1..16).step_by(2) {
        match cache.claim(key, b, o.version).unwrap() {
            Claim::Write(mut w) => {
                let start = u64::from(b) * BS;
                let data = bytes_of(key, start..start + w.capacity() as u64);
                assert_eq!(w.write(&data), data.len());
                w.commit().unwrap();
            }
            _ => panic!("missing block {b} not offered for writing"),
        }
    }
    assert_eq!(read_full(&cache, key).unwrap(), bytes_of(key, 0..len));
    assert_eq!(pinned(&cache), 0);
}

#[test]
fn an_object_whose_last_block_is_evicted_disappears_with_its_record() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = small_store(dir.path());
    let (cache, _) = Cache::open(&cfg).unwrap();
    let whole = "updates.example.org/gone/whole.bin";
    let partial = "updates.example.org/gone/partial.bin";
    let whole_obj = put_full(&cache, whole, 2 * BS);
    // Only block 2 of four was ever fetched.
    let part_obj = cache.put_object(meta(partial, 4 * BS)).unwrap();
    match cache.claim(partial, 2, part_obj.version).unwrap() {
        Claim::Write(mut w) => {
            w.write(&bytes_of(partial, 2 * BS..3 * BS));
            w.commit().unwrap();
        }
        _ => panic!("expected Write"),
    }
    stream_cold(&cache, 0, 64, 256 * KIB);
    for (key, obj) in [(whole, &whole_obj), (partial, &part_obj)] {
        assert!(cache.lookup(key).is_none(), "{key} kept with no block");
        assert!(cache.block_statuses(key).is_none());
        assert!(cache.get(key, 0).is_none());
        assert!(matches!(
            cache.claim(key, 0, obj.version),
            Err(CacheError::NoObject)
        ));
    }
    // Their metadata records were freed too: a reopen finds nothing of them to drop.
    let survivors = (0..64)
        .filter(|&i| cache.lookup(&cold(i)).is_some())
        .count();
    drop(cache);
    let (cache, report) = Cache::open(&cfg).unwrap();
    assert_eq!(report.dropped(), 0, "{report:?}");
    assert_eq!(report.objects, survivors);
    assert!(cache.lookup(whole).is_none() && cache.lookup(partial).is_none());
}

#[test]
fn claim_is_store_full_when_every_slot_is_pinned() {
    let dir = tempfile::tempdir().unwrap();
    // Eight regions: one for metadata records, seven for blocks.
    let mut cfg = config(dir.path(), 8 * REGION);
    cfg.sync_data = false;
    let (cache, _) = Cache::open(&cfg).unwrap();
    let key = "updates.example.org/full/big.bin";
    let obj = cache.put_object(meta(key, 16 * BS)).unwrap();
    let block = |b: u32| bytes_of(key, u64::from(b) * BS..(u64::from(b) + 1) * BS);
    let mut held = Vec::new();
    for b in 0..6 {
        let Claim::Write(mut w) = cache.claim(key, b, obj.version).unwrap() else {
            panic!("expected Write");
        };
        w.write(&block(b));
        held.push(w.commit().unwrap());
    }
    // The seventh is being filled (a writer pins its slot too).
    let Claim::Write(mut filling) = cache.claim(key, 6, obj.version).unwrap() else {
        panic!("expected Write");
    };
    filling.write(&block(6)[..1000]);
    assert_eq!(pinned(&cache), 7);

    for _ in 0..2 {
        match cache.claim(key, 7, obj.version) {
            Err(CacheError::Store(StoreError::Full)) => {}
            Err(e) => panic!("expected Full, got {e}"),
            Ok(_) => panic!("expected Full, got a claim"),
        }
    }
    // Nothing was disturbed by the failed claims.
    let mut want = vec![BlockStatus::Ready; 6];
    want.push(BlockStatus::Filling);
    want.extend([BlockStatus::Missing; 9]);
    assert_eq!(cache.block_statuses(key).unwrap(), want);
    for (b, buf) in held.iter().enumerate() {
        assert!(buf[..] == block(b as u32)[..], "pinned block {b} changed");
    }
    assert!(cache.get(key, 7).is_none());
    assert_eq!(pinned(&cache), 7);
    // Another object's record still fits (metadata has its own region), its blocks do not.
    let other = "updates.example.org/full/other.bin";
    let o2 = cache.put_object(meta(other, BS)).unwrap();
    assert!(matches!(
        cache.claim(other, 0, o2.version),
        Err(CacheError::Store(StoreError::Full))
    ));

    // Let go of one block: the next claim evicts exactly that one.
    held.remove(0);
    let Claim::Write(mut w) = cache.claim(key, 7, obj.version).unwrap() else {
        panic!("expected Write after a pin was released");
    };
    w.write(&block(7));
    held.push(w.commit().unwrap());
    let statuses = cache.block_statuses(key).unwrap();
    assert_eq!(statuses[0], BlockStatus::Missing);
    assert_eq!(statuses[7], BlockStatus::Ready);
    filling.write(&block(6)[1000..]);
    held.push(filling.commit().unwrap());
    for b in 1..8 {
        assert!(cache.get(key, b).unwrap()[..] == block(b)[..]);
    }
    drop(held);
    assert_eq!(pinned(&cache), 0);
}

const MIXED: &[u64] = &[
    10 * KIB,
    KIB + 1,
    100 * KIB + 3,
    700 * KIB,
    10 * KIB,
    64 * KIB,
    33 * KIB,
    300 * KIB + 5,
    5,
    128 * KIB,
];

fn mixed(i: usize) -> (String, u64) {
    (
        format!("cdn{}.example.org/mixed/{i}", i % 4),
        MIXED[i % MIXED.len()],
    )
}

#[test]
fn small_and_large_objects_mixed_under_eviction_keep_every_byte() {
    let dir = tempfile::tempdir().unwrap();
    let (cache, _) = Cache::open(&small_store(dir.path())).unwrap();
    const N: usize = 200;
    let mut x = 0x2545_f491_4f6c_dd1du64;
    for i in 0..N {
        let (key, len) = mixed(i);
        put_streamed(&cache, &key, len);
        // Look back at a few earlier objects: whatever is still cached is exact.
        for _ in 0..3 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let (k, _) = mixed((x % (i as u64 + 1)) as usize);
            check_cached_blocks(&cache, &k);
        }
    }
    let mut small_kept = 0;
    let mut large_kept = 0;
    let mut gone = 0;
    for i in 0..N {
        let (key, len) = mixed(i);
        let n = check_cached_blocks(&cache, &key);
        match (n, len < BS) {
            (0, _) => {
                gone += 1;
                assert!(cache.lookup(&key).is_none() || len == 0);
            }
            (_, true) => small_kept += 1,
            (_, false) => large_kept += 1,
        }
    }
    assert!(gone > N / 2, "only {gone} of {N} evicted");
    assert!(
        small_kept > 0 && large_kept > 0,
        "{small_kept} small, {large_kept} large"
    );
    assert_eq!(pinned(&cache), 0);
}

fn snapshot(cache: &Cache, keys: &[String]) -> Vec<(String, Vec<BlockStatus>)> {
    keys.iter()
        .filter_map(|k| Some((k.clone(), cache.block_statuses(k)?)))
        .collect()
}

#[test]
fn a_reopen_after_eviction_and_refill_serves_exactly_the_same_bytes() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = small_store(dir.path());
    let (cache, _) = Cache::open(&cfg).unwrap();
    const N: usize = 120;
    let keys: Vec<String> = (0..N).map(|i| mixed(i).0).collect();
    for i in 0..N {
        let (key, len) = mixed(i);
        put_full(&cache, &key, len);
    }
    // Refill the oldest (evicted) objects, top up partly evicted ones, remove a few.
    for i in 0..12 {
        let (key, len) = mixed(i);
        assert!(cache.lookup(&key).is_none(), "{key} was never evicted");
        put_full(&cache, &key, len);
    }
    for i in 0..N {
        let (key, len) = mixed(i);
        if i % 7 == 0 && cache.lookup(&key).is_some() {
            put_full(&cache, &key, len);
        }
    }
    for i in [3, 50, 119] {
        cache.remove(&mixed(i).0);
    }
    let before = snapshot(&cache, &keys);
    assert!(before.len() > 12, "{} objects cached", before.len());
    drop(cache);

    let (cache, report) = Cache::open(&cfg).unwrap();
    assert_eq!(report.objects, before.len(), "{report:?}");
    assert_eq!(
        report.dropped(),
        0,
        "recovery dropped something it had stored: {report:?}"
    );
    assert_eq!(snapshot(&cache, &keys), before);
    for k in &keys {
        let o = cache.lookup(k);
        let held = check_cached_blocks(&cache, k);
        assert_eq!(
            o.is_some(),
            held > 0 || o.is_some_and(|o| o.meta.total_len == 0)
        );
    }
    // The recovered store evicts and refills as before.
    for i in N..N + 60 {
        let (key, len) = mixed(i);
        put_full(&cache, &key, len);
    }
    for i in 0..N + 60 {
        check_cached_blocks(&cache, &mixed(i).0);
    }
    for i in 0..12 {
        let (key, len) = mixed(i);
        put_full(&cache, &key, len);
        assert_eq!(read_full(&cache, &key).unwrap(), bytes_of(&key, 0..len));
    }
    assert_eq!(pinned(&cache), 0);
}

// ------------------------------------------------------------------------------------------------
// A region reused for another slot class: the new class's slot-header positions lie inside the
// old class's data. Regression tests: when only the slot handed out had its header cleared, the
// rest still held old data bytes, which recovery and verify read as headers (and trusted, when
// well-formed).

/// One 64 KiB block in region R, removed, then a 10 KiB block reuses R as a 12 KiB-slot region.
fn reuse_full_region_for_small_slots(cache: &Cache, big: &str, big_bytes: &[u8]) {
    let obj = cache.put_object(meta(big, BS)).unwrap();
    let Claim::Write(mut w) = cache.claim(big, 0, obj.version).unwrap() else {
        panic!("expected Write");
    };
    w.write(big_bytes);
    let big_region = w.commit().unwrap().pin().addr().region();
    assert!(cache.remove(big));
    let small = "updates.example.org/reuse/small.json";
    put_full(cache, small, 10 * KIB);
    let addr = cache.get(small, 0).unwrap().pin().addr();
    assert_eq!(
        addr.region(),
        big_region,
        "test assumption: freed region reused"
    );
    assert_eq!(addr.slot(), 0);
}

#[test]
fn a_region_reused_for_smaller_slots_reopens_clean() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = small_store(dir.path());
    let (cache, _) = Cache::open(&cfg).unwrap();
    let big = "updates.example.org/reuse/big.bin";
    reuse_full_region_for_small_slots(&cache, big, &bytes_of(big, 0..BS));
    drop(cache);
    let v = verify_dir(dir.path()).unwrap();
    assert!(v.is_clean(), "verify of a healthy store:\n{}", v.render());
    let (_cache, report) = Cache::open(&cfg).unwrap();
    assert_eq!(report.bad_headers, 0, "{report:?}");
    assert_eq!(report.dropped(), 0, "{report:?}");
}

/// Content a client can put in the cache must never be read as a slot header. Here a cached
/// file carries a well-formed header (predictable generation, the victim's key hash and version)
/// at the offset where the region's next life puts slot 1's header. Were it left there, recovery
/// would trust it after a restart, it would beat the real block by sequence number, and the
/// victim key would serve the planted bytes.
#[test]
fn bytes_of_a_freed_block_never_become_a_block_of_another_object() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = small_store(dir.path());
    let (cache, _) = Cache::open(&cfg).unwrap();
    // Regions are handed out lowest first: 0 metadata (generation 1), 1 the victim's block
    // (generation 2), 2 the planted file (3), then 2 again for a 10 KiB block (4).
    let victim = "updates.example.org/victim/firmware.sig";
    let vlen = 1000u64;
    put_full(&cache, victim, vlen);
    let poison = vec![0xeeu8; vlen as usize];
    let slot_size = 12 * 1024u64;
    // Slot 1's header in the reused region sits slot_size - 64 bytes into the old block's data.
    let at = (slot_size - format::SLOT_HEADER_LEN) as usize;
    let forged = SlotHeader {
        kind: SlotKind::Data,
        region_generation: 4,
        key_hash: format::key_hash(victim),
        block: 0,
        data_len: vlen as u32,
        data_crc: crc32fast::hash(&poison),
        object_version: meta(victim, vlen).version(),
        seq: 1 << 40,
    };
    let mut planted = bytes_of("attacker", 0..BS);
    planted[at..at + 64].copy_from_slice(&forged.encode());
    planted[at + 64..at + 64 + poison.len()].copy_from_slice(&poison);
    let big = "updates.example.org/uploads/blob.bin";
    reuse_full_region_for_small_slots(&cache, big, &planted);
    // Check the prediction, so the test fails for the right reason.
    let region = cache.get(big, 0).map(|b| b.pin().addr().region());
    assert!(region.is_none());
    let small_addr = cache
        .get("updates.example.org/reuse/small.json", 0)
        .unwrap()
        .pin()
        .addr();
    let (slab, off) = cache.store().drive(0).region_at(small_addr.region());
    let rh = RegionHeader::decode(&slab.read_header(off)).unwrap();
    assert_eq!(
        (rh.slot_size, rh.generation),
        (slot_size as u32, forged.region_generation)
    );
    assert!(cache.get(victim, 0).unwrap()[..] == bytes_of(victim, 0..vlen)[..]);
    drop(cache);

    let (cache, report) = Cache::open(&cfg).unwrap();
    let got = cache.get(victim, 0).expect("victim block recovered");
    assert!(
        got[..] == bytes_of(victim, 0..vlen)[..],
        "after a restart {victim} serves bytes planted by another object ({report:?})"
    );
}
