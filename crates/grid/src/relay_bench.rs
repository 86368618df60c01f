//! `zos-grid bench-relay`: relay round trips per second against an in-process grid.
//!
//! A grid is started on `127.0.0.1:0` with a temporary data directory. `nodes` twins register
//! as nodes and each opens an uplink with [`crate::relay`]'s WebSocket, through
//! [`zos_client::uplink`], and answers every request the way zosd does: it checks the
//! envelope's signature and expiry, decrypts the body, parses it as JSON, and seals a signed
//! reply. A user twin then makes `calls` calls with [`GridClient::call`], spread round-robin
//! over the nodes, with `concurrency` calls in flight. Each call goes the whole way: sealing
//! (XChaCha20-Poly1305, ed25519), `POST /api/v1/relay/send`, the relay's signature, expiry and
//! replay checks, the node's uplink, the node's work, the reply's way back and its checks, and
//! the client's verification and decryption of the reply.

use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use futures::StreamExt;
use serde::Serialize;
use zos_client::GridClient;
use zos_types::auth::unix_now;
use zos_types::capacity::GIB;
use zos_types::envelope::{Envelope, Reply, Seal};
use zos_types::registry::{FarmPolicy, Hardware, NodeAdmission, NodeRegistration};
use zos_types::relay::UplinkFrame;
use zos_types::{Capacity, Identity, TwinId};

use crate::{GridConfig, start};

/// What to measure.
#[derive(Debug, Clone, Copy)]
pub struct RelayBenchOptions {
    /// Nodes answering, each on its own uplink.
    pub nodes: usize,
    /// Calls to make.
    pub calls: usize,
    /// Calls in flight at once.
    pub concurrency: usize,
    /// Size of each request's payload (a JSON string of this many bytes).
    pub body_bytes: usize,
}

/// What was measured.
#[derive(Debug, Clone, Serialize)]
pub struct RelayBenchReport {
    pub nodes: usize,
    pub calls: usize,
    pub concurrency: usize,
    pub body_bytes: usize,
    /// Seconds to create the twins, register the nodes and open their uplinks.
    pub setup_secs: f64,
    /// Seconds from the first call made to the last answered.
    pub elapsed_secs: f64,
    pub calls_per_sec: f64,
    pub latency_p50_ms: f64,
    pub latency_p99_ms: f64,
    pub latency_max_ms: f64,
}

fn registration(farm_id: u32, i: usize) -> NodeRegistration {
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
            serial: format!("relay-bench-{i}"),
            virtualized: true,
            cpu_model: "bench".into(),
        },
        interfaces: vec![],
        zos_version: env!("CARGO_PKG_VERSION").into(),
        report_interval_secs: 60,
        limited: None,
        admission: None,
    }
}

/// Nearest-rank percentile `p` of sorted latencies, in milliseconds.
fn percentile(sorted: &[Duration], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1].as_secs_f64() * 1000.0
}

/// Answers the requests that come up one node's uplink until it closes.
async fn answer_requests(
    mut link: zos_client::uplink::Uplink,
    me: Identity,
    twin: TwinId,
    grid: GridClient,
) -> anyhow::Result<()> {
    while let Some(frame) = link.next().await {
        let UplinkFrame::Envelope { envelope: req } = frame? else {
            continue;
        };
        let key = grid.twin_key(req.source).await?;
        req.verify(&key, unix_now())?;
        let body: serde_json::Value = serde_json::from_slice(&req.open(&me, &key)?)?;
        let len = body.as_str().map_or(0, str::len);
        let reply = Reply::Ok(serde_json::json!({ "len": len }));
        let seal = Seal {
            source: twin,
            destination: req.source,
            destination_key: &key,
            command: &req.command,
            reply_to: Some(&req.id),
            expiration: unix_now() + 60,
        };
        let out = Envelope::seal(&me, &seal, &serde_json::to_vec(&reply)?)?;
        link.send(UplinkFrame::Envelope { envelope: out }).await?;
    }
    Ok(())
}

