//! Recovery: rebuild what the store holds from slot headers alone, and turn everything that is
//! damaged, torn, orphaned or stale into free space.
//!
//! Only headers are read (one page per full-block region), so recovery time grows with the
//! number of regions, not bytes. Data crcs of blocks are checked lazily, on a block's first
//! read after the restart (`crate::cache`), and by `gatecache verify`. Metadata records are
//! small and are crc-checked here.

use std::sync::Arc;
use std::time::Duration;

use hashbrown::HashMap;

use super::SlotAddr;
use super::drive::{Drive, SlabOpen};
use super::format::{
    self, HeaderError, ObjectMeta, REGION_HEADER_LEN, RegionHeader, SLOT_HEADER_LEN, SlotHeader,
    SlotKind,
};

/// A slot with a valid header, found by the scan.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Found {
    /// Where the slot is.
    pub(crate) addr: SlotAddr,
    /// Its region's slot size in bytes, header included.
    pub(crate) slot_size: u32,
    /// Its header, checked against its region (generation, kind, length) and the file's end.
    pub(crate) header: SlotHeader,
}

/// What recovery kept and why it dropped the rest.
#[derive(Debug, Default, Clone)]
pub struct RecoveryReport {
    /// Slab files opened, over all drives.
    pub slabs: usize,
    /// Slab files whose contents were dropped: a bad header, another block size, or another
    /// store's (each logged with its reason).
    pub slabs_reinitialised: usize,
    /// Slab files found shorter than their layout (slots past the end are dropped).
    pub slabs_truncated: usize,
    /// Objects kept, each with its metadata record.
    pub objects: usize,
    /// Blocks kept, over all objects.
    pub blocks: usize,
    /// Data bytes in the blocks kept.
    pub bytes: u64,
    /// Region or slot headers whose magic or crc is wrong.
    pub bad_headers: usize,
    /// Headers left from a region's previous use, or not matching their region.
    pub stale_headers: usize,
    /// Slots whose data lay past the end of a truncated slab.
    pub truncated_slots: usize,
    /// Metadata records whose data crc or encoding is wrong.
    pub bad_meta: usize,
    /// Blocks with no metadata, of another object version, or of the wrong length.
    pub orphan_blocks: usize,
    /// Older copies of a metadata record or block (a crash between writing and freeing).
    pub superseded: usize,
    /// Objects whose metadata survived but no block did.
    pub empty_objects: usize,
    /// Metadata records of the older format 1, read as they are (they kept three named
    /// fields beside the validators and freshness; format 2 keeps every end-to-end field).
    pub older_records: usize,
    /// Wall time of `Store::open`'s recovery: opening the slab files, the header scan and the
    /// metadata crc checks (measured: 135 ms for 10 GiB from a cold page cache, perf/RESULTS.md).
    pub elapsed: Duration,
}

impl RecoveryReport {
    /// Headers, records and slots dropped, of every kind (slab files re-initialised or
    /// truncated are counted apart).
    pub fn dropped(&self) -> usize {
        self.bad_headers
            + self.stale_headers
            + self.truncated_slots
            + self.bad_meta
            + self.orphan_blocks
            + self.superseded
            + self.empty_objects
    }

    /// Logs the totals at `info`, and what was dropped at `warn` if anything was.
    pub fn log(&self) {
        log::info!(
            "recovered {} objects, {} blocks, {} bytes from {} slabs in {:.1?}",
            self.objects,
            self.blocks,
            self.bytes,
            self.slabs,
            self.elapsed
        );
        if self.older_records > 0 {
            log::info!(
                "{} metadata records of the older format 1 read as they are: those objects keep \
                 the fields format 1 stored until they are fetched or revalidated again",
                self.older_records
            );
        }
        if self.dropped() > 0 || self.slabs_reinitialised > 0 || self.slabs_truncated > 0 {
            log::warn!(
                "recovery dropped: {} bad headers, {} stale headers, {} truncated slots, {} bad \
                 metadata records, {} orphan blocks, {} superseded copies, {} empty objects; \
                 {} slabs re-initialised, {} truncated",
                self.bad_headers,
                self.stale_headers,
                self.truncated_slots,
                self.bad_meta,
                self.orphan_blocks,
                self.superseded,
                self.empty_objects,
                self.slabs_reinitialised,
                self.slabs_truncated
            );
        }
    }
}

