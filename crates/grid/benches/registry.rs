//! `cargo bench -p zos-grid --bench registry [-- FLAGS]`: signed uptime reports per second
//! against an in-process registry (see `common/uptime.rs`). Prints figures, or JSON with
//! `--json`.

mod common;

use clap::Parser;
use common::uptime::{Options, run};

#[derive(Debug, Parser)]
#[command(about = "Measure signed uptime reports per second against an in-process registry")]
struct Flags {
    /// Number of registered nodes the reports are spread over.
    #[arg(long, default_value_t = 100)]
    nodes: usize,
    /// Number of uptime reports to send.
    #[arg(long, default_value_t = 10_000)]
    reports: usize,
    /// Requests in flight at once.
    #[arg(long, default_value_t = 32)]
    concurrency: usize,
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
        reports: f.reports,
        concurrency: f.concurrency,
    })
    .await?;
    if f.json {
        println!("{}", serde_json::to_string_pretty(&r)?);
        return Ok(());
    }
    println!(
        "{} signed uptime reports over {} nodes, {} in flight: {:.0} reports/s, \
         latency p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms (setup {:.2} s)",
        r.reports,
        r.nodes,
        r.concurrency,
        r.reports_per_sec,
        r.latency_p50_ms,
        r.latency_p99_ms,
        r.latency_max_ms,
        r.setup_secs
    );
    Ok(())
}
