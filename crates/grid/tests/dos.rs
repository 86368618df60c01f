//! No one party can take the grid down: floods of signed requests and envelopes, slow and many
//! connections, and large bodies with bad signatures, each against a real grid on loopback,
//! while another party's request still goes through.
//!
//! The fake nodes echo any command: the names sent here (`zos.test.echo`…) are outside the
//! node protocol on purpose (see `common/nodes.rs`).

mod common;

use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use common::nodes::{echo_node, grid, node_twin, sealed};
use common::{TestGrid, auth_header, raw};
use futures::{SinkExt, StreamExt};
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use zos_grid::clock::Clock;
use zos_grid::relay::RelayConfig;
use zos_grid::replay::ReplayConfig;
use zos_grid::server::ServerLimits;
use zos_types::auth::{Signer, unix_now};
use zos_types::registry::API_PREFIX;
use zos_types::relay::UPLINK_PATH;
use zos_types::{Identity, TwinId};

/// Requests sent at once by the floods.
const FLOOD_CONCURRENCY: usize = 16;

/// A bare-key signed POST of `body` to `path` (of the registry API), by a new key each time;
/// the status.
async fn bare_key_post(
    http: &reqwest::Client,
    g: &TestGrid,
    path: &str,
    body: serde_json::Value,
) -> u16 {
    let id = Identity::generate().unwrap();
    signed_post(http, g, &id, Signer::Key(id.public_key()), path, body).await
}

/// A POST of `body` to `path` (of the registry API) signed by `signer` with `id`, stamped with
/// the grid's clock (the typed client stamps with the system's); the status.
async fn signed_post(
    http: &reqwest::Client,
    g: &TestGrid,
    id: &Identity,
    signer: Signer,
    path: &str,
    body: serde_json::Value,
) -> u16 {
    let bytes = serde_json::to_vec(&body).unwrap();
    let path = format!("{API_PREFIX}{path}");
    let auth = auth_header(id, signer, "POST", &path, g.clock.now(), &bytes);
    let resp = http
        .post(format!("{}{path}", g.url()))
        .header("content-type", "application/json")
        .header("authorization", auth)
        .body(bytes)
        .send()
        .await
        .expect("the grid answers");
    resp.status().as_u16()
}

#[tokio::test]
async fn bare_key_flood_at_the_replay_cache_size_does_not_lock_out_twins() {
    let g = TestGrid::start_with(|c| {
        c.replay = ReplayConfig {
            capacity: 1_000,
            per_twin: 100,
            bare_keys: 100,
        }
    })
    .await;
    let (farmer, _) = g.twin().await;
    let http = reqwest::Client::new();
    // As many bare-key requests as the cache holds, to a route that takes only twins: each is
    // refused before anything is recorded.
    let statuses: Vec<u16> = futures::stream::iter(0..1_000)
        .map(|i| bare_key_post(&http, &g, "/farms", json!({ "name": format!("flood-{i}") })))
        .buffer_unordered(FLOOD_CONCURRENCY)
        .collect()
        .await;
    assert!(statuses.iter().all(|s| *s == 401), "{statuses:?}");
    // And as many to twin creation, with bodies the handler refuses: they fill the bare-key
    // pool (where the farmer's own creation took one place), which answers 503 to twin
    // creation beyond it, and to nothing else.
    let statuses: Vec<u16> = futures::stream::iter(0..1_000)
        .map(|_| {
            let other = Identity::generate().unwrap().public_key();
            bare_key_post(
                &http,
                &g,
                "/twins",
                json!({ "public_key": other.to_string() }),
            )
        })
        .buffer_unordered(FLOOD_CONCURRENCY)
        .collect()
        .await;
    assert_eq!(statuses.iter().filter(|s| **s == 403).count(), 99);
    assert_eq!(statuses.iter().filter(|s| **s == 503).count(), 901);
    // A farmer's signed request still goes through.
    let farm = farmer.create_farm("after-the-flood").await.unwrap();
    assert_eq!(farm.name, "after-the-flood");
    // Twin creation is back once the flood's signatures left the window.
    let fresh = Identity::generate().unwrap();
    let e = g
        .client()
        .with_identity(fresh.clone())
        .create_twin(None)
        .await
        .unwrap_err();
    assert_eq!(e.status(), Some(503), "{e}");
    assert!(e.to_string().contains("try again in a minute"), "{e}");
    g.clock.advance(zos_types::auth::MAX_SKEW_SECS + 1);
    let create = json!({ "public_key": fresh.public_key().to_string() });
    let key = Signer::Key(fresh.public_key());
    assert_eq!(
        signed_post(&http, &g, &fresh, key, "/twins", create).await,
        201
    );
}

