//! The gateway beside nginx as a reverse proxy, in one run, on the same machine and backend:
//! requests per second and latency over HTTP/1.1 with keep-alive, over HTTPS with keep-alive,
//! and TLS handshakes per second (HTTPS, a new connection per request).
//!
//! `cargo bench -p zos-gateway --bench proxy` (root; `scripts/install-bench-deps.sh` installs
//! nginx and wrk). Everything runs in a network namespace of its own whose `/etc/hosts` names
//! the test host, so the clients send it as SNI. Options through the environment:
//! `ZOS_BENCH_SECS` (per run, default 10), `ZOS_BENCH_CONNS` (default 64).

use std::convert::Infallible;
use std::path::Path;
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::Full;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo};
use zos_gateway::control::{ControlClient, Request as Control};
use zos_gateway::{Route, Target, Tls};
use zos_testkit::netns::Netns;

const HOST: &str = "bench.gw.example";
const BACKEND: &str = "127.0.0.1:18900";
const BODY: &[u8] = b"hello from the backend, 64 bytes of body for every request....\n";

struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Removes `/etc/netns/NAME` (the namespace's own /etc files) on drop.
struct EtcNetns(std::path::PathBuf);

impl Drop for EtcNetns {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn env(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// The backend both proxies forward to: its socket made inside `ns`, served by a runtime of
/// its own on one thread.
fn backend(ns: &str) {
    let listener = zos_testkit::net::in_netns(ns, || std::net::TcpListener::bind(BACKEND).unwrap());
    listener.set_nonblocking(true).unwrap();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let listener = tokio::net::TcpListener::from_std(listener).unwrap();
            loop {
                let (tcp, _) = listener.accept().await.unwrap();
                tokio::spawn(async move {
                    let service = service_fn(|_req: Request<hyper::body::Incoming>| async {
                        Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(BODY))))
                    });
                    let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(tcp), service)
                        .await;
                });
            }
        });
    });
}

fn nginx_config(dir: &Path, http: u16, https: u16) -> String {
    let d = dir.display();
    format!(
        r#"daemon off;
user root;
worker_processes 2;
pid {d}/nginx.pid;
error_log {d}/nginx-error.log warn;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    client_body_temp_path {d}/body;
    proxy_temp_path {d}/proxy;
    fastcgi_temp_path {d}/fastcgi;
    uwsgi_temp_path {d}/uwsgi;
    scgi_temp_path {d}/scgi;
    upstream backend {{ server {BACKEND}; keepalive 64; }}
    server {{
        listen 127.0.0.1:{http};
        listen 127.0.0.1:{https} ssl;
        server_name {HOST};
        ssl_certificate {d}/cert.pem;
        ssl_certificate_key {d}/key.pem;
        location / {{
            proxy_pass http://backend;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header Host $host;
            proxy_set_header X-Forwarded-For $remote_addr;
            proxy_set_header X-Forwarded-Proto $scheme;
            proxy_set_header X-Forwarded-Host $host;
        }}
    }}
}}
"#
    )
}

#[derive(Debug, Default, Clone)]
struct Figures {
    rps: f64,
    p50: String,
    p99: String,
    errors: String,
}

/// One wrk run inside `ns`; its requests per second, median and 99th percentile latency.
fn wrk(ns: &Netns, url: &str, secs: u64, conns: u64, close: bool) -> Figures {
    let mut cmd = ns.command("wrk");
    cmd.args(["-t", "2", "--latency"])
        .arg(format!("-c{conns}"))
        .arg(format!("-d{secs}s"));
    if close {
        cmd.args(["-H", "Connection: close"]);
    }
    let out = cmd.arg(url).output().expect("wrk");
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(out.status.success(), "wrk failed: {text}");
    let mut f = Figures::default();
    for line in text.lines() {
        let words: Vec<&str> = line.split_whitespace().collect();
        match words.as_slice() {
            ["Requests/sec:", v] => f.rps = v.parse().unwrap_or(0.0),
            ["50%", v] => f.p50 = v.to_string(),
            ["99%", v] => f.p99 = v.to_string(),
            ["Non-2xx", ..] | ["Socket", "errors:", ..] => {
                f.errors = format!("{} {}", f.errors, line.trim())
            }
            _ => {}
        }
    }
    f
}

