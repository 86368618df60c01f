//! Facts about the machine: cores, memory, hardware, interfaces, uptime.
//!
//! Read from `/proc` and `/sys` by [`HostSystem`]; [`FakeSystem`] stands in for it in tests.

use std::collections::BTreeMap;
use std::io;
use std::path::{Path, PathBuf};

use zos_types::capacity::GIB;
use zos_types::registry::{Hardware, Interface};

/// What the node asks of the machine it runs on.
pub trait System: Send + Sync + 'static {
    /// Logical CPU cores.
    fn cores(&self) -> io::Result<u64>;
    /// Total RAM in bytes.
    fn memory_bytes(&self) -> io::Result<u64>;
    fn hardware(&self) -> Hardware;
    /// Network interfaces of the node's network namespace, loopback excluded, sorted by name.
    fn interfaces(&self) -> io::Result<Vec<Interface>>;
    /// Seconds since boot.
    fn uptime_secs(&self) -> io::Result<u64>;
}

/// Memory the system keeps for itself: 10 % of the RAM, and at least 2 GiB (never more than all of it).
pub fn reserved_memory(total: u64) -> u64 {
    (total / 10).max(2 * GIB).min(total)
}

/// The real machine, through `/proc` and `/sys` (roots configurable for tests).
#[derive(Debug, Clone)]
pub struct HostSystem {
    proc_root: PathBuf,
    sys_root: PathBuf,
}

impl Default for HostSystem {
    fn default() -> Self {
        Self {
            proc_root: "/proc".into(),
            sys_root: "/sys".into(),
        }
    }
}

impl HostSystem {
    pub fn with_roots(proc_root: impl Into<PathBuf>, sys_root: impl Into<PathBuf>) -> Self {
        Self {
            proc_root: proc_root.into(),
            sys_root: sys_root.into(),
        }
    }

    fn read(&self, p: &Path) -> io::Result<String> {
        std::fs::read_to_string(p)
            .map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", p.display())))
    }

    fn cpuinfo(&self) -> io::Result<String> {
        self.read(&self.proc_root.join("cpuinfo"))
    }

    fn dmi(&self, field: &str) -> Option<String> {
        let v = std::fs::read_to_string(self.sys_root.join("class/dmi/id").join(field)).ok()?;
        let v = v.trim();
        let placeholder = [
            "",
            "0",
            "none",
            "not specified",
            "default string",
            "to be filled by o.e.m.",
            "system serial number",
        ];
        (!placeholder.contains(&v.to_ascii_lowercase().as_str())).then(|| v.to_string())
    }
}

fn invalid(what: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, what)
}

impl System for HostSystem {
    fn cores(&self) -> io::Result<u64> {
        let n = self
            .cpuinfo()?
            .lines()
            .filter(|l| l.split(':').next().is_some_and(|k| k.trim() == "processor"))
            .count() as u64;
        if n == 0 {
            Err(invalid("no processor in cpuinfo".into()))
        } else {
            Ok(n)
        }
    }

    fn memory_bytes(&self) -> io::Result<u64> {
        let meminfo = self.read(&self.proc_root.join("meminfo"))?;
        let line = meminfo
            .lines()
            .find(|l| l.starts_with("MemTotal:"))
            .ok_or_else(|| invalid("no MemTotal in meminfo".into()))?;
        let kib: u64 = line
            .split_whitespace()
            .nth(1)
            .and_then(|v| v.parse().ok())
            .ok_or_else(|| invalid(format!("bad meminfo line {line:?}")))?;
        Ok(kib * 1024)
    }

    fn hardware(&self) -> Hardware {
        let cpuinfo = self.cpuinfo().unwrap_or_default();
        let field = |name: &str| {
            cpuinfo.lines().find_map(|l| {
                let (k, v) = l.split_once(':')?;
                (k.trim() == name).then(|| v.trim().to_string())
            })
        };
        let hypervisor_flag =
            field("flags").is_some_and(|f| f.split_whitespace().any(|x| x == "hypervisor"));
        let vendor = self
            .dmi("sys_vendor")
            .unwrap_or_default()
            .to_ascii_lowercase();
        let virtual_vendor = [
            "qemu",
            "kvm",
            "vmware",
            "xen",
            "microsoft",
            "innotek",
            "amazon ec2",
            "google",
            "firecracker",
        ]
        .iter()
        .any(|v| vendor.contains(v));
        let serial = ["board_serial", "product_serial", "product_uuid"]
            .iter()
            .find_map(|f| self.dmi(f))
            .unwrap_or_else(|| "unknown".into());
        Hardware {
            serial,
            virtualized: hypervisor_flag || virtual_vendor,
            cpu_model: field("model name").unwrap_or_else(|| "unknown".into()),
        }
    }