#[tokio::test]
async fn a_twin_over_its_replay_share_gets_429_and_other_twins_are_served() {
    let g = TestGrid::start_with(|c| {
        c.replay = ReplayConfig {
            capacity: 1_000,
            per_twin: 20,
            bare_keys: 100,
        }
    })
    .await;
    let (greedy, twin) = g.twin().await;
    let (other, _) = g.twin().await;
    let http = reqwest::Client::new();
    let id = greedy.identity().unwrap();
    let farm = |i: u32| json!({ "name": format!("greedy-{i}") });
    let as_greedy = Signer::Twin(twin.id);
    for i in 0..20 {
        assert_eq!(
            signed_post(&http, &g, id, as_greedy, "/farms", farm(i)).await,
            201
        );
    }
    let e = greedy.create_farm("greedy-20").await.unwrap_err();
    assert_eq!(e.status(), Some(429), "{e}");
    assert!(e.to_string().contains("its share"), "{e}");
    other.create_farm("patient").await.unwrap();
    // Its share is free again once its requests left the window.
    g.clock.advance(zos_types::auth::MAX_SKEW_SECS + 1);
    assert_eq!(
        signed_post(&http, &g, id, as_greedy, "/farms", farm(20)).await,
        201
    );
}

#[tokio::test]
async fn envelope_flood_to_absent_and_offline_twins_keeps_no_place_in_the_seen_set() {
    let g = grid(RelayConfig {
        max_seen: 1_000,
        ..RelayConfig::default()
    })
    .await;
    let live = node_twin(&g).await;
    let offline = node_twin(&g).await;
    let _node = echo_node(&g.url(), &live).await;
    let (attacker, _) = g.twin().await;
    let offline_key = offline.identity().public_key();
    let absent_key = Identity::generate().unwrap().public_key();
    let statuses: Vec<Option<u16>> = futures::stream::iter(0..1_000u32)
        .map(|i| {
            let attacker = attacker.clone();
            let (dest, key): (TwinId, _) = if i % 2 == 0 {
                (offline.twin, offline_key)
            } else {
                (1_000_000 + i, absent_key)
            };
            async move {
                let env = sealed(&attacker, dest, &key, 300, b"{}");
                attacker
                    .relay_send(&env)
                    .await
                    .err()
                    .and_then(|e| e.status())
            }
        })
        .buffer_unordered(FLOOD_CONCURRENCY)
        .collect()
        .await;
    assert!(statuses.iter().all(|s| *s == Some(404)), "{statuses:?}");
    // A call to a live node still succeeds.
    let (user, _) = g.twin().await;
    let v = user
        .call(live.twin, "zos.test.echo", &json!({ "after": "flood" }))
        .await
        .unwrap();
    assert_eq!(v["body"]["after"], "flood");
}

