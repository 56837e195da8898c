//! Routing: which origin a request is for, what to ask it, and the cache key. Only configured
//! origins are ever fetched (never an open proxy).

use crate::config::{Config, Origin, strip_port};
use crate::http::request::Request;

/// Where a request goes upstream and under which key it is cached.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    pub https: bool,
    /// `Host` for the upstream request: name, plus `:port` when not the default.
    pub host: String,
    /// Path and query to ask the upstream for (`cacheHostOrigin` removed).
    pub path: String,
    /// Cache key: canonical origin + path [+ query].
    pub key: String,
    /// The `Via` entries the client's request carried, passed on upstream (loop detection).
    pub via: Option<String>,
    /// The operator's freshness override for this content.
    pub rule: crate::http::freshness::Rule,
    /// The client's `Cache-Control` (or `no-cache` for `Pragma: no-cache`), passed on
    /// upstream so that a reload reaches through a chain of caches to the origin.
    pub client_cc: Option<String>,
    /// The configured origin this request matched (its `canonical` name, else its host
    /// pattern): the metrics' origin label, bounded by the configuration whatever clients send.
    pub origin_label: String,
}

impl Target {
    pub fn url(&self) -> String {
        let scheme = if self.https { "https" } else { "http" };
        format!("{scheme}://{}{}", self.host, self.path)
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// 403: the origin is not in the allow-list.
    NotAllowed(String),
    /// 400: the target cannot be understood.
    BadTarget(&'static str),
}

/// The query parameter Delivery Optimization clients append to name the origin host.
pub const ORIGIN_PARAM: &str = "cacheHostOrigin";

/// Splits a query into the `cacheHostOrigin` value and the rest (order kept).
fn take_origin_param(query: &str) -> (Option<&str>, String) {
    let mut origin = None;
    let mut rest = Vec::new();
    for part in query.split('&') {
        match part.split_once('=') {
            Some((k, v)) if k == ORIGIN_PARAM => origin = Some(v),
            _ if part.is_empty() => {}
            _ => rest.push(part),
        }
    }
    (origin, rest.join("&"))
}

fn find<'a>(cfg: &'a Config, host: &str) -> Option<&'a Origin> {
    let name = strip_port(host);
    cfg.origins.iter().find(|o| o.matches(name))
}

fn valid_host(h: &str) -> bool {
    !h.is_empty()
        && h.len() <= 255
        && h.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_' | b':'))
}

fn key_for(o: Option<&Origin>, host: &str, path: &str, query: &str) -> String {
    let ns = o
        .and_then(|o| o.canonical.clone())
        .unwrap_or_else(|| host.to_string());
    let keep_query = o.is_none_or(|o| o.key_query);
    if keep_query && !query.is_empty() {
        format!("{ns}{path}?{query}")
    } else {
        format!("{ns}{path}")
    }
}

fn with_query(path: &str, query: &str) -> String {
    if query.is_empty() {
        path.to_string()
    } else {
        format!("{path}?{query}")
    }
}

fn for_origin(o: &Origin, host: &str, path: &str, query: &str) -> Target {
    Target {
        https: o.https,
        host: host.to_string(),
        path: with_query(path, query),
        key: key_for(Some(o), host, path, query),
        via: None,
        rule: Default::default(),
        client_cc: None,
        origin_label: o.canonical.clone().unwrap_or_else(|| o.host.clone()),
    }
}

/// Routes a request: `cacheHostOrigin=`, then absolute-form, then `Host`, then path prefixes.
pub fn route(req: &Request, cfg: &Config) -> Result<Target, Refusal> {
    let (mut t, origin) = route_target(req, cfg)?;
    t.via = req.via.clone();
    t.client_cc = match (&req.cache_control, req.pragma_no_cache) {
        (Some(cc), _) => Some(cc.clone()),
        (None, true) => Some("no-cache".into()),
        (None, false) => None,
    };
    let path = t.path.split('?').next().unwrap_or("");
    t.rule = cfg.fresh_rule(&t.host, path, origin);
    Ok(t)
}

