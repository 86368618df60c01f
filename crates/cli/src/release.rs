//! `zos release`: release keys, and publishing and listing the node OS releases a grid serves
//! (docs/boot.md). Publishing signs with release keys (`key=` requests), not with a twin.

mod rollout;
mod root;

use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use clap::Subcommand;
use zos_client::ClientError;
use zos_client::release::{FlistSpec, Publish, PublishError, ReleaseClient, Upload};
use zos_types::Identity;
use zos_types::release::{ReleaseKeys, RunMode};

use crate::global::{Global, grid_url};
use crate::output::{self, Table, outln};

// Publish is the big one, parsed once per run: boxing it buys nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Subcommand)]
pub enum ReleaseCmd {
    /// Make a release key (ed25519) in FILE (mode 0600); prints its public key.
    Keygen {
        /// The key file to write. (Here `-o/--output` names this file, not the output format:
        /// use --json for a summary scripts read.)
        #[arg(short, long, id = "output", value_name = "FILE", value_hint = clap::ValueHint::FilePath)]
        output: String,
    },
    /// Print the release keys JSON a grid (`zos-grid serve --release-keys RUNMODE=FILE`) and a
    /// node image pin: the public keys of these key files and how many must sign.
    Keys {
        /// Release key files.
        #[arg(required = true)]
        keys: Vec<PathBuf>,
        #[arg(long, default_value_t = 1)]
        threshold: usize,
    },
    /// Upload a kernel and an initramfs, sign a release naming them and the runtime flists,
    /// and publish it on the grid as the runmode's current release.
    Publish {
        #[arg(long)]
        runmode: RunMode,
        /// The kernel (bzImage) nodes boot.
        #[arg(long)]
        kernel: PathBuf,
        /// The initramfs holding zos-init.
        #[arg(long)]
        initramfs: PathBuf,
        /// A runtime flist, NAME=URL@SHA256: fetched from URL (or read, for a path) and checked
        /// against SHA256; it must be on the grid's hub. NAME=@SHA256 takes it from the hub.
        /// Repeat for each.
        #[arg(long = "flist", required = true, value_name = "NAME=URL@SHA256")]
        flists: Vec<FlistSpec>,
        /// The debug flist, NAME=URL@SHA256 as --flist (runmode dev only: a console shell for
        /// nodes booted with zos-debug; `scripts/build-node.sh` makes `debug.fl`).
        #[arg(long, value_name = "NAME=URL@SHA256")]
        debug_flist: Option<FlistSpec>,
        /// A release key file to sign with; repeat up to the grid's threshold. The first one
        /// signs the uploads.
        #[arg(long = "release-key", required = true, value_name = "FILE")]
        release_keys: Vec<PathBuf>,
        /// The release's version (default: the current one's next patch, or 0.1.0).
        #[arg(long, value_name = "X.Y.Z")]
        release_version: Option<String>,
        #[command(flatten)]
        terms: rollout::TermsArgs,
    },
    /// The releases of a runmode on the grid, newest first.
    List {
        #[arg(long)]
        runmode: RunMode,
    },
    /// The root of trust of a runmode's releases: show it, rotate it.
    #[command(subcommand)]
    Root(root::RootCmd),
    #[command(flatten)]
    Rollout(rollout::RolloutCmd),
}

