//! Names and addresses the network module derives: network ids, interface names that carry the
//! node's prefix and fit the kernel's 15 characters, MAC addresses, and the small address plans
//! of the node (the `ndmz` transit space, the WireGuard addresses).

use std::fmt;
use std::net::{Ipv4Addr, Ipv6Addr};

use ipnet::{Ipv4Net, Ipv6Net};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use zos_types::TwinId;

/// Longest interface name the kernel takes (IFNAMSIZ minus the terminating zero).
pub const IFNAME_MAX: usize = 15;

pub use zos_runtime::{PREFIX_MAX, valid_prefix};

/// The id of one network resource: 12 hex digits of sha256(`"<twin>:<network name>"`).
///
/// Every node that hosts a twin's network derives the same id.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct NetId(String);

impl NetId {
    pub fn new(twin: TwinId, name: &str) -> Self {
        let d = Sha256::digest(format!("{twin}:{name}").as_bytes());
        Self(hex::encode(&d[..6]))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// An id read back from a name this module made (a namespace name).
    pub(crate) fn from_raw(s: &str) -> Self {
        Self(s.to_string())
    }
}

impl fmt::Display for NetId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// The names a node with `prefix` uses. Namespace names (files under `/run/netns`) have no
/// length limit; interface names are `<prefix><kind><as much of the id as fits>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Names {
    prefix: String,
}

impl Names {
    /// `prefix` must pass [`valid_prefix`].
    pub fn new(prefix: &str) -> Self {
        Self {
            prefix: prefix.to_string(),
        }
    }

    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// `<prefix><kind><id…>` cut to 15 characters.
    pub fn ifname(&self, kind: char, id: &str) -> String {
        let room = IFNAME_MAX - self.prefix.len() - kind.len_utf8();
        let id: String = id.chars().take(room).collect();
        format!("{}{kind}{id}", self.prefix)
    }

    /// The namespace that routes and filters between the network resources and the host.
    pub fn ndmz_ns(&self) -> String {
        format!("{}ndmz", self.prefix)
    }

    /// The namespace that holds the node's own public address (only with a public config).
    pub fn public_ns(&self) -> String {
        format!("{}public", self.prefix)
    }

    /// The namespace of a network resource.
    pub fn nr_ns(&self, id: &NetId) -> String {
        format!("{}n-{id}", self.prefix)
    }

    /// Host end of the link between the host and `ndmz`.
    pub fn host_dmz(&self) -> String {
        format!("{}dmz", self.prefix)
    }

    /// The `ndmz` end of that link while it is created in the host, before it moves.
    pub fn host_dmz_peer(&self) -> String {
        format!("{}dmzp", self.prefix)
    }

    /// The bridge VMs' public interfaces join, with the public exit interface.
    pub fn public_bridge(&self) -> String {
        format!("{}pub", self.prefix)
    }

    /// Host end of the link between the public bridge and the `public` namespace.
    pub fn public_veth(&self) -> String {
        format!("{}pubv", self.prefix)
    }

    /// The other end while it is created in the host.
    pub fn public_veth_peer(&self) -> String {
        format!("{}pubw", self.prefix)
    }

    /// The bridge of a network resource in the host: VMs' private interfaces join it.
    pub fn nr_bridge(&self, id: &NetId) -> String {
        self.ifname('b', id.as_str())
    }

    /// Host end (on the bridge) of the link into the network resource.
    pub fn nr_lan_host(&self, id: &NetId) -> String {
        self.ifname('l', id.as_str())
    }

    /// The other end while it is created in the host.
    pub fn nr_lan_peer(&self, id: &NetId) -> String {
        self.ifname('k', id.as_str())
    }

    /// The WireGuard interface of a network resource. Its name is global: the userspace
    /// implementation's control socket is `/var/run/wireguard/<name>.sock` whatever the namespace.
    pub fn nr_wg(&self, id: &NetId) -> String {
        self.ifname('w', id.as_str())
    }

    /// A VM's private interface on a network resource's bridge.
    pub fn private_tap(&self, short: &str) -> String {
        self.ifname('t', short)
    }

    /// A VM's public interface on the public bridge.
    pub fn public_tap(&self, short: &str) -> String {
        self.ifname('p', short)
    }

    /// Temporary name of the VM end of a veth before it moves into the VM's namespace.
    pub fn temp_peer(&self, short: &str) -> String {
        self.ifname('x', short)
    }

