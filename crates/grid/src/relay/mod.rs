//! The relay: routes sealed envelopes to the uplinks of nodes (see `zos_types::relay`).
//!
//! | method and path | who | what |
//! |---|---|---|
//! | `GET /api/v1/relay/uplink` (WebSocket) | any twin, signed `Authorization` on the upgrade | the twin's uplink: envelopes in both directions, its node's events |
//! | `POST /api/v1/relay/send` | anyone with an envelope signed by its source twin | forwards it to the destination's uplink and answers its reply |
//!
//! `send` answers 200 with the reply envelope; 400 malformed, expired or a reply; 401 a
//! signature that is not the source twin's; 404 destination not connected; 409 an envelope id
//! already sent; 413 larger than [`MAX_ENVELOPE_BYTES`]; 429 the source twin holds its share of
//! the seen set or of the waiting requests; 503 too many requests waiting for the
//! destination, or its uplink went away; 504 no reply before the envelope expired (at most
//! [`MAX_WAIT_SECS`]).
//!
//! The relay checks what it can without reading bodies: the envelope's signature against its
//! source twin's key, its expiry, its size, that its destination is connected, and that its id
//! was not seen before. Replies coming up an uplink must be signed by that uplink's twin and
//! answer a request sent to it. Events of a node's log are pushed as the store records them (the
//! store's [`EventHook`](crate::store::EventHook) wakes the uplink). When a release is published
//! or its rollout moves, every connected node is told ([`Relay::release_changed`]).
//!
//! No one party can fill the relay's state, which is bounded per party and in all
//! ([`RelayConfig`]):
//! - envelope ids are kept until they expire, and only for envelopes handed to a connected
//!   uplink (one to an absent twin keeps nothing). Each source twin has a share of the set
//!   (`max_seen_per_twin`, 429 beyond); when the whole set is full, a newcomer takes the place of
//!   the oldest id of the twin holding the most, as the registry's replay cache does
//!   ([`crate::replay::FairWindow`]);
//! - requests waiting for replies: per destination, per source, in all, and in bytes (503);
//! - a queue of envelopes per uplink (a node that does not read them loses its uplink);
//! - one uplink per twin: a new one replaces the old, which is closed; all are closed when the
//!   grid stops. Connections per IP address are bounded by the HTTP server ([`crate::server`]);
//! - twins' keys are cached only for twins that exist, at most [`MAX_CACHED_KEYS`].
//!
//! This module holds the relay's state and its rules ([`Relay`]); [`http`] holds the two routes
//! and the uplink sessions, which reach the registry through [`crate::state::AppState`].

pub mod http;

use std::collections::HashMap;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::sync::{Notify, mpsc, oneshot, watch};
use tokio_util::sync::CancellationToken;
use zos_types::envelope::Envelope;
use zos_types::release::RunMode;
use zos_types::{NodeId, PublicKey, TwinId};

use crate::error::ApiFailure;
use crate::replay::{FairWindow, Refusal, WindowLimits};

/// WebSocket close code the relay uses when a newer uplink of the same twin replaces one.
pub const CLOSE_REPLACED: u16 = 4000;
/// WebSocket close code the relay uses when an uplink does not keep up with its envelopes.
pub const CLOSE_TOO_SLOW: u16 = 4001;

/// The relay's limits and timers.
#[derive(Debug, Clone)]
pub struct RelayConfig {
    /// Envelopes queued for one uplink; one more closes the uplink (the node is too slow).
    pub uplink_queue: usize,
    /// Requests waiting for replies from one destination at once; more are refused with 503.
    pub max_waiting_per_twin: usize,
    /// Requests waiting for replies sent by one source twin at once; more are refused with 429.
    pub max_waiting_per_source: usize,
    /// Requests waiting for replies in all.
    pub max_waiting: usize,
    /// Bytes of the envelopes of all waiting requests (each is held until its reply comes).
    pub max_waiting_bytes: usize,
    /// Envelope ids remembered at most (each until it expires), shared fairly by source twins.
    pub max_seen: usize,
    /// Envelope ids of one source twin remembered at most; more are refused with 429.
    pub max_seen_per_twin: usize,
    /// How often the relay pings an uplink.
    pub ping_every: Duration,
    /// An uplink the relay heard nothing from (not even a pong) for this long is dropped.
    pub silence_limit: Duration,
    /// Longest one write to an uplink may take before the uplink is dropped.
    pub write_timeout: Duration,
}

