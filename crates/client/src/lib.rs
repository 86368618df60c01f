//! Typed client of the zos grid registry API (`/api/v1`).
//!
//! ```no_run
//! # async fn demo() -> Result<(), zos_client::ClientError> {
//! use zos_client::GridClient;
//! use zos_types::Identity;
//!
//! let me = Identity::generate().expect("randomness");
//! let grid = GridClient::new("http://127.0.0.1:8080")?.with_identity(me);
//! let twin = grid.create_twin(None).await?;
//! let grid = grid.with_twin(twin.id);
//! let farm = grid.create_farm("my-farm").await?;
//! # let _ = farm; Ok(()) }
//! ```
//!
//! Every call that changes state is signed with [`zos_types::auth::RequestAuth`] over the exact
//! method, path, query and body that go on the wire, with the current Unix time. The registry
//! accepts a signed request once, and ed25519 signatures are deterministic, so two identical
//! calls made within the same second would carry the same signature. The client therefore stamps
//! a repeat of an identical request with the second after the one it last used (still well inside
//! the registry's window), so that both are accepted.
//!
//! Commands to nodes, through the relay, go through [`GridClient::node`], a [`NodeClient`] typed
//! by the node protocol ([`zos_types::node_api`]).
//!
//! The user workflows built on these calls (deploy and follow, update, cancel, private networks
//! across nodes) are in [`workflow`]; they report progress through callbacks and never print.

pub mod bootloader;
pub mod keyfile;
mod node;
pub mod release;
pub mod rollout;
pub mod uplink;
pub mod workflow;

pub use node::NodeClient;

use std::collections::HashMap;
use std::hash::{DefaultHasher, Hash, Hasher};
use std::net::Ipv4Addr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use reqwest::{Method, StatusCode, Url};
use serde::Serialize;
use serde::de::DeserializeOwned;
use zos_types::auth::{self, RequestAuth, Signer};
use zos_types::billing::{
    Account, AccountEvent, Bill, BillingInfo, ConsumptionRecorded, ConsumptionReport, Deposit,
    FarmEarnings, PolicyVersion, PricingPolicy,
};
use zos_types::contract::{
    Contract, ContractFilter, ContractState, CreateNameContract, CreateNodeContract,
    CreateRentContract, NodeEventRecord, SetGrace, UpdateNodeContract,
};
use zos_types::deployment::ContractId;
use zos_types::envelope::{Envelope, Reply, Seal};
use zos_types::proposal::{
    CreateProposal, Proposal, ProposalFilter, ProposalId, RejectProposal, SignProposal,
};
use zos_types::registry::{
    API_PREFIX, AddFarmIp, CreateFarm, CreateTwin, Farm, FarmIp, FarmPolicy, Health, Node,
    NodeFilter, NodeRegistration, PublicConfig, Twin, UptimeReport,
};
use zos_types::{FarmId, Identity, NodeId, PublicKey, TwinId};

/// How long the client waits for a TCP connection.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// How long the client waits for a whole request.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(90);
/// How long an idle kept-alive connection stays in the pool. The grid closes connections idle
/// for its header timeout (10 s by default); dropping ours well before means a request is never
/// written on a connection the grid is closing at that moment.
pub const POOL_IDLE_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a relay call's envelope lives.
pub const CALL_TTL_SECS: i64 = 60;

/// What can go wrong with a call to the grid.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The grid answered with an error status and (usually) an [`ApiError`] body.
    #[error("grid answered {status}: {message}")]
    Api { status: u16, message: String },
    /// The request did not get an answer: connection refused, timeout, reset.
    #[error("request to {url} failed")]
    Transport {
        url: String,
        #[source]
        source: reqwest::Error,
    },
    /// The grid answered success with a body this client does not understand.
    #[error("cannot decode the answer of {url}")]
    Decode {
        url: String,
        #[source]
        source: DecodeError,
    },
    /// The base URL or a route built from it is not a valid URL.
    #[error("invalid grid URL {0:?}")]
    Url(String),
    /// A signed call was made on a client without an identity.
    #[error("this call must be signed: give the client an identity with with_identity")]
    NoIdentity,
    /// The destination of a relay call refused the request: the kind of refusal and its reason.
    #[error("{0}")]
    Remote(zos_types::node_api::NodeError),
    /// A node answered a command with something that is not the command's answer type.
    #[error("node answered {command} with an answer this zos does not understand")]
    Answer {
        command: &'static str,
        #[source]
        source: serde_json::Error,
    },
    /// The relay did not carry a call to twin `twin`: offline (404), no answer in time (504),
    /// busy (503), or the envelope was refused (400, 401, 409, 413).
    #[error("{}", relay_text(*twin, *status, message))]
    Relay {
        twin: TwinId,
        status: u16,
        message: String,
    },
    /// A relay envelope could not be made, checked or opened.
    #[error("envelope")]
    Envelope(#[source] zos_types::envelope::EnvelopeError),
    /// The uplink WebSocket failed.
    #[error("uplink to {url}")]
    Uplink {
        url: String,
        #[source]
        source: Box<tokio_tungstenite::tungstenite::Error>,
    },
    /// A call signed by a twin was made on a client without a twin id.
    #[error("this call must be signed by a twin: give the client its twin id with with_twin")]
    NoTwin,
}

