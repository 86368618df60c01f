//! Billing in the SQLite store: pricing policy versions, the double-entry ledger, bills, node
//! consumption reports and grace for lack of money. Every function runs inside the caller's
//! transaction.
//!
//! Entries are never changed: `pricing_policies`, `ledger`, `bills`, `bill_payments` and
//! `account_events` refuse UPDATE and DELETE with a trigger. What changes is derived from them
//! and kept beside them in the same transaction: `balances` (by a trigger on `ledger`),
//! `debts` (bills not yet paid) and `money_grace` (contracts in grace for lack of money).

use rusqlite::{OptionalExtension, Transaction, params};
use zos_types::billing::{
    self, Account, AccountEvent, AccountEventKind, Amount, Bill, Deposit, FarmEarnings, Lines,
    PolicyVersion, PricingPolicy, Usage,
};
use zos_types::contract::{ContractState, NodeEvent};
use zos_types::deployment::ContractId;
use zos_types::{Capacity, FarmId, NodeId, TwinId};

use super::StoreError;
use super::contracts;
use super::rows::{db, from_sql, to_sql};

/// Migration 5: billing.
pub const MIGRATION: &str = r#"
    CREATE TABLE pricing_policies (
        version     INTEGER PRIMARY KEY,
        policy      TEXT NOT NULL,
        set_by      INTEGER REFERENCES twins(id),
        set_at      INTEGER NOT NULL
    ) STRICT;

    -- One row per node contract and period that its node reported.
    CREATE TABLE consumption (
        contract_id  INTEGER NOT NULL REFERENCES contracts(id),
        period       INTEGER NOT NULL,
        node_id      INTEGER NOT NULL REFERENCES nodes(id),
        cru          INTEGER NOT NULL CHECK (cru >= 0),
        mru          INTEGER NOT NULL CHECK (mru >= 0),
        sru          INTEGER NOT NULL CHECK (sru >= 0),
        hru          INTEGER NOT NULL CHECK (hru >= 0),
        public_bytes INTEGER NOT NULL CHECK (public_bytes >= 0),
        at           INTEGER NOT NULL,
        PRIMARY KEY (contract_id, period)
    ) STRICT;

    -- A bill is a contract over one period: the key makes a second bill of the same period
    -- impossible, whatever happens to the process that bills.
    CREATE TABLE bills (
        id             INTEGER PRIMARY KEY,
        contract_id    INTEGER NOT NULL REFERENCES contracts(id),
        period         INTEGER NOT NULL,
        twin_id        INTEGER NOT NULL REFERENCES twins(id),
        node_id        INTEGER,
        farm_id        INTEGER,
        secs           INTEGER NOT NULL CHECK (secs > 0),
        policy_version INTEGER NOT NULL,
        usage          TEXT NOT NULL,
        cu             INTEGER NOT NULL CHECK (cu >= 0),
        su             INTEGER NOT NULL CHECK (su >= 0),
        nu             INTEGER NOT NULL CHECK (nu >= 0),
        ipv4           INTEGER NOT NULL CHECK (ipv4 >= 0),
        unique_name    INTEGER NOT NULL CHECK (unique_name >= 0),
        dedicated      INTEGER NOT NULL CHECK (dedicated >= 0),
        pay_percent    INTEGER NOT NULL CHECK (pay_percent BETWEEN 0 AND 100),
        amount         INTEGER NOT NULL CHECK (amount >= 0),
        at             INTEGER NOT NULL,
        UNIQUE (contract_id, period)
    ) STRICT;
    CREATE INDEX bills_twin ON bills(twin_id);

    -- Money moves from one account to another: every row is its own debit and credit, so the
    -- books always balance. Accounts: `twin:ID`, `farm:ID`, `grid`, and the outside world
    -- that deposits come from (`bridge`, `faucet`).
    CREATE TABLE ledger (
        id          INTEGER PRIMARY KEY,
        at          INTEGER NOT NULL,
        debit       TEXT NOT NULL,
        credit      TEXT NOT NULL CHECK (credit != debit),
        amount      INTEGER NOT NULL CHECK (amount > 0),
        kind        TEXT NOT NULL CHECK (kind IN ('deposit', 'farmer_share', 'grid_share')),
        bill_id     INTEGER REFERENCES bills(id),
        reference   TEXT UNIQUE,
        memo        TEXT NOT NULL DEFAULT ''
    ) STRICT;
    CREATE INDEX ledger_bill ON ledger(bill_id);
    CREATE INDEX ledger_credit ON ledger(credit);

    CREATE TABLE bill_payments (
        bill_id INTEGER PRIMARY KEY REFERENCES bills(id),
        at      INTEGER NOT NULL
    ) STRICT;

    CREATE TABLE account_events (
        id          INTEGER PRIMARY KEY,
        twin_id     INTEGER NOT NULL,
        at          INTEGER NOT NULL,
        kind        TEXT NOT NULL,
        contract_id INTEGER,
        bill_id     INTEGER,
        amount      INTEGER NOT NULL,
        balance     INTEGER NOT NULL,
        memo        TEXT NOT NULL DEFAULT ''
    ) STRICT;
    CREATE INDEX account_events_twin ON account_events(twin_id, id);

    -- Derived state, kept in the transaction that writes the entries.
    CREATE TABLE balances (
        account TEXT PRIMARY KEY,
        amount  INTEGER NOT NULL
    ) STRICT;
    CREATE TABLE debts (
        bill_id     INTEGER PRIMARY KEY REFERENCES bills(id),
        twin_id     INTEGER NOT NULL,
        contract_id INTEGER NOT NULL,
        amount      INTEGER NOT NULL
    ) STRICT;
    CREATE INDEX debts_twin ON debts(twin_id, bill_id);
    CREATE INDEX debts_contract ON debts(contract_id);
    CREATE TABLE money_grace (
        contract_id INTEGER PRIMARY KEY REFERENCES contracts(id),
        twin_id     INTEGER NOT NULL,
        since       INTEGER NOT NULL
    ) STRICT;
    CREATE INDEX money_grace_twin ON money_grace(twin_id);

    CREATE TRIGGER ledger_balances AFTER INSERT ON ledger BEGIN
        INSERT INTO balances (account, amount) VALUES (NEW.credit, NEW.amount)
            ON CONFLICT (account) DO UPDATE SET amount = amount + NEW.amount;
        INSERT INTO balances (account, amount) VALUES (NEW.debit, -NEW.amount)
            ON CONFLICT (account) DO UPDATE SET amount = amount - NEW.amount;
    END;

    CREATE TRIGGER pricing_policies_append_only_u BEFORE UPDATE ON pricing_policies
        BEGIN SELECT RAISE(ABORT, 'pricing policies are append-only'); END;
    CREATE TRIGGER pricing_policies_append_only_d BEFORE DELETE ON pricing_policies
        BEGIN SELECT RAISE(ABORT, 'pricing policies are append-only'); END;
    CREATE TRIGGER ledger_append_only_u BEFORE UPDATE ON ledger
        BEGIN SELECT RAISE(ABORT, 'ledger entries are append-only'); END;
    CREATE TRIGGER ledger_append_only_d BEFORE DELETE ON ledger
        BEGIN SELECT RAISE(ABORT, 'ledger entries are append-only'); END;
    CREATE TRIGGER bills_append_only_u BEFORE UPDATE ON bills
        BEGIN SELECT RAISE(ABORT, 'bills are append-only'); END;
    CREATE TRIGGER bills_append_only_d BEFORE DELETE ON bills
        BEGIN SELECT RAISE(ABORT, 'bills are append-only'); END;
    CREATE TRIGGER bill_payments_append_only_u BEFORE UPDATE ON bill_payments
        BEGIN SELECT RAISE(ABORT, 'bill payments are append-only'); END;
    CREATE TRIGGER bill_payments_append_only_d BEFORE DELETE ON bill_payments
        BEGIN SELECT RAISE(ABORT, 'bill payments are append-only'); END;
    CREATE TRIGGER account_events_append_only_u BEFORE UPDATE ON account_events
        BEGIN SELECT RAISE(ABORT, 'account events are append-only'); END;
    CREATE TRIGGER account_events_append_only_d BEFORE DELETE ON account_events
        BEGIN SELECT RAISE(ABORT, 'account events are append-only'); END;
    CREATE TRIGGER consumption_append_only_u BEFORE UPDATE ON consumption
        BEGIN SELECT RAISE(ABORT, 'consumption reports are append-only'); END;
