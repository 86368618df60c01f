//! `zos-grid bench`: signed uptime reports per second against an in-process registry.
//!
//! A grid is started on `127.0.0.1:0` with a temporary data directory. One farmer creates a
//! farm; `nodes` twins register as nodes in it; then `reports` signed uptime reports, spread
//! round-robin over the nodes, are sent through [`zos_client::GridClient`] with `concurrency`
//! requests in flight. Each report goes the whole way: HTTP, signature check, replay cache,
//! ownership check, and a durable SQLite transaction.

use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use futures::StreamExt;
use serde::Serialize;
use zos_client::GridClient;
use zos_types::auth::unix_now;
use zos_types::capacity::GIB;
use zos_types::registry::{AdmissionToken, Hardware, Interface, NodeRegistration, UptimeReport};
use zos_types::{Capacity, Identity, NodeId};

use crate::{GridConfig, start};

/// What to measure.
#[derive(Debug, Clone, Copy)]
pub struct BenchOptions {
    pub nodes: usize,
    pub reports: usize,
    pub concurrency: usize,
}

/// What was measured.
#[derive(Debug, Clone, Serialize)]
pub struct BenchReport {
    pub nodes: usize,
    pub reports: usize,
    pub concurrency: usize,
    /// Seconds to create the twins and register the nodes.
    pub setup_secs: f64,
    /// Seconds from the first report sent to the last answered.
    pub elapsed_secs: f64,
    pub reports_per_sec: f64,
    pub latency_p50_ms: f64,
    pub latency_p99_ms: f64,
    pub latency_max_ms: f64,
}

fn registration(farm_id: u32, i: usize, admission: AdmissionToken) -> NodeRegistration {
    NodeRegistration {
        farm_id,
        capacity: Capacity {
            cru: 8,
            mru: 32 * GIB,
            sru: 512 * GIB,
            hru: 0,
        },
        reserved: Capacity {
            cru: 0,
            mru: 2 * GIB,
            sru: 0,
            hru: 0,
        },
        hardware: Hardware {
            serial: format!("bench-{i}"),
            virtualized: true,
            cpu_model: "bench".into(),
        },
        interfaces: vec![Interface {
            name: "eth0".into(),
            mac: format!(
                "52:54:00:{:02x}:{:02x}:{:02x}",
                (i >> 16) & 0xff,
                (i >> 8) & 0xff,
                i & 0xff
            ),
            ips: vec![],
        }],
        zos_version: env!("CARGO_PKG_VERSION").into(),
        report_interval_secs: 60,
        limited: None,
        admission: Some(admission),
    }
}

fn percentile(sorted: &[Duration], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1].as_secs_f64() * 1000.0
}

/// Runs the benchmark.
pub async fn run(opts: BenchOptions) -> anyhow::Result<BenchReport> {
    if opts.nodes == 0 || opts.concurrency == 0 {
        bail!("--nodes and --concurrency must be at least 1");
    }
    let dir = tempfile::tempdir().context("creating a temporary data directory")?;
    let grid = start(GridConfig::new(
        "127.0.0.1:0".parse().expect("a socket address"),
        dir.path().join("grid"),
    ))
    .await
    .context("starting the grid")?;
    let base = GridClient::new(&grid.url())?;

    let setup = Instant::now();
    let farmer_key = Identity::generate()?;
    let farmer = base.clone().with_identity(farmer_key.clone());
    let farmer_twin = farmer
        .create_twin(None)
        .await
        .context("creating the farmer")?;
    let farm = farmer
        .with_twin(farmer_twin.id)
        .create_farm("bench-farm")
        .await
        .context("creating the farm")?;
    // Each node shows the farmer's admission, as real nodes do (the check is part of the cost).
    let admission = AdmissionToken::sign(&farmer_key, farm.id, unix_now() + 3600);
    let nodes: Vec<(GridClient, NodeId)> = futures::stream::iter(0..opts.nodes)
        .map(|i| {
            let base = base.clone();
            async move {
                let client = base.with_identity(Identity::generate()?);
                let twin = client.create_twin(None).await?;
                let client = client.with_twin(twin.id);
                let (node, _) = client
                    .register_node(&registration(farm.id, i, admission))
                    .await?;
                anyhow::Ok((client, node.id))
            }
        })
        .buffer_unordered(opts.concurrency)
        .collect::<Vec<_>>()
        .await
        .into_iter()
        .collect::<Result<_, _>>()
        .context("registering the nodes")?;
    let setup_secs = setup.elapsed().as_secs_f64();

    let started = Instant::now();
    let results: Vec<anyhow::Result<Duration>> = futures::stream::iter(0..opts.reports)
        .map(|j| {
            let (client, node) = &nodes[j % nodes.len()];
            // Each report of a node carries a different uptime, so no two requests are equal.
            let report = UptimeReport {
                uptime_secs: (j / nodes.len()) as u64 + 1,
                timestamp: zos_types::auth::unix_now(),
                used: None,
            };
            async move {
                let t = Instant::now();
                client.report_uptime(*node, &report).await?;
                Ok(t.elapsed())
            }
        })
        .buffer_unordered(opts.concurrency)
        .collect()
        .await;
    let elapsed = started.elapsed();
    let mut latencies = Vec::with_capacity(results.len());
    for r in results {
        latencies.push(r.context("an uptime report failed")?);
    }
    latencies.sort();
    grid.shutdown().await?;

    let elapsed_secs = elapsed.as_secs_f64();
    Ok(BenchReport {
        nodes: opts.nodes,
        reports: opts.reports,
        concurrency: opts.concurrency,
        setup_secs,
        elapsed_secs,
        reports_per_sec: if elapsed_secs > 0.0 {
            opts.reports as f64 / elapsed_secs
        } else {
            0.0
        },
        latency_p50_ms: percentile(&latencies, 50.0),
        latency_p99_ms: percentile(&latencies, 99.0),
        latency_max_ms: percentile(&latencies, 100.0),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_use_nearest_rank() {
        let d: Vec<Duration> = (1..=100).map(Duration::from_millis).collect();
        assert_eq!(percentile(&d, 50.0), 50.0);
        assert_eq!(percentile(&d, 99.0), 99.0);
        assert_eq!(percentile(&d, 100.0), 100.0);
        assert_eq!(percentile(&[], 50.0), 0.0);
    }
}
