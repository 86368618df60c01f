//! The relay's HTTP side: `POST /api/v1/relay/send` and the uplink WebSocket, whose
//! [`Session`] runs one uplink from upgrade to close. They reach the registry through
//! [`AppState`]; the relay itself ([`super::Relay`]) knows nothing of it.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::ws::rejection::WebSocketUpgradeRejection;
use axum::extract::ws::{CloseFrame, Message, WebSocket, WebSocketUpgrade};
use axum::extract::{DefaultBodyLimit, State};
use axum::http::StatusCode;
use axum::response::Response;
use axum::routing::{get, post};
use axum::{Json, Router};
use tokio::sync::{Notify, mpsc};
use tokio_util::sync::CancellationToken;
use zos_types::envelope::{Envelope, EnvelopeError, MAX_ENVELOPE_BYTES};
use zos_types::registry::NodeFilter;
use zos_types::relay::{MAX_WAIT_SECS, SEND_PATH, UPLINK_PATH, UplinkFrame};
use zos_types::{NodeId, PublicKey, TwinId};

use crate::auth::Signed;
use crate::contracts::MAX_EVENTS;
use crate::error::ApiFailure;
use crate::state::AppState;

use super::{CLOSE_REPLACED, CLOSE_TOO_SLOW, Link, MAX_CACHED_KEYS, Relay, lock};

impl Relay {
    /// The public key of `twin`, from memory or from the store.
    async fn twin_key(
        &self,
        app: &AppState,
        twin: TwinId,
    ) -> Result<Option<PublicKey>, ApiFailure> {
        if let Some(k) = lock(&self.keys).get(&twin) {
            return Ok(Some(*k));
        }
        let key = app.run(move |s| s.twin_key(twin)).await?;
        if let Some(k) = key {
            let mut keys = lock(&self.keys);
            if keys.len() >= MAX_CACHED_KEYS {
                keys.clear();
            }
            keys.insert(twin, k);
        }
        Ok(key)
    }
}

/// The relay's routes.
pub fn routes() -> Router<AppState> {
    Router::new().route(UPLINK_PATH, get(uplink)).route(
        SEND_PATH,
        post(send).layer(DefaultBodyLimit::max(MAX_ENVELOPE_BYTES)),
    )
}

async fn uplink(
    State(app): State<AppState>,
    ws: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
    signed: Signed,
) -> Result<Response, ApiFailure> {
    let twin = signed.twin()?;
    if app.relay().shutdown.is_cancelled() {
        return Err(ApiFailure::Unavailable("the grid is stopping".into()));
    }
    let ws = ws.map_err(|r| {
        ApiFailure::BadRequest(format!(
            "{UPLINK_PATH} is a WebSocket: {}",
            r.body_text().to_lowercase()
        ))
    })?;
    let now = app.now();
    let (key, node) = app
        .run(move |s| {
            let key = s.twin_key(twin)?;
            let node = node_of(s, twin, now)?;
            Ok((key, node))
        })
        .await?;
    let key = key.ok_or_else(|| ApiFailure::Unauthorized(format!("twin {twin} does not exist")))?;
    Ok(ws
        .max_message_size(MAX_ENVELOPE_BYTES + 4096)
        .max_frame_size(MAX_ENVELOPE_BYTES + 4096)
        .on_upgrade(move |socket| Session::new(app, twin, key, node).run(socket)))
}

fn node_of(
    s: &dyn crate::store::Store,
    twin: TwinId,
    now: i64,
) -> Result<Option<NodeId>, crate::store::StoreError> {
    let filter = NodeFilter {
        twin_id: Some(twin),
        ..NodeFilter::default()
    };
    Ok(s.nodes(&filter, now)?.first().map(|n| n.id))
}

/// One uplink connection, from upgrade to close.
struct Session {
    app: AppState,
    relay: Arc<Relay>,
    twin: TwinId,
    key: PublicKey,
    node: Option<NodeId>,
    conn: u64,
    events: Arc<Notify>,
    close: CancellationToken,
    /// The last event sent; `None` until the node said where to start.
    cursor: Option<u64>,
}

