//! The bytes of one range of an object, block by block: hits come from pinned slots, missing
//! blocks are claimed in runs and fetched with one upstream request per run, and blocks that
//! other requests are filling are streamed from their watermark as they land.

use std::collections::VecDeque;
use std::ops::Range;
use std::sync::Arc;

use super::Services;
use crate::cache::{Cache, CacheError, Claim, Object};
use crate::error::{Error, Kind};
use crate::route::Target;
use crate::store::{Fill, FillState, SlotBuf};
use crate::upstream::{FILL_STALL, Upstream};

enum Source {
    Ready(SlotBuf),
    Fill(Arc<Fill>),
}

/// The bytes of one range of an object, block by block (see the module).
pub struct BlockStream<'a> {
    cache: &'a Cache,
    up: &'a Upstream,
    target: &'a Target,
    obj: &'a Object,
    bs: u64,
    pos: u64,
    end: u64,
    last_block: u32,
    /// Block number of `pending[0]`; `pending` covers consecutive blocks from there.
    front: u32,
    pending: VecDeque<Source>,
    retries: u32,
    /// Position of the last abort: aborts further on (progress was made) start a new budget.
    aborted_at: Option<u64>,
    /// Aborts in all, capped whatever the progress (an origin cutting every answer short).
    aborts: u32,
}

impl<'a> BlockStream<'a> {
    /// The bytes `range` (end exclusive) of `obj`, read through `sh`'s cache and fetched by its
    /// fetcher pool where missing.
    pub fn new(sh: &'a Services, target: &'a Target, obj: &'a Object, range: Range<u64>) -> Self {
        let bs = u64::from(sh.cache.block_size());
        BlockStream {
            cache: &sh.cache,
            up: &sh.upstream,
            target,
            obj,
            bs,
            pos: range.start,
            end: range.end,
            last_block: (range.end.max(1) - 1).div_euclid(bs) as u32,
            front: (range.start / bs) as u32,
            pending: VecDeque::new(),
            retries: 0,
            aborted_at: None,
            aborts: 0,
        }
    }

    fn scheduled_to(&self) -> u32 {
        self.front + self.pending.len() as u32
    }

    fn claim_err(e: CacheError) -> Error {
        match e {
            CacheError::NoObject | CacheError::VersionChanged => Error::new(Kind::Changed),
            e => Error::caused(Kind::Storage, e),
        }
    }

    /// Claims the next block after what is scheduled; a missing one starts a run of missing
    /// blocks (up to the upstream window or the end of the range) fetched by one request.
    fn extend(&mut self) -> Result<(), Error> {
        let cache = self.cache;
        let key = &self.target.key;
        let b = self.scheduled_to();
        let run_end = (b + self.up.window_blocks()).min(self.last_block + 1);
        // An object gone (a failed fill that left nothing of it, or a fill that learned it may
        // not be stored or is answered otherwise now) reads as changed: before the head is
        // sent the request is planned again and meets the upstream's current answer.
        let (writers, stop) = cache
            .claim_run(key, b, run_end, self.obj.version)
            .map_err(Self::claim_err)?;
        for w in &writers {
            let fill = w.fill().expect("fresh writer").clone();
            self.pending.push_back(Source::Fill(fill));
        }
        match stop {
            Some(Claim::Ready(buf)) => self.pending.push_back(Source::Ready(buf)),
            Some(Claim::Wait(f)) => self.pending.push_back(Source::Fill(f)),
            Some(Claim::Write(_)) | None => {}
        }
        if !writers.is_empty() {
            self.up.fill(self.target, self.obj.clone(), writers);
        }
        Ok(())
    }

    /// The next chunk of the range; `Ok(None)` at its end. Before the response head is sent
    /// an error becomes a 502/504; after it, the connection is cut (never a short or mixed
    /// body).
    pub async fn next(&mut self) -> Result<Option<SlotBuf>, Error> {
        loop {
            if self.pos >= self.end {
                return Ok(None);
            }
            let b = (self.pos / self.bs) as u32;
            while self.scheduled_to() <= b {
                self.extend()?;
            }
            // Read ahead: keep the next run requested before this one is used up, so a long
            // download never waits a round trip between upstream windows.
            let ahead = (self.up.window_blocks() / 2).max(1);
            while self.scheduled_to() <= self.last_block && self.scheduled_to() - b < ahead {
                self.extend()?;
            }
            let off = (self.pos - u64::from(b) * self.bs) as usize;
            let in_block_end = (self.end - u64::from(b) * self.bs) as usize;
            match self.pending.front().expect("scheduled") {
                Source::Ready(buf) => {
                    let stop = in_block_end.min(buf.len());
                    let chunk = buf.slice(off..stop);
                    self.advance(stop, buf.len());
                    return Ok(Some(chunk));
                }
                Source::Fill(f) => {
                    let f = f.clone();
                    let stop_max = in_block_end.min(f.capacity());
                    let filled = f.filled();
                    if filled > off {
                        let stop = filled.min(stop_max);
                        let chunk = f.readable().slice(off..stop);
                        self.advance(stop, f.capacity());
                        return Ok(Some(chunk));
                    }
                    match f.state() {
                        FillState::Filling => {
                            match tokio::time::timeout(FILL_STALL, f.wait_async(off)).await {
                                Ok(_) => continue,
                                Err(_) => return Err(Error::new(Kind::FillStalled)),
                            }
                        }
                        FillState::Committed => continue,
                        FillState::Aborted => {
                            // Claim the block again: a failed fetch by someone else, or a
                            // parent that went away, need not fail this request. One upstream
                            // failure aborts every block of its run, so only aborts with no
                            // progress since the last one use up the budget.
                            if self.aborted_at.is_some_and(|p| p < self.pos) {
                                self.retries = 0;
                            }
                            if self.retries >= 2 || self.aborts >= 8 {
                                return Err(Error::new(Kind::FillAborted));
                            }
                            self.retries += 1;
                            self.aborts += 1;
                            self.aborted_at = Some(self.pos);
                            self.pending.clear();
                            self.front = b;
                            // The run's other writers are being dropped right now: let them
                            // go before claiming, or we would wait on their aborted fills.
                            tokio::task::yield_now().await;
                        }
                    }
                }
            }
        }
    }

    fn advance(&mut self, stop: usize, block_len: usize) {
        let b = self.pos / self.bs;
        self.pos = b * self.bs + stop as u64;
        if stop == block_len {
            self.pending.pop_front();
            self.front += 1;
        }
    }
}
