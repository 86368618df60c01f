//! zosd, the zos node agent: one process, one module per subsystem.

pub mod storage;
