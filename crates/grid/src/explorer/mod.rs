//! The explorer: the grid in a web browser, served under `/explorer` (and `/` redirects there).
//!
//! | page | what it shows | read through |
//! |---|---|---|
//! | `/explorer/` | nodes online, farms, contracts, IPv4, capacity; charts over time | `GET /api/v1/stats`, `GET /api/v1/stats/history` |
//! | `/explorer/nodes` | nodes filtered by farm, state, free capacity, version; sorted, paged | `GET /api/v1/nodes?…`, `GET /api/v1/farms` |
//! | `/explorer/nodes/{id}` | capacity, uptime chart, upgrade state, public config, contracts | `GET /api/v1/nodes/{id}`, `…/uptime`, `GET /releases/{runmode}/status`, `GET /api/v1/contracts?node_id=` |
//! | `/explorer/farms`, `/explorer/farms/{id}` | farms; a farm's nodes, IP pool and boot script | `GET /api/v1/farms[/{id}]`, `…/ips`, `GET /api/v1/nodes?farm_id=`, `/boot/{runmode}/farms/{id}.ipxe` |
//! | `/explorer/twins/{id}` | a twin's contracts | `GET /api/v1/twins/{id}`, `GET /api/v1/contracts?twin_id=` |
//! | `/explorer/releases` | releases per runmode, rollout progress | `GET /releases?runmode=`, `GET /releases/{runmode}/status` |
//!
//! Every page reads the registry through the same functions the API routes call (the store's
//! methods and the boot service's, with the API's checks), never through anything the API does
//! not answer. Pages are plain HTML with a stylesheet and work without JavaScript; a small script
//! (`explorer.js`) refreshes the parts marked `data-live` every [`REFRESH_SECS`] seconds.

mod chart;
mod pages;

use std::sync::Arc;

use axum::Router;
use axum::extract::{Query, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::get;
use axum::{Extension, extract::Path};
use maud::Markup;
use serde::Deserialize;
use zos_types::capacity::GIB;
use zos_types::contract::ContractFilter;
use zos_types::registry::{NodeFilter, NodeSort};
use zos_types::release::{RunMode, Version};

use crate::api::{load_farm, load_node, nodes as list_nodes};
use crate::boot::Boot;
use crate::error::ApiFailure;
use crate::state::AppState;

pub use pages::BASE;

/// Seconds between two refreshes of a page's live parts.
pub const REFRESH_SECS: u32 = 5;
/// Nodes per page of the node list.
pub const PAGE_SIZE: u32 = 50;
/// Nodes a farm's page lists.
const FARM_NODES: u32 = 200;

const CSS: &str = include_str!("explorer.css");
const JS: &str = include_str!("explorer.js");

/// The explorer's routes, and `/` redirecting to it.
pub fn router(state: AppState, boot: Arc<Boot>) -> Router {
    Router::new()
        .route("/", get(|| async { Redirect::to("/explorer/") }))
        .route(BASE, get(|| async { Redirect::to("/explorer/") }))
        .route("/explorer/", get(overview))
        .route("/explorer/nodes", get(nodes))
        .route("/explorer/nodes/{id}", get(node))
        .route("/explorer/farms", get(farms))
        .route("/explorer/farms/{id}", get(farm))
        .route("/explorer/twins", get(twins))
        .route("/explorer/twins/{id}", get(twin))
        .route("/explorer/releases", get(releases))
        .route(
            "/explorer/assets/explorer.css",
            get(|| asset(CSS, "text/css")),
        )
        .route(
            "/explorer/assets/explorer.js",
            get(|| asset(JS, "text/javascript")),
        )
        .layer(Extension(boot))
        .with_state(state)
}

async fn asset(body: &'static str, kind: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, HeaderValue::from_static(kind)),
            (
                header::CACHE_CONTROL,
                HeaderValue::from_static("public, max-age=300"),
            ),
        ],
        body,
    )
        .into_response()
}

/// A page, or the failure drawn as a page with its status.
struct Page(Result<Markup, ApiFailure>);

impl IntoResponse for Page {
    fn into_response(self) -> Response {
        let (status, markup) = match self.0 {
            Ok(m) => (StatusCode::OK, m),
            Err(e) => {
                let status = e.status();
                let message = match &e {
                    ApiFailure::Internal { .. } => {
                        tracing::error!(error = %e, "explorer page failed");
                        "the grid failed; its log says why".to_string()
                    }
                    other => other.to_string(),
                };
                let title = status.canonical_reason().unwrap_or("Error");
                (
                    status,
                    pages::layout(title, "", false, pages::error(status.as_u16(), &message)),
                )
            }
        };
        let mut r = (status, markup).into_response();
        r.headers_mut()
            .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        r
    }
}

fn bad(field: &str, raw: &str, what: &str) -> ApiFailure {
    ApiFailure::BadRequest(format!(
        "{field}: {:?} is not {what}",
        raw.chars().take(40).collect::<String>()
    ))
}

