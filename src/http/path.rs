//! Request paths: the characters a request target may carry, and the normalisation that keeps a
//! routed path under its prefix (RFC 3986 §6.2.2 and §5.2.4).

use std::borrow::Cow;

/// Why a path was refused (a 400 naming the reason).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum PathError {
    /// A `#`: a request target has no fragment (RFC 9112 §3.2).
    #[error("request target has a fragment ('#')")]
    Fragment,
    /// A byte outside visible ASCII (RFC 3986 §2).
    #[error("request target has a non-ASCII, whitespace or control byte")]
    Byte,
    /// A `%` not followed by two hex digits (RFC 3986 §2.1).
    #[error("malformed percent-encoding in path")]
    Percent,
    /// A `..` segment that would climb above `/` (RFC 3986 §5.2.4).
    #[error("path climbs above its root ('..')")]
    AboveRoot,
    /// `%2F`, `%5C` or a literal `\` in a routed path (see [`check_routed`]).
    #[error("encoded '/' or '\\' (or a '\\') in a routed path")]
    Separator,
    /// A segment starting with `..`, a `%00`, a double encoding or an overlong UTF-8 lead in a
    /// routed path (see [`check_routed`]).
    #[error("a disguised '..', a NUL or a double encoding in a routed path")]
    Disguised,
}

/// Checks the bytes of a whole request target: visible ASCII only, no fragment (RFC 9112 §3.2
/// has none; RFC 3986 §2 allows no other bytes).
pub fn check_target(t: &str) -> Result<(), PathError> {
    for b in t.bytes() {
        match b {
            b'#' => return Err(PathError::Fragment),
            0x21..=0x7e => {}
            _ => return Err(PathError::Byte),
        }
    }
    Ok(())
}

fn hex(b: u8) -> Option<u8> {
    (b as char).to_digit(16).map(|d| d as u8)
}

fn unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~')
}

/// Decodes percent-encoded unreserved characters and upper-cases the hex of the rest
/// (RFC 3986 §6.2.2.1-6.2.2.2): `%2e%2E` becomes `..`, `%2f` becomes `%2F`.
pub fn decode_unreserved(path: &str) -> Result<String, PathError> {
    let b = path.as_bytes();
    let mut out = String::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let (Some(h), Some(l)) = (
                b.get(i + 1).copied().and_then(hex),
                b.get(i + 2).copied().and_then(hex),
            ) else {
                return Err(PathError::Percent);
            };
            let v = h << 4 | l;
            if unreserved(v) {
                out.push(v as char);
            } else {
                out.push('%');
                out.push(b[i + 1].to_ascii_uppercase() as char);
                out.push(b[i + 2].to_ascii_uppercase() as char);
            }
            i += 3;
        } else {
            out.push(b[i] as char);
            i += 1;
        }
    }
    Ok(out)
}

/// Removes `.` and `..` segments from an absolute path (RFC 3986 §5.2.4, after
/// [`decode_unreserved`]). A `..` that would climb above `/` is an error rather than being
/// dropped silently: such a request is an attempt to leave a prefix.
pub fn remove_dot_segments(path: &str) -> Result<String, PathError> {
    normalize(path).map(Cow::into_owned)
}

/// [`remove_dot_segments`], borrowing `path` when normalising leaves it as it is (nothing
/// encoded, no dot-segment: the common case, which then allocates nothing).
pub fn normalize(path: &str) -> Result<Cow<'_, str>, PathError> {
    if !path.contains('%') && !path.contains("/.") {
        return Ok(Cow::Borrowed(path));
    }
    let path = decode_unreserved(path)?;
    let mut segs: Vec<&str> = Vec::new();
    let mut parts = path.split('/').skip(1).peekable();
    // A trailing "." or ".." names a directory: the result ends with '/'.
    let mut trailing_slash = false;
    while let Some(s) = parts.next() {
        let last = parts.peek().is_none();
        match s {
            "." => trailing_slash = last,
            ".." => {
                if segs.pop().is_none() {
                    return Err(PathError::AboveRoot);
                }
                trailing_slash = last;
            }
            s => {
                segs.push(s);
                trailing_slash = false;
            }
        }
    }
    let mut out = String::with_capacity(path.len());
    for s in &segs {
        out.push('/');
        out.push_str(s);
    }
    if trailing_slash || out.is_empty() {
        out.push('/');
    }
    Ok(Cow::Owned(out))
}

