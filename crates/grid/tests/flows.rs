//! Registry flows through the typed client, over real HTTP on 127.0.0.1 with a real SQLite file.

mod common;

use common::{TestGrid, error_message, raw, registration};
use zos_grid::clock::Clock;
use zos_types::Identity;
use zos_types::capacity::GIB;
use zos_types::registry::{
    AddFarmIp, AdmissionToken, FarmPolicy, NodeAdmission, NodeFilter, NodeRegistration,
    ONLINE_PERIODS, PublicConfig, UptimeReport,
};

fn status(e: zos_client::ClientError) -> u16 {
    e.status()
        .unwrap_or_else(|| panic!("expected an API error, got {e:?}"))
}

fn ip(addr: &str, gw: &str) -> AddFarmIp {
    AddFarmIp {
        ip: addr.parse().unwrap(),
        gateway: gw.parse().unwrap(),
    }
}

fn report(uptime_secs: u64) -> UptimeReport {
    UptimeReport {
        uptime_secs,
        timestamp: zos_types::auth::unix_now(),
        used: None,
    }
}

#[tokio::test]
async fn health_answers_version_and_the_registry_clock() {
    let g = TestGrid::start().await;
    g.clock.set(1_234_567);
    let h = g.client().health().await.unwrap();
    assert_eq!(h.version, env!("CARGO_PKG_VERSION"));
    assert_eq!(h.time, 1_234_567);
}

#[tokio::test]
async fn twins_are_created_and_found_by_id_and_key() {
    let g = TestGrid::start().await;
    let id = Identity::generate().unwrap();
    let client = g.client().with_identity(id.clone());
    let twin = client
        .create_twin(Some("wss://relay.example".into()))
        .await
        .unwrap();
    assert_eq!(twin.public_key, id.public_key());
    assert_eq!(twin.relay.as_deref(), Some("wss://relay.example"));
    assert_eq!(twin.created_at, g.clock.now());

    let anon = g.client();
    assert_eq!(anon.get_twin(twin.id).await.unwrap(), twin);
    assert_eq!(
        anon.twin_by_key(&id.public_key()).await.unwrap(),
        Some(twin.clone())
    );
    let stranger = Identity::generate().unwrap().public_key();
    assert_eq!(anon.twin_by_key(&stranger).await.unwrap(), None);
    let missing = anon.get_twin(twin.id + 100).await.unwrap_err();
    assert!(missing.is_not_found(), "{missing:?}");
    assert!(!missing.is_transient());

    // The same key cannot become a second twin.
    let err = client.create_twin(None).await.unwrap_err();
    assert_eq!(status(err), 409);
}

#[tokio::test]
async fn farms_are_created_listed_and_unique_by_name_in_any_case() {
    let g = TestGrid::start().await;
    let (farmer, farmer_twin) = g.twin().await;
    let farm = farmer.create_farm("Green-Farm").await.unwrap();
    assert_eq!(farm.name, "Green-Farm");
    assert_eq!(farm.twin_id, farmer_twin.id);
    assert!(farm.public_ips.is_empty());
    let other = farmer.create_farm("blue_farm").await.unwrap();

    let anon = g.client();
    assert_eq!(anon.get_farm(farm.id).await.unwrap(), farm);
    assert_eq!(anon.list_farms().await.unwrap(), vec![farm.clone(), other]);
    assert_eq!(
        anon.farm_by_name("green-farm").await.unwrap(),
        Some(farm.clone())
    );
    assert_eq!(anon.farm_by_name("no-such-farm").await.unwrap(), None);
    assert!(anon.get_farm(999).await.unwrap_err().is_not_found());

    let (someone, _) = g.twin().await;
    let err = someone.create_farm("GREEN-FARM").await.unwrap_err();
    assert_eq!(status(err), 409);
    assert_eq!(anon.list_farms().await.unwrap().len(), 2);
}

