//! WireGuard for network resources: the kernel's where it has the module, otherwise
//! `boringtun-cli` run as its own process, one per interface. Both are configured with `wg`
//! (wireguard-tools), which speaks netlink to the kernel and the UAPI socket to userspace.
//!
//! Userspace: boringtun starts in the host namespace (where its UDP socket must live), in a
//! session of its own so it outlives zosd, and makes the tun device there; zosd then moves the
//! device into the network resource's namespace. Its control socket is
//! `/var/run/wireguard/<ifname>.sock` whatever the namespace, hence host-wide unique names.
//!
//! Configuration is a diff: peers that did not change are never sent again, so their sessions
//! go on. boringtun 0.7 cannot modify an existing peer (its control thread panics), so a changed
//! peer is removed and added again there; the kernel changes it in place.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use base64::Engine;
use ipnet::IpNet;
use serde::{Deserialize, Serialize};
use zos_runtime::supervise::{self, Detach, Marker};
pub use zos_types::node_api::{PeerStatus, WgStatus};
use zos_types::workload::Network;

use super::NetworkError;
use super::netns::{self, Ns};

/// Where the userspace implementations' control sockets live (fixed by `wg`).
pub const UAPI_DIR: &str = "/var/run/wireguard";

/// MTU of WireGuard interfaces (1500 minus the IPv6 + UDP + WireGuard overhead).
pub const WG_MTU: u32 = 1420;

/// Keepalive towards peers with an endpoint, seconds; keeps NAT mappings open.
pub const KEEPALIVE: u16 = 25;

/// Which implementation runs a WireGuard interface.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum WgBackend {
    Kernel,
    Userspace,
}

/// Which implementation to use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum WireguardMode {
    /// The kernel's when `/sys/module/wireguard` exists, otherwise userspace.
    #[default]
    Auto,
    Kernel,
    Userspace,
}

impl WireguardMode {
    /// The backend this mode picks on this machine.
    pub fn resolve(self) -> WgBackend {
        match self {
            Self::Kernel => WgBackend::Kernel,
            Self::Userspace => WgBackend::Userspace,
            Self::Auto => {
                if kernel_available() {
                    WgBackend::Kernel
                } else {
                    WgBackend::Userspace
                }
            }
        }
    }
}

/// True when the running kernel has WireGuard.
pub fn kernel_available() -> bool {
    Path::new("/sys/module/wireguard").exists()
}

/// The public key of a base64 private key.
pub fn public_key(private_b64: &str) -> Result<String, NetworkError> {
    let raw = base64::engine::general_purpose::STANDARD
        .decode(private_b64)
        .map_err(|_| NetworkError::Invalid("wireguard_private_key is not base64".into()))?;
    let bytes: [u8; 32] = raw
        .try_into()
        .map_err(|_| NetworkError::Invalid("wireguard_private_key is not 32 bytes".into()))?;
    let secret = x25519_dalek::StaticSecret::from(bytes);
    let public = x25519_dalek::PublicKey::from(&secret);
    Ok(base64::engine::general_purpose::STANDARD.encode(public.as_bytes()))
}

/// Parses `wg show <if> dump`.
pub fn parse_dump(ifname: &str, text: &str) -> Result<WgStatus, NetworkError> {
    let bad = || NetworkError::Internal(format!("unexpected `wg show {ifname} dump` output"));
    let mut lines = text.lines();
    let first: Vec<&str> = lines.next().ok_or_else(bad)?.split('\t').collect();
    if first.len() < 4 {
        return Err(bad());
    }
    let mut st = WgStatus {
        ifname: ifname.to_string(),
        public_key: first[1].to_string(),
        listen_port: first[2].parse().unwrap_or(0),
        peers: Vec::new(),
    };
    for l in lines {
        let f: Vec<&str> = l.split('\t').collect();
        if f.len() < 8 {
            return Err(bad());
        }
        st.peers.push(PeerStatus {
            public_key: f[0].to_string(),
            endpoint: (f[2] != "(none)").then(|| f[2].to_string()),
            allowed_ips: if f[3] == "(none)" {
                Vec::new()
            } else {
                f[3].split(',').map(str::to_string).collect()
            },
            latest_handshake: f[4].parse().unwrap_or(0),
            rx_bytes: f[5].parse().unwrap_or(0),
            tx_bytes: f[6].parse().unwrap_or(0),
            persistent_keepalive: f[7].parse().ok(),
        });
    }
    Ok(st)
}

