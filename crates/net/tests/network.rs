//! The network module on real namespaces: two "nodes" (each a namespace standing for a node's
//! host, with its own prefix) on a test internet, networks across them through userspace
//! WireGuard, isolation, NAT, public IPs with anti-spoofing, restarts and full cleanup.
//!
//! All traffic stays inside namespaces these tests make.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use base64::Engine;
use sha2::{Digest, Sha256};
use zos_net::{
    LinuxNetworker, NetworkConfig, NetworkError, NetworkInfo, Networker, PublicIpRequest,
    PublicSetup, VmLink, WireguardMode, wireguard,
};
use zos_testkit::net::{Internet, TcpServer, in_netns, ping, tcp_banner};
use zos_testkit::netns::Netns;
use zos_types::deployment::WorkloadId;
use zos_types::registry::{FarmIp, PublicConfig};
use zos_types::workload::{Network, Peer};

const SHORT: Duration = Duration::from_millis(1500);
const LONG: Duration = Duration::from_secs(5);

fn key(label: &str) -> String {
    base64::engine::general_purpose::STANDARD.encode(Sha256::digest(label.as_bytes()))
}

fn public_key(label: &str) -> String {
    wireguard::public_key(&key(label)).unwrap()
}

fn wl(twin: u32, contract: u64, name: &str) -> WorkloadId {
    WorkloadId {
        twin,
        contract,
        name: name.into(),
    }
}

/// One test node: a host namespace on the internet and its network module.
struct Node {
    host: Netns,
    address: String,
    cfg: NetworkConfig,
    net: Option<LinuxNetworker>,
}

impl Node {
    fn net(&self) -> &LinuxNetworker {
        self.net.as_ref().expect("networker")
    }
    fn prefix(&self) -> &str {
        &self.cfg.prefix
    }
}

/// A test internet with nodes; tears everything down when dropped.
struct World {
    nodes: Vec<Node>,
    extra: Vec<Netns>,
    inet: Internet,
    _dir: tempfile::TempDir,
}

fn block_on<T>(f: impl std::future::Future<Output = T>) -> T {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(f)
}

impl World {
    /// `tag` (2 to 4 characters) makes every name of this test unique.
    fn new(tag: &str, nodes: usize, mode: WireguardMode) -> World {
        let dir = tempfile::tempdir().unwrap();
        let inet = Internet::create(&format!("{tag}-inet"), "10.99.0.1/24").unwrap();
        let mut out = Vec::new();
        for i in 1..=nodes {
            let host = Netns::create(&format!("{tag}-h{i}")).unwrap();
            let address = format!("10.99.0.{}", 10 + i);
            inet.join(&host, &format!("{tag}u{i}"), "eth0", Some(&address), true)
                .unwrap();
            let prefix = format!("{tag}{i}");
            let mut cfg = NetworkConfig::new(
                &prefix,
                dir.path().join(&prefix).join("state"),
                dir.path().join(&prefix).join("run"),
                &prefix,
            );
            cfg.host_netns = Some(PathBuf::from(format!("/run/netns/{}", host.name())));
            cfg.wireguard = mode;
            let net = LinuxNetworker::open(cfg.clone()).unwrap();
            out.push(Node {
                host,
                address,
                cfg,
                net: Some(net),
            });
        }
        World {
            nodes: out,
            extra: Vec::new(),
            inet,
            _dir: dir,
        }
    }

    fn node(&self, i: usize) -> &Node {
        &self.nodes[i]
    }

    /// A namespace standing in for a VM.
    fn vm(&mut self, name: &str) -> String {
        let ns = Netns::create(name).unwrap();
        let n = ns.name().to_string();
        self.extra.push(ns);
        n
    }
}

impl Drop for World {
    fn drop(&mut self) {
        for n in &self.nodes {
            if let Some(net) = &n.net {
                std::thread::scope(|s| {
                    s.spawn(|| {
                        if let Err(e) = block_on(net.teardown_node()) {
                            eprintln!("teardown of {}: {e}", n.cfg.prefix);
                        }
                    });
                });
            }
            for (pid, _) in wireguard::processes_with_prefix(&n.cfg.prefix) {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid),
                    nix::sys::signal::Signal::SIGKILL,
                );
            }
            if let Ok(rd) = std::fs::read_dir(wireguard::UAPI_DIR) {
                for e in rd.flatten() {
                    if e.file_name().to_string_lossy().starts_with(&n.cfg.prefix) {
                        let _ = std::fs::remove_file(e.path());
                    }
                }
            }
            for ns in zos_net::netns::list(&n.cfg.prefix) {
                let _ = zos_testkit::netns::delete_netns(&ns);
            }
        }
    }
}

/// The network of `twin` spanning nodes `a` and `b` of `w`: subnets `10.20.1.0/24` on a and
/// `10.20.2.0/24` on b, listen ports `ports`. Answers the data for each node.
fn mesh(_w: &World, twin: u32, ports: [u16; 2]) -> [Network; 2] {
    let subnets = ["10.20.1.0/24", "10.20.2.0/24"];
    let labels = [format!("t{twin}-a"), format!("t{twin}-b")];
    let mut out = Vec::new();
    for me in 0..2 {
        let other = 1 - me;
        let o = subnets[other].parse::<ipnet::Ipv4Net>().unwrap();
        let wg = zos_net::names::wg_address(o).addr();
        out.push(Network {
            ip_range: "10.20.0.0/16".parse().unwrap(),
            subnet: subnets[me].parse().unwrap(),
            wireguard_private_key: key(&labels[me]),
            wireguard_listen_port: ports[me],
            peers: vec![Peer {
                subnet: o,
                wireguard_public_key: public_key(&labels[other]),
                allowed_ips: vec![
                    subnets[other].parse().unwrap(),
                    format!("{wg}/32").parse().unwrap(),
                ],
                endpoint: format!("10.99.0.{}:{}", 11 + other, ports[other]),
            }],
        });
    }
    out.try_into().unwrap()
}

