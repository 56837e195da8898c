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

/// Smallest block size the store accepts, in bytes.
pub const MIN_BLOCK_SIZE: u32 = 64 * 1024;
/// Largest block size the store accepts, in bytes.
pub const MAX_BLOCK_SIZE: u32 = 16 * 1024 * 1024;
/// Most drives (cache directories) one store may have.
pub const MAX_DRIVES: usize = 64;
/// Fewest regions (each one block and its headers) a drive may hold.
pub const MIN_DRIVE_REGIONS: u64 = 4;

/// Where a slot is: drive, region within the drive, slot within the region. Packed in 56 bits so
/// the index can keep it in one word with its state bits.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SlotAddr(u64);

impl SlotAddr {
    /// Bits of a packed address (drive 8 | region 32 | slot 16); the index keeps a block's tag
    /// and verified bit in the 8 bits above (docs/DESIGN.md, "Index").
    pub const BITS: u32 = 56;

    /// The address of slot `slot` of region `region` (counted over all of the drive's slab
    /// files) on drive `drive` (its index in [`Store::drives`]).
    pub fn new(drive: u8, region: u32, slot: u16) -> SlotAddr {
        SlotAddr(u64::from(drive) << 48 | u64::from(region) << 16 | u64::from(slot))
    }
    /// The drive's id: its index in [`Store::drives`] and in the configuration's `[[storage]]`.
    pub fn drive(self) -> u8 {
        (self.0 >> 48) as u8
    }
    /// The region number within the drive, counted over all of its slab files.
    pub fn region(self) -> u32 {
        (self.0 >> 16) as u32
    }
    /// The slot number within the region (always 0 in a full-block region).
    pub fn slot(self) -> u16 {
        self.0 as u16
    }
    /// The packed form, below `1 << BITS`.
    pub fn to_bits(self) -> u64 {
        self.0
    }
    /// Unpacks [`SlotAddr::to_bits`], ignoring every bit from [`SlotAddr::BITS`] up (where the
    /// index keeps its state bits).
    pub fn from_bits(bits: u64) -> SlotAddr {
        SlotAddr(bits & ((1 << Self::BITS) - 1))
    }
}

impl std::fmt::Debug for SlotAddr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}:{}", self.drive(), self.region(), self.slot())
    }
}

/// Why the store could not open a drive, allocate a slot or flush data.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// A system call on a file or directory failed.
    #[error("{what} {}: {source}", path.display())]
    Io {
        /// The file or directory it was made on.
        path: PathBuf,
        /// The step that failed, in words ("map slab", "flush slot data").
        what: &'static str,
        /// The operating system's error.
        #[source]
        source: std::io::Error,
    },
    /// Another process holds the directory's `lock` file (`flock`, docs/DESIGN.md "Layout on
    /// disk"): a running cache, or a `gatecache verify` of it.
    #[error("cache directory {} is in use by another process", .0.display())]
    Locked(PathBuf),
    /// A rule broken, in words: a [`StoreConfigError`], a drive smaller than four blocks, a
    /// `verify` path that is not a directory, a commit of an incomplete block.
    #[error("{0}")]
    Config(String),
    /// No free slot, and eviction freed none within 64 rounds (one region each): every data
    /// region holds a pinned slot (being read or filled) or is under eviction by another thread.
    #[error("no slot can be freed: every candidate is pinned or being filled")]
    Full,
    /// This many data bytes exceed the largest slot class (one block).
    #[error("{0} bytes do not fit in one slot")]
    TooLarge(u32),
}

/// One cache directory and its size budget.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DriveConfig {
    /// The directory holding the drive's slab files and lock file (created if missing). Not
    /// empty, and listed once per store.
    pub path: PathBuf,
    /// The drive's budget in bytes, spent in whole regions (each slab file's 4 KiB header
    /// comes on top): at least [`MIN_DRIVE_REGIONS`] regions ([`StoreConfig::min_drive_size`]).
    pub size: u64,
}

/// Everything the store needs to open its drives. [`StoreConfig::validate`] holds the rules
/// (the configuration file's `block_size`, `slab_size` and `[[storage]]` keys are checked
/// there, not beside it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoreConfig {
    /// The cache directories, 1 to [`MAX_DRIVES`]; objects spread over them in proportion to
    /// their size.
    pub drives: Vec<DriveConfig>,
    /// Bytes per block: a power of two from [`MIN_BLOCK_SIZE`] (64 KiB) to [`MAX_BLOCK_SIZE`]
    /// (16 MiB). A property of the store: changing it empties the cache.
    pub block_size: u32,
    /// Bytes per slab file (the last one of a drive may be smaller): at least one region
    /// behind the slab header ([`StoreConfig::min_slab_size`]).
    pub slab_size: u64,
    /// msync each block's data before its header is written (power-loss ordering). Without it a
    /// crash can still never serve a bad byte (data crcs are checked on first read), but may lose
    /// more recent blocks.
    pub sync_data: bool,
}

