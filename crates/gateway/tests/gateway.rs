//! The `zos-gateway` process end to end on loopback: routes pushed through its control
//! socket, real backends (axum HTTP servers, a rustls TLS server), and `curl` as the client
//! (HTTP/1.1, HTTP/2, TLS with `--resolve` and a CA file), a WebSocket client, raw TCP for the
//! limits.

mod common;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use common::*;
use futures::{SinkExt, StreamExt};
use rcgen::KeyPair;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use zos_gateway::Tls;
use zos_gateway::control::{ControlError, Request};

#[tokio::test(flavor = "multi_thread")]
async fn plain_http_routes_by_host_streams_counts_and_refuses() {
    let gw = Gw::start(&["--health-secs", "1"]).await;
    let (a, b) = (backend("a").await, backend("b").await);
    let dead = dead_addr().await;
    gw.routes(vec![
        route("w1", "a.gw.example", Tls::Plain, &[a]),
        route("w2", "b.gw.example", Tls::Terminate, &[b]),
        route("w3", "c.gw.example", Tls::Plain, &[dead, b]),
        route("w4", "p.gw.example", Tls::Passthrough, &[a]),
    ])
    .await;
    let port = gw.http.port();
    let url = |host: &str, path: &str| format!("http://{host}:{port}{path}");

    // Routed by host, with the forwarded headers; what the client claims of earlier hops and
    // hop-by-hop headers it names do not reach the backend.
    let r = curl(
        &url("a.gw.example", "/echo"),
        ("a.gw.example", port),
        &[
            "-H",
            "X-Forwarded-For: 6.6.6.6",
            "-H",
            "Connection: x-secret",
            "-H",
            "X-Secret: 1",
        ],
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.body);
    let v = json(&r.body);
    assert_eq!(v["backend"], "a");
    assert_eq!(v["host"], "a.gw.example");
    assert_eq!(v["xff"], "127.0.0.1");
    assert_eq!(v["proto"], "http");
    assert_eq!(v["xfh"], "a.gw.example");
    assert_eq!(v["secret"], "");
    let r = curl(&url("b.gw.example", "/echo"), ("b.gw.example", port), &[]).await;
    assert_eq!(json(&r.body)["backend"], "b");

    // Unknown hosts, and passthrough hosts on plain HTTP: 404 with the reason.
    let r = curl(&url("x.gw.example", "/echo"), ("x.gw.example", port), &[]).await;
    assert_eq!(r.status, 404);
    assert!(r.body.contains("no route for x.gw.example"), "{}", r.body);
    let r = curl(&url("p.gw.example", "/echo"), ("p.gw.example", port), &[]).await;
    assert_eq!(r.status, 404);

    // Bodies stream both ways and are counted for the route.
    let before = gw.meter("w1").await;
    let upload = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(upload.path(), vec![b'u'; 3 << 20]).unwrap();
    let r = curl(
        &url("a.gw.example", "/echo"),
        ("a.gw.example", port),
        &["--data-binary", &format!("@{}", upload.path().display())],
    )
    .await;
    assert_eq!(json(&r.body)["len"], 3 << 20);
    let r = curl(&url("a.gw.example", "/big"), ("a.gw.example", port), &[]).await;
    assert_eq!(r.body.len(), 1 << 20);
    let after = gw.meter("w1").await;
    assert_eq!(after.requests, before.requests + 2);
    assert!(after.rx >= before.rx + (3 << 20), "{after:?}");
    assert!(after.tx >= before.tx + (1 << 20), "{after:?}");

    // An oversize request head: 431.
    let big = format!("X-Big: {}", "h".repeat(40 * 1024));
    let r = curl(
        &url("a.gw.example", "/echo"),
        ("a.gw.example", port),
        &["-H", &big],
    )
    .await;
    assert_eq!(r.status, 431, "{}", r.body);

    // A dead backend: requests go to the live one, and the checks take the dead one out.
    for _ in 0..4 {
        let r = curl(&url("c.gw.example", "/echo"), ("c.gw.example", port), &[]).await;
        assert_eq!(r.status, 200, "{}", r.body);
        assert_eq!(json(&r.body)["backend"], "b");
    }
    eventually("the dead backend out of the rotation", || async {
        let s = gw.status().await;
        let c = s.iter().find(|r| r.id == "w3").unwrap();
        !c.backends[0].healthy && c.backends[1].healthy
    })
    .await;

    // Refused tables change nothing; bad requests get a reason and the socket stays usable.
    let dup = vec![
        route("w1", "a.gw.example", Tls::Plain, &[a]),
        route("w9", "a.gw.example", Tls::Plain, &[b]),
    ];
    let e = gw
        .call(Request::SetRoutes { routes: dup })
        .await
        .unwrap_err();
    assert!(e.to_string().contains("routed twice"), "{e}");
    let mut raw = tokio::net::UnixStream::connect(&gw.control).await.unwrap();
    raw.write_all(b"{\"op\":\"status\",\"extra\":1}\nnot json\n{\"op\":\"hello\"}\n")
        .await
        .unwrap();
    let mut got = String::new();
    let mut buf = [0u8; 4096];
    while got.lines().count() < 3 {
        let n = raw.read(&mut buf).await.unwrap();
        assert!(n > 0, "{got}");
        got.push_str(std::str::from_utf8(&buf[..n]).unwrap());
    }
    let lines: Vec<&str> = got.lines().collect();
    assert!(lines[0].contains("unknown field"), "{}", lines[0]);
    assert!(lines[1].contains("not a control request"), "{}", lines[1]);
    assert!(lines[2].contains("\"protocol\":1"), "{}", lines[2]);
    let r = curl(&url("a.gw.example", "/echo"), ("a.gw.example", port), &[]).await;
    assert_eq!(json(&r.body)["backend"], "a", "the old table still serves");
}

