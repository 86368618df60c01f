//! What the gateway's tests share: the gateway process, backends, `curl`, test certificates.

#![allow(dead_code)]

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use axum::extract::ws::{Message, WebSocketUpgrade};
use axum::http::HeaderMap;
use axum::routing::{any, get};
use zos_gateway::control::{Answer, ControlClient, ControlError, Request};
use zos_gateway::{Route, Target, Tls};

/// A running `zos-gateway`, killed on drop.
pub struct Gw {
    pub child: Child,
    pub http: SocketAddr,
    pub https: SocketAddr,
    pub control: PathBuf,
    pub dir: tempfile::TempDir,
}

impl Drop for Gw {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Gw {
    pub async fn start(extra: &[&str]) -> Gw {
        Self::start_at("127.0.0.1:0", extra).await
    }

    /// A gateway with its HTTP listener on `http`.
    pub async fn start_at(http: &str, extra: &[&str]) -> Gw {
        let dir = tempfile::tempdir().unwrap();
        let ready = dir.path().join("ready.json");
        let control = dir.path().join("control.sock");
        let child = Command::new(env!("CARGO_BIN_EXE_zos-gateway"))
            .args(["--http", http, "--https", "127.0.0.1:0"])
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
            dir,
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

    /// What the gateway logged so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("gateway.log")).unwrap_or_default()
    }

    pub async fn call(&self, req: Request) -> Result<Answer, ControlError> {
        ControlClient::connect(&self.control)
            .await?
            .call(&req)
            .await
    }

    pub async fn routes(&self, routes: Vec<Route>) {
        let n = routes.len();
        assert_eq!(
            self.call(Request::SetRoutes { routes }).await.unwrap(),
            Answer::Routes { count: n }
        );
    }

    pub async fn status(&self) -> Vec<zos_gateway::table::RouteStatus> {
        match self.call(Request::Status {}).await.unwrap() {
            Answer::Status { routes } => routes,
            a => panic!("{a:?}"),
        }
    }

    pub async fn meter(&self, id: &str) -> zos_gateway::table::Meter {
        match self.call(Request::Metrics {}).await.unwrap() {
            Answer::Metrics { routes } => routes[id],
            a => panic!("{a:?}"),
        }
    }
}

pub fn route(id: &str, host: &str, tls: Tls, backends: &[SocketAddr]) -> Route {
    Route {
        id: id.into(),
        host: host.into(),
        tls,
        backends: backends.iter().map(|a| Target::here(*a)).collect(),
    }
}

/// The routes of a backend named `name`: `/echo` answers what it was sent (headers, body length),
/// `/big` sends 1 MiB, `/ws` echoes WebSocket messages.
pub fn app(name: &'static str) -> axum::Router {
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
    axum::Router::new()
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
        .layer(axum::extract::DefaultBodyLimit::disable())
}

/// An HTTP backend named `name` (see [`app`]) on loopback.
pub async fn backend(name: &'static str) -> SocketAddr {
    let app = app(name);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    addr
}

/// A backend named `name` on `addr` inside network namespace `ns` (its listening socket made
/// there; the test's runtime serves it).
pub fn backend_in(ns: &str, name: &'static str, addr: SocketAddr) {
    let listener = zos_testkit::net::in_netns(ns, || std::net::TcpListener::bind(addr).unwrap());
    listener.set_nonblocking(true).unwrap();
    let listener = tokio::net::TcpListener::from_std(listener).unwrap();
    tokio::spawn(async move { axum::serve(listener, app(name)).await });
}

/// A loopback address nothing listens on.
pub async fn dead_addr() -> SocketAddr {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    l.local_addr().unwrap()
}

pub struct Curl {
    pub status: u16,
    pub body: String,
    pub version: String,
    pub exit: i32,
    pub stderr: String,
}

/// `curl` to `url`, `host:port` resolved to loopback; the status, body and HTTP version.
pub async fn curl(url: &str, resolve: (&str, u16), args: &[&str]) -> Curl {
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
pub fn json(body: &str) -> serde_json::Value {
    serde_json::from_str(body).unwrap_or_else(|e| panic!("{e}: {body}"))
}

/// Waits until `f` holds, for at most 30 s.
pub async fn eventually<F: std::future::Future<Output = bool>>(
    what: &str,
    mut f: impl FnMut() -> F,
) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !f().await {
        assert!(Instant::now() < deadline, "never: {what}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[allow(unused_imports)]
pub use zos_testkit::acme::issue;
