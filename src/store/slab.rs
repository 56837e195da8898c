//! Slab files and slot memory: the one place where the memory map is turned into byte slices.
//!
//! # Safety story
//!
//! A slab file is mapped shared and read-write (`memmap2::MmapRaw`, which never hands out a
//! reference by itself). Rust's aliasing rules then hold by a protocol the rest of the store keeps:
//!
//! 1. **Headers** (slab, region and slot headers) are written through the file (`pwrite`), never
//!    through the mapping, and copied out of the mapping with a raw pointer copy
//!    ([`Slab::read_header_mapped`], an `unsafe fn`), never through a reference, only while the
//!    owning drive's allocator lock is held (or before the drive is shared, during recovery, or
//!    over a read-only map in `verify`). So no two threads touch a header at once. Code outside
//!    that protocol reads a header through the file ([`Slab::read_header`], safe).
//! 2. **Slot data** has exactly one writer: the [`SlotWriter`] the allocator handed out for a free
//!    slot. It writes only at and after its watermark ([`Fill::filled`]); readers get
//!    [`SlotBuf`]s only below the watermark (published with `Release`, read with `Acquire`), or
//!    over committed data, which nobody writes again while it is pinned.
//! 3. **Pins** ([`PinGuard`]) keep a slot from being reused: the allocator never hands out or
//!    evicts a pinned slot, and a slot freed while pinned is only recycled when the last pin goes.
//!    Every `SlotBuf` and `SlotWriter` holds a pin, and the pin holds the drive (hence the map)
//!    alive, so a slice can be given to the kernel (io_uring) and outlive the request.
//! 4. **Other processes**: the cache directory is locked (`flock`) while a store has it open, so
//!    no other gatecache writes it. A process that ignores the lock and truncates a slab could make
//!    a read fault (SIGBUS); like ripgrep's mmap searcher we accept that: the files are ours.
//!
//! Every function whose soundness rests on one of these rules is an `unsafe fn` whose
//! `# Safety` section names the rule, or takes the drive's lock guard as a witness
//! (`Drive::slot_header`); docs/DESIGN.md ("Unsafe") lists every `unsafe` site of the crate.

use std::fs::File;
use std::io;
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use memmap2::MmapRaw;
use parking_lot::{Condvar, Mutex};

use super::drive::PinGuard;

/// Reserves `len` bytes of disk for `file`. `Ok(false)` when the filesystem cannot preallocate.
pub(crate) fn preallocate(file: &File, len: u64) -> io::Result<bool> {
    use std::os::fd::AsRawFd;
    // SAFETY: a plain syscall on an open descriptor we own; no memory is passed.
    let rc = unsafe { libc::fallocate(file.as_raw_fd(), 0, 0, len as libc::off_t) };
    if rc == 0 {
        return Ok(true);
    }
    let err = io::Error::last_os_error();
    match err.raw_os_error() {
        Some(libc::EOPNOTSUPP) | Some(libc::ENOSYS) => Ok(false),
        _ => Err(err),
    }
}

/// Takes an exclusive `flock` without waiting. `Ok(false)` when another process holds it.
pub(crate) fn lock_exclusive(file: &File) -> io::Result<bool> {
    use std::os::fd::AsRawFd;
    // SAFETY: a plain syscall on an open descriptor we own; no memory is passed.
    let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
    if rc == 0 {
        return Ok(true);
    }
    let err = io::Error::last_os_error();
    if err.raw_os_error() == Some(libc::EWOULDBLOCK) {
        return Ok(false);
    }
    Err(err)
}

/// One memory-mapped slab file.
pub struct Slab {
    map: MmapRaw,
    len: u64,
    file: File,
}

impl Slab {
    /// Maps the first `len` bytes of an already sized file, shared and read-write.
    ///
    /// # Errors
    ///
    /// If `len` does not fit in `usize`, or `mmap` fails.
    pub(crate) fn map(file: File, len: u64) -> io::Result<Slab> {
        let map = memmap2::MmapOptions::new()
            .len(usize::try_from(len).map_err(io::Error::other)?)
            .map_raw(&file)?;
        Ok(Slab { map, len, file })
    }

    /// Maps the first `len` bytes of a file read-only (`verify`); writing through such a slab
    /// faults.
    ///
    /// # Errors
    ///
    /// As for [`Slab::map`].
    pub(crate) fn map_read_only(file: File, len: u64) -> io::Result<Slab> {
        let map = memmap2::MmapOptions::new()
            .len(usize::try_from(len).map_err(io::Error::other)?)
            .map_raw_read_only(&file)?;
        Ok(Slab { map, len, file })
    }

