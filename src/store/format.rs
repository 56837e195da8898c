//! On-disk format: slab, region and slot headers, slot classes, and the object metadata record.
//!
//! Everything here is pure byte layout (no I/O), so it is table-tested in isolation. All integers
//! are little-endian. Every header ends with a crc32 of the bytes before it, so a torn or zeroed
//! header is recognised and never trusted.
//!
//! ```text
//! slab file : [slab header, SLAB_HEADER_LEN][region 0][region 1]...
//! region    : [region header, 64 B][slot 0][slot 1]...      (region_len = block_size + 4 KiB)
//! slot      : [slot header, 64 B][data ... up to slot_size - 64]
//! ```

use std::fmt;

/// Bumped whenever any layout in this file changes; older slabs are then re-initialised.
pub const FORMAT_VERSION: u16 = 1;
/// Size reserved at the front of each slab file (one page keeps regions page-aligned).
pub const SLAB_HEADER_LEN: u64 = 4096;
/// Bytes of the header at the front of every region.
pub const REGION_HEADER_LEN: u64 = 64;
/// Bytes of the header in front of every slot's data, counted in the slot's size.
pub const SLOT_HEADER_LEN: u64 = 64;
/// The smallest slot in bytes, header included: a small object metadata record fits.
pub const MIN_SLOT: u32 = 512;

const SLAB_MAGIC: u32 = u32::from_le_bytes(*b"GCSL");
const REGION_MAGIC: u32 = u32::from_le_bytes(*b"GCRG");
const SLOT_MAGIC: u32 = u32::from_le_bytes(*b"GCBK");
/// Version 2: `fields` holds every end-to-end field of the response (version 1 held three
/// named ones; its records read as they are, with the fields they kept), and `instance`
/// follows them (version 1: none, read as 0).
const META_RECORD_VERSION: u8 = 2;
/// The older record version still read (same layout, fewer fields).
const META_RECORD_VERSION_1: u8 = 1;

/// Bytes of one region: `block_size` plus one 4 KiB page, which holds the region header and a
/// full block's slot header and keeps every region page-aligned. A region holds one full block
/// or many smaller slots of one class (docs/DESIGN.md, "Layout on disk").
pub fn region_len(block_size: u32) -> u64 {
    u64::from(block_size) + 4096
}

/// Slot sizes in bytes (header included) a store offers, smallest first, from [`MIN_SLOT`]; the
/// last one holds a full block.
///
/// Between powers of two there is a 1.5x step, so a small object wastes at most a third of its
/// slot: 10 KiB of data lands in a 12 KiB slot (powers of two alone would take 16 KiB; the
/// measured disk use of 10,000 such objects with 1 MiB blocks is 1.26x their size,
/// perf/RESULTS.md).
pub fn slot_classes(block_size: u32) -> Vec<u32> {
    let large = block_size + SLOT_HEADER_LEN as u32;
    let mut classes = Vec::new();
    let mut size = MIN_SLOT;
    while size < large {
        classes.push(size);
        let mid = size + size / 2;
        if mid < large {
            classes.push(mid);
        }
        size *= 2;
    }
    classes.push(large);
    classes
}

/// Index into `classes` (from [`slot_classes`]) of the smallest class that holds `data_len`
/// bytes of data and the slot header; `None` if even the largest (a full block) does not.
pub fn class_for(classes: &[u32], data_len: u32) -> Option<u8> {
    let need = u64::from(data_len) + SLOT_HEADER_LEN;
    classes
        .iter()
        .position(|&c| u64::from(c) >= need)
        .map(|i| i as u8)
}

/// Number of slots of `slot_size` bytes (header included) that fit in one region behind its
/// header.
pub fn slots_per_region(block_size: u32, slot_size: u32) -> u32 {
    ((region_len(block_size) - REGION_HEADER_LEN) / u64::from(slot_size)) as u32
}

/// Why a header was not accepted. Zeroed headers are `Empty` (free space), the rest are damage.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HeaderError {
    /// All bytes are zero: free space (never written, or cleared).
    Empty,
    /// Not this kind of header's magic: damage, or another kind's header in its place.
    BadMagic,
    /// The crc32 over bytes 0..60 does not match bytes 60..64: torn or damaged.
    BadCrc,
    /// Intact, but of another [`FORMAT_VERSION`] (the one found).
    BadVersion(u16),
    /// Intact, but the named field is impossible (`geometry`, `kind`, `slot_size`), or a
    /// metadata record does not decode (`meta record`, `meta record version`).
    BadField(&'static str),
}

