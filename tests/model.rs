//! Property tests against simple models: the cache (objects, versions, blocks, reopen) against a
//! map of committed blocks, and the slot allocator against a map of slot ownership.

mod common;

use std::collections::{BTreeMap, BTreeSet, HashMap};

use common::*;
use gatecache::cache::{BlockStatus, Cache, CacheError, Claim};
use gatecache::store::alloc::Allocator;
use gatecache::store::format::{slot_classes, slots_per_region};
use gatecache::store::{ObjectMeta, SlotAddr, SlotKind, StoreConfig};
use proptest::prelude::*;
use proptest::test_runner::Config;

const BS: u64 = 64 * KIB;
const BS32: u32 = BS as u32;

fn proptest_config() -> Config {
    Config {
        cases: 64,
        // Shrunk failures are printed; nothing is written next to the tests.
        failure_persistence: None,
        ..Config::default()
    }
}

// ------------------------------------------------------------------------------------------------
// The cache against a model: key -> (metadata, committed blocks of the current version).

const KEYS: u8 = 4;

fn key_name(k: u8) -> String {
    format!("dl.example.org/model/{k}/package.bin")
}

fn meta_for(key: u8, len: u64, etag: u8, stamp: u8) -> ObjectMeta {
    let mut m = meta(&key_name(key), len);
    m.etag = Some(format!("\"e{etag}\""));
    // Same version, new record: the blocks must be kept.
    m.stored_at += u64::from(stamp);
    m
}

#[derive(Debug, Clone)]
enum Op {
    /// put_object; a new version when `len` or `etag` differ from the cached one.
    Put {
        key: u8,
        len: u64,
        etag: u8,
        stamp: u8,
    },
    /// Claim a block; fill it in `pieces` writes and commit (or find it Ready).
    Fill {
        key: u8,
        block: u8,
        pieces: u8,
    },
    /// Claim a block, write part of it, then abort (or drop the writer).
    Abort {
        key: u8,
        block: u8,
        cut: u16,
        explicit: bool,
    },
    Get {
        key: u8,
        block: u8,
    },
    Remove {
        key: u8,
    },
    /// Drop the cache and open the directory again.
    Reopen,
}

fn op() -> impl Strategy<Value = Op> {
    let len = prop_oneof![
        6 => 0..300 * KIB,
        1 => Just(0),
        1 => Just(BS),
        1 => Just(BS + 1),
        1 => Just(3 * BS),
    ];
    prop_oneof![
        3 => (0..KEYS, len, 0..3u8, 0..2u8)
            .prop_map(|(key, len, etag, stamp)| Op::Put { key, len, etag, stamp }),
        5 => (0..KEYS, any::<u8>(), 1..5u8)
            .prop_map(|(key, block, pieces)| Op::Fill { key, block, pieces }),
        2 => (0..KEYS, any::<u8>(), any::<u16>(), any::<bool>())
            .prop_map(|(key, block, cut, explicit)| Op::Abort { key, block, cut, explicit }),
        2 => (0..KEYS, any::<u8>()).prop_map(|(key, block)| Op::Get { key, block }),
        1 => (0..KEYS).prop_map(|key| Op::Remove { key }),
        1 => Just(Op::Reopen),
    ]
}

struct Entry {
    meta: ObjectMeta,
    blocks: BTreeSet<u32>,
}

struct Harness {
    _dir: tempfile::TempDir,
    cfg: StoreConfig,
    cache: Option<Cache>,
    model: BTreeMap<u8, Entry>,
    /// Expected bytes per (key, version, block), generated once.
    bytes: HashMap<(u8, u64, u32), Vec<u8>>,
}

impl Harness {
    fn new() -> Harness {
        let dir = tempfile::tempdir().unwrap();
        // Ample: 240 blocks for at most 4 objects of 5 blocks; nothing is ever evicted.
        let mut cfg = config(dir.path(), 16 * MIB);
        cfg.sync_data = false;
        let (cache, _) = Cache::open(&cfg).unwrap();
        Harness {
            _dir: dir,
            cfg,
            cache: Some(cache),
            model: BTreeMap::new(),
            bytes: HashMap::new(),
        }
    }

