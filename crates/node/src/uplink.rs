//! The node's one connection for commands: an outbound WebSocket to the relay.
//!
//! Requests arrive as envelopes. Each is checked (the sender's signature, expiry, an id not seen
//! before), opened (only this node can decrypt it), run by the [`NodeApi`], and answered with a
//! sealed reply. Contract events arrive on the same connection; the node asks for those after
//! the last one it handled whenever it connects, so none is lost while it is away. The
//! connection is remade with backoff whenever it drops.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::future::BoxFuture;
use tokio::sync::Mutex;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};
use zos_client::GridClient;
use zos_types::contract::{Contract, NodeEvent};
use zos_types::deployment::ContractId;
use zos_types::envelope::{Envelope, Reply, Seal};
use zos_types::relay::UplinkFrame;
use zos_types::{Identity, PublicKey, TwinId};

use crate::api::NodeApi;
use crate::network::Networker;
use crate::provision::{Engine, GridView};
use crate::registrar::{Backoff, error_chain};
use crate::storage::Storage;

/// Key of the last handled event sequence number in the provision store.
const EVENT_SEQ: &str = "last_event_seq";
/// How long a twin's key is trusted from the cache.
const KEY_TTL: Duration = Duration::from_secs(600);

/// The grid, as the engine and the uplink see it: twin keys (cached) and contracts.
pub struct ClientView {
    client: GridClient,
    keys: Mutex<HashMap<TwinId, (PublicKey, Instant)>>,
}

impl std::fmt::Debug for ClientView {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientView").finish_non_exhaustive()
    }
}

impl ClientView {
    pub fn new(client: GridClient) -> Self {
        Self {
            client,
            keys: Mutex::new(HashMap::new()),
        }
    }

    async fn key(&self, twin: TwinId) -> Result<Option<PublicKey>, String> {
        if let Some((k, at)) = self.keys.lock().await.get(&twin)
            && at.elapsed() < KEY_TTL
        {
            return Ok(Some(*k));
        }
        match self.client.get_twin(twin).await {
            Ok(t) => {
                self.keys
                    .lock()
                    .await
                    .insert(twin, (t.public_key, Instant::now()));
                Ok(Some(t.public_key))
            }
            Err(e) if e.is_not_found() => Ok(None),
            Err(e) => Err(format!(
                "cannot reach the grid to check twin {twin}: {}",
                error_chain(&e)
            )),
        }
    }
}

impl GridView for ClientView {
    fn twin_key(&self, twin: TwinId) -> BoxFuture<'_, Result<Option<PublicKey>, String>> {
        Box::pin(self.key(twin))
    }

    fn contract(&self, id: ContractId) -> BoxFuture<'_, Result<Option<Contract>, String>> {
        Box::pin(async move {
            match self.client.get_contract(id).await {
                Ok(c) => Ok(Some(c)),
                Err(e) if e.is_not_found() => Ok(None),
                Err(e) => Err(format!(
                    "cannot reach the grid to check contract {id}: {}",
                    error_chain(&e)
                )),
            }
        })
    }
}

/// Envelope ids seen recently, kept until they expire, so none is handled twice.
#[derive(Debug, Default)]
pub struct SeenIds(HashMap<String, i64>);

impl SeenIds {
    /// True the first time `id` (expiring at `expiration`) is offered.
    pub fn first(&mut self, id: &str, expiration: i64, now: i64) -> bool {
        self.0.retain(|_, exp| *exp >= now);
        if self.0.contains_key(id) {
            return false;
        }
        self.0.insert(id.to_string(), expiration);
        true
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
}

impl<S, N> std::fmt::Debug for Uplink<S, N> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Uplink")
            .field("grid", &self.grid_url)
            .field("twin", &self.twin)
            .finish_non_exhaustive()
    }
}

impl<S: Storage + 'static, N: Networker + 'static> Uplink<S, N> {
    /// Keeps the uplink up until `stop` is cancelled.
    pub async fn run(self, stop: CancellationToken) {
        let mut backoff = Backoff::new(Duration::from_secs(30));
        let mut seen = SeenIds::default();
        loop {
            let outcome = tokio::select! {
                _ = stop.cancelled() => return,
                r = self.session(&mut seen, &mut backoff) => r,
            };
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

    async fn session(&self, seen: &mut SeenIds, backoff: &mut Backoff) -> Result<(), String> {
        let mut link = zos_client::uplink::connect(&self.grid_url, &self.identity, self.twin)
            .await
            .map_err(|e| error_chain(&e))?;
        let after = self
            .engine
            .store()
            .meta(EVENT_SEQ)
            .map_err(|e| error_chain(&e))?
            .and_then(|v| v.parse().ok())
            .unwrap_or(0u64);
        link.send(UplinkFrame::EventsAfter { seq: after })
            .await
            .map_err(|e| error_chain(&e))?;
        info!(twin = self.twin, events_after = after, "uplink connected");
        backoff.reset();
        while let Some(frame) = link.next().await {
            match frame.map_err(|e| error_chain(&e))? {
                UplinkFrame::Events { events } => {
                    for rec in events {
                        let last: u64 = self
                            .engine
                            .store()
                            .meta(EVENT_SEQ)
                            .ok()
                            .flatten()
                            .and_then(|v| v.parse().ok())
                            .unwrap_or(0);
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
                }
                UplinkFrame::Envelope { envelope } => {
                    if let Some(reply) = self.answer(envelope, seen).await {
                        link.send(UplinkFrame::Envelope { envelope: reply })
                            .await
                            .map_err(|e| error_chain(&e))?;
                    }
                }
                UplinkFrame::EventsAfter { .. } => {
                    debug!("ignoring an events request sent to a node")
                }
            }
        }
        Ok(())
    }

    /// Checks, opens, runs and answers one request; `None` when it must be dropped unanswered.
    async fn answer(&self, env: Envelope, seen: &mut SeenIds) -> Option<Envelope> {
        let now = zos_types::auth::unix_now();
        if env.destination != self.twin || env.reply_to.is_some() {
            warn!(id = %env.id, destination = env.destination, "dropping an envelope not meant for this node");
            return None;
        }
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
                warn!(source = env.source, error = %e, "cannot check an envelope's sender");
                return None;
            }
        };
        if let Err(e) = env.verify(&key, now) {
            warn!(source = env.source, id = %env.id, error = %e, "dropping an envelope");
            return None;
        }
        let reply = if !seen.first(&env.id, env.expiration, now) {
            Reply::Error(format!(
                "envelope {} was already received: send a new request",
                env.id
            ))
        } else {
            match env.open(&self.identity, &key) {
                Err(e) => Reply::Error(e.to_string()),
                Ok(body) => match self.api.handle(env.source, &env.command, &body).await {
                    Ok(v) => Reply::Ok(v),
                    Err(e) => {
                        debug!(source = env.source, command = %env.command, error = %e, "command refused");
                        Reply::Error(e.to_string())
                    }
                },
            }
        };
        let plain = serde_json::to_vec(&reply).ok()?;
        let seal = Seal {
            source: self.twin,
            destination: env.source,
            destination_key: &key,
            command: &env.command,
            reply_to: Some(&env.id),
            expiration: now + 60,
        };
        Envelope::seal(&self.identity, &seal, &plain)
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
        assert!(s.first("a", 100, 10));
        assert!(!s.first("a", 100, 50));
        assert!(s.first("b", 100, 50));
        // After expiry the id is forgotten (and the envelope itself would be refused as expired).
        assert!(s.first("a", 300, 101));
    }
}