/// Why a session ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum End {
    Shutdown,
    Replaced,
    TooSlow,
    ClosedByPeer,
    Silent,
    WriteFailed,
    WriteTimeout,
    Protocol(&'static str),
    Store,
}

impl Session {
    fn new(app: AppState, twin: TwinId, key: PublicKey, node: Option<NodeId>) -> Self {
        let relay = app.relay().clone();
        let conn = relay.next_conn.fetch_add(1, Ordering::Relaxed);
        Self {
            app,
            relay,
            twin,
            key,
            node,
            conn,
            events: Arc::new(Notify::new()),
            close: CancellationToken::new(),
            cursor: None,
        }
    }

    async fn run(mut self, mut socket: WebSocket) {
        let cfg = self.relay.config.clone();
        let (tx, mut rx) = mpsc::channel(cfg.uplink_queue);
        let link = Link {
            conn: self.conn,
            tx,
            events: self.events.clone(),
            close: self.close.clone(),
            node: self.node,
        };
        if let Some(old) = lock(&self.relay.links).insert(self.twin, link) {
            old.close.cancel();
            tracing::info!(twin = self.twin, "a new uplink replaces the old one");
        }
        tracing::info!(twin = self.twin, node = ?self.node, "uplink connected");
        let start = tokio::time::Instant::now() + cfg.ping_every;
        let mut ping = tokio::time::interval_at(start, cfg.ping_every);
        let mut last_heard = tokio::time::Instant::now();
        // Only notices after the connection: a node checks for a release when it connects.
        let mut release = self.relay.release.subscribe();
        let end = loop {
            tokio::select! {
                r = release.changed() => {
                    let notice = r.ok().and_then(|()| release.borrow_and_update().clone());
                    if let (Some(n), Some(_)) = (notice, self.node) {
                        let frame = UplinkFrame::Release { runmode: n.runmode, version: n.version };
                        if let Err(end) = self.write(&mut socket, &frame).await {
                            break end;
                        }
                    }
                }
                _ = self.relay.shutdown.cancelled() => break End::Shutdown,
                _ = self.close.cancelled() => {
                    let replaced = lock(&self.relay.links).get(&self.twin).is_some_and(|l| l.conn != self.conn);
                    break if replaced { End::Replaced } else { End::TooSlow };
                }
                out = rx.recv() => {
                    let Some(env) = out else { break End::Replaced };
                    if let Err(end) = self.write(&mut socket, &UplinkFrame::Envelope { envelope: env }).await {
                        break end;
                    }
                }
                _ = self.events.notified(), if self.cursor.is_some() => {
                    if let Err(end) = self.send_events(&mut socket).await {
                        break end;
                    }
                }
                msg = socket.recv() => {
                    last_heard = tokio::time::Instant::now();
                    let text = match msg {
                        None | Some(Err(_)) | Some(Ok(Message::Close(_))) => break End::ClosedByPeer,
                        Some(Ok(Message::Text(t))) => t,
                        Some(Ok(Message::Binary(_))) => break End::Protocol("binary frame"),
                        Some(Ok(_)) => continue,
                    };
                    if let Err(end) = self.on_frame(&mut socket, text.as_str()).await {
                        break end;
                    }
                }
                _ = ping.tick() => {
                    if last_heard.elapsed() >= cfg.silence_limit {
                        break End::Silent;
                    }
                    if let Err(end) = self.write_message(&mut socket, Message::Ping(Bytes::new())).await {
                        break end;
                    }
                }
            }
        };
        self.finish(socket, rx, end).await;
    }