/// An object as recovered: its metadata record and the blocks that survived.
#[derive(Debug, Clone)]
pub struct RecoveredObject {
    /// The newest valid metadata record of the key.
    pub meta: ObjectMeta,
    /// The slot holding that record.
    pub meta_addr: SlotAddr,
    /// The record's sequence number: of two records of the key, the higher wins.
    pub meta_seq: u64,
    /// `(block number, slot)` of each surviving block, sorted by block number; blocks may be
    /// missing (refetched on demand), but an object of nonzero length keeps at least one.
    pub blocks: Vec<(u32, SlotAddr)>,
}

/// Scans every region of a drive's slabs that may be trusted. Restores region assignments in
/// the drive's allocator; the slots themselves are restored by [`recover`] once judged.
///
/// Runs before the drive is shared (see [`recover`]): one thread per drive, no writer.
fn scan_drive(drive: &Drive, opened: &[SlabOpen], report: &mut RecoveryReport) -> Vec<Found> {
    let classes = format::slot_classes(drive.block_size());
    let (region_len, per_slab) = drive.region_geometry();
    let mut found = Vec::new();
    for (i, open) in opened.iter().enumerate() {
        report.slabs += 1;
        report.slabs_reinitialised += usize::from(open.reinitialised.is_some());
        let slab = &drive.slabs()[i];
        if open.valid_regions > 0 && open.original_len < slab.len() {
            report.slabs_truncated += 1;
            log::warn!(
                "{}: slab {i} was truncated to {} bytes; slots past it are dropped",
                drive.path().display(),
                open.original_len
            );
        }
        slab.begin_scan();
        // Every region's first page (its header, and a full block's slot header) is asked for
        // at once: the disk sees a deep queue instead of one read at a time.
        for r in 0..open.valid_regions {
            let (slab, off) = drive.region_at(i as u32 * per_slab + r);
            slab.will_need(off, 4096);
        }
        for r in 0..open.valid_regions {
            let region = i as u32 * per_slab + r;
            let (slab, off) = drive.region_at(region);
            // SAFETY: recovery runs before the store exists, so the allocator has handed out no
            // writer and this thread is the only one touching this drive (`read_header_mapped`,
            // second case).
            let rh = match RegionHeader::decode(&unsafe { slab.read_header_mapped(off) }) {
                Ok(rh) => rh,
                Err(HeaderError::Empty) => continue,
                Err(_) => {
                    report.bad_headers += 1;
                    wipe_region(slab, off, region_len);
                    continue;
                }
            };
            let Some(class) = classes.iter().position(|&c| c == rh.slot_size) else {
                report.bad_headers += 1;
                wipe_region(slab, off, region_len);
                continue;
            };
            drive.with_alloc(|a| a.restore_region(region, rh.kind, class as u8, rh.generation));
            let n = format::slots_per_region(drive.block_size(), rh.slot_size);
            if n > 1 {
                // Small slots: their headers are spread over the whole region.
                slab.will_need(off, region_len as usize);
            }
            for s in 0..n {
                let addr = SlotAddr::new(drive.id(), region, s as u16);
                let hoff = off + REGION_HEADER_LEN + u64::from(s) * u64::from(rh.slot_size);
                // SAFETY: as for the region header above: the drive is not shared yet.
                let h = match SlotHeader::decode(&unsafe { slab.read_header_mapped(hoff) }) {
                    Ok(h) => h,
                    Err(HeaderError::Empty) => continue,
                    Err(_) => {
                        report.bad_headers += 1;
                        slab.write_header(hoff, &[0u8; 64]);
                        continue;
                    }
                };
                let fits = u64::from(h.data_len) + SLOT_HEADER_LEN <= u64::from(rh.slot_size);
                if h.region_generation != rh.generation || h.kind != rh.kind || !fits {
                    report.stale_headers += 1;
                    slab.write_header(hoff, &[0u8; 64]);
                    continue;
                }
                if hoff + SLOT_HEADER_LEN + u64::from(h.data_len) > open.original_len {
                    report.truncated_slots += 1;
                    slab.write_header(hoff, &[0u8; 64]);
                    continue;
                }
                found.push(Found {
                    addr,
                    slot_size: rh.slot_size,
                    header: h,
                });
            }
        }
        slab.end_scan();
    }
    found
}

