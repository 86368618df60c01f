//! The provisioning engine: accepts deployments after checking them, stores them, and applies
//! them in the background, one job at a time, in type order.
//!
//! Checks, in order: structure, the sender is the deployment's twin, signatures (made for this
//! node: decision 0004), the contract
//! (a node contract for this node, active, with the same hash), and capacity. Only then is
//! anything stored. Work is a queue of jobs in the store: a crash loses none, and a restart
//! finishes them. On start the engine reconciles: every workload the store says is ok is
//! provisioned again (managers are idempotent), so what should exist does. Losing contact with
//! the grid never deletes anything: removal happens only on a cancellation event.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::future::BoxFuture;
use tokio::sync::{Notify, watch};
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info, warn};
use zos_types::contract::{Contract, ContractFilter, ContractKind, ContractState, NodeEvent};
use zos_types::deployment::{
    ContractId, Deployment, DeploymentError, ResultState, Workload, WorkloadId, WorkloadResult,
};
use zos_types::node_api::ErrorKind;
use zos_types::workload::{WorkloadData, WorkloadType};
use zos_types::{Capacity, NodeId, PublicKey, TwinId};

use super::error::GridViewError;
use super::managers::{Manager, Readiness, Target, Unsupported};
use super::store::{Job, LogEntry, Store, StoreError};
use zos_mounts::{FlistUrlError, FlistUrlPolicy};

/// What the engine asks the grid.
pub trait GridView: Send + Sync {
    /// The public key of a twin; [`GridViewError::NotFound`] when the twin does not exist.
    fn twin_key(&self, twin: TwinId) -> BoxFuture<'_, Result<PublicKey, GridViewError>>;
    /// A contract; [`GridViewError::NotFound`] when it does not exist.
    fn contract(&self, id: ContractId) -> BoxFuture<'_, Result<Contract, GridViewError>>;
    /// The contracts `filter` selects (a twin's name contracts, for gateways).
    fn contracts(
        &self,
        filter: ContractFilter,
    ) -> BoxFuture<'_, Result<Vec<Contract>, GridViewError>>;
}

/// Why a request was refused; each maps to a clear answer for the sender ([`Self::kind`]).
///
/// Errors of the parts the engine uses stay typed (`source`); the message a sender sees is the
/// whole chain, made once at the API edge.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// The request breaks a rule the engine checks itself.
    #[error("invalid deployment: {0}")]
    Invalid(String),
    /// The deployment breaks one of its own rules (shape, workloads, update).
    #[error("invalid deployment")]
    Deployment(#[from] DeploymentError),
    /// The deployment's signatures do not satisfy its requirement.
    #[error(transparent)]
    Signatures(DeploymentError),
    /// A flist URL the deployment names is refused (or cannot be checked now).
    #[error(transparent)]
    FlistUrl(#[from] FlistUrlError),
    #[error("{0}")]
    Forbidden(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Conflict(String),
    #[error("not enough capacity: {0}")]
    Capacity(String),
    #[error("{0}")]
    Unavailable(String),
    /// The grid could not answer a check.
    #[error(transparent)]
    Grid(#[from] GridViewError),
    /// The store refused the request (the deployment exists, is missing, a name is taken).
    #[error(transparent)]
    Store(StoreError),
    /// The store failed.
    #[error("internal error")]
    StoreFailed(#[source] StoreError),
}

impl EngineError {
    /// The protocol's kind of this refusal: what the sender can do about it.
    pub fn kind(&self) -> ErrorKind {
        match self {
            Self::Invalid(_) | Self::Deployment(_) => ErrorKind::Invalid,
            Self::Forbidden(_) | Self::Signatures(_) => ErrorKind::Forbidden,
            Self::FlistUrl(FlistUrlError::Unavailable(_)) | Self::Unavailable(_) => {
                ErrorKind::Unavailable
            }
            Self::FlistUrl(_) => ErrorKind::Forbidden,
            Self::NotFound(_) | Self::Store(StoreError::NotFound(_)) => ErrorKind::NotFound,
            Self::Conflict(_) | Self::Capacity(_) | Self::Store(_) => ErrorKind::Conflict,
            Self::StoreFailed(_) => ErrorKind::Internal,
            Self::Grid(e) => e.kind(),
        }
    }

    /// The whole message: this error and every cause.
    pub fn message(&self) -> String {
        zos_runtime::error_chain(self)
    }
}

impl From<StoreError> for EngineError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::Exists(_) | StoreError::NotFound(_) | StoreError::NameTaken { .. } => {
                Self::Store(e)
            }
            e => Self::StoreFailed(e),
        }
    }
}

/// Counts for `zos.statistics.get`.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct Usage {
    /// Capacity held by workloads that are being made, ok or paused.
    pub workloads: Capacity,
    pub deployments: u64,
    pub workload_count: u64,
}

