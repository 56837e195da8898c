//! Helpers shared by the integration tests: temp stores, deterministic object bytes, fills.
#![allow(dead_code)]

use std::path::Path;

use gatecache::cache::{Cache, Claim, Object};
use gatecache::store::{DriveConfig, ObjectMeta, StoreConfig};

pub const KIB: u64 = 1024;
pub const MIB: u64 = 1024 * 1024;

/// A store config with one drive of `size` bytes and 64 KiB blocks (small, fast tests).
pub fn config(dir: &Path, size: u64) -> StoreConfig {
    let mut c = StoreConfig::new(vec![DriveConfig {
        path: dir.to_path_buf(),
        size,
    }]);
    c.block_size = 64 * 1024;
    c.slab_size = 4 * MIB;
    c
}

fn seed(key: &str) -> u64 {
    key.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
    })
}

fn word(seed: u64, n: u64) -> [u8; 8] {
    let mut x = seed ^ n.wrapping_mul(0x9e37_79b9_7f4a_7c15);
    x ^= x >> 33;
    x = x.wrapping_mul(0xff51_afd7_ed55_8ccd);
    x ^= x >> 33;
    x.to_le_bytes()
}

/// Deterministic bytes of object `key` at `offset` (a keyed hash of each 8-byte word).
pub fn byte_at(key: &str, offset: u64) -> u8 {
    word(seed(key), offset / 8)[(offset % 8) as usize]
}

pub fn bytes_of(key: &str, range: std::ops::Range<u64>) -> Vec<u8> {
    let s = seed(key);
    let mut out = Vec::with_capacity((range.end - range.start) as usize);
    let mut o = range.start;
    while o < range.end {
        let w = word(s, o / 8);
        let from = (o % 8) as usize;
        let take = (8 - from).min((range.end - o) as usize);
        out.extend_from_slice(&w[from..from + take]);
        o += take as u64;
    }
    out
}

pub fn meta(key: &str, len: u64) -> ObjectMeta {
    ObjectMeta {
        key: key.to_string(),
        total_len: len,
        status: 200,
        etag: Some(format!("\"{len:x}\"")),
        content_type: Some("application/octet-stream".into()),
        stored_at: 1_700_000_000,
        ..Default::default()
    }
}

/// Stores a whole object (all blocks) with deterministic bytes; returns the object.
pub fn put_full(cache: &Cache, key: &str, len: u64) -> Object {
    let obj = cache.put_object(meta(key, len)).expect("put_object");
    let bs = u64::from(cache.block_size());
    for b in 0..obj.meta.block_count(cache.block_size()) {
        match cache.claim(key, b as u32, obj.version).expect("claim") {
            Claim::Write(mut w) => {
                let start = b * bs;
                let data = bytes_of(key, start..start + w.capacity() as u64);
                assert_eq!(w.write(&data), data.len());
                w.commit().expect("commit");
            }
            Claim::Ready(_) => {}
            Claim::Wait(_) => panic!("nobody else fills in this test"),
        }
    }
    obj
}

/// Reads a whole object from the cache; `None` if any block is missing.
pub fn read_full(cache: &Cache, key: &str) -> Option<Vec<u8>> {
    let obj = cache.lookup(key)?;
    let mut out = Vec::with_capacity(obj.meta.total_len as usize);
    for b in 0..obj.meta.block_count(cache.block_size()) {
        out.extend_from_slice(&cache.get(key, b as u32)?);
    }
    Some(out)
}