    fn cache(&self) -> &Cache {
        self.cache.as_ref().unwrap()
    }

    fn want(&mut self, key: u8, m: &ObjectMeta, b: u32) -> Vec<u8> {
        self.bytes
            .entry((key, m.version(), b))
            .or_insert_with(|| {
                let start = u64::from(b) * BS;
                let tag = format!("{}#{:x}", m.key, m.version());
                bytes_of(&tag, start..start + m.block_len(BS32, u64::from(b)))
            })
            .clone()
    }

    fn apply(&mut self, op: &Op) {
        match *op {
            Op::Put {
                key,
                len,
                etag,
                stamp,
            } => self.put(key, len, etag, stamp),
            Op::Fill { key, block, pieces } => self.fill(key, block, pieces),
            Op::Abort {
                key,
                block,
                cut,
                explicit,
            } => self.abort(key, block, cut, explicit),
            Op::Get { key, block } => self.get(key, block),
            Op::Remove { key } => {
                let removed = self.cache().remove(&key_name(key));
                assert_eq!(removed, self.model.remove(&key).is_some());
            }
            Op::Reopen => self.reopen(),
        }
    }

    fn put(&mut self, key: u8, len: u64, etag: u8, stamp: u8) {
        let m = meta_for(key, len, etag, stamp);
        let o = self.cache().put_object(m.clone()).unwrap();
        assert_eq!(*o.meta, m);
        assert_eq!(o.version, m.version());
        let e = self.model.entry(key).or_insert_with(|| Entry {
            meta: m.clone(),
            blocks: BTreeSet::new(),
        });
        if e.meta.version() != m.version() {
            e.blocks.clear();
        }
        e.meta = m;
    }

    fn fill(&mut self, key: u8, block: u8, pieces: u8) {
        let name = key_name(key);
        let Some(e) = self.model.get(&key) else {
            assert!(matches!(
                self.cache().claim(&name, 0, 0),
                Err(CacheError::NoObject)
            ));
            return;
        };
        let (m, v) = (e.meta.clone(), e.meta.version());
        let n = m.block_count(BS32) as u32;
        assert!(matches!(
            self.cache().claim(&name, n, v),
            Err(CacheError::OutOfRange(b)) if b == n
        ));
        if n == 0 {
            return;
        }
        let b = u32::from(block) % n;
        assert!(matches!(
            self.cache().claim(&name, b, v ^ 1),
            Err(CacheError::VersionChanged)
        ));
        let committed = e.blocks.contains(&b);
        let want = self.want(key, &m, b);
        match self.cache().claim(&name, b, v).unwrap() {
            Claim::Ready(buf) => {
                assert!(committed, "block {b} of {name} Ready but never committed");
                assert!(buf[..] == want[..]);
            }
            Claim::Write(mut w) => {
                assert!(
                    !committed,
                    "committed block {b} of {name} offered for writing"
                );
                assert_eq!(w.capacity(), want.len());
                let chunk = want.len().div_ceil(usize::from(pieces));
                for piece in want.chunks(chunk) {
                    assert_eq!(w.write(piece), piece.len());
                }
                assert!(w.commit().unwrap()[..] == want[..]);
                self.model.get_mut(&key).unwrap().blocks.insert(b);
            }
            Claim::Wait(_) => panic!("block {b} of {name} filling with no writer"),
        }
    }

