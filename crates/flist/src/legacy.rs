//! The legacy 0-fs flist format (`.flist`), read into the same validated [`Flist`] model as an
//! FL file, so inspecting and walking it need nothing else.
//!
//! A `.flist` is a gzip-compressed tar archive holding one SQLite database, `flistdb.sqlite3`:
//!
//! | table | columns |
//! |---|---|
//! | `entries` | `key` TEXT, `value` BLOB: directories and ACIs as Cap'n Proto messages |
//! | `metadata` (optional) | `key`, `value` TEXT: tags; `backend` is JSON naming the block store |
//!
//! Every directory is one `Dir` message (schema `schema/legacy.capnp`) stored under the
//! BLAKE2b-128 hex digest of its path relative to the root (the root: the digest of the empty
//! string, [`ROOT_KEY`]). Its `contents` are `Inode`s: a file (size and blocks), a symbolic link,
//! a special file, or a subdirectory naming the key of its own `Dir`. Ownership and permissions
//! are `ACI` messages in the same table under the key an entry's `aclkey` names.
//!
//! File content lives in a 0-db (Redis protocol) store, cut in 512 KiB blocks:
//!
//! ```text
//! key  = BLAKE2b-128(plain)
//! data = XXTEA(key, snappy_raw(plain))       (the xxtea-c layout: length word appended)
//! hash = BLAKE2b-128(data)                   the store keeps data under hash
//! ```
//!
//! In the [`Flist`] model a legacy block is a [`BlockRef`] whose id is the 16-byte hash and
//! whose key is the 16-byte key, each followed by 16 zero bytes ([`block_ref`], [`split`]);
//! [`Flist::format`] says which encoding the blocks use.
//!
//! # Untrusted input
//!
//! [`open`] reads a tenant's file. Before anything is parsed: the decompressed archive is
//! bounded ([`MAX_ARCHIVE_BYTES`], a tar.gz bomb stops there), it may hold at most
//! [`MAX_ARCHIVE_ENTRIES`] entries of which exactly one regular file, `flistdb.sqlite3`
//! (directory entries `.` aside), at most [`MAX_DB_BYTES`] long; that member is copied to a
//! private temporary file and opened as defensively as an FL file (read-only, defensive mode,
//! no triggers, views or virtual tables, tight limits; values up to [`MAX_VALUE_LEN`], since one
//! directory of a legacy flist is one value). Every capnp message is read with a traversal
//! limit proportional to its size and a nesting limit. The tree is walked from the root by key:
//! a directory reached twice (a cycle, or two names for one directory), names that are not one
//! path component, trees deeper than [`MAX_DEPTH`], more than [`MAX_ENTRIES`] entries or
//! [`MAX_BLOCKS`] blocks, and absurd sizes are refused with the reason.
//!
//! # Why generated code
//!
//! The capnp structures are read through types generated at build time by `capnpc` from our
//! schema (`schema/legacy.capnp`, compiled with Debian's `capnproto`), not through the `capnp`
//! crate's low-level layout API: that API lives in the crate's `private` module, is not stable
//! between releases, and reading a union and list of structs by hand-computed offsets is the kind
//! of code that silently reads the wrong field. The generated accessors bound-check every read
//! and the schema documents the layout. The test writer builds messages with the same types.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::io::Read;
use std::path::Path;

use rusqlite::types::ValueRef;

use crate::block::{BlockId, BlockKey, BlockRef};
use crate::meta::{
    Attrs, Flist, Format, FormatError, Ino, Kind, Loader, MAX_LINK_LEN, Node, ROOT_INO, Route,
    check_name,
};

/// The reader and builder types generated from `schema/legacy.capnp`.
#[allow(
    missing_docs,
    missing_debug_implementations,
    clippy::all,
    clippy::pedantic,
    unused_qualifications
)]
pub mod legacy_capnp {
    include!(concat!(env!("OUT_DIR"), "/legacy_capnp.rs"));
}

use legacy_capnp::{a_c_i, dir, inode, special};

/// Name of the database inside the archive.
pub const DB_NAME: &str = "flistdb.sqlite3";

/// Key of the root directory: BLAKE2b-128 of the empty path, in hex.
pub const ROOT_KEY: &str = "cae66941d9efbd404e4d88758ea67670";

/// Most bytes the decompressed archive may hold (database, headers, padding).
pub const MAX_ARCHIVE_BYTES: u64 = MAX_DB_BYTES + (1 << 20);

/// Largest database accepted (256 MiB; the public hub's large images are tens of MiB).
pub const MAX_DB_BYTES: u64 = 256 << 20;

/// Most entries (of any type) the archive may hold.
pub const MAX_ARCHIVE_ENTRIES: usize = 8;

/// Longest value in the database: one directory's message (32 MiB holds a directory with a
/// 200 GiB file; real ones are at most a few hundred KiB).
pub const MAX_VALUE_LEN: i32 = 32 << 20;

