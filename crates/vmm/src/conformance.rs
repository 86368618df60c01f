//! The contract of the [`Vmm`] seam, as one suite that every implementation must pass.
//!
//! `tests/conformance.rs` runs [`run`] twice: against `MemoryVmm` (feature `fake`) and against
//! `QemuVmm` booting one tiny guest under TCG. It states what `zos-provision` relies on: a
//! created VM runs and shows in `info` and `list`; creating the same spec again answers the same
//! VM, another spec under its name is `Exists`; pause, resume, shutdown and start move it between
//! running, paused and stopped (a stopped VM has no process), pausing or resuming a stopped VM
//! is a `State` error; every call on a VM that does not exist is `NotFound` except `info`
//! (`None`) and `delete` (succeeds); an invalid spec, or a kernel or initramfs that is not a
//! file, is refused and leaves nothing; `reconcile`
//! on a VMM that already supervises its VMs changes nothing. That is the whole seam: disk
//! preparation is the images module's. The real implementation is the reference. Compiled
//! only with the `conformance` feature.

use std::time::Duration;

use crate::{Boot, VmInfo, VmSpec, VmStatus, Vmm, VmmError};

/// How long the suite lets a guest power off before it is killed.
const SHUTDOWN: Duration = Duration::from_secs(10);

/// Runs every check in order. `spec` must be a valid spec that boots on `vmm`, of a name the
/// VMM does not have; the suite deletes the VM at the end.
pub async fn run<V: Vmm>(vmm: &V, spec: &VmSpec) {
    check_missing(vmm, &spec.name).await;
    check_invalid(vmm, spec).await;
    let info = check_create(vmm, spec).await;
    check_pause_resume(vmm, &info).await;
    check_shutdown_start(vmm, &info).await;
    check_reconcile(vmm, &info).await;
    check_delete(vmm, &info).await;
    check_missing(vmm, &spec.name).await;
}

async fn names<V: Vmm>(vmm: &V) -> Vec<String> {
    vmm.list()
        .await
        .expect("list")
        .into_iter()
        .map(|i| i.spec.name)
        .collect()
}

async fn status<V: Vmm>(vmm: &V, name: &str) -> VmInfo {
    vmm.info(name)
        .await
        .expect("info")
        .unwrap_or_else(|| panic!("vm {name} is gone"))
}

fn not_found<T: std::fmt::Debug>(r: Result<T, VmmError>, name: &str, op: &str) {
    assert!(
        matches!(&r, Err(VmmError::NotFound(n)) if n == name),
        "{op} {name}: {r:?}"
    );
}

/// A VM that does not exist: `info` is `None`, `delete` succeeds, everything else `NotFound`.
pub async fn check_missing<V: Vmm>(vmm: &V, name: &str) {
    assert_eq!(vmm.info(name).await.expect("info"), None);
    assert!(!names(vmm).await.contains(&name.to_string()));
    vmm.delete(name)
        .await
        .expect("deleting a missing vm succeeds");
    not_found(vmm.pause(name).await, name, "pause");
    not_found(vmm.resume(name).await, name, "resume");
    not_found(vmm.shutdown(name, SHUTDOWN).await, name, "shutdown");
    not_found(vmm.start(name).await, name, "start");
    not_found(vmm.console(name, 100).await, name, "console");
    assert_eq!(
        vmm.info(name).await.expect("info"),
        None,
        "a refused call made the vm"
    );
}

/// An invalid spec is `Invalid` and leaves nothing.
pub async fn check_invalid<V: Vmm>(vmm: &V, spec: &VmSpec) {
    let before = names(vmm).await;
    let edits: [fn(&mut VmSpec); 4] = [
        |s| s.name = "../x".into(),
        |s| s.cpus = 0,
        |s| s.memory = 64 << 20,
        |s| s.memory += 1,
    ];
    for edit in edits {
        let mut bad = spec.clone();
        edit(&mut bad);
        let r = vmm.create(bad.clone()).await;
        assert!(matches!(r, Err(VmmError::Invalid { .. })), "{bad:?}: {r:?}");
    }
    check_missing_boot_files(vmm, spec).await;
    assert_eq!(names(vmm).await, before, "a refused create left a vm");
}

/// A kernel boot whose kernel or initramfs is not a file is `Invalid` on that field.
async fn check_missing_boot_files<V: Vmm>(vmm: &V, spec: &VmSpec) {
    let Boot::Kernel {
        kernel, initramfs, ..
    } = &spec.boot
    else {
        panic!("the conformance spec boots a kernel");
    };
    for (field, path) in [("boot.kernel", kernel), ("boot.initramfs", initramfs)] {
        assert!(path.is_file(), "the suite's {field} must exist: {path:?}");
        let mut bad = spec.clone();
        if let Boot::Kernel {
            kernel, initramfs, ..
        } = &mut bad.boot
        {
            let target = if field == "boot.kernel" {
                kernel
            } else {
                initramfs
            };
            *target = path.with_extension("missing");
        }
        let r = vmm.create(bad).await;
        assert!(
            matches!(&r, Err(VmmError::Invalid { field: f, .. }) if f == field),
            "{field} missing: {r:?}"
        );
    }
}

