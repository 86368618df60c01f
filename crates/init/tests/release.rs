//! The clock and the release steps against a real HTTP server on loopback that serves good
//! and tampered releases and flists.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::http::{StatusCode, Uri};
use axum::response::IntoResponse;
use sha2::Digest;
use zos_init::clock::{self, Clock, Synced};
use zos_init::release::{self, Error};
use zos_types::identity::Identity;
use zos_types::release::{Artifact, Release, ReleaseError, ReleaseKeys, RunMode, RuntimeFlist};

type Routes = Arc<Mutex<HashMap<String, (StatusCode, Vec<u8>)>>>;

/// A grid stand-in: answers each path with what the test put there, 404 otherwise.
async fn serve() -> (String, Routes) {
    let routes: Routes = Arc::default();
    let r = routes.clone();
    let app = axum::Router::new().fallback(move |uri: Uri| {
        let r = r.clone();
        async move {
            match r.lock().unwrap().get(uri.path()) {
                Some((status, body)) => (*status, body.clone()).into_response(),
                None => StatusCode::NOT_FOUND.into_response(),
            }
        }
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (format!("http://{addr}"), routes)
}

fn put(routes: &Routes, path: &str, status: StatusCode, body: impl Into<Vec<u8>>) {
    routes
        .lock()
        .unwrap()
        .insert(path.to_string(), (status, body.into()));
}

fn sha(b: &[u8]) -> String {
    hex::encode(sha2::Sha256::digest(b))
}

fn release(runmode: RunMode, flist: &[u8]) -> Release {
    Release {
        version: "1.0.0".into(),
        runmode,
        created: 1_800_000_000,
        kernel: Artifact {
            sha256: "a".repeat(64),
            size: 1,
        },
        initramfs: Artifact {
            sha256: "b".repeat(64),
            size: 1,
        },
        flists: vec![RuntimeFlist {
            name: "zos-base".into(),
            sha256: sha(flist),
            size: flist.len() as u64,
        }],
        debug: None,
    }
}

struct FakeClock {
    now: SystemTime,
    set: Option<SystemTime>,
}

impl Clock for FakeClock {
    fn now(&self) -> SystemTime {
        self.now
    }
    fn set(&mut self, t: SystemTime) -> std::io::Result<()> {
        self.set = Some(t);
        Ok(())
    }
}

#[tokio::test]
async fn the_clock_is_set_from_the_grid_only_when_off_by_more_than_a_second() {
    let (grid, routes) = serve().await;
    let client = zos_init::http::client().unwrap();
    let grid_secs = 1_800_000_000i64;
    put(
        &routes,
        "/api/v1/health",
        StatusCode::OK,
        format!("{{\"version\":\"0.1.0\",\"time\":{grid_secs}}}"),
    );
    // A node booting at 1970 is set to the grid's time (its second's middle, plus half the
    // round trip).
    let mut c = FakeClock {
        now: UNIX_EPOCH,
        set: None,
    };
    let r = clock::sync(&client, &grid, &mut c).await.unwrap();
    assert!(
        matches!(r, Synced::Set { skew_ms } if skew_ms > 1000),
        "{r:?}"
    );
    let set = c.set.unwrap().duration_since(UNIX_EPOCH).unwrap();
    assert!(
        set >= Duration::from_millis(grid_secs as u64 * 1000 + 500),
        "{set:?}"
    );
    assert!(set < Duration::from_secs(grid_secs as u64 + 60), "{set:?}");
    // A clock already on the grid's time is kept.
    let mut c = FakeClock {
        now: UNIX_EPOCH + Duration::from_millis(grid_secs as u64 * 1000 + 500),
        set: None,
    };
    let r = clock::sync(&client, &grid, &mut c).await.unwrap();
    assert!(matches!(r, Synced::Kept { .. }), "{r:?}");
    assert_eq!(c.set, None);
    // Nonsense and failures are errors, and the clock is left alone.
    for (status, body, want) in [
        (
            StatusCode::OK,
            "{\"version\":\"x\",\"time\":-5}".to_string(),
            "not a time after 1970",
        ),
        (
            StatusCode::OK,
            "{\"time\":\"soon\"}".to_string(),
            "not usable",
        ),
        (StatusCode::OK, "x".repeat(100_000), "larger than"),
        (
            StatusCode::SERVICE_UNAVAILABLE,
            String::new(),
            "answered 503",
        ),
    ] {
        put(&routes, "/api/v1/health", status, body);
        let mut c = FakeClock {
            now: UNIX_EPOCH,
            set: None,
        };
        let e = clock::sync(&client, &grid, &mut c).await.unwrap_err();
        assert!(e.to_string().contains(want), "{want}: {e}");
        assert_eq!(c.set, None);
    }
}

#[tokio::test]
async fn a_good_release_is_taken_and_tampered_ones_refused() {
    let (grid, routes) = serve().await;
    let client = zos_init::http::client().unwrap();
    let (k1, k2, stranger) = (
        Identity::generate().unwrap(),
        Identity::generate().unwrap(),
        Identity::generate().unwrap(),
    );
    let one_of_two = ReleaseKeys {
        keys: vec![k1.public_key(), k2.public_key()],
        threshold: 1,
    };
    let flist = b"the runtime flist bytes".to_vec();
    let good = release(RunMode::Dev, &flist);
    let json = |r: &Release, ids: &[&Identity]| serde_json::to_vec(&r.sign(ids).unwrap()).unwrap();
    put(
        &routes,
        "/releases/dev",
        StatusCode::OK,
        json(&good, &[&k1]),
    );
    put(
        &routes,
        &format!("/api/v1/hub/flists/by-hash/{}", sha(&flist)),
        StatusCode::OK,
        flist.clone(),
    );

    // The good release verifies, and its flist is fetched and kept under its hash.
    let got = release::current(&client, &grid, &one_of_two, RunMode::Dev)
        .await
        .unwrap();
    assert_eq!(got, good);
    let dir = tempfile::tempdir().unwrap();
    let path = release::fetch_flist(&client, &grid, &got.flists[0], dir.path())
        .await
        .unwrap();
    assert_eq!(std::fs::read(&path).unwrap(), flist);
    assert_eq!(path, dir.path().join(format!("{}.fl", sha(&flist))));

    // Signed by a key the node does not pin: refused, and the stranger named.
    put(
        &routes,
        "/releases/dev",
        StatusCode::OK,
        json(&good, &[&stranger]),
    );
    let e = release::current(&client, &grid, &one_of_two, RunMode::Dev)
        .await
        .unwrap_err();
    assert!(
        matches!(&e, Error::Refused(ReleaseError::NotTrusted { good: 0, threshold: 1, unknown }) if unknown == &[stranger.public_key().to_string()]),
        "{e:?}"
    );
    // Not enough of the pinned keys for the threshold.
    let both = ReleaseKeys {
        keys: one_of_two.keys.clone(),
        threshold: 2,
    };
    put(
        &routes,
        "/releases/dev",
        StatusCode::OK,
        json(&good, &[&k1, &stranger]),
    );
    let e = release::current(&client, &grid, &both, RunMode::Dev)
        .await
        .unwrap_err();
    assert!(
        matches!(
            e,
            Error::Refused(ReleaseError::NotTrusted {
                good: 1,
                threshold: 2,
                ..
            })
        ),
        "{e:?}"
    );
    // A manifest changed after signing.
    let mut signed = good.sign(&[&k1]).unwrap();
    signed.manifest = signed.manifest.replace("1.0.0", "9.0.0");
    put(
        &routes,
        "/releases/dev",
        StatusCode::OK,
        serde_json::to_vec(&signed).unwrap(),
    );
    let e = release::current(&client, &grid, &one_of_two, RunMode::Dev)
        .await
        .unwrap_err();
    assert!(
        matches!(e, Error::Refused(ReleaseError::NotTrusted { good: 0, .. })),
        "{e:?}"
    );
    // A release of another runmode.
    put(
        &routes,
        "/releases/dev",
        StatusCode::OK,
        json(&release(RunMode::Prod, &flist), &[&k1]),
    );
    let e = release::current(&client, &grid, &one_of_two, RunMode::Dev)
        .await
        .unwrap_err();
    assert!(e.to_string().contains("release refused"), "{e}");
    assert!(
        zos_runtime::error_chain(&e).contains("runmode prod"),
        "{e:?}"
    );
    // Garbage, oversize and missing answers.
    for (status, body, want) in [
        (StatusCode::OK, b"not json".to_vec(), "not a signed release"),
        (
            StatusCode::OK,
            vec![b' '; release::MAX_RELEASE_BYTES + 1],
            "larger than",
        ),
        (StatusCode::NOT_FOUND, vec![], "answered 404"),
    ] {
        put(&routes, "/releases/dev", status, body);
        let e = release::current(&client, &grid, &one_of_two, RunMode::Dev)
            .await
            .unwrap_err();
        assert!(e.to_string().contains(want), "{want}: {e}");
    }

    // A manifest whose flist hash does not match what the hub serves: refused, nothing kept.
    let tampered = b"the runtime flist bytes, changed".to_vec();
    let mut entry = good.flists[0].clone();
    entry.size = tampered.len() as u64;
    put(
        &routes,
        &format!("/api/v1/hub/flists/by-hash/{}", entry.sha256),
        StatusCode::OK,
        tampered.clone(),
    );
    let dir = tempfile::tempdir().unwrap();
    let e = release::fetch_flist(&client, &grid, &entry, dir.path())
        .await
        .unwrap_err();
    assert!(
        matches!(&e, Error::FlistHash { name, got, .. } if name == "zos-base" && got == &sha(&tampered)),
        "{e:?}"
    );
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
    // Bytes longer than the manifest says: refused before they are all read.
    let mut short = good.flists[0].clone();
    short.size = 4;
    let e = release::fetch_flist(&client, &grid, &short, dir.path())
        .await
        .unwrap_err();
    assert!(matches!(e, Error::FlistSize { expected: 4, .. }), "{e:?}");
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
}
