//! The block index: key hash -> object entry -> one word of state per block, in shards behind
//! parking_lot locks. Entries are small addresses; bytes live in the slabs.

use std::sync::Arc;

use hashbrown::HashMap;
use parking_lot::{Mutex, MutexGuard};

use crate::store::{Fill, ObjectMeta, SlotAddr};

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
}

/// One shard of the index, behind its own lock.
#[derive(Default)]
pub struct Shard {
    /// Objects by key hash.
    pub objects: HashMap<u128, ObjectEntry>,
    /// Fills in progress, so a second claimer can wait on the first one's watermark.
    pub fills: HashMap<(u128, u32), Arc<Fill>>,
}

/// Keeps shards on separate cache lines, so two cores locking neighbours do not contend.
#[repr(align(128))]
struct Padded(Mutex<Shard>);

/// The index: objects by key hash, in shards chosen by the hash's high bits.
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
    pub fn shard(&self, key_hash: u128) -> MutexGuard<'_, Shard> {
        self.shards[(key_hash >> 64) as usize & self.mask].0.lock()
    }

    /// Shard number `i`, locked (for walks over every shard).
    pub fn shard_at(&self, i: usize) -> MutexGuard<'_, Shard> {
        self.shards[i].0.lock()
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
        i.shard(5u128 << 64).objects.insert(
            1,
            ObjectEntry {
                meta: Arc::new(ObjectMeta::default()),
                version: 0,
                meta_addr: SlotAddr::new(0, 0, 0),
                meta_seq: 0,
                blocks: Box::new([]),
            },
        );
        assert!(i.shard_at(5).objects.contains_key(&1));
    }
}
