//! The node's commands, as they arrive over the relay: parsed into a typed [`Command`] at the
//! edge, then run by one dispatcher.
//!
//! | command | body | answer |
//! |---|---|---|
//! | `zos.deployment.deploy` / `zos.deployment.update` | `Deployment` | `null` once stored and queued |
//! | `zos.deployment.get` | `{"contract_id": N}` | the deployment with results |
//! | `zos.deployment.changes` | `{"contract_id": N, "limit": N?, "cursor": SEQ?}` | a page of its result log, by `seq` |
//! | `zos.deployment.list` | `{"limit": N?, "cursor": CONTRACT?}` or none | a page of the sender's deployments, by contract id |
//! | `zos.statistics.get` | – | total, used and system capacity; deployment and workload counts |
//! | `zos.storage.pools` | – | every pool: name, type, size, used |
//! | `zos.system.version` | – | `{"zos": "<version>"}` |
//! | `zos.system.diagnostics` | – | health of each module |
//! | `zos.network.list_wg_ports` | `{"limit": N?, "cursor": PORT?}` or none | a page of the WireGuard listen ports taken on the node |
//! | `zos.network.public_config_get` | – | the node's public config, as the node applied it |
//! | `zos.network.interfaces` | – | the node's interfaces (host and public) with MAC and addresses |
//! | `zos.network.list_private_ips` | `{"network_name": S, "limit": N?, "cursor": IP?}` | a page of the addresses machines use in the sender's network |
//! | `zos.network.list_public_ips` | – | public IPv4 addresses `ip` workloads use on the node |
//! | `zos.network.wireguard` | `{"network_name": S}` | the sender's network resource: key, port, peers and transfer counters |
//! | `zos.zmachine.console` | `{"contract_id": N, "name": S, "bytes": N?}` | `{"name", "console", "truncated"}`: the last bytes (64 KiB by default, 256 KiB at most) of the sender's machine's console log |
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

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use tokio::sync::watch;
use zos_types::deployment::{ContractId, Deployment, MAX_DEPLOYMENT_BYTES};
use zos_types::{Capacity, TwinId};

use futures::future::BoxFuture;
use zos_types::workload::WorkloadType;

use crate::network::Networker;
use crate::provision::{Engine, EngineError};
use crate::registrar::{RegistrarStatus, error_chain};
use crate::storage::Storage;
use crate::vmm::Vmm;

/// A command the node understands, with its parsed body.
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
    Console(ConsoleArg),
}

/// Body of `zos.zmachine.console`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConsoleArg {
    pub contract_id: ContractId,
    pub name: String,
    #[serde(default)]
    pub bytes: Option<usize>,
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

/// `limit` and `cursor` of a list command (see the module's header).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Page<C> {
    pub limit: Option<usize>,
    pub cursor: Option<C>,
}

impl<C> Default for Page<C> {
    fn default() -> Self {
        Self {
            limit: None,
            cursor: None,
        }
    }
}

impl<C: PartialOrd + Copy> Page<C> {
    /// Whether an item with key `k` comes after the cursor.
    fn after(&self, k: C) -> bool {
        self.cursor.is_none_or(|c| k > c)
    }

    /// A page of `items`, sorted by `key`, at most `limit` (or `default`) items and
    /// [`ANSWER_BUDGET`] bytes.
    fn of<T: Serialize>(
        &self,
        items: impl IntoIterator<Item = T>,
        key: impl Fn(&T) -> C,
        default: usize,
    ) -> Result<Value, ApiError> {
        let mut out = Filler::new(self.limit.unwrap_or(default));
        for item in items.into_iter().filter(|t| self.after(key(t))) {
            if !out.push(to_json(&item)?) {
                break;
            }
        }
        Ok(out.done())
    }
}

/// Collects a page's items while they fit its count and [`ANSWER_BUDGET`].
struct Filler {
    items: Vec<Value>,
    bytes: usize,
    limit: usize,
}

