//! The cache: keys to objects to blocks on top of the store. Claims collapse concurrent misses
//! into one writer per block, hits come back as pinned slot views, and eviction asks here before
//! a slot is taken away.

pub mod index;
pub mod lock;
pub mod pass_hint;

use std::sync::Arc;

use crate::store::format::{SlotHeader, key_hash};
use crate::store::{
    Evictor, Fill, FillState, ObjectMeta, RecoveryReport, SlotAddr, SlotBuf, SlotKind, SlotWriter,
    Store, StoreConfig, StoreError,
};
pub use index::{BlockState, BlockStatus, Object};
use index::{Found, Freed, Index, ObjectEntry, Record};

/// Why the cache refused an operation.
#[derive(Debug, thiserror::Error)]
pub enum CacheError {
    /// The key is not cached.
    #[error("object not in the cache")]
    NoObject,
    /// Another version of the object was installed meanwhile.
    #[error("object changed version")]
    VersionChanged,
    /// The block number is past the object's last block.
    #[error("block {0} is past the end of the object")]
    OutOfRange(u32),
    /// The store failed (no slot could be freed, an I/O error).
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// The answer to "I need block N".
pub enum Claim {
    /// Cached: the bytes, pinned.
    Ready(SlotBuf),
    /// Someone is filling it: wait on the watermark and read [`Fill::readable`].
    Wait(Arc<Fill>),
    /// Nobody has it: the caller fills it and must commit (or drop to abort).
    Write(BlockWriter),
}

struct Inner {
    store: Store,
    index: Index,
    /// One fetch per key at a time.
    fetch_lock: lock::FetchLock,
    /// Keys recently found not storable.
    pass_hints: pass_hint::PassHints,
    /// Background commits: batched so many blocks share one disk flush.
    committer: Option<std::sync::mpsc::Sender<BlockWriter>>,
    pending: parking_lot::Mutex<usize>,
    drained: parking_lot::Condvar,
}

/// The cache: an index of objects and blocks over the store, with the fetch lock and the
/// hit-for-pass memory. Cheap to clone (one `Arc`).
#[derive(Clone)]
pub struct Cache {
    inner: Arc<Inner>,
}

impl Cache {
    /// Opens the store, recovers it and builds the index.
    pub fn open(cfg: &StoreConfig) -> Result<(Cache, RecoveryReport), StoreError> {
        Self::open_with_shards(cfg, Index::default_shards())
    }

    /// [`Cache::open`] with `shards` index shards (a power of two; tests use few).
    pub fn open_with_shards(
        cfg: &StoreConfig,
        shards: usize,
    ) -> Result<(Cache, RecoveryReport), StoreError> {
        let (store, objects, report) = Store::open(cfg)?;
        let index = Index::new(shards);
        let bs = store.block_size();
        let mut displaced = Vec::new();
        for o in objects {
            let h = key_hash(&o.meta.key);
            let mut blocks = vec![BlockState::EMPTY; o.meta.block_count(bs) as usize];
            for (b, addr) in o.blocks {
                // Not verified: the data crc is checked on the first read after the restart.
                blocks[b as usize] = BlockState::ready(addr, false);
            }
            let freed = index.insert(
                h,
                ObjectEntry {
                    version: o.meta.version(),
                    meta: Arc::new(o.meta),
                    meta_addr: o.meta_addr,
                    meta_seq: o.meta_seq,
                    blocks: blocks.into_boxed_slice(),
                },
            );
            displaced.push(freed);
        }
        let sync = store.drives().iter().any(|d| d.syncs_data());
        let (tx, rx) = std::sync::mpsc::channel::<BlockWriter>();
        let inner = Arc::new(Inner {
            store,
            index,
            fetch_lock: Default::default(),
            pass_hints: Default::default(),
            committer: sync.then_some(tx),
            pending: parking_lot::Mutex::new(0),
            drained: parking_lot::Condvar::new(),
        });
        for freed in displaced {
            inner.release(freed);
        }
        if sync {
            std::thread::Builder::new()
                .name("commit".into())
                .spawn(move || committer(rx))
                .map_err(|e| StoreError::Config(format!("spawn committer: {e}")))?;
        }
        Ok((Cache { inner }, report))
    }

    /// The fetches under way, one per key (misses and revalidations collapse onto them).
    pub fn fetch_lock(&self) -> &lock::FetchLock {
        &self.inner.fetch_lock
    }

    /// The keys recently found not storable (hit-for-pass).
    pub fn pass_hints(&self) -> &pass_hint::PassHints {
        &self.inner.pass_hints
    }

