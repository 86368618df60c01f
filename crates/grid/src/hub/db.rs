//! The hub's own SQLite file (`hub.sqlite`): the index of stored blocks, the flist contents by
//! SHA-256, and each twin's names. WAL journal, versioned migrations in `PRAGMA user_version`,
//! apart from the registry's database.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};

use rusqlite::types::ValueRef;
use rusqlite::{Connection, OptionalExtension, Transaction, params};
use zos_flist::BlockId;
use zos_flist::hub::{FlistInfo, PushOutcome};

/// The hub's schema migrations, in order: migration `i` brings the file from version `i` to
/// `i + 1`. Never edit a released one: append.
const MIGRATIONS: &[&str] = &[
    // 1: blocks, flist contents, names and their history.
    r#"
    -- Every block the block store holds, with who uploaded it first.
    CREATE TABLE blocks (
        id          BLOB PRIMARY KEY CHECK (length(id) = 32),
        size        INTEGER NOT NULL CHECK (size >= 0),
        twin_id     INTEGER NOT NULL,
        created_at  INTEGER NOT NULL
    ) STRICT, WITHOUT ROWID;

    -- Every .fl file kept, by the SHA-256 of its bytes (the file is flists/<sha256>.fl).
    CREATE TABLE contents (
        sha256        TEXT PRIMARY KEY CHECK (length(sha256) = 64),
        size          INTEGER NOT NULL CHECK (size >= 0),
        content_bytes INTEGER NOT NULL CHECK (content_bytes >= 0),
        blocks        INTEGER NOT NULL CHECK (blocks >= 0),
        twin_id       INTEGER NOT NULL,
        created_at    INTEGER NOT NULL
    ) STRICT;

    -- The current content of each twin's names.
    CREATE TABLE flists (
        twin_id     INTEGER NOT NULL,
        name        TEXT NOT NULL,
        sha256      TEXT NOT NULL REFERENCES contents(sha256),
        created_at  INTEGER NOT NULL,
        updated_at  INTEGER NOT NULL,
        PRIMARY KEY (twin_id, name)
    ) STRICT;
    CREATE INDEX flists_sha256 ON flists(sha256);

    -- Every content a name has had, oldest first (append only).
    CREATE TABLE flist_versions (
        twin_id       INTEGER NOT NULL,
        name          TEXT NOT NULL,
        sha256        TEXT NOT NULL REFERENCES contents(sha256),
        published_at  INTEGER NOT NULL
    ) STRICT;
    CREATE INDEX flist_versions_name ON flist_versions(twin_id, name);
    "#,
];

/// The schema version this build writes.
pub const SCHEMA_VERSION: i64 = MIGRATIONS.len() as i64;

/// Failures of the hub's database.
#[derive(Debug, thiserror::Error)]
pub enum DbError {
    #[error("cannot open hub database {path}")]
    Open {
        path: PathBuf,
        #[source]
        source: rusqlite::Error,
    },
    #[error(
        "hub database {path} has schema version {found}, newer than this build's {supported}: upgrade zos-grid"
    )]
    TooNew {
        path: PathBuf,
        found: i64,
        supported: i64,
    },
    #[error("hub database: {context}")]
    Query {
        context: &'static str,
        #[source]
        source: rusqlite::Error,
    },
    #[error(
        "flist {name} of twin {twin} already holds other content ({sha256}): push with replace"
    )]
    NameTaken {
        twin: u32,
        name: String,
        sha256: String,
    },
}

fn q(context: &'static str) -> impl FnOnce(rusqlite::Error) -> DbError {
    move |source| DbError::Query { context, source }
}

/// A content about to be published under a name.
#[derive(Debug, Clone)]
pub struct NewContent {
    pub sha256: String,
    pub size: u64,
    pub content_bytes: u64,
    pub blocks: u64,
}

/// The hub's database.
#[derive(Debug)]
pub struct HubDb {
    path: PathBuf,
    conn: Mutex<Connection>,
}

impl HubDb {
    /// Opens (creating if needed) the database at `path` and migrates it to [`SCHEMA_VERSION`].
    /// A file written by a newer build is refused.
    pub fn open(path: &Path) -> Result<Self, DbError> {
        Self::open_with(path, MIGRATIONS)
    }

