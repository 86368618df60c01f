use std::io::{ErrorKind, Write};
use std::path::{Path, PathBuf};

use super::{BlockStore, StoreError};
use crate::block::{BlockId, MAX_ENCODED_SIZE, hash};
use crate::meta::Route;

/// A store in a local directory, in the layout of current rfs: `<root>/<hex[0..2]>/<hex>`.
/// Reads also accept the flat `<root>/<hex>` that rfs 2.0.x (the version Zero-OS ships) writes
/// and reads; [`DirStore::flat`] writes that layout for stores such an rfs must read. Writes are
/// atomic: a block appears under its name only complete, and only if its content hashes to its
/// id.
#[derive(Debug, Clone)]
pub struct DirStore {
    root: PathBuf,
    flat: bool,
}

impl DirStore {
    /// A store rooted at `root` (created on the first write).
    pub fn new(root: impl AsRef<Path>) -> Self {
        let root = root.as_ref();
        let root = std::path::absolute(root).unwrap_or_else(|_| root.to_owned());
        Self { root, flat: false }
    }

    /// A store that writes the flat `<root>/<hex>` layout of rfs 2.0.x.
    pub fn flat(root: impl AsRef<Path>) -> Self {
        Self {
            flat: true,
            ..Self::new(root)
        }
    }

    /// The directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Where a block is written.
    pub fn path_of(&self, id: &BlockId) -> PathBuf {
        let h = id.to_hex();
        if self.flat {
            return self.root.join(h);
        }
        self.root.join(&h[..2]).join(h)
    }

    fn name(&self) -> String {
        self.root.display().to_string()
    }

    fn io(&self, what: String, source: std::io::Error) -> StoreError {
        StoreError::Io {
            store: self.name(),
            what,
            source,
        }
    }

    fn get_sync(&self, id: &BlockId) -> Result<Vec<u8>, StoreError> {
        let h = id.to_hex();
        let nested = self.root.join(&h[..2]).join(&h);
        let flat = self.root.join(&h);
        for p in [&nested, &flat] {
            match std::fs::File::open(p) {
                Ok(f) => {
                    use std::io::Read;
                    let mut data = Vec::new();
                    f.take(MAX_ENCODED_SIZE as u64 + 1)
                        .read_to_end(&mut data)
                        .map_err(|e| self.io(format!("read {}", p.display()), e))?;
                    if data.len() > MAX_ENCODED_SIZE {
                        return Err(StoreError::Protocol {
                            store: self.name(),
                            detail: format!("{} is larger than any block", p.display()),
                        });
                    }
                    return Ok(data);
                }
                Err(e) if e.kind() == ErrorKind::NotFound => continue,
                Err(e) => return Err(self.io(format!("open {}", p.display()), e)),
            }
        }
        Err(StoreError::NotFound {
            id: *id,
            store: self.name(),
        })
    }

    fn put_sync(&self, id: &BlockId, data: &[u8]) -> Result<(), StoreError> {
        if hash(data) != id.0 {
            return Err(StoreError::BadData {
                store: self.name(),
                id: *id,
            });
        }
        let path = self.path_of(id);
        if path.exists() {
            return Ok(());
        }
        let dir = path.parent().expect("a path under the root");
        std::fs::create_dir_all(dir)
            .map_err(|e| self.io(format!("create {}", dir.display()), e))?;
        let mut tmp = tempfile::Builder::new()
            .prefix(".tmp-")
            .tempfile_in(dir)
            .map_err(|e| self.io(format!("create a temp file in {}", dir.display()), e))?;
        tmp.write_all(data)
            .and_then(|_| tmp.as_file().sync_data())
            .map_err(|e| self.io(format!("write {}", tmp.path().display()), e))?;
        tmp.persist(&path)
            .map_err(|e| self.io(format!("rename to {}", path.display()), e.error))?;
        // Blocks are public cipher text; make them readable like rfs does.
        use std::os::unix::fs::PermissionsExt;
        let _ = std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644));
        Ok(())
    }

    fn exists_sync(&self, id: &BlockId) -> bool {
        let h = id.to_hex();
        self.root.join(&h[..2]).join(&h).exists() || self.root.join(&h).exists()
    }
}

async fn blocking<T: Send + 'static>(
    root: &Path,
    f: impl FnOnce() -> Result<T, StoreError> + Send + 'static,
) -> Result<T, StoreError> {
    match tokio::task::spawn_blocking(f).await {
        Ok(r) => r,
        Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
        Err(_) => Err(StoreError::Io {
            store: root.display().to_string(),
            what: "the runtime is shutting down".into(),
            source: std::io::Error::from(ErrorKind::Interrupted),
        }),
    }
}

#[async_trait::async_trait]
impl BlockStore for DirStore {
    async fn get(&self, id: &BlockId) -> Result<Vec<u8>, StoreError> {
        let (s, id) = (self.clone(), *id);
        blocking(&self.root, move || s.get_sync(&id)).await
    }

    async fn put(&self, id: &BlockId, data: &[u8]) -> Result<(), StoreError> {
        let (s, id, data) = (self.clone(), *id, data.to_vec());
        blocking(&self.root, move || s.put_sync(&id, &data)).await
    }

    async fn exists(&self, id: &BlockId) -> Result<bool, StoreError> {
        let (s, id) = (self.clone(), *id);
        blocking(&self.root, move || Ok(s.exists_sync(&id))).await
    }

    async fn missing(&self, ids: &[BlockId]) -> Result<Vec<BlockId>, StoreError> {
        let (s, ids) = (self.clone(), ids.to_vec());
        blocking(&self.root, move || {
            Ok(ids.into_iter().filter(|i| !s.exists_sync(i)).collect())
        })
        .await
    }

    fn routes(&self) -> Vec<Route> {
        vec![Route::all(format!("dir://{}", self.root.display()))]
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::block::encode;

    #[tokio::test]
    async fn put_get_layout_and_refusals() {
        let d = tempfile::tempdir().unwrap();
        let s = DirStore::new(d.path());
        let b = encode(b"some block");
        assert!(!s.exists(&b.block.id).await.unwrap());
        s.put(&b.block.id, &b.data).await.unwrap();
        s.put(&b.block.id, &b.data).await.unwrap();
        let h = b.block.id.to_hex();
        assert!(d.path().join(&h[..2]).join(&h).is_file());
        assert_eq!(s.get(&b.block.id).await.unwrap(), b.data);
        // wrong content for an id is refused and not stored
        let other = encode(b"other");
        assert!(matches!(
            s.put(&other.block.id, &b.data).await,
            Err(StoreError::BadData { .. })
        ));
        assert!(!s.exists(&other.block.id).await.unwrap());
        // legacy flat layout is read
        std::fs::write(d.path().join(other.block.id.to_hex()), &other.data).unwrap();
        assert_eq!(s.get(&other.block.id).await.unwrap(), other.data);
        assert_eq!(
            s.missing(&[b.block.id, BlockId([9; 32])]).await.unwrap(),
            vec![BlockId([9; 32])]
        );
        assert!(s.get(&BlockId([9; 32])).await.unwrap_err().is_not_found());
        let flat = DirStore::flat(d.path().join("flat"));
        flat.put(&b.block.id, &b.data).await.unwrap();
        assert!(d.path().join("flat").join(&h).is_file());
        assert_eq!(flat.get(&b.block.id).await.unwrap(), b.data);
    }
}
