//! `cargo bench -p zos-flist`: block codec, pack, and reads through the FUSE mount compared with
//! reading the same file from local disk in the same run. Prints MiB/s figures.
//!
//! Environment: `ZOS_BENCH_MIB` sets the big file's size (default 512).

use std::io::{Read, Write};
use std::os::fd::AsRawFd;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use zos_flist::block::{BLOCK_SIZE, decode, encode};
use zos_flist::mount::MountOptions;
use zos_flist::pack::{PackOptions, Progress, Source, pack};
use zos_flist::{BlockCache, BlockId, BlockStore, DirStore, HttpStore};

/// A minimal hub on loopback serving `GET /blocks/{id}` from a directory store.
fn hub(rt: &tokio::runtime::Runtime, store: DirStore) -> String {
    use axum::extract::{Path as P, State};
    use axum::http::StatusCode;
    async fn get(State(s): State<DirStore>, P(id): P<String>) -> Result<Vec<u8>, StatusCode> {
        let id: BlockId = id.parse().map_err(|_| StatusCode::BAD_REQUEST)?;
        s.get(&id).await.map_err(|_| StatusCode::NOT_FOUND)
    }
    let app = axum::Router::new()
        .route("/blocks/{id}", axum::routing::get(get))
        .with_state(store);
    let l = rt
        .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .unwrap();
    let addr = l.local_addr().unwrap();
    rt.spawn(async move { axum::serve(l, app).await.unwrap() });
    format!("http://{addr}")
}

const MIB: f64 = 1024.0 * 1024.0;

fn rate(bytes: u64, d: Duration) -> f64 {
    bytes as f64 / MIB / d.as_secs_f64()
}

fn noise(path: &Path, len: u64, seed: u64) {
    let mut f = std::io::BufWriter::with_capacity(1 << 20, std::fs::File::create(path).unwrap());
    let mut x = seed | 1;
    let mut buf = vec![0u8; 1 << 20];
    let mut left = len;
    while left > 0 {
        for c in buf.chunks_exact_mut(8) {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            c.copy_from_slice(&x.to_le_bytes());
        }
        let n = left.min(buf.len() as u64) as usize;
        f.write_all(&buf[..n]).unwrap();
        left -= n as u64;
    }
    f.flush().unwrap();
    f.get_ref().sync_all().unwrap();
}

/// Drops a file's pages from the page cache so the next read comes from the disk.
fn drop_pages(path: &Path) {
    let f = std::fs::File::open(path).unwrap();
    let _ = f.sync_all();
    // SAFETY: plain syscall on an open descriptor.
    unsafe {
        libc::posix_fadvise(f.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED);
    }
}

fn read_all(path: &Path) -> (u64, Duration) {
    let t = Instant::now();
    let mut f = std::fs::File::open(path).unwrap();
    let mut buf = vec![0u8; 1 << 20];
    let mut n = 0u64;
    loop {
        let r = f.read(&mut buf).unwrap();
        if r == 0 {
            break;
        }
        n += r as u64;
    }
    (n, t.elapsed())
}

fn first_byte(path: &Path) -> Duration {
    let t = Instant::now();
    let mut f = std::fs::File::open(path).unwrap();
    let mut b = [0u8; 1];
    f.read_exact(&mut b).unwrap();
    t.elapsed()
}

