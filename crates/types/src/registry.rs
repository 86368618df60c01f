//! Objects of the grid registry's HTTP API (`/api/v1`), shared by the server, the client and tests.
//!
//! | method and path | signer | body → answer |
//! |---|---|---|
//! | `POST /twins` | the key being registered (`key=`) | [`CreateTwin`] → 201 [`Twin`] |
//! | `GET /twins/{id}`, `GET /twins?public_key=HEX` | – | [`Twin`] |
//! | `POST /farms` | any twin, who becomes the farmer | [`CreateFarm`] → 201 [`Farm`] |
//! | `GET /farms`, `GET /farms/{id}`, `GET /farms?name=` | – | [`Farm`]s |
//! | `POST /farms/{id}/ips` | the farmer | [`AddFarmIp`] → 201 [`Farm`] |
//! | `DELETE /farms/{id}/ips/{ip}` | the farmer | → 200 [`Farm`] (refused while a contract holds it) |
//! | `PUT /farms/{id}/policy` | the farmer | [`FarmPolicy`] → 200 [`Farm`] (see [`crate::policy`]) |
//! | `GET /farms/{id}/ips` | – | [`FarmIp`]s |
//! | `POST /nodes` | the node's own twin | [`NodeRegistration`] → 201 (new) or 200 (updated) [`Node`] (a new node, or one changing farm, needs the farm's admission: [`crate::policy`]) |
//! | `PUT /nodes/{id}/public-config` | the node's farmer | [`PublicConfig`] → 200 [`Node`] |
//! | `POST /nodes/{id}/uptime` | the node's own twin | [`UptimeReport`] → 200 [`Node`] |
//! | `GET /nodes?…` ([`NodeFilter`]), `GET /nodes/{id}` | – | [`Node`]s |
//! | `GET /nodes/{id}/uptime` | – | the node's recent [`UptimePoint`]s, oldest first |
//! | `GET /stats` | – | [`GridStats`]: the grid's totals now |
//! | `GET /stats/history` | – | [`GridStats`] samples, oldest first (see [`GridStats`]) |
//! | `GET /health` | – | [`Health`] |
//!
//! Errors answer with a 4xx or 5xx status and an [`ApiError`] body. Bodies larger than
//! [`MAX_BODY_BYTES`] and bodies with unknown fields are refused.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use serde::{Deserialize, Serialize};

use crate::capacity::Capacity;
use crate::identity::PublicKey;
pub use crate::policy::{AdmissionToken, FarmPolicy, NodeAdmission};
use crate::{FarmId, NodeId, TwinId};

/// Path prefix of every registry route.
pub const API_PREFIX: &str = "/api/v1";
/// Largest request body the registry reads.
pub const MAX_BODY_BYTES: usize = 64 * 1024;
/// A node counts as online while its last uptime report is younger than this many report periods.
pub const ONLINE_PERIODS: i64 = 3;
/// Shortest and longest uptime report period a node may declare, in seconds.
pub const REPORT_INTERVAL_RANGE: std::ops::RangeInclusive<u64> = 1..=86_400;

/// The error body of every failed request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApiError {
    pub error: String,
}

/// A value that breaks a rule of the registry.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {reason}")]
pub struct ValidationError {
    pub field: String,
    pub reason: String,
}

fn invalid(field: impl Into<String>, reason: impl Into<String>) -> ValidationError {
    ValidationError {
        field: field.into(),
        reason: reason.into(),
    }
}

