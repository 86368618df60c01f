//! The explorer's HTML: the layout every page shares and one function per page. They take data
//! already read (see [`super`]) and only draw it; maud escapes every value.

use maud::{DOCTYPE, Markup, html};
use zos_types::capacity::{Capacity, human_bytes};
use zos_types::contract::{Contract, ContractKind, ContractState};
use zos_types::registry::{Farm, FarmIp, GridStats, Node, NodeSort, UptimePoint};
use zos_types::release::RunMode;
use zos_types::release::fleet::{NodeUpgrade, RolloutStatus};

use super::chart::{self, Series};
use super::{NodesQuery, PAGE_SIZE};

/// Where the explorer is mounted.
pub const BASE: &str = "/explorer";

/// The sections of the navigation bar: (path under [`BASE`], name).
const SECTIONS: [(&str, &str); 5] = [
    ("/", "Overview"),
    ("/nodes", "Nodes"),
    ("/farms", "Farms"),
    ("/twins", "Contracts"),
    ("/releases", "Releases"),
];

/// A page: its `<title>`, the section it belongs to, and its content.
pub fn layout(title: &str, section: &str, live: bool, content: Markup) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                link rel="icon" href="data:,";
                title { (title) " · zos explorer" }
                link rel="stylesheet" href={ (BASE) "/assets/explorer.css" };
                script src={ (BASE) "/assets/explorer.js" } defer {}
            }
            body data-refresh=[live.then_some(super::REFRESH_SECS)] {
                a.skip href="#main" { "Skip to the content" }
                header.top {
                    a.brand href={ (BASE) "/" } { "zos explorer" }
                    nav aria-label="Sections" {
                        ul {
                            @for (path, name) in SECTIONS {
                                li {
                                    a href={ (BASE) (path) }
                                        aria-current=[(section == path).then_some("page")] { (name) }
                                }
                            }
                        }
                    }
                }
                main #main tabindex="-1" {
                    h1 { (title) }
                    (content)
                }
                footer {
                    p {
                        "zos-grid " (env!("CARGO_PKG_VERSION"))
                        ". Every figure comes from the registry API the CLI uses ("
                        code { "/api/v1" } ")."
                        @if live { " Figures update by themselves every " (super::REFRESH_SECS) " s." }
                    }
                    p #live-status role="status" {}
                }
            }
        }
    }
}

/// An error page's content.
pub fn error(status: u16, message: &str) -> Markup {
    html! {
        p.error { "The grid answered " (status) ": " (message) }
        p { a href={ (BASE) "/" } { "Back to the overview" } }
    }
}

// ---- formatting ----

fn ago(now: i64, t: i64) -> String {
    let d = now - t;
    if d < 0 {
        "just now".into()
    } else {
        format!("{} ago", chart::span(d))
    }
}

fn duration(secs: u64) -> String {
    let (d, h, m) = (secs / 86_400, secs % 86_400 / 3600, secs % 3600 / 60);
    match (d, h) {
        (0, 0) => format!("{m} min"),
        (0, _) => format!("{h} h {m} min"),
        _ => format!("{d} d {h} h"),
    }
}

fn percent(part: u64, whole: u64) -> f64 {
    if whole == 0 {
        0.0
    } else {
        part as f64 * 100.0 / whole as f64
    }
}

fn pct(v: f64) -> String {
    format!("{v:.1}%")
}

fn count(v: f64) -> String {
    format!("{v:.0}")
}

fn hours(v: f64) -> String {
    format!("{v:.1} h")
}

/// A unit's amount as people read it.
fn amount(unit: &str, v: u64) -> String {
    if unit == "CRU" {
        format!("{v} cores")
    } else {
        human_bytes(v)
    }
}

const UNITS: [&str; 4] = ["CRU", "MRU", "SRU", "HRU"];

fn unit(c: &Capacity, u: &str) -> u64 {
    match u {
        "CRU" => c.cru,
        "MRU" => c.mru,
        "SRU" => c.sru,
        _ => c.hru,
    }
}

fn unit_name(u: &str) -> &'static str {
    match u {
        "CRU" => "CPU cores (CRU)",
        "MRU" => "memory (MRU)",
        "SRU" => "SSD (SRU)",
        _ => "HDD (HRU)",
    }
}

