//! The `zmachine` manager: a user's VM from a flist, through the [`Networker`], [`Storage`],
//! [`FlistManager`] and [`Vmm`].
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

use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::Arc;

use futures::future::BoxFuture;
use serde::{Deserialize, Serialize};
use zos_guest_init::seed::{Interface, MountSpec, Route, SEED_VERSION, Seed};
use zos_types::deployment::WorkloadId;
use zos_types::node_api::results::ZmachineResult;
use zos_types::workload::{WorkloadData, Zmachine};

use super::error::Context as _;
use super::managers::{Manager, ManagerError, Target, to_data};
use zos_mounts::FlistManager;
use zos_net::{Attachment, NetworkError, Networker, VmLink};
use zos_runtime::error_chain;
use zos_runtime::{StateFile, Versioned};
use zos_storage::{Storage, StorageError};
use zos_vmm::nocloud::{NoCloud, NoCloudNic};
use zos_vmm::{Boot, Disk, DiskPrep, Nic, OpenedFile, Share, VmSpec, Vmm, VmmError};

/// Version of the manager's per-machine record.
pub const RECORD_VERSION: u32 = 1;
/// The file of a flist that makes it a VM-mode flist: a raw disk image.
pub const IMAGE_FILE: &str = "image.raw";
/// The virtiofs tag of a container-mode root.
pub const ROOT_TAG: &str = "vroot";

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
pub struct ZmachineManager<N, S, F, V> {
    net: Arc<N>,
    storage: Arc<S>,
    flists: Arc<F>,
    vmm: Arc<V>,
    cfg: ZmachineConfig,
    /// One copy of the guest image at a time.
    guest_lock: tokio::sync::Mutex<()>,
}

impl<N, S, F, V> std::fmt::Debug for ZmachineManager<N, S, F, V> {
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

/// The machine's hostname: its workload name in lower case, `_` as `-`.
pub fn hostname(name: &str) -> String {
    let h: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_lowercase()
            } else {
                '-'
            }
        })
        .take(63)
        .collect();
    let h = h.trim_matches('-').to_string();
    if h.is_empty() { "zmachine".into() } else { h }
}

/// SSH keys from the `SSH_KEY` variable: one per line or comma.
fn ssh_keys(z: &Zmachine) -> Vec<String> {
    z.env
        .get("SSH_KEY")
        .map(|v| {
            v.split(['\n', ','])
                .map(str::trim)
                .filter(|k| !k.is_empty())
                .map(String::from)
                .collect()
        })
        .unwrap_or_default()
}

/// The guest side of an attachment: addresses, the network's routes, and the default route
/// when `default` (the public interface when there is one, the private one otherwise).
fn interface(a: &Attachment, default: bool) -> Interface {
    let mut addresses = Vec::new();
    addresses.extend(a.ipv4.map(ipnet::IpNet::V4));
    addresses.extend(a.ipv6.map(ipnet::IpNet::V6));
    Interface {
        mac: a.mac_string(),
        addresses,
        gateway4: a.gateway4.filter(|_| default),
        gateway6: a.gateway6.filter(|_| default),
        routes: a
            .gateway4
            .map(|g| {
                a.routes
                    .iter()
                    .map(|r| Route {
                        to: ipnet::IpNet::V4(*r),
                        via: IpAddr::V4(g),
                    })
                    .collect()
            })
            .unwrap_or_default(),
    }
}

fn nocloud_nic(a: &Attachment, default: bool) -> NoCloudNic {
    let i = interface(a, default);
    NoCloudNic {
        mac: i.mac,
        addresses: i.addresses,
        gateway4: i.gateway4,
        routes: a
            .gateway4
            .map(|g| a.routes.iter().map(|r| (*r, g)).collect())
            .unwrap_or_default(),
    }
}

/// A mount resolved to the storage item of the workload it names.
enum Item {
    Disk { path: PathBuf, target: String },
    Volume { path: PathBuf, target: String },
}

