//! The block index: key hash -> object entry -> one word of state per block, in shards behind
//! parking_lot locks. Entries are small addresses; bytes live in the slabs.

use std::sync::Arc;

use hashbrown::HashMap;
use parking_lot::{Mutex, MutexGuard};

use super::CacheError;
use crate::store::{Fill, ObjectMeta, SlotAddr, SlotWriter};

/// State of one block, packed with its slot address in a single word.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct BlockState(u64);

const TAG_SHIFT: u32 = 62;
const FILLING: u64 = 1;
const READY: u64 = 2;
/// Set once the block's data crc has been checked in this process run.
const VERIFIED: u64 = 1 << 61;

/// What a block is doing, as far as a request is concerned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BlockStatus {
    /// Not cached and nobody is filling it.
    Missing,
    /// A writer is filling it; readers wait on its watermark.
    Filling,
    /// Committed: readable from its slot.
    Ready,
}

impl BlockState {
    /// A missing block.
    pub const EMPTY: BlockState = BlockState(0);

    /// A block being filled into the slot at `addr`.
    pub fn filling(addr: SlotAddr) -> BlockState {
        BlockState(FILLING << TAG_SHIFT | addr.to_bits())
    }

    /// A committed block at `addr`; `verified` once its crc was checked since the last start.
    pub fn ready(addr: SlotAddr, verified: bool) -> BlockState {
        let v = if verified { VERIFIED } else { 0 };
        BlockState(READY << TAG_SHIFT | v | addr.to_bits())
    }

    /// Missing, filling or ready.
    pub fn status(self) -> BlockStatus {
        match self.0 >> TAG_SHIFT {
            0 => BlockStatus::Missing,
            FILLING => BlockStatus::Filling,
            _ => BlockStatus::Ready,
        }
    }

    /// The slot address (meaningless when missing).
    pub fn addr(self) -> SlotAddr {
        SlotAddr::from_bits(self.0)
    }

    /// Was the data crc checked since the store was opened?
    pub fn verified(self) -> bool {
        self.0 & VERIFIED != 0
    }
}

impl std::fmt::Debug for BlockState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.status() {
            BlockStatus::Missing => write!(f, "Missing"),
            s => write!(
                f,
                "{s:?}({:?}{})",
                self.addr(),
                if self.verified() { ",v" } else { "" }
            ),
        }
    }
}

/// A cached object as a request sees it: metadata plus its version (for claims).
#[derive(Clone, Debug)]
pub struct Object {
    /// The stored response metadata (headers, length, freshness).
    pub meta: Arc<ObjectMeta>,
    /// xxh3 of length + ETag + Last-Modified: blocks of another version are never mixed in.
    pub version: u64,
}

/// One cached object: its metadata and where each of its blocks is.
pub struct ObjectEntry {
    /// The stored response metadata.
    pub meta: Arc<ObjectMeta>,
    /// The object version its blocks belong to.
    pub version: u64,
    /// Where its metadata record lives.
    pub meta_addr: SlotAddr,
    /// Sequence number of the metadata record: a newer record always wins.
    pub meta_seq: u64,
    /// One state per block of the object.
    pub blocks: Box<[BlockState]>,
}

impl ObjectEntry {
    /// Has the object no block at all (a zero-length body)?
    pub fn is_empty(&self) -> bool {
        self.blocks.iter().all(|b| *b == BlockState::EMPTY)
    }

    /// How many blocks are committed.
    pub fn ready_blocks(&self) -> usize {
        self.blocks
            .iter()
            .filter(|b| b.status() == BlockStatus::Ready)
            .count()
    }

    fn object(&self) -> Object {
        Object {
            meta: self.meta.clone(),
            version: self.version,
        }
    }

    /// Slots of the entry that are the index's to give back: its committed blocks and its
    /// record (filling blocks belong to their writers, whose commit will fail).
    fn slots(&self, freed: &mut Freed) {
        for b in self.blocks.iter() {
            if b.status() == BlockStatus::Ready {
                freed.0.push(b.addr());
            }
        }
        freed.0.push(self.meta_addr);
    }
}

