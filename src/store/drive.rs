//! One cache directory ("drive", like the original's `STORAGE_<N>`): its lock, its slab files,
//! its allocator, and every slot header read or written.

use std::fs::{File, OpenOptions};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use parking_lot::{Mutex, MutexGuard};

use super::alloc::Allocator;
use super::format::{
    self, HeaderError, REGION_HEADER_LEN, RegionHeader, SLAB_HEADER_LEN, SLOT_HEADER_LEN,
    SlabHeader, SlotHeader, SlotKind,
};
use super::slab::{self, Fill, Slab, SlotBuf, SlotWriter};
use super::{SlotAddr, StoreError};

/// Removes index entries for slots the drive wants to evict. Implemented by the cache index:
/// it returns true only if the slot was live, unpinned, and is now unreachable.
pub(crate) trait Evictor {
    /// Called by [`Drive::alloc`] for each used slot of the victim region, with `header` read
    /// under the drive's lock and that lock released (the index's shard lock comes first in the
    /// lock order, docs/DESIGN.md "Index"). On true the drive frees the slot.
    fn evict(&self, addr: SlotAddr, header: &SlotHeader) -> bool;
}

/// A slab file as found on disk when the drive was opened.
pub(crate) struct SlabOpen {
    /// Regions whose contents may be trusted (0 when the file was new or re-initialised).
    pub(crate) valid_regions: u32,
    /// Length of the file before it was resized: slot data past it was lost.
    pub(crate) original_len: u64,
    /// Why the file's contents were dropped (already logged), if they were.
    pub(crate) reinitialised: Option<String>,
}

/// One open cache directory: its `flock`, its mapped slab files, and its allocator behind one
/// mutex (a leaf in the lock order, docs/DESIGN.md "Index").
pub struct Drive {
    id: u8,
    path: PathBuf,
    block_size: u32,
    region_len: u64,
    regions_per_slab: u32,
    slabs: Vec<Slab>,
    state: Mutex<Allocator>,
    sync_data: bool,
    _lock: File,
}

/// Keeps one slot from being reused while it lives (see `slab.rs`, rule 3).
pub struct PinGuard {
    drive: Arc<Drive>,
    addr: SlotAddr,
    /// Where the slot's header starts in its slab (the data follows it).
    header_off: u64,
    capacity: u32,
}

impl PinGuard {
    /// The pinned slot.
    pub fn addr(&self) -> SlotAddr {
        self.addr
    }

    /// Data bytes the slot can hold.
    pub fn capacity(&self) -> usize {
        self.capacity as usize
    }

    /// The slab file the slot lies in.
    pub(super) fn slab(&self) -> &Slab {
        self.drive.slab_of(self.addr)
    }

    /// The slot's first data byte, for a view of `len` bytes; dereferencing it is subject to
    /// the protocol of `slab.rs`.
    ///
    /// # Panics
    ///
    /// If `len` exceeds the slot's capacity.
    pub(super) fn data_ptr(&self, len: usize) -> *mut u8 {
        assert!(len <= self.capacity as usize, "view past the slot");
        self.drive
            .slab_of(self.addr)
            .ptr(self.header_off + SLOT_HEADER_LEN, len)
    }
}

impl Drop for PinGuard {
    fn drop(&mut self) {
        let mut st = self.drive.state.lock();
        if st.unpin(self.addr) {
            // The slot was freed while pinned and is free now: clear its header.
            self.drive
                .slab_of(self.addr)
                .write_header(self.header_off, &[0u8; 64]);
        }
    }
}

/// Turns an I/O error of step `what` on `path` into a [`StoreError::Io`] (for `map_err`).
pub(super) fn io_err<'a>(
    path: &'a Path,
    what: &'static str,
) -> impl FnOnce(std::io::Error) -> StoreError + 'a {
    move |source| StoreError::Io {
        path: path.to_path_buf(),
        what,
        source,
    }
}

/// Reserves disk blocks so that a write into the map can never hit a full disk (SIGBUS).
fn reserve(file: &File, len: u64, path: &Path) -> Result<(), StoreError> {
    if !slab::preallocate(file, len).map_err(io_err(path, "preallocate slab"))? {
        log::warn!(
            "{}: filesystem cannot preallocate; a full disk would fault the cache",
            path.display()
        );
    }
    Ok(())
}

