//! Upstream fetching: a pool of blocking fetcher threads (ureq) that stream upstream bodies
//! straight into claimed slots, and the collapsing of concurrent cold misses for one key.
//!
//! A fill job is one upstream request for a run of blocks. Its writers are claimed before the
//! request goes out (warm object) or right after the response head arrived (cold object), so
//! every other request for those blocks waits on the job's watermark instead of fetching again.

pub mod agent;
pub mod fetch;
pub mod parents;
pub mod pass;

use std::collections::BTreeMap;
use std::io::Read;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, Sender, channel};
use std::sync::{Arc, Mutex as StdMutex};
use std::time::{Duration, Instant};

use crate::cache::lock::{Collapsed, LockStatus, Pending};
use crate::cache::{BlockWriter, Cache, Object};
use crate::config::Config;
use crate::error::{Error, Kind};
use crate::route::Target;
use crate::store::ObjectMeta;
use fetch::Answer;
use parents::{Hop, Parents};

struct Job {
    target: Target,
    first: u32,
    count: u32,
    known: Option<Object>,
    writers: Vec<BlockWriter>,
    /// The collapsed fetch this job leads (cold misses and revalidations), released with the
    /// outcome.
    cold: Option<Arc<Pending>>,
    /// A conditional request for `known` (stale): a 304 refreshes its headers.
    revalidate: bool,
    /// Where a response that is not stored goes: the request that led the fetch.
    relay: Option<tokio::sync::mpsc::Sender<pass::PassMsg>>,
}

/// A collapsed fetch as its requester sees it: the outcome to wait for, and for the request
/// that leads it, the channel a response that is not stored arrives on (see
/// [`Collapsed::Pass`]). A joined request gets no channel.
pub struct Fetch {
    /// The outcome, shared by every request that joined.
    pub pending: Arc<Pending>,
    /// The relayed response (head, body, end), for the leader only.
    pub relay: Option<tokio::sync::mpsc::Receiver<pass::PassMsg>>,
}

/// Does a 304 (`fresh`) name a validator other than the stored response's (RFC 9111 §4.3.4)?
fn other_validators(stored: &ObjectMeta, fresh: &ObjectMeta) -> bool {
    let differs = |a: &Option<String>, b: &Option<String>| b.is_some() && a != b;
    differs(&stored.etag, &fresh.etag) || differs(&stored.last_modified, &fresh.last_modified)
}

/// What a fetcher thread does next.
enum Work {
    Fill(Job),
    Pass(pass::PassRequest, tokio::sync::mpsc::Sender<pass::PassMsg>),
}

/// Counters for tests and the summary.
#[derive(Default)]
pub struct Stats {
    /// Upstream requests sent (every hop tried counts).
    pub requests: AtomicU64,
    /// Body bytes received from upstream.
    pub bytes: AtomicU64,
    /// Upstream requests that failed (connect, timeout, refused answer, cut body).
    pub errors: AtomicU64,
    /// Fetch jobs running right now.
    pub active: AtomicU64,
}

/// The fetcher pool: blocking threads that send upstream requests and stream the answers
/// into claimed slots, or relay pass-through exchanges.
pub struct Upstream {
    cache: Cache,
    agent: ureq::Agent,
    window: u64,
    /// Our `Via` entry, sent with every upstream request.
    via: String,
    jobs: Sender<Work>,
    /// The parent caches and their back-off state.
    pub parents: Parents,
    /// Counters for the summary and tests.
    pub stats: Stats,
}

impl Upstream {
    /// This node's `Via` entry (RFC 9110 §7.6.3): `1.1 <node name> (gatecache)`.
    pub fn via(&self) -> &str {
        &self.via
    }

