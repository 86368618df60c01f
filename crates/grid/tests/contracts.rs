//! Contracts and node event logs over real HTTP on 127.0.0.1, against a real SQLite file.
//! Every refusal is checked to leave the database exactly as it was.

mod common;

use common::{TestGrid, auth_header, error_message, raw};
use zos_client::{ClientError, GridClient};
use zos_types::auth::Signer;
use zos_types::contract::{
    Contract, ContractFilter, ContractKind, ContractState, CreateNodeContract, NodeEvent,
    UpdateNodeContract,
};
use zos_types::deployment::DeploymentHash;
use zos_types::registry::{AddFarmIp, Farm, FarmPolicy, Node, PublicConfig};

fn status(r: Result<Contract, ClientError>) -> u16 {
    match r {
        Ok(c) => panic!("expected a refusal, got contract {c:?}"),
        Err(e) => e
            .status()
            .unwrap_or_else(|| panic!("expected an API error, got {e:?}")),
    }
}

fn node_contract(node: u32, hash: u8, public_ips: u32) -> CreateNodeContract {
    CreateNodeContract {
        node_id: node,
        deployment_hash: DeploymentHash([hash; 32]),
        public_ips,
    }
}

fn reserved(c: &Contract) -> Vec<String> {
    match &c.kind {
        ContractKind::Node {
            public_ips_list, ..
        } => public_ips_list.iter().map(|i| i.ip.to_string()).collect(),
        other => panic!("not a node contract: {other:?}"),
    }
}

/// A farm with `ips` public addresses and a node in it.
async fn farm_with_node(g: &TestGrid, name: &str, ips: u8) -> (GridClient, Farm, GridClient, Node) {
    let (farmer, farm) = g.farm(name).await;
    for i in 0..ips {
        farmer
            .add_farm_ip(
                farm.id,
                &AddFarmIp {
                    ip: format!("185.69.166.{}/24", 10 + i).parse().unwrap(),
                    gateway: "185.69.166.1".parse().unwrap(),
                },
            )
            .await
            .unwrap();
    }
    let (node_client, node) = g.node(farm.id).await;
    (farmer, farm, node_client, node)
}

/// The farmer lets twins rent the farm's nodes.
async fn rentable(farmer: &GridClient, farm: u32) {
    let policy = FarmPolicy {
        rentable: true,
        ..FarmPolicy::default()
    };
    let f = farmer.set_farm_policy(farm, &policy).await.unwrap();
    assert!(f.policy.rentable);
}

async fn events(node_client: &GridClient, node: u32, after: u64) -> Vec<(u64, NodeEvent)> {
    node_client
        .node_events(node, after)
        .await
        .unwrap()
        .into_iter()
        .map(|r| (r.seq, r.event))
        .collect()
}

