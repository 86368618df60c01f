//! A real zos node in a VM (issue 15): a devnet with a namespace node and a node VM that boots
//! the node image through the real path (QEMU's iPXE ROM, DHCP from the devnet's dnsmasq, the
//! grid's iPXE script, kernel and initramfs by hash, zos-init as PID 1, the runtime flists from
//! the devnet's hub), then serves workloads, exposes no port and keeps its identity across a
//! reboot (from the farm's bootloader ISO), while wiped disks make a new node, booted in debug mode: its console shell answers a
//! typed command (no shell answers on the first boots). Under TCG here, so each boot takes
//! minutes.

use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use serde_json::Value;
use zos_testkit::devnet::DevnetNode;
use zos_testkit::devnet::{DevnetGuard, DevnetState, DevnetVm, NodeArg, VmOptions, vms};
use zos_testkit::guest::{build_node, devnet_release_key};
use zos_testkit::net::ping;
use zos_testkit::require_root;
use zos_testkit::user::{User, nr_netns};
use zos_types::capacity::GIB;
use zos_types::node_api::{NetworkBody, Wireguard};
use zos_types::registry::Node;

fn vm(state: &DevnetState) -> DevnetVm {
    state.vms[0].clone()
}

async fn node(state: &DevnetState, id: u32) -> Node {
    zos_client::GridClient::new(&state.grid_url)
        .unwrap()
        .get_node(id)
        .await
        .unwrap()
}

/// The VM node's IPv4 address on the devnet bridge, as it registered it.
fn address(n: &Node, bridge_subnet: &str) -> Ipv4Addr {
    let base = bridge_subnet
        .rsplit_once('.')
        .map_or("", |(a, _)| a)
        .to_string();
    n.interfaces
        .iter()
        .flat_map(|i| &i.ips)
        .find_map(|ip| match ip.addr() {
            std::net::IpAddr::V4(a) if a.to_string().starts_with(&base) => Some(a),
            _ => None,
        })
        .unwrap_or_else(|| {
            panic!(
                "node {} registered no address in {bridge_subnet}: {n:?}",
                n.id
            )
        })
}

/// Ports of `addr` in `ports` that accept a TCP connection from this machine (the devnet
/// bridge). A node drops what it does not serve, so each closed port costs the timeout: 1024
/// at a time.
fn open_ports(addr: Ipv4Addr, ports: std::ops::RangeInclusive<u16>) -> Vec<u16> {
    let next = AtomicU32::new(u32::from(*ports.start()));
    let last = u32::from(*ports.end());
    let open = std::sync::Mutex::new(Vec::new());
    std::thread::scope(|s| {
        for _ in 0..1024 {
            s.spawn(|| {
                loop {
                    let port = next.fetch_add(1, Ordering::SeqCst);
                    if port > last {
                        break;
                    }
                    let port = port as u16;
                    let to = SocketAddr::from((addr, port));
                    if TcpStream::connect_timeout(&to, Duration::from_secs(1)).is_ok() {
                        open.lock().unwrap().push(port);
                    }
                }
            });
        }
    });
    let mut v = open.into_inner().unwrap();
    v.sort_unstable();
    v
}

fn console(vm: &DevnetVm) -> String {
    vms::console(vm)
}

/// Waits until the grid lists node VM 1 online again (after a power cycle), and answers its id.
async fn back_online(state: &mut DevnetState, secs: u64) -> u32 {
    for vm in &mut state.vms {
        vm.twin_id = None;
        vm.node_id = None;
    }
    if let Err(e) = vms::wait_vms_online(state, Duration::from_secs(secs)).await {
        panic!("{e}\nconsole:\n{}", tail(&console(&vm(state)), 4000));
    }
    vm(state).node_id.expect("the VM node has an id")
}

fn tail(s: &str, n: usize) -> &str {
    &s[s.len().saturating_sub(n)..]
}

