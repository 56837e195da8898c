//! Write many objects of varied sizes, close, reopen: every byte identical, nothing refetched.

mod common;

use common::*;
use gatecache::cache::Cache;

const SIZES: &[u64] = &[
    0,
    1,
    100,
    10 * KIB,
    64 * KIB - 1,
    64 * KIB,
    64 * KIB + 1,
    300 * KIB + 7,
    MIB,
    3 * MIB + 12345,
];

#[test]
fn objects_of_every_size_survive_a_reopen_byte_for_byte() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), 64 * MIB);
    {
        let (cache, report) = Cache::open(&cfg).unwrap();
        assert_eq!(report.objects, 0);
        for (i, &len) in SIZES.iter().enumerate() {
            put_full(&cache, &format!("origin.test/obj/{i}"), len);
        }
        for (i, &len) in SIZES.iter().enumerate() {
            let key = format!("origin.test/obj/{i}");
            assert_eq!(read_full(&cache, &key).unwrap(), bytes_of(&key, 0..len));
        }
    }
    let (cache, report) = Cache::open(&cfg).unwrap();
    assert_eq!(report.objects, SIZES.len(), "{report:?}");
    assert_eq!(report.dropped(), 0, "{report:?}");
    for (i, &len) in SIZES.iter().enumerate() {
        let key = format!("origin.test/obj/{i}");
        let obj = cache.lookup(&key).expect("recovered");
        assert_eq!(obj.meta.total_len, len);
        assert_eq!(obj.meta.etag, meta(&key, len).etag);
        assert_eq!(
            read_full(&cache, &key).unwrap(),
            bytes_of(&key, 0..len),
            "{key}"
        );
    }
}
