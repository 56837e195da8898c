//! Configuration: the TOML file (or embedded defaults), then the environment and the flags,
//! in three steps:
//!
//! 1. [`RawConfig`]: the file as written ([`RawConfig::from_toml`]), with the original
//!    module's environment over it ([`RawConfig::apply_env`]).
//! 2. [`RawConfig::validate`]: one function per section (general, storage, origins, routes,
//!    rules, upstream), each from its raw keys to its typed value, composed into a [`Config`].
//!    Pure: no file is read. The storage rules are the store's own ([`StoreConfig::validate`]).
//! 3. [`Config::load_resources`]: reads what validation only names (the `upstream.ca_file`
//!    certificates, the host name for a default `node_name`).
//!
//! Every rejected value names its key (or environment variable), the value and what is allowed.
#![warn(missing_docs)]

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;
use toml::{Table, Value};

use crate::http::authority::{self, Authority, Host};
use crate::store::{DriveConfig, StoreConfig, StoreConfigError};

/// The file as written, before validation. Every key is optional; [`RawConfig::validate`]
/// fills in the defaults named here.
#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct RawConfig {
    /// The client listener, `address:port` (default `0.0.0.0:80`).
    pub listen: Option<String>,
    /// The admin listener (`/summary`, `/metrics`, `/healthz`, `/readyz`), `address:port`
    /// (default `127.0.0.1:9180`).
    pub admin_listen: Option<String>,
    /// Serving threads, 0 to 1024 (default and 0: one per core).
    pub workers: Option<usize>,
    /// The socket backend: `auto` (default: io_uring when the kernel allows it), `uring` or
    /// `epoll`.
    pub io_backend: Option<String>,
    /// The store's block size, a size such as `1MiB` (default): a power of two from 64KiB to
    /// 16MiB.
    pub block_size: Option<String>,
    /// Size of each slab file, a size (default `1GiB`): at least one block and its headers.
    pub slab_size: Option<String>,
    /// msync each block before its header is written (default true).
    pub sync_data: Option<bool>,
    /// How long a client may take to send a whole request head, a duration (default `10s`).
    pub head_timeout: Option<String>,
    /// How long an idle keep-alive connection is kept, a duration (default `60s`).
    pub idle_timeout: Option<String>,
    /// This node's name in `Via` (loop detection): one token, no spaces or commas (default:
    /// host name and listen port, read by [`Config::load_resources`]).
    pub node_name: Option<String>,
    /// Where the access log goes: "stderr" (default, with the service log), "stdout", "off",
    /// or a file path (reopened on SIGHUP).
    pub access_log: Option<String>,
    /// Serve `/summary` on the client listener too, to anyone (the original's
    /// IS_SUMMARY_ACCESS_UNRESTRICTED).
    pub summary_unrestricted: Option<bool>,
    /// On SIGTERM, how long responses in progress may take to finish, a duration up to `2m`
    /// (default `10s`).
    pub shutdown_grace: Option<String>,
    /// `[[storage]]`: the cache directories (default: 2 GiB in `./gatecache-cache`).
    pub storage: Vec<RawStorage>,
    /// `[[origin]]`: the hosts that may be fetched (default: the Device Update and Windows
    /// Update hosts, [`DEFAULT_ORIGINS`], when neither origins nor routes are given).
    pub origin: Vec<RawOrigin>,
    /// `[[route]]`: path prefixes served from a fixed origin (reverse-proxy mode).
    pub route: Vec<RawRoute>,
    /// `[[rule]]`: freshness overrides by path.
    pub rule: Vec<RawRule>,
    /// `[upstream]`: parents, proxy, trust and limits of the fetching side.
    pub upstream: RawUpstream,
    /// The parents came from `UPSTREAM_HOST`: errors name that variable.
    #[serde(skip)]
    pub parents_from_env: bool,
    /// The proxy came from `UPSTREAM_PROXY`.
    #[serde(skip)]
    pub proxy_from_env: bool,
    /// Origins added by `CACHEABLE_CUSTOM_<N>_HOST` (they add to the defaults, like the
    /// original's; origins in the file replace them).
    #[serde(skip)]
    pub env_origins: usize,
}

/// A freshness override for paths matching a pattern (`*` matches any run of characters).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRule {
    /// The path pattern (no query), starting with `/` or `*`.
    pub path: String,
    /// Only for this origin host pattern (default: every origin).
    pub host: Option<String>,
    /// The content never changes: fresh forever, never revalidated, whatever the origin or a
    /// client's `no-cache` says (`false`: no built-in default for these paths either).
    pub immutable: Option<bool>,
    /// Fresh for this long, a duration, whatever the origin says. A rule needs `immutable`
    /// or `max_age`.
    pub max_age: Option<String>,
}

/// One `[[storage]]` entry: a cache directory and its budget.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawStorage {
    /// The directory (created if missing); not empty, listed once.
    pub path: PathBuf,
    /// Its budget, a size such as `20GiB`: at least 4 blocks.
    pub size: String,
}

/// One `[[origin]]` entry: a host (or host pattern) that may be fetched.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawOrigin {
    /// `name`, `*.suffix` or an address, with an optional `:port` (where a request that names
    /// no port is fetched; the scheme's default otherwise).
    pub host: String,
    /// A name shared by mirrors of the same content: it replaces the host in cache keys.
    pub canonical: Option<String>,
    /// Fetch from this `address:port` whatever DNS says (the host is still named in the
    /// request and, for https, in SNI and the certificate check).
    pub connect: Option<String>,
    /// `http` (default) or `https`, towards the origin.
    pub scheme: Option<String>,
    /// Other ports a request may name for this origin (default: none besides `host`'s).
    pub ports: Option<Vec<i64>>,
    /// Refuse DNS answers that are loopback, private, link-local or otherwise not public.
    pub deny_private: Option<bool>,
    /// Keep the query string in the cache key (default true, but false for a host within one
    /// of the built-in Microsoft origins, [`DEFAULT_ORIGINS`]: [`key_query_default`]). The
    /// query is always sent upstream.
    pub key_query: Option<bool>,
    /// Content never changes at a given URL: fresh forever unless the origin's response says
    /// otherwise (a default, like the built-in one for package files; a `[[rule]]` overrides
    /// the origin).
    pub immutable: Option<bool>,
}

/// One `[[route]]` entry: requests under `prefix` go to `origin`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRoute {
    /// The path prefix: normalised, starting and ending with `/`.
    pub prefix: String,
    /// `http[s]://host[:port][/path/]`: where `prefix` maps to (the path ends with `/`).
    pub origin: String,
}

/// The `[upstream]` table as written.
#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct RawUpstream {
    /// Parent caches, tried in order: `host[:port]` (port 80 unless given).
    pub parents: Vec<String>,
    /// Go to the origin itself when every parent is down (default false: lower levels of a
    /// plant network usually cannot reach the internet).
    pub direct_fallback: Option<bool>,
    /// How long a failing parent is skipped before it is tried again.
    pub parent_backoff: Option<String>,
    /// An HTTP proxy (`host:port`) every upstream connection goes through, by CONNECT.
    pub proxy: Option<String>,
    /// PEM file of extra CA certificates trusted for https origins (private mirrors), on top
    /// of the system's.
    pub ca_file: Option<PathBuf>,
    /// Bytes asked for per upstream request when filling a cold object, a size (default
    /// `64MiB`): at least one block.
    pub window: Option<String>,
    /// Upstream fetcher threads, 1 to 4096 (default 8 per worker, at least 16).
    pub fetchers: Option<usize>,
    /// Time to connect upstream, a duration (default `5s`).
    pub connect_timeout: Option<String>,
    /// How often the upstream must send something, a duration (default `15s`).
    pub read_timeout: Option<String>,
}

/// The socket backend (`io_backend`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IoBackend {
    /// io_uring when the kernel allows it, else epoll.
    Auto,
    /// io_uring only.
    Uring,
    /// epoll only.
    Epoll,
}

/// An allowed origin (`example.org`, `*.example.org` or an address) and the ports a request may
/// ask it on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Origin {
    /// The host pattern, lower case, without a port: a name, `*.suffix` (names only) or an
    /// address as written in a URL (`10.0.0.5`, `[fd00::5]`).
    pub host: String,
    /// Where a request that names no port is fetched (`host`'s port, else the scheme's).
    pub port: u16,
    /// Further ports a request may name (RFC 3986 §3.2.3); any other is refused with a 403.
    /// Ignored with `connect`, which fixes the address whatever the request names.
    pub ports: Vec<u16>,
    /// The name that replaces the host in cache keys (mirrors sharing objects).
    pub canonical: Option<String>,
    /// The address fetched whatever DNS says.
    pub connect: Option<SocketAddr>,
    /// Fetched over https.
    pub https: bool,
    /// The query string is part of the cache key (it is sent upstream either way).
    pub key_query: bool,
    /// Content never changes at a given URL: fresh forever when the origin's response says
    /// nothing about its freshness (a default, [`crate::http::freshness::Rule::applies_to`]).
    pub immutable: bool,
    /// DNS answers for this origin that are not public addresses are refused (a name that an
    /// attacker's DNS points at 127.0.0.1 or 169.254.169.254 reaches nothing).
    pub deny_private: bool,
}

/// A validated `[[rule]]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    /// The path pattern (`*` matches any run of characters), starting with `/` or `*`.
    pub path: String,
    /// Only for origins matching this host pattern (lower case, no port); `None`: all.
    pub host: Option<String>,
    /// The freshness it imposes.
    pub fresh: crate::http::freshness::Rule,
}

/// Paths whose content never changes in any package repository: a package file's name carries
/// its version, a by-hash path its digest. Index files (InRelease, Packages, ...) are not here:
/// they follow their freshness. A default: it applies only when the origin's response says
/// nothing about freshness (RFC 9111 §4.2.2; `no-cache`, `max-age`, `must-revalidate`, ...
/// win); a `[[rule]]` overrides these and the origin.
pub const IMMUTABLE_PATHS: &[&str] = &["*.deb", "*.udeb", "*.ddeb", "*/by-hash/*"];

