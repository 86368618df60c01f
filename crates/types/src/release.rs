//! Releases of the node OS: what a node boots and runs, signed by the release keys.
//!
//! A release names, by content hash, the kernel and initramfs the grid's boot service hands to
//! a booting node, and the runtime flists `zos-init` mounts once the node is up (zosd and the
//! tools it runs). The manifest is JSON; a [`SignedRelease`] carries its exact bytes as a string
//! beside the signatures over them, so nothing depends on how JSON is re-encoded.
//!
//! Who trusts what: the grid serves releases but cannot forge one. Every node image pins the
//! release keys and a threshold ([`ReleaseKeys`]); `zos-init` accepts a release only when that
//! many distinct pinned keys signed `"zos-release-v1:" ‖ manifest bytes`, and then checks each
//! runtime flist against the hash the manifest names before mounting it.
//!
//! A manifest may also carry upgrade [`terms::Terms`]: the oldest version it upgrades from, an
//! expiry, and a [`rollout::Policy`] (test farms, waves, `safe`).

pub mod channel;
pub mod fleet;
pub mod rollout;
pub mod root;
pub mod terms;
mod upgrade;

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::identity::{Identity, PublicKey, Signature};

/// Prefix of every release signature, so it can never be mistaken for another signed object.
pub const SIGNING_CONTEXT: &[u8] = b"zos-release-v1:";
/// The largest manifest a node reads (a release lists a handful of flists).
pub const MAX_MANIFEST_BYTES: usize = 64 * 1024;
/// The most runtime flists one release may list.
pub const MAX_FLISTS: usize = 64;
/// The most signatures one release may carry.
pub const MAX_SIGNATURES: usize = 16;

/// Which grid a node belongs to; each runmode has its own releases.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, PartialOrd, Ord)]
pub enum RunMode {
    Dev,
    Qa,
    Test,
    #[default]
    Prod,
}

impl RunMode {
    pub const ALL: [RunMode; 4] = [Self::Dev, Self::Qa, Self::Test, Self::Prod];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Dev => "dev",
            Self::Qa => "qa",
            Self::Test => "test",
            Self::Prod => "prod",
        }
    }
}

/// A runmode name that is none of `dev`, `qa`, `test`, `prod` (or their long forms).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("runmode {0:?} is not one of dev, qa, test, prod")]
pub struct UnknownRunMode(pub String);

impl FromStr for RunMode {
    type Err = UnknownRunMode;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "dev" | "development" => Ok(Self::Dev),
            "qa" => Ok(Self::Qa),
            "test" | "testing" => Ok(Self::Test),
            "prod" | "production" => Ok(Self::Prod),
            other => Err(UnknownRunMode(other.to_string())),
        }
    }
}

impl fmt::Display for RunMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Serialize for RunMode {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for RunMode {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// A file named by its SHA-256 (64 lowercase hex digits) and size in bytes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Artifact {
    pub sha256: String,
    pub size: u64,
}

/// A runtime flist of a release: its hub name (for people) and the SHA-256 of its `.fl` file
/// (what the node fetches and checks, `GET /hub/flists/by-hash/{sha256}` on the grid).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuntimeFlist {
    /// Short name, like `zos-runtime`; unique in the release; `[a-z0-9-]`, at most 64.
    pub name: String,
    pub sha256: String,
    pub size: u64,
}

/// What a release is made of.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Release {
    /// Semantic version, like `1.4.0` (compared as numbers, major.minor.patch).
    pub version: String,
    pub runmode: RunMode,
    /// When it was made, Unix seconds.
    pub created: i64,
    pub kernel: Artifact,
    pub initramfs: Artifact,
    pub flists: Vec<RuntimeFlist>,
    /// The debug flist (a console shell, busybox), for runmode `dev` only: zos-init mounts it,
    /// checked like the runtime flists, only when booted with `zos-debug` on `dev`. It is not a
    /// runtime flist (never on `/usr`, nothing of it runs otherwise). Absent from the manifest
    /// when unset, so releases without one sign the same bytes as before it existed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub debug: Option<RuntimeFlist>,
}

