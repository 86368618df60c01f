//! VM mode's configuration: a NoCloud seed (cloud-init's `cidata` volume) and the disks the
//! node prepares.

use std::fmt::Write as _;
use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};
use std::process::Command;

use ipnet::{IpNet, Ipv4Net};

use super::{OpenedFile, Result, VmmError};
use zos_runtime::find_program;

/// One interface of the guest, matched by MAC.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NoCloudNic {
    pub mac: String,
    pub addresses: Vec<IpNet>,
    pub gateway4: Option<Ipv4Addr>,
    pub routes: Vec<(Ipv4Net, Ipv4Addr)>,
}

/// What cloud-init in the guest is told.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NoCloud {
    pub instance_id: String,
    pub hostname: String,
    pub nics: Vec<NoCloudNic>,
    pub nameservers: Vec<IpAddr>,
    pub ssh_keys: Vec<String>,
}

fn q(s: &str) -> String {
    serde_json::to_string(s).expect("strings serialize")
}

impl NoCloud {
    /// `meta-data`.
    pub fn meta_data(&self) -> String {
        format!(
            "instance-id: {}\nlocal-hostname: {}\n",
            q(&self.instance_id),
            q(&self.hostname)
        )
    }

    /// `network-config` (version 2, interfaces matched by MAC).
    pub fn network_config(&self) -> String {
        let mut s = String::from("version: 2\nethernets:\n");
        for (i, n) in self.nics.iter().enumerate() {
            let _ = writeln!(s, "  eth{i}:\n    match:\n      macaddress: {}", q(&n.mac));
            let _ = writeln!(s, "    set-name: eth{i}");
            let addrs: Vec<String> = n.addresses.iter().map(|a| q(&a.to_string())).collect();
            let _ = writeln!(s, "    addresses: [{}]", addrs.join(", "));
            if let Some(g) = n.gateway4 {
                let _ = writeln!(s, "    gateway4: {g}");
            }
            if !n.routes.is_empty() {
                s.push_str("    routes:\n");
                for (to, via) in &n.routes {
                    let _ = writeln!(s, "      - to: {to}\n        via: {via}");
                }
            }
            if i == 0 && !self.nameservers.is_empty() {
                let ns: Vec<String> = self.nameservers.iter().map(|n| n.to_string()).collect();
                let _ = writeln!(s, "    nameservers:\n      addresses: [{}]", ns.join(", "));
            }
        }
        s
    }

    /// `user-data`.
    pub fn user_data(&self) -> String {
        let mut s = String::from("#cloud-config\n");
        if !self.ssh_keys.is_empty() {
            s.push_str("users:\n  - name: root\n    ssh_authorized_keys:\n");
            for k in &self.ssh_keys {
                let _ = writeln!(s, "      - {}", q(k));
            }
        }
        s
    }

    /// Writes the seed as an ISO 9660 volume labelled `cidata` at `path`.
    pub fn write_image(&self, path: &Path) -> Result<()> {
        let dir = tempfile::tempdir().map_err(|e| VmmError::Io {
            op: "create a directory for",
            path: path.to_path_buf(),
            source: e,
        })?;
        for (name, text) in [
            ("meta-data", self.meta_data()),
            ("network-config", self.network_config()),
            ("user-data", self.user_data()),
        ] {
            let p = dir.path().join(name);
            std::fs::write(&p, text).map_err(|source| VmmError::Io {
                op: "write",
                path: p,
                source,
            })?;
        }
        // The seed holds SSH keys: the image is made mode 0600 before genisoimage fills it.
        zos_runtime::private::create_file(path).map_err(|source| VmmError::Io {
            op: "create",
            path: path.to_path_buf(),
            source,
        })?;
        let tool = find_program("genisoimage");
        run(Command::new(&tool)
            .args(["-quiet", "-volid", "cidata", "-joliet", "-rock", "-output"])
            .arg(path)
            .arg(dir.path()))
    }
}

fn run(cmd: &mut Command) -> Result<()> {
    let program = PathBuf::from(cmd.get_program());
    let out = cmd.output().map_err(|source| VmmError::Spawn {
        program: program.clone(),
        source,
    })?;
    if out.status.success() {
        Ok(())
    } else {
        Err(VmmError::Internal(format!(
            "{} failed: {}",
            program.display(),
            String::from_utf8_lossy(&out.stderr).trim()
        )))
    }
}

