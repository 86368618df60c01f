//! The node's commands, as they arrive over the relay: parsed into a typed [`Command`] at the
//! edge, then run by one dispatcher. The commands, their bodies and their answers are the
//! types of the node protocol, [`zos_types::node_api`] (its `COMMANDS` table is the list): the
//! parser matches their names and reads their body types, and every answer is built as the
//! command's answer type before it is sent.
//!
//! Only a deployment's own twin sees or changes it.
//!
//! Every answer fits in one reply envelope (`MAX_ENVELOPE_BYTES`, which the relay enforces):
//! list commands answer pages, as JSON arrays sorted by the key named above. A page holds the
//! first `limit` items (a default per command when absent, at most [`MAX_PAGE`]) whose key is
//! after `cursor` (from the first when absent), and fewer when the page would outgrow
//! [`ANSWER_BUDGET`] bytes; an empty page is the end. A caller that sends no paging fields
//! gets the first page in the shape it always got. The console answers a bounded tail, and
//! `truncated` says the log holds more; the uplink refuses any answer that still does not fit.

use std::net::Ipv4Addr;
use std::sync::Arc;

use futures::future::BoxFuture;
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;
use tokio::sync::watch;
use zos_types::TwinId;
use zos_types::deployment::{ContractId, Deployment, MAX_DEPLOYMENT_BYTES};
use zos_types::node_api::{
    self as p, ConsoleAnswer, ConsoleBody, Diagnostics, ErrorKind, MemoryUse, Modules,
    NetworkHealth, NodeCommand, NodeError, Page, PoolType, ProvisionHealth, RegistrarHealth,
    Statistics, StorageHealth, UserCounts, VersionAnswer, WireguardAnswer,
};
use zos_types::workload::WorkloadType;

use crate::registrar::RegistrarStatus;
use zos_net::Networker;
use zos_provision::{Engine, EngineError};
use zos_runtime::error_chain;
use zos_storage::{DiskKind, Storage};
use zos_vmm::Vmm;

/// A command the node understands, with its parsed body (the protocol's body types).
#[derive(Debug, Clone, PartialEq)]
pub enum Command {
    Deploy(Box<Deployment>),
    Update(Box<Deployment>),
    Get(ContractId),
    List(Page<ContractId>),
    Changes(ContractId, Page<i64>),
    Statistics,
    Pools,
    Version,
    Diagnostics,
    WgPorts(Page<u16>),
    PublicConfig,
    Interfaces,
    PrivateIps(String, Page<Ipv4Addr>),
    PublicIps,
    Wireguard(String),
    Console(ConsoleBody),
}

/// Most console bytes one request answers.
pub const MAX_CONSOLE_BYTES: usize = 256 << 10;
/// Console bytes answered when the request does not say.
const DEFAULT_CONSOLE_BYTES: usize = 64 << 10;
/// Most JSON bytes of one answer: sealed (base64 grows it by a third) with the envelope's
/// header, it stays under `MAX_ENVELOPE_BYTES`.
pub const ANSWER_BUDGET: usize = 512 << 10;
/// Most items a page holds, whatever `limit` asks.
pub const MAX_PAGE: usize = 10_000;

/// Whether an item with key `k` comes after the page's cursor.
fn after<C: PartialOrd + Copy>(page: &Page<C>, k: C) -> bool {
    page.cursor.is_none_or(|c| k > c)
}

/// A page of `items`, sorted by `key`: at most `limit` (or `default`) items after the cursor,
/// and [`ANSWER_BUDGET`] bytes.
fn page_of<C: PartialOrd + Copy, T: Serialize>(
    page: &Page<C>,
    items: impl IntoIterator<Item = T>,
    key: impl Fn(&T) -> C,
    default: usize,
) -> Vec<T> {
    let mut out = Filler::new(page.limit.unwrap_or(default));
    for item in items.into_iter().filter(|t| after(page, key(t))) {
        if !out.push(item) {
            break;
        }
    }
    out.items
}