    async fn on_frame(&mut self, socket: &mut WebSocket, text: &str) -> Result<(), End> {
        match serde_json::from_str::<UplinkFrame>(text) {
            Ok(UplinkFrame::Envelope { envelope }) => {
                self.relay
                    .deliver_reply(self.twin, &self.key, envelope, self.app.now());
                Ok(())
            }
            Ok(UplinkFrame::EventsAfter { seq }) => {
                if self.node.is_none() {
                    // The twin may have registered as a node since it connected.
                    let (twin, now) = (self.twin, self.app.now());
                    let node = self
                        .app
                        .run(move |s| node_of(s, twin, now))
                        .await
                        .map_err(|e| self.store_failed(e))?;
                    if let Some(n) = node {
                        self.node = Some(n);
                        if let Some(l) = lock(&self.relay.links)
                            .get_mut(&self.twin)
                            .filter(|l| l.conn == self.conn)
                        {
                            l.node = Some(n);
                        }
                    }
                }
                if self.node.is_none() {
                    tracing::debug!(
                        twin = self.twin,
                        "events asked by a twin that is not a node"
                    );
                    return Ok(());
                }
                self.cursor = Some(seq);
                self.send_events(socket).await
            }
            Ok(UplinkFrame::Events { .. } | UplinkFrame::Release { .. }) => {
                tracing::debug!(twin = self.twin, "ignoring a relay frame sent by a node");
                Ok(())
            }
            Err(e) => {
                tracing::warn!(twin = self.twin, error = %e, "malformed uplink frame");
                Err(End::Protocol("malformed frame"))
            }
        }
    }

    fn store_failed(&self, e: ApiFailure) -> End {
        tracing::error!(twin = self.twin, error = %e, "uplink cannot read the registry");
        End::Store
    }

    /// Sends every event after the cursor, in frames of at most [`MAX_EVENTS`].
    async fn send_events(&mut self, socket: &mut WebSocket) -> Result<(), End> {
        let (Some(node), Some(mut after)) = (self.node, self.cursor) else {
            return Ok(());
        };
        loop {
            let events = self
                .app
                .run(move |s| s.node_events(node, after, MAX_EVENTS))
                .await
                .map_err(|e| self.store_failed(e))?;
            let Some(last) = events.last().map(|e| e.seq) else {
                return Ok(());
            };
            let full = events.len() == MAX_EVENTS as usize;
            tracing::debug!(twin = self.twin, node, after, last, "sending events");
            self.write(socket, &UplinkFrame::Events { events }).await?;
            after = last;
            self.cursor = Some(last);
            if !full {
                return Ok(());
            }
        }
    }

    async fn write(&self, socket: &mut WebSocket, frame: &UplinkFrame) -> Result<(), End> {
        let text = serde_json::to_string(frame).expect("frames serialize");
        self.write_message(socket, Message::Text(text.into())).await
    }

    /// One write, given up when the uplink is closed or the write takes too long.
    async fn write_message(&self, socket: &mut WebSocket, msg: Message) -> Result<(), End> {
        tokio::select! {
            _ = self.close.cancelled() => Err(End::TooSlow),
            r = tokio::time::timeout(self.relay.config.write_timeout, socket.send(msg)) => match r {
                Ok(Ok(())) => Ok(()),
                Ok(Err(_)) => Err(End::WriteFailed),
                Err(_) => Err(End::WriteTimeout),
            },
        }
    }

