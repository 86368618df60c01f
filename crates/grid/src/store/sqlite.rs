//! The SQLite implementation of [`Store`]: one file, WAL journal, foreign keys on, versioned
//! migrations in `PRAGMA user_version`.

use std::fmt::Write as _;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};

use rusqlite::types::Value;
use rusqlite::{Connection, OptionalExtension, Transaction, params};
use zos_types::registry::{
    AddFarmIp, Farm, FarmIp, FarmPolicy, GridStats, Node, NodeFilter, NodeRegistration, NodeSort,
    PublicConfig, Twin, UptimePoint,
};
use zos_types::{Capacity, FarmId, NodeId, PublicKey, TwinId};

use super::billing::{self, BatchOutcome, BillingRules};
use super::rows::{db, farm_ip_from_row, id_from_sql, node_from_row, to_sql, twin_from_row};
use super::{EventHook, Store, StoreError};
use super::{NewProposal, contracts};
use super::{history, proposals};
use zos_types::Signature;
use zos_types::billing::{
    Account, AccountEvent, Bill, ConsumptionReport, Deposit, FarmEarnings, PolicyVersion,
    PricingPolicy,
};
use zos_types::contract::{
    Contract, ContractFilter, ContractKind, ContractState, NodeEvent, NodeEventRecord,
};
use zos_types::deployment::{ContractId, DeploymentHash};
use zos_types::proposal::{
    MAX_OPEN_PER_TWIN, Proposal, ProposalFilter, ProposalId, ProposalKind, ProposalState,
};

/// The schema migrations, in order. Migration `i` (0-based) brings the database from version `i`
/// to `i + 1`. Never edit a released migration: append a new one.
const MIGRATIONS: &[&str] = &[
    // 1: twins, farms, farm IP pools, nodes.
    r#"
    CREATE TABLE twins (
        id          INTEGER PRIMARY KEY,
        public_key  TEXT NOT NULL UNIQUE,
        relay       TEXT,
        created_at  INTEGER NOT NULL
    ) STRICT;

    CREATE TABLE farms (
        id          INTEGER PRIMARY KEY,
        name        TEXT NOT NULL UNIQUE COLLATE NOCASE,
        twin_id     INTEGER NOT NULL REFERENCES twins(id),
        created_at  INTEGER NOT NULL
    ) STRICT;
    CREATE INDEX farms_twin ON farms(twin_id);

    -- An address is in at most one pool: it is the key.
    CREATE TABLE farm_ips (
        address     INTEGER PRIMARY KEY,
        farm_id     INTEGER NOT NULL REFERENCES farms(id),
        prefix_len  INTEGER NOT NULL CHECK (prefix_len BETWEEN 8 AND 32),
        gateway     INTEGER NOT NULL,
        contract_id INTEGER,
        added_at    INTEGER NOT NULL
    ) STRICT;
    CREATE INDEX farm_ips_farm ON farm_ips(farm_id);

    CREATE TABLE nodes (
        id                   INTEGER PRIMARY KEY,
        twin_id              INTEGER NOT NULL UNIQUE REFERENCES twins(id),
        farm_id              INTEGER NOT NULL REFERENCES farms(id),
        cru                  INTEGER NOT NULL CHECK (cru >= 0),
        mru                  INTEGER NOT NULL CHECK (mru >= 0),
        sru                  INTEGER NOT NULL CHECK (sru >= 0),
        hru                  INTEGER NOT NULL CHECK (hru >= 0),
        reserved_cru         INTEGER NOT NULL CHECK (reserved_cru >= 0),
        reserved_mru         INTEGER NOT NULL CHECK (reserved_mru >= 0),
        reserved_sru         INTEGER NOT NULL CHECK (reserved_sru >= 0),
        reserved_hru         INTEGER NOT NULL CHECK (reserved_hru >= 0),
        used_cru             INTEGER NOT NULL DEFAULT 0 CHECK (used_cru >= 0),
        used_mru             INTEGER NOT NULL DEFAULT 0 CHECK (used_mru >= 0),
        used_sru             INTEGER NOT NULL DEFAULT 0 CHECK (used_sru >= 0),
        used_hru             INTEGER NOT NULL DEFAULT 0 CHECK (used_hru >= 0),
        serial               TEXT NOT NULL,
        virtualized          INTEGER NOT NULL,
        cpu_model            TEXT NOT NULL,
        interfaces           TEXT NOT NULL,
        zos_version          TEXT NOT NULL,
        report_interval_secs INTEGER NOT NULL CHECK (report_interval_secs > 0),
        limited              TEXT,
        public_config        TEXT,
        uptime_secs          INTEGER NOT NULL DEFAULT 0 CHECK (uptime_secs >= 0),
        last_seen            INTEGER,
        created_at           INTEGER NOT NULL,
        updated_at           INTEGER NOT NULL
    ) STRICT;
    CREATE INDEX nodes_farm ON nodes(farm_id);
    "#,
    // 2: contracts and node event logs.
    super::contracts::MIGRATION,
    // 3: farm policies.
    super::farms::MIGRATION,
    // 4: proposals.
    super::proposals::MIGRATION,
    // 5: billing: pricing policies, ledger, bills, consumption reports.
    super::billing::MIGRATION,
    // 6: the history of the grid's totals and of nodes' uptime reports.
    super::history::MIGRATION,
];

/// The schema version this binary writes.
pub const SCHEMA_VERSION: i64 = MIGRATIONS.len() as i64;

const NODE_COLUMNS: &str = "id, twin_id, farm_id, cru, mru, sru, hru, \
    reserved_cru, reserved_mru, reserved_sru, reserved_hru, \
    used_cru, used_mru, used_sru, used_hru, serial, virtualized, cpu_model, interfaces, \
    zos_version, report_interval_secs, limited, public_config, uptime_secs, last_seen, \
    created_at, updated_at";

/// The registry in one SQLite file.
pub struct SqliteStore {
    path: PathBuf,
    conn: Mutex<Connection>,
    /// Nodes that got events in the transaction running now (guarded in effect by `conn`).
    touched: Mutex<Vec<NodeId>>,
    hook: Mutex<Option<EventHook>>,
}

impl std::fmt::Debug for SqliteStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqliteStore")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

