//! Certificates from an ACME CA (RFC 8555) for the routes that end TLS here and have no
//! certificate from zosd (a wildcard of the node's domain covers its names): HTTP-01, answered
//! on the gateway's own port 80. Certificates are renewed before they expire, sealed with a key
//! zosd derives from the node key, kept on the cache and reused after a restart.
//!
//! Orders are few at a time and a name that failed waits longer each time (1 min, doubling, at
//! most 6 h): a tenant cannot make the node hammer the CA.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use instant_acme::{
    Account, AccountCredentials, AuthorizationStatus, ChallengeType, Identifier, NewAccount,
    NewOrder, OrderStatus, RetryPolicy,
};
use serde::{Deserialize, Serialize};
use tokio::sync::Semaphore;

use crate::challenges::Challenges;
use crate::table::Shared;
use crate::tls::Certificates;

/// The key files on the cache are sealed with (XChaCha20-Poly1305; the file's name is bound in).
pub struct Seal(XChaCha20Poly1305);

impl std::fmt::Debug for Seal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Seal(..)")
    }
}

impl Seal {
    /// From a file of exactly 32 bytes.
    pub fn from_file(path: &Path) -> Result<Self, String> {
        let key = std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
        let key: [u8; 32] = key.as_slice().try_into().map_err(|_| {
            format!(
                "{}: a seal key is 32 bytes, this file has {}",
                path.display(),
                key.len()
            )
        })?;
        Ok(Self(XChaCha20Poly1305::new(&key.into())))
    }

    /// Seals `plain` for the file of `name`.
    pub fn seal(&self, name: &str, plain: &[u8]) -> Vec<u8> {
        let mut nonce = [0u8; 24];
        getrandom::getrandom(&mut nonce).expect("the kernel's random source");
        let sealed = self
            .0
            .encrypt(
                XNonce::from_slice(&nonce),
                Payload {
                    msg: plain,
                    aad: name.as_bytes(),
                },
            )
            .expect("XChaCha20-Poly1305 seals any length");
        [nonce.as_slice(), &sealed].concat()
    }

    fn open(&self, name: &str, sealed: &[u8]) -> Result<Vec<u8>, String> {
        if sealed.len() < 24 {
            return Err("too short".into());
        }
        let (nonce, data) = sealed.split_at(24);
        self.0
            .decrypt(
                XNonce::from_slice(nonce),
                Payload {
                    msg: data,
                    aad: name.as_bytes(),
                },
            )
            .map_err(|_| "does not open with this node's key (another node's, or altered)".into())
    }
}

/// Where and how certificates are ordered.
#[derive(Debug)]
pub struct AcmeOptions {
    /// The CA's directory URL.
    pub directory: String,
    /// A root to trust for the CA's own HTTPS instead of the system's (a test CA).
    pub ca_root: Option<PathBuf>,
    /// Contact URIs of the account (`mailto:…`).
    pub contact: Vec<String>,
    /// Where the account and the certificates are kept (sealed).
    pub store: PathBuf,
    pub seal: Seal,
    /// A certificate is renewed this long before it expires.
    pub renew_before: Duration,
    /// Orders at once.
    pub concurrency: usize,
}

/// A stored certificate, as sealed in `<store>/certs/<host>.sealed` (the host is the seal's
/// name).
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Stored {
    pub chain_pem: String,
    pub key_pem: String,
}

impl std::fmt::Debug for Stored {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Stored")
            .field("chain_pem", &self.chain_pem)
            .finish_non_exhaustive()
    }
}

/// Where one name's certificate stands, as answered to zosd.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CertStatus {
    pub host: String,
    /// When the certificate in use expires (Unix seconds), if there is one.
    pub not_after: Option<i64>,
    /// Why the last order failed, while it is not retried.
    pub error: Option<String>,
}

#[derive(Debug, Default)]
struct HostState {
    /// The validity of the certificate ordered here, when there is one.
    validity: Option<(i64, i64)>,
    failures: u32,
    retry_at: Option<Instant>,
    error: Option<String>,
    busy: bool,
}

/// What ordering certificates needs of the gateway: its routes, its certificates, and the
/// challenges it answers on port 80.
#[derive(Debug, Clone)]
pub struct Served {
    pub shared: Arc<Shared>,
    pub certs: Arc<Certificates>,
    pub challenges: Arc<Challenges>,
}