/// A release as published and served: the manifest's exact JSON text and signatures over it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SignedRelease {
    /// The [`Release`] as JSON text; the signatures cover exactly these bytes.
    pub manifest: String,
    pub signatures: Vec<ReleaseSignature>,
}

/// One release key's signature.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReleaseSignature {
    pub key: PublicKey,
    pub signature: Signature,
}

/// The keys a node image (or a grid) trusts for releases, and how many must sign.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReleaseKeys {
    pub keys: Vec<PublicKey>,
    pub threshold: usize,
}

/// Why a release is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReleaseError {
    #[error("the manifest is {0} bytes, more than the {MAX_MANIFEST_BYTES} allowed")]
    TooLarge(usize),
    #[error("the manifest is not a release: {0}")]
    Malformed(String),
    #[error("version {0:?} is not a version like 1.4.0")]
    Version(String),
    #[error("{what} hash {hash:?} is not 64 lowercase hex digits")]
    Hash { what: String, hash: String },
    #[error("runtime flist name {0:?} must be 1 to 64 of a-z, 0-9 and '-'")]
    FlistName(String),
    #[error("runtime flist {0:?} is listed twice")]
    DuplicateFlist(String),
    #[error(
        "a release of runmode {0} carries a debug flist: only runmode dev releases may (a debug \
         shell has no place on other grids); publish it without one"
    )]
    DebugFlist(RunMode),
    #[error("a release lists 1 to {MAX_FLISTS} runtime flists, this one {0}")]
    FlistCount(usize),
    #[error("a release carries at most {MAX_SIGNATURES} signatures, this one {0}")]
    SignatureCount(usize),
    #[error("the release is for runmode {got}, this node runs {want}")]
    RunMode { want: RunMode, got: RunMode },
    #[error(
        "the release is signed by {good} trusted release key(s), {threshold} needed{}",
        if unknown.is_empty() { String::new() } else { format!("; not trusted: {}", unknown.join(", ")) }
    )]
    NotTrusted {
        good: usize,
        threshold: usize,
        unknown: Vec<String>,
    },
    #[error("the trusted release keys are unusable: threshold {threshold} of {keys} keys")]
    BadKeys { threshold: usize, keys: usize },
    #[error("rollout policy: {0}")]
    Rollout(#[from] rollout::PolicyError),
    #[error("min_from {min_from} must be older than the release's own version {version}")]
    MinFrom { min_from: Version, version: Version },
    #[error("the release expires at {expires}, not after it was created at {created}")]
    ExpiresBeforeCreated { expires: i64, created: i64 },
    #[error(
        "release {version} expired at {expires} (Unix seconds, now {now}): refused; its publishers must publish a new release"
    )]
    Expired {
        version: String,
        expires: i64,
        now: i64,
    },
    #[error(
        "release {version} is not newer than {current}, the version already known: a downgrade or the replay of an older release is refused"
    )]
    NotNewer { version: Version, current: Version },
    #[error(
        "release {version} upgrades only from {min_from} or later, this node runs {current}: take a release in between first"
    )]
    TooOld {
        version: Version,
        min_from: Version,
        current: Version,
    },
}

/// A release version, compared as numbers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Version(pub u64, pub u64, pub u64);

impl FromStr for Version {
    type Err = ReleaseError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || ReleaseError::Version(s.to_string());
        let mut parts = s.split('.');
        let mut next = || -> Result<u64, ReleaseError> {
            let p = parts.next().ok_or_else(bad)?;
            if p.is_empty() || p.len() > 9 || !p.bytes().all(|b| b.is_ascii_digit()) {
                return Err(bad());
            }
            p.parse().map_err(|_| bad())
        };
        let v = Version(next()?, next()?, next()?);
        if parts.next().is_some() {
            return Err(bad());
        }
        Ok(v)
    }
}

impl fmt::Display for Version {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}.{}", self.0, self.1, self.2)
    }
}

/// SHA-256 of some bytes, as releases write it (lower-case hex).
pub fn sha256_hex(data: &[u8]) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(data))
}