/// Most entries (directories, files, links, specials) in one flist.
pub const MAX_ENTRIES: usize = 4_000_000;

/// Most block references in one flist (2 TiB of content).
pub const MAX_BLOCKS: usize = 4_000_000;

/// Deepest directory nesting accepted (a path Linux can name has fewer components).
pub const MAX_DEPTH: usize = 2048;

/// Length of a legacy block hash and key.
pub const HASH_LEN: usize = 16;

/// A legacy block (16-byte store hash, 16-byte XXTEA key) in the model's 32-byte fields.
pub fn block_ref(hash: &[u8; HASH_LEN], key: &[u8; HASH_LEN]) -> BlockRef {
    let mut id = [0u8; 32];
    id[..HASH_LEN].copy_from_slice(hash);
    let mut k = [0u8; 32];
    k[..HASH_LEN].copy_from_slice(key);
    BlockRef {
        id: BlockId(id),
        key: BlockKey(k),
    }
}

/// Whether an id is a legacy block's (its last 16 bytes are zero). An FL id is a BLAKE2b-256
/// output and is never such (chance 2^-128); a hostile FL flist naming one gets its block checked
/// the legacy way, against the 128-bit hash and key it names, and nothing unchecked either way.
pub fn is_legacy_id(id: &BlockId) -> bool {
    id.0[HASH_LEN..].iter().all(|b| *b == 0)
}

/// Whether a block is a legacy one ([`block_ref`]): id and key both padded with zeros.
pub fn is_legacy(block: &BlockRef) -> bool {
    is_legacy_id(&block.id) && block.key.0[HASH_LEN..].iter().all(|b| *b == 0)
}

/// The 16-byte store hash and key of a legacy block made by [`block_ref`].
pub fn split(block: &BlockRef) -> ([u8; HASH_LEN], [u8; HASH_LEN]) {
    let mut hash = [0u8; HASH_LEN];
    hash.copy_from_slice(&block.id.0[..HASH_LEN]);
    let mut key = [0u8; HASH_LEN];
    key.copy_from_slice(&block.key.0[..HASH_LEN]);
    (hash, key)
}

/// BLAKE2b-128 of `data`.
pub fn blake2b_128(data: &[u8]) -> [u8; HASH_LEN] {
    let h = blake2b_simd::Params::new().hash_length(HASH_LEN).hash(data);
    let mut out = [0u8; HASH_LEN];
    out.copy_from_slice(h.as_bytes());
    out
}

/// The key of the directory at `path` (relative to the root, no leading `/`; "" is the root).
pub fn dir_key(path: &str) -> String {
    hex::encode(blake2b_128(path.as_bytes()))
}

/// Reads whatever the decompressed archive yields, failing once it passes `limit` bytes.
struct Bounded<R> {
    inner: R,
    left: u64,
}

impl<R: Read> Read for Bounded<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if self.left == 0 {
            // One more byte decides between "exactly at the limit" and "over it".
            let mut probe = [0u8; 1];
            return match self.inner.read(&mut probe)? {
                0 => Ok(0),
                _ => Err(std::io::Error::other(format!(
                    "the archive decompresses to more than {MAX_ARCHIVE_BYTES} bytes"
                ))),
            };
        }
        let max = buf.len().min(self.left.min(usize::MAX as u64) as usize);
        let n = self.inner.read(&mut buf[..max])?;
        self.left -= n as u64;
        Ok(n)
    }
}

impl Flist {
    /// Opens and validates a flist of either format, told apart by content (not by name): an
    /// SQLite database is an FL flist ([`Flist::open`]), a gzip stream a legacy 0-fs flist
    /// ([`open`]). Anything else is [`FormatError::UnknownFormat`].
    ///
    /// What reads either format calls this (inspect, mounts, `fetch_flist`); what needs blocks
    /// in the FL encoding (the hub, `hub push`) calls [`Flist::open`], which refuses a legacy
    /// flist.
    pub fn open_any(path: &Path) -> Result<Self, FormatError> {
        let mut head = [0u8; 16];
        let n = {
            use std::io::Read;
            let mut f = std::fs::File::open(path).map_err(|source| FormatError::Open {
                path: path.to_owned(),
                source,
            })?;
            let mut n = 0;
            while n < head.len() {
                match f.read(&mut head[n..]) {
                    Ok(0) => break,
                    Ok(k) => n += k,
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                    Err(source) => {
                        return Err(FormatError::Open {
                            path: path.to_owned(),
                            source,
                        });
                    }
                }
            }
            n
        };
        if n == 16 && &head == b"SQLite format 3\0" {
            Flist::open(path)
        } else if n >= 2 && head[..2] == [0x1f, 0x8b] {
            open(path)
        } else {
            Err(FormatError::UnknownFormat {
                path: path.to_owned(),
            })
        }
    }
}

