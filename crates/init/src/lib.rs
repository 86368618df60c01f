//! `zos-init`: PID 1 of the zos node OS.
//!
//! It runs from the initramfs the grid's boot service hands a node (see `docs/boot.md`, section
//! zos-init) and does, in order: the early mounts ([`mounts`]), the kernel command line
//! ([`cmdline`]), the kernel modules ([`modules`]), the network by DHCP ([`dhcp`]), the clock from
//! the grid ([`clock`]), the signed release ([`release`]), the runtime flists mounted and
//! overlaid on `/usr` ([`mounts`], [`runtime`]), then zosd and its services, supervised
//! ([`supervise`]) with the live upgrade agent beside them ([`upgrade`], [`gate`], [`local`]),
//! until power-off. [`boot`] strings the steps together, with the paths of a [`config::Boot`]; each step is a library function so it
//! can be tested off PID 1.
//!
//! What the node image must carry for it (`scripts/build-node.sh`):
//! - zos-init as `/init`, built static (`+crt-static`) or with glibc's `libc.so.6`, `libm.so.6`,
//!   `libgcc_s.so.1` and `ld-linux-x86-64.so.2` beside it; it links no other native library
//!   (TLS is rustls with ring);
//! - `zos-flist-mount` in `/usr/bin` or `/usr/sbin` of the initramfs, static or with its
//!   libraries: the runtime flists cannot be mounted by a program inside them;
//! - the modules under `/lib/modules/<release>` with `modules.dep` (and `modules.builtin`),
//!   among them the NIC drivers, `fuse`, `overlay`, and `button` and `evdev` for the power
//!   button; `/etc/zos/modules` to load fewer than all of them;
//! - `/etc/zos/release-keys.json`, and `/bin`, `/sbin`, `/lib`, `/lib64` as links into `/usr`.
//!
//! It runs no shell and no external program but the flist mounter and the services.

pub mod boot;
pub mod clock;
pub mod cmdline;
pub mod config;
pub mod console;
pub mod dhcp;
pub mod gate;
pub mod http;
pub mod local;
pub mod modules;
pub mod mounts;
pub mod release;
pub mod runtime;
pub mod supervise;
pub mod upgrade;