/// Slots an index operation took out of the index. The index does not reach the store: the
/// caller frees each one (`Drive::free`, which defers to the last unpin), after the shard lock
/// is released, as foyer's indexer hands back the records it displaced.
#[must_use = "freed slots must be given back to the store"]
#[derive(Debug, Default)]
pub struct Freed(Vec<SlotAddr>);

impl Freed {
    /// The slot addresses, in the order they left the index.
    pub fn into_addrs(self) -> Vec<SlotAddr> {
        self.0
    }

    /// Nothing was freed?
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// A metadata record just written, to install: the object's metadata, version, record slot and
/// sequence number.
pub(crate) struct Record {
    pub(crate) meta: Arc<ObjectMeta>,
    pub(crate) version: u64,
    pub(crate) addr: SlotAddr,
    pub(crate) seq: u64,
}

/// What [`Index::install`] did: the object as installed (`None`: another version or a newer
/// record stands), the block claims it made, and what it took out of the index.
pub(crate) struct Installed {
    pub(crate) object: Option<Object>,
    pub(crate) claimed: Vec<(u32, SlotWriter)>,
    pub(crate) freed: Freed,
}

/// A block as [`Index::block`] found it.
pub(crate) enum Found<R> {
    /// Not cached and nobody fills it.
    Missing,
    /// Being filled: its fill, to wait on.
    Filling(Arc<Fill>),
    /// Committed: what the caller's closure made of it under the shard lock.
    Ready(R),
}

/// One shard of the index, behind its own lock.
#[derive(Default)]
struct Shard {
    /// Objects by key hash.
    objects: HashMap<u128, ObjectEntry>,
    /// Fills in progress, so a second claimer can wait on the first one's watermark.
    fills: HashMap<(u128, u32), Arc<Fill>>,
}

impl Shard {
    /// The entry of `h` if it is `key`'s (two keys may share a hash; the key decides).
    fn entry(&self, h: u128, key: &str) -> Option<&ObjectEntry> {
        self.objects.get(&h).filter(|e| e.meta.key == key)
    }

    fn remove_fill(&mut self, h: u128, block: u32, fill: &Arc<Fill>) {
        if self
            .fills
            .get(&(h, block))
            .is_some_and(|f| Arc::ptr_eq(f, fill))
        {
            self.fills.remove(&(h, block));
        }
    }
}

/// Keeps shards on separate cache lines, so two cores locking neighbours do not contend.
#[repr(align(128))]
struct Padded(Mutex<Shard>);

/// The index: objects by key hash, in shards chosen by the hash's high bits. Its shards are
/// private: every operation takes one shard lock, does its work, and returns the slots it took
/// out ([`Freed`]) for the caller to free in the store.
pub struct Index {
    shards: Box<[Padded]>,
    mask: usize,
}

impl Index {
    /// `shards` is rounded up to a power of two.
    pub fn new(shards: usize) -> Index {
        let n = shards.max(1).next_power_of_two();
        Index {
            shards: (0..n)
                .map(|_| Padded(Mutex::new(Shard::default())))
                .collect(),
            mask: n - 1,
        }
    }

    /// Several shards per core keep two cores from waiting on each other's lock.
    pub fn default_shards() -> usize {
        let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
        (cores * 8).max(16)
    }

    /// How many shards (a power of two).
    pub fn shard_count(&self) -> usize {
        self.shards.len()
    }

    /// The shard of a key hash (its high bits; hashbrown uses the low ones inside the shard).
    fn shard(&self, key_hash: u128) -> MutexGuard<'_, Shard> {
        self.shards[(key_hash >> 64) as usize & self.mask].0.lock()
    }

    /// Adds a recovered object under `h`; the slots of an entry it displaces (another key with
    /// the same hash) come back.
    pub fn insert(&self, h: u128, entry: ObjectEntry) -> Freed {
        let mut freed = Freed::default();
        if let Some(old) = self.shard(h).objects.insert(h, entry) {
            old.slots(&mut freed);
        }
        freed
    }

    /// The object under `key` (hash `h`), if cached.
    pub(crate) fn object(&self, h: u128, key: &str) -> Option<Object> {
        self.shard(h).entry(h, key).map(ObjectEntry::object)
    }

