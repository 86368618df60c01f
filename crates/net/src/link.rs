//! Links, addresses and routes through rtnetlink, and tun/tap devices through their ioctls.
//!
//! Every function works in the namespace of the calling thread (see [`super::netns::in_netns`]).
//! "Ensure" functions are idempotent: they change only what differs.

use std::collections::HashMap;
use std::net::Ipv4Addr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

use futures::TryStreamExt;
use ipnet::{IpNet, Ipv4Net};
use rtnetlink::packet_route::address::AddressAttribute;
use rtnetlink::packet_route::link::{LinkAttribute, LinkInfo, LinkMessage};
use rtnetlink::packet_route::route::{
    RouteAddress, RouteAttribute, RouteHeader, RouteMessage, RouteProtocol, RouteScope,
};
use rtnetlink::{Handle, LinkBridge, LinkUnspec, LinkVeth, LinkWireguard, RouteMessageBuilder};

use super::NetworkError;

const ENODEV: i32 = libc::ENODEV;
const EEXIST: i32 = libc::EEXIST;
const ESRCH: i32 = libc::ESRCH;

fn code(e: &rtnetlink::Error) -> Option<i32> {
    match e {
        rtnetlink::Error::NetlinkError(m) => Some(m.raw_code().abs()),
        _ => None,
    }
}

fn nl(
    op: &'static str,
    target: impl Into<String>,
) -> impl FnOnce(rtnetlink::Error) -> NetworkError {
    let target = target.into();
    move |e| NetworkError::Netlink {
        op,
        target,
        reason: match &e {
            rtnetlink::Error::NetlinkError(m) => m.to_io().to_string(),
            other => other.to_string(),
        },
    }
}

/// What the module needs to know about a link.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Link {
    pub index: u32,
    pub name: String,
    pub mac: Option<[u8; 6]>,
    /// Index of the bridge it is a port of.
    pub master: Option<u32>,
    pub up: bool,
    pub kind: Option<String>,
    pub mtu: Option<u32>,
}

fn to_link(m: &LinkMessage) -> Link {
    let mut l = Link {
        index: m.header.index,
        name: String::new(),
        mac: None,
        master: None,
        up: m
            .header
            .flags
            .contains(rtnetlink::packet_route::link::LinkFlags::Up),
        kind: None,
        mtu: None,
    };
    for a in &m.attributes {
        match a {
            LinkAttribute::IfName(n) => l.name = n.clone(),
            LinkAttribute::Address(a) if a.len() == 6 => {
                let mut mac = [0u8; 6];
                mac.copy_from_slice(a);
                l.mac = Some(mac);
            }
            LinkAttribute::Controller(i) => l.master = Some(*i),
            LinkAttribute::Mtu(m) => l.mtu = Some(*m),
            LinkAttribute::LinkInfo(infos) => {
                for i in infos {
                    if let LinkInfo::Kind(k) = i {
                        l.kind = Some(k.to_string());
                    }
                }
            }
            _ => {}
        }
    }
    l
}

/// The link called `name`, if there is one.
pub async fn get(h: &Handle, name: &str) -> Result<Option<Link>, NetworkError> {
    let mut s = h.link().get().match_name(name.to_string()).execute();
    match s.try_next().await {
        Ok(Some(m)) => Ok(Some(to_link(&m))),
        Ok(None) => Ok(None),
        Err(e) if code(&e) == Some(ENODEV) => Ok(None),
        Err(e) => Err(nl("reading link", name)(e)),
    }
}

/// The link called `name`, or an error naming it.
pub async fn need(h: &Handle, name: &str) -> Result<Link, NetworkError> {
    get(h, name)
        .await?
        .ok_or_else(|| NetworkError::NoLink(name.to_string()))
}

/// Every link of the namespace.
pub async fn list(h: &Handle) -> Result<Vec<Link>, NetworkError> {
    let links: Vec<LinkMessage> = h
        .link()
        .get()
        .execute()
        .try_collect()
        .await
        .map_err(nl("listing", "links"))?;
    Ok(links.iter().map(to_link).collect())
}

/// Brings `name` up.
pub async fn set_up(h: &Handle, name: &str) -> Result<(), NetworkError> {
    let l = need(h, name).await?;
    if l.up {
        return Ok(());
    }
    h.link()
        .set(LinkUnspec::new_with_index(l.index).up().build())
        .execute()
        .await
        .map_err(nl("bringing up", name))
}

/// Makes bridge `name` (up) unless it exists.
pub async fn ensure_bridge(h: &Handle, name: &str) -> Result<Link, NetworkError> {
    if get(h, name).await?.is_none() {
        match h.link().add(LinkBridge::new(name).build()).execute().await {
            Ok(()) => {}
            Err(e) if code(&e) == Some(EEXIST) => {}
            Err(e) => return Err(nl("creating bridge", name)(e)),
        }
    }
    set_up(h, name).await?;
    need(h, name).await
}