/// The target, and the configured origin it matched (if any: a route's host may be none).
fn route_target<'c>(
    req: &Request,
    cfg: &'c Config,
) -> Result<(Target, Option<&'c Origin>), Refusal> {
    let t = req.target.as_str();
    let (authority, path_query) = if let Some(rest) = t.strip_prefix("http://") {
        let i = rest.find('/').unwrap_or(rest.len());
        (
            Some(&rest[..i]),
            if i < rest.len() { &rest[i..] } else { "/" },
        )
    } else if t.starts_with("https://") {
        return Err(Refusal::BadTarget(
            "https targets are not proxied; use http",
        ));
    } else if t.starts_with('/') {
        (None, t)
    } else {
        return Err(Refusal::BadTarget(
            "request target must be a path or an http:// URL",
        ));
    };
    let (path, query) = path_query.split_once('?').unwrap_or((path_query, ""));
    let (param, query) = take_origin_param(query);

    // A host named by the request itself: DO's parameter first, then an absolute-form target.
    let named = param
        .map(|h| (h, "malformed cacheHostOrigin"))
        .or(authority.map(|h| (h, "malformed host in request target")));
    if let Some((host, malformed)) = named {
        let host = host.to_ascii_lowercase();
        if !valid_host(&host) {
            return Err(Refusal::BadTarget(malformed));
        }
        if let Some(o) = find(cfg, &host) {
            return Ok((for_origin(o, &host, path, &query), Some(o)));
        }
        // A route's origin may be named too: that is how a child cache asks its parent for
        // content it routes by prefix.
        return match cfg.routes.iter().find(|r| r.host == host) {
            Some(r) => Ok((
                Target {
                    https: r.https,
                    host: host.clone(),
                    path: with_query(path, &query),
                    key: key_for(None, &host, path, &query),
                    via: None,
                    rule: Default::default(),
                    client_cc: None,
                    origin_label: r.host.clone(),
                },
                None,
            )),
            None => Err(Refusal::NotAllowed(host)),
        };
    }
    let host_header = req.host.as_deref().map(str::to_ascii_lowercase);
    if let Some(h) = &host_header
        && let Some(o) = find(cfg, h)
    {
        // The Host names the origin itself (DNS pointed at us): the port is ours, not its.
        let name = strip_port(h);
        return Ok((for_origin(o, name, path, &query), Some(o)));
    }
    if let Some(r) = cfg.routes.iter().find(|r| path.starts_with(&r.prefix)) {
        let up_path = format!("{}{}", r.path, &path[r.prefix.len()..]);
        let up_path = up_path.replacen("//", "/", 1);
        let o = find(cfg, &r.host);
        let t = Target {
            https: r.https,
            host: r.host.clone(),
            path: with_query(&up_path, &query),
            key: key_for(o, &r.host, &up_path, &query),
            via: None,
            rule: Default::default(),
            client_cc: None,
            origin_label: o.map_or_else(
                || r.host.clone(),
                |o| o.canonical.clone().unwrap_or_else(|| o.host.clone()),
            ),
        };
        return Ok((t, o));
    }
    Err(Refusal::NotAllowed(host_header.map_or_else(
        || "(none)".to_string(),
        |h| strip_port(&h).to_string(),
    )))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::RawConfig;

    fn cfg() -> Config {
        RawConfig::from_toml(
            r#"
            [[origin]]
            host = "*.download.windowsupdate.com"
            [[origin]]
            host = "us.archive.example.org"
            canonical = "archive"
            [[origin]]
            host = "eu.archive.example.org"
            canonical = "archive"
            connect = "127.0.0.1:9000"
            [[origin]]
            host = "cdn.example.com"
            key_query = false
            [[route]]
            prefix = "/debian/"
            origin = "http://mirror.example.org/debian/"
            "#,
        )
        .unwrap()
        .validate()
        .unwrap()
    }

    fn req(target: &str, host: &str) -> Request {
        Request {
            target: target.into(),
            host: Some(host.into()),
            ..Default::default()
        }
    }

    #[test]
    fn do_cache_host_origin_is_used_and_removed() {
        let t = route(
            &req(
                "/mscomtest/wuidt.gif?cacheHostOrigin=au.download.windowsupdate.com",
                "gw",
            ),
            &cfg(),
        )
        .unwrap();
        assert_eq!(t.host, "au.download.windowsupdate.com");
        assert_eq!(t.path, "/mscomtest/wuidt.gif");
        assert_eq!(t.key, "au.download.windowsupdate.com/mscomtest/wuidt.gif");
        assert_eq!(
            t.url(),
            "http://au.download.windowsupdate.com/mscomtest/wuidt.gif"
        );
    }

    #[test]
    fn original_query_is_kept_around_the_param() {
        let t = route(
            &req("/f?a=1&cacheHostOrigin=us.archive.example.org&b=2", "gw"),
            &cfg(),
        )
        .unwrap();
        assert_eq!(t.path, "/f?a=1&b=2");
        assert_eq!(t.key, "archive/f?a=1&b=2");
    }

    #[test]
    fn canonical_merges_mirrors() {
        let c = cfg();
        let us = route(&req("/p?cacheHostOrigin=us.archive.example.org", "gw"), &c).unwrap();
        let eu = route(&req("/p?cacheHostOrigin=eu.archive.example.org", "gw"), &c).unwrap();
        assert_eq!(us.key, eu.key);
        assert_eq!(eu.host, "eu.archive.example.org");
    }

    #[test]
    fn absolute_form_for_apt_proxies() {
        let t = route(
            &req(
                "http://eu.archive.example.org/debian/pool/a.deb",
                "eu.archive.example.org",
            ),
            &cfg(),
        )
        .unwrap();
        assert_eq!(t.path, "/debian/pool/a.deb");
        assert_eq!(t.key, "archive/debian/pool/a.deb");
        let e = route(&req("http://evil.test/x", "evil.test"), &cfg()).unwrap_err();
        assert_eq!(e, Refusal::NotAllowed("evil.test".into()));
    }

    #[test]
    fn host_header_then_prefix_routes() {
        let c = cfg();
        let t = route(&req("/a/b", "cdn.example.com:8080"), &c).unwrap();
        assert_eq!(
            (t.host.as_str(), t.path.as_str()),
            ("cdn.example.com", "/a/b")
        );
        let t = route(&req("/a/b?x=1", "cdn.example.com"), &c).unwrap();
        assert_eq!(
            t.key, "cdn.example.com/a/b",
            "key_query = false drops the query"
        );
        let t = route(&req("/debian/dists/stable/InRelease", "gw.example.org"), &c).unwrap();
        assert_eq!(t.host, "mirror.example.org");
        assert_eq!(t.path, "/debian/dists/stable/InRelease");
        assert_eq!(t.key, "mirror.example.org/debian/dists/stable/InRelease");
    }

    #[test]
    fn a_child_asks_for_routed_content_by_name() {
        // What a child cache sends its parent for a prefix route: the same key both sides.
        let c = cfg();
        let child = route(&req("/debian/pool/a.deb", "gw.example.org"), &c).unwrap();
        let mut parent_req = req(
            "/debian/pool/a.deb?cacheHostOrigin=mirror.example.org",
            "parent.example.org",
        );
        parent_req.via = Some("1.1 child:80 (gatecache)".into());
        let parent = route(&parent_req, &c).unwrap();
        assert_eq!(parent.key, child.key);
        assert_eq!(parent.url(), "http://mirror.example.org/debian/pool/a.deb");
        assert_eq!(parent.via.as_deref(), Some("1.1 child:80 (gatecache)"));
    }

    #[test]
    fn refusals() {
        let c = cfg();
        assert_eq!(
            route(&req("/x?cacheHostOrigin=evil.test", "gw"), &c),
            Err(Refusal::NotAllowed("evil.test".into()))
        );
        assert_eq!(
            route(&req("/x", "gw.example.org:80"), &c),
            Err(Refusal::NotAllowed("gw.example.org".into()))
        );
        assert!(matches!(
            route(&req("*", "gw"), &c),
            Err(Refusal::BadTarget(_))
        ));
        assert!(matches!(
            route(&req("/x?cacheHostOrigin=a/b", "gw"), &c),
            Err(Refusal::BadTarget(_))
        ));
        // A wildcard never matches a look-alike.
        assert!(
            route(
                &req(
                    "/x?cacheHostOrigin=download.windowsupdate.com.evil.test",
                    "gw"
                ),
                &c
            )
            .is_err()
        );
    }
}
