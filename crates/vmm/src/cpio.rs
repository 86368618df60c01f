//! The seed archive: a tiny cpio ("newc") appended to the guest's initramfs.
//!
//! The kernel unpacks concatenated archives in order, each starting on a 4-byte boundary, so
//! appending `zos/seed.json` to the image's initramfs puts the seed where `guest-init` reads it
//! without rebuilding the image or adding a device.

use std::io::{self, Write};
use std::path::Path;

use zos_guest_init::seed::{SEED_PATH, Seed};

/// A newc archive of `entries` (path without the leading `/`, mode with its type bits, content)
/// and the trailer.
pub fn newc_archive(entries: &[(&str, u32, &[u8])]) -> Vec<u8> {
    let mut out = Vec::new();
    let mut ino = 1u32;
    let mut push = |out: &mut Vec<u8>, name: &str, mode: u32, data: &[u8]| {
        let nlink = if mode & 0o040000 != 0 { 2 } else { 1 };
        let fields = [
            ino,
            mode,
            0,
            0,
            nlink,
            0,
            data.len() as u32,
            0,
            0,
            0,
            0,
            name.len() as u32 + 1,
            0,
        ];
        ino += 1;
        out.extend_from_slice(b"070701");
        for f in fields {
            out.extend_from_slice(format!("{f:08x}").as_bytes());
        }
        out.extend_from_slice(name.as_bytes());
        out.push(0);
        pad(out, 4);
        out.extend_from_slice(data);
        pad(out, 4);
    };
    for (name, mode, data) in entries {
        push(&mut out, name, *mode, data);
    }
    push(&mut out, "TRAILER!!!", 0, &[]);
    pad(&mut out, 512);
    out
}

fn pad(out: &mut Vec<u8>, to: usize) {
    while !out.len().is_multiple_of(to) {
        out.push(0);
    }
}

/// Writes `out` = the initramfs `base`, zero padding to a 512-byte boundary, and an archive
/// holding the seed at [`SEED_PATH`].
pub fn append_seed(base: &Path, out: &Path, seed: &Seed) -> io::Result<()> {
    let mut image = std::fs::read(base)?;
    pad(&mut image, 512);
    let json = seed.to_json();
    let path = SEED_PATH.trim_start_matches('/');
    let dir = path.rsplit_once('/').map(|(d, _)| d).unwrap_or("");
    let mut entries: Vec<(&str, u32, &[u8])> = Vec::new();
    if !dir.is_empty() {
        entries.push((dir, 0o040755, &[]));
    }
    entries.push((path, 0o100600, &json));
    image.extend_from_slice(&newc_archive(&entries));
    let tmp = out.with_extension("tmp");
    // The seed holds SSH keys and the environment: readable by root only.
    let mut f = zos_runtime::private::create_file(&tmp)?;
    f.write_all(&image)?;
    f.sync_all()?;
    std::fs::rename(&tmp, out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn archive_layout() {
        let a = newc_archive(&[("zos", 0o040755, b""), ("zos/seed.json", 0o100600, b"{}")]);
        assert_eq!(a.len() % 512, 0);
        assert!(a.starts_with(b"070701"));
        // Second header starts on a 4-byte boundary right after the first entry.
        let first = 116; // header (110) + "zos\0", padded to 4
        assert_eq!(&a[first..first + 6], b"070701");
        let s = String::from_utf8_lossy(&a);
        assert!(s.contains("zos/seed.json\0"));
        assert!(s.contains("TRAILER!!!\0"));
        // File size field of the seed entry: 2 bytes.
        assert_eq!(&a[first + 6 + 6 * 8..first + 6 + 7 * 8], b"00000002");
    }

    #[test]
    fn cpio_tool_reads_it() {
        if std::process::Command::new("cpio")
            .arg("--version")
            .output()
            .is_err()
        {
            eprintln!("SKIP cpio_tool_reads_it: no cpio tool");
            return;
        }
        let d = tempfile::tempdir().unwrap();
        let a = newc_archive(&[
            ("zos", 0o040755, b""),
            ("zos/seed.json", 0o100600, b"{\"a\":1}"),
        ]);
        std::fs::write(d.path().join("a.cpio"), &a).unwrap();
        let out = std::process::Command::new("sh")
            .arg("-c")
            .arg("cpio -i --quiet -d < a.cpio && cat zos/seed.json")
            .current_dir(d.path())
            .output()
            .unwrap();
        assert!(out.status.success(), "{out:?}");
        assert_eq!(out.stdout, b"{\"a\":1}");
    }

    #[test]
    fn the_initrd_with_the_seed_is_readable_by_root_only() {
        let d = tempfile::tempdir().unwrap();
        let base = d.path().join("initramfs.cpio");
        std::fs::write(&base, newc_archive(&[("init", 0o100755, b"x")])).unwrap();
        let seed = Seed {
            version: zos_guest_init::seed::SEED_VERSION,
            instance_id: "7-1-vm".into(),
            hostname: "vm".into(),
            root_tag: "vroot".into(),
            mounts: vec![],
            interfaces: vec![],
            nameservers: vec![],
            ssh_keys: vec!["ssh-ed25519 AAAA me".into()],
            entrypoint: String::new(),
            env: Default::default(),
        };
        let out = d.path().join("initrd");
        append_seed(&base, &out, &seed).unwrap();
        assert_eq!(zos_runtime::private::mode_of(&out).unwrap(), 0o600);
    }
}
