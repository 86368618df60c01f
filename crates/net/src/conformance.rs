//! The contract of the [`Networker`] seam, as one suite that every implementation must pass.
//!
//! `tests/conformance.rs` runs [`run`] twice: against `RecordingNetworker` (feature `fake`) and
//! against `LinuxNetworker` in a namespace standing for a node's host, with a public exit, taps
//! and userspace WireGuard. It states what `zos-provision` relies on: nothing is made before
//! the node is set up; network resources are created, changed and deleted idempotently and
//! answer the same `NetworkInfo`; machines' private and public interfaces come back as the same
//! `Attachment`s; the bookkeeping (`wireguard_ports`, `private_ips`, `public_ips`, `public_ip`)
//! follows every change; every refusal (bad subnet, taken port, another contract's network,
//! taken or outside addresses, a missing network or ip workload, IPv6 without a prefix) is its
//! own error and changes nothing; `reconcile` keeps everything as it was; `teardown_node`
//! leaves nothing. The real implementation is the reference. Compiled only with the
//! `conformance` feature.

use std::net::Ipv4Addr;

use base64::Engine;
use zos_types::deployment::WorkloadId;
use zos_types::registry::FarmIp;
use zos_types::workload::{Network, Peer};

use crate::{NetworkError, NetworkInfo, Networker, PublicIpRequest, PublicSetup, VmLink};

const TWIN: u32 = 7;
const PORT: u16 = 52001;
const MOVED_PORT: u16 = 52002;

/// What the suite needs from its host: a public setup whose exit interface exists, and an
/// address of its public range that an `ip` workload may take.
#[derive(Debug, Clone)]
pub struct Fixture {
    pub public: PublicSetup,
    pub public_ip: FarmIp,
}

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

/// The suite's network: `10.20.1.0/24` of `10.20.0.0/16`, one peer.
fn network(port: u16, peer_key: u8) -> Network {
    Network {
        ip_range: "10.20.0.0/16".parse().unwrap(),
        subnet: "10.20.1.0/24".parse().unwrap(),
        wireguard_private_key: key(1),
        wireguard_listen_port: port,
        peers: vec![Peer {
            subnet: "10.20.2.0/24".parse().unwrap(),
            wireguard_public_key: crate::wireguard::public_key(&key(peer_key)).unwrap(),
            allowed_ips: vec!["10.20.2.0/24".parse().unwrap()],
            endpoint: String::new(),
        }],
    }
}

/// What the bookkeeping says, to compare before and after a refusal.
#[derive(Debug, PartialEq)]
struct Books {
    ports: Vec<u16>,
    info: Option<NetworkInfo>,
    private: Vec<Ipv4Addr>,
    public: Vec<Ipv4Addr>,
    public_setup: Option<PublicSetup>,
}

async fn books<N: Networker>(n: &N) -> Books {
    Books {
        ports: n.wireguard_ports().await.expect("wireguard ports"),
        info: n.network_info(TWIN, "net").await.expect("network info"),
        private: n.private_ips(TWIN, "net").await.expect("private ips"),
        public: n.public_ips().await.expect("public ips"),
        public_setup: n.public_setup().await.expect("public setup"),
    }
}

/// Runs every check in order on a networker whose node is not set up; it ends torn down.
pub async fn run<N: Networker>(n: &N, fx: &Fixture) {
    check_not_ready(n, fx).await;
    check_setup_node(n, fx).await;
    let info = check_network(n).await;
    check_private(n, &info).await;
    check_public(n, fx).await;
    check_reconcile(n).await;
    check_delete(n).await;
    check_teardown(n).await;
}

/// Before `setup_node` nothing can be made and nothing is there.
pub async fn check_not_ready<N: Networker>(n: &N, fx: &Fixture) {
    let r = n
        .apply_network(&wl(TWIN, 100, "net"), &network(PORT, 2))
        .await;
    assert!(matches!(r, Err(NetworkError::NotReady)), "{r:?}");
    let req = PublicIpRequest {
        v4: Some(fx.public_ip.clone()),
        v6: false,
    };
    let r = n.setup_public_ip(&wl(TWIN, 101, "ip"), &req).await;
    assert!(matches!(r, Err(NetworkError::NotReady)), "{r:?}");
    let b = books(n).await;
    assert_eq!(
        b,
        Books {
            ports: vec![],
            info: None,
            private: vec![],
            public: vec![],
            public_setup: None
        }
    );
}