/// Collects a page's items while they fit its count and [`ANSWER_BUDGET`].
struct Filler<T> {
    items: Vec<T>,
    bytes: usize,
    limit: usize,
}

impl<T: Serialize> Filler<T> {
    fn new(limit: usize) -> Self {
        Self {
            items: Vec::new(),
            bytes: 2,
            limit: limit.clamp(1, MAX_PAGE),
        }
    }

    /// Takes `v` unless the page is full; `false` when it is (`v` is not taken).
    fn push(&mut self, v: T) -> bool {
        if self.items.len() >= self.limit {
            return false;
        }
        let size = serde_json::to_vec(&v).map(|b| b.len() + 1).unwrap_or(0);
        if !self.items.is_empty() && self.bytes + size > ANSWER_BUDGET {
            return false;
        }
        self.bytes += size;
        self.items.push(v);
        true
    }
}

/// The end of `text` that holds at most `max` bytes and whose JSON string form stays within
/// `budget` bytes, cut at a character boundary; `true` when something was cut.
fn console_tail(text: &str, max: usize, budget: usize) -> (&str, bool) {
    let mut raw = 0;
    let mut json = 2;
    let mut start = text.len();
    for (i, c) in text.char_indices().rev() {
        let escaped = match c {
            '"' | '\\' | '\n' | '\r' | '\t' | '\u{8}' | '\u{c}' => 2,
            c if (c as u32) < 0x20 => 6,
            c => c.len_utf8(),
        };
        if raw + c.len_utf8() > max || json + escaped > budget {
            break;
        }
        raw += c.len_utf8();
        json += escaped;
        start = i;
    }
    (&text[start..], start > 0)
}

/// Console logs of machines, for [`p::Console`] (any [`Vmm`]).
pub trait Consoles: Send + Sync {
    /// The last `max` bytes of the console of VM `vm`.
    fn tail<'a>(&'a self, vm: &'a str, max: usize) -> BoxFuture<'a, Result<String, String>>;
}

impl<V: Vmm + 'static> Consoles for V {
    fn tail<'a>(&'a self, vm: &'a str, max: usize) -> BoxFuture<'a, Result<String, String>> {
        Box::pin(async move { self.console(vm, max).await.map_err(|e| error_chain(&e)) })
    }
}

/// A command the node refuses, with what the sender should do about it.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("unknown command {0:?}")]
    UnknownCommand(String),
    #[error("bad request: {0}")]
    BadRequest(String),
    #[error(transparent)]
    Engine(#[from] EngineError),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Internal(String),
}

impl ApiError {
    /// The protocol's kind of this refusal.
    pub fn kind(&self) -> ErrorKind {
        match self {
            Self::UnknownCommand(_) | Self::BadRequest(_) => ErrorKind::Invalid,
            Self::NotFound(_) => ErrorKind::NotFound,
            Self::Internal(_) => ErrorKind::Internal,
            Self::Engine(e) => e.kind(),
        }
    }
}

/// The one place a refusal becomes a wire error: its kind, and its whole chain of causes as
/// the message.
impl From<ApiError> for NodeError {
    fn from(e: ApiError) -> Self {
        NodeError::new(e.kind(), error_chain(&e))
    }
}

fn net_err(e: zos_net::NetworkError) -> ApiError {
    ApiError::Internal(error_chain(&e))
}

/// The body of command `C`.
fn body<C: NodeCommand>(raw: &[u8]) -> Result<C::Body, ApiError> {
    serde_json::from_slice(raw).map_err(|e| ApiError::BadRequest(format!("{}: {e}", C::NAME)))
}

/// Whether `raw` is no body: nothing, `null` or `{}`.
fn is_empty(raw: &[u8]) -> bool {
    let t = raw.trim_ascii();
    t.is_empty() || t == b"null" || t == b"{}"
}

/// The page of list command `C`: the first with no body.
fn page<C: NodeCommand<Body = Page<K>>, K: DeserializeOwned>(
    raw: &[u8],
) -> Result<Page<K>, ApiError> {
    if is_empty(raw) {
        Ok(Page::default())
    } else {
        body::<C>(raw)
    }
}

