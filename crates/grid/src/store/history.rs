//! The bounded histories of the SQLite store: the grid's totals sampled about once a minute
//! ([`GridStats`]), and each node's recent uptime reports ([`UptimePoint`]). Both are thinned or
//! trimmed as they are written, so neither grows without bound.

use rusqlite::{Connection, params};
use zos_types::NodeId;
use zos_types::registry::{GridStats, UptimePoint};

use super::StoreError;
use super::rows::{capacity_at, db, from_sql};

/// Migration 6: the history of the grid's totals and the nodes' uptime reports.
pub const MIGRATION: &str = r#"
    CREATE TABLE grid_stats (
        time         INTEGER PRIMARY KEY,
        stats        TEXT NOT NULL
    ) STRICT;

    CREATE TABLE node_uptime (
        node_id      INTEGER NOT NULL REFERENCES nodes(id),
        time         INTEGER NOT NULL,
        uptime_secs  INTEGER NOT NULL CHECK (uptime_secs >= 0),
        PRIMARY KEY (node_id, time)
    ) STRICT;
"#;

/// Samples of the last day are all kept.
pub const STATS_FULL_SECS: i64 = 86_400;
/// Older samples are thinned to the first of each hour, and dropped after this age.
pub const STATS_KEEP_SECS: i64 = 31 * 86_400;
/// A node's uptime reports are kept for this long...
pub const UPTIME_KEEP_SECS: i64 = 7 * 86_400;
/// ...and at most this many of them (a week of reports every 5 minutes).
pub const UPTIME_KEEP_POINTS: i64 = 2016;

/// The grid's totals at `now`, in one read.
pub fn stats(conn: &Connection, now: i64) -> Result<GridStats, StoreError> {
    let periods = zos_types::registry::ONLINE_PERIODS;
    let sql = format!(
        "SELECT COUNT(*), \
            COALESCE(SUM(last_seen IS NOT NULL AND ?1 - last_seen < {periods} * report_interval_secs), 0), \
            COALESCE(SUM(cru), 0), COALESCE(SUM(mru), 0), COALESCE(SUM(sru), 0), COALESCE(SUM(hru), 0), \
            COALESCE(SUM(reserved_cru), 0), COALESCE(SUM(reserved_mru), 0), \
            COALESCE(SUM(reserved_sru), 0), COALESCE(SUM(reserved_hru), 0), \
            COALESCE(SUM(used_cru), 0), COALESCE(SUM(used_mru), 0), \
            COALESCE(SUM(used_sru), 0), COALESCE(SUM(used_hru), 0), \
            (SELECT COUNT(*) FROM farms), \
            (SELECT COUNT(*) FROM farm_ips), \
            (SELECT COUNT(*) FROM farm_ips WHERE contract_id IS NOT NULL), \
            (SELECT COUNT(*) FROM contracts WHERE state != 'deleted') \
         FROM nodes"
    );
    conn.prepare_cached(&sql)
        .and_then(|mut s| {
            s.query_row([now], |r| {
                let count = |i: usize, what: &str| from_sql(what, r.get(i)?);
                Ok(GridStats {
                    time: now,
                    nodes: count(0, "nodes")?,
                    nodes_online: count(1, "nodes online")?,
                    total: capacity_at(r, 2)?,
                    reserved: capacity_at(r, 6)?,
                    used: capacity_at(r, 10)?,
                    farms: count(14, "farms")?,
                    ipv4_total: count(15, "farm IPs")?,
                    ipv4_used: count(16, "farm IPs used")?,
                    contracts: count(17, "contracts")?,
                })
            })
        })
        .map_err(db("summing the grid's totals"))
}