impl fmt::Display for HeaderError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HeaderError::Empty => write!(f, "empty"),
            HeaderError::BadMagic => write!(f, "bad magic"),
            HeaderError::BadCrc => write!(f, "bad header crc"),
            HeaderError::BadVersion(v) => write!(f, "unknown format version {v}"),
            HeaderError::BadField(name) => write!(f, "bad field {name}"),
        }
    }
}

struct Writer<'a> {
    buf: &'a mut [u8],
    at: usize,
}

impl Writer<'_> {
    fn put(&mut self, bytes: &[u8]) {
        self.buf[self.at..self.at + bytes.len()].copy_from_slice(bytes);
        self.at += bytes.len();
    }
}

struct Reader<'a> {
    buf: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        let s = self.buf.get(self.at..self.at + n)?;
        self.at += n;
        Some(s)
    }
    fn u8(&mut self) -> Option<u8> {
        Some(self.take(1)?[0])
    }
    fn u16(&mut self) -> Option<u16> {
        Some(u16::from_le_bytes(self.take(2)?.try_into().ok()?))
    }
    fn u32(&mut self) -> Option<u32> {
        Some(u32::from_le_bytes(self.take(4)?.try_into().ok()?))
    }
    fn u64(&mut self) -> Option<u64> {
        Some(u64::from_le_bytes(self.take(8)?.try_into().ok()?))
    }
    fn u128(&mut self) -> Option<u128> {
        Some(u128::from_le_bytes(self.take(16)?.try_into().ok()?))
    }
}

/// Seals a 64-byte header: crc of bytes 0..60 goes into 60..64.
fn seal(buf: &mut [u8; 64]) {
    let crc = crc32fast::hash(&buf[..60]);
    buf[60..].copy_from_slice(&crc.to_le_bytes());
}

/// Checks magic, crc and version of a 64-byte header before any field is read.
fn open_sealed(buf: &[u8; 64], magic: u32) -> Result<Reader<'_>, HeaderError> {
    if buf.iter().all(|&b| b == 0) {
        return Err(HeaderError::Empty);
    }
    if u32::from_le_bytes(buf[0..4].try_into().unwrap()) != magic {
        return Err(HeaderError::BadMagic);
    }
    let crc = u32::from_le_bytes(buf[60..64].try_into().unwrap());
    if crc32fast::hash(&buf[..60]) != crc {
        return Err(HeaderError::BadCrc);
    }
    let version = u16::from_le_bytes(buf[4..6].try_into().unwrap());
    if version != FORMAT_VERSION {
        return Err(HeaderError::BadVersion(version));
    }
    Ok(Reader { buf, at: 6 })
}

/// First 64 bytes of every slab file: ties the file to its store and fixes its geometry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SlabHeader {
    /// Bytes per block the slab was laid out for; a store opened with another block size
    /// re-initialises the slab.
    pub block_size: u32,
    /// Bytes per region: [`region_len`] of `block_size` (checked by [`SlabHeader::decode`]).
    pub region_len: u64,
    /// Regions in this file.
    pub regions: u32,
    /// The file's number within its directory (`slab-NNNN.dat`).
    pub slab_no: u32,
    /// xxh3-64 of the cache directory's path, so a slab copied in from another directory is
    /// not trusted.
    pub store_id: u64,
}

impl SlabHeader {
    /// The 64 bytes stored at offset 0 of the slab file, sealed with their crc.
    pub fn encode(&self) -> [u8; 64] {
        let mut buf = [0u8; 64];
        let mut w = Writer {
            buf: &mut buf,
            at: 0,
        };
        w.put(&SLAB_MAGIC.to_le_bytes());
        w.put(&FORMAT_VERSION.to_le_bytes());
        w.put(&[0, 0]);
        w.put(&self.block_size.to_le_bytes());
        w.put(&self.region_len.to_le_bytes());
        w.put(&self.regions.to_le_bytes());
        w.put(&self.slab_no.to_le_bytes());
        w.put(&self.store_id.to_le_bytes());
        seal(&mut buf);
        buf
    }