fn relay_text(twin: TwinId, status: u16, message: &str) -> String {
    match status {
        404 => format!("twin {twin} is not connected to the relay (node offline?)"),
        504 => format!("twin {twin} did not answer in time"),
        503 => format!("the relay cannot carry the call to twin {twin} now: {message}"),
        _ => format!("the relay refused the call to twin {twin} ({status}): {message}"),
    }
}

/// Why an answer could not be decoded.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    #[error("reading the body failed")]
    Body(#[source] reqwest::Error),
    #[error("the body is not the expected JSON")]
    Json(#[source] serde_json::Error),
}

impl ClientError {
    /// The HTTP status of an API or relay error.
    pub fn status(&self) -> Option<u16> {
        match self {
            ClientError::Api { status, .. } | ClientError::Relay { status, .. } => Some(*status),
            _ => None,
        }
    }

    /// True when the registry answered 404 (the object does not exist).
    pub fn is_not_found(&self) -> bool {
        matches!(self, ClientError::Api { status: 404, .. })
    }

    /// True when a relay call failed because its destination has no uplink.
    /// The kind of a node's refusal ([`ClientError::Remote`]), `None` for any other error.
    pub fn node_error(&self) -> Option<zos_types::node_api::ErrorKind> {
        match self {
            ClientError::Remote(e) => Some(e.kind),
            _ => None,
        }
    }

    pub fn is_offline(&self) -> bool {
        matches!(self, ClientError::Relay { status: 404, .. })
    }

    /// True for failures worth retrying later: no answer at all, a 5xx (or 429) answer, or a
    /// relay call to a node that is offline or did not answer. Other 4xx answers are final:
    /// the same request will be refused again.
    pub fn is_transient(&self) -> bool {
        match self {
            ClientError::Transport { .. } => true,
            ClientError::Api { status, .. } => *status >= 500 || *status == 429,
            ClientError::Relay { status, .. } => *status >= 500 || *status == 404,
            _ => false,
        }
    }
}

/// A client of one grid registry, optionally acting as one twin.
///
/// Cheap to clone: clones share one connection pool.
#[derive(Debug, Clone)]
pub struct GridClient {
    base: Url,
    http: reqwest::Client,
    identity: Option<Arc<Identity>>,
    twin: Option<TwinId>,
    stamps: Arc<Stamps>,
    /// Twins' public keys, which never change once registered.
    keys: Arc<Mutex<HashMap<TwinId, PublicKey>>>,
    /// Where signatures' timestamps come from (the system clock when `None`).
    clock: Option<ClockFn>,
}

/// A source of Unix time for signatures (tests sign with the grid's settable clock).
#[derive(Clone)]
pub struct ClockFn(pub Arc<dyn Fn() -> i64 + Send + Sync>);

impl std::fmt::Debug for ClockFn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ClockFn")
    }
}

/// The timestamps this client (and its clones) last used for each distinct signed request.
#[derive(Debug, Default)]
struct Stamps(Mutex<HashMap<u64, i64>>);

impl Stamps {
    /// The timestamp for the request whose identity is `key`: now, or one second after the
    /// timestamp an identical request last used if that is not in the past.
    fn next(&self, key: u64, now: i64) -> i64 {
        let mut last = self.0.lock().unwrap_or_else(|e| e.into_inner());
        // Stamps in the past can no longer collide with a new one.
        last.retain(|_, ts| *ts >= now);
        let ts = match last.get(&key) {
            Some(&prev) => prev + 1,
            None => now,
        };
        last.insert(key, ts);
        ts
    }
}

