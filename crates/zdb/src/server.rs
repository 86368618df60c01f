//! The TCP server: connections, sessions and 0-db's commands.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::{Bytes, BytesMut};
use sha1::{Digest, Sha1};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Notify;

use crate::resp::{self, Reply};
use crate::store::{Fsync, Mode, Pos, Settings, Store, StoreError, StoreOptions};
use crate::{Config, Error};

const DEFAULT_NS: &str = "default";
/// Deleted namespaces' directories until their files are gone (not a valid namespace name).
const DELETED_PREFIX: &str = ".deleted-";
/// MGET's limit, as 0-db.
const MGET_MAX: usize = 1023;
/// The most value bytes one MGET answers with.
const MGET_BYTES: u64 = 64 * 1024 * 1024;
/// Replies are sent once this many bytes wait, even in the middle of a pipeline, so a client
/// that pipelines many GETs of large values does not make the server buffer them all.
const FLUSH_AT: usize = 1024 * 1024;
/// Keys per SCAN answer.
const SCAN_BATCH: usize = 100;

#[derive(Debug)]
struct Namespace {
    name: String,
    store: Mutex<Store>,
    deleted: AtomicBool,
}

impl Namespace {
    fn store(&self) -> std::sync::MutexGuard<'_, Store> {
        // A panic while holding the lock leaves the store as consistent as its last append.
        self.store.lock().unwrap_or_else(|p| p.into_inner())
    }
}

#[derive(Debug)]
struct Shared {
    config: Config,
    opts: StoreOptions,
    namespaces: RwLock<BTreeMap<String, Arc<Namespace>>>,
    started: Instant,
    clients: AtomicU64,
    stop: Notify,
}

/// A bound server; [`Server::serve`] runs it.
#[derive(Debug)]
pub struct Server {
    listener: TcpListener,
    shared: Arc<Shared>,
}

impl Server {
    /// Opens every namespace under the data directory (rebuilding their indexes, creating
    /// `default` when missing) and binds the listener.
    pub async fn bind(config: Config) -> Result<Server, Error> {
        let opts = StoreOptions {
            datafile_size: config.datafile_size,
            fsync: config.fsync,
        };
        let dir = config.data_dir.clone();
        let dir_err = |source| Error::DataDir {
            path: dir.clone(),
            source,
        };
        std::fs::create_dir_all(&dir).map_err(dir_err)?;
        let mut namespaces = BTreeMap::new();
        for e in std::fs::read_dir(&dir).map_err(dir_err)? {
            let e = e.map_err(dir_err)?;
            let name = e.file_name().to_string_lossy().into_owned();
            if name.starts_with(DELETED_PREFIX) {
                tracing::info!(dir = %e.path().display(), "removing a deleted namespace's files");
                if let Err(err) = std::fs::remove_dir_all(e.path()) {
                    tracing::warn!(dir = %e.path().display(), error = %err, "cannot remove");
                }
                continue;
            }
            if !e.path().join("namespace.json").is_file() || !valid_name(&name) {
                continue;
            }
            let store = Store::open(&e.path(), opts).map_err(|source| Error::Namespace {
                name: name.clone(),
                source,
            })?;
            tracing::debug!(namespace = %name, entries = store.stats().entries, "namespace opened");
            namespaces.insert(name.clone(), new_ns(name, store));
        }
        if !namespaces.contains_key(DEFAULT_NS) {
            let store =
                create_ns(&dir.join(DEFAULT_NS), opts).map_err(|source| Error::Namespace {
                    name: DEFAULT_NS.into(),
                    source,
                })?;
            namespaces.insert(DEFAULT_NS.into(), new_ns(DEFAULT_NS.into(), store));
        }
        let listener = TcpListener::bind(config.listen)
            .await
            .map_err(|source| Error::Listen {
                addr: config.listen,
                source,
            })?;
        tracing::info!(listen = %listener.local_addr().map_err(Error::Accept)?, namespaces = namespaces.len(), "zdb ready");
        Ok(Server {
            listener,
            shared: Arc::new(Shared {
                config,
                opts,
                namespaces: RwLock::new(namespaces),
                started: Instant::now(),
                clients: AtomicU64::new(0),
                stop: Notify::new(),
            }),
        })
    }