    /// Reads what [`SlabHeader::encode`] wrote.
    ///
    /// # Errors
    ///
    /// [`HeaderError::Empty`] for zeros, `BadMagic`, `BadCrc` or `BadVersion` for damage or
    /// another format, `BadField("geometry")` if `block_size` is not a power of two or
    /// `region_len` does not follow from it.
    pub fn decode(buf: &[u8; 64]) -> Result<Self, HeaderError> {
        let mut r = open_sealed(buf, SLAB_MAGIC)?;
        r.u16();
        let h = SlabHeader {
            block_size: r.u32().unwrap(),
            region_len: r.u64().unwrap(),
            regions: r.u32().unwrap(),
            slab_no: r.u32().unwrap(),
            store_id: r.u64().unwrap(),
        };
        if !h.block_size.is_power_of_two() || h.region_len != region_len(h.block_size) {
            return Err(HeaderError::BadField("geometry"));
        }
        Ok(h)
    }
}

/// What a region's slots hold. Metadata lives apart from data so that evicting data regions
/// never throws away the records that describe other objects.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SlotKind {
    /// Blocks of object bodies; only these regions are evicted.
    Data = 1,
    /// Object metadata records ([`ObjectMeta::encode`]), one per slot.
    Meta = 2,
}

impl SlotKind {
    fn from_u8(v: u8) -> Option<Self> {
        match v {
            1 => Some(SlotKind::Data),
            2 => Some(SlotKind::Meta),
            _ => None,
        }
    }
}

/// Written when a free region is given a slot class. `generation` changes on every reuse, and
/// each slot header repeats it: a stale slot header left from the region's previous class can
/// sit exactly where a new slot starts, and must not come back to life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RegionHeader {
    /// What every slot of the region holds.
    pub kind: SlotKind,
    /// Bytes per slot, header included: one of [`slot_classes`].
    pub slot_size: u32,
    /// Set by the drive's allocator on each assignment: increasing, wrapping, never 0.
    pub generation: u32,
}

impl RegionHeader {
    /// The 64 bytes stored at the region's first byte, sealed with their crc.
    pub fn encode(&self) -> [u8; 64] {
        let mut buf = [0u8; 64];
        let mut w = Writer {
            buf: &mut buf,
            at: 0,
        };
        w.put(&REGION_MAGIC.to_le_bytes());
        w.put(&FORMAT_VERSION.to_le_bytes());
        w.put(&[self.kind as u8, 0]);
        w.put(&self.slot_size.to_le_bytes());
        w.put(&self.generation.to_le_bytes());
        seal(&mut buf);
        buf
    }

    /// Reads what [`RegionHeader::encode`] wrote.
    ///
    /// # Errors
    ///
    /// [`HeaderError::Empty`] for a free region, `BadMagic`, `BadCrc` or `BadVersion` for damage,
    /// `BadField("kind")` or `BadField("slot_size")` (below [`MIN_SLOT`]) for impossible fields.
    /// A `slot_size` that is not one of this store's classes is the caller's to reject.
    pub fn decode(buf: &[u8; 64]) -> Result<Self, HeaderError> {
        let mut r = open_sealed(buf, REGION_MAGIC)?;
        let kind = SlotKind::from_u8(r.u8().unwrap()).ok_or(HeaderError::BadField("kind"))?;
        r.u8();
        let slot_size = r.u32().unwrap();
        if slot_size < MIN_SLOT {
            return Err(HeaderError::BadField("slot_size"));
        }
        Ok(RegionHeader {
            kind,
            slot_size,
            generation: r.u32().unwrap(),
        })
    }
}

/// The header in front of every slot's data; written only after the data is complete and flushed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SlotHeader {
    /// What the slot holds; a header whose kind is not its region's is stale.
    pub kind: SlotKind,
    /// Its region's generation when written; a header with another one is stale.
    pub region_generation: u32,
    /// [`key_hash`] of the object's key.
    pub key_hash: u128,
    /// Block number within the object (0 for metadata).
    pub block: u32,
    /// Bytes of data behind the header: the block's length, or the metadata record's.
    pub data_len: u32,
    /// crc32 (crc32fast) of those bytes: checked eagerly for metadata at recovery, on a block's
    /// first read after a restart, and by `verify` (docs/DESIGN.md, "Headers and the format
    /// version").
    pub data_crc: u32,
    /// Hash of the object's validators and length; blocks of another version are not served.
    pub object_version: u64,
    /// Store-wide, increasing: the newest of two records for the same thing wins at recovery.
    pub seq: u64,
}