/// Opens and validates a legacy `.flist` (tar.gz). See the module documentation for what is
/// refused.
pub fn open(path: &Path) -> Result<Flist, FormatError> {
    let invalid = |reason: String| FormatError::Invalid {
        path: path.to_owned(),
        reason,
    };
    let file = std::fs::File::open(path).map_err(|source| FormatError::Open {
        path: path.to_owned(),
        source,
    })?;
    let mut head = [0u8; 2];
    {
        use std::io::{Seek, SeekFrom};
        let mut f = &file;
        if f.read_exact(&mut head).is_err() || head != [0x1f, 0x8b] {
            return Err(FormatError::UnknownFormat {
                path: path.to_owned(),
            });
        }
        f.seek(SeekFrom::Start(0))
            .map_err(|source| FormatError::Open {
                path: path.to_owned(),
                source,
            })?;
    }
    let db = extract(path, file)?;
    let conn = crate::meta::open_defensive(db.path(), MAX_VALUE_LEN)?;
    let load = Loader {
        path,
        conn: &conn,
        max_value_len: MAX_VALUE_LEN,
    };
    load.check_schema()?;
    let tables: HashSet<String> = load
        .rows("select name from sqlite_master where type = 'table'", |r| {
            r.get::<_, String>(0).map_err(|e| load.corrupt(e))
        })?
        .into_iter()
        .collect();
    if !tables.contains("entries") {
        return Err(invalid(format!(
            "its {DB_NAME} has no table \"entries\" (not a 0-fs flist)"
        )));
    }

    let mut entries: HashMap<String, Vec<u8>> = HashMap::new();
    for (key, value) in load.rows("select key, value from entries", |r| {
        let key = text_of(r.get_ref(0).map_err(|e| load.corrupt(e))?);
        let value = bytes_of(r.get_ref(1).map_err(|e| load.corrupt(e))?);
        Ok((key, value))
    })? {
        let (Some(key), Some(value)) = (key, value) else {
            return Err(invalid(
                "an entries row has a key that is not text or a value that is not a blob".into(),
            ));
        };
        if entries.insert(key.clone(), value).is_some() {
            return Err(invalid(format!(
                "key {key:?} is in the entries table twice"
            )));
        }
    }

    let mut tags = BTreeMap::new();
    let mut routes = Vec::new();
    if tables.contains("metadata") {
        for (key, value) in load.rows("select key, value from metadata", |r| {
            let key = text_of(r.get_ref(0).map_err(|e| load.corrupt(e))?);
            let value = text_of(r.get_ref(1).map_err(|e| load.corrupt(e))?);
            Ok((key, value))
        })? {
            let (Some(key), Some(value)) = (key, value) else {
                return Err(invalid("a metadata row is not text".into()));
            };
            if key == "backend" {
                match backend_route(&value) {
                    Some(url) => routes.push(Route::all(url)),
                    None => tracing::warn!(
                        flist = %path.display(),
                        "the backend in the flist's metadata names no host and port; ignored"
                    ),
                }
            } else {
                tags.insert(key, value);
            }
        }
    }
    drop(conn);
    drop(db);

    let nodes = Walker {
        path,
        entries: &entries,
        acis: HashMap::new(),
        nodes: HashMap::new(),
        blocks: 0,
    }
    .run()?;
    Flist::assemble(path, nodes, tags, routes, Format::Legacy)
}

