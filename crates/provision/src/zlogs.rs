//! The `zlogs` manager: a machine's console, line by line, to a receiver the user runs in their
//! own network (`ws://`, `wss://`, or `redis://HOST:PORT/CHANNEL`, published to the channel).
//!
//! - The receiver's address must be inside one of the machine's private networks on this node,
//!   and the connection is made from that network's namespace (never the node's own): the node
//!   reaches nothing for a tenant that the tenant's machines could not reach themselves.
//! - One task per workload tails the console log. Lines wait in a bounded buffer
//!   ([`BUFFER_LINES`]); when the receiver is slow or away, the oldest are dropped and counted,
//!   and a line saying how many went is sent before the next ones.
//! - The connection is made again with a backoff (1 s doubling to 30 s).
//! - How far the console was sent is kept in a small file per workload, so a new zosd goes on
//!   where the last one stopped (a line may be sent twice around a crash, never skipped
//!   unless dropped for the bound).

use std::collections::{HashMap, VecDeque};
use std::io::{Read, Seek, SeekFrom};
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::SinkExt;
use futures::future::BoxFuture;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};
use zos_types::deployment::WorkloadId;
use zos_types::workload::WorkloadData;

use super::managers::{Manager, ManagerError, Target};
use zos_net::Networker;

/// Lines a stream keeps while its receiver is away; older ones are dropped.
pub const BUFFER_LINES: usize = 4096;
/// A longer console line is cut into pieces of this many bytes.
pub const MAX_LINE: usize = 16 * 1024;
const POLL: Duration = Duration::from_millis(250);
const BACKOFF_MAX: Duration = Duration::from_secs(30);

/// Where a machine's console log is.
pub trait Consoles: Send + Sync {
    /// The console log of machine `vm`, `None` when this node has no such machine.
    fn console_log<'a>(
        &'a self,
        vm: &'a WorkloadId,
    ) -> BoxFuture<'a, Result<Option<PathBuf>, ManagerError>>;
}

/// The consoles of the node's VMM.
#[derive(Debug)]
pub struct VmmConsoles<V>(pub Arc<V>);

impl<V: zos_vmm::Vmm + 'static> Consoles for VmmConsoles<V> {
    fn console_log<'a>(
        &'a self,
        vm: &'a WorkloadId,
    ) -> BoxFuture<'a, Result<Option<PathBuf>, ManagerError>> {
        Box::pin(async move {
            Ok(self
                .0
                .info(&vm.to_string())
                .await
                .map_err(|e| ManagerError::from(e).context("finding the machine"))?
                .map(|i| i.console_log))
        })
    }
}

/// Where a stream sends its lines.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Output {
    /// A WebSocket: each line one text message.
    WebSocket { url: String, addr: SocketAddr },
    /// A Redis server: each line `PUBLISH`ed to `channel`.
    Redis { addr: SocketAddr, channel: String },
}

impl Output {
    /// Parses a zlogs `output`: the host must be an IP address.
    pub fn parse(output: &str) -> Result<Self, String> {
        let (scheme, rest) = output
            .split_once("://")
            .ok_or("must be a ws://, wss:// or redis:// URL")?;
        let (authority, path) = rest.split_once('/').unwrap_or((rest, ""));
        let default_port = match scheme {
            "ws" => 80,
            "wss" => 443,
            "redis" => 6379,
            _ => return Err(format!("scheme {scheme:?} is not ws, wss or redis")),
        };
        let addr = authority
            .parse::<SocketAddr>()
            .or_else(|_| {
                authority
                    .parse::<IpAddr>()
                    .map(|ip| SocketAddr::new(ip, default_port))
            })
            .map_err(|_| {
                format!("{authority:?} must be IP or IP:PORT (an address in the machine's network)")
            })?;
        match scheme {
            "redis" => {
                let channel = path.trim_end_matches('/');
                if channel.is_empty() || channel.len() > 256 || channel.contains('/') {
                    return Err("a redis output names its channel: redis://IP:PORT/CHANNEL".into());
                }
                Ok(Self::Redis {
                    addr,
                    channel: channel.to_string(),
                })
            }
            _ => Ok(Self::WebSocket {
                url: output.to_string(),
                addr,
            }),
        }
    }

