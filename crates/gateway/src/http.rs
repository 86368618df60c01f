//! The HTTP side: one request from a client to a route's backend and its answer back, with
//! the `X-Forwarded-*` headers, upgrades (WebSocket) tunnelled through, and bodies streamed and
//! counted.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Empty, Full};
use hyper::body::{Body as HttpBody, Frame, Incoming, SizeHint};
use hyper::header::{self, HeaderMap, HeaderName, HeaderValue};
use hyper::{Request, Response, StatusCode, Uri, Version};
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};

use crate::connect::Connector;
use crate::io::Counted;
use crate::route::Tls;
use crate::table::{Counters, Live, Shared};

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
/// Every body the gateway sends: a backend's, streamed, or its own short answers.
pub type Body = BoxBody<Bytes, BoxError>;
/// The pooled HTTP/1.1 client to backends.
pub type Upstream = Client<Connector, Body>;

/// The client to backends (each in its namespace): idle connections kept 30 s.
pub fn upstream() -> Upstream {
    Client::builder(TokioExecutor::new())
        .pool_idle_timeout(Duration::from_secs(30))
        .pool_max_idle_per_host(64)
        .build(Connector)
}

thread_local! {
    static UPSTREAM: Upstream = upstream();
}

/// This thread's client to backends: each worker keeps its own pool, so a request and its
/// upstream connection stay on one thread.
pub fn local_upstream() -> Upstream {
    UPSTREAM.with(Clone::clone)
}

/// What the handler of one client connection knows.
#[derive(Debug)]
pub struct Conn {
    pub peer: SocketAddr,
    /// The server name of the TLS connection when TLS ended here; `None` on plain HTTP.
    pub sni: Option<String>,
    pub shared: Arc<Shared>,
    pub upstream: Upstream,
    pub challenges: Arc<crate::challenges::Challenges>,
}

/// Headers that belong to one hop and are not forwarded (RFC 9110 §7.6.1).
const HOP_BY_HOP: [HeaderName; 8] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
];

/// Answers one request; never fails (errors become 4xx/5xx answers that say why).
pub async fn handle(conn: Arc<Conn>, req: Request<Incoming>) -> Result<Response<Body>, Infallible> {
    Ok(proxy(&conn, req).await.unwrap_or_else(|r| r))
}

fn text(status: StatusCode, msg: impl Into<String>) -> Response<Body> {
    let mut r = Response::new(
        Full::new(Bytes::from(msg.into() + "\n"))
            .map_err(|e| match e {})
            .boxed(),
    );
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}

/// The host a request is for: the URI's authority (HTTP/2, absolute form) or the Host
/// header, lowercase, without port or trailing dot.
fn request_host<B>(req: &Request<B>) -> Option<String> {
    let raw = match req.uri().authority() {
        Some(a) => a.host().to_string(),
        None => {
            let h = req.headers().get(header::HOST)?.to_str().ok()?;
            let a: hyper::http::uri::Authority = h.parse().ok()?;
            a.host().to_string()
        }
    };
    let host = raw.trim_end_matches('.').to_ascii_lowercase();
    (!host.is_empty()).then_some(host)
}

/// The protocol an HTTP/1.1 request asks to upgrade to (`Connection: upgrade` + `Upgrade`).
fn upgrade_of<B>(req: &Request<B>) -> Option<HeaderValue> {
    let asks = req
        .headers()
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case("upgrade"));
    (asks && req.version() == Version::HTTP_11)
        .then(|| req.headers().get(header::UPGRADE).cloned())
        .flatten()
}

fn strip_hop_by_hop(headers: &mut HeaderMap) {
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|t| HeaderName::from_bytes(t.trim().as_bytes()).ok())
        .collect();
    for h in HOP_BY_HOP.iter().chain(&named) {
        headers.remove(h);
    }
    headers.remove(header::UPGRADE);
}

