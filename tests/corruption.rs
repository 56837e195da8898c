//! Damage a closed store on disk, one kind of damage per test, then reopen it: the damaged part
//! is dropped (never served), everything else is byte-identical, `verify` names what it found,
//! the recovery report counts it, and the store stays usable.
//!
//! The damage is placed by reading the on-disk layout back (slab, region and slot headers), so
//! the tests do not depend on where the allocator happened to put things.

mod common;

use std::collections::BTreeSet;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, Once};
use std::thread::ThreadId;

use common::*;
use gatecache::cache::{BlockStatus, Cache, Claim};
use gatecache::store::drive::slab_path;
use gatecache::store::format::{
    self, REGION_HEADER_LEN, RegionHeader, SLAB_HEADER_LEN, SLOT_HEADER_LEN, SlabHeader,
    SlotHeader, key_hash,
};
use gatecache::store::verify::{Damage, verify_dir};
use gatecache::store::{ObjectMeta, RecoveryReport, SlotKind, StoreConfig};

/// 16 MiB of 64 KiB blocks in 4 MiB slabs: 240 regions, 60 per slab, 4 slabs.
const STORE_SIZE: u64 = 16 * MIB;
const BLOCK: u64 = 64 * KIB;

/// Written in this order, so small objects share a slot-class region and the large image spills
/// from slab 0 into slab 1.
const FIXTURE: &[(&str, u64)] = &[
    ("origin.test/pkg/small-1.deb", 5000),
    ("origin.test/pkg/small-2.deb", 4321),
    ("origin.test/pkg/small-3.deb", 6000),
    ("origin.test/fw/big.swu", 3 * BLOCK + 1000),
    ("updates.example.org/img/rootfs.img", 70 * BLOCK + 4321),
    ("updates.example.org/fw/a.bin", BLOCK),
    ("cdn.example.org/empty.txt", 0),
    ("origin.test/docs/tiny.json", 100),
];

/// Keys the tests below write besides the fixture.
const OTHER_KEYS: &[&str] = &[FRESH, GEN_FILLER, GEN_KEY];
const FRESH: &str = "fresh.example.org/after/damage.bin";
const GEN_FILLER: &str = "origin.test/gen/filler.bin";
const GEN_KEY: &str = "updates.example.org/gen/k.bin";

const SMALL_2: &str = "origin.test/pkg/small-2.deb";
const BIG: &str = "origin.test/fw/big.swu";
const ROOTFS: &str = "updates.example.org/img/rootfs.img";
const A_BIN: &str = "updates.example.org/fw/a.bin";

fn fixture_len(key: &str) -> u64 {
    FIXTURE
        .iter()
        .find(|(k, _)| *k == key)
        .expect("fixture key")
        .1
}

fn blocks_of(len: u64) -> u32 {
    len.div_ceil(BLOCK) as u32
}

/// A closed store holding the fixture; returns its config.
fn build(dir: &Path) -> StoreConfig {
    let cfg = config(dir, STORE_SIZE);
    let (cache, report) = Cache::open(&cfg).unwrap();
    assert_eq!(report.objects, 0);
    for &(key, len) in FIXTURE {
        put_full(&cache, key, len);
    }
    cfg
}

// ---------------------------------------------------------------------------------------------
// Reading the layout back.

/// A slot with a valid header, as found on disk.
#[derive(Debug, Clone)]
struct Slot {
    path: PathBuf,
    slab: u32,
    /// Region number within its slab.
    region: u32,
    region_off: u64,
    header_off: u64,
    slot_size: u32,
    header: SlotHeader,
    /// The fixture key it belongs to.
    key: String,
}

impl Slot {
    fn data_end(&self) -> u64 {
        self.header_off + SLOT_HEADER_LEN + u64::from(self.header.data_len)
    }
    fn id(&self) -> (String, u32) {
        (self.key.clone(), self.header.block)
    }
}

