//! The FL metadata file: an SQLite database with the rfs schema.
//!
//! Tables (column types as rfs declares them; SQLite stores what it is given):
//!
//! | table | columns |
//! |---|---|
//! | `inode` | `ino` (autoincrement, root = 1), `parent` (0 for the root), `name` TEXT, `size`, `uid`, `gid`, `mode` (full `st_mode`), `rdev`, `ctime`, `mtime` (seconds) |
//! | `extra` | `ino`, `data` BLOB: the symlink target |
//! | `block` | `ino`, `id` BLOB(32), `key` BLOB(32): a file's blocks in rowid order |
//! | `tag` | `key`, `value` |
//! | `route` | `start`, `end` (first byte of the block id, inclusive), `url` |
//!
//! zos adds one table that rfs never reads, `hardlink (ino, target)`: the path `ino` is a hard
//! link to `target`. Both rows are complete regular files with the same blocks, so rfs sees two
//! equal files and zos sees one file with two names. A flist written by zos carries the tag
//! [`FORMAT_TAG`] = [`FORMAT_VERSION`]; flists without it are plain rfs flists.
//!
//! [`Flist::open`] loads and validates the whole file; nothing is trusted that was not checked.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};

use rusqlite::types::ValueRef;
use rusqlite::{Connection, OpenFlags, params};

use crate::block::{BLOCK_SIZE, BlockId, BlockKey, BlockRef};

/// Inode number inside a flist; the root is 1.
pub type Ino = u64;

/// The root directory's inode number.
pub const ROOT_INO: Ino = 1;

/// Tag that records the zos format revision.
pub const FORMAT_TAG: &str = "zos-format";

/// The format revision this code writes and the highest it reads.
pub const FORMAT_VERSION: u32 = 1;

/// Largest file size accepted (1 PiB); anything bigger is a broken or hostile flist.
pub const MAX_FILE_SIZE: u64 = 1 << 50;

/// Longest symlink target accepted (as Linux: `PATH_MAX` - 1).
pub const MAX_LINK_LEN: usize = 4095;

/// Longest file name accepted (as Linux: `NAME_MAX`).
pub const MAX_NAME_LEN: usize = 255;

/// Longest string, blob or row the reader accepts (SQLite's `SQLITE_LIMIT_LENGTH`): a flist's
/// longest value is a symlink target ([`MAX_LINK_LEN`]); anything far bigger is hostile.
pub const MAX_VALUE_LEN: i32 = 64 * 1024;

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS inode (
    ino INTEGER PRIMARY KEY AUTOINCREMENT,
    parent INTEGER,
    name VARCHAR(255),
    size INTEGER,
    uid INTEGER,
    gid INTEGER,
    mode INTEGER,
    rdev INTEGER,
    ctime INTEGER,
    mtime INTEGER
);
CREATE INDEX IF NOT EXISTS parents ON inode (parent);
CREATE INDEX IF NOT EXISTS names ON inode (name);
CREATE TABLE IF NOT EXISTS extra (
    ino INTEGER PRIMARY KEY,
    data VARCHAR(4096)
);
CREATE TABLE IF NOT EXISTS block (
    ino INTEGER,
    id VARCHAR(32),
    key VARCHAR(32)
);
CREATE INDEX IF NOT EXISTS block_ino ON block (ino);
CREATE TABLE IF NOT EXISTS tag (
    key VARCHAR(10) PRIMARY KEY,
    value VARCHAR(255)
);
CREATE TABLE IF NOT EXISTS route (
    start integer,
    end integer,
    url VARCHAR(2048)
);
CREATE TABLE IF NOT EXISTS hardlink (
    ino INTEGER PRIMARY KEY,
    target INTEGER NOT NULL
);
";

/// The kind of a filesystem entry, from the type bits of its mode.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    Dir,
    File,
    Symlink,
    Char,
    Block,
    Fifo,
    Socket,
}

impl Kind {
    /// The kind named by `mode & S_IFMT`, if it is a known one.
    pub fn from_mode(mode: u32) -> Option<Kind> {
        Some(match mode & libc::S_IFMT {
            libc::S_IFDIR => Kind::Dir,
            libc::S_IFREG => Kind::File,
            libc::S_IFLNK => Kind::Symlink,
            libc::S_IFCHR => Kind::Char,
            libc::S_IFBLK => Kind::Block,
            libc::S_IFIFO => Kind::Fifo,
            libc::S_IFSOCK => Kind::Socket,
            _ => return None,
        })
    }

    /// The `S_IFMT` bits of this kind.
    pub fn type_bits(self) -> u32 {
        match self {
            Kind::Dir => libc::S_IFDIR,
            Kind::File => libc::S_IFREG,
            Kind::Symlink => libc::S_IFLNK,
            Kind::Char => libc::S_IFCHR,
            Kind::Block => libc::S_IFBLK,
            Kind::Fifo => libc::S_IFIFO,
            Kind::Socket => libc::S_IFSOCK,
        }
    }
}

/// Attributes of one entry, as stored in the `inode` and `extra` tables.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Attrs {
    /// Full `st_mode`: type bits and permissions (including setuid, setgid, sticky).
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    /// Bytes; authoritative for regular files.
    pub size: u64,
    /// Device number (`st_rdev`) of character and block devices.
    pub rdev: u64,
    /// Seconds since the epoch.
    pub ctime: i64,
    /// Seconds since the epoch.
    pub mtime: i64,
    /// Symlink target (raw bytes, may be relative or absolute).
    pub target: Option<Vec<u8>>,
}

impl Attrs {
    /// The entry's kind (validated attributes always have one).
    pub fn kind(&self) -> Kind {
        Kind::from_mode(self.mode).unwrap_or(Kind::File)
    }

    /// Permission bits (`mode & 0o7777`).
    pub fn perm(&self) -> u32 {
        self.mode & 0o7777
    }
}

/// A route: blocks whose id starts with a byte in `start..=end` live in the store at `url`.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Route {
    pub start: u8,
    pub end: u8,
    pub url: String,
}

impl Route {
    /// A route covering every id.
    pub fn all(url: impl Into<String>) -> Self {
        Self {
            start: 0,
            end: 255,
            url: url.into(),
        }
    }
}

