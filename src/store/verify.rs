//! `gatecache verify <dir>`: a read-only scan of one cache directory that checks every header
//! and every data crc, and names the objects that lost blocks.

use std::collections::BTreeMap;
use std::fs::File;
use std::path::Path;

use hashbrown::HashMap;

use super::StoreError;
use super::drive::slab_path;
use super::format::{
    self, HeaderError, ObjectMeta, REGION_HEADER_LEN, RegionHeader, SLAB_HEADER_LEN,
    SLOT_HEADER_LEN, SlabHeader, SlotHeader, SlotKind,
};
use super::slab::{self, Slab};

/// One damaged thing found by `verify`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Damage {
    pub slab: u32,
    pub offset: u64,
    /// The object's key when its metadata record is readable, else its key hash.
    pub object: Option<String>,
    pub block: Option<u32>,
    pub reason: String,
}

#[derive(Debug, Default)]
pub struct VerifyReport {
    pub slabs: usize,
    pub objects: usize,
    pub blocks: usize,
    pub bytes: u64,
    pub damage: Vec<Damage>,
    /// Objects with a readable metadata record: key, total length, blocks held (sorted by key).
    pub listing: Vec<(String, u64, usize)>,
}

impl VerifyReport {
    pub fn is_clean(&self) -> bool {
        self.damage.is_empty()
    }

    pub fn render(&self) -> String {
        let mut s = format!(
            "slabs: {}\nobjects: {}\nblocks: {}\nbytes: {}\nbad: {}\n",
            self.slabs,
            self.objects,
            self.blocks,
            self.bytes,
            self.damage.len()
        );
        for d in &self.damage {
            s += &format!(
                "BAD slab {} offset {}: {}{}{}\n",
                d.slab,
                d.offset,
                d.reason,
                d.object
                    .as_deref()
                    .map(|k| format!(", object {k}"))
                    .unwrap_or_default(),
                d.block.map(|b| format!(", block {b}")).unwrap_or_default()
            );
        }
        s
    }
}

