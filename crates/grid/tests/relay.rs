//! The relay and node uplinks, over real HTTP and WebSocket on 127.0.0.1. Fake nodes are built
//! with the uplink connector of `zos-client`: they open requests and seal replies as zosd does.
//! They echo any command: the names sent here (`zos.test.echo`, `zos.x`, `zos.fail`) are
//! outside the node protocol on purpose (see `common/nodes.rs`).

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::nodes::{NodeTwin, answer, echo_node, grid, node_twin, sealed};
use common::{auth_header, error_message, raw};
use futures::StreamExt;
use serde_json::json;
use tokio::sync::Mutex;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use zos_client::uplink::{self, Uplink};
use zos_client::{ClientError, GridClient};
use zos_grid::relay::RelayConfig;
use zos_types::auth::{Signer, unix_now};
use zos_types::contract::{CreateNodeContract, NodeEvent, NodeEventRecord, UpdateNodeContract};
use zos_types::deployment::DeploymentHash;
use zos_types::envelope::{Envelope, MAX_ENVELOPE_BYTES, Reply};
use zos_types::node_api::{Deploy, ErrorKind, NodeCommand};
use zos_types::relay::{SEND_PATH, UPLINK_PATH, UplinkFrame};
use zos_types::{Identity, PublicKey, TwinId};

/// A node that reads its uplink (so it answers pings) and hands the envelopes to the test.
async fn manual_node(
    url: &str,
    n: &NodeTwin,
) -> (
    Arc<Mutex<Uplink>>,
    tokio::sync::mpsc::UnboundedReceiver<Envelope>,
) {
    let link = Arc::new(Mutex::new(n.connect(url).await));
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    let reader = link.clone();
    tokio::spawn(async move {
        loop {
            // Poll with a short lock so the test can send in between.
            let frame = {
                let mut l = reader.lock().await;
                tokio::time::timeout(Duration::from_millis(20), l.next()).await
            };
            match frame {
                Err(_) => continue,
                Ok(Some(Ok(UplinkFrame::Envelope { envelope }))) => {
                    if tx.send(envelope).is_err() {
                        return;
                    }
                }
                Ok(Some(Ok(_))) => {}
                Ok(_) => return,
            }
        }
    });
    (link, rx)
}

fn relay_status(e: ClientError) -> u16 {
    match e {
        ClientError::Relay { status, .. } => status,
        other => panic!("expected a relay refusal, got {other:?}"),
    }
}

