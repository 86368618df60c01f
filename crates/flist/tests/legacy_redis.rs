//! A legacy flist whose blocks live in a Redis-protocol store: a real `redis-server` (Debian's
//! package) started on 127.0.0.1 by the test. The blocks are loaded with raw RESP commands under
//! their 16-byte hashes, as the 0-fs tools store them; the flist reads through `RedisStore` and
//! the verified cache, mounts, and a corrupted block is EIO for its file only. `convert` reads
//! such a flist's blocks from the server into an FL flist that mounts the same tree.

mod common;
#[path = "common/legacy_writer.rs"]
mod legacy_writer;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use legacy_writer::LegacyFlist;
use zos_flist::mount::MountOptions;
use zos_flist::store::{RedisStore, Router, open_url};
use zos_flist::{BlockCache, BlockStore, Flist, Kind};

/// A redis-server on a free loopback port, killed on drop.
struct Redis {
    child: Child,
    port: u16,
    _dir: tempfile::TempDir,
}

impl Drop for Redis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn redis(password: &str) -> Redis {
    let dir = tempfile::tempdir().unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let child = Command::new("redis-server")
        .args(["--bind", "127.0.0.1", "--port", &port.to_string()])
        .args(["--save", "", "--appendonly", "no"])
        .args(["--requirepass", password])
        .arg("--dir")
        .arg(dir.path())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| {
            panic!(
                "cannot start redis-server ({e}): install it (scripts/install-deps.sh, Debian \
                 package redis-server)"
            )
        });
    let deadline = Instant::now() + Duration::from_secs(10);
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "redis-server did not listen");
        std::thread::sleep(Duration::from_millis(20));
    }
    Redis {
        child,
        port,
        _dir: dir,
    }
}

/// One raw RESP command; returns the first reply line.
fn raw(conn: &mut BufReader<TcpStream>, args: &[&[u8]]) -> String {
    let mut req = format!("*{}\r\n", args.len()).into_bytes();
    for a in args {
        req.extend_from_slice(format!("${}\r\n", a.len()).as_bytes());
        req.extend_from_slice(a);
        req.extend_from_slice(b"\r\n");
    }
    conn.get_mut().write_all(&req).unwrap();
    let mut line = String::new();
    conn.read_line(&mut line).unwrap();
    line
}

fn tree(dir: &Path) {
    std::fs::create_dir_all(dir.join("usr/bin")).unwrap();
    std::fs::create_dir_all(dir.join("etc")).unwrap();
    let noise = |p: &str, len: usize, seed: u64| {
        let data: Vec<u8> = (0..len as u64)
            .map(|i| ((i ^ seed).wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 31) as u8)
            .collect();
        std::fs::write(dir.join(p), data).unwrap();
    };
    noise("usr/bin/big", 512 * 1024 * 2 + 100, 1);
    noise("etc/victim", 1000, 2);
    noise("etc/fine", 3000, 3);
    std::fs::set_permissions(
        dir.join("usr/bin/big"),
        std::fs::Permissions::from_mode(0o755),
    )
    .unwrap();
    std::os::unix::fs::symlink("../usr/bin/big", dir.join("etc/link")).unwrap();
}

