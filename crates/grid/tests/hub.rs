//! The hub on a real grid on loopback (real SQLite files, real block directory): blocks, flists,
//! dedup, and hostile requests that must change nothing.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use reqwest::{Method, StatusCode};
use zos_client::GridClient;
use zos_flist::hub::{FlistInfo, HubClient, PushOutcome, Pushed};
use zos_flist::pack::{PackOptions, Progress, Source, pack};
use zos_flist::{BlockId, BlockStore, DirStore, block};
use zos_grid::hub::HubConfig;
use zos_grid::{GridConfig, RunningGrid};
use zos_types::Identity;
use zos_types::auth::{HEADER, RequestAuth, Signer, unix_now};

/// A grid with its hub in a temporary directory; stopped and removed on drop.
struct TestHub {
    grid: Option<RunningGrid>,
    dir: tempfile::TempDir,
    http: reqwest::Client,
    config: HubConfig,
}

impl TestHub {
    async fn start() -> Self {
        Self::with(HubConfig::default()).await
    }

    async fn with(config: HubConfig) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let grid = Self::launch(dir.path(), &config).await;
        Self {
            grid: Some(grid),
            dir,
            http: reqwest::Client::new(),
            config,
        }
    }

    async fn launch(dir: &Path, config: &HubConfig) -> RunningGrid {
        let mut c = GridConfig::new("127.0.0.1:0".parse().unwrap(), dir.join("data"));
        c.hub = config.clone();
        zos_grid::start(c).await.expect("grid starts")
    }

    async fn restart(&mut self) {
        self.grid.take().unwrap().shutdown().await.unwrap();
        self.grid = Some(Self::launch(self.dir.path(), &self.config).await);
    }

    fn url(&self) -> String {
        self.grid.as_ref().unwrap().url()
    }

    fn data(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// Block files in the hub's block directory (temporary files excluded).
    fn block_files(&self) -> usize {
        let root = self.data().join("hub/blocks");
        let Ok(dirs) = std::fs::read_dir(&root) else {
            return 0;
        };
        dirs.flatten()
            .filter(|d| d.path().is_dir())
            .flat_map(|d| std::fs::read_dir(d.path()).unwrap().flatten())
            .filter(|f| !f.file_name().to_string_lossy().starts_with('.'))
            .count()
    }

    fn flist_files(&self) -> usize {
        std::fs::read_dir(self.data().join("hub/flists"))
            .unwrap()
            .count()
    }

    fn dump(&self) -> String {
        zos_grid::hub::db::HubDb::open(&self.data().join("hub.sqlite"))
            .unwrap()
            .dump()
            .unwrap()
    }

    /// A new registered twin.
    async fn twin(&self) -> (Identity, u32) {
        let id = Identity::generate().unwrap();
        let c = GridClient::new(&self.url())
            .unwrap()
            .with_identity(id.clone());
        let twin = c.create_twin(None).await.unwrap();
        (id, twin.id)
    }

    fn hub(&self, who: &(Identity, u32)) -> HubClient {
        HubClient::new(&self.url())
            .unwrap()
            .with_auth(who.0.clone(), who.1)
    }

    /// A request signed as `signer` with `key` (at `ts`), or unsigned.
    async fn send(
        &self,
        method: Method,
        path: &str,
        body: Vec<u8>,
        sign: Option<(&Identity, Signer, i64)>,
    ) -> (StatusCode, Vec<u8>) {
        let header = sign.map(|(id, signer, ts)| {
            RequestAuth::sign(id, signer, method.as_str(), path, ts, &body).to_string()
        });
        self.send_header(method, path, body, header).await
    }

    /// A request with the `Authorization` header `header` as it is (to send one twice).
    async fn send_header(
        &self,
        method: Method,
        path: &str,
        body: Vec<u8>,
        header: Option<String>,
    ) -> (StatusCode, Vec<u8>) {
        let mut req = self.http.request(method, format!("{}{path}", self.url()));
        if let Some(h) = header {
            req = req.header(HEADER, h);
        }
        let resp = req.body(body).send().await.unwrap();
        let status = resp.status();
        (status, resp.bytes().await.unwrap().to_vec())
    }

    /// A signed PUT; each call gets its own timestamp, so that sending the same block twice is
    /// not refused as a replay.
    async fn put_block(&self, who: &(Identity, u32), id: &str, data: Vec<u8>) -> StatusCode {
        use std::sync::atomic::{AtomicI64, Ordering};
        static AGO: AtomicI64 = AtomicI64::new(0);
        let ts = unix_now() - AGO.fetch_add(1, Ordering::Relaxed) % 30;
        self.send(
            Method::PUT,
            &format!("/api/v1/hub/blocks/{id}"),
            data,
            Some((&who.0, Signer::Twin(who.1), ts)),
        )
        .await
        .0
    }

    async fn head(&self, id: &BlockId) -> StatusCode {
        self.send(
            Method::HEAD,
            &format!("/api/v1/hub/blocks/{id}"),
            vec![],
            None,
        )
        .await
        .0
    }
}

