//! The node's flist manager on real parts: a grid with its hub on loopback, real
//! `zos-flist-mount` processes, real FUSE and overlay mounts. Needs root and /dev/fuse.

mod support;

use std::path::{Path, PathBuf};
use std::time::Duration;

use support::{Env, mount_processes_under};
use zos_mounts::{FlistError, FlistManager, ProcessFlists, STATE_FILE};

fn can_mount(test: &str) -> bool {
    if !nix::unistd::geteuid().is_root() {
        eprintln!("SKIPPED {test}: needs root to mount FUSE");
        return false;
    }
    if !Path::new("/dev/fuse").exists() {
        eprintln!("SKIPPED {test}: /dev/fuse is missing");
        return false;
    }
    true
}

/// Reads a file on a blocking thread (the FUSE server is another process, but keep the runtime
/// free anyway).
async fn read(path: PathBuf) -> std::io::Result<Vec<u8>> {
    tokio::task::spawn_blocking(move || std::fs::read(path))
        .await
        .unwrap()
}

fn alive(pid: i32) -> bool {
    zos_testkit::process::alive(pid)
}

async fn wait_dead(pid: i32) {
    for _ in 0..500 {
        if !alive(pid) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("process {pid} did not die");
}

fn cached_blocks(state: &Path) -> usize {
    let root = state.join("flist/cache/v1/blocks");
    let Ok(dirs) = std::fs::read_dir(root) else {
        return 0;
    };
    dirs.flatten()
        .flat_map(|d| std::fs::read_dir(d.path()).into_iter().flatten().flatten())
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mounts_outlive_the_manager_are_adopted_and_remade_when_killed() {
    if !can_mount("mounts_outlive_the_manager_are_adopted_and_remade_when_killed") {
        return;
    }
    let env = Env::start().await;
    let url = env.publish("app.fl", 1).await;
    let config = env.config();

    let m1 = ProcessFlists::new(config.clone()).unwrap();
    let info = m1.mount("vm1", &url).await.unwrap();
    assert_eq!(info.mountpoint, env.path("mnt").join("t1-vm1"));
    let listed = zos_testkit::disk::mounts().unwrap();
    let m = listed
        .iter()
        .find(|m| m.mount_point == info.mountpoint)
        .unwrap();
    assert_eq!(m.source, PathBuf::from("flist:t1-vm1"), "{m:?}");
    let pid = info.pid.unwrap();
    let file = info.mountpoint.join("usr/lib/shared.so");
    assert!(read(file.clone()).await.unwrap() == env.source("app.fl", "usr/lib/shared.so"));
    // Mounting the same again answers the same mount.
    assert_eq!(m1.mount("vm1", &url).await.unwrap().pid, Some(pid));

    // zosd goes away: the mount process keeps serving.
    drop(m1);
    assert!(alive(pid));
    assert!(
        read(info.mountpoint.join("own.bin")).await.unwrap() == env.source("app.fl", "own.bin")
    );

    // A new zosd adopts it.
    let m2 = ProcessFlists::new(config.clone()).unwrap();
    let r = m2.reconcile().await.unwrap();
    assert_eq!(r.adopted, vec!["vm1".to_string()]);
    assert!(r.remade.is_empty() && r.failed.is_empty(), "{r:?}");
    assert_eq!(m2.get("vm1").await.unwrap().unwrap().pid, Some(pid));

    // The mount process dies: reads fail, and the next reconcile remakes it.
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    wait_dead(pid).await;
    assert!(
        read(file.clone()).await.is_err(),
        "a dead mount does not serve"
    );
    let r = m2.reconcile().await.unwrap();
    assert_eq!(r.remade, vec!["vm1".to_string()], "{r:?}");
    let new_pid = m2.get("vm1").await.unwrap().unwrap().pid.unwrap();
    assert_ne!(new_pid, pid);
    assert!(read(file.clone()).await.unwrap() == env.source("app.fl", "usr/lib/shared.so"));

    // A mount process killed while no zosd runs is remade by the next one at start.
    drop(m2);
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(new_pid),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    wait_dead(new_pid).await;
    let m3 = ProcessFlists::new(config.clone()).unwrap();
    assert_eq!(
        m3.reconcile().await.unwrap().remade,
        vec!["vm1".to_string()]
    );
    let last_pid = m3.get("vm1").await.unwrap().unwrap().pid.unwrap();
    assert!(read(info.mountpoint.join("etc/hostname")).await.unwrap() == b"tree-1\n");

    // Unmount leaves nothing: no process, no mount, no mount point, no record, no flist file.
    m3.unmount("vm1").await.unwrap();
    wait_dead(last_pid).await;
    assert!(!zos_flist::mount::is_mount_point(&info.mountpoint));
    assert!(!info.mountpoint.exists());
    assert!(m3.list().await.unwrap().is_empty());
    let state = std::fs::read_to_string(config.state_dir.join(STATE_FILE)).unwrap();
    assert!(!state.contains("vm1"), "{state}");
    assert_eq!(
        std::fs::read_dir(config.state_dir.join("flists"))
            .unwrap()
            .count(),
        0
    );
    assert!(mount_processes_under(&env.dir.path().to_string_lossy()).is_empty());
    // Unmounting again is fine.
    m3.unmount("vm1").await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writable_mounts_keep_their_changes_across_a_remake() {
    if !can_mount("writable_mounts_keep_their_changes_across_a_remake") {
        return;
    }
    let env = Env::start().await;
    env.publish("app.fl", 2).await;
    // By name this time.
    let url = env.hub.flist_url(env.twin, "app.fl");
    let config = env.config();
    let m = ProcessFlists::new(config.clone()).unwrap();
    let rw = env.path("volume/rootfs");
    let info = m.mount_writable("vm2", &url, &rw).await.unwrap();
    let mp = info.mountpoint.clone();
    std::fs::write(mp.join("etc/hostname"), b"changed\n").unwrap();
    std::fs::write(mp.join("new-file"), b"mine\n").unwrap();
    assert!(read(mp.join("own.bin")).await.unwrap() == env.source("app.fl", "own.bin"));

    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(info.pid.unwrap()),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    wait_dead(info.pid.unwrap()).await;
    let r = m.reconcile().await.unwrap();
    assert_eq!(r.remade, vec!["vm2".to_string()], "{r:?}");
    assert_eq!(
        std::fs::read(mp.join("etc/hostname")).unwrap(),
        b"changed\n"
    );
    assert_eq!(std::fs::read(mp.join("new-file")).unwrap(), b"mine\n");
    assert!(
        read(mp.join("usr/lib/shared.so")).await.unwrap()
            == env.source("app.fl", "usr/lib/shared.so")
    );

    // Another flist under the same name is refused while it is mounted.
    let err = m.mount("vm2", &url).await.unwrap_err();
    assert!(matches!(err, FlistError::Conflict { .. }), "{err}");

    m.unmount("vm2").await.unwrap();
    assert!(
        zos_testkit::disk::mounts_under(env.dir.path())
            .unwrap()
            .is_empty()
    );
    assert!(!mp.exists());
    // The changes stay on the volume, for the workload's owner.
    assert_eq!(std::fs::read(rw.join("upper/new-file")).unwrap(), b"mine\n");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mounts_share_one_block_cache() {
    if !can_mount("mounts_share_one_block_cache") {
        return;
    }
    let env = Env::start().await;
    let a = env.publish("a.fl", 3).await;
    let b = env.publish("b.fl", 4).await;
    let config = env.config();
    let m = ProcessFlists::new(config.clone()).unwrap();
    let ma = m.mount("one", &a).await.unwrap();
    let mb = m.mount("two", &b).await.unwrap();
    for (mp, name) in [(&ma.mountpoint, "a.fl"), (&mb.mountpoint, "b.fl")] {
        for f in ["usr/lib/shared.so", "own.bin"] {
            assert!(
                read(mp.join(f)).await.unwrap() == env.source(name, f),
                "{f}"
            );
        }
    }
    // 4 shared blocks once, plus 2 of each flist's own.
    assert_eq!(cached_blocks(&env.path("node-state")), 4 + 2 + 2);
    m.unmount("one").await.unwrap();
    m.unmount("two").await.unwrap();
    assert!(
        zos_testkit::disk::mounts_under(env.dir.path())
            .unwrap()
            .is_empty()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_mounts_leave_nothing() {
    if !can_mount("failed_mounts_leave_nothing") {
        return;
    }
    let env = Env::start().await;
    let url = env.publish("app.fl", 5).await;
    let config = env.config();
    let m = ProcessFlists::new(config.clone()).unwrap();
    let nothing_left = |m: &ProcessFlists| {
        assert_eq!(
            std::fs::read_dir(config.state_dir.join("flists"))
                .unwrap()
                .count(),
            0
        );
        assert_eq!(std::fs::read_dir(&config.mount_root).unwrap().count(), 0);
        assert!(
            zos_testkit::disk::mounts_under(env.dir.path())
                .unwrap()
                .is_empty()
        );
        let _ = m;
    };

    // A hash the hub does not have; a URL whose content does not have the hash it names is
    // covered by zos-flist's fetcher.
    let unknown = env.hub.hash_url(&"ab".repeat(32));
    let err = m.mount("vm", &unknown).await.unwrap_err();
    assert!(matches!(err, FlistError::Fetch { .. }), "{err}");
    nothing_left(&m);
    // Not a flist at all (the grid's health document).
    let health = env.hub.url_of("/api/v1/health");
    let err = m.mount("vm", &health).await.unwrap_err();
    assert!(matches!(err, FlistError::Fetch { .. }), "{err}");
    nothing_left(&m);
    // Bad names, relative writable directories.
    assert!(matches!(
        m.mount("../x", &url).await,
        Err(FlistError::Name { .. })
    ));
    assert!(matches!(
        m.mount_writable("vm", &url, Path::new("rel/dir")).await,
        Err(FlistError::RwDir { .. })
    ));
    // The mount process cannot start.
    let mut broken = config.clone();
    broken.mount_binary = env.path("no-such-binary");
    let mb = ProcessFlists::new(broken).unwrap();
    let err = mb.mount("vm", &url).await.unwrap_err();
    assert!(matches!(err, FlistError::Process { .. }), "{err}");
    nothing_left(&m);
    // The mount process starts but fails (its mount point is busy with a file).
    std::fs::write(m.mountpoint("vm"), b"in the way").unwrap();
    let err = m.mount("vm", &url).await.unwrap_err();
    assert!(
        matches!(err, FlistError::Io { .. } | FlistError::Process { .. }),
        "{err}"
    );
    std::fs::remove_file(m.mountpoint("vm")).unwrap();
    nothing_left(&m);
    assert!(m.list().await.unwrap().is_empty());
    // And a good one still works afterwards.
    let ok = m.mount("vm", &url).await.unwrap();
    assert!(read(ok.mountpoint.join("etc/hostname")).await.unwrap() == b"tree-5\n");
    m.unmount("vm").await.unwrap();
    nothing_left(&m);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn open_file_reads_regular_files_and_refuses_links_out_of_the_mount() {
    if !can_mount("open_file_reads_regular_files_and_refuses_links_out_of_the_mount") {
        return;
    }
    let env = Env::start().await;
    let secret = env.path("host-secret");
    std::fs::write(&secret, "node key").unwrap();
    let url = env
        .publish_with("links.fl", 6, |src| {
            std::os::unix::fs::symlink(&secret, src.join("abs")).unwrap();
            std::os::unix::fs::symlink("../../../../../../host-secret", src.join("climb")).unwrap();
            std::os::unix::fs::symlink("etc", src.join("etc-link")).unwrap();
        })
        .await;
    let m = ProcessFlists::new(env.config()).unwrap();
    m.mount("probe", &url).await.unwrap();
    // A regular file, through the real FUSE mount: opened, the content the flist holds.
    let f = m.open_file("probe", "own.bin").await.unwrap().unwrap();
    let got = tokio::task::spawn_blocking(move || {
        let mut v = Vec::new();
        std::io::Read::read_to_end(&mut &f, &mut v).map(|_| v)
    })
    .await
    .unwrap()
    .unwrap();
    assert!(got == env.source("links.fl", "own.bin"));
    assert!(m.open_file("probe", "missing").await.unwrap().is_none());
    for (path, want) in [
        ("abs", "symbolic link"),
        ("climb", "symbolic link"),
        ("etc-link/hostname", "symbolic link on the way"),
        ("etc", "directory"),
        ("../host-secret", "plain relative path"),
    ] {
        let e = m.open_file("probe", path).await.unwrap_err();
        let chain = zos_runtime::error_chain(&e);
        assert!(
            matches!(e, FlistError::Open { .. }) && chain.contains(want),
            "{path}: {chain}"
        );
    }
    assert!(matches!(
        m.open_file("nothing", "own.bin").await,
        Err(FlistError::NotMounted { .. })
    ));
    m.unmount("probe").await.unwrap();
}
