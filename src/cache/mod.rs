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
pub use index::{BlockState, BlockStatus};
use index::{Index, ObjectEntry};

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

/// A cached object as a request sees it: metadata plus its version (for claims).
#[derive(Clone, Debug)]
pub struct Object {
    /// The stored response metadata (headers, length, freshness).
    pub meta: Arc<ObjectMeta>,
    /// xxh3 of length + ETag + Last-Modified: blocks of another version are never mixed in.
    pub version: u64,
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
        for o in objects {
            let h = key_hash(&o.meta.key);
            let mut blocks = vec![BlockState::EMPTY; o.meta.block_count(bs) as usize];
            for (b, addr) in o.blocks {
                // Not verified: the data crc is checked on the first read after the restart.
                blocks[b as usize] = BlockState::ready(addr, false);
            }
            index.shard(h).objects.insert(
                h,
                ObjectEntry {
                    version: o.meta.version(),
                    meta: Arc::new(o.meta),
                    meta_addr: o.meta_addr,
                    meta_seq: o.meta_seq,
                    blocks: blocks.into_boxed_slice(),
                },
            );
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
        let h = key_hash(key);
        let shard = self.inner.index.shard(h);
        let e = shard.objects.get(&h).filter(|e| e.meta.key == key)?;
        Some(Object {
            meta: e.meta.clone(),
            version: e.version,
        })
    }

    /// Status of each block of an object (for planning which runs to fetch).
    pub fn block_statuses(&self, key: &str) -> Option<Vec<BlockStatus>> {
        let h = key_hash(key);
        let shard = self.inner.index.shard(h);
        let e = shard.objects.get(&h).filter(|e| e.meta.key == key)?;
        Some(e.blocks.iter().map(|b| b.status()).collect())
    }