/// Makes the veth pair `a`–`b`.
pub async fn add_veth(h: &Handle, a: &str, b: &str) -> Result<(), NetworkError> {
    h.link()
        .add(LinkVeth::new(a, b).build())
        .execute()
        .await
        .map_err(nl("creating veth", a))
}

/// Makes a kernel WireGuard interface.
pub async fn add_wireguard(h: &Handle, name: &str) -> Result<(), NetworkError> {
    h.link()
        .add(LinkWireguard::new(name).build())
        .execute()
        .await
        .map_err(nl("creating wireguard interface", name))
}

/// Moves `name` into the namespace open at `ns_fd`, renaming it to `new_name` on the way.
pub async fn move_to(
    h: &Handle,
    name: &str,
    ns_fd: RawFd,
    new_name: &str,
) -> Result<(), NetworkError> {
    let l = need(h, name).await?;
    h.link()
        .set(
            LinkUnspec::new_with_index(l.index)
                .setns_by_fd(ns_fd)
                .name(new_name.to_string())
                .build(),
        )
        .execute()
        .await
        .map_err(nl("moving link", name))
}

/// Makes `name` a port of `bridge` (unless it is already).
pub async fn set_master(h: &Handle, name: &str, bridge: &str) -> Result<(), NetworkError> {
    let l = need(h, name).await?;
    let b = need(h, bridge).await?;
    if l.master == Some(b.index) {
        return Ok(());
    }
    h.link()
        .set(
            LinkUnspec::new_with_index(l.index)
                .controller(b.index)
                .build(),
        )
        .execute()
        .await
        .map_err(nl("attaching to bridge", name))
}

/// Takes `name` out of its bridge, if it is in one; a missing link is fine.
pub async fn set_nomaster(h: &Handle, name: &str) -> Result<(), NetworkError> {
    let Some(l) = get(h, name).await? else {
        return Ok(());
    };
    if l.master.is_none() {
        return Ok(());
    }
    h.link()
        .set(LinkUnspec::new_with_index(l.index).nocontroller().build())
        .execute()
        .await
        .map_err(nl("detaching from its bridge", name))
}

/// Sets the MAC of `name` (unless it has it).
pub async fn set_mac(h: &Handle, name: &str, mac: [u8; 6]) -> Result<(), NetworkError> {
    let l = need(h, name).await?;
    if l.mac == Some(mac) {
        return Ok(());
    }
    h.link()
        .set(
            LinkUnspec::new_with_index(l.index)
                .address(mac.to_vec())
                .build(),
        )
        .execute()
        .await
        .map_err(nl("setting the address of", name))
}

/// Sets the MTU of `name` (unless it has it).
pub async fn set_mtu(h: &Handle, name: &str, mtu: u32) -> Result<(), NetworkError> {
    let l = need(h, name).await?;
    if l.mtu == Some(mtu) {
        return Ok(());
    }
    h.link()
        .set(LinkUnspec::new_with_index(l.index).mtu(mtu).build())
        .execute()
        .await
        .map_err(nl("setting the mtu of", name))
}

/// Deletes `name`; a missing link is fine.
pub async fn delete(h: &Handle, name: &str) -> Result<(), NetworkError> {
    let Some(l) = get(h, name).await? else {
        return Ok(());
    };
    match h.link().del(l.index).execute().await {
        Ok(()) => Ok(()),
        Err(e) if code(&e) == Some(ENODEV) => Ok(()),
        Err(e) => Err(nl("deleting link", name)(e)),
    }
}

/// The addresses on `name`.
pub async fn addrs(h: &Handle, name: &str) -> Result<Vec<IpNet>, NetworkError> {
    let l = need(h, name).await?;
    let mut all = addrs_by_index(h, Some(l.index), name).await?;
    Ok(all.remove(&l.index).unwrap_or_default())
}

/// The addresses of every link of the namespace, by link index, from one dump (no link can
/// vanish between a listing and a per-link lookup).
pub async fn all_addrs(h: &Handle) -> Result<HashMap<u32, Vec<IpNet>>, NetworkError> {
    addrs_by_index(h, None, "links").await
}

