//! Slot allocation for one drive: regions, slot classes, free bitmaps, pins and the eviction
//! queue. Pure bookkeeping behind the drive's lock; the drive does the header I/O.

use hashbrown::HashMap;

use super::SlotAddr;
use super::evict::Sieve;
use super::format::{SlotKind, slots_per_region};

const UNASSIGNED: u8 = u8::MAX;

/// Free-slot bits of one region (1 = free). A full-block region has one slot, so the common case
/// stays inline; only small-slot regions allocate.
enum SlotBits {
    Inline(u64),
    Heap(Box<[u64]>),
}

impl SlotBits {
    fn all_free(n: u32) -> SlotBits {
        let word = |bits: u32| {
            if bits >= 64 {
                u64::MAX
            } else {
                (1u64 << bits) - 1
            }
        };
        if n <= 64 {
            SlotBits::Inline(word(n))
        } else {
            let words = n.div_ceil(64);
            SlotBits::Heap(
                (0..words)
                    .map(|w| word(n - w * 64))
                    .collect::<Vec<_>>()
                    .into_boxed_slice(),
            )
        }
    }

    fn words_mut(&mut self) -> &mut [u64] {
        match self {
            SlotBits::Inline(w) => std::slice::from_mut(w),
            SlotBits::Heap(b) => b,
        }
    }

    fn take_first(&mut self) -> Option<u16> {
        for (i, w) in self.words_mut().iter_mut().enumerate() {
            if *w != 0 {
                let bit = w.trailing_zeros();
                *w &= !(1u64 << bit);
                return Some((i as u32 * 64 + bit) as u16);
            }
        }
        None
    }

    fn set(&mut self, slot: u16, free: bool) {
        let w = &mut self.words_mut()[slot as usize / 64];
        let m = 1u64 << (slot % 64);
        if free { *w |= m } else { *w &= !m }
    }

    fn any_free(&mut self) -> bool {
        self.words_mut().iter().any(|&w| w != 0)
    }

    fn is_free(&mut self, slot: u16) -> bool {
        self.words_mut()[slot as usize / 64] & (1u64 << (slot % 64)) != 0
    }
}

struct Region {
    free: SlotBits,
    used: u32,
    pins: u32,
    generation: u32,
    class: u8,
    kind: SlotKind,
    evicting: bool,
    in_partial: bool,
}

/// Pin count of one slot, and whether it was freed while pinned (recycled on the last unpin).
#[derive(Clone, Copy)]
struct PinCount {
    n: u32,
    doomed: bool,
}

/// What a newly taken slot needs written before use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Taken {
    /// The slot, now used (its free bit cleared).
    pub addr: SlotAddr,
    /// Set when the region was free and has just been given this class: write its header,
    /// `(kind, slot size in bytes, generation)`, as a
    /// [`RegionHeader`](super::format::RegionHeader).
    pub new_region: Option<(SlotKind, u32, u32)>,
}

/// The slot bookkeeping of one drive: each region's class and free bits, the free-region pool,
/// pin counts and the SIEVE queue over data regions. No I/O: the drive calls it under its lock
/// and writes the headers it is told to. Measured: 45.0 bytes per cached block, of 53.6 with
/// the index (target 64; 1,000 objects of 1,000 blocks, perf/RESULTS.md).
pub struct Allocator {
    drive: u8,
    block_size: u32,
    classes: Vec<u32>,
    regions: Vec<Region>,
    free_regions: Vec<u32>,
    /// Regions with at least one free slot, per (kind, class); may hold stale ids (checked on use).
    partial: Vec<Vec<u32>>,
    sieve: Sieve,
    pins: HashMap<SlotAddr, PinCount>,
    next_generation: u32,
}

impl Allocator {
    /// All `regions` free, for drive `drive` with blocks of `block_size` bytes and the slot
    /// sizes `classes` (from [`slot_classes`](super::format::slot_classes)). Free regions are
    /// handed out lowest first.
    pub fn new(drive: u8, block_size: u32, classes: Vec<u32>, regions: u32) -> Allocator {
        let n = classes.len();
        Allocator {
            drive,
            block_size,
            classes,
            regions: (0..regions)
                .map(|_| Region {
                    free: SlotBits::Inline(0),
                    used: 0,
                    pins: 0,
                    generation: 0,
                    class: UNASSIGNED,
                    kind: SlotKind::Data,
                    evicting: false,
                    in_partial: false,
                })
                .collect(),
            // Popped from the back: hand out low regions first, so a young cache is compact.
            free_regions: (0..regions).rev().collect(),
            partial: vec![Vec::new(); 2 * n],
            sieve: Sieve::new(regions as usize),
            pins: HashMap::new(),
            next_generation: 1,
        }
    }