    fn abort(&mut self, key: u8, block: u8, cut: u16, explicit: bool) {
        let name = key_name(key);
        let Some(e) = self.model.get(&key) else {
            return;
        };
        let (m, v) = (e.meta.clone(), e.meta.version());
        let n = m.block_count(BS32) as u32;
        if n == 0 {
            return;
        }
        let b = u32::from(block) % n;
        let want = self.want(key, &m, b);
        match self.cache().claim(&name, b, v).unwrap() {
            Claim::Ready(buf) => {
                assert!(self.model[&key].blocks.contains(&b));
                assert!(buf[..] == want[..]);
            }
            Claim::Write(mut w) => {
                assert!(!self.model[&key].blocks.contains(&b));
                let fill = w.fill().unwrap().clone();
                // Possibly all of it: an uncommitted complete block is still aborted.
                let upto = usize::from(cut) * want.len() / usize::from(u16::MAX);
                w.write(&want[..upto]);
                if explicit {
                    w.abort();
                } else {
                    drop(w);
                }
                assert_eq!(fill.state(), gatecache::store::FillState::Aborted);
                assert!(fill.readable()[..] == want[..upto]);
                // An object with nothing stored is forgotten with its aborted fill.
                if self.model[&key].blocks.is_empty() {
                    self.model.remove(&key);
                }
            }
            Claim::Wait(_) => panic!("block {b} of {name} filling with no writer"),
        }
    }

    fn get(&mut self, key: u8, block: u8) {
        // Checked by `check` after every op; here also past the end.
        let name = key_name(key);
        let n = self
            .model
            .get(&key)
            .map_or(0, |e| e.meta.block_count(BS32) as u32);
        let b = u32::from(block) % (n + 1);
        let got = self.cache().get(&name, b);
        match self.model.get(&key) {
            Some(e) if e.blocks.contains(&b) => {
                let m = e.meta.clone();
                assert!(got.unwrap()[..] == self.want(key, &m, b)[..]);
            }
            _ => assert!(got.is_none(), "get({name}, {b}) should miss"),
        }
    }

    fn reopen(&mut self) {
        drop(self.cache.take());
        let (cache, report) = Cache::open(&self.cfg).unwrap();
        self.cache = Some(cache);
        // Recovery keeps an object only with at least one block (or none to hold).
        let before = self.model.len();
        self.model
            .retain(|_, e| e.meta.total_len == 0 || !e.blocks.is_empty());
        assert_eq!(
            report.empty_objects,
            before - self.model.len(),
            "{report:?}"
        );
        assert_eq!(report.objects, self.model.len(), "{report:?}");
        let blocks: usize = self.model.values().map(|e| e.blocks.len()).sum();
        assert_eq!(report.blocks, blocks, "{report:?}");
        // Nothing else may be dropped: no bad, stale, orphan or superseded slot.
        assert_eq!(report.dropped(), report.empty_objects, "{report:?}");
    }

    /// The cache agrees with the model on every key and block.
    fn check(&mut self) {
        for key in 0..KEYS {
            let name = key_name(key);
            let cache = self.cache().clone();
            let Some(e) = self.model.get(&key) else {
                assert!(
                    cache.lookup(&name).is_none(),
                    "{name} cached, model has none"
                );
                assert!(cache.block_statuses(&name).is_none());
                assert!(cache.get(&name, 0).is_none());
                continue;
            };
            let (m, blocks) = (e.meta.clone(), e.blocks.clone());
            let o = cache.lookup(&name).expect("object in the model not cached");
            assert_eq!(*o.meta, m);
            assert_eq!(o.version, m.version());
            let n = m.block_count(BS32) as u32;
            let want_statuses: Vec<_> = (0..n)
                .map(|b| {
                    if blocks.contains(&b) {
                        BlockStatus::Ready
                    } else {
                        BlockStatus::Missing
                    }
                })
                .collect();
            assert_eq!(cache.block_statuses(&name).unwrap(), want_statuses);
            for b in 0..n {
                match cache.get(&name, b) {
                    Some(buf) => {
                        assert!(
                            blocks.contains(&b),
                            "{name} block {b} served, not committed"
                        );
                        assert!(buf[..] == self.want(key, &m, b)[..], "{name} block {b}");
                    }
                    None => assert!(!blocks.contains(&b), "{name} block {b} lost"),
                }
            }
            assert!(cache.get(&name, n).is_none());
        }
        let pinned: usize = self
            .cache()
            .store()
            .drives()
            .iter()
            .map(|d| d.pinned_slots())
            .sum();
        assert_eq!(pinned, 0, "a pin outlived its view");
    }
}

