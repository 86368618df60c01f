//! Signed uptime reports per second against an in-process registry.
//!
//! One farmer creates a farm; `nodes` twins register as nodes in it, each showing the farmer's
//! admission token as real nodes do; then `reports` signed uptime reports, spread round-robin
//! over the nodes, are sent through [`zos_client::GridClient`] with `concurrency` requests in
//! flight. Each report goes the whole way: HTTP, signature check, replay cache, ownership check,
//! and a durable SQLite transaction.

use std::time::Instant;

use anyhow::{Context, bail};
use futures::StreamExt;
use serde::Serialize;
use zos_client::GridClient;
use zos_types::NodeId;
use zos_types::auth::unix_now;
use zos_types::registry::{AdmissionToken, UptimeReport};

use super::{BenchGrid, measure, registration};

/// What to measure.
#[derive(Debug, Clone, Copy)]
pub struct Options {
    pub nodes: usize,
    pub reports: usize,
    pub concurrency: usize,
}

/// What was measured.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
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

/// Registers `opts.nodes` nodes in a new farm: their signing clients and ids.
async fn register_nodes(
    grid: &BenchGrid,
    opts: Options,
) -> anyhow::Result<Vec<(GridClient, NodeId)>> {
    let (farmer_key, _, farm) = grid.farm("bench-farm").await?;
    let admission = AdmissionToken::sign(&farmer_key, farm.id, unix_now() + 3600);
    futures::stream::iter(0..opts.nodes)
        .map(|i| async move {
            let (_, client) = grid.twin().await?;
            let (node, _) = client
                .register_node(&registration(farm.id, i, Some(admission)))
                .await?;
            anyhow::Ok((client, node.id))
        })
        .buffer_unordered(opts.concurrency)
        .collect::<Vec<_>>()
        .await
        .into_iter()
        .collect::<Result<_, _>>()
        .context("registering the nodes")
}

/// Runs the benchmark.
pub async fn run(opts: Options) -> anyhow::Result<Report> {
    if opts.nodes == 0 || opts.concurrency == 0 {
        bail!("--nodes and --concurrency must be at least 1");
    }
    let grid = BenchGrid::start().await?;
    let setup = Instant::now();
    let nodes = register_nodes(&grid, opts).await?;
    let setup_secs = setup.elapsed().as_secs_f64();

    let t = measure(opts.reports, opts.concurrency, "an uptime report", |j| {
        let (client, node) = &nodes[j % nodes.len()];
        // Each report of a node carries a different uptime, so no two requests are equal.
        let report = UptimeReport {
            uptime_secs: (j / nodes.len()) as u64 + 1,
            timestamp: unix_now(),
            used: None,
        };
        async move {
            client.report_uptime(*node, &report).await?;
            Ok(())
        }
    })
    .await?;
    grid.shutdown().await?;
    Ok(Report {
        nodes: opts.nodes,
        reports: opts.reports,
        concurrency: opts.concurrency,
        setup_secs,
        elapsed_secs: t.elapsed_secs,
        reports_per_sec: t.per_sec,
        latency_p50_ms: t.p50_ms,
        latency_p99_ms: t.p99_ms,
        latency_max_ms: t.max_ms,
    })
}
