//! A test certificate authority: Debian's `pebble` (an ACME server) with `dnsmasq` answering
//! the names it validates, both stopped when the [`TestCa`] is dropped.

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};

use crate::process::ProcessGuard;

/// A CA, and a certificate it signs for `names` (DNS names or IP addresses): (CA PEM, chain
/// PEM, key PEM).
pub fn issue(names: &[&str]) -> (String, String, String) {
    let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    // Not rcgen's default name, which the leaf has too: OpenSSL would take the leaf for
    // self-signed.
    ca.distinguished_name = rcgen::DistinguishedName::new();
    ca.distinguished_name
        .push(rcgen::DnType::CommonName, "zos gateway test CA");
    let ca = CertifiedIssuer::self_signed(ca, KeyPair::generate().unwrap()).unwrap();
    let key = KeyPair::generate().unwrap();
    let leaf = CertificateParams::new(names.iter().map(|s| s.to_string()).collect::<Vec<_>>())
        .unwrap()
        .signed_by(&key, &ca)
        .unwrap();
    (ca.pem(), leaf.pem(), key.serialize_pem())
}

/// A free port on `ip` (TCP, or UDP).
pub fn free_port(ip: IpAddr, udp: bool) -> u16 {
    if udp {
        std::net::UdpSocket::bind((ip, 0))
            .unwrap()
            .local_addr()
            .unwrap()
            .port()
    } else {
        std::net::TcpListener::bind((ip, 0))
            .unwrap()
            .local_addr()
            .unwrap()
            .port()
    }
}

/// A running pebble and its DNS server.
#[derive(Debug)]
pub struct TestCa {
    /// The ACME directory URL.
    pub directory: String,
    /// The root that pebble's own HTTPS certificate chains to (give it to ACME clients).
    pub https_ca: PathBuf,
    /// The DNS server answering the test names.
    pub dns: SocketAddr,
    mgmt: SocketAddr,
    dir: PathBuf,
    _pebble: ProcessGuard,
    _dnsmasq: ProcessGuard,
}

impl TestCa {
    /// Starts dnsmasq answering `records` (a name and every name under it, to an address) and
    /// pebble on `listen` (its files and logs in `dir`), validating HTTP-01 on `http_port`
    /// of the names' addresses.
    pub async fn start(
        dir: &Path,
        listen: IpAddr,
        http_port: u16,
        records: &[(&str, IpAddr)],
    ) -> Self {
        let p = |n: &str| dir.join(n);
        let (test_ca, chain, key) = issue(&["localhost", &listen.to_string()]);
        std::fs::write(p("pebble-https-ca.pem"), &test_ca).unwrap();
        std::fs::write(p("pebble-cert.pem"), &chain).unwrap();
        std::fs::write(p("pebble-key.pem"), &key).unwrap();
        let (acme_port, mgmt_port, tls_port, dns_port) = (
            free_port(listen, false),
            free_port(listen, false),
            free_port(listen, false),
            free_port(listen, true),
        );

        let mut dns = Command::new("dnsmasq");
        dns.args([
            "--keep-in-foreground",
            "--conf-file=/dev/null",
            "--no-resolv",
            "--no-hosts",
            "--bind-interfaces",
            "--user=root",
            "--log-facility=-",
            "--pid-file=",
        ])
        .arg(format!("--listen-address={listen}"))
        .arg(format!("--port={dns_port}"));
        for (name, ip) in records {
            dns.arg(format!("--address=/{name}/{ip}"));
        }
        let dnsmasq = ProcessGuard::spawn("dnsmasq", dns, &p("dnsmasq.log")).unwrap();

        let host = match listen {
            IpAddr::V6(v6) => format!("[{v6}]"),
            v4 => v4.to_string(),
        };
        let config = serde_json::json!({"pebble": {
            "listenAddress": SocketAddr::new(listen, acme_port).to_string(),
            "managementListenAddress": SocketAddr::new(listen, mgmt_port).to_string(),
            "certificate": p("pebble-cert.pem"),
            "privateKey": p("pebble-key.pem"),
            "httpPort": http_port,
            "tlsPort": tls_port,
            "ocspResponderURL": "",
            "externalAccountBindingRequired": false,
        }});
        std::fs::write(p("pebble.json"), config.to_string()).unwrap();
        let mut cmd = Command::new("pebble");
        cmd.arg("-config")
            .arg(p("pebble.json"))
            .arg("-dnsserver")
            .arg(SocketAddr::new(listen, dns_port).to_string())
            .env("PEBBLE_VA_NOSLEEP", "1")
            .env("PEBBLE_WFE_NONCEREJECT", "0")
            .stdin(Stdio::null());
        let pebble = ProcessGuard::spawn("pebble", cmd, &p("pebble.log")).unwrap();
        let mgmt = SocketAddr::new(listen, mgmt_port);
        let deadline = Instant::now() + Duration::from_secs(30);
        while tokio::net::TcpStream::connect(mgmt).await.is_err() {
            assert!(
                Instant::now() < deadline,
                "pebble did not listen: {}",
                std::fs::read_to_string(p("pebble.log")).unwrap_or_default()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Self {
            directory: format!("https://{host}:{acme_port}/dir"),
            https_ca: p("pebble-https-ca.pem"),
            dns: SocketAddr::new(listen, dns_port),
            mgmt,
            dir: dir.to_path_buf(),
            _pebble: pebble,
            _dnsmasq: dnsmasq,
        }
    }

    /// Writes the root pebble issues certificates under (fetched from its management port)
    /// and answers its path.
    pub fn root(&self) -> PathBuf {
        let path = self.dir.join("pebble-root.pem");
        let out = Command::new("curl")
            .args(["-sS", "--fail", "--max-time", "20", "--cacert"])
            .arg(&self.https_ca)
            .arg(format!("https://{}/roots/0", self.mgmt))
            .arg("-o")
            .arg(&path)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "pebble's root: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        path
    }

    /// pebble's log.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("pebble.log")).unwrap_or_default()
    }
}
