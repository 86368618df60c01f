//! [`StateFile`]: one versioned JSON state file, written atomically, readable by its owner only.
//!
//! Every persisted record of a zos process (network, flist mounts, VMs, pools, deployment
//! records, the CLI's network files) goes through it, so they all share one set of guarantees:
//! - the file carries a `version`; a file from a newer build is refused with advice to upgrade,
//!   never misread or overwritten, and one older than the oldest version a type still reads is
//!   refused too;
//! - a write is a temporary file, fsync, rename, fsync of the directory
//!   ([`crate::private::write_atomic`]): a crash leaves the old file or the new one;
//! - the file is mode 0600 from creation and new directories are 0700 (the records hold
//!   WireGuard keys, SSH keys, environment).
//!
//! The version is checked before the rest is parsed, so a newer format is named as such rather
//! than reported as a parse error.

use std::io;
use std::marker::PhantomData;
use std::path::{Path, PathBuf};

use serde::Serialize;
use serde::de::DeserializeOwned;

/// A type persisted in a [`StateFile`]. Its JSON form is an object that has (or accepts) a
/// `version` field: [`StateFile::save`] sets it to [`Versioned::VERSION`].
pub trait Versioned: Serialize + DeserializeOwned {
    /// The format version this build writes.
    const VERSION: u32;
    /// The oldest format version this build still reads.
    const OLDEST: u32 = Self::VERSION;
    /// The program that owns the file, named in the advice of version errors.
    const PROGRAM: &'static str = "zosd";
}

/// Why a state file could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("cannot read state file {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot write state file {path}")]
    Write {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("state file {path} is not valid: fix or remove it")]
    Invalid {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    #[error(
        "state file {path} has format version {found}, newer than {known}, the newest this \
         {program} reads: upgrade {program}"
    )]
    Newer {
        path: PathBuf,
        found: u32,
        known: u32,
        program: &'static str,
    },
    #[error(
        "state file {path} has format version {found}, older than {oldest}, the oldest this \
         {program} reads: remove it"
    )]
    Older {
        path: PathBuf,
        found: u32,
        oldest: u32,
        program: &'static str,
    },
}

/// The state file of a `T` at one path.
#[derive(Debug, Clone)]
pub struct StateFile<T> {
    path: PathBuf,
    _kind: PhantomData<fn() -> T>,
}