    /// True when `ifname` is a link this module makes in the host (so it is not one of the
    /// machine's own interfaces, and is left out of what the node registers).
    pub fn owns_link(&self, ifname: &str) -> bool {
        let Some(rest) = ifname.strip_prefix(self.prefix.as_str()) else {
            return false;
        };
        if matches!(rest, "dmz" | "dmzp" | "pub" | "pubv" | "pubw") {
            return true;
        }
        let mut chars = rest.chars();
        let kind = chars.next();
        let id: String = chars.collect();
        matches!(kind, Some('b' | 'l' | 'k' | 'w' | 't' | 'p' | 'x'))
            && id.len() >= 4
            && id
                .chars()
                .all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase())
    }

    /// The nftables tables of this node in the host (`inet` and `bridge` families).
    pub fn host_table(&self) -> String {
        if self.prefix.is_empty() {
            "zos".into()
        } else {
            format!("zos_{}", self.prefix.replace('-', "_"))
        }
    }
}

/// Interface names inside namespaces the node owns (no prefix needed there).
pub mod inner {
    /// In a network resource: its gateway interface on the bridge.
    pub const NR_LAN: &str = "lan";
    /// In a network resource: its link to `ndmz`.
    pub const NR_DMZ: &str = "dmz";
    /// In `ndmz`: the link to the host.
    pub const NDMZ_UP: &str = "up0";
    /// In `public`: the node's public interface.
    pub const PUBLIC_IF: &str = "public";

    /// In `ndmz`: the link to one network resource.
    pub fn ndmz_nr(id: &super::NetId) -> String {
        format!("nr{}", id.as_str())
    }

    /// In `ndmz`: that link's other end before it moves into the network resource.
    pub fn ndmz_nr_peer(id: &super::NetId) -> String {
        format!("tr{}", id.as_str())
    }
}

/// A locally administered unicast MAC derived from `input`.
pub fn mac_from(input: &str) -> [u8; 6] {
    let d = Sha256::digest(input.as_bytes());
    let mut mac = [0u8; 6];
    mac.copy_from_slice(&d[..6]);
    mac[0] = (mac[0] & 0xfe) | 0x02;
    mac
}