    /// Starts the fetcher threads.
    pub fn start(cache: Cache, cfg: &Config) -> Result<Arc<Upstream>, String> {
        let agent = agent::build(cfg)?;
        let (tx, rx) = channel::<Work>();
        let up = Arc::new(Upstream {
            cache,
            agent,
            window: cfg.upstream.window,
            via: format!("1.1 {} (gatecache)", cfg.node_name),
            jobs: tx,
            parents: Parents::new(
                &cfg.upstream.parents,
                cfg.upstream.direct_fallback,
                cfg.upstream.parent_backoff,
            ),
            stats: Stats::default(),
        });
        let rx = Arc::new(StdMutex::new(rx));
        for i in 0..cfg.upstream.fetchers {
            let up = Arc::downgrade(&up);
            let rx: Arc<StdMutex<Receiver<Work>>> = rx.clone();
            std::thread::Builder::new()
                .name(format!("fetch-{i}"))
                .spawn(move || {
                    loop {
                        let job = match rx.lock().expect("job queue").recv() {
                            Ok(j) => j,
                            Err(_) => return,
                        };
                        let Some(up) = up.upgrade() else { return };
                        up.stats.active.fetch_add(1, Ordering::Relaxed);
                        match job {
                            Work::Fill(job) => up.run(job),
                            Work::Pass(req, tx) => up.run_pass(req, tx),
                        }
                        up.stats.active.fetch_sub(1, Ordering::Relaxed);
                    }
                })
                .expect("spawn fetcher");
        }
        Ok(up)
    }

    /// The cache fills are written into.
    pub fn cache(&self) -> &Cache {
        &self.cache
    }

