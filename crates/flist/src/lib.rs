//! Flists in the rfs "FL" format, so flists made by the original tooling mount here and flists
//! made here mount there.
//!
//! - [`meta`]: the SQLite metadata file, its writer and its validating reader.
//! - [`block`]: 512 KiB blocks, convergently encrypted, verified on every read.
//!
//! See `docs/flist.md` for the format and the design.

pub mod block;
pub mod meta;

pub use block::{BLOCK_SIZE, BlockError, BlockId, BlockKey, BlockRef};
pub use meta::{Attrs, Flist, FormatError, Ino, Kind, Node, Route, Writer};
