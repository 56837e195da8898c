//! The upstream side's transport: an https origin checked against a test CA given as
//! `ca_file` (and refused without it), and every upstream connection through an outbound
//! CONNECT proxy (`[upstream] proxy` or `UPSTREAM_PROXY`), for http and https origins.

mod support;

use std::path::{Path, PathBuf};

use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};
use support::data::{F1M3, F100K, assert_same, content};
use support::gate::{Gate, GateConfig};
use support::http;
use support::nginx::Nginx;
use support::proxy::ConnectProxy;
use support::*;

const SECURE: &str = "secure.test";

/// A test CA and a certificate for `secure.test` signed by it: (ca.pem, cert.pem, key.pem).
fn test_pki(dir: &Path) -> (PathBuf, PathBuf, PathBuf) {
    let ca_key = KeyPair::generate().unwrap();
    let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.distinguished_name
        .push(DnType::CommonName, "gatecache test CA");
    let ca_cert = ca.self_signed(&ca_key).unwrap();
    let issuer = Issuer::new(ca, ca_key);
    let key = KeyPair::generate().unwrap();
    let leaf = CertificateParams::new(vec![SECURE.to_string()])
        .unwrap()
        .signed_by(&key, &issuer)
        .unwrap();
    let paths = (
        dir.join("ca.pem"),
        dir.join("cert.pem"),
        dir.join("key.pem"),
    );
    std::fs::write(&paths.0, ca_cert.pem()).unwrap();
    std::fs::write(&paths.1, leaf.pem()).unwrap();
    std::fs::write(&paths.2, key.serialize_pem()).unwrap();
    paths
}

fn do_path(host: &str, path: &str) -> String {
    format!("{path}?cacheHostOrigin={host}")
}

#[test]
fn https_origin_with_a_private_ca() {
    let dir = tempfile::tempdir().unwrap();
    let (ca, cert, key) = test_pki(dir.path());
    let origin = Nginx::start_tls(&cert, &key);
    let secure = |extra: &str| {
        GateConfig::new(Backend::Uring)
            .set(&format!(
                "[[origin]]\nhost = \"{SECURE}\"\nscheme = \"https\"\nconnect = \"{}\"",
                origin.addr()
            ))
            .upstream(extra)
    };
    let g = Gate::start(secure(&format!("ca_file = \"{}\"", ca.display())));
    let path = format!("/{}", F1M3.0);
    let r = http::get(g.addr(), &do_path(SECURE, &path), &[]);
    assert_eq!(r.status, 200, "{}", r.body_text());
    assert_same(&r.body, &content(F1M3), "over https");
    let r = http::get(g.addr(), &do_path(SECURE, &path), &[("Range", "bytes=5-9")]);
    assert!(r.is_hit());
    assert_eq!(origin.settled_log().len(), 1);

    // Without the CA the certificate is refused: a 502, nothing stored.
    let g = Gate::start(secure(""));
    let r = http::get(g.addr(), &do_path(SECURE, &format!("/{}", F100K.0)), &[]);
    assert_eq!(r.status, 502, "{}", r.body_text());
    assert!(
        g.log().contains("certificate") || g.log().contains("Certificate"),
        "{}",
        g.log()
    );
}

#[test]
fn every_upstream_connection_goes_through_the_proxy() {
    let dir = tempfile::tempdir().unwrap();
    let (ca, cert, key) = test_pki(dir.path());
    let plain = Nginx::start();
    let tls = Nginx::start_tls(&cert, &key);
    // Names only the proxy can resolve: a direct connection could not succeed.
    let proxy = ConnectProxy::start(&[
        ("origin.test:80", plain.addr()),
        ("secure.test:443", tls.addr()),
    ]);
    let cfg = |via_env: bool| {
        let mut c = GateConfig::new(Backend::Uring)
            .set("[[origin]]\nhost = \"origin.test\"")
            .set(&format!(
                "[[origin]]\nhost = \"{SECURE}\"\nscheme = \"https\""
            ))
            .upstream(&format!("ca_file = \"{}\"", ca.display()));
        if via_env {
            c = c.env("UPSTREAM_PROXY", &proxy.addr().to_string());
        } else {
            c = c.upstream(&format!("proxy = \"{}\"", proxy.addr()));
        }
        c
    };
    for via_env in [false, true] {
        let g = Gate::start(cfg(via_env));
        let before = proxy.seen().len();
        let path = format!("/{}", F100K.0);
        for host in ["origin.test", SECURE] {
            let r = http::get(g.addr(), &do_path(host, &path), &[]);
            assert_eq!(r.status, 200, "{host} (env {via_env}): {}", r.body_text());
            assert_same(&r.body, &content(F100K), host);
        }
        let seen = &proxy.seen()[before..];
        assert!(seen.contains(&"origin.test:80".to_string()), "{seen:?}");
        assert!(seen.contains(&"secure.test:443".to_string()), "{seen:?}");
    }
}