    /// Waits until no fetch job is running, or until `deadline`; returns whether none is.
    pub fn quiesce(&self, deadline: std::time::Instant) -> bool {
        while self.stats.active.load(Ordering::Relaxed) > 0 {
            if std::time::Instant::now() >= deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        true
    }

    /// Blocks per upstream request.
    pub fn window_blocks(&self) -> u32 {
        (self.window / u64::from(self.cache.block_size())).max(1) as u32
    }

    /// Fetches the head (and the first `count` blocks from `first`) of an object that is not
    /// cached; joins the fetch already under way for the same key.
    pub fn fetch_cold(&self, target: &Target, first: u32, count: u32) -> Fetch {
        self.collapsed(target, first, count, None)
    }

    /// Revalidates a stale object (and fetches the first `count` blocks from `first` if it
    /// changed); joins a fetch already under way for the same key. The result is the object
    /// to serve: the same version with refreshed headers, or the new version.
    pub fn revalidate(&self, target: &Target, stale: &Object, first: u32, count: u32) -> Fetch {
        self.collapsed(target, first, count, Some(stale))
    }

    /// One fetch per key at a time: a cold fetch (`stale` None) or a revalidation.
    fn collapsed(&self, target: &Target, first: u32, count: u32, stale: Option<&Object>) -> Fetch {
        let lock = self.cache.fetch_lock();
        let p = match lock.acquire(&target.key) {
            LockStatus::Joined(pending) => {
                return Fetch {
                    pending,
                    relay: None,
                };
            }
            LockStatus::Leader(p) => p,
        };
        if stale.is_none()
            && let Some(o) = self.cache.lookup(&target.key)
        {
            // Cached since the caller looked: nothing to fetch here.
            lock.release(&target.key, &p, Ok(Collapsed::Object(o)));
            return Fetch {
                pending: p,
                relay: None,
            };
        }
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        self.submit(Job {
            target: target.clone(),
            first,
            count: count.clamp(1, self.window_blocks()),
            known: stale.cloned(),
            writers: Vec::new(),
            cold: Some(p.clone()),
            revalidate: stale.is_some(),
            relay: Some(tx),
        });
        Fetch {
            pending: p,
            relay: Some(rx),
        }
    }

    /// Fills the run of blocks the caller claimed (consecutive, from `writers[0].block()`).
    pub fn fill(&self, target: &Target, known: Object, writers: Vec<BlockWriter>) {
        let Some(first) = writers.first().map(|w| w.block()) else {
            return;
        };
        self.submit(Job {
            target: target.clone(),
            first,
            count: writers.len() as u32,
            known: Some(known),
            writers,
            cold: None,
            revalidate: false,
            relay: None,
        });
    }

    fn submit(&self, job: Job) {
        self.submit_work(Work::Fill(job));
    }

    fn submit_work(&self, work: Work) {
        if let Err(e) = self.jobs.send(work) {
            // Only when shutting down: the job (and its writers) is dropped, which aborts.
            log::warn!("fetch job dropped: {e}");
        }
    }

    fn end_cold(&self, job: &Job, r: Result<Collapsed, Error>) {
        if let Some(p) = &job.cold {
            self.cache.fetch_lock().release(&job.target.key, p, r);
        }
    }

    /// The one hop loop: asks the hops in order (parents, then the origin if allowed) until one
    /// answers, or fails in a way the next cannot help with. `resendable`: the request may go
    /// to another hop after one that may have received it (RFC 9110 §9.2.2). Returns the
    /// answer and the hop that gave it, or the last failure.
    pub(super) fn over_hops<R>(
        &self,
        target: &Target,
        resendable: bool,
        mut ask: impl FnMut(&Hop) -> Result<R, Error>,
    ) -> Result<(R, Hop), Error> {
        let mut last = Error::with(Kind::Connect, "no upstream to ask");
        for hop in self.parents.plan(Instant::now()) {
            self.stats.requests.fetch_add(1, Ordering::Relaxed);
            match ask(&hop) {
                Ok(r) => {
                    self.parents.succeeded(&hop);
                    return Ok((r, hop));
                }
                Err(e) => {
                    log::warn!("{} via {hop:?}: {}", target.url(), e.message());
                    let next = self.hop_failed(&hop, &e) && (resendable || e.kind == Kind::Connect);
                    last = e;
                    if !next {
                        break;
                    }
                }
            }
        }
        Err(last)
    }

    /// Ends the fetch for every answer but content to store: a 304 refreshes, a response not
    /// stored is relayed to the request that led the fetch, a failure is reported. The content
    /// to store and the hop that sent it, if that is the answer.
    /// Sends the job's request for `range` over the hops: conditional for a revalidation. A
    /// 304 that names other validators than the stored ones cannot refresh them (RFC 9111
    /// §4.3.4): the request is made again, unconditional.
    fn ask(&self, job: &Job, range: Option<(u64, u64)>) -> Result<(Answer, Hop), Error> {
        let cond = job.known.as_ref().filter(|_| job.revalidate);
        let send = |meta: Option<&ObjectMeta>| {
            self.over_hops(&job.target, true, |hop| {
                fetch::fetch(&self.agent, &job.target, range, &self.via, hop, meta)
            })
        };
        match send(cond.map(|k| &*k.meta)) {
            Ok((Answer::NotModified(m), _))
                if cond.is_some_and(|k| other_validators(&k.meta, &m)) =>
            {
                log::info!(
                    "{}: a 304 naming other validators; asked again unconditionally",
                    job.target.key
                );
                send(None)
            }
            answer => answer,
        }
    }

    fn settle(
        &self,
        job: &Job,
        answer: Result<(Answer, Hop), Error>,
    ) -> Option<(fetch::Fetched, Hop)> {
        match answer {
            Ok((Answer::Store(f), hop)) => Some((f, hop)),
            Ok((Answer::NotModified(meta), _)) => {
                let k = job.known.as_ref().expect("a 304 answers a revalidation");
                let r = self.refresh(k, &meta).map(Collapsed::Object);
                self.end_cold(job, r);
                None
            }
            Ok((Answer::Relay(r), _)) => {
                let outcome = match r.why {
                    fetch::Unstored::NotStorable(why) => Collapsed::Pass(why),
                    fetch::Unstored::Status(s) => Collapsed::Status(s),
                };
                if job.cold.is_none() {
                    // A fill for blocks of a stored object met an answer that is not stored
                    // (now not storable, gone, moved): what is stored no longer stands. Its
                    // readers plan again and meet that answer themselves.
                    log::info!("{}: now answered {:?}; dropped", job.target.key, r.why);
                    self.cache.remove(&job.target.key);
                    if matches!(r.why, fetch::Unstored::NotStorable(_)) {
                        self.cache
                            .pass_hints()
                            .mark(&job.target.key, Instant::now());
                    }
                }
                self.end_cold(job, Ok(outcome));
                if let Some(tx) = &job.relay {
                    // The leader's own request: relayed as it arrives, never asked again.
                    self.relay(r.resp, crate::http::request::Method::Get, tx);
                }
                None
            }
            Err(e) => {
                self.end_cold(job, Err(e));
                None
            }
        }
    }

    fn run(&self, mut job: Job) {
        let bs = u64::from(self.cache.block_size());
        let start = u64::from(job.first) * bs;
        // Not cut to the stored length: the answer may be a new representation of another
        // length, whose blocks in the window must come whole (the upstream clamps a range
        // past the end, RFC 9110 §14.1.2).
        let end = (u64::from(job.first) + u64::from(job.count)) * bs;
        let started = Instant::now();
        let range = Some((start, end - 1));
        let answer = self.ask(&job, range);
        let Some((mut fetched, mut hop)) = self.settle(&job, answer) else {
            return;
        };
        // A part of a new representation, or of one with no strong validator, cannot be
        // joined to any other response's bytes (RFC 9111 §3.4): the representation is fetched
        // whole, from one response, and stored from it.
        let changed = job
            .known
            .as_ref()
            .is_some_and(|k| k.version != fetched.meta.version());
        let whole = fetched.start == 0 && fetched.end == fetched.meta.total_len;
        if !whole && (changed || fetched.meta.instance != 0) {
            log::info!(
                "{}: {}; fetching it whole",
                job.target.key,
                if changed {
                    "changed upstream"
                } else {
                    "no strong validator"
                }
            );
            drop(fetched);
            let answer = self.over_hops(&job.target, true, |hop| {
                fetch::fetch(&self.agent, &job.target, None, &self.via, hop, None)
            });
            (fetched, hop) = match self.settle(&job, answer) {
                Some(got) => got,
                None => return,
            };
        }
        let bs32 = self.cache.block_size();
        let window = job.first..job.first + job.count;
        let mut writers: BTreeMap<u32, BlockWriter> = BTreeMap::new();
        let obj = match &job.known {
            Some(k) if k.version == fetched.meta.version() => {
                writers.extend(job.writers.drain(..).map(|w| (w.block(), w)));
                if job.revalidate {
                    // Same validators and length (an origin that ignores conditionals): the
                    // stored blocks stand, the headers are refreshed.
                    match self.refresh(k, &fetched.meta) {
                        Ok(o) => o,
                        Err(e) => {
                            self.end_cold(&job, Err(e));
                            return;
                        }
                    }
                } else {
                    k.clone()
                }
            }
            known => {
                // A new representation (or the first): installed before the old version's
                // writers let go, so that their readers, retrying, find the new version
                // (and start over on it if they sent nothing yet) rather than claim the old
                // one's blocks again.
                // A representation with no strong validator comes whole from this response
                // alone: every block is claimed now, so that no reader starts a fill of its
                // own (another response, whose bytes could not be joined to these).
                let claim = if fetched.meta.instance != 0 {
                    0..u32::MAX
                } else {
                    window.clone()
                };
                let installed = self.cache.put_object_claiming(fetched.meta.clone(), claim);
                if known.is_some() {
                    log::info!("{}: changed upstream", job.target.key);
                    job.writers.clear();
                }
                match installed {
                    Ok((o, ws)) => {
                        writers.extend(ws.into_iter().map(|w| (w.block(), w)));
                        o
                    }
                    Err(e) => {
                        log::error!("{}: cannot store metadata: {e}", job.target.key);
                        self.end_cold(&job, Err(Error::caused(Kind::Storage, e)));
                        return;
                    }
                }
            }
        };
        let nblocks = obj.meta.block_count(bs32) as u32;
        let window_end = window.end.min(nblocks);
        self.end_cold(&job, Ok(Collapsed::Object(obj.clone())));
        // A whole-object answer (an origin that ignores ranges, or a window that covers it all):
        // keep everything that arrives rather than asking again for the rest.
        let claim_beyond = fetched.start == 0 && fetched.end == obj.meta.total_len;
        let (got, cut) = self.stream(
            fetched,
            &job.target.key,
            &obj,
            writers,
            window_end,
            claim_beyond,
        );
        if cut {
            // A parent that dies mid-body is skipped by the retry this abort causes.
            self.parents.failed(&hop, Instant::now());
        }
        self.stats.bytes.fetch_add(got, Ordering::Relaxed);
        log::debug!(
            "{}: fetched {got} bytes from {start} in {:.1?}",
            job.target.key,
            started.elapsed()
        );
    }

    /// Counts a failed upstream request and says whether the next hop should be asked: yes
    /// after a parent's failure (it backs off if it could not be reached; one relaying its
    /// upstream's 5xx is alive and keeps getting the other requests); no for an origin's own
    /// answer or a failure of the origin itself.
    pub(super) fn hop_failed(&self, hop: &Hop, e: &Error) -> bool {
        self.stats.errors.fetch_add(1, Ordering::Relaxed);
        if !(e.is_hop_failure() && matches!(hop, Hop::Parent(..))) {
            return false;
        }
        if e.is_unreachable() {
            self.parents.failed(hop, Instant::now());
        }
        true
    }

    /// Stores `k` again with the freshness headers of a newer answer (a 304 or the same
    /// version) and a new response time; the blocks are kept. Refused if the answer names
    /// other validators (§4.3.4), or if another version was installed meanwhile.
    fn refresh(&self, k: &Object, fresh: &ObjectMeta) -> Result<Object, Error> {
        if other_validators(&k.meta, fresh) {
            return Err(Error::with(
                Kind::InvalidResponse,
                "a 304 naming other validators than the stored ones",
            ));
        }
        let mut m = (*k.meta).clone();
        // RFC 9111 §4.3.4: the 304's fields replace the stored ones; validators stay (same version).
        for (dst, src) in [
            (&mut m.cache_control, &fresh.cache_control),
            (&mut m.expires, &fresh.expires),
        ] {
            if src.is_some() {
                dst.clone_from(src);
            }
        }
        // The new response's Date (or none: then the response time stands for it), age and
        // response time, together.
        m.date.clone_from(&fresh.date);
        m.age = fresh.age;
        m.stored_at = fresh.stored_at;
        // RFC 9111 §3.2: every other field the 304 carries replaces the stored lines of that
        // name; the stored content's coding stays (the stored bytes depend on it).
        crate::http::fields::update(&mut m.fields, &fresh.fields, &["content-encoding"]);
        self.cache.refresh_object(m, k.version).map_err(|e| {
            log::info!("{}: not refreshed: {e}", k.meta.key);
            Error::caused(Kind::Storage, e)
        })
    }

    fn claim_into(
        &self,
        key: &str,
        b: u32,
        obj: &Object,
        writers: &mut BTreeMap<u32, BlockWriter>,
    ) {
        match self.cache.claim_run(key, b, b + 1, obj.version) {
            Ok((ws, _)) => writers.extend(ws.into_iter().map(|w| (w.block(), w))),
            Err(e) => log::warn!("{key}: block {b} not claimed: {e}"),
        }
    }

    /// Streams the body into the writers; bytes of blocks others hold are read and dropped.
    /// Returns bytes received and whether the upstream cut the body short. Writers left
    /// incomplete are dropped, which aborts them.
    fn stream(
        &self,
        mut f: fetch::Fetched,
        key: &str,
        obj: &Object,
        mut writers: BTreeMap<u32, BlockWriter>,
        mut claimed_to: u32,
        claim_beyond: bool,
    ) -> (u64, bool) {
        let bs = u64::from(self.cache.block_size());
        let mut pos = f.start;
        let mut scratch = vec![0u8; 64 * 1024];
        let mut cut = false;
        while pos < f.end {
            let b = (pos / bs) as u32;
            if claim_beyond && b >= claimed_to {
                self.claim_into(key, b, obj, &mut writers);
                claimed_to = b + 1;
            }
            if writers.is_empty()
                && !(claim_beyond && claimed_to < obj.meta.block_count(bs as u32) as u32)
            {
                break;
            }
            let want = (f.end - pos).min(bs - pos % bs);
            let r = match writers.get_mut(&b) {
                Some(w) if w.filled() as u64 == pos % bs => {
                    let n = scratch
                        .len()
                        .min(w.capacity() - w.filled())
                        .min(want as usize);
                    match f.body.read(&mut scratch[..n]) {
                        Ok(0) => {
                            cut = true;
                            Err("short body".to_string())
                        }
                        Ok(n) => match w.write_through_file(&scratch[..n]) {
                            Ok(_) => {
                                if w.is_complete() {
                                    writers.remove(&b).expect("present").commit_background();
                                }
                                Ok(n)
                            }
                            Err(e) => Err(format!("cache write: {e}")),
                        },
                        Err(e) => {
                            cut = true;
                            Err(e.to_string())
                        }
                    }
                }
                _ => {
                    let n = scratch.len().min(want as usize);
                    match f.body.read(&mut scratch[..n]) {
                        Ok(n) if n > 0 => Ok(n),
                        r => {
                            cut = true;
                            Err(r.map_or_else(|e| e.to_string(), |_| "short body".into()))
                        }
                    }
                }
            };
            match r {
                Ok(n) => pos += n as u64,
                Err(e) => {
                    self.stats.errors.fetch_add(1, Ordering::Relaxed);
                    log::warn!(
                        "{key}: upstream body failed at byte {pos} of {}..{}: {e}",
                        f.start,
                        f.end
                    );
                    break;
                }
            }
        }
        (pos - f.start, cut)
    }
}

/// How long a request waits for a block that someone else is filling before giving up.
pub const FILL_STALL: Duration = Duration::from_secs(30);