/// A form field: absent and empty are the same.
fn given(v: &Option<String>) -> Option<&str> {
    v.as_deref().map(str::trim).filter(|s| !s.is_empty())
}

fn number<T: std::str::FromStr>(field: &str, v: &Option<String>) -> Result<Option<T>, ApiFailure> {
    given(v)
        .map(|raw| raw.parse().map_err(|_| bad(field, raw, "a whole number")))
        .transpose()
}

// ---- overview ----

#[derive(Debug, Deserialize)]
struct OverviewQuery {
    range: Option<String>,
}

async fn overview(State(app): State<AppState>, Query(q): Query<OverviewQuery>) -> Page {
    Page(
        async {
            let (range, secs) = match given(&q.range) {
                None | Some("day") => ("day", 86_400),
                Some("month") => ("month", 30 * 86_400),
                Some(other) => return Err(bad("range", other, "day or month")),
            };
            let now = app.now();
            let (stats, history) = app
                .run(move |s| Ok((s.stats(now)?, s.stats_history(now - secs)?)))
                .await?;
            Ok(pages::layout(
                "The grid",
                "/",
                true,
                pages::overview(&stats, &history, range),
            ))
        }
        .await,
    )
}

// ---- nodes ----

/// The node list's form, as the browser sends it (every field may be empty).
#[derive(Debug, Default, Deserialize)]
pub struct NodesQuery {
    pub farm: Option<String>,
    pub state: Option<String>,
    pub free_cru: Option<String>,
    pub free_mru: Option<String>,
    pub free_sru: Option<String>,
    pub free_hru: Option<String>,
    pub version: Option<String>,
    pub sort: Option<String>,
    pub order: Option<String>,
    pub page: Option<String>,
}

impl NodesQuery {
    /// The page asked for (1 when absent or not a positive number).
    pub fn page_number(&self) -> u32 {
        given(&self.page)
            .and_then(|p| p.parse().ok())
            .filter(|p: &u32| (1..=10_000).contains(p))
            .unwrap_or(1)
    }

    /// The registry's filter for this form, asking one node more than a page (to know whether
    /// there is a next page).
    fn filter(&self) -> Result<NodeFilter, ApiFailure> {
        let gib = |field: &str, v: &Option<String>| -> Result<Option<u64>, ApiFailure> {
            Ok(number::<u64>(field, v)?.map(|g| g.saturating_mul(GIB)))
        };
        let online = match given(&self.state) {
            None => None,
            Some("online") => Some(true),
            Some("offline") => Some(false),
            Some(other) => return Err(bad("state", other, "online or offline")),
        };
        let sort = given(&self.sort)
            .map(|raw| {
                NodeSort::ALL
                    .into_iter()
                    .find(|s| s.as_str() == raw)
                    .ok_or_else(|| bad("sort", raw, "a column to sort by"))
            })
            .transpose()?;
        let desc = match given(&self.order) {
            None | Some("asc") => None,
            Some("desc") => Some(true),
            Some(other) => return Err(bad("order", other, "asc or desc")),
        };
        Ok(NodeFilter {
            farm_id: number("farm", &self.farm)?,
            online,
            free_cru: number("free_cru", &self.free_cru)?,
            free_mru: gib("free_mru", &self.free_mru)?,
            free_sru: gib("free_sru", &self.free_sru)?,
            free_hru: gib("free_hru", &self.free_hru)?,
            zos_version: given(&self.version).map(str::to_string),
            sort,
            desc,
            limit: Some(PAGE_SIZE + 1),
            offset: Some((self.page_number() - 1) * PAGE_SIZE),
            ..NodeFilter::default()
        })
    }

    /// The link to page `page` with the same filters.
    pub fn link(&self, page: u32) -> String {
        let mut pairs = Vec::new();
        for (k, v) in [
            ("farm", &self.farm),
            ("state", &self.state),
            ("free_cru", &self.free_cru),
            ("free_mru", &self.free_mru),
            ("free_sru", &self.free_sru),
            ("free_hru", &self.free_hru),
            ("version", &self.version),
            ("sort", &self.sort),
            ("order", &self.order),
        ] {
            if let Some(v) = given(v) {
                pairs.push(format!("{k}={}", encode(v)));
            }
        }
        pairs.push(format!("page={page}"));
        format!("{BASE}/nodes?{}", pairs.join("&"))
    }
}

