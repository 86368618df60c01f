//! Bounded, fair memories of what was already accepted: the registry's replay cache of request
//! signatures, and (through the same [`FairWindow`]) the relay's set of envelope ids.
//!
//! A signature with timestamp `ts` can only pass the window check while `now - ts <=
//! MAX_SKEW_SECS`, so it is kept until `ts + MAX_SKEW_SECS` and forgotten after. Only requests
//! whose signer is known and whose signature was verified for that signer are recorded, and they
//! are recorded in the share of that signer:
//!
//! - each twin holds at most `per_twin` signatures; one more is refused (429) until its oldest
//!   leaves the window: a twin that floods only slows itself;
//! - all twins together hold at most `capacity`. When that is reached a newcomer takes the place
//!   of the oldest entry of the twin holding the most (if that twin holds more than the newcomer
//!   would). Forgetting a live signature would let it be replayed, so the twin that lost it gets a
//!   *floor*: its requests stamped at or before the forgotten one are refused as stale (429, sign
//!   again). Only when `capacity` distinct twins hold one entry each is a request refused for
//!   lack of room (503);
//! - requests signed by a bare key (`key=`, only twin creation takes them) go to their own pool of
//!   `bare_keys` entries, which can fill up (503 for twin creation) but never takes room from twins.
//!
//! Entries are keyed by the first 16 bytes of the signature (its `R` part, unique per key and
//! message): a collision can only refuse a request, never let a replay through, and needs the
//! victim's secret to aim. Memory is about 150 bytes per entry (measured: 500 000 entries of
//! 5 000 twins took 71 MiB), for `capacity + bare_keys` entries in all.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::hash::Hash;

use zos_types::auth::MAX_SKEW_SECS;
use zos_types::{Signature, TwinId};

/// Default number of signatures all twins hold at most.
pub const DEFAULT_CAPACITY: usize = 500_000;
/// Default number of signatures one twin holds at most (inside the window of
/// [`MAX_SKEW_SECS`] on either side of now).
pub const DEFAULT_PER_TWIN: usize = 10_000;
/// Default number of bare-key (twin creation) signatures held at most.
pub const DEFAULT_BARE_KEYS: usize = 10_000;

/// Sizes of the replay cache.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReplayConfig {
    /// Signatures of all twins together.
    pub capacity: usize,
    /// Signatures of one twin.
    pub per_twin: usize,
    /// Signatures of bare keys (twin creation), in their own pool.
    pub bare_keys: usize,
}

impl Default for ReplayConfig {
    fn default() -> Self {
        Self {
            capacity: DEFAULT_CAPACITY,
            per_twin: DEFAULT_PER_TWIN,
            bare_keys: DEFAULT_BARE_KEYS,
        }
    }
}

/// Why a [`FairWindow`] refused an entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("already seen")]
    Seen,
    #[error("its owner already holds {held} live entries, its share")]
    OwnerFull {
        held: usize,
        /// Seconds until the owner's oldest entry is forgotten.
        retry_after: u64,
    },
    #[error("stamped at or before {floor}, older than entries of its owner forgotten to make room")]
    Stale { floor: i64 },
    #[error("full: {0} owners hold one live entry each")]
    Full(usize),
}

/// Limits of a [`FairWindow`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WindowLimits {
    /// Entries of all owners together.
    pub capacity: usize,
    /// Entries of one owner.
    pub per_owner: usize,
}

/// One owner's entries, oldest first, and the order at or below which it is refused.
#[derive(Debug)]
struct Share<K> {
    by_order: BTreeSet<(i64, K)>,
    floor: Option<i64>,
}

/// Keys seen, each with an order (a timestamp) and an owner, kept until `order + keep_for`;
/// bounded per owner and in all, shared fairly (see the module header).
///
/// An entry is found by its order and key together: a request can only be sent again with the
/// same order (its signature covers both), so a replay always finds its entry.
#[derive(Debug)]
pub struct FairWindow<O, K> {
    limits: WindowLimits,
    keep_for: i64,
    /// Every entry, oldest first, with its owner.
    entries: BTreeMap<(i64, K), O>,
    owners: HashMap<O, Share<K>>,
    by_size: BTreeSet<(usize, O)>,
}