    /// Status of each block of `key`'s object.
    pub(crate) fn block_statuses(&self, h: u128, key: &str) -> Option<Vec<BlockStatus>> {
        let shard = self.shard(h);
        let e = shard.entry(h, key)?;
        Some(e.blocks.iter().map(|b| b.status()).collect())
    }

    /// Whether all, and whether any, of `blocks` are in memory: committed, or filled to the
    /// last byte with only the commit (flush) pending. `None`: no object.
    pub(crate) fn ready_in(
        &self,
        h: u128,
        key: &str,
        blocks: std::ops::Range<u32>,
    ) -> Option<(bool, bool)> {
        let shard = self.shard(h);
        let e = shard.entry(h, key)?;
        let (mut all, mut any) = (true, false);
        for b in blocks {
            let ready = match e.blocks.get(b as usize).map(|s| s.status()) {
                Some(BlockStatus::Ready) => true,
                Some(BlockStatus::Filling) => shard
                    .fills
                    .get(&(h, b))
                    .is_some_and(|f| f.filled() == f.capacity()),
                _ => false,
            };
            all &= ready;
            any |= ready;
        }
        Some((all, any))
    }

    /// Installs `rec` under `h` (a new entry, a new version whose old ready blocks are freed,
    /// or a refresh when `expected` names the version that must still be there), then claims
    /// each of `slots` whose block is missing, all under one shard lock. A newer record or
    /// another `expected` version wins: nothing is installed and `rec`'s slot is freed. Slots
    /// not claimed are freed.
    pub(crate) fn install(
        &self,
        h: u128,
        rec: &Record,
        expected: Option<u64>,
        nblocks: usize,
        slots: Vec<(u32, SlotWriter)>,
    ) -> Installed {
        let mut freed = Freed::default();
        let mut shard = self.shard(h);
        let object = match shard.objects.get_mut(&h) {
            Some(e) if expected.is_some_and(|v| v != e.version) => {
                // Replaced by another version since the caller looked: that one stands.
                freed.0.push(rec.addr);
                None
            }
            Some(e) if e.meta_seq > rec.seq => {
                // A newer record was installed while ours was being written.
                freed.0.push(rec.addr);
                (e.version == rec.version).then(|| e.object())
            }
            Some(e) => {
                freed.0.push(e.meta_addr);
                if e.version != rec.version || e.meta.key != rec.meta.key {
                    for b in e.blocks.iter() {
                        if b.status() == BlockStatus::Ready {
                            freed.0.push(b.addr());
                        }
                    }
                    // Filling blocks belong to the old version: their commit will fail.
                    e.blocks = vec![BlockState::EMPTY; nblocks].into_boxed_slice();
                }
                e.meta = rec.meta.clone();
                e.version = rec.version;
                e.meta_addr = rec.addr;
                e.meta_seq = rec.seq;
                Some(e.object())
            }
            None => {
                let e = ObjectEntry {
                    meta: rec.meta.clone(),
                    version: rec.version,
                    meta_addr: rec.addr,
                    meta_seq: rec.seq,
                    blocks: vec![BlockState::EMPTY; nblocks].into_boxed_slice(),
                };
                let o = e.object();
                shard.objects.insert(h, e);
                Some(o)
            }
        };
        let mut claimed = Vec::with_capacity(slots.len());
        for (b, w) in slots {
            if object.is_some() && shard.claim(h, None, b, rec.version, w.fill()) {
                claimed.push((b, w));
            } else {
                freed.0.push(w.fill().addr());
            }
        }
        Installed {
            object,
            claimed,
            freed,
        }
    }

    /// Takes `key`'s object out of the index; its slots come back (`None`: not cached).
    pub(crate) fn remove(&self, h: u128, key: &str) -> Option<Freed> {
        let e = {
            let mut shard = self.shard(h);
            shard.entry(h, key)?;
            shard.objects.remove(&h)?
        };
        let mut freed = Freed::default();
        e.slots(&mut freed);
        Some(freed)
    }

    /// Marks block `block` of version `version` of `key` as filling into `fill`'s slot if it
    /// is missing; `false` if someone else has it or the object changed.
    pub(crate) fn claim(
        &self,
        h: u128,
        key: &str,
        block: u32,
        version: u64,
        fill: &Arc<Fill>,
    ) -> bool {
        self.shard(h).claim(h, Some(key), block, version, fill)
    }