    /// Bytes mapped: the file's length when it was mapped.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// Whether nothing is mapped.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    fn check(&self, off: u64, len: usize) {
        assert!(
            off.checked_add(len as u64)
                .is_some_and(|end| end <= self.len),
            "slab access out of bounds: {off}+{len} > {}",
            self.len
        );
    }

    /// A pointer to byte `off` of the map, after checking that `len` bytes from it lie inside;
    /// what may be done through it is the protocol's business (module docs).
    ///
    /// # Panics
    ///
    /// If `off..off+len` is outside the slab.
    pub(super) fn ptr(&self, off: u64, len: usize) -> *mut u8 {
        self.check(off, len);
        self.map.as_mut_ptr().wrapping_add(off as usize)
    }

    /// Copies a 64-byte header at `off` out of the file (pread), outside the lock protocol: safe
    /// at any time, because the kernel copies the bytes into a buffer of our own. The store
    /// itself reads headers from the map (`Slab::read_header_mapped`), without a syscall.
    ///
    /// # Panics
    ///
    /// If `off..off+64` is outside the slab, or the file cannot be read there (a disk error, or
    /// a file truncated behind our back: rule 4).
    pub fn read_header(&self, off: u64) -> [u8; 64] {
        use std::os::unix::fs::FileExt;
        self.check(off, 64);
        let mut out = [0u8; 64];
        if let Err(e) = self.file.read_exact_at(&mut out, off) {
            panic!("slab header read at {off}: {e}");
        }
        out
    }

    /// Copies a 64-byte header at `off` out of the map (protocol rule 1).
    ///
    /// # Safety
    ///
    /// Nothing may write `off..off+64` through the map during the call. That holds when one of:
    /// - the owning drive's allocator lock is held and `off` is the slab header, a region
    ///   header, or a slot header in the region layout the allocator holds under that lock
    ///   (headers are only ever written through the file, and a region changes layout only
    ///   while none of its slots has a writer);
    /// - the drive is not shared yet (recovery, before the store exists: no writer exists);
    /// - the slab is mapped read-only by `verify`, which holds the cache directory's `flock`
    ///   (or found no lock file: no store had the directory open), so no writer exists in this
    ///   process; another process writing the file anyway is rule 4's case.
    ///
    /// # Panics
    ///
    /// If `off..off+64` is outside the slab.
    pub(crate) unsafe fn read_header_mapped(&self, off: u64) -> [u8; 64] {
        let src = self.ptr(off, 64);
        let mut out = [0u8; 64];
        // SAFETY: `src..src+64` is inside the mapping (checked by `ptr`), `out` is a local
        // array, and by the caller's contract nothing writes these bytes during the copy.
        unsafe { std::ptr::copy_nonoverlapping(src, out.as_mut_ptr(), 64) };
        out
    }

    /// Writes a 64-byte header. Caller holds the drive lock (protocol rule 1).
    ///
    /// Through the file (pwrite), not the mapping: a store into the mapping can fault
    /// (first touch, or a page write-protected again after writeback), and a fault can wait on
    /// the filesystem while the caller holds the drive lock. Measured: claiming a 64-block
    /// window took 14-160 ms with headers stored through the mapping while earlier blocks were
    /// being flushed. The page cache is shared, so readers of the mapping see the new bytes.
    pub(crate) fn write_header(&self, off: u64, header: &[u8; 64]) {
        use std::os::unix::fs::FileExt;
        self.check(off, 64);
        if let Err(e) = self.file.write_all_at(header, off) {
            // Only an I/O error of the disk itself; the slot is then not durable, which
            // recovery handles like a crash (its crcs never let a wrong byte through).
            log::error!("slot header write at {off}: {e}");
        }
    }

    /// Copies `out.len()` bytes at `off` out of the map (recovery, verify).
    ///
    /// # Safety
    ///
    /// Nothing may write `off..off+out.len()` during the call: no [`SlotWriter`] owns any of
    /// it (protocol rule 2). That holds when the slab belongs to a drive that is not shared yet
    /// (recovery, before the store exists: no writer exists), or is mapped read-only by `verify`
    /// (see [`Slab::read_header_mapped`]).
    ///
    /// # Panics
    ///
    /// If the range is outside the slab.
    pub(crate) unsafe fn read_into(&self, off: u64, out: &mut [u8]) {
        let src = self.ptr(off, out.len());
        // SAFETY: the range is inside the mapping (checked by `ptr`) and nothing writes it (the
        // caller's contract). `out` cannot overlap it: only a `SlotWriter` hands out `&mut` to
        // mapped bytes, and none owns the range.
        unsafe { std::ptr::copy_nonoverlapping(src, out.as_mut_ptr(), out.len()) };
    }

    /// crc32 of `len` bytes at `off` in the map (recovery and verify).
    ///
    /// # Safety
    ///
    /// As for [`Slab::read_into`]: no writer owns any byte of the range.
    ///
    /// # Panics
    ///
    /// If the range is outside the slab.
    pub(crate) unsafe fn crc(&self, off: u64, len: usize) -> u32 {
        let ptr = self.ptr(off, len);
        // SAFETY: the range is inside the live mapping `self` holds (checked by `ptr`), and by
        // the caller's contract nothing writes it while the slice lives (this call).
        crc32fast::hash(unsafe { std::slice::from_raw_parts(ptr, len) })
    }

    /// Writes dirty pages of a range back to disk and waits (msync MS_SYNC).
    ///
    /// # Errors
    ///
    /// The msync error (EIO: the disk failed).
    ///
    /// # Panics
    ///
    /// If the range is outside the slab.
    pub(crate) fn flush(&self, off: u64, len: usize) -> io::Result<()> {
        self.check(off, len);
        self.map.flush_range(off as usize, len)
    }

    /// Writes back every dirty page of the slab and waits (fdatasync): one device flush for
    /// many blocks, where a flush per block would cap filling at the disk's flush rate (measured:
    /// 964 MiB/s batched against 468 MiB/s with one msync per 1 MiB block, perf/RESULTS.md).
    ///
    /// # Errors
    ///
    /// The fdatasync error.
    pub(crate) fn sync_data(&self) -> io::Result<()> {
        self.file.sync_data()
    }

    /// Recovery: until [`Slab::end_scan`], a page fault reads just its page. By default the
    /// kernel reads a whole readahead window around each fault (`read_ahead_kb`, often 128 KiB
    /// to 8 MiB), so a scan of one header per region would read most of the slab.
    pub(crate) fn begin_scan(&self) {
        let _ = self.map.advise(memmap2::Advice::Random);
    }

    /// Recovery: back to the kernel's default readahead (see [`Slab::begin_scan`]).
    pub(crate) fn end_scan(&self) {
        let _ = self.map.advise(memmap2::Advice::Normal);
    }

    /// Tells the kernel the range will be read soon (recovery queues all header pages at once:
    /// a cold 10 GiB scan took 135 ms with it and `begin_scan`, 9.1 s without, perf/RESULTS.md).
    ///
    /// # Panics
    ///
    /// If the range is outside the slab.
    pub(crate) fn will_need(&self, off: u64, len: usize) {
        self.check(off, len);
        let _ = self
            .map
            .advise_range(memmap2::Advice::WillNeed, off as usize, len);
    }
}

