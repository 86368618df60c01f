//! Test infrastructure: test hosts in network namespaces, loop disks, processes with cleanup,
//! wait helpers and the devnet harness.

pub mod disk;
