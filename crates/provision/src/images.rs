//! Disk images the node prepares for a machine before it boots: an ext4 file system on a new
//! zmount, a tenant's raw `image.raw` written onto its first disk, and the NoCloud `cidata`
//! seed of a VM-mode machine (see decision 0010).
//!
//! These are files of the machine's storage, not part of a VM's life: the [`DiskImages`] seam
//! prepares them, [`HostImages`] with the host's tools (`blkid`, `mkfs.ext4`, `genisoimage`),
//! and the VMM only boots what is ready. A tenant's image comes as an [`OpenedFile`]: opened by
//! the flist manager inside the flist (never through a link out of it) and copied from that open
//! file, never opened again by path (`docs/security.md`).

use std::fmt::Write as _;
use std::future::Future;
use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};
use std::process::Command;

use ipnet::{IpNet, Ipv4Net};
use zos_runtime::find_program;
use zos_types::node_api::ErrorKind;

/// Why a disk could not be prepared.
#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    #[error("cannot {op} {}", path.display())]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot run {}", program.display())]
    Spawn {
        program: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{} {} failed: {stderr}", program.display(), path.display())]
    Command {
        program: PathBuf,
        path: PathBuf,
        stderr: String,
    },
    /// The tenant's image does not fit its disk; nothing was written.
    #[error("{origin} is {size} bytes, larger than its disk ({disk_size} bytes)")]
    TooLarge {
        origin: String,
        size: u64,
        disk_size: u64,
    },
    #[error("disk preparation panicked: {0}")]
    Panicked(String),
}

impl ImageError {
    /// The protocol's kind of this error.
    pub fn kind(&self) -> ErrorKind {
        match self {
            Self::TooLarge { .. } => ErrorKind::Invalid,
            _ => ErrorKind::Internal,
        }
    }
}

fn io(op: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> ImageError + use<> {
    let path = path.to_path_buf();
    move |source| ImageError::Io { op, path, source }
}

/// A file zosd opened itself (from a tenant's flist, with `zos_mounts::FlistManager::open_file`)
/// and hands over open, with where it came from for messages.
#[derive(Debug, Clone)]
pub struct OpenedFile {
    pub file: std::sync::Arc<std::fs::File>,
    /// Where it came from (for messages and tests), e.g. `flist …: image.raw`.
    pub origin: String,
}

impl OpenedFile {
    pub fn new(file: std::fs::File, origin: impl Into<String>) -> Self {
        Self {
            file: std::sync::Arc::new(file),
            origin: origin.into(),
        }
    }
}

/// The same open file (not merely the same origin).
impl PartialEq for OpenedFile {
    fn eq(&self, other: &Self) -> bool {
        std::sync::Arc::ptr_eq(&self.file, &other.file) && self.origin == other.origin
    }
}

impl Eq for OpenedFile {}

/// How a block device is prepared before a VM gets it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DiskPrep {
    /// An ext4 file system labelled `label`, when the disk holds none (a new zmount). The node
    /// formats, not the guest: the guest may be anything, and busybox cannot make ext4.
    Format { label: String },
    /// The raw image `image` written from the disk's first byte, when the disk is blank (its
    /// first MiB is zeros); an image larger than the disk is refused. The image comes open:
    /// nothing resolves a path of a tenant's flist again.
    Image { image: OpenedFile },
    /// A NoCloud `cidata` volume written to the path (replacing what was there).
    NoCloud(NoCloud),
}

/// Prepares the disks of machines.
pub trait DiskImages: Send + Sync {
    /// Prepares the block device (or file) at `path` as `prep` says; answers whether it wrote
    /// anything.
    fn prepare(
        &self,
        path: &Path,
        prep: DiskPrep,
    ) -> impl Future<Output = Result<bool, ImageError>> + Send;
}

/// [`DiskImages`] with the host's tools, off the async threads.
#[derive(Debug, Clone, Copy, Default)]
pub struct HostImages;

impl DiskImages for HostImages {
    async fn prepare(&self, path: &Path, prep: DiskPrep) -> Result<bool, ImageError> {
        let path = path.to_path_buf();
        tokio::task::spawn_blocking(move || match prep {
            DiskPrep::Format { label } => format_if_empty(&path, &label),
            DiskPrep::Image { image } => write_image_if_blank(&image, &path),
            DiskPrep::NoCloud(seed) => seed.write_image(&path).map(|()| true),
        })
        .await
        .map_err(|e| ImageError::Panicked(e.to_string()))?
    }
}

/// Records every preparation asked and writes nothing (for the manager's tests).
#[cfg(test)]
#[derive(Debug, Default)]
pub struct RecordingImages {
    prepared: std::sync::Mutex<Vec<(PathBuf, DiskPrep)>>,
    /// The next preparation fails with this error, and records nothing.
    fail: std::sync::Mutex<Option<std::io::ErrorKind>>,
}

#[cfg(test)]
impl RecordingImages {
    /// Every preparation asked, in order.
    pub fn prepared(&self) -> Vec<(PathBuf, DiskPrep)> {
        self.prepared.lock().unwrap().clone()
    }

    /// Makes the next preparation fail as writing the disk would with `kind`.
    pub fn fail_next(&self, kind: std::io::ErrorKind) {
        *self.fail.lock().unwrap() = Some(kind);
    }
}