async fn setup_two(w: &World, twin: u32, ports: [u16; 2]) -> [NetworkInfo; 2] {
    let nets = mesh(w, twin, ports);
    let mut infos = Vec::new();
    for (i, n) in nets.iter().enumerate() {
        infos.push(
            w.node(i)
                .net()
                .apply_network(&wl(twin, 100 + twin as u64, "net"), n)
                .await
                .unwrap(),
        );
    }
    infos.try_into().unwrap()
}

fn addr(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

/// Nothing of node `n` is left: namespaces, links, tables, processes, sockets, state.
fn assert_clean(n: &Node) {
    let prefix = n.prefix();
    let ns = zos_net::netns::list(prefix);
    assert!(ns.is_empty(), "namespaces left: {ns:?}");
    let links = n.host.ip(&["-o", "link", "show"]).unwrap();
    for l in links.lines() {
        let name = l.split(':').nth(1).unwrap_or("").trim();
        assert!(!name.starts_with(prefix), "link left: {name}");
    }
    let tables = n
        .host
        .command("nft")
        .args(["list", "tables"])
        .output()
        .unwrap();
    let tables = String::from_utf8_lossy(&tables.stdout).to_string();
    assert!(tables.trim().is_empty(), "tables left: {tables}");
    let procs = wireguard::processes_with_prefix(prefix);
    assert!(procs.is_empty(), "processes left: {procs:?}");
    let socks: Vec<String> = std::fs::read_dir(wireguard::UAPI_DIR)
        .map(|rd| {
            rd.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|f| f.starts_with(prefix))
                .collect()
        })
        .unwrap_or_default();
    assert!(socks.is_empty(), "sockets left: {socks:?}");
    assert!(
        !n.cfg.state_dir.join(zos_net::STATE_FILE).exists(),
        "state file left"
    );
}

fn root(test: &str) -> bool {
    zos_testkit::require_root(test)
}

fn tools(test: &str) -> bool {
    for t in ["nft", "wg", "ping"] {
        if !zos_runtime::find_program(t).is_file() {
            eprintln!("SKIPPED {test}: {t} is not installed (scripts/install-deps.sh)");
            return false;
        }
    }
    true
}

fn userspace(test: &str) -> bool {
    if !zos_runtime::find_program("boringtun-cli").is_file() {
        eprintln!("SKIPPED {test}: boringtun-cli is not installed (scripts/install-deps.sh)");
        return false;
    }
    true
}

// ---------------------------------------------------------------------------------------------

