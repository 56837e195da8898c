//! Authorities (`host[:port]`): every way a request or the configuration names an origin or a
//! parent is parsed once into an [`Authority`], and only that value is ever matched against the
//! allowed origins or put into an upstream URL (never an open proxy).
//!
//! The grammar is RFC 3986 §3.2.2 and §3.2.3, narrowed to what a DNS name or an address can be:
//! a reg-name of LDH labels (letters, digits, `-`; `_` too, which Docker and some internal zones
//! use), a dotted-quad IPv4 address, or a bracketed IPv6 literal; a port of digits, 1-65535.
//! Userinfo, percent-encoding, whitespace, non-ASCII and the delimiters `/ ? # @ \` are refused,
//! so no authority can end early or smuggle a second host into a URL built from it.

use std::fmt::{self, Write as _};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// Longest host name in DNS (RFC 1035 §2.3.4: 255 octets on the wire, 253 written out).
pub const MAX_NAME: usize = 253;

/// A validated host: a lower-case DNS name or an IP address.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Host {
    /// LDH labels, lower case, without a trailing dot; never all-numeric in its last label
    /// (that would be read as an IPv4 address by resolvers).
    Name(String),
    /// A dotted-quad IPv4 address (RFC 3986 §3.2.2 `IPv4address`).
    V4(Ipv4Addr),
    /// An IPv6 literal, written in brackets (RFC 3986 §3.2.2 `IP-literal`).
    V6(Ipv6Addr),
}

impl Host {
    /// The name, if this host is one (an address is never matched by a wildcard).
    pub fn name(&self) -> Option<&str> {
        match self {
            Host::Name(n) => Some(n),
            _ => None,
        }
    }

    /// The address, if this host is one.
    pub fn ip(&self) -> Option<IpAddr> {
        match self {
            Host::Name(_) => None,
            Host::V4(a) => Some(IpAddr::V4(*a)),
            Host::V6(a) => Some(IpAddr::V6(*a)),
        }
    }

    /// Appends the host as [`Display`](fmt::Display) writes it; a name is copied as it is,
    /// without the formatting machinery (routing writes one into every target).
    pub fn push_to(&self, out: &mut String) {
        match self {
            Host::Name(n) => out.push_str(n),
            ip => {
                let _ = write!(out, "{ip}");
            }
        }
    }
}

impl fmt::Display for Host {
    /// As it appears in a URL or `Host`: IPv6 in brackets (RFC 3986 §3.2.2).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Host::Name(n) => f.write_str(n),
            Host::V4(a) => write!(f, "{a}"),
            Host::V6(a) => write!(f, "[{a}]"),
        }
    }
}

/// A validated `host[:port]`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Authority {
    /// The host, validated and lower-cased.
    pub host: Host,
    /// The port as given; `None` when the text named none (the scheme's default applies).
    pub port: Option<u16>,
}

/// Why a text is not an authority. The message names the offending part, for a 400 body or a
/// configuration error.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthorityError {
    /// No host (also a bare `.`, or an unbracketed IPv6 address, whose first `:` starts the
    /// port).
    #[error("empty host")]
    Empty,
    /// An `@`: userinfo (RFC 3986 §3.2.1) could hide the real host behind a fake one.
    #[error("userinfo ('@') is not allowed")]
    Userinfo,
    /// One of `/ ? #` (which end an authority, RFC 3986 §3.2) or `\` (a `/` to WHATWG parsers).
    #[error("{0:?} is not allowed in a host")]
    Delimiter(char),
    /// A `%`: a percent-encoded reg-name (RFC 3986 §3.2.2) is decoded differently by each reader.
    #[error("percent-encoding is not allowed in a host")]
    PercentEncoded,
    /// ASCII whitespace or a control character.
    #[error("whitespace or control characters are not allowed in a host")]
    Whitespace,
    /// A non-ASCII character: an IDN must come as its A-label (`xn--`).
    #[error("non-ASCII characters are not allowed in a host (use the A-label, xn--...)")]
    NonAscii,
    /// A bracketed literal that is not an IPv6 address, or text after its `]` other than a port.
    #[error("bad IPv6 literal")]
    Ipv6,
    /// A port that is empty, not all digits, 0 or over 65535 (RFC 3986 §3.2.3, narrowed).
    #[error("bad port: must be digits, 1 to 65535")]
    Port,
    /// A name that breaks the LDH rules or reads as a non-canonical IPv4 address; the text
    /// says which rule.
    #[error("bad host name: {0}")]
    Name(&'static str),
}

