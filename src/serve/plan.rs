//! What to do with one request, decided before any I/O: pure functions from the parsed request,
//! the configuration, the stored object's metadata and `now` to a named [`Plan`], the outcome
//! of a revalidation ([`after_revalidation`]) and the shape of the response ([`shape`]).
//! The executor (`serve::respond`) carries them out.

use std::ops::Range;

use crate::config::Config;
use crate::error::{Error, Kind};
use crate::http::cache_status::{BypassReason, CacheStatus};
use crate::http::conditional;
use crate::http::freshness::{self, CacheControl, Decision};
use crate::http::range::{self, Resolved};
use crate::http::request::{Method, Request};
use crate::route::{self, Target};
use crate::store::ObjectMeta;

/// An answer given before routing reaches the cache.
#[derive(Debug, Clone, PartialEq)]
pub enum Early {
    /// Answer by ourselves with this error (a method we do not serve, a loop, a refusal).
    Refuse(Error),
    /// The original module's summary, on the client port.
    Summary,
}

/// What to do with a routed request.
#[derive(Debug, Clone, PartialEq)]
pub enum Plan {
    /// Answer by ourselves with this error (`only-if-cached` with nothing usable stored).
    Refuse(Error),
    /// Relay to the upstream; nothing is stored.
    Pass(BypassReason),
    /// Serve the stored object as fresh.
    Hit,
    /// Serve the stored object stale now, and revalidate once the response is sent
    /// (RFC 5861 `stale-while-revalidate`).
    StaleThenRevalidate,
    /// Ask the upstream before serving the stored object (RFC 9111 §4.3). If it cannot be
    /// reached the stored object may stand in when `stale_if_unreachable`; if it answers a
    /// 5xx, when `stale_if_5xx`.
    Revalidate {
        /// The stored object may stand in if the upstream cannot be reached.
        stale_if_unreachable: bool,
        /// The stored object may stand in if the upstream answers 5xx.
        stale_if_5xx: bool,
    },
    /// Nothing stored: fetch it (joining a fetch under way).
    Miss,
}

fn refused(status: u16, reason: impl Into<String>) -> Error {
    Error::new(Kind::Refused {
        status,
        reason: reason.into(),
    })
}

fn refuse(status: u16, reason: impl Into<String>) -> Plan {
    Plan::Refuse(refused(status, reason))
}

/// The first step: answers that need neither the cache nor the upstream, then routing
/// (`route::route`, pure too). `Ok` is the target to plan with.
///
/// In order: a method we do not serve is 405 (RFC 9110 §15.5.6); `/summary` with
/// `summary_unrestricted`; a request whose `Via` names this node is a loop (508, RFC 5842
/// §7.2); a request that routes nowhere is refused (400 or 403).
pub fn admit(req: &Request, cfg: &Config) -> Result<Target, Early> {
    let refuse = |status, reason| Early::Refuse(refused(status, reason));
    if req.method() == Method::Other {
        return Err(refuse(
            405,
            format!("method {} not allowed", req.method_name),
        ));
    }
    if cfg.summary_unrestricted && req.target == "/summary" {
        return Err(Early::Summary);
    }
    if req.via_has(&cfg.node_name) {
        return Err(refuse(
            508,
            format!("loop detected: request already passed {}", cfg.node_name),
        ));
    }
    route::route(req, cfg).map_err(|r| Early::Refuse(Error::from(r)))
}

/// Why a routed request is not for the cache, if it is not: a method that is passed through,
/// a client's credentials (RFC 9111 §3.5), or a key recently found not storable.
pub fn bypass(req: &Request, hit_for_pass: bool) -> Option<BypassReason> {
    if req.method().is_passed() {
        Some(BypassReason::Method)
    } else if req.authorization.is_some() {
        Some(BypassReason::Authorization)
    } else if hit_for_pass {
        Some(BypassReason::HitForPass)
    } else {
        None
    }
}