    /// The store underneath (drives, capacity; for the summary and verify).
    pub fn store(&self) -> &Store {
        &self.inner.store
    }

    /// Block size in bytes (a power of two, 64 KiB to 16 MiB).
    pub fn block_size(&self) -> u32 {
        self.inner.store.block_size()
    }

    /// The object under `key`, if cached.
    pub fn lookup(&self, key: &str) -> Option<Object> {
        self.inner.index.object(key_hash(key), key)
    }

    /// Status of each block of an object (for planning which runs to fetch).
    pub fn block_statuses(&self, key: &str) -> Option<Vec<BlockStatus>> {
        self.inner.index.block_statuses(key_hash(key), key)
    }

    /// Whether all, and whether any, of the blocks in `blocks` are cached (`None`: no object).
    pub fn ready_in(&self, key: &str, blocks: std::ops::Range<u32>) -> Option<(bool, bool)> {
        // A block filled to its last byte counts: only its commit (flush) is pending, and no
        // upstream request will be made for it.
        self.inner.index.ready_in(key_hash(key), key, blocks)
    }

    /// Stores (or replaces) an object's metadata. Same version: the record is updated and the
    /// blocks kept. Another version: the old blocks are dropped (the object changed upstream).
    pub fn put_object(&self, meta: ObjectMeta) -> Result<Object, CacheError> {
        Ok(self.put_object_claiming(meta, 0..0)?.0)
    }

    /// [`Cache::put_object`], and claims the missing blocks of `blocks` in the same step: the
    /// object never becomes visible with those blocks unclaimed, so a request arriving right
    /// after cannot start a second fetch for them. Fails with `VersionChanged` when a newer
    /// record of another version was installed concurrently (that one wins).
    pub fn put_object_claiming(
        &self,
        meta: ObjectMeta,
        blocks: std::ops::Range<u32>,
    ) -> Result<(Object, Vec<BlockWriter>), CacheError> {
        self.put_object_inner(meta, blocks, None)
    }

    /// Re-stores the record of an object whose installed version is still `expected` (a
    /// refresh after a 304); `VersionChanged` if another version was installed meanwhile.
    pub fn refresh_object(&self, meta: ObjectMeta, expected: u64) -> Result<Object, CacheError> {
        Ok(self.put_object_inner(meta, 0..0, Some(expected))?.0)
    }

    /// Installs `meta` (a new object, a new version, or a refresh when `expected` names the
    /// version it must still be) and claims the missing blocks of `blocks` under the same
    /// shard lock.
    fn put_object_inner(
        &self,
        meta: ObjectMeta,
        blocks: std::ops::Range<u32>,
        expected: Option<u64>,
    ) -> Result<(Object, Vec<BlockWriter>), CacheError> {
        let inner = &self.inner;
        let h = key_hash(&meta.key);
        let bs = inner.store.block_size();
        let blocks = blocks.start..blocks.end.min(meta.block_count(bs) as u32);
        let (addr, seq) = self.write_record(&meta, h)?;
        // Allocated before the shard lock (allocation may evict, which locks shards).
        let slots = self.block_slots(&meta, h, blocks);
        let rec = Record {
            version: meta.version(),
            meta: Arc::new(meta),
            addr,
            seq,
        };
        let nblocks = rec.meta.block_count(bs) as usize;
        let done = inner.index.install(h, &rec, expected, nblocks, slots);
        inner.release(done.freed);
        let object = done.object.ok_or(CacheError::VersionChanged)?;
        let writers = done
            .claimed
            .into_iter()
            .map(|(b, w)| BlockWriter {
                inner: inner.clone(),
                key_hash: h,
                block: b,
                version: rec.version,
                writer: Some(w),
            })
            .collect();
        Ok((object, writers))
    }

    /// Writes `meta`'s record into a metadata slot; its address and sequence number.
    fn write_record(&self, meta: &ObjectMeta, h: u128) -> Result<(SlotAddr, u64), CacheError> {
        let inner = &self.inner;
        let record = meta.encode();
        let drive = inner.store.drive_for(h, u32::MAX);
        let mut w = drive.alloc(SlotKind::Meta, record.len() as u32, &**inner)?;
        w.write(&record);
        let seq = inner.store.next_seq();
        let header = SlotHeader {
            kind: SlotKind::Meta,
            region_generation: 0,
            key_hash: h,
            block: 0,
            data_len: 0,
            data_crc: 0,
            object_version: meta.version(),
            seq,
        };
        let meta_addr = w.fill().addr();
        // No flush of its own: metadata records are crc-checked at recovery, so a record whose
        // data did not reach the disk is dropped there, never trusted; and the first batch of
        // its blocks flushes it with them. A flush here would delay every cold first byte by a
        // device flush (~4 ms here).
        if let Err(e) = drive.commit(&w, header, false) {
            drive.free(meta_addr);
            return Err(e.into());
        }
        Ok((meta_addr, seq))
    }