/// Waits until `cond` holds, polling every 20 ms, for at most `limit`.
async fn eventually<F, Fut>(limit: Duration, mut cond: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let end = Instant::now() + limit;
    while Instant::now() < end {
        if cond().await {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    false
}

/// True when a send to `twin` is refused with 404 (no uplink).
async fn offline(user: &GridClient, twin: TwinId, key: &PublicKey) -> bool {
    match user.relay_send(&sealed(user, twin, key, 5, b"{}")).await {
        Err(e) => e.is_offline(),
        Ok(_) => false,
    }
}

#[tokio::test]
async fn a_call_reaches_the_node_and_its_reply_comes_back() {
    let g = grid(RelayConfig::default()).await;
    let n = node_twin(&g).await;
    let _node = echo_node(&g.url(), &n).await;
    let (user, _) = g.twin().await;
    let v = user
        .call(n.twin, "zos.test.echo", &json!({"secret": "swordfish"}))
        .await
        .unwrap();
    assert_eq!(
        v,
        json!({"echo": "zos.test.echo", "body": {"secret": "swordfish"}})
    );
    // The node's refusal comes back as the remote's own message.
    let e = user.call(n.twin, "zos.fail", &json!({})).await.unwrap_err();
    assert!(
        matches!(&e, ClientError::Remote(m)
            if m.message == "refused: just because" && m.kind == ErrorKind::Forbidden),
        "{e:?}"
    );
    // Many calls in flight at once are each matched to their own reply.
    let calls: Vec<_> = (0..20)
        .map(|i| {
            let user = user.clone();
            let twin = n.twin;
            tokio::spawn(async move { user.call(twin, "zos.test.echo", &json!({ "i": i })).await })
        })
        .collect();
    for (i, c) in calls.into_iter().enumerate() {
        let v = c.await.unwrap().unwrap();
        assert_eq!(v["body"]["i"], i);
    }
    assert!(
        !g.dump().contains("swordfish"),
        "the relay stores nothing of the bodies"
    );
}

#[tokio::test]
async fn an_envelope_near_the_size_limit_goes_through() {
    let g = grid(RelayConfig::default()).await;
    let n = node_twin(&g).await;
    let _node = echo_node(&g.url(), &n).await;
    let (user, _) = g.twin().await;
    // Base64 and JSON grow the body by about a third: 600 KiB of text stays under 1 MiB.
    let big = "x".repeat(600 * 1024);
    let v = user
        .call(n.twin, "zos.test.echo", &json!({ "big": big }))
        .await
        .unwrap();
    assert_eq!(v["body"]["big"].as_str().map(str::len), Some(big.len()));
}

#[tokio::test]
async fn the_relay_refuses_what_it_must_with_its_statuses() {
    let g = grid(RelayConfig::default()).await;
    let n = node_twin(&g).await;
    let (user, _) = g.twin().await;
    let nkey = n.identity().public_key();

    // Offline destination: 404 at once.
    let started = Instant::now();
    let e = user
        .relay_send(&sealed(&user, n.twin, &nkey, 30, b"{}"))
        .await
        .unwrap_err();
    assert!(e.is_offline(), "{e:?}");
    assert!(e.to_string().contains("not connected"), "{e}");
    assert!(started.elapsed() < Duration::from_secs(2));
    let e = user.call(n.twin, "zos.x", &json!(null)).await.unwrap_err();
    assert!(e.is_offline() && e.is_transient(), "{e:?}");

    // A node that reads but never answers: 504 when the envelope expires.
    let (_link, mut inbox) = manual_node(&g.url(), &n).await;
    let started = Instant::now();
    let env = sealed(&user, n.twin, &nkey, 2, b"{}");
    let e = user.relay_send(&env).await.unwrap_err();
    assert_eq!(relay_status(e), 504);
    assert!(started.elapsed() >= Duration::from_secs(1));
    assert!(started.elapsed() < Duration::from_secs(5));
    assert_eq!(inbox.recv().await.unwrap(), env, "the node got it as sent");

    // The same envelope again: 409, and the node does not get it twice.
    let e = user.relay_send(&env).await.unwrap_err();
    assert_eq!(relay_status(e), 409);
    assert!(inbox.try_recv().is_err());

    // Forged: changed after signing.
    let mut forged = sealed(&user, n.twin, &nkey, 30, b"{}");
    forged.command = Deploy::NAME.into();
    assert_eq!(
        relay_status(user.relay_send(&forged).await.unwrap_err()),
        401
    );
    // Signed by someone else than its source twin.
    let (mallory, _) = g.twin().await;
    let mut forged = sealed(&mallory, n.twin, &nkey, 30, b"{}");
    forged.source = user.twin_id().unwrap();
    assert_eq!(
        relay_status(user.relay_send(&forged).await.unwrap_err()),
        401
    );
    // From a twin that does not exist.
    let mut ghost = sealed(&user, n.twin, &nkey, 30, b"{}");
    ghost.source = 9999;
    assert_eq!(
        relay_status(user.relay_send(&ghost).await.unwrap_err()),
        401
    );

    // Too large: 413 with a JSON error naming the limit.
    let big = vec![b'x'; MAX_ENVELOPE_BYTES];
    let env = sealed(&user, n.twin, &nkey, 30, &big);
    let e = user.relay_send(&env).await.unwrap_err();
    assert!(
        e.to_string().contains(&MAX_ENVELOPE_BYTES.to_string()),
        "{e}"
    );
    assert_eq!(relay_status(e), 413);

    // Expired, or living longer than allowed: 400.
    let env = sealed(&user, n.twin, &nkey, -5, b"{}");
    let e = user.relay_send(&env).await.unwrap_err();
    assert!(e.to_string().contains("expired"), "{e}");
    assert_eq!(relay_status(e), 400);
    let env = sealed(&user, n.twin, &nkey, 3600, b"{}");
    assert_eq!(relay_status(user.relay_send(&env).await.unwrap_err()), 400);

    // A reply cannot be sent as a request.
    let request = sealed(&user, n.twin, &nkey, 30, b"{}");
    let ukey = user.identity().unwrap().public_key();
    let reply = answer(n.identity(), n.twin, &request, &ukey, &Reply::Ok(json!(1)));
    let e = n.client.relay_send(&reply).await.unwrap_err();
    assert!(e.to_string().contains("reply_to"), "{e}");
    assert_eq!(relay_status(e), 400);

    // Not JSON at all.
    let (code, answer) = raw(&g.url(), "POST", SEND_PATH, b"{not json".to_vec(), None).await;
    assert_eq!(code, 400);
    assert!(error_message(&answer).contains("malformed"), "{answer}");

    // None of it reached the node.
    assert!(inbox.try_recv().is_err());
}

#[tokio::test]
async fn replies_count_only_from_the_destination_with_its_signature() {
    let g = grid(RelayConfig::default()).await;
    let n = node_twin(&g).await;
    let m = node_twin(&g).await;
    let (user, _) = g.twin().await;
    let (link, mut inbox) = manual_node(&g.url(), &n).await;
    let mut m_link = m.connect(&g.url()).await;
    let nkey = n.identity().public_key();
    let ukey = user.identity().unwrap().public_key();

    let request = sealed(&user, n.twin, &nkey, 10, b"{}");
    let sending = {
        let (user, request) = (user.clone(), request.clone());
        tokio::spawn(async move { user.relay_send(&request).await })
    };
    let got = inbox.recv().await.unwrap();
    assert_eq!(got.id, request.id);

    // Another twin answers it over its own uplink: ignored.
    let by_m = answer(m.identity(), m.twin, &got, &ukey, &Reply::Ok(json!("m")));
    m_link
        .send(UplinkFrame::Envelope { envelope: by_m })
        .await
        .unwrap();
    // The right uplink, but the reply claims another source, or its signature is not the
    // node's: ignored.
    let mut wrong_source = answer(n.identity(), n.twin, &got, &ukey, &Reply::Ok(json!("x")));
    wrong_source.source = m.twin;
    let mut bad_sig = answer(n.identity(), n.twin, &got, &ukey, &Reply::Ok(json!("y")));
    bad_sig.signature = answer(m.identity(), n.twin, &got, &ukey, &Reply::Ok(json!("y"))).signature;
    for envelope in [wrong_source, bad_sig] {
        link.lock()
            .await
            .send(UplinkFrame::Envelope { envelope })
            .await
            .unwrap();
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(!sending.is_finished(), "a forged reply was delivered");

    // The node's own reply is delivered, exactly as it sent it.
    let good = answer(n.identity(), n.twin, &got, &ukey, &Reply::Ok(json!("n")));
    link.lock()
        .await
        .send(UplinkFrame::Envelope {
            envelope: good.clone(),
        })
        .await
        .unwrap();
    let reply = sending.await.unwrap().unwrap();
    assert_eq!(reply, good);
    assert_eq!(
        reply.open(user.identity().unwrap(), &nkey).unwrap(),
        br#"{"ok":"n"}"#
    );
}

#[tokio::test]
async fn a_node_that_drops_its_uplink_fails_waiting_senders_at_once() {
    let g = grid(RelayConfig::default()).await;
    let n = node_twin(&g).await;
    let (user, _) = g.twin().await;
    let mut link = n.connect(&g.url()).await;
    let request = sealed(&user, n.twin, &n.identity().public_key(), 30, b"{}");
    let sending = {
        let (user, request) = (user.clone(), request.clone());
        tokio::spawn(async move { user.relay_send(&request).await })
    };
    let Some(Ok(UplinkFrame::Envelope { envelope })) = link.next().await else {
        panic!("the request did not arrive")
    };
    assert_eq!(envelope.id, request.id);
    let started = Instant::now();
    link.close().await.unwrap();
    let e = sending.await.unwrap().unwrap_err();
    assert_eq!(relay_status(e), 503);
    assert!(started.elapsed() < Duration::from_secs(3));
}

#[tokio::test]
async fn a_second_uplink_replaces_the_first() {
    let g = grid(RelayConfig::default()).await;
    let n = node_twin(&g).await;
    let mut first = n.connect(&g.url()).await;
    let _second = echo_node(&g.url(), &n).await;
    let ended = tokio::time::timeout(Duration::from_secs(5), first.next())
        .await
        .expect("the first uplink is closed");
    assert!(ended.is_none(), "{ended:?}");
    let (user, _) = g.twin().await;
    for _ in 0..3 {
        user.call(n.twin, "zos.x", &json!(null)).await.unwrap();
    }
}

#[tokio::test]
async fn the_uplink_needs_a_fresh_signature_of_a_registered_twin() {
    let g = grid(RelayConfig::default()).await;
    let n = node_twin(&g).await;
    let url = g.url();
    let ws = url.replacen("http://", "ws://", 1);
    let path = format!("{UPLINK_PATH}?nonce=fixed");
    let header = auth_header(
        n.identity(),
        Signer::Twin(n.twin),
        "GET",
        &path,
        unix_now(),
        b"",
    );
    let open = |auth: Option<String>| {
        let target = format!("{ws}{path}");
        async move {
            let mut req = target.into_client_request().unwrap();
            if let Some(a) = auth {
                req.headers_mut()
                    .insert("authorization", a.parse().unwrap());
            }
            tokio_tungstenite::connect_async(req).await
        }
    };
    let refused = |r: Result<_, tokio_tungstenite::tungstenite::Error>| match r {
        Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => {
            let body: serde_json::Value =
                serde_json::from_slice(resp.body().as_deref().unwrap_or_default()).unwrap();
            (resp.status().as_u16(), error_message(&body))
        }
        Err(e) => panic!("unexpected failure {e}"),
        Ok(_) => panic!("the uplink was accepted"),
    };

    // The signed upgrade works once; the same header again is a replay.
    let (mut ws1, _) = open(Some(header.clone())).await.unwrap();
    let (code, msg) = refused(open(Some(header)).await);
    assert_eq!(code, 401);
    assert!(msg.contains("already received"), "{msg}");
    // No signature, a signature by another key, a twin that does not exist, a bare key.
    let (code, _) = refused(open(None).await);
    assert_eq!(code, 401);
    let eve = Identity::generate().unwrap();
    let forged = auth_header(&eve, Signer::Twin(n.twin), "GET", &path, unix_now(), b"");
    assert_eq!(refused(open(Some(forged)).await).0, 401);
    let ghost = auth_header(&eve, Signer::Twin(9999), "GET", &path, unix_now(), b"");
    assert_eq!(refused(open(Some(ghost)).await).0, 401);
    let bare = auth_header(
        &eve,
        Signer::Key(eve.public_key()),
        "GET",
        &path,
        unix_now(),
        b"",
    );
    assert_eq!(refused(open(Some(bare)).await).0, 401);
    // The client connector reports a refusal as an API error.
    let e = uplink::connect(&url, &eve, 9999).await.unwrap_err();
    assert_eq!(e.status(), Some(401), "{e:?}");

    // A signed plain GET (no upgrade) is a clear 400.
    let get = format!("{UPLINK_PATH}?nonce=plain");
    let h = auth_header(
        n.identity(),
        Signer::Twin(n.twin),
        "GET",
        &get,
        unix_now(),
        b"",
    );
    let (code, body) = raw(&url, "GET", &get, vec![], Some(&h)).await;
    assert_eq!(code, 400, "{body}");
    assert!(error_message(&body).contains("WebSocket"), "{body}");

    // The first, valid uplink is still up: it gets a request.
    let (user, _) = g.twin().await;
    let req = sealed(&user, n.twin, &n.identity().public_key(), 2, b"{}");
    let sending = tokio::spawn({
        let user = user.clone();
        async move { user.relay_send(&req).await }
    });
    let got = tokio::time::timeout(Duration::from_secs(5), ws1.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert!(got.to_text().unwrap().contains("\"type\":\"envelope\""));
    assert_eq!(relay_status(sending.await.unwrap().unwrap_err()), 504);
}

async fn next_events(link: &mut Uplink) -> Vec<NodeEventRecord> {
    loop {
        match tokio::time::timeout(Duration::from_secs(5), link.next()).await {
            Ok(Some(Ok(UplinkFrame::Events { events }))) => return events,
            Ok(Some(Ok(_))) => continue,
            other => panic!("no events: {other:?}"),
        }
    }
}

#[tokio::test]
async fn events_reach_the_node_over_its_uplink_live_and_after_a_reconnect() {
    let g = grid(RelayConfig::default()).await;
    let n = node_twin(&g).await;
    let (user, _) = g.twin().await;
    let c = user
        .create_node_contract(&CreateNodeContract {
            node_id: n.node,
            deployment_hash: DeploymentHash([1; 32]),
            public_ips: 0,
        })
        .await
        .unwrap();
    let update = |h: u8| UpdateNodeContract {
        deployment_hash: DeploymentHash([h; 32]),
    };
    // Two events while the node is away.
    user.update_node_contract(c.id, &update(2)).await.unwrap();
    user.update_node_contract(c.id, &update(3)).await.unwrap();

    let mut link = n.connect(&g.url()).await;
    // Nothing is pushed before the node says where it stands.
    user.update_node_contract(c.id, &update(4)).await.unwrap();
    link.send(UplinkFrame::EventsAfter { seq: 1 })
        .await
        .unwrap();
    let got = next_events(&mut link).await;
    assert_eq!(got.iter().map(|e| e.seq).collect::<Vec<_>>(), [2, 3]);
    assert_eq!(
        got[0].event,
        NodeEvent::ContractUpdated {
            contract_id: c.id,
            deployment_hash: DeploymentHash([3; 32])
        }
    );

    // Live: each new event is pushed as it is recorded.
    for h in 5..8 {
        user.update_node_contract(c.id, &update(h)).await.unwrap();
        let got = next_events(&mut link).await;
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].seq, u64::from(h) - 1);
    }
    link.close().await.unwrap();

    // Away again: the cancellation waits in the log and arrives on reconnect.
    user.cancel_contract(c.id).await.unwrap();
    let mut link = n.connect(&g.url()).await;
    link.send(UplinkFrame::EventsAfter { seq: 6 })
        .await
        .unwrap();
    let got = next_events(&mut link).await;
    assert_eq!(
        got.iter()
            .map(|e| (e.seq, e.event.clone()))
            .collect::<Vec<_>>(),
        [(7, NodeEvent::ContractCancelled { contract_id: c.id })]
    );

    // A twin that is not this node gets none of its events.
    let (other, _) = g.twin().await;
    let mut theirs = uplink::connect(
        &g.url(),
        other.identity().unwrap(),
        other.twin_id().unwrap(),
    )
    .await
    .unwrap();
    theirs
        .send(UplinkFrame::EventsAfter { seq: 0 })
        .await
        .unwrap();
    let c2 = user
        .create_node_contract(&CreateNodeContract {
            node_id: n.node,
            deployment_hash: DeploymentHash([1; 32]),
            public_ips: 0,
        })
        .await
        .unwrap();
    user.cancel_contract(c2.id).await.unwrap();
    assert_eq!(next_events(&mut link).await[0].seq, 8);
    let nothing = tokio::time::timeout(Duration::from_millis(500), theirs.next()).await;
    assert!(nothing.is_err(), "a stranger's uplink got {nothing:?}");
}

#[tokio::test]
async fn a_node_that_does_not_read_loses_its_uplink_not_the_relay_memory() {
    let g = grid(RelayConfig {
        uplink_queue: 2,
        write_timeout: Duration::from_secs(2),
        ..RelayConfig::default()
    })
    .await;
    let n = node_twin(&g).await;
    let (user, _) = g.twin().await;
    let nkey = n.identity().public_key();
    // Connected, then never reads: the socket buffers fill, then the relay's queue.
    let _link = n.connect(&g.url()).await;
    let body = vec![b'z'; 700 * 1024];
    let started = Instant::now();
    let sends: Vec<_> = (0..16)
        .map(|_| {
            let env = sealed(&user, n.twin, &nkey, 20, &body);
            let user = user.clone();
            tokio::spawn(async move { user.relay_send(&env).await })
        })
        .collect();
    let mut statuses = Vec::new();
    for s in sends {
        statuses.push(relay_status(s.await.unwrap().unwrap_err()));
    }
    // The ones queued or written fail with 503 when the uplink is closed; the ones that came
    // after find the node offline (404). None waits for its expiry.
    assert!(
        statuses.iter().all(|s| *s == 503 || *s == 404),
        "{statuses:?}"
    );
    assert!(statuses.contains(&503), "{statuses:?}");
    assert!(
        started.elapsed() < Duration::from_secs(15),
        "refused before the envelopes expired"
    );
    assert!(offline(&user, n.twin, &nkey).await, "the uplink was closed");
}

#[tokio::test]
async fn requests_waiting_per_node_are_bounded_and_freed_when_senders_give_up() {
    let g = grid(RelayConfig {
        max_waiting_per_twin: 2,
        ..RelayConfig::default()
    })
    .await;
    let n = node_twin(&g).await;
    let (user, _) = g.twin().await;
    let nkey = n.identity().public_key();
    let (_link, mut inbox) = manual_node(&g.url(), &n).await;

    let waiting: Vec<_> = (0..2)
        .map(|_| {
            let env = sealed(&user, n.twin, &nkey, 3, b"{}");
            let user = user.clone();
            tokio::spawn(async move { user.relay_send(&env).await })
        })
        .collect();
    inbox.recv().await.unwrap();
    inbox.recv().await.unwrap();
    let e = user
        .relay_send(&sealed(&user, n.twin, &nkey, 3, b"{}"))
        .await
        .unwrap_err();
    assert!(e.to_string().contains("2 requests waiting"), "{e}");
    assert_eq!(relay_status(e), 503);
    for w in waiting {
        assert_eq!(relay_status(w.await.unwrap().unwrap_err()), 504);
    }

    // Senders that hang up free their places at once.
    for _ in 0..2 {
        let env = sealed(&user, n.twin, &nkey, 30, b"{}");
        let impatient = reqwest::Client::builder()
            .timeout(Duration::from_millis(300))
            .build()
            .unwrap();
        let r = impatient
            .post(format!("{}{SEND_PATH}", g.url()))
            .json(&env)
            .send()
            .await;
        assert!(r.unwrap_err().is_timeout());
    }
    let ok = eventually(Duration::from_secs(3), || async {
        let env = sealed(&user, n.twin, &nkey, 1, b"{}");
        matches!(
            user.relay_send(&env).await,
            Err(ClientError::Relay { status: 504, .. })
        )
    })
    .await;
    assert!(ok, "places were not freed");
}

#[tokio::test]
async fn a_silent_uplink_is_dropped_and_a_reading_one_is_kept() {
    let g = grid(RelayConfig {
        ping_every: Duration::from_millis(100),
        silence_limit: Duration::from_millis(400),
        ..RelayConfig::default()
    })
    .await;
    let (user, _) = g.twin().await;
    // One node reads its uplink (answering pings); the other never reads.
    let alive = node_twin(&g).await;
    let _node = echo_node(&g.url(), &alive).await;
    let dead = node_twin(&g).await;
    let _dead_link = dead.connect(&g.url()).await;
    let dkey = dead.identity().public_key();

    let dropped = eventually(Duration::from_secs(5), || offline(&user, dead.twin, &dkey)).await;
    assert!(dropped, "the silent uplink is still there");
    tokio::time::sleep(Duration::from_millis(600)).await;
    user.call(alive.twin, "zos.x", &json!(null)).await.unwrap();
}

#[tokio::test]
async fn stopping_the_grid_closes_uplinks_and_nodes_reconnect_to_its_next_run() {
    let mut g = grid(RelayConfig::default()).await;
    let n = node_twin(&g).await;
    let mut link = n.connect(&g.url()).await;
    let (user, _) = g.twin().await;
    let waiting = {
        let env = sealed(&user, n.twin, &n.identity().public_key(), 30, b"{}");
        let user = user.clone();
        tokio::spawn(async move { user.relay_send(&env).await })
    };
    assert!(matches!(
        link.next().await,
        Some(Ok(UplinkFrame::Envelope { .. }))
    ));
    let started = Instant::now();
    g.restart().await;
    let ended = tokio::time::timeout(Duration::from_secs(5), link.next())
        .await
        .expect("the uplink is closed when the grid stops");
    assert!(ended.is_none(), "{ended:?}");
    assert!(started.elapsed() < Duration::from_secs(5));
    // The request in flight failed rather than hanging until its expiry.
    let e = tokio::time::timeout(Duration::from_secs(5), waiting)
        .await
        .expect("the sender got an answer")
        .unwrap()
        .unwrap_err();
    assert!(e.is_transient(), "{e:?}");

    let _node = echo_node(&g.url(), &n).await;
    let user = GridClient::new(&g.url())
        .unwrap()
        .with_identity(user.identity().unwrap().clone())
        .with_twin(user.twin_id().unwrap());
    user.call(n.twin, "zos.x", &json!(null)).await.unwrap();
}
