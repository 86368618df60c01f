//! Billing on a devnet, end to end: a grid billing every 2 s with 15 s of grace and a zosd node.
//! Two twins with a few units each deploy a zmount disk; their balances run out, their
//! contracts go into grace and the node pauses the disks. Alice's deposit pays her debt and the
//! node resumes her disk; Bob pays nothing, his grace runs out, his contract is cancelled and the
//! node removes his disk and frees its capacity. `zos account history` tells each of them so.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::Value;
use zos_testkit::devnet::{DevnetBilling, DevnetGuard};
use zos_testkit::process::wait_until;
use zos_testkit::require_root;
use zos_testkit::user::User;
use zos_types::capacity::GIB;
use zos_types::contract::ContractState;
use zos_types::node_api::GetStatistics;

/// A 6 GiB disk: 0.03 SU, 1 500 units an hour at version 0 of the prices, so every period of
/// 2 s the node reports costs 1 unit (each line rounds up).
const DISK: &str = "workloads:\n  - name: disk\n    type: zmount\n    data: {size: 6G}\n";

async fn user(grid: &str) -> User {
    User::new(grid, Path::new(env!("CARGO_BIN_EXE_zos")))
        .await
        .unwrap()
}

/// The state of the deployment's disk as `zos deployment get --json` says it.
fn disk_state(u: &User, contract: u64) -> String {
    let (ok, out, _) = u.zos_raw(&["deployment", "get", &contract.to_string(), "--json"]);
    if !ok {
        return String::new();
    }
    let d: Value = serde_json::from_str(&out).unwrap_or_default();
    d["workloads"][0]["state"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

async fn disk_becomes(u: &User, contract: u64, state: &str) -> bool {
    wait_until(Duration::from_secs(40), Duration::from_millis(300), || {
        let s = disk_state(u, contract);
        async move { (s == state).then_some(()) }
    })
    .await
    .is_some()
}

async fn contract_becomes(u: &User, contract: u64, state: ContractState) -> bool {
    wait_until(Duration::from_secs(40), Duration::from_millis(300), || {
        let c = u.client.clone();
        async move {
            c.get_contract(contract)
                .await
                .ok()
                .filter(|k| k.state == state)
        }
    })
    .await
    .is_some()
}

/// The kinds of the twin's account events, oldest first.
fn history(u: &User) -> Vec<String> {
    let h = u.zos(&["account", "history", "--limit", "1000", "--json"]);
    let mut kinds: Vec<String> = h
        .as_array()
        .unwrap_or_else(|| panic!("history is a list: {h}"))
        .iter()
        .map(|e| e["kind"].as_str().unwrap().to_string())
        .collect();
    kinds.reverse();
    kinds
}

/// The files and directories under `root` named `name`.
fn find(root: &Path, name: &str) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let p = e.path();
            if e.file_name().to_string_lossy() == name {
                out.push(p.clone());
            }
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                stack.push(p);
            }
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread")]
async fn running_out_of_money_pauses_a_deposit_resumes_and_grace_running_out_cancels() {
    if !require_root("running_out_of_money_pauses_a_deposit_resumes_and_grace_running_out_cancels")
    {
        return;
    }
    let net = DevnetGuard::up_billing(1, Duration::from_secs(1), DevnetBilling::new(2, 15))
        .await
        .unwrap();
    let grid = net.state.grid_url.clone();
    let n1 = net.state.nodes[0].clone();
    let node = n1.node_id.unwrap();
    let (alice, bob) = (user(&grid).await, user(&grid).await);
    let work = tempfile::tempdir().unwrap();
    let mut contracts = Vec::new();
    for u in [&alice, &bob] {
        // Three units: three periods of the disk.
        u.zos(&["account", "deposit", "0.0000003", "--json"]);
        let res = u.deploy(work.path(), "disk.yaml", DISK, node);
        assert_eq!(res["workloads"][0]["state"], "ok", "{res}");
        contracts.push(res["contract_id"].as_u64().unwrap());
    }
    let (a, b) = (contracts[0], contracts[1]);
    let bob_disk = format!("{}-{b}-disk", bob.twin());
    assert_eq!(find(&n1.mount_root, &bob_disk).len(), 1, "bob's disk file");
    let stats = alice.call::<GetStatistics>(&n1, &()).await;
    assert_eq!(stats.used.sru - stats.system.sru, 12 * GIB, "{stats:?}");

    // The money runs out: grace, and the node pauses the disks.
    assert!(
        contract_becomes(&alice, a, ContractState::GracePeriod).await,
        "alice's contract never went into grace"
    );
    assert!(disk_becomes(&alice, a, "paused").await, "alice's disk");
    let acct = alice.zos(&["account", "balance", "--json"]);
    assert_eq!(acct["in_grace"], serde_json::json!([a]), "{acct}");
    // Alice's deposit pays her debt: grace ends and her disk resumes.
    alice.zos(&["account", "deposit", "1", "--json"]);
    assert!(
        contract_becomes(&bob, b, ContractState::GracePeriod).await,
        "bob's contract never went into grace"
    );
    assert!(disk_becomes(&bob, b, "paused").await, "bob's disk");
    assert!(
        contract_becomes(&alice, a, ContractState::Created).await,
        "alice's deposit did not end grace"
    );
    assert!(disk_becomes(&alice, a, "ok").await, "alice's disk resumes");
    let acct = alice.zos(&["account", "balance", "--json"]);
    assert_eq!(acct["debt"], 0, "{acct}");
    assert_eq!(acct["in_grace"], serde_json::json!([]), "{acct}");

    // Bob pays nothing: grace runs out, his contract is cancelled, the node removes his disk
    // and frees its capacity.
    assert!(
        contract_becomes(&bob, b, ContractState::Deleted).await,
        "bob's grace never ran out"
    );
    let freed = wait_until(Duration::from_secs(30), Duration::from_millis(300), || {
        let (root, name) = (n1.mount_root.clone(), bob_disk.clone());
        let u = &alice;
        let n = &n1;
        async move {
            let stats = u.call::<GetStatistics>(n, &()).await;
            (find(&root, &name).is_empty() && stats.used.sru - stats.system.sru == 6 * GIB)
                .then_some(())
        }
    })
    .await;
    assert!(
        freed.is_some(),
        "bob's disk file or capacity left on the node"
    );
    let mine = bob.zos(&["deployment", "list", "--json"]);
    assert_eq!(mine, serde_json::json!([]), "bob has no live deployment");
    assert_eq!(disk_state(&alice, a), "ok", "alice's disk is untouched");

    // What each was told, in order.
    let alice_kinds = history(&alice);
    let at = |k: &str| {
        alice_kinds
            .iter()
            .position(|x| x == k)
            .unwrap_or_else(|| panic!("no {k} in {alice_kinds:?}"))
    };
    assert_eq!(alice_kinds[0], "deposit", "{alice_kinds:?}");
    assert!(at("bill_paid") < at("bill_unpaid"), "{alice_kinds:?}");
    assert!(at("bill_unpaid") <= at("grace_started"), "{alice_kinds:?}");
    let second_deposit = alice_kinds.iter().rposition(|x| x == "deposit").unwrap();
    assert!(at("grace_started") < second_deposit, "{alice_kinds:?}");
    assert_eq!(
        alice_kinds[second_deposit + 1..]
            .iter()
            .find(|k| *k != "bill_paid"),
        Some(&"grace_ended".to_string()),
        "the deposit pays the debts, then grace ends: {alice_kinds:?}"
    );
    assert!(!alice_kinds.contains(&"cancelled".to_string()));
    let bob_kinds = history(&bob);
    assert_eq!(
        bob_kinds.iter().filter(|k| *k == "deposit").count(),
        1,
        "{bob_kinds:?}"
    );
    let pos = |k: &str| bob_kinds.iter().position(|x| x == k);
    assert!(
        pos("bill_unpaid").is_some()
            && pos("grace_started").is_some()
            && pos("grace_started") < pos("cancelled"),
        "{bob_kinds:?}"
    );
    assert!(!bob_kinds.contains(&"grace_ended".to_string()));
}