/// `cmd`, if `raw` is no body (command `C` takes none).
fn none<C: NodeCommand<Body = ()>>(raw: &[u8], cmd: Command) -> Result<Command, ApiError> {
    if is_empty(raw) {
        Ok(cmd)
    } else {
        Err(ApiError::BadRequest(format!("{} takes no body", C::NAME)))
    }
}

impl Command {
    /// Parses a command and its JSON body; oversize and malformed bodies are refused here.
    pub fn parse(command: &str, raw: &[u8]) -> Result<Self, ApiError> {
        if raw.len() > MAX_DEPLOYMENT_BYTES {
            return Err(ApiError::BadRequest(format!(
                "body of {} bytes is larger than the limit of {MAX_DEPLOYMENT_BYTES}",
                raw.len()
            )));
        }
        Ok(match command {
            p::Deploy::NAME => Command::Deploy(Box::new(body::<p::Deploy>(raw)?)),
            p::Update::NAME => Command::Update(Box::new(body::<p::Update>(raw)?)),
            p::Get::NAME => Command::Get(body::<p::Get>(raw)?.contract_id),
            p::Changes::NAME => {
                let a = body::<p::Changes>(raw)?;
                let page = Page {
                    limit: a.limit,
                    cursor: a.cursor,
                };
                Command::Changes(a.contract_id, page)
            }
            p::List::NAME => Command::List(page::<p::List, _>(raw)?),
            p::GetStatistics::NAME => none::<p::GetStatistics>(raw, Command::Statistics)?,
            p::Pools::NAME => none::<p::Pools>(raw, Command::Pools)?,
            p::Version::NAME => none::<p::Version>(raw, Command::Version)?,
            p::GetDiagnostics::NAME => none::<p::GetDiagnostics>(raw, Command::Diagnostics)?,
            p::WgPorts::NAME => Command::WgPorts(page::<p::WgPorts, _>(raw)?),
            p::PublicConfigGet::NAME => none::<p::PublicConfigGet>(raw, Command::PublicConfig)?,
            p::Interfaces::NAME => none::<p::Interfaces>(raw, Command::Interfaces)?,
            p::PublicIps::NAME => none::<p::PublicIps>(raw, Command::PublicIps)?,
            p::PrivateIps::NAME => {
                let a = body::<p::PrivateIps>(raw)?;
                let page = Page {
                    limit: a.limit,
                    cursor: a.cursor,
                };
                Command::PrivateIps(a.network_name, page)
            }
            p::Wireguard::NAME => Command::Wireguard(body::<p::Wireguard>(raw)?.network_name),
            p::Console::NAME => Command::Console(body::<p::Console>(raw)?),
            other => return Err(ApiError::UnknownCommand(other.to_string())),
        })
    }
}

/// Command `C`'s answer, as JSON.
fn answer<C: NodeCommand>(a: C::Answer) -> Result<Value, ApiError> {
    serde_json::to_value(&a).map_err(|e| ApiError::Internal(format!("{}: {e}", C::NAME)))
}

/// Runs commands against the node's modules.
pub struct NodeApi<S, N> {
    engine: Arc<Engine>,
    storage: Arc<S>,
    net: Arc<N>,
    registrar: watch::Receiver<RegistrarStatus>,
    consoles: Option<Arc<dyn Consoles>>,
}

impl<S, N> std::fmt::Debug for NodeApi<S, N> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NodeApi").finish_non_exhaustive()
    }
}

impl<S: Storage + 'static, N: Networker + 'static> NodeApi<S, N> {
    pub fn new(
        engine: Arc<Engine>,
        storage: Arc<S>,
        net: Arc<N>,
        registrar: watch::Receiver<RegistrarStatus>,
    ) -> Self {
        Self {
            engine,
            storage,
            net,
            registrar,
            consoles: None,
        }
    }

    /// Serves machines' console logs from `consoles`.
    pub fn with_consoles(mut self, consoles: Arc<dyn Consoles>) -> Self {
        self.consoles = Some(consoles);
        self
    }

