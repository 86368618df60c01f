//! A real zos node in a VM (issue 15): a devnet with a namespace node and a node VM that boots
//! the node image through the real path (QEMU's iPXE ROM, DHCP from the devnet's dnsmasq, the
//! grid's iPXE script, kernel and initramfs by hash, zos-init as PID 1, the runtime flists from
//! the devnet's hub), then serves workloads, exposes no port and keeps its identity across a
//! reboot, while wiped disks make a new node. Under TCG here, so each boot takes minutes.

use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::sync::atomic::{AtomicU16, Ordering};
use std::time::{Duration, Instant};

use serde_json::Value;
use zos_testkit::devnet::{DevnetGuard, DevnetState, DevnetVm, VmOptions, vms};
use zos_testkit::guest::{build_node, devnet_release_key};
use zos_testkit::require_root;
use zos_testkit::user::User;
use zos_types::capacity::GIB;
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

/// Ports of `addr` that accept a TCP connection, from this machine (the devnet bridge).
fn open_ports(addr: Ipv4Addr) -> Vec<u16> {
    let next = AtomicU16::new(1);
    let open = std::sync::Mutex::new(Vec::new());
    std::thread::scope(|s| {
        for _ in 0..128 {
            s.spawn(|| {
                loop {
                    let port = next.fetch_add(1, Ordering::SeqCst);
                    if port == 0 {
                        break;
                    }
                    let to = SocketAddr::from((addr, port));
                    if TcpStream::connect_timeout(&to, Duration::from_secs(3)).is_ok() {
                        open.lock().unwrap().push(port);
                    }
                    if port == u16::MAX {
                        break;
                    }
                }
            });
        }
    });
    let mut v = open.into_inner().unwrap();
    v.sort_unstable();
    v
}

/// The serial console of the VM, as text.
fn console(vm: &DevnetVm) -> String {
    String::from_utf8_lossy(&std::fs::read(&vm.serial).unwrap_or_default()).into_owned()
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
    let mut bed = DevnetGuard::up_with(
        1,
        Duration::from_secs(5),
        Some(VmOptions::new(1, image, key)),
    )
    .await
    .unwrap_or_else(|e| panic!("devnet with a node VM: {e:#}"));
    eprintln!("devnet with a node VM online after {:?}", started.elapsed());
    let state = &mut bed.state;
    let first = vm(state);
    let id = first.node_id.expect("the VM node registered");

    // Power-on to online with the VM's real capacity: 2 vCPUs, 2 GiB, its two disks.
    let n = node(state, id).await;
    assert_eq!(n.capacity.cru, 2, "{n:?}");
    assert!(
        n.capacity.mru > GIB && n.capacity.mru <= 2 * GIB,
        "memory of a 2 GiB VM: {n:?}"
    );
    let disks = n.capacity.sru + n.capacity.hru;
    assert!(
        disks > 40 * GIB && disks <= 48 * GIB,
        "its 16 and 32 GiB disks: {n:?}"
    );
    let log = console(&first);
    assert!(
        log.contains("zos-init"),
        "zos-init ran: {}",
        tail(&log, 2000)
    );

    // No login prompt on the console, no TCP port open on its address.
    let lower = log.to_ascii_lowercase();
    assert!(
        !lower.contains("login:") && !lower.contains("password:"),
        "a prompt on the console: {}",
        tail(&log, 2000)
    );
    let addr = address(&n, &state.subnet);
    let scan = Instant::now();
    let open = open_ports(addr);
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

    // Reboot: the power button, a clean stop, the same node with its workloads.
    let clean = vms::power_off(state, 1, Duration::from_secs(120)).unwrap();
    assert!(clean, "the node powered off by itself on the power button");
    let off = console(&first);
    assert!(
        off.contains("power"),
        "zos-init said it powers off: {}",
        tail(&off, 2000)
    );
    vms::start_vm(state, 1).unwrap();
    let again = back_online(state, 900).await;
    assert_eq!(again, id, "a reboot keeps the node's identity");
    let got = user.zos(&["deployment", "get", &contract.to_string(), "--json"]);
    let states: Vec<&Value> = got["workloads"]
        .as_array()
        .unwrap_or_else(|| panic!("{got}"))
        .iter()
        .map(|w| &w["result"]["state"])
        .collect();
    assert!(
        states.iter().all(|s| *s == "ok"),
        "the workloads came back: {got}"
    );

    // Wiped disks: a new node.
    vms::power_off(state, 1, Duration::from_secs(120)).unwrap();
    vms::wipe_disks(state, 1).unwrap();
    vms::start_vm(state, 1).unwrap();
    let fresh = back_online(state, 900).await;
    assert_ne!(fresh, id, "wiped disks make a new node");
}
