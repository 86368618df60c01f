//! Staged rollouts: which nodes a release reaches, and when.
//!
//! A release's [`Policy`] (in its signed manifest) names test farms and waves; the grid keeps
//! the rollout's [`Stage`] (which wave is open, whether the release was marked safe), which the
//! release publishers move forward. A node may take the release when [`eligible`] says so:
//!
//! - a node of a **test farm** takes it at once, whatever the stage;
//! - any other node waits until the release is **safe** (marked in the manifest, or later on the
//!   grid), then takes it when its [`bucket`] is below the open wave's percentage.
//!
//! Waves are cumulative percentages of the nodes outside the test farms (`[10, 30, 100]`: a
//! tenth, then three tenths, then all). A node's bucket is a stable hash of its id alone, the
//! same for every release: `u64::from_be_bytes(SHA-256("zos-rollout-v1:" ‖ decimal id)[0..8]) %
//! 100`. So a node in a 10 % wave is in every larger wave, and the same nodes go first each time
//! (a farmer can tell which of their nodes are early).

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::{FarmId, NodeId};

/// Prefix of the bucket hash.
pub const BUCKET_CONTEXT: &[u8] = b"zos-rollout-v1:";
/// The most waves a policy may have.
pub const MAX_WAVES: usize = 16;
/// The most test farms a policy may name.
pub const MAX_TEST_FARMS: usize = 256;
/// The share of a wave's nodes (percent) whose rollback halts the rollout, unless a policy says.
pub const DEFAULT_HALT_PERCENT: u8 = 20;

fn default_halt() -> u8 {
    DEFAULT_HALT_PERCENT
}

/// How a release rolls out: signed with the release, so the grid cannot change it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Policy {
    /// Farms whose nodes take the release first, before it is safe.
    #[serde(default)]
    pub test_farms: Vec<FarmId>,
    /// Cumulative percentages (1 to 100, increasing) of the other nodes, one per wave.
    pub waves: Vec<u8>,
    /// Safe from the start: the other farms need not wait for the grid to mark it.
    #[serde(default)]
    pub safe: bool,
    /// When more than this share (percent, 1 to 100) of the open wave's nodes roll back, the
    /// grid halts the rollout by itself.
    #[serde(default = "default_halt")]
    pub halt_percent: u8,
}

impl Default for Policy {
    /// The policy of a release that names none: every node at once.
    fn default() -> Self {
        Self {
            test_farms: Vec::new(),
            waves: vec![100],
            safe: true,
            halt_percent: DEFAULT_HALT_PERCENT,
        }
    }
}

/// Where a rollout stands: which wave is open (an index into [`Policy::waves`]) and whether the
/// release is safe for farms outside the test farms.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Stage {
    pub wave: usize,
    pub safe: bool,
}

/// Why a policy is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PolicyError {
    #[error("a rollout has 1 to {MAX_WAVES} waves, this one {0}")]
    WaveCount(usize),
    #[error("rollout waves are increasing percentages from 1 to 100, got {0:?}")]
    Waves(Vec<u8>),
    #[error("a rollout names at most {MAX_TEST_FARMS} test farms, this one {0}")]
    TestFarmCount(usize),
    #[error("test farm {0} is named twice")]
    DuplicateTestFarm(FarmId),
    #[error("halt_percent is 1 to 100, got {0}")]
    HaltPercent(u8),
    #[error("wave {wave} does not exist: the rollout has {waves} wave(s), numbered from 0")]
    NoSuchWave { wave: usize, waves: usize },
}