    /// Parses and runs `command` sent by `source`.
    pub async fn handle(
        &self,
        source: TwinId,
        command: &str,
        raw: &[u8],
    ) -> Result<Value, ApiError> {
        let cmd = Command::parse(command, raw)?;
        self.run(source, cmd).await
    }

    /// Runs `cmd`; its answer is the command's answer type, as JSON.
    pub async fn run(&self, source: TwinId, cmd: Command) -> Result<Value, ApiError> {
        match cmd {
            Command::Deploy(d) => answer::<p::Deploy>(self.engine.deploy(source, *d).await?),
            Command::Update(d) => answer::<p::Update>(self.engine.update(source, *d).await?),
            Command::Get(c) => answer::<p::Get>(self.engine.get(source, c)?),
            Command::List(page) => answer::<p::List>(self.list(source, page)?),
            Command::Changes(c, page) => {
                let log = self.engine.changes(source, c)?;
                answer::<p::Changes>(page_of(&page, log, |e| e.seq, 1000))
            }
            Command::Statistics => answer::<p::GetStatistics>(self.statistics()?),
            Command::Pools => answer::<p::Pools>(self.pools().await?),
            Command::Version => answer::<p::Version>(VersionAnswer {
                zos: crate::version::running().to_string(),
            }),
            Command::Diagnostics => answer::<p::GetDiagnostics>(self.diagnostics().await),
            Command::WgPorts(page) => {
                let mut ports = self.net.wireguard_ports().await.map_err(net_err)?;
                ports.sort_unstable();
                answer::<p::WgPorts>(page_of(&page, ports, |p| *p, 1024))
            }
            Command::PublicConfig => match self.net.public_setup().await.map_err(net_err)? {
                Some(s) => answer::<p::PublicConfigGet>(s.config),
                None => Err(ApiError::NotFound(
                    "this node has no public config: its farmer sets one with `zos node public-config set`"
                        .into(),
                )),
            },
            Command::Interfaces => {
                answer::<p::Interfaces>(self.net.interfaces().await.map_err(net_err)?)
            }
            Command::PublicIps => {
                answer::<p::PublicIps>(self.net.public_ips().await.map_err(net_err)?)
            }
            Command::PrivateIps(name, page) => {
                let mut ips = self.net.private_ips(source, &name).await.map_err(net_err)?;
                ips.sort_unstable();
                answer::<p::PrivateIps>(page_of(&page, ips, |ip| *ip, 1024))
            }
            Command::Wireguard(name) => answer::<p::Wireguard>(self.wireguard(source, name).await?),
            Command::Console(arg) => answer::<p::Console>(self.console(source, arg).await?),
        }
    }

    fn statistics(&self) -> Result<Statistics, ApiError> {
        let cfg = self.engine.config();
        let usage = self.engine.usage()?;
        Ok(Statistics {
            total: cfg.total,
            used: usage.workloads.saturating_add(cfg.reserved),
            system: cfg.reserved,
            users: UserCounts {
                deployments: usage.deployments,
                workloads: usage.workload_count,
            },
        })
    }

    async fn pools(&self) -> Result<Vec<p::Pool>, ApiError> {
        let pools = self
            .storage
            .pools()
            .await
            .map_err(|e| ApiError::Internal(error_chain(&e)))?;
        Ok(pools
            .into_iter()
            .map(|pool| p::Pool {
                name: pool.name,
                kind: match pool.kind {
                    DiskKind::Ssd => PoolType::Ssd,
                    DiskKind::Hdd => PoolType::Hdd,
                },
                size: pool.size,
                used: pool.used,
            })
            .collect())
    }