    fn open_with(path: &Path, migrations: &[&str]) -> Result<Self, DbError> {
        let open = |source| DbError::Open {
            path: path.into(),
            source,
        };
        let mut conn = Connection::open(path).map_err(open)?;
        conn.busy_timeout(std::time::Duration::from_secs(5))
            .map_err(open)?;
        conn.pragma_update(None, "journal_mode", "WAL")
            .map_err(open)?;
        conn.pragma_update(None, "synchronous", "FULL")
            .map_err(open)?;
        conn.pragma_update(None, "foreign_keys", true)
            .map_err(open)?;
        let found: i64 = conn
            .pragma_query_value(None, "user_version", |r| r.get(0))
            .map_err(q("reading the schema version"))?;
        let supported = migrations.len() as i64;
        if found > supported {
            return Err(DbError::TooNew {
                path: path.into(),
                found,
                supported,
            });
        }
        for (i, sql) in migrations.iter().enumerate().skip(found as usize) {
            let tx = conn.transaction().map_err(q("starting a migration"))?;
            tx.execute_batch(sql).map_err(q("migrating the schema"))?;
            tx.pragma_update(None, "user_version", i as i64 + 1)
                .map_err(q("recording the schema version"))?;
            tx.commit().map_err(q("committing a migration"))?;
            tracing::info!(path = %path.display(), version = i + 1, "hub schema migrated");
        }
        Ok(Self {
            path: path.into(),
            conn: Mutex::new(conn),
        })
    }

    /// Where the file is.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn conn(&self) -> MutexGuard<'_, Connection> {
        self.conn.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Whether the block is indexed.
    pub fn has_block(&self, id: &BlockId) -> Result<bool, DbError> {
        self.conn()
            .query_row(
                "SELECT 1 FROM blocks WHERE id = ?1",
                [&id.0[..]],
                |_| Ok(()),
            )
            .optional()
            .map(|r| r.is_some())
            .map_err(q("looking up a block"))
    }

    /// Records a stored block (a second record of the same id is ignored). True when it is new.
    pub fn add_block(&self, id: &BlockId, size: u64, twin: u32, now: i64) -> Result<bool, DbError> {
        self.conn()
            .execute(
                "INSERT OR IGNORE INTO blocks (id, size, twin_id, created_at) VALUES (?1, ?2, ?3, ?4)",
                params![&id.0[..], size as i64, twin, now],
            )
            .map(|n| n == 1)
            .map_err(q("recording a block"))
    }

    /// The ids among `ids` that are not indexed, in the order given (repeats kept).
    pub fn missing(&self, ids: &[BlockId]) -> Result<Vec<BlockId>, DbError> {
        let mut conn = self.conn();
        let tx = conn.transaction().map_err(q("starting a read"))?;
        let mut out = Vec::new();
        {
            let mut st = tx
                .prepare_cached("SELECT 1 FROM blocks WHERE id = ?1")
                .map_err(q("preparing a block lookup"))?;
            for id in ids {
                if !st.exists([&id.0[..]]).map_err(q("looking up a block"))? {
                    out.push(*id);
                }
            }
        }
        tx.commit().map_err(q("ending a read"))?;
        Ok(out)
    }

    /// Number of blocks and their total size.
    pub fn block_totals(&self) -> Result<(u64, u64), DbError> {
        self.conn()
            .query_row(
                "SELECT count(*), coalesce(sum(size), 0) FROM blocks",
                [],
                |r| Ok((r.get::<_, i64>(0)? as u64, r.get::<_, i64>(1)? as u64)),
            )
            .map_err(q("counting blocks"))
    }

    /// The current content of `twin`'s `name`, if the name exists.
    pub fn current(&self, twin: u32, name: &str) -> Result<Option<FlistInfo>, DbError> {
        let conn = self.conn();
        current(&conn, twin, name)
    }

    /// Whether a content with this SHA-256 is kept.
    pub fn has_content(&self, sha256: &str) -> Result<bool, DbError> {
        self.conn()
            .query_row("SELECT 1 FROM contents WHERE sha256 = ?1", [sha256], |_| {
                Ok(())
            })
            .optional()
            .map(|r| r.is_some())
            .map_err(q("looking up a content"))
    }

    /// Points `twin`'s `name` at `content`. A name holding other content is replaced only when
    /// `replace` is set; otherwise [`DbError::NameTaken`].
    pub fn publish(
        &self,
        twin: u32,
        name: &str,
        content: &NewContent,
        replace: bool,
        now: i64,
    ) -> Result<(PushOutcome, Option<String>, FlistInfo), DbError> {
        let mut conn = self.conn();
        let tx = conn.transaction().map_err(q("starting a publish"))?;
        let (outcome, previous) = publish_in(&tx, twin, name, content, replace, now)?;
        let info = current(&tx, twin, name)?.expect("just published");
        tx.commit().map_err(q("committing a publish"))?;
        Ok((outcome, previous, info))
    }

