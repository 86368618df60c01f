//! The `zdb` manager with the real `zos-zdb`: the manager starts it in a test namespace on
//! 100.127.0.1 (as in `ndmz`), on a data directory standing in for an HDD subvolume, and
//! `redis-cli` (Debian's) uses the namespaces it makes: passwords, twins kept apart, seq keys,
//! the size limit, the grace period's lock, updates, refused changes, cancel, and a new manager
//! (zosd restarted) adopting the running server and restarting a dead one.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use zos_provision::managers::{Manager, ManagerError, Target};
use zos_provision::zdb::{Endpoint, ZdbManager, ZdbProcesses, ZdbServers, admin_password};
use zos_runtime::supervise;
use zos_storage::{DiskKind, MemoryStorage, Storage};
use zos_testkit::net::redis_cli;
use zos_testkit::netns::Netns;
use zos_testkit::require_root;
use zos_types::deployment::WorkloadId;
use zos_types::workload::{WorkloadData, Zdb, ZdbMode};

const GIB: u64 = 1 << 30;
const MIB: u64 = 1 << 20;
const SEED: [u8; 32] = [7; 32];

/// The real servers, on a directory of the test for each of the fake storage's devices
/// (`/fake/<pool>/zdb` is `<root>/<pool>/zdb`).
struct UnderRoot {
    inner: ZdbProcesses,
    root: PathBuf,
}

impl UnderRoot {
    fn dir(&self, data: &Path) -> PathBuf {
        self.root.join(data.strip_prefix("/fake").unwrap())
    }
}

impl ZdbServers for UnderRoot {
    fn ensure<'a>(
        &'a self,
        data: &'a Path,
        port: u16,
    ) -> BoxFuture<'a, Result<Endpoint, ManagerError>> {
        Box::pin(async move { self.inner.ensure(&self.dir(data), port).await })
    }
    fn stop<'a>(&'a self, data: &'a Path) -> BoxFuture<'a, Result<(), ManagerError>> {
        Box::pin(async move { self.inner.stop(&self.dir(data)).await })
    }
    fn admin(&self) -> &str {
        self.inner.admin()
    }
}

/// Stops every server whose data is under the test's directory, also when the test failed.
struct Cleanup(PathBuf);

impl Drop for Cleanup {
    fn drop(&mut self) {
        let marker = supervise::Marker::containing(self.0.as_os_str());
        for (pid, _) in supervise::find(&marker) {
            supervise::stop_blocking(pid, &marker, Duration::ZERO);
        }
    }
}

fn servers(ns: &str, root: &Path) -> Arc<UnderRoot> {
    let program = zos_testkit::workspace_binary("zos-zdb")
        .expect("zos-zdb is not built: cargo build -p zos-zdb");
    Arc::new(UnderRoot {
        inner: ZdbProcesses::new(
            program,
            Some(ns.to_string()),
            "100.127.0.1".parse().unwrap(),
            root.join("logs"),
            admin_password(&SEED),
        ),
        root: root.to_path_buf(),
    })
}

fn id(twin: u32, contract: u64, name: &str) -> WorkloadId {
    WorkloadId {
        twin,
        contract,
        name: name.into(),
    }
}

fn zdb(size: u64, mode: ZdbMode, password: &str, public: bool) -> WorkloadData {
    WorkloadData::Zdb(Zdb {
        size,
        mode,
        password: password.into(),
        public,
    })
}

fn s(lines: &[&str]) -> Vec<String> {
    lines.iter().map(|l| l.to_string()).collect()
}

fn port_of(result: &serde_json::Value) -> u16 {
    result["Port"].as_u64().unwrap() as u16
}