/// Appends a sample, then thins and trims the history.
pub fn record_stats(conn: &Connection, sample: &GridStats) -> Result<(), StoreError> {
    let text = serde_json::to_string(sample).expect("stats serialize");
    let now = sample.time;
    conn.prepare_cached("INSERT OR REPLACE INTO grid_stats (time, stats) VALUES (?1, ?2)")
        .and_then(|mut s| s.execute(params![now, text]))
        .map_err(db("recording the grid's totals"))?;
    conn.prepare_cached(
        "DELETE FROM grid_stats WHERE time < ?1 AND time NOT IN \
         (SELECT MIN(time) FROM grid_stats WHERE time < ?1 GROUP BY time / 3600)",
    )
    .and_then(|mut s| s.execute([now - STATS_FULL_SECS]))
    .map_err(db("thinning the grid's totals"))?;
    conn.prepare_cached("DELETE FROM grid_stats WHERE time < ?1")
        .and_then(|mut s| s.execute([now - STATS_KEEP_SECS]))
        .map_err(db("trimming the grid's totals"))?;
    Ok(())
}

/// The samples taken at `since` or later, oldest first.
pub fn stats_history(conn: &Connection, since: i64) -> Result<Vec<GridStats>, StoreError> {
    let texts: Vec<String> = conn
        .prepare_cached("SELECT stats FROM grid_stats WHERE time >= ?1 ORDER BY time")
        .and_then(|mut s| s.query_map([since], |r| r.get(0))?.collect())
        .map_err(db("reading the grid's totals"))?;
    texts
        .iter()
        .map(|t| {
            serde_json::from_str(t).map_err(|e| StoreError::Corrupt(format!("grid totals: {e}")))
        })
        .collect()
}

/// Appends an uptime report of `node` and drops its reports beyond the bounds.
pub fn record_uptime(
    conn: &Connection,
    node: NodeId,
    uptime_secs: i64,
    now: i64,
) -> Result<(), StoreError> {
    conn.prepare_cached(
        "INSERT OR REPLACE INTO node_uptime (node_id, time, uptime_secs) VALUES (?1, ?2, ?3)",
    )
    .and_then(|mut s| s.execute(params![node, now, uptime_secs]))
    .map_err(db("recording an uptime report"))?;
    conn.prepare_cached(
        "DELETE FROM node_uptime WHERE node_id = ?1 AND (time < ?2 OR time <= \
         (SELECT time FROM node_uptime WHERE node_id = ?1 ORDER BY time DESC LIMIT 1 OFFSET ?3))",
    )
    .and_then(|mut s| s.execute(params![node, now - UPTIME_KEEP_SECS, UPTIME_KEEP_POINTS]))
    .map_err(db("trimming uptime reports"))?;
    Ok(())
}

/// The uptime reports of `node` received at `since` or later, oldest first.
pub fn uptime(conn: &Connection, node: NodeId, since: i64) -> Result<Vec<UptimePoint>, StoreError> {
    conn.prepare_cached(
        "SELECT time, uptime_secs FROM node_uptime WHERE node_id = ?1 AND time >= ?2 ORDER BY time",
    )
    .and_then(|mut s| {
        s.query_map(params![node, since], |r| {
            Ok(UptimePoint {
                time: r.get(0)?,
                uptime_secs: from_sql("uptime_secs", r.get(1)?)?,
            })
        })?
        .collect()
    })
    .map_err(db("reading uptime reports"))
}

#[cfg(test)]
mod tests {
    use zos_types::Identity;
    use zos_types::capacity::GIB;
    use zos_types::registry::{FarmPolicy, Hardware, NodeAdmission, NodeRegistration};

    use super::*;
    use crate::store::{SqliteStore, Store};

    fn store() -> (tempfile::TempDir, SqliteStore) {
        let dir = tempfile::tempdir().unwrap();
        let s = SqliteStore::open(&dir.path().join("registry.sqlite")).unwrap();
        (dir, s)
    }