#[tokio::test(flavor = "multi_thread")]
async fn tls_ends_at_the_gateway_with_http2_and_checks_the_server_name() {
    let gw = Gw::start(&[]).await;
    let a = backend("a").await;
    let (ca, chain, key) = issue(&["*.gw.example"]);
    let ca_file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(ca_file.path(), &ca).unwrap();
    let cafile = ca_file.path().display().to_string();
    assert!(matches!(
        gw.call(Request::SetCertificate {
            host: "*.gw.example".into(),
            chain_pem: chain.clone(),
            key_pem: KeyPair::generate().unwrap().serialize_pem(),
        })
        .await,
        Err(ControlError::Refused(m)) if m.contains("does not fit")
    ));
    gw.call(Request::SetCertificate {
        host: "*.gw.example".into(),
        chain_pem: chain,
        key_pem: key,
    })
    .await
    .unwrap();
    gw.routes(vec![
        route("t1", "app.gw.example", Tls::Terminate, &[a]),
        route("t2", "other.gw.example", Tls::Terminate, &[a]),
        route("t3", "plain.gw.example", Tls::Plain, &[a]),
    ])
    .await;
    let port = gw.https.port();
    let url = |host: &str| format!("https://{host}:{port}/echo");

    let r = curl(
        &url("app.gw.example"),
        ("app.gw.example", port),
        &["--cacert", &cafile],
    )
    .await;
    assert_eq!((r.status, r.version.as_str()), (200, "2"), "{}", r.body);
    let v = json(&r.body);
    assert_eq!(v["proto"], "https");
    assert_eq!(v["host"], "app.gw.example");
    let r = curl(
        &url("app.gw.example"),
        ("app.gw.example", port),
        &["--cacert", &cafile, "--http1.1"],
    )
    .await;
    assert_eq!((r.status, r.version.as_str()), (200, "1.1"));

    // A request for another host on this TLS connection: 421, even when that host is routed.
    let r = curl(
        &url("app.gw.example"),
        ("app.gw.example", port),
        &[
            "--cacert",
            &cafile,
            "--http1.1",
            "-H",
            "Host: other.gw.example",
        ],
    )
    .await;
    assert_eq!(r.status, 421, "{}", r.body);

    // Garbage, and a "hello" larger than any real one, are dropped; the gateway serves on.
    for junk in [b"GET / HTTP/1.1\r\n\r\n".to_vec(), {
        // A TLS handshake record header announcing 48 KiB, then that much.
        let mut v = vec![0x16, 0x03, 0x01, 0xc0, 0x00];
        v.resize(5 + 48 * 1024, 0x01);
        v
    }] {
        let mut tcp = tokio::net::TcpStream::connect(gw.https).await.unwrap();
        let _ = tcp.write_all(&junk).await;
        let n = tokio::time::timeout(Duration::from_secs(20), tcp.read(&mut [0u8; 64]))
            .await
            .expect("the gateway closes the connection")
            .unwrap_or(0);
        assert_eq!(n, 0, "nothing is answered to junk");
    }
    let r = curl(
        &url("app.gw.example"),
        ("app.gw.example", port),
        &["--cacert", &cafile],
    )
    .await;
    assert_eq!(r.status, 200);

    // No TLS for unknown names nor for plain-only routes: the handshake fails.
    for host in ["nobody.gw.example", "plain.gw.example"] {
        let r = curl(&url(host), (host, port), &["--cacert", &cafile]).await;
        assert_eq!(r.status, 0, "{host}: {}", r.body);
        assert_ne!(r.exit, 0, "{host}");
    }
}

