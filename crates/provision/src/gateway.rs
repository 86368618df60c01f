//! The `gateway-name-proxy` and `gateway-fqdn-proxy` managers: a host name on the node's web
//! gateway (`zos-gateway`, see `docs/gateway.md`) whose traffic goes to the workload's backends.
//!
//! - Name proxy: `NAME.<domain of the node's public config>`, for the twin that owns the name
//!   contract `NAME` on the grid. The contract is checked when the workload is made and again
//!   every [`NAME_RECHECK`] while it lives ([`GatewayManager::recheck`]): a cancelled or
//!   transferred name takes the route down.
//! - FQDN proxy: a domain the user controls. It must resolve to the node's public address and
//!   must not be under the node's own domain (those names belong to name contracts).
//! - Backends: in the twin's network on this node (`network` names it; the gateway connects
//!   from that network's namespace), or public: a globally routable address, or one of the
//!   farm's public subnet. Anything else (the node's own address, loopback, link-local, private
//!   ranges outside the twin's network) is refused: a tenant must not aim the node at the
//!   farmer's LAN.
//! - One host name per node: a second workload for a name or FQDN already served is refused.
//!
//! The table of routes is kept in a state file on the cache, so that a new zosd pushes the same
//! table to the gateway it adopts before any workload is looked at again.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use serde::{Deserialize, Serialize};
use tokio::sync::Mutex;
use tracing::{info, warn};
use zos_gateway::route::{Route, Target as Backend, Tls};
use zos_types::TwinId;
use zos_types::contract::{ContractFilter, ContractKind, ContractState};
use zos_types::deployment::WorkloadId;
use zos_types::node_api::results::GatewayResult;
use zos_types::workload::WorkloadData;

use super::engine::GridView;
use super::managers::{Manager, ManagerError, Target, to_data};
use zos_net::{Networker, PublicSetup};

pub use zos_gateway::table::Meter;

/// How often name contracts are checked again while their routes live.
pub const NAME_RECHECK: Duration = Duration::from_secs(60);

/// The node's web gateway, as the managers drive it.
pub trait GatewayHost: Send + Sync {
    /// Serves exactly `routes` (starting the gateway when it does not run).
    fn apply(&self, routes: Vec<Route>) -> BoxFuture<'_, Result<(), String>>;
    /// Each route's traffic since the gateway started, by workload id.
    fn metrics(&self) -> BoxFuture<'_, Result<BTreeMap<String, Meter>, String>>;
    /// Stops the running gateway (the node's public address changed): the next
    /// [`Self::apply`] starts one on the address the node has then.
    fn reset(&self) -> BoxFuture<'_, Result<(), String>>;
}

/// Answers the addresses a host name resolves to.
pub trait Resolver: Send + Sync {
    fn lookup<'a>(&'a self, host: &'a str) -> BoxFuture<'a, Result<Vec<IpAddr>, String>>;
}

/// The system's resolver (`getaddrinfo`: `/etc/hosts`, then `/etc/resolv.conf`).
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemResolver;

impl Resolver for SystemResolver {
    fn lookup<'a>(&'a self, host: &'a str) -> BoxFuture<'a, Result<Vec<IpAddr>, String>> {
        Box::pin(async move {
            let addrs = tokio::net::lookup_host((host, 443))
                .await
                .map_err(|e| e.to_string())?;
            Ok(addrs.map(|a| a.ip()).collect())
        })
    }
}

/// One served name, as the state file keeps it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Entry {
    twin: TwinId,
    contract: u64,
    workload: String,
    /// The name contract this route needs (name proxies).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    name_contract: Option<String>,
    route: Route,
}

impl Entry {
    fn id(&self) -> WorkloadId {
        WorkloadId {
            twin: self.twin,
            contract: self.contract,
            name: self.workload.clone(),
        }
    }
}

/// The state file: each served workload by its id.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Table {
    routes: BTreeMap<String, Entry>,
}

/// The manager of both gateway workload types (one table: a name is served once, whatever
/// type asked for it).
pub struct GatewayManager<N> {
    net: Arc<N>,
    grid: Arc<dyn GridView>,
    host: Arc<dyn GatewayHost>,
    resolver: Arc<dyn Resolver>,
    path: PathBuf,
    table: Mutex<Table>,
}

impl<N> std::fmt::Debug for GatewayManager<N> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GatewayManager")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

fn invalid(msg: impl Into<String>) -> ManagerError {
    ManagerError::Invalid(msg.into())
}