    /// A farm open to any node, and one node in it.
    fn one_node(s: &SqliteStore) -> NodeId {
        let farmer = s
            .create_twin(Identity::from_seed([1; 32]).public_key(), None, 0)
            .unwrap();
        let farm = s.create_farm("farm-1", farmer.id, 0).unwrap();
        s.set_farm_policy(
            farm.id,
            &FarmPolicy {
                node_admission: NodeAdmission::Open,
                ..FarmPolicy::default()
            },
        )
        .unwrap();
        let twin = s
            .create_twin(Identity::from_seed([2; 32]).public_key(), None, 0)
            .unwrap();
        let reg = NodeRegistration {
            farm_id: farm.id,
            capacity: zos_types::Capacity {
                cru: 8,
                mru: 32 * GIB,
                sru: 0,
                hru: 0,
            },
            reserved: zos_types::Capacity::ZERO,
            hardware: Hardware {
                serial: "s".into(),
                virtualized: false,
                cpu_model: "c".into(),
            },
            interfaces: vec![],
            zos_version: "1.0.0".into(),
            report_interval_secs: 60,
            limited: None,
            admission: None,
        };
        s.upsert_node(twin.id, &reg, 0).unwrap().0.id
    }

    #[test]
    fn the_totals_history_keeps_a_day_of_samples_and_one_an_hour_before() {
        let (_dir, s) = store();
        one_node(&s);
        let start = 1_000_000_000 - 1_000_000_000 % 3600;
        // 40 days of a sample every 20 minutes (every minute takes long with a full fsync).
        const STEP: i64 = 20 * 60;
        let samples = 40 * 86_400 / STEP;
        for i in 0..samples {
            let sample = s.stats(start + i * STEP).unwrap();
            s.record_stats(&sample).unwrap();
        }
        let now = start + (samples - 1) * STEP;
        let all: Vec<i64> = s
            .stats_history(i64::MIN)
            .unwrap()
            .iter()
            .map(|h| h.time)
            .collect();
        let day = all.iter().filter(|t| **t >= now - STATS_FULL_SECS).count() as i64;
        assert_eq!(
            day,
            STATS_FULL_SECS / STEP + 1,
            "every sample of the last day"
        );
        let older: Vec<i64> = all
            .iter()
            .copied()
            .filter(|t| *t < now - STATS_FULL_SECS)
            .collect();
        assert!(older.iter().all(|t| *t >= now - STATS_KEEP_SECS));
        let gaps: Vec<i64> = older.windows(2).map(|w| w[1] - w[0]).collect();
        assert!(gaps.iter().all(|g| *g == 3600), "{gaps:?}");
        assert!(older.len() as i64 >= (STATS_KEEP_SECS - STATS_FULL_SECS) / 3600 - 1);
        let last = s.stats_history(now).unwrap();
        assert_eq!((last[0].nodes, last[0].total.cru), (1, 8));
        // The history is not part of the dump that tests compare.
        assert!(!s.dump().unwrap().contains("[grid_stats]"));
    }

    #[test]
    fn a_nodes_uptime_history_is_bounded_in_count_and_age() {
        let (_dir, s) = store();
        let node = one_node(&s);
        for i in 0..(UPTIME_KEEP_POINTS + 100) {
            s.report_uptime(node, i as u64 * 10, None, 1000 + i * 10)
                .unwrap();
        }
        let kept = s.node_uptime(node, i64::MIN).unwrap();
        assert_eq!(kept.len() as i64, UPTIME_KEEP_POINTS);
        assert_eq!(
            kept.last().unwrap().uptime_secs,
            (UPTIME_KEEP_POINTS + 99) as u64 * 10
        );
        assert!(kept.windows(2).all(|w| w[0].time < w[1].time));
        // A week later one report is left: the new one.
        let later = 1000 + (UPTIME_KEEP_POINTS + 100) * 10 + UPTIME_KEEP_SECS + 1;
        s.report_uptime(node, 5, None, later).unwrap();
        let kept = s.node_uptime(node, i64::MIN).unwrap();
        assert_eq!(kept.len(), 1);
        assert_eq!(kept[0].time, later);
    }
}
