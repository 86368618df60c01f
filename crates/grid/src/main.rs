//! `zos-grid`: serve the registry, the relay and the hub. (Their benchmarks are bench targets:
//! `cargo bench -p zos-grid`, see docs/benchmarks.md.)

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};
use tracing_subscriber::EnvFilter;
use zos_grid::billing::BillingConfig;
use zos_grid::relay::RelayConfig;
use zos_grid::replay::{self, ReplayConfig};
use zos_grid::server::ServerLimits;
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
        /// The twin that may start and end contracts' grace periods, set the pricing policy
        /// and deposit (the payment bridge signs as it).
        #[arg(long, env = "ZOS_GRID_ADMIN_TWIN")]
        admin_twin: Option<u32>,
        #[command(flatten)]
        limits: Limits,
        #[command(flatten)]
        boot: BootArgs,
        #[command(flatten)]
        billing: BillingArgs,
    },
}

/// Billing (see docs/billing.md).
#[derive(Debug, Args)]
struct BillingArgs {
    /// Length of a billing period, seconds.
    #[arg(long, default_value_t = BillingConfig::default().period.as_secs())]
    billing_period_secs: u64,
    /// Seconds after a period ends before it is billed (nodes report consumption meanwhile).
    #[arg(long, default_value_t = BillingConfig::default().delay.as_secs())]
    billing_delay_secs: u64,
    /// Seconds a contract stays in grace for lack of money before it is cancelled.
    #[arg(long, default_value_t = BillingConfig::default().grace.as_secs())]
    grace_secs: u64,
    /// Seconds between billing runs.
    #[arg(long, default_value_t = 30)]
    billing_tick_secs: u64,
    /// Contracts billed per transaction.
    #[arg(long, default_value_t = BillingConfig::default().batch)]
    billing_batch: u32,
    /// Do not bill: prices, accounts and deposits answer, and no contract is billed (a
    /// devnet runs so unless it is started for billing).
    #[arg(long)]
    no_billing: bool,
    /// A devnet faucet: any twin may deposit up to this many tokens to itself at once. Never
    /// on a grid with real money.
    #[arg(long, value_name = "TOKENS")]
    faucet: Option<String>,
}

impl BillingArgs {
    fn apply(&self, config: &mut GridConfig) -> anyhow::Result<()> {
        use std::time::Duration;
        anyhow::ensure!(
            self.billing_period_secs > 0,
            "--billing-period-secs must be at least 1"
        );
        anyhow::ensure!(
            self.billing_tick_secs > 0,
            "--billing-tick-secs must be at least 1"
        );
        anyhow::ensure!(self.billing_batch > 0, "--billing-batch must be at least 1");
        let faucet_max = match &self.faucet {
            None => None,
            Some(t) => Some(
                zos_types::billing::parse_amount(t)
                    .map_err(|e| anyhow::anyhow!("--faucet: {e}"))?,
            ),
        };
        config.billing = BillingConfig {
            enabled: !self.no_billing,
            period: Duration::from_secs(self.billing_period_secs),
            delay: Duration::from_secs(self.billing_delay_secs),
            grace: Duration::from_secs(self.grace_secs),
            faucet_max,
            batch: self.billing_batch,
            tick: Some(Duration::from_secs(self.billing_tick_secs)),
        };
        Ok(())
    }
}

/// The boot service (see docs/boot.md).
#[derive(Debug, Args)]
struct BootArgs {
    /// Release keys of a runmode: RUNMODE=FILE, FILE holding `{"keys":[hex…],"threshold":N}`.
    /// Releases of that runmode must be signed by N of them, and only they may publish. Repeat
    /// for each runmode served; runmodes without keys serve and take nothing.
    #[arg(long, value_name = "RUNMODE=FILE")]
    release_keys: Vec<String>,
    /// The grid's URL as nodes reach it, written into boot scripts (default: the URL the node
    /// asked).
    #[arg(long, env = "ZOS_GRID_BOOT_URL")]
    boot_url: Option<String>,
    /// Largest boot file (kernel, initramfs) publishers may upload, in bytes.
    #[arg(long, default_value_t = zos_grid::boot::DEFAULT_MAX_FILE_BYTES)]
    max_boot_file_bytes: u64,
}

impl BootArgs {
    fn apply(&self, config: &mut GridConfig) -> anyhow::Result<()> {
        for spec in &self.release_keys {
            let (mode, file) = spec
                .split_once('=')
                .with_context(|| format!("--release-keys {spec:?}: write RUNMODE=FILE"))?;
            let mode: zos_types::release::RunMode = mode
                .parse()
                .with_context(|| format!("--release-keys {spec:?}"))?;
            let text = std::fs::read_to_string(file)
                .with_context(|| format!("--release-keys: cannot read {file}"))?;
            let keys: zos_types::release::ReleaseKeys = serde_json::from_str(&text)
                .with_context(|| format!("--release-keys: {file} is not release keys JSON"))?;
            keys.validate()
                .with_context(|| format!("--release-keys: {file}"))?;
            config.boot.release_keys.insert(mode, keys);
        }
        config.boot.grid_url = self.boot_url.clone();
        anyhow::ensure!(
            self.max_boot_file_bytes > 0,
            "--max-boot-file-bytes must be at least 1"
        );
        config.boot.max_file_bytes = self.max_boot_file_bytes;
        Ok(())
    }
}

