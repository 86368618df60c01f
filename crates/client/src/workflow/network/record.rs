//! The local record of a network ([`NetworkRecord`]: every node's part with its keys, and the
//! user's machine's access) and what follows from it alone: each node's network workload and
//! deployment, and the `wg-quick` file of the user's machine. [`NetworkStore`] keeps the
//! records, one owner-only state file per network, under the grid and twin that own it
//! ([`NetworkStore::for_twin`]): names are a twin's own on one grid, so a devnet and another
//! grid, or two keys, each have theirs.

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

use ipnet::{IpNet, Ipv4Net};
use serde::{Deserialize, Serialize};
use zos_runtime::{StateFile, Versioned};
use zos_types::deployment::{
    ContractId, Deployment, SignatureRequest, SignatureRequirement, Workload,
};
use zos_types::workload::{Network, Peer, WorkloadType};
use zos_types::{NodeId, TwinId};

use super::NetworkError;

/// Version of the local network file.
pub const FILE_VERSION: u32 = 1;

/// One node of a network, as made.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct NodePart {
    pub node_id: NodeId,
    pub contract_id: ContractId,
    pub subnet: Ipv4Net,
    pub listen_port: u16,
    /// `host:port` other members dial.
    pub endpoint: String,
    pub private_key: String,
    pub public_key: String,
}

/// The user's machine, when it joins the network.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Access {
    pub subnet: Ipv4Net,
    /// The node it dials.
    pub node_id: NodeId,
    pub private_key: String,
    pub public_key: String,
}

/// The local record of a network: what was made on every node, keys included.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct NetworkRecord {
    pub version: u32,
    pub name: String,
    pub twin_id: TwinId,
    pub ip_range: Ipv4Net,
    pub nodes: Vec<NodePart>,
    #[serde(default)]
    pub access: Option<Access>,
}

impl Versioned for NetworkRecord {
    const VERSION: u32 = FILE_VERSION;
    const PROGRAM: &'static str = "zos";
}

/// Checks a network name: 1 to 32 of a-z, A-Z, 0-9, '_' and '-' (it names a file and a
/// workload).
pub fn valid_name(name: &str) -> Result<(), NetworkError> {
    let ok = !name.is_empty()
        && name.len() <= 32
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
    if !ok {
        return Err(NetworkError::Name { name: name.into() });
    }
    Ok(())
}

/// Where network records live: `<dir>/<name>.json`, each owner-only (they hold private keys),
/// in a directory only its owner can open. [`NetworkStore::for_twin`] makes `dir` the grid's and
/// twin's own, `<root>/<grid id>/<twin>`.
#[derive(Debug, Clone)]
pub struct NetworkStore {
    dir: PathBuf,
    /// Where an older zos kept records by name alone, looked at only to explain a miss.
    legacy: Option<PathBuf>,
}

