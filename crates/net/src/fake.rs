//! [`RecordingNetworker`]: a [`Networker`] that keeps its state in memory, follows the same
//! rules as the real one and records every call, for tests of the modules that use the network
//! (provision engine, API handlers) without root or a kernel.

use std::net::Ipv4Addr;
use std::sync::Mutex;

use zos_types::TwinId;
use zos_types::deployment::WorkloadId;
use zos_types::workload::Network;

use super::names::{Names, NetId};
use super::rules;
use super::state::{NodeRecord, NrRecord, PortTarget, State, WlRef};
use super::wireguard::{self, PeerStatus, WgBackend, WgStatus};
use super::{
    Attachment, Interface, NetworkError, NetworkInfo, Networker, PublicIpRequest, PublicSetup,
    ReconcileReport, Result, VmLink,
};

/// One call made to a [`RecordingNetworker`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Call {
    SetupNode {
        public: bool,
    },
    Reconcile,
    TeardownNode,
    ApplyNetwork {
        wl: WorkloadId,
        port: u16,
        peers: usize,
    },
    DeleteNetwork {
        wl: WorkloadId,
    },
    AttachPrivate {
        vm: WorkloadId,
        network: String,
        ip: Ipv4Addr,
    },
    DetachPrivate {
        vm: WorkloadId,
        network: String,
    },
    SetupPublicIp {
        wl: WorkloadId,
    },
    AttachPublic {
        wl: WorkloadId,
    },
    DetachPublic {
        wl: WorkloadId,
    },
    TeardownPublicIp {
        wl: WorkloadId,
    },
}

#[derive(Debug, Default)]
struct Inner {
    state: State,
    calls: Vec<Call>,
    fail: Vec<&'static str>,
}

/// An in-memory network with the real rules; see the module docs.
#[derive(Debug)]
pub struct RecordingNetworker {
    names: Names,
    inner: Mutex<Inner>,
}

impl RecordingNetworker {
    pub fn new(prefix: &str) -> Self {
        Self {
            names: Names::new(prefix),
            inner: Mutex::new(Inner::default()),
        }
    }

    /// Every call so far, in order.
    pub fn calls(&self) -> Vec<Call> {
        self.inner.lock().unwrap().calls.clone()
    }

    /// Makes the next call of the operation `op` (a trait method's name) fail.
    pub fn fail_next(&self, op: &'static str) {
        self.inner.lock().unwrap().fail.push(op);
    }

    fn begin(
        &self,
        op: &'static str,
        call: Option<Call>,
    ) -> Result<std::sync::MutexGuard<'_, Inner>> {
        let mut g = self.inner.lock().unwrap();
        if let Some(c) = call {
            g.calls.push(c);
        }
        if let Some(i) = g.fail.iter().position(|f| *f == op) {
            g.fail.remove(i);
            return Err(NetworkError::Internal(format!("{op} failed (injected)")));
        }
        Ok(g)
    }
}

/// A veth into a namespace that does not exist is refused, as the real networker refuses it
/// when it cannot enter the namespace (and then keeps nothing of the attach).
fn check_namespace(link: &VmLink) -> Result<()> {
    match link {
        VmLink::Veth { netns, .. } if !netns.exists() => {
            Err(NetworkError::NoNamespace(netns.display().to_string()))
        }
        _ => Ok(()),
    }
}

impl Networker for RecordingNetworker {
    async fn setup_node(&self, public: Option<PublicSetup>) -> Result<()> {
        let mut g = self.begin(
            "setup_node",
            Some(Call::SetupNode {
                public: public.is_some(),
            }),
        )?;
        if let Some(p) = &public {
            p.config
                .validate()
                .map_err(|e| NetworkError::Invalid(format!("public config: {e}")))?;
        }
        rules::check_public_change(&g.state, public.as_ref())?;
        g.state.node = Some(NodeRecord { public });
        Ok(())
    }

    async fn reconcile(&self) -> Result<ReconcileReport> {
        let g = self.begin("reconcile", Some(Call::Reconcile))?;
        Ok(ReconcileReport {
            networks: g.state.networks.len(),
            adopted: g.state.networks.len(),
            ports: g.state.ports.values().filter(|p| p.link.is_some()).count(),
            ..ReconcileReport::default()
        })
    }

