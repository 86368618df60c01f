//! Billing: the pricing policy, accounts, the billing run and node consumption reports (the
//! routes are listed in [`zos_types::billing`]; the rules in `docs/billing.md`).
//!
//! A billing run bills every contract for every period that ended (and whose report delay
//! passed) and has no bill yet, in batches of contracts, each batch one transaction. A bill's
//! key is its contract and period, so a run killed at any point and started again neither
//! bills a period twice nor skips one. Then it cancels the contracts whose grace for lack of
//! money ran out. The grid runs it every [`BillingConfig::tick`] of wall time, reading its
//! [`Clock`](crate::clock::Clock) each time, and once at start.

use axum::extract::State;
use axum::routing::{get, post, put};
use axum::{Json, Router};
use serde::Deserialize;
use zos_types::billing::{
    Account, AccountEvent, Bill, BillingInfo, ConsumptionRecorded, ConsumptionReport, Deposit,
    FarmEarnings, MAX_REPORTS, PolicyVersion, PricingPolicy,
};
use zos_types::deployment::ContractId;
use zos_types::registry::API_PREFIX;
use zos_types::{FarmId, NodeId, TwinId};

use crate::auth::{ApiPath, ApiQuery, Signed};
use crate::error::ApiFailure;
use crate::state::AppState;
use crate::store::{Store, StoreError};

pub mod config;

pub use config::BillingConfig;

/// What a billing run did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RunSummary {
    pub contracts: u64,
    pub bills: u64,
    pub paid: u64,
    pub graced: u64,
    pub cancelled: u64,
}

/// Runs the billing once at `now` (blocking: call it from a blocking thread).
pub fn run(store: &dyn Store, config: &BillingConfig, now: i64) -> Result<RunSummary, StoreError> {
    let rules = config.rules();
    let mut sum = RunSummary::default();
    let mut after = 0;
    loop {
        let b = store.bill_batch(&rules, after, config.batch.max(1), now)?;
        sum.contracts += b.contracts as u64;
        sum.bills += b.bills as u64;
        sum.paid += b.paid as u64;
        sum.graced += b.graced as u64;
        if b.contracts < config.batch.max(1) {
            break;
        }
        after = b.last_contract;
    }
    sum.cancelled = store.expire_grace(&rules, now)? as u64;
    if sum.bills > 0 || sum.cancelled > 0 {
        tracing::info!(
            bills = sum.bills,
            paid = sum.paid,
            graced = sum.graced,
            cancelled = sum.cancelled,
            "billing run"
        );
    }
    Ok(sum)
}

/// Runs the billing at start and then every `config.tick` until the task is aborted.
pub(crate) async fn run_forever(app: AppState, config: BillingConfig) {
    loop {
        let now = app.now();
        let (store, cfg) = (app.store().clone(), config);
        match tokio::task::spawn_blocking(move || run(store.as_ref(), &cfg, now)).await {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => {
                tracing::error!(error = %e, "billing run failed; retrying at the next tick")
            }
            Err(e) => tracing::error!(error = %e, "billing task failed"),
        }
        let Some(tick) = config.tick else { return };
        tokio::time::sleep(tick).await;
    }
}

pub fn routes() -> Router<AppState> {
    let p = |route: &str| format!("{API_PREFIX}{route}");
    Router::new()
        .route(&p("/billing"), get(info))
        .route(&p("/billing/policy"), put(set_policy))
        .route(&p("/accounts/{twin}"), get(account))
        .route(&p("/accounts/{twin}/deposit"), post(deposit))
        .route(&p("/accounts/{twin}/history"), get(history))
        .route(&p("/contracts/{id}/bills"), get(bills))
        .route(&p("/farms/{id}/earnings"), get(earnings))
        .route(&p("/nodes/{id}/consumption"), post(consumption))
}

type Answer<T> = Result<Json<T>, ApiFailure>;

/// Most events or bills one request answers.
pub const MAX_LIST: u32 = 1000;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ListQuery {
    #[serde(default)]
    limit: Option<u32>,
}

impl ListQuery {
    fn limit(&self) -> u32 {
        self.limit.unwrap_or(100).clamp(1, MAX_LIST)
    }
}

fn is_admin(app: &AppState, twin: TwinId) -> bool {
    app.admin() == Some(twin)
}

/// `twin` itself or the admin.
fn own_or_admin(
    app: &AppState,
    signer: TwinId,
    owner: TwinId,
    what: &str,
) -> Result<(), ApiFailure> {
    if signer == owner || is_admin(app, signer) {
        Ok(())
    } else {
        Err(ApiFailure::Forbidden(format!(
            "{what} belongs to twin {owner}: only it and the grid's admin read it"
        )))
    }
}

async fn info(State(app): State<AppState>) -> Answer<BillingInfo> {
    let policy = app.run(|s| s.pricing_policy()).await?;
    let c = app.billing();
    Ok(Json(BillingInfo {
        policy,
        period_secs: c.period.as_secs(),
        grace_secs: c.grace.as_secs(),
        faucet_max: c.faucet_max,
    }))
}

async fn set_policy(State(app): State<AppState>, signed: Signed) -> Answer<PolicyVersion> {
    let twin = signed.twin()?;
    if !is_admin(&app, twin) {
        return Err(ApiFailure::Forbidden(
            "only the grid's admin twin sets the pricing policy (zos-grid serve --admin-twin ID)"
                .into(),
        ));
    }
    let policy: PricingPolicy = signed.json()?;
    let now = app.now();
    let v = app
        .run(move |s| s.set_pricing_policy(&policy, twin, now))
        .await?;
    tracing::info!(version = v.version, twin, "pricing policy set");
    Ok(Json(v))
}

