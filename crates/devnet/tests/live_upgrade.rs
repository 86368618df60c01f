//! The live upgrade of a devnet of four namespace nodes supervised by zos-init (issue 16), under
//! a machine: the guest image and an application flist on the devnet's hub, a network `lan`
//! across the four nodes, and a zmachine on node 1 (QEMU under TCG, its root on virtiofs) with
//! a public IP and an address on `lan`, serving HTTP. Two HTTP loops run through the whole
//! upgrade: from the devnet's stand-in for the internet to the machine's public IP, and from
//! node 2's side of `lan` to the machine's private address over WireGuard. Then:
//!
//! 1. the next release (the same zosd under the next version) is published: every node hears
//!    the grid's notice, switches and passes its health gate; every node reports `committed`
//!    and `zos node list` shows the new version; neither loop saw a failed request; QEMU,
//!    virtiofsd and every node's WireGuard (boringtun) keep their PIDs;
//! 2. a bad release whose zosd ends at start: every node rolls back by itself as a crash loop,
//!    `zos release status` says why, the grid halts the rollout, and the machine never stops
//!    answering (its processes keep their PIDs again).
//!
//! The single-node variants with a node VM (including a release that misses the gate) are
//! `vm_upgrade.rs`; the rollout's waves and the halt threshold on larger fleets are the grid's
//! tests (`crates/grid/tests/rollout.rs`).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use zos_client::release::ReleaseClient;
use zos_testkit::devnet::{DevnetNode, supervised};
use zos_testkit::guest::{VmBed, http_loop, public_probe, vm_bed_supervised, wait_http};
use zos_testkit::require_root;
use zos_testkit::upgrade::{listed_version, pids_in_namespace_of, reports, wait_reports};
use zos_testkit::user::nr_netns;
use zos_types::release::RunMode;
use zos_types::release::fleet::UpgradeState;

fn tail(s: &str, n: usize) -> &str {
    let mut at = s.len().saturating_sub(n);
    while !s.is_char_boundary(at) {
        at += 1;
    }
    &s[at..]
}

/// The PIDs of the node processes a live upgrade must not touch: the machine's QEMU and
/// virtiofsd on `machine_node`, every node's WireGuard.
fn workload_pids(nodes: &[DevnetNode], machine_node: usize) -> Vec<(String, Vec<i32>)> {
    let m = &nodes[machine_node];
    let mut out = vec![
        (
            "qemu".to_string(),
            pids_in_namespace_of(m.pid, "qemu-system-x86_64"),
        ),
        (
            "virtiofsd".to_string(),
            pids_in_namespace_of(m.pid, "virtiofsd"),
        ),
    ];
    for n in nodes {
        out.push((
            format!("node {} wireguard", n.index),
            pids_in_namespace_of(n.pid, "boringtun-cli"),
        ));
    }
    out
}