/// A labelled meter of `used` of `total`.
fn meter(id: &str, label: &str, used: u64, total: u64, text: String) -> Markup {
    html! {
        div.meter {
            label for=(id) { (label) }
            meter id=(id) min="0" max=(total.max(1)) value=(used) { (text) }
            span.meter-text { (text) }
        }
    }
}

fn state_badge(online: bool) -> Markup {
    if online {
        html! { span.badge.online { "online" } }
    } else {
        html! { span.badge.offline { "offline" } }
    }
}

/// A scrollable table region (keyboard users scroll it once it has focus).
fn table_region(label_id: &str, table: Markup) -> Markup {
    html! {
        div.scroll role="region" aria-labelledby=(label_id) tabindex="0" { (table) }
    }
}

// ---- overview ----

pub fn overview(s: &GridStats, history: &[GridStats], range: &str) -> Markup {
    let series =
        |id: &'static str, title: &'static str, f: fn(&GridStats) -> f64, ceiling, format| Series {
            id,
            title,
            points: history.iter().map(|h| (h.time, f(h))).collect(),
            ceiling,
            format,
        };
    let charts = [
        series(
            "chart-nodes",
            "Nodes online",
            |h| h.nodes_online as f64,
            None,
            count,
        ),
        series(
            "chart-contracts",
            "Live contracts",
            |h| h.contracts as f64,
            None,
            count,
        ),
        series(
            "chart-cru",
            "CRU used",
            |h| percent(h.used.cru, h.total.cru),
            Some(100.0),
            pct,
        ),
        series(
            "chart-mru",
            "MRU used",
            |h| percent(h.used.mru, h.total.mru),
            Some(100.0),
            pct,
        ),
        series(
            "chart-sru",
            "SRU used",
            |h| percent(h.used.sru, h.total.sru),
            Some(100.0),
            pct,
        ),
        series(
            "chart-hru",
            "HRU used",
            |h| percent(h.used.hru, h.total.hru),
            Some(100.0),
            pct,
        ),
        series(
            "chart-ipv4",
            "Public IPv4 used",
            |h| h.ipv4_used as f64,
            None,
            count,
        ),
    ];
    html! {
        section aria-labelledby="now-h" {
            h2 #now-h { "Now" }
            div #figures data-live {
                dl.cards {
                    div { dt { "Nodes online" } dd { span #nodes-online { (s.nodes_online) } " of " span #nodes-total { (s.nodes) } } }
                    div { dt { "Farms" } dd #farms-total { (s.farms) } }
                    div { dt { "Live contracts" } dd #contracts-total { (s.contracts) } }
                    div { dt { "Public IPv4 used" } dd #ipv4 { (s.ipv4_used) " of " (s.ipv4_total) } }
                }
                h3 #cap-h { "Capacity" }
                (table_region("cap-h", html! {
                    table {
                        thead { tr { th scope="col" { "Unit" } th scope="col" { "Used" } th scope="col" { "Reserved" } th scope="col" { "Total" } th scope="col" { "Share used" } } }
                        tbody {
                            @for u in UNITS {
                                @let (used, reserved, total) = (unit(&s.used, u), unit(&s.reserved, u), unit(&s.total, u));
                                tr {
                                    th scope="row" { (unit_name(u)) }
                                    td { (amount(u, used)) }
                                    td { (amount(u, reserved)) }
                                    td { (amount(u, total)) }
                                    td { (meter(&format!("use-{}", u.to_lowercase()), &format!("{u} used"), used, total, pct(percent(used, total)))) }
                                }
                            }
                        }
                    }
                }))
            }
        }
        section aria-labelledby="time-h" {
            h2 #time-h { "Over time" }
            nav.range aria-label="Time span" {
                a href={ (BASE) "/?range=day" } aria-current=[(range == "day").then_some("page")] { "Last day" }
                " · "
                a href={ (BASE) "/?range=month" } aria-current=[(range == "month").then_some("page")] { "Last 30 days" }
            }
            div.charts #charts data-live {
                @for c in &charts { (chart::line(c)) }
            }
        }
    }
}

// ---- nodes ----

fn sort_name(s: NodeSort) -> &'static str {
    match s {
        NodeSort::Id => "ID",
        NodeSort::Farm => "farm",
        NodeSort::FreeCru => "free CRU",
        NodeSort::FreeMru => "free MRU",
        NodeSort::FreeSru => "free SRU",
        NodeSort::FreeHru => "free HRU",
        NodeSort::Uptime => "uptime",
        NodeSort::LastSeen => "last report",
        NodeSort::Version => "version",
    }
}

pub fn nodes(q: &NodesQuery, farms: &[Farm], list: &[Node], more: bool, now: i64) -> Markup {
    let field = |v: &Option<String>| v.clone().unwrap_or_default();
    let page = q.page_number();
    html! {
        form.filters method="get" action={ (BASE) "/nodes" } aria-labelledby="filter-h" {
            h2 #filter-h { "Filter" }
            div.fields {
                div {
                    label for="f-farm" { "Farm" }
                    select #f-farm name="farm" {
                        option value="" { "Any farm" }
                        @for f in farms {
                            option value=(f.id) selected[q.farm.as_deref() == Some(&f.id.to_string())] { (f.name) " (" (f.id) ")" }
                        }
                    }
                }
                div {
                    label for="f-state" { "State" }
                    select #f-state name="state" {
                        option value="" { "Any state" }
                        option value="online" selected[q.state.as_deref() == Some("online")] { "Online" }
                        option value="offline" selected[q.state.as_deref() == Some("offline")] { "Offline" }
                    }
                }
                div {
                    label for="f-cru" { "Free CRU at least (cores)" }
                    input #f-cru type="number" name="free_cru" min="0" inputmode="numeric" value=(field(&q.free_cru));
                }
                div {
                    label for="f-mru" { "Free MRU at least (GiB)" }
                    input #f-mru type="number" name="free_mru" min="0" inputmode="numeric" value=(field(&q.free_mru));
                }
                div {
                    label for="f-sru" { "Free SRU at least (GiB)" }
                    input #f-sru type="number" name="free_sru" min="0" inputmode="numeric" value=(field(&q.free_sru));
                }
                div {
                    label for="f-hru" { "Free HRU at least (GiB)" }
                    input #f-hru type="number" name="free_hru" min="0" inputmode="numeric" value=(field(&q.free_hru));
                }
                div {
                    label for="f-version" { "Version" }
                    input #f-version type="text" name="version" maxlength="64" placeholder="any" value=(field(&q.version));
                }
                div {
                    label for="f-sort" { "Sort by" }
                    select #f-sort name="sort" {
                        @for s in NodeSort::ALL {
                            option value=(s.as_str()) selected[q.sort.as_deref() == Some(s.as_str())] { (sort_name(s)) }
                        }
                    }
                }
                div {
                    label for="f-order" { "Order" }
                    select #f-order name="order" {
                        option value="asc" { "Smallest first" }
                        option value="desc" selected[q.order.as_deref() == Some("desc")] { "Largest first" }
                    }
                }
            }
            button type="submit" { "Apply" }
            " "
            a href={ (BASE) "/nodes" } { "Clear" }
        }
        section aria-labelledby="list-h" {
            h2 #list-h { "Nodes" }
            div #node-list data-live {
                @if list.is_empty() {
                    p { "No node passes these filters." }
                } @else {
                    p { "Nodes " ((page - 1) * PAGE_SIZE + 1) " to " ((page - 1) * PAGE_SIZE + list.len() as u32) "." }
                    (table_region("list-h", html! {
                        table #nodes-table {
                            thead { tr {
                                th scope="col" { "Node" } th scope="col" { "Farm" } th scope="col" { "State" }
                                th scope="col" { "Version" } th scope="col" { "Free CRU" } th scope="col" { "Free MRU" }
                                th scope="col" { "Free SRU" } th scope="col" { "Free HRU" } th scope="col" { "Uptime" }
                                th scope="col" { "Last report" }
                            } }
                            tbody {
                                @for n in list {
                                    @let free = n.free();
                                    tr {
                                        th scope="row" { a href={ (BASE) "/nodes/" (n.id) } { "Node " (n.id) } }
                                        td { a href={ (BASE) "/farms/" (n.farm_id) } { "Farm " (n.farm_id) } }
                                        td { (state_badge(n.online)) }
                                        td { (n.zos_version) }
                                        td { (free.cru) " / " (n.capacity.cru) }
                                        td { (human_bytes(free.mru)) }
                                        td { (human_bytes(free.sru)) }
                                        td { (human_bytes(free.hru)) }
                                        td { (duration(n.uptime_secs)) }
                                        td { @match n.last_seen { Some(t) => (ago(now, t)), None => "never" } }
                                    }
                                }
                            }
                        }
                    }))
                }
            }
            nav.pages aria-label="Pages" {
                @if page > 1 { a rel="prev" href=(q.link(page - 1)) { "Previous page" } }
                span { "Page " (page) }
                @if more { a rel="next" href=(q.link(page + 1)) { "Next page" } }
            }
        }
    }
}

