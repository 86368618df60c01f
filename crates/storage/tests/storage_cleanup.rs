//! A storage test that fails half-way leaves nothing behind: no mount, no loop device, no file.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use zos_storage::{BtrfsStorage, CachePolicy, DiskKind, DiskSpec, Storage, StorageConfig};
use zos_testkit::disk::{self, TestDisks};
use zos_types::capacity::{GIB, MIB};

#[derive(Debug, Default)]
struct Made {
    dir: Option<PathBuf>,
    files: Vec<PathBuf>,
    devices: Vec<PathBuf>,
    mounts: Vec<PathBuf>,
    /// A file inside a volume, still open after the test ends (as a leaked process would hold).
    open: Option<std::fs::File>,
}

#[test]
fn a_failing_test_cleans_up_everything() {
    if !disk::can_use_loop_devices("a_failing_test_cleans_up_everything") {
        return;
    }
    let made = Arc::new(Mutex::new(Made::default()));
    let seen = made.clone();
    let outcome = std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let mut disks = TestDisks::new("cleanup").unwrap();
            disks.add("ssd", GIB).unwrap();
            disks.add("hdd", GIB).unwrap();
            let specs: Vec<DiskSpec> = disks
                .disks()
                .map(|(label, d)| DiskSpec {
                    path: d.device().to_path_buf(),
                    kind: Some(if label == "ssd" {
                        DiskKind::Ssd
                    } else {
                        DiskKind::Hdd
                    }),
                })
                .collect();
            let cfg = StorageConfig {
                cache: CachePolicy {
                    initial: 64 * MIB,
                    step: 64 * MIB,
                    min: 64 * MIB,
                },
                ..StorageConfig::only(&specs, disks.mount_root(), "c-")
            };
            let (storage, _) = BtrfsStorage::start(cfg).await.unwrap();
            let vol = storage.volume_create("v", 64 * MIB).await.unwrap();
            storage.disk_create("d", 64 * MIB).await.unwrap();
            // Something keeps a file open inside a volume when the test fails.
            let open = std::fs::File::create(vol.path.join("open")).unwrap();
            {
                let mut m = seen.lock().unwrap();
                m.dir = Some(disks.dir().to_path_buf());
                m.files = disks.disks().map(|(_, d)| d.file().to_path_buf()).collect();
                m.devices = disks
                    .disks()
                    .map(|(_, d)| d.device().to_path_buf())
                    .collect();
                m.mounts = disk::mounts_under(disks.dir()).unwrap();
                m.open = Some(open);
            }
            panic!("the test fails here, on purpose");
        })
    })
    .join();
    assert!(outcome.is_err(), "the inner test was meant to panic");

    let mut made = made.lock().unwrap_or_else(|e| e.into_inner());
    let dir = made.dir.clone().expect("the inner test got far enough");
    assert!(
        made.mounts.len() >= 2,
        "pools were mounted: {:?}",
        made.mounts
    );
    // The busy mount was detached lazily: gone from the tree even with the file still open.
    assert!(made.open.is_some());
    assert!(
        disk::mounts_under(&dir).unwrap().is_empty(),
        "mounts remain under {}",
        dir.display()
    );
    assert!(!dir.exists(), "{} remains", dir.display());
    for f in &made.files {
        assert!(!f.exists(), "{} remains", f.display());
    }
    // Once the last user lets go, the kernel frees the loop devices (autoclear).
    made.open = None;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let attached = disk::loop_devices().unwrap();
        let left: Vec<_> = made
            .files
            .iter()
            .filter(|f| attached.iter().any(|(_, b)| b == *f))
            .collect();
        if left.is_empty() {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "still attached: {left:?}"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let mounts = disk::mounts().unwrap();
    for d in &made.devices {
        assert!(
            !mounts.iter().any(|m| &m.source == d),
            "{} is still mounted",
            d.display()
        );
    }
}
