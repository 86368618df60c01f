//! One namespace on disk: append-only data files of checksummed records, an index in memory.
//!
//! # Files
//! A namespace is a directory holding `namespace.json` (its settings, versioned, replaced
//! atomically) and data files `d00000000.zdb`, `d00000001.zdb`, … Only the highest-numbered
//! data file is written; when the next record would take it past the configured size a new one
//! is started and the old one is synced and never written again.
//!
//! A data file starts with a 16-byte header: the magic `ZSDB`, a format version (u16 LE, 1),
//! two reserved bytes, the file's number (u32 LE) and four reserved bytes. Records follow, each
//! a 30-byte header and then the key and the value:
//!
//! | bytes | field |
//! |---|---|
//! | 4 | CRC-32 (IEEE) of everything after it: the rest of the header, the key, the value |
//! | 1 | kind: 1 a value, 2 a tombstone (a deletion) |
//! | 1 | key length (1–255) |
//! | 4 | value length (u32 LE; 0 for a tombstone) |
//! | 8 | timestamp, unix seconds (u64 LE) |
//! | 4 + 8 | where the key's previous record is: file (u32 LE, `u32::MAX` for none) and offset (u64 LE) |
//!
//! The previous-record link lets a key's history be walked back without an index on disk.
//!
//! # Index and recovery
//! The index (key → file, offset, length, timestamp, checksum) lives in memory and is rebuilt
//! from the data files when a namespace is opened: records are replayed in order, a tombstone
//! removing its key. Files before the last were synced when they were closed, so only their
//! headers are read. The last file is read whole and every record's checksum is verified; at the
//! first record that is cut short or does not match (what a crash in the middle of an append
//! leaves) the file is truncated, and everything after that point is dropped. Records before it
//! are intact, so nothing that was acknowledged is lost.
//!
//! # Durability
//! A write is acknowledged once `pwrite` has returned, so a killed server loses nothing it
//! acknowledged: the bytes are in the kernel's page cache. What a power cut may lose depends
//! on [`Fsync`]: with [`Fsync::EverySecond`] (the default, as Redis's `appendfsync everysec`)
//! the server syncs each written namespace once a second and at most about a second of writes
//! is at risk; with [`Fsync::Always`] each write is synced before it is acknowledged, at a large
//! cost in throughput on disks. Either way the recovery above keeps the files consistent.

use std::collections::{BTreeMap, HashMap};
use std::fs::{self, File, OpenOptions};
use std::io::{self, BufReader, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;
use serde::{Deserialize, Serialize};

/// The longest key, as 0-db.
pub const MAX_KEY: usize = 255;
const FILE_MAGIC: &[u8; 4] = b"ZSDB";
const FILE_VERSION: u16 = 1;
const FILE_HEADER: u64 = 16;
const RECORD_HEADER: usize = 30;
const KIND_VALUE: u8 = 1;
const KIND_TOMBSTONE: u8 = 2;
const SETTINGS_FILE: &str = "namespace.json";
const SETTINGS_VERSION: u32 = 1;

/// When written data is synced to the disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum Fsync {
    /// Sync before acknowledging each write.
    Always,
    /// Sync written namespaces once a second (the server's timer calls [`Store::sync`]).
    #[default]
    EverySecond,
}

/// How keys are chosen.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// Keys chosen by the user.
    User,
    /// Keys are sequential ids given out by SET: u32, 4 bytes little-endian.
    Seq,
}

/// A namespace's settings, kept in `namespace.json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Settings {
    pub version: u32,
    pub mode: Mode,
    /// Needed to select the namespace (or, when public, to write to it).
    pub password: Option<String>,
    /// Without the password, a public namespace may still be selected, read-only.
    pub public: bool,
    /// The most live payload bytes; 0 for no limit.
    pub maxsize: u64,
    /// Reads only: every write is refused.
    pub locked: bool,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            version: SETTINGS_VERSION,
            mode: Mode::User,
            password: None,
            public: true,
            maxsize: 0,
            locked: false,
        }
    }
}

/// Where a record starts: data file number and byte offset. Orders records by age.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Pos {
    pub file: u32,
    pub offset: u64,
}

impl Pos {
    const NONE: Pos = Pos {
        file: u32::MAX,
        offset: 0,
    };

    /// The 12-byte cursor form given to clients (KEYCUR, SCAN, HISTORY).
    pub fn to_cursor(self) -> Bytes {
        let mut b = Vec::with_capacity(12);
        b.extend_from_slice(&self.file.to_le_bytes());
        b.extend_from_slice(&self.offset.to_le_bytes());
        b.into()
    }