#[tokio::test]
async fn farm_ips_are_managed_by_the_farmer_only() {
    let g = TestGrid::start().await;
    let (farmer, farm) = g.farm("ip-farm").await;
    let (stranger, _) = g.twin().await;

    let f = farmer
        .add_farm_ip(farm.id, &ip("185.69.166.20/24", "185.69.166.1"))
        .await
        .unwrap();
    assert_eq!(f.public_ips.len(), 1);
    farmer
        .add_farm_ip(farm.id, &ip("185.69.166.21/24", "185.69.166.1"))
        .await
        .unwrap();
    let ips = g.client().list_farm_ips(farm.id).await.unwrap();
    assert_eq!(
        ips.iter().map(|i| i.ip.to_string()).collect::<Vec<_>>(),
        ["185.69.166.20/24", "185.69.166.21/24"]
    );
    assert!(ips.iter().all(|i| i.contract_id.is_none()));

    // Someone else cannot add to or remove from the pool.
    let err = stranger
        .add_farm_ip(farm.id, &ip("185.69.166.22/24", "185.69.166.1"))
        .await
        .unwrap_err();
    assert_eq!(status(err), 403);
    let err = stranger
        .remove_farm_ip(farm.id, "185.69.166.20".parse().unwrap())
        .await
        .unwrap_err();
    assert_eq!(status(err), 403);

    // An address is in one pool at most, and in the same pool once.
    let (other_farmer, other_farm) = g.farm("other-farm").await;
    let err = other_farmer
        .add_farm_ip(other_farm.id, &ip("185.69.166.20/24", "185.69.166.1"))
        .await
        .unwrap_err();
    assert_eq!(status(err), 409);
    let err = farmer
        .add_farm_ip(farm.id, &ip("185.69.166.20/25", "185.69.166.1"))
        .await
        .unwrap_err();
    assert_eq!(status(err), 409);

    let f = farmer
        .remove_farm_ip(farm.id, "185.69.166.20".parse().unwrap())
        .await
        .unwrap();
    assert_eq!(f.public_ips.len(), 1);
    assert_eq!(f.public_ips[0].ip.to_string(), "185.69.166.21/24");
    let err = farmer
        .remove_farm_ip(farm.id, "185.69.166.20".parse().unwrap())
        .await
        .unwrap_err();
    assert!(err.is_not_found(), "{err:?}");
    // An address of another farm's pool is not in this one.
    other_farmer
        .add_farm_ip(other_farm.id, &ip("10.20.30.40/24", "10.20.30.1"))
        .await
        .unwrap();
    let err = farmer
        .remove_farm_ip(farm.id, "10.20.30.40".parse().unwrap())
        .await
        .unwrap_err();
    assert!(err.is_not_found(), "{err:?}");
    assert!(
        g.client()
            .list_farm_ips(999)
            .await
            .unwrap_err()
            .is_not_found()
    );
}

#[tokio::test]
async fn an_ip_held_by_a_contract_cannot_be_removed() {
    let g = TestGrid::start().await;
    let (farmer, farm) = g.farm("contract-farm").await;
    farmer
        .add_farm_ip(farm.id, &ip("185.69.166.20/24", "185.69.166.1"))
        .await
        .unwrap();
    // Contracts arrive with issue 4; until then, hold the address the way they will.
    g.sql("UPDATE farm_ips SET contract_id = 7");
    let before = g.dump();
    let err = farmer
        .remove_farm_ip(farm.id, "185.69.166.20".parse().unwrap())
        .await
        .unwrap_err();
    assert_eq!(err.status(), Some(409));
    assert!(err.to_string().contains("contract 7"), "{err}");
    assert_eq!(g.dump(), before);
    let ips = g.client().list_farm_ips(farm.id).await.unwrap();
    assert_eq!(ips[0].contract_id, Some(7));
}

