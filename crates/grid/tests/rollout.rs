//! Staged rollouts on a real grid on loopback: test farms first, waves chosen by the nodes'
//! hash, `safe`, what nodes report, the grid halting a rollout by itself when too many roll
//! back, halts and resumes by a release key, which release each node is told to run, and
//! hostile reports and changes refused with nothing changed.

mod common;

use std::collections::BTreeMap;
use std::sync::Arc;

use common::{TestGrid, auth_header, error_message, raw};
use serde_json::Value;
use zos_client::GridClient;
use zos_client::release::ReleaseClient;
use zos_flist::BlockStore;
use zos_flist::hub::HubClient;
use zos_flist::pack::{PackOptions, Progress, Source, pack};
use zos_grid::GridConfig;
use zos_grid::clock::Clock;
use zos_types::auth::{Signer, unix_now};
use zos_types::release::fleet::{RolloutChange, RolloutStatus, UpgradeReport, UpgradeState};
use zos_types::release::rollout::{Policy, bucket};
use zos_types::release::terms::Terms;
use zos_types::release::{Artifact, Release, ReleaseKeys, RunMode, RuntimeFlist, Version};
use zos_types::{FarmId, Identity, NodeId};

struct Bed {
    grid: TestGrid,
    key: Identity,
    base: Release,
}

impl Bed {
    async fn start() -> Self {
        let key = Identity::generate().unwrap();
        let keys = ReleaseKeys {
            keys: vec![key.public_key()],
            threshold: 1,
        };
        let grid = TestGrid::start_with(move |c: &mut GridConfig| {
            c.boot.release_keys.insert(RunMode::Dev, keys.clone());
        })
        .await;
        let rc = ReleaseClient::new(&grid.url()).unwrap();
        let kernel = rc.put_file(b"a kernel".to_vec(), &key).await.unwrap();
        let initramfs = rc.put_file(b"an initramfs".to_vec(), &key).await.unwrap();
        let flist = flist(&grid).await;
        let base = Release {
            version: "0.0.0".into(),
            runmode: RunMode::Dev,
            created: unix_now(),
            kernel: Artifact {
                sha256: kernel.sha256,
                size: kernel.size,
            },
            initramfs: Artifact {
                sha256: initramfs.sha256,
                size: initramfs.size,
            },
            flists: vec![flist],
            debug: None,
        };
        Self { grid, key, base }
    }

    fn releases(&self) -> ReleaseClient {
        ReleaseClient::new(&self.grid.url()).unwrap()
    }

    async fn publish(&self, version: &str, rollout: Option<Policy>) {
        let terms = Terms {
            rollout,
            ..Terms::default()
        };
        self.publish_terms(version, terms).await
    }

    async fn publish_terms(&self, version: &str, terms: Terms) {
        let r = Release {
            version: version.into(),
            ..self.base.clone()
        };
        let signed = r.sign_with(&terms, &[&self.key]).unwrap();
        let p = self
            .releases()
            .put_release(&signed, &self.key)
            .await
            .unwrap();
        assert!(p.published);
    }

    /// The version each node is told to run.
    async fn told(&self, nodes: &[NodeId]) -> BTreeMap<NodeId, String> {
        let mut out = BTreeMap::new();
        for n in nodes {
            let f = self.releases().for_node(RunMode::Dev, *n).await.unwrap();
            out.insert(*n, f.version);
        }
        out
    }

    async fn change(&self, version: &str, c: RolloutChange) -> RolloutStatus {
        self.releases()
            .change_rollout(RunMode::Dev, version.parse().unwrap(), &c, &self.key)
            .await
            .unwrap()
    }

    async fn status(&self, version: Option<&str>) -> RolloutStatus {
        let v = version.map(|v| v.parse::<Version>().unwrap());
        self.releases().status(RunMode::Dev, v).await.unwrap()
    }

