//! Certificates from a real ACME CA: Debian's `pebble` on loopback, with `dnsmasq` answering
//! for the test domain, validating HTTP-01 against the gateway's own HTTP port. A name gets a
//! certificate that chains to pebble's root; a stored certificate close to its end is renewed;
//! a name the CA cannot validate is reported with the reason; after a restart the certificates
//! come from the sealed store (the CA stopped), and not with another node's seal key.

mod common;

use std::path::Path;
use std::time::Duration;

use common::*;
use rcgen::{CertificateParams, KeyPair};
use zos_gateway::Tls;
use zos_gateway::acme::{CertStatus, Seal, Stored};
use zos_gateway::control::{Answer, Request};
use zos_testkit::acme::TestCa;

fn free_tcp_port() -> u16 {
    zos_testkit::acme::free_port([127, 0, 0, 1].into(), false)
}

async fn certificates(gw: &Gw) -> Vec<CertStatus> {
    match gw.call(Request::Certificates {}).await.unwrap() {
        Answer::Certificates { hosts } => hosts,
        a => panic!("{a:?}"),
    }
}

async fn cert_of(gw: &Gw, host: &str) -> Option<CertStatus> {
    certificates(gw).await.into_iter().find(|c| c.host == host)
}

/// `GET /echo` of `host` over HTTPS from `gw`, checked against the root in file `root`.
async fn get_tls(gw: &Gw, host: &str, root: &str) -> Curl {
    let port = gw.https.port();
    curl(
        &format!("https://{host}:{port}/echo"),
        (host, port),
        &["--cacert", root],
    )
    .await
}

/// The gateway with ACME from `directory`, its store in `store`, sealed with `seal`, its HTTP
/// port `http`.
async fn gateway(directory: &str, ca: &Path, store: &Path, seal: &Path, http: u16) -> Gw {
    let args = [
        "--acme-directory".to_string(),
        directory.to_string(),
        "--acme-ca".into(),
        ca.display().to_string(),
        "--store".into(),
        store.display().to_string(),
        "--seal-key".into(),
        seal.display().to_string(),
    ];
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    Gw::start_at(&format!("127.0.0.1:{http}"), &args).await
}

