//! The node's view of the grid (`ClientView`) against a real grid server on loopback: twins the
//! grid does not know are remembered as unknown, so a flood of deployments naming unknown
//! signers costs one lookup per twin, and both caches stay bounded.

use zos_client::GridClient;
use zos_provision::{GridView, GridViewError};
use zos_types::Identity;
use zos_types::node_api::ErrorKind;
use zosd::client_view::ClientView;

#[tokio::test(flavor = "multi_thread")]
async fn unknown_signer_flood_is_looked_up_once_and_the_caches_stay_bounded() {
    let dir = tempfile::tempdir().unwrap();
    let grid = zos_grid::start(zos_grid::GridConfig::new(
        "127.0.0.1:0".parse().unwrap(),
        dir.path().join("grid"),
    ))
    .await
    .unwrap();
    let alice = Identity::generate().unwrap();
    let twin = GridClient::new(&grid.url())
        .unwrap()
        .with_identity(alice.clone())
        .create_twin(None)
        .await
        .unwrap()
        .id;
    let view = ClientView::with_capacity(GridClient::new(&grid.url()).unwrap(), 100);

    // 300 signers nobody knows, and a real twin, each looked up on the grid once.
    let unknown: Vec<u32> = (1_000_000..1_000_300).collect();
    for t in &unknown {
        let e = view.twin_key(*t).await.unwrap_err();
        assert!(matches!(e, GridViewError::NotFound { .. }), "{e:?}");
    }
    assert_eq!(view.twin_key(twin).await.unwrap(), alice.public_key());

    // Without the grid, what is cached still answers: the real twin's key and the last 100
    // unknown twins (the cache holds 100); older ones were let go and need the grid again.
    grid.shutdown().await.unwrap();
    assert_eq!(view.twin_key(twin).await.unwrap(), alice.public_key());
    for t in &unknown[200..] {
        let e = view.twin_key(*t).await.unwrap_err();
        assert!(
            matches!(e, GridViewError::NotFound { .. }),
            "twin {t} was looked up again: {e:?}"
        );
    }
    let e = view.twin_key(unknown[0]).await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Unavailable, "{e:?}");
    let message = zos_runtime::error_chain(&e);
    assert!(
        message.contains("cannot reach the grid to check twin"),
        "{message}"
    );
}
