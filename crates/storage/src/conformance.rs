//! The contract of the [`Storage`] seam, as one suite that every implementation must pass.
//!
//! `tests/conformance.rs` runs [`run`] twice: against `MemoryStorage` (feature `fake`) and
//! against `BtrfsStorage` on loop devices. It states what `zos-provision` relies on: what a
//! creation shows in `get`, `list`, `pools` and `capacity`; that a name is taken once; that
//! sizes grow and never shrink; that every refusal (bad name or size, a shrink, no space, a
//! second zdb on a pool) changes nothing; that deleting what does not exist succeeds; and how
//! zdb devices are allocated and released. [`run_limited`] states what a storage without an SSD
//! pool does: it runs limited and makes nothing. Where the fake and the real storage disagree,
//! the real one is the reference. Compiled only with the `conformance` feature.

use zos_types::capacity::MIB;

use crate::{CacheBacking, DiskKind, MIN_SIZE, PoolInfo, Storage, StorageCapacity, StorageError};

/// What the suite needs of a fresh storage: at least one SSD pool with `64 MiB` free and one
/// HDD pool, no volumes, no virtual disks, no zdb devices.
const SIZE: u64 = 64 * MIB;

/// Runs every check on a fresh, unlimited storage; each check leaves it as it found it.
pub async fn run<S: Storage>(s: &S) {
    assert_eq!(s.limited(), None, "the suite needs an unlimited storage");
    check_fresh(s).await;
    check_refusals(s).await;
    check_volume_lifecycle(s).await;
    check_disk_lifecycle(s).await;
    check_names_per_kind(s).await;
    check_over_capacity(s).await;
    check_zdb(s).await;
    check_fresh(s).await;
}

async fn state<S: Storage>(s: &S) -> (StorageCapacity, Vec<PoolInfo>, usize, usize, usize) {
    (
        s.capacity().await.expect("capacity"),
        s.pools().await.expect("pools"),
        s.volume_list().await.expect("volume list").len(),
        s.disk_list().await.expect("disk list").len(),
        s.zdb_list().await.expect("zdb list").len(),
    )
}

fn ssd_most_free(pools: &[PoolInfo]) -> u64 {
    pools
        .iter()
        .filter(|p| p.kind == DiskKind::Ssd)
        .map(PoolInfo::free)
        .max()
        .expect("the suite needs an ssd pool")
}

fn pool<'a>(pools: &'a [PoolInfo], name: &str) -> &'a PoolInfo {
    pools
        .iter()
        .find(|p| p.name == name)
        .unwrap_or_else(|| panic!("no pool {name:?} in {pools:?}"))
}

/// Nothing exists; looking up, deleting or growing what does not exist behaves.
pub async fn check_fresh<S: Storage>(s: &S) {
    let (cap, pools, volumes, disks, zdbs) = state(s).await;
    assert_eq!(
        (volumes, disks, zdbs),
        (0, 0, 0),
        "a fresh storage is empty"
    );
    assert!(
        ssd_most_free(&pools) >= 2 * SIZE,
        "ssd too small: {pools:?}"
    );
    assert!(pools.iter().any(|p| p.kind == DiskKind::Hdd), "no hdd pool");
    assert_eq!(cap, StorageCapacity::from_pools(&pools));
    assert_eq!(s.volume_get("missing").await.unwrap(), None);
    assert_eq!(s.disk_get("missing").await.unwrap(), None);
    s.volume_delete("missing")
        .await
        .expect("deleting a missing volume succeeds");
    s.disk_delete("missing")
        .await
        .expect("deleting a missing disk succeeds");
    s.zdb_release("missing")
        .await
        .expect("releasing a missing zdb succeeds");
    assert!(matches!(
        s.volume_grow("missing", SIZE).await,
        Err(StorageError::NotFound { .. })
    ));
    assert!(matches!(
        s.disk_grow("missing", SIZE).await,
        Err(StorageError::NotFound { .. })
    ));
    assert_eq!(state(s).await.0, cap, "lookups changed the capacity");
}

