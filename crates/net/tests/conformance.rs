//! The `Networker` conformance suite, run against the fake and against real namespaces.
//!
//! The real run makes a namespace standing for a node's host on a test internet (its uplink
//! and a second interface as the public exit), and runs `LinuxNetworker` there with userspace
//! WireGuard and taps. It needs root, nft, wg and boringtun-cli and fails (never skips)
//! without; it runs in the `serial-root` nextest group. All traffic stays in its namespaces.

use std::path::PathBuf;

use zos_net::conformance::{self, Fixture};
use zos_net::{
    LinuxNetworker, NetworkConfig, PublicSetup, RecordingNetworker, WireguardMode, wireguard,
};
use zos_testkit::net::Internet;
use zos_testkit::netns::Netns;
use zos_types::registry::{FarmIp, PublicConfig};

const PREFIX: &str = "zcf";

fn fixture() -> Fixture {
    Fixture {
        public: PublicSetup {
            config: PublicConfig {
                ipv4: "10.98.0.21/24".parse().unwrap(),
                gw4: "10.98.0.1".parse().unwrap(),
                ipv6: None,
                gw6: None,
                domain: None,
            },
            exit_iface: "pub0".into(),
        },
        public_ip: FarmIp {
            ip: "10.98.0.50/24".parse().unwrap(),
            gateway: "10.98.0.1".parse().unwrap(),
            contract_id: Some(101),
        },
    }
}

#[tokio::test]
async fn fake_keeps_the_networker_contract() {
    conformance::run(&RecordingNetworker::new(PREFIX), &fixture()).await;
}

/// Whatever the real run leaves when it fails: userspace WireGuard processes, their sockets and
/// the node's namespaces (the host namespace and the internet go with their own guards).
struct Leftovers;

impl Drop for Leftovers {
    fn drop(&mut self) {
        for (pid, _) in wireguard::processes_with_prefix(PREFIX) {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
        if let Ok(rd) = std::fs::read_dir(wireguard::UAPI_DIR) {
            for e in rd.flatten() {
                if e.file_name().to_string_lossy().starts_with(PREFIX) {
                    let _ = std::fs::remove_file(e.path());
                }
            }
        }
        for ns in zos_net::netns::list(PREFIX) {
            let _ = zos_testkit::netns::delete_netns(&ns);
        }
    }
}

#[tokio::test]
async fn real_keeps_the_networker_contract() {
    assert!(
        nix::unistd::geteuid().is_root(),
        "the real network conformance run needs root"
    );
    for t in ["nft", "wg", "boringtun-cli"] {
        assert!(
            zos_runtime::find_program(t).is_file(),
            "the real network conformance run needs {t} (scripts/install-deps.sh)"
        );
    }
    let _leftovers = Leftovers;
    let dir = tempfile::tempdir().unwrap();
    let inet = Internet::create(&format!("{PREFIX}-inet"), "10.98.0.1/24").unwrap();
    let host = Netns::create(&format!("{PREFIX}-host")).unwrap();
    inet.join(
        &host,
        &format!("{PREFIX}u"),
        "eth0",
        Some("10.98.0.11"),
        true,
    )
    .unwrap();
    inet.join(&host, &format!("{PREFIX}p"), "pub0", None, false)
        .unwrap();
    let mut cfg = NetworkConfig::new(
        PREFIX,
        dir.path().join("state"),
        dir.path().join("run"),
        PREFIX,
    );
    cfg.host_netns = Some(PathBuf::from(format!("/run/netns/{}", host.name())));
    cfg.wireguard = WireguardMode::Userspace;
    let net = LinuxNetworker::open(cfg.clone()).expect("networker opens");
    conformance::run(&net, &fixture()).await;
    // Torn down for real: no namespace, process or state file of the node is left.
    assert!(
        zos_net::netns::list(PREFIX)
            .iter()
            .all(|n| n == host.name() || n == inet.name()),
        "{:?}",
        zos_net::netns::list(PREFIX)
    );
    assert!(
        wireguard::processes_with_prefix(PREFIX).is_empty(),
        "wireguard processes left"
    );
    assert!(
        !cfg.state_dir.join(zos_net::STATE_FILE).exists(),
        "state file left"
    );
    drop(net);
}
