//! The project's own writer of legacy 0-fs flists (`.flist`), for tests only: packs a directory
//! tree the way the 0-fs tools lay it out (a directory per `Dir` message keyed by the
//! BLAKE2b-128 of its relative path, ACIs deduplicated, blocks XXTEA-encrypted), and lets
//! hostile tests put any bytes under any key.
#![allow(dead_code)]

use std::collections::{BTreeMap, HashMap};
use std::io::Read;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::Path;

use zos_flist::legacy::legacy_capnp::{a_c_i, dir, special};
use zos_flist::legacy::{DB_NAME, blake2b_128, dir_key, encode_block, split};

/// What one directory entry is, for [`dir_message`].
#[derive(Clone, Debug)]
pub enum Item {
    Dir { key: String },
    File { blocks: Vec<([u8; 16], [u8; 16])> },
    Link { target: String },
    Special { kind: special::Type, data: String },
}

/// One entry of a `Dir` message.
#[derive(Clone, Debug)]
pub struct Entry {
    pub name: String,
    pub size: u64,
    pub aclkey: String,
    pub mtime: u32,
    pub ctime: u32,
    pub item: Item,
}

impl Entry {
    pub fn new(name: &str, item: Item) -> Self {
        Self {
            name: name.into(),
            size: 0,
            aclkey: String::new(),
            mtime: 0,
            ctime: 0,
            item,
        }
    }

    pub fn size(mut self, size: u64) -> Self {
        self.size = size;
        self
    }
}

/// A serialized `Dir` message.
pub fn dir_message(location: &str, aclkey: &str, mtime: u32, contents: &[Entry]) -> Vec<u8> {
    let mut msg = capnp::message::Builder::new_default();
    {
        let mut d = msg.init_root::<dir::Builder<'_>>();
        d.set_name(location.rsplit('/').next().unwrap_or(""));
        d.set_location(location);
        let parent = match location.rsplit_once('/') {
            Some((p, _)) => dir_key(p),
            None if location.is_empty() => String::new(),
            None => dir_key(""),
        };
        d.set_parent(parent.as_str());
        d.set_size(4096);
        d.set_aclkey(aclkey);
        d.set_modification_time(mtime);
        d.set_creation_time(mtime);
        let mut list = d.init_contents(contents.len() as u32);
        for (i, e) in contents.iter().enumerate() {
            let mut n = list.reborrow().get(i as u32);
            n.set_name(e.name.as_str());
            n.set_size(e.size);
            n.set_aclkey(e.aclkey.as_str());
            n.set_modification_time(e.mtime);
            n.set_creation_time(e.ctime);
            let a = n.init_attributes();
            match &e.item {
                Item::Dir { key } => a.init_dir().set_key(key.as_str()),
                Item::File { blocks } => {
                    let mut f = a.init_file();
                    f.set_block_size(128);
                    let mut bl = f.init_blocks(blocks.len() as u32);
                    for (j, (hash, key)) in blocks.iter().enumerate() {
                        let mut b = bl.reborrow().get(j as u32);
                        b.set_hash(hash);
                        b.set_key(key);
                    }
                }
                Item::Link { target } => a.init_link().set_target(target.as_str()),
                Item::Special { kind, data } => {
                    let mut s = a.init_special();
                    s.set_type(*kind);
                    s.set_data(data.as_bytes());
                }
            }
        }
    }
    capnp::serialize::write_message_to_words(&msg)
}

/// A serialized `ACI` message; `uid`/`gid` of -1 leave only the names.
pub fn aci_message(uname: &str, gname: &str, mode: u32, uid: i64, gid: i64) -> Vec<u8> {
    let mut msg = capnp::message::Builder::new_default();
    {
        let mut a = msg.init_root::<a_c_i::Builder<'_>>();
        a.set_uname(uname);
        a.set_gname(gname);
        a.set_mode(mode as u16);
        a.set_uid(uid);
        a.set_gid(gid);
    }
    capnp::serialize::write_message_to_words(&msg)
}

/// A flist being made: the `entries` and `metadata` tables, and the blocks its files need.
#[derive(Debug, Default)]
pub struct LegacyFlist {
    pub entries: BTreeMap<String, Vec<u8>>,
    pub metadata: Vec<(String, String)>,
    /// Stored bytes by hex hash.
    pub blocks: HashMap<String, Vec<u8>>,
}

impl LegacyFlist {
    /// Adds an ACI for (uid, gid, mode) and returns its key.
    pub fn aci(&mut self, uid: u32, gid: u32, mode: u32) -> String {
        let text = format!("user:{uid}\ngroup:{gid}\nmode:{mode:o}");
        let key = hex::encode(&blake2b_128(text.as_bytes())[..8]);
        self.entries.entry(key.clone()).or_insert_with(|| {
            aci_message(
                &uid.to_string(),
                &gid.to_string(),
                mode,
                uid as i64,
                gid as i64,
            )
        });
        key
    }

