//! Network test worlds: a test "internet" (a namespace holding a bridge), node hosts joined to it,
//! and helpers to run code, listeners and probes inside namespaces.
//!
//! Everything lives in namespaces the test makes; nothing is sent to an address outside them.
//! A socket keeps the namespace it was made in, so [`in_netns`] can hand sockets made inside a
//! namespace back to the caller's thread.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::cmd::{CmdError, ip, run};
use crate::netns::{Netns, delete_link};

/// Runs `f` on a thread that joined the namespace `ns` (a name under `/run/netns`).
pub fn in_netns<T: Send>(ns: &str, f: impl FnOnce() -> T + Send) -> T {
    let path = format!("/run/netns/{ns}");
    std::thread::scope(|s| {
        s.spawn(move || {
            let fd = std::fs::File::open(&path).unwrap_or_else(|e| panic!("opening {path}: {e}"));
            nix::sched::setns(fd.as_fd(), nix::sched::CloneFlags::CLONE_NEWNET)
                .unwrap_or_else(|e| panic!("joining {path}: {e}"));
            f()
        })
        .join()
        .expect("thread in namespace panicked")
    })
}

/// A test internet: namespace `<name>` with bridge `br0` holding `address` (the gateway of
/// every host joined to it). Removed with everything on it when dropped.
#[derive(Debug)]
pub struct Internet {
    ns: Netns,
    gateway: String,
    prefix_len: u8,
}

impl Internet {
    /// Makes the namespace and its bridge with `cidr` (for example `10.99.0.1/24`).
    pub fn create(name: &str, cidr: &str) -> Result<Self, CmdError> {
        let ns = Netns::create(name)?;
        ns.ip(&["link", "add", "br0", "type", "bridge"])?;
        ns.ip(&["addr", "add", cidr, "dev", "br0"])?;
        ns.ip(&["link", "set", "br0", "up"])?;
        let (gw, len) = cidr.split_once('/').expect("cidr has a prefix length");
        Ok(Self {
            ns,
            gateway: gw.to_string(),
            prefix_len: len.parse().expect("prefix length"),
        })
    }

    pub fn name(&self) -> &str {
        self.ns.name()
    }

    pub fn ns(&self) -> &Netns {
        &self.ns
    }

    /// The bridge's address.
    pub fn gateway(&self) -> &str {
        &self.gateway
    }

    /// Joins `host` to the bridge: a veth whose end in `host` is `ifname`, with `address`
    /// (no prefix length: the internet's is used) and, when `default_route`, a default route
    /// through the internet's gateway. `address` `None` leaves the interface without address
    /// (a second NIC given to a node as its public exit). `tag` names the bridge end and must
    /// be unique on the machine (at most 13 characters).
    pub fn join(
        &self,
        host: &Netns,
        tag: &str,
        ifname: &str,
        address: Option<&str>,
        default_route: bool,
    ) -> Result<(), CmdError> {
        let a = format!("{tag}a");
        let b = format!("{tag}b");
        delete_link(&a)?;
        delete_link(&b)?;
        ip(&["link", "add", &a, "type", "veth", "peer", "name", &b])?;
        let setup = || -> Result<(), CmdError> {
            ip(&["link", "set", &a, "netns", self.ns.name()])?;
            ip(&["link", "set", &b, "netns", host.name()])?;
            self.ns.ip(&["link", "set", &a, "master", "br0"])?;
            self.ns.ip(&["link", "set", &a, "up"])?;
            host.ip(&["link", "set", &b, "name", ifname])?;
            if let Some(addr) = address {
                host.ip(&[
                    "addr",
                    "add",
                    &format!("{addr}/{}", self.prefix_len),
                    "dev",
                    ifname,
                ])?;
            }
            host.ip(&["link", "set", ifname, "up"])?;
            if default_route {
                host.ip(&["route", "add", "default", "via", &self.gateway])?;
            }
            Ok(())
        };
        setup().inspect_err(|_| {
            let _ = delete_link(&a);
            let _ = delete_link(&b);
        })
    }
}

/// True when `count` pings from `ns` to `addr` are all answered (200 ms apart, 1 s timeout).
pub fn ping(ns: &str, addr: &str, count: u32) -> bool {
    ping_from(ns, None, addr, count)
}

