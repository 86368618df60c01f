//! The live upgrade of a real node VM (issue 16) with the real zosd: a devnet with a namespace
//! node and a node VM booted by network (as `vm_node.rs`), workloads on the VM node (a disk, a
//! volume and a private network shared with the namespace node), then:
//!
//! 1. the same node image published again as the next version: the node learns of it from the
//!    grid's notice on its uplink (its periodic check is an hour away), zos-init
//!    fetches and checks it, stops zosd, re-points `/usr` and starts the new zosd, which adopts
//!    the workloads and passes the health gate; the node reports `committed`, registers the
//!    new version (what `zos node list` shows), answers it to `version`, keeps its node id, and
//!    its workloads stay `ok` (the network still carries traffic);
//! 2. a bad release: the image with one more runtime flist on top whose `usr/bin/zosd` is
//!    coreutils' `false` (it ends at once): the node switches, sees the new zosd end three
//!    times, goes back to the previous runtime by itself and reports `rolled_back` with the
//!    reason, which the grid's release status shows (and the grid halts that rollout: the
//!    only node that took it rolled back); the node runs the good version again with its
//!    workloads `ok`, and never tries the bad one again;
//! 3. a release that fails the gate: one more runtime flist whose service list starts the real
//!    zosd against a grid that is not there, so it never registers nor gets its uplink up: the
//!    node waits out the gate, goes back and reports `rolled_back` with what was missing.
//!
//! One VM boot; under TCG here, so the test takes minutes. The figures it prints (publish to
//! committed, how long zosd did not answer) are in docs/benchmarks.md.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use serde_json::Value;
use zos_client::release::ReleaseClient;
use zos_testkit::devnet::{DevnetGuard, DevnetState, DevnetVm, VmOptions, vms};
use zos_testkit::guest::{build_node, devnet_release_key};
use zos_testkit::net::ping;
use zos_testkit::require_root;
use zos_testkit::upgrade::listed_version;
use zos_testkit::user::{User, nr_netns};
use zos_types::boot::NodeArg;
use zos_types::release::RunMode;
use zos_types::release::fleet::{NodeReport, UpgradeState};

fn vm(state: &DevnetState) -> DevnetVm {
    state.vms[0].clone()
}

fn tail(s: &str, n: usize) -> &str {
    let mut at = s.len().saturating_sub(n);
    while !s.is_char_boundary(at) {
        at += 1;
    }
    &s[at..]
}

/// The node's last report for `version`, and whether the grid halted that rollout.
async fn report(state: &DevnetState, node: u32, version: &str) -> (Option<NodeReport>, bool) {
    let s = ReleaseClient::new(&state.grid_url)
        .unwrap()
        .status(RunMode::Dev, Some(version.parse().unwrap()))
        .await
        .unwrap();
    let halted = s.halted.is_some_and(|h| h.by == "grid");
    (
        s.nodes
            .into_iter()
            .find(|n| n.node == node)
            .and_then(|n| n.report),
        halted,
    )
}

