//! One billing run over many node contracts on the embedded SQLite store: the time it takes
//! and the memory the process peaks at. The contracts are spread over `nodes` nodes and
//! `twins` paying twins, each with a consumption report for the period, so every bill takes
//! the full path (report, rent check, discount, farm and grid shares, account event).

use std::time::Instant;

use anyhow::Context;
use serde::Serialize;
use zos_grid::billing::{BillingConfig, run as bill};
use zos_grid::store::{SqliteStore, Store};
use zos_types::Identity;
use zos_types::billing::{Deposit, MAX_DEPOSIT};
use zos_types::capacity::GIB;
use zos_types::registry::{FarmPolicy, NodeAdmission};

use super::registration;

/// What to measure.
#[derive(Debug, Clone, Copy)]
pub struct Options {
    pub contracts: usize,
    pub nodes: usize,
    pub twins: usize,
}

/// The figures of one run.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Figures {
    pub contracts: usize,
    pub bills: u64,
    pub paid: u64,
    /// Seconds of the billing run that made the bills.
    pub run_secs: f64,
    pub bills_per_sec: f64,
    /// Seconds of a second run, with nothing left to bill (the cost of every tick).
    pub idle_run_secs: f64,
    /// Resident memory before the run and the process's peak after it, MiB.
    pub rss_before_mib: f64,
    pub peak_rss_mib: f64,
    /// The database file after the run, MiB (WAL included).
    pub database_mib: f64,
    pub setup_secs: f64,
}

fn status_mib(field: &str) -> f64 {
    let text = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    text.lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .map_or(0.0, |kb| kb / 1024.0)
}

/// Builds the database, then bills one period of every contract.
pub fn run(o: Options) -> anyhow::Result<Figures> {
    anyhow::ensure!(
        o.contracts > 0 && o.nodes > 0 && o.twins > 0,
        "contracts, nodes and twins must each be at least 1"
    );
    let started = Instant::now();
    let dir = tempfile::tempdir().context("creating a temporary directory")?;
    let db = dir.path().join(zos_grid::DATABASE_FILE);
    let store = SqliteStore::open(&db)?;
    let period = 3600;
    let created = 1_700_000_000 / period * period;
    let farmer = store.create_twin(Identity::generate()?.public_key(), None, created)?;
    let farm = store.create_farm("bench-farm", farmer.id, created)?;
    let open = FarmPolicy {
        node_admission: NodeAdmission::Open,
        ..FarmPolicy::default()
    };
    store.set_farm_policy(farm.id, &open)?;
    let mut nodes = Vec::new();
    for i in 0..o.nodes {
        let t = store.create_twin(Identity::generate()?.public_key(), None, created)?;
        let (n, _) = store.upsert_node(t.id, &registration(farm.id, i, None), created)?;
        nodes.push(n.id);
    }
    let mut twins = Vec::new();
    for _ in 0..o.twins {
        let t = store.create_twin(Identity::generate()?.public_key(), None, created)?;
        // A million tokens each: the deposits' source account holds their sum in an i64.
        let money = Deposit {
            amount: MAX_DEPOSIT / 1000,
            reference: None,
            memo: String::new(),
        };
        store.deposit(t.id, &money, "bridge", created)?;
        twins.push(t.id);
    }
    drop(store);
    {
        let conn = rusqlite::Connection::open(&db)?;
        let tx = conn.unchecked_transaction()?;
        {
            let mut insert = tx.prepare(
                "INSERT INTO contracts (twin_id, kind, state, node_id, deployment_hash, public_ips, created_at, updated_at)
                 VALUES (?1, 'node', 'created', ?2, ?3, 0, ?4, ?4)",
            )?;
            let mut report = tx.prepare(
                "INSERT INTO consumption (contract_id, period, node_id, cru, mru, sru, hru, public_bytes, at)
                 VALUES (?1, ?2, ?3, 1, ?4, ?5, 0, 1000000000, ?6)",
            )?;
            for i in 0..o.contracts {
                let node = nodes[i % nodes.len()];
                insert.execute(rusqlite::params![
                    twins[i % twins.len()],
                    node,
                    format!("{:064x}", i),
                    created
                ])?;
                let id = tx.last_insert_rowid();
                report.execute(rusqlite::params![
                    id,
                    created / period,
                    node,
                    (2 * GIB) as i64,
                    (25 * GIB) as i64,
                    created
                ])?;
            }
        }
        tx.commit()?;
    }
    let store = SqliteStore::open(&db)?;
    let config = BillingConfig {
        period: std::time::Duration::from_secs(period as u64),
        delay: std::time::Duration::ZERO,
        tick: None,
        ..BillingConfig::default()
    };
    let setup_secs = started.elapsed().as_secs_f64();
    let rss_before_mib = status_mib("VmRSS:");
    let t = Instant::now();
    let sum = bill(&store, &config, created + period)?;
    let run_secs = t.elapsed().as_secs_f64();
    let peak_rss_mib = status_mib("VmHWM:");
    let t = Instant::now();
    let again = bill(&store, &config, created + period)?;
    let idle_run_secs = t.elapsed().as_secs_f64();
    anyhow::ensure!(again.bills == 0, "a second run billed {} more", again.bills);
    let database_mib = ["", "-wal"]
        .iter()
        .filter_map(|s| std::fs::metadata(format!("{}{s}", db.display())).ok())
        .map(|m| m.len() as f64 / (1024.0 * 1024.0))
        .sum();
    Ok(Figures {
        contracts: o.contracts,
        bills: sum.bills,
        paid: sum.paid,
        run_secs,
        bills_per_sec: sum.bills as f64 / run_secs,
        idle_run_secs,
        rss_before_mib,
        peak_rss_mib,
        database_mib,
        setup_secs,
    })
}