/// The ACME side of a gateway.
pub struct Acme {
    opts: AcmeOptions,
    account: tokio::sync::OnceCell<Account>,
    hosts: Mutex<HashMap<String, HostState>>,
    slots: Arc<Semaphore>,
}

impl std::fmt::Debug for Acme {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Acme")
            .field("directory", &self.opts.directory)
            .finish_non_exhaustive()
    }
}

fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

/// When the first certificate of a PEM chain starts and stops being valid (Unix seconds).
pub fn validity(chain_pem: &str) -> Result<(i64, i64), String> {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject;
    let der = CertificateDer::pem_slice_iter(chain_pem.as_bytes())
        .next()
        .ok_or("no certificate")?
        .map_err(|e| e.to_string())?;
    let (_, cert) = x509_parser::parse_x509_certificate(&der).map_err(|e| e.to_string())?;
    let v = cert.validity();
    Ok((v.not_before.timestamp(), v.not_after.timestamp()))
}

/// When a certificate valid from `not_before` to `not_after` is renewed: `renew_before` its
/// expiry, or a third of its lifetime before it when that is shorter (a CA issuing short
/// certificates does not make the gateway renew without end).
pub fn renew_at(not_before: i64, not_after: i64, renew_before: Duration) -> i64 {
    let life = (not_after - not_before).max(0);
    not_after - (renew_before.as_secs() as i64).min(life / 3)
}

impl Acme {
    pub fn new(opts: AcmeOptions) -> Result<Arc<Self>, String> {
        std::fs::create_dir_all(opts.store.join("certs"))
            .map_err(|e| format!("{}: {e}", opts.store.display()))?;
        Ok(Arc::new(Self {
            slots: Arc::new(Semaphore::new(opts.concurrency.max(1))),
            opts,
            account: tokio::sync::OnceCell::new(),
            hosts: Mutex::new(HashMap::new()),
        }))
    }

    fn cert_path(&self, host: &str) -> PathBuf {
        // Hosts are checked DNS names: safe as file names.
        self.opts.store.join("certs").join(format!("{host}.sealed"))
    }

    /// Installs every stored certificate that opens and has not expired; answers how many.
    /// One that does not open (another node's key, or altered) is left alone and ordered anew.
    pub fn load(&self, certs: &Certificates) -> usize {
        let Ok(dir) = std::fs::read_dir(self.opts.store.join("certs")) else {
            return 0;
        };
        let mut n = 0;
        for entry in dir.flatten() {
            let name = entry.file_name().to_string_lossy().to_string();
            let Some(host) = name.strip_suffix(".sealed") else {
                continue;
            };
            if !crate::route::valid_host(host) {
                continue;
            }
            let loaded = std::fs::read(entry.path())
                .map_err(|e| e.to_string())
                .and_then(|b| self.opts.seal.open(host, &b))
                .and_then(|p| serde_json::from_slice::<Stored>(&p).map_err(|e| e.to_string()))
                .and_then(|s| Ok((validity(&s.chain_pem)?, s)));
            match loaded {
                Ok(((from, until), s)) if until > now() => {
                    match certs.insert_pem(host, s.chain_pem.as_bytes(), s.key_pem.as_bytes()) {
                        Ok(()) => {
                            self.hosts
                                .lock()
                                .unwrap()
                                .entry(host.to_string())
                                .or_default()
                                .validity = Some((from, until));
                            n += 1;
                        }
                        Err(e) => tracing::warn!(host, error = %e, "stored certificate refused"),
                    }
                }
                Ok(_) => tracing::info!(host, "stored certificate expired"),
                Err(e) => tracing::warn!(host, error = %e, "stored certificate unreadable"),
            }
        }
        n
    }

    /// The certificates ordered here.
    pub fn status(&self) -> Vec<CertStatus> {
        let hosts = self.hosts.lock().unwrap();
        let mut out: Vec<CertStatus> = hosts
            .iter()
            .map(|(host, s)| CertStatus {
                host: host.clone(),
                not_after: s.validity.map(|v| v.1),
                error: s.error.clone(),
            })
            .collect();
        out.sort_by(|a, b| a.host.cmp(&b.host));
        out
    }