    /// `n` nodes registered in `farm`, with clients acting as their twins.
    async fn nodes(&self, farm: FarmId, n: usize) -> Vec<(GridClient, NodeId)> {
        let mut out = Vec::new();
        for _ in 0..n {
            let (c, node) = self.grid.node(farm).await;
            out.push((c, node.id));
        }
        out
    }
}

/// A small runtime flist pushed to the hub by a new twin.
async fn flist(grid: &TestGrid) -> RuntimeFlist {
    let id = Identity::generate().unwrap();
    let c = GridClient::new(&grid.url())
        .unwrap()
        .with_identity(id.clone());
    let twin = c.create_twin(None).await.unwrap();
    let hub = HubClient::new(&grid.url()).unwrap().with_auth(id, twin.id);
    let store: Arc<dyn BlockStore> = Arc::new(hub.block_store().unwrap());
    let work = tempfile::tempdir().unwrap();
    let src = work.path().join("root");
    std::fs::create_dir_all(src.join("usr/bin")).unwrap();
    std::fs::write(src.join("usr/bin/zosd"), "zosd").unwrap();
    let out = work.path().join("r.fl");
    pack(
        &Source::Dir(src),
        &out,
        store,
        &PackOptions::default(),
        &|_: &Progress| {},
    )
    .await
    .unwrap();
    let pushed = hub
        .push("zos.fl", std::fs::read(&out).unwrap(), false)
        .await
        .unwrap();
    RuntimeFlist {
        name: "zos".into(),
        sha256: pushed.flist.sha256,
        size: pushed.flist.size,
    }
}

/// The version of `GET /releases/dev`, what a booting node is given.
async fn served_version(bed: &Bed) -> String {
    let current = bed.releases().current(RunMode::Dev).await.unwrap().unwrap();
    zos_types::release::terms::decode(&current.manifest)
        .unwrap()
        .0
        .version
}

fn report(version: &str, state: UpgradeState, reason: Option<&str>) -> UpgradeReport {
    UpgradeReport {
        runmode: RunMode::Dev,
        version: version.into(),
        state,
        reason: reason.map(str::to_string),
    }
}

#[tokio::test]
async fn test_farms_go_first_then_waves_by_hash_once_safe() {
    let bed = Bed::start().await;
    let (_, test_farm) = bed.grid.farm("test").await;
    let (_, farm) = bed.grid.farm("ordinary").await;
    let testers: Vec<NodeId> = bed
        .nodes(test_farm.id, 2)
        .await
        .into_iter()
        .map(|n| n.1)
        .collect();
    let others: Vec<NodeId> = bed
        .nodes(farm.id, 10)
        .await
        .into_iter()
        .map(|n| n.1)
        .collect();
    let all: Vec<NodeId> = testers.iter().chain(&others).copied().collect();

    bed.publish("1.0.0", None).await;
    assert!(bed.told(&all).await.values().all(|v| v == "1.0.0"));
    bed.publish(
        "1.1.0",
        Some(Policy {
            test_farms: vec![test_farm.id],
            waves: vec![30, 100],
            safe: false,
            halt_percent: 20,
        }),
    )
    .await;

    // Not safe yet: the test farm's nodes only.
    let told = bed.told(&all).await;
    for n in &testers {
        assert_eq!(told[n], "1.1.0", "test node {n}");
    }
    for n in &others {
        assert_eq!(told[n], "1.0.0", "node {n} waits for safe");
    }
    let why = bed
        .releases()
        .for_node(RunMode::Dev, others[0])
        .await
        .unwrap()
        .why;
    assert!(why.contains("not marked safe"), "{why}");
    let s = bed.status(None).await;
    assert_eq!(
        (s.version.as_str(), s.percent, s.progress.admitted),
        ("1.1.0", 0, 2)
    );

    // Marked safe: the first wave, 30 %, takes exactly the nodes whose bucket is below 30.
    let s = bed
        .change(
            "1.1.0",
            RolloutChange {
                safe: Some(true),
                ..Default::default()
            },
        )
        .await;
    assert_eq!(s.percent, 30);
    let expected: Vec<NodeId> = others.iter().copied().filter(|n| bucket(*n) < 30).collect();
    let told = bed.told(&others).await;
    let moved: Vec<NodeId> = others
        .iter()
        .copied()
        .filter(|n| told[n] == "1.1.0")
        .collect();
    assert_eq!(moved, expected);
    assert!(
        !moved.is_empty() && moved.len() < others.len(),
        "nodes {others:?} (buckets {:?}) all fall on one side of 30",
        others.iter().map(|n| bucket(*n)).collect::<Vec<_>>()
    );
    assert_eq!(s.progress.admitted, 2 + expected.len());
    assert_eq!(s.nodes.len(), 12);

    // The next wave takes every node.
    let s = bed
        .change(
            "1.1.0",
            RolloutChange {
                wave: Some(1),
                ..Default::default()
            },
        )
        .await;
    assert_eq!((s.percent, s.progress.admitted), (100, 12));
    assert!(bed.told(&all).await.values().all(|v| v == "1.1.0"));
}

