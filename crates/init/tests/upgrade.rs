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
//! never showing its uplink up. Like the real zosd, it reports the version zos-init gives it
//! (`ZOS_RELEASE_VERSION`), not one of its own: the gate passes only when zos-init told each
//! release's services their version. The real zosd's health file is zosd's own to test.

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
printf '{{"node_id":%s,"twin_id":%s,"key":"%s","version":"%s"}}' "$NODE" "$TWIN" "$KEY" "$ZOS_RELEASE_VERSION" > $R/.node.tmp && mv $R/.node.tmp $R/node.json
if [ -f $R/workload.pid ] && kill -0 "$(cat $R/workload.pid)" 2>/dev/null; then
  echo "zosd {version}: workload $(cat $R/workload.pid) adopted"
else
  setsid {usr}/bin/workload 100000 >/dev/null 2>&1 < /dev/null &
  echo $! > $R/workload.pid
fi
printf '{{"version":"%s","registered":true,"uplink":{uplink},"reconciled":true,"ok":["w1"]}}' "$ZOS_RELEASE_VERSION" > $R/.health.tmp && mv $R/.health.tmp $R/health.json
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
            debug: None,
        };
        std::fs::write(
            self.p(&format!("release-{version}.json")),
            serde_json::to_vec(&r).unwrap(),
        )
        .unwrap();
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

    /// The release published as `version`.
    fn release_of(&self, version: &str) -> Release {
        serde_json::from_slice(&std::fs::read(self.p(&format!("release-{version}.json"))).unwrap())
            .unwrap()
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

/// A node booted by zos-init from the release `grid` names, its zosd up.
struct Booted {
    node: Node,
    init: u32,
    log: PathBuf,
    usr: PathBuf,
    run: PathBuf,
}

impl Booted {
    fn start(bed: &Bed, grid: &str, gate_secs: u64) -> Self {
        let mounter = zos_testkit::workspace_binary("zos-flist-mount")
            .expect("zos-flist-mount is not built: cargo build --workspace --bins");
        let p = |s: &str| bed.p(s);
        let (usr, run) = (p("usr"), p("run"));
        std::fs::create_dir_all(usr.join("lib/modules")).unwrap();
        std::fs::create_dir_all(&run).unwrap();
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
                service_args: Default::default(),
                service_env: Default::default(),
            },
            grid: grid.to_string(),
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
        let node = Node(child);
        let init = init_pid(node.0.id());
        let b = Self {
            node,
            init,
            log,
            usr,
            run,
        };
        wait_for("zosd 1.0.0", &b.log, Duration::from_secs(120), || {
            b.health_version() == "1.0.0"
        });
        b
    }

    fn console(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// What the node's /usr shows, seen from inside its mount namespace.
    fn usr_version(&self) -> String {
        std::fs::read_to_string(format!(
            "/proc/{}/root{}/share/version",
            self.init,
            self.usr.display()
        ))
        .unwrap_or_default()
    }

    fn health_version(&self) -> String {
        std::fs::read_to_string(self.run.join("health.json"))
            .ok()
            .and_then(|h| serde_json::from_str::<serde_json::Value>(&h).ok())
            .and_then(|h| h["version"].as_str().map(str::to_string))
            .unwrap_or_default()
    }

    /// What zosd does on an uplink event.
    fn ask(&self) {
        std::fs::write(self.run.join("check-release"), unix_now().to_string()).unwrap()
    }

    /// The services' starts and stops (orphans reaped, such as a stopped zosd's children, are
    /// not the services').
    fn services(&self) -> String {
        std::fs::read_to_string(self.run.join("services.jsonl"))
            .unwrap()
            .lines()
            .filter(|l| !l.contains("\"reaped\""))
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// SIGTERM stops zosd and everything else in the namespace.
    fn stop(mut self) {
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.init as i32),
            nix::sys::signal::Signal::SIGTERM,
        )
        .unwrap();
        let deadline = Instant::now() + Duration::from_secs(60);
        let status = loop {
            if let Some(s) = self.node.0.try_wait().unwrap() {
                break s;
            }
            assert!(
                Instant::now() < deadline,
                "zos-init did not stop:\n{}",
                self.console()
            );
            std::thread::sleep(Duration::from_millis(100));
        };
        assert!(status.success(), "{status}:\n{}", self.console());
    }
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
    let bed = Bed::start();
    bed.publish("1.0.0", Zosd::Good);
    let gate_secs = 15;
    let b = Booted::start(&bed, &bed.url, gate_secs);
    let (init, run, log) = (b.init, b.run.clone(), b.log.clone());
    let console = || b.console();
    let usr_version = || b.usr_version();
    let health_version = || b.health_version();
    let ask = || b.ask();
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
    let before = b.services();
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
    assert_eq!(b.services(), before, "nothing was stopped or started");

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
    // The runtimes of 1.0.1 and 1.0.2 (rolled back) were released as nothing used them, and
    // 1.0.3's (refused) unmounted: the flist mounts left are 1.1.0's and 1.0.0's, which the
    // workload started from it still uses.
    let mounted = || {
        let mut out = std::collections::BTreeSet::new();
        for e in std::fs::read_dir(format!("/proc/{init}/root/proc"))
            .unwrap()
            .flatten()
        {
            let Ok(c) = std::fs::read(e.path().join("cmdline")) else {
                continue;
            };
            let args: Vec<String> = c
                .split(|b| *b == 0)
                .map(|a| String::from_utf8_lossy(a).into_owned())
                .collect();
            if args.first().is_some_and(|a| a.ends_with("zos-flist-mount"))
                && let Some(i) = args.iter().position(|a| a == "--flist")
            {
                out.insert(args[i + 1].rsplit('/').next().unwrap().to_string());
            }
        }
        out
    };
    let want: std::collections::BTreeSet<String> = ["1.0.0", "1.1.0"]
        .iter()
        .map(|v| format!("{}.fl", bed.release_of(v).flists[0].sha256))
        .collect();
    wait_for(
        "the unused runtimes released",
        &log,
        Duration::from_secs(60),
        || mounted() == want,
    );
    b.stop();
}

