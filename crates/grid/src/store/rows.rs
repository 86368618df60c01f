//! Conversions shared by the SQLite store's modules ([`super::sqlite`], [`super::contracts`],
//! [`super::farms`]): database errors with their context, integers and JSON columns checked on
//! the way in and out, and the rows of twins, nodes and farm IPs. It imports none of them, so
//! they depend on it and not on each other's internals.

use std::net::Ipv4Addr;

use ipnet::Ipv4Net;
use rusqlite::Row;
use zos_types::Capacity;
use zos_types::registry::{FarmIp, Hardware, Interface, Node, PublicConfig, Twin, is_online};

use super::StoreError;

/// Maps a SQLite error to [`StoreError::Database`] with what was being done.
pub(super) fn db(context: &'static str) -> impl FnOnce(rusqlite::Error) -> StoreError {
    move |source| StoreError::Database { context, source }
}

pub(super) fn to_sql(field: &str, v: u64) -> Result<i64, StoreError> {
    i64::try_from(v).map_err(|_| StoreError::Invalid {
        field: field.into(),
        reason: format!("{v} is too large"),
    })
}

pub(super) fn from_sql(what: &str, v: i64) -> rusqlite::Result<u64> {
    u64::try_from(v).map_err(|_| {
        rusqlite::Error::FromSqlConversionFailure(
            0,
            rusqlite::types::Type::Integer,
            format!("{what} is negative: {v}").into(),
        )
    })
}

pub(super) fn id_from_sql(v: i64) -> rusqlite::Result<u32> {
    u32::try_from(v).map_err(|_| {
        rusqlite::Error::FromSqlConversionFailure(
            0,
            rusqlite::types::Type::Integer,
            format!("id {v} is out of range").into(),
        )
    })
}

pub(super) fn json_col<T: serde::de::DeserializeOwned>(
    what: &str,
    text: &str,
) -> rusqlite::Result<T> {
    serde_json::from_str(text).map_err(|e| {
        rusqlite::Error::FromSqlConversionFailure(
            0,
            rusqlite::types::Type::Text,
            format!("{what}: {e}").into(),
        )
    })
}

pub(super) fn twin_from_row(r: &Row<'_>) -> rusqlite::Result<Twin> {
    let key: String = r.get(1)?;
    Ok(Twin {
        id: id_from_sql(r.get(0)?)?,
        public_key: key.parse().map_err(|_| {
            rusqlite::Error::FromSqlConversionFailure(
                1,
                rusqlite::types::Type::Text,
                "public key".into(),
            )
        })?,
        relay: r.get(2)?,
        created_at: r.get(3)?,
    })
}

pub(super) fn capacity_at(r: &Row<'_>, first: usize) -> rusqlite::Result<Capacity> {
    Ok(Capacity {
        cru: from_sql("cru", r.get(first)?)?,
        mru: from_sql("mru", r.get(first + 1)?)?,
        sru: from_sql("sru", r.get(first + 2)?)?,
        hru: from_sql("hru", r.get(first + 3)?)?,
    })
}

pub(super) fn node_from_row(r: &Row<'_>, now: i64) -> rusqlite::Result<Node> {
    let interfaces: String = r.get(18)?;
    let public_config: Option<String> = r.get(22)?;
    let report_interval_secs = from_sql("report_interval_secs", r.get(20)?)?;
    let last_seen: Option<i64> = r.get(24)?;
    Ok(Node {
        id: id_from_sql(r.get(0)?)?,
        twin_id: id_from_sql(r.get(1)?)?,
        farm_id: id_from_sql(r.get(2)?)?,
        capacity: capacity_at(r, 3)?,
        reserved: capacity_at(r, 7)?,
        used: capacity_at(r, 11)?,
        hardware: Hardware {
            serial: r.get(15)?,
            virtualized: r.get(16)?,
            cpu_model: r.get(17)?,
        },
        interfaces: json_col::<Vec<Interface>>("interfaces", &interfaces)?,
        zos_version: r.get(19)?,
        report_interval_secs,
        limited: r.get(21)?,
        public_config: public_config
            .map(|t| json_col::<PublicConfig>("public_config", &t))
            .transpose()?,
        uptime_secs: from_sql("uptime_secs", r.get(23)?)?,
        last_seen,
        online: is_online(last_seen, report_interval_secs, now),
        created_at: r.get(25)?,
        updated_at: r.get(26)?,
    })
}

pub(super) fn farm_ip_from_row(r: &Row<'_>) -> rusqlite::Result<FarmIp> {
    let addr = Ipv4Addr::from(u32::try_from(r.get::<_, i64>(0)?).unwrap_or(0));
    let prefix: u8 = r.get(1)?;
    let gateway = Ipv4Addr::from(u32::try_from(r.get::<_, i64>(2)?).unwrap_or(0));
    let ip = Ipv4Net::new(addr, prefix).map_err(|e| {
        rusqlite::Error::FromSqlConversionFailure(1, rusqlite::types::Type::Integer, e.into())
    })?;
    let contract_id: Option<i64> = r.get(3)?;
    Ok(FarmIp {
        ip,
        gateway,
        contract_id: contract_id
            .map(|c| from_sql("contract_id", c))
            .transpose()?,
    })
}
