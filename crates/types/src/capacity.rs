//! Capacity units: CRU (logical cores), MRU (bytes of RAM), SRU (bytes of SSD), HRU (bytes of HDD).

use std::fmt;

use serde::{Deserialize, Serialize};

pub const KIB: u64 = 1 << 10;
pub const MIB: u64 = 1 << 20;
pub const GIB: u64 = 1 << 30;
pub const TIB: u64 = 1 << 40;
pub const PIB: u64 = 1 << 50;

/// Bounds that no real machine passes; values beyond them are refused as absurd.
pub const MAX_CRU: u64 = 16_384;
pub const MAX_MRU: u64 = 256 * TIB;
pub const MAX_DISK: u64 = 64 * PIB;

/// An amount of each capacity unit.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Capacity {
    /// Logical CPU cores.
    pub cru: u64,
    /// Memory, bytes.
    pub mru: u64,
    /// SSD storage, bytes.
    pub sru: u64,
    /// HDD storage, bytes.
    pub hru: u64,
}

/// A capacity value outside what any machine has.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{unit} = {value} is beyond the limit of {limit}")]
pub struct CapacityError {
    pub unit: &'static str,
    pub value: u64,
    pub limit: u64,
}

impl Capacity {
    pub const ZERO: Capacity = Capacity {
        cru: 0,
        mru: 0,
        sru: 0,
        hru: 0,
    };

    /// Refuses absurd amounts (more cores, memory or disk than any machine has).
    pub fn validate(&self) -> Result<(), CapacityError> {
        for (unit, value, limit) in [
            ("cru", self.cru, MAX_CRU),
            ("mru", self.mru, MAX_MRU),
            ("sru", self.sru, MAX_DISK),
            ("hru", self.hru, MAX_DISK),
        ] {
            if value > limit {
                return Err(CapacityError { unit, value, limit });
            }
        }
        Ok(())
    }

    pub fn saturating_add(self, o: Capacity) -> Capacity {
        Capacity {
            cru: self.cru.saturating_add(o.cru),
            mru: self.mru.saturating_add(o.mru),
            sru: self.sru.saturating_add(o.sru),
            hru: self.hru.saturating_add(o.hru),
        }
    }

    pub fn saturating_sub(self, o: Capacity) -> Capacity {
        Capacity {
            cru: self.cru.saturating_sub(o.cru),
            mru: self.mru.saturating_sub(o.mru),
            sru: self.sru.saturating_sub(o.sru),
            hru: self.hru.saturating_sub(o.hru),
        }
    }

    /// True when every unit of `self` is at most the same unit of `other`.
    pub fn fits_in(&self, other: &Capacity) -> bool {
        self.cru <= other.cru
            && self.mru <= other.mru
            && self.sru <= other.sru
            && self.hru <= other.hru
    }
}

impl fmt::Display for Capacity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} cores, {} RAM, {} SSD, {} HDD",
            self.cru,
            human_bytes(self.mru),
            human_bytes(self.sru),
            human_bytes(self.hru)
        )
    }
}

/// Bytes in binary units with one decimal: `1.5 GiB`.
pub fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 6] = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];
    let mut v = n as f64;
    let mut i = 0;
    while v >= 1024.0 && i + 1 < UNITS.len() {
        v /= 1024.0;
        i += 1;
    }
    if i == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[i])
    }
}

/// Parses sizes such as `512M`, `10G`, `1.5TiB` or a plain byte count.
pub fn parse_bytes(s: &str) -> Option<u64> {
    let s = s.trim();
    let split = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let mult = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" | "kib" => KIB,
        "m" | "mb" | "mib" => MIB,
        "g" | "gb" | "gib" => GIB,
        "t" | "tb" | "tib" => TIB,
        "p" | "pb" | "pib" => PIB,
        _ => return None,
    };
    if num.contains('.') {
        let v: f64 = num.parse().ok()?;
        let bytes = v * mult as f64;
        (bytes.is_finite() && bytes >= 0.0 && bytes < u64::MAX as f64).then_some(bytes as u64)
    } else {
        num.parse::<u64>().ok()?.checked_mul(mult)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn absurd_values_are_refused() {
        let ok = Capacity {
            cru: 64,
            mru: 512 * GIB,
            sru: 8 * TIB,
            hru: 100 * TIB,
        };
        ok.validate().unwrap();
        let bad = Capacity {
            cru: 1_000_000,
            ..ok
        };
        assert_eq!(bad.validate().unwrap_err().unit, "cru");
        let bad = Capacity {
            hru: u64::MAX,
            ..ok
        };
        assert_eq!(bad.validate().unwrap_err().unit, "hru");
    }

    #[test]
    fn arithmetic_and_fit() {
        let a = Capacity {
            cru: 4,
            mru: 8 * GIB,
            sru: 0,
            hru: 1,
        };
        let b = Capacity {
            cru: 1,
            mru: GIB,
            sru: 0,
            hru: 0,
        };
        assert!(b.fits_in(&a));
        assert!(!a.fits_in(&b));
        assert_eq!(a.saturating_sub(b).saturating_add(b), a);
        assert_eq!(b.saturating_sub(a), Capacity::ZERO);
    }

    #[test]
    fn sizes_parse_and_print() {
        assert_eq!(parse_bytes("512M"), Some(512 * MIB));
        assert_eq!(parse_bytes("10 GiB"), Some(10 * GIB));
        assert_eq!(parse_bytes("1.5T"), Some(TIB + TIB / 2));
        assert_eq!(parse_bytes("42"), Some(42));
        assert_eq!(parse_bytes("-1G"), None);
        assert_eq!(parse_bytes("99999999999999P"), None);
        assert_eq!(human_bytes(3 * GIB / 2), "1.5 GiB");
        assert_eq!(human_bytes(12), "12 B");
    }
}
