//! A DHCPv4 client: DISCOVER, OFFER, REQUEST, ACK on one interface, and the lease applied with
//! rtnetlink (address, default route) and written to `resolv.conf` (name servers).
//!
//! The messages are built and read with `dhcproto`. They go through a UDP socket bound to port
//! 68 and to the interface (`SO_BINDTODEVICE`), sent to the broadcast address with the
//! broadcast flag set, so the server broadcasts its answers too: the interface has no address
//! yet, and a unicast answer to the offered address would be dropped. An answer is taken only
//! when it carries our transaction id and hardware address; anything else on the wire (other
//! clients' traffic, malformed packets) is skipped. A NAK starts over with a DISCOVER. A lease
//! must name a usable unicast address and a contiguous netmask, or it is refused.
//!
//! [`keep`] renews the lease at half its time (RENEWING: a REQUEST from the leased address,
//! unicast to the server, then broadcast if it does not answer), for as long as the node runs.

use std::net::{Ipv4Addr, SocketAddrV4, UdpSocket};
use std::os::fd::OwnedFd;
use std::path::Path;
use std::time::{Duration, Instant};

use dhcproto::v4::{
    self, Decodable, Decoder, DhcpOption, Encodable, Encoder, Flags, Message, MessageType,
    OptionCode,
};
use futures::TryStreamExt;
use rtnetlink::packet_route::link::{LinkAttribute, LinkFlags};
use rtnetlink::{Handle, LinkUnspec, RouteMessageBuilder};

/// The DHCP client port.
pub const CLIENT_PORT: u16 = 68;
/// The DHCP server port.
pub const SERVER_PORT: u16 = 67;
/// The most name servers written (the resolver reads three).
pub const MAX_DNS: usize = 3;

/// An address lease.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    pub interface: String,
    pub address: Ipv4Addr,
    pub prefix_len: u8,
    pub router: Option<Ipv4Addr>,
    pub dns: Vec<Ipv4Addr>,
    /// The server that granted it.
    pub server: Ipv4Addr,
    /// Lease time in seconds (`u32::MAX`: infinite).
    pub lease_secs: u32,
}

/// Why no lease.
#[derive(Debug, thiserror::Error)]
pub enum DhcpError {
    #[error("{what} on {interface}")]
    Io {
        what: &'static str,
        interface: String,
        #[source]
        source: std::io::Error,
    },
    #[error("no DHCP {expected} on {interface} within {waited:?}")]
    Timeout {
        expected: &'static str,
        interface: String,
        waited: Duration,
    },
    #[error("the DHCP server {server} refused the request on {interface} (NAK)")]
    Nak { interface: String, server: Ipv4Addr },
    #[error("the DHCP answer on {interface} is unusable: {reason}")]
    BadLease { interface: String, reason: String },
    #[error("cannot build a DHCP message: {0}")]
    Encode(String),
    #[error("netlink: {op} {target}: {reason}")]
    Netlink {
        op: &'static str,
        target: String,
        reason: String,
    },
}

/// The options asked of the server.
fn wanted_options() -> DhcpOption {
    DhcpOption::ParameterRequestList(vec![
        OptionCode::SubnetMask,
        OptionCode::Router,
        OptionCode::DomainNameServer,
        OptionCode::AddressLeaseTime,
        OptionCode::ServerIdentifier,
    ])
}

fn client_id(mac: [u8; 6]) -> DhcpOption {
    let mut id = vec![1u8];
    id.extend_from_slice(&mac);
    DhcpOption::ClientIdentifier(id)
}

fn base(xid: u32, mac: [u8; 6], secs: u16) -> Message {
    let mut m = Message::new_with_id(
        xid,
        Ipv4Addr::UNSPECIFIED,
        Ipv4Addr::UNSPECIFIED,
        Ipv4Addr::UNSPECIFIED,
        Ipv4Addr::UNSPECIFIED,
        &mac,
    );
    m.set_flags(Flags::default().set_broadcast());
    m.set_secs(secs);
    m
}

/// The DISCOVER of transaction `xid`.
pub fn discover(xid: u32, mac: [u8; 6], secs: u16) -> Message {
    let mut m = base(xid, mac, secs);
    let o = m.opts_mut();
    o.insert(DhcpOption::MessageType(MessageType::Discover));
    o.insert(client_id(mac));
    o.insert(wanted_options());
    o.insert(DhcpOption::MaxMessageSize(1500));
    m
}