impl SqliteStore {
    /// Opens (creating if needed) the database at `path` and brings its schema up to
    /// [`SCHEMA_VERSION`]. A database written by a newer binary is refused.
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        Self::open_with(path, MIGRATIONS)
    }

    fn open_with(path: &Path, migrations: &[&str]) -> Result<Self, StoreError> {
        let open_err = |source: rusqlite::Error| StoreError::Open {
            path: path.into(),
            source: Box::new(source),
        };
        let mut conn = Connection::open(path).map_err(open_err)?;
        conn.busy_timeout(std::time::Duration::from_secs(5))
            .map_err(open_err)?;
        let mode: String = conn
            .pragma_update_and_check(None, "journal_mode", "WAL", |r| r.get(0))
            .map_err(open_err)?;
        if !mode.eq_ignore_ascii_case("wal") {
            return Err(StoreError::Open {
                path: path.into(),
                source: format!("journal mode is {mode}, not wal").into(),
            });
        }
        // FULL: a request the registry acknowledged survives a power cut.
        conn.pragma_update(None, "synchronous", "FULL")
            .map_err(open_err)?;
        conn.pragma_update(None, "foreign_keys", true)
            .map_err(open_err)?;
        migrate(&mut conn, path, migrations)?;
        Ok(Self {
            path: path.into(),
            conn: Mutex::new(conn),
            touched: Mutex::new(Vec::new()),
            hook: Mutex::new(None),
        })
    }

    /// Where the database lives.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn conn(&self) -> MutexGuard<'_, Connection> {
        // A panic while holding the lock leaves no half-done transaction (it rolls back on
        // drop), so the connection is still usable.
        self.conn.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Runs `f` in one transaction: everything it wrote is committed, or nothing when it fails.
    /// Nodes that got events ([`Self::push_event`]) are told to the hook after the commit.
    fn write<T>(
        &self,
        context: &'static str,
        f: impl FnOnce(&Transaction<'_>) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        let mut conn = self.conn();
        self.touched().clear();
        let tx = conn.transaction().map_err(db(context))?;
        let out = f(&tx).and_then(|out| tx.commit().map_err(db(context)).map(|()| out));
        let mut touched = std::mem::take(&mut *self.touched());
        drop(conn);
        let out = out?;
        touched.sort_unstable();
        touched.dedup();
        if !touched.is_empty() {
            let hook = self.hook.lock().unwrap_or_else(|e| e.into_inner()).clone();
            if let Some(hook) = hook {
                for node in touched {
                    hook(node);
                }
            }
        }
        Ok(out)
    }

    fn touched(&self) -> MutexGuard<'_, Vec<NodeId>> {
        self.touched.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Appends `event` to `node`'s log inside `tx`; the hook hears of it once `tx` commits.
    fn push_event(
        &self,
        tx: &Transaction<'_>,
        node: NodeId,
        event: &NodeEvent,
        now: i64,
    ) -> Result<u64, StoreError> {
        let seq = contracts::push_event(tx, node, event, now)?;
        self.touched().push(node);
        Ok(seq)
    }
}

impl SqliteStore {
    /// Approves `p` when its signatures are enough (making, updating or cancelling its
    /// contract), rejects it when they can no longer be; answers it as it is now.
    fn settle(&self, tx: &Transaction<'_>, p: Proposal, now: i64) -> Result<Proposal, StoreError> {
        let tally = p.tally();
        if tally.met {
            let contract = match p.kind {
                ProposalKind::Deploy => {
                    let hash = p.hash.ok_or_else(|| corrupt_proposal(&p))?;
                    contracts::create_node(tx, p.proposer, p.node_id, hash, p.public_ips, now)?
                }
                ProposalKind::Update => {
                    let hash = p.hash.ok_or_else(|| corrupt_proposal(&p))?;
                    let id = p.contract_id.ok_or_else(|| corrupt_proposal(&p))?;
                    live(tx, id).map_err(|e| still_live(e, &p))?;
                    let version = p.deployment.as_ref().map_or(0, |d| d.version);
                    if let Some((done, by)) = proposals::latest_update(tx, id, now)?
                        && done >= version
                    {
                        return Err(StoreError::Conflict(format!(
                            "proposal {by} already updated contract {id} to version {done}: proposal {} (version {version}) can no longer apply; propose the change again from the deployment as it is now",
                            p.id
                        )));
                    }
                    contracts::set_hash(tx, id, hash, now)?;
                    let event = NodeEvent::ContractUpdated {
                        contract_id: id,
                        deployment_hash: hash,
                    };
                    self.push_event(tx, p.node_id, &event, now)?;
                    id
                }
                ProposalKind::Cancel => {
                    let id = p.contract_id.ok_or_else(|| corrupt_proposal(&p))?;
                    live(tx, id).map_err(|e| still_live(e, &p))?;
                    contracts::set_state(tx, id, ContractState::Deleted, now)?;
                    let event = NodeEvent::ContractCancelled { contract_id: id };
                    self.push_event(tx, p.node_id, &event, now)?;
                    id
                }
            };
            proposals::decide(tx, p.id, ProposalState::Approved, Some(contract), now)?;
        } else if tally.dead {
            proposals::decide(tx, p.id, ProposalState::Rejected, None, now)?;
        } else {
            return Ok(p);
        }
        proposals::load(tx, p.id, now)?.ok_or_else(|| corrupt_proposal(&p))
    }
}

fn corrupt_proposal(p: &Proposal) -> StoreError {
    StoreError::Corrupt(format!("proposal {}", p.id))
}

/// The contract an update or cancel is about is gone: say which proposal cannot apply.
fn still_live(e: StoreError, p: &Proposal) -> StoreError {
    match e {
        StoreError::Conflict(m) => StoreError::Conflict(format!(
            "{m}: proposal {} ({}) can no longer apply",
            p.id, p.kind
        )),
        e => e,
    }
}

/// An open proposal that `twin` may vote on, and has not yet.
fn votable(
    tx: &Transaction<'_>,
    id: ProposalId,
    twin: TwinId,
    now: i64,
) -> Result<Proposal, StoreError> {
    let p = proposals::load(tx, id, now)?
        .ok_or_else(|| StoreError::NotFound(format!("proposal {id} does not exist")))?;
    if !p.names(twin) {
        return Err(StoreError::Forbidden(format!(
            "twin {twin} is not among the twins of proposal {id}: only they vote on it"
        )));
    }
    if p.signatures.iter().any(|v| v.twin_id == twin)
        || p.rejections.iter().any(|r| r.twin_id == twin)
    {
        return Err(StoreError::Conflict(format!(
            "twin {twin} already voted on proposal {id}: a twin votes once"
        )));
    }
    match p.state {
        ProposalState::Open => Ok(p),
        ProposalState::Expired => Err(StoreError::Conflict(format!(
            "proposal {id} expired at {}: propose it again",
            p.expires_at
        ))),
        s => Err(StoreError::Conflict(format!(
            "proposal {id} is {s} already"
        ))),
    }
}

/// Checks `signature` by `twin` over `p`'s message.
fn check_vote(
    tx: &Transaction<'_>,
    p: &Proposal,
    twin: TwinId,
    signature: &Signature,
) -> Result<(), StoreError> {
    let key: String = tx
        .query_row("SELECT public_key FROM twins WHERE id = ?1", [twin], |r| {
            r.get(0)
        })
        .optional()
        .map_err(db("reading a twin key"))?
        .ok_or_else(|| StoreError::NotFound(format!("twin {twin} does not exist")))?;
    let key: PublicKey = key
        .parse()
        .map_err(|_| StoreError::Corrupt(format!("public key of twin {twin}")))?;
    if key.verify(&p.message(), signature).is_ok() {
        return Ok(());
    }
    let what = match (p.kind, p.hash) {
        (ProposalKind::Cancel, _) => format!(
            "the cancel of contract {} on node {}",
            p.contract_id.unwrap_or_default(),
            p.node_id
        ),
        (_, Some(h)) => format!("deployment hash {h} on node {}", p.node_id),
        (_, None) => format!("node {}", p.node_id),
    };
    Err(StoreError::Invalid {
        field: "signature".into(),
        reason: format!(
            "twin {twin}'s signature is not over {what} (proposal {}): sign what `zos proposal show {}` shows",
            p.id, p.id
        ),
    })
}