pub async fn release(cmd: ReleaseCmd, g: &Global) -> anyhow::Result<()> {
    match cmd {
        ReleaseCmd::Keygen { output } => keygen(Path::new(&output), g),
        ReleaseCmd::Root(cmd) => root::root(cmd, g).await,
        ReleaseCmd::Rollout(cmd) => rollout::rollout(cmd, g).await,
        ReleaseCmd::Keys { keys, threshold } => {
            let keys = ReleaseKeys {
                keys: keys
                    .iter()
                    .map(|k| load(k).map(|id| id.public_key()))
                    .collect::<anyhow::Result<_>>()?,
                threshold,
            };
            keys.validate()?;
            output::json(&keys)
        }
        ReleaseCmd::Publish {
            runmode,
            kernel,
            initramfs,
            flists,
            debug_flist,
            release_keys,
            release_version,
            terms,
        } => {
            let keys = release_keys
                .iter()
                .map(|k| load(k))
                .collect::<anyhow::Result<Vec<_>>>()?;
            let grid = ReleaseClient::new(&grid_url(g)?)?;
            publish(
                &grid,
                g,
                runmode,
                &kernel,
                &initramfs,
                &flists,
                debug_flist.as_ref(),
                &keys,
                release_version,
                &terms.terms()?,
            )
            .await
        }
        ReleaseCmd::List { runmode } => {
            let grid = ReleaseClient::new(&grid_url(g)?)?;
            let list = grid
                .list(runmode)
                .await
                .map_err(|e| unreachable_grid(&grid, e.into()))?;
            if g.structured() {
                return output::json(&list);
            }
            let mut t = Table::new(&[
                "VERSION",
                "CREATED",
                "KERNEL",
                "INITRAMFS",
                "FLISTS",
                "SIGNERS",
                "TERMS",
            ]);
            for s in &list {
                let r = &s.release;
                t.row(vec![
                    r.version.clone(),
                    r.created.to_string(),
                    short(&r.kernel.sha256),
                    short(&r.initramfs.sha256),
                    r.flists
                        .iter()
                        .map(|f| f.name.as_str())
                        .collect::<Vec<_>>()
                        .join(","),
                    s.signers.len().to_string(),
                    rollout::describe(&s.terms),
                ]);
            }
            if list.is_empty() {
                outln!("no releases of runmode {runmode} on this grid")?;
            } else {
                t.print()?;
            }
            Ok(())
        }
    }
}

fn short(sha: &str) -> String {
    sha.chars().take(12).collect()
}

fn load(path: &Path) -> anyhow::Result<Identity> {
    zos_client::keyfile::load_identity(path)
        .with_context(|| format!("cannot read release key {}", path.display()))
}

fn keygen(out: &Path, g: &Global) -> anyhow::Result<()> {
    if out.exists() {
        bail!(
            "{} exists: a release key is never overwritten; choose another file",
            out.display()
        );
    }
    let id = Identity::generate()?;
    zos_client::keyfile::save_identity(out, &id, 0o600)?;
    if g.structured() {
        return output::json(&serde_json::json!({
            "file": out, "public_key": id.public_key()
        }));
    }
    outln!(
        "release key {} written to {}",
        id.public_key(),
        out.display()
    )?;
    Ok(())
}

#[allow(clippy::too_many_arguments)]
async fn publish(
    grid: &ReleaseClient,
    g: &Global,
    runmode: RunMode,
    kernel: &Path,
    initramfs: &Path,
    flists: &[FlistSpec],
    debug: Option<&FlistSpec>,
    keys: &[Identity],
    version: Option<String>,
    terms: &zos_types::release::terms::Terms,
) -> anyhow::Result<()> {
    let published = grid
        .publish_with(
            &Publish {
                runmode,
                kernel,
                initramfs,
                flists,
                debug,
                keys,
                version,
            },
            terms,
            &|u| match u {
                Upload::Present { what, sha256, size } => {
                    eprintln!("{what} {sha256} ({size} bytes) is on the grid already")
                }
                Upload::Uploaded { what, sha256, size } => {
                    eprintln!("{what} {sha256} ({size} bytes) uploaded")
                }
            },
        )
        .await
        .map_err(|e| unreachable_grid(grid, e))?;
    if g.structured() {
        return output::json(&published);
    }
    if published.published {
        outln!(
            "release {} of runmode {runmode} published",
            published.version
        )?;
    } else {
        outln!(
            "release {} of runmode {runmode} was published already",
            published.version
        )?;
    }
    Ok(())
}

/// Says which grid could not be reached, when that is the failure.
fn unreachable_grid(grid: &ReleaseClient, e: PublishError) -> anyhow::Error {
    match e {
        PublishError::Client(c @ ClientError::Transport { .. }) => {
            anyhow::Error::new(c).context(format!("cannot reach the grid at {}", grid.base()))
        }
        e => e.into(),
    }
}
