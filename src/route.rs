//! Routing: which origin a request is for, what to ask it, and the cache key. Only configured
//! origins are ever fetched, at allowed ports (never an open proxy).
//!
//! Every source of an origin name (`cacheHostOrigin`, an absolute-form target, `Host`, a route)
//! is parsed once into an [`Authority`]; matching and the upstream URL both use that value, and
//! the URL is assembled from parts by the `http` crate ([`Target::uri_for`]), never by joining
//! text a client sent.

use std::borrow::Cow;
use std::sync::Arc;

use ureq::http::Uri;
use ureq::http::uri::{Authority as UriAuthority, PathAndQuery, Scheme};

use crate::config::{Config, Origin, Route};
use crate::http::authority::{Authority, AuthorityError, Host, default_port};
use crate::http::path::{self, PathError};
use crate::http::request::Request;

/// Where a request goes upstream and under which key it is cached.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// Fetched over TLS (port 443 by default).
    pub https: bool,
    /// The upstream's host and port (the port always spelled out).
    pub authority: Authority,
    /// `Host` for the upstream request: the authority, its port only when not the scheme's
    /// default (RFC 9110 §7.2).
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
    /// The client's end-to-end fields to forward upstream ([`Request::fields`], shared, not
    /// copied); a collapsed fill carries the first client's.
    pub fields: Arc<[(String, String)]>,
    /// The configured origin this request matched (its `canonical` name, else its host
    /// pattern): the metrics' origin label, bounded by the configuration whatever clients send.
    pub origin_label: String,
}

/// A URL could not be assembled from a target's parts (cannot happen for a routed target:
/// every part was validated; kept as an error rather than a panic).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("cannot build the upstream URL: {0}")]
pub struct UrlError(String);

fn build_uri(https: bool, authority: &str, path_query: &str) -> Result<Uri, UrlError> {
    let e = |e: &dyn std::fmt::Display| UrlError(e.to_string());
    let authority = UriAuthority::try_from(authority).map_err(|x| e(&x))?;
    let pq = PathAndQuery::try_from(path_query).map_err(|x| e(&x))?;
    Uri::builder()
        .scheme(if https { Scheme::HTTPS } else { Scheme::HTTP })
        .authority(authority)
        .path_and_query(pq)
        .build()
        .map_err(|x| e(&x))
}

impl Target {
    /// The origin's URL for this target (for logs; upstream requests use [`Target::uri_for`]).
    pub fn url(&self) -> String {
        let scheme = if self.https { "https" } else { "http" };
        format!("{scheme}://{}{}", self.host, self.path)
    }

    /// The URL to ask for this target: the origin itself (`parent` = `None`), or a parent cache
    /// (`host:port` from the configuration) in the form a Delivery Optimization client uses,
    /// `http://<parent><path>?<query>&cacheHostOrigin=<origin>`, so a parent may be gatecache
    /// or the original.
    ///
    /// # Errors
    ///
    /// A part the `http` crate refuses ([`UrlError`]); [`route`] has already built the origin's
    /// URL once, so only a malformed `parent` can fail.
    pub fn uri_for(&self, parent: Option<&str>) -> Result<Uri, UrlError> {
        match parent {
            None => build_uri(self.https, &self.host, &self.path),
            Some(p) => {
                let sep = if self.path.contains('?') { '&' } else { '?' };
                let pq = format!("{}{sep}{ORIGIN_PARAM}={}", self.path, self.host);
                build_uri(false, p, &pq)
            }
        }
    }
}

/// Why a request is not routed; each maps to one status code.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// 403: the origin is not in the allow-list.
    NotAllowed(String),
    /// 403: the origin is allowed, but not at the port the request names.
    PortNotAllowed(String),
    /// 400: the target or a host field cannot be understood; the reason names the field.
    BadTarget(String),
}

impl Refusal {
    /// The status code of the answer: 403 or 400.
    pub fn status(&self) -> u16 {
        match self {
            Refusal::NotAllowed(_) | Refusal::PortNotAllowed(_) => 403,
            Refusal::BadTarget(_) => 400,
        }
    }

    /// The one-line body of the answer, naming the origin, the port or the bad field.
    pub fn message(&self) -> String {
        match self {
            Refusal::NotAllowed(h) => format!("origin not allowed: {h}"),
            Refusal::PortNotAllowed(a) => format!("port not allowed: {a}"),
            Refusal::BadTarget(why) => why.clone(),
        }
    }
}

impl From<Refusal> for crate::error::Error {
    /// A refusal is the client's side: a 4xx with its reason.
    fn from(r: Refusal) -> crate::error::Error {
        crate::error::Error::new(crate::error::Kind::Refused {
            status: r.status(),
            reason: r.message(),
        })
    }
}