// ---- node ----

pub struct NodePage<'a> {
    pub node: &'a Node,
    pub uptime: &'a [UptimePoint],
    pub upgrades: &'a [(RunMode, String, NodeUpgrade)],
    pub contracts: &'a [Contract],
    pub now: i64,
}

pub fn node(p: &NodePage<'_>) -> Markup {
    let n = p.node;
    let uptime = Series {
        id: "chart-uptime",
        title: "Uptime",
        points: p
            .uptime
            .iter()
            .map(|u| (u.time, u.uptime_secs as f64 / 3600.0))
            .collect(),
        ceiling: None,
        format: hours,
    };
    html! {
        div #node-facts data-live {
            dl.facts {
                dt { "State" } dd #node-state { (state_badge(n.online)) }
                dt { "Farm" } dd { a href={ (BASE) "/farms/" (n.farm_id) } { "Farm " (n.farm_id) } }
                dt { "Twin" } dd { a href={ (BASE) "/twins/" (n.twin_id) } { "Twin " (n.twin_id) } }
                dt { "Version" } dd { (n.zos_version) }
                dt { "Uptime" } dd { (duration(n.uptime_secs)) }
                dt { "Last report" } dd { @match n.last_seen { Some(t) => (ago(p.now, t)), None => "never" } }
                dt { "Reports every" } dd { (n.report_interval_secs) " s" }
                dt { "CPU" } dd { (n.hardware.cpu_model) @if n.hardware.virtualized { " (virtual machine)" } }
                @if let Some(l) = &n.limited { dt { "Limited" } dd { (l) } }
                dt { "Registered" } dd { (ago(p.now, n.created_at)) }
            }
            h2 #cap-h { "Capacity" }
            @for u in UNITS {
                @let (used, reserved, total) = (unit(&n.used, u), unit(&n.reserved, u), unit(&n.capacity, u));
                (meter(&format!("node-{}", u.to_lowercase()), unit_name(u), used + reserved, total,
                    format!("{} used, {} reserved, of {}", amount(u, used), amount(u, reserved), amount(u, total))))
            }
        }
        section aria-labelledby="uptime-h" {
            h2 #uptime-h { "Uptime over the last 7 days" }
            div #node-uptime data-live { (chart::line(&uptime)) }
        }
        section aria-labelledby="upgrade-h" {
            h2 #upgrade-h { "Upgrades" }
            @if p.upgrades.is_empty() {
                p { "This grid serves no releases." }
            } @else {
                (table_region("upgrade-h", html! {
                    table {
                        thead { tr { th scope="col" { "Runmode" } th scope="col" { "Current release" } th scope="col" { "Running" } th scope="col" { "State" } th scope="col" { "Admitted" } } }
                        tbody {
                            @for (mode, version, u) in p.upgrades {
                                tr {
                                    th scope="row" { (mode) }
                                    td { a href={ (BASE) "/releases?runmode=" (mode) } { (version) } }
                                    td { (u.running.as_deref().unwrap_or("none reported")) }
                                    td { @match &u.report { Some(r) => { (r.state) @if let Some(why) = &r.reason { ": " (why) } }, None => "no report" } }
                                    td { @if u.admitted { "yes" } @else { "no" } ": " (u.why) }
                                }
                            }
                        }
                    }
                }))
            }
        }
        section aria-labelledby="pc-h" {
            h2 #pc-h { "Public configuration" }
            @match &n.public_config {
                Some(c) => dl.facts {
                    dt { "IPv4" } dd { (c.ipv4) } dt { "IPv4 gateway" } dd { (c.gw4) }
                    @if let Some(v6) = &c.ipv6 { dt { "IPv6" } dd { (v6) } }
                    @if let Some(g6) = &c.gw6 { dt { "IPv6 gateway" } dd { (g6) } }
                    @if let Some(d) = &c.domain { dt { "Domain" } dd { (d) } }
                },
                None => p { "None: the node has no public addresses of its own." },
            }
            h3 #if-h { "Interfaces" }
            ul { @for i in &n.interfaces { li { code { (i.name) } " " (i.mac) @for ip in &i.ips { " " (ip) } } } }
        }
        section aria-labelledby="nc-h" {
            h2 #nc-h { "Contracts on this node" }
            (contracts_table("nc-h", p.contracts))
        }
    }
}

