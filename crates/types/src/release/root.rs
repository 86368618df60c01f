//! The root of trust of a runmode's releases, rotated the way TUF rotates its root.
//!
//! A [`Root`] names the release keys of one runmode, how many must sign a release (its
//! threshold), and its version. Root 1 is pinned (in the node image, and in the grid's
//! `--release-keys`). A later root is a [`SignedRoot`], accepted by [`Root::rotate`] only when
//! it is for the same runmode, its version is exactly one more, and it is signed by the
//! threshold of the root it replaces *and* by its own threshold: stolen keys below the old
//! threshold cannot make a root, and a root whose new keys cannot sign is never installed.
//! Versions only increase, so an older root replayed is refused. Root signatures are over
//! `"zos-root-v1:" ‖ root JSON`, never mistaken for a release signature.

use std::collections::BTreeSet;

use serde::{Deserialize, Serialize};

use super::{ReleaseKeys, ReleaseSignature, RunMode};
use crate::identity::{Identity, PublicKey};

/// Prefix of every root signature.
pub const ROOT_CONTEXT: &[u8] = b"zos-root-v1:";
/// The largest root text read.
pub const MAX_ROOT_BYTES: usize = 16 * 1024;
/// The most keys a root may name, and the most signatures a signed root may carry.
pub const MAX_ROOT_KEYS: usize = 16;
/// The longest chain of rotations a grid keeps and a node walks.
pub const MAX_CHAIN: usize = 1024;

/// The release keys of a runmode at one version of its root.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Root {
    pub runmode: RunMode,
    /// 1 for the pinned root, one more at each rotation.
    pub version: u64,
    pub keys: Vec<PublicKey>,
    pub threshold: usize,
}

/// A root as published: its exact JSON text and signatures over it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SignedRoot {
    pub root: String,
    pub signatures: Vec<ReleaseSignature>,
}

/// A runmode's roots as a grid serves them: the current one, and the signed rotations from
/// root 1 to it, oldest first (a node walks them from the root it pins).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RootChain {
    pub current: Root,
    pub chain: Vec<SignedRoot>,
}

/// The answer to `PUT /releases/{runmode}/root`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rotated {
    pub runmode: RunMode,
    pub version: u64,
    /// False when the grid had this root already.
    pub rotated: bool,
}

/// Why a root is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RootError {
    #[error("the root is {0} bytes, more than the {MAX_ROOT_BYTES} allowed")]
    TooLarge(usize),
    #[error("the root is not a root: {0}")]
    Malformed(String),
    #[error(
        "a root names 1 to {MAX_ROOT_KEYS} distinct keys and a threshold of 1 to their number, this one {keys} key(s) and threshold {threshold}"
    )]
    BadKeys { threshold: usize, keys: usize },
    #[error("a root carries at most {MAX_ROOT_KEYS} signatures, this one {0}")]
    SignatureCount(usize),
    #[error("the root is for runmode {got}, not {want}")]
    RunMode { want: RunMode, got: RunMode },
    #[error(
        "root version {got} is not newer than root {have}: a rollback or the replay of an older root is refused"
    )]
    Rollback { have: u64, got: u64 },
    #[error("root version {got} does not follow root {have}: roots rotate one version at a time, send root {} first", have + 1)]
    Gap { have: u64, got: u64 },
    #[error(
        "the new root is signed by {good} key(s) of root {version}, whose threshold is {threshold}: a root is rotated only by the threshold of the keys it replaces"
    )]
    NotSignedByOld {
        version: u64,
        good: usize,
        threshold: usize,
    },
    #[error(
        "the new root is signed by {good} of its own keys, its threshold is {threshold}: the new keys must sign it too"
    )]
    NotSignedByNew { good: usize, threshold: usize },
    #[error("the chain of roots is longer than {MAX_CHAIN}")]
    ChainTooLong,
}

/// The bytes a key signs for a root.
pub fn signing_message(root: &str) -> Vec<u8> {
    let mut m = Vec::with_capacity(ROOT_CONTEXT.len() + root.len());
    m.extend_from_slice(ROOT_CONTEXT);
    m.extend_from_slice(root.as_bytes());
    m
}

/// How many distinct keys of `keys` made a good signature over `message`.
fn good_signatures(keys: &[PublicKey], message: &[u8], signatures: &[ReleaseSignature]) -> usize {
    let mut good = BTreeSet::new();
    for s in signatures {
        if keys.contains(&s.key) && s.key.verify(message, &s.signature).is_ok() {
            good.insert(s.key);
        }
    }
    good.len()
}

impl Root {
    /// Root 1 of `runmode`: the pinned keys.
    pub fn initial(runmode: RunMode, keys: &ReleaseKeys) -> Result<Self, RootError> {
        let root = Self {
            runmode,
            version: 1,
            keys: keys.keys.clone(),
            threshold: keys.threshold,
        };
        root.validate()?;
        Ok(root)
    }

