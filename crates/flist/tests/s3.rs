//! S3Store against a real S3-compatible server on loopback (moto's server, from PyPI).

mod common;

use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use zos_flist::pack::{PackOptions, Progress, Source, pack};
use zos_flist::store::open_url;
use zos_flist::{BlockCache, BlockId, BlockStore, Flist, S3Store};

struct Server(std::process::Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn have_moto() -> bool {
    Command::new("python3")
        .args(["-c", "import moto.server, flask"])
        .stderr(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
}

/// Starts moto's S3 server on a free loopback port, installing it from PyPI when missing.
fn start() -> Option<(Server, u16)> {
    if !have_moto() {
        eprintln!("moto is not installed; installing moto[server] from PyPI for the S3 test");
        let _ = Command::new("python3")
            .args(["-m", "pip", "install", "--quiet", "moto[server]"])
            .status();
    }
    if !have_moto() {
        eprintln!("SKIP s3 tests: python3 with moto[server] is not available");
        return None;
    }
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let child = Command::new("python3")
        .args([
            "-m",
            "moto.server",
            "-H",
            "127.0.0.1",
            "-p",
            &port.to_string(),
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let server = Server(child);
    let end = Instant::now() + Duration::from_secs(30);
    while Instant::now() < end {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return Some((server, port));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("moto server did not start on port {port}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s3_store_packs_and_serves_blocks() {
    let Some((_server, port)) = tokio::task::spawn_blocking(start).await.unwrap() else {
        return;
    };
    let client = reqwest::Client::new();
    let r = client
        .put(format!("http://127.0.0.1:{port}/blocks"))
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success(), "create bucket: {}", r.status());

    let url = format!("s3://access:secret@127.0.0.1:{port}/blocks?region=us-east-1");
    let store = S3Store::from_url(&url).unwrap();
    let t = tempfile::tempdir().unwrap();
    let src = t.path().join("src");
    std::fs::create_dir(&src).unwrap();
    common::write_noise(&src.join("f"), (2 << 19) + 7, 3);
    let fl = t.path().join("s3.fl");
    let p = pack(
        &Source::Dir(src.clone()),
        &fl,
        Arc::new(store.clone()),
        &PackOptions::default(),
        &|_: &Progress| {},
    )
    .await
    .unwrap();
    assert_eq!((p.blocks, p.blocks_uploaded), (3, 3));
    let again = pack(
        &Source::Dir(src.clone()),
        &t.path().join("again.fl"),
        Arc::new(store.clone()),
        &PackOptions::default(),
        &|_: &Progress| {},
    )
    .await
    .unwrap();
    assert_eq!(
        again.blocks_uploaded, 0,
        "blocks already in the bucket are not sent again"
    );

    // the flist's route has no password; the reader opens the bucket from its URL
    let flist = Flist::open(&fl).unwrap();
    assert_eq!(
        flist.routes()[0].url,
        format!("s3://access@127.0.0.1:{port}/blocks?region=us-east-1")
    );
    let reader: Arc<dyn BlockStore> = open_url(&url).unwrap();
    let cache = BlockCache::open(&t.path().join("cache"), 1 << 30).unwrap();
    let mut content = Vec::new();
    for b in &flist.lookup(1, b"f").unwrap().blocks {
        content.extend(cache.get(b, &reader).await.unwrap().read_all().unwrap());
    }
    assert_eq!(content, std::fs::read(src.join("f")).unwrap());
    let absent = BlockId([7; 32]);
    assert!(!store.exists(&absent).await.unwrap());
    assert!(store.get(&absent).await.unwrap_err().is_not_found());
    assert!(
        S3Store::from_url("s3://host:1/").is_err(),
        "a bucket is required"
    );
}
