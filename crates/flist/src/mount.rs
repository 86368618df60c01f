//! Read-only FUSE mount of a flist, and the writable overlay on top of it.
//!
//! Blocks are fetched on first read through the node's [`BlockCache`], which verifies each one
//! against its id and key before it is cached or returned; a block that fails is an I/O error
//! (`EIO`) for that read and an error in the log, never wrong data. Sequential reads start
//! fetching the next blocks in the background (read-ahead).

use std::collections::HashMap;
use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use zos_runtime::error_chain;

use fuser::{
    Config, Errno, FileAttr, FileHandle, FileType, Filesystem, FopenFlags, Generation, INodeNo,
    KernelConfig, LockOwner, MountOption, OpenFlags, ReplyAttr, ReplyData, ReplyDirectory,
    ReplyEntry, ReplyOpen, ReplyStatfs, Request, SessionACL,
};

use crate::block::{BLOCK_SIZE, BlockId, BlockRef};
use crate::cache::{BlockCache, CacheError, CachedBlock};
use crate::meta::{Flist, FormatError, Kind, Node, ROOT_INO};
use crate::store::BlockStore;

/// Attributes never change: the kernel may keep them long.
const TTL: Duration = Duration::from_secs(3600);
/// Open block files kept per mount.
const OPEN_BLOCKS: usize = 32;

