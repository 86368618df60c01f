//! The `zdb` manager: key-value namespaces of `zos-zdb` (see `docs/zdb.md`) on the node's HDDs.
//!
//! - One server per zdb device (a subvolume on an HDD pool, from storage), as v3 runs one 0-db
//!   per HDD. It runs detached in the node's `ndmz` namespace, on [`ADDRESS`] and a port of its
//!   own from [`FIRST_PORT`] (kept per device in the state file, so it never moves), with the
//!   device's directory as its data. A new zosd adopts it by its command line (program and data
//!   directory); a dead one is started again ([`ZdbManager::keep_running`]).
//! - The admin password is derived from the node's seed ([`admin_password`]) and given to the
//!   server in its environment, never on its command line.
//! - A workload is a namespace named after the workload id (`<twin>-<contract>-<name>`) with
//!   the workload's size (`maxsize`), password, public flag and mode. A device has room for a
//!   namespace while the sizes of its namespaces fit its pool; a new device is allocated when
//!   none has room.
//! - Updates may grow the size and change the password and the public flag; a mode change or a
//!   shrink is refused and leaves the namespace as it was. The grace period locks the namespace
//!   (reads only). Cancel deletes it and its files, and a device left without namespaces is
//!   released (its server stopped first).
//!
//! Machines reach [`ADDRESS`] through their network resource, which routes to `ndmz`; `ndmz`
//! accepts the zdb ports from the resources' links only. Namespaces are kept apart by their
//! passwords (0-db's semantics).

use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::future::BoxFuture;
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::sync::Mutex;
use tracing::{info, warn};
use zos_runtime::supervise::{self, Detach, Marker};
use zos_storage::Storage;
use zos_types::deployment::WorkloadId;
use zos_types::workload::{WorkloadData, Zdb, ZdbMode};

use super::managers::{Manager, ManagerError, Target, to_data};

/// Where machines reach the zdb servers: `ndmz`'s address on every network resource's link.
pub const ADDRESS: Ipv4Addr = Ipv4Addr::new(100, 127, 0, 1);
/// The port of the first device's server; the next ones take the following ports.
pub const FIRST_PORT: u16 = 9900;
/// The last port a server may take: `ndmz` accepts `FIRST_PORT..=LAST_PORT` from the network
/// resources (`crates/net/src/nft.rs`, `ndmz_ruleset`).
pub const LAST_PORT: u16 = 9999;
/// The program's name.
pub const PROGRAM: &str = "zos-zdb";
/// How long a request to a server may take.
const CALL_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a started server may take to accept connections.
const START_TIMEOUT: Duration = Duration::from_secs(15);

/// The admin password of the node's zdb servers: HKDF-SHA256 of the node's secret seed with a
/// label of its own, as hex. The same node finds the same password after a reboot.
pub fn admin_password(node_seed: &[u8]) -> String {
    let mut key = [0u8; 32];
    hkdf::Hkdf::<sha2::Sha256>::new(Some(b"zos-zdb-admin-v1"), node_seed)
        .expand(b"zdb admin password", &mut key)
        .expect("32 bytes is a valid HKDF-SHA256 length");
    hex::encode(key)
}

/// Where zosd reaches a server (and the address machines use).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    pub addr: SocketAddr,
    /// The network namespace to connect from; `None` for zosd's own.
    pub netns: Option<String>,
}

/// The node's zdb servers, one per data directory.
pub trait ZdbServers: Send + Sync {
    /// Keeps the server of `data` running (adopting one that runs, starting one when none
    /// does), listening on `port`, and answers where it is once it accepts connections.
    fn ensure<'a>(
        &'a self,
        data: &'a Path,
        port: u16,
    ) -> BoxFuture<'a, Result<Endpoint, ManagerError>>;
    /// Stops the server of `data`; succeeds when none runs.
    fn stop<'a>(&'a self, data: &'a Path) -> BoxFuture<'a, Result<(), ManagerError>>;
    /// The servers' admin password.
    fn admin(&self) -> &str;
}