    pub fn addr(&self) -> SocketAddr {
        match self {
            Self::WebSocket { addr, .. } | Self::Redis { addr, .. } => *addr,
        }
    }
}

/// What a stream did so far.
#[derive(Debug, Default)]
pub struct Stats {
    pub sent: AtomicU64,
    pub dropped: AtomicU64,
    pub connects: AtomicU64,
}

/// One stream: the console `console`, to `output`, connected from the namespace `netns`.
#[derive(Debug, Clone)]
pub struct StreamSpec {
    pub console: PathBuf,
    pub output: Output,
    pub netns: Option<String>,
    /// Where the sent offset is kept.
    pub offset_file: PathBuf,
    pub buffer_lines: usize,
}

enum Conn {
    Ws(Box<tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<TcpStream>>>),
    Redis(BufReader<TcpStream>),
}

async fn connect(spec: &StreamSpec) -> Result<Conn, String> {
    let target = zos_gateway::route::Target {
        addr: spec.output.addr(),
        netns: spec.netns.clone(),
    };
    let tcp = zos_gateway::connect::connect(&target)
        .await
        .map_err(|e| e.to_string())?;
    match &spec.output {
        Output::WebSocket { url, .. } => {
            let (ws, _) = tokio::time::timeout(
                Duration::from_secs(10),
                tokio_tungstenite::client_async_tls(url.as_str(), tcp),
            )
            .await
            .map_err(|_| "the websocket handshake timed out".to_string())?
            .map_err(|e| e.to_string())?;
            Ok(Conn::Ws(Box::new(ws)))
        }
        Output::Redis { .. } => Ok(Conn::Redis(BufReader::new(tcp))),
    }
}

/// A RESP command of bulk strings.
fn resp(args: &[&[u8]]) -> Vec<u8> {
    let mut out = format!("*{}\r\n", args.len()).into_bytes();
    for a in args {
        out.extend_from_slice(format!("${}\r\n", a.len()).as_bytes());
        out.extend_from_slice(a);
        out.extend_from_slice(b"\r\n");
    }
    out
}

async fn send(conn: &mut Conn, output: &Output, line: &str) -> Result<(), String> {
    match (conn, output) {
        (Conn::Ws(ws), _) => ws
            .send(tokio_tungstenite::tungstenite::Message::text(line))
            .await
            .map_err(|e| e.to_string()),
        (Conn::Redis(r), Output::Redis { channel, .. }) => {
            let cmd = resp(&[b"PUBLISH", channel.as_bytes(), line.as_bytes()]);
            r.get_mut()
                .write_all(&cmd)
                .await
                .map_err(|e| e.to_string())?;
            let mut reply = String::new();
            tokio::time::timeout(Duration::from_secs(10), r.read_line(&mut reply))
                .await
                .map_err(|_| "no answer to PUBLISH".to_string())?
                .map_err(|e| e.to_string())?;
            match reply.as_bytes().first() {
                Some(b':') => Ok(()),
                _ => Err(format!("PUBLISH answered {:?}", reply.trim_end())),
            }
        }
        (Conn::Redis(_), Output::WebSocket { .. }) => Err("mismatched output".into()),
    }
}

