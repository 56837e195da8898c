//! Eviction policies on a Zipf trace: hit ratios of the store's SIEVE against LRU and CLOCK, and
//! the cost of one access under each.
//!
//! The hit-ratio table is the main output; it is printed before criterion runs:
//!
//! ```text
//! cargo bench --bench evict
//! ```
//!
//! Two analytic columns check the simulation: Che's approximation of LRU (which the simulated
//! LRU should match to about three decimals) and the hit ratio of an oracle that holds the most
//! popular ids (no policy beats it on this kind of trace, up to sampling noise).
//!
//! Trace: 1,000,000 requests over 100,000 block ids, Zipf-distributed (alpha 0.8 and 1.0), from a
//! fixed-seed PRNG, so every run sees the same requests. Ranks are scattered over the id space by
//! a fixed permutation, so popular ids are not neighbours. Each policy starts empty and holds at
//! most `size` ids; a miss inserts the id (evicting one when full). Hit ratios count the whole
//! trace, cold start included.
//!
//! SIEVE is `gatecache::store::evict::Sieve` itself (the queue the allocator keeps over data
//! regions); LRU and CLOCK are written here, each O(1) per access over id-indexed arrays like it.

use std::hint::black_box;

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use gatecache::store::evict::Sieve;

const IDS: usize = 100_000;
const REQUESTS: usize = 1_000_000;
const ALPHAS: [f64; 2] = [0.8, 1.0];
/// Cache sizes in percent of the id space.
const SIZES_PCT: [usize; 4] = [1, 5, 10, 25];

/// splitmix64: small, fast, deterministic.
struct Rng(u64);

impl Rng {
    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in [0, 1) with 53 bits.
    fn next_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n as u64) as usize
    }
}

/// Zipf over ranks `0..n`: P(rank k) proportional to 1 / (k + 1)^alpha. Exact inverse-CDF
/// sampling: a table of the cumulative weights and a binary search per sample.
struct Zipf {
    cdf: Vec<f64>,
}

impl Zipf {
    fn new(n: usize, alpha: f64) -> Zipf {
        let mut cdf = Vec::with_capacity(n);
        let mut sum = 0.0;
        for k in 1..=n {
            sum += 1.0 / (k as f64).powf(alpha);
            cdf.push(sum);
        }
        for c in &mut cdf {
            *c /= sum;
        }
        Zipf { cdf }
    }

    fn probability(&self, rank: usize) -> f64 {
        self.cdf[rank] - if rank == 0 { 0.0 } else { self.cdf[rank - 1] }
    }

    /// Hit ratio of an ideal cache that always holds the `size` most popular ids (the bound for
    /// any policy on an independent-reference trace, up to sampling noise).
    fn top_hit_ratio(&self, size: usize) -> f64 {
        self.cdf[size - 1]
    }

    /// Che's approximation of LRU's hit ratio: the characteristic time `t` such that the
    /// expected number of ids seen within `t` requests is `size`. Cross-checks the LRU here.
    fn lru_che(&self, size: usize) -> f64 {
        let p: Vec<f64> = (0..self.cdf.len()).map(|k| self.probability(k)).collect();
        let occupancy = |t: f64| p.iter().map(|q| 1.0 - (-q * t).exp()).sum::<f64>();
        let (mut lo, mut hi) = (0.0, 1e12);
        for _ in 0..100 {
            let t = (lo + hi) / 2.0;
            if occupancy(t) < size as f64 {
                lo = t;
            } else {
                hi = t;
            }
        }
        p.iter().map(|q| q * (1.0 - (-q * lo).exp())).sum()
    }

    fn sample(&self, rng: &mut Rng) -> usize {
        let u = rng.next_f64();
        self.cdf
            .partition_point(|&c| c <= u)
            .min(self.cdf.len() - 1)
    }
}

