//! The machine plan: what a `zmachine` workload becomes on this node, computed without side
//! effects from the workload and what the manager resolved for it (the mode its flist says,
//! its mounts' storage items, its network attachments, the node's facts).
//!
//! [`plan`] refuses what cannot run (a VM-mode flist whose first mount is not a zmount, a seed
//! that breaks its rules) before anything is written; [`MachinePlan::spec`] is the VM the
//! manager's `apply` creates once the disks and the root are ready.

use std::net::IpAddr;
use std::path::{Path, PathBuf};

use zos_guest_init::seed::{Interface, MountSpec, Route, SEED_VERSION, Seed};
use zos_net::Attachment;
use zos_types::deployment::WorkloadId;
use zos_types::node_api::results::ZmachineResult;
use zos_types::workload::Zmachine;
use zos_vmm::{Boot, Disk, Nic, Share, VmSpec};

use crate::error::ManagerError;
use crate::images::{NoCloud, NoCloudNic, OpenedFile};

/// The virtiofs tag of a container-mode root.
pub const ROOT_TAG: &str = "vroot";
/// The serial of a VM-mode machine's NoCloud seed disk.
pub const CIDATA_SERIAL: &str = "cidata";

/// A mount resolved to the storage item of the workload it names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MountItem {
    /// A zmount: a virtio disk.
    Disk { path: PathBuf, target: String },
    /// A volume: a virtiofs share.
    Volume { path: PathBuf, target: String },
}

/// What the machine's flist says it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FlistMode {
    /// The flist has `image.raw` (opened inside the flist): it is written onto the first mount,
    /// which the firmware boots.
    Vm { image: OpenedFile },
    /// Anything else: the flist is the root, booted with the node's guest kernel and
    /// initramfs (the files QEMU boots).
    Container { kernel: PathBuf, initramfs: PathBuf },
}

/// Everything the manager found before planning.
#[derive(Debug, Clone)]
pub struct Resolved {
    pub mode: FlistMode,
    /// One per mount of the workload, in its order.
    pub mounts: Vec<MountItem>,
    /// The machine's interface on its private network.
    pub private: Attachment,
    /// The interface of its `ip` workload, if it has one.
    pub public: Option<Attachment>,
}

/// The node's facts a plan uses.
#[derive(Debug, Clone)]
pub struct NodeFacts {
    /// Resolvers the machines are given.
    pub nameservers: Vec<IpAddr>,
    /// Where this machine's NoCloud seed image goes (VM mode).
    pub cidata: PathBuf,
}

/// A container-mode machine's root: the flist mounted writable, its changes on a volume.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RootPlan {
    /// The flist mount's name (the machine's name).
    pub mount: String,
    pub flist: String,
    /// The volume that holds the root's changes.
    pub volume: String,
    pub size: u64,
}

/// A zmount a container formats when it is blank.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FormatPlan {
    /// Its index in the workload's mounts.
    pub mount: usize,
    pub path: PathBuf,
    /// The file system's label: the disk's serial (`zd<i>`).
    pub label: String,
}

/// How the machine boots, and what is prepared for it first.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BootPlan {
    /// VM mode: `image` written onto the disk `first_disk` when blank, the NoCloud `seed`
    /// written to `cidata`; the firmware boots the first disk.
    Vm {
        image: OpenedFile,
        first_disk: PathBuf,
        cidata: PathBuf,
        seed: NoCloud,
    },
    /// Container mode: the root mounted, the zmounts `formats` formatted ext4 when blank;
    /// the node's kernel boots with the `guest-init` seed.
    Container {
        root: RootPlan,
        formats: Vec<FormatPlan>,
        kernel: PathBuf,
        initramfs: PathBuf,
        seed: Box<Seed>,
    },
}

/// What the machine is made of, ready to apply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MachinePlan {
    pub name: String,
    pub cpus: u8,
    /// Bytes, a whole number of MiB.
    pub memory: u64,
    pub boot: BootPlan,
    /// Block devices, in the order the guest sees them.
    pub disks: Vec<Disk>,
    /// The volumes' shares (a container's root share comes first, added by [`Self::spec`]).
    pub shares: Vec<Share>,
    pub nics: Vec<Nic>,
    /// The workload's result, less the console (known once the VM exists).
    pub result: ZmachineResult,
}

