//! Byte ranges (RFC 9110 §14): parse a `Range` value and resolve it against a length.

use std::ops::Range;

/// One range as written by the client, before the length is known.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Spec {
    /// `a-b` (inclusive).
    FromTo(u64, u64),
    /// `a-`
    From(u64),
    /// `-n`: the last n bytes.
    Suffix(u64),
}

/// What to send for a request's `Range`, once the representation's length is known.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Resolved {
    /// No usable range: send the whole representation (200).
    Full,
    /// One or more satisfiable ranges (206), in the client's order, end exclusive.
    Partial(Vec<Range<u64>>),
    /// No range overlaps the representation (416 with `Content-Range: bytes */len`).
    Unsatisfiable,
}

/// More ranges than this in one header are answered with the whole object: a long list of
/// tiny ranges costs more to frame than to send, and is a known amplification trick.
pub const MAX_RANGES: usize = 16;

fn num(s: &str) -> Option<u64> {
    let s = s.trim_matches([' ', '\t']);
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

/// Parses a `Range` value `bytes=<range-set>` (RFC 9110 §14.1.1, §14.2) into its specs, in
/// order. `None` means the value is not a valid byte range set, which RFC 9110 §14.2 says to
/// ignore (serve the whole representation), not to reject.
pub fn parse(value: &str) -> Option<Vec<Spec>> {
    let value = value.trim();
    let (unit, set) = value.split_once('=')?;
    if !unit.trim().eq_ignore_ascii_case("bytes") {
        return None;
    }
    let mut specs = Vec::new();
    for part in set.split(',') {
        let part = part.trim_matches([' ', '\t']);
        if part.is_empty() {
            // Empty list elements are allowed by the list syntax.
            continue;
        }
        let (a, b) = part.split_once('-')?;
        let spec = match (a.trim().is_empty(), b.trim().is_empty()) {
            (true, true) => return None,
            (true, false) => Spec::Suffix(num(b)?),
            (false, true) => Spec::From(num(a)?),
            (false, false) => {
                let (a, b) = (num(a)?, num(b)?);
                if b < a {
                    return None;
                }
                Spec::FromTo(a, b)
            }
        };
        specs.push(spec);
    }
    (!specs.is_empty()).then_some(specs)
}

/// Resolves specs against a representation of `len` bytes (RFC 9110 §14.1.2): unsatisfiable
/// specs are dropped, the rest clamped to the length; overlapping or more than
/// [`MAX_RANGES`] ranges give [`Resolved::Full`] (§14.2 lets a server ignore such a set).
pub fn resolve(specs: &[Spec], len: u64) -> Resolved {
    let mut out = Vec::with_capacity(specs.len());
    for s in specs {
        let r = match *s {
            Spec::FromTo(a, b) if a < len => a..b.min(len - 1) + 1,
            Spec::From(a) if a < len => a..len,
            Spec::Suffix(n) if n > 0 && len > 0 => len - n.min(len)..len,
            _ => continue,
        };
        out.push(r);
    }
    if out.is_empty() {
        return Resolved::Unsatisfiable;
    }
    if out.len() > 1 {
        let mut sorted = out.clone();
        sorted.sort_by_key(|r| r.start);
        let overlapping = sorted.windows(2).any(|w| w[1].start < w[0].end);
        // Overlapping or very many ranges: the whole object is the simple, safe answer.
        if overlapping || out.len() > MAX_RANGES {
            return Resolved::Full;
        }
    }
    Resolved::Partial(out)
}

/// `Content-Range` value (RFC 9110 §14.4) for one range (end exclusive) of a `len`-byte
/// representation: `bytes first-last/len`, `last` inclusive. `r` must not be empty.
pub fn content_range(r: &Range<u64>, len: u64) -> String {
    format!("bytes {}-{}/{}", r.start, r.end - 1, len)
}

#[cfg(test)]
#[allow(clippy::single_range_in_vec_init)] // The table lists one-range answers.
mod tests {
    use super::*;

    fn res(v: &str, len: u64) -> Resolved {
        match parse(v) {
            Some(s) => resolve(&s, len),
            None => Resolved::Full,
        }
    }

    #[test]
    fn table() {
        use Resolved::*;
        let cases: &[(&str, u64, Resolved)] = &[
            ("bytes=0-499", 1000, Partial(vec![0..500])),
            ("bytes=500-", 1000, Partial(vec![500..1000])),
            ("bytes=-200", 1000, Partial(vec![800..1000])),
            ("bytes=-2000", 1000, Partial(vec![0..1000])),
            ("bytes=0-0", 1000, Partial(vec![0..1])),
            ("bytes=999-999", 1000, Partial(vec![999..1000])),
            ("bytes=900-5000", 1000, Partial(vec![900..1000])),
            ("bytes=1000-", 1000, Unsatisfiable),
            ("bytes=1000-2000", 1000, Unsatisfiable),
            ("bytes=-0", 1000, Unsatisfiable),
            ("bytes=0-", 0, Unsatisfiable),
            ("bytes=0-1,5-9", 1000, Partial(vec![0..2, 5..10])),
            ("bytes=5-9,0-1", 1000, Partial(vec![5..10, 0..2])),
            ("bytes=0-5,3-9", 1000, Full),
            ("bytes=0-1, 2000-3000", 1000, Partial(vec![0..2])),
            (" bytes = 1-2 ", 1000, Partial(vec![1..3])),
            ("BYTES=1-2", 1000, Partial(vec![1..3])),
            ("bytes=5-1", 1000, Full),
            ("bytes=abc", 1000, Full),
            ("bytes=", 1000, Full),
            ("bytes=-", 1000, Full),
            ("items=0-5", 1000, Full),
            ("bytes=+1-5", 1000, Full),
            ("bytes=1-2-3", 1000, Full),
            ("bytes=99999999999999999999999-", 1000, Full),
        ];
        for (v, len, want) in cases {
            assert_eq!(&res(v, *len), want, "{v} of {len}");
        }
    }

    #[test]
    fn too_many_ranges_become_the_whole_object() {
        let v = format!(
            "bytes={}",
            (0..=MAX_RANGES)
                .map(|i| format!("{}-{}", i * 10, i * 10 + 1))
                .collect::<Vec<_>>()
                .join(",")
        );
        assert_eq!(res(&v, 10_000), Resolved::Full);
    }

    #[test]
    fn content_range_is_inclusive() {
        assert_eq!(content_range(&(0..500), 1000), "bytes 0-499/1000");
    }
}
