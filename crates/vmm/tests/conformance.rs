//! The `Vmm` conformance suite, run against the fake and against QEMU with one tiny guest.
//!
//! The real run boots the test guest (`scripts/build-guest.sh`, cached) under TCG or KVM with a
//! busybox root shared by virtiofs and an entrypoint that sleeps, twice (create, then start
//! after shutdown). It needs root, QEMU, virtiofsd and busybox, and fails (never skips)
//! without them; it runs in the `serial-root` nextest group with the other VM tests.

use std::path::Path;
use std::time::Duration;

use zos_guest_init::seed::{SEED_VERSION, Seed};
use zos_vmm::{Accel, Boot, MemoryVmm, QemuVmm, Share, VmSpec, Vmm, VmmConfig, conformance};

fn spec(name: &str, kernel_dir: &Path, root: &Path) -> VmSpec {
    let seed = Seed {
        version: SEED_VERSION,
        instance_id: name.into(),
        hostname: "conform".into(),
        root_tag: "vroot".into(),
        mounts: vec![],
        interfaces: vec![],
        nameservers: vec![],
        ssh_keys: vec![],
        entrypoint: "/entry.sh".into(),
        env: Default::default(),
    };
    VmSpec {
        name: name.into(),
        cpus: 1,
        memory: 256 << 20,
        boot: Boot::Kernel {
            kernel: kernel_dir.join("vmlinux"),
            initramfs: kernel_dir.join("initramfs.cpio"),
            cmdline: String::new(),
            seed: Some(Box::new(seed)),
        },
        shares: vec![Share {
            tag: "vroot".into(),
            path: root.to_path_buf(),
        }],
        disks: vec![],
        nics: vec![],
    }
}

#[tokio::test]
async fn fake_keeps_the_vmm_contract() {
    // The fake, like the real VMM, wants the kernel and initramfs to be files.
    let guest = tempfile::tempdir().unwrap();
    std::fs::write(guest.path().join("vmlinux"), "kernel").unwrap();
    std::fs::write(guest.path().join("initramfs.cpio"), "initramfs").unwrap();
    let vmm = MemoryVmm::new();
    conformance::run(&vmm, &spec("1-9-conform", guest.path(), Path::new("/root"))).await;
}

/// Deletes the suite's VM through a fresh VMM when the test ends, also when it failed.
struct Cleanup {
    cfg: VmmConfig,
    name: String,
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        let rt = tokio::runtime::Runtime::new().unwrap();
        rt.block_on(async {
            if let Ok(v) = QemuVmm::open(self.cfg.clone()) {
                let _ = v.reconcile().await;
                let _ = v.delete(&self.name).await;
            }
        });
    }
}

#[test]
fn real_keeps_the_vmm_contract() {
    assert!(
        nix::unistd::geteuid().is_root(),
        "the real vmm conformance run needs root"
    );
    for p in ["qemu-system-x86_64", "virtiofsd", "busybox"] {
        assert!(
            zos_runtime::find_program(p).is_file(),
            "the real vmm conformance run needs {p} (scripts/install-deps.sh)"
        );
    }
    let guest = zos_testkit::guest::build_guest(&[], &[]);
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("root");
    zos_testkit::guest::busybox_root(&root, &[]);
    let entry = root.join("entry.sh");
    std::fs::write(
        &entry,
        "#!/bin/sh\necho conformance guest up\nexec sleep 100000\n",
    )
    .unwrap();
    std::fs::set_permissions(&entry, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let mut cfg = VmmConfig::new("vcf", dir.path().join("state"), dir.path().join("run"));
    cfg.accel = Accel::Auto;
    cfg.backoff_min = Duration::from_millis(500);
    cfg.stop_timeout = Duration::from_secs(5);
    let name = "1-9-conform";
    let _cleanup = Cleanup {
        cfg: cfg.clone(),
        name: name.into(),
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let vmm = QemuVmm::open(cfg).expect("vmm opens");
        conformance::run(&vmm, &spec(name, &guest, &root)).await;
    });
}