fn check_text(field: &str, value: &str, max: usize) -> Result<(), ValidationError> {
    if value.len() > max {
        return Err(invalid(field, format!("longer than {max} bytes")));
    }
    if value.chars().any(char::is_control) {
        return Err(invalid(field, "contains control characters"));
    }
    Ok(())
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateTwin {
    pub public_key: PublicKey,
    /// The relay this twin is reachable through, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub relay: Option<String>,
}

impl CreateTwin {
    pub fn validate(&self) -> Result<(), ValidationError> {
        if let Some(r) = &self.relay {
            check_text("relay", r, 256)?;
        }
        Ok(())
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Twin {
    pub id: TwinId,
    pub public_key: PublicKey,
    #[serde(default)]
    pub relay: Option<String>,
    pub created_at: i64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateFarm {
    pub name: String,
}

impl CreateFarm {
    pub fn validate(&self) -> Result<(), ValidationError> {
        validate_farm_name(&self.name)
    }
}

/// Farm names: 3 to 40 characters of ASCII letters, digits, `-` and `_`, starting with a letter
/// or digit. Names are unique regardless of case.
pub fn validate_farm_name(name: &str) -> Result<(), ValidationError> {
    let ok_len = (3..=40).contains(&name.len());
    let ok_chars = name
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
    let ok_start = name
        .chars()
        .next()
        .is_some_and(|c| c.is_ascii_alphanumeric());
    if ok_len && ok_chars && ok_start {
        Ok(())
    } else {
        Err(invalid(
            "name",
            "3 to 40 of a-z, A-Z, 0-9, '-', '_', starting with a letter or digit",
        ))
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Farm {
    pub id: FarmId,
    pub name: String,
    /// The farmer.
    pub twin_id: TwinId,
    pub public_ips: Vec<FarmIp>,
    /// The farmer's rules for the farm.
    #[serde(default)]
    pub policy: FarmPolicy,
    pub created_at: i64,
}

/// A public IPv4 address of a farm's pool.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FarmIp {
    /// The address with its prefix, as it is configured: `185.69.166.20/24`.
    pub ip: Ipv4Net,
    pub gateway: Ipv4Addr,
    /// The contract that holds the address, if any.
    #[serde(default)]
    pub contract_id: Option<u64>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AddFarmIp {
    pub ip: Ipv4Net,
    pub gateway: Ipv4Addr,
}

fn usable_v4(field: &str, a: Ipv4Addr) -> Result<(), ValidationError> {
    if a.is_unspecified()
        || a.is_loopback()
        || a.is_multicast()
        || a.is_broadcast()
        || a.is_link_local()
    {
        return Err(invalid(
            field,
            format!("{a} is not a usable unicast address"),
        ));
    }
    Ok(())
}

impl AddFarmIp {
    pub fn validate(&self) -> Result<(), ValidationError> {
        usable_v4("ip", self.ip.addr())?;
        usable_v4("gateway", self.gateway)?;
        if self.ip.prefix_len() < 8 {
            return Err(invalid("ip", "prefix shorter than /8"));
        }
        if !self.ip.contains(&self.gateway) {
            return Err(invalid(
                "gateway",
                format!("{} is outside {}", self.gateway, self.ip.trunc()),
            ));
        }
        if self.gateway == self.ip.addr() {
            return Err(invalid("gateway", "equals the address itself"));
        }
        if self.ip.prefix_len() < 31
            && (self.ip.addr() == self.ip.network() || self.ip.addr() == self.ip.broadcast())
        {
            return Err(invalid(
                "ip",
                "is the network or broadcast address of its subnet",
            ));
        }
        Ok(())
    }
}

/// A node's public network configuration, set by its farmer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PublicConfig {
    pub ipv4: Ipv4Net,
    pub gw4: Ipv4Addr,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ipv6: Option<Ipv6Net>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gw6: Option<Ipv6Addr>,
    /// A domain whose subdomains point at this node, for web gateways.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub domain: Option<String>,
}

impl PublicConfig {
    pub fn validate(&self) -> Result<(), ValidationError> {
        usable_v4("ipv4", self.ipv4.addr())?;
        if !self.ipv4.contains(&self.gw4) || self.gw4 == self.ipv4.addr() {
            return Err(invalid(
                "gw4",
                "must be another address inside ipv4's subnet",
            ));
        }
        match (self.ipv6, self.gw6) {
            (None, None) => {}
            (Some(net), Some(gw)) => {
                if gw.is_unspecified() || gw == net.addr() {
                    return Err(invalid("gw6", "must be another usable address"));
                }
            }
            _ => return Err(invalid("ipv6", "ipv6 and gw6 go together")),
        }
        if let Some(d) = &self.domain {
            validate_domain(d)?;
        }
        Ok(())
    }
}

fn validate_domain(d: &str) -> Result<(), ValidationError> {
    let ok = d.len() <= 253
        && d.split('.').count() >= 2
        && d.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && !l.starts_with('-')
                && !l.ends_with('-')
                && l.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
        });
    if ok {
        Ok(())
    } else {
        Err(invalid("domain", format!("{d:?} is not a domain name")))
    }
}

/// What a node tells the registry about itself, signed with its own key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeRegistration {
    pub farm_id: FarmId,
    /// Everything the machine has.
    pub capacity: Capacity,
    /// What the system keeps for itself (memory, its cache); never offered to workloads.
    pub reserved: Capacity,
    pub hardware: Hardware,
    pub interfaces: Vec<Interface>,
    pub zos_version: String,
    /// How often (seconds) this node reports its uptime.
    pub report_interval_secs: u64,
    /// Why the node cannot take deployments, if it cannot (for example: no SSD for its cache).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limited: Option<String>,
    /// The farmer's permission to join the farm (`admission=` on the kernel command line);
    /// needed to join a farm whose policy is [`NodeAdmission::Signed`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub admission: Option<AdmissionToken>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Hardware {
    pub serial: String,
    pub virtualized: bool,
    pub cpu_model: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Interface {
    pub name: String,
    pub mac: String,
    pub ips: Vec<IpNet>,
}

impl NodeRegistration {
    pub fn validate(&self) -> Result<(), ValidationError> {
        if self.farm_id == 0 {
            return Err(invalid(
                "farm_id",
                "a node must belong to a farm (farmer_id= on the kernel command line)",
            ));
        }
        self.capacity
            .validate()
            .map_err(|e| invalid("capacity", e.to_string()))?;
        if self.capacity.cru == 0 || self.capacity.mru == 0 {
            return Err(invalid(
                "capacity",
                "a node has at least one core and some memory",
            ));
        }
        if !self.reserved.fits_in(&self.capacity) {
            return Err(invalid("reserved", "is more than the capacity"));
        }
        check_text("hardware.serial", &self.hardware.serial, 128)?;
        check_text("hardware.cpu_model", &self.hardware.cpu_model, 256)?;
        if self.interfaces.len() > 64 {
            return Err(invalid("interfaces", "more than 64"));
        }
        for (i, nic) in self.interfaces.iter().enumerate() {
            let field = format!("interfaces[{i}]");
            let name_ok = !nic.name.is_empty()
                && nic.name.len() <= 15
                && nic.name.chars().all(|c| c.is_ascii_graphic() && c != '/');
            if !name_ok {
                return Err(invalid(
                    format!("{field}.name"),
                    "1 to 15 printable characters, no '/'",
                ));
            }
            if !is_mac(&nic.mac) {
                return Err(invalid(
                    format!("{field}.mac"),
                    format!("{:?} is not a MAC address", nic.mac),
                ));
            }
            if nic.ips.len() > 64 {
                return Err(invalid(format!("{field}.ips"), "more than 64"));
            }
            if nic
                .ips
                .iter()
                .any(|ip| matches!(ip.addr(), IpAddr::V4(a) if a.is_unspecified()))
            {
                return Err(invalid(format!("{field}.ips"), "0.0.0.0 is not an address"));
            }
        }
        if self.zos_version.is_empty() {
            return Err(invalid("zos_version", "is empty"));
        }
        check_text("zos_version", &self.zos_version, 64)?;
        if !REPORT_INTERVAL_RANGE.contains(&self.report_interval_secs) {
            return Err(invalid(
                "report_interval_secs",
                format!(
                    "must be within {}..={}",
                    REPORT_INTERVAL_RANGE.start(),
                    REPORT_INTERVAL_RANGE.end()
                ),
            ));
        }
        if let Some(l) = &self.limited {
            check_text("limited", l, 512)?;
        }
        Ok(())
    }
}

fn is_mac(s: &str) -> bool {
    let parts: Vec<&str> = s.split(':').collect();
    parts.len() == 6
        && parts
            .iter()
            .all(|p| p.len() == 2 && p.chars().all(|c| c.is_ascii_hexdigit()))
}

/// A registered node, as the registry answers it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Node {
    pub id: NodeId,
    pub twin_id: TwinId,
    pub farm_id: FarmId,
    pub capacity: Capacity,
    pub reserved: Capacity,
    /// Held by contracts.
    pub used: Capacity,
    pub hardware: Hardware,
    pub interfaces: Vec<Interface>,
    pub zos_version: String,
    pub report_interval_secs: u64,
    #[serde(default)]
    pub limited: Option<String>,
    #[serde(default)]
    pub public_config: Option<PublicConfig>,
    /// Uptime (seconds) in the last report.
    pub uptime_secs: u64,
    /// Server time (unix seconds) of the last uptime report.
    #[serde(default)]
    pub last_seen: Option<i64>,
    /// True while the last report is younger than [`ONLINE_PERIODS`] report periods.
    pub online: bool,
    pub created_at: i64,
    pub updated_at: i64,
}

impl Node {
    /// What is left for workloads: capacity minus reserved minus used.
    pub fn free(&self) -> Capacity {
        self.capacity
            .saturating_sub(self.reserved)
            .saturating_sub(self.used)
    }
}

/// Whether a node whose last report was at `last_seen` counts as online at `now`.
pub fn is_online(last_seen: Option<i64>, report_interval_secs: u64, now: i64) -> bool {
    let window = ONLINE_PERIODS.saturating_mul(report_interval_secs as i64);
    last_seen.is_some_and(|seen| now.saturating_sub(seen) < window)
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UptimeReport {
    /// Seconds since the node booted.
    pub uptime_secs: u64,
    /// The node's clock when it made the report (unix seconds).
    pub timestamp: i64,
    /// What the node's workloads hold now; the registry keeps it as the node's `used`, so
    /// free capacity (and the `free_*` filters) follow the deployments.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub used: Option<Capacity>,
}

impl UptimeReport {
    /// Checks the report against the receiver's clock `now`: the node's clock must be within
    /// [`crate::auth::MAX_SKEW_SECS`] of it, and the node cannot have booted before 1970.
    pub fn validate(&self, now: i64) -> Result<(), ValidationError> {
        if self.timestamp.abs_diff(now) > crate::auth::MAX_SKEW_SECS.unsigned_abs() {
            return Err(invalid(
                "timestamp",
                format!(
                    "{} is more than {} s away from the server clock {now}",
                    self.timestamp,
                    crate::auth::MAX_SKEW_SECS
                ),
            ));
        }
        if !i64::try_from(self.uptime_secs).is_ok_and(|u| u <= self.timestamp) {
            return Err(invalid(
                "uptime_secs",
                format!("{} s would mean a boot before 1970", self.uptime_secs),
            ));
        }
        Ok(())
    }

    /// Checks `used` against the node's registered `capacity`: memory and disks cannot be
    /// used beyond what the node has (cores may be shared, so they are not bounded).
    pub fn check_used(&self, capacity: &Capacity) -> Result<(), ValidationError> {
        let Some(u) = &self.used else { return Ok(()) };
        for (what, used, total) in [
            ("mru", u.mru, capacity.mru),
            ("sru", u.sru, capacity.sru),
            ("hru", u.hru, capacity.hru),
        ] {
            if used > total {
                return Err(invalid(
                    format!("used.{what}"),
                    format!("{used} is more than the node's {total}"),
                ));
            }
        }
        Ok(())
    }
}

/// The answer of `GET /health`: a cheap check that the registry is up, and its clock.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Health {
    /// Version of the `zos-grid` that answers.
    pub version: String,
    /// The registry's clock (unix seconds), which signed requests must be within
    /// [`crate::auth::MAX_SKEW_SECS`] of.
    pub time: i64,
}

/// Query filters of `GET /nodes`. Absent fields do not filter.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeFilter {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub farm_id: Option<FarmId>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub twin_id: Option<TwinId>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub online: Option<bool>,
    /// Minimum free capacity, per unit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub free_cru: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub free_mru: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub free_sru: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub free_hru: Option<u64>,
    /// At most this many nodes (default 100, at most 1000), after skipping `offset`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub offset: Option<u32>,
    /// Only nodes running exactly this version.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub zos_version: Option<String>,
    /// The order of the answer (default: by id).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sort: Option<NodeSort>,
    /// Largest first.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub desc: Option<bool>,
}

/// What `GET /nodes` sorts by; ties are broken by id.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NodeSort {
    #[default]
    Id,
    Farm,
    FreeCru,
    FreeMru,
    FreeSru,
    FreeHru,
    Uptime,
    LastSeen,
    Version,
}

