//! The node's one connection for commands: an outbound WebSocket to the relay.
//!
//! Requests arrive as envelopes. Each is checked (the sender's signature, expiry, an id not seen
//! before), opened (only this node can decrypt it), run by the [`NodeApi`], and answered with a
//! sealed reply. Contract events arrive on the same connection; the node asks for those after
//! the last one it handled whenever it connects, so none is lost while it is away. The
//! connection is remade with backoff whenever it drops.
//!
//! One twin must not be able to knock the node off the relay, so the read loop never awaits a
//! request: it keeps reading frames (and so answering the relay's pings) while requests run.
//! Each request gets a slot of a bounded [`RequestPool`] and runs in its own task; its reply
//! comes back to the loop through a channel and is written there. A twin holds at most
//! [`PoolLimits::per_twin`] slots, so one twin cannot take them all; a request that finds no
//! slot is answered at once with "busy, retry" instead of waiting in an unbounded queue. The
//! twin keys the checks need are cached in [`ClientView`], twins the grid does not know too
//! (for a while), both in bounded LRU caches, so a flood of unknown signers costs one grid
//! lookup each. A reply the relay would refuse (larger than `MAX_ENVELOPE_BYTES`) is replaced
//! by an error telling the sender to ask for less.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};
use zos_types::contract::NodeEvent;
use zos_types::envelope::{Envelope, MAX_ENVELOPE_BYTES, Reply, Seal};
use zos_types::node_api::{ErrorKind, NodeError};
use zos_types::relay::UplinkFrame;
use zos_types::{Identity, PublicKey, TwinId};

use crate::api::NodeApi;
use crate::client_view::ClientView;
use crate::registrar::Backoff;
use zos_net::Networker;
use zos_provision::Engine;
use zos_runtime::error_chain;
use zos_storage::Storage;

/// Key of the last handled event sequence number in the provision store.
const EVENT_SEQ: &str = "last_event_seq";
/// Busy answers looking their sender's key up at once, at most (the relay lets 256 requests of
/// one sender wait); past it a request of a twin whose key is not cached is dropped (the relay
/// answers its sender when it expires).
const BUSY_LOOKUPS: usize = 256;
/// Envelope ids remembered at most (each until it expires); past it requests get "busy".
pub const MAX_SEEN_IDS: usize = 100_000;

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Envelope ids seen recently, kept until they expire, so none is handled twice. Bounded:
/// expired ids are swept at most once a second, and a full set refuses new ids.
#[derive(Debug, Default)]
pub struct SeenIds {
    ids: HashMap<String, i64>,
    swept: i64,
}

impl SeenIds {
    /// `Ok(true)` the first time `id` (expiring at `expiration`) is offered, `Ok(false)` after;
    /// `Err(())` when [`MAX_SEEN_IDS`] unexpired ids are held already.
    #[allow(clippy::result_unit_err)]
    pub fn first(&mut self, id: &str, expiration: i64, now: i64) -> Result<bool, ()> {
        if now > self.swept || self.ids.len() >= MAX_SEEN_IDS {
            self.ids.retain(|_, exp| *exp >= now);
            self.swept = now;
        }
        if self.ids.contains_key(id) {
            return Ok(false);
        }
        if self.ids.len() >= MAX_SEEN_IDS {
            return Err(());
        }
        self.ids.insert(id.to_string(), expiration);
        Ok(true)
    }
}

/// How many requests run at once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PoolLimits {
    /// Requests running at once in all.
    pub total: usize,
    /// Requests one twin may have running at once.
    pub per_twin: usize,
}

impl Default for PoolLimits {
    fn default() -> Self {
        Self {
            total: 32,
            per_twin: 4,
        }
    }
}

/// Why a request got no slot.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Busy {
    #[error("the node is busy with {0} requests: retry in a few seconds")]
    Node(usize),
    #[error(
        "you have {0} requests running on this node already: wait for their answers, then retry"
    )]
    Twin(usize),
}

/// Slots for requests running at once, shared fairly between twins.
#[derive(Debug)]
pub struct RequestPool {
    limits: PoolLimits,
    slots: Arc<Semaphore>,
    per_twin: Arc<Mutex<HashMap<TwinId, usize>>>,
}

/// A taken slot, given back when dropped.
#[derive(Debug)]
pub struct Slot {
    twin: TwinId,
    per_twin: Arc<Mutex<HashMap<TwinId, usize>>>,
    _permit: OwnedSemaphorePermit,
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut m = lock(&self.per_twin);
        if let Some(n) = m.get_mut(&self.twin) {
            *n -= 1;
            if *n == 0 {
                m.remove(&self.twin);
            }
        }
    }
}