/// Like [`ping`], from the source address `src` when given.
pub fn ping_from(ns: &str, src: Option<&str>, addr: &str, count: u32) -> bool {
    let mut c = std::process::Command::new("ip");
    c.args([
        "netns",
        "exec",
        ns,
        "ping",
        "-n",
        "-q",
        "-c",
        &count.to_string(),
    ])
    .args(["-i", "0.2", "-W", "1"]);
    if let Some(s) = src {
        c.args(["-I", s]);
    }
    c.arg(addr);
    run(&mut c).is_ok()
}

/// A TCP server inside a namespace: greets every connection with `banner\n`, then echoes what
/// it reads; it remembers the address of every client. Stopped when dropped.
#[derive(Debug)]
pub struct TcpServer {
    addr: SocketAddr,
    peers: Arc<Mutex<Vec<SocketAddr>>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl TcpServer {
    /// Listens on `addr` inside `ns`.
    pub fn start(ns: &str, addr: &str, banner: &str) -> std::io::Result<Self> {
        let bind: SocketAddr = addr
            .parse()
            .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
        let listener = in_netns(ns, || TcpListener::bind(bind))?;
        listener.set_nonblocking(true)?;
        let addr = listener.local_addr()?;
        let peers = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (p, s, banner) = (peers.clone(), stop.clone(), format!("{banner}\n"));
        let thread = std::thread::spawn(move || {
            while !s.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((mut conn, peer)) => {
                        p.lock().unwrap().push(peer);
                        let banner = banner.clone();
                        std::thread::spawn(move || {
                            let _ = conn.set_nonblocking(false);
                            if conn.write_all(banner.as_bytes()).is_err() {
                                return;
                            }
                            let mut buf = vec![0u8; 64 * 1024];
                            while let Ok(n) = conn.read(&mut buf) {
                                if n == 0 || conn.write_all(&buf[..n]).is_err() {
                                    break;
                                }
                            }
                        });
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(10)),
                }
            }
        });
        Ok(Self {
            addr,
            peers,
            stop,
            thread: Some(thread),
        })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Addresses of the clients seen so far.
    pub fn peers(&self) -> Vec<SocketAddr> {
        self.peers.lock().unwrap().clone()
    }
}

impl Drop for TcpServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// A TCP sink inside a namespace: reads and discards everything. Stopped when dropped.
#[derive(Debug)]
pub struct TcpSink {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl TcpSink {
    pub fn start(ns: &str, addr: &str) -> std::io::Result<Self> {
        let bind: SocketAddr = addr
            .parse()
            .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
        let listener = in_netns(ns, || TcpListener::bind(bind))?;
        listener.set_nonblocking(true)?;
        let addr = listener.local_addr()?;
        let stop = Arc::new(AtomicBool::new(false));
        let s = stop.clone();
        let thread = std::thread::spawn(move || {
            while !s.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((mut conn, _)) => {
                        std::thread::spawn(move || {
                            let _ = conn.set_nonblocking(false);
                            let mut buf = vec![0u8; 256 * 1024];
                            while let Ok(n) = conn.read(&mut buf) {
                                if n == 0 {
                                    break;
                                }
                            }
                        });
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(10)),
                }
            }
        });
        Ok(Self {
            addr,
            stop,
            thread: Some(thread),
        })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }
}