#[tokio::test]
async fn too_many_rollbacks_halt_the_rollout_and_nodes_go_back() {
    let mut bed = Bed::start().await;
    let (_, farm) = bed.grid.farm("fleet").await;
    let nodes = bed.nodes(farm.id, 10).await;
    let ids: Vec<NodeId> = nodes.iter().map(|n| n.1).collect();
    bed.publish("1.0.0", None).await;
    bed.publish("1.1.0", None).await;

    let (n0, id0) = &nodes[0];
    for state in [
        UpgradeState::Pending,
        UpgradeState::Downloading,
        UpgradeState::Committed,
    ] {
        n0.report_upgrade(*id0, &report("1.1.0", state, None))
            .await
            .unwrap();
    }
    for (c, id) in &nodes[1..3] {
        c.report_upgrade(
            *id,
            &report(
                "1.1.0",
                UpgradeState::RolledBack,
                Some("zosd exited at start"),
            ),
        )
        .await
        .unwrap();
    }
    // Two of ten is not more than 20 %.
    let s = bed.status(None).await;
    assert!(s.halted.is_none());
    assert_eq!(
        (
            s.progress.admitted,
            s.progress.committed,
            s.progress.rolled_back,
            s.progress.waiting
        ),
        (10, 1, 2, 7)
    );
    let row = s.nodes.iter().find(|n| n.node == ids[1]).unwrap();
    let r = row.report.as_ref().unwrap();
    assert_eq!(
        (r.state, r.reason.as_deref()),
        (UpgradeState::RolledBack, Some("zosd exited at start"))
    );
    let row0 = s.nodes.iter().find(|n| n.node == *id0).unwrap();
    assert_eq!(row0.running.as_deref(), Some("1.1.0"));

    // A third: the grid halts the rollout by itself.
    let (c3, id3) = &nodes[3];
    c3.report_upgrade(
        *id3,
        &report(
            "1.1.0",
            UpgradeState::RolledBack,
            Some("health gate missed"),
        ),
    )
    .await
    .unwrap();
    let s = bed.status(None).await;
    let h = s.halted.expect("halted by the grid");
    assert_eq!(h.by, "grid");
    assert!(
        h.reason
            .contains("3 of the 10 nodes of the open wave rolled back, more than 20%"),
        "{}",
        h.reason
    );
    assert!(h.reason.contains("health gate missed"), "{}", h.reason);

    // While halted: nodes that did not commit are told the release before; the committed one
    // stays; a node that rolled back is never told that release again.
    let told = bed.told(&ids).await;
    assert_eq!(told[id0], "1.1.0");
    for n in &ids[1..] {
        assert_eq!(told[n], "1.0.0", "node {n}");
    }
    let why = bed
        .releases()
        .for_node(RunMode::Dev, ids[5])
        .await
        .unwrap()
        .why;
    assert!(why.contains("1.1.0 is halted"), "{why}");
    // A booting node (not known yet) is given the release before the halted one too.
    assert_eq!(served_version(&bed).await, "1.0.0");
    let s = bed
        .change(
            "1.1.0",
            RolloutChange {
                resume: true,
                ..Default::default()
            },
        )
        .await;
    assert!(s.halted.is_none());
    assert_eq!(served_version(&bed).await, "1.1.0");
    let told = bed.told(&ids).await;
    assert_eq!(told[&ids[5]], "1.1.0");
    assert_eq!(told[&ids[1]], "1.0.0");
    let why = bed
        .releases()
        .for_node(RunMode::Dev, ids[1])
        .await
        .unwrap()
        .why;
    assert!(why.contains("1.1.0 was rolled back by this node"), "{why}");

    // A release key halts it by hand.
    let s = bed
        .change(
            "1.1.0",
            RolloutChange {
                halt: Some("a bad feeling".into()),
                ..Default::default()
            },
        )
        .await;
    let h = s.halted.unwrap();
    assert_eq!(
        (h.by, h.reason.as_str()),
        (bed.key.public_key().to_string(), "a bad feeling")
    );

    // Everything survives a restart.
    let before = bed.status(None).await;
    bed.grid.restart().await;
    assert_eq!(bed.status(None).await, before);
}