    async fn teardown_node(&self) -> Result<()> {
        let mut g = self.begin("teardown_node", Some(Call::TeardownNode))?;
        g.state = State::default();
        Ok(())
    }

    async fn apply_network(&self, wl: &WorkloadId, net: &Network) -> Result<NetworkInfo> {
        let mut g = self.begin(
            "apply_network",
            Some(Call::ApplyNetwork {
                wl: wl.clone(),
                port: net.wireguard_listen_port,
                peers: net.peers.len(),
            }),
        )?;
        let plan = rules::plan_network(&g.state, &self.names, wl, net)?;
        let rec = NrRecord {
            netid: plan.netid.clone(),
            owner: WlRef::from(wl),
            network: net.clone(),
            slot: plan.slot,
            backend: WgBackend::Userspace,
            wg_ifname: plan.wg_ifname,
            pid: None,
            applied_key: Some(net.wireguard_private_key.clone()),
        };
        let info = rules::network_info(&self.names, &rec);
        g.state.networks.insert(plan.netid, rec);
        Ok(info)
    }

    async fn delete_network(&self, wl: &WorkloadId) -> Result<()> {
        let mut g = self.begin(
            "delete_network",
            Some(Call::DeleteNetwork { wl: wl.clone() }),
        )?;
        let id = NetId::new(wl.twin, &wl.name);
        if g.state
            .networks
            .get(&id)
            .is_some_and(|r| r.owner.contract == wl.contract)
        {
            g.state.networks.remove(&id);
            g.state.ports.retain(
                |_, p| !matches!(&p.target, PortTarget::Private { netid, .. } if *netid == id),
            );
        }
        Ok(())
    }

    async fn network_info(&self, twin: TwinId, name: &str) -> Result<Option<NetworkInfo>> {
        let g = self.begin("network_info", None)?;
        Ok(g.state
            .network(twin, name)
            .map(|r| rules::network_info(&self.names, r)))
    }

    async fn attach_private(
        &self,
        vm: &WorkloadId,
        network: &str,
        ip: Ipv4Addr,
        link: VmLink,
    ) -> Result<Attachment> {
        let mut g = self.begin(
            "attach_private",
            Some(Call::AttachPrivate {
                vm: vm.clone(),
                network: network.to_string(),
                ip,
            }),
        )?;
        rules::check_link(&link)?;
        let mut port = rules::plan_private(&g.state, &self.names, vm, network, ip)?;
        check_namespace(&link)?;
        port.link = Some(link);
        g.state.ports.insert(port.ifname.clone(), port.clone());
        Ok(rules::attachment(&self.names, &g.state, &port))
    }

    async fn detach_private(&self, vm: &WorkloadId, network: &str) -> Result<()> {
        let mut g = self.begin(
            "detach_private",
            Some(Call::DetachPrivate {
                vm: vm.clone(),
                network: network.to_string(),
            }),
        )?;
        if let Some(p) = rules::private_port(&g.state, &self.names, vm, network).cloned() {
            g.state.ports.remove(&p.ifname);
        }
        Ok(())
    }

    async fn setup_public_ip(
        &self,
        ip_wl: &WorkloadId,
        req: &PublicIpRequest,
    ) -> Result<Attachment> {
        let mut g = self.begin(
            "setup_public_ip",
            Some(Call::SetupPublicIp { wl: ip_wl.clone() }),
        )?;
        let mut port = rules::plan_public(&g.state, &self.names, ip_wl, req)?;
        if let Some(old) = g.state.ports.get(&port.ifname) {
            port.link = old.link.clone();
        }
        g.state.ports.insert(port.ifname.clone(), port.clone());
        Ok(rules::attachment(&self.names, &g.state, &port))
    }

