//! Which flist URLs a deployment may name: those on the grid's own hub and on the hosts the
//! node's farm allows (its policy's `flist_hosts`, `host` or `host:port`). Anything else (another
//! host, `file://`, a URL with credentials) is refused when the deployment arrives, before the
//! node fetches anything, so a tenant cannot make the node reach hosts of its own choosing
//! (internal services, another tenant's machines). Redirects are followed only within the host
//! named (`zos_flist::store::same_origin_redirects`).
//!
//! A deployment may also name a flist on the hub by reference (`TWIN/NAME`, or `NAME` for one of
//! its owner's own, see `zos_types::flistref`); [`FlistUrlPolicy::resolve`] turns it into the URL
//! on this grid's hub, so everything past the check sees a URL.

use std::sync::Arc;

use futures::future::BoxFuture;
use reqwest::Url;
use zos_client::GridClient;
use zos_types::flistref::FlistRef;
use zos_types::{FarmId, TwinId};

/// Where the farm's allowed hosts come from.
pub trait FarmFlistHosts: Send + Sync {
    /// The hosts the node's farm allows besides the grid's hub.
    fn hosts(&self) -> BoxFuture<'_, Result<Vec<String>, String>>;
}

/// The farm's policy as the registry has it now.
#[derive(Debug, Clone)]
pub struct GridFarmHosts {
    pub client: GridClient,
    pub farm: FarmId,
}

impl FarmFlistHosts for GridFarmHosts {
    fn hosts(&self) -> BoxFuture<'_, Result<Vec<String>, String>> {
        Box::pin(async move {
            self.client
                .get_farm(self.farm)
                .await
                .map(|f| f.policy.flist_hosts)
                .map_err(|e| {
                    format!(
                        "cannot read farm {}'s flist hosts from the grid: {}",
                        self.farm,
                        zos_runtime::error_chain(&e)
                    )
                })
        })
    }
}

/// Why a flist URL is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FlistUrlError {
    #[error("flist {url:?}: {reason}")]
    Bad { url: String, reason: String },
    #[error(
        "flist {url:?}: host {host} is neither the grid's hub ({hub}) nor a host this farm allows ({allowed}); use a flist on the hub, or ask the farmer to allow the host (`zos farm policy FARM --flist-host HOST`)"
    )]
    NotAllowed {
        url: String,
        host: String,
        hub: String,
        allowed: String,
    },
    #[error("{0}")]
    Unavailable(String),
}

/// The URL policy of one node.
#[derive(Clone)]
pub struct FlistUrlPolicy {
    /// `host:port` of the grid's hub.
    hub: String,
    /// The grid's base URL, where hub references resolve.
    grid: String,
    farm: Arc<dyn FarmFlistHosts>,
}

impl std::fmt::Debug for FlistUrlPolicy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FlistUrlPolicy")
            .field("hub", &self.hub)
            .finish_non_exhaustive()
    }
}

/// `host:port` of an http(s) URL (the port written out when the URL leaves it implied).
fn host_port(url: &str) -> Result<(Url, String), String> {
    let u = Url::parse(url).map_err(|e| format!("not a URL: {e}"))?;
    if !matches!(u.scheme(), "http" | "https") {
        return Err(format!(
            "scheme {:?} is not allowed (use http or https)",
            u.scheme()
        ));
    }
    if !u.username().is_empty() || u.password().is_some() {
        return Err("a flist URL carries no credentials".into());
    }
    let host = u.host_str().ok_or("the URL names no host")?.to_string();
    let port = u.port_or_known_default().ok_or("the URL names no port")?;
    Ok((u, format!("{host}:{port}")))
}

/// `host:port` of a block route a flist names: an http(s) URL as [`host_port`] has it, or a
/// Redis-protocol store (`redis://host:port[/ns]`, `zdb://host[:port][/ns]`, port 9900 by
/// default), whose namespace password may be in the URL (it is the flist's own, not the node's).
fn route_host_port(url: &str) -> Result<(String, String), String> {
    let u = Url::parse(url).map_err(|e| format!("not a URL: {e}"))?;
    match u.scheme() {
        "http" | "https" => host_port(url).map(|(u, hp)| (u.scheme().to_string(), hp)),
        scheme @ ("redis" | "zdb") => {
            let host = u
                .host_str()
                .filter(|h| !h.is_empty())
                .ok_or("the route names no host")?;
            let port = u
                .port()
                .or((scheme == "zdb").then_some(zos_flist::store::ZDB_PORT))
                .ok_or("the route names no port")?;
            Ok((scheme.to_string(), format!("{host}:{port}")))
        }
        other => Err(format!(
            "scheme {other:?} is not allowed for a block route (use http, https, redis or zdb)"
        )),
    }
}

