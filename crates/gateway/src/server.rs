//! The gateway's listeners: plain HTTP, HTTPS (TLS ended here or passed through by server
//! name), the backends' health checks, and the limits that keep one client from taking what
//! others share.

use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_rustls::TlsAcceptor;

use crate::acme::{Acme, Served};
use crate::challenges::Challenges;
use crate::http::{Conn, local_upstream};
use crate::io::{Counted, Idle, Rewind};
use crate::route::Tls;
use crate::table::{Live, Shared};
use crate::tls::{Certificates, read_hello};

/// What the gateway allows each connection and each client.
#[derive(Debug, Clone)]
pub struct Limits {
    /// The most bytes of a request's head (HTTP/1.1 buffer, HTTP/2 header list); more is
    /// answered `431`.
    pub header_bytes: usize,
    /// A connection with nothing moving either way for this long is closed.
    pub idle: Duration,
    /// The time a client has to send its TLS hello or a request's head.
    pub handshake: Duration,
    /// Open connections from one client address.
    pub per_client: usize,
    /// Open connections in all.
    pub connections: usize,
    /// How often each backend is checked (a TCP connect).
    pub health_every: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            header_bytes: 32 * 1024,
            idle: Duration::from_secs(120),
            handshake: Duration::from_secs(10),
            per_client: 256,
            connections: 16 * 1024,
            health_every: Duration::from_secs(10),
        }
    }
}

/// The gateway: its table, its certificates and its listeners' shared state.
#[derive(Debug)]
pub struct Gateway {
    pub shared: Arc<Shared>,
    pub certs: Arc<Certificates>,
    /// Pending HTTP-01 challenges, answered on plain HTTP.
    pub challenges: Arc<Challenges>,
    /// Certificates ordered from a CA, when the gateway has one.
    pub acme: std::sync::OnceLock<Arc<Acme>>,
    limits: Limits,
    tls: Arc<rustls::ServerConfig>,
    slots: Arc<Semaphore>,
    clients: Mutex<HashMap<IpAddr, usize>>,
}

/// A connection's place under the limits, given back when it ends.
struct Admitted {
    gateway: Arc<Gateway>,
    ip: IpAddr,
    _slot: OwnedSemaphorePermit,
}

impl Drop for Admitted {
    fn drop(&mut self) {
        let mut clients = self.gateway.clients.lock().unwrap();
        if let Some(n) = clients.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                clients.remove(&self.ip);
            }
        }
    }
}

impl Gateway {
    pub fn new(limits: Limits) -> Arc<Self> {
        let certs = Arc::new(Certificates::default());
        let mut provider = rustls::crypto::ring::default_provider();
        // AES-128-GCM with SHA-256 first, whatever the client prefers: as strong for TLS, and
        // SHA-256 has hardware help where SHA-384 has none (a profile of the handshake showed
        // SHA-384's transcript and key schedule as its costliest part after X25519).
        provider.cipher_suites.sort_by_key(|s| match s.suite() {
            rustls::CipherSuite::TLS13_AES_128_GCM_SHA256 => 0,
            rustls::CipherSuite::TLS13_AES_256_GCM_SHA384 => 1,
            rustls::CipherSuite::TLS13_CHACHA20_POLY1305_SHA256 => 2,
            _ => 3,
        });
        let provider = Arc::new(provider);
        let mut tls = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("the ring provider supports the default versions")
            .with_no_client_auth()
            .with_cert_resolver(certs.clone());
        tls.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        tls.ignore_client_order = true;
        // Resumption: tickets (TLS 1.3 and 1.2) and a session cache, as browsers expect.
        tls.session_storage = rustls::server::ServerSessionMemoryCache::new(16 * 1024);
        match rustls::crypto::ring::Ticketer::new() {
            Ok(t) => tls.ticketer = t,
            Err(e) => tracing::warn!(error = %e, "no TLS session tickets"),
        }
        Arc::new(Self {
            shared: Arc::new(Shared::default()),
            certs,
            challenges: Arc::new(Challenges::default()),
            acme: std::sync::OnceLock::new(),
            slots: Arc::new(Semaphore::new(limits.connections)),
            limits,
            tls: Arc::new(tls),
            clients: Mutex::new(HashMap::new()),
        })
    }

    /// What the ACME side needs of this gateway.
    pub fn served(&self) -> Served {
        Served {
            shared: self.shared.clone(),
            certs: self.certs.clone(),
            challenges: self.challenges.clone(),
        }
    }

    /// A place for a connection from `ip`, or `None` when the client or the gateway is full.
    fn admit(self: &Arc<Self>, ip: IpAddr) -> Option<Admitted> {
        let slot = self.slots.clone().try_acquire_owned().ok()?;
        let mut clients = self.clients.lock().unwrap();
        let n = clients.entry(ip).or_default();
        if *n >= self.limits.per_client {
            return None;
        }
        *n += 1;
        Some(Admitted {
            gateway: self.clone(),
            ip,
            _slot: slot,
        })
    }