/// `02:ab:…` text form of a MAC.
pub fn mac_string(mac: &[u8; 6]) -> String {
    mac.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// The gateway of a network resource: `.1` of its /24.
pub fn nr_gateway(subnet: Ipv4Net) -> Ipv4Addr {
    let n = u32::from(subnet.network());
    Ipv4Addr::from(n + 1)
}

/// The address of a network resource on its WireGuard interface: `100.64.<b>.<c>/16` for a
/// subnet `a.b.c.0/24`. Access peers (laptops) get `100.64.x.y/32` addresses of the same /16.
pub fn wg_address(subnet: Ipv4Net) -> Ipv4Net {
    let o = subnet.network().octets();
    Ipv4Net::new(Ipv4Addr::new(100, 64, o[1], o[2]), 16).expect("16 is a valid prefix")
}

/// The space of WireGuard addresses of all networks.
pub fn wg_space() -> Ipv4Net {
    Ipv4Net::new(Ipv4Addr::new(100, 64, 0, 0), 16).expect("valid")
}

/// The transit space between `ndmz` and the network resources.
pub fn ndmz_space() -> Ipv4Net {
    Ipv4Net::new(Ipv4Addr::new(100, 127, 0, 0), 16).expect("valid")
}

/// `ndmz`'s address on every link to a network resource.
pub const NDMZ_GATEWAY: Ipv4Addr = Ipv4Addr::new(100, 127, 0, 1);
/// The host's address on its link to `ndmz` (a /30).
pub const HOST_DMZ_ADDR: Ipv4Addr = Ipv4Addr::new(100, 127, 255, 1);
/// `ndmz`'s address on its link to the host (a /30).
pub const NDMZ_UP_ADDR: Ipv4Addr = Ipv4Addr::new(100, 127, 255, 2);

/// First and last transit slot a network resource can get.
pub const SLOT_MIN: u16 = 2;
pub const SLOT_MAX: u16 = 0xfeff;

/// The transit address of the network resource in slot `slot`: `100.127.<hi>.<lo>`.
pub fn slot_address(slot: u16) -> Ipv4Addr {
    let [hi, lo] = slot.to_be_bytes();
    Ipv4Addr::new(100, 127, hi, lo)
}

/// The stateless (EUI-64) address a host with `mac` takes in the /64 `prefix`.
pub fn eui64(prefix: Ipv6Net, mac: &[u8; 6]) -> Ipv6Addr {
    let p = prefix.trunc().network().octets();
    let mut a = [0u8; 16];
    a[..8].copy_from_slice(&p[..8]);
    a[8] = mac[0] ^ 0x02;
    a[9] = mac[1];
    a[10] = mac[2];
    a[11] = 0xff;
    a[12] = 0xfe;
    a[13] = mac[3];
    a[14] = mac[4];
    a[15] = mac[5];
    Ipv6Addr::from(a)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn own_links_are_told_from_the_machines() {
        let n = Names::new("zdnn1");
        let id = NetId::new(7, "lan");
        for own in [
            n.host_dmz(),
            n.public_bridge(),
            n.public_veth(),
            n.nr_bridge(&id),
            n.nr_lan_host(&id),
            n.nr_wg(&id),
            n.private_tap("0a1b2c3d4e5f"),
            n.public_tap("0a1b2c3d4e5f"),
        ] {
            assert!(n.owns_link(&own), "{own}");
        }
        for machine in ["eth0", "eth1", "zdnn10dmz", "zdnn1", "lo"] {
            assert!(!n.owns_link(machine), "{machine}");
        }
        let bare = Names::new("");
        assert!(bare.owns_link("dmz") && bare.owns_link(&bare.nr_bridge(&id)));
        for machine in ["eth0", "enp3s0", "br0", "wlan0", "bond0", "tap0", "lo"] {
            assert!(!bare.owns_link(machine), "{machine}");
        }
    }

    #[test]
    fn netid_is_stable_and_distinct() {
        let a = NetId::new(7, "net1");
        assert_eq!(a, NetId::new(7, "net1"));
        assert_eq!(a.as_str().len(), 12);
        assert_ne!(a, NetId::new(8, "net1"));
        assert_ne!(a, NetId::new(7, "net2"));
    }

    #[test]
    fn interface_names_fit_and_carry_the_prefix() {
        let id = NetId::new(7, "net1");
        for prefix in ["", "a", "dev1n2", "abcdefgh"] {
            let n = Names::new(prefix);
            for name in [
                n.nr_bridge(&id),
                n.nr_wg(&id),
                n.nr_lan_host(&id),
                n.nr_lan_peer(&id),
                n.private_tap("0123456789ab"),
                n.public_tap("0123456789ab"),
                n.host_dmz(),
                n.host_dmz_peer(),
                n.public_bridge(),
                n.public_veth(),
                n.public_veth_peer(),
                inner::ndmz_nr(&id),
                inner::ndmz_nr_peer(&id),
            ] {
                assert!(name.len() <= IFNAME_MAX, "{name}");
                assert!(
                    name.starts_with(prefix) || name.starts_with("nr") || name.starts_with("tr")
                );
            }
            assert!(n.nr_ns(&id).starts_with(prefix));
        }
        let n = Names::new("abcdefgh");
        assert_eq!(n.nr_wg(&id), format!("abcdefghw{}", &id.as_str()[..6]));
        assert_eq!(Names::new("").nr_wg(&id), format!("w{id}"));
        assert_ne!(Names::new("a").nr_wg(&id), Names::new("b").nr_wg(&id));
    }

    #[test]
    fn table_names_are_nft_identifiers() {
        assert_eq!(Names::new("").host_table(), "zos");
        assert_eq!(Names::new("d-1").host_table(), "zos_d_1");
    }

    #[test]
    fn macs_are_local_unicast() {
        let m = mac_from("x");
        assert_eq!(m[0] & 0x01, 0);
        assert_eq!(m[0] & 0x02, 0x02);
        assert_eq!(mac_string(&[2, 0, 0xab, 1, 2, 3]), "02:00:ab:01:02:03");
        assert_ne!(mac_from("x"), mac_from("y"));
    }

    #[test]
    fn address_plans() {
        let s: Ipv4Net = "10.20.3.0/24".parse().unwrap();
        assert_eq!(nr_gateway(s), Ipv4Addr::new(10, 20, 3, 1));
        assert_eq!(wg_address(s).to_string(), "100.64.20.3/16");
        assert_eq!(slot_address(2), Ipv4Addr::new(100, 127, 0, 2));
        assert_eq!(slot_address(0x1234), Ipv4Addr::new(100, 127, 0x12, 0x34));
        assert!(ndmz_space().contains(&slot_address(SLOT_MAX)));
        assert!(slot_address(SLOT_MAX) < HOST_DMZ_ADDR);
    }

    #[test]
    fn eui64_follows_the_rfc() {
        let p: Ipv6Net = "2001:db8:1:2::/64".parse().unwrap();
        let a = eui64(p, &[0x00, 0x11, 0x22, 0x33, 0x44, 0x55]);
        assert_eq!(
            a,
            "2001:db8:1:2:211:22ff:fe33:4455"
                .parse::<Ipv6Addr>()
                .unwrap()
        );
    }
}
