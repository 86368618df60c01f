//! `cargo bench -p zos-grid --bench billing [-- FLAGS]`: one billing run over many node
//! contracts on SQLite (see `common/billing.rs`). Prints figures, or JSON with `--json`.

mod common;

use clap::Parser;
use common::billing::{Options, run};

#[derive(Debug, Parser)]
#[command(about = "Measure one billing run over many contracts on SQLite")]
struct Flags {
    /// Node contracts to bill (one period each).
    #[arg(long, default_value_t = 100_000)]
    contracts: usize,
    /// Nodes they are spread over.
    #[arg(long, default_value_t = 100)]
    nodes: usize,
    /// Twins paying for them.
    #[arg(long, default_value_t = 1000)]
    twins: usize,
    /// Print the figures as JSON.
    #[arg(long)]
    json: bool,
    /// Passed by `cargo bench`; ignored.
    #[arg(long, hide = true)]
    bench: bool,
}

fn main() -> anyhow::Result<()> {
    let f = Flags::parse();
    let r = run(Options {
        contracts: f.contracts,
        nodes: f.nodes,
        twins: f.twins,
    })?;
    if f.json {
        println!("{}", serde_json::to_string_pretty(&r)?);
        return Ok(());
    }
    println!(
        "billing run over {} node contracts: {} bills ({} paid) in {:.2} s, {:.0} bills/s; \
         a run with nothing to bill {:.3} s; RSS {:.1} MiB before, peak {:.1} MiB; \
         database {:.1} MiB (setup {:.1} s)",
        r.contracts,
        r.bills,
        r.paid,
        r.run_secs,
        r.bills_per_sec,
        r.idle_run_secs,
        r.rss_before_mib,
        r.peak_rss_mib,
        r.database_mib,
        r.setup_secs
    );
    Ok(())
}