impl SlotHeader {
    /// The 64 bytes stored at the slot's first byte, sealed with their crc.
    pub fn encode(&self) -> [u8; 64] {
        let mut buf = [0u8; 64];
        let mut w = Writer {
            buf: &mut buf,
            at: 0,
        };
        w.put(&SLOT_MAGIC.to_le_bytes());
        w.put(&FORMAT_VERSION.to_le_bytes());
        w.put(&[self.kind as u8, 0]);
        w.put(&self.region_generation.to_le_bytes());
        w.put(&self.key_hash.to_le_bytes());
        w.put(&self.block.to_le_bytes());
        w.put(&self.data_len.to_le_bytes());
        w.put(&self.data_crc.to_le_bytes());
        w.put(&self.object_version.to_le_bytes());
        w.put(&self.seq.to_le_bytes());
        seal(&mut buf);
        buf
    }

    /// Reads what [`SlotHeader::encode`] wrote. Whether it belongs to its region (generation,
    /// kind, length) is the caller's to check.
    ///
    /// # Errors
    ///
    /// [`HeaderError::Empty`] for a free slot, `BadMagic`, `BadCrc` or `BadVersion` for damage
    /// (every single-bit flip is caught), `BadField("kind")` for an unknown kind.
    pub fn decode(buf: &[u8; 64]) -> Result<Self, HeaderError> {
        let mut r = open_sealed(buf, SLOT_MAGIC)?;
        let kind = SlotKind::from_u8(r.u8().unwrap()).ok_or(HeaderError::BadField("kind"))?;
        r.u8();
        Ok(SlotHeader {
            kind,
            region_generation: r.u32().unwrap(),
            key_hash: r.u128().unwrap(),
            block: r.u32().unwrap(),
            data_len: r.u32().unwrap(),
            data_crc: r.u32().unwrap(),
            object_version: r.u64().unwrap(),
            seq: r.u64().unwrap(),
        })
    }
}

/// The 128-bit hash (xxh3-128) that names an object on disk and in the index.
pub fn key_hash(key: &str) -> u128 {
    xxhash_rust::xxh3::xxh3_128(key.as_bytes())
}

/// Everything needed to answer a request for an object without asking the upstream.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ObjectMeta {
    /// The full cache key (canonical origin + path [+ query]); checked on lookup against hash
    /// collisions.
    pub key: String,
    /// Body length in bytes, over all blocks.
    pub total_len: u64,
    /// The stored response's HTTP status code.
    pub status: u16,
    /// The upstream's `ETag`, as received (quotes included); a validator (RFC 9110 §8.8.3).
    pub etag: Option<String>,
    /// The upstream's `Last-Modified`, as received; a validator (RFC 9110 §8.8.2).
    pub last_modified: Option<String>,
    /// The upstream's `Content-Type`, replayed on hits.
    pub content_type: Option<String>,
    /// The upstream's `Cache-Control`, unparsed; freshness is computed from it on each hit
    /// (`crate::http::freshness`, RFC 9111 §4.2).
    pub cache_control: Option<String>,
    /// The upstream's `Expires`, unparsed (RFC 9111 §5.3).
    pub expires: Option<String>,
    /// The upstream's `Date`, kept for RFC 9111 age calculations.
    pub date: Option<String>,
    /// Seconds of `Age` the upstream reported.
    pub age: u64,
    /// Unix seconds when the response was received (or last revalidated).
    pub stored_at: u64,
    /// Every other end-to-end field the response carried (RFC 9111 §3.1), names as received,
    /// in order, repeated lines kept: all but hop-by-hop fields and those named in
    /// `Connection`, the framing the cache writes itself (`Content-Length`, `Content-Range`),
    /// `Age` (recomputed, RFC 9111 §5.1) and the fields above (`Cache-Control` lines are
    /// combined there).
    pub fields: Vec<(String, String)>,
    /// Which response the bytes came from, for a representation with no strong validator
    /// (0 for one with a strong validator): a nonce that enters [`ObjectMeta::version`], so
    /// bytes of two such responses are never joined (RFC 9110 §8.8.1, RFC 9111 §3.4).
    pub instance: u64,
}