impl GridClient {
    /// A client of the registry at `base_url` (for example `http://127.0.0.1:8080`), with the
    /// default timeouts ([`CONNECT_TIMEOUT`], [`REQUEST_TIMEOUT`]).
    pub fn new(base_url: &str) -> Result<Self, ClientError> {
        let mut base = Url::parse(base_url).map_err(|_| ClientError::Url(base_url.into()))?;
        if base.cannot_be_a_base() || !matches!(base.scheme(), "http" | "https") {
            return Err(ClientError::Url(base_url.into()));
        }
        base.set_query(None);
        base.set_fragment(None);
        let http = reqwest::Client::builder()
            .connect_timeout(CONNECT_TIMEOUT)
            .timeout(REQUEST_TIMEOUT)
            .pool_idle_timeout(POOL_IDLE_TIMEOUT)
            .user_agent(concat!("zos-client/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|source| ClientError::Transport {
                url: base_url.into(),
                source,
            })?;
        Ok(Self {
            base,
            http,
            identity: None,
            twin: None,
            stamps: Arc::default(),
            keys: Arc::default(),
            clock: None,
        })
    }

    /// The same client, signing with `identity`.
    pub fn with_identity(mut self, identity: Identity) -> Self {
        self.identity = Some(Arc::new(identity));
        self
    }

    /// The same client, stamping signatures with the time `clock` reads instead of the system
    /// clock (for a grid whose clock is not the system's, as in tests).
    pub fn with_clock(mut self, clock: ClockFn) -> Self {
        self.clock = Some(clock);
        self
    }

    /// The same client, acting as twin `twin` (whose key must be the identity's).
    pub fn with_twin(mut self, twin: TwinId) -> Self {
        self.twin = Some(twin);
        self
    }

    /// The base URL of the registry.
    pub fn base_url(&self) -> &Url {
        &self.base
    }

    /// The twin this client acts as, if set.
    pub fn twin_id(&self) -> Option<TwinId> {
        self.twin
    }

    /// The identity this client signs with, if set.
    pub fn identity(&self) -> Option<&Identity> {
        self.identity.as_deref()
    }

    // ---- twins ----

    /// Registers the client's identity as a new twin (signed by the key itself).
    pub async fn create_twin(&self, relay: Option<String>) -> Result<Twin, ClientError> {
        let identity = self.identity.as_ref().ok_or(ClientError::NoIdentity)?;
        let body = CreateTwin {
            public_key: identity.public_key(),
            relay,
        };
        let signer = Signer::Key(identity.public_key());
        let (_, twin) = self
            .send(Method::POST, "/twins", &[], Some(&body), Some(signer))
            .await?;
        Ok(twin)
    }

    pub async fn get_twin(&self, id: TwinId) -> Result<Twin, ClientError> {
        self.get(&format!("/twins/{id}"), &[]).await
    }

    /// The twin of public key `key`, or `None` when no twin has it.
    pub async fn twin_by_key(&self, key: &PublicKey) -> Result<Option<Twin>, ClientError> {
        let key = key.to_string();
        not_found_to_none(self.get("/twins", &[("public_key", key.as_str())]).await)
    }

    // ---- farms ----

    /// Creates a farm whose farmer is the client's twin.
    pub async fn create_farm(&self, name: &str) -> Result<Farm, ClientError> {
        let body = CreateFarm { name: name.into() };
        self.signed(Method::POST, "/farms", &body).await
    }

    pub async fn get_farm(&self, id: FarmId) -> Result<Farm, ClientError> {
        self.get(&format!("/farms/{id}"), &[]).await
    }

    /// The farm named `name` (names compare without regard to case), or `None`.
    pub async fn farm_by_name(&self, name: &str) -> Result<Option<Farm>, ClientError> {
        let farms: Vec<Farm> = self.get("/farms", &[("name", name)]).await?;
        Ok(farms.into_iter().next())
    }

    pub async fn list_farms(&self) -> Result<Vec<Farm>, ClientError> {
        self.get("/farms", &[]).await
    }

    /// Adds a public IPv4 address to the pool of `farm` (the client must be its farmer).
    pub async fn add_farm_ip(&self, farm: FarmId, ip: &AddFarmIp) -> Result<Farm, ClientError> {
        self.signed(Method::POST, &format!("/farms/{farm}/ips"), ip)
            .await
    }

    /// Sets the policy of `farm` (the client must be its farmer).
    pub async fn set_farm_policy(
        &self,
        farm: FarmId,
        policy: &FarmPolicy,
    ) -> Result<Farm, ClientError> {
        self.signed(Method::PUT, &format!("/farms/{farm}/policy"), policy)
            .await
    }

