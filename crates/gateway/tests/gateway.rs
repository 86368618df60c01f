//! The `zos-gateway` process end to end on loopback: routes pushed through its control
//! socket, real backends (axum HTTP servers, a rustls TLS server), and `curl` as the client
//! (HTTP/1.1, HTTP/2, TLS with `--resolve` and a CA file), a WebSocket client, raw TCP for the
//! limits.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::ws::{Message, WebSocketUpgrade};
use axum::http::HeaderMap;
use axum::routing::{any, get};
use futures::{SinkExt, StreamExt};
use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use zos_gateway::control::{Answer, ControlClient, ControlError, Request};
use zos_gateway::{Route, Tls};

/// A running `zos-gateway`, killed on drop.
struct Gw {
    child: Child,
    http: SocketAddr,
    https: SocketAddr,
    control: PathBuf,
    _dir: tempfile::TempDir,
}

impl Drop for Gw {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Gw {
    async fn start(extra: &[&str]) -> Gw {
        let dir = tempfile::tempdir().unwrap();
        let ready = dir.path().join("ready.json");
        let control = dir.path().join("control.sock");
        let child = Command::new(env!("CARGO_BIN_EXE_zos-gateway"))
            .args(["--http", "127.0.0.1:0", "--https", "127.0.0.1:0"])
            .arg("--control")
            .arg(&control)
            .arg("--ready-file")
            .arg(&ready)
            .args(extra)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.path().join("gateway.log")).unwrap())
            .spawn()
            .unwrap();
        let mut gw = Gw {
            child,
            http: "0.0.0.0:0".parse().unwrap(),
            https: "0.0.0.0:0".parse().unwrap(),
            control,
            _dir: dir,
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        let text = loop {
            if let Ok(t) = std::fs::read_to_string(&ready) {
                break t;
            }
            assert!(gw.child.try_wait().unwrap().is_none(), "the gateway ended");
            assert!(Instant::now() < deadline, "the gateway never got ready");
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        let v: serde_json::Value = serde_json::from_str(&text).unwrap();
        gw.http = v["http"].as_str().unwrap().parse().unwrap();
        gw.https = v["https"].as_str().unwrap().parse().unwrap();
        gw
    }

    async fn call(&self, req: Request) -> Result<Answer, ControlError> {
        ControlClient::connect(&self.control)
            .await?
            .call(&req)
            .await
    }

    async fn routes(&self, routes: Vec<Route>) {
        let n = routes.len();
        assert_eq!(
            self.call(Request::SetRoutes { routes }).await.unwrap(),
            Answer::Routes { count: n }
        );
    }

    async fn status(&self) -> Vec<zos_gateway::table::RouteStatus> {
        match self.call(Request::Status {}).await.unwrap() {
            Answer::Status { routes } => routes,
            a => panic!("{a:?}"),
        }
    }

    async fn meter(&self, id: &str) -> zos_gateway::table::Meter {
        match self.call(Request::Metrics {}).await.unwrap() {
            Answer::Metrics { routes } => routes[id],
            a => panic!("{a:?}"),
        }
    }
}

fn route(id: &str, host: &str, tls: Tls, backends: &[SocketAddr]) -> Route {
    Route {
        id: id.into(),
        host: host.into(),
        tls,
        backends: backends.to_vec(),
    }
}

/// An HTTP backend named `name`: `/echo` answers what it was sent (headers, body length),
/// `/big` sends 1 MiB, `/ws` echoes WebSocket messages.
async fn backend(name: &'static str) -> SocketAddr {
    async fn echo(name: &'static str, headers: HeaderMap, body: axum::body::Bytes) -> String {
        let h = |k: &str| {
            headers
                .get(k)
                .map(|v| v.to_str().unwrap().to_string())
                .unwrap_or_default()
        };
        serde_json::json!({
            "backend": name,
            "host": h("host"),
            "xff": h("x-forwarded-for"),
            "proto": h("x-forwarded-proto"),
            "xfh": h("x-forwarded-host"),
            "secret": h("x-secret"),
            "len": body.len(),
        })
        .to_string()
    }
    let app = axum::Router::new()
        .route(
            "/echo",
            any(move |headers: HeaderMap, body: axum::body::Bytes| echo(name, headers, body)),
        )
        .route("/big", get(|| async { vec![b'x'; 1 << 20] }))
        .route(
            "/ws",
            get(|ws: WebSocketUpgrade| async {
                ws.on_upgrade(|mut socket| async move {
                    while let Some(Ok(m)) = socket.recv().await {
                        if let Message::Text(t) = m
                            && socket
                                .send(Message::Text(format!("echo {t}").into()))
                                .await
                                .is_err()
                        {
                            break;
                        }
                    }
                })
            }),
        )
        .layer(axum::extract::DefaultBodyLimit::disable());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    addr
}

/// A loopback address nothing listens on.
async fn dead_addr() -> SocketAddr {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    l.local_addr().unwrap()
}

struct Curl {
    status: u16,
    body: String,
    version: String,
    exit: i32,
    stderr: String,
}

/// `curl` to `url`, `host:port` resolved to loopback; the status, body and HTTP version.
async fn curl(url: &str, resolve: (&str, u16), args: &[&str]) -> Curl {
    let out = tokio::process::Command::new("curl")
        .args([
            "-sS",
            "--max-time",
            "20",
            "-o",
            "-",
            "-w",
            "\n%{http_code} %{http_version}",
        ])
        .arg("--resolve")
        .arg(format!("{}:{}:127.0.0.1", resolve.0, resolve.1))
        .args(args)
        .arg(url)
        .output()
        .await
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let (body, tail) = text.rsplit_once('\n').unwrap_or(("", &text));
    let mut tail = tail.split(' ');
    Curl {
        status: tail.next().unwrap_or("0").parse().unwrap_or(0),
        version: tail.next().unwrap_or("").to_string(),
        body: body.to_string(),
        exit: out.status.code().unwrap_or(-1),
        stderr: String::from_utf8_lossy(&out.stderr).to_string(),
    }
}

#[track_caller]
fn json(body: &str) -> serde_json::Value {
    serde_json::from_str(body).unwrap_or_else(|e| panic!("{e}: {body}"))
}

/// Waits until `f` holds, for at most 30 s.
async fn eventually<F: std::future::Future<Output = bool>>(what: &str, mut f: impl FnMut() -> F) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !f().await {
        assert!(Instant::now() < deadline, "never: {what}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

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

/// A CA, and a certificate it signs for `names`: (CA PEM, chain PEM, key PEM).
fn issue(names: &[&str]) -> (String, String, String) {
    let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    // Not rcgen's default name, which the leaf has too: OpenSSL would take the leaf for
    // self-signed.
    ca.distinguished_name = rcgen::DistinguishedName::new();
    ca.distinguished_name
        .push(rcgen::DnType::CommonName, "zos gateway test CA");
    let ca = CertifiedIssuer::self_signed(ca, KeyPair::generate().unwrap()).unwrap();
    let key = KeyPair::generate().unwrap();
    let leaf = CertificateParams::new(names.iter().map(|s| s.to_string()).collect::<Vec<_>>())
        .unwrap()
        .signed_by(&key, &ca)
        .unwrap();
    (ca.pem(), leaf.pem(), key.serialize_pem())
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
