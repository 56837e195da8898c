//! `gatecache verify <dir>`: a read-only scan of one cache directory that checks every header
//! and every data crc, and names the objects that lost blocks.

use std::collections::BTreeMap;
use std::fs::File;
use std::path::Path;

use hashbrown::HashMap;

use super::StoreError;
use super::drive::{io_err, slab_path};
use super::format::{
    self, HeaderError, ObjectMeta, REGION_HEADER_LEN, RegionHeader, SLAB_HEADER_LEN,
    SLOT_HEADER_LEN, SlabHeader, SlotHeader, SlotKind,
};
use super::slab::{self, Slab};

/// One damaged thing found by `verify`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Damage {
    /// The slab file's number (`slab-NNNN.dat`).
    pub slab: u32,
    /// Byte offset in the slab file: of the damaged slab, region or slot header (a slot's for
    /// its data too), or the file's length for a truncated slab.
    pub offset: u64,
    /// For a slot's data: the object's key when its metadata record is readable, else its key
    /// hash (32 hex digits). `None` for damage to a header.
    pub object: Option<String>,
    /// The block number, for a data block whose crc does not match.
    pub block: Option<u32>,
    /// What is wrong, in words ("data crc mismatch", "slot header: bad header crc").
    pub reason: String,
}

/// Damage at `offset` of slab file `slab`, not yet tied to an object.
fn damage(slab: u32, offset: u64, reason: String) -> Damage {
    Damage {
        slab,
        offset,
        object: None,
        block: None,
        reason,
    }
}

/// What `verify` found in one cache directory.
#[derive(Debug, Default)]
pub struct VerifyReport {
    /// Slab files found.
    pub slabs: usize,
    /// Objects with a readable metadata record and at least one block (or of length 0).
    pub objects: usize,
    /// Data blocks with a valid header and data crc.
    pub blocks: usize,
    /// Data bytes in those blocks.
    pub bytes: u64,
    /// Everything damaged, in scan order (damage tied to an object last). Stale headers left
    /// from a region's previous use are free space, not damage.
    pub damage: Vec<Damage>,
    /// Objects with a readable metadata record: key, total length, blocks held (sorted by key).
    pub listing: Vec<(String, u64, usize)>,
}

impl VerifyReport {
    /// Whether nothing is damaged (`gatecache verify` then exits 0, else 1).
    pub fn is_clean(&self) -> bool {
        self.damage.is_empty()
    }

    /// The totals, one `name: value` line each, then one `BAD slab N offset O: reason` line
    /// per damage (the format `gatecache verify` prints).
    pub fn render(&self) -> String {
        let mut s = format!(
            "slabs: {}\nobjects: {}\nblocks: {}\nbytes: {}\nbad: {}\n",
            self.slabs,
            self.objects,
            self.blocks,
            self.bytes,
            self.damage.len()
        );
        for d in &self.damage {
            s += &format!(
                "BAD slab {} offset {}: {}{}{}\n",
                d.slab,
                d.offset,
                d.reason,
                d.object
                    .as_deref()
                    .map(|k| format!(", object {k}"))
                    .unwrap_or_default(),
                d.block.map(|b| format!(", block {b}")).unwrap_or_default()
            );
        }
        s
    }
}

/// Scans a cache directory without changing it. Refuses a directory a running cache holds.
///
/// # Errors
///
/// [`StoreError::Config`] if `dir` is not a directory, [`StoreError::Locked`] if a cache (or
/// another `verify`) holds it, [`StoreError::Io`] if it, its lock file or a slab file cannot
/// be opened, stat'ed or mapped. Damage is not an error: it is listed in the report.
pub fn verify_dir(dir: &Path) -> Result<VerifyReport, StoreError> {
    // Held until the scan is done, so no cache opens (and resizes slabs) meanwhile.
    let _lock = lock_for_scan(dir)?;
    let mut tally = Tally::default();
    for n in 0.. {
        let path = slab_path(dir, n);
        if !path.exists() {
            break;
        }
        tally.report.slabs += 1;
        let Some(slab) = map_slab(&mut tally, n, &path)? else {
            continue;
        };
        // SAFETY: `slab` is a read-only map of a directory whose `flock` is held (`_lock`), or
        // that had no lock file (no store had it open): no writer exists in this process
        // (another process is rule 4 of `slab.rs`).
        unsafe { verify_slab(&mut tally, n, &slab) };
    }
    Ok(tally.finish())
}