    /// Whether all, and whether any, of the blocks in `blocks` are cached (`None`: no object).
    pub fn ready_in(&self, key: &str, blocks: std::ops::Range<u32>) -> Option<(bool, bool)> {
        let h = key_hash(key);
        let shard = self.inner.index.shard(h);
        let e = shard.objects.get(&h).filter(|e| e.meta.key == key)?;
        let (mut all, mut any) = (true, false);
        for b in blocks {
            let ready = match e.blocks.get(b as usize).map(|s| s.status()) {
                Some(BlockStatus::Ready) => true,
                // Every byte is in memory, only the commit (flush) is pending: no upstream
                // request will be made for it.
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
        let mut to_free = Vec::new();
        let mut writers = Vec::new();
        let result = {
            let mut shard = inner.index.shard(h);
            let nblocks = rec.meta.block_count(bs) as usize;
            let installed = install(&mut shard, h, &rec, expected, nblocks, &mut to_free);
            for (b, w) in slots {
                match installed
                    .as_ref()
                    .and_then(|_| claim_slot(&mut shard, h, b, &w))
                {
                    Some(()) => writers.push(BlockWriter {
                        inner: inner.clone(),
                        key_hash: h,
                        block: b,
                        version: rec.version,
                        writer: Some(w),
                    }),
                    None => to_free.push(w.fill().addr()),
                }
            }
            installed
        };
        for addr in to_free {
            inner.store.drive(addr.drive()).free(addr);
        }
        match result {
            Some(o) => Ok((o, writers)),
            None => Err(CacheError::VersionChanged),
        }
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
        let h = key_hash(key);
        let entry = {
            let mut shard = self.inner.index.shard(h);
            match shard.objects.get(&h) {
                Some(e) if e.meta.key == key => shard.objects.remove(&h),
                _ => None,
            }
        };
        let Some(e) = entry else { return false };
        self.inner.free_entry(&e);
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
            let mut shard = inner.index.shard(h);
            let installed = match shard.objects.get_mut(&h) {
                Some(e)
                    if e.version == version
                        && e.meta.key == key
                        && e.blocks.get(block as usize) == Some(&BlockState::EMPTY) =>
                {
                    e.blocks[block as usize] = BlockState::filling(addr);
                    true
                }
                _ => false,
            };
            if installed {
                shard.fills.insert((h, block), w.fill().clone());
                drop(shard);
                return Ok(Claim::Write(BlockWriter {
                    inner: inner.clone(),
                    key_hash: h,
                    block,
                    version,
                    writer: Some(w),
                }));
            }
            drop(shard);
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
            let (buf, verified) = {
                let shard = inner.index.shard(h);
                let e = shard
                    .objects
                    .get(&h)
                    .filter(|e| e.meta.key == key)
                    .ok_or(CacheError::NoObject)?;
                if e.version != version {
                    return Err(CacheError::VersionChanged);
                }
                let state = *e
                    .blocks
                    .get(block as usize)
                    .ok_or(CacheError::OutOfRange(block))?;
                match state.status() {
                    BlockStatus::Missing => return Ok(None),
                    BlockStatus::Filling => {
                        let fill = shard
                            .fills
                            .get(&(h, block))
                            .expect("fill of a filling block");
                        return Ok(Some(Claim::Wait(fill.clone())));
                    }
                    BlockStatus::Ready => {
                        let len = e.meta.block_len(inner.store.block_size(), u64::from(block));
                        let addr = state.addr();
                        let drive = inner.store.drive(addr.drive());
                        // SAFETY: the shard lock is held and the block is `Ready` at `addr`: its
                        // writer committed. Every path that frees a `Ready` slot first takes it
                        // out of the index under this lock, so it cannot be freed (let alone
                        // handed to a new writer) before `committed` has pinned it.
                        let buf = unsafe { drive.committed(addr, len as usize) };
                        (buf, state.verified())
                    }
                }
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
        let idx = &self.inner.index;
        let (mut objects, mut ready, mut filling) = (0u64, 0u64, 0u64);
        for i in 0..idx.shard_count() {
            let shard = idx.shard_at(i);
            for e in shard.objects.values() {
                objects += 1;
                ready += e.ready_blocks() as u64;
            }
            filling += shard.fills.len() as u64;
        }
        (objects, ready, filling)
    }

    /// Every cached object with its number of cached blocks (for `inspect`).
    pub fn objects(&self) -> Vec<(Object, usize)> {
        let idx = &self.inner.index;
        let mut out = Vec::new();
        for i in 0..idx.shard_count() {
            for e in idx.shard_at(i).objects.values() {
                out.push((
                    Object {
                        meta: e.meta.clone(),
                        version: e.version,
                    },
                    e.ready_blocks(),
                ));
            }
        }
        out
    }
}

impl Inner {
    fn free_entry(&self, e: &ObjectEntry) {
        for b in e.blocks.iter().filter(|b| b.status() == BlockStatus::Ready) {
            self.store.drive(b.addr().drive()).free(b.addr());
        }
        self.store.drive(e.meta_addr.drive()).free(e.meta_addr);
    }

    /// First read of a block recovered from disk: check its data crc before serving it. A block
    /// that fails is dropped (refetched later), never served.
    fn verify(&self, h: u128, block: u32, buf: &SlotBuf) -> bool {
        let addr = buf.pin().addr();
        let drive = self.store.drive(addr.drive());
        let good = drive.read_slot_header(addr).is_ok_and(|hd| {
            hd.key_hash == h && hd.block == block && crc32fast::hash(buf) == hd.data_crc
        });
        let mut shard = self.index.shard(h);
        let Some(e) = shard.objects.get_mut(&h) else {
            return false;
        };
        let Some(state) = e.blocks.get_mut(block as usize) else {
            return false;
        };
        if state.status() != BlockStatus::Ready || state.addr() != addr {
            return false;
        }
        if good {
            *state = BlockState::ready(addr, true);
            return true;
        }
        log::error!(
            "block {block} of {} at {addr:?} failed its data check; dropped",
            e.meta.key
        );
        *state = BlockState::EMPTY;
        drop(shard);
        drive.free(addr);
        false
    }
}

impl Evictor for Inner {
    fn evict(&self, addr: SlotAddr, header: &SlotHeader) -> bool {
        if header.kind != SlotKind::Data {
            return false;
        }
        let h = header.key_hash;
        let mut shard = self.index.shard(h);
        let Some(e) = shard.objects.get_mut(&h) else {
            return false;
        };
        let Some(state) = e.blocks.get_mut(header.block as usize) else {
            return false;
        };
        if state.status() != BlockStatus::Ready
            || state.addr() != addr
            || self.store.drive(addr.drive()).is_pinned(addr)
        {
            return false;
        }
        *state = BlockState::EMPTY;
        if e.is_empty() {
            // An object with no block left is dropped with its metadata record.
            let meta_addr = e.meta_addr;
            shard.objects.remove(&h);
            drop(shard);
            self.store.drive(meta_addr.drive()).free(meta_addr);
        }
        true
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
        let installed = {
            let mut shard = inner.index.shard(self.key_hash);
            let ok = match shard.objects.get_mut(&self.key_hash) {
                Some(e) if e.version == self.version => {
                    match e.blocks.get_mut(self.block as usize) {
                        Some(s) if *s == BlockState::filling(addr) => {
                            *s = BlockState::ready(addr, true);
                            true
                        }
                        _ => false,
                    }
                }
                _ => false,
            };
            remove_fill(&mut shard, self.key_hash, self.block, &fill);
            ok
        };
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
        let meta_addr = {
            let mut shard = inner.index.shard(self.key_hash);
            remove_fill(&mut shard, self.key_hash, self.block, &fill);
            let mut drop_object = None;
            if let Some(e) = shard.objects.get_mut(&self.key_hash)
                && let Some(s) = e.blocks.get_mut(self.block as usize)
                && *s == BlockState::filling(addr)
            {
                *s = BlockState::EMPTY;
                if e.is_empty() {
                    // Nothing of the object was ever stored: forget it, with its record.
                    drop_object = Some(e.meta_addr);
                    shard.objects.remove(&self.key_hash);
                }
            }
            drop_object
        };
        inner.store.drive(addr.drive()).free(addr);
        if let Some(m) = meta_addr {
            inner.store.drive(m.drive()).free(m);
        }
        fill.finish(FillState::Aborted);
        drop(w);
    }
}

/// The committer thread: flushes each drive once per batch, then seals the batch's blocks.
/// A metadata record just written: the object's metadata, version, slot and sequence number.
struct Record {
    meta: Arc<ObjectMeta>,
    version: u64,
    addr: SlotAddr,
    seq: u64,
}

/// Installs `rec` in the shard (under its lock): a new entry, a new version (the old one's
/// ready blocks go to `to_free`), or nothing when another version or a newer record won.
/// The object as installed, or `None` (`VersionChanged` for the caller).
fn install(
    shard: &mut index::Shard,
    h: u128,
    rec: &Record,
    expected: Option<u64>,
    nblocks: usize,
    to_free: &mut Vec<SlotAddr>,
) -> Option<Object> {
    let object = || Object {
        meta: rec.meta.clone(),
        version: rec.version,
    };
    match shard.objects.get_mut(&h) {
        Some(e) if expected.is_some_and(|v| v != e.version) => {
            // Replaced by another version since the caller looked: that one stands.
            to_free.push(rec.addr);
            None
        }
        Some(e) if e.meta_seq > rec.seq => {
            // A newer record was installed while ours was being written.
            to_free.push(rec.addr);
            (e.version == rec.version).then(|| Object {
                meta: e.meta.clone(),
                version: e.version,
            })
        }
        Some(e) => {
            to_free.push(e.meta_addr);
            if e.version != rec.version || e.meta.key != rec.meta.key {
                for b in e.blocks.iter_mut() {
                    if b.status() == BlockStatus::Ready {
                        to_free.push(b.addr());
                    }
                }
                // Filling blocks belong to the old version: their commit will fail.
                e.blocks = vec![BlockState::EMPTY; nblocks].into_boxed_slice();
            }
            e.meta = rec.meta.clone();
            e.version = rec.version;
            e.meta_addr = rec.addr;
            e.meta_seq = rec.seq;
            Some(object())
        }
        None => {
            shard.objects.insert(
                h,
                ObjectEntry {
                    meta: rec.meta.clone(),
                    version: rec.version,
                    meta_addr: rec.addr,
                    meta_seq: rec.seq,
                    blocks: vec![BlockState::EMPTY; nblocks].into_boxed_slice(),
                },
            );
            Some(object())
        }
    }
}

/// Marks block `b` of `h` as filling into `w`'s slot if it is missing (under the shard lock);
/// `None` if someone else has it.
fn claim_slot(shard: &mut index::Shard, h: u128, b: u32, w: &SlotWriter) -> Option<()> {
    let addr = w.fill().addr();
    let e = shard.objects.get_mut(&h)?;
    let s = &mut e.blocks[b as usize];
    if *s != BlockState::EMPTY {
        return None;
    }
    *s = BlockState::filling(addr);
    shard.fills.insert((h, b), w.fill().clone());
    Some(())
}

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

fn remove_fill(shard: &mut index::Shard, h: u128, block: u32, fill: &Arc<Fill>) {
    if shard
        .fills
        .get(&(h, block))
        .is_some_and(|f| Arc::ptr_eq(f, fill))
    {
        shard.fills.remove(&(h, block));
    }
}

impl Drop for BlockWriter {
    fn drop(&mut self) {
        self.abort_inner();
    }
}
