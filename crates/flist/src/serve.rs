//! Running one mount as its own process, so mounts outlive a restart of the node agent.
//!
//! The `zos-flist-mount` binary is a thin wrapper around [`serve`]; the CLI or the node can
//! call [`serve`] the same way (for example from a re-executed copy of itself). The process
//! mounts, prints `ready <mountpoint>` on stdout, and unmounts when it gets SIGTERM or SIGINT
//! or when the mount is removed from outside. A mount left behind by a killed process is
//! detached before mounting again.

use std::path::PathBuf;
use std::sync::Arc;

use crate::cache::BlockCache;
use crate::meta::Flist;
use crate::mount::{MountError, MountOptions, mount_flist, mount_writable};
use crate::store::{BlockStore, Router, open_url};

/// What a mount process serves.
#[derive(Debug, Clone)]
pub struct ServeConfig {
    /// The flist file.
    pub flist: PathBuf,
    /// Where to mount it.
    pub mountpoint: PathBuf,
    /// The node's block cache directory (shared by all mounts).
    pub cache_dir: PathBuf,
    /// The cache's size limit in bytes.
    pub cache_bytes: u64,
    /// Store URLs to read blocks from (all ids each); empty: the routes of the flist.
    pub stores: Vec<String>,
    /// Make the mount writable with its upper layer in this directory.
    pub rw_dir: Option<PathBuf>,
    /// Mount settings.
    pub options: MountOptions,
}

/// Opens the stores a flist should be read from: the given URLs, or the flist's routes.
pub fn stores_for(flist: &Flist, urls: &[String]) -> Result<Arc<dyn BlockStore>, MountError> {
    if urls.is_empty() {
        return Ok(Arc::new(Router::from_routes(flist.routes())?));
    }
    let mut r = Router::new();
    for u in urls {
        r.add(0, 255, open_url(u)?);
    }
    Ok(Arc::new(r))
}

enum Held {
    Ro(#[allow(dead_code)] crate::mount::MountHandle),
    Rw(#[allow(dead_code)] crate::mount::WritableMount),
}

impl Held {
    fn alive(&self) -> bool {
        match self {
            Held::Ro(h) => h.is_alive(),
            Held::Rw(w) => w.lower().map(|l| l.is_alive()).unwrap_or(false),
        }
    }
}

/// Mounts as `config` says and serves until SIGTERM or SIGINT (or until the mount goes away),
/// then unmounts. Blocks the calling thread.
pub fn serve(config: ServeConfig) -> Result<(), MountError> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|source| MountError::Io {
            what: "cannot start a runtime for",
            path: config.mountpoint.clone(),
            source,
        })?;
    let flist = Arc::new(Flist::open_any(&config.flist)?);
    let store = {
        let _g = rt.enter();
        stores_for(&flist, &config.stores)?
    };
    let cache = BlockCache::open(&config.cache_dir, config.cache_bytes)?;
    let mut options = config.options.clone();
    options.runtime = Some(rt.handle().clone());
    let held = match &config.rw_dir {
        None => Held::Ro(mount_flist(
            flist,
            &config.mountpoint,
            store,
            cache,
            &options,
        )?),
        Some(rw) => Held::Rw(mount_writable(
            &config.flist,
            &config.mountpoint,
            rw,
            store,
            cache,
            &options,
        )?),
    };
    println!("ready {}", config.mountpoint.display());
    rt.block_on(async {
        use tokio::signal::unix::{SignalKind, signal};
        let (Ok(mut term), Ok(mut int)) = (
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
        ) else {
            return;
        };
        let mut tick = tokio::time::interval(std::time::Duration::from_millis(500));
        loop {
            tokio::select! {
                _ = term.recv() => break,
                _ = int.recv() => break,
                _ = tick.tick() => if !held.alive() { break },
            }
        }
    });
    tracing::info!(mountpoint = %config.mountpoint.display(), "unmounting flist");
    drop(held);
    rt.shutdown_background();
    Ok(())
}