impl RequestPool {
    pub fn new(limits: PoolLimits) -> Self {
        Self {
            limits,
            slots: Arc::new(Semaphore::new(limits.total)),
            per_twin: Arc::default(),
        }
    }

    /// A slot for a request of `twin`, without waiting.
    pub fn try_take(&self, twin: TwinId) -> Result<Slot, Busy> {
        let mut m = lock(&self.per_twin);
        let n = m.entry(twin).or_insert(0);
        if *n >= self.limits.per_twin {
            return Err(Busy::Twin(*n));
        }
        let permit = self
            .slots
            .clone()
            .try_acquire_owned()
            .map_err(|_| Busy::Node(self.limits.total))?;
        *n += 1;
        Ok(Slot {
            twin,
            per_twin: self.per_twin.clone(),
            _permit: permit,
        })
    }

    /// Requests running now.
    pub fn running(&self) -> usize {
        self.limits.total - self.slots.available_permits()
    }
}

/// Everything the uplink needs.
pub struct Uplink<S, N> {
    pub grid_url: String,
    pub identity: Identity,
    pub twin: TwinId,
    pub api: Arc<NodeApi<S, N>>,
    pub engine: Arc<Engine>,
    pub view: Arc<ClientView>,
    /// Woken when the farmer changed this node's public config.
    pub public_config_changed: Arc<tokio::sync::Notify>,
    pub pool: PoolLimits,
    /// Told whether the uplink is connected (zos-init's health gate reads it).
    pub connected: tokio::sync::watch::Sender<bool>,
    /// This node's runmode: release notices of others are ignored.
    pub runmode: zos_types::release::RunMode,
    /// Woken when the grid tells of a release of this node's runmode (zos-init checks then).
    pub release_notice: Arc<tokio::sync::Notify>,
}

impl<S, N> std::fmt::Debug for Uplink<S, N> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Uplink")
            .field("grid", &self.grid_url)
            .field("twin", &self.twin)
            .finish_non_exhaustive()
    }
}

/// What the request tasks share: checks, opens, runs and answers one request each.
struct Responder<S, N> {
    identity: Identity,
    twin: TwinId,
    api: Arc<NodeApi<S, N>>,
    view: Arc<ClientView>,
    seen: Mutex<SeenIds>,
    pool: RequestPool,
    /// Busy answers that must first look their sender's key up (bounded, off the read loop).
    busy_lookups: Arc<tokio::sync::Semaphore>,
}