async fn addrs_by_index(
    h: &Handle,
    only: Option<u32>,
    what: &str,
) -> Result<HashMap<u32, Vec<IpNet>>, NetworkError> {
    let mut req = h.address().get();
    if let Some(index) = only {
        req = req.set_link_index_filter(index);
    }
    let msgs: Vec<_> = req
        .execute()
        .try_collect()
        .await
        .map_err(nl("listing addresses of", what))?;
    let mut out: HashMap<u32, Vec<IpNet>> = HashMap::new();
    for m in msgs {
        if only.is_some_and(|i| i != m.header.index) {
            continue;
        }
        // IFA_LOCAL is the address itself; IFA_ADDRESS is the peer on point-to-point links.
        let local = m.attributes.iter().find_map(|a| match a {
            AddressAttribute::Local(ip) => Some(*ip),
            _ => None,
        });
        let addr = local.or_else(|| {
            m.attributes.iter().find_map(|a| match a {
                AddressAttribute::Address(ip) => Some(*ip),
                _ => None,
            })
        });
        if let Some(ip) = addr
            && let Ok(net) = IpNet::new(ip, m.header.prefix_len)
        {
            out.entry(m.header.index).or_default().push(net);
        }
    }
    Ok(out)
}

/// Makes the addresses of `name` exactly `want` (link-local IPv6 addresses are left alone).
pub async fn set_addrs(h: &Handle, name: &str, want: &[IpNet]) -> Result<(), NetworkError> {
    let l = need(h, name).await?;
    let have = addrs(h, name).await?;
    for a in &have {
        let link_local = matches!(a, IpNet::V6(v6) if v6.addr().segments()[0] & 0xffc0 == 0xfe80);
        if !want.contains(a) && !link_local {
            del_addr(h, l.index, *a, name).await?;
        }
    }
    for a in want {
        if !have.contains(a) {
            match h
                .address()
                .add(l.index, a.addr(), a.prefix_len())
                .execute()
                .await
            {
                Ok(()) => {}
                Err(e) if code(&e) == Some(EEXIST) => {}
                Err(e) => return Err(nl("adding an address to", name)(e)),
            }
        }
    }
    Ok(())
}

async fn del_addr(h: &Handle, index: u32, a: IpNet, name: &str) -> Result<(), NetworkError> {
    let msgs: Vec<_> = h
        .address()
        .get()
        .set_link_index_filter(index)
        .set_address_filter(a.addr())
        .set_prefix_length_filter(a.prefix_len())
        .execute()
        .try_collect()
        .await
        .map_err(nl("listing addresses of", name))?;
    for m in msgs {
        if m.header.index == index {
            h.address()
                .del(m)
                .execute()
                .await
                .map_err(nl("removing an address from", name))?;
        }
    }
    Ok(())
}

/// An IPv4 route of the main table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Route {
    pub dest: Ipv4Net,
    pub gateway: Option<Ipv4Addr>,
    pub src: Option<Ipv4Addr>,
    /// `scope link`: the destination is on the link itself.
    pub link_scope: bool,
}

impl Route {
    pub fn dev(dest: Ipv4Net) -> Self {
        Self {
            dest,
            gateway: None,
            src: None,
            link_scope: true,
        }
    }

    pub fn via(dest: Ipv4Net, gateway: Ipv4Addr) -> Self {
        Self {
            dest,
            gateway: Some(gateway),
            src: None,
            link_scope: false,
        }
    }

    pub fn src(mut self, src: Ipv4Addr) -> Self {
        self.src = Some(src);
        self
    }
}

fn route_message(r: &Route, oif: u32) -> RouteMessage {
    let mut b = RouteMessageBuilder::<Ipv4Addr>::new()
        .destination_prefix(r.dest.network(), r.dest.prefix_len())
        .output_interface(oif)
        .scope(if r.link_scope {
            RouteScope::Link
        } else {
            RouteScope::Universe
        });
    if let Some(gw) = r.gateway {
        b = b.gateway(gw);
    }
    if let Some(src) = r.src {
        b = b.pref_source(src);
    }
    b.build()
}

/// Adds (or replaces) route `r` through `dev`.
pub async fn ensure_route(h: &Handle, dev: &str, r: Route) -> Result<(), NetworkError> {
    let l = need(h, dev).await?;
    h.route()
        .add(route_message(&r, l.index))
        .replace()
        .execute()
        .await
        .map_err(nl("adding a route through", format!("{dev} to {}", r.dest)))
}

/// Deletes the route to `dest` through `dev`; a missing route is fine.
pub async fn delete_route(h: &Handle, dev: &str, dest: Ipv4Net) -> Result<(), NetworkError> {
    let Some(l) = get(h, dev).await? else {
        return Ok(());
    };
    let msg = RouteMessageBuilder::<Ipv4Addr>::new()
        .destination_prefix(dest.network(), dest.prefix_len())
        .output_interface(l.index)
        .build();
    match h.route().del(msg).execute().await {
        Ok(()) => Ok(()),
        Err(e) if matches!(code(&e), Some(ESRCH) | Some(ENODEV)) => Ok(()),
        Err(e) => Err(nl("deleting a route through", format!("{dev} to {dest}"))(
            e,
        )),
    }
}