    pub fn from_cursor(b: &[u8]) -> Option<Pos> {
        let b: &[u8; 12] = b.try_into().ok()?;
        Some(Pos {
            file: u32::from_le_bytes(b[..4].try_into().ok()?),
            offset: u64::from_le_bytes(b[4..].try_into().ok()?),
        })
    }
}

#[derive(Debug, Clone, Copy)]
struct Entry {
    pos: Pos,
    key_len: u8,
    value_len: u32,
    timestamp: u64,
}

/// Why a store operation was refused or failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("Invalid argument, key needed")]
    KeyNeeded,
    #[error("Key too large")]
    KeyTooLarge,
    #[error("Invalid key, only update authorized")]
    OnlyUpdate,
    #[error("No space left on this namespace")]
    NoSpace,
    #[error("Namespace is temporarily locked (read-only)")]
    Locked,
    #[error("Cannot change mode of used namespace")]
    ModeInUse,
    #[error("{what} {path}")]
    Io {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("data file {path} is not a zdb data file (bad header); move it away to start")]
    BadFile { path: PathBuf },
    #[error("settings {path} are unreadable; fix or remove the namespace directory")]
    BadSettings {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
}

fn io_err(what: &'static str, path: &Path) -> impl FnOnce(io::Error) -> StoreError + use<> {
    let path = path.to_path_buf();
    move |source| StoreError::Io { what, path, source }
}

/// Sizes and policies shared by every namespace of a server.
#[derive(Debug, Clone, Copy)]
pub struct StoreOptions {
    /// A data file is closed and a new one started when a record would take it past this.
    pub datafile_size: u64,
    pub fsync: Fsync,
}

impl Default for StoreOptions {
    fn default() -> Self {
        Self {
            datafile_size: 256 * 1024 * 1024,
            fsync: Fsync::default(),
        }
    }
}

/// Counters shown by NSINFO.
#[derive(Debug, Clone, Copy)]
pub struct Stats {
    pub entries: u64,
    pub live_bytes: u64,
    pub disk_bytes: u64,
    pub next_seq: u32,
    pub data_files: usize,
}

/// A value's location, readable without holding the namespace's lock.
#[derive(Debug)]
pub struct ValueRef {
    file: Arc<File>,
    offset: u64,
    len: u32,
}

impl ValueRef {
    pub fn len(&self) -> u32 {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn read(&self) -> io::Result<Bytes> {
        let mut buf = vec![0u8; self.len as usize];
        self.file.read_exact_at(&mut buf, self.offset)?;
        Ok(buf.into())
    }
}

/// One entry of a SCAN answer: key, payload length, timestamp.
pub type ScanItem = (Bytes, u32, u64);

/// One namespace's records and index.
#[derive(Debug)]
pub struct Store {
    dir: PathBuf,
    opts: StoreOptions,
    settings: Settings,
    files: BTreeMap<u32, Arc<File>>,
    active: u32,
    active_len: u64,
    index: HashMap<Bytes, Entry>,
    /// Live keys by the position of their newest record: the order SCAN walks.
    order: BTreeMap<Pos, Bytes>,
    live_bytes: u64,
    disk_bytes: u64,
    next_seq: u32,
    records: u64,
    dirty: bool,
}

struct Header {
    crc: u32,
    kind: u8,
    key_len: u8,
    value_len: u32,
    timestamp: u64,
    prev: Pos,
}

impl Header {
    fn parse(b: &[u8; RECORD_HEADER]) -> Header {
        let u32at = |i: usize| u32::from_le_bytes(b[i..i + 4].try_into().unwrap());
        let u64at = |i: usize| u64::from_le_bytes(b[i..i + 8].try_into().unwrap());
        Header {
            crc: u32at(0),
            kind: b[4],
            key_len: b[5],
            value_len: u32at(6),
            timestamp: u64at(10),
            prev: Pos {
                file: u32at(18),
                offset: u64at(22),
            },
        }
    }

