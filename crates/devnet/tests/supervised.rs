//! Namespace nodes supervised by zos-init (`zos devnet up --supervised`, issue 16): each node's
//! real zosd runs under `zos-init --node-test` from the devnet's signed dev release (its runtime
//! flist on the devnet's hub), registers that release's version, and upgrades live when the next
//! release is published: the grid's notice on the uplink, zos-init's switch and health gate, the
//! new zosd adopting the node's network (its userspace WireGuard keeps its PID and still carries
//! traffic), `committed` reported and the new version registered.
//!
//! The 4-node upgrade with a machine and an HTTP loop is `live_upgrade.rs`; a crash-loop and a
//! gate-missing release rolling back with the real zosd are `vm_upgrade.rs`.

use std::time::{Duration, Instant};

use zos_client::release::ReleaseClient;
use zos_testkit::devnet::{DevnetGuard, supervised, supervised_options};
use zos_testkit::net::ping;
use zos_testkit::require_root;
use zos_testkit::upgrade::{listed_version, pids_in_namespace_of, wait_reports};
use zos_testkit::user::{User, nr_netns};
use zos_types::release::RunMode;
use zos_types::release::fleet::UpgradeState;

fn tail(s: &str, n: usize) -> &str {
    let mut at = s.len().saturating_sub(n);
    while !s.is_char_boundary(at) {
        at += 1;
    }
    &s[at..]
}

#[tokio::test(flavor = "multi_thread")]
async fn supervised_namespace_nodes_run_zosd_from_a_release_and_upgrade_it_live() {
    if !require_root("supervised_namespace_nodes_run_zosd_from_a_release_and_upgrade_it_live") {
        return;
    }
    let opts = supervised_options().unwrap();
    let started = Instant::now();
    let bed = DevnetGuard::up_supervised(2, Duration::from_secs(2), opts.clone())
        .await
        .unwrap_or_else(|e| panic!("devnet of supervised nodes: {e:#}"));
    eprintln!("2 supervised nodes online after {:?}", started.elapsed());
    let state = &bed.state;
    let logs = || {
        state
            .nodes
            .iter()
            .map(|n| {
                let log = std::fs::read_to_string(&n.log).unwrap_or_default();
                format!("node {} log:\n{}\n", n.index, tail(&log, 3000))
            })
            .collect::<String>()
    };
    let booted = ReleaseClient::new(&state.grid_url)
        .unwrap()
        .list(RunMode::Dev)
        .await
        .unwrap()[0]
        .release
        .version
        .clone();
    let zos = zos_testkit::workspace_binary("zos").expect("zos is built (cargo build --workspace)");
    let user = User::new(&state.grid_url, &zos).await.unwrap();
    let ids: Vec<u32> = state.nodes.iter().map(|n| n.node_id.unwrap()).collect();

    // Each node is its zos-init, whose one zosd runs from the release's /usr and registered
    // the release's version; zos-init reports that version committed.
    for n in &state.nodes {
        let argv = zos_runtime::supervise::argv(n.pid).unwrap_or_default();
        assert!(argv.iter().any(|a| a == "--node-test"), "{argv:?}");
        let zosd = pids_in_namespace_of(n.pid, "zosd");
        assert_eq!(zosd.len(), 1, "one zosd under node {}'s zos-init", n.index);
        let exe = std::fs::read(format!("/proc/{}/cmdline", zosd[0])).unwrap();
        let usr_zosd = n.state_dir.join("usr/bin/zosd");
        assert!(
            exe.starts_with(usr_zosd.as_os_str().as_encoded_bytes()),
            "zosd runs from the node's /usr: {}",
            String::from_utf8_lossy(&exe)
        );
        assert_eq!(listed_version(&user, n.node_id.unwrap()), booted);
    }
    wait_reports(
        &state.grid_url,
        &ids,
        &booted,
        UpgradeState::Committed,
        Duration::from_secs(120),
        logs,
    )
    .await;

    // A network across both nodes: each runs a userspace WireGuard for it.
    let list = ids.iter().map(u32::to_string).collect::<Vec<_>>().join(",");
    let made = user.zos(&["network", "create", "lan", "--nodes", &list, "--json"]);
    assert_eq!(made["nodes"].as_array().map(Vec::len), Some(2), "{made}");
    let n1 = &state.nodes[0];
    let ns = nr_netns(n1, user.twin(), "lan");
    assert!(ping(&ns, "10.20.3.1", 10), "node 1 reaches node 2 over lan");
    let wireguard =
        |n: &zos_testkit::devnet::DevnetNode| pids_in_namespace_of(n.pid, "boringtun-cli");
    let before: Vec<Vec<i32>> = state.nodes.iter().map(wireguard).collect();
    assert!(before.iter().all(|p| !p.is_empty()), "{before:?}");
    let zosd_before: Vec<Vec<i32>> = state
        .nodes
        .iter()
        .map(|n| pids_in_namespace_of(n.pid, "zosd"))
        .collect();

    // The next release: the same zosd under the next version.
    let published = Instant::now();
    let next = supervised::publish_runtime(state, &opts, None, None)
        .await
        .unwrap_or_else(|e| panic!("publishing the next version: {e}"));
    assert_ne!(next, booted);
    wait_reports(
        &state.grid_url,
        &ids,
        &next,
        UpgradeState::Committed,
        Duration::from_secs(180),
        logs,
    )
    .await;
    eprintln!(
        "publish of {next} to both nodes committed: {:?}",
        published.elapsed()
    );
    for (i, n) in state.nodes.iter().enumerate() {
        let log = std::fs::read_to_string(&n.log).unwrap();
        assert!(
            log.contains("health gate passed: committed"),
            "{}",
            tail(&log, 4000)
        );
        assert_eq!(listed_version(&user, n.node_id.unwrap()), next);
        let zosd = pids_in_namespace_of(n.pid, "zosd");
        assert_eq!(zosd.len(), 1, "{zosd:?}");
        assert_ne!(zosd, zosd_before[i], "node {} runs a new zosd", n.index);
        assert_eq!(
            wireguard(n),
            before[i],
            "node {}'s WireGuard kept its PID",
            n.index
        );
    }
    assert!(
        ping(&ns, "10.20.3.1", 10),
        "the network still carries traffic after the upgrade"
    );
}