/// Problems reading or writing an FL file.
#[derive(Debug, thiserror::Error)]
pub enum FormatError {
    #[error("cannot open flist {path}")]
    Open {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path} is not an FL flist (not an SQLite database)")]
    NotAnFlist { path: PathBuf },
    #[error(
        "{path} is not a flist: expected an FL flist (an SQLite database, `.fl`) or a legacy 0-fs \
         flist (a tar.gz holding flistdb.sqlite3, `.flist`)"
    )]
    UnknownFormat { path: PathBuf },
    #[error("flist {path} is corrupt or truncated")]
    Corrupt {
        path: PathBuf,
        #[source]
        source: rusqlite::Error,
    },
    #[error("flist {path} is corrupt or truncated: {detail}")]
    Damaged { path: PathBuf, detail: String },
    #[error("flist {path} has no table {table:?} (not an FL flist)")]
    MissingTable { path: PathBuf, table: &'static str },
    #[error(
        "flist {path} has format version {found:?}; this build reads up to {FORMAT_VERSION}: upgrade zos"
    )]
    UnsupportedVersion { path: PathBuf, found: String },
    #[error("flist {path} is invalid: {reason}")]
    Invalid { path: PathBuf, reason: String },
    #[error("cannot write flist {path}")]
    Write {
        path: PathBuf,
        #[source]
        source: rusqlite::Error,
    },
    #[error("cannot write flist {path}")]
    WriteIo {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot add {name:?} to flist {path}: {reason}")]
    BadEntry {
        path: PathBuf,
        name: String,
        reason: String,
    },
}

/// Checks that `name` is one path component a filesystem can hold.
pub fn check_name(name: &[u8]) -> Result<&str, String> {
    if name.is_empty() {
        return Err("empty name".into());
    }
    if name == b"." || name == b".." {
        return Err(format!(
            "name {:?} is not allowed",
            String::from_utf8_lossy(name)
        ));
    }
    if name.contains(&b'/') {
        return Err(format!(
            "name {:?} contains '/'",
            String::from_utf8_lossy(name)
        ));
    }
    if name.contains(&0) {
        return Err(format!(
            "name {:?} contains a NUL byte",
            String::from_utf8_lossy(name)
        ));
    }
    if name.len() > MAX_NAME_LEN {
        return Err(format!(
            "name of {} bytes is longer than {MAX_NAME_LEN}",
            name.len()
        ));
    }
    std::str::from_utf8(name).map_err(|_| {
        format!(
            "name {:?} is not UTF-8 (FL stores names as text)",
            String::from_utf8_lossy(name)
        )
    })
}

pub(crate) fn check_attrs(a: &Attrs) -> Result<(), String> {
    let kind =
        Kind::from_mode(a.mode).ok_or_else(|| format!("unknown file type in mode {:o}", a.mode))?;
    if a.mode & !(libc::S_IFMT | 0o7777) != 0 {
        return Err(format!("mode {:o} has unknown bits", a.mode));
    }
    if a.size > MAX_FILE_SIZE {
        return Err(format!("size {} is larger than {MAX_FILE_SIZE}", a.size));
    }
    match (&a.target, kind) {
        (Some(t), Kind::Symlink) => {
            if t.is_empty() {
                return Err("symlink with an empty target".into());
            }
            if t.len() > MAX_LINK_LEN {
                return Err(format!("symlink target of {} bytes is too long", t.len()));
            }
            if t.contains(&0) {
                return Err("symlink target contains a NUL byte".into());
            }
        }
        (None, Kind::Symlink) => return Err("symlink without a target".into()),
        _ => {}
    }
    Ok(())
}

/// Number of blocks a regular file of `size` bytes has.
pub fn blocks_for_size(size: u64) -> u64 {
    size.div_ceil(BLOCK_SIZE as u64)
}

fn map_open_err(path: &Path, limit: i32, e: rusqlite::Error) -> FormatError {
    use rusqlite::ErrorCode;
    match &e {
        rusqlite::Error::SqliteFailure(f, _) if f.code == ErrorCode::TooBig => {
            FormatError::Invalid {
                path: path.to_owned(),
                reason: format!(
                    "it holds a value or row longer than {limit} bytes (no flist needs one)"
                ),
            }
        }
        rusqlite::Error::SqliteFailure(f, _) if f.code == ErrorCode::NotADatabase => {
            FormatError::NotAnFlist {
                path: path.to_owned(),
            }
        }
        _ => FormatError::Corrupt {
            path: path.to_owned(),
            source: e,
        },
    }
}

/// Opens a tenant's FL file as untrusted input: read-only, `SQLITE_DBCONFIG_DEFENSIVE`, an
/// untrusted schema (`TRUSTED_SCHEMA` off: no SQL functions with side effects from the schema),
/// triggers and views disabled, no memory map, a small page cache and tight limits on value,
/// statement and expression sizes. The schema itself is checked by [`Loader::check_schema`].
pub(crate) fn open_defensive(path: &Path, max_value_len: i32) -> Result<Connection, FormatError> {
    use rusqlite::config::DbConfig;
    use rusqlite::limits::Limit;
    let err = |e| map_open_err(path, max_value_len, e);
    let conn = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .map_err(err)?;
    for (setting, on) in [
        (DbConfig::SQLITE_DBCONFIG_DEFENSIVE, true),
        (DbConfig::SQLITE_DBCONFIG_TRUSTED_SCHEMA, false),
        (DbConfig::SQLITE_DBCONFIG_ENABLE_TRIGGER, false),
        (DbConfig::SQLITE_DBCONFIG_ENABLE_VIEW, false),
        (DbConfig::SQLITE_DBCONFIG_ENABLE_FTS3_TOKENIZER, false),
    ] {
        conn.set_db_config(setting, on).map_err(err)?;
    }
    for (limit, value) in [
        (Limit::SQLITE_LIMIT_LENGTH, max_value_len),
        (Limit::SQLITE_LIMIT_SQL_LENGTH, 100_000),
        (Limit::SQLITE_LIMIT_COLUMN, 100),
        (Limit::SQLITE_LIMIT_EXPR_DEPTH, 100),
        (Limit::SQLITE_LIMIT_COMPOUND_SELECT, 4),
        (Limit::SQLITE_LIMIT_VDBE_OP, 100_000),
        (Limit::SQLITE_LIMIT_FUNCTION_ARG, 8),
        (Limit::SQLITE_LIMIT_ATTACHED, 0),
        (Limit::SQLITE_LIMIT_LIKE_PATTERN_LENGTH, 100),
        (Limit::SQLITE_LIMIT_VARIABLE_NUMBER, 16),
        (Limit::SQLITE_LIMIT_TRIGGER_DEPTH, 1),
    ] {
        conn.set_limit(limit, value).map_err(err)?;
    }
    // 8 MiB of page cache at most, and no memory map of a file a tenant wrote.
    conn.execute_batch("PRAGMA cache_size = -8192; PRAGMA mmap_size = 0; PRAGMA query_only = 1;")
        .map_err(err)?;
    Ok(conn)
}

