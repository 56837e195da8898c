//! What the cache has done, for operators: requests and bytes by cache status and by origin,
//! response times, and the 15-second periods of the original module's summary. Updated once
//! per response with relaxed atomics; the per-origin table takes a short lock.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::{Duration, Instant};

use hashbrown::HashMap;
use parking_lot::Mutex;

use crate::http::cache_status::{CacheStatus, FROM_CACHE, LABELS as STATUSES};

/// Upper bounds (seconds) of the response-time histogram.
pub const BUCKETS: [f64; 14] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// The original module refreshes its summary this often.
pub const PERIOD: Duration = Duration::from_secs(15);

#[derive(Default)]
struct Pair {
    requests: AtomicU64,
    bytes: AtomicU64,
}

/// One origin's content responses (status below 400) since start.
#[derive(Default, Clone, Copy, Debug, PartialEq, Eq)]
pub struct OriginCounts {
    /// Responses with content.
    pub requests: u64,
    /// Body bytes sent from the cache.
    pub hit_bytes: u64,
    /// Body bytes sent that came from upstream.
    pub miss_bytes: u64,
}

/// Byte totals in the original module's terms.
#[derive(Default, Clone, Copy, Debug, PartialEq, Eq)]
pub struct Totals {
    /// Body bytes sent from the cache.
    pub hit_bytes: u64,
    /// Body bytes sent that had to come from upstream (misses, partial hits, pass-through).
    pub miss_bytes: u64,
    /// Bytes received from upstream.
    pub upstream_bytes: u64,
    /// Responses sent, refusals and errors included.
    pub requests: u64,
}

impl Totals {
    /// Body bytes sent to clients: `hit_bytes + miss_bytes`.
    pub fn egress(&self) -> u64 {
        self.hit_bytes + self.miss_bytes
    }

    /// The share of [`Totals::egress`] sent from the cache, 0.0 to 1.0 (0.0 when nothing was sent).
    pub fn hit_ratio(&self) -> f64 {
        if self.egress() == 0 {
            0.0
        } else {
            self.hit_bytes as f64 / self.egress() as f64
        }
    }

    fn minus(&self, o: &Totals) -> Totals {
        Totals {
            hit_bytes: self.hit_bytes.saturating_sub(o.hit_bytes),
            miss_bytes: self.miss_bytes.saturating_sub(o.miss_bytes),
            upstream_bytes: self.upstream_bytes.saturating_sub(o.upstream_bytes),
            requests: self.requests.saturating_sub(o.requests),
        }
    }
}

/// The counters of one running cache, shared by every worker ([`Metrics::record`]) and read by
/// the admin listener.
pub struct Metrics {
    by_status: [Pair; STATUSES.len()],
    /// Responses by status class: 1xx..5xx.
    by_class: [AtomicU64; 5],
    latency: [AtomicU64; BUCKETS.len() + 1],
    latency_sum_us: AtomicU64,
    origins: Mutex<HashMap<String, OriginCounts>>,
    /// When the cache started (the uptime gauge).
    pub started: Instant,
    /// (totals at the start of the current period, the last complete period).
    period: Mutex<(Totals, Totals)>,
}

impl Default for Metrics {
    fn default() -> Metrics {
        Metrics {
            by_status: Default::default(),
            by_class: Default::default(),
            latency: Default::default(),
            latency_sum_us: AtomicU64::new(0),
            origins: Mutex::new(HashMap::new()),
            started: Instant::now(),
            period: Mutex::new((Totals::default(), Totals::default())),
        }
    }
}

