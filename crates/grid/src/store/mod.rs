//! Storage of the registry, behind the [`Store`] trait.
//!
//! The trait is synchronous: the HTTP layer calls it from blocking threads
//! (`tokio::task::spawn_blocking`). Each method is one transaction, and a method that fails
//! changes nothing. [`SqliteStore`] is the embedded implementation; a PostgreSQL one can follow
//! behind the same trait.

mod billing;
mod contracts;
mod farms;
mod history;
mod proposals;
mod rows;
mod sqlite;

use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::sync::Arc;

use zos_types::billing::{
    Account, AccountEvent, Bill, ConsumptionReport, Deposit, FarmEarnings, PolicyVersion,
    PricingPolicy,
};
use zos_types::contract::{Contract, ContractFilter, NodeEventRecord};
use zos_types::deployment::{ContractId, Deployment, DeploymentHash};
use zos_types::proposal::{Proposal, ProposalFilter, ProposalId, ProposalKind};
use zos_types::registry::{
    AddFarmIp, Farm, FarmIp, FarmPolicy, GridStats, Node, NodeFilter, NodeRegistration,
    PublicConfig, Twin, UptimePoint,
};
use zos_types::{Capacity, FarmId, NodeId, PublicKey, Signature, TwinId};

pub use billing::{BatchOutcome, BillingRules};
pub use history::{STATS_FULL_SECS, STATS_KEEP_SECS, UPTIME_KEEP_POINTS, UPTIME_KEEP_SECS};
pub use sqlite::{SCHEMA_VERSION, SqliteStore};

/// Failures of the store. [`StoreError::NotFound`], [`StoreError::Conflict`] and
/// [`StoreError::Invalid`] are the caller's fault; the rest are internal.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The object the operation is about does not exist.
    #[error("{0}")]
    NotFound(String),
    /// The operation would break a uniqueness or ownership rule.
    #[error("{0}")]
    Conflict(String),
    /// A rule of the object's owner forbids the operation (a farm's policy).
    #[error("{0}")]
    Forbidden(String),
    /// A value the store cannot hold, or a reference to a missing object inside a request body.
    #[error("{field}: {reason}")]
    Invalid { field: String, reason: String },
    /// The database was written by a newer binary.
    #[error(
        "database {path} has schema version {found}, newer than version {supported} that this zos-grid knows: run a newer zos-grid"
    )]
    TooNew {
        path: PathBuf,
        found: i64,
        supported: i64,
    },
    /// The database or its directory cannot be opened.
    #[error("cannot open database {path}")]
    Open {
        path: PathBuf,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// A query failed.
    #[error("database {context} failed")]
    Database {
        context: &'static str,
        #[source]
        source: rusqlite::Error,
    },
    /// A stored value does not decode.
    #[error("stored {0} is corrupt")]
    Corrupt(String),
}

/// A proposal as its proposer asks for it (see [`Store::create_proposal`]).
#[derive(Debug, Clone)]
pub struct NewProposal {
    pub proposer: TwinId,
    pub kind: ProposalKind,
    /// The node of a deploy.
    pub node: Option<NodeId>,
    /// The contract of an update or a cancel.
    pub contract: Option<ContractId>,
    /// The deployment of a deploy or an update (its signatures are dropped).
    pub deployment: Option<Deployment>,
    /// The proposer's signature over what the others will sign.
    pub signature: Signature,
    pub lifetime_secs: u64,
}

/// Told the nodes whose event log grew, once per node, after the transaction that wrote the
/// events committed (the relay uses it to push them over the nodes' uplinks).
pub type EventHook = Arc<dyn Fn(NodeId) + Send + Sync>;

