//! `zos-zdb`: a key-value server compatible with 0-db, the store the grid's backups, object
//! storage, QSFS and flist block stores use.
//!
//! It speaks the Redis protocol with 0-db's commands and semantics (SET answers with the key,
//! namespaces selected with a password, sequential-key namespaces, an admin password for the
//! namespace commands). Each namespace is a directory of append-only data files whose records
//! each carry a checksum; the index lives in memory and is rebuilt from the data files at start,
//! cutting off a record a crash left half-written (see [`store`]). `docs/zdb.md` lists the
//! commands, the formats and the limits.
//!
//! ```no_run
//! # async fn run() -> Result<(), zos_zdb::Error> {
//! let config = zos_zdb::Config::new("127.0.0.1:9900".parse().unwrap(), "/mnt/hdd0/zdb".into());
//! let server = zos_zdb::Server::bind(config).await?;
//! server.serve().await
//! # }
//! ```

pub mod resp;
mod server;
pub mod store;

pub use server::Server;
pub use store::{Fsync, Mode};

use std::net::SocketAddr;
use std::path::PathBuf;

/// What a server listens on, where it keeps its data and who may administer it.
#[derive(Debug, Clone)]
pub struct Config {
    /// The TCP address to listen on (port 0 takes a free port; see [`Server::local_addr`]).
    pub listen: SocketAddr,
    /// The directory holding one subdirectory per namespace; created when missing.
    pub data_dir: PathBuf,
    /// The password of AUTH for the admin commands (NSNEW, NSDEL, NSSET, STOP, SET with a
    /// timestamp). It also protects the `default` namespace: without AUTH or
    /// `SELECT default <password>`, `default` is read-only. With no admin password every client
    /// is an admin (for tests and local use only).
    pub admin_password: Option<String>,
    /// The most namespaces, `default` included; NSNEW beyond it is refused.
    pub max_namespaces: usize,
    /// The size at which a data file is closed and the next one started.
    pub datafile_size: u64,
    /// When written data is synced to the disk.
    pub fsync: Fsync,
    /// Request size limits (the largest value, the most arguments).
    pub limits: resp::Limits,
}

impl Config {
    /// A configuration with the defaults: no admin password, 4096 namespaces, 256 MiB data
    /// files, a sync every second, values up to 8 MiB.
    pub fn new(listen: SocketAddr, data_dir: PathBuf) -> Self {
        Self {
            listen,
            data_dir,
            admin_password: None,
            max_namespaces: 4096,
            datafile_size: 256 * 1024 * 1024,
            fsync: Fsync::default(),
            limits: resp::Limits::default(),
        }
    }
}

/// Why the server could not start or stopped.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot listen on {addr}")]
    Listen {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot use data directory {path}")]
    DataDir {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot open namespace {name}")]
    Namespace {
        name: String,
        #[source]
        source: store::StoreError,
    },
    #[error("accepting connections failed")]
    Accept(#[source] std::io::Error),
}
