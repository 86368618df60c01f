//! One versioned state file per VM: its spec, what it should be doing and its processes
//! (a [`StateFile`]: atomic, mode 0600, a newer version refused).

use std::fs;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use zos_runtime::{StateFile, Versioned};

use super::{Result, VmSpec};

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

impl Versioned for VmRecord {
    const VERSION: u32 = STATE_VERSION;
}

/// The state file of VM `name`.
pub fn path(dir: &Path, name: &str) -> PathBuf {
    dir.join(format!("{name}.json"))
}

/// Writes `rec` atomically, readable by root only (the spec holds the seed: SSH keys,
/// environment).
pub fn save(dir: &Path, rec: &VmRecord) -> Result<()> {
    Ok(StateFile::new(path(dir, &rec.spec.name)).save(rec)?)
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
        match StateFile::<VmRecord>::new(&p).load() {
            Ok(Some(r)) => recs.push(r),
            Ok(None) => {}
            Err(e) => bad.push(zos_runtime::error_chain(&e)),
        }
    }
    recs.sort_by(|a, b| a.spec.name.cmp(&b.spec.name));
    (recs, bad)
}

/// Removes the record of `name`; succeeds when there is none.
pub fn remove(dir: &Path, name: &str) -> Result<()> {
    Ok(StateFile::<VmRecord>::new(path(dir, name)).remove()?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_versions() {
        let d = tempfile::tempdir().unwrap();
        let rec = VmRecord {
            version: STATE_VERSION,
            spec: crate::tests::spec(),
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
            spec: crate::tests::spec(),
            desired: Desired::Running,
            pid: None,
            virtiofsd: vec![],
            restarts: 0,
        };
        save(&dir, &rec).unwrap();
        assert_eq!(zos_runtime::private::mode_of(&dir).unwrap(), 0o700);
        assert_eq!(
            zos_runtime::private::mode_of(&path(&dir, "7-1-vm")).unwrap(),
            0o600
        );
    }
}