/// Storage of twins, farms with their IP pools, nodes, contracts and node event logs.
///
/// Methods that answer nodes take the current time `now` to compute
/// [`Node::online`](zos_types::registry::Node::online).
pub trait Store: Send + Sync + std::fmt::Debug + 'static {
    /// The public key of twin `id`, if it exists (used to check signatures).
    fn twin_key(&self, id: TwinId) -> Result<Option<PublicKey>, StoreError>;
    /// Creates a twin; [`StoreError::Conflict`] if the key already has one.
    fn create_twin(
        &self,
        key: PublicKey,
        relay: Option<String>,
        now: i64,
    ) -> Result<Twin, StoreError>;
    fn twin(&self, id: TwinId) -> Result<Option<Twin>, StoreError>;
    fn twin_by_key(&self, key: &PublicKey) -> Result<Option<Twin>, StoreError>;

    /// Creates a farm owned by `twin`; [`StoreError::Conflict`] if the name is taken in any case.
    fn create_farm(&self, name: &str, twin: TwinId, now: i64) -> Result<Farm, StoreError>;
    fn farm(&self, id: FarmId) -> Result<Option<Farm>, StoreError>;
    /// The farm whose name equals `name` regardless of case.
    fn farm_by_name(&self, name: &str) -> Result<Option<Farm>, StoreError>;
    /// Every farm, by id.
    fn farms(&self) -> Result<Vec<Farm>, StoreError>;
    /// Sets a farm's policy.
    fn set_farm_policy(&self, farm: FarmId, policy: &FarmPolicy) -> Result<Farm, StoreError>;
    /// Adds an address to a farm's pool; [`StoreError::Conflict`] if it is in any pool already,
    /// or is the public address of another farm's node.
    fn add_farm_ip(&self, farm: FarmId, ip: &AddFarmIp, now: i64) -> Result<Farm, StoreError>;
    /// Removes an address from a farm's pool; [`StoreError::Conflict`] while a contract holds it.
    fn remove_farm_ip(&self, farm: FarmId, ip: Ipv4Addr) -> Result<Farm, StoreError>;
    fn farm_ips(&self, farm: FarmId) -> Result<Vec<FarmIp>, StoreError>;

    /// Creates the node of `twin` or updates it. Returns the node and whether it was created.
    /// A new node, or one moving to another farm, needs that farm's admission
    /// ([`StoreError::Forbidden`] without it).
    /// A node that moves to another farm loses its public configuration (and gets a
    /// `public_config_changed` event).
    fn upsert_node(
        &self,
        twin: TwinId,
        registration: &NodeRegistration,
        now: i64,
    ) -> Result<(Node, bool), StoreError>;
    /// Sets the node's public configuration and appends `public_config_changed` to its log.
    fn set_public_config(
        &self,
        node: NodeId,
        config: &PublicConfig,
        now: i64,
    ) -> Result<Node, StoreError>;
    /// Records an uptime report received at server time `now`, with the capacity the node's
    /// workloads use when it says, and appends it to the node's bounded uptime history.
    fn report_uptime(
        &self,
        node: NodeId,
        uptime_secs: u64,
        used: Option<Capacity>,
        now: i64,
    ) -> Result<Node, StoreError>;
    fn node(&self, id: NodeId, now: i64) -> Result<Option<Node>, StoreError>;
    /// Nodes passing `filter` (paging included), by id.
    fn nodes(&self, filter: &NodeFilter, now: i64) -> Result<Vec<Node>, StoreError>;

    /// A node contract of `twin`, reserving `public_ips` free addresses of the node's farm
    /// ([`StoreError::Conflict`] when the pool lacks them; nothing is stored then).
    fn create_node_contract(
        &self,
        twin: TwinId,
        node: NodeId,
        hash: DeploymentHash,
        public_ips: u32,
        now: i64,
    ) -> Result<Contract, StoreError>;
    /// A name contract; [`StoreError::Conflict`] while a live contract holds the name.
    fn create_name_contract(
        &self,
        twin: TwinId,
        name: &str,
        now: i64,
    ) -> Result<Contract, StoreError>;
    /// A rent contract; [`StoreError::Forbidden`] unless the node's farm is rentable,
    /// [`StoreError::Conflict`] while the node is rented.
    fn create_rent_contract(
        &self,
        twin: TwinId,
        node: NodeId,
        now: i64,
    ) -> Result<Contract, StoreError>;
    fn contract(&self, id: ContractId) -> Result<Option<Contract>, StoreError>;
    fn contracts(&self, filter: &ContractFilter) -> Result<Vec<Contract>, StoreError>;
    /// Sets a live node contract's hash and appends `contract_updated` to its node's log.
    fn update_node_contract(
        &self,
        id: ContractId,
        hash: DeploymentHash,
        now: i64,
    ) -> Result<Contract, StoreError>;
    /// Deletes a live contract, frees its addresses and, for a node contract, appends
    /// `contract_cancelled` to its node's log.
    fn cancel_contract(&self, id: ContractId, now: i64) -> Result<Contract, StoreError>;
    /// Starts or ends a live contract's grace period and, for a node contract, appends
    /// `grace_period_started` or `grace_period_ended` to its node's log.
    fn set_grace(&self, id: ContractId, grace: bool, now: i64) -> Result<Contract, StoreError>;
    /// At most `limit` events of `node` after sequence number `after`, oldest first.
    fn node_events(
        &self,
        node: NodeId,
        after: u64,
        limit: u32,
    ) -> Result<Vec<NodeEventRecord>, StoreError>;
    /// Sets the function told about new node events (replacing any earlier one).
    fn on_node_events(&self, hook: EventHook);

    /// Makes a proposal after checking it against the node or contract it is about, and counts
    /// its proposer's signature (which may approve it at once). The proposer must be the
    /// deployment's twin and the contract's; a contract made by a proposal keeps its twins and
    /// weights, and a cancel takes them from it.
    fn create_proposal(&self, new: NewProposal, now: i64) -> Result<Proposal, StoreError>;
    fn proposal(&self, id: ProposalId, now: i64) -> Result<Option<Proposal>, StoreError>;
    /// The proposals `twin` made or is named in, newest first.
    fn proposals(
        &self,
        twin: TwinId,
        filter: &ProposalFilter,
        now: i64,
    ) -> Result<Vec<Proposal>, StoreError>;
    /// Counts `twin`'s signature over the proposal's message. When the signed weight reaches
    /// the requirement the contract is made, updated or cancelled in the same transaction and
    /// the proposal is approved.
    fn sign_proposal(
        &self,
        id: ProposalId,
        twin: TwinId,
        signature: Signature,
        now: i64,
    ) -> Result<Proposal, StoreError>;
    /// Counts `twin`'s rejection; the proposal is rejected once it can no longer be approved.
    fn reject_proposal(
        &self,
        id: ProposalId,
        twin: TwinId,
        reason: &str,
        now: i64,
    ) -> Result<Proposal, StoreError>;
    /// The approved proposal that made contract `contract`, if one did: its twins alone change
    /// or cancel the contract.
    fn contract_governor(
        &self,
        contract: ContractId,
        now: i64,
    ) -> Result<Option<ProposalId>, StoreError>;

    /// The pricing policy in force (TFChain's defaults as version 0 until the admin sets one).
    fn pricing_policy(&self) -> Result<PolicyVersion, StoreError>;
    /// Records a new version of the policy, set by twin `by`.
    fn set_pricing_policy(
        &self,
        policy: &PricingPolicy,
        by: TwinId,
        now: i64,
    ) -> Result<PolicyVersion, StoreError>;
    /// Credits `deposit` to `twin` from the outside account `source` (`bridge` or `faucet`),
    /// pays its debts while the balance covers them and ends the grace of contracts left
    /// without debt.
    fn deposit(
        &self,
        twin: TwinId,
        deposit: &Deposit,
        source: &str,
        now: i64,
    ) -> Result<Account, StoreError>;
    fn account(&self, twin: TwinId) -> Result<Account, StoreError>;
    /// At most `limit` events of `twin`'s account, newest first.
    fn account_history(&self, twin: TwinId, limit: u32) -> Result<Vec<AccountEvent>, StoreError>;
    /// At most `limit` bills of `contract`, newest first.
    fn bills(&self, contract: ContractId, limit: u32) -> Result<Vec<Bill>, StoreError>;
    fn farm_earnings(&self, farm: FarmId) -> Result<FarmEarnings, StoreError>;
    /// Bills, in one transaction, the contracts after `after` (at most `limit`) for every
    /// period billable at `now` that has no bill yet; a bill that the twin cannot pay puts the
    /// contract in grace.
    fn bill_batch(
        &self,
        rules: &BillingRules,
        after: ContractId,
        limit: u32,
        now: i64,
    ) -> Result<BatchOutcome, StoreError>;
    /// Cancels the contracts whose grace for lack of money ran out.
    fn expire_grace(&self, rules: &BillingRules, now: i64) -> Result<u32, StoreError>;
    /// Records `node`'s consumption reports, all or none.
    fn record_consumption(
        &self,
        rules: &BillingRules,
        node: NodeId,
        reports: &[ConsumptionReport],
        now: i64,
    ) -> Result<(), StoreError>;

    /// The grid's totals at `now`.
    fn stats(&self, now: i64) -> Result<GridStats, StoreError>;
    /// Appends a sample of the totals to their history, which keeps every sample younger than
    /// [`STATS_FULL_SECS`], the first of each hour before that, and none older than
    /// [`STATS_KEEP_SECS`].
    fn record_stats(&self, sample: &GridStats) -> Result<(), StoreError>;
    /// The samples taken at `since` or later, oldest first.
    fn stats_history(&self, since: i64) -> Result<Vec<GridStats>, StoreError>;
    /// The uptime reports of `node` received at `since` or later, oldest first (at most
    /// [`UPTIME_KEEP_POINTS`], none older than [`UPTIME_KEEP_SECS`]).
    fn node_uptime(&self, node: NodeId, since: i64) -> Result<Vec<UptimePoint>, StoreError>;

    /// Every row of every table but the sampled totals (which the grid writes on its own) as
    /// text, in a stable order: for tests that check a refused request changed nothing, and for
    /// debugging.
    fn dump(&self) -> Result<String, StoreError>;
}
