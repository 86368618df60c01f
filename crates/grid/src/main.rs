//! `zos-grid`: serve the registry, or benchmark it or its relay.

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, Subcommand};
use tracing_subscriber::EnvFilter;
use zos_grid::bench::{self, BenchOptions};
use zos_grid::relay_bench::{self, RelayBenchOptions};
use zos_grid::{GridConfig, GridError, start, write_file_atomically};

#[derive(Debug, Parser)]
#[command(
    name = "zos-grid",
    version,
    about = "The zos grid: registry of twins, farms and nodes"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Serve the registry API until SIGTERM or SIGINT.
    Serve {
        /// Address to listen on (port 0 picks a free port); repeat to serve on several.
        #[arg(
            long,
            default_value = "127.0.0.1:8080",
            env = "ZOS_GRID_LISTEN",
            value_delimiter = ','
        )]
        listen: Vec<SocketAddr>,
        /// Directory of the registry database.
        #[arg(long, env = "ZOS_GRID_DATA_DIR")]
        data_dir: PathBuf,
        /// Once listening, write the URL (`http://ADDR`) to this file, atomically.
        #[arg(long)]
        ready_file: Option<PathBuf>,
        /// The twin that may start and end contracts' grace periods.
        #[arg(long, env = "ZOS_GRID_ADMIN_TWIN")]
        admin_twin: Option<u32>,
    },
    /// Measure signed uptime reports per second against an in-process registry.
    Bench {
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
    },
    /// Measure relay round trips per second (sealed calls to fake nodes on uplinks).
    BenchRelay {
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
    },
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    match Cli::parse().command {
        Command::Serve {
            listen,
            data_dir,
            ready_file,
            admin_twin,
        } => serve(listen, data_dir, ready_file, admin_twin).await,
        Command::Bench {
            nodes,
            reports,
            concurrency,
            json,
        } => {
            let report = bench::run(BenchOptions {
                nodes,
                reports,
                concurrency,
            })
            .await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&report)?);
            } else {
                println!(
                    "{} signed uptime reports over {} nodes, {} in flight: {:.0} reports/s, \
                     latency p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms (setup {:.2} s)",
                    report.reports,
                    report.nodes,
                    report.concurrency,
                    report.reports_per_sec,
                    report.latency_p50_ms,
                    report.latency_p99_ms,
                    report.latency_max_ms,
                    report.setup_secs
                );
            }
            Ok(())
        }
        Command::BenchRelay {
            nodes,
            calls,
            concurrency,
            body_bytes,
            json,
        } => {
            let r = relay_bench::run(RelayBenchOptions {
                nodes,
                calls,
                concurrency,
                body_bytes,
            })
            .await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&r)?);
            } else {
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
            }
            Ok(())
        }
    }
}

async fn serve(
    listen: Vec<SocketAddr>,
    data_dir: PathBuf,
    ready_file: Option<PathBuf>,
    admin_twin: Option<u32>,
) -> anyhow::Result<()> {
    let mut sigterm = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .context("installing the SIGTERM handler")?;
    let (first, rest) = listen
        .split_first()
        .context("give at least one --listen address")?;
    let mut config = GridConfig::new(*first, data_dir);
    config.also_listen = rest.to_vec();
    config.admin = admin_twin;
    let grid = start(config).await?;
    let url = grid.url();
    if let Some(path) = &ready_file {
        write_file_atomically(path, format!("{url}\n").as_bytes()).map_err(|source| {
            GridError::ReadyFile {
                path: path.clone(),
                source,
            }
        })?;
    }
    tracing::info!(%url, "registry ready");
    tokio::select! {
        _ = sigterm.recv() => tracing::info!("SIGTERM: shutting down"),
        r = tokio::signal::ctrl_c() => {
            r.context("waiting for SIGINT")?;
            tracing::info!("SIGINT: shutting down");
        }
    }
    grid.shutdown().await?;
    Ok(())
}