#[tokio::test]
async fn a_twin_flooding_a_live_node_gets_429_and_other_twins_still_get_through() {
    let g = grid(RelayConfig {
        max_seen: 1_000,
        max_seen_per_twin: 50,
        ..RelayConfig::default()
    })
    .await;
    let live = node_twin(&g).await;
    let _node = echo_node(&g.url(), &live).await;
    let (attacker, _) = g.twin().await;
    let mut refused = None;
    for i in 0..60 {
        match attacker
            .call(live.twin, "zos.test.echo", &json!({ "i": i }))
            .await
        {
            Ok(_) => assert!(i < 50, "call {i} went through beyond the share"),
            Err(e) => {
                refused = Some((i, e));
                break;
            }
        }
    }
    let (i, e) = refused.expect("the attacker is refused");
    assert_eq!(i, 50);
    assert_eq!(e.status(), Some(429), "{e}");
    let (user, _) = g.twin().await;
    let v = user
        .call(live.twin, "zos.test.echo", &json!({ "ok": true }))
        .await
        .unwrap();
    assert_eq!(v["body"]["ok"], true);
}

/// Reads what the server sends until it closes the connection or `limit` passes; `None` if it
/// is still open then.
async fn read_until_closed(tcp: &mut TcpStream, limit: Duration) -> Option<Vec<u8>> {
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    let end = tokio::time::Instant::now() + limit;
    loop {
        match tokio::time::timeout_at(end, tcp.read(&mut buf)).await {
            Err(_) => return None,
            Ok(Ok(0)) | Ok(Err(_)) => return Some(got),
            Ok(Ok(n)) => got.extend_from_slice(&buf[..n]),
        }
    }
}