/// A [`StoreConfig`] that breaks one of the store's rules. Each variant names the field, and
/// the drive by its index in [`StoreConfig::drives`], so that a caller can report it under its
/// own key (the configuration file's `storage[1].path`); [`StoreConfigError::reason`] states
/// the rule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreConfigError {
    /// `block_size` (bytes) is not a power of two from [`MIN_BLOCK_SIZE`] to
    /// [`MAX_BLOCK_SIZE`].
    BlockSize {
        /// The size given, in bytes.
        block_size: u32,
    },
    /// `slab_size` (bytes) cannot hold one region behind the slab header.
    SlabSize {
        /// The size given, in bytes.
        slab_size: u64,
        /// The smallest size allowed with this block size, in bytes.
        min: u64,
    },
    /// No drive, or more than [`MAX_DRIVES`].
    DriveCount {
        /// How many drives were given.
        count: usize,
    },
    /// Drive `index` cannot hold [`MIN_DRIVE_REGIONS`] regions.
    DriveSize {
        /// The drive's index in [`StoreConfig::drives`].
        index: usize,
        /// Its size, in bytes.
        size: u64,
        /// The smallest size allowed with this block size, in bytes.
        min: u64,
    },
    /// Drive `index` has an empty path.
    EmptyPath {
        /// The drive's index in [`StoreConfig::drives`].
        index: usize,
    },
    /// Drive `index` has the path of an earlier drive.
    DuplicatePath {
        /// The later drive's index in [`StoreConfig::drives`].
        index: usize,
        /// The path listed twice.
        path: PathBuf,
    },
}

impl StoreConfigError {
    /// The rule that was broken, in words ("must hold at least 4 blocks (278528 bytes)"),
    /// without the field or the value.
    pub fn reason(&self) -> String {
        match self {
            StoreConfigError::BlockSize { .. } => {
                "must be a power of two from 64KiB to 16MiB".to_string()
            }
            StoreConfigError::SlabSize { min, .. } => {
                format!("must hold at least one block ({min} bytes with this block_size)")
            }
            StoreConfigError::DriveCount { .. } => {
                format!("1 to {MAX_DRIVES} directories allowed")
            }
            StoreConfigError::DriveSize { min, .. } => format!(
                "must hold at least {MIN_DRIVE_REGIONS} blocks ({min} bytes with this block_size)"
            ),
            StoreConfigError::EmptyPath { .. } => "must not be empty".to_string(),
            StoreConfigError::DuplicatePath { .. } => "listed twice".to_string(),
        }
    }
}

impl std::fmt::Display for StoreConfigError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let reason = self.reason();
        match self {
            StoreConfigError::BlockSize { block_size } => {
                write!(f, "block_size {block_size}: {reason}")
            }
            StoreConfigError::SlabSize { slab_size, .. } => {
                write!(f, "slab_size {slab_size}: {reason}")
            }
            StoreConfigError::DriveCount { count } => {
                write!(f, "storage: {count} directories given, {reason}")
            }
            StoreConfigError::DriveSize { index, size, .. } => {
                write!(f, "storage[{index}] size {size}: {reason}")
            }
            StoreConfigError::EmptyPath { index } => write!(f, "storage[{index}] path: {reason}"),
            StoreConfigError::DuplicatePath { path, .. } => {
                write!(f, "storage {}: {reason}", path.display())
            }
        }
    }
}

impl std::error::Error for StoreConfigError {}

impl From<StoreConfigError> for StoreError {
    fn from(e: StoreConfigError) -> StoreError {
        StoreError::Config(e.to_string())
    }
}

impl StoreConfig {
    /// The given drives with the defaults: 1 MiB blocks, 1 GiB slab files, `sync_data` on.
    /// Not checked: see [`StoreConfig::validate`].
    pub fn new(drives: Vec<DriveConfig>) -> StoreConfig {
        StoreConfig {
            drives,
            block_size: 1 << 20,
            slab_size: 1 << 30,
            sync_data: true,
        }
    }

    /// The smallest slab file for `block_size`, in bytes: the slab header and one region (a
    /// block with its region and slot headers).
    pub fn min_slab_size(block_size: u32) -> u64 {
        format::SLAB_HEADER_LEN + format::region_len(block_size)
    }

    /// The smallest drive for `block_size`, in bytes: [`MIN_DRIVE_REGIONS`] regions.
    pub fn min_drive_size(block_size: u32) -> u64 {
        MIN_DRIVE_REGIONS * format::region_len(block_size)
    }

