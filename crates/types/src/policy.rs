//! A farm's rules, set by its farmer: who may register nodes into the farm, whether its nodes
//! are rented whole, and which hosts besides the grid's hub its nodes fetch flists from.
//!
//! | method and path | signer | body → answer |
//! |---|---|---|
//! | `PUT /farms/{id}/policy` | the farmer | [`FarmPolicy`] → 200 [`crate::registry::Farm`] |
//!
//! **Node admission.** A farm with [`NodeAdmission::Signed`] (the default) takes a new node (or
//! a node moving in from another farm) only with an [`AdmissionToken`]: the farmer's ed25519
//! signature over `"zos-node-admission-v1:" || farm id (4 bytes BE) || expiry (8 bytes BE)`.
//! The farmer makes one (`zos farm admission`) and boots machines with `admission=TOKEN` on the
//! kernel command line; every node booted with it may join until it expires. A node already in
//! the farm re-registers without one. [`NodeAdmission::Open`] lets any node join.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::FarmId;
use crate::identity::{Identity, PublicKey, Signature};
use crate::registry::ValidationError;

/// Most hosts a farm allows flists from (besides the grid's hub).
pub const MAX_FLIST_HOSTS: usize = 16;

/// The domain tag of the message an admission token signs.
pub const ADMISSION_DOMAIN: &[u8] = b"zos-node-admission-v1:";

/// Who may register nodes into a farm.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NodeAdmission {
    /// Any node.
    Open,
    /// Only nodes that show an admission token the farmer signed.
    #[default]
    Signed,
}

impl NodeAdmission {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Open => "open",
            Self::Signed => "signed",
        }
    }
}

/// A farm's rules. A new farm has the default: signed admission, not rentable, no flist hosts
/// but the grid's hub.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FarmPolicy {
    #[serde(default)]
    pub node_admission: NodeAdmission,
    /// Whether a twin may rent a whole node of the farm (a rent contract).
    #[serde(default)]
    pub rentable: bool,
    /// Hosts (`name` or `name:port`, lowercase) the farm's nodes fetch flists from, besides the
    /// grid's own hub.
    #[serde(default)]
    pub flist_hosts: Vec<String>,
}

impl FarmPolicy {
    pub fn validate(&self) -> Result<(), ValidationError> {
        if self.flist_hosts.len() > MAX_FLIST_HOSTS {
            return Err(bad("flist_hosts", format!("more than {MAX_FLIST_HOSTS}")));
        }
        for (i, h) in self.flist_hosts.iter().enumerate() {
            if !is_host_port(h) {
                return Err(bad(
                    &format!("flist_hosts[{i}]"),
                    format!(
                        "{h:?} is not a lowercase host name or IPv4 address, with an optional :port"
                    ),
                ));
            }
        }
        Ok(())
    }
}

fn bad(field: &str, reason: String) -> ValidationError {
    ValidationError {
        field: field.into(),
        reason,
    }
}

/// `host` or `host:port`: a lowercase DNS name or an IPv4 address, and a port 1..=65535.
pub fn is_host_port(s: &str) -> bool {
    let (host, port) = match s.rsplit_once(':') {
        Some((h, p)) => (h, Some(p)),
        None => (s, None),
    };
    let port_ok = port.is_none_or(|p| p.parse::<u16>().is_ok_and(|p| p > 0));
    let host_ok = !host.is_empty()
        && host.len() <= 253
        && host.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && !l.starts_with('-')
                && !l.ends_with('-')
                && l.chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        });
    port_ok && host_ok
}

/// A farmer's permission for nodes to join farm `farm_id` until `expires_at` (unix seconds).
/// Written `FARM.EXPIRES.SIGNATURE_HEX`, the form it takes on a kernel command line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AdmissionToken {
    pub farm_id: FarmId,
    pub expires_at: i64,
    pub signature: Signature,
}