#[test]
fn a_legacy_flist_reads_and_mounts_from_a_redis_store() {
    let server = redis("s3cret");
    let t = tempfile::tempdir().unwrap();
    let src = t.path().join("src");
    tree(&src);
    let mut w = LegacyFlist::pack(&src);
    w.metadata.push((
        "backend".into(),
        format!(
            r#"{{"host": "127.0.0.1", "port": {}, "password": "s3cret"}}"#,
            server.port
        ),
    ));
    let fl_path = t.path().join("app.flist");
    w.write(&fl_path);

    // Load the blocks as the 0-fs tools store them: raw 16-byte keys.
    let mut conn = BufReader::new(TcpStream::connect(("127.0.0.1", server.port)).unwrap());
    assert_eq!(raw(&mut conn, &[b"AUTH", b"s3cret"]), "+OK\r\n");
    for (hash, data) in &w.blocks {
        let key = hex::decode(hash).unwrap();
        assert_eq!(key.len(), 16);
        assert_eq!(raw(&mut conn, &[b"SET", &key, data]), "+OK\r\n");
    }

    // The route comes from the flist's backend; the store reads through the verified cache.
    let fl = Arc::new(Flist::open_any(&fl_path).unwrap());
    let url = format!("redis://:s3cret@127.0.0.1:{}", server.port);
    assert_eq!(fl.routes()[0].url, url);
    let store: Arc<dyn BlockStore> = Arc::new(Router::from_routes(fl.routes()).unwrap());
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let cache = BlockCache::open(&t.path().join("cache"), 1 << 30).unwrap();
    for (path, n) in fl.walk() {
        if n.attrs.kind() != Kind::File {
            continue;
        }
        let mut content = Vec::new();
        for b in &n.blocks {
            let cb = rt.block_on(cache.get(b, &store)).unwrap();
            content.extend(cb.read_all().unwrap());
        }
        assert_eq!(
            content,
            std::fs::read(src.join(path.trim_start_matches('/'))).unwrap(),
            "{path}"
        );
    }
    assert!(
        cache.check().unwrap().bad.is_empty(),
        "cached legacy blocks verify"
    );

    // A missing block, a wrong password, and a value longer than any block.
    let direct = RedisStore::from_url(&url).unwrap();
    let victim = fl
        .lookup(fl.lookup(1, b"etc").unwrap().ino, b"victim")
        .unwrap()
        .blocks[0];
    assert!(rt.block_on(direct.exists(&victim.id)).unwrap());
    let absent = zos_flist::legacy::block_ref(&[7; 16], &[7; 16]);
    assert!(!rt.block_on(direct.exists(&absent.id)).unwrap());
    assert!(
        rt.block_on(direct.get(&absent.id))
            .unwrap_err()
            .is_not_found()
    );
    let wrong = open_url(&format!("redis://:nope@127.0.0.1:{}", server.port)).unwrap();
    let e = zos_runtime::error_chain(&rt.block_on(wrong.get(&victim.id)).unwrap_err());
    assert!(e.contains("WRONGPASS") || e.contains("invalid"), "{e}");
    let huge = zos_flist::legacy::block_ref(&[9; 16], &[9; 16]);
    let big = vec![0u8; 2 << 20];
    assert_eq!(raw(&mut conn, &[b"SET", &[9; 16], &big]), "+OK\r\n");
    let e = zos_runtime::error_chain(&rt.block_on(direct.get(&huge.id)).unwrap_err());
    assert!(e.contains("larger than any block"), "{e}");

    // Mount it (root and /dev/fuse): every file reads back; then a corrupted block is EIO for
    // its file only.
    if !nix::unistd::geteuid().is_root() || !Path::new("/dev/fuse").exists() {
        eprintln!("SKIP mount part: needs root and /dev/fuse");
        return;
    }
    let mnt = t.path().join("mnt");
    std::fs::create_dir(&mnt).unwrap();
    let cache2 = BlockCache::open(&t.path().join("cache2"), 1 << 30).unwrap();
    let opts = MountOptions {
        readahead_blocks: 0,
        ..MountOptions::default()
    };
    {
        let _m = zos_flist::mount(&fl_path, &mnt, store.clone(), cache2.clone(), &opts).unwrap();
        for p in ["usr/bin/big", "etc/victim", "etc/fine"] {
            assert_eq!(
                std::fs::read(mnt.join(p)).unwrap(),
                std::fs::read(src.join(p)).unwrap(),
                "{p}"
            );
        }
        assert_eq!(
            std::fs::read_link(mnt.join("etc/link")).unwrap(),
            Path::new("../usr/bin/big")
        );
        let m = std::fs::metadata(mnt.join("usr/bin/big")).unwrap();
        assert_eq!(m.permissions().mode() & 0o7777, 0o755);
    }

    // Corrupt the victim's block in the store; a fresh cache must not accept it.
    let (hash, _) = zos_flist::legacy::split(&victim);
    let mut bad = w.blocks[&hex::encode(hash)].clone();
    bad[5] ^= 0x40;
    assert_eq!(raw(&mut conn, &[b"SET", &hash, &bad]), "+OK\r\n");
    let cache3 = BlockCache::open(&t.path().join("cache3"), 1 << 30).unwrap();
    let _m = zos_flist::mount(&fl_path, &mnt, store, cache3.clone(), &opts).unwrap();
    let err = std::fs::read(mnt.join("etc/victim")).unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::EIO), "{err}");
    assert_eq!(
        std::fs::read(mnt.join("etc/fine")).unwrap(),
        std::fs::read(src.join("etc/fine")).unwrap()
    );
    assert!(!cache3.contains(&victim.id), "a bad block is never cached");
    let mut f = std::fs::File::open(mnt.join("usr/bin/big")).unwrap();
    let mut all = Vec::new();
    f.read_to_end(&mut all).unwrap();
    assert_eq!(all.len(), 512 * 1024 * 2 + 100);
}