    /// Removes an address from the pool of `farm` (the client must be its farmer).
    pub async fn remove_farm_ip(&self, farm: FarmId, ip: Ipv4Addr) -> Result<Farm, ClientError> {
        let signer = Signer::Twin(self.twin.ok_or(ClientError::NoTwin)?);
        let (_, farm) = self
            .send::<(), _>(
                Method::DELETE,
                &format!("/farms/{farm}/ips/{ip}"),
                &[],
                None,
                Some(signer),
            )
            .await?;
        Ok(farm)
    }

    pub async fn list_farm_ips(&self, farm: FarmId) -> Result<Vec<FarmIp>, ClientError> {
        self.get(&format!("/farms/{farm}/ips"), &[]).await
    }

    // ---- nodes ----

    /// Registers the client's twin as a node, or updates its registration. Returns the node and
    /// whether it was created (`true`, 201) or updated (`false`, 200).
    pub async fn register_node(
        &self,
        registration: &NodeRegistration,
    ) -> Result<(Node, bool), ClientError> {
        let signer = Signer::Twin(self.twin.ok_or(ClientError::NoTwin)?);
        let (status, node) = self
            .send(
                Method::POST,
                "/nodes",
                &[],
                Some(registration),
                Some(signer),
            )
            .await?;
        Ok((node, status == StatusCode::CREATED))
    }

    /// Sets the public network configuration of `node` (the client must be its farmer).
    pub async fn set_public_config(
        &self,
        node: NodeId,
        config: &PublicConfig,
    ) -> Result<Node, ClientError> {
        self.signed(Method::PUT, &format!("/nodes/{node}/public-config"), config)
            .await
    }

    /// Reports the uptime of `node` (the client must be the node's twin).
    pub async fn report_uptime(
        &self,
        node: NodeId,
        report: &UptimeReport,
    ) -> Result<Node, ClientError> {
        self.signed(Method::POST, &format!("/nodes/{node}/uptime"), report)
            .await
    }

    /// Nodes that pass `filter`, ordered by id.
    pub async fn list_nodes(&self, filter: &NodeFilter) -> Result<Vec<Node>, ClientError> {
        let query = serde_json::to_value(filter).expect("a node filter serializes");
        let pairs: Vec<(String, String)> = query
            .as_object()
            .into_iter()
            .flatten()
            .map(|(k, v)| {
                let v = match v {
                    serde_json::Value::String(s) => s.clone(),
                    other => other.to_string(),
                };
                (k.clone(), v)
            })
            .collect();
        let pairs: Vec<(&str, &str)> = pairs
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        self.get("/nodes", &pairs).await
    }

    pub async fn get_node(&self, id: NodeId) -> Result<Node, ClientError> {
        self.get(&format!("/nodes/{id}"), &[]).await
    }

    /// The uptime reports of node `id` the registry keeps, received at `since` or later.
    pub async fn node_uptime(
        &self,
        id: NodeId,
        since: Option<i64>,
    ) -> Result<Vec<zos_types::registry::UptimePoint>, ClientError> {
        let since = since.map(|s| s.to_string());
        let query: Vec<(&str, &str)> = since.iter().map(|s| ("since", s.as_str())).collect();
        self.get(&format!("/nodes/{id}/uptime"), &query).await
    }

    /// The grid's totals now.
    pub async fn stats(&self) -> Result<zos_types::registry::GridStats, ClientError> {
        self.get("/stats", &[]).await
    }

    /// The sampled history of the grid's totals, from `since` on.
    pub async fn stats_history(
        &self,
        since: Option<i64>,
    ) -> Result<Vec<zos_types::registry::GridStats>, ClientError> {
        let since = since.map(|s| s.to_string());
        let query: Vec<(&str, &str)> = since.iter().map(|s| ("since", s.as_str())).collect();
        self.get("/stats/history", &query).await
    }

    // ---- contracts ----

    pub async fn create_node_contract(
        &self,
        c: &CreateNodeContract,
    ) -> Result<Contract, ClientError> {
        self.signed(Method::POST, "/contracts/node", c).await
    }

    pub async fn create_name_contract(&self, name: &str) -> Result<Contract, ClientError> {
        self.signed(
            Method::POST,
            "/contracts/name",
            &CreateNameContract { name: name.into() },
        )
        .await
    }

    pub async fn create_rent_contract(&self, node: NodeId) -> Result<Contract, ClientError> {
        self.signed(
            Method::POST,
            "/contracts/rent",
            &CreateRentContract { node_id: node },
        )
        .await
    }

    pub async fn get_contract(&self, id: ContractId) -> Result<Contract, ClientError> {
        self.get(&format!("/contracts/{id}"), &[]).await
    }