/// Most network resources one twin keeps on one node.
pub const MAX_NETWORKS_PER_TWIN: usize = 16;

/// Refuses `d` when its twin would then hold more than [`MAX_NETWORKS_PER_TWIN`] network
/// workloads on this node (its other deployments' live ones, plus the ones `d` lists).
pub fn check_network_count(store: &Store, d: &Deployment) -> Result<(), EngineError> {
    let networks = |d: &Deployment| {
        d.workloads
            .iter()
            .filter(|w| w.kind == WorkloadType::Network)
            .filter(|w| {
                !matches!(
                    w.result.as_ref().map(|r| r.state),
                    Some(ResultState::Deleted | ResultState::Error)
                )
            })
            .count()
    };
    let mut n = networks(d);
    for c in store.contracts(Some(d.twin_id))? {
        if c == d.contract_id {
            continue;
        }
        if let Some(other) = store.get(c)? {
            n += networks(&other);
        }
    }
    if n > MAX_NETWORKS_PER_TWIN {
        return Err(EngineError::Capacity(format!(
            "twin {} would have {n} network resources on this node, at most {MAX_NETWORKS_PER_TWIN}: delete one first (`zos network delete NAME`)",
            d.twin_id
        )));
    }
    Ok(())
}

/// A deployment uses at most the public IPv4 addresses its contract reserved, and a new one
/// exactly those: a contract that holds more than its deployment uses would keep addresses of
/// the farm's pool from everyone else.
fn check_public_ips(
    contract: ContractId,
    reserved: u32,
    d: &Deployment,
) -> Result<(), EngineError> {
    let used = d.public_ipv4_count()?;
    if d.version == 0 && used != reserved {
        return Err(EngineError::Forbidden(format!(
            "contract {contract} reserves {reserved} public IPv4 address(es) but the deployment uses {used}: make the contract with public_ips = {used}"
        )));
    }
    if used > reserved {
        return Err(EngineError::Forbidden(format!(
            "contract {contract} reserves {reserved} public IPv4 address(es) but the update uses {used}: a contract's addresses are fixed; put the new ip workloads in a new deployment"
        )));
    }
    Ok(())
}

/// Whether `source` may send (or read) `d`: its own twin, or a twin of its signature
/// requirement. Delivery gives a co-signer no power: the contract (the owner's, with this
/// hash) and the signed weight are checked whoever sends it, so a co-signer can only deliver
/// what the group approved — which is how the signer completing a proposal's weight sends it.
pub fn may_deliver(d: &Deployment, source: TwinId) -> bool {
    d.twin_id == source
        || d.signature_requirement
            .requests
            .iter()
            .any(|r| r.twin_id == source)
}

/// The engine's fixed facts about the node.
#[derive(Debug, Clone)]
pub struct EngineConfig {
    pub total: Capacity,
    pub reserved: Capacity,
    /// Set when the node takes no deployments, with the reason.
    pub limited: Option<String>,
}

pub struct Engine {
    store: Arc<Store>,
    managers: HashMap<WorkloadType, Arc<dyn Manager>>,
    grid: Arc<dyn GridView>,
    node_id: watch::Receiver<Option<NodeId>>,
    cfg: EngineConfig,
    wake: Notify,
    /// Which flist URLs deployments may name (none: not checked, for tests of other rules).
    flist_policy: Option<FlistUrlPolicy>,
    /// How long a workload may stay `starting` before it is an error.
    ready_wait: Duration,
    /// The `starting` workloads (contract, name), with when they must be up.
    starting: std::sync::Mutex<BTreeMap<(ContractId, String), Instant>>,
}

/// How long a workload may take to come up (a machine's guest to boot) by default.
pub const READY_WAIT: Duration = Duration::from_secs(300);

/// How often `starting` workloads are looked at.
const READY_EVERY: Duration = Duration::from_secs(1);

/// The last line of `console` with something on it, as a `starting` workload's message.
fn last_line(console: &str) -> String {
    let line = console
        .lines()
        .rev()
        .map(str::trim)
        .find(|l| !l.is_empty())
        .unwrap_or("");
    let mut end = line.len().min(200);
    while !line.is_char_boundary(end) {
        end -= 1;
    }
    line[..end].to_string()
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine")
            .field("cfg", &self.cfg)
            .finish_non_exhaustive()
    }
}

fn now() -> i64 {
    zos_types::auth::unix_now()
}

fn result(
    state: ResultState,
    message: impl Into<String>,
    data: serde_json::Value,
) -> WorkloadResult {
    WorkloadResult {
        created: now(),
        state,
        message: message.into(),
        data,
    }
}