impl Default for RelayConfig {
    fn default() -> Self {
        Self {
            uplink_queue: 64,
            max_waiting_per_twin: 128,
            max_waiting_per_source: 256,
            max_waiting: 16 * 1024,
            max_waiting_bytes: 256 * 1024 * 1024,
            max_seen: 1_000_000,
            max_seen_per_twin: 20_000,
            ping_every: Duration::from_secs(15),
            silence_limit: Duration::from_secs(45),
            write_timeout: Duration::from_secs(10),
        }
    }
}

/// One connected uplink.
#[derive(Debug)]
struct Link {
    /// Tells this connection from an older or newer one of the same twin.
    conn: u64,
    /// Requests for the node, written by its session in order.
    tx: mpsc::Sender<Envelope>,
    /// Woken when the node's event log grew.
    events: Arc<Notify>,
    /// Cancelled to close the uplink (replaced, too slow).
    close: CancellationToken,
    /// The node whose twin holds the uplink, if the twin is a node.
    node: Option<NodeId>,
}

/// A sender waiting for a reply.
#[derive(Debug)]
struct Waiter {
    source: TwinId,
    dest: TwinId,
    /// Size of the request envelope (JSON bytes).
    bytes: usize,
    tx: oneshot::Sender<Envelope>,
}

/// Requests waiting for replies, by envelope id, with a count per destination and per source.
#[derive(Debug, Default)]
struct Waiting {
    by_id: HashMap<String, Waiter>,
    per_twin: HashMap<TwinId, usize>,
    per_source: HashMap<TwinId, usize>,
    bytes: usize,
}

fn count_down(counts: &mut HashMap<TwinId, usize>, twin: TwinId) {
    if let Some(n) = counts.get_mut(&twin) {
        *n -= 1;
        if *n == 0 {
            counts.remove(&twin);
        }
    }
}

impl Waiting {
    fn insert(&mut self, id: &str, w: Waiter, cfg: &RelayConfig) -> Result<(), ApiFailure> {
        let (dest, source) = (w.dest, w.source);
        if self.by_id.contains_key(id) {
            return Err(ApiFailure::Conflict(format!(
                "envelope {id} is already waiting for its reply: a new request needs a new id"
            )));
        }
        let count = self.per_twin.get(&dest).copied().unwrap_or(0);
        if count >= cfg.max_waiting_per_twin {
            return Err(ApiFailure::Unavailable(format!(
                "twin {dest} already has {count} requests waiting: try again later"
            )));
        }
        let sent = self.per_source.get(&source).copied().unwrap_or(0);
        if sent >= cfg.max_waiting_per_source {
            return Err(ApiFailure::TooManyRequests {
                message: format!(
                    "twin {source} already waits for {sent} replies, its share: wait for some before sending more"
                ),
                retry_after: 1,
            });
        }
        if self.by_id.len() >= cfg.max_waiting || self.bytes + w.bytes > cfg.max_waiting_bytes {
            return Err(ApiFailure::Unavailable(
                "the relay has too many requests waiting: try again later".into(),
            ));
        }
        self.bytes += w.bytes;
        self.by_id.insert(id.to_string(), w);
        *self.per_twin.entry(dest).or_default() += 1;
        *self.per_source.entry(source).or_default() += 1;
        Ok(())
    }

    fn remove(&mut self, id: &str) -> Option<Waiter> {
        let w = self.by_id.remove(id)?;
        self.bytes -= w.bytes;
        count_down(&mut self.per_twin, w.dest);
        count_down(&mut self.per_source, w.source);
        Some(w)
    }