    /// The keys releases are checked with under this root.
    pub fn release_keys(&self) -> ReleaseKeys {
        ReleaseKeys {
            keys: self.keys.clone(),
            threshold: self.threshold,
        }
    }

    /// Checks the shape: 1 to 16 distinct keys, a threshold they can reach, a version from 1.
    pub fn validate(&self) -> Result<(), RootError> {
        let distinct: BTreeSet<_> = self.keys.iter().collect();
        let bad = distinct.len() != self.keys.len()
            || self.keys.is_empty()
            || self.keys.len() > MAX_ROOT_KEYS
            || self.threshold == 0
            || self.threshold > self.keys.len();
        if bad {
            return Err(RootError::BadKeys {
                threshold: self.threshold,
                keys: self.keys.len(),
            });
        }
        if self.version == 0 {
            return Err(RootError::Malformed("root versions start at 1".into()));
        }
        Ok(())
    }

    /// Signs this root with each of `ids`.
    pub fn sign(&self, ids: &[&Identity]) -> Result<SignedRoot, RootError> {
        self.validate()?;
        let root = serde_json::to_string(self).map_err(|e| RootError::Malformed(e.to_string()))?;
        let message = signing_message(&root);
        let signatures = ids
            .iter()
            .map(|id| ReleaseSignature {
                key: id.public_key(),
                signature: id.sign(&message),
            })
            .collect();
        Ok(SignedRoot { root, signatures })
    }

    /// The root that replaces this one, when `next` is a valid rotation of it (see the module).
    pub fn rotate(&self, next: &SignedRoot) -> Result<Root, RootError> {
        let new = next.parse()?;
        if new.runmode != self.runmode {
            return Err(RootError::RunMode {
                want: self.runmode,
                got: new.runmode,
            });
        }
        if new.version <= self.version {
            return Err(RootError::Rollback {
                have: self.version,
                got: new.version,
            });
        }
        if new.version != self.version + 1 {
            return Err(RootError::Gap {
                have: self.version,
                got: new.version,
            });
        }
        let message = signing_message(&next.root);
        let by_old = good_signatures(&self.keys, &message, &next.signatures);
        if by_old < self.threshold {
            return Err(RootError::NotSignedByOld {
                version: self.version,
                good: by_old,
                threshold: self.threshold,
            });
        }
        let by_new = good_signatures(&new.keys, &message, &next.signatures);
        if by_new < new.threshold {
            return Err(RootError::NotSignedByNew {
                good: by_new,
                threshold: new.threshold,
            });
        }
        Ok(new)
    }

    /// The root reached from this one through `chain` (oldest first): rotations at or below
    /// this root's version are history it already passed and are skipped, every later one must
    /// rotate the one before.
    pub fn walk(&self, chain: &[SignedRoot]) -> Result<Root, RootError> {
        if chain.len() > MAX_CHAIN {
            return Err(RootError::ChainTooLong);
        }
        let mut current = self.clone();
        for link in chain {
            if link.parse()?.version <= current.version {
                continue;
            }
            current = current.rotate(link)?;
        }
        Ok(current)
    }
}

