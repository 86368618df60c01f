//! What a node checks before it upgrades to a release: the signatures against its current
//! [`Root`], the runmode of that root, the expiry, that the release is newer than the version
//! it runs (no downgrade, no replay of an older signed release) and that it may upgrade from
//! that version (`min_from`).

use super::root::Root;
use super::terms::Terms;
use super::{Release, ReleaseError, SignedRelease, Version};

impl SignedRelease {
    /// The release and its terms when a node of `root`'s runmode, running `current` (`None`:
    /// a node that runs nothing yet), may upgrade to it at `now` (Unix seconds).
    pub fn verify_upgrade(
        &self,
        root: &Root,
        current: Option<Version>,
        now: i64,
    ) -> Result<(Release, Terms), ReleaseError> {
        let (release, terms) = self.verify_at(&root.release_keys(), root.runmode, now)?;
        let Some(current) = current else {
            return Ok((release, terms));
        };
        let version = release.version()?;
        if version <= current {
            return Err(ReleaseError::NotNewer { version, current });
        }
        if let Some(min_from) = terms.min_from()?
            && current < min_from
        {
            return Err(ReleaseError::TooOld {
                version,
                min_from,
                current,
            });
        }
        Ok((release, terms))
    }
}

#[cfg(test)]
mod tests {
    use super::super::rollout::Policy;
    use super::super::{Artifact, ReleaseSignature, RunMode, RuntimeFlist};
    use super::*;
    use crate::Identity;

    const NOW: i64 = 1_800_000_000;

    fn hash(c: char) -> String {
        std::iter::repeat_n(c, 64).collect()
    }

    fn release(version: &str, runmode: RunMode) -> Release {
        Release {
            version: version.into(),
            runmode,
            created: NOW - 100,
            kernel: Artifact {
                sha256: hash('a'),
                size: 1,
            },
            initramfs: Artifact {
                sha256: hash('b'),
                size: 1,
            },
            flists: vec![RuntimeFlist {
                name: "zos".into(),
                sha256: hash('c'),
                size: 1,
            }],
            debug: None,
        }
    }

    fn terms() -> Terms {
        Terms {
            min_from: Some("1.1.0".into()),
            expires: Some(NOW + 100),
            rollout: Some(Policy::default()),
        }
    }

    struct Keys {
        ids: Vec<Identity>,
        root: Root,
    }

    /// A prod root of three keys, two of which must sign.
    fn keys() -> Keys {
        let ids: Vec<Identity> = (0..3).map(|_| Identity::generate().unwrap()).collect();
        let root = Root {
            runmode: RunMode::Prod,
            version: 1,
            keys: ids.iter().map(|i| i.public_key()).collect(),
            threshold: 2,
        };
        Keys { ids, root }
    }

    fn signed(k: &Keys, version: &str, signers: &[usize]) -> SignedRelease {
        let by: Vec<&Identity> = signers.iter().map(|i| &k.ids[*i]).collect();
        release(version, RunMode::Prod)
            .sign_with(&terms(), &by)
            .unwrap()
    }

    fn current() -> Option<Version> {
        Some(Version(1, 2, 0))
    }

    #[test]
    fn a_newer_release_signed_by_the_threshold_is_taken() {
        let k = keys();
        let (r, t) = signed(&k, "1.3.0", &[0, 2])
            .verify_upgrade(&k.root, current(), NOW)
            .unwrap();
        assert_eq!((r.version.as_str(), t), ("1.3.0", terms()));
        // A node that runs nothing yet takes it too.
        assert!(
            signed(&k, "1.3.0", &[0, 1])
                .verify_upgrade(&k.root, None, NOW)
                .is_ok()
        );
    }

    fn refusal(s: &SignedRelease, k: &Keys) -> (ReleaseError, String) {
        let e = s.verify_upgrade(&k.root, current(), NOW).unwrap_err();
        let msg = e.to_string();
        (e, msg)
    }

    #[test]
    fn a_release_without_signatures_is_refused() {
        let k = keys();
        let mut s = signed(&k, "1.3.0", &[0, 1]);
        s.signatures.clear();
        let (e, msg) = refusal(&s, &k);
        assert!(matches!(
            e,
            ReleaseError::NotTrusted {
                good: 0,
                threshold: 2,
                ..
            }
        ));
        assert!(
            msg.contains("signed by 0 trusted release key(s), 2 needed"),
            "{msg}"
        );
    }

    #[test]
    fn a_bad_signature_is_refused() {
        let k = keys();
        let mut s = signed(&k, "1.3.0", &[0, 1]);
        s.signatures[1].signature = k.ids[1].sign(b"another manifest");
        let (e, _) = refusal(&s, &k);
        assert!(matches!(
            e,
            ReleaseError::NotTrusted {
                good: 1,
                threshold: 2,
                ..
            }
        ));
    }