/// A stable, readable directory name for a grid from its URL: scheme, host, port and path,
/// lower-cased, with every other character made `_` (`http://127.0.0.1:8080/` gives
/// `http_127.0.0.1_8080`).
pub fn grid_id(url: &str) -> String {
    let url = url.trim().trim_end_matches('/').to_ascii_lowercase();
    let url = url.replacen("://", "_", 1);
    url.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '.' || c == '-' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

impl NetworkStore {
    /// A store in `dir` itself.
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self {
            dir: dir.into(),
            legacy: None,
        }
    }

    /// The store of `twin`'s networks on the grid at `grid_url`: `<root>/<grid id>/<twin>`.
    pub fn for_twin(root: impl Into<PathBuf>, grid_url: &str, twin: TwinId) -> Self {
        let root = root.into();
        Self {
            dir: root.join(grid_id(grid_url)).join(twin.to_string()),
            legacy: Some(root),
        }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The file of network `name`.
    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.join(format!("{name}.json"))
    }

    /// Whether a network `name` was made from here.
    pub fn exists(&self, name: &str) -> bool {
        self.path(name).exists()
    }

    /// The record of network `name`. A record an older zos kept by name alone is not taken
    /// for this grid's and twin's (it does not say which grid it is on): the error says where
    /// it is and what to do with it.
    pub fn load(&self, name: &str) -> Result<NetworkRecord, NetworkError> {
        valid_name(name)?;
        let path = self.path(name);
        if let Some(r) = StateFile::<NetworkRecord>::new(&path).load()? {
            return Ok(r);
        }
        let legacy = self.legacy.as_ref().map(|d| d.join(format!("{name}.json")));
        if let Some(old) = legacy.filter(|p| p.is_file()) {
            return Err(NetworkError::Unkeyed {
                name: name.into(),
                old,
                new: path,
            });
        }
        Err(NetworkError::Missing {
            name: name.into(),
            path,
        })
    }

    /// Writes the record atomically, readable by its owner only.
    pub fn save(&self, record: &NetworkRecord) -> Result<(), NetworkError> {
        Ok(StateFile::new(self.path(&record.name)).save(record)?)
    }

    /// Forgets network `name`.
    pub fn remove(&self, name: &str) -> Result<(), NetworkError> {
        valid_name(name)?;
        Ok(StateFile::<NetworkRecord>::new(self.path(name)).remove()?)
    }

    /// Every network made from here that can be read, by name.
    pub fn list(&self) -> Vec<NetworkRecord> {
        let mut out = Vec::new();
        if let Ok(dir) = std::fs::read_dir(&self.dir) {
            for e in dir.flatten() {
                let p = e.path();
                if p.extension().is_some_and(|x| x == "json")
                    && let Some(stem) = p.file_stem().and_then(|s| s.to_str())
                    && let Ok(f) = self.load(stem)
                {
                    out.push(f);
                }
            }
        }
        out.sort_by(|a, b| a.name.cmp(&b.name));
        out
    }
}

impl NetworkRecord {
    /// The part of the network on `node`.
    pub fn part(&self, node: NodeId) -> Result<&NodePart, NetworkError> {
        self.nodes
            .iter()
            .find(|p| p.node_id == node)
            .ok_or_else(|| NetworkError::NoPart {
                name: self.name.clone(),
                node,
            })
    }

    /// The network workload of `part`: every other node as a peer, and the access peer on
    /// the node it dials (the other nodes reach it through that node).
    pub fn workload(&self, part: &NodePart) -> Result<Workload, NetworkError> {
        let mut peers = Vec::new();
        for other in self.nodes.iter().filter(|o| o.node_id != part.node_id) {
            let mut allowed = vec![IpNet::V4(other.subnet)];
            if let Some(a) = &self.access
                && a.node_id == other.node_id
            {
                allowed.push(IpNet::V4(a.subnet));
            }
            peers.push(Peer {
                subnet: other.subnet,
                wireguard_public_key: other.public_key.clone(),
                allowed_ips: allowed,
                endpoint: other.endpoint.clone(),
            });
        }
        if let Some(a) = &self.access
            && a.node_id == part.node_id
        {
            peers.push(Peer {
                subnet: a.subnet,
                wireguard_public_key: a.public_key.clone(),
                allowed_ips: vec![IpNet::V4(a.subnet)],
                endpoint: String::new(),
            });
        }
        let net = Network {
            ip_range: self.ip_range,
            subnet: part.subnet,
            wireguard_private_key: part.private_key.clone(),
            wireguard_listen_port: part.listen_port,
            peers,
        };
        Ok(Workload {
            version: 0,
            name: self.name.clone(),
            kind: WorkloadType::Network,
            data: serde_json::to_value(&net).map_err(NetworkError::Encode)?,
            metadata: String::new(),
            description: format!("network {}", self.name),
            result: None,
        })
    }

    /// The deployment of `part`, checked as the node will check it.
    pub fn deployment(&self, part: &NodePart) -> Result<Deployment, NetworkError> {
        let d = Deployment {
            version: 0,
            twin_id: self.twin_id,
            contract_id: part.contract_id,
            metadata: String::new(),
            description: format!("network {}", self.name),
            signature_requirement: SignatureRequirement {
                requests: vec![SignatureRequest {
                    twin_id: self.twin_id,
                    required: true,
                    weight: 1,
                }],
                weight_required: 1,
                signatures: vec![],
            },
            workloads: vec![self.workload(part)?],
        };
        d.validate().map_err(NetworkError::Invalid)?;
        Ok(d)
    }