/// Scans a cache directory without changing it. Refuses a directory a running cache holds.
pub fn verify_dir(dir: &Path) -> Result<VerifyReport, StoreError> {
    let io = |what: &'static str, path: &Path| {
        let path = path.to_path_buf();
        move |source| StoreError::Io { path, what, source }
    };
    // A mistyped path is an error, not an empty (clean) cache.
    if !std::fs::metadata(dir)
        .map_err(io("open cache directory", dir))?
        .is_dir()
    {
        return Err(StoreError::Config(format!(
            "{}: not a directory",
            dir.display()
        )));
    }
    let lock_path = dir.join("lock");
    // Held until the scan is done, so no cache opens (and resizes slabs) meanwhile.
    let _lock = if lock_path.exists() {
        let f = File::open(&lock_path).map_err(io("open lock file", &lock_path))?;
        if !slab::lock_exclusive(&f).map_err(io("lock cache directory", &lock_path))? {
            return Err(StoreError::Locked(dir.to_path_buf()));
        }
        Some(f)
    } else {
        None
    };
    let mut report = VerifyReport::default();
    let mut keys: HashMap<u128, (String, u64)> = HashMap::new();
    let mut blocks: Vec<(u128, u32, u64)> = Vec::new();
    let mut pending: Vec<(u128, Damage)> = Vec::new();
    for n in 0.. {
        let path = slab_path(dir, n);
        if !path.exists() {
            break;
        }
        report.slabs += 1;
        let file = File::open(&path).map_err(io("open slab", &path))?;
        let len = file.metadata().map_err(io("stat slab", &path))?.len();
        let damage = |offset: u64, reason: String| Damage {
            slab: n,
            offset,
            object: None,
            block: None,
            reason,
        };
        if len < SLAB_HEADER_LEN {
            report
                .damage
                .push(damage(0, format!("slab file too short ({len} bytes)")));
            continue;
        }
        // Every read of `slab` below is from a read-only map of a directory whose `flock` is held
        // (`_lock`), or that had no lock file (no store had it open): no writer exists in this
        // process (another process is rule 4 of `slab.rs`).
        let slab = Slab::map_read_only(file, len).map_err(io("map slab", &path))?;
        // SAFETY: read-only map, no writer (above; `read_header_mapped`, third case).
        let sh = match SlabHeader::decode(&unsafe { slab.read_header_mapped(0) }) {
            Ok(h) => h,
            Err(e) => {
                report.damage.push(damage(0, format!("slab header: {e}")));
                continue;
            }
        };
        let want = SLAB_HEADER_LEN + u64::from(sh.regions) * sh.region_len;
        if len < want {
            report.damage.push(damage(
                len,
                format!("slab truncated: {len} of {want} bytes"),
            ));
        }
        for r in 0..sh.regions {
            let off = SLAB_HEADER_LEN + u64::from(r) * sh.region_len;
            if off + sh.region_len > len {
                break;
            }
            // SAFETY: read-only map, no writer (see where `slab` is mapped).
            let rh = match RegionHeader::decode(&unsafe { slab.read_header_mapped(off) }) {
                Ok(h) => h,
                Err(HeaderError::Empty) => continue,
                Err(e) => {
                    report
                        .damage
                        .push(damage(off, format!("region header: {e}")));
                    continue;
                }
            };
            let nslots = format::slots_per_region(sh.block_size, rh.slot_size);
            for s in 0..nslots {
                let hoff = off + REGION_HEADER_LEN + u64::from(s) * u64::from(rh.slot_size);
                // SAFETY: read-only map, no writer (see where `slab` is mapped).
                let h = match SlotHeader::decode(&unsafe { slab.read_header_mapped(hoff) }) {
                    Ok(h) => h,
                    Err(HeaderError::Empty) => continue,
                    Err(e) => {
                        report
                            .damage
                            .push(damage(hoff, format!("slot header: {e}")));
                        continue;
                    }
                };
                let fits = u64::from(h.data_len) + SLOT_HEADER_LEN <= u64::from(rh.slot_size);
                if h.region_generation != rh.generation || h.kind != rh.kind || !fits {
                    // Left over from the region's previous use: free space, not damage.
                    continue;
                }
                // SAFETY: read-only map, no writer (see where `slab` is mapped).
                let crc = unsafe { slab.crc(hoff + SLOT_HEADER_LEN, h.data_len as usize) };
                if crc != h.data_crc {
                    let mut d = damage(hoff, "data crc mismatch".into());
                    d.block = (h.kind == SlotKind::Data).then_some(h.block);
                    pending.push((h.key_hash, d));
                    continue;
                }
                match h.kind {
                    SlotKind::Meta => {
                        let mut buf = vec![0u8; h.data_len as usize];
                        // SAFETY: read-only map, no writer (see where `slab` is mapped).
                        unsafe { slab.read_into(hoff + SLOT_HEADER_LEN, &mut buf) };
                        match ObjectMeta::decode(&buf) {
                            Ok(m) => {
                                keys.insert(h.key_hash, (m.key, m.total_len));
                            }
                            Err(e) => {
                                pending.push((h.key_hash, damage(hoff, format!("metadata: {e}"))))
                            }
                        }
                    }
                    SlotKind::Data => blocks.push((h.key_hash, h.block, u64::from(h.data_len))),
                }
            }
        }
    }
    let mut per_object: BTreeMap<u128, usize> = BTreeMap::new();
    for (k, _, len) in &blocks {
        *per_object.entry(*k).or_default() += 1;
        report.bytes += len;
    }
    report.blocks = blocks.len();
    // As recovery counts them: a zero-length object is complete with no block.
    report.objects = keys
        .iter()
        .filter(|(k, (_, len))| *len == 0 || per_object.contains_key(*k))
        .count();
    for (k, mut d) in pending {
        d.object = Some(
            keys.get(&k)
                .map_or_else(|| format!("{k:032x}"), |(key, _)| key.clone()),
        );
        report.damage.push(d);
    }
    report.listing = keys
        .into_iter()
        .map(|(k, (key, len))| (key, len, per_object.get(&k).copied().unwrap_or(0)))
        .collect();
    report.listing.sort();
    Ok(report)
}
