//! Deployments end to end on a devnet: the CLI and the client against a real grid, relay and
//! zosd with real btrfs pools on loop devices.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use serde_json::{Value, json};
use zos_client::{ClientError, GridClient};
use zos_testkit::devnet::{self, DevnetGuard};
use zos_testkit::process::wait_until;
use zos_testkit::require_root;
use zos_types::Identity;
use zos_types::capacity::{GIB, MIB};
use zos_types::contract::CreateNodeContract;
use zos_types::deployment::{
    Deployment, ResultState, SignatureRequest, SignatureRequirement, Workload,
};
use zos_types::envelope::{Envelope, Seal};
use zos_types::node_api::{
    Changes, ChangesBody, ContractBody, Deploy, ErrorKind, Get, GetStatistics, NodeCommand,
    PoolType, Pools, Update,
};
use zos_types::workload::WorkloadType;

/// A user with a key and a twin on the devnet's grid.
struct User {
    client: GridClient,
    key_file: tempfile::NamedTempFile,
}

async fn user(grid: &str) -> User {
    let id = Identity::generate().unwrap();
    let key_file = tempfile::NamedTempFile::new().unwrap();
    zos_client::keyfile::save_identity(key_file.path(), &id, 0o600).unwrap();
    let c = GridClient::new(grid).unwrap().with_identity(id);
    let twin = c.create_twin(None).await.unwrap();
    User {
        client: c.with_twin(twin.id),
        key_file,
    }
}

impl User {
    fn zos(&self, grid: &str, args: &[&str]) -> (bool, String, String) {
        let out = Command::new(env!("CARGO_BIN_EXE_zos"))
            .args(args)
            .args(["--grid", grid, "--key"])
            .arg(self.key_file.path())
            .output()
            .unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into(),
            String::from_utf8_lossy(&out.stderr).into(),
        )
    }

    fn twin(&self) -> u32 {
        self.client.twin_id().unwrap()
    }

    fn deployment(&self, workloads: Vec<Workload>) -> Deployment {
        Deployment {
            version: 0,
            twin_id: self.twin(),
            contract_id: 0,
            metadata: String::new(),
            description: String::new(),
            signature_requirement: SignatureRequirement {
                requests: vec![SignatureRequest {
                    twin_id: self.twin(),
                    required: true,
                    weight: 1,
                }],
                weight_required: 1,
                signatures: vec![],
            },
            workloads,
        }
    }

    /// Contract for `d` on `node`, then signed.
    async fn contract(&self, d: &mut Deployment, node: u32) {
        let c = self
            .client
            .create_node_contract(&CreateNodeContract {
                node_id: node,
                deployment_hash: d.hash().unwrap(),
                public_ips: 0,
            })
            .await
            .unwrap();
        d.contract_id = c.id;
        d.sign(node, self.twin(), self.client.identity().unwrap())
            .unwrap();
    }
}

fn workload(name: &str, kind: WorkloadType, data: Value) -> Workload {
    Workload {
        version: 0,
        name: name.into(),
        kind,
        data,
        metadata: String::new(),
        description: String::new(),
        result: None,
    }
}

fn write(dir: &Path, name: &str, text: &str) -> String {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p.display().to_string()
}

/// The files and subvolumes a node made for workload `wid`, found under its mount root.
fn find(root: &Path, wid: &str) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let p = e.path();
            if e.file_name().to_string_lossy() == wid {
                out.push(p.clone());
            }
            if e.file_type().map(|t| t.is_dir()).unwrap_or(false) && p.components().count() < 14 {
                stack.push(p);
            }
        }
    }
    out
}

async fn node_twin(grid: &GridClient, node: u32) -> u32 {
    grid.get_node(node).await.unwrap().twin_id
}

async fn get(u: &User, node_twin: u32, contract: u64) -> Result<Deployment, ClientError> {
    u.client
        .node(node_twin)
        .call::<Get>(&ContractBody {
            contract_id: contract,
        })
        .await
}