impl Filler {
    fn new(limit: usize) -> Self {
        Self {
            items: Vec::new(),
            bytes: 2,
            limit: limit.clamp(1, MAX_PAGE),
        }
    }

    /// Takes `v` unless the page is full; `false` when it is (`v` is not taken).
    fn push(&mut self, v: Value) -> bool {
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

    fn done(self) -> Value {
        Value::Array(self.items)
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

/// Console logs of machines, for `zos.zmachine.console` (any [`Vmm`]).
pub trait Consoles: Send + Sync {
    /// The last `max` bytes of the console of VM `vm`.
    fn tail<'a>(&'a self, vm: &'a str, max: usize) -> BoxFuture<'a, Result<String, String>>;
}

impl<V: Vmm + 'static> Consoles for V {
    fn tail<'a>(&'a self, vm: &'a str, max: usize) -> BoxFuture<'a, Result<String, String>> {
        Box::pin(async move { self.console(vm, max).await.map_err(|e| error_chain(&e)) })
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct NetworkArg {
    network_name: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ContractArg {
    contract_id: ContractId,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ChangesArg {
    contract_id: ContractId,
    #[serde(default)]
    limit: Option<usize>,
    #[serde(default)]
    cursor: Option<i64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PrivateIpsArg {
    network_name: String,
    #[serde(default)]
    limit: Option<usize>,
    #[serde(default)]
    cursor: Option<Ipv4Addr>,
}

/// A command the node refuses, with what the sender should do about it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
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

fn net_err(e: crate::network::NetworkError) -> ApiError {
    ApiError::Internal(error_chain(&e))
}

fn body<T: serde::de::DeserializeOwned>(command: &str, raw: &[u8]) -> Result<T, ApiError> {
    serde_json::from_slice(raw).map_err(|e| ApiError::BadRequest(format!("{command}: {e}")))
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
        let empty = raw.iter().all(u8::is_ascii_whitespace) || raw == b"null" || raw == b"{}";
        let none = |c: Command| -> Result<Command, ApiError> {
            if empty {
                Ok(c)
            } else {
                Err(ApiError::BadRequest(format!("{command} takes no body")))
            }
        };
        fn page<C: serde::de::DeserializeOwned>(
            command: &str,
            raw: &[u8],
            empty: bool,
        ) -> Result<Page<C>, ApiError> {
            if empty {
                Ok(Page::default())
            } else {
                body(command, raw)
            }
        }
        Ok(match command {
            "zos.deployment.deploy" => Command::Deploy(Box::new(body(command, raw)?)),
            "zos.deployment.update" => Command::Update(Box::new(body(command, raw)?)),
            "zos.deployment.get" => Command::Get(body::<ContractArg>(command, raw)?.contract_id),
            "zos.deployment.changes" => {
                let a: ChangesArg = body(command, raw)?;
                Command::Changes(
                    a.contract_id,
                    Page {
                        limit: a.limit,
                        cursor: a.cursor,
                    },
                )
            }
            "zos.deployment.list" => Command::List(page(command, raw, empty)?),
            "zos.statistics.get" => none(Command::Statistics)?,
            "zos.storage.pools" => none(Command::Pools)?,
            "zos.system.version" => none(Command::Version)?,
            "zos.system.diagnostics" => none(Command::Diagnostics)?,
            "zos.network.list_wg_ports" => Command::WgPorts(page(command, raw, empty)?),
            "zos.network.public_config_get" => none(Command::PublicConfig)?,
            "zos.network.interfaces" => none(Command::Interfaces)?,
            "zos.network.list_public_ips" => none(Command::PublicIps)?,
            "zos.network.list_private_ips" => {
                let a: PrivateIpsArg = body(command, raw)?;
                Command::PrivateIps(
                    a.network_name,
                    Page {
                        limit: a.limit,
                        cursor: a.cursor,
                    },
                )
            }
            "zos.network.wireguard" => {
                Command::Wireguard(body::<NetworkArg>(command, raw)?.network_name)
            }
            "zos.zmachine.console" => Command::Console(body(command, raw)?),
            other => return Err(ApiError::UnknownCommand(other.to_string())),
        })
    }
}

/// `zos.statistics.get`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Statistics {
    pub total: Capacity,
    /// Workloads plus the system.
    pub used: Capacity,
    pub system: Capacity,
    pub users: UserCounts,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UserCounts {
    pub deployments: u64,
    pub workloads: u64,
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

    pub async fn run(&self, source: TwinId, cmd: Command) -> Result<Value, ApiError> {
        match cmd {
            Command::Deploy(d) => {
                self.engine.deploy(source, *d).await?;
                Ok(Value::Null)
            }
            Command::Update(d) => {
                self.engine.update(source, *d).await?;
                Ok(Value::Null)
            }
            Command::Get(c) => to_json(&self.engine.get(source, c)?),
            Command::List(page) => self.list(source, page),
            Command::Changes(c, page) => page.of(self.engine.changes(source, c)?, |e| e.seq, 1000),
            Command::Statistics => {
                let cfg = self.engine.config();
                let usage = self.engine.usage()?;
                to_json(&Statistics {
                    total: cfg.total,
                    used: usage.workloads.saturating_add(cfg.reserved),
                    system: cfg.reserved,
                    users: UserCounts {
                        deployments: usage.deployments,
                        workloads: usage.workload_count,
                    },
                })
            }
            Command::Pools => {
                let pools = self
                    .storage
                    .pools()
                    .await
                    .map_err(|e| ApiError::Internal(error_chain(&e)))?;
                let out: Vec<Value> = pools
                    .iter()
                    .map(
                        |p| json!({"name": p.name, "type": p.kind, "size": p.size, "used": p.used}),
                    )
                    .collect();
                Ok(Value::Array(out))
            }
            Command::Version => Ok(json!({ "zos": crate::agent::VERSION })),
            Command::Diagnostics => {
                let reg = self.registrar.borrow().clone();
                let storage_ok = self.storage.pools().await.is_ok();
                let network = self.net.wireguard_ports().await;
                let network_ok = network.is_ok();
                let grid_ok = reg.last_error.is_none() && reg.node_id.is_some();
                let limited = self.engine.config().limited.clone();
                Ok(json!({
                    "healthy": storage_ok && grid_ok && network_ok && limited.is_none(),
                    "modules": {
                        "storage": {"ok": storage_ok, "limited": limited},
                        "registrar": {"ok": grid_ok, "node_id": reg.node_id, "twin_id": reg.twin_id,
                                      "last_report": reg.last_report, "error": reg.last_error},
                        "provision": {"ok": true},
                        "network": {"ok": network_ok, "error": network.err().map(|e| error_chain(&e))},
                    }
                }))
            }
            Command::WgPorts(page) => {
                let mut ports = self.net.wireguard_ports().await.map_err(net_err)?;
                ports.sort_unstable();
                page.of(ports, |p| *p, 1024)
            }
            Command::PublicConfig => match self.net.public_setup().await.map_err(net_err)? {
                Some(p) => to_json(&p.config),
                None => Err(ApiError::NotFound(
                    "this node has no public config: its farmer sets one with `zos node public-config set`"
                        .into(),
                )),
            },
            Command::Interfaces => to_json(&self.net.interfaces().await.map_err(net_err)?),
            Command::PublicIps => to_json(&self.net.public_ips().await.map_err(net_err)?),
            Command::PrivateIps(name, page) => {
                let mut ips = self.net.private_ips(source, &name).await.map_err(net_err)?;
                ips.sort_unstable();
                page.of(ips, |ip| *ip, 1024)
            }
            Command::Wireguard(name) => {
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
                Ok(json!({"network": info, "status": status}))
            }
            Command::Console(arg) => self.console(source, arg).await,
        }
    }

    /// A page of `source`'s deployments, by contract id; only the page's are read.
    fn list(&self, source: TwinId, page: Page<ContractId>) -> Result<Value, ApiError> {
        let store = self.engine.store();
        let ids = store.contracts(Some(source)).map_err(EngineError::from)?;
        let mut out = Filler::new(page.limit.unwrap_or(50));
        for c in ids.into_iter().filter(|c| page.after(*c)) {
            let Some(d) = store.get(c).map_err(EngineError::from)? else {
                continue;
            };
            if !out.push(to_json(&d)?) {
                break;
            }
        }
        Ok(out.done())
    }

    /// The bounded tail of a machine's console log (the VMM reads only that tail).
    async fn console(&self, source: TwinId, arg: ConsoleArg) -> Result<Value, ApiError> {
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
        Ok(json!({ "name": w.name, "console": tail, "truncated": truncated }))
    }
}

/// Any answer as JSON.
fn to_json<T: Serialize>(v: &T) -> Result<Value, ApiError> {
    serde_json::to_value(v).map_err(|e| ApiError::Internal(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands_parse_at_the_edge() {
        assert_eq!(
            Command::parse("zos.deployment.get", br#"{"contract_id": 5}"#).unwrap(),
            Command::Get(5)
        );
        assert_eq!(
            Command::parse("zos.deployment.list", b"").unwrap(),
            Command::List(Page::default())
        );
        assert_eq!(
            Command::parse("zos.deployment.list", br#"{"limit": 2, "cursor": 7}"#).unwrap(),
            Command::List(Page {
                limit: Some(2),
                cursor: Some(7)
            })
        );
        assert!(matches!(
            Command::parse("zos.deployment.list", b"[1]"),
            Err(ApiError::BadRequest(_))
        ));
        assert!(matches!(
            Command::parse("zos.nope", b""),
            Err(ApiError::UnknownCommand(_))
        ));
        assert!(matches!(
            Command::parse("zos.deployment.get", br#"{"contract_id": -1}"#),
            Err(ApiError::BadRequest(_))
        ));
        assert!(matches!(
            Command::parse("zos.deployment.get", br#"{"contract_id": 1, "x": 2}"#),
            Err(ApiError::BadRequest(_))
        ));
        let huge = vec![b' '; MAX_DEPLOYMENT_BYTES + 1];
        let e = Command::parse("zos.deployment.deploy", &huge).unwrap_err();
        assert!(e.to_string().contains("larger than the limit"), "{e}");
        assert!(matches!(
            Command::parse("zos.deployment.deploy", b"{not json"),
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
        let v = page.of(1..=10u32, |n| *n, 100).unwrap();
        assert_eq!(v, json!([3, 4, 5]));
        let v = Page::<u32>::default().of(1..=10u32, |n| *n, 4).unwrap();
        assert_eq!(v, json!([1, 2, 3, 4]));
        // Big items: the page stops before the budget, but always holds one.
        let big = "x".repeat(ANSWER_BUDGET / 3);
        let items: Vec<(u32, String)> = (0..5).map(|i| (i, big.clone())).collect();
        let v = Page::<u32>::default()
            .of(items.clone(), |t| t.0, 100)
            .unwrap();
        assert_eq!(v.as_array().unwrap().len(), 2);
        let huge = vec![(0u32, "x".repeat(ANSWER_BUDGET * 2))];
        let v = Page::<u32>::default().of(huge, |t| t.0, 100).unwrap();
        assert_eq!(v.as_array().unwrap().len(), 1);
        // Past the end: an empty page.
        let page = Page {
            limit: None,
            cursor: Some(4u32),
        };
        assert_eq!(page.of(items, |t| t.0, 100).unwrap(), json!([]));
    }
}