/// The second step, for a routed request: pass it, serve what is stored, revalidate it, or
/// fetch it. `stored` is the object's metadata if the cache holds it; `now` in Unix seconds.
pub fn plan(
    req: &Request,
    target: &Target,
    hit_for_pass: bool,
    stored: Option<&ObjectMeta>,
    now: u64,
) -> Plan {
    if let Some(why) = bypass(req, hit_for_pass) {
        return Plan::Pass(why);
    }
    let cc = CacheControl::parse(req.cache_control.as_deref());
    let Some(meta) = stored else {
        // RFC 9111 §5.2.1.7: only-if-cached and nothing stored is a 504.
        if cc.only_if_cached {
            return refuse(504, "not cached (only-if-cached)");
        }
        // RFC 9111 §5.2.1.5: nothing of the answer to a no-store request may be stored.
        if cc.no_store {
            return Plan::Pass(BypassReason::NotStorable);
        }
        return Plan::Miss;
    };
    match freshness::decide(meta, &cc, req.pragma_no_cache, &target.rule, now) {
        Decision::Fresh => Plan::Hit,
        Decision::StaleWhileRevalidate => Plan::StaleThenRevalidate,
        Decision::Revalidate { .. } if cc.only_if_cached => refuse(504, "stale (only-if-cached)"),
        // A revalidation would store its answer (§5.2.1.5): pass it instead.
        Decision::Revalidate { .. } if cc.no_store => Plan::Pass(BypassReason::NotStorable),
        Decision::Revalidate {
            stale_if_unreachable,
            stale_if_5xx,
        } => Plan::Revalidate {
            stale_if_unreachable,
            stale_if_5xx,
        },
    }
}

/// What a revalidation answered, reduced to what decides the next step.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Revalidated {
    /// The object to serve now has this version.
    Version(u64),
    /// The answer may not be stored any more.
    NotStorable,
    /// The upstream answered a status the cache relays, not stores (a redirect, a 4xx, a
    /// 5xx; RFC 9111 §4.3.3).
    Answered(u16),
}

/// The next step after a revalidation.
#[derive(Debug, Clone, PartialEq)]
pub enum AfterRevalidation {
    /// Serve the object the revalidation gave, with this cache status: `Revalidated` (same
    /// version, headers refreshed) or `Refreshed` (a new version is being fetched).
    Serve(CacheStatus),
    /// Drop what is stored and pass the request through.
    DropAndPass,
    /// Relay the upstream's answer; what is stored stays (the next request revalidates again).
    Relay,
    /// Serve the stored object stale (RFC 9111 §4.2.4, RFC 5861 `stale-if-error`).
    ServeStale,
    /// Answer the error.
    Fail(Error),
}

/// Decides after revalidating a stored object of version `stale`: only an upstream failure
/// lets the stored object stand in, never a failure of our own storage.
pub fn after_revalidation(
    stale: u64,
    answer: Result<Revalidated, &Error>,
    stale_if_unreachable: bool,
    stale_if_5xx: bool,
) -> AfterRevalidation {
    match answer {
        Ok(Revalidated::Version(v)) if v == stale => {
            AfterRevalidation::Serve(CacheStatus::Revalidated)
        }
        Ok(Revalidated::Version(_)) => AfterRevalidation::Serve(CacheStatus::Refreshed),
        Ok(Revalidated::NotStorable) => AfterRevalidation::DropAndPass,
        // RFC 9111 §4.3.3: a 5xx may be answered from the stale object when stale-if-error
        // allows (RFC 5861 §4), otherwise it is relayed like any other answer.
        Ok(Revalidated::Answered(s)) if s >= 500 && stale_if_5xx => AfterRevalidation::ServeStale,
        Ok(Revalidated::Answered(_)) => AfterRevalidation::Relay,
        Err(e)
            if e.side() == crate::error::Side::Upstream
                && ((stale_if_unreachable && e.is_unreachable())
                    || (stale_if_5xx && e.status() >= 500)) =>
        {
            AfterRevalidation::ServeStale
        }
        Err(e) => AfterRevalidation::Fail(e.clone()),
    }
}