/// Does `text` match `pattern`, where `*` matches any run of characters? Allocates nothing
/// (it runs for every request: the freshness rules and the built-in immutable paths).
pub fn glob(pattern: &str, text: &str) -> bool {
    let Some((first, tail)) = pattern.split_once('*') else {
        return pattern == text;
    };
    let Some(mut rest) = text.strip_prefix(first) else {
        return false;
    };
    // The pieces between the first and the last '*' in order, each as early as it can be;
    // then the piece after the last '*' at the end.
    let (middle, last) = tail.rsplit_once('*').unwrap_or(("", tail));
    for p in middle.split('*') {
        match rest.find(p) {
            Some(i) => rest = &rest[i + p.len()..],
            None => return false,
        }
    }
    rest.len() >= last.len() && rest.ends_with(last)
}

impl Origin {
    /// Does `host` match this entry? A wildcard matches names only, never an address.
    pub fn matches(&self, host: &Host) -> bool {
        match host {
            Host::Name(n) => Origin::pattern_matches(&self.host, n),
            // The same as comparing with the address's text (`dotted_quad` takes only the
            // canonical text), without writing it out for every origin of the list.
            Host::V4(a) => authority::dotted_quad(&self.host) == Some(*a),
            ip => self.host == ip.to_string(),
        }
    }

    /// May a request name `port` for this origin?
    pub fn allows_port(&self, port: u16) -> bool {
        self.connect.is_some() || port == self.port || self.ports.contains(&port)
    }

    /// Does `host` match `pattern` (`example.org` or `*.example.org`)?
    pub fn pattern_matches(pattern: &str, host: &str) -> bool {
        match pattern.strip_prefix("*.") {
            Some(suffix) => {
                host.len() > suffix.len() + 1 && host.ends_with(suffix) && {
                    host.as_bytes()[host.len() - suffix.len() - 1] == b'.'
                }
            }
            None => pattern == host,
        }
    }
}

/// A path prefix served from a fixed origin (reverse-proxy mode).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    /// The path prefix, normalised, starting and ending with `/`.
    pub prefix: String,
    /// The origin's authority, its port spelled out.
    pub authority: Authority,
    /// Origin host, with the port when not the scheme's default: `origin.test` or
    /// `origin.test:8080`.
    pub host: String,
    /// The origin is fetched over https.
    pub https: bool,
    /// Path on the origin that `prefix` maps to.
    pub path: String,
}

/// The validated `[upstream]` table.
#[derive(Debug, Clone)]
pub struct Upstream {
    /// Parent caches as `host:port`, in order of preference.
    pub parents: Vec<String>,
    /// Go to the origin itself when every parent is down.
    pub direct_fallback: bool,
    /// How long a failing parent is skipped.
    pub parent_backoff: Duration,
    /// `host:port` of the outbound proxy.
    pub proxy: Option<String>,
    /// PEM file of extra CA certificates, as configured (read by [`Config::load_resources`]).
    pub ca_file: Option<PathBuf>,
    /// DER certificates from `ca_file`: empty until [`Config::load_resources`] has read it.
    pub ca_certs: Vec<Vec<u8>>,
    /// Bytes asked for per upstream request when filling a cold object (at least one block).
    pub window: u64,
    /// Upstream fetcher threads, 1 to 4096.
    pub fetchers: usize,
    /// Time to connect upstream.
    pub connect_timeout: Duration,
    /// How often the upstream must send something.
    pub read_timeout: Duration,
}

/// The validated configuration: every key typed and defaulted. From [`RawConfig::validate`]
/// (pure), then [`Config::load_resources`] (reads the CA file and the host name) before it
/// serves.
#[derive(Debug, Clone)]
pub struct Config {
    /// The client listener.
    pub listen: SocketAddr,
    /// The admin listener.
    pub admin_listen: SocketAddr,
    /// Serving threads, 1 to 1024.
    pub workers: usize,
    /// How long a client may take to send a whole request head.
    pub head_timeout: Duration,
    /// How long an idle keep-alive connection is kept.
    pub idle_timeout: Duration,
    /// The socket backend.
    pub io_backend: IoBackend,
    /// This node's name in `Via` headers (loop detection, RFC 9110 §7.6.3): `node_name`, or
    /// host name and port (`gatecache:<port>` until [`Config::load_resources`] has read the
    /// host name).
    pub node_name: String,
    /// `node_name` was not configured: [`Config::load_resources`] names this node after the
    /// machine's host name.
    pub node_name_from_host: bool,
    /// `stderr`, `stdout`, `off` or an absolute file path.
    pub access_log: String,
    /// `/summary` is served on the client listener too.
    pub summary_unrestricted: bool,
    /// On SIGTERM, how long responses in progress may take to finish (at most 2 minutes).
    pub shutdown_grace: Duration,
    /// The store: drives, block and slab size, checked by [`StoreConfig::validate`].
    pub store: StoreConfig,
    /// The allowed origins: the built-in ones, or the file's and the environment's.
    pub origins: Vec<Origin>,
    /// The routes, longest prefix first.
    pub routes: Vec<Route>,
    /// The freshness rules, in the file's order (the first match wins).
    pub rules: Vec<Rule>,
    /// The upstream side.
    pub upstream: Upstream,
}

impl Config {
    /// The effective configuration as TOML (`gatecache check-config`): every key, defaults
    /// and environment included; it reads back as the same configuration.
    pub fn render(&self) -> String {
        let mut t = self.render_general();
        table_list(&mut t, "storage", &self.store.drives, render_drive);
        table_list(&mut t, "origin", &self.origins, render_origin);
        table_list(&mut t, "route", &self.routes, render_route);
        table_list(&mut t, "rule", &self.rules, render_rule);
        t.insert("upstream".into(), Value::Table(self.upstream.render()));
        toml::to_string(&t).unwrap_or_default()
    }

    /// The top-level keys (everything but the tables and arrays of tables).
    fn render_general(&self) -> Table {
        let mut t = Table::new();
        t.insert("listen".into(), text(self.listen));
        t.insert("admin_listen".into(), text(self.admin_listen));
        t.insert("workers".into(), Value::Integer(self.workers as i64));
        t.insert(
            "io_backend".into(),
            text(match self.io_backend {
                IoBackend::Auto => "auto",
                IoBackend::Uring => "uring",
                IoBackend::Epoll => "epoll",
            }),
        );
        t.insert("block_size".into(), text(self.store.block_size));
        t.insert("slab_size".into(), text(self.store.slab_size));
        t.insert("sync_data".into(), Value::Boolean(self.store.sync_data));
        t.insert("head_timeout".into(), duration(self.head_timeout));
        t.insert("idle_timeout".into(), duration(self.idle_timeout));
        t.insert("shutdown_grace".into(), duration(self.shutdown_grace));
        t.insert("node_name".into(), text(&self.node_name));
        t.insert("access_log".into(), text(&self.access_log));
        t.insert(
            "summary_unrestricted".into(),
            Value::Boolean(self.summary_unrestricted),
        );
        t
    }

    /// The freshness rule for `path` (no query) on origin `host`: the first matching
    /// `[[rule]]` (it overrides the origin's directives), else the default: immutable for the
    /// origin's `immutable` and for [`IMMUTABLE_PATHS`], which yields to the origin's explicit
    /// directives ([`crate::http::freshness::Rule::applies_to`]).
    pub fn fresh_rule(
        &self,
        host: &Host,
        path: &str,
        origin: Option<&Origin>,
    ) -> crate::http::freshness::Rule {
        // An address is written out only for a rule that names a host and matches the path,
        // once: formatting it for every request cost more than the rest of the lookup.
        let ip_text = std::cell::OnceCell::new();
        let name = || match host {
            Host::Name(n) => n.as_str(),
            ip => ip_text.get_or_init(|| ip.to_string()).as_str(),
        };
        let hit = self.rules.iter().find(|r| {
            glob(&r.path, path)
                && r.host
                    .as_ref()
                    .is_none_or(|h| Origin::pattern_matches(h, name()))
        });
        match hit {
            Some(r) => r.fresh,
            None => crate::http::freshness::Rule {
                immutable: origin.is_some_and(|o| o.immutable)
                    || IMMUTABLE_PATHS.iter().any(|p| glob(p, path)),
                max_age: None,
                overrides_origin: false,
            },
        }
    }
}

/// A TOML string of `v`'s text.
fn text(v: impl ToString) -> Value {
    Value::String(v.to_string())
}

/// A duration as [`parse_duration`] reads it back: whole seconds (`30s`), else milliseconds.
fn duration(d: Duration) -> Value {
    if d.subsec_millis() != 0 || d.as_secs() == 0 {
        text(format!("{}ms", d.as_millis()))
    } else {
        text(format!("{}s", d.as_secs()))
    }
}

/// An array of tables `name` in `t`, one per item, each filled by `f`.
fn table_list<T>(t: &mut Table, name: &str, items: &[T], f: impl Fn(&T, &mut Table)) {
    let v = items
        .iter()
        .map(|i| {
            let mut x = Table::new();
            f(i, &mut x);
            Value::Table(x)
        })
        .collect();
    t.insert(name.into(), Value::Array(v));
}

/// One `[[storage]]`.
fn render_drive(d: &DriveConfig, x: &mut Table) {
    x.insert("path".into(), text(d.path.display()));
    x.insert("size".into(), text(d.size));
}

/// One `[[origin]]`: the port in `host` only when it is not the scheme's default.
fn render_origin(o: &Origin, x: &mut Table) {
    let host = if o.port == authority::default_port(o.https) {
        o.host.clone()
    } else {
        format!("{}:{}", o.host, o.port)
    };
    x.insert("host".into(), text(host));
    if !o.ports.is_empty() {
        let ports = o.ports.iter().map(|&p| Value::Integer(p.into())).collect();
        x.insert("ports".into(), Value::Array(ports));
    }
    x.insert("deny_private".into(), Value::Boolean(o.deny_private));
    if let Some(c) = &o.canonical {
        x.insert("canonical".into(), text(c));
    }
    if let Some(c) = o.connect {
        x.insert("connect".into(), text(c));
    }
    x.insert(
        "scheme".into(),
        text(if o.https { "https" } else { "http" }),
    );
    x.insert("key_query".into(), Value::Boolean(o.key_query));
    x.insert("immutable".into(), Value::Boolean(o.immutable));
}