    async fn finish(self, mut socket: WebSocket, mut rx: mpsc::Receiver<Envelope>, end: End) {
        let replaced = {
            let mut links = lock(&self.relay.links);
            if links.get(&self.twin).is_some_and(|l| l.conn == self.conn) {
                links.remove(&self.twin);
                false
            } else {
                true
            }
        };
        rx.close();
        if replaced {
            // Requests queued here but not written go to the uplink that replaced this one.
            let mut moved = 0;
            while let Ok(env) = rx.try_recv() {
                let id = env.id.clone();
                let sent = lock(&self.relay.links)
                    .get(&self.twin)
                    .is_some_and(|l| l.tx.try_send(env).is_ok());
                if sent {
                    moved += 1;
                } else {
                    // Its sender answers 503 at once.
                    lock(&self.relay.waiting).remove(&id);
                }
            }
            if moved > 0 {
                tracing::debug!(
                    twin = self.twin,
                    moved,
                    "queued requests moved to the new uplink"
                );
            }
        } else {
            // Nobody will answer: the senders learn it now rather than at expiry.
            let failed = lock(&self.relay.waiting).drop_for(self.twin);
            if failed > 0 {
                tracing::debug!(
                    twin = self.twin,
                    failed,
                    "requests waiting on a closed uplink failed"
                );
            }
        }
        let close = match end {
            End::Shutdown => Some((1001, "the grid is stopping")),
            End::Replaced => Some((CLOSE_REPLACED, "replaced by a newer uplink")),
            End::TooSlow | End::WriteTimeout => Some((CLOSE_TOO_SLOW, "not reading its envelopes")),
            End::Protocol(why) => Some((1002, why)),
            End::Silent | End::Store => Some((1011, "uplink dropped")),
            End::ClosedByPeer | End::WriteFailed => None,
        };
        if let Some((code, reason)) = close {
            let frame = Message::Close(Some(CloseFrame {
                code,
                reason: reason.into(),
            }));
            let _ = tokio::time::timeout(Duration::from_secs(1), socket.send(frame)).await;
        }
        match end {
            End::Shutdown | End::Replaced | End::ClosedByPeer => {
                tracing::info!(twin = self.twin, reason = ?end, "uplink closed")
            }
            _ => tracing::warn!(twin = self.twin, reason = ?end, "uplink dropped"),
        }
    }
}

fn envelope_failure(e: EnvelopeError) -> ApiFailure {
    match e {
        EnvelopeError::BadSignature => ApiFailure::Unauthorized(e.to_string()),
        EnvelopeError::TooLarge(_) => ApiFailure::TooLarge(MAX_ENVELOPE_BYTES),
        e => ApiFailure::BadRequest(e.to_string()),
    }
}

/// Removes a waiting entry when the sender gives up (timeout or disconnect).
struct WaitGuard<'a> {
    relay: &'a Relay,
    id: String,
}

impl Drop for WaitGuard<'_> {
    fn drop(&mut self) {
        lock(&self.relay.waiting).remove(&self.id);
    }
}

async fn send(
    State(app): State<AppState>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<Envelope>, ApiFailure> {
    let body = body.map_err(|r| {
        if r.status() == StatusCode::PAYLOAD_TOO_LARGE {
            ApiFailure::TooLarge(MAX_ENVELOPE_BYTES)
        } else {
            ApiFailure::BadRequest(format!("cannot read the body: {}", r.body_text()))
        }
    })?;
    let env = Envelope::from_json(&body).map_err(envelope_failure)?;
    if env.reply_to.is_some() {
        return Err(ApiFailure::BadRequest(
            "reply_to: a reply goes up the uplink of the twin that answers, not to send".into(),
        ));
    }
    let source = env.source;
    let relay = app.relay().clone();
    let key = relay
        .twin_key(&app, source)
        .await?
        .ok_or_else(|| ApiFailure::Unauthorized(format!("source twin {source} does not exist")))?;
    let now = app.now();
    env.verify(&key, now).map_err(envelope_failure)?;
    let (id, dest, command) = (env.id.clone(), env.destination, env.command.clone());
    let wait = Duration::from_secs(((env.expiration - now).max(0) as u64).min(MAX_WAIT_SECS));
    let reply = relay.forward(env, body.len(), now)?;
    let _guard = WaitGuard {
        relay: &relay,
        id: id.clone(),
    };
    tracing::debug!(source, twin = dest, %command, %id, "envelope forwarded");
    match tokio::time::timeout(wait, reply).await {
        Ok(Ok(reply)) => Ok(Json(reply)),
        Ok(Err(_)) => Err(ApiFailure::Unavailable(format!(
            "twin {dest}'s uplink closed before it answered envelope {id}"
        ))),
        Err(_) => Err(ApiFailure::GatewayTimeout(format!(
            "twin {dest} did not answer envelope {id} in {} s",
            wait.as_secs()
        ))),
    }
}