fn wait_port(ns: &Netns, port: u16) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let ok = ns
            .command("bash")
            .arg("-c")
            .arg(format!("exec 3<>/dev/tcp/127.0.0.1/{port}"))
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if ok {
            return;
        }
        assert!(Instant::now() < deadline, "nothing listens on {port}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn main() {
    if !nix::unistd::geteuid().is_root() {
        eprintln!("the gateway benchmark needs root (network namespaces)");
        std::process::exit(1);
    }
    for (tool, path) in [("wrk", "/usr/bin/wrk"), ("nginx", "/usr/sbin/nginx")] {
        if !Path::new(path).exists() {
            eprintln!("{tool} is missing: run scripts/install-bench-deps.sh");
            std::process::exit(1);
        }
    }
    let secs = env("ZOS_BENCH_SECS", 10);
    let conns = env("ZOS_BENCH_CONNS", 64);
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let ns = Netns::create(&format!("zgwb-{}", std::process::id())).unwrap();
    let etc = EtcNetns(Path::new("/etc/netns").join(ns.name()));
    std::fs::create_dir_all(&etc.0).unwrap();
    std::fs::write(etc.0.join("hosts"), format!("127.0.0.1 localhost {HOST}\n")).unwrap();

    let cert = rcgen::generate_simple_self_signed(vec![HOST.to_string()]).unwrap();
    std::fs::write(d.join("cert.pem"), cert.cert.pem()).unwrap();
    std::fs::write(d.join("key.pem"), cert.signing_key.serialize_pem()).unwrap();
    for sub in ["body", "proxy", "fastcgi", "uwsgi", "scgi"] {
        std::fs::create_dir_all(d.join(sub)).unwrap();
    }
    backend(ns.name());

    let (nginx_http, nginx_https, gw_http, gw_https) = (18080, 18443, 19080, 19443);
    std::fs::write(
        d.join("nginx.conf"),
        nginx_config(d, nginx_http, nginx_https),
    )
    .unwrap();
    let nginx = ns
        .command("/usr/sbin/nginx")
        .arg("-c")
        .arg(d.join("nginx.conf"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let _nginx = Killed(nginx);
    let gateway = ns
        .command(env!("CARGO_BIN_EXE_zos-gateway"))
        .args(["--http", &format!("127.0.0.1:{gw_http}")])
        .args(["--https", &format!("127.0.0.1:{gw_https}")])
        .arg("--control")
        .arg(d.join("control.sock"))
        .args(["--per-client", "100000"])
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(d.join("gateway.log")).unwrap())
        .spawn()
        .unwrap();
    let _gateway = Killed(gateway);
    for port in [nginx_http, nginx_https, gw_http, gw_https] {
        wait_port(&ns, port);
    }
    tokio::runtime::Runtime::new().unwrap().block_on(async {
        let mut c = ControlClient::connect(&d.join("control.sock"))
            .await
            .unwrap();
        c.call(&Control::SetCertificate {
            host: HOST.into(),
            chain_pem: cert.cert.pem(),
            key_pem: cert.signing_key.serialize_pem(),
        })
        .await
        .unwrap();
        c.call(&Control::SetRoutes {
            routes: vec![Route {
                id: "bench".into(),
                host: HOST.into(),
                tls: Tls::Terminate,
                backends: vec![Target::here(BACKEND.parse().unwrap())],
            }],
        })
        .await
        .unwrap();
    });

    println!("gateway vs nginx: {conns} connections, {secs} s per run, 2 wrk threads, one machine");
    println!(
        "{:<32} {:>12} {:>10} {:>10}  errors",
        "run", "req/s", "p50", "p99"
    );
    let runs = [
        ("HTTP/1.1 keep-alive", "http", false),
        ("HTTPS keep-alive", "https", false),
        ("HTTPS new connection (handshakes)", "https", true),
    ];
    for (name, scheme, close) in runs {
        for (who, http, https) in [
            ("nginx", nginx_http, nginx_https),
            ("zos-gateway", gw_http, gw_https),
        ] {
            let port = if scheme == "http" { http } else { https };
            let url = format!("{scheme}://{HOST}:{port}/");
            // A short warm-up, then the measured run.
            let _ = wrk(&ns, &url, 1, conns, close);
            let f = wrk(&ns, &url, secs, conns, close);
            println!(
                "{:<32} {:>12.0} {:>10} {:>10} {}",
                format!("{name}, {who}"),
                f.rps,
                f.p50,
                f.p99,
                f.errors.trim()
            );
        }
    }
}
