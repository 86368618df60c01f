//! The relay: routes sealed envelopes to the uplinks of nodes (see `zos_types::relay`).
//!
//! | method and path | who | what |
//! |---|---|---|
//! | `GET /api/v1/relay/uplink` (WebSocket) | any twin, signed `Authorization` on the upgrade | the twin's uplink: envelopes in both directions, its node's events |
//! | `POST /api/v1/relay/send` | anyone with a signed envelope | forwards it to the destination's uplink and answers its reply |
//!
//! The relay checks what it can without reading bodies: the envelope's signature against its
//! source twin's key, its expiry, its size, and that its id was not seen before. It keeps only
//! bounded state: one queue of [`UPLINK_QUEUE`] frames per uplink (a node that does not read them
//! loses its uplink), at most [`MAX_WAITING_PER_TWIN`] requests waiting per destination, and
//! envelope ids until they expire.

use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::extract::{DefaultBodyLimit, State};
use axum::response::Response;
use axum::routing::{get, post};
use axum::{Json, Router};
use tokio::sync::{mpsc, oneshot};
use zos_types::envelope::{Envelope, EnvelopeError, MAX_ENVELOPE_BYTES};
use zos_types::registry::NodeFilter;
use zos_types::relay::{MAX_WAIT_SECS, SEND_PATH, UPLINK_PATH, UplinkFrame};
use zos_types::{NodeId, TwinId};

use crate::api::AppState;
use crate::auth::Signed;
use crate::contracts::MAX_EVENTS;
use crate::error::ApiFailure;

/// Frames queued for one uplink before the relay gives up on it.
pub const UPLINK_QUEUE: usize = 256;
/// Requests waiting for replies from one destination at once.
pub const MAX_WAITING_PER_TWIN: usize = 128;
/// Envelope ids remembered at most (each until it expires).
pub const MAX_SEEN: usize = 1_000_000;
/// How often the relay pings an uplink; one silent for three times this is dropped.
const PING_EVERY: Duration = Duration::from_secs(15);

#[derive(Debug)]
enum ToUplink {
    Frame(UplinkFrame),
    /// New events may exist for this uplink's node.
    Events,
}

#[derive(Debug)]
struct Link {
    conn: u64,
    tx: mpsc::Sender<ToUplink>,
    node: Option<NodeId>,
}

/// The relay's shared state.
#[derive(Debug, Default)]
pub struct Relay {
    links: Mutex<HashMap<TwinId, Link>>,
    waiting: Mutex<HashMap<String, (TwinId, oneshot::Sender<Envelope>)>>,
    seen: Mutex<HashMap<String, i64>>,
    next_conn: AtomicU64,
}

impl Relay {
    /// Wakes the uplink of `node`, if connected, to send its new events.
    pub fn events_for(&self, node: NodeId) {
        let links = self.links.lock().unwrap_or_else(|e| e.into_inner());
        for link in links.values().filter(|l| l.node == Some(node)) {
            let _ = link.tx.try_send(ToUplink::Events);
        }
    }

    /// True when `twin` has an uplink.
    pub fn connected(&self, twin: TwinId) -> bool {
        self.links
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .contains_key(&twin)
    }

    fn first_sight(&self, id: &str, expiration: i64, now: i64) -> Result<(), ApiFailure> {
        let mut seen = self.seen.lock().unwrap_or_else(|e| e.into_inner());
        if seen.len() >= MAX_SEEN {
            seen.retain(|_, exp| *exp >= now);
            if seen.len() >= MAX_SEEN {
                return Err(ApiFailure::Unavailable(
                    "the relay is carrying too many envelopes: try again later".into(),
                ));
            }
        }
        if seen.contains_key(id) {
            return Err(ApiFailure::Conflict(format!(
                "envelope {id} was already sent: a new request needs a new id"
            )));
        }
        seen.insert(id.to_string(), expiration);
        Ok(())
    }
}

pub fn routes() -> Router<AppState> {
    Router::new().route(UPLINK_PATH, get(uplink)).route(
        SEND_PATH,
        post(send).layer(DefaultBodyLimit::max(MAX_ENVELOPE_BYTES)),
    )
}

