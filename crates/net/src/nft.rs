//! nftables rulesets, rendered as text and applied atomically with `nft -f -`.
//!
//! Each table is replaced whole in one transaction (`add table` + `delete table` + the new
//! definition), so what is loaded always equals what the state says; connections tracked by
//! conntrack survive a replacement.
//!
//! Protocols are written as numbers (ICMP is 1, ICMPv6 58) where nft would otherwise look a name
//! up in `/etc/protocols`, which a booted node does not have.

use std::fmt::Write;
use std::net::{Ipv4Addr, Ipv6Addr};
use std::path::Path;

use super::NetworkError;
use super::names::{self, inner, mac_string};
use super::netns::{self, Ns};

/// What a VM's port on a bridge may send and receive.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PortFilter {
    pub ifname: String,
    pub mac: [u8; 6],
    pub ipv4: Option<Ipv4Addr>,
    pub ipv6: Option<Ipv6Addr>,
}

fn chain_id(ifname: &str) -> String {
    ifname.replace('-', "_")
}

/// Replaces `family name` with `body` (the table's contents).
fn replace_table(out: &mut String, family: &str, name: &str, body: &str) {
    let _ = writeln!(out, "add table {family} {name}");
    let _ = writeln!(out, "delete table {family} {name}");
    let _ = writeln!(out, "table {family} {name} {{\n{body}}}");
}

/// The host's tables: input protection, NAT egress of workloads, forwarding to `ndmz`, and
/// the filters of VM ports on the bridges: anti-spoofing (MAC, IPv4, IPv6 sources), and no
/// router advertisements, ICMPv6 redirects, or DHCP / DHCPv6 server replies (UDP from port 67
/// or 547) from a workload, on the public bridge or any other.
pub fn host_ruleset(table: &str, host_dmz: &str, wg_ports: &[u16], ports: &[PortFilter]) -> String {
    let mut inet = wg_ports_set(wg_ports);
    inet.push_str(&host_inet_chains(host_dmz));
    let mut bridge = port_maps(ports);
    for p in ports {
        bridge.push_str(&port_in_chain(p));
        bridge.push_str(&port_out_chain(p));
    }
    bridge.push_str(BRIDGE_HOOKS);
    let mut out = String::new();
    replace_table(&mut out, "inet", table, &inet);
    replace_table(&mut out, "bridge", table, &bridge);
    out
}

/// The set of the UDP ports WireGuard listens on, which the host's input accepts.
fn wg_ports_set(wg_ports: &[u16]) -> String {
    let mut out = String::new();
    let ports_list = wg_ports
        .iter()
        .map(u16::to_string)
        .collect::<Vec<_>>()
        .join(", ");
    let _ = writeln!(out, "  set wg_ports {{\n    type inet_service");
    if !wg_ports.is_empty() {
        let _ = writeln!(out, "    elements = {{ {ports_list} }}");
    }
    let _ = writeln!(out, "  }}");
    out
}

/// The host's inet chains: input protection (nothing new from `ndmz`), forwarding into `ndmz`
/// only for established traffic, and NAT egress of the workloads.
fn host_inet_chains(host_dmz: &str) -> String {
    format!(
        "  chain input {{
    type filter hook input priority 0; policy accept;
    iifname \"{host_dmz}\" drop
    ct state established,related accept
    iif lo accept
    meta l4proto {{ 1, 58 }} accept
    udp dport @wg_ports accept
    udp dport 68 accept
    ct state new drop
  }}
  chain forward {{
    type filter hook forward priority 0; policy accept;
    oifname \"{host_dmz}\" ct state established,related accept
    oifname \"{host_dmz}\" drop
  }}
  chain postrouting {{
    type nat hook postrouting priority 100; policy accept;
    ip saddr {space} oifname != \"{host_dmz}\" masquerade
  }}
",
        space = names::ndmz_space()
    )
}

/// The maps from a VM port's interface to its own chain, one per direction.
fn port_maps(ports: &[PortFilter]) -> String {
    let mut out = String::new();
    for (map, dir) in [("ports_in", "in"), ("ports_out", "out")] {
        let _ = writeln!(out, "  map {map} {{\n    type ifname : verdict");
        if !ports.is_empty() {
            let elems = ports
                .iter()
                .map(|p| format!("\"{}\" : jump {dir}_{}", p.ifname, chain_id(&p.ifname)))
                .collect::<Vec<_>>()
                .join(", ");
            let _ = writeln!(out, "    elements = {{ {elems} }}");
        }
        let _ = writeln!(out, "  }}");
    }
    out
}

