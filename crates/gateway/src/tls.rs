//! TLS: the certificates the gateway presents, chosen by the client's server name, and the
//! client's hello read ahead to learn that name before choosing between ending TLS here and
//! passing it through.

use std::collections::HashMap;
use std::io;
use std::sync::{Arc, RwLock};

use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{Acceptor, ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use tokio::io::AsyncReadExt;

/// The largest client hello read ahead (they are a few hundred bytes to a few KiB).
pub const MAX_HELLO: usize = 32 * 1024;

/// Why a certificate is refused.
#[derive(Debug, thiserror::Error)]
pub enum CertError {
    #[error("{0:?} is not a host name or a wildcard of one (*.example.org)")]
    Host(String),
    #[error("the chain holds no PEM certificate")]
    NoCertificate,
    #[error("the chain is not PEM: {0}")]
    Chain(String),
    #[error("the key is not a PEM private key: {0}")]
    Key(String),
    #[error("the key does not fit the certificate: {0}")]
    Mismatch(String),
}

/// The certificates by host name; a wildcard (`*.example.org`) covers one label.
#[derive(Debug, Default)]
pub struct Certificates {
    by_host: RwLock<HashMap<String, Arc<CertifiedKey>>>,
}

impl Certificates {
    /// Adds or replaces the certificate of `host` from a PEM chain (leaf first) and key.
    pub fn insert_pem(&self, host: &str, chain: &[u8], key: &[u8]) -> Result<(), CertError> {
        let bare = host.strip_prefix("*.").unwrap_or(host);
        if !crate::route::valid_host(bare) {
            return Err(CertError::Host(host.chars().take(80).collect()));
        }
        let certs = CertificateDer::pem_slice_iter(chain)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| CertError::Chain(e.to_string()))?;
        if certs.is_empty() {
            return Err(CertError::NoCertificate);
        }
        let key = PrivateKeyDer::from_pem_slice(key).map_err(|e| CertError::Key(e.to_string()))?;
        let provider = CryptoProvider::get_default()
            .cloned()
            .unwrap_or_else(|| Arc::new(rustls::crypto::ring::default_provider()));
        let certified = CertifiedKey::from_der(certs, key, &provider)
            .map_err(|e| CertError::Mismatch(e.to_string()))?;
        self.by_host
            .write()
            .unwrap()
            .insert(host.to_string(), Arc::new(certified));
        Ok(())
    }

    /// Removes the certificate of `host`; whether there was one.
    pub fn remove(&self, host: &str) -> bool {
        self.by_host.write().unwrap().remove(host).is_some()
    }

    /// The certificate for `name`: its own, else the wildcard of its parent.
    pub fn find(&self, name: &str) -> Option<Arc<CertifiedKey>> {
        let map = self.by_host.read().unwrap();
        map.get(name).cloned().or_else(|| {
            let (_, parent) = name.split_once('.')?;
            map.get(&format!("*.{parent}")).cloned()
        })
    }
}

impl ResolvesServerCert for Certificates {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.find(&hello.server_name()?.to_ascii_lowercase())
    }
}

/// Reads a client's TLS hello from `stream`: the bytes read, and the server name it asks for.
/// Fails on anything but a hello, or one larger than [`MAX_HELLO`].
pub async fn read_hello<S: tokio::io::AsyncRead + Unpin>(
    stream: &mut S,
) -> io::Result<(Vec<u8>, Option<String>)> {
    let mut acceptor = Acceptor::default();
    let mut read = Vec::with_capacity(1024);
    let mut chunk = [0u8; 4096];
    loop {
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "the client closed before its TLS hello",
            ));
        }
        read.extend_from_slice(&chunk[..n]);
        if read.len() > MAX_HELLO {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("a TLS hello larger than {MAX_HELLO} bytes"),
            ));
        }
        let mut rest = &chunk[..n];
        while !rest.is_empty() {
            if acceptor.read_tls(&mut rest)? == 0 {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    "the TLS hello does not fit the acceptor's buffer",
                ));
            }
        }
        match acceptor.accept() {
            Ok(Some(accepted)) => {
                let name = accepted
                    .client_hello()
                    .server_name()
                    .map(str::to_ascii_lowercase);
                return Ok((read, name));
            }
            Ok(None) => continue,
            Err((e, _)) => {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("not a TLS hello: {e}"),
                ));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wildcards_cover_one_label_and_bad_input_is_refused() {
        let certs = Certificates::default();
        let ck = rcgen::generate_simple_self_signed(vec!["*.node.example".into()]).unwrap();
        let (chain, key) = (ck.cert.pem(), ck.signing_key.serialize_pem());
        certs
            .insert_pem("*.node.example", chain.as_bytes(), key.as_bytes())
            .unwrap();
        assert!(certs.find("web.node.example").is_some());
        assert!(certs.find("a.web.node.example").is_none());
        assert!(certs.find("node.example").is_none());

        let other = rcgen::generate_simple_self_signed(vec!["x.example".into()]).unwrap();
        assert!(matches!(
            certs.insert_pem(
                "x.example",
                chain.as_bytes(),
                other.signing_key.serialize_pem().as_bytes()
            ),
            Err(CertError::Mismatch(_))
        ));
        assert!(matches!(
            certs.insert_pem("x.example", b"nothing", key.as_bytes()),
            Err(CertError::NoCertificate)
        ));
        assert!(matches!(
            certs.insert_pem("../x", chain.as_bytes(), key.as_bytes()),
            Err(CertError::Host(_))
        ));
        assert!(certs.find("x.example").is_none());
    }
}
