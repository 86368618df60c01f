//! Deploy-to-ok latency and relay round trips on a devnet (needs root; build the binaries first:
//! `cargo build --release --workspace --bins && cargo bench -p zos-cli --bench deploy`).

use std::time::{Duration, Instant};

use serde_json::json;
use zos_client::GridClient;
use zos_testkit::devnet::DevnetGuard;
use zos_types::Identity;
use zos_types::capacity::MIB;
use zos_types::contract::CreateNodeContract;
use zos_types::deployment::{
    Deployment, ResultState, SignatureRequest, SignatureRequirement, Workload,
};
use zos_types::node_api;
use zos_types::workload::WorkloadType;

fn percentile(sorted: &[f64], p: f64) -> f64 {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

async fn deploy_once(c: &GridClient, node: u32, node_twin: u32, i: usize) -> Duration {
    let me = c.twin_id().unwrap();
    let mut d = Deployment {
        version: 0,
        twin_id: me,
        contract_id: 0,
        metadata: String::new(),
        description: format!("bench {i}"),
        signature_requirement: SignatureRequirement {
            requests: vec![SignatureRequest {
                twin_id: me,
                required: true,
                weight: 1,
            }],
            weight_required: 1,
            signatures: vec![],
        },
        workloads: vec![
            Workload {
                version: 0,
                name: "disk".into(),
                kind: WorkloadType::Zmount,
                data: json!({"size": 64 * MIB}),
                metadata: String::new(),
                description: String::new(),
                result: None,
            },
            Workload {
                version: 0,
                name: "vol".into(),
                kind: WorkloadType::Volume,
                data: json!({"size": 64 * MIB}),
                metadata: String::new(),
                description: String::new(),
                result: None,
            },
        ],
    };
    let start = Instant::now();
    let k = c
        .create_node_contract(&CreateNodeContract {
            node_id: node,
            deployment_hash: d.hash().unwrap(),
            public_ips: 0,
        })
        .await
        .unwrap();
    d.contract_id = k.id;
    d.sign(node, me, c.identity().unwrap()).unwrap();
    c.node(node_twin)
        .call::<node_api::Deploy>(&d)
        .await
        .unwrap();
    loop {
        let got = c
            .node(node_twin)
            .call::<node_api::Get>(&node_api::ContractBody { contract_id: k.id })
            .await
            .unwrap();
        if got.workloads.iter().all(|w| {
            w.result
                .as_ref()
                .is_some_and(|r| r.state == ResultState::Ok)
        }) {
            let took = start.elapsed();
            c.cancel_contract(k.id).await.unwrap();
            return took;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::main]
async fn main() {
    if !nix::unistd::geteuid().is_root() {
        eprintln!("SKIPPED deploy bench: needs root (devnet)");
        return;
    }
    let net = DevnetGuard::up(1, Duration::from_secs(5))
        .await
        .expect("devnet");
    let node = net.state.nodes[0].node_id.unwrap();
    let anon = GridClient::new(&net.state.grid_url).unwrap();
    let node_twin = anon.get_node(node).await.unwrap().twin_id;
    let id = Identity::generate().unwrap();
    let c = anon.clone().with_identity(id);
    let twin = c.create_twin(None).await.unwrap();
    let c = c.with_twin(twin.id);

    // Deploy to ok: contract, sign, send, poll until every workload is ok.
    let rounds = 20;
    let mut lat: Vec<f64> = Vec::new();
    for i in 0..rounds {
        lat.push(deploy_once(&c, node, node_twin, i).await.as_secs_f64() * 1000.0);
    }
    lat.sort_by(f64::total_cmp);
    println!(
        "deploy-to-ok (zmount 64 MiB + volume 64 MiB, {rounds} rounds): p50 {:.1} ms, p90 {:.1} ms, max {:.1} ms",
        percentile(&lat, 0.5),
        percentile(&lat, 0.9),
        lat[lat.len() - 1]
    );

    // Relay round trips: sealed request, uplink, node handler, sealed reply.
    for concurrency in [1usize, 8, 32] {
        let calls = 1000;
        let start = Instant::now();
        let mut tasks = tokio::task::JoinSet::new();
        let per = calls / concurrency;
        for _ in 0..concurrency {
            let c = c.clone();
            tasks.spawn(async move {
                let mut l = Vec::with_capacity(per);
                for _ in 0..per {
                    let t = Instant::now();
                    let v = c
                        .node(node_twin)
                        .call::<node_api::Version>(&())
                        .await
                        .unwrap();
                    assert!(!v.zos.is_empty());
                    l.push(t.elapsed().as_secs_f64() * 1000.0);
                }
                l
            });
        }
        let mut all = Vec::new();
        while let Some(r) = tasks.join_next().await {
            all.extend(r.unwrap());
        }
        let secs = start.elapsed().as_secs_f64();
        all.sort_by(f64::total_cmp);
        println!(
            "relay round trips, {concurrency} in flight: {:.0} calls/s, p50 {:.2} ms, p99 {:.2} ms ({} calls)",
            all.len() as f64 / secs,
            percentile(&all, 0.5),
            percentile(&all, 0.99),
            all.len()
        );
    }
}
