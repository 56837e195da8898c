//! Authorities (`host[:port]`): every way a request or the configuration names an origin or a
//! parent is parsed once into an [`Authority`], and only that value is ever matched against the
//! allowed origins or put into an upstream URL (never an open proxy).
//!
//! The grammar is RFC 3986 §3.2.2 and §3.2.3, narrowed to what a DNS name or an address can be:
//! a reg-name of LDH labels (letters, digits, `-`; `_` too, which Docker and some internal zones
//! use), a dotted-quad IPv4 address, or a bracketed IPv6 literal; a port of digits, 1-65535.
//! Userinfo, percent-encoding, whitespace, non-ASCII and the delimiters `/ ? # @ \` are refused,
//! so no authority can end early or smuggle a second host into a URL built from it.

use std::fmt;
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

/// Would a resolver's `inet_aton` read this label as a number (decimal, octal or hex)?
fn numeric_label(l: &str) -> bool {
    let hex = l
        .strip_prefix("0x")
        .is_some_and(|h| h.bytes().all(|b| b.is_ascii_hexdigit()));
    hex || (!l.is_empty() && l.bytes().all(|b| b.is_ascii_digit()))
}

/// Parses a host without a port (lower-cased): a name, a dotted-quad IPv4 address or a
/// bracketed IPv6 literal.
pub fn parse_host(s: &str) -> Result<Host, AuthorityError> {
    check_chars(s)?;
    host_of(s)
}

/// Refuses every character that could end an authority, add userinfo, or be decoded later.
fn check_chars(s: &str) -> Result<(), AuthorityError> {
    if s.is_empty() {
        return Err(AuthorityError::Empty);
    }
    for c in s.chars() {
        match c {
            '@' => return Err(AuthorityError::Userinfo),
            '/' | '?' | '#' | '\\' => return Err(AuthorityError::Delimiter(c)),
            '%' => return Err(AuthorityError::PercentEncoded),
            c if !c.is_ascii() => return Err(AuthorityError::NonAscii),
            c if c.is_ascii_whitespace() || c.is_ascii_control() => {
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
    let lower = s.to_ascii_lowercase();
    // A trailing dot names the same host (an FQDN written absolutely).
    let name = lower.strip_suffix('.').unwrap_or(&lower);
    if name.is_empty() {
        return Err(AuthorityError::Empty);
    }
    if name.len() > MAX_NAME {
        return Err(AuthorityError::Name("longer than 253 characters"));
    }
    let mut last = "";
    for l in name.split('.') {
        if l.is_empty() {
            return Err(AuthorityError::Name("empty label"));
        }
        if l.len() > 63 {
            return Err(AuthorityError::Name("label longer than 63 characters"));
        }
        if !l.bytes().all(label_byte) {
            return Err(AuthorityError::Name(
                "only letters, digits, '-', '_' and '.' are allowed",
            ));
        }
        if l.starts_with('-') || l.ends_with('-') {
            return Err(AuthorityError::Name(
                "a label may not start or end with '-'",
            ));
        }
        last = l;
    }
    if numeric_label(last) {
        // Resolvers read such names as IPv4 (127.1, 0x7f.1, 2130706433): only the canonical
        // dotted quad is taken, as an address.
        return name
            .parse::<Ipv4Addr>()
            .map(Host::V4)
            .map_err(|_| AuthorityError::Name("numeric, but not a dotted-quad IPv4 address"));
    }
    Ok(Host::Name(name.to_string()))
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
        match self.port {
            Some(p) if p != scheme_default => format!("{}:{p}", self.host),
            _ => self.host.to_string(),
        }
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
