//! Parent caches: which hop a fetch tries next. Parents are tried in their configured order; one
//! that fails is skipped for a back-off period, then tried again. With `direct_fallback` the
//! origin itself comes after the parents.

use std::time::{Duration, Instant};

use parking_lot::Mutex;

/// Where one upstream request goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Hop {
    /// A parent cache (`host:port`), asked in the form a DO client uses:
    /// `http://<parent>/<path>?<query>&cacheHostOrigin=<origin>`.
    Parent(usize, String),
    /// The origin.
    Direct,
}

struct Parent {
    addr: String,
    down_until: Mutex<Option<Instant>>,
}

impl Parent {
    fn is_up(&self, now: Instant) -> bool {
        self.down_until.lock().is_none_or(|t| now >= t)
    }
}

/// The configured parents, in order, each with its back-off state.
pub struct Parents {
    list: Vec<Parent>,
    direct_fallback: bool,
    backoff: Duration,
}

impl Parents {
    /// Parents at `addrs` (`host:port`); `direct_fallback` lets the origin come after them; a
    /// failed parent is skipped for `backoff`.
    pub fn new(addrs: &[String], direct_fallback: bool, backoff: Duration) -> Parents {
        Parents {
            list: addrs
                .iter()
                .map(|a| Parent {
                    addr: a.clone(),
                    down_until: Mutex::new(None),
                })
                .collect(),
            direct_fallback,
            backoff,
        }
    }

    /// The hops to try for one request, in order, as of `now`: the parents that are up, then
    /// the origin if allowed, then the parents that are backing off (one may have recovered;
    /// a request that would otherwise fail for sure loses nothing by asking).
    pub fn plan(&self, now: Instant) -> Vec<Hop> {
        if self.list.is_empty() {
            return vec![Hop::Direct];
        }
        let (up, down): (Vec<_>, Vec<_>) =
            (self.list.iter().enumerate()).partition(|(_, p)| p.is_up(now));
        let hop = |(i, p): (usize, &Parent)| Hop::Parent(i, p.addr.clone());
        let mut hops: Vec<Hop> = up.into_iter().map(hop).collect();
        if self.direct_fallback {
            hops.push(Hop::Direct);
        }
        hops.extend(down.into_iter().map(hop));
        hops
    }

    /// Records that `hop` failed: a parent is skipped until the back-off has passed.
    pub fn failed(&self, hop: &Hop, now: Instant) {
        if let Hop::Parent(i, addr) = hop {
            let mut d = self.list[*i].down_until.lock();
            if d.is_none_or(|t| now >= t) {
                log::warn!("parent {addr} failed; skipping it for {:?}", self.backoff);
            }
            *d = Some(now + self.backoff);
        }
    }

    /// Records that `hop` answered: a parent that was backing off is back.
    pub fn succeeded(&self, hop: &Hop) {
        if let Hop::Parent(i, addr) = hop {
            let mut d = self.list[*i].down_until.lock();
            if d.take().is_some() {
                log::info!("parent {addr} is answering again");
            }
        }
    }

    /// `(address, up)` of each parent, for the summary.
    pub fn health(&self, now: Instant) -> Vec<(String, bool)> {
        self.list
            .iter()
            .map(|p| (p.addr.clone(), p.is_up(now)))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parents(n: usize, fallback: bool) -> Parents {
        let addrs: Vec<String> = (0..n).map(|i| format!("p{i}.test:80")).collect();
        Parents::new(&addrs, fallback, Duration::from_secs(30))
    }

    fn names(h: &[Hop]) -> Vec<String> {
        h.iter()
            .map(|h| match h {
                Hop::Parent(_, a) => a.clone(),
                Hop::Direct => "direct".into(),
            })
            .collect()
    }

    #[test]
    fn no_parents_means_direct() {
        assert_eq!(parents(0, false).plan(Instant::now()), vec![Hop::Direct]);
    }

    #[test]
    fn in_order_then_fallback() {
        let t = Instant::now();
        assert_eq!(
            names(&parents(2, false).plan(t)),
            ["p0.test:80", "p1.test:80"]
        );
        assert_eq!(
            names(&parents(2, true).plan(t)),
            ["p0.test:80", "p1.test:80", "direct"]
        );
    }

    #[test]
    fn failed_parent_backs_off_then_returns() {
        let p = parents(2, false);
        let t = Instant::now();
        p.failed(&p.plan(t)[0], t);
        assert_eq!(names(&p.plan(t)), ["p1.test:80", "p0.test:80"]);
        assert_eq!(
            names(&p.plan(t + Duration::from_secs(29))),
            ["p1.test:80", "p0.test:80"]
        );
        assert_eq!(
            names(&p.plan(t + Duration::from_secs(30))),
            ["p0.test:80", "p1.test:80"]
        );
        assert_eq!(
            p.health(t),
            [("p0.test:80".into(), false), ("p1.test:80".into(), true)]
        );
        p.succeeded(&Hop::Parent(0, "p0.test:80".into()));
        assert_eq!(names(&p.plan(t)), ["p0.test:80", "p1.test:80"]);
    }

    #[test]
    fn parents_backing_off_come_last() {
        let p = parents(2, false);
        let t = Instant::now();
        for h in p.plan(t) {
            p.failed(&h, t);
        }
        assert_eq!(names(&p.plan(t)), ["p0.test:80", "p1.test:80"]);
        let q = parents(2, true);
        for h in q.plan(t) {
            q.failed(&h, t);
        }
        assert_eq!(names(&q.plan(t)), ["direct", "p0.test:80", "p1.test:80"]);
    }
}