#[tokio::test]
async fn register_creates_then_updates_the_node_of_a_twin() {
    let g = TestGrid::start().await;
    let (_, farm) = g.farm("node-farm").await;
    let (node_client, twin) = g.twin().await;

    let reg = g.admitted(farm.id);
    let (node, created) = node_client.register_node(&reg).await.unwrap();
    assert!(created);
    assert_eq!(node.twin_id, twin.id);
    assert_eq!(node.farm_id, farm.id);
    assert_eq!(node.capacity, reg.capacity);
    assert_eq!(node.reserved, reg.reserved);
    assert_eq!(node.used, zos_types::Capacity::ZERO);
    assert_eq!(node.hardware, reg.hardware);
    assert_eq!(node.interfaces, reg.interfaces);
    assert!(!node.online);
    assert_eq!(node.last_seen, None);

    g.clock.advance(5);
    let mut changed = reg.clone();
    changed.capacity.mru = 32 * GIB;
    changed.zos_version = "0.2.0".into();
    changed.limited = Some("no SSD for the cache".into());
    let (updated, created) = node_client.register_node(&changed).await.unwrap();
    assert!(!created);
    assert_eq!(updated.id, node.id);
    assert_eq!(updated.capacity.mru, 32 * GIB);
    assert_eq!(updated.zos_version, "0.2.0");
    assert_eq!(updated.limited.as_deref(), Some("no SSD for the cache"));
    assert_eq!(updated.created_at, node.created_at);
    assert_eq!(updated.updated_at, node.created_at + 5);
    assert_eq!(g.client().get_node(node.id).await.unwrap(), updated);
    // Still one node for the twin.
    assert_eq!(
        g.client()
            .list_nodes(&NodeFilter::default())
            .await
            .unwrap()
            .len(),
        1
    );

    // A node's farm must exist.
    let mut lost = reg.clone();
    lost.farm_id = 999;
    let err = node_client.register_node(&lost).await.unwrap_err();
    assert_eq!(err.status(), Some(400));
    assert!(err.to_string().contains("farm_id"), "{err}");
    assert!(g.client().get_node(999).await.unwrap_err().is_not_found());
}

#[tokio::test]
async fn public_config_is_set_by_the_farmer_only() {
    let g = TestGrid::start().await;
    let (farmer, farm) = g.farm("pub-farm").await;
    let (node_client, node) = g.node(farm.id).await;
    let (stranger, _) = g.twin().await;
    let config = PublicConfig {
        ipv4: "185.69.166.30/24".parse().unwrap(),
        gw4: "185.69.166.1".parse().unwrap(),
        ipv6: Some("2a02:1802:5e::30/64".parse().unwrap()),
        gw6: Some("2a02:1802:5e::1".parse().unwrap()),
        domain: Some("node1.example.com".into()),
    };
    for who in [&node_client, &stranger] {
        let err = who.set_public_config(node.id, &config).await.unwrap_err();
        assert_eq!(status(err), 403);
    }
    assert_eq!(
        g.client().get_node(node.id).await.unwrap().public_config,
        None
    );

    let updated = farmer.set_public_config(node.id, &config).await.unwrap();
    assert_eq!(updated.public_config, Some(config.clone()));
    assert_eq!(
        g.client().get_node(node.id).await.unwrap().public_config,
        Some(config)
    );
    let err = farmer
        .set_public_config(
            999,
            &PublicConfig {
                ipv4: "185.69.166.30/24".parse().unwrap(),
                gw4: "185.69.166.1".parse().unwrap(),
                ipv6: None,
                gw6: None,
                domain: None,
            },
        )
        .await
        .unwrap_err();
    assert!(err.is_not_found());
}