/// Bad names and sizes are refused with their own error and leave nothing behind.
pub async fn check_refusals<S: Storage>(s: &S) {
    let before = state(s).await;
    for name in ["", "../x", ".hidden", "-x", "a/b", "a b", &"x".repeat(129)] {
        let bad = |r: Result<_, StorageError>| matches!(r, Err(StorageError::InvalidName(_)));
        assert!(bad(s.volume_create(name, SIZE).await.map(drop)), "{name:?}");
        assert!(bad(s.disk_create(name, SIZE).await.map(drop)), "{name:?}");
        assert!(bad(s.volume_get(name).await.map(drop)), "{name:?}");
        assert!(bad(s.disk_get(name).await.map(drop)), "{name:?}");
        assert!(bad(s.volume_delete(name).await), "{name:?}");
        assert!(bad(s.disk_delete(name).await), "{name:?}");
        assert!(bad(s.zdb_release(name).await), "{name:?}");
    }
    for size in [0, MIN_SIZE - 1] {
        assert!(matches!(
            s.volume_create("v", size).await,
            Err(StorageError::InvalidSize { .. })
        ));
        assert!(matches!(
            s.disk_create("d", size).await,
            Err(StorageError::InvalidSize { .. })
        ));
    }
    assert_eq!(state(s).await, before, "a refusal changed something");
}

/// One item's lifecycle as both kinds share it: `Volume` and `VDisk` seen through
/// (name, pool, size).
struct Ops<'a, S> {
    s: &'a S,
    what: &'static str,
}

impl<S: Storage> Ops<'_, S> {
    async fn create(&self, name: &str, size: u64) -> Result<(String, u64), StorageError> {
        match self.what {
            "volume" => self
                .s
                .volume_create(name, size)
                .await
                .map(|v| (v.pool, v.size)),
            _ => self
                .s
                .disk_create(name, size)
                .await
                .map(|d| (d.pool, d.size)),
        }
    }
    async fn grow(&self, name: &str, size: u64) -> Result<(String, u64), StorageError> {
        match self.what {
            "volume" => self
                .s
                .volume_grow(name, size)
                .await
                .map(|v| (v.pool, v.size)),
            _ => self.s.disk_grow(name, size).await.map(|d| (d.pool, d.size)),
        }
    }
    async fn get(&self, name: &str) -> Option<(String, u64)> {
        match self.what {
            "volume" => self
                .s
                .volume_get(name)
                .await
                .unwrap()
                .map(|v| (v.pool, v.size)),
            _ => self
                .s
                .disk_get(name)
                .await
                .unwrap()
                .map(|d| (d.pool, d.size)),
        }
    }
    async fn list(&self) -> Vec<(String, String, u64)> {
        match self.what {
            "volume" => self
                .s
                .volume_list()
                .await
                .unwrap()
                .into_iter()
                .map(|v| (v.name, v.pool, v.size))
                .collect(),
            _ => self
                .s
                .disk_list()
                .await
                .unwrap()
                .into_iter()
                .map(|d| (d.name, d.pool, d.size))
                .collect(),
        }
    }
    async fn delete(&self, name: &str) {
        match self.what {
            "volume" => self.s.volume_delete(name).await,
            _ => self.s.disk_delete(name).await,
        }
        .unwrap_or_else(|e| panic!("deleting {} {name:?}: {e}", self.what));
    }
}

/// A volume: create, show, refuse a second one, grow, refuse a shrink, delete.
pub async fn check_volume_lifecycle<S: Storage>(s: &S) {
    lifecycle(&Ops { s, what: "volume" }).await;
}

/// A virtual disk: the same contract as a volume.
pub async fn check_disk_lifecycle<S: Storage>(s: &S) {
    lifecycle(&Ops { s, what: "disk" }).await;
}

