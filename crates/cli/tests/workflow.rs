//! The user workflows of `zos-client`, called as a library (no `zos` process) against a devnet:
//! a real grid, relay and zosd with btrfs pools on loop devices. Each test checks what the
//! workflow did on the node and the events it reported on the way.

use std::time::Duration;

use serde_json::json;
use zos_client::GridClient;
use zos_client::workflow::deploy::{self, DeployError, DeployEvent};
use zos_client::workflow::network::{self, CreateRequest, NetworkEvent, NetworkStore};
use zos_testkit::devnet::DevnetGuard;
use zos_testkit::require_root;
use zos_types::Identity;
use zos_types::capacity::GIB;
use zos_types::contract::ContractState;
use zos_types::deployment::{
    Deployment, ResultState, SignatureRequest, SignatureRequirement, Workload,
};
use zos_types::node_api::ErrorKind;
use zos_types::workload::WorkloadType;

const WAIT: Duration = Duration::from_secs(120);

async fn user(grid: &str) -> GridClient {
    let c = GridClient::new(grid)
        .unwrap()
        .with_identity(Identity::generate().unwrap());
    let twin = c.create_twin(None).await.unwrap();
    c.with_twin(twin.id)
}

fn deployment(twin: u32, volume: u64, disk: u64) -> Deployment {
    let w = |name: &str, kind, size: u64| Workload {
        version: 0,
        name: name.into(),
        kind,
        data: json!({ "size": size }),
        metadata: String::new(),
        description: String::new(),
        result: None,
    };
    Deployment {
        version: 0,
        twin_id: twin,
        contract_id: 0,
        metadata: String::new(),
        description: "workflow test".into(),
        signature_requirement: SignatureRequirement {
            requests: vec![SignatureRequest {
                twin_id: twin,
                required: true,
                weight: 1,
            }],
            weight_required: 1,
            signatures: vec![],
        },
        workloads: vec![
            w("data", WorkloadType::Zmount, disk),
            w("shared", WorkloadType::Volume, volume),
        ],
    }
}

/// The settled-workload events among `events`, as (name, state).
fn settled(events: &[DeployEvent]) -> Vec<(String, ResultState)> {
    let mut out: Vec<(String, ResultState)> = events
        .iter()
        .filter_map(|e| match e {
            DeployEvent::Workload { name, state, .. } => Some((name.clone(), *state)),
            _ => None,
        })
        .collect();
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out
}

