//! Planning a network before anything is deployed: checking the request, and picking each
//! node's subnet, listen port, endpoint and WireGuard key (asking the nodes what they have free).

use std::collections::BTreeSet;
use std::net::{IpAddr, Ipv4Addr};

use base64::Engine as _;
use ipnet::Ipv4Net;
use zos_types::node_api::{self, Page};
use zos_types::{NodeId, TwinId};

use super::NetworkError;
use super::record::{Access, FILE_VERSION, NetworkRecord, NetworkStore, NodePart, valid_name};
use crate::GridClient;

/// Listen ports are picked in this range.
pub const PORTS: std::ops::RangeInclusive<u16> = 2000..=32000;

/// What [`create`](super::create) is asked for.
#[derive(Debug, Clone)]
pub struct CreateRequest {
    pub name: String,
    /// The nodes, each once; the first is the one the user's machine dials.
    pub nodes: Vec<NodeId>,
    /// The whole network, a private /16.
    pub ip_range: Ipv4Net,
    /// Whether the user's machine joins too.
    pub access: bool,
    /// The address other members dial for a node (`NODE`, `HOST`), instead of its own.
    pub endpoints: Vec<(NodeId, String)>,
}

impl CreateRequest {
    /// Checks the request without asking anyone: the name, the endpoints, the range, the
    /// nodes, and that no network of that name was made from here.
    pub fn check(&self, store: &NetworkStore) -> Result<(), NetworkError> {
        self.check_fields()?;
        if store.exists(&self.name) {
            return Err(NetworkError::Exists {
                name: self.name.clone(),
            });
        }
        Ok(())
    }

    /// The checks of [`Self::check`] that need no store: the name, the endpoints, the range
    /// and the nodes.
    pub fn check_fields(&self) -> Result<(), NetworkError> {
        valid_name(&self.name)?;
        if let Some((node, _)) = self.endpoints.iter().find(|(n, _)| !self.nodes.contains(n)) {
            return Err(NetworkError::EndpointNotMember { node: *node });
        }
        if self.ip_range.prefix_len() != 16 || !self.ip_range.network().is_private() {
            return Err(NetworkError::Range {
                range: self.ip_range,
            });
        }
        let mut seen = BTreeSet::new();
        if self.nodes.is_empty() || !self.nodes.iter().all(|n| seen.insert(*n)) {
            return Err(NetworkError::Nodes);
        }
        Ok(())
    }
}

/// Plans the network of `req` (subnets, ports, endpoints, keys), asking each node what it has
/// free; nothing is deployed yet (every contract id is 0).
pub async fn plan(
    c: &GridClient,
    req: &CreateRequest,
    me: TwinId,
) -> Result<NetworkRecord, NetworkError> {
    let mut rec = NetworkRecord {
        version: FILE_VERSION,
        name: req.name.clone(),
        twin_id: me,
        ip_range: req.ip_range.trunc(),
        nodes: Vec::new(),
        access: None,
    };
    for (i, node) in req.nodes.iter().enumerate() {
        let twin = node_twin(c, *node).await?;
        let host = match req.endpoints.iter().find(|(n, _)| n == node) {
            Some((_, h)) => h.clone(),
            None => endpoint_host(c, twin, *node).await?.to_string(),
        };
        let port = free_port(&wg_ports(c, twin, *node).await?)?;
        let (private_key, public_key) = wg_keypair()?;
        rec.nodes.push(NodePart {
            node_id: *node,
            contract_id: 0,
            subnet: nth_subnet(rec.ip_range, i)?,
            listen_port: port,
            endpoint: format!("{host}:{port}"),
            private_key,
            public_key,
        });
    }
    if req.access {
        let (private_key, public_key) = wg_keypair()?;
        rec.access = Some(Access {
            subnet: nth_subnet(rec.ip_range, req.nodes.len())?,
            node_id: req.nodes[0],
            private_key,
            public_key,
        });
    }
    Ok(rec)
}

/// A fresh WireGuard key pair, base64 (private, public).
pub(super) fn wg_keypair() -> Result<(String, String), NetworkError> {
    let mut seed = [0u8; 32];
    getrandom::getrandom(&mut seed).map_err(NetworkError::Random)?;
    let secret = x25519_dalek::StaticSecret::from(seed);
    let public = x25519_dalek::PublicKey::from(&secret);
    let b64 = base64::engine::general_purpose::STANDARD;
    Ok((b64.encode(secret.to_bytes()), b64.encode(public.as_bytes())))
}

/// The `i`-th /24 of the range after `.0` and `.1`: `.2.0/24`, `.3.0/24`, …
pub(super) fn nth_subnet(range: Ipv4Net, i: usize) -> Result<Ipv4Net, NetworkError> {
    range
        .subnets(24)
        .map_err(|_| NetworkError::RangeTooSmall)?
        .nth(i + 2)
        .ok_or(NetworkError::NoRoom {
            range,
            count: i + 1,
        })
}