async fn lifecycle<S: Storage>(ops: &Ops<'_, S>) {
    let s = ops.s;
    let (cap0, pools0, ..) = state(s).await;
    let most_free = ssd_most_free(&pools0);
    let (pool_name, size) = ops.create("item", SIZE).await.expect("create");
    assert_eq!(size, SIZE);
    // Placement: the SSD pool with the most free space.
    let chosen = pool(&pools0, &pool_name);
    assert_eq!((chosen.kind, chosen.free()), (DiskKind::Ssd, most_free));
    assert_eq!(ops.get("item").await, Some((pool_name.clone(), SIZE)));
    assert_eq!(
        ops.list().await,
        vec![("item".into(), pool_name.clone(), SIZE)]
    );
    // Reservation: the pool and the SSD figures move by the size.
    let (cap1, pools1, ..) = state(s).await;
    assert_eq!(pool(&pools1, &pool_name).used, chosen.used + SIZE);
    assert_eq!(cap1.used_sru, cap0.used_sru + SIZE);
    assert_eq!(
        (cap1.sru, cap1.hru, cap1.used_hru),
        (cap0.sru, cap0.hru, cap0.used_hru)
    );
    // A name is taken once: a second create is refused, whatever its size.
    for again in [SIZE, 2 * SIZE] {
        assert!(matches!(
            ops.create("item", again).await,
            Err(StorageError::Exists { .. })
        ));
    }
    assert_eq!(
        state(s).await.0,
        cap1,
        "a refused create changed the capacity"
    );
    // Grow: equal is a no-op, more reserves the difference, less is refused.
    assert_eq!(
        ops.grow("item", SIZE).await.unwrap(),
        (pool_name.clone(), SIZE)
    );
    assert_eq!(
        ops.grow("item", 2 * SIZE).await.unwrap(),
        (pool_name.clone(), 2 * SIZE)
    );
    assert_eq!(state(s).await.0.used_sru, cap0.used_sru + 2 * SIZE);
    let shrink = ops.grow("item", SIZE).await;
    assert!(
        matches!(shrink, Err(StorageError::Shrink { current, requested, .. }) if current == 2 * SIZE && requested == SIZE),
        "{shrink:?}"
    );
    // Growth beyond the pool's free space is refused.
    let free = pool(&state(s).await.1, &pool_name).free();
    let over = ops.grow("item", 2 * SIZE + free + MIB).await;
    assert!(
        matches!(over, Err(StorageError::NoSpace { .. })),
        "{over:?}"
    );
    assert_eq!(ops.get("item").await, Some((pool_name, 2 * SIZE)));
    assert_eq!(state(s).await.0.used_sru, cap0.used_sru + 2 * SIZE);
    // Delete gives the space back; a second delete succeeds.
    ops.delete("item").await;
    ops.delete("item").await;
    assert_eq!(ops.get("item").await, None);
    assert_eq!(state(s).await.0, cap0, "delete did not give the space back");
}

/// Volumes and virtual disks have names of their own: one of each may share a name.
pub async fn check_names_per_kind<S: Storage>(s: &S) {
    let cap0 = s.capacity().await.unwrap();
    s.volume_create("shared", SIZE).await.expect("volume");
    s.disk_create("shared", SIZE)
        .await
        .expect("disk of a volume's name");
    assert_eq!(
        s.capacity().await.unwrap().used_sru,
        cap0.used_sru + 2 * SIZE
    );
    s.disk_delete("shared").await.unwrap();
    assert!(
        s.volume_get("shared").await.unwrap().is_some(),
        "deleting the disk took the volume"
    );
    s.volume_delete("shared").await.unwrap();
    assert_eq!(s.capacity().await.unwrap(), cap0);
}

/// A creation bigger than any SSD pool's free space is refused and leaves nothing.
pub async fn check_over_capacity<S: Storage>(s: &S) {
    let before = state(s).await;
    let most_free = ssd_most_free(&before.1);
    let too_big = most_free + MIB;
    let err = s.volume_create("big", too_big).await.unwrap_err();
    assert!(
        matches!(err, StorageError::NoSpace { kind: DiskKind::Ssd, needed, most_free: m, .. } if needed == too_big && m == most_free),
        "{err:?}"
    );
    let err = s.disk_create("big", too_big).await.unwrap_err();
    assert!(
        matches!(
            err,
            StorageError::NoSpace {
                kind: DiskKind::Ssd,
                ..
            }
        ),
        "{err:?}"
    );
    assert_eq!(state(s).await, before, "a refused creation left something");
}