/// Writes a new FL file. Entries go in parent-first order; the file appears at its final path
/// only when [`Writer::finish`] succeeds, so a failed pack leaves nothing behind.
#[derive(Debug)]
pub struct Writer {
    conn: Option<Connection>,
    tmp: Option<tempfile::TempPath>,
    dest: PathBuf,
    dirs: HashSet<Ino>,
    names: HashSet<(Ino, String)>,
    files: HashMap<Ino, (u64, u64)>,
}

impl Writer {
    /// Starts a new flist that will be written to `dest` (replaced if it exists).
    pub fn create(dest: &Path) -> Result<Self, FormatError> {
        let dir = match dest.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_owned(),
            _ => PathBuf::from("."),
        };
        let tmp = tempfile::Builder::new()
            .prefix(".flist-")
            .suffix(".tmp")
            .tempfile_in(&dir)
            .map_err(|source| FormatError::WriteIo {
                path: dest.to_owned(),
                source,
            })?
            .into_temp_path();
        let werr = |source| FormatError::Write {
            path: dest.to_owned(),
            source,
        };
        let conn = Connection::open(&tmp).map_err(werr)?;
        conn.execute_batch("PRAGMA journal_mode=DELETE; PRAGMA synchronous=OFF;")
            .map_err(werr)?;
        conn.execute_batch(SCHEMA).map_err(werr)?;
        conn.execute_batch("BEGIN").map_err(werr)?;
        Ok(Self {
            conn: Some(conn),
            tmp: Some(tmp),
            dest: dest.to_owned(),
            dirs: HashSet::new(),
            names: HashSet::new(),
            files: HashMap::new(),
        })
    }

    fn conn(&self) -> &Connection {
        self.conn.as_ref().expect("writer is open until finish")
    }

    fn werr(&self) -> impl Fn(rusqlite::Error) -> FormatError + '_ {
        |source| FormatError::Write {
            path: self.dest.clone(),
            source,
        }
    }

    fn bad(&self, name: &str, reason: impl Into<String>) -> FormatError {
        FormatError::BadEntry {
            path: self.dest.clone(),
            name: name.to_string(),
            reason: reason.into(),
        }
    }

    fn insert(&mut self, parent: Ino, name: &str, a: &Attrs) -> Result<Ino, FormatError> {
        check_attrs(a).map_err(|r| self.bad(name, r))?;
        self.conn()
            .execute(
                "insert into inode (parent, name, size, uid, gid, mode, rdev, ctime, mtime) values (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                params![
                    parent as i64,
                    name,
                    a.size as i64,
                    a.uid as i64,
                    a.gid as i64,
                    a.mode as i64,
                    a.rdev as i64,
                    a.ctime,
                    a.mtime
                ],
            )
            .map_err(self.werr())?;
        let ino = self.conn().last_insert_rowid() as Ino;
        if let Some(target) = &a.target {
            self.conn()
                .execute(
                    "insert into extra (ino, data) values (?, ?)",
                    params![ino as i64, target],
                )
                .map_err(self.werr())?;
        }
        match a.kind() {
            Kind::Dir => {
                self.dirs.insert(ino);
            }
            Kind::File => {
                self.files.insert(ino, (a.size, 0));
            }
            _ => {}
        }
        Ok(ino)
    }

    /// Adds the root directory (must be the first entry); returns [`ROOT_INO`].
    pub fn root(&mut self, attrs: &Attrs) -> Result<Ino, FormatError> {
        if !self.dirs.is_empty() || !self.files.is_empty() {
            return Err(self.bad("/", "the root must be the first entry"));
        }
        if attrs.kind() != Kind::Dir {
            return Err(self.bad("/", "the root must be a directory"));
        }
        let ino = self.insert(0, "/", attrs)?;
        debug_assert_eq!(ino, ROOT_INO);
        Ok(ino)
    }

    /// Adds an entry named `name` under the directory `parent`; returns its inode number.
    pub fn entry(&mut self, parent: Ino, name: &str, attrs: &Attrs) -> Result<Ino, FormatError> {
        check_name(name.as_bytes()).map_err(|r| self.bad(name, r))?;
        if !self.dirs.contains(&parent) {
            return Err(self.bad(
                name,
                format!("parent {parent} is not a directory of this flist"),
            ));
        }
        if !self.names.insert((parent, name.to_string())) {
            return Err(self.bad(
                name,
                "an entry with this name already exists in the directory",
            ));
        }
        self.insert(parent, name, attrs)
    }

    /// Appends a block to a regular file; blocks must be added in file order.
    pub fn block(&mut self, ino: Ino, block: &BlockRef) -> Result<(), FormatError> {
        let Some((size, count)) = self.files.get_mut(&ino) else {
            return Err(self.bad(&ino.to_string(), "blocks belong to regular files only"));
        };
        *count += 1;
        if *count > blocks_for_size(*size) {
            let size = *size;
            return Err(self.bad(
                &ino.to_string(),
                format!("more blocks than a file of {size} bytes holds"),
            ));
        }
        self.conn()
            .execute(
                "insert into block (ino, id, key) values (?, ?, ?)",
                params![ino as i64, &block.id.0[..], &block.key.0[..]],
            )
            .map_err(self.werr())?;
        Ok(())
    }

    /// Records that the regular file `ino` is a hard link to the regular file `target`.
    pub fn hardlink(&mut self, ino: Ino, target: Ino) -> Result<(), FormatError> {
        if ino == target || !self.files.contains_key(&ino) || !self.files.contains_key(&target) {
            return Err(self.bad(
                &ino.to_string(),
                format!("hard link {ino} -> {target} must join two different regular files"),
            ));
        }
        self.conn()
            .execute(
                "insert into hardlink (ino, target) values (?, ?)",
                params![ino as i64, target as i64],
            )
            .map_err(self.werr())?;
        Ok(())
    }

    /// Adds a store route.
    pub fn route(&mut self, route: &Route) -> Result<(), FormatError> {
        if route.start > route.end || route.url.is_empty() {
            return Err(self.bad(&route.url, "a route needs start <= end and a url"));
        }
        self.conn()
            .execute(
                "insert into route (start, end, url) values (?, ?, ?)",
                params![route.start, route.end, route.url],
            )
            .map_err(self.werr())?;
        Ok(())
    }

    /// Sets a tag (replacing an earlier value).
    pub fn tag(&mut self, key: &str, value: &str) -> Result<(), FormatError> {
        if key.is_empty() {
            return Err(self.bad(key, "empty tag key"));
        }
        self.conn()
            .execute(
                "insert or replace into tag (key, value) values (?, ?)",
                params![key, value],
            )
            .map_err(self.werr())?;
        Ok(())
    }

    /// Checks that every file got all its blocks, commits, and moves the file into place.
    pub fn finish(mut self) -> Result<(), FormatError> {
        if self.dirs.is_empty() {
            return Err(self.bad("/", "the flist has no root"));
        }
        for (ino, (size, count)) in &self.files {
            if *count != blocks_for_size(*size) {
                return Err(self.bad(
                    &ino.to_string(),
                    format!("file of {size} bytes has {count} blocks"),
                ));
            }
        }
        self.tag(FORMAT_TAG, &FORMAT_VERSION.to_string())?;
        let conn = self.conn.take().expect("open");
        let dest = self.dest.clone();
        let werr = |source| FormatError::Write {
            path: dest.clone(),
            source,
        };
        conn.execute_batch("COMMIT").map_err(werr)?;
        conn.close().map_err(|(_, e)| werr(e))?;
        let tmp = self.tmp.take().expect("open");
        std::fs::File::open(&tmp)
            .and_then(|f| f.sync_all())
            .map_err(|source| FormatError::WriteIo {
                path: dest.clone(),
                source,
            })?;
        tmp.persist(&dest).map_err(|e| FormatError::WriteIo {
            path: dest.clone(),
            source: e.error,
        })?;
        // The temp file was created 0600; a flist is public metadata.
        use std::os::unix::fs::PermissionsExt;
        let _ = std::fs::set_permissions(&dest, std::fs::Permissions::from_mode(0o644));
        Ok(())
    }
}