/// Someone's machine registers into a farm it was never admitted to (to draw the farm's
/// deployments, or to spoil its reputation): without the farmer's token, with a token signed by
/// someone else, for another farm, or expired, it is refused and nothing is stored. With the
/// farmer's token it joins; a node already in the farm re-registers without one; moving to
/// another farm needs that farm's token; an open farm takes anyone.
#[tokio::test]
async fn a_node_without_its_farmers_admission_cannot_join_the_farm() {
    let g = TestGrid::start().await;
    let (farmer, farm) = g.farm("guarded-farm").await;
    let (_, other_farm) = g.farm("other-farm").await;
    let (intruder, _) = g.twin().await;
    let forged = AdmissionToken::sign(&Identity::generate().unwrap(), farm.id, g.clock.now() + 60);
    let expired = AdmissionToken::sign(farmer.identity().unwrap(), farm.id, g.clock.now() - 1);
    let before = g.dump();
    for (token, needle) in [
        (None, "admits only nodes its farmer signed"),
        (Some(forged), "not signed by the farm's farmer"),
        (Some(g.admission(other_farm.id)), "is for farm"),
        (Some(expired), "expired"),
    ] {
        let reg = zos_types::registry::NodeRegistration {
            admission: token,
            ..registration(farm.id)
        };
        let err = intruder.register_node(&reg).await.unwrap_err();
        assert!(err.to_string().contains(needle), "{needle}: {err}");
        assert_eq!(status(err), 403);
        assert_eq!(g.dump(), before, "{needle}: something was stored");
    }

    // With the farmer's token it joins, and re-registers without it.
    let admitted = g.admitted(farm.id);
    let (node, created) = intruder.register_node(&admitted).await.unwrap();
    assert!(created && node.farm_id == farm.id);
    intruder
        .register_node(&registration(farm.id))
        .await
        .unwrap();
    // Moving to another farm needs that farm's admission.
    let err = intruder
        .register_node(&registration(other_farm.id))
        .await
        .unwrap_err();
    assert_eq!(status(err), 403);
    let moved = intruder
        .register_node(&g.admitted(other_farm.id))
        .await
        .unwrap();
    assert_eq!(moved.0.farm_id, other_farm.id);

    // An open farm takes any node.
    let open = FarmPolicy {
        node_admission: NodeAdmission::Open,
        ..FarmPolicy::default()
    };
    let f = farmer.set_farm_policy(farm.id, &open).await.unwrap();
    assert_eq!(f.policy.node_admission, NodeAdmission::Open);
    let (anyone, _) = g.twin().await;
    let (n, created) = anyone.register_node(&registration(farm.id)).await.unwrap();
    assert!(created && n.farm_id == farm.id);
}

/// A farmer claims an address another farm uses: in its pool, or as the public address of one
/// of its nodes; and a farmer gives a node an address of another farm's pool. Each is refused
/// and changes nothing.
#[tokio::test]
async fn a_farm_cannot_claim_an_address_another_farm_uses() {
    let g = TestGrid::start().await;
    let (alice, farm_a) = g.farm("farm-alice").await;
    let (mallory, farm_m) = g.farm("farm-mallory").await;
    let (_, node_a) = g.node(farm_a.id).await;
    let (_, node_m) = g.node(farm_m.id).await;
    alice
        .add_farm_ip(farm_a.id, &ip("185.69.166.20/24", "185.69.166.1"))
        .await
        .unwrap();
    let config = PublicConfig {
        ipv4: "185.69.166.30/24".parse().unwrap(),
        gw4: "185.69.166.1".parse().unwrap(),
        ipv6: None,
        gw6: None,
        domain: None,
    };
    alice.set_public_config(node_a.id, &config).await.unwrap();
    let before = g.dump();
    for (addr, needle) in [
        ("185.69.166.20/24", "already in the pool of farm"),
        ("185.69.166.30/24", "is the public address of node"),
    ] {
        let err = mallory
            .add_farm_ip(farm_m.id, &ip(addr, "185.69.166.1"))
            .await
            .unwrap_err();
        assert!(err.to_string().contains(needle), "{addr}: {err}");
        assert_eq!(status(err), 409);
        assert_eq!(g.dump(), before, "{addr}: something was stored");
    }
    let stolen = PublicConfig {
        ipv4: "185.69.166.20/24".parse().unwrap(),
        ..config
    };
    let err = mallory
        .set_public_config(node_m.id, &stolen)
        .await
        .unwrap_err();
    assert!(err.to_string().contains("is in the pool of farm"), "{err}");
    assert_eq!(status(err), 409);
    assert_eq!(g.dump(), before);
    // The farm's own addresses stay usable for its own nodes.
    alice.set_public_config(node_a.id, &stolen).await.unwrap();
}