impl Metrics {
    /// One response: its origin label (none for refusals), status, cache status, body bytes
    /// and the time from a complete head to the last byte (zero: no latency sample).
    /// Only content counts in the byte totals: refusals and error bodies (no origin, or a
    /// status of 400 and up) count as requests but not as hit or miss bytes.
    pub fn record(
        &self,
        origin: Option<&str>,
        status: u16,
        cache: CacheStatus,
        bytes: u64,
        took: Duration,
    ) {
        let i = cache.slot();
        self.by_status[i].requests.fetch_add(1, Relaxed);
        let content = origin.is_some() && status < 400;
        if content {
            self.by_status[i].bytes.fetch_add(bytes, Relaxed);
        }
        if (100..600).contains(&status) {
            self.by_class[usize::from(status / 100 - 1)].fetch_add(1, Relaxed);
        }
        // Heads refused before a response started (took zero) are no latency sample.
        if !took.is_zero() {
            let secs = took.as_secs_f64();
            let b = BUCKETS
                .iter()
                .position(|&u| secs <= u)
                .unwrap_or(BUCKETS.len());
            self.latency[b].fetch_add(1, Relaxed);
            self.latency_sum_us
                .fetch_add(took.as_micros() as u64, Relaxed);
        }
        if let Some(o) = origin.filter(|_| content) {
            let mut m = self.origins.lock();
            let c = match m.get_mut(o) {
                Some(c) => c,
                None => m.entry(o.to_string()).or_default(),
            };
            c.requests += 1;
            if i < FROM_CACHE {
                c.hit_bytes += bytes;
            } else {
                c.miss_bytes += bytes;
            }
        }
    }

    /// Lifetime totals; `upstream_bytes` is the fetchers' count.
    pub fn totals(&self, upstream_bytes: u64) -> Totals {
        let sum = |r: std::ops::Range<usize>| {
            self.by_status[r]
                .iter()
                .map(|p| p.bytes.load(Relaxed))
                .sum::<u64>()
        };
        Totals {
            hit_bytes: sum(0..FROM_CACHE),
            miss_bytes: sum(FROM_CACHE..STATUSES.len()),
            upstream_bytes,
            requests: self
                .by_status
                .iter()
                .map(|p| p.requests.load(Relaxed))
                .sum(),
        }
    }

    /// Closes a period (every [`PERIOD`]): the summary's period figures become the last one's.
    pub fn tick(&self, upstream_bytes: u64) {
        let now = self.totals(upstream_bytes);
        let mut p = self.period.lock();
        *p = (now, now.minus(&p.0));
    }

    /// The last complete period.
    pub fn last_period(&self) -> Totals {
        self.period.lock().1
    }

    /// Each origin label with its counts, sorted by label.
    pub fn origins(&self) -> Vec<(String, OriginCounts)> {
        let mut v: Vec<_> = self
            .origins
            .lock()
            .iter()
            .map(|(k, c)| (k.clone(), *c))
            .collect();
        v.sort_by(|a, b| a.0.cmp(&b.0));
        v
    }

    /// `(label, responses, body bytes)` for each cache status, in [`LABELS`](STATUSES) order.
    pub fn by_status(&self) -> Vec<(&'static str, u64, u64)> {
        STATUSES
            .iter()
            .zip(&self.by_status)
            .map(|(s, p)| (*s, p.requests.load(Relaxed), p.bytes.load(Relaxed)))
            .collect()
    }