fn error_of(body: &[u8]) -> String {
    serde_json::from_slice::<serde_json::Value>(body)
        .map(|v| v["error"].as_str().unwrap_or_default().to_string())
        .unwrap_or_else(|_| String::from_utf8_lossy(body).into_owned())
}

/// Writes `len` bytes that do not repeat (xorshift seeded by `seed`).
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

/// A small tree: a shared 2 MiB file (4 blocks), a file of its own (2 blocks), a symlink.
fn tree(root: &Path, own_seed: u64) {
    std::fs::create_dir_all(root.join("usr/lib")).unwrap();
    noise(&root.join("usr/lib/shared.so"), 2 << 20, 42);
    noise(&root.join("own.bin"), 700 * 1024, own_seed);
    std::os::unix::fs::symlink("usr/lib/shared.so", root.join("link")).unwrap();
}

async fn pack_to(store: Arc<dyn BlockStore>, src: &Path, out: &Path) -> Progress {
    pack(
        &Source::Dir(src.to_owned()),
        out,
        store,
        &PackOptions::default(),
        &|_: &Progress| {},
    )
    .await
    .unwrap()
}

#[tokio::test]
async fn blocks_are_stored_once_verified_and_served() {
    let hub = TestHub::start().await;
    let who = hub.twin().await;
    let b = block::encode(b"some plain text for one block");
    let id = b.block.id.to_hex();

    assert_eq!(hub.head(&b.block.id).await, StatusCode::NOT_FOUND);
    assert_eq!(
        hub.put_block(&who, &id, b.data.clone()).await,
        StatusCode::CREATED
    );
    assert_eq!(hub.head(&b.block.id).await, StatusCode::OK);
    let (s, got) = hub
        .send(
            Method::GET,
            &format!("/api/v1/hub/blocks/{id}"),
            vec![],
            None,
        )
        .await;
    assert_eq!((s, got), (StatusCode::OK, b.data.clone()));
    // The same block again: accepted, nothing written.
    assert_eq!(
        hub.put_block(&who, &id, b.data.clone()).await,
        StatusCode::OK
    );
    assert_eq!(hub.block_files(), 1);

    // The client of crates/flist reads it back and verifies it.
    let store = HubClient::new(&hub.url()).unwrap().block_store().unwrap();
    assert_eq!(store.get(&b.block.id).await.unwrap(), b.data);
    assert_eq!(
        block::decode(&b.block, &store.get(&b.block.id).await.unwrap())
            .unwrap()
            .len(),
        29
    );

    // missing: the lacking ids, in the order asked, repeats kept.
    let other = block::encode(b"another").block.id;
    assert_eq!(
        store.missing(&[other, b.block.id, other]).await.unwrap(),
        vec![other, other]
    );
    let (s, body) = hub
        .send(
            Method::POST,
            "/api/v1/hub/blocks/missing",
            serde_json::to_vec(std::slice::from_ref(&id)).unwrap(),
            None,
        )
        .await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(
        serde_json::from_slice::<Vec<String>>(&body).unwrap(),
        Vec::<String>::new()
    );

    // The hub persists across a restart.
    let mut hub = hub;
    hub.restart().await;
    assert_eq!(hub.head(&b.block.id).await, StatusCode::OK);
    let store = HubClient::new(&hub.url()).unwrap().block_store().unwrap();
    assert_eq!(store.get(&b.block.id).await.unwrap(), b.data);
}

