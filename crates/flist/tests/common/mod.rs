//! Helpers shared by the flist integration tests.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;
#[allow(unused_imports)] // not every test binary uses it
pub use zos_runtime::error_chain;

use sha2::{Digest, Sha256};

/// True when the test can mount (root and /dev/fuse); otherwise says why, loudly.
pub fn can_mount(test: &str) -> bool {
    if !nix::unistd::geteuid().is_root() {
        eprintln!("SKIP {test}: needs root to mount FUSE and create device nodes");
        return false;
    }
    if !Path::new("/dev/fuse").exists() {
        eprintln!("SKIP {test}: /dev/fuse is missing");
        return false;
    }
    true
}

fn run(cmd: &mut Command) {
    let st = cmd.status().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(st.success(), "{cmd:?} failed: {st}");
}

/// Fills `path` with `len` bytes that do not repeat (xorshift stream seeded by `seed`).
pub fn write_noise(path: &Path, len: u64, seed: u64) {
    let mut f = std::io::BufWriter::with_capacity(1 << 20, std::fs::File::create(path).unwrap());
    let mut x = seed | 1;
    let mut buf = vec![0u8; 1 << 20];
    let mut left = len;
    while left > 0 {
        for c in buf.chunks_exact_mut(8) {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            c.copy_from_slice(&x.to_le_bytes());
        }
        let n = left.min(buf.len() as u64) as usize;
        f.write_all(&buf[..n]).unwrap();
        left -= n as u64;
    }
    f.flush().unwrap();
}

/// Builds a root file system: busybox with a symlink per applet, a hard link, setuid bits,
/// owners with uid != gid, empty files, devices, a fifo, a socket, symlink loops, odd names,
/// files around the block size, and a big file of `big` bytes.
pub fn busybox_tree(root: &Path, big: u64) {
    let d = |p: &str| {
        let p = root.join(p);
        std::fs::create_dir_all(&p).unwrap();
        p
    };
    for p in [
        "bin",
        "sbin",
        "etc",
        "usr/bin",
        "usr/share/deep/er/est",
        "var/empty",
        "tmp",
        "dev",
        "root",
        "data",
    ] {
        d(p);
    }
    std::fs::copy("/bin/busybox", root.join("bin/busybox")).unwrap();
    std::fs::set_permissions(
        root.join("bin/busybox"),
        std::fs::Permissions::from_mode(0o4755),
    )
    .unwrap();
    let list = Command::new("/bin/busybox").arg("--list").output().unwrap();
    let applets = String::from_utf8(list.stdout).unwrap();
    let mut n = 0;
    for a in applets.lines().filter(|a| !a.is_empty() && *a != "busybox") {
        std::os::unix::fs::symlink("busybox", root.join("bin").join(a)).unwrap();
        n += 1;
    }
    assert!(n > 100, "busybox lists its applets");
    std::os::unix::fs::symlink("/bin/busybox", root.join("sbin/init")).unwrap();
    std::os::unix::fs::symlink("../../bin/busybox", root.join("usr/bin/env")).unwrap();
    std::fs::hard_link(root.join("bin/busybox"), root.join("usr/bin/busybox-hard")).unwrap();
    std::fs::write(root.join("etc/passwd"), "root:x:0:0:root:/root:/bin/sh\n").unwrap();
    std::fs::write(root.join("etc/hostname"), "zos\n").unwrap();
    std::fs::write(root.join("etc/empty"), "").unwrap();
    std::fs::write(root.join("var/empty/.keep"), "").unwrap();
    std::fs::set_permissions(root.join("tmp"), std::fs::Permissions::from_mode(0o1777)).unwrap();
    std::fs::set_permissions(root.join("root"), std::fs::Permissions::from_mode(0o700)).unwrap();
    std::fs::write(root.join("etc/shadow"), "root:*:1::::::\n").unwrap();
    std::fs::set_permissions(
        root.join("etc/shadow"),
        std::fs::Permissions::from_mode(0o640),
    )
    .unwrap();
    std::os::unix::fs::chown(root.join("etc/shadow"), Some(0), Some(42)).unwrap();
    std::fs::write(root.join("data/owned"), "mine").unwrap();
    std::os::unix::fs::chown(root.join("data/owned"), Some(1234), Some(5678)).unwrap();
    std::fs::write(root.join("usr/bin/sgid"), "#!/bin/sh\n").unwrap();
    std::fs::set_permissions(
        root.join("usr/bin/sgid"),
        std::fs::Permissions::from_mode(0o2755),
    )
    .unwrap();
    std::fs::write(root.join("usr/share/deep/er/est/file with spaces ünï"), "x").unwrap();
    write_noise(&root.join("data/block-exact"), 512 * 1024, 11);
    write_noise(&root.join("data/block-plus-one"), 512 * 1024 + 1, 12);
    write_noise(&root.join("data/small"), 4321, 13);
    write_noise(&root.join("data/big.img"), big, 14);
    std::os::unix::fs::symlink("loop-b", root.join("data/loop-a")).unwrap();
    std::os::unix::fs::symlink("loop-a", root.join("data/loop-b")).unwrap();
    std::os::unix::fs::symlink("nowhere/at/all", root.join("data/dangling")).unwrap();
    run(Command::new("mknod")
        .arg(root.join("dev/null"))
        .args(["c", "1", "3"]));
    run(Command::new("mknod")
        .arg(root.join("dev/loop9"))
        .args(["b", "7", "9"]));
    run(Command::new("mkfifo").arg(root.join("dev/fifo")));
    let sock = std::os::unix::net::UnixListener::bind(root.join("dev/sock")).unwrap();
    drop(sock);
    // set a few times to known values (seconds)
    run(Command::new("touch")
        .args(["-h", "-d", "@1600000000"])
        .arg(root.join("etc/passwd")));
    run(Command::new("touch")
        .args(["-h", "-d", "@1500000000"])
        .arg(root.join("sbin/init")));
}