/// Opens (creating if needed, never truncating) a file for reading and writing.
fn open_rw(path: &Path, what: &'static str) -> Result<File, StoreError> {
    OpenOptions::new()
        .create(true)
        .truncate(false)
        .read(true)
        .write(true)
        .open(path)
        .map_err(io_err(path, what))
}

fn lock_dir(dir: &Path) -> Result<File, StoreError> {
    let path = dir.join("lock");
    let file = open_rw(&path, "open lock file")?;
    if !slab::lock_exclusive(&file).map_err(io_err(&path, "lock cache directory"))? {
        return Err(StoreError::Locked(dir.to_path_buf()));
    }
    Ok(file)
}

/// The path of slab file `n` of the cache directory `dir`: `slab-NNNN.dat`, at least four
/// digits.
pub fn slab_path(dir: &Path, n: u32) -> PathBuf {
    dir.join(format!("slab-{n:04}.dat"))
}

impl Drive {
    /// Opens (creating or resizing as needed) the slab files of one directory, `size` bytes in
    /// whole regions, each file at most `slab_size` bytes, and removes slab files past them.
    /// Returns the drive, not yet recovered (see `recover`), and what was found of each file.
    ///
    /// # Errors
    ///
    /// [`StoreError::Locked`] if another process holds the directory, [`StoreError::Config`] if
    /// `size` holds fewer than 4 regions, [`StoreError::Io`] if the directory, the lock file or
    /// a slab cannot be created, read, resized, preallocated, mapped or removed.
    pub(crate) fn open(
        id: u8,
        dir: &Path,
        size: u64,
        block_size: u32,
        slab_size: u64,
        sync_data: bool,
    ) -> Result<(Drive, Vec<SlabOpen>), StoreError> {
        std::fs::create_dir_all(dir).map_err(io_err(dir, "create cache directory"))?;
        let lock = lock_dir(dir)?;
        let region_len = format::region_len(block_size);
        let regions_per_slab =
            ((slab_size.saturating_sub(SLAB_HEADER_LEN)) / region_len).max(1) as u32;
        let total_regions = (size / region_len).min(u64::from(u32::MAX)) as u32;
        if total_regions < 4 {
            return Err(StoreError::Config(format!(
                "storage {}: size {size} holds fewer than 4 blocks of {block_size} bytes",
                dir.display()
            )));
        }
        let nslabs = total_regions.div_ceil(regions_per_slab);
        let mut slabs = Vec::new();
        let mut opened = Vec::new();
        let store_id = xxhash_rust::xxh3::xxh3_64(dir.as_os_str().as_encoded_bytes());
        for n in 0..nslabs {
            let regions = (total_regions - n * regions_per_slab).min(regions_per_slab);
            let (slab, open) = Self::open_slab(dir, n, regions, block_size, region_len, store_id)?;
            slabs.push(slab);
            opened.push(open);
        }
        // Slabs past the budget (the size was lowered) are removed.
        for n in nslabs.. {
            let p = slab_path(dir, n);
            if !p.exists() {
                break;
            }
            log::warn!("{}: beyond the configured size, removing", p.display());
            std::fs::remove_file(&p).map_err(io_err(&p, "remove extra slab"))?;
        }
        let classes = format::slot_classes(block_size);
        let drive = Drive {
            id,
            path: dir.to_path_buf(),
            block_size,
            region_len,
            regions_per_slab,
            slabs,
            state: Mutex::new(Allocator::new(id, block_size, classes, total_regions)),
            sync_data,
            _lock: lock,
        };
        Ok((drive, opened))
    }