#[tokio::test]
async fn a_node_contract_reserves_ips_updates_and_cancels_with_events_for_its_node() {
    let g = TestGrid::start().await;
    let (farmer, farm, node_client, node) = farm_with_node(&g, "life-farm", 3).await;
    let (user, user_twin) = g.twin().await;

    let c = user
        .create_node_contract(&node_contract(node.id, 1, 2))
        .await
        .unwrap();
    assert_eq!(c.twin_id, user_twin.id);
    assert_eq!(c.state, ContractState::Created);
    assert_eq!(c.node_id(), Some(node.id));
    assert_eq!(reserved(&c), ["185.69.166.10/24", "185.69.166.11/24"]);
    let pool = farmer.list_farm_ips(farm.id).await.unwrap();
    let held: Vec<_> = pool.iter().map(|i| i.contract_id).collect();
    assert_eq!(held, [Some(c.id), Some(c.id), None]);
    assert_eq!(g.client().get_contract(c.id).await.unwrap(), c);
    // Creating a contract tells the node nothing: the deployment itself comes over the relay.
    assert!(events(&node_client, node.id, 0).await.is_empty());

    // Update: the owner changes the hash; the node hears of it.
    let updated = user
        .update_node_contract(
            c.id,
            &UpdateNodeContract {
                deployment_hash: DeploymentHash([2; 32]),
            },
        )
        .await
        .unwrap();
    let ContractKind::Node {
        deployment_hash, ..
    } = &updated.kind
    else {
        panic!("{updated:?}")
    };
    assert_eq!(*deployment_hash, DeploymentHash([2; 32]));
    assert_eq!(
        reserved(&updated),
        reserved(&c),
        "an update keeps the addresses"
    );

    // Nobody else updates or cancels it, and trying changes nothing.
    let (stranger, _) = g.twin().await;
    let before = g.dump();
    let upd = UpdateNodeContract {
        deployment_hash: DeploymentHash([9; 32]),
    };
    assert_eq!(status(stranger.update_node_contract(c.id, &upd).await), 403);
    assert_eq!(status(stranger.cancel_contract(c.id).await), 403);
    assert_eq!(
        status(user.update_node_contract(c.id + 100, &upd).await),
        404
    );
    assert_eq!(g.dump(), before);

    // Cancel: deleted, addresses back in the pool, an event for the node.
    let gone = user.cancel_contract(c.id).await.unwrap();
    assert_eq!(gone.state, ContractState::Deleted);
    assert!(reserved(&gone).is_empty());
    assert!(
        farmer
            .list_farm_ips(farm.id)
            .await
            .unwrap()
            .iter()
            .all(|i| i.contract_id.is_none())
    );
    let before = g.dump();
    assert_eq!(status(user.cancel_contract(c.id).await), 409);
    assert_eq!(status(user.update_node_contract(c.id, &upd).await), 409);
    assert_eq!(g.dump(), before);
    assert_eq!(
        g.client().get_contract(c.id).await.unwrap().state,
        ContractState::Deleted
    );

    assert_eq!(
        events(&node_client, node.id, 0).await,
        [
            (
                1,
                NodeEvent::ContractUpdated {
                    contract_id: c.id,
                    deployment_hash: DeploymentHash([2; 32])
                }
            ),
            (2, NodeEvent::ContractCancelled { contract_id: c.id }),
        ]
    );
    assert_eq!(events(&node_client, node.id, 1).await.len(), 1);
    assert!(events(&node_client, node.id, 2).await.is_empty());

    // The freed addresses serve the next contract.
    let next = user
        .create_node_contract(&node_contract(node.id, 3, 3))
        .await
        .unwrap();
    assert_eq!(reserved(&next).len(), 3);
}

#[tokio::test]
async fn a_pool_without_enough_free_ips_refuses_and_stores_nothing() {
    let g = TestGrid::start().await;
    let (_, _, _, node) = farm_with_node(&g, "small-farm", 1).await;
    let (user, _) = g.twin().await;
    let before = g.dump();
    let e = user
        .create_node_contract(&node_contract(node.id, 1, 2))
        .await
        .unwrap_err();
    assert_eq!(e.status(), Some(409));
    assert!(e.to_string().contains("1 free public IPs"), "{e}");
    assert_eq!(g.dump(), before, "a refused contract stores nothing");
    // Zero addresses asked: fine on any farm.
    user.create_node_contract(&node_contract(node.id, 1, 0))
        .await
        .unwrap();
}

#[tokio::test]
async fn concurrent_contracts_for_the_last_ip_get_it_once() {
    let g = TestGrid::start().await;
    let (farmer, farm, _, node) = farm_with_node(&g, "race-farm", 1).await;
    let mut users = Vec::new();
    for _ in 0..8 {
        users.push(g.twin().await.0);
    }
    let tasks: Vec<_> = users
        .into_iter()
        .map(|u| {
            let want = node_contract(node.id, 1, 1);
            tokio::spawn(async move { u.create_node_contract(&want).await })
        })
        .collect();
    let mut won = Vec::new();
    let mut refused = 0;
    for t in tasks {
        match t.await.unwrap() {
            Ok(c) => won.push(c),
            Err(e) => {
                assert_eq!(e.status(), Some(409), "{e}");
                refused += 1;
            }
        }
    }
    assert_eq!((won.len(), refused), (1, 7));
    let pool = farmer.list_farm_ips(farm.id).await.unwrap();
    assert_eq!(pool[0].contract_id, Some(won[0].id));
    let all = g
        .client()
        .list_contracts(&ContractFilter::default())
        .await
        .unwrap();
    assert_eq!(all, won, "the refused ones left no contract behind");
}

