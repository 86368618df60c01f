//! Farm policies in the SQLite store, and the rules that follow from them: which nodes may join
//! a farm, whether its nodes may be rented, and which addresses a farm may claim. Every function
//! runs inside the caller's transaction.

use std::net::Ipv4Addr;

use rusqlite::{Connection, OptionalExtension, params};
use zos_types::registry::{AdmissionToken, FarmPolicy, NodeAdmission, PublicConfig};
use zos_types::{FarmId, NodeId, PublicKey};

use super::StoreError;
use super::rows::db;

/// Migration 3: farm policies. Existing farms get the defaults: signed admission (nodes already
/// in a farm re-register without a token), not rentable, no flist hosts but the hub.
pub const MIGRATION: &str = r#"
    ALTER TABLE farms ADD COLUMN node_admission TEXT NOT NULL DEFAULT 'signed'
        CHECK (node_admission IN ('open', 'signed'));
    ALTER TABLE farms ADD COLUMN rentable INTEGER NOT NULL DEFAULT 0 CHECK (rentable IN (0, 1));
    ALTER TABLE farms ADD COLUMN flist_hosts TEXT NOT NULL DEFAULT '[]';
"#;

/// The policy of `farm` (`None` when the farm does not exist).
pub fn policy(conn: &Connection, farm: FarmId) -> Result<Option<FarmPolicy>, StoreError> {
    let row: Option<(String, bool, String)> = conn
        .prepare_cached("SELECT node_admission, rentable, flist_hosts FROM farms WHERE id = ?1")
        .and_then(|mut s| {
            s.query_row([farm], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
                .optional()
        })
        .map_err(db("reading a farm policy"))?;
    let Some((admission, rentable, hosts)) = row else {
        return Ok(None);
    };
    let node_admission = match admission.as_str() {
        "open" => NodeAdmission::Open,
        "signed" => NodeAdmission::Signed,
        other => {
            return Err(StoreError::Corrupt(format!(
                "farm {farm} admission {other:?}"
            )));
        }
    };
    let flist_hosts = serde_json::from_str(&hosts)
        .map_err(|e| StoreError::Corrupt(format!("farm {farm} flist hosts: {e}")))?;
    Ok(Some(FarmPolicy {
        node_admission,
        rentable,
        flist_hosts,
    }))
}

pub fn set_policy(conn: &Connection, farm: FarmId, p: &FarmPolicy) -> Result<(), StoreError> {
    let hosts = serde_json::to_string(&p.flist_hosts).expect("hosts serialize");
    let n = conn
        .prepare_cached(
            "UPDATE farms SET node_admission = ?2, rentable = ?3, flist_hosts = ?4 WHERE id = ?1",
        )
        .and_then(|mut s| s.execute(params![farm, p.node_admission.as_str(), p.rentable, hosts]))
        .map_err(db("setting a farm policy"))?;
    if n == 0 {
        return Err(StoreError::NotFound(format!("farm {farm} does not exist")));
    }
    Ok(())
}

/// Whether a node may join `farm` (as a new node, or moving in from another farm) with
/// `token`, at `now`.
pub fn admit(
    conn: &Connection,
    farm: FarmId,
    token: Option<&AdmissionToken>,
    now: i64,
) -> Result<(), StoreError> {
    let policy = policy(conn, farm)?.ok_or_else(|| StoreError::Invalid {
        field: "farm_id".into(),
        reason: format!("farm {farm} does not exist"),
    })?;
    if policy.node_admission == NodeAdmission::Open {
        return Ok(());
    }
    let Some(token) = token else {
        return Err(StoreError::Forbidden(format!(
            "farm {farm} admits only nodes its farmer signed: boot the node with admission=TOKEN \
             (the farmer makes one with `zos farm admission {farm}`), or the farmer opens the \
             farm with `zos farm policy {farm} --admission open`"
        )));
    };
    let farmer: String = conn
        .prepare_cached(
            "SELECT t.public_key FROM farms f JOIN twins t ON t.id = f.twin_id WHERE f.id = ?1",
        )
        .and_then(|mut s| s.query_row([farm], |r| r.get(0)))
        .map_err(db("reading a farmer's key"))?;
    let farmer: PublicKey = farmer
        .parse()
        .map_err(|_| StoreError::Corrupt(format!("farmer key of farm {farm}")))?;
    token
        .check(farm, &farmer, now)
        .map_err(|e| StoreError::Forbidden(format!("admission: {e}")))
}

/// Whether `farm` rents whole nodes (checked before a rent contract on `node`).
pub fn ensure_rentable(conn: &Connection, farm: FarmId, node: NodeId) -> Result<(), StoreError> {
    let rentable = policy(conn, farm)?.is_some_and(|p| p.rentable);
    if rentable {
        Ok(())
    } else {
        Err(StoreError::Forbidden(format!(
            "node {node}'s farm {farm} does not rent out whole nodes: pick a node of a farm whose \
             policy is rentable (the farmer sets it with `zos farm policy {farm} --rentable true`)"
        )))
    }
}

/// Refuses `address` for `farm` when another farm uses it: in its pool or as the public
/// address of one of its nodes.
pub fn ensure_unclaimed(
    conn: &Connection,
    farm: FarmId,
    address: Ipv4Addr,
) -> Result<(), StoreError> {
    let pool: Option<i64> = conn
        .prepare_cached("SELECT farm_id FROM farm_ips WHERE address = ?1")
        .and_then(|mut s| s.query_row([u32::from(address)], |r| r.get(0)).optional())
        .map_err(db("reading farm IPs"))?;
    if let Some(holder) = pool {
        return Err(StoreError::Conflict(format!(
            "{address} is already in the pool of farm {holder}"
        )));
    }
    let configs: Vec<(i64, i64, String)> = conn
        .prepare_cached(
            "SELECT id, farm_id, public_config FROM nodes \
             WHERE farm_id != ?1 AND public_config IS NOT NULL",
        )
        .and_then(|mut s| {
            s.query_map([farm], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?
                .collect()
        })
        .map_err(db("reading public configs"))?;
    for (node, other, text) in configs {
        let config: PublicConfig = serde_json::from_str(&text)
            .map_err(|e| StoreError::Corrupt(format!("public config of node {node}: {e}")))?;
        if config.ipv4.addr() == address {
            return Err(StoreError::Conflict(format!(
                "{address} is the public address of node {node} of farm {other}"
            )));
        }
    }
    Ok(())
}

/// Refuses `config` for a node of `farm` when its address is in another farm's pool.
pub fn ensure_config_unclaimed(
    conn: &Connection,
    farm: FarmId,
    config: &PublicConfig,
) -> Result<(), StoreError> {
    let address = config.ipv4.addr();
    let holder: Option<i64> = conn
        .prepare_cached("SELECT farm_id FROM farm_ips WHERE address = ?1 AND farm_id != ?2")
        .and_then(|mut s| {
            s.query_row(params![u32::from(address), farm], |r| r.get(0))
                .optional()
        })
        .map_err(db("reading farm IPs"))?;
    match holder {
        Some(other) => Err(StoreError::Conflict(format!(
            "ipv4: {address} is in the pool of farm {other}"
        ))),
        None => Ok(()),
    }
}