impl Drop for TcpSink {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Connects from `ns` (from `src` when given) to `to` within `timeout`.
pub fn connect(
    ns: &str,
    src: Option<&str>,
    to: SocketAddr,
    timeout: Duration,
) -> std::io::Result<TcpStream> {
    in_netns(ns, || match src {
        None => TcpStream::connect_timeout(&to, timeout),
        Some(s) => connect_from(s, to, timeout),
    })
}

/// A TCP connection from source address `src` (bound before connecting), with a timeout.
fn connect_from(src: &str, to: SocketAddr, timeout: Duration) -> std::io::Result<TcpStream> {
    use std::os::fd::FromRawFd;
    let src: std::net::Ipv4Addr = src
        .parse()
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
    let SocketAddr::V4(to) = to else {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            "IPv4 only",
        ));
    };
    // SAFETY: plain socket(2); the descriptor is owned by the TcpStream made from it.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: `fd` is a fresh socket nobody else owns.
    let stream = unsafe { TcpStream::from_raw_fd(fd) };
    let sa = |ip: std::net::Ipv4Addr, port: u16| libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: port.to_be(),
        sin_addr: libc::in_addr {
            s_addr: u32::from(ip).to_be(),
        },
        sin_zero: [0; 8],
    };
    let local = sa(src, 0);
    let len = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
    // SAFETY: `local` is a valid sockaddr_in of `len` bytes.
    if unsafe { libc::bind(fd, &local as *const _ as *const libc::sockaddr, len) } < 0 {
        return Err(std::io::Error::last_os_error());
    }
    stream.set_nonblocking(true)?;
    let remote = sa(*to.ip(), to.port());
    // SAFETY: `remote` is a valid sockaddr_in of `len` bytes.
    let rc = unsafe { libc::connect(fd, &remote as *const _ as *const libc::sockaddr, len) };
    if rc < 0 {
        let e = std::io::Error::last_os_error();
        if e.raw_os_error() != Some(libc::EINPROGRESS) {
            return Err(e);
        }
    }
    let deadline = Instant::now() + timeout;
    loop {
        if let Ok(Some(e)) = stream.take_error() {
            return Err(e);
        }
        if stream.peer_addr().is_ok() {
            stream.set_nonblocking(false)?;
            return Ok(stream);
        }
        if Instant::now() >= deadline {
            return Err(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                "connection timed out",
            ));
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Connects, reads the server's banner line and echoes `probe` back; answers the banner.
pub fn tcp_banner(
    ns: &str,
    src: Option<&str>,
    to: SocketAddr,
    timeout: Duration,
) -> std::io::Result<String> {
    let mut s = connect(ns, src, to, timeout)?;
    s.set_read_timeout(Some(timeout))?;
    let mut banner = Vec::new();
    let mut byte = [0u8; 1];
    while banner.len() < 256 {
        let n = s.read(&mut byte)?;
        if n == 0 || byte[0] == b'\n' {
            break;
        }
        banner.push(byte[0]);
    }
    s.write_all(b"ping\n")?;
    let mut echo = [0u8; 5];
    s.read_exact(&mut echo)?;
    if &echo != b"ping\n" {
        return Err(std::io::Error::other("echo differs"));
    }
    Ok(String::from_utf8_lossy(&banner).into_owned())
}

/// Sends `bytes` from `ns` to a [`TcpSink`] at `to`; answers the time it took.
pub fn tcp_send(ns: &str, to: SocketAddr, bytes: u64) -> std::io::Result<Duration> {
    let mut s = connect(ns, None, to, Duration::from_secs(5))?;
    let buf = vec![0x5au8; 256 * 1024];
    let start = Instant::now();
    let mut left = bytes;
    while left > 0 {
        let n = left.min(buf.len() as u64) as usize;
        s.write_all(&buf[..n])?;
        left -= n as u64;
    }
    s.shutdown(std::net::Shutdown::Write)?;
    // Wait for the sink to close its side: everything was received.
    let mut rest = [0u8; 16];
    let _ = s.read(&mut rest);
    Ok(start.elapsed())
}

/// Debian's `redis-cli` run in network namespace `ns` against the zdb at `100.127.0.1:port` (a
/// node's `ndmz` address), one connection running `lines`; its answers, one a line
/// (`--no-raw`: strings quoted, errors as `(error) …`).
pub fn redis_cli(ns: &str, port: impl std::fmt::Display, lines: &[String]) -> Vec<String> {
    use std::process::{Command, Stdio};
    let mut child = Command::new("ip")
        .args([
            "netns",
            "exec",
            ns,
            "redis-cli",
            "--no-raw",
            "-h",
            "100.127.0.1",
        ])
        .args(["-p", &port.to_string()])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("redis-cli runs (Debian's redis-tools)");
    {
        let mut stdin = child.stdin.take().unwrap();
        for l in lines {
            writeln!(stdin, "{l}").unwrap();
        }
    }
    let out = child.wait_with_output().unwrap();
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_string)
        .collect()
}