    fn interfaces(&self) -> io::Result<Vec<Interface>> {
        // getifaddrs answers for the network namespace this process is in, whatever /sys shows.
        let mut by_name: BTreeMap<String, Interface> = BTreeMap::new();
        for ifa in nix::ifaddrs::getifaddrs().map_err(io::Error::from)? {
            if ifa
                .flags
                .contains(nix::net::if_::InterfaceFlags::IFF_LOOPBACK)
            {
                continue;
            }
            let nic = by_name
                .entry(ifa.interface_name.clone())
                .or_insert_with(|| Interface {
                    name: ifa.interface_name.clone(),
                    mac: String::new(),
                    ips: Vec::new(),
                });
            let Some(addr) = ifa.address else { continue };
            if let Some(mac) = addr.as_link_addr().and_then(|l| l.addr()) {
                nic.mac = mac
                    .iter()
                    .map(|b| format!("{b:02x}"))
                    .collect::<Vec<_>>()
                    .join(":");
                continue;
            }
            let Some(mask) = ifa.netmask else { continue };
            let net = match (
                addr.as_sockaddr_in(),
                mask.as_sockaddr_in(),
                addr.as_sockaddr_in6(),
                mask.as_sockaddr_in6(),
            ) {
                (Some(a), Some(m), _, _) => {
                    ipnet::Ipv4Net::new(a.ip(), u32::from(m.ip()).count_ones() as u8)
                        .ok()
                        .map(ipnet::IpNet::V4)
                }
                (_, _, Some(a), Some(m)) => {
                    ipnet::Ipv6Net::new(a.ip(), u128::from(m.ip()).count_ones() as u8)
                        .ok()
                        .map(ipnet::IpNet::V6)
                }
                _ => None,
            };
            if let Some(net) = net {
                nic.ips.push(net);
            }
        }
        // Interfaces without a MAC (tun devices) are not network cards the grid cares about.
        Ok(by_name
            .into_values()
            .filter(|i| !i.mac.is_empty() && i.mac != "00:00:00:00:00:00")
            .collect())
    }

    fn uptime_secs(&self) -> io::Result<u64> {
        let text = self.read(&self.proc_root.join("uptime"))?;
        let first = text.split_whitespace().next().unwrap_or_default();
        first
            .parse::<f64>()
            .map(|s| s as u64)
            .map_err(|_| invalid(format!("bad uptime {first:?}")))
    }
}

/// A machine made of fixed facts, for tests.
#[derive(Debug, Clone)]
pub struct FakeSystem {
    pub cores: u64,
    pub memory: u64,
    pub hardware: Hardware,
    pub interfaces: Vec<Interface>,
    pub uptime: u64,
}

impl System for FakeSystem {
    fn cores(&self) -> io::Result<u64> {
        Ok(self.cores)
    }
    fn memory_bytes(&self) -> io::Result<u64> {
        Ok(self.memory)
    }
    fn hardware(&self) -> Hardware {
        self.hardware.clone()
    }
    fn interfaces(&self) -> io::Result<Vec<Interface>> {
        Ok(self.interfaces.clone())
    }
    fn uptime_secs(&self) -> io::Result<u64> {
        Ok(self.uptime)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reservation_is_a_tenth_with_a_floor_of_two_gib() {
        assert_eq!(reserved_memory(100 * GIB), 10 * GIB);
        assert_eq!(reserved_memory(8 * GIB), 2 * GIB);
        assert_eq!(reserved_memory(GIB), GIB);
    }

    #[test]
    fn facts_are_read_from_proc_and_sys() {
        let dir = tempfile::tempdir().unwrap();
        let proc_root = dir.path().join("proc");
        let sys_root = dir.path().join("sys");
        std::fs::create_dir_all(&proc_root).unwrap();
        std::fs::create_dir_all(sys_root.join("class/dmi/id")).unwrap();
        std::fs::create_dir_all(sys_root.join("class/net")).unwrap();
        let cpu =
            "processor\t: 0\nmodel name\t: Test CPU @ 3GHz\nflags\t\t: fpu hypervisor sse\n\n";
        std::fs::write(
            proc_root.join("cpuinfo"),
            format!("{cpu}{}", cpu.replace(": 0", ": 1")),
        )
        .unwrap();
        std::fs::write(
            proc_root.join("meminfo"),
            "MemTotal:       2048 kB\nMemFree: 1 kB\n",
        )
        .unwrap();
        std::fs::write(proc_root.join("uptime"), "1234.56 99.0\n").unwrap();
        std::fs::write(
            sys_root.join("class/dmi/id/board_serial"),
            "Default string\n",
        )
        .unwrap();
        std::fs::write(sys_root.join("class/dmi/id/product_serial"), "SN-42\n").unwrap();
        let s = HostSystem::with_roots(&proc_root, &sys_root);
        assert_eq!(s.cores().unwrap(), 2);
        assert_eq!(s.memory_bytes().unwrap(), 2048 * 1024);
        assert_eq!(s.uptime_secs().unwrap(), 1234);
        let hw = s.hardware();
        assert_eq!(hw.serial, "SN-42");
        assert!(hw.virtualized);
        assert_eq!(hw.cpu_model, "Test CPU @ 3GHz");
    }

    #[test]
    fn the_real_machine_has_cores_and_memory() {
        let s = HostSystem::default();
        assert!(s.cores().unwrap() >= 1);
        assert!(s.memory_bytes().unwrap() > 0);
        assert!(s.uptime_secs().is_ok());
        for nic in s.interfaces().unwrap() {
            assert_ne!(nic.name, "lo");
        }
    }
}