/// Percent-encodes a query value (everything but unreserved characters).
fn encode(v: &str) -> String {
    let mut out = String::with_capacity(v.len());
    for b in v.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

async fn nodes(State(app): State<AppState>, Query(q): Query<NodesQuery>) -> Page {
    Page(
        async {
            let filter = q.filter()?;
            let farms = app.run(|s| s.farms()).await?;
            let mut list = list_nodes(&app, filter).await?;
            let more = list.len() > PAGE_SIZE as usize;
            list.truncate(PAGE_SIZE as usize);
            Ok(pages::layout(
                "Nodes",
                "/nodes",
                true,
                pages::nodes(&q, &farms, &list, more, app.now()),
            ))
        }
        .await,
    )
}

fn id_of<T: std::str::FromStr>(what: &str, raw: &str) -> Result<T, ApiFailure> {
    raw.parse()
        .map_err(|_| ApiFailure::NotFound(format!("{what} {raw:?} does not exist")))
}

async fn node(
    State(app): State<AppState>,
    Extension(boot): Extension<Arc<Boot>>,
    Path(raw): Path<String>,
) -> Page {
    Page(
        async {
            let id = id_of("node", &raw)?;
            let node = load_node(&app, id).await?;
            let since = app.now() - crate::store::UPTIME_KEEP_SECS;
            let uptime = app.run(move |s| s.node_uptime(id, since)).await?;
            let contracts = app
                .run(move |s| {
                    s.contracts(&ContractFilter {
                        node_id: Some(id),
                        ..ContractFilter::default()
                    })
                })
                .await?;
            let upgrades: Vec<_> = boot
                .runmodes()
                .into_iter()
                .filter_map(|m| boot.node_upgrade(m, &node).map(|(v, u)| (m, v, u)))
                .collect();
            let page = pages::NodePage {
                node: &node,
                uptime: &uptime,
                upgrades: &upgrades,
                contracts: &contracts,
                now: app.now(),
            };
            Ok(pages::layout(
                &format!("Node {id}"),
                "/nodes",
                true,
                pages::node(&page),
            ))
        }
        .await,
    )
}

// ---- farms ----

async fn farms(State(app): State<AppState>) -> Page {
    Page(
        async {
            let list = app.run(|s| s.farms()).await?;
            Ok(pages::layout("Farms", "/farms", false, pages::farms(&list)))
        }
        .await,
    )
}

async fn farm(
    State(app): State<AppState>,
    Extension(boot): Extension<Arc<Boot>>,
    Path(raw): Path<String>,
) -> Page {
    Page(
        async {
            let id = id_of("farm", &raw)?;
            let farm = load_farm(&app, id).await?;
            let ips = app.run(move |s| s.farm_ips(id)).await?;
            let mut nodes = list_nodes(
                &app,
                NodeFilter {
                    farm_id: Some(id),
                    limit: Some(FARM_NODES + 1),
                    ..NodeFilter::default()
                },
            )
            .await?;
            let more = nodes.len() > FARM_NODES as usize;
            nodes.truncate(FARM_NODES as usize);
            let runmodes: Vec<RunMode> = boot
                .runmodes()
                .into_iter()
                .filter(|m| !boot.summaries(*m).is_empty())
                .collect();
            Ok(pages::layout(
                &format!("Farm {id}: {}", farm.name),
                "/farms",
                true,
                pages::farm(&farm, &ips, &nodes, more, &runmodes, app.now()),
            ))
        }
        .await,
    )
}

// ---- twins ----

#[derive(Debug, Deserialize)]
struct TwinQuery {
    twin: Option<String>,
}

async fn twins(Query(q): Query<TwinQuery>) -> Response {
    match given(&q.twin) {
        Some(raw) if raw.len() <= 10 && raw.bytes().all(|b| b.is_ascii_digit()) => {
            Redirect::to(&format!("{BASE}/twins/{raw}")).into_response()
        }
        Some(raw) => Page(Err(bad("twin", raw, "a twin ID"))).into_response(),
        None => Page(Ok(pages::layout(
            "Contracts of a twin",
            "/twins",
            false,
            pages::twin_form(None),
        )))
        .into_response(),
    }
}

async fn twin(State(app): State<AppState>, Path(raw): Path<String>) -> Page {
    Page(
        async {
            let id = id_of("twin", &raw)?;
            let twin = app
                .run(move |s| s.twin(id))
                .await?
                .ok_or_else(|| ApiFailure::NotFound(format!("twin {id} does not exist")))?;
            let list = app
                .run(move |s| {
                    s.contracts(&ContractFilter {
                        twin_id: Some(id),
                        ..ContractFilter::default()
                    })
                })
                .await?;
            Ok(pages::layout(
                &format!("Contracts of twin {id}"),
                "/twins",
                true,
                pages::twin(id, &twin.public_key.to_string(), &list),
            ))
        }
        .await,
    )
}

// ---- releases ----

async fn releases(State(app): State<AppState>, Extension(boot): Extension<Arc<Boot>>) -> Page {
    Page(
        async {
            let mut served = Vec::new();
            for mode in boot.runmodes() {
                let versions: Vec<(String, i64)> = boot
                    .summaries(mode)
                    .into_iter()
                    .map(|s| (s.release.version, s.release.created))
                    .collect();
                let status = if versions.is_empty() {
                    None
                } else {
                    Some(boot.rollout_status(&app, mode, None::<Version>).await?)
                };
                served.push((mode, versions, status));
            }
            Ok(pages::layout(
                "Releases",
                "/releases",
                true,
                pages::releases(&served, app.now()),
            ))
        }
        .await,
    )
}