"#;

/// How the grid bills (see [`crate::billing::BillingConfig`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BillingRules {
    /// Length of a period, seconds.
    pub period_secs: u64,
    /// How long after its end a period is billed (nodes report consumption meanwhile).
    pub delay_secs: u64,
    /// How long a contract stays in grace for lack of money before it is cancelled.
    pub grace_secs: u64,
}

impl BillingRules {
    fn period(&self) -> i64 {
        self.period_secs.max(1) as i64
    }

    /// The first period not yet billable at `now`: every period before it is.
    pub fn first_open(&self, now: i64) -> i64 {
        (now - self.delay_secs as i64).div_euclid(self.period())
    }
}

/// What one batch of a billing run did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct BatchOutcome {
    /// Contracts looked at (the batch's size, unless it was the last).
    pub contracts: u32,
    /// The highest contract id looked at (the next batch starts after it).
    pub last_contract: ContractId,
    /// Bills made.
    pub bills: u32,
    /// Bills paid at once.
    pub paid: u32,
    /// Contracts put in grace.
    pub graced: u32,
}

/// Most periods of one contract one run bills (a grid down for longer catches up over runs).
pub const MAX_PERIODS_PER_RUN: i64 = 1000;

fn twin_account(twin: TwinId) -> String {
    format!("twin:{twin}")
}

fn farm_account(farm: FarmId) -> String {
    format!("farm:{farm}")
}

fn corrupt(what: impl Into<String>) -> StoreError {
    StoreError::Corrupt(what.into())
}

/// The policy in force: the newest version, or TFChain's defaults as version 0.
pub fn policy(tx: &Transaction<'_>) -> Result<PolicyVersion, StoreError> {
    let row: Option<(i64, String, Option<TwinId>, i64)> = tx
        .prepare_cached(
            "SELECT version, policy, set_by, set_at FROM pricing_policies ORDER BY version DESC LIMIT 1",
        )
        .and_then(|mut s| {
            s.query_row([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))
                .optional()
        })
        .map_err(db("reading the pricing policy"))?;
    match row {
        None => Ok(PolicyVersion {
            version: 0,
            policy: PricingPolicy::default(),
            set_by: None,
            set_at: 0,
        }),
        Some((version, text, set_by, set_at)) => Ok(PolicyVersion {
            version: version as u32,
            policy: serde_json::from_str(&text)
                .map_err(|e| corrupt(format!("pricing policy {version}: {e}")))?,
            set_by,
            set_at,
        }),
    }
}