    /// The address the listener got (its port, when the configuration asked for port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.listener
            .local_addr()
            .expect("a bound listener has an address")
    }

    /// Serves connections until an admin sends STOP; then syncs every namespace and returns.
    pub async fn serve(self) -> Result<(), Error> {
        let shared = self.shared;
        let syncer = (shared.opts.fsync == Fsync::EverySecond).then(|| {
            let shared = shared.clone();
            tokio::spawn(async move {
                let mut tick = tokio::time::interval(Duration::from_secs(1));
                loop {
                    tick.tick().await;
                    let s = shared.clone();
                    let _ = tokio::task::spawn_blocking(move || sync_all(&s)).await;
                }
            })
        });
        loop {
            tokio::select! {
                accepted = self.listener.accept() => {
                    let (stream, peer) = match accepted {
                        Ok(a) => a,
                        Err(e) => {
                            // Out of descriptors and the like: wait instead of spinning.
                            tracing::warn!(error = %e, "accept failed");
                            tokio::time::sleep(Duration::from_millis(100)).await;
                            continue;
                        }
                    };
                    let shared = shared.clone();
                    tokio::spawn(async move {
                        shared.clients.fetch_add(1, Ordering::Relaxed);
                        if let Err(e) = connection(&shared, stream).await {
                            tracing::debug!(%peer, error = %e, "connection ended");
                        }
                        shared.clients.fetch_sub(1, Ordering::Relaxed);
                    });
                }
                () = shared.stop.notified() => break,
            }
        }
        if let Some(s) = syncer {
            s.abort();
        }
        let s = shared.clone();
        let _ = tokio::task::spawn_blocking(move || sync_all(&s)).await;
        tracing::info!("zdb stopped");
        Ok(())
    }
}

fn new_ns(name: String, store: Store) -> Arc<Namespace> {
    Arc::new(Namespace {
        name,
        store: Mutex::new(store),
        deleted: AtomicBool::new(false),
    })
}

/// Creates a namespace's directory. One that is there without settings is what a crash in
/// the middle of a creation leaves (namespaces are only loaded with their settings file, and
/// the data directory is the server's own): it is garbage and goes first.
fn create_ns(dir: &std::path::Path, opts: StoreOptions) -> Result<Store, StoreError> {
    if dir.exists() {
        let _ = std::fs::remove_dir_all(dir);
    }
    Store::create(dir, Settings::default(), opts)
}

fn sync_all(shared: &Shared) {
    let all: Vec<_> = shared
        .namespaces
        .read()
        .unwrap_or_else(|p| p.into_inner())
        .values()
        .cloned()
        .collect();
    for ns in all {
        let Some((file, path)) = ns.store().take_dirty() else {
            continue;
        };
        if let Err(e) = file.sync_data() {
            tracing::error!(namespace = %ns.name, file = %path.display(), error = %e, "sync failed");
        }
    }
}

/// A namespace name: what is safe as a directory name.
fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 128
        && !name.starts_with('.')
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.')
}

fn now() -> Duration {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
}