/// The real servers: `zos-zdb` processes, started detached in a network namespace.
#[derive(Debug)]
pub struct ZdbProcesses {
    program: PathBuf,
    netns: Option<String>,
    ip: IpAddr,
    log_dir: PathBuf,
    admin: String,
    /// The PID last seen per data directory, checked against its command line before use.
    pids: std::sync::Mutex<HashMap<PathBuf, i32>>,
}

impl ZdbProcesses {
    /// Servers of `program` in namespace `netns` (`None`: zosd's own) listening on `ip`, with
    /// their logs in `log_dir` and `admin` as their admin password.
    pub fn new(
        program: PathBuf,
        netns: Option<String>,
        ip: IpAddr,
        log_dir: PathBuf,
        admin: String,
    ) -> Self {
        Self {
            program,
            netns,
            ip,
            log_dir,
            admin,
            pids: std::sync::Mutex::default(),
        }
    }

    fn marker(data: &Path) -> Marker {
        Marker::program(PROGRAM).arg(data.as_os_str())
    }

    /// The PID of the running server of `data`.
    pub fn running(&self, data: &Path) -> Option<i32> {
        let recorded = self.pids().get(data).copied();
        let pid = supervise::adopt(recorded, &Self::marker(data));
        match pid {
            Some(p) => self.pids().insert(data.to_path_buf(), p),
            None => self.pids().remove(data),
        };
        pid
    }

    fn pids(&self) -> std::sync::MutexGuard<'_, HashMap<PathBuf, i32>> {
        self.pids.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn endpoint(&self, port: u16) -> Endpoint {
        Endpoint {
            addr: SocketAddr::new(self.ip, port),
            netns: self.netns.clone(),
        }
    }

    fn log(&self, port: u16) -> PathBuf {
        self.log_dir.join(format!("zdb-{port}.log"))
    }

    fn start(&self, data: &Path, port: u16) -> Result<i32, ManagerError> {
        zos_runtime::private::create_dir(&self.log_dir)?;
        let ns = match &self.netns {
            Some(n) => zos_net::netns::Ns::Named(n.clone()),
            None => zos_net::netns::Ns::Host(None),
        };
        let mut cmd = zos_net::netns::command(&ns, &self.program)?;
        cmd.arg("--listen")
            .arg(SocketAddr::new(self.ip, port).to_string())
            .arg("--data")
            .arg(data)
            .env("ZOS_ZDB_ADMIN", &self.admin);
        let pid = Detach::new(self.log(port)).spawn(cmd).map_err(|e| {
            ManagerError::from(e).context(format!(
                "starting {} (put it beside zosd or on PATH)",
                self.program.display()
            ))
        })?;
        info!(pid, port, data = %data.display(), "zdb server started");
        Ok(pid)
    }
}

/// The end of a log file, for an error saying why a process went.
fn log_tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(5)..].join(" | ")
}

impl ZdbServers for ZdbProcesses {
    fn ensure<'a>(
        &'a self,
        data: &'a Path,
        port: u16,
    ) -> BoxFuture<'a, Result<Endpoint, ManagerError>> {
        Box::pin(async move {
            let endpoint = self.endpoint(port);
            let listen = std::ffi::OsString::from(endpoint.addr.to_string());
            let running = match self.running(data) {
                // On another address (a state file lost, another node's prefix): never two
                // servers on one data directory, so that one goes first.
                Some(pid) if !supervise::argv(pid).is_some_and(|a| a.contains(&listen)) => {
                    warn!(pid, data = %data.display(), want = %endpoint.addr, "a zdb server listens elsewhere: restarting it");
                    self.stop(data).await?;
                    None
                }
                other => other,
            };
            let pid = match running {
                Some(pid) => pid,
                None => {
                    let pid = self.start(data, port)?;
                    self.pids().insert(data.to_path_buf(), pid);
                    pid
                }
            };
            // Up once it answers PING (a server just started needs a moment).
            let deadline = Instant::now() + START_TIMEOUT;
            loop {
                match AdminConn::open(&endpoint, None).await {
                    Ok(_) => return Ok(endpoint),
                    Err(e) => {
                        if !supervise::alive(pid, &Self::marker(data)) {
                            return Err(ManagerError::Failed(format!(
                                "the zdb server of {} exited: {}",
                                data.display(),
                                log_tail(&self.log(port))
                            )));
                        }
                        if Instant::now() >= deadline {
                            return Err(ManagerError::Unavailable(format!(
                                "the zdb server of {} does not answer on {}: {e}",
                                data.display(),
                                endpoint.addr
                            )));
                        }
                    }
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        })
    }

    fn stop<'a>(&'a self, data: &'a Path) -> BoxFuture<'a, Result<(), ManagerError>> {
        Box::pin(async move {
            if let Some(pid) = self.running(data) {
                let how = supervise::stop(pid, &Self::marker(data), Duration::from_secs(10)).await;
                info!(pid, ?how, data = %data.display(), "zdb server stopped");
                self.pids().remove(data);
            }
            Ok(())
        })
    }

    fn admin(&self) -> &str {
        &self.admin
    }
}

