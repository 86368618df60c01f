//! What the flist manager's integration tests share: a grid with its hub on loopback, flists
//! packed from generated trees and published there, a `FlistConfig` under a private directory,
//! and cleanup of every mount process and mount a test leaves, also when it fails.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use zos_client::GridClient;
use zos_flist::hub::HubClient;
use zos_flist::pack::{PackOptions, Progress, Source, pack};
use zos_mounts::FlistConfig;
use zos_types::Identity;

/// Builds `zos-flist-mount` (a no-op when it is up to date) and returns its path.
pub fn mount_binary() -> PathBuf {
    static BUILT: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    BUILT
        .get_or_init(|| {
            let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
            let mut cmd = std::process::Command::new(env!("CARGO"));
            cmd.args(["build", "-q", "-p", "zos-flist", "--bin", "zos-flist-mount"])
                .current_dir(&root);
            // Variables cargo sets for this test (CARGO_MANIFEST_DIR, ...) would look like a
            // changed environment to build scripts and rebuild half the tree.
            for (k, _) in std::env::vars_os() {
                let k = k.to_string_lossy();
                if k.starts_with("CARGO_") && k != "CARGO_HOME" && k != "CARGO_TARGET_DIR" {
                    cmd.env_remove(k.as_ref());
                }
            }
            let st = cmd.status().expect("cargo runs");
            assert!(st.success(), "building zos-flist-mount failed");
            zos_testkit::workspace_binary("zos-flist-mount")
                .expect("zos-flist-mount beside the test binary after building it")
        })
        .clone()
}

/// Everything one test makes; on drop, kills mount processes serving under its directory and
/// detaches what is still mounted there, also when the test failed.
pub struct Env {
    grid: Option<zos_grid::RunningGrid>,
    pub dir: tempfile::TempDir,
    pub hub: HubClient,
    pub twin: u32,
}

impl Drop for Env {
    fn drop(&mut self) {
        let root = self.dir.path().to_string_lossy().into_owned();
        for pid in mount_processes_under(&root) {
            zos_testkit::process::kill_and_wait(pid, Duration::from_secs(5));
        }
        for _ in 0..8 {
            let points = zos_testkit::disk::mounts_under(self.dir.path()).unwrap_or_default();
            if points.is_empty() {
                break;
            }
            for p in points {
                let _ = nix::mount::umount2(&p, nix::mount::MntFlags::MNT_DETACH);
            }
        }
        drop(self.grid.take());
    }
}

/// Pids of `zos-flist-mount` processes whose arguments name a path under `root`.
pub fn mount_processes_under(root: &str) -> Vec<i32> {
    let mut out = Vec::new();
    for d in std::fs::read_dir("/proc").unwrap().flatten() {
        let Some(pid) = d.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else {
            continue;
        };
        let Ok(cmd) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
            continue;
        };
        let cmd = String::from_utf8_lossy(&cmd);
        if cmd.contains("zos-flist-mount") && cmd.contains(root) && zos_testkit::process::alive(pid)
        {
            out.push(pid);
        }
    }
    out
}

fn noise(path: &Path, len: usize, seed: u64) {
    let mut x = seed | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out.truncate(len);
    std::fs::write(path, out).unwrap();
}

/// A tree with a 2 MiB file shared by every tree (4 blocks) and one of its own (2 blocks).
fn tree(root: &Path, seed: u64) {
    std::fs::create_dir_all(root.join("usr/lib")).unwrap();
    std::fs::create_dir_all(root.join("etc")).unwrap();
    noise(&root.join("usr/lib/shared.so"), 2 << 20, 42);
    noise(&root.join("own.bin"), 700 * 1024, seed);
    std::fs::write(root.join("etc/hostname"), format!("tree-{seed}\n")).unwrap();
}

impl Env {
    pub async fn start() -> Env {
        let dir = tempfile::tempdir().unwrap();
        let grid = zos_grid::start(zos_grid::GridConfig::new(
            "127.0.0.1:0".parse().unwrap(),
            dir.path().join("grid"),
        ))
        .await
        .unwrap();
        let id = Identity::generate().unwrap();
        let twin = GridClient::new(&grid.url())
            .unwrap()
            .with_identity(id.clone())
            .create_twin(None)
            .await
            .unwrap()
            .id;
        let hub = HubClient::new(&grid.url()).unwrap().with_auth(id, twin);
        Env {
            grid: Some(grid),
            dir,
            hub,
            twin,
        }
    }

    /// The grid's URL (its hub is on the same host and port).
    #[allow(dead_code)] // not every test binary uses it
    pub fn grid_url(&self) -> String {
        self.grid.as_ref().unwrap().url()
    }

    pub fn path(&self, p: &str) -> PathBuf {
        self.dir.path().join(p)
    }

    /// Packs a tree to the hub and publishes it as `name`; answers its by-hash URL.
    pub async fn publish(&self, name: &str, seed: u64) -> String {
        self.publish_with(name, seed, |_| {}).await
    }

    /// As [`Env::publish`], with `extra` adding to the tree first.
    pub async fn publish_with(&self, name: &str, seed: u64, extra: impl FnOnce(&Path)) -> String {
        let src = self.path(&format!("src-{name}"));
        tree(&src, seed);
        extra(&src);
        let fl = self.path(&format!("{name}.fl"));
        pack(
            &Source::Dir(src),
            &fl,
            Arc::new(self.hub.block_store().unwrap()),
            &PackOptions::default(),
            &|_: &Progress| {},
        )
        .await
        .unwrap();
        let pushed = self
            .hub
            .push(name, std::fs::read(&fl).unwrap(), false)
            .await
            .unwrap();
        self.hub.url_of(&pushed.flist.hash_path())
    }

    pub fn config(&self) -> FlistConfig {
        let mut c = FlistConfig::new(
            &self.path("node-state"),
            &self.grid.as_ref().unwrap().url(),
            "t1",
        );
        c.mount_root = self.path("mnt");
        c.mount_binary = mount_binary();
        c.cache_bytes = 1 << 30;
        c
    }

    pub fn source(&self, name: &str, file: &str) -> Vec<u8> {
        std::fs::read(self.path(&format!("src-{name}")).join(file)).unwrap()
    }
}
