//! HTTP caching rules (RFC 9111) as pure functions of headers and `now`: what may be stored,
//! how long a stored response stays fresh, and what a request for it needs (serve it,
//! revalidate it first, or serve it stale while revalidating).

use std::time::{SystemTime, UNIX_EPOCH};

use crate::store::ObjectMeta;

/// The `Cache-Control` directives gatecache acts on (request or response, RFC 9111 §5.2).
/// Durations are delta-seconds; unknown directives are ignored (§5.2.3).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CacheControl {
    /// `no-store` (§5.2.1.5, §5.2.2.5).
    pub no_store: bool,
    /// Unqualified `no-cache` (§5.2.1.4, §5.2.2.4); the field-named form is ignored.
    pub no_cache: bool,
    /// Unqualified `private` (§5.2.2.7); the field-named form is ignored.
    pub private: bool,
    /// `public` (§5.2.2.9).
    pub public: bool,
    /// `must-revalidate` (§5.2.2.2).
    pub must_revalidate: bool,
    /// `proxy-revalidate` (§5.2.2.8).
    pub proxy_revalidate: bool,
    /// `immutable` (RFC 8246).
    pub immutable: bool,
    /// `only-if-cached` (§5.2.1.7).
    pub only_if_cached: bool,
    /// `max-age` (§5.2.1.1, §5.2.2.1); a malformed value is 0.
    pub max_age: Option<u64>,
    /// `s-maxage` (§5.2.2.10); a malformed value is 0.
    pub s_maxage: Option<u64>,
    /// `max-stale` (§5.2.1.2; bare: any staleness, as `u64::MAX`).
    pub max_stale: Option<u64>,
    /// `min-fresh` (§5.2.1.3); a malformed value is `None`.
    pub min_fresh: Option<u64>,
    /// `stale-while-revalidate` (RFC 5861 §3); a malformed value is `None`.
    pub stale_while_revalidate: Option<u64>,
    /// `stale-if-error` (RFC 5861 §4); a malformed value is `None`.
    pub stale_if_error: Option<u64>,
}

