//! A grid user for end-to-end tests: a fresh key and twin, a local state directory of their own,
//! and the `zos` command line run as them.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::Context;
use serde_json::Value;
use sha2::{Digest, Sha256};
use zos_client::GridClient;
use zos_types::node_api::NodeCommand;
use zos_types::{Identity, TwinId};

use crate::devnet::DevnetNode;

/// A user with a key file, a twin on the grid and their own `XDG_STATE_HOME`.
#[derive(Debug)]
pub struct User {
    pub client: GridClient,
    pub grid: String,
    key_file: PathBuf,
    state: PathBuf,
    zos: PathBuf,
    _dir: tempfile::TempDir,
}

impl User {
    /// A new key and twin on the grid at `grid`; `zos` is the CLI binary to run as them.
    pub async fn new(grid: &str, zos: &Path) -> anyhow::Result<Self> {
        let dir = tempfile::tempdir()?;
        let key_file = dir.path().join("key");
        let state = dir.path().join("state");
        std::fs::create_dir_all(&state)?;
        let id = Identity::generate()?;
        zos_client::keyfile::save_identity(&key_file, &id, 0o600)?;
        let c = GridClient::new(grid)?.with_identity(id);
        let twin = c
            .create_twin(None)
            .await
            .context("creating the user's twin")?;
        Ok(Self {
            client: c.with_twin(twin.id),
            grid: grid.to_string(),
            key_file,
            state,
            zos: zos.to_path_buf(),
            _dir: dir,
        })
    }

    pub fn twin(&self) -> TwinId {
        self.client.twin_id().expect("the user has a twin")
    }

    pub fn key_file(&self) -> &Path {
        &self.key_file
    }

    /// The user's `XDG_STATE_HOME` (the CLI keeps its network files below it).
    pub fn state_dir(&self) -> &Path {
        &self.state
    }

    /// `zos ARGS` as this user, to start and read as it runs (a `--follow`).
    pub fn zos_command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(&self.zos);
        cmd.args(args)
            .args(["--grid", &self.grid, "--key"])
            .arg(&self.key_file)
            .env("XDG_STATE_HOME", &self.state);
        cmd
    }

    /// Runs `zos ARGS` as this user: (success, stdout, stderr).
    pub fn zos_raw(&self, args: &[&str]) -> (bool, String, String) {
        let out = Command::new(&self.zos)
            .args(args)
            .args(["--grid", &self.grid, "--key"])
            .arg(&self.key_file)
            .env("XDG_STATE_HOME", &self.state)
            .output()
            .expect("running zos");
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into(),
            String::from_utf8_lossy(&out.stderr).into(),
        )
    }

    /// Runs `zos ARGS` and answers its output as JSON (a string when it is not JSON); panics
    /// with what it printed when it fails.
    pub fn zos(&self, args: &[&str]) -> Value {
        let (ok, out, err) = self.zos_raw(args);
        assert!(ok, "zos {args:?} failed: {err}\n{out}");
        serde_json::from_str(&out).unwrap_or(Value::String(out))
    }

    /// Writes `yaml` to `dir/name` and deploys it on `node` with `zos deploy --json`.
    pub fn deploy(&self, dir: &Path, name: &str, yaml: &str, node: u32) -> Value {
        let file = dir.join(name);
        std::fs::write(&file, yaml).expect("writing the deployment file");
        self.zos(&[
            "deploy",
            file.to_str().expect("utf-8 path"),
            "--node",
            &node.to_string(),
            "--json",
        ])
    }

    /// Sends command `C` to `node` over the relay and answers its answer; panics on an error.
    pub async fn call<C: NodeCommand>(&self, node: &DevnetNode, body: &C::Body) -> C::Answer {
        let twin = node.twin_id.expect("the node has a twin");
        self.client
            .node(twin)
            .call::<C>(body)
            .await
            .unwrap_or_else(|e| panic!("{} on node {}: {e}", C::NAME, node.index))
    }
}

/// The namespace of `twin`'s network `name` on `node` (docs/network.md, Names).
pub fn nr_netns(node: &DevnetNode, twin: TwinId, name: &str) -> String {
    let d = Sha256::digest(format!("{twin}:{name}").as_bytes());
    let hex: String = d[..6].iter().map(|b| format!("{b:02x}")).collect();
    format!("{}n-{hex}", node.prefix)
}