    /// Fails every request waiting for `dest` (their senders answer 503 at once).
    fn drop_for(&mut self, dest: TwinId) -> usize {
        let ids: Vec<String> = self
            .by_id
            .iter()
            .filter(|(_, w)| w.dest == dest)
            .map(|(id, _)| id.clone())
            .collect();
        for id in &ids {
            self.remove(id);
        }
        ids.len()
    }
}

/// Envelope ids seen, each kept until its envelope expires, in shares of their source twins.
type SeenIds = FairWindow<TwinId, u128>;

fn seen_ids(cfg: &RelayConfig) -> SeenIds {
    let limits = WindowLimits {
        capacity: cfg.max_seen,
        per_owner: cfg.max_seen_per_twin,
    };
    FairWindow::new(limits, 0)
}

/// The relay's shared state.
#[derive(Debug)]
pub struct Relay {
    config: RelayConfig,
    links: Mutex<HashMap<TwinId, Link>>,
    waiting: Mutex<Waiting>,
    seen: Mutex<SeenIds>,
    /// Twins' public keys, which never change once registered.
    keys: Mutex<HashMap<TwinId, PublicKey>>,
    next_conn: AtomicU64,
    /// Cancelled when the grid shuts down: every uplink is closed.
    shutdown: CancellationToken,
    /// The last release notice: each node's session sends the newest one it has not sent.
    release: watch::Sender<Option<ReleaseNotice>>,
}

/// A release of a runmode was published or its rollout moved (see
/// [`UplinkFrame::Release`](zos_types::relay::UplinkFrame::Release)).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReleaseNotice {
    pub runmode: RunMode,
    pub version: String,
}