pub fn set_policy(
    tx: &Transaction<'_>,
    p: &PricingPolicy,
    by: TwinId,
    now: i64,
) -> Result<PolicyVersion, StoreError> {
    p.validate().map_err(|e| StoreError::Invalid {
        field: e.field.into(),
        reason: e.reason,
    })?;
    let next = policy(tx)?.version + 1;
    let text = serde_json::to_string(p).map_err(|e| corrupt(format!("policy: {e}")))?;
    tx.execute(
        "INSERT INTO pricing_policies (version, policy, set_by, set_at) VALUES (?1, ?2, ?3, ?4)",
        params![next, text, by, now],
    )
    .map_err(db("recording a pricing policy"))?;
    policy(tx)
}

/// What `account` holds (negative only for the outside accounts deposits come from).
pub fn balance_of(tx: &Transaction<'_>, account: &str) -> Result<i64, StoreError> {
    Ok(tx
        .prepare_cached("SELECT amount FROM balances WHERE account = ?1")
        .and_then(|mut s| s.query_row([account], |r| r.get(0)).optional())
        .map_err(db("reading a balance"))?
        .unwrap_or(0))
}

fn twin_balance(tx: &Transaction<'_>, twin: TwinId) -> Result<Amount, StoreError> {
    let b = balance_of(tx, &twin_account(twin))?;
    u64::try_from(b).map_err(|_| corrupt(format!("balance of twin {twin} is negative: {b}")))
}

#[allow(clippy::too_many_arguments)]
fn move_money(
    tx: &Transaction<'_>,
    from: &str,
    to: &str,
    amount: Amount,
    kind: &str,
    bill: Option<u64>,
    reference: Option<&str>,
    memo: &str,
    now: i64,
) -> Result<(), StoreError> {
    if amount == 0 {
        return Ok(());
    }
    tx.prepare_cached(
        "INSERT INTO ledger (at, debit, credit, amount, kind, bill_id, reference, memo)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
    )
    .and_then(|mut s| {
        s.execute(params![
            now,
            from,
            to,
            to_sql("amount", amount).unwrap_or(i64::MAX),
            kind,
            bill.map(|b| b as i64),
            reference,
            memo
        ])
    })
    .map_err(db("writing a ledger entry"))?;
    Ok(())
}

#[allow(clippy::too_many_arguments)]
fn event(
    tx: &Transaction<'_>,
    twin: TwinId,
    kind: AccountEventKind,
    contract: Option<ContractId>,
    bill: Option<u64>,
    amount: Amount,
    memo: &str,
    now: i64,
) -> Result<(), StoreError> {
    let balance = twin_balance(tx, twin)?;
    tx.prepare_cached(
        "INSERT INTO account_events (twin_id, at, kind, contract_id, bill_id, amount, balance, memo)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
    )
    .and_then(|mut s| {
        s.execute(params![
            twin,
            now,
            kind.to_string(),
            contract.map(|c| c as i64),
            bill.map(|b| b as i64),
            amount as i64,
            balance as i64,
            memo
        ])
    })
    .map_err(db("recording an account event"))?;
    Ok(())
}

/// A function that appends an event to a node's log (the store's, which tells the relay).
pub type PushEvent<'a> =
    &'a dyn Fn(&Transaction<'_>, NodeId, &NodeEvent, i64) -> Result<u64, StoreError>;

/// Pays bill `bill` of `twin` from its balance: the farmer's share to the farm, the rest to
/// the grid.
#[allow(clippy::too_many_arguments)]
fn pay(
    tx: &Transaction<'_>,
    twin: TwinId,
    bill: u64,
    contract: ContractId,
    farm: Option<FarmId>,
    amount: Amount,
    pol: &PricingPolicy,
    now: i64,
) -> Result<(), StoreError> {
    let (farmer, grid) = match farm {
        Some(_) => billing::split(pol, amount),
        None => (0, amount),
    };
    let from = twin_account(twin);
    if let Some(f) = farm {
        move_money(
            tx,
            &from,
            &farm_account(f),
            farmer,
            "farmer_share",
            Some(bill),
            None,
            "",
            now,
        )?;
    }
    move_money(
        tx,
        &from,
        "grid",
        grid,
        "grid_share",
        Some(bill),
        None,
        "",
        now,
    )?;
    tx.prepare_cached("INSERT INTO bill_payments (bill_id, at) VALUES (?1, ?2)")
        .and_then(|mut s| s.execute(params![bill as i64, now]))
        .map_err(db("recording a payment"))?;
    event(
        tx,
        twin,
        AccountEventKind::BillPaid,
        Some(contract),
        Some(bill),
        amount,
        "",
        now,
    )
}

