//! The rollout of a release across the fleet, as the grid keeps it: what each node reports of
//! its upgrade, where the rollout stands, and when the grid halts it by itself.
//!
//! A node reports its state for a release (`POST /api/v1/nodes/{id}/upgrade`, signed by the
//! node's twin): `pending`, `downloading`, `switching`, `probation`, `committed`, or
//! `rolled_back` with the reason. When more than the policy's `halt_percent` of the open wave's
//! nodes rolled back ([`should_halt`]), the grid halts the rollout, and nodes are pointed back at
//! the release before it.

use std::fmt;

use serde::{Deserialize, Serialize};

use super::rollout::{Policy, Stage};
use super::{ReleaseError, RunMode, SignedRelease, Version};
use crate::{FarmId, NodeId};

/// The longest reason a report or a halt carries.
pub const MAX_REASON: usize = 512;

/// Where a node is in its upgrade to a release.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum UpgradeState {
    /// It knows of the release and will take it.
    Pending,
    /// It fetches and checks the runtime flists (nothing stopped yet).
    Downloading,
    /// zos-init stops the old zosd and starts the new one.
    Switching,
    /// The new version runs and must pass the health gate.
    Probation,
    /// It passed the gate: the node runs this release.
    Committed,
    /// It went back to the previous runtime (the reason says why) and will not retry it.
    RolledBack,
}

impl UpgradeState {
    /// Whether the node is on its way (not waiting, not finished).
    pub fn in_progress(self) -> bool {
        matches!(self, Self::Downloading | Self::Switching | Self::Probation)
    }
}

impl fmt::Display for UpgradeState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Pending => "pending",
            Self::Downloading => "downloading",
            Self::Switching => "switching",
            Self::Probation => "on probation",
            Self::Committed => "committed",
            Self::RolledBack => "rolled back",
        })
    }
}

/// What a node reports.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpgradeReport {
    pub runmode: RunMode,
    pub version: String,
    pub state: UpgradeState,
    /// Why (required for `rolled_back`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// Why a report or a rollout change is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FleetError {
    #[error(transparent)]
    Version(#[from] ReleaseError),
    #[error("a rolled_back report carries the reason")]
    NoReason,
    #[error("a reason is 1 to {MAX_REASON} bytes of printable text")]
    BadReason,
    #[error("a rollout change names at least one of wave, safe, halt, resume")]
    Empty,
    #[error("a rollout change halts or resumes, not both")]
    HaltAndResume,
    #[error("a release marked safe stays safe: halt the rollout instead")]
    Unsafe,
}

fn check_reason(r: &str) -> Result<(), FleetError> {
    if r.trim().is_empty() || r.len() > MAX_REASON || r.chars().any(char::is_control) {
        return Err(FleetError::BadReason);
    }
    Ok(())
}

impl UpgradeReport {
    pub fn validate(&self) -> Result<Version, FleetError> {
        let v = self.version.parse()?;
        match (&self.reason, self.state) {
            (None, UpgradeState::RolledBack) => return Err(FleetError::NoReason),
            (Some(r), _) => check_reason(r)?,
            (None, _) => {}
        }
        Ok(v)
    }
}

/// A node's last report for a release, as the grid keeps it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeReport {
    pub state: UpgradeState,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Grid time of the report, Unix seconds.
    pub at: i64,
}

/// Why and when a rollout was halted.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Halt {
    pub reason: String,
    /// `grid` when the grid halted it by itself, else the release key that did.
    pub by: String,
    pub at: i64,
}

/// A change to a rollout, sent signed by a release key (`PUT
/// /releases/{runmode}/{version}/rollout`).
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RolloutChange {
    /// Open this wave (an index into the policy's waves).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wave: Option<usize>,
    /// Mark the release safe for farms outside the test farms (`true` only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub safe: Option<bool>,
    /// Halt the rollout, with the reason.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub halt: Option<String>,
    /// Lift a halt.
    #[serde(default)]
    pub resume: bool,
}

impl RolloutChange {
    pub fn validate(&self) -> Result<(), FleetError> {
        if self.wave.is_none() && self.safe.is_none() && self.halt.is_none() && !self.resume {
            return Err(FleetError::Empty);
        }
        if self.halt.is_some() && self.resume {
            return Err(FleetError::HaltAndResume);
        }
        if self.safe == Some(false) {
            return Err(FleetError::Unsafe);
        }
        if let Some(r) = &self.halt {
            check_reason(r)?;
        }
        Ok(())
    }
}