impl ObjectMeta {
    /// Object version: changes whenever the validators or the length change, so blocks written
    /// for one version are never mixed with another.
    pub fn version(&self) -> u64 {
        let mut h = xxhash_rust::xxh3::Xxh3::new();
        h.update(&self.total_len.to_le_bytes());
        if self.instance != 0 {
            h.update(&self.instance.to_le_bytes());
        }
        // A stored 404 (or 301, ...) is never the same as a 200 of the same length; a 200
        // hashes as before (records of format 1 keep their versions).
        if self.status != 200 {
            h.update(&self.status.to_le_bytes());
        }
        for v in [&self.etag, &self.last_modified] {
            match v {
                Some(s) => {
                    h.update(&[1]);
                    h.update(&(s.len() as u64).to_le_bytes());
                    h.update(s.as_bytes());
                }
                None => h.update(&[0]),
            }
        }
        h.digest()
    }

    /// Does the response carry a strong validator (RFC 9110 §8.8.1)? An `ETag` that is not
    /// weak (§8.8.3), or a `Last-Modified` at least 60 seconds before the response's `Date`
    /// (§8.8.2.2: then a cache may use it as strong).
    pub fn has_strong_validator(&self) -> bool {
        if let Some(e) = &self.etag {
            return !e.trim_start().starts_with("W/");
        }
        let date = |v: &Option<String>| {
            v.as_deref()
                .and_then(|d| httpdate::parse_http_date(d.trim()).ok())
        };
        match (date(&self.last_modified), date(&self.date)) {
            (Some(lm), Some(d)) => d
                .duration_since(lm)
                .is_ok_and(|gap| gap >= std::time::Duration::from_secs(60)),
            _ => false,
        }
    }

    /// Blocks of `block_size` bytes the body takes (0 for an empty body).
    pub fn block_count(&self, block_size: u32) -> u64 {
        self.total_len.div_ceil(u64::from(block_size))
    }

    /// Length of block `n` in bytes (the last one may be short; 0 past the end).
    pub fn block_len(&self, block_size: u32, n: u64) -> u64 {
        let start = n * u64::from(block_size);
        self.total_len
            .saturating_sub(start)
            .min(u64::from(block_size))
    }

    /// The record stored in a metadata slot: a version byte, then each field little-endian,
    /// strings with a `u16` length. A string is cut to 65,535 bytes, and the fields to 65,535
    /// lines ([`ObjectMeta::fits_record`] says whether nothing would be cut).
    pub fn encode(&self) -> Vec<u8> {
        fn s(out: &mut Vec<u8>, v: &str) {
            let len = v.len().min(u16::MAX as usize);
            out.extend_from_slice(&(len as u16).to_le_bytes());
            out.extend_from_slice(&v.as_bytes()[..len]);
        }
        fn opt(out: &mut Vec<u8>, v: &Option<String>) {
            match v {
                Some(v) => {
                    out.push(1);
                    s(out, v);
                }
                None => out.push(0),
            }
        }
        let mut out = Vec::with_capacity(128 + self.key.len());
        out.push(META_RECORD_VERSION);
        s(&mut out, &self.key);
        out.extend_from_slice(&self.total_len.to_le_bytes());
        out.extend_from_slice(&self.status.to_le_bytes());
        opt(&mut out, &self.etag);
        opt(&mut out, &self.last_modified);
        opt(&mut out, &self.content_type);
        opt(&mut out, &self.cache_control);
        opt(&mut out, &self.expires);
        opt(&mut out, &self.date);
        out.extend_from_slice(&self.age.to_le_bytes());
        out.extend_from_slice(&self.stored_at.to_le_bytes());
        let n = self.fields.len().min(u16::MAX as usize);
        out.extend_from_slice(&(n as u16).to_le_bytes());
        for (k, v) in &self.fields[..n] {
            s(&mut out, k);
            s(&mut out, v);
        }
        out.extend_from_slice(&self.instance.to_le_bytes());
        out
    }