/// The request trace: `REQUESTS` ids drawn from Zipf(alpha) ranks, scattered by a fixed permutation.
fn trace(alpha: f64) -> Vec<u32> {
    let mut rng = Rng(0x5eed_0000 ^ alpha.to_bits());
    let mut perm: Vec<u32> = (0..IDS as u32).collect();
    for i in (1..perm.len()).rev() {
        perm.swap(i, rng.below(i + 1));
    }
    let zipf = Zipf::new(IDS, alpha);
    (0..REQUESTS).map(|_| perm[zipf.sample(&mut rng)]).collect()
}

/// A cache of ids under one eviction policy. `access` returns true on a hit.
trait Policy {
    fn access(&mut self, id: u32) -> bool;
}

/// The store's SIEVE queue, driven the way the allocator drives it: a hit is `touch`, a miss
/// evicts the next victim once full and inserts the id as the newest entry.
struct SievePolicy {
    sieve: Sieve,
    size: usize,
}

impl SievePolicy {
    fn new(ids: usize, size: usize) -> Self {
        SievePolicy {
            sieve: Sieve::new(ids),
            size,
        }
    }
}

impl Policy for SievePolicy {
    fn access(&mut self, id: u32) -> bool {
        if self.sieve.contains(id) {
            self.sieve.touch(id);
            return true;
        }
        if self.sieve.len() >= self.size {
            let v = self
                .sieve
                .victim(|_| true)
                .expect("full queue has a victim");
            self.sieve.remove(v);
        }
        self.sieve.insert(id);
        false
    }
}

const NIL: u32 = u32::MAX;

/// LRU as an intrusive doubly-linked list over id-indexed arrays: a hit unlinks the id and
/// relinks it at the head, a miss evicts the tail.
struct Lru {
    prev: Vec<u32>,
    next: Vec<u32>,
    present: Vec<bool>,
    head: u32,
    tail: u32,
    len: usize,
    size: usize,
}

impl Lru {
    fn new(ids: usize, size: usize) -> Self {
        Lru {
            prev: vec![NIL; ids],
            next: vec![NIL; ids],
            present: vec![false; ids],
            head: NIL,
            tail: NIL,
            len: 0,
            size,
        }
    }

    fn unlink(&mut self, id: u32) {
        let (p, n) = (self.prev[id as usize], self.next[id as usize]);
        if p == NIL {
            self.head = n;
        } else {
            self.next[p as usize] = n;
        }
        if n == NIL {
            self.tail = p;
        } else {
            self.prev[n as usize] = p;
        }
    }

    fn push_front(&mut self, id: u32) {
        self.prev[id as usize] = NIL;
        self.next[id as usize] = self.head;
        if self.head != NIL {
            self.prev[self.head as usize] = id;
        } else {
            self.tail = id;
        }
        self.head = id;
    }
}

impl Policy for Lru {
    fn access(&mut self, id: u32) -> bool {
        if self.present[id as usize] {
            if self.head != id {
                self.unlink(id);
                self.push_front(id);
            }
            return true;
        }
        if self.len >= self.size {
            let victim = self.tail;
            self.unlink(victim);
            self.present[victim as usize] = false;
            self.len -= 1;
        }
        self.push_front(id);
        self.present[id as usize] = true;
        self.len += 1;
        false
    }
}

/// CLOCK: a ring of `size` frames with a reference bit each. A hit sets the bit; a miss moves
/// the hand past referenced frames (clearing their bits) and replaces the first unreferenced one.
struct Clock {
    frames: Vec<u32>,
    referenced: Vec<bool>,
    /// Frame of each id, or NIL.
    frame_of: Vec<u32>,
    hand: usize,
}

impl Clock {
    fn new(ids: usize, size: usize) -> Self {
        Clock {
            frames: Vec::with_capacity(size),
            referenced: Vec::with_capacity(size),
            frame_of: vec![NIL; ids],
            hand: 0,
        }
    }
}

