//! What a flist holds, as data the CLI prints as a tree or emits as JSON.

use std::collections::HashSet;
use std::path::Path;

use crate::block::BlockId;
use crate::meta::{Flist, Format, FormatError, Kind, Route};
use crate::store::strip_password;

/// One entry of a flist.
#[derive(Debug, Clone, serde::Serialize)]
pub struct EntryInfo {
    /// Path inside the flist, starting with `/`.
    pub path: String,
    /// Depth below the root (the root is 0), for drawing trees.
    pub depth: usize,
    pub kind: Kind,
    /// Permission bits (with setuid, setgid, sticky).
    pub perm: u32,
    pub uid: u32,
    pub gid: u32,
    pub size: u64,
    pub mtime: i64,
    /// Symlink target (lossy UTF-8).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub target: Option<String>,
    /// For a hard link: the path of the file it shares content with.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hardlink_to: Option<String>,
    /// Major and minor of a device.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub device: Option<(u32, u32)>,
    /// Number of blocks of a regular file.
    pub blocks: usize,
    /// Why a regular file's content cannot be read (its blocks do not cover its size).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub damaged: Option<String>,
}

/// A regular file whose content cannot be read; the rest of the flist can.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Damaged {
    pub path: String,
    pub reason: String,
}

/// Counts over a flist.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct Totals {
    pub entries: u64,
    pub dirs: u64,
    pub files: u64,
    pub symlinks: u64,
    pub hardlinks: u64,
    pub devices: u64,
    pub other: u64,
    /// Bytes of file content (hard links counted once).
    pub bytes: u64,
    /// Block references.
    pub blocks: u64,
    /// Distinct blocks.
    pub unique_blocks: u64,
}

/// A flist described.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Inspection {
    /// The on-disk format: `fl` (rfs FL, `.fl`) or `legacy` (0-fs, `.flist`).
    pub format: Format,
    /// zos format revision, `None` for a flist made by rfs (or a legacy one).
    pub format_version: Option<u32>,
    pub tags: std::collections::BTreeMap<String, String>,
    /// Store routes (passwords removed).
    pub routes: Vec<Route>,
    pub totals: Totals,
    /// Every entry, parents first, siblings by name.
    pub entries: Vec<EntryInfo>,
    /// Files whose content cannot be read (reading them fails with EIO), by path.
    pub damaged: Vec<Damaged>,
}

/// Opens, validates and describes the flist at `path`, of either format ([`Flist::open_any`]).
pub fn inspect(path: &Path) -> Result<Inspection, FormatError> {
    Ok(describe(&Flist::open_any(path)?))
}

/// Describes an opened flist.
pub fn describe(fl: &Flist) -> Inspection {
    let mut totals = Totals::default();
    let mut unique: HashSet<BlockId> = HashSet::new();
    let mut entries = Vec::with_capacity(fl.len());
    for (path, n) in fl.walk() {
        let a = &n.attrs;
        totals.entries += 1;
        let kind = a.kind();
        match kind {
            Kind::Dir => totals.dirs += 1,
            Kind::File if n.link_to.is_some() => totals.hardlinks += 1,
            Kind::File => {
                totals.files += 1;
                totals.bytes += a.size;
                totals.blocks += n.blocks.len() as u64;
                unique.extend(n.blocks.iter().map(|b| b.id));
            }
            Kind::Symlink => totals.symlinks += 1,
            Kind::Char | Kind::Block => totals.devices += 1,
            Kind::Fifo | Kind::Socket => totals.other += 1,
        }
        let depth = if path == "/" {
            0
        } else {
            path.matches('/').count()
        };
        entries.push(EntryInfo {
            depth,
            kind,
            perm: a.perm(),
            uid: a.uid,
            gid: a.gid,
            size: a.size,
            mtime: a.mtime,
            target: a
                .target
                .as_ref()
                .map(|t| String::from_utf8_lossy(t).into_owned()),
            hardlink_to: n.link_to.map(|t| fl.path_of(t)),
            device: matches!(kind, Kind::Char | Kind::Block)
                .then(|| (libc::major(a.rdev), libc::minor(a.rdev))),
            blocks: n.blocks.len(),
            damaged: n.damaged.clone(),
            path,
        });
    }
    totals.unique_blocks = unique.len() as u64;
    Inspection {
        format: fl.format(),
        format_version: fl.format_version(),
        tags: fl.tags().clone(),
        routes: fl
            .routes()
            .iter()
            .map(|r| Route {
                url: strip_password(&r.url),
                ..r.clone()
            })
            .collect(),
        totals,
        entries,
        damaged: fl
            .damaged()
            .into_iter()
            .map(|(path, reason)| Damaged { path, reason })
            .collect(),
    }
}