/// The query parameter Delivery Optimization clients append to name the origin host.
pub const ORIGIN_PARAM: &str = "cacheHostOrigin";

/// Where an origin name came from: the field a 400 names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Source {
    Param,
    Absolute,
    HostField,
}

impl Source {
    fn field(self) -> &'static str {
        match self {
            Source::Param => "cacheHostOrigin",
            Source::Absolute => "host in request target",
            Source::HostField => "Host",
        }
    }

    fn parse(self, text: &str) -> Result<Authority, Refusal> {
        let bad =
            |e: AuthorityError| Refusal::BadTarget(format!("malformed {}: {e}", self.field()));
        Authority::parse(text).map_err(bad)
    }
}

fn bad_path(e: PathError) -> Refusal {
    Refusal::BadTarget(e.to_string())
}

/// Splits a query into the `cacheHostOrigin` value and the rest (order kept). The parameter
/// twice is refused: two hosts are one too many.
fn take_origin_param(query: &str) -> Result<(Option<&str>, String), Refusal> {
    let mut origin = None;
    let mut rest = Vec::new();
    for part in query.split('&') {
        match part.split_once('=') {
            Some((k, v)) if k == ORIGIN_PARAM => {
                if origin.replace(v).is_some() {
                    return Err(Refusal::BadTarget(format!("repeated {ORIGIN_PARAM}")));
                }
            }
            _ if part.is_empty() => {}
            _ => rest.push(part),
        }
    }
    Ok((origin, rest.join("&")))
}

fn find<'a>(cfg: &'a Config, host: &Host) -> Option<&'a Origin> {
    cfg.origins.iter().find(|o| o.matches(host))
}

/// The path and query to ask upstream: the pieces of `path` joined as they are, then
/// `?query` when there is a query; and the length of its path part. One allocation of the
/// right size (this and the key are built for every request).
fn path_query(path: &[&str], query: &str) -> (String, usize) {
    let path_len = path.iter().map(|p| p.len()).sum();
    let mut out = String::with_capacity(path_len + 1 + query.len());
    for p in path {
        out.push_str(p);
    }
    if !query.is_empty() {
        out.push('?');
        out.push_str(query);
    }
    (out, path_len)
}

/// The cache key: the namespace `ns`, then the path asked upstream, with its query unless
/// the origin says not to (`key_query = false`). `path_len` is the length of the path part
/// of `path_query` (from [`path_query`]).
fn key_for(o: Option<&Origin>, ns: &str, path_query: &str, path_len: usize) -> String {
    let keep_query = o.is_none_or(|o| o.key_query);
    let asked = if keep_query {
        path_query
    } else {
        &path_query[..path_len]
    };
    let mut key = String::with_capacity(ns.len() + asked.len());
    key.push_str(ns);
    key.push_str(asked);
    key
}

/// The key namespace of origin `o`'s `host` at `port`: its canonical name, else the host;
/// another port than the origin's own is another resource, so it is part of the name.
/// Borrowed when it is a name as it stands (the common case).
fn origin_ns<'a>(o: &'a Origin, host: &'a Host, port: u16) -> Cow<'a, str> {
    let ns = match (&o.canonical, host) {
        (Some(c), _) => Cow::Borrowed(c.as_str()),
        (None, Host::Name(n)) => Cow::Borrowed(n.as_str()),
        (None, ip) => Cow::Owned(ip.to_string()),
    };
    if port == o.port {
        ns
    } else {
        Cow::Owned(format!("{ns}:{port}"))
    }
}

/// The metrics' origin label of a request for origin `o` (or for a route's origin that is
/// not a configured origin: its `host`).
fn origin_label(o: Option<&Origin>, host: &str) -> String {
    match o {
        Some(o) => o.canonical.as_ref().unwrap_or(&o.host).clone(),
        None => host.to_string(),
    }
}

/// A target for origin `o`, host `host`, fetched at `port` (already allowed). The path is
/// normalised (RFC 3986 §6.2.2, §5.2.4; the equivalence RFC 9110 §4.2.3 allows), and that is
/// both what is asked upstream and the key: `/a/./b` and `/a/%62` are the object `/a/b` is,
/// whichever way a client (apt's flat repositories write `./`) names it. Asking for the raw
/// path would let an origin that merges `//` read `/a//../b` as `/b` while the answer was
/// stored as `/a/b`.
fn for_origin(
    o: &Origin,
    host: &Host,
    port: u16,
    path: &str,
    query: &str,
) -> Result<Target, Refusal> {
    let norm = path::normalize(path).map_err(bad_path)?;
    let authority = Authority {
        host: host.clone(),
        port: Some(port),
    };
    let host_field = authority.for_scheme(default_port(o.https));
    let (path, path_len) = path_query(&[&norm], query);
    Ok(Target {
        https: o.https,
        key: key_for(Some(o), &origin_ns(o, host, port), &path, path_len),
        authority,
        host: host_field,
        path,
        via: None,
        rule: Default::default(),
        client_cc: None,
        fields: Default::default(),
        origin_label: origin_label(Some(o), &o.host),
    })
}

