//! Contracts, node events and the relay, over real HTTP and WebSocket on 127.0.0.1.

mod common;

use std::time::Duration;

use common::TestGrid;
use serde_json::json;
use zos_client::GridClient;
use zos_client::uplink::{self, Uplink};
use zos_types::contract::{ContractState, CreateNodeContract, NodeEvent};
use zos_types::deployment::DeploymentHash;
use zos_types::envelope::{Envelope, Reply, Seal};
use zos_types::registry::AddFarmIp;
use zos_types::relay::UplinkFrame;
use zos_types::{Identity, TwinId};

/// A node that answers every request with `{"echo": <command>}`, or stays silent.
async fn fake_node(
    url: &str,
    id: Identity,
    twin: TwinId,
    silent: bool,
) -> tokio::task::JoinHandle<()> {
    let mut link = uplink::connect(url, &id, twin).await.unwrap();
    let client = GridClient::new(url).unwrap();
    tokio::spawn(async move {
        while let Some(Ok(frame)) = link.next().await {
            let UplinkFrame::Envelope { envelope } = frame else {
                continue;
            };
            if silent {
                continue;
            }
            let key = client.get_twin(envelope.source).await.unwrap().public_key;
            let plain = envelope.open(&id, &key).unwrap();
            let body: serde_json::Value = serde_json::from_slice(&plain).unwrap();
            let reply = Reply::Ok(json!({"echo": envelope.command, "body": body}));
            let seal = Seal {
                source: twin,
                destination: envelope.source,
                destination_key: &key,
                command: &envelope.command,
                reply_to: Some(&envelope.id),
                expiration: zos_types::auth::unix_now() + 30,
            };
            let out = Envelope::seal(&id, &seal, &serde_json::to_vec(&reply).unwrap()).unwrap();
            link.send(UplinkFrame::Envelope { envelope: out })
                .await
                .unwrap();
        }
    })
}

async fn node_twin(g: &TestGrid) -> (Identity, TwinId, u32) {
    let (_, farm) = g.farm("relay-farm").await;
    let (client, node) = g.node(farm.id).await;
    (client.identity().unwrap().clone(), node.twin_id, node.id)
}

fn sealed(
    from: &GridClient,
    to: TwinId,
    to_key: &zos_types::PublicKey,
    ttl: i64,
    body: &[u8],
) -> Envelope {
    let seal = Seal {
        source: from.twin_id().unwrap(),
        destination: to,
        destination_key: to_key,
        command: "zos.system.version",
        reply_to: None,
        expiration: zos_types::auth::unix_now() + ttl,
    };
    Envelope::seal(from.identity().unwrap(), &seal, body).unwrap()
}

#[tokio::test]
async fn a_call_reaches_the_node_and_its_reply_comes_back() {
    let g = TestGrid::start().await;
    let (nid, ntwin, _) = node_twin(&g).await;
    let _node = fake_node(&g.url(), nid, ntwin, false).await;
    let (user, _) = g.twin().await;
    let v = user
        .call(ntwin, "zos.test.echo", &json!({"secret": "swordfish"}))
        .await
        .unwrap();
    assert_eq!(
        v,
        json!({"echo": "zos.test.echo", "body": {"secret": "swordfish"}})
    );
    assert!(
        !g.dump().contains("swordfish"),
        "the relay keeps nothing of the bodies"
    );
}

