//! The live upgrade of a namespace node, end to end: a real grid on loopback (releases, roots,
//! the hub, node reports), runtime flists packed with the project's packer and mounted by real
//! `zos-flist-mount` processes, and zos-init as the node's supervisor (`zos-init --node-test`:
//! PID 1 of its own PID and mount namespaces, not a machine's PID 1).
//!
//! The "zosd" of each release is a tiny shell script packed in its runtime flist: the real
//! zosd needs storage pools, a node network and a registered identity this test bed does not
//! give it. The script does what the upgrade relies on: it writes `node.json` and
//! `health.json` (the local channel, docs/upgrade.md), starts a workload process from the
//! runtime (`/usr/bin/workload`, in its own session) or adopts the one running, and ends on
//! SIGTERM. Each release's script behaves as the scenario needs: good, ending at start, or
//! never showing its uplink up. The real zosd's health file is zosd's own to test.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use zos_client::GridClient;
use zos_client::release::ReleaseClient;
use zos_flist::BlockStore;
use zos_flist::hub::HubClient;
use zos_flist::pack::{PackOptions, Progress, Source, pack};
use zos_grid::GridConfig;
use zos_init::boot::{Boot, NodeTest};
use zos_init::upgrade::Settings;
use zos_types::auth::unix_now;
use zos_types::capacity::GIB;
use zos_types::registry::{AdmissionToken, Hardware, Interface, NodeRegistration};
use zos_types::release::fleet::{NodeReport, UpgradeState};
use zos_types::release::{Artifact, Release, ReleaseKeys, RunMode, RuntimeFlist};
use zos_types::{Capacity, Identity, NodeId};

/// The zos-init under test; killed (its namespace with it) on drop.
struct Node(Child);

impl Drop for Node {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// How a release's fake zosd behaves.
#[derive(Clone, Copy, PartialEq)]
enum Zosd {
    Good,
    ExitsAtStart,
    UplinkNeverUp,
}

struct Bed {
    rt: tokio::runtime::Runtime,
    grid: Option<zos_grid::RunningGrid>,
    url: String,
    data: PathBuf,
    key: Identity,
    hub: HubClient,
    kernel: Artifact,
    initramfs: Artifact,
    node: NodeId,
    dir: tempfile::TempDir,
}

impl Bed {
    fn p(&self, s: &str) -> PathBuf {
        self.dir.path().join(s)
    }

    fn start() -> Self {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("grid");
        let key = Identity::generate().unwrap();
        let keys = ReleaseKeys {
            keys: vec![key.public_key()],
            threshold: 1,
        };
        std::fs::write(
            dir.path().join("release-keys.json"),
            serde_json::to_vec(&keys).unwrap(),
        )
        .unwrap();
        let mut config = GridConfig::new("127.0.0.1:0".parse().unwrap(), data.clone());
        config.boot.release_keys.insert(RunMode::Dev, keys);
        let grid = rt.block_on(zos_grid::start(config)).unwrap();
        let url = grid.url();
        let (hub, kernel, initramfs, node) = rt.block_on(async {
            // A farmer with a farm, and the node: a twin whose key the fake zosd hands over.
            let farmer = Identity::generate().unwrap();
            let fc = GridClient::new(&url).unwrap().with_identity(farmer.clone());
            let ft = fc.create_twin(None).await.unwrap();
            let fc = fc.with_twin(ft.id);
            let farm = fc.create_farm("upgrades").await.unwrap();
            let node_key = Identity::generate().unwrap();
            zos_client::keyfile::save_identity(&dir.path().join("node.key"), &node_key, 0o400)
                .unwrap();
            let nc = GridClient::new(&url).unwrap().with_identity(node_key);
            let nt = nc.create_twin(None).await.unwrap();
            let nc = nc.with_twin(nt.id);
            let (node, _) = nc
                .register_node(&registration(
                    farm.id,
                    AdmissionToken::sign(&farmer, farm.id, unix_now() + 86_400),
                ))
                .await
                .unwrap();
            std::fs::write(
                dir.path().join("node-ids"),
                format!("{} {}", node.id, nt.id),
            )
            .unwrap();
            let hub = HubClient::new(&url).unwrap().with_auth(farmer, ft.id);
            let rc = ReleaseClient::new(&url).unwrap();
            let k = rc.put_file(b"a kernel".to_vec(), &key).await.unwrap();
            let i = rc.put_file(b"an initramfs".to_vec(), &key).await.unwrap();
            (
                hub,
                Artifact {
                    sha256: k.sha256,
                    size: k.size,
                },
                Artifact {
                    sha256: i.sha256,
                    size: i.size,
                },
                node.id,
            )
        });
        Self {
            rt,
            grid: Some(grid),
            url,
            data,
            key,
            hub,
            kernel,
            initramfs,
            node,
            dir,
        }
    }