/// Is `b` allowed in a label (LDH, plus `_`)?
fn label_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'-' || b == b'_'
}

/// Would a resolver's `inet_aton` read this label as a number (decimal, octal or hex)? The
/// `0x` prefix in either case (the label is not lower-cased yet).
fn numeric_label(l: &[u8]) -> bool {
    let hex = l.len() >= 2
        && l[..2].eq_ignore_ascii_case(b"0x")
        && l[2..].iter().all(u8::is_ascii_hexdigit);
    hex || (!l.is_empty() && l.iter().all(u8::is_ascii_digit))
}

/// Parses a host without a port (lower-cased): a name, a dotted-quad IPv4 address or a
/// bracketed IPv6 literal.
pub fn parse_host(s: &str) -> Result<Host, AuthorityError> {
    check_chars(s)?;
    host_of(s)
}

/// Refuses every character that could end an authority, add userinfo, or be decoded later.
/// Scans bytes (the first byte of a non-ASCII character is >= 0x80): the same verdict as a
/// scan of characters, without decoding them.
fn check_chars(s: &str) -> Result<(), AuthorityError> {
    if s.is_empty() {
        return Err(AuthorityError::Empty);
    }
    for &b in s.as_bytes() {
        match b {
            b'@' => return Err(AuthorityError::Userinfo),
            b'/' | b'?' | b'#' | b'\\' => return Err(AuthorityError::Delimiter(b as char)),
            b'%' => return Err(AuthorityError::PercentEncoded),
            0x80.. => return Err(AuthorityError::NonAscii),
            b if b.is_ascii_whitespace() || b.is_ascii_control() => {
                return Err(AuthorityError::Whitespace);
            }
            _ => {}
        }
    }
    Ok(())
}

fn host_of(s: &str) -> Result<Host, AuthorityError> {
    if let Some(inner) = s.strip_prefix('[') {
        let lit = inner.strip_suffix(']').ok_or(AuthorityError::Ipv6)?;
        return lit
            .parse::<Ipv6Addr>()
            .map(Host::V6)
            .map_err(|_| AuthorityError::Ipv6);
    }
    // A trailing dot names the same host (an FQDN written absolutely).
    let name = s.strip_suffix('.').unwrap_or(s);
    if name.is_empty() {
        return Err(AuthorityError::Empty);
    }
    if name.len() > MAX_NAME {
        return Err(AuthorityError::Name("longer than 253 characters"));
    }
    // Every check below ignores case, so the text is lower-cased once, and only for a name
    // (a `Host` field naming an address, the common case of a cache reached by its address,
    // allocates nothing).
    let last = check_labels(name)?;
    if numeric_label(last) {
        // Resolvers read such names as IPv4 (127.1, 0x7f.1, 2130706433): only the canonical
        // dotted quad is taken, as an address.
        return dotted_quad(name).map(Host::V4).ok_or(AuthorityError::Name(
            "numeric, but not a dotted-quad IPv4 address",
        ));
    }
    Ok(Host::Name(name.to_ascii_lowercase()))
}

/// Checks every label of `name` (LDH rules, in order, the first fault named) and returns the
/// last one.
fn check_labels(name: &str) -> Result<&[u8], AuthorityError> {
    let mut last: &[u8] = &[];
    for l in name.as_bytes().split(|&b| b == b'.') {
        if l.is_empty() {
            return Err(AuthorityError::Name("empty label"));
        }
        if l.len() > 63 {
            return Err(AuthorityError::Name("label longer than 63 characters"));
        }
        if !l.iter().all(|&b| label_byte(b)) {
            return Err(AuthorityError::Name(
                "only letters, digits, '-', '_' and '.' are allowed",
            ));
        }
        if l.starts_with(b"-") || l.ends_with(b"-") {
            return Err(AuthorityError::Name(
                "a label may not start or end with '-'",
            ));
        }
        last = l;
    }
    Ok(last)
}