impl NodeSort {
    pub const ALL: [NodeSort; 9] = [
        NodeSort::Id,
        NodeSort::Farm,
        NodeSort::FreeCru,
        NodeSort::FreeMru,
        NodeSort::FreeSru,
        NodeSort::FreeHru,
        NodeSort::Uptime,
        NodeSort::LastSeen,
        NodeSort::Version,
    ];

    /// The name used in queries.
    pub fn as_str(self) -> &'static str {
        match self {
            NodeSort::Id => "id",
            NodeSort::Farm => "farm",
            NodeSort::FreeCru => "free_cru",
            NodeSort::FreeMru => "free_mru",
            NodeSort::FreeSru => "free_sru",
            NodeSort::FreeHru => "free_hru",
            NodeSort::Uptime => "uptime",
            NodeSort::LastSeen => "last_seen",
            NodeSort::Version => "version",
        }
    }
}

/// The grid's totals at one time: the answer of `GET /stats`, and one sample of
/// `GET /stats/history`. The registry samples them about once a minute and keeps a bounded,
/// thinned history: every sample of the last day, one an hour for 30 days before that.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GridStats {
    /// Server time (unix seconds) of the figures.
    pub time: i64,
    pub nodes: u64,
    pub nodes_online: u64,
    pub farms: u64,
    /// Capacity of every node.
    pub total: Capacity,
    /// Kept back by the nodes for themselves.
    pub reserved: Capacity,
    /// Held by contracts.
    pub used: Capacity,
    /// Addresses in farms' pools, and those held by contracts.
    pub ipv4_total: u64,
    pub ipv4_used: u64,
    /// Live contracts (created or in their grace period).
    pub contracts: u64,
}