    /// Checks the store's rules, in this order: the block size, the slab size, the number of
    /// drives, then each drive's size, that its path is not empty and not an earlier drive's.
    /// Pure: nothing is read from or written to disk.
    ///
    /// # Errors
    ///
    /// The first rule broken, as a [`StoreConfigError`] naming the field (and drive).
    pub fn validate(&self) -> Result<(), StoreConfigError> {
        let bs = self.block_size;
        if !bs.is_power_of_two() || !(MIN_BLOCK_SIZE..=MAX_BLOCK_SIZE).contains(&bs) {
            return Err(StoreConfigError::BlockSize { block_size: bs });
        }
        let min = Self::min_slab_size(bs);
        if self.slab_size < min {
            return Err(StoreConfigError::SlabSize {
                slab_size: self.slab_size,
                min,
            });
        }
        let count = self.drives.len();
        if count == 0 || count > MAX_DRIVES {
            return Err(StoreConfigError::DriveCount { count });
        }
        let min = Self::min_drive_size(bs);
        for (index, d) in self.drives.iter().enumerate() {
            if d.size < min {
                return Err(StoreConfigError::DriveSize {
                    index,
                    size: d.size,
                    min,
                });
            }
            if d.path.as_os_str().is_empty() {
                return Err(StoreConfigError::EmptyPath { index });
            }
            if self.drives[..index].iter().any(|o| o.path == d.path) {
                return Err(StoreConfigError::DuplicatePath {
                    index,
                    path: d.path.clone(),
                });
            }
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
    /// Opens every drive, then recovers what they hold (one scan thread per drive): returns the
    /// store, the surviving objects for the index, and the report (already logged).
    ///
    /// # Errors
    ///
    /// [`StoreError::Config`] if `cfg` breaks a rule (checked before any disk access),
    /// [`StoreError::Locked`] if a directory is in use, [`StoreError::Io`] if a directory or slab
    /// file cannot be created, sized, preallocated or mapped. Damage found on disk is not an
    /// error: it is dropped and counted in the [`RecoveryReport`].
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

    /// Bytes per block ([`StoreConfig::block_size`]).
    pub fn block_size(&self) -> u32 {
        self.block_size
    }

    /// The drives, in configuration order: a drive's index is its id ([`SlotAddr::drive`]).
    pub fn drives(&self) -> &[Arc<Drive>] {
        &self.drives
    }

    /// The drive with id `id` ([`SlotAddr::drive`]).
    ///
    /// # Panics
    ///
    /// If no drive has that id.
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

    /// The next store-wide sequence number (each call a new one, starting above the highest
    /// recovered): the newer of two records for the same thing wins at recovery.
    pub(crate) fn next_seq(&self) -> u64 {
        self.seq.fetch_add(1, Ordering::Relaxed)
    }

    /// Slots pinned right now, over all drives (tests, metrics).
    pub fn pinned_slots(&self) -> usize {
        self.drives.iter().map(|d| d.pinned_slots()).sum()
    }

    /// Data capacity in bytes over all drives: one block per region ([`Drive::capacity_bytes`]).
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

    #[test]
    fn config_rejects_each_rule_at_its_bound() {
        let bs = 64 * 1024;
        let drive = |path: &str, size| DriveConfig {
            path: path.into(),
            size,
        };
        let min_drive = StoreConfig::min_drive_size(bs);
        let min_slab = StoreConfig::min_slab_size(bs);
        assert_eq!(min_drive, 4 * (64 * 1024 + 4096));
        assert_eq!(min_slab, 64 * 1024 + 4096 + 4096);
        let at_bounds = StoreConfig {
            drives: vec![drive("/tmp/a", min_drive)],
            block_size: bs,
            slab_size: min_slab,
            sync_data: false,
        };
        assert_eq!(at_bounds.validate(), Ok(()));
        let with = |f: &dyn Fn(&mut StoreConfig)| {
            let mut c = at_bounds.clone();
            f(&mut c);
            c.validate().unwrap_err()
        };
        assert_eq!(
            with(&|c| c.block_size = 3 << 16),
            StoreConfigError::BlockSize {
                block_size: 3 << 16
            }
        );
        assert_eq!(
            with(&|c| c.slab_size = min_slab - 1),
            StoreConfigError::SlabSize {
                slab_size: min_slab - 1,
                min: min_slab
            }
        );
        assert_eq!(
            with(&|c| c.drives.clear()),
            StoreConfigError::DriveCount { count: 0 }
        );
        assert_eq!(
            with(&|c| {
                c.drives = (0..=MAX_DRIVES)
                    .map(|i| drive(&format!("/tmp/{i}"), min_drive))
                    .collect()
            }),
            StoreConfigError::DriveCount {
                count: MAX_DRIVES + 1
            }
        );
        assert_eq!(
            with(&|c| c.drives.push(drive("/tmp/b", min_drive - 1))),
            StoreConfigError::DriveSize {
                index: 1,
                size: min_drive - 1,
                min: min_drive
            }
        );
        assert_eq!(
            with(&|c| c.drives.push(drive("", min_drive))),
            StoreConfigError::EmptyPath { index: 1 }
        );
        assert_eq!(
            with(&|c| c.drives.push(drive("/tmp/a", min_drive))),
            StoreConfigError::DuplicatePath {
                index: 1,
                path: "/tmp/a".into()
            }
        );
        // Opening checks the same rules first, before touching the disk.
        let e = Store::open(&StoreConfig {
            drives: vec![drive("/nonexistent/gatecache-test", min_drive - 1)],
            ..at_bounds.clone()
        })
        .err()
        .unwrap();
        assert!(
            matches!(&e, StoreError::Config(m) if m.contains("storage[0] size")),
            "{e}"
        );
    }
}