impl MachinePlan {
    /// Whether the machine boots its own image.
    pub fn vm_mode(&self) -> bool {
        matches!(self.boot, BootPlan::Vm { .. })
    }

    /// The VM to create; `root` is where a container's root is mounted.
    pub fn spec(&self, root: Option<&Path>) -> VmSpec {
        let mut shares = Vec::new();
        if let Some(root) = root {
            shares.push(Share {
                tag: ROOT_TAG.into(),
                path: root.to_path_buf(),
            });
        }
        shares.extend(self.shares.iter().cloned());
        let boot = match &self.boot {
            BootPlan::Vm { .. } => Boot::Disk,
            BootPlan::Container {
                kernel,
                initramfs,
                seed,
                ..
            } => Boot::Kernel {
                kernel: kernel.clone(),
                initramfs: initramfs.clone(),
                cmdline: String::new(),
                seed: Some(seed.clone()),
            },
        };
        VmSpec {
            name: self.name.clone(),
            cpus: self.cpus,
            memory: self.memory,
            boot,
            shares,
            disks: self.disks.clone(),
            nics: self.nics.clone(),
        }
    }

    /// The workload's result once the VM exists, with its console log.
    pub fn result(&self, console_log: &Path) -> ZmachineResult {
        ZmachineResult {
            console_url: format!("file://{}", console_log.display()),
            ..self.result.clone()
        }
    }
}

/// The machine `z` of workload `id` becomes, from what was resolved for it.
pub fn plan(
    id: &WorkloadId,
    z: &Zmachine,
    r: &Resolved,
    node: &NodeFacts,
) -> Result<MachinePlan, ManagerError> {
    let name = id.to_string();
    let mut nics = vec![nic(&r.private)];
    nics.extend(r.public.as_ref().map(nic));
    let mut disks = Vec::new();
    let mut shares = Vec::new();
    for (i, it) in r.mounts.iter().enumerate() {
        match it {
            MountItem::Disk { path, .. } => disks.push(Disk {
                path: path.clone(),
                serial: format!("zd{i}"),
                read_only: false,
            }),
            MountItem::Volume { path, .. } => shares.push(Share {
                tag: format!("v{i}"),
                path: path.clone(),
            }),
        }
    }
    let boot = boot(id, z, r, node)?;
    if matches!(boot, BootPlan::Vm { .. }) {
        disks.push(Disk {
            path: node.cidata.clone(),
            serial: CIDATA_SERIAL.into(),
            read_only: true,
        });
    }
    let result = ZmachineResult {
        id: name.clone(),
        ip: z.network.interfaces[0].ip.to_string(),
        public_ip: public_addr(r.public.as_ref(), |a| a.ipv4.map(|n| n.to_string())),
        public_ip6: public_addr(r.public.as_ref(), |a| a.ipv6.map(|n| n.to_string())),
        mode: if matches!(boot, BootPlan::Vm { .. }) {
            "vm"
        } else {
            "container"
        }
        .into(),
        console_url: String::new(),
    };
    Ok(MachinePlan {
        name,
        cpus: z.compute_capacity.cpu,
        memory: z.compute_capacity.memory & !((1 << 20) - 1),
        boot,
        disks,
        shares,
        nics,
        result,
    })
}