/// Puts `contract` in grace for lack of money (pausing a node contract's workloads), unless
/// it is there already.
fn start_grace(
    tx: &Transaction<'_>,
    id: ContractId,
    twin: TwinId,
    state: ContractState,
    node: Option<NodeId>,
    push: PushEvent<'_>,
    now: i64,
) -> Result<bool, StoreError> {
    let known: bool = tx
        .prepare_cached("SELECT EXISTS (SELECT 1 FROM money_grace WHERE contract_id = ?1)")
        .and_then(|mut s| s.query_row([id as i64], |r| r.get(0)))
        .map_err(db("reading grace"))?;
    if known || state == ContractState::Deleted {
        return Ok(false);
    }
    tx.prepare_cached("INSERT INTO money_grace (contract_id, twin_id, since) VALUES (?1, ?2, ?3)")
        .and_then(|mut s| s.execute(params![id as i64, twin, now]))
        .map_err(db("recording grace"))?;
    if state == ContractState::Created {
        contracts::set_state(tx, id, ContractState::GracePeriod, now)?;
        if let Some(node) = node {
            push(
                tx,
                node,
                &NodeEvent::GracePeriodStarted { contract_id: id },
                now,
            )?;
        }
    }
    event(
        tx,
        twin,
        AccountEventKind::GraceStarted,
        Some(id),
        None,
        0,
        "",
        now,
    )?;
    tracing::info!(
        contract = id,
        twin,
        "contract in grace: its twin cannot pay"
    );
    Ok(true)
}

struct Due {
    id: ContractId,
    twin: TwinId,
    kind: String,
    state: ContractState,
    node: Option<NodeId>,
    public_ips: u32,
    created_at: i64,
    updated_at: i64,
    last_billed: Option<i64>,
}

fn state_from(s: &str) -> Result<ContractState, StoreError> {
    match s {
        "created" => Ok(ContractState::Created),
        "grace_period" => Ok(ContractState::GracePeriod),
        "deleted" => Ok(ContractState::Deleted),
        other => Err(corrupt(format!("contract state {other:?}"))),
    }
}

/// Bills the contracts after `after` (at most `limit` of them) for every period that ended
/// before `rules.first_open(now)` and has no bill yet.
pub fn bill_batch(
    tx: &Transaction<'_>,
    rules: &BillingRules,
    after: ContractId,
    limit: u32,
    push: PushEvent<'_>,
    now: i64,
) -> Result<BatchOutcome, StoreError> {
    let open = rules.first_open(now);
    let p = rules.period();
    type Row = (
        i64,
        u32,
        String,
        String,
        Option<u32>,
        i64,
        i64,
        i64,
        Option<i64>,
    );
    let rows: Vec<Row> = tx
        .prepare_cached(
            "SELECT c.id, c.twin_id, c.kind, c.state, c.node_id, c.public_ips, c.created_at, c.updated_at,
                    (SELECT MAX(period) FROM bills b WHERE b.contract_id = c.id)
             FROM contracts c WHERE c.id > ?1 ORDER BY c.id LIMIT ?2",
        )
        .and_then(|mut s| {
            s.query_map(params![after as i64, limit], |r| {
                Ok((
                    r.get(0)?,
                    r.get(1)?,
                    r.get(2)?,
                    r.get(3)?,
                    r.get(4)?,
                    r.get(5)?,
                    r.get(6)?,
                    r.get(7)?,
                    r.get(8)?,
                ))
            })?
            .collect()
        })
        .map_err(db("listing contracts to bill"))?;
    let mut out = BatchOutcome {
        contracts: rows.len() as u32,
        last_contract: after,
        ..BatchOutcome::default()
    };
    if rows.is_empty() {
        return Ok(out);
    }
    let pol = policy(tx)?;
    for (id, twin, kind, state, node, ips, created_at, updated_at, last_billed) in rows {
        let due = Due {
            id: id as ContractId,
            twin,
            kind,
            state: state_from(&state)?,
            node,
            public_ips: ips as u32,
            created_at,
            updated_at,
            last_billed,
        };
        out.last_contract = due.id;
        let ended = if due.state == ContractState::Deleted {
            due.updated_at
        } else {
            i64::MAX
        };
        let first = match due.last_billed {
            Some(l) => l + 1,
            None => due.created_at.div_euclid(p),
        };
        let stop = open.min(first + MAX_PERIODS_PER_RUN);
        for period in first..stop {
            let (start, end) = (period * p, (period + 1) * p);
            let from = start.max(due.created_at);
            let to = end.min(ended);
            if to <= from {
                if ended <= start {
                    break;
                }
                continue;
            }
            let graced = bill_one(tx, rules, &pol, &due, period, (to - from) as u64, push, now)?;
            out.bills += 1;
            match graced {
                Billed::Paid => out.paid += 1,
                Billed::Unpaid { graced: true } => out.graced += 1,
                Billed::Unpaid { graced: false } => {}
            }
        }
    }
    Ok(out)
}

enum Billed {
    Paid,
    Unpaid { graced: bool },
}

