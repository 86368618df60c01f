//! The rules every [`super::Networker`] follows, as pure checks on the recorded state: the real
//! implementation and the fake refuse the same requests with the same errors.

use std::net::Ipv4Addr;

use ipnet::{Ipv4Net, Ipv6Net};
use zos_types::deployment::WorkloadId;
use zos_types::workload::{Network, validate_name};

use super::names::{self, Names, NetId, mac_from};
use super::state::{NrRecord, PortRecord, PortTarget, State, WlRef};
use super::{Attachment, NetworkError, NetworkInfo, PublicIpRequest, Result, VmLink};

/// What applying a network means, once checked.
#[derive(Debug, Clone)]
pub struct NetworkPlan {
    pub netid: NetId,
    pub wg_ifname: String,
    pub slot: u16,
    pub existing: Option<NrRecord>,
}

/// Checks a `network` workload against the node's state.
pub fn plan_network(
    st: &State,
    names: &Names,
    wl: &WorkloadId,
    net: &Network,
) -> Result<NetworkPlan> {
    validate_name("name", &wl.name).map_err(|e| NetworkError::Invalid(e.to_string()))?;
    net.validate()
        .map_err(|e| NetworkError::Invalid(e.to_string()))?;
    if st.node.is_none() {
        return Err(NetworkError::NotReady);
    }
    let netid = NetId::new(wl.twin, &wl.name);
    let existing = st.networks.get(&netid).cloned();
    if let Some(e) = &existing
        && e.owner.contract != wl.contract
    {
        return Err(NetworkError::Owned {
            twin: wl.twin,
            name: wl.name.clone(),
            contract: e.owner.contract,
        });
    }
    let wg_ifname = names.nr_wg(&netid);
    for (id, other) in &st.networks {
        if *id == netid {
            continue;
        }
        if other.network.wireguard_listen_port == net.wireguard_listen_port {
            return Err(NetworkError::PortTaken(net.wireguard_listen_port));
        }
        if other.wg_ifname == wg_ifname || names.nr_bridge(id) == names.nr_bridge(&netid) {
            return Err(NetworkError::NameClash(wg_ifname));
        }
    }
    if let Some(e) = &existing
        && e.network.subnet != net.subnet
    {
        for p in st.ports.values() {
            if let PortTarget::Private { netid: n, .. } = &p.target
                && *n == netid
                && let Some(ip) = p.ipv4
                && !net.subnet.contains(&ip.addr())
            {
                return Err(NetworkError::Invalid(format!(
                    "subnet: machine {} uses {} outside {}",
                    p.owner.name,
                    ip.addr(),
                    net.subnet
                )));
            }
        }
    }
    let slot = match &existing {
        Some(e) => e.slot,
        None => st
            .free_slot()
            .ok_or_else(|| NetworkError::Invalid("no transit address left on this node".into()))?,
    };
    Ok(NetworkPlan {
        netid,
        wg_ifname,
        slot,
        existing,
    })
}

/// What a network record says about itself.
pub fn network_info(names: &Names, rec: &NrRecord) -> NetworkInfo {
    NetworkInfo {
        netid: rec.netid.clone(),
        twin: rec.owner.twin,
        name: rec.owner.name.clone(),
        namespace: names.nr_ns(&rec.netid),
        bridge: names.nr_bridge(&rec.netid),
        wg_ifname: rec.wg_ifname.clone(),
        wg_public_key: super::wireguard::public_key(&rec.network.wireguard_private_key)
            .unwrap_or_default(),
        listen_port: rec.network.wireguard_listen_port,
        backend: rec.backend,
        ip_range: rec.network.ip_range,
        subnet: rec.network.subnet,
        gateway: names::nr_gateway(rec.network.subnet),
        pid: rec.pid,
    }
}