/// What a path looks like, as compared between a source tree and a mount.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Seen {
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub size: u64,
    pub mtime: i64,
    pub rdev: u64,
    pub target: Option<PathBuf>,
    pub hash: Option<String>,
}

pub fn sha256_file(path: &Path) -> std::io::Result<String> {
    let mut f = std::fs::File::open(path)?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(hex::encode(h.finalize()))
}

/// Every path under `root` (relative), with its attributes and content hash, plus the groups
/// of paths that share an inode.
pub fn survey(root: &Path) -> (BTreeMap<String, Seen>, Vec<Vec<String>>) {
    let mut out = BTreeMap::new();
    let mut inodes: BTreeMap<u64, Vec<String>> = BTreeMap::new();
    let mut stack = vec![root.to_owned()];
    while let Some(dir) = stack.pop() {
        for e in std::fs::read_dir(&dir).unwrap() {
            let e = e.unwrap();
            let p = e.path();
            let m = std::fs::symlink_metadata(&p).unwrap();
            let rel = p.strip_prefix(root).unwrap().to_string_lossy().into_owned();
            let ft = m.file_type();
            if ft.is_dir() {
                stack.push(p.clone());
            }
            if ft.is_file() {
                inodes.entry(m.ino()).or_default().push(rel.clone());
            }
            out.insert(
                rel,
                Seen {
                    mode: m.mode(),
                    uid: m.uid(),
                    gid: m.gid(),
                    size: if ft.is_dir() { 0 } else { m.size() },
                    mtime: m.mtime(),
                    rdev: m.rdev(),
                    target: ft.is_symlink().then(|| std::fs::read_link(&p).unwrap()),
                    hash: ft.is_file().then(|| sha256_file(&p).unwrap()),
                },
            );
        }
    }
    let mut groups: Vec<Vec<String>> = inodes
        .into_values()
        .filter(|g| g.len() > 1)
        .map(|mut g| {
            g.sort();
            g
        })
        .collect();
    groups.sort();
    (out, groups)
}

/// Asserts that two surveys agree, path by path.
pub fn assert_same_tree(src: &Path, mnt: &Path) {
    let (a, ga) = survey(src);
    let (b, gb) = survey(mnt);
    let ka: Vec<&String> = a.keys().collect();
    let kb: Vec<&String> = b.keys().collect();
    assert_eq!(ka, kb, "the same paths");
    for (p, sa) in &a {
        assert_eq!(sa, &b[p], "attributes of {p}");
    }
    assert_eq!(ga, gb, "the same hard link groups");
    // The root directory's own attributes too.
    let (ra, rb) = (
        std::fs::metadata(src).unwrap(),
        std::fs::metadata(mnt).unwrap(),
    );
    assert_eq!(
        (ra.mode(), ra.uid(), ra.gid()),
        (rb.mode(), rb.uid(), rb.gid())
    );
}

/// A child process killed (and its mount detached) when dropped.
pub struct Child {
    pub child: std::process::Child,
    pub mountpoint: PathBuf,
}

impl Drop for Child {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = nix::mount::umount2(&self.mountpoint, nix::mount::MntFlags::MNT_DETACH);
    }
}

/// Waits until `path` is a mount point (or the timeout passes).
pub fn wait_mounted(path: &Path, secs: u64) -> bool {
    let end = std::time::Instant::now() + std::time::Duration::from_secs(secs);
    while std::time::Instant::now() < end {
        if zos_flist::mount::is_mount_point(path) {
            return true;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    false
}
