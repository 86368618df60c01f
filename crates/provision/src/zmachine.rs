//! The `zmachine` manager: a user's VM from a flist, through the [`Networker`], [`Storage`],
//! [`FlistManager`], [`DiskImages`] and [`Vmm`].
//!
//! Provisioning runs in three parts (decision 0010):
//! 1. **Resolve**: find what the workload names and decide the mode: its mounts' storage items,
//!    its flist (mounted read-only as `<vm>-ro` to look inside), the network attachments, the
//!    guest kernel and initramfs.
//! 2. **Plan** ([`plan::plan`]): pure; turns the workload and what was resolved into a
//!    [`MachinePlan`] (disks and their order, shares, NICs, the boot, the seed), refusing what
//!    cannot run before anything is written.
//! 3. **Apply**: the side effects in small steps: the disks prepared (image, NoCloud seed, or
//!    formats), a container's root volume and writable flist mount, then the VM. When a step
//!    fails, everything a new machine got is removed again.
//!
//! - **Mode** from the flist: `/image.raw` present is VM mode, anything else container mode.
//! - **Container mode**: the flist mounted writable with its changes on a volume
//!   `<vm>-root` of the machine's root size, shared as virtiofs tag `vroot`; booted with the
//!   node's guest kernel and initramfs and a `guest-init` seed (network by MAC, hostname = the
//!   workload name, SSH keys from `SSH_KEY`, mounts, entrypoint, environment). zmounts are
//!   virtio disks with serials `zd<i>`, formatted ext4 by the node when blank; volumes are
//!   virtiofs shares `v<i>`.
//! - **VM mode**: `image.raw` written onto the first mount (a zmount) when it is blank, booted
//!   by firmware; a NoCloud `cidata` seed as the last, read-only disk.
//! - **Network**: the private interface on the machine's network (a tap with a MAC the network
//!   module derives), and with `public_ip` a second interface for that `ip` workload.
//!
//! Names: the VM is the workload id `<twin>-<contract>-<name>`; zmounts and volumes named by a
//! mount are the storage items of those workloads (same twin and contract). What the manager
//! must remember for removal (networks, public ip, mode) is a small versioned record in its
//! state directory.

pub mod plan;

use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use serde::{Deserialize, Serialize};
use zos_types::deployment::WorkloadId;
use zos_types::workload::{WorkloadData, Zmachine};

use super::error::Context as _;
use super::images::{DiskImages, DiskPrep, HostImages, OpenedFile};
use super::managers::{Manager, ManagerError, Readiness, Target, to_data};
use zos_mounts::{FlistManager, MountInfo};
use zos_net::{Attachment, NetworkError, Networker, VmLink};
use zos_runtime::error_chain;
use zos_runtime::{StateFile, Versioned};
use zos_storage::{Storage, StorageError};
use zos_vmm::{VmInfo, Vmm};

pub use plan::{
    BootPlan, FlistMode, FormatPlan, MachinePlan, MountItem, NodeFacts, ROOT_TAG, Resolved,
    RootPlan, hostname,
};

/// How long a machine waits, by default, for the guest image to be mountable (a node that has
/// just started, or a hub the image is still being published to).
pub const GUEST_WAIT: Duration = Duration::from_secs(60);

/// How much of a console a starting machine reports (its last line is the state's message, the
/// whole of it the error's when the guest never comes up).
pub const CONSOLE_TAIL: usize = 2048;

/// Deaths of a machine's QEMU before its guest was ever up after which it is an error.
pub const CRASHES_BEFORE_READY: u32 = 3;

/// Version of the manager's per-machine record.
pub const RECORD_VERSION: u32 = 1;
/// The file of a flist that makes it a VM-mode flist: a raw disk image.
pub const IMAGE_FILE: &str = "image.raw";

/// Where the zmachine manager finds the guest image and keeps its records.
#[derive(Debug, Clone)]
pub struct ZmachineConfig {
    /// The container-mode kernel (`vmlinux` of `scripts/build-guest.sh` or the guest flist).
    pub kernel: PathBuf,
    /// The container-mode initramfs (with `guest-init`).
    pub initramfs: PathBuf,
    /// The flist mount `kernel` and `initramfs` are files of (the guest image flist), or
    /// `None` when they are the node's own files. From a mount they are copied out once per
    /// flist, opened without following links ([`FlistManager::open_file`]), and QEMU boots the
    /// copies: it never opens a path inside a flist.
    pub guest_mount: Option<String>,
    /// The guest image flist's URL: when `guest_mount` is not mounted yet, the first machine
    /// that needs it mounts it there, retrying for up to `guest_wait`.
    pub guest_flist: Option<String>,
    /// How long a machine waits for the guest image to become mountable before failing.
    pub guest_wait: Duration,
    /// Per-machine records and NoCloud seed images.
    pub state_dir: PathBuf,
    /// Resolvers the machines are given.
    pub nameservers: Vec<IpAddr>,
}

/// What the manager remembers of a machine, for its removal.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Record {
    version: u32,
    networks: Vec<String>,
    public_ip: Option<String>,
}

impl Versioned for Record {
    const VERSION: u32 = RECORD_VERSION;
}

/// The `zmachine` manager.
pub struct ZmachineManager<N, S, F, V, I = HostImages> {
    net: Arc<N>,
    storage: Arc<S>,
    flists: Arc<F>,
    vmm: Arc<V>,
    images: I,
    cfg: ZmachineConfig,
    /// One copy of the guest image at a time.
    guest_lock: tokio::sync::Mutex<()>,
}

impl<N, S, F, V, I> std::fmt::Debug for ZmachineManager<N, S, F, V, I> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ZmachineManager")
            .field("cfg", &self.cfg)
            .finish_non_exhaustive()
    }
}

