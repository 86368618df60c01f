//! Registration with the grid and uptime reports.
//!
//! The node makes sure its twin exists, registers itself with its farm, capacity, hardware and
//! interfaces, and then reports its uptime every period. It registers again whenever one of
//! those facts changes, and when the grid no longer knows it. While the grid cannot be reached
//! it retries with exponential backoff and says why in the log; it never gives up.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;
use zos_runtime::error_chain;

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};
use zos_client::{ClientError, GridClient};
use zos_types::billing::{ConsumptionReport, MAX_REPORTS};
use zos_types::deployment::ContractId;
use zos_types::registry::{NodeRegistration, UptimeReport};
use zos_types::{Capacity, FarmId, Identity, NodeId, TwinId};

use crate::system::{System, reserved_memory};

/// Storage facts the registration carries; they come from the storage module.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StorageFacts {
    /// Total bytes of SSD pools.
    pub sru: u64,
    /// Total bytes of HDD pools.
    pub hru: u64,
    /// SSD bytes the node keeps for its own cache.
    pub reserved_sru: u64,
    /// Why the node cannot take deployments, if it cannot.
    pub limited: Option<String>,
}

/// What the registrar knows, for the status screen and the other modules.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RegistrarStatus {
    pub twin_id: Option<TwinId>,
    pub node_id: Option<NodeId>,
    /// Node clock (unix seconds) of the last accepted uptime report.
    pub last_report: Option<i64>,
    /// The last failure talking to the grid, cleared by the next success.
    pub last_error: Option<String>,
}

#[derive(Debug, Clone)]
pub struct RegistrarConfig {
    pub farm_id: FarmId,
    /// The farmer's permission to join the farm, sent with every registration.
    pub admission: Option<zos_types::registry::AdmissionToken>,
    pub report_interval: Duration,
    pub zos_version: String,
    pub storage: StorageFacts,
    /// The node's name prefix: links the network module makes are not the machine's.
    pub prefix: String,
}

/// Builds the registration from the machine's facts.
pub fn registration(
    system: &dyn System,
    cfg: &RegistrarConfig,
) -> std::io::Result<NodeRegistration> {
    let memory = system.memory_bytes()?;
    Ok(NodeRegistration {
        farm_id: cfg.farm_id,
        capacity: Capacity {
            cru: system.cores()?,
            mru: memory,
            sru: cfg.storage.sru,
            hru: cfg.storage.hru,
        },
        reserved: Capacity {
            cru: 0,
            mru: reserved_memory(memory),
            sru: cfg.storage.reserved_sru,
            hru: 0,
        },
        hardware: system.hardware(),
        interfaces: {
            let names = zos_net::Names::new(&cfg.prefix);
            let mut all = system.interfaces()?;
            all.retain(|i| !names.owns_link(&i.name));
            all
        },
        zos_version: cfg.zos_version.clone(),
        report_interval_secs: cfg.report_interval.as_secs().max(1),
        limited: cfg.storage.limited.clone(),
        admission: cfg.admission,
    })
}

/// Exponential backoff between failed attempts: 1 s doubling up to `max`.
#[derive(Debug, Clone)]
pub struct Backoff {
    next: Duration,
    max: Duration,
}

impl Backoff {
    pub fn new(max: Duration) -> Self {
        Self {
            next: Duration::from_secs(1).min(max),
            max,
        }
    }
    pub fn next_delay(&mut self) -> Duration {
        let d = self.next;
        self.next = (self.next * 2).min(self.max);
        d
    }
    pub fn reset(&mut self) {
        self.next = Duration::from_secs(1).min(self.max);
    }
}

/// What the node's workloads use now, reported with each uptime report (`None`: not known yet).
pub type UsageSource = Arc<dyn Fn() -> Option<Capacity> + Send + Sync>;

/// What each contract's workloads hold now, reported to the grid once per billing period.
pub type ContractUsageSource = Arc<dyn Fn() -> Vec<(ContractId, Capacity)> + Send + Sync>;

pub struct Registrar {
    client: GridClient,
    identity: Identity,
    system: Arc<dyn System>,
    cfg: RegistrarConfig,
    status: watch::Sender<RegistrarStatus>,
    usage: Option<UsageSource>,
    contracts: Option<ContractUsageSource>,
    /// The grid's billing period, asked once.
    period_secs: Option<u64>,
    /// The (contract, period) pairs the grid has (or refused for good).
    reported: HashSet<(ContractId, i64)>,
}

impl std::fmt::Debug for Registrar {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Registrar")
            .field("cfg", &self.cfg)
            .finish_non_exhaustive()
    }
}

