//! Contracts and node events in the SQLite store. Every function runs inside the caller's
//! transaction, so a contract, its reserved addresses and the node's event are written
//! together or not at all.

use rusqlite::{OptionalExtension, Row, Transaction, params};
use zos_types::NodeId;
use zos_types::TwinId;
use zos_types::contract::{
    Contract, ContractFilter, ContractKind, ContractState, NodeEvent, NodeEventRecord,
};
use zos_types::deployment::{ContractId, DeploymentHash};

use super::StoreError;
use super::rows::{db, farm_ip_from_row};

/// Migration 2: contracts and per-node event logs.
pub const MIGRATION: &str = r#"
    CREATE TABLE contracts (
        id              INTEGER PRIMARY KEY,
        twin_id         INTEGER NOT NULL REFERENCES twins(id),
        kind            TEXT NOT NULL CHECK (kind IN ('node', 'name', 'rent')),
        state           TEXT NOT NULL CHECK (state IN ('created', 'grace_period', 'deleted')),
        node_id         INTEGER REFERENCES nodes(id),
        deployment_hash TEXT,
        public_ips      INTEGER NOT NULL DEFAULT 0 CHECK (public_ips >= 0),
        name            TEXT COLLATE NOCASE,
        created_at      INTEGER NOT NULL,
        updated_at      INTEGER NOT NULL
    ) STRICT;
    CREATE INDEX contracts_twin ON contracts(twin_id);
    CREATE INDEX contracts_node ON contracts(node_id);
    -- A live name contract holds its name; a live rent contract its node.
    CREATE UNIQUE INDEX contracts_live_name ON contracts(name) WHERE kind = 'name' AND state != 'deleted';
    CREATE UNIQUE INDEX contracts_live_rent ON contracts(node_id) WHERE kind = 'rent' AND state != 'deleted';

    CREATE TABLE node_events (
        node_id  INTEGER NOT NULL REFERENCES nodes(id),
        seq      INTEGER NOT NULL,
        at       INTEGER NOT NULL,
        event    TEXT NOT NULL,
        PRIMARY KEY (node_id, seq)
    ) STRICT;
"#;

const COLUMNS: &str =
    "id, twin_id, kind, state, node_id, deployment_hash, public_ips, name, created_at, updated_at";

pub(super) fn state_str(s: ContractState) -> &'static str {
    match s {
        ContractState::Created => "created",
        ContractState::GracePeriod => "grace_period",
        ContractState::Deleted => "deleted",
    }
}

fn bad(col: usize, what: &str) -> rusqlite::Error {
    rusqlite::Error::FromSqlConversionFailure(
        col,
        rusqlite::types::Type::Text,
        what.to_string().into(),
    )
}

/// A contract row without its reserved addresses.
fn from_row(r: &Row<'_>) -> rusqlite::Result<Contract> {
    let kind: String = r.get(2)?;
    let state = match r.get::<_, String>(3)?.as_str() {
        "created" => ContractState::Created,
        "grace_period" => ContractState::GracePeriod,
        "deleted" => ContractState::Deleted,
        _ => return Err(bad(3, "contract state")),
    };
    let node: Option<NodeId> = r.get(4)?;
    let kind = match kind.as_str() {
        "node" => ContractKind::Node {
            node_id: node.ok_or_else(|| bad(4, "node contract without node"))?,
            deployment_hash: r
                .get::<_, String>(5)?
                .parse()
                .map_err(|_| bad(5, "deployment hash"))?,
            public_ips: r.get(6)?,
            public_ips_list: Vec::new(),
        },
        "name" => ContractKind::Name { name: r.get(7)? },
        "rent" => ContractKind::Rent {
            node_id: node.ok_or_else(|| bad(4, "rent contract without node"))?,
        },
        _ => return Err(bad(2, "contract kind")),
    };
    Ok(Contract {
        id: r.get::<_, i64>(0)? as ContractId,
        twin_id: r.get(1)?,
        state,
        kind,
        created_at: r.get(8)?,
        updated_at: r.get(9)?,
    })
}

/// The contract with its reserved addresses.
pub fn load(tx: &Transaction<'_>, id: ContractId) -> Result<Option<Contract>, StoreError> {
    let c = tx
        .prepare_cached(&format!("SELECT {COLUMNS} FROM contracts WHERE id = ?1"))
        .and_then(|mut s| s.query_row([id as i64], from_row).optional())
        .map_err(db("reading a contract"))?;
    c.map(|c| with_ips(tx, c)).transpose()
}