/// Checks a machine's private interface and answers its record (without a link yet).
pub fn plan_private(
    st: &State,
    names: &Names,
    vm: &WorkloadId,
    network: &str,
    ip: Ipv4Addr,
) -> Result<PortRecord> {
    validate_name("network", network).map_err(|e| NetworkError::Invalid(e.to_string()))?;
    let rec = st
        .network(vm.twin, network)
        .ok_or_else(|| NetworkError::NoNetwork {
            twin: vm.twin,
            name: network.to_string(),
        })?;
    let subnet = rec.network.subnet;
    let gw = names::nr_gateway(subnet);
    let host = u32::from(ip) - u32::from(subnet.network());
    if !subnet.contains(&ip) || host < 2 || ip == subnet.broadcast() {
        return Err(NetworkError::Invalid(format!(
            "ip: {ip} must be .2 to .254 of {subnet} ({gw} is the gateway)"
        )));
    }
    let ifname = names.private_tap(&vm.short(&format!("net:{network}")));
    let owner = WlRef::from(vm);
    for p in st.ports.values() {
        if p.ifname == ifname && p.owner != owner {
            return Err(NetworkError::NameClash(ifname));
        }
        if p.owner != owner
            && matches!(&p.target, PortTarget::Private { netid, .. } if *netid == rec.netid)
            && p.ipv4.map(|n| n.addr()) == Some(ip)
        {
            return Err(NetworkError::AddressTaken {
                ip,
                network: network.to_string(),
            });
        }
    }
    Ok(PortRecord {
        ifname,
        owner,
        target: PortTarget::Private {
            netid: rec.netid.clone(),
            network: network.to_string(),
        },
        mac: mac_from(&format!("{vm}:net:{network}")),
        ipv4: Some(Ipv4Net::new(ip, 24).expect("24 is valid")),
        gateway4: Some(gw),
        ipv6: None,
        gateway6: None,
        link: None,
    })
}

/// Checks an `ip` workload and answers its record (without a link yet).
pub fn plan_public(
    st: &State,
    names: &Names,
    ip_wl: &WorkloadId,
    req: &PublicIpRequest,
) -> Result<PortRecord> {
    let public = st
        .node
        .as_ref()
        .ok_or(NetworkError::NotReady)?
        .public
        .as_ref()
        .ok_or(NetworkError::NoPublicConfig)?;
    if req.v4.is_none() && !req.v6 {
        return Err(NetworkError::Invalid(
            "an ip workload needs v4 or v6 (or both)".into(),
        ));
    }
    if req.v6 && public.config.ipv6.is_none() {
        return Err(NetworkError::NoPublicIpv6);
    }
    let ifname = names.public_tap(&ip_wl.short("pub"));
    let owner = WlRef::from(ip_wl);
    if let Some(v4) = &req.v4 {
        let a = v4.ip.addr();
        if v4.ip.prefix_len() < 31 && (a == v4.ip.network() || a == v4.ip.broadcast()) {
            return Err(NetworkError::Invalid(format!(
                "{} is not a host address",
                v4.ip
            )));
        }
        if !v4.ip.contains(&v4.gateway) || v4.gateway == a {
            return Err(NetworkError::Invalid(format!(
                "gateway {} must be another address of {}",
                v4.gateway,
                v4.ip.trunc()
            )));
        }
    }
    for p in st.ports.values() {
        if p.ifname == ifname && p.owner != owner {
            return Err(NetworkError::NameClash(ifname));
        }
        if p.owner != owner
            && p.target == PortTarget::Public
            && let (Some(have), Some(want)) = (p.ipv4, &req.v4)
            && have.addr() == want.ip.addr()
        {
            return Err(NetworkError::PublicIpTaken(want.ip.addr()));
        }
    }
    let mac = mac_from(&format!("{ip_wl}:pub"));
    let (ipv6, gateway6) = match (req.v6, public.config.ipv6) {
        (true, Some(prefix)) => {
            let p64 = Ipv6Net::new(prefix.network(), 64).expect("64 is valid");
            (
                Some(Ipv6Net::new(names::eui64(p64, &mac), 64).expect("64 is valid")),
                public.config.gw6,
            )
        }
        _ => (None, None),
    };
    Ok(PortRecord {
        ifname,
        owner,
        target: PortTarget::Public,
        mac,
        ipv4: req.v4.as_ref().map(|v| v.ip),
        gateway4: req.v4.as_ref().map(|v| v.gateway),
        ipv6,
        gateway6,
        link: None,
    })
}