#[tokio::test(flavor = "multi_thread")]
async fn zdb_namespaces_are_made_used_locked_updated_and_removed_with_the_real_server() {
    if !require_root("zdb_namespaces_are_made_used_locked_updated_and_removed_with_the_real_server")
    {
        return;
    }
    let ns = Netns::create(&format!("zdbt{}", std::process::id() % 100_000)).unwrap();
    ns.ip(&["link", "set", "lo", "up"]).unwrap();
    ns.ip(&["addr", "add", "100.127.0.1/32", "dev", "lo"])
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let _cleanup = Cleanup(dir.path().to_path_buf());
    let storage = Arc::new(MemoryStorage::new(
        &[
            ("ssd", DiskKind::Ssd, 100 * GIB),
            ("hdd1", DiskKind::Hdd, 10 * GIB),
            ("hdd2", DiskKind::Hdd, 10 * GIB),
        ],
        GIB,
    ));
    let state = dir.path().join("zdb.json");
    let srv = servers(ns.name(), dir.path());
    let m = ZdbManager::new(storage.clone(), srv.clone(), state.clone()).unwrap();

    // Two twins' namespaces: one device, one server.
    let (a, b) = (id(1, 10, "alpha"), id(2, 20, "beta"));
    let ra = m
        .provision(Target {
            id: &a,
            data: &zdb(MIB, ZdbMode::User, "pa", false),
        })
        .await
        .unwrap();
    assert_eq!(
        ra,
        serde_json::json!({"Namespace": "1-10-alpha", "IPs": ["100.127.0.1"], "Port": 9900})
    );
    let rb = m
        .provision(Target {
            id: &b,
            data: &zdb(4096, ZdbMode::Seq, "pb", false),
        })
        .await
        .unwrap();
    assert_eq!(rb["Namespace"], "2-20-beta");
    assert_eq!(port_of(&rb), 9900);
    assert_eq!(storage.zdb_list().await.unwrap().len(), 1);
    // `*` would clear the password: refused, nothing made.
    let star = id(1, 10, "star");
    let e = m
        .provision(Target {
            id: &star,
            data: &zdb(MIB, ZdbMode::User, "*", false),
        })
        .await
        .unwrap_err();
    assert!(e.message().contains("no password"), "{}", e.message());
    // Provisioning again changes nothing.
    let again = m
        .provision(Target {
            id: &a,
            data: &zdb(MIB, ZdbMode::User, "pa", false),
        })
        .await
        .unwrap();
    assert_eq!(again, ra);
    let port = 9900;
    let data = dir.path().join("hdd1/zdb");
    assert!(!data.join("1-10-star").exists());
    let pid = srv.inner.running(&data).expect("the server runs");
    // The admin password is not on the command line.
    let argv = supervise::argv(pid).unwrap();
    assert!(
        !argv
            .iter()
            .any(|a| a.to_string_lossy().contains(&admin_password(&SEED))),
        "{argv:?}"
    );

    // Passwords: the right one reads and writes; a wrong one, none, or the other twin's is
    // refused.
    assert_eq!(
        redis_cli(
            ns.name(),
            port,
            &s(&["SELECT 1-10-alpha pa", "SET k v", "GET k"])
        ),
        ["OK", "\"k\"", "\"v\""]
    );
    for pw in ["wrong", "pb"] {
        assert_eq!(
            redis_cli(
                ns.name(),
                port,
                &[format!("SELECT 1-10-alpha {pw}"), "GET k".into()]
            ),
            ["(error) Access denied", "(nil)"],
            "password {pw}"
        );
    }
    assert_eq!(
        redis_cli(ns.name(), port, &s(&["SELECT 1-10-alpha"]))[0],
        "(error) Namespace protected and private"
    );
    // Not an admin without the admin password.
    assert!(
        redis_cli(ns.name(), port, &s(&["NSDEL 1-10-alpha"]))[0].starts_with("(error)"),
        "a user deleted a namespace"
    );

    // Seq mode hands out keys; the size limit refuses.
    assert_eq!(
        redis_cli(
            ns.name(),
            port,
            &s(&["SELECT 2-20-beta pb", "SET \"\" hello", "SET \"\" world"])
        ),
        ["OK", "\"\\x00\\x00\\x00\\x00\"", "\"\\x01\\x00\\x00\\x00\""]
    );
    let big = "x".repeat(5000);
    assert_eq!(
        redis_cli(
            ns.name(),
            port,
            &["SELECT 2-20-beta pb".into(), format!("SET \"\" {big}")]
        ),
        ["OK", "(error) No space left on this namespace"]
    );

    // The grace period: writes refused, reads served; resume writes again.
    m.pause(&a).await.unwrap();
    let locked = redis_cli(
        ns.name(),
        port,
        &s(&["SELECT 1-10-alpha pa", "SET k2 v2", "GET k"]),
    );
    assert_eq!(locked[0], "OK");
    assert!(locked[1].starts_with("(error)"), "{locked:?}");
    assert!(locked[1].contains("locked"), "{locked:?}");
    assert_eq!(locked[2], "\"v\"");
    m.resume(&a).await.unwrap();
    assert_eq!(
        redis_cli(ns.name(), port, &s(&["SELECT 1-10-alpha pa", "SET k2 v2"])),
        ["OK", "\"k2\""]
    );

    // Updates: the size grows and the password changes; a mode change or a shrink is
    // refused and changes nothing.
    let ru = m
        .update(Target {
            id: &a,
            data: &zdb(2 * MIB, ZdbMode::User, "pa2", false),
        })
        .await
        .unwrap();
    assert_eq!(ru, ra);
    assert_eq!(
        redis_cli(
            ns.name(),
            port,
            &s(&["SELECT 1-10-alpha pa", "SELECT 1-10-alpha pa2", "GET k"])
        ),
        ["(error) Access denied", "OK", "\"v\""]
    );
    let info = redis_cli(
        ns.name(),
        port,
        &[
            format!("AUTH {}", admin_password(&SEED)),
            "NSINFO 1-10-alpha".into(),
        ],
    )
    .join("\n");
    assert!(
        info.contains(&format!("data_limits_bytes: {}", 2 * MIB)),
        "{info}"
    );
    for (data, what) in [
        (zdb(2 * MIB, ZdbMode::Seq, "pa2", false), "mode"),
        (zdb(MIB, ZdbMode::User, "pa2", false), "shrink"),
        (zdb(11 * GIB, ZdbMode::User, "pa2", false), "room"),
    ] {
        let e = m
            .update(Target {
                id: &a,
                data: &data,
            })
            .await
            .unwrap_err();
        assert!(e.is_unchanged(), "{what}: {e}");
        assert!(e.message().contains(what), "{what}: {}", e.message());
    }
    assert_eq!(
        redis_cli(ns.name(), port, &s(&["SELECT 1-10-alpha pa2", "SET k3 v3"])),
        ["OK", "\"k3\""]
    );

    // A namespace that fits no device takes a new one, with a server of its own.
    let c = id(3, 30, "gamma");
    let rc = m
        .provision(Target {
            id: &c,
            data: &zdb(10 * GIB, ZdbMode::User, "", true),
        })
        .await
        .unwrap();
    assert_eq!(port_of(&rc), 9901);
    assert_eq!(storage.zdb_list().await.unwrap().len(), 2);
    // No password and public: anyone reads and writes (0-db's semantics).
    assert_eq!(
        redis_cli(ns.name(), 9901, &s(&["SELECT 3-30-gamma", "SET k v"])),
        ["OK", "\"k\""]
    );
    m.deprovision(&c).await.unwrap();
    assert_eq!(storage.zdb_list().await.unwrap().len(), 1);
    assert!(srv.inner.running(&dir.path().join("hdd2/zdb")).is_none());

    // zosd restarted: a new manager adopts the running server, the same process.
    drop(m);
    let srv2 = servers(ns.name(), dir.path());
    let m2 = ZdbManager::new(storage.clone(), srv2.clone(), state.clone()).unwrap();
    let again = m2
        .provision(Target {
            id: &a,
            data: &zdb(2 * MIB, ZdbMode::User, "pa2", false),
        })
        .await
        .unwrap();
    assert_eq!(again, ra);
    assert_eq!(srv2.inner.running(&data), Some(pid));
    // A dead server is started again, with its data.
    let marker = supervise::Marker::program("zos-zdb").arg(data.as_os_str());
    supervise::stop(pid, &marker, Duration::ZERO).await;
    assert_eq!(m2.keep_running().await.unwrap(), 1);
    let restarted = srv2.inner.running(&data).expect("restarted");
    assert_ne!(restarted, pid);
    assert_eq!(
        redis_cli(ns.name(), port, &s(&["SELECT 1-10-alpha pa2", "GET k"])),
        ["OK", "\"v\""]
    );
    // A server of this data found on another port (a lost state file) is replaced, never
    // doubled.
    supervise::stop(restarted, &marker, Duration::ZERO).await;
    srv2.inner.ensure(&data, 9950).await.unwrap();
    let elsewhere = srv2.inner.running(&data).unwrap();
    assert_eq!(m2.keep_running().await.unwrap(), 1);
    assert_eq!(supervise::find(&marker).len(), 1, "one server per device");
    let pid2 = srv2.inner.running(&data).unwrap();
    assert_ne!(pid2, elsewhere);
    assert_eq!(
        redis_cli(ns.name(), port, &s(&["SELECT 1-10-alpha pa2", "GET k"])),
        ["OK", "\"v\""]
    );

    // Cancel removes the namespace and its files; again is fine. The last one releases the
    // device and stops its server.
    assert!(data.join("1-10-alpha").is_dir());
    m2.deprovision(&a).await.unwrap();
    assert!(!data.join("1-10-alpha").exists());
    assert!(redis_cli(ns.name(), port, &s(&["SELECT 1-10-alpha pa2"]))[0].starts_with("(error)"));
    m2.deprovision(&a).await.unwrap();
    assert_eq!(srv2.inner.running(&data), Some(pid2));
    m2.deprovision(&b).await.unwrap();
    assert!(!data.join("2-20-beta").exists());
    assert_eq!(srv2.inner.running(&data), None);
    assert!(storage.zdb_list().await.unwrap().is_empty());
}