impl Engine {
    /// An engine with `managers` for the types it runs; every other type answers "not supported".
    pub fn new(
        store: Arc<Store>,
        managers: HashMap<WorkloadType, Arc<dyn Manager>>,
        grid: Arc<dyn GridView>,
        node_id: watch::Receiver<Option<NodeId>>,
        cfg: EngineConfig,
    ) -> Self {
        let mut all = managers;
        for t in WorkloadType::ALL {
            all.entry(t).or_insert_with(|| Arc::new(Unsupported(t)));
        }
        Self {
            store,
            managers: all,
            grid,
            node_id,
            cfg,
            wake: Notify::new(),
            flist_policy: None,
            ready_wait: READY_WAIT,
            starting: std::sync::Mutex::new(BTreeMap::new()),
        }
    }

    /// The same engine, giving workloads `wait` to come up before they are errors.
    pub fn with_ready_wait(mut self, wait: Duration) -> Self {
        self.ready_wait = wait;
        self
    }

    /// The same engine, refusing deployments whose flists are not on hosts `policy` allows.
    pub fn with_flist_policy(mut self, policy: FlistUrlPolicy) -> Self {
        self.flist_policy = Some(policy);
        self
    }

    pub fn store(&self) -> &Store {
        &self.store
    }

    pub fn config(&self) -> &EngineConfig {
        &self.cfg
    }

    fn manager(&self, t: WorkloadType) -> &Arc<dyn Manager> {
        &self.managers[&t]
    }

    /// Checks `d` sent by `source` and stores it; it is applied in the background.
    pub async fn deploy(&self, source: TwinId, d: Deployment) -> Result<(), EngineError> {
        if d.version != 0 {
            return Err(EngineError::Invalid(format!(
                "a new deployment has version 0, not {}",
                d.version
            )));
        }
        self.check(source, &d).await?;
        check_network_count(&self.store, &d)?;
        let need = d.capacity()?;
        self.admit(need)?;
        self.store.create(&d, now())?;
        info!(
            twin = d.twin_id,
            contract = d.contract_id,
            workloads = d.workloads.len(),
            "deployment accepted"
        );
        self.wake.notify_one();
        Ok(())
    }

    /// Checks an update of an existing deployment and queues it.
    pub async fn update(&self, source: TwinId, d: Deployment) -> Result<(), EngineError> {
        let old = self
            .store
            .get_raw(d.contract_id)?
            .filter(|o| o.twin_id == d.twin_id && may_deliver(o, source))
            .ok_or_else(|| {
                EngineError::NotFound(format!("deployment {} not found", d.contract_id))
            })?;
        self.check(source, &d).await?;
        check_network_count(&self.store, &d)?;
        let plan = old.plan_update(&d)?;
        let before = old.capacity()?;
        let after = d.capacity()?;
        self.admit(after.saturating_sub(before))?;
        let job = Job::Update {
            add: plan.add,
            update: plan.update,
            remove: plan.remove,
        };
        self.store.update(&d, &job, now())?;
        info!(
            twin = d.twin_id,
            contract = d.contract_id,
            version = d.version,
            "deployment update accepted"
        );
        self.wake.notify_one();
        Ok(())
    }

    /// Structure, sender, signatures and contract.
    /// Checks a deployment before anything of it is stored: its shape, its sender, its contract,
    /// then its signatures. The contract comes first: it costs the sender a contract on the
    /// grid, while each signer costs the node a lookup.
    async fn check(&self, source: TwinId, d: &Deployment) -> Result<(), EngineError> {
        if let Some(why) = &self.cfg.limited {
            return Err(EngineError::Unavailable(format!(
                "this node takes no deployments: {why}"
            )));
        }
        d.validate()?;
        if !may_deliver(d, source) {
            return Err(EngineError::Forbidden(format!(
                "twin {source} sent a deployment of twin {}: only the deployment's own twin or a twin of its signature requirement may send it",
                d.twin_id
            )));
        }
        let node = (*self.node_id.borrow()).ok_or_else(|| {
            EngineError::Unavailable("this node is not registered yet: try again shortly".into())
        })?;
        let public_ips = self.check_contract(d, node).await?;
        self.check_signatures(d, node).await?;
        check_public_ips(d.contract_id, public_ips, d)?;
        self.check_flist_urls(d).await
    }