fn with_ips(tx: &Transaction<'_>, mut c: Contract) -> Result<Contract, StoreError> {
    if let ContractKind::Node {
        public_ips_list, ..
    } = &mut c.kind
    {
        let mut stmt = tx
            .prepare_cached(
                "SELECT address, prefix_len, gateway, contract_id FROM farm_ips WHERE contract_id = ?1 ORDER BY address",
            )
            .map_err(db("reading reserved IPs"))?;
        *public_ips_list = stmt
            .query_map([c.id as i64], farm_ip_from_row)
            .and_then(|rows| rows.collect())
            .map_err(db("reading reserved IPs"))?;
    }
    Ok(c)
}

pub fn list(tx: &Transaction<'_>, f: &ContractFilter) -> Result<Vec<Contract>, StoreError> {
    let rows: Vec<Contract> = tx
        .prepare_cached(&format!(
            "SELECT {COLUMNS} FROM contracts
             WHERE (?1 IS NULL OR twin_id = ?1) AND (?2 IS NULL OR node_id = ?2) AND (?3 IS NULL OR state = ?3)
             ORDER BY id LIMIT 10000"
        ))
        .and_then(|mut s| {
            s.query_map(params![f.twin_id, f.node_id, f.state.map(state_str)], from_row)?.collect()
        })
        .map_err(db("listing contracts"))?;
    rows.into_iter().map(|c| with_ips(tx, c)).collect()
}

/// The columns that differ between kinds of contract.
#[derive(Default)]
struct Fields<'a> {
    node: Option<NodeId>,
    hash: Option<DeploymentHash>,
    public_ips: u32,
    name: Option<&'a str>,
}

fn insert(
    tx: &Transaction<'_>,
    twin: TwinId,
    kind: &str,
    f: Fields<'_>,
    now: i64,
) -> Result<ContractId, StoreError> {
    let Fields {
        node,
        hash,
        public_ips,
        name,
    } = f;
    tx.execute(
        "INSERT INTO contracts (twin_id, kind, state, node_id, deployment_hash, public_ips, name, created_at, updated_at)
         VALUES (?1, ?2, 'created', ?3, ?4, ?5, ?6, ?7, ?7)",
        params![twin, kind, node, hash.map(|h| h.to_string()), public_ips, name, now],
    )
    .map_err(|e| match e {
        rusqlite::Error::SqliteFailure(f, _) if f.code == rusqlite::ErrorCode::ConstraintViolation => match kind {
            "name" => StoreError::Conflict(format!("name {:?} is held by another contract", name.unwrap_or_default())),
            "rent" => StoreError::Conflict(format!("node {} is already rented", node.unwrap_or_default())),
            _ => StoreError::Conflict("contract conflicts with another".into()),
        },
        e => StoreError::Database { context: "creating a contract", source: e },
    })?;
    Ok(tx.last_insert_rowid() as ContractId)
}

fn node_farm(tx: &Transaction<'_>, node: NodeId) -> Result<u32, StoreError> {
    tx.query_row("SELECT farm_id FROM nodes WHERE id = ?1", [node], |r| {
        r.get(0)
    })
    .optional()
    .map_err(db("reading a node"))?
    .ok_or_else(|| StoreError::Invalid {
        field: "node_id".into(),
        reason: format!("node {node} does not exist"),
    })
}

/// The twin holding a live rent contract on `node`.
fn renter(tx: &Transaction<'_>, node: NodeId) -> Result<Option<TwinId>, StoreError> {
    tx.query_row(
        "SELECT twin_id FROM contracts WHERE kind = 'rent' AND node_id = ?1 AND state != 'deleted'",
        [node],
        |r| r.get(0),
    )
    .optional()
    .map_err(db("reading a node's renter"))
}

/// A node contract, reserving `public_ips` free addresses of the node's farm.
pub fn create_node(
    tx: &Transaction<'_>,
    twin: TwinId,
    node: NodeId,
    hash: DeploymentHash,
    public_ips: u32,
    now: i64,
) -> Result<ContractId, StoreError> {
    let farm = node_farm(tx, node)?;
    if let Some(renter) = renter(tx, node)?
        && renter != twin
    {
        return Err(StoreError::Conflict(format!(
            "node {node} is rented by twin {renter}: only its renter deploys on it"
        )));
    }
    let f = Fields {
        node: Some(node),
        hash: Some(hash),
        public_ips,
        name: None,
    };
    let id = insert(tx, twin, "node", f, now)?;
    if public_ips > 0 {
        let reserved = tx
            .execute(
                "UPDATE farm_ips SET contract_id = ?1 WHERE address IN
                 (SELECT address FROM farm_ips WHERE farm_id = ?2 AND contract_id IS NULL ORDER BY address LIMIT ?3)",
                params![id as i64, farm, public_ips],
            )
            .map_err(db("reserving public IPs"))?;
        if reserved < public_ips as usize {
            return Err(StoreError::Conflict(format!(
                "farm {farm} has {reserved} free public IPs, the contract asks for {public_ips}"
            )));
        }
    }
    Ok(id)
}

