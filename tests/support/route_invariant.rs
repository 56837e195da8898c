//! The routing invariant (never an open proxy), written once for the property test
//! (`tests/route_property.rs`) and the fuzz target (`fuzz/fuzz_targets/route.rs`), which both
//! include this file with `#[path = ...] mod route_invariant;`.
//!
//! Whatever [`route`](gatecache::route::route) accepts must name a configured destination: the
//! URL built for it names exactly the target's host, at a port the configuration allows (or the
//! host is an origin pinned to a `connect` address, and the URL's port reaches nothing); a
//! request served by a route's origin stays inside the route's origin path; and the URL for a
//! parent cache names exactly the parent, carrying the same origin in `cacheHostOrigin`, which
//! the parent (same configuration) routes to the same origin and path.
#![allow(dead_code)]

use gatecache::config::{Config, RawConfig};
use gatecache::http::authority::{Authority, default_port};
use gatecache::http::request::Request;
use gatecache::route::{ORIGIN_PARAM, Refusal, Target, route};

/// The configuration both the property test and the fuzz target route against: a wildcard
/// origin, an exact origin with an extra port, an origin pinned to a `connect` address,
/// `localhost`, an IPv6 literal at a non-default port, a prefix route to an origin that is not
/// itself an allowed origin, and parents (a name and an IPv6 literal).
pub const CONFIG: &str = r#"
[[origin]]
host = "*.dl.adu.microsoft.com"

[[origin]]
host = "files.example.com"
ports = [8080]

[[origin]]
host = "pinned.example.net"
connect = "127.0.0.1:9"

[[origin]]
host = "localhost"

[[origin]]
host = "[fd00::5]:8081"

[[route]]
prefix = "/debian/"
origin = "http://mirror.example.org/debian/"

[upstream]
parents = ["parent.example.net:3128", "[fd00::1]"]
"#;

/// [`CONFIG`], validated.
pub fn config() -> Config {
    RawConfig::from_toml(CONFIG)
        .expect("CONFIG parses")
        .validate()
        .expect("CONFIG is valid")
}

/// Decodes every `%XX` (any byte, unlike the router's unreserved-only decoding): what an origin
/// that decodes everything would see.
fn decode_all(s: &str) -> Vec<u8> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let hex = |j: usize| b.get(j).and_then(|&c| (c as char).to_digit(16));
        match (b[i], hex(i + 1), hex(i + 2)) {
            (b'%', Some(h), Some(l)) => {
                out.push((h * 16 + l) as u8);
                i += 3;
            }
            (c, _, _) => {
                out.push(c);
                i += 1;
            }
        }
    }
    out
}

/// Has `path` a `..` segment, written plainly, percent-encoded, or behind an encoded or
/// backslash separator?
fn has_dot_dot(path: &str) -> bool {
    decode_all(path)
        .split(|&c| c == b'/' || c == b'\\')
        .any(|seg| seg == b"..")
}

/// Checks the invariant for one routing decision; `Err` says what broke. `req` is the request
/// that was routed (for the message only).
pub fn check(cfg: &Config, req: &Request, routed: &Result<Target, Refusal>) -> Result<(), String> {
    match routed {
        Err(r) => match r.status() {
            400 | 403 => Ok(()),
            s => Err(format!("refusal {r:?} has status {s}\n  request: {req:?}")),
        },
        Ok(t) => {
            check_target(cfg, t).map_err(|e| format!("{e}\n  target: {t:?}\n  request: {req:?}"))
        }
    }
}

/// Routes `req` against `cfg` and checks the invariant.
pub fn route_and_check(cfg: &Config, req: &Request) -> Result<Result<Target, Refusal>, String> {
    let routed = route(req, cfg);
    check(cfg, req, &routed)?;
    Ok(routed)
}

fn check_target(cfg: &Config, t: &Target) -> Result<(), String> {
    let scheme_port = default_port(t.https);
    let host = &t.authority.host;
    let port = t
        .authority
        .port
        .ok_or("a routed target's authority has no port")?;

    // The origin's URL names exactly the target's host, at the target's port.
    let uri = t
        .uri_for(None)
        .map_err(|e| format!("an accepted target has no URL: {e}"))?;
    let want_scheme = if t.https { "https" } else { "http" };
    if uri.scheme_str() != Some(want_scheme) {
        return Err(format!("URL {uri} is not {want_scheme}"));
    }
    let ua = uri
        .authority()
        .ok_or_else(|| format!("URL {uri} has no authority"))?;
    if ua.as_str().contains('@') {
        return Err(format!("URL {uri} has userinfo"));
    }
    if uri.host() != Some(host.to_string().as_str()) {
        return Err(format!("URL {uri} names host {:?}, not {host}", uri.host()));
    }
    let url_port = uri.port_u16().unwrap_or(scheme_port);
    if url_port != port {
        return Err(format!("URL {uri} names port {url_port}, not {port}"));
    }
    if !t.path.starts_with('/') {
        return Err(format!("path {:?} does not start with '/'", t.path));
    }
    if uri.path_and_query().map(|pq| pq.as_str()) != Some(t.path.as_str()) {
        return Err(format!("URL {uri} does not carry the path {:?}", t.path));
    }
    // The Host sent upstream names the same host and port.
    let h = Authority::parse(&t.host).map_err(|e| format!("upstream Host {:?}: {e}", t.host))?;
    if h.host != *host || h.port_or(scheme_port) != port {
        return Err(format!("upstream Host {:?} is not {}", t.host, t.authority));
    }

    check_destination(cfg, t, port, uri.path(), want_scheme)?;

    // The URL for each parent names exactly that parent and carries this origin.
    let (t_path, t_query) = t.path.split_once('?').unwrap_or((&t.path, ""));
    for p in &cfg.upstream.parents {
        check_parent(cfg, t, p, port, (t_path, t_query))?;
    }
    Ok(())
}