    /// Does every string fit its record length (65,535 bytes) and the fields their count
    /// (65,535 lines)? A response that does not is not stored: a cut field would be a wrong one.
    pub fn fits_record(&self) -> bool {
        let max = u16::MAX as usize;
        let opts = [
            &self.etag,
            &self.last_modified,
            &self.content_type,
            &self.cache_control,
            &self.expires,
            &self.date,
        ];
        self.key.len() <= max
            && opts
                .iter()
                .all(|o| o.as_ref().is_none_or(|v| v.len() <= max))
            && self.fields.len() <= max
            && self
                .fields
                .iter()
                .all(|(k, v)| k.len() <= max && v.len() <= max)
    }

    /// Was this encoded record written by the older format 1 (read, with the fields it kept)?
    pub fn is_older_record(buf: &[u8]) -> bool {
        buf.first() == Some(&META_RECORD_VERSION_1)
    }

    /// Reads what [`ObjectMeta::encode`] wrote (or a version 1 record, same layout); bytes
    /// past the record are ignored.
    ///
    /// # Errors
    ///
    /// `BadField("meta record version")` for another record version, `BadField("meta record")`
    /// if the record is cut short, a string is not UTF-8 or an option tag is not 0 or 1.
    pub fn decode(buf: &[u8]) -> Result<Self, HeaderError> {
        fn s(r: &mut Reader<'_>) -> Option<String> {
            let len = r.u16()? as usize;
            String::from_utf8(r.take(len)?.to_vec()).ok()
        }
        fn opt(r: &mut Reader<'_>) -> Option<Option<String>> {
            match r.u8()? {
                0 => Some(None),
                1 => Some(Some(s(r)?)),
                _ => None,
            }
        }
        let mut r = Reader { buf, at: 0 };
        let bad = HeaderError::BadField("meta record");
        let record_version = r.u8().ok_or(bad)?;
        if !matches!(record_version, META_RECORD_VERSION | META_RECORD_VERSION_1) {
            return Err(HeaderError::BadField("meta record version"));
        }
        let decode = |r: &mut Reader<'_>| -> Option<ObjectMeta> {
            let mut m = ObjectMeta {
                key: s(r)?,
                total_len: r.u64()?,
                status: r.u16()?,
                etag: opt(r)?,
                last_modified: opt(r)?,
                content_type: opt(r)?,
                cache_control: opt(r)?,
                expires: opt(r)?,
                date: opt(r)?,
                age: r.u64()?,
                stored_at: r.u64()?,
                fields: Vec::new(),
                instance: 0,
            };
            let n = r.u16()?;
            for _ in 0..n {
                m.fields.push((s(r)?, s(r)?));
            }
            if record_version == META_RECORD_VERSION {
                m.instance = r.u64()?;
            }
            Some(m)
        };
        decode(&mut r).ok_or(bad)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn slot_header() -> SlotHeader {
        SlotHeader {
            kind: SlotKind::Data,
            region_generation: 7,
            key_hash: 0x0123_4567_89ab_cdef_fedc_ba98_7654_3210,
            block: 42,
            data_len: 1 << 20,
            data_crc: 0xdead_beef,
            object_version: 99,
            seq: 1234,
        }
    }

    #[test]
    fn slot_header_round_trips() {
        let h = slot_header();
        assert_eq!(SlotHeader::decode(&h.encode()), Ok(h));
    }

    #[test]
    fn slot_header_rejects_every_single_bit_flip() {
        let enc = slot_header().encode();
        for byte in 0..64 {
            for bit in 0..8 {
                let mut b = enc;
                b[byte] ^= 1 << bit;
                assert!(
                    SlotHeader::decode(&b).is_err(),
                    "flip {byte}:{bit} accepted"
                );
            }
        }
    }

    #[test]
    fn zeroed_header_is_empty_not_damage() {
        assert_eq!(SlotHeader::decode(&[0; 64]), Err(HeaderError::Empty));
        assert_eq!(RegionHeader::decode(&[0; 64]), Err(HeaderError::Empty));
    }

    #[test]
    fn headers_of_other_kinds_are_not_confused() {
        let r = RegionHeader {
            kind: SlotKind::Meta,
            slot_size: 1024,
            generation: 3,
        };
        assert_eq!(RegionHeader::decode(&r.encode()), Ok(r));
        assert_eq!(SlotHeader::decode(&r.encode()), Err(HeaderError::BadMagic));
    }