impl Registrar {
    pub fn new(
        grid_url: &str,
        identity: Identity,
        system: Arc<dyn System>,
        cfg: RegistrarConfig,
    ) -> Result<Self, ClientError> {
        let client = GridClient::new(grid_url)?.with_identity(identity.clone());
        Ok(Self {
            client,
            identity,
            system,
            cfg,
            status: watch::channel(RegistrarStatus::default()).0,
            usage: None,
            contracts: None,
            period_secs: None,
            reported: HashSet::new(),
        })
    }

    /// Reports, once per billing period of the grid, the capacity each contract holds (see
    /// docs/billing.md; public traffic is not counted yet).
    pub fn with_contract_usage(mut self, contracts: ContractUsageSource) -> Self {
        self.contracts = Some(contracts);
        self
    }

    /// Sends this period's consumption report of each contract not reported yet. Failures are
    /// logged and retried at the next tick; refusals for good (the period is reported or
    /// billed already, the contract is unknown or not this node's) are not retried.
    async fn report_consumption(&mut self, node: NodeId) {
        let Some(source) = self.contracts.clone() else {
            return;
        };
        let period_secs = match self.period_secs {
            Some(p) => p,
            None => match self.client.billing_info().await {
                Ok(info) => *self.period_secs.insert(info.period_secs.max(1)),
                Err(e) => {
                    debug!(error = %error_chain(&e), "the grid's billing period is unknown; no consumption report");
                    return;
                }
            },
        };
        let period = zos_types::auth::unix_now().div_euclid(period_secs as i64);
        self.reported.retain(|(_, p)| *p >= period);
        let due: Vec<ConsumptionReport> = source()
            .into_iter()
            .filter(|(c, _)| !self.reported.contains(&(*c, period)))
            .map(|(contract_id, capacity)| ConsumptionReport {
                contract_id,
                period,
                capacity,
                public_bytes: 0,
            })
            .collect();
        for chunk in due.chunks(MAX_REPORTS) {
            match self.client.report_consumption(node, chunk).await {
                Ok(_) => self
                    .reported
                    .extend(chunk.iter().map(|r| (r.contract_id, r.period))),
                // One refused report refuses the request: send them one by one.
                Err(e) if e.status().is_some_and(|s| (400..500).contains(&s)) => {
                    for r in chunk {
                        match self.client.report_consumption(node, &[*r]).await {
                            Ok(_) => {}
                            Err(e) if e.status().is_some_and(|s| (400..500).contains(&s)) => {
                                debug!(contract = r.contract_id, period, error = %error_chain(&e), "consumption report refused");
                            }
                            Err(e) => {
                                warn!(contract = r.contract_id, error = %error_chain(&e), "consumption report failed; retrying");
                                continue;
                            }
                        }
                        self.reported.insert((r.contract_id, r.period));
                    }
                }
                Err(e) => {
                    warn!(node, error = %error_chain(&e), "consumption reports failed; retrying");
                }
            }
        }
    }

    /// Reports what `usage` says with every uptime report.
    pub fn with_usage(mut self, usage: UsageSource) -> Self {
        self.usage = Some(usage);
        self
    }

    /// Follows the registrar's status.
    pub fn subscribe(&self) -> watch::Receiver<RegistrarStatus> {
        self.status.subscribe()
    }

    fn backoff_cap(&self) -> Duration {
        self.cfg
            .report_interval
            .clamp(Duration::from_secs(1), Duration::from_secs(60))
    }

    fn failed(&self, what: &str, err: &dyn std::fmt::Display) {
        let msg = format!("{what}: {err}");
        self.status
            .send_modify(|s| s.last_error = Some(msg.clone()));
    }

    /// Runs until `stop` is cancelled.
    pub async fn run(mut self, stop: CancellationToken) {
        let mut backoff = Backoff::new(self.backoff_cap());
        let twin = loop {
            match self.ensure_twin().await {
                Ok(t) => break t,
                Err(e) => {
                    let delay = backoff.next_delay();
                    warn!(error = %error_chain(&e), retry_in = ?delay, "cannot reach the grid to find or create the node twin");
                    self.failed("twin", &error_chain(&e));
                    if sleep_or_stop(&stop, delay).await {
                        return;
                    }
                }
            }
        };
        self.client = self.client.clone().with_twin(twin);
        self.status.send_modify(|s| s.twin_id = Some(twin));
        backoff.reset();

        let mut registered: Option<(NodeId, NodeRegistration)> = None;
        loop {
            let ticked = self.tick(&mut registered).await;
            if ticked.is_ok()
                && let Some((node, _)) = &registered
            {
                let node = *node;
                self.report_consumption(node).await;
            }
            let delay = match ticked {
                Ok(()) => {
                    backoff.reset();
                    self.cfg.report_interval
                }
                Err(e) => {
                    let delay = backoff.next_delay();
                    warn!(twin, error = %e, retry_in = ?delay, "grid unreachable or refused the node; retrying");
                    self.failed("grid", &e);
                    delay
                }
            };
            if sleep_or_stop(&stop, delay).await {
                return;
            }
        }
    }