/// A pinned, read-only view of slot bytes that may be handed to the kernel with no copy.
///
/// Cloning is cheap (the pin is shared). The bytes stay valid and unchanged for as long as any
/// clone lives (protocol rules 2 and 3).
#[derive(Clone)]
pub struct SlotBuf {
    pin: Arc<PinGuard>,
    ptr: *const u8,
    len: usize,
}

// SAFETY: the view is immutable bytes kept alive and unchanged by the pin (an `Arc` of
// thread-safe state); sharing or sending it between threads is like sharing `Arc<[u8]>`.
unsafe impl Send for SlotBuf {}
// SAFETY: see `Send`: only shared reads are possible through a `SlotBuf`.
unsafe impl Sync for SlotBuf {}

impl SlotBuf {
    /// A view of the first `len` data bytes of the slot `pin` holds.
    ///
    /// # Safety
    ///
    /// Nothing may write those bytes while the view (or a clone) lives (protocol rule 2): the
    /// slot's writer has finished (committed, or complete and never written again), and the
    /// slot is not handed to a new writer meanwhile, which the pin guarantees (rule 3).
    ///
    /// # Panics
    ///
    /// If `len` exceeds the slot's capacity.
    pub(super) unsafe fn committed(pin: Arc<PinGuard>, len: usize) -> SlotBuf {
        let ptr = pin.data_ptr(len);
        SlotBuf { pin, ptr, len }
    }

    /// Bytes in the view.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the view holds no byte.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// A sub-view sharing the same pin. Panics if out of range, like slicing.
    pub fn slice(&self, range: std::ops::Range<usize>) -> SlotBuf {
        assert!(range.start <= range.end && range.end <= self.len);
        SlotBuf {
            pin: self.pin.clone(),
            ptr: self.ptr.wrapping_add(range.start),
            len: range.end - range.start,
        }
    }