// ---- farms ----

pub fn farms(list: &[Farm]) -> Markup {
    html! {
        @if list.is_empty() {
            p { "No farm yet." }
        } @else {
            h2 #farms-h { "Every farm" }
            (table_region("farms-h", html! {
                table #farms-table {
                    thead { tr { th scope="col" { "Farm" } th scope="col" { "Name" } th scope="col" { "Farmer" } th scope="col" { "Public IPv4" } th scope="col" { "Admission" } th scope="col" { "Rentable" } } }
                    tbody {
                        @for f in list {
                            tr {
                                th scope="row" { a href={ (BASE) "/farms/" (f.id) } { "Farm " (f.id) } }
                                td { (f.name) }
                                td { a href={ (BASE) "/twins/" (f.twin_id) } { "Twin " (f.twin_id) } }
                                td { (f.public_ips.iter().filter(|i| i.contract_id.is_some()).count()) " used of " (f.public_ips.len()) }
                                td { (f.policy.node_admission.as_str()) }
                                td { @if f.policy.rentable { "yes" } @else { "no" } }
                            }
                        }
                    }
                }
            }))
        }
    }
}

pub fn farm(
    f: &Farm,
    ips: &[FarmIp],
    nodes: &[Node],
    more: bool,
    runmodes: &[RunMode],
    now: i64,
) -> Markup {
    html! {
        dl.facts {
            dt { "Name" } dd { (f.name) }
            dt { "Farmer" } dd { a href={ (BASE) "/twins/" (f.twin_id) } { "Twin " (f.twin_id) } }
            dt { "Node admission" } dd { (f.policy.node_admission.as_str()) }
            dt { "Rentable" } dd { @if f.policy.rentable { "yes" } @else { "no" } }
            dt { "Created" } dd { (ago(now, f.created_at)) }
        }
        section aria-labelledby="boot-h" {
            h2 #boot-h { "Boot its servers" }
            @if runmodes.is_empty() {
                p { "This grid serves no releases yet, so there is no boot script to download." }
            } @else {
                p { "The farm's iPXE boot script, which a bootloader chains to. "
                    code { "zos farm bootloader " (f.id) } " makes an ISO or USB image that fetches it." }
                ul.downloads {
                    @for m in runmodes {
                        li { a.download href={ "/boot/" (m) "/farms/" (f.id) ".ipxe" } download={ "farm-" (f.id) "-" (m) ".ipxe" } { "Download the bootloader script (runmode " (m) ")" } }
                    }
                }
            }
        }
        section aria-labelledby="fn-h" {
            h2 #fn-h { "Nodes" }
            div #farm-nodes data-live {
                @if nodes.is_empty() { p { "No node in this farm yet." } } @else {
                    p { (nodes.len()) @if more { " or more" } " nodes, " (nodes.iter().filter(|n| n.online).count()) " online. "
                        a href={ (BASE) "/nodes?farm=" (f.id) } { "Filter and sort them" } }
                    ul.node-chips { @for n in nodes { li { a href={ (BASE) "/nodes/" (n.id) } { "Node " (n.id) } " " (state_badge(n.online)) } } }
                }
            }
        }
        section aria-labelledby="ip-h" {
            h2 #ip-h { "IP pool" }
            @if ips.is_empty() { p { "The pool is empty." } } @else {
                (table_region("ip-h", html! {
                    table {
                        thead { tr { th scope="col" { "Address" } th scope="col" { "Gateway" } th scope="col" { "Held by" } } }
                        tbody { @for i in ips { tr {
                            td { (i.ip) } td { (i.gateway) }
                            td { @match i.contract_id { Some(c) => { "contract " (c) }, None => "free" } }
                        } } }
                    }
                }))
            }
        }
    }
}