/// A target for route `r`'s origin, at the path `up_path` (its pieces joined as they are;
/// already inside the route).
fn for_route<'c>(
    cfg: &'c Config,
    r: &Route,
    up_path: &[&str],
    query: &str,
) -> (Target, Option<&'c Origin>) {
    let o = find(cfg, &r.authority.host);
    let port = r.authority.port_or(default_port(r.https));
    let ns = match o {
        Some(o) => origin_ns(o, &r.authority.host, port),
        None => Cow::Borrowed(r.host.as_str()),
    };
    let (path, path_len) = path_query(up_path, query);
    let t = Target {
        https: r.https,
        authority: r.authority.clone(),
        host: r.host.clone(),
        key: key_for(o, &ns, &path, path_len),
        path,
        via: None,
        rule: Default::default(),
        client_cc: None,
        fields: Default::default(),
        origin_label: origin_label(o, &r.host),
    };
    (t, o)
}

/// Normalises `path` for a prefix match (RFC 3986 §6.2.2, §5.2.4): `Ok(None)` if the path is
/// under none of `prefixes`. A path whose raw form is under a prefix but whose normalised form
/// is not (it climbs out with dot-segments) is a 400, as is an encoded separator.
fn under_prefix<'a, 'p>(
    path: &'a str,
    prefixes: impl Iterator<Item = &'p str> + Clone,
) -> Result<Option<(&'p str, Cow<'a, str>)>, Refusal> {
    let norm = path::normalize(path).map_err(bad_path)?;
    let hit = prefixes.clone().find(|p| norm.starts_with(p));
    // Unchanged by normalising (the common case): nothing can have climbed out.
    let climbed = *norm != *path && {
        let decoded = path::decode_unreserved(path).map_err(bad_path)?;
        prefixes
            .clone()
            .any(|p| decoded.starts_with(p) && !norm.starts_with(p))
    };
    if climbed {
        return Err(Refusal::BadTarget(
            "path climbs above its route prefix ('..')".into(),
        ));
    }
    match hit {
        Some(p) => {
            path::check_routed(&norm).map_err(bad_path)?;
            Ok(Some((p, norm)))
        }
        None => Ok(None),
    }
}

/// Routes a request: `cacheHostOrigin=`, then absolute-form (RFC 9112 §3.2.2), then `Host`
/// (RFC 9110 §7.2), then path prefixes.
///
/// # Errors
///
/// A [`Refusal`]: 403 for an origin or a port not configured, 400 for a target, host field or
/// path that cannot be parsed or normalised, or climbs out of its route.
pub fn route(req: &Request, cfg: &Config) -> Result<Target, Refusal> {
    let (mut t, origin) = route_target(req, cfg)?;
    t.via = req.via.clone();
    t.client_cc = match (&req.cache_control, req.pragma_no_cache) {
        (Some(cc), _) => Some(cc.clone()),
        (None, true) => Some("no-cache".into()),
        (None, false) => None,
    };
    t.fields = req.fields.clone();
    let path = t.path.split('?').next().unwrap_or("");
    t.rule = cfg.fresh_rule(&t.authority.host, path, origin);
    // Refuse here anything the upstream URL could not be made of.
    check_sendable(&t)?;
    Ok(t)
}

/// Refuses a target whose origin URL the `http` crate would not build ([`Target::uri_for`]),
/// without building it when its parts are plainly buildable ([`plain_authority`],
/// [`plain_path_and_query`]): building the URL for every request, hits included, only to drop
/// it cost as much as the rest of routing but the key. A target with other parts (an IPv6
/// literal, a byte `http` may refuse) is judged by building its URL, as before, so this
/// refuses exactly what building it refuses, before anything is sent.
fn check_sendable(t: &Target) -> Result<(), Refusal> {
    if plain_authority(&t.host) && plain_path_and_query(&t.path) {
        return Ok(());
    }
    t.uri_for(None)
        .map(drop)
        .map_err(|e| Refusal::BadTarget(e.to_string()))
}

