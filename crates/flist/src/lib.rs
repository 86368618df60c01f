//! Flists in the rfs "FL" format, so flists made by the original tooling mount here and flists
//! made here mount there.
//!
//! - [`meta`]: the SQLite metadata file, its writer and its validating reader.
//! - [`block`]: 512 KiB blocks, convergently encrypted, verified on every read.
//! - [`store`]: block stores (local directory, hub over HTTP, S3) and the router by first id byte.
//! - [`pack`]: a directory tree or tarball into a flist, uploading only missing blocks.
//! - [`convert`]: a legacy `.flist` and its blocks into an FL flist.
//! - [`cache`]: the node's verified, bounded, crash-safe block cache.
//! - [`mount`]: the read-only FUSE mount and the writable overlay; [`serve`] runs one as a
//!   process (binary `zos-flist-mount`).
//! - [`legacy`]: the older 0-fs `.flist` format (tar.gz, SQLite, Cap'n Proto), read into the
//!   same model.
//! - [`inspect`]: what a flist holds, for printing or JSON.
//! - [`hub`]: the hub's flist API (wire types, names, client, verified downloads).
//!
//! See `docs/flist.md` for the format and the design.

pub mod block;
pub mod cache;
pub mod convert;
pub mod hub;
pub mod inspect;
pub mod legacy;
pub mod meta;
pub mod mount;
pub mod pack;
pub mod serve;
pub mod store;

pub use block::{BLOCK_SIZE, BlockError, BlockId, BlockKey, BlockRef};
pub use cache::{BlockCache, CacheError};
pub use convert::{ConvertError, convert};
pub use inspect::{Inspection, inspect};
pub use meta::{Attrs, Flist, Format, FormatError, Ino, Kind, Node, Route, Writer};
pub use mount::{MountError, MountHandle, MountOptions, WritableMount, mount, mount_writable};
pub use pack::{PackError, PackOptions, Progress, Source, pack};
pub use store::{BlockStore, DirStore, HttpStore, Router, S3Store, StoreError};
