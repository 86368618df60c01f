//! `zos account`, `zos contract bill`, `zos farm earnings` and `zos deploy --max-cost` against a
//! real grid on loopback that bills every two seconds and has a faucet.

use std::path::Path;
use std::process::{Command, Output};
use std::time::Duration;

use zos_grid::billing::BillingConfig;
use zos_grid::{GridConfig, start};
use zos_testkit::cli::ZosCli;

struct User<'a> {
    grid: &'a str,
    home: &'a Path,
    key: String,
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

#[tokio::test(flavor = "multi_thread")]
async fn accounts_bills_earnings_and_the_cost_of_a_deployment_from_the_command_line() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = GridConfig::new("127.0.0.1:0".parse().unwrap(), dir.path().join("grid"));
    config.admin = Some(1);
    config.billing = BillingConfig {
        enabled: false,
        period: Duration::from_secs(2),
        delay: Duration::ZERO,
        faucet_max: Some(10 * zos_types::billing::UNITS_PER_TOKEN),
        tick: None,
        ..BillingConfig::default()
    };
    let grid = start(config).await.unwrap();
    let url = grid.url();
    let home = dir.path().join("home");
    std::fs::create_dir_all(&home).unwrap();
    let user = |name: &str| User {
        grid: &url,
        home: &home,
        key: home.join(format!("{name}.key")).display().to_string(),
    };
    let (admin, bob) = (user("admin"), user("bob"));
    for u in [&admin, &bob] {
        u.ok(&["key", "new"]);
        u.ok(&["twin", "create"]);
    }
    assert_eq!(admin.json(&["twin", "show"])["id"], 1);

    // The faucet gives a twin up to 10 tokens at once, for itself only.
    let said = bob.ok(&["account", "deposit", "5"]);
    assert!(said.contains("deposited 5.0000000 to twin 2"), "{said}");
    let err = bob.fails(&["account", "deposit", "11"]);
    assert!(err.contains("faucet gives at most"), "{err}");
    let err = bob.fails(&["account", "deposit", "1", "--twin", "1"]);
    assert!(err.contains("for itself only"), "{err}");
    let err = bob.fails(&["account", "deposit", "1.123456789"]);
    assert!(err.contains("at most 7 decimals"), "{err}");
    // The admin deposits to anyone; a bridge reference counts once.
    for _ in 0..2 {
        admin.ok(&[
            "account",
            "deposit",
            "2",
            "--twin",
            "2",
            "--reference",
            "pay-1",
        ]);
    }
    let a = bob.json(&["account", "balance"]);
    assert_eq!(a["balance"], 70_000_000);
    assert_eq!(a["debt"], 0);
    let table = bob.ok(&["account", "balance"]);
    assert!(table.contains("7.0000000"), "{table}");

    // A name contract is billed once its period ends.
    let name = bob.json(&["name", "create", "billed"]);
    let id = name["id"].as_u64().unwrap().to_string();
    let none = bob.ok(&["contract", "bill", &id]);
    assert!(none.contains("no bill yet"), "{none}");
    tokio::time::sleep(Duration::from_millis(2100)).await;
    let run = grid.bill_now().await.unwrap();
    assert!(run.bills >= 1, "{run:?}");
    let bills = bob.json(&["contract", "bill", &id]);
    let b = &bills[0];
    assert_eq!(b["usage"]["kind"], "name");
    assert_eq!(b["paid"], true);
    assert!(b["amount"].as_u64().unwrap() > 0, "{b}");
    let text = bob.ok(&["contract", "bill", &id]);
    assert!(
        text.contains("a unique name") && text.contains("(paid)"),
        "{text}"
    );
    let err = admin.fails(&["contract", "bill", "999"]);
    assert!(err.contains("contract 999 does not exist"), "{err}");

    let history = bob.json(&["account", "history"]);
    let kinds: Vec<&str> = history
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["kind"].as_str().unwrap())
        .collect();
    assert!(
        kinds.contains(&"bill_paid") && kinds.contains(&"deposit"),
        "{kinds:?}"
    );
    let text = bob.ok(&["account", "history"]);
    assert!(text.contains("bill paid"), "{text}");

    // Farm earnings: the farmer reads them, another twin may not.
    admin.ok(&["farm", "create", "earning"]);
    let e = admin.json(&["farm", "earnings", "earning"]);
    assert_eq!(
        (e["total"].clone(), e["bills"].clone()),
        (0.into(), 0.into())
    );
    let err = bob.fails(&["farm", "earnings", "earning"]);
    assert!(err.contains("belongs to twin 1"), "{err}");

    // zos deploy says what a deployment costs per hour and refuses above --max-cost before
    // signing anything: a 200 GiB disk is one SU, 0.005 tokens an hour.
    let file = dir.path().join("disk.yaml");
    std::fs::write(
        &file,
        "workloads:\n  - name: disk\n    type: zmount\n    data: {size: 200G}\n",
    )
    .unwrap();
    let file = file.display().to_string();
    let out = bob.run(&["deploy", &file, "--node", "1", "--max-cost", "0.001"]);
    assert_eq!(out.status.code(), Some(4), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("cost: 0.0050000 tokens per hour"), "{err}");
    assert!(err.contains("above --max-cost 0.0010000"), "{err}");
    let mine = bob.json(&["deployment", "list"]);
    assert_eq!(mine.as_array().map(Vec::len), Some(0), "{mine}");
    grid.shutdown().await.unwrap();
}