#[tokio::test]
async fn uptime_reports_make_a_node_online_until_three_periods_pass() {
    let g = TestGrid::start().await;
    let (_, farm) = g.farm("up-farm").await;
    let (node_client, node) = g.node(farm.id).await;
    let period = node.report_interval_secs as i64;
    let t0 = g.clock.now();

    let after = node_client
        .report_uptime(node.id, &report(3600))
        .await
        .unwrap();
    assert!(after.online);
    assert_eq!(after.uptime_secs, 3600);
    assert_eq!(after.last_seen, Some(t0));

    let anon = g.client();
    let online = NodeFilter {
        online: Some(true),
        ..Default::default()
    };
    let offline = NodeFilter {
        online: Some(false),
        ..Default::default()
    };
    // Just below three periods: online.
    g.clock.set(t0 + ONLINE_PERIODS * period - 1);
    assert!(anon.get_node(node.id).await.unwrap().online);
    assert_eq!(anon.list_nodes(&online).await.unwrap().len(), 1);
    assert!(anon.list_nodes(&offline).await.unwrap().is_empty());
    // Exactly three periods without a report: offline.
    g.clock.set(t0 + ONLINE_PERIODS * period);
    assert!(!anon.get_node(node.id).await.unwrap().online);
    assert!(anon.list_nodes(&online).await.unwrap().is_empty());
    assert_eq!(anon.list_nodes(&offline).await.unwrap().len(), 1);

    // Another twin cannot report for this node.
    g.clock.set(zos_types::auth::unix_now());
    let (stranger, _) = g.twin().await;
    let err = stranger
        .report_uptime(node.id, &report(1))
        .await
        .unwrap_err();
    assert_eq!(status(err), 403);
    assert!(
        node_client
            .report_uptime(999, &report(1))
            .await
            .unwrap_err()
            .is_not_found()
    );
}

#[tokio::test]
async fn uptime_reports_carry_what_workloads_use_and_free_capacity_follows() {
    let g = TestGrid::start().await;
    let (_, farm) = g.farm("used-farm").await;
    let (node_client, node) = g.node(farm.id).await;
    let free_before = node.free();
    let used = zos_types::Capacity {
        cru: node.capacity.cru + 2, // cores may be shared
        mru: 1 << 30,
        sru: 2 << 30,
        hru: 0,
    };
    let mut r = report(10);
    r.used = Some(used);
    let after = node_client.report_uptime(node.id, &r).await.unwrap();
    assert_eq!(after.used, used);
    assert_eq!(after.free().mru, free_before.mru - (1 << 30));
    assert_eq!(after.free().sru, free_before.sru - (2 << 30));
    assert_eq!(after.free().cru, 0);
    let anon = g.client();
    let wants = |mru: u64| NodeFilter {
        free_mru: Some(mru),
        ..Default::default()
    };
    assert!(
        anon.list_nodes(&wants(free_before.mru))
            .await
            .unwrap()
            .is_empty()
    );
    assert_eq!(
        anon.list_nodes(&wants(after.free().mru))
            .await
            .unwrap()
            .len(),
        1
    );

    // A report without `used` keeps the last one; more than the node has is refused whole.
    let kept = node_client
        .report_uptime(node.id, &report(11))
        .await
        .unwrap();
    assert_eq!(kept.used, used);
    let mut r = report(12);
    r.used = Some(zos_types::Capacity {
        sru: node.capacity.sru + 1,
        ..used
    });
    let err = node_client.report_uptime(node.id, &r).await.unwrap_err();
    assert_eq!(status(err), 400);
    let now = anon.get_node(node.id).await.unwrap();
    assert_eq!(now.used, used);
    assert_eq!(now.uptime_secs, 11, "a refused report changes nothing");
}

