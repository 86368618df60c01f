//! The seed: everything a container-mode VM is told about itself, written by the node and read
//! by `guest-init` at boot.
//!
//! The node appends a small cpio archive holding [`SEED_PATH`] to the guest image's initramfs
//! (the kernel unpacks concatenated archives in order), so the seed never travels on the kernel
//! command line (2 KiB at most, and visible in `/proc/cmdline`) and needs no extra device.
//!
//! The format is JSON. New optional fields may appear without a version change (unknown fields
//! are ignored); [`SEED_VERSION`] changes only when a field's meaning changes, and a guest
//! refuses a seed of a version it does not know.

use std::collections::BTreeMap;
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnet::IpNet;
use serde::{Deserialize, Serialize};

/// Where the seed is inside the initramfs.
pub const SEED_PATH: &str = "/zos/seed.json";
/// The seed format this crate reads and writes.
pub const SEED_VERSION: u32 = 1;
/// Largest seed accepted, in bytes.
pub const MAX_SEED_BYTES: usize = 1 << 20;
/// What runs when the seed names no entrypoint.
pub const DEFAULT_ENTRYPOINT: &str = "/sbin/init";

/// What a container-mode VM is told about itself.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Seed {
    /// [`SEED_VERSION`].
    pub version: u32,
    /// Changes when the machine is made again (the workload id).
    pub instance_id: String,
    pub hostname: String,
    /// virtiofs tag of the root file system.
    pub root_tag: String,
    /// File systems mounted into the root, in order.
    #[serde(default)]
    pub mounts: Vec<MountSpec>,
    /// Network interfaces, matched by MAC.
    #[serde(default)]
    pub interfaces: Vec<Interface>,
    #[serde(default)]
    pub nameservers: Vec<IpAddr>,
    /// Lines of root's `authorized_keys`.
    #[serde(default)]
    pub ssh_keys: Vec<String>,
    /// Command line of the entrypoint, split as a POSIX shell would; empty means
    /// [`DEFAULT_ENTRYPOINT`].
    #[serde(default)]
    pub entrypoint: String,
    /// Environment of the entrypoint (over `PATH`, `HOME`, `TERM` and `HOSTNAME` defaults).
    #[serde(default)]
    pub env: BTreeMap<String, String>,
}

/// A file system mounted into the root.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum MountSpec {
    /// A virtiofs share (a volume) with this tag.
    Virtiofs { tag: String, target: String },
    /// A virtio block device whose serial is `serial`, holding a `fstype` file system.
    Disk {
        serial: String,
        fstype: String,
        target: String,
    },
}

impl MountSpec {
    /// Where it is mounted.
    pub fn target(&self) -> &str {
        match self {
            Self::Virtiofs { target, .. } | Self::Disk { target, .. } => target,
        }
    }
}

/// A network interface: its MAC and what to configure on it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Interface {
    /// `02:ab:cd:ef:01:23`, lower case.
    pub mac: String,
    /// Addresses with their prefix length.
    #[serde(default)]
    pub addresses: Vec<IpNet>,
    /// Default IPv4 route through this gateway.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gateway4: Option<Ipv4Addr>,
    /// Default IPv6 route through this gateway.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gateway6: Option<Ipv6Addr>,
    /// Further routes through this interface.
    #[serde(default)]
    pub routes: Vec<Route>,
}

/// A route: destination network through a gateway.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Route {
    pub to: IpNet,
    pub via: IpAddr,
}

/// What is wrong with a seed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SeedError {
    /// The field, like `mounts[1].target`.
    pub field: String,
    pub reason: String,
}

impl fmt::Display for SeedError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "seed field {}: {}", self.field, self.reason)
    }
}

impl std::error::Error for SeedError {}

fn err(field: impl Into<String>, reason: impl Into<String>) -> SeedError {
    SeedError {
        field: field.into(),
        reason: reason.into(),
    }
}

/// True for `/a/b`: absolute, not `/`, no empty, `.` or `..` components, no NUL.
pub fn clean_target(p: &str) -> bool {
    p.starts_with('/')
        && p.len() > 1
        && p.len() <= 4096
        && !p.contains('\0')
        && p[1..]
            .split('/')
            .all(|c| !c.is_empty() && c != "." && c != "..")
}

fn check_word(field: &str, v: &str, max: usize) -> Result<(), SeedError> {
    let ok = !v.is_empty()
        && v.len() <= max
        && v.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
    if ok {
        Ok(())
    } else {
        Err(err(
            field,
            format!("{v:?} must be 1 to {max} of ASCII letters, digits, '-', '_', '.'"),
        ))
    }
}