    #[test]
    fn slab_header_round_trips_and_checks_geometry() {
        let h = SlabHeader {
            block_size: 1 << 20,
            region_len: region_len(1 << 20),
            regions: 1023,
            slab_no: 3,
            store_id: 77,
        };
        assert_eq!(SlabHeader::decode(&h.encode()), Ok(h));
        let bad = SlabHeader { region_len: 5, ..h };
        assert_eq!(
            SlabHeader::decode(&bad.encode()),
            Err(HeaderError::BadField("geometry"))
        );
    }

    #[test]
    fn classes_cover_small_to_full_block() {
        let c = slot_classes(1 << 20);
        assert_eq!(c[0], 512);
        assert_eq!(c[1], 768);
        assert_eq!(*c.last().unwrap(), (1 << 20) + 64);
        assert!(c.windows(2).all(|w| w[0] < w[1]));
        // 10 KiB of data goes to the 12 KiB class.
        assert_eq!(c[class_for(&c, 10 * 1024).unwrap() as usize], 12 * 1024);
        assert_eq!(class_for(&c, 1 << 20), Some((c.len() - 1) as u8));
        assert_eq!(class_for(&c, (1 << 20) + 1), None);
        // A full block fits exactly one slot per region.
        assert_eq!(slots_per_region(1 << 20, *c.last().unwrap()), 1);
        assert_eq!(slots_per_region(1 << 20, 12 * 1024), 85);
    }

    #[test]
    fn meta_round_trips() {
        let m = ObjectMeta {
            key: "adu/region/inst/guid/file.swu".into(),
            total_len: 123_456_789,
            status: 200,
            etag: Some("\"abc\"".into()),
            last_modified: Some("Wed, 21 Oct 2015 07:28:00 GMT".into()),
            content_type: Some("application/octet-stream".into()),
            cache_control: Some("max-age=3600".into()),
            expires: None,
            date: Some("Wed, 21 Oct 2015 07:28:00 GMT".into()),
            age: 5,
            stored_at: 1_700_000_000,
            fields: vec![("content-encoding".into(), "gzip".into())],
            instance: 0,
        };
        let enc = m.encode();
        assert_eq!(ObjectMeta::decode(&enc), Ok(m.clone()));
        assert!(ObjectMeta::decode(&enc[..enc.len() - 1]).is_err());
    }

    #[test]
    fn version_tracks_validators_and_length() {
        let a = ObjectMeta {
            total_len: 10,
            etag: Some("x".into()),
            ..Default::default()
        };
        let mut b = a.clone();
        b.stored_at = 99;
        assert_eq!(a.version(), b.version());
        b.total_len = 11;
        assert_ne!(a.version(), b.version());
        let mut c = a.clone();
        c.etag = None;
        c.last_modified = Some("x".into());
        assert_ne!(a.version(), c.version());
    }

    #[test]
    fn block_lengths() {
        let m = ObjectMeta {
            total_len: 2 * 1024 + 5,
            ..Default::default()
        };
        assert_eq!(m.block_count(1024), 3);
        assert_eq!(m.block_len(1024, 0), 1024);
        assert_eq!(m.block_len(1024, 2), 5);
        assert_eq!(m.block_len(1024, 3), 0);
    }

    #[test]
    fn a_format_1_record_reads_with_its_fields_and_another_version_is_refused() {
        let m = ObjectMeta {
            key: "http://example.org/a".into(),
            total_len: 10,
            etag: Some("\"e\"".into()),
            fields: vec![("content-encoding".into(), "gzip".into())],
            ..Default::default()
        };
        let mut rec = m.encode();
        assert!(!ObjectMeta::is_older_record(&rec));
        rec[0] = 1;
        assert!(ObjectMeta::is_older_record(&rec));
        assert_eq!(ObjectMeta::decode(&rec), Ok(m));
        rec[0] = 3;
        assert_eq!(
            ObjectMeta::decode(&rec),
            Err(HeaderError::BadField("meta record version"))
        );
    }

    #[test]
    fn a_field_longer_than_a_record_string_does_not_fit() {
        let mut m = ObjectMeta::default();
        assert!(m.fits_record());
        m.fields.push(("x-big".into(), "v".repeat(70_000)));
        assert!(!m.fits_record());
    }
}