    fn valid_shape(&self) -> bool {
        self.key_len > 0
            && match self.kind {
                KIND_VALUE => true,
                KIND_TOMBSTONE => self.value_len == 0,
                _ => false,
            }
    }
}

fn encode_record(kind: u8, key: &[u8], value: &[u8], timestamp: u64, prev: Pos) -> Vec<u8> {
    let mut b = Vec::with_capacity(RECORD_HEADER + key.len() + value.len());
    b.extend_from_slice(&[0; 4]);
    b.push(kind);
    b.push(key.len() as u8);
    b.extend_from_slice(&(value.len() as u32).to_le_bytes());
    b.extend_from_slice(&timestamp.to_le_bytes());
    b.extend_from_slice(&prev.file.to_le_bytes());
    b.extend_from_slice(&prev.offset.to_le_bytes());
    b.extend_from_slice(key);
    b.extend_from_slice(value);
    let crc = crc32fast::hash(&b[4..]);
    b[..4].copy_from_slice(&crc.to_le_bytes());
    b
}

fn data_file_name(id: u32) -> String {
    format!("d{id:08}.zdb")
}

fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

impl Store {
    /// Makes a new, empty namespace in `dir` (which must not exist yet).
    pub fn create(dir: &Path, settings: Settings, opts: StoreOptions) -> Result<Store, StoreError> {
        fs::create_dir(dir).map_err(io_err("cannot create namespace directory", dir))?;
        write_settings(dir, &settings)?;
        let mut store = Store::empty(dir, settings, opts);
        store.start_file(0)?;
        if let Some(parent) = dir.parent() {
            sync_dir(parent).map_err(io_err("cannot sync", parent))?;
        }
        Ok(store)
    }

    fn empty(dir: &Path, settings: Settings, opts: StoreOptions) -> Store {
        Store {
            dir: dir.to_path_buf(),
            opts,
            settings,
            files: BTreeMap::new(),
            active: 0,
            active_len: 0,
            index: HashMap::new(),
            order: BTreeMap::new(),
            live_bytes: 0,
            disk_bytes: 0,
            next_seq: 0,
            records: 0,
            dirty: false,
        }
    }

    /// Opens an existing namespace, rebuilding its index from the data files and cutting off
    /// a torn last record (see the module documentation).
    pub fn open(dir: &Path, opts: StoreOptions) -> Result<Store, StoreError> {
        let path = dir.join(SETTINGS_FILE);
        let raw = fs::read(&path).map_err(io_err("cannot read", &path))?;
        let settings: Settings = serde_json::from_slice(&raw)
            .map_err(|source| StoreError::BadSettings { path, source })?;
        let mut store = Store::empty(dir, settings, opts);
        let mut ids = Vec::new();
        for e in fs::read_dir(dir).map_err(io_err("cannot list", dir))? {
            let e = e.map_err(io_err("cannot list", dir))?;
            let name = e.file_name();
            let name = name.to_string_lossy();
            if let Some(id) = name
                .strip_prefix('d')
                .and_then(|n| n.strip_suffix(".zdb"))
                .and_then(|n| n.parse::<u32>().ok())
            {
                ids.push(id);
            }
        }
        ids.sort_unstable();
        let Some(&last) = ids.last() else {
            store.start_file(0)?;
            return Ok(store);
        };
        for &id in &ids {
            store.load_file(id, id == last)?;
        }
        store.active = last;
        Ok(store)
    }

    fn start_file(&mut self, id: u32) -> Result<(), StoreError> {
        let path = self.dir.join(data_file_name(id));
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&path)
            .map_err(io_err("cannot create data file", &path))?;
        let mut h = [0u8; FILE_HEADER as usize];
        h[..4].copy_from_slice(FILE_MAGIC);
        h[4..6].copy_from_slice(&FILE_VERSION.to_le_bytes());
        h[8..12].copy_from_slice(&id.to_le_bytes());
        file.write_all_at(&h, 0)
            .and_then(|()| file.sync_all())
            .and_then(|()| sync_dir(&self.dir))
            .map_err(io_err("cannot write data file", &path))?;
        self.files.insert(id, Arc::new(file));
        self.active = id;
        self.active_len = FILE_HEADER;
        self.disk_bytes += FILE_HEADER;
        Ok(())
    }