#[tokio::test]
async fn concurrent_uploads_of_one_block_with_one_key_both_succeed() {
    // Two packs by the same twin (two processes) may upload the same block in the same
    // second: same key, same request, same signature. The hub refuses the second as a replay;
    // the client sees the block there and succeeds.
    let hub = TestHub::start().await;
    let who = hub.twin().await;
    let b = block::encode(b"a block two packs share");
    let one = hub.hub(&who).block_store().unwrap();
    let two = hub.hub(&who).block_store().unwrap();
    let (r1, r2) = tokio::join!(one.put(&b.block.id, &b.data), two.put(&b.block.id, &b.data));
    r1.unwrap();
    r2.unwrap();
    assert_eq!(hub.block_files(), 1);
    // A refused upload of a block the hub does not have still fails.
    let stranger = (Identity::generate().unwrap(), 4242);
    let other = block::encode(b"not there");
    let err = hub
        .hub(&stranger)
        .block_store()
        .unwrap()
        .put(&other.block.id, &other.data)
        .await
        .unwrap_err();
    assert!(err.to_string().contains("401"), "{err}");
}

#[tokio::test]
async fn hostile_block_requests_change_nothing() {
    let hub = TestHub::start().await;
    let who = hub.twin().await;
    let good = block::encode(b"the real content");
    let evil = block::encode(b"something else entirely");
    let id = good.block.id.to_hex();

    // Wrong content for an id: refused, nothing stored.
    let path = format!("/api/v1/hub/blocks/{id}");
    let (s, body) = hub
        .send(
            Method::PUT,
            &path,
            evil.data.clone(),
            Some((&who.0, Signer::Twin(who.1), unix_now() - 45)),
        )
        .await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{}", error_of(&body));
    assert!(
        error_of(&body).contains("does not hash to the id"),
        "{}",
        error_of(&body)
    );
    assert_eq!(hub.head(&good.block.id).await, StatusCode::NOT_FOUND);
    assert_eq!(hub.block_files(), 0);

    // Stored once; a later PUT of other bytes under the same id is refused and changes nothing.
    assert_eq!(
        hub.put_block(&who, &id, good.data.clone()).await,
        StatusCode::CREATED
    );
    assert_eq!(
        hub.put_block(&who, &id, evil.data.clone()).await,
        StatusCode::BAD_REQUEST
    );
    let (_, got) = hub.send(Method::GET, &path, vec![], None).await;
    assert_eq!(got, good.data);

    // Unsigned, bare-key signed, unknown twin, stale, replayed: 401, nothing stored.
    let fresh = block::encode(b"fresh block");
    let fpath = format!("/api/v1/hub/blocks/{}", fresh.block.id);
    let (s, _) = hub
        .send(Method::PUT, &fpath, fresh.data.clone(), None)
        .await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);
    let (s, _) = hub
        .send(
            Method::PUT,
            &fpath,
            fresh.data.clone(),
            Some((&who.0, Signer::Key(who.0.public_key()), unix_now())),
        )
        .await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);
    let stranger = Identity::generate().unwrap();
    let (s, _) = hub
        .send(
            Method::PUT,
            &fpath,
            fresh.data.clone(),
            Some((&stranger, Signer::Twin(9999), unix_now())),
        )
        .await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);
    let (s, _) = hub
        .send(
            Method::PUT,
            &fpath,
            fresh.data.clone(),
            Some((&who.0, Signer::Twin(who.1), unix_now() - 600)),
        )
        .await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);
    // Signed by one twin while claiming another.
    let other = hub.twin().await;
    let (s, _) = hub
        .send(
            Method::PUT,
            &fpath,
            fresh.data.clone(),
            Some((&who.0, Signer::Twin(other.1), unix_now())),
        )
        .await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);
    assert_eq!(hub.head(&fresh.block.id).await, StatusCode::NOT_FOUND);
    // (A distinct timestamp, though the bare-key request above, which signed the same message,
    // was refused before the replay cache recorded anything: see tests/dos.rs.)
    let ts = unix_now() - 5;
    let header =
        RequestAuth::sign(&who.0, Signer::Twin(who.1), "PUT", &fpath, ts, &fresh.data).to_string();
    let (s, _) = hub
        .send_header(
            Method::PUT,
            &fpath,
            fresh.data.clone(),
            Some(header.clone()),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED);
    let (s, _) = hub
        .send_header(Method::PUT, &fpath, fresh.data.clone(), Some(header))
        .await;
    assert_eq!(s, StatusCode::UNAUTHORIZED, "a replay is refused");

    // Oversize: more than one encoded block, refused before the body is read.
    let big = vec![7u8; zos_flist::block::MAX_ENCODED_SIZE + 1];
    let big_id = hex::encode(zos_flist::block::hash(&big));
    let (s, body) = hub
        .send(
            Method::PUT,
            &format!("/api/v1/hub/blocks/{big_id}"),
            big,
            Some((&who.0, Signer::Twin(who.1), unix_now())),
        )
        .await;
    assert_eq!(s, StatusCode::PAYLOAD_TOO_LARGE, "{}", error_of(&body));
    // Empty bodies and ids that are not ids.
    let empty_id = hex::encode(zos_flist::block::hash(b""));
    assert_eq!(
        hub.put_block(&who, &empty_id, vec![]).await,
        StatusCode::BAD_REQUEST
    );
    assert_eq!(
        hub.put_block(&who, "xyz", good.data.clone()).await,
        StatusCode::BAD_REQUEST
    );
    let (s, _) = hub
        .send(
            Method::GET,
            "/api/v1/hub/blocks/..%2f..%2fetc",
            vec![],
            None,
        )
        .await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    assert_eq!(hub.block_files(), 2);

    // missing: bounded list, real ids only.
    let many: Vec<String> = (0..1025u32)
        .map(|i| hex::encode(zos_flist::block::hash(&i.to_le_bytes())))
        .collect();
    let (s, body) = hub
        .send(
            Method::POST,
            "/api/v1/hub/blocks/missing",
            serde_json::to_vec(&many).unwrap(),
            None,
        )
        .await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    assert!(
        error_of(&body).contains("at most 1024"),
        "{}",
        error_of(&body)
    );
    let (s, body) = hub
        .send(
            Method::POST,
            "/api/v1/hub/blocks/missing",
            br#"["abc"]"#.to_vec(),
            None,
        )
        .await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    assert!(error_of(&body).contains("[0]"), "{}", error_of(&body));
    let (s, _) = hub
        .send(
            Method::POST,
            "/api/v1/hub/blocks/missing",
            b"{".to_vec(),
            None,
        )
        .await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    let (s, _) = hub.send(Method::DELETE, &path, vec![], None).await;
    assert_eq!(s, StatusCode::METHOD_NOT_ALLOWED);
}