    /// The flists of `twin`, by name.
    pub fn list(&self, twin: u32) -> Result<Vec<FlistInfo>, DbError> {
        let conn = self.conn();
        let mut st = conn
            .prepare_cached(&format!(
                "{SELECT_INFO} WHERE f.twin_id = ?1 ORDER BY f.name"
            ))
            .map_err(q("preparing a listing"))?;
        let rows = st.query_map([twin], info_of).map_err(q("listing flists"))?;
        rows.collect::<Result<Vec<_>, _>>()
            .map_err(q("listing flists"))
    }

    /// Every row of every table, for tests.
    pub fn dump(&self) -> Result<String, DbError> {
        let conn = self.conn();
        let mut out = String::new();
        let version: i64 = conn
            .pragma_query_value(None, "user_version", |r| r.get(0))
            .map_err(q("reading the schema version"))?;
        let _ = writeln!(out, "user_version = {version}");
        for (table, sql) in [
            ("blocks", "SELECT id, size, twin_id FROM blocks ORDER BY id"),
            (
                "contents",
                "SELECT sha256, size, content_bytes, blocks, twin_id FROM contents ORDER BY sha256",
            ),
            (
                "flists",
                "SELECT twin_id, name, sha256 FROM flists ORDER BY twin_id, name",
            ),
            (
                "flist_versions",
                "SELECT twin_id, name, sha256 FROM flist_versions ORDER BY rowid",
            ),
        ] {
            let _ = writeln!(out, "[{table}]");
            let mut st = conn.prepare(sql).map_err(q("dumping"))?;
            let n = st.column_count();
            let mut rows = st.query([]).map_err(q("dumping"))?;
            while let Some(r) = rows.next().map_err(q("dumping"))? {
                let cells: Vec<String> = (0..n)
                    .map(|i| match r.get_ref(i) {
                        Ok(ValueRef::Integer(v)) => v.to_string(),
                        Ok(ValueRef::Text(t)) => format!("{:?}", String::from_utf8_lossy(t)),
                        Ok(ValueRef::Blob(b)) => hex::encode(b),
                        Ok(ValueRef::Real(v)) => v.to_string(),
                        Ok(ValueRef::Null) => "NULL".into(),
                        Err(_) => "?".into(),
                    })
                    .collect();
                let _ = writeln!(out, "{}", cells.join(" | "));
            }
        }
        Ok(out)
    }
}

const SELECT_INFO: &str = "SELECT f.twin_id, f.name, f.sha256, c.size, c.content_bytes, c.blocks, \
     f.created_at, f.updated_at FROM flists f JOIN contents c ON c.sha256 = f.sha256";

fn info_of(r: &rusqlite::Row<'_>) -> rusqlite::Result<FlistInfo> {
    Ok(FlistInfo {
        twin_id: r.get(0)?,
        name: r.get(1)?,
        sha256: r.get(2)?,
        size: r.get::<_, i64>(3)? as u64,
        content_bytes: r.get::<_, i64>(4)? as u64,
        blocks: r.get::<_, i64>(5)? as u64,
        created: r.get(6)?,
        updated: r.get(7)?,
    })
}

fn current(conn: &Connection, twin: u32, name: &str) -> Result<Option<FlistInfo>, DbError> {
    conn.query_row(
        &format!("{SELECT_INFO} WHERE f.twin_id = ?1 AND f.name = ?2"),
        params![twin, name],
        info_of,
    )
    .optional()
    .map_err(q("looking up a flist"))
}