/// The proposal `new` asks for, checked against its node or contract (not yet signed or stored).
fn shape(tx: &Transaction<'_>, new: NewProposal, now: i64) -> Result<Proposal, StoreError> {
    let invalid = |field: &str, reason: String| StoreError::Invalid {
        field: field.into(),
        reason,
    };
    let mine = |twin: TwinId, what: String| {
        if twin == new.proposer {
            Ok(())
        } else {
            Err(StoreError::Forbidden(format!(
                "{what} belongs to twin {twin}, not {}: its own twin proposes changes",
                new.proposer
            )))
        }
    };
    let (node, contract) = match new.kind {
        ProposalKind::Deploy => {
            if new.contract.is_some() {
                return Err(invalid(
                    "contract_id",
                    "a deploy makes its contract when it is approved: leave contract_id out".into(),
                ));
            }
            let node = new
                .node
                .ok_or_else(|| invalid("node_id", "a deploy names its node".into()))?;
            if load_node(tx, node, now)?.is_none() {
                return Err(invalid("node_id", format!("node {node} does not exist")));
            }
            (node, None)
        }
        ProposalKind::Update | ProposalKind::Cancel => {
            let id = new.contract.ok_or_else(|| {
                invalid(
                    "contract_id",
                    format!(
                        "a{} names its contract",
                        if new.kind == ProposalKind::Update {
                            "n update"
                        } else {
                            " cancel"
                        }
                    ),
                )
            })?;
            let c = live(tx, id)?;
            mine(c.twin_id, format!("contract {id}"))?;
            let ContractKind::Node { node_id, .. } = c.kind else {
                return Err(invalid(
                    "contract_id",
                    format!("contract {id} is not a node contract: only deployments are proposed"),
                ));
            };
            if new.node.is_some_and(|n| n != node_id) {
                return Err(invalid(
                    "node_id",
                    format!("contract {id} is on node {node_id}"),
                ));
            }
            (node_id, Some(id))
        }
    };
    if let Some(d) = &new.deployment {
        for r in &d.signature_requirement.requests {
            let known: bool = tx
                .query_row(
                    "SELECT EXISTS (SELECT 1 FROM twins WHERE id = ?1)",
                    [r.twin_id],
                    |row| row.get(0),
                )
                .map_err(db("reading a twin"))?;
            if !known {
                return Err(invalid(
                    "deployment.signature_requirement.requests",
                    format!("twin {} does not exist: list registered twins", r.twin_id),
                ));
            }
        }
    }
    let governor = match contract {
        Some(c) => proposals::governor(tx, c, now)?,
        None => None,
    };
    let mut p = Proposal {
        id: 0,
        kind: new.kind,
        node_id: node,
        contract_id: contract,
        deployment: None,
        hash: None,
        public_ips: 0,
        requests: Vec::new(),
        weight_required: 0,
        proposer: new.proposer,
        created_at: now,
        expires_at: now.saturating_add(new.lifetime_secs as i64),
        state: ProposalState::Open,
        signatures: Vec::new(),
        rejections: Vec::new(),
    };
    match (new.kind, new.deployment) {
        (ProposalKind::Cancel, Some(_)) => {
            return Err(invalid(
                "deployment",
                "a cancel carries no deployment: leave it out".into(),
            ));
        }
        (ProposalKind::Cancel, None) => {
            let g = governor.ok_or_else(|| {
                StoreError::Conflict(format!(
                    "contract {} was not made by a proposal, so no group governs it: its twin cancels it alone (`zos deployment cancel`)",
                    contract.unwrap_or_default()
                ))
            })?;
            p.requests = g.requests;
            p.weight_required = g.weight_required;
        }
        (_, None) => {
            return Err(invalid(
                "deployment",
                format!(
                    "a{} carries its deployment",
                    if new.kind == ProposalKind::Deploy {
                        " deploy"
                    } else {
                        "n update"
                    }
                ),
            ));
        }
        (kind, Some(mut d)) => {
            mine(d.twin_id, "the deployment".into())?;
            let want = contract.unwrap_or(0);
            if d.contract_id != want {
                return Err(invalid(
                    "deployment.contract_id",
                    format!(
                        "is {}, must be {want} (the contract it is for; 0 for a deploy)",
                        d.contract_id
                    ),
                ));
            }
            if let Some(g) = &governor
                && (g.requests != d.signature_requirement.requests
                    || g.weight_required != d.signature_requirement.weight_required)
            {
                return Err(invalid(
                    "deployment.signature_requirement",
                    format!(
                        "contract {want} is governed by the twins and weights of proposal {}: an update keeps them (a new group is a new deployment)",
                        g.id
                    ),
                ));
            }
            d.signature_requirement.signatures.clear();
            let bad =
                |e: zos_types::deployment::DeploymentError| invalid("deployment", e.to_string());
            p.hash = Some(d.hash().map_err(bad)?);
            if kind == ProposalKind::Deploy {
                p.public_ips = d.public_ipv4_count().map_err(bad)?;
            }
            p.requests = d.signature_requirement.requests.clone();
            p.weight_required = d.signature_requirement.weight_required;
            p.deployment = Some(d);
        }
    }
    Ok(p)
}

fn schema_version(conn: &Connection) -> Result<i64, rusqlite::Error> {
    conn.pragma_query_value(None, "user_version", |r| r.get(0))
}

fn migrate(conn: &mut Connection, path: &Path, migrations: &[&str]) -> Result<(), StoreError> {
    let found = schema_version(conn).map_err(db("reading the schema version"))?;
    let supported = migrations.len() as i64;
    if found > supported {
        return Err(StoreError::TooNew {
            path: path.into(),
            found,
            supported,
        });
    }
    for (i, sql) in migrations.iter().enumerate().skip(found as usize) {
        let tx = conn.transaction().map_err(db("starting a migration"))?;
        tx.execute_batch(sql).map_err(db("migrating the schema"))?;
        tx.pragma_update(None, "user_version", i as i64 + 1)
            .map_err(db("recording the schema version"))?;
        tx.commit().map_err(db("committing a migration"))?;
        tracing::info!(path = %path.display(), version = i + 1, "database schema migrated");
    }
    Ok(())
}

fn load_twin(
    conn: &Connection,
    clause: &str,
    value: &dyn rusqlite::ToSql,
) -> Result<Option<Twin>, StoreError> {
    conn.prepare_cached(&format!(
        "SELECT id, public_key, relay, created_at FROM twins WHERE {clause}"
    ))
    .and_then(|mut s| s.query_row([value], twin_from_row).optional())
    .map_err(db("reading a twin"))
}

fn load_farm_ips(conn: &Connection, farm: FarmId) -> Result<Vec<FarmIp>, StoreError> {
    let mut stmt = conn
        .prepare_cached(
            "SELECT address, prefix_len, gateway, contract_id FROM farm_ips \
             WHERE farm_id = ?1 ORDER BY address",
        )
        .map_err(db("reading farm IPs"))?;
    stmt.query_map([farm], farm_ip_from_row)
        .and_then(|rows| rows.collect())
        .map_err(db("reading farm IPs"))
}

