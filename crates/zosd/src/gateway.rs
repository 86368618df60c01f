//! The node's web gateway as zosd runs it: `zos-gateway` in the public namespace, listening on
//! ports 80 and 443 of the node's public address, started detached so that it (and the
//! connections it holds) outlives zosd, adopted by the next zosd, and fed the route table of
//! the gateway workloads ([`zos_provision::GatewayManager`]).

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};
use zos_gateway::control::{Answer, Request};
use zos_gateway::route::Route;
use zos_gateway::supervisor::{GatewayProcess, SupervisorError, seal_key};
use zos_gateway::table::Meter;
use zos_net::netns::Ns;
use zos_net::{LinuxNetworker, Networker};
use zos_provision::{Engine, GatewayHost, GatewayManager, Resolver, SystemResolver};

/// The program's name; it is looked for beside zosd, then on `PATH`.
const PROGRAM: &str = "zos-gateway";

/// How the node's gateway gets certificates.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AcmeSettings {
    /// The CA's directory URL; `None` serves only certificates zosd pushes.
    pub directory: Option<String>,
    /// A root certificate (PEM) trusted for the CA's own HTTPS, for a test CA.
    pub ca: Option<PathBuf>,
}

/// `zos-gateway` beside the running zosd, else the one on `PATH`.
fn program() -> PathBuf {
    std::env::current_exe()
        .ok()
        .and_then(|e| e.parent().map(|d| d.join(PROGRAM)))
        .filter(|p| p.is_file())
        .unwrap_or_else(|| PathBuf::from(PROGRAM))
}

/// The real [`GatewayHost`].
pub struct NodeGateway {
    net: Arc<LinuxNetworker>,
    public_ns: String,
    run_dir: PathBuf,
    store_dir: PathBuf,
    acme: AcmeSettings,
    /// The node's secret seed, for the seal key.
    seed: [u8; 32],
    /// One change of the gateway at a time.
    lock: tokio::sync::Mutex<()>,
}

impl std::fmt::Debug for NodeGateway {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NodeGateway")
            .field("run_dir", &self.run_dir)
            .finish_non_exhaustive()
    }
}

impl NodeGateway {
    /// The gateway of a node whose state is in `state_dir` (its certificates are kept there)
    /// and whose control socket and log go to `run_dir`.
    pub fn new(
        net: Arc<LinuxNetworker>,
        public_ns: String,
        state_dir: &Path,
        run_dir: PathBuf,
        acme: AcmeSettings,
        seed: [u8; 32],
    ) -> Self {
        Self {
            net,
            public_ns,
            run_dir,
            store_dir: state_dir.join("gateway"),
            acme,
            seed,
            lock: tokio::sync::Mutex::new(()),
        }
    }

    fn seal_key_file(&self) -> PathBuf {
        self.run_dir.join("seal.key")
    }

    /// The process on the node's public address; an error when the node has none.
    async fn process(&self) -> Result<GatewayProcess, String> {
        let public = self
            .net
            .public_setup()
            .await
            .map_err(|e| zos_runtime::error_chain(&e))?
            .ok_or("the node has no public config")?;
        let ip = IpAddr::V4(public.config.ipv4.addr());
        let mut extra: Vec<OsString> = Vec::new();
        if let Some(dir) = &self.acme.directory {
            extra.extend([
                "--acme-directory".into(),
                dir.into(),
                "--store".into(),
                self.store_dir.clone().into_os_string(),
                "--seal-key".into(),
                self.seal_key_file().into_os_string(),
            ]);
            if let Some(ca) = &self.acme.ca {
                extra.extend(["--acme-ca".into(), ca.clone().into_os_string()]);
            }
        }
        Ok(GatewayProcess {
            run_dir: self.run_dir.clone(),
            http: SocketAddr::new(ip, 80),
            https: SocketAddr::new(ip, 443),
            extra_args: extra,
        })
    }

    /// Keeps the running gateway or starts one; one of another control protocol (an older
    /// zosd's) is replaced.
    async fn ensure(&self, p: &GatewayProcess) -> Result<(), String> {
        zos_runtime::private::create_dir(&self.run_dir).map_err(|e| e.to_string())?;
        zos_runtime::private::create_dir(&self.store_dir).map_err(|e| e.to_string())?;
        zos_runtime::private::write_atomic(&self.seal_key_file(), &seal_key(&self.seed))
            .map_err(|e| format!("writing the seal key: {e}"))?;
        let cmd = || {
            zos_net::netns::command(&Ns::Named(self.public_ns.clone()), program())
                .map_err(|e| zos_runtime::error_chain(&e))
        };
        match p.ensure(cmd()?).await {
            Ok(e) => {
                info!(pid = e.pid(), how = ?e, "web gateway running");
                Ok(())
            }
            Err(SupervisorError::Protocol { got, want }) => {
                warn!(
                    got,
                    want, "the running gateway speaks another protocol: restarting it"
                );
                p.stop(Duration::from_secs(5));
                p.ensure(cmd()?)
                    .await
                    .map(drop)
                    .map_err(|e| zos_runtime::error_chain(&e))
            }
            Err(e) => Err(zos_runtime::error_chain(&e)),
        }
    }
}

