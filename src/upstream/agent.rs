//! The HTTP client every upstream request uses: timeouts, the outbound proxy, the roots trusted
//! for https origins (the system's plus `ca_file`), and `connect` overrides applied at name
//! resolution, so that https to an overridden origin still names it in SNI and the
//! certificate check.

use std::net::IpAddr;
use std::sync::Arc;

use ureq::config::Config as UreqConfig;
use ureq::http::Uri;
use ureq::tls::{Certificate, RootCerts, TlsConfig};
use ureq::unversioned::resolver::{DefaultResolver, ResolvedSocketAddrs, Resolver};
use ureq::unversioned::transport::{DefaultConnector, NextTimeout};

use crate::config::{Config, Origin};
use crate::http::authority;

/// Resolves origins that have a `connect` address to it; everything else through DNS, with
/// the answers of `deny_private` origins kept to public addresses.
#[derive(Debug)]
struct OverrideResolver {
    origins: Vec<Origin>,
    inner: DefaultResolver,
}

/// Is `ip` an address on the public internet? Loopback, private (RFC 1918, RFC 4193), shared
/// (RFC 6598), link-local (cloud metadata lives at 169.254.169.254), unspecified, multicast,
/// broadcast and reserved ranges are not; IPv4 inside IPv6 (mapped, NAT64) is judged as IPv4.
pub fn is_public(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(a) => {
            let o = a.octets();
            !(a.is_private()
                || a.is_loopback()
                || a.is_link_local()
                || a.is_unspecified()
                || a.is_broadcast()
                || a.is_multicast()
                || a.is_documentation()
                || o[0] == 0
                || o[0] >= 240
                || (o[0] == 100 && (o[1] & 0xc0) == 64)
                || (o[0] == 192 && o[1] == 0 && o[2] == 0)
                || (o[0] == 198 && (o[1] & 0xfe) == 18))
        }
        IpAddr::V6(a) => {
            if let Some(v4) = a.to_ipv4_mapped() {
                return is_public(IpAddr::V4(v4));
            }
            let s = a.segments();
            if s[0] == 0x64 && s[1] == 0xff9b && s[2..6] == [0, 0, 0, 0] {
                let v4 = std::net::Ipv4Addr::new(
                    (s[6] >> 8) as u8,
                    s[6] as u8,
                    (s[7] >> 8) as u8,
                    s[7] as u8,
                );
                return is_public(IpAddr::V4(v4));
            }
            !(a.is_loopback()
                || a.is_unspecified()
                || a.is_multicast()
                || (s[0] & 0xfe00) == 0xfc00
                || (s[0] & 0xffc0) == 0xfe80
                || (s[0] & 0xffc0) == 0xfec0
                || s[0] == 0x2001 && s[1] == 0xdb8
                || s[..6] == [0, 0, 0, 0, 0, 0])
        }
    }
}

impl Resolver for OverrideResolver {
    fn resolve(
        &self,
        uri: &Uri,
        config: &UreqConfig,
        timeout: NextTimeout,
    ) -> Result<ResolvedSocketAddrs, ureq::Error> {
        let host = uri.host().and_then(|h| authority::parse_host(h).ok());
        let origin = host
            .as_ref()
            .and_then(|h| self.origins.iter().find(|o| o.matches(h)));
        if let Some(addr) = origin.and_then(|o| o.connect) {
            let mut v = self.empty();
            v.push(addr);
            return Ok(v);
        }
        let answers = self.inner.resolve(uri, config, timeout)?;
        if !origin.is_some_and(|o| o.deny_private) {
            return Ok(answers);
        }
        let mut v = self.empty();
        for a in answers.iter().filter(|a| is_public(a.ip())) {
            v.push(*a);
        }
        if v.is_empty() {
            return Err(ureq::Error::Io(std::io::Error::new(
                std::io::ErrorKind::PermissionDenied,
                format!(
                    "{} resolved only to addresses that are not public (deny_private)",
                    uri.host().unwrap_or("")
                ),
            )));
        }
        Ok(v)
    }
}

/// Roots for https origins: the system's trust store plus the configured CA certificates.
fn roots(extra: &[Vec<u8>]) -> RootCerts {
    let native = rustls_native_certs::load_native_certs();
    for e in &native.errors {
        log::warn!("system CA certificates: {e}");
    }
    let mut certs: Vec<Certificate<'static>> = native
        .certs
        .iter()
        .map(|c| Certificate::from_der(c.as_ref()).to_owned())
        .collect();
    if certs.is_empty() && extra.is_empty() {
        log::warn!("no system CA certificates found; trusting the Mozilla roots built in");
        return RootCerts::WebPki;
    }
    certs.extend(extra.iter().map(|d| Certificate::from_der(d).to_owned()));
    log::debug!("{} CA certificates trusted for https origins", certs.len());
    RootCerts::Specific(Arc::new(certs))
}

/// The upstream client: timeouts, the outbound proxy, trusted roots, redirects off and the
/// resolver with `connect` overrides and `deny_private`. Errors name the bad proxy setting.
pub fn build(cfg: &Config) -> Result<ureq::Agent, String> {
    let u = &cfg.upstream;
    let proxy = match &u.proxy {
        Some(p) => Some(
            ureq::Proxy::new(&format!("http://{p}"))
                .map_err(|e| format!("upstream.proxy = {p:?}: {e}"))?,
        ),
        None => None,
    };
    let config = ureq::Agent::config_builder()
        .http_status_as_error(false)
        // Never follow a redirect: its Location could name any address (the 3xx is the
        // origin's answer, relayed or refused by the caller).
        .max_redirects(0)
        .timeout_connect(Some(u.connect_timeout))
        .timeout_recv_response(Some(u.read_timeout))
        .timeout_per_read(Some(u.read_timeout))
        .user_agent(concat!("gatecache/", env!("CARGO_PKG_VERSION")))
        // The client's `Accept` is forwarded as it sent it, or none (RFC 9110 §7.6): the
        // agent adds none of its own.
        .accept(ureq::config::AutoHeaderValue::None)
        .max_idle_connections_per_host(64)
        .proxy(proxy)
        .tls_config(TlsConfig::builder().root_certs(roots(&u.ca_certs)).build())
        .build();
    let resolver = OverrideResolver {
        origins: cfg.origins.clone(),
        inner: DefaultResolver::default(),
    };
    Ok(ureq::Agent::with_parts(
        config,
        DefaultConnector::default(),
        resolver,
    ))
}

#[cfg(test)]
mod tests {
    use super::is_public;

    #[test]
    fn public_addresses() {
        for a in [
            "93.184.215.14",
            "8.8.8.8",
            "2606:2800:21f:cb07:6820:80da:af6b:8b2c",
        ] {
            assert!(is_public(a.parse().unwrap()), "{a}");
        }
        for a in [
            "127.0.0.1",
            "10.1.2.3",
            "172.16.0.1",
            "192.168.1.1",
            "169.254.169.254",
            "100.64.0.1",
            "0.0.0.0",
            "0.1.2.3",
            "255.255.255.255",
            "224.0.0.1",
            "240.0.0.1",
            "192.0.0.170",
            "198.18.0.1",
            "::1",
            "::",
            "fd00::1",
            "fe80::1",
            "fec0::1",
            "ff02::1",
            "::ffff:127.0.0.1",
            "::ffff:169.254.169.254",
            "64:ff9b::a9fe:a9fe",
            "::127.0.0.1",
            "2001:db8::1",
        ] {
            assert!(!is_public(a.parse().unwrap()), "{a}");
        }
    }
}