#[tokio::test]
async fn node_lists_filter_by_farm_online_and_free_capacity() {
    let g = TestGrid::start().await;
    let (_, farm_a) = g.farm("farm-a").await;
    let (_, farm_b) = g.farm("farm-b").await;
    let (a1_client, a1) = g.node(farm_a.id).await;
    let (_, a2) = g.node(farm_a.id).await;
    let (b1_client, b1) = g.node(farm_b.id).await;
    // b1 is big; a1 is online.
    let mut big = registration(farm_b.id);
    big.capacity.mru = 256 * GIB;
    big.reserved.mru = 16 * GIB;
    b1_client.register_node(&big).await.unwrap();
    a1_client.report_uptime(a1.id, &report(10)).await.unwrap();

    let anon = g.client();
    let ids =
        |nodes: Vec<zos_types::registry::Node>| nodes.iter().map(|n| n.id).collect::<Vec<_>>();
    let list = |f: NodeFilter| {
        let anon = anon.clone();
        async move { ids(anon.list_nodes(&f).await.unwrap()) }
    };
    assert_eq!(list(NodeFilter::default()).await, [a1.id, a2.id, b1.id]);
    assert_eq!(
        list(NodeFilter {
            farm_id: Some(farm_a.id),
            ..Default::default()
        })
        .await,
        [a1.id, a2.id]
    );
    assert_eq!(
        list(NodeFilter {
            farm_id: Some(farm_a.id),
            online: Some(true),
            ..Default::default()
        })
        .await,
        [a1.id]
    );
    assert_eq!(
        list(NodeFilter {
            twin_id: Some(b1.twin_id),
            ..Default::default()
        })
        .await,
        [b1.id]
    );
    // Free memory = capacity - reserved - used: 16 - 2 = 14 GiB on the small nodes,
    // 256 - 16 = 240 GiB on the big one.
    let free_mru = |v| NodeFilter {
        free_mru: Some(v),
        ..Default::default()
    };
    assert_eq!(list(free_mru(14 * GIB)).await, [a1.id, a2.id, b1.id]);
    assert_eq!(list(free_mru(14 * GIB + 1)).await, [b1.id]);
    assert_eq!(list(free_mru(240 * GIB)).await, [b1.id]);
    assert!(list(free_mru(240 * GIB + 1)).await.is_empty());
    // Capacity held by contracts counts too.
    g.sql(&format!(
        "UPDATE nodes SET used_mru = {} WHERE id = {}",
        4 * GIB,
        a2.id
    ));
    assert_eq!(list(free_mru(14 * GIB)).await, [a1.id, b1.id]);
    assert_eq!(list(free_mru(10 * GIB)).await, [a1.id, a2.id, b1.id]);
    assert_eq!(anon.get_node(a2.id).await.unwrap().free().mru, 10 * GIB);
    let cores = NodeFilter {
        free_cru: Some(4),
        free_sru: Some(480 * GIB),
        free_hru: Some(2000 * GIB),
        ..Default::default()
    };
    assert_eq!(list(cores).await, [a1.id, a2.id, b1.id]);
    let too_many_cores = NodeFilter {
        free_cru: Some(5),
        ..Default::default()
    };
    assert!(list(too_many_cores).await.is_empty());

    // The server's filtering agrees with NodeFilter::matches on every filter used above.
    let all = anon.list_nodes(&NodeFilter::default()).await.unwrap();
    for f in [free_mru(14 * GIB), free_mru(12 * GIB)] {
        let expect: Vec<_> = all.iter().filter(|n| f.matches(n)).map(|n| n.id).collect();
        assert_eq!(list(f).await, expect);
    }

    // Paging.
    let page = |limit, offset| NodeFilter {
        limit: Some(limit),
        offset: Some(offset),
        ..Default::default()
    };
    assert_eq!(list(page(2, 0)).await, [a1.id, a2.id]);
    assert_eq!(list(page(2, 2)).await, [b1.id]);
    let err = anon.list_nodes(&page(1001, 0)).await.unwrap_err();
    assert_eq!(err.status(), Some(400));
    assert!(err.to_string().contains("limit"), "{err}");
}

#[tokio::test]
async fn a_restarted_grid_keeps_everything() {
    let mut g = TestGrid::start().await;
    let (farmer, farm) = g.farm("durable-farm").await;
    farmer
        .add_farm_ip(farm.id, &ip("185.69.166.20/24", "185.69.166.1"))
        .await
        .unwrap();
    let (node_client, node) = g.node(farm.id).await;
    node_client
        .report_uptime(node.id, &report(77))
        .await
        .unwrap();
    let before = g.dump();
    let node_before = g.client().get_node(node.id).await.unwrap();
    let farm_before = g.client().get_farm(farm.id).await.unwrap();

    g.restart().await;
    assert_eq!(g.dump(), before);
    let anon = g.client();
    assert_eq!(anon.get_node(node.id).await.unwrap(), node_before);
    assert_eq!(anon.get_farm(farm.id).await.unwrap(), farm_before);
    assert_eq!(
        anon.twin_by_key(&farmer.identity().unwrap().public_key())
            .await
            .unwrap()
            .map(|t| t.id),
        Some(farm.twin_id)
    );
    // The same clients keep working against the new server (new port, same data).
    let farmer = zos_client::GridClient::new(&g.url())
        .unwrap()
        .with_identity(farmer.identity().unwrap().clone())
        .with_twin(farm.twin_id);
    let f = farmer
        .add_farm_ip(farm.id, &ip("185.69.166.21/24", "185.69.166.1"))
        .await
        .unwrap();
    assert_eq!(f.public_ips.len(), 2);
}

