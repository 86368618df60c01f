//! [`ClientView`]: the grid as the provisioning engine and the uplink see it (twin keys, cached,
//! and contracts), over a [`GridClient`].
//!
//! Twin keys are cached, twins the grid does not know too (for a while), both in bounded LRU
//! caches, so a flood of unknown signers costs one grid lookup each. It lives apart from the
//! uplink so that the agent, the API and the uplink depend on it without depending on each
//! other.

use std::num::NonZeroUsize;
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use futures::future::BoxFuture;
use lru::LruCache;
use zos_client::{ClientError, GridClient};
use zos_types::contract::{Contract, ContractFilter};
use zos_types::deployment::ContractId;
use zos_types::{PublicKey, TwinId};

use zos_provision::{GridView, GridViewError};

/// How long a twin's key is trusted from the cache.
const KEY_TTL: Duration = Duration::from_secs(600);
/// How long a twin the grid does not know stays known as unknown.
const UNKNOWN_TTL: Duration = Duration::from_secs(60);
/// Twins each cache (known keys, unknown twins) holds at most; the least recently used go.
pub const MAX_CACHED_TWINS: usize = 10_000;
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// The grid, as the engine and the uplink see it: twin keys (cached) and contracts.
pub struct ClientView {
    client: GridClient,
    keys: Mutex<LruCache<TwinId, (PublicKey, Instant)>>,
    unknown: Mutex<LruCache<TwinId, Instant>>,
}

impl std::fmt::Debug for ClientView {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientView").finish_non_exhaustive()
    }
}

impl ClientView {
    pub fn new(client: GridClient) -> Self {
        Self::with_capacity(client, MAX_CACHED_TWINS)
    }

    /// A view whose caches hold at most `twins` twins each (at least one).
    pub fn with_capacity(client: GridClient, twins: usize) -> Self {
        let cap = NonZeroUsize::new(twins.max(1)).expect("at least one");
        Self {
            client,
            keys: Mutex::new(LruCache::new(cap)),
            unknown: Mutex::new(LruCache::new(cap)),
        }
    }

    /// The cached answer for `twin`: `Some(Some(key))` known, `Some(None)` known to be unknown.
    fn cached(&self, twin: TwinId) -> Option<Option<PublicKey>> {
        if let Some((k, at)) = lock(&self.keys).get(&twin)
            && at.elapsed() < KEY_TTL
        {
            return Some(Some(*k));
        }
        let mut unknown = lock(&self.unknown);
        match unknown.get(&twin) {
            Some(at) if at.elapsed() < UNKNOWN_TTL => Some(None),
            Some(_) => {
                unknown.pop(&twin);
                None
            }
            None => None,
        }
    }

    /// `twin`'s key if the cache has it (no grid lookup).
    pub fn cached_key(&self, twin: TwinId) -> Option<PublicKey> {
        self.cached(twin).flatten()
    }

    /// `twin`'s key (cached, or asked of the grid), `None` when the grid says it has no such
    /// twin.
    pub(crate) async fn key(&self, twin: TwinId) -> Result<Option<PublicKey>, GridViewError> {
        if let Some(k) = self.cached(twin) {
            return Ok(k);
        }
        match self.client.get_twin(twin).await {
            Ok(t) => {
                lock(&self.keys).put(twin, (t.public_key, Instant::now()));
                Ok(Some(t.public_key))
            }
            Err(e) if e.is_not_found() => {
                lock(&self.unknown).put(twin, Instant::now());
                Ok(None)
            }
            Err(e) => Err(unavailable(format!("twin {twin}"), e)),
        }
    }
}

/// The grid could not answer about `what`; the client's error is the cause.
fn unavailable(what: String, e: ClientError) -> GridViewError {
    GridViewError::Unavailable {
        what,
        source: Box::new(e),
    }
}

impl GridView for ClientView {
    fn twin_key(&self, twin: TwinId) -> BoxFuture<'_, Result<PublicKey, GridViewError>> {
        Box::pin(async move {
            self.key(twin)
                .await?
                .ok_or_else(|| GridViewError::NotFound {
                    what: format!("twin {twin}"),
                })
        })
    }

    fn contract(&self, id: ContractId) -> BoxFuture<'_, Result<Contract, GridViewError>> {
        Box::pin(async move {
            match self.client.get_contract(id).await {
                Ok(c) => Ok(c),
                Err(e) if e.is_not_found() => Err(GridViewError::NotFound {
                    what: format!("contract {id}"),
                }),
                Err(e) => Err(unavailable(format!("contract {id}"), e)),
            }
        })
    }

    fn contracts(
        &self,
        filter: ContractFilter,
    ) -> BoxFuture<'_, Result<Vec<Contract>, GridViewError>> {
        Box::pin(async move {
            self.client
                .list_contracts(&filter)
                .await
                .map_err(|e| unavailable("contracts".into(), e))
        })
    }
}