    pub async fn list_contracts(&self, f: &ContractFilter) -> Result<Vec<Contract>, ClientError> {
        let twin = f.twin_id.map(|v| v.to_string());
        let node = f.node_id.map(|v| v.to_string());
        let state = f.state.map(|s| match s {
            ContractState::Created => "created",
            ContractState::GracePeriod => "grace_period",
            ContractState::Deleted => "deleted",
        });
        let mut q: Vec<(&str, &str)> = Vec::new();
        if let Some(t) = &twin {
            q.push(("twin_id", t));
        }
        if let Some(n) = &node {
            q.push(("node_id", n));
        }
        if let Some(s) = state {
            q.push(("state", s));
        }
        self.get("/contracts", &q).await
    }

    pub async fn update_node_contract(
        &self,
        id: ContractId,
        u: &UpdateNodeContract,
    ) -> Result<Contract, ClientError> {
        self.signed(Method::PUT, &format!("/contracts/{id}"), u)
            .await
    }

    pub async fn cancel_contract(&self, id: ContractId) -> Result<Contract, ClientError> {
        let signer = Signer::Twin(self.twin.ok_or(ClientError::NoTwin)?);
        let (_, c) = self
            .send::<(), _>(
                Method::DELETE,
                &format!("/contracts/{id}"),
                &[],
                None,
                Some(signer),
            )
            .await?;
        Ok(c)
    }

    /// How the grid bills: its pricing policy, period, grace length and faucet.
    pub async fn billing_info(&self) -> Result<BillingInfo, ClientError> {
        self.get("/billing", &[]).await
    }

    /// Sets a new version of the pricing policy; only the grid's admin twin may.
    pub async fn set_pricing_policy(
        &self,
        policy: &PricingPolicy,
    ) -> Result<PolicyVersion, ClientError> {
        self.signed(Method::PUT, "/billing/policy", policy).await
    }

    /// `twin`'s account (signed by it or by the admin).
    pub async fn account(&self, twin: TwinId) -> Result<Account, ClientError> {
        self.signed_get(&format!("/accounts/{twin}"), &[]).await
    }

    /// Deposits to `twin`: the admin (or a payment bridge signing as it) to anyone, any twin
    /// to itself on a devnet with a faucet.
    pub async fn deposit(&self, twin: TwinId, deposit: &Deposit) -> Result<Account, ClientError> {
        self.signed(Method::POST, &format!("/accounts/{twin}/deposit"), deposit)
            .await
    }

    /// At most `limit` events of `twin`'s account, newest first.
    pub async fn account_history(
        &self,
        twin: TwinId,
        limit: u32,
    ) -> Result<Vec<AccountEvent>, ClientError> {
        let limit = limit.to_string();
        self.signed_get(&format!("/accounts/{twin}/history"), &[("limit", &limit)])
            .await
    }

    /// At most `limit` bills of contract `id`, newest first.
    pub async fn contract_bills(
        &self,
        id: ContractId,
        limit: u32,
    ) -> Result<Vec<Bill>, ClientError> {
        let limit = limit.to_string();
        self.signed_get(&format!("/contracts/{id}/bills"), &[("limit", &limit)])
            .await
    }

    /// What farm `id` earned (signed by its twin or the admin).
    pub async fn farm_earnings(&self, id: FarmId) -> Result<FarmEarnings, ClientError> {
        self.signed_get(&format!("/farms/{id}/earnings"), &[]).await
    }

    /// Reports what `node`'s contracts used (signed by the node's twin).
    pub async fn report_consumption(
        &self,
        node: NodeId,
        reports: &[ConsumptionReport],
    ) -> Result<ConsumptionRecorded, ClientError> {
        self.signed(
            Method::POST,
            &format!("/nodes/{node}/consumption"),
            &reports,
        )
        .await
    }

    /// Starts (`true`) or ends a contract's grace period; only the grid's admin twin may.
    pub async fn set_grace(&self, id: ContractId, grace: bool) -> Result<Contract, ClientError> {
        self.signed(
            Method::POST,
            &format!("/contracts/{id}/grace"),
            &SetGrace { grace },
        )
        .await
    }

    /// Events of `node` after sequence number `after` (signed by the node's own twin).
    pub async fn node_events(
        &self,
        node: NodeId,
        after: u64,
    ) -> Result<Vec<NodeEventRecord>, ClientError> {
        let signer = Signer::Twin(self.twin.ok_or(ClientError::NoTwin)?);
        let after = after.to_string();
        let (_, events) = self
            .send::<(), _>(
                Method::GET,
                &format!("/nodes/{node}/events"),
                &[("after", &after)],
                None,
                Some(signer),
            )
            .await?;
        Ok(events)
    }

