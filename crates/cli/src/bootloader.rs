//! `zos farm bootloader`: what a farmer boots the farm's servers with. It holds only a network
//! loader (iPXE, from Debian's `ipxe` package) and a script with the farm's parameters (farm id,
//! runmode, grid URL) that brings up the network and fetches the farm's boot script from the
//! grid, which names the current release's kernel and initramfs (docs/boot.md).
//!
//! - `ipxe`: that script alone, for a PXE server whose iPXE chains it, or to read.
//! - `iso`: a hybrid image (BIOS): ISOLINUX boots `ipxe.lkrn` with the script as its initrd,
//!   which iPXE runs in place of its own autoboot. Burn it, or attach it to a BMC.
//! - `usb`: the same hybrid image, whose MBR boots from a USB stick (`dd if=FILE of=/dev/sdX`).

use std::path::{Path, PathBuf};

use anyhow::{Context, bail, ensure};
use clap::{Args, ValueEnum};
use zos_client::bootloader::hybrid_image;
use zos_types::boot::{GridUrl, NodeArg, chain_script};
use zos_types::policy::{AdmissionToken, NodeAdmission};
use zos_types::release::RunMode;

use crate::global::{Global, client, grid_url, load_key, signed_client};
use crate::output::outln;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Format {
    Iso,
    Usb,
    Ipxe,
}

#[derive(Debug, Args)]
pub struct BootloaderArgs {
    /// The farm whose nodes boot with it.
    #[arg(long)]
    pub farm: u32,
    /// Which grid's releases they boot.
    #[arg(long, default_value = "prod")]
    pub runmode: RunMode,
    #[arg(long, value_enum)]
    pub format: Format,
    /// Where to write it. (Here `-o/--output` names this file, not the output format: use
    /// --json for a summary scripts read.)
    #[arg(short, long = "output", id = "output", value_name = "FILE", value_hint = clap::ValueHint::FilePath)]
    pub out: String,
    /// The grid's URL as the farm's nodes reach it (default: --grid).
    #[arg(long)]
    pub boot_url: Option<String>,
    /// Days the bootloader's admission token admits nodes, for a farm that admits only signed
    /// nodes (the token is signed with your key, which must be the farmer's).
    #[arg(long, default_value_t = 365)]
    pub admission_days: u32,
    /// An extra kernel argument for the farm's nodes (repeatable): only `zos-debug` (a console
    /// shell, honoured on runmode dev only), `zos-upgrade-gate=SECS` and
    /// `zos-upgrade-check=SECS` (10 to 86400). The grid checks them again.
    #[arg(long = "kernel-arg", value_name = "ARG")]
    pub kernel_args: Vec<String>,
}

pub async fn bootloader(a: BootloaderArgs, g: &Global) -> anyhow::Result<()> {
    let out = PathBuf::from(&a.out);
    for arg in &a.kernel_args {
        arg.parse::<NodeArg>()
            .with_context(|| format!("--kernel-arg {arg:?}"))?;
    }
    let node_args = NodeArg::parse_list(&a.kernel_args.join(",")).context("--kernel-arg")?;
    let grid = grid_url(g)?;
    let farm = client(g)?
        .get_farm(a.farm)
        .await
        .with_context(|| format!("farm {} on {grid}", a.farm))?;
    let boot_url = a.boot_url.clone().unwrap_or_else(|| grid.clone());
    let url = GridUrl::parse(&boot_url)?;
    let admission = match farm.policy.node_admission {
        NodeAdmission::Open => None,
        NodeAdmission::Signed => {
            let c = signed_client(g).await.context(
                "farm admits only signed nodes: its bootloader carries an admission token signed with the farmer's key (--key)",
            )?;
            if c.twin_id() != Some(farm.twin_id) {
                bail!(
                    "farm {} admits only signed nodes and belongs to twin {}: only its farmer's key makes its bootloader",
                    farm.id,
                    farm.twin_id
                );
            }
            ensure!(a.admission_days > 0, "--admission-days must be at least 1");
            let now = c.health().await?.time;
            let expires = now.saturating_add(i64::from(a.admission_days) * 86_400);
            Some(AdmissionToken::sign(&load_key(g)?, farm.id, expires))
        }
    };
    let script = chain_script(farm.id, a.runmode, &url, admission.as_ref(), &node_args);
    match a.format {
        Format::Ipxe => write(&out, script.as_bytes())?,
        Format::Iso | Format::Usb => hybrid_image(&out, &script, farm.id, a.runmode, &url)?,
    }
    if g.structured() {
        return crate::output::json(&serde_json::json!({
            "farm": farm.id, "runmode": a.runmode, "grid": url.as_str(),
            "format": format!("{:?}", a.format).to_lowercase(), "file": out,
        }));
    }
    outln!(
        "bootloader of farm {} ({}), runmode {}, grid {url}: {}",
        farm.id,
        farm.name,
        a.runmode,
        out.display()
    )?;
    if a.format == Format::Usb {
        outln!(
            "write it to a USB stick with: dd if={} of=/dev/sdX bs=4M",
            out.display()
        )?;
    }
    Ok(())
}

fn write(out: &Path, data: &[u8]) -> anyhow::Result<()> {
    std::fs::write(out, data).with_context(|| format!("cannot write {}", out.display()))
}