proptest! {
    #![proptest_config(proptest_config())]

    #[test]
    fn cache_matches_a_model_of_committed_blocks(ops in proptest::collection::vec(op(), 1..40)) {
        let mut h = Harness::new();
        for op in &ops {
            h.apply(op);
            h.check();
        }
        // And whatever the sequence, a final reopen agrees too.
        h.apply(&Op::Reopen);
        h.check();
    }
}

// ------------------------------------------------------------------------------------------------
// The allocator against a model of slot ownership.

const REGIONS: u32 = 6;

#[derive(Debug, Clone)]
enum AOp {
    Take { meta: bool, class: u8 },
    Release(u16),
    Pin(u16, bool),
    Unpin(u16),
    BeginEviction,
    EndEviction(u8),
}

fn aop(classes: usize) -> impl Strategy<Value = AOp> {
    let last = (classes - 1) as u8;
    // A few classes often (so slots collide and regions change class), any class sometimes.
    let class = prop_oneof![
        2 => Just(0u8),
        2 => Just(9u8),
        1 => Just(12u8),
        2 => Just(last),
        1 => 0..=last,
    ];
    prop_oneof![
        5 => (any::<bool>(), class).prop_map(|(meta, class)| AOp::Take { meta, class }),
        3 => any::<u16>().prop_map(AOp::Release),
        2 => (any::<u16>(), any::<bool>()).prop_map(|(i, hit)| AOp::Pin(i, hit)),
        2 => any::<u16>().prop_map(AOp::Unpin),
        1 => Just(AOp::BeginEviction),
        1 => any::<u8>().prop_map(AOp::EndEviction),
    ]
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct RegionModel {
    kind: SlotKind,
    class: u8,
    evicting: bool,
}

#[derive(Debug, Clone, Copy, Default)]
struct SlotModel {
    pins: u32,
    /// Released while pinned: still owned until the last unpin.
    doomed: bool,
}

struct AllocModel {
    classes: Vec<u32>,
    regions: Vec<Option<RegionModel>>,
    /// Every slot not free: handed out, or released but still pinned.
    owned: BTreeMap<SlotAddr, SlotModel>,
    last_generation: u32,
}

impl AllocModel {
    fn used(&self, region: u32) -> usize {
        self.owned.keys().filter(|a| a.region() == region).count()
    }

    fn pins(&self, region: u32) -> u32 {
        self.owned
            .iter()
            .filter(|(a, _)| a.region() == region)
            .map(|(_, s)| s.pins)
            .sum()
    }

    fn capacity(&self, class: u8) -> usize {
        slots_per_region(BS32, self.classes[class as usize]) as usize
    }

    /// A region with no slot left and no eviction running is free again.
    fn settle(&mut self, region: u32) {
        if let Some(r) = self.regions[region as usize]
            && !r.evicting
            && self.used(region) == 0
        {
            self.regions[region as usize] = None;
        }
    }

    /// Owned slots not yet released (the ones a release or a pin may pick).
    fn live(&self) -> Vec<SlotAddr> {
        self.owned
            .iter()
            .filter(|(_, s)| !s.doomed)
            .map(|(a, _)| *a)
            .collect()
    }

    fn free_slot(&mut self, addr: SlotAddr) {
        self.owned.remove(&addr);
        self.settle(addr.region());
    }
}

fn pick<T: Copy>(items: &[T], i: u16) -> Option<T> {
    (!items.is_empty()).then(|| items[i as usize % items.len()])
}

fn run_allocator(ops: &[AOp]) {
    let classes = slot_classes(BS32);
    let mut a = Allocator::new(0, BS32, classes.clone(), REGIONS);
    let mut m = AllocModel {
        classes: classes.clone(),
        regions: vec![None; REGIONS as usize],
        owned: BTreeMap::new(),
        last_generation: 0,
    };
    for op in ops {
        match *op {
            AOp::Take { meta, class } => take(&mut a, &mut m, &classes, meta, class),
            AOp::Release(i) => {
                let live = m.live();
                let Some(addr) = pick(&live, i) else { continue };
                let pinned = m.owned[&addr].pins > 0;
                assert_eq!(a.release(addr), !pinned, "release of {addr:?}");
                if pinned {
                    m.owned.get_mut(&addr).unwrap().doomed = true;
                } else {
                    m.free_slot(addr);
                }
            }
            AOp::Pin(i, hit) => {
                let live = m.live();
                let Some(addr) = pick(&live, i) else { continue };
                a.pin(addr, hit);
                m.owned.get_mut(&addr).unwrap().pins += 1;
            }
            AOp::Unpin(i) => {
                let pinned: Vec<_> = m
                    .owned
                    .iter()
                    .filter(|(_, s)| s.pins > 0)
                    .map(|(a, _)| *a)
                    .collect();
                let Some(addr) = pick(&pinned, i) else {
                    continue;
                };
                let s = m.owned.get_mut(&addr).unwrap();
                s.pins -= 1;
                let freed = s.pins == 0 && s.doomed;
                assert_eq!(a.unpin(addr), freed, "unpin of {addr:?}");
                if freed {
                    m.free_slot(addr);
                }
            }
            AOp::BeginEviction => begin_eviction(&mut a, &mut m),
            AOp::EndEviction(i) => {
                let evicting: Vec<u32> = (0..REGIONS)
                    .filter(|&r| m.regions[r as usize].is_some_and(|s| s.evicting))
                    .collect();
                let Some(region) = pick(&evicting, u16::from(i)) else {
                    continue;
                };
                a.end_eviction(region);
                m.regions[region as usize].as_mut().unwrap().evicting = false;
                m.settle(region);
            }
        }
        check_allocator_invariants(&a, &m, &classes, op);
    }
}

/// `AOp::Take`: a slot of this kind and class, from a region of the same, or from a free one;
/// none only when there is really no room.
fn take(a: &mut Allocator, m: &mut AllocModel, classes: &[u32], meta: bool, class: u8) {
    let kind = if meta { SlotKind::Meta } else { SlotKind::Data };
    match a.take(kind, class) {
        Some(t) => {
            let addr = t.addr;
            let region = addr.region();
            assert!(
                !m.owned.contains_key(&addr),
                "{addr:?} handed out while owned: {:?}",
                m.owned[&addr]
            );
            match t.new_region {
                Some((k, size, generation)) => {
                    assert_eq!(
                        m.regions[region as usize], None,
                        "region {region} re-assigned while in use"
                    );
                    assert_eq!((k, size), (kind, classes[class as usize]));
                    assert!(generation > m.last_generation, "generation reused");
                    m.last_generation = generation;
                    m.regions[region as usize] = Some(RegionModel {
                        kind,
                        class,
                        evicting: false,
                    });
                }
                None => assert_eq!(
                    m.regions[region as usize],
                    Some(RegionModel {
                        kind,
                        class,
                        evicting: false
                    }),
                    "slot of a region of another kind, class, or under eviction"
                ),
            }
            assert!((addr.slot() as usize) < m.capacity(class));
            assert_eq!(
                a.region_info(region).map(|i| (i.0, i.1)),
                Some((kind, class))
            );
            m.owned.insert(addr, SlotModel::default());
        }
        None => {
            // Only when there is really no room for this kind and class.
            for (r, state) in m.regions.iter().enumerate() {
                let r = r as u32;
                match state {
                    None => panic!("take({kind:?}, {class}) failed; region {r} free"),
                    Some(s) if s.kind == kind && s.class == class && !s.evicting => {
                        assert_eq!(
                            m.used(r),
                            m.capacity(class),
                            "take({kind:?}, {class}) failed; region {r} has room"
                        )
                    }
                    Some(_) => {}
                }
            }
        }
    }
}

/// `AOp::BeginEviction`: the victim is an unpinned data region with slots in use, not already
/// being evicted; none only when no region is such.
fn begin_eviction(a: &mut Allocator, m: &mut AllocModel) {
    match a.begin_eviction() {
        Some((region, used)) => {
            let r = m.regions[region as usize].expect("victim is an unassigned region");
            assert_eq!(r.kind, SlotKind::Data, "metadata region evicted");
            assert!(!r.evicting, "region {region} evicted twice at once");
            assert_eq!(m.pins(region), 0, "pinned region {region} evicted");
            let owned: Vec<u16> = m
                .owned
                .keys()
                .filter(|a| a.region() == region)
                .map(|a| a.slot())
                .collect();
            assert!(!owned.is_empty());
            assert_eq!(used, owned, "used slots of region {region}");
            m.regions[region as usize].as_mut().unwrap().evicting = true;
        }
        None => {
            for (r, state) in m.regions.iter().enumerate() {
                if let Some(s) = state {
                    let r = r as u32;
                    assert!(
                        s.kind != SlotKind::Data || s.evicting || m.pins(r) > 0 || m.used(r) == 0,
                        "no victim found, but region {r} could be evicted"
                    );
                }
            }
        }
    }
}

/// Invariants after every step (`op`, for the message).
fn check_allocator_invariants(a: &Allocator, m: &AllocModel, classes: &[u32], op: &AOp) {
    let free = m.regions.iter().filter(|r| r.is_none()).count();
    assert_eq!(a.free_region_count(), free, "free regions after {op:?}");
    assert!(a.free_region_count() <= a.region_count() as usize);
    let pinned = m.owned.values().filter(|s| s.pins > 0).count();
    assert_eq!(a.pinned_slots(), pinned);
    for (addr, s) in &m.owned {
        assert_eq!(a.is_pinned(*addr), s.pins > 0, "{addr:?}");
    }
    for r in 0..REGIONS {
        assert_eq!(
            a.region_slot_size(r),
            m.regions[r as usize].map(|s| classes[s.class as usize]),
            "slot size of region {r}"
        );
    }
}

proptest! {
    #![proptest_config(Config { cases: 256, ..proptest_config() })]

    #[test]
    fn allocator_matches_a_model_of_slot_ownership(
        ops in proptest::collection::vec(aop(slot_classes(BS32).len()), 1..200)
    ) {
        run_allocator(&ops);
    }
}

/// The allocator model on a fixed sequence: a pinned slot released is not handed out again
/// until its last pin goes, even while the allocator is otherwise full.
#[test]
fn released_pinned_slot_is_reused_only_after_the_last_unpin() {
    let large = (slot_classes(BS32).len() - 1) as u8;
    let mut ops = vec![
        AOp::Take {
            meta: false,
            class: large
        };
        REGIONS as usize
    ];
    ops.extend([
        AOp::Pin(0, true),
        AOp::Pin(0, false),
        AOp::Release(0),
        AOp::Take {
            meta: false,
            class: large,
        },
        AOp::Unpin(0),
        AOp::Take {
            meta: false,
            class: large,
        },
        AOp::Unpin(0),
        AOp::Take {
            meta: false,
            class: large,
        },
        AOp::BeginEviction,
        AOp::Take {
            meta: true,
            class: 0,
        },
        AOp::EndEviction(0),
    ]);
    run_allocator(&ops);
    // The same, with the outcome checked directly.
    let mut a = Allocator::new(0, BS32, slot_classes(BS32), 1);
    let t = a.take(SlotKind::Data, large).unwrap();
    a.pin(t.addr, true);
    assert!(!a.release(t.addr));
    assert_eq!(a.take(SlotKind::Data, large), None);
    assert_eq!(a.free_region_count(), 0);
    assert!(a.unpin(t.addr));
    assert_eq!(a.free_region_count(), 1);
    assert_eq!(a.take(SlotKind::Data, large).unwrap().addr, t.addr);
}
