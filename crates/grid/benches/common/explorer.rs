//! Server time and page weight of the explorer's overview and node list on a big grid.
//!
//! The database is filled before the grid starts, in one SQLite transaction (registering
//! 10 000 nodes through the API would take minutes of signed requests and durable commits and
//! measure something else): `nodes` nodes in `farms` farms, 90 % of them online, a quarter
//! with capacity in use, and a full history of the totals (a day of one sample a minute, 30
//! days of one an hour before). Then each page is fetched `requests` times, one at a time, over
//! loopback; the time is from the request sent to the last byte of the answer.

use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use rusqlite::params;
use serde::Serialize;
use zos_grid::store::SqliteStore;
use zos_grid::{DATABASE_FILE, GridConfig, start};
use zos_types::Capacity;
use zos_types::capacity::GIB;
use zos_types::registry::GridStats;

use super::percentile;

#[derive(Debug, Clone, Copy)]
pub struct Options {
    pub nodes: usize,
    pub farms: usize,
    pub requests: usize,
}

/// One page's figures.
#[derive(Debug, Clone, Serialize)]
pub struct PageFigures {
    pub path: String,
    pub bytes: usize,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub nodes: usize,
    pub farms: usize,
    pub requests: usize,
    pub setup_secs: f64,
    pub pages: Vec<PageFigures>,
}

/// The pages measured.
pub const PAGES: [&str; 4] = [
    "/explorer/",
    "/explorer/nodes",
    "/explorer/nodes?state=online&free_mru=8&sort=free_mru&order=desc",
    "/api/v1/stats",
];

fn fill(path: &std::path::Path, opts: Options, now: i64) -> anyhow::Result<()> {
    drop(SqliteStore::open(path)?); // The schema.
    let mut conn = rusqlite::Connection::open(path)?;
    let tx = conn.transaction()?;
    let mut twin = 0u64;
    let mut next_twin = |tx: &rusqlite::Transaction<'_>| -> anyhow::Result<u64> {
        twin += 1;
        tx.execute(
            "INSERT INTO twins (id, public_key, created_at) VALUES (?1, ?2, ?3)",
            params![twin, format!("{twin:064x}"), now],
        )?;
        Ok(twin)
    };
    for f in 1..=opts.farms {
        let t = next_twin(&tx)?;
        tx.execute(
            "INSERT INTO farms (id, name, twin_id, created_at) VALUES (?1, ?2, ?3, ?4)",
            params![f, format!("farm-{f}"), t, now],
        )?;
    }
    let interfaces = r#"[{"name":"eth0","mac":"52:54:00:00:00:01","ips":["10.0.0.2/24"]}]"#;
    for n in 1..=opts.nodes {
        let t = next_twin(&tx)?;
        let used = if n % 4 == 0 { 4 } else { 0 };
        let seen = if n % 10 == 0 { now - 86_400 } else { now - 30 };
        tx.execute(
            "INSERT INTO nodes (id, twin_id, farm_id, cru, mru, sru, hru, reserved_cru, \
             reserved_mru, reserved_sru, reserved_hru, used_cru, used_mru, used_sru, used_hru, \
             serial, virtualized, cpu_model, interfaces, zos_version, report_interval_secs, \
             uptime_secs, last_seen, created_at, updated_at) \
             VALUES (?1, ?2, ?3, 16, ?4, ?5, ?6, 0, ?7, 0, 0, ?8, ?9, ?10, 0, 'SN', 0, \
             'AMD EPYC 7402P', ?11, ?12, 600, ?13, ?14, ?15, ?15)",
            params![
                n,
                t,
                1 + n % opts.farms,
                64 * GIB,
                2048 * GIB,
                8192 * GIB,
                2 * GIB,
                used,
                used * 4 * GIB,
                used * 50 * GIB,
                interfaces,
                if n % 3 == 0 { "1.2.0" } else { "1.1.0" },
                86_400 + n as u64,
                seen,
                now - 90 * 86_400,
            ],
        )?;
    }
    // The history as the sampler would have left it.
    let nodes = opts.nodes as u64;
    let sample = |time: i64| GridStats {
        time,
        nodes,
        nodes_online: nodes * 9 / 10,
        farms: opts.farms as u64,
        total: Capacity {
            cru: 16 * nodes,
            mru: 64 * GIB * nodes,
            sru: 2048 * GIB * nodes,
            hru: 8192 * GIB * nodes,
        },
        reserved: Capacity {
            mru: 2 * GIB * nodes,
            ..Capacity::ZERO
        },
        used: Capacity {
            cru: nodes + (time % 7) as u64,
            ..Capacity::ZERO
        },
        ipv4_total: 0,
        ipv4_used: 0,
        contracts: nodes / 4,
    };
    let times = (0..1440)
        .map(|m| now - m * 60)
        .chain((1..=720).map(|h| now - 86_400 - h * 3600));
    for t in times {
        tx.execute(
            "INSERT INTO grid_stats (time, stats) VALUES (?1, ?2)",
            params![t, serde_json::to_string(&sample(t))?],
        )?;
    }
    tx.commit()?;
    Ok(())
}

pub async fn run(opts: Options) -> anyhow::Result<Report> {
    if opts.nodes == 0 || opts.farms == 0 || opts.requests == 0 {
        bail!("--nodes, --farms and --requests must be at least 1");
    }
    let dir = tempfile::tempdir().context("creating a temporary data directory")?;
    let data = dir.path().join("grid");
    std::fs::create_dir_all(&data)?;
    let setup = Instant::now();
    let now = zos_types::auth::unix_now();
    let db = data.join(DATABASE_FILE);
    tokio::task::spawn_blocking(move || fill(&db, opts, now))
        .await
        .context("filling the database")??;
    let mut config = GridConfig::new("127.0.0.1:0".parse()?, data);
    config.stats_interval = Duration::from_secs(3600);
    let grid = start(config).await.context("starting the grid")?;
    let setup_secs = setup.elapsed().as_secs_f64();
    let stats = grid.store().stats(now)?;
    if stats.nodes != opts.nodes as u64 {
        bail!("the grid has {} nodes, not {}", stats.nodes, opts.nodes);
    }
    let http = reqwest::Client::new();
    let mut pages = Vec::new();
    for path in PAGES {
        let url = format!("{}{path}", grid.url());
        let mut times = Vec::with_capacity(opts.requests);
        let mut bytes = 0;
        for _ in 0..opts.requests {
            let t = Instant::now();
            let r = http.get(&url).send().await?;
            if !r.status().is_success() {
                bail!("{path} answered {}", r.status());
            }
            bytes = r.bytes().await?.len();
            times.push(t.elapsed());
        }
        times.sort();
        pages.push(PageFigures {
            path: path.to_string(),
            bytes,
            p50_ms: percentile(&times, 50.0),
            p99_ms: percentile(&times, 99.0),
            max_ms: percentile(&times, 100.0),
        });
    }
    grid.shutdown().await?;
    Ok(Report {
        nodes: opts.nodes,
        farms: opts.farms,
        requests: opts.requests,
        setup_secs,
        pages,
    })
}