/// The shape of the response to a request for a stored object (RFC 9110 §13, §14).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Shape {
    /// 304: the client's validators match (RFC 9110 §13.1.1-13.1.3).
    NotModified,
    /// 416: no range overlaps the representation (RFC 9110 §15.5.17).
    Unsatisfiable,
    /// 200 with the whole representation, or 206 with one range (`partial`).
    Single {
        /// The bytes sent (end exclusive).
        range: Range<u64>,
        /// A 206 with `Content-Range` (else a 200 with the whole representation).
        partial: bool,
    },
    /// 206 `multipart/byteranges` (RFC 9110 §14.6), ranges in the client's order.
    Multipart(Vec<Range<u64>>),
}

impl Shape {
    /// The byte ranges the body carries (none for a 304 or a 416).
    pub fn ranges(&self) -> &[Range<u64>] {
        match self {
            Shape::Single { range, .. } => std::slice::from_ref(range),
            Shape::Multipart(r) => r,
            Shape::NotModified | Shape::Unsatisfiable => &[],
        }
    }
}

/// The response's shape for `req` and the stored `meta`: conditionals first, then `Range`
/// (honoured only if `If-Range` allows, RFC 9110 §13.1.5).
pub fn shape(req: &Request, meta: &ObjectMeta) -> Shape {
    if meta.status != 200 {
        // A stored 404, 301, ... is sent as it is: conditionals and ranges select parts of a
        // 200's representation (RFC 9110 §13.2.1, §14.2).
        return Shape::Single {
            range: 0..meta.total_len,
            partial: false,
        };
    }
    let etag = meta.etag.as_deref();
    let lm = meta.last_modified.as_deref();
    if conditional::not_modified(req, etag, lm) {
        return Shape::NotModified;
    }
    let total = meta.total_len;
    let specs = req.range.as_deref().and_then(range::parse);
    let resolved = match &specs {
        Some(s) if conditional::if_range_allows(req, etag, lm) => range::resolve(s, total),
        _ => Resolved::Full,
    };
    match resolved {
        Resolved::Full => Shape::Single {
            range: 0..total,
            partial: false,
        },
        Resolved::Partial(mut r) if r.len() == 1 => Shape::Single {
            range: r.remove(0),
            partial: true,
        },
        Resolved::Partial(r) => Shape::Multipart(r),
        Resolved::Unsatisfiable => Shape::Unsatisfiable,
    }
}