#[tokio::test]
async fn relay_refusals() {
    let g = TestGrid::start().await;
    let (nid, ntwin, _) = node_twin(&g).await;
    let (user, _) = g.twin().await;
    let nkey = nid.public_key();

    // Offline destination: 404 at once.
    let started = std::time::Instant::now();
    let e = user
        .relay_send(&sealed(&user, ntwin, &nkey, 30, b"{}"))
        .await
        .unwrap_err();
    assert_eq!(e.status(), Some(404), "{e}");
    assert!(started.elapsed() < Duration::from_secs(2));

    // A node that never answers: 504 when the envelope expires.
    let _silent = fake_node(&g.url(), nid.clone(), ntwin, true).await;
    let started = std::time::Instant::now();
    let e = user
        .relay_send(&sealed(&user, ntwin, &nkey, 2, b"{}"))
        .await
        .unwrap_err();
    assert_eq!(e.status(), Some(504), "{e}");
    assert!(started.elapsed() < Duration::from_secs(5));

    // Forged: changed after signing.
    let mut env = sealed(&user, ntwin, &nkey, 30, b"{}");
    env.command = "zos.deployment.deploy".into();
    assert_eq!(user.relay_send(&env).await.unwrap_err().status(), Some(401));

    // Replayed: the same envelope twice (the silent node takes the first; 504 after 1 s).
    let env = sealed(&user, ntwin, &nkey, 1, b"{}");
    assert_eq!(user.relay_send(&env).await.unwrap_err().status(), Some(504));
    assert_eq!(user.relay_send(&env).await.unwrap_err().status(), Some(409));

    // Too large.
    let big = vec![b'x'; 2 * 1024 * 1024];
    let env = sealed(&user, ntwin, &nkey, 30, &big);
    assert_eq!(user.relay_send(&env).await.unwrap_err().status(), Some(413));

    // Expired (by the registry's clock, which this test set to the real time).
    g.clock.set(zos_types::auth::unix_now());
    let env = sealed(&user, ntwin, &nkey, -5, b"{}");
    assert_eq!(user.relay_send(&env).await.unwrap_err().status(), Some(400));
}

#[tokio::test]
async fn a_second_uplink_replaces_the_first() {
    let g = TestGrid::start().await;
    let (nid, ntwin, _) = node_twin(&g).await;
    let mut first: Uplink = uplink::connect(&g.url(), &nid, ntwin).await.unwrap();
    let _second = fake_node(&g.url(), nid, ntwin, false).await;
    let ended = tokio::time::timeout(Duration::from_secs(5), first.next())
        .await
        .expect("the first uplink is closed");
    assert!(!matches!(ended, Some(Ok(UplinkFrame::Envelope { .. }))));
    let (user, _) = g.twin().await;
    user.call(ntwin, "zos.x", &json!(null)).await.unwrap();
}