    /// Orders and renews certificates for the routes that need them, every few seconds, until
    /// the task is dropped.
    pub async fn run(self: Arc<Self>, gateway: Served) {
        let mut every = tokio::time::interval(Duration::from_secs(2));
        every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            every.tick().await;
            for host in self.due(&gateway) {
                let Ok(slot) = self.slots.clone().try_acquire_owned() else {
                    break;
                };
                self.hosts
                    .lock()
                    .unwrap()
                    .entry(host.clone())
                    .or_default()
                    .busy = true;
                let (me, gw) = (self.clone(), gateway.clone());
                tokio::spawn(async move {
                    let _slot = slot;
                    me.order_for(&gw, &host).await;
                });
            }
        }
    }

    /// The routed names that end TLS here and need a certificate: none yet (and none from
    /// zosd, such as the node domain's wildcard), or one of ours close to its expiry.
    fn due(&self, gateway: &Served) -> Vec<String> {
        let now = now();
        let mut hosts = self.hosts.lock().unwrap();
        let mut out = Vec::new();
        for host in gateway.shared.terminating_hosts() {
            let state = hosts.entry(host.clone()).or_default();
            let needed = match state.validity {
                Some((from, until)) => now >= renew_at(from, until, self.opts.renew_before),
                None => gateway.certs.find(&host).is_none(),
            };
            let waiting = state.retry_at.is_some_and(|t| Instant::now() < t);
            if needed && !waiting && !state.busy {
                out.push(host);
            }
        }
        hosts.retain(|h, s| s.validity.is_some() || s.busy || gateway.shared.route(h).is_some());
        out
    }

    async fn order_for(&self, gateway: &Served, host: &str) {
        tracing::info!(host, "ordering a certificate");
        let result = self.order(gateway, host).await;
        let mut hosts = self.hosts.lock().unwrap();
        let state = hosts.entry(host.to_string()).or_default();
        state.busy = false;
        match result {
            Ok((from, until)) => {
                tracing::info!(host, not_after = until, "certificate installed");
                *state = HostState {
                    validity: Some((from, until)),
                    ..HostState::default()
                };
            }
            Err(e) => {
                state.failures += 1;
                let wait = Duration::from_secs(60 * (1u64 << (state.failures - 1).min(9)))
                    .min(Duration::from_secs(6 * 3600));
                tracing::warn!(host, error = %e, retry_in_secs = wait.as_secs(), "certificate order failed");
                state.retry_at = Some(Instant::now() + wait);
                state.error = Some(e);
            }
        }
    }

    fn builder(&self) -> Result<instant_acme::AccountBuilder, String> {
        match &self.opts.ca_root {
            Some(root) => Account::builder_with_root(root),
            None => Account::builder(),
        }
        .map_err(|e| format!("ACME client: {e}"))
    }

    /// The account: the stored one, or a new one made and stored.
    async fn account(&self) -> Result<&Account, String> {
        self.account
            .get_or_try_init(|| async {
                let path = self.opts.store.join("account.sealed");
                if let Ok(sealed) = std::fs::read(&path) {
                    let creds = self.opts.seal.open("account", &sealed).and_then(|p| {
                        serde_json::from_slice::<AccountCredentials>(&p).map_err(|e| e.to_string())
                    });
                    match creds {
                        Ok(c) => {
                            return self
                                .builder()?
                                .from_credentials(c)
                                .await
                                .map_err(|e| format!("ACME account: {e}"));
                        }
                        Err(e) => {
                            tracing::warn!(error = %e, "stored ACME account unreadable: making a new one")
                        }
                    }
                }
                let contact: Vec<&str> = self.opts.contact.iter().map(String::as_str).collect();
                let (account, creds) = self
                    .builder()?
                    .create(
                        &NewAccount {
                            contact: &contact,
                            terms_of_service_agreed: true,
                            only_return_existing: false,
                        },
                        self.opts.directory.clone(),
                        None,
                    )
                    .await
                    .map_err(|e| format!("ACME account at {}: {e}", self.opts.directory))?;
                let plain = serde_json::to_vec(&creds).map_err(|e| e.to_string())?;
                write_atomically(&path, &self.opts.seal.seal("account", &plain))?;
                tracing::info!(directory = self.opts.directory, "ACME account made");
                Ok(account)
            })
            .await
    }

    /// One order for `host` by HTTP-01; the certificate installed and stored. Answers its
    /// validity.
    async fn order(&self, gateway: &Served, host: &str) -> Result<(i64, i64), String> {
        let account = self.account().await?;
        let ids = [Identifier::Dns(host.to_string())];
        let mut order = account
            .new_order(&NewOrder::new(&ids))
            .await
            .map_err(|e| format!("new order: {e}"))?;
        let mut tokens = Vec::new();
        let result = async {
            let mut authorizations = order.authorizations();
            while let Some(a) = authorizations.next().await {
                let mut a = a.map_err(|e| format!("authorization: {e}"))?;
                match a.status {
                    AuthorizationStatus::Pending => {}
                    AuthorizationStatus::Valid => continue,
                    s => return Err(format!("authorization is {s:?}")),
                }
                let mut challenge = a
                    .challenge(ChallengeType::Http01)
                    .ok_or("the CA offers no HTTP-01 challenge")?;
                let token = challenge.token.clone();
                gateway
                    .challenges
                    .put(&token, challenge.key_authorization().as_str());
                tokens.push(token);
                challenge
                    .set_ready()
                    .await
                    .map_err(|e| format!("challenge: {e}"))?;
            }
            let retry = RetryPolicy::new()
                .initial_delay(Duration::from_millis(250))
                .timeout(Duration::from_secs(90));
            let status = order
                .poll_ready(&retry)
                .await
                .map_err(|e| format!("waiting for the CA's validation: {e}"))?;
            if status != OrderStatus::Ready {
                return Err(format!("the CA did not validate {host}: order {status:?}"));
            }
            let key_pem = order
                .finalize()
                .await
                .map_err(|e| format!("finalize: {e}"))?;
            let chain_pem = order
                .poll_certificate(&retry)
                .await
                .map_err(|e| format!("certificate: {e}"))?;
            Ok((chain_pem, key_pem))
        }
        .await;
        for t in &tokens {
            gateway.challenges.remove(t);
        }
        let (chain_pem, key_pem) = result?;
        let valid = validity(&chain_pem)?;
        gateway
            .certs
            .insert_pem(host, chain_pem.as_bytes(), key_pem.as_bytes())
            .map_err(|e| format!("the CA's certificate: {e}"))?;
        let plain =
            serde_json::to_vec(&Stored { chain_pem, key_pem }).map_err(|e| e.to_string())?;
        write_atomically(&self.cert_path(host), &self.opts.seal.seal(host, &plain))?;
        Ok(valid)
    }
}