    fn open_slab(
        dir: &Path,
        n: u32,
        regions: u32,
        block_size: u32,
        region_len: u64,
        store_id: u64,
    ) -> Result<(Slab, SlabOpen), StoreError> {
        let path = slab_path(dir, n);
        let file = open_rw(&path, "open slab")?;
        let original_len = file.metadata().map_err(io_err(&path, "stat slab"))?.len();
        let want_len = SLAB_HEADER_LEN + u64::from(regions) * region_len;
        let mut head = [0u8; 64];
        if original_len >= 64 {
            use std::os::unix::fs::FileExt;
            file.read_exact_at(&mut head, 0)
                .map_err(io_err(&path, "read slab header"))?;
        }
        let (valid_regions, reinitialised) = match SlabHeader::decode(&head) {
            Ok(h) if h.block_size == block_size && h.store_id == store_id && h.slab_no == n => {
                (h.regions.min(regions), None)
            }
            Ok(h) if h.block_size != block_size => (
                0,
                Some(format!(
                    "block size changed ({} -> {block_size})",
                    h.block_size
                )),
            ),
            Ok(_) => (0, Some("belongs to another store".to_string())),
            Err(HeaderError::Empty) if original_len <= 64 => (0, None),
            Err(e) => (0, Some(format!("slab header: {e}"))),
        };
        if let Some(why) = &reinitialised {
            log::warn!(
                "{}: {why}; its contents are dropped and it starts empty",
                path.display()
            );
        }
        if valid_regions == 0 && original_len > 0 {
            // Start from zeros: stale headers of an unknown layout must not be read as ours.
            file.set_len(0).map_err(io_err(&path, "truncate slab"))?;
        }
        if original_len != want_len || valid_regions == 0 {
            file.set_len(want_len)
                .map_err(io_err(&path, "resize slab"))?;
        }
        reserve(&file, want_len, &path)?;
        let slab = Slab::map(file, want_len).map_err(io_err(&path, "map slab"))?;
        let header = SlabHeader {
            block_size,
            region_len,
            regions,
            slab_no: n,
            store_id,
        };
        slab.write_header(0, &header.encode());
        Ok((
            slab,
            SlabOpen {
                valid_regions,
                original_len: if valid_regions == 0 { 0 } else { original_len },
                reinitialised,
            },
        ))
    }

    /// The drive's id: its index in the store ([`SlotAddr::drive`]).
    pub fn id(&self) -> u8 {
        self.id
    }

    /// The cache directory.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Regions on this drive, over all its slab files.
    pub fn region_count(&self) -> u32 {
        self.state.lock().region_count()
    }

    /// Data capacity in bytes: one block per region (each region's 4 KiB of headers not counted).
    pub fn capacity_bytes(&self) -> u64 {
        u64::from(self.region_count()) * u64::from(self.block_size)
    }

    /// Bytes of regions in use (data or metadata), counted like `capacity_bytes`.
    pub fn used_bytes(&self) -> u64 {
        let st = self.state.lock();
        u64::from(st.region_count()).saturating_sub(st.free_region_count() as u64)
            * u64::from(self.block_size)
    }

    /// The mapped slab files, by number.
    pub(crate) fn slabs(&self) -> &[Slab] {
        &self.slabs
    }

    /// Slab and byte offset of a region (region `r` of the drive is in slab file
    /// `r / regions_per_slab`).
    ///
    /// # Panics
    ///
    /// If `region` is not below [`Drive::region_count`].
    pub fn region_at(&self, region: u32) -> (&Slab, u64) {
        let slab = &self.slabs[(region / self.regions_per_slab) as usize];
        let off = SLAB_HEADER_LEN + u64::from(region % self.regions_per_slab) * self.region_len;
        (slab, off)
    }

    /// Slab and offset of a slot's header, given its region's slot size.
    fn slot_at(&self, addr: SlotAddr, slot_size: u32) -> (&Slab, u64) {
        let (slab, off) = self.region_at(addr.region());
        (
            slab,
            off + REGION_HEADER_LEN + u64::from(addr.slot()) * u64::from(slot_size),
        )
    }

    fn slab_of(&self, addr: SlotAddr) -> &Slab {
        &self.slabs[(addr.region() / self.regions_per_slab) as usize]
    }

    /// Pins a slot; the allocator lock is held by the caller.
    fn pin_locked(
        self: &Arc<Self>,
        st: &mut Allocator,
        addr: SlotAddr,
        hit: bool,
    ) -> Arc<PinGuard> {
        let size = st
            .region_slot_size(addr.region())
            .expect("pin of a slot in an unassigned region");
        st.pin(addr, hit);
        let (_, header_off) = self.slot_at(addr, size);
        Arc::new(PinGuard {
            drive: self.clone(),
            addr,
            header_off,
            capacity: size - SLOT_HEADER_LEN as u32,
        })
    }