/// How the machine boots: VM mode's image and seed, or container mode's root, formats and seed.
fn boot(
    id: &WorkloadId,
    z: &Zmachine,
    r: &Resolved,
    node: &NodeFacts,
) -> Result<BootPlan, ManagerError> {
    Ok(match &r.mode {
        FlistMode::Vm { image } => {
            let Some(MountItem::Disk {
                path: first_disk, ..
            }) = r.mounts.first()
            else {
                return Err(ManagerError::Invalid(
                    "mounts[0]: a VM-mode flist (with image.raw) boots from its first mount, \
                     which must be a zmount"
                        .into(),
                ));
            };
            BootPlan::Vm {
                image: image.clone(),
                first_disk: first_disk.clone(),
                cidata: node.cidata.clone(),
                seed: nocloud(id, z, &r.private, r.public.as_ref(), node),
            }
        }
        FlistMode::Container { kernel, initramfs } => {
            let seed = seed(id, z, r, node);
            seed.validate()
                .map_err(|e| ManagerError::Invalid(e.to_string()))?;
            BootPlan::Container {
                root: RootPlan {
                    mount: id.to_string(),
                    flist: z.flist.clone(),
                    volume: format!("{id}-root"),
                    size: z.root_size(),
                },
                formats: formats(&r.mounts),
                kernel: kernel.clone(),
                initramfs: initramfs.clone(),
                seed: Box::new(seed),
            }
        }
    })
}

fn public_addr(p: Option<&Attachment>, f: impl Fn(&Attachment) -> Option<String>) -> String {
    p.and_then(f).unwrap_or_default()
}

fn nic(a: &Attachment) -> Nic {
    Nic {
        tap: a.ifname.clone(),
        mac: a.mac_string(),
    }
}

/// The zmounts a container formats (when blank), labelled with their serials.
fn formats(mounts: &[MountItem]) -> Vec<FormatPlan> {
    mounts
        .iter()
        .enumerate()
        .filter_map(|(i, it)| match it {
            MountItem::Disk { path, .. } => Some(FormatPlan {
                mount: i,
                path: path.clone(),
                label: format!("zd{i}"),
            }),
            MountItem::Volume { .. } => None,
        })
        .collect()
}

/// The `guest-init` seed of a container-mode machine.
fn seed(id: &WorkloadId, z: &Zmachine, r: &Resolved, node: &NodeFacts) -> Seed {
    let mounts = r
        .mounts
        .iter()
        .enumerate()
        .map(|(i, it)| match it {
            MountItem::Disk { target, .. } => MountSpec::Disk {
                serial: format!("zd{i}"),
                fstype: "ext4".into(),
                target: target.clone(),
            },
            MountItem::Volume { target, .. } => MountSpec::Virtiofs {
                tag: format!("v{i}"),
                target: target.clone(),
            },
        })
        .collect();
    let mut interfaces = vec![interface(&r.private, r.public.is_none())];
    interfaces.extend(r.public.as_ref().map(|p| interface(p, true)));
    Seed {
        version: SEED_VERSION,
        instance_id: id.to_string(),
        hostname: hostname(&id.name),
        root_tag: ROOT_TAG.into(),
        mounts,
        interfaces,
        nameservers: node.nameservers.clone(),
        ssh_keys: ssh_keys(z),
        entrypoint: z.entrypoint.clone(),
        env: z.env.clone(),
    }
}