/// One `[[route]]`, its origin as the URL it was written as.
fn render_route(r: &Route, x: &mut Table) {
    x.insert("prefix".into(), text(&r.prefix));
    let scheme = if r.https { "https" } else { "http" };
    x.insert(
        "origin".into(),
        text(format!("{scheme}://{}{}", r.host, r.path)),
    );
}

/// One `[[rule]]`.
fn render_rule(r: &Rule, x: &mut Table) {
    x.insert("path".into(), text(&r.path));
    if let Some(h) = &r.host {
        x.insert("host".into(), text(h));
    }
    x.insert("immutable".into(), Value::Boolean(r.fresh.immutable));
    if let Some(m) = r.fresh.max_age {
        x.insert("max_age".into(), duration(Duration::from_secs(m)));
    }
}

impl Upstream {
    /// The `[upstream]` table.
    fn render(&self) -> Table {
        let mut up = Table::new();
        up.insert(
            "parents".into(),
            Value::Array(self.parents.iter().map(text).collect()),
        );
        up.insert(
            "direct_fallback".into(),
            Value::Boolean(self.direct_fallback),
        );
        up.insert("parent_backoff".into(), duration(self.parent_backoff));
        if let Some(p) = &self.proxy {
            up.insert("proxy".into(), text(p));
        }
        if let Some(f) = &self.ca_file {
            up.insert("ca_file".into(), text(f.display()));
        }
        up.insert("window".into(), text(self.window));
        up.insert("fetchers".into(), Value::Integer(self.fetchers as i64));
        up.insert("connect_timeout".into(), duration(self.connect_timeout));
        up.insert("read_timeout".into(), duration(self.read_timeout));
        up
    }
}

/// A rejected value: which key, what was given, what is allowed.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("config: {key} = {value:?}: {reason}")]
pub struct ConfigError {
    /// The key (`storage[1].path`, `upstream.ca_file`), the environment variable
    /// (`UPSTREAM_HOST`), or `file` for a file that is not valid TOML.
    pub key: String,
    /// The value as written (empty when there is none to show).
    pub value: String,
    /// What is allowed, or why the value could not be used.
    pub reason: String,
}

fn bad(key: impl Into<String>, value: impl Into<String>, reason: impl Into<String>) -> ConfigError {
    ConfigError {
        key: key.into(),
        value: value.into(),
        reason: reason.into(),
    }
}

/// Parses a size in bytes: digits and an optional unit, binary (`KiB`/`K` to `TiB`/`T`) or
/// decimal (`KB` to `TB`): `1048576`, `64KiB`, `1MiB`, `20GiB`, `10GB`.
///
/// # Errors
///
/// No leading number, an unknown unit, or a size over `u64`: the reason, for a [`ConfigError`].
pub fn parse_size(s: &str) -> Result<u64, String> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: u64 = num.parse().map_err(|_| {
        "expected a number with an optional unit (KiB, MiB, GiB, TiB, KB, MB, GB, TB)".to_string()
    })?;
    let mult: u64 = match unit.trim() {
        "" | "B" => 1,
        "KiB" | "K" => 1 << 10,
        "MiB" | "M" => 1 << 20,
        "GiB" | "G" => 1 << 30,
        "TiB" | "T" => 1 << 40,
        "KB" => 1_000,
        "MB" => 1_000_000,
        "GB" => 1_000_000_000,
        "TB" => 1_000_000_000_000,
        u => {
            return Err(format!(
                "unknown unit {u:?} (KiB, MiB, GiB, TiB, KB, MB, GB, TB)"
            ));
        }
    };
    n.checked_mul(mult).ok_or_else(|| "too large".to_string())
}

/// Parses a duration: digits and a unit `ms`, `s` (the default), `m`, `h` or `d`: `500ms`,
/// `10s`, `2m`, `1h`, `1d`.
///
/// # Errors
///
/// No leading number, an unknown unit, or a number of seconds over `u64`: the reason, for a
/// [`ConfigError`].
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: u64 = num
        .parse()
        .map_err(|_| "expected a number with a unit (ms, s, m, h, d)".to_string())?;
    let secs = |mult: u64| {
        n.checked_mul(mult)
            .map(Duration::from_secs)
            .ok_or_else(|| "too large".to_string())
    };
    match unit {
        "ms" => Ok(Duration::from_millis(n)),
        "s" | "" => secs(1),
        "m" => secs(60),
        "h" => secs(3600),
        "d" => secs(86_400),
        u => Err(format!("unknown unit {u:?} (ms, s, m, h, d)")),
    }
}

/// The hosts served with no configuration: Device Update and Windows Update content.
pub const DEFAULT_ORIGINS: &[&str] = &[
    "*.dl.adu.microsoft.com",
    "*.dl.delivery.mp.microsoft.com",
    "*.download.windowsupdate.com",
];

/// The default `key_query` of an origin with host pattern `host`: `false` for the built-in
/// Microsoft origins ([`DEFAULT_ORIGINS`]) and any pattern within them
/// (`*.dl.delivery.mp.microsoft.com`, `2.tlu.dl.delivery.mp.microsoft.com`), `true` for every
/// other. Delivery Optimization and Windows Update URLs carry per-device signed query
/// parameters (`/filestreamingservice/files/<id>?P1=...&P2=...&P3=...&P4=...`) around content
/// the path names, so keyed by the path alone devices share one stored copy (as nginx-based
/// update caches do, whose key is the path); the query still goes upstream unchanged.
pub fn key_query_default(host: &str) -> bool {
    let name = host.strip_prefix("*.").unwrap_or(host);
    !DEFAULT_ORIGINS
        .iter()
        .any(|d| d == &host || Origin::pattern_matches(d, name))
}

/// Checks a host pattern (`name`, `*.suffix` or an address, optionally `:port`): the
/// pattern as matched (lower case, no port) and the port if one was written.
fn host_pattern(key: &str, v: &str) -> Result<(String, Option<u16>), ConfigError> {
    let (wild, rest) = match v.strip_prefix("*.") {
        Some(r) => (true, r),
        None => (false, v),
    };
    let a = Authority::parse(rest).map_err(|e| bad(key, v, e.to_string()))?;
    let host = match (&a.host, wild) {
        // A wildcard over a top-level domain (`*.com`) would allow half the internet.
        (Host::Name(n), true) if !n.contains('.') => {
            return Err(bad(
                key,
                v,
                "a wildcard needs at least two labels after \"*.\"",
            ));
        }
        (Host::Name(n), true) => format!("*.{n}"),
        (_, true) => return Err(bad(key, v, "a wildcard needs a name after \"*.\"")),
        (h, false) => h.to_string(),
    };
    Ok((host, a.port))
}

/// Checks a name (a canonical key namespace): a host name without a port.
fn name_ok(key: &str, v: &str) -> Result<String, ConfigError> {
    match authority::parse_host(v) {
        Ok(Host::Name(n)) => Ok(n),
        Ok(_) => Err(bad(key, v, "must be a name, not an address")),
        Err(e) => Err(bad(key, v, e.to_string())),
    }
}

/// Checks `host[:port]` (a name, an IPv4 address or a bracketed IPv6 one) and returns it with
/// the port spelled out.
fn authority(key: &str, v: &str, default_port: u16) -> Result<String, ConfigError> {
    let v = v.trim();
    let v = v.strip_prefix("http://").unwrap_or(v).trim_end_matches('/');
    let a = Authority::parse(v).map_err(|e| {
        bad(
            key,
            v,
            format!("must be host[:port], e.g. parent.example.org:80 ({e})"),
        )
    })?;
    Ok(a.with_port(Some(a.port_or(default_port))).to_string())
}

/// The certificates of a PEM file, as DER; an unreadable file, or one without a certificate,
/// is an error naming `upstream.ca_file`.
fn load_ca_file(path: &std::path::Path) -> Result<Vec<Vec<u8>>, ConfigError> {
    let key = "upstream.ca_file";
    let shown = path.display().to_string();
    let pem = std::fs::read(path).map_err(|e| bad(key, &shown, format!("cannot read: {e}")))?;
    let mut certs = Vec::new();
    for item in ureq::tls::parse_pem(&pem) {
        match item {
            Ok(ureq::tls::PemItem::Certificate(c)) => certs.push(c.der().to_vec()),
            Ok(_) => {}
            Err(e) => return Err(bad(key, &shown, format!("bad PEM: {e}"))),
        }
    }
    if certs.is_empty() {
        return Err(bad(key, shown, "holds no PEM certificate"));
    }
    Ok(certs)
}

fn scheme_https(key: &str, s: Option<&str>) -> Result<bool, ConfigError> {
    match s {
        None | Some("http") => Ok(false),
        Some("https") => Ok(true),
        Some(other) => Err(bad(key, other, "must be \"http\" or \"https\"")),
    }
}

/// Is `p` a path a route can be joined to: visible ASCII, no query, already normalised (RFC
/// 3986 §5.2.4), nothing an origin could decode into a separator, and ending with '/' (so a
/// prefix `/deb/` never reaches `/debian-private/` through `/debian` + `-private/`)?
fn routed_path_ok(p: &str) -> bool {
    use crate::http::path;
    path::check_target(p).is_ok()
        && !p.contains('?')
        && p.ends_with('/')
        && path::remove_dot_segments(p).is_ok_and(|n| n == p)
        && path::check_routed(p).is_ok()
}