    async fn attach_public(&self, ip_wl: &WorkloadId, link: VmLink) -> Result<Attachment> {
        let mut g = self.begin(
            "attach_public",
            Some(Call::AttachPublic { wl: ip_wl.clone() }),
        )?;
        rules::check_link(&link)?;
        let mut port = rules::public_port(&g.state, &self.names, ip_wl)
            .cloned()
            .ok_or_else(|| NetworkError::NoPublicIp(ip_wl.to_string()))?;
        check_namespace(&link)?;
        port.link = Some(link);
        g.state.ports.insert(port.ifname.clone(), port.clone());
        Ok(rules::attachment(&self.names, &g.state, &port))
    }

    async fn detach_public(&self, ip_wl: &WorkloadId) -> Result<()> {
        let mut g = self.begin(
            "detach_public",
            Some(Call::DetachPublic { wl: ip_wl.clone() }),
        )?;
        if let Some(mut p) = rules::public_port(&g.state, &self.names, ip_wl).cloned() {
            p.link = None;
            g.state.ports.insert(p.ifname.clone(), p);
        }
        Ok(())
    }

    async fn teardown_public_ip(&self, ip_wl: &WorkloadId) -> Result<()> {
        let mut g = self.begin(
            "teardown_public_ip",
            Some(Call::TeardownPublicIp { wl: ip_wl.clone() }),
        )?;
        if let Some(p) = rules::public_port(&g.state, &self.names, ip_wl).cloned() {
            g.state.ports.remove(&p.ifname);
        }
        Ok(())
    }

    async fn wireguard_ports(&self) -> Result<Vec<u16>> {
        Ok(self.begin("wireguard_ports", None)?.state.wg_ports())
    }

    async fn machine_networks(&self, vm: &WorkloadId) -> Result<Vec<String>> {
        let g = self.begin("machine_networks", None)?;
        Ok(rules::machine_networks(&g.state, vm))
    }

    async fn private_ips(&self, twin: TwinId, network: &str) -> Result<Vec<Ipv4Addr>> {
        let g = self.begin("private_ips", None)?;
        let id = NetId::new(twin, network);
        let mut v: Vec<Ipv4Addr> = g
            .state
            .ports
            .values()
            .filter(|p| matches!(&p.target, PortTarget::Private { netid, .. } if *netid == id))
            .filter_map(|p| p.ipv4.map(|n| n.addr()))
            .collect();
        v.sort();
        Ok(v)
    }

    async fn public_setup(&self) -> Result<Option<PublicSetup>> {
        let g = self.begin("public_setup", None)?;
        Ok(g.state.node.as_ref().and_then(|n| n.public.clone()))
    }

    async fn public_ip(&self, ip_wl: &WorkloadId) -> Result<Option<Attachment>> {
        let g = self.begin("public_ip", None)?;
        Ok(rules::public_port(&g.state, &self.names, ip_wl)
            .map(|p| rules::attachment(&self.names, &g.state, p)))
    }

    async fn public_ips(&self) -> Result<Vec<Ipv4Addr>> {
        let g = self.begin("public_ips", None)?;
        let mut v: Vec<Ipv4Addr> = g
            .state
            .ports
            .values()
            .filter(|p| p.target == PortTarget::Public)
            .filter_map(|p| p.ipv4.map(|n| n.addr()))
            .collect();
        v.sort();
        Ok(v)
    }

    async fn interfaces(&self) -> Result<Vec<Interface>> {
        let g = self.begin("interfaces", None)?;
        let mut out = Vec::new();
        if let Some(p) = g.state.node.as_ref().and_then(|n| n.public.as_ref()) {
            out.push(Interface {
                name: super::names::inner::PUBLIC_IF.into(),
                namespace: self.names.public_ns(),
                mac: None,
                addrs: vec![ipnet::IpNet::V4(p.config.ipv4)],
            });
        }
        Ok(out)
    }