impl Policy {
    /// Checks the shape: waves, test farms, the halt share.
    pub fn validate(&self) -> Result<(), PolicyError> {
        if self.waves.is_empty() || self.waves.len() > MAX_WAVES {
            return Err(PolicyError::WaveCount(self.waves.len()));
        }
        let in_range = self.waves.iter().all(|w| (1..=100).contains(w));
        let increasing = self.waves.windows(2).all(|p| p[0] < p[1]);
        if !in_range || !increasing {
            return Err(PolicyError::Waves(self.waves.clone()));
        }
        if self.test_farms.len() > MAX_TEST_FARMS {
            return Err(PolicyError::TestFarmCount(self.test_farms.len()));
        }
        let mut seen = std::collections::BTreeSet::new();
        if let Some(f) = self.test_farms.iter().find(|f| !seen.insert(**f)) {
            return Err(PolicyError::DuplicateTestFarm(*f));
        }
        if !(1..=100).contains(&self.halt_percent) {
            return Err(PolicyError::HaltPercent(self.halt_percent));
        }
        Ok(())
    }

    /// The stage a rollout starts at: the first wave, safe when the policy says so.
    pub fn first_stage(&self) -> Stage {
        Stage {
            wave: 0,
            safe: self.safe,
        }
    }

    /// `stage` if its wave exists in this policy.
    pub fn check_stage(&self, stage: Stage) -> Result<Stage, PolicyError> {
        if stage.wave >= self.waves.len() {
            return Err(PolicyError::NoSuchWave {
                wave: stage.wave,
                waves: self.waves.len(),
            });
        }
        Ok(stage)
    }

    /// The share of the other nodes the open wave reaches (0 when the stage is not safe).
    pub fn percent(&self, stage: Stage) -> u8 {
        if !stage.safe {
            return 0;
        }
        let last = self.waves.len().saturating_sub(1);
        self.waves.get(stage.wave.min(last)).copied().unwrap_or(0)
    }
}

/// Why a node may or may not take a release at a stage.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    /// Its farm is a test farm.
    TestFarm,
    /// Its bucket is below the open wave's percentage.
    InWave { bucket: u8, percent: u8 },
    /// Its farm is not a test farm and the release is not safe yet.
    WaitsForSafe,
    /// Its bucket is at or above the open wave's percentage.
    LaterWave { bucket: u8, percent: u8 },
}

impl Admission {
    pub fn admitted(self) -> bool {
        matches!(self, Self::TestFarm | Self::InWave { .. })
    }
}

impl std::fmt::Display for Admission {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::TestFarm => f.write_str("its farm is a test farm"),
            Self::InWave { bucket, percent } => {
                write!(f, "its bucket {bucket} is in the open {percent}% wave")
            }
            Self::WaitsForSafe => {
                f.write_str("its farm is not a test farm and the release is not marked safe yet")
            }
            Self::LaterWave { bucket, percent } => {
                write!(f, "its bucket {bucket} is not in the open {percent}% wave")
            }
        }
    }
}

/// A node's place in every rollout, 0 to 99 (see the module's documentation).
pub fn bucket(node: NodeId) -> u8 {
    let mut h = Sha256::new();
    h.update(BUCKET_CONTEXT);
    h.update(node.to_string().as_bytes());
    let digest = h.finalize();
    let mut first = [0u8; 8];
    first.copy_from_slice(&digest[..8]);
    (u64::from_be_bytes(first) % 100) as u8
}

/// Whether, and why, node `node` of farm `farm` may take a release with `policy` at `stage`.
pub fn admission(policy: &Policy, stage: Stage, node: NodeId, farm: FarmId) -> Admission {
    if policy.test_farms.contains(&farm) {
        return Admission::TestFarm;
    }
    if !stage.safe {
        return Admission::WaitsForSafe;
    }
    let (bucket, percent) = (bucket(node), policy.percent(stage));
    if bucket < percent {
        Admission::InWave { bucket, percent }
    } else {
        Admission::LaterWave { bucket, percent }
    }
}