fn write_atomically(path: &Path, data: &[u8]) -> Result<(), String> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(|e| format!("{}: {e}", tmp.display()))?;
    f.write_all(data)
        .and_then(|()| f.sync_all())
        .and_then(|()| std::fs::rename(&tmp, path))
        .map_err(|e| format!("{}: {e}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seal_binds_the_name_and_the_key() {
        let dir = tempfile::tempdir().unwrap();
        let (k1, k2) = (dir.path().join("k1"), dir.path().join("k2"));
        std::fs::write(&k1, [1u8; 32]).unwrap();
        std::fs::write(&k2, [2u8; 32]).unwrap();
        let (s1, s2) = (Seal::from_file(&k1).unwrap(), Seal::from_file(&k2).unwrap());
        let sealed = s1.seal("a.example", b"secret");
        assert_eq!(s1.open("a.example", &sealed).unwrap(), b"secret");
        assert!(
            s1.open("b.example", &sealed).is_err(),
            "moved to another name"
        );
        assert!(s2.open("a.example", &sealed).is_err(), "another node's key");
        let mut bad = sealed.clone();
        bad[30] ^= 1;
        assert!(s1.open("a.example", &bad).is_err());
        std::fs::write(&k2, [2u8; 31]).unwrap();
        assert!(Seal::from_file(&k2).unwrap_err().contains("32 bytes"));
    }

    #[test]
    fn expiry_of_a_chain() {
        let mut p = rcgen::CertificateParams::new(vec!["a.example".into()]).unwrap();
        p.not_after = rcgen::date_time_ymd(2031, 5, 6);
        let cert = p.self_signed(&rcgen::KeyPair::generate().unwrap()).unwrap();
        assert_eq!(validity(&cert.pem()).unwrap().1, 1_935_792_000);
        assert!(validity("nothing").is_err());
    }

    #[test]
    fn renewal_time() {
        let day = 86_400;
        let month = Duration::from_secs(30 * day as u64);
        // A 90-day certificate: 30 days before its end.
        assert_eq!(renew_at(0, 90 * day, month), 60 * day);
        // A one-hour certificate: a third of its life before its end, not at once.
        assert_eq!(renew_at(0, 3600, month), 2400);
        assert_eq!(renew_at(100, 50, month), 50);
    }
}
