//! The hub: content-addressed flist blocks and the flists that name them.
//!
//! Routes (under the grid's URL; the block part is what `zos_flist::HttpStore` speaks with
//! base `<grid>/api/v1/hub`):
//!
//! | route | auth | what |
//! |---|---|---|
//! | `GET /api/v1/hub/blocks/{hex id}` | none | the block's cipher text; 404 if absent |
//! | `HEAD /api/v1/hub/blocks/{hex id}` | none | 200 if the hub has it, 404 if not |
//! | `PUT /api/v1/hub/blocks/{hex id}` | any registered twin | store a block: the body must hash (BLAKE2b-256) to the id and be at most one encoded block; 201 stored, 200 already there |
//! | `POST /api/v1/hub/blocks/missing` | none | JSON list of at most 1024 hex ids; answers the ones the hub lacks, in the order given |
//! | `POST /api/v1/hub/flists/{name}[?replace=true]` | the owner twin | publish the .fl body as `name` of the signing twin |
//! | `GET /api/v1/hub/flists?twin_id=N` | none | the twin's flists (`zos_flist::hub::FlistInfo`), by name |
//! | `GET /api/v1/hub/flists/{twin_id}/{name}` | none | the .fl bytes the name holds now |
//! | `GET /api/v1/hub/flists/by-hash/{sha256}` | none | the .fl bytes with that SHA-256 |
//!
//! Rules:
//! - Nothing is ever overwritten with other content: a block's id is the hash of its content,
//!   checked before it is stored, and a stored block is never written again; a flist's content is
//!   kept under its SHA-256.
//! - A published flist is validated with the `zos-flist` reader, and refused (400) when it names
//!   blocks the hub lacks, so every flist on the hub mounts from the hub alone.
//! - Names (1 to 128 of `A-Z a-z 0-9 . _ -`, starting with a letter or digit) belong to a twin.
//!   Publishing other content under an existing name is refused (409) unless the request says
//!   `replace=true`; the old content stays reachable by hash, and every version is recorded.
//! - Signed requests use the registry's scheme and replay cache (the [`Signed`] extractor).
//!
//! Storage: its own SQLite file `hub.sqlite` in the grid's data directory (the block index,
//! contents and names; see [`db`]), a block store (by default the directory `hub/blocks`, any
//! `zos_flist` store URL otherwise), and the .fl files in `hub/flists/<sha256>.fl`.
//!
//! [`Signed`]: crate::auth::Signed

pub mod db;
mod routes;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use zos_flist::store::open_url;
use zos_flist::{BlockStore, DirStore, StoreError};

pub use routes::router;

/// Name of the hub's database inside the grid's data directory.
pub const DATABASE_FILE: &str = "hub.sqlite";
/// Largest body of `POST …/blocks/missing`.
pub const MAX_MISSING_BODY: usize = 128 * 1024;

/// How the hub keeps its data.
#[derive(Debug, Clone)]
pub struct HubConfig {
    /// Block store URL (`dir:///…`, `s3://…`); `None`: the directory `hub/blocks` in the data
    /// directory.
    pub blocks: Option<String>,
    /// Largest .fl file accepted.
    pub max_flist_bytes: u64,
}

impl Default for HubConfig {
    fn default() -> Self {
        Self {
            blocks: None,
            max_flist_bytes: zos_flist::hub::DEFAULT_MAX_FLIST_BYTES,
        }
    }
}

/// Failures to open the hub.
#[derive(Debug, thiserror::Error)]
pub enum HubError {
    #[error("cannot prepare hub directory {path}")]
    Dir {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot open the hub database")]
    Db(#[from] db::DbError),
    #[error("cannot open the hub block store")]
    Store(#[from] StoreError),
}

/// The hub's storage: database, block store and flist files.
#[derive(Debug)]
pub struct Hub {
    db: db::HubDb,
    blocks: Arc<dyn BlockStore>,
    dir: PathBuf,
    config: HubConfig,
}

impl Hub {
    /// Opens (creating) the hub's storage in the grid's data directory `data_dir`. Leftover
    /// temporary files of interrupted uploads are removed.
    pub fn open(data_dir: &Path, config: HubConfig) -> Result<Self, HubError> {
        let dir = data_dir.join("hub");
        let mk = |p: &Path| {
            std::fs::create_dir_all(p).map_err(|source| HubError::Dir {
                path: p.to_owned(),
                source,
            })
        };
        mk(&dir.join("flists"))?;
        let tmp = dir.join("tmp");
        if tmp.exists() {
            std::fs::remove_dir_all(&tmp).map_err(|source| HubError::Dir {
                path: tmp.clone(),
                source,
            })?;
        }
        mk(&tmp)?;
        let blocks: Arc<dyn BlockStore> = match &config.blocks {
            Some(url) => open_url(url)?,
            None => Arc::new(DirStore::new(dir.join("blocks"))),
        };
        let db = db::HubDb::open(&data_dir.join(DATABASE_FILE))?;
        tracing::info!(dir = %dir.display(), store = ?blocks, "hub opened");
        Ok(Self {
            db,
            blocks,
            dir,
            config,
        })
    }

    /// The database.
    pub fn db(&self) -> &db::HubDb {
        &self.db
    }

    /// The block store.
    pub fn blocks(&self) -> &Arc<dyn BlockStore> {
        &self.blocks
    }

    /// Where the .fl file with this SHA-256 is kept.
    pub fn flist_path(&self, sha256: &str) -> PathBuf {
        self.dir.join("flists").join(format!("{sha256}.fl"))
    }

    /// The hub's settings.
    pub fn config(&self) -> &HubConfig {
        &self.config
    }

    fn tmp_dir(&self) -> PathBuf {
        self.dir.join("tmp")
    }
}