/// `name[:port]` of ASCII letters, digits, `.`, `-` and `_`, with a port of 1 to 5 digits:
/// text the `http` crate always takes as an authority (nothing it reads as userinfo, a
/// percent-encoding, an IP literal or a second port; unit-tested byte by byte against it).
fn plain_authority(s: &str) -> bool {
    let (name, port) = match s.split_once(':') {
        Some((name, port)) => (name, Some(port)),
        None => (s, None),
    };
    !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_'))
        && port.is_none_or(|p| matches!(p.len(), 1..=5) && p.bytes().all(|b| b.is_ascii_digit()))
}

/// The longest path and query the `http` crate takes (`u16::MAX - 1` bytes).
const MAX_PATH_QUERY: usize = u16::MAX as usize - 1;

/// A path and query the `http` crate always takes: within its length limit, a leading `/`,
/// then up to the first `?` only bytes it allows in a path, and after it only bytes it allows
/// in a query (its tables in `http::uri::path`, for ASCII; no `#`, which it would cut the text
/// at; unit-tested byte by byte against it). One pass over the bytes.
fn plain_path_and_query(s: &str) -> bool {
    let mut in_query = false;
    s.len() <= MAX_PATH_QUERY
        && s.starts_with('/')
        && s.bytes().all(|b| match b {
            b'?' if !in_query => {
                in_query = true;
                true
            }
            b'#' | b'<' | b'>' => false,
            b'`' => in_query,
            b'"' => !in_query,
            _ => matches!(b, 0x21..=0x7e),
        })
}

/// Splits a request target into the authority of an absolute-form one (RFC 9112 §3.2.2) and
/// the path and query.
fn split_target(t: &str) -> Result<(Option<&str>, &str), Refusal> {
    path::check_target(t).map_err(bad_path)?;
    if t.starts_with('/') {
        return Ok((None, t));
    }
    let scheme_end = t.find("://").unwrap_or(0);
    let scheme = &t[..scheme_end];
    if scheme.eq_ignore_ascii_case("https") {
        return Err(Refusal::BadTarget(
            "https targets are not proxied; use http".into(),
        ));
    }
    if !scheme.eq_ignore_ascii_case("http") {
        return Err(Refusal::BadTarget(
            "request target must be a path or an http:// URL".into(),
        ));
    }
    let rest = &t[scheme_end + 3..];
    // The authority ends at the first '/', '?' or '#' (RFC 3986 §3.2); '#' was refused above.
    let end = rest.find(['/', '?']).unwrap_or(rest.len());
    let pq = &rest[end..];
    Ok((Some(&rest[..end]), if pq.is_empty() { "/" } else { pq }))
}

/// The target, and the configured origin it matched (if any: a route's host may be none).
fn route_target<'c>(
    req: &Request,
    cfg: &'c Config,
) -> Result<(Target, Option<&'c Origin>), Refusal> {
    let (absolute, path_query) = split_target(&req.target)?;
    let (path, query) = path_query.split_once('?').unwrap_or((path_query, ""));
    // "http://h?x" has an empty path: it is "/" (RFC 9112 §3.2.2).
    let path = if path.is_empty() { "/" } else { path };
    let (param, query) = take_origin_param(query)?;
    // RFC 9112 §3.2: an invalid Host is a 400 whatever else the request says. An empty one
    // names nothing.
    let host_field = match req.host.as_deref().map(str::trim) {
        Some(h) if !h.is_empty() => Some(Source::HostField.parse(h)?),
        _ => None,
    };

    // A host named by the request itself: DO's parameter first, then an absolute-form target.
    // Both are checked when both are there: a malformed authority is a 400 whatever else the
    // request names (RFC 9112 §3.2, RFC 9110 §4.2.1).
    let absolute = absolute.map(|a| Source::Absolute.parse(a)).transpose()?;
    let named = match param {
        Some(p) => Some(Source::Param.parse(p)?),
        None => absolute,
    };
    if let Some(a) = named {
        return named_target(cfg, &a, path, &query);
    }
    if let Some(h) = &host_field
        && let Some(o) = find(cfg, &h.host)
    {
        // The Host names the origin itself (DNS pointed at us): the port is ours, not its.
        return Ok((for_origin(o, &h.host, o.port, path, &query)?, Some(o)));
    }
    let prefixes = cfg.routes.iter().map(|r| r.prefix.as_str());
    if let Some((prefix, norm)) = under_prefix(path, prefixes)? {
        let r = cfg
            .routes
            .iter()
            .find(|r| r.prefix == prefix)
            .expect("prefix comes from a route");
        // Prefix and origin path both end with '/' (config): a plain join, nothing collapsed.
        let up_path = [r.path.as_str(), &norm[r.prefix.len()..]];
        return Ok(for_route(cfg, r, &up_path, &query));
    }
    Err(Refusal::NotAllowed(host_field.map_or_else(
        || "(none)".to_string(),
        |h| h.host.to_string(),
    )))
}

