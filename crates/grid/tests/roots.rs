//! The root of trust of a runmode's releases on a real grid on loopback: root 1 from the
//! configured release keys, a rotation signed by the old and the new threshold, what it changes
//! (who publishes, which releases verify), that it survives a restart, and every hostile
//! rotation refused with nothing changed.

mod common;

use common::{TestGrid, auth_header, error_message, raw};
use serde_json::Value;
use zos_grid::GridConfig;
use zos_types::Identity;
use zos_types::auth::{Signer, unix_now};
use zos_types::release::root::{Root, RootChain, SignedRoot};
use zos_types::release::{Artifact, Release, ReleaseKeys, RunMode, RuntimeFlist};

fn ids(n: usize) -> Vec<Identity> {
    (0..n).map(|_| Identity::generate().unwrap()).collect()
}

/// A grid whose dev root 1 is two of `old`, and prod one of `prod`.
async fn grid(old: &[Identity], prod: &Identity) -> TestGrid {
    let dev = ReleaseKeys {
        keys: old.iter().map(|i| i.public_key()).collect(),
        threshold: 2,
    };
    let prod = ReleaseKeys {
        keys: vec![prod.public_key()],
        threshold: 1,
    };
    TestGrid::start_with(move |c: &mut GridConfig| {
        c.boot.release_keys.insert(RunMode::Dev, dev.clone());
        c.boot.release_keys.insert(RunMode::Prod, prod.clone());
    })
    .await
}

async fn put(g: &TestGrid, as_key: &Identity, path: &str, body: Vec<u8>) -> (u16, Value) {
    let auth = auth_header(
        as_key,
        Signer::Key(as_key.public_key()),
        "PUT",
        path,
        unix_now(),
        &body,
    );
    raw(&g.url(), "PUT", path, body, Some(&auth)).await
}

async fn root(g: &TestGrid) -> RootChain {
    let (s, body) = raw(&g.url(), "GET", "/releases/dev/root", Vec::new(), None).await;
    assert_eq!(s, 200, "{body}");
    serde_json::from_value(body).unwrap()
}

fn next(version: u64, keys: &[Identity], threshold: usize) -> Root {
    Root {
        runmode: RunMode::Dev,
        version,
        keys: keys.iter().map(|i| i.public_key()).collect(),
        threshold,
    }
}

fn release() -> Release {
    let h = |c: char| std::iter::repeat_n(c, 64).collect::<String>();
    Release {
        version: "1.0.0".into(),
        runmode: RunMode::Dev,
        created: unix_now(),
        kernel: Artifact {
            sha256: h('a'),
            size: 1,
        },
        initramfs: Artifact {
            sha256: h('b'),
            size: 1,
        },
        flists: vec![RuntimeFlist {
            name: "zos".into(),
            sha256: h('c'),
            size: 1,
        }],
        debug: None,
    }
}

fn body<T: serde::Serialize>(v: &T) -> Vec<u8> {
    serde_json::to_vec(v).unwrap()
}

fn stored_roots(g: &TestGrid) -> usize {
    std::fs::read_dir(g.data_dir().join("boot/roots/dev"))
        .unwrap()
        .count()
}

#[tokio::test]
async fn a_root_signed_by_the_old_and_new_thresholds_replaces_the_release_keys() {
    let (old, new, prod) = (ids(3), ids(2), Identity::generate().unwrap());
    let mut g = grid(&old, &prod).await;
    let r1 = root(&g).await;
    assert_eq!(r1.current.version, 1);
    assert_eq!(r1.current.threshold, 2);
    assert!(r1.chain.is_empty());

    let r2 = next(2, &new, 1);
    let signed = r2.sign(&[&old[0], &old[2], &new[0], &new[1]]).unwrap();
    let (s, b) = put(&g, &old[1], "/releases/dev/root", body(&signed)).await;
    assert_eq!(s, 201, "{b}");
    assert_eq!(
        (b["version"].as_u64(), b["rotated"].as_bool()),
        (Some(2), Some(true))
    );
    // The same root again (sent by a key of the root now current) changes nothing.
    let (s, b) = put(&g, &new[1], "/releases/dev/root", body(&signed)).await;
    assert_eq!((s, b["rotated"].as_bool()), (200, Some(false)), "{b}");

    let chain = root(&g).await;
    assert_eq!(chain.current, r2);
    assert_eq!(chain.chain, vec![signed.clone()]);
    // A node pinning root 1 walks the chain to root 2.
    assert_eq!(r1.current.walk(&chain.chain).unwrap(), r2);

    // Releases: the old keys no longer count, the new one does (the release then fails only on
    // its files, which were never uploaded).
    let by_old = release().sign(&[&old[0], &old[1]]).unwrap();
    let (s, b) = put(&g, &new[0], "/releases/dev", body(&by_old)).await;
    assert_eq!(s, 403, "{b}");
    assert!(
        error_message(&b).contains("0 trusted release key(s), 1 needed"),
        "{b}"
    );
    let by_new = release().sign(&[&new[0]]).unwrap();
    let (s, b) = put(&g, &new[0], "/releases/dev", body(&by_new)).await;
    assert_eq!(s, 400, "{b}");
    assert!(error_message(&b).contains("upload it first"), "{b}");
    // An old key may not publish at all any more.
    let (s, b) = put(&g, &old[0], "/releases/dev", body(&by_new)).await;
    assert_eq!(s, 403, "{b}");
    assert!(
        error_message(&b).contains("not one of this grid's release keys"),
        "{b}"
    );

    // The rotation survives a restart.
    g.restart().await;
    assert_eq!(root(&g).await.current, r2);
}

