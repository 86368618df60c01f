//! Parts of the devnet's VM nodes (`zos devnet up --vm-nodes N`, put together by [`crate::vms`]):
//! the accelerator choice, each node VM's QEMU command line (2 GiB, two sparse virtio disks, a tap
//! on the devnet bridge, network boot through QEMU's iPXE ROM, serial console to a file and a socket to type on) and the
//! command line of the `dnsmasq` that gives the VMs DHCP and the grid's iPXE script. See
//! docs/devnet.md.

use std::path::{Path, PathBuf};

/// How QEMU runs a node VM.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Accel {
    Kvm,
    Tcg,
}

impl Accel {
    pub fn as_str(self) -> &'static str {
        match self {
            Accel::Kvm => "kvm",
            Accel::Tcg => "tcg",
        }
    }
}

/// KVM when the CPU flags of `/proc/cpuinfo` have `vmx` or `svm`.
pub fn cpu_has_virtualization(cpuinfo: &str) -> bool {
    cpuinfo
        .lines()
        .filter(|l| l.starts_with("flags"))
        .flat_map(|l| l.split_whitespace())
        .any(|f| f == "vmx" || f == "svm")
}

/// KVM when the CPU has `vmx` or `svm` and `/dev/kvm` is there, else TCG. (A `/dev/kvm` without
/// those flags, like this project's PVM hosts, hangs stock kernels: TCG.)
pub fn accel() -> Accel {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    if cpu_has_virtualization(&cpuinfo) && Path::new("/dev/kvm").exists() {
        Accel::Kvm
    } else {
        Accel::Tcg
    }
}

/// A locally administered MAC for node VM `index` of devnet `name` (stable across restarts).
pub fn node_mac(name: &str, index: usize) -> String {
    let mut h: u32 = 0x811c_9dc5;
    for b in name.bytes() {
        h = (h ^ u32::from(b)).wrapping_mul(0x0100_0193);
    }
    let [a, b, _, _] = h.to_be_bytes();
    let i = u16::try_from(index).unwrap_or(u16::MAX).to_be_bytes();
    format!("52:54:{a:02x}:{b:02x}:{:02x}:{:02x}", i[0], i[1])
}

/// One node VM.
#[derive(Debug, Clone)]
pub struct VmNode {
    /// QEMU's `-name`, also its marker on the command line.
    pub name: String,
    pub accel: Accel,
    pub memory_mib: u64,
    pub vcpus: u32,
    /// Sparse disk images (raw), attached as virtio disks in order.
    pub disks: Vec<PathBuf>,
    /// The tap on the devnet bridge.
    pub tap: String,
    pub mac: String,
    /// Serial console log.
    pub serial: PathBuf,
    /// A bootloader ISO to boot from instead of the network.
    pub iso: Option<PathBuf>,
}

