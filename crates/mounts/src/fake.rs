//! An in-memory [`FlistManager`] with the real one's rules (names, URLs, writable directories,
//! conflicts, idempotence, the paths `open_file` refuses), for tests of the managers that use
//! flists, without root, FUSE or a hub. `conformance::run` holds it to the real one.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use super::{FlistError, FlistManager, MountInfo, Reconciled, check_name};

/// The fake: mounts are records; a URL's "hash" is the SHA-256 of the URL itself.
#[derive(Debug)]
pub struct MemoryFlists {
    root: PathBuf,
    prefix: String,
    mounts: Mutex<BTreeMap<String, MountInfo>>,
    fail: Mutex<Option<String>>,
    fail_of: Mutex<Option<(String, String)>>,
}

impl MemoryFlists {
    /// A fake whose mount points would be `<root>/<prefix><name>` (nothing is made there).
    pub fn new(root: impl Into<PathBuf>, prefix: &str) -> Self {
        Self {
            root: root.into(),
            prefix: prefix.into(),
            mounts: Mutex::new(BTreeMap::new()),
            fail: Mutex::new(None),
            fail_of: Mutex::new(None),
        }
    }

    /// Where the mount `name` is (or would be).
    pub fn mountpoint(&self, name: &str) -> PathBuf {
        self.root.join(super::global_name(&self.prefix, name))
    }

    /// Makes the next mount fail with `message` (as a fetch failure of its URL would).
    pub fn fail_next_mount(&self, message: &str) {
        *self.fail.lock().unwrap_or_else(|e| e.into_inner()) = Some(message.into());
    }

    /// Makes the next mount named `name` fail with `message`.
    pub fn fail_next_mount_of(&self, name: &str, message: &str) {
        *self.fail_of.lock().unwrap_or_else(|e| e.into_inner()) =
            Some((name.into(), message.into()));
    }

    fn mounts(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, MountInfo>> {
        self.mounts.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn mount_inner(
        &self,
        name: &str,
        url: &str,
        rw_dir: Option<&Path>,
    ) -> Result<MountInfo, FlistError> {
        check_name(name)?;
        if let Some(rw) = rw_dir {
            super::process::check_rw_dir(name, rw)?;
        }
        let mut fail_of = self.fail_of.lock().unwrap_or_else(|e| e.into_inner());
        let this = fail_of.take_if(|(n, _)| n == name).map(|(_, m)| m);
        drop(fail_of);
        if let Some(message) =
            this.or_else(|| self.fail.lock().unwrap_or_else(|e| e.into_inner()).take())
        {
            return Err(FlistError::Process {
                name: name.into(),
                detail: message,
            });
        }
        let mut mounts = self.mounts();
        if let Some(m) = mounts.get(name) {
            if m.url == url && m.rw_dir.as_deref() == rw_dir {
                return Ok(m.clone());
            }
            return Err(FlistError::Conflict {
                name: name.into(),
                existing: format!("flist {}", m.url),
            });
        }
        check_url(url)?;
        let info = MountInfo {
            name: name.into(),
            url: url.into(),
            sha256: zos_flist::hub::sha256_hex(url.as_bytes()),
            mountpoint: self.mountpoint(name),
            rw_dir: rw_dir.map(Path::to_path_buf),
            pid: None,
        };
        mounts.insert(name.into(), info.clone());
        Ok(info)
    }
}

/// Refuses what the real manager cannot fetch whatever the network: a URL that does not parse
/// or is not http(s), with the same error.
fn check_url(url: &str) -> Result<(), FlistError> {
    let reason = match reqwest::Url::parse(url) {
        Ok(u) if matches!(u.scheme(), "http" | "https") => return Ok(()),
        Ok(_) => "expected an http or https URL".to_string(),
        Err(e) => e.to_string(),
    };
    Err(FlistError::Fetch {
        url: url.into(),
        source: Box::new(zos_flist::hub::HubError::BadUrl {
            url: url.into(),
            reason,
        }),
    })
}

impl FlistManager for MemoryFlists {
    async fn mount(&self, name: &str, url: &str) -> Result<MountInfo, FlistError> {
        self.mount_inner(name, url, None)
    }

    async fn mount_writable(
        &self,
        name: &str,
        url: &str,
        rw_dir: &Path,
    ) -> Result<MountInfo, FlistError> {
        self.mount_inner(name, url, Some(rw_dir))
    }

    async fn unmount(&self, name: &str) -> Result<(), FlistError> {
        check_name(name)?;
        self.mounts().remove(name);
        Ok(())
    }

    /// The fake's mounts are plain directories: the open is the real [`super::open`] one, its
    /// metadata the directory itself.
    async fn open_file(&self, name: &str, path: &str) -> Result<Option<std::fs::File>, FlistError> {
        check_name(name)?;
        let mp = self
            .mounts()
            .get(name)
            .map(|m| m.mountpoint.clone())
            .ok_or_else(|| FlistError::NotMounted { name: name.into() })?;
        // A hostile path is refused whether or not the mount has content, as the real one does.
        super::open::components(path).map_err(|source| FlistError::Open {
            name: name.into(),
            path: path.into(),
            source,
        })?;
        if !mp.is_dir() {
            // The fake makes no directory for a mount: an empty flist.
            return Ok(None);
        }
        super::open::open_beneath(&mp, path).map_err(|source| FlistError::Open {
            name: name.into(),
            path: path.into(),
            source,
        })
    }

    async fn get(&self, name: &str) -> Result<Option<MountInfo>, FlistError> {
        Ok(self.mounts().get(name).cloned())
    }

    async fn list(&self) -> Result<Vec<MountInfo>, FlistError> {
        Ok(self.mounts().values().cloned().collect())
    }

    async fn reconcile(&self) -> Result<Reconciled, FlistError> {
        Ok(Reconciled {
            adopted: self.mounts().keys().cloned().collect(),
            ..Reconciled::default()
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_fake_keeps_the_rules() {
        let f = MemoryFlists::new("/run/zos-flist", "n1");
        let a = f.mount("vm1", "http://hub/a.fl").await.unwrap();
        assert_eq!(a.mountpoint, PathBuf::from("/run/zos-flist/n1-vm1"));
        assert_eq!(f.mount("vm1", "http://hub/a.fl").await.unwrap(), a);
        assert!(matches!(
            f.mount("vm1", "http://hub/b.fl").await,
            Err(FlistError::Conflict { .. })
        ));
        assert!(matches!(
            f.mount_writable("vm1", "http://hub/a.fl", Path::new("/v/rw"))
                .await,
            Err(FlistError::Conflict { .. })
        ));
        assert!(f.mount("../x", "http://hub/a.fl").await.is_err());
        f.fail_next_mount("hub unreachable");
        assert!(f.mount("vm2", "http://hub/a.fl").await.is_err());
        assert_eq!(f.list().await.unwrap().len(), 1);
        assert_eq!(
            f.reconcile().await.unwrap().adopted,
            vec!["vm1".to_string()]
        );
        f.unmount("vm1").await.unwrap();
        f.unmount("vm1").await.unwrap();
        assert!(f.get("vm1").await.unwrap().is_none());
    }
}