/// A tree with what the legacy format holds (no hard links): nested directories, files around
/// the block size and sharing blocks, an empty file, setuid and sticky bits, owners with
/// uid != gid, symlinks, a fifo and a character device.
fn full_tree(dir: &Path) {
    for d in ["etc/ssl", "usr/bin", "var/empty", "tmp"] {
        std::fs::create_dir_all(dir.join(d)).unwrap();
    }
    common::write_noise(&dir.join("etc/passwd"), 1392, 1);
    common::write_noise(&dir.join("etc/ssl/ca.pem"), 200_000, 2);
    common::write_noise(&dir.join("usr/bin/tool"), 512 * 1024, 3);
    common::write_noise(&dir.join("usr/bin/same"), 512 * 1024, 3);
    common::write_noise(&dir.join("usr/bin/big"), 512 * 1024 * 3 + 17, 4);
    std::fs::write(dir.join("etc/empty"), b"").unwrap();
    let mode = |p: &str, m: u32| {
        std::fs::set_permissions(dir.join(p), std::fs::Permissions::from_mode(m)).unwrap()
    };
    mode("usr/bin/tool", 0o4755);
    mode("tmp", 0o1777);
    mode("var/empty", 0o700);
    std::os::unix::fs::symlink("../usr/bin/tool", dir.join("etc/rel")).unwrap();
    std::os::unix::fs::symlink("/usr/bin/big", dir.join("abs")).unwrap();
    nix::unistd::mkfifo(
        &dir.join("tmp/fifo"),
        nix::sys::stat::Mode::from_bits_truncate(0o600),
    )
    .unwrap();
    std::os::unix::fs::lchown(dir.join("etc/passwd"), Some(1234), Some(5678)).unwrap();
    std::os::unix::fs::lchown(dir.join("var/empty"), Some(65534), Some(100)).unwrap();
    std::os::unix::fs::lchown(dir.join("etc/rel"), Some(7), Some(8)).unwrap();
    nix::sys::stat::mknod(
        &dir.join("tmp/null"),
        nix::sys::stat::SFlag::S_IFCHR,
        nix::sys::stat::Mode::from_bits_truncate(0o666),
        libc::makedev(1, 3),
    )
    .unwrap();
}