/// One node in a rollout's status.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeUpgrade {
    pub node: NodeId,
    pub farm: FarmId,
    /// The newest release of the runmode it reported committed, if any.
    #[serde(default)]
    pub running: Option<String>,
    /// The version zosd registered with.
    #[serde(default)]
    pub zos_version: String,
    /// Its last report for this release.
    #[serde(default)]
    pub report: Option<NodeReport>,
    /// Whether the rollout's stage lets it take this release, and why.
    pub admitted: bool,
    pub why: String,
}

/// Counts over the nodes the open stage admits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Progress {
    pub admitted: usize,
    /// Admitted, no report yet (or `pending`).
    pub waiting: usize,
    pub in_progress: usize,
    pub committed: usize,
    pub rolled_back: usize,
}

/// `GET /releases/{runmode}/status`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RolloutStatus {
    pub runmode: RunMode,
    pub version: String,
    pub policy: Policy,
    pub stage: Stage,
    /// The share of the nodes outside the test farms the stage admits.
    pub percent: u8,
    #[serde(default)]
    pub halted: Option<Halt>,
    pub progress: Progress,
    pub nodes: Vec<NodeUpgrade>,
}

/// `GET /releases/{runmode}/for-node/{id}`: the release the node should run, and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ForNode {
    pub version: String,
    pub why: String,
    pub release: SignedRelease,
}

/// Whether `rolled_back` of the `admitted` nodes of the open wave is more than the policy's
/// share: the grid then halts the rollout.
pub fn should_halt(policy: &Policy, admitted: usize, rolled_back: usize) -> bool {
    admitted > 0 && rolled_back * 100 > usize::from(policy.halt_percent) * admitted
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn more_than_the_share_halts() {
        let p = Policy::default(); // 20 %
        assert!(!should_halt(&p, 10, 2), "20% is not more than 20%");
        assert!(should_halt(&p, 10, 3));
        assert!(should_halt(&p, 1, 1));
        assert!(!should_halt(&p, 0, 0));
        let strict = Policy {
            halt_percent: 100,
            ..Policy::default()
        };
        assert!(!should_halt(&strict, 4, 4), "nothing is more than all");
    }

    #[test]
    fn reports_and_changes_are_checked() {
        let r = |state, reason: Option<&str>| UpgradeReport {
            runmode: RunMode::Dev,
            version: "1.0.0".into(),
            state,
            reason: reason.map(str::to_string),
        };
        assert!(r(UpgradeState::Committed, None).validate().is_ok());
        assert_eq!(
            r(UpgradeState::RolledBack, None).validate(),
            Err(FleetError::NoReason)
        );
        assert!(
            r(UpgradeState::RolledBack, Some("gate missed"))
                .validate()
                .is_ok()
        );
        assert_eq!(
            r(UpgradeState::RolledBack, Some("a\nb")).validate(),
            Err(FleetError::BadReason)
        );
        let long = "x".repeat(MAX_REASON + 1);
        assert_eq!(
            r(UpgradeState::RolledBack, Some(&long)).validate(),
            Err(FleetError::BadReason)
        );
        let mut bad = r(UpgradeState::Pending, None);
        bad.version = "1.0".into();
        assert!(matches!(bad.validate(), Err(FleetError::Version(_))));
        let json = r#"{"runmode":"dev","version":"1.0.0","state":"rolled_back","reason":"x"}"#;
        let back: UpgradeReport = serde_json::from_str(json).unwrap();
        assert_eq!(back.state, UpgradeState::RolledBack);
        assert!(
            serde_json::from_str::<UpgradeReport>(&json.replace("rolled_back", "lost")).is_err()
        );

        assert_eq!(RolloutChange::default().validate(), Err(FleetError::Empty));
        let both = RolloutChange {
            halt: Some("x".into()),
            resume: true,
            ..Default::default()
        };
        assert_eq!(both.validate(), Err(FleetError::HaltAndResume));
        let unsafe_ = RolloutChange {
            safe: Some(false),
            ..Default::default()
        };
        assert_eq!(unsafe_.validate(), Err(FleetError::Unsafe));
    }
}
