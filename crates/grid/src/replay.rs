//! The replay cache: every accepted request signature is remembered while its timestamp is still
//! inside the accepted window, so a captured request cannot be sent a second time.
//!
//! A signature with timestamp `ts` can only pass the window check while `now - ts <= MAX_SKEW_SECS`,
//! so it is kept until `ts + MAX_SKEW_SECS` and forgotten after. The cache holds at most
//! `capacity` signatures; when it is full of live entries it refuses new requests rather than
//! forgetting a live one (which would let that request be replayed).

use std::collections::{BTreeMap, HashMap};

use zos_types::Signature;
use zos_types::auth::MAX_SKEW_SECS;

/// Default number of signatures the cache can hold.
pub const DEFAULT_CAPACITY: usize = 500_000;

/// Why the replay cache refused a signature.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ReplayError {
    #[error("signature already seen")]
    Replay,
    #[error("replay cache is full ({0} live signatures)")]
    Full(usize),
}

/// Signatures seen inside the window, with their expiry time.
#[derive(Debug)]
pub struct ReplayCache {
    capacity: usize,
    seen: HashMap<[u8; 64], i64>,
    by_expiry: BTreeMap<i64, Vec<[u8; 64]>>,
}

impl ReplayCache {
    pub fn new(capacity: usize) -> Self {
        Self {
            capacity,
            seen: HashMap::new(),
            by_expiry: BTreeMap::new(),
        }
    }

    /// Number of signatures held.
    pub fn len(&self) -> usize {
        self.seen.len()
    }

    pub fn is_empty(&self) -> bool {
        self.seen.is_empty()
    }

    /// Records `signature` (of a request stamped `timestamp`) at time `now`, or refuses it when
    /// it was recorded before or the cache is full.
    pub fn check_and_insert(
        &mut self,
        signature: &Signature,
        timestamp: i64,
        now: i64,
    ) -> Result<(), ReplayError> {
        self.prune(now);
        if self.seen.contains_key(&signature.0) {
            return Err(ReplayError::Replay);
        }
        if self.seen.len() >= self.capacity {
            return Err(ReplayError::Full(self.seen.len()));
        }
        let expiry = timestamp.saturating_add(MAX_SKEW_SECS);
        self.seen.insert(signature.0, expiry);
        self.by_expiry.entry(expiry).or_default().push(signature.0);
        Ok(())
    }

    /// Forgets signatures whose timestamp has left the window at `now`.
    pub fn prune(&mut self, now: i64) {
        while let Some(entry) = self.by_expiry.first_entry() {
            if *entry.key() >= now {
                break;
            }
            for sig in entry.remove() {
                self.seen.remove(&sig);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sig(n: u8) -> Signature {
        Signature([n; 64])
    }

    #[test]
    fn a_signature_is_accepted_once() {
        let mut c = ReplayCache::new(10);
        c.check_and_insert(&sig(1), 1000, 1000).unwrap();
        assert_eq!(
            c.check_and_insert(&sig(1), 1000, 1001),
            Err(ReplayError::Replay)
        );
        c.check_and_insert(&sig(2), 1000, 1001).unwrap();
        assert_eq!(c.len(), 2);
    }

    #[test]
    fn signatures_are_kept_exactly_while_their_timestamp_is_in_the_window() {
        let mut c = ReplayCache::new(10);
        c.check_and_insert(&sig(1), 1000, 1000).unwrap();
        // At 1060 the timestamp 1000 still passes the window check: it must still be refused.
        assert_eq!(
            c.check_and_insert(&sig(1), 1000, 1000 + MAX_SKEW_SECS),
            Err(ReplayError::Replay)
        );
        // One second later the window check refuses it anyway, so the cache may forget it.
        c.prune(1001 + MAX_SKEW_SECS);
        assert!(c.is_empty());
        // A future-dated request is kept until its own timestamp leaves the window.
        c.check_and_insert(&sig(2), 1100, 1050).unwrap();
        c.prune(1100 + MAX_SKEW_SECS);
        assert_eq!(c.len(), 1);
        c.prune(1101 + MAX_SKEW_SECS);
        assert!(c.is_empty());
    }

    #[test]
    fn a_full_cache_refuses_instead_of_forgetting_live_signatures() {
        let mut c = ReplayCache::new(3);
        for n in 0..3 {
            c.check_and_insert(&sig(n), 1000 + i64::from(n), 1000)
                .unwrap();
        }
        assert_eq!(
            c.check_and_insert(&sig(9), 1000, 1000),
            Err(ReplayError::Full(3))
        );
        // Every stored signature is still refused as a replay.
        for n in 0..3 {
            assert_eq!(
                c.check_and_insert(&sig(n), 1000, 1000),
                Err(ReplayError::Replay)
            );
        }
        // Once the oldest leaves the window there is room again.
        c.check_and_insert(&sig(9), 1061, 1061).unwrap();
        assert_eq!(c.len(), 3);
        assert_eq!(
            c.check_and_insert(&sig(1), 1001, 1061),
            Err(ReplayError::Replay)
        );
    }

    #[test]
    fn pruning_many_entries_empties_both_indexes() {
        let mut c = ReplayCache::new(100_000);
        for i in 0..10_000u32 {
            let mut s = [0u8; 64];
            s[..4].copy_from_slice(&i.to_le_bytes());
            c.check_and_insert(&Signature(s), 1000 + i64::from(i % 50), 1000)
                .unwrap();
        }
        assert_eq!(c.len(), 10_000);
        c.prune(1025 + MAX_SKEW_SECS);
        assert_eq!(c.len(), 10_000 / 50 * 25);
        c.prune(2000);
        assert!(c.is_empty());
        assert!(c.by_expiry.is_empty());
    }
}