#[test]
fn convert_turns_a_legacy_flist_and_its_blocks_into_an_fl_flist_that_mounts_the_same_tree() {
    if !common::can_mount(
        "convert_turns_a_legacy_flist_and_its_blocks_into_an_fl_flist_that_mounts_the_same_tree",
    ) {
        return;
    }
    let server = redis("s3cret");
    let t = tempfile::tempdir().unwrap();
    let src = t.path().join("src");
    std::fs::create_dir(&src).unwrap();
    full_tree(&src);
    let mut w = LegacyFlist::pack(&src);
    w.metadata.push((
        "backend".into(),
        format!(
            r#"{{"host": "127.0.0.1", "port": {}, "password": "s3cret"}}"#,
            server.port
        ),
    ));
    w.metadata.push(("author".into(), "tests".into()));
    let legacy_path = t.path().join("app.flist");
    w.write(&legacy_path);
    let mut conn = BufReader::new(TcpStream::connect(("127.0.0.1", server.port)).unwrap());
    assert_eq!(raw(&mut conn, &[b"AUTH", b"s3cret"]), "+OK\r\n");
    for (hash, data) in &w.blocks {
        let key = hex::decode(hash).unwrap();
        assert_eq!(raw(&mut conn, &[b"SET", &key, data]), "+OK\r\n");
    }

    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let legacy = Flist::open_any(&legacy_path).unwrap();
    let source: Arc<dyn BlockStore> = Arc::new(Router::from_routes(legacy.routes()).unwrap());
    let dest: Arc<dyn BlockStore> = Arc::new(zos_flist::DirStore::new(t.path().join("store")));
    let out = t.path().join("app.fl");
    let seen = std::sync::Mutex::new(Vec::new());
    let done = rt
        .block_on(zos_flist::convert(
            &legacy_path,
            &out,
            source.clone(),
            dest.clone(),
            &zos_flist::PackOptions::default(),
            &|p| seen.lock().unwrap().push(p.phase),
        ))
        .unwrap();
    // big: 4 blocks, tool and same: 1 shared, ca.pem and passwd: 1 each.
    assert_eq!(done.files_total, 6);
    assert_eq!(done.blocks, 4 + 1 + 1 + 1 + 1);
    assert_eq!(done.blocks_uploaded, 4 + 1 + 1 + 1);
    assert_eq!(done.bytes_done, done.bytes_total);
    let phases = seen.into_inner().unwrap();
    assert_eq!(phases.first(), Some(&zos_flist::pack::Phase::Scanning));
    assert_eq!(phases.last(), Some(&zos_flist::pack::Phase::Done));

    // An FL flist: FL blocks only, the destination's route, the tags kept.
    let fl = Flist::open(&out).unwrap();
    assert_eq!(fl.format(), zos_flist::Format::Fl);
    assert_eq!(fl.tags()["author"], "tests");
    assert_eq!(fl.routes(), dest.routes().as_slice());
    for (path, n) in fl.walk() {
        assert!(
            n.blocks.iter().all(|b| !zos_flist::legacy::is_legacy(b)),
            "{path}"
        );
    }

    // Mounted from the destination store alone: every path, mode, owner, time, link, device
    // and content matches the source tree.
    let mnt = t.path().join("mnt");
    std::fs::create_dir(&mnt).unwrap();
    let cache = BlockCache::open(&t.path().join("cache"), 1 << 30).unwrap();
    {
        let _m =
            zos_flist::mount(&out, &mnt, dest.clone(), cache, &MountOptions::default()).unwrap();
        common::assert_same_tree(&src, &mnt);
    }

    // Again into the same store: nothing to upload.
    let again = rt
        .block_on(zos_flist::convert(
            &legacy_path,
            &t.path().join("again.fl"),
            source.clone(),
            dest.clone(),
            &zos_flist::PackOptions::default(),
            &|_| {},
        ))
        .unwrap();
    assert_eq!((again.blocks_uploaded, again.blocks_present), (0, 8));

    // A corrupted block in the legacy store fails the conversion, naming the file; nothing is
    // written. An FL flist is not converted.
    let passwd = legacy
        .lookup(legacy.lookup(1, b"etc").unwrap().ino, b"passwd")
        .unwrap()
        .blocks[0];
    let (hash, _) = zos_flist::legacy::split(&passwd);
    let mut bad = w.blocks[&hex::encode(hash)].clone();
    bad[7] ^= 1;
    assert_eq!(raw(&mut conn, &[b"SET", &hash, &bad]), "+OK\r\n");
    let fresh = t.path().join("fresh");
    let broken = t.path().join("broken.fl");
    let e = rt
        .block_on(zos_flist::convert(
            &legacy_path,
            &broken,
            source,
            Arc::new(zos_flist::DirStore::new(&fresh)),
            &zos_flist::PackOptions::default(),
            &|_| {},
        ))
        .unwrap_err();
    let chain = zos_runtime::error_chain(&e);
    assert!(
        matches!(e, zos_flist::ConvertError::Corrupt { .. }) && chain.contains("/etc/passwd"),
        "{chain}"
    );
    assert!(!broken.exists());
    let e = rt
        .block_on(zos_flist::convert(
            &out,
            &t.path().join("twice.fl"),
            dest.clone(),
            dest,
            &zos_flist::PackOptions::default(),
            &|_| {},
        ))
        .unwrap_err();
    assert!(e.to_string().contains("already an FL flist"), "{e}");
}