async fn connection(shared: &Arc<Shared>, mut stream: TcpStream) -> std::io::Result<()> {
    let _ = stream.set_nodelay(true);
    let mut session = Session::new(shared.clone());
    let mut buf = BytesMut::with_capacity(64 * 1024);
    let mut out = BytesMut::with_capacity(64 * 1024);
    loop {
        loop {
            match resp::parse(&mut buf, &shared.config.limits) {
                Ok(Some(args)) if args.is_empty() => {}
                Ok(Some(args)) => {
                    let (reply, after) = session.run(&args);
                    reply.encode(&mut out);
                    match after {
                        After::Continue if out.len() >= FLUSH_AT => {
                            stream.write_all(&out).await?;
                            out.clear();
                        }
                        After::Continue => {}
                        After::Close => {
                            stream.write_all(&out).await?;
                            return Ok(());
                        }
                        After::Stop => {
                            stream.write_all(&out).await?;
                            shared.stop.notify_one();
                            return Ok(());
                        }
                    }
                }
                Ok(None) => break,
                Err(e) => {
                    Reply::error(format!("Protocol error: {e}")).encode(&mut out);
                    stream.write_all(&out).await?;
                    return Ok(());
                }
            }
        }
        if !out.is_empty() {
            stream.write_all(&out).await?;
            out.clear();
        }
        buf.reserve(64 * 1024);
        if stream.read_buf(&mut buf).await? == 0 {
            return Ok(());
        }
    }
}

enum After {
    Continue,
    Close,
    Stop,
}

struct Session {
    shared: Arc<Shared>,
    ns: Arc<Namespace>,
    writable: bool,
    admin: bool,
    /// The challenge of `AUTH SECURE CHALLENGE`; each is good for one answer.
    nonce: Option<String>,
}

fn ok() -> Reply {
    Reply::Status("OK")
}

fn err(msg: &str) -> Reply {
    Reply::error(msg)
}

fn sha1_hex(nonce: &str, password: &str) -> String {
    hex::encode(Sha1::digest(format!("{nonce}:{password}").as_bytes()))
}

/// Compares without stopping at the first difference.
fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |d, (x, y)| d | (x ^ y)) == 0
}

fn upper(b: &[u8]) -> String {
    String::from_utf8_lossy(b).to_ascii_uppercase()
}

impl Session {
    fn new(shared: Arc<Shared>) -> Self {
        let open = shared.config.admin_password.is_none();
        let ns = shared.namespaces.read().unwrap_or_else(|p| p.into_inner())[DEFAULT_NS].clone();
        Session {
            shared,
            ns,
            writable: open,
            admin: open,
            nonce: None,
        }
    }

    fn lookup_ns(&self, name: &[u8]) -> Option<Arc<Namespace>> {
        let name = std::str::from_utf8(name).ok()?;
        self.shared
            .namespaces
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(name)
            .cloned()
    }

    /// The password that guards a namespace: `default`'s is the admin password.
    fn password_of(&self, ns: &Namespace) -> Option<String> {
        if ns.name == DEFAULT_NS {
            self.shared.config.admin_password.clone()
        } else {
            ns.store().settings().password.clone()
        }
    }

    /// Checks the answer to a challenge (consuming the challenge).
    fn secure_ok(&mut self, answer: &[u8], password: &str) -> Result<(), Reply> {
        let Some(nonce) = self.nonce.take() else {
            return Err(err(
                "No CHALLENGE requested, secure authentication not available",
            ));
        };
        if answer.len() != 40 {
            return Err(err("Invalid hash length"));
        }
        let expected = sha1_hex(&nonce, password);
        if same(&answer.to_ascii_lowercase(), expected.as_bytes()) {
            Ok(())
        } else {
            Err(err("Access denied"))
        }
    }