pub fn create_name(
    tx: &Transaction<'_>,
    twin: TwinId,
    name: &str,
    now: i64,
) -> Result<ContractId, StoreError> {
    insert(
        tx,
        twin,
        "name",
        Fields {
            name: Some(name),
            ..Fields::default()
        },
        now,
    )
}

pub fn create_rent(
    tx: &Transaction<'_>,
    twin: TwinId,
    node: NodeId,
    now: i64,
) -> Result<ContractId, StoreError> {
    let farm = node_farm(tx, node)?;
    super::farms::ensure_rentable(tx, farm, node)?;
    let others: Option<i64> = tx
        .query_row(
            "SELECT id FROM contracts WHERE kind = 'node' AND node_id = ?1 AND twin_id != ?2 \
             AND state != 'deleted' ORDER BY id LIMIT 1",
            params![node, twin],
            |r| r.get(0),
        )
        .optional()
        .map_err(db("reading a node's contracts"))?;
    if let Some(other) = others {
        return Err(StoreError::Conflict(format!(
            "node {node} runs contract {other} of another twin: a node is rented empty"
        )));
    }
    insert(
        tx,
        twin,
        "rent",
        Fields {
            node: Some(node),
            ..Fields::default()
        },
        now,
    )
}

pub fn set_hash(
    tx: &Transaction<'_>,
    id: ContractId,
    hash: DeploymentHash,
    now: i64,
) -> Result<(), StoreError> {
    tx.execute(
        "UPDATE contracts SET deployment_hash = ?2, updated_at = ?3 WHERE id = ?1",
        params![id as i64, hash.to_string(), now],
    )
    .map_err(db("updating a contract"))?;
    Ok(())
}

pub fn set_state(
    tx: &Transaction<'_>,
    id: ContractId,
    state: ContractState,
    now: i64,
) -> Result<(), StoreError> {
    tx.execute(
        "UPDATE contracts SET state = ?2, updated_at = ?3 WHERE id = ?1",
        params![id as i64, state_str(state), now],
    )
    .map_err(db("updating a contract"))?;
    if state == ContractState::Deleted {
        tx.execute(
            "UPDATE farm_ips SET contract_id = NULL WHERE contract_id = ?1",
            [id as i64],
        )
        .map_err(db("releasing public IPs"))?;
    }
    Ok(())
}

/// Appends `event` to `node`'s log and returns its sequence number.
pub fn push_event(
    tx: &Transaction<'_>,
    node: NodeId,
    event: &NodeEvent,
    now: i64,
) -> Result<u64, StoreError> {
    let seq: i64 = tx
        .query_row(
            "SELECT COALESCE(MAX(seq), 0) + 1 FROM node_events WHERE node_id = ?1",
            [node],
            |r| r.get(0),
        )
        .map_err(db("numbering an event"))?;
    let text =
        serde_json::to_string(event).map_err(|e| StoreError::Corrupt(format!("event: {e}")))?;
    tx.execute(
        "INSERT INTO node_events (node_id, seq, at, event) VALUES (?1, ?2, ?3, ?4)",
        params![node, seq, now, text],
    )
    .map_err(db("recording an event"))?;
    Ok(seq as u64)
}

pub fn events(
    tx: &Transaction<'_>,
    node: NodeId,
    after: u64,
    limit: u32,
) -> Result<Vec<NodeEventRecord>, StoreError> {
    let rows: Vec<(i64, i64, String)> = tx
        .prepare_cached("SELECT seq, at, event FROM node_events WHERE node_id = ?1 AND seq > ?2 ORDER BY seq LIMIT ?3")
        .and_then(|mut s| s.query_map(params![node, after as i64, limit], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?.collect())
        .map_err(db("reading events"))?;
    rows.into_iter()
        .map(|(seq, at, text)| {
            let event: NodeEvent = serde_json::from_str(&text)
                .map_err(|e| StoreError::Corrupt(format!("event {seq} of node {node}: {e}")))?;
            Ok(NodeEventRecord {
                seq: seq as u64,
                at,
                event,
            })
        })
        .collect()
}
