//! Deploying with consensus end to end on a devnet: three users, each with their own key, run
//! `zos` against a real grid, relay and zosd. Two of three deploy; one of three does not; an
//! update needs the same two; enough rejections kill a proposal; a cancel goes through them too.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use serde_json::Value;
use zos_client::GridClient;
use zos_testkit::devnet::DevnetGuard;
use zos_testkit::require_root;
use zos_types::Identity;
use zos_types::contract::{ContractFilter, ContractKind, ContractState};
use zos_types::deployment::ContractId;
use zos_types::node_api::{ContractBody, ErrorKind, Get};

/// A user with a key file and a twin on the devnet's grid.
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
    /// Runs `zos ARGS` as this user; answers success, stdout and stderr.
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

    /// Runs `zos ARGS --json`, which must succeed, and parses what it printed.
    fn json(&self, grid: &str, args: &[&str]) -> Value {
        let mut all = args.to_vec();
        all.push("--json");
        let (ok, out, err) = self.zos(grid, &all);
        assert!(ok, "zos {args:?} failed: {err}");
        serde_json::from_str(&out).unwrap_or_else(|e| panic!("zos {args:?}: {e}: {out}"))
    }

    fn twin(&self) -> u32 {
        self.client.twin_id().unwrap()
    }
}

fn write(dir: &Path, name: &str, text: &str) -> String {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p.display().to_string()
}

/// The live node contracts of `u`.
async fn live_contracts(u: &User) -> Vec<ContractId> {
    u.client
        .list_contracts(&ContractFilter {
            twin_id: Some(u.twin()),
            ..ContractFilter::default()
        })
        .await
        .unwrap()
        .into_iter()
        .filter(|c| {
            c.state != ContractState::Deleted && matches!(c.kind, ContractKind::Node { .. })
        })
        .map(|c| c.id)
        .collect()
}

/// The version of deployment `contract` on the node (with twin `node_twin`), as `u` reads it.
async fn version_on_node(u: &User, node_twin: u32, contract: ContractId) -> Option<u32> {
    match u
        .client
        .node(node_twin)
        .call::<Get>(&ContractBody {
            contract_id: contract,
        })
        .await
    {
        Ok(d) => Some(d.version),
        Err(e) if e.node_error() == Some(ErrorKind::NotFound) => None,
        Err(e) => panic!("reading deployment {contract}: {e}"),
    }
}

const DISK: &str = "description: shared disk\nworkloads:\n  - name: disk\n    type: zmount\n    data: {size: 1G}\n";
const GROWN: &str = "description: shared disk\nworkloads:\n  - name: disk\n    type: zmount\n    data: {size: 2G}\n";