    fn run(&mut self, args: &[Bytes]) -> (Reply, After) {
        let cmd = upper(&args[0]);
        let a = &args[1..];
        let reply = match cmd.as_str() {
            "PING" => match a {
                [] => Reply::Status("PONG"),
                [m] => Reply::Bulk(m.clone()),
                _ => err("Invalid arguments"),
            },
            "QUIT" => return (ok(), After::Close),
            "STOP" => {
                if !self.admin {
                    return (err("Permission denied"), After::Continue);
                }
                return (ok(), After::Stop);
            }
            "TIME" => {
                let t = now();
                Reply::Array(vec![
                    Reply::bulk(t.as_secs().to_string()),
                    Reply::bulk(t.subsec_micros().to_string()),
                ])
            }
            "INFO" => self.info(),
            "AUTH" => self.auth(a),
            "SELECT" => self.select(a),
            "NSNEW" => self.admin_only().unwrap_or_else(|| self.nsnew(a)),
            "NSDEL" => self.admin_only().unwrap_or_else(|| self.nsdel(a)),
            "NSSET" => self.admin_only().unwrap_or_else(|| self.nsset(a)),
            "NSINFO" => self.nsinfo(a),
            "NSLIST" => Reply::Array(
                self.shared
                    .namespaces
                    .read()
                    .unwrap_or_else(|p| p.into_inner())
                    .keys()
                    .map(|n| Reply::bulk(n.clone()))
                    .collect(),
            ),
            _ => {
                if self.ns.deleted.load(Ordering::Acquire) {
                    err("Your active namespace is not available anymore (probably removed).")
                } else {
                    self.data_command(&cmd, a)
                }
            }
        };
        (reply, After::Continue)
    }

    fn admin_only(&self) -> Option<Reply> {
        (!self.admin).then(|| err("Permission denied"))
    }

    fn data_command(&mut self, cmd: &str, a: &[Bytes]) -> Reply {
        match (cmd, a) {
            ("SET", [key, value]) => self.set(key, value, None),
            ("SET", [key, value, ts]) => {
                if !self.admin {
                    return err("Permission denied");
                }
                match std::str::from_utf8(ts).ok().and_then(|t| t.parse().ok()) {
                    Some(ts) => self.set(key, value, Some(ts)),
                    None => err("Invalid timestamp"),
                }
            }
            ("GET", [key]) => {
                let found = self.ns.store().lookup(key);
                match found.map(|v| v.read()) {
                    None => Reply::Nil,
                    Some(Ok(v)) => Reply::Bulk(v),
                    Some(Err(e)) => self.io_failure("read", e),
                }
            }
            ("MGET", keys) if !keys.is_empty() => {
                if keys.len() > MGET_MAX {
                    return err("Too many keys");
                }
                let refs: Vec<_> = {
                    let store = self.ns.store();
                    keys.iter().map(|k| store.lookup(k)).collect()
                };
                if refs
                    .iter()
                    .flatten()
                    .map(|v| u64::from(v.len()))
                    .sum::<u64>()
                    > MGET_BYTES
                {
                    return Reply::error(format!(
                        "MGET answer over {} MiB; ask for fewer keys",
                        MGET_BYTES >> 20
                    ));
                }
                let mut out = Vec::with_capacity(refs.len());
                for r in refs {
                    out.push(match r.map(|v| v.read()) {
                        None => Reply::Nil,
                        Some(Ok(v)) => Reply::Bulk(v),
                        Some(Err(e)) => return self.io_failure("read", e),
                    });
                }
                Reply::Array(out)
            }
            ("DEL", [key]) => {
                if let Some(r) = self.write_denied() {
                    return r;
                }
                let t = now().as_secs();
                match self.ns.store().del(key, t) {
                    Ok(true) => ok(),
                    Ok(false) => err("Key not found"),
                    Err(e) => self.store_failure(e),
                }
            }
            ("EXISTS", [key]) => Reply::Int(i64::from(self.ns.store().exists(key))),
            ("CHECK", [key]) => match self.ns.store().check(key) {
                Ok(None) => Reply::Nil,
                Ok(Some(good)) => Reply::Int(i64::from(good)),
                Err(e) => self.io_failure("check", e),
            },
            ("LENGTH", [key]) => match self.ns.store().meta(key) {
                Some((len, _)) => Reply::Int(i64::from(len)),
                None => Reply::Nil,
            },
            ("KEYTIME", [key]) => match self.ns.store().meta(key) {
                Some((_, ts)) => Reply::Int(ts as i64),
                None => Reply::Nil,
            },
            ("KEYCUR", [key]) => match self.ns.store().cursor_of(key) {
                Some(p) => Reply::Bulk(p.to_cursor()),
                None => err("No such key"),
            },
            ("SCAN" | "SCANX" | "RSCAN", [] | [_]) => {
                let cursor = match a.first() {
                    None => None,
                    Some(c) => match Pos::from_cursor(c) {
                        Some(p) => Some(p),
                        None => return err("Invalid key format"),
                    },
                };
                match self.ns.store().scan(cursor, cmd != "RSCAN", SCAN_BATCH) {
                    None => err("No more data"),
                    Some((next, items)) => Reply::Array(vec![
                        Reply::Bulk(next.to_cursor()),
                        Reply::Array(
                            items
                                .into_iter()
                                .map(|(k, len, ts)| {
                                    Reply::Array(vec![
                                        Reply::Bulk(k),
                                        Reply::Int(i64::from(len)),
                                        Reply::Int(ts as i64),
                                    ])
                                })
                                .collect(),
                        ),
                    ]),
                }
            }
            ("HISTORY", [key] | [key, _]) => {
                let at = match a.get(1) {
                    None => None,
                    Some(c) => match Pos::from_cursor(c) {
                        Some(p) => Some(p),
                        None => return err("Invalid key format"),
                    },
                };
                match self.ns.store().history(key, at) {
                    Ok(None) => Reply::Nil,
                    Ok(Some((prev, ts, value))) => Reply::Array(vec![
                        Reply::Bulk(prev),
                        Reply::Int(ts as i64),
                        Reply::Bulk(value),
                    ]),
                    Err(e) => self.io_failure("read", e),
                }
            }
            ("DBSIZE", []) => Reply::Int(self.ns.store().stats().entries as i64),
            (
                "SET" | "GET" | "MGET" | "DEL" | "EXISTS" | "CHECK" | "LENGTH" | "KEYTIME"
                | "KEYCUR" | "SCAN" | "SCANX" | "RSCAN" | "HISTORY" | "DBSIZE",
                _,
            ) => err("Invalid arguments"),
            _ => err("Command not supported"),
        }
    }

