//! What the grid's benchmarks share: a grid in a temporary directory on `127.0.0.1:0`, a farmer
//! and their farm, node registrations, and the timing of many requests in flight.
//!
//! The bench targets (`registry`, `relay`, `billing`) are thin: they parse their flags, call
//! [`uptime::run`], [`relay::run`] or [`billing::run`] and print the figures. The measurements live here so that
//! `tests/benches.rs` runs them too (small), on every `cargo test`. Each user takes a part, hence
//! the `dead_code` allowance.

#![allow(dead_code)]

pub mod billing;
pub mod explorer;
pub mod relay;
pub mod uptime;

use std::future::Future;
use std::time::{Duration, Instant};

use anyhow::Context;
use futures::StreamExt;
use tempfile::TempDir;
use zos_client::GridClient;
use zos_grid::{GridConfig, RunningGrid, start};
use zos_types::Capacity;
use zos_types::Identity;
use zos_types::capacity::GIB;
use zos_types::registry::{AdmissionToken, Farm, Hardware, Interface, NodeRegistration};

/// A grid serving on loopback from a temporary directory, removed when it is dropped.
pub struct BenchGrid {
    pub grid: RunningGrid,
    /// A client without identity; `with_identity` makes signing ones.
    pub client: GridClient,
    _dir: TempDir,
}

impl BenchGrid {
    /// Starts a grid with default limits and a fresh database.
    pub async fn start() -> anyhow::Result<Self> {
        let dir = tempfile::tempdir().context("creating a temporary data directory")?;
        let grid = start(GridConfig::new(
            "127.0.0.1:0".parse().expect("a socket address"),
            dir.path().join("grid"),
        ))
        .await
        .context("starting the grid")?;
        let client = GridClient::new(&grid.url())?;
        Ok(Self {
            grid,
            client,
            _dir: dir,
        })
    }

    /// A new twin with its own key: the client signs as that twin.
    pub async fn twin(&self) -> anyhow::Result<(Identity, GridClient)> {
        let key = Identity::generate()?;
        let client = self.client.clone().with_identity(key.clone());
        let twin = client.create_twin(None).await.context("creating a twin")?;
        Ok((key, client.with_twin(twin.id)))
    }

    /// A farmer twin and a farm of theirs named `name`.
    pub async fn farm(&self, name: &str) -> anyhow::Result<(Identity, GridClient, Farm)> {
        let (key, farmer) = self.twin().await.context("creating the farmer")?;
        let farm = farmer
            .create_farm(name)
            .await
            .context("creating the farm")?;
        Ok((key, farmer, farm))
    }

    /// Stops the grid and waits for it.
    pub async fn shutdown(self) -> anyhow::Result<()> {
        self.grid.shutdown().await?;
        Ok(())
    }
}

/// Node `i`'s registration in `farm_id`: 8 cores, 32 GiB, one interface with its own MAC.
pub fn registration(farm_id: u32, i: usize, admission: Option<AdmissionToken>) -> NodeRegistration {
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
        admission,
    }
}

/// How `count` operations with `concurrency` in flight went.
#[derive(Debug, Clone, Copy)]
pub struct Timing {
    /// Seconds from the first operation started to the last one done.
    pub elapsed_secs: f64,
    pub per_sec: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
}

/// Runs `op(0)` … `op(count - 1)` with `concurrency` in flight and times each; the first
/// failure (`what` names the operation) fails the measurement.
pub async fn measure<F, Fut>(
    count: usize,
    concurrency: usize,
    what: &str,
    op: F,
) -> anyhow::Result<Timing>
where
    F: Fn(usize) -> Fut,
    Fut: Future<Output = anyhow::Result<()>>,
{
    let started = Instant::now();
    let results: Vec<anyhow::Result<Duration>> = futures::stream::iter(0..count)
        .map(|j| {
            let fut = op(j);
            async move {
                let t = Instant::now();
                fut.await?;
                Ok(t.elapsed())
            }
        })
        .buffer_unordered(concurrency)
        .collect()
        .await;
    let elapsed_secs = started.elapsed().as_secs_f64();
    let mut latencies = Vec::with_capacity(results.len());
    for r in results {
        latencies.push(r.with_context(|| format!("{what} failed"))?);
    }
    latencies.sort();
    Ok(Timing {
        elapsed_secs,
        per_sec: if elapsed_secs > 0.0 {
            count as f64 / elapsed_secs
        } else {
            0.0
        },
        p50_ms: percentile(&latencies, 50.0),
        p99_ms: percentile(&latencies, 99.0),
        max_ms: percentile(&latencies, 100.0),
    })
}

/// Nearest-rank percentile `p` of sorted latencies, in milliseconds (0 for none).
pub fn percentile(sorted: &[Duration], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1].as_secs_f64() * 1000.0
}
