//! The live routing table: routes by host, each backend's health, and each route's counters.
//! A new table replaces the old one whole; backends keep their health and routes their
//! counters across the replacement.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use serde::{Deserialize, Serialize};

use crate::route::{Route, RouteError, Target, validate_table};

/// Failed checks in a row after which a backend leaves the rotation.
pub const FAILS_TO_DOWN: u32 = 2;

/// Traffic of one route since the gateway started (bytes as they cross the gateway: HTTP
/// bodies, or the whole TLS stream of a passthrough route).
#[derive(Debug, Default)]
pub struct Counters {
    pub requests: AtomicU64,
    /// Bytes from clients.
    pub rx: AtomicU64,
    /// Bytes to clients.
    pub tx: AtomicU64,
}

/// The figures of [`Counters`], as answered to zosd.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Meter {
    pub requests: u64,
    pub rx: u64,
    pub tx: u64,
}

impl Counters {
    pub fn meter(&self) -> Meter {
        Meter {
            requests: self.requests.load(Ordering::Relaxed),
            rx: self.rx.load(Ordering::Relaxed),
            tx: self.tx.load(Ordering::Relaxed),
        }
    }
}

/// One backend and whether it takes traffic.
#[derive(Debug)]
pub struct Backend {
    pub target: Target,
    /// `target` as the URI authority the backend client connects by (see
    /// [`crate::connect::authority`]), made once.
    pub authority: hyper::http::uri::Authority,
    healthy: AtomicBool,
    fails: AtomicU32,
}

impl Backend {
    fn new(target: Target) -> Self {
        Self {
            authority: crate::connect::authority(&target),
            target,
            healthy: AtomicBool::new(true),
            fails: AtomicU32::new(0),
        }
    }

    pub fn healthy(&self) -> bool {
        self.healthy.load(Ordering::Relaxed)
    }

    /// Records a check or a connection attempt: one success brings it back, [`FAILS_TO_DOWN`]
    /// failures in a row take it out of the rotation.
    pub fn report(&self, ok: bool) {
        if ok {
            self.fails.store(0, Ordering::Relaxed);
            if !self.healthy.swap(true, Ordering::Relaxed) {
                tracing::info!(backend = %self.target, "backend is back");
            }
        } else if self.fails.fetch_add(1, Ordering::Relaxed) + 1 >= FAILS_TO_DOWN
            && self.healthy.swap(false, Ordering::Relaxed)
        {
            tracing::warn!(backend = %self.target, "backend is down: out of the rotation");
        }
    }
}

/// A route as served.
#[derive(Debug)]
pub struct Live {
    pub route: Route,
    pub backends: Vec<Arc<Backend>>,
    next: AtomicUsize,
    pub counters: Arc<Counters>,
}

impl Live {
    /// The backends to try, in order: the healthy ones round robin, then the others (a route
    /// whose backends are all marked down still tries them).
    pub fn candidates(&self) -> Vec<Arc<Backend>> {
        let n = self.backends.len();
        let start = self.next.fetch_add(1, Ordering::Relaxed) % n;
        let order = (0..n).map(|i| &self.backends[(start + i) % n]);
        let (up, down): (Vec<_>, Vec<_>) = order.cloned().partition(|b| b.healthy());
        up.into_iter().chain(down).collect()
    }
}

/// A route's state for `status`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteStatus {
    pub id: String,
    pub host: String,
    pub tls: crate::route::Tls,
    pub backends: Vec<BackendStatus>,
    pub meter: Meter,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BackendStatus {
    pub addr: SocketAddr,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub netns: Option<String>,
    pub healthy: bool,
}

/// The table and what outlives a replacement of it.
#[derive(Debug, Default)]
pub struct Shared {
    hosts: RwLock<Arc<HashMap<String, Arc<Live>>>>,
    counters: Mutex<HashMap<String, Arc<Counters>>>,
    backends: Mutex<HashMap<Target, Arc<Backend>>>,
}

impl Shared {
    /// Replaces the whole table, or changes nothing when `routes` is refused.
    pub fn set(&self, routes: Vec<Route>) -> Result<usize, RouteError> {
        validate_table(&routes)?;
        let mut counters = self.counters.lock().unwrap();
        let mut backends = self.backends.lock().unwrap();
        let mut hosts = HashMap::with_capacity(routes.len());
        for route in routes {
            let counters = counters.entry(route.id.clone()).or_default().clone();
            let live_backends = route
                .backends
                .iter()
                .map(|t| {
                    backends
                        .entry(t.clone())
                        .or_insert_with(|| Arc::new(Backend::new(t.clone())))
                        .clone()
                })
                .collect();
            hosts.insert(
                route.host.clone(),
                Arc::new(Live {
                    route,
                    backends: live_backends,
                    next: AtomicUsize::new(0),
                    counters,
                }),
            );
        }
        let used: std::collections::HashSet<&Target> = hosts
            .values()
            .flat_map(|l| l.route.backends.iter())
            .collect();
        backends.retain(|t, _| used.contains(t));
        let count = hosts.len();
        *self.hosts.write().unwrap() = Arc::new(hosts);
        tracing::info!(routes = count, "routing table replaced");
        Ok(count)
    }

