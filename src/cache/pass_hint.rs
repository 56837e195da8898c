//! Keys recently found not storable (Varnish's hit-for-pass): their requests pass through at
//! once for a while, instead of each first trying a cacheable fetch that cannot be stored.

use std::time::{Duration, Instant};

use hashbrown::HashMap;
use parking_lot::Mutex;

/// How long a key whose answer could not be stored is passed through without asking first.
pub const PASS_HINT: Duration = Duration::from_secs(60);

/// Entries kept before expired ones are swept (bounds the memory a stream of distinct
/// uncacheable URLs can take).
const SWEEP_AT: usize = 10_000;

/// Hit-for-pass memory: key -> until when requests for it pass.
#[derive(Default)]
pub struct PassHints {
    map: Mutex<HashMap<String, Instant>>,
}

impl PassHints {
    /// Remembers that `key`'s answer could not be stored (for [`PASS_HINT`] from `now`).
    pub fn mark(&self, key: &str, now: Instant) {
        let mut p = self.map.lock();
        if p.len() > SWEEP_AT {
            p.retain(|_, until| *until > now);
        }
        p.insert(key.to_string(), now + PASS_HINT);
    }

    /// Should requests for `key` pass through straight away at `now`?
    pub fn is_pass(&self, key: &str, now: Instant) -> bool {
        let p = self.map.lock();
        !p.is_empty() && p.get(key).is_some_and(|until| *until > now)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_hint_lasts_its_time() {
        let h = PassHints::default();
        let t = Instant::now();
        assert!(!h.is_pass("k", t));
        h.mark("k", t);
        assert!(h.is_pass("k", t + PASS_HINT - Duration::from_secs(1)));
        assert!(!h.is_pass("k", t + PASS_HINT));
        assert!(!h.is_pass("other", t));
    }
}