#[tokio::test(flavor = "multi_thread")]
async fn two_of_three_deploy_update_reject_and_cancel_from_the_command_line() {
    if !require_root("two_of_three_deploy_update_reject_and_cancel_from_the_command_line") {
        return;
    }
    let net = DevnetGuard::up(1, Duration::from_secs(2)).await.unwrap();
    let grid = net.state.grid_url.clone();
    let node = net.state.nodes[0].node_id.unwrap();
    let node_twin = net.state.nodes[0].twin_id.unwrap();
    let (a, b, c) = (user(&grid).await, user(&grid).await, user(&grid).await);
    let stranger = user(&grid).await;
    let dir = tempfile::tempdir().unwrap();
    let disk = write(dir.path(), "disk.yaml", DISK);
    let grown = write(dir.path(), "grown.yaml", GROWN);
    let require = format!("2: {}=1, {}=1, {}=1", a.twin(), b.twin(), c.twin());

    // A proposes: signed by A alone (1 of 3), nothing is deployed.
    let p = a.json(
        &grid,
        &[
            "deploy",
            &disk,
            "--node",
            &node.to_string(),
            "--require",
            &require,
        ],
    );
    assert_eq!(p["state"], "open", "{p}");
    assert_eq!(p["kind"], "deploy");
    let id = p["id"].as_u64().unwrap().to_string();
    assert!(
        live_contracts(&a).await.is_empty(),
        "1 of 3 makes no contract"
    );
    let (ok, out, _) = a.zos(
        &grid,
        &[
            "deploy",
            &disk,
            "--node",
            &node.to_string(),
            "--require",
            &require,
        ],
    );
    assert!(ok);
    assert!(
        out.contains("zos proposal sign"),
        "tells how the others sign: {out}"
    );

    // B and C see it; B reads what it is about to approve; a stranger cannot.
    let listed = c.json(&grid, &["proposal", "list", "--state", "open"]);
    assert_eq!(listed.as_array().unwrap().len(), 2, "{listed}");
    let (ok, shown, err) = b.zos(&grid, &["proposal", "show", &id]);
    assert!(ok, "{err}");
    for want in [
        "zmount disk: size 1",
        "per hour (traffic extra)",
        " /h]",
        "hash: ",
        "shared disk",
    ] {
        assert!(shown.contains(want), "{want:?} not in:\n{shown}");
    }
    // The cost shown is the formula's at the grid's prices (the devnet keeps the default policy).
    let shown_json = b.json(&grid, &["proposal", "show", &id]);
    let d: zos_types::deployment::Deployment =
        serde_json::from_value(shown_json["deployment"].clone()).unwrap();
    let want = zos_types::billing::cost_per_hour(
        &zos_types::billing::PricingPolicy::default(),
        &zos_types::billing::Usage::Node {
            capacity: d.capacity().unwrap(),
            public_ips: d.public_ipv4_count().unwrap(),
            public_bytes: 0,
            on_rented_node: false,
        },
    );
    assert!(want > 0, "a deployment with a disk costs something");
    assert_eq!(
        shown_json["cost"]["per_hour_units"], want,
        "{}",
        shown_json["cost"]
    );
    assert_eq!(
        shown_json["cost"]["workloads"].as_object().unwrap().len(),
        d.workloads.len(),
        "{}",
        shown_json["cost"]
    );
    let hash = p["hash"].as_str().unwrap();
    assert!(shown.contains(hash), "the hash signed is shown:\n{shown}");
    let (ok, _, err) = stranger.zos(&grid, &["proposal", "sign", &id]);
    assert!(!ok, "a twin outside the requirement signed");
    assert!(err.contains("not among the twins"), "{err}");

    // B's signature is the second of three: approved, the contract is A's, and B's `zos`
    // delivers the deployment to the node and follows it until it is ok.
    let done = b.json(&grid, &["proposal", "sign", &id]);
    assert_eq!(done["state"], "approved", "{done}");
    let contract = done["contract_id"].as_u64().unwrap();
    assert_eq!(live_contracts(&a).await, [contract]);
    let workloads = done["deployment_result"]["workloads"].as_array().unwrap();
    assert_eq!(workloads.len(), 1);
    assert_eq!(workloads[0]["state"], "ok", "{done}");
    let got = a.json(&grid, &["deployment", "get", &contract.to_string()]);
    assert_eq!(got["workloads"][0]["state"], "ok", "{got}");
    // A second vote by B is refused.
    let (ok, _, err) = b.zos(&grid, &["proposal", "sign", &id]);
    assert!(!ok);
    assert!(err.contains("already voted"), "{err}");

    // An update needs the same consensus: A's update is a proposal, the node keeps version 0
    // until C signs it too.
    let u = a.json(
        &grid,
        &["deployment", "update", &contract.to_string(), &grown],
    );
    assert_eq!(u["state"], "open", "{u}");
    assert_eq!(u["kind"], "update");
    assert_eq!(version_on_node(&a, node_twin, contract).await, Some(0));
    let uid = u["id"].as_u64().unwrap().to_string();
    let done = c.json(&grid, &["proposal", "sign", &uid]);
    assert_eq!(done["state"], "approved", "{done}");
    assert_eq!(done["deployment_result"]["version"], 1);
    assert_eq!(done["deployment_result"]["workloads"][0]["state"], "ok");
    assert_eq!(version_on_node(&a, node_twin, contract).await, Some(1));

    // A cancel that B and C reject: after B, A and C could still make it; after C, it is dead
    // and the deployment stays.
    let x = a.json(&grid, &["deployment", "cancel", &contract.to_string()]);
    assert_eq!(x["kind"], "cancel");
    assert_eq!(x["state"], "open");
    let xid = x["id"].as_u64().unwrap().to_string();
    let r = b.json(&grid, &["proposal", "reject", &xid, "--reason", "keep it"]);
    assert_eq!(r["state"], "open", "{r}");
    let r = c.json(&grid, &["proposal", "reject", &xid]);
    assert_eq!(r["state"], "rejected", "{r}");
    let (ok, _, err) = b.zos(&grid, &["proposal", "sign", &xid]);
    assert!(!ok, "a rejected proposal took a signature");
    assert!(
        err.contains("already voted") || err.contains("rejected"),
        "{err}"
    );
    assert_eq!(live_contracts(&a).await, [contract]);
    assert_eq!(version_on_node(&a, node_twin, contract).await, Some(1));

    // A cancel that C approves: the contract ends and the node removes the deployment.
    let x = a.json(&grid, &["deployment", "cancel", &contract.to_string()]);
    let xid = x["id"].as_u64().unwrap().to_string();
    let done = c.json(&grid, &["proposal", "sign", &xid]);
    assert_eq!(done["state"], "approved", "{done}");
    assert_eq!(done["removed_from_node"], node);
    assert!(live_contracts(&a).await.is_empty());
    assert_eq!(version_on_node(&a, node_twin, contract).await, None);

    // The other open proposal (A's second deploy) is still there for whoever wants it; a
    // rejection by two of three kills it without a contract.
    let open = a.json(&grid, &["proposal", "list", "--state", "open"]);
    let second = open[0]["id"].as_u64().unwrap().to_string();
    b.json(&grid, &["proposal", "reject", &second]);
    let r = c.json(&grid, &["proposal", "reject", &second]);
    assert_eq!(r["state"], "rejected");
    assert!(live_contracts(&a).await.is_empty());
}