#[tokio::test]
async fn slow_loris_connection_is_closed_after_the_header_timeout_while_others_are_served() {
    let g = TestGrid::start_with(|c| {
        c.server = ServerLimits {
            header_timeout: Duration::from_secs(1),
            ..ServerLimits::default()
        }
    })
    .await;
    let addr: SocketAddr = g.url().trim_start_matches("http://").parse().unwrap();
    let mut slow = TcpStream::connect(addr).await.unwrap();
    let started = Instant::now();
    slow.write_all(b"GET /api/v1/health HTTP/1.1\r\nHost: grid\r\n")
        .await
        .unwrap();
    // One header byte every 100 ms, never ending the head.
    let (mut rd, mut wr) = slow.into_split();
    let dribble = tokio::spawn(async move {
        for b in b"X-Slow: ".iter().chain([b'a'; 200].iter()).cycle() {
            if wr.write_all(&[*b]).await.is_err() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    });
    // Meanwhile others are served.
    let (status, health) = raw(&g.url(), "GET", "/api/v1/health", vec![], None).await;
    assert_eq!(status, 200, "{health}");
    let mut buf = [0u8; 1024];
    let closed = tokio::time::timeout(Duration::from_secs(5), rd.read(&mut buf)).await;
    let elapsed = started.elapsed();
    dribble.abort();
    let n = closed
        .expect("the slow connection is closed within 5 s")
        .unwrap_or(0);
    assert!(
        !String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"),
        "the dribbled request was not served"
    );
    assert!(
        elapsed >= Duration::from_millis(900),
        "closed after {elapsed:?}"
    );
}

/// A client connection from `local` (any 127.0.0.0/8 address works on loopback).
async fn connect_from(local: IpAddr, to: SocketAddr) -> TcpStream {
    let socket = TcpSocket::new_v4().unwrap();
    socket.bind(SocketAddr::new(local, 0)).unwrap();
    socket.connect(to).await.unwrap()
}

/// A GET of the health route on a fresh connection from `local`; the status line.
async fn health_from(local: IpAddr, to: SocketAddr) -> String {
    let mut tcp = connect_from(local, to).await;
    tcp.write_all(b"GET /api/v1/health HTTP/1.1\r\nHost: grid\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let got = read_until_closed(&mut tcp, Duration::from_secs(5))
        .await
        .expect("the grid answers and closes");
    let text = String::from_utf8_lossy(&got).to_string();
    text.lines().next().unwrap_or_default().to_string()
}

#[tokio::test]
async fn more_connections_from_one_address_than_the_cap_are_refused_while_others_are_served() {
    let g = TestGrid::start_with(|c| {
        c.server = ServerLimits {
            max_connections_per_ip: 4,
            ..ServerLimits::default()
        }
    })
    .await;
    let addr: SocketAddr = g.url().trim_start_matches("http://").parse().unwrap();
    let hog: IpAddr = "127.0.0.1".parse().unwrap();
    let mut held = Vec::new();
    for _ in 0..4 {
        held.push(connect_from(hog, addr).await);
    }
    // The fifth from the same address is answered 429 and closed.
    let mut fifth = connect_from(hog, addr).await;
    let got = read_until_closed(&mut fifth, Duration::from_secs(5))
        .await
        .expect("the grid closes the connection over the cap");
    let text = String::from_utf8_lossy(&got);
    assert!(text.starts_with("HTTP/1.1 429"), "{text}");
    assert!(text.contains("close idle ones"), "{text}");
    // Another address is served.
    let other: IpAddr = "127.0.0.2".parse().unwrap();
    assert_eq!(health_from(other, addr).await, "HTTP/1.1 200 OK");
    // A closed connection gives its place back.
    drop(held.pop());
    let end = Instant::now() + Duration::from_secs(5);
    loop {
        let status = health_from(hog, addr).await;
        if status == "HTTP/1.1 200 OK" {
            break;
        }
        assert!(Instant::now() < end, "the place never came back: {status}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Sends the head of a hub upload claiming a body of `declared` bytes with `auth`, then 64 KiB
/// of it, and waits for the answer. Returns the status line and the bytes of body sent.
async fn upload_head_only(g: &TestGrid, path: &str, declared: u64, auth: &str) -> (String, usize) {
    let addr: SocketAddr = g.url().trim_start_matches("http://").parse().unwrap();
    let mut tcp = TcpStream::connect(addr).await.unwrap();
    let head = format!(
        "POST {path} HTTP/1.1\r\nHost: grid\r\nContent-Type: application/octet-stream\r\n\
         Content-Length: {declared}\r\nAuthorization: {auth}\r\n\r\n"
    );
    tcp.write_all(head.as_bytes()).await.unwrap();
    let chunk = vec![0u8; 64 * 1024];
    tcp.write_all(&chunk).await.unwrap();
    let got = read_until_closed(&mut tcp, Duration::from_secs(5)).await;
    let text = String::from_utf8_lossy(got.as_deref().unwrap_or_default()).to_string();
    let status = text
        .lines()
        .next()
        .unwrap_or("no answer in 5 s")
        .to_string();
    (status, chunk.len())
}

#[tokio::test]
async fn oversized_upload_with_a_bad_signer_is_refused_before_its_body_is_read() {
    let g = TestGrid::start().await;
    let (owner, twin) = g.twin().await;
    let max = zos_flist::hub::DEFAULT_MAX_FLIST_BYTES;
    let path = format!("{}/flists/big", zos_flist::hub::HUB_PATH);
    let now = g.clock.now();
    let id = owner.identity().unwrap();
    let sig = |path: &str, signer, ts| auth_header(id, signer, "POST", path, ts, b"");
    let bad_name = format!("{}/flists/-not a name", zos_flist::hub::HUB_PATH).replace(' ', "%20");
    let cases = [
        (
            "an absent twin",
            &path,
            sig(&path, Signer::Twin(twin.id + 1000), now),
            401,
        ),
        (
            "a bare key",
            &path,
            sig(&path, Signer::Key(id.public_key()), now),
            401,
        ),
        (
            "a stale timestamp",
            &path,
            sig(&path, Signer::Twin(twin.id), now - 3_600),
            401,
        ),
        (
            "a bad name",
            &bad_name,
            sig(&bad_name, Signer::Twin(twin.id), now),
            400,
        ),
    ];
    for (what, path, auth, want) in cases {
        let started = Instant::now();
        let (status, sent) = upload_head_only(&g, path, max, &auth).await;
        assert!(
            status.starts_with(&format!("HTTP/1.1 {want}")),
            "{what}: {status} after {:?}",
            started.elapsed()
        );
        assert!(
            sent < max as usize / 100,
            "{what}: answered after {sent} bytes"
        );
    }
}

#[tokio::test]
async fn an_idle_connection_is_closed_after_the_header_timeout() {
    let g = TestGrid::start_with(|c| {
        c.server = ServerLimits {
            header_timeout: Duration::from_secs(1),
            ..ServerLimits::default()
        }
    })
    .await;
    let addr: SocketAddr = g.url().trim_start_matches("http://").parse().unwrap();
    let started = Instant::now();
    let mut idle = TcpStream::connect(addr).await.unwrap();
    let closed = read_until_closed(&mut idle, Duration::from_secs(5)).await;
    assert!(closed.is_some(), "still open after 5 s");
    assert!(started.elapsed() >= Duration::from_millis(900));
    // The same after a first request on a kept-alive connection.
    let mut kept = TcpStream::connect(addr).await.unwrap();
    kept.write_all(b"GET /api/v1/health HTTP/1.1\r\nHost: grid\r\n\r\n")
        .await
        .unwrap();
    let started = Instant::now();
    let got = read_until_closed(&mut kept, Duration::from_secs(5)).await;
    let text = String::from_utf8_lossy(got.as_deref().expect("closed within 5 s")).to_string();
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    assert!(started.elapsed() >= Duration::from_millis(900));
}

/// An uplink of `twin` opened from the local address `local`, as a bare WebSocket.
async fn uplink_from(
    local: IpAddr,
    addr: SocketAddr,
    identity: &Identity,
    twin: TwinId,
) -> tokio_tungstenite::WebSocketStream<TcpStream> {
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    let target = format!(
        "{UPLINK_PATH}?nonce={}",
        zos_types::envelope::new_id().unwrap()
    );
    let mut req = format!("ws://{addr}{target}")
        .into_client_request()
        .unwrap();
    let auth = auth_header(
        identity,
        Signer::Twin(twin),
        "GET",
        &target,
        unix_now(),
        b"",
    );
    req.headers_mut()
        .insert("authorization", auth.parse().unwrap());
    let tcp = connect_from(local, addr).await;
    tokio_tungstenite::client_async(req, tcp)
        .await
        .expect("the uplink is accepted")
        .0
}

#[tokio::test]
async fn uplinks_outlive_the_request_timeout_and_count_against_the_address_cap() {
    use tokio_tungstenite::tungstenite::Message;
    let g = TestGrid::start_with(|c| {
        c.clock = std::sync::Arc::new(zos_grid::clock::SystemClock);
        c.server = ServerLimits {
            max_connections_per_ip: 16,
            header_timeout: Duration::from_secs(1),
            request_timeout: Duration::from_secs(1),
            ..ServerLimits::default()
        }
    })
    .await;
    let addr: SocketAddr = g.url().trim_start_matches("http://").parse().unwrap();
    let node = node_twin(&g).await;
    let _echo = echo_node(&g.url(), &node).await;
    let mut twins = Vec::new();
    for _ in 0..16 {
        let (client, twin) = g.twin().await;
        twins.push((client.identity().unwrap().clone(), twin.id));
    }
    // Sixteen uplinks from one address, held past every request and header timeout.
    let far: IpAddr = "127.0.0.3".parse().unwrap();
    let mut links = Vec::new();
    for (identity, twin) in &twins {
        links.push(uplink_from(far, addr, identity, *twin).await);
    }
    tokio::time::sleep(Duration::from_millis(2_500)).await;
    for link in &mut links {
        link.send(Message::Ping(b"alive".to_vec().into()))
            .await
            .unwrap();
        let pong = tokio::time::timeout(Duration::from_secs(5), link.next())
            .await
            .expect("the uplink answers")
            .expect("the uplink is open")
            .unwrap();
        assert!(matches!(pong, Message::Pong(_)), "{pong:?}");
    }
    // They hold that address's places: one more connection from it is refused.
    let mut extra = connect_from(far, addr).await;
    let got = read_until_closed(&mut extra, Duration::from_secs(5))
        .await
        .expect("the grid closes the connection over the cap");
    assert!(String::from_utf8_lossy(&got).starts_with("HTTP/1.1 429"));
    // A node's uplink opened before the pause still carries calls.
    let (user, _) = g.twin().await;
    let v = user
        .call(node.twin, "zos.test.echo", &json!({ "late": true }))
        .await
        .unwrap();
    assert_eq!(v["body"]["late"], true);
    for mut link in links {
        let _ = link.close(None).await;
    }
}

/// Sends a twin-signed `POST /farms` head claiming `declared` body bytes, then feeds the body
/// one byte every `every` (forever, or until the grid answers); the status line and when.
async fn dribbled_body(
    g: &TestGrid,
    declared: usize,
    every: Option<Duration>,
) -> (String, Duration) {
    let (client, twin) = g.twin().await;
    let path = format!("{API_PREFIX}/farms");
    let body = vec![b' '; declared];
    let auth = auth_header(
        client.identity().unwrap(),
        Signer::Twin(twin.id),
        "POST",
        &path,
        g.clock.now(),
        &body,
    );
    let addr: SocketAddr = g.url().trim_start_matches("http://").parse().unwrap();
    let tcp = TcpStream::connect(addr).await.unwrap();
    let (mut rd, mut wr) = tcp.into_split();
    let head = format!(
        "POST {path} HTTP/1.1\r\nHost: grid\r\nContent-Type: application/json\r\n\
         Content-Length: {declared}\r\nAuthorization: {auth}\r\n\r\n"
    );
    wr.write_all(head.as_bytes()).await.unwrap();
    let started = Instant::now();
    let feeder = tokio::spawn(async move {
        let Some(every) = every else {
            return wr; // Nothing more is sent.
        };
        for _ in 0..declared {
            if wr.write_all(b" ").await.is_err() {
                break;
            }
            tokio::time::sleep(every).await;
        }
        wr
    });
    let mut buf = vec![0u8; 4096];
    let n = tokio::time::timeout(Duration::from_secs(10), rd.read(&mut buf))
        .await
        .expect("the grid answers within 10 s")
        .unwrap();
    let elapsed = started.elapsed();
    feeder.abort();
    let text = String::from_utf8_lossy(&buf[..n]).to_string();
    (text.lines().next().unwrap_or_default().to_string(), elapsed)
}

#[tokio::test]
async fn a_body_that_stops_arriving_fails_after_the_body_timeout() {
    let g = TestGrid::start_with(|c| {
        c.server = ServerLimits {
            body_timeout: Duration::from_secs(1),
            ..ServerLimits::default()
        }
    })
    .await;
    let (status, after) = dribbled_body(&g, 1_000, None).await;
    assert!(status.starts_with("HTTP/1.1 400"), "{status}");
    assert!(
        after >= Duration::from_millis(900),
        "answered after {after:?}"
    );
}

#[tokio::test]
async fn a_body_dribbled_past_the_request_timeout_gets_408() {
    let g = TestGrid::start_with(|c| {
        c.server = ServerLimits {
            request_timeout: Duration::from_secs(1),
            ..ServerLimits::default()
        }
    })
    .await;
    // A byte every 100 ms never trips the body timeout (30 s) but the whole request's.
    let (status, after) = dribbled_body(&g, 1_000, Some(Duration::from_millis(100))).await;
    assert!(status.starts_with("HTTP/1.1 408"), "{status}");
    assert!(
        after >= Duration::from_millis(900),
        "answered after {after:?}"
    );
}
