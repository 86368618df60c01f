//! A deployment that names a legacy 0-fs `.flist`, on real parts: the grid with its hub on
//! loopback (the node's own block store, which does not hold legacy blocks), the `.flist` served
//! by a small HTTP server on a host the farm allows, its blocks in a real `redis-server`
//! (Debian's package) on 127.0.0.1, real `zos-flist-mount` processes and FUSE. Needs root and
//! /dev/fuse.

#[allow(dead_code)]
mod support;

#[path = "../../flist/tests/common/legacy_writer.rs"]
mod legacy_writer;

use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::future::BoxFuture;
use legacy_writer::LegacyFlist;
use support::Env;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use zos_mounts::{FarmFlistHosts, FlistError, FlistManager, FlistUrlPolicy, ProcessFlists};

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

/// A redis-server on a free loopback port with a password, killed on drop.
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

const PASSWORD: &str = "ns-s3cret";

fn redis() -> Redis {
    let dir = tempfile::tempdir().unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let child = Command::new("redis-server")
        .args(["--bind", "127.0.0.1", "--port", &port.to_string()])
        .args(["--save", "", "--appendonly", "no"])
        .args(["--requirepass", PASSWORD])
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

impl Redis {
    /// A new authenticated connection (counted by the server like any other).
    fn conn(&self) -> BufReader<TcpStream> {
        let mut c = BufReader::new(TcpStream::connect(("127.0.0.1", self.port)).unwrap());
        assert_eq!(raw(&mut c, &[b"AUTH", PASSWORD.as_bytes()]), "+OK\r\n");
        c
    }

    /// How many connections the server has accepted since it started.
    fn connections(&self) -> u64 {
        let mut c = self.conn();
        let mut req = Vec::new();
        req.extend_from_slice(b"*2\r\n$4\r\nINFO\r\n$5\r\nstats\r\n");
        c.get_mut().write_all(&req).unwrap();
        let mut len = String::new();
        c.read_line(&mut len).unwrap();
        let n: usize = len.trim_start_matches('$').trim().parse().unwrap();
        let mut body = vec![0u8; n + 2];
        std::io::Read::read_exact(&mut c, &mut body).unwrap();
        let text = String::from_utf8(body).unwrap();
        text.lines()
            .find_map(|l| l.strip_prefix("total_connections_received:"))
            .unwrap()
            .trim()
            .parse()
            .unwrap()
    }

    /// Stores the blocks of `w` under their raw 16-byte hashes, as the 0-fs tools do.
    fn load(&self, w: &LegacyFlist) {
        let mut c = self.conn();
        for (hash, data) in &w.blocks {
            let key = hex::decode(hash).unwrap();
            assert_eq!(raw(&mut c, &[b"SET", &key, data]), "+OK\r\n");
        }
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

/// A small HTTP server on loopback answering every GET of `/<name>` with the file's bytes (and
/// 404 otherwise). Returns its `host:port`.
async fn serve_files(files: Vec<(String, Vec<u8>)>) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let files = Arc::new(files);
    tokio::spawn(async move {
        loop {
            let Ok((mut sock, _)) = listener.accept().await else {
                return;
            };
            let files = files.clone();
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut buf = [0u8; 1024];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    match sock.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => head.extend_from_slice(&buf[..n]),
                    }
                }
                let line = String::from_utf8_lossy(&head);
                let path = line.split_whitespace().nth(1).unwrap_or("").to_string();
                let found = files
                    .iter()
                    .find(|(n, _)| format!("/{n}") == path)
                    .map(|(_, b)| b.clone());
                let resp = match found {
                    Some(body) => {
                        let mut r = format!(
                            "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                            body.len()
                        )
                        .into_bytes();
                        r.extend_from_slice(&body);
                        r
                    }
                    None => {
                        b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
                            .to_vec()
                    }
                };
                let _ = sock.write_all(&resp).await;
                let _ = sock.shutdown().await;
            });
        }
    });
    addr
}

/// The farm's allowed hosts, fixed.
struct Hosts(Vec<String>);
impl FarmFlistHosts for Hosts {
    fn hosts(&self) -> BoxFuture<'_, Result<Vec<String>, String>> {
        let h = self.0.clone();
        Box::pin(async move { Ok(h) })
    }
}

fn noise(path: &Path, len: usize, seed: u64) {
    let data: Vec<u8> = (0..len as u64)
        .map(|i| ((i ^ seed).wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 29) as u8)
        .collect();
    std::fs::write(path, data).unwrap();
}

/// A tree with a multi-block executable, small files, a symlink and an empty file.
fn tree(root: &Path) {
    std::fs::create_dir_all(root.join("usr/bin")).unwrap();
    std::fs::create_dir_all(root.join("etc/conf.d")).unwrap();
    noise(&root.join("usr/bin/big"), 512 * 1024 * 3 + 77, 1);
    noise(&root.join("etc/victim"), 4000, 2);
    noise(&root.join("etc/fine"), 3000, 3);
    std::fs::write(root.join("etc/conf.d/empty"), b"").unwrap();
    std::fs::set_permissions(
        root.join("usr/bin/big"),
        std::fs::Permissions::from_mode(0o755),
    )
    .unwrap();
    std::fs::set_permissions(
        root.join("etc/fine"),
        std::fs::Permissions::from_mode(0o600),
    )
    .unwrap();
    std::os::unix::fs::symlink("../usr/bin/big", root.join("etc/link")).unwrap();
}