/// What a VM port may send: only its own MAC, IPv4 and IPv6 sources, only ARP, IPv4 and
/// IPv6, and no router advertisements, ICMPv6 redirects or DHCP / DHCPv6 server replies.
fn port_in_chain(p: &PortFilter) -> String {
    let mut out = String::new();
    let id = chain_id(&p.ifname);
    let mac = mac_string(&p.mac);
    let _ = writeln!(out, "  chain in_{id} {{");
    let _ = writeln!(out, "    ether saddr != {mac} drop");
    let _ = writeln!(out, "    ether type arp arp saddr ether != {mac} drop");
    match p.ipv4 {
        Some(ip) => {
            let _ = writeln!(out, "    ether type arp arp saddr ip != {ip} drop");
            let _ = writeln!(out, "    ether type ip ip saddr != {ip} drop");
        }
        None => {
            let _ = writeln!(out, "    ether type {{ arp, ip }} drop");
        }
    }
    let v6 = p.ipv6.map(|a| format!(", {a}")).unwrap_or_default();
    let _ = writeln!(
        out,
        "    ether type ip6 ip6 saddr != {{ ::, fe80::/10{v6} }} drop"
    );
    let _ = writeln!(out, "    ether type != {{ arp, ip, ip6 }} drop");
    // A workload is never the router or the DHCP server of the segment it sits on.
    let _ = writeln!(
        out,
        "    icmpv6 type {{ nd-router-advert, nd-redirect }} drop"
    );
    let _ = writeln!(out, "    udp sport {{ 67, 547 }} drop");
    let _ = writeln!(out, "  }}");
    out
}

/// What a VM port may receive: only traffic for its own IPv4 and IPv6 addresses (and IPv6
/// link-local and multicast).
fn port_out_chain(p: &PortFilter) -> String {
    let mut out = String::new();
    let id = chain_id(&p.ifname);
    let _ = writeln!(out, "  chain out_{id} {{");
    match p.ipv4 {
        Some(ip) => {
            let _ = writeln!(out, "    ether type arp arp daddr ip != {ip} drop");
            let _ = writeln!(out, "    ether type ip ip daddr != {ip} drop");
        }
        None => {
            let _ = writeln!(out, "    ether type {{ arp, ip }} drop");
        }
    }
    let v6 = p.ipv6.map(|a| format!(", {a}")).unwrap_or_default();
    let _ = writeln!(
        out,
        "    ether type ip6 ip6 daddr != {{ fe80::/10, ff00::/8{v6} }} drop"
    );
    let _ = writeln!(out, "  }}");
    out
}

/// The bridge hooks that send each port's traffic through its chains.
const BRIDGE_HOOKS: &str = "  chain prerouting {
    type filter hook prerouting priority 0; policy accept;
    iifname vmap @ports_in
  }
  chain postrouting {
    type filter hook postrouting priority 0; policy accept;
    oifname vmap @ports_out
  }
";

/// The ports of the node's zdb servers in `ndmz` (`zos_provision::zdb`: one per HDD, from
/// 9900): the only thing of `ndmz` itself the network resources reach.
const ZDB_PORTS: &str = "9900-9999";
/// The address of `ndmz` on every network resource's link, where the zdb servers listen.
const ZDB_ADDRESS: &str = "100.127.0.1";

/// `ndmz`: network resources reach the host (and through it the outside), never each other,
/// never an SMTP server, and of `ndmz` itself only the zdb servers.
pub fn ndmz_ruleset() -> String {
    let mut out = String::new();
    replace_table(
        &mut out,
        "inet",
        "ndmz",
        &format!(
            "  chain input {{
    type filter hook input priority 0; policy drop;
    ct state established,related accept
    iif lo accept
    iifname \"nr*\" ip daddr {zdb_ip} tcp dport {zdb_ports} accept
  }}
  chain forward {{
    type filter hook forward priority 0; policy drop;
    tcp dport 25 reject with tcp reset
    ct state established,related accept
    iifname \"nr*\" oifname \"{up}\" accept
  }}
",
            up = inner::NDMZ_UP,
            zdb_ip = ZDB_ADDRESS,
            zdb_ports = ZDB_PORTS,
        ),
    );
    out
}