async fn proxy(conn: &Conn, mut req: Request<Incoming>) -> Result<Response<Body>, Response<Body>> {
    // The CA's HTTP-01 validation of a certificate ordered here (plain HTTP, any host).
    if conn.sni.is_none()
        && let Some(token) = req
            .uri()
            .path()
            .strip_prefix(crate::challenges::CHALLENGE_PATH)
        && let Some(key_authorization) = conn.challenges.get(token)
    {
        // Exactly the key authorization, nothing appended (RFC 8555 §8.3).
        let mut r = text(StatusCode::OK, "");
        *r.body_mut() = Full::new(Bytes::from(key_authorization))
            .map_err(|e| match e {})
            .boxed();
        return Ok(r);
    }
    let host = request_host(&req)
        .ok_or_else(|| text(StatusCode::BAD_REQUEST, "the request names no host"))?;
    if let Some(sni) = &conn.sni
        && *sni != host
    {
        return Err(text(
            StatusCode::MISDIRECTED_REQUEST,
            format!("this TLS connection is for {sni}, not {host}"),
        ));
    }
    let live = conn
        .shared
        .route(&host)
        .filter(|l| match l.route.tls {
            Tls::Terminate => true,
            Tls::Plain => conn.sni.is_none(),
            Tls::Passthrough => false,
        })
        .ok_or_else(|| text(StatusCode::NOT_FOUND, format!("no route for {host}")))?;
    live.counters.requests.fetch_add(1, Ordering::Relaxed);

    let upgrade = upgrade_of(&req);
    let client_upgrade = upgrade.as_ref().map(|_| hyper::upgrade::on(&mut req));
    let (parts, body) = req.into_parts();
    let path = parts
        .uri
        .path_and_query()
        .cloned()
        .unwrap_or_else(|| hyper::http::uri::PathAndQuery::from_static("/"));
    let mut headers = parts.headers;
    strip_hop_by_hop(&mut headers);
    if let Some(proto) = &upgrade {
        headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
        headers.insert(header::UPGRADE, proto.clone());
    }
    let host_value =
        HeaderValue::from_str(&host).map_err(|_| text(StatusCode::BAD_REQUEST, "bad host"))?;
    headers.insert(header::HOST, host_value.clone());
    // The gateway is the edge: what clients say of earlier hops is replaced, not extended.
    let peer = HeaderValue::from_str(&conn.peer.ip().to_string())
        .map_err(|_| text(StatusCode::INTERNAL_SERVER_ERROR, "peer address"))?;
    headers.insert(HeaderName::from_static("x-forwarded-for"), peer);
    headers.insert(
        HeaderName::from_static("x-forwarded-proto"),
        HeaderValue::from_static(if conn.sni.is_some() { "https" } else { "http" }),
    );
    headers.insert(HeaderName::from_static("x-forwarded-host"), host_value);
    headers.remove(header::FORWARDED);

    let retryable = body.is_end_stream();
    let mut body = Some(Counting::rx(body, live.counters.clone()).boxed());
    for backend in live.candidates() {
        let uri = Uri::builder()
            .scheme("http")
            .authority(backend.authority.clone())
            .path_and_query(path.clone())
            .build()
            .map_err(|_| text(StatusCode::BAD_REQUEST, "the request's path is not valid"))?;
        let b = body
            .take()
            .unwrap_or_else(|| Empty::new().map_err(|e| match e {}).boxed());
        let mut up = Request::new(b);
        *up.method_mut() = parts.method.clone();
        *up.uri_mut() = uri;
        *up.headers_mut() = headers.clone();
        *up.version_mut() = Version::HTTP_11;
        match conn.upstream.request(up).await {
            Ok(resp) => {
                backend.report(true);
                return Ok(answer(resp, client_upgrade, &live));
            }
            Err(e) if e.is_connect() => {
                backend.report(false);
                tracing::warn!(route = live.route.id, backend = %backend.target, error = chain(&e), "backend refused the connection");
                if !retryable {
                    return Err(text(
                        StatusCode::BAD_GATEWAY,
                        format!("backend {} cannot be reached", backend.target.addr),
                    ));
                }
            }
            Err(e) => {
                tracing::warn!(route = live.route.id, backend = %backend.target, error = chain(&e), "backend failed");
                return Err(text(
                    StatusCode::BAD_GATEWAY,
                    format!("backend {} failed: {}", backend.target.addr, chain(&e)),
                ));
            }
        }
    }
    Err(text(
        StatusCode::BAD_GATEWAY,
        format!("no backend of {host} can be reached"),
    ))
}