/// The NoCloud seed of a VM-mode machine.
fn nocloud(
    id: &WorkloadId,
    z: &Zmachine,
    private: &Attachment,
    public: Option<&Attachment>,
    node: &NodeFacts,
) -> NoCloud {
    let mut nics = vec![nocloud_nic(private, public.is_none())];
    nics.extend(public.map(|p| nocloud_nic(p, true)));
    NoCloud {
        instance_id: id.to_string(),
        hostname: hostname(&id.name),
        nics,
        nameservers: node.nameservers.clone(),
        ssh_keys: ssh_keys(z),
    }
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

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use zos_types::capacity::MIB;
    use zos_types::workload::{ComputeCapacity, MachineInterface, MachineNetwork, Mount};

    use super::*;

    fn id() -> WorkloadId {
        WorkloadId {
            twin: 7,
            contract: 1,
            name: "Web_1".into(),
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
                memory: 512 * MIB + 5,
            },
            mounts: ["data", "vol", "logs"]
                .map(|n| Mount {
                    name: n.into(),
                    mountpoint: format!("/{n}"),
                })
                .to_vec(),
            entrypoint: "/bin/httpd -f".into(),
            env: BTreeMap::from([("SSH_KEY".to_string(), "k1\nk2,".to_string())]),
            corex: false,
            gpu: vec![],
        }
    }

    fn private() -> Attachment {
        Attachment {
            ifname: "tap-priv".into(),
            bridge: "br-net1".into(),
            mac: [2, 0, 0, 0, 0, 1],
            ipv4: Some("10.20.1.5/24".parse().unwrap()),
            gateway4: Some("10.20.1.1".parse().unwrap()),
            ipv6: None,
            gateway6: None,
            routes: vec!["10.20.0.0/16".parse().unwrap()],
        }
    }

    fn public() -> Attachment {
        Attachment {
            ifname: "tap-pub".into(),
            bridge: "br-pub".into(),
            mac: [2, 0, 0, 0, 0, 2],
            ipv4: Some("198.51.100.10/24".parse().unwrap()),
            gateway4: Some("198.51.100.1".parse().unwrap()),
            ipv6: Some("2001:db8::10/64".parse().unwrap()),
            gateway6: Some("2001:db8::1".parse().unwrap()),
            routes: vec![],
        }
    }

    fn mounts() -> Vec<MountItem> {
        vec![
            MountItem::Disk {
                path: "/p/data".into(),
                target: "/data".into(),
            },
            MountItem::Volume {
                path: "/p/vol".into(),
                target: "/vol".into(),
            },
            MountItem::Disk {
                path: "/p/logs".into(),
                target: "/logs".into(),
            },
        ]
    }

    fn container(public_ip: Option<Attachment>) -> Resolved {
        Resolved {
            mode: FlistMode::Container {
                kernel: "/g/vmlinux".into(),
                initramfs: "/g/initramfs.cpio".into(),
            },
            mounts: mounts(),
            private: private(),
            public: public_ip,
        }
    }

    fn image() -> OpenedFile {
        let f = tempfile::tempfile().unwrap();
        OpenedFile::new(f, "flist x: image.raw")
    }

    fn facts() -> NodeFacts {
        NodeFacts {
            nameservers: vec!["1.1.1.1".parse().unwrap()],
            cidata: "/state/7-1-Web_1-cidata.iso".into(),
        }
    }

    #[test]
    fn a_container_boots_the_guest_kernel_with_its_seed_and_formats_its_zmounts() {
        let p = plan(&id(), &machine(), &container(None), &facts()).unwrap();
        assert!(!p.vm_mode());
        assert_eq!(
            (p.name.as_str(), p.cpus, p.memory),
            ("7-1-Web_1", 2, 512 * MIB)
        );
        let serials: Vec<&str> = p.disks.iter().map(|d| d.serial.as_str()).collect();
        assert_eq!(serials, ["zd0", "zd2"]);
        assert_eq!(p.shares[0].tag, "v1");
        let BootPlan::Container {
            root,
            formats,
            seed,
            ..
        } = &p.boot
        else {
            panic!("{:?}", p.boot);
        };
        assert_eq!(root.volume, "7-1-Web_1-root");
        assert_eq!(root.mount, "7-1-Web_1");
        assert_eq!(root.size, machine().root_size());
        let f: Vec<(usize, &str)> = formats
            .iter()
            .map(|f| (f.mount, f.label.as_str()))
            .collect();
        assert_eq!(f, [(0, "zd0"), (2, "zd2")]);
        assert_eq!(seed.hostname, "web-1");
        assert_eq!(seed.ssh_keys, ["k1", "k2"]);
        assert_eq!(seed.root_tag, ROOT_TAG);
        assert_eq!(seed.mounts.len(), 3);
        assert_eq!(seed.interfaces.len(), 1);
        // Without a public interface, the private one holds the default route.
        assert_eq!(
            seed.interfaces[0].gateway4,
            Some("10.20.1.1".parse().unwrap())
        );
        assert_eq!(seed.nameservers, facts().nameservers);

        let spec = p.spec(Some(Path::new("/mnt/7-1-Web_1")));
        spec.validate().unwrap();
        assert_eq!(spec.shares[0].tag, ROOT_TAG);
        assert_eq!(spec.shares[0].path, Path::new("/mnt/7-1-Web_1"));
        assert_eq!(spec.shares[1].tag, "v1");
        let Boot::Kernel {
            kernel, cmdline, ..
        } = &spec.boot
        else {
            panic!("{:?}", spec.boot);
        };
        assert_eq!(kernel, Path::new("/g/vmlinux"));
        assert_eq!(cmdline, "", "no kernel arguments beyond the VMM's own");
        assert_eq!(p.result.mode, "container");
        assert_eq!(p.result.ip, "10.20.1.5");
        assert_eq!(p.result(Path::new("/c.log")).console_url, "file:///c.log");
    }

    #[test]
    fn a_public_interface_comes_second_and_takes_the_default_route() {
        let p = plan(&id(), &machine(), &container(Some(public())), &facts()).unwrap();
        let taps: Vec<&str> = p.nics.iter().map(|n| n.tap.as_str()).collect();
        assert_eq!(taps, ["tap-priv", "tap-pub"]);
        assert_eq!(p.nics[1].mac, "02:00:00:00:00:02");
        let BootPlan::Container { seed, .. } = &p.boot else {
            panic!();
        };
        assert_eq!(seed.interfaces[0].gateway4, None);
        assert_eq!(
            seed.interfaces[1].gateway4,
            Some("198.51.100.1".parse().unwrap())
        );
        assert_eq!(seed.interfaces[1].addresses.len(), 2);
        assert_eq!(p.result.public_ip, "198.51.100.10/24");
        assert_eq!(p.result.public_ip6, "2001:db8::10/64");
    }

    #[test]
    fn a_vm_boots_its_first_zmount_with_a_nocloud_seed_last() {
        let image = image();
        let r = Resolved {
            mode: FlistMode::Vm {
                image: image.clone(),
            },
            ..container(Some(public()))
        };
        let p = plan(&id(), &machine(), &r, &facts()).unwrap();
        assert!(p.vm_mode());
        let serials: Vec<&str> = p.disks.iter().map(|d| d.serial.as_str()).collect();
        assert_eq!(serials, ["zd0", "zd2", CIDATA_SERIAL]);
        assert!(p.disks[2].read_only);
        assert_eq!(p.disks[2].path, facts().cidata);
        let BootPlan::Vm {
            image: i,
            first_disk,
            seed,
            ..
        } = &p.boot
        else {
            panic!("{:?}", p.boot);
        };
        assert_eq!(i, &image, "the same open file, never reopened");
        assert_eq!(first_disk, Path::new("/p/data"));
        assert_eq!(seed.instance_id, "7-1-Web_1");
        assert_eq!(seed.hostname, "web-1");
        assert_eq!(seed.ssh_keys, ["k1", "k2"]);
        assert_eq!(seed.nics.len(), 2);
        assert_eq!(seed.nics[0].gateway4, None);
        assert_eq!(seed.nics[0].routes.len(), 1);
        assert!(seed.network_config().contains("gateway4: 198.51.100.1"));
        let spec = p.spec(None);
        spec.validate().unwrap();
        assert_eq!(spec.boot, Boot::Disk);
        assert_eq!(p.result.mode, "vm");
    }

    #[test]
    fn what_cannot_run_is_refused_before_anything_is_written() {
        // VM mode boots its first mount: a volume there is refused.
        let mut r = Resolved {
            mode: FlistMode::Vm { image: image() },
            ..container(None)
        };
        r.mounts.swap(0, 1);
        let e = plan(&id(), &machine(), &r, &facts()).unwrap_err();
        assert!(e.message().starts_with("mounts[0]: a VM-mode flist"), "{e}");
        assert_eq!(e.kind(), zos_types::node_api::ErrorKind::Invalid);
        // A seed breaking its rules (a mount target that is not absolute).
        let mut r = container(None);
        r.mounts[1] = MountItem::Volume {
            path: "/p/vol".into(),
            target: "relative".into(),
        };
        let e = plan(&id(), &machine(), &r, &facts()).unwrap_err();
        assert!(e.message().contains("mounts[1]"), "{}", e.message());
    }

    #[test]
    fn hostnames() {
        assert_eq!(hostname("Web_1"), "web-1");
        assert_eq!(hostname("_x_"), "x");
        assert_eq!(hostname("___"), "zmachine");
    }
}
