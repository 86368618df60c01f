//! Converting a legacy 0-fs flist (`.flist`) and its blocks into an FL flist.
//!
//! Every block of every file is read from the legacy store, checked with
//! [`legacy::decode_block`] (the stored bytes against the hash, the plain text against the key),
//! cut again into FL blocks of [`BLOCK_SIZE`] and encoded as rfs does; only the blocks the
//! destination store lacks are uploaded (one `missing` query per batch), as [`crate::pack`] does.
//! The tree (names, kinds, modes, owners, times, link targets, devices) and the tags are copied;
//! the routes are the destination store's. The FL file appears only when everything succeeded.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use futures::StreamExt;

use crate::block::{BLOCK_SIZE, BlockError, BlockId, BlockRef, EncodedBlock, encode};
use crate::legacy;
use crate::meta::{Flist, Format, FormatError, Ino, Kind, ROOT_INO, Route, Writer};
use crate::pack::{PackOptions, Phase, Progress};
use crate::store::{BlockStore, StoreError, strip_password};

/// FL blocks checked against the destination with one `missing` query.
const BATCH: usize = 32;

/// Why a conversion failed (nothing is written in that case).
#[derive(Debug, thiserror::Error)]
pub enum ConvertError {
    #[error("cannot read the flist")]
    Open(#[source] FormatError),
    #[error("{path} is already an FL flist: there is nothing to convert")]
    NotLegacy { path: PathBuf },
    #[error(
        "{path}: {file} cannot be converted: {reason} (the FL format has no place for a file \
         without its content)"
    )]
    Damaged {
        path: PathBuf,
        file: String,
        reason: String,
    },
    #[error(
        "cannot read block {block} of {file} from the legacy store (give the store holding it \
         with --from)"
    )]
    Fetch {
        file: String,
        block: String,
        #[source]
        source: StoreError,
    },
    #[error("block {block} of {file} from the legacy store is not what the flist names")]
    Corrupt {
        file: String,
        block: String,
        #[source]
        source: BlockError,
    },
    #[error("{file}: its blocks hold {got} bytes, its size is {size}")]
    Length { file: String, size: u64, got: u64 },
    #[error("uploading blocks failed")]
    Store(#[from] StoreError),
    #[error("writing the flist failed")]
    Format(#[from] FormatError),
}

/// One legacy block to read: the file it belongs to and whether it is the file's last.
struct Job {
    ino: Ino,
    block: BlockRef,
    last: bool,
}

/// What is being built: per file, plain text waiting to be cut, and its FL blocks so far.
#[derive(Default)]
struct Files {
    pending: HashMap<Ino, Vec<u8>>,
    read: HashMap<Ino, u64>,
    blocks: HashMap<Ino, Vec<BlockRef>>,
}

/// Converts the legacy flist `input` into the FL flist `output`: blocks are read from `source`
/// (for example the flist's own backend, [`crate::store::Router::from_routes`]) and written to
/// `dest`, like [`crate::pack::pack`] writes them. `options` are pack's: extra tags, routes to
/// write instead of `dest`'s, passwords, parallel block reads. `progress` is called as the
/// conversion moves on; the final figures are returned.
pub async fn convert(
    input: &Path,
    output: &Path,
    source: Arc<dyn BlockStore>,
    dest: Arc<dyn BlockStore>,
    options: &PackOptions,
    progress: &(dyn Fn(&Progress) + Sync),
) -> Result<Progress, ConvertError> {
    let path = input.to_owned();
    let fl = tokio::task::spawn_blocking(move || Flist::open_any(&path))
        .await
        .expect("flist reader panicked")
        .map_err(ConvertError::Open)?;
    if fl.format() != Format::Legacy {
        return Err(ConvertError::NotLegacy {
            path: input.to_owned(),
        });
    }
    if let Some((file, reason)) = fl.damaged().into_iter().next() {
        return Err(ConvertError::Damaged {
            path: input.to_owned(),
            file,
            reason,
        });
    }

    let mut p = Progress {
        entries: fl.len() as u64,
        ..Progress::default()
    };
    let mut jobs = Vec::new();
    let mut names = HashMap::new();
    for (path, node) in fl.walk() {
        if node.attrs.kind() != Kind::File {
            continue;
        }
        p.files_total += 1;
        p.bytes_total += node.attrs.size;
        let n = node.blocks.len();
        for (i, b) in node.blocks.iter().enumerate() {
            jobs.push(Job {
                ino: node.ino,
                block: *b,
                last: i + 1 == n,
            });
        }
        names.insert(node.ino, path);
    }
    progress(&p);
    p.phase = Phase::Uploading;

    let workers = options.workers.max(1);
    let name_of = |ino: Ino| names.get(&ino).cloned().unwrap_or_default();
    let mut plain = futures::stream::iter(jobs)
        .map(|job| {
            let source = source.clone();
            let file = name_of(job.ino);
            async move {
                let block = job.block;
                let hex = hex::encode(legacy::split(&block).0);
                let data = source
                    .get(&block.id)
                    .await
                    .map_err(|source| ConvertError::Fetch {
                        file: file.clone(),
                        block: hex.clone(),
                        source,
                    })?;
                let plain =
                    tokio::task::spawn_blocking(move || legacy::decode_block(&block, &data))
                        .await
                        .expect("block decoder panicked")
                        .map_err(|source| ConvertError::Corrupt {
                            file,
                            block: hex,
                            source,
                        })?;
                Ok::<_, ConvertError>((job, plain))
            }
        })
        .buffered(workers);

    let mut files = Files::default();
    let mut batch: Vec<(Ino, EncodedBlock)> = Vec::new();
    let mut known: HashSet<BlockId> = HashSet::new();
    while let Some(r) = plain.next().await {
        let (job, data) = r?;
        *files.read.entry(job.ino).or_default() += data.len() as u64;
        let buf = files.pending.entry(job.ino).or_default();
        buf.extend_from_slice(&data);
        let mut cut = Vec::new();
        while buf.len() >= BLOCK_SIZE {
            let rest = buf.split_off(BLOCK_SIZE);
            cut.push(std::mem::replace(buf, rest));
        }
        if job.last {
            let size = fl.get(job.ino).map(|n| n.attrs.size).unwrap_or(0);
            let got = files.read[&job.ino];
            if got != size {
                return Err(ConvertError::Length {
                    file: name_of(job.ino),
                    size,
                    got,
                });
            }
            let rest = files.pending.remove(&job.ino).unwrap_or_default();
            if !rest.is_empty() {
                cut.push(rest);
            }
        }
        for chunk in cut {
            p.bytes_done += chunk.len() as u64;
            let e = tokio::task::spawn_blocking(move || encode(&chunk))
                .await
                .expect("block encoder panicked");
            batch.push((job.ino, e));
        }
        if batch.len() >= BATCH {
            upload(&dest, &mut batch, &mut known, &mut files, &mut p).await?;
            progress(&p);
        }
    }
    upload(&dest, &mut batch, &mut known, &mut files, &mut p).await?;

    p.phase = Phase::Writing;
    progress(&p);
    let routes = match &options.routes {
        Some(r) => r.clone(),
        None => dest.routes(),
    };
    let out = output.to_owned();
    let mut tags: Vec<(String, String)> = fl
        .tags()
        .iter()
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    tags.extend(options.tags.iter().cloned());
    let keep = options.keep_passwords;
    let blocks = files.blocks;
    tokio::task::spawn_blocking(move || write_fl(&out, &fl, &blocks, &routes, &tags, keep))
        .await
        .expect("flist writer panicked")?;
    p.phase = Phase::Done;
    progress(&p);
    Ok(p)
}

/// Uploads what `dest` lacks of `batch` and files its blocks under their files.
async fn upload(
    dest: &Arc<dyn BlockStore>,
    batch: &mut Vec<(Ino, EncodedBlock)>,
    known: &mut HashSet<BlockId>,
    files: &mut Files,
    p: &mut Progress,
) -> Result<(), ConvertError> {
    if batch.is_empty() {
        return Ok(());
    }
    let mut ask: Vec<BlockId> = Vec::new();
    for (_, e) in batch.iter() {
        if !known.contains(&e.block.id) && !ask.contains(&e.block.id) {
            ask.push(e.block.id);
        }
    }
    let lacking: HashSet<BlockId> = if ask.is_empty() {
        HashSet::new()
    } else {
        dest.missing(&ask).await?.into_iter().collect()
    };
    let mut seen = HashSet::new();
    let uploads: Vec<&EncodedBlock> = batch
        .iter()
        .map(|(_, e)| e)
        .filter(|e| lacking.contains(&e.block.id) && seen.insert(e.block.id))
        .collect();
    let results: Vec<Result<(), StoreError>> = futures::stream::iter(uploads.iter())
        .map(|e| dest.put(&e.block.id, &e.data))
        .buffer_unordered(4)
        .collect()
        .await;
    if let Some(Err(e)) = results.into_iter().find(|r| r.is_err()) {
        return Err(e.into());
    }
    p.blocks += batch.len() as u64;
    p.blocks_uploaded += uploads.len() as u64;
    p.bytes_uploaded += uploads.iter().map(|e| e.data.len() as u64).sum::<u64>();
    p.blocks_present += (batch.len() - uploads.len()) as u64;
    for (ino, e) in batch.drain(..) {
        known.insert(e.block.id);
        files.blocks.entry(ino).or_default().push(e.block);
    }
    Ok(())
}

/// Writes the tree of `fl` breadth first with the FL blocks of its files.
fn write_fl(
    out: &Path,
    fl: &Flist,
    blocks: &HashMap<Ino, Vec<BlockRef>>,
    routes: &[Route],
    tags: &[(String, String)],
    keep_passwords: bool,
) -> Result<(), FormatError> {
    let mut w = Writer::create(out)?;
    let mut ino: HashMap<Ino, Ino> = HashMap::new();
    ino.insert(ROOT_INO, w.root(&fl.root().attrs)?);
    let mut queue = std::collections::VecDeque::from([ROOT_INO]);
    let empty = Vec::new();
    while let Some(dir) = queue.pop_front() {
        let parent = ino[&dir];
        let Some(node) = fl.get(dir) else { continue };
        for &c in &node.children {
            let Some(child) = fl.get(c) else { continue };
            let n = w.entry(parent, &child.name, &child.attrs)?;
            ino.insert(c, n);
            match child.attrs.kind() {
                Kind::File => {
                    for b in blocks.get(&c).unwrap_or(&empty) {
                        w.block(n, b)?;
                    }
                }
                Kind::Dir => queue.push_back(c),
                _ => {}
            }
        }
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