    /// Pins a live slot. The caller guarantees `addr` is live (it holds the index lock that
    /// makes it reachable), so the slot cannot be freed between the lookup and the pin.
    fn pin(self: &Arc<Self>, addr: SlotAddr) -> Arc<PinGuard> {
        let mut st = self.state.lock();
        self.pin_locked(&mut st, addr, true)
    }

    /// A pinned view of `len` committed data bytes of a live slot (see [`Drive::pin`]).
    ///
    /// # Safety
    ///
    /// `addr` is a live slot of this drive whose writer has committed, and it cannot be freed
    /// before the pin is taken: the caller holds the cache index lock under which `addr` is a
    /// `Ready` block. Otherwise the view could overlap bytes a [`SlotWriter`] is still writing.
    ///
    /// # Panics
    ///
    /// If `len` exceeds the slot's capacity, or `addr`'s region is not assigned.
    pub(crate) unsafe fn committed(self: &Arc<Self>, addr: SlotAddr, len: usize) -> SlotBuf {
        let pin = self.pin(addr);
        // SAFETY: by the caller's contract the slot's writer has committed, so nothing writes
        // its data again; the pin just taken keeps it from being handed to a new writer.
        unsafe { SlotBuf::committed(pin, len) }
    }

    /// The header of slot `addr`, read from the map. `st` is the witness that this drive's
    /// lock is held (checked): the slot's region layout is then the one `st` records, and no
    /// header of it is written meanwhile.
    fn slot_header(
        &self,
        st: &MutexGuard<'_, Allocator>,
        addr: SlotAddr,
    ) -> Result<SlotHeader, HeaderError> {
        assert!(
            std::ptr::eq(MutexGuard::mutex(st), &self.state),
            "slot_header: the guard is not this drive's lock"
        );
        let size = st
            .region_slot_size(addr.region())
            .ok_or(HeaderError::Empty)?;
        let (slab, off) = self.slot_at(addr, size);
        // SAFETY: `st` guards this drive's allocator (asserted above) and is held for the call;
        // `off` is `addr`'s slot header in the layout `st` records for its region
        // (`read_header_mapped`, first case).
        SlotHeader::decode(&unsafe { slab.read_header_mapped(off) })
    }

    /// Whether `addr` is pinned now (by a [`SlotBuf`], a [`Fill`] or its `SlotWriter`).
    pub fn is_pinned(&self, addr: SlotAddr) -> bool {
        self.state.lock().is_pinned(addr)
    }