/// Why an admission token does not admit a node.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AdmissionError {
    #[error("{0:?} is not an admission token (FARM.EXPIRES.SIGNATURE)")]
    Malformed(String),
    #[error("the admission token is for farm {token}, not farm {farm}")]
    WrongFarm { token: FarmId, farm: FarmId },
    #[error("the admission token expired at {0}: ask the farmer for a new one")]
    Expired(i64),
    #[error("the admission token is not signed by the farm's farmer")]
    BadSignature,
}

impl AdmissionToken {
    /// The message the farmer signs.
    pub fn message(farm_id: FarmId, expires_at: i64) -> Vec<u8> {
        let mut m = ADMISSION_DOMAIN.to_vec();
        m.extend_from_slice(&farm_id.to_be_bytes());
        m.extend_from_slice(&expires_at.to_be_bytes());
        m
    }

    pub fn sign(farmer: &Identity, farm_id: FarmId, expires_at: i64) -> Self {
        Self {
            farm_id,
            expires_at,
            signature: farmer.sign(&Self::message(farm_id, expires_at)),
        }
    }

    /// Checks that the token admits nodes into `farm` at `now`, signed by `farmer`.
    pub fn check(&self, farm: FarmId, farmer: &PublicKey, now: i64) -> Result<(), AdmissionError> {
        if self.farm_id != farm {
            return Err(AdmissionError::WrongFarm {
                token: self.farm_id,
                farm,
            });
        }
        if self.expires_at <= now {
            return Err(AdmissionError::Expired(self.expires_at));
        }
        farmer
            .verify(
                &Self::message(self.farm_id, self.expires_at),
                &self.signature,
            )
            .map_err(|_| AdmissionError::BadSignature)
    }
}

impl fmt::Display for AdmissionToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}.{}", self.farm_id, self.expires_at, self.signature)
    }
}

impl FromStr for AdmissionToken {
    type Err = AdmissionError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let malformed = || AdmissionError::Malformed(s.chars().take(200).collect());
        let mut parts = s.splitn(3, '.');
        let (Some(farm), Some(expires), Some(sig)) = (parts.next(), parts.next(), parts.next())
        else {
            return Err(malformed());
        };
        Ok(Self {
            farm_id: farm.parse().map_err(|_| malformed())?,
            expires_at: expires.parse().map_err(|_| malformed())?,
            signature: sig.parse().map_err(|_| malformed())?,
        })
    }
}

impl Serialize for AdmissionToken {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for AdmissionToken {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_round_trip_and_bind_farm_expiry_and_farmer() {
        let farmer = Identity::from_seed([3; 32]);
        let t = AdmissionToken::sign(&farmer, 7, 1000);
        let back: AdmissionToken = t.to_string().parse().unwrap();
        assert_eq!(back, t);
        t.check(7, &farmer.public_key(), 999).unwrap();
        assert!(matches!(
            t.check(8, &farmer.public_key(), 999),
            Err(AdmissionError::WrongFarm { .. })
        ));
        assert_eq!(
            t.check(7, &farmer.public_key(), 1000),
            Err(AdmissionError::Expired(1000))
        );
        let other = Identity::from_seed([4; 32]);
        assert_eq!(
            t.check(7, &other.public_key(), 1),
            Err(AdmissionError::BadSignature)
        );
        let mut longer = t;
        longer.expires_at = 5000;
        assert_eq!(
            longer.check(7, &farmer.public_key(), 1),
            Err(AdmissionError::BadSignature)
        );
        assert!("7.1000".parse::<AdmissionToken>().is_err());
    }

    #[test]
    fn flist_hosts_are_host_names_with_optional_ports() {
        for ok in ["hub.grid.tf", "10.0.0.1:8080", "localhost", "a-b.example"] {
            assert!(is_host_port(ok), "{ok}");
        }
        for bad in [
            "",
            "Hub.grid.tf",
            "http://hub",
            "hub/x",
            "hub:0",
            "hub:99999",
            "-a.b",
            "a..b",
        ] {
            assert!(!is_host_port(bad), "{bad}");
        }
        let mut p = FarmPolicy::default();
        assert_eq!(p.node_admission, NodeAdmission::Signed);
        p.flist_hosts = vec!["x".into(); MAX_FLIST_HOSTS + 1];
        assert!(p.validate().is_err());
    }
}