/// Zeroes a region whose header cannot be trusted. Where its slot headers are is unknown, and
/// the generation they carry may be handed out again (it was the region header that recorded
/// it): left in place, they would come back to life the next time the region is assigned.
fn wipe_region(slab: &super::slab::Slab, off: u64, region_len: u64) {
    for pos in (off..off + region_len).step_by(SLOT_HEADER_LEN as usize) {
        slab.write_header(pos, &[0u8; 64]);
    }
}

/// Reads a metadata record and checks its crc, key hash and version against its header.
///
/// # Safety
///
/// `drive` is not shared yet (see [`Drive::slot_data_crc`]).
/// Also says whether the record is of the older format 1.
unsafe fn read_meta(drive: &Drive, f: &Found) -> Option<(ObjectMeta, bool)> {
    // SAFETY: the drive is not shared yet (the caller's contract).
    let crc = unsafe { drive.slot_data_crc(f.addr, f.slot_size, f.header.data_len) };
    if crc != f.header.data_crc {
        return None;
    }
    // SAFETY: as above.
    let record = unsafe { drive.slot_data_copy(f.addr, f.slot_size, f.header.data_len) };
    let meta = ObjectMeta::decode(&record).ok()?;
    (format::key_hash(&meta.key) == f.header.key_hash && meta.version() == f.header.object_version)
        .then_some((meta, ObjectMeta::is_older_record(&record)))
}

/// Recovers all drives: returns the surviving objects, the report and the highest sequence seen.
///
/// Called by `Store::open` on drives just opened, before the store (and so any allocation or
/// writer) exists: every `unsafe` read of slot bytes below relies on that.
///
/// In four steps: scan every drive's headers ([`scan_all`]), keep the newest valid metadata
/// record of each key ([`newest_metas`]), keep the newest block of each key and block number
/// that matches its record ([`surviving_blocks`]), and group the blocks under their records
/// ([`assemble`]). Everything not kept has its header cleared and is counted in the report.
pub(crate) fn recover(
    drives: &[Arc<Drive>],
    opened: &[Vec<SlabOpen>],
) -> (Vec<RecoveredObject>, RecoveryReport, u64) {
    let mut report = RecoveryReport::default();
    let all = scan_all(drives, opened, &mut report);
    let max_seq = all.iter().map(|f| f.header.seq).max().unwrap_or(0);
    // SAFETY: the drives are not shared yet: `Store::open` calls `recover` before the store
    // exists, and the scan threads have been joined (`scan_all` returned).
    let metas = unsafe { newest_metas(drives, &all, &mut report) };
    let blocks = surviving_blocks(drives, &all, &metas, &mut report);
    let out = assemble(drives, metas, blocks, &mut report);
    report.objects = out.len();
    for d in drives {
        d.with_alloc(|a| a.finish_restore());
    }
    (out, report, max_seq)
}