    fn load_file(&mut self, id: u32, last: bool) -> Result<(), StoreError> {
        let path = self.dir.join(data_file_name(id));
        let file = OpenOptions::new()
            .read(true)
            .write(last)
            .open(&path)
            .map_err(io_err("cannot open data file", &path))?;
        let len = file.metadata().map_err(io_err("cannot stat", &path))?.len();
        let mut h = [0u8; FILE_HEADER as usize];
        let header_ok = len >= FILE_HEADER
            && file.read_exact_at(&mut h, 0).is_ok()
            && &h[..4] == FILE_MAGIC
            && u16::from_le_bytes([h[4], h[5]]) == FILE_VERSION
            && u32::from_le_bytes(h[8..12].try_into().unwrap()) == id;
        if !header_ok {
            if last && len <= FILE_HEADER {
                // A crash while starting a file (its header is synced before any record is
                // written after it): start it again.
                drop(file);
                return self.start_file(id);
            }
            return Err(StoreError::BadFile { path });
        }
        let mut r = BufReader::with_capacity(1 << 20, &file);
        r.seek(SeekFrom::Start(FILE_HEADER))
            .map_err(io_err("cannot read data file", &path))?;
        let mut at = FILE_HEADER;
        let mut value = Vec::new();
        let end = loop {
            if at == len {
                break at;
            }
            let mut hb = [0u8; RECORD_HEADER];
            if len - at < RECORD_HEADER as u64 {
                break at;
            }
            r.read_exact(&mut hb)
                .map_err(io_err("cannot read data file", &path))?;
            let h = Header::parse(&hb);
            let total = RECORD_HEADER as u64 + u64::from(h.key_len) + u64::from(h.value_len);
            if !h.valid_shape() || len - at < total {
                break at;
            }
            let mut key = vec![0u8; h.key_len as usize];
            r.read_exact(&mut key)
                .map_err(io_err("cannot read data file", &path))?;
            if last {
                value.resize(h.value_len as usize, 0);
                r.read_exact(&mut value)
                    .map_err(io_err("cannot read data file", &path))?;
                let mut crc = crc32fast::Hasher::new();
                crc.update(&hb[4..]);
                crc.update(&key);
                crc.update(&value);
                if crc.finalize() != h.crc {
                    break at;
                }
            } else {
                r.seek_relative(i64::from(h.value_len))
                    .map_err(io_err("cannot read data file", &path))?;
            }
            self.replay(
                Pos {
                    file: id,
                    offset: at,
                },
                &h,
                key.into(),
            );
            at += total;
        };
        if end < len {
            if last {
                tracing::warn!(
                    file = %path.display(),
                    offset = end,
                    dropped = len - end,
                    "torn or damaged record at the end of the data file: truncating"
                );
                file.set_len(end)
                    .and_then(|()| file.sync_all())
                    .map_err(io_err("cannot truncate data file", &path))?;
            } else {
                // A closed file was synced when it was closed: this is damage, not a crash.
                // Keep the file for inspection and serve what is readable.
                tracing::error!(
                    file = %path.display(),
                    offset = end,
                    "damaged record in a closed data file: the records after it are skipped"
                );
            }
        }
        self.disk_bytes += end;
        if last {
            self.active_len = end;
        }
        self.files.insert(id, Arc::new(file));
        Ok(())
    }

    fn replay(&mut self, pos: Pos, h: &Header, key: Bytes) {
        self.records += 1;
        if self.settings.mode == Mode::Seq
            && let Ok(id) = <[u8; 4]>::try_from(key.as_ref())
        {
            self.next_seq = self.next_seq.max(u32::from_le_bytes(id).saturating_add(1));
        }
        self.unlink(&key);
        if h.kind == KIND_VALUE {
            self.link(
                key,
                Entry {
                    pos,
                    key_len: h.key_len,
                    value_len: h.value_len,
                    timestamp: h.timestamp,
                },
            );
        }
    }

    fn unlink(&mut self, key: &[u8]) -> Option<Entry> {
        let old = self.index.remove(key)?;
        self.order.remove(&old.pos);
        self.live_bytes -= u64::from(old.value_len);
        Some(old)
    }

    fn link(&mut self, key: Bytes, e: Entry) {
        self.order.insert(e.pos, key.clone());
        self.live_bytes += u64::from(e.value_len);
        self.index.insert(key, e);
    }

    fn append(
        &mut self,
        kind: u8,
        key: &[u8],
        value: &[u8],
        timestamp: u64,
        prev: Pos,
    ) -> Result<Pos, StoreError> {
        let rec = encode_record(kind, key, value, timestamp, prev);
        if self.active_len + rec.len() as u64 > self.opts.datafile_size
            && self.active_len > FILE_HEADER
        {
            let path = self.dir.join(data_file_name(self.active));
            self.files[&self.active]
                .sync_all()
                .map_err(io_err("cannot sync data file", &path))?;
            self.start_file(self.active + 1)?;
        }
        let file = &self.files[&self.active];
        let pos = Pos {
            file: self.active,
            offset: self.active_len,
        };
        let written = file.write_all_at(&rec, pos.offset).and_then(|()| {
            if self.opts.fsync == Fsync::Always {
                file.sync_data()
            } else {
                Ok(())
            }
        });
        if let Err(e) = written {
            // Leave no partial record behind for the next append to follow.
            let _ = file.set_len(pos.offset);
            let path = self.dir.join(data_file_name(self.active));
            return Err(io_err("cannot write data file", &path)(e));
        }
        self.active_len += rec.len() as u64;
        self.disk_bytes += rec.len() as u64;
        self.records += 1;
        self.dirty = true;
        Ok(pos)
    }