impl Policy for Clock {
    fn access(&mut self, id: u32) -> bool {
        let f = self.frame_of[id as usize];
        if f != NIL {
            self.referenced[f as usize] = true;
            return true;
        }
        if self.frames.len() < self.frames.capacity() {
            self.frame_of[id as usize] = self.frames.len() as u32;
            self.frames.push(id);
            self.referenced.push(false);
            return false;
        }
        while self.referenced[self.hand] {
            self.referenced[self.hand] = false;
            self.hand = (self.hand + 1) % self.frames.len();
        }
        let old = self.frames[self.hand];
        self.frame_of[old as usize] = NIL;
        self.frames[self.hand] = id;
        self.frame_of[id as usize] = self.hand as u32;
        self.hand = (self.hand + 1) % self.frames.len();
        false
    }
}

const POLICIES: [&str; 3] = ["SIEVE", "LRU", "CLOCK"];

fn policy(name: &str, size: usize) -> Box<dyn Policy> {
    match name {
        "SIEVE" => Box::new(SievePolicy::new(IDS, size)),
        "LRU" => Box::new(Lru::new(IDS, size)),
        "CLOCK" => Box::new(Clock::new(IDS, size)),
        _ => unreachable!("{name}"),
    }
}

fn hit_ratio(p: &mut dyn Policy, trace: &[u32]) -> f64 {
    let hits = trace.iter().filter(|&&id| p.access(id)).count();
    hits as f64 / trace.len() as f64
}

/// Prints the hit-ratio table (markdown, pasted into perf/RESULTS.md).
fn print_hit_ratios(traces: &[(f64, Vec<u32>)]) {
    println!(
        "\nHit ratios, {REQUESTS} requests over {IDS} ids (Zipf, whole trace, cold start included)\n"
    );
    println!(
        "| alpha | cache size | SIEVE | LRU | CLOCK | SIEVE - LRU | LRU (Che approx.) | top-N bound |"
    );
    println!("|---|---|---|---|---|---|---|---|");
    for (alpha, t) in traces {
        let zipf = Zipf::new(IDS, *alpha);
        for pct in SIZES_PCT {
            let size = IDS * pct / 100;
            let r: Vec<f64> = POLICIES
                .iter()
                .map(|name| hit_ratio(&mut *policy(name, size), t))
                .collect();
            println!(
                "| {alpha:.1} | {pct}% ({size}) | {:.4} | {:.4} | {:.4} | {:+.4} | {:.4} | {:.4} |",
                r[0],
                r[1],
                r[2],
                r[0] - r[1],
                zipf.lru_che(size),
                zipf.top_hit_ratio(size)
            );
        }
    }
    println!();
}

fn bench_evict(c: &mut Criterion) {
    let traces: Vec<(f64, Vec<u32>)> = ALPHAS.iter().map(|&a| (a, trace(a))).collect();
    print_hit_ratios(&traces);

    // Per-access cost at the middle of the table (alpha 1.0, cache 10%), in steady state: each
    // policy first runs the whole trace, then the bench replays it from the start, one access
    // per iteration, wrapping around.
    let (alpha, t) = &traces[1];
    let size = IDS / 10;
    let mut g = c.benchmark_group(format!("evict/access/zipf{alpha:.1}/cache10pct"));
    g.throughput(Throughput::Elements(1));
    bench_access(&mut g, "SIEVE", SievePolicy::new(IDS, size), t);
    bench_access(&mut g, "LRU", Lru::new(IDS, size), t);
    bench_access(&mut g, "CLOCK", Clock::new(IDS, size), t);
    g.finish();
}

/// One access per iteration, statically dispatched, after a warm-up pass over the whole trace.
fn bench_access<P: Policy>(
    g: &mut criterion::BenchmarkGroup<'_, criterion::measurement::WallTime>,
    name: &str,
    mut p: P,
    t: &[u32],
) {
    hit_ratio(&mut p, t);
    let mut i = 0;
    g.bench_function(BenchmarkId::from_parameter(name), |b| {
        b.iter(|| {
            let id = t[i];
            i += 1;
            if i == t.len() {
                i = 0;
            }
            black_box(p.access(black_box(id)))
        })
    });
}

criterion_group!(benches, bench_evict);
criterion_main!(benches);
