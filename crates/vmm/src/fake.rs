//! [`MemoryVmm`]: the in-memory fake, with the same rules as the real VMM (`conformance::run`
//! holds it to them).

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::Duration;

use super::{Result, VmInfo, VmSpec, VmStatus, Vmm, VmmError, VmmReconcile};

/// Keeps VMs in memory; every created VM "runs" with a made-up PID.
#[derive(Debug, Default)]
pub struct MemoryVmm {
    vms: Mutex<BTreeMap<String, VmInfo>>,
    next_pid: Mutex<i32>,
    fail: Mutex<Option<&'static str>>,
    /// While set, kernel-booted guests made from then on are not up until [`Self::guest_up`].
    holding: Mutex<bool>,
    held: Mutex<std::collections::BTreeSet<String>>,
    consoles: Mutex<BTreeMap<String, String>>,
}

impl MemoryVmm {
    pub fn new() -> Self {
        Self::default()
    }

    /// Kernel-booted guests created from now on (`true`) stay not ready, as a guest still
    /// booting does, until [`Self::guest_up`].
    pub fn hold_guests(&self, hold: bool) {
        *self.holding.lock().unwrap() = hold;
    }

    /// The held guest `name` becomes ready.
    pub fn guest_up(&self, name: &str) {
        self.held.lock().unwrap().remove(name);
    }

    /// Appends `text` to the console of `name`, as its guest printing it.
    pub fn print(&self, name: &str, text: &str) {
        let mut c = self.consoles.lock().unwrap();
        c.entry(name.to_string()).or_default().push_str(text);
    }

    /// Makes the next call of `op` (`create`, `delete`, `pause`, `resume`) fail.
    pub fn fail_next(&self, op: &'static str) {
        *self.fail.lock().unwrap() = Some(op);
    }

    fn failing(&self, op: &'static str) -> Result<()> {
        let mut f = self.fail.lock().unwrap();
        if *f == Some(op) {
            *f = None;
            return Err(VmmError::Internal(format!("{op} failed (injected)")));
        }
        Ok(())
    }

    /// Simulates the VM's process dying and the supervisor starting it again.
    pub fn crash(&self, name: &str) {
        let mut vms = self.vms.lock().unwrap();
        let mut pid = self.next_pid.lock().unwrap();
        if let Some(v) = vms.get_mut(name) {
            *pid += 1;
            v.pid = Some(1000 + *pid);
            v.restarts += 1;
        }
    }

    /// Moves a VM that is not stopped to `to`; a stopped one is a `State` error naming what
    /// the call wanted (`want`), as the real VMM answers.
    fn set_status(
        &self,
        name: &str,
        from: &[VmStatus],
        to: VmStatus,
        want: &'static str,
    ) -> Result<()> {
        let mut vms = self.vms.lock().unwrap();
        let v = vms
            .get_mut(name)
            .ok_or_else(|| VmmError::NotFound(name.to_string()))?;
        if !from.contains(&v.status) {
            return Err(VmmError::State {
                name: name.to_string(),
                status: v.status,
                want,
            });
        }
        v.status = to;
        Ok(())
    }
}

/// Made-up virtiofsd PIDs, one per share, for the VM's `boot`-th start.
fn virtiofsd_pids(spec: &VmSpec, boot: i32) -> Vec<i32> {
    (0..spec.shares.len() as i32)
        .map(|i| 100_000 + boot * 100 + i)
        .collect()
}

impl Vmm for MemoryVmm {
    async fn create(&self, spec: VmSpec) -> Result<VmInfo> {
        spec.validate()?;
        spec.check_boot_files()?;
        self.failing("create")?;
        let mut vms = self.vms.lock().unwrap();
        if let Some(v) = vms.get(&spec.name) {
            if v.spec != spec {
                return Err(VmmError::Exists(spec.name));
            }
            return Ok(v.clone());
        }
        let mut pid = self.next_pid.lock().unwrap();
        *pid += 1;
        let info = VmInfo {
            console_log: format!("/var/log/vm/{}.log", spec.name).into(),
            cgroup: format!("zos-vm-{}", spec.name),
            virtiofsd: virtiofsd_pids(&spec, *pid),
            spec,
            status: VmStatus::Running,
            pid: Some(1000 + *pid),
            restarts: 0,
        };
        if *self.holding.lock().unwrap() && matches!(info.spec.boot, super::Boot::Kernel { .. }) {
            self.held.lock().unwrap().insert(info.spec.name.clone());
        }
        vms.insert(info.spec.name.clone(), info.clone());
        Ok(info)
    }

    async fn delete(&self, name: &str) -> Result<()> {
        self.failing("delete")?;
        self.vms.lock().unwrap().remove(name);
        self.held.lock().unwrap().remove(name);
        self.consoles.lock().unwrap().remove(name);
        Ok(())
    }

