//! Private networks and public IPs end to end on a devnet: `zos network` and `zos deploy`
//! against a real grid and zosd nodes whose networks are real namespaces, nftables rules and
//! userspace WireGuard tunnels across the devnet's bridge (the test "internet").

use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use serde_json::json;
use zos_testkit::devnet::{DevnetGuard, DevnetNode};
use zos_testkit::net::{TcpServer, connect, ping, tcp_banner};
use zos_testkit::netns::{self, Netns};
use zos_testkit::process::{ProcessGuard, alive, wait_until};
use zos_testkit::require_root;
use zos_testkit::user::{User, nr_netns};
use zos_types::node_api::{NetworkBody, Page, PublicConfigGet, PublicIps, WgPorts, Wireguard};

fn wg_body(name: &str) -> NetworkBody {
    NetworkBody {
        network_name: name.into(),
    }
}

async fn user(grid: &str) -> User {
    User::new(grid, Path::new(env!("CARGO_BIN_EXE_zos")))
        .await
        .unwrap()
}

/// Bytes received and sent by the WireGuard interface of `u`'s network `name` on `node`.
async fn wg_totals(u: &User, node: &DevnetNode, name: &str) -> (u64, u64) {
    let v = u.call::<Wireguard>(node, &wg_body(name)).await;
    v.status
        .peers
        .iter()
        .fold((0, 0), |(r, t), p| (r + p.rx_bytes, t + p.tx_bytes))
}
/// Everything of the node's networks that lives in a global space: namespaces of network
/// resources, WireGuard sockets and processes.
fn network_leftovers(node: &DevnetNode) -> Vec<String> {
    let mut out: Vec<String> = netns::list_netns()
        .into_iter()
        .filter(|n| n.starts_with(&format!("{}n-", node.prefix)))
        .collect();
    let wg = format!("{}w", node.prefix);
    for e in std::fs::read_dir("/var/run/wireguard")
        .into_iter()
        .flatten()
        .flatten()
    {
        let n = e.file_name().to_string_lossy().into_owned();
        if n.starts_with(&wg) {
            out.push(format!("socket {n}"));
        }
    }
    for e in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        if let Ok(cmd) = std::fs::read(e.path().join("cmdline"))
            && String::from_utf8_lossy(&cmd).contains("boringtun")
            && String::from_utf8_lossy(&cmd).contains(&wg)
        {
            out.push(format!("process {}", e.file_name().to_string_lossy()));
        }
    }
    let links = Command::new("ip")
        .args(["-n", &node.netns, "-o", "link"])
        .output()
        .unwrap();
    for l in String::from_utf8_lossy(&links.stdout).lines() {
        let name = l.split(':').nth(1).unwrap_or("").trim().to_string();
        let name = name.split('@').next().unwrap_or("").to_string();
        for kind in ["b", "l", "t"] {
            if name.starts_with(&format!("{}{kind}", node.prefix)) {
                out.push(format!("link {name}"));
            }
        }
    }
    out
}

/// The devnet bridge's address prefix: `10.213.7` of `10.213.7.0/24`.
fn base(subnet: &str) -> String {
    let net = subnet.split('/').next().unwrap();
    net.rsplit_once('.').unwrap().0.to_string()
}