/// Copies the one database member of the archive to a private temporary file.
fn extract(path: &Path, file: std::fs::File) -> Result<tempfile::NamedTempFile, FormatError> {
    let invalid = |reason: String| FormatError::Invalid {
        path: path.to_owned(),
        reason,
    };
    let damaged = |e: std::io::Error| FormatError::Damaged {
        path: path.to_owned(),
        detail: format!("cannot read the tar.gz: {e}"),
    };
    let gz = flate2::read::GzDecoder::new(std::io::BufReader::new(file));
    let mut archive = tar::Archive::new(Bounded {
        inner: gz,
        left: MAX_ARCHIVE_BYTES,
    });
    let mut db: Option<tempfile::NamedTempFile> = None;
    let mut count = 0;
    for entry in archive.entries().map_err(damaged)? {
        let mut entry = entry.map_err(damaged)?;
        count += 1;
        if count > MAX_ARCHIVE_ENTRIES {
            return Err(invalid(format!(
                "the archive has more than {MAX_ARCHIVE_ENTRIES} entries (a .flist holds only \
                 {DB_NAME})"
            )));
        }
        let name = entry.path_bytes().into_owned();
        let name = String::from_utf8_lossy(&name).into_owned();
        let bare = name.trim_start_matches("./");
        let kind = entry.header().entry_type();
        if kind.is_dir() && (bare.is_empty() || bare == ".") {
            continue;
        }
        if !kind.is_file() || bare != DB_NAME {
            return Err(invalid(format!(
                "the archive holds {name:?}; a .flist holds only the regular file {DB_NAME}"
            )));
        }
        if db.is_some() {
            return Err(invalid(format!("the archive holds {DB_NAME} twice")));
        }
        let size = entry.size();
        if size > MAX_DB_BYTES {
            return Err(invalid(format!(
                "its {DB_NAME} is {size} bytes, more than the {MAX_DB_BYTES} a flist may have"
            )));
        }
        let mut tmp = tempfile::Builder::new()
            .prefix(".legacy-flist-")
            .suffix(".sqlite3")
            .tempfile()
            .map_err(|source| FormatError::Open {
                path: path.to_owned(),
                source,
            })?;
        let copied = std::io::copy(&mut (&mut entry).take(MAX_DB_BYTES + 1), tmp.as_file_mut())
            .map_err(damaged)?;
        if copied != size {
            return Err(FormatError::Damaged {
                path: path.to_owned(),
                detail: format!("{DB_NAME} is truncated ({copied} of {size} bytes)"),
            });
        }
        db = Some(tmp);
    }
    let db = db.ok_or_else(|| invalid(format!("the archive holds no {DB_NAME}")))?;
    let mut magic = [0u8; 16];
    let ok = std::fs::File::open(db.path())
        .and_then(|mut f| f.read_exact(&mut magic))
        .is_ok();
    if !ok || &magic != b"SQLite format 3\0" {
        return Err(invalid(format!("its {DB_NAME} is not an SQLite database")));
    }
    Ok(db)
}

/// The store URL a `backend` metadata value names: `redis://[:password@]host:port[/namespace]`
/// (a host with anything but a host name or address in it names nothing).
fn backend_route(json: &str) -> Option<String> {
    #[derive(serde::Deserialize)]
    struct Backend {
        host: Option<String>,
        port: Option<u16>,
        namespace: Option<String>,
        password: Option<String>,
    }
    let b: Backend = serde_json::from_str(json).ok()?;
    let host = b.host.filter(|h| !h.is_empty())?;
    let port = b.port?;
    let host = if host.contains(':') && !host.starts_with('[') {
        format!("[{host}]")
    } else {
        host
    };
    let mut url = reqwest::Url::parse(&format!("redis://{host}:{port}")).ok()?;
    if url.host_str().is_none() || url.path() != "" && url.path() != "/" {
        return None;
    }
    if let Some(ns) = b.namespace.filter(|n| !n.is_empty()) {
        url.path_segments_mut().ok()?.push(&ns);
    }
    if let Some(p) = b.password.filter(|p| !p.is_empty()) {
        url.set_password(Some(&p)).ok()?;
    }
    Some(url.to_string())
}

fn text_of(v: ValueRef<'_>) -> Option<String> {
    match v {
        ValueRef::Text(t) => String::from_utf8(t.to_vec()).ok(),
        _ => None,
    }
}

fn bytes_of(v: ValueRef<'_>) -> Option<Vec<u8>> {
    match v {
        ValueRef::Blob(b) => Some(b.to_vec()),
        ValueRef::Text(t) => Some(t.to_vec()),
        _ => None,
    }
}

/// Ownership and permission bits of an entry.
#[derive(Clone, Copy)]
struct Access {
    perm: u32,
    uid: u32,
    gid: u32,
}

/// Walks the directory tree from the root key, building validated nodes.
struct Walker<'a> {
    path: &'a Path,
    entries: &'a HashMap<String, Vec<u8>>,
    acis: HashMap<String, Option<Access>>,
    nodes: HashMap<Ino, Node>,
    blocks: usize,
}

/// Reader options for one message of `len` bytes: a traversal limit proportional to its size
/// (a message cannot make the reader visit much more than it holds) and a shallow nesting limit.
fn reader_options(len: usize) -> capnp::message::ReaderOptions {
    let mut o = capnp::message::ReaderOptions::new();
    o.traversal_limit_in_words(Some(len / 8 * 4 + 1024));
    o.nesting_limit(16);
    o
}