/// True for a MAC written `xx:xx:xx:xx:xx:xx` in lower-case hex.
pub fn valid_mac(mac: &str) -> bool {
    let parts: Vec<&str> = mac.split(':').collect();
    parts.len() == 6
        && parts.iter().all(|p| {
            p.len() == 2
                && p.bytes()
                    .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        })
}

impl Seed {
    /// Parses and checks a seed.
    pub fn from_json(bytes: &[u8]) -> Result<Seed, SeedError> {
        if bytes.len() > MAX_SEED_BYTES {
            return Err(err("(seed)", format!("larger than {MAX_SEED_BYTES} bytes")));
        }
        let seed: Seed = serde_json::from_slice(bytes).map_err(|e| err("(seed)", e.to_string()))?;
        seed.validate()?;
        Ok(seed)
    }

    /// The seed as JSON.
    pub fn to_json(&self) -> Vec<u8> {
        serde_json::to_vec_pretty(self).expect("a seed serializes")
    }

    /// The entrypoint's argv.
    pub fn argv(&self) -> Result<Vec<String>, SeedError> {
        let line = if self.entrypoint.trim().is_empty() {
            DEFAULT_ENTRYPOINT
        } else {
            &self.entrypoint
        };
        match shlex::split(line) {
            Some(v) if !v.is_empty() => Ok(v),
            _ => Err(err(
                "entrypoint",
                format!("{line:?} is not a command line (unbalanced quotes?)"),
            )),
        }
    }

