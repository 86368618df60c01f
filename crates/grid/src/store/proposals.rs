//! Proposals in the SQLite store: the proposal itself (never changed once written but for its
//! state), the twins it names (for listing), and one vote per named twin — a signature or a
//! rejection, kept apart by the `(proposal_id, twin_id)` key so a second vote cannot be stored.
//! Every function runs inside the caller's transaction.

use rusqlite::{OptionalExtension, Row, Transaction, params};
use zos_types::TwinId;
use zos_types::deployment::{ContractId, Deployment, SignatureRequest};
use zos_types::proposal::{
    Proposal, ProposalFilter, ProposalId, ProposalKind, ProposalState, Rejection, Vote,
};

use super::StoreError;
use super::rows::db;

/// Migration 4: proposals, the twins they name, and their votes.
pub const MIGRATION: &str = r#"
    CREATE TABLE proposals (
        id              INTEGER PRIMARY KEY,
        kind            TEXT NOT NULL CHECK (kind IN ('deploy', 'update', 'cancel')),
        node_id         INTEGER NOT NULL REFERENCES nodes(id),
        contract_id     INTEGER REFERENCES contracts(id),
        deployment      TEXT,
        hash            TEXT,
        public_ips      INTEGER NOT NULL DEFAULT 0 CHECK (public_ips >= 0),
        requests        TEXT NOT NULL,
        weight_required INTEGER NOT NULL CHECK (weight_required >= 0),
        proposer        INTEGER NOT NULL REFERENCES twins(id),
        created_at      INTEGER NOT NULL,
        expires_at      INTEGER NOT NULL,
        state           TEXT NOT NULL CHECK (state IN ('open', 'approved', 'rejected', 'expired')),
        decided_at      INTEGER
    ) STRICT;
    CREATE INDEX proposals_contract ON proposals(contract_id);
    CREATE INDEX proposals_proposer ON proposals(proposer, state);

    CREATE TABLE proposal_twins (
        proposal_id INTEGER NOT NULL REFERENCES proposals(id),
        twin_id     INTEGER NOT NULL,
        PRIMARY KEY (proposal_id, twin_id)
    ) STRICT;
    CREATE INDEX proposal_twins_twin ON proposal_twins(twin_id);

    -- One vote per twin and proposal: a signature (approve = 1) or a rejection.
    CREATE TABLE proposal_votes (
        proposal_id INTEGER NOT NULL REFERENCES proposals(id),
        twin_id     INTEGER NOT NULL,
        approve     INTEGER NOT NULL CHECK (approve IN (0, 1)),
        signature   TEXT,
        reason      TEXT NOT NULL DEFAULT '',
        at          INTEGER NOT NULL,
        PRIMARY KEY (proposal_id, twin_id)
    ) STRICT;
"#;

const COLUMNS: &str = "id, kind, node_id, contract_id, deployment, hash, public_ips, requests, \
    weight_required, proposer, created_at, expires_at, state";

fn bad(col: usize, what: &str) -> rusqlite::Error {
    rusqlite::Error::FromSqlConversionFailure(
        col,
        rusqlite::types::Type::Text,
        what.to_string().into(),
    )
}

/// A proposal row without its votes; an open proposal past its time reads as expired.
fn from_row(r: &Row<'_>, now: i64) -> rusqlite::Result<Proposal> {
    let kind = match r.get::<_, String>(1)?.as_str() {
        "deploy" => ProposalKind::Deploy,
        "update" => ProposalKind::Update,
        "cancel" => ProposalKind::Cancel,
        _ => return Err(bad(1, "proposal kind")),
    };
    let deployment: Option<Deployment> = r
        .get::<_, Option<String>>(4)?
        .map(|t| serde_json::from_str(&t))
        .transpose()
        .map_err(|_| bad(4, "proposal deployment"))?;
    let hash = r
        .get::<_, Option<String>>(5)?
        .map(|h| h.parse())
        .transpose()
        .map_err(|_| bad(5, "proposal hash"))?;
    let requests: Vec<SignatureRequest> =
        serde_json::from_str(&r.get::<_, String>(7)?).map_err(|_| bad(7, "proposal requests"))?;
    let expires_at: i64 = r.get(11)?;
    let state = match r.get::<_, String>(12)?.as_str() {
        "open" if now >= expires_at => ProposalState::Expired,
        "open" => ProposalState::Open,
        "approved" => ProposalState::Approved,
        "rejected" => ProposalState::Rejected,
        "expired" => ProposalState::Expired,
        _ => return Err(bad(12, "proposal state")),
    };
    Ok(Proposal {
        id: r.get::<_, i64>(0)? as ProposalId,
        kind,
        node_id: r.get(2)?,
        contract_id: r.get::<_, Option<i64>>(3)?.map(|c| c as ContractId),
        deployment,
        hash,
        public_ips: r.get(6)?,
        requests,
        weight_required: r.get(8)?,
        proposer: r.get(9)?,
        created_at: r.get(10)?,
        expires_at,
        state,
        signatures: Vec::new(),
        rejections: Vec::new(),
    })
}