fn usage_of(
    tx: &Transaction<'_>,
    due: &Due,
    period: i64,
) -> Result<(Usage, Option<NodeId>, Option<FarmId>), StoreError> {
    let farm_of = |node: NodeId| -> Result<Option<FarmId>, StoreError> {
        tx.prepare_cached("SELECT farm_id FROM nodes WHERE id = ?1")
            .and_then(|mut s| s.query_row([node], |r| r.get(0)).optional())
            .map_err(db("reading a node's farm"))
    };
    match due.kind.as_str() {
        "node" => {
            let node = due
                .node
                .ok_or_else(|| corrupt(format!("node contract {}", due.id)))?;
            // The period's own report, else the capacity of the latest one before it.
            let report: Option<(u64, u64, u64, u64, u64, i64)> = tx
                .prepare_cached(
                    "SELECT cru, mru, sru, hru, public_bytes, period FROM consumption
                     WHERE contract_id = ?1 AND period <= ?2 ORDER BY period DESC LIMIT 1",
                )
                .and_then(|mut s| {
                    s.query_row(params![due.id as i64, period], |r| {
                        Ok((
                            from_sql("cru", r.get(0)?)?,
                            from_sql("mru", r.get(1)?)?,
                            from_sql("sru", r.get(2)?)?,
                            from_sql("hru", r.get(3)?)?,
                            from_sql("public_bytes", r.get(4)?)?,
                            r.get(5)?,
                        ))
                    })
                    .optional()
                })
                .map_err(db("reading consumption"))?;
            let (capacity, public_bytes) = match report {
                Some((cru, mru, sru, hru, bytes, at)) => (
                    Capacity { cru, mru, sru, hru },
                    if at == period { bytes } else { 0 },
                ),
                None => (Capacity::ZERO, 0),
            };
            let on_rented_node: bool = tx
                .prepare_cached(
                    "SELECT EXISTS (SELECT 1 FROM contracts WHERE kind = 'rent' AND node_id = ?1 AND state != 'deleted')",
                )
                .and_then(|mut s| s.query_row([node], |r| r.get(0)))
                .map_err(db("reading a node's rent"))?;
            Ok((
                Usage::Node {
                    capacity,
                    public_ips: due.public_ips,
                    public_bytes,
                    on_rented_node,
                },
                Some(node),
                farm_of(node)?,
            ))
        }
        "rent" => {
            let node = due
                .node
                .ok_or_else(|| corrupt(format!("rent contract {}", due.id)))?;
            let capacity: Capacity = tx
                .prepare_cached("SELECT cru, mru, sru, hru FROM nodes WHERE id = ?1")
                .and_then(|mut s| {
                    s.query_row([node], |r| {
                        Ok(Capacity {
                            cru: from_sql("cru", r.get(0)?)?,
                            mru: from_sql("mru", r.get(1)?)?,
                            sru: from_sql("sru", r.get(2)?)?,
                            hru: from_sql("hru", r.get(3)?)?,
                        })
                    })
                })
                .map_err(db("reading a rented node"))?;
            Ok((
                Usage::Rent {
                    node_capacity: capacity,
                },
                Some(node),
                farm_of(node)?,
            ))
        }
        "name" => Ok((Usage::Name, None, None)),
        other => Err(corrupt(format!("contract kind {other:?}"))),
    }
}

#[allow(clippy::too_many_arguments)]
fn bill_one(
    tx: &Transaction<'_>,
    rules: &BillingRules,
    pol: &PolicyVersion,
    due: &Due,
    period: i64,
    secs: u64,
    push: PushEvent<'_>,
    now: i64,
) -> Result<Billed, StoreError> {
    let (usage, node, farm) = usage_of(tx, due, period)?;
    let lines = billing::price(&pol.policy, &usage, secs);
    let balance = twin_balance(tx, due.twin)?;
    let (pay_percent, amount) =
        billing::discount(&pol.policy, lines.subtotal(), balance, rules.period_secs);
    let usage_text = serde_json::to_string(&usage).map_err(|e| corrupt(format!("usage: {e}")))?;
    tx.prepare_cached(
        "INSERT INTO bills (contract_id, period, twin_id, node_id, farm_id, secs, policy_version, usage,
                            cu, su, nu, ipv4, unique_name, dedicated, pay_percent, amount, at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17)",
    )
    .and_then(|mut s| {
        s.execute(params![
            due.id as i64,
            period,
            due.twin,
            node,
            farm,
            secs as i64,
            pol.version,
            usage_text,
            lines.cu as i64,
            lines.su as i64,
            lines.nu as i64,
            lines.ipv4 as i64,
            lines.unique_name as i64,
            lines.dedicated_discount as i64,
            pay_percent,
            amount as i64,
            now
        ])
    })
    .map_err(db("recording a bill"))?;
    let bill = tx.last_insert_rowid() as u64;
    let in_debt: bool = tx
        .prepare_cached("SELECT EXISTS (SELECT 1 FROM debts WHERE twin_id = ?1)")
        .and_then(|mut s| s.query_row([due.twin], |r| r.get(0)))
        .map_err(db("reading debts"))?;
    if !in_debt && balance >= amount {
        pay(tx, due.twin, bill, due.id, farm, amount, &pol.policy, now)?;
        return Ok(Billed::Paid);
    }
    tx.prepare_cached(
        "INSERT INTO debts (bill_id, twin_id, contract_id, amount) VALUES (?1, ?2, ?3, ?4)",
    )
    .and_then(|mut s| s.execute(params![bill as i64, due.twin, due.id as i64, amount as i64]))
    .map_err(db("recording a debt"))?;
    event(
        tx,
        due.twin,
        AccountEventKind::BillUnpaid,
        Some(due.id),
        Some(bill),
        amount,
        "",
        now,
    )?;
    let node_for_event = if due.kind == "node" { node } else { None };
    let graced = start_grace(tx, due.id, due.twin, due.state, node_for_event, push, now)?;
    Ok(Billed::Unpaid { graced })
}

