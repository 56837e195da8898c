//! Never an open proxy (issue 10), as a property: over generated request heads whose hosts mix
//! allowed names with hostile pieces, whatever `route` accepts goes to an allowed origin (or a
//! route's origin, inside its path) and the upstream URL names exactly that host at an allowed
//! port. The rule itself is `support/route_invariant.rs`, shared with the fuzz target
//! (`fuzz/fuzz_targets/route.rs`). Then the issue's own inputs, each with its exact refusal.

#[path = "support/route_invariant.rs"]
mod route_invariant;

use std::sync::LazyLock;

use gatecache::config::{Config, RawConfig};
use gatecache::http::authority::AuthorityError;
use gatecache::http::path::PathError;
use gatecache::http::request::{self, Limits, Request};
use gatecache::route::{Refusal, Target};
use proptest::prelude::*;
use proptest::strategy::ValueTree;
use proptest::test_runner::TestRunner;

static CONFIG: LazyLock<Config> = LazyLock::new(route_invariant::config);

/// Routes a parsed head against [`CONFIG`] and checks the invariant; `None` if the head does
/// not parse.
fn route_head(head: &[u8]) -> Result<Option<Result<Target, Refusal>>, String> {
    match request::parse(head, &Limits::default()) {
        Ok(Some((req, _))) => route_invariant::route_and_check(&CONFIG, &req).map(Some),
        _ => Ok(None),
    }
}

// ---- generators ----------------------------------------------------------------------------

/// Names and addresses: allowed ones, near misses, and addresses an attacker wants reached.
fn base_host() -> impl Strategy<Value = &'static str> {
    prop::sample::select(vec![
        "x.dl.adu.microsoft.com",
        "a-b.c.dl.adu.microsoft.com",
        "dl.adu.microsoft.com",
        "xdl.adu.microsoft.com",
        "x.dl.adu.microsoft.com.evil.test",
        "files.example.com",
        "pinned.example.net",
        "localhost",
        "mirror.example.org",
        "parent.example.net",
        "evil.test",
        "127.0.0.1",
        "169.254.169.254",
        "10.0.0.1",
        "0.0.0.0",
        "127.1",
        "2130706433",
        "0x7f000001",
        "[::1]",
        "[fd00::5]",
        "[FD00:0::5]",
        "[::ffff:127.0.0.1]",
        "[::ffff:169.254.169.254]",
        "[fe80::1%25eth0]",
    ])
}

/// Allowed origins (and the route's), at ports they allow, and `pinned.example.net` (pinned to
/// a connect address) at any port.
fn allowed_host() -> impl Strategy<Value = &'static str> {
    prop::sample::select(vec![
        "x.dl.adu.microsoft.com",
        "a-b.c.dl.adu.microsoft.com:80",
        "files.example.com",
        "files.example.com:8080",
        "pinned.example.net",
        "pinned.example.net:22",
        "localhost",
        "localhost:80",
        "mirror.example.org",
        "[fd00::5]:8081",
        "[FD00:0:0::5]:8081",
    ])
}

/// Pieces that end an authority early, add userinfo, encode, or are otherwise not a host.
fn hostile_piece() -> impl Strategy<Value = &'static str> {
    prop::sample::select(vec![
        ":",
        "?",
        "/",
        "#",
        "@",
        "origin.test@",
        "%2f",
        "%2e",
        "%40",
        "%00",
        "\\",
        " ",
        "\t",
        "ü",
        "\u{2024}",
        "..",
        ".",
        "*.",
        "-",
        "_",
        "[",
        "]",
        "x",
        "0",
        "9",
    ])
}

fn port() -> impl Strategy<Value = &'static str> {
    prop::sample::select(vec![
        ":0", ":80", ":443", ":8080", ":8081", ":9", ":22", ":3128", ":9180", ":65535", ":65536",
        ":080", ":", ":x", ":-1", ":+80", "::80", ":80:80", ":99999",
    ])
}

