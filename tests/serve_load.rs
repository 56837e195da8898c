//! Many clients at once: 50 concurrent cold clients for one 16 MiB object (collapsed into one
//! origin fetch), aria2c with 16 parallel ranges, and time to first byte on a cold 64 MiB
//! object compared with the origin itself (printed, not asserted: the machine is noisy).

mod support;

use std::sync::{Arc, Barrier};
use std::time::Instant;

use support::curl::{aria2c, curl};
use support::data::{self, F16M, F64M, assert_same};
use support::gate::{Gate, GateConfig};
use support::http::{self, Conn};
use support::nginx::{Nginx, body_bytes};
use support::*;

both_backends! {
    /// 50 clients ask for the same cold 16 MiB object at the same moment: every one gets
    /// all the right bytes, and the origin sends the object once (exactly 16 MiB, at most 2
    /// requests).
    fn fifty_concurrent_cold_clients(backend) {
        let (n, g) = nginx_and_gate(backend);
        let want = data::content(F16M);
        let clients = 50;
        let barrier = Arc::new(Barrier::new(clients));
        let t0 = Instant::now();
        let handles: Vec<_> = (0..clients)
            .map(|i| {
                let (barrier, want, addr) = (barrier.clone(), want.clone(), g.addr());
                std::thread::spawn(move || {
                    let mut c = Conn::open(addr);
                    barrier.wait();
                    c.send(http::get_req("/16m.bin", &[("User-Agent", &format!("client-{i}"))]));
                    let head = c.read_head().unwrap().expect("a response");
                    assert_eq!(head.status, 200, "client {i}");
                    let mut pos = 0usize;
                    let mut wrong = None;
                    let got = c.read_body_with(want.len() as u64, |chunk| {
                        if wrong.is_none() && chunk != &want[pos..pos + chunk.len()] {
                            wrong = Some(pos);
                        }
                        pos += chunk.len();
                    });
                    assert_eq!(wrong, None, "client {i}: wrong bytes");
                    assert_eq!(got, want.len() as u64, "client {i}: short body");
                })
            })
            .collect();
        for h in handles {
            h.join().expect("a client failed");
        }
        let elapsed = t0.elapsed();
        let log = n.wait_log(|l| body_bytes(l) >= F16M.1);
        let log = {
            let _ = log;
            n.settled_log()
        };
        let reqs = log.len();
        let bytes = body_bytes(&log);
        println!(
            "{backend:?}: 50 cold clients x 16 MiB in {elapsed:.2?}: origin requests {reqs}, origin bytes {bytes} ({:?})",
            log.iter().map(|h| h.range.as_str()).collect::<Vec<_>>()
        );
        assert!(reqs <= 2, "origin requests: {log:?}");
        assert_eq!(bytes, F16M.1, "origin bytes");
    }
}

both_backends! {
    /// aria2c with 16 connections and 1 MiB pieces against a cold 16 MiB object: the file
    /// equals the origin's, and the origin sends each byte once.
    fn aria2c_parallel_ranges(backend) {
        let (n, g) = nginx_and_gate(backend);
        let t0 = Instant::now();
        let (ok, file, log) = aria2c(&g.url("/16m.bin"), &["-x", "16", "-s", "16", "-k", "1M"]);
        let elapsed = t0.elapsed();
        assert!(ok, "aria2c failed:\n{log}");
        assert_same(&file, &data::content(F16M), "aria2c download");
        let origin = n.settled_log();
        println!(
            "{backend:?}: aria2c -x16 -s16 -k1M cold 16 MiB in {elapsed:.2?}: origin requests {}, origin bytes {}",
            origin.len(),
            body_bytes(&origin)
        );
        assert_eq!(body_bytes(&origin), F16M.1, "origin bytes: {origin:?}");
        let ranges = g.log().lines().filter(|l| l.contains("\"GET /16m.bin\" 206")).count();
        assert!(ranges >= 2, "aria2c did not use ranges:\n{}", g.log());
        // Warm: the same again, no origin request.
        let (ok, file, log) = aria2c(&g.url("/16m.bin"), &["-x", "16", "-s", "16", "-k", "1M"]);
        assert!(ok, "aria2c (warm) failed:\n{log}");
        assert_same(&file, &data::content(F16M), "aria2c warm");
        assert_eq!(n.settled_log(), origin);
    }
}

both_backends! {
    /// Time to first byte for a cold 64 MiB object through the cache, against the origin
    /// directly and against the warm cache: printed (the machine is noisy); the bytes are
    /// asserted.
    fn time_to_first_byte_cold_large(backend) {
        let n = Nginx::start_with(&[F64M]);
        let g = Gate::start(
            GateConfig::new(backend)
                .route("/", &n.origin_url())
                .storage("256MiB"),
        );
        let want = data::content(F64M);
        let direct = curl(&[&n.url("/64m.bin")]);
        direct.ok();
        assert_same(&direct.body, &want, "origin direct");
        let cold = curl(&[&g.url("/64m.bin")]);
        cold.ok();
        assert_eq!(cold.cache_status(), "gatecache; fwd=miss; stored");
        assert_same(&cold.body, &want, "cache cold");
        wait_hit(&g, "/64m.bin", &[]);
        let warm = curl(&[&g.url("/64m.bin")]);
        warm.ok();
        assert_eq!(warm.cache_status(), "gatecache; hit");
        assert_same(&warm.body, &want, "cache warm");
        let origin = n.settled_log();
        println!(
            "{backend:?}: 64 MiB, time to first byte / total: origin {:.4}s / {:.3}s, cache cold {:.4}s / {:.3}s, cache warm {:.4}s / {:.3}s; origin requests via cache {}",
            direct.ttfb,
            direct.total,
            cold.ttfb,
            cold.total,
            warm.ttfb,
            warm.total,
            origin.len() - 1
        );
        assert_eq!(origin.len(), 2, "one direct request, one cold fill: {origin:?}");
    }
}