// ---- contracts ----

fn contracts_table(label: &str, list: &[Contract]) -> Markup {
    html! {
        @if list.is_empty() { p { "No contract." } } @else {
            (table_region(label, html! {
                table.contracts {
                    thead { tr { th scope="col" { "Contract" } th scope="col" { "Twin" } th scope="col" { "Kind" } th scope="col" { "State" } th scope="col" { "What" } } }
                    tbody { @for c in list { tr {
                        th scope="row" { (c.id) }
                        td { a href={ (BASE) "/twins/" (c.twin_id) } { "Twin " (c.twin_id) } }
                        @match &c.kind {
                            ContractKind::Node { node_id, public_ips, .. } => {
                                td { "node" } td { (contract_state(c.state)) }
                                td { a href={ (BASE) "/nodes/" (node_id) } { "Node " (node_id) } @if *public_ips > 0 { ", " (public_ips) " public IPv4" } }
                            }
                            ContractKind::Name { name } => { td { "name" } td { (contract_state(c.state)) } td { (name) } }
                            ContractKind::Rent { node_id } => {
                                td { "rent" } td { (contract_state(c.state)) }
                                td { a href={ (BASE) "/nodes/" (node_id) } { "Node " (node_id) } }
                            }
                        }
                    } } }
                }
            }))
        }
    }
}

