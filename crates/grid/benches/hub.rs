//! `cargo bench -p zos-grid --bench hub`: packing to the hub of an in-process grid on loopback
//! (signed PUTs, `missing` queries, hash checks, fsynced block files, the SQLite index), again
//! with every block present, the same pack into a local directory for comparison, raw block
//! PUTs, `missing` queries and a push. Prints figures.
//!
//! Environment: `ZOS_BENCH_MIB` sets the tree's size in MiB (default 320).

use std::io::Write;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use zos_client::GridClient;
use zos_flist::block::encode;
use zos_flist::hub::HubClient;
use zos_flist::pack::{PackOptions, Progress, Source, pack};
use zos_flist::{BLOCK_SIZE, BlockId, BlockStore, DirStore};
use zos_grid::{GridConfig, start};
use zos_types::Identity;

const MIB: f64 = 1024.0 * 1024.0;

fn noise(path: &Path, len: u64, seed: u64) {
    let mut f = std::io::BufWriter::with_capacity(1 << 20, std::fs::File::create(path).unwrap());
    let mut x = (seed << 1) | 1;
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
}

async fn run_pack(store: Arc<dyn BlockStore>, src: &Path, out: &Path) -> (Progress, Duration) {
    let t = Instant::now();
    let p = pack(
        &Source::Dir(src.to_owned()),
        out,
        store,
        &PackOptions::default(),
        &|_: &Progress| {},
    )
    .await
    .unwrap();
    (p, t.elapsed())
}

fn line(what: &str, p: &Progress, d: Duration) {
    let s = d.as_secs_f64();
    println!(
        "{what:<44} {:>7.1} MiB/s  {:>6.0} blocks/s uploaded  ({} of {} blocks uploaded, {:.2} s)",
        p.bytes_done as f64 / MIB / s,
        p.blocks_uploaded as f64 / s,
        p.blocks_uploaded,
        p.blocks,
        s
    );
}

#[tokio::main]
async fn main() {
    let mib: u64 = std::env::var("ZOS_BENCH_MIB")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(320);
    let base = if Path::new("/var/tmp").is_dir() {
        "/var/tmp"
    } else {
        "/tmp"
    };
    let dir = tempfile::Builder::new()
        .prefix("zos-hub-bench-")
        .tempdir_in(base)
        .unwrap();
    let src = dir.path().join("src");
    std::fs::create_dir_all(src.join("files")).unwrap();
    let small = 64u64.min(mib / 2);
    noise(&src.join("big"), (mib - small) << 20, 1);
    for i in 0..small {
        noise(&src.join("files").join(format!("f{i}")), 1 << 20, 100 + i);
    }
    println!(
        "tree: {mib} MiB ({} MiB file + {small} files of 1 MiB), {} cores",
        mib - small,
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1)
    );

    let grid = start(GridConfig::new(
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
    let store: Arc<dyn BlockStore> = Arc::new(hub.block_store().unwrap());

    let (p, d) = run_pack(store.clone(), &src, &dir.path().join("a.fl")).await;
    line("pack --hub, empty hub", &p, d);
    let (p2, d2) = run_pack(store.clone(), &src, &dir.path().join("b.fl")).await;
    line("pack --hub again, every block present", &p2, d2);
    let local: Arc<dyn BlockStore> = Arc::new(DirStore::new(dir.path().join("local")));
    let (p3, d3) = run_pack(local, &src, &dir.path().join("c.fl")).await;
    line("pack into a local directory (same run)", &p3, d3);

    // Raw PUTs of pre-encoded blocks (no packing work), 4 in flight as pack does.
    let n = 256usize;
    let blocks: Vec<_> = (0..n)
        .map(|i| {
            let mut plain = vec![0u8; BLOCK_SIZE];
            let mut x = ((i as u64 + 7_000) << 1) | 1;
            for c in plain.chunks_exact_mut(8) {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                c.copy_from_slice(&x.to_le_bytes());
            }
            encode(&plain)
        })
        .collect();
    let bytes: usize = blocks.iter().map(|b| b.data.len()).sum();
    let t = Instant::now();
    futures::stream::iter(blocks.iter())
        .map(|b| store.put(&b.block.id, &b.data))
        .buffer_unordered(4)
        .for_each(|r| async move { r.unwrap() })
        .await;
    let d = t.elapsed();
    println!(
        "{:<44} {:>7.1} MiB/s  {:>6.0} blocks/s  ({n} blocks of 512 KiB, 4 in flight)",
        "signed PUT of encoded blocks",
        bytes as f64 / MIB / d.as_secs_f64(),
        n as f64 / d.as_secs_f64()
    );

    // missing: 1024 ids per query, half present.
    let present: Vec<BlockId> = blocks.iter().map(|b| b.block.id).collect();
    let ids: Vec<BlockId> = (0..1024u32)
        .map(|i| {
            if (i as usize) < present.len() && i % 2 == 0 {
                present[i as usize]
            } else {
                BlockId(zos_flist::block::hash(&i.to_le_bytes()))
            }
        })
        .collect();
    let rounds = 50;
    let t = Instant::now();
    for _ in 0..rounds {
        store.missing(&ids).await.unwrap();
    }
    let d = t.elapsed();
    println!(
        "{:<44} {:>7.1} ms per query  ({:.0} ids/s)",
        "missing, 1024 ids per query",
        d.as_secs_f64() * 1000.0 / rounds as f64,
        (rounds * ids.len()) as f64 / d.as_secs_f64()
    );

    let fl = std::fs::read(dir.path().join("a.fl")).unwrap();
    let t = Instant::now();
    hub.push("bench.fl", fl.clone(), false).await.unwrap();
    println!(
        "{:<44} {:>7.1} ms  ({} KiB flist of {} blocks, validated and checked against the index)",
        "push",
        t.elapsed().as_secs_f64() * 1000.0,
        fl.len() / 1024,
        p.blocks
    );
    if let Err(e) = grid.shutdown().await {
        eprintln!("grid shutdown: {e:#}");
    }
}