/// The REQUEST for the address `offer` offered.
pub fn request(xid: u32, mac: [u8; 6], secs: u16, offer: &Message) -> Result<Message, String> {
    let server = match offer.opts().get(OptionCode::ServerIdentifier) {
        Some(DhcpOption::ServerIdentifier(s)) => *s,
        _ => return Err("the offer names no server".into()),
    };
    let mut m = base(xid, mac, secs);
    let o = m.opts_mut();
    o.insert(DhcpOption::MessageType(MessageType::Request));
    o.insert(client_id(mac));
    o.insert(DhcpOption::RequestedIpAddress(offer.yiaddr()));
    o.insert(DhcpOption::ServerIdentifier(server));
    o.insert(wanted_options());
    o.insert(DhcpOption::MaxMessageSize(1500));
    Ok(m)
}

/// Whether `m` is a server's answer to our transaction.
pub fn answers(m: &Message, xid: u32, mac: [u8; 6]) -> bool {
    m.opcode() == v4::Opcode::BootReply && m.xid() == xid && m.chaddr().get(..6) == Some(&mac[..])
}

/// The prefix length of a contiguous netmask.
pub fn prefix_len(mask: Ipv4Addr) -> Option<u8> {
    let m = u32::from(mask);
    let len = m.leading_ones();
    (m.checked_shl(len).unwrap_or(0) == 0).then_some(len as u8)
}

/// The lease an ACK grants, checked.
pub fn lease_from_ack(interface: &str, ack: &Message) -> Result<Lease, DhcpError> {
    let bad = |reason: String| DhcpError::BadLease {
        interface: interface.to_string(),
        reason,
    };
    let address = ack.yiaddr();
    if address.is_unspecified()
        || address.is_broadcast()
        || address.is_multicast()
        || address.is_loopback()
    {
        return Err(bad(format!("{address} is not a unicast address")));
    }
    let opts = ack.opts();
    let prefix_len = match opts.get(OptionCode::SubnetMask) {
        Some(DhcpOption::SubnetMask(mask)) => {
            prefix_len(*mask).ok_or_else(|| bad(format!("netmask {mask} is not contiguous")))?
        }
        _ => match address.octets()[0] {
            // No mask: the classful one, as clients have always done.
            0..=127 => 8,
            128..=191 => 16,
            _ => 24,
        },
    };
    if prefix_len == 0 || prefix_len > 30 {
        return Err(bad(format!("prefix /{prefix_len} leaves no network")));
    }
    let router = match opts.get(OptionCode::Router) {
        Some(DhcpOption::Router(r)) => r
            .iter()
            .copied()
            .find(|r| !r.is_unspecified() && !r.is_broadcast() && !r.is_multicast()),
        _ => None,
    };
    let dns = match opts.get(OptionCode::DomainNameServer) {
        Some(DhcpOption::DomainNameServer(d)) => d
            .iter()
            .copied()
            .filter(|d| !d.is_unspecified() && !d.is_broadcast() && !d.is_multicast())
            .take(MAX_DNS)
            .collect(),
        _ => Vec::new(),
    };
    let server = match opts.get(OptionCode::ServerIdentifier) {
        Some(DhcpOption::ServerIdentifier(s)) => *s,
        _ => ack.siaddr(),
    };
    let lease_secs = match opts.get(OptionCode::AddressLeaseTime) {
        Some(DhcpOption::AddressLeaseTime(t)) => *t,
        _ => 0,
    };
    Ok(Lease {
        interface: interface.to_string(),
        address,
        prefix_len,
        router,
        dns,
        server,
        lease_secs,
    })
}