impl SignedRoot {
    /// The root it carries, checked for size and shape (signatures unchecked).
    pub fn parse(&self) -> Result<Root, RootError> {
        if self.root.len() > MAX_ROOT_BYTES {
            return Err(RootError::TooLarge(self.root.len()));
        }
        if self.signatures.len() > MAX_ROOT_KEYS {
            return Err(RootError::SignatureCount(self.signatures.len()));
        }
        let root: Root =
            serde_json::from_str(&self.root).map_err(|e| RootError::Malformed(e.to_string()))?;
        root.validate()?;
        Ok(root)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids(n: usize) -> Vec<Identity> {
        (0..n).map(|_| Identity::generate().unwrap()).collect()
    }

    fn root(version: u64, keys: &[Identity], threshold: usize) -> Root {
        Root {
            runmode: RunMode::Prod,
            version,
            keys: keys.iter().map(|i| i.public_key()).collect(),
            threshold,
        }
    }

    #[test]
    fn a_root_signed_by_the_old_and_the_new_threshold_replaces_the_old() {
        let (old, new) = (ids(3), ids(2));
        let r1 = root(1, &old, 2);
        let r2 = root(2, &new, 2);
        let signed = r2.sign(&[&old[0], &old[2], &new[0], &new[1]]).unwrap();
        assert_eq!(r1.rotate(&signed).unwrap(), r2);
        // A node pinning root 1 walks the chain; one pinning root 2 skips it.
        assert_eq!(r1.walk(std::slice::from_ref(&signed)).unwrap(), r2);
        assert_eq!(r2.walk(&[signed]).unwrap(), r2);
    }

    #[test]
    fn too_few_old_signatures_are_refused_and_one_key_twice_counts_once() {
        let (old, new) = (ids(3), ids(1));
        let r1 = root(1, &old, 2);
        let signed = root(2, &new, 1).sign(&[&old[0], &old[0], &new[0]]).unwrap();
        let e = r1.rotate(&signed).unwrap_err();
        assert_eq!(
            e,
            RootError::NotSignedByOld {
                version: 1,
                good: 1,
                threshold: 2
            }
        );
        assert!(
            e.to_string().contains("threshold of the keys it replaces"),
            "{e}"
        );
    }

    #[test]
    fn a_root_its_new_keys_did_not_sign_is_refused() {
        let (old, new) = (ids(1), ids(2));
        let signed = root(2, &new, 2).sign(&[&old[0], &new[0]]).unwrap();
        let e = root(1, &old, 1).rotate(&signed).unwrap_err();
        assert_eq!(
            e,
            RootError::NotSignedByNew {
                good: 1,
                threshold: 2
            }
        );
        assert!(e.to_string().contains("new keys must sign"), "{e}");
    }

    #[test]
    fn a_bad_signature_does_not_count() {
        let (old, new) = (ids(1), ids(1));
        let mut signed = root(2, &new, 1).sign(&[&old[0], &new[0]]).unwrap();
        // A signature by the old key over other bytes.
        signed.signatures[0].signature = old[0].sign(b"something else");
        let e = root(1, &old, 1).rotate(&signed).unwrap_err();
        assert!(
            matches!(e, RootError::NotSignedByOld { good: 0, .. }),
            "{e}"
        );
        // No signatures at all.
        signed.signatures.clear();
        let e = root(1, &old, 1).rotate(&signed).unwrap_err();
        assert!(
            matches!(e, RootError::NotSignedByOld { good: 0, .. }),
            "{e}"
        );
    }

    #[test]
    fn versions_only_go_up_one_at_a_time_and_stay_in_their_runmode() {
        let k = ids(1);
        let r2 = root(2, &k, 1);
        let again = root(2, &k, 1).sign(&[&k[0]]).unwrap();
        let e = r2.rotate(&again).unwrap_err();
        assert_eq!(e, RootError::Rollback { have: 2, got: 2 });
        assert!(e.to_string().contains("replay of an older root"), "{e}");
        let older = root(1, &k, 1).sign(&[&k[0]]).unwrap();
        assert_eq!(
            r2.rotate(&older).unwrap_err(),
            RootError::Rollback { have: 2, got: 1 }
        );
        let skip = root(4, &k, 1).sign(&[&k[0]]).unwrap();
        let e = r2.rotate(&skip).unwrap_err();
        assert!(e.to_string().contains("send root 3 first"), "{e}");
        let mut dev = root(3, &k, 1);
        dev.runmode = RunMode::Dev;
        let e = r2.rotate(&dev.sign(&[&k[0]]).unwrap()).unwrap_err();
        assert_eq!(
            e,
            RootError::RunMode {
                want: RunMode::Prod,
                got: RunMode::Dev
            }
        );
    }

    #[test]
    fn malformed_roots_are_refused() {
        let k = ids(2);
        let r1 = root(1, &k, 1);
        let mut dup = root(2, &k, 1);
        dup.keys.push(dup.keys[0]);
        assert!(matches!(dup.validate(), Err(RootError::BadKeys { .. })));
        assert!(matches!(
            root(2, &k, 3).validate(),
            Err(RootError::BadKeys { .. })
        ));
        assert!(root(0, &k, 1).validate().is_err());
        let big = SignedRoot {
            root: " ".repeat(MAX_ROOT_BYTES + 1),
            signatures: vec![],
        };
        assert_eq!(
            r1.rotate(&big),
            Err(RootError::TooLarge(MAX_ROOT_BYTES + 1))
        );
        let junk = SignedRoot {
            root: r#"{"runmode":"prod","version":2,"keys":[],"threshold":1,"x":1}"#.into(),
            signatures: vec![],
        };
        assert!(matches!(r1.rotate(&junk), Err(RootError::Malformed(_))));
        // A release signature is not a root signature.
        let next = root(2, &k, 1);
        let text = serde_json::to_string(&next).unwrap();
        let as_release = SignedRoot {
            signatures: vec![ReleaseSignature {
                key: k[0].public_key(),
                signature: k[0].sign(&super::super::signing_message(&text)),
            }],
            root: text,
        };
        assert!(matches!(
            r1.rotate(&as_release),
            Err(RootError::NotSignedByOld { good: 0, .. })
        ));
    }
}
