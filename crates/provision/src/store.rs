//! The node's record of deployments: an embedded SQLite database (ACID, WAL) holding each
//! deployment, an append-only log of workload results, the names a twin shares across its
//! deployments, and the queue of jobs the engine has not finished.
//!
//! Every change the engine makes is one transaction, so a crash leaves either the whole change
//! or none of it. The schema carries a version (`PRAGMA user_version`); a database written by
//! a newer zosd is refused rather than misread.

use std::path::Path;
use std::sync::Mutex;

use rusqlite::{Connection, OptionalExtension, Transaction, params};
use serde::{Deserialize, Serialize};
use zos_types::TwinId;
use zos_types::deployment::{ContractId, Deployment, ResultState, Workload, WorkloadResult};
use zos_types::workload::WorkloadType;

/// Schema migrations, in order; the database's `user_version` counts how many ran.
const MIGRATIONS: &[&str] = &[r#"
CREATE TABLE deployments (
    contract INTEGER PRIMARY KEY,
    twin     INTEGER NOT NULL,
    version  INTEGER NOT NULL,
    body     TEXT    NOT NULL,
    created  INTEGER NOT NULL,
    updated  INTEGER NOT NULL
);
CREATE INDEX deployments_by_twin ON deployments(twin);
CREATE TABLE results (
    seq      INTEGER PRIMARY KEY AUTOINCREMENT,
    contract INTEGER NOT NULL,
    name     TEXT    NOT NULL,
    kind     TEXT    NOT NULL,
    version  INTEGER NOT NULL,
    created  INTEGER NOT NULL,
    state    TEXT    NOT NULL,
    message  TEXT    NOT NULL,
    data     TEXT    NOT NULL
);
CREATE INDEX results_by_workload ON results(contract, name, seq);
CREATE TABLE shared_names (
    twin     INTEGER NOT NULL,
    name     TEXT    NOT NULL,
    contract INTEGER NOT NULL,
    PRIMARY KEY (twin, name)
);
CREATE TABLE jobs (
    seq      INTEGER PRIMARY KEY AUTOINCREMENT,
    contract INTEGER NOT NULL,
    job      TEXT    NOT NULL
);
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
"#];

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("database")]
    Db(#[from] rusqlite::Error),
    #[error("stored record is not valid")]
    Json(#[from] serde_json::Error),
    #[error(
        "the database has schema version {found}, newer than this zosd ({known}): upgrade zosd or restore a backup"
    )]
    TooNew { found: i64, known: i64 },
    #[error("deployment store file {path}")]
    File {
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("deployment {0} already exists: send an update instead")]
    Exists(ContractId),
    #[error("deployment {0} not found")]
    NotFound(ContractId),
    #[error("twin {twin} already has a {kind} named {name:?} in deployment {contract}")]
    NameTaken {
        twin: TwinId,
        name: String,
        kind: WorkloadType,
        contract: ContractId,
    },
}

type Result<T> = std::result::Result<T, StoreError>;

/// Makes the database file `path` mode 0600: created so when missing, narrowed when an older
/// zosd left it wider.
fn restrict(path: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(zos_runtime::private::FILE_MODE)
        .open(path)?;
    if f.metadata()?.permissions().mode() & 0o077 != 0 {
        f.set_permissions(std::fs::Permissions::from_mode(
            zos_runtime::private::FILE_MODE,
        ))?;
    }
    Ok(())
}

/// Work the engine owes a deployment, kept until done so a crash cannot lose it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Job {
    /// Apply every workload still in `init`.
    Provision,
    /// Apply an update: remove, then add and change.
    Update {
        add: Vec<String>,
        update: Vec<String>,
        remove: Vec<String>,
    },
    /// The contract is gone: remove every workload, then the deployment.
    Cancel,
    Pause,
    Resume,
}

/// A workload's log entry: the protocol's type, as `zos.deployment.changes` answers it.
pub use zos_types::node_api::LogEntry;

/// The store, safe to share between threads; calls are short and synchronous.
#[derive(Debug)]
pub struct Store {
    conn: Mutex<Connection>,
}

