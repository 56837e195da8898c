//! The original module's summary (`/summary`): lifetime and 15-second figures under its names,
//! then ours (cache statuses, origins, upstream, parents, storage). Read by the admin listener,
//! and on the client port when `summary_unrestricted`.

use std::sync::atomic::Ordering;
use std::time::Instant;

use serde_json::json;

use super::Services;
use crate::metrics::Totals;

/// The original's four fields for a span of time.
fn original(t: &Totals) -> serde_json::Value {
    json!({
        "hitBytes": t.hit_bytes,
        "missBytes": t.miss_bytes,
        "eggressBytes": t.egress(),
        "hitRatioBytes": t.hit_ratio(),
        "upstreamBytes": t.upstream_bytes,
        "bytesSaved": t.egress().saturating_sub(t.upstream_bytes),
        "requests": t.requests,
    })
}

/// `/summary`: the lifetime figures at the top level under the original module's names
/// (`eggressBytes` spelt as it spells it), the last 15-second period, and ours.
pub fn summary(sh: &Services) -> String {
    let up = &sh.upstream;
    let life = sh.metrics.totals(up.stats.bytes.load(Ordering::Relaxed));
    let mut top = original(&life);
    let cache = &sh.cache;
    let (objects, blocks, filling) = cache.counts();
    let drives: Vec<_> = cache
        .store()
        .drives()
        .iter()
        .map(|d| {
            json!({
                "path": d.path().display().to_string(),
                "capacityBytes": d.capacity_bytes(),
                "usedBytes": d.used_bytes(),
            })
        })
        .collect();
    let now = Instant::now();
    let extra = json!({
        "period": { "seconds": crate::metrics::PERIOD.as_secs(), "totals": original(&sh.metrics.last_period()) },
        "cacheStatus": sh.metrics.by_status().into_iter()
            .map(|(s, r, b)| (s.to_string(), json!({"requests": r, "bytes": b})))
            .collect::<serde_json::Map<_, _>>(),
        "origins": sh.metrics.origins().into_iter()
            .map(|(o, c)| (o, json!({"requests": c.requests, "hitBytes": c.hit_bytes, "missBytes": c.miss_bytes})))
            .collect::<serde_json::Map<_, _>>(),
        "upstream": {
            "requests": up.stats.requests.load(Ordering::Relaxed),
            "bytes": up.stats.bytes.load(Ordering::Relaxed),
            "errors": up.stats.errors.load(Ordering::Relaxed),
            "fetchesRunning": up.stats.active.load(Ordering::Relaxed),
            "fillsInFlight": filling,
        },
        "parents": up.parents.health(now).into_iter()
            .map(|(a, ok)| json!({"address": a, "up": ok}))
            .collect::<Vec<_>>(),
        "storage": { "objects": objects, "blocks": blocks, "blockSize": cache.block_size(), "drives": drives },
        "uptimeSeconds": sh.metrics.started.elapsed().as_secs(),
        "node": sh.cfg.node_name,
        "version": env!("CARGO_PKG_VERSION"),
    });
    if let (Some(t), serde_json::Value::Object(e)) = (top.as_object_mut(), extra) {
        t.extend(e);
    }
    let mut s = serde_json::to_string_pretty(&top).unwrap_or_default();
    s.push('\n');
    s
}