#[tokio::test(flavor = "multi_thread")]
async fn four_supervised_nodes_upgrade_live_under_a_machine_with_no_failed_request() {
    if !require_root("four_supervised_nodes_upgrade_live_under_a_machine_with_no_failed_request") {
        return;
    }
    let zos = zos_testkit::workspace_binary("zos").expect("zos is built (cargo build --workspace)");
    let started = Instant::now();
    let VmBed {
        net,
        user,
        flist,
        work,
    } = vm_bed_supervised(4, &zos).await;
    eprintln!(
        "4 supervised nodes with the guest image and lan after {:?}",
        started.elapsed()
    );
    let state = &net.state;
    let logs = || {
        state
            .nodes
            .iter()
            .map(|n| {
                let log = std::fs::read_to_string(&n.log).unwrap_or_default();
                format!("node {} log:\n{}\n", n.index, tail(&log, 2500))
            })
            .collect::<String>()
    };
    let ids: Vec<u32> = state.nodes.iter().map(|n| n.node_id.unwrap()).collect();
    let opts = state.supervised.clone().expect("a supervised devnet");
    let booted = ReleaseClient::new(&state.grid_url)
        .unwrap()
        .list(RunMode::Dev)
        .await
        .unwrap()[0]
        .release
        .version
        .clone();

    // The machine: a public IP and an address on lan, on node 1.
    let (probe, pubnet) = public_probe(state);
    let yaml = format!(
        "workloads:\n  - name: pub\n    type: ip\n    data: {{v4: true}}\n  - name: web\n    type: zmachine\n    data:\n      flist: {flist}\n      network: {{public_ip: pub, interfaces: [{{network: lan, ip: 10.20.2.5}}]}}\n      compute_capacity: {{cpu: 1, memory: 384M}}\n      entrypoint: /start.sh\n      env: {{ROLE: web}}\n"
    );
    let res = user.deploy(work.path(), "web.yaml", &yaml, ids[0]);
    let web = res["workloads"]
        .as_array()
        .and_then(|w| w.iter().find(|w| w["name"] == "web"))
        .cloned()
        .unwrap_or_else(|| panic!("no machine in {res}"));
    assert_eq!(web["state"], "ok", "{res}");
    let public = web["data"]["public_ip"].as_str().unwrap().to_string();
    assert!(public.starts_with(&format!("{pubnet}.10")), "{web}");
    let public = format!("{}:8080", public.split('/').next().unwrap());
    let private = "10.20.2.5:8080";
    let lan_side = nr_netns(&state.nodes[1], user.twin(), "lan");
    wait_http(probe.name(), &public, "/", "hello from web", 240).await;
    wait_http(&lan_side, private, "/", "hello from web", 60).await;
    eprintln!("the machine answers after {:?}", started.elapsed());
    let pids = workload_pids(&state.nodes, 0);
    for (what, p) in &pids {
        assert!(!p.is_empty(), "no {what} process: {pids:?}");
    }
    wait_reports(
        &state.grid_url,
        &ids,
        &booted,
        UpgradeState::Committed,
        Duration::from_secs(60),
        logs,
    )
    .await;

    // 1. The next release, with both loops running.
    let stop = Arc::new(AtomicBool::new(false));
    let every = Duration::from_millis(100);
    let loops = [
        http_loop(
            probe.name(),
            &public,
            "/",
            "hello from web",
            every,
            stop.clone(),
        ),
        http_loop(
            &lan_side,
            private,
            "/",
            "hello from web",
            every,
            stop.clone(),
        ),
    ];
    let published = Instant::now();
    let next = supervised::publish_runtime(state, &opts, None, None)
        .await
        .unwrap_or_else(|e| panic!("publishing the next version: {e}"));
    wait_reports(
        &state.grid_url,
        &ids,
        &next,
        UpgradeState::Committed,
        Duration::from_secs(180),
        logs,
    )
    .await;
    let to_committed = published.elapsed();
    // A little more traffic after the last commit: the new zosds are at work.
    tokio::time::sleep(Duration::from_secs(3)).await;
    stop.store(true, Ordering::SeqCst);
    let [public_loop, lan_loop] = loops.map(|l| l.join().unwrap());
    eprintln!(
        "publish of {next} to 4 nodes committed: {to_committed:?}; public loop {public_loop:?}; lan loop {lan_loop:?}"
    );
    assert_eq!(public_loop.failed, 0, "{public_loop:?}");
    assert_eq!(lan_loop.failed, 0, "{lan_loop:?}");
    assert!(public_loop.ok > 0 && lan_loop.ok > 0);
    assert_eq!(workload_pids(&state.nodes, 0), pids, "processes kept");
    for n in &state.nodes {
        assert_eq!(listed_version(&user, n.node_id.unwrap()), next);
    }

    // 2. A bad release: zosd ends at once (coreutils' false on top of the runtime).
    let bad_dir = work.path().join("bad");
    std::fs::create_dir_all(bad_dir.join("usr/bin")).unwrap();
    std::fs::copy("/bin/false", bad_dir.join("usr/bin/zosd")).unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let public_loop = http_loop(
        probe.name(),
        &public,
        "/",
        "hello from web",
        every,
        stop.clone(),
    );
    let rolling = Instant::now();
    let bad = supervised::publish_runtime(state, &opts, None, Some(&bad_dir))
        .await
        .unwrap_or_else(|e| panic!("publishing the bad version: {e}"));
    // Every node that took it rolls back by itself; the grid halts the rollout after the first
    // rollback (one of four is more than its 20 %), so a node that checks only after the halt
    // is told the release before and never takes it.
    let deadline = Instant::now() + Duration::from_secs(180);
    let got = loop {
        let (got, halted) = reports(&state.grid_url, &bad).await;
        let settled = got
            .iter()
            .all(|(_, r)| matches!(r.state, UpgradeState::RolledBack | UpgradeState::Pending));
        let rolled = got
            .iter()
            .filter(|(_, r)| r.state == UpgradeState::RolledBack)
            .count();
        if halted && settled && rolled > 0 {
            break got;
        }
        assert!(
            Instant::now() < deadline,
            "{got:?} halted={halted}\n{}",
            logs()
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    eprintln!(
        "publish of a bad release to its rollout halted and every taker rolled back: {:?} ({} of 4 took it)",
        rolling.elapsed(),
        got.iter()
            .filter(|(_, r)| r.state == UpgradeState::RolledBack)
            .count()
    );
    for (_, r) in got
        .iter()
        .filter(|(_, r)| r.state == UpgradeState::RolledBack)
    {
        let reason = r.reason.clone().unwrap_or_default();
        assert!(reason.contains("crash loop"), "{reason}");
    }
    let status = user.zos(&[
        "release",
        "status",
        "--runmode",
        "dev",
        "--release-version",
        &bad,
        "--json",
    ]);
    assert!(status.to_string().contains("crash loop"), "{status}");
    assert!(
        status.to_string().contains("rolled back"),
        "the grid says why it halted: {status}"
    );
    // Back on the good version: each node's zosd answers it again over the relay.
    let farmer = state.farmer_client().unwrap();
    let back = Instant::now() + Duration::from_secs(120);
    for n in &state.nodes {
        loop {
            let v = farmer
                .node(n.twin_id.unwrap())
                .call::<zos_types::node_api::Version>(&())
                .await
                .map(|v| v.zos)
                .map_err(|e| e.to_string());
            if v.as_deref() == Ok(next.as_str()) {
                break;
            }
            assert!(
                Instant::now() < back,
                "node {} back on {next}: {v:?}\n{}",
                n.index,
                logs()
            );
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        assert_eq!(listed_version(&user, n.node_id.unwrap()), next);
    }
    stop.store(true, Ordering::SeqCst);
    let public_loop = public_loop.join().unwrap();
    eprintln!("during the rollback: public loop {public_loop:?}");
    assert_eq!(public_loop.failed, 0, "{public_loop:?}");
    assert_eq!(workload_pids(&state.nodes, 0), pids, "processes kept");
    let d = user.zos(&[
        "deployment",
        "get",
        &res["contract_id"].as_u64().unwrap().to_string(),
        "--json",
    ]);
    let all_ok = d["workloads"]
        .as_array()
        .is_some_and(|w| w.iter().all(|w| w["state"] == "ok"));
    assert!(all_ok, "{d}");
    drop(probe);
}