/// Scans every drive's headers, one thread per drive (drives are independent disks), and adds
/// each scan's counts to `report`. Returns every slot with a valid header, drive by drive.
fn scan_all(
    drives: &[Arc<Drive>],
    opened: &[Vec<SlabOpen>],
    report: &mut RecoveryReport,
) -> Vec<Found> {
    let scans: Vec<(Vec<Found>, RecoveryReport)> = std::thread::scope(|s| {
        let handles: Vec<_> = drives
            .iter()
            .zip(opened)
            .map(|(d, o)| {
                s.spawn(move || {
                    let mut r = RecoveryReport::default();
                    let f = scan_drive(d, o, &mut r);
                    (f, r)
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("scan thread"))
            .collect()
    });
    let mut all = Vec::new();
    for (found, r) in scans {
        report.slabs += r.slabs;
        report.slabs_reinitialised += r.slabs_reinitialised;
        report.slabs_truncated += r.slabs_truncated;
        report.bad_headers += r.bad_headers;
        report.stale_headers += r.stale_headers;
        report.truncated_slots += r.truncated_slots;
        all.extend(found);
    }
    all
}

/// Clears the header of a slot that recovery does not keep.
fn drop_slot(drives: &[Arc<Drive>], f: &Found) {
    drives[f.addr.drive() as usize].clear_header_at(f.addr, f.slot_size);
}

/// The newest valid metadata record of each key hash, with its slot. Records that do not read
/// back (crc, encoding, key hash or version against their header) count as `bad_meta`, older
/// copies as `superseded`; both are dropped.
///
/// # Safety
///
/// No drive is shared yet (see [`read_meta`]).
unsafe fn newest_metas(
    drives: &[Arc<Drive>],
    all: &[Found],
    report: &mut RecoveryReport,
) -> HashMap<u128, (Found, ObjectMeta)> {
    let mut metas: HashMap<u128, (Found, ObjectMeta)> = HashMap::new();
    for f in all.iter().filter(|f| f.header.kind == SlotKind::Meta) {
        // SAFETY: no drive is shared yet (the caller's contract).
        let Some((meta, older)) = (unsafe { read_meta(&drives[f.addr.drive() as usize], f) })
        else {
            report.bad_meta += 1;
            drop_slot(drives, f);
            continue;
        };
        report.older_records += usize::from(older);
        match metas.get(&f.header.key_hash) {
            Some((old, _)) if old.header.seq > f.header.seq => {
                report.superseded += 1;
                drop_slot(drives, f);
            }
            prev => {
                if let Some((old, _)) = prev {
                    report.superseded += 1;
                    drop_slot(drives, old);
                }
                metas.insert(f.header.key_hash, (*f, meta));
            }
        }
    }
    metas
}

/// The newest copy of each `(key hash, block number)` that belongs under a kept record: same
/// object version, a block number below the object's block count, the block's exact length.
/// Other blocks count as `orphan_blocks`, older copies as `superseded`; both are dropped.
fn surviving_blocks(
    drives: &[Arc<Drive>],
    all: &[Found],
    metas: &HashMap<u128, (Found, ObjectMeta)>,
    report: &mut RecoveryReport,
) -> HashMap<(u128, u32), Found> {
    let block_size = drives[0].block_size();
    let mut blocks: HashMap<(u128, u32), Found> = HashMap::new();
    for f in all.iter().filter(|f| f.header.kind == SlotKind::Data) {
        let h = &f.header;
        let ok = metas.get(&h.key_hash).is_some_and(|(_, m)| {
            h.object_version == m.version()
                && u64::from(h.block) < m.block_count(block_size)
                && u64::from(h.data_len) == m.block_len(block_size, u64::from(h.block))
        });
        if !ok {
            report.orphan_blocks += 1;
            drop_slot(drives, f);
            continue;
        }
        match blocks.get(&(h.key_hash, h.block)) {
            Some(old) if old.header.seq > h.seq => {
                report.superseded += 1;
                drop_slot(drives, f);
            }
            prev => {
                if let Some(old) = prev {
                    report.superseded += 1;
                    drop_slot(drives, old);
                }
                blocks.insert((h.key_hash, h.block), *f);
            }
        }
    }
    blocks
}

/// Groups the kept blocks under their records and marks their slots used in the allocators.
/// An object of nonzero length left with no block counts as `empty_objects`, and its record
/// is dropped. Adds the kept blocks and their bytes to `report`.
fn assemble(
    drives: &[Arc<Drive>],
    metas: HashMap<u128, (Found, ObjectMeta)>,
    blocks: HashMap<(u128, u32), Found>,
    report: &mut RecoveryReport,
) -> Vec<RecoveredObject> {
    let mut objects: HashMap<u128, RecoveredObject> = metas
        .into_iter()
        .map(|(k, (f, meta))| {
            (
                k,
                RecoveredObject {
                    meta,
                    meta_addr: f.addr,
                    meta_seq: f.header.seq,
                    blocks: Vec::new(),
                },
            )
        })
        .collect();
    for ((k, block), f) in blocks {
        let o = objects.get_mut(&k).expect("checked above");
        o.blocks.push((block, f.addr));
        report.bytes += u64::from(f.header.data_len);
        drives[f.addr.drive() as usize].with_alloc(|a| a.restore_slot(f.addr));
    }
    let mut out = Vec::with_capacity(objects.len());
    for (_, mut o) in objects {
        let d = &drives[o.meta_addr.drive() as usize];
        // A zero-length object is complete with no block; any other needs at least one.
        if o.blocks.is_empty() && o.meta.total_len > 0 {
            report.empty_objects += 1;
            let size = d
                .with_alloc(|a| a.region_slot_size(o.meta_addr.region()))
                .unwrap();
            d.clear_header_at(o.meta_addr, size);
            continue;
        }
        d.with_alloc(|a| a.restore_slot(o.meta_addr));
        o.blocks.sort_unstable_by_key(|b| b.0);
        report.blocks += o.blocks.len();
        out.push(o);
    }
    out
}