/// zdb devices: one per HDD pool, never on an SSD, release frees the pool again.
pub async fn check_zdb<S: Storage>(s: &S) {
    let (cap0, pools, ..) = state(s).await;
    let hdds: Vec<&PoolInfo> = pools.iter().filter(|p| p.kind == DiskKind::Hdd).collect();
    let biggest = hdds.iter().map(|p| p.free()).max().unwrap();
    let err = s.zdb_allocate(biggest + 1).await.unwrap_err();
    assert!(
        matches!(
            err,
            StorageError::NoSpace {
                kind: DiskKind::Hdd,
                ..
            }
        ),
        "{err:?}"
    );
    let mut ids = Vec::new();
    for _ in &hdds {
        let z = s.zdb_allocate(MIB).await.expect("zdb allocate");
        let p = pool(&pools, &z.id);
        assert_eq!(p.kind, DiskKind::Hdd, "zdb on a non-hdd pool");
        assert_eq!((z.size, z.free), (p.size, p.free()));
        assert!(!ids.contains(&z.id), "two zdb devices on pool {}", z.id);
        ids.push(z.id);
    }
    // Every HDD pool holds one now: another is refused and changes nothing.
    let err = s.zdb_allocate(MIB).await.unwrap_err();
    assert!(
        matches!(
            err,
            StorageError::NoSpace {
                kind: DiskKind::Hdd,
                ..
            }
        ),
        "{err:?}"
    );
    let mut listed: Vec<String> = s
        .zdb_list()
        .await
        .unwrap()
        .into_iter()
        .map(|z| z.id)
        .collect();
    listed.sort();
    ids.sort();
    assert_eq!(listed, ids);
    // An empty zdb device reserves nothing.
    assert_eq!(s.capacity().await.unwrap(), cap0);
    for id in &ids {
        s.zdb_release(id).await.expect("zdb release");
        s.zdb_release(id).await.expect("second zdb release");
    }
    assert!(s.zdb_list().await.unwrap().is_empty());
    // A released pool takes a zdb again.
    let z = s
        .zdb_allocate(MIB)
        .await
        .expect("zdb allocate after release");
    s.zdb_release(&z.id).await.unwrap();
}

/// A storage with HDD pools only runs limited: it says why, keeps the node's state on a tmpfs,
/// counts its HDD pools, and refuses volumes, virtual disks and zdb devices with `Limited`
/// (bad names and sizes still first), making nothing.
pub async fn run_limited<S: Storage>(s: &S) {
    let why = s.limited().expect("a storage without ssd runs limited");
    assert!(!why.is_empty());
    let backing = s.cache().await.expect("cache").backing;
    assert!(matches!(backing, CacheBacking::Tmpfs { .. }), "{backing:?}");
    let (cap, pools, ..) = state(s).await;
    assert!(
        pools.iter().all(|p| p.kind == DiskKind::Hdd) && !pools.is_empty(),
        "{pools:?}"
    );
    assert_eq!((cap.sru, cap.used_sru, cap.reserved_sru), (0, 0, 0));
    assert_eq!(cap.hru, pools.iter().map(|p| p.size).sum::<u64>());
    let limited = |r: Result<(), StorageError>| matches!(r, Err(StorageError::Limited(_)));
    assert!(limited(s.volume_create("v", SIZE).await.map(drop)));
    assert!(limited(s.disk_create("d", SIZE).await.map(drop)));
    assert!(limited(s.zdb_allocate(MIB).await.map(drop)));
    let r = s.volume_create("../v", SIZE).await;
    assert!(matches!(r, Err(StorageError::InvalidName(_))), "{r:?}");
    let r = s.disk_create("d", 0).await;
    assert!(matches!(r, Err(StorageError::InvalidSize { .. })), "{r:?}");
    let (after, _, volumes, disks, zdbs) = state(s).await;
    assert_eq!(
        (after, volumes, disks, zdbs),
        (cap, 0, 0, 0),
        "a limited storage made something"
    );
}
