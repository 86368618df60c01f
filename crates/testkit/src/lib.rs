//! Test infrastructure: test hosts in network namespaces, loop disks, processes with cleanup,
//! wait helpers and the devnet harness. The namespaces, links and the devnet itself are
//! `zos-devnet`'s, re-exported here for tests.
//!
//! Tests that need root call [`require_root`] first: on a machine without it they skip loudly.

pub mod acme;
pub mod cli;
pub mod devnet;
pub mod disk;
pub mod guest;
pub mod net;
pub mod process;
pub mod upgrade;
pub mod user;
pub mod vmimage;

pub use zos_devnet::{cmd, netns};

/// True when running as root; otherwise prints why the calling test is skipped.
pub fn require_root(test: &str) -> bool {
    let root = nix::unistd::geteuid().is_root();
    if !root {
        eprintln!("SKIPPED {test}: needs root (namespaces, links, loop devices)");
    }
    root
}

/// Path of a binary of this workspace built beside the running executable (tests, the CLI).
///
/// Tests run from `target/<profile>/deps/`, binaries live in `target/<profile>/`.
pub fn workspace_binary(name: &str) -> Option<std::path::PathBuf> {
    let exe = std::env::current_exe().ok()?;
    let mut dir = exe.parent()?;
    for _ in 0..2 {
        let candidate = dir.join(name);
        if candidate.is_file() {
            return Some(candidate);
        }
        dir = dir.parent()?;
    }
    None
}
