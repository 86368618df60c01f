//! `guest-init`, PID 1 of zos container-mode VMs, and the seed the node writes for it.
//!
//! The node (`zos-vmm`) builds a [`seed::Seed`] from a deployment and appends it to the
//! guest image's initramfs; `guest-init` reads it at boot. See `docs/vmm.md`.

pub mod control;
#[cfg(target_os = "linux")]
pub mod init;
pub mod seed;