fn load_farm(
    conn: &Connection,
    clause: &str,
    value: &dyn rusqlite::ToSql,
) -> Result<Option<Farm>, StoreError> {
    let row = conn
        .prepare_cached(&format!(
            "SELECT id, name, twin_id, created_at FROM farms WHERE {clause}"
        ))
        .and_then(|mut s| {
            s.query_row([value], |r| {
                Ok((
                    id_from_sql(r.get(0)?)?,
                    r.get::<_, String>(1)?,
                    id_from_sql(r.get(2)?)?,
                    r.get::<_, i64>(3)?,
                ))
            })
            .optional()
        })
        .map_err(db("reading a farm"))?;
    let Some((id, name, twin_id, created_at)) = row else {
        return Ok(None);
    };
    Ok(Some(Farm {
        id,
        name,
        twin_id,
        public_ips: load_farm_ips(conn, id)?,
        policy: super::farms::policy(conn, id)?.unwrap_or_default(),
        created_at,
    }))
}

fn load_node(conn: &Connection, id: NodeId, now: i64) -> Result<Option<Node>, StoreError> {
    conn.prepare_cached(&format!("SELECT {NODE_COLUMNS} FROM nodes WHERE id = ?1"))
        .and_then(|mut s| s.query_row([id], |r| node_from_row(r, now)).optional())
        .map_err(db("reading a node"))
}

fn loaded(tx: &Transaction<'_>, id: ContractId) -> Result<Contract, StoreError> {
    contracts::load(tx, id)?
        .ok_or_else(|| StoreError::NotFound(format!("contract {id} does not exist")))
}

/// A contract that is not deleted.
fn live(tx: &Transaction<'_>, id: ContractId) -> Result<Contract, StoreError> {
    let c = loaded(tx, id)?;
    if c.state == ContractState::Deleted {
        return Err(StoreError::Conflict(format!("contract {id} is cancelled")));
    }
    Ok(c)
}

fn inserted_id(conn: &Connection, what: &str) -> Result<u32, StoreError> {
    u32::try_from(conn.last_insert_rowid())
        .map_err(|_| StoreError::Conflict(format!("no {what} ids left")))
}

impl Store for SqliteStore {
    fn twin_key(&self, id: TwinId) -> Result<Option<PublicKey>, StoreError> {
        let conn = self.conn();
        let key: Option<String> = conn
            .prepare_cached("SELECT public_key FROM twins WHERE id = ?1")
            .and_then(|mut s| s.query_row([id], |r| r.get(0)).optional())
            .map_err(db("reading a twin key"))?;
        key.map(|k| {
            k.parse()
                .map_err(|_| StoreError::Corrupt(format!("public key of twin {id}")))
        })
        .transpose()
    }

    fn create_twin(
        &self,
        key: PublicKey,
        relay: Option<String>,
        now: i64,
    ) -> Result<Twin, StoreError> {
        self.write("creating a twin", |tx| {
            if let Some(t) = load_twin(tx, "public_key = ?1", &key.to_string())? {
                return Err(StoreError::Conflict(format!(
                    "public key {key} already belongs to twin {}",
                    t.id
                )));
            }
            tx.prepare_cached(
                "INSERT INTO twins (public_key, relay, created_at) VALUES (?1, ?2, ?3)",
            )
            .and_then(|mut s| s.execute(params![key.to_string(), relay, now]))
            .map_err(db("creating a twin"))?;
            let id = inserted_id(tx, "twin")?;
            Ok(Twin {
                id,
                public_key: key,
                relay,
                created_at: now,
            })
        })
    }

    fn twin(&self, id: TwinId) -> Result<Option<Twin>, StoreError> {
        load_twin(&self.conn(), "id = ?1", &id)
    }

    fn twin_by_key(&self, key: &PublicKey) -> Result<Option<Twin>, StoreError> {
        load_twin(&self.conn(), "public_key = ?1", &key.to_string())
    }

    fn create_farm(&self, name: &str, twin: TwinId, now: i64) -> Result<Farm, StoreError> {
        self.write("creating a farm", |tx| {
            if let Some(f) = load_farm(tx, "name = ?1", &name)? {
                return Err(StoreError::Conflict(format!(
                    "farm name {name:?} is taken by farm {} ({:?})",
                    f.id, f.name
                )));
            }
            tx.prepare_cached("INSERT INTO farms (name, twin_id, created_at) VALUES (?1, ?2, ?3)")
                .and_then(|mut s| s.execute(params![name, twin, now]))
                .map_err(db("creating a farm"))?;
            let id = inserted_id(tx, "farm")?;
            Ok(Farm {
                id,
                name: name.into(),
                twin_id: twin,
                public_ips: Vec::new(),
                policy: FarmPolicy::default(),
                created_at: now,
            })
        })
    }

    fn farm(&self, id: FarmId) -> Result<Option<Farm>, StoreError> {
        load_farm(&self.conn(), "id = ?1", &id)
    }

    fn farm_by_name(&self, name: &str) -> Result<Option<Farm>, StoreError> {
        load_farm(&self.conn(), "name = ?1", &name)
    }

    fn farms(&self) -> Result<Vec<Farm>, StoreError> {
        let conn = self.conn();
        let ids: Vec<i64> = conn
            .prepare_cached("SELECT id FROM farms ORDER BY id")
            .and_then(|mut s| s.query_map([], |r| r.get(0))?.collect())
            .map_err(db("listing farms"))?;
        let mut farms = Vec::with_capacity(ids.len());
        for id in ids {
            if let Some(f) = load_farm(&conn, "id = ?1", &id)? {
                farms.push(f);
            }
        }
        Ok(farms)
    }

    fn add_farm_ip(&self, farm: FarmId, ip: &AddFarmIp, now: i64) -> Result<Farm, StoreError> {
        self.write("adding a farm IP", |tx| {
            if load_farm(tx, "id = ?1", &farm)?.is_none() {
                return Err(StoreError::NotFound(format!("farm {farm} does not exist")));
            }
            let address = u32::from(ip.ip.addr());
            super::farms::ensure_unclaimed(tx, farm, ip.ip.addr())?;
            tx.prepare_cached(
                "INSERT INTO farm_ips (address, farm_id, prefix_len, gateway, added_at) \
                 VALUES (?1, ?2, ?3, ?4, ?5)",
            )
            .and_then(|mut s| {
                s.execute(params![
                    address,
                    farm,
                    ip.ip.prefix_len(),
                    u32::from(ip.gateway),
                    now
                ])
            })
            .map_err(db("adding a farm IP"))?;
            load_farm(tx, "id = ?1", &farm)?
                .ok_or_else(|| StoreError::NotFound(format!("farm {farm} does not exist")))
        })
    }