/// The bridge a port is on.
pub fn port_bridge(names: &Names, p: &PortRecord) -> String {
    match &p.target {
        PortTarget::Private { netid, .. } => names.nr_bridge(netid),
        PortTarget::Public => names.public_bridge(),
    }
}

/// Routes a machine adds through a port besides the port's own network.
pub fn port_routes(st: &State, p: &PortRecord) -> Vec<Ipv4Net> {
    match &p.target {
        PortTarget::Private { netid, .. } => st
            .networks
            .get(netid)
            .map(|n| vec![n.network.ip_range])
            .unwrap_or_default(),
        PortTarget::Public => Vec::new(),
    }
}

/// What a port record tells the machine.
pub fn attachment(names: &Names, st: &State, p: &PortRecord) -> Attachment {
    Attachment {
        ifname: p.ifname.clone(),
        bridge: port_bridge(names, p),
        mac: p.mac,
        ipv4: p.ipv4,
        gateway4: p.gateway4,
        ipv6: p.ipv6,
        gateway6: p.gateway6,
        routes: port_routes(st, p),
    }
}

/// The port of `ip_wl` (an `ip` workload).
pub fn public_port<'a>(st: &'a State, names: &Names, ip_wl: &WorkloadId) -> Option<&'a PortRecord> {
    st.ports
        .get(&names.public_tap(&ip_wl.short("pub")))
        .filter(|p| p.owner == WlRef::from(ip_wl) && p.target == PortTarget::Public)
}

/// The private port of machine `vm` on `network` (only the fake looks it up this way).
#[cfg(any(test, feature = "fake"))]
pub fn private_port<'a>(
    st: &'a State,
    names: &Names,
    vm: &WorkloadId,
    network: &str,
) -> Option<&'a PortRecord> {
    st.ports
        .get(&names.private_tap(&vm.short(&format!("net:{network}"))))
        .filter(|p| p.owner == WlRef::from(vm))
}

/// Checks a change of the node's public setup: addresses `ip` workloads use stay available.
/// The private networks machine `vm` has an interface on, by name, sorted.
pub fn machine_networks(st: &State, vm: &WorkloadId) -> Vec<String> {
    let owner = WlRef::from(vm);
    let mut v: Vec<String> = st
        .ports
        .values()
        .filter(|p| p.owner == owner)
        .filter_map(|p| match &p.target {
            PortTarget::Private { network, .. } => Some(network.clone()),
            PortTarget::Public => None,
        })
        .collect();
    v.sort();
    v
}

pub fn check_public_change(st: &State, public: Option<&super::PublicSetup>) -> Result<()> {
    let ports: Vec<&PortRecord> = st
        .ports
        .values()
        .filter(|p| p.target == PortTarget::Public)
        .collect();
    if ports.is_empty() {
        return Ok(());
    }
    match public {
        None => Err(NetworkError::Invalid(format!(
            "public config: {} public ip workloads still use it",
            ports.len()
        ))),
        Some(p) if p.config.ipv6.is_none() && ports.iter().any(|x| x.ipv6.is_some()) => {
            Err(NetworkError::Invalid(
                "public config: public ip workloads still use its IPv6 prefix".into(),
            ))
        }
        Some(_) => Ok(()),
    }
}

/// Checks a link request.
pub fn check_link(link: &VmLink) -> Result<()> {
    if let VmLink::Veth { netns, ifname, .. } = link {
        if ifname.is_empty() || ifname.len() > names::IFNAME_MAX || ifname.contains('/') {
            return Err(NetworkError::Invalid(format!(
                "interface name {ifname:?} must be 1 to 15 characters without '/'"
            )));
        }
        if !netns.is_absolute() {
            return Err(NetworkError::Invalid(format!(
                "namespace path {} must be absolute",
                netns.display()
            )));
        }
    }
    Ok(())
}