#[tokio::test]
async fn flists_are_published_listed_and_fetched_by_name_and_hash() {
    let hub = TestHub::start().await;
    let alice = hub.twin().await;
    let bob = hub.twin().await;
    let work = tempfile::tempdir().unwrap();
    let (src1, src2) = (work.path().join("one"), work.path().join("two"));
    tree(&src1, 1);
    tree(&src2, 2);
    let client = hub.hub(&alice);
    let store: Arc<dyn BlockStore> = Arc::new(client.block_store().unwrap());
    let fl1 = work.path().join("one.fl");
    let fl2 = work.path().join("two.fl");
    pack_to(store.clone(), &src1, &fl1).await;
    pack_to(store.clone(), &src2, &fl2).await;
    let bytes1 = std::fs::read(&fl1).unwrap();
    let bytes2 = std::fs::read(&fl2).unwrap();

    let p = client.push("app.fl", bytes1.clone(), false).await.unwrap();
    assert_eq!(p.outcome, PushOutcome::Created);
    assert_eq!(p.flist.sha256, zos_flist::hub::sha256_hex(&bytes1));
    assert_eq!(p.flist.size, bytes1.len() as u64);
    assert_eq!(p.flist.content_bytes, (2 << 20) + 700 * 1024);
    assert_eq!(p.flist.blocks, 6);
    assert_eq!(p.flist.twin_id, alice.1);
    // The same again: unchanged.
    let again = client.push("app.fl", bytes1.clone(), false).await.unwrap();
    assert_eq!(again.outcome, PushOutcome::Unchanged);

    // Other content under the same name: refused without replace, nothing changes.
    let err = client
        .push("app.fl", bytes2.clone(), false)
        .await
        .unwrap_err();
    assert_eq!(err.status(), Some(409), "{err}");
    let listed: Vec<FlistInfo> = client.list(alice.1).await.unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].sha256, p.flist.sha256);
    // With replace: the name moves, the old content stays reachable by hash.
    let r: Pushed = client.push("app.fl", bytes2.clone(), true).await.unwrap();
    assert_eq!(r.outcome, PushOutcome::Replaced);
    assert_eq!(r.previous_sha256.as_deref(), Some(p.flist.sha256.as_str()));

    let get = |path: String| {
        let h = &hub;
        async move { h.send(Method::GET, &path, vec![], None).await }
    };
    let (s, by_name) = get(format!("/api/v1/hub/flists/{}/app.fl", alice.1)).await;
    assert_eq!((s, by_name), (StatusCode::OK, bytes2.clone()));
    let (s, old) = get(p.flist.hash_path()).await;
    assert_eq!((s, old), (StatusCode::OK, bytes1.clone()));
    let (s, _) = get(format!("/api/v1/hub/flists/{}/app.fl", bob.1)).await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    let (s, _) = get(format!("/api/v1/hub/flists/by-hash/{}", "0".repeat(64))).await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    let (s, _) = get("/api/v1/hub/flists/by-hash/zz".into()).await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    let (s, _) = get("/api/v1/hub/flists".into()).await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "twin_id is required");

    // Names belong to their twin: bob's app.fl is his own.
    let bobs = hub.hub(&bob);
    assert_eq!(
        bobs.push("app.fl", bytes1.clone(), false)
            .await
            .unwrap()
            .outcome,
        PushOutcome::Created
    );
    assert_eq!(bobs.list(bob.1).await.unwrap()[0].sha256, p.flist.sha256);
    assert_eq!(
        client.list(alice.1).await.unwrap()[0].sha256,
        r.flist.sha256
    );
    // Two contents kept, once each.
    assert_eq!(hub.flist_files(), 2);

    // Downloads through the verifying fetcher: by hash (checked) and by name.
    let keep = work.path().join("kept");
    let f = zos_flist::hub::fetch_flist(&client.url_of(&p.flist.hash_path()), &keep, 1 << 26)
        .await
        .unwrap();
    assert_eq!(f.sha256, p.flist.sha256);
    assert_eq!(std::fs::read(&f.path).unwrap(), bytes1);
    let f2 = zos_flist::hub::fetch_flist(&client.flist_url(alice.1, "app.fl"), &keep, 1 << 26)
        .await
        .unwrap();
    assert_eq!(f2.sha256, r.flist.sha256);
}