#[tokio::test]
async fn hostile_reports_and_changes_are_refused_and_change_nothing() {
    let bed = Bed::start().await;
    let (_, farm) = bed.grid.farm("hostile").await;
    let nodes = bed.nodes(farm.id, 2).await;
    let (c0, id0) = &nodes[0];
    let (c1, _) = &nodes[1];
    bed.publish(
        "1.0.0",
        Some(Policy {
            waves: vec![50, 100],
            ..Policy::default()
        }),
    )
    .await;
    let before = bed.status(None).await;

    let refused =
        |r: Result<zos_types::release::fleet::NodeReport, zos_client::ClientError>| match r {
            Err(zos_client::ClientError::Api { status, message }) => (status, message),
            other => panic!("expected a refusal, got {other:?}"),
        };
    // Another node's twin; an unknown release; no reason for a rollback; another runmode.
    let (s, m) = refused(
        c1.report_upgrade(*id0, &report("1.0.0", UpgradeState::Committed, None))
            .await,
    );
    assert_eq!(s, 403, "{m}");
    let (s, m) = refused(
        c0.report_upgrade(*id0, &report("9.9.9", UpgradeState::Committed, None))
            .await,
    );
    assert_eq!(s, 404, "{m}");
    assert!(m.contains("has no release 9.9.9"), "{m}");
    let (s, m) = refused(
        c0.report_upgrade(*id0, &report("1.0.0", UpgradeState::RolledBack, None))
            .await,
    );
    assert_eq!(s, 400);
    assert!(m.contains("carries the reason"), "{m}");
    let mut prod = report("1.0.0", UpgradeState::Committed, None);
    prod.runmode = RunMode::Prod;
    let (s, _) = refused(c0.report_upgrade(*id0, &prod).await);
    assert_eq!(s, 404);
    let (s, _) = refused(
        c0.report_upgrade(9999, &report("1.0.0", UpgradeState::Committed, None))
            .await,
    );
    assert_eq!(s, 404);
    assert_eq!(
        bed.status(None).await,
        before,
        "refused reports change nothing"
    );
    // A node that rolled back a release does not take it up again.
    let (c_back, id_back) = &nodes[1];
    c_back
        .report_upgrade(
            *id_back,
            &report("1.0.0", UpgradeState::RolledBack, Some("gate missed")),
        )
        .await
        .unwrap();
    let (s, m) = refused(
        c_back
            .report_upgrade(*id_back, &report("1.0.0", UpgradeState::Committed, None))
            .await,
    );
    assert_eq!(s, 409, "{m}");
    assert!(m.contains("does not retry it"), "{m}");
    let before = bed.status(None).await;

    // Changes: a stranger's key, a wave that does not exist, halt and resume at once, an
    // unknown release, unsigned.
    let rc = bed.releases();
    let stranger = Identity::generate().unwrap();
    let c = RolloutChange {
        safe: Some(true),
        ..Default::default()
    };
    let e = rc
        .change_rollout(RunMode::Dev, "1.0.0".parse().unwrap(), &c, &stranger)
        .await
        .unwrap_err();
    assert!(
        matches!(&e, zos_client::ClientError::Api { status: 403, message } if message.contains("not one of this grid's release keys")),
        "{e:?}"
    );
    let path = "/releases/dev/1.0.0/rollout";
    let put = |body: Value, path: &'static str| {
        let body = serde_json::to_vec(&body).unwrap();
        let auth = auth_header(
            &bed.key,
            Signer::Key(bed.key.public_key()),
            "PUT",
            path,
            unix_now(),
            &body,
        );
        let url = bed.grid.url();
        async move { raw(&url, "PUT", path, body, Some(&auth)).await }
    };
    let (s, b) = put(serde_json::json!({"wave": 2}), path).await;
    assert_eq!(s, 400, "{b}");
    assert!(error_message(&b).contains("wave 2 does not exist"), "{b}");
    let (s, b) = put(serde_json::json!({"halt": "x", "resume": true}), path).await;
    assert_eq!(s, 400, "{b}");
    let (s, b) = put(serde_json::json!({}), path).await;
    assert_eq!(s, 400, "{b}");
    let (s, b) = put(serde_json::json!({"safe": true, "extra": 1}), path).await;
    assert_eq!(s, 400, "{b}");
    let (s, b) = put(
        serde_json::json!({"safe": true}),
        "/releases/dev/2.0.0/rollout",
    )
    .await;
    assert_eq!(s, 404, "{b}");
    let (s, _) = raw(
        &bed.grid.url(),
        "PUT",
        path,
        b"{\"safe\":true}".to_vec(),
        None,
    )
    .await;
    assert_eq!(s, 401);
    // Status and for-node of unknown things.
    let (s, _) = raw(
        &bed.grid.url(),
        "GET",
        "/releases/dev/status?version=1.x",
        Vec::new(),
        None,
    )
    .await;
    assert_eq!(s, 400);
    let (s, _) = raw(
        &bed.grid.url(),
        "GET",
        "/releases/dev/for-node/9999",
        Vec::new(),
        None,
    )
    .await;
    assert_eq!(s, 404);

    assert_eq!(bed.status(None).await, before);
}