/// A reply of a server.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Reply {
    Simple(String),
    Error(String),
    Int(i64),
    Bulk(Option<Vec<u8>>),
    /// An array's length (the manager sends nothing that answers one; its items are not read).
    Array(i64),
}

/// A connection to a server, as its admin.
struct AdminConn {
    io: BufReader<TcpStream>,
}

impl AdminConn {
    /// Connects (from the server's namespace) and authenticates with `admin`, if given.
    async fn open(endpoint: &Endpoint, admin: Option<&str>) -> Result<Self, String> {
        let target = zos_gateway::route::Target {
            addr: endpoint.addr,
            netns: endpoint.netns.clone(),
        };
        let tcp = zos_gateway::connect::connect(&target)
            .await
            .map_err(|e| format!("connecting to {}: {e}", endpoint.addr))?;
        let mut c = Self {
            io: BufReader::new(tcp),
        };
        match c.call(&[b"PING"]).await? {
            Reply::Simple(_) => {}
            other => return Err(format!("PING answered {other:?}")),
        }
        if let Some(pw) = admin {
            match c.call(&[b"AUTH", pw.as_bytes()]).await? {
                Reply::Simple(_) => {}
                other => return Err(format!("the admin password was refused: {other:?}")),
            }
        }
        Ok(c)
    }

    async fn call(&mut self, args: &[&[u8]]) -> Result<Reply, String> {
        let mut out = format!("*{}\r\n", args.len()).into_bytes();
        for a in args {
            out.extend_from_slice(format!("${}\r\n", a.len()).as_bytes());
            out.extend_from_slice(a);
            out.extend_from_slice(b"\r\n");
        }
        tokio::time::timeout(CALL_TIMEOUT, async {
            self.io.get_mut().write_all(&out).await?;
            self.read().await
        })
        .await
        .map_err(|_| "the zdb server did not answer in time".to_string())?
        .map_err(|e| format!("talking to the zdb server: {e}"))
    }

    async fn read(&mut self) -> std::io::Result<Reply> {
        let mut line = String::new();
        if self.io.read_line(&mut line).await? == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        let line = line.trim_end_matches(['\r', '\n']);
        let bad = || std::io::Error::other(format!("not a RESP reply: {line:?}"));
        let (kind, rest) = line.split_at_checked(1).ok_or_else(bad)?;
        let number = || rest.parse::<i64>().map_err(|_| bad());
        Ok(match kind {
            "+" => Reply::Simple(rest.to_string()),
            "-" => Reply::Error(rest.to_string()),
            ":" => Reply::Int(number()?),
            "*" => Reply::Array(number()?),
            "$" => {
                let n = number()?;
                if n < 0 {
                    Reply::Bulk(None)
                } else {
                    // NSINFO's text is small; nothing the manager reads is large.
                    let n = usize::try_from(n).map_err(|_| bad())?.min(1 << 20);
                    let mut buf = vec![0; n + 2];
                    self.io.read_exact(&mut buf).await?;
                    buf.truncate(n);
                    Reply::Bulk(Some(buf))
                }
            }
            _ => return Err(bad()),
        })
    }

