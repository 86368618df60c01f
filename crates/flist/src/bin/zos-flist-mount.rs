//! Serves one flist mount as its own process (see `zos_flist::serve`).

use std::path::PathBuf;

use clap::Parser;
use zos_flist::mount::MountOptions;
use zos_flist::serve::{ServeConfig, serve};

/// Mount a flist read-only (or writable with --rw-dir) until SIGTERM.
#[derive(Debug, Parser)]
#[command(name = "zos-flist-mount", version)]
struct Args {
    /// The flist file: FL (.fl) or legacy 0-fs (.flist), told apart by content.
    #[arg(long)]
    flist: PathBuf,
    /// The node's block cache directory.
    #[arg(long)]
    cache: PathBuf,
    /// Cache size limit (bytes, or with a unit: 512M, 10G).
    #[arg(long, default_value = "10G", value_parser = parse_size)]
    cache_size: u64,
    /// Store URL to read blocks from (repeatable); default: the flist's routes.
    #[arg(long = "store")]
    stores: Vec<String>,
    /// Make the mount writable, keeping changes in this directory.
    #[arg(long)]
    rw_dir: Option<PathBuf>,
    /// Blocks (512 KiB) fetched ahead of sequential readers.
    #[arg(long, default_value_t = 8)]
    readahead: usize,
    /// Name shown as the mount's source in /proc/mounts (default: the flist's file name).
    #[arg(long)]
    fsname: Option<String>,
    /// Where to mount.
    mountpoint: PathBuf,
}

fn parse_size(s: &str) -> Result<u64, String> {
    zos_types::capacity::parse_bytes(s).ok_or_else(|| format!("{s:?} is not a size"))
}

fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    let a = Args::parse();
    let options = MountOptions {
        readahead_blocks: a.readahead,
        fsname: a.fsname,
        ..MountOptions::default()
    };
    serve(ServeConfig {
        flist: a.flist,
        mountpoint: a.mountpoint,
        cache_dir: a.cache,
        cache_bytes: a.cache_size,
        stores: a.stores,
        rw_dir: a.rw_dir,
        options,
    })?;
    Ok(())
}
