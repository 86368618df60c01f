//! What every command shares: the global options, and the grid client they make (the grid's
//! URL, the key file, the twin it signs as), and where `zos` keeps its local state.

use std::path::PathBuf;

use anyhow::{Context, bail};
use clap::Args;
use zos_client::GridClient;
use zos_types::Identity;

/// Options every command takes.
#[derive(Debug, Clone, Args)]
pub struct Global {
    /// Base URL of the grid (default: the running devnet, if any).
    #[arg(long, env = "ZOS_GRID", global = true)]
    pub grid: Option<String>,
    /// Key file to sign with (default: ~/.config/zos/key).
    #[arg(long, env = "ZOS_KEY", global = true)]
    pub key: Option<PathBuf>,
    /// Print JSON instead of tables, for scripts.
    #[arg(long, global = true)]
    pub json: bool,
}

/// Where `zos` keeps its local state: `$XDG_STATE_HOME/zos`, or `~/.local/state/zos`.
pub fn state_dir() -> PathBuf {
    let base = match std::env::var_os("XDG_STATE_HOME") {
        Some(d) if !d.is_empty() => PathBuf::from(d),
        _ => PathBuf::from(std::env::var_os("HOME").unwrap_or_else(|| "/root".into()))
            .join(".local/state"),
    };
    base.join("zos")
}

/// The key file to use: --key, or ~/.config/zos/key.
pub fn key_path(g: &Global) -> anyhow::Result<PathBuf> {
    if let Some(k) = &g.key {
        return Ok(k.clone());
    }
    let base = match std::env::var_os("XDG_CONFIG_HOME") {
        Some(d) if !d.is_empty() => PathBuf::from(d),
        _ => PathBuf::from(std::env::var_os("HOME").context("HOME is not set: pass --key FILE")?)
            .join(".config"),
    };
    Ok(base.join("zos").join("key"))
}

/// The key of `--key` (or the default key file), which must exist.
pub fn load_key(g: &Global) -> anyhow::Result<Identity> {
    let path = key_path(g)?;
    if !path.exists() {
        bail!(
            "no key at {}: make one with `zos key new` or pass --key FILE",
            path.display()
        );
    }
    Ok(zos_client::keyfile::load_identity(&path)?)
}

/// Where the devnet called `name` keeps its state.
pub fn devnet_dir(name: &str) -> PathBuf {
    state_dir().join("devnet").join(name)
}

/// The default devnet's state, when one is up.
pub fn running_default() -> Option<zos_devnet::DevnetState> {
    zos_devnet::DevnetState::load(&devnet_dir("zdn"))
        .ok()
        .filter(zos_devnet::DevnetState::grid_running)
}

/// The grid URL: --grid, $ZOS_GRID, or the running devnet.
pub fn grid_url(g: &Global) -> anyhow::Result<String> {
    if let Some(u) = &g.grid {
        return Ok(u.clone());
    }
    if let Some(state) = running_default() {
        return Ok(state.grid_url);
    }
    bail!("no grid: pass --grid URL, set ZOS_GRID, or start one with `zos devnet up` (as root)")
}

/// An unsigned client of the grid.
pub fn client(g: &Global) -> anyhow::Result<GridClient> {
    Ok(GridClient::new(&grid_url(g)?)?)
}

/// A client that signs as your twin.
pub async fn signed_client(g: &Global) -> anyhow::Result<GridClient> {
    let id = load_key(g)?;
    let c = client(g)?.with_identity(id.clone());
    let twin = c.twin_by_key(&id.public_key()).await?.with_context(|| {
        format!(
            "key {} has no twin on this grid: run `zos twin create`",
            id.public_key()
        )
    })?;
    Ok(c.with_twin(twin.id))
}