#[tokio::test]
async fn hostile_rotations_are_refused_and_change_nothing() {
    let (old, new, prod) = (ids(3), ids(2), Identity::generate().unwrap());
    let g = grid(&old, &prod).await;
    let path = "/releases/dev/root";
    let cases: Vec<(SignedRoot, u16, &str)> = vec![
        // One old signature of the two needed (twice by the same key).
        (
            next(2, &new, 1).sign(&[&old[0], &old[0], &new[0]]).unwrap(),
            403,
            "signed by 1 key(s) of root 1, whose threshold is 2",
        ),
        // The new keys did not sign.
        (
            next(2, &new, 2).sign(&[&old[0], &old[1], &new[0]]).unwrap(),
            403,
            "the new keys must sign it too",
        ),
        // Root 1 again, and a skipped version.
        (
            next(1, &new, 1).sign(&[&old[0], &old[1], &new[0]]).unwrap(),
            409,
            "replay of an older root",
        ),
        (
            next(3, &new, 1).sign(&[&old[0], &old[1], &new[0]]).unwrap(),
            409,
            "send root 2 first",
        ),
        // Another runmode's root.
        (
            Root {
                runmode: RunMode::Prod,
                ..next(2, &new, 1)
            }
            .sign(&[&old[0], &old[1], &new[0]])
            .unwrap(),
            400,
            "for runmode prod, not dev",
        ),
    ];
    for (signed, status, message) in cases {
        let (s, b) = put(&g, &old[0], path, body(&signed)).await;
        assert_eq!(s, status, "{b}");
        assert!(error_message(&b).contains(message), "{message}: {b}");
    }
    // The request itself: a key of prod's root, a stranger, a malformed body.
    let good = next(2, &new, 1).sign(&[&old[0], &old[1], &new[0]]).unwrap();
    let (s, b) = put(&g, &prod, path, body(&good)).await;
    assert_eq!(s, 403, "{b}");
    assert!(
        error_message(&b).contains("not a key of root 1 of runmode dev"),
        "{b}"
    );
    let (s, _) = put(&g, &Identity::generate().unwrap(), path, body(&good)).await;
    assert_eq!(s, 403);
    let (s, b) = put(&g, &old[0], path, b"{\"root\":1}".to_vec()).await;
    assert_eq!(s, 400, "{b}");
    let (s, _) = raw(&g.url(), "PUT", path, body(&good), None).await;
    assert_eq!(s, 401);

    assert_eq!(root(&g).await.current.version, 1);
    assert_eq!(stored_roots(&g), 0);
    let (s, b) = raw(&g.url(), "GET", "/releases/qa/root", Vec::new(), None).await;
    assert_eq!(s, 404, "{b}");
}

#[test]
fn stored_roots_that_do_not_follow_from_the_configured_keys_stop_the_grid() {
    use std::collections::BTreeMap;
    use zos_grid::boot::{Boot, BootConfig};

    let (old, new) = (ids(1), ids(1));
    let dir = tempfile::tempdir().unwrap();
    let config = |keys: &[Identity]| BootConfig {
        release_keys: BTreeMap::from([(
            RunMode::Dev,
            ReleaseKeys {
                keys: keys.iter().map(|i| i.public_key()).collect(),
                threshold: 1,
            },
        )]),
        ..BootConfig::default()
    };
    Boot::open(dir.path(), config(&old)).unwrap();
    let link = next(2, &new, 1).sign(&[&old[0], &new[0]]).unwrap();
    let file = dir.path().join("boot/roots/dev/2.json");
    std::fs::write(&file, serde_json::to_vec(&link).unwrap()).unwrap();
    // From the keys it was rotated from, the stored root is walked; from others, refused.
    Boot::open(dir.path(), config(&old)).unwrap();
    let e = Boot::open(dir.path(), config(&ids(1)))
        .unwrap_err()
        .to_string();
    assert!(e.contains("2.json"), "{e}");
    assert!(
        e.contains("do not follow from the configured release keys"),
        "{e}"
    );
    // A tampered stored root is refused too.
    let mut tampered = link;
    tampered.root = tampered.root.replace("\"threshold\":1", "\"threshold\":1 ");
    std::fs::write(&file, serde_json::to_vec(&tampered).unwrap()).unwrap();
    let e = Boot::open(dir.path(), config(&old))
        .unwrap_err()
        .to_string();
    assert!(e.contains("signed by 0 key(s) of root 1"), "{e}");
}
