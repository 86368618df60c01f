//! `zos network join` and `leave` on a devnet: this machine (the test's root namespace) becomes
//! the access peer of a network, reaches a node's side of it through the tunnel, and leaves
//! nothing behind.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use zos_testkit::devnet::DevnetGuard;
use zos_testkit::process::{alive, wait_until};
use zos_testkit::require_root;
use zos_testkit::user::User;

/// The network's range: the routes `join` adds to this machine point only into it.
const RANGE: &str = "10.97.0.0/16";

fn host_ping(addr: &str) -> bool {
    Command::new("ping")
        .args(["-n", "-q", "-c", "1", "-W", "1", addr])
        .output()
        .is_ok_and(|o| o.status.success())
}

fn routes_to_range() -> String {
    let out = Command::new("ip")
        .args(["-4", "route", "show", RANGE])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

#[tokio::test(flavor = "multi_thread")]
async fn join_reaches_the_network_through_the_tunnel_and_leave_removes_everything() {
    if !require_root("join_reaches_the_network_through_the_tunnel_and_leave_removes_everything") {
        return;
    }
    let net = DevnetGuard::up(1, Duration::from_secs(2)).await.unwrap();
    let node = net.state.nodes[0].clone();
    let u = User::new(&net.state.grid_url, Path::new(env!("CARGO_BIN_EXE_zos")))
        .await
        .unwrap();
    let id = node.node_id.unwrap().to_string();
    let made = u.zos(&[
        "network",
        "create",
        "lan",
        "--nodes",
        &id,
        "--ip-range",
        RANGE,
        "--access",
        "--json",
    ]);
    let gateway = made["nodes"][0]["gateway"].as_str().unwrap().to_string();
    assert!(routes_to_range().is_empty(), "{}", routes_to_range());

    let joined = u.zos(&["network", "join", "lan", "--json"]);
    assert_eq!(joined["new"], true, "{joined}");
    let ifname = joined["interface"].as_str().unwrap().to_string();
    let pid = joined["pid"].as_i64().map(|p| p as i32);
    if !Path::new("/sys/module/wireguard").exists() {
        assert_eq!(joined["backend"], "userspace", "{joined}");
        assert!(alive(pid.unwrap()), "boringtun runs");
    }
    assert!(Path::new("/sys/class/net").join(&ifname).exists());
    assert!(routes_to_range().contains(&ifname), "{}", routes_to_range());

    // The node's gateway of the network answers from this machine, through the tunnel.
    let reached = wait_until(Duration::from_secs(20), Duration::from_millis(500), || {
        let gw = gateway.clone();
        async move { host_ping(&gw).then_some(()) }
    })
    .await;
    assert!(reached.is_some(), "{gateway} not reached through {ifname}");

    // Joining again changes nothing.
    let again = u.zos(&["network", "join", "lan", "--json"]);
    assert_eq!(again["new"], false, "{again}");
    assert_eq!(again["interface"], joined["interface"]);
    assert_eq!(again["pid"], joined["pid"]);

    // Leave, from what the state file says: no link, no route, no boringtun.
    let left = u.zos(&["network", "leave", "lan", "--json"]);
    assert_eq!(left["left"], true, "{left}");
    assert!(!Path::new("/sys/class/net").join(&ifname).exists());
    assert!(routes_to_range().is_empty(), "{}", routes_to_range());
    if let Some(pid) = pid {
        assert!(!alive(pid), "boringtun {pid} still runs");
    }
    assert!(!host_ping(&gateway));
    let twice = u.zos(&["network", "leave", "lan", "--json"]);
    assert_eq!(twice["left"], false, "{twice}");

    u.zos(&["network", "delete", "lan", "--json"]);
}