#[tokio::test]
async fn hostile_flist_uploads_are_refused_and_store_nothing() {
    let hub = TestHub::with(HubConfig {
        max_flist_bytes: 256 * 1024,
        ..HubConfig::default()
    })
    .await;
    let alice = hub.twin().await;
    let client = hub.hub(&alice);
    let work = tempfile::tempdir().unwrap();
    let src = work.path().join("src");
    tree(&src, 3);

    // A flist whose blocks went to a local directory only: the hub lacks them.
    let local: Arc<dyn BlockStore> = Arc::new(DirStore::new(work.path().join("local")));
    let fl = work.path().join("local.fl");
    pack_to(local, &src, &fl).await;
    let bytes = std::fs::read(&fl).unwrap();
    let before = hub.dump();
    let err = client
        .push("local.fl", bytes.clone(), false)
        .await
        .unwrap_err();
    assert_eq!(err.status(), Some(400), "{err}");
    assert!(err.to_string().contains("does not have"), "{err}");

    // Unsigned upload.
    let (s, _) = hub
        .send(Method::POST, "/api/v1/hub/flists/x.fl", bytes.clone(), None)
        .await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);
    // Not an flist at all, and a truncated one.
    let err = client
        .push("junk.fl", b"hello, I am not sqlite".to_vec(), false)
        .await
        .unwrap_err();
    assert_eq!(err.status(), Some(400), "{err}");
    assert!(err.to_string().contains("junk.fl"), "{err}");
    assert!(
        !err.to_string().contains("/tmp"),
        "no server paths in messages: {err}"
    );
    let err = client
        .push("cut.fl", bytes[..bytes.len() / 2].to_vec(), false)
        .await
        .unwrap_err();
    assert_eq!(err.status(), Some(400), "{err}");
    let err = client.push("empty.fl", vec![], false).await.unwrap_err();
    assert_eq!(err.status(), Some(400), "{err}");
    // Oversize.
    let (s, body) = hub
        .send(
            Method::POST,
            "/api/v1/hub/flists/big.fl",
            vec![0u8; 256 * 1024 + 1],
            Some((&alice.0, Signer::Twin(alice.1), unix_now())),
        )
        .await;
    assert_eq!(s, StatusCode::PAYLOAD_TOO_LARGE, "{}", error_of(&body));
    // Bad names (checked by the server too, not only the client).
    for bad in [".hidden", "a%20b", "-x", &"n".repeat(129)] {
        let (s, body) = hub
            .send(
                Method::POST,
                &format!("/api/v1/hub/flists/{bad}"),
                bytes.clone(),
                Some((&alice.0, Signer::Twin(alice.1), unix_now())),
            )
            .await;
        assert_eq!(s, StatusCode::BAD_REQUEST, "{bad}: {}", error_of(&body));
    }
    // Unknown query parameters.
    let (s, _) = hub
        .send(
            Method::POST,
            "/api/v1/hub/flists/x.fl?force=1",
            bytes.clone(),
            Some((&alice.0, Signer::Twin(alice.1), unix_now())),
        )
        .await;
    assert_eq!(s, StatusCode::BAD_REQUEST);

    assert_eq!(hub.dump(), before, "refused uploads change nothing");
    assert_eq!(hub.flist_files(), 0);
    assert_eq!(
        std::fs::read_dir(hub.data().join("hub/tmp"))
            .unwrap()
            .count(),
        0,
        "no temporary files left"
    );
    assert!(client.list(alice.1).await.unwrap().is_empty());
}