#[tokio::test(flavor = "multi_thread")]
async fn deploy_update_cancel_from_the_command_line() {
    if !require_root("deploy_update_cancel_from_the_command_line") {
        return;
    }
    let net = DevnetGuard::up(1, Duration::from_secs(2)).await.unwrap();
    let grid = net.state.grid_url.clone();
    let node = net.state.nodes[0].node_id.unwrap();
    let root = net.state.nodes[0].mount_root.clone();
    let u = user(&grid).await;
    let dir = tempfile::tempdir().unwrap();
    let file = write(
        dir.path(),
        "d.yaml",
        "workloads:\n  - name: disk\n    type: zmount\n    data: {size: 2G}\n  - name: vol\n    type: volume\n    data: {size: 1G}\n",
    );
    let (ok, out, err) = u.zos(
        &grid,
        &["deploy", &file, "--node", &node.to_string(), "--json"],
    );
    assert!(ok, "{err}");
    let res: Value = serde_json::from_str(&out).unwrap();
    let contract = res["contract_id"].as_u64().unwrap();
    for w in res["workloads"].as_array().unwrap() {
        assert_eq!(w["state"], "ok", "{w}");
    }
    // Reality on the node: a sparse file of 2 GiB and a subvolume.
    let wid = |n: &str| format!("{}-{contract}-{n}", u.twin());
    let disk = find(&root, &wid("disk"));
    assert_eq!(disk.len(), 1, "{disk:?}");
    let meta = std::fs::metadata(&disk[0]).unwrap();
    assert_eq!(meta.len(), 2 * GIB);
    assert!(
        zos_testkit::disk::allocated_bytes(&disk[0]).unwrap() < 64 * MIB,
        "sparse until written"
    );
    let vol = find(&root, &wid("vol"));
    assert_eq!(vol.len(), 1, "{vol:?}");
    assert!(vol[0].is_dir());
    // The grid learns what the workloads use from the next uptime reports.
    assert!(
        used_sru_becomes(&u.client, node, 3 * GIB).await,
        "the registry never showed 3 GiB of SSD used"
    );

    // Update: the volume grows to 2 GiB; the disk is untouched.
    let grown = write(
        dir.path(),
        "g.yaml",
        "workloads:\n  - name: disk\n    type: zmount\n    data: {size: 2G}\n  - name: vol\n    type: volume\n    data: {size: 2G}\n",
    );
    let (ok, _, err) = u.zos(
        &grid,
        &[
            "deployment",
            "update",
            &contract.to_string(),
            &grown,
            "--json",
        ],
    );
    assert!(ok, "{err}");
    let (ok, out, _) = u.zos(
        &grid,
        &["deployment", "changes", &contract.to_string(), "--json"],
    );
    assert!(ok);
    let log: Vec<Value> = serde_json::from_str(&out).unwrap();
    let vol_oks: Vec<&Value> = log
        .iter()
        .filter(|e| e["name"] == "vol" && e["result"]["state"] == "ok")
        .collect();
    assert_eq!(vol_oks.len(), 2, "created then grown: {log:?}");
    assert_eq!(vol_oks[1]["version"], 1);
    let disk_oks = log
        .iter()
        .filter(|e| e["name"] == "disk" && e["result"]["state"] == "ok")
        .count();
    assert_eq!(disk_oks, 1, "the disk was not touched by the update");
    let pools = u
        .client
        .node(node_twin(&u.client, node).await)
        .call::<Pools>(&())
        .await
        .unwrap();
    let ssd_used: u64 = pools
        .iter()
        .filter(|p| p.kind == PoolType::Ssd)
        .map(|p| p.used)
        .sum();
    let stats = u
        .client
        .node(node_twin(&u.client, node).await)
        .call::<GetStatistics>(&())
        .await
        .unwrap();
    let system_sru = stats.system.sru;
    assert_eq!(
        ssd_used,
        system_sru + 4 * GIB,
        "2 GiB disk + 2 GiB volume + the cache: {pools:?}"
    );

    // Shrinking is refused: the command says so and fails, the volume keeps its size.
    let shrunk = write(
        dir.path(),
        "s.yaml",
        "workloads:\n  - name: disk\n    type: zmount\n    data: {size: 2G}\n  - name: vol\n    type: volume\n    data: {size: 512M}\n",
    );
    let (ok, _, err) = u.zos(
        &grid,
        &["deployment", "update", &contract.to_string(), &shrunk],
    );
    assert!(!ok, "a refused shrink fails the command");
    assert!(err.contains("vol:"), "{err}");
    let d = get(&u, node_twin(&u.client, node).await, contract)
        .await
        .unwrap();
    assert_eq!(
        d.workloads[1].result.as_ref().unwrap().state,
        ResultState::Ok
    );

    // Cancel: both go, capacity is freed.
    let (ok, _, err) = u.zos(&grid, &["deployment", "cancel", &contract.to_string()]);
    assert!(ok, "{err}");
    assert!(find(&root, &wid("disk")).is_empty());
    assert!(find(&root, &wid("vol")).is_empty());
    let stats = u
        .client
        .node(node_twin(&u.client, node).await)
        .call::<GetStatistics>(&())
        .await
        .unwrap();
    assert_eq!(
        stats.used, stats.system,
        "nothing but the system is used: {stats:?}"
    );
    assert_eq!(stats.users.deployments, 0);
    assert!(
        used_sru_becomes(&u.client, node, 0).await,
        "the registry still shows SSD used after the cancel"
    );
}

