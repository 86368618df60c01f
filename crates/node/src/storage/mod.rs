//! Storage: pools on every disk, the cache, volumes and virtual disks.