/// Pays `twin`'s debts, oldest first, while its balance covers them, and ends the grace of
/// each contract left with no debt (resuming a node contract's workloads).
fn settle(
    tx: &Transaction<'_>,
    twin: TwinId,
    push: PushEvent<'_>,
    now: i64,
) -> Result<(), StoreError> {
    let pol = policy(tx)?;
    let debts: Vec<(i64, i64, i64, Option<FarmId>)> = tx
        .prepare_cached(
            "SELECT d.bill_id, d.contract_id, d.amount, b.farm_id FROM debts d JOIN bills b ON b.id = d.bill_id
             WHERE d.twin_id = ?1 ORDER BY d.bill_id",
        )
        .and_then(|mut s| {
            s.query_map([twin], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))?
                .collect()
        })
        .map_err(db("reading debts"))?;
    for (bill, contract, amount, farm) in debts {
        let amount = amount as u64;
        if twin_balance(tx, twin)? < amount {
            break;
        }
        pay(
            tx,
            twin,
            bill as u64,
            contract as ContractId,
            farm,
            amount,
            &pol.policy,
            now,
        )?;
        tx.execute("DELETE FROM debts WHERE bill_id = ?1", [bill])
            .map_err(db("clearing a debt"))?;
    }
    let cleared: Vec<i64> = tx
        .prepare_cached(
            "SELECT g.contract_id FROM money_grace g WHERE g.twin_id = ?1
             AND NOT EXISTS (SELECT 1 FROM debts d WHERE d.contract_id = g.contract_id)",
        )
        .and_then(|mut s| s.query_map([twin], |r| r.get(0))?.collect())
        .map_err(db("reading contracts in grace"))?;
    for id in cleared {
        let id = id as ContractId;
        tx.execute(
            "DELETE FROM money_grace WHERE contract_id = ?1",
            [id as i64],
        )
        .map_err(db("ending grace"))?;
        let Some(c) = contracts::load(tx, id)? else {
            continue;
        };
        if c.state == ContractState::GracePeriod {
            contracts::set_state(tx, id, ContractState::Created, now)?;
            if let Some(node) = c.node_id()
                && matches!(c.kind, zos_types::contract::ContractKind::Node { .. })
            {
                push(
                    tx,
                    node,
                    &NodeEvent::GracePeriodEnded { contract_id: id },
                    now,
                )?;
            }
            event(
                tx,
                twin,
                AccountEventKind::GraceEnded,
                Some(id),
                None,
                0,
                "",
                now,
            )?;
            tracing::info!(
                contract = id,
                twin,
                "grace ended: the contract's debts are paid"
            );
        }
    }
    Ok(())
}

/// Credits `d.amount` to `twin` from `source` (`bridge` or `faucet`), then pays its debts.
/// A deposit whose reference was used before credits nothing.
pub fn deposit(
    tx: &Transaction<'_>,
    twin: TwinId,
    d: &Deposit,
    source: &str,
    push: PushEvent<'_>,
    now: i64,
) -> Result<(), StoreError> {
    if d.amount == 0 || d.amount > billing::MAX_DEPOSIT {
        return Err(StoreError::Invalid {
            field: "amount".into(),
            reason: format!(
                "{} units: a deposit is 1 to {} units",
                d.amount,
                billing::MAX_DEPOSIT
            ),
        });
    }
    if let Some(r) = &d.reference {
        if r.is_empty() || r.len() > 128 {
            return Err(StoreError::Invalid {
                field: "reference".into(),
                reason: "1 to 128 characters".into(),
            });
        }
        let seen: Option<String> = tx
            .prepare_cached("SELECT credit FROM ledger WHERE reference = ?1")
            .and_then(|mut s| s.query_row([r], |r| r.get(0)).optional())
            .map_err(db("reading a deposit reference"))?;
        match seen {
            Some(account) if account == twin_account(twin) => return Ok(()),
            Some(account) => {
                return Err(StoreError::Conflict(format!(
                    "reference {r:?} already credited {account}: a reference is one payment"
                )));
            }
            None => {}
        }
    }
    if d.memo.len() > 256 {
        return Err(StoreError::Invalid {
            field: "memo".into(),
            reason: "at most 256 bytes".into(),
        });
    }
    let exists: bool = tx
        .query_row(
            "SELECT EXISTS (SELECT 1 FROM twins WHERE id = ?1)",
            [twin],
            |r| r.get(0),
        )
        .map_err(db("reading a twin"))?;
    if !exists {
        return Err(StoreError::NotFound(format!("twin {twin} does not exist")));
    }
    move_money(
        tx,
        source,
        &twin_account(twin),
        d.amount,
        "deposit",
        None,
        d.reference.as_deref(),
        &d.memo,
        now,
    )?;
    event(
        tx,
        twin,
        AccountEventKind::Deposit,
        None,
        None,
        d.amount,
        &d.memo,
        now,
    )?;
    settle(tx, twin, push, now)
}