/// Whether node `node` of farm `farm` may take a release with `policy` at `stage`.
pub fn eligible(policy: &Policy, stage: Stage, node: NodeId, farm: FarmId) -> bool {
    admission(policy, stage, node, farm).admitted()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(waves: &[u8]) -> Policy {
        Policy {
            test_farms: vec![7],
            waves: waves.to_vec(),
            safe: false,
            halt_percent: 20,
        }
    }

    const SAFE: Stage = Stage {
        wave: 0,
        safe: true,
    };

    #[test]
    fn buckets_are_the_documented_hash() {
        // SHA-256("zos-rollout-v1:1"), first 8 bytes big-endian, mod 100.
        let digest = Sha256::digest(b"zos-rollout-v1:1");
        let n = u64::from_be_bytes(digest[..8].try_into().unwrap());
        assert_eq!(bucket(1), (n % 100) as u8);
        // Pinned values: a change of the hash would move every fleet's waves.
        let got: Vec<u8> = (1..=10).map(bucket).collect();
        assert_eq!(got, GOLDEN);
    }

    // Computed independently (Python hashlib) from the documented formula.
    const GOLDEN: [u8; 10] = [7, 9, 36, 22, 36, 74, 88, 73, 6, 11];

    #[test]
    fn a_30_percent_wave_of_10_nodes_takes_exactly_the_nodes_below_30() {
        let p = policy(&[30, 100]);
        let moved: Vec<NodeId> = (1..=10).filter(|n| eligible(&p, SAFE, *n, 1)).collect();
        let expected: Vec<NodeId> = (1..=10).filter(|n| GOLDEN[*n as usize - 1] < 30).collect();
        assert_eq!(moved, expected);
        assert_eq!(moved, EXPECTED_30);
        // The next wave keeps them and adds the rest.
        let all = Stage {
            wave: 1,
            safe: true,
        };
        assert!((1..=10).all(|n| eligible(&p, all, n, 1)));
    }

    const EXPECTED_30: [NodeId; 5] = [1, 2, 4, 9, 10];

    #[test]
    fn test_farms_go_first_and_the_others_wait_for_safe() {
        let p = policy(&[100]);
        let unsafe_stage = p.first_stage();
        assert!(!unsafe_stage.safe);
        for n in 1..=10 {
            assert_eq!(admission(&p, unsafe_stage, n, 7), Admission::TestFarm);
            assert_eq!(admission(&p, unsafe_stage, n, 1), Admission::WaitsForSafe);
            assert!(eligible(&p, SAFE, n, 1), "a 100% wave takes node {n}");
        }
        let msg = Admission::WaitsForSafe.to_string();
        assert!(msg.contains("not marked safe"), "{msg}");
    }

    #[test]
    fn the_default_policy_takes_every_node_at_once() {
        let p = Policy::default();
        p.validate().unwrap();
        assert!((1..=50).all(|n| eligible(&p, p.first_stage(), n, n)));
    }

    #[test]
    fn bad_policies_and_stages_are_refused() {
        let bad = |f: fn(&mut Policy)| {
            let mut p = policy(&[10, 50, 100]);
            f(&mut p);
            p.validate().unwrap_err()
        };
        assert_eq!(bad(|p| p.waves.clear()), PolicyError::WaveCount(0));
        assert!(matches!(
            bad(|p| p.waves = vec![50, 10]),
            PolicyError::Waves(_)
        ));
        assert!(matches!(
            bad(|p| p.waves = vec![0, 10]),
            PolicyError::Waves(_)
        ));
        assert!(matches!(
            bad(|p| p.waves = vec![10, 101]),
            PolicyError::Waves(_)
        ));
        assert!(matches!(
            bad(|p| p.waves = vec![10, 10]),
            PolicyError::Waves(_)
        ));
        assert_eq!(
            bad(|p| p.test_farms = vec![3, 3]),
            PolicyError::DuplicateTestFarm(3)
        );
        assert_eq!(bad(|p| p.halt_percent = 0), PolicyError::HaltPercent(0));
        let p = policy(&[10, 100]);
        let e = p
            .check_stage(Stage {
                wave: 2,
                safe: true,
            })
            .unwrap_err();
        assert!(e.to_string().contains("2 wave(s)"), "{e}");
        let json = r#"{"waves":[100],"extra":1}"#;
        assert!(serde_json::from_str::<Policy>(json).is_err());
        let json = r#"{"waves":[100]}"#;
        let p: Policy = serde_json::from_str(json).unwrap();
        assert_eq!((p.safe, p.halt_percent), (false, 20));
    }
}
