//! The node image of `scripts/build-node.sh` (cached in `<target>/node`): what is in its
//! initramfs and runtime flists (no shell, no login; zos-init, the modules, QEMU and zosd are
//! there), and a boot of its kernel and initramfs under QEMU. Its sizes and the blocks it shares
//! with the VM guest image are measured by `cargo bench -p zos-devnet --bench node_image`.

use std::collections::{BTreeSet, HashSet};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use zos_flist::{BlockId, DirStore, Flist, Kind};
use zos_testkit::guest::build_node;
use zos_testkit::process::ProcessGuard;

/// Names no file of the node image may have: shells, logins, remote access.
const FORBIDDEN: &[&str] = &[
    "sh", "bash", "dash", "ash", "busybox", "zsh", "ksh", "mksh", "rbash", "csh", "tcsh", "fish",
    "login", "getty", "agetty", "mingetty", "sshd", "dropbear", "su", "sulogin", "runuser",
];

/// `cpio ARGS` over the decompressed initramfs.
fn cpio(out: &Path, args: &[&str]) -> std::process::Output {
    let mut zstd = Command::new("zstd")
        .args(["-dc"])
        .arg(out.join("initramfs.cpio.zst"))
        .stdout(Stdio::piped())
        .spawn()
        .expect("zstd");
    let output = Command::new("cpio")
        .args(args)
        .stdin(zstd.stdout.take().unwrap())
        .output()
        .expect("cpio");
    let unzstd = zstd.wait().expect("zstd");
    assert!(unzstd.success(), "zstd -dc initramfs.cpio.zst: {unzstd}");
    assert!(output.status.success(), "cpio {args:?}: {output:?}");
    output
}

/// The paths in the initramfs (`cpio -t`).
fn initramfs_paths(out: &Path) -> Vec<String> {
    String::from_utf8(cpio(out, &["-t", "--quiet"]).stdout)
        .unwrap()
        .lines()
        .map(|l| l.trim_start_matches("./").to_string())
        .collect()
}

/// One file of the initramfs (`cpio -i --to-stdout`).
fn initramfs_file(out: &Path, path: &str) -> String {
    let file = cpio(out, &["-i", "--quiet", "--to-stdout", path]);
    assert!(!file.stdout.is_empty(), "no {path} in the initramfs");
    String::from_utf8(file.stdout).unwrap()
}

fn base_name(path: &str) -> &str {
    path.rsplit('/').next().unwrap_or(path)
}

fn forbidden_in<'a>(paths: impl IntoIterator<Item = &'a str>) -> Vec<&'a str> {
    paths
        .into_iter()
        .filter(|p| FORBIDDEN.contains(&base_name(p)))
        .collect()
}

fn kernel_release(out: &Path) -> String {
    std::fs::read_to_string(out.join("kernel.version"))
        .unwrap()
        .trim()
        .to_string()
}

fn block_ids(fl: &Flist) -> HashSet<BlockId> {
    fl.walk()
        .iter()
        .flat_map(|(_, n)| n.blocks.iter().map(|b| b.id))
        .collect()
}

#[test]
fn the_node_image_has_no_shell_and_holds_what_the_node_runs() {
    let out = build_node();
    let release = kernel_release(&out);

    // The initramfs: zos-init as /init, the modules with modules.dep, the pinned keys.
    let paths = initramfs_paths(&out);
    assert_eq!(
        forbidden_in(paths.iter().map(String::as_str)),
        Vec::<&str>::new()
    );
    let set: BTreeSet<&str> = paths.iter().map(String::as_str).collect();
    for p in [
        "init",
        "usr/bin/zos-flist-mount",
        "etc/zos/release-keys.json",
        "etc/zos/modules",
        "dev",
        "proc",
        "sys",
    ] {
        assert!(set.contains(p), "no /{p} in the initramfs");
    }
    let moddir = format!("usr/lib/modules/{release}");
    assert!(set.contains(format!("{moddir}/modules.dep").as_str()));
    // modules.dep names every module the node needs, and every dependency it lists is there.
    let dep = initramfs_file(&out, &format!("{moddir}/modules.dep"));
    let mut names = HashSet::new();
    for line in dep.lines() {
        let (module, deps) = line.split_once(':').expect("modules.dep line");
        names.insert(base_name(module).trim_end_matches(".ko").replace('-', "_"));
        for d in std::iter::once(module).chain(deps.split_whitespace()) {
            assert!(
                set.contains(format!("{moddir}/{d}").as_str()),
                "modules.dep lists {d}, which is not in the initramfs"
            );
        }
    }
    for m in [
        "virtio_net",
        "virtio_blk",
        "virtio_pci",
        "fuse",
        "overlay",
        "btrfs",
        "ext4",
        "wireguard",
        "tun",
        "bridge",
        "veth",
        "macvlan",
        "vxlan",
        "nf_tables",
        "button",
        "evdev",
    ] {
        assert!(names.contains(m), "module {m} is not in modules.dep");
    }

    // The runtime flists, read through the flist library.
    let store = DirStore::new(out.join("blocks"));
    let mut entries = 0;
    for (name, must) in [
        (
            "zos-base",
            &[
                "/usr/bin/qemu-system-x86_64",
                "/usr/lib/qemu/virtiofsd",
                "/usr/bin/btrfs",
                "/usr/sbin/nft",
                "/usr/bin/wg",
                "/usr/bin/ip",
                "/usr/sbin/mkfs.ext4",
                "/usr/lib/x86_64-linux-gnu/libc.so.6",
            ][..],
        ),
        ("zos", &["/usr/bin/zosd", "/usr/bin/zos-flist-mount"][..]),
    ] {
        let fl = Flist::open(&out.join(format!("{name}.fl"))).unwrap();
        let walk = fl.walk();
        entries += walk.len();
        let bad = forbidden_in(walk.iter().map(|(p, _)| p.as_str()));
        assert!(bad.is_empty(), "{name} holds {bad:?}");
        // usr-merged: nothing at /bin, /sbin, /lib or /lib64 of the flist.
        for top in ["/bin", "/sbin", "/lib", "/lib64"] {
            assert!(
                !walk.iter().any(|(p, _)| p == top),
                "{name} has {top}: not usr-merged"
            );
        }
        for p in must {
            let (_, node) = walk
                .iter()
                .find(|(q, _)| q == p)
                .unwrap_or_else(|| panic!("{name} has no {p}"));
            let node = fl.resolve(node.ino).unwrap();
            assert!(
                matches!(node.attrs.kind(), Kind::File | Kind::Symlink),
                "{p}"
            );
        }
        // Every block of the flist is in the image's block store.
        for id in block_ids(&fl) {
            assert!(store.path_of(&id).is_file(), "{name}: block {id} missing");
        }
    }
    assert!(
        entries > 1000,
        "only {entries} entries in the runtime flists"
    );
    // The debug flist (not a runtime flist: only a dev node in debug mode mounts it) is the
    // one place a shell is: busybox and its applets.
    let debug = Flist::open(&out.join("debug.fl")).unwrap();
    let walk = debug.walk();
    for p in ["/bin/busybox", "/bin/sh", "/bin/ls"] {
        assert!(walk.iter().any(|(q, _)| q == p), "debug.fl has no {p}");
    }
    for id in block_ids(&debug) {
        assert!(store.path_of(&id).is_file(), "debug: block {id} missing");
    }
}