/// An error with its causes, `a: b: c`.
fn chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        out.push_str(&format!(": {c}"));
        cause = c.source();
    }
    out
}

/// The backend's answer as sent to the client; a `101` joins both upgraded connections.
fn answer(
    mut resp: Response<Incoming>,
    client_upgrade: Option<hyper::upgrade::OnUpgrade>,
    live: &Live,
) -> Response<Body> {
    let switching = resp.status() == StatusCode::SWITCHING_PROTOCOLS;
    if switching {
        let Some(client) = client_upgrade else {
            return text(
                StatusCode::BAD_GATEWAY,
                "the backend switched protocols unasked",
            );
        };
        let backend = hyper::upgrade::on(&mut resp);
        let counters = live.counters.clone();
        let route = live.route.id.clone();
        tokio::spawn(async move {
            match tokio::try_join!(client, backend) {
                Ok((c, b)) => {
                    let mut c = Counted::new(TokioIo::new(c), counters);
                    let mut b = TokioIo::new(b);
                    if let Err(e) = tokio::io::copy_bidirectional(&mut c, &mut b).await {
                        tracing::debug!(route, error = %e, "upgraded connection ended");
                    }
                }
                Err(e) => tracing::debug!(route, error = %e, "upgrade failed"),
            }
        });
    }
    let (mut parts, body) = resp.into_parts();
    if !switching {
        strip_hop_by_hop(&mut parts.headers);
    }
    Response::from_parts(parts, Counting::tx(body, live.counters.clone()).boxed())
}

/// A body whose data bytes are added to a route's `rx` or `tx` as they stream.
struct Counting<B> {
    inner: B,
    counters: Arc<Counters>,
    rx: bool,
}

impl<B> Counting<B> {
    fn rx(inner: B, counters: Arc<Counters>) -> Self {
        Self {
            inner,
            counters,
            rx: true,
        }
    }

    fn tx(inner: B, counters: Arc<Counters>) -> Self {
        Self {
            inner,
            counters,
            rx: false,
        }
    }
}

impl<B> HttpBody for Counting<B>
where
    B: HttpBody<Data = Bytes> + Unpin,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        match ready!(Pin::new(&mut this.inner).poll_frame(cx)) {
            Some(Ok(frame)) => {
                if let Some(d) = frame.data_ref() {
                    let c = if this.rx {
                        &this.counters.rx
                    } else {
                        &this.counters.tx
                    };
                    c.fetch_add(d.len() as u64, Ordering::Relaxed);
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Some(Err(e)) => Poll::Ready(Some(Err(e.into()))),
            None => Poll::Ready(None),
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts_and_hop_by_hop() {
        let req = Request::builder()
            .uri("/x")
            .header("host", "Web.Example.ORG.:8443")
            .body(())
            .unwrap();
        assert_eq!(request_host(&req).as_deref(), Some("web.example.org"));
        let req = Request::builder()
            .uri("https://a.example/x")
            .header("host", "b.example")
            .body(())
            .unwrap();
        assert_eq!(request_host(&req).as_deref(), Some("a.example"));
        let req = Request::builder().uri("/").body(()).unwrap();
        assert_eq!(request_host(&req), None);

        let req = Request::builder()
            .uri("/")
            .header("connection", "keep-alive, Upgrade, x-secret")
            .header("upgrade", "websocket")
            .header("x-secret", "1")
            .header("te", "trailers")
            .header("accept", "*/*")
            .body(())
            .unwrap();
        assert_eq!(upgrade_of(&req).unwrap(), "websocket");
        let mut h = req.headers().clone();
        strip_hop_by_hop(&mut h);
        let left: Vec<_> = h.keys().map(|k| k.as_str()).collect();
        assert_eq!(left, vec!["accept"]);
    }
}