    /// Data slots for `blocks` of `meta`, as many as can be allocated in order.
    fn block_slots(
        &self,
        meta: &ObjectMeta,
        h: u128,
        blocks: std::ops::Range<u32>,
    ) -> Vec<(u32, SlotWriter)> {
        let inner = &self.inner;
        let bs = inner.store.block_size();
        let mut slots = Vec::with_capacity(blocks.len());
        for b in blocks {
            let len = meta.block_len(bs, u64::from(b)) as u32;
            match inner
                .store
                .drive_for(h, b)
                .alloc(SlotKind::Data, len, &**inner)
            {
                Ok(w) => slots.push((b, w)),
                Err(e) => {
                    log::warn!("{}: block {b} not claimed: {e}", meta.key);
                    break;
                }
            }
        }
        slots
    }

    /// Drops an object and frees its slots (each when its last reader is done).
    pub fn remove(&self, key: &str) -> bool {
        let Some(freed) = self.inner.index.remove(key_hash(key), key) else {
            return false;
        };
        self.inner.release(freed);
        true
    }

    /// A cached block, or `None` (missing, filling, or failed its check).
    pub fn get(&self, key: &str, block: u32) -> Option<SlotBuf> {
        let version = self.lookup(key)?.version;
        match self.claim_existing(key, block, version) {
            Ok(Some(Claim::Ready(b))) => Some(b),
            _ => None,
        }
    }

    /// Claims the run of missing blocks of `key` from `first` up to `end` (exclusive), a writer
    /// each, for one upstream request to fill. The run stops at the first block that is not
    /// missing, returned as claimed (`Ready` or `Wait`), or at `end`. An error on `first` is
    /// returned; one further on ends the run.
    pub fn claim_run(
        &self,
        key: &str,
        first: u32,
        end: u32,
        version: u64,
    ) -> Result<(Vec<BlockWriter>, Option<Claim>), CacheError> {
        let mut writers = Vec::new();
        for b in first..end.max(first + 1) {
            match self.claim(key, b, version) {
                Ok(Claim::Write(w)) => writers.push(w),
                Ok(other) => return Ok((writers, Some(other))),
                Err(e) if b == first => return Err(e),
                Err(_) => break,
            }
        }
        Ok((writers, None))
    }

    /// Claims block `block` of version `version` of the object: exactly one caller at a time
    /// gets [`Claim::Write`]; the others wait on its fill or read the cached bytes.
    pub fn claim(&self, key: &str, block: u32, version: u64) -> Result<Claim, CacheError> {
        loop {
            if let Some(c) = self.claim_existing(key, block, version)? {
                return Ok(c);
            }
            // Missing: allocate outside the shard lock (allocation may evict, which locks
            // shards), then install unless someone else claimed the block meanwhile.
            let inner = &self.inner;
            let h = key_hash(key);
            let len = self
                .lookup(key)
                .ok_or(CacheError::NoObject)?
                .meta
                .block_len(inner.store.block_size(), u64::from(block));
            let drive = inner.store.drive_for(h, block);
            let w = drive.alloc(SlotKind::Data, len as u32, &**inner)?;
            let addr = w.fill().addr();
            if inner.index.claim(h, key, block, version, w.fill()) {
                return Ok(Claim::Write(BlockWriter {
                    inner: inner.clone(),
                    key_hash: h,
                    block,
                    version,
                    writer: Some(w),
                }));
            }
            // Lost the race (or the object changed): give the slot back and look again.
            drive.free(addr);
        }
    }

    /// Claim without allocating: `None` means the block is missing.
    fn claim_existing(
        &self,
        key: &str,
        block: u32,
        version: u64,
    ) -> Result<Option<Claim>, CacheError> {
        let inner = &self.inner;
        let h = key_hash(key);
        loop {
            let bs = inner.store.block_size();
            let found = inner.index.block(h, key, block, version, |meta, state| {
                let len = meta.block_len(bs, u64::from(block));
                let addr = state.addr();
                // SAFETY: `Index::block` runs this under the shard lock, with the block
                // `Ready` at `addr`: its writer committed. Every path that frees a `Ready` slot
                // first takes it out of the index under this lock, so it cannot be freed (let
                // alone handed to a new writer) before `committed` has pinned it.
                let buf = unsafe {
                    inner
                        .store
                        .drive(addr.drive())
                        .committed(addr, len as usize)
                };
                (buf, state.verified())
            })?;
            let (buf, verified) = match found {
                Found::Missing => return Ok(None),
                Found::Filling(fill) => return Ok(Some(Claim::Wait(fill))),
                Found::Ready(r) => r,
            };
            if verified || inner.verify(h, block, &buf) {
                return Ok(Some(Claim::Ready(buf)));
            }
        }
    }