/// One validated entry of a flist.
#[derive(Clone, Debug)]
pub struct Node {
    /// Inode number in the flist (for a hard link: its own row, not the target's).
    pub ino: Ino,
    /// Parent directory (0 for the root).
    pub parent: Ino,
    /// File name ("/" for the root).
    pub name: String,
    /// Attributes.
    pub attrs: Attrs,
    /// Blocks of a regular file, in order.
    pub blocks: Vec<BlockRef>,
    /// Children of a directory, sorted by name.
    pub children: Vec<Ino>,
    /// For a hard link: the inode holding the file (which has no `link_to` itself).
    pub link_to: Option<Ino>,
    /// Number of names of this file (1, or more for hard-linked files); for directories 2 plus
    /// the number of subdirectories.
    pub nlink: u32,
    /// Why the content of this regular file cannot be read (its blocks do not cover its size:
    /// flists in the wild have such files). The rest of the flist is usable; reading this file
    /// fails with EIO.
    pub damaged: Option<String>,
}

/// Which on-disk format a flist was read from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Format {
    /// The rfs FL format (`.fl`): an SQLite database; blocks are AES-256-GCM, BLAKE2b-256.
    Fl,
    /// The legacy 0-fs format (`.flist`): a tar.gz holding an SQLite key-value database of
    /// capnp directories; blocks are XXTEA, BLAKE2b-128 (see [`crate::legacy`]).
    Legacy,
}

/// A validated flist, loaded whole into memory.
#[derive(Debug)]
pub struct Flist {
    path: PathBuf,
    nodes: HashMap<Ino, Node>,
    tags: BTreeMap<String, String>,
    routes: Vec<Route>,
    format_version: Option<u32>,
    format: Format,
}

/// `name` as an SQL string literal.
fn quote(name: &str) -> String {
    format!("'{}'", name.replace('\'', "''"))
}

fn bytes_of(v: ValueRef<'_>) -> Option<Vec<u8>> {
    match v {
        ValueRef::Text(t) => Some(t.to_vec()),
        ValueRef::Blob(b) => Some(b.to_vec()),
        _ => None,
    }
}

fn int_of(v: ValueRef<'_>) -> Option<i64> {
    match v {
        ValueRef::Integer(i) => Some(i),
        _ => None,
    }
}

impl Flist {
    /// Opens and validates an FL file. Every name must be one path component, every parent a
    /// directory of the flist, every entry reachable from the root, sizes sane and block lists
    /// consistent with sizes; otherwise the flist is refused with the reason.
    pub fn open(path: &Path) -> Result<Self, FormatError> {
        let mut header = [0u8; 16];
        {
            use std::io::Read;
            let mut f = std::fs::File::open(path).map_err(|source| FormatError::Open {
                path: path.to_owned(),
                source,
            })?;
            if f.read_exact(&mut header).is_err() || &header != b"SQLite format 3\0" {
                return Err(FormatError::NotAnFlist {
                    path: path.to_owned(),
                });
            }
        }
        let conn = open_defensive(path, MAX_VALUE_LEN)?;
        let load = Loader {
            path,
            conn: &conn,
            max_value_len: MAX_VALUE_LEN,
        };
        load.check_schema()?;
        load.run()
    }

    /// A flist built by another reader ([`crate::legacy`]) from nodes it validated: every name
    /// one path component, every node reachable from [`ROOT_INO`] exactly once, attributes
    /// checked. Children are sorted, link counts and damaged files computed here.
    pub(crate) fn assemble(
        path: &Path,
        mut nodes: HashMap<Ino, Node>,
        tags: BTreeMap<String, String>,
        routes: Vec<Route>,
        format: Format,
    ) -> Result<Self, FormatError> {
        let invalid = |reason: String| FormatError::Invalid {
            path: path.to_owned(),
            reason,
        };
        let mut children: HashMap<Ino, Vec<Ino>> = HashMap::new();
        for n in nodes.values() {
            check_attrs(&n.attrs).map_err(|r| invalid(format!("{:?}: {r}", n.name)))?;
            if n.ino != ROOT_INO {
                children.entry(n.parent).or_default().push(n.ino);
            }
        }
        for (parent, mut kids) in children {
            kids.sort_by(|a, b| nodes[a].name.cmp(&nodes[b].name));
            for w in kids.windows(2) {
                if nodes[&w[0]].name == nodes[&w[1]].name {
                    return Err(invalid(format!(
                        "directory {:?} has two entries named {:?}",
                        nodes.get(&parent).map(|p| p.name.as_str()).unwrap_or("?"),
                        nodes[&w[0]].name
                    )));
                }
            }
            let subdirs = kids
                .iter()
                .filter(|k| nodes[k].attrs.kind() == Kind::Dir)
                .count() as u32;
            let Some(p) = nodes.get_mut(&parent) else {
                return Err(invalid(format!("parent {parent} does not exist")));
            };
            p.children = kids;
            p.nlink = 2 + subdirs;
        }
        for n in nodes.values_mut() {
            match n.attrs.kind() {
                Kind::Dir if n.children.is_empty() => n.nlink = 2,
                Kind::Dir => {}
                _ => n.nlink = 1,
            }
            mark_damaged(n);
        }
        Ok(Flist {
            path: path.to_owned(),
            nodes,
            tags,
            routes,
            format_version: None,
            format,
        })
    }

