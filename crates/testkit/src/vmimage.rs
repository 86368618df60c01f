//! A small bootable raw disk image for VM-mode tests: an MBR with syslinux's boot code, one
//! ext2 partition holding extlinux, the packaged (compressed) guest kernel and an initramfs
//! whose init reads the NoCloud seed (the disk with serial `cidata`) and prints
//! `NOCLOUD hostname=<local-hostname>` on the console.
//!
//! Built from what `scripts/build-guest.sh` leaves in its output directory (`vmlinuz`,
//! `modules/`) and Debian's busybox-static, syslinux, extlinux, sfdisk and e2fsprogs.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, bail};

/// The init of the image's initramfs.
const INIT: &str = r#"#!/bin/sh
export PATH=/bin
busybox mount -t proc proc /proc
busybox mount -t sysfs sys /sys
busybox mount -t devtmpfs dev /dev
for m in $(busybox cat /lib/modules/modules.load); do busybox insmod /lib/modules/$m 2>/dev/null; done
n=0
while [ $n -lt 50 ]; do
  for d in /sys/block/vd*; do
    [ "$(busybox cat $d/serial 2>/dev/null)" = cidata ] && busybox mount -t iso9660 -o ro /dev/${d##*/} /mnt 2>/dev/null
  done
  [ -f /mnt/meta-data ] && break
  busybox sleep 0.2; n=$((n + 1))
done
h=$(busybox sed -n 's/^local-hostname: *"\{0,1\}\([^"]*\)"\{0,1\}$/\1/p' /mnt/meta-data)
busybox hostname "$h"
echo "NOCLOUD hostname=$(busybox hostname)"
while :; do busybox sleep 3600; done
"#;

fn sh(cmd: &str) -> anyhow::Result<()> {
    let out = Command::new("sh").arg("-c").arg(cmd).output()?;
    if !out.status.success() {
        bail!("`{cmd}`: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(())
}

fn busybox() -> anyhow::Result<PathBuf> {
    ["/bin/busybox", "/usr/bin/busybox"]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.is_file())
        .context("busybox is not installed: run scripts/install-deps.sh")
}

/// Builds `<work>/image.raw` (64 MiB) from the guest build in `guest`; answers its path.
/// Uses a loop device for the partition while it is filled, detached before returning.
pub fn bootable_image(work: &Path, guest: &Path) -> anyhow::Result<PathBuf> {
    let img = work.join("image.raw");
    let build = work.join("image-build");
    let initrd = build.join("initrd");
    for d in ["bin", "proc", "sys", "dev", "mnt", "lib/modules"] {
        std::fs::create_dir_all(initrd.join(d))?;
    }
    std::fs::copy(busybox()?, initrd.join("bin/busybox"))?;
    std::os::unix::fs::symlink("busybox", initrd.join("bin/sh"))?;
    sh(&format!(
        "cp {m}/*.ko {m}/modules.load {d}/lib/modules/",
        m = guest.join("modules").display(),
        d = initrd.display()
    ))?;
    std::fs::write(initrd.join("init"), INIT)?;
    sh(&format!(
        "chmod 755 {i}/init && cd {i} && find . | cpio --quiet -o -H newc -R 0:0 | gzip -1 > {b}/initrd.gz",
        i = initrd.display(),
        b = build.display()
    ))?;
    // 64 MiB disk, one bootable partition from 1 MiB.
    sh(&format!(
        "truncate -s 64M {img} && echo 'start=2048, type=83, bootable' | sfdisk -q {img} && \
         dd if=/usr/lib/syslinux/mbr/mbr.bin of={img} conv=notrunc bs=440 count=1 status=none",
        img = img.display()
    ))?;
    let out = Command::new("losetup")
        .args(["-f", "--show", "-o", "1048576"])
        .arg(&img)
        .output()?;
    if !out.status.success() {
        bail!("losetup: {}", String::from_utf8_lossy(&out.stderr));
    }
    let dev = String::from_utf8_lossy(&out.stdout).trim().to_string();
    let mnt = build.join("mnt");
    std::fs::create_dir_all(&mnt)?;
    let res = sh(&format!(
        "mkfs.ext2 -q -L root {dev} && mount {dev} {m} && mkdir -p {m}/boot && \
         cp {g}/vmlinuz {m}/boot/vmlinuz && cp {b}/initrd.gz {m}/boot/initrd.gz && \
         printf 'DEFAULT linux\\nTIMEOUT 1\\nLABEL linux\\n  KERNEL /boot/vmlinuz\\n  INITRD /boot/initrd.gz\\n  APPEND console=ttyS0 panic=-1 quiet\\n' > {m}/boot/extlinux.conf && \
         extlinux --install {m}/boot >/dev/null",
        m = mnt.display(),
        g = guest.display(),
        b = build.display()
    ));
    let _ = Command::new("umount").arg(&mnt).status();
    let _ = Command::new("losetup").args(["-d", &dev]).status();
    res.context("building the image's file system")?;
    let _ = std::fs::remove_dir_all(&build);
    Ok(img)
}