/// Create runs the VM; the same spec again is the same VM, another spec is `Exists`.
pub async fn check_create<V: Vmm>(vmm: &V, spec: &VmSpec) -> VmInfo {
    let info = vmm.create(spec.clone()).await.expect("create");
    assert_eq!(&info.spec, spec);
    assert_eq!(info.status, VmStatus::Running);
    assert!(info.pid.is_some(), "a running vm has a process");
    assert_eq!(
        info.virtiofsd.len(),
        spec.shares.len(),
        "one virtiofsd per share"
    );
    assert_eq!(info.restarts, 0);
    assert_eq!(status(vmm, &spec.name).await, info);
    assert!(names(vmm).await.contains(&spec.name));
    let again = vmm.create(spec.clone()).await.expect("create again");
    assert_eq!(again, info, "the same spec again is the same vm");
    let mut other = spec.clone();
    other.cpus = if spec.cpus == 1 { 2 } else { 1 };
    let r = vmm.create(other).await;
    assert!(
        matches!(&r, Err(VmmError::Exists(n)) if n == &spec.name),
        "{r:?}"
    );
    assert_eq!(
        status(vmm, &spec.name).await,
        info,
        "a refused create changed the vm"
    );
    info
}

/// Pause and resume: each idempotent, the process kept.
pub async fn check_pause_resume<V: Vmm>(vmm: &V, info: &VmInfo) {
    let name = &info.spec.name;
    for _ in 0..2 {
        vmm.pause(name).await.expect("pause");
        let now = status(vmm, name).await;
        assert_eq!((now.status, now.pid), (VmStatus::Paused, info.pid));
    }
    for _ in 0..2 {
        vmm.resume(name).await.expect("resume");
        let now = status(vmm, name).await;
        assert_eq!((now.status, now.pid), (VmStatus::Running, info.pid));
    }
}

/// Shutdown stops the VM (no process) and it stays stopped; pause and resume are refused while
/// it is; start runs it again, and starting a running VM changes nothing.
pub async fn check_shutdown_start<V: Vmm>(vmm: &V, info: &VmInfo) {
    let name = &info.spec.name;
    vmm.shutdown(name, SHUTDOWN).await.expect("shutdown");
    let stopped = status(vmm, name).await;
    assert_eq!(stopped.status, VmStatus::Stopped);
    assert_eq!(stopped.pid, None, "a stopped vm has no process");
    assert!(
        stopped.virtiofsd.is_empty(),
        "a stopped vm has no virtiofsd"
    );
    for (op, r) in [
        ("pause", vmm.pause(name).await),
        ("resume", vmm.resume(name).await),
    ] {
        assert!(
            matches!(
                &r,
                Err(VmmError::State {
                    status: VmStatus::Stopped,
                    ..
                })
            ),
            "{op} of a stopped vm: {r:?}"
        );
    }
    vmm.shutdown(name, SHUTDOWN)
        .await
        .expect("shutdown of a stopped vm");
    assert_eq!(status(vmm, name).await.status, VmStatus::Stopped);
    vmm.console(name, 100)
        .await
        .expect("console of a stopped vm");
    let started = vmm.start(name).await.expect("start");
    assert_eq!(started.status, VmStatus::Running);
    assert!(started.pid.is_some(), "a started vm has a process");
    assert_eq!(started.virtiofsd.len(), info.spec.shares.len());
    assert_eq!(started.spec, info.spec);
    let again = vmm.start(name).await.expect("start of a running vm");
    assert_eq!((again.status, again.pid), (VmStatus::Running, started.pid));
    assert_eq!(status(vmm, name).await.pid, started.pid);
}

/// With every VM supervised, `reconcile` adopts, restarts and fails nothing, and leaves the VMs.
pub async fn check_reconcile<V: Vmm>(vmm: &V, info: &VmInfo) {
    let before = status(vmm, &info.spec.name).await;
    let r = vmm.reconcile().await.expect("reconcile");
    assert_eq!(
        r,
        crate::VmmReconcile::default(),
        "reconcile of supervised vms did something"
    );
    assert_eq!(status(vmm, &info.spec.name).await, before);
}

/// Delete removes the VM; a second delete succeeds.
pub async fn check_delete<V: Vmm>(vmm: &V, info: &VmInfo) {
    let name = &info.spec.name;
    vmm.delete(name).await.expect("delete");
    vmm.delete(name).await.expect("delete again");
    assert_eq!(vmm.info(name).await.expect("info"), None);
}
