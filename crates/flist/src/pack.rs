//! Packing a directory tree or a tarball into an FL flist, uploading its blocks.
//!
//! Files are cut into [`BLOCK_SIZE`] blocks (the last one shorter), encoded in parallel, and only
//! the blocks the store lacks are uploaded (one `missing` query per batch). Hard links, devices,
//! fifos, sockets, symlinks, owners, permissions (with setuid/setgid/sticky) and times are kept;
//! extended attributes are not (the format has no place for them). The flist file appears only
//! when everything succeeded.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::io::Read;
use std::os::unix::fs::MetadataExt;
use std::path::{Component, Path, PathBuf};
use std::sync::{Arc, Mutex};

use futures::StreamExt;

use crate::block::{BLOCK_SIZE, BlockId, BlockRef, EncodedBlock, encode};
use crate::meta::{Attrs, FormatError, Kind, ROOT_INO, Route, Writer};
use crate::store::{BlockStore, StoreError, strip_password};

/// Blocks checked against the store with one `missing` query.
const BATCH: usize = 32;

/// What to pack.
#[derive(Debug, Clone)]
pub enum Source {
    /// A directory on this machine (not followed across symlinks).
    Dir(PathBuf),
    /// A tar archive, plain or gzip-compressed.
    Tar(PathBuf),
}

impl Source {
    /// A directory is packed as a tree, any other file as a tarball.
    pub fn detect(path: &Path) -> Source {
        if path.is_dir() {
            Source::Dir(path.to_owned())
        } else {
            Source::Tar(path.to_owned())
        }
    }
}

/// Settings of a pack.
#[derive(Debug, Clone)]
pub struct PackOptions {
    /// Tags to write (for example `description`, `author`, `version`).
    pub tags: Vec<(String, String)>,
    /// Routes to write instead of the store's own (for example the public URL of a hub).
    pub routes: Option<Vec<Route>>,
    /// Keep passwords in route URLs (rfs strips them by default; so do we).
    pub keep_passwords: bool,
    /// Blocks encoded in parallel.
    pub workers: usize,
}

impl Default for PackOptions {
    fn default() -> Self {
        Self {
            tags: Vec::new(),
            routes: None,
            keep_passwords: false,
            workers: std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(2),
        }
    }
}

/// Stage of a pack.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Phase {
    #[default]
    Scanning,
    Uploading,
    Writing,
    Done,
}

/// Where a pack stands; also its final summary.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct Progress {
    pub phase: Phase,
    /// Entries of every kind (known after scanning a directory; counted as read for tarballs).
    pub entries: u64,
    /// Regular files with content to read (0 while unknown).
    pub files_total: u64,
    /// Bytes of file content to read (0 while unknown).
    pub bytes_total: u64,
    /// Bytes of file content read and encoded.
    pub bytes_done: u64,
    /// Blocks referenced by the flist (with repeats).
    pub blocks: u64,
    /// Blocks sent to the store.
    pub blocks_uploaded: u64,
    /// Blocks the store already had, or that appeared earlier in this pack.
    pub blocks_present: u64,
    /// Cipher-text bytes sent to the store.
    pub bytes_uploaded: u64,
}