/// What the hostile front serves instead of the grid.
#[derive(Default)]
struct Overrides {
    /// The body of `GET /releases/dev/for-node/{node}`.
    for_node: Option<Vec<u8>>,
    /// Bodies by path.
    paths: std::collections::HashMap<String, Vec<u8>>,
}

/// A hostile front of the grid on loopback: what `overrides` holds, the real grid's answer for
/// the rest (reports included, so they land in the grid). Answers its URL.
fn front(bed: &Bed, overrides: Arc<std::sync::Mutex<Overrides>>) -> String {
    use axum::body::Bytes;
    use axum::http::{HeaderMap, Method, StatusCode, Uri};
    use axum::response::IntoResponse;
    let grid = bed.url.clone();
    let http = reqwest::Client::new();
    let app = axum::Router::new().fallback(
        move |method: Method, uri: Uri, headers: HeaderMap, body: Bytes| {
            let (grid, http, o) = (grid.clone(), http.clone(), overrides.clone());
            async move {
                {
                    let o = o.lock().unwrap();
                    if uri.path().starts_with("/releases/dev/for-node/")
                        && let Some(b) = &o.for_node
                    {
                        return (StatusCode::OK, b.clone()).into_response();
                    }
                    if let Some(b) = o.paths.get(uri.path()) {
                        return (StatusCode::OK, b.clone()).into_response();
                    }
                }
                let url = format!(
                    "{grid}{}",
                    uri.path_and_query().map(|p| p.as_str()).unwrap_or("/")
                );
                let mut req = http.request(method, url).body(body);
                for (k, v) in &headers {
                    if k != "host" && k != "content-length" {
                        req = req.header(k, v);
                    }
                }
                match req.send().await {
                    Ok(r) => {
                        let status = StatusCode::from_u16(r.status().as_u16()).unwrap();
                        let ct = r.headers().get("content-type").cloned();
                        let bytes = r.bytes().await.unwrap_or_default();
                        let mut resp = (status, bytes).into_response();
                        if let Some(ct) = ct {
                            resp.headers_mut().insert("content-type", ct);
                        }
                        resp
                    }
                    Err(e) => (StatusCode::BAD_GATEWAY, e.to_string()).into_response(),
                }
            }
        },
    );
    let listener = bed
        .rt
        .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .unwrap();
    let addr = listener.local_addr().unwrap();
    bed.rt
        .spawn(async move { axum::serve(listener, app).await });
    format!("http://{addr}")
}