/// Splits `http://host[:port][/path]` into (https, authority with its port, path).
fn parse_origin_url(key: &str, url: &str) -> Result<(bool, Authority, String), ConfigError> {
    let (https, rest) = if let Some(r) = url.strip_prefix("http://") {
        (false, r)
    } else if let Some(r) = url.strip_prefix("https://") {
        (true, r)
    } else {
        return Err(bad(key, url, "must start with http:// or https://"));
    };
    let (host, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    let a = Authority::parse(host).map_err(|e| bad(key, url, e.to_string()))?;
    if !routed_path_ok(path) {
        return Err(bad(
            key,
            url,
            "the path must be plain ASCII, normalised (no '.' or '..' segments, no encoded \
             '/'), end with '/', and have no query or fragment",
        ));
    }
    let port = a.port_or(authority::default_port(https));
    Ok((https, a.with_port(Some(port)), path.to_string()))
}

impl RawConfig {
    /// The original module's environment variables, over the file: `UPSTREAM_HOST` (the
    /// parent cache; empty means none), `UPSTREAM_PROXY`, `CACHEABLE_CUSTOM_<N>_HOST` and
    /// `_CANONICAL` (extra origins), `STORAGE_<N>_SIZE_GB` (drive N, a directory
    /// `<GATECACHE_STORAGE_ROOT>/<N>`, by default under /var/cache/gatecache; these replace the
    /// file's `[[storage]]`), `IS_SUMMARY_ACCESS_UNRESTRICTED`. A bad value names its variable.
    pub fn apply_env(&mut self, get: impl Fn(&str) -> Option<String>) -> Result<(), ConfigError> {
        let get = |k: &str| get(k).map(|v| v.trim().to_string());
        for n in 1..=99 {
            let var = format!("CACHEABLE_CUSTOM_{n}_HOST");
            let Some(h) = get(&var).filter(|h| !h.is_empty()) else {
                continue;
            };
            // The original takes host[:port]: the port is where the origin is fetched.
            host_pattern(&var, &h)?;
            let cvar = format!("CACHEABLE_CUSTOM_{n}_CANONICAL");
            let canonical = get(&cvar).filter(|c| !c.is_empty());
            if let Some(c) = &canonical {
                name_ok(&cvar, c)?;
            }
            self.env_origins += 1;
            self.origin.push(RawOrigin {
                host: h,
                canonical,
                connect: None,
                scheme: None,
                ports: None,
                deny_private: None,
                key_query: None,
                immutable: None,
            });
        }
        let root = get("GATECACHE_STORAGE_ROOT")
            .filter(|r| !r.is_empty())
            .unwrap_or_else(|| "/var/cache/gatecache".into());
        let mut drives = Vec::new();
        for n in 1..=9 {
            let var = format!("STORAGE_{n}_SIZE_GB");
            let Some(v) = get(&var).filter(|v| !v.is_empty()) else {
                continue;
            };
            match v.parse::<u64>() {
                Ok(gb) if gb >= 1 => drives.push(RawStorage {
                    path: PathBuf::from(&root).join(n.to_string()),
                    size: format!("{gb}GB"),
                }),
                _ => return Err(bad(var, v, "must be a whole number of GB, at least 1")),
            }
        }
        if !drives.is_empty() {
            self.storage = drives;
        }
        if let Some(v) = get("IS_SUMMARY_ACCESS_UNRESTRICTED") {
            self.summary_unrestricted = Some(match v.to_ascii_lowercase().as_str() {
                "true" | "1" | "yes" => true,
                "false" | "0" | "no" | "" => false,
                _ => {
                    return Err(bad(
                        "IS_SUMMARY_ACCESS_UNRESTRICTED",
                        v,
                        "must be true or false",
                    ));
                }
            });
        }
        if let Some(p) = get("UPSTREAM_PROXY") {
            let p = p.trim();
            self.upstream.proxy = (!p.is_empty()).then(|| p.to_string());
            self.proxy_from_env = true;
        }
        if let Some(h) = get("UPSTREAM_HOST") {
            let h = h.trim();
            self.upstream.parents = if h.is_empty() {
                Vec::new()
            } else {
                vec![h.to_string()]
            };
            self.parents_from_env = true;
        }
        Ok(())
    }

    /// Parses the TOML file's text. Nothing is checked beyond the shape (unknown keys and
    /// wrong types are refused).
    ///
    /// # Errors
    ///
    /// Text that is not TOML of this shape: a [`ConfigError`] with key `file`, the reason
    /// and the byte span.
    pub fn from_toml(text: &str) -> Result<RawConfig, ConfigError> {
        toml::from_str(text).map_err(|e| {
            let span = e
                .span()
                .map(|s| format!(" at bytes {}..{}", s.start, s.end))
                .unwrap_or_default();
            bad("file", "", format!("{}{span}", e.message()))
        })
    }

    /// Validates into a [`Config`], one section at a time (general, storage, origins,
    /// routes, rules, upstream); the first bad value stops it.
    ///
    /// Pure: no file is read. `upstream.ca_file` is kept as a path (`upstream.ca_certs` stays
    /// empty) and a default `node_name` is `gatecache:<port>` until
    /// [`Config::load_resources`] reads them. (The default `workers` asks the system how many
    /// cores this process may use.)
    ///
    /// # Errors
    ///
    /// The first bad value, as a [`ConfigError`] naming its key or environment variable.
    pub fn validate(self) -> Result<Config, ConfigError> {
        let general = general_section(RawGeneral {
            listen: self.listen,
            admin_listen: self.admin_listen,
            workers: self.workers,
            io_backend: self.io_backend,
            head_timeout: self.head_timeout,
            idle_timeout: self.idle_timeout,
            node_name: self.node_name,
            access_log: self.access_log,
            summary_unrestricted: self.summary_unrestricted,
            shutdown_grace: self.shutdown_grace,
        })?;
        let store = storage_section(RawStore {
            block_size: self.block_size,
            slab_size: self.slab_size,
            sync_data: self.sync_data,
            drives: self.storage,
        })?;
        let builtin_origins = self.origin.len() == self.env_origins && self.route.is_empty();
        let origins = origin_section(self.origin, builtin_origins)?;
        let routes = route_section(self.route)?;
        let rules = rule_section(self.rule)?;
        let upstream = upstream_section(
            self.upstream,
            &UpstreamContext {
                parents_from_env: self.parents_from_env,
                proxy_from_env: self.proxy_from_env,
                workers: general.workers,
                block_size: store.block_size,
            },
        )?;
        Ok(Config {
            listen: general.listen,
            admin_listen: general.admin_listen,
            workers: general.workers,
            head_timeout: general.head_timeout,
            idle_timeout: general.idle_timeout,
            io_backend: general.io_backend,
            node_name_from_host: general.node_name.is_none(),
            node_name: general
                .node_name
                .unwrap_or_else(|| default_node_name("", general.listen.port())),
            access_log: general.access_log,
            summary_unrestricted: general.summary_unrestricted,
            shutdown_grace: general.shutdown_grace,
            store,
            origins,
            routes,
            rules,
            upstream,
        })
    }
}

impl Config {
    /// Reads what validation only names, and returns the configuration ready to serve: the
    /// certificates of `upstream.ca_file` (as DER, into `upstream.ca_certs`) and, when
    /// `node_name` was not configured, this machine's host name into `node_name`
    /// (`<host name>:<listen port>`, unique per host and port; `gatecache:<port>` when the
    /// host name cannot be read). Calling it again reads them again.
    ///
    /// # Errors
    ///
    /// `upstream.ca_file` unreadable, not PEM, or holding no certificate: a [`ConfigError`]
    /// naming `upstream.ca_file`.
    pub fn load_resources(mut self) -> Result<Config, ConfigError> {
        if let Some(path) = &self.upstream.ca_file {
            self.upstream.ca_certs = load_ca_file(path)?;
        }
        if self.node_name_from_host {
            self.node_name = default_node_name(&host_name(), self.listen.port());
        }
        Ok(self)
    }
}

/// This machine's host name, or "" when it cannot be read.
fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_default()
}

/// The default `node_name`: `<host>:<port>`, so that several caches on one machine (tests, a
/// lab chain) never take each other's Via for their own; `gatecache:<port>` without a host.
fn default_node_name(host: &str, port: u16) -> String {
    let host = if host.is_empty() { "gatecache" } else { host };
    format!("{host}:{port}")
}

/// The top-level keys about listening, serving clients and logging, as written.
struct RawGeneral {
    listen: Option<String>,
    admin_listen: Option<String>,
    workers: Option<usize>,
    io_backend: Option<String>,
    head_timeout: Option<String>,
    idle_timeout: Option<String>,
    node_name: Option<String>,
    access_log: Option<String>,
    summary_unrestricted: Option<bool>,
    shutdown_grace: Option<String>,
}

/// [`RawGeneral`], validated and defaulted.
struct General {
    listen: SocketAddr,
    admin_listen: SocketAddr,
    workers: usize,
    io_backend: IoBackend,
    head_timeout: Duration,
    idle_timeout: Duration,
    /// `None`: not configured (named after the host by [`Config::load_resources`]).
    node_name: Option<String>,
    access_log: String,
    summary_unrestricted: bool,
    shutdown_grace: Duration,
}

/// The general section: listeners, workers, backend, timeouts, node name, access log.
fn general_section(raw: RawGeneral) -> Result<General, ConfigError> {
    let ten_secs = Duration::from_secs(10);
    Ok(General {
        listen: socket_addr("listen", raw.listen, "0.0.0.0:80")?,
        admin_listen: socket_addr("admin_listen", raw.admin_listen, "127.0.0.1:9180")?,
        workers: workers(raw.workers)?,
        io_backend: io_backend(raw.io_backend.as_deref())?,
        node_name: node_name(raw.node_name)?,
        access_log: access_log(raw.access_log)?,
        shutdown_grace: shutdown_grace(&raw.shutdown_grace)?,
        head_timeout: positive_duration("head_timeout", &raw.head_timeout, ten_secs)?,
        idle_timeout: positive_duration("idle_timeout", &raw.idle_timeout, 6 * ten_secs)?,
        summary_unrestricted: raw.summary_unrestricted.unwrap_or(false),
    })
}

/// `v` (else `default`) as an `address:port`.
fn socket_addr(key: &str, v: Option<String>, default: &str) -> Result<SocketAddr, ConfigError> {
    let v = v.unwrap_or_else(|| default.to_string());
    v.parse()
        .map_err(|_| bad(key, v.clone(), "must be an address:port such as 0.0.0.0:80"))
}

