//! `cargo bench -p zos-grid --bench explorer [-- FLAGS]`: server time and page weight of the
//! explorer's overview and node list on a grid of 10 000 nodes (see `common/explorer.rs`).
//! Prints figures, or JSON with `--json`.

mod common;

use clap::Parser;
use common::explorer::{Options, run};

#[derive(Debug, Parser)]
#[command(about = "Measure the explorer's pages on a big grid")]
struct Flags {
    /// Registered nodes.
    #[arg(long, default_value_t = 10_000)]
    nodes: usize,
    /// Farms the nodes are spread over.
    #[arg(long, default_value_t = 100)]
    farms: usize,
    /// Requests per page, one at a time.
    #[arg(long, default_value_t = 50)]
    requests: usize,
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
        farms: f.farms,
        requests: f.requests,
    })
    .await?;
    if f.json {
        println!("{}", serde_json::to_string_pretty(&r)?);
        return Ok(());
    }
    println!(
        "{} nodes in {} farms, {} requests per page (setup {:.2} s):",
        r.nodes, r.farms, r.requests, r.setup_secs
    );
    for p in &r.pages {
        println!(
            "  {:<70} {:>8} bytes  p50 {:>7.2} ms  p99 {:>7.2} ms  max {:>7.2} ms",
            p.path, p.bytes, p.p50_ms, p.p99_ms, p.max_ms
        );
    }
    Ok(())
}