/// `e` as the cause of a failure of `what`.
fn failed(what: impl std::fmt::Display, e: impl Into<ManagerError>) -> ManagerError {
    e.into().context(what.to_string())
}

/// Copies the opened `files` into `dir` through a temporary directory renamed into place.
/// Copies of earlier guest images stay: machines booted with them restart with them.
fn copy_out(dir: &std::path::Path, files: Vec<(String, std::fs::File)>) -> std::io::Result<()> {
    let parent = dir.parent().expect("a guest copy has a parent");
    zos_runtime::private::create_dir(parent)?;
    let tmp = tempfile::Builder::new()
        .prefix(".copy-")
        .tempdir_in(parent)?;
    for (name, mut f) in files {
        let mut out = zos_runtime::private::create_file(&tmp.path().join(&name))?;
        std::io::copy(&mut f, &mut out)?;
        out.sync_all()?;
    }
    let _ = std::fs::remove_dir_all(dir);
    std::fs::rename(tmp.keep(), dir)
}

/// The name of the read-only mount that shows what a machine's flist holds.
fn probe_name(vm: &str) -> String {
    format!("{vm}-ro")
}

impl<N, S, F, V> ZmachineManager<N, S, F, V, HostImages>
where
    N: Networker + 'static,
    S: Storage + 'static,
    F: FlistManager + 'static,
    V: Vmm + 'static,
{
    /// A manager that prepares disks with the host's tools ([`HostImages`]).
    pub fn new(
        net: Arc<N>,
        storage: Arc<S>,
        flists: Arc<F>,
        vmm: Arc<V>,
        cfg: ZmachineConfig,
    ) -> Self {
        Self {
            net,
            storage,
            flists,
            vmm,
            images: HostImages,
            cfg,
            guest_lock: tokio::sync::Mutex::new(()),
        }
    }

    /// The same manager, preparing disks with `images`.
    pub fn with_images<J: DiskImages>(self, images: J) -> ZmachineManager<N, S, F, V, J> {
        ZmachineManager {
            net: self.net,
            storage: self.storage,
            flists: self.flists,
            vmm: self.vmm,
            images,
            cfg: self.cfg,
            guest_lock: self.guest_lock,
        }
    }
}