async fn uplink(
    State(app): State<AppState>,
    ws: WebSocketUpgrade,
    signed: Signed,
) -> Result<Response, ApiFailure> {
    let twin = signed.twin()?;
    let now = app.now();
    let node = app
        .run(move |s| {
            s.nodes(
                &NodeFilter {
                    twin_id: Some(twin),
                    ..NodeFilter::default()
                },
                now,
            )
        })
        .await?
        .first()
        .map(|n| n.id);
    Ok(ws
        .max_message_size(MAX_ENVELOPE_BYTES + 4096)
        .on_upgrade(move |socket| serve_uplink(app, twin, node, socket)))
}

async fn serve_uplink(app: AppState, twin: TwinId, node: Option<NodeId>, mut socket: WebSocket) {
    let relay = app.relay().clone();
    let conn = relay.next_conn.fetch_add(1, Ordering::Relaxed);
    let (tx, mut rx) = mpsc::channel(UPLINK_QUEUE);
    let replaced = relay
        .links
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .insert(twin, Link { conn, tx, node });
    if let Some(old) = replaced {
        // Dropping the old sender ends the old session, which closes its socket.
        drop(old);
        tracing::info!(twin, "a new uplink replaces the old one");
    }
    tracing::info!(twin, ?node, "uplink connected");
    // The last event sent; events are sent only after the node asked where to start.
    let mut cursor: Option<u64> = None;
    let mut ping = tokio::time::interval(PING_EVERY);
    let mut last_heard = tokio::time::Instant::now();
    let reason = loop {
        tokio::select! {
            out = rx.recv() => match out {
                // The link was replaced or the relay is shutting down.
                None => break "replaced",
                Some(ToUplink::Frame(f)) => {
                    if send_frame(&mut socket, &f).await.is_err() { break "write failed" }
                }
                Some(ToUplink::Events) => {
                    if let (Some(n), Some(after)) = (node, cursor)
                        && let Err(e) = send_events(&app, &mut socket, n, after, &mut cursor).await
                    {
                        tracing::warn!(twin, error = %e, "cannot send events");
                        break "events failed";
                    }
                }
            },
            msg = socket.recv() => {
                last_heard = tokio::time::Instant::now();
                let text = match msg {
                    None | Some(Err(_)) | Some(Ok(Message::Close(_))) => break "closed",
                    Some(Ok(Message::Text(t))) => t,
                    Some(Ok(Message::Binary(_))) => break "binary frame",
                    Some(Ok(_)) => continue,
                };
                match serde_json::from_str::<UplinkFrame>(text.as_str()) {
                    Ok(UplinkFrame::Envelope { envelope }) => deliver_reply(&relay, twin, envelope),
                    Ok(UplinkFrame::EventsAfter { seq }) => {
                        cursor = Some(seq);
                        if let Some(n) = node
                            && let Err(e) = send_events(&app, &mut socket, n, seq, &mut cursor).await
                        {
                            tracing::warn!(twin, error = %e, "cannot send events");
                            break "events failed";
                        }
                    }
                    Ok(UplinkFrame::Events { .. }) => tracing::debug!(twin, "ignoring events sent by a node"),
                    Err(e) => {
                        tracing::warn!(twin, error = %e, "malformed uplink frame");
                        break "malformed frame";
                    }
                }
            }
            _ = ping.tick() => {
                if last_heard.elapsed() > PING_EVERY * 3 { break "silent" }
                if socket.send(Message::Ping(Bytes::new())).await.is_err() { break "write failed" }
            }
        }
    };
    let mut links = relay.links.lock().unwrap_or_else(|e| e.into_inner());
    if links.get(&twin).is_some_and(|l| l.conn == conn) {
        links.remove(&twin);
    }
    drop(links);
    tracing::info!(twin, reason, "uplink closed");
}

async fn send_frame(socket: &mut WebSocket, f: &UplinkFrame) -> Result<(), axum::Error> {
    let text = serde_json::to_string(f).expect("frames serialize");
    socket.send(Message::Text(text.into())).await
}