/// A host as a client might write it: mostly well-formed, often with hostile pieces.
fn host() -> impl Strategy<Value = String> {
    let piece = prop_oneof![
        3 => base_host(),
        2 => hostile_piece(),
        1 => port(),
    ];
    let host = prop_oneof![
        // An allowed origin, as a client should name it.
        4 => (allowed_host(), any::<bool>()).prop_map(|(h, dot)| {
            match (dot, h.rfind(':')) {
                (true, Some(i)) if !h.ends_with(']') => format!("{}.{}", &h[..i], &h[i..]),
                (true, _) => format!("{h}."),
                (false, _) => h.to_string(),
            }
        }),
        // A name or address, maybe with a port, a trailing dot.
        4 => (base_host(), prop::option::of(port()), any::<bool>()).prop_map(|(h, p, dot)| {
            format!("{h}{}{}", if dot { "." } else { "" }, p.unwrap_or(""))
        }),
        // The issue's shape: an address, a delimiter, then an allowed suffix.
        2 => (base_host(), hostile_piece(), base_host(), prop::option::of(port()))
            .prop_map(|(a, d, b, p)| format!("{a}{d}{b}{}", p.unwrap_or(""))),
        // Anything made of the pieces.
        2 => prop::collection::vec(piece, 1..5).prop_map(|v| v.concat()),
    ];
    (host, 0..4u8).prop_map(|(h, case)| match case {
        0 => h.to_ascii_uppercase(),
        1 => h
            .char_indices()
            .map(|(i, c)| {
                if i % 2 == 0 {
                    c.to_ascii_uppercase()
                } else {
                    c
                }
            })
            .collect(),
        _ => h,
    })
}

/// Path segments: ordinary, dot-segments plain and percent-encoded, encoded separators.
fn segment() -> impl Strategy<Value = &'static str> {
    prop::sample::select(vec![
        "a", "pool", "x.deb", "debian", "summary", "", ".", "..", "%2e", "%2E", "%2e%2e", ".%2e",
        "%2E.", "%2e%2E", "..%2f", "..%5c", "%2f", "%2F", "%5c", "\\", "..\\a", "~u", "%7e", "%41",
        "%zz", "%", "%25", "%252e", "a;b", "@", ":", "*",
    ])
}

fn path() -> impl Strategy<Value = String> {
    (
        prop::sample::select(vec!["/", "/debian/", "/debian", "//", "/x/../debian/"]),
        prop::collection::vec(segment(), 0..6),
    )
        .prop_map(|(start, segs)| format!("{start}{}", segs.join("/")))
}

/// Query parameters other than a well-formed `cacheHostOrigin=`.
fn param() -> impl Strategy<Value = String> {
    prop_oneof![
        prop::sample::select(vec![
            "a=1",
            "b",
            "",
            "cacheHostOrigin",
            "cachehostorigin=evil.test",
            "x=%2e%2e/..",
            "q=?",
            "r=http://evil.test/",
        ])
        .prop_map(String::from),
        host().prop_map(|h| format!("cacheHostOrigin={h}")),
    ]
}

/// A query with `cacheHostOrigin=<host>` (once or twice) among other parameters, or without.
fn query(with_origin: bool) -> impl Strategy<Value = String> {
    (
        prop::collection::vec(param(), 0..3),
        host(),
        0..3usize,
        prop::option::weighted(0.1, host()),
    )
        .prop_map(move |(mut params, origin, at, second)| {
            if with_origin {
                params.insert(at.min(params.len()), format!("cacheHostOrigin={origin}"));
                if let Some(s) = second {
                    params.push(format!("cacheHostOrigin={s}"));
                }
            }
            params.join("&")
        })
}

fn with_query(path: String, query: String, force_mark: bool) -> String {
    if query.is_empty() && !force_mark {
        path
    } else {
        format!("{path}?{query}")
    }
}