impl Walker<'_> {
    fn invalid(&self, reason: impl Into<String>) -> FormatError {
        FormatError::Invalid {
            path: self.path.to_owned(),
            reason: reason.into(),
        }
    }

    fn capnp(&self, what: &str, e: capnp::Error) -> FormatError {
        self.invalid(format!("{what} is not a valid message: {e}"))
    }

    fn run(mut self) -> Result<HashMap<Ino, Node>, FormatError> {
        let mut seen: HashSet<String> = HashSet::new();
        // (directory key, its inode, its depth)
        let mut queue: VecDeque<(String, Ino, usize)> = VecDeque::new();
        if !self.entries.contains_key(ROOT_KEY) {
            return Err(self.invalid(format!(
                "it has no root directory (key {ROOT_KEY}): not a 0-fs flist"
            )));
        }
        seen.insert(ROOT_KEY.to_string());
        queue.push_back((ROOT_KEY.to_string(), ROOT_INO, 0));
        let mut next_ino: Ino = ROOT_INO + 1;

        while let Some((key, ino, depth)) = queue.pop_front() {
            let Some(data) = self.entries.get(&key) else {
                let p = self.path_of(ino);
                return Err(self.invalid(format!(
                    "directory {p:?} names key {key:?}, which the flist does not hold"
                )));
            };
            let mut slice: &[u8] = data;
            let what = format!("directory {key}");
            let msg = capnp::serialize::read_message_from_flat_slice(
                &mut slice,
                reader_options(data.len()),
            )
            .map_err(|e| self.capnp(&what, e))?;
            let d: dir::Reader<'_> = msg.get_root().map_err(|e| self.capnp(&what, e))?;

            if ino == ROOT_INO {
                let aclkey = text(d.get_aclkey()).map_err(|e| self.capnp(&what, e))?;
                let access = self.access(&aclkey, Kind::Dir)?;
                let attrs = Attrs {
                    mode: libc::S_IFDIR | access.perm,
                    uid: access.uid,
                    gid: access.gid,
                    size: d.get_size(),
                    rdev: 0,
                    ctime: d.get_creation_time() as i64,
                    mtime: d.get_modification_time() as i64,
                    target: None,
                };
                self.add(ROOT_INO, 0, "/".into(), attrs, Vec::new())?;
            }

            let contents = d.get_contents().map_err(|e| self.capnp(&what, e))?;
            for entry in contents.iter() {
                let name = text(entry.get_name()).map_err(|e| self.capnp(&what, e))?;
                let name = check_name(name.as_bytes())
                    .map_err(|r| self.invalid(format!("directory {:?}: {r}", self.path_of(ino))))?
                    .to_string();
                let aclkey = text(entry.get_aclkey())
                    .map_err(|e| self.capnp(&format!("entry {:?}", self.at(ino, &name)), e))?;
                let size = entry.get_size();
                let ctime = entry.get_creation_time() as i64;
                let mtime = entry.get_modification_time() as i64;
                use inode::attributes::Which;
                let which = match entry.get_attributes().which() {
                    Ok(w) => w,
                    Err(capnp::NotInSchema(n)) => {
                        return Err(self.invalid(format!(
                            "entry {:?} has an unknown type ({n})",
                            self.at(ino, &name)
                        )));
                    }
                };
                let (kind, size, rdev, target, blocks, subdir) = match which {
                    Which::Dir(sub) => {
                        let sub = sub.map_err(|e| {
                            self.capnp(&format!("entry {:?}", self.at(ino, &name)), e)
                        })?;
                        let key = text(sub.get_key()).map_err(|e| {
                            self.capnp(&format!("entry {:?}", self.at(ino, &name)), e)
                        })?;
                        (Kind::Dir, size, 0, None, Vec::new(), Some(key))
                    }
                    Which::File(f) => {
                        let f = f.map_err(|e| {
                            self.capnp(&format!("entry {:?}", self.at(ino, &name)), e)
                        })?;
                        let list = f.get_blocks().map_err(|e| {
                            self.capnp(&format!("entry {:?}", self.at(ino, &name)), e)
                        })?;
                        self.blocks += list.len() as usize;
                        if self.blocks > MAX_BLOCKS {
                            return Err(
                                self.invalid(format!("it has more than {MAX_BLOCKS} blocks"))
                            );
                        }
                        let mut blocks = Vec::with_capacity(list.len() as usize);
                        for b in list.iter() {
                            let hash = b.get_hash().map_err(|e| {
                                self.capnp(&format!("entry {:?}", self.at(ino, &name)), e)
                            })?;
                            let key = b.get_key().map_err(|e| {
                                self.capnp(&format!("entry {:?}", self.at(ino, &name)), e)
                            })?;
                            let (Ok(hash), Ok(key)) = (
                                <[u8; HASH_LEN]>::try_from(hash),
                                <[u8; HASH_LEN]>::try_from(key),
                            ) else {
                                return Err(self.invalid(format!(
                                    "a block of {:?} has a hash or key that is not {HASH_LEN} \
                                     bytes",
                                    self.at(ino, &name)
                                )));
                            };
                            blocks.push(block_ref(&hash, &key));
                        }
                        (Kind::File, size, 0, None, blocks, None)
                    }
                    Which::Link(l) => {
                        let l = l.map_err(|e| {
                            self.capnp(&format!("entry {:?}", self.at(ino, &name)), e)
                        })?;
                        let t = l
                            .get_target()
                            .map_err(|e| {
                                self.capnp(&format!("entry {:?}", self.at(ino, &name)), e)
                            })?
                            .as_bytes()
                            .to_vec();
                        if t.len() > MAX_LINK_LEN {
                            return Err(self.invalid(format!(
                                "symlink {:?} has a target of {} bytes",
                                self.at(ino, &name),
                                t.len()
                            )));
                        }
                        (Kind::Symlink, t.len() as u64, 0, Some(t), Vec::new(), None)
                    }
                    Which::Special(sp) => {
                        let sp = sp.map_err(|e| {
                            self.capnp(&format!("entry {:?}", self.at(ino, &name)), e)
                        })?;
                        let kind = match sp.get_type() {
                            Ok(special::Type::Socket) => Kind::Socket,
                            Ok(special::Type::Block) => Kind::Block,
                            Ok(special::Type::Chardev) => Kind::Char,
                            Ok(special::Type::Fifopipe) => Kind::Fifo,
                            // Neither 0-fs nor rfs shows these; nor do we.
                            Ok(special::Type::Unknown) | Err(_) => continue,
                        };
                        let data = sp.get_data().map_err(|e| {
                            self.capnp(&format!("entry {:?}", self.at(ino, &name)), e)
                        })?;
                        let rdev = match kind {
                            Kind::Block | Kind::Char => device(data),
                            _ => 0,
                        };
                        (kind, 0, rdev, None, Vec::new(), None)
                    }
                };
                let access = self.access(&aclkey, kind)?;
                let attrs = Attrs {
                    mode: kind.type_bits() | access.perm,
                    uid: access.uid,
                    gid: access.gid,
                    size,
                    rdev,
                    ctime,
                    mtime,
                    target,
                };
                let child = next_ino;
                next_ino += 1;
                self.add(child, ino, name, attrs, blocks)?;
                if let Some(key) = subdir {
                    if depth + 1 > MAX_DEPTH {
                        return Err(self.invalid(format!(
                            "its directories nest deeper than {MAX_DEPTH} levels"
                        )));
                    }
                    if !seen.insert(key.clone()) {
                        return Err(self.invalid(format!(
                            "directory {:?} names key {key:?}, which another directory already \
                             is (a cycle, or one directory under two names)",
                            self.path_of(child)
                        )));
                    }
                    queue.push_back((key, child, depth + 1));
                }
            }
        }
        Ok(self.nodes)
    }

    fn add(
        &mut self,
        ino: Ino,
        parent: Ino,
        name: String,
        attrs: Attrs,
        blocks: Vec<BlockRef>,
    ) -> Result<(), FormatError> {
        if self.nodes.len() >= MAX_ENTRIES {
            return Err(self.invalid(format!("it has more than {MAX_ENTRIES} entries")));
        }
        self.nodes.insert(
            ino,
            Node {
                ino,
                parent,
                name,
                attrs,
                blocks,
                children: Vec::new(),
                link_to: None,
                nlink: 1,
                damaged: None,
            },
        );
        Ok(())
    }

    /// The path of `name` in the directory `dir` (for messages: computed only on failure, so
    /// reading stays linear in the size of the flist however deep it is).
    fn at(&self, dir: Ino, name: &str) -> String {
        let p = self.path_of(dir);
        if p == "/" {
            format!("/{name}")
        } else {
            format!("{p}/{name}")
        }
    }

    /// The path of a node added so far (for messages).
    fn path_of(&self, ino: Ino) -> String {
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

    /// The access an ACI key names. The permission bits are the ACI's `mode & 0o7777` (its type
    /// bits, if any, are ignored: the entry's union says the type). Ids are the ACI's `uid` and
    /// `gid`; an ACI made before those existed has -1 there and names a user and a group: `root`
    /// is 0 and any other name 1000, as 0-fs and rfs 1.x resolve names a node does not know. An
    /// entry without an ACI (empty or unknown key) is `root:root`, 0555 for a directory and 0444
    /// for anything else (rfs 1.x shows 0444).
    fn access(&mut self, key: &str, kind: Kind) -> Result<Access, FormatError> {
        let fallback = Access {
            perm: if kind == Kind::Dir { 0o555 } else { 0o444 },
            uid: 0,
            gid: 0,
        };
        if key.is_empty() {
            return Ok(fallback);
        }
        if let Some(a) = self.acis.get(key) {
            return Ok(a.unwrap_or(fallback));
        }
        let Some(data) = self.entries.get(key) else {
            self.acis.insert(key.to_string(), None);
            return Ok(fallback);
        };
        let what = format!("ACI {key}");
        let mut slice: &[u8] = data;
        let msg =
            capnp::serialize::read_message_from_flat_slice(&mut slice, reader_options(data.len()))
                .map_err(|e| self.capnp(&what, e))?;
        let aci: a_c_i::Reader<'_> = msg.get_root().map_err(|e| self.capnp(&what, e))?;
        let id = |id: i64, name: capnp::Result<capnp::text::Reader<'_>>| -> Result<u32, String> {
            if id == -1 {
                let name = name.ok().and_then(|n| n.to_str().ok().map(str::to_owned));
                return Ok(if name.as_deref() == Some("root") {
                    0
                } else {
                    1000
                });
            }
            u32::try_from(id).map_err(|_| format!("id {id} is out of range"))
        };
        let uid = id(aci.get_uid(), aci.get_uname())
            .map_err(|r| self.invalid(format!("{what}: uid {r}")))?;
        let gid = id(aci.get_gid(), aci.get_gname())
            .map_err(|r| self.invalid(format!("{what}: gid {r}")))?;
        let access = Access {
            perm: u32::from(aci.get_mode()) & 0o7777,
            uid,
            gid,
        };
        self.acis.insert(key.to_string(), Some(access));
        Ok(access)
    }
}