/// Every live slot of a closed store, decoded with the format's own decoders.
fn scan(dir: &Path) -> Vec<Slot> {
    let mut out = Vec::new();
    for n in 0.. {
        let path = slab_path(dir, n);
        let Ok(bytes) = std::fs::read(&path) else {
            break;
        };
        let head =
            |off: u64| -> [u8; 64] { bytes[off as usize..off as usize + 64].try_into().unwrap() };
        let sh = SlabHeader::decode(&head(0)).expect("scan of a healthy slab");
        for r in 0..sh.regions {
            let region_off = SLAB_HEADER_LEN + u64::from(r) * sh.region_len;
            let Ok(rh) = RegionHeader::decode(&head(region_off)) else {
                continue;
            };
            for s in 0..format::slots_per_region(sh.block_size, rh.slot_size) {
                let header_off =
                    region_off + REGION_HEADER_LEN + u64::from(s) * u64::from(rh.slot_size);
                let Ok(h) = SlotHeader::decode(&head(header_off)) else {
                    continue;
                };
                if h.region_generation != rh.generation || h.kind != rh.kind {
                    continue;
                }
                let key = FIXTURE
                    .iter()
                    .map(|(k, _)| *k)
                    .chain(OTHER_KEYS.iter().copied())
                    .find(|k| key_hash(k) == h.key_hash)
                    .map_or_else(|| format!("{:032x}", h.key_hash), str::to_string);
                out.push(Slot {
                    path: path.clone(),
                    slab: n,
                    region: r,
                    region_off,
                    header_off,
                    slot_size: rh.slot_size,
                    header: h,
                    key,
                });
            }
        }
    }
    out
}

fn data_slot<'a>(slots: &'a [Slot], key: &str, block: u32) -> &'a Slot {
    slots
        .iter()
        .find(|s| s.key == key && s.header.kind == SlotKind::Data && s.header.block == block)
        .unwrap_or_else(|| panic!("no slot for {key} block {block}"))
}

fn meta_slot<'a>(slots: &'a [Slot], key: &str) -> &'a Slot {
    slots
        .iter()
        .find(|s| s.key == key && s.header.kind == SlotKind::Meta)
        .unwrap_or_else(|| panic!("no metadata slot for {key}"))
}

fn write_at(path: &Path, off: u64, bytes: &[u8]) {
    let f = std::fs::OpenOptions::new().write(true).open(path).unwrap();
    f.write_all_at(bytes, off).unwrap();
}

fn flip_byte(path: &Path, off: u64) {
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .unwrap();
    let mut b = [0u8];
    f.read_exact_at(&mut b, off).unwrap();
    f.write_all_at(&[b[0] ^ 0x5a], off).unwrap();
}

// ---------------------------------------------------------------------------------------------
// Log capture: recovery reports what it dropped through `log`, on the thread that opens.

struct Capture;

static LOGS: Mutex<Vec<(ThreadId, String)>> = Mutex::new(Vec::new());

impl log::Log for Capture {
    fn enabled(&self, _: &log::Metadata<'_>) -> bool {
        true
    }
    fn log(&self, record: &log::Record<'_>) {
        let line = format!("{} {}", record.level(), record.args());
        LOGS.lock()
            .unwrap()
            .push((std::thread::current().id(), line));
    }
    fn flush(&self) {}
}

fn capture_logs() {
    static ONCE: Once = Once::new();
    static LOGGER: Capture = Capture;
    ONCE.call_once(|| {
        log::set_logger(&LOGGER).expect("no other logger in this test binary");
        log::set_max_level(log::LevelFilter::Info);
    });
}

/// Log lines emitted by this test's thread so far (other tests run on other threads).
fn my_logs() -> Vec<String> {
    let me = std::thread::current().id();
    LOGS.lock()
        .unwrap()
        .iter()
        .filter(|(t, _)| *t == me)
        .map(|(_, l)| l.clone())
        .collect()
}