/// Whether `ip` may be a public backend of a node whose public setup is `public`: globally
/// routable, or in the farm's public subnet (another of the farm's public addresses), and in
/// both cases not the node itself nor its gateway.
fn public_backend(ip: IpAddr, public: &PublicSetup) -> Result<(), String> {
    let own = public.config.ipv4.addr();
    if ip == IpAddr::V4(own) || ip == IpAddr::V4(public.config.gw4) {
        return Err("is this node's own public address or its gateway".into());
    }
    let in_farm_subnet = matches!(ip, IpAddr::V4(v4) if public.config.ipv4.trunc().contains(&v4));
    if in_farm_subnet || globally_routable(ip) {
        Ok(())
    } else {
        Err("is neither in the workload's `network` nor a public address".into())
    }
}

fn globally_routable(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => {
            let o = v4.octets();
            !(v4.is_private()
                || v4.is_loopback()
                || v4.is_link_local()
                || v4.is_multicast()
                || v4.is_broadcast()
                || v4.is_unspecified()
                || v4.is_documentation()
                || o[0] == 0
                // 100.64.0.0/10 (carrier-grade NAT), 198.18.0.0/15 (benchmarks), 240/4.
                || (o[0] == 100 && (o[1] & 0xc0) == 64)
                || (o[0] == 198 && (o[1] & 0xfe) == 18)
                || o[0] >= 240)
        }
        IpAddr::V6(v6) => {
            let s = v6.segments();
            // Global unicast is 2000::/3, less the documentation prefix.
            (s[0] & 0xe000) == 0x2000 && !(s[0] == 0x2001 && s[1] == 0x0db8)
        }
    }
}

/// A backend string of a workload (`http://IP:PORT`, or `IP:PORT` for passthrough) as an
/// address; HTTP without a port is port 80.
fn backend_addr(b: &str, passthrough: bool) -> Result<SocketAddr, String> {
    let rest = if passthrough {
        b
    } else {
        b.strip_prefix("http://")
            .ok_or("must be an http:// URL")?
            .split('/')
            .next()
            .unwrap_or_default()
    };
    if let Ok(sa) = rest.parse::<SocketAddr>() {
        return Ok(sa);
    }
    if !passthrough && let Ok(ip) = rest.parse::<IpAddr>() {
        return Ok(SocketAddr::new(ip, 80));
    }
    Err("must be IP:PORT".into())
}

/// What a gateway workload asks for, either type.
struct Wanted<'a> {
    name: Option<&'a str>,
    fqdn: Option<&'a str>,
    passthrough: bool,
    backends: &'a [String],
    network: Option<&'a str>,
}

fn wanted(data: &WorkloadData) -> Result<Wanted<'_>, ManagerError> {
    Ok(match data {
        WorkloadData::GatewayNameProxy(g) => Wanted {
            name: Some(&g.name),
            fqdn: None,
            passthrough: g.tls_passthrough,
            backends: &g.backends,
            network: g.network.as_deref(),
        },
        WorkloadData::GatewayFqdnProxy(g) => Wanted {
            name: None,
            fqdn: Some(&g.fqdn),
            passthrough: g.tls_passthrough,
            backends: &g.backends,
            network: g.network.as_deref(),
        },
        other => {
            return Err(ManagerError::Failed(format!(
                "the gateway manager was given a {} workload",
                other.kind()
            )));
        }
    })
}

