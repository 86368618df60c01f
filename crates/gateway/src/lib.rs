//! The node's web gateway: the tenant-facing HTTP and HTTPS listener on a node's public
//! address, which takes web traffic for host names and sends it to the backends of the
//! workload that owns the name (`gateway-name-proxy`, `gateway-fqdn-proxy`).
//!
//! ```text
//!  client ── :80  HTTP ──────────────┐
//!         └─ :443 TLS hello ─ SNI ───┼─ route (host) ─ terminate: HTTP/1.1, HTTP/2 ─ backend (HTTP/1.1)
//!                                    │                 passthrough: the TLS stream ── backend (TLS)
//!  zosd ── control socket (JSON lines): routes, certificates, traffic counters, health
//! ```
//!
//! - One process (`zos-gateway`), run by zosd in the node's public namespace and adopted across
//!   zosd's restarts and upgrades: open connections live as long as the gateway does.
//! - Routes are exact host names; a table is replaced whole, or refused whole
//!   ([`route::validate_table`]). A request for a host without a route gets `404`; a request on
//!   a TLS connection for another host than its server name gets `421`.
//! - Requests carry `X-Forwarded-For` (the client's address, replacing what the client said),
//!   `X-Forwarded-Proto` and `X-Forwarded-Host`; hop-by-hop headers stay on their hop; upgrades
//!   (WebSocket) are tunnelled; bodies stream both ways and are counted per route.
//! - Backends are checked by a TCP connect every few seconds; one that fails twice in a row
//!   leaves the rotation until it answers again ([`table::Backend::report`]).
//! - Limits ([`server::Limits`]): request head size (`431` beyond), idle time, time to send a
//!   TLS hello or a request head, open connections per client address and in all.
//!
//! See `docs/gateway.md`.

pub mod acme;
pub mod challenges;
pub mod connect;
pub mod control;
pub mod http;
pub mod io;
pub mod route;
pub mod server;
pub mod supervisor;
pub mod table;
pub mod tls;

pub use route::{Route, Target, Tls};
pub use server::{Gateway, Limits};
