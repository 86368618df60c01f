//! Relay round trips per second against an in-process grid.
//!
//! `nodes` twins register as nodes and each opens an uplink to the relay's WebSocket through
//! [`zos_client::uplink`], and answers every request the way zosd does: it checks the
//! envelope's signature and expiry, decrypts the body, parses it as JSON, and seals a signed
//! reply. A user twin then makes `calls` calls with [`GridClient::call`], spread round-robin
//! over the nodes, with `concurrency` calls in flight. Each call goes the whole way: sealing
//! (XChaCha20-Poly1305, ed25519), `POST /api/v1/relay/send`, the relay's signature, expiry and
//! replay checks, the node's uplink, the node's work, the reply's way back and its checks, and
//! the client's verification and decryption of the reply.

use std::time::Instant;

use anyhow::{Context, bail};
use serde::Serialize;
use tokio::task::JoinHandle;
use zos_client::GridClient;
use zos_types::auth::unix_now;
use zos_types::envelope::{Envelope, Reply, Seal};
use zos_types::registry::{FarmPolicy, NodeAdmission};
use zos_types::relay::UplinkFrame;
use zos_types::{Identity, TwinId};

use super::{BenchGrid, measure, registration};

/// What to measure.
#[derive(Debug, Clone, Copy)]
pub struct Options {
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
pub struct Report {
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

/// Registers `count` nodes in an open farm, each answering on its own uplink: their twins and
/// the tasks answering.
async fn start_nodes(
    grid: &BenchGrid,
    count: usize,
) -> anyhow::Result<(Vec<TwinId>, Vec<JoinHandle<anyhow::Result<()>>>)> {
    let (_, farmer, farm) = grid.farm("relay-bench-farm").await?;
    // Any node may join (this bench measures the relay, not admission).
    let open = FarmPolicy {
        node_admission: NodeAdmission::Open,
        ..FarmPolicy::default()
    };
    farmer
        .set_farm_policy(farm.id, &open)
        .await
        .context("opening the farm")?;
    let url = grid.grid.url();
    let (mut twins, mut responders) = (Vec::with_capacity(count), Vec::with_capacity(count));
    for i in 0..count {
        let (me, client) = grid.twin().await?;
        let twin = client.twin_id().expect("a twin's client");
        client
            .register_node(&registration(farm.id, i, None))
            .await
            .context("registering a node")?;
        let link = zos_client::uplink::connect(&url, &me, twin)
            .await
            .context("opening an uplink")?;
        let answer = answer_requests(link, me, twin, grid.client.clone());
        responders.push(tokio::spawn(answer));
        twins.push(twin);
    }
    Ok((twins, responders))
}

/// One call to `node` carrying `payload`, checked against the node's answer.
async fn echo(user: &GridClient, node: TwinId, payload: &str) -> anyhow::Result<()> {
    // A name outside the node protocol on purpose: the bench nodes echo any command.
    let v = user.call(node, "zos.bench.echo", payload).await?;
    if v["len"] != payload.len() {
        bail!("node {node} answered {v}, not the length of the payload");
    }
    Ok(())
}

/// Runs the benchmark.
pub async fn run(opts: Options) -> anyhow::Result<Report> {
    if opts.nodes == 0 || opts.concurrency == 0 {
        bail!("--nodes and --concurrency must be at least 1");
    }
    let grid = BenchGrid::start().await?;
    let setup = Instant::now();
    let (nodes, responders) = start_nodes(&grid, opts.nodes).await?;
    let (_, user) = grid.twin().await.context("creating the user")?;
    let payload = "x".repeat(opts.body_bytes);
    // One call per node first: the nodes' keys get cached on both sides, as in steady use.
    for node in &nodes {
        echo(&user, *node, &payload)
            .await
            .context("a warm-up call failed")?;
    }
    let setup_secs = setup.elapsed().as_secs_f64();

    let t = measure(opts.calls, opts.concurrency, "a relay call", |j| {
        echo(&user, nodes[j % nodes.len()], &payload)
    })
    .await?;
    for r in &responders {
        r.abort();
    }
    grid.shutdown().await?;
    Ok(Report {
        nodes: opts.nodes,
        calls: opts.calls,
        concurrency: opts.concurrency,
        body_bytes: opts.body_bytes,
        setup_secs,
        elapsed_secs: t.elapsed_secs,
        calls_per_sec: t.per_sec,
        latency_p50_ms: t.p50_ms,
        latency_p99_ms: t.p99_ms,
        latency_max_ms: t.max_ms,
    })
}
