//! What every handler of the grid shares: [`AppState`], the store, the clock, the replay cache,
//! the relay, the admin twin and the billing rules. It sits apart from the routes (`api`, `contracts`, `relay::http`,
//! `hub`) and from the extractors (`auth`) that use it, so that none of them imports another's
//! router to reach it.

use std::sync::{Arc, Mutex, MutexGuard};

use zos_types::TwinId;

use crate::billing::config::BillingConfig;
use crate::clock::Clock;
use crate::error::ApiFailure;
use crate::relay::{Relay, RelayConfig};
use crate::replay::{ReplayCache, ReplayConfig};
use crate::store::{Store, StoreError};

/// What every handler shares.
#[derive(Debug, Clone)]
pub struct AppState {
    store: Arc<dyn Store>,
    clock: Arc<dyn Clock>,
    replay: Arc<Mutex<ReplayCache>>,
    admin: Option<TwinId>,
    relay: Arc<Relay>,
    billing: BillingConfig,
}

impl AppState {
    /// State over `store`, with a relay of default limits that hears of the store's new node
    /// events.
    pub fn new(store: Arc<dyn Store>, clock: Arc<dyn Clock>, replay: ReplayConfig) -> Self {
        Self {
            store,
            clock,
            replay: Arc::new(Mutex::new(ReplayCache::new(replay))),
            admin: None,
            relay: Arc::new(Relay::new(RelayConfig::default())),
            billing: BillingConfig::default(),
        }
        .with_relay(RelayConfig::default())
    }

    /// The same state with a relay of these limits (replacing the one it had).
    pub fn with_relay(mut self, config: RelayConfig) -> Self {
        let relay = Arc::new(Relay::new(config));
        let hook = relay.clone();
        self.store
            .on_node_events(Arc::new(move |node| hook.events_for(node)));
        self.relay = relay;
        self
    }

    /// The same state with an admin twin (it may set grace periods).
    pub fn with_admin(mut self, admin: Option<TwinId>) -> Self {
        self.admin = admin;
        self
    }

    /// The same state with these billing rules.
    pub fn with_billing(mut self, billing: BillingConfig) -> Self {
        self.billing = billing;
        self
    }

    pub fn billing(&self) -> &BillingConfig {
        &self.billing
    }

    pub fn admin(&self) -> Option<TwinId> {
        self.admin
    }

    pub fn relay(&self) -> &Arc<Relay> {
        &self.relay
    }

    pub fn store(&self) -> &Arc<dyn Store> {
        &self.store
    }

    /// The registry's time.
    pub fn now(&self) -> i64 {
        self.clock.now()
    }

    pub fn replay(&self) -> MutexGuard<'_, ReplayCache> {
        self.replay.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Runs a store operation on a blocking thread.
    pub async fn run<T, F>(&self, f: F) -> Result<T, ApiFailure>
    where
        T: Send + 'static,
        F: FnOnce(&dyn Store) -> Result<T, StoreError> + Send + 'static,
    {
        let store = self.store.clone();
        tokio::task::spawn_blocking(move || f(store.as_ref()))
            .await
            .map_err(|e| ApiFailure::internal("store task", e))?
            .map_err(ApiFailure::from)
    }
}