    /// Looks at block `block` of version `version` of `key`. A committed block is handed to
    /// `ready` (the object's metadata and the block's state) **while the shard lock is held**,
    /// so the caller can pin its slot before anything can free it. Errors: `NoObject`,
    /// `VersionChanged`, `OutOfRange`.
    pub(crate) fn block<R>(
        &self,
        h: u128,
        key: &str,
        block: u32,
        version: u64,
        ready: impl FnOnce(&ObjectMeta, BlockState) -> R,
    ) -> Result<Found<R>, CacheError> {
        let shard = self.shard(h);
        let e = shard.entry(h, key).ok_or(CacheError::NoObject)?;
        if e.version != version {
            return Err(CacheError::VersionChanged);
        }
        let state = *e
            .blocks
            .get(block as usize)
            .ok_or(CacheError::OutOfRange(block))?;
        Ok(match state.status() {
            BlockStatus::Missing => Found::Missing,
            BlockStatus::Filling => Found::Filling(
                shard
                    .fills
                    .get(&(h, block))
                    .expect("fill of a filling block")
                    .clone(),
            ),
            BlockStatus::Ready => Found::Ready(ready(&e.meta, state)),
        })
    }

    /// Records the data check of block `block` of `h`, read from `addr`: a good block is marked
    /// verified (`true`); a bad one is made missing and its slot comes back (`false`). Also
    /// `false`, freeing nothing, when the block is no longer `Ready` at `addr`.
    pub(crate) fn checked(&self, h: u128, block: u32, addr: SlotAddr, good: bool) -> (bool, Freed) {
        let mut freed = Freed::default();
        let mut shard = self.shard(h);
        let Some(e) = shard.objects.get_mut(&h) else {
            return (false, freed);
        };
        let Some(state) = e.blocks.get_mut(block as usize) else {
            return (false, freed);
        };
        if state.status() != BlockStatus::Ready || state.addr() != addr {
            return (false, freed);
        }
        if good {
            *state = BlockState::ready(addr, true);
            return (true, freed);
        }
        log::error!(
            "block {block} of {} at {addr:?} failed its data check; dropped",
            e.meta.key
        );
        *state = BlockState::EMPTY;
        freed.0.push(addr);
        (false, freed)
    }

    /// Eviction asks for the data slot `addr` holding block `block` of `h`: granted (`Some`)
    /// when it is that block's committed slot and `pinned(addr)` says no reader holds it. The
    /// slot itself goes to the evictor; an object left with no block is dropped and its record
    /// slot comes back.
    pub(crate) fn evict(
        &self,
        h: u128,
        block: u32,
        addr: SlotAddr,
        pinned: impl FnOnce(SlotAddr) -> bool,
    ) -> Option<Freed> {
        let mut shard = self.shard(h);
        let e = shard.objects.get_mut(&h)?;
        let state = e.blocks.get_mut(block as usize)?;
        if state.status() != BlockStatus::Ready || state.addr() != addr || pinned(addr) {
            return None;
        }
        *state = BlockState::EMPTY;
        let mut freed = Freed::default();
        if e.is_empty() {
            // An object with no block left is dropped with its metadata record.
            freed.0.push(e.meta_addr);
            shard.objects.remove(&h);
        }
        Some(freed)
    }

    /// A writer of block `block` of version `version` of `h` committed into `fill`'s slot: the
    /// block becomes `Ready` (and verified) if it is still that writer's (`false`: the object
    /// changed, the caller frees its slot). The fill is unregistered either way.
    pub(crate) fn commit(&self, h: u128, block: u32, version: u64, fill: &Arc<Fill>) -> bool {
        let addr = fill.addr();
        let mut shard = self.shard(h);
        let ok = match shard.objects.get_mut(&h) {
            Some(e) if e.version == version => match e.blocks.get_mut(block as usize) {
                Some(s) if *s == BlockState::filling(addr) => {
                    *s = BlockState::ready(addr, true);
                    true
                }
                _ => false,
            },
            _ => false,
        };
        shard.remove_fill(h, block, fill);
        ok
    }