#[tokio::test]
async fn nodes_too_old_for_a_release_take_one_in_between_and_expired_releases_are_skipped() {
    let bed = Bed::start().await;
    let (_, farm) = bed.grid.farm("steps").await;
    let nodes = bed.nodes(farm.id, 3).await;
    let ids: Vec<NodeId> = nodes.iter().map(|n| n.1).collect();
    bed.publish("1.0.0", None).await;
    bed.publish("1.1.0", None).await;
    bed.publish_terms(
        "1.2.0",
        Terms {
            min_from: Some("1.1.0".into()),
            ..Terms::default()
        },
    )
    .await;
    let committed = |v: &str| report(v, UpgradeState::Committed, None);
    nodes[0]
        .0
        .report_upgrade(ids[0], &committed("1.0.0"))
        .await
        .unwrap();
    nodes[1]
        .0
        .report_upgrade(ids[1], &committed("1.1.0"))
        .await
        .unwrap();

    // Nodes that never reported: one registered with the release it runs (as zosd does under
    // zos-init), one with a version that is no release version.
    let mut regs = Vec::new();
    for version in ["1.0.5", "a-dev-build"] {
        let (c, _) = bed.grid.twin().await;
        let reg = zos_types::registry::NodeRegistration {
            zos_version: version.into(),
            ..bed.grid.admitted(farm.id)
        };
        let (n, _) = c.register_node(&reg).await.unwrap();
        regs.push(n.id);
    }

    let told = bed.told(&ids).await;
    assert_eq!(told[&ids[0]], "1.1.0", "1.0.0 takes the release in between");
    assert_eq!(told[&ids[1]], "1.2.0");
    assert_eq!(
        told[&ids[2]], "1.1.0",
        "a node that never reported is held to the version it registered (0.1.0)"
    );
    let told = bed.told(&regs).await;
    assert_eq!(
        told[&regs[0]], "1.1.0",
        "registered 1.0.5: the release in between"
    );
    assert_eq!(
        told[&regs[1]], "1.2.0",
        "no version known: the node checks min_from itself"
    );
    let why = bed
        .releases()
        .for_node(RunMode::Dev, ids[0])
        .await
        .unwrap()
        .why;
    assert!(why.contains("1.2.0 upgrades only from 1.1.0"), "{why}");
    let s = bed.status(None).await;
    let running: Vec<Option<String>> = s.nodes.iter().map(|n| n.running.clone()).collect();
    assert_eq!(
        running,
        [Some("1.0.0".into()), Some("1.1.0".into()), None, None, None]
    );

    // An expired release is given to no node.
    bed.publish_terms(
        "1.3.0",
        Terms {
            expires: Some(bed.grid.clock.now() + 600),
            ..Terms::default()
        },
    )
    .await;
    assert_eq!(bed.told(&ids[1..2]).await[&ids[1]], "1.3.0");
    bed.grid.clock.advance(601);
    let f = bed.releases().for_node(RunMode::Dev, ids[1]).await.unwrap();
    assert_eq!(f.version, "1.2.0");
    assert!(f.why.contains("1.3.0 expired at"), "{}", f.why);
}