/// A text field as an owned string; text that is not UTF-8 is refused.
fn text(t: capnp::Result<capnp::text::Reader<'_>>) -> capnp::Result<String> {
    Ok(t?.to_string()?)
}

/// `major,minor` (decimal) as a device number; anything else is 0.
fn device(data: &[u8]) -> u64 {
    let s = String::from_utf8_lossy(data);
    let mut parts = s.trim().splitn(2, ',');
    let (Some(a), Some(b)) = (parts.next(), parts.next()) else {
        return 0;
    };
    match (a.trim().parse::<u32>(), b.trim().parse::<u32>()) {
        (Ok(major), Ok(minor)) => libc::makedev(major, minor),
        _ => 0,
    }
}

/// The XXTEA constant.
const DELTA: u32 = 0x9e37_79b9;

fn mx(sum: u32, y: u32, z: u32, p: usize, e: u32, k: &[u32; 4]) -> u32 {
    (((z >> 5) ^ (y << 2)).wrapping_add((y >> 3) ^ (z << 4)))
        ^ ((sum ^ y).wrapping_add(k[(p & 3) ^ e as usize] ^ z))
}

fn key_words(key: &[u8; HASH_LEN]) -> [u32; 4] {
    let mut k = [0u32; 4];
    for (i, w) in k.iter_mut().enumerate() {
        *w = u32::from_le_bytes(key[i * 4..i * 4 + 4].try_into().expect("4 bytes"));
    }
    k
}

