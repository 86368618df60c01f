//! Rules shared by the real implementation and the fake: names, labels, sizes, placement, cache.

use zos_types::capacity::{MAX_DISK, MIB};

use super::{CachePolicy, DiskKind, PoolInfo, StorageError};

/// Smallest volume or virtual disk.
pub const MIN_SIZE: u64 = MIB;
/// Largest volume or virtual disk.
pub const MAX_SIZE: u64 = MAX_DISK;

/// Checks a volume, virtual disk or zdb name: 1 to 128 of `a-z A-Z 0-9 . _ - :`, not starting
/// with `.` or `-`. Such a name is one path component and cannot climb out of its directory.
pub fn validate_name(name: &str) -> Result<(), StorageError> {
    let ok = !name.is_empty()
        && name.len() <= 128
        && !name.starts_with(['.', '-'])
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-' | b':'));
    if ok {
        Ok(())
    } else {
        Err(StorageError::InvalidName(name.to_string()))
    }
}

/// Checks the size of a volume or virtual disk.
pub(crate) fn validate_size(what: &'static str, name: &str, size: u64) -> Result<(), StorageError> {
    if (MIN_SIZE..=MAX_SIZE).contains(&size) {
        Ok(())
    } else {
        Err(StorageError::InvalidSize {
            what,
            name: name.to_string(),
            size,
        })
    }
}

/// The label of a new pool: `<prefix>zos-<16 hex digits>`.
pub fn pool_label(prefix: &str, random: u64) -> String {
    format!("{prefix}zos-{random:016x}")
}

/// True when `label` is exactly a pool label of the node with `prefix`. Labels of other
/// prefixes never match (`zos-` does not own `n1-zos-…`, and `n1-` does not own `zos-…`).
pub fn owns_label(prefix: &str, label: &str) -> bool {
    label
        .strip_prefix(prefix)
        .and_then(|rest| rest.strip_prefix("zos-"))
        .is_some_and(|hex| {
            hex.len() == 16
                && hex
                    .bytes()
                    .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        })
}

/// True when `label` looks like any zos pool label (ours or another node's).
pub(crate) fn is_zos_label(label: &str) -> bool {
    label
        .rfind("zos-")
        .is_some_and(|i| owns_label(&label[..i], label))
}

/// The index of the pool of `kind` with the most free space that still fits `needed` bytes.
pub fn pick_pool(pools: &[PoolInfo], kind: DiskKind, needed: u64) -> Option<usize> {
    pools
        .iter()
        .enumerate()
        .filter(|(_, p)| p.kind == kind && p.free() >= needed)
        .max_by(|(ia, a), (ib, b)| a.free().cmp(&b.free()).then(ib.cmp(ia)))
        .map(|(i, _)| i)
}

/// The error when nothing fits.
pub(crate) fn no_space(
    what: String,
    pools: &[PoolInfo],
    kind: DiskKind,
    needed: u64,
) -> StorageError {
    StorageError::NoSpace {
        what,
        kind,
        needed,
        most_free: pools
            .iter()
            .filter(|p| p.kind == kind)
            .map(PoolInfo::free)
            .max()
            .unwrap_or(0),
    }
}

/// The cache quota after one look at its usage: at 60 % or more it grows by a step; under 20 %
/// it shrinks to twice the usage rounded up to a step; never under the minimum.
pub fn next_cache_quota(quota: u64, used: u64, policy: &CachePolicy) -> u64 {
    let step = policy.step.max(1);
    let next = if used.saturating_mul(10) >= quota.saturating_mul(6) {
        quota.saturating_add(step)
    } else if used.saturating_mul(10) < quota.saturating_mul(2) {
        used.saturating_mul(2).div_ceil(step).saturating_mul(step)
    } else {
        quota
    };
    next.max(policy.min)
}

#[cfg(test)]
mod tests {
    use super::*;
    use zos_types::capacity::GIB;