    /// Waits until every background commit has been written.
    pub fn flush(&self) {
        let mut p = self.inner.pending.lock();
        while *p > 0 {
            self.inner.drained.wait(&mut p);
        }
    }

    /// [`Cache::flush`], giving up after `timeout` (fills still streaming keep adding blocks);
    /// returns whether the queue was drained.
    pub fn flush_within(&self, timeout: std::time::Duration) -> bool {
        let deadline = std::time::Instant::now() + timeout;
        let mut p = self.inner.pending.lock();
        while *p > 0 {
            if self.inner.drained.wait_until(&mut p, deadline).timed_out() {
                return *p == 0;
            }
        }
        true
    }

    /// Counts for the summary and metrics: (objects, blocks stored, blocks being filled).
    pub fn counts(&self) -> (u64, u64, u64) {
        self.inner.index.counts()
    }

    /// Every cached object with its number of cached blocks (for `inspect`).
    pub fn objects(&self) -> Vec<(Object, usize)> {
        self.inner.index.objects()
    }
}

impl Inner {
    /// Gives the slots an index operation took out back to their drives (each is reused once
    /// its last reader lets go).
    fn release(&self, freed: Freed) {
        for addr in freed.into_addrs() {
            self.store.drive(addr.drive()).free(addr);
        }
    }

    /// First read of a block recovered from disk: check its data crc before serving it. A block
    /// that fails is dropped (refetched later), never served.
    fn verify(&self, h: u128, block: u32, buf: &SlotBuf) -> bool {
        let addr = buf.pin().addr();
        let drive = self.store.drive(addr.drive());
        let good = drive.read_slot_header(addr).is_ok_and(|hd| {
            hd.key_hash == h && hd.block == block && crc32fast::hash(buf) == hd.data_crc
        });
        let (served, freed) = self.index.checked(h, block, addr, good);
        self.release(freed);
        served
    }
}

impl Evictor for Inner {
    fn evict(&self, addr: SlotAddr, header: &SlotHeader) -> bool {
        if header.kind != SlotKind::Data {
            return false;
        }
        let drive = self.store.drive(addr.drive());
        match self
            .index
            .evict(header.key_hash, header.block, addr, |a| drive.is_pinned(a))
        {
            Some(freed) => {
                self.release(freed);
                true
            }
            None => false,
        }
    }
}

/// The writer of one block: bytes go straight into the slot; waiters see them as they land.
pub struct BlockWriter {
    inner: Arc<Inner>,
    key_hash: u128,
    block: u32,
    version: u64,
    writer: Option<SlotWriter>,
}

impl BlockWriter {
    fn w(&mut self) -> &mut SlotWriter {
        self.writer.as_mut().expect("writer used after commit")
    }

    /// The block number this writer fills.
    pub fn block(&self) -> u32 {
        self.block
    }

    /// The slot bytes not yet written (to read into directly).
    pub fn spare_mut(&mut self) -> &mut [u8] {
        self.w().spare_mut()
    }

    /// Marks `n` more bytes of [`BlockWriter::spare_mut`] written (publishes them to readers).
    pub fn advance(&mut self, n: usize) {
        self.w().advance(n)
    }

    /// Copies as much of `data` as fits; returns the bytes taken.
    pub fn write(&mut self, data: &[u8]) -> usize {
        self.w().write(data)
    }

    /// Like [`BlockWriter::write`], through the file rather than the mapping (see
    /// `SlotWriter::write_through_file`).
    pub fn write_through_file(&mut self, data: &[u8]) -> std::io::Result<usize> {
        self.w().write_through_file(data)
    }

    /// Bytes written so far.
    pub fn filled(&self) -> usize {
        self.writer.as_ref().map_or(0, |w| w.filled())
    }

    /// The block's length in bytes (the last block may be short).
    pub fn capacity(&self) -> usize {
        self.writer.as_ref().map_or(0, |w| w.capacity())
    }