/// What one party may hold of the grid's memory and connections (see docs/registry.md).
#[derive(Debug, Args)]
struct Limits {
    /// Request signatures the replay cache holds for all twins together.
    #[arg(long, default_value_t = replay::DEFAULT_CAPACITY)]
    replay_capacity: usize,
    /// Request signatures one twin may have in the replay cache (its requests of the last
    /// minute); more answer 429.
    #[arg(long, default_value_t = replay::DEFAULT_PER_TWIN)]
    replay_per_twin: usize,
    /// Signatures of bare keys (twin creations) the replay cache holds, in their own pool.
    #[arg(long, default_value_t = replay::DEFAULT_BARE_KEYS)]
    replay_bare_keys: usize,
    /// Envelope ids the relay remembers for all twins together.
    #[arg(long, default_value_t = RelayConfig::default().max_seen)]
    relay_max_seen: usize,
    /// Envelope ids of one source twin the relay remembers; more answer 429.
    #[arg(long, default_value_t = RelayConfig::default().max_seen_per_twin)]
    relay_max_seen_per_twin: usize,
    /// Requests one source twin may have waiting for replies; more answer 429.
    #[arg(long, default_value_t = RelayConfig::default().max_waiting_per_source)]
    relay_max_waiting_per_source: usize,
    /// Connections open at once from one IP address, uplinks included; more answer 429.
    #[arg(long, default_value_t = ServerLimits::default().max_connections_per_ip)]
    max_connections_per_ip: usize,
    /// Connections open at once in all, per listening address; more answer 503.
    #[arg(long, default_value_t = ServerLimits::default().max_connections)]
    max_connections: usize,
    /// Seconds a client may take to send a request's head before its connection is closed.
    #[arg(long, default_value_t = ServerLimits::default().header_timeout.as_secs())]
    header_timeout_secs: u64,
    /// Seconds a request body may stay without sending anything.
    #[arg(long, default_value_t = ServerLimits::default().body_timeout.as_secs())]
    body_timeout_secs: u64,
    /// Seconds a request may take to be answered (keep it above the relay's 60 s wait).
    #[arg(long, default_value_t = ServerLimits::default().request_timeout.as_secs())]
    request_timeout_secs: u64,
}

impl Limits {
    fn apply(&self, config: &mut GridConfig) -> anyhow::Result<()> {
        let secs = |name: &str, n: u64| {
            anyhow::ensure!(n > 0, "--{name} must be at least 1 second");
            Ok(std::time::Duration::from_secs(n))
        };
        let counts = [
            ("replay-capacity", self.replay_capacity),
            ("replay-per-twin", self.replay_per_twin),
            ("replay-bare-keys", self.replay_bare_keys),
            ("relay-max-seen", self.relay_max_seen),
            ("relay-max-seen-per-twin", self.relay_max_seen_per_twin),
            (
                "relay-max-waiting-per-source",
                self.relay_max_waiting_per_source,
            ),
            ("max-connections-per-ip", self.max_connections_per_ip),
            ("max-connections", self.max_connections),
        ];
        for (name, n) in counts {
            anyhow::ensure!(n > 0, "--{name} must be at least 1");
        }
        config.replay = ReplayConfig {
            capacity: self.replay_capacity,
            per_twin: self.replay_per_twin,
            bare_keys: self.replay_bare_keys,
        };
        config.relay.max_seen = self.relay_max_seen;
        config.relay.max_seen_per_twin = self.relay_max_seen_per_twin;
        config.relay.max_waiting_per_source = self.relay_max_waiting_per_source;
        config.server = ServerLimits {
            max_connections_per_ip: self.max_connections_per_ip,
            max_connections: self.max_connections,
            header_timeout: secs("header-timeout-secs", self.header_timeout_secs)?,
            body_timeout: secs("body-timeout-secs", self.body_timeout_secs)?,
            request_timeout: secs("request-timeout-secs", self.request_timeout_secs)?,
        };
        Ok(())
    }
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
            limits,
            boot,
            billing,
        } => {
            serve(
                listen, data_dir, ready_file, admin_twin, limits, boot, billing,
            )
            .await
        }
    }
}

async fn serve(
    listen: Vec<SocketAddr>,
    data_dir: PathBuf,
    ready_file: Option<PathBuf>,
    admin_twin: Option<u32>,
    limits: Limits,
    boot: BootArgs,
    billing: BillingArgs,
) -> anyhow::Result<()> {
    let mut sigterm = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .context("installing the SIGTERM handler")?;
    let (first, rest) = listen
        .split_first()
        .context("give at least one --listen address")?;
    let mut config = GridConfig::new(*first, data_dir);
    config.also_listen = rest.to_vec();
    config.admin = admin_twin;
    limits.apply(&mut config)?;
    boot.apply(&mut config)?;
    billing.apply(&mut config)?;
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