/// `setup_node` with a public config, twice: the config is answered back.
pub async fn check_setup_node<N: Networker>(n: &N, fx: &Fixture) {
    for _ in 0..2 {
        n.setup_node(Some(fx.public.clone()))
            .await
            .expect("setup node");
        assert_eq!(n.public_setup().await.unwrap().as_ref(), Some(&fx.public));
    }
}

/// A network resource: created, the same again, refusals, a change in place.
pub async fn check_network<N: Networker>(n: &N) -> NetworkInfo {
    let owner = wl(TWIN, 100, "net");
    let net = network(PORT, 2);
    let info = n.apply_network(&owner, &net).await.expect("apply network");
    assert_eq!(
        (info.twin, info.name.as_str(), info.subnet, info.ip_range),
        (TWIN, "net", net.subnet, net.ip_range)
    );
    assert_eq!(
        (info.listen_port, info.gateway),
        (PORT, Ipv4Addr::new(10, 20, 1, 1))
    );
    assert_eq!(
        info.wg_public_key,
        crate::wireguard::public_key(&net.wireguard_private_key).unwrap()
    );
    assert_eq!(
        n.network_info(TWIN, "net").await.unwrap().as_ref(),
        Some(&info)
    );
    assert_eq!(
        n.apply_network(&owner, &net).await.expect("apply again"),
        info
    );
    let before = books(n).await;
    assert_eq!(before.ports, vec![PORT]);
    // Refusals, each its own error, none changing anything.
    let mut outside = net.clone();
    outside.subnet = "10.21.1.0/24".parse().unwrap();
    let r = n.apply_network(&owner, &outside).await;
    assert!(matches!(r, Err(NetworkError::Invalid(_))), "{r:?}");
    let mut other = net.clone();
    other.wireguard_private_key = key(3);
    let r = n.apply_network(&wl(TWIN + 1, 200, "net"), &other).await;
    assert!(matches!(r, Err(NetworkError::PortTaken(PORT))), "{r:?}");
    let r = n.apply_network(&wl(TWIN, 999, "net"), &net).await;
    assert!(
        matches!(r, Err(NetworkError::Owned { contract: 100, .. })),
        "{r:?}"
    );
    assert_eq!(
        books(n).await,
        before,
        "a refused network changed something"
    );
    assert_eq!(n.network_info(TWIN + 1, "net").await.unwrap(), None);
    // A change in place: another port and peer, the same resource.
    let moved = network(MOVED_PORT, 4);
    let changed = n
        .apply_network(&owner, &moved)
        .await
        .expect("change network");
    assert_eq!(
        (changed.netid.clone(), changed.listen_port),
        (info.netid.clone(), MOVED_PORT)
    );
    assert_eq!(
        (&changed.namespace, &changed.bridge, &changed.wg_ifname),
        (&info.namespace, &info.bridge, &info.wg_ifname)
    );
    assert_eq!(n.wireguard_ports().await.unwrap(), vec![MOVED_PORT]);
    let status = n
        .wireguard_status(TWIN, "net")
        .await
        .expect("wireguard status");
    let peers: Vec<&str> = status.peers.iter().map(|p| p.public_key.as_str()).collect();
    assert_eq!(peers, vec![moved.peers[0].wireguard_public_key.as_str()]);
    assert_eq!(status.listen_port, MOVED_PORT);
    let r = n.wireguard_status(TWIN, "nothing").await;
    assert!(matches!(r, Err(NetworkError::NoNetwork { .. })), "{r:?}");
    changed
}