/// Boots the node's kernel and initramfs directly (`-kernel`/`-initrd`) under QEMU (TCG, 2 GiB,
/// serial to a log file): the kernel runs zos-init as PID 1, and no login prompt appears.
#[test]
fn the_node_kernel_boots_zos_init_as_pid_1() {
    let out = build_node();
    let work = tempfile::tempdir().unwrap();
    let serial = work.path().join("serial.log");
    let mut qemu = Command::new("qemu-system-x86_64");
    qemu.args(["-M", "q35", "-accel", "tcg", "-m", "2048", "-smp", "1"])
        .args(["-nodefaults", "-no-user-config", "-nographic", "-no-reboot"])
        .arg("-kernel")
        .arg(out.join("vmlinuz"))
        .arg("-initrd")
        .arg(out.join("initramfs.cpio.zst"))
        .arg("-serial")
        .arg(format!("file:{}", serial.display()))
        .args([
            "-append",
            "console=ttyS0 panic=-1 runmode=dev farmer_id=1 grid=http://10.0.2.2:9",
        ]);
    let mut vm = ProcessGuard::spawn("node-vm", qemu, &work.path().join("qemu.log")).unwrap();
    let start = Instant::now();
    let mut log = String::new();
    while start.elapsed() < Duration::from_secs(300) {
        log = std::fs::read_to_string(&serial).unwrap_or_default();
        if started(&log) || !vm.running() {
            break;
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    // Then until zos-init reports the modules it loaded (or a minute more).
    let more = Instant::now();
    while started(&log) && vm.running() && more.elapsed() < Duration::from_secs(60) {
        if log.contains(MODULES_MARK) {
            break;
        }
        std::thread::sleep(Duration::from_millis(500));
        log = std::fs::read_to_string(&serial).unwrap_or_default();
    }
    vm.stop(Duration::from_secs(2));
    eprintln!("serial log:\n{log}");
    assert!(
        log.contains("Run /init as init process"),
        "the kernel did not run /init"
    );
    assert!(started(&log), "zos-init did not come up as PID 1");
    assert!(!log.contains("Kernel panic"), "the kernel panicked");
    // Every module of the image loads, but those for hardware the VM lacks: KVM's (no VT-x or
    // SVM under TCG) and drivers that find no device (ENODEV: crc32c_intel without SSE4.2).
    let failed: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("cannot load module"))
        .filter(|l| !l.contains("module=kvm_") && !l.contains("(os error 19)"))
        .collect();
    assert!(failed.is_empty(), "modules failed to load: {failed:#?}");
    let lower = log.to_lowercase();
    assert!(
        !lower.contains("login:") && !lower.contains("password:"),
        "a login prompt on the serial console"
    );
}

fn started(log: &str) -> bool {
    log.lines()
        .any(|l| l.contains("zos-init") && l.contains(INIT_MARK))
}

/// What zos-init prints once it loaded the modules (`kernel modules loaded=N …`).
const MODULES_MARK: &str = "kernel modules";

/// What zos-init prints on the console once it runs as PID 1 (`zos-init 0.1.0 starting`).
const INIT_MARK: &str = " starting";