fn kind_str(k: WorkloadType) -> &'static str {
    k.as_str()
}

impl Store {
    /// Opens (or creates) the database at `path` and brings its schema up to date.
    /// The file is made mode 0600 before SQLite first opens it (it holds every deployment,
    /// secrets included); SQLite gives its `-wal` and `-shm` files the database's mode. A
    /// database left wider by an older zosd is narrowed once.
    pub fn open(path: &Path) -> Result<Self> {
        restrict(path).map_err(|e| StoreError::File {
            path: path.to_path_buf(),
            source: e,
        })?;
        let conn = Connection::open(path)?;
        Self::setup(conn)
    }

    /// A database in memory, for tests.
    pub fn memory() -> Result<Self> {
        Self::setup(Connection::open_in_memory()?)
    }

    fn setup(mut conn: Connection) -> Result<Self> {
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", "FULL")?;
        conn.pragma_update(None, "foreign_keys", "ON")?;
        conn.busy_timeout(std::time::Duration::from_secs(5))?;
        let found: i64 = conn.pragma_query_value(None, "user_version", |r| r.get(0))?;
        let known = MIGRATIONS.len() as i64;
        if found > known {
            return Err(StoreError::TooNew { found, known });
        }
        let tx = conn.transaction()?;
        for (i, sql) in MIGRATIONS.iter().enumerate().skip(found as usize) {
            tx.execute_batch(sql)?;
            tx.pragma_update(None, "user_version", (i + 1) as i64)?;
        }
        tx.commit()?;
        Ok(Self {
            conn: Mutex::new(conn),
        })
    }

