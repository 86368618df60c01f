//! The node's commands, as they arrive over the relay: parsed into a typed [`Command`] at the
//! edge, then run by one dispatcher.
//!
//! | command | body | answer |
//! |---|---|---|
//! | `zos.deployment.deploy` / `zos.deployment.update` | `Deployment` | `null` once stored and queued |
//! | `zos.deployment.get` / `zos.deployment.changes` | `{"contract_id": N}` | the deployment with results / its result log |
//! | `zos.deployment.list` | – | the sender's deployments |
//! | `zos.statistics.get` | – | total, used and system capacity; deployment and workload counts |
//! | `zos.storage.pools` | – | every pool: name, type, size, used |
//! | `zos.system.version` | – | `{"zos": "<version>"}` |
//! | `zos.system.diagnostics` | – | health of each module |
//! | `zos.network.list_wg_ports` | – | WireGuard listen ports taken on the node |
//! | `zos.network.public_config_get` | – | the node's public config, as the node applied it |
//! | `zos.network.interfaces` | – | the node's interfaces (host and public) with MAC and addresses |
//! | `zos.network.list_private_ips` | `{"network_name": S}` | addresses machines use in the sender's network |
//! | `zos.network.list_public_ips` | – | public IPv4 addresses `ip` workloads use on the node |
//! | `zos.network.wireguard` | `{"network_name": S}` | the sender's network resource: key, port, peers and transfer counters |
//! | `zos.zmachine.console` | `{"contract_id": N, "name": S, "bytes": N?}` | the last bytes (64 KiB by default, 1 MiB at most) of the sender's machine's console log |
//!
//! Only a deployment's own twin sees or changes it.

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
    List,
    Changes(ContractId),
    Statistics,
    Pools,
    Version,
    Diagnostics,
    WgPorts,
    PublicConfig,
    Interfaces,
    PrivateIps(String),
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
const MAX_CONSOLE_BYTES: usize = 1 << 20;

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
        let none = |c: Command| -> Result<Command, ApiError> {
            let empty = raw.iter().all(u8::is_ascii_whitespace) || raw == b"null" || raw == b"{}";
            if empty {
                Ok(c)
            } else {
                Err(ApiError::BadRequest(format!("{command} takes no body")))
            }
        };
        Ok(match command {
            "zos.deployment.deploy" => Command::Deploy(Box::new(body(command, raw)?)),
            "zos.deployment.update" => Command::Update(Box::new(body(command, raw)?)),
            "zos.deployment.get" => Command::Get(body::<ContractArg>(command, raw)?.contract_id),
            "zos.deployment.changes" => {
                Command::Changes(body::<ContractArg>(command, raw)?.contract_id)
            }
            "zos.deployment.list" => none(Command::List)?,
            "zos.statistics.get" => none(Command::Statistics)?,
            "zos.storage.pools" => none(Command::Pools)?,
            "zos.system.version" => none(Command::Version)?,
            "zos.system.diagnostics" => none(Command::Diagnostics)?,
            "zos.network.list_wg_ports" => none(Command::WgPorts)?,
            "zos.network.public_config_get" => none(Command::PublicConfig)?,
            "zos.network.interfaces" => none(Command::Interfaces)?,
            "zos.network.list_public_ips" => none(Command::PublicIps)?,
            "zos.network.list_private_ips" => {
                Command::PrivateIps(body::<NetworkArg>(command, raw)?.network_name)
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
            Command::List => to_json(&self.engine.list(source)?),
            Command::Changes(c) => to_json(&self.engine.changes(source, c)?),
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
            Command::WgPorts => to_json(&self.net.wireguard_ports().await.map_err(net_err)?),
            Command::PublicConfig => match self.net.public_setup().await.map_err(net_err)? {
                Some(p) => to_json(&p.config),
                None => Err(ApiError::NotFound(
                    "this node has no public config: its farmer sets one with `zos node public-config set`"
                        .into(),
                )),
            },
            Command::Interfaces => to_json(&self.net.interfaces().await.map_err(net_err)?),
            Command::PublicIps => to_json(&self.net.public_ips().await.map_err(net_err)?),
            Command::PrivateIps(name) => {
                to_json(&self.net.private_ips(source, &name).await.map_err(net_err)?)
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
            Command::Console(arg) => {
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
                let consoles = self.consoles.as_ref().ok_or_else(|| {
                    ApiError::NotFound("this node runs no virtual machines".into())
                })?;
                let vm = d.workload_id(&w.name).to_string();
                let max = arg.bytes.unwrap_or(64 << 10).min(MAX_CONSOLE_BYTES);
                let text = consoles.tail(&vm, max).await.map_err(ApiError::NotFound)?;
                Ok(json!({ "name": w.name, "console": text }))
            }
        }
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
            Command::List
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
}