/// The socket of the exchange: UDP port 68 on `interface`, broadcast allowed.
fn open_socket(interface: &str) -> Result<UdpSocket, DhcpError> {
    use nix::sys::socket::{
        AddressFamily, SockFlag, SockType, SockaddrIn, bind, setsockopt, socket, sockopt,
    };
    let io = |what: &'static str| {
        let interface = interface.to_string();
        move |e: nix::Error| DhcpError::Io {
            what,
            interface,
            source: e.into(),
        }
    };
    let fd: OwnedFd = socket(
        AddressFamily::Inet,
        SockType::Datagram,
        SockFlag::SOCK_CLOEXEC,
        None,
    )
    .map_err(io("cannot open a UDP socket"))?;
    setsockopt(&fd, sockopt::ReuseAddr, &true).map_err(io("cannot set SO_REUSEADDR"))?;
    setsockopt(&fd, sockopt::Broadcast, &true).map_err(io("cannot set SO_BROADCAST"))?;
    setsockopt(
        &fd,
        sockopt::BindToDevice,
        &std::ffi::OsString::from(interface),
    )
    .map_err(io("cannot bind the DHCP socket to the interface"))?;
    bind(
        std::os::fd::AsRawFd::as_raw_fd(&fd),
        &SockaddrIn::from(SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, CLIENT_PORT)),
    )
    .map_err(io("cannot bind UDP port 68"))?;
    Ok(UdpSocket::from(fd))
}

fn send(sock: &UdpSocket, interface: &str, m: &Message) -> Result<(), DhcpError> {
    send_to(sock, interface, m, Ipv4Addr::BROADCAST)
}

fn send_to(sock: &UdpSocket, interface: &str, m: &Message, to: Ipv4Addr) -> Result<(), DhcpError> {
    let mut buf = Vec::with_capacity(576);
    m.encode(&mut Encoder::new(&mut buf))
        .map_err(|e| DhcpError::Encode(e.to_string()))?;
    sock.send_to(&buf, SocketAddrV4::new(to, SERVER_PORT))
        .map_err(|source| DhcpError::Io {
            what: "cannot send a DHCP message",
            interface: interface.to_string(),
            source,
        })?;
    Ok(())
}

/// Waits up to `wait` for an answer to `xid` of one of `types`.
fn receive(
    sock: &UdpSocket,
    interface: &str,
    xid: u32,
    mac: [u8; 6],
    types: &[MessageType],
    wait: Duration,
) -> Result<Option<Message>, DhcpError> {
    let deadline = Instant::now() + wait;
    let mut buf = [0u8; 2048];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Ok(None);
        }
        sock.set_read_timeout(Some(left))
            .map_err(|source| DhcpError::Io {
                what: "cannot set a timeout",
                interface: interface.to_string(),
                source,
            })?;
        let n = match sock.recv_from(&mut buf) {
            Ok((n, _)) => n,
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                return Ok(None);
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(source) => {
                return Err(DhcpError::Io {
                    what: "cannot receive DHCP answers",
                    interface: interface.to_string(),
                    source,
                });
            }
        };
        let Ok(m) = Message::decode(&mut Decoder::new(&buf[..n])) else {
            tracing::debug!(interface, bytes = n, "skipping a malformed DHCP packet");
            continue;
        };
        if !answers(&m, xid, mac) {
            continue;
        }
        match m.opts().msg_type() {
            Some(t) if types.contains(&t) => return Ok(Some(m)),
            _ => continue,
        }
    }
}

/// Settings of one lease request.
#[derive(Debug, Clone)]
pub struct Config {
    /// How long to wait for each answer before sending again.
    pub wait: Duration,
    /// How many DISCOVERs to send before giving up.
    pub attempts: u32,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            wait: Duration::from_secs(4),
            attempts: 4,
        }
    }
}

/// Takes a lease on `interface` (up already), whose hardware address is `mac`.
pub fn obtain(interface: &str, mac: [u8; 6], config: &Config) -> Result<Lease, DhcpError> {
    let sock = open_socket(interface)?;
    let start = Instant::now();
    let secs = || start.elapsed().as_secs().min(u16::MAX as u64) as u16;
    let mut last = DhcpError::Timeout {
        expected: "offer",
        interface: interface.to_string(),
        waited: config.wait * config.attempts,
    };
    for attempt in 0..config.attempts.max(1) {
        let xid: u32 = random_xid(attempt);
        send(&sock, interface, &discover(xid, mac, secs()))?;
        let Some(offer) = receive(
            &sock,
            interface,
            xid,
            mac,
            &[MessageType::Offer],
            config.wait,
        )?
        else {
            tracing::debug!(interface, attempt, "no DHCP offer yet");
            continue;
        };
        let req = request(xid, mac, secs(), &offer).map_err(|reason| DhcpError::BadLease {
            interface: interface.to_string(),
            reason,
        })?;
        // The REQUEST is sent again if the answer is lost, like the DISCOVER.
        let mut answer = None;
        for _ in 0..3 {
            send(&sock, interface, &req)?;
            answer = receive(
                &sock,
                interface,
                xid,
                mac,
                &[MessageType::Ack, MessageType::Nak],
                config.wait,
            )?;
            if answer.is_some() {
                break;
            }
        }
        match answer {
            Some(m) if m.opts().has_msg_type(MessageType::Ack) => {
                return lease_from_ack(interface, &m);
            }
            Some(m) => {
                let server = match m.opts().get(OptionCode::ServerIdentifier) {
                    Some(DhcpOption::ServerIdentifier(s)) => *s,
                    _ => m.siaddr(),
                };
                tracing::warn!(interface, %server, "DHCP NAK: starting over");
                last = DhcpError::Nak {
                    interface: interface.to_string(),
                    server,
                };
            }
            None => {
                last = DhcpError::Timeout {
                    expected: "acknowledgement",
                    interface: interface.to_string(),
                    waited: config.wait * 3,
                }
            }
        }
    }
    Err(last)
}