/// Why a pack failed (nothing is written in that case).
#[derive(Debug, thiserror::Error)]
pub enum PackError {
    #[error("cannot read {path}")]
    Source {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: {reason}")]
    Unsupported { path: PathBuf, reason: String },
    #[error("{path} changed while it was being packed")]
    Changed { path: PathBuf },
    #[error("tarball {path}: {detail}")]
    Tar { path: PathBuf, detail: String },
    #[error("uploading blocks failed")]
    Store(#[from] StoreError),
    #[error("writing the flist failed")]
    Format(#[from] FormatError),
}

#[derive(Debug)]
struct PNode {
    attrs: Attrs,
    children: BTreeMap<String, usize>,
    file: Option<PathBuf>,
    link_to: Option<usize>,
}

#[derive(Debug)]
struct Tree {
    nodes: Vec<PNode>,
}

impl Tree {
    fn new(root: Attrs) -> Self {
        Tree {
            nodes: vec![PNode {
                attrs: root,
                children: BTreeMap::new(),
                file: None,
                link_to: None,
            }],
        }
    }

    fn add(&mut self, parent: usize, name: String, attrs: Attrs) -> usize {
        let i = self.nodes.len();
        self.nodes.push(PNode {
            attrs,
            children: BTreeMap::new(),
            file: None,
            link_to: None,
        });
        self.nodes[parent].children.insert(name, i);
        i
    }
}

struct Job {
    node: usize,
    data: Vec<u8>,
}

fn dir_attrs() -> Attrs {
    Attrs {
        mode: libc::S_IFDIR | 0o755,
        uid: 0,
        gid: 0,
        size: 0,
        rdev: 0,
        ctime: 0,
        mtime: 0,
        target: None,
    }
}

fn attrs_of(meta: &std::fs::Metadata) -> Attrs {
    Attrs {
        mode: meta.mode(),
        uid: meta.uid(),
        gid: meta.gid(),
        size: if meta.is_dir() { 0 } else { meta.size() },
        rdev: meta.rdev(),
        ctime: meta.ctime(),
        mtime: meta.mtime(),
        target: None,
    }
}

fn src_err(path: &Path) -> impl FnOnce(std::io::Error) -> PackError + '_ {
    move |source| PackError::Source {
        path: path.to_owned(),
        source,
    }
}

fn name_of(path: &Path, raw: &std::ffi::OsStr) -> Result<String, PackError> {
    use std::os::unix::ffi::OsStrExt;
    crate::meta::check_name(raw.as_bytes())
        .map(str::to_string)
        .map_err(|reason| PackError::Unsupported {
            path: path.to_owned(),
            reason,
        })
}

/// Reads a file in blocks and sends them; checks the file keeps the size it had when scanned.
fn send_file(
    path: &Path,
    node: usize,
    size: u64,
    tx: &tokio::sync::mpsc::Sender<Job>,
) -> Result<bool, PackError> {
    let mut f = std::fs::File::open(path).map_err(src_err(path))?;
    let mut left = size;
    while left > 0 {
        let want = left.min(BLOCK_SIZE as u64) as usize;
        let mut data = vec![0u8; want];
        let mut got = 0;
        while got < want {
            let n = f.read(&mut data[got..]).map_err(src_err(path))?;
            if n == 0 {
                return Err(PackError::Changed {
                    path: path.to_owned(),
                });
            }
            got += n;
        }
        left -= want as u64;
        if tx.blocking_send(Job { node, data }).is_err() {
            return Ok(false);
        }
    }
    let mut probe = [0u8; 1];
    if f.read(&mut probe).map_err(src_err(path))? != 0 {
        return Err(PackError::Changed {
            path: path.to_owned(),
        });
    }
    Ok(true)
}

fn scan_dir(root: &Path, state: &Mutex<Progress>) -> Result<Tree, PackError> {
    let meta = std::fs::metadata(root).map_err(src_err(root))?;
    if !meta.is_dir() {
        return Err(PackError::Unsupported {
            path: root.to_owned(),
            reason: "not a directory".into(),
        });
    }
    let mut tree = Tree::new(attrs_of(&meta));
    let mut links: HashMap<(u64, u64), usize> = HashMap::new();
    // Breadth first, names sorted: the first name of a hard-linked file is the shallowest.
    let mut queue = std::collections::VecDeque::from([(root.to_owned(), 0usize)]);
    let (mut files, mut bytes, mut entries) = (0u64, 0u64, 1u64);
    while let Some((dir, parent)) = queue.pop_front() {
        let mut kids: Vec<_> = std::fs::read_dir(&dir)
            .map_err(src_err(&dir))?
            .collect::<Result<_, _>>()
            .map_err(src_err(&dir))?;
        kids.sort_by_key(|e| e.file_name());
        for e in kids {
            let path = e.path();
            let name = name_of(&path, &e.file_name())?;
            let meta = std::fs::symlink_metadata(&path).map_err(src_err(&path))?;
            let mut attrs = attrs_of(&meta);
            entries += 1;
            let ft = meta.file_type();
            if ft.is_symlink() {
                use std::os::unix::ffi::OsStrExt;
                let t = std::fs::read_link(&path).map_err(src_err(&path))?;
                attrs.target = Some(t.as_os_str().as_bytes().to_vec());
                attrs.size = attrs.target.as_ref().map_or(0, |t| t.len() as u64);
            }
            if ft.is_file()
                && meta.nlink() > 1
                && let Some(&first) = links.get(&(meta.dev(), meta.ino()))
            {
                let i = tree.add(parent, name, attrs);
                tree.nodes[i].link_to = Some(first);
                continue;
            }
            let i = tree.add(parent, name, attrs);
            if ft.is_dir() {
                queue.push_back((path, i));
            } else if ft.is_file() {
                if meta.nlink() > 1 {
                    links.insert((meta.dev(), meta.ino()), i);
                }
                files += 1;
                bytes += meta.size();
                tree.nodes[i].file = Some(path);
            }
        }
    }
    let mut p = state.lock().unwrap();
    p.files_total = files;
    p.bytes_total = bytes;
    p.entries = entries;
    Ok(tree)
}

fn produce_dir(
    root: &Path,
    tx: tokio::sync::mpsc::Sender<Job>,
    state: &Mutex<Progress>,
) -> Result<Tree, PackError> {
    let tree = scan_dir(root, state)?;
    for (i, n) in tree.nodes.iter().enumerate() {
        if let Some(path) = &n.file
            && !send_file(path, i, n.attrs.size, &tx)?
        {
            break;
        }
    }
    Ok(tree)
}

fn tar_path(archive: &Path, raw: &Path) -> Result<Vec<String>, PackError> {
    let mut out = Vec::new();
    for c in raw.components() {
        match c {
            Component::Normal(n) => out.push(name_of(raw, n)?),
            Component::CurDir | Component::RootDir => {}
            Component::ParentDir | Component::Prefix(_) => {
                return Err(PackError::Tar {
                    path: archive.to_owned(),
                    detail: format!("entry {} leaves the archive root", raw.display()),
                });
            }
        }
    }
    Ok(out)
}

fn produce_tar(
    archive: &Path,
    tx: tokio::sync::mpsc::Sender<Job>,
    state: &Mutex<Progress>,
) -> Result<Tree, PackError> {
    let mut f = std::fs::File::open(archive).map_err(src_err(archive))?;
    let mut magic = [0u8; 2];
    let n = f.read(&mut magic).map_err(src_err(archive))?;
    use std::io::Seek;
    f.seek(std::io::SeekFrom::Start(0))
        .map_err(src_err(archive))?;
    let reader: Box<dyn Read> = if n == 2 && magic == [0x1f, 0x8b] {
        Box::new(flate2::read::GzDecoder::new(std::io::BufReader::new(f)))
    } else {
        Box::new(std::io::BufReader::new(f))
    };
    let terr = |detail: String| PackError::Tar {
        path: archive.to_owned(),
        detail,
    };
    let mut ar = tar::Archive::new(reader);
    let mut tree = Tree::new(dir_attrs());
    let entries = ar.entries().map_err(|e| terr(e.to_string()))?;
    for entry in entries {
        let mut entry = entry.map_err(|e| terr(e.to_string()))?;
        let raw = entry.path().map_err(|e| terr(e.to_string()))?.into_owned();
        let parts = tar_path(archive, &raw)?;
        let h = entry.header();
        let et = h.entry_type();
        let perm = h.mode().map_err(|e| terr(e.to_string()))? & 0o7777;
        let num = |r: std::io::Result<u64>| r.map_err(|e| terr(format!("{}: {e}", raw.display())));
        let mtime = num(h.mtime())? as i64;
        let mut attrs = Attrs {
            mode: perm,
            uid: num(h.uid())? as u32,
            gid: num(h.gid())? as u32,
            size: 0,
            rdev: 0,
            ctime: mtime,
            mtime,
            target: None,
        };
        use tar::EntryType as E;
        let link_name = || -> Result<Vec<u8>, PackError> {
            match entry.link_name_bytes() {
                Some(l) if !l.is_empty() => Ok(l.into_owned()),
                _ => Err(terr(format!("{}: link without a target", raw.display()))),
            }
        };
        let kind = match et {
            E::Regular | E::Continuous => Kind::File,
            E::Directory => Kind::Dir,
            E::Symlink => {
                let t = link_name()?;
                attrs.size = t.len() as u64;
                attrs.target = Some(t);
                Kind::Symlink
            }
            E::Link => Kind::File,
            E::Char | E::Block => {
                let major = num(h.device_major().map(|m| m.unwrap_or(0) as u64))? as u32;
                let minor = num(h.device_minor().map(|m| m.unwrap_or(0) as u64))? as u32;
                attrs.rdev = libc::makedev(major, minor);
                if et == E::Char {
                    Kind::Char
                } else {
                    Kind::Block
                }
            }
            E::Fifo => Kind::Fifo,
            E::XGlobalHeader | E::XHeader | E::GNULongName | E::GNULongLink => continue,
            other => {
                return Err(terr(format!(
                    "{}: entry type {other:?} is not supported",
                    raw.display()
                )));
            }
        };
        attrs.mode |= kind.type_bits();
        state.lock().unwrap().entries += 1;
        if parts.is_empty() {
            if kind == Kind::Dir {
                tree.nodes[0].attrs = attrs;
            }
            continue;
        }
        // Find or make the parent directories.
        let mut parent = 0usize;
        for comp in &parts[..parts.len() - 1] {
            parent = match tree.nodes[parent].children.get(comp) {
                Some(&i) if tree.nodes[i].attrs.kind() == Kind::Dir => i,
                Some(_) => {
                    return Err(terr(format!(
                        "{}: a parent is not a directory",
                        raw.display()
                    )));
                }
                None => tree.add(parent, comp.clone(), dir_attrs()),
            };
        }
        let name = parts.last().expect("non-empty").clone();
        if let Some(&old) = tree.nodes[parent].children.get(&name) {
            if kind == Kind::Dir && tree.nodes[old].attrs.kind() == Kind::Dir {
                tree.nodes[old].attrs = attrs;
                continue;
            }
            // A later entry replaces an earlier one, as extraction would.
            tree.nodes[parent].children.remove(&name);
        }
        if et == E::Link {
            let raw_target = link_name()?;
            let target = tar_path(
                archive,
                Path::new(
                    <std::ffi::OsStr as std::os::unix::ffi::OsStrExt>::from_bytes(&raw_target),
                ),
            )?;
            let mut t = 0usize;
            for comp in &target {
                t = *tree.nodes[t].children.get(comp).ok_or_else(|| {
                    terr(format!("{}: hard link to a missing entry", raw.display()))
                })?;
            }
            if tree.nodes[t].attrs.kind() != Kind::File {
                return Err(terr(format!(
                    "{}: hard link to something other than a regular file",
                    raw.display()
                )));
            }
            let t = tree.nodes[t].link_to.unwrap_or(t);
            let target_attrs = tree.nodes[t].attrs.clone();
            let i = tree.add(parent, name, target_attrs);
            tree.nodes[i].link_to = Some(t);
            continue;
        }
        if kind == Kind::File {
            attrs.size = entry.size();
        }
        let i = tree.add(parent, name, attrs);
        if kind == Kind::File {
            state.lock().unwrap().files_total += 1;
            let mut left = entry.size();
            while left > 0 {
                let want = left.min(BLOCK_SIZE as u64) as usize;
                let mut data = vec![0u8; want];
                entry
                    .read_exact(&mut data)
                    .map_err(|e| terr(format!("{}: {e}", raw.display())))?;
                left -= want as u64;
                if tx.blocking_send(Job { node: i, data }).is_err() {
                    return Ok(tree);
                }
            }
        }
    }
    Ok(tree)
}

/// Packs `source` into the flist `output`, uploading blocks to `store`. `progress` is called
/// as the pack moves on (from the calling task). Returns the final figures.
pub async fn pack(
    source: &Source,
    output: &Path,
    store: Arc<dyn BlockStore>,
    options: &PackOptions,
    progress: &(dyn Fn(&Progress) + Sync),
) -> Result<Progress, PackError> {
    let workers = options.workers.max(1);
    let state = Arc::new(Mutex::new(Progress::default()));
    progress(&state.lock().unwrap().clone());
    let (tx, mut rx) = tokio::sync::mpsc::channel::<Job>(workers * 2);
    let producer = {
        let source = source.clone();
        let state = state.clone();
        tokio::task::spawn_blocking(move || match &source {
            Source::Dir(p) => produce_dir(p, tx, &state),
            Source::Tar(p) => produce_tar(p, tx, &state),
        })
    };

    let jobs = futures::stream::poll_fn(move |cx| rx.poll_recv(cx));
    let mut encoded = jobs
        .map(|job| {
            tokio::task::spawn_blocking(move || {
                let len = job.data.len() as u64;
                (job.node, len, encode(&job.data))
            })
        })
        .buffered(workers)
        .ready_chunks(BATCH);

    let mut blocks: HashMap<usize, Vec<BlockRef>> = HashMap::new();
    let mut known: HashSet<BlockId> = HashSet::new();
    let mut failed: Option<PackError> = None;
    while let Some(batch) = encoded.next().await {
        let batch: Vec<(usize, u64, EncodedBlock)> = batch
            .into_iter()
            .map(|r| r.expect("encoding task panicked"))
            .collect();
        let mut ask: Vec<BlockId> = Vec::new();
        for (_, _, e) in &batch {
            if !known.contains(&e.block.id) && !ask.contains(&e.block.id) {
                ask.push(e.block.id);
            }
        }
        let lacking: HashSet<BlockId> = match store.missing(&ask).await {
            Ok(m) => m.into_iter().collect(),
            Err(e) => {
                failed = Some(e.into());
                break;
            }
        };
        let uploads: Vec<&EncodedBlock> = {
            let mut seen = HashSet::new();
            batch
                .iter()
                .map(|(_, _, e)| e)
                .filter(|e| lacking.contains(&e.block.id) && seen.insert(e.block.id))
                .collect()
        };
        let results: Vec<Result<(), StoreError>> = futures::stream::iter(uploads.iter())
            .map(|e| store.put(&e.block.id, &e.data))
            .buffer_unordered(4)
            .collect()
            .await;
        if let Some(Err(e)) = results.into_iter().find(|r| r.is_err()) {
            failed = Some(e.into());
            break;
        }
        let mut p = state.lock().unwrap();
        p.phase = Phase::Uploading;
        for (node, len, e) in &batch {
            blocks.entry(*node).or_default().push(e.block);
            p.bytes_done += len;
            p.blocks += 1;
        }
        p.blocks_uploaded += uploads.len() as u64;
        p.bytes_uploaded += uploads.iter().map(|e| e.data.len() as u64).sum::<u64>();
        p.blocks_present += batch.len() as u64 - uploads.len() as u64;
        known.extend(batch.iter().map(|(_, _, e)| e.block.id));
        let snapshot = p.clone();
        drop(p);
        progress(&snapshot);
    }
    drop(encoded);
    let tree = producer.await.expect("pack reader panicked");
    if let Some(e) = failed {
        return Err(e);
    }
    let tree = tree?;

    state.lock().unwrap().phase = Phase::Writing;
    progress(&state.lock().unwrap().clone());
    let routes = match &options.routes {
        Some(r) => r.clone(),
        None => store.routes(),
    };
    let out = output.to_owned();
    let tags = options.tags.clone();
    let keep = options.keep_passwords;
    tokio::task::spawn_blocking(move || write_flist(&out, &tree, &blocks, &routes, &tags, keep))
        .await
        .expect("flist writer panicked")?;
    let mut p = state.lock().unwrap();
    p.phase = Phase::Done;
    let done = p.clone();
    drop(p);
    progress(&done);
    Ok(done)
}

fn write_flist(
    out: &Path,
    tree: &Tree,
    blocks: &HashMap<usize, Vec<BlockRef>>,
    routes: &[Route],
    tags: &[(String, String)],
    keep_passwords: bool,
) -> Result<(), FormatError> {
    let mut w = Writer::create(out)?;
    let mut ino: HashMap<usize, u64> = HashMap::new();
    ino.insert(0, w.root(&tree.nodes[0].attrs)?);
    debug_assert_eq!(ino[&0], ROOT_INO);
    let mut queue = std::collections::VecDeque::from([0usize]);
    let mut links = Vec::new();
    let empty = Vec::new();
    while let Some(i) = queue.pop_front() {
        let parent = ino[&i];
        for (name, &c) in &tree.nodes[i].children {
            let node = &tree.nodes[c];
            let data = node.link_to.unwrap_or(c);
            let attrs = if let Some(t) = node.link_to {
                // A hard link is written as a full copy of its target's row.
                let mut a = tree.nodes[t].attrs.clone();
                a.target = None;
                links.push((c, t));
                a
            } else {
                node.attrs.clone()
            };
            let n = w.entry(parent, name, &attrs)?;
            ino.insert(c, n);
            if attrs.kind() == Kind::File {
                for b in blocks.get(&data).unwrap_or(&empty) {
                    w.block(n, b)?;
                }
            }
            if node.attrs.kind() == Kind::Dir {
                queue.push_back(c);
            }
        }
    }
    for (a, t) in links {
        w.hardlink(ino[&a], ino[&t])?;
    }
    for r in routes {
        let url = if keep_passwords {
            r.url.clone()
        } else {
            strip_password(&r.url)
        };
        w.route(&Route { url, ..r.clone() })?;
    }
    for (k, v) in tags {
        w.tag(k, v)?;
    }
    w.finish()
}