fn publish_in(
    tx: &Transaction<'_>,
    twin: u32,
    name: &str,
    c: &NewContent,
    replace: bool,
    now: i64,
) -> Result<(PushOutcome, Option<String>), DbError> {
    tx.execute(
        "INSERT OR IGNORE INTO contents (sha256, size, content_bytes, blocks, twin_id, created_at) \
         VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
        params![
            c.sha256,
            c.size as i64,
            c.content_bytes as i64,
            c.blocks as i64,
            twin,
            now
        ],
    )
    .map_err(q("recording a content"))?;
    let existing: Option<String> = tx
        .query_row(
            "SELECT sha256 FROM flists WHERE twin_id = ?1 AND name = ?2",
            params![twin, name],
            |r| r.get(0),
        )
        .optional()
        .map_err(q("looking up a flist"))?;
    let (outcome, previous) = match existing {
        Some(old) if old == c.sha256 => return Ok((PushOutcome::Unchanged, None)),
        Some(old) if !replace => {
            return Err(DbError::NameTaken {
                twin,
                name: name.into(),
                sha256: old,
            });
        }
        Some(old) => {
            tx.execute(
                "UPDATE flists SET sha256 = ?3, updated_at = ?4 WHERE twin_id = ?1 AND name = ?2",
                params![twin, name, c.sha256, now],
            )
            .map_err(q("replacing a flist"))?;
            (PushOutcome::Replaced, Some(old))
        }
        None => {
            tx.execute(
                "INSERT INTO flists (twin_id, name, sha256, created_at, updated_at) \
                 VALUES (?1, ?2, ?3, ?4, ?4)",
                params![twin, name, c.sha256, now],
            )
            .map_err(q("recording a flist"))?;
            (PushOutcome::Created, None)
        }
    };
    tx.execute(
        "INSERT INTO flist_versions (twin_id, name, sha256, published_at) VALUES (?1, ?2, ?3, ?4)",
        params![twin, name, c.sha256, now],
    )
    .map_err(q("recording a version"))?;
    Ok((outcome, previous))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn content(n: u8) -> NewContent {
        NewContent {
            sha256: format!("{n:02x}").repeat(32),
            size: 100,
            content_bytes: 1000,
            blocks: 2,
        }
    }

    #[test]
    fn names_are_replaced_only_when_asked_and_history_is_kept() {
        let dir = tempfile::tempdir().unwrap();
        let db = HubDb::open(&dir.path().join("hub.sqlite")).unwrap();
        let (o, prev, info) = db.publish(7, "a.fl", &content(1), false, 10).unwrap();
        assert_eq!((o, prev), (PushOutcome::Created, None));
        assert_eq!(info.sha256, content(1).sha256);
        let (o, _, _) = db.publish(7, "a.fl", &content(1), false, 11).unwrap();
        assert_eq!(o, PushOutcome::Unchanged);
        let err = db.publish(7, "a.fl", &content(2), false, 12).unwrap_err();
        assert!(matches!(err, DbError::NameTaken { .. }), "{err}");
        assert_eq!(
            db.current(7, "a.fl").unwrap().unwrap().sha256,
            content(1).sha256
        );
        let (o, prev, info) = db.publish(7, "a.fl", &content(2), true, 13).unwrap();
        assert_eq!(o, PushOutcome::Replaced);
        assert_eq!(prev, Some(content(1).sha256));
        assert_eq!((info.created, info.updated), (10, 13));
        // Both contents stay, by hash; another twin's name is its own.
        assert!(db.has_content(&content(1).sha256).unwrap());
        db.publish(8, "a.fl", &content(1), false, 14).unwrap();
        assert_eq!(db.list(7).unwrap().len(), 1);
        assert_eq!(db.list(8).unwrap()[0].sha256, content(1).sha256);
        let dump = db.dump().unwrap();
        assert_eq!(dump.matches("\"a.fl\"").count(), 2 + 3, "{dump}");
    }

    #[test]
    fn blocks_index_and_missing() {
        let dir = tempfile::tempdir().unwrap();
        let db = HubDb::open(&dir.path().join("hub.sqlite")).unwrap();
        let (a, b) = (BlockId([1; 32]), BlockId([2; 32]));
        assert!(db.add_block(&a, 10, 1, 0).unwrap());
        assert!(!db.add_block(&a, 10, 2, 0).unwrap());
        assert_eq!(db.missing(&[a, b, a, b]).unwrap(), vec![b, b]);
        assert_eq!(db.block_totals().unwrap(), (1, 10));
    }

    #[test]
    fn migrations_are_versioned_and_newer_files_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("hub.sqlite");
        drop(HubDb::open(&path).unwrap());
        drop(HubDb::open(&path).unwrap());
        let mut more = MIGRATIONS.to_vec();
        more.push("CREATE TABLE later (x INTEGER) STRICT;");
        drop(HubDb::open_with(&path, &more).unwrap());
        let err = HubDb::open(&path).unwrap_err();
        assert!(
            matches!(
                err,
                DbError::TooNew {
                    found: 2,
                    supported: 1,
                    ..
                }
            ),
            "{err}"
        );
    }
}