/// Whether `s` is a SHA-256 as releases write it.
pub fn is_sha256_hex(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

fn check_hash(what: &str, hash: &str) -> Result<(), ReleaseError> {
    if is_sha256_hex(hash) {
        Ok(())
    } else {
        Err(ReleaseError::Hash {
            what: what.to_string(),
            hash: hash.chars().take(80).collect(),
        })
    }
}

impl Release {
    /// Checks the manifest's shape: version, hashes, flist names and counts.
    pub fn validate(&self) -> Result<(), ReleaseError> {
        self.version.parse::<Version>()?;
        check_hash("kernel", &self.kernel.sha256)?;
        check_hash("initramfs", &self.initramfs.sha256)?;
        if self.flists.is_empty() || self.flists.len() > MAX_FLISTS {
            return Err(ReleaseError::FlistCount(self.flists.len()));
        }
        let mut names = std::collections::BTreeSet::new();
        for f in &self.flists {
            let ok_name = !f.name.is_empty()
                && f.name.len() <= 64
                && f.name
                    .bytes()
                    .all(|b| matches!(b, b'a'..=b'z' | b'0'..=b'9' | b'-'));
            if !ok_name {
                return Err(ReleaseError::FlistName(f.name.chars().take(80).collect()));
            }
            if !names.insert(f.name.as_str()) {
                return Err(ReleaseError::DuplicateFlist(f.name.clone()));
            }
            check_hash(&format!("runtime flist {}", f.name), &f.sha256)?;
        }
        if let Some(d) = &self.debug {
            if self.runmode != RunMode::Dev {
                return Err(ReleaseError::DebugFlist(self.runmode));
            }
            check_hash("the debug flist", &d.sha256)?;
        }
        Ok(())
    }

    /// The parsed version (valid once [`Release::validate`] passed).
    pub fn version(&self) -> Result<Version, ReleaseError> {
        self.version.parse()
    }

    /// Signs the manifest with each of `keys`, with no upgrade terms.
    pub fn sign(&self, keys: &[&Identity]) -> Result<SignedRelease, ReleaseError> {
        self.sign_with(&terms::Terms::default(), keys)
    }

    /// Signs the manifest, with upgrade `terms`, with each of `keys`.
    pub fn sign_with(
        &self,
        terms: &terms::Terms,
        keys: &[&Identity],
    ) -> Result<SignedRelease, ReleaseError> {
        self.validate()?;
        terms.validate(self)?;
        let manifest = terms::encode(self, terms)?;
        let message = signing_message(&manifest);
        let signatures = keys
            .iter()
            .map(|id| ReleaseSignature {
                key: id.public_key(),
                signature: id.sign(&message),
            })
            .collect();
        Ok(SignedRelease {
            manifest,
            signatures,
        })
    }
}

/// The bytes a release key signs.
pub fn signing_message(manifest: &str) -> Vec<u8> {
    let mut m = Vec::with_capacity(SIGNING_CONTEXT.len() + manifest.len());
    m.extend_from_slice(SIGNING_CONTEXT);
    m.extend_from_slice(manifest.as_bytes());
    m
}

impl ReleaseKeys {
    /// Checks the key set itself: a threshold of at least one and at most the number of keys.
    pub fn validate(&self) -> Result<(), ReleaseError> {
        let distinct: std::collections::BTreeSet<_> = self.keys.iter().collect();
        if self.threshold == 0 || self.threshold > distinct.len() {
            return Err(ReleaseError::BadKeys {
                threshold: self.threshold,
                keys: distinct.len(),
            });
        }
        Ok(())
    }
}

impl SignedRelease {
    /// Verifies the signatures against `trusted`, then parses and validates the manifest.
    /// Signatures by keys not in `trusted`, bad signatures and repeated keys do not count.
    /// The upgrade terms are checked for shape but not applied (see [`Self::verify_for`]).
    pub fn verify(&self, trusted: &ReleaseKeys) -> Result<Release, ReleaseError> {
        self.verify_terms(trusted).map(|(release, _)| release)
    }

    /// [`Self::verify`], answering the upgrade terms too.
    pub fn verify_terms(
        &self,
        trusted: &ReleaseKeys,
    ) -> Result<(Release, terms::Terms), ReleaseError> {
        trusted.validate()?;
        if self.manifest.len() > MAX_MANIFEST_BYTES {
            return Err(ReleaseError::TooLarge(self.manifest.len()));
        }
        if self.signatures.len() > MAX_SIGNATURES {
            return Err(ReleaseError::SignatureCount(self.signatures.len()));
        }
        let message = signing_message(&self.manifest);
        let mut good = std::collections::BTreeSet::new();
        let mut unknown = Vec::new();
        for s in &self.signatures {
            if !trusted.keys.contains(&s.key) {
                unknown.push(s.key.to_string());
            } else if s.key.verify(&message, &s.signature).is_ok() {
                good.insert(s.key);
            }
        }
        if good.len() < trusted.threshold {
            return Err(ReleaseError::NotTrusted {
                good: good.len(),
                threshold: trusted.threshold,
                unknown,
            });
        }
        terms::decode(&self.manifest)
    }

    /// [`SignedRelease::verify`], and the release must be for `runmode` and not expired by the
    /// system clock (which zos-init sets from the grid before it fetches a release).
    pub fn verify_for(
        &self,
        trusted: &ReleaseKeys,
        runmode: RunMode,
    ) -> Result<Release, ReleaseError> {
        let now = crate::auth::unix_now();
        self.verify_at(trusted, runmode, now).map(|(r, _)| r)
    }

    /// Signatures, runmode and expiry at `now` (Unix seconds).
    pub fn verify_at(
        &self,
        trusted: &ReleaseKeys,
        runmode: RunMode,
        now: i64,
    ) -> Result<(Release, terms::Terms), ReleaseError> {
        let (release, terms) = self.verify_terms(trusted)?;
        if release.runmode != runmode {
            return Err(ReleaseError::RunMode {
                want: runmode,
                got: release.runmode,
            });
        }
        terms.check_expiry(&release.version, now)?;
        Ok((release, terms))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hash(c: char) -> String {
        std::iter::repeat_n(c, 64).collect()
    }

    fn release() -> Release {
        Release {
            version: "1.2.3".into(),
            runmode: RunMode::Dev,
            created: 1_700_000_000,
            kernel: Artifact {
                sha256: hash('a'),
                size: 10,
            },
            initramfs: Artifact {
                sha256: hash('b'),
                size: 20,
            },
            flists: vec![RuntimeFlist {
                name: "zos-runtime".into(),
                sha256: hash('c'),
                size: 30,
            }],
            debug: None,
        }
    }

    fn keys(ids: &[&Identity], threshold: usize) -> ReleaseKeys {
        ReleaseKeys {
            keys: ids.iter().map(|i| i.public_key()).collect(),
            threshold,
        }
    }

    #[test]
    fn a_debug_flist_is_for_dev_releases_only_and_absent_from_manifests_without_one() {
        let a = Identity::generate().unwrap();
        // Without one, the manifest has no `debug` key (older nodes read it as before).
        let plain = release().sign(&[&a]).unwrap();
        assert!(!plain.manifest.contains("debug"), "{}", plain.manifest);
        let mut r = release();
        r.debug = Some(RuntimeFlist {
            name: "debug".into(),
            sha256: "e".repeat(64),
            size: 5,
        });
        let signed = r.sign(&[&a]).unwrap();
        assert_eq!(signed.verify(&keys(&[&a], 1)).unwrap().debug, r.debug);
        for mode in [RunMode::Qa, RunMode::Test, RunMode::Prod] {
            let mut other = r.clone();
            other.runmode = mode;
            let e = other.sign(&[&a]).unwrap_err().to_string();
            assert!(
                e.contains(&format!("runmode {mode} carries a debug flist")),
                "{e}"
            );
        }
        let mut bad = r.clone();
        bad.debug.as_mut().unwrap().sha256 = "x".into();
        assert!(bad.validate().is_err());
    }

    #[test]
    fn a_release_signed_by_enough_trusted_keys_verifies() {
        let (a, b) = (Identity::generate().unwrap(), Identity::generate().unwrap());
        let signed = release().sign(&[&a, &b]).unwrap();
        let json = serde_json::to_string(&signed).unwrap();
        let back: SignedRelease = serde_json::from_str(&json).unwrap();
        assert_eq!(back.verify(&keys(&[&a, &b], 2)).unwrap(), release());
        assert_eq!(
            back.verify_for(&keys(&[&a], 1), RunMode::Dev).unwrap(),
            release()
        );
    }

    #[test]
    fn unknown_keys_repeated_keys_and_tampered_manifests_do_not_count() {
        let (a, b, c) = (
            Identity::generate().unwrap(),
            Identity::generate().unwrap(),
            Identity::generate().unwrap(),
        );
        let trusted = keys(&[&a, &b], 2);
        // One trusted key twice is one signature.
        let twice = release().sign(&[&a, &a]).unwrap();
        assert!(matches!(
            twice.verify(&trusted),
            Err(ReleaseError::NotTrusted { good: 1, .. })
        ));
        // An untrusted key is named.
        let other = release().sign(&[&a, &c]).unwrap();
        let err = other.verify(&trusted).unwrap_err();
        assert!(
            err.to_string().contains(&c.public_key().to_string()),
            "{err}"
        );
        // A changed manifest breaks every signature.
        let mut tampered = release().sign(&[&a, &b]).unwrap();
        tampered.manifest = tampered.manifest.replace("1.2.3", "9.9.9");
        assert!(matches!(
            tampered.verify(&trusted),
            Err(ReleaseError::NotTrusted { good: 0, .. })
        ));
    }

    #[test]
    fn wrong_runmode_and_bad_shapes_are_refused() {
        let a = Identity::generate().unwrap();
        let signed = release().sign(&[&a]).unwrap();
        assert!(matches!(
            signed.verify_for(&keys(&[&a], 1), RunMode::Prod),
            Err(ReleaseError::RunMode { .. })
        ));
        let mut r = release();
        r.version = "1.2".into();
        assert!(matches!(r.validate(), Err(ReleaseError::Version(_))));
        let mut r = release();
        r.kernel.sha256 = hash('A');
        assert!(matches!(r.validate(), Err(ReleaseError::Hash { .. })));
        let mut r = release();
        r.flists.push(r.flists[0].clone());
        assert!(matches!(r.validate(), Err(ReleaseError::DuplicateFlist(_))));
        let mut r = release();
        r.flists[0].name = "../etc".into();
        assert!(matches!(r.validate(), Err(ReleaseError::FlistName(_))));
        let mut r = release();
        r.flists.clear();
        assert!(matches!(r.validate(), Err(ReleaseError::FlistCount(0))));
        assert!(matches!(
            keys(&[&a], 2).validate(),
            Err(ReleaseError::BadKeys { .. })
        ));
        let unknown_field = r#"{"manifest":"{}","signatures":[],"extra":1}"#;
        assert!(serde_json::from_str::<SignedRelease>(unknown_field).is_err());
    }

    fn terms() -> terms::Terms {
        terms::Terms {
            min_from: Some("1.0.0".into()),
            expires: Some(1_700_100_000),
            rollout: Some(rollout::Policy {
                test_farms: vec![3],
                waves: vec![10, 100],
                safe: false,
                halt_percent: 25,
            }),
        }
    }

    #[test]
    fn a_release_without_terms_signs_the_same_manifest_as_before_terms_existed() {
        let a = Identity::generate().unwrap();
        let signed = release().sign(&[&a]).unwrap();
        // The manifest is the release's own JSON: older readers parse it unchanged.
        assert_eq!(signed.manifest, serde_json::to_string(&release()).unwrap());
        let (r, t) = signed.verify_terms(&keys(&[&a], 1)).unwrap();
        assert_eq!((r, t), (release(), terms::Terms::default()));
    }

    #[test]
    fn terms_are_signed_with_the_release_and_come_back_verified() {
        let a = Identity::generate().unwrap();
        let signed = release().sign_with(&terms(), &[&a]).unwrap();
        assert!(signed.manifest.contains("\"min_from\":\"1.0.0\""));
        let (r, t) = signed
            .verify_at(&keys(&[&a], 1), RunMode::Dev, 1_700_000_001)
            .unwrap();
        assert_eq!((r, t.clone()), (release(), terms()));
        assert_eq!(t.policy().test_farms, vec![3]);
        assert_eq!(t.min_from().unwrap(), Some(Version(1, 0, 0)));
        // Changing a term after signing breaks the signatures.
        let mut changed = signed.clone();
        changed.manifest = changed.manifest.replace("\"safe\":false", "\"safe\":true");
        assert_ne!(changed.manifest, signed.manifest);
        assert!(matches!(
            changed.verify(&keys(&[&a], 1)),
            Err(ReleaseError::NotTrusted { good: 0, .. })
        ));
    }

    #[test]
    fn an_expired_release_is_refused_with_its_expiry() {
        let a = Identity::generate().unwrap();
        let signed = release().sign_with(&terms(), &[&a]).unwrap();
        let e = signed
            .verify_at(&keys(&[&a], 1), RunMode::Dev, 1_700_100_000)
            .unwrap_err();
        assert!(matches!(
            e,
            ReleaseError::Expired {
                expires: 1_700_100_000,
                ..
            }
        ));
        let msg = e.to_string();
        assert!(msg.contains("release 1.2.3 expired at 1700100000"), "{msg}");
        // verify_for reads the system clock, long past this expiry.
        assert!(matches!(
            signed.verify_for(&keys(&[&a], 1), RunMode::Dev),
            Err(ReleaseError::Expired { .. })
        ));
    }

    #[test]
    fn bad_terms_are_refused_at_signing_and_at_reading() {
        let a = Identity::generate().unwrap();
        let bad = |f: fn(&mut terms::Terms)| {
            let mut t = terms();
            f(&mut t);
            release().sign_with(&t, &[&a]).unwrap_err()
        };
        assert!(matches!(
            bad(|t| t.min_from = Some("1.2.3".into())),
            ReleaseError::MinFrom { .. }
        ));
        assert!(matches!(
            bad(|t| t.min_from = Some("1.x".into())),
            ReleaseError::Version(_)
        ));
        assert!(matches!(
            bad(|t| t.expires = Some(1_600_000_000)),
            ReleaseError::ExpiresBeforeCreated { .. }
        ));
        assert!(matches!(
            bad(|t| t.rollout.as_mut().unwrap().waves = vec![]),
            ReleaseError::Rollout(_)
        ));
        // An unknown field in a signed manifest is refused, signatures or not.
        let mut r = release().sign(&[&a]).unwrap();
        r.manifest = r.manifest.replacen('{', "{\"surprise\":1,", 1);
        let msg = r.manifest.clone();
        let r = SignedRelease {
            signatures: vec![ReleaseSignature {
                key: a.public_key(),
                signature: a.sign(&signing_message(&msg)),
            }],
            manifest: msg,
        };
        assert!(matches!(
            r.verify(&keys(&[&a], 1)),
            Err(ReleaseError::Malformed(_))
        ));
    }

    #[test]
    fn versions_compare_as_numbers() {
        let v = |s: &str| s.parse::<Version>().unwrap();
        assert!(v("1.10.0") > v("1.9.9"));
        assert_eq!(v("0.0.1").to_string(), "0.0.1");
        for bad in [
            "",
            "1",
            "1.2.3.4",
            "1.x.3",
            "-1.2.3",
            "1..3",
            "01234567890.0.0",
        ] {
            assert!(bad.parse::<Version>().is_err(), "{bad}");
        }
    }

    #[test]
    fn runmodes_parse_their_long_forms() {
        assert_eq!("development".parse::<RunMode>().unwrap(), RunMode::Dev);
        assert_eq!("production".parse::<RunMode>().unwrap(), RunMode::Prod);
        assert!("staging".parse::<RunMode>().is_err());
        assert_eq!(serde_json::to_string(&RunMode::Qa).unwrap(), "\"qa\"");
    }
}
