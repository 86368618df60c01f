//! An in-memory [`Storage`] with the same rules as the real one, for tests of the modules
//! that use storage (provision engine, reporters) without root, disks or btrfs.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Mutex;

use super::rules::{self, no_space, pick_pool};
use super::{
    CacheBacking, CacheInfo, DiskKind, PoolInfo, Result, Storage, StorageCapacity, StorageError,
    VDisk, Volume, ZdbDevice,
};

#[derive(Debug, Clone)]
struct FakePool {
    name: String,
    kind: DiskKind,
    size: u64,
    cache: u64,
    volumes: BTreeMap<String, u64>,
    disks: BTreeMap<String, u64>,
    zdb: bool,
}

impl FakePool {
    fn used(&self) -> u64 {
        self.cache + self.volumes.values().sum::<u64>() + self.disks.values().sum::<u64>()
    }

    fn info(&self) -> PoolInfo {
        PoolInfo {
            name: self.name.clone(),
            kind: self.kind,
            device: PathBuf::from("/dev/fake").join(&self.name),
            path: PathBuf::from("/fake").join(&self.name),
            size: self.size,
            used: self.used(),
            system: self.cache,
        }
    }

    fn volume(&self, name: &str, size: u64) -> Volume {
        Volume {
            name: name.into(),
            pool: self.name.clone(),
            path: PathBuf::from("/fake")
                .join(&self.name)
                .join("volumes")
                .join(name),
            size,
            used: 0,
        }
    }

    fn disk(&self, name: &str, size: u64) -> VDisk {
        VDisk {
            name: name.into(),
            pool: self.name.clone(),
            path: PathBuf::from("/fake")
                .join(&self.name)
                .join("vdisks")
                .join(name),
            size,
            allocated: 0,
        }
    }

    fn zdb_device(&self) -> ZdbDevice {
        ZdbDevice {
            id: self.name.clone(),
            path: PathBuf::from("/fake").join(&self.name).join("zdb"),
            size: self.size,
            used: 0,
            free: self.size.saturating_sub(self.used()),
        }
    }
}

/// The fake storage: pools are numbers in memory. The first SSD pool holds a cache of the
/// given quota; with no SSD pool the fake is limited, as the real storage would be.
#[derive(Debug)]
pub struct MemoryStorage {
    pools: Mutex<Vec<FakePool>>,
    limited: Option<String>,
    cache_path: PathBuf,
}

impl MemoryStorage {
    /// Pools given as (name, kind, size); the cache takes `cache_quota` on the first SSD pool.
    pub fn new(pools: &[(&str, DiskKind, u64)], cache_quota: u64) -> Self {
        let mut pools: Vec<FakePool> = pools
            .iter()
            .map(|(name, kind, size)| FakePool {
                name: name.to_string(),
                kind: *kind,
                size: *size,
                cache: 0,
                volumes: BTreeMap::new(),
                disks: BTreeMap::new(),
                zdb: false,
            })
            .collect();
        let limited = match pools.iter_mut().find(|p| p.kind == DiskKind::Ssd) {
            Some(p) => {
                p.cache = cache_quota.min(p.size);
                None
            }
            None => Some("no ssd disk: node state is on a tmpfs, no deployments accepted".into()),
        };
        MemoryStorage {
            pools: Mutex::new(pools),
            limited,
            cache_path: PathBuf::from("/fake/cache"),
        }
    }

    fn check_limited(&self) -> Result<()> {
        match &self.limited {
            Some(r) => Err(StorageError::Limited(r.clone())),
            None => Ok(()),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<FakePool>> {
        self.pools.lock().unwrap_or_else(|e| e.into_inner())
    }
}

enum Item {
    Volume,
    Disk,
}

impl Item {
    fn what(&self) -> &'static str {
        match self {
            Item::Volume => "volume",
            Item::Disk => "virtual disk",
        }
    }

    fn map<'a>(&self, p: &'a mut FakePool) -> &'a mut BTreeMap<String, u64> {
        match self {
            Item::Volume => &mut p.volumes,
            Item::Disk => &mut p.disks,
        }
    }

    fn find(&self, pools: &mut [FakePool], name: &str) -> Option<(usize, u64)> {
        pools
            .iter_mut()
            .enumerate()
            .find_map(|(i, p)| self.map(p).get(name).map(|s| (i, *s)))
    }
}

impl MemoryStorage {
    fn create(&self, item: Item, name: &str, size: u64) -> Result<(usize, u64)> {
        rules::validate_name(name)?;
        rules::validate_size(item.what(), name, size)?;
        self.check_limited()?;
        let mut pools = self.lock();
        if item.find(&mut pools, name).is_some() {
            return Err(StorageError::Exists {
                what: item.what(),
                name: name.into(),
            });
        }
        let infos: Vec<PoolInfo> = pools.iter().map(FakePool::info).collect();
        let i = pick_pool(&infos, DiskKind::Ssd, size).ok_or_else(|| {
            no_space(
                format!("{} {name:?}", item.what()),
                &infos,
                DiskKind::Ssd,
                size,
            )
        })?;
        item.map(&mut pools[i]).insert(name.into(), size);
        Ok((i, size))
    }