    /// Is every byte of the block written?
    pub fn is_complete(&self) -> bool {
        self.writer.as_ref().is_some_and(|w| w.is_complete())
    }

    /// The fill readers wait on (its watermark), while the writer lives.
    pub fn fill(&self) -> Option<&Arc<Fill>> {
        self.writer.as_ref().map(|w| w.fill())
    }

    /// Seals the block and makes it a hit for everyone. Fails if the block is incomplete or the
    /// object changed meanwhile (then nothing is cached and the waiters are told it aborted).
    pub fn commit(mut self) -> Result<SlotBuf, CacheError> {
        self.seal(true)
    }

    /// Like [`BlockWriter::commit`], done by the committer thread: the data is already readable
    /// by waiters, and a batch of blocks shares one disk flush. Errors are logged there.
    pub fn commit_background(self) {
        let inner = self.inner.clone();
        match &inner.committer {
            Some(tx) if self.is_complete() => {
                *inner.pending.lock() += 1;
                if let Err(std::sync::mpsc::SendError(mut w)) = tx.send(self) {
                    *inner.pending.lock() -= 1;
                    let _ = w.seal(true);
                }
            }
            _ => {
                let mut w = self;
                if let Err(e) = w.seal(true) {
                    log::warn!("block {} not committed: {e}", w.block);
                }
            }
        }
    }

    fn seal(&mut self, flush: bool) -> Result<SlotBuf, CacheError> {
        let w = self.writer.take().expect("commit twice");
        let inner = self.inner.clone();
        let fill = w.fill().clone();
        let addr = fill.addr();
        let drive = inner.store.drive(addr.drive());
        if !w.is_complete() {
            self.writer = Some(w);
            return Err(CacheError::Store(StoreError::Config(
                "commit of an incomplete block".into(),
            )));
        }
        let header = SlotHeader {
            kind: SlotKind::Data,
            region_generation: 0,
            key_hash: self.key_hash,
            block: self.block,
            data_len: 0,
            data_crc: 0,
            object_version: self.version,
            seq: inner.store.next_seq(),
        };
        let buf = match drive.commit(&w, header, flush) {
            Ok(buf) => buf,
            Err(e) => {
                self.writer = Some(w);
                return Err(e.into());
            }
        };
        let installed = inner
            .index
            .commit(self.key_hash, self.block, self.version, &fill);
        if installed {
            fill.finish(FillState::Committed);
            Ok(buf)
        } else {
            drive.free(addr);
            fill.finish(FillState::Aborted);
            Err(CacheError::VersionChanged)
        }
    }

    /// Gives up: frees the slot (once readers let go) and wakes waiters with `Aborted`.
    pub fn abort(mut self) {
        self.abort_inner();
    }

    fn abort_inner(&mut self) {
        let Some(w) = self.writer.take() else { return };
        let inner = &self.inner;
        let fill = w.fill().clone();
        let addr = fill.addr();
        let freed = inner.index.abort(self.key_hash, self.block, &fill);
        inner.store.drive(addr.drive()).free(addr);
        inner.release(freed);
        fill.finish(FillState::Aborted);
        drop(w);
    }
}

/// The committer thread: flushes each drive once per batch, then seals the batch's blocks.
fn committer(rx: std::sync::mpsc::Receiver<BlockWriter>) {
    while let Ok(first) = rx.recv() {
        let mut batch = vec![first];
        while batch.len() < 512 {
            match rx.try_recv() {
                Ok(w) => batch.push(w),
                Err(_) => break,
            }
        }
        let inner = batch[0].inner.clone();
        let mut drives: Vec<u8> = batch
            .iter()
            .filter_map(|w| w.fill().map(|f| f.addr().drive()))
            .collect();
        drives.sort_unstable();
        drives.dedup();
        let mut failed = Vec::new();
        for d in drives {
            if let Err(e) = inner.store.drive(d).sync_data() {
                log::error!("flush failed, blocks not committed: {e}");
                failed.push(d);
            }
        }
        let n = batch.len();
        for mut w in batch {
            let flushed = w
                .fill()
                .is_some_and(|f| !failed.contains(&f.addr().drive()));
            if flushed && let Err(e) = w.seal(false) {
                log::debug!("block {} not committed: {e}", w.block);
            }
            // An unflushed writer is dropped here, which aborts it.
        }
        let mut p = inner.pending.lock();
        *p -= n;
        if *p == 0 {
            inner.drained.notify_all();
        }
    }
}

impl Drop for BlockWriter {
    fn drop(&mut self) {
        self.abort_inner();
    }
}
