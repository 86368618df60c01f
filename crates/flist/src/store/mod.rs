//! Block stores: where the encrypted blocks of flists live.
//!
//! A [`BlockStore`] keeps opaque cipher texts under their [`BlockId`]. Implementations:
//! [`DirStore`] (a local directory, rfs `dir://` layout), [`HttpStore`] (the hub's block API,
//! which also reads rfs `http://` stores), [`S3Store`] (S3-compatible object storage, rfs `s3://`
//! URLs), [`RedisStore`] (0-db over the Redis protocol: legacy `redis://` and rfs `zdb://`), and
//! the [`Router`], which sends each block to the
//! stores whose range holds the first byte of its id, as the FL `route` table says.

mod dir;
mod http;
mod redis;
mod s3;

use std::fmt;
use std::sync::Arc;

pub use dir::DirStore;
pub use http::{HttpStore, MAX_REDIRECTS, MISSING_BATCH, same_origin_redirects};
pub use redis::{RedisStore, ZDB_PORT};
pub use s3::S3Store;

use crate::block::BlockId;
use crate::meta::Route;

/// Problems talking to a block store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("block {id} is not in store {store}")]
    NotFound { id: BlockId, store: String },
    #[error("no store route covers block {id}")]
    NotRoutable { id: BlockId },
    #[error("store {store}: {what}")]
    Io {
        store: String,
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error("store {store}: request {url} failed")]
    Http {
        store: String,
        url: String,
        #[source]
        source: reqwest::Error,
    },
    #[error("store {store}: {url} answered {status}")]
    Status {
        store: String,
        url: String,
        status: u16,
    },
    #[error("store {store}: {detail}")]
    Protocol { store: String, detail: String },
    #[error("store {store}: block {id} does not hash to its id; refused")]
    BadData { store: String, id: BlockId },
    #[error("store url {url:?}: {reason}")]
    BadUrl { url: String, reason: String },
    #[error(
        "store url {url:?}: scheme {scheme:?} is not supported (use dir://, http(s)://, s3://, \
         redis:// or zdb://)"
    )]
    Unsupported { url: String, scheme: String },
    #[error("block {id}: every store failed")]
    AllFailed {
        id: BlockId,
        #[source]
        last: Box<StoreError>,
    },
}

impl StoreError {
    /// True when the store answered that it does not have the block.
    pub fn is_not_found(&self) -> bool {
        match self {
            StoreError::NotFound { .. } | StoreError::NotRoutable { .. } => true,
            StoreError::AllFailed { last, .. } => last.is_not_found(),
            _ => false,
        }
    }
}

/// A content-addressed store of encrypted blocks.
#[async_trait::async_trait]
pub trait BlockStore: Send + Sync + fmt::Debug {
    /// The cipher text stored under `id` (not yet verified: callers decode and verify).
    async fn get(&self, id: &BlockId) -> Result<Vec<u8>, StoreError>;

    /// Stores `data` under `id`; storing the same block twice is harmless.
    async fn put(&self, id: &BlockId, data: &[u8]) -> Result<(), StoreError>;

    /// Whether the store holds `id`.
    async fn exists(&self, id: &BlockId) -> Result<bool, StoreError>;

    /// The ids among `ids` that the store lacks, in the order given.
    async fn missing(&self, ids: &[BlockId]) -> Result<Vec<BlockId>, StoreError> {
        let mut out = Vec::new();
        for id in ids {
            if !self.exists(id).await? {
                out.push(*id);
            }
        }
        Ok(out)
    }

    /// The routes to write into a flist packed to this store (empty when the store has no URL
    /// that a reader could open).
    fn routes(&self) -> Vec<Route>;
}