/// A request target: origin-form with or without `cacheHostOrigin=`, or absolute-form.
fn target() -> impl Strategy<Value = String> {
    prop_oneof![
        2 => (path(), query(false), any::<bool>()).prop_map(|(p, q, m)| with_query(p, q, m)),
        3 => (path(), query(true)).prop_map(|(p, q)| with_query(p, q, true)),
        3 => (
            prop::sample::select(vec!["http://", "HTTP://", "https://", "ftp://", "http:/", "//"]),
            host(),
            prop_oneof![path(), Just(String::new())],
            query(false),
            prop::bool::weighted(0.2),
        )
            .prop_map(|(scheme, h, p, q, with_origin)| {
                let q = if with_origin { format!("cacheHostOrigin={h}&{q}") } else { q };
                with_query(format!("{scheme}{h}{p}"), q, false)
            }),
        1 => Just("*".to_string()),
    ]
}

#[derive(Debug, Clone)]
struct Head {
    method: &'static str,
    target: String,
    host: Option<String>,
    http10: bool,
    extra: Vec<&'static str>,
}

impl Head {
    fn bytes(&self) -> Vec<u8> {
        let mut s = format!(
            "{} {} HTTP/1.{}\r\n",
            self.method,
            self.target,
            if self.http10 { 0 } else { 1 }
        );
        if let Some(h) = &self.host {
            s.push_str(&format!("Host: {h}\r\n"));
        }
        for e in &self.extra {
            s.push_str(e);
            s.push_str("\r\n");
        }
        s.push_str("\r\n");
        s.into_bytes()
    }
}

fn head() -> impl Strategy<Value = Head> {
    let host_field = prop_oneof![
        2 => host().prop_map(Some),
        3 => Just(Some("gw.example.org".to_string())),
        1 => Just(Some("gw.example.org:80".to_string())),
        1 => Just(None),
    ];
    let extra = prop::collection::vec(
        prop::sample::select(vec![
            "Range: bytes=0-99",
            "Range: bytes=100-199",
            "User-Agent: Microsoft-Delivery-Optimization-Lite/10.0.0.1",
            "Via: 1.1 child:80 (gatecache)",
            "Cache-Control: no-cache",
            "Pragma: no-cache",
            "Connection: keep-alive",
        ]),
        0..3,
    );
    (
        prop::sample::select(vec!["GET", "HEAD"]),
        target(),
        host_field,
        prop::bool::weighted(0.1),
        extra,
    )
        .prop_map(|(method, target, host, http10, extra)| Head {
            method,
            target,
            host,
            http10,
            extra,
        })
}

// ---- the property ---------------------------------------------------------------------------

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 4096,
        ..ProptestConfig::default()
    })]

    /// Generated heads, through the request parser.
    #[test]
    fn accepted_heads_go_only_to_allowed_origins(h in head()) {
        let _routed = route_head(&h.bytes()).map_err(TestCaseError::fail)?;
    }

    /// The same targets and hosts without the parser: bytes httparse would refuse (spaces,
    /// control characters) still reach the router.
    #[test]
    fn accepted_requests_go_only_to_allowed_origins(h in head()) {
        let req = Request {
            target: h.target.clone(),
            host: h.host.clone(),
            http10: h.http10,
            ..Request::default()
        };
        let _routed = route_invariant::route_and_check(&CONFIG, &req).map_err(TestCaseError::fail)?;
    }
}

/// The generator reaches every way of being accepted, so the property is not vacuous.
#[test]
fn generated_heads_are_often_accepted_every_way() {
    let mut runner = TestRunner::deterministic();
    let strategy = head();
    let (mut total, mut parsed) = (0, 0);
    let mut ok = std::collections::BTreeMap::<&str, usize>::new();
    for _ in 0..4000 {
        let h = strategy.new_tree(&mut runner).unwrap().current();
        total += 1;
        let Some(routed) = route_head(&h.bytes()).unwrap() else {
            continue;
        };
        parsed += 1;
        let Ok(t) = routed else { continue };
        let how = if h.target.contains("cacheHostOrigin=") {
            "cacheHostOrigin"
        } else if !h.target.starts_with('/') {
            "absolute-form"
        } else if t.authority.host.to_string() == "mirror.example.org" {
            "route prefix"
        } else {
            "Host"
        };
        *ok.entry(how).or_default() += 1;
    }
    eprintln!("{total} generated, {parsed} parsed, accepted: {ok:?}");
    assert!(parsed * 2 > total, "most heads parse: {parsed} of {total}");
    for how in ["cacheHostOrigin", "absolute-form", "Host", "route prefix"] {
        let n = ok.get(how).copied().unwrap_or(0);
        assert!(n >= 20, "only {n} of {total} accepted by {how}: {ok:?}");
    }
}