    /// Checks every field; what passes is safe to act on as PID 1.
    pub fn validate(&self) -> Result<(), SeedError> {
        if self.version != SEED_VERSION {
            return Err(err(
                "version",
                format!(
                    "{} is not {SEED_VERSION}, the version this guest knows",
                    self.version
                ),
            ));
        }
        check_word("instance_id", &self.instance_id, 128)?;
        let h = &self.hostname;
        let host_ok = !h.is_empty()
            && h.len() <= 63
            && h.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
            && !h.starts_with('-')
            && !h.ends_with('-');
        if !host_ok {
            return Err(err(
                "hostname",
                format!("{h:?} must be 1 to 63 of ASCII letters, digits and '-', not at the ends"),
            ));
        }
        check_word("root_tag", &self.root_tag, 36)?;
        let mut targets = Vec::new();
        for (i, m) in self.mounts.iter().enumerate() {
            let f = |x: &str| format!("mounts[{i}].{x}");
            match m {
                MountSpec::Virtiofs { tag, .. } => {
                    check_word(&f("tag"), tag, 36)?;
                    if tag == &self.root_tag {
                        return Err(err(f("tag"), "is the root's tag"));
                    }
                }
                MountSpec::Disk { serial, fstype, .. } => {
                    check_word(&f("serial"), serial, 20)?;
                    if !matches!(fstype.as_str(), "ext4" | "btrfs" | "xfs") {
                        return Err(err(
                            f("fstype"),
                            format!("{fstype:?} is not ext4, btrfs or xfs"),
                        ));
                    }
                }
            }
            let t = m.target();
            if !clean_target(t) {
                return Err(err(
                    f("target"),
                    format!("{t:?} must be an absolute path other than /, without . or .."),
                ));
            }
            if targets.contains(&t) {
                return Err(err(f("target"), format!("{t:?} is mounted twice")));
            }
            targets.push(t);
        }
        for (i, nic) in self.interfaces.iter().enumerate() {
            if !valid_mac(&nic.mac) {
                return Err(err(
                    format!("interfaces[{i}].mac"),
                    format!("{:?} is not a lower-case xx:xx:xx:xx:xx:xx MAC", nic.mac),
                ));
            }
            if self.interfaces[..i].iter().any(|o| o.mac == nic.mac) {
                return Err(err(format!("interfaces[{i}].mac"), "is used twice"));
            }
        }
        for (i, k) in self.ssh_keys.iter().enumerate() {
            if k.trim().is_empty() || k.contains(['\n', '\r', '\0']) {
                return Err(err(format!("ssh_keys[{i}]"), "must be one non-empty line"));
            }
        }
        for (k, v) in &self.env {
            if k.is_empty() || k.contains(['=', '\0']) || v.contains('\0') {
                return Err(err("env", format!("{k:?} is not a variable name")));
            }
        }
        self.argv()?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seed() -> Seed {
        Seed {
            version: SEED_VERSION,
            instance_id: "7-12-vm".into(),
            hostname: "vm".into(),
            root_tag: "vroot".into(),
            mounts: vec![
                MountSpec::Virtiofs {
                    tag: "data".into(),
                    target: "/data".into(),
                },
                MountSpec::Disk {
                    serial: "zd0".into(),
                    fstype: "ext4".into(),
                    target: "/mnt/disk".into(),
                },
            ],
            interfaces: vec![Interface {
                mac: "02:00:00:00:00:01".into(),
                addresses: vec!["10.20.1.2/24".parse().unwrap()],
                gateway4: Some("10.20.1.1".parse().unwrap()),
                gateway6: None,
                routes: vec![Route {
                    to: "10.20.0.0/16".parse().unwrap(),
                    via: "10.20.1.1".parse().unwrap(),
                }],
            }],
            nameservers: vec!["1.1.1.1".parse().unwrap()],
            ssh_keys: vec!["ssh-ed25519 AAAA me@x".into()],
            entrypoint: "/bin/sh -c 'echo hi; sleep 1'".into(),
            env: [("A".to_string(), "b c".to_string())].into(),
        }
    }

    #[test]
    fn round_trip() {
        let s = seed();
        let back = Seed::from_json(&s.to_json()).unwrap();
        assert_eq!(back, s);
        assert_eq!(back.argv().unwrap(), ["/bin/sh", "-c", "echo hi; sleep 1"]);
    }

    #[test]
    fn unknown_fields_are_ignored_but_versions_are_not() {
        let mut v: serde_json::Value = serde_json::from_slice(&seed().to_json()).unwrap();
        v["future"] = serde_json::json!(1);
        assert!(Seed::from_json(v.to_string().as_bytes()).is_ok());
        v["version"] = serde_json::json!(2);
        let e = Seed::from_json(v.to_string().as_bytes()).unwrap_err();
        assert_eq!(e.field, "version");
    }

    #[test]
    fn default_entrypoint() {
        let s = Seed {
            entrypoint: "  ".into(),
            ..seed()
        };
        assert_eq!(s.argv().unwrap(), [DEFAULT_ENTRYPOINT]);
    }

    #[test]
    fn bad_fields_are_named() {
        type Edit = Box<dyn Fn(&mut Seed)>;
        let cases: Vec<(&str, Edit)> = vec![
            ("hostname", Box::new(|s| s.hostname = "-x".into())),
            ("hostname", Box::new(|s| s.hostname = "a b".into())),
            ("instance_id", Box::new(|s| s.instance_id = "a/b".into())),
            ("root_tag", Box::new(|s| s.root_tag = String::new())),
            (
                "mounts[0].target",
                Box::new(|s| {
                    s.mounts[0] = MountSpec::Virtiofs {
                        tag: "d".into(),
                        target: "/".into(),
                    }
                }),
            ),
            (
                "mounts[0].target",
                Box::new(|s| {
                    s.mounts[0] = MountSpec::Virtiofs {
                        tag: "d".into(),
                        target: "/a/../etc".into(),
                    }
                }),
            ),
            (
                "mounts[0].tag",
                Box::new(|s| {
                    s.mounts[0] = MountSpec::Virtiofs {
                        tag: "vroot".into(),
                        target: "/x".into(),
                    }
                }),
            ),
            (
                "mounts[1].target",
                Box::new(|s| {
                    s.mounts[1] = MountSpec::Disk {
                        serial: "zd0".into(),
                        fstype: "ext4".into(),
                        target: "/data".into(),
                    }
                }),
            ),
            (
                "mounts[1].fstype",
                Box::new(|s| {
                    s.mounts[1] = MountSpec::Disk {
                        serial: "zd0".into(),
                        fstype: "ntfs".into(),
                        target: "/d".into(),
                    }
                }),
            ),
            (
                "interfaces[0].mac",
                Box::new(|s| s.interfaces[0].mac = "02:00:00:00:00:0G".into()),
            ),
            ("ssh_keys[0]", Box::new(|s| s.ssh_keys[0] = "a\nb".into())),
            (
                "env",
                Box::new(|s| {
                    s.env.insert("A=B".into(), "x".into());
                }),
            ),
            (
                "entrypoint",
                Box::new(|s| s.entrypoint = "/bin/sh -c 'x".into()),
            ),
        ];
        for (field, f) in cases {
            let mut s = seed();
            f(&mut s);
            let e = s.validate().unwrap_err();
            assert_eq!(e.field, field, "{e}");
            assert!(e.to_string().starts_with("seed field "), "{e}");
        }
    }

    #[test]
    fn targets() {
        for ok in ["/a", "/a/b", "/mnt/disk-1"] {
            assert!(clean_target(ok), "{ok}");
        }
        for bad in ["", "/", "a", "/a/", "//a", "/a/./b", "/.."] {
            assert!(!clean_target(bad), "{bad}");
        }
    }
}