pub fn account(tx: &Transaction<'_>, twin: TwinId) -> Result<Account, StoreError> {
    let debt: i64 = tx
        .prepare_cached("SELECT COALESCE(SUM(amount), 0) FROM debts WHERE twin_id = ?1")
        .and_then(|mut s| s.query_row([twin], |r| r.get(0)))
        .map_err(db("reading debts"))?;
    let in_grace: Vec<i64> = tx
        .prepare_cached(
            "SELECT contract_id FROM money_grace WHERE twin_id = ?1 ORDER BY contract_id",
        )
        .and_then(|mut s| s.query_map([twin], |r| r.get(0))?.collect())
        .map_err(db("reading contracts in grace"))?;
    Ok(Account {
        twin_id: twin,
        balance: twin_balance(tx, twin)?,
        debt: debt as u64,
        in_grace: in_grace.into_iter().map(|c| c as ContractId).collect(),
    })
}

fn kind_from(s: &str) -> Result<AccountEventKind, StoreError> {
    Ok(match s {
        "deposit" => AccountEventKind::Deposit,
        "bill_paid" => AccountEventKind::BillPaid,
        "bill_unpaid" => AccountEventKind::BillUnpaid,
        "grace_started" => AccountEventKind::GraceStarted,
        "grace_ended" => AccountEventKind::GraceEnded,
        "cancelled" => AccountEventKind::Cancelled,
        other => return Err(corrupt(format!("account event kind {other:?}"))),
    })
}

/// At most `limit` events of `twin`, newest first.
pub fn history(
    tx: &Transaction<'_>,
    twin: TwinId,
    limit: u32,
) -> Result<Vec<AccountEvent>, StoreError> {
    type Row = (i64, i64, String, Option<i64>, Option<i64>, i64, i64, String);
    let rows: Vec<Row> = tx
        .prepare_cached(
            "SELECT id, at, kind, contract_id, bill_id, amount, balance, memo FROM account_events
             WHERE twin_id = ?1 ORDER BY id DESC LIMIT ?2",
        )
        .and_then(|mut s| {
            s.query_map(params![twin, limit], |r| {
                Ok((
                    r.get(0)?,
                    r.get(1)?,
                    r.get(2)?,
                    r.get(3)?,
                    r.get(4)?,
                    r.get(5)?,
                    r.get(6)?,
                    r.get(7)?,
                ))
            })?
            .collect()
        })
        .map_err(db("reading account events"))?;
    rows.into_iter()
        .map(|(id, at, kind, contract, bill, amount, balance, memo)| {
            Ok(AccountEvent {
                id: id as u64,
                at,
                kind: kind_from(&kind)?,
                contract_id: contract.map(|c| c as ContractId),
                bill_id: bill.map(|b| b as u64),
                amount: amount as u64,
                balance: balance as u64,
                memo,
            })
        })
        .collect()
}

/// At most `limit` bills of `contract`, newest first.
pub fn bills(
    tx: &Transaction<'_>,
    contract: ContractId,
    limit: u32,
) -> Result<Vec<Bill>, StoreError> {
    type Row = (
        i64,
        i64,
        u32,
        i64,
        i64,
        u32,
        String,
        Option<u32>,
        Option<u32>,
        [i64; 6],
        u8,
        i64,
        bool,
        i64,
    );
    let rows: Vec<Row> = tx
        .prepare_cached(
            "SELECT b.id, b.period, b.twin_id, b.secs, b.contract_id, b.policy_version, b.usage, b.node_id, b.farm_id,
                    b.cu, b.su, b.nu, b.ipv4, b.unique_name, b.dedicated, b.pay_percent, b.amount,
                    EXISTS (SELECT 1 FROM bill_payments p WHERE p.bill_id = b.id), b.at
             FROM bills b WHERE b.contract_id = ?1 ORDER BY b.period DESC LIMIT ?2",
        )
        .and_then(|mut s| {
            s.query_map(params![contract as i64, limit], |r| {
                Ok((
                    r.get(0)?,
                    r.get(1)?,
                    r.get(2)?,
                    r.get(3)?,
                    r.get(4)?,
                    r.get(5)?,
                    r.get(6)?,
                    r.get(7)?,
                    r.get(8)?,
                    [r.get(9)?, r.get(10)?, r.get(11)?, r.get(12)?, r.get(13)?, r.get(14)?],
                    r.get(15)?,
                    r.get(16)?,
                    r.get(17)?,
                    r.get(18)?,
                ))
            })?
            .collect()
        })
        .map_err(db("reading bills"))?;
    rows.into_iter()
        .map(
            |(
                id,
                period,
                twin,
                secs,
                contract,
                version,
                usage,
                node,
                farm,
                l,
                pay,
                amount,
                paid,
                at,
            )| {
                Ok(Bill {
                    id: id as u64,
                    contract_id: contract as ContractId,
                    twin_id: twin,
                    period,
                    secs: secs as u64,
                    policy_version: version,
                    usage: serde_json::from_str(&usage)
                        .map_err(|e| corrupt(format!("usage of bill {id}: {e}")))?,
                    node_id: node,
                    farm_id: farm,
                    lines: Lines {
                        cu: l[0] as u64,
                        su: l[1] as u64,
                        nu: l[2] as u64,
                        ipv4: l[3] as u64,
                        unique_name: l[4] as u64,
                        dedicated_discount: l[5] as u64,
                    },
                    pay_percent: pay,
                    amount: amount as u64,
                    paid,
                    at,
                })
            },
        )
        .collect()
}