/// Every regular file of `src`, relative.
fn files(src: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut todo = vec![PathBuf::new()];
    while let Some(rel) = todo.pop() {
        for e in std::fs::read_dir(src.join(&rel)).unwrap().flatten() {
            let p = rel.join(e.file_name());
            let t = e.file_type().unwrap();
            if t.is_dir() {
                todo.push(p);
            } else if t.is_file() {
                out.push(p);
            }
        }
    }
    out.sort();
    out
}

async fn read(path: PathBuf) -> std::io::Result<Vec<u8>> {
    tokio::task::spawn_blocking(move || std::fs::read(path))
        .await
        .unwrap()
}

/// A `.flist` of `src` whose backend is the Redis store on `port`.
fn legacy_flist(src: &Path, port: u16, out: &Path) -> LegacyFlist {
    let mut w = LegacyFlist::pack(src);
    w.metadata.push((
        "backend".into(),
        format!(r#"{{"host": "127.0.0.1", "port": {port}, "password": "{PASSWORD}"}}"#),
    ));
    w.write(out);
    w
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deployments_legacy_flist_mounts_from_the_store_it_names_if_the_farm_allows_it() {
    if !can_mount("a_deployments_legacy_flist_mounts_from_the_store_it_names_if_the_farm_allows_it")
    {
        return;
    }
    let env = Env::start().await;
    let allowed = redis();
    let refused = redis();
    let src = env.path("src");
    tree(&src);
    let good = legacy_flist(&src, allowed.port, &env.path("app.flist"));
    let elsewhere = legacy_flist(&src, refused.port, &env.path("elsewhere.flist"));
    allowed.load(&good);
    refused.load(&elsewhere);
    let host = serve_files(vec![
        (
            "app.flist".into(),
            std::fs::read(env.path("app.flist")).unwrap(),
        ),
        (
            "elsewhere.flist".into(),
            std::fs::read(env.path("elsewhere.flist")).unwrap(),
        ),
    ])
    .await;

    // The farm allows the host serving the flists and the allowed store, not the other one.
    let farm = Arc::new(Hosts(vec![
        host.clone(),
        format!("127.0.0.1:{}", allowed.port),
    ]));
    let policy = FlistUrlPolicy::new(&env.grid_url(), farm).unwrap();
    let url = format!("http://{host}/app.flist");
    policy.check(&[&url]).await.unwrap();
    let m = ProcessFlists::new(env.config())
        .unwrap()
        .with_url_policy(policy);

    // Corrupt one block in the store before anything reads it: its file alone is EIO.
    let victim_hash = {
        let fl = zos_flist::Flist::open_any(&env.path("app.flist")).unwrap();
        let etc = fl.lookup(1, b"etc").unwrap().ino;
        let b = fl.lookup(etc, b"victim").unwrap().blocks[0];
        zos_flist::legacy::split(&b).0
    };
    let mut bad = good.blocks[&hex::encode(victim_hash)].clone();
    bad[3] ^= 0x10;
    assert_eq!(
        raw(&mut allowed.conn(), &[b"SET", &victim_hash, &bad]),
        "+OK\r\n"
    );

    let info = m.mount("legacy", &url).await.unwrap();
    let mp = info.mountpoint.clone();
    let err = read(mp.join("etc/victim")).await.unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::EIO), "{err}");
    for f in files(&src) {
        if f == Path::new("etc/victim") {
            continue;
        }
        assert!(
            read(mp.join(&f)).await.unwrap() == std::fs::read(src.join(&f)).unwrap(),
            "{}",
            f.display()
        );
    }
    assert_eq!(
        std::fs::read_link(mp.join("etc/link")).unwrap(),
        Path::new("../usr/bin/big")
    );
    for (f, mode) in [("usr/bin/big", 0o755), ("etc/fine", 0o600)] {
        let got = std::fs::metadata(mp.join(f)).unwrap().permissions().mode() & 0o7777;
        assert_eq!(got, mode, "{f}");
    }
    // The block repaired in the store, the file reads (a bad block was never cached).
    let fixed = &good.blocks[&hex::encode(victim_hash)];
    assert_eq!(
        raw(&mut allowed.conn(), &[b"SET", &victim_hash, fixed]),
        "+OK\r\n"
    );
    assert!(
        read(mp.join("etc/victim")).await.unwrap()
            == std::fs::read(src.join("etc/victim")).unwrap()
    );
    // open_file (how the node reads files of a tenant's image) reads a legacy flist too.
    let f = m.open_file("legacy", "etc/fine").await.unwrap().unwrap();
    let got = tokio::task::spawn_blocking(move || {
        let mut v = Vec::new();
        std::io::Read::read_to_end(&mut &f, &mut v).map(|_| v)
    })
    .await
    .unwrap()
    .unwrap();
    assert!(got == std::fs::read(src.join("etc/fine")).unwrap());

    // A flist naming a store on a host the farm does not allow: refused before the node
    // connects to it, with the reason; nothing is left behind.
    let before = refused.connections();
    let url2 = format!("http://{host}/elsewhere.flist");
    let err = m.mount("other", &url2).await.unwrap_err();
    let chain = zos_runtime::error_chain(&err);
    assert!(matches!(err, FlistError::NoBlockStore { .. }), "{chain}");
    assert!(
        chain.contains(&format!("127.0.0.1:{}", refused.port))
            && chain.contains("nor a host this farm allows")
            && !chain.contains(PASSWORD),
        "{chain}"
    );
    // Only this test's own INFO connection since.
    assert_eq!(
        refused.connections(),
        before + 1,
        "the node connected to it"
    );
    assert!(m.get("other").await.unwrap().is_none());
    assert!(!m.mountpoint("other").exists());

    m.unmount("legacy").await.unwrap();
    assert!(
        zos_testkit::disk::mounts_under(env.dir.path())
            .unwrap()
            .is_empty()
    );
}