/// Writes `image` at the start of the disk `path` when the disk is blank (its first MiB is
/// zeros); answers whether it did. The image is read from its open file (from its first byte),
/// never opened again by path.
pub fn write_image_if_blank(image: &OpenedFile, path: &Path) -> Result<bool> {
    use std::io::{Read, Seek, Write};
    let io = |op: &'static str, p: &Path| {
        let p = p.to_path_buf();
        move |source| VmmError::Io {
            op,
            path: p,
            source,
        }
    };
    let origin = PathBuf::from(&image.origin);
    let mut disk = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .map_err(io("open", path))?;
    let disk_size = disk.metadata().map_err(io("stat", path))?.len();
    let mut head = vec![0u8; 1 << 20];
    let n = disk.read(&mut head).map_err(io("read", path))?;
    if head[..n].iter().any(|b| *b != 0) {
        return Ok(false);
    }
    let mut src: &std::fs::File = &image.file;
    let size = src.metadata().map_err(io("stat", &origin))?.len();
    if size > disk_size {
        return Err(VmmError::Invalid {
            field: "image".into(),
            reason: format!(
                "{} is {size} bytes, larger than its disk ({disk_size} bytes)",
                image.origin
            ),
        });
    }
    src.seek(std::io::SeekFrom::Start(0))
        .map_err(io("seek", &origin))?;
    disk.seek(std::io::SeekFrom::Start(0))
        .map_err(io("seek", path))?;
    std::io::copy(&mut src, &mut disk).map_err(io("write", path))?;
    disk.flush()
        .and_then(|_| disk.sync_all())
        .map_err(io("sync", path))?;
    Ok(true)
}

/// Puts an ext4 file system labelled `label` on the disk file `path` when it holds none (a new
/// zmount); answers whether it did. A disk with any file system is left alone.
pub fn format_if_empty(path: &Path, label: &str) -> Result<bool> {
    let blkid = Command::new(find_program("blkid"))
        .args(["-p", "-o", "value", "-s", "TYPE"])
        .arg(path)
        .output()
        .map_err(|source| VmmError::Spawn {
            program: "blkid".into(),
            source,
        })?;
    // blkid exits 2 when it finds nothing.
    match blkid.status.code() {
        Some(0) => return Ok(false),
        Some(2) => {}
        _ => {
            return Err(VmmError::Internal(format!(
                "blkid {}: {}",
                path.display(),
                String::from_utf8_lossy(&blkid.stderr).trim()
            )));
        }
    }
    run(Command::new(find_program("mkfs.ext4"))
        .args([
            "-q",
            "-F",
            "-L",
            label,
            "-E",
            "nodiscard,lazy_itable_init=1",
        ])
        .arg(path))?;
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seed_files() {
        let s = NoCloud {
            instance_id: "7-1-vm".into(),
            hostname: "vm1".into(),
            nics: vec![NoCloudNic {
                mac: "02:00:00:00:00:01".into(),
                addresses: vec!["10.20.1.2/24".parse().unwrap()],
                gateway4: Some("10.20.1.1".parse().unwrap()),
                routes: vec![(
                    "10.20.0.0/16".parse().unwrap(),
                    "10.20.1.1".parse().unwrap(),
                )],
            }],
            nameservers: vec!["1.1.1.1".parse().unwrap()],
            ssh_keys: vec!["ssh-ed25519 AAAA me".into()],
        };
        assert_eq!(
            s.meta_data(),
            "instance-id: \"7-1-vm\"\nlocal-hostname: \"vm1\"\n"
        );
        let n = s.network_config();
        assert!(n.contains("macaddress: \"02:00:00:00:00:01\""), "{n}");
        assert!(
            n.contains("- to: 10.20.0.0/16\n        via: 10.20.1.1"),
            "{n}"
        );
        assert!(n.contains("addresses: [1.1.1.1]"), "{n}");
        assert!(s.user_data().contains("\"ssh-ed25519 AAAA me\""));
    }

    #[test]
    fn the_seed_image_with_ssh_keys_is_readable_by_root_only() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("vm-cidata.iso");
        NoCloud {
            instance_id: "7-1-vm".into(),
            hostname: "vm".into(),
            nics: vec![],
            nameservers: vec![],
            ssh_keys: vec!["ssh-ed25519 AAAA me".into()],
        }
        .write_image(&p)
        .unwrap();
        assert_eq!(zos_runtime::private::mode_of(&p).unwrap(), 0o600);
        assert!(std::fs::metadata(&p).unwrap().len() > 0);
    }
}
