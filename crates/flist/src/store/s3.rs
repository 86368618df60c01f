use std::sync::Arc;

use object_store::aws::{AmazonS3, AmazonS3Builder};
use object_store::path::Path as ObjPath;
use object_store::{ObjectStore, PutPayload};
use reqwest::Url;

use super::{BlockStore, StoreError};
use crate::block::{BlockId, MAX_ENCODED_SIZE};
use crate::meta::Route;

/// A store in an S3-compatible bucket, named as rfs names it:
/// `s3://key:secret@host:port/bucket[?region=…]` (plain HTTP) or `s3s://…` (HTTPS).
/// Objects are path-style, one per block, keyed by the hex id.
#[derive(Clone)]
pub struct S3Store {
    store: Arc<AmazonS3>,
    url: String,
}

impl std::fmt::Debug for S3Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("S3Store")
            .field("url", &super::strip_password(&self.url))
            .finish()
    }
}

impl S3Store {
    /// Opens the bucket a `s3://` or `s3s://` URL names.
    pub fn from_url(url: &str) -> Result<Self, StoreError> {
        let bad = |reason: &str| StoreError::BadUrl {
            url: super::strip_password(url),
            reason: reason.to_string(),
        };
        let u = Url::parse(url).map_err(|e| bad(&e.to_string()))?;
        let tls = match u.scheme() {
            "s3" => false,
            "s3s" => true,
            _ => return Err(bad("expected s3:// or s3s://")),
        };
        let host = u.host_str().ok_or_else(|| bad("no host"))?;
        let bucket = u
            .path_segments()
            .and_then(|mut s| s.next())
            .filter(|b| !b.is_empty())
            .ok_or_else(|| bad("no bucket in the path"))?;
        let endpoint = match u.port() {
            Some(p) => format!("{}://{host}:{p}", if tls { "https" } else { "http" }),
            None => format!("{}://{host}", if tls { "https" } else { "http" }),
        };
        let region = u
            .query_pairs()
            .find(|(k, _)| k == "region")
            .map(|(_, v)| v.into_owned())
            .unwrap_or_else(|| "us-east-1".into());
        let mut b = AmazonS3Builder::new()
            .with_endpoint(endpoint)
            .with_allow_http(!tls)
            .with_bucket_name(bucket)
            .with_region(region)
            .with_virtual_hosted_style_request(false);
        if u.username().is_empty() {
            b = b.with_skip_signature(true);
        } else {
            b = b
                .with_access_key_id(u.username())
                .with_secret_access_key(u.password().unwrap_or_default());
        }
        let store = b.build().map_err(|e| bad(&e.to_string()))?;
        Ok(Self {
            store: Arc::new(store),
            url: url.to_string(),
        })
    }

    fn name(&self) -> String {
        super::strip_password(&self.url)
    }

    fn err(&self, what: &str, e: object_store::Error) -> StoreError {
        StoreError::Protocol {
            store: self.name(),
            detail: format!("{what}: {e}"),
        }
    }
}

#[async_trait::async_trait]
impl BlockStore for S3Store {
    async fn get(&self, id: &BlockId) -> Result<Vec<u8>, StoreError> {
        let path = ObjPath::from(id.to_hex());
        let r = match self.store.get(&path).await {
            Ok(r) => r,
            Err(object_store::Error::NotFound { .. }) => {
                return Err(StoreError::NotFound {
                    id: *id,
                    store: self.name(),
                });
            }
            Err(e) => return Err(self.err(&format!("get {id}"), e)),
        };
        if r.meta.size > MAX_ENCODED_SIZE as u64 {
            return Err(StoreError::Protocol {
                store: self.name(),
                detail: format!("object {id} is larger than any block"),
            });
        }
        let bytes = r
            .bytes()
            .await
            .map_err(|e| self.err(&format!("read {id}"), e))?;
        Ok(bytes.to_vec())
    }

    async fn put(&self, id: &BlockId, data: &[u8]) -> Result<(), StoreError> {
        let path = ObjPath::from(id.to_hex());
        self.store
            .put(&path, PutPayload::from(data.to_vec()))
            .await
            .map_err(|e| self.err(&format!("put {id}"), e))?;
        Ok(())
    }

    async fn exists(&self, id: &BlockId) -> Result<bool, StoreError> {
        match self.store.head(&ObjPath::from(id.to_hex())).await {
            Ok(_) => Ok(true),
            Err(object_store::Error::NotFound { .. }) => Ok(false),
            Err(e) => Err(self.err(&format!("head {id}"), e)),
        }
    }

    fn routes(&self) -> Vec<Route> {
        vec![Route::all(self.url.clone())]
    }
}