impl<N: Networker + 'static> GatewayManager<N> {
    /// A manager keeping its table in `path`; a table left there by an earlier zosd is served
    /// again by [`Self::restore`].
    pub fn new(
        net: Arc<N>,
        grid: Arc<dyn GridView>,
        host: Arc<dyn GatewayHost>,
        resolver: Arc<dyn Resolver>,
        path: PathBuf,
    ) -> Result<Self, ManagerError> {
        let table = match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| {
                ManagerError::Failed(format!("the gateway table {}: {e}", path.display()))
            })?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Table::default(),
            Err(e) => return Err(e.into()),
        };
        Ok(Self {
            net,
            grid,
            host,
            resolver,
            path,
            table: Mutex::new(table),
        })
    }

    /// Pushes the stored table to the gateway (zosd's start), when there is anything to serve.
    pub async fn restore(&self) -> Result<usize, ManagerError> {
        let table = self.table.lock().await;
        if table.routes.is_empty() {
            return Ok(0);
        }
        self.push(&table).await?;
        Ok(table.routes.len())
    }

    /// Starts the gateway again on the node's current public address (the farmer changed the
    /// public config) and serves the stored table there.
    pub async fn readdress(&self) -> Result<usize, ManagerError> {
        self.host.reset().await.map_err(ManagerError::Failed)?;
        self.restore().await
    }

    /// The workloads whose route is served.
    pub async fn served(&self) -> Vec<(WorkloadId, String)> {
        let table = self.table.lock().await;
        table
            .routes
            .values()
            .map(|e| (e.id(), e.route.host.clone()))
            .collect()
    }

    /// Each workload's traffic since the gateway started (see [`GatewayHost::metrics`]).
    pub async fn metrics(&self) -> Result<BTreeMap<String, Meter>, ManagerError> {
        self.host.metrics().await.map_err(ManagerError::Unavailable)
    }

    /// Checks the name contract of every name proxy again; answers those whose name is no
    /// longer their twin's (cancelled, or another twin's now), with why. A grid that cannot be
    /// reached takes nothing down.
    pub async fn recheck(&self) -> Vec<(WorkloadId, String)> {
        let names: Vec<(WorkloadId, String)> = {
            let table = self.table.lock().await;
            table
                .routes
                .values()
                .filter_map(|e| Some((e.id(), e.name_contract.clone()?)))
                .collect()
        };
        let mut lost = Vec::new();
        for (id, name) in names {
            match self.name_contract(id.twin, &name).await {
                Ok(_) => {}
                Err(ManagerError::Invalid(why)) => lost.push((id, why)),
                Err(e) => {
                    warn!(workload = %id, error = %zos_runtime::error_chain(&e), "cannot check a gateway name contract now")
                }
            }
        }
        lost
    }

    /// The live name contract `name` of `twin`: an [`ManagerError::Invalid`] error when there
    /// is none.
    async fn name_contract(&self, twin: TwinId, name: &str) -> Result<u64, ManagerError> {
        let filter = ContractFilter {
            twin_id: Some(twin),
            node_id: None,
            state: None,
        };
        let contracts = self.grid.contracts(filter).await?;
        contracts
            .iter()
            .find(|c| {
                c.state != ContractState::Deleted
                    && matches!(&c.kind, ContractKind::Name { name: n } if n.eq_ignore_ascii_case(name))
            })
            .map(|c| c.id)
            .ok_or_else(|| {
                invalid(format!(
                    "twin {twin} has no name contract for {name:?}: create one \
                     (`zos name create {name}`) before deploying its gateway"
                ))
            })
    }

    async fn public(&self) -> Result<PublicSetup, ManagerError> {
        self.net.public_setup().await?.ok_or_else(|| {
            invalid(
                "this node has no public config: gateways run on nodes with a public \
                 address (pick one with `zos node list --gateway`)",
            )
        })
    }

    /// The host name a workload asks for, checked against the node's domain and the grid.
    async fn host_name(
        &self,
        id: &WorkloadId,
        w: &Wanted<'_>,
        public: &PublicSetup,
    ) -> Result<String, ManagerError> {
        let domain = public.config.domain.as_deref().map(str::to_ascii_lowercase);
        if let Some(name) = w.name {
            let domain = domain.ok_or_else(|| {
                invalid(
                    "this node's public config has no domain, so it serves no gateway names; \
                     use a gateway-fqdn-proxy, or a node whose farmer set a domain",
                )
            })?;
            self.name_contract(id.twin, name).await?;
            return Ok(format!("{}.{domain}", name.to_ascii_lowercase()));
        }
        let fqdn = w
            .fqdn
            .unwrap_or_default()
            .trim_end_matches('.')
            .to_ascii_lowercase();
        if let Some(domain) = &domain
            && (fqdn == *domain || fqdn.ends_with(&format!(".{domain}")))
        {
            return Err(invalid(format!(
                "fqdn {fqdn:?} is under this node's domain {domain:?}: names there belong to \
                 name contracts (use a gateway-name-proxy)"
            )));
        }
        let own = IpAddr::V4(public.config.ipv4.addr());
        let addrs = self.resolver.lookup(&fqdn).await.map_err(|e| {
            invalid(format!(
                "fqdn {fqdn:?} does not resolve ({e}): point its A record at {own}"
            ))
        })?;
        let own6 = public.config.ipv6.map(|n| IpAddr::V6(n.addr()));
        if !addrs.iter().any(|a| *a == own || Some(*a) == own6) {
            return Err(invalid(format!(
                "fqdn {fqdn:?} resolves to {addrs:?}, not to this node's public address {own}: \
                 point its A record at {own}"
            )));
        }
        Ok(fqdn)
    }

    /// Where each backend is reached from.
    async fn backends(
        &self,
        id: &WorkloadId,
        w: &Wanted<'_>,
        public: &PublicSetup,
    ) -> Result<Vec<Backend>, ManagerError> {
        let network = match w.network {
            Some(n) => Some(self.net.network_info(id.twin, n).await?.ok_or_else(|| {
                invalid(format!(
                    "network: twin {} has no network {n:?} on this node (deploy its network \
                     workload here first)",
                    id.twin
                ))
            })?),
            None => None,
        };
        let mut out = Vec::with_capacity(w.backends.len());
        for (i, b) in w.backends.iter().enumerate() {
            let field = format!("backends[{i}] {b:?}");
            let addr =
                backend_addr(b, w.passthrough).map_err(|e| invalid(format!("{field} {e}")))?;
            let in_network = match (&network, addr.ip()) {
                (Some(info), IpAddr::V4(v4)) => info.ip_range.contains(&v4) && !is_edge(v4, info),
                _ => false,
            };
            if in_network {
                out.push(Backend {
                    addr,
                    netns: network.as_ref().map(|n| n.namespace.clone()),
                });
                continue;
            }
            public_backend(addr.ip(), public).map_err(|e| {
                let range = network
                    .as_ref()
                    .map(|n| format!(" (the network's range is {})", n.ip_range))
                    .unwrap_or_default();
                invalid(format!("{field} {e}{range}"))
            })?;
            out.push(Backend::here(addr));
        }
        Ok(out)
    }

    /// Makes or changes the route of `t`.
    async fn set(&self, t: Target<'_>) -> Result<serde_json::Value, ManagerError> {
        let w = wanted(t.data)?;
        let public = self.public().await?;
        let host = self.host_name(t.id, &w, &public).await?;
        let backends = self.backends(t.id, &w, &public).await?;
        let key = t.id.to_string();
        let tls = if w.passthrough {
            Tls::Passthrough
        } else {
            Tls::Terminate
        };
        let entry = Entry {
            twin: t.id.twin,
            contract: t.id.contract,
            workload: t.id.name.clone(),
            name_contract: w.name.map(str::to_string),
            route: Route {
                id: key.clone(),
                host: host.clone(),
                tls,
                backends,
            },
        };
        entry.route.validate().map_err(|e| invalid(e.to_string()))?;
        let mut table = self.table.lock().await;
        if let Some((other, _)) = table
            .routes
            .iter()
            .find(|(k, e)| **k != key && e.route.host == host)
        {
            return Err(invalid(format!(
                "{host} is already served on this node (by workload {other}): a name is served once"
            )));
        }
        if table.routes.get(&key) != Some(&entry) {
            let mut next = table.clone();
            next.routes.insert(key, entry);
            self.commit(&mut table, next).await?;
            info!(workload = %t.id, %host, ?tls, "gateway route served");
        }
        Ok(to_data(&GatewayResult {
            fqdn: host,
            address: public.config.ipv4.addr().to_string(),
        }))
    }

    /// Serves `next` and then records it; on a failure the old table stays, served and stored.
    async fn commit(&self, table: &mut Table, next: Table) -> Result<(), ManagerError> {
        self.push(&next).await?;
        let bytes = serde_json::to_vec_pretty(&next)
            .map_err(|e| ManagerError::Failed(format!("encoding the gateway table: {e}")))?;
        if let Err(e) = zos_runtime::private::write_atomic(&self.path, &bytes) {
            // Serve what is recorded, so that the gateway and the file agree.
            let _ = self.push(table).await;
            return Err(ManagerError::from(e).context("recording the gateway table"));
        }
        *table = next;
        Ok(())
    }

    async fn push(&self, table: &Table) -> Result<(), ManagerError> {
        let routes = table.routes.values().map(|e| e.route.clone()).collect();
        self.host
            .apply(routes)
            .await
            .map_err(|e| ManagerError::Unavailable(format!("the node's web gateway: {e}")))
    }
}

