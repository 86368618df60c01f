//! The `zos` binary as a person uses it, against a real grid on loopback.

use std::path::Path;
use std::process::{Command, Output};

use serde_json::Value;
use zos_grid::{GridConfig, start};
use zos_testkit::cli::ZosCli;

struct User<'a> {
    grid: &'a str,
    home: &'a Path,
    key: String,
}

impl<'a> User<'a> {
    fn new(grid: &'a str, home: &'a Path, name: &str) -> Self {
        Self {
            grid,
            home,
            key: home.join(format!("{name}.key")).display().to_string(),
        }
    }
}

impl ZosCli for User<'_> {
    fn run(&self, args: &[&str]) -> Output {
        Command::new(env!("CARGO_BIN_EXE_zos"))
            .args(args)
            .args(["--grid", self.grid, "--key", &self.key])
            .env("HOME", self.home)
            .env_remove("ZOS_GRID")
            .env_remove("ZOS_KEY")
            .output()
            .unwrap()
    }
}

/// A client of the grid at `url` with a fresh key and its own twin, as a node has.
async fn node_twin(url: &str) -> zos_client::GridClient {
    let node = zos_client::GridClient::new(url)
        .unwrap()
        .with_identity(zos_types::Identity::generate().unwrap());
    let twin = node.create_twin(None).await.unwrap();
    node.with_twin(twin.id)
}