    /// The on-disk format this flist was read from.
    pub fn format(&self) -> Format {
        self.format
    }

    /// The file this flist was read from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The zos format revision, or `None` for a flist made by rfs.
    pub fn format_version(&self) -> Option<u32> {
        self.format_version
    }

    /// The root directory.
    pub fn root(&self) -> &Node {
        &self.nodes[&ROOT_INO]
    }

    /// An entry by inode number.
    pub fn get(&self, ino: Ino) -> Option<&Node> {
        self.nodes.get(&ino)
    }

    /// The entry that holds the data of `ino`: itself, or the target of a hard link.
    pub fn resolve(&self, ino: Ino) -> Option<&Node> {
        let n = self.nodes.get(&ino)?;
        match n.link_to {
            Some(t) => self.nodes.get(&t),
            None => Some(n),
        }
    }

    /// A child of a directory by name.
    pub fn lookup(&self, parent: Ino, name: &[u8]) -> Option<&Node> {
        let dir = self.nodes.get(&parent)?;
        let i = dir
            .children
            .binary_search_by(|c| self.nodes[c].name.as_bytes().cmp(name))
            .ok()?;
        self.nodes.get(&dir.children[i])
    }

    /// Number of entries (including the root).
    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    /// Always false: a flist has at least its root.
    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }

    /// The path of an entry inside the flist, starting with `/`.
    pub fn path_of(&self, ino: Ino) -> String {
        let mut parts = Vec::new();
        let mut cur = ino;
        while cur != ROOT_INO {
            let Some(n) = self.nodes.get(&cur) else { break };
            parts.push(n.name.as_str());
            cur = n.parent;
        }
        parts.reverse();
        format!("/{}", parts.join("/"))
    }

    /// The regular files whose content cannot be read, with why, sorted by path.
    pub fn damaged(&self) -> Vec<(String, String)> {
        let mut out: Vec<(String, String)> = self
            .nodes
            .values()
            .filter_map(|n| Some((self.path_of(n.ino), n.damaged.clone()?)))
            .collect();
        out.sort();
        out
    }

    /// Every entry with its path, parents before children, siblings sorted by name.
    pub fn walk(&self) -> Vec<(String, &Node)> {
        let mut out = Vec::with_capacity(self.nodes.len());
        let mut stack = vec![("/".to_string(), self.root())];
        while let Some((path, node)) = stack.pop() {
            for c in node.children.iter().rev() {
                let child = &self.nodes[c];
                let p = if path == "/" {
                    format!("/{}", child.name)
                } else {
                    format!("{path}/{}", child.name)
                };
                stack.push((p, child));
            }
            out.push((path, node));
        }
        out
    }

    /// The flist's tags.
    pub fn tags(&self) -> &BTreeMap<String, String> {
        &self.tags
    }

    /// The flist's store routes.
    pub fn routes(&self) -> &[Route] {
        &self.routes
    }
}

/// Marks a regular file whose blocks do not cover its size as damaged.
fn mark_damaged(n: &mut Node) {
    if n.attrs.kind() == Kind::File && n.blocks.len() as u64 != blocks_for_size(n.attrs.size) {
        n.damaged = Some(format!(
            "{} blocks for a size of {} bytes (expected {})",
            n.blocks.len(),
            n.attrs.size,
            blocks_for_size(n.attrs.size)
        ));
    }
}

pub(crate) struct Loader<'a> {
    pub(crate) path: &'a Path,
    pub(crate) conn: &'a Connection,
    /// The value limit the connection was opened with, for error messages.
    pub(crate) max_value_len: i32,
}

