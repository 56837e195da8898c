//! The storage engine: slab files on one or more drives, cut into slots that hold blocks of
//! objects or their metadata, with crash-safe recovery and eviction.
//!
//! The store knows slots and headers, not requests; the cache index (`crate::cache`) maps keys
//! to slots on top of it.

pub mod alloc;
pub mod drive;
pub mod evict;
pub mod format;
pub(crate) mod recover;
pub(crate) mod slab;
pub mod verify;

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

pub(crate) use drive::Evictor;
pub use drive::{Drive, PinGuard};
pub use format::{ObjectMeta, SlotKind};
pub(crate) use recover::RecoveredObject;
pub use recover::RecoveryReport;
pub(crate) use slab::SlotWriter;
pub use slab::{Fill, FillState, Slab, SlotBuf};

/// Smallest and largest block size the store accepts.
pub const MIN_BLOCK_SIZE: u32 = 64 * 1024;
pub const MAX_BLOCK_SIZE: u32 = 16 * 1024 * 1024;

/// Where a slot is: drive, region within the drive, slot within the region. Packed in 56 bits so
/// the index can keep it in one word with its state bits.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SlotAddr(u64);

impl SlotAddr {
    pub const BITS: u32 = 56;

    pub fn new(drive: u8, region: u32, slot: u16) -> SlotAddr {
        SlotAddr(u64::from(drive) << 48 | u64::from(region) << 16 | u64::from(slot))
    }
    pub fn drive(self) -> u8 {
        (self.0 >> 48) as u8
    }
    pub fn region(self) -> u32 {
        (self.0 >> 16) as u32
    }
    pub fn slot(self) -> u16 {
        self.0 as u16
    }
    pub fn to_bits(self) -> u64 {
        self.0
    }
    pub fn from_bits(bits: u64) -> SlotAddr {
        SlotAddr(bits & ((1 << Self::BITS) - 1))
    }
}

impl std::fmt::Debug for SlotAddr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}:{}", self.drive(), self.region(), self.slot())
    }
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{what} {}: {source}", path.display())]
    Io {
        path: PathBuf,
        what: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("cache directory {} is in use by another process", .0.display())]
    Locked(PathBuf),
    #[error("{0}")]
    Config(String),
    #[error("no slot can be freed: every candidate is pinned or being filled")]
    Full,
    #[error("{0} bytes do not fit in one slot")]
    TooLarge(u32),
}

/// One cache directory and its size budget.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DriveConfig {
    pub path: PathBuf,
    pub size: u64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoreConfig {
    pub drives: Vec<DriveConfig>,
    /// Power of two, 64 KiB to 16 MiB. A property of the store: changing it empties the cache.
    pub block_size: u32,
    /// Size of each slab file (the last one of a drive may be smaller).
    pub slab_size: u64,
    /// msync each block's data before its header is written (power-loss ordering). Without it a
    /// crash can still never serve a bad byte (data crcs are checked on first read), but may lose
    /// more recent blocks.
    pub sync_data: bool,
}

impl StoreConfig {
    pub fn new(drives: Vec<DriveConfig>) -> StoreConfig {
        StoreConfig {
            drives,
            block_size: 1 << 20,
            slab_size: 1 << 30,
            sync_data: true,
        }
    }

    pub fn validate(&self) -> Result<(), StoreError> {
        let bs = self.block_size;
        if !bs.is_power_of_two() || !(MIN_BLOCK_SIZE..=MAX_BLOCK_SIZE).contains(&bs) {
            return Err(StoreError::Config(format!(
                "block_size {bs}: must be a power of two from 64KiB to 16MiB"
            )));
        }
        if self.drives.is_empty() || self.drives.len() > 64 {
            return Err(StoreError::Config(format!(
                "storage: {} directories given, 1 to 64 allowed",
                self.drives.len()
            )));
        }
        for (i, d) in self.drives.iter().enumerate() {
            if self.drives[..i].iter().any(|o| o.path == d.path) {
                return Err(StoreError::Config(format!(
                    "storage {}: listed twice",
                    d.path.display()
                )));
            }
        }
        if self.slab_size < format::region_len(bs) + format::SLAB_HEADER_LEN {
            return Err(StoreError::Config(format!(
                "slab_size {}: must hold at least one block",
                self.slab_size
            )));
        }
        Ok(())
    }
}