async fn tunnel_between_two_nodes(tag: &str, mode: WireguardMode) {
    let mut w = World::new(tag, 2, mode);
    for n in &w.nodes {
        n.net().setup_node(None).await.unwrap();
    }
    let [a, b] = setup_two(&w, 7, [51820, 51821]).await;
    assert_eq!(
        w.node(0).net().wireguard_ports().await.unwrap(),
        vec![51820]
    );

    // Ping and TCP from inside the network resource of A reach B through WireGuard.
    let before = w.node(0).net().wireguard_status(7, "net").await.unwrap();
    assert!(
        ping(&a.namespace, "10.20.2.1", 3),
        "ping through the tunnel"
    );
    let server_b = TcpServer::start(&b.namespace, "10.20.2.1:8000", "node-b").unwrap();
    assert_eq!(
        tcp_banner(&a.namespace, None, server_b.addr(), LONG).unwrap(),
        "node-b"
    );
    // The peer saw A's gateway address: no NAT inside the network.
    assert_eq!(server_b.peers()[0].ip().to_string(), "10.20.1.1");
    let after = w.node(0).net().wireguard_status(7, "net").await.unwrap();
    let (rx0, tx0) = before.totals();
    let (rx1, tx1) = after.totals();
    assert!(
        rx1 > rx0 && tx1 > tx0,
        "counters grow: {before:?} -> {after:?}"
    );
    assert_eq!(after.public_key, public_key("t7-a"));
    assert_eq!(after.listen_port, 51820);

    // A machine on A's network reaches B's gateway and, through NAT, the internet, where it
    // arrives from the node's own address.
    let vm = w.vm(&format!("{tag}-vm1"));
    let at = w
        .node(0)
        .net()
        .attach_private(
            &wl(7, 107, "vm1"),
            "net",
            "10.20.1.5".parse().unwrap(),
            VmLink::Veth {
                netns: PathBuf::from(format!("/run/netns/{vm}")),
                ifname: "eth0".into(),
                default_route: true,
            },
        )
        .await
        .unwrap();
    assert_eq!(at.gateway4.unwrap().to_string(), "10.20.1.1");
    assert!(ping(&vm, "10.20.1.1", 2), "vm reaches its gateway");
    assert!(
        ping(&vm, "10.20.2.1", 2),
        "vm reaches the other node's gateway"
    );
    let web = TcpServer::start(w.inet.name(), "10.99.0.1:7001", "internet").unwrap();
    assert_eq!(tcp_banner(&vm, None, web.addr(), LONG).unwrap(), "internet");
    assert_eq!(
        tcp_banner(&a.namespace, None, web.addr(), LONG).unwrap(),
        "internet"
    );
    for p in web.peers() {
        assert_eq!(
            p.ip().to_string(),
            w.node(0).address,
            "NAT to the node's address"
        );
    }
    assert_eq!(
        w.node(0).net().private_ips(7, "net").await.unwrap(),
        vec!["10.20.1.5".parse::<std::net::Ipv4Addr>().unwrap()]
    );

    // SMTP is refused; other ports are not.
    let smtp = TcpServer::start(w.inet.name(), "10.99.0.1:25", "smtp").unwrap();
    assert!(
        tcp_banner(&vm, None, smtp.addr(), SHORT).is_err(),
        "smtp blocked"
    );
    assert!(smtp.peers().is_empty());

    // The node itself takes no new connections, from workloads or from the internet; it
    // answers pings from the internet.
    let own = TcpServer::start(w.node(0).host.name(), "0.0.0.0:7002", "node").unwrap();
    let own_addr = addr(&format!("{}:7002", w.node(0).address));
    assert!(tcp_banner(w.inet.name(), None, own_addr, SHORT).is_err());
    assert!(tcp_banner(&vm, None, own_addr, SHORT).is_err());
    assert!(tcp_banner(&a.namespace, None, addr("100.127.255.1:7002"), SHORT).is_err());
    assert!(own.peers().is_empty(), "nothing reached the node");
    assert!(ping(w.inet.name(), &w.node(0).address, 1));
    assert!(
        !ping(&a.namespace, &w.node(0).address, 1),
        "workloads cannot ping the node"
    );

    // A machine cannot use another address than its own.
    in_netns(&vm, || {
        std::process::Command::new("ip")
            .args(["addr", "add", "10.20.1.6/24", "dev", "eth0"])
            .status()
            .unwrap()
    });
    let gw = TcpServer::start(&a.namespace, "10.20.1.1:8002", "gw").unwrap();
    assert!(tcp_banner(&vm, Some("10.20.1.5"), gw.addr(), LONG).is_ok());
    assert!(
        tcp_banner(&vm, Some("10.20.1.6"), gw.addr(), SHORT).is_err(),
        "spoofed source dropped"
    );

    // Updates: an access peer (a laptop) joins; the node peer's session and counters go on.
    let mut conn = zos_testkit::net::connect(&a.namespace, None, server_b.addr(), LONG).unwrap();
    let counters = |st: &zos_net::WgStatus| {
        let p = st
            .peers
            .iter()
            .find(|p| p.public_key == public_key("t7-b"))
            .unwrap();
        (p.rx_bytes, p.tx_bytes)
    };
    let pid = w
        .node(0)
        .net()
        .network_info(7, "net")
        .await
        .unwrap()
        .unwrap()
        .pid;
    let c0 = counters(&w.node(0).net().wireguard_status(7, "net").await.unwrap());
    let mut updated = mesh(&w, 7, [51820, 51821])[0].clone();
    updated.peers.push(Peer {
        subnet: "10.20.9.0/24".parse().unwrap(),
        wireguard_public_key: public_key("laptop"),
        allowed_ips: vec![
            "10.20.9.0/24".parse().unwrap(),
            "100.64.20.9/32".parse().unwrap(),
            "192.168.77.0/24".parse().unwrap(),
        ],
        endpoint: String::new(),
    });
    w.node(0)
        .net()
        .apply_network(&wl(7, 107, "net"), &updated)
        .await
        .unwrap();
    let st = w.node(0).net().wireguard_status(7, "net").await.unwrap();
    assert_eq!(st.peers.len(), 2);
    let c1 = counters(&st);
    assert!(
        c1.0 >= c0.0 && c1.1 >= c0.1,
        "node peer kept: {c0:?} -> {c1:?}"
    );
    assert_eq!(
        w.node(0)
            .net()
            .network_info(7, "net")
            .await
            .unwrap()
            .unwrap()
            .pid,
        pid,
        "same process"
    );
    {
        use std::io::{Read, Write};
        let mut banner = [0u8; 7];
        conn.set_read_timeout(Some(LONG)).unwrap();
        conn.read_exact(&mut banner).unwrap();
        conn.write_all(b"again\n").unwrap();
        let mut echo = [0u8; 6];
        conn.read_exact(&mut echo).unwrap();
        assert_eq!(
            &echo, b"again\n",
            "a connection made before the update still works"
        );
    }
    // The access peer's extra space is routed into the tunnel.
    let routes = in_netns(&a.namespace, || {
        std::process::Command::new("ip")
            .args(["route", "show", "192.168.77.0/24"])
            .output()
            .unwrap()
    });
    assert!(String::from_utf8_lossy(&routes.stdout).contains(&a.wg_ifname));
    // The laptop leaves again.
    w.node(0)
        .net()
        .apply_network(&wl(7, 107, "net"), &mesh(&w, 7, [51820, 51821])[0])
        .await
        .unwrap();
    let st = w.node(0).net().wireguard_status(7, "net").await.unwrap();
    assert_eq!(st.peers.len(), 1);
    assert!(counters(&st).0 >= c1.0);
    assert!(ping(&a.namespace, "10.20.2.1", 1));

    // Deleting the network leaves nothing of it.
    drop((server_b, web, smtp, own, gw, conn));
    w.node(0)
        .net()
        .delete_network(&wl(7, 107, "net"))
        .await
        .unwrap();
    assert!(!zos_net::netns::exists(&a.namespace));
    assert!(wireguard::processes_with_prefix(&a.wg_ifname).is_empty());
    assert!(!wireguard::uapi_socket(&a.wg_ifname).exists());
    assert!(w.node(0).net().wireguard_ports().await.unwrap().is_empty());
    assert!(
        w.node(0).host.ip(&["link", "show", &at.ifname]).is_err(),
        "the machine's port went with the network"
    );

    // Tear both nodes down: nothing at all is left.
    for n in &w.nodes {
        n.net().teardown_node().await.unwrap();
        assert_clean(n);
    }
    for n in &mut w.nodes {
        n.net = None;
    }
}