    /// Accepts connections on `listener` until the task is dropped, each under the limits and
    /// served by `serve` in a task of its own.
    async fn accept<F, Fut>(self: Arc<Self>, listener: TcpListener, serve: F) -> io::Result<()>
    where
        F: Fn(Arc<Self>, TcpStream, SocketAddr) -> Fut,
        Fut: std::future::Future<Output = ()> + Send + 'static,
    {
        loop {
            let (tcp, peer) = listener.accept().await?;
            let Some(admitted) = self.admit(peer.ip()) else {
                tracing::debug!(%peer, "connection refused: too many open");
                continue;
            };
            let _ = tcp.set_nodelay(true);
            let served = serve(self.clone(), tcp, peer);
            tokio::spawn(async move {
                let _admitted = admitted;
                served.await;
            });
        }
    }

    /// Accepts plain HTTP connections until the task is dropped.
    pub async fn serve_http(self: Arc<Self>, listener: TcpListener) -> io::Result<()> {
        self.accept(listener, |g, tcp, peer| async move {
            let io = Idle::new(tcp, g.limits.idle);
            g.serve_conn(io, peer, None).await;
        })
        .await
    }

    /// Accepts TLS connections until the task is dropped: each client's hello is read, and its
    /// server name picks the route: TLS ends here, or the stream goes to a backend as it is.
    pub async fn serve_https(self: Arc<Self>, listener: TcpListener) -> io::Result<()> {
        self.accept(listener, |g, tcp, peer| async move {
            if let Err(e) = g.tls_conn(tcp, peer).await {
                tracing::debug!(%peer, error = %e, "TLS connection ended");
            }
        })
        .await
    }

    async fn tls_conn(self: &Arc<Self>, tcp: TcpStream, peer: SocketAddr) -> io::Result<()> {
        let mut io = Idle::new(tcp, self.limits.idle);
        let (hello, name) = tokio::time::timeout(self.limits.handshake, read_hello(&mut io))
            .await
            .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "no TLS hello in time"))??;
        let name = name.ok_or_else(|| {
            io::Error::new(io::ErrorKind::InvalidData, "the TLS hello names no server")
        })?;
        let live = self.shared.route(&name).ok_or_else(|| {
            io::Error::new(io::ErrorKind::NotFound, format!("no route for {name}"))
        })?;
        match live.route.tls {
            Tls::Passthrough => self.passthrough(live, hello, io).await,
            Tls::Terminate => {
                let stream = tokio::time::timeout(
                    self.limits.handshake,
                    TlsAcceptor::from(self.tls.clone()).accept(Rewind::new(hello, io)),
                )
                .await
                .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "TLS handshake too slow"))??;
                self.serve_conn(stream, peer, Some(name)).await;
                Ok(())
            }
            Tls::Plain => Err(io::Error::new(
                io::ErrorKind::NotFound,
                format!("{name} is served on plain HTTP only"),
            )),
        }
    }

    /// Sends the TLS stream to the first backend that takes it, the hello first.
    async fn passthrough<S: AsyncRead + AsyncWrite + Unpin>(
        &self,
        live: Arc<Live>,
        hello: Vec<u8>,
        client: S,
    ) -> io::Result<()> {
        live.counters
            .requests
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        live.counters
            .rx
            .fetch_add(hello.len() as u64, std::sync::atomic::Ordering::Relaxed);
        for backend in live.candidates() {
            let mut tcp = match crate::connect::connect(&backend.target).await {
                Ok(t) => t,
                Err(e) => {
                    backend.report(false);
                    tracing::warn!(route = live.route.id, backend = %backend.target, error = %e, "backend refused the connection");
                    continue;
                }
            };
            backend.report(true);
            tcp.write_all(&hello).await?;
            let mut client = Counted::new(client, live.counters.clone());
            tokio::io::copy_bidirectional(&mut client, &mut tcp).await?;
            return Ok(());
        }
        Err(io::Error::new(
            io::ErrorKind::ConnectionRefused,
            format!("no backend of {} can be reached", live.route.host),
        ))
    }

    async fn serve_conn<S>(self: &Arc<Self>, io: S, peer: SocketAddr, sni: Option<String>)
    where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let conn = Arc::new(Conn {
            peer,
            sni,
            shared: self.shared.clone(),
            upstream: local_upstream(),
            challenges: self.challenges.clone(),
        });
        let mut builder = auto::Builder::new(TokioExecutor::new());
        builder
            .http1()
            .timer(TokioTimer::new())
            .header_read_timeout(self.limits.handshake)
            .max_buf_size(self.limits.header_bytes.max(8192));
        builder
            .http2()
            .timer(TokioTimer::new())
            .max_header_list_size(self.limits.header_bytes as u32)
            .max_concurrent_streams(256);
        let service = service_fn(move |req| crate::http::handle(conn.clone(), req));
        if let Err(e) = builder
            .serve_connection_with_upgrades(TokioIo::new(io), service)
            .await
        {
            tracing::debug!(%peer, error = %e, "HTTP connection ended");
        }
    }

    /// Checks every backend every [`Limits::health_every`], until the task is dropped.
    pub async fn check_backends(self: Arc<Self>) {
        let mut every = tokio::time::interval(self.limits.health_every);
        every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            every.tick().await;
            // At most 32 at once: a check into a tenant's namespace is a thread of its own.
            futures::stream::iter(self.shared.backends())
                .for_each_concurrent(32, |b| async move {
                    let ok = crate::connect::connect(&b.target).await.is_ok();
                    b.report(ok);
                })
                .await;
        }
    }
}