    fn remove_farm_ip(&self, farm: FarmId, ip: Ipv4Addr) -> Result<Farm, StoreError> {
        self.write("removing a farm IP", |tx| {
            if load_farm(tx, "id = ?1", &farm)?.is_none() {
                return Err(StoreError::NotFound(format!("farm {farm} does not exist")));
            }
            let row: Option<(i64, Option<i64>)> = tx
                .prepare_cached("SELECT farm_id, contract_id FROM farm_ips WHERE address = ?1")
                .and_then(|mut s| {
                    s.query_row([u32::from(ip)], |r| Ok((r.get(0)?, r.get(1)?)))
                        .optional()
                })
                .map_err(db("removing a farm IP"))?;
            match row {
                Some((owner, _)) if owner != i64::from(farm) => {
                    return Err(StoreError::NotFound(format!(
                        "{ip} is not in the pool of farm {farm}"
                    )));
                }
                None => {
                    return Err(StoreError::NotFound(format!(
                        "{ip} is not in the pool of farm {farm}"
                    )));
                }
                Some((_, Some(contract))) => {
                    return Err(StoreError::Conflict(format!(
                        "{ip} is held by contract {contract}: cancel the contract first"
                    )));
                }
                Some((_, None)) => {}
            }
            tx.prepare_cached("DELETE FROM farm_ips WHERE address = ?1")
                .and_then(|mut s| s.execute([u32::from(ip)]))
                .map_err(db("removing a farm IP"))?;
            load_farm(tx, "id = ?1", &farm)?
                .ok_or_else(|| StoreError::NotFound(format!("farm {farm} does not exist")))
        })
    }

    fn set_farm_policy(&self, farm: FarmId, policy: &FarmPolicy) -> Result<Farm, StoreError> {
        self.write("setting a farm policy", |tx| {
            super::farms::set_policy(tx, farm, policy)?;
            load_farm(tx, "id = ?1", &farm)?
                .ok_or_else(|| StoreError::NotFound(format!("farm {farm} does not exist")))
        })
    }

    fn farm_ips(&self, farm: FarmId) -> Result<Vec<FarmIp>, StoreError> {
        let conn = self.conn();
        let exists: Option<i64> = conn
            .prepare_cached("SELECT id FROM farms WHERE id = ?1")
            .and_then(|mut s| s.query_row([farm], |r| r.get(0)).optional())
            .map_err(db("reading a farm"))?;
        if exists.is_none() {
            return Err(StoreError::NotFound(format!("farm {farm} does not exist")));
        }
        load_farm_ips(&conn, farm)
    }

    fn upsert_node(
        &self,
        twin: TwinId,
        reg: &NodeRegistration,
        now: i64,
    ) -> Result<(Node, bool), StoreError> {
        self.write("registering a node", |tx| {
            let farm_exists: Option<i64> = tx
                .prepare_cached("SELECT id FROM farms WHERE id = ?1")
                .and_then(|mut s| s.query_row([reg.farm_id], |r| r.get(0)).optional())
                .map_err(db("registering a node"))?;
            if farm_exists.is_none() {
                return Err(StoreError::Invalid {
                    field: "farm_id".into(),
                    reason: format!("farm {} does not exist", reg.farm_id),
                });
            }
            let existing: Option<(i64, i64)> = tx
                .prepare_cached("SELECT id, farm_id FROM nodes WHERE twin_id = ?1")
                .and_then(|mut s| {
                    s.query_row([twin], |r| Ok((r.get(0)?, r.get(1)?)))
                        .optional()
                })
                .map_err(db("registering a node"))?;
            // Joining a farm (new, or moving in) needs its admission; staying does not.
            if existing.is_none_or(|(_, farm)| farm != i64::from(reg.farm_id)) {
                super::farms::admit(tx, reg.farm_id, reg.admission.as_ref(), now)?;
            }
            let c = &reg.capacity;
            let r = &reg.reserved;
            let interfaces = serde_json::to_string(&reg.interfaces).expect("interfaces serialize");
            let numbers = [
                to_sql("capacity.cru", c.cru)?,
                to_sql("capacity.mru", c.mru)?,
                to_sql("capacity.sru", c.sru)?,
                to_sql("capacity.hru", c.hru)?,
                to_sql("reserved.cru", r.cru)?,
                to_sql("reserved.mru", r.mru)?,
                to_sql("reserved.sru", r.sru)?,
                to_sql("reserved.hru", r.hru)?,
                to_sql("report_interval_secs", reg.report_interval_secs)?,
            ];
            let values = params![
                twin,
                reg.farm_id,
                numbers[0],
                numbers[1],
                numbers[2],
                numbers[3],
                numbers[4],
                numbers[5],
                numbers[6],
                numbers[7],
                reg.hardware.serial,
                reg.hardware.virtualized,
                reg.hardware.cpu_model,
                interfaces,
                reg.zos_version,
                numbers[8],
                reg.limited,
                now,
            ];
            let (id, created) = match existing {
                None => {
                    tx.prepare_cached(
                        "INSERT INTO nodes (twin_id, farm_id, cru, mru, sru, hru, \
                         reserved_cru, reserved_mru, reserved_sru, reserved_hru, \
                         serial, virtualized, cpu_model, interfaces, zos_version, \
                         report_interval_secs, limited, created_at, updated_at) \
                         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, \
                         ?15, ?16, ?17, ?18, ?18)",
                    )
                    .and_then(|mut s| s.execute(values))
                    .map_err(db("registering a node"))?;
                    (inserted_id(tx, "node")?, true)
                }
                Some((id, old_farm)) => {
                    tx.prepare_cached(
                        "UPDATE nodes SET farm_id = ?2, cru = ?3, mru = ?4, sru = ?5, hru = ?6, \
                         reserved_cru = ?7, reserved_mru = ?8, reserved_sru = ?9, \
                         reserved_hru = ?10, serial = ?11, virtualized = ?12, cpu_model = ?13, \
                         interfaces = ?14, zos_version = ?15, report_interval_secs = ?16, \
                         limited = ?17, updated_at = ?18 WHERE twin_id = ?1",
                    )
                    .and_then(|mut s| s.execute(values))
                    .map_err(db("updating a node"))?;
                    if old_farm != i64::from(reg.farm_id) {
                        // The public configuration was the old farmer's: it does not follow
                        // the node into another farm's network.
                        let cleared = tx
                            .prepare_cached(
                                "UPDATE nodes SET public_config = NULL \
                                 WHERE id = ?1 AND public_config IS NOT NULL",
                            )
                            .and_then(|mut s| s.execute([id]))
                            .map_err(db("updating a node"))?;
                        if cleared > 0 {
                            let node = u32::try_from(id)
                                .map_err(|_| StoreError::Corrupt(format!("node id {id}")))?;
                            self.push_event(tx, node, &NodeEvent::PublicConfigChanged, now)?;
                        }
                        tracing::info!(
                            node = id,
                            from = old_farm,
                            to = reg.farm_id,
                            "node moved to another farm"
                        );
                    }
                    let id = u32::try_from(id)
                        .map_err(|_| StoreError::Corrupt(format!("node id {id}")))?;
                    (id, false)
                }
            };
            let node = load_node(tx, id, now)?
                .ok_or_else(|| StoreError::Corrupt(format!("node {id} vanished")))?;
            Ok((node, created))
        })
    }

