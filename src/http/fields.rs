//! Which header fields an intermediary passes on: everything end to end, nothing that belongs
//! to one connection (RFC 9110 §7.6.1), and not the framing it writes itself (RFC 9112 §6).

/// Fields that describe one connection, never forwarded or stored (RFC 9110 §7.6.1; the
/// `Proxy-` pair is for this hop's authentication, RFC 9110 §11.7).
pub const HOP_BY_HOP: &[&str] = &[
    "connection",
    "proxy-connection",
    "keep-alive",
    "te",
    "transfer-encoding",
    "upgrade",
    "trailer",
    "proxy-authenticate",
    "proxy-authorization",
];

/// A field value as received (RFC 9110 §5.5: visible ASCII, and obs-text bytes 0x80-0xFF that
/// a recipient treats as opaque), held byte for byte: each byte one `char` (ISO 8859-1), so
/// [`write_wire`] gives the same bytes back whatever they are. ASCII, nearly every value, is
/// unchanged.
pub fn from_wire(bytes: &[u8]) -> String {
    match std::str::from_utf8(bytes) {
        Ok(s) if s.is_ascii() => s.to_string(),
        _ => bytes.iter().map(|&b| char::from(b)).collect(),
    }
}

/// Appends the bytes of a value held by [`from_wire`] to `out`. A `char` above U+00FF (a value
/// made by the cache itself, never one received) is written as UTF-8.
pub fn write_wire(value: &str, out: &mut Vec<u8>) {
    if value.is_ascii() {
        out.extend_from_slice(value.as_bytes());
        return;
    }
    for c in value.chars() {
        match u8::try_from(u32::from(c)) {
            Ok(b) => out.push(b),
            Err(_) => out.extend_from_slice(c.encode_utf8(&mut [0; 4]).as_bytes()),
        }
    }
}

/// The names listed in `Connection` values (RFC 9110 §7.6.1): they are hop-by-hop too.
/// Lower-cased.
pub fn connection_options<'a>(connection: impl Iterator<Item = &'a str>) -> Vec<String> {
    connection
        .flat_map(|v| v.split(','))
        .map(|t| t.trim().to_ascii_lowercase())
        .filter(|t| !t.is_empty())
        .collect()
}

/// The end-to-end fields of `fields` (name, value pairs in the order received, repeated lines
/// kept), without hop-by-hop fields, those named in `Connection`, and any name in `own`
/// (lower-case: fields the caller writes itself, such as the framing, RFC 9112 §6). Names
/// keep their case as received.
pub fn end_to_end<'a>(
    fields: impl Iterator<Item = (&'a str, &'a str)> + Clone,
    own: &[&str],
) -> Vec<(String, String)> {
    let named = connection_options(
        fields
            .clone()
            .filter(|(k, _)| k.eq_ignore_ascii_case("connection"))
            .map(|(_, v)| v),
    );
    fields
        .filter(|(k, _)| {
            let is = |list: &[&str]| list.iter().any(|n| k.eq_ignore_ascii_case(n));
            !is(HOP_BY_HOP) && !is(own) && !named.iter().any(|n| k.eq_ignore_ascii_case(n))
        })
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// The values of every line named `name` (any case), joined with `", "` as RFC 9110 §5.3
/// allows for a list field; `None` if there is no such line.
pub fn combined<'a>(
    fields: impl Iterator<Item = (&'a str, &'a str)>,
    name: &str,
) -> Option<String> {
    let mut out: Option<String> = None;
    for (_, v) in fields.filter(|(k, _)| k.eq_ignore_ascii_case(name)) {
        match &mut out {
            Some(s) => {
                s.push_str(", ");
                s.push_str(v.trim());
            }
            None => out = Some(v.trim().to_string()),
        }
    }
    out
}

/// Updates stored `fields` with those of a newer response (RFC 9111 §3.2): each name the newer
/// response carries replaces every stored line of that name; names in `keep` (lower-case:
/// fields the stored content depends on) are left as stored.
pub fn update(stored: &mut Vec<(String, String)>, newer: &[(String, String)], keep: &[&str]) {
    let replaced = |k: &str| {
        !keep.iter().any(|n| k.eq_ignore_ascii_case(n))
            && newer.iter().any(|(n, _)| n.eq_ignore_ascii_case(k))
    };
    stored.retain(|(k, _)| !replaced(k));
    stored.extend(
        newer
            .iter()
            .filter(|(k, _)| !keep.iter().any(|n| k.eq_ignore_ascii_case(n)))
            .cloned(),
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pairs(v: &[(&'static str, &'static str)]) -> Vec<(String, String)> {
        v.iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn hop_by_hop_framing_own_and_connection_named_fields_are_left_out() {
        let got = end_to_end(
            [
                ("Connection", "close, X-Hop"),
                ("X-Hop", "1"),
                ("Keep-Alive", "timeout=5"),
                ("Transfer-Encoding", "chunked"),
                ("Content-Length", "10"),
                ("Link", "<a>; rel=x"),
                ("ETag", "\"v\""),
                ("link", "<b>; rel=y"),
                ("X-Content-Sha256", "ab"),
            ]
            .into_iter(),
            &["etag", "content-length"],
        );
        assert_eq!(
            got,
            pairs(&[
                ("Link", "<a>; rel=x"),
                ("link", "<b>; rel=y"),
                ("X-Content-Sha256", "ab"),
            ])
        );
    }

    #[test]
    fn values_come_back_byte_for_byte() {
        for v in [
            &b"plain"[..],
            b"caf\xe9 \xff",
            "caf\u{e9} in UTF-8".as_bytes(),
            b"\x80\x81",
        ] {
            let mut out = Vec::new();
            write_wire(&from_wire(v), &mut out);
            assert_eq!(out, v);
        }
    }

    #[test]
    fn repeated_list_lines_combine_in_order() {
        let f = [
            ("Cache-Control", "max-age=1"),
            ("X", "y"),
            ("cache-control", " s-maxage=60 "),
        ];
        assert_eq!(
            combined(f.into_iter(), "cache-control").as_deref(),
            Some("max-age=1, s-maxage=60")
        );
        assert_eq!(combined(f.into_iter(), "expires"), None);
    }

    #[test]
    fn a_newer_response_replaces_each_name_it_carries_and_keeps_the_rest() {
        let mut stored = pairs(&[
            ("X-Sum", "old"),
            ("Link", "a"),
            ("Link", "b"),
            ("Content-Encoding", "gzip"),
        ]);
        update(
            &mut stored,
            &pairs(&[("x-sum", "new"), ("Content-Encoding", "br"), ("X-New", "1")]),
            &["content-encoding"],
        );
        assert_eq!(
            stored,
            pairs(&[
                ("Link", "a"),
                ("Link", "b"),
                ("Content-Encoding", "gzip"),
                ("x-sum", "new"),
                ("X-New", "1"),
            ])
        );
    }
}