    fn twin(&self) -> u32 {
        std::fs::read_to_string(self.p("node-ids"))
            .unwrap()
            .split_whitespace()
            .nth(1)
            .unwrap()
            .parse()
            .unwrap()
    }

    /// Packs the runtime flist of `version` (pushed to the hub) and answers it with its file.
    fn flist(&self, version: &str, zosd: Zosd) -> (RuntimeFlist, PathBuf) {
        let src = self.p(&format!("src-{version}"));
        let usr = self.p("usr");
        let run = self.p("run");
        std::fs::create_dir_all(src.join("usr/bin")).unwrap();
        std::fs::create_dir_all(src.join("usr/share/zos")).unwrap();
        std::fs::write(src.join("usr/share/version"), version).unwrap();
        std::fs::copy("/bin/sleep", src.join("usr/bin/workload")).unwrap();
        let start = match zosd {
            Zosd::ExitsAtStart => "echo 'zosd: cannot start' >&2; exit 1\n".to_string(),
            _ => String::new(),
        };
        let uplink = if zosd == Zosd::UplinkNeverUp {
            "false"
        } else {
            "true"
        };
        let script = format!(
            r#"#!/bin/sh
# zosd {version} (a stand-in, see the test's doc)
trap 'exit 0' TERM
{start}R={run}
printf '{{"node_id":%s,"twin_id":%s,"key":"%s","version":"{version}"}}' "$NODE" "$TWIN" "$KEY" > $R/.node.tmp && mv $R/.node.tmp $R/node.json
if [ -f $R/workload.pid ] && kill -0 "$(cat $R/workload.pid)" 2>/dev/null; then
  echo "zosd {version}: workload $(cat $R/workload.pid) adopted"
else
  setsid {usr}/bin/workload 100000 >/dev/null 2>&1 < /dev/null &
  echo $! > $R/workload.pid
fi
printf '{{"version":"{version}","registered":true,"uplink":{uplink},"reconciled":true,"ok":["w1"]}}' > $R/.health.tmp && mv $R/.health.tmp $R/health.json
while :; do sleep 1 & wait $!; done
"#,
            usr = usr.display(),
            run = run.display(),
        );
        std::fs::write(src.join("usr/bin/zosd"), script).unwrap();
        std::fs::set_permissions(
            src.join("usr/bin/zosd"),
            std::os::unix::fs::PermissionsExt::from_mode(0o755),
        )
        .unwrap();
        let twin = self.twin().to_string();
        std::fs::write(
            src.join("usr/share/zos/services.json"),
            serde_json::json!([{
                "name": "zosd",
                "exec": [usr.join("bin/zosd")],
                "env": {
                    "NODE": self.node.to_string(),
                    "TWIN": twin,
                    "KEY": self.p("node.key"),
                },
            }])
            .to_string(),
        )
        .unwrap();
        let out = self.p(&format!("zos-{version}.fl"));
        self.rt.block_on(async {
            let store: Arc<dyn BlockStore> = Arc::new(self.hub.block_store().unwrap());
            pack(
                &Source::Dir(src),
                &out,
                store,
                &PackOptions::default(),
                &|_: &Progress| {},
            )
            .await
            .unwrap();
            let pushed = self
                .hub
                .push(
                    &format!("zos-{version}.fl"),
                    std::fs::read(&out).unwrap(),
                    false,
                )
                .await
                .unwrap();
            (
                RuntimeFlist {
                    name: "zos".into(),
                    sha256: pushed.flist.sha256,
                    size: pushed.flist.size,
                },
                out.clone(),
            )
        })
    }