    fn set_public_config(
        &self,
        node: NodeId,
        config: &PublicConfig,
        now: i64,
    ) -> Result<Node, StoreError> {
        self.write("setting a public config", |tx| {
            let farm: Option<FarmId> = tx
                .prepare_cached("SELECT farm_id FROM nodes WHERE id = ?1")
                .and_then(|mut s| s.query_row([node], |r| r.get(0)).optional())
                .map_err(db("reading a node"))?;
            let farm =
                farm.ok_or_else(|| StoreError::NotFound(format!("node {node} does not exist")))?;
            super::farms::ensure_config_unclaimed(tx, farm, config)?;
            let text = serde_json::to_string(config).expect("public config serializes");
            let n = tx
                .prepare_cached(
                    "UPDATE nodes SET public_config = ?2, updated_at = ?3 WHERE id = ?1",
                )
                .and_then(|mut s| s.execute(params![node, text, now]))
                .map_err(db("setting a public config"))?;
            if n == 0 {
                return Err(StoreError::NotFound(format!("node {node} does not exist")));
            }
            self.push_event(tx, node, &NodeEvent::PublicConfigChanged, now)?;
            load_node(tx, node, now)?
                .ok_or_else(|| StoreError::NotFound(format!("node {node} does not exist")))
        })
    }

    fn report_uptime(
        &self,
        node: NodeId,
        uptime_secs: u64,
        used: Option<Capacity>,
        now: i64,
    ) -> Result<Node, StoreError> {
        let uptime = to_sql("uptime_secs", uptime_secs)?;
        let used = used
            .map(|u| -> Result<[i64; 4], StoreError> {
                Ok([
                    to_sql("used.cru", u.cru)?,
                    to_sql("used.mru", u.mru)?,
                    to_sql("used.sru", u.sru)?,
                    to_sql("used.hru", u.hru)?,
                ])
            })
            .transpose()?;
        self.write("recording uptime", |tx| {
            let n = tx
                .prepare_cached("UPDATE nodes SET uptime_secs = ?2, last_seen = ?3 WHERE id = ?1")
                .and_then(|mut s| s.execute(params![node, uptime, now]))
                .map_err(db("recording uptime"))?;
            if n == 0 {
                return Err(StoreError::NotFound(format!("node {node} does not exist")));
            }
            history::record_uptime(tx, node, uptime, now)?;
            if let Some([cru, mru, sru, hru]) = used {
                tx.prepare_cached(
                    "UPDATE nodes SET used_cru = ?2, used_mru = ?3, used_sru = ?4, used_hru = ?5 \
                     WHERE id = ?1",
                )
                .and_then(|mut s| s.execute(params![node, cru, mru, sru, hru]))
                .map_err(db("recording used capacity"))?;
            }
            load_node(tx, node, now)?
                .ok_or_else(|| StoreError::NotFound(format!("node {node} does not exist")))
        })
    }

    fn node(&self, id: NodeId, now: i64) -> Result<Option<Node>, StoreError> {
        load_node(&self.conn(), id, now)
    }

    fn nodes(&self, f: &NodeFilter, now: i64) -> Result<Vec<Node>, StoreError> {
        let clamp = |v: Option<u64>| v.map(|v| i64::try_from(v).unwrap_or(i64::MAX));
        let limit = f
            .limit
            .unwrap_or(NodeFilter::DEFAULT_LIMIT)
            .min(NodeFilter::MAX_LIMIT);
        let key = match f.sort.unwrap_or_default() {
            NodeSort::Id => "id",
            NodeSort::Farm => "farm_id",
            NodeSort::FreeCru => "MAX(cru - reserved_cru - used_cru, 0)",
            NodeSort::FreeMru => "MAX(mru - reserved_mru - used_mru, 0)",
            NodeSort::FreeSru => "MAX(sru - reserved_sru - used_sru, 0)",
            NodeSort::FreeHru => "MAX(hru - reserved_hru - used_hru, 0)",
            NodeSort::Uptime => "uptime_secs",
            NodeSort::LastSeen => "COALESCE(last_seen, 0)",
            NodeSort::Version => "zos_version",
        };
        let dir = if f.desc == Some(true) { "DESC" } else { "ASC" };
        let sql = format!(
            "SELECT {NODE_COLUMNS} FROM nodes WHERE \
             (?1 IS NULL OR farm_id = ?1) AND (?2 IS NULL OR twin_id = ?2) \
             AND (?3 IS NULL OR ?3 = (last_seen IS NOT NULL \
                  AND ?4 - last_seen < {periods} * report_interval_secs)) \
             AND (?5 IS NULL OR MAX(cru - reserved_cru - used_cru, 0) >= ?5) \
             AND (?6 IS NULL OR MAX(mru - reserved_mru - used_mru, 0) >= ?6) \
             AND (?7 IS NULL OR MAX(sru - reserved_sru - used_sru, 0) >= ?7) \
             AND (?8 IS NULL OR MAX(hru - reserved_hru - used_hru, 0) >= ?8) \
             AND (?11 IS NULL OR zos_version = ?11) \
             ORDER BY {key} {dir}, id {dir} LIMIT ?9 OFFSET ?10",
            periods = zos_types::registry::ONLINE_PERIODS
        );
        let conn = self.conn();
        let mut stmt = conn.prepare_cached(&sql).map_err(db("listing nodes"))?;
        stmt.query_map(
            params![
                f.farm_id,
                f.twin_id,
                f.online,
                now,
                clamp(f.free_cru),
                clamp(f.free_mru),
                clamp(f.free_sru),
                clamp(f.free_hru),
                limit,
                f.offset.unwrap_or(0),
                f.zos_version,
            ],
            |r| node_from_row(r, now),
        )
        .and_then(|rows| rows.collect())
        .map_err(db("listing nodes"))
    }

    fn create_node_contract(
        &self,
        twin: TwinId,
        node: NodeId,
        hash: DeploymentHash,
        public_ips: u32,
        now: i64,
    ) -> Result<Contract, StoreError> {
        self.write("creating a node contract", |tx| {
            let id = contracts::create_node(tx, twin, node, hash, public_ips, now)?;
            loaded(tx, id)
        })
    }

    fn create_name_contract(
        &self,
        twin: TwinId,
        name: &str,
        now: i64,
    ) -> Result<Contract, StoreError> {
        self.write("creating a name contract", |tx| {
            let id = contracts::create_name(tx, twin, name, now)?;
            loaded(tx, id)
        })
    }

    fn create_rent_contract(
        &self,
        twin: TwinId,
        node: NodeId,
        now: i64,
    ) -> Result<Contract, StoreError> {
        self.write("creating a rent contract", |tx| {
            let id = contracts::create_rent(tx, twin, node, now)?;
            loaded(tx, id)
        })
    }

    fn contract(&self, id: ContractId) -> Result<Option<Contract>, StoreError> {
        self.write("reading a contract", |tx| contracts::load(tx, id))
    }

    fn contracts(&self, filter: &ContractFilter) -> Result<Vec<Contract>, StoreError> {
        self.write("listing contracts", |tx| contracts::list(tx, filter))
    }