async fn wg_run(
    ns: &Ns,
    wg: &Path,
    args: &[&str],
    input: Option<&str>,
) -> Result<String, NetworkError> {
    let run = netns::run(ns, wg, args, input);
    match tokio::time::timeout(Duration::from_secs(20), run).await {
        Ok(r) => r,
        Err(_) => Err(NetworkError::Internal(format!(
            "wg {} did not answer in 20 s",
            args.join(" ")
        ))),
    }
}

/// One change to a WireGuard interface.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WgOp {
    /// Sets the private key (sent on stdin, never on a command line).
    PrivateKey,
    ListenPort(u16),
    RemovePeer(String),
    /// Adds a peer, or changes it in place (kernel only).
    SetPeer {
        public_key: String,
        endpoint: Option<SocketAddr>,
        allowed_ips: Vec<IpNet>,
    },
}

fn peer_allowed(p: &zos_types::workload::Peer) -> Vec<IpNet> {
    let mut v: Vec<IpNet> = p.allowed_ips.iter().map(IpNet::trunc).collect();
    v.sort();
    v.dedup();
    v
}

/// The changes that turn `current` into `net`. `fresh` means nothing was configured yet;
/// `key_changed` that the private key differs from the one applied before.
pub fn plan(
    backend: WgBackend,
    current: &WgStatus,
    net: &Network,
    fresh: bool,
    key_changed: bool,
) -> Vec<WgOp> {
    let mut ops = Vec::new();
    if fresh || key_changed {
        ops.push(WgOp::PrivateKey);
    }
    if fresh || current.listen_port != net.wireguard_listen_port {
        ops.push(WgOp::ListenPort(net.wireguard_listen_port));
    }
    for have in &current.peers {
        if !net
            .peers
            .iter()
            .any(|p| p.wireguard_public_key == have.public_key)
        {
            ops.push(WgOp::RemovePeer(have.public_key.clone()));
        }
    }
    for want in &net.peers {
        let allowed = peer_allowed(want);
        let endpoint = want.endpoint.parse::<SocketAddr>().ok();
        let keepalive = endpoint.map(|_| KEEPALIVE);
        let set = WgOp::SetPeer {
            public_key: want.wireguard_public_key.clone(),
            endpoint,
            allowed_ips: allowed.clone(),
        };
        match current
            .peers
            .iter()
            .find(|h| h.public_key == want.wireguard_public_key)
        {
            None => ops.push(set),
            Some(have) => {
                let mut have_allowed: Vec<IpNet> = have
                    .allowed_ips
                    .iter()
                    .filter_map(|a| a.parse::<IpNet>().ok())
                    .map(|n| n.trunc())
                    .collect();
                have_allowed.sort();
                have_allowed.dedup();
                // A peer without a configured endpoint roams: whatever it has now is fine.
                let endpoint_same = match endpoint {
                    None => true,
                    Some(e) => have.endpoint.as_deref().and_then(|h| h.parse().ok()) == Some(e),
                };
                let same = have_allowed == allowed
                    && endpoint_same
                    && have.persistent_keepalive == keepalive;
                if !same {
                    if backend == WgBackend::Userspace {
                        ops.push(WgOp::RemovePeer(want.wireguard_public_key.clone()));
                    }
                    ops.push(set);
                }
            }
        }
    }
    ops
}