#[test]
fn each_refused_release_is_reported_and_changes_nothing() {
    if !zos_testkit::require_root("each_refused_release_is_reported_and_changes_nothing") {
        return;
    }
    let bed = Bed::start();
    bed.publish("1.0.0", Zosd::Good);
    let overrides = Arc::new(std::sync::Mutex::new(Overrides::default()));
    let url = front(&bed, overrides.clone());
    let b = Booted::start(&bed, &url, 15);
    let workload = std::fs::read_to_string(b.run.join("workload.pid")).unwrap();
    let before = b.services();
    let first = bed.release_of("1.0.0");
    let stranger = Identity::generate().unwrap();

    // Each case: a version published on the grid (so the node's report lands there), and what
    // the hostile front hands the node for it.
    let mut refused = 0;
    let mut check = |version: &str,
                     hostile: zos_types::release::SignedRelease,
                     paths: Vec<(String, Vec<u8>)>,
                     want: &str| {
        {
            let mut o = overrides.lock().unwrap();
            o.for_node = Some(
                serde_json::to_vec(&serde_json::json!({
                    "version": version,
                    "why": "hostile front",
                    "release": hostile,
                }))
                .unwrap(),
            );
            o.paths = paths.into_iter().collect();
        }
        b.ask();
        wait_for(
            &format!("the refusal of {version}"),
            &b.log,
            Duration::from_secs(120),
            || {
                bed.report(version)
                    .is_some_and(|r| r.state == UpgradeState::RolledBack)
            },
        );
        let why = bed.report(version).unwrap().reason.unwrap();
        assert!(
            why.starts_with("refused: ") && why.contains(want),
            "{version}: {why}"
        );
        assert!(b.console().contains(want), "{want:?} not in the node's log");
        assert_eq!(b.usr_version(), "1.0.0");
        assert_eq!(b.health_version(), "1.0.0");
        assert_eq!(b.services(), before, "nothing was stopped or started");
        refused += 1;
    };

    bed.publish("2.0.1", Zosd::Good);
    let r = bed.release_of("2.0.1");
    check("2.0.1", r.sign(&[&stranger]).unwrap(), vec![], "1 needed");

    bed.publish("2.0.2", Zosd::Good);
    let mut unsigned = bed.release_of("2.0.2").sign(&[&bed.key]).unwrap();
    unsigned.signatures.clear();
    check(
        "2.0.2",
        unsigned,
        vec![],
        "signed by 0 trusted release key(s), 1 needed",
    );

    bed.publish("2.0.3", Zosd::Good);
    let prod = Release {
        runmode: RunMode::Prod,
        ..bed.release_of("2.0.3")
    };
    check(
        "2.0.3",
        prod.sign(&[&bed.key]).unwrap(),
        vec![],
        "runmode prod",
    );

    bed.publish("2.0.4", Zosd::Good);
    let expired = zos_types::release::terms::Terms {
        expires: Some(unix_now() - 60),
        ..Default::default()
    };
    let old = Release {
        created: unix_now() - 3600,
        ..bed.release_of("2.0.4")
    };
    let signed = old.sign_with(&expired, &[&bed.key]).unwrap();
    check("2.0.4", signed, vec![], "expired");

    // The replay of the signed release the node runs, under a newer version's name.
    bed.publish("2.0.5", Zosd::Good);
    check("2.0.5", first.sign(&[&bed.key]).unwrap(), vec![], "replay");

    bed.publish("2.0.6", Zosd::Good);
    let too_new = zos_types::release::terms::Terms {
        min_from: Some("1.5.0".into()),
        ..Default::default()
    };
    let signed = bed
        .release_of("2.0.6")
        .sign_with(&too_new, &[&bed.key])
        .unwrap();
    check("2.0.6", signed, vec![], "upgrades only from 1.5.0");

    // A runtime flist with other bytes than the release names.
    bed.publish("2.0.7", Zosd::Good);
    let r = bed.release_of("2.0.7");
    let path = format!("/api/v1/hub/flists/by-hash/{}", r.flists[0].sha256);
    let mut bytes = std::fs::read(bed.p("zos-2.0.7.fl")).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 0x55;
    check(
        "2.0.7",
        r.sign(&[&bed.key]).unwrap(),
        vec![(path, bytes)],
        "runtime flist zos refused: its SHA-256 is",
    );
    assert_eq!(refused, 7);

    assert_eq!(
        std::fs::read_to_string(b.run.join("workload.pid")).unwrap(),
        workload
    );
    b.stop();
}
