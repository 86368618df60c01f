//! `zos-zdb`: a 0-db compatible key-value server (see the crate's documentation and
//! docs/zdb.md).

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::Parser;
use tracing_subscriber::EnvFilter;
use zos_zdb::{Config, Fsync, Server};

#[derive(Debug, Parser)]
#[command(
    name = "zos-zdb",
    version,
    about = "A 0-db compatible key-value server: namespaces over the Redis protocol"
)]
struct Cli {
    /// The TCP address to listen on.
    #[arg(long, default_value = "[::]:9900")]
    listen: SocketAddr,
    /// The directory of the namespaces (one subdirectory each); created when missing.
    #[arg(long)]
    data: PathBuf,
    /// The admin password (AUTH); prefer the environment variable, which `ps` does not show.
    /// Without one, every client is an admin.
    #[arg(long, env = "ZOS_ZDB_ADMIN", hide_env_values = true)]
    admin: Option<String>,
    /// The most namespaces, `default` included.
    #[arg(long, default_value_t = 4096)]
    max_namespaces: usize,
    /// The size in bytes at which a data file is closed and the next one started.
    #[arg(long, default_value_t = 256 * 1024 * 1024)]
    datafile_size: u64,
    /// When writes reach the disk: `always` syncs before each answer, `every-second` once a
    /// second (a killed server loses nothing either way; a power cut may lose the last second).
    #[arg(long, value_enum, default_value = "every-second")]
    fsync: Fsync,
    /// The largest value in bytes.
    #[arg(long, default_value_t = 8 * 1024 * 1024)]
    max_value: usize,
}

fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()))
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let mut config = Config::new(cli.listen, cli.data);
    config.admin_password = cli.admin.filter(|p| !p.is_empty());
    config.max_namespaces = cli.max_namespaces.max(1);
    config.datafile_size = cli.datafile_size.max(4096);
    config.fsync = cli.fsync;
    config.limits.bulk = cli.max_value;
    config.limits.request = cli.max_value.saturating_add(1024 * 1024);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        let server = Server::bind(config).await?;
        tokio::select! {
            r = server.serve() => r?,
            _ = tokio::signal::ctrl_c() => tracing::info!("interrupted"),
        }
        anyhow::Ok(())
    })
}
