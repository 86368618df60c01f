//! `zos release status | halt | advance`, and the upgrade terms `zos release publish` signs:
//! staged rollouts of a runmode's releases (docs/upgrade.md).

use std::path::PathBuf;

use anyhow::Context;
use clap::{Args, Subcommand};
use zos_client::release::ReleaseClient;
use zos_types::FarmId;
use zos_types::auth::unix_now;
use zos_types::release::fleet::{RolloutChange, RolloutStatus};
use zos_types::release::rollout::{DEFAULT_HALT_PERCENT, Policy};
use zos_types::release::terms::Terms;
use zos_types::release::{RunMode, Version};

use crate::global::{Global, grid_url};
use crate::output::{self, Table, outln};

/// The upgrade terms of a release being published.
#[derive(Debug, Args)]
pub struct TermsArgs {
    /// The oldest version a node may run to take this release.
    #[arg(long, value_name = "X.Y.Z")]
    min_from: Option<Version>,
    /// The release is refused by every node this many days after publishing.
    #[arg(long, value_name = "DAYS")]
    expires_days: Option<u32>,
    /// A farm whose nodes take the release first, before it is safe. Repeat.
    #[arg(long = "test-farm", value_name = "FARM")]
    test_farms: Vec<FarmId>,
    /// A wave: the cumulative percentage of the other nodes it reaches (increasing). Repeat.
    /// Without waves (and without any rollout option) every node takes it at once.
    #[arg(long = "wave", value_name = "PERCENT")]
    waves: Vec<u8>,
    /// Safe from the start: the other farms need not wait for `zos release advance --safe`.
    #[arg(long)]
    safe: bool,
    /// The share (percent) of the open wave's nodes whose rollback halts the rollout.
    #[arg(long, value_name = "PERCENT")]
    halt_percent: Option<u8>,
}

impl TermsArgs {
    pub fn terms(&self) -> anyhow::Result<Terms> {
        let staged = !self.test_farms.is_empty()
            || !self.waves.is_empty()
            || self.safe
            || self.halt_percent.is_some();
        let rollout = staged.then(|| Policy {
            test_farms: self.test_farms.clone(),
            waves: match self.waves.is_empty() {
                true => vec![100],
                false => self.waves.clone(),
            },
            safe: self.safe,
            halt_percent: self.halt_percent.unwrap_or(DEFAULT_HALT_PERCENT),
        });
        if let Some(p) = &rollout {
            p.validate()?;
        }
        Ok(Terms {
            min_from: self.min_from.map(|v| v.to_string()),
            expires: self
                .expires_days
                .map(|d| unix_now() + i64::from(d) * 86_400),
            rollout,
        })
    }
}

/// Upgrade terms in a few words, for `zos release list`.
pub fn describe(t: &Terms) -> String {
    let mut parts = Vec::new();
    if let Some(v) = &t.min_from {
        parts.push(format!("from {v}"));
    }
    if let Some(e) = t.expires {
        parts.push(format!("expires {e}"));
    }
    if let Some(p) = &t.rollout {
        let waves: Vec<String> = p.waves.iter().map(|w| format!("{w}%")).collect();
        parts.push(format!("waves {}", waves.join("/")));
        if !p.test_farms.is_empty() {
            let farms: Vec<String> = p.test_farms.iter().map(|f| f.to_string()).collect();
            parts.push(format!("test farms {}", farms.join(",")));
        }
        if p.safe {
            parts.push("safe".into());
        }
    }
    match parts.is_empty() {
        true => "-".into(),
        false => parts.join(", "),
    }
}