/// `workers`: 1 to 1024; absent or 0 is one per core this process may use.
fn workers(v: Option<usize>) -> Result<usize, ConfigError> {
    match v {
        None | Some(0) => Ok(std::thread::available_parallelism().map_or(1, |n| n.get())),
        Some(n) if n <= 1024 => Ok(n),
        Some(n) => Err(bad(
            "workers",
            n.to_string(),
            "must be 0 (one per core) to 1024",
        )),
    }
}

/// `io_backend`: `auto` (the default), `uring` or `epoll`.
fn io_backend(v: Option<&str>) -> Result<IoBackend, ConfigError> {
    match v {
        None | Some("auto") => Ok(IoBackend::Auto),
        Some("uring") => Ok(IoBackend::Uring),
        Some("epoll") => Ok(IoBackend::Epoll),
        Some(v) => Err(bad("io_backend", v, "must be auto, uring or epoll")),
    }
}

/// `node_name`: one token (visible ASCII, no comma), or `None` when not configured.
fn node_name(v: Option<String>) -> Result<Option<String>, ConfigError> {
    match v {
        None => Ok(None),
        Some(n) if !n.is_empty() && n.bytes().all(|b| b.is_ascii_graphic() && b != b',') => {
            Ok(Some(n))
        }
        Some(n) => Err(bad(
            "node_name",
            n,
            "must be one token: no spaces or commas",
        )),
    }
}

/// `access_log`: `stderr` (the default), `stdout`, `off` or an absolute file path.
fn access_log(v: Option<String>) -> Result<String, ConfigError> {
    let v = v.unwrap_or_else(|| "stderr".into());
    if matches!(v.as_str(), "stderr" | "stdout" | "off") || v.starts_with('/') {
        return Ok(v);
    }
    Err(bad(
        "access_log",
        v,
        "must be \"stderr\", \"stdout\", \"off\" or an absolute file path",
    ))
}

/// `shutdown_grace`: more than zero, at most 2 minutes (default 10 s).
fn shutdown_grace(v: &Option<String>) -> Result<Duration, ConfigError> {
    match positive_duration("shutdown_grace", v, Duration::from_secs(10))? {
        // systemd and Docker kill a service that takes much longer to stop.
        d if d > Duration::from_secs(120) => Err(bad(
            "shutdown_grace",
            v.clone().unwrap_or_default(),
            "must be at most 2m (raise TimeoutStopSec / docker stop -t with it)",
        )),
        d => Ok(d),
    }
}

/// A duration key: more than zero; `default` when absent.
fn positive_duration(
    key: &str,
    v: &Option<String>,
    default: Duration,
) -> Result<Duration, ConfigError> {
    match v {
        None => Ok(default),
        Some(v) => match parse_duration(v) {
            Ok(d) if d.is_zero() => Err(bad(key, v, "must be more than zero")),
            Ok(d) => Ok(d),
            Err(r) => Err(bad(key, v, r)),
        },
    }
}

/// The storage keys as written: `block_size`, `slab_size`, `sync_data` and `[[storage]]`.
struct RawStore {
    block_size: Option<String>,
    slab_size: Option<String>,
    sync_data: Option<bool>,
    drives: Vec<RawStorage>,
}

/// The storage section: the sizes are parsed here; the rules (block size, slab size, drive
/// count, drive size, empty or repeated path) are the store's own, [`StoreConfig::validate`],
/// and its refusal is reported under the key that was written.
fn storage_section(raw: RawStore) -> Result<StoreConfig, ConfigError> {
    let size = |key: &str, v: &str| parse_size(v).map_err(|r| bad(key, v, r));
    let block_size = match &raw.block_size {
        // Too large for 32 bits: saturated, which the store refuses (not a power of two).
        Some(v) => Some(u32::try_from(size("block_size", v)?).unwrap_or(u32::MAX)),
        None => None,
    };
    let mut drives = Vec::new();
    if raw.drives.is_empty() {
        drives.push(DriveConfig {
            path: PathBuf::from("gatecache-cache"),
            size: 2 << 30,
        });
    }
    for (i, d) in raw.drives.iter().enumerate() {
        drives.push(DriveConfig {
            path: d.path.clone(),
            size: size(&format!("storage[{i}].size"), &d.size)?,
        });
    }
    let mut store = StoreConfig::new(drives);
    if let Some(bs) = block_size {
        store.block_size = bs;
    }
    if let Some(v) = &raw.slab_size {
        store.slab_size = size("slab_size", v)?;
    }
    if let Some(s) = raw.sync_data {
        store.sync_data = s;
    }
    store.validate().map_err(|e| storage_error(&e, &raw))?;
    Ok(store)
}

/// The store's refusal under the key it comes from, with the value as written.
fn storage_error(e: &StoreConfigError, raw: &RawStore) -> ConfigError {
    let written = |v: &Option<String>, n: u64| v.clone().unwrap_or_else(|| n.to_string());
    let reason = e.reason();
    match e {
        StoreConfigError::BlockSize { block_size } => bad(
            "block_size",
            written(&raw.block_size, (*block_size).into()),
            reason,
        ),
        StoreConfigError::SlabSize { slab_size, .. } => {
            bad("slab_size", written(&raw.slab_size, *slab_size), reason)
        }
        StoreConfigError::DriveCount { count } => {
            bad("storage", format!("{count} directories"), reason)
        }
        StoreConfigError::DriveSize { index, size, .. } => bad(
            format!("storage[{index}].size"),
            raw.drives
                .get(*index)
                .map_or_else(|| size.to_string(), |d| d.size.clone()),
            reason,
        ),
        StoreConfigError::EmptyPath { index } => bad(format!("storage[{index}].path"), "", reason),
        StoreConfigError::DuplicatePath { index, path } => bad(
            format!("storage[{index}].path"),
            path.display().to_string(),
            reason,
        ),
    }
}

/// The origins section: the `[[origin]]` entries (the file's, then the environment's), after
/// the built-in [`DEFAULT_ORIGINS`] when `builtin` (the file names no origin and no route; the
/// environment's `CACHEABLE_CUSTOM_<N>_HOST` add to the defaults).
fn origin_section(raw: Vec<RawOrigin>, builtin: bool) -> Result<Vec<Origin>, ConfigError> {
    let mut origins = Vec::new();
    if builtin {
        origins.extend(DEFAULT_ORIGINS.iter().map(|h| Origin {
            host: h.to_string(),
            port: 80,
            ports: Vec::new(),
            canonical: None,
            connect: None,
            https: false,
            // Per-device tokens in the query: the path names the content.
            key_query: key_query_default(h),
            // Device Update and Windows Update files are named by their content (a default:
            // the origin's own directives win).
            immutable: true,
            // Public CDNs: an answer pointing inside the network is not theirs.
            deny_private: true,
        }));
    }
    for (i, o) in raw.into_iter().enumerate() {
        origins.push(origin(i, o)?);
    }
    Ok(origins)
}

/// One `[[origin]]` entry, `origin[i]`.
fn origin(i: usize, o: RawOrigin) -> Result<Origin, ConfigError> {
    let (host, port) = host_pattern(&format!("origin[{i}].host"), o.host.trim())?;
    let https = scheme_https(&format!("origin[{i}].scheme"), o.scheme.as_deref())?;
    let mut ports = Vec::new();
    for (j, p) in o.ports.iter().flatten().enumerate() {
        match u16::try_from(*p) {
            Ok(p) if p > 0 => ports.push(p),
            _ => {
                let key = format!("origin[{i}].ports[{j}]");
                return Err(bad(key, p.to_string(), "must be 1 to 65535"));
            }
        }
    }
    let connect = match o.connect {
        None => None,
        Some(c) => Some(
            c.parse::<SocketAddr>()
                .ok()
                .filter(|a| a.port() != 0)
                .ok_or_else(|| {
                    bad(
                        format!("origin[{i}].connect"),
                        c.clone(),
                        "must be an address:port such as 127.0.0.1:9000 (port 1-65535)",
                    )
                })?,
        ),
    };
    let canonical = match &o.canonical {
        Some(c) => Some(name_ok(&format!("origin[{i}].canonical"), c)?),
        None => None,
    };
    let key_query = o.key_query.unwrap_or_else(|| key_query_default(&host));
    Ok(Origin {
        host,
        port: port.unwrap_or(authority::default_port(https)),
        ports,
        canonical,
        connect,
        https,
        key_query,
        immutable: o.immutable.unwrap_or(false),
        deny_private: o.deny_private.unwrap_or(false),
    })
}

/// The routes section: the `[[route]]` entries, longest prefix first (so `/debian/security/`
/// wins over `/debian/`).
fn route_section(raw: Vec<RawRoute>) -> Result<Vec<Route>, ConfigError> {
    let mut routes = Vec::new();
    for (i, r) in raw.into_iter().enumerate() {
        routes.push(route(i, r)?);
    }
    routes.sort_by_key(|r| std::cmp::Reverse(r.prefix.len()));
    Ok(routes)
}

/// One `[[route]]` entry, `route[i]`.
fn route(i: usize, r: RawRoute) -> Result<Route, ConfigError> {
    if !r.prefix.starts_with('/') {
        return Err(bad(
            format!("route[{i}].prefix"),
            r.prefix,
            "must start with /",
        ));
    }
    let (https, authority, path) = parse_origin_url(&format!("route[{i}].origin"), &r.origin)?;
    if !routed_path_ok(&r.prefix) {
        return Err(bad(
            format!("route[{i}].prefix"),
            r.prefix,
            "must be plain ASCII, normalised (no '.' or '..' segments), end with '/', \
             and have no query or fragment",
        ));
    }
    Ok(Route {
        prefix: r.prefix,
        host: authority.for_scheme(authority::default_port(https)),
        authority,
        https,
        path,
    })
}

/// The rules section: the `[[rule]]` entries, in the file's order.
fn rule_section(raw: Vec<RawRule>) -> Result<Vec<Rule>, ConfigError> {
    let mut rules = Vec::new();
    for (i, r) in raw.into_iter().enumerate() {
        rules.push(rule(i, r)?);
    }
    Ok(rules)
}