    /// Packs the tree at `src` (regular files, directories, symlinks, devices, fifos, sockets).
    pub fn pack(src: &Path) -> Self {
        let mut fl = LegacyFlist::default();
        fl.pack_dir(src, "");
        fl
    }

    fn pack_dir(&mut self, root: &Path, rel: &str) {
        let here = if rel.is_empty() {
            root.to_path_buf()
        } else {
            root.join(rel)
        };
        let meta = std::fs::symlink_metadata(&here).unwrap();
        let acl = self.aci(meta.uid(), meta.gid(), meta.mode());
        let mut names: Vec<_> = std::fs::read_dir(&here)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        names.sort();
        let mut contents = Vec::new();
        for name in names {
            let path = here.join(&name);
            let child = if rel.is_empty() {
                name.clone()
            } else {
                format!("{rel}/{name}")
            };
            let m = std::fs::symlink_metadata(&path).unwrap();
            let ft = m.file_type();
            let item = if ft.is_dir() {
                self.pack_dir(root, &child);
                Item::Dir {
                    key: dir_key(&child),
                }
            } else if ft.is_file() {
                let mut blocks = Vec::new();
                let mut f = std::fs::File::open(&path).unwrap();
                let mut buf = vec![0u8; zos_flist::BLOCK_SIZE];
                loop {
                    let mut n = 0;
                    while n < buf.len() {
                        let k = f.read(&mut buf[n..]).unwrap();
                        if k == 0 {
                            break;
                        }
                        n += k;
                    }
                    if n == 0 {
                        break;
                    }
                    let (b, data) = encode_block(&buf[..n]);
                    let (hash, key) = split(&b);
                    self.blocks.insert(hex::encode(hash), data);
                    blocks.push((hash, key));
                    if n < buf.len() {
                        break;
                    }
                }
                Item::File { blocks }
            } else if ft.is_symlink() {
                Item::Link {
                    target: std::fs::read_link(&path)
                        .unwrap()
                        .into_os_string()
                        .into_string()
                        .unwrap(),
                }
            } else {
                let kind = if ft.is_block_device() {
                    special::Type::Block
                } else if ft.is_char_device() {
                    special::Type::Chardev
                } else if ft.is_fifo() {
                    special::Type::Fifopipe
                } else {
                    special::Type::Socket
                };
                let rdev = m.rdev();
                Item::Special {
                    kind,
                    data: format!("{},{}", libc::major(rdev), libc::minor(rdev)),
                }
            };
            contents.push(Entry {
                name,
                size: if ft.is_dir() { 4096 } else { m.size() },
                aclkey: self.aci(m.uid(), m.gid(), m.mode()),
                mtime: m.mtime() as u32,
                ctime: m.ctime() as u32,
                item,
            });
        }
        self.entries.insert(
            dir_key(rel),
            dir_message(rel, &acl, meta.mtime() as u32, &contents),
        );
    }

    /// Writes the database to `db` (an SQLite file with the 0-fs schema).
    pub fn write_db(&self, db: &Path) {
        let c = rusqlite::Connection::open(db).unwrap();
        c.execute_batch(
            "CREATE TABLE entries (key VARCHAR(64) PRIMARY KEY, value BLOB);
             CREATE TABLE metadata (key VARCHAR(64) PRIMARY KEY, value TEXT);",
        )
        .unwrap();
        for (k, v) in &self.entries {
            c.execute("insert into entries (key, value) values (?, ?)", (k, v))
                .unwrap();
        }
        for (k, v) in &self.metadata {
            c.execute("insert into metadata (key, value) values (?, ?)", (k, v))
                .unwrap();
        }
    }

    /// Writes the `.flist`: a tar.gz holding `./` and `./flistdb.sqlite3`, as hub flists are.
    pub fn write(&self, out: &Path) {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join(DB_NAME);
        self.write_db(&db);
        let f = std::fs::File::create(out).unwrap();
        let gz = flate2::write::GzEncoder::new(f, flate2::Compression::default());
        let mut tar = tar::Builder::new(gz);
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(tar::EntryType::Directory);
        h.set_mode(0o700);
        h.set_size(0);
        tar.append_data(&mut h, "./", std::io::empty()).unwrap();
        tar.append_path_with_name(&db, format!("./{DB_NAME}"))
            .unwrap();
        tar.into_inner().unwrap().finish().unwrap();
    }
}