/// One uptime report of a node, as the registry received it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UptimePoint {
    /// Server time (unix seconds) of the report.
    pub time: i64,
    /// The node's uptime in it.
    pub uptime_secs: u64,
}

impl NodeFilter {
    pub const DEFAULT_LIMIT: u32 = 100;
    pub const MAX_LIMIT: u32 = 1000;

    /// True when `node` passes every filter except paging.
    pub fn matches(&self, node: &Node) -> bool {
        let free = node.free();
        self.farm_id.is_none_or(|f| node.farm_id == f)
            && self.twin_id.is_none_or(|t| node.twin_id == t)
            && self.online.is_none_or(|o| node.online == o)
            && self.free_cru.is_none_or(|v| free.cru >= v)
            && self.free_mru.is_none_or(|v| free.mru >= v)
            && self.free_sru.is_none_or(|v| free.sru >= v)
            && self.free_hru.is_none_or(|v| free.hru >= v)
            && self
                .zos_version
                .as_ref()
                .is_none_or(|v| &node.zos_version == v)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::capacity::GIB;

    fn registration() -> NodeRegistration {
        NodeRegistration {
            farm_id: 1,
            capacity: Capacity {
                cru: 2,
                mru: 24 * GIB,
                sru: 0,
                hru: 0,
            },
            reserved: Capacity {
                cru: 0,
                mru: 2 * GIB + GIB / 2,
                sru: 0,
                hru: 0,
            },
            hardware: Hardware {
                serial: "abc".into(),
                virtualized: true,
                cpu_model: "Xeon".into(),
            },
            interfaces: vec![Interface {
                name: "eth0".into(),
                mac: "52:54:00:12:34:56".into(),
                ips: vec!["10.1.0.2/24".parse().unwrap()],
            }],
            zos_version: "0.1.0".into(),
            report_interval_secs: 60,
            limited: None,
            admission: None,
        }
    }

    #[test]
    fn registration_rules() {
        registration().validate().unwrap();
        let mut r = registration();
        r.farm_id = 0;
        assert_eq!(r.validate().unwrap_err().field, "farm_id");
        let mut r = registration();
        r.capacity.mru = u64::MAX;
        assert_eq!(r.validate().unwrap_err().field, "capacity");
        let mut r = registration();
        r.reserved.mru = r.capacity.mru + 1;
        assert_eq!(r.validate().unwrap_err().field, "reserved");
        let mut r = registration();
        r.interfaces[0].mac = "52:54:00:12:34".into();
        assert_eq!(r.validate().unwrap_err().field, "interfaces[0].mac");
        let mut r = registration();
        r.report_interval_secs = 0;
        assert_eq!(r.validate().unwrap_err().field, "report_interval_secs");
        let mut r = registration();
        r.hardware.serial = "x".repeat(500);
        assert_eq!(r.validate().unwrap_err().field, "hardware.serial");
    }

    #[test]
    fn unknown_fields_are_refused() {
        let mut v = serde_json::to_value(registration()).unwrap();
        v["surprise"] = serde_json::json!(1);
        assert!(serde_json::from_value::<NodeRegistration>(v).is_err());
        assert!(serde_json::from_str::<NodeRegistration>(r#"{"farm_id":-1}"#).is_err());
    }

    #[test]
    fn farm_names_and_ips() {
        validate_farm_name("my-farm_1").unwrap();
        for bad in ["ab", "-farm", "farm name", "f".repeat(41).as_str(), "färm"] {
            assert!(validate_farm_name(bad).is_err(), "{bad}");
        }
        let ip = |ip: &str, gw: &str| AddFarmIp {
            ip: ip.parse().unwrap(),
            gateway: gw.parse().unwrap(),
        };
        ip("185.69.166.20/24", "185.69.166.1").validate().unwrap();
        assert!(ip("185.69.166.20/24", "185.69.167.1").validate().is_err());
        assert!(ip("185.69.166.0/24", "185.69.166.1").validate().is_err());
        assert!(ip("185.69.166.1/24", "185.69.166.1").validate().is_err());
        assert!(ip("127.0.0.2/8", "127.0.0.1").validate().is_err());
    }

    #[test]
    fn uptime_reports_are_checked_against_the_clock() {
        let r = |uptime_secs, timestamp| UptimeReport {
            uptime_secs,
            timestamp,
            used: None,
        };
        r(100, 1000).validate(1000).unwrap();
        r(100, 1060).validate(1000).unwrap();
        assert_eq!(r(100, 1061).validate(1000).unwrap_err().field, "timestamp");
        assert_eq!(r(100, 939).validate(1000).unwrap_err().field, "timestamp");
        assert_eq!(
            r(1001, 1000).validate(1000).unwrap_err().field,
            "uptime_secs"
        );
        assert_eq!(
            r(u64::MAX, 1000).validate(1000).unwrap_err().field,
            "uptime_secs"
        );
    }

    #[test]
    fn online_needs_a_report_younger_than_three_periods() {
        assert!(!is_online(None, 10, 100));
        assert!(is_online(Some(100), 10, 100));
        assert!(is_online(Some(100), 10, 129));
        assert!(!is_online(Some(100), 10, 130));
    }
}