#[tokio::test]
async fn userspace_tunnel_between_two_nodes() {
    let test = "userspace_tunnel_between_two_nodes";
    if !root(test) || !tools(test) || !userspace(test) {
        return;
    }
    tunnel_between_two_nodes("zna", WireguardMode::Userspace).await;
}

#[tokio::test]
async fn kernel_tunnel_between_two_nodes() {
    let test = "kernel_tunnel_between_two_nodes";
    if !root(test) || !tools(test) {
        return;
    }
    if wireguard::kernel_available() {
        tunnel_between_two_nodes("znk", WireguardMode::Kernel).await;
    } else {
        kernel_backend_without_the_module_is_refused_and_auto_picks_userspace().await;
    }
}

/// On a kernel without WireGuard, zosd's default (`Auto`) picks the userspace tunnel, and a
/// network forced onto the kernel backend fails with an error; deleting it and tearing the node
/// down leave nothing.
async fn kernel_backend_without_the_module_is_refused_and_auto_picks_userspace() {
    assert_eq!(
        WireguardMode::Auto.resolve(),
        wireguard::WgBackend::Userspace
    );
    let mut w = World::new("znk", 2, WireguardMode::Kernel);
    for n in &w.nodes {
        n.net().setup_node(None).await.unwrap();
    }
    let node = w.node(0);
    let id = wl(7, 107, "net");
    let err = node
        .net()
        .apply_network(&id, &mesh(&w, 7, [51820, 51821])[0])
        .await
        .expect_err("a kernel WireGuard link on a kernel without the module");
    eprintln!("kernel backend refused: {err}");
    let _ = node.net().delete_network(&id).await;
    for n in &w.nodes {
        n.net().teardown_node().await.unwrap();
        assert_clean(n);
    }
    for n in &mut w.nodes {
        n.net = None;
    }
}

#[tokio::test]
async fn equal_subnets_of_two_twins_are_isolated() {
    let test = "equal_subnets_of_two_twins_are_isolated";
    if !root(test) || !tools(test) || !userspace(test) {
        return;
    }
    let mut w = World::new("znb", 2, WireguardMode::Userspace);
    for n in &w.nodes {
        n.net().setup_node(None).await.unwrap();
    }
    let [a7, b7] = setup_two(&w, 7, [51820, 51821]).await;
    let [a8, b8] = setup_two(&w, 8, [51830, 51831]).await;
    assert_eq!(a7.subnet, a8.subnet);
    let s7 = TcpServer::start(&b7.namespace, "10.20.2.1:8000", "seven").unwrap();
    let s8 = TcpServer::start(&b8.namespace, "10.20.2.1:8000", "eight").unwrap();
    assert_eq!(
        tcp_banner(&a7.namespace, None, s7.addr(), LONG).unwrap(),
        "seven"
    );
    assert_eq!(
        tcp_banner(&a8.namespace, None, s8.addr(), LONG).unwrap(),
        "eight"
    );

    // Twin 7 cannot reach twin 8's resource on the same node through ndmz.
    let dmz8 = in_netns(&a8.namespace, || {
        std::process::Command::new("ip")
            .args(["-4", "-o", "addr", "show", "dev", "dmz"])
            .output()
            .unwrap()
    });
    let dmz8 = String::from_utf8_lossy(&dmz8.stdout).to_string();
    let transit8 = dmz8
        .split_whitespace()
        .skip_while(|t| *t != "inet")
        .nth(1)
        .unwrap()
        .split('/')
        .next()
        .unwrap()
        .to_string();
    let t8 = TcpServer::start(&a8.namespace, "0.0.0.0:8001", "eight-a").unwrap();
    assert!(tcp_banner(&a8.namespace, None, t8.addr(), LONG).is_ok());
    assert!(!ping(&a7.namespace, &transit8, 1), "no ping across twins");
    assert!(
        tcp_banner(
            &a7.namespace,
            None,
            addr(&format!("{transit8}:8001")),
            SHORT
        )
        .is_err(),
        "no tcp across twins"
    );
    // And a machine of twin 8 is invisible to twin 7, which has the same subnet.
    let vm8 = w.vm("znb-vm8");
    w.node(0)
        .net()
        .attach_private(
            &wl(8, 108, "vm"),
            "net",
            "10.20.1.9".parse().unwrap(),
            VmLink::Veth {
                netns: PathBuf::from(format!("/run/netns/{vm8}")),
                ifname: "eth0".into(),
                default_route: true,
            },
        )
        .await
        .unwrap();
    assert!(ping(&a8.namespace, "10.20.1.9", 1));
    assert!(!ping(&a7.namespace, "10.20.1.9", 1));
    assert!(!ping(&b7.namespace, "10.20.1.9", 1));
    assert!(
        ping(&b8.namespace, "10.20.1.9", 1),
        "twin 8's own tunnel reaches it"
    );

    // The node's zdb servers listen in ndmz on 100.127.0.1: machines and resources of every
    // twin reach their ports there, and no other port of ndmz.
    let ndmz = zos_net::names::Names::new(&w.node(0).cfg.prefix).ndmz_ns();
    let zdb = TcpServer::start(&ndmz, "100.127.0.1:9900", "zdb").unwrap();
    let other = TcpServer::start(&ndmz, "100.127.0.1:9800", "other").unwrap();
    assert_eq!(tcp_banner(&vm8, None, zdb.addr(), LONG).unwrap(), "zdb");
    assert_eq!(
        tcp_banner(&a7.namespace, None, zdb.addr(), LONG).unwrap(),
        "zdb"
    );
    assert!(
        tcp_banner(&vm8, None, other.addr(), SHORT).is_err(),
        "ndmz takes only the zdb ports"
    );
    drop((s7, s8, t8, zdb, other));
}