/// Destinations of the static (non-kernel) main-table IPv4 routes through `dev`.
pub async fn routes(h: &Handle, dev: &str) -> Result<Vec<Ipv4Net>, NetworkError> {
    let l = need(h, dev).await?;
    let msgs: Vec<RouteMessage> = h
        .route()
        .get(RouteMessageBuilder::<Ipv4Addr>::new().build())
        .execute()
        .try_collect()
        .await
        .map_err(nl("listing routes of", dev))?;
    let mut out = Vec::new();
    for m in msgs {
        if m.header.table != RouteHeader::RT_TABLE_MAIN
            || m.header.protocol == RouteProtocol::Kernel
        {
            continue;
        }
        let oif = m.attributes.iter().find_map(|a| match a {
            RouteAttribute::Oif(i) => Some(*i),
            _ => None,
        });
        if oif != Some(l.index) {
            continue;
        }
        let dest = m
            .attributes
            .iter()
            .find_map(|a| match a {
                RouteAttribute::Destination(RouteAddress::Inet(ip)) => Some(*ip),
                _ => None,
            })
            .unwrap_or(Ipv4Addr::UNSPECIFIED);
        if let Ok(net) = Ipv4Net::new(dest, m.header.destination_prefix_length) {
            out.push(net);
        }
    }
    Ok(out)
}

#[repr(C)]
struct IfReqFlags {
    name: [libc::c_char; libc::IFNAMSIZ],
    flags: libc::c_short,
    _pad: [u8; 22],
}

fn tun_open(name: &str, flags: libc::c_int) -> Result<OwnedFd, NetworkError> {
    let err = |op: &'static str| {
        let name = name.to_string();
        move |source: std::io::Error| NetworkError::System {
            op,
            target: name,
            source,
        }
    };
    if name.is_empty() || name.len() >= libc::IFNAMSIZ {
        return Err(NetworkError::Invalid(format!(
            "interface name {name:?} must be 1 to 15 characters"
        )));
    }
    // SAFETY: plain open(2) of a device path with a NUL-terminated literal.
    let fd = unsafe { libc::open(c"/dev/net/tun".as_ptr(), libc::O_RDWR | libc::O_CLOEXEC) };
    if fd < 0 {
        return Err(err("opening /dev/net/tun for")(
            std::io::Error::last_os_error(),
        ));
    }
    // SAFETY: `fd` was just opened and is owned by nobody else.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    let mut req = IfReqFlags {
        name: [0; libc::IFNAMSIZ],
        flags: flags as libc::c_short,
        _pad: [0; 22],
    };
    for (i, b) in name.bytes().enumerate() {
        req.name[i] = b as libc::c_char;
    }
    // SAFETY: TUNSETIFF reads an ifreq (name and flags), which `req` lays out.
    let rc = unsafe { libc::ioctl(fd.as_raw_fd(), libc::TUNSETIFF, &mut req) };
    if rc < 0 {
        return Err(err("creating tun device")(std::io::Error::last_os_error()));
    }
    Ok(fd)
}

/// Makes a persistent tap device `name` in the calling thread's namespace, for a VMM to open
/// by name later. An existing tap of that name is fine.
pub fn create_tap(name: &str) -> Result<(), NetworkError> {
    let fd = tun_open(name, libc::IFF_TAP | libc::IFF_NO_PI)?;
    // SAFETY: TUNSETPERSIST takes an integer argument.
    let rc = unsafe { libc::ioctl(fd.as_raw_fd(), libc::TUNSETPERSIST, 1 as libc::c_ulong) };
    if rc < 0 {
        return Err(NetworkError::System {
            op: "making persistent",
            target: name.to_string(),
            source: std::io::Error::last_os_error(),
        });
    }
    Ok(())
}

/// Adds (or replaces) the IPv6 default route through `dev` via `gateway`.
pub async fn ensure_default_v6(
    h: &Handle,
    dev: &str,
    gateway: std::net::Ipv6Addr,
) -> Result<(), NetworkError> {
    let l = need(h, dev).await?;
    let msg = RouteMessageBuilder::<std::net::Ipv6Addr>::new()
        .destination_prefix(std::net::Ipv6Addr::UNSPECIFIED, 0)
        .output_interface(l.index)
        .gateway(gateway)
        .build();
    h.route()
        .add(msg)
        .replace()
        .execute()
        .await
        .map_err(nl("adding the IPv6 default route through", dev))
}