    /// A writer of block `block` of `h` gave up on `fill`'s slot (the caller frees it): the
    /// block is missing again. An object left with no block at all was never stored: it is
    /// forgotten and its record slot comes back.
    pub(crate) fn abort(&self, h: u128, block: u32, fill: &Arc<Fill>) -> Freed {
        let addr = fill.addr();
        let mut freed = Freed::default();
        let mut shard = self.shard(h);
        shard.remove_fill(h, block, fill);
        if let Some(e) = shard.objects.get_mut(&h)
            && let Some(s) = e.blocks.get_mut(block as usize)
            && *s == BlockState::filling(addr)
        {
            *s = BlockState::EMPTY;
            if e.is_empty() {
                freed.0.push(e.meta_addr);
                shard.objects.remove(&h);
            }
        }
        freed
    }

    /// Counts over every shard: (objects, blocks committed, blocks being filled).
    pub(crate) fn counts(&self) -> (u64, u64, u64) {
        let (mut objects, mut ready, mut filling) = (0u64, 0u64, 0u64);
        for p in self.shards.iter() {
            let shard = p.0.lock();
            for e in shard.objects.values() {
                objects += 1;
                ready += e.ready_blocks() as u64;
            }
            filling += shard.fills.len() as u64;
        }
        (objects, ready, filling)
    }

    /// Every object with its number of committed blocks.
    pub(crate) fn objects(&self) -> Vec<(Object, usize)> {
        let mut out = Vec::new();
        for p in self.shards.iter() {
            for e in p.0.lock().objects.values() {
                out.push((e.object(), e.ready_blocks()));
            }
        }
        out
    }
}

