//! The `network` and `ip` managers: what those workloads mean, through the [`Networker`].
//!
//! - `network`: the twin's network resource on this node, named after the workload
//!   ([`Networker::apply_network`]); an update changes keys, port and peers in place.
//! - `ip`: a public IPv4 from the addresses the contract reserved in the farm's pool (the first
//!   one no other workload uses) and/or the node's public IPv6, with the filter that lets only
//!   that address and MAC through. The interface itself is made by the machine that uses it.
//!
//! Network resources are shared kernel objects (a namespace, a bridge, nftables tables, a
//! WireGuard endpoint), so each one counts [`NETWORK_RESOURCE_COST`] against the node's
//! capacity like any workload, and one twin keeps at most
//! [`MAX_NETWORKS_PER_TWIN`](super::engine::MAX_NETWORKS_PER_TWIN) of them on a node (checked by
//! the engine when a deployment arrives).

use std::sync::Arc;

use futures::future::BoxFuture;
use zos_types::contract::ContractKind;
use zos_types::deployment::WorkloadId;
use zos_types::node_api::results::{IpResult, NetworkResult};
pub use zos_types::workload::NETWORK_RESOURCE_COST;
use zos_types::workload::WorkloadData;

use super::engine::GridView;
use super::error::GridViewError;
use super::managers::{Manager, ManagerError, Target, to_data};
use zos_net::{
    Attachment, NetworkError, NetworkInfo, Networker, PublicIpRequest, WgBackend, pick_public_ipv4,
};

/// Refusals that change nothing, as opposed to failures of the system.
fn refused(e: &NetworkError) -> bool {
    matches!(
        e,
        NetworkError::Invalid(_)
            | NetworkError::Owned { .. }
            | NetworkError::PortTaken(_)
            | NetworkError::AddressTaken { .. }
            | NetworkError::NameClash(_)
            | NetworkError::NoPublicConfig
            | NetworkError::NoPublicIpv6
            | NetworkError::PublicIpTaken(_)
    )
}

fn failed(e: NetworkError) -> ManagerError {
    e.into()
}

/// A refused update leaves the workload as it was.
fn update_err(e: NetworkError) -> ManagerError {
    if refused(&e) {
        ManagerError::from(e).unchanged()
    } else {
        failed(e)
    }
}

/// The result data of a `network` workload.
fn network_result(info: &NetworkInfo) -> serde_json::Value {
    to_data(&NetworkResult {
        netid: info.netid.to_string(),
        subnet: info.subnet.to_string(),
        gateway: info.gateway.to_string(),
        wireguard_public_key: info.wg_public_key.clone(),
        wireguard_listen_port: info.listen_port,
        backend: match info.backend {
            WgBackend::Kernel => "kernel",
            WgBackend::Userspace => "userspace",
        }
        .into(),
    })
}

/// The `network` manager.
#[derive(Debug)]
pub struct NetworkManager<N> {
    net: Arc<N>,
}

impl<N> NetworkManager<N> {
    pub fn new(net: Arc<N>) -> Self {
        Self { net }
    }
}

impl<N: Networker + 'static> NetworkManager<N> {
    async fn apply(
        &self,
        t: Target<'_>,
        on_err: fn(NetworkError) -> ManagerError,
    ) -> Result<serde_json::Value, ManagerError> {
        let WorkloadData::Network(net) = t.data else {
            return Err(ManagerError::Failed(format!(
                "the network manager got a {} workload",
                t.data.kind()
            )));
        };
        let info = self.net.apply_network(t.id, net).await.map_err(on_err)?;
        Ok(network_result(&info))
    }
}