    /// The pin this view holds (its slot address, for logs and tests).
    pub fn pin(&self) -> &PinGuard {
        &self.pin
    }
}

impl std::ops::Deref for SlotBuf {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        // SAFETY: `ptr..ptr+len` lies in a live mapping held by `pin`, and by protocol rules 2-3
        // nothing writes these bytes while the pin exists.
        unsafe { std::slice::from_raw_parts(self.ptr, self.len) }
    }
}

impl AsRef<[u8]> for SlotBuf {
    fn as_ref(&self) -> &[u8] {
        self
    }
}

impl std::fmt::Debug for SlotBuf {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SlotBuf")
            .field("addr", &self.pin.addr())
            .field("len", &self.len)
            .finish()
    }
}

// SAFETY: `stable_ptr` points into the mapping, which the pin keeps alive and unmoved until the
// buffer (and so the kernel op that owns it) is dropped; all `len` bytes are initialised.
unsafe impl tokio_uring::buf::IoBuf for SlotBuf {
    fn stable_ptr(&self) -> *const u8 {
        self.ptr
    }
    fn bytes_init(&self) -> usize {
        self.len
    }
    fn bytes_total(&self) -> usize {
        self.len
    }
}

/// How a fill ended, as seen by a waiter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FillState {
    /// The writer is still adding bytes.
    Filling,
    /// Every byte is written, the slot's header too, and the block is `Ready` in the index.
    Committed,
    /// The writer gave up (aborted or dropped), or the object changed version before the
    /// commit: views already taken stay valid (they hold the pin), but no more bytes come.
    Aborted,
}

/// The shared progress of one block being filled: the watermark and the wake-ups.
///
/// Async waiters (tokio-uring tasks) use a `tokio::sync::Notify`; plain threads use a condvar.
pub struct Fill {
    pin: Arc<PinGuard>,
    capacity: usize,
    filled: AtomicUsize,
    state: AtomicU8,
    notify: tokio::sync::Notify,
    lock: Mutex<()>,
    cond: Condvar,
}

impl Fill {
    /// The progress of a new fill of `capacity` bytes into the slot `pin` holds: nothing
    /// written, [`FillState::Filling`].
    pub(super) fn new(pin: Arc<PinGuard>, capacity: usize) -> Arc<Fill> {
        Arc::new(Fill {
            pin,
            capacity,
            filled: AtomicUsize::new(0),
            state: AtomicU8::new(FillState::Filling as u8),
            notify: tokio::sync::Notify::new(),
            lock: Mutex::new(()),
            cond: Condvar::new(),
        })
    }

    /// The slot being filled.
    pub fn addr(&self) -> super::SlotAddr {
        self.pin.addr()
    }

    /// The block's final length.
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Bytes written so far; everything below this may be read.
    pub fn filled(&self) -> usize {
        self.filled.load(Ordering::Acquire)
    }

    /// How the fill stands now (`Acquire`: bytes published before a state change are visible).
    pub fn state(&self) -> FillState {
        match self.state.load(Ordering::Acquire) {
            0 => FillState::Filling,
            1 => FillState::Committed,
            _ => FillState::Aborted,
        }
    }

    /// The bytes already written, as a pinned view (empty while nothing arrived).
    pub fn readable(&self) -> SlotBuf {
        // Acquire pairs with the writer's Release: the bytes below `filled` are complete.
        let len = self.filled();
        SlotBuf {
            pin: self.pin.clone(),
            ptr: self.pin.data_ptr(self.capacity),
            len,
        }
    }

    fn wake(&self) {
        self.notify.notify_waiters();
        let _g = self.lock.lock();
        self.cond.notify_all();
    }

    fn ready(&self, beyond: usize) -> bool {
        self.filled() > beyond || self.state() != FillState::Filling
    }

    /// Waits (async) until more than `beyond` bytes are filled or the fill ended.
    pub async fn wait_async(&self, beyond: usize) -> FillState {
        loop {
            let notified = self.notify.notified();
            tokio::pin!(notified);
            // Register before checking, so a wake between the check and the await is not lost.
            notified.as_mut().enable();
            if self.ready(beyond) {
                return self.state();
            }
            notified.await;
        }
    }