/// The REQUEST that renews `lease` (RENEWING state: from its address, no server named).
pub fn renewal(xid: u32, mac: [u8; 6], lease: &Lease) -> Message {
    let mut m = Message::new_with_id(
        xid,
        lease.address,
        Ipv4Addr::UNSPECIFIED,
        Ipv4Addr::UNSPECIFIED,
        Ipv4Addr::UNSPECIFIED,
        &mac,
    );
    let o = m.opts_mut();
    o.insert(DhcpOption::MessageType(MessageType::Request));
    o.insert(client_id(mac));
    o.insert(wanted_options());
    o.insert(DhcpOption::MaxMessageSize(1500));
    m
}

/// Renews `lease`: a REQUEST unicast to its server, then broadcast if it does not answer.
/// Answers the renewed lease (the server may change its options, not its address).
pub fn renew(lease: &Lease, mac: [u8; 6], config: &Config) -> Result<Lease, DhcpError> {
    let sock = open_socket(&lease.interface)?;
    let interface = lease.interface.as_str();
    for (i, to) in [
        lease.server,
        lease.server,
        Ipv4Addr::BROADCAST,
        Ipv4Addr::BROADCAST,
    ]
    .into_iter()
    .enumerate()
    {
        let xid = random_xid(i as u32);
        if to.is_unspecified() {
            continue;
        }
        send_to(&sock, interface, &renewal(xid, mac, lease), to)?;
        let types = [MessageType::Ack, MessageType::Nak];
        match receive(&sock, interface, xid, mac, &types, config.wait)? {
            Some(m) if m.opts().has_msg_type(MessageType::Ack) => {
                let renewed = lease_from_ack(interface, &m)?;
                if renewed.address != lease.address {
                    return Err(DhcpError::BadLease {
                        interface: interface.to_string(),
                        reason: format!(
                            "the renewal grants {} instead of {}",
                            renewed.address, lease.address
                        ),
                    });
                }
                return Ok(renewed);
            }
            Some(_) => {
                return Err(DhcpError::Nak {
                    interface: interface.to_string(),
                    server: lease.server,
                });
            }
            None => continue,
        }
    }
    Err(DhcpError::Timeout {
        expected: "renewal",
        interface: interface.to_string(),
        waited: config.wait * 4,
    })
}

/// When to renew a lease of `secs` seconds: at half of it (T1), at least a minute apart;
/// `None` for an infinite lease.
pub fn renew_after(secs: u32) -> Option<Duration> {
    (secs != u32::MAX && secs != 0).then(|| Duration::from_secs((secs / 2).max(60) as u64))
}

/// Keeps `lease` for as long as the process runs: renews it at T1 on a thread of its own, says
/// on the console when a renewal fails, and tries again a minute later.
pub fn keep(lease: Lease, mac: [u8; 6]) {
    let spawned = std::thread::Builder::new()
        .name("dhcp-renew".into())
        .spawn(move || {
            let mut lease = lease;
            let mut wait = renew_after(lease.lease_secs);
            while let Some(d) = wait {
                std::thread::sleep(d);
                match renew(&lease, mac, &Config::default()) {
                    Ok(l) => {
                        tracing::debug!(interface = %l.interface, address = %l.address, secs = l.lease_secs, "lease renewed");
                        wait = renew_after(l.lease_secs);
                        lease = l;
                    }
                    Err(e) => {
                        tracing::error!("{}: trying again in a minute", zos_runtime::error_chain(&e));
                        wait = Some(Duration::from_secs(60));
                    }
                }
            }
        });
    if let Err(e) = spawned {
        tracing::error!("cannot start the lease renewal: {e}");
    }
}