/// `host` or `host:port` of a farm's list, with the default port of `scheme` when it has none
/// (80, 443, Redis's 6379, 0-db's 9900).
fn matches(allowed: &str, host_port: &str, scheme: &str) -> bool {
    if allowed.contains(':') {
        return allowed == host_port;
    }
    let default = match scheme {
        "https" => 443,
        "redis" => 6379,
        "zdb" => zos_flist::store::ZDB_PORT,
        _ => 80,
    };
    host_port == format!("{allowed}:{default}")
}

impl FlistUrlPolicy {
    /// The policy of a node of the grid at `grid_url` whose farm's hosts come from `farm`.
    pub fn new(grid_url: &str, farm: Arc<dyn FarmFlistHosts>) -> Result<Self, String> {
        let (_, hub) = host_port(grid_url).map_err(|e| format!("grid URL {grid_url}: {e}"))?;
        Ok(Self {
            hub,
            grid: grid_url.to_string(),
            farm,
        })
    }

    /// The URL a zmachine's `flist` names for a deployment of twin `owner`: a URL as it is, a
    /// hub reference (`TWIN/NAME`, `NAME`) on this grid's hub.
    pub fn resolve(&self, flist: &str, owner: TwinId) -> Result<String, FlistUrlError> {
        FlistRef::parse(flist)
            .map(|r| r.url(&self.grid, owner))
            .map_err(|reason| FlistUrlError::Bad {
                url: flist.to_string(),
                reason,
            })
    }

    /// Checks every URL of `urls`; asks the farm's hosts only when one is not on the hub.
    pub async fn check(&self, urls: &[&str]) -> Result<(), FlistUrlError> {
        let mut off_hub = Vec::new();
        for url in urls {
            let (u, hp) = host_port(url).map_err(|reason| FlistUrlError::Bad {
                url: url.to_string(),
                reason,
            })?;
            if hp != self.hub {
                off_hub.push((url.to_string(), u.scheme().to_string(), hp));
            }
        }
        if off_hub.is_empty() {
            return Ok(());
        }
        let allowed = self
            .farm
            .hosts()
            .await
            .map_err(FlistUrlError::Unavailable)?;
        for (url, scheme, hp) in off_hub {
            if !allowed.iter().any(|a| matches(a, &hp, &scheme)) {
                return Err(FlistUrlError::NotAllowed {
                    url,
                    host: hp,
                    hub: self.hub.clone(),
                    allowed: if allowed.is_empty() {
                        "none".into()
                    } else {
                        allowed.join(", ")
                    },
                });
            }
        }
        Ok(())
    }

