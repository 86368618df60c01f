//! `zos-gateway`: the node's web gateway (see the crate's documentation and docs/gateway.md).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use tokio::net::TcpListener;
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

#[tokio::main]
async fn main() -> anyhow::Result<()> {
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
            let loaded = acme.load(&gateway);
            tracing::info!(loaded, "stored certificates");
            let _ = gateway.acme.set(acme.clone());
            Some(acme)
        }
        None => None,
    };
    let ordering = async {
        match acme {
            Some(a) => a.run(gateway.clone()).await,
            None => std::future::pending().await,
        }
    };
    let http = TcpListener::bind(cli.http)
        .await
        .with_context(|| format!("listening for HTTP on {}", cli.http))?;
    let https = TcpListener::bind(cli.https)
        .await
        .with_context(|| format!("listening for HTTPS on {}", cli.https))?;
    let ctl = control::bind(&cli.control)
        .await
        .with_context(|| format!("control socket {}", cli.control.display()))?;
    if let Some(path) = &cli.ready_file {
        let ready = serde_json::json!({
            "http": http.local_addr()?,
            "https": https.local_addr()?,
        });
        let tmp = path.with_extension("tmp");
        std::fs::write(&tmp, ready.to_string())
            .and_then(|()| std::fs::rename(&tmp, path))
            .with_context(|| format!("writing {}", path.display()))?;
    }
    tracing::info!(http = %http.local_addr()?, https = %https.local_addr()?, control = %cli.control.display(), "serving");
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        r = gateway.clone().serve_http(http) => r.context("HTTP listener")?,
        r = gateway.clone().serve_https(https) => r.context("HTTPS listener")?,
        r = gateway.clone().serve_control(ctl) => r.context("control socket")?,
        () = gateway.clone().check_backends() => {}
        () = ordering => {}
        _ = term.recv() => tracing::info!("SIGTERM: stopping"),
        _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT: stopping"),
    }
    let _ = std::fs::remove_file(&cli.control);
    Ok(())
}