fn assert_logged(needle: &str) {
    let logs = my_logs();
    assert!(
        logs.iter().any(|l| l.contains(needle)),
        "no log line contains {needle:?}: {logs:#?}"
    );
}

// ---------------------------------------------------------------------------------------------
// What the reopened store must hold.

/// Checks every fixture object against what should have survived: objects in `lost_objects`
/// are gone; in the others, blocks in `lost_blocks` are never served and every other block is
/// byte-identical. Returns the number of blocks served.
fn assert_holds(
    cache: &Cache,
    lost_objects: &BTreeSet<String>,
    lost_blocks: &BTreeSet<(String, u32)>,
) -> usize {
    let mut served = 0;
    for &(key, len) in FIXTURE {
        if lost_objects.contains(key) {
            assert!(cache.lookup(key).is_none(), "{key} should be gone");
            continue;
        }
        let obj = cache
            .lookup(key)
            .unwrap_or_else(|| panic!("{key} lost, should survive"));
        assert_eq!(*obj.meta, meta(key, len), "metadata of {key}");
        for b in 0..blocks_of(len) {
            let got = cache.get(key, b);
            if lost_blocks.contains(&(key.to_string(), b)) {
                assert!(got.is_none(), "{key} block {b} served after damage");
                assert_eq!(
                    cache.block_statuses(key).unwrap()[b as usize],
                    BlockStatus::Missing
                );
            } else {
                let start = u64::from(b) * BLOCK;
                let want = bytes_of(key, start..(start + BLOCK).min(len));
                let got = got.unwrap_or_else(|| panic!("{key} block {b} lost"));
                assert!(*got == *want, "{key} block {b}: wrong bytes");
                served += 1;
            }
        }
    }
    served
}

/// Objects that lose all their blocks (or their metadata) are dropped whole by recovery.
fn objects_emptied_by(lost_blocks: &BTreeSet<(String, u32)>) -> BTreeSet<String> {
    FIXTURE
        .iter()
        .filter(|(k, len)| {
            *len > 0 && (0..blocks_of(*len)).all(|b| lost_blocks.contains(&(k.to_string(), b)))
        })
        .map(|(k, _)| k.to_string())
        .collect()
}

fn total_blocks() -> usize {
    FIXTURE.iter().map(|(_, l)| blocks_of(*l) as usize).sum()
}

/// The store takes a new object after the damage, and keeps it over a reopen.
fn assert_usable(
    cfg: &StoreConfig,
    lost_objects: &BTreeSet<String>,
    lost_blocks: &BTreeSet<(String, u32)>,
) {
    let key = FRESH;
    let len = 2 * BLOCK + 333;
    {
        let (cache, _) = Cache::open(cfg).unwrap();
        put_full(&cache, key, len);
        assert_eq!(read_full(&cache, key).unwrap(), bytes_of(key, 0..len));
    }
    let (cache, report) = Cache::open(cfg).unwrap();
    assert_eq!(read_full(&cache, key).unwrap(), bytes_of(key, 0..len));
    assert_holds(&cache, lost_objects, lost_blocks);
    let survivors = FIXTURE.len() - lost_objects.len() + 1;
    assert_eq!(report.objects, survivors, "{report:?}");
}

/// After recovery repaired the damage (and before anything new is written), verify is clean.
fn assert_repaired(dir: &Path) {
    let v = verify_dir(dir).unwrap();
    assert!(v.is_clean(), "damage left after recovery:\n{}", v.render());
}

fn only_damage(dir: &Path) -> Damage {
    let v = verify_dir(dir).unwrap();
    assert_eq!(v.damage.len(), 1, "{}", v.render());
    v.damage[0].clone()
}

fn reopen(cfg: &StoreConfig) -> (Cache, RecoveryReport) {
    capture_logs();
    Cache::open(cfg).expect("a damaged store still opens")
}