#[tokio::test(flavor = "multi_thread")]
async fn deploy_update_and_cancel_report_their_progress() {
    if !require_root("deploy_update_and_cancel_report_their_progress") {
        return;
    }
    let net = DevnetGuard::up(1, Duration::from_secs(2)).await.unwrap();
    let node = net.state.nodes[0].node_id.unwrap();
    let twin = net.state.nodes[0].twin_id.unwrap();
    let c = user(&net.state.grid_url).await;
    let me = c.twin_id().unwrap();

    // Deploy: contract, sent, following two workloads, each settled ok, done.
    let mut events = Vec::new();
    let done = deploy::deploy(&c, node, deployment(me, GIB, GIB), WAIT, &mut |e| {
        events.push(e)
    })
    .await
    .unwrap();
    let contract = done.deployment.contract_id;
    assert_eq!(done.node, node);
    assert!(contract > 0);
    assert_eq!(
        events[..3],
        [
            DeployEvent::ContractCreated { node, contract },
            DeployEvent::Sent { node, contract },
            DeployEvent::Following { contract, total: 2 },
        ]
    );
    assert_eq!(
        settled(&events),
        [
            ("data".to_string(), ResultState::Ok),
            ("shared".to_string(), ResultState::Ok)
        ]
    );
    assert!(events.contains(&DeployEvent::Progress {
        settled: 2,
        total: 2,
        errors: 0
    }));
    assert_eq!(events.last(), Some(&DeployEvent::Settled { contract }));
    let on_node = deploy::fetch(&c, twin, contract).await.unwrap();
    assert!(
        on_node
            .workloads
            .iter()
            .all(|w| w.result.as_ref().unwrap().state == ResultState::Ok)
    );

    // Update: only the grown volume is followed.
    let mut events = Vec::new();
    let done = deploy::update(
        &c,
        contract,
        &deployment(me, 2 * GIB, GIB),
        WAIT,
        &mut |e| events.push(e),
    )
    .await
    .unwrap();
    assert_eq!(done.deployment.version, 1);
    assert_eq!(
        events[..2],
        [
            DeployEvent::Updated {
                node,
                contract,
                version: 1
            },
            DeployEvent::Following { contract, total: 1 },
        ]
    );
    assert_eq!(settled(&events), [("shared".to_string(), ResultState::Ok)]);
    let shared = done
        .deployment
        .workloads
        .iter()
        .find(|w| w.name == "shared");
    assert_eq!(shared.unwrap().data["size"], 2 * GIB);

    // Cancel: cancelled, then removed, and the node no longer has it.
    let mut events = Vec::new();
    let on = deploy::cancel(&c, contract, WAIT, &mut |e| events.push(e))
        .await
        .unwrap();
    assert_eq!(on, node);
    assert_eq!(
        events,
        [
            DeployEvent::Cancelled { node, contract },
            DeployEvent::Removed { node, contract }
        ]
    );
    let gone = deploy::fetch(&c, twin, contract).await.unwrap_err();
    assert_eq!(gone.node_error(), Some(ErrorKind::NotFound), "{gone}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_refused_deployment_is_rolled_back_and_a_network_made_and_removed() {
    if !require_root("a_refused_deployment_is_rolled_back_and_a_network_made_and_removed") {
        return;
    }
    let net = DevnetGuard::up(1, Duration::from_secs(2)).await.unwrap();
    let node = net.state.nodes[0].node_id.unwrap();
    let twin = net.state.nodes[0].twin_id.unwrap();
    let c = user(&net.state.grid_url).await;
    let me = c.twin_id().unwrap();

    // More disk than the node has: refused, and the contract made for it is cancelled again.
    let mut events = Vec::new();
    let huge = deployment(me, GIB, 500 * GIB);
    let e = deploy::deploy(&c, node, huge, WAIT, &mut |e| events.push(e))
        .await
        .unwrap_err();
    let DeployError::Refused { contract, .. } = e else {
        panic!("expected a refusal, got {e}");
    };
    assert!(
        zos_runtime::error_chain(&e).contains("of SSD asked"),
        "{}",
        zos_runtime::error_chain(&e)
    );
    assert_eq!(
        events,
        [
            DeployEvent::ContractCreated { node, contract },
            DeployEvent::RolledBack { node, contract }
        ]
    );
    let k = c.get_contract(contract).await.unwrap();
    assert_eq!(k.state, ContractState::Deleted);

    // A network on the node with access for this machine, recorded in the store.
    let dir = tempfile::tempdir().unwrap();
    let store = NetworkStore::new(dir.path());
    let req = CreateRequest {
        name: "wf".into(),
        nodes: vec![node],
        ip_range: "10.20.0.0/16".parse().unwrap(),
        access: true,
        endpoints: vec![],
    };
    let mut events = Vec::new();
    let rec = network::create(&c, &store, &req, WAIT, &mut |e| events.push(e))
        .await
        .unwrap();
    let part = &rec.nodes[0];
    assert_eq!(part.subnet.to_string(), "10.20.2.0/24");
    assert_eq!(
        rec.access.as_ref().unwrap().subnet.to_string(),
        "10.20.3.0/24"
    );
    assert!(matches!(
        events[0],
        NetworkEvent::Planned { node: n, subnet, listen_port }
            if n == node && subnet == part.subnet && listen_port == part.listen_port
    ));
    let sent = events.iter().any(|e| {
        matches!(e, NetworkEvent::Node { node: n, event: DeployEvent::Sent { contract, .. } }
            if *n == node && *contract == part.contract_id)
    });
    assert!(sent, "{events:?}");
    assert_eq!(
        store.load("wf").unwrap().nodes[0].contract_id,
        part.contract_id
    );
    assert!(rec.wg_config().unwrap().contains("Address = 10.20.3.1/24"));
    let (ip, subnet) = network::free_ip(&c, &rec, node).await.unwrap();
    assert_eq!(
        (ip.to_string(), subnet),
        ("10.20.2.2".to_string(), part.subnet)
    );
    // The same name again is refused before anything is made.
    let again = network::create(&c, &store, &req, WAIT, &mut |_| {}).await;
    assert!(matches!(again, Err(network::NetworkError::Exists { .. })));

    // Delete: the node removes it and the store forgets it.
    let mut events = Vec::new();
    network::delete(&c, &store, "wf", WAIT, &mut |e| events.push(e))
        .await
        .unwrap();
    let removed = events.iter().any(|e| {
        matches!(e, NetworkEvent::Node { event: DeployEvent::Removed { contract, .. }, .. }
            if *contract == part.contract_id)
    });
    assert!(removed, "{events:?}");
    assert!(store.list().is_empty());
    let gone = deploy::fetch(&c, twin, part.contract_id).await.unwrap_err();
    assert_eq!(gone.node_error(), Some(ErrorKind::NotFound), "{gone}");
}