/// Opens the store named by a route URL: `dir:///path`, `http://…` or `https://…` (a hub's
/// `…/blocks` endpoint or an rfs HTTP store), `s3://…` or `s3s://…` (a bucket), `redis://…` or
/// `zdb://…` (a 0-db namespace over the Redis protocol).
pub fn open_url(url: &str) -> Result<Arc<dyn BlockStore>, StoreError> {
    let parsed = reqwest::Url::parse(url).map_err(|e| StoreError::BadUrl {
        url: url.to_string(),
        reason: e.to_string(),
    })?;
    match parsed.scheme() {
        "dir" => Ok(Arc::new(DirStore::new(parsed.path()))),
        "http" | "https" => Ok(Arc::new(HttpStore::from_blocks_url(parsed)?)),
        "s3" | "s3s" => Ok(Arc::new(S3Store::from_url(url)?)),
        "redis" | "zdb" => Ok(Arc::new(RedisStore::from_url(url)?)),
        other => Err(StoreError::Unsupported {
            url: url.to_string(),
            scheme: other.to_string(),
        }),
    }
}

/// Removes a password from a URL, as rfs does before writing a route.
pub fn strip_password(url: &str) -> String {
    match reqwest::Url::parse(url) {
        Ok(mut u) if u.password().is_some() => {
            let _ = u.set_password(None);
            u.to_string()
        }
        _ => url.to_string(),
    }
}

/// Stores by the first byte of the block id. A get tries each matching store in order until
/// one has the block; a put writes to every matching store.
#[derive(Debug, Clone, Default)]
pub struct Router {
    routes: Vec<(u8, u8, Arc<dyn BlockStore>)>,
}

impl Router {
    /// An empty router (routes nothing).
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a store for ids whose first byte is in `start..=end`.
    pub fn add(&mut self, start: u8, end: u8, store: Arc<dyn BlockStore>) {
        self.routes.push((start, end, store));
    }

    /// Builds the router a flist describes, opening each route's URL. Routes whose URL cannot
    /// be opened are skipped with a warning; an error is returned only if none opens.
    pub fn from_routes(routes: &[Route]) -> Result<Self, StoreError> {
        let mut r = Router::new();
        let mut last = None;
        for route in routes {
            match open_url(&route.url) {
                Ok(s) => r.add(route.start, route.end, s),
                Err(e) => {
                    tracing::warn!(url = %route.url, error = %e, "skipping flist route");
                    last = Some(e);
                }
            }
        }
        match (r.routes.is_empty(), last) {
            (true, Some(e)) => Err(e),
            _ => Ok(r),
        }
    }

    fn matching(&self, id: &BlockId) -> impl Iterator<Item = &Arc<dyn BlockStore>> {
        let b = id.0[0];
        self.routes
            .iter()
            .filter(move |(s, e, _)| *s <= b && b <= *e)
            .map(|(_, _, st)| st)
    }
}

#[async_trait::async_trait]
impl BlockStore for Router {
    async fn get(&self, id: &BlockId) -> Result<Vec<u8>, StoreError> {
        let mut last = None;
        for s in self.matching(id) {
            match s.get(id).await {
                Ok(d) => return Ok(d),
                Err(e) => {
                    if !e.is_not_found() {
                        tracing::debug!(block = %id, store = ?s, error = %e, "store failed");
                    }
                    last = Some(e)
                }
            }
        }
        match last {
            None => Err(StoreError::NotRoutable { id: *id }),
            Some(e) if e.is_not_found() => Err(e),
            Some(e) => Err(StoreError::AllFailed {
                id: *id,
                last: Box::new(e),
            }),
        }
    }

    async fn put(&self, id: &BlockId, data: &[u8]) -> Result<(), StoreError> {
        let mut any = false;
        for s in self.matching(id) {
            any = true;
            s.put(id, data).await?;
        }
        if !any {
            return Err(StoreError::NotRoutable { id: *id });
        }
        Ok(())
    }

    async fn exists(&self, id: &BlockId) -> Result<bool, StoreError> {
        for s in self.matching(id) {
            if !s.exists(id).await? {
                return Ok(false);
            }
        }
        Ok(self.matching(id).next().is_some())
    }

