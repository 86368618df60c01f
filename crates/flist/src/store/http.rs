//! The HTTP block store client, and the redirect rule every flist download shares: a redirect
//! is followed only to the same scheme, host and port (at most [`MAX_REDIRECTS`] times). A
//! server the node was allowed to reach cannot send it on to another host (an internal address,
//! another tenant's service); such a redirect is an error naming both hosts.

use std::sync::Arc;
use std::time::Duration;

use reqwest::{Method, StatusCode, Url};
use zos_types::auth::{RequestAuth, Signer};
use zos_types::identity::Identity;

use super::{BlockStore, StoreError};
use crate::block::{BlockId, MAX_ENCODED_SIZE};
use crate::meta::Route;

/// Most ids sent in one `POST …/blocks/missing`.
pub const MISSING_BATCH: usize = 1024;

/// Most redirects followed (each within the first URL's origin).
pub const MAX_REDIRECTS: usize = 5;

/// The redirect policy of every flist HTTP client: same origin only, at most [`MAX_REDIRECTS`].
pub fn same_origin_redirects() -> reqwest::redirect::Policy {
    reqwest::redirect::Policy::custom(|attempt| {
        let first = &attempt.previous()[0];
        let same = attempt.url().scheme() == first.scheme()
            && attempt.url().host_str() == first.host_str()
            && attempt.url().port_or_known_default() == first.port_or_known_default();
        if !same {
            let error = format!(
                "{} redirects to another host ({}): flists and blocks are fetched only from the \
                 host named",
                origin(first),
                origin(attempt.url())
            );
            attempt.error(error)
        } else if attempt.previous().len() > MAX_REDIRECTS {
            attempt.error(format!("more than {MAX_REDIRECTS} redirects"))
        } else {
            attempt.follow()
        }
    })
}

/// `scheme://host:port` of `u`.
fn origin(u: &Url) -> String {
    format!(
        "{}://{}:{}",
        u.scheme(),
        u.host_str().unwrap_or(""),
        u.port_or_known_default().unwrap_or(0)
    )
}

/// A client of the hub's block API:
///
/// ```text
/// GET  {base}/blocks/{hex id}      the cipher text, 404 if absent
/// HEAD {base}/blocks/{hex id}      200 or 404
/// PUT  {base}/blocks/{hex id}      store (signed with a twin key when one is set)
/// POST {base}/blocks/missing       JSON list of hex ids -> JSON list of the ones it lacks
/// ```
///
/// The same client reads rfs `http://` stores: when `{blocks}/{hex}` is absent it tries
/// `{blocks}/{hex[0..2]}/{hex}`. The route it writes into flists is its `{base}/blocks` URL,
/// which rfs reads through its own flat-layout fallback.
#[derive(Clone)]
pub struct HttpStore {
    client: reqwest::Client,
    blocks: Url,
    auth: Option<Arc<(Identity, Signer)>>,
}

impl std::fmt::Debug for HttpStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpStore")
            .field("blocks", &self.blocks.as_str())
            .field("signed", &self.auth.is_some())
            .finish()
    }
}

impl HttpStore {
    /// A client of the hub at `base` (for example `http://hub:8080/api/v1`).
    pub fn new(base: &str) -> Result<Self, StoreError> {
        let bad = |reason: String| StoreError::BadUrl {
            url: base.to_string(),
            reason,
        };
        let mut u = Url::parse(base).map_err(|e| bad(e.to_string()))?;
        u.path_segments_mut()
            .map_err(|_| bad("not a base URL".into()))?
            .pop_if_empty()
            .push("blocks");
        Self::from_blocks_url(u)
    }