    async fn wireguard_status(&self, twin: TwinId, network: &str) -> Result<WgStatus> {
        let g = self.begin("wireguard_status", None)?;
        let rec = g
            .state
            .network(twin, network)
            .ok_or_else(|| NetworkError::NoNetwork {
                twin,
                name: network.to_string(),
            })?;
        Ok(WgStatus {
            ifname: rec.wg_ifname.clone(),
            public_key: wireguard::public_key(&rec.network.wireguard_private_key)?,
            listen_port: rec.network.wireguard_listen_port,
            peers: rec
                .network
                .peers
                .iter()
                .map(|p| PeerStatus {
                    public_key: p.wireguard_public_key.clone(),
                    endpoint: (!p.endpoint.is_empty()).then(|| p.endpoint.clone()),
                    allowed_ips: p.allowed_ips.iter().map(|a| a.to_string()).collect(),
                    latest_handshake: 0,
                    rx_bytes: 0,
                    tx_bytes: 0,
                    persistent_keepalive: None,
                })
                .collect(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64::Engine;
    use zos_types::registry::{FarmIp, PublicConfig};
    use zos_types::workload::Peer;

    fn key(n: u8) -> String {
        base64::engine::general_purpose::STANDARD.encode([n; 32])
    }

    fn wl(twin: u32, contract: u64, name: &str) -> WorkloadId {
        WorkloadId {
            twin,
            contract,
            name: name.into(),
        }
    }

    fn net(port: u16, subnet: &str) -> Network {
        Network {
            ip_range: "10.20.0.0/16".parse().unwrap(),
            subnet: subnet.parse().unwrap(),
            wireguard_private_key: key(1),
            wireguard_listen_port: port,
            peers: vec![Peer {
                subnet: "10.20.9.0/24".parse().unwrap(),
                wireguard_public_key: key(2),
                allowed_ips: vec!["10.20.9.0/24".parse().unwrap()],
                endpoint: String::new(),
            }],
        }
    }

    fn public() -> PublicSetup {
        PublicSetup {
            config: PublicConfig {
                ipv4: "185.0.0.2/24".parse().unwrap(),
                gw4: "185.0.0.1".parse().unwrap(),
                ipv6: Some("2001:db8:1:2::2/64".parse().unwrap()),
                gw6: Some("2001:db8:1:2::1".parse().unwrap()),
                domain: None,
            },
            exit_iface: "eth1".into(),
        }
    }

    #[tokio::test]
    async fn networks_follow_the_rules() {
        let n = RecordingNetworker::new("t1");
        let a = wl(7, 1, "net1");
        assert!(matches!(
            n.apply_network(&a, &net(51820, "10.20.1.0/24")).await,
            Err(NetworkError::NotReady)
        ));
        n.setup_node(None).await.unwrap();
        let info = n
            .apply_network(&a, &net(51820, "10.20.1.0/24"))
            .await
            .unwrap();
        assert_eq!(info.gateway, Ipv4Addr::new(10, 20, 1, 1));
        assert!(info.namespace.starts_with("t1n-"));
        assert!(info.wg_ifname.starts_with("t1w") && info.wg_ifname.len() <= 15);
        // Same workload again: an update, fine.
        n.apply_network(&a, &net(51820, "10.20.1.0/24"))
            .await
            .unwrap();
        // Another twin's network on the same port: refused.
        let b = wl(8, 2, "net1");
        assert!(matches!(
            n.apply_network(&b, &net(51820, "10.20.1.0/24")).await,
            Err(NetworkError::PortTaken(51820))
        ));
        n.apply_network(&b, &net(51821, "10.20.1.0/24"))
            .await
            .unwrap();
        assert_eq!(n.wireguard_ports().await.unwrap(), vec![51820, 51821]);
        // The same network name from another contract of the same twin: refused.
        assert!(matches!(
            n.apply_network(&wl(7, 3, "net1"), &net(51822, "10.20.1.0/24"))
                .await,
            Err(NetworkError::Owned { contract: 1, .. })
        ));
        // Bad data: refused with the field named.
        let mut bad = net(51823, "10.20.1.0/24");
        bad.subnet = "10.21.1.0/24".parse().unwrap();
        let e = n.apply_network(&wl(9, 4, "n"), &bad).await.unwrap_err();
        assert!(e.to_string().contains("subnet"), "{e}");
        assert_eq!(n.wireguard_ports().await.unwrap(), vec![51820, 51821]);
    }

    #[tokio::test]
    async fn private_addresses_are_checked() {
        let n = RecordingNetworker::new("");
        n.setup_node(None).await.unwrap();
        n.apply_network(&wl(7, 1, "net1"), &net(51820, "10.20.1.0/24"))
            .await
            .unwrap();
        let vm1 = wl(7, 1, "vm1");
        let vm2 = wl(7, 1, "vm2");
        let at = n
            .attach_private(&vm1, "net1", "10.20.1.5".parse().unwrap(), VmLink::Tap)
            .await
            .unwrap();
        assert_eq!(at.gateway4, Some("10.20.1.1".parse().unwrap()));
        assert_eq!(at.routes, vec!["10.20.0.0/16".parse().unwrap()]);
        assert_eq!(at.mac[0] & 0x03, 0x02);
        for (ip, what) in [
            ("10.20.1.5", "taken"),
            ("10.20.1.1", "gateway"),
            ("10.20.2.5", "outside"),
            ("10.20.1.255", "broadcast"),
        ] {
            assert!(
                n.attach_private(&vm2, "net1", ip.parse().unwrap(), VmLink::Tap)
                    .await
                    .is_err(),
                "{what}"
            );
        }
        assert!(matches!(
            n.attach_private(&vm2, "other", "10.20.1.6".parse().unwrap(), VmLink::Tap)
                .await,
            Err(NetworkError::NoNetwork { .. })
        ));
        // Changing the subnet under a machine is refused.
        assert!(
            n.apply_network(&wl(7, 1, "net1"), &net(51820, "10.20.3.0/24"))
                .await
                .is_err()
        );
        assert_eq!(
            n.private_ips(7, "net1").await.unwrap(),
            vec![Ipv4Addr::new(10, 20, 1, 5)]
        );
        n.delete_network(&wl(7, 1, "net1")).await.unwrap();
        assert!(n.private_ips(7, "net1").await.unwrap().is_empty());
    }

    #[tokio::test]
    async fn public_ips_need_a_public_config() {
        let n = RecordingNetworker::new("");
        n.setup_node(None).await.unwrap();
        let ip = wl(7, 1, "ip1");
        let req = PublicIpRequest {
            v4: Some(FarmIp {
                ip: "185.0.0.10/24".parse().unwrap(),
                gateway: "185.0.0.1".parse().unwrap(),
                contract_id: Some(1),
            }),
            v6: true,
        };
        assert!(matches!(
            n.setup_public_ip(&ip, &req).await,
            Err(NetworkError::NoPublicConfig)
        ));
        n.setup_node(Some(public())).await.unwrap();
        let at = n.setup_public_ip(&ip, &req).await.unwrap();
        assert_eq!(at.ipv4.unwrap().to_string(), "185.0.0.10/24");
        let v6 = at.ipv6.unwrap();
        assert!(v6.to_string().starts_with("2001:db8:1:2:"), "{v6}");
        // Another workload asking for the same address: refused.
        assert!(matches!(
            n.setup_public_ip(&wl(7, 1, "ip2"), &req).await,
            Err(NetworkError::PublicIpTaken(_))
        ));
        assert_eq!(n.public_ips().await.unwrap().len(), 1);
        // The public config cannot go (or lose IPv6) while an ip workload uses it.
        assert!(n.setup_node(None).await.is_err());
        let mut v4_only = public();
        v4_only.config.ipv6 = None;
        v4_only.config.gw6 = None;
        assert!(n.setup_node(Some(v4_only)).await.is_err());
        n.teardown_public_ip(&ip).await.unwrap();
        assert!(n.public_ips().await.unwrap().is_empty());
        assert!(matches!(
            n.attach_public(&ip, VmLink::Tap).await,
            Err(NetworkError::NoPublicIp(_))
        ));
    }

    #[tokio::test]
    async fn calls_are_recorded_and_failures_injected() {
        let n = RecordingNetworker::new("");
        n.fail_next("setup_node");
        assert!(n.setup_node(None).await.is_err());
        n.setup_node(None).await.unwrap();
        assert_eq!(
            n.calls(),
            vec![
                Call::SetupNode { public: false },
                Call::SetupNode { public: false }
            ]
        );
    }
}
