//! `zos release root` (and the rollout commands) against a real grid on loopback: keys made
//! with `zos release keygen`, the root shown and rotated, refusals that change nothing.

use std::path::PathBuf;
use std::process::{Command, Output};
use std::sync::Arc;

use zos_client::GridClient;
use zos_flist::BlockStore;
use zos_flist::hub::HubClient;
use zos_flist::pack::{PackOptions, Progress, Source, pack};
use zos_grid::{GridConfig, RunningGrid};
use zos_types::auth::unix_now;
use zos_types::capacity::GIB;
use zos_types::policy::AdmissionToken;
use zos_types::registry::{Hardware, Interface, NodeRegistration};
use zos_types::release::fleet::{RolloutStatus, UpgradeReport, UpgradeState};
use zos_types::release::root::RootChain;
use zos_types::release::{ReleaseKeys, RunMode};
use zos_types::{Capacity, FarmId, Identity, NodeId};

fn zos(grid: &str, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_zos"))
        .args(args)
        .env("ZOS_GRID", grid)
        .env_remove("ZOS_KEY")
        .output()
        .expect("running zos")
}

fn ok(grid: &str, args: &[&str]) -> String {
    let out = zos(grid, args);
    assert!(
        out.status.success(),
        "zos {args:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

fn fails(grid: &str, args: &[&str]) -> String {
    let out = zos(grid, args);
    assert!(!out.status.success(), "zos {args:?} succeeded");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Release keys k0..kN made by `zos release keygen`, and a grid whose dev root 1 is two of the
/// first three.
struct Bed {
    work: tempfile::TempDir,
    grid: RunningGrid,
    keys: Vec<PathBuf>,
}

impl Bed {
    async fn start(n: usize) -> Self {
        let work = tempfile::tempdir().unwrap();
        let keys: Vec<PathBuf> = (0..n).map(|i| work.path().join(format!("k{i}"))).collect();
        for k in &keys {
            ok(
                "http://unused",
                &["release", "keygen", "-o", k.to_str().unwrap()],
            );
        }
        let json = ok(
            "http://unused",
            &[
                "release",
                "keys",
                keys[0].to_str().unwrap(),
                keys[1].to_str().unwrap(),
                keys[2].to_str().unwrap(),
                "--threshold",
                "2",
            ],
        );
        let release_keys: ReleaseKeys = serde_json::from_str(&json).unwrap();
        let mut config = GridConfig::new("127.0.0.1:0".parse().unwrap(), work.path().join("grid"));
        config.boot.release_keys.insert(RunMode::Dev, release_keys);
        let grid = zos_grid::start(config).await.unwrap();
        Self { work, grid, keys }
    }

    fn url(&self) -> String {
        self.grid.url()
    }

    fn key(&self, i: usize) -> &str {
        self.keys[i].to_str().unwrap()
    }

    /// A runtime flist pushed to the grid's hub: `NAME=@SHA256` for `zos release publish`.
    async fn flist(&self) -> String {
        let id = Identity::generate().unwrap();
        let c = GridClient::new(&self.url())
            .unwrap()
            .with_identity(id.clone());
        let twin = c.create_twin(None).await.unwrap();
        let hub = HubClient::new(&self.url()).unwrap().with_auth(id, twin.id);
        let store: Arc<dyn BlockStore> = Arc::new(hub.block_store().unwrap());
        let src = self.work.path().join("runtime");
        std::fs::create_dir_all(src.join("usr/bin")).unwrap();
        std::fs::write(src.join("usr/bin/zosd"), "not really zosd").unwrap();
        let out = self.work.path().join("runtime.fl");
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
            .push("zos-runtime.fl", std::fs::read(&out).unwrap(), false)
            .await
            .unwrap();
        format!("zos=@{}", pushed.flist.sha256)
    }

    /// `zos release publish` for dev signed by k0 and k1, with `extra` arguments.
    fn publish(&self, flist: &str, extra: &[&str]) -> Output {
        let kernel = self.work.path().join("kernel");
        let initramfs = self.work.path().join("initramfs");
        std::fs::write(&kernel, "a kernel").unwrap();
        std::fs::write(&initramfs, "an initramfs").unwrap();
        let mut args = vec![
            "release",
            "publish",
            "--runmode",
            "dev",
            "--kernel",
            kernel.to_str().unwrap(),
            "--initramfs",
            initramfs.to_str().unwrap(),
            "--flist",
            flist,
            "--release-key",
            self.key(0),
            "--release-key",
            self.key(1),
        ];
        args.extend_from_slice(extra);
        zos(&self.url(), &args)
    }

    /// A farm made by a new farmer, and the farmer.
    async fn farm(&self, name: &str) -> (FarmId, Identity) {
        let farmer = Identity::generate().unwrap();
        let c = GridClient::new(&self.url())
            .unwrap()
            .with_identity(farmer.clone());
        let twin = c.create_twin(None).await.unwrap();
        let farm = c.with_twin(twin.id).create_farm(name).await.unwrap();
        (farm.id, farmer)
    }

    /// A node registered in `farm`, and a client acting as its twin.
    async fn node(&self, farm: FarmId, farmer: &Identity) -> (GridClient, NodeId) {
        let c = GridClient::new(&self.url())
            .unwrap()
            .with_identity(Identity::generate().unwrap());
        let twin = c.create_twin(None).await.unwrap();
        let c = c.with_twin(twin.id);
        let reg = NodeRegistration {
            farm_id: farm,
            capacity: Capacity {
                cru: 2,
                mru: 4 * GIB,
                sru: 50 * GIB,
                hru: 0,
            },
            reserved: Capacity::default(),
            hardware: Hardware {
                serial: "SN-1".into(),
                virtualized: true,
                cpu_model: "Test CPU".into(),
            },
            interfaces: vec![Interface {
                name: "eth0".into(),
                mac: "52:54:00:aa:bb:cc".into(),
                ips: vec!["10.0.2.15/24".parse().unwrap()],
            }],
            zos_version: "1.0.0".into(),
            report_interval_secs: 60,
            limited: None,
            admission: Some(AdmissionToken::sign(farmer, farm, unix_now() + 3600)),
        };
        let (node, _) = c.register_node(&reg).await.unwrap();
        (c, node.id)
    }

    fn root(&self) -> RootChain {
        serde_json::from_str(&ok(
            &self.url(),
            &["--json", "release", "root", "show", "--runmode", "dev"],
        ))
        .unwrap()
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn the_root_is_shown_and_rotated_by_the_old_and_new_keys() {
    let bed = Bed::start(5).await;
    let url = bed.url();
    let shown = ok(&url, &["release", "root", "show", "--runmode", "dev"]);
    assert!(
        shown.contains("root 1 of runmode dev: 2 of 3 keys sign a release"),
        "{shown}"
    );

    // One old key of the two needed: refused before anything is sent.
    let err = fails(
        &url,
        &[
            "release",
            "root",
            "rotate",
            "--runmode",
            "dev",
            "--new-key",
            bed.key(3),
            "--threshold",
            "1",
            "--old-key",
            bed.key(0),
        ],
    );
    assert!(
        err.contains("signed by 1 key(s) of root 1, whose threshold is 2"),
        "{err}"
    );
    assert_eq!(bed.root().current.version, 1);

    // Two old keys and the new one; k4 is in the new root but offline (its public key only).
    let k4: zos_types::PublicKey = {
        let id = zos_client::keyfile::load_identity(&bed.keys[4]).unwrap();
        id.public_key()
    };
    let k4s = k4.to_string();
    let out = ok(
        &url,
        &[
            "release",
            "root",
            "rotate",
            "--runmode",
            "dev",
            "--new-key",
            bed.key(3),
            "--new-public",
            &k4s,
            "--threshold",
            "1",
            "--old-key",
            bed.key(0),
            "--old-key",
            bed.key(2),
        ],
    );
    assert!(out.contains("root 2 of runmode dev installed"), "{out}");
    let chain = bed.root();
    assert_eq!(chain.current.version, 2);
    assert_eq!(chain.current.threshold, 1);
    assert_eq!(chain.current.keys.len(), 2);
    assert!(chain.current.keys.contains(&k4));
    assert_eq!(chain.chain.len(), 1);

    // The old keys cannot rotate any more.
    let err = fails(
        &url,
        &[
            "release",
            "root",
            "rotate",
            "--runmode",
            "dev",
            "--new-key",
            bed.key(0),
            "--threshold",
            "1",
            "--old-key",
            bed.key(0),
            "--old-key",
            bed.key(1),
        ],
    );
    assert!(err.contains("signed by 0 key(s) of root 2"), "{err}");
    assert_eq!(bed.root().current.version, 2);
    drop(bed.work);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_staged_rollout_is_published_watched_advanced_and_halted() {
    let bed = Bed::start(3).await;
    let url = bed.url();
    let flist = bed.flist().await;
    let (test_farm, tester) = bed.farm("upgrade-test-farm").await;
    let (farm, farmer) = bed.farm("upgrade-farm").await;
    let (t, t_id) = bed.node(test_farm, &tester).await;
    let (_, n_id) = bed.node(farm, &farmer).await;

    let out = bed.publish(&flist, &["--release-version", "1.0.0"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Bad terms are refused, and nothing is published.
    let out = bed.publish(
        &flist,
        &["--release-version", "1.1.0", "--wave", "50", "--wave", "10"],
    );
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("increasing percentages"), "{err}");
    let out = bed.publish(
        &flist,
        &["--release-version", "1.1.0", "--min-from", "1.1.0"],
    );
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("must be older than"), "{err}");
    let tf = test_farm.to_string();
    let out = bed.publish(
        &flist,
        &[
            "--release-version",
            "1.1.0",
            "--test-farm",
            &tf,
            "--wave",
            "50",
            "--wave",
            "100",
            "--min-from",
            "1.0.0",
            "--expires-days",
            "30",
        ],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let list = ok(&url, &["release", "list", "--runmode", "dev"]);
    assert!(
        list.contains("from 1.0.0, expires ")
            && list.contains(&format!("waves 50%/100%, test farms {test_farm}")),
        "{list}"
    );

    // The test farm's node takes it and reports; the other waits for safe.
    t.report_upgrade(
        t_id,
        &UpgradeReport {
            runmode: RunMode::Dev,
            version: "1.1.0".into(),
            state: UpgradeState::Probation,
            reason: None,
        },
    )
    .await
    .unwrap();
    let table = ok(&url, &["release", "status", "--runmode", "dev"]);
    assert!(table.contains("release 1.1.0 of runmode dev: wave 0 of 2 open (0% of the nodes outside the test farms), not safe yet"), "{table}");
    assert!(
        table.contains(&format!("test farms: {test_farm}")),
        "{table}"
    );
    assert!(
        table.contains("1 node(s) admitted: 0 committed, 1 in progress"),
        "{table}"
    );
    assert!(table.contains("on probation"), "{table}");
    assert!(
        table.contains("RELEASE") && table.contains("1.0.0"),
        "{table}"
    );
    assert!(table.contains("no: its farm is not a test farm"), "{table}");

    // Marked safe, then the next wave: every node.
    let out = ok(
        &url,
        &[
            "release",
            "advance",
            "--runmode",
            "dev",
            "--safe",
            "--release-key",
            bed.key(2),
        ],
    );
    assert!(
        out.contains("wave 0 of 2 open (50% of the nodes outside the test farms), safe"),
        "{out}"
    );
    let out = ok(
        &url,
        &[
            "release",
            "advance",
            "--runmode",
            "dev",
            "--next",
            "--release-key",
            bed.key(2),
        ],
    );
    assert!(out.contains("wave 1 of 2 open (100%"), "{out}");
    assert!(out.contains("2 node(s) admitted"), "{out}");
    let err = fails(
        &url,
        &[
            "release",
            "advance",
            "--runmode",
            "dev",
            "--next",
            "--release-key",
            bed.key(2),
        ],
    );
    assert!(err.contains("wave 2 does not exist"), "{err}");

    // Halted by hand, seen as JSON, and resumed.
    let out = ok(
        &url,
        &[
            "release",
            "halt",
            "--runmode",
            "dev",
            "--reason",
            "watching a regression",
            "--release-key",
            bed.key(0),
        ],
    );
    assert!(out.contains("HALTED by"), "{out}");
    let s: RolloutStatus = serde_json::from_str(&ok(
        &url,
        &["--json", "release", "status", "--runmode", "dev"],
    ))
    .unwrap();
    let h = s.halted.unwrap();
    assert_eq!(h.reason, "watching a regression");
    assert_eq!(s.nodes.len(), 2);
    assert!(s.nodes.iter().any(|n| n.node == n_id && n.admitted));
    let out = ok(
        &url,
        &[
            "release",
            "advance",
            "--runmode",
            "dev",
            "--resume",
            "--release-key",
            bed.key(0),
        ],
    );
    assert!(!out.contains("HALTED"), "{out}");
    // A key that is not a release key steers nothing.
    let stranger = bed.work.path().join("stranger");
    ok(
        "http://unused",
        &["release", "keygen", "-o", stranger.to_str().unwrap()],
    );
    let err = fails(
        &url,
        &[
            "release",
            "halt",
            "--runmode",
            "dev",
            "--reason",
            "x",
            "--release-key",
            stranger.to_str().unwrap(),
        ],
    );
    assert!(err.contains("not one of this grid's release keys"), "{err}");
    // An older release's status by version.
    let s: RolloutStatus = serde_json::from_str(&ok(
        &url,
        &[
            "--json",
            "release",
            "status",
            "--runmode",
            "dev",
            "--release-version",
            "1.0.0",
        ],
    ))
    .unwrap();
    assert_eq!(
        (s.version.as_str(), s.percent, s.progress.admitted),
        ("1.0.0", 100, 2)
    );
}
