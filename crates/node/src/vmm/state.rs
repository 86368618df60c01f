//! One versioned state file per VM: its spec, what it should be doing and its processes.

use std::fs;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::{Result, VmSpec, VmmError};

/// The state format this code reads and writes.
pub const STATE_VERSION: u32 = 1;
/// The directory of the state files, under the node's state directory.
pub const STATE_DIR: &str = "vmm";

/// What the VM should be doing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Desired {
    Running,
    Paused,
    Stopped,
}

/// A VM as recorded.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VmRecord {
    pub version: u32,
    pub spec: VmSpec,
    pub desired: Desired,
    /// The QEMU process last started (it may be gone).
    pub pid: Option<i32>,
    pub virtiofsd: Vec<i32>,
    pub restarts: u32,
}

fn state_err(path: &Path, reason: impl std::fmt::Display) -> VmmError {
    VmmError::StateFile {
        path: path.to_path_buf(),
        reason: reason.to_string(),
    }
}

/// The state file of VM `name`.
pub fn path(dir: &Path, name: &str) -> PathBuf {
    dir.join(format!("{name}.json"))
}

/// Writes `rec` atomically, readable by root only (the spec holds the seed: SSH keys,
/// environment).
pub fn save(dir: &Path, rec: &VmRecord) -> Result<()> {
    crate::private::create_dir(dir).map_err(|e| state_err(dir, format!("cannot create: {e}")))?;
    let p = path(dir, &rec.spec.name);
    let body = serde_json::to_vec_pretty(rec).map_err(|e| state_err(&p, e))?;
    crate::private::write_atomic(&p, &body).map_err(|e| state_err(&p, e))
}

/// Every record in `dir`, and the files that could not be read with why.
pub fn load_all(dir: &Path) -> (Vec<VmRecord>, Vec<String>) {
    let (mut recs, mut bad) = (Vec::new(), Vec::new());
    let Ok(entries) = fs::read_dir(dir) else {
        return (recs, bad);
    };
    for e in entries.flatten() {
        let p = e.path();
        if p.extension().and_then(|x| x.to_str()) != Some("json") {
            continue;
        }
        match load(&p) {
            Ok(r) => recs.push(r),
            Err(e) => bad.push(crate::registrar::error_chain(&e)),
        }
    }
    recs.sort_by(|a, b| a.spec.name.cmp(&b.spec.name));
    (recs, bad)
}

fn load(p: &Path) -> Result<VmRecord> {
    let bytes = fs::read(p).map_err(|e| state_err(p, e))?;
    let v: serde_json::Value = serde_json::from_slice(&bytes).map_err(|e| state_err(p, e))?;
    let version = v.get("version").and_then(|x| x.as_u64()).unwrap_or(0);
    if version != STATE_VERSION as u64 {
        return Err(state_err(
            p,
            format!("version {version} is not {STATE_VERSION}, the one this zosd knows"),
        ));
    }
    serde_json::from_value(v).map_err(|e| state_err(p, e))
}

/// Removes the record of `name`; succeeds when there is none.
pub fn remove(dir: &Path, name: &str) -> Result<()> {
    let p = path(dir, name);
    match fs::remove_file(&p) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(state_err(&p, e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_versions() {
        let d = tempfile::tempdir().unwrap();
        let rec = VmRecord {
            version: STATE_VERSION,
            spec: crate::vmm::tests::spec(),
            desired: Desired::Running,
            pid: Some(42),
            virtiofsd: vec![43],
            restarts: 1,
        };
        save(d.path(), &rec).unwrap();
        let (recs, bad) = load_all(d.path());
        assert_eq!(recs, vec![rec.clone()]);
        assert!(bad.is_empty());
        let mut v: serde_json::Value =
            serde_json::from_slice(&fs::read(path(d.path(), "7-1-vm")).unwrap()).unwrap();
        v["version"] = 9.into();
        fs::write(path(d.path(), "7-1-vm"), v.to_string()).unwrap();
        let (recs, bad) = load_all(d.path());
        assert!(recs.is_empty());
        assert!(bad[0].contains("version 9"), "{bad:?}");
        remove(d.path(), "7-1-vm").unwrap();
        remove(d.path(), "7-1-vm").unwrap();
    }

    #[test]
    fn vm_records_holding_the_seed_are_readable_by_root_only() {
        let d = tempfile::tempdir().unwrap();
        let dir = d.path().join("vmm");
        let rec = VmRecord {
            version: STATE_VERSION,
            spec: crate::vmm::tests::spec(),
            desired: Desired::Running,
            pid: None,
            virtiofsd: vec![],
            restarts: 0,
        };
        save(&dir, &rec).unwrap();
        assert_eq!(crate::private::mode_of(&dir), 0o700);
        assert_eq!(crate::private::mode_of(&path(&dir, "7-1-vm")), 0o600);
    }
}