/// Problems mounting or serving a flist.
#[derive(Debug, thiserror::Error)]
pub enum MountError {
    #[error("cannot open the flist")]
    Flist(#[from] FormatError),
    #[error("cannot open the block cache")]
    Cache(#[from] CacheError),
    #[error("cannot open the flist's stores")]
    Store(#[from] crate::store::StoreError),
    #[error("{what} {path}")]
    Io {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path} is already a mount point; unmount it first")]
    AlreadyMounted { path: PathBuf },
    #[error("path {path} cannot be used in overlay options (contains ',' ':' or '\\')")]
    BadOverlayPath { path: PathBuf },
}

/// Settings of a mount.
#[derive(Debug, Clone)]
pub struct MountOptions {
    /// Blocks fetched ahead of a sequential reader.
    pub readahead_blocks: usize,
    /// Block fetches running at once for read-ahead, per mount.
    pub fetch_concurrency: usize,
    /// FUSE request threads.
    pub threads: usize,
    /// Name shown as the mount source (default: the flist file name).
    pub fsname: Option<String>,
    /// Runtime for block fetches (a multi-thread runtime); by default the mount runs its own.
    pub runtime: Option<tokio::runtime::Handle>,
}

impl Default for MountOptions {
    fn default() -> Self {
        Self {
            readahead_blocks: 8,
            fetch_concurrency: 4,
            threads: 4,
            fsname: None,
            runtime: None,
        }
    }
}

struct FlistFs {
    flist: Arc<Flist>,
    store: Arc<dyn BlockStore>,
    cache: Arc<BlockCache>,
    rt: tokio::runtime::Handle,
    readahead: usize,
    prefetch: Arc<tokio::sync::Semaphore>,
    next_fh: AtomicU64,
    /// Per open file: the block index that read-ahead last started from.
    seq: Mutex<HashMap<u64, (u64, u64)>>,
    open_blocks: Mutex<Vec<(BlockId, CachedBlock)>>,
    total_bytes: u64,
}

fn to_time(secs: i64) -> SystemTime {
    if secs >= 0 {
        UNIX_EPOCH + Duration::from_secs(secs as u64)
    } else {
        UNIX_EPOCH - Duration::from_secs(secs.unsigned_abs())
    }
}

fn file_type(kind: Kind) -> FileType {
    match kind {
        Kind::Dir => FileType::Directory,
        Kind::File => FileType::RegularFile,
        Kind::Symlink => FileType::Symlink,
        Kind::Char => FileType::CharDevice,
        Kind::Block => FileType::BlockDevice,
        Kind::Fifo => FileType::NamedPipe,
        Kind::Socket => FileType::Socket,
    }
}

impl FlistFs {
    fn attr(&self, n: &Node) -> FileAttr {
        let a = &n.attrs;
        FileAttr {
            ino: INodeNo(n.ino),
            size: a.size,
            blocks: a.size.div_ceil(512),
            atime: to_time(a.mtime),
            mtime: to_time(a.mtime),
            ctime: to_time(a.ctime),
            crtime: to_time(a.ctime),
            kind: file_type(a.kind()),
            perm: a.perm() as u16,
            nlink: n.nlink,
            uid: a.uid,
            gid: a.gid,
            rdev: a.rdev as u32,
            blksize: 4096,
            flags: 0,
        }
    }

    /// The node holding the data of an inode the kernel knows (always resolved).
    fn node(&self, ino: INodeNo) -> Option<&Node> {
        self.flist.resolve(u64::from(ino))
    }

    fn block(&self, b: &BlockRef) -> Result<CachedBlock, Arc<CacheError>> {
        {
            let open = self.open_blocks.lock().unwrap();
            if let Some((_, cb)) = open.iter().find(|(id, _)| *id == b.id) {
                return Ok(cb.clone());
            }
        }
        let cb = match self.cache.lookup(b).map_err(Arc::new)? {
            Some(cb) => cb,
            None => self.rt.block_on(self.cache.get(b, &self.store))?,
        };
        let mut open = self.open_blocks.lock().unwrap();
        if open.len() >= OPEN_BLOCKS {
            open.remove(0);
        }
        open.push((b.id, cb.clone()));
        Ok(cb)
    }

    fn read_ahead(&self, node: &Node, from: u64) {
        let end = (from + self.readahead as u64).min(node.blocks.len() as u64);
        for i in from..end {
            let b = node.blocks[i as usize];
            if self.cache.contains(&b.id) {
                continue;
            }
            let (cache, store, sem) = (
                self.cache.clone(),
                self.store.clone(),
                self.prefetch.clone(),
            );
            self.rt.spawn(async move {
                let Ok(_permit) = sem.acquire_owned().await else {
                    return;
                };
                if let Err(e) = cache.get(&b, &store).await {
                    tracing::debug!(block = %b.id, error = %error_chain(&*e), "read-ahead fetch failed");
                }
            });
        }
    }

    fn do_read(&self, fh: u64, node: &Node, offset: u64, size: u32) -> Result<Vec<u8>, Errno> {
        let fsize = node.attrs.size;
        if offset >= fsize || size == 0 {
            return Ok(Vec::new());
        }
        let end = (offset + size as u64).min(fsize);
        let bs = BLOCK_SIZE as u64;
        let (first, last) = (offset / bs, (end - 1) / bs);

        // Read-ahead when this read continues the previous one.
        let sequential = {
            let mut seq = self.seq.lock().unwrap();
            let st = seq.entry(fh).or_insert((u64::MAX, 0));
            let seq_read = offset == st.1 || offset == 0;
            st.1 = end;
            let trigger = seq_read && st.0 != first;
            if trigger {
                st.0 = first;
            }
            trigger
        };
        if sequential && self.readahead > 0 {
            self.read_ahead(node, last + 1);
        }

        let mut out = vec![0u8; (end - offset) as usize];
        let mut pos = offset;
        for idx in first..=last {
            let b = &node.blocks[idx as usize];
            let want_len = (fsize - idx * bs).min(bs) as usize;
            let cb = self.block(b).map_err(|e| {
                tracing::error!(
                    path = %self.flist.path_of(node.ino),
                    block = %b.id,
                    index = idx,
                    error = %error_chain(&*e),
                    "flist read failed"
                );
                Errno::EIO
            })?;
            if cb.len() != want_len {
                tracing::error!(
                    path = %self.flist.path_of(node.ino),
                    block = %b.id,
                    index = idx,
                    len = cb.len(),
                    expected = want_len,
                    "block length does not match the file size"
                );
                return Err(Errno::EIO);
            }
            let in_block = (pos - idx * bs) as usize;
            let block_end = ((idx + 1) * bs).min(end);
            let n = (block_end - pos) as usize;
            let dst = (pos - offset) as usize;
            cb.read_at(&mut out[dst..dst + n], in_block).map_err(|e| {
                tracing::error!(block = %b.id, error = %e, "reading a cached block failed");
                Errno::EIO
            })?;
            pos += n as u64;
        }
        Ok(out)
    }
}

impl Filesystem for FlistFs {
    fn init(&mut self, _req: &Request, config: &mut KernelConfig) -> std::io::Result<()> {
        let _ = config.set_max_readahead(1 << 20);
        Ok(())
    }

    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        match self
            .flist
            .lookup(u64::from(parent), name.as_bytes())
            .and_then(|n| self.flist.resolve(n.ino))
        {
            Some(n) => reply.entry(&TTL, &self.attr(n), Generation(0)),
            None => reply.error(Errno::ENOENT),
        }
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        match self.node(ino) {
            Some(n) => reply.attr(&TTL, &self.attr(n)),
            None => reply.error(Errno::ENOENT),
        }
    }

    fn readlink(&self, _req: &Request, ino: INodeNo, reply: ReplyData) {
        match self.node(ino).and_then(|n| n.attrs.target.as_ref()) {
            Some(t) => reply.data(t),
            None => reply.error(Errno::EINVAL),
        }
    }

    fn open(&self, _req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        let Some(n) = self.node(ino) else {
            return reply.error(Errno::ENOENT);
        };
        if n.attrs.kind() == Kind::Dir {
            return reply.error(Errno::EISDIR);
        }
        if flags.0 & libc::O_ACCMODE != libc::O_RDONLY {
            return reply.error(Errno::EROFS);
        }
        let fh = self.next_fh.fetch_add(1, Ordering::Relaxed);
        reply.opened(FileHandle(fh), FopenFlags::FOPEN_KEEP_CACHE);
    }

    fn read(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        let Some(n) = self.node(ino) else {
            return reply.error(Errno::ENOENT);
        };
        if n.attrs.kind() != Kind::File {
            return reply.error(Errno::EINVAL);
        }
        if let Some(why) = &n.damaged {
            tracing::warn!(path = %self.flist.path_of(n.ino), reason = %why, "read of a damaged file");
            return reply.error(Errno::EIO);
        }
        match self.do_read(fh.0, n, offset, size) {
            Ok(d) => reply.data(&d),
            Err(e) => reply.error(e),
        }
    }

    fn flush(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _lock_owner: LockOwner,
        reply: fuser::ReplyEmpty,
    ) {
        reply.ok();
    }

    fn release(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        _flush: bool,
        reply: fuser::ReplyEmpty,
    ) {
        self.seq.lock().unwrap().remove(&fh.0);
        reply.ok();
    }

    fn readdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectory,
    ) {
        let Some(dir) = self.node(ino) else {
            return reply.error(Errno::ENOENT);
        };
        if dir.attrs.kind() != Kind::Dir {
            return reply.error(Errno::ENOTDIR);
        }
        let parent = if dir.ino == ROOT_INO {
            ROOT_INO
        } else {
            dir.parent
        };
        let mut i = offset;
        if i == 0 {
            if reply.add(INodeNo(dir.ino), 1, FileType::Directory, ".") {
                return reply.ok();
            }
            i = 1;
        }
        if i == 1 {
            if reply.add(INodeNo(parent), 2, FileType::Directory, "..") {
                return reply.ok();
            }
            i = 2;
        }
        for (k, c) in dir.children.iter().enumerate().skip((i - 2) as usize) {
            let Some(child) = self.flist.get(*c) else {
                continue;
            };
            let data = self.flist.resolve(*c).unwrap_or(child);
            if reply.add(
                INodeNo(data.ino),
                k as u64 + 3,
                file_type(child.attrs.kind()),
                OsStr::from_bytes(child.name.as_bytes()),
            ) {
                break;
            }
        }
        reply.ok();
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        let blocks = self.total_bytes.div_ceil(4096);
        reply.statfs(blocks, 0, 0, self.flist.len() as u64, 0, 4096, 255, 4096);
    }
}

/// A live read-only mount; dropping it unmounts.
#[derive(Debug)]
pub struct MountHandle {
    session: Option<fuser::BackgroundSession>,
    runtime: Option<tokio::runtime::Runtime>,
    mountpoint: PathBuf,
}

impl MountHandle {
    /// Where the flist is mounted.
    pub fn mountpoint(&self) -> &Path {
        &self.mountpoint
    }