    fn write_denied(&self) -> Option<Reply> {
        (!self.writable).then(|| err("Namespace is in read-only mode"))
    }

    fn set(&mut self, key: &[u8], value: &[u8], ts: Option<u64>) -> Reply {
        if let Some(r) = self.write_denied() {
            return r;
        }
        let ts = ts.unwrap_or_else(|| now().as_secs());
        let res = self.ns.store().set(key, value, ts);
        match res {
            Ok(Some(k)) => Reply::Bulk(k),
            Ok(None) => Reply::Nil,
            Err(e) => self.store_failure(e),
        }
    }

    fn store_failure(&self, e: StoreError) -> Reply {
        match e {
            StoreError::Io { .. } => {
                tracing::error!(namespace = %self.ns.name, error = %e, source = ?std::error::Error::source(&e), "write failed");
                err("Cannot write data right now")
            }
            other => Reply::error(other.to_string()),
        }
    }

    fn io_failure(&self, what: &str, e: std::io::Error) -> Reply {
        tracing::error!(namespace = %self.ns.name, error = %e, "{what} failed");
        err("Internal error reading data")
    }

    fn auth(&mut self, a: &[Bytes]) -> Reply {
        let Some(admin) = self.shared.config.admin_password.clone() else {
            return err("Authentication not needed: no admin password is set");
        };
        let granted = match a {
            [s, c] if upper(s) == "SECURE" && upper(c) == "CHALLENGE" => {
                let mut b = [0u8; 8];
                if getrandom::getrandom(&mut b).is_err() {
                    return err("Internal generator error");
                }
                let nonce = hex::encode(b);
                self.nonce = Some(nonce.clone());
                return Reply::StatusOwned(nonce);
            }
            [s, answer] if upper(s) == "SECURE" => match self.secure_ok(answer, &admin) {
                Ok(()) => true,
                Err(r) => return r,
            },
            [pw] => same(pw, admin.as_bytes()),
            _ => return err("Invalid arguments"),
        };
        if !granted {
            return err("Access denied");
        }
        self.admin = true;
        if self.ns.name == DEFAULT_NS {
            self.writable = true;
        }
        ok()
    }