/// The invariant is not vacuous: a router allowed more than the configuration says (an extra
/// origin, extra ports, an address) is caught on the generated heads.
#[test]
fn the_invariant_catches_a_router_that_allows_more() {
    let open = RawConfig::from_toml(&format!(
        "{}\n{}",
        route_invariant::CONFIG.replace(
            "host = \"localhost\"",
            "host = \"localhost\"\nports = [9, 22, 443, 3128, 8080, 8081, 9180, 65535]"
        ),
        "[[origin]]\nhost = \"evil.test\"\n[[origin]]\nhost = \"169.254.169.254\"\n"
    ))
    .unwrap()
    .validate()
    .unwrap();
    let mut runner = TestRunner::deterministic();
    let strategy = head();
    let mut caught = std::collections::BTreeSet::new();
    for _ in 0..4000 {
        let h = strategy.new_tree(&mut runner).unwrap().current();
        let Ok(Some((req, _))) = request::parse(&h.bytes(), &Limits::default()) else {
            continue;
        };
        let routed = gatecache::route::route(&req, &open);
        if route_invariant::check(&CONFIG, &req, &routed).is_err()
            && let Ok(t) = routed
        {
            caught.insert(t.authority.to_string());
        }
    }
    for a in ["evil.test:80", "169.254.169.254:80"] {
        assert!(caught.contains(a), "{a} not caught: {caught:?}");
    }
    assert!(
        caught.iter().any(|a| a.starts_with("localhost:")),
        "no other port of localhost caught: {caught:?}"
    );
}

// ---- the issue's inputs ---------------------------------------------------------------------

/// The configuration gatecache embeds (no file): the Device Update and Windows Update hosts.
fn default_config() -> Config {
    RawConfig::default().validate().unwrap()
}

/// Routes `GET <target>` with `Host: <host>` through the parser against `cfg`; the invariant
/// must hold and the answer is returned.
fn answer(cfg: &Config, target: &str, host: &str) -> Result<Target, Refusal> {
    let head = format!("GET {target} HTTP/1.1\r\nHost: {host}\r\n\r\n");
    let (req, _) = request::parse(head.as_bytes(), &Limits::default())
        .unwrap_or_else(|e| panic!("{head:?}: {e:?}"))
        .unwrap_or_else(|| panic!("{head:?}: incomplete"));
    route_invariant::route_and_check(cfg, &req).unwrap_or_else(|e| panic!("{e}"))
}

fn bad(field: &str, e: AuthorityError) -> Result<Target, Refusal> {
    Err(Refusal::BadTarget(format!("malformed {field}: {e}")))
}

const PARAM: &str = "cacheHostOrigin";
const ABS: &str = "host in request target";
const HOST: &str = "Host";

#[test]
fn issue_port_that_is_not_digits_in_each_host_source() {
    use AuthorityError::Port;
    for cfg in [default_config(), route_invariant::config()] {
        let c = &cfg;
        assert_eq!(
            answer(
                c,
                "/x?cacheHostOrigin=169.254.169.254:x.dl.delivery.mp.microsoft.com",
                "gw.example.org"
            ),
            bad(PARAM, Port)
        );
        assert_eq!(
            answer(
                c,
                "http://10.0.0.1:x.dl.adu.microsoft.com/x",
                "gw.example.org"
            ),
            bad(ABS, Port)
        );
        // A proxy client sends the same authority in Host: the Host is refused first.
        assert_eq!(
            answer(
                c,
                "http://10.0.0.1:x.dl.adu.microsoft.com/x",
                "10.0.0.1:x.dl.adu.microsoft.com"
            ),
            bad(HOST, Port)
        );
        assert_eq!(
            answer(c, "/x", "10.0.0.1:x.dl.adu.microsoft.com"),
            bad(HOST, Port)
        );
    }
}