impl<S: Storage + 'static, N: Networker + 'static> Uplink<S, N> {
    /// Keeps the uplink up until `stop` is cancelled.
    pub async fn run(self, stop: CancellationToken) {
        let mut backoff = Backoff::new(Duration::from_secs(30));
        let responder = Arc::new(Responder {
            identity: self.identity.clone(),
            twin: self.twin,
            api: self.api.clone(),
            view: self.view.clone(),
            seen: Mutex::default(),
            pool: RequestPool::new(self.pool),
            busy_lookups: Arc::new(tokio::sync::Semaphore::new(BUSY_LOOKUPS)),
        });
        loop {
            let outcome = tokio::select! {
                _ = stop.cancelled() => return,
                r = self.session(&responder, &mut backoff) => r,
            };
            self.connected.send_replace(false);
            let delay = backoff.next_delay();
            match outcome {
                Ok(()) => info!(retry_in = ?delay, "uplink closed by the relay; reconnecting"),
                Err(e) => warn!(error = %e, retry_in = ?delay, "uplink down; reconnecting"),
            }
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep(delay) => {}
            }
        }
    }

    async fn session(
        &self,
        responder: &Arc<Responder<S, N>>,
        backoff: &mut Backoff,
    ) -> Result<(), String> {
        let mut link = zos_client::uplink::connect(&self.grid_url, &self.identity, self.twin)
            .await
            .map_err(|e| error_chain(&e))?;
        let after = self.last_event()?;
        link.send(UplinkFrame::EventsAfter { seq: after })
            .await
            .map_err(|e| error_chain(&e))?;
        info!(twin = self.twin, events_after = after, "uplink connected");
        self.connected.send_replace(true);
        backoff.reset();
        // Replies of the running requests; a request holds a slot, so at most `total` wait.
        let (replies, mut rx) = mpsc::channel::<Envelope>(self.pool.total.max(1) * 2);
        loop {
            let frame = tokio::select! {
                f = link.next() => match f {
                    Some(f) => f.map_err(|e| error_chain(&e))?,
                    None => return Ok(()),
                },
                Some(reply) = rx.recv() => {
                    link.send(UplinkFrame::Envelope { envelope: reply })
                        .await
                        .map_err(|e| error_chain(&e))?;
                    continue;
                }
            };
            match frame {
                UplinkFrame::Events { events } => self.handle_events(events)?,
                UplinkFrame::Envelope { envelope } => {
                    responder.dispatch(envelope, &replies);
                }
                UplinkFrame::EventsAfter { .. } => {
                    debug!("ignoring an events request sent to a node")
                }
                UplinkFrame::Release { runmode, version } => {
                    if runmode == self.runmode {
                        info!(%runmode, version = %version.chars().take(40).collect::<String>(), "the grid tells of a release: asking zos-init to check");
                        self.release_notice.notify_one();
                    } else {
                        debug!(%runmode, "a release notice for another runmode");
                    }
                }
            }
        }
    }

    fn last_event(&self) -> Result<u64, String> {
        Ok(self
            .engine
            .store()
            .meta(EVENT_SEQ)
            .map_err(|e| error_chain(&e))?
            .and_then(|v| v.parse().ok())
            .unwrap_or(0u64))
    }

    fn handle_events(
        &self,
        events: Vec<zos_types::contract::NodeEventRecord>,
    ) -> Result<(), String> {
        for rec in events {
            let last = self.last_event().unwrap_or(0);
            if rec.seq <= last {
                continue;
            }
            if rec.event == NodeEvent::PublicConfigChanged {
                self.public_config_changed.notify_one();
            }
            if let Err(e) = self.engine.handle_event(&rec.event) {
                // Not recorded as handled: it comes again on the next connection.
                return Err(format!("cannot handle event {}: {e}", rec.seq));
            }
            self.engine
                .store()
                .set_meta(EVENT_SEQ, &rec.seq.to_string())
                .map_err(|e| error_chain(&e))?;
        }
        Ok(())
    }
}

impl<S: Storage + 'static, N: Networker + 'static> Responder<S, N> {
    /// Starts a request in a task of its own, or answers "busy" at once when it gets no slot.
    /// Never waits: the read loop calls it.
    fn dispatch(self: &Arc<Self>, env: Envelope, replies: &mpsc::Sender<Envelope>) {
        if env.destination != self.twin || env.reply_to.is_some() {
            warn!(id = %env.id, destination = env.destination, "dropping an envelope not meant for this node");
            return;
        }
        match self.pool.try_take(env.source) {
            Ok(slot) => {
                let me = self.clone();
                let replies = replies.clone();
                tokio::spawn(async move {
                    let reply = me.answer(env).await;
                    drop(slot);
                    if let Some(reply) = reply {
                        // Fails only when the session ended: the sender learns it from the relay.
                        let _ = replies.send(reply).await;
                    }
                });
            }
            Err(busy) => {
                debug!(source = env.source, command = %env.command, running = self.pool.running(), "{busy}");
                let busy = NodeError::new(ErrorKind::Busy, busy.to_string());
                if let Some(key) = self.view.cached_key(env.source) {
                    self.answer_busy(&env, &key, &busy, replies);
                    return;
                }
                // The sender's key is not cached yet (its first requests are still looking it
                // up): a task of a small bounded set looks it up and answers, so the read loop
                // never waits and the sender learns it is busy instead of timing out.
                let Ok(permit) = self.busy_lookups.clone().try_acquire_owned() else {
                    warn!(
                        source = env.source,
                        "busy: dropping a request of a twin whose key is not cached"
                    );
                    return;
                };
                let (me, replies) = (self.clone(), replies.clone());
                tokio::spawn(async move {
                    if let Ok(Some(key)) = me.view.key(env.source).await {
                        me.answer_busy(&env, &key, &busy, &replies);
                    }
                    drop(permit);
                });
            }
        }
    }

    /// Answers `env` with `busy`, if its signature is its sender's.
    fn answer_busy(
        &self,
        env: &Envelope,
        key: &PublicKey,
        busy: &NodeError,
        replies: &mpsc::Sender<Envelope>,
    ) {
        let now = zos_types::auth::unix_now();
        if env.verify(key, now).is_err() {
            return;
        }
        if let Some(reply) = self.seal(env, key, &Reply::Error(busy.clone()), now)
            && replies.try_send(reply).is_err()
        {
            debug!(
                source = env.source,
                "busy: reply queue full, dropping the answer"
            );
        }
    }