    // ---- proposals ----

    /// Makes a proposal (signed by this twin, whose signature `p` carries).
    pub async fn create_proposal(&self, p: &CreateProposal) -> Result<Proposal, ClientError> {
        self.signed(Method::POST, "/proposals", p).await
    }

    /// The proposals this twin made or is named in, newest first.
    pub async fn list_proposals(&self, f: &ProposalFilter) -> Result<Vec<Proposal>, ClientError> {
        let signer = Signer::Twin(self.twin.ok_or(ClientError::NoTwin)?);
        let contract = f.contract_id.map(|c| c.to_string());
        let mut q: Vec<(&str, &str)> = Vec::new();
        if let Some(s) = f.state {
            q.push(("state", s.as_str()));
        }
        if let Some(c) = &contract {
            q.push(("contract_id", c));
        }
        let (_, list) = self
            .send::<(), _>(Method::GET, "/proposals", &q, None, Some(signer))
            .await?;
        Ok(list)
    }

    /// Proposal `id` (this twin must be named in it).
    pub async fn get_proposal(&self, id: ProposalId) -> Result<Proposal, ClientError> {
        let signer = Signer::Twin(self.twin.ok_or(ClientError::NoTwin)?);
        let (_, p) = self
            .send::<(), _>(
                Method::GET,
                &format!("/proposals/{id}"),
                &[],
                None,
                Some(signer),
            )
            .await?;
        Ok(p)
    }

    /// Signs proposal `id`: `p` must be the proposal as the grid has it (its message is what
    /// this twin signs).
    pub async fn sign_proposal(&self, p: &Proposal) -> Result<Proposal, ClientError> {
        let identity = self.identity.as_ref().ok_or(ClientError::NoIdentity)?;
        let body = SignProposal {
            signature: identity.sign(&p.message()),
        };
        self.signed(Method::POST, &format!("/proposals/{}/sign", p.id), &body)
            .await
    }

    /// Rejects proposal `id`, with a reason for the others.
    pub async fn reject_proposal(
        &self,
        id: ProposalId,
        reason: &str,
    ) -> Result<Proposal, ClientError> {
        let body = RejectProposal {
            reason: reason.into(),
        };
        self.signed(Method::POST, &format!("/proposals/{id}/reject"), &body)
            .await
    }

    // ---- relay ----

    /// Sends a sealed envelope through the relay and answers the reply envelope, as it came
    /// (unchecked: [`GridClient::call`] checks and opens it). A refusal by the relay is
    /// [`ClientError::Relay`] with its status (see [`zos_types::relay`]).
    pub async fn relay_send(&self, envelope: &Envelope) -> Result<Envelope, ClientError> {
        let sent = self
            .send::<Envelope, Envelope>(Method::POST, "/relay/send", &[], Some(envelope), None)
            .await;
        match sent {
            Ok((_, reply)) => Ok(reply),
            Err(ClientError::Api { status, message }) => Err(ClientError::Relay {
                twin: envelope.destination,
                status,
                message,
            }),
            Err(e) => Err(e),
        }
    }

    /// The public key of twin `id`, remembered after the first lookup.
    pub async fn twin_key(&self, id: TwinId) -> Result<PublicKey, ClientError> {
        if let Some(k) = self.keys.lock().unwrap_or_else(|e| e.into_inner()).get(&id) {
            return Ok(*k);
        }
        let key = self.get_twin(id).await?.public_key;
        self.keys
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(id, key);
        Ok(key)
    }

