//! The `zos` binary as a person uses it, against a real grid on loopback.

use std::path::Path;
use std::process::{Command, Output};

use serde_json::Value;
use zos_grid::{GridConfig, start};

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

    fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(
            out.status.success(),
            "zos {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }

    fn json(&self, args: &[&str]) -> Value {
        let mut all = args.to_vec();
        all.push("--json");
        serde_json::from_str(&self.ok(&all)).unwrap()
    }

    fn fails(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(!out.status.success(), "zos {args:?} should fail");
        String::from_utf8(out.stderr).unwrap()
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