    #[test]
    fn names() {
        for good in ["a", "vol1", "rootfs:12-3", "A.b_c-d", &"x".repeat(128)] {
            validate_name(good).unwrap();
        }
        for bad in [
            "",
            ".",
            "..",
            "../x",
            "a/b",
            "-rf",
            ".hidden",
            "a b",
            "a\0b",
            "é",
            &"x".repeat(129),
        ] {
            assert!(
                matches!(validate_name(bad), Err(StorageError::InvalidName(_))),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn sizes() {
        validate_size("volume", "v", MIB).unwrap();
        assert!(validate_size("volume", "v", MIB - 1).is_err());
        assert!(validate_size("volume", "v", 0).is_err());
        assert!(validate_size("volume", "v", u64::MAX).is_err());
    }

    #[test]
    fn labels_belong_to_one_prefix() {
        let a = pool_label("", 0xdead_beef);
        assert_eq!(a, "zos-00000000deadbeef");
        let b = pool_label("n1-", 1);
        assert!(owns_label("", &a));
        assert!(!owns_label("", &b));
        assert!(owns_label("n1-", &b));
        assert!(!owns_label("n1-", &a));
        assert!(!owns_label("n1", &b));
        assert!(!owns_label("zos-", &pool_label("", 5)));
        assert!(!owns_label("", "zos-zos-0000000000000001"));
        assert!(!owns_label("", "zos-00000000DEADBEEF"));
        assert!(!owns_label("", "zos-0000000000000000x"));
        assert!(is_zos_label(&a) && is_zos_label(&b));
        assert!(!is_zos_label("data") && !is_zos_label("zos-1"));
    }

    fn pool(name: &str, kind: DiskKind, size: u64, used: u64) -> PoolInfo {
        PoolInfo {
            name: name.into(),
            kind,
            device: "/dev/x".into(),
            path: "/x".into(),
            size,
            used,
            system: 0,
        }
    }

    #[test]
    fn placement_takes_most_free_of_the_kind() {
        let pools = [
            pool("a", DiskKind::Ssd, 100, 50),
            pool("b", DiskKind::Ssd, 100, 20),
            pool("h", DiskKind::Hdd, 1000, 0),
        ];
        assert_eq!(pick_pool(&pools, DiskKind::Ssd, 10), Some(1));
        assert_eq!(pick_pool(&pools, DiskKind::Ssd, 80), Some(1));
        assert_eq!(pick_pool(&pools, DiskKind::Ssd, 81), None);
        assert_eq!(pick_pool(&pools, DiskKind::Hdd, 1000), Some(2));
        // Ties go to the first pool.
        let tie = [
            pool("a", DiskKind::Ssd, 10, 0),
            pool("b", DiskKind::Ssd, 10, 0),
        ];
        assert_eq!(pick_pool(&tie, DiskKind::Ssd, 1), Some(0));
        let err = no_space("volume \"v\"".into(), &pools, DiskKind::Ssd, 81);
        assert_eq!(
            err.to_string(),
            "no ssd pool has 81 bytes free for volume \"v\" (most free: 80)"
        );
    }

    #[test]
    fn cache_quota_follows_usage() {
        let p = CachePolicy {
            initial: 5 * GIB,
            step: 5 * GIB,
            min: 5 * GIB,
        };
        // 60 % or more: one step more.
        assert_eq!(next_cache_quota(5 * GIB, 3 * GIB, &p), 10 * GIB);
        // Between 20 % and 60 %: unchanged.
        assert_eq!(next_cache_quota(10 * GIB, 3 * GIB, &p), 10 * GIB);
        // Under 20 %: twice the use, rounded up to a step.
        assert_eq!(next_cache_quota(50 * GIB, 6 * GIB, &p), 15 * GIB);
        // Never under the minimum.
        assert_eq!(next_cache_quota(50 * GIB, 0, &p), 5 * GIB);
        assert_eq!(next_cache_quota(5 * GIB, 0, &p), 5 * GIB);
    }
}