fn set<T: Ord + Clone>(items: &[T]) -> BTreeSet<T> {
    items.iter().cloned().collect()
}

// ---------------------------------------------------------------------------------------------

#[test]
fn healthy_fixture_round_trips() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = build(dir.path());
    let slots = scan(dir.path());
    // The layout the other tests rely on: every block and record is found, and the large
    // image spans two slabs.
    assert_eq!(
        slots
            .iter()
            .filter(|s| s.header.kind == SlotKind::Data)
            .count(),
        total_blocks()
    );
    assert_eq!(
        slots
            .iter()
            .filter(|s| s.header.kind == SlotKind::Meta)
            .count(),
        FIXTURE.len()
    );
    assert!(slots.iter().any(|s| s.key == ROOTFS && s.slab == 0));
    assert!(slots.iter().any(|s| s.key == ROOTFS && s.slab == 1));
    assert_repaired(dir.path());
    let (cache, report) = reopen(&cfg);
    assert_eq!(report.dropped(), 0, "{report:?}");
    assert_eq!(report.objects, FIXTURE.len());
    assert_eq!(report.blocks, total_blocks());
    assert_eq!(assert_holds(&cache, &set(&[]), &set(&[])), total_blocks());
}

/// (a) A flipped data byte is caught by the lazy crc check on the first read after the restart:
/// the block is dropped, never served, and can be fetched again.
#[test]
fn flipped_data_byte_is_never_served() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = build(dir.path());
    let slots = scan(dir.path());
    let victim = data_slot(&slots, BIG, 1).clone();
    flip_byte(&victim.path, victim.header_off + SLOT_HEADER_LEN + 12_345);

    let d = only_damage(dir.path());
    assert_eq!(d.slab, victim.slab);
    assert_eq!(d.offset, victim.header_off);
    assert_eq!(d.reason, "data crc mismatch");
    assert_eq!(d.object.as_deref(), Some(BIG));
    assert_eq!(d.block, Some(1));

    {
        let (cache, report) = reopen(&cfg);
        // Recovery reads headers only: the block is still indexed until its first read.
        assert_eq!(report.dropped(), 0, "{report:?}");
        assert_eq!(report.blocks, total_blocks());
        assert_eq!(cache.block_statuses(BIG).unwrap()[1], BlockStatus::Ready);
        let lost = set(&[(BIG.to_string(), 1)]);
        assert_eq!(assert_holds(&cache, &set(&[]), &lost), total_blocks() - 1);
        assert_logged("block 1 of origin.test/fw/big.swu");
        assert_logged("failed its data check");
        // Still never served on a second look, and a claim now asks for a refetch.
        assert!(cache.get(BIG, 1).is_none());
        let obj = cache.lookup(BIG).unwrap();
        match cache.claim(BIG, 1, obj.version).unwrap() {
            Claim::Write(mut w) => {
                let data = bytes_of(BIG, BLOCK..2 * BLOCK);
                assert_eq!(w.write(&data), data.len());
                w.commit().unwrap();
            }
            Claim::Ready(_) => panic!("damaged block offered as ready"),
            Claim::Wait(_) => panic!("nobody else fills"),
        }
        assert_eq!(
            read_full(&cache, BIG).unwrap(),
            bytes_of(BIG, 0..fixture_len(BIG))
        );
    }
    assert_repaired(dir.path());
    assert_usable(&cfg, &set(&[]), &set(&[]));
}