    fn grow(&self, item: Item, name: &str, size: u64) -> Result<(usize, u64)> {
        rules::validate_name(name)?;
        rules::validate_size(item.what(), name, size)?;
        let mut pools = self.lock();
        let (i, current) = item
            .find(&mut pools, name)
            .ok_or_else(|| StorageError::NotFound {
                what: item.what(),
                name: name.into(),
            })?;
        if size < current {
            return Err(StorageError::Shrink {
                what: item.what(),
                name: name.into(),
                current,
                requested: size,
            });
        }
        let info = pools[i].info();
        if size - current > info.free() {
            return Err(StorageError::NoSpace {
                what: format!("growing {} {name:?} on pool {}", item.what(), info.name),
                kind: info.kind,
                needed: size - current,
                most_free: info.free(),
            });
        }
        item.map(&mut pools[i]).insert(name.into(), size);
        Ok((i, size))
    }

    fn delete(&self, item: Item, name: &str) -> Result<()> {
        rules::validate_name(name)?;
        let mut pools = self.lock();
        if let Some((i, _)) = item.find(&mut pools, name) {
            item.map(&mut pools[i]).remove(name);
        }
        Ok(())
    }
}

impl Storage for MemoryStorage {
    async fn pools(&self) -> Result<Vec<PoolInfo>> {
        Ok(self.lock().iter().map(FakePool::info).collect())
    }

    async fn capacity(&self) -> Result<StorageCapacity> {
        Ok(StorageCapacity::from_pools(&self.pools().await?))
    }

    async fn cache(&self) -> Result<CacheInfo> {
        let pools = self.lock();
        let backing = match pools.iter().find(|p| p.kind == DiskKind::Ssd) {
            Some(p) => CacheBacking::Pool {
                pool: p.name.clone(),
                quota: p.cache,
                used: 0,
            },
            None => CacheBacking::Tmpfs { size: 500 << 20 },
        };
        Ok(CacheInfo {
            path: self.cache_path.clone(),
            backing,
        })
    }

    fn limited(&self) -> Option<String> {
        self.limited.clone()
    }

    async fn volume_create(&self, name: &str, size: u64) -> Result<Volume> {
        let (i, size) = self.create(Item::Volume, name, size)?;
        Ok(self.lock()[i].volume(name, size))
    }

    async fn volume_grow(&self, name: &str, size: u64) -> Result<Volume> {
        let (i, size) = self.grow(Item::Volume, name, size)?;
        Ok(self.lock()[i].volume(name, size))
    }

    async fn volume_delete(&self, name: &str) -> Result<()> {
        self.delete(Item::Volume, name)
    }

    async fn volume_get(&self, name: &str) -> Result<Option<Volume>> {
        rules::validate_name(name)?;
        let mut pools = self.lock();
        Ok(Item::Volume
            .find(&mut pools, name)
            .map(|(i, s)| pools[i].volume(name, s)))
    }

    async fn volume_list(&self) -> Result<Vec<Volume>> {
        let pools = self.lock();
        Ok(pools
            .iter()
            .flat_map(|p| p.volumes.iter().map(|(n, s)| p.volume(n, *s)))
            .collect())
    }

    async fn disk_create(&self, name: &str, size: u64) -> Result<VDisk> {
        let (i, size) = self.create(Item::Disk, name, size)?;
        Ok(self.lock()[i].disk(name, size))
    }

    async fn disk_grow(&self, name: &str, size: u64) -> Result<VDisk> {
        let (i, size) = self.grow(Item::Disk, name, size)?;
        Ok(self.lock()[i].disk(name, size))
    }

    async fn disk_delete(&self, name: &str) -> Result<()> {
        self.delete(Item::Disk, name)
    }

    async fn disk_get(&self, name: &str) -> Result<Option<VDisk>> {
        rules::validate_name(name)?;
        let mut pools = self.lock();
        Ok(Item::Disk
            .find(&mut pools, name)
            .map(|(i, s)| pools[i].disk(name, s)))
    }

    async fn disk_list(&self) -> Result<Vec<VDisk>> {
        let pools = self.lock();
        Ok(pools
            .iter()
            .flat_map(|p| p.disks.iter().map(|(n, s)| p.disk(n, *s)))
            .collect())
    }

    async fn zdb_allocate(&self, min: u64) -> Result<ZdbDevice> {
        self.check_limited()?;
        let mut pools = self.lock();
        let free: Vec<PoolInfo> = pools
            .iter()
            .map(|p| {
                let mut info = p.info();
                if p.zdb {
                    info.used = info.size;
                }
                info
            })
            .collect();
        let i = pick_pool(&free, DiskKind::Hdd, min)
            .ok_or_else(|| no_space("a new zdb device".into(), &free, DiskKind::Hdd, min))?;
        pools[i].zdb = true;
        Ok(pools[i].zdb_device())
    }