/// Splits a header on commas outside quoted strings.
fn directives(v: &str) -> impl Iterator<Item = &str> {
    let mut quoted = false;
    let mut start = 0;
    let mut out = Vec::new();
    for (i, c) in v.char_indices() {
        match c {
            '"' => quoted = !quoted,
            ',' if !quoted => {
                out.push(&v[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    out.push(&v[start..]);
    out.into_iter().map(str::trim).filter(|d| !d.is_empty())
}

/// Delta-seconds; a value too large to hold saturates (RFC 9111 §1.2.2); junk is `None`.
fn seconds(v: &str) -> Option<u64> {
    let v = v.trim().trim_matches('"');
    if v.is_empty() || !v.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    Some(v.parse().unwrap_or(u64::MAX))
}

impl CacheControl {
    /// Parses a `Cache-Control` value (`None`: no field, all directives off). Never fails:
    /// names are case-insensitive, arguments may be quoted, a value over `u64` saturates.
    pub fn parse(v: Option<&str>) -> CacheControl {
        let mut cc = CacheControl::default();
        for d in directives(v.unwrap_or("")) {
            let (name, arg) = match d.split_once('=') {
                Some((n, a)) => (n.trim(), Some(a)),
                None => (d, None),
            };
            match name.to_ascii_lowercase().as_str() {
                "no-store" => cc.no_store = true,
                // The qualified forms (`no-cache="Set-Cookie"`) only concern the named fields,
                // which gatecache does not store.
                "no-cache" if arg.is_none() => cc.no_cache = true,
                "private" if arg.is_none() => cc.private = true,
                "public" => cc.public = true,
                "must-revalidate" => cc.must_revalidate = true,
                "proxy-revalidate" => cc.proxy_revalidate = true,
                "immutable" => cc.immutable = true,
                "only-if-cached" => cc.only_if_cached = true,
                // A malformed max-age makes the response stale (§4.2.1), hence Some(0).
                "max-age" => cc.max_age = Some(arg.and_then(seconds).unwrap_or(0)),
                "s-maxage" => cc.s_maxage = Some(arg.and_then(seconds).unwrap_or(0)),
                "max-stale" => cc.max_stale = Some(arg.and_then(seconds).unwrap_or(u64::MAX)),
                "min-fresh" => cc.min_fresh = arg.and_then(seconds),
                "stale-while-revalidate" => cc.stale_while_revalidate = arg.and_then(seconds),
                "stale-if-error" => cc.stale_if_error = arg.and_then(seconds),
                _ => {}
            }
        }
        cc
    }
}

/// The freshness gatecache assigns to some content beyond what its response says: an
/// operator's `[[rule]]`, or a default (package files and `by-hash` paths, `[[origin]]
/// immutable`, the built-in Device Update and Windows Update origins).
///
/// A rule that [`Rule::overrides_origin`] is imposed whatever the response says. A default is
/// a heuristic freshness (RFC 9111 §4.2.2: a cache may assign one only when the response has
/// no explicit expiration time) and yields to every explicit directive of the origin (see
/// [`Rule::applies_to`]); it never stops a client's `no-cache` from revalidating either.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Rule {
    /// Never changes: fresh forever (Device Update content, package files).
    pub immutable: bool,
    /// Fresh for this many seconds.
    pub max_age: Option<u64>,
    /// The operator's own `[[rule]]`: applies whatever the origin's response says, and an
    /// `immutable` one is never revalidated, not even for a client's `no-cache`. `false`: a
    /// built-in or per-origin default, which yields to the origin's directives.
    pub overrides_origin: bool,
}

impl Rule {
    /// A default (not the operator's `[[rule]]`) that treats content as immutable.
    pub const DEFAULT_IMMUTABLE: Rule = Rule {
        immutable: true,
        max_age: None,
        overrides_origin: false,
    };

    /// Does this rule decide the freshness of a stored response with directives `cc` and
    /// `has_expires` (an `Expires` field)? An operator's rule always does. A default only when
    /// the origin said nothing about freshness or revalidation: no `no-cache` (§5.2.2.4), no
    /// `max-age` (§5.2.2.1), `s-maxage` (§5.2.2.10) or `Expires` (§5.3: an explicit
    /// expiration time, which rules out any heuristic, §4.2.2), no `must-revalidate`
    /// (§5.2.2.2) or `proxy-revalidate` (§5.2.2.8), which a lifetime of forever would defeat.
    /// (`no-store` and `private` responses are never stored, §5.2.2.5, §5.2.2.7.)
    pub fn applies_to(&self, cc: &CacheControl, has_expires: bool) -> bool {
        self.overrides_origin
            || !(cc.no_cache
                || cc.max_age.is_some()
                || cc.s_maxage.is_some()
                || has_expires
                || cc.must_revalidate
                || cc.proxy_revalidate)
    }
}

/// Why a response may not be stored (it is passed through instead), `None` when it may
/// (RFC 9111 §3): `no-store`, `private`, a request with `Authorization` and no directive that
/// allows a shared cache to store it (§3.5), or a `Vary` on anything but `Accept-Encoding`
/// (§4.1). The reason is a short text for the log.
pub fn not_storable(
    cc: &CacheControl,
    vary: Option<&str>,
    request_has_authorization: bool,
) -> Option<&'static str> {
    if cc.no_store {
        return Some("no-store");
    }
    if cc.private {
        return Some("private");
    }
    if request_has_authorization && !(cc.public || cc.s_maxage.is_some() || cc.must_revalidate) {
        return Some("a request with Authorization");
    }
    // Upstream requests carry no Accept-Encoding, so a response varying on it alone is the
    // identity encoding, right for every client. Any other Vary would need a variant per value.
    if let Some(v) = vary
        && directives(v).any(|f| !f.eq_ignore_ascii_case("accept-encoding"))
    {
        return Some("Vary");
    }
    None
}

/// Seconds since the Unix epoch (0 if the clock is before it): the `now` of this module.
pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

fn http_date(v: Option<&str>) -> Option<u64> {
    let t = httpdate::parse_http_date(v?.trim()).ok()?;
    Some(t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs()))
}

/// How long a heuristic freshness may be at most (§4.2.2 suggests 10% of the time since
/// Last-Modified; a cap keeps a file untouched for years from being trusted for months).
pub const HEURISTIC_CAP: u64 = 24 * 3600;

/// Freshness lifetime in seconds (RFC 9111 §4.2.1): the operator's `[[rule]]`, then the
/// origin's `no-cache` (0, §5.2.2.4), `s-maxage`, `max-age`, `Expires` - `Date`; with none of
/// those a heuristic (§4.2.2): a default rule where it applies ([`Rule::applies_to`]), else 10%
/// of the time since `Last-Modified`. `u64::MAX` for immutable.
pub fn lifetime(meta: &ObjectMeta, rule: &Rule) -> u64 {
    let cc = CacheControl::parse(meta.cache_control.as_deref());
    lifetime_with(meta, rule, &cc, http_date(meta.date.as_deref()))
}

/// The lifetime `rule` gives, if it applies to a response with directives `cc` (see
/// [`Rule::applies_to`]).
fn rule_lifetime(meta: &ObjectMeta, rule: &Rule, cc: &CacheControl) -> Option<u64> {
    if !rule.applies_to(cc, meta.expires.is_some()) {
        return None;
    }
    if rule.immutable {
        return Some(u64::MAX);
    }
    rule.max_age
}

/// [`lifetime`] with the stored Cache-Control and Date already parsed (once per request).
fn lifetime_with(meta: &ObjectMeta, rule: &Rule, cc: &CacheControl, date: Option<u64>) -> u64 {
    if rule.overrides_origin
        && let Some(s) = rule_lifetime(meta, rule, cc)
    {
        return s;
    }
    if cc.no_cache {
        return 0;
    }
    // A shared cache: s-maxage first, then max-age (§4.2.1).
    if let Some(s) = cc.s_maxage.or(cc.max_age) {
        return s;
    }
    let date = date.unwrap_or(meta.stored_at);
    if meta.expires.is_some() {
        // An invalid Expires (e.g. "0") means already expired (§5.3).
        return http_date(meta.expires.as_deref()).map_or(0, |e| e.saturating_sub(date));
    }
    // No explicit expiration time: a heuristic (§4.2.2), a default rule's first.
    if let Some(s) = rule_lifetime(meta, rule, cc) {
        return s;
    }
    match http_date(meta.last_modified.as_deref()) {
        Some(lm) => (date.saturating_sub(lm) / 10).min(HEURISTIC_CAP),
        None => 0,
    }
}

/// Current age in seconds at `now` (Unix seconds; RFC 9111 §4.2.3), with `stored_at` as the
/// response time and the stored `Age` as the age it arrived with.
pub fn age(meta: &ObjectMeta, now: u64) -> u64 {
    age_with(meta, http_date(meta.date.as_deref()), now)
}

fn age_with(meta: &ObjectMeta, date: Option<u64>, now: u64) -> u64 {
    let apparent = date.map_or(0, |d| meta.stored_at.saturating_sub(d));
    apparent.max(meta.age) + now.saturating_sub(meta.stored_at)
}

/// What to do with a stored response for one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// Serve it.
    Fresh,
    /// Serve it stale now, and revalidate in the background.
    StaleWhileRevalidate,
    /// Ask the upstream first. If the upstream cannot be reached, the stored response may be
    /// served stale when `stale_if_unreachable`; if it answers 5xx, when `stale_if_5xx`.
    Revalidate {
        /// May stand in when the upstream cannot be reached (RFC 9111 §4.2.4).
        stale_if_unreachable: bool,
        /// May stand in for a 5xx answer (RFC 5861 §4 `stale-if-error`).
        stale_if_5xx: bool,
    },
}

/// Decides for a request (its `Cache-Control`, and `Pragma: no-cache`) at `now` (Unix seconds)
/// what to do with `meta` (RFC 9111 §4.2, §5.2.1, §5.4; RFC 5861; RFC 8246): the operator's
/// `immutable` `[[rule]]` wins, then the client's directives, then freshness, then the
/// staleness the response allows. A default rule (not the operator's) never stops a client's
/// `no-cache` from revalidating.
pub fn decide(
    meta: &ObjectMeta,
    req: &CacheControl,
    pragma_no_cache: bool,
    rule: &Rule,
    now: u64,
) -> Decision {
    // Only the operator's own rule makes content exempt from revalidation.
    if rule.overrides_origin && rule.immutable {
        return Decision::Fresh;
    }
    let res = CacheControl::parse(meta.cache_control.as_deref());
    let date = http_date(meta.date.as_deref());
    let life = lifetime_with(meta, rule, &res, date);
    let age = age_with(meta, date, now);
    let fresh = age < life;
    // `no-cache` (§5.2.1.4), or `Pragma: no-cache` from a client that sends no Cache-Control
    // (§5.4): a force reload, always checked with the origin (a 304 is cheap).
    let no_cache = req.no_cache || (pragma_no_cache && req == &CacheControl::default());
    // Immutable content (the origin's `immutable`, RFC 8246 §2, or a default that applies)
    // is not revalidated for a plain reload (`max-age=0`, `min-fresh`) while fresh; a force
    // reload (`no-cache`) still is ("unless explicitly overridden by the user").
    let immutable = fresh
        && (res.immutable || (rule.immutable && rule.applies_to(&res, meta.expires.is_some())));
    let client_insists = no_cache
        || (!immutable
            // max-age=0 (apt's index requests): ages are whole seconds, so "0" may hide a
            // fraction; every cache reads it as "check with the origin".
            && (req.max_age.is_some_and(|m| m == 0 || age > m)
                || req.min_fresh.is_some_and(|m| life.saturating_sub(age) < m)));
    // Stale may be served only where neither side forbids it (§4.2.4, RFC 5861).
    let may_be_stale =
        !(res.must_revalidate || res.proxy_revalidate || res.s_maxage.is_some() || res.no_cache);
    let staleness = age.saturating_sub(life);
    let within = |d: Option<u64>| d.is_some_and(|d| staleness <= d);
    if client_insists {
        return Decision::Revalidate {
            // A response still fresh may stand in when the upstream cannot be reached: the
            // client's no-cache and max-age=0 are preferences (§5.2.1.1, §5.2.1.4) and the
            // origin's lifetime still holds. A stale one may not: that client wants no stale.
            stale_if_unreachable: fresh || (may_be_stale && !no_cache && req.max_age != Some(0)),
            stale_if_5xx: may_be_stale && within(res.stale_if_error.or(req.stale_if_error)),
        };
    }
    if fresh {
        return Decision::Fresh;
    }
    if may_be_stale && req.max_stale.is_some_and(|m| staleness <= m) {
        return Decision::Fresh;
    }
    if may_be_stale && within(res.stale_while_revalidate) {
        return Decision::StaleWhileRevalidate;
    }
    Decision::Revalidate {
        // A cache cut off from its upstream may serve stale (§4.2.4): the gateway's job.
        stale_if_unreachable: may_be_stale,
        stale_if_5xx: may_be_stale && within(res.stale_if_error.or(req.stale_if_error)),
    }
}

/// `Age` header value in seconds for a response served from the cache at `now` (RFC 9111
/// §5.1); none when it would be 0.
pub fn age_header(meta: &ObjectMeta, now: u64) -> Option<u64> {
    Some(age(meta, now)).filter(|&a| a > 0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    const NOW: u64 = 1_700_000_000;

    fn date(t: u64) -> String {
        httpdate::fmt_http_date(UNIX_EPOCH + Duration::from_secs(t))
    }

    /// A response received at NOW - `ago` with these headers.
    fn meta(ago: u64, cc: Option<&str>) -> ObjectMeta {
        ObjectMeta {
            cache_control: cc.map(str::to_string),
            date: Some(date(NOW - ago)),
            stored_at: NOW - ago,
            etag: Some("\"v1\"".into()),
            ..Default::default()
        }
    }

    fn cc(v: &str) -> CacheControl {
        CacheControl::parse(Some(v))
    }

    const NONE: Rule = Rule {
        immutable: false,
        max_age: None,
        overrides_origin: false,
    };

    /// An operator's `[[rule]] immutable = true`.
    const OPERATOR_IMMUTABLE: Rule = Rule {
        immutable: true,
        max_age: None,
        overrides_origin: true,
    };

    #[test]
    fn parsing() {
        let c = cc("max-age=60, s-maxage=\"30\", no-cache=\"Set-Cookie, X\", Public, x-ext=1");
        assert_eq!(c.max_age, Some(60));
        assert_eq!(c.s_maxage, Some(30));
        assert!(c.public && !c.no_cache, "{c:?}");
        assert_eq!(cc("max-age=abc").max_age, Some(0));
        assert_eq!(
            cc("max-age=99999999999999999999999").max_age,
            Some(u64::MAX)
        );
        assert_eq!(cc("max-stale").max_stale, Some(u64::MAX));
        assert_eq!(
            cc("stale-while-revalidate=30, stale-if-error=600").stale_if_error,
            Some(600)
        );
        assert_eq!(CacheControl::parse(None), CacheControl::default());
    }

    #[test]
    fn storability() {
        let ok =
            |c: &str, vary: Option<&str>, auth: bool| not_storable(&cc(c), vary, auth).is_none();
        assert!(ok("max-age=60", None, false));
        assert!(!ok("no-store", None, false));
        assert!(!ok("private, max-age=60", None, false));
        assert!(ok("private=\"Set-Cookie\"", None, false));
        assert!(!ok("max-age=60", None, true));
        assert!(ok("public, max-age=60", None, true));
        assert!(ok("s-maxage=60", None, true));
        assert!(ok("", Some("Accept-Encoding"), false));
        assert!(!ok("", Some("Accept-Encoding, User-Agent"), false));
        assert!(!ok("", Some("*"), false));
    }

    #[test]
    fn lifetimes() {
        // (headers, expected lifetime)
        let table: &[(ObjectMeta, u64)] = &[
            (meta(0, Some("max-age=60")), 60),
            (meta(0, Some("max-age=60, s-maxage=10")), 10),
            (meta(0, Some("no-cache, max-age=60")), 0),
            (
                ObjectMeta {
                    expires: Some(date(NOW + 300)),
                    ..meta(0, None)
                },
                300,
            ),
            (
                ObjectMeta {
                    expires: Some("0".into()),
                    ..meta(0, None)
                },
                0,
            ),
            // Heuristic: 10% of the time since Last-Modified, capped at a day.
            (
                ObjectMeta {
                    last_modified: Some(date(NOW - 1000)),
                    ..meta(0, None)
                },
                100,
            ),
            (
                ObjectMeta {
                    last_modified: Some(date(NOW - 100 * 86400)),
                    ..meta(0, None)
                },
                HEURISTIC_CAP,
            ),
            (meta(0, None), 0),
        ];
        for (m, want) in table {
            assert_eq!(lifetime(m, &NONE), *want, "{m:?}");
        }
        // The operator's rules override the origin's no-cache.
        let m = meta(0, Some("no-cache"));
        let five = Rule {
            immutable: false,
            max_age: Some(5),
            overrides_origin: true,
        };
        assert_eq!(lifetime(&m, &five), 5);
        assert_eq!(lifetime(&m, &OPERATOR_IMMUTABLE), u64::MAX);
    }

    /// A built-in default (a package file treated as immutable) applies only to a response
    /// with no explicit freshness or revalidation directive (RFC 9111 §4.2.2 heuristic); each
    /// of `no-cache` (§5.2.2.4), `max-age` (§5.2.2.1), `s-maxage` (§5.2.2.10), `Expires`
    /// (§5.3), `must-revalidate` (§5.2.2.2) and `proxy-revalidate` (§5.2.2.8) takes it
    /// back to what RFC 9111 alone gives; an operator's `[[rule]]` overrides every one.
    #[test]
    fn a_default_yields_to_each_explicit_directive_and_a_rule_does_not() {
        let lm = |m: ObjectMeta| ObjectMeta {
            last_modified: Some(date(NOW - 1000)),
            ..m
        };
        let expires = |m: ObjectMeta, at: u64| ObjectMeta {
            expires: Some(date(at)),
            ..m
        };
        let default_5 = Rule {
            immutable: false,
            max_age: Some(5),
            overrides_origin: false,
        };
        let operator_5 = Rule {
            overrides_origin: true,
            ..default_5
        };
        // `[[rule]] immutable = false`: no default, the origin's word alone.
        let operator_off = Rule {
            immutable: false,
            max_age: None,
            overrides_origin: true,
        };
        // (stored response, lifetime with the default immutable, without any rule)
        let table: Vec<(&str, ObjectMeta, u64)> = vec![
            ("silent", meta(0, None), u64::MAX),
            ("silent, Last-Modified", lm(meta(0, None)), u64::MAX),
            ("public", meta(0, Some("public")), u64::MAX),
            ("immutable", meta(0, Some("immutable")), u64::MAX),
            ("no-cache", meta(0, Some("no-cache")), 0),
            ("max-age", meta(0, Some("max-age=60")), 60),
            ("max-age=0", meta(0, Some("max-age=0")), 0),
            ("s-maxage", meta(0, Some("s-maxage=30")), 30),
            ("Expires", expires(meta(0, None), NOW + 300), 300),
            ("Expires past", expires(meta(0, None), NOW - 300), 0),
            ("must-revalidate", meta(0, Some("must-revalidate")), 0),
            (
                "must-revalidate, Last-Modified",
                lm(meta(0, Some("must-revalidate"))),
                100,
            ),
            ("proxy-revalidate", meta(0, Some("proxy-revalidate")), 0),
        ];
        for (what, m, want) in &table {
            assert_eq!(lifetime(m, &Rule::DEFAULT_IMMUTABLE), *want, "{what}");
            let silent = want == &u64::MAX;
            let want_5 = if silent { 5 } else { *want };
            assert_eq!(lifetime(m, &default_5), want_5, "default max_age: {what}");
            assert_eq!(lifetime(m, &OPERATOR_IMMUTABLE), u64::MAX, "rule: {what}");
            assert_eq!(lifetime(m, &operator_5), 5, "rule max_age: {what}");
            assert_eq!(
                lifetime(m, &operator_off),
                lifetime(m, &NONE),
                "rule off: {what}"
            );
            if !silent {
                assert_eq!(lifetime(m, &NONE), *want, "as if no default: {what}");
            }
        }
    }

    /// The package test of issue 12 as a decision: a `.deb` whose origin says `no-cache`
    /// is revalidated on every request, one with `max-age=1` once it is 2 s old; one whose
    /// origin is silent stays fresh. An operator's `[[rule]]` serves all three unchecked.
    #[test]
    fn a_default_immutable_package_follows_the_origins_directives() {
        use Decision::*;
        let none = CacheControl::default();
        let d = |m: &ObjectMeta, rule: &Rule| decide(m, &none, false, rule, NOW);
        let default = Rule::DEFAULT_IMMUTABLE;
        assert_eq!(d(&meta(1, Some("no-cache")), &default), reval(false, false));
        assert_eq!(d(&meta(2, Some("max-age=1")), &default), reval(true, false));
        assert_eq!(d(&meta(0, Some("max-age=1")), &default), Fresh);
        assert_eq!(
            d(&meta(2, Some("max-age=1, must-revalidate")), &default),
            reval(false, false)
        );
        assert_eq!(d(&meta(1_000_000, None), &default), Fresh);
        for m in [
            meta(1, Some("no-cache")),
            meta(2, Some("max-age=1")),
            meta(1_000_000, None),
        ] {
            assert_eq!(d(&m, &OPERATOR_IMMUTABLE), Fresh, "{m:?}");
        }
    }

    /// A client's `no-cache` (RFC 9111 §5.2.1.4) and `Pragma: no-cache` (§5.4) revalidate a
    /// fresh response whatever makes it fresh: its own lifetime, the origin's `immutable`
    /// (RFC 8246 §2: a force reload) or a default rule; only the operator's `[[rule]]`
    /// exempts content. The response may stand in if the upstream cannot be reached (it is
    /// still fresh). A plain reload (`max-age=0`) leaves immutable content alone.
    #[test]
    fn a_client_no_cache_revalidates_whatever_the_default() {
        use Decision::*;
        let default = Rule::DEFAULT_IMMUTABLE;
        let pragma =
            |m: &ObjectMeta, rule: &Rule| decide(m, &CacheControl::default(), true, rule, NOW);
        let cases = [
            (meta(10, Some("max-age=3600")), NONE),
            (meta(10, Some("max-age=3600, immutable")), NONE),
            (meta(10, None), default),
            (meta(10, Some("immutable")), default),
        ];
        for (m, rule) in &cases {
            assert_eq!(
                decide(m, &cc("no-cache"), false, rule, NOW),
                reval(true, false)
            );
            assert_eq!(pragma(m, rule), reval(true, false), "{m:?} {rule:?}");
            // Pragma is ignored beside a Cache-Control the cache understands (§5.4).
            assert_eq!(
                decide(m, &cc("max-stale=5"), true, rule, NOW),
                Fresh,
                "{m:?}"
            );
            assert_eq!(
                decide(m, &cc("no-cache"), false, &OPERATOR_IMMUTABLE, NOW),
                Fresh
            );
        }
        let max_age_0 = |m: &ObjectMeta, rule: &Rule| decide(m, &cc("max-age=0"), false, rule, NOW);
        assert_eq!(max_age_0(&cases[0].0, &NONE), reval(true, false));
        assert_eq!(max_age_0(&cases[1].0, &NONE), Fresh);
        assert_eq!(max_age_0(&cases[2].0, &default), Fresh);
        // A default that does not apply (the origin said max-age) is no reason to skip it.
        assert_eq!(
            max_age_0(&meta(10, Some("max-age=3600")), &default),
            reval(true, false)
        );
    }

    #[test]
    fn ages() {
        let mut m = meta(10, None);
        assert_eq!(age(&m, NOW), 10);
        m.age = 100;
        assert_eq!(age(&m, NOW), 110);
        // A Date older than the response time (a slow path) counts too.
        m.age = 0;
        m.date = Some(date(NOW - 40));
        assert_eq!(age(&m, NOW), 30 + 10);
    }

    /// (stored Cache-Control, received `ago` seconds back, request Cache-Control, pragma,
    /// decision)
    type Row = (Option<&'static str>, u64, &'static str, bool, Decision);

    fn reval(u: bool, e: bool) -> Decision {
        Decision::Revalidate {
            stale_if_unreachable: u,
            stale_if_5xx: e,
        }
    }

    fn check_decisions(table: &[Row]) {
        for (stored, ago, req, pragma, want) in table {
            let m = meta(*ago, *stored);
            assert_eq!(
                decide(&m, &cc(req), *pragma, &NONE, NOW),
                *want,
                "stored {stored:?}, {ago} s ago, request {req:?} pragma {pragma}"
            );
        }
    }

    #[test]
    fn decisions_by_the_stored_response() {
        use Decision::*;
        check_decisions(&[
            (Some("max-age=60"), 10, "", false, Fresh),
            (Some("max-age=60"), 61, "", false, reval(true, false)),
            (
                Some("max-age=60, must-revalidate"),
                61,
                "",
                false,
                reval(false, false),
            ),
            (Some("s-maxage=60"), 61, "", false, reval(false, false)),
            (
                Some("max-age=60, stale-if-error=100"),
                61,
                "",
                false,
                reval(true, true),
            ),
            (
                Some("max-age=60, stale-if-error=100"),
                200,
                "",
                false,
                reval(true, false),
            ),
            (
                Some("max-age=60, stale-while-revalidate=30"),
                80,
                "",
                false,
                StaleWhileRevalidate,
            ),
            (
                Some("max-age=60, stale-while-revalidate=30"),
                100,
                "",
                false,
                reval(true, false),
            ),
        ]);
    }

    #[test]
    fn decisions_by_the_clients_directives() {
        use Decision::*;
        check_decisions(&[
            // Fresh: it may stand in if the upstream cannot be reached.
            (
                Some("max-age=60"),
                10,
                "no-cache",
                false,
                reval(true, false),
            ),
            (Some("max-age=60"), 10, "", true, reval(true, false)),
            (
                Some("max-age=60"),
                10,
                "max-age=0",
                false,
                reval(true, false),
            ),
            (Some("max-age=60"), 10, "max-age=20", false, Fresh),
            (
                Some("max-age=60"),
                0,
                "max-age=0",
                false,
                reval(true, false),
            ),
            // Stale: a client that asked for a checked answer gets no stale one.
            (
                Some("max-age=60"),
                70,
                "no-cache",
                false,
                reval(false, false),
            ),
            (
                Some("max-age=60"),
                70,
                "max-age=0",
                false,
                reval(false, false),
            ),
            (
                Some("max-age=60"),
                10,
                "min-fresh=55",
                false,
                reval(true, false),
            ),
            (Some("max-age=60"), 70, "max-stale=20", false, Fresh),
            (
                Some("max-age=60"),
                90,
                "max-stale=20",
                false,
                reval(true, false),
            ),
            (
                Some("max-age=60, must-revalidate"),
                70,
                "max-stale",
                false,
                reval(false, false),
            ),
        ]);
    }

    #[test]
    fn decisions_for_immutable_content() {
        use Decision::*;
        // `immutable` while fresh ignores a reload (RFC 8246 §2), not a force reload.
        check_decisions(&[
            (Some("max-age=60, immutable"), 10, "max-age=0", false, Fresh),
            (
                Some("max-age=60, immutable"),
                10,
                "no-cache",
                false,
                reval(true, false),
            ),
            (
                Some("max-age=60, immutable"),
                70,
                "",
                false,
                reval(true, false),
            ),
        ]);
        let none = CacheControl::default();
        // The operator's immutable rule: never revalidated.
        let m = meta(1_000_000, Some("no-cache"));
        assert_eq!(decide(&m, &none, false, &OPERATOR_IMMUTABLE, NOW), Fresh);
        assert_eq!(
            decide(&m, &cc("no-cache"), true, &OPERATOR_IMMUTABLE, NOW),
            Fresh
        );
    }
}