/// (b) A zeroed slot header reads as free space: that block is gone, nothing else is, and an
/// object left with no block is dropped whole.
#[test]
fn zeroed_slot_header_loses_only_that_block() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = build(dir.path());
    let slots = scan(dir.path());
    for (key, block) in [(BIG, 2), (A_BIN, 0)] {
        let s = data_slot(&slots, key, block);
        write_at(&s.path, s.header_off, &[0u8; 64]);
    }
    // Free space is not damage.
    assert_repaired(dir.path());

    let lost = set(&[(BIG.to_string(), 2), (A_BIN.to_string(), 0)]);
    let gone = objects_emptied_by(&lost);
    assert_eq!(gone, set(&[A_BIN.to_string()]));
    {
        let (cache, report) = reopen(&cfg);
        assert_eq!(report.bad_headers, 0, "{report:?}");
        assert_eq!(report.empty_objects, 1, "{report:?}");
        assert_eq!(report.dropped(), 1, "{report:?}");
        assert_eq!(report.objects, FIXTURE.len() - 1);
        assert_eq!(report.blocks, total_blocks() - 2);
        assert_eq!(assert_holds(&cache, &gone, &lost), total_blocks() - 2);
    }
    assert_repaired(dir.path());
    assert_usable(&cfg, &gone, &lost);
}

/// (c) A slot header with a bad crc (or bad magic) is damage: dropped, counted, logged.
#[test]
fn garbage_slot_header_is_dropped_counted_and_logged() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = build(dir.path());
    let slots = scan(dir.path());
    // Magic intact, key hash scribbled: a bad crc.
    let s = data_slot(&slots, SMALL_2, 0);
    write_at(&s.path, s.header_off + 12, b"scribbled-over!!");
    // Nothing of the header left: bad magic.
    let t = data_slot(&slots, BIG, 1);
    write_at(&t.path, t.header_off, &[0xa5; 64]);

    let v = verify_dir(dir.path()).unwrap();
    let mut reasons: Vec<_> = v
        .damage
        .iter()
        .map(|d| (d.offset, d.reason.as_str()))
        .collect();
    reasons.sort();
    let mut want = vec![
        (s.header_off, "slot header: bad header crc"),
        (t.header_off, "slot header: bad magic"),
    ];
    want.sort();
    assert_eq!(reasons, want, "{}", v.render());

    let lost = set(&[(SMALL_2.to_string(), 0), (BIG.to_string(), 1)]);
    let gone = objects_emptied_by(&lost);
    assert_eq!(gone, set(&[SMALL_2.to_string()]));
    {
        let (cache, report) = reopen(&cfg);
        assert_eq!(report.bad_headers, 2, "{report:?}");
        assert_eq!(report.empty_objects, 1, "{report:?}");
        assert_eq!(report.dropped(), 3, "{report:?}");
        assert_logged("recovery dropped: 2 bad headers");
        assert_holds(&cache, &gone, &lost);
    }
    assert_repaired(dir.path());
    assert_usable(&cfg, &gone, &lost);
}