impl<N, S, F, V> ZmachineManager<N, S, F, V>
where
    N: Networker + 'static,
    S: Storage + 'static,
    F: FlistManager + 'static,
    V: Vmm + 'static,
{
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
            cfg,
            guest_lock: tokio::sync::Mutex::new(()),
        }
    }

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

    /// Finds the zmount or volume each mount names.
    async fn resolve_mounts(
        &self,
        id: &WorkloadId,
        z: &Zmachine,
    ) -> Result<Vec<Item>, ManagerError> {
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
                out.push(Item::Disk {
                    path: d.path,
                    target: m.mountpoint.clone(),
                });
            } else if let Some(v) = self.storage.volume_get(&item).await.map_err(storage_err)? {
                out.push(Item::Volume {
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
        let info = self
            .flists
            .get(mount)
            .await
            .context("the guest image")?
            .ok_or_else(|| {
                ManagerError::Unavailable(
                    "the guest image flist is not mounted yet on this node: try again shortly"
                        .into(),
                )
            })?;
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
            .map_err(|e| {
                failed(
                    format!("cannot copy the guest image to {}", dir.display()),
                    e,
                )
            })?;
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

    async fn provision_inner(
        &self,
        id: &WorkloadId,
        z: &Zmachine,
    ) -> Result<serde_json::Value, ManagerError> {
        let vm = id.to_string();
        let items = self.resolve_mounts(id, z).await?;
        self.save_record(
            &vm,
            &Record {
                version: RECORD_VERSION,
                networks: z
                    .network
                    .interfaces
                    .iter()
                    .map(|i| i.network.clone())
                    .collect(),
                public_ip: (!z.network.public_ip.is_empty()).then(|| z.network.public_ip.clone()),
            },
        )?;

        // The flist: its content says the mode.
        let probe = format!("{vm}-ro");
        self.flists
            .mount(&probe, &z.flist)
            .await
            .context(format!("flist {}", z.flist))?;
        let image = self.image_of(&probe, &z.flist).await?;
        let vm_mode = image.is_some();

        let (private, public) = self.attach(id, z).await?;
        let mut nics = vec![Nic {
            tap: private.ifname.clone(),
            mac: private.mac_string(),
        }];
        if let Some(p) = &public {
            nics.push(Nic {
                tap: p.ifname.clone(),
                mac: p.mac_string(),
            });
        }
        let memory = z.compute_capacity.memory & !((1 << 20) - 1);
        let vmm_err = |what: &str, e: VmmError| failed(what, e);

        let spec = if let Some(image) = image {
            let Some(Item::Disk { path: first, .. }) = items.first() else {
                return Err(ManagerError::Invalid(
                    "mounts[0]: a VM-mode flist (with image.raw) boots from its first mount, \
                     which must be a zmount"
                        .into(),
                ));
            };
            self.vmm
                .prepare_disk(first, DiskPrep::Image { image })
                .await
                .map_err(|e| vmm_err("mounts[0]: writing image.raw", e))?;
            let _ = self.flists.unmount(&probe).await;
            let cidata = self.cidata_path(&vm);
            let mut seed_nics = vec![nocloud_nic(&private, public.is_none())];
            seed_nics.extend(public.as_ref().map(|p| nocloud_nic(p, true)));
            self.vmm
                .prepare_disk(
                    &cidata,
                    DiskPrep::NoCloud(NoCloud {
                        instance_id: vm.clone(),
                        hostname: hostname(&id.name),
                        nics: seed_nics,
                        nameservers: self.cfg.nameservers.clone(),
                        ssh_keys: ssh_keys(z),
                    }),
                )
                .await
                .map_err(|e| vmm_err("the NoCloud seed", e))?;
            let mut disks = Vec::new();
            let mut shares = Vec::new();
            for (i, it) in items.iter().enumerate() {
                match it {
                    Item::Disk { path, .. } => disks.push(Disk {
                        path: path.clone(),
                        serial: format!("zd{i}"),
                        read_only: false,
                    }),
                    Item::Volume { path, .. } => shares.push(Share {
                        tag: format!("v{i}"),
                        path: path.clone(),
                    }),
                }
            }
            disks.push(Disk {
                path: cidata,
                serial: "cidata".into(),
                read_only: true,
            });
            VmSpec {
                name: vm.clone(),
                cpus: z.compute_capacity.cpu,
                memory,
                boot: Boot::Disk,
                shares,
                disks,
                nics,
            }
        } else {
            let _ = self.flists.unmount(&probe).await;
            let (kernel, initramfs) = self.guest_boot_files().await?;
            let root_vol = format!("{vm}-root");
            let vol = match self
                .storage
                .volume_get(&root_vol)
                .await
                .context("the root volume")?
            {
                Some(v) => v,
                None => self
                    .storage
                    .volume_create(&root_vol, z.root_size())
                    .await
                    .context("the root volume")?,
            };
            let root = self
                .flists
                .mount_writable(&vm, &z.flist, &vol.path)
                .await
                .context(format!("flist {}", z.flist))?;
            let mut shares = vec![Share {
                tag: ROOT_TAG.into(),
                path: root.mountpoint.clone(),
            }];
            let mut disks = Vec::new();
            let mut mounts = Vec::new();
            for (i, it) in items.iter().enumerate() {
                match it {
                    Item::Disk { path, target } => {
                        let serial = format!("zd{i}");
                        self.vmm
                            .prepare_disk(
                                path,
                                DiskPrep::Format {
                                    label: serial.clone(),
                                },
                            )
                            .await
                            .map_err(|e| vmm_err(&format!("mounts[{i}]: formatting"), e))?;
                        disks.push(Disk {
                            path: path.clone(),
                            serial: serial.clone(),
                            read_only: false,
                        });
                        mounts.push(MountSpec::Disk {
                            serial,
                            fstype: "ext4".into(),
                            target: target.clone(),
                        });
                    }
                    Item::Volume { path, target } => {
                        let tag = format!("v{i}");
                        shares.push(Share {
                            tag: tag.clone(),
                            path: path.clone(),
                        });
                        mounts.push(MountSpec::Virtiofs {
                            tag,
                            target: target.clone(),
                        });
                    }
                }
            }
            let mut interfaces = vec![interface(&private, public.is_none())];
            interfaces.extend(public.as_ref().map(|p| interface(p, true)));
            let seed = Seed {
                version: SEED_VERSION,
                instance_id: vm.clone(),
                hostname: hostname(&id.name),
                root_tag: ROOT_TAG.into(),
                mounts,
                interfaces,
                nameservers: self.cfg.nameservers.clone(),
                ssh_keys: ssh_keys(z),
                entrypoint: z.entrypoint.clone(),
                env: z.env.clone(),
            };
            seed.validate()
                .map_err(|e| ManagerError::Invalid(e.to_string()))?;
            VmSpec {
                name: vm.clone(),
                cpus: z.compute_capacity.cpu,
                memory,
                boot: Boot::Kernel {
                    kernel,
                    initramfs,
                    cmdline: String::new(),
                    seed: Some(Box::new(seed)),
                },
                shares,
                disks,
                nics,
            }
        };
        let info = self.vmm.create(spec).await.context("the virtual machine")?;
        Ok(to_data(&ZmachineResult {
            id: vm,
            ip: z.network.interfaces[0].ip.to_string(),
            public_ip: public
                .as_ref()
                .and_then(|p| p.ipv4)
                .map(|n| n.to_string())
                .unwrap_or_default(),
            public_ip6: public
                .as_ref()
                .and_then(|p| p.ipv6)
                .map(|n| n.to_string())
                .unwrap_or_default(),
            mode: if vm_mode { "vm" } else { "container" }.into(),
            console_url: format!("file://{}", info.console_log.display()),
        }))
    }

    /// Removes everything of machine `id`; what is already gone is fine.
    async fn remove(&self, id: &WorkloadId) -> Result<(), ManagerError> {
        let vm = id.to_string();
        self.vmm.delete(&vm).await.context("the virtual machine")?;
        if let Some(rec) = self.load_record(&vm) {
            for n in &rec.networks {
                self.net
                    .detach_private(id, n)
                    .await
                    .context(format!("network {n}"))?;
            }
            if let Some(p) = rec.public_ip {
                let ip_wl = WorkloadId {
                    twin: id.twin,
                    contract: id.contract,
                    name: p,
                };
                self.net
                    .detach_public(&ip_wl)
                    .await
                    .context("network.public_ip")?;
            }
        }
        for m in [vm.clone(), format!("{vm}-ro")] {
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
                    tracing::warn!(workload = %t.id, "cleanup after a failed zmachine: {}", e2.message());
                }
                Err(e)
            }
        }
    }
}