/// The new complete lines of the console since `offset`, each with the offset after it.
/// A console log that got shorter (made anew) is read from its start.
fn read_lines(
    path: &Path,
    offset: &mut u64,
    partial: &mut Vec<u8>,
    out: &mut Vec<(String, u64)>,
) -> std::io::Result<()> {
    let mut f = match std::fs::File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e),
    };
    let len = f.metadata()?.len();
    if len < *offset + partial.len() as u64 {
        *offset = 0;
        partial.clear();
    }
    let start = *offset + partial.len() as u64;
    if len == start {
        return Ok(());
    }
    f.seek(SeekFrom::Start(start))?;
    // At most 1 MiB a round, so one huge burst does not hold the task.
    let mut chunk = Vec::new();
    f.take(1 << 20).read_to_end(&mut chunk)?;
    let mut pos = start - partial.len() as u64;
    partial.extend_from_slice(&chunk);
    let mut rest: &[u8] = partial;
    loop {
        let cut = match rest.iter().position(|b| *b == b'\n') {
            Some(i) if i <= MAX_LINE => Some((i, i + 1)),
            _ if rest.len() > MAX_LINE => Some((MAX_LINE, MAX_LINE)),
            _ => None,
        };
        let Some((end, skip)) = cut else { break };
        let line = String::from_utf8_lossy(&rest[..end])
            .trim_end_matches('\r')
            .to_string();
        pos += skip as u64;
        out.push((line, pos));
        rest = &rest[skip..];
    }
    *partial = rest.to_vec();
    *offset = pos;
    Ok(())
}

fn load_offset(path: &Path) -> u64 {
    std::fs::read_to_string(path)
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(0)
}

/// Runs one stream until `stop`.
pub async fn run_stream(spec: StreamSpec, stats: Arc<Stats>, stop: CancellationToken) {
    let mut sent_offset = load_offset(&spec.offset_file);
    let mut read_offset = sent_offset;
    let mut partial = Vec::new();
    let mut buf: VecDeque<(String, u64)> = VecDeque::new();
    let mut unreported_drops = 0u64;
    let mut conn: Option<Conn> = None;
    let mut backoff = Duration::from_secs(1);
    let mut next_try = Instant::now();
    loop {
        let mut fresh = Vec::new();
        if let Err(e) = read_lines(&spec.console, &mut read_offset, &mut partial, &mut fresh) {
            warn!(console = %spec.console.display(), error = %e, "cannot read the console log");
        }
        for l in fresh {
            if buf.len() >= spec.buffer_lines.max(1) {
                buf.pop_front();
                unreported_drops += 1;
                stats.dropped.fetch_add(1, Ordering::Relaxed);
            }
            buf.push_back(l);
        }
        if conn.is_none() && Instant::now() >= next_try && !buf.is_empty() {
            match connect(&spec).await {
                Ok(c) => {
                    conn = Some(c);
                    backoff = Duration::from_secs(1);
                    stats.connects.fetch_add(1, Ordering::Relaxed);
                }
                Err(e) => {
                    warn!(output = ?spec.output, error = %e, retry_in = ?backoff, "zlogs receiver not reachable");
                    next_try = Instant::now() + backoff;
                    backoff = (backoff * 2).min(BACKOFF_MAX);
                }
            }
        }
        if unreported_drops > 0
            && let Some(c) = conn.as_mut()
        {
            let note =
                format!("[zlogs: {unreported_drops} lines dropped: the receiver was away or slow]");
            match send(c, &spec.output, &note).await {
                Ok(()) => unreported_drops = 0,
                Err(_) => conn = None,
            }
        }
        if let Some(c) = conn.as_mut() {
            while let Some((line, end)) = buf.front() {
                match send(c, &spec.output, line).await {
                    Ok(()) => {
                        sent_offset = *end;
                        buf.pop_front();
                        stats.sent.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(e) => {
                        warn!(output = ?spec.output, error = %e, "zlogs receiver went away");
                        conn = None;
                        next_try = Instant::now() + backoff;
                        break;
                    }
                }
                if stop.is_cancelled() {
                    break;
                }
            }
            if load_offset(&spec.offset_file) != sent_offset {
                let _ = zos_runtime::private::write_atomic(
                    &spec.offset_file,
                    sent_offset.to_string().as_bytes(),
                );
            }
        }
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(POLL) => {}
        }
    }
}