/// Gives node `i` a second NIC `pub0` on the internet (`link` on the internet's side) as its
/// public exit, and sets it up with the public address 10.99.0.21/24.
async fn public_exit(w: &World, i: usize, link: &str) {
    let node = w.node(i);
    w.inet.join(&node.host, link, "pub0", None, false).unwrap();
    let public = PublicSetup {
        config: PublicConfig {
            ipv4: "10.99.0.21/24".parse().unwrap(),
            gw4: "10.99.0.1".parse().unwrap(),
            ipv6: None,
            gw6: None,
            domain: None,
        },
        exit_iface: "pub0".into(),
    };
    node.net().setup_node(Some(public)).await.unwrap();
}

#[tokio::test]
async fn public_ip_with_anti_spoofing() {
    let test = "public_ip_with_anti_spoofing";
    if !root(test) || !tools(test) {
        return;
    }
    let mut w = World::new("znc", 1, WireguardMode::Userspace);
    let node = w.node(0);
    public_exit(&w, 0, "zncp1").await;
    assert!(
        ping(w.inet.name(), "10.99.0.21", 2),
        "the node's public address answers"
    );
    let ifs = node.net().interfaces().await.unwrap();
    assert!(
        ifs.iter()
            .any(|i| i.name == "public" && i.addrs.iter().any(|a| a.to_string() == "10.99.0.21/24")),
        "{ifs:?}"
    );

    let ip_wl = wl(7, 107, "ip");
    let req = PublicIpRequest {
        v4: Some(FarmIp {
            ip: "10.99.0.50/24".parse().unwrap(),
            gateway: "10.99.0.1".parse().unwrap(),
            contract_id: Some(107),
        }),
        v6: false,
    };
    let setup = node.net().setup_public_ip(&ip_wl, &req).await.unwrap();
    // IPv6 without a public prefix is refused; another workload cannot take the address.
    assert!(matches!(
        node.net()
            .setup_public_ip(&wl(7, 107, "ip6"), &PublicIpRequest { v4: None, v6: true })
            .await,
        Err(NetworkError::NoPublicIpv6)
    ));
    assert!(matches!(
        node.net().setup_public_ip(&wl(9, 109, "ip"), &req).await,
        Err(NetworkError::PublicIpTaken(_))
    ));
    let vm = w.vm("znc-vm1");
    let node = w.node(0);
    let at = node
        .net()
        .attach_public(
            &ip_wl,
            VmLink::Veth {
                netns: PathBuf::from(format!("/run/netns/{vm}")),
                ifname: "eth0".into(),
                default_route: true,
            },
        )
        .await
        .unwrap();
    assert_eq!(at.ifname, setup.ifname);
    assert_eq!(at.ipv4.unwrap().to_string(), "10.99.0.50/24");
    assert_eq!(node.net().public_ips().await.unwrap().len(), 1);

    let web = TcpServer::start(w.inet.name(), "10.99.0.1:7003", "internet").unwrap();
    assert_eq!(tcp_banner(&vm, None, web.addr(), LONG).unwrap(), "internet");
    assert_eq!(
        web.peers()[0].ip().to_string(),
        "10.99.0.50",
        "no NAT for public IPs"
    );
    assert!(
        ping(w.inet.name(), "10.99.0.50", 2),
        "reachable from the internet"
    );

    // Another source address is dropped.
    let sh = |args: &[&str]| {
        in_netns(&vm, || {
            let ok = std::process::Command::new("ip")
                .args(args)
                .status()
                .unwrap()
                .success();
            assert!(ok, "ip {args:?}");
        })
    };
    sh(&["addr", "add", "10.99.0.51/24", "dev", "eth0"]);
    assert!(
        tcp_banner(&vm, Some("10.99.0.51"), web.addr(), SHORT).is_err(),
        "spoofed ip dropped"
    );
    assert!(tcp_banner(&vm, Some("10.99.0.50"), web.addr(), LONG).is_ok());
    // Another MAC is dropped.
    sh(&["link", "set", "eth0", "address", "02:00:00:00:00:99"]);
    assert!(
        tcp_banner(&vm, Some("10.99.0.50"), web.addr(), SHORT).is_err(),
        "spoofed mac dropped"
    );
    sh(&["link", "set", "eth0", "address", &at.mac_string()]);
    assert!(
        tcp_banner(&vm, Some("10.99.0.50"), web.addr(), LONG).is_ok(),
        "own mac works again"
    );
    let seen: Vec<String> = web.peers().iter().map(|p| p.ip().to_string()).collect();
    assert!(seen.iter().all(|s| s == "10.99.0.50"), "{seen:?}");

    // The public config cannot be taken away while an ip workload uses it.
    assert!(node.net().setup_node(None).await.is_err());
    assert!(zos_net::netns::exists(&format!("{}public", node.prefix())));

    // Tearing the ip workload down removes its interface and filter.
    node.net().teardown_public_ip(&ip_wl).await.unwrap();
    assert!(node.host.ip(&["link", "show", &at.ifname]).is_err());
    let rules = node
        .host
        .command("nft")
        .args(["list", "ruleset"])
        .output()
        .unwrap();
    assert!(!String::from_utf8_lossy(&rules.stdout).contains(&at.ifname));
    assert!(node.net().public_ips().await.unwrap().is_empty());

    // Without a public config the public namespace goes.
    node.net().setup_node(None).await.unwrap();
    assert!(!zos_net::netns::exists(&format!("{}public", node.prefix())));
    drop(web);
    node.net().teardown_node().await.unwrap();
    assert_clean(w.node(0));
    w.nodes[0].net = None;
}