    /// Allocates a slot of the smallest class for `data_len` bytes, evicting data regions
    /// (SIEVE, up to 64 rounds of one region each) if no slot is free, and returns its only
    /// writer, pinned.
    ///
    /// # Errors
    ///
    /// [`StoreError::TooLarge`] if `data_len` exceeds a block, [`StoreError::Full`] if eviction
    /// frees nothing usable, [`StoreError::Io`] if the cleared headers of a newly assigned
    /// small-slot region cannot be flushed (only with `sync_data`).
    pub(crate) fn alloc(
        self: &Arc<Self>,
        kind: SlotKind,
        data_len: u32,
        evictor: &dyn Evictor,
    ) -> Result<SlotWriter, StoreError> {
        let class = {
            let st = self.state.lock();
            format::class_for(st.classes(), data_len).ok_or(StoreError::TooLarge(data_len))?
        };
        // Each round evicts one region; a few rounds cover regions freed only in part because
        // some of their slots were pinned meanwhile.
        for _ in 0..64 {
            let victim = {
                let mut st = self.state.lock();
                if let Some(t) = st.take(kind, class) {
                    let size = st.classes()[class as usize];
                    if let Some((kind, slot_size, generation)) = t.new_region {
                        let (slab, off) = self.region_at(t.addr.region());
                        // The region's last use left bytes where this class puts slot headers:
                        // clear them all (before the region header, in case of a crash), or
                        // unused slots read as damaged headers.
                        let n = format::slots_per_region(self.block_size, slot_size);
                        for s in 0..u64::from(n) {
                            let hoff = off + REGION_HEADER_LEN + s * u64::from(slot_size);
                            slab.write_header(hoff, &[0u8; 64]);
                        }
                        // A mapping's write-back order is the kernel's: the cleared headers
                        // must be on disk before a region header could make old bytes (cached
                        // content, possibly crafted) read as headers again. A full-block
                        // region has only the one slot header, cleared below: nothing to order.
                        if n > 1 && self.sync_data {
                            slab.flush(off, self.region_len as usize)
                                .map_err(io_err(&self.path, "flush region"))?;
                        }
                        let h = RegionHeader {
                            kind,
                            slot_size,
                            generation,
                        };
                        slab.write_header(off, &h.encode());
                    }
                    // A stale header from the slot's last life must not describe new bytes.
                    let (slab, off) = self.slot_at(t.addr, size);
                    slab.write_header(off, &[0u8; 64]);
                    let pin = self.pin_locked(&mut st, t.addr, false);
                    drop(st);
                    // SAFETY: the allocator just handed `t.addr` out: it was free and unpinned,
                    // so no writer and no view of its bytes exist, and the `Fill` is new.
                    let w = unsafe { SlotWriter::new(Fill::new(pin, data_len as usize)) };
                    return Ok(w);
                }
                let Some((region, used)) = st.begin_eviction() else {
                    return Err(StoreError::Full);
                };
                assert!(st.region_slot_size(region).is_some(), "assigned");
                let headers: Vec<_> = used
                    .into_iter()
                    .map(|s| {
                        let addr = SlotAddr::new(self.id, region, s);
                        (addr, self.slot_header(&st, addr))
                    })
                    .collect();
                (region, headers)
            };
            let (region, headers) = victim;
            let mut freed = Vec::new();
            for (addr, header) in headers {
                if let Ok(h) = header
                    && evictor.evict(addr, &h)
                {
                    freed.push(addr);
                }
            }
            let mut st = self.state.lock();
            let size = st.region_slot_size(region).expect("region under eviction");
            for addr in freed {
                if st.release(addr) {
                    let (slab, off) = self.slot_at(addr, size);
                    slab.write_header(off, &[0u8; 64]);
                }
            }
            st.end_eviction(region);
        }
        Err(StoreError::Full)
    }

    /// Seals a complete slot: crc of the data, flush, then the header (that order, so a header
    /// on disk always describes complete data). Returns a pinned view of the data.
    ///
    /// With `flush` false the caller has already flushed the data (see [`Drive::sync_data`]).
    ///
    /// # Errors
    ///
    /// [`StoreError::Io`] if the data cannot be flushed (msync); the header is then not written.
    ///
    /// # Panics
    ///
    /// If the writer is not complete.
    pub(crate) fn commit(
        &self,
        w: &SlotWriter,
        mut header: SlotHeader,
        flush: bool,
    ) -> Result<SlotBuf, StoreError> {
        assert!(w.is_complete(), "commit of an incomplete slot");
        let pin = w.pin();
        let addr = pin.addr();
        header.data_len = w.capacity() as u32;
        header.data_crc = crc32fast::hash(w.written());
        let slab = self.slab_of(addr);
        if flush && self.sync_data && w.capacity() > 0 {
            slab.flush(pin.header_off + SLOT_HEADER_LEN, w.capacity())
                .map_err(io_err(&self.path, "flush slot data"))?;
        }
        {
            let st = self.state.lock();
            let (_, _, generation) = st.region_info(addr.region()).expect("assigned");
            header.region_generation = generation;
            slab.write_header(pin.header_off, &header.encode());
        }
        // SAFETY: `w` is complete (asserted above): it has no spare bytes left, so nothing
        // writes the slot's data again; its pin, cloned into the view, keeps the slot from
        // being handed to a new writer.
        Ok(unsafe { SlotBuf::committed(w.pin().clone(), w.capacity()) })
    }