struct Running {
    stop: CancellationToken,
    stats: Arc<Stats>,
    spec: StreamSpec,
    task: tokio::task::JoinHandle<()>,
}

/// The `zlogs` manager.
pub struct ZlogsManager<N> {
    net: Arc<N>,
    consoles: Arc<dyn Consoles>,
    state_dir: PathBuf,
    streams: Mutex<HashMap<String, Running>>,
}

impl<N> std::fmt::Debug for ZlogsManager<N> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ZlogsManager")
            .field("state_dir", &self.state_dir)
            .finish_non_exhaustive()
    }
}

impl<N> Drop for ZlogsManager<N> {
    /// The streams end with their manager (a zosd that stops).
    fn drop(&mut self) {
        let s = self.streams.lock().unwrap_or_else(|e| e.into_inner());
        for r in s.values() {
            r.stop.cancel();
        }
    }
}

impl<N: Networker + 'static> ZlogsManager<N> {
    /// A manager keeping each stream's sent offset under `state_dir`.
    pub fn new(net: Arc<N>, consoles: Arc<dyn Consoles>, state_dir: PathBuf) -> Self {
        Self {
            net,
            consoles,
            state_dir,
            streams: Mutex::new(HashMap::new()),
        }
    }

    /// What the stream of workload `id` did so far.
    pub fn stats(&self, id: &WorkloadId) -> Option<Arc<Stats>> {
        let s = self.streams.lock().unwrap_or_else(|e| e.into_inner());
        s.get(&id.to_string()).map(|r| r.stats.clone())
    }

    async fn plan(&self, t: Target<'_>) -> Result<StreamSpec, ManagerError> {
        let WorkloadData::Zlogs(z) = t.data else {
            return Err(ManagerError::Failed(format!(
                "the zlogs manager was given a {} workload",
                t.data.kind()
            )));
        };
        let output =
            Output::parse(&z.output).map_err(|e| ManagerError::Invalid(format!("output: {e}")))?;
        let vm = WorkloadId {
            twin: t.id.twin,
            contract: t.id.contract,
            name: z.zmachine.clone(),
        };
        let console = self.consoles.console_log(&vm).await?.ok_or_else(|| {
            ManagerError::Invalid(format!(
                "zmachine: this deployment has no machine {:?} on this node",
                z.zmachine
            ))
        })?;
        let mut ranges = Vec::new();
        let mut netns = None;
        for name in self.net.machine_networks(&vm).await? {
            let Some(info) = self.net.network_info(t.id.twin, &name).await? else {
                continue;
            };
            if let IpAddr::V4(v4) = output.addr().ip()
                && info.ip_range.contains(&v4)
            {
                netns = Some(info.namespace.clone());
                break;
            }
            ranges.push(format!("{name} {}", info.ip_range));
        }
        let Some(netns) = netns else {
            return Err(ManagerError::Invalid(format!(
                "output: {} is outside the machine's networks ({}): logs go only to a receiver in \
                 the user's own network",
                output.addr().ip(),
                if ranges.is_empty() {
                    "it has none".to_string()
                } else {
                    ranges.join(", ")
                }
            )));
        };
        Ok(StreamSpec {
            console,
            output,
            netns: Some(netns),
            offset_file: self.state_dir.join(format!("{}.offset", t.id)),
            buffer_lines: BUFFER_LINES,
        })
    }

    fn start(&self, id: &WorkloadId, spec: StreamSpec) {
        let mut s = self.streams.lock().unwrap_or_else(|e| e.into_inner());
        let key = id.to_string();
        if let Some(r) = s.get(&key) {
            if r.spec.output == spec.output && r.spec.console == spec.console {
                return;
            }
            r.stop.cancel();
        }
        let stop = CancellationToken::new();
        let stats = Arc::new(Stats::default());
        let task = tokio::spawn(run_stream(spec.clone(), stats.clone(), stop.clone()));
        info!(workload = %id, output = ?spec.output, "zlogs streaming");
        s.insert(
            key,
            Running {
                stop,
                stats,
                spec,
                task,
            },
        );
    }

    /// Ends the stream of `id` and waits for its task (so nothing writes its offset after).
    async fn stop(&self, id: &WorkloadId) {
        let r = {
            let mut s = self.streams.lock().unwrap_or_else(|e| e.into_inner());
            s.remove(&id.to_string())
        };
        if let Some(r) = r {
            r.stop.cancel();
            let _ = tokio::time::timeout(Duration::from_secs(15), r.task).await;
        }
    }
}