/// Checks that `dir` is a directory (a mistyped path is an error, not an empty, clean cache)
/// and takes its lock file's `flock`, if it has a lock file.
fn lock_for_scan(dir: &Path) -> Result<Option<File>, StoreError> {
    if !std::fs::metadata(dir)
        .map_err(io_err(dir, "open cache directory"))?
        .is_dir()
    {
        return Err(StoreError::Config(format!(
            "{}: not a directory",
            dir.display()
        )));
    }
    let lock_path = dir.join("lock");
    if !lock_path.exists() {
        return Ok(None);
    }
    let f = File::open(&lock_path).map_err(io_err(&lock_path, "open lock file"))?;
    if !slab::lock_exclusive(&f).map_err(io_err(&lock_path, "lock cache directory"))? {
        return Err(StoreError::Locked(dir.to_path_buf()));
    }
    Ok(Some(f))
}

/// Maps slab file `n` read-only; `None` (and the damage noted) if it cannot hold a slab header.
fn map_slab(tally: &mut Tally, n: u32, path: &Path) -> Result<Option<Slab>, StoreError> {
    let file = File::open(path).map_err(io_err(path, "open slab"))?;
    let len = file.metadata().map_err(io_err(path, "stat slab"))?.len();
    if len < SLAB_HEADER_LEN {
        let reason = format!("slab file too short ({len} bytes)");
        tally.report.damage.push(damage(n, 0, reason));
        return Ok(None);
    }
    let slab = Slab::map_read_only(file, len).map_err(io_err(path, "map slab"))?;
    Ok(Some(slab))
}

/// What the scan has gathered so far, over all slab files.
#[derive(Default)]
struct Tally {
    report: VerifyReport,
    /// Key and total length of each readable metadata record, by key hash.
    keys: HashMap<u128, (String, u64)>,
    /// Key hash, block number and length of each good data block.
    blocks: Vec<(u128, u32, u64)>,
    /// Damage to be named by its object's key once every record is read.
    pending: Vec<(u128, Damage)>,
}

impl Tally {
    /// Counts objects, blocks and bytes as recovery would, names the pending damage, and
    /// lists the objects.
    fn finish(self) -> VerifyReport {
        let Tally {
            mut report,
            keys,
            blocks,
            pending,
        } = self;
        let mut per_object: BTreeMap<u128, usize> = BTreeMap::new();
        for (k, _, len) in &blocks {
            *per_object.entry(*k).or_default() += 1;
            report.bytes += len;
        }
        report.blocks = blocks.len();
        // As recovery counts them: a zero-length object is complete with no block.
        report.objects = keys
            .iter()
            .filter(|(k, (_, len))| *len == 0 || per_object.contains_key(*k))
            .count();
        for (k, mut d) in pending {
            d.object = Some(
                keys.get(&k)
                    .map_or_else(|| format!("{k:032x}"), |(key, _)| key.clone()),
            );
            report.damage.push(d);
        }
        report.listing = keys
            .into_iter()
            .map(|(k, (key, len))| (key, len, per_object.get(&k).copied().unwrap_or(0)))
            .collect();
        report.listing.sort();
        report
    }
}