/// A request that names its origin (`cacheHostOrigin` or absolute-form): a configured origin
/// at an allowed port, or a route's origin (how a child cache asks its parent for content it
/// routes by prefix), within the paths that route serves.
fn named_target<'c>(
    cfg: &'c Config,
    a: &Authority,
    path: &str,
    query: &str,
) -> Result<(Target, Option<&'c Origin>), Refusal> {
    // Routes to this very authority (scheme default port when the request names none).
    let routes: Vec<&Route> = cfg
        .routes
        .iter()
        .filter(|r| {
            r.authority.host == a.host && Some(a.port_or(default_port(r.https))) == r.authority.port
        })
        .collect();
    if let Some(o) = find(cfg, &a.host) {
        let port = if o.connect.is_some() {
            // The address is fixed; the port a client names changes nothing.
            o.port
        } else {
            a.port.unwrap_or(o.port)
        };
        if o.allows_port(port) {
            return Ok((for_origin(o, &a.host, port, path, query)?, Some(o)));
        }
        // A route to this host at that port serves its own paths only (below), not the
        // whole origin at a port the origin does not allow.
        if routes.is_empty() {
            return Err(Refusal::PortNotAllowed(a.with_port(Some(port)).to_string()));
        }
    } else if routes.is_empty() {
        return Err(Refusal::NotAllowed(a.host.to_string()));
    }
    // Only what the routes to this origin serve: a route's origin path is a boundary too.
    match under_prefix(path, routes.iter().map(|r| r.path.as_str()))? {
        Some((matched, norm)) => {
            // The route whose origin path holds the request: its scheme too.
            let r = routes
                .iter()
                .find(|r| r.path == matched)
                .expect("the path matched one of these routes");
            Ok(for_route(cfg, r, &[&norm], query))
        }
        None => Err(Refusal::NotAllowed(format!(
            "{}{path} (outside the routes to this origin)",
            a.host
        ))),
    }
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
            [[origin]]
            host = "ports.example.org"
            ports = [8080]
            [[origin]]
            host = "tls.example.org"
            scheme = "https"
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

    fn refused(target: &str, host: &str) -> Refusal {
        route(&req(target, host), &cfg()).unwrap_err()
    }

    fn bad(target: &str, host: &str) -> String {
        match refused(target, host) {
            Refusal::BadTarget(why) => why,
            r => panic!("{target:?} / Host {host:?}: {r:?}, not a 400"),
        }
    }

    #[test]
    fn regression_port_text_made_another_host() {
        // The port was stripped only when all digits, so this ended in an allowed suffix and
        // the URL built from it named 169.254.169.254 (RFC 3986 §3.2.3: a port is digits).
        for host in [
            "169.254.169.254:x.download.windowsupdate.com",
            "10.0.0.1:x.download.windowsupdate.com",
        ] {
            let why = bad(&format!("/x?cacheHostOrigin={host}"), "gw");
            assert!(
                why.starts_with("malformed cacheHostOrigin: bad port"),
                "{why}"
            );
            let why = bad(&format!("http://{host}/x"), "gw");
            assert!(why.starts_with("malformed host in request target"), "{why}");
            let why = bad("/x", host);
            assert!(why.starts_with("malformed Host"), "{why}");
        }
    }

    #[test]
    fn regression_delimiters_in_a_host_ended_the_authority_early() {
        for c in ["?", "/", "#", "@", "%2f", " ", "\\", "é", "\t"] {
            let host = format!("10.0.0.1{c}.download.windowsupdate.com");
            let why = bad("/x", &host);
            assert!(why.starts_with("malformed Host"), "{host:?}: {why}");
            let why = bad(&format!("/x?cacheHostOrigin={host}"), "gw");
            assert!(
                why.contains("cacheHostOrigin") || why.contains("request target"),
                "{host:?}: {why}"
            );
        }
        // In an absolute-form target the authority ends at '/' or '?' (RFC 3986 §3.2): what
        // follows is path or query, and the host left over is not allowed.
        assert_eq!(
            refused("http://10.0.0.1?.download.windowsupdate.com/x", "gw"),
            Refusal::NotAllowed("10.0.0.1".into())
        );
        assert_eq!(
            refused("http://10.0.0.1/.download.windowsupdate.com/x", "gw"),
            Refusal::NotAllowed("10.0.0.1".into())
        );
        let why = bad("http://origin.test@a.download.windowsupdate.com/x", "gw");
        assert!(why.contains("userinfo"), "{why}");
        // A fragment never belongs in a request target (RFC 9112 §3.2).
        assert!(bad("/x#.download.windowsupdate.com", "gw").contains("fragment"));
    }

    #[test]
    fn an_invalid_host_field_is_a_400_whatever_the_route() {
        // RFC 9112 §3.2: a Host with an invalid value is answered 400.
        let why = bad("/debian/dists/stable/InRelease", "gw.example.org:x");
        assert!(why.starts_with("malformed Host"), "{why}");
        // An empty Host names nothing (allowed when the target has no authority).
        let t = route(&req("/debian/dists/stable/InRelease", ""), &cfg()).unwrap();
        assert_eq!(t.host, "mirror.example.org");
    }

    #[test]
    fn ports_are_part_of_the_allow_list() {
        assert_eq!(
            refused("/x?cacheHostOrigin=cdn.example.com:22", "gw"),
            Refusal::PortNotAllowed("cdn.example.com:22".into())
        );
        assert_eq!(
            refused("http://cdn.example.com:9180/summary", "gw"),
            Refusal::PortNotAllowed("cdn.example.com:9180".into())
        );
        // The default port, named or not (RFC 9110 §4.2.3), and a listed one.
        let c = cfg();
        let plain = route(&req("/x?cacheHostOrigin=cdn.example.com", "gw"), &c).unwrap();
        let named = route(&req("http://cdn.example.com:80/x", "gw"), &c).unwrap();
        assert_eq!(plain.uri_for(None), named.uri_for(None));
        assert_eq!(plain.key, named.key);
        let t = route(&req("/x?cacheHostOrigin=ports.example.org:8080", "gw"), &c).unwrap();
        assert_eq!(t.url(), "http://ports.example.org:8080/x");
        assert_eq!(
            t.key, "ports.example.org:8080/x",
            "another port, another key"
        );
        let t = route(&req("/x?cacheHostOrigin=tls.example.org", "gw"), &c).unwrap();
        assert_eq!(
            t.uri_for(None).unwrap().to_string(),
            "https://tls.example.org/x"
        );
        assert_eq!(
            refused("/x?cacheHostOrigin=tls.example.org:80", "gw"),
            Refusal::PortNotAllowed("tls.example.org:80".into())
        );
    }

    #[test]
    fn a_connect_address_ignores_the_named_port() {
        let t = route(
            &req("/x?cacheHostOrigin=eu.archive.example.org:22", "gw"),
            &cfg(),
        )
        .unwrap();
        assert_eq!(t.host, "eu.archive.example.org");
        assert_eq!(t.key, "archive/x");
    }

    #[test]
    fn route_prefixes_cannot_be_left() {
        for target in [
            "/debian/../a.bin",
            "/debian/%2e%2e/a.bin",
            "/debian/%2E%2e/a.bin",
            "/debian/.%2e/a.bin",
            "/debian/pool/../../a.bin",
        ] {
            let why = bad(target, "gw");
            assert!(why.contains("climbs above"), "{target}: {why}");
        }
        for target in [
            "/debian/..%2fa.bin",
            "/debian/..%5Ca.bin",
            "/debian/..\\a.bin",
        ] {
            let why = bad(target, "gw");
            assert!(why.contains("encoded '/'"), "{target}: {why}");
        }
        // Dot-segments that stay inside are removed (RFC 3986 §5.2.4).
        let t = route(&req("/debian/pool/./x/../a.deb", "gw"), &cfg()).unwrap();
        assert_eq!(t.path, "/debian/pool/a.deb");
        // A route's origin named in the proxy form: normalised too (the route is a boundary),
        // with the key of the same object.
        let c = cfg();
        let p = route(
            &req("http://mirror.example.org/debian/./pool/a.deb", "gw"),
            &c,
        )
        .unwrap();
        assert_eq!(p.path, "/debian/pool/a.deb");
        let r = route(&req("/debian/pool/a.deb", "gw"), &c).unwrap();
        assert_eq!(p.key, r.key);
        // An allowed origin's path is normalised too: what is asked is what is keyed.
        let o = route(&req("/a/./b/%63?cacheHostOrigin=cdn.example.com", "gw"), &c).unwrap();
        assert_eq!(
            (o.path.as_str(), o.key.as_str()),
            ("/a/b/c", "cdn.example.com/a/b/c")
        );
        // The route's origin named directly: only what the route serves.
        assert!(matches!(
            refused("/secret?cacheHostOrigin=mirror.example.org", "gw"),
            Refusal::NotAllowed(_)
        ));
        assert!(
            bad("/debian/../secret?cacheHostOrigin=mirror.example.org", "gw").contains("climbs")
        );
        assert!(matches!(
            refused("http://mirror.example.org/secret", "gw"),
            Refusal::NotAllowed(_)
        ));
    }

    #[test]
    fn the_parameter_twice_is_refused() {
        assert!(
            bad(
                "/x?cacheHostOrigin=cdn.example.com&cacheHostOrigin=evil.test",
                "gw"
            )
            .contains("repeated")
        );
    }

    #[test]
    fn upstream_urls_are_built_from_the_validated_parts() {
        let t = route(
            &req("/f?a=1&cacheHostOrigin=A.Download.WindowsUpdate.com.", "gw"),
            &cfg(),
        )
        .unwrap();
        let u = t.uri_for(None).unwrap();
        assert_eq!(u.host(), Some("a.download.windowsupdate.com"));
        assert_eq!(u.port_u16(), None);
        let p = t.uri_for(Some("parent.example.org:8080")).unwrap();
        assert_eq!(
            p.to_string(),
            "http://parent.example.org:8080/f?a=1&cacheHostOrigin=a.download.windowsupdate.com"
        );
    }

    #[test]
    fn an_explicit_port_is_checked_in_every_form() {
        // An origin fetched at 8080: naming port 80 is another port, whichever form names it
        // (the absolute form once took ":80" as "no port" and fetched 8080).
        let c = RawConfig::from_toml("[[origin]]\nhost = \"pkgs.example.com:8080\"")
            .unwrap()
            .validate()
            .unwrap();
        for target in [
            "/b?cacheHostOrigin=pkgs.example.com:80",
            "http://pkgs.example.com:80/b",
        ] {
            assert_eq!(
                route(&req(target, "gw"), &c),
                Err(Refusal::PortNotAllowed("pkgs.example.com:80".into())),
                "{target}"
            );
        }
        for target in [
            "/b?cacheHostOrigin=pkgs.example.com",
            "http://pkgs.example.com/b",
        ] {
            let t = route(&req(target, "gw"), &c).unwrap();
            assert_eq!(t.url(), "http://pkgs.example.com:8080/b", "{target}");
        }
    }

    #[test]
    fn regression_double_slash_dot_dot_stored_one_path_under_another() {
        // `/pub//../x`: RFC 3986 removes only the empty segment (`/pub/x`), an origin that
        // merges slashes reads `/x`. The path asked upstream is the key's, so both agree.
        let t = route(
            &req("/pub//../private.txt?cacheHostOrigin=cdn.example.com", "gw"),
            &cfg(),
        )
        .unwrap();
        assert_eq!(t.path, "/pub/private.txt");
        assert_eq!(t.key, "cdn.example.com/pub/private.txt");
    }

    #[test]
    fn regression_a_routes_port_opened_the_whole_origin() {
        let c = RawConfig::from_toml(
            "[[origin]]\nhost = \"mirror.example.org\"\n\
             [[route]]\nprefix = \"/lh/\"\norigin = \"http://mirror.example.org:8081/debian/\"",
        )
        .unwrap()
        .validate()
        .unwrap();
        for target in [
            "/secret?cacheHostOrigin=mirror.example.org:8081",
            "http://mirror.example.org:8081/admin/secret",
        ] {
            assert!(
                matches!(route(&req(target, "gw"), &c), Err(Refusal::NotAllowed(_))),
                "{target}"
            );
        }
        let t = route(
            &req(
                "/debian/a.deb?cacheHostOrigin=mirror.example.org:8081",
                "gw",
            ),
            &c,
        )
        .unwrap();
        assert_eq!(t.url(), "http://mirror.example.org:8081/debian/a.deb");
        assert_eq!(
            route(&req("/x?cacheHostOrigin=mirror.example.org:8082", "gw"), &c),
            Err(Refusal::PortNotAllowed("mirror.example.org:8082".into()))
        );
    }

    #[test]
    fn regression_absolute_authority_unchecked_beside_the_parameter() {
        for target in [
            "http://user:pw@127.0.0.1:22222/x?cacheHostOrigin=cdn.example.com",
            "http:///x?cacheHostOrigin=cdn.example.com",
            "http://169.254.169.254:99999999/x?cacheHostOrigin=cdn.example.com",
        ] {
            let why = bad(target, "gw");
            assert!(
                why.starts_with("malformed host in request target"),
                "{target}: {why}"
            );
        }
    }

    #[test]
    fn routed_segments_an_origin_might_still_read_as_dot_dot() {
        for target in [
            "/debian/..;/secret",
            "/debian/%2e%2e;/secret",
            "/debian/..%00/secret",
            "/debian/%252e%252e/secret",
            "/debian/%252f/secret",
            "/debian/%c0%ae%c0%ae/secret",
        ] {
            assert!(
                matches!(refused(target, "gw"), Refusal::BadTarget(_)),
                "{target}"
            );
        }
        // Ordinary names with dots and percent-encodings stay fine.
        for target in [
            "/debian/pool/a..b.deb",
            "/debian/pool/libstdc%2B%2B6.deb",
            "/debian/.well",
        ] {
            assert!(route(&req(target, "gw"), &cfg()).is_ok(), "{target}");
        }
    }

    #[test]
    fn regression_named_route_took_the_first_route_of_the_host() {
        let c = RawConfig::from_toml(
            "[[route]]\nprefix = \"/a/\"\norigin = \"http://m.example.org:443/x/\"\n\
             [[route]]\nprefix = \"/b/\"\norigin = \"https://m.example.org/y/\"",
        )
        .unwrap()
        .validate()
        .unwrap();
        let t = route(&req("/y/z?cacheHostOrigin=m.example.org:443", "gw"), &c).unwrap();
        assert_eq!(
            t.uri_for(None).unwrap().to_string(),
            "https://m.example.org/y/z"
        );
        let t = route(&req("/x/z?cacheHostOrigin=m.example.org:443", "gw"), &c).unwrap();
        assert_eq!(
            t.uri_for(None).unwrap().to_string(),
            "http://m.example.org:443/x/z"
        );
    }

    #[test]
    fn plain_parts_are_exactly_what_http_takes_there() {
        let http_pq = |s: &str| PathAndQuery::try_from(s).is_ok();
        for b in 0u8..0x80 {
            let c = b as char;
            // In a path ('?' starts the query; at '#' `http` cuts the text: left to it).
            if c != '?' && c != '#' {
                let pq = format!("/a{c}b");
                assert_eq!(plain_path_and_query(&pq), http_pq(&pq), "{pq:?}");
            }
            if c != '#' {
                let pq = format!("/a?x{c}y");
                assert_eq!(plain_path_and_query(&pq), http_pq(&pq), "{pq:?}");
            }
            for pq in [format!("/{c}"), format!("{c}/"), format!("/?{c}")] {
                assert!(!plain_path_and_query(&pq) || http_pq(&pq), "{pq:?}");
            }
            for a in [
                format!("h{c}h"),
                format!("{c}h"),
                format!("h{c}"),
                format!("h:8{c}"),
                format!("h:{c}"),
                format!("h.{c}:80"),
            ] {
                assert!(
                    !plain_authority(&a) || UriAuthority::try_from(a.as_str()).is_ok(),
                    "{a:?}"
                );
            }
        }
        let longest = format!("/{}", "a".repeat(MAX_PATH_QUERY - 1));
        assert!(plain_path_and_query(&longest) && http_pq(&longest));
        let over = format!("{longest}a");
        assert!(!plain_path_and_query(&over) && !http_pq(&over));
        assert!(!plain_path_and_query("") && !http_pq(""));
        for a in ["h", "a-b.example_x.org:65535", "10.0.0.1:8080", "h:99999"] {
            assert!(
                plain_authority(a) && UriAuthority::try_from(a).is_ok(),
                "{a}"
            );
        }
        for a in [
            "", ":80", "h:", "h:123456", "[::1]", "[::1]:80", "u@h", "h%41", "h:1:2",
        ] {
            assert!(!plain_authority(a), "{a}");
        }
    }

    #[test]
    fn sendable_refuses_what_the_url_builder_refuses() {
        let target = |host: &str, path: &str| Target {
            https: false,
            authority: Authority::parse("h").unwrap(),
            host: host.into(),
            path: path.into(),
            key: String::new(),
            via: None,
            rule: Default::default(),
            client_cc: None,
            fields: Default::default(),
            origin_label: String::new(),
        };
        for (host, path) in [
            ("h", "/a"),
            ("h:8080", "/a?b=c&d"),
            ("[::1]:8080", "/a"),
            ("[fd00::4]", "/a?x"),
            ("h", "/a<b"),
            ("h", "/a`b"),
            ("h", "/a?x\"b"),
            ("h", "/a?x`b"),
            ("h", "/a#b"),
            ("h", "a"),
            ("h", "*"),
            ("h:1:2", "/a"),
            ("u@h", "/a"),
            ("", "/a"),
            ("h", "/é"),
        ] {
            let t = target(host, path);
            assert_eq!(
                check_sendable(&t).is_ok(),
                t.uri_for(None).is_ok(),
                "{host:?} {path:?}"
            );
        }
    }

    #[test]
    fn regression_a_double_slash_inside_a_routed_path_was_collapsed() {
        let t = route(&req("/debian/a//b", "gw"), &cfg()).unwrap();
        assert_eq!(t.url(), "http://mirror.example.org/debian/a//b");
    }
}
