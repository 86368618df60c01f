//! What zosd asks the gateway to serve: routes from a host name to a workload's backends.

use std::collections::HashSet;
use std::net::SocketAddr;

use serde::{Deserialize, Serialize};

/// The most routes one gateway holds.
pub const MAX_ROUTES: usize = 4096;
/// The most backends of one route.
pub const MAX_BACKENDS: usize = 64;
const MAX_HOST: usize = 253;
const MAX_ID: usize = 64;

/// How a route treats TLS.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Tls {
    /// HTTPS ends at the gateway, with a certificate for the host; plain HTTP is served too.
    Terminate,
    /// TLS goes through to a backend as it is, chosen by the SNI of the client's hello: the
    /// backend's own certificate reaches the client. Nothing is served on plain HTTP.
    Passthrough,
    /// Plain HTTP only.
    Plain,
}

/// Where a backend is: its address, and the network namespace it is reached from (a tenant's
/// network resource, `/run/netns/NAME`) when not the gateway's own. Two tenants' backends may
/// have the same address in their own networks; they are different backends.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Target {
    pub addr: SocketAddr,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub netns: Option<String>,
}

impl Target {
    /// A backend in the gateway's own namespace.
    pub fn here(addr: SocketAddr) -> Self {
        Self { addr, netns: None }
    }
}

impl std::fmt::Display for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.netns {
            Some(ns) => write!(f, "{} in {ns}", self.addr),
            None => write!(f, "{}", self.addr),
        }
    }
}

/// Whether `name` can name a network namespace under `/run/netns` (no path tricks).
pub fn valid_netns(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_ID
        && !name.starts_with('.')
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

/// One host name and where its traffic goes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Route {
    /// The workload it serves; its traffic is counted under this id.
    pub id: String,
    /// The host name (lowercase, no trailing dot).
    pub host: String,
    pub tls: Tls,
    /// Where requests go (HTTP to them, or the TLS stream with [`Tls::Passthrough`]), each
    /// reachable from the gateway's namespace.
    pub backends: Vec<Target>,
}

/// Why a route or a table of them is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RouteError {
    #[error("route id {0:?} must be 1 to {MAX_ID} of a-z, A-Z, 0-9, '.', '_' and '-'")]
    Id(String),
    #[error(
        "host {0:?} is not a DNS name (labels of a-z, 0-9 and '-', at least two, {MAX_HOST} bytes at most)"
    )]
    Host(String),
    #[error("route {id}: needs 1 to {MAX_BACKENDS} backends, has {count}")]
    BackendCount { id: String, count: usize },
    #[error("route {id}: backend {target} is listed twice")]
    DuplicateBackend { id: String, target: Target },
    #[error("route {id}: backend {target} has port 0 or an unspecified address")]
    Backend { id: String, target: Target },
    #[error("route {id}: {0:?} is not a network namespace name (1 to {MAX_ID} of a-z, A-Z, 0-9, '.', '_' and '-', not starting with '.')", .netns)]
    Netns { id: String, netns: String },
    #[error("host {host} is routed twice (routes {first} and {second})")]
    DuplicateHost {
        host: String,
        first: String,
        second: String,
    },
    #[error("route id {0} is used twice")]
    DuplicateId(String),
    #[error("a gateway holds at most {MAX_ROUTES} routes, this table has {0}")]
    Count(usize),
}

/// Whether `host` is a lowercase DNS name of two labels or more.
pub fn valid_host(host: &str) -> bool {
    let labels: Vec<&str> = host.split('.').collect();
    host.len() <= MAX_HOST
        && labels.len() >= 2
        && labels.iter().all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && !l.starts_with('-')
                && !l.ends_with('-')
                && l.bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        })
}

