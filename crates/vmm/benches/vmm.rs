//! VM figures: a bare QEMU boot of the guest kernel and initramfs to init, beside the VMM's
//! create-to-entrypoint-running of a container-mode VM (virtiofs root); host memory (RSS of
//! QEMU and its virtiofsd) per VM; time to adopt running VMs with a new VMM instance.
//!
//! Run as root: `cargo bench -p zos-vmm --bench vmm` (`VMM_BENCH_RUNS`, `VMM_BENCH_ADOPT`).

use std::path::{Path, PathBuf};

use std::time::{Duration, Instant};

use zos_guest_init::seed::{SEED_VERSION, Seed};
use zos_vmm::{Boot, QemuVmm, Share, VmSpec, Vmm, VmmConfig};

fn guest() -> PathBuf {
    zos_testkit::guest::build_guest(&[], &[])
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

/// Seconds from starting QEMU to guest-init's first line on the serial port.
fn bare_boot(g: &Path) -> f64 {
    zos_testkit::guest::bare_boot(g).as_secs_f64()
}

fn busybox_root(dir: &Path) {
    zos_testkit::guest::busybox_root(dir, &[]);
}

fn spec(g: &Path, root: &Path, name: &str) -> VmSpec {
    VmSpec {
        name: name.into(),
        cpus: 1,
        memory: 256 << 20,
        boot: Boot::Kernel {
            kernel: g.join("vmlinux"),
            initramfs: g.join("initramfs.cpio"),
            cmdline: String::new(),
            seed: Some(Box::new(Seed {
                version: SEED_VERSION,
                instance_id: name.into(),
                hostname: "bench".into(),
                root_tag: "vroot".into(),
                mounts: vec![],
                interfaces: vec![],
                nameservers: vec![],
                ssh_keys: vec![],
                entrypoint: "/bin/sh -c 'echo ENTRYPOINT-RUNNING; exec sleep 100000'".into(),
                env: Default::default(),
            })),
        },
        shares: vec![Share {
            tag: "vroot".into(),
            path: root.to_path_buf(),
        }],
        disks: vec![],
        nics: vec![],
    }
}

async fn until_running(vmm: &QemuVmm, name: &str) {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let c = vmm.console(name, 1 << 20).await.unwrap();
        if c.contains("ENTRYPOINT-RUNNING") {
            return;
        }
        assert!(Instant::now() < deadline, "{name} never ran its entrypoint");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn rss_kib(pid: i32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        .unwrap_or(0)
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    if nix::unistd::geteuid().as_raw() != 0 {
        eprintln!("SKIPPED vmm bench: not root");
        return;
    }
    let runs: usize = std::env::var("VMM_BENCH_RUNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(5);
    let adopt_n: usize = std::env::var("VMM_BENCH_ADOPT")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(4);
    let g = guest();
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("root");
    busybox_root(&root);
    let cfg = VmmConfig::new("vbench", dir.path().join("state"), dir.path().join("run"));
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();

    let mut bare = Vec::new();
    let mut vmm_times = Vec::new();
    let mut rss = Vec::new();
    for i in 0..runs {
        bare.push(bare_boot(&g));
        let (t, kib) = rt.block_on(async {
            let vmm = QemuVmm::open(cfg.clone()).unwrap();
            let name = format!("bench-{i}");
            let t = Instant::now();
            let info = vmm.create(spec(&g, &root, &name)).await.unwrap();
            until_running(&vmm, &name).await;
            let t = t.elapsed().as_secs_f64();
            tokio::time::sleep(Duration::from_secs(1)).await;
            let kib = rss_kib(info.pid.unwrap())
                + info.virtiofsd.iter().map(|p| rss_kib(*p)).sum::<u64>();
            vmm.delete(&name).await.unwrap();
            (t, kib)
        });
        vmm_times.push(t);
        rss.push(kib as f64);
    }
    let (b, v) = (median(bare), median(vmm_times));
    println!("runs: {runs} (medians), TCG, 1 vCPU, 256 MiB");
    println!("bare qemu boot to init:            {b:.2} s");
    println!("vmm create to entrypoint running:  {v:.2} s");
    println!("ratio:                             {:.2}", v / b);
    println!(
        "host memory per VM (qemu+virtiofsd RSS): {:.0} MiB",
        median(rss) / 1024.0
    );

    // Adoption: N running VMs, a new VMM instance, reconcile.
    let took = rt.block_on(async {
        let vmm = QemuVmm::open(cfg.clone()).unwrap();
        let names: Vec<String> = (0..adopt_n).map(|i| format!("adopt-{i}")).collect();
        for n in &names {
            vmm.create(spec(&g, &root, n)).await.unwrap();
        }
        for n in &names {
            until_running(&vmm, n).await;
        }
        drop(vmm);
        let t = Instant::now();
        let vmm = QemuVmm::open(cfg.clone()).unwrap();
        let r = vmm.reconcile().await.unwrap();
        let took = t.elapsed();
        assert_eq!(r.adopted.len(), adopt_n, "{r:?}");
        for n in &names {
            vmm.delete(n).await.unwrap();
        }
        took
    });
    println!(
        "adopt {adopt_n} running VMs (open + reconcile): {:.2} ms",
        took.as_secs_f64() * 1000.0
    );
}
