//! Nested gateways: caches chained parent to child (device -> L3 -> L4 -> L5 -> origin), each
//! level storing what passes. The first download crosses each link once, a second device is
//! served by its own gateway, a parent killed mid-download is failed over, and a loop between
//! two nodes is refused.

mod support;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use support::data::{F16M, assert_same, content};
use support::faulty::{Fault, FaultOrigin, Obj};
use support::gate::{Gate, GateConfig, Stop};
use support::http::{self, Conn};
use support::nginx::{Nginx, body_bytes};
use support::*;

const ORIGIN: &str = "origin.test";

/// A cache that knows the origin (so it may be asked for it by name) and asks `parents`.
fn level(origin: SocketAddr, parents: &[SocketAddr]) -> GateConfig {
    let c = GateConfig::new(Backend::Uring)
        .origin(ORIGIN, origin)
        .storage("128MiB");
    if parents.is_empty() {
        c
    } else {
        c.parents(parents)
    }
}

/// A loopback address nothing listens on.
fn dead_addr() -> SocketAddr {
    format!("127.0.0.1:{}", free_port()).parse().unwrap()
}

/// The DO form of a request for `path` on the origin.
fn do_path(path: &str) -> String {
    format!("{path}?cacheHostOrigin={ORIGIN}")
}

/// Every block of `len` bytes stored under the origin's key.
#[track_caller]
fn holds_whole(g: &mut Gate, path: &str, len: u64, what: &str) {
    g.stop(Stop::Term);
    let key = format!("{ORIGIN}{path}");
    let objs = g.inspect();
    let (_, l, blocks) = objs
        .iter()
        .find(|(k, _, _)| *k == key)
        .unwrap_or_else(|| panic!("{what} does not hold {key}: {objs:?}"));
    assert_eq!(*l, len, "{what}: length");
    assert_eq!(*blocks, len.div_ceil(64 * KIB), "{what}: blocks stored");
}

#[test]
fn chain_crosses_each_link_once() {
    let origin = Nginx::start_with(&[F16M]);
    // Only L5 can reach the origin: a direct request from L3 or L4 would fail.
    let nowhere = dead_addr();
    let mut l5 = Gate::start(level(origin.addr(), &[]));
    let mut l4 = Gate::start(level(nowhere, &[l5.addr()]));
    let mut l3 = Gate::start(level(nowhere, &[l4.addr()]));
    let path = format!("/{}", F16M.0);
    let want = content(F16M);

    let r = http::get(l3.addr(), &do_path(&path), &[]);
    assert_eq!(r.status, 200);
    assert_same(&r.body, &want, "first device");
    let first = origin.settled_log();
    let first_reqs = first.len();
    let first_bytes = body_bytes(&first);
    eprintln!(
        "first device: {first_reqs} origin requests, {first_bytes} origin bytes; upstream \
         requests L3 {} L4 {} L5 {}",
        l3.stat("upstream_requests"),
        l4.stat("upstream_requests"),
        l5.stat("upstream_requests")
    );
    assert_eq!(first_bytes, F16M.1, "the origin sent the object once");
    assert!(first_reqs <= 2, "origin requests: {first:?}");
    assert!(l4.stat("upstream_bytes") >= F16M.1);
    assert!(l3.stat("upstream_bytes") >= F16M.1);

    // A second device on L3: served by L3 alone.
    let l3_before = l3.stat("upstream_requests");
    let l4_before = l4.stat("upstream_requests");
    let r = http::get(l3.addr(), &do_path(&path), &[("Range", "bytes=1000-")]);
    assert_eq!(r.status, 206);
    assert!(r.is_hit(), "second device: {}", r.cache_status());
    assert_same(&r.body, &want[1000..], "second device");
    let r = http::get(l3.addr(), &do_path(&path), &[]);
    assert_same(&r.body, &want, "third device");
    assert_eq!(l3.stat("upstream_requests"), l3_before);
    assert_eq!(l4.stat("upstream_requests"), l4_before);
    assert_eq!(origin.settled_log().len(), first_reqs);
    eprintln!("second device: 0 origin requests, 0 upstream requests from L3");

    // Every level stored the whole object.
    holds_whole(&mut l3, &path, F16M.1, "L3");
    holds_whole(&mut l4, &path, F16M.1, "L4");
    holds_whole(&mut l5, &path, F16M.1, "L5");
}