/// Brings `ifname` (inside `ns`) to `net`'s key, port and peers; answers what was changed.
pub async fn sync(
    ns: &Ns,
    wg: &Path,
    backend: WgBackend,
    ifname: &str,
    net: &Network,
    fresh: bool,
    key_changed: bool,
) -> Result<Vec<WgOp>, NetworkError> {
    let current = status(ns, wg, ifname).await?;
    let ops = plan(backend, &current, net, fresh, key_changed);
    for op in &ops {
        match op {
            WgOp::PrivateKey => {
                wg_run(
                    ns,
                    wg,
                    &["set", ifname, "private-key", "/dev/stdin"],
                    Some(&format!("{}\n", net.wireguard_private_key)),
                )
                .await?;
            }
            WgOp::ListenPort(port) => {
                let port = port.to_string();
                wg_run(ns, wg, &["set", ifname, "listen-port", &port], None)
                    .await
                    .map_err(|e| match e {
                        // The kernel says "Address already in use"; boringtun answers -98.
                        NetworkError::Command { stderr, .. }
                            if stderr.contains("in use") || stderr.contains("-98") =>
                        {
                            NetworkError::PortTaken(net.wireguard_listen_port)
                        }
                        other => other,
                    })?;
            }
            WgOp::RemovePeer(key) => {
                wg_run(ns, wg, &["set", ifname, "peer", key, "remove"], None).await?;
            }
            WgOp::SetPeer {
                public_key,
                endpoint,
                allowed_ips,
            } => {
                let ips = allowed_ips
                    .iter()
                    .map(IpNet::to_string)
                    .collect::<Vec<_>>()
                    .join(",");
                let mut args: Vec<String> = vec![
                    "set".into(),
                    ifname.into(),
                    "peer".into(),
                    public_key.clone(),
                ];
                if let Some(e) = endpoint {
                    args.extend([
                        "endpoint".into(),
                        e.to_string(),
                        "persistent-keepalive".into(),
                        KEEPALIVE.to_string(),
                    ]);
                }
                args.extend(["allowed-ips".into(), ips]);
                let args: Vec<&str> = args.iter().map(String::as_str).collect();
                wg_run(ns, wg, &args, None).await?;
            }
        }
    }
    Ok(ops)
}

/// The status of `ifname` (inside `ns`).
pub async fn status(ns: &Ns, wg: &Path, ifname: &str) -> Result<WgStatus, NetworkError> {
    let out = wg_run(ns, wg, &["show", ifname, "dump"], None).await?;
    parse_dump(ifname, &out)
}

/// The control socket of a userspace interface.
pub fn uapi_socket(ifname: &str) -> PathBuf {
    Path::new(UAPI_DIR).join(format!("{ifname}.sock"))
}

/// What the command line of the boringtun process of `ifname` shows.
fn marker(ifname: &str) -> Marker {
    Marker::program("boringtun").arg(ifname)
}

/// True when `pid` runs boringtun for `ifname` (and is not a zombie).
pub fn is_our_process(pid: i32, ifname: &str) -> bool {
    supervise::alive(pid, &marker(ifname))
}