#[tokio::test]
async fn bad_node_contracts_are_refused_and_change_nothing() {
    let g = TestGrid::start().await;
    let (_, _, _, node) = farm_with_node(&g, "bad-farm", 0).await;
    let (user, _) = g.twin().await;
    let before = g.dump();

    let e = user
        .create_node_contract(&node_contract(node.id + 1, 1, 0))
        .await
        .unwrap_err();
    assert_eq!(e.status(), Some(400));
    assert!(e.to_string().contains("does not exist"), "{e}");
    let e = user
        .create_node_contract(&node_contract(node.id, 1, 65))
        .await
        .unwrap_err();
    assert_eq!(e.status(), Some(400));
    assert!(e.to_string().contains("public_ips"), "{e}");

    let id = user.identity().unwrap();
    let twin = user.twin_id().unwrap();
    let path = "/api/v1/contracts/node";
    let url = g.url();
    let send = |body: &str, auth: Option<String>| {
        let body = body.as_bytes().to_vec();
        let url = url.clone();
        async move { raw(&url, "POST", path, body, auth.as_deref()).await }
    };
    let sign = |body: &str, signer: Signer| {
        Some(auth_header(
            id,
            signer,
            "POST",
            path,
            zos_types::auth::unix_now(),
            body.as_bytes(),
        ))
    };
    let hash = "00".repeat(32);
    let cases = [
        (
            format!(
                r#"{{"node_id":{},"deployment_hash":"{hash}","x":1}}"#,
                node.id
            ),
            Signer::Twin(twin),
            400,
            "unknown field",
        ),
        (
            format!(r#"{{"node_id":{},"deployment_hash":"zz"}}"#, node.id),
            Signer::Twin(twin),
            400,
            "deployment_hash",
        ),
        (
            format!(r#"{{"node_id":{},"deployment_hash":"{hash}"}}"#, node.id),
            Signer::Key(id.public_key()),
            401,
            "registered twin",
        ),
    ];
    for (body, signer, want, needle) in cases {
        let (code, answer) = send(&body, sign(&body, signer)).await;
        assert_eq!(code, want, "{body}: {answer}");
        let msg = error_message(&answer);
        assert!(msg.contains(needle), "{body}: {msg}");
    }
    let body = format!(r#"{{"node_id":{},"deployment_hash":"{hash}"}}"#, node.id);
    let (code, answer) = send(&body, None).await;
    assert_eq!(code, 401, "{answer}");
    assert_eq!(g.dump(), before);
}

#[tokio::test]
async fn names_follow_gateway_rules_and_are_unique_while_live_in_any_case() {
    let g = TestGrid::start().await;
    let (alice, _) = g.twin().await;
    let (bob, _) = g.twin().await;

    let web = alice.create_name_contract("my-Web_1").await.unwrap();
    assert_eq!(
        web.kind,
        ContractKind::Name {
            name: "my-Web_1".into()
        }
    );
    assert_eq!(web.node_id(), None);
    let before = g.dump();
    for taken in ["my-Web_1", "MY-WEB_1", "my-web_1"] {
        let e = bob.create_name_contract(taken).await.unwrap_err();
        assert_eq!(e.status(), Some(409), "{taken}");
        assert!(e.to_string().contains("held by another contract"), "{e}");
    }
    let long = "a".repeat(64);
    for bad in ["", "a.b", "a b", "é", "a/b", long.as_str()] {
        let e = bob.create_name_contract(bad).await.unwrap_err();
        assert_eq!(e.status(), Some(400), "{bad:?}");
        assert!(e.to_string().contains("1 to 63"), "{e}");
    }
    // A name contract has no deployment hash.
    let upd = UpdateNodeContract {
        deployment_hash: DeploymentHash([1; 32]),
    };
    assert_eq!(status(alice.update_node_contract(web.id, &upd).await), 409);
    assert_eq!(g.dump(), before);

    bob.create_name_contract(&"b".repeat(63)).await.unwrap();
    // Cancelled, the name is free again.
    alice.cancel_contract(web.id).await.unwrap();
    let again = bob.create_name_contract("MY-web_1").await.unwrap();
    assert_eq!(again.twin_id, bob.twin_id().unwrap());
}

#[tokio::test]
async fn a_node_has_one_live_rent_contract_and_only_its_renter_deploys_there() {
    let g = TestGrid::start().await;
    let (farmer, farm, _, node) = farm_with_node(&g, "rent-farm", 0).await;
    rentable(&farmer, farm.id).await;
    let (_, other_node) = g.node(farm.id).await;
    let (alice, _) = g.twin().await;
    let (bob, _) = g.twin().await;

    // Bob deploys on the other node; that node cannot be rented by Alice while he does.
    let bobs = bob
        .create_node_contract(&node_contract(other_node.id, 1, 0))
        .await
        .unwrap();
    let before = g.dump();
    let e = alice.create_rent_contract(other_node.id).await.unwrap_err();
    assert_eq!(e.status(), Some(409));
    assert!(e.to_string().contains("rented empty"), "{e}");
    assert_eq!(status(alice.create_rent_contract(node.id + 100).await), 400);
    assert_eq!(g.dump(), before);

    let rent = alice.create_rent_contract(node.id).await.unwrap();
    assert_eq!(rent.kind, ContractKind::Rent { node_id: node.id });
    let before = g.dump();
    assert_eq!(status(bob.create_rent_contract(node.id).await), 409);
    assert_eq!(status(alice.create_rent_contract(node.id).await), 409);
    let e = bob
        .create_node_contract(&node_contract(node.id, 1, 0))
        .await
        .unwrap_err();
    assert_eq!(e.status(), Some(409));
    assert!(e.to_string().contains("rented by twin"), "{e}");
    assert_eq!(g.dump(), before);
    // The renter deploys on it.
    alice
        .create_node_contract(&node_contract(node.id, 2, 0))
        .await
        .unwrap();

    alice.cancel_contract(rent.id).await.unwrap();
    let bobs_rent = bob.create_rent_contract(node.id).await;
    assert_eq!(
        status(bobs_rent),
        409,
        "alice's deployment is still on the node"
    );
    bob.cancel_contract(bobs.id).await.unwrap();
    alice.create_rent_contract(other_node.id).await.unwrap();
}

/// A twin rents a node of a farm whose farmer never offered whole nodes (taking it from every
/// other tenant): refused, nothing stored. Once the farmer marks the farm rentable, it works.
#[tokio::test]
async fn renting_a_node_of_a_farm_that_does_not_rent_is_refused() {
    let g = TestGrid::start().await;
    let (farmer, farm, _, node) = farm_with_node(&g, "shared-farm", 0).await;
    let (alice, _) = g.twin().await;
    assert!(
        !farm.policy.rentable,
        "a new farm does not rent whole nodes"
    );
    let before = g.dump();
    let e = alice.create_rent_contract(node.id).await.unwrap_err();
    assert_eq!(e.status(), Some(403));
    assert!(
        e.to_string().contains("does not rent out whole nodes")
            && e.to_string().contains("--rentable true"),
        "{e}"
    );
    assert_eq!(g.dump(), before);
    // Only the farmer changes the policy.
    let policy = FarmPolicy {
        rentable: true,
        ..FarmPolicy::default()
    };
    let e = alice.set_farm_policy(farm.id, &policy).await.unwrap_err();
    assert_eq!(e.status(), Some(403));
    assert_eq!(g.dump(), before);

    rentable(&farmer, farm.id).await;
    let rent = alice.create_rent_contract(node.id).await.unwrap();
    assert_eq!(rent.kind, ContractKind::Rent { node_id: node.id });
}

/// A node contract may reserve at most [`zos_grid::contracts::MAX_PUBLIC_IPS`] addresses.
#[tokio::test]
async fn a_contract_asking_for_more_ips_than_the_bound_is_refused() {
    let g = TestGrid::start().await;
    let (_, _, _, node) = farm_with_node(&g, "bound-farm", 2).await;
    let (alice, _) = g.twin().await;
    let before = g.dump();
    let too_many = zos_grid::contracts::MAX_PUBLIC_IPS + 1;
    let e = alice
        .create_node_contract(&node_contract(node.id, 1, too_many))
        .await
        .unwrap_err();
    assert_eq!(e.status(), Some(400));
    assert!(e.to_string().contains("public_ips: at most"), "{e}");
    assert_eq!(g.dump(), before);
}

#[tokio::test]
async fn contracts_are_listed_by_twin_node_and_state() {
    let g = TestGrid::start().await;
    let (_, _, _, node) = farm_with_node(&g, "list-farm", 0).await;
    let (alice, a) = g.twin().await;
    let (bob, b) = g.twin().await;
    let c1 = alice
        .create_node_contract(&node_contract(node.id, 1, 0))
        .await
        .unwrap();
    let c2 = bob
        .create_node_contract(&node_contract(node.id, 2, 0))
        .await
        .unwrap();
    let n = alice.create_name_contract("listed").await.unwrap();
    let c1 = alice.cancel_contract(c1.id).await.unwrap();
    let list = |f: ContractFilter| {
        let c = g.client();
        async move {
            c.list_contracts(&f)
                .await
                .unwrap()
                .into_iter()
                .map(|c| c.id)
                .collect::<Vec<_>>()
        }
    };
    assert_eq!(list(ContractFilter::default()).await, [c1.id, c2.id, n.id]);
    let by_twin = ContractFilter {
        twin_id: Some(a.id),
        ..ContractFilter::default()
    };
    assert_eq!(list(by_twin).await, [c1.id, n.id]);
    let by_node = ContractFilter {
        node_id: Some(node.id),
        ..ContractFilter::default()
    };
    assert_eq!(list(by_node).await, [c1.id, c2.id]);
    let live_of_bob = ContractFilter {
        twin_id: Some(b.id),
        state: Some(ContractState::Created),
        ..ContractFilter::default()
    };
    assert_eq!(list(live_of_bob).await, [c2.id]);
    let deleted = ContractFilter {
        state: Some(ContractState::Deleted),
        ..ContractFilter::default()
    };
    assert_eq!(list(deleted).await, [c1.id]);
    let (code, answer) = raw(&g.url(), "GET", "/api/v1/contracts?color=red", vec![], None).await;
    assert_eq!(code, 400, "{answer}");
    let (code, answer) = raw(&g.url(), "GET", "/api/v1/contracts/99", vec![], None).await;
    assert_eq!(code, 404, "{answer}");
}

#[tokio::test]
async fn the_admin_twin_starts_and_ends_grace_periods_and_the_node_hears_of_them() {
    // A fresh database gives the first twin id 1: make it the admin.
    let g = TestGrid::start_with(|c| c.admin = Some(1)).await;
    let (admin, admin_twin) = g.twin().await;
    assert_eq!(admin_twin.id, 1);
    let (_, _, node_client, node) = farm_with_node(&g, "grace-farm", 1).await;
    let (user, _) = g.twin().await;
    let c = user
        .create_node_contract(&node_contract(node.id, 1, 1))
        .await
        .unwrap();
    let name = user.create_name_contract("graced").await.unwrap();

    let before = g.dump();
    let e = user.set_grace(c.id, true).await.unwrap_err();
    assert_eq!(e.status(), Some(403));
    assert!(e.to_string().contains("admin twin 1"), "{e}");
    assert_eq!(status(admin.set_grace(c.id + 100, true).await), 404);
    assert_eq!(status(admin.set_grace(c.id, false).await), 409);
    assert_eq!(g.dump(), before);

    let graced = admin.set_grace(c.id, true).await.unwrap();
    assert_eq!(graced.state, ContractState::GracePeriod);
    assert_eq!(reserved(&graced).len(), 1, "grace keeps the addresses");
    assert_eq!(status(admin.set_grace(c.id, true).await), 409);
    // The owner may still update it while in grace.
    user.update_node_contract(
        c.id,
        &UpdateNodeContract {
            deployment_hash: DeploymentHash([5; 32]),
        },
    )
    .await
    .unwrap();
    let back = admin.set_grace(c.id, false).await.unwrap();
    assert_eq!(back.state, ContractState::Created);
    // Name contracts have grace periods too, but no node to tell.
    admin.set_grace(name.id, true).await.unwrap();
    // A contract cancelled in grace is gone; grace no longer applies to it.
    admin.set_grace(c.id, true).await.unwrap();
    user.cancel_contract(c.id).await.unwrap();
    assert_eq!(status(admin.set_grace(c.id, false).await), 409);

    let got: Vec<NodeEvent> = events(&node_client, node.id, 0)
        .await
        .into_iter()
        .map(|(_, e)| e)
        .collect();
    assert_eq!(
        got,
        [
            NodeEvent::GracePeriodStarted { contract_id: c.id },
            NodeEvent::ContractUpdated {
                contract_id: c.id,
                deployment_hash: DeploymentHash([5; 32])
            },
            NodeEvent::GracePeriodEnded { contract_id: c.id },
            NodeEvent::GracePeriodStarted { contract_id: c.id },
            NodeEvent::ContractCancelled { contract_id: c.id },
        ]
    );
}

#[tokio::test]
async fn without_an_admin_twin_grace_answers_how_to_configure_one() {
    let g = TestGrid::start().await;
    let (alice, _) = g.twin().await;
    let n = alice.create_name_contract("web").await.unwrap();
    let before = g.dump();
    let e = alice.set_grace(n.id, true).await.unwrap_err();
    assert_eq!(e.status(), Some(403));
    assert!(e.to_string().contains("--admin-twin"), "{e}");
    assert_eq!(g.dump(), before);
}

#[tokio::test]
async fn only_the_node_reads_its_events_numbered_per_node() {
    let g = TestGrid::start().await;
    let (farmer, farm, node_client, node) = farm_with_node(&g, "events-farm", 0).await;
    let (other_client, other) = g.node(farm.id).await;
    let (user, _) = g.twin().await;
    let on_node = user
        .create_node_contract(&node_contract(node.id, 1, 0))
        .await
        .unwrap();
    let on_other = user
        .create_node_contract(&node_contract(other.id, 1, 0))
        .await
        .unwrap();
    user.cancel_contract(on_other.id).await.unwrap();
    user.cancel_contract(on_node.id).await.unwrap();
    // The farmer's change of the public configuration is an event too.
    farmer
        .set_public_config(
            node.id,
            &PublicConfig {
                ipv4: "185.69.166.200/24".parse().unwrap(),
                gw4: "185.69.166.1".parse().unwrap(),
                ipv6: None,
                gw6: None,
                domain: None,
            },
        )
        .await
        .unwrap();

    // Each node's log starts at 1.
    assert_eq!(
        events(&node_client, node.id, 0).await,
        [
            (
                1,
                NodeEvent::ContractCancelled {
                    contract_id: on_node.id
                }
            ),
            (2, NodeEvent::PublicConfigChanged),
        ]
    );
    assert_eq!(
        events(&other_client, other.id, 0).await,
        [(
            1,
            NodeEvent::ContractCancelled {
                contract_id: on_other.id
            }
        )]
    );

    // Nobody else reads them: not the user, not the farmer, not another node, not anonymous.
    for stranger in [&user, &farmer, &other_client] {
        let e = stranger.node_events(node.id, 0).await.unwrap_err();
        assert_eq!(e.status(), Some(403), "{e}");
    }
    let (code, answer) = raw(
        &g.url(),
        "GET",
        &format!("/api/v1/nodes/{}/events?after=0", node.id),
        vec![],
        None,
    )
    .await;
    assert_eq!(code, 401, "{answer}");
    let e = node_client.node_events(node.id + 100, 0).await.unwrap_err();
    assert_eq!(e.status(), Some(404), "{e}");
}

#[tokio::test]
async fn contracts_and_events_survive_a_restart() {
    let mut g = TestGrid::start().await;
    let (farmer, farm, node_client, node) = farm_with_node(&g, "restart-farm", 2).await;
    let (user, _) = g.twin().await;
    let c = user
        .create_node_contract(&node_contract(node.id, 1, 2))
        .await
        .unwrap();
    user.update_node_contract(
        c.id,
        &UpdateNodeContract {
            deployment_hash: DeploymentHash([4; 32]),
        },
    )
    .await
    .unwrap();
    let before = g.dump();
    g.restart().await;
    assert_eq!(g.dump(), before);
    let user = GridClient::new(&g.url())
        .unwrap()
        .with_identity(user.identity().unwrap().clone())
        .with_twin(user.twin_id().unwrap());
    let node_client = GridClient::new(&g.url())
        .unwrap()
        .with_identity(node_client.identity().unwrap().clone())
        .with_twin(node.twin_id);
    let farmer = GridClient::new(&g.url())
        .unwrap()
        .with_identity(farmer.identity().unwrap().clone())
        .with_twin(farm.twin_id);
    let loaded = user.get_contract(c.id).await.unwrap();
    assert_eq!(reserved(&loaded).len(), 2);
    user.cancel_contract(c.id).await.unwrap();
    assert!(
        farmer
            .list_farm_ips(farm.id)
            .await
            .unwrap()
            .iter()
            .all(|i| i.contract_id.is_none())
    );
    let seqs: Vec<u64> = events(&node_client, node.id, 0)
        .await
        .into_iter()
        .map(|(s, _)| s)
        .collect();
    assert_eq!(seqs, [1, 2], "numbering continues after a restart");
}