/// The network's own addresses that are not machines: its gateway (`.1` of the node's subnet)
/// and the WireGuard side.
fn is_edge(ip: Ipv4Addr, info: &zos_net::NetworkInfo) -> bool {
    ip == info.gateway || ip == info.subnet.network() || ip == info.subnet.broadcast()
}

impl<N: Networker + 'static> Manager for GatewayManager<N> {
    fn provision<'a>(
        &'a self,
        t: Target<'a>,
    ) -> BoxFuture<'a, Result<serde_json::Value, ManagerError>> {
        Box::pin(async move {
            match self.set(t).await {
                // Provisioned again (a restart's reconciliation) and refused now (its name
                // contract is gone): the workload becomes an error, so its route goes. A grid
                // or gateway that cannot answer now takes nothing down.
                Err(e @ ManagerError::Invalid(_)) => {
                    if let Err(d) = self.deprovision(t.id).await {
                        warn!(workload = %t.id, error = %zos_runtime::error_chain(&d), "cannot remove the route of a refused gateway");
                    }
                    Err(e)
                }
                r => r,
            }
        })
    }

    fn update<'a>(
        &'a self,
        t: Target<'a>,
    ) -> BoxFuture<'a, Result<serde_json::Value, ManagerError>> {
        Box::pin(async move { self.set(t).await.map_err(ManagerError::unchanged) })
    }

    fn deprovision<'a>(&'a self, id: &'a WorkloadId) -> BoxFuture<'a, Result<(), ManagerError>> {
        Box::pin(async move {
            let key = id.to_string();
            let mut table = self.table.lock().await;
            if !table.routes.contains_key(&key) {
                return Ok(());
            }
            let mut next = table.clone();
            next.routes.remove(&key);
            self.commit(&mut table, next).await?;
            info!(workload = %id, "gateway route removed");
            Ok(())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn public_backends_are_global_or_in_the_farm_subnet() {
        let public = PublicSetup {
            config: zos_types::registry::PublicConfig {
                ipv4: "10.213.5.10/24".parse().unwrap(),
                gw4: "10.213.5.1".parse().unwrap(),
                ipv6: None,
                gw6: None,
                domain: Some("gw.example.org".into()),
            },
            exit_iface: "eth1".into(),
        };
        let ok = |s: &str| public_backend(s.parse().unwrap(), &public).is_ok();
        assert!(ok("185.69.166.7"));
        assert!(ok("10.213.5.100"), "another public IP of the farm");
        assert!(ok("2a02:1802:5e::1"));
        for bad in [
            "10.213.5.10",
            "10.213.5.1",
            "192.168.1.1",
            "10.1.2.3",
            "172.16.0.1",
            "127.0.0.1",
            "169.254.169.254",
            "100.64.1.1",
            "0.0.0.0",
            "224.0.0.1",
            "fd00::1",
            "fe80::1",
            "::1",
            "2001:db8::1",
        ] {
            assert!(!ok(bad), "{bad} must be refused");
        }
    }

    #[test]
    fn backend_strings_become_addresses() {
        assert_eq!(
            backend_addr("http://10.20.2.5:8080/x", false).unwrap(),
            "10.20.2.5:8080".parse().unwrap()
        );
        assert_eq!(
            backend_addr("http://10.20.2.5", false).unwrap(),
            "10.20.2.5:80".parse().unwrap()
        );
        assert_eq!(
            backend_addr("10.20.2.5:443", true).unwrap(),
            "10.20.2.5:443".parse().unwrap()
        );
        assert!(backend_addr("10.20.2.5:443", false).is_err());
        assert!(backend_addr("http://host.example:80", false).is_err());
    }

    use std::sync::Mutex as StdMutex;
    use zos_net::RecordingNetworker;
    use zos_types::contract::Contract;
    use zos_types::deployment::ContractId;
    use zos_types::workload::{GatewayFqdnProxy, GatewayNameProxy, Network};

    #[derive(Default)]
    struct Grid {
        contracts: StdMutex<Vec<Contract>>,
    }

    impl GridView for Grid {
        fn twin_key(
            &self,
            twin: TwinId,
        ) -> BoxFuture<'_, Result<zos_types::PublicKey, crate::GridViewError>> {
            Box::pin(async move {
                Err(crate::GridViewError::NotFound {
                    what: format!("twin {twin}"),
                })
            })
        }
        fn contract(
            &self,
            id: ContractId,
        ) -> BoxFuture<'_, Result<Contract, crate::GridViewError>> {
            let c = self
                .contracts
                .lock()
                .unwrap()
                .iter()
                .find(|c| c.id == id)
                .cloned();
            Box::pin(async move {
                c.ok_or(crate::GridViewError::NotFound {
                    what: format!("contract {id}"),
                })
            })
        }
        fn contracts(
            &self,
            f: ContractFilter,
        ) -> BoxFuture<'_, Result<Vec<Contract>, crate::GridViewError>> {
            let all = self
                .contracts
                .lock()
                .unwrap()
                .iter()
                .filter(|c| f.twin_id.is_none_or(|t| c.twin_id == t))
                .cloned()
                .collect();
            Box::pin(async move { Ok(all) })
        }
    }

    fn name_contract(id: u64, twin: TwinId, name: &str) -> Contract {
        Contract {
            id,
            twin_id: twin,
            state: ContractState::Created,
            kind: ContractKind::Name { name: name.into() },
            created_at: 0,
            updated_at: 0,
        }
    }

    /// The gateway: the last table it was given; fails while `down`.
    #[derive(Default)]
    struct Host {
        routes: StdMutex<Option<Vec<Route>>>,
        pushes: std::sync::atomic::AtomicUsize,
        down: std::sync::atomic::AtomicBool,
    }

    impl GatewayHost for Host {
        fn apply(&self, routes: Vec<Route>) -> BoxFuture<'_, Result<(), String>> {
            Box::pin(async move {
                if self.down.load(std::sync::atomic::Ordering::SeqCst) {
                    return Err("connection refused".into());
                }
                zos_gateway::route::validate_table(&routes).map_err(|e| e.to_string())?;
                self.pushes
                    .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                *self.routes.lock().unwrap() = Some(routes);
                Ok(())
            })
        }
        fn metrics(&self) -> BoxFuture<'_, Result<BTreeMap<String, Meter>, String>> {
            Box::pin(async { Ok(BTreeMap::new()) })
        }
        fn reset(&self) -> BoxFuture<'_, Result<(), String>> {
            *self.routes.lock().unwrap() = None;
            Box::pin(async { Ok(()) })
        }
    }

    impl Host {
        fn hosts(&self) -> Vec<String> {
            let r = self.routes.lock().unwrap();
            r.iter().flatten().map(|r| r.host.clone()).collect()
        }
        fn pushes(&self) -> usize {
            self.pushes.load(std::sync::atomic::Ordering::SeqCst)
        }
    }

    /// `zone` answers every name it holds; others do not resolve.
    struct Zone(BTreeMap<String, IpAddr>);

    impl Resolver for Zone {
        fn lookup<'a>(&'a self, host: &'a str) -> BoxFuture<'a, Result<Vec<IpAddr>, String>> {
            let found = self.0.get(host).copied();
            Box::pin(async move { found.map(|a| vec![a]).ok_or_else(|| "NXDOMAIN".to_string()) })
        }
    }

    struct Bed {
        m: GatewayManager<RecordingNetworker>,
        net: Arc<RecordingNetworker>,
        grid: Arc<Grid>,
        host: Arc<Host>,
        dir: tempfile::TempDir,
    }

    const TWIN: TwinId = 7;

    async fn bed(domain: Option<&str>) -> Bed {
        let net = Arc::new(RecordingNetworker::new("t"));
        net.setup_node(Some(PublicSetup {
            config: zos_types::registry::PublicConfig {
                ipv4: "198.51.100.2/24".parse().unwrap(),
                gw4: "198.51.100.1".parse().unwrap(),
                ipv6: None,
                gw6: None,
                domain: domain.map(str::to_string),
            },
            exit_iface: "eth1".into(),
        }))
        .await
        .unwrap();
        let net_wl = WorkloadId {
            twin: TWIN,
            contract: 1,
            name: "mynet".into(),
        };
        net.apply_network(
            &net_wl,
            &Network {
                ip_range: "10.20.0.0/16".parse().unwrap(),
                subnet: "10.20.2.0/24".parse().unwrap(),
                wireguard_private_key: {
                    use base64::Engine as _;
                    base64::engine::general_purpose::STANDARD.encode([1u8; 32])
                },
                wireguard_listen_port: 3000,
                peers: vec![],
            },
        )
        .await
        .unwrap();
        let grid = Arc::new(Grid::default());
        let host = Arc::new(Host::default());
        let dir = tempfile::tempdir().unwrap();
        let zone = Zone(BTreeMap::from([
            ("shop.example.com".into(), "198.51.100.2".parse().unwrap()),
            (
                "elsewhere.example.com".into(),
                "203.0.113.9".parse().unwrap(),
            ),
        ]));
        let m = GatewayManager::new(
            net.clone(),
            grid.clone(),
            host.clone(),
            Arc::new(zone),
            dir.path().join("routes.json"),
        )
        .unwrap();
        Bed {
            m,
            net,
            grid,
            host,
            dir,
        }
    }

    fn id(contract: u64, name: &str) -> WorkloadId {
        WorkloadId {
            twin: TWIN,
            contract,
            name: name.into(),
        }
    }

    fn name_proxy(name: &str, backends: &[&str], network: Option<&str>) -> WorkloadData {
        WorkloadData::GatewayNameProxy(GatewayNameProxy {
            name: name.into(),
            tls_passthrough: false,
            backends: backends.iter().map(|b| b.to_string()).collect(),
            network: network.map(str::to_string),
        })
    }

    fn fqdn_proxy(fqdn: &str, passthrough: bool, backends: &[&str]) -> WorkloadData {
        WorkloadData::GatewayFqdnProxy(GatewayFqdnProxy {
            fqdn: fqdn.into(),
            tls_passthrough: passthrough,
            backends: backends.iter().map(|b| b.to_string()).collect(),
            network: Some("mynet".into()),
        })
    }

    async fn provision(
        b: &Bed,
        id: &WorkloadId,
        data: &WorkloadData,
    ) -> Result<serde_json::Value, String> {
        b.m.provision(Target { id, data })
            .await
            .map_err(|e| zos_runtime::error_chain(&e))
    }

    #[tokio::test]
    async fn a_name_proxy_serves_its_name_into_the_twins_network() {
        let b = bed(Some("GW.example.org")).await;
        b.grid
            .contracts
            .lock()
            .unwrap()
            .push(name_contract(50, TWIN, "Shop"));
        let w = id(2, "gw");
        let out = provision(
            &b,
            &w,
            &name_proxy("shop", &["http://10.20.2.5:8080"], Some("mynet")),
        )
        .await
        .unwrap();
        assert_eq!(out["fqdn"], "shop.gw.example.org");
        assert_eq!(out["address"], "198.51.100.2");
        let routes = b.host.routes.lock().unwrap().clone().unwrap();
        assert_eq!(routes.len(), 1);
        assert_eq!(routes[0].id, w.to_string());
        assert_eq!(routes[0].tls, Tls::Terminate);
        let info = b.net.network_info(TWIN, "mynet").await.unwrap().unwrap();
        assert_eq!(
            routes[0].backends,
            vec![Backend {
                addr: "10.20.2.5:8080".parse().unwrap(),
                netns: Some(info.namespace),
            }]
        );
        // Again (a restart's reconciliation): nothing changes, nothing is pushed.
        let pushes = b.host.pushes();
        provision(
            &b,
            &w,
            &name_proxy("shop", &["http://10.20.2.5:8080"], Some("mynet")),
        )
        .await
        .unwrap();
        assert_eq!(b.host.pushes(), pushes);
    }

    #[tokio::test]
    async fn names_need_the_twins_own_live_contract_and_a_domain() {
        let b = bed(Some("gw.example.org")).await;
        let data = name_proxy("shop", &["http://10.20.2.5:80"], Some("mynet"));
        let e = provision(&b, &id(2, "gw"), &data).await.unwrap_err();
        assert!(e.contains("has no name contract for \"shop\""), "{e}");
        b.grid
            .contracts
            .lock()
            .unwrap()
            .push(name_contract(50, 99, "shop"));
        let e = provision(&b, &id(2, "gw"), &data).await.unwrap_err();
        assert!(
            e.contains("has no name contract"),
            "another twin's name: {e}"
        );
        let mut gone = name_contract(51, TWIN, "shop");
        gone.state = ContractState::Deleted;
        b.grid.contracts.lock().unwrap().push(gone);
        assert!(provision(&b, &id(2, "gw"), &data).await.is_err());
        assert!(b.host.hosts().is_empty());

        let no_domain = bed(None).await;
        no_domain
            .grid
            .contracts
            .lock()
            .unwrap()
            .push(name_contract(50, TWIN, "shop"));
        let e = provision(&no_domain, &id(2, "gw"), &data)
            .await
            .unwrap_err();
        assert!(e.contains("has no domain"), "{e}");
    }

    #[tokio::test]
    async fn a_name_is_served_once_per_node() {
        let b = bed(Some("gw.example.org")).await;
        b.grid
            .contracts
            .lock()
            .unwrap()
            .push(name_contract(50, TWIN, "shop"));
        let data = name_proxy("shop", &["http://10.20.2.5:80"], Some("mynet"));
        provision(&b, &id(2, "a"), &data).await.unwrap();
        let e = provision(&b, &id(3, "b"), &data).await.unwrap_err();
        assert!(e.contains("already served on this node"), "{e}");
        let fq = fqdn_proxy("SHOP.example.com.", false, &["http://10.20.2.5:80"]);
        provision(&b, &id(4, "c"), &fq).await.unwrap();
        let e = provision(&b, &id(5, "d"), &fq).await.unwrap_err();
        assert!(e.contains("already served"), "{e}");
        assert_eq!(
            b.host.hosts(),
            vec!["shop.gw.example.org", "shop.example.com"]
        );
    }

    #[tokio::test]
    async fn fqdns_must_point_here_and_stay_out_of_the_node_domain() {
        let b = bed(Some("gw.example.org")).await;
        let e = provision(
            &b,
            &id(2, "a"),
            &fqdn_proxy("x.gw.example.org", false, &["http://10.20.2.5:80"]),
        )
        .await
        .unwrap_err();
        assert!(e.contains("under this node's domain"), "{e}");
        let e = provision(
            &b,
            &id(2, "a"),
            &fqdn_proxy("elsewhere.example.com", false, &["http://10.20.2.5:80"]),
        )
        .await
        .unwrap_err();
        assert!(
            e.contains("not to this node's public address 198.51.100.2"),
            "{e}"
        );
        let e = provision(
            &b,
            &id(2, "a"),
            &fqdn_proxy("nowhere.example.com", false, &["http://10.20.2.5:80"]),
        )
        .await
        .unwrap_err();
        assert!(e.contains("does not resolve"), "{e}");
        let out = provision(
            &b,
            &id(2, "a"),
            &fqdn_proxy("shop.example.com", true, &["10.20.2.5:443"]),
        )
        .await
        .unwrap();
        assert_eq!(out["fqdn"], "shop.example.com");
        assert_eq!(
            b.host.routes.lock().unwrap().as_ref().unwrap()[0].tls,
            Tls::Passthrough
        );
    }

    #[tokio::test]
    async fn backends_stay_in_the_twins_network_or_the_public_range() {
        let b = bed(Some("gw.example.org")).await;
        b.grid
            .contracts
            .lock()
            .unwrap()
            .push(name_contract(50, TWIN, "shop"));
        for (backends, network, want) in [
            (
                &["http://10.30.0.5:80"][..],
                Some("mynet"),
                "neither in the workload's `network`",
            ),
            (
                &["http://10.20.2.1:80"][..],
                Some("mynet"),
                "public address",
            ),
            (
                &["http://192.168.1.10:80"][..],
                None,
                "nor a public address",
            ),
            (
                &["http://169.254.169.254:80"][..],
                None,
                "nor a public address",
            ),
            (
                &["http://198.51.100.2:8080"][..],
                None,
                "own public address",
            ),
            (
                &["http://10.20.2.5:80"][..],
                Some("other"),
                "has no network \"other\"",
            ),
        ] {
            let e = provision(&b, &id(2, "gw"), &name_proxy("shop", backends, network))
                .await
                .unwrap_err();
            assert!(e.contains(want), "{backends:?} in {network:?}: {e}");
        }
        assert!(b.host.hosts().is_empty());
        // A public address: another of the farm's, or a routable one.
        provision(
            &b,
            &id(2, "gw"),
            &name_proxy(
                "shop",
                &["http://198.51.100.77:80", "http://185.69.166.7:80"],
                None,
            ),
        )
        .await
        .unwrap();
        let routes = b.host.routes.lock().unwrap().clone().unwrap();
        assert!(routes[0].backends.iter().all(|t| t.netns.is_none()));
    }

    #[tokio::test]
    async fn a_lost_name_is_found_and_the_table_outlives_the_manager() {
        let b = bed(Some("gw.example.org")).await;
        b.grid
            .contracts
            .lock()
            .unwrap()
            .push(name_contract(50, TWIN, "shop"));
        b.grid
            .contracts
            .lock()
            .unwrap()
            .push(name_contract(51, TWIN, "blog"));
        let (shop, blog) = (id(2, "shop"), id(3, "blog"));
        provision(
            &b,
            &shop,
            &name_proxy("shop", &["http://10.20.2.5:80"], Some("mynet")),
        )
        .await
        .unwrap();
        provision(
            &b,
            &blog,
            &name_proxy("blog", &["http://10.20.2.6:80"], Some("mynet")),
        )
        .await
        .unwrap();
        assert!(b.m.recheck().await.is_empty());
        b.grid.contracts.lock().unwrap().retain(|c| c.id != 50);
        let lost = b.m.recheck().await;
        assert_eq!(lost.len(), 1);
        assert_eq!(lost[0].0, shop);
        // Provisioned again (a restart's reconciliation) without its name: refused, and its
        // route goes with it.
        let again = name_proxy("shop", &["http://10.20.2.5:80"], Some("mynet"));
        assert!(provision(&b, &shop, &again).await.is_err());
        assert_eq!(b.host.hosts(), vec!["blog.gw.example.org"]);
        b.m.deprovision(&shop).await.unwrap();
        assert_eq!(b.host.hosts(), vec!["blog.gw.example.org"]);

        // A new zosd: the stored table is served again before anything else.
        let host = Arc::new(Host::default());
        let again = GatewayManager::new(
            b.net.clone(),
            b.grid.clone(),
            host.clone(),
            Arc::new(Zone(BTreeMap::new())),
            b.dir.path().join("routes.json"),
        )
        .unwrap();
        assert_eq!(again.restore().await.unwrap(), 1);
        assert_eq!(host.hosts(), vec!["blog.gw.example.org"]);
        // A new public address: the gateway is started again and given the same table.
        assert_eq!(again.readdress().await.unwrap(), 1);
        assert_eq!(host.hosts(), vec!["blog.gw.example.org"]);
        assert_eq!(host.pushes(), 2);
    }

    #[tokio::test]
    async fn a_gateway_that_cannot_take_the_table_changes_nothing() {
        let b = bed(Some("gw.example.org")).await;
        b.grid
            .contracts
            .lock()
            .unwrap()
            .push(name_contract(50, TWIN, "shop"));
        b.host.down.store(true, std::sync::atomic::Ordering::SeqCst);
        let e = provision(
            &b,
            &id(2, "gw"),
            &name_proxy("shop", &["http://10.20.2.5:80"], Some("mynet")),
        )
        .await
        .unwrap_err();
        assert!(e.contains("connection refused"), "{e}");
        assert!(b.m.served().await.is_empty());
        assert!(!b.dir.path().join("routes.json").exists());
        let no_public = Arc::new(RecordingNetworker::new("u"));
        let m = GatewayManager::new(
            no_public,
            b.grid.clone(),
            b.host.clone(),
            Arc::new(Zone(BTreeMap::new())),
            b.dir.path().join("u.json"),
        )
        .unwrap();
        let e = m
            .provision(Target {
                id: &id(2, "gw"),
                data: &name_proxy("shop", &["http://185.69.166.7:80"], None),
            })
            .await
            .unwrap_err();
        assert!(e.to_string().contains("no public config"), "{e}");
    }
}
