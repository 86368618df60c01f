//! `zos flist` as a person uses it, against a real grid with its hub on loopback: pack to the
//! hub, inspect, push, list, mount (foreground and background) and read the same bytes.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use zos_grid::{GridConfig, start};
use zos_testkit::cli::ZosCli;

struct User {
    grid: String,
    home: PathBuf,
    key: String,
}

impl User {
    fn cmd(&self, args: &[&str]) -> Command {
        let mut c = Command::new(env!("CARGO_BIN_EXE_zos"));
        c.args(args)
            .args(["--grid", &self.grid, "--key", &self.key])
            .env("HOME", &self.home)
            .env_remove("XDG_CACHE_HOME")
            .env_remove("XDG_CONFIG_HOME")
            .env_remove("ZOS_GRID")
            .env_remove("ZOS_KEY");
        c
    }
}

impl ZosCli for User {
    fn run(&self, args: &[&str]) -> Output {
        self.cmd(args).output().unwrap()
    }
}

/// Cleans up what a test mounted or started, also when it fails: processes by pid, then every
/// mount under the test's directory.
struct Cleanup {
    dir: PathBuf,
    pids: Vec<i32>,
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        for pid in &self.pids {
            zos_testkit::process::kill_and_wait(*pid, Duration::from_secs(5));
        }
        for _ in 0..8 {
            let points = zos_testkit::disk::mounts_under(&self.dir).unwrap_or_default();
            if points.is_empty() {
                break;
            }
            for p in points {
                let _ = nix::mount::umount2(&p, nix::mount::MntFlags::MNT_DETACH);
            }
        }
    }
}

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

/// Builds `zos-flist-mount` beside `zos` (a no-op when up to date), for `mount --background`.
fn build_mount_binary() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let mut cmd = Command::new(env!("CARGO"));
    cmd.args(["build", "-q", "-p", "zos-flist", "--bin", "zos-flist-mount"])
        .current_dir(&root);
    // Variables cargo sets for this test would look like a changed environment to build
    // scripts and rebuild half the tree.
    for (k, _) in std::env::vars_os() {
        let k = k.to_string_lossy();
        if k.starts_with("CARGO_") && k != "CARGO_HOME" && k != "CARGO_TARGET_DIR" {
            cmd.env_remove(k.as_ref());
        }
    }
    assert!(cmd.status().unwrap().success(), "building zos-flist-mount");
    let beside = Path::new(env!("CARGO_BIN_EXE_zos"))
        .parent()
        .unwrap()
        .join("zos-flist-mount");
    assert!(beside.is_file(), "{} after building it", beside.display());
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

fn tree(root: &Path, seed: u64) {
    std::fs::create_dir_all(root.join("usr/lib")).unwrap();
    noise(&root.join("usr/lib/shared.so"), 2 << 20, 42);
    noise(&root.join("own.bin"), 700 * 1024, seed);
    std::fs::write(root.join("hello.txt"), format!("hello {seed}\n")).unwrap();
    std::os::unix::fs::symlink("usr/lib/shared.so", root.join("link")).unwrap();
}

/// Waits for `ready <dir>` on the child's stdout.
fn wait_ready(child: &mut Child, dir: &Path) {
    let out = child.stdout.take().unwrap();
    let want = format!("ready {}", dir.display());
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(out).lines() {
            let Ok(line) = line else { break };
            if line.trim_end() == want {
                let _ = tx.send(());
                break;
            }
        }
    });
    rx.recv_timeout(Duration::from_secs(60))
        .expect("the mount says it is ready");
}

fn same_tree(src: &Path, mnt: &Path) {
    for f in ["usr/lib/shared.so", "own.bin", "hello.txt"] {
        assert!(
            std::fs::read(src.join(f)).unwrap() == std::fs::read(mnt.join(f)).unwrap(),
            "{f} differs"
        );
    }
    assert_eq!(
        std::fs::read_link(mnt.join("link")).unwrap(),
        PathBuf::from("usr/lib/shared.so")
    );
}