/// (d) A slab file cut short in the middle of a region: slots wholly before the cut survive, the
/// one the cut goes through is dropped as truncated, later ones are gone; the file is grown back.
#[test]
fn truncated_slab_keeps_the_slots_before_the_cut() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = build(dir.path());
    let slots = scan(dir.path());
    // The region of small objects: cut through the data of its second slot.
    let first = data_slot(&slots, SMALL_2, 0);
    let mut in_region: Vec<_> = slots
        .iter()
        .filter(|s| s.slab == first.slab && s.region == first.region)
        .collect();
    in_region.sort_by_key(|s| s.header_off);
    assert!(in_region.len() >= 3, "{in_region:#?}");
    let cut_slot = in_region[1];
    let cut = cut_slot.header_off + SLOT_HEADER_LEN + u64::from(cut_slot.header.data_len) / 2;
    let path = cut_slot.path.clone();
    let full_len = std::fs::metadata(&path).unwrap().len();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&path)
        .unwrap()
        .set_len(cut)
        .unwrap();

    let in_slab = || slots.iter().filter(|s| s.path == path);
    let truncated: Vec<_> = in_slab()
        .filter(|s| s.header_off + SLOT_HEADER_LEN <= cut && s.data_end() > cut)
        .collect();
    assert_eq!(truncated.len(), 1, "{truncated:#?}");
    assert_eq!(truncated[0].header_off, cut_slot.header_off);
    let lost_slots: Vec<_> = in_slab().filter(|s| s.data_end() > cut).collect();
    assert!(lost_slots.iter().all(|s| s.header.kind == SlotKind::Data));
    assert!(in_slab().any(|s| s.header.kind == SlotKind::Data && s.data_end() <= cut));
    let lost: BTreeSet<_> = lost_slots.iter().map(|s| s.id()).collect();
    let gone = objects_emptied_by(&lost);

    let v = verify_dir(dir.path()).unwrap();
    assert!(
        v.damage
            .iter()
            .any(|d| d.reason == format!("slab truncated: {cut} of {full_len} bytes")),
        "{}",
        v.render()
    );
    {
        let (cache, report) = reopen(&cfg);
        assert_eq!(report.slabs_truncated, 1, "{report:?}");
        assert_eq!(report.truncated_slots, 1, "{report:?}");
        assert_eq!(report.bad_headers, 0, "{report:?}");
        assert_eq!(report.empty_objects, gone.len(), "{report:?}");
        assert_eq!(report.blocks, total_blocks() - lost.len(), "{report:?}");
        assert_logged("1 truncated slots");
        assert_eq!(
            assert_holds(&cache, &gone, &lost),
            total_blocks() - lost.len()
        );
        assert_eq!(std::fs::metadata(&path).unwrap().len(), full_len);
    }
    assert_repaired(dir.path());
    assert_usable(&cfg, &gone, &lost);
}

/// (e) A slab whose header is damaged is started over empty; the other slabs keep their slots.
#[test]
fn corrupt_slab_header_reinitialises_only_that_slab() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = build(dir.path());
    let slots = scan(dir.path());
    let path = slab_path(dir.path(), 1);
    flip_byte(&path, 9); // in block_size: the crc no longer matches

    let d = only_damage(dir.path());
    assert_eq!((d.slab, d.offset), (1, 0));
    assert_eq!(d.reason, "slab header: bad header crc");

    let lost: BTreeSet<_> = slots
        .iter()
        .filter(|s| s.slab == 1)
        .map(|s| s.id())
        .collect();
    assert!(lost.contains(&(ROOTFS.to_string(), 69)));
    assert!(slots.iter().all(|s| s.slab == 1 || s.slab == 0));
    assert!(
        slots
            .iter()
            .filter(|s| s.header.kind == SlotKind::Meta)
            .all(|s| s.slab == 0),
        "records are all in slab 0, so only blocks are lost"
    );
    let gone = objects_emptied_by(&lost);
    {
        let (cache, report) = reopen(&cfg);
        assert_eq!(report.slabs, 4);
        assert_eq!(report.slabs_reinitialised, 1, "{report:?}");
        assert_eq!(report.empty_objects, gone.len(), "{report:?}");
        assert_eq!(report.dropped(), gone.len(), "{report:?}");
        assert_eq!(report.blocks, total_blocks() - lost.len());
        assert_logged("slab-0001.dat: slab header: bad header crc; its contents are dropped");
        let served = assert_holds(&cache, &gone, &lost);
        assert_eq!(served, total_blocks() - lost.len());
        // The image keeps its blocks in slab 0.
        assert!(cache.get(ROOTFS, 0).is_some());
    }
    assert_repaired(dir.path());
    assert_usable(&cfg, &gone, &lost);
}

