//! `zos release root` (and the rollout commands) against a real grid on loopback: keys made
//! with `zos release keygen`, the root shown and rotated, refusals that change nothing.

use std::path::PathBuf;
use std::process::{Command, Output};

use zos_grid::{GridConfig, RunningGrid};
use zos_types::release::root::RootChain;
use zos_types::release::{ReleaseKeys, RunMode};

fn zos(grid: &str, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_zos"))
        .args(args)
        .env("ZOS_GRID", grid)
        .env_remove("ZOS_KEY")
        .output()
        .expect("running zos")
}

fn ok(grid: &str, args: &[&str]) -> String {
    let out = zos(grid, args);
    assert!(
        out.status.success(),
        "zos {args:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

fn fails(grid: &str, args: &[&str]) -> String {
    let out = zos(grid, args);
    assert!(!out.status.success(), "zos {args:?} succeeded");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Release keys k0..kN made by `zos release keygen`, and a grid whose dev root 1 is two of the
/// first three.
struct Bed {
    work: tempfile::TempDir,
    grid: RunningGrid,
    keys: Vec<PathBuf>,
}

impl Bed {
    async fn start(n: usize) -> Self {
        let work = tempfile::tempdir().unwrap();
        let keys: Vec<PathBuf> = (0..n).map(|i| work.path().join(format!("k{i}"))).collect();
        for k in &keys {
            ok(
                "http://unused",
                &["release", "keygen", "-o", k.to_str().unwrap()],
            );
        }
        let json = ok(
            "http://unused",
            &[
                "release",
                "keys",
                keys[0].to_str().unwrap(),
                keys[1].to_str().unwrap(),
                keys[2].to_str().unwrap(),
                "--threshold",
                "2",
            ],
        );
        let release_keys: ReleaseKeys = serde_json::from_str(&json).unwrap();
        let mut config = GridConfig::new("127.0.0.1:0".parse().unwrap(), work.path().join("grid"));
        config.boot.release_keys.insert(RunMode::Dev, release_keys);
        let grid = zos_grid::start(config).await.unwrap();
        Self { work, grid, keys }
    }

    fn url(&self) -> String {
        self.grid.url()
    }

    fn key(&self, i: usize) -> &str {
        self.keys[i].to_str().unwrap()
    }

    fn root(&self) -> RootChain {
        serde_json::from_str(&ok(
            &self.url(),
            &["--json", "release", "root", "show", "--runmode", "dev"],
        ))
        .unwrap()
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn the_root_is_shown_and_rotated_by_the_old_and_new_keys() {
    let bed = Bed::start(5).await;
    let url = bed.url();
    let shown = ok(&url, &["release", "root", "show", "--runmode", "dev"]);
    assert!(
        shown.contains("root 1 of runmode dev: 2 of 3 keys sign a release"),
        "{shown}"
    );

    // One old key of the two needed: refused before anything is sent.
    let err = fails(
        &url,
        &[
            "release",
            "root",
            "rotate",
            "--runmode",
            "dev",
            "--new-key",
            bed.key(3),
            "--threshold",
            "1",
            "--old-key",
            bed.key(0),
        ],
    );
    assert!(
        err.contains("signed by 1 key(s) of root 1, whose threshold is 2"),
        "{err}"
    );
    assert_eq!(bed.root().current.version, 1);

    // Two old keys and the new one; k4 is in the new root but offline (its public key only).
    let k4: zos_types::PublicKey = {
        let id = zos_client::keyfile::load_identity(&bed.keys[4]).unwrap();
        id.public_key()
    };
    let k4s = k4.to_string();
    let out = ok(
        &url,
        &[
            "release",
            "root",
            "rotate",
            "--runmode",
            "dev",
            "--new-key",
            bed.key(3),
            "--new-public",
            &k4s,
            "--threshold",
            "1",
            "--old-key",
            bed.key(0),
            "--old-key",
            bed.key(2),
        ],
    );
    assert!(out.contains("root 2 of runmode dev installed"), "{out}");
    let chain = bed.root();
    assert_eq!(chain.current.version, 2);
    assert_eq!(chain.current.threshold, 1);
    assert_eq!(chain.current.keys.len(), 2);
    assert!(chain.current.keys.contains(&k4));
    assert_eq!(chain.chain.len(), 1);

    // The old keys cannot rotate any more.
    let err = fails(
        &url,
        &[
            "release",
            "root",
            "rotate",
            "--runmode",
            "dev",
            "--new-key",
            bed.key(0),
            "--threshold",
            "1",
            "--old-key",
            bed.key(0),
            "--old-key",
            bed.key(1),
        ],
    );
    assert!(err.contains("signed by 0 key(s) of root 2"), "{err}");
    assert_eq!(bed.root().current.version, 2);
    drop(bed.work);
}