impl<N: Networker + 'static> Manager for NetworkManager<N> {
    fn provision<'a>(
        &'a self,
        t: Target<'a>,
    ) -> BoxFuture<'a, Result<serde_json::Value, ManagerError>> {
        Box::pin(self.apply(t, failed))
    }

    fn update<'a>(
        &'a self,
        t: Target<'a>,
    ) -> BoxFuture<'a, Result<serde_json::Value, ManagerError>> {
        Box::pin(self.apply(t, update_err))
    }

    fn deprovision<'a>(&'a self, id: &'a WorkloadId) -> BoxFuture<'a, Result<(), ManagerError>> {
        Box::pin(async move { self.net.delete_network(id).await.map_err(failed) })
    }
}

/// The result data of an `ip` workload: `ip`, `ip6` and `gateway` as in Zero-OS, and the MAC
/// the machine's interface must use.
fn ip_result(a: &Attachment) -> serde_json::Value {
    to_data(&IpResult {
        ip: a.ipv4.map(|n| n.to_string()).unwrap_or_default(),
        gateway: a.gateway4.map(|g| g.to_string()).unwrap_or_default(),
        ip6: a.ipv6.map(|n| n.to_string()).unwrap_or_default(),
        gateway6: a.gateway6.map(|g| g.to_string()).unwrap_or_default(),
        mac: a.mac_string(),
    })
}

/// The `ip` manager.
pub struct IpManager<N> {
    net: Arc<N>,
    grid: Arc<dyn GridView>,
}

impl<N> std::fmt::Debug for IpManager<N> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IpManager").finish_non_exhaustive()
    }
}

impl<N> IpManager<N> {
    pub fn new(net: Arc<N>, grid: Arc<dyn GridView>) -> Self {
        Self { net, grid }
    }
}

impl<N: Networker + 'static> IpManager<N> {
    async fn setup(&self, t: Target<'_>) -> Result<serde_json::Value, ManagerError> {
        let WorkloadData::Ip(want) = t.data else {
            return Err(ManagerError::Failed(format!(
                "the ip manager got a {} workload",
                t.data.kind()
            )));
        };
        // Made before (a reconciliation, or a crash after the setup): keep its address.
        if let Some(a) = self.net.public_ip(t.id).await.map_err(failed)? {
            return Ok(ip_result(&a));
        }
        let v4 = if want.v4 {
            let contract = match self.grid.contract(t.id.contract).await {
                Ok(c) => c,
                Err(GridViewError::NotFound { .. }) => {
                    return Err(ManagerError::Invalid(format!(
                        "contract {} does not exist",
                        t.id.contract
                    )));
                }
                Err(e) => {
                    return Err(ManagerError::from(e)
                        .context(format!("cannot read contract {}", t.id.contract)));
                }
            };
            let ContractKind::Node {
                public_ips_list, ..
            } = &contract.kind
            else {
                return Err(ManagerError::Invalid(format!(
                    "contract {} is not a node contract",
                    contract.id
                )));
            };
            let taken = self.net.public_ips().await.map_err(failed)?;
            let pick = pick_public_ipv4(public_ips_list, &taken).ok_or_else(|| {
                ManagerError::Invalid(format!(
                    "contract {} reserved {} public IPv4 address(es) and every one is in use: \
                     create the contract with one address per ip workload",
                    contract.id,
                    public_ips_list.len()
                ))
            })?;
            Some(pick)
        } else {
            None
        };
        let req = PublicIpRequest { v4, v6: want.v6 };
        let a = self.net.setup_public_ip(t.id, &req).await.map_err(failed)?;
        Ok(ip_result(&a))
    }
}

impl<N: Networker + 'static> Manager for IpManager<N> {
    fn provision<'a>(
        &'a self,
        t: Target<'a>,
    ) -> BoxFuture<'a, Result<serde_json::Value, ManagerError>> {
        Box::pin(self.setup(t))
    }

    fn deprovision<'a>(&'a self, id: &'a WorkloadId) -> BoxFuture<'a, Result<(), ManagerError>> {
        Box::pin(async move { self.net.teardown_public_ip(id).await.map_err(failed) })
    }
}