    /// The wg-quick file of the access peer.
    pub fn wg_config(&self) -> Result<String, NetworkError> {
        let a = self.access.as_ref().ok_or_else(|| NetworkError::NoAccess {
            name: self.name.clone(),
        })?;
        let node = self
            .nodes
            .iter()
            .find(|n| n.node_id == a.node_id)
            .ok_or(NetworkError::AccessNodeGone)?;
        Ok(format!(
            "# zos network {name}: this machine joins through node {node_id}\n\
             [Interface]\n\
             PrivateKey = {key}\n\
             Address = {addr}/{len}\n\
             \n\
             [Peer]\n\
             PublicKey = {peer}\n\
             AllowedIPs = {range}\n\
             Endpoint = {endpoint}\n\
             PersistentKeepalive = 25\n",
            name = self.name,
            node_id = a.node_id,
            key = a.private_key,
            addr = dot_one(a.subnet),
            len = a.subnet.prefix_len(),
            peer = node.public_key,
            range = self.ip_range,
            endpoint = node.endpoint,
        ))
    }
}

/// `.1` of a subnet: a node's gateway, or the user's machine's address in its own subnet.
pub fn dot_one(subnet: Ipv4Net) -> Ipv4Addr {
    let base = u32::from(subnet.network());
    Ipv4Addr::from(base + 1)
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;
    use crate::workflow::network::plan::wg_keypair;

    pub(in crate::workflow::network) fn record(access: bool) -> NetworkRecord {
        let part = |node: NodeId, i: u8, port: u16| NodePart {
            node_id: node,
            contract_id: node as u64 + 10,
            subnet: format!("10.20.{i}.0/24").parse().unwrap(),
            listen_port: port,
            endpoint: format!("192.0.2.{node}:{port}"),
            private_key: wg_keypair().unwrap().0,
            public_key: wg_keypair().unwrap().1,
        };
        NetworkRecord {
            version: FILE_VERSION,
            name: "net".into(),
            twin_id: 7,
            ip_range: "10.20.0.0/16".parse().unwrap(),
            nodes: vec![part(1, 2, 3000), part(2, 3, 3001), part(3, 4, 3002)],
            access: access.then(|| Access {
                subnet: "10.20.5.0/24".parse().unwrap(),
                node_id: 1,
                private_key: wg_keypair().unwrap().0,
                public_key: wg_keypair().unwrap().1,
            }),
        }
    }

    fn peers(f: &NetworkRecord, node: usize) -> Vec<Peer> {
        let w = f.workload(&f.nodes[node]).unwrap();
        let net: Network = serde_json::from_value(w.data).unwrap();
        net.peers
    }

    #[test]
    fn a_stale_world_readable_temporary_does_not_leak_the_network_keys() {
        use std::os::unix::fs::PermissionsExt;
        let d = tempfile::tempdir().unwrap();
        let store = NetworkStore::new(d.path().join("zos/networks"));
        let f = record(true);
        // A save interrupted earlier (or a file planted by another user of a shared directory)
        // left `net.json.tmp` readable by all; the keys must not be written into it.
        std::fs::create_dir_all(store.dir()).unwrap();
        let tmp = store.dir().join("net.json.tmp");
        std::fs::write(&tmp, "").unwrap();
        std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o644)).unwrap();
        store.save(&f).unwrap();
        let path = store.path("net");
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(
            mode, 0o600,
            "the file with the WireGuard keys is owner-only"
        );
        assert!(!tmp.exists());
        let back = store.load("net").unwrap();
        assert_eq!(back.nodes[0].private_key, f.nodes[0].private_key);
        assert_eq!(store.list().len(), 1);
        // A file from a newer zos is refused, not misread.
        std::fs::write(&path, r#"{"version": 9, "name": "net"}"#).unwrap();
        let e = store.load("net").unwrap_err();
        assert!(e.to_string().contains("upgrade zos"), "{e}");
        // A name that is not one is refused before any path is made from it.
        assert!(matches!(
            store.load("../x").unwrap_err(),
            NetworkError::Name { .. }
        ));
        store.remove("net").unwrap();
        assert!(matches!(
            store.load("net").unwrap_err(),
            NetworkError::Missing { .. }
        ));
    }

    #[test]
    fn records_of_one_name_on_two_grids_or_two_twins_coexist_and_old_ones_are_explained() {
        let d = tempfile::tempdir().unwrap();
        let root = d.path().join("networks");
        let devnet = NetworkStore::for_twin(&root, "http://127.0.0.1:8080/", 7);
        let other = NetworkStore::for_twin(&root, "https://grid.example.org", 7);
        let second_key = NetworkStore::for_twin(&root, "http://127.0.0.1:8080", 8);
        let mut f = record(true);
        devnet.save(&f).unwrap();
        f.twin_id = 8;
        second_key.save(&f).unwrap();
        assert!(!other.exists("net"));
        f.ip_range = "10.30.0.0/16".parse().unwrap();
        f.twin_id = 7;
        other.save(&f).unwrap();
        assert_eq!(
            devnet.load("net").unwrap().ip_range.to_string(),
            "10.20.0.0/16"
        );
        assert_eq!(
            other.load("net").unwrap().ip_range.to_string(),
            "10.30.0.0/16"
        );
        assert_eq!(second_key.load("net").unwrap().twin_id, 8);
        assert_eq!(devnet.list().len(), 1);
        assert_eq!(
            devnet.dir(),
            root.join("http_127.0.0.1_8080").join("7"),
            "a trailing slash names the same grid"
        );
        second_key.remove("net").unwrap();
        assert!(devnet.exists("net"), "removing one leaves the others");

        // A record an older zos kept by name alone is explained, not adopted.
        let old = root.join("lan.json");
        std::fs::copy(devnet.path("net"), &old).unwrap();
        let e = devnet.load("lan").unwrap_err();
        assert!(matches!(e, NetworkError::Unkeyed { .. }), "{e}");
        assert!(e.to_string().contains(&old.display().to_string()), "{e}");
        assert!(old.exists());
    }

    #[test]
    fn every_node_peers_with_the_others_and_the_access_peer_rides_on_its_node() {
        let f = record(true);
        let p1 = peers(&f, 0);
        assert_eq!(p1.len(), 3, "two nodes and the laptop");
        let laptop = p1.iter().find(|p| p.endpoint.is_empty()).unwrap();
        assert_eq!(laptop.allowed_ips, vec!["10.20.5.0/24".parse().unwrap()]);
        let p2 = peers(&f, 1);
        assert_eq!(p2.len(), 2);
        let via1 = p2
            .iter()
            .find(|p| p.subnet.to_string() == "10.20.2.0/24")
            .unwrap();
        assert_eq!(
            via1.allowed_ips,
            vec![
                "10.20.2.0/24".parse().unwrap(),
                "10.20.5.0/24".parse().unwrap()
            ],
            "node 2 reaches the laptop through node 1"
        );
        assert!(p2.iter().all(|p| !p.endpoint.is_empty()));
        // Each deployment is valid as the node would check it.
        for part in &f.nodes {
            f.deployment(part).unwrap();
        }
    }

    #[test]
    fn the_laptop_config_dials_the_access_node() {
        let f = record(true);
        let conf = f.wg_config().unwrap();
        assert!(conf.contains("Address = 10.20.5.1/24"), "{conf}");
        assert!(conf.contains("AllowedIPs = 10.20.0.0/16"), "{conf}");
        assert!(conf.contains("Endpoint = 192.0.2.1:3000"), "{conf}");
        assert!(conf.contains(&format!("PublicKey = {}", f.nodes[0].public_key)));
        let e = record(false).wg_config().unwrap_err();
        assert!(e.to_string().contains("add-access"), "{e}");
    }
}
