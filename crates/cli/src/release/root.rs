//! `zos release root`: the runmode's root of trust (its release keys and threshold) and its
//! rotation, TUF-style: the next root is signed by the threshold of the current root's keys and
//! by the threshold of its own.

use std::collections::BTreeMap;
use std::path::PathBuf;

use anyhow::Context;
use clap::Subcommand;
use zos_client::release::ReleaseClient;
use zos_types::release::RunMode;
use zos_types::release::root::Root;
use zos_types::{Identity, PublicKey};

use crate::global::{Global, grid_url};
use crate::output::{self, outln};

#[derive(Debug, Subcommand)]
pub enum RootCmd {
    /// The runmode's current root: version, keys, threshold, and how many rotations led to it.
    Show {
        #[arg(long)]
        runmode: RunMode,
    },
    /// Replace the runmode's root by the next version: new keys and threshold, signed by the
    /// current root's keys (`--old-key`, its threshold of them) and the new ones (`--new-key`).
    Rotate {
        #[arg(long)]
        runmode: RunMode,
        /// A key file of the new root; it signs the new root. Repeat.
        #[arg(long = "new-key", value_name = "FILE")]
        new_keys: Vec<PathBuf>,
        /// A public key of the new root that does not sign now (kept offline). Repeat.
        #[arg(long = "new-public", value_name = "KEY")]
        new_public: Vec<PublicKey>,
        /// How many of the new root's keys must sign a release (and the next root).
        #[arg(long)]
        threshold: usize,
        /// A key file of the current root; it signs the new root. Repeat up to its threshold.
        /// The first one also signs the request.
        #[arg(long = "old-key", value_name = "FILE", required = true)]
        old_keys: Vec<PathBuf>,
    },
}

pub async fn root(cmd: RootCmd, g: &Global) -> anyhow::Result<()> {
    let grid = ReleaseClient::new(&grid_url(g)?)?;
    match cmd {
        RootCmd::Show { runmode } => {
            let chain = grid
                .root(runmode)
                .await
                .with_context(|| format!("asking {} for the root of {runmode}", grid.base()))?;
            if g.structured() {
                return output::json(&chain);
            }
            let r = &chain.current;
            outln!(
                "root {} of runmode {runmode}: {} of {} keys sign a release ({} rotation(s) since root 1)",
                r.version,
                r.threshold,
                r.keys.len(),
                chain.chain.len()
            )?;
            for k in &r.keys {
                outln!("  {k}")?;
            }
            Ok(())
        }
        RootCmd::Rotate {
            runmode,
            new_keys,
            new_public,
            threshold,
            old_keys,
        } => {
            let load = |p: &PathBuf| super::load(p);
            let new_ids = new_keys
                .iter()
                .map(load)
                .collect::<anyhow::Result<Vec<_>>>()?;
            let old_ids = old_keys
                .iter()
                .map(load)
                .collect::<anyhow::Result<Vec<_>>>()?;
            let current = grid
                .root(runmode)
                .await
                .with_context(|| format!("asking {} for the root of {runmode}", grid.base()))?
                .current;
            let mut keys: Vec<PublicKey> = new_ids.iter().map(Identity::public_key).collect();
            for k in new_public {
                if !keys.contains(&k) {
                    keys.push(k);
                }
            }
            let next = Root {
                runmode,
                version: current.version + 1,
                keys,
                threshold,
            };
            // Each distinct key signs once, whether it is old, new or both.
            let signers: BTreeMap<PublicKey, &Identity> = old_ids
                .iter()
                .chain(new_ids.iter())
                .map(|i| (i.public_key(), i))
                .collect();
            let signed = next.sign(&signers.values().copied().collect::<Vec<_>>())?;
            // Checked here first, so a refusal names what is missing before anything is sent.
            current.rotate(&signed)?;
            let rotated = grid.put_root(runmode, &signed, &old_ids[0]).await?;
            if g.structured() {
                return output::json(&rotated);
            }
            if rotated.rotated {
                outln!(
                    "root {} of runmode {runmode} installed: releases are now signed by {} of its {} keys; publish a release signed by them",
                    rotated.version,
                    next.threshold,
                    next.keys.len()
                )?;
            } else {
                outln!(
                    "root {} of runmode {runmode} was installed already",
                    rotated.version
                )?;
            }
            Ok(())
        }
    }
}