    /// Waits (blocking thread) like [`Fill::wait_async`]; `None` on timeout.
    pub fn wait_blocking(&self, beyond: usize, timeout: Duration) -> Option<FillState> {
        let deadline = Instant::now() + timeout;
        let mut g = self.lock.lock();
        while !self.ready(beyond) {
            if self.cond.wait_until(&mut g, deadline).timed_out() {
                return self.ready(beyond).then(|| self.state());
            }
        }
        Some(self.state())
    }

    /// Ends the fill as `state` (`Committed` or `Aborted`) and wakes every waiter.
    pub(crate) fn finish(&self, state: FillState) {
        self.state.store(state as u8, Ordering::Release);
        self.wake();
    }
}

/// The single writer of one slot's data (protocol rule 2).
pub struct SlotWriter {
    fill: Arc<Fill>,
    ptr: *mut u8,
}

// SAFETY: the writer is the unique owner of the unwritten part of its slot; moving it to another
// thread (a fetcher) moves that ownership. The shared part is `Fill`, which is thread-safe.
unsafe impl Send for SlotWriter {}

impl SlotWriter {
    /// The writer of the slot `fill` describes (its pin) from byte 0.
    ///
    /// # Safety
    ///
    /// This must be the only writer of the slot, and no reader view of its bytes may exist
    /// other than through `fill` (protocol rule 2): the allocator has just handed the slot out
    /// (it was free and unpinned) and `fill` is new.
    ///
    /// # Panics
    ///
    /// If `fill`'s capacity exceeds the slot's.
    pub(super) unsafe fn new(fill: Arc<Fill>) -> SlotWriter {
        let ptr = fill.pin.data_ptr(fill.capacity);
        SlotWriter { fill, ptr }
    }

    /// The shared progress that readers wait on.
    pub fn fill(&self) -> &Arc<Fill> {
        &self.fill
    }

    /// The unwritten rest of the slot, to read upstream bytes straight into.
    pub fn spare_mut(&mut self) -> &mut [u8] {
        let filled = self.fill.filled.load(Ordering::Relaxed);
        // SAFETY: the allocator gave this slot to this writer alone; readers only see bytes
        // below `filled`, and `&mut self` keeps this the only live mutable view.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.add(filled), self.fill.capacity - filled) }
    }

    /// Publishes `n` more bytes (written through `spare_mut`) to waiters.
    pub fn advance(&mut self, n: usize) {
        let filled = self.fill.filled.load(Ordering::Relaxed);
        assert!(n <= self.fill.capacity - filled, "advance past the slot");
        self.fill.filled.store(filled + n, Ordering::Release);
        self.fill.wake();
    }

    /// Writes `data` through the file (pwrite) rather than the mapping, and publishes it;
    /// returns how much fitted.
    ///
    /// Pages first written through the mapping are single 4 KiB page-cache pages, and sending
    /// from them costs about twice the CPU of pages the page cache allocated itself (large
    /// folios): measured 1.7-2.2 GB/s against 4.5-4.7 GB/s on one core for 1 MiB hits
    /// (docs/DESIGN.md). Written this way, filled blocks are as cheap to serve as recovered ones.
    pub fn write_through_file(&mut self, data: &[u8]) -> io::Result<usize> {
        use std::os::unix::fs::FileExt;
        let filled = self.fill.filled.load(Ordering::Relaxed);
        let n = data.len().min(self.fill.capacity - filled);
        let slab = self.fill.pin.slab();
        let off = self.ptr as usize - slab.map.as_ptr() as usize + filled;
        slab.file.write_all_at(&data[..n], off as u64)?;
        self.advance(n);
        Ok(n)
    }

    /// Copies `data` in and publishes it; returns how much fitted.
    pub fn write(&mut self, data: &[u8]) -> usize {
        let spare = self.spare_mut();
        let n = data.len().min(spare.len());
        spare[..n].copy_from_slice(&data[..n]);
        self.advance(n);
        n
    }

    /// Bytes written and published so far.
    pub fn filled(&self) -> usize {
        self.fill.filled()
    }

    /// Bytes the block will hold when complete.
    pub fn capacity(&self) -> usize {
        self.fill.capacity
    }

    /// Whether every byte is written (the slot may be committed).
    pub fn is_complete(&self) -> bool {
        self.filled() == self.capacity()
    }

    /// The written bytes (for the crc at commit).
    pub(super) fn written(&self) -> &[u8] {
        // SAFETY: bytes below the watermark are complete and no longer written by anyone.
        unsafe { std::slice::from_raw_parts(self.ptr, self.filled()) }
    }

    /// The pin on the slot being written.
    pub(super) fn pin(&self) -> &Arc<PinGuard> {
        &self.fill.pin
    }
}