#[test]
fn issue_delimiters_in_each_host_source() {
    use AuthorityError::*;
    let cases = [
        ("10.0.0.1?.dl.adu.microsoft.com", Delimiter('?')),
        ("10.0.0.1/.dl.adu.microsoft.com", Delimiter('/')),
        ("10.0.0.1#.dl.adu.microsoft.com", Delimiter('#')),
        ("10.0.0.1\\.dl.adu.microsoft.com", Delimiter('\\')),
        ("origin.test@x.dl.adu.microsoft.com", Userinfo),
        ("10.0.0.1%2f.dl.adu.microsoft.com", PercentEncoded),
        ("10.0.0.1%3f.dl.adu.microsoft.com", PercentEncoded),
        ("a\tb.dl.adu.microsoft.com", Whitespace),
        ("a b.dl.adu.microsoft.com", Whitespace),
        ("b\u{fc}cher.dl.adu.microsoft.com", NonAscii),
    ];
    for cfg in [default_config(), route_invariant::config()] {
        let c = &cfg;
        for (h, e) in cases.clone() {
            assert_eq!(answer(c, "/x", h), bad(HOST, e.clone()), "Host: {h:?}");
            // The request line takes no whitespace (it ends the target) or '#'; a non-ASCII
            // byte in it is refused before any host is read. The parameter and the absolute
            // form are tried with the rest.
            if matches!(e, Whitespace | Delimiter('#')) {
                continue;
            }
            let byte = || Err(Refusal::BadTarget(PathError::Byte.to_string()));
            let t = format!("/x?cacheHostOrigin={h}");
            let want = if e == NonAscii {
                byte()
            } else {
                bad(PARAM, e.clone())
            };
            assert_eq!(answer(c, &t, "gw.example.org"), want, "{t:?}");
            if !matches!(e, Delimiter('/' | '?')) {
                let t = format!("http://{h}/x");
                let want = if e == NonAscii {
                    byte()
                } else {
                    bad(ABS, e.clone())
                };
                assert_eq!(answer(c, &t, "gw.example.org"), want, "{t:?}");
            }
        }
    }
    // In the absolute form '/' and '?' end the authority: what is left is the host, and the
    // rest is the path or query of a request for it.
    let c = &route_invariant::config();
    assert_eq!(
        answer(
            c,
            "http://10.0.0.1/.dl.adu.microsoft.com/x",
            "gw.example.org"
        ),
        Err(Refusal::NotAllowed("10.0.0.1".into()))
    );
    assert_eq!(
        answer(c, "http://10.0.0.1?.dl.adu.microsoft.com", "gw.example.org"),
        Err(Refusal::NotAllowed("10.0.0.1".into()))
    );
    // '#' in the request line is refused as a fragment.
    assert_eq!(
        answer(
            c,
            "http://10.0.0.1#.dl.adu.microsoft.com/x",
            "gw.example.org"
        ),
        Err(Refusal::BadTarget(PathError::Fragment.to_string()))
    );
}

#[test]
fn issue_other_ports_of_an_allowed_origin() {
    let c = &route_invariant::config();
    for port in [9180, 22, 8080, 65535] {
        let want = Err(Refusal::PortNotAllowed(format!("localhost:{port}")));
        let t = format!("/summary?cacheHostOrigin=localhost:{port}");
        assert_eq!(answer(c, &t, "gw.example.org"), want, "{t}");
        let t = format!("http://localhost:{port}/summary");
        assert_eq!(answer(c, &t, "gw.example.org"), want, "{t}");
    }
    // Port 0 and 65536 are no ports at all.
    for p in ["0", "65536"] {
        let t = format!("/x?cacheHostOrigin=localhost:{p}");
        assert_eq!(
            answer(c, &t, "gw.example.org"),
            bad(PARAM, AuthorityError::Port)
        );
    }
    // The ports an origin lists are allowed; the URL names them.
    let t = answer(c, "/x?cacheHostOrigin=files.example.com:8080", "gw").unwrap();
    assert_eq!(
        t.uri_for(None).unwrap().to_string(),
        "http://files.example.com:8080/x"
    );
    assert_eq!(
        answer(c, "/x?cacheHostOrigin=files.example.com:8081", "gw"),
        Err(Refusal::PortNotAllowed("files.example.com:8081".into()))
    );
    // An origin pinned to a connect address: the port a client names changes nothing.
    let t = answer(c, "/x?cacheHostOrigin=pinned.example.net:22", "gw").unwrap();
    assert_eq!(
        t.uri_for(None).unwrap().to_string(),
        "http://pinned.example.net/x"
    );
    // A Host naming an allowed origin: DNS pointed at us, the port is ours.
    let t = answer(c, "/summary", "localhost:9180").unwrap();
    assert_eq!(
        t.uri_for(None).unwrap().to_string(),
        "http://localhost/summary"
    );
    // The embedded configuration has no localhost at all.
    assert_eq!(
        answer(&default_config(), "/x?cacheHostOrigin=localhost:9180", "gw"),
        Err(Refusal::NotAllowed("localhost".into()))
    );
}