#[tokio::test]
async fn contracts_reserve_and_release_public_ips_and_events_wait_for_the_node() {
    let g = TestGrid::start().await;
    let (farmer, farm) = g.farm("ip-farm").await;
    farmer
        .add_farm_ip(
            farm.id,
            &AddFarmIp {
                ip: "185.69.166.20/24".parse().unwrap(),
                gateway: "185.69.166.1".parse().unwrap(),
            },
        )
        .await
        .unwrap();
    let (node_client, node) = g.node(farm.id).await;
    let (user, _) = g.twin().await;
    let hash = DeploymentHash([7; 32]);

    // Two addresses asked, one in the pool: refused, nothing stored.
    let before = g.dump();
    let e = user
        .create_node_contract(&CreateNodeContract {
            node_id: node.id,
            deployment_hash: hash,
            public_ips: 2,
        })
        .await
        .unwrap_err();
    assert_eq!(e.status(), Some(409), "{e}");
    assert_eq!(g.dump(), before, "a refused contract stores nothing");

    let c = user
        .create_node_contract(&CreateNodeContract {
            node_id: node.id,
            deployment_hash: hash,
            public_ips: 1,
        })
        .await
        .unwrap();
    let zos_types::contract::ContractKind::Node {
        public_ips_list, ..
    } = &c.kind
    else {
        panic!()
    };
    assert_eq!(public_ips_list.len(), 1);
    assert_eq!(
        farmer.list_farm_ips(farm.id).await.unwrap()[0].contract_id,
        Some(c.id)
    );
    // Someone else cannot touch it.
    let (stranger, _) = g.twin().await;
    assert_eq!(
        stranger.cancel_contract(c.id).await.unwrap_err().status(),
        Some(403)
    );

    // Changes while the node is away wait in its event log.
    let new_hash = DeploymentHash([8; 32]);
    user.update_node_contract(
        c.id,
        &zos_types::contract::UpdateNodeContract {
            deployment_hash: new_hash,
        },
    )
    .await
    .unwrap();
    let gone = user.cancel_contract(c.id).await.unwrap();
    assert_eq!(gone.state, ContractState::Deleted);
    assert_eq!(
        farmer.list_farm_ips(farm.id).await.unwrap()[0].contract_id,
        None,
        "cancel frees the address"
    );
    assert_eq!(
        user.cancel_contract(c.id).await.unwrap_err().status(),
        Some(409)
    );

    // Only the node reads its events, in order.
    assert_eq!(
        user.node_events(node.id, 0).await.unwrap_err().status(),
        Some(403)
    );
    let events = node_client.node_events(node.id, 0).await.unwrap();
    assert_eq!(
        events.iter().map(|e| e.event.clone()).collect::<Vec<_>>(),
        [
            NodeEvent::ContractUpdated {
                contract_id: c.id,
                deployment_hash: new_hash
            },
            NodeEvent::ContractCancelled { contract_id: c.id }
        ]
    );
    assert_eq!(events.iter().map(|e| e.seq).collect::<Vec<_>>(), [1, 2]);
    assert_eq!(node_client.node_events(node.id, 1).await.unwrap().len(), 1);

    // Over the uplink: what happened while away, then what happens live.
    let nid = node_client.identity().unwrap().clone();
    let mut link = uplink::connect(&g.url(), &nid, node.twin_id).await.unwrap();
    link.send(UplinkFrame::EventsAfter { seq: 1 })
        .await
        .unwrap();
    let Some(Ok(UplinkFrame::Events { events })) = link.next().await else {
        panic!("no events")
    };
    assert_eq!(events.len(), 1);
    assert_eq!(events[0].seq, 2);
    let c2 = user
        .create_node_contract(&CreateNodeContract {
            node_id: node.id,
            deployment_hash: hash,
            public_ips: 0,
        })
        .await
        .unwrap();
    user.cancel_contract(c2.id).await.unwrap();
    let Some(Ok(UplinkFrame::Events { events })) =
        tokio::time::timeout(Duration::from_secs(5), link.next())
            .await
            .unwrap()
    else {
        panic!("no live event")
    };
    assert_eq!(
        events[0].event,
        NodeEvent::ContractCancelled { contract_id: c2.id }
    );
}

#[tokio::test]
async fn names_are_unique_rent_is_exclusive_and_grace_needs_the_admin() {
    let g = TestGrid::start().await;
    let (_, farm) = g.farm("name-farm").await;
    let (_, node) = g.node(farm.id).await;
    let (alice, _) = g.twin().await;
    let (bob, _) = g.twin().await;
    let n = alice.create_name_contract("web").await.unwrap();
    assert_eq!(
        bob.create_name_contract("WEB").await.unwrap_err().status(),
        Some(409)
    );
    assert_eq!(
        bob.create_name_contract("bad name")
            .await
            .unwrap_err()
            .status(),
        Some(400)
    );
    alice.cancel_contract(n.id).await.unwrap();
    bob.create_name_contract("web").await.unwrap();

    alice.create_rent_contract(node.id).await.unwrap();
    assert_eq!(
        bob.create_rent_contract(node.id)
            .await
            .unwrap_err()
            .status(),
        Some(409)
    );

    // This grid has no admin twin: nobody sets grace periods.
    let e = alice.set_grace(n.id + 1, true).await.unwrap_err();
    assert_eq!(e.status(), Some(403));
    assert!(e.to_string().contains("--admin-twin"), "{e}");
}