/// Runs the benchmark.
pub async fn run(opts: RelayBenchOptions) -> anyhow::Result<RelayBenchReport> {
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
    let url = grid.url();
    let base = GridClient::new(&url)?;

    let setup = Instant::now();
    let farmer = base.clone().with_identity(Identity::generate()?);
    let farmer_twin = farmer
        .create_twin(None)
        .await
        .context("creating the farmer")?;
    let farmer = farmer.with_twin(farmer_twin.id);
    let farm = farmer
        .create_farm("relay-bench-farm")
        .await
        .context("creating the farm")?;
    // Any node may join (this bench measures the relay, not admission).
    let open = FarmPolicy {
        node_admission: NodeAdmission::Open,
        ..FarmPolicy::default()
    };
    let farm = farmer
        .set_farm_policy(farm.id, &open)
        .await
        .context("opening the farm")?;
    let mut node_twins = Vec::with_capacity(opts.nodes);
    let mut responders = Vec::with_capacity(opts.nodes);
    for i in 0..opts.nodes {
        let me = Identity::generate()?;
        let client = base.clone().with_identity(me.clone());
        let twin = client.create_twin(None).await?.id;
        client
            .with_twin(twin)
            .register_node(&registration(farm.id, i))
            .await
            .context("registering a node")?;
        let link = zos_client::uplink::connect(&url, &me, twin)
            .await
            .context("opening an uplink")?;
        responders.push(tokio::spawn(answer_requests(link, me, twin, base.clone())));
        node_twins.push(twin);
    }
    let user = base.clone().with_identity(Identity::generate()?);
    let user_twin = user.create_twin(None).await.context("creating the user")?;
    let user = user.with_twin(user_twin.id);
    let payload = "x".repeat(opts.body_bytes);
    // One call per node first: the nodes' keys get cached on both sides, as in steady use.
    for twin in &node_twins {
        user.call(*twin, "zos.bench.echo", &payload)
            .await
            .context("a warm-up call failed")?;
    }
    let setup_secs = setup.elapsed().as_secs_f64();

    let started = Instant::now();
    let results: Vec<anyhow::Result<Duration>> = futures::stream::iter(0..opts.calls)
        .map(|j| {
            let (user, payload) = (&user, &payload);
            let twin = node_twins[j % node_twins.len()];
            async move {
                let t = Instant::now();
                let v = user.call(twin, "zos.bench.echo", payload).await?;
                if v["len"] != payload.len() {
                    bail!("node {twin} answered {v}, not the length of the payload");
                }
                Ok(t.elapsed())
            }
        })
        .buffer_unordered(opts.concurrency)
        .collect()
        .await;
    let elapsed = started.elapsed();
    let mut latencies = Vec::with_capacity(results.len());
    for r in results {
        latencies.push(r.context("a relay call failed")?);
    }
    latencies.sort();
    for r in &responders {
        r.abort();
    }
    grid.shutdown().await?;

    let elapsed_secs = elapsed.as_secs_f64();
    Ok(RelayBenchReport {
        nodes: opts.nodes,
        calls: opts.calls,
        concurrency: opts.concurrency,
        body_bytes: opts.body_bytes,
        setup_secs,
        elapsed_secs,
        calls_per_sec: if elapsed_secs > 0.0 {
            opts.calls as f64 / elapsed_secs
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
        let d: Vec<Duration> = (1..=10).map(Duration::from_millis).collect();
        assert_eq!(percentile(&d, 50.0), 5.0);
        assert_eq!(percentile(&d, 99.0), 10.0);
        assert_eq!(percentile(&[], 50.0), 0.0);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_small_run_answers_every_call() {
        let r = run(RelayBenchOptions {
            nodes: 2,
            calls: 40,
            concurrency: 4,
            body_bytes: 100,
        })
        .await
        .unwrap();
        assert_eq!(r.calls, 40);
        assert!(r.calls_per_sec > 0.0);
        assert!(r.latency_p50_ms <= r.latency_max_ms);
    }
}