/// (f) A metadata record whose bytes are damaged: the object is dropped with all its blocks.
#[test]
fn damaged_metadata_record_drops_its_object_and_blocks() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = build(dir.path());
    let slots = scan(dir.path());
    let m = meta_slot(&slots, ROOTFS);
    flip_byte(&m.path, m.header_off + SLOT_HEADER_LEN + 5); // inside the key

    let d = only_damage(dir.path());
    assert_eq!(d.offset, m.header_off);
    assert_eq!(d.reason, "data crc mismatch");
    assert_eq!(d.block, None);
    // The record is unreadable, so the object is named by its key hash.
    assert_eq!(d.object, Some(format!("{:032x}", key_hash(ROOTFS))));

    let nblocks = blocks_of(fixture_len(ROOTFS));
    let lost: BTreeSet<_> = (0..nblocks).map(|b| (ROOTFS.to_string(), b)).collect();
    let gone = set(&[ROOTFS.to_string()]);
    {
        let (cache, report) = reopen(&cfg);
        assert_eq!(report.bad_meta, 1, "{report:?}");
        assert_eq!(report.orphan_blocks, nblocks as usize, "{report:?}");
        assert_eq!(report.dropped(), 1 + nblocks as usize, "{report:?}");
        assert_eq!(report.objects, FIXTURE.len() - 1);
        assert_logged("1 bad metadata records");
        assert_holds(&cache, &gone, &lost);
    }
    assert_repaired(dir.path());
    assert_usable(&cfg, &gone, &lost);
}

/// (g) A damaged region header: every slot of that region is dropped, nothing else.
#[test]
fn corrupt_region_header_drops_its_slots_only() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = build(dir.path());
    let slots = scan(dir.path());
    // A full-block region, and the region that small objects share.
    let full = data_slot(&slots, BIG, 1).clone();
    let shared = data_slot(&slots, SMALL_2, 0).clone();
    flip_byte(&full.path, full.region_off + 10);
    flip_byte(&shared.path, shared.region_off + 10);

    let v = verify_dir(dir.path()).unwrap();
    let mut offs: Vec<_> = v.damage.iter().map(|d| d.offset).collect();
    offs.sort();
    let mut want = vec![full.region_off, shared.region_off];
    want.sort();
    assert_eq!(offs, want, "{}", v.render());
    assert!(
        v.damage
            .iter()
            .all(|d| d.reason == "region header: bad header crc")
    );

    let lost: BTreeSet<_> = slots
        .iter()
        .filter(|s| {
            [&full, &shared]
                .iter()
                .any(|r| (s.slab, s.region) == (r.slab, r.region))
        })
        .map(|s| s.id())
        .collect();
    assert!(lost.len() >= 4, "{lost:?}");
    let gone = objects_emptied_by(&lost);
    assert!(gone.contains(SMALL_2));
    {
        let (cache, report) = reopen(&cfg);
        assert_eq!(report.bad_headers, 2, "{report:?}");
        assert_eq!(report.empty_objects, gone.len(), "{report:?}");
        assert_eq!(report.dropped(), 2 + gone.len(), "{report:?}");
        assert_eq!(report.blocks, total_blocks() - lost.len());
        assert_logged("recovery dropped: 2 bad headers");
        assert_holds(&cache, &gone, &lost);
    }
    assert_repaired(dir.path());
    assert_usable(&cfg, &gone, &lost);
}

/// A slot header left from a region's earlier life (another generation) is free space: ignored
/// by recovery and by verify, even when it is otherwise valid and names a live block.
#[test]
fn slot_header_of_an_earlier_region_life_stays_dead() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = build(dir.path());
    let slots = scan(dir.path());
    let live = data_slot(&slots, SMALL_2, 0).clone();
    let used = slots
        .iter()
        .filter(|s| (s.slab, s.region) == (live.slab, live.region))
        .count() as u64;
    let free_slot = live.region_off + REGION_HEADER_LEN + used * u64::from(live.slot_size);
    assert!(
        free_slot + u64::from(live.slot_size) <= live.region_off + format::region_len(BLOCK as u32)
    );
    assert!(slots.iter().all(|s| s.header_off != free_slot));
    // Same key and block, an older sequence number, the generation of an earlier life; the
    // bytes it describes are long gone (zeros).
    let ghost = SlotHeader {
        region_generation: live.header.region_generation.wrapping_sub(1),
        seq: live.header.seq - 1,
        ..live.header
    };
    write_at(&live.path, free_slot, &ghost.encode());

    assert_repaired(dir.path());
    {
        let (cache, report) = reopen(&cfg);
        assert_eq!(report.stale_headers, 1, "{report:?}");
        assert_eq!(report.dropped(), 1, "{report:?}");
        assert_eq!(report.blocks, total_blocks());
        assert_eq!(assert_holds(&cache, &set(&[]), &set(&[])), total_blocks());
    }
    let mut now = [0u8; 64];
    std::fs::File::open(&live.path)
        .unwrap()
        .read_exact_at(&mut now, free_slot)
        .unwrap();
    assert_eq!(now, [0u8; 64], "recovery clears a stale header");
    assert_usable(&cfg, &set(&[]), &set(&[]));
}