fn contract_state(s: ContractState) -> &'static str {
    match s {
        ContractState::Created => "live",
        ContractState::GracePeriod => "grace period",
        ContractState::Deleted => "cancelled",
    }
}

pub fn twin_form(twin: Option<&str>) -> Markup {
    html! {
        form.filters method="get" action={ (BASE) "/twins" } aria-labelledby="tf-h" {
            h2 #tf-h { "Look up a twin" }
            div.fields { div {
                label for="f-twin" { "Twin ID" }
                input #f-twin type="number" name="twin" min="1" inputmode="numeric" required value=[twin];
            } }
            button type="submit" { "Show its contracts" }
        }
    }
}

pub fn twin(id: u32, key: &str, list: &[Contract]) -> Markup {
    html! {
        (twin_form(Some(&id.to_string())))
        dl.facts { dt { "Public key" } dd { code.key { (key) } } }
        section aria-labelledby="tc-h" {
            h2 #tc-h { "Contracts" }
            div #twin-contracts data-live { (contracts_table("tc-h", list)) }
        }
    }
}

// ---- releases ----

/// A runmode the grid serves: its releases (version, made at), newest first, and the rollout
/// of the current one.
pub type Served = (RunMode, Vec<(String, i64)>, Option<RolloutStatus>);

pub fn releases(served: &[Served], now: i64) -> Markup {
    html! {
        @if served.is_empty() {
            p { "This grid serves no releases: its operator configured no release keys." }
        }
        @for (mode, versions, status) in served {
            section aria-labelledby={ "rm-" (mode) } {
                h2 id={ "rm-" (mode) } { "Runmode " (mode) }
                @match status {
                    None => p { "No release published yet." },
                    Some(st) => div id={ "rollout-" (mode) } data-live {
                        h3 { "Rollout of " (st.version) }
                        dl.facts {
                            dt { "Stage" } dd { "wave " (st.stage.wave + 1) " of " (st.policy.waves.len()) ", " (st.percent) "% of the nodes"
                                @if st.stage.safe { ", marked safe" } }
                            dt { "Halted" } dd { @match &st.halted { Some(h) => { "yes, by " (h.by) " " (ago(now, h.at)) ": " (h.reason) }, None => "no" } }
                        }
                        @let p = st.progress;
                        (meter(&format!("committed-{mode}"), "Committed", p.committed as u64, p.admitted as u64,
                            format!("{} of {} admitted nodes", p.committed, p.admitted)))
                        p { (p.waiting) " waiting, " (p.in_progress) " in progress, " (p.committed) " committed, " (p.rolled_back) " rolled back." }
                    },
                }
                @if !versions.is_empty() {
                    h3 id={ "rv-" (mode) } { "Releases" }
                    ul { @for (v, created) in versions { li { (v) ", made " (ago(now, *created)) } } }
                }
            }
        }
    }
}