fn wait_unmounted(dir: &Path) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while zos_flist::mount::is_mount_point(dir) {
        assert!(Instant::now() < deadline, "{} still mounted", dir.display());
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn pack_to_the_hub_push_list_and_mount_elsewhere() {
    let dir = tempfile::tempdir().unwrap();
    let grid = start(GridConfig::new(
        "127.0.0.1:0".parse().unwrap(),
        dir.path().join("grid"),
    ))
    .await
    .unwrap();
    let home = dir.path().join("home");
    std::fs::create_dir_all(&home).unwrap();
    let alice = User {
        grid: grid.url(),
        key: home.join("alice.key").display().to_string(),
        home: home.clone(),
    };
    let p = |s: &str| dir.path().join(s).display().to_string();
    let (src, src2) = (dir.path().join("src"), dir.path().join("src2"));
    tree(&src, 1);
    tree(&src2, 2);
    let mut cleanup = Cleanup {
        dir: dir.path().to_owned(),
        pids: Vec::new(),
    };

    // Packing to the hub needs a twin.
    alice.json(&["key", "new"]);
    let err = alice.fails(&["flist", "pack", &p("src"), "-o", &p("app.fl"), "--hub"]);
    assert!(err.contains("zos twin create"), "{err}");
    assert!(!dir.path().join("app.fl").exists());
    let twin = alice.json(&["twin", "create"])["id"].as_u64().unwrap();
    // A destination is required.
    let err = alice.fails(&["flist", "pack", &p("src"), "-o", &p("app.fl")]);
    assert!(err.contains("--store") || err.contains("--hub"), "{err}");

    let packed = alice.json(&[
        "flist",
        "pack",
        &p("src"),
        "-o",
        &p("app.fl"),
        "--hub",
        "--tag",
        "version=1",
    ]);
    assert_eq!(packed["progress"]["blocks_uploaded"], 7, "{packed}");
    assert_eq!(packed["progress"]["bytes_done"], (2 << 20) + 700 * 1024 + 8);
    // The second tree shares usr/lib/shared.so (4 blocks): only its own 3 go up.
    let packed2 = alice.json(&["flist", "pack", &p("src2"), "-o", &p("app2.fl"), "--hub"]);
    assert_eq!(packed2["progress"]["blocks_uploaded"], 3, "{packed2}");
    assert_eq!(packed2["progress"]["blocks_present"], 4);
    let human = alice.ok(&["flist", "pack", &p("src"), "-o", &p("again.fl"), "--hub"]);
    assert!(human.contains("0 uploaded"), "{human}");

    // Inspect: tags, totals, the tree.
    let i = alice.json(&["flist", "inspect", &p("app.fl")]);
    assert_eq!(i["tags"]["version"], "1");
    assert_eq!(i["totals"]["files"], 3);
    assert_eq!(i["totals"]["unique_blocks"], 7);
    let tree_text = alice.ok(&["flist", "inspect", &p("app.fl")]);
    assert!(
        tree_text.contains("└── ") || tree_text.contains("├── "),
        "{tree_text}"
    );
    assert!(
        tree_text.contains("link -> usr/lib/shared.so"),
        "{tree_text}"
    );
    assert!(tree_text.contains("version = 1"), "{tree_text}");
    let err = alice.fails(&["flist", "inspect", &p("src/hello.txt")]);
    assert!(err.contains("hello.txt"), "{err}");

    // Push and list.
    let pushed = alice.json(&["flist", "push", &p("app.fl")]);
    assert_eq!(pushed["outcome"], "created");
    assert_eq!(pushed["flist"]["name"], "app.fl");
    let hash_url = pushed["hash_url"].as_str().unwrap().to_string();
    let err = alice.fails(&["flist", "push", &p("app2.fl"), "--name", "app.fl"]);
    assert!(err.contains("replace"), "{err}");
    let replaced = alice.json(&[
        "flist",
        "push",
        &p("app2.fl"),
        "--name",
        "app.fl",
        "--replace",
    ]);
    assert_eq!(replaced["outcome"], "replaced");
    alice.json(&["flist", "push", &p("app.fl"), "--name", "base.fl"]);
    let list = alice.json(&["flist", "list"]);
    let names: Vec<&str> = list
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, vec!["app.fl", "base.fl"]);
    let table = alice.ok(&["flist", "list", "--twin", &twin.to_string()]);
    assert!(
        table.starts_with("NAME") && table.contains("base.fl"),
        "{table}"
    );
    // A flist whose blocks are elsewhere cannot be pushed; junk neither.
    let local = format!("dir://{}", p("local-store"));
    tree(&dir.path().join("src3"), 3);
    alice.json(&[
        "flist",
        "pack",
        &p("src3"),
        "-o",
        &p("local.fl"),
        "--store",
        &local,
    ]);
    let err = alice.fails(&["flist", "push", &p("local.fl")]);
    assert!(err.contains("does not have"), "{err}");
    let err = alice.fails(&["flist", "push", &p("src/hello.txt")]);
    assert!(err.contains("hello.txt"), "{err}");

    if !can_mount("pack_to_the_hub_push_list_and_mount_elsewhere (mount part)") {
        return;
    }
    // Mount the pushed content, downloaded by its hash URL, on another directory, in the
    // foreground; reads give the same bytes; Ctrl-C unmounts.
    let mnt = dir.path().join("mnt");
    std::fs::create_dir(&mnt).unwrap();
    let mut child = alice
        .cmd(&[
            "flist",
            "mount",
            &hash_url,
            &mnt.display().to_string(),
            "--hub",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    cleanup.pids.push(child.id() as i32);
    wait_ready(&mut child, &mnt);
    tokio::task::spawn_blocking({
        let (src, mnt) = (src.clone(), mnt.clone());
        move || same_tree(&src, &mnt)
    })
    .await
    .unwrap();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGINT,
    )
    .unwrap();
    let st = child.wait().unwrap();
    assert!(st.success(), "the mount ends cleanly on Ctrl-C: {st}");
    wait_unmounted(&mnt);

    // In the background, from the local file, reading through its routes (the hub).
    build_mount_binary();
    let mnt2 = dir.path().join("mnt2");
    std::fs::create_dir(&mnt2).unwrap();
    let bg = alice.json(&[
        "flist",
        "mount",
        &p("app2.fl"),
        &mnt2.display().to_string(),
        "--background",
    ]);
    let pid = bg["pid"].as_i64().unwrap() as i32;
    cleanup.pids.push(pid);
    tokio::task::spawn_blocking({
        let (src, mnt) = (src2.clone(), mnt2.clone());
        move || same_tree(&src, &mnt)
    })
    .await
    .unwrap();
    // Both mounts used the one cache in ~/.cache/zos/flist/cache.
    assert!(home.join(".cache/zos/flist/cache/v1/blocks").is_dir());
    zos_testkit::process::kill_and_wait(pid, Duration::from_secs(10));
    wait_unmounted(&mnt2);
    // Mounting something that is not a flist fails with the reason and mounts nothing.
    let err = alice.fails(&[
        "flist",
        "mount",
        &p("src/hello.txt"),
        &mnt2.display().to_string(),
    ]);
    assert!(err.contains("hello.txt"), "{err}");
    assert!(!zos_flist::mount::is_mount_point(&mnt2));
    drop(grid);
}