impl<N, S, F, V, I> ZmachineManager<N, S, F, V, I>
where
    N: Networker + 'static,
    S: Storage + 'static,
    F: FlistManager + 'static,
    V: Vmm + 'static,
    I: DiskImages,
{
    fn record_path(&self, vm: &str) -> PathBuf {
        self.cfg.state_dir.join(format!("{vm}.json"))
    }

    fn cidata_path(&self, vm: &str) -> PathBuf {
        self.cfg.state_dir.join(format!("{vm}-cidata.iso"))
    }

    fn save_record(&self, vm: &str, rec: &Record) -> Result<(), ManagerError> {
        // The directory also holds the NoCloud seeds (SSH keys): root only.
        StateFile::new(self.record_path(vm))
            .save(rec)
            .context(format!("cannot save the record of {vm}"))
    }

    /// The record of `vm`; none when it is missing or unreadable (a newer version included).
    fn load_record(&self, vm: &str) -> Option<Record> {
        StateFile::<Record>::new(self.record_path(vm))
            .load()
            .ok()
            .flatten()
    }

    // ---- resolve ----

    /// Finds the zmount or volume each mount names.
    async fn resolve_mounts(
        &self,
        id: &WorkloadId,
        z: &Zmachine,
    ) -> Result<Vec<MountItem>, ManagerError> {
        let mut out = Vec::new();
        for (i, m) in z.mounts.iter().enumerate() {
            let item = WorkloadId {
                twin: id.twin,
                contract: id.contract,
                name: m.name.clone(),
            }
            .to_string();
            let storage_err = |e: StorageError| failed(format!("mounts[{i}] ({})", m.name), e);
            if let Some(d) = self.storage.disk_get(&item).await.map_err(storage_err)? {
                out.push(MountItem::Disk {
                    path: d.path,
                    target: m.mountpoint.clone(),
                });
            } else if let Some(v) = self.storage.volume_get(&item).await.map_err(storage_err)? {
                out.push(MountItem::Volume {
                    path: v.path,
                    target: m.mountpoint.clone(),
                });
            } else {
                return Err(ManagerError::Invalid(format!(
                    "mounts[{i}]: no zmount or volume {:?} in this deployment",
                    m.name
                )));
            }
        }
        Ok(out)
    }

    /// Whether the machine's guest is up (see [`Vmm::guest_ready`]); a guest that died
    /// [`CRASHES_BEFORE_READY`] times before it was ever up will not be.
    async fn guest_readiness(&self, id: &WorkloadId) -> Result<Readiness, ManagerError> {
        let vm = id.to_string();
        if self.vmm.guest_ready(&vm).await.context("the machine")? {
            return Ok(Readiness::Ready);
        }
        let console = self
            .vmm
            .console(&vm, CONSOLE_TAIL)
            .await
            .context("the machine's console")?;
        let restarts = self
            .vmm
            .info(&vm)
            .await
            .context("the machine")?
            .map_or(0, |i| i.restarts);
        if restarts >= CRASHES_BEFORE_READY {
            return Err(ManagerError::Failed(format!(
                "the machine stopped {restarts} times before its guest was up; its console \
                 ends with:\n{}",
                console.trim_end()
            )));
        }
        Ok(Readiness::Starting { console })
    }

    /// The guest image's mount `name`: the one there, or mounted now from `guest_flist`,
    /// retrying with backoff while the hub cannot serve it, for up to `guest_wait`.
    async fn guest_mounted(&self, name: &str) -> Result<MountInfo, ManagerError> {
        if let Some(info) = self.flists.get(name).await.context("the guest image")? {
            return Ok(info);
        }
        let Some(url) = &self.cfg.guest_flist else {
            return Err(ManagerError::Unavailable(
                "this node has no guest image (its operator sets guest_flist= on the kernel \
                 command line or --guest-flist): deploy a flist with an image.raw, or use \
                 another node"
                    .into(),
            ));
        };
        let deadline = tokio::time::Instant::now() + self.cfg.guest_wait;
        let mut delay = Duration::from_millis(250);
        loop {
            let e = match self.flists.mount(name, url).await {
                Ok(info) => {
                    tracing::info!(url = %url, sha256 = %info.sha256, "guest image mounted for a machine");
                    return Ok(info);
                }
                Err(e) => e,
            };
            tracing::warn!(url = %url, error = %error_chain(&e), "cannot mount the guest image yet");
            let now = tokio::time::Instant::now();
            if now >= deadline {
                return Err(ManagerError::Unavailable(format!(
                    "the guest image {url} could not be mounted within {}s ({}): try again once \
                     it is published on the hub",
                    self.cfg.guest_wait.as_secs(),
                    error_chain(&e)
                )));
            }
            tokio::time::sleep(delay.min(deadline - now)).await;
            delay = (delay * 2).min(Duration::from_secs(5));
        }
    }

    /// The kernel and initramfs container-mode machines boot: the configured files, or the
    /// node's copies of those of the guest image flist (made once per flist, under
    /// `<state_dir>/guest/<sha256>/`).
    async fn guest_boot_files(&self) -> Result<(PathBuf, PathBuf), ManagerError> {
        let Some(mount) = &self.cfg.guest_mount else {
            return Ok((self.cfg.kernel.clone(), self.cfg.initramfs.clone()));
        };
        let names = [&self.cfg.kernel, &self.cfg.initramfs].map(|p| {
            p.file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default()
        });
        let info = self.guest_mounted(mount).await?;
        let dir = self.cfg.state_dir.join("guest").join(&info.sha256);
        let paths = names.clone().map(|n| dir.join(n));
        let _one_copy_at_a_time = self.guest_lock.lock().await;
        if paths.iter().all(|p| p.is_file()) {
            return Ok((paths[0].clone(), paths[1].clone()));
        }
        let mut files = Vec::new();
        for n in &names {
            let f = self
                .flists
                .open_file(mount, n)
                .await
                .context("the guest image")?
                .ok_or_else(|| ManagerError::Failed(format!("the guest image flist has no {n}")))?;
            files.push((n.clone(), f));
        }
        let to = dir.clone();
        tokio::task::spawn_blocking(move || copy_out(&to, files))
            .await
            .map_err(|e| ManagerError::Failed(format!("copying the guest image panicked: {e}")))?
            .context(format!("cannot copy the guest image to {}", dir.display()))?;
        Ok((paths[0].clone(), paths[1].clone()))
    }

    /// The flist's `image.raw`, opened for the node to copy (VM mode), or `None` (container
    /// mode). Anything but a regular file inside the flist is refused with why: a link there
    /// would make the node copy a host file onto the tenant's disk.
    async fn image_of(&self, probe: &str, flist: &str) -> Result<Option<OpenedFile>, ManagerError> {
        match self.flists.open_file(probe, IMAGE_FILE).await {
            Ok(f) => Ok(f.map(|f| OpenedFile::new(f, format!("flist {flist}: {IMAGE_FILE}")))),
            Err(e) => {
                tracing::warn!(
                    flist = flist,
                    "refusing the flist's {IMAGE_FILE}: {}",
                    error_chain(&e)
                );
                Err(failed(format!("flist {flist}"), e))
            }
        }
    }

    /// The mode the flist says: its `image.raw` (the probe mount stays until it is copied), or
    /// the guest's boot files (the probe mount is gone).
    async fn flist_mode(&self, vm: &str, z: &Zmachine) -> Result<FlistMode, ManagerError> {
        let probe = probe_name(vm);
        self.flists
            .mount(&probe, &z.flist)
            .await
            .context(format!("flist {}", z.flist))?;
        if let Some(image) = self.image_of(&probe, &z.flist).await? {
            return Ok(FlistMode::Vm { image });
        }
        let _ = self.flists.unmount(&probe).await;
        let (kernel, initramfs) = self.guest_boot_files().await?;
        Ok(FlistMode::Container { kernel, initramfs })
    }

    async fn attach(
        &self,
        id: &WorkloadId,
        z: &Zmachine,
    ) -> Result<(Attachment, Option<Attachment>), ManagerError> {
        let nic = &z.network.interfaces[0];
        let private = self
            .net
            .attach_private(id, &nic.network, nic.ip, VmLink::Tap)
            .await
            .map_err(|e| match e {
                NetworkError::NoNetwork { name, .. } => ManagerError::Invalid(format!(
                    "network.interfaces[0].network: no network {name:?} of this twin on this \
                     node (the deployment needs a network workload of that name)"
                )),
                e => failed("network.interfaces[0]", e),
            })?;
        let public = if z.network.public_ip.is_empty() {
            None
        } else {
            let ip_wl = WorkloadId {
                twin: id.twin,
                contract: id.contract,
                name: z.network.public_ip.clone(),
            };
            Some(
                self.net
                    .attach_public(&ip_wl, VmLink::Tap)
                    .await
                    .context("network.public_ip")?,
            )
        };
        Ok((private, public))
    }

    /// Everything the plan needs; records what removal will need first.
    async fn resolve(&self, id: &WorkloadId, z: &Zmachine) -> Result<Resolved, ManagerError> {
        let vm = id.to_string();
        let mounts = self.resolve_mounts(id, z).await?;
        let rec = Record {
            version: RECORD_VERSION,
            networks: z
                .network
                .interfaces
                .iter()
                .map(|i| i.network.clone())
                .collect(),
            public_ip: (!z.network.public_ip.is_empty()).then(|| z.network.public_ip.clone()),
        };
        self.save_record(&vm, &rec)?;
        let mode = self.flist_mode(&vm, z).await?;
        let (private, public) = self.attach(id, z).await?;
        Ok(Resolved {
            mode,
            mounts,
            private,
            public,
        })
    }

    // ---- apply ----

    /// VM mode: the image onto the first disk (then the probe mount goes), and the seed.
    async fn prepare_vm_disks(&self, plan: &MachinePlan) -> Result<(), ManagerError> {
        let BootPlan::Vm {
            image,
            first_disk,
            cidata,
            seed,
        } = &plan.boot
        else {
            return Ok(());
        };
        let image = DiskPrep::Image {
            image: image.clone(),
        };
        self.images
            .prepare(first_disk, image)
            .await
            .context("mounts[0]: writing image.raw")?;
        let _ = self.flists.unmount(&probe_name(&plan.name)).await;
        self.images
            .prepare(cidata, DiskPrep::NoCloud(seed.clone()))
            .await
            .context("the NoCloud seed")?;
        Ok(())
    }

    /// Container mode: the root volume and the flist mounted writable on it (its mountpoint),
    /// and the zmounts formatted when blank.
    async fn prepare_container(&self, root: &RootPlan) -> Result<PathBuf, ManagerError> {
        let vol = match self
            .storage
            .volume_get(&root.volume)
            .await
            .context("the root volume")?
        {
            Some(v) => v,
            None => self
                .storage
                .volume_create(&root.volume, root.size)
                .await
                .context("the root volume")?,
        };
        let mount = self
            .flists
            .mount_writable(&root.mount, &root.flist, &vol.path)
            .await
            .context(format!("flist {}", root.flist))?;
        Ok(mount.mountpoint)
    }

    async fn format_disks(&self, formats: &[FormatPlan]) -> Result<(), ManagerError> {
        for f in formats {
            let prep = DiskPrep::Format {
                label: f.label.clone(),
            };
            self.images
                .prepare(&f.path, prep)
                .await
                .context(format!("mounts[{}]: formatting", f.mount))?;
        }
        Ok(())
    }

    /// Carries `plan` out: disks and root first, then the VM.
    async fn apply(&self, plan: &MachinePlan) -> Result<VmInfo, ManagerError> {
        let root = match &plan.boot {
            BootPlan::Vm { .. } => {
                self.prepare_vm_disks(plan).await?;
                None
            }
            BootPlan::Container { root, formats, .. } => {
                let mountpoint = self.prepare_container(root).await?;
                self.format_disks(formats).await?;
                Some(mountpoint)
            }
        };
        self.vmm
            .create(plan.spec(root.as_deref()))
            .await
            .context("the virtual machine")
    }

    async fn provision_inner(
        &self,
        id: &WorkloadId,
        z: &Zmachine,
    ) -> Result<serde_json::Value, ManagerError> {
        let resolved = self.resolve(id, z).await?;
        let facts = NodeFacts {
            nameservers: self.cfg.nameservers.clone(),
            cidata: self.cidata_path(&id.to_string()),
        };
        let plan = plan::plan(id, z, &resolved, &facts)?;
        let info = self.apply(&plan).await?;
        Ok(to_data(&plan.result(&info.console_log)))
    }

    // ---- remove ----

    /// Removes everything of machine `id`; what is already gone is fine.
    async fn remove(&self, id: &WorkloadId) -> Result<(), ManagerError> {
        let vm = id.to_string();
        self.vmm.delete(&vm).await.context("the virtual machine")?;
        if let Some(rec) = self.load_record(&vm) {
            self.detach(id, &rec).await?;
        }
        for m in [vm.clone(), probe_name(&vm)] {
            self.flists.unmount(&m).await.context("the flist")?;
        }
        match self.storage.volume_delete(&format!("{vm}-root")).await {
            Ok(()) | Err(StorageError::NotFound { .. }) => {}
            Err(e) => return Err(failed("the root volume", e)),
        }
        for p in [self.cidata_path(&vm), self.record_path(&vm)] {
            if let Err(e) = std::fs::remove_file(&p)
                && e.kind() != std::io::ErrorKind::NotFound
            {
                return Err(failed(format!("cannot remove {}", p.display()), e));
            }
        }
        Ok(())
    }

    /// Takes the machine off the networks its record names.
    async fn detach(&self, id: &WorkloadId, rec: &Record) -> Result<(), ManagerError> {
        for n in &rec.networks {
            self.net
                .detach_private(id, n)
                .await
                .context(format!("network {n}"))?;
        }
        if let Some(p) = &rec.public_ip {
            let ip_wl = WorkloadId {
                twin: id.twin,
                contract: id.contract,
                name: p.clone(),
            };
            self.net
                .detach_public(&ip_wl)
                .await
                .context("network.public_ip")?;
        }
        Ok(())
    }

    async fn provision_checked(&self, t: Target<'_>) -> Result<serde_json::Value, ManagerError> {
        let WorkloadData::Zmachine(z) = t.data else {
            return Err(ManagerError::Failed(format!(
                "the zmachine manager got a {} workload",
                t.data.kind()
            )));
        };
        z.validate()
            .map_err(|e| ManagerError::Invalid(e.to_string()))?;
        if !z.gpu.is_empty() {
            return Err(ManagerError::Invalid(
                "gpu: passthrough is not offered on this node".into(),
            ));
        }
        let existed = self
            .vmm
            .info(&t.id.to_string())
            .await
            .context("the virtual machine")?
            .is_some();
        match self.provision_inner(t.id, z).await {
            Ok(v) => Ok(v),
            Err(e) => {
                // A machine made by this call leaves nothing behind; one that was running
                // before is left as it was.
                if !existed && let Err(e2) = self.remove(t.id).await {
                    tracing::warn!(
                        workload = %t.id,
                        "cleanup after a failed zmachine: {}",
                        e2.message()
                    );
                }
                Err(e)
            }
        }
    }
}