    async fn diagnostics(&self) -> Diagnostics {
        let reg = self.registrar.borrow().clone();
        let storage_ok = self.storage.pools().await.is_ok();
        let network = self.net.wireguard_ports().await;
        let network_ok = network.is_ok();
        let grid_ok = reg.last_error.is_none() && reg.node_id.is_some();
        let limited = self.engine.config().limited.clone();
        let memory = std::fs::read_to_string("/proc/meminfo")
            .ok()
            .and_then(|m| MemoryUse::from_meminfo(&m));
        Diagnostics {
            memory,
            healthy: storage_ok && grid_ok && network_ok && limited.is_none(),
            modules: Modules {
                storage: StorageHealth {
                    ok: storage_ok,
                    limited,
                },
                registrar: RegistrarHealth {
                    ok: grid_ok,
                    node_id: reg.node_id,
                    twin_id: reg.twin_id,
                    last_report: reg.last_report,
                    error: reg.last_error,
                },
                provision: ProvisionHealth { ok: true },
                network: NetworkHealth {
                    ok: network_ok,
                    error: network.err().map(|e| error_chain(&e)),
                },
            },
        }
    }

    async fn wireguard(&self, source: TwinId, name: String) -> Result<WireguardAnswer, ApiError> {
        let info = self
            .net
            .network_info(source, &name)
            .await
            .map_err(net_err)?
            .ok_or_else(|| {
                ApiError::NotFound(format!("you have no network {name:?} on this node"))
            })?;
        let status = self
            .net
            .wireguard_status(source, &name)
            .await
            .map_err(net_err)?;
        Ok(WireguardAnswer {
            network: info.resource(),
            status,
        })
    }

    /// A page of `source`'s deployments, by contract id; only the page's are read.
    fn list(&self, source: TwinId, page: Page<ContractId>) -> Result<Vec<Deployment>, ApiError> {
        let store = self.engine.store();
        let ids = store.contracts(Some(source)).map_err(EngineError::from)?;
        let mut out = Filler::new(page.limit.unwrap_or(50));
        for c in ids.into_iter().filter(|c| after(&page, *c)) {
            let Some(d) = store.get(c).map_err(EngineError::from)? else {
                continue;
            };
            if !out.push(d) {
                break;
            }
        }
        Ok(out.items)
    }