    /// The deployment's contract: the sender's, for this node, active, with the deployment's
    /// hash. Answers the number of public IPs it reserved.
    async fn check_contract(&self, d: &Deployment, node: u32) -> Result<u32, EngineError> {
        let contract = match self.grid.contract(d.contract_id).await {
            Ok(c) => c,
            Err(GridViewError::NotFound { .. }) => {
                return Err(EngineError::Forbidden(format!(
                    "contract {} does not exist",
                    d.contract_id
                )));
            }
            Err(e) => return Err(e.into()),
        };
        if contract.twin_id != d.twin_id {
            return Err(EngineError::Forbidden(format!(
                "contract {} belongs to twin {}",
                contract.id, contract.twin_id
            )));
        }
        let ContractKind::Node {
            node_id,
            deployment_hash,
            public_ips,
            ..
        } = &contract.kind
        else {
            return Err(EngineError::Forbidden(format!(
                "contract {} is not a node contract",
                contract.id
            )));
        };
        if *node_id != node {
            return Err(EngineError::Forbidden(format!(
                "contract {} is for node {node_id}, this is node {node}",
                contract.id
            )));
        }
        if contract.state != ContractState::Created {
            return Err(EngineError::Forbidden(format!(
                "contract {} is {:?}, not active",
                contract.id, contract.state
            )));
        }
        let hash = d.hash()?;
        if *deployment_hash != hash {
            return Err(EngineError::Forbidden(format!(
                "deployment hash {hash} differs from the contract's {deployment_hash}: the deployment was changed after the contract was made"
            )));
        }
        Ok(*public_ips)
    }

    /// The signatures, each by its twin's key and naming this node (decision 0004). The
    /// signers are bounded by `validate`, and their keys are cached by the grid view.
    async fn check_signatures(&self, d: &Deployment, node: u32) -> Result<(), EngineError> {
        let mut keys = HashMap::new();
        for s in &d.signature_requirement.signatures {
            // A signer the grid does not know has no key: its signature does not count.
            match self.grid.twin_key(s.twin_id).await {
                Ok(k) => {
                    keys.insert(s.twin_id, k);
                }
                Err(GridViewError::NotFound { .. }) => {}
                Err(e) => return Err(e.into()),
            }
        }
        d.verify_signatures(node, |t| keys.get(&t).copied())
            .map_err(EngineError::Signatures)
    }

    /// Every flist the deployment names is on the grid's hub or a host the farm allows; checked
    /// before anything fetches it.
    async fn check_flist_urls(&self, d: &Deployment) -> Result<(), EngineError> {
        let Some(policy) = &self.flist_policy else {
            return Ok(());
        };
        let mut urls = Vec::new();
        for w in &d.workloads {
            if let WorkloadData::Zmachine(m) = w.parse()? {
                urls.push(policy.resolve(&m.flist, d.twin_id)?);
            }
        }
        let urls: Vec<&str> = urls.iter().map(String::as_str).collect();
        Ok(policy.check(&urls).await?)
    }

    /// `data` with a zmachine's hub reference (`TWIN/NAME`, `NAME`) as the URL on the grid's hub,
    /// for the managers; the stored deployment keeps the reference as signed.
    fn flist_resolved(&self, d: &Deployment, mut data: WorkloadData) -> WorkloadData {
        if let (WorkloadData::Zmachine(m), Some(p)) = (&mut data, &self.flist_policy)
            && let Ok(url) = p.resolve(&m.flist, d.twin_id)
        {
            m.flist = url;
        }
        data
    }

    /// Refuses `need` when the node lacks the memory or the disk for it. Cores may be shared.
    fn admit(&self, need: Capacity) -> Result<(), EngineError> {
        let used = self.usage()?.workloads;
        let free = self
            .cfg
            .total
            .saturating_sub(self.cfg.reserved)
            .saturating_sub(used);
        let h = zos_types::capacity::human_bytes;
        if need.mru > free.mru {
            return Err(EngineError::Capacity(format!(
                "{} of memory asked, {} free",
                h(need.mru),
                h(free.mru)
            )));
        }
        if need.sru > free.sru {
            return Err(EngineError::Capacity(format!(
                "{} of SSD asked, {} free",
                h(need.sru),
                h(free.sru)
            )));
        }
        if need.hru > free.hru {
            return Err(EngineError::Capacity(format!(
                "{} of HDD asked, {} free",
                h(need.hru),
                h(free.hru)
            )));
        }
        Ok(())
    }

    /// Every stored deployment, with its results.
    fn all_deployments(&self) -> Result<Vec<Deployment>, EngineError> {
        let mut out = Vec::new();
        for c in self.store.contracts(None)? {
            if let Some(d) = self.store.get(c)? {
                out.push(d);
            }
        }
        Ok(out)
    }

    /// The capacity each contract's workloads hold (being made, ok or paused), for the
    /// grid's consumption reports; contracts holding nothing are left out.
    pub fn contract_usage(&self) -> Result<Vec<(ContractId, Capacity)>, EngineError> {
        Ok(self
            .all_deployments()?
            .iter()
            .filter_map(|d| {
                let (held, holding) = held(d);
                (holding > 0).then_some((d.contract_id, held))
            })
            .collect())
    }