impl<N, S, F, V> Manager for ZmachineManager<N, S, F, V>
where
    N: Networker + 'static,
    S: Storage + 'static,
    F: FlistManager + 'static,
    V: Vmm + 'static,
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
    use std::path::Path;

    use base64::Engine;
    use zos_types::capacity::{GIB, MIB};
    use zos_types::workload::{ComputeCapacity, MachineInterface, MachineNetwork, Mount, Network};

    use super::*;
    use zos_mounts::MemoryFlists;
    use zos_net::{Call, RecordingNetworker};
    use zos_storage::{DiskKind, MemoryStorage};
    use zos_vmm::MemoryVmm;

    type Mgr = ZmachineManager<RecordingNetworker, MemoryStorage, MemoryFlists, MemoryVmm>;

    struct Bed {
        mgr: Mgr,
        net: Arc<RecordingNetworker>,
        storage: Arc<MemoryStorage>,
        flists: Arc<MemoryFlists>,
        vmm: Arc<MemoryVmm>,
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
        let mgr = ZmachineManager::new(
            net.clone(),
            storage.clone(),
            flists.clone(),
            vmm.clone(),
            ZmachineConfig {
                kernel: "/guest/vmlinux".into(),
                guest_mount: guest_mount.map(str::to_string),
                initramfs: "/guest/initramfs.cpio".into(),
                state_dir: dir.path().join("zmachine"),
                nameservers: vec!["1.1.1.1".parse().unwrap()],
            },
        );
        Bed {
            mgr,
            net,
            storage,
            flists,
            vmm,
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
        assert_eq!(kernel, Path::new("/guest/vmlinux"));
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
        let prepared = b.vmm.prepared();
        assert_eq!(prepared.len(), 1);
        assert!(matches!(&prepared[0].1, DiskPrep::Format { label } if label == "zd0"));
        assert_eq!(vm.spec.disks[0].serial, "zd0");

        // Again: the same machine.
        assert_eq!(provision(&b, "vm_1", &z).await.unwrap(), res);
        assert_eq!(b.vmm.list().await.unwrap().len(), 1);

        // Pause and resume reach the VMM.
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
        let prepared = b.vmm.prepared();
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
            assert!(b.vmm.prepared().is_empty(), "nothing written");
            assert!(b.vmm.info(&format!("7-1-{name}")).await.unwrap().is_none());
        }
    }

    #[tokio::test]
    async fn guest_kernel_linking_to_a_host_file_is_refused_and_real_files_are_copied() {
        let b = bed_with(Some("zos-guest")).await;
        let m = err(provision(&b, "early", &machine()).await);
        assert!(m.contains("not mounted yet"), "{m}");
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

    #[test]
    fn hostnames() {
        assert_eq!(hostname("Web_1"), "web-1");
        assert_eq!(hostname("_x_"), "x");
        assert_eq!(hostname("___"), "zmachine");
    }
}