#[tokio::test]
async fn stats_and_uptime_history_come_from_the_registry() {
    let g = TestGrid::start().await;
    let (farmer, farm) = g.farm("stats-farm").await;
    farmer
        .add_farm_ip(farm.id, &ip("185.69.166.30/24", "185.69.166.1"))
        .await
        .unwrap();
    let (a, node_a) = g.node(farm.id).await;
    let (_b, _) = g.node(farm.id).await;
    a.report_uptime(node_a.id, &report(100)).await.unwrap();
    let s = g.client().stats().await.unwrap();
    assert_eq!((s.nodes, s.nodes_online, s.farms), (2, 1, 1));
    assert_eq!((s.ipv4_total, s.ipv4_used, s.contracts), (1, 0, 0));
    assert_eq!(s.total.cru, 8);
    assert_eq!(s.reserved.mru, 4 * zos_types::capacity::GIB);
    assert_eq!(s.time, g.clock.now());

    g.clock.advance(60);
    a.report_uptime(node_a.id, &report(160)).await.unwrap();
    let points = g.client().node_uptime(node_a.id, None).await.unwrap();
    assert_eq!(
        points.iter().map(|p| p.uptime_secs).collect::<Vec<_>>(),
        vec![100, 160]
    );
    let recent = g
        .client()
        .node_uptime(node_a.id, Some(g.clock.now()))
        .await
        .unwrap();
    assert_eq!(recent.len(), 1);
    let missing = g.client().node_uptime(999, None).await.unwrap_err();
    assert!(missing.is_not_found(), "{missing}");
    // The grid sampled its totals when it started.
    let history = g.client().stats_history(None).await.unwrap();
    assert!(!history.is_empty());
}

#[tokio::test]
async fn nodes_filter_by_version_and_sort_and_a_long_version_is_refused() {
    let g = TestGrid::start().await;
    let (_, farm) = g.farm("sort-farm").await;
    let (_, n1) = g.node(farm.id).await;
    let (c2, _) = g.twin().await;
    let newer = NodeRegistration {
        zos_version: "0.2.0".into(),
        ..g.admitted(farm.id)
    };
    let (n2, _) = c2.register_node(&newer).await.unwrap();
    let list = |f: NodeFilter| {
        let c = g.client();
        async move {
            c.list_nodes(&f)
                .await
                .unwrap()
                .iter()
                .map(|n| n.id)
                .collect::<Vec<_>>()
        }
    };
    let v = |s: &str| NodeFilter {
        zos_version: Some(s.into()),
        ..NodeFilter::default()
    };
    assert_eq!(list(v("0.2.0")).await, vec![n2.id]);
    assert_eq!(list(v("0.1.0")).await, vec![n1.id]);
    assert_eq!(list(v("9")).await, Vec::<u32>::new());
    let by_version = |desc| NodeFilter {
        sort: Some(zos_types::registry::NodeSort::Version),
        desc: Some(desc),
        ..NodeFilter::default()
    };
    assert_eq!(list(by_version(true)).await, vec![n2.id, n1.id]);
    assert_eq!(list(by_version(false)).await, vec![n1.id, n2.id]);

    let before = g.dump();
    let long = "9".repeat(65);
    let (status, body) = raw(
        &g.url(),
        "GET",
        &format!("/api/v1/nodes?zos_version={long}"),
        vec![],
        None,
    )
    .await;
    assert_eq!(status, 400);
    assert!(error_message(&body).contains("zos_version"), "{body}");
    let (status, _) = raw(&g.url(), "GET", "/api/v1/nodes?sort=bogus", vec![], None).await;
    assert_eq!(status, 400);
    assert_eq!(g.dump(), before);
}