    async fn zdb_list(&self) -> Result<Vec<ZdbDevice>> {
        Ok(self
            .lock()
            .iter()
            .filter(|p| p.zdb)
            .map(FakePool::zdb_device)
            .collect())
    }

    async fn zdb_release(&self, id: &str) -> Result<()> {
        rules::validate_name(id)?;
        if let Some(p) = self.lock().iter_mut().find(|p| p.name == id) {
            p.zdb = false;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use zos_types::capacity::{GIB, MIB};

    fn fake() -> MemoryStorage {
        MemoryStorage::new(
            &[
                ("ssd1", DiskKind::Ssd, 10 * GIB),
                ("ssd2", DiskKind::Ssd, 4 * GIB),
                ("hdd1", DiskKind::Hdd, 100 * GIB),
            ],
            GIB,
        )
    }

    #[tokio::test]
    async fn placement_reservation_and_capacity() {
        let s = fake();
        let c = s.capacity().await.unwrap();
        assert_eq!(
            (c.sru, c.hru, c.reserved_sru, c.used_sru),
            (14 * GIB, 100 * GIB, GIB, GIB)
        );
        // ssd1 has 9 GiB free, ssd2 4 GiB: the first volume goes to ssd1.
        let v = s.volume_create("a", 6 * GIB).await.unwrap();
        assert_eq!(v.pool, "ssd1");
        // Now ssd1 has 3 GiB free and ssd2 4 GiB.
        let d = s.disk_create("d", 2 * GIB).await.unwrap();
        assert_eq!(d.pool, "ssd2");
        // 3 GiB on ssd1, 2 GiB on ssd2: 4 GiB fits nowhere, and nothing changed.
        let err = s.volume_create("b", 4 * GIB).await.unwrap_err();
        assert!(matches!(err, StorageError::NoSpace { most_free, .. } if most_free == 3 * GIB));
        assert_eq!(s.volume_list().await.unwrap().len(), 1);
        // Names are unique per kind of item.
        assert!(matches!(
            s.volume_create("a", MIB).await,
            Err(StorageError::Exists { .. })
        ));
        assert!(matches!(
            s.volume_create("../a", MIB).await,
            Err(StorageError::InvalidName(_))
        ));
        let c = s.capacity().await.unwrap();
        assert_eq!(c.used_sru, GIB + 6 * GIB + 2 * GIB);
    }

    #[tokio::test]
    async fn grow_but_never_shrink() {
        let s = fake();
        s.volume_create("v", GIB).await.unwrap();
        assert_eq!(s.volume_grow("v", 2 * GIB).await.unwrap().size, 2 * GIB);
        assert_eq!(s.volume_grow("v", 2 * GIB).await.unwrap().size, 2 * GIB);
        assert!(matches!(
            s.volume_grow("v", GIB).await,
            Err(StorageError::Shrink { current, .. }) if current == 2 * GIB
        ));
        assert_eq!(s.volume_get("v").await.unwrap().unwrap().size, 2 * GIB);
        // Growth must fit in the volume's own pool (ssd1: 10 - 1 cache - 2).
        assert!(matches!(
            s.volume_grow("v", 11 * GIB).await,
            Err(StorageError::NoSpace { .. })
        ));
        assert!(matches!(
            s.disk_grow("nope", GIB).await,
            Err(StorageError::NotFound { .. })
        ));
        s.volume_delete("v").await.unwrap();
        s.volume_delete("v").await.unwrap();
        assert_eq!(s.volume_get("v").await.unwrap(), None);
    }

    #[tokio::test]
    async fn zdb_on_hdd_one_per_pool() {
        let s = fake();
        let z = s.zdb_allocate(50 * GIB).await.unwrap();
        assert_eq!(z.id, "hdd1");
        assert!(matches!(
            s.zdb_allocate(GIB).await,
            Err(StorageError::NoSpace {
                kind: DiskKind::Hdd,
                ..
            })
        ));
        assert_eq!(s.zdb_list().await.unwrap().len(), 1);
        s.zdb_release("hdd1").await.unwrap();
        assert!(s.zdb_list().await.unwrap().is_empty());
    }

    #[tokio::test]
    async fn without_ssd_the_fake_is_limited() {
        let s = MemoryStorage::new(&[("hdd1", DiskKind::Hdd, 100 * GIB)], GIB);
        assert!(s.limited().is_some());
        assert!(matches!(
            s.volume_create("v", GIB).await,
            Err(StorageError::Limited(_))
        ));
        assert!(matches!(
            s.cache().await.unwrap().backing,
            CacheBacking::Tmpfs { .. }
        ));
        assert_eq!(s.capacity().await.unwrap().hru, 100 * GIB);
    }
}