#[test]
fn parent_killed_mid_download_fails_over() {
    // A slow origin (about 5 MB/s) so that the download is still running when L4 dies.
    let origin = FaultOrigin::start();
    let data = support::data::generate("chain-failover", 8 * MIB);
    origin.put(
        "/update.bin",
        Obj::new(data.clone(), "\"v1\"").with_fault(Fault::Slow {
            chunk: 64 * KIB as usize,
            pause: Duration::from_millis(12),
        }),
    );
    let l5 = Gate::start(level(origin.addr(), &[]).window("1MiB"));
    let mut l4 = Gate::start(level(origin.addr(), &[l5.addr()]).window("1MiB"));
    let l3 = Gate::start(
        level(origin.addr(), &[l4.addr(), l5.addr()])
            .window("1MiB")
            .read_timeout("5s"),
    );

    let mut c = Conn::open(l3.addr());
    c.send(http::get_req(&do_path("/update.bin"), &[]));
    let head = c.read_head().unwrap().expect("a response head");
    assert_eq!(head.status, 200);
    let t0 = Instant::now();
    let mut body = Vec::new();
    let mut killed_at = None;
    let mut last = Instant::now();
    let mut gap_after_kill = Duration::ZERO;
    c.read_body_with(data.len() as u64, |chunk| {
        let now = Instant::now();
        if killed_at.is_some() {
            gap_after_kill = gap_after_kill.max(now - last);
        }
        last = now;
        body.extend_from_slice(chunk);
        if killed_at.is_none() && body.len() >= 2 * MIB as usize {
            l4.stop(Stop::Kill);
            killed_at = Some(t0.elapsed());
        }
    });
    assert!(killed_at.is_some(), "L4 was not killed mid-download");
    assert_same(&body, &data, "the download through the failover");
    eprintln!(
        "failover: L4 killed at {:?} after {} bytes; longest stall after it {gap_after_kill:?}; \
         whole download {:?}; origin bytes {} for {} ({} requests)",
        killed_at.unwrap(),
        2 * MIB,
        t0.elapsed(),
        origin.bytes("/update.bin"),
        data.len(),
        origin.requests("/update.bin"),
    );
    assert!(
        l3.log().contains("failed; skipping it"),
        "L3 did not fail over:\n{}",
        l3.log()
    );
    // L3 keeps going through L5 afterwards, and the object is whole there.
    let r = http::get(l3.addr(), &do_path("/update.bin"), &[]);
    assert_same(&r.body, &data, "after the failover");
}

#[test]
fn dead_parent_then_direct_fallback() {
    let origin = Nginx::start_with(&[F16M]);
    let dead = dead_addr();
    let path = format!("/{}", F16M.0);

    // Without a fallback, a dead parent is a 502 that names the failure.
    let g = Gate::start(level(origin.addr(), &[dead]));
    let r = http::get(g.addr(), &do_path(&path), &[]);
    assert_eq!(r.status, 502, "{}", r.body_text());
    assert!(origin.log().is_empty());
    drop(g);

    // With it, the origin is asked directly.
    let g = Gate::start(level(origin.addr(), &[dead]).upstream("direct_fallback = true"));
    let r = http::get(g.addr(), &do_path(&path), &[]);
    assert_eq!(r.status, 200);
    assert_same(&r.body, &content(F16M), "direct fallback");
}

#[test]
fn upstream_host_env_names_the_parent() {
    let origin = Nginx::start_with(&[F16M]);
    let parent = Gate::start(level(origin.addr(), &[]));
    let child =
        Gate::start(level(origin.addr(), &[]).env("UPSTREAM_HOST", &parent.addr().to_string()));
    let path = format!("/{}", F16M.0);
    let r = http::get(child.addr(), &do_path(&path), &[("Range", "bytes=0-99")]);
    assert_eq!(r.status, 206);
    assert_same(&r.body, &content(F16M)[..100], "via UPSTREAM_HOST");
    assert!(
        parent.stat("upstream_requests") >= 1,
        "the parent was not asked"
    );
}

#[test]
fn loop_between_two_nodes_is_refused() {
    let origin = Nginx::start_with(&[F16M]);
    let port_b = free_port();
    let b_addr: SocketAddr = format!("127.0.0.1:{port_b}").parse().unwrap();
    let a = Gate::start(level(origin.addr(), &[b_addr]));
    let mut cfg_b = level(origin.addr(), &[a.addr()]);
    cfg_b.port = Some(port_b);
    let _b = Gate::start(cfg_b);
    let t0 = Instant::now();
    let r = http::get(a.addr(), &do_path(&format!("/{}", F16M.0)), &[]);
    assert_eq!(r.status, 508, "{}", r.body_text());
    assert!(r.body_text().contains("loop"), "{}", r.body_text());
    assert!(t0.elapsed() < Duration::from_secs(5), "{:?}", t0.elapsed());
    assert!(origin.log().is_empty(), "the origin was asked");
}

#[test]
fn freshness_holds_down_the_chain() {
    // Fetched by L4 half an hour after the origin dated it, fresh for an hour by Expires.
    let origin = FaultOrigin::start();
    let now = std::time::SystemTime::now();
    let data = support::data::generate("chain-fresh", 200 * KIB);
    origin.put(
        "/f.bin",
        Obj::new(data.clone(), "\"f1\"")
            .with_header(
                "Date",
                &httpdate::fmt_http_date(now - Duration::from_secs(1800)),
            )
            .with_header(
                "Expires",
                &httpdate::fmt_http_date(now + Duration::from_secs(1800)),
            ),
    );
    let l4 = Gate::start(level(origin.addr(), &[]));
    let l3 = Gate::start(level(dead_addr(), &[l4.addr()]));
    let r = http::get(l3.addr(), &do_path("/f.bin"), &[]);
    assert_same(&r.body, &data, "first");
    // L3 must not count the half hour twice (once in Age, once in a shorter Expires - Date).
    let r = http::get(l3.addr(), &do_path("/f.bin"), &[]);
    assert!(r.is_hit(), "L3 thinks it stale: {}", r.cache_status());
    let age: u64 = r.header("age").unwrap().parse().unwrap();
    assert!((1800..1900).contains(&age), "age {age}");
    assert_eq!(origin.requests("/f.bin"), 1);

    // A client's reload reaches the origin through both levels, as a conditional request.
    let r = http::get(
        l3.addr(),
        &do_path("/f.bin"),
        &[("Cache-Control", "max-age=0")],
    );
    assert_same(&r.body, &data, "reloaded");
    let seen = origin.answered_for("/f.bin");
    assert_eq!(seen.len(), 2, "{seen:?}");
    assert_eq!(seen[1].if_none_match.as_deref(), Some("\"f1\""));
    assert_eq!(seen[1].status, 304);
}