/// Refuses what an origin might still read as a separator or a parent after we matched a
/// prefix: `%2F`, `%5C` and a literal `\` (some servers read it as `/`); a segment that begins
/// with `..` (`..;` is `..` to servlet containers); a NUL; a double-encoded `.`, `/` or `\`
/// (`%252e`, for servers that decode twice); and the overlong UTF-8 leads `%C0`/`%C1`
/// (`%c0%ae` is `.` to lax decoders). `path` is normalised already ([`remove_dot_segments`]);
/// the scan allocates nothing and reads each byte once (it runs on every routed request).
pub fn check_routed(path: &str) -> Result<(), PathError> {
    let b = path.as_bytes();
    // The two hex digits at `at`, upper-cased (percent-encoding ignores their case).
    let hex_at = |at: usize| {
        b.get(at..at + 2)
            .map(|h| [h[0].to_ascii_uppercase(), h[1].to_ascii_uppercase()])
    };
    // A separator anywhere is named before a disguise anywhere.
    let (mut separator, mut disguised) = (false, false);
    for (i, &c) in b.iter().enumerate() {
        match c {
            b'\\' => separator = true,
            b'%' => match hex_at(i + 1) {
                Some([b'2', b'F'] | [b'5', b'C']) => separator = true,
                Some([b'0', b'0'] | [b'C', b'0'] | [b'C', b'1']) => disguised = true,
                // `%25` then an encoded `.`, `/` or `\`: a double encoding.
                Some([b'2', b'5']) => {
                    disguised |= matches!(
                        hex_at(i + 3),
                        Some([b'2', b'E'] | [b'2', b'F'] | [b'5', b'C'])
                    );
                }
                _ => {}
            },
            // A segment (at the start, or after a '/') that begins with "..".
            b'.' => disguised |= (i == 0 || b[i - 1] == b'/') && b.get(i + 1) == Some(&b'.'),
            _ => {}
        }
    }
    if separator {
        Err(PathError::Separator)
    } else if disguised {
        Err(PathError::Disguised)
    } else {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dot_segments_rfc3986_examples() {
        // RFC 3986 §5.2.4's examples, and the normal cases.
        for (input, want) in [
            ("/a/b/c/./../../g", "/a/g"),
            ("/mid/content=5/../6", "/mid/6"),
            ("/a/./b", "/a/b"),
            ("/a/b/..", "/a/"),
            ("/a/b/.", "/a/b/"),
            ("/", "/"),
            ("/a//b", "/a//b"),
            ("/debian/pool/a.deb", "/debian/pool/a.deb"),
            ("/debian/%2e%2E/debian/x", "/debian/x"),
            ("/a/%7euser", "/a/~user"),
            ("/a/%3f", "/a/%3F"),
            ("/a/..", "/"),
        ] {
            assert_eq!(remove_dot_segments(input).as_deref(), Ok(want), "{input:?}");
        }
    }

    #[test]
    fn climbing_above_the_root_is_refused() {
        for input in [
            "/..",
            "/../a",
            "/a/../../b",
            "/%2e%2e/a",
            "/.%2E/a",
            "/a/./../..",
        ] {
            assert_eq!(
                remove_dot_segments(input),
                Err(PathError::AboveRoot),
                "{input:?}"
            );
        }
    }

    #[test]
    fn malformed_percent_is_refused() {
        for input in ["/a%", "/a%2", "/a%zz", "/a%2g"] {
            assert_eq!(
                decode_unreserved(input),
                Err(PathError::Percent),
                "{input:?}"
            );
        }
    }

    #[test]
    fn target_bytes() {
        assert_eq!(check_target("/a?b=c&d"), Ok(()));
        assert_eq!(check_target("/a#frag"), Err(PathError::Fragment));
        assert_eq!(check_target("/a b"), Err(PathError::Byte));
        assert_eq!(check_target("/ä"), Err(PathError::Byte));
        assert_eq!(check_target("/a\u{7f}"), Err(PathError::Byte));
    }

    #[test]
    fn check_routed_judges_as_the_previous_scan() {
        // The previous implementation (one scan per pattern) as the reference, over strings
        // drawn from the bytes the patterns are made of.
        fn reference(path: &str) -> Result<(), PathError> {
            let has = |needle: &str| {
                path.as_bytes()
                    .windows(needle.len())
                    .any(|w| w.eq_ignore_ascii_case(needle.as_bytes()))
            };
            if has("%2F") || has("%5C") || path.contains('\\') {
                return Err(PathError::Separator);
            }
            let disguised = ["%00", "%252E", "%252F", "%255C", "%C0", "%C1"]
                .iter()
                .any(|p| has(p))
                || path.split('/').any(|seg| seg.starts_with(".."));
            if disguised {
                return Err(PathError::Disguised);
            }
            Ok(())
        }
        let alphabet = b"/.%25cCfFeE01\\a";
        // A fixed linear congruential sequence: the same strings on every run.
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut next = |n: usize| {
            x = x
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            (x >> 33) as usize % n
        };
        for _ in 0..200_000 {
            let len = next(12);
            let s: String = (0..len)
                .map(|_| alphabet[next(alphabet.len())] as char)
                .collect();
            assert_eq!(check_routed(&s), reference(&s), "{s:?}");
        }
        for s in [
            "", "/", "..", "/..", "/a/..b", "/a%252e", "/%c0", "/%2", "/%25", "%252F",
        ] {
            assert_eq!(check_routed(s), reference(s), "{s:?}");
        }
    }

    #[test]
    fn normalize_borrows_what_it_leaves_alone() {
        assert!(matches!(
            normalize("/debian/pool/a.deb"),
            Ok(Cow::Borrowed(_))
        ));
        assert_eq!(normalize("/a/./b").as_deref(), Ok("/a/b"));
        assert_eq!(normalize("/.."), Err(PathError::AboveRoot));
    }

    #[test]
    fn routed_separators() {
        assert_eq!(check_routed("/debian/pool/a.deb"), Ok(()));
        for input in [
            "/debian/..%2Fa",
            "/debian/..%2fa",
            "/debian/..%5Ca",
            "/debian/..\\a",
        ] {
            assert_eq!(check_routed(input), Err(PathError::Separator), "{input:?}");
        }
    }
}
