//! What the cache did for one response (RFC 9211), named once: the `Cache-Status` field value,
//! the access log's label and the metrics' slot all come from [`CacheStatus`].

/// Why a response did not come from (or go into) the cache.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BypassReason {
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
    /// Made by the cache itself, neither a stored response nor one relayed from upstream: a
    /// refusal, an error of its own (a 502 or 504 when no valid answer came from upstream), the
    /// summary.
    Answered(Answer),
}

/// Why the cache answered by itself: the `detail` of its `Cache-Status` member (RFC 9211
/// §2.8) and of its access-log label.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Answer {
    /// The request is refused (a 4xx of the cache's own: a malformed head, an origin or port
    /// not allowed, a method it does not serve, a body too large).
    Refused,
    /// The request came back to this cache through a loop of caches (508).
    Loop,
    /// `only-if-cached` and nothing usable stored (504, RFC 9111 §5.2.1.7).
    OnlyIfCached,
    /// The range is outside the stored representation (416, RFC 9110 §15.5.17).
    RangeNotSatisfiable,
    /// No connection to the upstream (502).
    UpstreamUnreachable,
    /// The upstream answered too late, or a fill stalled (504).
    UpstreamTimeout,
    /// The upstream answered, but nothing that could be served: an invalid answer, a redirect
    /// during a fill, a fill cut short, a representation that changed under the request (502).
    UpstreamError,
    /// The cache's storage failed (502).
    StorageError,
    /// A bug in the cache (500).
    InternalError,
    /// The original module's summary on the client port.
    Summary,
}

impl Answer {
    /// The `detail` token (RFC 9211 §2.8; RFC 8941 §3.3.4 token syntax).
    pub fn detail(self) -> &'static str {
        self.texts().0
    }

    /// (`detail`, `Cache-Status` field value, access-log label).
    fn texts(self) -> (&'static str, &'static str, &'static str) {
        macro_rules! texts {
            ($d:literal) => {
                (
                    $d,
                    concat!("gatecache; detail=", $d),
                    concat!("ANSWERED:", $d),
                )
            };
        }
        match self {
            Answer::Refused => texts!("refused"),
            Answer::Loop => texts!("loop"),
            Answer::OnlyIfCached => texts!("only-if-cached"),
            Answer::RangeNotSatisfiable => texts!("range-not-satisfiable"),
            Answer::UpstreamUnreachable => texts!("upstream-unreachable"),
            Answer::UpstreamTimeout => texts!("upstream-timeout"),
            Answer::UpstreamError => texts!("upstream-error"),
            Answer::StorageError => texts!("storage-error"),
            Answer::InternalError => texts!("internal-error"),
            Answer::Summary => texts!("summary"),
        }
    }
}

/// The metrics' cache-status labels, in slot order; the first [`FROM_CACHE`] are served from
/// the cache. The access log uses them too, with the answer's `detail` after `ANSWERED`.
pub const LABELS: [&str; 7] = [
    "HIT",
    "REVALIDATED",
    "STALE",
    "MISS",
    "PARTIAL",
    "BYPASS",
    "ANSWERED",
];

/// How many of [`LABELS`] (the first ones) are served from the cache.
pub const FROM_CACHE: usize = 3;

impl CacheStatus {
    /// The `Cache-Status` field value (RFC 9211 §2): this cache's name, then `hit` or
    /// `fwd=<reason>` with `fwd-status`, `stored` and `detail` as they apply.
    ///
    /// A response the cache made itself has neither `hit` (RFC 9211 §2.1: such a response is
    /// no hit) nor `fwd` (§2.2: nothing of the upstream's is relayed), only `detail` (§2.8)
    /// saying why, e.g. `gatecache; detail=refused`. §2 advises against any member on locally
    /// generated responses; gatecache adds one all the same, because an origin's own 502 or
    /// 403 is relayed as sent and a client or an operator must be able to tell the two apart.
    pub fn field_value(self) -> &'static str {
        match self {
            CacheStatus::Hit => "gatecache; hit",
            CacheStatus::Stale => "gatecache; hit; detail=stale",
            CacheStatus::Revalidated => "gatecache; fwd=stale; fwd-status=304",
            CacheStatus::Refreshed => "gatecache; fwd=stale; stored",
            CacheStatus::Miss => "gatecache; fwd=miss; stored",
            CacheStatus::Partial => "gatecache; fwd=partial; stored",
            // RFC 9211 §2.2: `method` for a method the cache forwards, `bypass` for what it is
            // set never to handle (credentials, RFC 9111 §3.5), `miss` with no `stored` for a
            // response it may not store (learned now, or remembered: hit-for-pass).
            CacheStatus::Bypass(BypassReason::Method) => "gatecache; fwd=method",
            CacheStatus::Bypass(BypassReason::Authorization) => "gatecache; fwd=bypass",
            CacheStatus::Bypass(BypassReason::NotStorable) => "gatecache; fwd=miss",
            CacheStatus::Bypass(BypassReason::HitForPass) => {
                "gatecache; fwd=miss; detail=hit-for-pass"
            }
            CacheStatus::Answered(a) => a.texts().1,
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
            CacheStatus::Answered(_) => 6,
        }
    }

    /// The access log's label: `HIT`, `REVALIDATED`, `STALE`, `MISS`, `PARTIAL`, `BYPASS`, or
    /// `ANSWERED:<detail>` (`ANSWERED:refused`, `ANSWERED:upstream-unreachable`, ...).
    pub fn label(self) -> &'static str {
        match self {
            CacheStatus::Answered(a) => a.texts().2,
            _ => LABELS[self.slot()],
        }
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
                "gatecache; fwd=method",
                "BYPASS",
                false,
            ),
            (
                Bypass(BypassReason::Authorization),
                "gatecache; fwd=bypass",
                "BYPASS",
                false,
            ),
            (
                Bypass(BypassReason::NotStorable),
                "gatecache; fwd=miss",
                "BYPASS",
                false,
            ),
            (
                Bypass(BypassReason::HitForPass),
                "gatecache; fwd=miss; detail=hit-for-pass",
                "BYPASS",
                false,
            ),
            (
                Answered(Answer::Refused),
                "gatecache; detail=refused",
                "ANSWERED:refused",
                false,
            ),
            (
                Answered(Answer::UpstreamUnreachable),
                "gatecache; detail=upstream-unreachable",
                "ANSWERED:upstream-unreachable",
                false,
            ),
        ] {
            assert_eq!(
                (s.field_value(), s.label(), s.from_cache()),
                (field, label, cached)
            );
        }
    }

    #[test]
    fn an_answer_of_the_cache_names_itself_and_why_and_nothing_forwarded() {
        use Answer::*;
        for a in [
            Refused,
            Loop,
            OnlyIfCached,
            RangeNotSatisfiable,
            UpstreamUnreachable,
            UpstreamTimeout,
            UpstreamError,
            StorageError,
            InternalError,
            Summary,
        ] {
            let s = CacheStatus::Answered(a);
            let d = a.detail();
            // An RFC 8941 token: a letter first, then tchar (no quoting needed).
            assert!(d.starts_with(|c: char| c.is_ascii_lowercase()), "{d}");
            assert!(d.chars().all(|c| c.is_ascii_lowercase() || c == '-'), "{d}");
            assert_eq!(s.field_value(), format!("gatecache; detail={d}"));
            assert_eq!(s.label(), format!("ANSWERED:{d}"));
            assert_eq!(LABELS[s.slot()], "ANSWERED");
            assert!(!s.from_cache());
        }
    }
}