#[tokio::test]
async fn a_killed_zosd_leaves_tunnels_running() {
    let test = "a_killed_zosd_leaves_tunnels_running";
    if !root(test) || !tools(test) || !userspace(test) {
        return;
    }
    let mut w = World::new("znd", 2, WireguardMode::Userspace);
    let nets = mesh(&w, 7, [51820, 51821]);
    w.node(1).net().setup_node(None).await.unwrap();
    w.node(1)
        .net()
        .apply_network(&wl(7, 107, "net"), &nets[1])
        .await
        .unwrap();

    // Node A's module runs in a process of its own, as zosd would.
    let cfg = w.node(0).cfg.clone();
    w.nodes[0].net = None;
    let ready = w._dir.path().join("helper.ready");
    // `zos-net-test-node` makes node A's setup and network, then waits to be killed.
    let mut helper = std::process::Command::new(env!("CARGO_BIN_EXE_zos-net-test-node"))
        .env("ZOS_NET_HELPER_READY", &ready)
        .env("ZOS_NET_HELPER_PREFIX", &cfg.prefix)
        .env("ZOS_NET_HELPER_STATE", &cfg.state_dir)
        .env("ZOS_NET_HELPER_RUN", &cfg.run_dir)
        .env("ZOS_NET_HELPER_HOST", cfg.host_netns.as_ref().unwrap())
        .env(
            "ZOS_NET_HELPER_NETWORK",
            serde_json::to_string(&nets[0]).unwrap(),
        )
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let mut waited = 0;
    while !ready.exists() && waited < 300 {
        assert!(helper.try_wait().unwrap().is_none(), "the helper died");
        tokio::time::sleep(Duration::from_millis(100)).await;
        waited += 1;
    }
    let pid: i32 = std::fs::read_to_string(&ready).unwrap().parse().unwrap();
    let a_ns = format!("{}n-{}", cfg.prefix, zos_net::NetId::new(7, "net"));
    assert!(ping(&a_ns, "10.20.2.1", 1));

    // Traffic flows while that zosd is killed with SIGKILL and a new one starts on its state.
    let pinger = std::process::Command::new("ip")
        .args([
            "netns", "exec", &a_ns, "ping", "-n", "-q", "-i", "0.05", "-c", "60", "-W", "1",
        ])
        .arg("10.20.2.1")
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    helper.kill().unwrap();
    helper.wait().unwrap();
    let wg_if = zos_net::Names::new(&cfg.prefix).nr_wg(&zos_net::NetId::new(7, "net"));
    assert!(
        wireguard::is_our_process(pid, &wg_if),
        "boringtun outlives zosd"
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    let again = LinuxNetworker::open(cfg.clone()).unwrap();
    let report = again.reconcile().await.unwrap();
    assert_eq!(report.networks, 1, "{report:?}");
    assert_eq!(report.adopted, 1, "{report:?}");
    assert_eq!(report.restarted, 0, "{report:?}");
    assert!(report.failed.is_empty(), "{report:?}");
    assert_eq!(
        again.network_info(7, "net").await.unwrap().unwrap().pid,
        Some(pid),
        "the same process was kept"
    );
    w.nodes[0].net = Some(again);
    let out = pinger.wait_with_output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        text.contains(" 0% packet loss"),
        "traffic kept flowing: {text}"
    );
    let a = w
        .node(0)
        .net()
        .network_info(7, "net")
        .await
        .unwrap()
        .unwrap();

    // The WireGuard process itself dies (kill -9): the next reconcile starts it again.
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let report = w.node(0).net().reconcile().await.unwrap();
    assert_eq!(report.restarted, 1, "{report:?}");
    let new_pid = w
        .node(0)
        .net()
        .network_info(7, "net")
        .await
        .unwrap()
        .unwrap()
        .pid;
    assert_ne!(new_pid, Some(pid));
    assert!(ping(&a.namespace, "10.20.2.1", 2), "the tunnel works again");

    // A second reconcile changes nothing.
    let report = w.node(0).net().reconcile().await.unwrap();
    assert_eq!((report.adopted, report.restarted), (1, 0), "{report:?}");
}