    /// Publishes `version` with a runtime whose zosd behaves as `zosd`; answers its flist file.
    fn publish(&self, version: &str, zosd: Zosd) -> PathBuf {
        let (flist, file) = self.flist(version, zosd);
        let r = Release {
            version: version.into(),
            runmode: RunMode::Dev,
            created: unix_now(),
            kernel: self.kernel.clone(),
            initramfs: self.initramfs.clone(),
            flists: vec![flist],
        };
        let signed = r.sign(&[&self.key]).unwrap();
        let p = self
            .rt
            .block_on(
                ReleaseClient::new(&self.url)
                    .unwrap()
                    .put_release(&signed, &self.key),
            )
            .unwrap();
        assert!(p.published);
        file
    }

    /// The node's last report for `version`.
    fn report(&self, version: &str) -> Option<NodeReport> {
        let s = self
            .rt
            .block_on(
                ReleaseClient::new(&self.url)
                    .unwrap()
                    .status(RunMode::Dev, Some(version.parse().unwrap())),
            )
            .unwrap();
        s.nodes
            .into_iter()
            .find(|n| n.node == self.node)
            .and_then(|n| n.report)
    }
}

impl Drop for Bed {
    fn drop(&mut self) {
        if let Some(g) = self.grid.take() {
            let _ = self.rt.block_on(g.shutdown());
        }
    }
}

fn registration(farm_id: u32, admission: AdmissionToken) -> NodeRegistration {
    NodeRegistration {
        farm_id,
        capacity: Capacity {
            cru: 4,
            mru: 16 * GIB,
            sru: 500 * GIB,
            hru: 2000 * GIB,
        },
        reserved: Capacity {
            cru: 0,
            mru: 2 * GIB,
            sru: 20 * GIB,
            hru: 0,
        },
        hardware: Hardware {
            serial: "SN-UPGRADE".into(),
            virtualized: true,
            cpu_model: "Test CPU".into(),
        },
        interfaces: vec![Interface {
            name: "eth0".into(),
            mac: "52:54:00:aa:bb:01".into(),
            ips: vec!["10.0.2.15/24".parse().unwrap()],
        }],
        zos_version: "1.0.0".into(),
        report_interval_secs: 60,
        limited: None,
        admission: Some(admission),
    }
}

fn wait_for(what: &str, log: &Path, limit: Duration, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !f() {
        if Instant::now() > deadline {
            panic!(
                "timed out waiting for {what}; zos-init said:\n{}",
                std::fs::read_to_string(log).unwrap_or_default()
            );
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// The host PID of the zos-init that `unshare --fork` started.
fn init_pid(unshare: u32) -> u32 {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let children = std::fs::read_to_string(format!("/proc/{unshare}/task/{unshare}/children"))
            .unwrap_or_default();
        if let Some(p) = children.split_whitespace().next() {
            return p.parse().unwrap();
        }
        assert!(Instant::now() < deadline, "zos-init did not start");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Every file under `dir` whose name is `name`.
fn find(dir: &Path, name: &str, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let t = e.file_type().unwrap();
        if t.is_dir() {
            find(&e.path(), name, out);
        } else if e.file_name().to_str() == Some(name) {
            out.push(e.path());
        }
    }
}

fn alive(pid: &str, init: u32) -> bool {
    // The workload's PID is the namespace's; it lives under zos-init's namespace.
    let ns_pids = std::fs::read_to_string(format!("/proc/{init}/root/proc/{pid}/stat"));
    ns_pids.is_ok_and(|s| !s.contains(") Z "))
}

#[test]
fn a_namespace_node_upgrades_live_rolls_back_bad_releases_and_refuses_tampered_ones() {
    if !zos_testkit::require_root(
        "a_namespace_node_upgrades_live_rolls_back_bad_releases_and_refuses_tampered_ones",
    ) {
        return;
    }
    assert!(
        Path::new("/dev/fuse").exists(),
        "/dev/fuse is missing (modprobe fuse)"
    );
    let mounter = zos_testkit::workspace_binary("zos-flist-mount")
        .expect("zos-flist-mount is not built: cargo build --workspace --bins");
    let bed = Bed::start();
    let p = |s: &str| bed.p(s);
    let usr = p("usr");
    let run = p("run");
    std::fs::create_dir_all(usr.join("lib/modules")).unwrap();
    std::fs::create_dir_all(&run).unwrap();
    bed.publish("1.0.0", Zosd::Good);

    let gate_secs = 15;
    let cfg = NodeTest {
        boot: Boot {
            cmdline: p("cmdline"),
            keys: p("release-keys.json"),
            modules_root: None,
            system: false,
            set_clock: false,
            runtime_dir: run.clone(),
            usr: usr.clone(),
            mounters: vec![mounter],
            resolv_conf: p("resolv.conf"),
            sys_class_net: PathBuf::from("/sys/class/net"),
            interfaces: Vec::new(),
            power_off: false,
            power_button: false,
            grace_ms: 2000,
            upgrade: Settings {
                // Only zosd's asking (the uplink event) starts checks after the first.
                check_secs: 3600,
                gate_secs,
            },
        },
        grid: bed.url.clone(),
        runmode: RunMode::Dev,
    };
    std::fs::write(p("node.json"), serde_json::to_vec(&cfg).unwrap()).unwrap();
    let log = p("console.log");
    let out = std::fs::File::create(&log).unwrap();
    let child = Command::new("unshare")
        .args(["--pid", "--fork", "--mount-proc", "--kill-child"])
        .arg(env!("CARGO_BIN_EXE_zos-init"))
        .arg("--node-test")
        .arg(p("node.json"))
        .stdin(Stdio::null())
        .stdout(out.try_clone().unwrap())
        .stderr(out)
        .spawn()
        .unwrap();
    let mut node = Node(child);
    let init = init_pid(node.0.id());
    let console = || std::fs::read_to_string(&log).unwrap_or_default();
    // What the node's /usr shows, seen from inside its mount namespace.
    let usr_version = || {
        std::fs::read_to_string(format!("/proc/{init}/root{}/share/version", usr.display()))
            .unwrap_or_default()
    };
    let health_version = || {
        std::fs::read_to_string(run.join("health.json"))
            .ok()
            .and_then(|h| serde_json::from_str::<serde_json::Value>(&h).ok())
            .and_then(|h| h["version"].as_str().map(str::to_string))
            .unwrap_or_default()
    };
    let ask = || std::fs::write(run.join("check-release"), unix_now().to_string()).unwrap();
    let state = |v: &str| {
        bed.report(v)
            .map(|r| (r.state, r.reason.unwrap_or_default()))
    };

    // Boot on 1.0.0: its zosd starts the workload and the node reports the version it runs.
    wait_for("zosd 1.0.0", &log, Duration::from_secs(120), || {
        health_version() == "1.0.0"
    });
    assert_eq!(usr_version(), "1.0.0");
    let workload = std::fs::read_to_string(run.join("workload.pid")).unwrap();
    let workload = workload.trim().to_string();
    assert!(alive(&workload, init));
    wait_for(
        "the committed report of 1.0.0",
        &log,
        Duration::from_secs(60),
        || state("1.0.0").is_some_and(|(s, _)| s == UpgradeState::Committed),
    );

    // 1.0.1's zosd ends at start: a crash loop, back on 1.0.0 within the gate, never retried.
    bed.publish("1.0.1", Zosd::ExitsAtStart);
    ask();
    wait_for(
        "the rollback of 1.0.1",
        &log,
        Duration::from_secs(120),
        || state("1.0.1").is_some_and(|(s, _)| s == UpgradeState::RolledBack),
    );
    let (_, why) = state("1.0.1").unwrap();
    assert!(why.contains("crash loop"), "{why}");
    wait_for("zosd 1.0.0 again", &log, Duration::from_secs(60), || {
        health_version() == "1.0.0"
    });
    assert_eq!(usr_version(), "1.0.0");
    assert!(alive(&workload, init), "the workload kept running");
    assert_eq!(
        std::fs::read_to_string(run.join("workload.pid"))
            .unwrap()
            .trim(),
        workload,
        "and was adopted, not started again"
    );

    // 1.0.2's zosd never shows its uplink up: the gate is missed, back on 1.0.0.
    bed.publish("1.0.2", Zosd::UplinkNeverUp);
    ask();
    wait_for(
        "the rollback of 1.0.2",
        &log,
        Duration::from_secs(120),
        || state("1.0.2").is_some_and(|(s, _)| s == UpgradeState::RolledBack),
    );
    let (_, why) = state("1.0.2").unwrap();
    assert!(
        why.contains(&format!("health gate missed after {gate_secs}s"))
            && why.contains("uplink down"),
        "{why}"
    );
    wait_for(
        "zosd 1.0.0 after the gate",
        &log,
        Duration::from_secs(60),
        || health_version() == "1.0.0",
    );
    assert_eq!(usr_version(), "1.0.0");
    assert!(alive(&workload, init));

    // 1.0.3's zosd has a block the hub serves tampered: refused before anything stops.
    let fl = bed.publish("1.0.3", Zosd::Good);
    let f = zos_flist::Flist::open(&fl).unwrap();
    let mut ino = 1;
    for name in ["usr", "bin", "zosd"] {
        ino = f.lookup(ino, name.as_bytes()).unwrap().ino;
    }
    let id = f.get(ino).unwrap().blocks[0].id.to_hex();
    let mut stored = Vec::new();
    find(&bed.data, &id, &mut stored);
    assert_eq!(stored.len(), 1, "block {id} in {}", bed.data.display());
    let mut bytes = std::fs::read(&stored[0]).unwrap();
    bytes[10] ^= 0x55;
    std::fs::write(&stored[0], bytes).unwrap();
    // The services' starts and stops (orphans reaped, such as a stopped zosd's children, are
    // not the services').
    let services = || {
        std::fs::read_to_string(run.join("services.jsonl"))
            .unwrap()
            .lines()
            .filter(|l| !l.contains("\"reaped\""))
            .collect::<Vec<_>>()
            .join("\n")
    };
    let before = services();
    ask();
    wait_for(
        "the refusal of 1.0.3",
        &log,
        Duration::from_secs(120),
        || state("1.0.3").is_some_and(|(s, _)| s == UpgradeState::RolledBack),
    );
    let (_, why) = state("1.0.3").unwrap();
    assert!(
        why.starts_with("refused: runtime check failed for service zosd"),
        "{why}"
    );
    assert_eq!(usr_version(), "1.0.0");
    assert_eq!(services(), before, "nothing was stopped or started");

    // 1.1.0 is good: switched, the gate passed, committed; the workload keeps its PID.
    bed.publish("1.1.0", Zosd::Good);
    ask();
    wait_for(
        "the commit of 1.1.0",
        &log,
        Duration::from_secs(120),
        || state("1.1.0").is_some_and(|(s, _)| s == UpgradeState::Committed),
    );
    assert_eq!(usr_version(), "1.1.0");
    assert_eq!(health_version(), "1.1.0");
    assert!(alive(&workload, init), "the workload kept running");
    assert_eq!(
        std::fs::read_to_string(run.join("workload.pid"))
            .unwrap()
            .trim(),
        workload
    );
    let text = console();
    assert!(
        text.contains(&format!("zosd 1.1.0: workload {workload} adopted")),
        "{text}"
    );
    for want in [
        "zosd asked for a release check",
        "release fetched and checked: switching",
        "health gate passed: committed",
        "rolling back to 1.0.0",
    ] {
        assert!(text.contains(want), "{want:?} not in:\n{text}");
    }

    // Power-off: SIGTERM stops zosd and everything else in the namespace.
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(init as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    let status = loop {
        if let Some(s) = node.0.try_wait().unwrap() {
            break s;
        }
        assert!(
            Instant::now() < deadline,
            "zos-init did not stop:\n{}",
            console()
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(status.success(), "{status}:\n{}", console());
}