    /// A command that must answer `+OK`.
    async fn ok(&mut self, args: &[&[u8]]) -> Result<(), String> {
        match self.call(args).await? {
            Reply::Simple(_) => Ok(()),
            Reply::Error(e) => Err(e),
            other => Err(format!("unexpected answer {other:?}")),
        }
    }

    /// NSINFO of `ns` as its `key: value` lines; `None` when there is no such namespace.
    async fn nsinfo(&mut self, ns: &str) -> Result<Option<HashMap<String, String>>, String> {
        match self.call(&[b"NSINFO", ns.as_bytes()]).await? {
            Reply::Bulk(Some(text)) => Ok(Some(
                String::from_utf8_lossy(&text)
                    .lines()
                    .filter_map(|l| l.split_once(": "))
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect(),
            )),
            Reply::Error(e) if e.contains("not found") => Ok(None),
            Reply::Error(e) => Err(e),
            other => Err(format!("NSINFO answered {other:?}")),
        }
    }

    async fn nsset(&mut self, ns: &str, prop: &str, value: &str) -> Result<(), String> {
        self.ok(&[b"NSSET", ns.as_bytes(), prop.as_bytes(), value.as_bytes()])
            .await
            .map_err(|e| format!("NSSET {prop}: {e}"))
    }
}

/// A device the manager runs a server on.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Device {
    path: PathBuf,
    port: u16,
    /// The pool's size: the namespaces' sizes together stay within it.
    size: u64,
}

/// One namespace: its device, and the size it reserves there.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Namespace {
    device: String,
    size: u64,
}

/// The state file: devices by storage id, namespaces by name.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct State {
    devices: BTreeMap<String, Device>,
    namespaces: BTreeMap<String, Namespace>,
}

impl State {
    fn reserved(&self, device: &str) -> u64 {
        self.namespaces
            .values()
            .filter(|n| n.device == device)
            .map(|n| n.size)
            .sum()
    }

    /// The lowest port no device has.
    fn free_port(&self) -> Option<u16> {
        (FIRST_PORT..=LAST_PORT).find(|p| self.devices.values().all(|d| d.port != *p))
    }
}

/// A zdb workload's result, with v3's field names.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ZdbResult {
    #[serde(rename = "Namespace")]
    pub namespace: String,
    #[serde(rename = "IPs")]
    pub ips: Vec<String>,
    #[serde(rename = "Port")]
    pub port: u16,
}

fn mode_name(m: ZdbMode) -> (&'static str, &'static str) {
    // (NSSET value, NSINFO's word)
    match m {
        ZdbMode::User => ("user", "userkey"),
        ZdbMode::Seq => ("seq", "sequential"),
    }
}

fn zdb_of(data: &WorkloadData) -> Result<&Zdb, ManagerError> {
    match data {
        // `*` is how NSSET clears a password: taken as one, it would leave the namespace open.
        WorkloadData::Zdb(z) if z.password == "*" => Err(ManagerError::Invalid(
            "password \"*\" means no password to zdb: choose another, or leave it empty for none"
                .into(),
        )
        .unchanged()),
        WorkloadData::Zdb(z) => Ok(z),
        other => Err(ManagerError::Failed(format!(
            "the zdb manager was given a {} workload",
            other.kind()
        ))),
    }
}

fn failed(what: &str) -> impl FnOnce(String) -> ManagerError + '_ {
    move |e| ManagerError::Failed(format!("{what}: {e}"))
}

/// The `zdb` manager.
pub struct ZdbManager<S> {
    storage: Arc<S>,
    servers: Arc<dyn ZdbServers>,
    path: PathBuf,
    state: Mutex<State>,
}

impl<S> std::fmt::Debug for ZdbManager<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ZdbManager")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