/// Starts a userspace WireGuard laptop in `ns` from the `wg-quick` file `conf`.
fn laptop(ns: &Netns, conf: &str, ifname: &str, dir: &Path) -> ProcessGuard {
    let mut address = String::new();
    let mut setconf = String::new();
    for line in conf.lines() {
        if let Some(a) = line.strip_prefix("Address = ") {
            address = a.to_string();
        } else if !line.starts_with('#') {
            setconf.push_str(line);
            setconf.push('\n');
        }
    }
    let conf_file = dir.join("laptop.conf");
    std::fs::write(&conf_file, setconf).unwrap();
    let bt = zos_runtime::find_program("boringtun-cli");
    let mut cmd = ns.command(&bt);
    cmd.args([
        "--foreground",
        "--disable-drop-privileges",
        "--disable-multi-queue",
        ifname,
    ]);
    let guard = ProcessGuard::spawn("laptop-wg", cmd, &dir.join("laptop.log")).unwrap();
    let sock = format!("/var/run/wireguard/{ifname}.sock");
    for _ in 0..100 {
        if std::os::unix::net::UnixStream::connect(&sock).is_ok() {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let run = |args: &[&str]| {
        let out = ns.command(args[0]).args(&args[1..]).output().unwrap();
        assert!(
            out.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    run(&["wg", "setconf", ifname, conf_file.to_str().unwrap()]);
    run(&["ip", "addr", "add", &address, "dev", ifname]);
    run(&["ip", "link", "set", ifname, "up"]);
    let range = conf
        .lines()
        .find_map(|l| l.strip_prefix("AllowedIPs = "))
        .unwrap();
    run(&["ip", "route", "replace", range, "dev", ifname]);
    guard
}

#[tokio::test(flavor = "multi_thread")]
async fn a_network_across_two_nodes_from_create_to_delete() {
    if !require_root("a_network_across_two_nodes_from_create_to_delete") {
        return;
    }
    let mut net = DevnetGuard::up(2, Duration::from_secs(2)).await.unwrap();
    let grid = net.state.grid_url.clone();
    let (n1, n2) = (net.state.nodes[0].clone(), net.state.nodes[1].clone());
    let ids = format!("{},{}", n1.node_id.unwrap(), n2.node_id.unwrap());
    let alice = user(&grid).await;
    let bob = user(&grid).await;

    // Alice's network across both nodes, with her laptop as an access peer.
    let made = alice.zos(&[
        "network", "create", "lan", "--nodes", &ids, "--access", "--json",
    ]);
    let nodes = made["nodes"].as_array().unwrap();
    assert_eq!(nodes.len(), 2, "{made}");
    assert_eq!(nodes[0]["subnet"], "10.20.2.0/24");
    assert_eq!(nodes[1]["subnet"], "10.20.3.0/24");
    assert_eq!(
        nodes[0]["endpoint"]
            .as_str()
            .unwrap()
            .split(':')
            .next()
            .unwrap(),
        n1.address,
        "peers dial the node's own address"
    );
    let (a1, a2) = (
        nr_netns(&n1, alice.twin(), "lan"),
        nr_netns(&n2, alice.twin(), "lan"),
    );
    assert!(netns::netns_exists(&a1) && netns::netns_exists(&a2));
    let ports = alice.call::<WgPorts>(&n1, &Page::default()).await;
    assert_eq!(json!(ports), json!([nodes[0]["listen_port"]]));

    // Through the tunnel: node 1's resource reaches node 2's gateway, by ping and TCP.
    let before = wg_totals(&alice, &n1, "lan").await;
    assert!(ping(&a1, "10.20.3.1", 3), "ping across the tunnel");
    let server = TcpServer::start(&a2, "10.20.3.1:7000", "node2").unwrap();
    let banner = tcp_banner(&a1, None, server.addr(), Duration::from_secs(5)).unwrap();
    assert_eq!(banner, "node2");
    assert_eq!(
        server.peers()[0].ip().to_string(),
        "10.20.2.1",
        "no NAT inside the network"
    );
    let after = wg_totals(&alice, &n1, "lan").await;
    assert!(
        after.0 > before.0 && after.1 > before.1,
        "the traffic crossed WireGuard: {before:?} -> {after:?}"
    );

    // NAT: a host on the test internet sees the workload's traffic come from node 1.
    let inet_ns = Netns::create(&format!("{}-inet", net.state.name)).unwrap();
    let inet_addr = format!("{}.200", base(&net.state.subnet));
    netns::attach(
        &net.state.bridge,
        &inet_ns,
        &format!("{}inet", net.state.name),
        &format!("{inet_addr}/24"),
        &format!("{}.1", base(&net.state.subnet)),
    )
    .unwrap();
    let outside = TcpServer::start(inet_ns.name(), &format!("{inet_addr}:8080"), "web").unwrap();
    assert_eq!(
        tcp_banner(&a1, None, outside.addr(), Duration::from_secs(5)).unwrap(),
        "web"
    );
    assert_eq!(outside.peers()[0].ip().to_string(), n1.address);
    // The node itself is not reachable from its workloads, nor SMTP from anywhere.
    let smtp = TcpServer::start(inet_ns.name(), &format!("{inet_addr}:25"), "smtp").unwrap();
    assert!(connect(&a1, None, smtp.addr(), Duration::from_secs(2)).is_err());
    let on_node = TcpServer::start(&n1.netns, "0.0.0.0:9999", "node").unwrap();
    let node_addr: SocketAddr = format!("{}:9999", n1.address).parse().unwrap();
    assert_eq!(
        tcp_banner(&n1.netns, None, node_addr, Duration::from_secs(2)).unwrap(),
        "node",
        "the listener on the node works"
    );
    assert!(connect(&a1, None, node_addr, Duration::from_secs(2)).is_err());
    assert!(
        connect(inet_ns.name(), None, node_addr, Duration::from_secs(2)).is_err(),
        "no new connections into the node from outside"
    );
    drop(on_node);

    // The laptop joins through node 1 and reaches both nodes' gateways.
    let dir = tempfile::tempdir().unwrap();
    let conf = alice.zos(&["network", "wg-config", "lan"]);
    let conf = conf.as_str().unwrap().to_string();
    assert!(
        conf.contains(&format!("Endpoint = {}:", n1.address)),
        "{conf}"
    );
    let lap_ns = Netns::create(&format!("{}-lap", net.state.name)).unwrap();
    netns::attach(
        &net.state.bridge,
        &lap_ns,
        &format!("{}lap", net.state.name),
        &format!("{}.201/24", base(&net.state.subnet)),
        &format!("{}.1", base(&net.state.subnet)),
    )
    .unwrap();
    let lap_if = format!("{}lw", net.state.name);
    let _laptop = laptop(&lap_ns, &conf, &lap_if, dir.path());
    assert!(
        wait_until(Duration::from_secs(20), Duration::from_millis(500), || {
            let ns = lap_ns.name().to_string();
            async move { ping(&ns, "10.20.2.1", 1).then_some(()) }
        })
        .await
        .is_some(),
        "the laptop reaches node 1"
    );
    assert!(
        ping(lap_ns.name(), "10.20.3.1", 3),
        "the laptop reaches node 2 through node 1"
    );

    // Isolation: Bob's network has the same name and subnets on the same nodes.
    // (Bob names node 2's endpoint himself, as for a node behind NAT.)
    let endpoint = format!("{}={}", n2.node_id.unwrap(), n2.address);
    let made = bob.zos(&[
        "network",
        "create",
        "lan",
        "--nodes",
        &ids,
        "--endpoint",
        &endpoint,
        "--json",
    ]);
    assert!(
        made["nodes"][1]["endpoint"]
            .as_str()
            .unwrap()
            .starts_with(&format!("{}:", n2.address)),
        "{made}"
    );
    let b1 = nr_netns(&n1, bob.twin(), "lan");
    assert_ne!(b1, a1);
    assert!(ping(&b1, "10.20.3.1", 2), "Bob reaches his own node 2");
    // The same address leads to Bob's resource, where Alice's listener is not.
    assert!(connect(&b1, None, server.addr(), Duration::from_secs(2)).is_err());
    let alice_dmz = Command::new("ip")
        .args(["-n", &a1, "-4", "-o", "addr", "show", "dev", "dmz"])
        .output()
        .unwrap();
    let alice_dmz = String::from_utf8_lossy(&alice_dmz.stdout)
        .split_whitespace()
        .find(|w| w.starts_with("100.127."))
        .unwrap()
        .split('/')
        .next()
        .unwrap()
        .to_string();
    assert!(
        !ping(&b1, &alice_dmz, 2),
        "Bob cannot reach Alice's resource through the node"
    );
    // Bob's listener sees only Bob; Alice's server saw only Alice.
    assert!(
        server
            .peers()
            .iter()
            .all(|p| p.ip().to_string() == "10.20.2.1")
    );

    // kill -9 zosd of node 1 while the laptop pings node 2: the tunnels carry on.
    let pinger = {
        let ns = lap_ns.name().to_string();
        std::thread::spawn(move || {
            Command::new("ip")
                .args([
                    "netns",
                    "exec",
                    &ns,
                    "ping",
                    "-n",
                    "-q",
                    "-i",
                    "0.2",
                    "-c",
                    "40",
                    "-W",
                    "1",
                    "10.20.3.1",
                ])
                .output()
                .unwrap()
        })
    };
    std::thread::sleep(Duration::from_secs(1));
    let wg_pid_before = alice
        .call::<Wireguard>(&n1, &wg_body("lan"))
        .await
        .network
        .pid;
    zos_testkit::devnet::stop_node(&mut net.state, 1, true).unwrap();
    std::thread::sleep(Duration::from_secs(2));
    zos_testkit::devnet::start_node(&mut net.state, 1).unwrap();
    let out = pinger.join().unwrap();
    let summary = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        summary.contains(" 0% packet loss"),
        "pings lost while zosd restarted: {summary}"
    );
    // Reconciled: the restarted node answers for the network, with the same tunnel process.
    let back = wait_until(Duration::from_secs(60), Duration::from_millis(500), || {
        let c = alice.client.clone();
        let twin = n1.twin_id.unwrap();
        async move { c.node(twin).call::<Wireguard>(&wg_body("lan")).await.ok() }
    })
    .await
    .expect("node 1 answers again");
    assert_eq!(back.network.pid, wg_pid_before, "the tunnel was adopted");
    assert!(alive(wg_pid_before.unwrap()));
    assert!(ping(&a1, "10.20.3.1", 2));

    // Delete both networks: nothing of them stays on either node.
    drop(server);
    alice.zos(&["network", "delete", "lan", "--json"]);
    bob.zos(&["network", "delete", "lan", "--json"]);
    for n in [&n1, &n2] {
        let left = network_leftovers(n);
        assert!(left.is_empty(), "node {}: {left:?}", n.index);
        assert!(alice.call::<WgPorts>(n, &Page::default()).await.is_empty());
    }
    let (ok, _, err) = alice.zos_raw(&["network", "show", "lan"]);
    assert!(!ok && err.contains("no network"), "{err}");

    // The devnet going down takes the nodes' own namespaces too.
    let left = net.down_leftovers();
    assert!(left.is_empty(), "{left:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_public_ip_comes_from_the_farm_pool_and_goes_back_on_cancel() {
    if !require_root("a_public_ip_comes_from_the_farm_pool_and_goes_back_on_cancel") {
        return;
    }
    let net = DevnetGuard::up(1, Duration::from_secs(2)).await.unwrap();
    let grid = net.state.grid_url.clone();
    let n1 = net.state.nodes[0].clone();
    let node = n1.node_id.unwrap();
    let u = user(&grid).await;
    let pbase = base(&net.state.public_subnet);

    // The farmer's public config reached the node: its public namespace answers pings from
    // the public side, and the node reports the config.
    let cfg = wait_until(Duration::from_secs(30), Duration::from_millis(300), || {
        let c = u.client.clone();
        let twin = n1.twin_id.unwrap();
        async move { c.node(twin).call::<PublicConfigGet>(&()).await.ok() }
    })
    .await
    .expect("the node applies its public config");
    assert_eq!(cfg.ipv4.to_string(), format!("{}/24", n1.public_address));
    let probe = Netns::create(&format!("{}-pub", net.state.name)).unwrap();
    netns::attach(
        &net.state.public_bridge,
        &probe,
        &format!("{}pprobe", net.state.name),
        &format!("{pbase}.250/24"),
        &format!("{pbase}.1"),
    )
    .unwrap();
    assert!(ping(probe.name(), &n1.public_address, 2));

    // An ip workload takes the first address the contract reserved.
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("ip.yaml");
    std::fs::write(
        &file,
        "workloads:\n  - name: pub\n    type: ip\n    data: {v4: true}\n",
    )
    .unwrap();
    let res = u.zos(&[
        "deploy",
        file.to_str().unwrap(),
        "--node",
        &node.to_string(),
        "--json",
    ]);
    let contract = res["contract_id"].as_u64().unwrap();
    let w = &res["workloads"][0];
    assert_eq!(w["state"], "ok", "{w}");
    let ip = w["data"]["ip"].as_str().unwrap().to_string();
    assert!(ip.starts_with(&format!("{pbase}.10")), "{ip}");
    assert_eq!(w["data"]["gateway"], format!("{pbase}.1"));
    let farm = u.client.list_farm_ips(net.state.farm_id).await.unwrap();
    let held = farm.iter().find(|f| f.ip.to_string() == ip).unwrap();
    assert_eq!(held.contract_id, Some(contract));
    let listed = u.call::<PublicIps>(&n1, &()).await;
    assert_eq!(json!(listed), json!([ip.split('/').next().unwrap()]));

    // Cancel: the node lets it go and the farm's pool has it free again.
    u.zos(&["deployment", "cancel", &contract.to_string(), "--json"]);
    assert!(u.call::<PublicIps>(&n1, &()).await.is_empty());
    let farm = u.client.list_farm_ips(net.state.farm_id).await.unwrap();
    let freed = farm.iter().find(|f| f.ip.to_string() == ip).unwrap();
    assert_eq!(freed.contract_id, None);
    drop(probe);
}

/// A twin's network resource holds kernel objects of its node (a namespace, a bridge, rules, a
/// WireGuard process): it counts `NETWORK_RESOURCE_COST` against the node's memory, as the
/// registry shows, and the memory comes back when the network goes.
#[tokio::test(flavor = "multi_thread")]
async fn a_network_resource_counts_against_the_nodes_memory() {
    if !require_root("a_network_resource_counts_against_the_nodes_memory") {
        return;
    }
    let net = DevnetGuard::up(1, Duration::from_secs(1)).await.unwrap();
    let grid = net.state.grid_url.clone();
    let id = net.state.nodes[0].node_id.unwrap();
    let alice = user(&grid).await;
    let registry = zos_client::GridClient::new(&grid).unwrap();
    let used_mru_becomes = |mru: u64| {
        let registry = registry.clone();
        async move {
            // Uptime reports come every second; the bound is for a loaded CI machine.
            wait_until(Duration::from_secs(60), Duration::from_millis(250), || {
                let registry = registry.clone();
                async move {
                    registry
                        .get_node(id)
                        .await
                        .ok()
                        .filter(|n| n.used.mru == mru)
                }
            })
            .await
            .is_some()
        }
    };
    assert!(used_mru_becomes(0).await, "nothing used before");
    alice.zos(&[
        "network",
        "create",
        "lan",
        "--nodes",
        &id.to_string(),
        "--json",
    ]);
    let cost = zos_types::workload::NETWORK_RESOURCE_COST.mru;
    assert!(
        used_mru_becomes(cost).await,
        "the registry shows the network's {cost} bytes of memory used"
    );
    alice.zos(&["network", "delete", "lan", "--json"]);
    assert!(used_mru_becomes(0).await, "the memory comes back");
}