#[tokio::test]
async fn flist_sqlite_triggers_views_virtual_tables_and_huge_values_are_refused_on_push() {
    let hub = TestHub::start().await;
    let alice = hub.twin().await;
    let client = hub.hub(&alice);
    let work = tempfile::tempdir().unwrap();
    let src = work.path().join("src");
    tree(&src, 5);
    // A good flist whose blocks the hub has: only the SQL added below is wrong.
    let store: Arc<dyn BlockStore> = Arc::new(client.block_store().unwrap());
    let good = work.path().join("good.fl");
    pack_to(store, &src, &good).await;
    let before = hub.dump();
    for (name, sql, want) in [
        (
            "trigger",
            "create trigger t after insert on tag begin delete from inode; end",
            "a trigger",
        ),
        (
            "view",
            "alter table tag rename to tag_real; create view tag as select key, value from tag_real",
            "a view",
        ),
        (
            "vtab",
            "create virtual table v using fts5(x)",
            "a virtual table",
        ),
        (
            "generated",
            "alter table inode add column g integer as (ino * 2)",
            "generated or hidden column",
        ),
        (
            "blob",
            "insert into tag values ('big', randomblob(1048576))",
            "longer than",
        ),
        (
            "string",
            "insert into route values (0, 255, printf('%.*c', 1048576, 'x'))",
            "longer than",
        ),
    ] {
        let p = work.path().join(format!("{name}.fl"));
        std::fs::copy(&good, &p).unwrap();
        let c = rusqlite::Connection::open(&p).unwrap();
        c.execute_batch(sql).unwrap();
        drop(c);
        let err = client
            .push(&format!("{name}.fl"), std::fs::read(&p).unwrap(), false)
            .await
            .unwrap_err();
        assert_eq!(err.status(), Some(400), "{name}: {err}");
        assert!(err.to_string().contains(want), "{name}: {err}");
    }
    assert_eq!(hub.dump(), before, "refused uploads change nothing");
    assert_eq!(hub.flist_files(), 0);
    assert!(client.list(alice.1).await.unwrap().is_empty());
}