impl<S: Storage + 'static> ZdbManager<S> {
    /// A manager keeping its devices and namespaces in the state file `path`.
    pub fn new(
        storage: Arc<S>,
        servers: Arc<dyn ZdbServers>,
        path: PathBuf,
    ) -> Result<Self, ManagerError> {
        let state = match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| {
                ManagerError::Failed(format!("the zdb state {}: {e}", path.display()))
            })?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => State::default(),
            Err(e) => return Err(e.into()),
        };
        Ok(Self {
            storage,
            servers,
            path,
            state: Mutex::new(state),
        })
    }

    fn save(&self, state: &State) -> Result<(), ManagerError> {
        let bytes = serde_json::to_vec_pretty(state)
            .map_err(|e| ManagerError::Failed(format!("encoding the zdb state: {e}")))?;
        zos_runtime::private::write_atomic(&self.path, &bytes)?;
        Ok(())
    }

    /// Starts the server of every device that holds namespaces and is not running (zosd's
    /// start, then now and then): answers how many run.
    pub async fn keep_running(&self) -> Result<usize, ManagerError> {
        let state = self.state.lock().await;
        let (mut n, mut first_error) = (0, None);
        for (id, d) in &state.devices {
            if !state.namespaces.values().any(|ns| ns.device == *id) {
                continue;
            }
            // One device failing does not keep the others' servers down.
            match self.servers.ensure(&d.path, d.port).await {
                Ok(_) => n += 1,
                Err(e) => {
                    first_error.get_or_insert(e.context(format!("the zdb server of device {id}")));
                }
            }
        }
        match first_error {
            Some(e) => Err(e),
            None => Ok(n),
        }
    }

    /// A device with room for `size` more bytes, allocating one when none has.
    async fn place(&self, state: &mut State, size: u64) -> Result<String, ManagerError> {
        let devices = self.storage.zdb_list().await?;
        // Devices storage has that the state lost (a crash right after allocating one).
        for d in &devices {
            if !state.devices.contains_key(&d.id) {
                let port = state.free_port().ok_or_else(|| {
                    ManagerError::Failed("no zdb port left for another device".into())
                })?;
                state.devices.insert(
                    d.id.clone(),
                    Device {
                        path: d.path.clone(),
                        port,
                        size: d.size,
                    },
                );
            }
        }
        let fits = state
            .devices
            .iter()
            .filter(|(id, d)| state.reserved(id).saturating_add(size) <= d.size)
            .min_by_key(|(id, d)| d.size - state.reserved(id))
            .map(|(id, _)| id.clone());
        if let Some(id) = fits {
            return Ok(id);
        }
        let port = state
            .free_port()
            .ok_or_else(|| ManagerError::Failed("no zdb port left for another device".into()))?;
        let d = self.storage.zdb_allocate(size).await.map_err(|e| {
            ManagerError::from(e).context(format!(
                "no zdb device has room for {size} bytes, and no new one can be made"
            ))
        })?;
        state.devices.insert(
            d.id.clone(),
            Device {
                path: d.path,
                port,
                size: d.size,
            },
        );
        Ok(d.id)
    }

    /// The admin connection to the server of `device` (started if needed), and where it is.
    async fn admin(
        &self,
        state: &State,
        device: &str,
    ) -> Result<(AdminConn, Endpoint), ManagerError> {
        let d = state
            .devices
            .get(device)
            .ok_or_else(|| ManagerError::Failed(format!("zdb device {device} is not known")))?;
        let endpoint = self.servers.ensure(&d.path, d.port).await?;
        let conn = AdminConn::open(&endpoint, Some(self.servers.admin()))
            .await
            .map_err(ManagerError::Unavailable)?;
        Ok((conn, endpoint))
    }

    fn result(name: String, at: &Endpoint) -> serde_json::Value {
        to_data(&ZdbResult {
            namespace: name,
            ips: vec![at.addr.ip().to_string()],
            port: at.addr.port(),
        })
    }

    /// Sets what may change on a namespace: size, password, public.
    async fn settings(c: &mut AdminConn, ns: &str, z: &Zdb) -> Result<(), ManagerError> {
        let password = if z.password.is_empty() {
            "*"
        } else {
            z.password.as_str()
        };
        c.nsset(ns, "maxsize", &z.size.to_string())
            .await
            .map_err(ManagerError::Failed)?;
        c.nsset(ns, "password", password)
            .await
            .map_err(ManagerError::Failed)?;
        c.nsset(ns, "public", if z.public { "1" } else { "0" })
            .await
            .map_err(ManagerError::Failed)
    }

    async fn lock(&self, id: &WorkloadId, locked: bool) -> Result<(), ManagerError> {
        let name = id.to_string();
        let state = self.state.lock().await;
        let Some(ns) = state.namespaces.get(&name).cloned() else {
            return Ok(());
        };
        let (mut c, _) = self.admin(&state, &ns.device).await?;
        c.nsset(&name, "lock", if locked { "1" } else { "0" })
            .await
            .map_err(ManagerError::Failed)
    }
}