    fn with<T>(&self, f: impl FnOnce(&Transaction<'_>) -> Result<T>) -> Result<T> {
        let mut conn = self.conn.lock().unwrap_or_else(|p| p.into_inner());
        let tx = conn.transaction()?;
        let out = f(&tx)?;
        tx.commit()?;
        Ok(out)
    }

    /// Stores a new deployment with every workload in `init`, and queues its provisioning.
    pub fn create(&self, d: &Deployment, now: i64) -> Result<()> {
        self.with(|tx| {
            let exists: Option<i64> = tx
                .query_row("SELECT 1 FROM deployments WHERE contract = ?1", [d.contract_id as i64], |r| r.get(0))
                .optional()?;
            if exists.is_some() {
                return Err(StoreError::Exists(d.contract_id));
            }
            claim_shared_names(tx, d)?;
            tx.execute(
                "INSERT INTO deployments (contract, twin, version, body, created, updated) VALUES (?1, ?2, ?3, ?4, ?5, ?5)",
                params![d.contract_id as i64, d.twin_id, d.version, serde_json::to_string(&without_results(d))?, now],
            )?;
            for w in &d.workloads {
                append(tx, d.contract_id, w, &init(now))?;
            }
            push_job(tx, d.contract_id, &Job::Provision)
        })
    }

    /// Replaces a deployment with its next version and queues the update.
    pub fn update(&self, d: &Deployment, job: &Job, now: i64) -> Result<()> {
        self.with(|tx| {
            let changed = tx.execute(
                "UPDATE deployments SET version = ?2, body = ?3, updated = ?4 WHERE contract = ?1",
                params![
                    d.contract_id as i64,
                    d.version,
                    serde_json::to_string(&without_results(d))?,
                    now
                ],
            )?;
            if changed == 0 {
                return Err(StoreError::NotFound(d.contract_id));
            }
            tx.execute(
                "DELETE FROM shared_names WHERE contract = ?1",
                [d.contract_id as i64],
            )?;
            claim_shared_names(tx, d)?;
            if let Job::Update { add, .. } = job {
                for w in d.workloads.iter().filter(|w| add.contains(&w.name)) {
                    append(tx, d.contract_id, w, &init(now))?;
                }
            }
            push_job(tx, d.contract_id, job)
        })
    }

    /// Queues a job for an existing deployment.
    pub fn push(&self, contract: ContractId, job: &Job) -> Result<()> {
        self.with(|tx| {
            if !exists(tx, contract)? {
                return Err(StoreError::NotFound(contract));
            }
            push_job(tx, contract, job)
        })
    }

    /// The oldest unfinished job.
    pub fn next_job(&self) -> Result<Option<(i64, ContractId, Job)>> {
        self.with(|tx| {
            let row: Option<(i64, i64, String)> = tx
                .query_row(
                    "SELECT seq, contract, job FROM jobs ORDER BY seq LIMIT 1",
                    [],
                    |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
                )
                .optional()?;
            row.map(|(seq, c, j)| Ok((seq, c as ContractId, serde_json::from_str(&j)?)))
                .transpose()
        })
    }

    pub fn finish_job(&self, seq: i64) -> Result<()> {
        self.with(|tx| {
            tx.execute("DELETE FROM jobs WHERE seq = ?1", [seq])?;
            Ok(())
        })
    }

    /// Appends a result for workload `w` of deployment `contract`.
    pub fn record(
        &self,
        contract: ContractId,
        w: &Workload,
        result: &WorkloadResult,
    ) -> Result<()> {
        self.with(|tx| append(tx, contract, w, result))
    }

    /// The deployment as stored, without results.
    pub fn get_raw(&self, contract: ContractId) -> Result<Option<Deployment>> {
        self.with(|tx| raw(tx, contract))
    }

    /// The deployment with each workload's current result (the last one that is not
    /// `unchanged`).
    pub fn get(&self, contract: ContractId) -> Result<Option<Deployment>> {
        self.with(|tx| {
            let Some(mut d) = raw(tx, contract)? else {
                return Ok(None);
            };
            for w in &mut d.workloads {
                w.result = current(tx, contract, &w.name)?;
            }
            Ok(Some(d))
        })
    }

    /// Contract ids of every stored deployment, optionally only `twin`'s.
    pub fn contracts(&self, twin: Option<TwinId>) -> Result<Vec<ContractId>> {
        self.with(|tx| {
            let mut stmt = tx.prepare(
                "SELECT contract FROM deployments WHERE ?1 IS NULL OR twin = ?1 ORDER BY contract",
            )?;
            let ids = stmt
                .query_map([twin], |r| r.get::<_, i64>(0))?
                .collect::<std::result::Result<Vec<_>, _>>()?;
            Ok(ids.into_iter().map(|c| c as ContractId).collect())
        })
    }

    /// The whole result log of a deployment, oldest first.
    pub fn changes(&self, contract: ContractId) -> Result<Vec<LogEntry>> {
        self.with(|tx| {
            let mut stmt = tx.prepare(
                "SELECT seq, name, kind, version, created, state, message, data FROM results WHERE contract = ?1 ORDER BY seq",
            )?;
            let rows = stmt.query_map([contract as i64], row_to_entry)?;
            let mut out = Vec::new();
            for r in rows {
                out.push(r??);
            }
            Ok(out)
        })
    }

    /// Forgets a deployment whose workloads are all removed.
    pub fn purge(&self, contract: ContractId) -> Result<()> {
        self.with(|tx| {
            for table in ["deployments", "results", "shared_names", "jobs"] {
                tx.execute(
                    &format!("DELETE FROM {table} WHERE contract = ?1"),
                    [contract as i64],
                )?;
            }
            Ok(())
        })
    }

    pub fn meta(&self, key: &str) -> Result<Option<String>> {
        self.with(|tx| {
            Ok(tx
                .query_row("SELECT value FROM meta WHERE key = ?1", [key], |r| r.get(0))
                .optional()?)
        })
    }

    pub fn set_meta(&self, key: &str, value: &str) -> Result<()> {
        self.with(|tx| {
            tx.execute("INSERT INTO meta (key, value) VALUES (?1, ?2) ON CONFLICT(key) DO UPDATE SET value = ?2", [key, value])?;
            Ok(())
        })
    }
}

fn init(now: i64) -> WorkloadResult {
    WorkloadResult {
        created: now,
        state: ResultState::Init,
        message: String::new(),
        data: serde_json::Value::Null,
    }
}

fn without_results(d: &Deployment) -> Deployment {
    let mut d = d.clone();
    for w in &mut d.workloads {
        w.result = None;
    }
    d
}

fn exists(tx: &Transaction<'_>, contract: ContractId) -> Result<bool> {
    Ok(tx
        .query_row(
            "SELECT 1 FROM deployments WHERE contract = ?1",
            [contract as i64],
            |r| r.get::<_, i64>(0),
        )
        .optional()?
        .is_some())
}

fn raw(tx: &Transaction<'_>, contract: ContractId) -> Result<Option<Deployment>> {
    let body: Option<String> = tx
        .query_row(
            "SELECT body FROM deployments WHERE contract = ?1",
            [contract as i64],
            |r| r.get(0),
        )
        .optional()?;
    Ok(body.map(|b| serde_json::from_str(&b)).transpose()?)
}

/// Networks are shared by name across a twin's deployments: a name belongs to one deployment.
fn claim_shared_names(tx: &Transaction<'_>, d: &Deployment) -> Result<()> {
    for w in d
        .workloads
        .iter()
        .filter(|w| w.kind == WorkloadType::Network)
    {
        let holder: Option<i64> = tx
            .query_row(
                "SELECT contract FROM shared_names WHERE twin = ?1 AND name = ?2",
                params![d.twin_id, w.name],
                |r| r.get(0),
            )
            .optional()?;
        if let Some(c) = holder.filter(|c| *c as ContractId != d.contract_id) {
            return Err(StoreError::NameTaken {
                twin: d.twin_id,
                name: w.name.clone(),
                kind: w.kind,
                contract: c as ContractId,
            });
        }
        tx.execute(
            "INSERT OR IGNORE INTO shared_names (twin, name, contract) VALUES (?1, ?2, ?3)",
            params![d.twin_id, w.name, d.contract_id as i64],
        )?;
    }
    Ok(())
}

fn push_job(tx: &Transaction<'_>, contract: ContractId, job: &Job) -> Result<()> {
    tx.execute(
        "INSERT INTO jobs (contract, job) VALUES (?1, ?2)",
        params![contract as i64, serde_json::to_string(job)?],
    )?;
    Ok(())
}

fn append(
    tx: &Transaction<'_>,
    contract: ContractId,
    w: &Workload,
    r: &WorkloadResult,
) -> Result<()> {
    tx.execute(
        "INSERT INTO results (contract, name, kind, version, created, state, message, data) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
        params![
            contract as i64,
            w.name,
            kind_str(w.kind),
            w.version,
            r.created,
            r.state.to_string(),
            r.message,
            serde_json::to_string(&r.data)?
        ],
    )?;
    Ok(())
}

type Row = (i64, String, String, u32, i64, String, String, String);

fn row_to_entry(r: &rusqlite::Row<'_>) -> rusqlite::Result<Result<LogEntry>> {
    let row: Row = (
        r.get(0)?,
        r.get(1)?,
        r.get(2)?,
        r.get(3)?,
        r.get(4)?,
        r.get(5)?,
        r.get(6)?,
        r.get(7)?,
    );
    Ok(decode(row))
}

fn decode((seq, name, kind, version, created, state, message, data): Row) -> Result<LogEntry> {
    Ok(LogEntry {
        seq,
        name,
        kind: serde_json::from_value(serde_json::Value::String(kind))?,
        version,
        result: WorkloadResult {
            created,
            state: serde_json::from_value(serde_json::Value::String(state))?,
            message,
            data: serde_json::from_str(&data)?,
        },
    })
}

fn current(
    tx: &Transaction<'_>,
    contract: ContractId,
    name: &str,
) -> Result<Option<WorkloadResult>> {
    let row: Option<Row> = tx
        .query_row(
            "SELECT seq, name, kind, version, created, state, message, data FROM results
             WHERE contract = ?1 AND name = ?2 AND state != 'unchanged' ORDER BY seq DESC LIMIT 1",
            params![contract as i64, name],
            |r| {
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
            },
        )
        .optional()?;
    Ok(row.map(decode).transpose()?.map(|e| e.result))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use zos_types::deployment::{SignatureRequest, SignatureRequirement};

    pub(crate) fn deployment(contract: ContractId) -> Deployment {
        Deployment {
            version: 0,
            twin_id: 7,
            contract_id: contract,
            metadata: String::new(),
            description: String::new(),
            signature_requirement: SignatureRequirement {
                requests: vec![SignatureRequest {
                    twin_id: 7,
                    required: true,
                    weight: 1,
                }],
                weight_required: 1,
                signatures: vec![],
            },
            workloads: vec![Workload {
                version: 0,
                name: "net".into(),
                kind: WorkloadType::Network,
                data: json!({}),
                metadata: String::new(),
                description: String::new(),
                result: None,
            }],
        }
    }

    #[test]
    fn create_get_log_and_purge() {
        let s = Store::memory().unwrap();
        let d = deployment(1);
        s.create(&d, 10).unwrap();
        assert!(matches!(s.create(&d, 11), Err(StoreError::Exists(1))));
        let got = s.get(1).unwrap().unwrap();
        assert_eq!(
            got.workloads[0].result.as_ref().unwrap().state,
            ResultState::Init
        );
        let (seq, c, job) = s.next_job().unwrap().unwrap();
        assert_eq!((c, job), (1, Job::Provision));
        let ok = WorkloadResult {
            created: 12,
            state: ResultState::Ok,
            message: String::new(),
            data: json!({"a": 1}),
        };
        s.record(1, &d.workloads[0], &ok).unwrap();
        let unchanged = WorkloadResult {
            state: ResultState::Unchanged,
            message: "no".into(),
            ..ok.clone()
        };
        s.record(1, &d.workloads[0], &unchanged).unwrap();
        assert_eq!(
            s.get(1).unwrap().unwrap().workloads[0]
                .result
                .as_ref()
                .unwrap(),
            &ok
        );
        assert_eq!(s.changes(1).unwrap().len(), 3);
        s.finish_job(seq).unwrap();
        assert!(s.next_job().unwrap().is_none());
        assert_eq!(s.contracts(Some(7)).unwrap(), [1]);
        assert!(s.contracts(Some(8)).unwrap().is_empty());
        s.purge(1).unwrap();
        assert!(s.get(1).unwrap().is_none());
        assert!(s.changes(1).unwrap().is_empty());
    }

    #[test]
    fn network_names_belong_to_one_deployment_of_a_twin() {
        let s = Store::memory().unwrap();
        s.create(&deployment(1), 1).unwrap();
        assert!(matches!(
            s.create(&deployment(2), 1),
            Err(StoreError::NameTaken { contract: 1, .. })
        ));
        assert!(
            s.get(2).unwrap().is_none(),
            "nothing of the refused deployment is stored"
        );
        let mut other = deployment(3);
        other.twin_id = 8;
        s.create(&other, 1).unwrap();
    }

    #[test]
    fn survives_reopen_and_refuses_newer_schema() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("p.sqlite");
        Store::open(&path)
            .unwrap()
            .create(&deployment(1), 1)
            .unwrap();
        assert!(Store::open(&path).unwrap().get(1).unwrap().is_some());
        let c = Connection::open(&path).unwrap();
        c.pragma_update(None, "user_version", 99).unwrap();
        drop(c);
        assert!(matches!(
            Store::open(&path),
            Err(StoreError::TooNew { found: 99, .. })
        ));
    }

    #[test]
    fn the_database_and_its_wal_and_shm_are_readable_by_root_only() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("provision.sqlite");
        let s = Store::open(&path).unwrap();
        s.create(&deployment(1), 1).unwrap();
        for suffix in ["", "-wal", "-shm"] {
            let p = dir.path().join(format!("provision.sqlite{suffix}"));
            assert_eq!(
                zos_runtime::private::mode_of(&p).unwrap(),
                0o600,
                "{}",
                p.display()
            );
        }
        drop(s);
        // A database an older zosd left world-readable is narrowed when opened.
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        Store::open(&path).unwrap();
        assert_eq!(zos_runtime::private::mode_of(&path).unwrap(), 0o600);
    }
}
