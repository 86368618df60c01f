//! `zos context …`: named grids, each with the key to use on it, as `kubectl config` keeps
//! clusters. Kept in `$XDG_CONFIG_HOME/zos/contexts.yaml` (or `~/.config/zos/contexts.yaml`),
//! mode 0600.
//!
//! Which grid and key a command uses, first found wins: `--grid`/`--key` (or `ZOS_GRID`/
//! `ZOS_KEY`), then the context of `--context NAME` (or `ZOS_CONTEXT`) or else the current one,
//! then the defaults (the running devnet, `~/.config/zos/key`).

use std::path::{Path, PathBuf};

use anyhow::{Context as _, bail};
use clap::Subcommand;
use serde_json::json;

use crate::contexts::{Contexts, Ctx, file, selected};
use crate::exit::{Failure, Kind};
use crate::global::Global;
use crate::output::{self, Table, fields, outln};

#[derive(Debug, Subcommand)]
pub enum ContextCmd {
    /// Add a context: a grid, and the key to sign with on it.
    Add {
        name: String,
        /// The grid's base URL, e.g. http://10.0.0.1:8080.
        #[arg(long, id = "grid", value_name = "URL")]
        grid: String,
        /// The key file to use on this grid (default: ~/.config/zos/key).
        #[arg(long, id = "key", value_name = "FILE", value_hint = clap::ValueHint::FilePath)]
        key: Option<PathBuf>,
        /// Make it the current context too.
        #[arg(long = "use")]
        make_current: bool,
    },
    /// Make a context the current one: commands use its grid and key.
    Use { name: String },
    /// List the contexts; the current one is marked with *.
    List,
    /// Show what this command line would use: the context, the grid and the key, and where each
    /// comes from.
    Show,
    /// Remove a context (the key file stays).
    Remove { name: String },
}

fn check_name(name: &str) -> anyhow::Result<()> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    if !ok {
        bail!(Failure::new(
            Kind::Usage,
            format!("context name {name:?} must be 1 to 64 of a-z, A-Z, 0-9, '-', '_' and '.'"),
        ));
    }
    Ok(())
}

fn absolute(p: &Path) -> anyhow::Result<PathBuf> {
    if p.is_absolute() {
        return Ok(p.to_path_buf());
    }
    Ok(std::env::current_dir()
        .context("cannot tell the current directory: give the key as an absolute path")?
        .join(p))
}

pub async fn run(cmd: ContextCmd, g: &Global) -> anyhow::Result<()> {
    let mut all = Contexts::load()?;
    match cmd {
        ContextCmd::Add {
            name,
            grid,
            key,
            make_current,
        } => {
            check_name(&name)?;
            zos_client::GridClient::new(&grid).map_err(|e| {
                Failure::new(
                    Kind::Usage,
                    format!("{e}: give the grid's base URL, like http://10.0.0.1:8080"),
                )
            })?;
            if all.contexts.contains_key(&name) {
                bail!(Failure::new(
                    Kind::Refused,
                    format!("context {name:?} already exists: `zos context remove {name}` first"),
                ));
            }
            let key = key.as_deref().map(absolute).transpose()?;
            all.contexts.insert(name.clone(), Ctx { grid, key });
            if make_current {
                all.current = Some(name.clone());
            }
            all.save()?;
            if g.structured() {
                return output::json(&json!({"name": name, "current": make_current}));
            }
            if make_current {
                outln!("context {name} added; it is the current context")?;
            } else {
                outln!("context {name} added; `zos context use {name}` makes it current")?;
            }
            Ok(())
        }
        ContextCmd::Use { name } => {
            all.get(&name)?;
            all.current = Some(name.clone());
            all.save()?;
            if g.structured() {
                return output::json(&json!({"current": name}));
            }
            outln!("current context: {name}")?;
            Ok(())
        }
        ContextCmd::Remove { name } => {
            all.get(&name)?;
            all.contexts.remove(&name);
            let was_current = all.current.as_deref() == Some(name.as_str());
            if was_current {
                all.current = None;
            }
            all.save()?;
            if g.structured() {
                return output::json(&json!({"removed": name, "was_current": was_current}));
            }
            outln!(
                "context {name} removed{}",
                if was_current {
                    "; no context is current now"
                } else {
                    ""
                }
            )?;
            Ok(())
        }
        ContextCmd::List => {
            if g.structured() {
                let v: Vec<_> = all
                    .contexts
                    .iter()
                    .map(|(n, c)| {
                        json!({"name": n, "grid": c.grid, "key": c.key,
                               "current": all.current.as_deref() == Some(n.as_str())})
                    })
                    .collect();
                return output::json(&v);
            }
            let mut t = Table::new(&["CURRENT", "NAME", "GRID", "KEY"]);
            for (n, c) in &all.contexts {
                let current = all.current.as_deref() == Some(n.as_str());
                t.row(vec![
                    if current { "*" } else { "" }.into(),
                    n.clone(),
                    c.grid.clone(),
                    c.key
                        .as_ref()
                        .map_or("(default)".into(), |k| k.display().to_string()),
                ]);
            }
            Ok(t.print()?)
        }
        ContextCmd::Show => {
            let ctx = selected(g.context.as_deref())?;
            let (grid, grid_from) = crate::global::grid_source(g, ctx.as_ref().map(|c| &c.1));
            let (key, key_from) = crate::global::key_source(g, ctx.as_ref().map(|c| &c.1))?;
            let name = ctx.as_ref().map(|c| c.0.clone());
            if g.structured() {
                return output::json(
                    &json!({"context": name, "grid": grid, "grid_from": grid_from,
                    "key": key, "key_from": key_from, "file": file()?}),
                );
            }
            fields(&[
                ("context", name.unwrap_or_else(|| "(none)".into())),
                (
                    "grid",
                    match grid {
                        Some(u) => format!("{u}  ({grid_from})"),
                        None => format!("(none: {grid_from})"),
                    },
                ),
                ("key", format!("{}  ({key_from})", key.display())),
                ("contexts in", file()?.display().to_string()),
            ])?;
            Ok(())
        }
    }
}