    fn update_node_contract(
        &self,
        id: ContractId,
        hash: DeploymentHash,
        now: i64,
    ) -> Result<Contract, StoreError> {
        self.write("updating a contract", |tx| {
            let c = live(tx, id)?;
            let ContractKind::Node { node_id, .. } = c.kind else {
                return Err(StoreError::Conflict(format!(
                    "contract {id} is not a node contract: only node contracts carry a deployment hash"
                )));
            };
            contracts::set_hash(tx, id, hash, now)?;
            let event = NodeEvent::ContractUpdated {
                contract_id: id,
                deployment_hash: hash,
            };
            self.push_event(tx, node_id, &event, now)?;
            loaded(tx, id)
        })
    }

    fn cancel_contract(&self, id: ContractId, now: i64) -> Result<Contract, StoreError> {
        self.write("cancelling a contract", |tx| {
            let c = live(tx, id)?;
            contracts::set_state(tx, id, ContractState::Deleted, now)?;
            if let ContractKind::Node { node_id, .. } = c.kind {
                let event = NodeEvent::ContractCancelled { contract_id: id };
                self.push_event(tx, node_id, &event, now)?;
            }
            loaded(tx, id)
        })
    }

    fn set_grace(&self, id: ContractId, grace: bool, now: i64) -> Result<Contract, StoreError> {
        self.write("changing a grace period", |tx| {
            let c = live(tx, id)?;
            let (from, to) = if grace {
                (ContractState::Created, ContractState::GracePeriod)
            } else {
                (ContractState::GracePeriod, ContractState::Created)
            };
            if c.state != from {
                let verb = if grace { "start" } else { "end" };
                return Err(StoreError::Conflict(format!(
                    "contract {id} is {}, so its grace period cannot {verb}",
                    contracts::state_str(c.state)
                )));
            }
            contracts::set_state(tx, id, to, now)?;
            if let ContractKind::Node { node_id, .. } = c.kind {
                let event = if grace {
                    NodeEvent::GracePeriodStarted { contract_id: id }
                } else {
                    NodeEvent::GracePeriodEnded { contract_id: id }
                };
                self.push_event(tx, node_id, &event, now)?;
            }
            loaded(tx, id)
        })
    }

    fn node_events(
        &self,
        node: NodeId,
        after: u64,
        limit: u32,
    ) -> Result<Vec<NodeEventRecord>, StoreError> {
        self.write("reading events", |tx| {
            contracts::events(tx, node, after, limit)
        })
    }

    fn on_node_events(&self, hook: EventHook) {
        *self.hook.lock().unwrap_or_else(|e| e.into_inner()) = Some(hook);
    }

    fn create_proposal(&self, new: NewProposal, now: i64) -> Result<Proposal, StoreError> {
        self.write("creating a proposal", |tx| {
            let open = proposals::open_count(tx, new.proposer, now)?;
            if open >= MAX_OPEN_PER_TWIN {
                return Err(StoreError::Conflict(format!(
                    "twin {} has {open} open proposals, at most {MAX_OPEN_PER_TWIN}: wait for them to close or expire",
                    new.proposer
                )));
            }
            let (proposer, signature) = (new.proposer, new.signature);
            let p = shape(tx, new, now)?;
            check_vote(tx, &p, proposer, &signature)?;
            let id = proposals::insert(tx, &p)?;
            proposals::vote(tx, id, proposer, Some(&signature), "", now)?;
            let p = proposals::load(tx, id, now)?
                .ok_or_else(|| StoreError::Corrupt(format!("proposal {id}")))?;
            self.settle(tx, p, now)
        })
    }

    fn proposal(&self, id: ProposalId, now: i64) -> Result<Option<Proposal>, StoreError> {
        self.write("reading a proposal", |tx| proposals::load(tx, id, now))
    }

    fn proposals(
        &self,
        twin: TwinId,
        filter: &ProposalFilter,
        now: i64,
    ) -> Result<Vec<Proposal>, StoreError> {
        self.write("listing proposals", |tx| {
            proposals::list(tx, twin, filter, now)
        })
    }

    fn sign_proposal(
        &self,
        id: ProposalId,
        twin: TwinId,
        signature: Signature,
        now: i64,
    ) -> Result<Proposal, StoreError> {
        self.write("signing a proposal", |tx| {
            let p = votable(tx, id, twin, now)?;
            check_vote(tx, &p, twin, &signature)?;
            proposals::vote(tx, id, twin, Some(&signature), "", now)?;
            let p = proposals::load(tx, id, now)?
                .ok_or_else(|| StoreError::Corrupt(format!("proposal {id}")))?;
            self.settle(tx, p, now)
        })
    }

    fn reject_proposal(
        &self,
        id: ProposalId,
        twin: TwinId,
        reason: &str,
        now: i64,
    ) -> Result<Proposal, StoreError> {
        self.write("rejecting a proposal", |tx| {
            votable(tx, id, twin, now)?;
            proposals::vote(tx, id, twin, None, reason, now)?;
            let p = proposals::load(tx, id, now)?
                .ok_or_else(|| StoreError::Corrupt(format!("proposal {id}")))?;
            self.settle(tx, p, now)
        })
    }

    fn contract_governor(
        &self,
        contract: ContractId,
        now: i64,
    ) -> Result<Option<ProposalId>, StoreError> {
        self.write("reading a contract's proposal", |tx| {
            Ok(proposals::governor(tx, contract, now)?.map(|p| p.id))
        })
    }

    fn pricing_policy(&self) -> Result<PolicyVersion, StoreError> {
        self.write("reading the pricing policy", billing::policy)
    }

    fn set_pricing_policy(
        &self,
        policy: &PricingPolicy,
        by: TwinId,
        now: i64,
    ) -> Result<PolicyVersion, StoreError> {
        self.write("setting the pricing policy", |tx| {
            billing::set_policy(tx, policy, by, now)
        })
    }

    fn deposit(
        &self,
        twin: TwinId,
        deposit: &Deposit,
        source: &str,
        now: i64,
    ) -> Result<Account, StoreError> {
        self.write("depositing", |tx| {
            billing::deposit(
                tx,
                twin,
                deposit,
                source,
                &|tx, n, e, at| self.push_event(tx, n, e, at),
                now,
            )?;
            billing::account(tx, twin)
        })
    }

    fn account(&self, twin: TwinId) -> Result<Account, StoreError> {
        self.write("reading an account", |tx| billing::account(tx, twin))
    }

    fn account_history(&self, twin: TwinId, limit: u32) -> Result<Vec<AccountEvent>, StoreError> {
        self.write("reading an account's history", |tx| {
            billing::history(tx, twin, limit)
        })
    }

    fn bills(&self, contract: ContractId, limit: u32) -> Result<Vec<Bill>, StoreError> {
        self.write("reading bills", |tx| billing::bills(tx, contract, limit))
    }

    fn farm_earnings(&self, farm: FarmId) -> Result<FarmEarnings, StoreError> {
        self.write("reading earnings", |tx| billing::earnings(tx, farm))
    }

    fn bill_batch(
        &self,
        rules: &BillingRules,
        after: ContractId,
        limit: u32,
        now: i64,
    ) -> Result<BatchOutcome, StoreError> {
        self.write("billing", |tx| {
            billing::bill_batch(
                tx,
                rules,
                after,
                limit,
                &|tx, n, e, at| self.push_event(tx, n, e, at),
                now,
            )
        })
    }