    /// The route of `host` (lowercase), if any.
    pub fn route(&self, host: &str) -> Option<Arc<Live>> {
        self.hosts.read().unwrap().get(host).cloned()
    }

    /// Every backend of the table, once each.
    pub fn backends(&self) -> Vec<Arc<Backend>> {
        self.backends.lock().unwrap().values().cloned().collect()
    }

    /// The traffic of every route since the gateway started. Routes no longer in the table
    /// are answered once more, then forgotten: their last bytes are not lost to billing.
    pub fn metrics(&self) -> BTreeMap<String, Meter> {
        let hosts = self.hosts.read().unwrap().clone();
        let mut counters = self.counters.lock().unwrap();
        let out = counters
            .iter()
            .map(|(id, c)| (id.clone(), c.meter()))
            .collect();
        let live: std::collections::HashSet<&str> =
            hosts.values().map(|l| l.route.id.as_str()).collect();
        counters.retain(|id, _| live.contains(id.as_str()));
        out
    }

    /// The hosts of the routes that end TLS here.
    pub fn terminating_hosts(&self) -> Vec<String> {
        let hosts = self.hosts.read().unwrap().clone();
        hosts
            .values()
            .filter(|l| l.route.tls == crate::route::Tls::Terminate)
            .map(|l| l.route.host.clone())
            .collect()
    }

    /// Each route with its backends' health and its traffic, ordered by host.
    pub fn status(&self) -> Vec<RouteStatus> {
        let hosts = self.hosts.read().unwrap().clone();
        let mut out: Vec<RouteStatus> = hosts
            .values()
            .map(|l| RouteStatus {
                id: l.route.id.clone(),
                host: l.route.host.clone(),
                tls: l.route.tls,
                backends: l
                    .backends
                    .iter()
                    .map(|b| BackendStatus {
                        addr: b.target.addr,
                        netns: b.target.netns.clone(),
                        healthy: b.healthy(),
                    })
                    .collect(),
                meter: l.counters.meter(),
            })
            .collect();
        out.sort_by(|a, b| a.host.cmp(&b.host));
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::route::Tls;

    fn route(id: &str, host: &str, backends: &[&str]) -> Route {
        Route {
            id: id.into(),
            host: host.into(),
            tls: Tls::Plain,
            backends: backends
                .iter()
                .map(|b| Target::here(b.parse().unwrap()))
                .collect(),
        }
    }

    #[test]
    fn replacement_keeps_counters_and_health_and_refusal_changes_nothing() {
        let s = Shared::default();
        s.set(vec![route(
            "w1",
            "a.example",
            &["10.0.0.1:80", "10.0.0.2:80"],
        )])
        .unwrap();
        let live = s.route("a.example").unwrap();
        live.counters.rx.fetch_add(5, Ordering::Relaxed);
        live.backends[1].report(false);
        live.backends[1].report(false);
        assert!(!live.backends[1].healthy());
        // The healthy one first, every time.
        for _ in 0..3 {
            assert_eq!(live.candidates()[0].target, live.backends[0].target);
        }
        // A refused table leaves the old one.
        let dup = vec![route("w1", "a.example", &["10.0.0.1:80"]); 2];
        assert!(s.set(dup).is_err());
        assert!(s.route("a.example").is_some());

        s.set(vec![
            route("w1", "a.example", &["10.0.0.2:80"]),
            route("w2", "b.example", &["10.0.0.3:80"]),
        ])
        .unwrap();
        let live = s.route("a.example").unwrap();
        assert_eq!(live.counters.meter().rx, 5);
        assert!(!live.backends[0].healthy(), "health follows the address");
        live.backends[0].report(true);
        assert!(live.backends[0].healthy());
        assert_eq!(s.backends().len(), 2);

        // A removed route is answered once more, then forgotten.
        s.set(vec![route("w2", "b.example", &["10.0.0.3:80"])])
            .unwrap();
        assert_eq!(s.metrics()["w1"].rx, 5);
        assert!(!s.metrics().contains_key("w1"));
        assert!(s.route("a.example").is_none());
    }
}