    /// False once the FUSE session ended (for example after an outside `umount`).
    pub fn is_alive(&self) -> bool {
        self.session
            .as_ref()
            .map(|s| !s.guard.is_finished())
            .unwrap_or(false)
    }

    /// Unmounts; a busy mount is detached (it disappears when its last user lets go).
    pub fn unmount(mut self) {
        self.shutdown();
    }

    fn shutdown(&mut self) {
        if let Some(session) = self.session.take()
            && let Err(e) = session.umount_and_join()
        {
            tracing::warn!(mountpoint = %self.mountpoint.display(), error = %e, "unmount failed; detaching");
            let _ = nix::mount::umount2(&self.mountpoint, nix::mount::MntFlags::MNT_DETACH);
        }
        if let Some(rt) = self.runtime.take() {
            rt.shutdown_background();
        }
    }
}

impl Drop for MountHandle {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// Mount points of this mount namespace.
pub fn mount_points() -> Vec<PathBuf> {
    let Ok(text) = std::fs::read_to_string("/proc/self/mountinfo") else {
        return Vec::new();
    };
    text.lines()
        .filter_map(|l| l.split(' ').nth(4))
        .map(|p| {
            // Undo the octal escapes of spaces, tabs, newlines and backslashes.
            let mut out = Vec::new();
            let b = p.as_bytes();
            let mut i = 0;
            while i < b.len() {
                if b[i] == b'\\'
                    && i + 4 <= b.len()
                    && let Some(v) = std::str::from_utf8(&b[i + 1..i + 4])
                        .ok()
                        .and_then(|o| u8::from_str_radix(o, 8).ok())
                {
                    out.push(v);
                    i += 4;
                    continue;
                }
                out.push(b[i]);
                i += 1;
            }
            PathBuf::from(OsStr::from_bytes(&out))
        })
        .collect()
}

/// Whether `path` is a mount point.
pub fn is_mount_point(path: &Path) -> bool {
    let p = std::path::absolute(path).unwrap_or_else(|_| path.to_owned());
    mount_points().contains(&p)
}

/// Makes `path` ready to mount on: a dead FUSE mount left by a killed process is detached;
/// a live mount is an error.
pub fn prepare_mount_point(path: &Path) -> Result<(), MountError> {
    match std::fs::metadata(path) {
        Err(e) if e.raw_os_error() == Some(libc::ENOTCONN) => {
            tracing::warn!(mountpoint = %path.display(), "detaching a dead FUSE mount");
            nix::mount::umount2(path, nix::mount::MntFlags::MNT_DETACH).map_err(|e| {
                MountError::Io {
                    what: "cannot detach the dead mount at",
                    path: path.to_owned(),
                    source: e.into(),
                }
            })?;
        }
        Err(e) => {
            return Err(MountError::Io {
                what: "cannot use mount point",
                path: path.to_owned(),
                source: e,
            });
        }
        Ok(m) if !m.is_dir() => {
            return Err(MountError::Io {
                what: "mount point is not a directory:",
                path: path.to_owned(),
                source: std::io::Error::from_raw_os_error(libc::ENOTDIR),
            });
        }
        Ok(_) => {
            if is_mount_point(path) {
                return Err(MountError::AlreadyMounted {
                    path: path.to_owned(),
                });
            }
        }
    }
    Ok(())
}

/// Mounts the flist file `flist` (FL, or a legacy `.flist`) read-only at `mountpoint`, reading blocks from `store`
/// through the node's `cache`.
pub fn mount(
    flist: &Path,
    mountpoint: &Path,
    store: Arc<dyn BlockStore>,
    cache: Arc<BlockCache>,
    options: &MountOptions,
) -> Result<MountHandle, MountError> {
    let fl = Arc::new(Flist::open_any(flist)?);
    mount_flist(fl, mountpoint, store, cache, options)
}

/// Like [`mount`], for a flist already opened.
pub fn mount_flist(
    flist: Arc<Flist>,
    mountpoint: &Path,
    store: Arc<dyn BlockStore>,
    cache: Arc<BlockCache>,
    options: &MountOptions,
) -> Result<MountHandle, MountError> {
    prepare_mount_point(mountpoint)?;
    let mountpoint = std::path::absolute(mountpoint).unwrap_or_else(|_| mountpoint.to_owned());
    let (runtime, handle) = match &options.runtime {
        Some(h) => (None, h.clone()),
        None => {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .thread_name("flist-fetch")
                .enable_all()
                .build()
                .map_err(|source| MountError::Io {
                    what: "cannot start the fetch runtime for",
                    path: mountpoint.clone(),
                    source,
                })?;
            let h = rt.handle().clone();
            (Some(rt), h)
        }
    };
    let fsname = options.fsname.clone().unwrap_or_else(|| {
        flist
            .path()
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "flist".into())
    });
    let total_bytes = flist
        .walk()
        .iter()
        .filter(|(_, n)| n.link_to.is_none() && n.attrs.kind() == Kind::File)
        .map(|(_, n)| n.attrs.size)
        .sum();
    let fs = FlistFs {
        flist,
        store,
        cache,
        rt: handle,
        readahead: options.readahead_blocks,
        prefetch: Arc::new(tokio::sync::Semaphore::new(
            options.fetch_concurrency.max(1),
        )),
        next_fh: AtomicU64::new(1),
        seq: Mutex::new(HashMap::new()),
        open_blocks: Mutex::new(Vec::new()),
        total_bytes,
    };
    let mut config = Config::default();
    config.mount_options = vec![
        MountOption::RO,
        MountOption::FSName(fsname.replace([',', ' '], "_")),
        MountOption::Subtype("flist".into()),
        MountOption::DefaultPermissions,
        MountOption::NoDev,
        MountOption::NoSuid,
    ];
    config.acl = SessionACL::All;
    config.n_threads = Some(options.threads.max(1));
    let session =
        fuser::spawn_mount(fs, &mountpoint, &config).map_err(|source| MountError::Io {
            what: "cannot mount the flist at",
            path: mountpoint.clone(),
            source,
        })?;
    tracing::info!(mountpoint = %mountpoint.display(), "flist mounted");
    Ok(MountHandle {
        session: Some(session),
        runtime,
        mountpoint,
    })
}

/// A writable mount: an overlay whose lower layer is the read-only flist mount and whose upper
/// layer lives in a directory of a storage volume. Dropping it unmounts both.
#[derive(Debug)]
pub struct WritableMount {
    mountpoint: PathBuf,
    lower: Option<MountHandle>,
}

impl WritableMount {
    /// Where the writable tree is.
    pub fn mountpoint(&self) -> &Path {
        &self.mountpoint
    }

