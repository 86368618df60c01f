//! Loop-device disks for test hosts.