impl<O, K> FairWindow<O, K>
where
    O: Copy + Ord + Hash,
    K: Copy + Ord + Hash,
{
    /// A window whose entries live until `order + keep_for`.
    pub fn new(limits: WindowLimits, keep_for: i64) -> Self {
        Self {
            limits,
            keep_for,
            entries: BTreeMap::new(),
            owners: HashMap::new(),
            by_size: BTreeSet::new(),
        }
    }

    /// Number of entries held.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Number of entries `owner` holds.
    pub fn held_by(&self, owner: O) -> usize {
        self.owners.get(&owner).map_or(0, |s| s.by_order.len())
    }

    /// Records `key` of `owner` (ordered at `order`) at time `now`, or says why not.
    pub fn admit(&mut self, owner: O, key: K, order: i64, now: i64) -> Result<(), Refusal> {
        self.prune(now);
        if self.entries.contains_key(&(order, key)) {
            return Err(Refusal::Seen);
        }
        let held = self.held_by(owner);
        if let Some(floor) = self.owners.get(&owner).and_then(|s| s.floor)
            && order <= floor
        {
            return Err(Refusal::Stale { floor });
        }
        if held >= self.limits.per_owner {
            return Err(self.owner_full(owner, now));
        }
        if self.entries.len() >= self.limits.capacity {
            self.make_room(owner, held, now)?;
        }
        self.entries.insert((order, key), owner);
        let share = self.owners.entry(owner).or_insert_with(|| Share {
            by_order: BTreeSet::new(),
            floor: None,
        });
        share.by_order.insert((order, key));
        self.by_size.remove(&(held, owner));
        self.by_size.insert((held + 1, owner));
        Ok(())
    }

    fn owner_full(&self, owner: O, now: i64) -> Refusal {
        let share = self.owners.get(&owner);
        let oldest = share
            .and_then(|s| s.by_order.first())
            .map_or(now, |(o, _)| *o);
        Refusal::OwnerFull {
            held: share.map_or(0, |s| s.by_order.len()),
            retry_after: (oldest + self.keep_for - now + 1).max(1) as u64,
        }
    }

    /// Forgets the oldest entry of the owner holding the most, if it holds more than `owner`
    /// would after this entry.
    fn make_room(&mut self, owner: O, held: usize, now: i64) -> Result<(), Refusal> {
        let victim = self
            .by_size
            .iter()
            .rev()
            .find(|(_, o)| *o != owner)
            .copied()
            .filter(|(size, _)| *size > held + 1);
        let Some((size, victim)) = victim else {
            return Err(if held == 0 {
                Refusal::Full(self.owners.len())
            } else {
                self.owner_full(owner, now)
            });
        };
        let share = self.owners.get_mut(&victim).expect("sizes follow shares");
        let (order, key) = share.by_order.pop_first().expect("a victim holds entries");
        share.floor = Some(share.floor.map_or(order, |f| f.max(order)));
        self.entries.remove(&(order, key));
        self.by_size.remove(&(size, victim));
        self.by_size.insert((size - 1, victim));
        Ok(())
    }

    /// Forgets `key` recorded at `order` (a request that could not go through).
    pub fn forget(&mut self, key: K, order: i64) {
        if let Some(owner) = self.entries.remove(&(order, key)) {
            self.drop_from_share(owner, order, key);
        }
    }

    /// Forgets the entries whose order is older than `now - keep_for`.
    pub fn prune(&mut self, now: i64) {
        while let Some(entry) = self.entries.first_entry() {
            let (order, key) = *entry.key();
            if order.saturating_add(self.keep_for) >= now {
                break;
            }
            let owner = entry.remove();
            self.drop_from_share(owner, order, key);
        }
    }

    fn drop_from_share(&mut self, owner: O, order: i64, key: K) {
        let Some(share) = self.owners.get_mut(&owner) else {
            return;
        };
        let size = share.by_order.len();
        share.by_order.remove(&(order, key));
        self.by_size.remove(&(size, owner));
        if share.by_order.is_empty() {
            // Its floor is older than every entry it held: the window check refuses it now.
            self.owners.remove(&owner);
        } else {
            self.by_size.insert((size - 1, owner));
        }
    }
}

/// The key of a signature in the cache: its first 16 bytes.
fn signature_key(signature: &Signature) -> u128 {
    let mut head = [0u8; 16];
    head.copy_from_slice(&signature.0[..16]);
    u128::from_le_bytes(head)
}

/// The registry's replay cache: twins' signatures in fair shares, bare keys' in their own pool.
#[derive(Debug)]
pub struct ReplayCache {
    twins: FairWindow<TwinId, u128>,
    bare_keys: FairWindow<(), u128>,
}

impl ReplayCache {
    pub fn new(config: ReplayConfig) -> Self {
        let twins = WindowLimits {
            capacity: config.capacity,
            per_owner: config.per_twin,
        };
        let bare = WindowLimits {
            capacity: config.bare_keys,
            per_owner: config.bare_keys,
        };
        Self {
            twins: FairWindow::new(twins, MAX_SKEW_SECS),
            bare_keys: FairWindow::new(bare, MAX_SKEW_SECS),
        }
    }