    async fn ensure_twin(&self) -> Result<TwinId, ClientError> {
        let key = self.identity.public_key();
        if let Some(t) = self.client.twin_by_key(&key).await? {
            return Ok(t.id);
        }
        let t = self.client.create_twin(None).await?;
        info!(twin = t.id, %key, "node twin created");
        Ok(t.id)
    }

    /// Registers when needed, then reports uptime once.
    async fn tick(
        &self,
        registered: &mut Option<(NodeId, NodeRegistration)>,
    ) -> Result<(), String> {
        let reg = registration(self.system.as_ref(), &self.cfg)
            .map_err(|e| format!("reading machine facts: {e}"))?;
        let node_id = match registered {
            Some((id, last)) if *last == reg => *id,
            _ => self.register(&reg, registered).await?,
        };
        let report = UptimeReport {
            uptime_secs: self
                .system
                .uptime_secs()
                .map_err(|e| format!("reading uptime: {e}"))?,
            timestamp: zos_types::auth::unix_now(),
            used: self.usage.as_ref().and_then(|u| u()),
        };
        match self.client.report_uptime(node_id, &report).await {
            Ok(node) => {
                debug!(
                    node = node_id,
                    uptime = report.uptime_secs,
                    online = node.online,
                    "uptime reported"
                );
                self.status.send_modify(|s| {
                    s.last_report = Some(report.timestamp);
                    s.last_error = None;
                });
                Ok(())
            }
            Err(e) if e.is_not_found() => {
                warn!(
                    node = node_id,
                    "the grid no longer knows this node; registering again"
                );
                *registered = None;
                Err(format!("uptime report: {}", error_chain(&e)))
            }
            Err(e) => Err(format!("uptime report: {}", error_chain(&e))),
        }
    }

    async fn register(
        &self,
        reg: &NodeRegistration,
        registered: &mut Option<(NodeId, NodeRegistration)>,
    ) -> Result<NodeId, String> {
        let (node, created) = self
            .client
            .register_node(reg)
            .await
            .map_err(|e| format!("registration: {}", error_chain(&e)))?;
        if created {
            info!(node = node.id, twin = node.twin_id, farm = node.farm_id, capacity = %node.capacity, "node registered");
        } else {
            info!(node = node.id, capacity = %node.capacity, "node registration updated");
        }
        self.status.send_modify(|s| s.node_id = Some(node.id));
        *registered = Some((node.id, reg.clone()));
        Ok(node.id)
    }
}