fn with_votes(tx: &Transaction<'_>, mut p: Proposal) -> Result<Proposal, StoreError> {
    type VoteRow = (TwinId, bool, Option<String>, String, i64);
    let rows: Vec<VoteRow> = tx
        .prepare_cached(
            "SELECT twin_id, approve, signature, reason, at FROM proposal_votes \
             WHERE proposal_id = ?1 ORDER BY at, twin_id",
        )
        .and_then(|mut s| {
            s.query_map([p.id as i64], |r| {
                Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?))
            })?
            .collect()
        })
        .map_err(db("reading votes"))?;
    for (twin_id, approve, signature, reason, at) in rows {
        if approve {
            let signature = signature
                .and_then(|s| s.parse().ok())
                .ok_or_else(|| StoreError::Corrupt(format!("vote of twin {twin_id}")))?;
            p.signatures.push(Vote {
                twin_id,
                signature,
                at,
            });
        } else {
            p.rejections.push(Rejection {
                twin_id,
                reason,
                at,
            });
        }
    }
    Ok(p)
}

/// The proposal with its votes.
pub fn load(
    tx: &Transaction<'_>,
    id: ProposalId,
    now: i64,
) -> Result<Option<Proposal>, StoreError> {
    let p = tx
        .prepare_cached(&format!("SELECT {COLUMNS} FROM proposals WHERE id = ?1"))
        .and_then(|mut s| s.query_row([id as i64], |r| from_row(r, now)).optional())
        .map_err(db("reading a proposal"))?;
    p.map(|p| with_votes(tx, p)).transpose()
}

/// The proposals `twin` made or is named in, newest first.
pub fn list(
    tx: &Transaction<'_>,
    twin: TwinId,
    f: &ProposalFilter,
    now: i64,
) -> Result<Vec<Proposal>, StoreError> {
    let rows: Vec<Proposal> = tx
        .prepare_cached(&format!(
            "SELECT {COLUMNS} FROM proposals
             WHERE (proposer = ?1 OR id IN (SELECT proposal_id FROM proposal_twins WHERE twin_id = ?1))
               AND (?2 IS NULL OR contract_id = ?2)
               AND (?3 IS NULL
                    OR (?3 = 'open' AND state = 'open' AND expires_at > ?4)
                    OR (?3 = 'expired' AND (state = 'expired' OR (state = 'open' AND expires_at <= ?4)))
                    OR (?3 IN ('approved', 'rejected') AND state = ?3))
             ORDER BY id DESC LIMIT 1000"
        ))
        .and_then(|mut s| {
            s.query_map(
                params![
                    twin,
                    f.contract_id.map(|c| c as i64),
                    f.state.map(|s| s.as_str()),
                    now
                ],
                |r| from_row(r, now),
            )?
            .collect()
        })
        .map_err(db("listing proposals"))?;
    rows.into_iter().map(|p| with_votes(tx, p)).collect()
}

/// How many open proposals (not past their time) `twin` has made.
pub fn open_count(tx: &Transaction<'_>, twin: TwinId, now: i64) -> Result<u32, StoreError> {
    tx.query_row(
        "SELECT COUNT(*) FROM proposals WHERE proposer = ?1 AND state = 'open' AND expires_at > ?2",
        params![twin, now],
        |r| r.get(0),
    )
    .map_err(db("counting proposals"))
}