impl Shard {
    /// Marks block `b` of `h` (of version `version`, and `key`'s when given) as filling into
    /// `fill`'s slot if it is missing, and registers the fill.
    fn claim(
        &mut self,
        h: u128,
        key: Option<&str>,
        b: u32,
        version: u64,
        fill: &Arc<Fill>,
    ) -> bool {
        let Some(e) = self.objects.get_mut(&h) else {
            return false;
        };
        if e.version != version || key.is_some_and(|k| e.meta.key != k) {
            return false;
        }
        match e.blocks.get_mut(b as usize) {
            Some(s) if *s == BlockState::EMPTY => *s = BlockState::filling(fill.addr()),
            _ => return false,
        }
        self.fills.insert((h, b), fill.clone());
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn block_state_packs_tag_flag_and_address() {
        let a = SlotAddr::new(3, 123_456, 789);
        assert_eq!(BlockState::EMPTY.status(), BlockStatus::Missing);
        let f = BlockState::filling(a);
        assert_eq!(
            (f.status(), f.addr(), f.verified()),
            (BlockStatus::Filling, a, false)
        );
        let r = BlockState::ready(a, true);
        assert_eq!(
            (r.status(), r.addr(), r.verified()),
            (BlockStatus::Ready, a, true)
        );
        assert_ne!(BlockState::ready(a, false), r);
    }

    #[test]
    fn shards_are_a_power_of_two_and_stable() {
        let i = Index::new(20);
        assert_eq!(i.shard_count(), 32);
        let freed = i.insert(
            1 | 5u128 << 64,
            ObjectEntry {
                meta: Arc::new(ObjectMeta::default()),
                version: 0,
                meta_addr: SlotAddr::new(0, 0, 0),
                meta_seq: 0,
                blocks: Box::new([]),
            },
        );
        assert!(freed.is_empty());
        assert!(
            i.shards[5]
                .0
                .lock()
                .objects
                .contains_key(&(1 | 5u128 << 64))
        );
    }

    fn entry(meta_addr: SlotAddr, blocks: &[SlotAddr]) -> ObjectEntry {
        let meta = ObjectMeta {
            key: "k".into(),
            ..Default::default()
        };
        ObjectEntry {
            version: 1,
            meta: Arc::new(meta),
            meta_addr,
            meta_seq: 1,
            blocks: blocks.iter().map(|&a| BlockState::ready(a, true)).collect(),
        }
    }

    fn record(version: u64, seq: u64, addr: SlotAddr) -> Record {
        let meta = ObjectMeta {
            key: "k".into(),
            ..Default::default()
        };
        Record {
            meta: Arc::new(meta),
            version,
            addr,
            seq,
        }
    }

    const H: u128 = 7 << 64 | 7;

    #[test]
    fn removing_an_object_gives_back_its_blocks_and_its_record() {
        let i = Index::new(4);
        let (m, a, b) = (
            SlotAddr::new(0, 0, 1),
            SlotAddr::new(0, 1, 0),
            SlotAddr::new(0, 2, 0),
        );
        assert!(i.insert(H, entry(m, &[a, b])).is_empty());
        assert!(i.remove(H, "other key").is_none(), "the key decides");
        assert_eq!(i.remove(H, "k").unwrap().into_addrs(), [a, b, m]);
        assert!(i.object(H, "k").is_none());
        assert!(i.remove(H, "k").is_none());
    }

    #[test]
    fn a_new_version_gives_back_the_old_blocks_and_record_a_refresh_only_the_record() {
        let i = Index::new(4);
        let (m, a) = (SlotAddr::new(0, 0, 1), SlotAddr::new(0, 1, 0));
        let _ = i.insert(H, entry(m, &[a]));
        // Same version (a refresh after a 304): the blocks stay, the old record goes.
        let m2 = SlotAddr::new(0, 0, 2);
        let done = i.install(H, &record(1, 2, m2), Some(1), 1, Vec::new());
        assert_eq!(done.object.unwrap().version, 1);
        assert_eq!(done.freed.into_addrs(), [m]);
        assert_eq!(i.block_statuses(H, "k").unwrap(), [BlockStatus::Ready]);
        // A refresh expecting a version that is no longer there installs nothing.
        let m3 = SlotAddr::new(0, 0, 3);
        let done = i.install(H, &record(2, 3, m3), Some(9), 1, Vec::new());
        assert!(done.object.is_none());
        assert_eq!(done.freed.into_addrs(), [m3]);
        // Another version: the old record and its blocks go.
        let done = i.install(H, &record(2, 4, m3), None, 1, Vec::new());
        assert_eq!(done.object.unwrap().version, 2);
        assert_eq!(done.freed.into_addrs(), [m2, a]);
        assert_eq!(i.block_statuses(H, "k").unwrap(), [BlockStatus::Missing]);
        // An older record than the one installed loses.
        let m4 = SlotAddr::new(0, 0, 4);
        let done = i.install(H, &record(3, 1, m4), None, 1, Vec::new());
        assert!(done.object.is_none());
        assert_eq!(done.freed.into_addrs(), [m4]);
    }

    #[test]
    fn evicting_the_last_block_drops_the_object_and_gives_back_its_record() {
        let i = Index::new(4);
        let (m, a, b) = (
            SlotAddr::new(0, 0, 1),
            SlotAddr::new(0, 1, 0),
            SlotAddr::new(0, 2, 0),
        );
        let _ = i.insert(H, entry(m, &[a, b]));
        assert!(i.evict(H, 0, a, |_| true).is_none(), "pinned: refused");
        assert!(
            i.evict(H, 0, b, |_| false).is_none(),
            "not that block's slot"
        );
        assert!(i.evict(H, 0, a, |_| false).unwrap().is_empty());
        assert!(i.evict(H, 0, a, |_| false).is_none(), "already gone");
        assert_eq!(i.evict(H, 1, b, |_| false).unwrap().into_addrs(), [m]);
        assert!(i.object(H, "k").is_none());
    }

    #[test]
    fn a_block_that_fails_its_check_is_dropped_and_its_slot_given_back() {
        let i = Index::new(4);
        let (m, a) = (SlotAddr::new(0, 0, 1), SlotAddr::new(0, 1, 0));
        let mut e = entry(m, &[a]);
        e.blocks[0] = BlockState::ready(a, false);
        let _ = i.insert(H, e);
        let (served, freed) = i.checked(H, 0, a, false);
        assert!(!served);
        assert_eq!(freed.into_addrs(), [a]);
        assert_eq!(i.block_statuses(H, "k").unwrap(), [BlockStatus::Missing]);
        let (served, freed) = i.checked(H, 0, a, true);
        assert!(!served && freed.is_empty(), "no longer that block's slot");
    }
}