impl Loader<'_> {
    pub(crate) fn corrupt(&self, e: rusqlite::Error) -> FormatError {
        map_open_err(self.path, self.max_value_len, e)
    }

    pub(crate) fn invalid(&self, reason: impl Into<String>) -> FormatError {
        FormatError::Invalid {
            path: self.path.to_owned(),
            reason: reason.into(),
        }
    }

    pub(crate) fn rows<T>(
        &self,
        sql: &str,
        mut f: impl FnMut(&rusqlite::Row<'_>) -> Result<T, FormatError>,
    ) -> Result<Vec<T>, FormatError> {
        let mut stmt = self.conn.prepare(sql).map_err(|e| self.corrupt(e))?;
        let mut rows = stmt.query([]).map_err(|e| self.corrupt(e))?;
        let mut out = Vec::new();
        while let Some(row) = rows.next().map_err(|e| self.corrupt(e))? {
            out.push(f(row)?);
        }
        Ok(out)
    }

    /// Refuses a schema with anything but tables and indexes: triggers, views (which could
    /// shadow a table), virtual tables (code of a module runs on every read) and generated or
    /// hidden columns (expressions evaluated on read). Nothing else is read before this.
    pub(crate) fn check_schema(&self) -> Result<(), FormatError> {
        let objects = self.rows(
            "select type, name, coalesce(sql, '') from sqlite_master",
            |r| {
                let get = |i| r.get::<_, String>(i).map_err(|e| self.corrupt(e));
                Ok((get(0)?, get(1)?, get(2)?))
            },
        )?;
        for (kind, name, sql) in &objects {
            let virt = sql
                .split_whitespace()
                .take(2)
                .any(|w| w.eq_ignore_ascii_case("virtual"));
            let what = match kind.as_str() {
                "trigger" => "a trigger",
                "view" => "a view",
                "table" if virt => "a virtual table",
                "table" | "index" => continue,
                _ => "a schema object of an unknown type",
            };
            return Err(self.invalid(format!(
                "it has {what} {name:?} (a flist holds only tables and indexes)"
            )));
        }
        for (_, table, _) in objects.iter().filter(|(k, ..)| k == "table") {
            let hidden = self.rows(
                &format!(
                    "select name, hidden from pragma_table_xinfo({})",
                    quote(table)
                ),
                |r| {
                    let name: String = r.get(0).map_err(|e| self.corrupt(e))?;
                    let hidden: i64 = r.get(1).map_err(|e| self.corrupt(e))?;
                    Ok((name, hidden))
                },
            )?;
            if let Some((col, _)) = hidden.iter().find(|(_, h)| *h != 0) {
                return Err(self.invalid(format!(
                    "table {table:?} has a generated or hidden column {col:?} (a flist holds \
                     only plain columns)"
                )));
            }
        }
        Ok(())
    }

    fn run(&self) -> Result<Flist, FormatError> {
        // A file cut short can still answer queries about its first pages: check its length
        // against the page count its header records.
        let pragma = |name: &str| -> Result<i64, FormatError> {
            self.conn
                .query_row(&format!("PRAGMA {name}"), [], |r| r.get(0))
                .map_err(|e| self.corrupt(e))
        };
        let need = pragma("page_size")? * pragma("page_count")?;
        let have = std::fs::metadata(self.path)
            .map(|m| m.len() as i64)
            .map_err(|source| FormatError::Open {
                path: self.path.to_owned(),
                source,
            })?;
        if have < need {
            return Err(FormatError::Damaged {
                path: self.path.to_owned(),
                detail: format!("the file has {have} bytes, its database {need}"),
            });
        }
        let check: String = self
            .conn
            .query_row("PRAGMA quick_check", [], |r| r.get(0))
            .map_err(|e| self.corrupt(e))?;
        if check != "ok" {
            return Err(FormatError::Damaged {
                path: self.path.to_owned(),
                detail: check,
            });
        }
        let tables: HashSet<String> = self
            .rows("select name from sqlite_master where type = 'table'", |r| {
                r.get::<_, String>(0).map_err(|e| self.corrupt(e))
            })?
            .into_iter()
            .collect();
        for t in ["inode", "extra", "block", "tag", "route"] {
            if !tables.contains(t) {
                return Err(FormatError::MissingTable {
                    path: self.path.to_owned(),
                    table: t,
                });
            }
        }

        // Tags and the format version.
        let mut tags = BTreeMap::new();
        for (k, v) in self.rows("select key, value from tag", |r| {
            let k = bytes_of(r.get_ref(0).map_err(|e| self.corrupt(e))?);
            let v = bytes_of(r.get_ref(1).map_err(|e| self.corrupt(e))?);
            Ok((k, v))
        })? {
            let k = k.ok_or_else(|| self.invalid("a tag has no key"))?;
            let k = String::from_utf8(k).map_err(|_| self.invalid("a tag key is not UTF-8"))?;
            let v = String::from_utf8_lossy(&v.unwrap_or_default()).into_owned();
            tags.insert(k, v);
        }
        let format_version = match tags.get(FORMAT_TAG) {
            None => None,
            Some(v) => match v.parse::<u32>() {
                Ok(n) if n >= 1 && n <= FORMAT_VERSION => Some(n),
                _ => {
                    return Err(FormatError::UnsupportedVersion {
                        path: self.path.to_owned(),
                        found: v.clone(),
                    });
                }
            },
        };

        // Routes.
        let routes = self.rows("select start, end, url from route", |r| {
            let s = int_of(r.get_ref(0).map_err(|e| self.corrupt(e))?);
            let e = int_of(r.get_ref(1).map_err(|e| self.corrupt(e))?);
            let u = bytes_of(r.get_ref(2).map_err(|e| self.corrupt(e))?);
            match (s, e, u) {
                (Some(s), Some(e), Some(u)) if (0..=255).contains(&s) && (s..=255).contains(&e) => {
                    let url = String::from_utf8(u)
                        .map_err(|_| self.invalid("a route url is not UTF-8"))?;
                    Ok(Route {
                        start: s as u8,
                        end: e as u8,
                        url,
                    })
                }
                _ => Err(self.invalid("a route has a bad range or no url")),
            }
        })?;

        // Inodes.
        let mut nodes: HashMap<Ino, Node> = HashMap::new();
        let rows = self.rows(
            "select ino, parent, name, size, uid, gid, mode, rdev, ctime, mtime from inode",
            |r| {
                let mut ints = [0i64; 10];
                let mut name = None;
                for (i, slot) in ints.iter_mut().enumerate() {
                    let v = r.get_ref(i).map_err(|e| self.corrupt(e))?;
                    if i == 2 {
                        name = bytes_of(v);
                        continue;
                    }
                    *slot = match v {
                        ValueRef::Integer(n) => n,
                        ValueRef::Null if i >= 3 => 0,
                        _ => {
                            return Err(self.invalid(format!(
                                "inode row {} has a non-integer in column {i}",
                                ints[0]
                            )));
                        }
                    };
                }
                Ok((ints, name))
            },
        )?;
        for (v, name) in rows {
            let [ino, parent, _, size, uid, gid, mode, rdev, ctime, mtime] = v;
            let bad = |what: &str| self.invalid(format!("inode {ino}: {what}"));
            if ino < 1 || parent < 0 {
                return Err(bad("bad inode or parent number"));
            }
            let name = name.ok_or_else(|| bad("no name"))?;
            let name = if ino as u64 == ROOT_INO {
                if parent != 0 {
                    return Err(bad("the root (inode 1) must have parent 0"));
                }
                "/".to_string()
            } else {
                if parent == 0 {
                    return Err(bad("only inode 1 may be the root (parent 0)"));
                }
                check_name(&name).map_err(|r| bad(&r))?.to_string()
            };
            let (Ok(uid), Ok(gid)) = (u32::try_from(uid), u32::try_from(gid)) else {
                return Err(bad("uid or gid out of range"));
            };
            let (Ok(mode), Ok(size)) = (u32::try_from(mode), u64::try_from(size)) else {
                return Err(bad("mode or size out of range"));
            };
            let attrs = Attrs {
                mode,
                uid,
                gid,
                size,
                rdev: rdev as u64,
                ctime,
                mtime,
                target: None,
            };
            if Kind::from_mode(mode).is_none() {
                return Err(bad(&format!("unknown file type in mode {mode:o}")));
            }
            nodes.insert(
                ino as u64,
                Node {
                    ino: ino as u64,
                    parent: parent as u64,
                    name,
                    attrs,
                    blocks: Vec::new(),
                    children: Vec::new(),
                    link_to: None,
                    nlink: 1,
                    damaged: None,
                },
            );
        }
        match nodes.get(&ROOT_INO) {
            Some(r) if r.attrs.kind() == Kind::Dir => {}
            Some(_) => return Err(self.invalid("the root (inode 1) is not a directory")),
            None => return Err(self.invalid("the flist has no root (inode 1)")),
        }

        // Symlink targets.
        for (ino, data) in self.rows("select ino, data from extra", |r| {
            let ino = int_of(r.get_ref(0).map_err(|e| self.corrupt(e))?);
            let data = bytes_of(r.get_ref(1).map_err(|e| self.corrupt(e))?);
            Ok((ino, data))
        })? {
            let Some(node) = ino.and_then(|i| nodes.get_mut(&(i as u64))) else {
                return Err(self.invalid(format!("extra data for unknown inode {ino:?}")));
            };
            if node.attrs.kind() == Kind::Symlink {
                node.attrs.target = data;
            }
        }
        for n in nodes.values() {
            check_attrs(&n.attrs).map_err(|r| self.invalid(format!("inode {}: {r}", n.ino)))?;
        }

        // The tree: parents exist and are directories, names unique, all reachable.
        let mut children: HashMap<Ino, Vec<Ino>> = HashMap::new();
        for n in nodes.values() {
            if n.ino == ROOT_INO {
                continue;
            }
            match nodes.get(&n.parent) {
                Some(p) if p.attrs.kind() == Kind::Dir => {
                    children.entry(n.parent).or_default().push(n.ino)
                }
                Some(_) => {
                    return Err(self.invalid(format!(
                        "inode {} ({:?}): parent {} is not a directory",
                        n.ino, n.name, n.parent
                    )));
                }
                None => {
                    return Err(self.invalid(format!(
                        "inode {} ({:?}): parent {} does not exist",
                        n.ino, n.name, n.parent
                    )));
                }
            }
        }
        for (parent, kids) in children.iter_mut() {
            kids.sort_by(|a, b| nodes[a].name.cmp(&nodes[b].name));
            for w in kids.windows(2) {
                if nodes[&w[0]].name == nodes[&w[1]].name {
                    return Err(self.invalid(format!(
                        "directory inode {parent} has two entries named {:?}",
                        nodes[&w[0]].name
                    )));
                }
            }
        }
        let mut seen = HashSet::from([ROOT_INO]);
        let mut queue = vec![ROOT_INO];
        while let Some(i) = queue.pop() {
            if let Some(kids) = children.get(&i) {
                for k in kids {
                    if seen.insert(*k) {
                        queue.push(*k);
                    }
                }
            }
        }
        if seen.len() != nodes.len() {
            let lost = nodes
                .keys()
                .find(|k| !seen.contains(k))
                .copied()
                .unwrap_or(0);
            return Err(self.invalid(format!(
                "inode {lost} is not reachable from the root (a cycle in parents)"
            )));
        }
        for (parent, kids) in children {
            let subdirs = kids
                .iter()
                .filter(|k| nodes[k].attrs.kind() == Kind::Dir)
                .count() as u32;
            let p = nodes.get_mut(&parent).expect("checked");
            p.children = kids;
            p.nlink = 2 + subdirs;
        }
        if let Some(root) = nodes.get_mut(&ROOT_INO)
            && root.children.is_empty()
        {
            root.nlink = 2;
        }
        for n in nodes.values_mut() {
            if n.attrs.kind() == Kind::Dir && n.children.is_empty() {
                n.nlink = 2;
            }
        }

        // Blocks, in rowid order, against sizes.
        for (ino, id, key) in self.rows("select ino, id, key from block order by rowid", |r| {
            let ino = int_of(r.get_ref(0).map_err(|e| self.corrupt(e))?);
            let id = bytes_of(r.get_ref(1).map_err(|e| self.corrupt(e))?);
            let key = bytes_of(r.get_ref(2).map_err(|e| self.corrupt(e))?);
            Ok((ino, id, key))
        })? {
            let (Some(id), Some(key)) = (
                id.as_deref().and_then(BlockId::from_slice),
                key.as_deref().and_then(BlockKey::from_slice),
            ) else {
                return Err(self.invalid(format!(
                    "a block of inode {ino:?} has an id or key that is not 32 bytes"
                )));
            };
            let Some(node) = ino.and_then(|i| nodes.get_mut(&(i as u64))) else {
                return Err(self.invalid(format!("a block belongs to unknown inode {ino:?}")));
            };
            if node.attrs.kind() != Kind::File {
                return Err(self.invalid(format!(
                    "inode {} ({:?}) has blocks but is not a regular file",
                    node.ino, node.name
                )));
            }
            node.blocks.push(BlockRef { id, key });
        }
        // A file whose blocks do not cover its size is kept, marked: its content is unreadable,
        // the rest of the flist is not.
        for n in nodes.values_mut() {
            mark_damaged(n);
        }

        // Hard links (zos extension).
        if tables.contains("hardlink") {
            let links = self.rows("select ino, target from hardlink", |r| {
                let a = int_of(r.get_ref(0).map_err(|e| self.corrupt(e))?);
                let b = int_of(r.get_ref(1).map_err(|e| self.corrupt(e))?);
                Ok((a, b))
            })?;
            let sources: HashSet<Ino> = links
                .iter()
                .filter_map(|(a, _)| a.map(|a| a as u64))
                .collect();
            let mut counts: HashMap<Ino, u32> = HashMap::new();
            for (a, b) in links {
                let (Some(a), Some(b)) = (a.map(|v| v as u64), b.map(|v| v as u64)) else {
                    return Err(self.invalid("a hard link row has no inode"));
                };
                let (Some(na), Some(nb)) = (nodes.get(&a), nodes.get(&b)) else {
                    return Err(
                        self.invalid(format!("hard link {a} -> {b} names an unknown inode"))
                    );
                };
                if a == b
                    || sources.contains(&b)
                    || na.attrs.kind() != Kind::File
                    || nb.attrs.kind() != Kind::File
                    || na.attrs.size != nb.attrs.size
                    || na.blocks != nb.blocks
                {
                    return Err(self.invalid(format!(
                        "hard link {a} -> {b} must join a regular file to another with the same content"
                    )));
                }
                *counts.entry(b).or_insert(1) += 1;
                nodes.get_mut(&a).expect("checked").link_to = Some(b);
            }
            for (t, c) in counts {
                nodes.get_mut(&t).expect("checked").nlink = c;
            }
        }

        Ok(Flist {
            path: self.path.to_owned(),
            nodes,
            tags,
            routes,
            format_version,
            format: Format::Fl,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::block::encode;

    fn attrs(kind: Kind, perm: u32) -> Attrs {
        Attrs {
            mode: kind.type_bits() | perm,
            uid: 1000,
            gid: 2000,
            size: 0,
            rdev: 0,
            ctime: 1_700_000_000,
            mtime: 1_700_000_001,
            target: None,
        }
    }

    #[test]
    fn write_and_read_back() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.fl");
        let mut w = Writer::create(&path).unwrap();
        let root = w.root(&attrs(Kind::Dir, 0o755)).unwrap();
        let etc = w.entry(root, "etc", &attrs(Kind::Dir, 0o755)).unwrap();
        let mut f = attrs(Kind::File, 0o4755);
        f.size = 10;
        let file = w.entry(etc, "passwd", &f).unwrap();
        let b = encode(b"0123456789");
        w.block(file, &b.block).unwrap();
        let link = w.entry(etc, "hard", &f).unwrap();
        w.block(link, &b.block).unwrap();
        w.hardlink(link, file).unwrap();
        let mut l = attrs(Kind::Symlink, 0o777);
        l.target = Some(b"../x".to_vec());
        w.entry(root, "lnk", &l).unwrap();
        let mut dev = attrs(Kind::Char, 0o600);
        dev.rdev = libc::makedev(1, 3);
        w.entry(root, "null", &dev).unwrap();
        w.route(&Route::all("dir:///tmp/store")).unwrap();
        w.tag("author", "me").unwrap();
        w.finish().unwrap();

        let fl = Flist::open(&path).unwrap();
        assert_eq!(fl.format_version(), Some(FORMAT_VERSION));
        assert_eq!(fl.len(), 6);
        let etc_n = fl.lookup(ROOT_INO, b"etc").unwrap();
        let pw = fl.lookup(etc_n.ino, b"passwd").unwrap();
        assert_eq!(pw.attrs.uid, 1000);
        assert_eq!(pw.attrs.gid, 2000, "uid and gid are kept apart");
        assert_eq!(pw.attrs.perm(), 0o4755);
        assert_eq!(pw.blocks, vec![b.block]);
        assert_eq!(pw.nlink, 2);
        let hard = fl.lookup(etc_n.ino, b"hard").unwrap();
        assert_eq!(hard.link_to, Some(pw.ino));
        assert_eq!(fl.resolve(hard.ino).unwrap().ino, pw.ino);
        assert_eq!(
            fl.lookup(ROOT_INO, b"lnk").unwrap().attrs.target.as_deref(),
            Some(&b"../x"[..])
        );
        assert_eq!(
            fl.lookup(ROOT_INO, b"null").unwrap().attrs.rdev,
            libc::makedev(1, 3)
        );
        assert_eq!(fl.routes(), &[Route::all("dir:///tmp/store")]);
        assert_eq!(fl.tags()["author"], "me");
        assert_eq!(fl.path_of(pw.ino), "/etc/passwd");
        let paths: Vec<String> = fl.walk().into_iter().map(|(p, _)| p).collect();
        assert_eq!(
            paths,
            ["/", "/etc", "/etc/hard", "/etc/passwd", "/lnk", "/null"]
        );
    }

    #[test]
    fn writer_refuses_bad_names_and_nothing_is_left() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.fl");
        let mut w = Writer::create(&path).unwrap();
        let root = w.root(&attrs(Kind::Dir, 0o755)).unwrap();
        for bad in ["", ".", "..", "a/b", "a\0b"] {
            assert!(
                w.entry(root, bad, &attrs(Kind::File, 0o644)).is_err(),
                "{bad:?}"
            );
        }
        w.entry(root, "a", &attrs(Kind::Dir, 0o755)).unwrap();
        assert!(w.entry(root, "a", &attrs(Kind::Dir, 0o755)).is_err());
        let mut f = attrs(Kind::File, 0o644);
        f.size = 3;
        w.entry(root, "f", &f).unwrap();
        // file f has no block: finish refuses
        assert!(w.finish().is_err());
        assert!(!path.exists());
        assert_eq!(
            std::fs::read_dir(dir.path()).unwrap().count(),
            0,
            "temp file removed"
        );
    }

    fn raw_flist(dir: &Path, sql: &str) -> PathBuf {
        let path = dir.join("raw.fl");
        let _ = std::fs::remove_file(&path);
        let c = Connection::open(&path).unwrap();
        c.execute_batch(SCHEMA).unwrap();
        c.execute_batch(
            "insert into inode (parent, name, size, uid, gid, mode, rdev, ctime, mtime) values (0, '/', 0, 0, 0, 16877, 0, 0, 0);",
        )
        .unwrap();
        c.execute_batch(sql).unwrap();
        path
    }

    fn open_err(dir: &Path, sql: &str) -> String {
        let p = raw_flist(dir, sql);
        let e = Flist::open(&p).unwrap_err();
        e.to_string()
    }

    #[test]
    fn reader_refuses_hostile_flists() {
        let d = tempfile::tempdir().unwrap();
        let dir = d.path();
        let ins = |parent: i64, name: &str, mode: u32, size: i64| {
            format!(
                "insert into inode (parent, name, size, uid, gid, mode, rdev, ctime, mtime) values ({parent}, '{name}', {size}, 0, 0, {mode}, 0, 0, 0);"
            )
        };
        let reg = libc::S_IFREG | 0o644;
        let dirm = libc::S_IFDIR | 0o755;
        for (sql, expect) in [
            (ins(1, "..", reg, 0), "not allowed"),
            (ins(1, ".", reg, 0), "not allowed"),
            (ins(1, "a/b", reg, 0), "contains '/'"),
            (ins(1, "", reg, 0), "empty name"),
            (ins(7, "x", reg, 0), "does not exist"),
            (
                ins(1, "x", reg, 0) + &ins(2, "y", reg, 0),
                "not a directory",
            ),
            (ins(1, "x", reg, 0) + &ins(1, "x", reg, 0), "two entries"),
            (ins(1, "x", reg, 1 << 60), "larger than"),
            (ins(1, "x", reg, -5), "out of range"),
            (ins(1, "x", 0o170644, 0), "unknown file type"),
            (
                ins(1, "l", libc::S_IFLNK | 0o777, 0),
                "symlink without a target",
            ),
            (
                // a cycle: 2 -> 3 -> 2, never reaching the root
                ins(3, "a", dirm, 0) + &ins(2, "b", dirm, 0),
                "not reachable",
            ),
            (ins(0, "r2", dirm, 0), "only inode 1"),
            (
                "insert into tag values ('zos-format', '99');".to_string(),
                "format version",
            ),
            (
                "insert into block values (1, x'00', x'00');".to_string(),
                "not 32 bytes",
            ),
        ] {
            let msg = open_err(dir, &sql);
            assert!(msg.contains(expect), "{sql}: got {msg:?}, want {expect:?}");
        }
        // a NUL inside a name, via a blob
        let msg = open_err(
            dir,
            &format!(
                "insert into inode (parent, name, size, uid, gid, mode, rdev, ctime, mtime) values (1, x'610062', 0, 0, 0, {reg}, 0, 0, 0);"
            ),
        );
        assert!(msg.contains("NUL"), "{msg}");
    }

    #[test]
    fn reader_refuses_non_flists() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("junk.fl");
        std::fs::write(&p, b"this is not sqlite at all, not at all").unwrap();
        assert!(matches!(
            Flist::open(&p),
            Err(FormatError::NotAnFlist { .. })
        ));
        assert!(matches!(
            Flist::open(&d.path().join("missing.fl")),
            Err(FormatError::Open { .. })
        ));
        let c = Connection::open(d.path().join("other.db")).unwrap();
        c.execute_batch("create table t(x)").unwrap();
        drop(c);
        assert!(matches!(
            Flist::open(&d.path().join("other.db")),
            Err(FormatError::MissingTable { .. })
        ));
    }
}