impl Route {
    /// Checks one route on its own.
    pub fn validate(&self) -> Result<(), RouteError> {
        let id_ok = !self.id.is_empty()
            && self.id.len() <= MAX_ID
            && self
                .id
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
        if !id_ok {
            return Err(RouteError::Id(self.id.chars().take(80).collect()));
        }
        if !valid_host(&self.host) {
            return Err(RouteError::Host(self.host.chars().take(80).collect()));
        }
        if self.backends.is_empty() || self.backends.len() > MAX_BACKENDS {
            return Err(RouteError::BackendCount {
                id: self.id.clone(),
                count: self.backends.len(),
            });
        }
        let mut seen = HashSet::new();
        for t in &self.backends {
            if t.addr.port() == 0 || t.addr.ip().is_unspecified() {
                return Err(RouteError::Backend {
                    id: self.id.clone(),
                    target: t.clone(),
                });
            }
            if let Some(ns) = &t.netns
                && !valid_netns(ns)
            {
                return Err(RouteError::Netns {
                    id: self.id.clone(),
                    netns: ns.chars().take(80).collect(),
                });
            }
            if !seen.insert(t) {
                return Err(RouteError::DuplicateBackend {
                    id: self.id.clone(),
                    target: t.clone(),
                });
            }
        }
        Ok(())
    }
}

/// Checks a whole table: each route, and no host or id twice.
pub fn validate_table(routes: &[Route]) -> Result<(), RouteError> {
    if routes.len() > MAX_ROUTES {
        return Err(RouteError::Count(routes.len()));
    }
    let mut hosts = std::collections::HashMap::new();
    let mut ids = HashSet::new();
    for r in routes {
        r.validate()?;
        if let Some(first) = hosts.insert(r.host.as_str(), r.id.as_str()) {
            return Err(RouteError::DuplicateHost {
                host: r.host.clone(),
                first: first.to_string(),
                second: r.id.clone(),
            });
        }
        if !ids.insert(r.id.as_str()) {
            return Err(RouteError::DuplicateId(r.id.clone()));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn route(id: &str, host: &str) -> Route {
        Route {
            id: id.into(),
            host: host.into(),
            tls: Tls::Terminate,
            backends: vec![Target::here("10.1.2.3:80".parse().unwrap())],
        }
    }

    #[test]
    fn hosts() {
        for good in ["a.b", "web.node1.grid.example", "x-1.y2.z", "1.2"] {
            assert!(valid_host(good), "{good}");
        }
        let long = format!("{}.example", "a".repeat(64));
        for bad in [
            "",
            "localhost",
            "a..b",
            ".a.b",
            "a.b.",
            "A.b",
            "-a.b",
            "a-.b",
            "a_b.c",
            "*.a.b",
            "a b.c",
            &long,
        ] {
            assert!(!valid_host(bad), "{bad}");
        }
    }

    #[test]
    fn tables() {
        assert!(validate_table(&[route("1", "a.example"), route("2", "b.example")]).is_ok());
        assert!(matches!(
            validate_table(&[route("1", "a.example"), route("2", "a.example")]),
            Err(RouteError::DuplicateHost { .. })
        ));
        assert!(matches!(
            validate_table(&[route("1", "a.example"), route("1", "b.example")]),
            Err(RouteError::DuplicateId(_))
        ));
        let mut r = route("1", "a.example");
        r.backends.push(r.backends[0].clone());
        assert!(matches!(
            r.validate(),
            Err(RouteError::DuplicateBackend { .. })
        ));
        r.backends = vec![];
        assert!(matches!(r.validate(), Err(RouteError::BackendCount { .. })));
        r.backends = vec![Target::here("0.0.0.0:80".parse().unwrap())];
        assert!(matches!(r.validate(), Err(RouteError::Backend { .. })));
        // The same address in two namespaces: two backends. A namespace name is no path.
        let addr = "10.1.2.3:80".parse().unwrap();
        let ns = |n: &str| Target {
            addr,
            netns: Some(n.into()),
        };
        r.backends = vec![ns("n-a"), ns("n-b"), Target::here(addr)];
        assert!(r.validate().is_ok());
        for bad in ["../x", "a/b", ".hidden", "", "a b"] {
            r.backends = vec![ns(bad)];
            assert!(
                matches!(r.validate(), Err(RouteError::Netns { .. })),
                "{bad}"
            );
        }
        assert!(matches!(
            route("a/b", "a.example").validate(),
            Err(RouteError::Id(_))
        ));
    }
}