/// The IPv4 address `s` writes as a canonical dotted quad: four decimal octets of one to three
/// digits, none over 255, no leading zero. Exactly what `Ipv4Addr`'s parser accepts (a unit
/// test compares them), in one pass over the bytes, without its generic machinery, which
/// cost more than the rest of parsing a `Host` field. Canonical text is what `Ipv4Addr`
/// displays, so `dotted_quad(t) == Some(a)` holds exactly when `t == a.to_string()`.
pub fn dotted_quad(s: &str) -> Option<Ipv4Addr> {
    let mut octets = [0u8; 4];
    // The octet being read: its index, value and digits so far.
    let (mut n, mut value, mut digits) = (0, 0u16, 0);
    for &b in s.as_bytes() {
        match b {
            // A digit after a leading '0' (value 0 with one digit read) is refused.
            b'0'..=b'9' if digits < 3 && !(digits == 1 && value == 0) => {
                value = value * 10 + u16::from(b - b'0');
                digits += 1;
            }
            b'.' if digits > 0 && n < 3 => {
                octets[n] = u8::try_from(value).ok()?;
                (n, value, digits) = (n + 1, 0, 0);
            }
            _ => return None,
        }
    }
    if digits == 0 || n != 3 {
        return None;
    }
    octets[3] = u8::try_from(value).ok()?;
    Some(Ipv4Addr::from(octets))
}

fn port_of(p: &str) -> Result<u16, AuthorityError> {
    if p.is_empty() || p.len() > 5 || !p.bytes().all(|b| b.is_ascii_digit()) {
        return Err(AuthorityError::Port);
    }
    match p.parse::<u16>() {
        Ok(n) if n > 0 => Ok(n),
        _ => Err(AuthorityError::Port),
    }
}

impl Authority {
    /// Parses `host[:port]` (RFC 3986 §3.2.2-3.2.3, narrowed as the module says). The host is
    /// lower-cased; a port is kept only if given.
    pub fn parse(s: &str) -> Result<Authority, AuthorityError> {
        check_chars(s)?;
        let (host, port) = if s.starts_with('[') {
            match s.find(']') {
                Some(i) => match &s[i + 1..] {
                    "" => (s, None),
                    tail => match tail.strip_prefix(':') {
                        Some(p) => (&s[..=i], Some(p)),
                        None => return Err(AuthorityError::Ipv6),
                    },
                },
                None => return Err(AuthorityError::Ipv6),
            }
        } else {
            match s.split_once(':') {
                Some((h, p)) => (h, Some(p)),
                None => (s, None),
            }
        };
        Ok(Authority {
            host: host_of(host)?,
            port: port.map(port_of).transpose()?,
        })
    }

    /// The same host with the port set.
    pub fn with_port(&self, port: Option<u16>) -> Authority {
        Authority {
            host: self.host.clone(),
            port,
        }
    }

    /// The port, or `default` when none was given.
    pub fn port_or(&self, default: u16) -> u16 {
        self.port.unwrap_or(default)
    }

    /// As written in a URL or `Host` for `scheme_default`: the port only when it is not the
    /// scheme's default (RFC 9110 §4.2.3 normalisation).
    pub fn for_scheme(&self, scheme_default: u16) -> String {
        // Room for a name and ":65535": one allocation, the same text as `format!`.
        let mut s = String::with_capacity(self.host.name().map_or(47, str::len) + 6);
        self.host.push_to(&mut s);
        if let Some(p) = self.port.filter(|&p| p != scheme_default) {
            let _ = write!(s, ":{p}");
        }
        s
    }
}