#[cfg(test)]
impl DiskImages for std::sync::Arc<RecordingImages> {
    async fn prepare(&self, path: &Path, prep: DiskPrep) -> Result<bool, ImageError> {
        if let Some(kind) = self.fail.lock().unwrap().take() {
            return Err(io("write", path)(kind.into()));
        }
        self.prepared
            .lock()
            .unwrap()
            .push((path.to_path_buf(), prep));
        Ok(true)
    }
}

/// One interface of the guest, matched by MAC.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NoCloudNic {
    pub mac: String,
    pub addresses: Vec<IpNet>,
    pub gateway4: Option<Ipv4Addr>,
    pub routes: Vec<(Ipv4Net, Ipv4Addr)>,
}

/// What cloud-init in a VM-mode guest is told (its NoCloud seed).
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
    pub fn write_image(&self, path: &Path) -> Result<(), ImageError> {
        let dir = tempfile::tempdir().map_err(io("create a directory for", path))?;
        for (name, text) in [
            ("meta-data", self.meta_data()),
            ("network-config", self.network_config()),
            ("user-data", self.user_data()),
        ] {
            let p = dir.path().join(name);
            std::fs::write(&p, text).map_err(io("write", &p))?;
        }
        // The seed holds SSH keys: the image is made mode 0600 before genisoimage fills it.
        zos_runtime::private::create_file(path).map_err(io("create", path))?;
        let tool = find_program("genisoimage");
        run(
            Command::new(&tool)
                .args(["-quiet", "-volid", "cidata", "-joliet", "-rock", "-output"])
                .arg(path)
                .arg(dir.path()),
            path,
        )
    }
}

fn run(cmd: &mut Command, path: &Path) -> Result<(), ImageError> {
    let program = PathBuf::from(cmd.get_program());
    let out = cmd.output().map_err(|source| ImageError::Spawn {
        program: program.clone(),
        source,
    })?;
    if out.status.success() {
        Ok(())
    } else {
        Err(ImageError::Command {
            program,
            path: path.to_path_buf(),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        })
    }
}

/// Writes `image` at the start of the disk `path` when the disk is blank (its first MiB is
/// zeros); answers whether it did. The image is read from its open file (from its first byte),
/// never opened again by path.
pub fn write_image_if_blank(image: &OpenedFile, path: &Path) -> Result<bool, ImageError> {
    use std::io::{Read, Seek, Write};
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
        return Err(ImageError::TooLarge {
            origin: image.origin.clone(),
            size,
            disk_size,
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
pub fn format_if_empty(path: &Path, label: &str) -> Result<bool, ImageError> {
    let program = find_program("blkid");
    let blkid = Command::new(&program)
        .args(["-p", "-o", "value", "-s", "TYPE"])
        .arg(path)
        .output()
        .map_err(|source| ImageError::Spawn {
            program: program.clone(),
            source,
        })?;
    // blkid exits 2 when it finds nothing.
    match blkid.status.code() {
        Some(0) => return Ok(false),
        Some(2) => {}
        _ => {
            return Err(ImageError::Command {
                program,
                path: path.to_path_buf(),
                stderr: String::from_utf8_lossy(&blkid.stderr).trim().to_string(),
            });
        }
    }
    run(
        Command::new(find_program("mkfs.ext4"))
            .args([
                "-q",
                "-F",
                "-L",
                label,
                "-E",
                "nodiscard,lazy_itable_init=1",
            ])
            .arg(path),
        path,
    )?;
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

    #[test]
    fn a_blank_disk_is_formatted_once_and_a_formatted_one_is_left_alone() {
        let d = tempfile::tempdir().unwrap();
        let disk = d.path().join("disk.img");
        std::fs::File::create(&disk)
            .unwrap()
            .set_len(64 << 20)
            .unwrap();
        assert!(format_if_empty(&disk, "zd0").unwrap());
        assert!(!format_if_empty(&disk, "zd0").unwrap(), "formatted twice");
        let out = Command::new(find_program("blkid"))
            .args(["-p", "-o", "value", "-s", "LABEL"])
            .arg(&disk)
            .output()
            .unwrap();
        assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "zd0");
    }

    #[test]
    fn an_image_goes_onto_a_blank_disk_only_and_must_fit() {
        let d = tempfile::tempdir().unwrap();
        let disk = d.path().join("disk.img");
        std::fs::File::create(&disk)
            .unwrap()
            .set_len(2 << 20)
            .unwrap();
        let src = d.path().join("image.raw");
        std::fs::write(&src, b"boot").unwrap();
        let image = OpenedFile::new(std::fs::File::open(&src).unwrap(), "flist x: image.raw");
        assert!(write_image_if_blank(&image, &disk).unwrap());
        assert_eq!(&std::fs::read(&disk).unwrap()[..4], b"boot");
        // Not blank any more: left alone.
        std::fs::write(&src, b"evil").unwrap();
        assert!(!write_image_if_blank(&image, &disk).unwrap());
        assert_eq!(&std::fs::read(&disk).unwrap()[..4], b"boot");

        let blank = d.path().join("small.img");
        std::fs::File::create(&blank).unwrap().set_len(2).unwrap();
        let e = write_image_if_blank(&image, &blank).unwrap_err();
        assert_eq!(
            e.to_string(),
            "flist x: image.raw is 4 bytes, larger than its disk (2 bytes)"
        );
        assert_eq!(e.kind(), ErrorKind::Invalid);
        assert_eq!(std::fs::read(&blank).unwrap(), [0, 0], "nothing written");
    }
}