/// Starts boringtun for `ifname` in `host`, in a session of its own, logging to `log`.
/// Answers its PID once its control socket answers; the tun device is then in `host`.
pub async fn start_userspace(
    host: &Ns,
    boringtun: &Path,
    ifname: &str,
    log: &Path,
) -> Result<i32, NetworkError> {
    let sock = uapi_socket(ifname);
    let _ = std::fs::remove_file(&sock);
    if let Some(dir) = log.parent() {
        let _ = std::fs::create_dir_all(dir);
    }
    let mut cmd = netns::command(host, boringtun)?;
    cmd.args([
        "--foreground",
        "--disable-drop-privileges",
        "--disable-multi-queue",
        "--verbosity",
        "error",
        ifname,
    ])
    .env("RUST_BACKTRACE", "0");
    // Its own session: signals to zosd's group do not reach it, and it outlives zosd.
    Detach::new(log)
        .apply(&mut cmd)
        .map_err(|source| NetworkError::System {
            op: "opening",
            target: log.display().to_string(),
            source,
        })?;
    let pid = cmd
        .spawn()
        .map_err(|source| NetworkError::Spawn {
            program: boringtun.display().to_string(),
            source,
        })?
        .id() as i32;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        if std::os::unix::net::UnixStream::connect(&sock).is_ok() {
            break;
        }
        if !is_our_process(pid, ifname) || tokio::time::Instant::now() >= deadline {
            let tail = std::fs::read_to_string(log)
                .map(|t| {
                    let lines: Vec<&str> = t.lines().rev().take(5).collect();
                    lines.into_iter().rev().collect::<Vec<_>>().join(" | ")
                })
                .unwrap_or_default();
            stop_userspace(Some(pid), ifname, Duration::from_secs(2)).await;
            return Err(NetworkError::Userspace {
                ifname: ifname.to_string(),
                log: tail,
            });
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    tracing::debug!(ifname, pid, "boringtun started");
    Ok(pid)
}

/// Stops boringtun `pid` (SIGTERM, SIGKILL after `grace`) and removes its socket.
pub async fn stop_userspace(pid: Option<i32>, ifname: &str, grace: Duration) {
    if let Some(pid) = pid {
        supervise::stop(pid, &marker(ifname), grace).await;
    }
    let _ = std::fs::remove_file(uapi_socket(ifname));
}

/// PIDs of boringtun processes whose arguments name an interface starting with `prefix`.
pub fn processes_with_prefix(prefix: &str) -> Vec<(i32, String)> {
    supervise::find(&Marker::program("boringtun"))
        .into_iter()
        .filter_map(|(pid, argv)| {
            let last = argv.last()?.to_str()?;
            last.starts_with(prefix).then(|| (pid, last.to_string()))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(n: u8) -> String {
        base64::engine::general_purpose::STANDARD.encode([n; 32])
    }

    #[test]
    fn public_keys_follow_x25519() {
        // RFC 7748 test vector (Alice).
        let alice = hex::decode("77076d0a7318a57d3c16c17251b26645df4c2f87ebc0992ab177fba51db92c2a")
            .unwrap();
        let b64 = base64::engine::general_purpose::STANDARD.encode(&alice);
        let public = base64::engine::general_purpose::STANDARD
            .decode(public_key(&b64).unwrap())
            .unwrap();
        assert_eq!(
            hex::encode(public),
            "8520f0098930a754748b7ddcb43ef75a0dbf3a0d26381af4eba4a98eaa9b4e6a"
        );
        assert!(public_key("not base64!").is_err());
    }

    fn net() -> Network {
        Network {
            ip_range: "10.20.0.0/16".parse().unwrap(),
            subnet: "10.20.1.0/24".parse().unwrap(),
            wireguard_private_key: key(1),
            wireguard_listen_port: 51820,
            peers: vec![
                zos_types::workload::Peer {
                    subnet: "10.20.2.0/24".parse().unwrap(),
                    wireguard_public_key: key(2),
                    allowed_ips: vec![
                        "10.20.2.0/24".parse().unwrap(),
                        "100.64.20.2/32".parse().unwrap(),
                    ],
                    endpoint: "192.0.2.1:51820".into(),
                },
                zos_types::workload::Peer {
                    subnet: "10.20.3.0/24".parse().unwrap(),
                    wireguard_public_key: key(3),
                    allowed_ips: vec!["10.20.3.0/24".parse().unwrap()],
                    endpoint: String::new(),
                },
            ],
        }
    }

    fn applied(net: &Network) -> WgStatus {
        WgStatus {
            ifname: "w".into(),
            public_key: String::new(),
            listen_port: net.wireguard_listen_port,
            peers: net
                .peers
                .iter()
                .map(|p| PeerStatus {
                    public_key: p.wireguard_public_key.clone(),
                    endpoint: if p.endpoint.is_empty() {
                        Some("198.51.100.7:40000".into())
                    } else {
                        Some(p.endpoint.clone())
                    },
                    allowed_ips: p.allowed_ips.iter().rev().map(|a| a.to_string()).collect(),
                    latest_handshake: 0,
                    rx_bytes: 10,
                    tx_bytes: 10,
                    persistent_keepalive: (!p.endpoint.is_empty()).then_some(KEEPALIVE),
                })
                .collect(),
        }
    }

    #[test]
    fn a_fresh_interface_gets_everything() {
        let n = net();
        let empty = WgStatus {
            ifname: "w".into(),
            public_key: String::new(),
            listen_port: 0,
            peers: vec![],
        };
        let ops = plan(WgBackend::Userspace, &empty, &n, true, true);
        assert_eq!(ops[0], WgOp::PrivateKey);
        assert_eq!(ops[1], WgOp::ListenPort(51820));
        assert_eq!(ops.len(), 4);
        assert!(matches!(
            &ops[2],
            WgOp::SetPeer {
                endpoint: Some(_),
                ..
            }
        ));
        assert!(matches!(&ops[3], WgOp::SetPeer { endpoint: None, .. }));
    }

    #[test]
    fn unchanged_peers_are_left_alone() {
        let n = net();
        // Same config (allowed IPs in another order, a roaming peer with a learnt endpoint).
        assert!(plan(WgBackend::Userspace, &applied(&n), &n, false, false).is_empty());
    }

    #[test]
    fn changed_peers_are_replaced_in_userspace_and_changed_in_the_kernel() {
        let old = net();
        let mut n = old.clone();
        n.peers[0].allowed_ips.push("10.30.0.0/24".parse().unwrap());
        n.peers.remove(1);
        n.peers.push(zos_types::workload::Peer {
            subnet: "10.20.4.0/24".parse().unwrap(),
            wireguard_public_key: key(4),
            allowed_ips: vec!["10.20.4.0/24".parse().unwrap()],
            endpoint: String::new(),
        });
        n.wireguard_listen_port = 51900;
        let ops = plan(WgBackend::Userspace, &applied(&old), &n, false, false);
        assert_eq!(
            ops.iter()
                .filter(|o| matches!(o, WgOp::RemovePeer(_)))
                .count(),
            2,
            "{ops:?}"
        );
        assert!(ops.contains(&WgOp::ListenPort(51900)));
        assert!(!ops.contains(&WgOp::PrivateKey));
        assert!(ops.contains(&WgOp::RemovePeer(key(3))));
        let ops = plan(WgBackend::Kernel, &applied(&old), &n, false, false);
        assert_eq!(
            ops.iter()
                .filter(|o| matches!(o, WgOp::RemovePeer(_)))
                .count(),
            1
        );
    }

    #[test]
    fn dump_is_parsed() {
        let text = "priv\tpubA\t51820\toff\npubB\t(none)\t10.0.0.2:51821\t10.20.2.0/24,100.64.20.2/32\t0\t1234\t5678\t25\npubC\t(none)\t(none)\t(none)\t0\t0\t0\toff\n";
        let st = parse_dump("w1", text).unwrap();
        assert_eq!(st.public_key, "pubA");
        assert_eq!(st.listen_port, 51820);
        assert_eq!(st.peers.len(), 2);
        assert_eq!(st.peers[0].allowed_ips.len(), 2);
        assert_eq!(st.peers[0].endpoint.as_deref(), Some("10.0.0.2:51821"));
        assert_eq!(st.peers[1].endpoint, None);
        assert_eq!(st.totals(), (1234, 5678));
        assert!(parse_dump("w1", "").is_err());
    }
}
