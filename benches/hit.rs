//! An in-process loopback hit: the real server (both backends) on 127.0.0.1, a keep-alive client
//! on the same machine asking cached ranges. Per-request time includes both sides.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::time::{Duration, Instant};

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use gatecache::cache::{Cache, Claim};
use gatecache::config::RawConfig;
use gatecache::store::ObjectMeta;

const LEN: u64 = 16 << 20;

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Fills a store with one 16 MiB object, then serves it; returns the listen address.
fn start(backend: &str) -> SocketAddr {
    let dir = tempfile::tempdir().unwrap().keep();
    let (port, admin) = (free_port(), free_port());
    let toml = format!(
        "listen = \"127.0.0.1:{port}\"\nadmin_listen = \"127.0.0.1:{admin}\"\nworkers = 1\n\
         io_backend = \"{backend}\"\n[[storage]]\npath = \"{}\"\nsize = \"256MiB\"\n\
         [[route]]\nprefix = \"/\"\norigin = \"http://127.0.0.1:9\"\n",
        dir.display()
    );
    let cfg = RawConfig::from_toml(&toml).unwrap().validate().unwrap();
    {
        let (cache, _) = Cache::open(&cfg.store).unwrap();
        let o = cache
            .put_object(ObjectMeta {
                key: "127.0.0.1:9/obj".into(),
                total_len: LEN,
                status: 200,
                etag: Some("\"bench\"".into()),
                ..Default::default()
            })
            .unwrap();
        for b in 0..o.meta.block_count(cache.block_size()) as u32 {
            let Ok(Claim::Write(mut w)) = cache.claim(&o.meta.key, b, o.version) else {
                panic!("fresh block");
            };
            let data = vec![b as u8; w.capacity()];
            w.write(&data);
            w.commit().unwrap();
        }
    }
    std::thread::spawn(move || gatecache::server::run(cfg));
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    for _ in 0..100 {
        if TcpStream::connect(addr).is_ok() {
            return addr;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("server did not start");
}

/// Sends one ranged GET and reads the whole response; returns the body length.
fn get(s: &mut TcpStream, buf: &mut Vec<u8>, start: u64, len: u64) -> usize {
    let req = format!(
        "GET /obj HTTP/1.1\r\nHost: b\r\nRange: bytes={start}-{}\r\n\r\n",
        start + len - 1
    );
    s.write_all(req.as_bytes()).unwrap();
    buf.clear();
    let mut chunk = [0u8; 64 * 1024];
    loop {
        let n = s.read(&mut chunk).unwrap();
        assert!(n > 0, "connection closed");
        buf.extend_from_slice(&chunk[..n]);
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = std::str::from_utf8(&buf[..end]).unwrap();
            let cl: usize = head
                .lines()
                .find_map(|l| l.strip_prefix("Content-Length: "))
                .unwrap()
                .parse()
                .unwrap();
            while buf.len() < end + 4 + cl {
                let n = s.read(&mut chunk).unwrap();
                assert!(n > 0, "connection closed mid-body");
                buf.extend_from_slice(&chunk[..n]);
            }
            return cl;
        }
    }
}

fn bench_hit(c: &mut Criterion) {
    let mut g = c.benchmark_group("loopback_hit");
    g.measurement_time(Duration::from_secs(4));
    for backend in ["uring", "epoll"] {
        let addr = start(backend);
        for size in [4096u64, 1 << 20] {
            g.throughput(Throughput::Bytes(size));
            g.bench_with_input(BenchmarkId::new(backend, size), &size, |b, &size| {
                let mut s = TcpStream::connect(addr).unwrap();
                s.set_nodelay(true).unwrap();
                let mut buf = Vec::new();
                let mut x = 0x9e37_79b9_7f4a_7c15u64;
                b.iter_custom(|iters| {
                    let t = Instant::now();
                    for _ in 0..iters {
                        x ^= x << 13;
                        x ^= x >> 7;
                        x ^= x << 17;
                        let start = (x % (LEN / size)) * size;
                        assert_eq!(get(&mut s, &mut buf, start, size), size as usize);
                    }
                    t.elapsed()
                })
            });
        }
    }
    g.finish();
}

criterion_group!(benches, bench_hit);
criterion_main!(benches);