    /// Stores `value` under `key` (SET). In `user` mode the key is the user's and an unchanged
    /// value writes nothing (`Ok(None)`); in `seq` mode an empty key takes the next id and an
    /// existing id is updated. Returns the key.
    pub fn set(
        &mut self,
        key: &[u8],
        value: &[u8],
        timestamp: u64,
    ) -> Result<Option<Bytes>, StoreError> {
        if self.settings.locked {
            return Err(StoreError::Locked);
        }
        if key.len() > MAX_KEY {
            return Err(StoreError::KeyTooLarge);
        }
        let existing = self.index.get(key).copied();
        let key: Bytes = match self.settings.mode {
            Mode::User if key.is_empty() => return Err(StoreError::KeyNeeded),
            Mode::User => Bytes::copy_from_slice(key),
            // Ids are u32: the last one is never given out, so the next id always fits.
            Mode::Seq if key.is_empty() && self.next_seq == u32::MAX => {
                return Err(StoreError::NoSpace);
            }
            Mode::Seq if key.is_empty() => Bytes::copy_from_slice(&self.next_seq.to_le_bytes()),
            Mode::Seq if existing.is_some() => Bytes::copy_from_slice(key),
            Mode::Seq => return Err(StoreError::OnlyUpdate),
        };
        let freed = existing.map_or(0, |e| u64::from(e.value_len));
        if self.settings.maxsize > 0
            && self.live_bytes - freed + value.len() as u64 > self.settings.maxsize
        {
            return Err(StoreError::NoSpace);
        }
        if self.settings.mode == Mode::User
            && let Some(e) = existing
            && e.value_len as usize == value.len()
            && self.value_ref(&e).read().is_ok_and(|old| old == value)
        {
            return Ok(None);
        }
        let prev = existing.map_or(Pos::NONE, |e| e.pos);
        let pos = self.append(KIND_VALUE, &key, value, timestamp, prev)?;
        if self.settings.mode == Mode::Seq && existing.is_none() {
            self.next_seq += 1;
        }
        self.unlink(&key);
        self.link(
            key.clone(),
            Entry {
                pos,
                key_len: key.len() as u8,
                value_len: value.len() as u32,
                timestamp,
            },
        );
        Ok(Some(key))
    }

    /// Deletes `key` by appending a tombstone (DEL). `Ok(false)` when there was no such key.
    pub fn del(&mut self, key: &[u8], timestamp: u64) -> Result<bool, StoreError> {
        if self.settings.locked {
            return Err(StoreError::Locked);
        }
        let Some(e) = self.index.get(key).copied() else {
            return Ok(false);
        };
        self.append(KIND_TOMBSTONE, key, &[], timestamp, e.pos)?;
        self.unlink(key);
        Ok(true)
    }

    fn value_ref(&self, e: &Entry) -> ValueRef {
        ValueRef {
            file: self.files[&e.pos.file].clone(),
            offset: e.pos.offset + RECORD_HEADER as u64 + u64::from(e.key_len),
            len: e.value_len,
        }
    }

    /// Where `key`'s value is, to read after letting go of the lock (GET).
    pub fn lookup(&self, key: &[u8]) -> Option<ValueRef> {
        self.index.get(key).map(|e| self.value_ref(e))
    }

    pub fn exists(&self, key: &[u8]) -> bool {
        self.index.contains_key(key)
    }

    /// The payload length and timestamp of a live key (LENGTH, KEYTIME).
    pub fn meta(&self, key: &[u8]) -> Option<(u32, u64)> {
        self.index.get(key).map(|e| (e.value_len, e.timestamp))
    }

    /// The key's record re-read and its checksum verified (CHECK); `None` for no such key.
    pub fn check(&self, key: &[u8]) -> io::Result<Option<bool>> {
        let Some(e) = self.index.get(key) else {
            return Ok(None);
        };
        let (h, rec) = self.read_record(e.pos)?;
        Ok(Some(
            h.crc == crc32fast::hash(&rec[4..]) && &rec[RECORD_HEADER..][..key.len()] == key,
        ))
    }

