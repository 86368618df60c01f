//! What every command shares: the global options, and the grid client they make (the grid's
//! URL, the key file, the twin it signs as), and where `zos` keeps its local state.

use std::path::PathBuf;

use anyhow::bail;
use clap::Args;
use zos_client::GridClient;
use zos_types::Identity;

use crate::contexts::Ctx;
use crate::exit::{Failure, Kind};
use crate::output::Format;
pub use crate::paths::{config_dir, state_dir};

/// Options every command takes.
#[derive(Debug, Clone, Args)]
pub struct Global {
    /// The context to use (see `zos context`) instead of the current one.
    #[arg(long, env = "ZOS_CONTEXT", global = true, value_name = "NAME")]
    pub context: Option<String>,
    /// Base URL of the grid (default: the context's, else the running devnet, if any).
    #[arg(long, env = "ZOS_GRID", global = true)]
    pub grid: Option<String>,
    /// Key file to sign with (default: the context's, else ~/.config/zos/key).
    #[arg(long, env = "ZOS_KEY", global = true)]
    pub key: Option<PathBuf>,
    /// Output format: table (for people), json or yaml (for scripts).
    #[arg(short = 'o', long = "output", id = "output", global = true, value_name = "FORMAT",
          value_parser = ["table", "json", "yaml"])]
    pub output: Option<String>,
    /// Print JSON instead of tables: the same as --output json.
    #[arg(long, global = true)]
    pub json: bool,
}

impl Global {
    /// The output format chosen: --json, --output, or tables.
    ///
    /// `flist pack` keeps `-o/--output` for the flist file it writes (its own argument of the
    /// same id, so the global one does not reach it): a value that is not a format is its.
    pub fn format(&self) -> Format {
        if self.json {
            return Format::Json;
        }
        self.output
            .as_deref()
            .and_then(Format::parse)
            .unwrap_or_default()
    }

    /// True when results are printed for scripts (json or yaml): no tables, no progress.
    pub fn structured(&self) -> bool {
        self.format() != Format::Table
    }
}

/// The key file to use and where that choice comes from: --key (or $ZOS_KEY), the context's,
/// or ~/.config/zos/key.
pub fn key_source(g: &Global, ctx: Option<&Ctx>) -> anyhow::Result<(PathBuf, &'static str)> {
    if let Some(k) = &g.key {
        return Ok((k.clone(), "--key or ZOS_KEY"));
    }
    if let Some(k) = ctx.and_then(|c| c.key.clone()) {
        return Ok((k, "the context"));
    }
    Ok((config_dir()?.join("key"), "the default"))
}

/// The key file to use: --key, the context's, or ~/.config/zos/key.
pub fn key_path(g: &Global) -> anyhow::Result<PathBuf> {
    if let Some(k) = &g.key {
        return Ok(k.clone());
    }
    let ctx = crate::contexts::selected(g.context.as_deref())?;
    Ok(key_source(g, ctx.as_ref().map(|c| &c.1))?.0)
}

/// The key of `--key` (or the default key file), which must exist.
pub fn load_key(g: &Global) -> anyhow::Result<Identity> {
    let path = key_path(g)?;
    if !path.exists() {
        bail!(Failure::new(
            Kind::NotFound,
            format!(
                "no key at {}: make one with `zos key new` or pass --key FILE",
                path.display()
            )
        ));
    }
    zos_client::keyfile::load_identity(&path).map_err(|e| {
        anyhow::Error::new(e).context(format!(
            "the key file {} cannot be used: restore it from its 24 words with \
             `zos key restore --force`, or pass --key FILE",
            path.display()
        ))
    })
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

/// The grid URL and where it comes from: --grid (or $ZOS_GRID), the context's, or the running
/// devnet; none when there is none of them.
pub fn grid_source(g: &Global, ctx: Option<&Ctx>) -> (Option<String>, &'static str) {
    if let Some(u) = &g.grid {
        return (Some(u.clone()), "--grid or ZOS_GRID");
    }
    if let Some(c) = ctx {
        return (Some(c.grid.clone()), "the context");
    }
    match running_default() {
        Some(state) => (Some(state.grid_url), "the running devnet"),
        None => (None, "no --grid, ZOS_GRID, context or running devnet"),
    }
}

/// The grid URL: --grid, $ZOS_GRID, the context's, or the running devnet.
pub fn grid_url(g: &Global) -> anyhow::Result<String> {
    if let Some(u) = &g.grid {
        return Ok(u.clone());
    }
    let ctx = crate::contexts::selected(g.context.as_deref())?;
    match grid_source(g, ctx.as_ref().map(|c| &c.1)).0 {
        Some(u) => Ok(u),
        None => bail!(Failure::new(
            Kind::Usage,
            "no grid: pass --grid URL, set ZOS_GRID, add one with `zos context add NAME --grid URL --use`, \
             or start one with `zos devnet up` (as root)"
        )),
    }
}

/// An unsigned client of the grid.
pub fn client(g: &Global) -> anyhow::Result<GridClient> {
    Ok(GridClient::new(&grid_url(g)?)?)
}

/// A client that signs as your twin.
pub async fn signed_client(g: &Global) -> anyhow::Result<GridClient> {
    let id = load_key(g)?;
    let c = client(g)?.with_identity(id.clone());
    let twin = c.twin_by_key(&id.public_key()).await?.ok_or_else(|| {
        Failure::new(
            Kind::NotFound,
            format!(
                "key {} has no twin on this grid: run `zos twin create`",
                id.public_key()
            ),
        )
    })?;
    Ok(c.with_twin(twin.id))
}