/// A port in [`PORTS`] not in `taken`, random so that two people picking at once rarely clash.
fn free_port(taken: &[u16]) -> Result<u16, NetworkError> {
    let mut r = [0u8; 2];
    getrandom::getrandom(&mut r).map_err(NetworkError::Random)?;
    let span = (PORTS.end() - PORTS.start()) as u32 + 1;
    let start = u16::from_le_bytes(r) as u32 % span;
    (0..span)
        .map(|k| PORTS.start() + ((start + k) % span) as u16)
        .find(|p| !taken.contains(p))
        .ok_or(NetworkError::PortsFull)
}

/// The address other members reach `node` at: the first IPv4 of its own namespace that is not
/// loopback, link-local or zos's internal 100.127.0.0/16.
async fn endpoint_host(
    c: &GridClient,
    twin: TwinId,
    node: NodeId,
) -> Result<Ipv4Addr, NetworkError> {
    let ifaces = c
        .node(twin)
        .call::<node_api::Interfaces>(&())
        .await
        .map_err(|source| NetworkError::Interfaces { node, source })?;
    let internal: Ipv4Net = "100.127.0.0/16".parse().expect("valid");
    for iface in ifaces.iter().filter(|i| i.namespace == "host") {
        for net in &iface.addrs {
            if let IpAddr::V4(ip) = net.addr()
                && !ip.is_loopback()
                && !ip.is_link_local()
                && !internal.contains(&ip)
            {
                return Ok(ip);
            }
        }
    }
    Err(NetworkError::NoEndpoint { node })
}

async fn wg_ports(c: &GridClient, twin: TwinId, node: NodeId) -> Result<Vec<u16>, NetworkError> {
    c.node(twin)
        .all::<node_api::WgPorts>(Page::default())
        .await
        .map_err(|source| NetworkError::WgPorts { node, source })
}

/// The twin of `node`, which must be online.
pub(super) async fn node_twin(c: &GridClient, node: NodeId) -> Result<TwinId, NetworkError> {
    let n = c
        .get_node(node)
        .await
        .map_err(|source| NetworkError::Node { node, source })?;
    if !n.online {
        return Err(NetworkError::Offline { node });
    }
    Ok(n.twin_id)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::workflow::network::NetworkStore;
    use crate::workflow::network::record::tests::record;

    #[test]
    fn subnets_and_ports_are_picked_free() {
        let r: Ipv4Net = "10.20.0.0/16".parse().unwrap();
        assert_eq!(nth_subnet(r, 0).unwrap().to_string(), "10.20.2.0/24");
        assert_eq!(nth_subnet(r, 3).unwrap().to_string(), "10.20.5.0/24");
        assert!(nth_subnet(r, 254).is_err());
        let taken: Vec<u16> = PORTS.clone().filter(|p| *p != 4242).collect();
        assert_eq!(free_port(&taken).unwrap(), 4242);
        let all: Vec<u16> = PORTS.collect();
        assert!(free_port(&all).is_err());
        assert!(valid_name("my-net_1").is_ok());
        assert!(valid_name("../x").is_err());
        assert!(valid_name("").is_err());
    }

    #[test]
    fn a_request_is_checked_before_anyone_is_asked() {
        let d = tempfile::tempdir().unwrap();
        let store = NetworkStore::new(d.path());
        let req = CreateRequest {
            name: "lan".into(),
            nodes: vec![1, 2],
            ip_range: "10.20.0.0/16".parse().unwrap(),
            access: true,
            endpoints: vec![(2, "203.0.113.7".into())],
        };
        req.check(&store).unwrap();
        let bad = |f: &dyn Fn(&mut CreateRequest)| {
            let mut r = req.clone();
            f(&mut r);
            r.check(&store).unwrap_err()
        };
        assert!(matches!(
            bad(&|r| r.endpoints = vec![(3, "x".into())]),
            NetworkError::EndpointNotMember { node: 3 }
        ));
        assert!(matches!(
            bad(&|r| r.ip_range = "10.20.0.0/15".parse().unwrap()),
            NetworkError::Range { .. }
        ));
        assert!(matches!(
            bad(&|r| r.ip_range = "8.8.0.0/16".parse().unwrap()),
            NetworkError::Range { .. }
        ));
        assert!(matches!(
            bad(&|r| {
                r.nodes = vec![1, 1];
                r.endpoints.clear();
            }),
            NetworkError::Nodes
        ));
        assert!(matches!(
            bad(&|r| {
                r.nodes.clear();
                r.endpoints.clear();
            }),
            NetworkError::Nodes
        ));
        assert!(matches!(
            bad(&|r| r.name = "a b".into()),
            NetworkError::Name { .. }
        ));
        store.save(&record(false)).unwrap();
        assert!(matches!(
            bad(&|r| r.name = "net".into()),
            NetworkError::Exists { .. }
        ));
    }
}