#[tokio::test(flavor = "multi_thread")]
async fn a_node_vm_boots_by_network_serves_workloads_exposes_no_port_and_keeps_its_identity() {
    let test = "a_node_vm_boots_by_network_serves_workloads_exposes_no_port_and_keeps_its_identity";
    if !require_root(test) {
        return;
    }
    let image = build_node();
    let (key, _) = devnet_release_key();
    let started = Instant::now();
    let opts = VmOptions::new(1, image, key);
    let mut bed = DevnetGuard::up_with(1, Duration::from_secs(5), Some(opts.clone()))
        .await
        .unwrap_or_else(|e| panic!("devnet with a node VM: {e:#}"));
    eprintln!("devnet with a node VM online after {:?}", started.elapsed());
    let state = &mut bed.state;
    let state_dir = state.dir.clone();
    let first = vm(state);
    let id = first.node_id.expect("the VM node registered");

    // Power-on to online with the VM's real capacity: 2 vCPUs, 3 GiB, an SSD of 16 GiB and an
    // HDD of 32 GiB.
    let n = node(state, id).await;
    assert_eq!(n.capacity.cru, 2, "{n:?}");
    assert!(
        n.capacity.mru > 2 * GIB && n.capacity.mru <= 3 * GIB,
        "memory of a 3 GiB VM: {n:?}"
    );
    assert_eq!(n.capacity.sru, 16 * GIB, "{n:?}");
    assert_eq!(n.capacity.hru, 32 * GIB, "{n:?}");
    let log = console(&first);
    assert!(
        log.contains("zos-init"),
        "zos-init ran: {}",
        tail(&log, 2000)
    );
    // The devnet's short upgrade timings reached zos-init through the grid's script.
    assert!(
        log.contains("upgrade_gate=Some(120) upgrade_check=Some(20)"),
        "the devnet's node arguments: {:?}",
        log.lines()
            .filter(|l| l.contains("boot parameters") || l.contains("Command line"))
            .collect::<Vec<_>>()
    );

    // No login prompt on the console, no TCP port open on its address.
    let lower = log.to_ascii_lowercase();
    assert!(
        !lower.contains("login:") && !lower.contains("password:"),
        "a prompt on the console: {}",
        tail(&log, 2000)
    );
    // No shell reads the console: a command typed on it is not run (the terminal may echo
    // it, but nothing computes 6*7), and no debug flist was fetched.
    vms::type_on_console(&first, "echo zos-$((6*7))\n").unwrap();
    tokio::time::sleep(Duration::from_secs(10)).await;
    let log = console(&first);
    assert!(
        !log.contains("zos-42") && !log.contains("zos-debug"),
        "a shell answered on a node without zos-debug: {}",
        tail(&log, 2000)
    );
    let addr = address(&n, &state.subnet);
    // The scan finds what listens: a listener on this machine's bridge address is found.
    let gateway: Ipv4Addr = state.grid_node_url["http://".len()..]
        .split(':')
        .next()
        .unwrap()
        .parse()
        .unwrap();
    let control = std::net::TcpListener::bind((gateway, 0)).unwrap();
    let control_port = control.local_addr().unwrap().port();
    assert_eq!(
        open_ports(gateway, control_port - 2..=control_port + 2),
        vec![control_port]
    );
    drop(control);
    let scan = Instant::now();
    let open = open_ports(addr, 1..=u16::MAX);
    eprintln!("scanned 65535 ports of {addr} in {:?}", scan.elapsed());
    assert!(open.is_empty(), "open TCP ports on the node: {open:?}");

    // Workloads on the VM node: a disk and a volume, checked through the node.
    let zos = zos_testkit::workspace_binary("zos").expect("zos is built (cargo build --workspace)");
    let user = User::new(&state.grid_url, &zos).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let deployed: Value = user.deploy(
        dir.path(),
        "storage.yaml",
        "workloads:\n  - name: disk\n    type: zmount\n    data: {size: 1G}\n  - name: vol\n    type: volume\n    data: {size: 1G}\n",
        id,
    );
    let contract = deployed["contract_id"].as_u64().expect("a contract");
    for w in deployed["workloads"].as_array().unwrap() {
        assert_eq!(w["state"], "ok", "{deployed}");
    }

    // A private network across the namespace node and the VM node, whose tunnel is kernel
    // WireGuard (the node's Debian kernel has the module; this host's has not).
    let ns_node = state.nodes[0].clone();
    let ids = format!("{},{id}", ns_node.node_id.unwrap());
    let made = user.zos(&["network", "create", "lan", "--nodes", &ids, "--json"]);
    assert_eq!(made["nodes"].as_array().map(Vec::len), Some(2), "{made}");
    let boot_log = console(&first);
    assert!(
        boot_log.contains("network ready backend=Kernel"),
        "the VM node runs kernel WireGuard: {}",
        tail(&boot_log, 3000)
    );
    let ns_side = nr_netns(&ns_node, user.twin(), "lan");
    let vm_node = DevnetNode {
        twin_id: state.vms[0].twin_id,
        ..ns_node.clone()
    };
    let wg_totals = || async {
        user.call::<Wireguard>(
            &vm_node,
            &NetworkBody {
                network_name: "lan".into(),
            },
        )
        .await
        .status
        .totals()
    };
    let before = wg_totals().await;
    assert!(
        ping(&ns_side, "10.20.3.1", 5),
        "the namespace node's network resource reaches the VM node's across the tunnel"
    );
    let after = wg_totals().await;
    assert!(
        after.0 > before.0 && after.1 > before.1,
        "the traffic crossed the VM node's WireGuard: {before:?} -> {after:?}"
    );

    // Reboot: the power button, a clean stop, the same node with its workloads.
    let clean = vms::power_off(state, 1, Duration::from_secs(120)).unwrap();
    assert!(
        clean,
        "the node powered off by itself on the power button: {}",
        tail(&console(&first), 3000)
    );
    let off = console(&first);
    assert!(
        off.contains("power button pressed") && off.contains("powering off"),
        "zos-init heard the button and powered off: {}",
        tail(&off, 2000)
    );
    // It boots again from the farm's bootloader ISO (`--boot iso`) instead of its NIC's ROM:
    // the ISO's iPXE takes DHCP from dnsmasq and chains the grid's script itself, so dnsmasq's
    // TFTP sends no script for this boot.
    let tftp_sent = || {
        std::fs::read_to_string(state_dir.join("dnsmasq.log"))
            .unwrap_or_default()
            .lines()
            .filter(|l| {
                l.contains("dnsmasq-tftp") && l.contains(" sent ") && l.contains("vm1.ipxe")
            })
            .count()
    };
    let sent_before = tftp_sent();
    assert!(
        sent_before > 0,
        "the network boots fetched vm1.ipxe over TFTP"
    );
    vms::use_iso(state, &opts, 1).unwrap();
    vms::start_vm(state, 1).unwrap();
    let again = back_online(state, 900).await;
    assert_eq!(again, id, "a reboot keeps the node's identity");
    assert_eq!(tftp_sent(), sent_before, "the VM booted from the ISO");
    vms::use_pxe(state, 1).unwrap();
    let got = user.zos(&["deployment", "get", &contract.to_string(), "--json"]);
    let states: Vec<&Value> = got["workloads"]
        .as_array()
        .unwrap_or_else(|| panic!("{got}"))
        .iter()
        .map(|w| &w["state"])
        .collect();
    assert!(
        states.iter().all(|s| *s == "ok"),
        "the workloads came back: {got}"
    );

    // Wiped disks: a new node. It boots in debug mode (zos-debug on the devnet's runmode dev):
    // its console runs a shell from the release's debug flist, which answers what is typed.
    vms::power_off(state, 1, Duration::from_secs(120)).unwrap();
    vms::wipe_disks(state, 1).unwrap();
    vms::set_vm_args(state, &opts.clone().with_args(1, &[NodeArg::Debug]), 1).unwrap();
    let before = console(&first).len();
    vms::start_vm(state, 1).unwrap();
    let fresh = back_online(state, 900).await;
    assert_ne!(fresh, id, "wiped disks make a new node");
    let log = console(&first);
    assert!(
        log[before..].contains("zos-debug: opening a shell on the console"),
        "{}",
        tail(&log, 3000)
    );
    vms::type_on_console(&first, "echo zos-$((6*7))\n").unwrap();
    let deadline = Instant::now() + Duration::from_secs(120);
    while !console(&first)[before..].contains("zos-42") && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
    let log = console(&first);
    assert!(
        log[before..].contains("zos-42"),
        "the debug shell answered on the console: {}",
        tail(&log, 3000)
    );
}