impl VmNode {
    /// QEMU's arguments: q35, no display, network boot first (the iPXE ROM of `ipxe-qemu`
    /// on the virtio NIC), the disks, the tap without vhost (this machine has no vhost-net) and
    /// no reboot (a node that powers off stays off, as `devnet down` expects).
    pub fn qemu_args(&self) -> Vec<String> {
        let mut a: Vec<String> = [
            "-name",
            &self.name,
            "-M",
            "q35",
            "-accel",
            self.accel.as_str(),
            "-cpu",
            if self.accel == Accel::Kvm {
                "host"
            } else {
                "max"
            },
            "-m",
            &self.memory_mib.to_string(),
            "-smp",
            &self.vcpus.to_string(),
            "-nodefaults",
            "-no-user-config",
            "-display",
            "none",
            "-no-reboot",
            "-chardev",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        // A socket to type on (a debug shell's input), everything the node prints also
        // appended to the log: the log of every boot of the node stays.
        a.push(format!(
            "socket,id=serial0,path={},server=on,wait=off,logfile={},logappend=on",
            console_socket(&self.serial).display(),
            self.serial.display()
        ));
        a.extend(["-serial".into(), "chardev:serial0".into()]);
        // Boot first: the NIC's iPXE ROM, or the ISO on the q35's AHCI (its iPXE then uses
        // the NIC).
        let nic_boot = match &self.iso {
            None => ",bootindex=0",
            Some(iso) => {
                a.extend([
                    "-drive".into(),
                    format!(
                        "file={},if=none,id=cd0,media=cdrom,readonly=on",
                        iso.display()
                    ),
                    "-device".into(),
                    "ide-cd,drive=cd0,bus=ide.0,bootindex=0".into(),
                ]);
                ""
            }
        };
        a.extend([
            "-netdev".into(),
            format!("tap,id=n0,ifname={},script=no,downscript=no", self.tap),
            "-device".into(),
            format!("virtio-net-pci,netdev=n0,mac={}{nic_boot}", self.mac),
        ]);
        // virtio-scsi, so each disk says whether it spins: the first is an SSD (rotation rate
        // 1), the others HDDs, as storage sorts a server's disks.
        a.extend(["-device".into(), "virtio-scsi-pci,id=scsi0".into()]);
        for (i, d) in self.disks.iter().enumerate() {
            a.extend([
                "-drive".into(),
                format!(
                    "file={},if=none,id=d{i},format=raw,cache=none,aio=threads,discard=unmap",
                    d.display()
                ),
                "-device".into(),
                format!(
                    "scsi-hd,bus=scsi0.0,drive=d{i},serial=zos-disk-{i},rotation_rate={}",
                    if i == 0 { 1 } else { 7200 }
                ),
            ]);
        }
        a
    }
}

/// The socket of a node VM's serial console, beside its log `serial`.
pub fn console_socket(serial: &Path) -> PathBuf {
    serial.with_extension("sock")
}

/// Makes sparse disk files (they cost only what the node writes).
pub fn make_disks(dir: &Path, sizes: &[u64]) -> std::io::Result<Vec<PathBuf>> {
    std::fs::create_dir_all(dir)?;
    sizes
        .iter()
        .enumerate()
        .map(|(i, size)| {
            let path = dir.join(format!("disk{i}.raw"));
            std::fs::File::create(&path)?.set_len(*size)?;
            Ok(path)
        })
        .collect()
}

/// The devnet's DHCP server for its VM nodes.
#[derive(Debug, Clone)]
pub struct Dhcp {
    pub bridge: String,
    /// First and last address handed out.
    pub range: (String, String),
    /// The grid's iPXE script for the farm, as nodes reach it
    /// (`{grid}/boot/{runmode}/farms/{farm}.ipxe`).
    pub ipxe_script: String,
    /// The devnet's VMs by MAC, and the file of [`Self::tftp_root`] each boots (its bootloader
    /// script, with its own node arguments).
    pub hosts: Vec<(String, String)>,
    pub tftp_root: PathBuf,
    /// The bridge's address: the TFTP server the VMs ask.
    pub server: String,
    pub pid_file: PathBuf,
    pub lease_file: PathBuf,
    pub log_file: PathBuf,
}

impl Dhcp {
    /// `dnsmasq` arguments: DHCP only (no DNS), on the bridge only; a client that is already
    /// iPXE (option 175) gets the grid's script, any other the script's URL as boot file too
    /// (QEMU's ROM is iPXE, so it always is). A VM of [`Self::hosts`] is tagged `vmN` by its MAC
    /// and gets its own script over TFTP (read-only, from [`Self::tftp_root`], on the bridge
    /// only); the other entries exclude those tags, so which entry a client gets does not
    /// depend on dnsmasq's order. (dnsmasq cuts a boot file name at its first comma.)
    pub fn dnsmasq_args(&self) -> Vec<String> {
        let tags: String = (1..=self.hosts.len())
            .map(|i| format!("tag:!vm{i},"))
            .collect();
        let mut per_vm = Vec::new();
        for (i, (mac, url)) in self.hosts.iter().enumerate() {
            per_vm.push(format!("--dhcp-host={mac},set:vm{}", i + 1));
            per_vm.push(format!(
                "--dhcp-boot=tag:vm{},{url},,{}",
                i + 1,
                self.server
            ));
        }
        let mut args: Vec<String> = vec![
            "--keep-in-foreground".into(),
            "--port=0".into(),
            "--bind-interfaces".into(),
            format!("--interface={}", self.bridge),
            "--except-interface=lo".into(),
            format!(
                "--dhcp-range={},{},255.255.255.0,1h",
                self.range.0, self.range.1
            ),
            format!("--dhcp-leasefile={}", self.lease_file.display()),
            format!("--pid-file={}", self.pid_file.display()),
            format!("--log-facility={}", self.log_file.display()),
            "--log-dhcp".into(),
            "--dhcp-match=set:ipxe,175".into(),
            format!("--dhcp-boot=tag:ipxe,{tags}{}", self.ipxe_script),
            format!("--dhcp-boot={tags}{}", self.ipxe_script),
            "--dhcp-authoritative".into(),
            "--enable-tftp".into(),
            format!("--tftp-root={}", self.tftp_root.display()),
        ];
        args.extend(per_vm);
        args
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kvm_only_with_vmx_or_svm() {
        assert!(cpu_has_virtualization(
            "processor : 0\nflags\t\t: fpu vme sse4_2 vmx ept\n"
        ));
        assert!(cpu_has_virtualization("flags : fpu svm npt\n"));
        assert!(!cpu_has_virtualization(
            "flags : fpu vme sse4_2 hypervisor\n"
        ));
        assert!(!cpu_has_virtualization("model name : vmx svm\n"));
        assert!(!cpu_has_virtualization(""));
    }

    #[test]
    fn macs_are_local_stable_and_distinct() {
        let a = node_mac("dev", 0);
        assert_eq!(a, node_mac("dev", 0));
        assert_ne!(a, node_mac("dev", 1));
        assert_ne!(a, node_mac("other", 0));
        assert!(a.starts_with("52:54:"));
        assert_eq!(a.split(':').count(), 6);
    }

    #[test]
    fn qemu_boots_by_network_with_two_disks_and_a_serial_log() {
        let vm = VmNode {
            name: "zos-dev-vm1".into(),
            accel: Accel::Tcg,
            memory_mib: 2048,
            vcpus: 2,
            disks: vec!["/d/disk0.raw".into(), "/d/disk1.raw".into()],
            tap: "devvt1".into(),
            mac: node_mac("dev", 1),
            serial: "/d/serial.log".into(),
            iso: None,
        };
        let a = vm.qemu_args().join(" ");
        assert!(a.contains("-accel tcg -cpu max -m 2048 -smp 2"), "{a}");
        assert!(a.contains(",bootindex=0"));
        assert!(!a.contains("cdrom"));
        let iso = VmNode {
            iso: Some("/d/boot.iso".into()),
            ..vm.clone()
        }
        .qemu_args()
        .join(" ");
        assert!(
            iso.contains("file=/d/boot.iso,if=none,id=cd0,media=cdrom,readonly=on -device ide-cd,drive=cd0,bus=ide.0,bootindex=0"),
            "{iso}"
        );
        assert!(
            iso.contains(&format!("virtio-net-pci,netdev=n0,mac={} ", vm.mac)),
            "{iso}"
        );
        assert!(a.contains(
            "-chardev socket,id=serial0,path=/d/serial.sock,server=on,wait=off,\
             logfile=/d/serial.log,logappend=on -serial chardev:serial0"
        ));
        assert!(a.contains("tap,id=n0,ifname=devvt1,script=no,downscript=no"));
        assert!(!a.contains("vhost"));
        assert!(a.contains("file=/d/disk0.raw,if=none,id=d0,format=raw"));
        assert!(a.contains("scsi-hd,bus=scsi0.0,drive=d0,serial=zos-disk-0,rotation_rate=1"));
        assert!(a.contains("scsi-hd,bus=scsi0.0,drive=d1,serial=zos-disk-1,rotation_rate=7200"));
        assert!(a.contains("-no-reboot"));
    }

    #[test]
    fn disks_are_sparse() {
        use std::os::unix::fs::MetadataExt;
        let d = tempfile::tempdir().unwrap();
        let disks = make_disks(d.path(), &[1 << 30, 2 << 30]).unwrap();
        assert_eq!(disks.len(), 2);
        let m = std::fs::metadata(&disks[1]).unwrap();
        assert_eq!(m.len(), 2 << 30);
        assert_eq!(m.blocks(), 0, "a new disk allocates nothing");
    }

    #[test]
    fn dnsmasq_serves_dhcp_only_on_the_bridge_and_the_grid_script() {
        let dhcp = Dhcp {
            bridge: "devbr".into(),
            range: ("10.213.5.100".into(), "10.213.5.199".into()),
            ipxe_script: "http://10.213.5.1:8080/boot/dev/farms/1.ipxe".into(),
            hosts: vec![(node_mac("dev", 1), "vm1.ipxe".into())],
            tftp_root: "/tmp".into(),
            server: "10.213.5.1".into(),
            pid_file: "/d/dnsmasq.pid".into(),
            lease_file: "/d/leases".into(),
            log_file: "/d/dnsmasq.log".into(),
        };
        let a = dhcp.dnsmasq_args();
        assert!(a.contains(&"--port=0".to_string()), "no DNS");
        assert!(a.contains(&"--interface=devbr".to_string()));
        assert!(a.contains(&"--bind-interfaces".to_string()));
        assert!(a.contains(&"--dhcp-match=set:ipxe,175".to_string()));
        assert!(
            a.contains(
                &"--dhcp-boot=tag:ipxe,tag:!vm1,http://10.213.5.1:8080/boot/dev/farms/1.ipxe"
                    .to_string()
            )
        );
        // VM 1, by its MAC, gets its own script over TFTP.
        assert!(a.contains(&format!("--dhcp-host={},set:vm1", node_mac("dev", 1))));
        assert!(a.contains(&"--dhcp-boot=tag:vm1,vm1.ipxe,,10.213.5.1".to_string()));
        assert!(a.contains(&"--tftp-root=/tmp".to_string()));
        // Debian's dnsmasq accepts them (its own syntax check; nothing is started).
        let check = std::process::Command::new("dnsmasq")
            .arg("--test")
            .args(&a)
            .output()
            .expect("dnsmasq (scripts/install-deps.sh installs dnsmasq-base)");
        assert!(check.status.success(), "dnsmasq --test: {check:?}");
    }
}
