//! `zos-init`: PID 1 of the zos node OS.
//!
//! It runs from the initramfs the grid's boot service hands a node (see `docs/boot.md`, section
//! zos-init) and does, in order: the early mounts ([`mounts`]), the kernel command line
//! ([`cmdline`]), the kernel modules ([`modules`]), the network by DHCP ([`dhcp`]), the clock from
//! the grid ([`clock`]), the signed release ([`release`]), the runtime flists mounted and
//! overlaid on `/usr` ([`mounts`]), then zosd and its services, supervised ([`supervise`]),
//! until power-off. [`boot`] strings the steps together; each step is a library function so it
//! can be tested off PID 1.
//!
//! What the binary needs in the initramfs: glibc's `libc.so.6`, `libm.so.6`, `libgcc_s.so.1` and
//! the loader (`ld-linux-x86-64.so.2`), the kernel modules with their `modules.dep`, and
//! `/etc/zos/release-keys.json`. It runs no shell and no external program before the runtime is
//! mounted.

pub mod boot;
pub mod clock;
pub mod cmdline;
pub mod console;
pub mod dhcp;
pub mod http;
pub mod modules;
pub mod mounts;
pub mod release;
pub mod supervise;
