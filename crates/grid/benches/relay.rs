//! `cargo bench -p zos-grid --bench relay [-- FLAGS]`: relay round trips per second, sealed
//! calls to fake nodes on uplinks of an in-process grid (see `common/relay.rs`). Prints
//! figures, or JSON with `--json`.

mod common;

use clap::Parser;
use common::relay::{Options, run};

#[derive(Debug, Parser)]
#[command(about = "Measure relay round trips per second (sealed calls to fake nodes on uplinks)")]
struct Flags {
    /// Number of nodes answering, each on its own uplink.
    #[arg(long, default_value_t = 4)]
    nodes: usize,
    /// Number of calls to make.
    #[arg(long, default_value_t = 5_000)]
    calls: usize,
    /// Calls in flight at once.
    #[arg(long, default_value_t = 8)]
    concurrency: usize,
    /// Size of each request's payload in bytes.
    #[arg(long, default_value_t = 256)]
    body_bytes: usize,
    /// Print the figures as JSON.
    #[arg(long)]
    json: bool,
    /// Passed by `cargo bench`; ignored.
    #[arg(long, hide = true)]
    bench: bool,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let f = Flags::parse();
    let r = run(Options {
        nodes: f.nodes,
        calls: f.calls,
        concurrency: f.concurrency,
        body_bytes: f.body_bytes,
    })
    .await?;
    if f.json {
        println!("{}", serde_json::to_string_pretty(&r)?);
        return Ok(());
    }
    println!(
        "{} relay calls of {} bytes to {} nodes, {} in flight: {:.0} calls/s, \
         latency p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms (setup {:.2} s)",
        r.calls,
        r.body_bytes,
        r.nodes,
        r.concurrency,
        r.calls_per_sec,
        r.latency_p50_ms,
        r.latency_p99_ms,
        r.latency_max_ms,
        r.setup_secs
    );
    Ok(())
}