    /// Calls `command` on twin `dest` with `body`, untyped: for commands outside the node
    /// protocol (tests of the relay with echo peers); node commands go through
    /// [`GridClient::node`]. Calls `command` on twin `dest` with `body`: seals it to the destination (its key
    /// is looked up once and remembered), sends it through the relay, checks that the reply
    /// answers this request and is signed by `dest`, and opens it. A refusal by the destination
    /// is [`ClientError::Remote`]; one by the relay (offline, no answer in time…) is
    /// [`ClientError::Relay`].
    pub async fn call<B: Serialize + ?Sized>(
        &self,
        dest: TwinId,
        command: &str,
        body: &B,
    ) -> Result<serde_json::Value, ClientError> {
        let identity = self.identity.as_ref().ok_or(ClientError::NoIdentity)?;
        let me = self.twin.ok_or(ClientError::NoTwin)?;
        let key = self.twin_key(dest).await?;
        let plain = serde_json::to_vec(body).expect("request bodies serialize");
        let seal = Seal {
            source: me,
            destination: dest,
            destination_key: &key,
            command,
            reply_to: None,
            expiration: auth::unix_now() + CALL_TTL_SECS,
        };
        let request = Envelope::seal(identity, &seal, &plain).map_err(ClientError::Envelope)?;
        let reply = self.relay_send(&request).await?;
        if reply.source != dest
            || reply.destination != me
            || reply.reply_to.as_deref() != Some(request.id.as_str())
        {
            return Err(ClientError::Envelope(
                zos_types::envelope::EnvelopeError::Malformed(
                    "the reply does not answer this request".into(),
                ),
            ));
        }
        reply
            .verify(&key, auth::unix_now())
            .map_err(ClientError::Envelope)?;
        let opened = reply.open(identity, &key).map_err(ClientError::Envelope)?;
        match serde_json::from_slice::<Reply>(&opened) {
            Ok(Reply::Ok(v)) => Ok(v),
            Ok(Reply::Error(e)) => Err(ClientError::Remote(e)),
            Err(e) => Err(ClientError::Envelope(
                zos_types::envelope::EnvelopeError::Malformed(e.to_string()),
            )),
        }
    }

    /// The typed client of the node with twin `twin` (see [`NodeClient`]).
    pub fn node(&self, twin: TwinId) -> NodeClient<'_> {
        NodeClient { grid: self, twin }
    }

    /// The registry's version and clock; a cheap reachability check.
    pub async fn health(&self) -> Result<Health, ClientError> {
        self.get("/health", &[]).await
    }

    // ---- plumbing ----

    fn url(&self, route: &str, query: &[(&str, &str)]) -> Url {
        let mut url = self.base.clone();
        let path = format!(
            "{}{API_PREFIX}{route}",
            self.base.path().trim_end_matches('/')
        );
        url.set_path(&path);
        if !query.is_empty() {
            url.query_pairs_mut().extend_pairs(query);
        }
        url
    }

    async fn get<T: DeserializeOwned>(
        &self,
        route: &str,
        query: &[(&str, &str)],
    ) -> Result<T, ClientError> {
        let (_, value) = self
            .send::<(), _>(Method::GET, route, query, None, None)
            .await?;
        Ok(value)
    }

    async fn signed_get<T: DeserializeOwned>(
        &self,
        route: &str,
        query: &[(&str, &str)],
    ) -> Result<T, ClientError> {
        let signer = Signer::Twin(self.twin.ok_or(ClientError::NoTwin)?);
        let (_, value) = self
            .send::<(), _>(Method::GET, route, query, None, Some(signer))
            .await?;
        Ok(value)
    }

    async fn signed<B: Serialize, T: DeserializeOwned>(
        &self,
        method: Method,
        route: &str,
        body: &B,
    ) -> Result<T, ClientError> {
        let signer = Signer::Twin(self.twin.ok_or(ClientError::NoTwin)?);
        let (_, value) = self
            .send(method, route, &[], Some(body), Some(signer))
            .await?;
        Ok(value)
    }

    async fn send<B: Serialize, T: DeserializeOwned>(
        &self,
        method: Method,
        route: &str,
        query: &[(&str, &str)],
        body: Option<&B>,
        signer: Option<Signer>,
    ) -> Result<(StatusCode, T), ClientError> {
        let url = self.url(route, query);
        let bytes = match body {
            Some(b) => serde_json::to_vec(b).expect("request bodies serialize"),
            None => Vec::new(),
        };
        let mut request = self.http.request(method.clone(), url.clone());
        if body.is_some() {
            request = request.header(reqwest::header::CONTENT_TYPE, "application/json");
        }
        if let Some(signer) = signer {
            let identity = self.identity.as_ref().ok_or(ClientError::NoIdentity)?;
            let path_and_query = match url.query() {
                Some(q) => format!("{}?{q}", url.path()),
                None => url.path().to_string(),
            };
            let mut h = DefaultHasher::new();
            (
                identity.public_key(),
                signer,
                method.as_str(),
                &path_and_query,
                &bytes,
            )
                .hash(&mut h);
            let now = self.clock.as_ref().map_or_else(auth::unix_now, |c| (c.0)());
            let timestamp = self.stamps.next(h.finish(), now);
            let auth = RequestAuth::sign(
                identity,
                signer,
                method.as_str(),
                &path_and_query,
                timestamp,
                &bytes,
            );
            request = request.header(auth::HEADER, auth.to_string());
        }
        if body.is_some() {
            request = request.body(bytes);
        }
        tracing::trace!(%method, %url, "grid request");
        let response = request
            .send()
            .await
            .map_err(|source| ClientError::Transport {
                url: url.to_string(),
                source,
            })?;
        let status = response.status();
        let text = response.bytes().await;
        let text = match text {
            Ok(t) => t,
            Err(source) if status.is_success() => {
                return Err(ClientError::Decode {
                    url: url.to_string(),
                    source: DecodeError::Body(source),
                });
            }
            Err(source) => {
                return Err(ClientError::Transport {
                    url: url.to_string(),
                    source,
                });
            }
        };
        if !status.is_success() {
            return Err(release::api_error(status, &text));
        }
        let value = serde_json::from_slice(&text).map_err(|source| ClientError::Decode {
            url: url.to_string(),
            source: DecodeError::Json(source),
        })?;
        Ok((status, value))
    }
}