fn random_xid(attempt: u32) -> u32 {
    let mut b = [0u8; 4];
    if getrandom_fill(&mut b).is_err() {
        // No entropy yet this early is possible; the time is enough to tell transactions apart.
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        return t ^ attempt.rotate_left(16) ^ std::process::id();
    }
    u32::from_ne_bytes(b)
}

fn getrandom_fill(b: &mut [u8]) -> std::io::Result<()> {
    // SAFETY: getrandom writes at most b.len() bytes into b; GRND_NONBLOCK never waits.
    let r = unsafe { libc::getrandom(b.as_mut_ptr().cast(), b.len(), libc::GRND_NONBLOCK) };
    if r == b.len() as isize {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// `aa:bb:cc:dd:ee:ff` as bytes.
pub fn parse_mac(s: &str) -> Option<[u8; 6]> {
    let mut mac = [0u8; 6];
    let mut parts = s.split(':');
    for b in &mut mac {
        let p = parts.next()?;
        if p.len() != 2 {
            return None;
        }
        *b = u8::from_str_radix(p, 16).ok()?;
    }
    parts.next().is_none().then_some(mac)
}

/// The wired interfaces worth asking for a lease: those backed by a device (not `lo`, bridges,
/// veths or tunnels), wireless ones left out, sorted by name.
pub fn candidates(sys_class_net: &Path) -> Vec<String> {
    let Ok(dir) = std::fs::read_dir(sys_class_net) else {
        return Vec::new();
    };
    let mut out: Vec<String> = dir
        .flatten()
        .filter(|e| e.path().join("device").exists() && !e.path().join("wireless").exists())
        .filter_map(|e| e.file_name().into_string().ok())
        .collect();
    out.sort();
    out
}

fn nl(op: &'static str, target: &str) -> impl FnOnce(rtnetlink::Error) -> DhcpError {
    let target = target.to_string();
    move |e| DhcpError::Netlink {
        op,
        target,
        reason: match &e {
            rtnetlink::Error::NetlinkError(m) => m.to_io().to_string(),
            other => other.to_string(),
        },
    }
}

fn is_exists(e: &rtnetlink::Error) -> bool {
    matches!(e, rtnetlink::Error::NetlinkError(m) if m.raw_code().abs() == libc::EEXIST)
}

async fn index_of(h: &Handle, name: &str) -> Result<(u32, bool), DhcpError> {
    let m = h
        .link()
        .get()
        .match_name(name.to_string())
        .execute()
        .try_next()
        .await
        .map_err(nl("reading link", name))?
        .ok_or_else(|| DhcpError::Netlink {
            op: "reading link",
            target: name.to_string(),
            reason: "no such link".into(),
        })?;
    Ok((m.header.index, m.header.flags.contains(LinkFlags::Up)))
}

/// The hardware address of `interface`.
pub async fn link_mac(h: &Handle, interface: &str) -> Result<[u8; 6], DhcpError> {
    let m = h
        .link()
        .get()
        .match_name(interface.to_string())
        .execute()
        .try_next()
        .await
        .map_err(nl("reading link", interface))?;
    m.and_then(|m| {
        m.attributes.iter().find_map(|a| match a {
            LinkAttribute::Address(a) if a.len() == 6 => {
                let mut mac = [0u8; 6];
                mac.copy_from_slice(a);
                Some(mac)
            }
            _ => None,
        })
    })
    .ok_or_else(|| DhcpError::Netlink {
        op: "reading the hardware address of",
        target: interface.to_string(),
        reason: "the link has no Ethernet address".into(),
    })
}

/// Brings `interface` up.
pub async fn link_up(h: &Handle, interface: &str) -> Result<(), DhcpError> {
    let (index, up) = index_of(h, interface).await?;
    if !up {
        h.link()
            .set(LinkUnspec::new_with_index(index).up().build())
            .execute()
            .await
            .map_err(nl("bringing up", interface))?;
    }
    Ok(())
}

/// Puts the lease's address on its interface and its router as the default route.
pub async fn apply(h: &Handle, lease: &Lease) -> Result<(), DhcpError> {
    let (index, _) = index_of(h, &lease.interface).await?;
    match h
        .address()
        .add(index, lease.address.into(), lease.prefix_len)
        .execute()
        .await
    {
        Ok(()) => {}
        Err(e) if is_exists(&e) => {}
        Err(e) => return Err(nl("adding an address to", &lease.interface)(e)),
    }
    if let Some(gw) = lease.router {
        let msg = RouteMessageBuilder::<Ipv4Addr>::new()
            .destination_prefix(Ipv4Addr::UNSPECIFIED, 0)
            .output_interface(index)
            .gateway(gw)
            .build();
        h.route()
            .add(msg)
            .replace()
            .execute()
            .await
            .map_err(nl("adding the default route through", &lease.interface))?;
    }
    Ok(())
}

/// The `resolv.conf` text for `dns`.
pub fn resolv_conf(lease: &Lease) -> String {
    let mut s = format!(
        "# written by zos-init from the DHCP lease on {}\n",
        lease.interface
    );
    for d in &lease.dns {
        s.push_str(&format!("nameserver {d}\n"));
    }
    s
}

/// Writes the lease's name servers to `path` (replacing it atomically).
pub fn write_resolv_conf(path: &Path, lease: &Lease) -> std::io::Result<()> {
    let tmp = path.with_extension("zos-init.tmp");
    if let Some(d) = path.parent() {
        std::fs::create_dir_all(d)?;
    }
    std::fs::write(&tmp, resolv_conf(lease))?;
    std::fs::rename(&tmp, path)
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAC: [u8; 6] = [0x52, 0x54, 0, 0x12, 0x34, 0x56];

    fn reply(xid: u32, t: MessageType, yiaddr: Ipv4Addr, opts: Vec<DhcpOption>) -> Message {
        let mut m = Message::new_with_id(
            xid,
            Ipv4Addr::UNSPECIFIED,
            yiaddr,
            Ipv4Addr::new(10, 0, 0, 1),
            Ipv4Addr::UNSPECIFIED,
            &MAC,
        );
        m.set_opcode(v4::Opcode::BootReply);
        m.opts_mut().insert(DhcpOption::MessageType(t));
        for o in opts {
            m.opts_mut().insert(o);
        }
        m
    }

    fn roundtrip(m: &Message) -> Message {
        let mut buf = Vec::new();
        m.encode(&mut Encoder::new(&mut buf)).unwrap();
        Message::decode(&mut Decoder::new(&buf)).unwrap()
    }

    #[test]
    fn discover_and_request_carry_what_servers_need() {
        let d = roundtrip(&discover(7, MAC, 0));
        assert_eq!(d.opts().msg_type(), Some(MessageType::Discover));
        assert!(d.flags().broadcast());
        assert_eq!(&d.chaddr()[..6], &MAC);
        let offer = reply(
            7,
            MessageType::Offer,
            Ipv4Addr::new(10, 0, 0, 50),
            vec![DhcpOption::ServerIdentifier(Ipv4Addr::new(10, 0, 0, 1))],
        );
        let r = roundtrip(&request(7, MAC, 1, &offer).unwrap());
        assert_eq!(r.opts().msg_type(), Some(MessageType::Request));
        assert_eq!(
            r.opts().get(OptionCode::RequestedIpAddress),
            Some(&DhcpOption::RequestedIpAddress(Ipv4Addr::new(10, 0, 0, 50)))
        );
        assert_eq!(
            r.opts().get(OptionCode::ServerIdentifier),
            Some(&DhcpOption::ServerIdentifier(Ipv4Addr::new(10, 0, 0, 1)))
        );
        let no_server = reply(7, MessageType::Offer, Ipv4Addr::new(10, 0, 0, 50), vec![]);
        assert!(request(7, MAC, 1, &no_server).is_err());
    }

    #[test]
    fn only_answers_to_our_transaction_count() {
        let m = reply(9, MessageType::Offer, Ipv4Addr::new(10, 0, 0, 50), vec![]);
        assert!(answers(&m, 9, MAC));
        assert!(!answers(&m, 10, MAC));
        assert!(!answers(&m, 9, [1, 2, 3, 4, 5, 6]));
        assert!(
            !answers(&discover(9, MAC, 0), 9, MAC),
            "a request is no answer"
        );
    }

    #[test]
    fn an_ack_becomes_a_checked_lease() {
        let ack = reply(
            1,
            MessageType::Ack,
            Ipv4Addr::new(10, 0, 0, 50),
            vec![
                DhcpOption::SubnetMask(Ipv4Addr::new(255, 255, 255, 0)),
                DhcpOption::Router(vec![Ipv4Addr::new(10, 0, 0, 1)]),
                DhcpOption::DomainNameServer(vec![
                    Ipv4Addr::new(10, 0, 0, 2),
                    Ipv4Addr::BROADCAST,
                    Ipv4Addr::new(10, 0, 0, 3),
                    Ipv4Addr::new(10, 0, 0, 4),
                    Ipv4Addr::new(10, 0, 0, 5),
                ]),
                DhcpOption::ServerIdentifier(Ipv4Addr::new(10, 0, 0, 1)),
                DhcpOption::AddressLeaseTime(3600),
            ],
        );
        let l = lease_from_ack("eth0", &roundtrip(&ack)).unwrap();
        assert_eq!(l.address, Ipv4Addr::new(10, 0, 0, 50));
        assert_eq!(l.prefix_len, 24);
        assert_eq!(l.router, Some(Ipv4Addr::new(10, 0, 0, 1)));
        assert_eq!(l.dns.len(), MAX_DNS);
        assert!(!l.dns.contains(&Ipv4Addr::BROADCAST));
        assert_eq!(l.lease_secs, 3600);
        assert!(resolv_conf(&l).contains("nameserver 10.0.0.2\n"));
    }

    #[test]
    fn unusable_leases_are_refused() {
        for (addr, mask, want) in [
            (Ipv4Addr::UNSPECIFIED, None, "not a unicast"),
            (Ipv4Addr::BROADCAST, None, "not a unicast"),
            (Ipv4Addr::new(224, 0, 0, 1), None, "not a unicast"),
            (
                Ipv4Addr::new(10, 0, 0, 5),
                Some(Ipv4Addr::new(255, 0, 255, 0)),
                "not contiguous",
            ),
            (
                Ipv4Addr::new(10, 0, 0, 5),
                Some(Ipv4Addr::new(255, 255, 255, 255)),
                "leaves no network",
            ),
        ] {
            let opts = mask.map(DhcpOption::SubnetMask).into_iter().collect();
            let e = lease_from_ack("eth0", &reply(1, MessageType::Ack, addr, opts))
                .unwrap_err()
                .to_string();
            assert!(e.contains(want), "{addr}: {e}");
        }
        assert_eq!(prefix_len(Ipv4Addr::new(255, 255, 240, 0)), Some(20));
        assert_eq!(prefix_len(Ipv4Addr::new(0, 0, 0, 0)), Some(0));
        assert_eq!(prefix_len(Ipv4Addr::new(255, 255, 255, 255)), Some(32));
    }

    #[test]
    fn renewals_come_at_half_the_lease() {
        assert_eq!(renew_after(3600), Some(Duration::from_secs(1800)));
        assert_eq!(renew_after(10), Some(Duration::from_secs(60)));
        assert_eq!(renew_after(u32::MAX), None);
        let lease = Lease {
            interface: "eth0".into(),
            address: Ipv4Addr::new(10, 0, 0, 50),
            prefix_len: 24,
            router: None,
            dns: vec![],
            server: Ipv4Addr::new(10, 0, 0, 1),
            lease_secs: 3600,
        };
        let r = roundtrip(&renewal(5, MAC, &lease));
        assert_eq!(r.ciaddr(), lease.address);
        assert!(!r.flags().broadcast());
        assert!(r.opts().get(OptionCode::ServerIdentifier).is_none());
        assert!(r.opts().get(OptionCode::RequestedIpAddress).is_none());
    }

    #[test]
    fn macs_parse() {
        assert_eq!(parse_mac("52:54:00:12:34:56"), Some(MAC));
        for bad in [
            "",
            "52:54:00:12:34",
            "52:54:00:12:34:56:78",
            "5:54:00:12:34:56",
            "zz:54:00:12:34:56",
        ] {
            assert_eq!(parse_mac(bad), None, "{bad}");
        }
    }
}