    /// Checks a block route a flist names (its `route` table, or a legacy flist's `backend`):
    /// an http(s) route as [`FlistUrlPolicy::check`] does, a Redis-protocol route (`redis://`,
    /// `zdb://`, which legacy `.flist` files name) by its host and port the same way: the grid's
    /// hub or a host the farm allows, nothing else. A directory (`dir://`), S3 or any other
    /// scheme is refused.
    pub async fn check_route(&self, url: &str) -> Result<(), FlistUrlError> {
        let (scheme, hp) = route_host_port(url).map_err(|reason| FlistUrlError::Bad {
            url: zos_flist::store::strip_password(url),
            reason,
        })?;
        if scheme.starts_with("http") {
            return self.check(&[url]).await;
        }
        if hp == self.hub {
            return Ok(());
        }
        let allowed = self
            .farm
            .hosts()
            .await
            .map_err(FlistUrlError::Unavailable)?;
        if allowed.iter().any(|a| matches(a, &hp, &scheme)) {
            return Ok(());
        }
        Err(FlistUrlError::NotAllowed {
            url: zos_flist::store::strip_password(url),
            host: hp,
            hub: self.hub.clone(),
            allowed: if allowed.is_empty() {
                "none".into()
            } else {
                allowed.join(", ")
            },
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Fixed(Vec<String>);
    impl FarmFlistHosts for Fixed {
        fn hosts(&self) -> BoxFuture<'_, Result<Vec<String>, String>> {
            let h = self.0.clone();
            Box::pin(async move { Ok(h) })
        }
    }

    #[tokio::test]
    async fn hub_and_farm_hosts_pass_everything_else_is_refused() {
        let farm = Arc::new(Fixed(vec!["hub.grid.tf".into(), "10.0.0.9:8080".into()]));
        let p = FlistUrlPolicy::new("http://127.0.0.1:8080", farm).unwrap();
        for ok in [
            "http://127.0.0.1:8080/api/v1/hub/flists/1/a.fl",
            "https://hub.grid.tf/x.fl",
            "http://hub.grid.tf:80/x.fl",
            "http://10.0.0.9:8080/x.fl",
        ] {
            p.check(&[ok]).await.unwrap_or_else(|e| panic!("{ok}: {e}"));
        }
        for (bad, needle) in [
            ("http://127.0.0.1:8081/a.fl", "is neither the grid's hub"),
            ("http://hub.grid.tf:8080/x.fl", "is neither"),
            ("http://10.0.0.9/x.fl", "is neither"),
            ("file:///etc/shadow", "scheme \"file\""),
            ("http://u:p@hub.grid.tf/x.fl", "credentials"),
        ] {
            let e = p.check(&[bad]).await.unwrap_err().to_string();
            assert!(e.contains(needle), "{bad}: {e}");
        }
    }

    /// A legacy flist names its block store (`redis://`, `zdb://`): the same hosts pass as for
    /// http routes, a bare host with the protocol's default port; nothing else.
    #[tokio::test]
    async fn block_routes_of_every_protocol_pass_only_on_allowed_hosts() {
        let farm = Arc::new(Fixed(vec![
            "hub.grid.tf".into(),
            "10.0.0.9:9900".into(),
            "127.0.0.1:6380".into(),
        ]));
        let p = FlistUrlPolicy::new("http://127.0.0.1:8080", farm).unwrap();
        for ok in [
            "http://127.0.0.1:8080/api/v1/hub/blocks",
            "https://hub.grid.tf/blocks",
            "zdb://hub.grid.tf",
            "zdb://hub.grid.tf:9900/ns",
            "redis://hub.grid.tf:6379",
            "redis://10.0.0.9:9900/ns",
            "redis://:s3cret@127.0.0.1:6380/ns",
            "zdb://user:pw@10.0.0.9/ns",
        ] {
            p.check_route(ok)
                .await
                .unwrap_or_else(|e| panic!("{ok}: {e}"));
        }
        for (bad, needle) in [
            ("redis://127.0.0.1:6379", "is neither the grid's hub"),
            ("redis://hub.grid.tf:9900", "is neither"),
            ("zdb://10.0.0.5", "is neither"),
            ("redis://127.0.0.1:8081", "is neither"),
            ("redis://hub.grid.tf", "no port"),
            ("dir:///var/lib/zos", "scheme \"dir\""),
            ("s3://k:s@hub.grid.tf/bucket", "scheme \"s3\""),
            ("http://u:p@hub.grid.tf/blocks", "credentials"),
        ] {
            let e = p.check_route(bad).await.unwrap_err().to_string();
            assert!(e.contains(needle), "{bad}: {e}");
        }
        let e = p
            .check_route("redis://:s3cret@10.0.0.5:9900")
            .await
            .unwrap_err()
            .to_string();
        assert!(!e.contains("s3cret"), "{e}");
    }

    #[tokio::test]
    async fn hub_references_resolve_on_this_grids_hub_and_pass() {
        let p = FlistUrlPolicy::new("http://10.213.1.1:8080", Arc::new(Fixed(vec![]))).unwrap();
        let own = p.resolve("web.fl", 7).unwrap();
        assert_eq!(own, "http://10.213.1.1:8080/api/v1/hub/flists/7/web.fl");
        let other = p.resolve("1/web.fl", 7).unwrap();
        assert_eq!(other, "http://10.213.1.1:8080/api/v1/hub/flists/1/web.fl");
        p.check(&[&own, &other]).await.unwrap();
        let url = "http://10.213.1.1:8080/api/v1/hub/flists/2/app.fl";
        assert_eq!(p.resolve(url, 7).unwrap(), url);
        let e = p.resolve("x/web.fl", 7).unwrap_err().to_string();
        assert!(e.contains("TWIN/NAME"), "{e}");
    }
}