    /// Capacity held by workloads that are being made, ok or paused, and counts.
    pub fn usage(&self) -> Result<Usage, EngineError> {
        let mut u = Usage::default();
        for d in self.all_deployments()? {
            let (held, holding) = held(&d);
            u.workloads = u.workloads.saturating_add(held);
            u.workload_count += holding;
            u.deployments += (holding > 0) as u64;
        }
        Ok(u)
    }

    /// The deployment with its results, if `source` owns it or is one of its signers (who
    /// approved it, and follow what they delivered).
    pub fn get(&self, source: TwinId, contract: ContractId) -> Result<Deployment, EngineError> {
        self.store
            .get(contract)?
            .filter(|d| may_deliver(d, source))
            .ok_or_else(|| EngineError::NotFound(format!("deployment {contract} not found")))
    }

    /// `source`'s deployments.
    pub fn list(&self, source: TwinId) -> Result<Vec<Deployment>, EngineError> {
        let mut out = Vec::new();
        for c in self.store.contracts(Some(source))? {
            if let Some(d) = self.store.get(c)? {
                out.push(d);
            }
        }
        Ok(out)
    }

    /// The result log of `source`'s deployment.
    pub fn changes(
        &self,
        source: TwinId,
        contract: ContractId,
    ) -> Result<Vec<LogEntry>, EngineError> {
        self.get(source, contract)?;
        Ok(self.store.changes(contract)?)
    }

    /// Acts on an event from the grid. Events about unknown contracts are ignored.
    pub fn handle_event(&self, event: &NodeEvent) -> Result<(), EngineError> {
        let (contract, job) = match event {
            NodeEvent::ContractCancelled { contract_id } => (*contract_id, Job::Cancel),
            NodeEvent::GracePeriodStarted { contract_id } => (*contract_id, Job::Pause),
            NodeEvent::GracePeriodEnded { contract_id } => (*contract_id, Job::Resume),
            NodeEvent::ContractUpdated { .. } | NodeEvent::PublicConfigChanged => return Ok(()),
        };
        match self.store.push(contract, &job) {
            Ok(()) => {
                info!(contract, ?job, "contract event queued");
                self.wake.notify_one();
                Ok(())
            }
            Err(StoreError::NotFound(_)) => {
                debug!(contract, "event for a deployment this node does not have");
                Ok(())
            }
            Err(e) => Err(e.into()),
        }
    }

    /// Queues a reconciliation of every stored deployment (at start).
    pub fn reconcile(&self) -> Result<usize, EngineError> {
        let all = self.store.contracts(None)?;
        for c in &all {
            self.store.push(*c, &Job::Provision)?;
        }
        self.wake.notify_one();
        Ok(all.len())
    }

    /// Whether jobs are queued (the reconciliation at start is finished once none is).
    pub fn jobs_pending(&self) -> Result<bool, EngineError> {
        Ok(self.store.next_job()?.is_some())
    }

    /// The workloads whose result is `ok`, by workload id (`twin-contract-name`).
    pub fn ok_workloads(&self) -> Result<std::collections::BTreeSet<String>, EngineError> {
        let mut ok = std::collections::BTreeSet::new();
        for d in self.all_deployments()? {
            for w in &d.workloads {
                if w.result
                    .as_ref()
                    .is_some_and(|r| r.state == ResultState::Ok)
                {
                    ok.insert(d.workload_id(&w.name).to_string());
                }
            }
        }
        Ok(ok)
    }

    /// The workloads this node holds, by type and then by the state of their last result
    /// (`init` for one with no result yet): what the node's console screen counts.
    pub fn workload_counts(
        &self,
    ) -> Result<
        std::collections::BTreeMap<String, std::collections::BTreeMap<String, usize>>,
        EngineError,
    > {
        let mut counts: std::collections::BTreeMap<
            String,
            std::collections::BTreeMap<String, usize>,
        > = Default::default();
        for c in self.store.contracts(None)? {
            let Some(d) = self.store.get(c)? else {
                continue;
            };
            for w in &d.workloads {
                let state = w.result.as_ref().map_or(ResultState::Init, |r| r.state);
                *counts
                    .entry(w.kind.to_string())
                    .or_default()
                    .entry(state.to_string())
                    .or_default() += 1;
            }
        }
        Ok(counts)
    }