    /// A client whose blocks live directly under `blocks` (a route URL).
    pub fn from_blocks_url(mut blocks: Url) -> Result<Self, StoreError> {
        if !matches!(blocks.scheme(), "http" | "https") || blocks.cannot_be_a_base() {
            return Err(StoreError::BadUrl {
                url: blocks.to_string(),
                reason: "expected an http or https URL".into(),
            });
        }
        if let Ok(mut s) = blocks.path_segments_mut() {
            s.pop_if_empty();
        }
        let client = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(10))
            .timeout(Duration::from_secs(120))
            .redirect(same_origin_redirects())
            .build()
            .map_err(|e| StoreError::Http {
                store: blocks.to_string(),
                url: blocks.to_string(),
                source: e,
            })?;
        Ok(Self {
            client,
            blocks,
            auth: None,
        })
    }

    /// Signs uploads (`PUT`, `POST missing`) with a twin key, as the hub requires.
    pub fn with_auth(mut self, identity: Identity, signer: Signer) -> Self {
        self.auth = Some(Arc::new((identity, signer)));
        self
    }

    fn name(&self) -> String {
        self.blocks.to_string()
    }

    fn url(&self, parts: &[&str]) -> Url {
        let mut u = self.blocks.clone();
        u.path_segments_mut()
            .expect("checked base URL")
            .extend(parts);
        u
    }

    fn request(&self, method: Method, url: Url, body: Vec<u8>) -> reqwest::RequestBuilder {
        self.request_at(method, url, body, zos_types::auth::unix_now())
    }

    /// A request signed (when the store has a key) with timestamp `ts`.
    fn request_at(
        &self,
        method: Method,
        url: Url,
        body: Vec<u8>,
        ts: i64,
    ) -> reqwest::RequestBuilder {
        let mut req = self.client.request(method.clone(), url.clone());
        if let Some(auth) = &self.auth
            && method != Method::GET
            && method != Method::HEAD
        {
            let pq = match url.query() {
                Some(q) => format!("{}?{q}", url.path()),
                None => url.path().to_string(),
            };
            let signed = RequestAuth::sign(&auth.0, auth.1, method.as_str(), &pq, ts, &body);
            req = req.header(zos_types::auth::HEADER, signed.to_string());
        }
        req.body(body)
    }

    async fn send(
        &self,
        req: reqwest::RequestBuilder,
        url: &Url,
    ) -> Result<reqwest::Response, StoreError> {
        req.send().await.map_err(|e| StoreError::Http {
            store: self.name(),
            url: url.to_string(),
            source: e,
        })
    }

    fn status(&self, url: &Url, status: StatusCode) -> StoreError {
        StoreError::Status {
            store: self.name(),
            url: url.to_string(),
            status: status.as_u16(),
        }
    }

    async fn read_body(
        &self,
        url: &Url,
        mut resp: reqwest::Response,
    ) -> Result<Vec<u8>, StoreError> {
        if resp.content_length().unwrap_or(0) > MAX_ENCODED_SIZE as u64 {
            return Err(StoreError::Protocol {
                store: self.name(),
                detail: format!("{url} sent more than a block"),
            });
        }
        let mut out = Vec::new();
        while let Some(chunk) = resp.chunk().await.map_err(|e| StoreError::Http {
            store: self.name(),
            url: url.to_string(),
            source: e,
        })? {
            if out.len() + chunk.len() > MAX_ENCODED_SIZE {
                return Err(StoreError::Protocol {
                    store: self.name(),
                    detail: format!("{url} sent more than a block"),
                });
            }
            out.extend_from_slice(&chunk);
        }
        Ok(out)
    }
}

#[async_trait::async_trait]
impl BlockStore for HttpStore {
    async fn get(&self, id: &BlockId) -> Result<Vec<u8>, StoreError> {
        let hex = id.to_hex();
        for url in [self.url(&[&hex]), self.url(&[&hex[..2], &hex])] {
            let resp = self.send(self.client.get(url.clone()), &url).await?;
            match resp.status() {
                StatusCode::OK => return self.read_body(&url, resp).await,
                StatusCode::NOT_FOUND => continue,
                s => return Err(self.status(&url, s)),
            }
        }
        Err(StoreError::NotFound {
            id: *id,
            store: self.name(),
        })
    }

    async fn put(&self, id: &BlockId, data: &[u8]) -> Result<(), StoreError> {
        let url = self.url(&[&id.to_hex()]);
        let now = zos_types::auth::unix_now();
        let mut resp = self
            .send(
                self.request_at(Method::PUT, url.clone(), data.to_vec(), now),
                &url,
            )
            .await?;
        if resp.status() == StatusCode::UNAUTHORIZED && self.auth.is_some() {
            // Another upload of the same block with the same key in the same second (another
            // pack of the same twin) carries the same signature, which the hub refuses as a
            // replay. Sign once more with another timestamp: a real refusal stays a refusal.
            resp = self
                .send(
                    self.request_at(Method::PUT, url.clone(), data.to_vec(), now + 1),
                    &url,
                )
                .await?;
        }
        if !resp.status().is_success() {
            return Err(self.status(&url, resp.status()));
        }
        Ok(())
    }

    async fn exists(&self, id: &BlockId) -> Result<bool, StoreError> {
        let url = self.url(&[&id.to_hex()]);
        let resp = self.send(self.client.head(url.clone()), &url).await?;
        match resp.status() {
            s if s.is_success() => Ok(true),
            StatusCode::NOT_FOUND => Ok(false),
            s => Err(self.status(&url, s)),
        }
    }

    async fn missing(&self, ids: &[BlockId]) -> Result<Vec<BlockId>, StoreError> {
        let url = self.url(&["missing"]);
        let mut out = Vec::new();
        for batch in ids.chunks(MISSING_BATCH) {
            let hexes: Vec<String> = batch.iter().map(|i| i.to_hex()).collect();
            let body = serde_json::to_vec(&hexes).expect("strings serialize");
            let req = self
                .request(Method::POST, url.clone(), body)
                .header(reqwest::header::CONTENT_TYPE, "application/json");
            let resp = self.send(req, &url).await?;
            if !resp.status().is_success() {
                return Err(self.status(&url, resp.status()));
            }
            let text = self.read_body(&url, resp).await?;
            let lacking: Vec<BlockId> =
                serde_json::from_slice(&text).map_err(|e| StoreError::Protocol {
                    store: self.name(),
                    detail: format!("{url} answered something other than a list of block ids: {e}"),
                })?;
            let asked: std::collections::HashSet<&BlockId> = batch.iter().collect();
            if let Some(odd) = lacking.iter().find(|i| !asked.contains(i)) {
                return Err(StoreError::Protocol {
                    store: self.name(),
                    detail: format!("{url} named block {odd} that was not asked about"),
                });
            }
            let lacking: std::collections::HashSet<BlockId> = lacking.into_iter().collect();
            out.extend(batch.iter().filter(|i| lacking.contains(i)).copied());
        }
        Ok(out)
    }

    fn routes(&self) -> Vec<Route> {
        vec![Route::all(self.blocks.to_string())]
    }
}