#[tokio::test]
async fn refused_requests_change_nothing() {
    let test = "refused_requests_change_nothing";
    if !root(test) || !tools(test) || !userspace(test) {
        return;
    }
    let w = World::new("zne", 1, WireguardMode::Userspace);
    let node = w.node(0);
    let nets = mesh(&w, 7, [51820, 51821]);
    assert!(matches!(
        node.net().apply_network(&wl(7, 107, "net"), &nets[0]).await,
        Err(NetworkError::NotReady)
    ));
    node.net().setup_node(None).await.unwrap();
    let count_ns = || zos_net::netns::list(&format!("{}n-", node.prefix())).len();

    let mut bad = nets[0].clone();
    bad.subnet = "10.21.1.0/24".parse().unwrap();
    let e = node
        .net()
        .apply_network(&wl(7, 107, "net"), &bad)
        .await
        .unwrap_err();
    assert!(e.to_string().contains("subnet"), "{e}");
    assert_eq!(count_ns(), 0);

    node.net()
        .apply_network(&wl(7, 107, "net"), &nets[0])
        .await
        .unwrap();
    assert_eq!(count_ns(), 1);
    // The same port for another twin's network is refused before anything is made.
    let mut other = nets[0].clone();
    other.wireguard_private_key = key("other");
    assert!(matches!(
        node.net().apply_network(&wl(8, 108, "net"), &other).await,
        Err(NetworkError::PortTaken(51820))
    ));
    assert_eq!(count_ns(), 1);

    // A port some other program holds: the kernel refuses, nothing is left behind.
    let _held = in_netns(node.host.name(), || {
        std::net::UdpSocket::bind("0.0.0.0:51900").unwrap()
    });
    other.wireguard_listen_port = 51900;
    let e = node
        .net()
        .apply_network(&wl(8, 108, "net"), &other)
        .await
        .unwrap_err();
    assert!(matches!(e, NetworkError::PortTaken(51900)), "{e}");
    assert_eq!(count_ns(), 1);
    assert_eq!(node.net().wireguard_ports().await.unwrap(), vec![51820]);
    let id8 = zos_net::NetId::new(8, "net");
    assert!(wireguard::processes_with_prefix(&node.net().names().nr_wg(&id8)).is_empty());

    // Moving an existing network onto that port is refused and the network stays as it was.
    let mut moved = nets[0].clone();
    moved.wireguard_listen_port = 51900;
    assert!(
        node.net()
            .apply_network(&wl(7, 107, "net"), &moved)
            .await
            .is_err()
    );
    let st = node.net().wireguard_status(7, "net").await.unwrap();
    assert_eq!(st.listen_port, 51820);
    assert_eq!(node.net().wireguard_ports().await.unwrap(), vec![51820]);
    let sockets = node.host.command("ss").args(["-uln"]).output().unwrap();
    assert!(
        String::from_utf8_lossy(&sockets.stdout).contains(":51820"),
        "still listening on the old port"
    );

    // Attaching to a network that does not exist, or with a foreign address: refused.
    assert!(matches!(
        node.net()
            .attach_private(
                &wl(7, 107, "vm"),
                "nope",
                "10.20.1.5".parse().unwrap(),
                VmLink::Tap
            )
            .await,
        Err(NetworkError::NoNetwork { .. })
    ));
    assert!(
        node.net()
            .attach_private(
                &wl(7, 107, "vm"),
                "net",
                "10.20.7.5".parse().unwrap(),
                VmLink::Tap
            )
            .await
            .is_err()
    );
    // A tap for a VMM: made persistent on the bridge.
    let tap = node
        .net()
        .attach_private(
            &wl(7, 107, "vm"),
            "net",
            "10.20.1.5".parse().unwrap(),
            VmLink::Tap,
        )
        .await
        .unwrap();
    let shown = node.host.ip(&["-d", "link", "show", &tap.ifname]).unwrap();
    assert!(
        shown.contains("tun") && shown.contains(&tap.bridge),
        "{shown}"
    );
    node.net()
        .detach_private(&wl(7, 107, "vm"), "net")
        .await
        .unwrap();
    assert!(node.host.ip(&["link", "show", &tap.ifname]).is_err());
}

/// Sockets of the internet side of the public bridge, bound in the internet's namespace.
struct PublicListeners {
    dhcp4: std::net::UdpSocket,
    dhcp6: std::net::UdpSocket,
    plain4: std::net::UdpSocket,
    plain6: std::net::UdpSocket,
    icmp6: std::os::fd::OwnedFd,
}

fn public_listeners(ns: &str) -> PublicListeners {
    use nix::sys::socket::{AddressFamily, SockFlag, SockProtocol, SockType, setsockopt, socket};
    in_netns(ns, || {
        let udp = |a: &str| {
            let s = std::net::UdpSocket::bind(a).unwrap();
            s.set_read_timeout(Some(Duration::from_millis(300)))
                .unwrap();
            s
        };
        let icmp6 = socket(
            AddressFamily::Inet6,
            SockType::Raw,
            SockFlag::empty(),
            SockProtocol::IcmpV6,
        )
        .unwrap();
        let tv = nix::sys::time::TimeVal::new(0, 300_000);
        setsockopt(&icmp6, nix::sys::socket::sockopt::ReceiveTimeout, &tv).unwrap();
        PublicListeners {
            dhcp4: udp("0.0.0.0:68"),
            dhcp6: udp("[::]:546"),
            plain4: udp("0.0.0.0:6868"),
            plain6: udp("[::]:5466"),
            icmp6,
        }
    })
}

/// Everything `s` got until it has been quiet for its read timeout.
fn drain(s: &std::net::UdpSocket) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    let mut buf = [0u8; 1500];
    while let Ok((n, _)) = s.recv_from(&mut buf) {
        out.push(buf[..n].to_vec());
    }
    out
}

/// The ICMPv6 types the raw socket got until it has been quiet for its read timeout.
fn drain_icmp6(fd: &std::os::fd::OwnedFd) -> Vec<u8> {
    use std::os::fd::AsRawFd;
    let mut out = Vec::new();
    let mut buf = [0u8; 1500];
    while let Ok(n) = nix::sys::socket::recv(
        fd.as_raw_fd(),
        &mut buf,
        nix::sys::socket::MsgFlags::empty(),
    ) {
        if n > 0 {
            out.push(buf[0]);
        }
    }
    out
}