#[derive(Debug, Subcommand)]
pub enum RolloutCmd {
    /// Each node's version and upgrade state, and the open wave's progress.
    Status {
        #[arg(long)]
        runmode: RunMode,
        /// The release (default: the current one).
        #[arg(long, value_name = "X.Y.Z")]
        release_version: Option<Version>,
    },
    /// Stop a rollout: nodes that did not commit it are pointed at the release before.
    Halt {
        #[arg(long)]
        runmode: RunMode,
        #[arg(long, value_name = "X.Y.Z")]
        release_version: Option<Version>,
        /// Why (shown in `zos release status`).
        #[arg(long)]
        reason: String,
        /// A release key of the runmode's current root.
        #[arg(long = "release-key", value_name = "FILE")]
        release_key: PathBuf,
    },
    /// Move a rollout on: open a wave, mark the release safe, or lift a halt.
    Advance {
        #[arg(long)]
        runmode: RunMode,
        #[arg(long, value_name = "X.Y.Z")]
        release_version: Option<Version>,
        /// Open this wave (numbered from 0).
        #[arg(long, conflicts_with = "next")]
        wave: Option<usize>,
        /// Open the wave after the open one.
        #[arg(long)]
        next: bool,
        /// Mark the release safe for farms outside the test farms.
        #[arg(long)]
        safe: bool,
        /// Lift a halt.
        #[arg(long)]
        resume: bool,
        #[arg(long = "release-key", value_name = "FILE")]
        release_key: PathBuf,
    },
}

pub async fn rollout(cmd: RolloutCmd, g: &Global) -> anyhow::Result<()> {
    let grid = ReleaseClient::new(&grid_url(g)?)?;
    let status_of = |runmode: RunMode, v: Option<Version>| {
        let grid = grid.clone();
        async move {
            grid.status(runmode, v)
                .await
                .with_context(|| format!("asking {} for the rollout of {runmode}", grid.base()))
        }
    };
    let status = match cmd {
        RolloutCmd::Status {
            runmode,
            release_version,
        } => status_of(runmode, release_version).await?,
        RolloutCmd::Halt {
            runmode,
            release_version,
            reason,
            release_key,
        } => {
            let change = RolloutChange {
                halt: Some(reason),
                ..Default::default()
            };
            let key = super::load(&release_key)?;
            let v = match release_version {
                Some(v) => v,
                None => status_of(runmode, None).await?.version.parse()?,
            };
            grid.change_rollout(runmode, v, &change, &key).await?
        }
        RolloutCmd::Advance {
            runmode,
            release_version,
            wave,
            next,
            safe,
            resume,
            release_key,
        } => {
            let key = super::load(&release_key)?;
            let now = status_of(runmode, release_version).await?;
            let wave = match next {
                true => Some(now.stage.wave + 1),
                false => wave,
            };
            let change = RolloutChange {
                wave,
                safe: safe.then_some(true),
                halt: None,
                resume,
            };
            change.validate()?;
            grid.change_rollout(runmode, now.version.parse()?, &change, &key)
                .await?
        }
    };
    if g.structured() {
        return output::json(&status);
    }
    print(&status)
}

fn print(s: &RolloutStatus) -> anyhow::Result<()> {
    let p = &s.policy;
    outln!(
        "release {} of runmode {}: wave {} of {} open ({}% of the nodes outside the test farms), {}",
        s.version,
        s.runmode,
        s.stage.wave,
        p.waves.len(),
        s.percent,
        if s.stage.safe { "safe" } else { "not safe yet" }
    )?;
    if !p.test_farms.is_empty() {
        let farms: Vec<String> = p.test_farms.iter().map(|f| f.to_string()).collect();
        outln!("test farms: {}", farms.join(", "))?;
    }
    if let Some(h) = &s.halted {
        outln!("HALTED by {} at {}: {}", h.by, h.at, h.reason)?;
    }
    let pr = &s.progress;
    outln!(
        "{} node(s) admitted: {} committed, {} in progress, {} rolled back, {} waiting (the grid halts above {}% rolled back)",
        pr.admitted,
        pr.committed,
        pr.in_progress,
        pr.rolled_back,
        pr.waiting,
        p.halt_percent
    )?;
    let mut t = Table::new(&[
        "NODE", "FARM", "RELEASE", "ZOSD", "STATE", "REASON", "ADMITTED",
    ]);
    for n in &s.nodes {
        let (state, reason) = match &n.report {
            Some(r) => (r.state.to_string(), r.reason.clone().unwrap_or_default()),
            None => ("-".into(), String::new()),
        };
        t.row(vec![
            n.node.to_string(),
            n.farm.to_string(),
            n.running.clone().unwrap_or_else(|| "-".into()),
            n.zos_version.clone(),
            state,
            reason,
            match n.admitted {
                true => "yes".into(),
                false => format!("no: {}", n.why),
            },
        ]);
    }
    t.print()?;
    Ok(())
}