    async fn info(&self, name: &str) -> Result<Option<VmInfo>> {
        Ok(self.vms.lock().unwrap().get(name).cloned())
    }

    async fn list(&self) -> Result<Vec<VmInfo>> {
        Ok(self.vms.lock().unwrap().values().cloned().collect())
    }

    async fn pause(&self, name: &str) -> Result<()> {
        self.failing("pause")?;
        self.set_status(
            name,
            &[VmStatus::Running, VmStatus::Paused],
            VmStatus::Paused,
            "running",
        )
    }

    async fn resume(&self, name: &str) -> Result<()> {
        self.failing("resume")?;
        self.set_status(
            name,
            &[VmStatus::Running, VmStatus::Paused],
            VmStatus::Running,
            "paused",
        )
    }

    async fn shutdown(&self, name: &str, _timeout: Duration) -> Result<()> {
        let mut vms = self.vms.lock().unwrap();
        let v = vms
            .get_mut(name)
            .ok_or_else(|| VmmError::NotFound(name.to_string()))?;
        // A stopped VM has no process, QEMU's or virtiofsd's.
        v.status = VmStatus::Stopped;
        v.pid = None;
        v.virtiofsd.clear();
        Ok(())
    }

    async fn start(&self, name: &str) -> Result<VmInfo> {
        let mut vms = self.vms.lock().unwrap();
        let v = vms
            .get_mut(name)
            .ok_or_else(|| VmmError::NotFound(name.to_string()))?;
        if v.status == VmStatus::Stopped {
            let mut pid = self.next_pid.lock().unwrap();
            *pid += 1;
            v.status = VmStatus::Running;
            v.pid = Some(1000 + *pid);
            v.virtiofsd = virtiofsd_pids(&v.spec, *pid);
        }
        Ok(v.clone())
    }

    async fn guest_ready(&self, name: &str) -> Result<bool> {
        let status = self
            .vms
            .lock()
            .unwrap()
            .get(name)
            .map(|v| v.status)
            .ok_or_else(|| VmmError::NotFound(name.to_string()))?;
        Ok(status == VmStatus::Running && !self.held.lock().unwrap().contains(name))
    }

    async fn console(&self, name: &str, max: usize) -> Result<String> {
        if !self.vms.lock().unwrap().contains_key(name) {
            return Err(VmmError::NotFound(name.to_string()));
        }
        let c = self.consoles.lock().unwrap();
        let text = c.get(name).map(String::as_str).unwrap_or_default();
        let mut from = text.len().saturating_sub(max);
        while !text.is_char_boundary(from) {
            from += 1;
        }
        Ok(text[from..].to_string())
    }

    /// The fake supervises every VM it has from the moment it makes it, as the real VMM does
    /// with the VMs it created: there is nothing to adopt or restart.
    async fn reconcile(&self) -> Result<VmmReconcile> {
        Ok(VmmReconcile::default())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Boot;

    #[tokio::test]
    async fn same_rules_as_the_real_one() {
        let v = MemoryVmm::new();
        let guest = tempfile::tempdir().unwrap();
        let mut spec = crate::tests::spec();
        // Like the real VMM, the fake refuses a kernel that is not there.
        let missing = v.create(spec.clone()).await;
        assert!(
            matches!(&missing, Err(VmmError::Invalid { field, .. }) if field == "boot.kernel"),
            "{missing:?}"
        );
        assert!(v.list().await.unwrap().is_empty());
        if let Boot::Kernel {
            kernel, initramfs, ..
        } = &mut spec.boot
        {
            *kernel = guest.path().join("vmlinux");
            *initramfs = guest.path().join("initramfs.cpio");
            std::fs::write(&*kernel, "kernel").unwrap();
            std::fs::write(&*initramfs, "initramfs").unwrap();
        }
        let a = v.create(spec.clone()).await.unwrap();
        assert_eq!(v.create(spec.clone()).await.unwrap(), a);
        let mut other = spec.clone();
        other.cpus = 2;
        assert!(matches!(v.create(other).await, Err(VmmError::Exists(_))));
        v.pause(&spec.name).await.unwrap();
        assert_eq!(
            v.info(&spec.name).await.unwrap().unwrap().status,
            VmStatus::Paused
        );
        v.resume(&spec.name).await.unwrap();
        v.delete(&spec.name).await.unwrap();
        v.delete(&spec.name).await.unwrap();
        assert!(matches!(
            v.pause(&spec.name).await,
            Err(VmmError::NotFound(_))
        ));
        let mut bad = spec;
        bad.cpus = 0;
        assert!(matches!(v.create(bad).await, Err(VmmError::Invalid { .. })));
    }
}