impl<T: Versioned> StateFile<T> {
    pub fn new(path: impl Into<PathBuf>) -> Self {
        Self {
            path: path.into(),
            _kind: PhantomData,
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Reads the file; `None` when there is none.
    pub fn load(&self) -> Result<Option<T>, StateError> {
        let bytes = match std::fs::read(&self.path) {
            Ok(b) => b,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(source) => return Err(self.read_err(source)),
        };
        self.check_version(&bytes)?;
        serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|source| self.invalid(source))
    }

    /// Writes `value` atomically with mode 0600, creating missing directories with mode 0700.
    pub fn save(&self, value: &T) -> Result<(), StateError> {
        let mut json = serde_json::to_value(value).map_err(|source| self.invalid(source))?;
        if let Some(obj) = json.as_object_mut() {
            obj.insert("version".into(), T::VERSION.into());
        }
        let body = serde_json::to_vec_pretty(&json).map_err(|source| self.invalid(source))?;
        if let Some(dir) = self.path.parent().filter(|d| !d.as_os_str().is_empty()) {
            crate::private::create_dir(dir).map_err(|source| self.write_err(source))?;
        }
        crate::private::write_atomic(&self.path, &body).map_err(|source| self.write_err(source))
    }

    /// Removes the file; succeeds when there is none.
    pub fn remove(&self) -> Result<(), StateError> {
        match std::fs::remove_file(&self.path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(source) => Err(self.write_err(source)),
        }
    }

    fn check_version(&self, bytes: &[u8]) -> Result<(), StateError> {
        #[derive(serde::Deserialize)]
        struct Version {
            #[serde(default)]
            version: u32,
        }
        let found = serde_json::from_slice::<Version>(bytes)
            .map_err(|source| self.invalid(source))?
            .version;
        if found > T::VERSION {
            return Err(StateError::Newer {
                path: self.path.clone(),
                found,
                known: T::VERSION,
                program: T::PROGRAM,
            });
        }
        if found < T::OLDEST {
            return Err(StateError::Older {
                path: self.path.clone(),
                found,
                oldest: T::OLDEST,
                program: T::PROGRAM,
            });
        }
        Ok(())
    }

    fn read_err(&self, source: io::Error) -> StateError {
        StateError::Read {
            path: self.path.clone(),
            source,
        }
    }

    fn write_err(&self, source: io::Error) -> StateError {
        StateError::Write {
            path: self.path.clone(),
            source,
        }
    }

    fn invalid(&self, source: serde_json::Error) -> StateError {
        StateError::Invalid {
            path: self.path.clone(),
            source,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::private::{mode_of, tmp_path};

    #[derive(Debug, PartialEq, serde::Serialize, serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Rec {
        version: u32,
        secret: String,
    }

    impl Versioned for Rec {
        const VERSION: u32 = 3;
        const OLDEST: u32 = 2;
    }

    fn rec(secret: &str) -> Rec {
        Rec {
            version: 0,
            secret: secret.into(),
        }
    }

    #[test]
    fn a_record_round_trips_with_its_version_set() {
        let d = tempfile::tempdir().unwrap();
        let f = StateFile::<Rec>::new(d.path().join("a/b/rec.json"));
        assert!(f.load().unwrap().is_none(), "no file is no record");
        f.save(&rec("k1")).unwrap();
        let back = f.load().unwrap().unwrap();
        assert_eq!((back.version, back.secret.as_str()), (3, "k1"));
        f.remove().unwrap();
        f.remove().unwrap();
        assert!(f.load().unwrap().is_none());
    }

    #[test]
    fn a_file_from_a_newer_build_is_refused_and_left_as_it_is() {
        let d = tempfile::tempdir().unwrap();
        let f = StateFile::<Rec>::new(d.path().join("rec.json"));
        let newer = br#"{"version": 4, "secret": "x", "field_of_v4": 1}"#;
        std::fs::write(f.path(), newer).unwrap();
        let e = f.load().unwrap_err();
        assert!(matches!(e, StateError::Newer { found: 4, .. }), "{e:?}");
        assert!(e.to_string().contains("upgrade zosd"), "{e}");
        assert_eq!(std::fs::read(f.path()).unwrap(), newer);

        std::fs::write(f.path(), br#"{"version": 1, "secret": "x"}"#).unwrap();
        let e = f.load().unwrap_err();
        assert!(matches!(e, StateError::Older { found: 1, .. }), "{e:?}");
        std::fs::write(f.path(), br#"{"version": 2, "secret": "x"}"#).unwrap();
        assert_eq!(f.load().unwrap().unwrap().secret, "x", "2 is still read");
        std::fs::write(f.path(), b"{torn").unwrap();
        assert!(matches!(f.load(), Err(StateError::Invalid { .. })));
    }

    #[test]
    fn state_files_are_owner_only_even_over_a_stale_world_readable_temporary() {
        use std::os::unix::fs::PermissionsExt;
        let d = tempfile::tempdir().unwrap();
        let dir = d.path().join("new");
        let f = StateFile::<Rec>::new(dir.join("rec.json"));
        std::fs::create_dir(&dir).unwrap();
        let stale = tmp_path(f.path());
        std::fs::write(&stale, "old").unwrap();
        std::fs::set_permissions(&stale, std::fs::Permissions::from_mode(0o644)).unwrap();
        f.save(&rec("k")).unwrap();
        assert_eq!(mode_of(f.path()).unwrap(), 0o600);
        assert!(!stale.exists());
        let g = StateFile::<Rec>::new(d.path().join("fresh/dir/rec.json"));
        g.save(&rec("k")).unwrap();
        assert_eq!(mode_of(&d.path().join("fresh")).unwrap(), 0o700);
        assert_eq!(mode_of(g.path()).unwrap(), 0o600);
    }

    #[test]
    fn a_crash_between_write_and_rename_leaves_the_old_file() {
        let d = tempfile::tempdir().unwrap();
        let f = StateFile::<Rec>::new(d.path().join("rec.json"));
        f.save(&rec("old")).unwrap();
        // A writer killed after writing its temporary file, before the rename: a child process
        // writes half a record there and dies by SIGKILL.
        let tmp = tmp_path(f.path());
        let status = std::process::Command::new("sh")
            .arg("-c")
            .arg(r#"printf '{"version": 3, "secr' > "$1"; kill -9 $$"#)
            .arg("sh")
            .arg(&tmp)
            .status()
            .unwrap();
        assert!(!status.success());
        assert!(tmp.exists());
        assert_eq!(f.load().unwrap().unwrap().secret, "old");
        f.save(&rec("new")).unwrap();
        assert_eq!(f.load().unwrap().unwrap().secret, "new");
        assert!(
            !tmp.exists(),
            "the torn temporary is replaced, then renamed"
        );
    }
}