    fn read_record(&self, pos: Pos) -> io::Result<(Header, Vec<u8>)> {
        let file = self
            .files
            .get(&pos.file)
            .ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, "no such data file"))?;
        let mut hb = [0u8; RECORD_HEADER];
        file.read_exact_at(&mut hb, pos.offset)?;
        let h = Header::parse(&hb);
        // A position may come from a client (HISTORY's cursor): check what the header claims
        // against the file before allocating for it.
        let total = RECORD_HEADER as u64 + u64::from(h.key_len) + u64::from(h.value_len);
        if !h.valid_shape() || pos.offset.saturating_add(total) > file.metadata()?.len() {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        let mut rec = vec![0u8; RECORD_HEADER + h.key_len as usize + h.value_len as usize];
        file.read_exact_at(&mut rec, pos.offset)?;
        Ok((h, rec))
    }

    /// The record of `key` at `at` (or its newest when `None`) and the link to the one before:
    /// (previous record's cursor, timestamp, payload). `None` when the position is not one of
    /// this key's records (HISTORY).
    pub fn history(&self, key: &[u8], at: Option<Pos>) -> io::Result<Option<(Bytes, u64, Bytes)>> {
        let pos = match at {
            Some(p) => p,
            None => match self.index.get(key) {
                Some(e) => e.pos,
                None => return Ok(None),
            },
        };
        if pos.file == u32::MAX
            || !self.files.contains_key(&pos.file)
            || (pos.file == self.active
                && pos.offset.saturating_add(RECORD_HEADER as u64) > self.active_len)
        {
            return Ok(None);
        }
        let (h, rec) = match self.read_record(pos) {
            Ok(r) => r,
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(None),
            Err(e) => return Err(e),
        };
        let k = RECORD_HEADER + h.key_len as usize;
        if !h.valid_shape() || &rec[RECORD_HEADER..k] != key || h.crc != crc32fast::hash(&rec[4..])
        {
            return Ok(None);
        }
        let prev = if h.prev.file == u32::MAX {
            Bytes::new()
        } else {
            h.prev.to_cursor()
        };
        Ok(Some((prev, h.timestamp, Bytes::copy_from_slice(&rec[k..]))))
    }

    /// The cursor of `key`'s newest record (KEYCUR).
    pub fn cursor_of(&self, key: &[u8]) -> Option<Pos> {
        self.index.get(key).map(|e| e.pos)
    }

    /// Up to `max` live keys after `cursor` (before it when `!forward`), oldest first (newest
    /// first backwards), with the cursor of the last one.
    pub fn scan(
        &self,
        cursor: Option<Pos>,
        forward: bool,
        max: usize,
    ) -> Option<(Pos, Vec<ScanItem>)> {
        use std::ops::Bound::{Excluded, Unbounded};
        let items: Vec<(&Pos, &Bytes)> = match (cursor, forward) {
            (None, true) => self.order.iter().take(max).collect(),
            (Some(c), true) => self
                .order
                .range((Excluded(c), Unbounded))
                .take(max)
                .collect(),
            (None, false) => self.order.iter().rev().take(max).collect(),
            (Some(c), false) => self
                .order
                .range((Unbounded, Excluded(c)))
                .rev()
                .take(max)
                .collect(),
        };
        let last = *items.last()?.0;
        Some((
            last,
            items
                .into_iter()
                .map(|(_, k)| {
                    let e = &self.index[k];
                    (k.clone(), e.value_len, e.timestamp)
                })
                .collect(),
        ))
    }

    /// The file written since the last call, to sync without holding the namespace's lock
    /// (the once-a-second timer). `None` when nothing was written.
    pub fn take_dirty(&mut self) -> Option<(Arc<File>, PathBuf)> {
        if !std::mem::take(&mut self.dirty) {
            return None;
        }
        Some((
            self.files[&self.active].clone(),
            self.dir.join(data_file_name(self.active)),
        ))
    }

    pub fn settings(&self) -> &Settings {
        &self.settings
    }

    /// Replaces the settings and writes them to disk. A mode change needs a namespace that
    /// has never had a record.
    pub fn set_settings(&mut self, new: Settings) -> Result<(), StoreError> {
        if new.mode != self.settings.mode && self.records > 0 {
            return Err(StoreError::ModeInUse);
        }
        write_settings(&self.dir, &new)?;
        self.settings = new;
        Ok(())
    }

    pub fn stats(&self) -> Stats {
        Stats {
            entries: self.index.len() as u64,
            live_bytes: self.live_bytes,
            disk_bytes: self.disk_bytes,
            next_seq: self.next_seq,
            data_files: self.files.len(),
        }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

fn write_settings(dir: &Path, s: &Settings) -> Result<(), StoreError> {
    let path = dir.join(SETTINGS_FILE);
    let tmp = dir.join(format!("{SETTINGS_FILE}.tmp"));
    let body = serde_json::to_vec_pretty(s).expect("settings serialize");
    (|| {
        let mut f = File::create(&tmp)?;
        f.write_all(&body)?;
        f.sync_all()?;
        fs::rename(&tmp, &path)?;
        sync_dir(dir)
    })()
    .map_err(io_err("cannot write settings", &path))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opts() -> StoreOptions {
        StoreOptions {
            datafile_size: 4096,
            fsync: Fsync::EverySecond,
        }
    }

    fn get(s: &Store, k: &[u8]) -> Option<Vec<u8>> {
        s.lookup(k).map(|v| v.read().unwrap().to_vec())
    }

    fn last_file(dir: &Path) -> PathBuf {
        let mut v: Vec<_> = fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension().is_some_and(|e| e == "zdb"))
            .collect();
        v.sort();
        v.pop().unwrap()
    }

    #[test]
    fn set_get_overwrite_delete_and_reopen() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("ns");
        let mut s = Store::create(&dir, Settings::default(), opts()).unwrap();
        assert_eq!(s.set(b"a", b"one", 1).unwrap().as_deref(), Some(&b"a"[..]));
        assert_eq!(s.set(b"a", b"one", 2).unwrap(), None, "unchanged value");
        s.set(b"a", b"two", 3).unwrap();
        s.set(b"b", b"bee", 4).unwrap();
        assert!(s.del(b"b", 5).unwrap());
        assert!(!s.del(b"b", 6).unwrap());
        assert_eq!(get(&s, b"a").unwrap(), b"two");
        assert_eq!(get(&s, b"b"), None);
        assert_eq!(s.stats().live_bytes, 3);
        drop(s);
        let s = Store::open(&dir, opts()).unwrap();
        assert_eq!(get(&s, b"a").unwrap(), b"two");
        assert_eq!(get(&s, b"b"), None, "the tombstone survives a reopen");
        assert_eq!(s.meta(b"a"), Some((3, 3)));
        assert_eq!(s.check(b"a").unwrap(), Some(true));
        // History: newest first, then the overwritten value.
        let (prev, ts, v) = s.history(b"a", None).unwrap().unwrap();
        assert_eq!((ts, &v[..]), (3, &b"two"[..]));
        let (prev, ts, v) = s.history(b"a", Pos::from_cursor(&prev)).unwrap().unwrap();
        assert_eq!((ts, &v[..]), (1, &b"one"[..]));
        assert!(prev.is_empty());
        // Positions that are not this key's records, including ones whose bytes would claim
        // a 4 GiB value, answer nothing.
        for offset in [0, 1, 5, 17, 40, 1 << 40, u64::MAX] {
            assert!(
                s.history(b"a", Some(Pos { file: 0, offset }))
                    .unwrap()
                    .is_none(),
                "offset {offset}"
            );
        }
    }

    #[test]
    fn many_writes_across_files_reopen() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("ns");
        let mut s = Store::create(&dir, Settings::default(), opts()).unwrap();
        for i in 0..2000u32 {
            let v = vec![(i % 251) as u8; (i % 97) as usize];
            s.set(format!("k{}", i % 700).as_bytes(), &v, u64::from(i))
                .unwrap();
        }
        for i in (0..700).step_by(3) {
            s.del(format!("k{i}").as_bytes(), 9).unwrap();
        }
        let before = s.stats();
        assert!(before.data_files > 10, "files: {}", before.data_files);
        drop(s);
        let s = Store::open(&dir, opts()).unwrap();
        let after = s.stats();
        assert_eq!(after.entries, before.entries);
        assert_eq!(after.live_bytes, before.live_bytes);
        assert_eq!(after.disk_bytes, before.disk_bytes);
        for k in 0..700u32 {
            let got = get(&s, format!("k{k}").as_bytes());
            if k % 3 == 0 {
                assert_eq!(got, None);
            } else {
                // The last write of key k was the largest i < 2000 with i % 700 == k.
                let i = if k + 1400 < 2000 { k + 1400 } else { k + 700 };
                assert_eq!(got.unwrap(), vec![(i % 251) as u8; (i % 97) as usize]);
            }
        }
        // SCAN walks every live key once, in write order, forwards and backwards.
        let mut seen = Vec::new();
        let mut cur = None;
        while let Some((c, items)) = s.scan(cur, true, 50) {
            seen.extend(items.into_iter().map(|i| i.0));
            cur = Some(c);
        }
        assert_eq!(seen.len() as u64, after.entries);
        let mut back = Vec::new();
        let mut cur = None;
        while let Some((c, items)) = s.scan(cur, false, 7) {
            back.extend(items.into_iter().map(|i| i.0));
            cur = Some(c);
        }
        back.reverse();
        assert_eq!(back, seen);
    }

    /// A crash in the middle of an append leaves part of a record at the end of the last file:
    /// reopening drops exactly that part and keeps every complete record.
    #[test]
    fn torn_append_is_truncated() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("ns");
        let mut s = Store::create(&dir, Settings::default(), opts()).unwrap();
        s.set(b"kept", b"value", 1).unwrap();
        drop(s);
        let file = last_file(&dir);
        let good_len = fs::metadata(&file).unwrap().len();
        let whole = encode_record(KIND_VALUE, b"torn", &[7u8; 200], 2, Pos::NONE);
        for cut in [1, 10, RECORD_HEADER, RECORD_HEADER + 3, whole.len() - 1] {
            let mut f = OpenOptions::new().append(true).open(&file).unwrap();
            f.write_all(&whole[..cut]).unwrap();
            drop(f);
            let mut s = Store::open(&dir, opts()).unwrap();
            assert_eq!(fs::metadata(&file).unwrap().len(), good_len, "cut {cut}");
            assert_eq!(get(&s, b"kept").unwrap(), b"value");
            assert_eq!(get(&s, b"torn"), None);
            // Appends go on from the clean end.
            s.set(b"after", b"x", 3).unwrap();
            assert!(s.del(b"after", 4).unwrap());
            drop(s);
            let s = Store::open(&dir, opts()).unwrap();
            assert_eq!(get(&s, b"after"), None);
            drop(s);
            let good = fs::metadata(&file).unwrap().len();
            assert!(good > good_len);
            // Back to the original content for the next cut.
            OpenOptions::new()
                .write(true)
                .open(&file)
                .unwrap()
                .set_len(good_len)
                .unwrap();
        }
        // A complete record whose bytes were not all written (a hole of zeros after a power
        // cut) fails its checksum and goes too.
        let mut bad = whole.clone();
        for b in &mut bad[RECORD_HEADER + 10..] {
            *b = 0;
        }
        let mut f = OpenOptions::new().append(true).open(&file).unwrap();
        f.write_all(&bad).unwrap();
        drop(f);
        let s = Store::open(&dir, opts()).unwrap();
        assert_eq!(get(&s, b"torn"), None);
        assert_eq!(fs::metadata(&file).unwrap().len(), good_len);
    }

    #[test]
    fn seq_mode_ids_and_updates() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("ns");
        let settings = Settings {
            mode: Mode::Seq,
            ..Settings::default()
        };
        let mut s = Store::create(&dir, settings, opts()).unwrap();
        let k0 = s.set(b"", b"zero", 1).unwrap().unwrap();
        let k1 = s.set(b"", b"one", 1).unwrap().unwrap();
        assert_eq!(&k0[..], &0u32.to_le_bytes());
        assert_eq!(&k1[..], &1u32.to_le_bytes());
        assert_eq!(s.set(&k0, b"ZERO", 2).unwrap().unwrap(), k0);
        assert!(matches!(
            s.set(&7u32.to_le_bytes(), b"x", 2),
            Err(StoreError::OnlyUpdate)
        ));
        s.del(&k1, 3).unwrap();
        drop(s);
        let mut s = Store::open(&dir, opts()).unwrap();
        assert_eq!(get(&s, &k0).unwrap(), b"ZERO");
        // A deleted id is not given out again.
        assert_eq!(
            &s.set(b"", b"two", 4).unwrap().unwrap()[..],
            &2u32.to_le_bytes()
        );
        assert!(matches!(
            s.set_settings(Settings::default()),
            Err(StoreError::ModeInUse)
        ));
    }

    #[test]
    fn maxsize_and_lock() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("ns");
        let mut s = Store::create(&dir, Settings::default(), opts()).unwrap();
        let mut settings = s.settings().clone();
        settings.maxsize = 10;
        s.set_settings(settings.clone()).unwrap();
        s.set(b"a", b"12345678", 1).unwrap();
        assert!(matches!(s.set(b"b", b"123", 1), Err(StoreError::NoSpace)));
        // Replacing a value counts the space it frees.
        s.set(b"a", b"1234567890", 1).unwrap();
        s.del(b"a", 1).unwrap();
        s.set(b"b", b"123", 1).unwrap();
        settings.locked = true;
        s.set_settings(settings).unwrap();
        assert!(matches!(s.set(b"c", b"1", 1), Err(StoreError::Locked)));
        assert!(matches!(s.del(b"b", 1), Err(StoreError::Locked)));
        drop(s);
        let s = Store::open(&dir, opts()).unwrap();
        assert!(s.settings().locked);
        assert_eq!(s.settings().maxsize, 10);
    }
}
