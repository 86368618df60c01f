//! The zos grid: the registry of twins, farms, nodes and contracts, the relay that carries
//! envelopes to nodes' uplinks, and the hub of flists, served over HTTP on one port.
//!
//! ```no_run
//! # async fn demo() -> Result<(), zos_grid::GridError> {
//! let grid = zos_grid::start(zos_grid::GridConfig::new(
//!     "127.0.0.1:0".parse().unwrap(),
//!     "/var/lib/zos-grid".into(),
//! ))
//! .await?;
//! println!("registry at {}", grid.url());
//! grid.shutdown().await?;
//! # Ok(()) }
//! ```
//!
//! The API is described in `docs/registry.md` and in [`zos_types::registry`], contracts in
//! `docs/contracts.md` and [`contracts`], the relay in `docs/relay.md` and [`relay`]. Storage sits
//! behind the [`store::Store`] trait ([`store::SqliteStore`] is the embedded one), time behind
//! the [`clock::Clock`] trait. No one party can take the grid down: connections are bounded per
//! address and timed out by [`server`], signed requests are checked before their bodies are read
//! ([`auth`]) and remembered in per-signer shares ([`replay`]), and the relay's state is bounded
//! per twin ([`relay`]); the limits are [`GridConfig`] fields and `zos-grid serve` flags.

pub mod api;
pub mod auth;
pub mod billing;
pub mod boot;
pub mod clock;
pub mod contracts;
pub mod error;
pub mod explorer;
pub mod hub;
pub mod proposals;
pub mod relay;
pub mod replay;
pub mod server;
pub mod state;
pub mod store;

use std::fs::DirBuilder;
use std::io;
use std::net::SocketAddr;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use crate::clock::{Clock, SystemClock};
use crate::store::{SqliteStore, Store, StoreError};

/// Name of the database file inside the data directory.
pub const DATABASE_FILE: &str = "registry.sqlite";
/// How often the grid's totals are sampled by default.
pub const DEFAULT_STATS_INTERVAL: Duration = Duration::from_secs(60);
/// How long a shutdown waits for requests in flight before it drops them.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

/// How to run a grid.
#[derive(Debug, Clone)]
pub struct GridConfig {
    /// Address to listen on; port 0 picks a free port.
    pub listen: SocketAddr,
    /// More addresses serving the same API (a devnet serves people on loopback and its nodes on
    /// the devnet bridge).
    pub also_listen: Vec<SocketAddr>,
    /// Directory of the database; created (mode 0700) when missing.
    pub data_dir: PathBuf,
    /// Where time comes from.
    pub clock: Arc<dyn Clock>,
    /// How many request signatures the replay cache holds, per twin and in all.
    pub replay: replay::ReplayConfig,
    /// Connection limits and timeouts of the HTTP server.
    pub server: server::ServerLimits,
    /// The twin that may start and end grace periods, set the pricing policy and deposit.
    pub admin: Option<zos_types::TwinId>,
    /// The relay's limits and timers.
    pub relay: relay::RelayConfig,
    /// Where and how the hub keeps blocks and flists.
    pub hub: hub::HubConfig,
    /// The boot service: release keys per runmode, the URL written into boot scripts.
    pub boot: boot::BootConfig,
    /// Billing periods, grace length, the devnet faucet.
    pub billing: billing::BillingConfig,
    /// How often the grid's totals are sampled into their history (`GET /stats/history`, the
    /// explorer's charts).
    pub stats_interval: Duration,
}

impl GridConfig {
    /// A config with the system clock and default limits.
    pub fn new(listen: SocketAddr, data_dir: PathBuf) -> Self {
        Self {
            listen,
            also_listen: Vec::new(),
            data_dir,
            clock: Arc::new(SystemClock),
            replay: replay::ReplayConfig::default(),
            server: server::ServerLimits::default(),
            admin: None,
            relay: relay::RelayConfig::default(),
            hub: hub::HubConfig::default(),
            boot: boot::BootConfig::default(),
            billing: billing::BillingConfig::default(),
            stats_interval: DEFAULT_STATS_INTERVAL,
        }
    }