/// Waits until the registry shows `sru` bytes of SSD used on `node`.
async fn used_sru_becomes(c: &GridClient, node: u32, sru: u64) -> bool {
    wait_until(Duration::from_secs(20), Duration::from_millis(250), || {
        let c = c.clone();
        async move { c.get_node(node).await.ok().filter(|n| n.used.sru == sru) }
    })
    .await
    .is_some()
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_deployments_are_refused_and_nothing_is_stored() {
    if !require_root("bad_deployments_are_refused_and_nothing_is_stored") {
        return;
    }
    let net = DevnetGuard::up(2, Duration::from_secs(2)).await.unwrap();
    let grid = net.state.grid_url.clone();
    let n1 = net.state.nodes[0].node_id.unwrap();
    let n2 = net.state.nodes[1].node_id.unwrap();
    let u = user(&grid).await;
    let t1 = node_twin(&u.client, n1).await;
    let disks = || vec![workload("disk", WorkloadType::Zmount, json!({"size": GIB}))];

    let refused = |d: Deployment, expect: String| {
        let c = u.client.clone();
        async move {
            let err = c.node(t1).call::<Deploy>(&d).await.unwrap_err();
            assert!(
                err.to_string().contains(expect.as_str()),
                "expected {expect:?}, got {err}"
            );
            let gone = c
                .node(t1)
                .call::<Get>(&ContractBody {
                    contract_id: d.contract_id,
                })
                .await
                .unwrap_err();
            assert_eq!(gone.node_error(), Some(ErrorKind::NotFound), "{gone}");
        }
    };

    // Tampered after the contract was made.
    let mut d = u.deployment(disks());
    u.contract(&mut d, n1).await;
    d.workloads[0].data = json!({"size": 2 * GIB});
    d.sign(n1, u.twin(), u.client.identity().unwrap()).unwrap();
    refused(d, "differs from the contract".into()).await;

    // A contract for another node.
    let mut d = u.deployment(disks());
    u.contract(&mut d, n2).await;
    d.sign(n1, u.twin(), u.client.identity().unwrap()).unwrap();
    refused(d, format!("is for node {n2}")).await;

    // A missing required signature, and too little weight.
    let mut d = u.deployment(disks());
    d.signature_requirement.requests.push(SignatureRequest {
        twin_id: 1,
        required: true,
        weight: 1,
    });
    u.contract(&mut d, n1).await;
    refused(d, "required signature of twin 1 is missing".into()).await;
    let mut d = u.deployment(disks());
    d.signature_requirement.requests.push(SignatureRequest {
        twin_id: 1,
        required: false,
        weight: 5,
    });
    d.signature_requirement.weight_required = 3;
    u.contract(&mut d, n1).await;
    refused(d, "below the required 3".into()).await;

    // More memory or disk than the node has.
    let mut d = u.deployment(vec![workload(
        "huge",
        WorkloadType::Zmount,
        json!({"size": 500 * GIB}),
    )]);
    u.contract(&mut d, n1).await;
    refused(d, "of SSD asked".into()).await;
    // A flist on the devnet's hub (a flist elsewhere is refused before capacity is looked at).
    let on_hub = format!(
        "{}/api/v1/hub/flists/{}/alpine.fl",
        net.state.grid_node_url,
        u.twin()
    );
    let vm = json!({
        "flist": on_hub,
        "network": {"interfaces": [{"network": "net", "ip": "10.1.1.2"}]},
        "compute_capacity": {"cpu": 1, "memory": 1024 * GIB},
    });
    let mut d = u.deployment(vec![workload("vm", WorkloadType::Zmachine, vm)]);
    u.contract(&mut d, n1).await;
    refused(d, "of memory asked".into()).await;
    let mut d = u.deployment(vec![workload(
        "db",
        WorkloadType::Zdb,
        json!({"size": 500 * GIB, "mode": "user"}),
    )]);
    u.contract(&mut d, n1).await;
    refused(d, "of HDD asked".into()).await;

    // Larger than the limit: refused before anything is parsed.
    let mut d = u.deployment(disks());
    d.description = "x".repeat(300 * 1024);
    d.contract_id = 999;
    let err = u.client.node(t1).call::<Deploy>(&d).await.unwrap_err();
    assert!(err.to_string().contains("larger than the limit"), "{err}");
    assert_eq!(err.node_error(), Some(ErrorKind::Invalid), "{err}");

    // A replayed envelope: the relay refuses the second copy.
    let mut d = u.deployment(disks());
    u.contract(&mut d, n1).await;
    let key = u.client.get_twin(t1).await.unwrap().public_key;
    let seal = Seal {
        source: u.twin(),
        destination: t1,
        destination_key: &key,
        command: Deploy::NAME,
        reply_to: None,
        expiration: zos_types::auth::unix_now() + 60,
    };
    let env = Envelope::seal(
        u.client.identity().unwrap(),
        &seal,
        &serde_json::to_vec(&d).unwrap(),
    )
    .unwrap();
    u.client.relay_send(&env).await.unwrap();
    let again = u.client.relay_send(&env).await.unwrap_err();
    assert_eq!(again.status(), Some(409), "{again}");

    // A workload name reused with another type in an update.
    let accepted = get(&u, t1, d.contract_id).await.unwrap();
    let mut next = accepted.clone();
    next.version = 1;
    next.signature_requirement.signatures.clear();
    for w in &mut next.workloads {
        w.result = None;
    }
    next.workloads[0] = Workload {
        version: 1,
        ..workload("disk", WorkloadType::Volume, json!({"size": GIB}))
    };
    u.client
        .update_node_contract(
            d.contract_id,
            &zos_types::contract::UpdateNodeContract {
                deployment_hash: next.hash().unwrap(),
            },
        )
        .await
        .unwrap();
    next.sign(n1, u.twin(), u.client.identity().unwrap())
        .unwrap();
    let err = u.client.node(t1).call::<Update>(&next).await.unwrap_err();
    assert!(err.to_string().contains("cannot become"), "{err}");
    assert_eq!(get(&u, t1, d.contract_id).await.unwrap().version, 0);

    // Another twin sees nothing of it.
    let other = user(&grid).await;
    let e = get(&other, t1, d.contract_id).await.unwrap_err();
    assert!(e.to_string().contains("not found"), "{e}");
    assert_eq!(e.node_error(), Some(ErrorKind::NotFound), "{e}");
}

/// Bob co-signs Alice's deployment for node 1. Alice makes a contract for the same deployment
/// (same hash) on node 2 and sends it there with Bob's signature: node 2 refuses it and stores
/// nothing, because the signature names node 1 (decision 0004).
#[tokio::test(flavor = "multi_thread")]
async fn co_signature_for_node_1_replayed_on_node_2_is_refused() {
    if !require_root("co_signature_for_node_1_replayed_on_node_2_is_refused") {
        return;
    }
    let net = DevnetGuard::up(2, Duration::from_secs(2)).await.unwrap();
    let grid = net.state.grid_url.clone();
    let n1 = net.state.nodes[0].node_id.unwrap();
    let n2 = net.state.nodes[1].node_id.unwrap();
    let (alice, bob) = (user(&grid).await, user(&grid).await);
    let t2 = node_twin(&alice.client, n2).await;
    let mut d = alice.deployment(vec![workload(
        "disk",
        WorkloadType::Zmount,
        json!({"size": GIB}),
    )]);
    d.signature_requirement.requests.push(SignatureRequest {
        twin_id: bob.twin(),
        required: true,
        weight: 1,
    });
    d.signature_requirement.weight_required = 2;
    // Bob approves it on node 1 only.
    let mut approved = d.clone();
    approved
        .sign(n1, bob.twin(), bob.client.identity().unwrap())
        .unwrap();
    let bobs = approved.signature_requirement.signatures[0].clone();

    alice.contract(&mut d, n2).await;
    d.signature_requirement.signatures.push(bobs);
    let err = alice.client.node(t2).call::<Deploy>(&d).await.unwrap_err();
    let expect = format!(
        "twin {}'s signature does not match this deployment on node {n2}",
        bob.twin()
    );
    assert!(err.to_string().contains(&expect), "{err}");
    let gone = get(&alice, t2, d.contract_id).await.unwrap_err();
    assert!(gone.to_string().contains("not found"), "{gone}");

    // With Bob's signature for node 2 the same deployment is taken there.
    d.sign(n2, bob.twin(), bob.client.identity().unwrap())
        .unwrap();
    alice.client.node(t2).call::<Deploy>(&d).await.unwrap();
    assert_eq!(get(&alice, t2, d.contract_id).await.unwrap().version, 0);
    alice.client.cancel_contract(d.contract_id).await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn a_killed_node_finishes_every_workload_once_and_the_grid_going_away_deletes_nothing() {
    if !require_root(
        "a_killed_node_finishes_every_workload_once_and_the_grid_going_away_deletes_nothing",
    ) {
        return;
    }
    let mut net = DevnetGuard::up(1, Duration::from_secs(1)).await.unwrap();
    let grid = net.state.grid_url.clone();
    let node = net.state.nodes[0].node_id.unwrap();
    let root = net.state.nodes[0].mount_root.clone();
    let u = user(&grid).await;
    let t = node_twin(&u.client, node).await;
    let many: Vec<Workload> = (0..24)
        .map(|i| {
            workload(
                &format!("d{i}"),
                WorkloadType::Zmount,
                json!({"size": 64 * MIB}),
            )
        })
        .collect();
    let mut d = u.deployment(many);
    u.contract(&mut d, node).await;
    u.client.node(t).call::<Deploy>(&d).await.unwrap();
    // Crash it in the middle of the work, then start it again.
    devnet::stop_node(&mut net.state, 1, true).unwrap();
    devnet::start_node(&mut net.state, 1).unwrap();
    let done = wait_until(Duration::from_secs(60), Duration::from_millis(300), || {
        let u = &u;
        async move {
            let d = get(u, t, d.contract_id).await.ok()?;
            d.workloads
                .iter()
                .all(|w| {
                    w.result
                        .as_ref()
                        .is_some_and(|r| r.state == ResultState::Ok)
                })
                .then_some(d)
        }
    })
    .await
    .expect("every workload ends ok after the restart");
    assert_eq!(done.workloads.len(), 24);
    let log = u
        .client
        .node(t)
        .call::<Changes>(&ChangesBody {
            contract_id: d.contract_id,
            limit: None,
            cursor: None,
        })
        .await
        .unwrap();
    for i in 0..24 {
        let n = format!("d{i}");
        let oks = log
            .iter()
            .filter(|e| e.name == n && e.result.state == ResultState::Ok)
            .count();
        assert_eq!(oks, 1, "{n} is ok exactly once");
        assert_eq!(
            find(&root, &format!("{}-{}-{n}", u.twin(), d.contract_id)).len(),
            1,
            "{n} exists once"
        );
    }

    // The grid goes away for a while: every workload stays.
    devnet::stop_grid(&mut net.state);
    tokio::time::sleep(Duration::from_secs(5)).await;
    for i in 0..24 {
        assert_eq!(
            find(&root, &format!("{}-{}-d{i}", u.twin(), d.contract_id)).len(),
            1
        );
    }
    devnet::start_grid(&mut net.state).await.unwrap();
    let back = wait_until(Duration::from_secs(30), Duration::from_millis(300), || {
        let u = &u;
        async move { get(u, t, d.contract_id).await.ok() }
    })
    .await
    .expect("the node answers again after the grid is back");
    assert!(
        back.workloads
            .iter()
            .all(|w| w.result.as_ref().unwrap().state == ResultState::Ok)
    );

    // Cancelled while the node is down: the event waits for it.
    devnet::stop_node(&mut net.state, 1, false).unwrap();
    u.client.cancel_contract(d.contract_id).await.unwrap();
    devnet::start_node(&mut net.state, 1).unwrap();
    let gone = wait_until(Duration::from_secs(60), Duration::from_millis(300), || {
        let root = root.clone();
        let wid = format!("{}-{}-d0", u.twin(), d.contract_id);
        async move { find(&root, &wid).is_empty().then_some(()) }
    })
    .await;
    assert!(
        gone.is_some(),
        "the cancellation reached the node after it came back"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_grace_period_pauses_and_its_end_resumes() {
    if !require_root("a_grace_period_pauses_and_its_end_resumes") {
        return;
    }
    let net = DevnetGuard::up(1, Duration::from_secs(2)).await.unwrap();
    let grid = net.state.grid_url.clone();
    let node = net.state.nodes[0].node_id.unwrap();
    let u = user(&grid).await;
    let t = node_twin(&u.client, node).await;
    let mut d = u.deployment(vec![workload(
        "disk",
        WorkloadType::Zmount,
        json!({"size": GIB}),
    )]);
    u.contract(&mut d, node).await;
    u.client.node(t).call::<Deploy>(&d).await.unwrap();
    let state = |want: ResultState| {
        let u = &u;
        let c = d.contract_id;
        async move {
            wait_until(
                Duration::from_secs(30),
                Duration::from_millis(200),
                || async move {
                    let d = get(u, t, c).await.ok()?;
                    (d.workloads[0].result.as_ref()?.state == want).then_some(())
                },
            )
            .await
        }
    };
    assert!(state(ResultState::Ok).await.is_some());
    // Only the grid's admin (the devnet's farmer) starts a grace period.
    let refused = u.client.set_grace(d.contract_id, true).await.unwrap_err();
    assert_eq!(refused.status(), Some(403));
    let admin = net.state.farmer_client().unwrap();
    admin.set_grace(d.contract_id, true).await.unwrap();
    assert!(state(ResultState::Paused).await.is_some(), "paused");
    admin.set_grace(d.contract_id, false).await.unwrap();
    assert!(state(ResultState::Ok).await.is_some(), "resumed");
}
