//! A `zos-grid` process killed with SIGKILL in the middle of a billing run over many contracts,
//! then started again: every contract ends with one bill per period, none twice, none skipped,
//! and the books balance.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use rusqlite::Connection;
use zos_grid::store::{SqliteStore, Store};
use zos_types::billing::{Deposit, MAX_DEPOSIT};

const CONTRACTS: i64 = 30_000;
const PERIOD: i64 = 3600;

/// Kills the child on drop if it is still running.
struct Guard(Child);

impl Drop for Guard {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

fn serve(data: &Path) -> Guard {
    let child = Command::new(env!("CARGO_BIN_EXE_zos-grid"))
        .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(data)
        .args([
            "--billing-period-secs",
            &PERIOD.to_string(),
            "--billing-delay-secs",
            "0",
            "--billing-batch",
            "200",
            "--billing-tick-secs",
            "1",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    Guard(child)
}

fn int(conn: &Connection, sql: &str) -> i64 {
    conn.query_row(sql, [], |r| r.get(0)).unwrap()
}

fn now() -> i64 {
    zos_types::auth::unix_now()
}

#[test]
fn a_grid_killed_mid_run_neither_bills_twice_nor_skips_after_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    std::fs::create_dir(&data).unwrap();
    let db = data.join(zos_grid::DATABASE_FILE);

    // A twin with money and many name contracts that began two periods ago.
    let created = (now() / PERIOD - 2) * PERIOD;
    let twin = {
        let store = SqliteStore::open(&db).unwrap();
        let key = zos_types::Identity::generate().unwrap().public_key();
        let twin = store.create_twin(key, None, created).unwrap();
        let money = Deposit {
            amount: MAX_DEPOSIT,
            reference: None,
            memo: String::new(),
        };
        store.deposit(twin.id, &money, "bridge", created).unwrap();
        twin.id
    };
    let conn = Connection::open(&db).unwrap();
    conn.busy_timeout(Duration::from_secs(5)).unwrap();
    conn.execute(
        "WITH RECURSIVE seq(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM seq WHERE i < ?1)
         INSERT INTO contracts (twin_id, kind, state, name, created_at, updated_at)
         SELECT ?2, 'name', 'created', 'name-' || i, ?3, ?3 FROM seq",
        rusqlite::params![CONTRACTS, twin, created],
    )
    .unwrap();
    let periods = |at: i64| at / PERIOD - created / PERIOD;
    let bills = |conn: &Connection| int(conn, "SELECT COUNT(*) FROM bills");

    // Start billing and kill the grid as soon as some bills are in.
    let mut grid = serve(&data);
    let deadline = Instant::now() + Duration::from_secs(60);
    while bills(&conn) == 0 {
        assert!(Instant::now() < deadline, "no bill after 60 s");
        assert!(grid.0.try_wait().unwrap().is_none(), "zos-grid exited");
        std::thread::sleep(Duration::from_millis(2));
    }
    grid.0.kill().unwrap();
    grid.0.wait().unwrap();
    let at_kill = bills(&conn);
    let total = CONTRACTS * periods(now());
    assert!(
        at_kill > 0 && at_kill < total,
        "the kill came mid-run: {at_kill} of {total} bills"
    );
    // Every bill is whole: paid with its entries, in one transaction with them.
    assert_eq!(
        int(
            &conn,
            "SELECT COUNT(*) FROM bills b LEFT JOIN bill_payments p ON p.bill_id = b.id
             WHERE p.bill_id IS NULL"
        ),
        0
    );

    // Started again, the grid finishes the run.
    let grid = serve(&data);
    let deadline = Instant::now() + Duration::from_secs(300);
    loop {
        let want = CONTRACTS * periods(now());
        if bills(&conn) == want {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{} of {want} bills after 300 s",
            bills(&conn)
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    drop(grid);

    let first = created / PERIOD;
    // One bill per contract and period, from the first period on, with no gap.
    assert_eq!(
        int(
            &conn,
            "SELECT COUNT(*) FROM (SELECT COUNT(*) FROM bills GROUP BY contract_id, period HAVING COUNT(*) > 1)"
        ),
        0
    );
    let bad = int(
        &conn,
        &format!(
            "SELECT COUNT(*) FROM (SELECT contract_id, MIN(period) lo, MAX(period) hi, COUNT(*) n
             FROM bills GROUP BY contract_id) WHERE lo != {first} OR hi - lo + 1 != n"
        ),
    );
    assert_eq!(bad, 0, "contracts with a skipped or misplaced period");
    assert_eq!(
        int(&conn, "SELECT COUNT(DISTINCT contract_id) FROM bills"),
        CONTRACTS
    );
    // Each bill is paid exactly once, the ledger moved exactly its amount, the books balance.
    assert_eq!(
        int(
            &conn,
            "SELECT COUNT(*) FROM bills b WHERE b.amount !=
             (SELECT COALESCE(SUM(amount), 0) FROM ledger l WHERE l.bill_id = b.id)"
        ),
        0
    );
    assert_eq!(
        int(&conn, "SELECT COUNT(*) FROM bill_payments"),
        bills(&conn)
    );
    assert_eq!(int(&conn, "SELECT SUM(amount) FROM balances"), 0);
    let spent = int(&conn, "SELECT SUM(amount) FROM bills");
    assert_eq!(
        int(
            &conn,
            &format!("SELECT amount FROM balances WHERE account = 'twin:{twin}'")
        ),
        MAX_DEPOSIT as i64 - spent
    );
}