    /// Runs jobs until `stop` is cancelled.
    pub async fn run(self: Arc<Self>, stop: CancellationToken) {
        loop {
            match self.store.next_job() {
                Ok(Some((seq, contract, job))) => {
                    if let Err(e) = self.run_job(contract, &job).await {
                        error!(contract, ?job, error = %e.message(), "job failed");
                    }
                    if let Err(e) = self.store.finish_job(seq) {
                        error!(contract, error = %zos_runtime::error_chain(&e), "cannot mark a job done");
                    }
                    if stop.is_cancelled() {
                        return;
                    }
                    continue;
                }
                Ok(None) => {}
                Err(e) => {
                    error!(error = %zos_runtime::error_chain(&e), "cannot read the job queue")
                }
            }
            let waiting = !self.starting_now().is_empty();
            if waiting {
                self.check_starting().await;
            }
            let every = if waiting {
                READY_EVERY
            } else {
                Duration::from_secs(5)
            };
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = self.wake.notified() => {}
                _ = tokio::time::sleep(every) => {}
            }
        }
    }

    fn starting_now(&self) -> Vec<((ContractId, String), Instant)> {
        let s = self.starting.lock().unwrap_or_else(|e| e.into_inner());
        s.iter().map(|(k, v)| (k.clone(), *v)).collect()
    }

    fn done_starting(&self, contract: ContractId, name: &str) {
        let mut s = self.starting.lock().unwrap_or_else(|e| e.into_inner());
        s.remove(&(contract, name.to_string()));
    }

    /// Looks at each `starting` workload: up ones become `ok`; those past their deadline, or
    /// that will never come up, are removed and become errors saying why.
    /// The workloads are looked at together: a guest that does not answer costs its own wait
    /// (up to a second), not one for each machine before it.
    async fn check_starting(&self) {
        let checks = self
            .starting_now()
            .into_iter()
            .map(|((contract, name), deadline)| async move {
                if let Err(e) = self.check_one(contract, &name, deadline).await {
                    error!(contract, workload = %name, error = %e.message(), "cannot look at a starting workload");
                    self.done_starting(contract, &name);
                }
            });
        futures::future::join_all(checks).await;
    }

    async fn check_one(
        &self,
        contract: ContractId,
        name: &str,
        deadline: Instant,
    ) -> Result<(), EngineError> {
        let d = self.store.get(contract)?;
        let Some((d, w)) = d.and_then(|d| {
            let w = d.workloads.iter().find(|w| w.name == name)?.clone();
            Some((d, w))
        }) else {
            self.done_starting(contract, name);
            return Ok(());
        };
        let Some(cur) = w
            .result
            .clone()
            .filter(|r| r.state == ResultState::Starting)
        else {
            self.done_starting(contract, name);
            return Ok(());
        };
        let id = d.workload_id(name);
        let r = match self.manager(w.kind).readiness(&id).await {
            Ok(Readiness::Ready) => {
                info!(workload = %id, kind = %w.kind, "workload up");
                result(ResultState::Ok, "", cur.data)
            }
            Ok(Readiness::Starting { console }) if Instant::now() >= deadline => {
                let why = format!(
                    "not up within {}s; its console ends with:\n{}",
                    self.ready_wait.as_secs(),
                    console.trim_end()
                );
                self.give_up(&id, w.kind, &why).await
            }
            Ok(Readiness::Starting { console }) => {
                let message = last_line(&console);
                if message == cur.message {
                    return Ok(());
                }
                result(ResultState::Starting, message, cur.data)
            }
            Err(e) => self.give_up(&id, w.kind, &e.message()).await,
        };
        if r.state != ResultState::Starting {
            self.done_starting(contract, name);
        }
        Ok(self.store.record(contract, &w, &r)?)
    }

    /// Takes down a live workload for a reason found while it runs (a gateway's name contract
    /// cancelled): removes it and records an error result saying why (a workload that failed
    /// already keeps its result).
    pub async fn fail(&self, id: &WorkloadId, why: &str) -> Result<(), EngineError> {
        let Some(d) = self.store.get(id.contract)? else {
            return Ok(());
        };
        let Some(w) = d.workloads.iter().find(|w| w.name == id.name) else {
            return Ok(());
        };
        // Removed whatever its result says: a workload that failed meanwhile may still hold
        // what it had (removing is idempotent).
        let removed = self.manager(w.kind).deprovision(id).await;
        if w.result
            .as_ref()
            .is_some_and(|r| r.state == ResultState::Error)
        {
            return Ok(());
        }
        let mut message = why.to_string();
        if let Err(e) = removed {
            message.push_str(&format!("\n(and removing it failed: {})", e.message()));
        }
        let r = result(ResultState::Error, message, serde_json::Value::Null);
        Ok(self.store.record(id.contract, w, &r)?)
    }

    /// Removes a workload that will not come up, and the error result that says why.
    async fn give_up(&self, id: &WorkloadId, kind: WorkloadType, why: &str) -> WorkloadResult {
        warn!(workload = %id, %kind, reason = %why, "workload did not come up: removing it");
        let mut message = why.to_string();
        if let Err(e) = self.manager(kind).deprovision(id).await {
            message.push_str(&format!("\n(and removing it failed: {})", e.message()));
        }
        result(ResultState::Error, message, serde_json::Value::Null)
    }

    /// The result of a workload just provisioned with `out`: `ok` when it is up, `starting`
    /// (and watched) while it comes up, an error when it never will.
    async fn settle(
        &self,
        d: &Deployment,
        w: &Workload,
        id: &WorkloadId,
        out: serde_json::Value,
    ) -> WorkloadResult {
        match self.manager(w.kind).readiness(id).await {
            Ok(Readiness::Ready) => {
                info!(workload = %id, kind = %w.kind, "workload ok");
                result(ResultState::Ok, "", out)
            }
            Ok(Readiness::Starting { console }) => {
                info!(workload = %id, kind = %w.kind, "workload starting");
                let mut s = self.starting.lock().unwrap_or_else(|e| e.into_inner());
                s.entry((d.contract_id, w.name.clone()))
                    .or_insert_with(|| Instant::now() + self.ready_wait);
                result(ResultState::Starting, last_line(&console), out)
            }
            Err(e) => self.give_up(id, w.kind, &e.message()).await,
        }
    }

    async fn run_job(&self, contract: ContractId, job: &Job) -> Result<(), EngineError> {
        let Some(d) = self.store.get(contract)? else {
            return Ok(());
        };
        match job {
            Job::Provision => {
                for w in ordered(&d.workloads, false) {
                    self.provision(&d, w).await?;
                }
                Ok(())
            }
            Job::Update {
                add,
                update,
                remove,
            } => self.run_update(&d, add, update, remove).await,
            Job::Cancel => self.run_cancel(&d).await,
            Job::Pause => self.run_pause(&d, true).await,
            Job::Resume => self.run_pause(&d, false).await,
        }
    }

    /// An accepted update: removes the workloads it drops (in reverse type order), then adds
    /// and changes the others (in type order).
    async fn run_update(
        &self,
        d: &Deployment,
        add: &[String],
        update: &[String],
        remove: &[String],
    ) -> Result<(), EngineError> {
        let log = self.store.changes(d.contract_id)?;
        let mut gone: Vec<(String, WorkloadType, u32)> = Vec::new();
        for name in remove {
            if let Some(e) = log.iter().rev().find(|e| &e.name == name) {
                gone.push((name.clone(), e.kind, e.version));
            }
        }
        gone.sort_by_key(|(_, k, _)| std::cmp::Reverse(k.apply_order()));
        for (name, kind, version) in gone {
            let id = d.workload_id(&name);
            let w = Workload {
                version,
                name,
                kind,
                data: serde_json::Value::Null,
                metadata: String::new(),
                description: String::new(),
                result: None,
            };
            let r = match self.manager(kind).deprovision(&id).await {
                Ok(()) => result(
                    ResultState::Deleted,
                    "deleted by an update",
                    serde_json::Value::Null,
                ),
                Err(e) => result(ResultState::Error, e.message(), serde_json::Value::Null),
            };
            self.store.record(d.contract_id, &w, &r)?;
        }
        for w in ordered(&d.workloads, false) {
            if add.contains(&w.name) {
                self.provision(d, w).await?;
            } else if update.contains(&w.name) {
                self.change(d, w).await?;
            }
        }
        Ok(())
    }

    /// A cancelled contract: every workload removed (in reverse type order); the deployment is
    /// forgotten once all are gone.
    async fn run_cancel(&self, d: &Deployment) -> Result<(), EngineError> {
        let mut failed = 0;
        for w in ordered(&d.workloads, true) {
            if matches!(
                w.result.as_ref().map(|r| r.state),
                Some(ResultState::Deleted)
            ) {
                continue;
            }
            let id = d.workload_id(&w.name);
            let r = match self.manager(w.kind).deprovision(&id).await {
                Ok(()) => result(
                    ResultState::Deleted,
                    "contract cancelled",
                    serde_json::Value::Null,
                ),
                Err(e) => {
                    failed += 1;
                    warn!(workload = %id, error = %e.message(), "cannot remove workload");
                    result(ResultState::Error, e.message(), serde_json::Value::Null)
                }
            };
            self.store.record(d.contract_id, w, &r)?;
        }
        if failed == 0 {
            self.store.purge(d.contract_id)?;
            info!(contract = d.contract_id, "deployment removed");
        }
        Ok(())
    }

    /// A grace period starting (`pause`) or ending: ok workloads paused, or paused ones resumed.
    async fn run_pause(&self, d: &Deployment, pause: bool) -> Result<(), EngineError> {
        let (from, to) = if pause {
            (ResultState::Ok, ResultState::Paused)
        } else {
            (ResultState::Paused, ResultState::Ok)
        };
        for w in ordered(&d.workloads, pause) {
            let Some(cur) = &w.result else { continue };
            // A machine still booting is paused as a running one is.
            let starting = pause && cur.state == ResultState::Starting;
            if cur.state != from && !starting {
                continue;
            }
            let id = d.workload_id(&w.name);
            let m = self.manager(w.kind);
            let outcome = if pause {
                m.pause(&id).await
            } else {
                m.resume(&id).await
            };
            let r = match outcome {
                Ok(()) => result(to, "", cur.data.clone()),
                Err(e) => result(ResultState::Unchanged, e.message(), cur.data.clone()),
            };
            self.store.record(d.contract_id, w, &r)?;
        }
        Ok(())
    }

    /// Makes one workload exist: new ones (`init`) and, on reconciliation, ok ones.
    async fn provision(&self, d: &Deployment, w: &Workload) -> Result<(), EngineError> {
        let state = w.result.as_ref().map(|r| r.state);
        if !matches!(
            state,
            Some(ResultState::Init | ResultState::Ok | ResultState::Starting)
        ) {
            return Ok(());
        }
        let id = d.workload_id(&w.name);
        let data = match w.parse() {
            Ok(data) => self.flist_resolved(d, data),
            Err(e) => {
                return Ok(self.store.record(
                    d.contract_id,
                    w,
                    &result(ResultState::Error, e.to_string(), serde_json::Value::Null),
                )?);
            }
        };
        let outcome = self
            .manager(w.kind)
            .provision(Target {
                id: &id,
                data: &data,
            })
            .await;
        let r = match outcome {
            Ok(out) => {
                if state == Some(ResultState::Ok) {
                    if w.result.as_ref().is_some_and(|r| r.data == out) {
                        return Ok(());
                    }
                    info!(workload = %id, kind = %w.kind, "workload ok");
                    result(ResultState::Ok, "", out)
                } else {
                    let r = self.settle(d, w, &id, out).await;
                    if w.result.as_ref().is_some_and(|c| {
                        (c.state, &c.message, &c.data) == (r.state, &r.message, &r.data)
                    }) {
                        return Ok(());
                    }
                    r
                }
            }
            Err(e) => {
                warn!(workload = %id, kind = %w.kind, error = %e.message(), "workload failed");
                result(ResultState::Error, e.message(), serde_json::Value::Null)
            }
        };
        Ok(self.store.record(d.contract_id, w, &r)?)
    }

    /// Applies an updated workload.
    async fn change(&self, d: &Deployment, w: &Workload) -> Result<(), EngineError> {
        let id = d.workload_id(&w.name);
        let cur = w.result.clone();
        let data: WorkloadData = match w.parse() {
            Ok(data) => self.flist_resolved(d, data),
            Err(e) => {
                return Ok(self.store.record(
                    d.contract_id,
                    w,
                    &result(ResultState::Error, e.to_string(), serde_json::Value::Null),
                )?);
            }
        };
        let r = match self
            .manager(w.kind)
            .update(Target {
                id: &id,
                data: &data,
            })
            .await
        {
            Ok(out) => result(ResultState::Ok, "", out),
            Err(e) if e.is_unchanged() => result(
                ResultState::Unchanged,
                e.message(),
                cur.map(|c| c.data).unwrap_or_default(),
            ),
            Err(e) => result(ResultState::Error, e.message(), serde_json::Value::Null),
        };
        Ok(self.store.record(d.contract_id, w, &r)?)
    }
}

/// Workloads in the order they are applied (or the reverse, to remove them).
fn ordered(ws: &[Workload], reverse: bool) -> Vec<&Workload> {
    let mut v: Vec<&Workload> = ws.iter().collect();
    v.sort_by_key(|w| w.kind.apply_order());
    if reverse {
        v.reverse();
    }
    v
}

/// The capacity `d`'s workloads hold (those being made, ok or paused) and how many hold it.
fn held(d: &Deployment) -> (Capacity, u64) {
    let mut held = (Capacity::ZERO, 0);
    for w in &d.workloads {
        let state = w.result.as_ref().map(|r| r.state);
        if matches!(
            state,
            Some(ResultState::Init | ResultState::Ok | ResultState::Starting | ResultState::Paused)
        ) {
            held.1 += 1;
            if let Ok(data) = w.parse() {
                held.0 = held.0.saturating_add(data.capacity());
            }
        }
    }
    held
}