    fn select(&mut self, a: &[Bytes]) -> Reply {
        let Some(name) = a.first() else {
            return err("Invalid argument");
        };
        let Some(ns) = self.lookup_ns(name) else {
            return err("Namespace not found");
        };
        let public = ns.name == DEFAULT_NS || ns.store().settings().public;
        let writable = match (self.password_of(&ns), &a[1..]) {
            _ if a.len() > 3 => return err("Too many arguments"),
            (None, _) => true,
            (Some(_), []) if ns.name == DEFAULT_NS && self.admin => true,
            (Some(_), []) if public => false,
            (Some(_), []) => return err("Namespace protected and private"),
            (Some(pw), [given]) => {
                if !same(given, pw.as_bytes()) {
                    return err("Access denied");
                }
                true
            }
            (Some(pw), [method, answer]) => {
                if upper(method) != "SECURE" {
                    return err("Only SECURE extra method supported");
                }
                if let Err(r) = self.secure_ok(answer, &pw) {
                    return r;
                }
                true
            }
            _ => return err("Too many arguments"),
        };
        self.ns = ns;
        self.writable = writable;
        ok()
    }

    fn nsnew(&mut self, a: &[Bytes]) -> Reply {
        let [name] = a else {
            return err("Invalid arguments");
        };
        let Some(name) = std::str::from_utf8(name).ok().filter(|n| valid_name(n)) else {
            return err("This name is not allowed");
        };
        let mut all = self
            .shared
            .namespaces
            .write()
            .unwrap_or_else(|p| p.into_inner());
        if all.contains_key(name) {
            return err("This namespace is not available");
        }
        if all.len() >= self.shared.config.max_namespaces {
            return Reply::error(format!(
                "Namespace limit reached ({}); delete one first",
                self.shared.config.max_namespaces
            ));
        }
        let dir = self.shared.config.data_dir.join(name);
        match create_ns(&dir, self.shared.opts) {
            Ok(store) => {
                all.insert(name.to_string(), new_ns(name.to_string(), store));
                tracing::info!(namespace = name, "namespace created");
                ok()
            }
            Err(e) => {
                tracing::error!(namespace = name, error = %e, "cannot create namespace");
                err("Could not create namespace")
            }
        }
    }