    /// Checks, opens, runs and answers one request; `None` when it must be dropped unanswered.
    async fn answer(&self, env: Envelope) -> Option<Envelope> {
        let now = zos_types::auth::unix_now();
        let key = match self.view.key(env.source).await {
            Ok(Some(k)) => k,
            Ok(None) => {
                warn!(
                    source = env.source,
                    "dropping an envelope from an unknown twin"
                );
                return None;
            }
            Err(e) => {
                warn!(source = env.source, error = %error_chain(&e), "cannot check an envelope's sender");
                return None;
            }
        };
        if let Err(e) = env.verify(&key, now) {
            warn!(source = env.source, id = %env.id, error = %e, "dropping an envelope");
            return None;
        }
        let first = lock(&self.seen).first(&env.id, env.expiration, now);
        let reply = match first {
            Ok(false) => Reply::Error(NodeError::new(
                ErrorKind::Conflict,
                format!(
                    "envelope {} was already received: send a new request",
                    env.id
                ),
            )),
            Err(()) => Reply::Error(NodeError::new(
                ErrorKind::Busy,
                format!(
                    "the node is busy: it holds {MAX_SEEN_IDS} recent requests; retry in a minute"
                ),
            )),
            Ok(true) => match env.open(&self.identity, &key) {
                Err(e) => Reply::Error(NodeError::new(ErrorKind::Invalid, e.to_string())),
                Ok(body) => match self.api.handle(env.source, &env.command, &body).await {
                    Ok(v) => Reply::Ok(v),
                    Err(e) => {
                        debug!(source = env.source, command = %env.command, error = %e, "command refused");
                        Reply::Error(e.into())
                    }
                },
            },
        };
        self.seal(&env, &key, &reply, now)
    }

    /// Seals `reply` to the sender of `env`. An answer too large for the relay becomes an
    /// error that tells the sender to ask for less.
    fn seal(&self, env: &Envelope, key: &PublicKey, reply: &Reply, now: i64) -> Option<Envelope> {
        let sealed = self.seal_plain(env, key, &serde_json::to_vec(reply).ok()?, now)?;
        let size = serde_json::to_vec(&sealed)
            .map(|v| v.len())
            .unwrap_or(usize::MAX);
        if size <= MAX_ENVELOPE_BYTES {
            return Some(sealed);
        }
        warn!(source = env.source, command = %env.command, size, "answer too large for the relay");
        let e = Reply::Error(NodeError::new(
            ErrorKind::Invalid,
            format!(
                "the answer is {size} bytes, more than a reply carries ({MAX_ENVELOPE_BYTES}): ask for less (a smaller `limit` or `bytes`)"
            ),
        ));
        self.seal_plain(env, key, &serde_json::to_vec(&e).ok()?, now)
    }

    fn seal_plain(
        &self,
        env: &Envelope,
        key: &PublicKey,
        plain: &[u8],
        now: i64,
    ) -> Option<Envelope> {
        let seal = Seal {
            source: self.twin,
            destination: env.source,
            destination_key: key,
            command: &env.command,
            reply_to: Some(&env.id),
            expiration: now + 60,
        };
        Envelope::seal(&self.identity, &seal, plain)
            .map_err(|e| warn!(error = %e, "cannot seal a reply"))
            .ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn envelope_ids_are_accepted_once_until_they_expire() {
        let mut s = SeenIds::default();
        assert_eq!(s.first("a", 100, 10), Ok(true));
        assert_eq!(s.first("a", 100, 50), Ok(false));
        assert_eq!(s.first("b", 100, 50), Ok(true));
        // After expiry the id is forgotten (and the envelope itself would be refused as expired).
        assert_eq!(s.first("a", 300, 101), Ok(true));
    }

    #[test]
    fn one_twin_cannot_take_every_slot() {
        let pool = RequestPool::new(PoolLimits {
            total: 3,
            per_twin: 2,
        });
        let a1 = pool.try_take(1).unwrap();
        let _a2 = pool.try_take(1).unwrap();
        assert_eq!(pool.try_take(1).unwrap_err(), Busy::Twin(2));
        // Another twin still gets the last slot; then the node is full for everyone.
        let _b1 = pool.try_take(2).unwrap();
        assert_eq!(pool.try_take(3).unwrap_err(), Busy::Node(3));
        assert_eq!(pool.running(), 3);
        // A finished request gives its slot back.
        drop(a1);
        let _c1 = pool.try_take(3).unwrap();
        assert_eq!(pool.try_take(1).unwrap_err(), Busy::Node(3));
    }
}
