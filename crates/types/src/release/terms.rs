//! The upgrade terms a release carries beside what it is made of: the oldest version it can
//! upgrade from, when it expires, and how it rolls out. They are optional fields of the signed
//! manifest (a manifest without them is as before: no minimum, no expiry, every node at once),
//! so they are covered by the same signatures as the release itself.

use serde::{Deserialize, Serialize};

use super::rollout::Policy;
use super::{Artifact, Release, ReleaseError, RunMode, RuntimeFlist, Version};

/// What a release asks of the nodes that take it.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Terms {
    /// The oldest version a node may run to upgrade to this release (`None`: any).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_from: Option<String>,
    /// After this time (Unix seconds) the release is refused (`None`: never).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires: Option<i64>,
    /// How it rolls out (`None`: [`Policy::default`], every node at once).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rollout: Option<Policy>,
}

impl Terms {
    /// Checks the terms against the release they come with.
    pub fn validate(&self, release: &Release) -> Result<(), ReleaseError> {
        let version = release.version()?;
        if let Some(min) = self.min_from()?
            && min >= version
        {
            return Err(ReleaseError::MinFrom {
                min_from: min,
                version,
            });
        }
        if let Some(expires) = self.expires
            && expires <= release.created
        {
            return Err(ReleaseError::ExpiresBeforeCreated {
                expires,
                created: release.created,
            });
        }
        if let Some(p) = &self.rollout {
            p.validate()?;
        }
        Ok(())
    }

    /// The parsed minimum version.
    pub fn min_from(&self) -> Result<Option<Version>, ReleaseError> {
        self.min_from.as_deref().map(str::parse).transpose()
    }

    /// The rollout policy, the default one when the release names none.
    pub fn policy(&self) -> Policy {
        self.rollout.clone().unwrap_or_default()
    }

    /// Refuses the release when it expired at `now` (Unix seconds).
    pub fn check_expiry(&self, version: &str, now: i64) -> Result<(), ReleaseError> {
        match self.expires {
            Some(expires) if now >= expires => Err(ReleaseError::Expired {
                version: version.to_string(),
                expires,
                now,
            }),
            _ => Ok(()),
        }
    }
}

/// The manifest as signed: the release's fields, then the terms' (absent when unset, so a
/// release without terms signs the same bytes as before they existed).
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Wire {
    version: String,
    runmode: RunMode,
    created: i64,
    kernel: Artifact,
    initramfs: Artifact,
    flists: Vec<RuntimeFlist>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    debug: Option<RuntimeFlist>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    min_from: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    expires: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    rollout: Option<Policy>,
}

/// The manifest text of `release` with `terms`.
pub fn encode(release: &Release, terms: &Terms) -> Result<String, ReleaseError> {
    let r = release.clone();
    let t = terms.clone();
    let wire = Wire {
        version: r.version,
        runmode: r.runmode,
        created: r.created,
        kernel: r.kernel,
        initramfs: r.initramfs,
        flists: r.flists,
        debug: r.debug,
        min_from: t.min_from,
        expires: t.expires,
        rollout: t.rollout,
    };
    serde_json::to_string(&wire).map_err(|e| ReleaseError::Malformed(e.to_string()))
}

/// Parses and validates a manifest's text.
pub fn decode(manifest: &str) -> Result<(Release, Terms), ReleaseError> {
    let w: Wire =
        serde_json::from_str(manifest).map_err(|e| ReleaseError::Malformed(e.to_string()))?;
    let release = Release {
        version: w.version,
        runmode: w.runmode,
        created: w.created,
        kernel: w.kernel,
        initramfs: w.initramfs,
        flists: w.flists,
        debug: w.debug,
    };
    let terms = Terms {
        min_from: w.min_from,
        expires: w.expires,
        rollout: w.rollout,
    };
    release.validate()?;
    terms.validate(&release)?;
    Ok((release, terms))
}