/// Private interfaces: attach answers the same `Attachment` every time, refusals change
/// nothing, detach is idempotent and a new attach gives the same interface back.
pub async fn check_private<N: Networker>(n: &N, info: &NetworkInfo) {
    let vm = wl(TWIN, 100, "vm1");
    let ip = Ipv4Addr::new(10, 20, 1, 5);
    let at = n
        .attach_private(&vm, "net", ip, VmLink::Tap)
        .await
        .expect("attach private");
    assert_eq!(
        (at.bridge.as_str(), at.ipv4, at.gateway4),
        (
            info.bridge.as_str(),
            Some(format!("{ip}/24").parse().unwrap()),
            Some(info.gateway)
        )
    );
    assert!(at.routes.contains(&info.ip_range), "{:?}", at.routes);
    assert_eq!(
        n.attach_private(&vm, "net", ip, VmLink::Tap)
            .await
            .expect("attach again"),
        at
    );
    let before = books(n).await;
    assert_eq!(before.private, vec![ip]);
    let other = wl(TWIN, 100, "vm2");
    let r = n.attach_private(&other, "net", ip, VmLink::Tap).await;
    assert!(matches!(r, Err(NetworkError::AddressTaken { .. })), "{r:?}");
    for bad in [
        Ipv4Addr::new(10, 20, 2, 5),
        Ipv4Addr::new(10, 20, 1, 1),
        Ipv4Addr::new(10, 20, 1, 255),
    ] {
        let r = n.attach_private(&other, "net", bad, VmLink::Tap).await;
        assert!(matches!(r, Err(NetworkError::Invalid(_))), "{bad}: {r:?}");
    }
    let r = n.attach_private(&other, "nothing", ip, VmLink::Tap).await;
    assert!(matches!(r, Err(NetworkError::NoNetwork { .. })), "{r:?}");
    let veth = VmLink::Veth {
        netns: "relative".into(),
        ifname: "eth0".into(),
        default_route: false,
    };
    let r = n
        .attach_private(&other, "net", Ipv4Addr::new(10, 20, 1, 6), veth)
        .await;
    assert!(matches!(r, Err(NetworkError::Invalid(_))), "{r:?}");
    let gone = VmLink::Veth {
        netns: "/run/netns/zos-conformance-no-such-namespace".into(),
        ifname: "eth0".into(),
        default_route: false,
    };
    let r = n
        .attach_private(&other, "net", Ipv4Addr::new(10, 20, 1, 6), gone)
        .await;
    assert!(matches!(r, Err(NetworkError::NoNamespace(_))), "{r:?}");
    assert_eq!(books(n).await, before, "a refused attach changed something");
    for _ in 0..2 {
        n.detach_private(&vm, "net").await.expect("detach private");
        assert!(n.private_ips(TWIN, "net").await.unwrap().is_empty());
    }
    assert_eq!(
        n.attach_private(&vm, "net", ip, VmLink::Tap)
            .await
            .expect("attach after detach"),
        at
    );
}

/// Public IPs: set up, attached and detached with the same `Attachment`, bookkept, torn down.
pub async fn check_public<N: Networker>(n: &N, fx: &Fixture) {
    let ip_wl = wl(TWIN, 101, "ip");
    let req = PublicIpRequest {
        v4: Some(fx.public_ip.clone()),
        v6: false,
    };
    let r = n.attach_public(&ip_wl, VmLink::Tap).await;
    assert!(matches!(r, Err(NetworkError::NoPublicIp(_))), "{r:?}");
    let at = n
        .setup_public_ip(&ip_wl, &req)
        .await
        .expect("setup public ip");
    assert_eq!(
        (at.ipv4, at.gateway4),
        (Some(fx.public_ip.ip), Some(fx.public_ip.gateway))
    );
    assert_eq!(
        n.setup_public_ip(&ip_wl, &req).await.expect("setup again"),
        at
    );
    assert_eq!(n.public_ip(&ip_wl).await.unwrap().as_ref(), Some(&at));
    let before = books(n).await;
    assert_eq!(before.public, vec![fx.public_ip.ip.addr()]);
    let r = n.setup_public_ip(&wl(TWIN + 2, 300, "ip"), &req).await;
    assert!(matches!(r, Err(NetworkError::PublicIpTaken(_))), "{r:?}");
    let r = n
        .setup_public_ip(
            &wl(TWIN, 101, "ip6"),
            &PublicIpRequest { v4: None, v6: true },
        )
        .await;
    assert!(matches!(r, Err(NetworkError::NoPublicIpv6)), "{r:?}");
    let r = n
        .setup_public_ip(
            &wl(TWIN, 101, "none"),
            &PublicIpRequest {
                v4: None,
                v6: false,
            },
        )
        .await;
    assert!(matches!(r, Err(NetworkError::Invalid(_))), "{r:?}");
    // The public config cannot go while an ip workload uses it.
    let r = n.setup_node(None).await;
    assert!(matches!(r, Err(NetworkError::Invalid(_))), "{r:?}");
    assert_eq!(
        books(n).await,
        before,
        "a refused public request changed something"
    );
    check_public_attach(n, fx, &at).await;
}