#[test]
fn issue_dot_segments_out_of_a_route_prefix() {
    let c = &route_invariant::config();
    let climbs = || {
        Err(Refusal::BadTarget(
            "path climbs above its route prefix ('..')".into(),
        ))
    };
    for p in [
        "/debian/../a.bin",
        "/debian/%2e%2e/a.bin",
        "/debian/%2E%2E/a.bin",
        "/debian/.%2e/a.bin",
        "/debian/%2e./a.bin",
        "/debian/pool/../../a.bin",
        "/debian/./../a.bin",
    ] {
        assert_eq!(answer(c, p, "gw.example.org"), climbs(), "{p}");
        // A child cache names the route's origin: the origin path is a boundary too.
        let t = format!("{p}?cacheHostOrigin=mirror.example.org");
        assert_eq!(answer(c, &t, "gw.example.org"), climbs(), "{t}");
    }
    for p in ["/debian/../../a.bin", "/debian/%2e%2e/%2e%2e/a.bin"] {
        assert_eq!(
            answer(c, p, "gw.example.org"),
            Err(Refusal::BadTarget(PathError::AboveRoot.to_string())),
            "{p}"
        );
    }
    for p in [
        "/debian/..%2fa.bin",
        "/debian/..%2Fa.bin",
        "/debian/..%5ca.bin",
    ] {
        assert_eq!(
            answer(c, p, "gw.example.org"),
            Err(Refusal::BadTarget(PathError::Separator.to_string())),
            "{p}"
        );
    }
    assert_eq!(
        answer(
            c,
            "/a.bin?cacheHostOrigin=mirror.example.org",
            "gw.example.org"
        ),
        Err(Refusal::NotAllowed(
            "mirror.example.org/a.bin (outside the routes to this origin)".into()
        ))
    );
    // Dot-segments that stay inside the prefix are resolved before the upstream URL is built.
    let t = answer(c, "/debian/pool/%2e%2e/dists/x", "gw.example.org").unwrap();
    assert_eq!(
        t.uri_for(None).unwrap().to_string(),
        "http://mirror.example.org/debian/dists/x"
    );
}

/// The fuzz target's seeds (`fuzz/corpus/route/seed-*`) are whole heads: the realistic ones
/// are routed, the attacks refused, and the invariant holds for all.
#[test]
fn fuzz_seeds_are_routed_or_refused_as_named() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus/route");
    let mut seeds: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| {
            p.file_name()
                .unwrap()
                .to_string_lossy()
                .starts_with("seed-")
        })
        .collect();
    seeds.sort();
    assert!(seeds.len() >= 10, "{seeds:?}");
    for p in seeds {
        let name = p.file_name().unwrap().to_string_lossy().into_owned();
        let routed = route_head(&std::fs::read(&p).unwrap())
            .unwrap_or_else(|e| panic!("{name}: {e}"))
            .unwrap_or_else(|| panic!("{name}: not a whole head"));
        assert_eq!(
            routed.is_err(),
            name.starts_with("seed-attack-"),
            "{name}: {routed:?}"
        );
    }
}