impl<N, S, F, V, I> Manager for ZmachineManager<N, S, F, V, I>
where
    N: Networker + 'static,
    S: Storage + 'static,
    F: FlistManager + 'static,
    V: Vmm + 'static,
    I: DiskImages + 'static,
{
    fn provision<'a>(
        &'a self,
        t: Target<'a>,
    ) -> BoxFuture<'a, Result<serde_json::Value, ManagerError>> {
        Box::pin(self.provision_checked(t))
    }

    fn deprovision<'a>(&'a self, id: &'a WorkloadId) -> BoxFuture<'a, Result<(), ManagerError>> {
        Box::pin(self.remove(id))
    }

    fn readiness<'a>(
        &'a self,
        id: &'a WorkloadId,
    ) -> BoxFuture<'a, Result<Readiness, ManagerError>> {
        Box::pin(self.guest_readiness(id))
    }

    fn pause<'a>(&'a self, id: &'a WorkloadId) -> BoxFuture<'a, Result<(), ManagerError>> {
        Box::pin(async move { self.vmm.pause(&id.to_string()).await.context("pause") })
    }

    fn resume<'a>(&'a self, id: &'a WorkloadId) -> BoxFuture<'a, Result<(), ManagerError>> {
        Box::pin(async move { self.vmm.resume(&id.to_string()).await.context("resume") })
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use base64::Engine;
    use zos_types::capacity::{GIB, MIB};
    use zos_types::workload::{ComputeCapacity, MachineInterface, MachineNetwork, Mount, Network};

    use super::*;
    use zos_mounts::MemoryFlists;
    use zos_net::{Call, RecordingNetworker};
    use zos_storage::{DiskKind, MemoryStorage};
    use zos_vmm::{Boot, MemoryVmm};

    use crate::images::RecordingImages;
    use zos_guest_init::seed::MountSpec;

    type Mgr = ZmachineManager<
        RecordingNetworker,
        MemoryStorage,
        MemoryFlists,
        MemoryVmm,
        Arc<RecordingImages>,
    >;

    struct Bed {
        mgr: Mgr,
        net: Arc<RecordingNetworker>,
        storage: Arc<MemoryStorage>,
        flists: Arc<MemoryFlists>,
        vmm: Arc<MemoryVmm>,
        images: Arc<RecordingImages>,
        dir: tempfile::TempDir,
    }

    fn wid(name: &str) -> WorkloadId {
        WorkloadId {
            twin: 7,
            contract: 1,
            name: name.into(),
        }
    }

    async fn bed() -> Bed {
        bed_with(None).await
    }

    async fn bed_with(guest_mount: Option<&str>) -> Bed {
        bed_guest(guest_mount, None).await
    }

    /// A bed whose guest image is the mount `guest_mount`, mounted from `guest_flist` on demand
    /// (waiting 800 ms at most).
    async fn bed_guest(guest_mount: Option<&str>, guest_flist: Option<&str>) -> Bed {
        let dir = tempfile::tempdir().unwrap();
        let net = Arc::new(RecordingNetworker::new("t"));
        net.setup_node(None).await.unwrap();
        let key = base64::engine::general_purpose::STANDARD.encode([1u8; 32]);
        net.apply_network(
            &wid("net1"),
            &Network {
                ip_range: "10.20.0.0/16".parse().unwrap(),
                subnet: "10.20.1.0/24".parse().unwrap(),
                wireguard_private_key: key,
                wireguard_listen_port: 51820,
                peers: vec![],
            },
        )
        .await
        .unwrap();
        let storage = Arc::new(MemoryStorage::new(&[("ssd1", DiskKind::Ssd, 10 * GIB)], 0));
        storage.disk_create("7-1-data", GIB).await.unwrap();
        storage.volume_create("7-1-vol", GIB).await.unwrap();
        let flists = Arc::new(MemoryFlists::new(dir.path().join("flists"), "t"));
        let vmm = Arc::new(MemoryVmm::new());
        let images = Arc::new(RecordingImages::default());
        // The guest image: real files, as the VMM (fake or real) wants them.
        let guest = dir.path().join("guest");
        std::fs::create_dir(&guest).unwrap();
        std::fs::write(guest.join("vmlinux"), "kernel").unwrap();
        std::fs::write(guest.join("initramfs.cpio"), "initramfs").unwrap();
        let mgr = ZmachineManager::new(
            net.clone(),
            storage.clone(),
            flists.clone(),
            vmm.clone(),
            ZmachineConfig {
                kernel: guest.join("vmlinux"),
                guest_mount: guest_mount.map(str::to_string),
                guest_flist: guest_flist.map(str::to_string),
                guest_wait: Duration::from_millis(800),
                initramfs: guest.join("initramfs.cpio"),
                state_dir: dir.path().join("zmachine"),
                nameservers: vec!["1.1.1.1".parse().unwrap()],
            },
        )
        .with_images(images.clone());
        Bed {
            mgr,
            net,
            storage,
            flists,
            vmm,
            images,
            dir,
        }
    }

    fn machine() -> Zmachine {
        Zmachine {
            flist: "https://hub.example/flists/7/box.fl".into(),
            network: MachineNetwork {
                public_ip: String::new(),
                planetary: false,
                interfaces: vec![MachineInterface {
                    network: "net1".into(),
                    ip: "10.20.1.5".parse().unwrap(),
                }],
            },
            size: 0,
            compute_capacity: ComputeCapacity {
                cpu: 2,
                memory: 512 * MIB,
            },
            mounts: vec![
                Mount {
                    name: "data".into(),
                    mountpoint: "/data".into(),
                },
                Mount {
                    name: "vol".into(),
                    mountpoint: "/srv/vol".into(),
                },
            ],
            entrypoint: "/bin/httpd -f".into(),
            env: BTreeMap::from([
                (
                    "SSH_KEY".to_string(),
                    "ssh-ed25519 AAA a,ssh-ed25519 BBB b".to_string(),
                ),
                ("A".to_string(), "1".to_string()),
            ]),
            corex: false,
            gpu: vec![],
        }
    }

    async fn provision(
        b: &Bed,
        name: &str,
        z: &Zmachine,
    ) -> Result<serde_json::Value, ManagerError> {
        let data = WorkloadData::Zmachine(z.clone());
        b.mgr
            .provision(Target {
                id: &wid(name),
                data: &data,
            })
            .await
    }

    fn err(r: Result<serde_json::Value, ManagerError>) -> String {
        match r {
            Err(e) => e.message(),
            other => panic!("expected a failure, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn container_mode_machine_is_made_and_removed() {
        let b = bed().await;
        let z = machine();
        let res = provision(&b, "vm_1", &z).await.unwrap();
        assert_eq!(res["id"], "7-1-vm_1");
        assert_eq!(res["ip"], "10.20.1.5");
        assert_eq!(res["mode"], "container");
        assert!(res["console_url"].as_str().unwrap().starts_with("file://"));

        let vm = b.vmm.info("7-1-vm_1").await.unwrap().unwrap();
        assert_eq!(vm.spec.cpus, 2);
        assert_eq!(vm.spec.memory, 512 * MIB);
        let Boot::Kernel { seed, kernel, .. } = &vm.spec.boot else {
            panic!("not container mode");
        };
        assert_eq!(kernel, &b.dir.path().join("guest/vmlinux"));
        let seed = seed.as_ref().unwrap();
        assert_eq!(seed.hostname, "vm-1");
        assert_eq!(seed.ssh_keys, ["ssh-ed25519 AAA a", "ssh-ed25519 BBB b"]);
        assert_eq!(seed.entrypoint, "/bin/httpd -f");
        assert_eq!(seed.env["A"], "1");
        assert_eq!(
            seed.mounts,
            vec![
                MountSpec::Disk {
                    serial: "zd0".into(),
                    fstype: "ext4".into(),
                    target: "/data".into()
                },
                MountSpec::Virtiofs {
                    tag: "v1".into(),
                    target: "/srv/vol".into()
                },
            ]
        );
        let nic = &seed.interfaces[0];
        assert_eq!(nic.addresses[0].to_string(), "10.20.1.5/24");
        assert_eq!(nic.gateway4, Some("10.20.1.1".parse().unwrap()));
        assert!(
            nic.routes
                .iter()
                .any(|r| r.to.to_string() == "10.20.0.0/16")
        );
        assert_eq!(vm.spec.nics[0].mac, nic.mac);
        // Root on a volume of the minimum root size, shared as vroot; the volume as v1.
        let root = b
            .storage
            .volume_get("7-1-vm_1-root")
            .await
            .unwrap()
            .unwrap();
        assert_eq!(root.size, z.min_root_size());
        let rw = b.flists.get("7-1-vm_1").await.unwrap().unwrap();
        assert_eq!(rw.rw_dir.as_deref(), Some(root.path.as_path()));
        assert_eq!(vm.spec.shares[0].tag, ROOT_TAG);
        assert_eq!(vm.spec.shares[0].path, rw.mountpoint);
        assert_eq!(vm.spec.shares[1].tag, "v1");
        assert!(b.flists.get("7-1-vm_1-ro").await.unwrap().is_none());
        // The zmount is formatted by the node, found by serial in the guest.
        let prepared = b.images.prepared();
        assert_eq!(prepared.len(), 1);
        assert!(matches!(&prepared[0].1, DiskPrep::Format { label } if label == "zd0"));
        assert_eq!(vm.spec.disks[0].serial, "zd0");

        // Again: the same machine.
        assert_eq!(provision(&b, "vm_1", &z).await.unwrap(), res);
        assert_eq!(b.vmm.list().await.unwrap().len(), 1);

        pause_resume_and_remove(&b).await;
    }

    /// Pause and resume reach the VMM; removal takes everything of the machine `vm_1` and
    /// nothing of the zmount and volume it used.
    async fn pause_resume_and_remove(b: &Bed) {
        b.mgr.pause(&wid("vm_1")).await.unwrap();
        assert_eq!(
            b.vmm.info("7-1-vm_1").await.unwrap().unwrap().status,
            zos_vmm::VmStatus::Paused
        );
        b.mgr.resume(&wid("vm_1")).await.unwrap();

        b.mgr.deprovision(&wid("vm_1")).await.unwrap();
        assert!(b.vmm.list().await.unwrap().is_empty());
        assert!(b.flists.list().await.unwrap().is_empty());
        assert!(
            b.storage
                .volume_get("7-1-vm_1-root")
                .await
                .unwrap()
                .is_none()
        );
        assert!(b.net.calls().contains(&Call::DetachPrivate {
            vm: wid("vm_1"),
            network: "net1".into()
        }));
        assert!(b.net.private_ips(7, "net1").await.unwrap().is_empty());
        // The zmount and volume belong to their own workloads.
        assert!(b.storage.disk_get("7-1-data").await.unwrap().is_some());
        assert!(b.storage.volume_get("7-1-vol").await.unwrap().is_some());
        assert!(
            std::fs::read_dir(b.dir.path().join("zmachine"))
                .unwrap()
                .next()
                .is_none()
        );
        b.mgr.deprovision(&wid("vm_1")).await.unwrap();
    }

    #[tokio::test]
    async fn bad_input_is_a_clear_error_and_leaves_nothing() {
        let b = bed().await;
        type Edit = Box<dyn Fn(&mut Zmachine)>;
        let cases: Vec<(&str, Edit)> = vec![
            (
                "compute_capacity.cpu",
                Box::new(|z| z.compute_capacity.cpu = 0),
            ),
            (
                "compute_capacity.memory",
                Box::new(|z| z.compute_capacity.memory = 100 * MIB),
            ),
            (
                "no network \"other\"",
                Box::new(|z| z.network.interfaces[0].network = "other".into()),
            ),
            (
                "mounts[1]: no zmount or volume \"missing\"",
                Box::new(|z| z.mounts[1].name = "missing".into()),
            ),
            (
                "gpu",
                Box::new(|z| z.gpu = vec!["0000:01:00.0/10de/1234".into()]),
            ),
        ];
        for (want, edit) in cases {
            let mut z = machine();
            edit(&mut z);
            let m = err(provision(&b, "bad", &z).await);
            assert!(m.contains(want), "{want}: {m}");
        }
        // A flist that cannot be fetched.
        b.flists.fail_next_mount("404 Not Found");
        let m = err(provision(&b, "bad", &machine()).await);
        assert!(
            m.contains("flist https://hub.example/flists/7/box.fl"),
            "{m}"
        );
        assert!(m.contains("404"), "{m}");

        // Nothing of the failed machines is left.
        let nothing_left = || async {
            assert!(b.vmm.list().await.unwrap().is_empty());
            assert!(b.flists.list().await.unwrap().is_empty());
            assert!(
                b.storage
                    .volume_get("7-1-bad-root")
                    .await
                    .unwrap()
                    .is_none()
            );
            assert!(b.net.private_ips(7, "net1").await.unwrap().is_empty());
        };
        nothing_left().await;
        // A failing VMM leaves nothing either.
        b.vmm.fail_next("create");
        let m = err(provision(&b, "bad", &machine()).await);
        assert!(m.contains("the virtual machine"), "{m}");
        nothing_left().await;
        // And the next machine is fine.
        provision(&b, "good", &machine()).await.unwrap();
    }

    /// A machine whose disk cannot be prepared is undone: root volume, mounts, attachments,
    /// seed and record are gone, and the next attempt starts clean.
    #[tokio::test]
    async fn a_failed_disk_step_undoes_what_the_machine_got() {
        let b = bed().await;
        b.images.fail_next(std::io::ErrorKind::StorageFull);
        let m = err(provision(&b, "full", &machine()).await);
        assert!(m.starts_with("mounts[0]: formatting: cannot write "), "{m}");
        assert!(m.ends_with("7-1-data: no storage space"), "{m}");
        let b = &b;
        let gone = |vm: &'static str| async move {
            assert!(b.vmm.info(vm).await.unwrap().is_none());
            assert!(b.flists.list().await.unwrap().is_empty());
            let root = format!("{vm}-root");
            assert!(b.storage.volume_get(&root).await.unwrap().is_none());
            assert!(b.net.private_ips(7, "net1").await.unwrap().is_empty());
            let state = b.dir.path().join("zmachine");
            assert!(!state.join(format!("{vm}.json")).exists());
            assert!(!state.join(format!("{vm}-cidata.iso")).exists());
        };
        gone("7-1-full").await;

        // VM mode: the image cannot be written.
        let probe = b.dir.path().join("flists/t-7-1-img-ro");
        std::fs::create_dir_all(&probe).unwrap();
        std::fs::write(probe.join("image.raw"), b"boot").unwrap();
        b.images.fail_next(std::io::ErrorKind::PermissionDenied);
        let m = err(provision(b, "img", &machine()).await);
        assert!(
            m.starts_with("mounts[0]: writing image.raw: cannot write "),
            "{m}"
        );
        gone("7-1-img").await;
        assert!(b.images.prepared().is_empty());
        provision(b, "full", &machine()).await.unwrap();
    }

    #[tokio::test]
    async fn vm_mode_writes_the_image_and_a_nocloud_seed() {
        let b = bed().await;
        // The fake mounts at <root>/<prefix>-<name>: put an image.raw in the probe mount.
        let probe = b.dir.path().join("flists/t-7-1-full-ro");
        std::fs::create_dir_all(&probe).unwrap();
        std::fs::write(probe.join("image.raw"), b"boot").unwrap();
        let mut z = machine();
        z.flist = "https://hub.example/flists/7/ubuntu.fl".into();
        let res = provision(&b, "full", &z).await.unwrap();
        assert_eq!(res["mode"], "vm");
        let vm = b.vmm.info("7-1-full").await.unwrap().unwrap();
        assert_eq!(vm.spec.boot, Boot::Disk);
        let serials: Vec<&str> = vm.spec.disks.iter().map(|d| d.serial.as_str()).collect();
        assert_eq!(serials, ["zd0", "cidata"]);
        assert!(vm.spec.disks[1].read_only);
        let prepared = b.images.prepared();
        let DiskPrep::Image { image } = &prepared[0].1 else {
            panic!("no image: {prepared:?}");
        };
        assert!(image.origin.ends_with("ubuntu.fl: image.raw"), "{image:?}");
        let mut copied = String::new();
        std::io::Read::read_to_string(&mut &*image.file, &mut copied).unwrap();
        assert_eq!(copied, "boot");
        let DiskPrep::NoCloud(seed) = &prepared[1].1 else {
            panic!("no NoCloud seed: {prepared:?}");
        };
        assert_eq!(seed.hostname, "full");
        assert_eq!(seed.instance_id, "7-1-full");
        assert_eq!(seed.ssh_keys.len(), 2);
        assert!(
            b.storage
                .volume_get("7-1-full-root")
                .await
                .unwrap()
                .is_none()
        );
        b.mgr.deprovision(&wid("full")).await.unwrap();

        // VM mode boots its first mount: it must be a zmount.
        let probe = b.dir.path().join("flists/t-7-1-full2-ro");
        std::fs::create_dir_all(&probe).unwrap();
        std::fs::write(probe.join("image.raw"), b"boot").unwrap();
        z.mounts.swap(0, 1);
        let m = err(provision(&b, "full2", &z).await);
        assert!(m.contains("mounts[0]"), "{m}");
    }

    #[tokio::test]
    async fn an_image_linking_to_a_host_file_is_refused_and_nothing_is_copied() {
        let b = bed().await;
        let secret = b.dir.path().join("host-secret");
        std::fs::write(&secret, "node key").unwrap();
        let z = Zmachine {
            flist: "https://hub.example/flists/7/evil.fl".into(),
            ..machine()
        };
        for (name, target) in [
            ("abs", secret.clone()),
            ("climb", PathBuf::from("../host-secret")),
        ] {
            let probe = b.dir.path().join(format!("flists/t-7-1-{name}-ro"));
            std::fs::create_dir_all(&probe).unwrap();
            std::os::unix::fs::symlink(&target, probe.join("image.raw")).unwrap();
            let m = err(provision(&b, name, &z).await);
            assert!(
                m.contains("image.raw") && m.contains("leads out of the flist"),
                "{m}"
            );
            assert!(b.images.prepared().is_empty(), "nothing written");
            assert!(b.vmm.info(&format!("7-1-{name}")).await.unwrap().is_none());
        }
    }

    #[tokio::test]
    async fn guest_kernel_linking_to_a_host_file_is_refused_and_real_files_are_copied() {
        let b = bed_with(Some("zos-guest")).await;
        let m = err(provision(&b, "early", &machine()).await);
        assert!(m.contains("no guest image"), "{m}");
        let guest = b
            .flists
            .mount("zos-guest", "https://hub/guest.fl")
            .await
            .unwrap();
        std::fs::create_dir_all(&guest.mountpoint).unwrap();
        std::fs::write(b.dir.path().join("host-key"), "node key").unwrap();
        std::os::unix::fs::symlink("../../host-key", guest.mountpoint.join("vmlinux")).unwrap();
        std::fs::write(guest.mountpoint.join("initramfs.cpio"), "initramfs").unwrap();
        let m = err(provision(&b, "evil", &machine()).await);
        assert!(
            m.contains("vmlinux") && m.contains("leads out of the flist"),
            "{m}"
        );
        assert!(b.vmm.info("7-1-evil").await.unwrap().is_none());

        std::fs::remove_file(guest.mountpoint.join("vmlinux")).unwrap();
        std::fs::write(guest.mountpoint.join("vmlinux"), "kernel").unwrap();
        provision(&b, "good", &machine()).await.unwrap();
        let vm = b.vmm.info("7-1-good").await.unwrap().unwrap();
        let Boot::Kernel {
            kernel, initramfs, ..
        } = &vm.spec.boot
        else {
            panic!("{:?}", vm.spec.boot);
        };
        let copies = b.dir.path().join("zmachine/guest").join(&guest.sha256);
        assert_eq!(kernel, &copies.join("vmlinux"));
        assert_eq!(std::fs::read_to_string(kernel).unwrap(), "kernel");
        assert_eq!(std::fs::read_to_string(initramfs).unwrap(), "initramfs");
    }

    #[tokio::test]
    async fn a_guest_image_not_mounted_yet_is_mounted_by_the_first_machine_that_needs_it() {
        let url = "https://hub/guest.fl";
        let b = bed_guest(Some("zos-guest"), Some(url)).await;
        // The hub cannot serve it at first (still being published); the machine waits.
        b.flists.fail_next_mount_of("zos-guest", "hub answered 404");
        let mountpoint = b.flists.mountpoint("zos-guest");
        std::fs::create_dir_all(&mountpoint).unwrap();
        std::fs::write(mountpoint.join("vmlinux"), "kernel").unwrap();
        std::fs::write(mountpoint.join("initramfs.cpio"), "initramfs").unwrap();
        provision(&b, "first", &machine()).await.unwrap();
        let guest = b.flists.get("zos-guest").await.unwrap().expect("mounted");
        assert_eq!(guest.url, url);
        let vm = b.vmm.info("7-1-first").await.unwrap().unwrap();
        let Boot::Kernel { kernel, .. } = &vm.spec.boot else {
            panic!("{:?}", vm.spec.boot);
        };
        let copies = b.dir.path().join("zmachine/guest").join(&guest.sha256);
        assert_eq!(kernel, &copies.join("vmlinux"));
        assert_eq!(std::fs::read_to_string(kernel).unwrap(), "kernel");
    }

    #[tokio::test]
    async fn a_guest_image_that_never_becomes_mountable_fails_the_machine_after_the_wait() {
        let b = bed_guest(Some("zos-guest"), Some("ftp://hub/guest.fl")).await;
        let m = err(provision(&b, "late", &machine()).await);
        assert!(
            m.contains("could not be mounted within") && m.contains("ftp://hub/guest.fl"),
            "{m}"
        );
        assert!(b.vmm.info("7-1-late").await.unwrap().is_none());
        assert!(b.flists.get("zos-guest").await.unwrap().is_none());
    }

    #[tokio::test]
    async fn machine_records_and_their_directory_are_readable_by_root_only() {
        let b = bed().await;
        provision(&b, "good", &machine()).await.unwrap();
        let dir = b.dir.path().join("zmachine");
        assert_eq!(zos_runtime::private::mode_of(&dir).unwrap(), 0o700);
        assert_eq!(
            zos_runtime::private::mode_of(&dir.join("7-1-good.json")).unwrap(),
            0o600
        );
    }
}
