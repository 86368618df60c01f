//! A farm's bootloader image (`zos farm bootloader --format iso|usb`, and the devnet's VMs
//! booted with `--boot iso`): a hybrid ISO 9660 image (BIOS) whose ISOLINUX boots Debian's
//! `ipxe.lkrn` with the farm's chain script ([`zos_types::boot::chain_script`]) as its initrd,
//! which iPXE runs in place of its own autoboot. Its isohybrid MBR boots it from a USB stick too.

use std::path::{Path, PathBuf};
use std::process::Command;

use zos_types::boot::GridUrl;
use zos_types::release::RunMode;

/// Debian's `ipxe` package: iPXE as a Linux-kernel-format image.
pub const IPXE_LKRN: &str = "/usr/lib/ipxe/ipxe.lkrn";
/// Debian's `isolinux` and `syslinux-common` packages.
pub const ISOLINUX_BIN: &str = "/usr/lib/ISOLINUX/isolinux.bin";
pub const ISOHYBRID_MBR: &str = "/usr/lib/ISOLINUX/isohdpfx.bin";
pub const LDLINUX_C32: &str = "/usr/lib/syslinux/modules/bios/ldlinux.c32";

/// Why no bootloader image was made.
#[derive(Debug, thiserror::Error)]
pub enum BootloaderError {
    #[error("{path} is missing: install Debian's {package} package (apt-get install {package})")]
    Missing {
        path: &'static str,
        package: &'static str,
    },
    #[error("cannot {what} {path}")]
    Io {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("xorriso is not installed: apt-get install xorriso")]
    NoXorriso,
    #[error("xorriso failed ({status}): {stderr}")]
    Xorriso { status: String, stderr: String },
}

fn io(what: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> BootloaderError {
    let path = path.to_path_buf();
    move |source| BootloaderError::Io { what, path, source }
}

fn need(path: &'static str, package: &'static str) -> Result<(), BootloaderError> {
    if Path::new(path).is_file() {
        Ok(())
    } else {
        Err(BootloaderError::Missing { path, package })
    }
}

/// Writes the hybrid image to `out`: ISOLINUX, `ipxe.lkrn`, `script` as its initrd, and
/// `zos/farm.json` with the farm's parameters.
pub fn hybrid_image(
    out: &Path,
    script: &str,
    farm: u32,
    runmode: RunMode,
    url: &GridUrl,
) -> Result<(), BootloaderError> {
    need(IPXE_LKRN, "ipxe")?;
    need(ISOLINUX_BIN, "isolinux")?;
    need(ISOHYBRID_MBR, "isolinux")?;
    need(LDLINUX_C32, "syslinux-common")?;
    let dir =
        tempfile::tempdir().map_err(io("make a temporary directory in", Path::new("/tmp")))?;
    let root = dir.path().join("root");
    for d in ["isolinux", "zos"] {
        std::fs::create_dir_all(root.join(d)).map_err(io("create", &root.join(d)))?;
    }
    for (from, to) in [
        (ISOLINUX_BIN, "isolinux/isolinux.bin"),
        (LDLINUX_C32, "isolinux/ldlinux.c32"),
        (IPXE_LKRN, "zos/ipxe.lkrn"),
    ] {
        std::fs::copy(from, root.join(to)).map_err(io("copy", Path::new(from)))?;
    }
    let farm_json = serde_json::json!({
        "farm": farm, "runmode": runmode.as_str(), "grid": url.as_str(),
    });
    for (file, text) in [
        ("zos/farm.ipxe", script.to_string()),
        (
            "zos/farm.json",
            serde_json::to_string_pretty(&farm_json).expect("JSON of plain values"),
        ),
        (
            "isolinux/isolinux.cfg",
            "DEFAULT zos\nPROMPT 0\nTIMEOUT 0\nLABEL zos\n  LINUX /zos/ipxe.lkrn\n  INITRD /zos/farm.ipxe\n"
                .to_string(),
        ),
    ] {
        let path = root.join(file);
        std::fs::write(&path, text).map_err(io("write", &path))?;
    }
    let tmp = dir.path().join("out.iso");
    let run = Command::new("xorriso")
        .args(["-as", "mkisofs", "-quiet", "-R", "-J"])
        .args(["-V", &format!("ZOS_FARM_{farm}")])
        .args(["-b", "isolinux/isolinux.bin", "-c", "isolinux/boot.cat"])
        .args(["-no-emul-boot", "-boot-load-size", "4", "-boot-info-table"])
        .args(["-isohybrid-mbr", ISOHYBRID_MBR, "-o"])
        .arg(&tmp)
        .arg(&root)
        .output();
    let run = match run {
        Ok(r) => r,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(BootloaderError::NoXorriso);
        }
        Err(e) => return Err(io("run xorriso for", out)(e)),
    };
    if !run.status.success() {
        return Err(BootloaderError::Xorriso {
            status: run.status.to_string(),
            stderr: String::from_utf8_lossy(&run.stderr).trim().to_string(),
        });
    }
    std::fs::copy(&tmp, out).map_err(io("write", out))?;
    Ok(())
}