impl<S: Storage + 'static> Manager for ZdbManager<S> {
    fn provision<'a>(
        &'a self,
        t: Target<'a>,
    ) -> BoxFuture<'a, Result<serde_json::Value, ManagerError>> {
        Box::pin(async move {
            let z = zdb_of(t.data)?;
            let name = t.id.to_string();
            let mut state = self.state.lock().await;
            let device = match state.namespaces.get(&name) {
                Some(ns) => ns.device.clone(),
                None => {
                    let device = self.place(&mut state, z.size).await?;
                    // Recorded before it is made, so a crash leaves no namespace unaccounted.
                    state.namespaces.insert(
                        name.clone(),
                        Namespace {
                            device: device.clone(),
                            size: z.size,
                        },
                    );
                    self.save(&state)?;
                    device
                }
            };
            let (mut c, at) = self.admin(&state, &device).await?;
            let info = match c.nsinfo(&name).await.map_err(failed("NSINFO"))? {
                Some(info) => info,
                None => {
                    c.ok(&[b"NSNEW", name.as_bytes()])
                        .await
                        .map_err(failed("NSNEW"))?;
                    info!(namespace = %name, device = %device, "zdb namespace created");
                    c.nsinfo(&name)
                        .await
                        .map_err(failed("NSINFO"))?
                        .unwrap_or_default()
                }
            };
            let (mode, word) = mode_name(z.mode);
            if info.get("mode").map(String::as_str) != Some(word) {
                c.nsset(&name, "mode", mode)
                    .await
                    .map_err(ManagerError::Failed)?;
            }
            Self::settings(&mut c, &name, z).await?;
            Ok(Self::result(name, &at))
        })
    }

    fn update<'a>(
        &'a self,
        t: Target<'a>,
    ) -> BoxFuture<'a, Result<serde_json::Value, ManagerError>> {
        Box::pin(async move {
            let z = zdb_of(t.data)?;
            let name = t.id.to_string();
            let mut state = self.state.lock().await;
            let Some(ns) = state.namespaces.get(&name).cloned() else {
                return Err(ManagerError::Failed(format!(
                    "zdb namespace {name} is missing"
                )));
            };
            let (mut c, at) = self.admin(&state, &ns.device).await?;
            let info = c
                .nsinfo(&name)
                .await
                .map_err(failed("NSINFO"))?
                .ok_or_else(|| ManagerError::Failed(format!("zdb namespace {name} is missing")))?;
            let (mode, word) = mode_name(z.mode);
            let current = info.get("mode").map(String::as_str).unwrap_or_default();
            if current != word {
                let had = if current == "sequential" {
                    "seq"
                } else {
                    "user"
                };
                return Err(ManagerError::Invalid(format!(
                    "the mode of a zdb namespace cannot change (it is {had}, {mode} was asked): \
                     deploy a new zdb workload for the other mode"
                ))
                .unchanged());
            }
            if z.size < ns.size {
                return Err(ManagerError::Invalid(format!(
                    "a zdb namespace cannot shrink (from {} to {} bytes)",
                    ns.size, z.size
                ))
                .unchanged());
            }
            let room = state.devices.get(&ns.device).map(|d| d.size).unwrap_or(0);
            let others = state.reserved(&ns.device) - ns.size;
            if others.saturating_add(z.size) > room {
                return Err(ManagerError::Invalid(format!(
                    "the disk of this zdb namespace has no room for {} bytes ({} of {room} are \
                     reserved by other namespaces): deploy another zdb workload for more",
                    z.size, others
                ))
                .unchanged());
            }
            if z.size != ns.size {
                state.namespaces.insert(
                    name.clone(),
                    Namespace {
                        device: ns.device.clone(),
                        size: z.size,
                    },
                );
                self.save(&state)?;
            }
            Self::settings(&mut c, &name, z).await?;
            Ok(Self::result(name, &at))
        })
    }

    fn deprovision<'a>(&'a self, id: &'a WorkloadId) -> BoxFuture<'a, Result<(), ManagerError>> {
        Box::pin(async move {
            let name = id.to_string();
            let mut state = self.state.lock().await;
            let Some(ns) = state.namespaces.get(&name).cloned() else {
                return Ok(());
            };
            let (mut c, _) = self.admin(&state, &ns.device).await?;
            match c.call(&[b"NSDEL", name.as_bytes()]).await {
                Ok(Reply::Simple(_)) => info!(namespace = %name, "zdb namespace deleted"),
                Ok(Reply::Error(e)) if e.contains("doesn't exist") => {}
                Ok(other) => return Err(ManagerError::Failed(format!("NSDEL: {other:?}"))),
                Err(e) => return Err(ManagerError::Failed(format!("NSDEL: {e}"))),
            }
            drop(c);
            state.namespaces.remove(&name);
            self.save(&state)?;
            if !state.namespaces.values().any(|n| n.device == ns.device)
                && let Some(d) = state.devices.get(&ns.device).cloned()
            {
                self.servers.stop(&d.path).await?;
                match self.storage.zdb_release(&ns.device).await {
                    Ok(()) => {
                        state.devices.remove(&ns.device);
                        self.save(&state)?;
                        info!(device = %ns.device, "zdb device released");
                    }
                    Err(e) => {
                        warn!(device = %ns.device, error = %zos_runtime::error_chain(&e), "cannot release the empty zdb device; it is used again for the next namespace");
                    }
                }
            }
            Ok(())
        })
    }

    fn pause<'a>(&'a self, id: &'a WorkloadId) -> BoxFuture<'a, Result<(), ManagerError>> {
        Box::pin(self.lock(id, true))
    }

    fn resume<'a>(&'a self, id: &'a WorkloadId) -> BoxFuture<'a, Result<(), ManagerError>> {
        Box::pin(self.lock(id, false))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn admin_passwords_differ_per_node_and_stay_per_node() {
        assert_eq!(admin_password(&[1; 32]), admin_password(&[1; 32]));
        assert_ne!(admin_password(&[1; 32]), admin_password(&[2; 32]));
        assert_eq!(admin_password(&[1; 32]).len(), 64);
        // Not the gateway's seal key from the same seed.
        assert_ne!(
            admin_password(&[1; 32]),
            hex::encode(zos_gateway::supervisor::seal_key(&[1; 32]))
        );
    }

    #[test]
    fn ports_are_the_lowest_free_and_stay_within_the_range() {
        let mut s = State::default();
        assert_eq!(s.free_port(), Some(FIRST_PORT));
        for (i, id) in ["a", "b"].iter().enumerate() {
            s.devices.insert(
                id.to_string(),
                Device {
                    path: PathBuf::from(id),
                    port: FIRST_PORT + i as u16,
                    size: 10,
                },
            );
        }
        assert_eq!(s.free_port(), Some(FIRST_PORT + 2));
        s.devices.remove("a");
        assert_eq!(s.free_port(), Some(FIRST_PORT));
    }

    #[test]
    fn results_carry_v3s_field_names() {
        let v = to_data(&ZdbResult {
            namespace: "1-2-db".into(),
            ips: vec!["100.127.0.1".into()],
            port: 9900,
        });
        assert_eq!(
            v,
            serde_json::json!({"Namespace": "1-2-db", "IPs": ["100.127.0.1"], "Port": 9900})
        );
    }
}
