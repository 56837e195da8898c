//! What the cache did for one response (RFC 9211), named once: the `Cache-Status` field value,
//! the access log's label and the metrics' slot all come from [`CacheStatus`].

/// Why a response did not come from (or go into) the cache.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BypassReason {
    /// The cache answered by itself, with no object involved: a refusal, an error before
    /// routing, the summary on the client port.
    Answered,
    /// A method the cache passes through: OPTIONS and the unsafe ones (RFC 9110 §9.2.1).
    Method,
    /// The request carries `Authorization` (RFC 9111 §3.5).
    Authorization,
    /// The response may not be stored (`no-store`, `private`, `Vary`, no length).
    NotStorable,
    /// Recently learned that this key is not storable: passed at once (hit-for-pass).
    HitForPass,
}

/// The cache status of one response.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CacheStatus {
    /// Fresh, served from the cache.
    Hit,
    /// Stale and served as such (stale-while-revalidate, or the upstream is down).
    Stale,
    /// Stale, checked with the upstream (304 or the same version), served from the cache.
    Revalidated,
    /// Stale and changed upstream: the new version is fetched and stored.
    Refreshed,
    /// Not cached: fetched and stored.
    Miss,
    /// Some of the asked blocks cached, the rest fetched and stored.
    Partial,
    /// Not from the cache and not stored.
    Bypass(BypassReason),
}

/// The access log's labels, in metric-slot order; the first [`FROM_CACHE`] are served from
/// the cache.
pub const LABELS: [&str; 6] = ["HIT", "REVALIDATED", "STALE", "MISS", "PARTIAL", "BYPASS"];

/// How many of [`LABELS`] (the first ones) are served from the cache.
pub const FROM_CACHE: usize = 3;

impl CacheStatus {
    /// The `Cache-Status` field value (RFC 9211 §2): this cache's name, then `hit` or
    /// `fwd=<reason>` with `fwd-status`, `stored` and `detail` as they apply.
    pub fn field_value(self) -> &'static str {
        match self {
            CacheStatus::Hit => "gatecache; hit",
            CacheStatus::Stale => "gatecache; hit; detail=stale",
            CacheStatus::Revalidated => "gatecache; fwd=stale; fwd-status=304",
            CacheStatus::Refreshed => "gatecache; fwd=stale; stored",
            CacheStatus::Miss => "gatecache; fwd=miss; stored",
            CacheStatus::Partial => "gatecache; fwd=partial; stored",
            CacheStatus::Bypass(_) => "gatecache; fwd=bypass",
        }
    }

    /// The index into [`LABELS`] (and the metrics' per-status counters).
    pub fn slot(self) -> usize {
        match self {
            CacheStatus::Hit => 0,
            CacheStatus::Revalidated => 1,
            CacheStatus::Stale => 2,
            CacheStatus::Miss | CacheStatus::Refreshed => 3,
            CacheStatus::Partial => 4,
            CacheStatus::Bypass(_) => 5,
        }
    }

    /// The access log's label: `HIT`, `REVALIDATED`, `STALE`, `MISS`, `PARTIAL` or `BYPASS`.
    pub fn label(self) -> &'static str {
        LABELS[self.slot()]
    }

    /// Were the body's bytes served from the cache (the original's `hitBytes`)?
    pub fn from_cache(self) -> bool {
        self.slot() < FROM_CACHE
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_status_has_one_field_label_and_slot() {
        use CacheStatus::*;
        for (s, field, label, cached) in [
            (Hit, "gatecache; hit", "HIT", true),
            (Stale, "gatecache; hit; detail=stale", "STALE", true),
            (
                Revalidated,
                "gatecache; fwd=stale; fwd-status=304",
                "REVALIDATED",
                true,
            ),
            (Refreshed, "gatecache; fwd=stale; stored", "MISS", false),
            (Miss, "gatecache; fwd=miss; stored", "MISS", false),
            (Partial, "gatecache; fwd=partial; stored", "PARTIAL", false),
            (
                Bypass(BypassReason::Method),
                "gatecache; fwd=bypass",
                "BYPASS",
                false,
            ),
            (
                Bypass(BypassReason::Answered),
                "gatecache; fwd=bypass",
                "BYPASS",
                false,
            ),
        ] {
            assert_eq!(
                (s.field_value(), s.label(), s.from_cache()),
                (field, label, cached)
            );
        }
    }
}