    /// Prometheus text for the counters kept here (the caller adds the gauges it owns).
    pub fn write_prometheus(&self, out: &mut String) {
        let _ = writeln!(
            out,
            "# HELP gatecache_requests_total Responses sent, by cache status.\n\
             # TYPE gatecache_requests_total counter"
        );
        for (s, r, _) in self.by_status() {
            let _ = writeln!(out, "gatecache_requests_total{{cache=\"{s}\"}} {r}");
        }
        let _ = writeln!(
            out,
            "# HELP gatecache_response_body_bytes_total Body bytes sent, by cache status.\n\
             # TYPE gatecache_response_body_bytes_total counter"
        );
        for (s, _, b) in self.by_status() {
            let _ = writeln!(
                out,
                "gatecache_response_body_bytes_total{{cache=\"{s}\"}} {b}"
            );
        }
        let _ = writeln!(
            out,
            "# HELP gatecache_responses_total Responses sent, by status class.\n\
             # TYPE gatecache_responses_total counter"
        );
        for (i, c) in self.by_class.iter().enumerate() {
            let _ = writeln!(
                out,
                "gatecache_responses_total{{code=\"{}xx\"}} {}",
                i + 1,
                c.load(Relaxed)
            );
        }
        let _ = writeln!(
            out,
            "# HELP gatecache_origin_body_bytes_total Body bytes sent, by origin and by source.\n\
             # TYPE gatecache_origin_body_bytes_total counter"
        );
        for (o, c) in self.origins() {
            let o = o.replace(['"', '\\', '\n'], "_");
            let _ = writeln!(
                out,
                "gatecache_origin_body_bytes_total{{origin=\"{o}\",source=\"cache\"}} {}\n\
                 gatecache_origin_body_bytes_total{{origin=\"{o}\",source=\"upstream\"}} {}",
                c.hit_bytes, c.miss_bytes
            );
        }
        let _ = writeln!(
            out,
            "# HELP gatecache_response_seconds Time from a complete request head to the last \
             byte sent.\n# TYPE gatecache_response_seconds histogram"
        );
        let mut cum = 0;
        for (i, c) in self.latency.iter().enumerate() {
            cum += c.load(Relaxed);
            let le = BUCKETS.get(i).map_or("+Inf".to_string(), |b| b.to_string());
            let _ = writeln!(
                out,
                "gatecache_response_seconds_bucket{{le=\"{le}\"}} {cum}"
            );
        }
        let _ = writeln!(
            out,
            "gatecache_response_seconds_sum {}\ngatecache_response_seconds_count {cum}",
            self.latency_sum_us.load(Relaxed) as f64 / 1e6
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http::cache_status::Answer;

    const ANSWERED: CacheStatus = CacheStatus::Answered(Answer::Refused);

    #[test]
    fn totals_periods_and_origins() {
        let m = Metrics::default();
        let ms = Duration::from_millis(3);
        m.record(Some("a.example.org"), 200, CacheStatus::Miss, 1000, ms);
        m.record(Some("a.example.org"), 206, CacheStatus::Hit, 300, ms);
        m.record(Some("b.example.org"), 200, CacheStatus::Stale, 50, ms);
        m.record(None, 403, ANSWERED, 20, ms);
        m.record(Some("b.example.org"), 502, ANSWERED, 30, ms);
        m.record(None, 400, ANSWERED, 0, Duration::ZERO);
        let t = m.totals(1000);
        assert_eq!((t.hit_bytes, t.miss_bytes, t.egress()), (350, 1000, 1350));
        assert_eq!(t.requests, 6);
        assert!((t.hit_ratio() - 350.0 / 1350.0).abs() < 1e-9);
        m.tick(1000);
        assert_eq!(m.last_period(), t);
        m.record(Some("a.example.org"), 200, CacheStatus::Hit, 7, ms);
        m.tick(1000);
        let p = m.last_period();
        assert_eq!(
            (p.hit_bytes, p.miss_bytes, p.requests, p.upstream_bytes),
            (7, 0, 1, 0)
        );
        assert_eq!(
            m.origins()[0],
            (
                "a.example.org".to_string(),
                OriginCounts {
                    requests: 3,
                    hit_bytes: 307,
                    miss_bytes: 1000
                }
            )
        );
        let mut text = String::new();
        m.write_prometheus(&mut text);
        assert!(
            text.contains("gatecache_requests_total{cache=\"HIT\"} 2\n"),
            "{text}"
        );
        assert!(text.contains("gatecache_responses_total{code=\"4xx\"} 2\n"));
        // The cache's own answers have a label value of their own, never BYPASS.
        assert!(text.contains("gatecache_requests_total{cache=\"ANSWERED\"} 3\n"));
        assert!(text.contains("gatecache_requests_total{cache=\"BYPASS\"} 0\n"));
        assert!(text.contains("gatecache_response_seconds_bucket{le=\"0.005\"} 6\n"));
        assert!(text.contains("gatecache_response_seconds_count 6\n"));
    }
}