/// The `ip` workload's interface: attach answers its `Attachment`, detach keeps the addresses,
/// teardown removes them; each twice.
async fn check_public_attach<N: Networker>(n: &N, fx: &Fixture, at: &crate::Attachment) {
    let ip_wl = wl(TWIN, 101, "ip");
    let at = at.clone();
    let attached = n
        .attach_public(&ip_wl, VmLink::Tap)
        .await
        .expect("attach public");
    assert_eq!(attached, at);
    assert_eq!(
        n.attach_public(&ip_wl, VmLink::Tap)
            .await
            .expect("attach public again"),
        at
    );
    // Detach keeps the addresses; teardown removes them.
    for _ in 0..2 {
        n.detach_public(&ip_wl).await.expect("detach public");
        assert_eq!(n.public_ip(&ip_wl).await.unwrap().as_ref(), Some(&at));
        assert_eq!(n.public_ips().await.unwrap(), vec![fx.public_ip.ip.addr()]);
    }
    assert_eq!(
        n.attach_public(&ip_wl, VmLink::Tap)
            .await
            .expect("attach public after detach"),
        at
    );
    for _ in 0..2 {
        n.teardown_public_ip(&ip_wl)
            .await
            .expect("teardown public ip");
        assert_eq!(n.public_ip(&ip_wl).await.unwrap(), None);
        assert!(n.public_ips().await.unwrap().is_empty());
    }
    n.detach_public(&ip_wl)
        .await
        .expect("detach of a missing ip workload");
}

/// `reconcile` brings back what it records and changes none of it.
pub async fn check_reconcile<N: Networker>(n: &N) {
    let before = books(n).await;
    let info = before.info.clone().expect("the network");
    let r = n.reconcile().await.expect("reconcile");
    assert!(r.failed.is_empty(), "{r:?}");
    let userspace = usize::from(info.backend == crate::WgBackend::Userspace);
    assert_eq!(
        (r.networks, r.ports, r.adopted, r.restarted),
        (1, 1, userspace, 0),
        "{r:?}"
    );
    assert_eq!(books(n).await, before, "reconcile changed something");
}

/// Deleting a network: another contract's delete is a no-op; the owner's removes it and the
/// interfaces on it; a second delete succeeds.
pub async fn check_delete<N: Networker>(n: &N) {
    n.delete_network(&wl(TWIN, 999, "net"))
        .await
        .expect("delete by another contract");
    assert!(
        n.network_info(TWIN, "net").await.unwrap().is_some(),
        "another contract deleted it"
    );
    for _ in 0..2 {
        n.delete_network(&wl(TWIN, 100, "net"))
            .await
            .expect("delete network");
        let b = books(n).await;
        assert_eq!((b.info, b.ports, b.private), (None, vec![], vec![]));
    }
    n.detach_private(&wl(TWIN, 100, "vm1"), "net")
        .await
        .expect("detach from a deleted network");
}

/// `teardown_node` leaves nothing, and the node is not ready again.
pub async fn check_teardown<N: Networker>(n: &N) {
    n.teardown_node().await.expect("teardown node");
    let b = books(n).await;
    assert_eq!(
        b,
        Books {
            ports: vec![],
            info: None,
            private: vec![],
            public: vec![],
            public_setup: None
        }
    );
    let r = n
        .apply_network(&wl(TWIN, 100, "net"), &network(PORT, 2))
        .await;
    assert!(matches!(r, Err(NetworkError::NotReady)), "{r:?}");
}