async fn account(
    State(app): State<AppState>,
    ApiPath(owner): ApiPath<TwinId>,
    signed: Signed,
) -> Answer<Account> {
    own_or_admin(&app, signed.twin()?, owner, &format!("account {owner}"))?;
    Ok(Json(app.run(move |s| s.account(owner)).await?))
}

async fn deposit(
    State(app): State<AppState>,
    ApiPath(owner): ApiPath<TwinId>,
    signed: Signed,
) -> Answer<Account> {
    let twin = signed.twin()?;
    let body: Deposit = signed.json()?;
    let source = if is_admin(&app, twin) {
        "bridge"
    } else {
        match app.billing().faucet_max {
            Some(max) if twin == owner => {
                if body.amount > max {
                    return Err(ApiFailure::BadRequest(format!(
                        "amount: this devnet's faucet gives at most {max} units at once"
                    )));
                }
                "faucet"
            }
            Some(_) => {
                return Err(ApiFailure::Forbidden(format!(
                    "twin {twin} may take from the faucet for itself only, not for twin {owner}"
                )));
            }
            None => {
                return Err(ApiFailure::Forbidden(
                    "only the grid's admin twin deposits on this grid (it has no faucet): pay through the grid's payment bridge".into(),
                ));
            }
        }
    };
    let now = app.now();
    let amount = body.amount;
    let a = app
        .run(move |s| s.deposit(owner, &body, source, now))
        .await?;
    tracing::info!(twin = owner, by = twin, amount, source, "deposit");
    Ok(Json(a))
}

async fn history(
    State(app): State<AppState>,
    ApiPath(owner): ApiPath<TwinId>,
    ApiQuery(q): ApiQuery<ListQuery>,
    signed: Signed,
) -> Answer<Vec<AccountEvent>> {
    own_or_admin(&app, signed.twin()?, owner, &format!("account {owner}"))?;
    let limit = q.limit();
    Ok(Json(
        app.run(move |s| s.account_history(owner, limit)).await?,
    ))
}

async fn bills(
    State(app): State<AppState>,
    ApiPath(id): ApiPath<ContractId>,
    ApiQuery(q): ApiQuery<ListQuery>,
    signed: Signed,
) -> Answer<Vec<Bill>> {
    let c = app
        .run(move |s| s.contract(id))
        .await?
        .ok_or_else(|| ApiFailure::NotFound(format!("contract {id} does not exist")))?;
    own_or_admin(&app, signed.twin()?, c.twin_id, &format!("contract {id}"))?;
    let limit = q.limit();
    Ok(Json(app.run(move |s| s.bills(id, limit)).await?))
}

async fn earnings(
    State(app): State<AppState>,
    ApiPath(id): ApiPath<FarmId>,
    signed: Signed,
) -> Answer<FarmEarnings> {
    let farm = app
        .run(move |s| s.farm(id))
        .await?
        .ok_or_else(|| ApiFailure::NotFound(format!("farm {id} does not exist")))?;
    own_or_admin(&app, signed.twin()?, farm.twin_id, &format!("farm {id}"))?;
    Ok(Json(app.run(move |s| s.farm_earnings(id)).await?))
}

/// The most traffic a node may report per second of a period: 100 Gbit/s, in bytes.
pub const MAX_BYTES_PER_SEC: u64 = 12_500_000_000;

async fn consumption(
    State(app): State<AppState>,
    ApiPath(id): ApiPath<NodeId>,
    signed: Signed,
) -> Answer<ConsumptionRecorded> {
    let twin = signed.twin()?;
    let now = app.now();
    let node = app
        .run(move |s| s.node(id, now))
        .await?
        .ok_or_else(|| ApiFailure::NotFound(format!("node {id} does not exist")))?;
    if node.twin_id != twin {
        return Err(ApiFailure::Forbidden(format!(
            "twin {twin} is not node {id} (its twin is {})",
            node.twin_id
        )));
    }
    let reports: Vec<ConsumptionReport> = signed.json()?;
    if reports.is_empty() || reports.len() > MAX_REPORTS {
        return Err(ApiFailure::BadRequest(format!(
            "a request carries 1 to {MAX_REPORTS} reports"
        )));
    }
    let rules = app.billing().rules();
    let max_bytes = rules.period_secs.saturating_mul(MAX_BYTES_PER_SEC);
    for r in &reports {
        let absurd = |what: String| {
            ApiFailure::BadRequest(format!(
                "report of contract {} for period {}: {what}",
                r.contract_id, r.period
            ))
        };
        r.capacity.validate().map_err(|e| absurd(e.to_string()))?;
        let c = &r.capacity;
        let n = &node.capacity;
        if c.cru > n.cru || c.mru > n.mru || c.sru > n.sru || c.hru > n.hru {
            return Err(absurd(format!(
                "capacity {c:?} is more than the node has ({n:?})"
            )));
        }
        if r.public_bytes > max_bytes {
            return Err(absurd(format!(
                "{} bytes is more than 100 Gbit/s for the whole period ({max_bytes})",
                r.public_bytes
            )));
        }
        if r.period < 0 {
            return Err(absurd("a period is not negative".into()));
        }
    }
    let n = reports.len();
    app.run(move |s| s.record_consumption(&rules, id, &reports, now))
        .await?;
    tracing::debug!(node = id, reports = n, "consumption reported");
    Ok(Json(ConsumptionRecorded { recorded: n as u32 }))
}