    /// Signatures held, of twins and bare keys.
    pub fn len(&self) -> usize {
        self.twins.len() + self.bare_keys.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Records a verified signature of `twin` on a request stamped `timestamp`.
    pub fn admit_twin(
        &mut self,
        twin: TwinId,
        signature: &Signature,
        timestamp: i64,
        now: i64,
    ) -> Result<(), Refusal> {
        self.twins
            .admit(twin, signature_key(signature), timestamp, now)
    }

    /// Records a verified signature of a bare key on a request stamped `timestamp`.
    pub fn admit_bare_key(
        &mut self,
        signature: &Signature,
        timestamp: i64,
        now: i64,
    ) -> Result<(), Refusal> {
        self.bare_keys
            .admit((), signature_key(signature), timestamp, now)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sig(n: u8) -> Signature {
        Signature([n; 64])
    }

    fn window(capacity: usize, per_owner: usize) -> FairWindow<u32, u32> {
        FairWindow::new(
            WindowLimits {
                capacity,
                per_owner,
            },
            MAX_SKEW_SECS,
        )
    }

    #[test]
    fn a_signature_is_accepted_once() {
        let mut c = ReplayCache::new(ReplayConfig::default());
        c.admit_twin(1, &sig(1), 1000, 1000).unwrap();
        assert_eq!(c.admit_twin(1, &sig(1), 1000, 1001), Err(Refusal::Seen));
        assert_eq!(c.admit_twin(2, &sig(1), 1000, 1001), Err(Refusal::Seen));
        // The same key under another order is another request (its signature would differ).
        c.admit_twin(1, &sig(1), 1001, 1001).unwrap();
        c.admit_twin(1, &sig(2), 1000, 1001).unwrap();
        c.admit_bare_key(&sig(3), 1000, 1001).unwrap();
        assert_eq!(c.admit_bare_key(&sig(3), 1000, 1001), Err(Refusal::Seen));
        assert_eq!(c.len(), 4);
    }

    #[test]
    fn entries_are_kept_exactly_while_their_timestamp_is_in_the_window() {
        let mut w = window(10, 10);
        w.admit(1, 1, 1000, 1000).unwrap();
        // At 1060 the timestamp 1000 still passes the window check: it must still be refused.
        assert_eq!(
            w.admit(1, 1, 1000, 1000 + MAX_SKEW_SECS),
            Err(Refusal::Seen)
        );
        // One second later the window check refuses it anyway, so the window may forget it.
        w.prune(1001 + MAX_SKEW_SECS);
        assert!(w.is_empty());
        assert!(w.owners.is_empty() && w.by_size.is_empty());
        // A future-dated entry is kept until its own timestamp leaves the window.
        w.admit(1, 2, 1100, 1050).unwrap();
        w.prune(1100 + MAX_SKEW_SECS);
        assert_eq!(w.len(), 1);
        w.prune(1101 + MAX_SKEW_SECS);
        assert!(w.is_empty());
    }

    #[test]
    fn an_owner_over_its_share_is_refused_and_told_when_to_retry() {
        let mut w = window(100, 3);
        for k in 0..3 {
            w.admit(7, k, 1000 + i64::from(k), 1000).unwrap();
        }
        assert_eq!(
            w.admit(7, 9, 1010, 1010),
            Err(Refusal::OwnerFull {
                held: 3,
                retry_after: 51
            })
        );
        // Others are not affected.
        w.admit(8, 9, 1010, 1010).unwrap();
        // Once its oldest leaves the window there is room again.
        w.admit(7, 10, 1061, 1061).unwrap();
        assert_eq!(w.held_by(7), 3);
    }

    #[test]
    fn a_full_window_takes_room_from_the_largest_owner_and_refuses_its_older_entries() {
        let mut w = window(4, 10);
        for k in 0..4 {
            w.admit(1, k, 1000 + i64::from(k), 1004).unwrap();
        }
        // A newcomer takes the place of owner 1's oldest (order 1000).
        w.admit(2, 10, 1004, 1004).unwrap();
        assert_eq!((w.held_by(1), w.held_by(2), w.len()), (3, 1, 4));
        // The forgotten key cannot come back: owner 1's floor is 1000.
        assert_eq!(
            w.admit(1, 0, 1000, 1005),
            Err(Refusal::Stale { floor: 1000 })
        );
        // Owner 1 now holds its fair share: another entry of its own is refused, not evicting.
        w.admit(2, 11, 1005, 1005).unwrap();
        assert_eq!((w.held_by(1), w.held_by(2)), (2, 2));
        assert!(matches!(
            w.admit(2, 12, 1005, 1005),
            Err(Refusal::OwnerFull { held: 2, .. })
        ));
        // A third owner still gets in.
        w.admit(3, 20, 1005, 1005).unwrap();
        assert_eq!(w.len(), 4);
    }

    #[test]
    fn a_window_of_single_entries_refuses_for_lack_of_room() {
        let mut w = window(2, 10);
        w.admit(1, 1, 1000, 1000).unwrap();
        w.admit(2, 2, 1000, 1000).unwrap();
        assert_eq!(w.admit(3, 3, 1000, 1000), Err(Refusal::Full(2)));
        w.forget(2, 1000);
        w.admit(3, 3, 1000, 1000).unwrap();
        assert_eq!(w.len(), 2);
    }

    #[test]
    fn pruning_many_entries_empties_every_index() {
        let mut w = window(100_000, 100_000);
        for i in 0..10_000u32 {
            w.admit(i % 7, i, 1000 + i64::from(i % 50), 1000).unwrap();
        }
        assert_eq!(w.len(), 10_000);
        w.prune(1025 + MAX_SKEW_SECS);
        assert_eq!(w.len(), 10_000 / 50 * 25);
        w.prune(2000);
        assert!(w.is_empty());
        assert!(w.entries.is_empty() && w.owners.is_empty() && w.by_size.is_empty());
    }
}
