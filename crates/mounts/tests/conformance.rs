//! The `FlistManager` conformance suite, run against the fake and against real FUSE mounts.
//!
//! The real run publishes two flists to a grid's hub on loopback and mounts them with real
//! `zos-flist-mount` processes; it needs root and /dev/fuse and fails (never skips) without.
//! The fake run serves the suite's files from a directory at the fake's mount point, which is
//! how the fake answers `open_file`.

mod support;

use std::path::Path;

use support::Env;
use zos_mounts::conformance::{self, Fixture, NAME};
use zos_mounts::{MemoryFlists, ProcessFlists, global_name};

/// The links every fixture flist holds beside the generated tree (`own.bin`, `etc/`, ...).
fn links(src: &Path) {
    std::os::unix::fs::symlink("/etc/passwd", src.join("abs")).unwrap();
    std::os::unix::fs::symlink("etc", src.join("etc-link")).unwrap();
}

fn fixture(url: String, other_url: String, contents: Vec<u8>, rw_dir: &Path) -> Fixture {
    Fixture {
        url,
        other_url,
        file: "own.bin".into(),
        contents,
        dir: "etc".into(),
        link: "abs".into(),
        link_on_the_way: "etc-link/hostname".into(),
        rw_dir: rw_dir.to_path_buf(),
    }
}

#[tokio::test]
async fn fake_keeps_the_flist_manager_contract() {
    let dir = tempfile::tempdir().unwrap();
    let f = MemoryFlists::new(dir.path().join("mnt"), "t1");
    // The fake's "mount" of the suite's read-only mount: a directory with the fixture's tree.
    let mp = dir.path().join("mnt").join(global_name("t1", NAME));
    std::fs::create_dir_all(mp.join("etc")).unwrap();
    std::fs::write(mp.join("etc/hostname"), "fake\n").unwrap();
    std::fs::write(mp.join("own.bin"), b"the fake's file").unwrap();
    links(&mp);
    let fx = fixture(
        "https://hub.example/flists/7/a.fl".into(),
        "https://hub.example/flists/7/b.fl".into(),
        b"the fake's file".to_vec(),
        &dir.path().join("volume/rootfs"),
    );
    conformance::run(&f, &fx).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn real_keeps_the_flist_manager_contract() {
    assert!(
        nix::unistd::geteuid().is_root() && Path::new("/dev/fuse").exists(),
        "the real flist conformance run needs root and /dev/fuse"
    );
    let env = Env::start().await;
    let url = env.publish_with("a.fl", 11, links).await;
    env.publish("b.fl", 12).await;
    // The other flist by name, the first by hash: both kinds of hub URL.
    let other_url = env.hub.flist_url(env.twin, "b.fl");
    let m = ProcessFlists::new(env.config()).expect("flist manager");
    let fx = fixture(
        url,
        other_url,
        env.source("a.fl", "own.bin"),
        &env.path("volume/rootfs"),
    );
    conformance::run(&m, &fx).await;
    assert!(
        support::mount_processes_under(&env.dir.path().to_string_lossy()).is_empty(),
        "mount processes left after the suite unmounted everything"
    );
}
