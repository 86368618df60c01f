//! Stands for zosd in `tests/network.rs` (`a_killed_zosd_leaves_tunnels_running`): a process of
//! its own that sets up a node's network and one network resource, writes the WireGuard
//! process's PID to the file `ZOS_NET_HELPER_READY` names, then waits to be killed.
//!
//! Everything comes from the environment (`ZOS_NET_HELPER_*`); it is a test helper, not shipped.

use std::path::PathBuf;
use std::time::Duration;

use zos_net::{LinuxNetworker, NetworkConfig, Networker, WireguardMode};
use zos_types::deployment::WorkloadId;
use zos_types::workload::Network;

fn env(k: &str) -> String {
    std::env::var(k).unwrap_or_else(|_| panic!("{k} is not set"))
}

#[tokio::main]
async fn main() {
    let ready = env("ZOS_NET_HELPER_READY");
    let mut cfg = NetworkConfig::new(
        &env("ZOS_NET_HELPER_PREFIX"),
        PathBuf::from(env("ZOS_NET_HELPER_STATE")),
        PathBuf::from(env("ZOS_NET_HELPER_RUN")),
        &env("ZOS_NET_HELPER_PREFIX"),
    );
    cfg.host_netns = Some(PathBuf::from(env("ZOS_NET_HELPER_HOST")));
    cfg.wireguard = WireguardMode::Userspace;
    let net: Network = serde_json::from_str(&env("ZOS_NET_HELPER_NETWORK")).unwrap();
    let module = LinuxNetworker::open(cfg).unwrap();
    module.setup_node(None).await.unwrap();
    let wl = WorkloadId {
        twin: 7,
        contract: 107,
        name: "net".into(),
    };
    let info = module.apply_network(&wl, &net).await.unwrap();
    std::fs::write(&ready, info.pid.unwrap().to_string()).unwrap();
    tokio::time::sleep(Duration::from_secs(600)).await;
}