/// What a small node of `farm_id` registers, without an admission token.
fn registration(farm_id: u32) -> zos_types::registry::NodeRegistration {
    zos_types::registry::NodeRegistration {
        farm_id,
        capacity: zos_types::Capacity {
            cru: 2,
            mru: 4 << 30,
            sru: 0,
            hru: 0,
        },
        reserved: zos_types::Capacity::ZERO,
        hardware: zos_types::registry::Hardware {
            serial: "x".into(),
            virtualized: true,
            cpu_model: "x".into(),
        },
        interfaces: vec![],
        zos_version: "0.1.0".into(),
        report_interval_secs: 60,
        limited: None,
        admission: None,
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn keys_twins_farms_and_ip_pools_from_the_command_line() {
    let dir = tempfile::tempdir().unwrap();
    let grid = start(GridConfig::new(
        "127.0.0.1:0".parse().unwrap(),
        dir.path().join("grid"),
    ))
    .await
    .unwrap();
    let url = grid.url();
    let home = dir.path().join("home");
    std::fs::create_dir_all(&home).unwrap();
    let alice = User::new(&url, &home, "alice");
    let bob = User::new(&url, &home, "bob");

    // Keys: made once, shown, restored from the words.
    let made = alice.json(&["key", "new"]);
    let words = made["mnemonic"].as_str().unwrap().to_string();
    assert_eq!(words.split_whitespace().count(), 24);
    assert!(alice.fails(&["key", "new"]).contains("--force"));
    let shown = alice.json(&["key", "show"]);
    assert_eq!(shown["public_key"], made["public_key"]);
    assert!(
        shown["mnemonic"].is_null(),
        "words are shown only on request"
    );
    let restored_path = home.join("restored.key");
    let mut restore = Command::new(env!("CARGO_BIN_EXE_zos"))
        .args(["key", "restore", "--json", "--key"])
        .arg(&restored_path)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    restore
        .stdin
        .take()
        .unwrap()
        .write_all(format!("{words}\n").as_bytes())
        .unwrap();
    let out = restore.wait_with_output().unwrap();
    assert!(out.status.success());
    let restored: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(restored["public_key"], made["public_key"]);

    // Twin, then a farm.
    assert!(
        alice
            .fails(&["farm", "create", "alpha"])
            .contains("zos twin create")
    );
    let twin = alice.json(&["twin", "create"]);
    assert_eq!(twin["public_key"], made["public_key"]);
    assert!(
        alice
            .fails(&["twin", "create"])
            .contains("already has twin")
    );
    let farm = alice.json(&["farm", "create", "alpha-farm"]);
    assert_eq!(farm["twin_id"], twin["id"]);
    let table = alice.ok(&["farm", "list"]);
    assert!(table.lines().next().unwrap().starts_with("ID"));
    assert!(table.contains("alpha-farm"));

    // The IP pool, managed by the farmer only.
    let ips = alice.json(&[
        "farm",
        "ip",
        "add",
        "alpha-farm",
        "185.69.166.20/24",
        "--gateway",
        "185.69.166.1",
    ]);
    assert_eq!(ips[0]["ip"], "185.69.166.20/24");
    let err = alice.fails(&[
        "farm",
        "ip",
        "add",
        "alpha-farm",
        "185.69.166.21/24",
        "--gateway",
        "185.69.167.1",
    ]);
    assert!(err.contains("gateway"), "{err}");
    bob.json(&["key", "new"]);
    bob.json(&["twin", "create"]);
    let err = bob.fails(&[
        "farm",
        "ip",
        "add",
        "alpha-farm",
        "185.69.166.22/24",
        "--gateway",
        "185.69.166.1",
    ]);
    assert!(
        err.contains("403") || err.to_lowercase().contains("farmer"),
        "{err}"
    );
    let err = bob.fails(&["farm", "create", "Alpha-Farm"]);
    assert!(
        err.contains("409"),
        "a farm name differing only in case is taken: {err}"
    );
    let listed = bob.json(&["farm", "ip", "list", "alpha-farm"]);
    assert_eq!(
        listed.as_array().unwrap().len(),
        1,
        "bob's attempt stored nothing"
    );
    let after = alice.json(&["farm", "ip", "remove", "alpha-farm", "185.69.166.20"]);
    assert_eq!(after.as_array().unwrap().len(), 0);

    // No nodes yet, and an unknown farm is a clear error.
    assert_eq!(alice.json(&["node", "list"]).as_array().unwrap().len(), 0);
    assert!(
        alice
            .fails(&["farm", "show", "nope-farm"])
            .contains("no farm named")
    );
    grid.shutdown().await.unwrap();
}

#[test]
fn no_grid_says_what_to_do() {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_zos"))
        .args(["node", "list"])
        .env("HOME", dir.path())
        .env("XDG_STATE_HOME", dir.path())
        .env_remove("ZOS_GRID")
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--grid"));
}

/// A farmer sets the farm's policy and makes an admission token from the command line; a node
/// joins with that token, another twin can neither change the policy nor make tokens, and a
/// node without a token is refused.
#[tokio::test(flavor = "multi_thread")]
async fn farm_policy_and_admission_tokens_from_the_command_line() {
    let dir = tempfile::tempdir().unwrap();
    let grid = start(GridConfig::new(
        "127.0.0.1:0".parse().unwrap(),
        dir.path().join("grid"),
    ))
    .await
    .unwrap();
    let url = grid.url();
    let home = dir.path().join("home");
    std::fs::create_dir_all(&home).unwrap();
    let (alice, bob) = (
        User::new(&url, &home, "alice"),
        User::new(&url, &home, "bob"),
    );
    for u in [&alice, &bob] {
        u.ok(&["key", "new"]);
        u.ok(&["twin", "create"]);
    }
    let farm = alice.json(&["farm", "create", "policy-farm"]);
    assert_eq!(farm["policy"]["node_admission"], "signed");
    assert_eq!(farm["policy"]["rentable"], false);

    let policy = alice.json(&[
        "farm",
        "policy",
        "policy-farm",
        "--rentable",
        "true",
        "--flist-host",
        "hub.example",
        "--flist-host",
        "10.0.0.9:8080",
    ]);
    assert_eq!(policy["rentable"], true);
    assert_eq!(
        policy["flist_hosts"],
        serde_json::json!(["hub.example", "10.0.0.9:8080"])
    );
    let shown = alice.ok(&["farm", "show", "policy-farm"]);
    assert!(shown.contains("hub.example, 10.0.0.9:8080"), "{shown}");
    let err = bob.fails(&["farm", "policy", "policy-farm", "--admission", "open"]);
    assert!(err.contains("not the farmer"), "{err}");
    let err = bob.fails(&["farm", "admission", "policy-farm"]);
    assert!(err.contains("only its farmer's key"), "{err}");
    let err = alice.fails(&["farm", "policy", "policy-farm", "--flist-host", "http://x"]);
    assert!(err.contains("flist_hosts[0]"), "{err}");

    // A node joins with the farmer's token, and only with it.
    let token = alice.ok(&["farm", "admission", "policy-farm", "--days", "1"]);
    let token: zos_types::registry::AdmissionToken = token.trim().parse().unwrap();
    let farm_id = farm["id"].as_u64().unwrap() as u32;
    let node = node_twin(&url).await;
    let mut reg = registration(farm_id);
    let err = node.register_node(&reg).await.unwrap_err();
    assert_eq!(err.status(), Some(403), "{err}");
    reg.admission = Some(token);
    let (n, created) = node.register_node(&reg).await.unwrap();
    assert!(created && n.farm_id == farm_id);
    grid.shutdown().await.unwrap();
}

/// A grid on loopback and two users with keys and twins, `alice` and `bob`, sharing `home`.
async fn grid_with_two_users(dir: &Path) -> (zos_grid::RunningGrid, String) {
    let grid = start(GridConfig::new(
        "127.0.0.1:0".parse().unwrap(),
        dir.join("grid"),
    ))
    .await
    .unwrap();
    let url = grid.url();
    let home = dir.join("home");
    std::fs::create_dir_all(&home).unwrap();
    for name in ["alice", "bob"] {
        let u = User::new(&url, &home, name);
        u.ok(&["key", "new"]);
        u.ok(&["twin", "create"]);
    }
    (grid, url)
}

/// Gateway names: taken by one twin, refused to another while it lives (in any case), listed,
/// given up, then free for the other twin.
#[tokio::test(flavor = "multi_thread")]
async fn gateway_names_are_taken_listed_and_given_up() {
    let dir = tempfile::tempdir().unwrap();
    let (grid, url) = grid_with_two_users(dir.path()).await;
    let home = dir.path().join("home");
    let (alice, bob) = (
        User::new(&url, &home, "alice"),
        User::new(&url, &home, "bob"),
    );
    let alice_twin = alice.json(&["twin", "show"])["id"].clone();
    let bob_twin = bob.json(&["twin", "show"])["id"].clone();

    // Alice takes `web`; the table says the contract and how to use it.
    let made = alice.ok(&["name", "create", "web"]);
    let id = alice.json(&["name", "list"])[0]["id"].as_u64().unwrap();
    assert!(made.contains(&format!("contract {id}")), "{made}");
    assert!(made.contains("gateway-name-proxy"), "{made}");
    assert!(made.contains("zos node list --gateway"), "{made}");
    let shop = alice.json(&["name", "create", "shop"]);
    assert_eq!(shop["type"], "name");
    assert_eq!(shop["name"], "shop");
    assert_eq!(shop["state"], "created");
    assert_eq!(shop["twin_id"], alice_twin);

    let listed = alice.json(&["name", "list"]);
    let names: Vec<&str> = listed
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["web", "shop"]);
    let table = alice.ok(&["name", "list"]);
    assert!(table.starts_with("CONTRACT"), "{table}");
    assert!(table.lines().nth(1).unwrap().contains(" web "), "{table}");
    assert!(table.contains("created"), "{table}");
    assert_eq!(bob.json(&["name", "list"]), serde_json::json!([]));

    // Nobody else can take it, in any case; its holder is told it is already theirs.
    for taken in ["web", "WEB"] {
        let out = bob.run(&["name", "create", taken]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(4), "{err}");
        assert!(
            err.starts_with(&format!("error: the name {taken:?} is taken")),
            "{err}"
        );
    }
    let err = alice.fails(&["name", "create", "web"]);
    assert!(
        err.contains(&format!(
            "you already hold the name \"web\" (contract {id})"
        )),
        "{err}"
    );
    let out = alice.run(&["name", "create", "no.dots"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(4), "{err}");
    assert!(
        err.contains("\"no.dots\" is not a valid gateway name: 1 to 63 of"),
        "{err}"
    );

    // Only its holder cancels it.
    let out = bob.run(&["name", "cancel", "web"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(3), "{err}");
    assert!(err.contains("you hold no name \"web\""), "{err}");
    assert!(err.contains("zos name list"), "{err}");
    let cancelled = alice.json(&["name", "cancel", "web"]);
    assert_eq!(cancelled["id"].as_u64(), Some(id));
    assert_eq!(cancelled["state"], "deleted");
    let listed = alice.json(&["name", "list"]);
    assert_eq!(listed.as_array().unwrap().len(), 1);
    assert_eq!(listed[0]["name"], "shop");
    let said = alice.ok(&["name", "cancel", "shop"]);
    assert!(said.contains("name shop released"), "{said}");
    assert_eq!(alice.json(&["name", "list"]), serde_json::json!([]));
    assert!(
        alice
            .fails(&["name", "cancel", "web"])
            .contains("you hold no name")
    );

    // The name is free again: Bob takes it.
    let taken = bob.json(&["name", "create", "web"]);
    assert_eq!(taken["twin_id"], bob_twin);
    assert_ne!(taken["id"].as_u64(), Some(id));
    let listed = bob.json(&["name", "list"]);
    assert_eq!(listed.as_array().unwrap().len(), 1);
    assert_eq!(listed[0]["name"], "web");
    assert!(alice.fails(&["name", "create", "web"]).contains("is taken"));
    grid.shutdown().await.unwrap();
}

/// `zos node list --gateway` lists only nodes with a domain in their public config, and shows it.
#[tokio::test(flavor = "multi_thread")]
async fn node_list_gateway_keeps_nodes_with_a_domain() {
    let dir = tempfile::tempdir().unwrap();
    let (grid, url) = grid_with_two_users(dir.path()).await;
    let home = dir.path().join("home");
    let farmer = User::new(&url, &home, "alice");
    let farm = farmer.json(&["farm", "create", "gw-farm"]);
    farmer.ok(&["farm", "policy", "gw-farm", "--admission", "open"]);
    let farm_id = farm["id"].as_u64().unwrap() as u32;

    // Three nodes: one with a domain, one with a public config without one, one with none.
    let mut ids = Vec::new();
    for _ in 0..3 {
        let (n, _) = node_twin(&url)
            .await
            .register_node(&registration(farm_id))
            .await
            .unwrap();
        ids.push(n.id.to_string());
    }
    farmer.ok(&[
        "node",
        "public-config",
        &ids[0],
        "--ipv4",
        "185.69.166.7/24",
        "--gw4",
        "185.69.166.1",
        "--domain",
        "gw.example.org",
    ]);
    farmer.ok(&[
        "node",
        "public-config",
        &ids[1],
        "--ipv4",
        "185.69.166.8/24",
        "--gw4",
        "185.69.166.1",
    ]);

    assert_eq!(farmer.json(&["node", "list"]).as_array().unwrap().len(), 3);
    let gateways = farmer.json(&["node", "list", "--gateway"]);
    let gateways = gateways.as_array().unwrap();
    assert_eq!(gateways.len(), 1, "{gateways:?}");
    assert_eq!(gateways[0]["id"].to_string(), ids[0]);
    assert_eq!(gateways[0]["public_config"]["domain"], "gw.example.org");

    let table = farmer.ok(&["node", "list", "--gateway"]);
    let lines: Vec<&str> = table.lines().collect();
    assert_eq!(lines.len(), 2, "{table}");
    assert!(
        lines[0].starts_with("ID") && lines[0].ends_with("DOMAIN"),
        "{table}"
    );
    assert!(lines[1].starts_with(&ids[0]), "{table}");
    assert!(lines[1].ends_with("gw.example.org"), "{table}");
    let plain = farmer.ok(&["node", "list"]);
    assert!(!plain.contains("DOMAIN"), "{plain}");
    let shown = farmer.ok(&["node", "show", &ids[0]]);
    assert!(
        shown.contains("public config   185.69.166.7/24 via 185.69.166.1"),
        "{shown}"
    );
    assert!(shown.contains("gateway domain  gw.example.org"), "{shown}");
    let shown = farmer.ok(&["node", "show", &ids[2]]);
    assert!(shown.contains("gateway domain  -"), "{shown}");

    // With the other filters: none of the nodes is online (they never reported).
    let online = farmer.json(&["node", "list", "--gateway", "--online"]);
    assert_eq!(online, serde_json::json!([]));
    let offline = farmer.json(&[
        "node",
        "list",
        "--gateway",
        "--offline",
        "--farm",
        "gw-farm",
    ]);
    assert_eq!(offline.as_array().unwrap().len(), 1);
    grid.shutdown().await.unwrap();
}