/// A TLS server with its own certificate, answering one fixed HTTP response per connection.
async fn tls_backend(chain: &str, key: &str) -> SocketAddr {
    use rustls::pki_types::pem::PemObject;
    let certs = rustls::pki_types::CertificateDer::pem_slice_iter(chain.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .unwrap();
    let key = rustls::pki_types::PrivateKeyDer::from_pem_slice(key.as_bytes()).unwrap();
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(certs, key)
    .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let (tcp, _) = listener.accept().await.unwrap();
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(mut tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let mut buf = vec![0u8; 4096];
                let _ = tls.read(&mut buf).await;
                let body = "from the TLS backend";
                let resp = format!(
                    "HTTP/1.1 200 OK\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = tls.write_all(resp.as_bytes()).await;
                let _ = tls.shutdown().await;
            });
        }
    });
    addr
}

#[tokio::test(flavor = "multi_thread")]
async fn passthrough_hands_the_backends_own_certificate_to_the_client() {
    let gw = Gw::start(&[]).await;
    let (ca, chain, key) = issue(&["pass.gw.example"]);
    let backend = tls_backend(&chain, &key).await;
    let dead = dead_addr().await;
    gw.routes(vec![route(
        "p1",
        "pass.gw.example",
        Tls::Passthrough,
        &[dead, backend],
    )])
    .await;
    let ca_file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(ca_file.path(), &ca).unwrap();
    let port = gw.https.port();
    // The gateway holds no certificate at all: the one the client checks is the backend's.
    let r = curl(
        &format!("https://pass.gw.example:{port}/"),
        ("pass.gw.example", port),
        &["--cacert", &ca_file.path().display().to_string()],
    )
    .await;
    assert_eq!(r.status, 200, "exit {}: {} {}", r.exit, r.body, r.stderr);
    assert_eq!(r.body, "from the TLS backend");
    let m = gw.meter("p1").await;
    assert_eq!(m.requests, 1);
    assert!(m.rx > 200 && m.tx > 500, "{m:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn websockets_go_through_and_limits_hold() {
    let gw = Gw::start(&["--idle-secs", "2", "--per-client", "4"]).await;
    let a = backend("a").await;
    gw.routes(vec![route("ws", "ws.gw.example", Tls::Plain, &[a])])
        .await;

    // A WebSocket through the gateway: the upgrade and the messages both ways.
    let tcp = tokio::net::TcpStream::connect(gw.http).await.unwrap();
    let (mut ws, resp) = tokio_tungstenite::client_async("ws://ws.gw.example/ws", tcp)
        .await
        .unwrap();
    assert_eq!(resp.status(), 101);
    for i in 0..3 {
        ws.send(tokio_tungstenite::tungstenite::Message::Text(
            format!("ping {i}").into(),
        ))
        .await
        .unwrap();
        let got = ws.next().await.unwrap().unwrap();
        assert_eq!(got.into_text().unwrap().as_str(), format!("echo ping {i}"));
    }
    drop(ws);
    assert!(gw.meter("ws").await.tx > 0);

    // One client gets at most 4 connections: the 5th is closed at once, the 4 stay open.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut held = Vec::new();
    for _ in 0..4 {
        held.push(tokio::net::TcpStream::connect(gw.http).await.unwrap());
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut fifth = tokio::net::TcpStream::connect(gw.http).await.unwrap();
    let n = tokio::time::timeout(Duration::from_secs(10), fifth.read(&mut [0u8; 16]))
        .await
        .expect("the fifth connection is closed")
        .unwrap_or(0);
    assert_eq!(n, 0);
    // An idle connection is closed by the gateway (idle limit 2 s).
    let closed = tokio::time::timeout(Duration::from_secs(30), held[0].read(&mut [0u8; 16]))
        .await
        .expect("the idle connection is closed");
    assert!(matches!(closed, Ok(0) | Err(_)));
    drop(held);
    wait_closed(&gw).await;
}

/// Waits until a new connection is served again (the held ones are gone).
async fn wait_closed(gw: &Gw) {
    eventually("a connection served after the held ones closed", || async {
        let r = curl(
            &format!("http://ws.gw.example:{}/echo", gw.http.port()),
            ("ws.gw.example", gw.http.port()),
            &[],
        )
        .await;
        r.status == 200
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn backends_in_tenants_namespaces_with_the_same_address_stay_apart() {
    if !zos_testkit::require_root("backends_in_tenants_namespaces_with_the_same_address_stay_apart")
    {
        return;
    }
    let gw = Gw::start(&[]).await;
    let id = std::process::id();
    let a = zos_testkit::netns::Netns::create(&format!("zgw-a-{id}")).unwrap();
    let b = zos_testkit::netns::Netns::create(&format!("zgw-b-{id}")).unwrap();
    // Both tenants' backends have the same address, each in its own network.
    let addr: SocketAddr = "127.0.0.1:8080".parse().unwrap();
    backend_in(a.name(), "tenant-a", addr);
    backend_in(b.name(), "tenant-b", addr);
    let t = |ns: &str| zos_gateway::Target {
        addr,
        netns: Some(ns.to_string()),
    };
    let gone = format!("zgw-gone-{id}");
    gw.routes(vec![
        zos_gateway::Route {
            id: "ta".into(),
            host: "a.gw.example".into(),
            tls: Tls::Plain,
            backends: vec![t(a.name())],
        },
        zos_gateway::Route {
            id: "tb".into(),
            host: "b.gw.example".into(),
            tls: Tls::Plain,
            backends: vec![t(b.name())],
        },
        zos_gateway::Route {
            id: "tg".into(),
            host: "gone.gw.example".into(),
            tls: Tls::Plain,
            backends: vec![t(&gone)],
        },
    ])
    .await;
    let port = gw.http.port();
    // Kept-alive pooled connections included: each name always reaches its own tenant.
    for _ in 0..3 {
        for (host, want) in [("a.gw.example", "tenant-a"), ("b.gw.example", "tenant-b")] {
            let r = curl(&format!("http://{host}:{port}/echo"), (host, port), &[]).await;
            assert_eq!(r.status, 200, "{host}: {}", r.body);
            assert_eq!(json(&r.body)["backend"], want);
        }
    }
    // A namespace that does not exist: 502, and nothing else is reached.
    let r = curl(
        &format!("http://gone.gw.example:{port}/echo"),
        ("gone.gw.example", port),
        &[],
    )
    .await;
    assert_eq!(r.status, 502, "{}", r.body);
    assert!(
        r.body.contains("no backend of gone.gw.example"),
        "{}",
        r.body
    );
    let s = gw.status().await;
    let ta = s.iter().find(|r| r.id == "ta").unwrap();
    assert_eq!(ta.backends[0].netns.as_deref(), Some(a.name()));
    // Namespace names are not paths.
    let e = gw
        .call(Request::SetRoutes {
            routes: vec![zos_gateway::Route {
                id: "tx".into(),
                host: "x.gw.example".into(),
                tls: Tls::Plain,
                backends: vec![t("../../proc/1/ns/net")],
            }],
        })
        .await
        .unwrap_err();
    assert!(e.to_string().contains("network namespace name"), "{e}");
}