fn not_found_to_none<T>(r: Result<T, ClientError>) -> Result<Option<T>, ClientError> {
    match r {
        Ok(v) => Ok(Some(v)),
        Err(e) if e.is_not_found() => Ok(None),
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_are_built_under_the_api_prefix() {
        let c = GridClient::new("http://127.0.0.1:8080/").unwrap();
        assert_eq!(
            c.url("/farms", &[("name", "a b")]).as_str(),
            "http://127.0.0.1:8080/api/v1/farms?name=a+b"
        );
        let c = GridClient::new("http://grid.example/registry/").unwrap();
        assert_eq!(
            c.url("/nodes/3", &[]).as_str(),
            "http://grid.example/registry/api/v1/nodes/3"
        );
        assert!(GridClient::new("not a url").is_err());
        assert!(GridClient::new("ftp://x").is_err());
    }

    #[test]
    fn identical_requests_get_distinct_timestamps() {
        let stamps = Stamps::default();
        assert_eq!(stamps.next(1, 100), 100);
        assert_eq!(stamps.next(2, 100), 100);
        assert_eq!(stamps.next(1, 100), 101);
        assert_eq!(stamps.next(1, 100), 102);
        // Once the clock passes the last stamp, requests use the clock again.
        assert_eq!(stamps.next(1, 103), 103);
        assert_eq!(stamps.next(2, 103), 103);
        assert_eq!(stamps.0.lock().unwrap().len(), 2);
        assert_eq!(stamps.next(3, 200), 200);
        assert_eq!(stamps.0.lock().unwrap().len(), 1);
    }

    #[test]
    fn transient_errors_are_5xx_and_transport() {
        let api = |status| ClientError::Api {
            status,
            message: String::new(),
        };
        assert!(api(503).is_transient());
        assert!(api(500).is_transient());
        assert!(!api(404).is_transient());
        assert!(api(404).is_not_found());
        assert!(!api(401).is_transient());
        assert!(!ClientError::NoIdentity.is_transient());
    }

    #[test]
    fn relay_errors_say_what_happened() {
        let r = |status| ClientError::Relay {
            twin: 7,
            status,
            message: "why".into(),
        };
        assert!(r(404).is_offline() && r(404).is_transient() && !r(404).is_not_found());
        assert_eq!(
            r(404).to_string(),
            "twin 7 is not connected to the relay (node offline?)"
        );
        assert!(r(504).is_transient() && !r(504).is_offline());
        assert_eq!(r(504).to_string(), "twin 7 did not answer in time");
        assert!(r(503).is_transient());
        assert!(!r(409).is_transient());
        assert_eq!(
            r(409).to_string(),
            "the relay refused the call to twin 7 (409): why"
        );
        assert_eq!(r(413).status(), Some(413));
    }

    #[tokio::test]
    async fn unreachable_grid_is_a_transient_transport_error() {
        // Bind and drop a listener to get a port nobody listens on.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let c = GridClient::new(&format!("http://127.0.0.1:{port}")).unwrap();
        let err = c.health().await.unwrap_err();
        assert!(matches!(err, ClientError::Transport { .. }), "{err:?}");
        assert!(err.is_transient());
    }

    #[tokio::test]
    async fn signed_calls_need_an_identity_and_a_twin() {
        let c = GridClient::new("http://127.0.0.1:9").unwrap();
        assert!(matches!(
            c.create_twin(None).await,
            Err(ClientError::NoIdentity)
        ));
        assert!(matches!(
            c.create_farm("farm").await,
            Err(ClientError::NoTwin)
        ));
        let c = c.with_twin(3);
        assert!(matches!(
            c.create_farm("farm").await,
            Err(ClientError::NoIdentity)
        ));
    }
}