/// From inside the workload: a router advertisement and an echo request to all nodes, DHCP
/// and DHCPv6 server replies, and ordinary UDP over IPv4 and IPv6, each three times.
fn send_from_workload(vm: &str, own: &str) {
    use nix::sys::socket::{
        AddressFamily, MsgFlags, SockFlag, SockProtocol, SockType, SockaddrIn6, sendto, socket,
    };
    use std::net::{Ipv6Addr, SocketAddrV6, UdpSocket};
    use std::os::fd::AsRawFd;
    in_netns(vm, || {
        let index = nix::net::if_::if_nametoindex("eth0").unwrap();
        let all_nodes =
            |port| SocketAddrV6::new(Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 0, 1), port, 0, index);
        let raw = socket(
            AddressFamily::Inet6,
            SockType::Raw,
            SockFlag::empty(),
            SockProtocol::IcmpV6,
        )
        .unwrap();
        // Type 134 (router advertisement): hop limit 64, router lifetime 1800 s; the kernel
        // fills in the checksum. Type 128 (echo request) is the control.
        let ra = [134u8, 0, 0, 0, 64, 0, 0x07, 0x08, 0, 0, 0, 0, 0, 0, 0, 0];
        let echo = [128u8, 0, 0, 0, 0, 1, 0, 1];
        let dhcp4 = UdpSocket::bind(format!("{own}:67")).unwrap();
        let plain4 = UdpSocket::bind(format!("{own}:40001")).unwrap();
        let dhcp6 = UdpSocket::bind("[::]:547").unwrap();
        let plain6 = UdpSocket::bind("[::]:40002").unwrap();
        for _ in 0..3 {
            let to = SockaddrIn6::from(all_nodes(0));
            sendto(raw.as_raw_fd(), &ra, &to, MsgFlags::empty()).unwrap();
            sendto(raw.as_raw_fd(), &echo, &to, MsgFlags::empty()).unwrap();
            dhcp4.send_to(b"dhcp offer", "10.99.0.1:68").unwrap();
            plain4.send_to(b"plain v4", "10.99.0.1:6868").unwrap();
            dhcp6.send_to(b"dhcpv6 advertise", all_nodes(546)).unwrap();
            plain6.send_to(b"plain v6", all_nodes(5466)).unwrap();
            std::thread::sleep(Duration::from_millis(100));
        }
    });
}

/// Waits until `vm`'s eth0 has a link-local IPv6 address that finished duplicate detection.
fn wait_link_local(vm: &str) {
    for _ in 0..100 {
        let out = std::process::Command::new("ip")
            .args(["-n", vm, "-6", "addr", "show", "dev", "eth0"])
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        if text.contains("fe80") && !text.contains("tentative") {
            return;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("eth0 of {vm} got no usable link-local address");
}

/// A tenant's machine on the public bridge pretends to be the segment's router (a router
/// advertisement) and its DHCP and DHCPv6 server, to take over the traffic of the farm's other
/// hosts. A listener on the public side gets none of it, while the same machine's ordinary IPv4
/// and IPv6 traffic (and an ICMPv6 echo) arrives.
#[tokio::test]
async fn workload_router_advertisements_and_dhcp_replies_do_not_reach_the_public_side() {
    let test = "workload_router_advertisements_and_dhcp_replies_do_not_reach_the_public_side";
    if !root(test) || !tools(test) {
        return;
    }
    let mut w = World::new("zra", 1, WireguardMode::Userspace);
    let node = w.node(0);
    public_exit(&w, 0, "zrap1").await;
    let ip_wl = wl(7, 117, "ip");
    let req = PublicIpRequest {
        v4: Some(FarmIp {
            ip: "10.99.0.50/24".parse().unwrap(),
            gateway: "10.99.0.1".parse().unwrap(),
            contract_id: Some(117),
        }),
        v6: false,
    };
    node.net().setup_public_ip(&ip_wl, &req).await.unwrap();
    let vm = w.vm("zra-vm1");
    let node = w.node(0);
    node.net()
        .attach_public(
            &ip_wl,
            VmLink::Veth {
                netns: PathBuf::from(format!("/run/netns/{vm}")),
                ifname: "eth0".into(),
                default_route: true,
            },
        )
        .await
        .unwrap();
    wait_link_local(&vm);
    let listen = public_listeners(w.inet.name());

    send_from_workload(&vm, "10.99.0.50");
    assert!(
        !drain(&listen.plain4).is_empty(),
        "ordinary IPv4 UDP arrives"
    );
    assert!(
        !drain(&listen.plain6).is_empty(),
        "ordinary IPv6 UDP arrives"
    );
    let icmp = drain_icmp6(&listen.icmp6);
    assert!(icmp.contains(&128), "the ICMPv6 echo arrives: {icmp:?}");
    assert!(
        !icmp.contains(&134),
        "a router advertisement got out: {icmp:?}"
    );
    assert!(
        drain(&listen.dhcp4).is_empty(),
        "a DHCP server reply got out"
    );
    assert!(
        drain(&listen.dhcp6).is_empty(),
        "a DHCPv6 server reply got out"
    );

    drop(listen);
    node.net().teardown_public_ip(&ip_wl).await.unwrap();
    node.net().setup_node(None).await.unwrap();
    node.net().teardown_node().await.unwrap();
    assert_clean(w.node(0));
    w.nodes[0].net = None;
}
