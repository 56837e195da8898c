//! Request-path benches: parsing real clients' request heads, range parsing and resolution,
//! routing. Throughput in bytes of head, as httparse's own benches do.

use std::hint::black_box;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use gatecache::config::RawConfig;
use gatecache::http::range;
use gatecache::http::request::{self, Limits};
use gatecache::route;

/// What real clients send (see shared/MISSION.md): Delivery Optimization with its origin
/// parameter and a resumed transfer's several Range headers, apt through a proxy, curl.
const HEADS: &[(&str, &[u8])] = &[
    (
        "do_linux_resume",
        b"GET /b5e2c1d0/inst/7f3a9c1e-2b4d-4e8a-9c1f-0a1b2c3d4e5f/os-image-1.2.3.swu?cacheHostOrigin=inst--acct.b.nlu.dl.adu.example.org HTTP/1.1\r\n\
Host: gateway.example.org\r\n\
User-Agent: Microsoft-Delivery-Optimization-Lite/10.0.0.1\r\n\
Accept: */*\r\n\
Range: bytes=1048576-268435455\r\n\
Range: bytes=5242880-268435455\r\n\
Range: bytes=9437184-268435455\r\n\r\n",
    ),
    (
        "do_windows_piece",
        b"GET /filestreamingservice/files/0c0e1f2a-3b4c-5d6e-7f80-91a2b3c4d5e6?P1=1700000000&P2=404&P3=2&P4=abcdefghijklmnopqrstuvwxyz0123456789%3d%3d&cacheHostOrigin=au.download.example.org HTTP/1.1\r\n\
Connection: Keep-Alive\r\n\
Accept: */*\r\n\
User-Agent: Microsoft-Delivery-Optimization/10.1\r\n\
Range: bytes=3145728-4194303\r\n\
Host: gateway.example.org\r\n\r\n",
    ),
    (
        "apt_proxy",
        b"GET http://mirror.example.org/debian/pool/main/o/openssl/libssl3_3.0.15-1_amd64.deb HTTP/1.1\r\n\
Host: mirror.example.org\r\n\
User-Agent: Debian APT-HTTP/1.3 (2.6.1)\r\n\
Cache-Control: max-age=0\r\n\
Accept: text/*\r\n\r\n",
    ),
    (
        "curl",
        b"GET /16m.bin HTTP/1.1\r\nHost: 127.0.0.1:8080\r\nUser-Agent: curl/7.88.1\r\nAccept: */*\r\n\r\n",
    ),
];

fn bench_parse(c: &mut Criterion) {
    let mut g = c.benchmark_group("parse_head");
    let limits = Limits::default();
    for (name, head) in HEADS {
        g.throughput(Throughput::Bytes(head.len() as u64));
        g.bench_function(*name, |b| {
            b.iter(|| request::parse(black_box(head), &limits).unwrap().unwrap())
        });
    }
    g.finish();
}

fn bench_range(c: &mut Criterion) {
    let mut g = c.benchmark_group("range");
    for (name, v) in [
        ("single", "bytes=3145728-4194303"),
        ("suffix", "bytes=-1048576"),
        ("multi", "bytes=0-99,200-299,4096-8191"),
    ] {
        g.bench_function(name, |b| {
            b.iter(|| range::resolve(&range::parse(black_box(v)).unwrap(), 268_435_456))
        });
    }
    g.finish();
}

fn bench_route(c: &mut Criterion) {
    let cfg = RawConfig::from_toml(
        r#"
        [[origin]]
        host = "*.dl.adu.example.org"
        [[origin]]
        host = "*.download.example.org"
        [[origin]]
        host = "mirror.example.org"
        canonical = "debian"
        "#,
    )
    .unwrap()
    .validate()
    .unwrap();
    let limits = Limits::default();
    let mut g = c.benchmark_group("route");
    for (name, head) in &HEADS[..3] {
        let (req, _) = request::parse(head, &limits).unwrap().unwrap();
        g.bench_function(*name, |b| {
            b.iter(|| route::route(black_box(&req), &cfg).unwrap())
        });
    }
    g.finish();
}

criterion_group!(benches, bench_parse, bench_range, bench_route);
criterion_main!(benches);