impl GatewayHost for NodeGateway {
    fn apply(&self, routes: Vec<Route>) -> BoxFuture<'_, Result<(), String>> {
        Box::pin(async move {
            let _one = self.lock.lock().await;
            let p = self.process().await?;
            if routes.is_empty() && p.running().is_none() {
                return Ok(());
            }
            self.ensure(&p).await?;
            let mut c = p.client().await.map_err(|e| e.to_string())?;
            match c
                .call(&Request::SetRoutes { routes })
                .await
                .map_err(|e| e.to_string())?
            {
                Answer::Routes { .. } => Ok(()),
                Answer::Error { message } => {
                    Err(format!("the gateway refused the table: {message}"))
                }
                other => Err(format!("unexpected answer {other:?}")),
            }
        })
    }

    fn reset(&self) -> BoxFuture<'_, Result<(), String>> {
        Box::pin(async move {
            let _one = self.lock.lock().await;
            // Found by its run directory, whatever address it listens on.
            let p = GatewayProcess {
                run_dir: self.run_dir.clone(),
                http: SocketAddr::from(([0, 0, 0, 0], 80)),
                https: SocketAddr::from(([0, 0, 0, 0], 443)),
                extra_args: Vec::new(),
            };
            let stopped = p.stop(Duration::from_secs(5));
            info!(?stopped, "web gateway stopped for a new public address");
            Ok(())
        })
    }

    fn metrics(&self) -> BoxFuture<'_, Result<BTreeMap<String, Meter>, String>> {
        Box::pin(async move {
            let p = self.process().await?;
            if p.running().is_none() {
                return Ok(BTreeMap::new());
            }
            let mut c = p.client().await.map_err(|e| e.to_string())?;
            match c
                .call(&Request::Metrics {})
                .await
                .map_err(|e| e.to_string())?
            {
                Answer::Metrics { routes } => Ok(routes),
                other => Err(format!("unexpected answer {other:?}")),
            }
        })
    }
}

/// Resolves FQDNs with the given DNS servers, or the system's resolver when none is given.
pub struct DnsResolver {
    servers: Option<hickory_resolver::TokioResolver>,
}

impl std::fmt::Debug for DnsResolver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DnsResolver")
            .field("own_servers", &self.servers.is_some())
            .finish()
    }
}

impl DnsResolver {
    pub fn new(servers: &[SocketAddr]) -> Result<Self, String> {
        if servers.is_empty() {
            return Ok(Self { servers: None });
        }
        use hickory_resolver::config::{ConnectionConfig, NameServerConfig, ResolverConfig};
        let name_servers = servers
            .iter()
            .map(|s| {
                let conns = [ConnectionConfig::udp(), ConnectionConfig::tcp()]
                    .into_iter()
                    .map(|mut c| {
                        c.port = s.port();
                        c
                    })
                    .collect();
                NameServerConfig::new(s.ip(), true, conns)
            })
            .collect();
        let config = ResolverConfig::from_parts(None, Vec::new(), name_servers);
        let resolver = hickory_resolver::Resolver::builder_with_config(
            config,
            hickory_resolver::net::runtime::TokioRuntimeProvider::default(),
        )
        .build()
        .map_err(|e| e.to_string())?;
        Ok(Self {
            servers: Some(resolver),
        })
    }
}

impl Resolver for DnsResolver {
    fn lookup<'a>(&'a self, host: &'a str) -> BoxFuture<'a, Result<Vec<IpAddr>, String>> {
        Box::pin(async move {
            match &self.servers {
                None => SystemResolver.lookup(host).await,
                Some(r) => {
                    let fqdn = format!("{}.", host.trim_end_matches('.'));
                    let found = r.lookup_ip(fqdn).await.map_err(|e| e.to_string())?;
                    Ok(found.iter().collect())
                }
            }
        })
    }
}

/// Every `every`, takes down the name proxies whose name contract is gone.
pub async fn recheck_names(
    gateways: Arc<GatewayManager<LinuxNetworker>>,
    engine: Arc<Engine>,
    every: Duration,
    stop: CancellationToken,
) {
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(every) => {}
        }
        for (id, why) in gateways.recheck().await {
            warn!(workload = %id, reason = %why, "gateway name lost: taking the route down");
            if let Err(e) = engine.fail(&id, &why).await {
                warn!(workload = %id, error = %e.message(), "cannot take the gateway down");
            }
        }
    }
}