/// Sleeps for `d`; true when `stop` was cancelled first.
async fn sleep_or_stop(stop: &CancellationToken, d: Duration) -> bool {
    tokio::select! {
        _ = stop.cancelled() => true,
        _ = tokio::time::sleep(d) => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::system::FakeSystem;
    use zos_types::capacity::GIB;
    use zos_types::registry::{Hardware, Interface};

    #[test]
    fn backoff_doubles_up_to_the_cap() {
        let mut b = Backoff::new(Duration::from_secs(5));
        let got: Vec<u64> = (0..5).map(|_| b.next_delay().as_secs()).collect();
        assert_eq!(got, [1, 2, 4, 5, 5]);
        b.reset();
        assert_eq!(b.next_delay().as_secs(), 1);
    }

    #[test]
    fn registration_carries_real_capacity_and_reservation() {
        let sys = FakeSystem {
            cores: 8,
            memory: 64 * GIB,
            hardware: Hardware {
                serial: "s".into(),
                virtualized: false,
                cpu_model: "c".into(),
            },
            interfaces: vec![
                Interface {
                    name: "eth0".into(),
                    mac: "02:00:00:00:00:01".into(),
                    ips: vec![],
                },
                // The network module's own links are not the machine's.
                Interface {
                    name: "zdmz".into(),
                    mac: "02:00:00:00:00:02".into(),
                    ips: vec![],
                },
                Interface {
                    name: "zt0a1b2c3d4e5".into(),
                    mac: "02:00:00:00:00:03".into(),
                    ips: vec![],
                },
            ],
            uptime: 5,
        };
        let cfg = RegistrarConfig {
            farm_id: 3,
            admission: None,
            report_interval: Duration::from_secs(30),
            zos_version: "1.2.3".into(),
            storage: StorageFacts {
                sru: 100 * GIB,
                hru: 0,
                reserved_sru: GIB,
                limited: None,
            },
            prefix: "z".into(),
        };
        let reg = registration(&sys, &cfg).unwrap();
        reg.validate().unwrap();
        let names: Vec<&str> = reg.interfaces.iter().map(|i| i.name.as_str()).collect();
        assert_eq!(names, ["eth0"]);
        assert_eq!(
            reg.capacity,
            Capacity {
                cru: 8,
                mru: 64 * GIB,
                sru: 100 * GIB,
                hru: 0
            }
        );
        assert_eq!(reg.reserved.mru, 64 * GIB / 10);
        assert_eq!(reg.reserved.sru, GIB);
        assert_eq!(reg.report_interval_secs, 30);
    }

    #[tokio::test]
    async fn each_contract_is_reported_once_per_billing_period() {
        use std::sync::Mutex;
        use zos_types::contract::CreateNodeContract;
        use zos_types::deployment::DeploymentHash;
        use zos_types::registry::{FarmPolicy, NodeAdmission};

        let dir = tempfile::tempdir().unwrap();
        let grid = zos_grid::start(zos_grid::GridConfig::new(
            "127.0.0.1:0".parse().unwrap(),
            dir.path().into(),
        ))
        .await
        .unwrap();
        let url = grid.url();
        let signed = || {
            GridClient::new(&url)
                .unwrap()
                .with_identity(Identity::generate().unwrap())
        };
        let farmer = signed();
        let farmer = farmer
            .clone()
            .with_twin(farmer.create_twin(None).await.unwrap().id);
        let farm = farmer.create_farm("reporting").await.unwrap();
        let open = FarmPolicy {
            node_admission: NodeAdmission::Open,
            ..FarmPolicy::default()
        };
        farmer.set_farm_policy(farm.id, &open).await.unwrap();

        let sys = FakeSystem {
            cores: 4,
            memory: 16 * GIB,
            hardware: Hardware {
                serial: "s".into(),
                virtualized: true,
                cpu_model: "c".into(),
            },
            interfaces: vec![Interface {
                name: "eth0".into(),
                mac: "02:00:00:00:00:09".into(),
                ips: vec![],
            }],
            uptime: 5,
        };
        let cfg = RegistrarConfig {
            farm_id: farm.id,
            admission: None,
            report_interval: Duration::from_secs(30),
            zos_version: "1.2.3".into(),
            storage: StorageFacts {
                sru: 100 * GIB,
                hru: 0,
                reserved_sru: GIB,
                limited: None,
            },
            prefix: "z".into(),
        };
        let held: Arc<Mutex<Vec<(ContractId, Capacity)>>> = Arc::default();
        let source = held.clone();
        let mut r = Registrar::new(&url, Identity::generate().unwrap(), Arc::new(sys), cfg)
            .unwrap()
            .with_contract_usage(Arc::new(move || source.lock().unwrap().clone()));
        let twin = r.ensure_twin().await.unwrap();
        r.client = r.client.clone().with_twin(twin);
        let mut registered = None;
        r.tick(&mut registered).await.unwrap();
        let node = registered.as_ref().unwrap().0;

        let user = signed();
        let user = user
            .clone()
            .with_twin(user.create_twin(None).await.unwrap().id);
        let c = user
            .create_node_contract(&CreateNodeContract {
                node_id: node,
                deployment_hash: DeploymentHash([3; 32]),
                public_ips: 0,
            })
            .await
            .unwrap();
        let vm = Capacity {
            cru: 1,
            mru: 2 * GIB,
            sru: 10 * GIB,
            hru: 0,
        };
        // A contract the grid does not know is refused for good, and does not stop the others.
        *held.lock().unwrap() = vec![(c.id, vm), (c.id + 100, vm)];
        r.report_consumption(node).await;
        let period = zos_types::auth::unix_now() / 3600;
        assert!(r.reported.contains(&(c.id, period)), "{:?}", r.reported);
        assert!(r.reported.contains(&(c.id + 100, period)));
        // The grid has this period's report: another one is refused.
        let again = ConsumptionReport {
            contract_id: c.id,
            period,
            capacity: vm,
            public_bytes: 0,
        };
        let e = r
            .client
            .report_consumption(node, &[again])
            .await
            .unwrap_err();
        assert_eq!(e.status(), Some(409), "{e}");
        // The next tick of the same period leaves the grid as it was.
        let before = grid.store().dump().unwrap();
        r.report_consumption(node).await;
        assert_eq!(grid.store().dump().unwrap(), before);
        grid.shutdown().await.unwrap();
    }
}