/// XXTEA over whole words (at least two), in place.
fn btea_encrypt(v: &mut [u32], k: &[u32; 4]) {
    let n = v.len();
    let mut rounds = 6 + 52 / n;
    let mut sum = 0u32;
    let mut z = v[n - 1];
    while rounds > 0 {
        sum = sum.wrapping_add(DELTA);
        let e = (sum >> 2) & 3;
        for p in 0..n - 1 {
            let y = v[p + 1];
            v[p] = v[p].wrapping_add(mx(sum, y, z, p, e, k));
            z = v[p];
        }
        let y = v[0];
        v[n - 1] = v[n - 1].wrapping_add(mx(sum, y, z, n - 1, e, k));
        z = v[n - 1];
        rounds -= 1;
    }
}

fn btea_decrypt(v: &mut [u32], k: &[u32; 4]) {
    let n = v.len();
    let rounds = (6 + 52 / n) as u32;
    let mut sum = rounds.wrapping_mul(DELTA);
    let mut y = v[0];
    while sum != 0 {
        let e = (sum >> 2) & 3;
        for p in (1..n).rev() {
            let z = v[p - 1];
            v[p] = v[p].wrapping_sub(mx(sum, y, z, p, e, k));
            y = v[p];
        }
        let z = v[n - 1];
        v[0] = v[0].wrapping_sub(mx(sum, y, z, 0, e, k));
        y = v[0];
        sum = sum.wrapping_sub(DELTA);
    }
}

/// XXTEA as the 0-fs tools use it (the xxtea-c layout): the data is padded to whole words, its
/// length appended as one more word, and the whole encrypted.
pub fn xxtea_encrypt(data: &[u8], key: &[u8; HASH_LEN]) -> Vec<u8> {
    let n = data.len().div_ceil(4);
    let mut v = vec![0u32; n + 1];
    for (i, c) in data.chunks(4).enumerate() {
        let mut w = [0u8; 4];
        w[..c.len()].copy_from_slice(c);
        v[i] = u32::from_le_bytes(w);
    }
    v[n] = data.len() as u32;
    btea_encrypt(&mut v, &key_words(key));
    v.iter().flat_map(|w| w.to_le_bytes()).collect()
}