/// All drives of a cache, and the store-wide sequence counter.
pub struct Store {
    drives: Vec<Arc<Drive>>,
    /// Cumulative capacity, for picking a drive in proportion to its size.
    weights: Vec<u64>,
    seq: AtomicU64,
    block_size: u32,
}

impl Store {
    /// Opens every drive and recovers what they hold.
    pub(crate) fn open(
        cfg: &StoreConfig,
    ) -> Result<(Store, Vec<RecoveredObject>, RecoveryReport), StoreError> {
        cfg.validate()?;
        let started = std::time::Instant::now();
        let mut drives = Vec::new();
        let mut opened = Vec::new();
        for (i, d) in cfg.drives.iter().enumerate() {
            let (drive, slabs) = Drive::open(
                i as u8,
                &d.path,
                d.size,
                cfg.block_size,
                cfg.slab_size,
                cfg.sync_data,
            )?;
            drives.push(Arc::new(drive));
            opened.push(slabs);
        }
        let (objects, mut report, max_seq) = recover::recover(&drives, &opened);
        report.elapsed = started.elapsed();
        report.log();
        let mut total = 0;
        let weights = drives
            .iter()
            .map(|d| {
                total += u64::from(d.region_count());
                total
            })
            .collect();
        let store = Store {
            drives,
            weights,
            seq: AtomicU64::new(max_seq + 1),
            block_size: cfg.block_size,
        };
        Ok((store, objects, report))
    }

    pub fn block_size(&self) -> u32 {
        self.block_size
    }

    pub fn drives(&self) -> &[Arc<Drive>] {
        &self.drives
    }

    pub fn drive(&self, id: u8) -> &Arc<Drive> {
        &self.drives[id as usize]
    }

    /// The drive a block lives on: spread by hash, in proportion to each drive's size.
    pub(crate) fn drive_for(&self, key_hash: u128, block: u32) -> &Arc<Drive> {
        if self.drives.len() == 1 {
            return &self.drives[0];
        }
        let h = xxhash_rust::xxh3::xxh3_64(
            &[key_hash.to_le_bytes(), u128::from(block).to_le_bytes()].concat(),
        );
        let total = *self.weights.last().unwrap();
        let point = h % total;
        let i = self.weights.partition_point(|&w| w <= point);
        &self.drives[i]
    }

    pub(crate) fn next_seq(&self) -> u64 {
        self.seq.fetch_add(1, Ordering::Relaxed)
    }

    /// Slots pinned right now, over all drives (tests, metrics).
    pub fn pinned_slots(&self) -> usize {
        self.drives.iter().map(|d| d.pinned_slots()).sum()
    }

    /// Total data capacity in bytes.
    pub fn capacity_bytes(&self) -> u64 {
        self.drives.iter().map(|d| d.capacity_bytes()).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slot_addr_packs_and_unpacks() {
        let a = SlotAddr::new(7, 0xdead_beef, 0x1234);
        assert_eq!((a.drive(), a.region(), a.slot()), (7, 0xdead_beef, 0x1234));
        assert_eq!(SlotAddr::from_bits(a.to_bits() | 3 << 62), a);
        assert!(a.to_bits() < 1 << SlotAddr::BITS);
    }

    #[test]
    fn config_rejects_bad_block_sizes_and_duplicates() {
        let d = DriveConfig {
            path: "/tmp/x".into(),
            size: 1 << 30,
        };
        let mut c = StoreConfig::new(vec![d.clone()]);
        assert!(c.validate().is_ok());
        for bs in [0, 1000, 32 * 1024, 32 << 20] {
            c.block_size = bs;
            let e = c.validate().unwrap_err().to_string();
            assert!(e.contains("block_size"), "{e}");
        }
        c.block_size = 1 << 20;
        c.drives.push(d);
        assert!(
            c.validate()
                .unwrap_err()
                .to_string()
                .contains("listed twice")
        );
    }
}