    /// The read-only flist mount below the overlay.
    pub fn lower(&self) -> Option<&MountHandle> {
        self.lower.as_ref()
    }
}

impl Drop for WritableMount {
    fn drop(&mut self) {
        if nix::mount::umount(&self.mountpoint).is_err() {
            let _ = nix::mount::umount2(&self.mountpoint, nix::mount::MntFlags::MNT_DETACH);
        }
        self.lower.take();
    }
}

/// Mounts `flist` writable at `mountpoint`: the flist read-only at `rw_dir/lower`, changes in
/// `rw_dir/upper` (overlayfs work directory `rw_dir/work`). The upper layer survives
/// unmounting, so mounting again with the same `rw_dir` shows the same changes.
pub fn mount_writable(
    flist: &Path,
    mountpoint: &Path,
    rw_dir: &Path,
    store: Arc<dyn BlockStore>,
    cache: Arc<BlockCache>,
    options: &MountOptions,
) -> Result<WritableMount, MountError> {
    let (lower, upper, work) = (
        rw_dir.join("lower"),
        rw_dir.join("upper"),
        rw_dir.join("work"),
    );
    for d in [&lower, &upper, &work] {
        std::fs::create_dir_all(d).map_err(|source| MountError::Io {
            what: "cannot create",
            path: d.to_path_buf(),
            source,
        })?;
        if d.to_string_lossy().contains([',', ':', '\\']) {
            return Err(MountError::BadOverlayPath {
                path: d.to_path_buf(),
            });
        }
    }
    prepare_mount_point(mountpoint)?;
    let ro = mount(flist, &lower, store, cache, options)?;
    let abs = |p: &Path| std::path::absolute(p).unwrap_or_else(|_| p.to_owned());
    let data = format!(
        "lowerdir={},upperdir={},workdir={}",
        abs(&lower).display(),
        abs(&upper).display(),
        abs(&work).display()
    );
    nix::mount::mount(
        Some("overlay"),
        mountpoint,
        Some("overlay"),
        nix::mount::MsFlags::empty(),
        Some(data.as_str()),
    )
    .map_err(|e| MountError::Io {
        what: "cannot mount the overlay at",
        path: mountpoint.to_owned(),
        source: e.into(),
    })?;
    Ok(WritableMount {
        mountpoint: abs(mountpoint),
        lower: Some(ro),
    })
}