    /// The bounded tail of a machine's console log (the VMM reads only that tail).
    async fn console(&self, source: TwinId, arg: ConsoleBody) -> Result<ConsoleAnswer, ApiError> {
        let d = self.engine.get(source, arg.contract_id)?;
        let w = d
            .workloads
            .iter()
            .find(|w| w.name == arg.name && w.kind == WorkloadType::Zmachine)
            .ok_or_else(|| {
                ApiError::NotFound(format!(
                    "deployment {} has no zmachine {:?}",
                    arg.contract_id, arg.name
                ))
            })?;
        let consoles = self
            .consoles
            .as_ref()
            .ok_or_else(|| ApiError::NotFound("this node runs no virtual machines".into()))?;
        let vm = d.workload_id(&w.name).to_string();
        let max = arg
            .bytes
            .unwrap_or(DEFAULT_CONSOLE_BYTES)
            .min(MAX_CONSOLE_BYTES);
        // One byte more than asked tells whether the log holds more.
        let text = consoles
            .tail(&vm, max + 1)
            .await
            .map_err(ApiError::NotFound)?;
        let (tail, truncated) = console_tail(&text, max, ANSWER_BUDGET - 1024);
        Ok(ConsoleAnswer {
            name: w.name.clone(),
            console: tail.to_string(),
            truncated,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands_parse_at_the_edge() {
        assert_eq!(
            Command::parse(p::Get::NAME, br#"{"contract_id": 5}"#).unwrap(),
            Command::Get(5)
        );
        assert_eq!(
            Command::parse(p::List::NAME, b"").unwrap(),
            Command::List(Page::default())
        );
        assert_eq!(
            Command::parse(p::List::NAME, br#"{"limit": 2, "cursor": 7}"#).unwrap(),
            Command::List(Page {
                limit: Some(2),
                cursor: Some(7)
            })
        );
        assert!(matches!(
            Command::parse(p::List::NAME, b"[1]"),
            Err(ApiError::BadRequest(_))
        ));
        // A name outside the protocol, on purpose.
        assert!(matches!(
            Command::parse("zos.nope", b""),
            Err(ApiError::UnknownCommand(_))
        ));
        assert!(matches!(
            Command::parse(p::Get::NAME, br#"{"contract_id": -1}"#),
            Err(ApiError::BadRequest(_))
        ));
        assert!(matches!(
            Command::parse(p::Get::NAME, br#"{"contract_id": 1, "x": 2}"#),
            Err(ApiError::BadRequest(_))
        ));
        let huge = vec![b' '; MAX_DEPLOYMENT_BYTES + 1];
        let e = Command::parse(p::Deploy::NAME, &huge).unwrap_err();
        assert!(e.to_string().contains("larger than the limit"), "{e}");
        assert!(matches!(
            Command::parse(p::Deploy::NAME, b"{not json"),
            Err(ApiError::BadRequest(_))
        ));
    }

    #[test]
    fn console_tails_fit_their_bytes_and_their_json() {
        let text = "a\u{1}b\"é";
        assert_eq!(console_tail(text, 100, 100), (text, false));
        // By bytes: "é" is two.
        assert_eq!(console_tail(text, 3, 100), ("\"é", true));
        // By JSON: the control character takes six bytes escaped, the quote two.
        let (t, cut) = console_tail(text, 100, 2 + 6 + 1 + 2 + 2 - 1);
        assert_eq!((t, cut), ("b\"é", true));
        let (t, cut) = console_tail(text, 100, 2 + 6 + 1 + 2 + 2);
        assert_eq!((t, cut), ("\u{1}b\"é", true));
        let json = serde_json::to_string(t).unwrap();
        assert_eq!(json.len(), 2 + 6 + 1 + 2 + 2);
    }

    #[test]
    fn pages_follow_their_cursor_and_their_budget() {
        let page = Page {
            limit: Some(3),
            cursor: Some(2u32),
        };
        let v = page_of(&page, 1..=10u32, |n| *n, 100);
        assert_eq!(v, [3, 4, 5]);
        let v = page_of(&Page::<u32>::default(), 1..=10u32, |n| *n, 4);
        assert_eq!(v, [1, 2, 3, 4]);
        // Big items: the page stops before the budget, but always holds one.
        let big = "x".repeat(ANSWER_BUDGET / 3);
        let items: Vec<(u32, String)> = (0..5).map(|i| (i, big.clone())).collect();
        let v = page_of(&Page::<u32>::default(), items.clone(), |t| t.0, 100);
        assert_eq!(v.len(), 2);
        let huge = vec![(0u32, "x".repeat(ANSWER_BUDGET * 2))];
        let v = page_of(&Page::<u32>::default(), huge, |t| t.0, 100);
        assert_eq!(v.len(), 1);
        // Past the end: an empty page.
        let page = Page {
            limit: None,
            cursor: Some(4u32),
        };
        assert!(page_of(&page, items, |t| t.0, 100).is_empty());
    }

    #[test]
    fn refusals_become_wire_errors_with_their_kind_and_whole_chain() {
        let file = std::io::Error::new(std::io::ErrorKind::PermissionDenied, "denied");
        let store = zos_provision::StoreError::File {
            path: "/var/lib/zos/deployments.db".into(),
            source: file,
        };
        let wire = NodeError::from(ApiError::from(EngineError::from(store)));
        assert_eq!(wire.kind, ErrorKind::Internal);
        assert_eq!(
            wire.message,
            "internal error: deployment store file /var/lib/zos/deployments.db: denied"
        );
        let wire = NodeError::from(ApiError::from(EngineError::from(
            zos_provision::StoreError::NotFound(7),
        )));
        assert_eq!(wire.kind, ErrorKind::NotFound);
        assert_eq!(wire.message, "deployment 7 not found");
        let wire = NodeError::from(ApiError::BadRequest("x".into()));
        assert_eq!(
            (wire.kind, wire.message.as_str()),
            (ErrorKind::Invalid, "bad request: x")
        );
    }
}