async fn send_events(
    app: &AppState,
    socket: &mut WebSocket,
    node: NodeId,
    after: u64,
    cursor: &mut Option<u64>,
) -> Result<(), String> {
    let mut after = after;
    loop {
        let events = app
            .run(move |s| s.node_events(node, after, MAX_EVENTS))
            .await
            .map_err(|e| e.to_string())?;
        let Some(last) = events.last().map(|e| e.seq) else {
            return Ok(());
        };
        let full = events.len() as u32 == MAX_EVENTS;
        send_frame(socket, &UplinkFrame::Events { events })
            .await
            .map_err(|e| e.to_string())?;
        after = last;
        *cursor = Some(last);
        if !full {
            return Ok(());
        }
    }
}

fn deliver_reply(relay: &Relay, from: TwinId, env: Envelope) {
    let Some(request) = env.reply_to.clone() else {
        tracing::debug!(
            twin = from,
            "dropping an envelope from an uplink that answers nothing"
        );
        return;
    };
    let waiter = relay
        .waiting
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .remove(&request);
    match waiter {
        // Only the twin the request went to may answer it.
        Some((dest, tx)) if dest == from => {
            let _ = tx.send(env);
        }
        Some((dest, tx)) => {
            tracing::warn!(
                twin = from,
                expected = dest,
                "a twin answered a request sent to another"
            );
            relay
                .waiting
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .insert(request, (dest, tx));
        }
        None => tracing::debug!(twin = from, request, "reply to a request nobody waits for"),
    }
}

fn envelope_failure(e: EnvelopeError) -> ApiFailure {
    match e {
        EnvelopeError::BadSignature => ApiFailure::Unauthorized(e.to_string()),
        EnvelopeError::TooLarge(_) => ApiFailure::TooLarge,
        e => ApiFailure::BadRequest(e.to_string()),
    }
}

/// Removes a waiting entry when the sender gives up (timeout or disconnect).
struct Waiting<'a> {
    relay: &'a Relay,
    id: String,
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.relay
            .waiting
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&self.id);
    }
}

async fn send(State(app): State<AppState>, body: Bytes) -> Result<Json<Envelope>, ApiFailure> {
    let env = Envelope::from_json(&body).map_err(envelope_failure)?;
    let source = env.source;
    let key = app
        .run(move |s| s.twin_key(source))
        .await?
        .ok_or_else(|| ApiFailure::Unauthorized(format!("source twin {source} does not exist")))?;
    let now = app.now();
    env.verify(&key, now).map_err(envelope_failure)?;
    let relay = app.relay().clone();
    relay.first_sight(&env.id, env.expiration, now)?;
    let dest = env.destination;
    let tx = {
        let links = relay.links.lock().unwrap_or_else(|e| e.into_inner());
        links.get(&dest).map(|l| l.tx.clone()).ok_or_else(|| {
            ApiFailure::NotFound(format!(
                "twin {dest} is not connected to the relay (node offline?)"
            ))
        })?
    };
    let (reply_tx, reply_rx) = oneshot::channel();
    {
        let mut waiting = relay.waiting.lock().unwrap_or_else(|e| e.into_inner());
        if waiting.values().filter(|(d, _)| *d == dest).count() >= MAX_WAITING_PER_TWIN {
            return Err(ApiFailure::Unavailable(format!(
                "twin {dest} has too many requests waiting: try again later"
            )));
        }
        waiting.insert(env.id.clone(), (dest, reply_tx));
    }
    let _guard = Waiting {
        relay: &relay,
        id: env.id.clone(),
    };
    let wait = Duration::from_secs(((env.expiration - now).max(0) as u64).min(MAX_WAIT_SECS));
    let id = env.id.clone();
    if tx
        .try_send(ToUplink::Frame(UplinkFrame::Envelope { envelope: env }))
        .is_err()
    {
        return Err(ApiFailure::Unavailable(format!(
            "twin {dest} is not keeping up with its requests: try again later"
        )));
    }
    match tokio::time::timeout(wait, reply_rx).await {
        Ok(Ok(reply)) => Ok(Json(reply)),
        Ok(Err(_)) => Err(ApiFailure::Unavailable(format!(
            "twin {dest}'s uplink closed before it answered"
        ))),
        Err(_) => Err(ApiFailure::GatewayTimeout(format!(
            "twin {dest} did not answer envelope {id} in {} s",
            wait.as_secs()
        ))),
    }
}
