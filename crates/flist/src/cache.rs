//! The node's verified block cache, shared by every mount (in one process or many).
//!
//! Layout under the cache directory:
//!
//! ```text
//! v1/blocks/<hex[0..2]>/<hex id>   header (magic, key, length) + plain text
//! v1/tmp/<pid>.<random>            blocks being written
//! v1/lock                          flock taken while evicting
//! ```
//!
//! A block enters the cache only after it was verified (cipher text hashes to its id, plain
//! text to its key). It is written to `tmp/`, fsynced and renamed into place, so a name under
//! `blocks/` always holds a complete block; leftovers in `tmp/` from a crashed process are never
//! read and are removed on the next open. A cached block is served only to a request with the
//! same key. The cache is bounded in bytes: when it grows past its limit, the least recently
//! used blocks (by modification time, refreshed on use) are removed until it is back under
//! 90 % of the limit.

use std::collections::HashMap;
use std::fs::File;
use std::io::{ErrorKind, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use futures::FutureExt;
use futures::future::{BoxFuture, Shared};

use crate::block::{BLOCK_SIZE, BlockError, BlockId, BlockKey, BlockRef, decode, encode};
use crate::store::{BlockStore, StoreError};

const MAGIC: &[u8; 8] = b"ZFLC\x01\0\0\0";
const HEADER: usize = 8 + 32 + 8;
/// A block's use time is refreshed on a hit at most this often.
const TOUCH_EVERY: Duration = Duration::from_secs(60);

/// Problems of the block cache.
#[derive(Debug, thiserror::Error)]
pub enum CacheError {
    #[error("block cache {path}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("fetching the block failed")]
    Store(#[from] StoreError),
    #[error("the block failed verification")]
    Block(#[from] BlockError),
}

/// A verified block in the cache, open for reading.
#[derive(Debug, Clone)]
pub struct CachedBlock {
    file: Arc<File>,
    len: usize,
}

impl CachedBlock {
    /// Plain-text length.
    pub fn len(&self) -> usize {
        self.len
    }

    /// True for an empty block.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Reads plain text at `offset` into `buf`; returns the bytes read.
    pub fn read_at(&self, buf: &mut [u8], offset: usize) -> std::io::Result<usize> {
        if offset >= self.len {
            return Ok(0);
        }
        let want = buf.len().min(self.len - offset);
        let mut done = 0;
        while done < want {
            let n = self
                .file
                .read_at(&mut buf[done..want], (HEADER + offset + done) as u64)?;
            if n == 0 {
                return Err(std::io::Error::new(
                    ErrorKind::UnexpectedEof,
                    "cached block is shorter than its header says",
                ));
            }
            done += n;
        }
        Ok(done)
    }

    /// The whole plain text.
    pub fn read_all(&self) -> std::io::Result<Vec<u8>> {
        let mut v = vec![0u8; self.len];
        self.read_at(&mut v, 0)?;
        Ok(v)
    }
}

/// Size of the cache.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize)]
pub struct Usage {
    pub blocks: u64,
    pub bytes: u64,
}

/// Result of [`BlockCache::check`].
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct CheckReport {
    pub usage: Usage,
    /// Files under `blocks/` that do not hold the verified block their name says.
    pub bad: Vec<PathBuf>,
    /// Files left in `tmp/`.
    pub temp_files: u64,
}

type Fetch = Shared<BoxFuture<'static, Result<CachedBlock, Arc<CacheError>>>>;

/// The verified, bounded, crash-safe block cache of a node.
#[derive(Debug)]
pub struct BlockCache {
    dir: PathBuf,
    max_bytes: u64,
    approx: Mutex<(u64, u64)>,
    inflight: Mutex<HashMap<BlockId, Fetch>>,
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> CacheError + '_ {
    move |source| CacheError::Io {
        path: path.to_owned(),
        source,
    }
}

fn pid_alive(pid: u32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
}

impl BlockCache {
    /// Opens (creating if needed) the cache in `dir`, bounded to `max_bytes`. Removes what
    /// crashed writers left behind.
    pub fn open(dir: &Path, max_bytes: u64) -> Result<Arc<Self>, CacheError> {
        let dir = dir.join("v1");
        for d in [dir.join("blocks"), dir.join("tmp")] {
            std::fs::create_dir_all(&d).map_err(io_err(&d))?;
        }
        let cache = Arc::new(Self {
            dir,
            max_bytes,
            approx: Mutex::new((0, 0)),
            inflight: Mutex::new(HashMap::new()),
        });
        cache.clean_tmp()?;
        let usage = cache.usage()?;
        *cache.approx.lock().unwrap() = (usage.bytes, 0);
        if usage.bytes > max_bytes {
            cache.evict()?;
        }
        Ok(cache)
    }

    /// The limit in bytes.
    pub fn max_bytes(&self) -> u64 {
        self.max_bytes
    }

    fn tmp_dir(&self) -> PathBuf {
        self.dir.join("tmp")
    }

    /// Where the block `id` is kept.
    pub fn path_of(&self, id: &BlockId) -> PathBuf {
        let h = id.to_hex();
        self.dir.join("blocks").join(&h[..2]).join(h)
    }

    fn clean_tmp(&self) -> Result<(), CacheError> {
        let tmp = self.tmp_dir();
        let old = SystemTime::now() - Duration::from_secs(3600);
        for e in std::fs::read_dir(&tmp).map_err(io_err(&tmp))? {
            let Ok(e) = e else { continue };
            let name = e.file_name().to_string_lossy().into_owned();
            let pid = name.split('.').next().and_then(|p| p.parse::<u32>().ok());
            let stale_age = e
                .metadata()
                .and_then(|m| m.modified())
                .map(|t| t < old)
                .unwrap_or(true);
            let dead = match pid {
                Some(p) => p != std::process::id() && !pid_alive(p),
                None => true,
            };
            if dead || stale_age {
                let _ = std::fs::remove_file(e.path());
            }
        }
        Ok(())
    }

    fn files(&self) -> Result<Vec<(PathBuf, u64, SystemTime)>, CacheError> {
        let blocks = self.dir.join("blocks");
        let mut out = Vec::new();
        for sub in std::fs::read_dir(&blocks).map_err(io_err(&blocks))? {
            let Ok(sub) = sub else { continue };
            let Ok(rd) = std::fs::read_dir(sub.path()) else {
                continue;
            };
            for e in rd.flatten() {
                if let Ok(m) = e.metadata()
                    && m.is_file()
                {
                    out.push((
                        e.path(),
                        m.len(),
                        m.modified().unwrap_or(SystemTime::UNIX_EPOCH),
                    ));
                }
            }
        }
        Ok(out)
    }

    /// Counts what the cache holds now (all processes included).
    pub fn usage(&self) -> Result<Usage, CacheError> {
        let files = self.files()?;
        Ok(Usage {
            blocks: files.len() as u64,
            bytes: files.iter().map(|f| f.1).sum(),
        })
    }

    /// Whether the block `id` is cached.
    pub fn contains(&self, id: &BlockId) -> bool {
        self.path_of(id).is_file()
    }

    /// The cached block, if the cache holds it for this key.
    pub fn lookup(&self, block: &BlockRef) -> Result<Option<CachedBlock>, CacheError> {
        let path = self.path_of(&block.id);
        let file = match File::open(&path) {
            Ok(f) => f,
            Err(e) if e.kind() == ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(io_err(&path)(e)),
        };
        let mut head = [0u8; HEADER];
        let meta = file.metadata().map_err(io_err(&path))?;
        if file.read_exact_at(&mut head, 0).is_err() || &head[..8] != MAGIC {
            tracing::warn!(path = %path.display(), "cache file has a bad header; ignoring it");
            return Ok(None);
        }
        let len = u64::from_le_bytes(head[40..48].try_into().expect("8 bytes"));
        if meta.len() != HEADER as u64 + len || len > BLOCK_SIZE as u64 {
            tracing::warn!(path = %path.display(), "cache file has a bad length; ignoring it");
            return Ok(None);
        }
        if head[8..40] != block.key.0 {
            // Cached for another key: a request with this key would not verify anyway.
            return Ok(None);
        }
        if let Ok(m) = meta.modified()
            && m.elapsed().map(|d| d > TOUCH_EVERY).unwrap_or(true)
        {
            let _ = file.set_modified(SystemTime::now());
        }
        Ok(Some(CachedBlock {
            file: Arc::new(file),
            len: len as usize,
        }))
    }

    /// The block, from the cache or fetched from `store`, verified and cached. Concurrent
    /// requests for one block share one fetch. A block that fails verification is logged,
    /// not cached, and reported as an error.
    pub async fn get(
        self: &Arc<Self>,
        block: &BlockRef,
        store: &Arc<dyn BlockStore>,
    ) -> Result<CachedBlock, Arc<CacheError>> {
        if let Some(hit) = self.lookup(block).map_err(Arc::new)? {
            return Ok(hit);
        }
        let fetch = {
            let mut inflight = self.inflight.lock().unwrap();
            match inflight.get(&block.id) {
                Some(f) => f.clone(),
                None => {
                    let (this, store, block) = (self.clone(), store.clone(), *block);
                    let f = async move {
                        let r = this.fetch(&block, store).await.map_err(Arc::new);
                        this.inflight.lock().unwrap().remove(&block.id);
                        r
                    }
                    .boxed()
                    .shared();
                    inflight.insert(block.id, f.clone());
                    f
                }
            }
        };
        fetch.await
    }

    async fn fetch(
        self: &Arc<Self>,
        block: &BlockRef,
        store: Arc<dyn BlockStore>,
    ) -> Result<CachedBlock, CacheError> {
        let data = store.get(&block.id).await?;
        let (this, block) = (self.clone(), *block);
        tokio::task::spawn_blocking(move || {
            let plain = if crate::legacy::is_legacy(&block) {
                crate::legacy::decode_block(&block, &data)
            } else {
                decode(&block, &data)
            }
            .inspect_err(|e| {
                tracing::error!(block = %block.id, error = %e, "block from the store failed verification");
            })?;
            this.insert(&block.key, &block.id, &plain)
        })
        .await
        .unwrap_or_else(|e| {
            if e.is_panic() {
                std::panic::resume_unwind(e.into_panic());
            }
            Err(CacheError::Io {
                path: self.dir.clone(),
                source: std::io::Error::new(ErrorKind::Interrupted, "the mount is shutting down"),
            })
        })
    }

    /// Writes a verified block: temp file, fsync, rename.
    fn insert(
        &self,
        key: &BlockKey,
        id: &BlockId,
        plain: &[u8],
    ) -> Result<CachedBlock, CacheError> {
        let path = self.path_of(id);
        let dir = path.parent().expect("nested");
        std::fs::create_dir_all(dir).map_err(io_err(dir))?;
        let tmp_dir = self.tmp_dir();
        let mut tmp = tempfile::Builder::new()
            .prefix(&format!("{}.", std::process::id()))
            .tempfile_in(&tmp_dir)
            .map_err(io_err(&tmp_dir))?;
        let mut head = Vec::with_capacity(HEADER);
        head.extend_from_slice(MAGIC);
        head.extend_from_slice(&key.0);
        head.extend_from_slice(&(plain.len() as u64).to_le_bytes());
        tmp.write_all(&head)
            .and_then(|_| tmp.write_all(plain))
            .and_then(|_| tmp.as_file().sync_data())
            .map_err(io_err(tmp.path()))?;
        let file = tmp.persist(&path).map_err(|e| io_err(&path)(e.error))?;
        let size = (HEADER + plain.len()) as u64;
        let over = {
            let mut a = self.approx.lock().unwrap();
            a.0 += size;
            a.1 += size;
            a.0 > self.max_bytes || a.1 > self.max_bytes / 20
        };
        if over {
            self.evict()?;
        }
        Ok(CachedBlock {
            file: Arc::new(file),
            len: plain.len(),
        })
    }

    /// Recounts the cache and, when it is over its limit, removes the least recently used
    /// blocks until it is under 90 % of it. Serialized across processes by a file lock.
    pub fn evict(&self) -> Result<Usage, CacheError> {
        let lock_path = self.dir.join("lock");
        let lock = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(io_err(&lock_path))?;
        lock.lock().map_err(io_err(&lock_path))?;
        let mut files = self.files()?;
        let mut total: u64 = files.iter().map(|f| f.1).sum();
        let mut removed = 0u64;
        if total > self.max_bytes {
            let target = self.max_bytes / 10 * 9;
            files.sort_by_key(|f| f.2);
            for (path, size, _) in &files {
                if total <= target {
                    break;
                }
                if std::fs::remove_file(path).is_ok() {
                    total -= size;
                    removed += 1;
                }
            }
            tracing::debug!(removed, bytes = total, "block cache evicted");
        }
        *self.approx.lock().unwrap() = (total, 0);
        let _ = lock.unlock();
        Ok(Usage {
            blocks: files.len() as u64 - removed,
            bytes: total,
        })
    }

    /// Re-verifies every cached block (plain text against its key, and the key and plain text
    /// against the id by re-encoding). For tests and repair; reads the whole cache.
    pub fn check(&self) -> Result<CheckReport, CacheError> {
        let mut report = CheckReport::default();
        for (path, size, _) in self.files()? {
            report.usage.blocks += 1;
            report.usage.bytes += size;
            let ok = (|| {
                let data = std::fs::read(&path).ok()?;
                if data.len() < HEADER || &data[..8] != MAGIC {
                    return None;
                }
                let key = BlockKey::from_slice(&data[8..40])?;
                let len = u64::from_le_bytes(data[40..48].try_into().ok()?) as usize;
                let plain = &data[HEADER..];
                if plain.len() != len {
                    return None;
                }
                let name = path.file_name()?.to_str()?;
                let id: BlockId = name.parse().ok()?;
                if crate::legacy::is_legacy(&BlockRef { id, key }) {
                    // The stored form of a legacy block depends on the compressor that made
                    // it; only the plain text can be checked (against the key).
                    let want = crate::legacy::split(&BlockRef { id, key }).1;
                    return (crate::legacy::blake2b_128(plain) == want).then_some(());
                }
                let e = encode(plain);
                (e.block.key == key && e.block.id.to_hex() == name).then_some(())
            })();
            if ok.is_none() {
                report.bad.push(path);
            }
        }
        report.temp_files = std::fs::read_dir(self.tmp_dir())
            .map(|r| r.count() as u64)
            .unwrap_or(0);
        Ok(report)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::DirStore;

    #[tokio::test]
    async fn fetch_verify_cache_and_evict() {
        let d = tempfile::tempdir().unwrap();
        let store: Arc<dyn BlockStore> = Arc::new(DirStore::new(d.path().join("store")));
        let mut refs = Vec::new();
        for i in 0..8u8 {
            let plain = vec![i; 100_000];
            let e = encode(&plain);
            store.put(&e.block.id, &e.data).await.unwrap();
            refs.push((e.block, plain));
        }
        // limit: room for about five blocks
        let cache = BlockCache::open(&d.path().join("cache"), 5 * 100_100).unwrap();
        for (b, plain) in &refs {
            let got = cache.get(b, &store).await.unwrap();
            assert_eq!(&got.read_all().unwrap(), plain);
        }
        let u = cache.usage().unwrap();
        assert!(u.bytes <= 5 * 100_100, "bounded: {u:?}");
        assert!(u.blocks >= 3, "{u:?}");
        let report = cache.check().unwrap();
        assert!(report.bad.is_empty());
        // a wrong key is not served from the cache
        let (b, _) = refs[7];
        assert!(cache.lookup(&b).unwrap().is_some());
        let wrong = BlockRef {
            id: b.id,
            key: BlockKey([1; 32]),
        };
        assert!(cache.lookup(&wrong).unwrap().is_none());
        assert!(cache.get(&wrong, &store).await.is_err());
        // a half-written temp file of a dead process is removed on open
        let tmp = d.path().join("cache/v1/tmp/999999999.abc");
        std::fs::write(&tmp, b"partial").unwrap();
        let again = BlockCache::open(&d.path().join("cache"), 5 * 100_100).unwrap();
        assert!(!tmp.exists());
        assert!(again.lookup(&b).unwrap().is_some());
    }

    #[tokio::test]
    async fn tampered_block_is_not_cached() {
        let d = tempfile::tempdir().unwrap();
        let ds = DirStore::new(d.path().join("store"));
        let e = encode(b"precious data");
        ds.put(&e.block.id, &e.data).await.unwrap();
        let mut bad = e.data.clone();
        bad[0] ^= 0xff;
        std::fs::write(ds.path_of(&e.block.id), &bad).unwrap();
        let store: Arc<dyn BlockStore> = Arc::new(ds);
        let cache = BlockCache::open(&d.path().join("cache"), 1 << 30).unwrap();
        let err = cache.get(&e.block, &store).await.unwrap_err();
        assert!(matches!(
            *err,
            CacheError::Block(BlockError::IdMismatch { .. })
        ));
        assert!(!cache.contains(&e.block.id));
        assert_eq!(cache.usage().unwrap().blocks, 0);
    }
}