    #[test]
    fn fewer_signatures_than_the_threshold_are_refused() {
        let k = keys();
        let (e, msg) = refusal(&signed(&k, "1.3.0", &[2]), &k);
        assert!(matches!(
            e,
            ReleaseError::NotTrusted {
                good: 1,
                threshold: 2,
                ..
            }
        ));
        assert!(msg.contains("2 needed"), "{msg}");
    }

    #[test]
    fn one_key_signing_twice_counts_once() {
        let k = keys();
        let mut s = signed(&k, "1.3.0", &[0]);
        let again = ReleaseSignature {
            key: k.ids[0].public_key(),
            signature: s.signatures[0].signature,
        };
        s.signatures.push(again);
        let (e, _) = refusal(&s, &k);
        assert!(matches!(
            e,
            ReleaseError::NotTrusted {
                good: 1,
                threshold: 2,
                ..
            }
        ));
    }

    #[test]
    fn a_key_outside_the_root_does_not_count_and_is_named() {
        let k = keys();
        let stranger = Identity::generate().unwrap();
        let s = release("1.3.0", RunMode::Prod)
            .sign_with(&terms(), &[&k.ids[0], &stranger])
            .unwrap();
        let (_, msg) = refusal(&s, &k);
        assert!(msg.contains(&stranger.public_key().to_string()), "{msg}");
    }

    #[test]
    fn an_expired_release_is_refused() {
        let k = keys();
        let s = signed(&k, "1.3.0", &[0, 1]);
        let e = s.verify_upgrade(&k.root, current(), NOW + 100).unwrap_err();
        assert!(matches!(e, ReleaseError::Expired { .. }), "{e}");
        assert!(e.to_string().contains("expired at"), "{e}");
    }

    #[test]
    fn a_downgrade_is_refused() {
        let k = keys();
        let (e, msg) = refusal(&signed(&k, "1.1.5", &[0, 1]), &k);
        assert_eq!(
            e,
            ReleaseError::NotNewer {
                version: Version(1, 1, 5),
                current: Version(1, 2, 0)
            }
        );
        assert!(msg.contains("a downgrade or the replay"), "{msg}");
    }

    #[test]
    fn the_replay_of_the_release_already_run_is_refused() {
        let k = keys();
        let (e, _) = refusal(&signed(&k, "1.2.0", &[0, 1]), &k);
        assert!(matches!(e, ReleaseError::NotNewer { .. }), "{e}");
    }

    #[test]
    fn a_release_of_another_runmode_is_refused() {
        let k = keys();
        let s = release("1.3.0", RunMode::Dev)
            .sign_with(&terms(), &[&k.ids[0], &k.ids[1]])
            .unwrap();
        let (e, msg) = refusal(&s, &k);
        assert_eq!(
            e,
            ReleaseError::RunMode {
                want: RunMode::Prod,
                got: RunMode::Dev
            }
        );
        assert!(
            msg.contains("for runmode dev, this node runs prod"),
            "{msg}"
        );
    }

    #[test]
    fn a_node_older_than_min_from_is_refused() {
        let k = keys();
        let s = signed(&k, "1.3.0", &[0, 1]);
        let e = s
            .verify_upgrade(&k.root, Some(Version(1, 0, 9)), NOW)
            .unwrap_err();
        assert!(matches!(e, ReleaseError::TooOld { .. }), "{e}");
        assert!(e.to_string().contains("upgrades only from 1.1.0"), "{e}");
    }

    #[test]
    fn after_a_rotation_only_the_new_keys_sign_releases() {
        let k = keys();
        let new: Vec<Identity> = (0..2).map(|_| Identity::generate().unwrap()).collect();
        let r2 = Root {
            runmode: RunMode::Prod,
            version: 2,
            keys: new.iter().map(|i| i.public_key()).collect(),
            threshold: 1,
        };
        let link = r2.sign(&[&k.ids[0], &k.ids[1], &new[0]]).unwrap();
        let root = k.root.walk(&[link]).unwrap();
        let old = signed(&k, "1.3.0", &[0, 1]);
        assert!(matches!(
            old.verify_upgrade(&root, current(), NOW),
            Err(ReleaseError::NotTrusted { good: 0, .. })
        ));
        let fresh = release("1.3.0", RunMode::Prod)
            .sign_with(&terms(), &[&new[1]])
            .unwrap();
        assert!(fresh.verify_upgrade(&root, current(), NOW).is_ok());
    }
}