impl<N: Networker + 'static> Manager for ZlogsManager<N> {
    fn provision<'a>(
        &'a self,
        t: Target<'a>,
    ) -> BoxFuture<'a, Result<serde_json::Value, ManagerError>> {
        Box::pin(async move {
            let spec = self.plan(t).await?;
            zos_runtime::private::create_dir(&self.state_dir)?;
            self.start(t.id, spec);
            Ok(serde_json::Value::Null)
        })
    }

    fn update<'a>(
        &'a self,
        t: Target<'a>,
    ) -> BoxFuture<'a, Result<serde_json::Value, ManagerError>> {
        Box::pin(async move {
            let spec = self.plan(t).await.map_err(ManagerError::unchanged)?;
            self.start(t.id, spec);
            Ok(serde_json::Value::Null)
        })
    }

    fn deprovision<'a>(&'a self, id: &'a WorkloadId) -> BoxFuture<'a, Result<(), ManagerError>> {
        Box::pin(async move {
            self.stop(id).await;
            match std::fs::remove_file(self.state_dir.join(format!("{id}.offset"))) {
                Ok(()) => Ok(()),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
                Err(e) => Err(e.into()),
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outputs_parse_and_bad_ones_say_why() {
        assert_eq!(
            Output::parse("redis://10.20.2.7:6380/logs").unwrap(),
            Output::Redis {
                addr: "10.20.2.7:6380".parse().unwrap(),
                channel: "logs".into()
            }
        );
        assert_eq!(
            Output::parse("ws://10.20.2.7/x").unwrap().addr(),
            "10.20.2.7:80".parse().unwrap()
        );
        assert!(
            Output::parse("redis://10.20.2.7")
                .unwrap_err()
                .contains("channel")
        );
        assert!(
            Output::parse("ws://logs.example.com/")
                .unwrap_err()
                .contains("must be IP")
        );
        assert!(Output::parse("http://10.1.1.1/").is_err());
    }

    #[test]
    fn lines_are_read_in_order_across_partial_writes_and_a_new_log() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("console.log");
        let (mut off, mut partial, mut out) = (0u64, Vec::new(), Vec::new());
        std::fs::write(&p, "one\r\ntwo\nthr").unwrap();
        read_lines(&p, &mut off, &mut partial, &mut out).unwrap();
        assert_eq!(out, vec![("one".to_string(), 5), ("two".to_string(), 9)]);
        std::fs::write(&p, "one\r\ntwo\nthree\n").unwrap();
        out.clear();
        read_lines(&p, &mut off, &mut partial, &mut out).unwrap();
        assert_eq!(out, vec![("three".to_string(), 15)]);
        // A long line comes in pieces.
        let long = "x".repeat(MAX_LINE + 10);
        std::fs::write(&p, format!("one\r\ntwo\nthree\n{long}\n")).unwrap();
        out.clear();
        read_lines(&p, &mut off, &mut partial, &mut out).unwrap();
        assert_eq!(out.len(), 2);
        assert_eq!(out[0].0.len(), MAX_LINE);
        assert_eq!(out[1].0.len(), 10);
        // A new, shorter log is read from its start.
        std::fs::write(&p, "again\n").unwrap();
        out.clear();
        read_lines(&p, &mut off, &mut partial, &mut out).unwrap();
        assert_eq!(out, vec![("again".to_string(), 6)]);
    }
}