/// Only a configured destination: the connect address of the origin the resolver picks for
/// this host (its first match), else the host's DNS answer at a port its origin or a route
/// to it allows. `path` is the path of the origin's URL; `want_scheme` is the target's scheme.
fn check_destination(
    cfg: &Config,
    t: &Target,
    port: u16,
    path: &str,
    want_scheme: &str,
) -> Result<(), String> {
    let host = &t.authority.host;
    let pinned = cfg
        .origins
        .iter()
        .find(|o| o.matches(host))
        .is_some_and(|o| o.connect.is_some());
    let by_origin = cfg.origins.iter().any(|o| {
        o.matches(host) && o.https == t.https && o.connect.is_none() && o.allows_port(port)
    });
    let routes: Vec<_> = cfg
        .routes
        .iter()
        .filter(|r| {
            r.authority.host == *host && r.authority.port == Some(port) && r.https == t.https
        })
        .collect();
    if !pinned && !by_origin {
        if routes.is_empty() {
            return Err(format!(
                "{want_scheme}://{} is neither an allowed origin at an allowed port nor a route's origin",
                t.authority
            ));
        }
        // Served for a route only: inside its origin path, no way back out.
        if !routes.iter().any(|r| path.starts_with(&r.path)) {
            return Err(format!(
                "routed path {path:?} is outside the route's origin path {:?}",
                routes.iter().map(|r| &r.path).collect::<Vec<_>>()
            ));
        }
        if has_dot_dot(path) {
            return Err(format!("routed path {path:?} has a '..' segment"));
        }
    }
    Ok(())
}

/// The URL for the parent `p` names exactly that parent and carries this origin, and the
/// parent, configured alike, fetches the same thing. `(t_path, t_query)` is the target's path,
/// split at its `?`.
fn check_parent(
    cfg: &Config,
    t: &Target,
    p: &str,
    port: u16,
    (t_path, t_query): (&str, &str),
) -> Result<(), String> {
    let scheme_port = default_port(t.https);
    let host = &t.authority.host;
    let pa = Authority::parse(p).map_err(|e| format!("parent {p:?}: {e}"))?;
    let uri = t
        .uri_for(Some(p))
        .map_err(|e| format!("no URL for parent {p}: {e}"))?;
    if uri.scheme_str() != Some("http") {
        return Err(format!("parent URL {uri} is not http"));
    }
    if uri.authority().is_some_and(|a| a.as_str().contains('@')) {
        return Err(format!("parent URL {uri} has userinfo"));
    }
    if uri.host() != Some(pa.host.to_string().as_str())
        || uri.port_u16().unwrap_or(80) != pa.port_or(80)
    {
        return Err(format!("parent URL {uri} does not name the parent {p}"));
    }
    if uri.path() != t_path {
        return Err(format!(
            "parent URL {uri} does not carry the path {t_path:?}"
        ));
    }
    let query = uri.query().unwrap_or("");
    let (mut origins, mut rest) = (Vec::new(), Vec::new());
    for part in query.split('&').filter(|s| !s.is_empty()) {
        match part.split_once('=') {
            Some((k, v)) if k == ORIGIN_PARAM => origins.push(v),
            _ => rest.push(part),
        }
    }
    let [v] = origins[..] else {
        return Err(format!(
            "parent URL {uri} carries {} {ORIGIN_PARAM}",
            origins.len()
        ));
    };
    let a =
        Authority::parse(v).map_err(|e| format!("parent URL {uri}: {ORIGIN_PARAM}={v:?}: {e}"))?;
    if a.host != *host || a.port_or(scheme_port) != port {
        return Err(format!(
            "parent URL {uri} names origin {a}, not {}",
            t.authority
        ));
    }
    if rest.join("&") != t_query {
        return Err(format!(
            "parent URL {uri} does not carry the query {t_query:?}"
        ));
    }
    // The parent, configured alike, fetches the same thing.
    let preq = Request {
        target: uri
            .path_and_query()
            .map_or("/", |pq| pq.as_str())
            .to_string(),
        host: Some(p.to_string()),
        ..Request::default()
    };
    match route(&preq, cfg) {
        Ok(pt) if pt.authority == t.authority && pt.https == t.https && pt.path == t.path => {}
        other => {
            return Err(format!(
                "the parent routes {:?} otherwise: {other:?}",
                preq.target
            ));
        }
    }
    Ok(())
}