/// Blocks to fetch for an object not cached at all, or being revalidated: `(first, count)`
/// from the block the client's range starts in, as many as it asks for (the upstream window
/// caps `count`). A HEAD, a suffix range (the length is not known yet) and several ranges ask
/// for one block to start with.
pub fn first_blocks(req: &Request, block_size: u64) -> (u32, u32) {
    use range::Spec;
    if req.method() == Method::Head {
        return (0, 1);
    }
    let bs = block_size;
    let specs = req.range.as_deref().and_then(range::parse);
    match specs.as_deref() {
        Some([Spec::FromTo(a, b)]) => ((a / bs) as u32, (b / bs - a / bs + 1) as u32),
        Some([Spec::From(a)]) => ((a / bs) as u32, u32::MAX),
        Some([Spec::Suffix(_)]) => (0, 1),
        Some(specs) => match specs.iter().find_map(|s| match s {
            Spec::FromTo(a, _) | Spec::From(a) => Some(*a),
            Spec::Suffix(_) => None,
        }) {
            Some(a) => ((a / bs) as u32, 1),
            None => (0, 1),
        },
        None => (0, u32::MAX),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::RawConfig;
    use crate::http::request::{Limits, parse};

    fn cfg() -> Config {
        RawConfig::from_toml(
            r#"
            node_name = "gw1:80"
            summary_unrestricted = true
            [[origin]]
            host = "cdn.example.com"
            "#,
        )
        .unwrap()
        .validate()
        .unwrap()
    }

    fn req(head: &str) -> Request {
        let text = format!("{head}\r\n\r\n");
        parse(text.as_bytes(), &Limits::default())
            .unwrap()
            .unwrap()
            .0
    }

    fn get(extra: &str) -> Request {
        req(&format!(
            "GET /a?cacheHostOrigin=cdn.example.com HTTP/1.1\r\nHost: gw{extra}"
        ))
    }

    fn status(p: &Early) -> Option<u16> {
        match p {
            Early::Refuse(e) => Some(e.status()),
            Early::Summary => None,
        }
    }

    fn meta(cc: Option<&str>, age_secs: u64) -> ObjectMeta {
        ObjectMeta {
            key: "k".into(),
            total_len: 1000,
            status: 200,
            etag: Some("\"v1\"".into()),
            last_modified: None,
            content_type: None,
            cache_control: cc.map(String::from),
            expires: None,
            date: None,
            age: 0,
            stored_at: 1_000_000 - age_secs,
            fields: Vec::new(),
            instance: 0,
        }
    }

    #[test]
    fn admit_answers_what_needs_no_cache() {
        let c = cfg();
        // (request head, what it gets: Err(status) or Ok(routed))
        for (head, want) in [
            ("TRACE /a HTTP/1.1\r\nHost: gw", Some(405)),
            ("BREW /a HTTP/1.1\r\nHost: gw", Some(405)),
            ("GET /summary HTTP/1.1\r\nHost: gw", None),
            (
                "GET /a HTTP/1.1\r\nHost: gw\r\nVia: 1.1 gw1:80 (gatecache)",
                Some(508),
            ),
            ("GET /a HTTP/1.1\r\nHost: gw", Some(403)),
            (
                "GET /a?cacheHostOrigin=evil.test HTTP/1.1\r\nHost: gw",
                Some(403),
            ),
            ("GET /a?cacheHostOrigin=a:b HTTP/1.1\r\nHost: gw", Some(400)),
        ] {
            let got = admit(&req(head), &c).unwrap_err();
            assert_eq!(status(&got), want, "{head:?}: {got:?}");
        }
        assert_eq!(
            admit(&req("GET /summary HTTP/1.1\r\nHost: gw"), &c).unwrap_err(),
            Early::Summary
        );
        let t = admit(&get(""), &c).unwrap();
        assert_eq!(t.key, "cdn.example.com/a");
    }

    /// RFC 9111 §5.2.1.5: nothing of the answer to a no-store request is stored, so what
    /// would fetch or revalidate passes; a fresh stored response may still answer it.
    #[test]
    fn plan_for_a_no_store_request() {
        let c = cfg();
        let now = 1_000_000;
        let fresh = meta(Some("max-age=600"), 10);
        let stale = meta(Some("max-age=60"), 100);
        let no_store = get("\r\nCache-Control: no-store");
        let t = admit(&no_store, &c).unwrap();
        let pass = Plan::Pass(BypassReason::NotStorable);
        assert_eq!(plan(&no_store, &t, false, None, now), pass);
        assert_eq!(plan(&no_store, &t, false, Some(&stale), now), pass);
        assert_eq!(plan(&no_store, &t, false, Some(&fresh), now), Plan::Hit);
    }

    #[test]
    fn plan_one_row_per_branch() {
        let c = cfg();
        let now = 1_000_000;
        let fresh = meta(Some("max-age=600"), 10);
        let stale = meta(Some("max-age=60"), 100);
        let swr = meta(Some("max-age=60, stale-while-revalidate=600"), 100);
        let must = meta(Some("max-age=60, must-revalidate"), 100);
        let post = req("POST /a?cacheHostOrigin=cdn.example.com HTTP/1.1\r\nHost: gw");
        let options = req("OPTIONS /a?cacheHostOrigin=cdn.example.com HTTP/1.1\r\nHost: gw");
        let revalidate = |unreachable, fivexx| Plan::Revalidate {
            stale_if_unreachable: unreachable,
            stale_if_5xx: fivexx,
        };
        let rows: Vec<(&str, Request, bool, Option<&ObjectMeta>, Plan)> = vec![
            (
                "unsafe method",
                post,
                false,
                Some(&fresh),
                Plan::Pass(BypassReason::Method),
            ),
            (
                "OPTIONS",
                options,
                false,
                None,
                Plan::Pass(BypassReason::Method),
            ),
            (
                "credentials",
                get("\r\nAuthorization: Bearer x"),
                false,
                Some(&fresh),
                Plan::Pass(BypassReason::Authorization),
            ),
            (
                "hit-for-pass",
                get(""),
                true,
                None,
                Plan::Pass(BypassReason::HitForPass),
            ),
            ("nothing stored", get(""), false, None, Plan::Miss),
            (
                "nothing stored, only-if-cached",
                get("\r\nCache-Control: only-if-cached"),
                false,
                None,
                refuse(504, "not cached (only-if-cached)"),
            ),
            ("fresh", get(""), false, Some(&fresh), Plan::Hit),
            (
                "stale",
                get(""),
                false,
                Some(&stale),
                revalidate(true, false),
            ),
            (
                "must-revalidate",
                get(""),
                false,
                Some(&must),
                revalidate(false, false),
            ),
            (
                // The client asked for a checked answer (RFC 9111 §5.2.1.4); what is stored is
                // still fresh, so it may stand in if the upstream cannot be reached.
                "client no-cache on fresh",
                get("\r\nCache-Control: no-cache"),
                false,
                Some(&fresh),
                revalidate(true, false),
            ),
            (
                // A stale one will not do for that client.
                "client no-cache on stale",
                get("\r\nCache-Control: no-cache"),
                false,
                Some(&stale),
                revalidate(false, false),
            ),
            (
                "stale-while-revalidate",
                get(""),
                false,
                Some(&swr),
                Plan::StaleThenRevalidate,
            ),
            (
                "stale, only-if-cached",
                get("\r\nCache-Control: only-if-cached"),
                false,
                Some(&stale),
                refuse(504, "stale (only-if-cached)"),
            ),
        ];
        for (what, r, hfp, stored, want) in rows {
            let t = admit(&get(""), &c).unwrap();
            assert_eq!(plan(&r, &t, hfp, stored, now), want, "{what}");
        }
    }

    #[test]
    fn after_revalidation_one_row_per_branch() {
        use AfterRevalidation::*;
        let down = Error::with(Kind::Connect, "refused");
        let bad_gateway = Error::new(Kind::Status {
            status: 503,
            body: Vec::new(),
        });
        let storage = Error::with(Kind::Storage, "no slot");
        let gone = Error::new(Kind::Status {
            status: 404,
            body: Vec::new(),
        });
        // (answer, stale_if_unreachable, stale_if_5xx, next)
        let rows: Vec<(Result<Revalidated, &Error>, bool, bool, AfterRevalidation)> = vec![
            (
                Ok(Revalidated::Version(7)),
                true,
                true,
                Serve(CacheStatus::Revalidated),
            ),
            (
                Ok(Revalidated::Version(8)),
                true,
                true,
                Serve(CacheStatus::Refreshed),
            ),
            (Ok(Revalidated::NotStorable), true, true, DropAndPass),
            (Err(&down), true, false, ServeStale),
            (Err(&down), false, false, Fail(down.clone())),
            (Err(&bad_gateway), false, true, ServeStale),
            (Err(&bad_gateway), true, false, Fail(bad_gateway.clone())),
            (Err(&storage), true, true, Fail(storage.clone())),
            (Err(&gone), true, true, Fail(gone.clone())),
        ];
        for (answer, unreachable, fivexx, want) in rows {
            let got = after_revalidation(7, answer, unreachable, fivexx);
            assert_eq!(got, want, "{answer:?} {unreachable} {fivexx}");
        }
    }

    #[test]
    fn shapes() {
        let m = meta(None, 0);
        for (extra, want) in [
            (
                "",
                Shape::Single {
                    range: 0..1000,
                    partial: false,
                },
            ),
            (
                "\r\nRange: bytes=10-19",
                Shape::Single {
                    range: 10..20,
                    partial: true,
                },
            ),
            (
                "\r\nRange: bytes=-100",
                Shape::Single {
                    range: 900..1000,
                    partial: true,
                },
            ),
            (
                "\r\nRange: bytes=0-0,10-19",
                Shape::Multipart(vec![0..1, 10..20]),
            ),
            ("\r\nRange: bytes=5000-", Shape::Unsatisfiable),
            (
                "\r\nRange: items=0-1",
                Shape::Single {
                    range: 0..1000,
                    partial: false,
                },
            ),
            ("\r\nIf-None-Match: \"v1\"", Shape::NotModified),
            (
                "\r\nIf-None-Match: W/\"v1\"\r\nRange: bytes=0-1",
                Shape::NotModified,
            ),
            (
                "\r\nRange: bytes=0-1\r\nIf-Range: \"v0\"",
                Shape::Single {
                    range: 0..1000,
                    partial: false,
                },
            ),
            (
                "\r\nRange: bytes=0-1\r\nIf-Range: \"v1\"",
                Shape::Single {
                    range: 0..2,
                    partial: true,
                },
            ),
        ] {
            assert_eq!(shape(&get(extra), &m), want, "{extra:?}");
        }
    }

    /// Built-in defaults yield to explicit directives (issue 12, point 9): a package file is
    /// immutable by default, but its origin's `no-cache` (RFC 9111 §5.2.2.4), `max-age`
    /// (§5.2.2.1), `s-maxage` (§5.2.2.10), `Expires` (§5.3) and `must-revalidate` (§5.2.2.2)
    /// each make it revalidate once stale, and a client's `no-cache` (§5.2.1.4) or
    /// `Pragma: no-cache` (§5.4) revalidates it while fresh; only an operator's `[[rule]]`
    /// overrides the origin.
    #[test]
    fn plan_for_a_default_immutable_package_follows_explicit_directives() {
        let c = cfg();
        let now = 1_000_000;
        let deb = |extra: &str| {
            req(&format!(
                "GET /pool/main/h/hello/hello_1.0_all.deb?cacheHostOrigin=cdn.example.com \
                 HTTP/1.1\r\nHost: gw{extra}"
            ))
        };
        let t = admit(&deb(""), &c).unwrap();
        assert!(t.rule.immutable && !t.rule.overrides_origin, "{:?}", t.rule);
        let expired = ObjectMeta {
            expires: Some(httpdate::fmt_http_date(
                std::time::UNIX_EPOCH + std::time::Duration::from_secs(now - 10),
            )),
            ..meta(None, 100)
        };
        let revalidate = |unreachable| Plan::Revalidate {
            stale_if_unreachable: unreachable,
            stale_if_5xx: false,
        };
        // (what, stored response, client's extra header, plan)
        let rows: Vec<(&str, ObjectMeta, &str, Plan)> = vec![
            ("silent origin: immutable", meta(None, 1_000), "", Plan::Hit),
            ("no-cache", meta(Some("no-cache"), 1), "", revalidate(false)),
            (
                "max-age=1, 2 s",
                meta(Some("max-age=1"), 2),
                "",
                revalidate(true),
            ),
            (
                "max-age=60, 2 s",
                meta(Some("max-age=60"), 2),
                "",
                Plan::Hit,
            ),
            (
                "s-maxage=1, 2 s",
                meta(Some("s-maxage=1"), 2),
                "",
                revalidate(false),
            ),
            ("Expires past", expired, "", revalidate(true)),
            (
                "must-revalidate",
                meta(Some("must-revalidate"), 2),
                "",
                revalidate(false),
            ),
            (
                "client no-cache",
                meta(None, 1_000),
                "\r\nCache-Control: no-cache",
                revalidate(true),
            ),
            (
                "client Pragma: no-cache",
                meta(None, 1_000),
                "\r\nPragma: no-cache",
                revalidate(true),
            ),
            (
                "client max-age=0: a plain reload of immutable content",
                meta(None, 1_000),
                "\r\nCache-Control: max-age=0",
                Plan::Hit,
            ),
        ];
        for (what, stored, extra, want) in &rows {
            let r = deb(extra);
            assert_eq!(plan(&r, &t, false, Some(stored), now), *want, "{what}");
        }
        // An operator's [[rule]] overrides the origin and the client.
        let ruled = RawConfig::from_toml(
            "[[origin]]\nhost = \"cdn.example.com\"\n\
             [[rule]]\npath = \"/pool/*\"\nimmutable = true",
        )
        .unwrap()
        .validate()
        .unwrap();
        let t = admit(&deb(""), &ruled).unwrap();
        for (what, stored, extra, _) in &rows {
            let r = deb(extra);
            let got = plan(&r, &t, false, Some(stored), now);
            assert_eq!(got, Plan::Hit, "[[rule]]: {what}");
        }
    }

    /// Delivery Optimization content (issue 12, point 10): on the built-in Microsoft origins
    /// the key leaves the per-device query out, and the upstream request keeps it.
    #[test]
    fn delivery_optimization_keys_leave_the_query_out() {
        let builtin = RawConfig::from_toml("").unwrap().validate().unwrap();
        let c = cfg();
        let get = |c: &Config, q: &str, host: &str| {
            let head = format!(
                "GET /filestreamingservice/files/0a1b?{q}&cacheHostOrigin={host} HTTP/1.1\r\n\
                 Host: gw"
            );
            admit(&req(&head), c).unwrap()
        };
        let host = "2.tlu.dl.delivery.mp.microsoft.com";
        let a = get(&builtin, "P1=a&P2=b&P3=c&P4=d", host);
        let b = get(&builtin, "P1=e&P2=f&P3=g&P4=h", host);
        assert_eq!(a.key, b.key);
        assert_eq!(a.key, format!("{host}/filestreamingservice/files/0a1b"));
        assert_eq!(
            a.path,
            "/filestreamingservice/files/0a1b?P1=a&P2=b&P3=c&P4=d"
        );
        assert_eq!(
            b.path,
            "/filestreamingservice/files/0a1b?P1=e&P2=f&P3=g&P4=h"
        );
        let wu = get(&builtin, "P1=a", "au.download.windowsupdate.com");
        assert_eq!(
            wu.key,
            "au.download.windowsupdate.com/filestreamingservice/files/0a1b"
        );
        // Another origin keeps the query in its key.
        let other = get(&c, "P1=a", "cdn.example.com");
        assert_eq!(
            other.key,
            "cdn.example.com/filestreamingservice/files/0a1b?P1=a"
        );
    }

    #[test]
    fn first_blocks_follow_the_first_range() {
        let bs = 1 << 20;
        assert_eq!(first_blocks(&get(""), bs), (0, u32::MAX));
        assert_eq!(
            first_blocks(&get("\r\nRange: bytes=3145728-"), bs),
            (3, u32::MAX)
        );
        assert_eq!(
            first_blocks(&get("\r\nRange: bytes=1048576-3145727"), bs),
            (1, 2)
        );
        assert_eq!(first_blocks(&get("\r\nRange: bytes=-10"), bs), (0, 1));
        assert_eq!(
            first_blocks(&get("\r\nRange: bytes=-5,2097152-"), bs),
            (2, 1)
        );
        let head = req("HEAD /a?cacheHostOrigin=cdn.example.com HTTP/1.1\r\nHost: gw");
        assert_eq!(first_blocks(&head, bs), (0, 1));
    }
}