/// A network resource: masquerade towards `ndmz`, nothing new comes in from there.
pub fn nr_ruleset() -> String {
    let mut out = String::new();
    replace_table(
        &mut out,
        "inet",
        "nr",
        &format!(
            "  chain input {{
    type filter hook input priority 0; policy accept;
    iifname \"{dmz}\" ct state established,related accept
    iifname \"{dmz}\" drop
  }}
  chain forward {{
    type filter hook forward priority 0; policy accept;
    iifname \"{dmz}\" ct state established,related accept
    iifname \"{dmz}\" drop
  }}
  chain postrouting {{
    type nat hook postrouting priority 100; policy accept;
    oifname \"{dmz}\" masquerade
  }}
",
            dmz = inner::NR_DMZ
        ),
    );
    out
}

/// `public`: the node's public address answers pings and opens only the web gateway's ports
/// (80 and 443, tenant-facing; nothing of the node's management listens there).
pub fn public_ruleset() -> String {
    let mut out = String::new();
    replace_table(
        &mut out,
        "inet",
        "public",
        "  chain input {
    type filter hook input priority 0; policy accept;
    ct state established,related accept
    iif lo accept
    meta l4proto { 1, 58 } accept
    tcp dport { 80, 443 } accept
    ct state new drop
  }
",
    );
    out
}

/// Loads `ruleset` into `ns` in one transaction.
pub async fn apply(ns: &Ns, nft: &Path, ruleset: &str) -> Result<(), NetworkError> {
    netns::run(ns, nft, &["-f", "-"], Some(ruleset))
        .await
        .map(|_| ())
}

/// Deletes the tables `(family, name)` of `ns`; missing ones are fine.
pub async fn delete_tables(
    ns: &Ns,
    nft: &Path,
    tables: &[(&str, &str)],
) -> Result<(), NetworkError> {
    let mut text = String::new();
    for (family, name) in tables {
        let _ = writeln!(text, "add table {family} {name}");
        let _ = writeln!(text, "delete table {family} {name}");
    }
    apply(ns, nft, &text).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_ruleset_lists_ports_and_filters() {
        let text = host_ruleset(
            "zos_a",
            "admz",
            &[51820, 51821],
            &[PortFilter {
                ifname: "a-p123".into(),
                mac: [2, 0, 0, 0, 0, 1],
                ipv4: Some(Ipv4Addr::new(10, 99, 0, 50)),
                ipv6: None,
            }],
        );
        assert!(text.contains("elements = { 51820, 51821 }"));
        assert!(text.contains("\"a-p123\" : jump in_a_p123"));
        assert!(text.contains("ether saddr != 02:00:00:00:00:01 drop"));
        assert!(text.contains("ip saddr != 10.99.0.50 drop"));
        assert!(text.contains("icmpv6 type { nd-router-advert, nd-redirect } drop"));
        assert!(text.contains("udp sport { 67, 547 } drop"));
        assert!(text.contains("ip saddr 100.127.0.0/16 oifname != \"admz\" masquerade"));
        // Empty sets and maps carry no elements line (nft refuses empty braces).
        let empty = host_ruleset("zos", "dmz", &[], &[]);
        assert!(!empty.contains("elements"));
    }

    #[test]
    fn ports_without_ipv4_send_no_ipv4() {
        let text = host_ruleset(
            "zos",
            "dmz",
            &[],
            &[PortFilter {
                ifname: "p1".into(),
                mac: [2, 0, 0, 0, 0, 1],
                ipv4: None,
                ipv6: Some("2001:db8::5".parse().unwrap()),
            }],
        );
        assert!(text.contains("ether type { arp, ip } drop"));
        assert!(text.contains("2001:db8::5"));
    }

    #[test]
    fn smtp_is_refused_in_ndmz() {
        assert!(ndmz_ruleset().contains("tcp dport 25 reject"));
    }

    #[test]
    fn ndmz_takes_only_the_zdb_ports_and_only_from_network_resources() {
        let text = ndmz_ruleset();
        let input = &text[text.find("chain input").unwrap()..text.find("chain forward").unwrap()];
        let accepts: Vec<&str> = input
            .lines()
            .map(str::trim)
            .filter(|l| l.ends_with("accept"))
            .collect();
        assert_eq!(
            accepts,
            [
                "ct state established,related accept",
                "iif lo accept",
                "iifname \"nr*\" ip daddr 100.127.0.1 tcp dport 9900-9999 accept",
            ]
        );
        assert!(input.contains("policy drop"));
    }
}