pub fn earnings(tx: &Transaction<'_>, farm: FarmId) -> Result<FarmEarnings, StoreError> {
    let (total, bills): (i64, i64) = tx
        .query_row(
            "SELECT COALESCE(SUM(amount), 0), COUNT(*) FROM ledger WHERE credit = ?1",
            [farm_account(farm)],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .map_err(db("reading earnings"))?;
    Ok(FarmEarnings {
        farm_id: farm,
        total: total as u64,
        bills: bills as u64,
    })
}

/// Cancels the contracts whose grace for lack of money began `rules.grace_secs` ago or more
/// (a node contract's workloads are removed). Answers how many.
pub fn expire_grace(
    tx: &Transaction<'_>,
    rules: &BillingRules,
    push: PushEvent<'_>,
    now: i64,
) -> Result<u32, StoreError> {
    let due: Vec<(i64, TwinId)> = tx
        .prepare_cached(
            "SELECT contract_id, twin_id FROM money_grace WHERE since <= ?1 ORDER BY contract_id",
        )
        .and_then(|mut s| {
            s.query_map([now.saturating_sub(rules.grace_secs as i64)], |r| {
                Ok((r.get(0)?, r.get(1)?))
            })?
            .collect()
        })
        .map_err(db("reading contracts in grace"))?;
    let mut n = 0;
    for (id, twin) in due {
        let id = id as ContractId;
        tx.execute(
            "DELETE FROM money_grace WHERE contract_id = ?1",
            [id as i64],
        )
        .map_err(db("ending grace"))?;
        let Some(c) = contracts::load(tx, id)? else {
            continue;
        };
        if c.state == ContractState::Deleted {
            continue;
        }
        contracts::set_state(tx, id, ContractState::Deleted, now)?;
        if let zos_types::contract::ContractKind::Node { node_id, .. } = c.kind {
            push(
                tx,
                node_id,
                &NodeEvent::ContractCancelled { contract_id: id },
                now,
            )?;
        }
        event(
            tx,
            twin,
            AccountEventKind::Cancelled,
            Some(id),
            None,
            0,
            "grace ran out",
            now,
        )?;
        tracing::info!(
            contract = id,
            twin,
            "contract cancelled: grace ran out unpaid"
        );
        n += 1;
    }
    Ok(n)
}

/// Records `node`'s consumption report of `contract` for `period`. A report for a contract of
/// another node, for a period not yet begun or already billed, or a second one for the same
/// period, is refused.
#[allow(clippy::too_many_arguments)]
pub fn record_consumption(
    tx: &Transaction<'_>,
    rules: &BillingRules,
    node: NodeId,
    contract: ContractId,
    period: i64,
    capacity: &Capacity,
    public_bytes: u64,
    now: i64,
) -> Result<(), StoreError> {
    let c = contracts::load(tx, contract)?
        .ok_or_else(|| StoreError::NotFound(format!("contract {contract} does not exist")))?;
    match c.kind {
        zos_types::contract::ContractKind::Node { node_id, .. } if node_id == node => {}
        zos_types::contract::ContractKind::Node { node_id, .. } => {
            return Err(StoreError::Forbidden(format!(
                "contract {contract} is on node {node_id}, not node {node}: a node reports its own contracts"
            )));
        }
        _ => {
            return Err(StoreError::Invalid {
                field: "contract_id".into(),
                reason: format!("contract {contract} is not a node contract"),
            });
        }
    }
    let current = now.div_euclid(rules.period());
    if period > current {
        return Err(StoreError::Invalid {
            field: "period".into(),
            reason: format!("period {period} has not begun (it is period {current})"),
        });
    }
    let billed: bool = tx
        .prepare_cached(
            "SELECT EXISTS (SELECT 1 FROM bills WHERE contract_id = ?1 AND period = ?2)",
        )
        .and_then(|mut s| s.query_row(params![contract as i64, period], |r| r.get(0)))
        .map_err(db("reading bills"))?;
    if billed {
        return Err(StoreError::Conflict(format!(
            "period {period} of contract {contract} is billed already: report each period before it is billed"
        )));
    }
    let inserted = tx
        .prepare_cached(
            "INSERT INTO consumption (contract_id, period, node_id, cru, mru, sru, hru, public_bytes, at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9) ON CONFLICT DO NOTHING",
        )
        .and_then(|mut s| {
            s.execute(params![
                contract as i64,
                period,
                node,
                to_sql("cru", capacity.cru).unwrap_or(i64::MAX),
                to_sql("mru", capacity.mru).unwrap_or(i64::MAX),
                to_sql("sru", capacity.sru).unwrap_or(i64::MAX),
                to_sql("hru", capacity.hru).unwrap_or(i64::MAX),
                to_sql("public_bytes", public_bytes).unwrap_or(i64::MAX),
                now
            ])
        })
        .map_err(db("recording consumption"))?;
    if inserted == 0 {
        return Err(StoreError::Conflict(format!(
            "node {node} already reported period {period} of contract {contract}: a period is reported once"
        )));
    }
    Ok(())
}