    /// The slot sizes in bytes, header included, smallest first; a class is an index into it.
    pub fn classes(&self) -> &[u32] {
        &self.classes
    }

    /// Regions of the drive.
    pub fn region_count(&self) -> u32 {
        self.regions.len() as u32
    }

    /// Regions assigned to no class.
    pub fn free_region_count(&self) -> usize {
        self.free_regions.len()
    }

    fn partial_list(&mut self, kind: SlotKind, class: u8) -> &mut Vec<u32> {
        let i = (kind as usize - 1) * self.classes.len() + class as usize;
        &mut self.partial[i]
    }

    fn slots_in(&self, class: u8) -> u32 {
        slots_per_region(self.block_size, self.classes[class as usize])
    }

    /// Slot size (header included) of a region, if assigned.
    pub fn region_slot_size(&self, region: u32) -> Option<u32> {
        let r = &self.regions[region as usize];
        (r.class != UNASSIGNED).then(|| self.classes[r.class as usize])
    }

    /// Kind, class and generation of a region, if assigned.
    pub fn region_info(&self, region: u32) -> Option<(SlotKind, u8, u32)> {
        let r = &self.regions[region as usize];
        (r.class != UNASSIGNED).then_some((r.kind, r.class, r.generation))
    }

    /// Takes a free slot of `class`, assigning a free region to the class if needed. `None`
    /// when neither is left: the caller evicts ([`Allocator::begin_eviction`]).
    pub fn take(&mut self, kind: SlotKind, class: u8) -> Option<Taken> {
        while let Some(&region) = self.partial_list(kind, class).last() {
            let r = &mut self.regions[region as usize];
            if r.class != class || r.kind != kind || r.evicting {
                self.partial_list(kind, class).pop();
                self.regions[region as usize].in_partial = false;
                continue;
            }
            if let Some(slot) = r.free.take_first() {
                r.used += 1;
                return Some(Taken {
                    addr: SlotAddr::new(self.drive, region, slot),
                    new_region: None,
                });
            }
            r.in_partial = false;
            self.partial_list(kind, class).pop();
        }
        let region = self.free_regions.pop()?;
        let generation = self.next_generation;
        self.next_generation = self.next_generation.wrapping_add(1).max(1);
        self.assign(region, kind, class, generation);
        let r = &mut self.regions[region as usize];
        let slot = r.free.take_first().expect("fresh region has a free slot");
        r.used = 1;
        Some(Taken {
            addr: SlotAddr::new(self.drive, region, slot),
            new_region: Some((kind, self.classes[class as usize], generation)),
        })
    }

    fn assign(&mut self, region: u32, kind: SlotKind, class: u8, generation: u32) {
        let n = self.slots_in(class);
        let r = &mut self.regions[region as usize];
        r.free = SlotBits::all_free(n);
        r.used = 0;
        r.class = class;
        r.kind = kind;
        r.generation = generation;
        r.evicting = false;
        r.in_partial = n > 1;
        if n > 1 {
            self.partial_list(kind, class).push(region);
        }
        if kind == SlotKind::Data {
            self.sieve.insert(region);
        }
    }

    /// Recovery: a region found with a valid header. The free pool is rebuilt afterwards by
    /// [`Allocator::finish_restore`].
    pub fn restore_region(&mut self, region: u32, kind: SlotKind, class: u8, generation: u32) {
        self.assign(region, kind, class, generation);
        self.next_generation = self.next_generation.max(generation.wrapping_add(1)).max(1);
    }

    /// Recovery: a slot that survived.
    pub fn restore_slot(&mut self, addr: SlotAddr) {
        let r = &mut self.regions[addr.region() as usize];
        debug_assert!(r.free.is_free(addr.slot()));
        r.free.set(addr.slot(), false);
        r.used += 1;
    }

    /// Recovery: rebuilds the free pool from the unassigned regions, and returns assigned
    /// regions that ended up with no live slot to it.
    pub fn finish_restore(&mut self) {
        self.free_regions.clear();
        for region in (0..self.regions.len() as u32).rev() {
            let r = &self.regions[region as usize];
            if r.class == UNASSIGNED {
                self.free_regions.push(region);
            } else if r.used == 0 {
                self.unassign(region);
            }
        }
    }