/// Checks slab file `n`: its header, its length, and every region that lies inside it.
///
/// # Safety
///
/// `slab` is mapped read-only and no writer of it exists in this process
/// (`Slab::read_header_mapped`, third case).
unsafe fn verify_slab(tally: &mut Tally, n: u32, slab: &Slab) {
    let len = slab.len();
    // SAFETY: read-only map, no writer (the caller's contract).
    let sh = match SlabHeader::decode(&unsafe { slab.read_header_mapped(0) }) {
        Ok(h) => h,
        Err(e) => {
            let reason = format!("slab header: {e}");
            tally.report.damage.push(damage(n, 0, reason));
            return;
        }
    };
    let want = SLAB_HEADER_LEN + u64::from(sh.regions) * sh.region_len;
    if len < want {
        let reason = format!("slab truncated: {len} of {want} bytes");
        tally.report.damage.push(damage(n, len, reason));
    }
    for r in 0..sh.regions {
        let off = SLAB_HEADER_LEN + u64::from(r) * sh.region_len;
        if off + sh.region_len > len {
            break;
        }
        // SAFETY: read-only map, no writer (the caller's contract).
        unsafe { verify_region(tally, n, slab, sh.block_size, off) };
    }
}

/// Checks the region at `off` of slab file `n`: its header, then each of its slots.
///
/// # Safety
///
/// As for [`verify_slab`].
unsafe fn verify_region(tally: &mut Tally, n: u32, slab: &Slab, block_size: u32, off: u64) {
    // SAFETY: read-only map, no writer (the caller's contract).
    let rh = match RegionHeader::decode(&unsafe { slab.read_header_mapped(off) }) {
        Ok(h) => h,
        Err(HeaderError::Empty) => return,
        Err(e) => {
            let reason = format!("region header: {e}");
            tally.report.damage.push(damage(n, off, reason));
            return;
        }
    };
    let nslots = format::slots_per_region(block_size, rh.slot_size);
    for s in 0..nslots {
        let hoff = off + REGION_HEADER_LEN + u64::from(s) * u64::from(rh.slot_size);
        // SAFETY: read-only map, no writer (the caller's contract).
        unsafe { verify_slot(tally, n, slab, &rh, hoff) };
    }
}

/// Checks the slot whose header is at `hoff` of slab file `n`, in a region with header `rh`:
/// its header, its data crc, and for metadata, that the record decodes.
///
/// # Safety
///
/// As for [`verify_slab`].
unsafe fn verify_slot(tally: &mut Tally, n: u32, slab: &Slab, rh: &RegionHeader, hoff: u64) {
    // SAFETY: read-only map, no writer (the caller's contract).
    let h = match SlotHeader::decode(&unsafe { slab.read_header_mapped(hoff) }) {
        Ok(h) => h,
        Err(HeaderError::Empty) => return,
        Err(e) => {
            let reason = format!("slot header: {e}");
            tally.report.damage.push(damage(n, hoff, reason));
            return;
        }
    };
    let fits = u64::from(h.data_len) + SLOT_HEADER_LEN <= u64::from(rh.slot_size);
    if h.region_generation != rh.generation || h.kind != rh.kind || !fits {
        // Left over from the region's previous use: free space, not damage.
        return;
    }
    // SAFETY: read-only map, no writer (the caller's contract).
    let crc = unsafe { slab.crc(hoff + SLOT_HEADER_LEN, h.data_len as usize) };
    if crc != h.data_crc {
        let mut d = damage(n, hoff, "data crc mismatch".into());
        d.block = (h.kind == SlotKind::Data).then_some(h.block);
        tally.pending.push((h.key_hash, d));
        return;
    }
    match h.kind {
        SlotKind::Meta => {
            let mut buf = vec![0u8; h.data_len as usize];
            // SAFETY: read-only map, no writer (the caller's contract).
            unsafe { slab.read_into(hoff + SLOT_HEADER_LEN, &mut buf) };
            match ObjectMeta::decode(&buf) {
                Ok(m) => {
                    tally.keys.insert(h.key_hash, (m.key, m.total_len));
                }
                Err(e) => {
                    let d = damage(n, hoff, format!("metadata: {e}"));
                    tally.pending.push((h.key_hash, d));
                }
            }
        }
        SlotKind::Data => {
            let block = (h.key_hash, h.block, u64::from(h.data_len));
            tally.blocks.push(block);
        }
    }
}