/// One `[[rule]]` entry, `rule[i]`.
fn rule(i: usize, r: RawRule) -> Result<Rule, ConfigError> {
    if !r.path.starts_with('/') && !r.path.starts_with('*') {
        return Err(bad(
            format!("rule[{i}].path"),
            r.path,
            "must start with / or *",
        ));
    }
    let host = match &r.host {
        Some(h) => match host_pattern(&format!("rule[{i}].host"), h)? {
            (p, None) => Some(p),
            (_, Some(_)) => return Err(bad(format!("rule[{i}].host"), h, "takes no port")),
        },
        None => None,
    };
    let max_age = match &r.max_age {
        None => None,
        Some(v) => Some(
            parse_duration(v)
                .map_err(|e| bad(format!("rule[{i}].max_age"), v, e))?
                .as_secs(),
        ),
    };
    if r.immutable.is_none() && max_age.is_none() {
        return Err(bad(
            format!("rule[{i}]"),
            &r.path,
            "needs immutable = true/false or max_age",
        ));
    }
    Ok(Rule {
        path: r.path,
        host,
        fresh: crate::http::freshness::Rule {
            immutable: r.immutable.unwrap_or(false),
            max_age,
            overrides_origin: true,
        },
    })
}

/// What the upstream section needs from outside `[upstream]`.
struct UpstreamContext {
    /// `parents` came from `UPSTREAM_HOST` (errors name the variable).
    parents_from_env: bool,
    /// `proxy` came from `UPSTREAM_PROXY` (errors name the variable).
    proxy_from_env: bool,
    /// The validated `workers`: the default `fetchers` is 8 per worker, at least 16.
    workers: usize,
    /// The validated `block_size`: `window` holds at least one block.
    block_size: u32,
}

