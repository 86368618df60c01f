//! `zos-gateway`: the node's web gateway (see the crate's documentation and docs/gateway.md).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::mpsc::Sender;
use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use tokio::net::{TcpListener, TcpSocket};
use tracing_subscriber::EnvFilter;
use zos_gateway::acme::{Acme, AcmeOptions, Seal};
use zos_gateway::{Gateway, Limits, control};

#[derive(Debug, Parser)]
#[command(
    name = "zos-gateway",
    version,
    about = "The node's web gateway: HTTP and HTTPS by host name to tenants' backends"
)]
struct Cli {
    /// Plain HTTP listener.
    #[arg(long, default_value = "0.0.0.0:80")]
    http: SocketAddr,
    /// HTTPS listener (TLS ended here, or passed through by server name).
    #[arg(long, default_value = "0.0.0.0:443")]
    https: SocketAddr,
    /// The control socket zosd talks to (created mode 0600).
    #[arg(long)]
    control: PathBuf,
    /// The most bytes of a request's head; more is answered 431.
    #[arg(long, default_value_t = 32 * 1024)]
    header_bytes: usize,
    /// Seconds a connection may sit with nothing moving before it is closed.
    #[arg(long, default_value_t = 120)]
    idle_secs: u64,
    /// Open connections from one client address.
    #[arg(long, default_value_t = 256)]
    per_client: usize,
    /// Seconds between checks of each backend.
    #[arg(long, default_value_t = 10)]
    health_secs: u64,
    /// Threads serving connections, each with its own listeners (SO_REUSEPORT) and its own
    /// connections to backends; default: one per CPU.
    #[arg(long)]
    workers: Option<usize>,
    /// Once listening, write `{"http": ADDR, "https": ADDR}` to this file, atomically (for
    /// port 0, the ports taken).
    #[arg(long)]
    ready_file: Option<PathBuf>,
    #[command(flatten)]
    acme: AcmeArgs,
}

/// Certificates from an ACME CA for the routes that end TLS here (HTTP-01 on the HTTP port).
#[derive(Debug, clap::Args)]
struct AcmeArgs {
    /// The CA's directory URL; without it, certificates come from zosd only.
    #[arg(long, requires_all = ["store", "seal_key"])]
    acme_directory: Option<String>,
    /// A root certificate (PEM) to trust for the CA's own HTTPS instead of the system's.
    #[arg(long)]
    acme_ca: Option<PathBuf>,
    /// A contact of the ACME account (mailto:…); repeat for several.
    #[arg(long)]
    acme_contact: Vec<String>,
    /// Where the ACME account and the certificates are kept, sealed (on the node's cache).
    #[arg(long)]
    store: Option<PathBuf>,
    /// A file of 32 bytes the stored keys are sealed with (zosd derives it from the node key).
    #[arg(long)]
    seal_key: Option<PathBuf>,
    /// Renew a certificate this many days before it expires.
    #[arg(long, default_value_t = 30)]
    renew_days: u64,
}

fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()))
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let limits = Limits {
        header_bytes: cli.header_bytes,
        idle: Duration::from_secs(cli.idle_secs.max(1)),
        per_client: cli.per_client.max(1),
        health_every: Duration::from_secs(cli.health_secs.max(1)),
        ..Limits::default()
    };
    let gateway = Gateway::new(limits);
    let acme = match &cli.acme.acme_directory {
        Some(directory) => {
            let (Some(store), Some(seal_key)) = (&cli.acme.store, &cli.acme.seal_key) else {
                anyhow::bail!("--acme-directory needs --store and --seal-key");
            };
            let acme = Acme::new(AcmeOptions {
                directory: directory.clone(),
                ca_root: cli.acme.acme_ca.clone(),
                contact: cli.acme.acme_contact.clone(),
                store: store.clone(),
                seal: Seal::from_file(seal_key).map_err(anyhow::Error::msg)?,
                renew_before: Duration::from_secs(cli.acme.renew_days * 86_400),
                concurrency: 2,
            })
            .map_err(anyhow::Error::msg)?;
            let loaded = acme.load(&gateway.certs);
            tracing::info!(loaded, "stored certificates");
            let _ = gateway.acme.set(acme.clone());
            Some(acme)
        }
        None => None,
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    // The control socket first: it refuses to start beside a live gateway, whose ports the
    // workers' SO_REUSEPORT listeners would otherwise share.
    let ctl = rt
        .block_on(control::bind(&cli.control))
        .with_context(|| format!("control socket {}", cli.control.display()))?;

    // Worker 0 binds first (the ports may be 0); the others share the ports it got.
    let workers = cli
        .workers
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
        .max(1);
    let (tx, rx) = std::sync::mpsc::channel();
    let mut addrs = (cli.http, cli.https);
    for i in 0..workers {
        let (g, tx) = (gateway.clone(), tx.clone());
        let (http, https) = addrs;
        std::thread::Builder::new()
            .name(format!("gateway-{i}"))
            .spawn(move || worker(g, http, https, tx))?;
        addrs = rx.recv()?.map_err(anyhow::Error::msg)?;
    }
    let (http, https) = addrs;
    if let Some(path) = &cli.ready_file {
        let ready = serde_json::json!({ "http": http, "https": https });
        let tmp = path.with_extension("tmp");
        std::fs::write(&tmp, ready.to_string())
            .and_then(|()| std::fs::rename(&tmp, path))
            .with_context(|| format!("writing {}", path.display()))?;
    }
    tracing::info!(%http, %https, workers, control = %cli.control.display(), "serving");
    let result = rt.block_on(async {
        let ordering = async {
            match acme {
                Some(a) => a.run(gateway.served()).await,
                None => std::future::pending().await,
            }
        };
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        tokio::select! {
            r = gateway.clone().serve_control(ctl) => r.context("control socket")?,
            () = gateway.clone().check_backends() => {}
            () = ordering => {}
            _ = term.recv() => tracing::info!("SIGTERM: stopping"),
            _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT: stopping"),
        }
        anyhow::Ok(())
    });
    let _ = std::fs::remove_file(&cli.control);
    result
}

/// One worker: its own single-threaded runtime, its own HTTP and HTTPS listeners on the shared
/// ports, and its own connections to backends. Reports the addresses it bound, or why not.
fn worker(
    gateway: Arc<Gateway>,
    http: SocketAddr,
    https: SocketAddr,
    ready: Sender<Result<(SocketAddr, SocketAddr), String>>,
) {
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            let _ = ready.send(Err(format!("a worker's runtime: {e}")));
            return;
        }
    };
    rt.block_on(async move {
        let bound = listen(http)
            .map_err(|e| format!("listening for HTTP on {http}: {e}"))
            .and_then(|h| {
                let s =
                    listen(https).map_err(|e| format!("listening for HTTPS on {https}: {e}"))?;
                Ok((h, s))
            });
        let (h, s) = match bound {
            Ok(l) => l,
            Err(e) => {
                let _ = ready.send(Err(e));
                return;
            }
        };
        let addrs = match (h.local_addr(), s.local_addr()) {
            (Ok(a), Ok(b)) => (a, b),
            _ => {
                let _ = ready.send(Err("a listener has no address".into()));
                return;
            }
        };
        let _ = ready.send(Ok(addrs));
        let r = tokio::select! {
            r = gateway.clone().serve_http(h) => r,
            r = gateway.serve_https(s) => r,
        };
        if let Err(e) = r {
            tracing::error!(error = %e, "a listener failed: stopping");
            std::process::exit(1);
        }
    });
}

/// A listener on `addr` that other workers' listeners share (SO_REUSEPORT: the kernel spreads
/// new connections over them).
fn listen(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.set_reuseport(true)?;
    socket.bind(addr)?;
    socket.listen(1024)
}