    fn unassign(&mut self, region: u32) {
        let r = &mut self.regions[region as usize];
        r.class = UNASSIGNED;
        r.free = SlotBits::Inline(0);
        r.evicting = false;
        r.used = 0;
        self.sieve.remove(region);
        self.free_regions.push(region);
    }

    /// Returns a slot to the free pool, unless pinned (then it is recycled on the last unpin).
    /// Returns true if the slot is free now (its header should be cleared by the caller).
    ///
    /// # Panics
    ///
    /// If the slot is unpinned and already free.
    pub fn release(&mut self, addr: SlotAddr) -> bool {
        if let Some(p) = self.pins.get_mut(&addr) {
            p.doomed = true;
            return false;
        }
        self.release_now(addr);
        true
    }

    fn release_now(&mut self, addr: SlotAddr) {
        let region = addr.region();
        let (kind, class, n) = {
            let r = &mut self.regions[region as usize];
            assert!(!r.free.is_free(addr.slot()), "double free of {addr:?}");
            r.free.set(addr.slot(), true);
            r.used -= 1;
            (r.kind, r.class, r.used)
        };
        if n == 0 && !self.regions[region as usize].evicting {
            self.unassign(region);
        } else if !self.regions[region as usize].in_partial {
            self.regions[region as usize].in_partial = true;
            self.partial_list(kind, class).push(region);
        }
    }

    /// Pins a slot; `hit` marks its region as recently used for eviction (a writer's own pin
    /// does not, so blocks read once are evicted first, as SIEVE intends).
    pub fn pin(&mut self, addr: SlotAddr, hit: bool) {
        let p = self.pins.entry(addr).or_insert(PinCount {
            n: 0,
            doomed: false,
        });
        p.n += 1;
        let r = &mut self.regions[addr.region() as usize];
        r.pins += 1;
        if hit && r.kind == SlotKind::Data {
            self.sieve.touch(addr.region());
        }
    }

    /// Drops a pin; returns true if this freed a doomed slot (caller clears its header).
    ///
    /// # Panics
    ///
    /// If `addr` is not pinned.
    pub fn unpin(&mut self, addr: SlotAddr) -> bool {
        let p = self.pins.get_mut(&addr).expect("unpin of an unpinned slot");
        p.n -= 1;
        self.regions[addr.region() as usize].pins -= 1;
        if p.n > 0 {
            return false;
        }
        let doomed = p.doomed;
        self.pins.remove(&addr);
        if doomed {
            self.release_now(addr);
        }
        doomed
    }

    /// Whether `addr` holds at least one pin.
    pub fn is_pinned(&self, addr: SlotAddr) -> bool {
        self.pins.contains_key(&addr)
    }

    /// Slots holding at least one pin.
    pub fn pinned_slots(&self) -> usize {
        self.pins.len()
    }

    /// Picks a data region to evict and marks it so nothing is allocated in it meanwhile.
    /// Returns the region and its used slots.
    pub fn begin_eviction(&mut self) -> Option<(u32, Vec<u16>)> {
        let regions = &self.regions;
        let victim = self.sieve.victim(|id| {
            let r = &regions[id as usize];
            r.pins == 0 && !r.evicting && r.used > 0
        })?;
        let n = self.slots_in(self.regions[victim as usize].class);
        let r = &mut self.regions[victim as usize];
        r.evicting = true;
        let used = (0..n as u16).filter(|&s| !r.free.is_free(s)).collect();
        Some((victim, used))
    }

    /// Ends an eviction begun with [`Allocator::begin_eviction`].
    pub fn end_eviction(&mut self, region: u32) {
        let r = &mut self.regions[region as usize];
        r.evicting = false;
        if r.used == 0 {
            self.unassign(region);
        } else if !r.in_partial && r.free.any_free() {
            let (kind, class) = (r.kind, r.class);
            r.in_partial = true;
            self.partial_list(kind, class).push(region);
        }
    }