/// Twin keys the relay remembers at most (it forgets them all when full).
pub const MAX_CACHED_KEYS: usize = 100_000;

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // The guarded maps stay consistent across a panic (every change is one insert or remove).
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Relay {
    /// A relay with these limits.
    pub fn new(config: RelayConfig) -> Self {
        Self {
            seen: Mutex::new(seen_ids(&config)),
            config,
            links: Mutex::default(),
            waiting: Mutex::default(),
            keys: Mutex::default(),
            next_conn: AtomicU64::default(),
            shutdown: CancellationToken::new(),
            release: watch::channel(None).0,
        }
    }

    /// Tells every connected node that a release of `runmode` was published or its rollout
    /// moved. Notices coalesce: a session that is behind sends only the newest.
    pub fn release_changed(&self, runmode: RunMode, version: &str) {
        self.release.send_replace(Some(ReleaseNotice {
            runmode,
            version: version.to_string(),
        }));
    }

    /// Its limits.
    pub fn config(&self) -> &RelayConfig {
        &self.config
    }

    /// Closes every uplink (the grid is stopping; nodes reconnect to its next run) and refuses
    /// new ones.
    pub fn shut_down(&self) {
        self.shutdown.cancel();
    }

    /// Wakes the uplink of `node`, if connected, to send its new events.
    pub fn events_for(&self, node: NodeId) {
        for link in lock(&self.links).values().filter(|l| l.node == Some(node)) {
            link.events.notify_one();
        }
    }

    /// True when `twin` has an uplink.
    pub fn connected(&self, twin: TwinId) -> bool {
        lock(&self.links).contains_key(&twin)
    }

    /// How many requests wait for replies now.
    pub fn waiting(&self) -> usize {
        lock(&self.waiting).by_id.len()
    }

    /// How many envelope ids the relay remembers now.
    pub fn seen_ids(&self) -> usize {
        lock(&self.seen).len()
    }

    /// Records the id of `env` in its source's share of the seen set, or says why not.
    fn first_sight(&self, env: &Envelope, now: i64) -> Result<u128, ApiFailure> {
        let id = &env.id;
        // `Envelope::verify` checked the id is 32 hex digits.
        let raw = u128::from_str_radix(id, 16)
            .map_err(|_| ApiFailure::BadRequest("envelope id must be 32 hex digits".into()))?;
        let source = env.source;
        match lock(&self.seen).admit(source, raw, env.expiration, now) {
            Ok(()) => Ok(raw),
            Err(Refusal::Seen) => Err(ApiFailure::Conflict(format!(
                "envelope {id} was already sent: a new request needs a new id"
            ))),
            Err(Refusal::OwnerFull { held, retry_after }) => Err(ApiFailure::TooManyRequests {
                message: format!(
                    "twin {source} has {held} envelopes that have not expired yet, its share: \
                     send fewer, with shorter expirations, or try again in {retry_after} s"
                ),
                retry_after,
            }),
            Err(Refusal::Stale { floor }) => Err(ApiFailure::TooManyRequests {
                message: format!(
                    "twin {source} sent more envelopes than the relay can remember: envelopes \
                     expiring at or before {floor} are refused; send one expiring later"
                ),
                retry_after: 1,
            }),
            Err(e @ Refusal::Full(_)) => {
                tracing::warn!(error = %e, "relay seen set full: refusing an envelope");
                Err(ApiFailure::Unavailable(
                    "the relay is carrying too many envelopes: try again later".into(),
                ))
            }
        }
    }

    /// Queues `env` (of `bytes` JSON bytes) on its destination's uplink, records its id and
    /// registers its sender as waiting.
    fn forward(
        &self,
        env: Envelope,
        bytes: usize,
        now: i64,
    ) -> Result<oneshot::Receiver<Envelope>, ApiFailure> {
        let dest = env.destination;
        let links = lock(&self.links);
        let link = links.get(&dest).ok_or_else(|| {
            ApiFailure::NotFound(format!(
                "twin {dest} is not connected to the relay (node offline?)"
            ))
        })?;
        // Only an envelope handed to a connected uplink keeps a place in the seen set.
        let (raw, expiration) = (self.first_sight(&env, now)?, env.expiration);
        let (reply_tx, reply_rx) = oneshot::channel();
        let id = env.id.clone();
        let waiter = Waiter {
            source: env.source,
            dest,
            bytes,
            tx: reply_tx,
        };
        if let Err(e) = lock(&self.waiting).insert(&id, waiter, &self.config) {
            lock(&self.seen).forget(raw, expiration);
            return Err(e);
        }
        let undelivered = || {
            lock(&self.waiting).remove(&id);
            lock(&self.seen).forget(raw, expiration);
        };
        match link.tx.try_send(env) {
            Ok(()) => Ok(reply_rx),
            Err(mpsc::error::TrySendError::Full(_)) => {
                undelivered();
                tracing::warn!(
                    twin = dest,
                    queued = self.config.uplink_queue,
                    "uplink does not keep up with its envelopes: closing it"
                );
                link.close.cancel();
                Err(ApiFailure::Unavailable(format!(
                    "twin {dest} is not keeping up with its requests: try again later"
                )))
            }
            Err(mpsc::error::TrySendError::Closed(_)) => {
                undelivered();
                Err(ApiFailure::NotFound(format!(
                    "twin {dest} is not connected to the relay (node offline?)"
                )))
            }
        }
    }

    /// Hands a reply that came up the uplink of `from` (key `key`) to its waiting sender.
    fn deliver_reply(&self, from: TwinId, key: &PublicKey, env: Envelope, now: i64) {
        let Some(request) = env.reply_to.clone() else {
            tracing::debug!(twin = from, id = %env.id, "dropping an envelope from an uplink that answers nothing");
            return;
        };
        if env.source != from {
            tracing::warn!(
                twin = from,
                source = env.source,
                "dropping a reply whose source is not its uplink's twin"
            );
            return;
        }
        if let Err(e) = env.verify(key, now) {
            tracing::warn!(twin = from, error = %e, "dropping a reply");
            return;
        }
        let mut waiting = lock(&self.waiting);
        match waiting.by_id.get(&request) {
            None => {
                tracing::debug!(twin = from, request, "reply to a request nobody waits for");
            }
            Some(w) if w.dest != from || w.source != env.destination => {
                tracing::warn!(
                    twin = from,
                    request,
                    expected = w.dest,
                    "dropping a reply to a request sent to another twin"
                );
            }
            Some(_) => {
                let w = waiting.remove(&request).expect("the waiter is there");
                let _ = w.tx.send(env);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_seen_once_until_they_expire_and_the_set_is_bounded_per_source() {
        let cfg = RelayConfig {
            max_seen: 3,
            max_seen_per_twin: 2,
            ..RelayConfig::default()
        };
        let mut s = seen_ids(&cfg);
        assert_eq!(s.admit(1, 1, 100, 10), Ok(()));
        assert_eq!(s.admit(1, 1, 100, 50), Err(Refusal::Seen));
        assert_eq!(s.admit(1, 2, 200, 50), Ok(()));
        assert!(matches!(
            s.admit(1, 3, 200, 50),
            Err(Refusal::OwnerFull { .. })
        ));
        // Another source still has its share.
        assert_eq!(s.admit(2, 3, 200, 50), Ok(()));
        // Id 1 expired at 100: forgotten, which makes room.
        assert_eq!(s.admit(1, 4, 300, 101), Ok(()));
        assert_eq!(s.len(), 3);
    }

    #[test]
    fn waiting_is_bounded_per_twin_and_in_all() {
        let cfg = RelayConfig {
            max_waiting_per_twin: 2,
            max_waiting: 3,
            ..RelayConfig::default()
        };
        let mut w = Waiting::default();
        let waiter = |dest| Waiter {
            source: 1,
            dest,
            bytes: 10,
            tx: oneshot::channel().0,
        };
        w.insert("a", waiter(7), &cfg).unwrap();
        w.insert("b", waiter(7), &cfg).unwrap();
        assert!(matches!(
            w.insert("c", waiter(7), &cfg),
            Err(ApiFailure::Unavailable(_))
        ));
        w.insert("c", waiter(8), &cfg).unwrap();
        assert!(matches!(
            w.insert("d", waiter(9), &cfg),
            Err(ApiFailure::Unavailable(_))
        ));
        assert!(w.remove("a").is_some());
        assert!(w.remove("a").is_none());
        assert_eq!(w.per_twin[&7], 1);
        assert_eq!(w.drop_for(7), 1);
        assert!(!w.per_twin.contains_key(&7));
        assert_eq!(w.by_id.len(), 1);
        assert_eq!(w.bytes, 10);

        let cfg = RelayConfig {
            max_waiting_bytes: 25,
            ..RelayConfig::default()
        };
        let mut w = Waiting::default();
        w.insert("a", waiter(7), &cfg).unwrap();
        w.insert("b", waiter(8), &cfg).unwrap();
        assert!(w.insert("c", waiter(9), &cfg).is_err(), "30 bytes > 25");
        w.remove("a");
        w.insert("c", waiter(9), &cfg).unwrap();
    }

    #[test]
    fn waiting_is_bounded_per_source_and_an_id_waits_once() {
        let cfg = RelayConfig {
            max_waiting_per_source: 2,
            ..RelayConfig::default()
        };
        let mut w = Waiting::default();
        let waiter = |source, dest| Waiter {
            source,
            dest,
            bytes: 10,
            tx: oneshot::channel().0,
        };
        w.insert("a", waiter(1, 7), &cfg).unwrap();
        assert!(matches!(
            w.insert("a", waiter(2, 7), &cfg),
            Err(ApiFailure::Conflict(_))
        ));
        w.insert("b", waiter(1, 8), &cfg).unwrap();
        assert!(matches!(
            w.insert("c", waiter(1, 9), &cfg),
            Err(ApiFailure::TooManyRequests { .. })
        ));
        w.insert("c", waiter(2, 9), &cfg).unwrap();
        w.remove("a");
        w.insert("d", waiter(1, 9), &cfg).unwrap();
        assert_eq!(w.per_source[&1], 2);
        assert_eq!(w.drop_for(9), 2);
        assert_eq!(w.per_source[&1], 1);
        assert!(!w.per_source.contains_key(&2));
    }
}
