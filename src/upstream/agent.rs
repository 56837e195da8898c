//! The HTTP client every upstream request uses: timeouts, the outbound proxy, the roots trusted
//! for https origins (the system's plus `ca_file`), and `connect` overrides applied at name
//! resolution, so that https to an overridden origin still names it in SNI and the
//! certificate check.

use std::net::SocketAddr;
use std::sync::Arc;

use ureq::config::Config as UreqConfig;
use ureq::http::Uri;
use ureq::tls::{Certificate, RootCerts, TlsConfig};
use ureq::unversioned::resolver::{DefaultResolver, ResolvedSocketAddrs, Resolver};
use ureq::unversioned::transport::{DefaultConnector, NextTimeout};

use crate::config::{Config, Origin};

/// Resolves origins that have a `connect` address to it; everything else as usual.
#[derive(Debug)]
struct OverrideResolver {
    origins: Vec<Origin>,
    inner: DefaultResolver,
}

impl Resolver for OverrideResolver {
    fn resolve(
        &self,
        uri: &Uri,
        config: &UreqConfig,
        timeout: NextTimeout,
    ) -> Result<ResolvedSocketAddrs, ureq::Error> {
        let host = uri.host().unwrap_or("").to_ascii_lowercase();
        let over: Option<SocketAddr> = self
            .origins
            .iter()
            .find(|o| o.connect.is_some() && o.matches(&host))
            .and_then(|o| o.connect);
        match over {
            Some(addr) => {
                let mut v = self.empty();
                v.push(addr);
                Ok(v)
            }
            None => self.inner.resolve(uri, config, timeout),
        }
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
        .max_redirects(5)
        .timeout_connect(Some(u.connect_timeout))
        .timeout_recv_response(Some(u.read_timeout))
        .timeout_per_read(Some(u.read_timeout))
        .user_agent(concat!("gatecache/", env!("CARGO_PKG_VERSION")))
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