#[tokio::test]
async fn a_node_walks_the_roots_and_verifies_the_release_it_is_told() {
    use zos_client::rollout::{Decision, UpgradeError};
    use zos_types::release::ReleaseError;
    use zos_types::release::root::Root;

    let bed = Bed::start().await;
    let (_, farm) = bed.grid.farm("checks").await;
    let id = bed.nodes(farm.id, 1).await[0].1;
    bed.publish("1.0.0", None).await;
    let pinned = Root::initial(
        RunMode::Dev,
        &ReleaseKeys {
            keys: vec![bed.key.public_key()],
            threshold: 1,
        },
    )
    .unwrap();
    let rc = bed.releases();
    let v = |s: &str| s.parse::<Version>().unwrap();

    // A node that runs nothing takes 1.0.0; one that runs it stays.
    let (root, d) = rc
        .check_upgrade(&pinned, id, None, unix_now())
        .await
        .unwrap();
    assert_eq!(root, pinned);
    assert!(
        matches!(&d, Decision::Upgrade { release, .. } if release.version == "1.0.0"),
        "{d:?}"
    );
    let (_, d) = rc
        .check_upgrade(&pinned, id, Some(v("1.0.0")), unix_now())
        .await
        .unwrap();
    assert!(matches!(d, Decision::Stay { .. }), "{d:?}");

    // The keys rotate; 1.1.0 is signed by the new key only.
    let new = Identity::generate().unwrap();
    let r2 = Root {
        runmode: RunMode::Dev,
        version: 2,
        keys: vec![new.public_key()],
        threshold: 1,
    };
    let link = r2.sign(&[&bed.key, &new]).unwrap();
    rc.put_root(RunMode::Dev, &link, &bed.key).await.unwrap();
    let r = Release {
        version: "1.1.0".into(),
        ..bed.base.clone()
    };
    rc.put_release(&r.sign(&[&new]).unwrap(), &new)
        .await
        .unwrap();

    // The node pinning root 1 reaches root 2 through the chain and takes 1.1.0 ...
    let (root, d) = rc
        .check_upgrade(&pinned, id, Some(v("1.0.0")), unix_now())
        .await
        .unwrap();
    assert_eq!(root, r2);
    assert!(
        matches!(&d, Decision::Upgrade { release, .. } if release.version == "1.1.0"),
        "{d:?}"
    );
    // ... which root 1 alone would refuse.
    let told = rc.for_node(RunMode::Dev, id).await.unwrap();
    assert!(matches!(
        told.release
            .verify_upgrade(&pinned, Some(v("1.0.0")), unix_now()),
        Err(ReleaseError::NotTrusted { good: 0, .. })
    ));

    // 1.2.0 is halted: the grid points at 1.1.0; a node on 1.2.0 refuses the downgrade and
    // stays.
    let r = Release {
        version: "1.2.0".into(),
        ..bed.base.clone()
    };
    rc.put_release(&r.sign(&[&new]).unwrap(), &new)
        .await
        .unwrap();
    let halt = RolloutChange {
        halt: Some("regression".into()),
        ..Default::default()
    };
    rc.change_rollout(RunMode::Dev, v("1.2.0"), &halt, &new)
        .await
        .unwrap();
    let e = rc
        .check_upgrade(&root, id, Some(v("1.2.0")), unix_now())
        .await
        .unwrap_err();
    assert!(
        matches!(e, UpgradeError::Release(ReleaseError::NotNewer { .. })),
        "{e:?}"
    );
    assert!(e.to_string().contains("a downgrade or the replay"), "{e}");
}