/// Waits up to `secs` for the node's report of `version` to be `state`; panics with the last
/// report and the console's end otherwise.
async fn wait_report(
    state: &DevnetState,
    node: u32,
    version: &str,
    want: UpgradeState,
    secs: u64,
) -> NodeReport {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        let (last, _) = report(state, node, version).await;
        if let Some(r) = &last
            && r.state == want
        {
            return r.clone();
        }
        if Instant::now() > deadline {
            panic!(
                "node {node} did not report {want} for {version} within {secs}s (last: {last:?})\nconsole:\n{}",
                tail(&vms::console(&vm(state)), 6000)
            );
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
}

/// The version the node answers over the relay.
async fn answered_version(state: &DevnetState, twin: u32) -> Result<String, String> {
    state
        .farmer_client()
        .map_err(|e| e.to_string())?
        .node(twin)
        .call::<zos_types::node_api::Version>(&())
        .await
        .map(|v| v.zos)
        .map_err(|e| e.to_string())
}

/// Asks the node for its version every second until `stop`; answers the longest time it did not
/// answer (the first failed ask to the next answer).
fn watch_answers(
    state: DevnetState,
    twin: u32,
    stop: Arc<AtomicBool>,
) -> tokio::task::JoinHandle<Duration> {
    tokio::spawn(async move {
        let mut longest = Duration::ZERO;
        let mut down_since: Option<Instant> = None;
        while !stop.load(Ordering::SeqCst) {
            let asked = Instant::now();
            let ok = tokio::time::timeout(Duration::from_secs(10), answered_version(&state, twin))
                .await
                .is_ok_and(|r| r.is_ok());
            match (ok, down_since) {
                (true, Some(t)) => {
                    longest = longest.max(t.elapsed());
                    down_since = None;
                }
                (false, None) => down_since = Some(asked),
                _ => {}
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
        if let Some(t) = down_since {
            longest = longest.max(t.elapsed());
        }
        longest
    })
}

/// Every workload of `contract` is `ok`, through the node (`zos deployment get`).
fn workloads_ok(user: &User, contract: u64) -> Result<(), Value> {
    let got = user.zos(&["deployment", "get", &contract.to_string(), "--json"]);
    let all_ok = got["workloads"]
        .as_array()
        .is_some_and(|w| !w.is_empty() && w.iter().all(|w| w["state"] == "ok"));
    if all_ok { Ok(()) } else { Err(got) }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_node_vm_upgrades_live_with_the_real_zosd_and_rolls_a_bad_release_back_by_itself() {
    let test = "a_node_vm_upgrades_live_with_the_real_zosd_and_rolls_a_bad_release_back_by_itself";
    if !require_root(test) {
        return;
    }
    let image = build_node();
    let (key, _) = devnet_release_key();
    // The devnet's short gate (120 s), and a periodic check an hour apart: the node learns of
    // each release from the grid's notice on its uplink, or not in this test's time.
    let opts = VmOptions::new(1, image, key).with_args(1, &[NodeArg::UpgradeCheck(3600)]);
    let started = Instant::now();
    let mut bed = DevnetGuard::up_with(1, Duration::from_secs(5), Some(opts.clone()))
        .await
        .unwrap_or_else(|e| panic!("devnet with a node VM: {e:#}"));
    eprintln!("devnet with a node VM online after {:?}", started.elapsed());
    let state = &mut bed.state;
    let id = vm(state).node_id.expect("the VM node registered");
    let twin = vm(state).twin_id.expect("the VM node has a twin");
    let releases = ReleaseClient::new(&state.grid_url).unwrap();
    let booted = releases.list(RunMode::Dev).await.unwrap()[0]
        .release
        .version
        .clone();

    // The node runs its release's version, not its build's: registration, list, answer.
    let zos = zos_testkit::workspace_binary("zos").expect("zos is built (cargo build --workspace)");
    let user = User::new(&state.grid_url, &zos).await.unwrap();
    assert_eq!(listed_version(&user, id), booted);
    assert_eq!(answered_version(state, twin).await.unwrap(), booted);
    // zos-init reports the version it booted once zosd wrote node.json.
    wait_report(state, id, &booted, UpgradeState::Committed, 300).await;

    // Workloads on the VM node: a disk, a volume, and a network with the namespace node.
    let dir = tempfile::tempdir().unwrap();
    let deployed: Value = user.deploy(
        dir.path(),
        "storage.yaml",
        "workloads:\n  - name: disk\n    type: zmount\n    data: {size: 1G}\n  - name: vol\n    type: volume\n    data: {size: 1G}\n",
        id,
    );
    let contract = deployed["contract_id"].as_u64().expect("a contract");
    workloads_ok(&user, contract).unwrap_or_else(|got| panic!("deployed: {got}"));
    let ns_node = state.nodes[0].clone();
    let ids = format!("{},{id}", ns_node.node_id.unwrap());
    let made = user.zos(&["network", "create", "lan", "--nodes", &ids, "--json"]);
    assert_eq!(made["nodes"].as_array().map(Vec::len), Some(2), "{made}");
    let ns_side = nr_netns(&ns_node, user.twin(), "lan");
    assert!(
        ping(&ns_side, "10.20.3.1", 5),
        "the namespace node reaches the VM node's network resource"
    );

    // 1. A good release: the same image as the next version.
    let stop = Arc::new(AtomicBool::new(false));
    let watcher = watch_answers(state.clone(), twin, stop.clone());
    let published = Instant::now();
    let good = vms::publish_image_as(state, &opts, None, None)
        .await
        .unwrap_or_else(|e| panic!("publishing the next version: {e}"));
    assert_ne!(good, booted);
    wait_report(state, id, &good, UpgradeState::Committed, 900).await;
    let to_committed = published.elapsed();
    stop.store(true, Ordering::SeqCst);
    let gap = watcher.await.unwrap();
    eprintln!(
        "publish to committed: {to_committed:?}; zosd did not answer for at most {gap:?} (asked every second)"
    );
    let log = vms::console(&vm(state));
    assert!(
        log.contains("health gate passed: committed"),
        "{}",
        tail(&log, 4000)
    );
    // It learned of the release over its uplink (the grid's notice), not only by its periodic
    // check: zosd heard the notice and zos-init checked at zosd's request.
    assert!(
        log.contains("the grid tells of a release")
            && log.contains("zosd asked for a release check"),
        "{}",
        tail(&log, 4000)
    );
    assert_eq!(answered_version(state, twin).await.unwrap(), good);
    assert_eq!(
        listed_version(&user, id),
        good,
        "the node registered its new version"
    );
    let n = zos_client::GridClient::new(&state.grid_url)
        .unwrap()
        .get_node(id)
        .await
        .unwrap();
    assert_eq!(n.twin_id, twin, "the same node");
    workloads_ok(&user, contract).unwrap_or_else(|got| panic!("after the upgrade: {got}"));
    assert!(
        ping(&ns_side, "10.20.3.1", 5),
        "the network still carries traffic after the upgrade"
    );

    // 2. A bad release: zosd is `false` (ends at once, no shell added).
    let bad_dir = dir.path().join("bad");
    std::fs::create_dir_all(bad_dir.join("usr/bin")).unwrap();
    std::fs::copy("/bin/false", bad_dir.join("usr/bin/zosd")).unwrap();
    let rolled = Instant::now();
    let bad = vms::publish_image_as(state, &opts, None, Some(&bad_dir))
        .await
        .unwrap_or_else(|e| panic!("publishing the bad version: {e}"));
    let r = wait_report(state, id, &bad, UpgradeState::RolledBack, 900).await;
    eprintln!(
        "publish of a bad release to rolled back: {:?}",
        rolled.elapsed()
    );
    let reason = r.reason.unwrap_or_default();
    assert!(reason.contains("crash loop"), "{reason}");
    // The reason is in `zos release status` for everyone to read.
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
    // The only node that took it rolled back: the grid halted the rollout by itself.
    let (_, halted) = report(state, id, &bad).await;
    assert!(halted, "{status}");
    // Back on the good version, which it answers and registers, with its workloads.
    back_on(state, twin, &good).await;
    assert_eq!(listed_version(&user, id), good);
    workloads_ok(&user, contract).unwrap_or_else(|got| panic!("after the rollback: {got}"));
    assert!(
        ping(&ns_side, "10.20.3.1", 5),
        "the network still carries traffic after the rollback"
    );
    let tries = |log: &str, version: &str| {
        log.lines()
            .filter(|l| {
                l.contains("release fetched and checked: switching")
                    && l.contains(&format!("version={version}"))
            })
            .count()
    };
    let log = vms::console(&vm(state));
    assert_eq!(tries(&log, &bad), 1, "{}", tail(&log, 4000));

    // 3. A release that fails the gate: its service list runs the real zosd against a grid that
    // is not there (`ZOS_GRID`), so it never registers and its uplink never comes up.
    let gateless = dir.path().join("gateless");
    std::fs::create_dir_all(gateless.join("usr/share/zos")).unwrap();
    std::fs::write(
        gateless.join("usr/share/zos/services.json"),
        serde_json::json!([{
            "name": "zosd",
            "exec": ["/usr/bin/zosd"],
            "env": {"ZOS_GRID": "http://127.0.0.1:9"},
        }])
        .to_string(),
    )
    .unwrap();
    let missed = Instant::now();
    let lost = vms::publish_image_as(state, &opts, None, Some(&gateless))
        .await
        .unwrap_or_else(|e| panic!("publishing the version that misses the gate: {e}"));
    let r = wait_report(state, id, &lost, UpgradeState::RolledBack, 1200).await;
    eprintln!(
        "publish of a release that misses the gate to rolled back: {:?}",
        missed.elapsed()
    );
    let reason = r.reason.unwrap_or_default();
    assert!(
        reason.contains("health gate missed") && reason.contains("uplink down"),
        "{reason}"
    );
    back_on(state, twin, &good).await;
    assert_eq!(listed_version(&user, id), good);
    workloads_ok(&user, contract).unwrap_or_else(|got| panic!("after the second rollback: {got}"));
    assert!(
        ping(&ns_side, "10.20.3.1", 5),
        "the network still carries traffic after the second rollback"
    );

    // Neither rolled-back release was tried again (the gate's wait spans several checks), and
    // their reports stay.
    let log = vms::console(&vm(state));
    assert_eq!(tries(&log, &bad), 1, "{}", tail(&log, 4000));
    assert_eq!(tries(&log, &lost), 1, "{}", tail(&log, 4000));
    for v in [&bad, &lost] {
        let (r, halted) = report(state, id, v).await;
        assert_eq!(r.map(|r| r.state), Some(UpgradeState::RolledBack), "{v}");
        assert!(halted, "{v}");
    }
}

/// Waits until the node answers `version` over the relay with `good` again.
async fn back_on(state: &DevnetState, twin: u32, good: &str) {
    let back = Instant::now() + Duration::from_secs(180);
    loop {
        if answered_version(state, twin).await.as_deref() == Ok(good) {
            return;
        }
        assert!(
            Instant::now() < back,
            "the node answers {good} again: {}",
            tail(&vms::console(&vm(state)), 4000)
        );
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
}
