//! Conditional requests (RFC 9110 §13): `If-None-Match`, `If-Modified-Since`, `If-Range`.

use super::request::Request;

fn tags(list: &str) -> impl Iterator<Item = &str> {
    list.split(',').map(str::trim).filter(|t| !t.is_empty())
}

fn opaque(tag: &str) -> &str {
    tag.strip_prefix("W/").unwrap_or(tag)
}

/// Weak comparison (used by `If-None-Match`).
fn weak_match(list: &str, etag: &str) -> bool {
    tags(list).any(|t| t == "*" || opaque(t) == opaque(etag))
}

/// True if a GET/HEAD should be answered 304 Not Modified (RFC 9110 §13.1.2, §13.1.3): an
/// `If-None-Match` tag (or `*`) that weakly matches `etag`, else an `If-Modified-Since` no
/// earlier than `last_modified`. With `If-None-Match` present, `If-Modified-Since` is ignored
/// (§13.2.2); an unparsable date never matches.
pub fn not_modified(req: &Request, etag: Option<&str>, last_modified: Option<&str>) -> bool {
    if let Some(inm) = &req.if_none_match {
        // When If-None-Match is present, If-Modified-Since is ignored.
        return etag.is_some_and(|e| weak_match(inm, e));
    }
    match (&req.if_modified_since, last_modified) {
        (Some(ims), Some(lm)) => match (
            httpdate::parse_http_date(ims),
            httpdate::parse_http_date(lm),
        ) {
            (Ok(ims), Ok(lm)) => lm <= ims,
            _ => false,
        },
        _ => false,
    }
}

/// True if the `Range` may be honoured (RFC 9110 §13.1.5): no `If-Range`, or it names the
/// current representation by a strong ETag or its exact `Last-Modified` date.
pub fn if_range_allows(req: &Request, etag: Option<&str>, last_modified: Option<&str>) -> bool {
    let Some(v) = req.if_range.as_deref().map(str::trim) else {
        return true;
    };
    if v.starts_with('"') || v.starts_with("W/") {
        return !v.starts_with("W/") && etag.is_some_and(|e| !e.starts_with("W/") && e == v);
    }
    match (
        httpdate::parse_http_date(v),
        last_modified.map(httpdate::parse_http_date),
    ) {
        (Ok(a), Some(Ok(b))) => a == b,
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LM: &str = "Wed, 21 Oct 2015 07:28:00 GMT";

    fn req(f: impl FnOnce(&mut Request)) -> Request {
        let mut r = Request::default();
        f(&mut r);
        r
    }

    #[test]
    fn if_none_match_uses_weak_comparison_and_star() {
        let r = req(|r| r.if_none_match = Some("\"x\", W/\"abc\"".into()));
        assert!(not_modified(&r, Some("\"abc\""), None));
        assert!(!not_modified(&r, Some("\"abd\""), None));
        assert!(!not_modified(&r, None, Some(LM)));
        let star = req(|r| r.if_none_match = Some("*".into()));
        assert!(not_modified(&star, Some("\"q\""), None));
    }

    #[test]
    fn if_modified_since_compares_dates_and_yields_to_inm() {
        let r = req(|r| r.if_modified_since = Some(LM.into()));
        assert!(not_modified(&r, None, Some(LM)));
        assert!(!not_modified(
            &r,
            None,
            Some("Thu, 22 Oct 2015 07:28:00 GMT")
        ));
        assert!(!not_modified(&r, None, None));
        let both = req(|r| {
            r.if_modified_since = Some(LM.into());
            r.if_none_match = Some("\"other\"".into());
        });
        assert!(!not_modified(&both, Some("\"abc\""), Some(LM)));
        let garbage = req(|r| r.if_modified_since = Some("yesterday".into()));
        assert!(!not_modified(&garbage, None, Some(LM)));
    }

    #[test]
    fn if_range_needs_a_strong_match() {
        assert!(if_range_allows(&Request::default(), None, None));
        let r = req(|r| r.if_range = Some("\"abc\"".into()));
        assert!(if_range_allows(&r, Some("\"abc\""), None));
        assert!(!if_range_allows(&r, Some("\"abd\""), None));
        assert!(!if_range_allows(&r, Some("W/\"abc\""), None));
        let weak = req(|r| r.if_range = Some("W/\"abc\"".into()));
        assert!(!if_range_allows(&weak, Some("W/\"abc\""), None));
        let date = req(|r| r.if_range = Some(LM.into()));
        assert!(if_range_allows(&date, None, Some(LM)));
        assert!(!if_range_allows(
            &date,
            None,
            Some("Thu, 22 Oct 2015 07:28:00 GMT")
        ));
        assert!(!if_range_allows(&date, None, None));
    }
}