    async fn missing(&self, ids: &[BlockId]) -> Result<Vec<BlockId>, StoreError> {
        // A block is missing when any store that should hold it lacks it.
        let mut lacking = std::collections::HashSet::new();
        for (i, (_, _, s)) in self.routes.iter().enumerate() {
            let mine: Vec<BlockId> = ids
                .iter()
                .filter(|id| self.routes[i].0 <= id.0[0] && id.0[0] <= self.routes[i].1)
                .copied()
                .collect();
            if mine.is_empty() {
                continue;
            }
            lacking.extend(s.missing(&mine).await?);
        }
        Ok(ids
            .iter()
            .filter(|id| lacking.contains(*id) || self.matching(id).next().is_none())
            .copied()
            .collect())
    }

    fn routes(&self) -> Vec<Route> {
        let mut out = Vec::new();
        for (start, end, s) in &self.routes {
            for r in s.routes() {
                // Intersect the inner store's range with this route's range.
                let (a, b) = (r.start.max(*start), r.end.min(*end));
                if a <= b {
                    out.push(Route {
                        start: a,
                        end: b,
                        url: r.url,
                    });
                }
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::block::encode;

    #[tokio::test]
    async fn router_sends_blocks_by_first_byte() {
        let d = tempfile::tempdir().unwrap();
        let low = Arc::new(DirStore::new(d.path().join("low")));
        let high = Arc::new(DirStore::new(d.path().join("high")));
        let mut r = Router::new();
        r.add(0x00, 0x7f, low.clone());
        r.add(0x80, 0xff, high.clone());
        let mut seen = [false; 2];
        for i in 0..64u32 {
            let b = encode(&i.to_le_bytes());
            r.put(&b.block.id, &b.data).await.unwrap();
            let lo = b.block.id.0[0] < 0x80;
            seen[lo as usize] = true;
            assert_eq!(low.exists(&b.block.id).await.unwrap(), lo);
            assert_eq!(high.exists(&b.block.id).await.unwrap(), !lo);
            assert_eq!(r.get(&b.block.id).await.unwrap(), b.data);
        }
        assert!(seen[0] && seen[1]);
        let routes = r.routes();
        assert_eq!(routes.len(), 2);
        assert_eq!((routes[0].start, routes[0].end), (0, 0x7f));
        assert!(routes[0].url.starts_with("dir:///"));

        let absent = encode(b"absent").block.id;
        let err = r.get(&absent).await.unwrap_err();
        assert!(err.is_not_found(), "{err}");
        assert_eq!(r.missing(&[absent]).await.unwrap(), vec![absent]);

        let mut partial = Router::new();
        partial.add(0, 0, low);
        let id = BlockId([0x42; 32]);
        assert!(matches!(
            partial.put(&id, b"x").await,
            Err(StoreError::NotRoutable { .. })
        ));
    }

    #[test]
    fn urls() {
        assert!(matches!(
            open_url("server://hub.example/x"),
            Err(StoreError::Unsupported { .. })
        ));
        // 0-db over the Redis protocol: rfs's zdb:// (port 9900 by default) and 0-fs's
        // redis:// (port required); a unix socket is not supported.
        assert!(open_url("zdb://hub.example").is_ok());
        assert!(open_url("zdb://:pw@hub.example:9900/ns").is_ok());
        assert!(open_url("redis://hub.example:9900/ns").is_ok());
        let e = open_url("redis://hub.example").unwrap_err().to_string();
        assert!(e.contains("no port"), "{e}");
        let e = open_url("zdb:///run/zdb.sock").unwrap_err().to_string();
        assert!(e.contains("unix socket"), "{e}");
        assert!(open_url("not a url").is_err());
        assert!(open_url("dir:///tmp/x").is_ok());
        assert_eq!(
            strip_password("s3://user:secret@host:9000/bucket"),
            "s3://user@host:9000/bucket"
        );
    }
}