    /// Flushes all data written to this drive so far (a batch of commits shares one flush).
    /// Does nothing without [`StoreConfig::sync_data`](super::StoreConfig::sync_data).
    ///
    /// # Errors
    ///
    /// [`StoreError::Io`] if a slab's fdatasync fails.
    pub(crate) fn sync_data(&self) -> Result<(), StoreError> {
        if !self.sync_data {
            return Ok(());
        }
        for s in &self.slabs {
            s.sync_data().map_err(io_err(&self.path, "flush slab"))?;
        }
        Ok(())
    }

    /// Whether slot data is flushed before its header is written
    /// ([`StoreConfig::sync_data`](super::StoreConfig::sync_data)).
    pub(crate) fn syncs_data(&self) -> bool {
        self.sync_data
    }

    /// Frees a slot (now, or when its last pin drops) and clears its header.
    ///
    /// # Panics
    ///
    /// If the slot's region is not assigned, or the slot is free already.
    pub(crate) fn free(&self, addr: SlotAddr) {
        let mut st = self.state.lock();
        let size = st
            .region_slot_size(addr.region())
            .expect("free of an unassigned slot");
        if st.release(addr) {
            let (slab, off) = self.slot_at(addr, size);
            slab.write_header(off, &[0u8; 64]);
        }
    }

    /// Reads the header of a live slot (lazy verification after a restart).
    ///
    /// # Errors
    ///
    /// [`HeaderError::Empty`] if the slot's region is not assigned or the header is cleared,
    /// else as [`SlotHeader::decode`].
    pub(crate) fn read_slot_header(&self, addr: SlotAddr) -> Result<SlotHeader, HeaderError> {
        let st = self.state.lock();
        self.slot_header(&st, addr)
    }

    /// Recovery only (before the drive is shared): direct access to the allocator.
    pub(super) fn with_alloc<R>(&self, f: impl FnOnce(&mut Allocator) -> R) -> R {
        f(&mut self.state.lock())
    }

    /// Recovery only: clears a header that will not be used.
    pub(super) fn clear_header_at(&self, addr: SlotAddr, slot_size: u32) {
        let (slab, off) = self.slot_at(addr, slot_size);
        slab.write_header(off, &[0u8; 64]);
    }

    /// Recovery only: the crc of the first `len` data bytes of a slot with a valid header.
    ///
    /// # Safety
    ///
    /// No writer owns the slot: the drive is not shared yet (recovery, before the store
    /// exists), so the allocator has handed out no [`SlotWriter`].
    ///
    /// # Panics
    ///
    /// If the slot's data range is outside its slab.
    pub(super) unsafe fn slot_data_crc(&self, addr: SlotAddr, slot_size: u32, len: u32) -> u32 {
        let (slab, off) = self.slot_at(addr, slot_size);
        // SAFETY: no writer exists on this drive (the caller's contract).
        unsafe { slab.crc(off + SLOT_HEADER_LEN, len as usize) }
    }

    /// Recovery only: a copy of the first `len` data bytes of a slot with a valid header.
    ///
    /// # Safety
    ///
    /// As for [`Drive::slot_data_crc`]: the drive is not shared yet.
    ///
    /// # Panics
    ///
    /// If the slot's data range is outside its slab.
    pub(super) unsafe fn slot_data_copy(
        &self,
        addr: SlotAddr,
        slot_size: u32,
        len: u32,
    ) -> Vec<u8> {
        let (slab, off) = self.slot_at(addr, slot_size);
        let mut out = vec![0u8; len as usize];
        // SAFETY: no writer exists on this drive (the caller's contract).
        unsafe { slab.read_into(off + SLOT_HEADER_LEN, &mut out) };
        out
    }

    /// Pinned slots right now (for tests and metrics).
    pub fn pinned_slots(&self) -> usize {
        self.state.lock().pinned_slots()
    }

    /// Regions assigned to no slot class right now.
    pub fn free_regions(&self) -> usize {
        self.state.lock().free_region_count()
    }

    /// Bytes per region, and regions per slab file (the last file may hold fewer).
    pub(super) fn region_geometry(&self) -> (u64, u32) {
        (self.region_len, self.regions_per_slab)
    }

    /// Bytes per block.
    pub fn block_size(&self) -> u32 {
        self.block_size
    }
}