    fn expire_grace(&self, rules: &BillingRules, now: i64) -> Result<u32, StoreError> {
        self.write("ending grace periods", |tx| {
            billing::expire_grace(
                tx,
                rules,
                &|tx, n, e, at| self.push_event(tx, n, e, at),
                now,
            )
        })
    }

    fn record_consumption(
        &self,
        rules: &BillingRules,
        node: NodeId,
        reports: &[ConsumptionReport],
        now: i64,
    ) -> Result<(), StoreError> {
        self.write("recording consumption", |tx| {
            for r in reports {
                billing::record_consumption(
                    tx,
                    rules,
                    node,
                    r.contract_id,
                    r.period,
                    &r.capacity,
                    r.public_bytes,
                    now,
                )?;
            }
            Ok(())
        })
    }

    fn stats(&self, now: i64) -> Result<GridStats, StoreError> {
        history::stats(&self.conn(), now)
    }

    fn record_stats(&self, sample: &GridStats) -> Result<(), StoreError> {
        self.write("recording the grid's totals", |tx| {
            history::record_stats(tx, sample)
        })
    }

    fn stats_history(&self, since: i64) -> Result<Vec<GridStats>, StoreError> {
        history::stats_history(&self.conn(), since)
    }

    fn node_uptime(&self, node: NodeId, since: i64) -> Result<Vec<UptimePoint>, StoreError> {
        history::uptime(&self.conn(), node, since)
    }

    fn dump(&self) -> Result<String, StoreError> {
        let conn = self.conn();
        let mut out = String::new();
        let version = schema_version(&conn).map_err(db("dumping"))?;
        let _ = writeln!(out, "user_version = {version}");
        let tables: Vec<String> = conn
            .prepare(
                "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%' \
                 AND name != 'grid_stats' ORDER BY name",
            )
            .and_then(|mut s| s.query_map([], |r| r.get(0))?.collect())
            .map_err(db("dumping"))?;
        for table in tables {
            let _ = writeln!(out, "[{table}]");
            let mut stmt = conn
                .prepare(&format!("SELECT * FROM \"{table}\" ORDER BY rowid"))
                .map_err(db("dumping"))?;
            let columns = stmt.column_count();
            let mut rows = stmt.query([]).map_err(db("dumping"))?;
            while let Some(row) = rows.next().map_err(db("dumping"))? {
                let values: Vec<String> = (0..columns)
                    .map(|i| match row.get::<_, Value>(i) {
                        Ok(Value::Null) => "NULL".into(),
                        Ok(Value::Integer(n)) => n.to_string(),
                        Ok(Value::Real(x)) => x.to_string(),
                        Ok(Value::Text(t)) => format!("{t:?}"),
                        Ok(Value::Blob(b)) => format!("x'{}'", hex::encode(b)),
                        Err(e) => format!("<{e}>"),
                    })
                    .collect();
                let _ = writeln!(out, "{}", values.join(", "));
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fresh_database_gets_the_latest_schema_and_reopens() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("registry.sqlite");
        let store = SqliteStore::open(&path).unwrap();
        let twin = store
            .create_twin(
                zos_types::Identity::from_seed([1; 32]).public_key(),
                None,
                10,
            )
            .unwrap();
        let dump = store.dump().unwrap();
        assert!(
            dump.starts_with(&format!("user_version = {SCHEMA_VERSION}\n")),
            "{dump}"
        );
        drop(store);

        let store = SqliteStore::open(&path).unwrap();
        assert_eq!(store.twin(twin.id).unwrap(), Some(twin));
        assert_eq!(store.dump().unwrap(), dump);
        let conn = store.conn();
        let mode: String = conn
            .pragma_query_value(None, "journal_mode", |r| r.get(0))
            .unwrap();
        assert_eq!(mode, "wal");
        let fk: bool = conn
            .pragma_query_value(None, "foreign_keys", |r| r.get(0))
            .unwrap();
        assert!(fk);
    }

    #[test]
    fn farms_of_a_schema_2_registry_get_the_default_policy() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("registry.sqlite");
        let old = SqliteStore::open_with(&path, &MIGRATIONS[..2]).unwrap();
        let farmer = zos_types::Identity::from_seed([1; 32]);
        let twin = old.create_twin(farmer.public_key(), None, 10).unwrap();
        let farm = old.create_farm("old-farm", twin.id, 10).unwrap();
        drop(old);
        let store = SqliteStore::open(&path).unwrap();
        let f = store.farm(farm.id).unwrap().unwrap();
        assert_eq!(f.policy, FarmPolicy::default());
        assert_eq!(
            f.policy.node_admission,
            zos_types::registry::NodeAdmission::Signed
        );
        assert!(!f.policy.rentable && f.policy.flist_hosts.is_empty());
    }

    #[test]
    fn later_migrations_apply_to_an_older_database_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("registry.sqlite");
        drop(SqliteStore::open_with(&path, &MIGRATIONS[..1]).unwrap());
        let mut more: Vec<&str> = MIGRATIONS.to_vec();
        more.push("CREATE TABLE extra (x INTEGER) STRICT;");
        more.push("INSERT INTO extra (x) VALUES (42);");
        let store = SqliteStore::open_with(&path, &more).unwrap();
        let dump = store.dump().unwrap();
        assert!(
            dump.starts_with(&format!("user_version = {}\n", MIGRATIONS.len() + 2)),
            "{dump}"
        );
        assert!(dump.contains("[extra]\n42\n"), "{dump}");
    }

    #[test]
    fn a_failing_migration_leaves_the_previous_version() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("registry.sqlite");
        let broken: Vec<&str> = MIGRATIONS
            .iter()
            .copied()
            .chain(["CREATE TABLE half (x INTEGER); THIS IS NOT SQL;"])
            .collect();
        let err = SqliteStore::open_with(&path, &broken).unwrap_err();
        assert!(matches!(err, StoreError::Database { .. }), "{err:?}");
        let store = SqliteStore::open(&path).unwrap();
        let dump = store.dump().unwrap();
        assert!(dump.starts_with(&format!("user_version = {SCHEMA_VERSION}\n")));
        assert!(!dump.contains("[half]"), "{dump}");
    }

    #[test]
    fn a_database_newer_than_the_binary_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("registry.sqlite");
        drop(SqliteStore::open(&path).unwrap());
        {
            let conn = Connection::open(&path).unwrap();
            conn.pragma_update(None, "user_version", SCHEMA_VERSION + 5)
                .unwrap();
        }
        let err = SqliteStore::open(&path).unwrap_err();
        match &err {
            StoreError::TooNew {
                found, supported, ..
            } => {
                assert_eq!(*found, SCHEMA_VERSION + 5);
                assert_eq!(*supported, SCHEMA_VERSION);
            }
            other => panic!("expected TooNew, got {other:?}"),
        }
        let msg = err.to_string();
        assert!(
            msg.contains("registry.sqlite") && msg.contains("newer"),
            "{msg}"
        );
        // The refused database is left as it was.
        let conn = Connection::open(&path).unwrap();
        assert_eq!(schema_version(&conn).unwrap(), SCHEMA_VERSION + 5);
    }
}