/// The upstream section: parents, proxy, CA file (its path only), window, fetchers,
/// timeouts.
fn upstream_section(u: RawUpstream, cx: &UpstreamContext) -> Result<Upstream, ConfigError> {
    let proxy_key = if cx.proxy_from_env {
        "UPSTREAM_PROXY"
    } else {
        "upstream.proxy"
    };
    let proxy = match &u.proxy {
        None => None,
        Some(p) => Some(authority(proxy_key, p, 80)?),
    };
    let mut parents = Vec::new();
    for (i, p) in u.parents.iter().enumerate() {
        let key = if cx.parents_from_env {
            "UPSTREAM_HOST".to_string()
        } else {
            format!("upstream.parents[{i}]")
        };
        parents.push(authority(&key, p, 80)?);
    }
    let window = match &u.window {
        None => 64 << 20,
        Some(v) => match parse_size(v).map_err(|r| bad("upstream.window", v, r))? {
            n if n < u64::from(cx.block_size) => {
                return Err(bad("upstream.window", v, "must be at least one block"));
            }
            n => n,
        },
    };
    let fetchers = match u.fetchers {
        None => (cx.workers * 8).max(16),
        Some(n) if (1..=4096).contains(&n) => n,
        Some(n) => return Err(bad("upstream.fetchers", n.to_string(), "must be 1 to 4096")),
    };
    let secs = Duration::from_secs;
    Ok(Upstream {
        parents,
        direct_fallback: u.direct_fallback.unwrap_or(false),
        parent_backoff: positive_duration("upstream.parent_backoff", &u.parent_backoff, secs(30))?,
        proxy,
        ca_file: u.ca_file,
        // Read by `Config::load_resources`.
        ca_certs: Vec::new(),
        window,
        fetchers,
        connect_timeout: positive_duration(
            "upstream.connect_timeout",
            &u.connect_timeout,
            secs(5),
        )?,
        read_timeout: positive_duration("upstream.read_timeout", &u.read_timeout, secs(15))?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h(s: &str) -> Host {
        authority::parse_host(s).unwrap()
    }

    /// What `gatecache` does with a file: parse, validate, then load the resources named.
    fn cfg(t: &str) -> Result<Config, ConfigError> {
        RawConfig::from_toml(t)?.validate()?.load_resources()
    }

    #[test]
    fn validation_reads_no_file_load_resources_does() {
        let dir = tempfile::tempdir().unwrap();
        let ca = dir.path().join("ca.pem");
        let text = format!(
            "listen = \"127.0.0.1:8081\"\n[upstream]\nca_file = \"{}\"",
            ca.display()
        );
        // Validation keeps the path and a placeholder name; it does not look for the file.
        let c = RawConfig::from_toml(&text).unwrap().validate().unwrap();
        assert_eq!(c.upstream.ca_file.as_deref(), Some(ca.as_path()));
        assert!(c.upstream.ca_certs.is_empty());
        assert!(c.node_name_from_host);
        assert_eq!(c.node_name, "gatecache:8081");
        // Loading reads it, and names the key when it cannot.
        let e = c.clone().load_resources().unwrap_err();
        assert_eq!(
            (e.key.as_str(), e.value.as_str()),
            ("upstream.ca_file", &*ca.to_string_lossy())
        );
        let cert = rcgen::generate_simple_self_signed(vec!["ca.test".to_string()]).unwrap();
        std::fs::write(&ca, cert.cert.pem()).unwrap();
        let c = c.load_resources().unwrap();
        assert_eq!(c.upstream.ca_certs, [cert.cert.der().to_vec()]);
        assert_eq!(c.node_name, default_node_name(&host_name(), 8081));
        assert!(c.node_name.ends_with(":8081") && !c.node_name.starts_with(':'));
        // A configured name is kept.
        let c = cfg("node_name = \"gw-1\"").unwrap();
        assert_eq!(
            (c.node_name.as_str(), c.node_name_from_host),
            ("gw-1", false)
        );
        assert_eq!(default_node_name("", 80), "gatecache:80");
    }

    #[test]
    fn storage_rules_are_the_stores_named_by_key() {
        // The slab holds one region (64 KiB + 4 KiB) behind its 4 KiB header: 72 KiB.
        let slab = |s: &str| cfg(&format!("block_size = \"64KiB\"\nslab_size = \"{s}\""));
        assert_eq!(slab("72KiB").unwrap().store.slab_size, 72 << 10);
        let e = slab("73727").unwrap_err();
        assert_eq!((e.key.as_str(), e.value.as_str()), ("slab_size", "73727"));
        // A drive holds 4 regions: 272 KiB with 64 KiB blocks.
        let drive = |s: &str| {
            cfg(&format!(
                "block_size = \"64KiB\"\n[[storage]]\npath = \"/x\"\nsize = \"{s}\""
            ))
        };
        assert!(drive("272KiB").is_ok());
        let e = drive("278527").unwrap_err();
        assert_eq!(
            (e.key.as_str(), e.value.as_str()),
            ("storage[0].size", "278527")
        );
        for (text, key, value) in [
            ("block_size = \"96KiB\"", "block_size", "96KiB"),
            ("block_size = \"8GiB\"", "block_size", "8GiB"),
            (
                "[[storage]]\npath = \"\"\nsize = \"1GiB\"",
                "storage[0].path",
                "",
            ),
            (
                "[[storage]]\npath = \"/a\"\nsize = \"1GiB\"\n[[storage]]\npath = \"/a\"\nsize = \"2GiB\"",
                "storage[1].path",
                "/a",
            ),
        ] {
            let e = cfg(text).unwrap_err();
            assert_eq!((e.key.as_str(), e.value.as_str()), (key, value), "{text}");
        }
        let many: String = (0..=crate::store::MAX_DRIVES)
            .map(|i| format!("[[storage]]\npath = \"/d{i}\"\nsize = \"1GiB\"\n"))
            .collect();
        assert_eq!(cfg(&many).unwrap_err().key, "storage");
    }

    #[test]
    fn embedded_defaults() {
        let c = cfg("").unwrap();
        assert_eq!(c.listen, "0.0.0.0:80".parse().unwrap());
        assert_eq!(c.admin_listen, "127.0.0.1:9180".parse().unwrap());
        assert_eq!(c.io_backend, IoBackend::Auto);
        assert_eq!(c.store.block_size, 1 << 20);
        assert_eq!(c.store.drives[0].path, PathBuf::from("gatecache-cache"));
        assert!(
            c.origins
                .iter()
                .any(|o| o.matches(&h("x--y.b.nlu.dl.adu.microsoft.com")))
        );
        assert!(
            c.origins
                .iter()
                .any(|o| o.matches(&h("au.download.windowsupdate.com")))
        );
    }

    #[test]
    fn full_file() {
        let c = cfg(r#"
            listen = "127.0.0.1:8080"
            workers = 2
            io_backend = "epoll"
            block_size = "64KiB"
            [[storage]]
            path = "/tmp/gc"
            size = "1GiB"
            [[origin]]
            host = "*.example.org"
            canonical = "ex"
            connect = "127.0.0.1:9000"
            [[route]]
            prefix = "/"
            origin = "http://origin.test:8081"
            [[route]]
            prefix = "/debian/"
            origin = "https://mirror.example.org/debian/"
            [upstream]
            window = "16MiB"
            parents = ["l4-gateway.example.org", "10.0.0.4:8080", "[fd00::4]"]
            direct_fallback = true
            parent_backoff = "10s"
        "#)
        .unwrap();
        assert_eq!(
            c.upstream.parents,
            ["l4-gateway.example.org:80", "10.0.0.4:8080", "[fd00::4]:80"]
        );
        assert!(c.upstream.direct_fallback);
        assert_eq!(c.upstream.parent_backoff, Duration::from_secs(10));
        assert_eq!(c.workers, 2);
        assert_eq!(c.io_backend, IoBackend::Epoll);
        assert_eq!(c.store.block_size, 64 * 1024);
        assert_eq!(c.origins.len(), 1);
        assert_eq!(
            c.origins[0].connect,
            Some("127.0.0.1:9000".parse().unwrap())
        );
        assert_eq!(c.routes[0].prefix, "/debian/");
        assert!(c.routes[0].https);
        assert_eq!(c.routes[1].host, "origin.test:8081");
        assert_eq!(c.upstream.window, 16 << 20);
    }

    #[test]
    fn wildcard_matching() {
        let o = Origin {
            host: "*.example.org".into(),
            port: 80,
            ports: Vec::new(),
            canonical: None,
            connect: None,
            https: false,
            key_query: true,
            immutable: false,
            deny_private: false,
        };
        assert!(o.matches(&h("a.example.org")));
        assert!(o.matches(&h("a.b.example.org")));
        assert!(!o.matches(&h("example.org")));
        assert!(!o.matches(&h("badexample.org")));
        assert!(!o.matches(&h("a.example.org.evil.test")));
        // A wildcard never matches an address; an address entry matches that address only.
        assert!(!o.matches(&h("10.0.0.1")));
        let ip = Origin {
            host: "[fd00::5]".into(),
            ..o
        };
        assert!(ip.matches(&h("[FD00:0::5]")));
        assert!(!ip.matches(&h("[fd00::6]")));
    }

    #[test]
    fn each_bad_value_names_its_key() {
        for (text, key) in [
            ("listen = \"nope\"", "listen"),
            ("admin_listen = \"1.2.3.4\"", "admin_listen"),
            ("workers = 5000", "workers"),
            ("io_backend = \"kqueue\"", "io_backend"),
            ("block_size = \"1000\"", "block_size"),
            ("block_size = \"32MiB\"", "block_size"),
            ("block_size = \"1XB\"", "block_size"),
            ("slab_size = \"1KiB\"", "slab_size"),
            (
                "[[storage]]\npath = \"/x\"\nsize = \"1MiB\"",
                "storage[0].size",
            ),
            (
                "[[storage]]\npath = \"/x\"\nsize = \"1GiB\"\n[[storage]]\npath = \"/x\"\nsize = \"1GiB\"",
                "storage[1].path",
            ),
            ("[[origin]]\nhost = \"bad host\"", "origin[0].host"),
            (
                "[[origin]]\nhost = \"a.test\"\nconnect = \"x\"",
                "origin[0].connect",
            ),
            (
                "[[origin]]\nhost = \"a.test\"\nscheme = \"ftp\"",
                "origin[0].scheme",
            ),
            (
                "[[route]]\nprefix = \"x\"\norigin = \"http://a.test\"",
                "route[0].prefix",
            ),
            (
                "[[route]]\nprefix = \"/\"\norigin = \"a.test\"",
                "route[0].origin",
            ),
            ("[upstream]\nwindow = \"1KiB\"", "upstream.window"),
            ("[upstream]\nfetchers = 0", "upstream.fetchers"),
            (
                "[upstream]\nread_timeout = \"5 parsecs\"",
                "upstream.read_timeout",
            ),
            ("unknown_key = 1", "file"),
            ("[upstream]\nparents = [\"a b\"]", "upstream.parents[0]"),
            (
                "[upstream]\nparents = [\"p.example.org\", \"p.example.org:0\"]",
                "upstream.parents[1]",
            ),
            (
                "[upstream]\nparents = [\"*.example.org\"]",
                "upstream.parents[0]",
            ),
            (
                "[upstream]\nparent_backoff = \"0s\"",
                "upstream.parent_backoff",
            ),
            (
                "[upstream]\nproxy = \"proxy.example.org:99999\"",
                "upstream.proxy",
            ),
            (
                "[upstream]\nca_file = \"/nonexistent/ca.pem\"",
                "upstream.ca_file",
            ),
            // A file that exists but holds no certificate.
            (
                "[upstream]\nca_file = \"/proc/self/status\"",
                "upstream.ca_file",
            ),
            ("[[rule]]\npath = \"*.deb\"", "rule[0]"),
            ("shutdown_grace = \"5m\"", "shutdown_grace"),
            ("access_log = \"relative/path.log\"", "access_log"),
            ("[[rule]]\npath = \"x\"\nimmutable = true", "rule[0].path"),
            (
                "[[rule]]\npath = \"*\"\nmax_age = \"soon\"",
                "rule[0].max_age",
            ),
        ] {
            let e = cfg(text).unwrap_err();
            assert_eq!(e.key, key, "{text}: {e}");
            assert!(!e.reason.is_empty());
        }
    }

    #[test]
    fn upstream_host_env() {
        let env = |v: &'static str| move |k: &str| (k == "UPSTREAM_HOST").then(|| v.to_string());
        let mut raw = RawConfig::from_toml("[upstream]\nparents = [\"a.example.org\"]").unwrap();
        raw.apply_env(env("l4.example.org:8080")).unwrap();
        let c = raw.validate().unwrap();
        assert_eq!(c.upstream.parents, ["l4.example.org:8080"]);
        // Empty: this node talks to the origin.
        let mut raw = RawConfig::from_toml("[upstream]\nparents = [\"a.example.org\"]").unwrap();
        raw.apply_env(env("")).unwrap();
        assert!(raw.validate().unwrap().upstream.parents.is_empty());
        let mut raw = RawConfig::default();
        raw.apply_env(env("bad host")).unwrap();
        assert_eq!(raw.validate().unwrap_err().key, "UPSTREAM_HOST");
        let mut raw = RawConfig::default();
        raw.apply_env(|k| (k == "UPSTREAM_PROXY").then(|| "dmz-proxy.example.org:3128".into()))
            .unwrap();
        assert_eq!(
            raw.validate().unwrap().upstream.proxy.as_deref(),
            Some("dmz-proxy.example.org:3128")
        );
        let mut raw = RawConfig::default();
        raw.apply_env(|k| (k == "UPSTREAM_PROXY").then(|| "no good:1".into()))
            .unwrap();
        assert_eq!(raw.validate().unwrap_err().key, "UPSTREAM_PROXY");
    }

    #[test]
    fn package_files_are_immutable_index_files_are_not() {
        let c = cfg("[[origin]]\nhost = \"deb.example.org\"").unwrap();
        let o = c.origins.first();
        let rule = |p: &str| c.fresh_rule(&h("deb.example.org"), p, o).immutable;
        assert!(rule("/debian/pool/main/h/hello/hello_2.10-3_amd64.deb"));
        assert!(rule(
            "/debian/dists/stable/main/binary-amd64/by-hash/SHA256/0a1b"
        ));
        assert!(!rule("/debian/dists/stable/InRelease"));
        assert!(!rule("/debian/dists/stable/main/binary-amd64/Packages.xz"));
        // A default: it yields to the origin's directives.
        let r = c.fresh_rule(&h("deb.example.org"), "/pool/a.deb", o);
        assert_eq!(r, crate::http::freshness::Rule::DEFAULT_IMMUTABLE);
        // An operator's rule wins, over the default and the origin.
        let c = cfg("[[rule]]\npath = \"*.deb\"\nmax_age = \"1m\"").unwrap();
        let r = c.fresh_rule(&h("x.example.org"), "/a.deb", None);
        assert_eq!(
            (r.immutable, r.max_age, r.overrides_origin),
            (false, Some(60), true)
        );
    }

    /// The built-in origins' immutability is a default; `[[origin]] immutable` too (only a
    /// `[[rule]]` overrides the origin, RFC 9111 §4.2.2 for what a default may do).
    #[test]
    fn origin_immutability_is_a_default_rules_override() {
        let c = cfg("").unwrap();
        let o = c
            .origins
            .iter()
            .find(|o| o.matches(&h("x.dl.delivery.mp.microsoft.com")));
        assert!(o.is_some_and(|o| o.immutable));
        let r = c.fresh_rule(&h("x.dl.delivery.mp.microsoft.com"), "/f/1", o);
        assert_eq!(r, crate::http::freshness::Rule::DEFAULT_IMMUTABLE);
        let c = cfg("[[origin]]\nhost = \"du.test\"\nimmutable = true\n\
                     [[rule]]\nhost = \"du.test\"\npath = \"/pinned/*\"\nimmutable = true")
        .unwrap();
        let o = c.origins.first();
        let r = c.fresh_rule(&h("du.test"), "/blob", o);
        assert!(r.immutable && !r.overrides_origin, "{r:?}");
        let r = c.fresh_rule(&h("du.test"), "/pinned/blob", o);
        assert!(r.immutable && r.overrides_origin, "{r:?}");
    }

    /// Delivery Optimization / Windows Update URLs carry per-device tokens in the query: the
    /// built-in origins, and configured ones within them, key without it unless told to.
    #[test]
    fn microsoft_update_origins_key_without_the_query() {
        let c = cfg("").unwrap();
        assert_eq!(c.origins.len(), DEFAULT_ORIGINS.len());
        assert!(c.origins.iter().all(|o| !o.key_query), "{:?}", c.origins);
        for (host, keeps) in [
            ("*.dl.delivery.mp.microsoft.com", false),
            ("*.tlu.dl.delivery.mp.microsoft.com", false),
            ("2.tlu.dl.delivery.mp.microsoft.com", false),
            ("*.download.windowsupdate.com", false),
            ("au.download.windowsupdate.com", false),
            ("*.dl.adu.microsoft.com", false),
            // Not within a built-in pattern: the general default.
            ("dl.delivery.mp.microsoft.com", true),
            ("*.mp.microsoft.com", true),
            ("*.windowsupdate.com", true),
            ("x.dl.delivery.mp.microsoft.com.evil.test", true),
            ("deb.example.org", true),
        ] {
            assert_eq!(key_query_default(host), keeps, "{host}");
            let c = cfg(&format!("[[origin]]\nhost = \"{host}\"")).unwrap();
            assert_eq!(c.origins[0].key_query, keeps, "{host}");
        }
        // The setting stays per origin.
        let text = "[[origin]]\nhost = \"*.dl.delivery.mp.microsoft.com\"\nkey_query = true\n\
                    [[origin]]\nhost = \"deb.example.org\"\nkey_query = false";
        let c = cfg(text).unwrap();
        assert!(c.origins[0].key_query && !c.origins[1].key_query);
    }

    #[test]
    fn the_original_modules_env() {
        let vars = [
            ("CACHEABLE_CUSTOM_1_HOST", "packages.example.com:80"),
            ("CACHEABLE_CUSTOM_1_CANONICAL", "packages"),
            ("CACHEABLE_CUSTOM_2_HOST", "*.mirror.example.org"),
            ("STORAGE_1_SIZE_GB", "10"),
            ("STORAGE_2_SIZE_GB", "25"),
            ("GATECACHE_STORAGE_ROOT", "/srv/cache"),
            ("IS_SUMMARY_ACCESS_UNRESTRICTED", "TRUE"),
        ];
        let get = |k: &str| {
            vars.iter()
                .find(|(n, _)| *n == k)
                .map(|(_, v)| v.to_string())
        };
        let mut raw = RawConfig::from_toml("[[storage]]\npath = \"/x\"\nsize = \"1GiB\"").unwrap();
        raw.apply_env(get).unwrap();
        let c = raw.validate().unwrap();
        // The defaults stay (no origin in the file), the custom ones are added.
        assert_eq!(c.origins.len(), DEFAULT_ORIGINS.len() + 2);
        let custom = &c.origins[DEFAULT_ORIGINS.len()..];
        assert_eq!(custom[0].host, "packages.example.com");
        assert_eq!(custom[0].canonical.as_deref(), Some("packages"));
        assert!(custom[1].matches(&h("eu.mirror.example.org")));
        let d: Vec<_> = c
            .store
            .drives
            .iter()
            .map(|d| (d.path.clone(), d.size))
            .collect();
        assert_eq!(
            d,
            [
                (PathBuf::from("/srv/cache/1"), 10_000_000_000),
                (PathBuf::from("/srv/cache/2"), 25_000_000_000)
            ]
        );
        assert!(c.summary_unrestricted);
        // Each bad value names its variable.
        for (var, v) in [
            ("CACHEABLE_CUSTOM_3_HOST", "not a host"),
            ("STORAGE_4_SIZE_GB", "ten"),
            ("STORAGE_4_SIZE_GB", "0"),
            ("IS_SUMMARY_ACCESS_UNRESTRICTED", "maybe"),
        ] {
            let e = RawConfig::default()
                .apply_env(|k| (k == var).then(|| v.to_string()))
                .unwrap_err();
            assert_eq!(e.key, var);
            assert_eq!(e.value, v);
        }
    }

    #[test]
    fn origin_ports_and_deny_private() {
        let c = cfg(r#"
            [[origin]]
            host = "Mirror.Example.org:8080"
            ports = [8081]
            [[origin]]
            host = "tls.example.org"
            scheme = "https"
            deny_private = true
            "#)
        .unwrap();
        let (m, t) = (&c.origins[0], &c.origins[1]);
        assert_eq!((m.host.as_str(), m.port), ("mirror.example.org", 8080));
        assert!(m.allows_port(8080) && m.allows_port(8081) && !m.allows_port(80));
        assert!(!m.deny_private);
        assert_eq!(t.port, 443);
        assert!(t.allows_port(443) && !t.allows_port(80));
        assert!(t.deny_private);
        // The built-in origins are public CDNs: private answers are refused.
        assert!(cfg("").unwrap().origins.iter().all(|o| o.deny_private));
        for (text, key) in [
            (
                "[[origin]]\nhost = \"a.test\"\nports = [0]",
                "origin[0].ports[0]",
            ),
            (
                "[[origin]]\nhost = \"a.test\"\nports = [65536]",
                "origin[0].ports[0]",
            ),
            ("[[origin]]\nhost = \"a.test:x\"", "origin[0].host"),
            ("[[origin]]\nhost = \"a.test:0\"", "origin[0].host"),
            ("[[origin]]\nhost = \"u@a.test\"", "origin[0].host"),
            ("[[origin]]\nhost = \"a.test/x\"", "origin[0].host"),
            ("[[origin]]\nhost = \"*.10.0.0.1\"", "origin[0].host"),
            ("[[origin]]\nhost = \"127.1\"", "origin[0].host"),
            (
                "[[route]]\nprefix = \"/a/\"\norigin = \"http://a.test?x/\"",
                "route[0].origin",
            ),
            (
                "[[route]]\nprefix = \"/a/\"\norigin = \"http://a.test/p?q\"",
                "route[0].origin",
            ),
            (
                "[[route]]\nprefix = \"/a#\"\norigin = \"http://a.test/\"",
                "route[0].prefix",
            ),
            (
                "[upstream]\nparents = [\"p.test:8080/x\"]",
                "upstream.parents[0]",
            ),
            ("[[origin]]\nhost = \"*.com\"", "origin[0].host"),
            (
                "[[origin]]\nhost = \"a.test\"\nconnect = \"[::1]:0\"",
                "origin[0].connect",
            ),
            (
                "[[route]]\nprefix = \"/deb/\"\norigin = \"http://a.test/debian\"",
                "route[0].origin",
            ),
            (
                "[[route]]\nprefix = \"/deb\"\norigin = \"http://a.test/debian/\"",
                "route[0].prefix",
            ),
            (
                "[[route]]\nprefix = \"/../\"\norigin = \"http://a.test/\"",
                "route[0].prefix",
            ),
            (
                "[[route]]\nprefix = \"/a/\"\norigin = \"http://a.test/x/../../\"",
                "route[0].origin",
            ),
            (
                "[[route]]\nprefix = \"/a/\"\norigin = \"http://a.test/%2e%2e/\"",
                "route[0].origin",
            ),
        ] {
            assert_eq!(cfg(text).unwrap_err().key, key, "{text}");
        }
    }

    #[test]
    fn custom_host_env_port_is_where_the_origin_is_fetched() {
        let mut raw = RawConfig::from_toml("").unwrap();
        let get =
            |k: &str| (k == "CACHEABLE_CUSTOM_1_HOST").then(|| "pkgs.example.com:8080".to_string());
        raw.apply_env(get).unwrap();
        let c = raw.validate().unwrap();
        let o = c
            .origins
            .iter()
            .find(|o| o.host == "pkgs.example.com")
            .unwrap();
        assert_eq!(o.port, 8080);
        assert!(!o.allows_port(80));
        let mut raw = RawConfig::from_toml("").unwrap();
        let get =
            |k: &str| (k == "CACHEABLE_CUSTOM_1_HOST").then(|| "pkgs.example.com:x".to_string());
        assert_eq!(
            raw.apply_env(get).unwrap_err().key,
            "CACHEABLE_CUSTOM_1_HOST"
        );
    }

    #[test]
    fn rendered_config_reads_back_the_same() {
        let text = r#"
            listen = "127.0.0.1:8080"
            workers = 2
            head_timeout = "1500ms"
            access_log = "/var/log/gatecache/access.log"
            [[storage]]
            path = "/tmp/gc"
            size = "1GiB"
            [[origin]]
            host = "*.example.org"
            canonical = "ex"
            connect = "127.0.0.1:9000"
            immutable = true
            [[origin]]
            host = "mirror.example.com:8080"
            ports = [8081, 8082]
            deny_private = true
            [[route]]
            prefix = "/debian/"
            origin = "https://mirror.example.org/debian/"
            [[route]]
            prefix = "/alt/"
            origin = "http://[fd00::5]:8080/alt/"
            [[rule]]
            path = "*/InRelease"
            max_age = "5m"
            [upstream]
            parents = ["l4.example.org"]
            proxy = "dmz-proxy.example.org:3128"
        "#;
        let a = cfg(text).unwrap();
        let rendered = a.render();
        let b = RawConfig::from_toml(&rendered)
            .unwrap_or_else(|e| panic!("{e}\n{rendered}"))
            .validate()
            .unwrap();
        assert_eq!(b.render(), rendered);
        assert_eq!(b.origins, a.origins);
        assert_eq!(b.routes, a.routes);
        assert_eq!(b.rules, a.rules);
        assert_eq!(b.head_timeout, Duration::from_millis(1500));
        assert!(
            rendered.contains("parents = [\"l4.example.org:80\"]"),
            "{rendered}"
        );
    }

    #[test]
    fn globs() {
        for (p, t, want) in [
            ("*", "/anything", true),
            ("*.deb", "/pool/a_1.0_all.deb", true),
            ("*.deb", "/pool/a.debx", false),
            ("*/InRelease", "/debian/dists/stable/InRelease", true),
            ("/pool/*", "/pool/x", true),
            ("/pool/*", "/dists/pool/x", false),
            ("/a/*/b/*.gz", "/a/x/y/b/P.gz", true),
            ("/exact", "/exact", true),
            ("/exact", "/exact/more", false),
        ] {
            assert_eq!(glob(p, t), want, "{p} ~ {t}");
        }
    }

    #[test]
    fn globs_match_as_the_previous_version() {
        // The previous implementation (it collected the pieces into a Vec) as the reference,
        // over every pattern and text of up to 4 characters of a small alphabet.
        fn reference(pattern: &str, text: &str) -> bool {
            let mut parts = pattern.split('*');
            let first = parts.next().unwrap_or("");
            let Some(mut rest) = text.strip_prefix(first) else {
                return false;
            };
            let parts: Vec<&str> = parts.collect();
            let Some((last, middle)) = parts.split_last() else {
                return rest.is_empty();
            };
            for p in middle {
                match rest.find(p) {
                    Some(i) => rest = &rest[i + p.len()..],
                    None => return false,
                }
            }
            rest.len() >= last.len() && rest.ends_with(last)
        }
        let words = |alphabet: &[char], n: usize| {
            let mut all = vec![String::new()];
            let mut frontier = vec![String::new()];
            for _ in 0..n {
                frontier = frontier
                    .iter()
                    .flat_map(|w| alphabet.iter().map(move |c| format!("{w}{c}")))
                    .collect();
                all.extend(frontier.iter().cloned());
            }
            all
        };
        let texts = words(&['a', 'b', '/'], 4);
        for p in words(&['a', 'b', '*'], 4) {
            for t in &texts {
                assert_eq!(glob(&p, t), reference(&p, t), "{p:?} ~ {t:?}");
            }
        }
    }

    #[test]
    fn sizes_and_durations() {
        assert_eq!(parse_size("1MiB"), Ok(1 << 20));
        assert_eq!(parse_size("10GB"), Ok(10_000_000_000));
        assert!(parse_size("99999999999TiB").is_err());
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("2h"), Ok(Duration::from_secs(7200)));
        assert_eq!(parse_duration("1d"), Ok(Duration::from_secs(86_400)));
        assert!(parse_duration("2w").is_err());
        assert!(parse_duration("99999999999999999999d").is_err());
    }
}