    /// Bytes of heap this allocator uses, as it counts them (region table, bitmaps, free list,
    /// SIEVE links: 9 bytes per region); the pin table and partial lists are left out.
    /// `tests/footprint.rs` prints it beside a counting global allocator's figure.
    pub fn heap_bytes(&self) -> usize {
        let bits: usize = self
            .regions
            .iter()
            .map(|r| match &r.free {
                SlotBits::Heap(b) => b.len() * 8,
                SlotBits::Inline(_) => 0,
            })
            .sum();
        self.regions.capacity() * std::mem::size_of::<Region>()
            + bits
            + self.free_regions.capacity() * 4
            + self.regions.len() * 9
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::format::slot_classes;

    const BS: u32 = 64 * 1024;

    fn alloc(regions: u32) -> Allocator {
        Allocator::new(0, BS, slot_classes(BS), regions)
    }

    fn large(a: &Allocator) -> u8 {
        (a.classes().len() - 1) as u8
    }

    #[test]
    fn large_class_uses_one_region_per_slot() {
        let mut a = alloc(3);
        let c = large(&a);
        let t1 = a.take(SlotKind::Data, c).unwrap();
        assert!(t1.new_region.is_some());
        let t2 = a.take(SlotKind::Data, c).unwrap();
        assert_ne!(t1.addr.region(), t2.addr.region());
        a.take(SlotKind::Data, c).unwrap();
        assert_eq!(a.take(SlotKind::Data, c), None);
        assert!(a.release(t2.addr));
        let t4 = a.take(SlotKind::Data, c).unwrap();
        assert_eq!(t4.addr.region(), t2.addr.region());
    }

    #[test]
    fn small_class_packs_a_region_before_taking_another() {
        let mut a = alloc(4);
        let n = slots_per_region(BS, a.classes()[0]);
        let mut regions = std::collections::HashSet::new();
        for _ in 0..n {
            regions.insert(a.take(SlotKind::Meta, 0).unwrap().addr.region());
        }
        assert_eq!(regions.len(), 1);
        let next = a.take(SlotKind::Meta, 0).unwrap();
        assert!(!regions.contains(&next.addr.region()));
        assert_eq!(a.free_region_count(), 2);
    }

    #[test]
    fn kinds_never_share_a_region() {
        let mut a = alloc(4);
        let m = a.take(SlotKind::Meta, 0).unwrap();
        let d = a.take(SlotKind::Data, 0).unwrap();
        assert_ne!(m.addr.region(), d.addr.region());
    }

    #[test]
    fn empty_region_returns_to_pool_and_class_can_change() {
        let mut a = alloc(1);
        let t = a.take(SlotKind::Data, 3).unwrap();
        assert_eq!(a.take(SlotKind::Data, large(&a)), None);
        assert!(a.release(t.addr));
        assert_eq!(a.free_region_count(), 1);
        assert!(a.take(SlotKind::Data, large(&a)).is_some());
    }

    #[test]
    fn pinned_slot_is_recycled_only_after_last_unpin() {
        let mut a = alloc(1);
        let c = large(&a);
        let t = a.take(SlotKind::Data, c).unwrap();
        a.pin(t.addr, true);
        a.pin(t.addr, false);
        assert!(!a.release(t.addr));
        assert_eq!(a.take(SlotKind::Data, c), None);
        assert!(!a.unpin(t.addr));
        assert_eq!(a.take(SlotKind::Data, c), None);
        assert!(a.unpin(t.addr));
        assert!(a.take(SlotKind::Data, c).is_some());
    }

    #[test]
    fn eviction_skips_pinned_regions_and_blocks_allocation_meanwhile() {
        let mut a = alloc(2);
        let c = large(&a);
        let t0 = a.take(SlotKind::Data, c).unwrap();
        let t1 = a.take(SlotKind::Data, c).unwrap();
        a.pin(t0.addr, true);
        let (victim, used) = a.begin_eviction().unwrap();
        assert_eq!(victim, t1.addr.region());
        assert_eq!(used, vec![0]);
        assert!(a.release(t1.addr));
        // Still marked: not handed out until the eviction ends.
        assert_eq!(a.take(SlotKind::Data, c), None);
        a.end_eviction(victim);
        assert_eq!(a.take(SlotKind::Data, c).unwrap().addr, t1.addr);
        assert_eq!(a.begin_eviction().map(|v| v.0), Some(t1.addr.region()));
    }

    #[test]
    fn restore_marks_slots_used() {
        let mut a = alloc(2);
        a.restore_region(1, SlotKind::Meta, 0, 9);
        a.restore_slot(SlotAddr::new(0, 1, 5));
        a.finish_restore();
        assert_eq!(a.free_region_count(), 1);
        let t = a.take(SlotKind::Meta, 0).unwrap();
        assert_eq!(t.addr, SlotAddr::new(0, 1, 0));
        assert!(a.take(SlotKind::Data, 0).unwrap().new_region.unwrap().2 > 9);
    }
}