/// Writes a new proposal (its `id`, votes and state are ignored: it starts open) and the twins
/// it names.
pub fn insert(tx: &Transaction<'_>, p: &Proposal) -> Result<ProposalId, StoreError> {
    let deployment = p
        .deployment
        .as_ref()
        .map(|d| serde_json::to_string(d).expect("deployments serialize"));
    let requests = serde_json::to_string(&p.requests).expect("requests serialize");
    tx.execute(
        "INSERT INTO proposals (kind, node_id, contract_id, deployment, hash, public_ips, requests,
            weight_required, proposer, created_at, expires_at, state)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, 'open')",
        params![
            p.kind.as_str(),
            p.node_id,
            p.contract_id.map(|c| c as i64),
            deployment,
            p.hash.map(|h| h.to_string()),
            p.public_ips,
            requests,
            p.weight_required,
            p.proposer,
            p.created_at,
            p.expires_at,
        ],
    )
    .map_err(db("creating a proposal"))?;
    let id = tx.last_insert_rowid() as ProposalId;
    let mut stmt = tx
        .prepare_cached("INSERT INTO proposal_twins (proposal_id, twin_id) VALUES (?1, ?2)")
        .map_err(db("naming a proposal's twins"))?;
    for r in &p.requests {
        stmt.execute(params![id as i64, r.twin_id])
            .map_err(db("naming a proposal's twins"))?;
    }
    Ok(id)
}

/// Records `twin`'s vote: a signature (`Some`) or a rejection with its reason.
/// [`StoreError::Conflict`] if the twin voted on this proposal before.
pub fn vote(
    tx: &Transaction<'_>,
    id: ProposalId,
    twin: TwinId,
    signature: Option<&zos_types::Signature>,
    reason: &str,
    now: i64,
) -> Result<(), StoreError> {
    tx.execute(
        "INSERT INTO proposal_votes (proposal_id, twin_id, approve, signature, reason, at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
        params![
            id as i64,
            twin,
            signature.is_some(),
            signature.map(|s| s.to_string()),
            reason,
            now
        ],
    )
    .map_err(|e| match e {
        rusqlite::Error::SqliteFailure(f, _)
            if f.code == rusqlite::ErrorCode::ConstraintViolation =>
        {
            StoreError::Conflict(format!(
                "twin {twin} already voted on proposal {id}: a twin votes once"
            ))
        }
        e => StoreError::Database {
            context: "recording a vote",
            source: e,
        },
    })?;
    Ok(())
}

/// Closes a proposal in `state`, with the contract an approved deploy made.
pub fn decide(
    tx: &Transaction<'_>,
    id: ProposalId,
    state: ProposalState,
    contract: Option<ContractId>,
    now: i64,
) -> Result<(), StoreError> {
    tx.execute(
        "UPDATE proposals SET state = ?2, contract_id = COALESCE(?3, contract_id), decided_at = ?4
         WHERE id = ?1",
        params![id as i64, state.as_str(), contract.map(|c| c as i64), now],
    )
    .map_err(db("closing a proposal"))?;
    Ok(())
}

/// The highest deployment version an approved update of contract `contract` set, with the
/// proposal that set it.
pub fn latest_update(
    tx: &Transaction<'_>,
    contract: ContractId,
    now: i64,
) -> Result<Option<(u32, ProposalId)>, StoreError> {
    let rows: Vec<Proposal> = tx
        .prepare_cached(&format!(
            "SELECT {COLUMNS} FROM proposals
             WHERE contract_id = ?1 AND kind = 'update' AND state = 'approved'"
        ))
        .and_then(|mut s| {
            s.query_map([contract as i64], |r| from_row(r, now))?
                .collect()
        })
        .map_err(db("reading a contract's updates"))?;
    Ok(rows
        .iter()
        .filter_map(|p| p.deployment.as_ref().map(|d| (d.version, p.id)))
        .max())
}

/// The approved deploy proposal that made contract `contract`: its twins govern the contract.
pub fn governor(
    tx: &Transaction<'_>,
    contract: ContractId,
    now: i64,
) -> Result<Option<Proposal>, StoreError> {
    let p = tx
        .prepare_cached(&format!(
            "SELECT {COLUMNS} FROM proposals
             WHERE contract_id = ?1 AND kind = 'deploy' AND state = 'approved'"
        ))
        .and_then(|mut s| {
            s.query_row([contract as i64], |r| from_row(r, now))
                .optional()
        })
        .map_err(db("reading a contract's proposal"))?;
    Ok(p)
}
