//! An flist packed into a zos-zdb namespace (rfs's `zdb://` block store) mounts from the routes
//! it names and reads back identically: the real server on 127.0.0.1, a namespace with a
//! password, `zos_flist::pack` writing the blocks through the Redis protocol, and a FUSE mount
//! (root and /dev/fuse; skipped loudly without them) whose every file, link and mode is
//! compared with the source.

use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use zos_flist::mount::MountOptions;
use zos_flist::pack::{PackOptions, Source, pack};
use zos_flist::store::{Router, open_url};
use zos_flist::{BlockCache, BlockStore, Flist};

const ADMIN: &str = "admin-pw";

/// The server, killed and reaped on drop.
struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn start(data: &Path) -> (Server, u16) {
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let child = Command::new(env!("CARGO_BIN_EXE_zos-zdb"))
        .arg("--listen")
        .arg(format!("127.0.0.1:{port}"))
        .arg("--data")
        .arg(data)
        .env("ZOS_ZDB_ADMIN", ADMIN)
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .spawn()
        .expect("start zos-zdb");
    let server = Server(child);
    let deadline = Instant::now() + Duration::from_secs(20);
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            Instant::now() < deadline,
            "zos-zdb did not listen on {port}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    (server, port)
}

/// One command on `conn`; the reply's first line.
fn cmd(conn: &mut BufReader<TcpStream>, args: &[&str]) -> String {
    let mut req = format!("*{}\r\n", args.len());
    for a in args {
        req.push_str(&format!("${}\r\n{a}\r\n", a.len()));
    }
    conn.get_mut().write_all(req.as_bytes()).unwrap();
    let mut line = String::new();
    conn.read_line(&mut line).unwrap();
    line.trim_end().to_string()
}

fn noise(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

fn tree(root: &Path) {
    std::fs::create_dir_all(root.join("etc")).unwrap();
    std::fs::create_dir_all(root.join("usr/bin")).unwrap();
    std::fs::create_dir_all(root.join("var/lib/app")).unwrap();
    std::fs::write(root.join("etc/hostname"), "packed-into-zdb\n").unwrap();
    // Several blocks, none alike, and the same content twice (one set of blocks).
    let big = noise(3 * 1024 * 1024 + 123, 7);
    std::fs::write(root.join("usr/bin/app"), &big).unwrap();
    std::fs::write(root.join("usr/bin/app-copy"), &big).unwrap();
    std::fs::write(root.join("var/lib/app/empty"), b"").unwrap();
    std::fs::write(root.join("var/lib/app/state"), noise(70_000, 9)).unwrap();
    std::fs::set_permissions(
        root.join("usr/bin/app"),
        std::fs::Permissions::from_mode(0o750),
    )
    .unwrap();
    std::os::unix::fs::symlink("../usr/bin/app", root.join("etc/app-link")).unwrap();
}

/// Every path below `a` is in `b` with the same kind, mode, target and bytes.
fn same_tree(a: &Path, b: &Path, rel: &Path, seen: &mut usize) {
    for e in std::fs::read_dir(a.join(rel)).unwrap() {
        let e = e.unwrap();
        let r = rel.join(e.file_name());
        let (ma, mb) = (
            std::fs::symlink_metadata(a.join(&r)).unwrap(),
            std::fs::symlink_metadata(b.join(&r))
                .unwrap_or_else(|err| panic!("{} is not in the mount: {err}", r.display())),
        );
        assert_eq!(ma.file_type(), mb.file_type(), "{}", r.display());
        assert_eq!(
            ma.permissions().mode() & 0o7777,
            mb.permissions().mode() & 0o7777,
            "{}",
            r.display()
        );
        *seen += 1;
        if ma.is_dir() {
            same_tree(a, b, &r, seen);
        } else if ma.file_type().is_symlink() {
            assert_eq!(
                std::fs::read_link(a.join(&r)).unwrap(),
                std::fs::read_link(b.join(&r)).unwrap(),
                "{}",
                r.display()
            );
        } else {
            assert!(
                std::fs::read(a.join(&r)).unwrap() == std::fs::read(b.join(&r)).unwrap(),
                "{} reads back different bytes",
                r.display()
            );
        }
    }
}

#[test]
fn an_flist_packed_into_a_zdb_namespace_mounts_and_reads_back() {
    if !nix::unistd::geteuid().is_root() || !Path::new("/dev/fuse").exists() {
        eprintln!(
            "SKIP an_flist_packed_into_a_zdb_namespace_mounts_and_reads_back: needs root and /dev/fuse to mount"
        );
        return;
    }
    let t = tempfile::tempdir().unwrap();
    let (_server, port) = start(&t.path().join("zdb"));
    let mut admin = BufReader::new(TcpStream::connect(("127.0.0.1", port)).unwrap());
    for c in [
        vec!["AUTH", ADMIN],
        vec!["NSNEW", "blocks"],
        vec!["NSSET", "blocks", "password", "blk-pw"],
        vec!["NSSET", "blocks", "public", "0"],
    ] {
        assert_eq!(cmd(&mut admin, &c), "+OK", "{c:?}");
    }

    let src = t.path().join("src");
    tree(&src);
    let url = format!("zdb://:blk-pw@127.0.0.1:{port}/blocks");
    let store = open_url(&url).unwrap();
    let fl = t.path().join("app.fl");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let opts = PackOptions {
        keep_passwords: true,
        ..PackOptions::default()
    };
    let done = rt
        .block_on(pack(&Source::Dir(src.clone()), &fl, store, &opts, &|_| {}))
        .unwrap();
    assert!(done.blocks_uploaded >= 4, "{done:?}");

    // The blocks are in the namespace, behind its password.
    let mut user = BufReader::new(TcpStream::connect(("127.0.0.1", port)).unwrap());
    assert_eq!(
        cmd(&mut user, &["SELECT", "blocks", "wrong"]),
        "-Access denied"
    );
    assert_eq!(cmd(&mut user, &["SELECT", "blocks", "blk-pw"]), "+OK");
    let size = cmd(&mut user, &["DBSIZE"]);
    assert_eq!(
        size,
        format!(":{}", done.blocks_uploaded),
        "one record per distinct block"
    );

    // Mounted from the routes the flist names (the zdb namespace), every file reads back.
    let flist = Flist::open_any(&fl).unwrap();
    assert_eq!(flist.routes().len(), 1);
    assert_eq!(flist.routes()[0].url, url, "the flist names its zdb store");
    let routed: Arc<dyn BlockStore> = Arc::new(Router::from_routes(flist.routes()).unwrap());
    let cache = BlockCache::open(&t.path().join("cache"), 1 << 30).unwrap();
    let mnt = t.path().join("mnt");
    std::fs::create_dir(&mnt).unwrap();
    {
        let _m =
            zos_flist::mount(&fl, &mnt, routed.clone(), cache, &MountOptions::default()).unwrap();
        let mut seen = 0;
        same_tree(&src, &mnt, Path::new(""), &mut seen);
        assert_eq!(seen, 12, "every entry of the source was compared");
    }

    // With a wrong password nothing is read: a fresh cache gets no block.
    let wrong = open_url(&format!("zdb://:nope@127.0.0.1:{port}/blocks")).unwrap();
    let first = flist
        .walk()
        .into_iter()
        .find_map(|(_, n)| n.blocks.first().copied());
    let e = rt.block_on(wrong.get(&first.unwrap().id)).unwrap_err();
    assert!(
        zos_runtime::error_chain(&e).contains("denied"),
        "{}",
        zos_runtime::error_chain(&e)
    );
}