fn codec() {
    let mut plain = vec![0u8; BLOCK_SIZE];
    let mut x = 7u64;
    for c in plain.chunks_exact_mut(8) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        c.copy_from_slice(&x.to_le_bytes());
    }
    let text: Vec<u8> = (0..BLOCK_SIZE)
        .map(|i| b"flist block text "[i % 17])
        .collect();
    for (what, data) in [("random", &plain), ("text", &text)] {
        let n = 64;
        let t = Instant::now();
        let mut e = None;
        for _ in 0..n {
            e = Some(encode(data));
        }
        let enc = t.elapsed();
        let e = e.unwrap();
        let t = Instant::now();
        for _ in 0..n {
            decode(&e.block, &e.data).unwrap();
        }
        let dec = t.elapsed();
        let total = (n * BLOCK_SIZE) as u64;
        println!(
            "codec {what:6}: encode {:7.0} MiB/s, decode+verify {:7.0} MiB/s (one core, 512 KiB blocks, stored {:.0} %)",
            rate(total, enc),
            rate(total, dec),
            100.0 * e.data.len() as f64 / BLOCK_SIZE as f64
        );
    }
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let mib: u64 = std::env::var("ZOS_BENCH_MIB")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(512);
    println!(
        "zos-flist benchmarks ({} cores)",
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1)
    );
    codec();

    let t =
        tempfile::tempdir_in(std::env::var("ZOS_BENCH_DIR").unwrap_or_else(|_| "/var/tmp".into()))
            .unwrap();
    let src = t.path().join("src");
    std::fs::create_dir_all(src.join("small")).unwrap();
    let big = src.join("big.img");
    noise(&big, mib << 20, 1);
    for i in 0..2000u64 {
        noise(
            &src.join("small").join(format!("f{i}")),
            1000 + i * 7,
            i + 2,
        );
    }
    let total = (mib << 20) + (0..2000u64).map(|i| 1000 + i * 7).sum::<u64>();

    let rt = tokio::runtime::Runtime::new().unwrap();
    let store_dir = t.path().join("store");
    let store: Arc<dyn BlockStore> = Arc::new(DirStore::new(&store_dir));
    let fl = t.path().join("bench.fl");
    let mut p = Progress::default();
    for round in ["new store", "all blocks present"] {
        drop_pages(&big);
        let t0 = Instant::now();
        p = rt
            .block_on(pack(
                &Source::Dir(src.clone()),
                &fl,
                store.clone(),
                &PackOptions::default(),
                &|_: &Progress| {},
            ))
            .unwrap();
        let d = t0.elapsed();
        println!(
            "pack ({round}): {:.0} MiB in {:.2} s = {:.0} MiB/s ({} blocks, {} uploaded, 2001 files)",
            total as f64 / MIB,
            d.as_secs_f64(),
            rate(total, d),
            p.blocks,
            p.blocks_uploaded
        );
    }
    let _ = p;

    if !nix::unistd::geteuid().is_root() || !Path::new("/dev/fuse").exists() {
        println!("mount benchmarks skipped: need root and /dev/fuse");
        return;
    }
    drop_pages(&big);
    let (n, d) = read_all(&big);
    let local = rate(n, d);
    println!("local disk read of the same file (page cache dropped): {local:.0} MiB/s");

    let mnt = t.path().join("mnt");
    std::fs::create_dir(&mnt).unwrap();

    // cold read from a hub on loopback (HTTP/1.1, one block per request)
    let base = hub(&rt, DirStore::new(&store_dir));
    let http: Arc<dyn BlockStore> = Arc::new(HttpStore::new(&base).unwrap());
    for readahead in [8usize, 0] {
        let cache =
            BlockCache::open(&t.path().join(format!("cache-http-{readahead}")), 64 << 30).unwrap();
        let opts = MountOptions {
            readahead_blocks: readahead,
            ..MountOptions::default()
        };
        let m = zos_flist::mount(&fl, &mnt, http.clone(), cache, &opts).unwrap();
        let (n, d) = read_all(&mnt.join("big.img"));
        drop(m);
        println!(
            "mount over a loopback hub, read-ahead {readahead} blocks: cold {:.0} MiB/s ({:.0} % of local)",
            rate(n, d),
            100.0 * rate(n, d) / local
        );
    }

    for readahead in [8usize, 0] {
        let cache_dir = t.path().join(format!("cache-{readahead}"));
        let cache = BlockCache::open(&cache_dir, 64 << 30).unwrap();
        let opts = MountOptions {
            readahead_blocks: readahead,
            ..MountOptions::default()
        };
        for block in store_dir.read_dir().unwrap() {
            for f in block.unwrap().path().read_dir().unwrap() {
                drop_pages(&f.unwrap().path());
            }
        }
        let m = zos_flist::mount(&fl, &mnt, store.clone(), cache.clone(), &opts).unwrap();
        let ttfb_cold = first_byte(&mnt.join("big.img"));
        drop(m);
        // a fresh cache for the cold read
        let _ = std::fs::remove_dir_all(&cache_dir);
        let cache = BlockCache::open(&cache_dir, 64 << 30).unwrap();
        let m = zos_flist::mount(&fl, &mnt, store.clone(), cache.clone(), &opts).unwrap();
        let (n, d) = read_all(&mnt.join("big.img"));
        let cold = rate(n, d);
        drop(m);
        // a new mount has an empty page cache; the block cache is warm
        let m = zos_flist::mount(&fl, &mnt, store.clone(), cache.clone(), &opts).unwrap();
        let ttfb_warm = first_byte(&mnt.join("big.img"));
        drop(m);
        let m = zos_flist::mount(&fl, &mnt, store.clone(), cache.clone(), &opts).unwrap();
        let (n, d) = read_all(&mnt.join("big.img"));
        let warm = rate(n, d);
        drop(m);
        println!(
            "mount, read-ahead {readahead} blocks: cold {cold:.0} MiB/s ({:.0} % of local), warm {warm:.0} MiB/s ({:.0} % of local); first byte cold {:.1} ms, warm {:.2} ms",
            100.0 * cold / local,
            100.0 * warm / local,
            ttfb_cold.as_secs_f64() * 1e3,
            ttfb_warm.as_secs_f64() * 1e3,
        );
    }
}