#[tokio::test]
async fn flists_sharing_files_share_their_blocks_on_the_hub() {
    let hub = TestHub::start().await;
    let alice = hub.twin().await;
    let client = hub.hub(&alice);
    let store: Arc<dyn BlockStore> = Arc::new(client.block_store().unwrap());
    let work = tempfile::tempdir().unwrap();
    let (src1, src2) = (work.path().join("one"), work.path().join("two"));
    tree(&src1, 10);
    tree(&src2, 20);

    let first = pack_to(store.clone(), &src1, &work.path().join("one.fl")).await;
    assert_eq!(first.blocks_uploaded, 6);
    assert_eq!(hub.block_files(), 6);
    // The second flist shares usr/lib/shared.so (4 blocks): only its own 2 are uploaded.
    let second = pack_to(store.clone(), &src2, &work.path().join("two.fl")).await;
    assert_eq!(second.blocks_uploaded, 2);
    assert_eq!(second.blocks_present, 4);
    assert_eq!(hub.block_files(), 8);
    // Packing the first again uploads nothing.
    let again = pack_to(store, &src1, &work.path().join("one-again.fl")).await;
    assert_eq!(again.blocks_uploaded, 0);
    assert_eq!(hub.block_files(), 8);
    for (name, fl) in [("one.fl", "one.fl"), ("two.fl", "two.fl")] {
        let bytes = std::fs::read(work.path().join(fl)).unwrap();
        client.push(name, bytes, false).await.unwrap();
    }
    let db = zos_grid::hub::db::HubDb::open(&hub.data().join("hub.sqlite")).unwrap();
    assert_eq!(
        db.block_totals().unwrap().0,
        8,
        "the block index holds each block once"
    );
    assert_eq!(client.list(alice.1).await.unwrap().len(), 2);
}

#[tokio::test]
async fn a_published_flist_mounts_from_the_hub_alone() {
    if !nix::unistd::geteuid().is_root() || !Path::new("/dev/fuse").exists() {
        eprintln!("SKIP a_published_flist_mounts_from_the_hub_alone: needs root and /dev/fuse");
        return;
    }
    let hub = TestHub::start().await;
    let alice = hub.twin().await;
    let client = hub.hub(&alice);
    let work = tempfile::tempdir().unwrap();
    let src = work.path().join("src");
    tree(&src, 5);
    let fl = work.path().join("app.fl");
    pack_to(Arc::new(client.block_store().unwrap()), &src, &fl).await;
    let pushed = client
        .push("app.fl", std::fs::read(&fl).unwrap(), false)
        .await
        .unwrap();
    // Fetch it as a node would and mount it through its own routes (the hub's block URL).
    let got = zos_flist::hub::fetch_flist(
        &client.url_of(&pushed.flist.hash_path()),
        &work.path().join("dl"),
        1 << 26,
    )
    .await
    .unwrap();
    let flist = zos_flist::Flist::open(&got.path).unwrap();
    assert_eq!(
        flist.routes()[0].url,
        format!("{}/api/v1/hub/blocks", hub.url())
    );
    let store = Arc::new(zos_flist::Router::from_routes(flist.routes()).unwrap());
    let cache = zos_flist::BlockCache::open(&work.path().join("cache"), 1 << 30).unwrap();
    let mnt = work.path().join("mnt");
    std::fs::create_dir(&mnt).unwrap();
    let (path, mnt2) = (got.path.clone(), mnt.clone());
    let handle = tokio::task::spawn_blocking(move || {
        zos_flist::mount(&path, &mnt2, store, cache, &Default::default())
    })
    .await
    .unwrap()
    .unwrap();
    let (a, b) = tokio::task::spawn_blocking({
        let (mnt, src) = (mnt.clone(), src.clone());
        move || {
            (
                std::fs::read(mnt.join("usr/lib/shared.so")).unwrap(),
                std::fs::read(src.join("usr/lib/shared.so")).unwrap(),
            )
        }
    })
    .await
    .unwrap();
    assert!(a == b, "same bytes through the hub");
    assert_eq!(
        std::fs::read_link(mnt.join("link")).unwrap(),
        PathBuf::from("usr/lib/shared.so")
    );
    tokio::task::spawn_blocking(move || drop(handle))
        .await
        .unwrap();
}