#[tokio::test(flavor = "multi_thread")]
async fn certificates_come_from_the_ca_are_renewed_and_outlive_a_restart_sealed() {
    let dir = tempfile::tempdir().unwrap();
    let p = |n: &str| dir.path().join(n);
    // The CA (pebble, validating HTTP-01 on the gateway's HTTP port) and its DNS server:
    // the test domain is this machine.
    let http = free_tcp_port();
    let ca = TestCa::start(
        dir.path(),
        [127, 0, 0, 1].into(),
        http,
        &[("gw.example", [127, 0, 0, 1].into())],
    )
    .await;
    let (directory, https_ca) = (ca.directory.clone(), ca.https_ca.clone());

    // A stored certificate for old.gw.example from the test CA, five minutes from its end.
    let store = p("store");
    std::fs::create_dir_all(store.join("certs")).unwrap();
    std::fs::write(p("seal.key"), rand_key()).unwrap();
    let seal = Seal::from_file(&p("seal.key")).unwrap();
    let (old_chain, old_key) = short_lived("old.gw.example", &short_lived_ca());
    let stored = serde_json::to_vec(&Stored {
        chain_pem: old_chain,
        key_pem: old_key,
    })
    .unwrap();
    std::fs::write(
        store.join("certs/old.gw.example.sealed"),
        seal.seal("old.gw.example", &stored),
    )
    .unwrap();

    let gw = gateway(&directory, &https_ca, &store, &p("seal.key"), http).await;
    let old = cert_of(&gw, "old.gw.example")
        .await
        .expect("the stored one loaded");
    assert!(old.not_after.is_some());

    let a = backend("a").await;
    gw.routes(vec![
        route("w1", "app.gw.example", Tls::Terminate, &[a]),
        route("w2", "old.gw.example", Tls::Terminate, &[a]),
        route("w3", "nx.elsewhere.example", Tls::Terminate, &[a]),
    ])
    .await;
    let deadline = std::time::Instant::now() + Duration::from_secs(90);
    loop {
        let app = cert_of(&gw, "app.gw.example").await;
        let renewed = cert_of(&gw, "old.gw.example").await;
        let nx = cert_of(&gw, "nx.elsewhere.example").await;
        if app.is_some_and(|c| c.not_after.is_some())
            && renewed.is_some_and(|c| c.not_after > old.not_after)
            && nx.is_some_and(|c| c.error.is_some())
        {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "certificates not ordered, renewed and refused: {:?}\n{}\n{}",
            certificates(&gw).await,
            gw.log(),
            ca.log()
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    let nx = cert_of(&gw, "nx.elsewhere.example").await.unwrap();
    assert!(nx.not_after.is_none(), "{nx:?}");
    assert!(
        nx.error.as_ref().unwrap().contains("nx.elsewhere.example"),
        "{nx:?}"
    );

    // Both names now chain to pebble's root (fetched from its management port).
    let root = ca.root().display().to_string();
    for host in ["app.gw.example", "old.gw.example"] {
        let r = get_tls(&gw, host, &root).await;
        assert_eq!(r.status, 200, "{host}: {}", r.stderr);
        assert_eq!(json(&r.body)["proto"], "https");
    }
    // No certificate, no handshake, for the name the CA refused.
    let r = get_tls(&gw, "nx.elsewhere.example", &root).await;
    assert_ne!(r.exit, 0);

    // The CA goes away; a restarted gateway serves from its sealed store.
    drop(ca);
    drop(gw);
    let gw = gateway(&directory, &https_ca, &store, &p("seal.key"), http).await;
    gw.routes(vec![route("w1", "app.gw.example", Tls::Terminate, &[a])])
        .await;
    let r = get_tls(&gw, "app.gw.example", &root).await;
    assert_eq!(r.status, 200, "{}", r.stderr);
    drop(gw);

    // Another node's seal key opens nothing: no certificate, and the order fails (no CA).
    std::fs::write(p("other.key"), rand_key()).unwrap();
    let gw = gateway(&directory, &https_ca, &store, &p("other.key"), http).await;
    assert!(cert_of(&gw, "app.gw.example").await.is_none());
    gw.routes(vec![route("w1", "app.gw.example", Tls::Terminate, &[a])])
        .await;
    let r = get_tls(&gw, "app.gw.example", &root).await;
    assert_ne!(r.exit, 0, "served a certificate it cannot have opened");
    eventually("the failed order reported", || async {
        cert_of(&gw, "app.gw.example")
            .await
            .is_some_and(|c| c.error.is_some())
    })
    .await;
}

fn rand_key() -> [u8; 32] {
    let mut k = [0u8; 32];
    getrandom::getrandom(&mut k).unwrap();
    k
}

/// A CA of its own for the certificate close to its end.
fn short_lived_ca() -> rcgen::CertifiedIssuer<'static, KeyPair> {
    let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca.distinguished_name = rcgen::DistinguishedName::new();
    ca.distinguished_name
        .push(rcgen::DnType::CommonName, "zos gateway short-lived CA");
    rcgen::CertifiedIssuer::self_signed(ca, KeyPair::generate().unwrap()).unwrap()
}

/// A certificate for `host` valid from 55 minutes ago to 5 minutes from now: (chain, key).
fn short_lived(host: &str, ca: &rcgen::CertifiedIssuer<'static, KeyPair>) -> (String, String) {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap();
    let now = rcgen::date_time_ymd(1970, 1, 1) + Duration::from_secs(secs.as_secs());
    let mut params = CertificateParams::new(vec![host.to_string()]).unwrap();
    params.not_before = now - Duration::from_secs(55 * 60);
    params.not_after = now + Duration::from_secs(5 * 60);
    let key = KeyPair::generate().unwrap();
    let cert = params.signed_by(&key, ca).unwrap();
    (cert.pem(), key.serialize_pem())
}