    fn nsdel(&mut self, a: &[Bytes]) -> Reply {
        let [name] = a else {
            return err("Invalid arguments");
        };
        if name.as_ref() == DEFAULT_NS.as_bytes() {
            return err("Cannot remove default namespace");
        }
        let Some(ns) = self.lookup_ns(name) else {
            return err("This namespace doesn't exists");
        };
        if Arc::ptr_eq(&ns, &self.ns) {
            return err("Cannot remove namespace you're currently using.");
        }
        // Renamed away first, in one step, so a crash half-way through removing the files
        // never brings back half a namespace; what is left is removed at the next start.
        let data = &self.shared.config.data_dir;
        let gone = data.join(format!("{DELETED_PREFIX}{}-{}", ns.name, now().as_nanos()));
        {
            let _store = ns.store();
            if let Err(e) = std::fs::rename(data.join(&ns.name), &gone)
                .and_then(|()| std::fs::File::open(data)?.sync_all())
            {
                tracing::error!(namespace = %ns.name, error = %e, "cannot remove namespace");
                return err("Could not delete this namespace");
            }
            ns.deleted.store(true, Ordering::Release);
        }
        self.shared
            .namespaces
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&ns.name);
        if let Err(e) = std::fs::remove_dir_all(&gone) {
            tracing::warn!(namespace = %ns.name, dir = %gone.display(), error = %e, "namespace files not all removed; the next start retries");
        }
        tracing::info!(namespace = %ns.name, "namespace deleted");
        ok()
    }

    fn nsset(&mut self, a: &[Bytes]) -> Reply {
        let [name, prop, value] = a else {
            return err("Invalid arguments");
        };
        let Some(ns) = self.lookup_ns(name) else {
            return err("Namespace not found");
        };
        let prop = String::from_utf8_lossy(prop).to_ascii_lowercase();
        let value = String::from_utf8_lossy(value).into_owned();
        let mut store = ns.store();
        let mut s = store.settings().clone();
        match prop.as_str() {
            "mode" => {
                s.mode = match value.as_str() {
                    "user" => Mode::User,
                    "seq" => Mode::Seq,
                    _ => return err("Invalid property value (expected: user, seq)"),
                }
            }
            "lock" => s.locked = value.starts_with('1'),
            "maxsize" | "password" | "public" if ns.name == DEFAULT_NS => {
                return err("Cannot update default namespace");
            }
            "maxsize" => match value.parse() {
                Ok(n) => s.maxsize = n,
                Err(_) => return err("Invalid property value (expected: bytes)"),
            },
            "password" => s.password = (value != "*").then_some(value),
            "public" => s.public = value.starts_with('1'),
            _ => return err("Invalid property"),
        }
        match store.set_settings(s) {
            Ok(()) => ok(),
            Err(e @ StoreError::ModeInUse) => Reply::error(e.to_string()),
            Err(e) => {
                tracing::error!(namespace = %ns.name, error = %e, "cannot save settings");
                err("Could not save namespace settings")
            }
        }
    }

    fn nsinfo(&self, a: &[Bytes]) -> Reply {
        let [name] = a else {
            return err("Invalid arguments");
        };
        let Some(ns) = self.lookup_ns(name) else {
            return err("Namespace not found");
        };
        let password = self.password_of(&ns).is_some();
        let store = ns.store();
        let (s, st) = (store.settings(), store.stats());
        let yn = |b: bool| if b { "yes" } else { "no" };
        let mut t = String::new();
        let _ = write!(
            t,
            "# namespace\nname: {}\nentries: {}\npublic: {}\npassword: {}\n\
             data_size_bytes: {}\ndata_size_mb: {:.2}\ndata_limits_bytes: {}\n\
             data_disk_bytes: {}\ndata_files: {}\nindex_size_bytes: 0\nindex_size_kb: 0.00\n\
             mode: {}\nworm: no\nlocked: {}\nnext_internal_id: {:#010x}\n",
            ns.name,
            st.entries,
            yn(ns.name == DEFAULT_NS || s.public),
            yn(password),
            st.live_bytes,
            st.live_bytes as f64 / (1024.0 * 1024.0),
            s.maxsize,
            st.disk_bytes,
            st.data_files,
            match s.mode {
                Mode::User => "userkey",
                Mode::Seq => "sequential",
            },
            yn(s.locked),
            st.next_seq,
        );
        if self.admin {
            let _ = writeln!(t, "data_path: {}", store.dir().display());
        }
        Reply::bulk(t)
    }

    fn info(&self) -> Reply {
        let n = self
            .shared
            .namespaces
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .len();
        Reply::bulk(format!(
            "# server\nserver_name: zos-zdb\nversion: {}\nuptime: {}\nnamespaces: {}\n\
             clients: {}\nfsync: {}\n",
            env!("CARGO_PKG_VERSION"),
            self.shared.started.elapsed().as_secs(),
            n,
            self.shared.clients.load(Ordering::Relaxed),
            match self.shared.opts.fsync {
                Fsync::Always => "always",
                Fsync::EverySecond => "every-second",
            },
        ))
    }
}