/// The inverse of [`xxtea_encrypt`]; `None` when the data is not whole words, is shorter than
/// two, or its length word does not fit (a wrong key or damaged data).
pub fn xxtea_decrypt(data: &[u8], key: &[u8; HASH_LEN]) -> Option<Vec<u8>> {
    if !data.len().is_multiple_of(4) || data.len() < 8 {
        return None;
    }
    let mut v: Vec<u32> = data
        .chunks_exact(4)
        .map(|c| u32::from_le_bytes(c.try_into().expect("4 bytes")))
        .collect();
    btea_decrypt(&mut v, &key_words(key));
    let room = (v.len() - 1) * 4;
    let len = *v.last().expect("two words at least") as usize;
    if len > room || len + 3 < room {
        return None;
    }
    let mut out: Vec<u8> = v[..v.len() - 1]
        .iter()
        .flat_map(|w| w.to_le_bytes())
        .collect();
    out.truncate(len);
    Some(out)
}

/// Largest stored form of one block accepted from a store: XXTEA of the worst snappy
/// expansion of a full block.
pub const MAX_ENCODED_SIZE: usize = crate::block::BLOCK_SIZE + crate::block::BLOCK_SIZE / 6 + 64;

/// A block of at most 512 KiB encoded as the 0-fs tools do: its [`BlockRef`] (see
/// [`block_ref`]) and the bytes to store under its hash.
pub fn encode_block(plain: &[u8]) -> (BlockRef, Vec<u8>) {
    let key = blake2b_128(plain);
    let compressed = snap::raw::Encoder::new()
        .compress_vec(plain)
        .expect("snappy compresses any input");
    let data = xxtea_encrypt(&compressed, &key);
    let hash = blake2b_128(&data);
    (block_ref(&hash, &key), data)
}

/// Decodes a legacy block read from a store, checking everything the flist says about it: the
/// stored bytes must hash to the block's hash, decrypt with its key, decompress to at most one
/// block, and the plain text must hash to the key. Nothing unchecked is returned.
pub fn decode_block(block: &BlockRef, data: &[u8]) -> Result<Vec<u8>, crate::BlockError> {
    use crate::BlockError;
    let (hash, key) = split(block);
    let id = block.id;
    if data.len() > MAX_ENCODED_SIZE {
        return Err(BlockError::TooLarge { id });
    }
    if blake2b_128(data) != hash {
        return Err(BlockError::IdMismatch { id });
    }
    let compressed = xxtea_decrypt(data, &key).ok_or(BlockError::Decrypt { id })?;
    let len = snap::raw::decompress_len(&compressed).map_err(|_| BlockError::Decompress { id })?;
    if len > crate::block::BLOCK_SIZE {
        return Err(BlockError::TooLarge { id });
    }
    let plain = snap::raw::Decoder::new()
        .decompress_vec(&compressed)
        .map_err(|_| BlockError::Decompress { id })?;
    if blake2b_128(&plain) != key {
        return Err(BlockError::KeyMismatch { id });
    }
    Ok(plain)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn xxtea_matches_an_independent_implementation() {
        // The core cipher checked against PyPI `xxtea` 6.3.0 (`padding=False` over the same
        // words, length word included), by hand.
        let key: [u8; 16] = std::array::from_fn(|i| i as u8);
        assert_eq!(
            hex::encode(xxtea_encrypt(b"hello world!", &key)),
            "31a62edaddd79a9a20423102992aa4f5"
        );
        assert_eq!(
            hex::encode(xxtea_encrypt(b"abcdefg", &key)),
            "7ce4a942a0027ee534590a0c"
        );
        for len in [1usize, 3, 4, 5, 8, 1000, 4099] {
            let data: Vec<u8> = (0..len).map(|i| (i * 7 + 3) as u8).collect();
            let ct = xxtea_encrypt(&data, &key);
            assert_eq!(xxtea_decrypt(&ct, &key).unwrap(), data, "{len}");
            let mut other = key;
            other[0] ^= 1;
            assert_ne!(xxtea_decrypt(&ct, &other).as_deref(), Some(&data[..]));
        }
        assert_eq!(xxtea_decrypt(&[1, 2, 3, 4], &key), None);
        assert_eq!(xxtea_decrypt(&[1, 2, 3, 4, 5], &key), None);
    }

    #[test]
    fn blocks_round_trip_and_every_check_bites() {
        let plain: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
        let (b, data) = encode_block(&plain);
        assert_eq!(decode_block(&b, &data).unwrap(), plain);
        assert_eq!(split(&b).1, blake2b_128(&plain));
        let mut bad = data.clone();
        bad[10] ^= 1;
        assert!(matches!(
            decode_block(&b, &bad),
            Err(crate::BlockError::IdMismatch { .. })
        ));
        // A store that serves other bytes under the right hash is impossible; a flist that
        // names the wrong key for the right bytes is not.
        let (other, _) = encode_block(b"other");
        let wrong_key = block_ref(&split(&b).0, &split(&other).1);
        assert!(decode_block(&wrong_key, &data).is_err());
    }

    #[test]
    fn directory_keys_are_hashes_of_relative_paths() {
        assert_eq!(dir_key(""), ROOT_KEY);
        assert_eq!(dir_key("etc"), "9308da158ed557db704826796bca9f68");
    }
}
