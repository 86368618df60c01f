//! zdb namespaces end to end on a devnet: `zos network create` and `zos deploy` of a `zdb`
//! workload against a real grid and a zosd node, which runs `zos-zdb` on its HDD in `ndmz`;
//! `redis-cli` in the network resource's namespace (where the user's machines are) uses the
//! namespace with its password, another twin cannot, a crash of zosd leaves the server running
//! and the next zosd adopts it, a killed server is started again with its data, and cancel
//! removes the namespace and stops the server.

use std::path::Path;
use std::time::Duration;

use serde_json::Value;
use zos_testkit::devnet::{self, DevnetGuard};
use zos_testkit::guest::pids_with;
use zos_testkit::net::redis_cli;
use zos_testkit::process::wait_until;
use zos_testkit::require_root;
use zos_testkit::user::{User, nr_netns};
use zos_types::node_api::{ContractBody, Get};

async fn user(grid: &str) -> User {
    User::new(grid, Path::new(env!("CARGO_BIN_EXE_zos")))
        .await
        .unwrap()
}

fn workload<'a>(d: &'a Value, name: &str) -> &'a Value {
    d["workloads"]
        .as_array()
        .and_then(|ws| ws.iter().find(|w| w["name"] == name))
        .unwrap_or_else(|| panic!("no workload {name} in {d}"))
}

#[tokio::test(flavor = "multi_thread")]
async fn a_zdb_namespace_is_used_from_the_users_network_and_removed_on_cancel() {
    if !require_root("a_zdb_namespace_is_used_from_the_users_network_and_removed_on_cancel") {
        return;
    }
    let mut net = DevnetGuard::up(1, Duration::from_secs(2)).await.unwrap();
    let grid = net.state.grid_url.clone();
    let n1 = net.state.nodes[0].clone();
    let node = n1.node_id.unwrap();
    let alice = user(&grid).await;
    let bob = user(&grid).await;
    for u in [&alice, &bob] {
        u.zos(&[
            "network",
            "create",
            "lan",
            "--nodes",
            &node.to_string(),
            "--json",
        ]);
    }
    let work = tempfile::tempdir().unwrap();
    let yaml = "workloads:\n  - name: db\n    type: zdb\n    data: {size: 1G, mode: user, password: s3cret, public: false}\n";
    let res = alice.deploy(work.path(), "db.yaml", yaml, node);
    let contract = res["contract_id"].as_u64().unwrap();
    let db = workload(&res, "db");
    assert_eq!(db["state"], "ok", "{res}");
    let namespace = format!("{}-{contract}-db", alice.twin());
    assert_eq!(db["data"]["Namespace"], namespace.as_str(), "{db}");
    assert_eq!(
        db["data"]["IPs"],
        serde_json::json!(["100.127.0.1"]),
        "{db}"
    );
    let port = db["data"]["Port"].as_u64().unwrap();
    assert_eq!(port, 9900);

    // From Alice's network (where her machines are): her password opens the namespace.
    let a_ns = nr_netns(&n1, alice.twin(), "lan");
    let select = format!("SELECT {namespace} s3cret");
    assert_eq!(
        redis_cli(
            &a_ns,
            port,
            &[select.clone(), "SET k v".into(), "GET k".into()]
        ),
        ["OK", "\"k\"", "\"v\""]
    );
    // Bob reaches the server from his own network, but not Alice's namespace.
    let b_ns = nr_netns(&n1, bob.twin(), "lan");
    assert_eq!(
        redis_cli(
            &b_ns,
            port,
            &[format!("SELECT {namespace} guess"), "GET k".into()]
        ),
        ["(error) Access denied", "(nil)"]
    );
    assert_eq!(
        redis_cli(&b_ns, port, &[format!("SELECT {namespace}")])[0],
        "(error) Namespace protected and private"
    );

    // kill -9 zosd: the server keeps serving; the next zosd adopts it (the same process).
    let mount_root = n1.mount_root.display().to_string();
    let servers = pids_with("zos-zdb", &mount_root);
    assert_eq!(
        servers.len(),
        1,
        "one zdb server for the node's HDD: {servers:?}"
    );
    devnet::stop_node(&mut net.state, 1, true).unwrap();
    assert_eq!(
        redis_cli(&a_ns, port, &[select.clone(), "GET k".into()]),
        ["OK", "\"v\""],
        "serving while zosd is down"
    );
    devnet::start_node(&mut net.state, 1).unwrap();
    let answers = || {
        let c = alice.client.clone();
        let twin = n1.twin_id.unwrap();
        async move {
            c.node(twin)
                .call::<Get>(&ContractBody {
                    contract_id: contract,
                })
                .await
                .ok()
        }
    };
    assert!(
        wait_until(Duration::from_secs(60), Duration::from_millis(500), answers)
            .await
            .is_some(),
        "node 1 answers again"
    );
    assert_eq!(
        pids_with("zos-zdb", &mount_root),
        servers,
        "adopted, not restarted"
    );

    // The server killed: zosd starts it again (it checks every 30 s), with the data.
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(servers[0]),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    let back = wait_until(Duration::from_secs(90), Duration::from_secs(1), || {
        let got = redis_cli(&a_ns, port, &[select.clone(), "GET k".into()]);
        async move { (got == ["OK", "\"v\""]).then_some(()) }
    })
    .await;
    assert!(
        back.is_some(),
        "the killed server is started again with its data"
    );
    let restarted = pids_with("zos-zdb", &mount_root);
    assert_eq!(restarted.len(), 1, "{restarted:?}");
    assert_ne!(restarted, servers);

    // Cancel: the namespace goes, and with it the last one, the server.
    alice.zos(&["deployment", "cancel", &contract.to_string(), "--json"]);
    assert!(
        wait_until(Duration::from_secs(60), Duration::from_millis(500), || {
            let gone = pids_with("zos-zdb", &mount_root).is_empty();
            async move { gone.then_some(()) }
        })
        .await
        .is_some(),
        "the zdb server stops once its last namespace is gone"
    );
    assert_ne!(
        redis_cli(&a_ns, port, std::slice::from_ref(&select)).first(),
        Some(&"OK".to_string()),
        "the namespace is gone"
    );
    let leftovers: Vec<_> = walk(&n1.mount_root)
        .into_iter()
        .filter(|p| p.contains(&namespace))
        .collect();
    assert!(leftovers.is_empty(), "files left: {leftovers:?}");
}

/// Every path under `dir`.
fn walk(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let p = e.path();
        out.push(p.display().to_string());
        if e.file_type().is_ok_and(|t| t.is_dir()) {
            out.extend(walk(&p));
        }
    }
    out
}