impl fmt::Display for Authority {
    /// `host[:port]`, IPv6 in brackets.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.port {
            Some(p) => write!(f, "{}:{p}", self.host),
            None => write!(f, "{}", self.host),
        }
    }
}

/// The default port of `http` (80) or `https` (443) (RFC 9110 §4.2.1-4.2.2).
pub fn default_port(https: bool) -> u16 {
    if https { 443 } else { 80 }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(s: &str) -> String {
        Authority::parse(s)
            .unwrap_or_else(|e| panic!("{s:?}: {e}"))
            .to_string()
    }

    #[test]
    fn accepted_and_normalised() {
        for (input, want) in [
            ("Example.ORG", "example.org"),
            ("example.org.", "example.org"),
            ("a-b.example.org:8080", "a-b.example.org:8080"),
            (
                "x--y.b.nlu.dl.adu.microsoft.com",
                "x--y.b.nlu.dl.adu.microsoft.com",
            ),
            ("gw_l3.example.org:80", "gw_l3.example.org:80"),
            ("10.0.0.1", "10.0.0.1"),
            ("10.0.0.1:81", "10.0.0.1:81"),
            ("[::1]", "[::1]"),
            ("[FD00:0:0::4]:8080", "[fd00::4]:8080"),
            ("localhost:080", "localhost:80"),
            ("h:65535", "h:65535"),
        ] {
            assert_eq!(ok(input), want, "{input:?}");
        }
    }

    #[test]
    fn every_delimiter_and_encoding_is_refused() {
        use AuthorityError::*;
        for (input, want) in [
            ("", Empty),
            (".", Empty),
            ("10.0.0.1:x.dl.adu.microsoft.com", Port),
            ("169.254.169.254:x.dl.delivery.mp.microsoft.com", Port),
            ("10.0.0.1?.dl.adu.microsoft.com", Delimiter('?')),
            ("10.0.0.1/.dl.adu.microsoft.com", Delimiter('/')),
            ("10.0.0.1#.dl.adu.microsoft.com", Delimiter('#')),
            ("10.0.0.1\\.dl.adu.microsoft.com", Delimiter('\\')),
            ("origin.test@x.dl.adu.microsoft.com", Userinfo),
            ("10.0.0.1%2f.dl.adu.microsoft.com", PercentEncoded),
            ("a b.dl.adu.microsoft.com", Whitespace),
            ("a\tb.example.org", Whitespace),
            ("a\u{0}.example.org", Whitespace),
            ("bücher.example.org", NonAscii),
            ("h:", Port),
            ("h:0", Port),
            ("h:65536", Port),
            ("h:+80", Port),
            ("h:123456", Port),
            ("h:80:80", Port),
            ("::1", Empty),
            ("[::1", Ipv6),
            ("[::1]x", Ipv6),
            ("[10.0.0.1]", Ipv6),
            ("[v1.x]", Ipv6),
        ] {
            assert_eq!(Authority::parse(input), Err(want), "{input:?}");
        }
    }

    #[test]
    fn names_that_resolvers_read_as_numbers_are_refused() {
        for input in [
            "127.1",
            "2130706433",
            "0x7f.1",
            "0x7f000001",
            "127.0.0.01",
            "1.2.3.4.5",
        ] {
            assert!(
                matches!(Authority::parse(input), Err(AuthorityError::Name(_))),
                "{input:?}"
            );
        }
        // A numeric label that is not the last one is an ordinary name.
        assert_eq!(ok("123.example.org"), "123.example.org");
    }

    #[test]
    fn bad_labels() {
        for input in [
            "a..b",
            "-a.example.org",
            "a-.example.org",
            "a*.example.org",
            "a,b",
            "a;b",
            "a!b",
            "a~b",
            &format!("{}.org", "a".repeat(64)),
            &format!("{}.org", ["a"; 130].join(".")),
        ] {
            assert!(
                matches!(Authority::parse(input), Err(AuthorityError::Name(_))),
                "{input:?}"
            );
        }
    }

    #[test]
    fn dotted_quad_is_what_std_parses() {
        // Every string of up to 6 characters over digits, dots and a letter, and the edges.
        let alphabet = [b'0', b'1', b'2', b'5', b'9', b'.', b'x'];
        let mut texts: Vec<String> = vec![
            "255.255.255.255".into(),
            "256.0.0.0".into(),
            "0.0.0.0".into(),
            "1.2.3.04".into(),
            "1.2.3.4.".into(),
            ".1.2.3.4".into(),
            "1..2.3".into(),
            "127.0.0.1".into(),
            "199.249.255.10".into(),
            "1000.1.1.1".into(),
            "1.2.3.-4".into(),
            "1.2.3.+4".into(),
            "١.2.3.4".into(),
        ];
        let mut frontier = vec![Vec::new()];
        for _ in 0..6 {
            let mut next = Vec::new();
            for t in &frontier {
                for &c in &alphabet {
                    let mut t: Vec<u8> = t.clone();
                    t.push(c);
                    next.push(t);
                }
            }
            texts.extend(next.iter().map(|t| String::from_utf8(t.clone()).unwrap()));
            frontier = next;
        }
        // Three, four and five parts, each a token from around the edges of an octet.
        let tokens = [
            "", "0", "00", "01", "1", "9", "10", "25", "99", "100", "199", "249", "255", "256",
            "300", "999", "1000", "x", "0x1",
        ];
        let mut joined = vec![String::new()];
        for parts in 1..=5 {
            let set: &[&str] = if parts < 5 { &tokens } else { &tokens[..6] };
            joined = joined
                .iter()
                .flat_map(|j| set.iter().map(move |t| format!("{j}.{t}")))
                .collect();
            if parts >= 3 {
                texts.extend(joined.iter().map(|j| j[1..].to_string()));
            }
        }
        for t in &texts {
            assert_eq!(dotted_quad(t), t.parse::<Ipv4Addr>().ok(), "{t:?}");
            if let Some(a) = dotted_quad(t) {
                assert_eq!(&a.to_string(), t, "only the canonical text is taken");
            }
        }
    }

    #[test]
    fn hosts_are_parsed_as_before() {
        // The previous parser (lower-case first, then std's IPv4 parser) as the reference.
        fn reference(s: &str) -> Result<Host, AuthorityError> {
            let lower = s.to_ascii_lowercase();
            let name = lower.strip_suffix('.').unwrap_or(&lower);
            if name.is_empty() {
                return Err(AuthorityError::Empty);
            }
            let last = check_labels(name)?;
            let hex = last
                .strip_prefix(b"0x")
                .is_some_and(|h| h.iter().all(u8::is_ascii_hexdigit));
            if hex || (!last.is_empty() && last.iter().all(u8::is_ascii_digit)) {
                return name.parse::<Ipv4Addr>().map(Host::V4).map_err(|_| {
                    AuthorityError::Name("numeric, but not a dotted-quad IPv4 address")
                });
            }
            Ok(Host::Name(name.to_string()))
        }
        for s in [
            "Example.ORG",
            "0X7F.1",
            "0x7F000001",
            "0XG1",
            "a.0X1F",
            "a.0x",
            "a.0X",
            "10.0.0.1",
            "10.0.0.1.",
            "10.0.0.01",
            "A.B.C.1",
            "1.2.3.4.5",
            "x.10",
            "-a.b",
            "a..b",
            "1e5",
        ] {
            assert_eq!(host_of(s), reference(s), "{s:?}");
        }
    }

    #[test]
    fn rendering_for_a_scheme_drops_its_default_port() {
        let a = Authority::parse("example.org:80").unwrap();
        assert_eq!(a.for_scheme(80), "example.org");
        assert_eq!(a.for_scheme(443), "example.org:80");
        assert_eq!(
            Authority::parse("[::1]:443").unwrap().for_scheme(443),
            "[::1]"
        );
        assert_eq!(Authority::parse("example.org").unwrap().port_or(80), 80);
    }
}