    /// The same config with another clock (tests use [`clock::ManualClock`]).
    pub fn with_clock(mut self, clock: Arc<dyn Clock>) -> Self {
        self.clock = clock;
        self
    }
}

/// Failures to start or run a grid.
#[derive(Debug, thiserror::Error)]
pub enum GridError {
    #[error("cannot create data directory {path}")]
    DataDir {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot open the registry store")]
    Store(#[from] StoreError),
    #[error("cannot open the hub")]
    Hub(#[from] hub::HubError),
    #[error("cannot open the boot service")]
    Boot(#[from] boot::BootError),
    #[error("cannot listen on {addr}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: io::Error,
    },
    #[error("the HTTP server failed")]
    Serve(#[source] io::Error),
    #[error("the HTTP server task ended abnormally")]
    Task(#[source] tokio::task::JoinError),
    #[error("cannot write ready file {path}")]
    ReadyFile {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

/// A grid serving in this process. Dropping it stops the server without waiting;
/// [`RunningGrid::shutdown`] stops it and waits.
#[derive(Debug)]
pub struct RunningGrid {
    addr: SocketAddr,
    store: Arc<dyn Store>,
    relay: Arc<relay::Relay>,
    boot: Arc<boot::Boot>,
    clock: Arc<dyn Clock>,
    billing: billing::BillingConfig,
    biller: Option<JoinHandle<()>>,
    sampler: JoinHandle<()>,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<io::Result<()>>>,
}

/// Opens the store in `config.data_dir`, binds `config.listen` and serves the registry API.
pub async fn start(config: GridConfig) -> Result<RunningGrid, GridError> {
    let dir = config.data_dir.clone();
    let store = tokio::task::spawn_blocking(move || open_store(&dir))
        .await
        .map_err(GridError::Task)??;
    let mut listeners = Vec::new();
    for want in std::iter::once(config.listen).chain(config.also_listen.iter().copied()) {
        let listener = tokio::net::TcpListener::bind(want)
            .await
            .map_err(|source| GridError::Bind { addr: want, source })?;
        let bound = listener
            .local_addr()
            .map_err(|source| GridError::Bind { addr: want, source })?;
        listeners.push((bound, listener));
    }
    let addr = listeners[0].0;
    let state_clock = config.clock.clone();
    let state = state::AppState::new(store.clone(), config.clock, config.replay)
        .with_admin(config.admin)
        .with_relay(config.relay.clone())
        .with_billing(config.billing);
    let hub = {
        let (dir, hub_config) = (config.data_dir.clone(), config.hub.clone());
        tokio::task::spawn_blocking(move || hub::Hub::open(&dir, hub_config))
            .await
            .map_err(GridError::Task)??
    };
    let boot = {
        let (dir, boot_config) = (config.data_dir.clone(), config.boot.clone());
        Arc::new(
            tokio::task::spawn_blocking(move || boot::Boot::open(&dir, boot_config))
                .await
                .map_err(GridError::Task)??,
        )
    };
    let hub = Arc::new(hub);
    let relay = state.relay().clone();
    let biller = config
        .billing
        .enabled
        .then(|| tokio::spawn(billing::run_forever(state.clone(), config.billing)));
    let sampler = tokio::spawn(sample_stats(state.clone(), config.stats_interval));
    let app = api::router(state.clone())
        .merge(hub::router(state.clone(), hub.clone()))
        .merge(explorer::router(state.clone(), boot.clone()))
        .merge(boot::router(state, boot.clone(), hub));
    let (stop, stopped) = oneshot::channel::<()>();
    let (stop_all, _) = tokio::sync::watch::channel(false);
    let mut servers = Vec::new();
    for (bound, listener) in listeners {
        servers.push(tokio::spawn(server::serve(
            listener,
            app.clone(),
            config.server,
            stop_all.subscribe(),
        )));
        if bound != addr {
            tracing::info!(addr = %bound, "registry also listening");
        }
    }
    let task = tokio::spawn(async move {
        let _ = stopped.await;
        let _ = stop_all.send(true);
        for server in servers {
            match server.await {
                Ok(r) => r?,
                Err(e) => return Err(io::Error::other(e)),
            }
        }
        Ok(())
    });
    tracing::info!(%addr, data_dir = %config.data_dir.display(), "registry listening");
    Ok(RunningGrid {
        addr,
        store,
        relay,
        boot,
        clock: state_clock,
        billing: config.billing,
        biller,
        sampler,
        stop: Some(stop),
        task: Some(task),
    })
}

/// Samples the grid's totals into their history now and every `interval`, until aborted. A
/// failed sample is logged and the next one tried.
async fn sample_stats(state: state::AppState, interval: Duration) {
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let now = state.now();
        let sampled = state
            .run(move |s| {
                let sample = s.stats(now)?;
                s.record_stats(&sample)
            })
            .await;
        if let Err(e) = sampled {
            tracing::warn!(error = %e, "cannot sample the grid's totals");
        }
    }
}

fn open_store(dir: &Path) -> Result<Arc<dyn Store>, GridError> {
    DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|source| GridError::DataDir {
            path: dir.into(),
            source,
        })?;
    Ok(Arc::new(SqliteStore::open(&dir.join(DATABASE_FILE))?))
}

impl RunningGrid {
    /// The address the grid listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The base URL of the API: `http://ADDR`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The grid's store (tests use it to dump the database).
    pub fn store(&self) -> &Arc<dyn Store> {
        &self.store
    }

    /// The boot service (tests ask it which boot files were fetched).
    pub fn boot(&self) -> &Arc<boot::Boot> {
        &self.boot
    }

    /// Runs the billing now, at the grid's clock (tests advance a
    /// [`clock::ManualClock`] and call it).
    pub async fn bill_now(&self) -> Result<billing::RunSummary, StoreError> {
        let (store, config, now) = (self.store.clone(), self.billing, self.clock.now());
        tokio::task::spawn_blocking(move || billing::run(store.as_ref(), &config, now))
            .await
            .map_err(|e| StoreError::Corrupt(format!("billing task: {e}")))?
    }

    /// Closes the uplinks, stops accepting connections, lets requests in flight finish (at most
    /// [`SHUTDOWN_GRACE`]) and waits for the server to end.
    pub async fn shutdown(mut self) -> Result<(), GridError> {
        self.relay.shut_down();
        if let Some(b) = self.biller.take() {
            b.abort();
        }
        self.sampler.abort();
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        let Some(mut task) = self.task.take() else {
            return Ok(());
        };
        match tokio::time::timeout(SHUTDOWN_GRACE, &mut task).await {
            Ok(joined) => joined.map_err(GridError::Task)?.map_err(GridError::Serve)?,
            Err(_) => {
                tracing::warn!(addr = %self.addr, "requests still running after the grace period: dropping them");
                task.abort();
            }
        }
        tracing::info!(addr = %self.addr, "registry stopped");
        Ok(())
    }
}

impl Drop for RunningGrid {
    fn drop(&mut self) {
        self.relay.shut_down();
        if let Some(b) = self.biller.take() {
            b.abort();
        }
        self.sampler.abort();
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

/// Writes `contents` to `path` atomically: a temporary file in the same directory, flushed,
/// then renamed over `path`. Readers see the old contents or the new, never a part.
pub fn write_file_atomically(path: &Path, contents: &[u8]) -> io::Result<()> {
    use std::io::Write;
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    let name = path
        .file_name()
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "path has no file name"))?;
    let tmp = dir.join(format!(
        ".{}.tmp-{}",
        name.to_string_lossy(),
        std::process::id()
    ));
    let result = (|| {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(contents)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn atomic_write_replaces_and_leaves_no_temporary() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ready");
        write_file_atomically(&path, b"one").unwrap();
        write_file_atomically(&path, b"two").unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"two");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
        assert!(write_file_atomically(&dir.path().join("no/such/dir/ready"), b"x").is_err());
    }
}