#[tokio::test]
async fn connected_nodes_are_told_when_a_release_is_published_or_its_rollout_moves() {
    use zos_types::relay::UplinkFrame;
    let bed = Bed::start().await;
    let (_, farm) = bed.grid.farm("told").await;
    let (node, registered) = bed.grid.node(farm.id).await;
    let (user, user_twin) = bed.grid.twin().await;
    let url = bed.grid.url();
    let connect = |c: &GridClient, twin| {
        let (url, id) = (url.clone(), c.identity().unwrap().clone());
        async move { zos_client::uplink::connect(&url, &id, twin).await.unwrap() }
    };
    let mut link = connect(&node, registered.twin_id).await;
    let mut user_link = connect(&user, user_twin.id).await;
    // The next frame within `secs`, if any.
    async fn next(link: &mut zos_client::uplink::Uplink, secs: u64) -> Option<UplinkFrame> {
        match tokio::time::timeout(std::time::Duration::from_secs(secs), link.next()).await {
            Ok(Some(Ok(f))) => Some(f),
            Ok(other) => panic!("the uplink ended: {:?}", other.map(|r| r.err())),
            Err(_) => None,
        }
    }
    let told = |version: &str| UplinkFrame::Release {
        runmode: RunMode::Dev,
        version: version.into(),
    };

    // Published: the node is told; a twin that is no node is not.
    bed.publish("1.0.0", None).await;
    assert_eq!(next(&mut link, 10).await, Some(told("1.0.0")));
    bed.publish(
        "1.1.0",
        Some(Policy {
            test_farms: vec![],
            waves: vec![50, 100],
            safe: false,
            halt_percent: 20,
        }),
    )
    .await;
    assert_eq!(next(&mut link, 10).await, Some(told("1.1.0")));
    // A rollout moved (marked safe, the next wave): told; halted: not (no node moves down);
    // resumed: told.
    for (change, tell) in [
        (
            RolloutChange {
                safe: Some(true),
                ..Default::default()
            },
            true,
        ),
        (
            RolloutChange {
                halt: Some("looks wrong".into()),
                ..Default::default()
            },
            false,
        ),
        (
            RolloutChange {
                resume: true,
                ..Default::default()
            },
            true,
        ),
        (
            RolloutChange {
                wave: Some(1),
                ..Default::default()
            },
            true,
        ),
    ] {
        bed.change("1.1.0", change.clone()).await;
        let want = tell.then(|| told("1.1.0"));
        assert_eq!(
            next(&mut link, if tell { 10 } else { 2 }).await,
            want,
            "{change:?}"
        );
    }
    assert_eq!(
        next(&mut user_link, 1).await,
        None,
        "a user's uplink is told nothing"
    );
}