/// Stores `meta` and fills all its blocks with the deterministic bytes of its key.
fn put_meta(cache: &Cache, meta: ObjectMeta) {
    let key = meta.key.clone();
    let obj = cache.put_object(meta).unwrap();
    for b in 0..obj.meta.block_count(cache.block_size()) {
        if let Claim::Write(mut w) = cache.claim(&key, b as u32, obj.version).unwrap() {
            let start = b * BLOCK;
            let data = bytes_of(&key, start..start + w.capacity() as u64);
            assert_eq!(w.write(&data), data.len());
            w.commit().unwrap();
        }
    }
}

/// Regression test for a dropped region coming back: the slot headers of a region whose header
/// is damaged are left on disk. When that region is the newest one, the next region assigned
/// gets its generation again (and the sequence counter restarts below its records), so a record
/// the damage took away revives under the new region header and beats the newer record.
#[test]
fn record_in_a_corrupt_region_never_overrides_a_newer_one() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), STORE_SIZE);
    // A record this large needs its own slot class, hence its own metadata region.
    let record = |stored_at: u64, cache_control: &str| ObjectMeta {
        fields: vec![("x-pad".into(), "p".repeat(1000))],
        cache_control: Some(cache_control.into()),
        stored_at,
        ..meta(GEN_KEY, 5000)
    };
    {
        let (cache, _) = Cache::open(&cfg).unwrap();
        put_full(&cache, GEN_FILLER, 5000);
        put_meta(&cache, record(1, "max-age=1"));
        // Revalidated: same version, a new record; the first one is freed.
        put_meta(&cache, record(2, "max-age=60"));
    }
    let slots = scan(dir.path());
    let old = meta_slot(&slots, GEN_KEY).clone();
    assert_ne!(
        (old.slab, old.region),
        {
            let f = meta_slot(&slots, GEN_FILLER);
            (f.slab, f.region)
        },
        "the large record has a region of its own"
    );
    flip_byte(&old.path, old.region_off + 10);
    {
        let (cache, report) = reopen(&cfg);
        assert_eq!(report.bad_headers, 1, "{report:?}");
        assert!(cache.lookup(GEN_KEY).is_none());
        // Fetched again, with a newer response.
        put_meta(&cache, record(3, "max-age=3600"));
        assert_eq!(
            *cache.lookup(GEN_KEY).unwrap().meta,
            record(3, "max-age=3600")
        );
    }
    let slots = scan(dir.path());
    let new = meta_slot(&slots, GEN_KEY);
    assert_eq!(
        (new.slab, new.region),
        (old.slab, old.region),
        "precondition: the region was reused"
    );
    let (cache, report) = reopen(&cfg);
    let got = cache
        .lookup(GEN_KEY)
        .map(|o| (o.meta.stored_at, o.meta.cache_control.clone()));
    assert_eq!(
        got,
        Some((3, Some("max-age=3600".to_string()))),
        "a record lost to damage came back and replaced the newer one; {report:?}"
    );
}
