//! Billing: the pricing policy, the cost formulas, and the objects of the account API.
//!
//! The formulas follow TFChain's (see `docs/billing.md` for the sources and where we differ):
//!
//! - **CU** (compute units) of `cru` cores and `mru` GiB of memory:
//!   `min(max(cru/2, mru/4), max(cru, mru/8), max(cru/4, mru/2))`.
//! - **SU** (storage units) of `hru` and `sru` GiB of disk: `hru/1200 + sru/200`.
//! - **NU** (network units): GB (10⁹ bytes) of public traffic.
//! - Prices of CU, SU, an IPv4 address and a unique name are per hour; the price of NU is per GB.
//! - Each line of a bill is rounded up to a whole unit on its own; the discount for balance held
//!   applies to their sum, rounded up again.
//!
//! Every function here is pure and exact: it works on integers (scaled so that no division
//! happens before the final rounding), so the grid, the CLI and the tests agree to the unit.
//!
//! | Route | Signed by | Body → answer |
//! |---|---|---|
//! | `GET /billing` | – | → [`BillingInfo`] (policy, period, grace length, faucet) |
//! | `PUT /billing/policy` | the grid's admin twin | [`PricingPolicy`] → 200 [`PolicyVersion`] |
//! | `GET /accounts/{twin}` | the twin or the admin | → [`Account`] |
//! | `POST /accounts/{twin}/deposit` | the admin (the twin itself on a faucet grid) | [`Deposit`] → [`Account`] |
//! | `GET /accounts/{twin}/history` | the twin or the admin | → [`AccountEvent`]s, newest first |
//! | `GET /contracts/{id}/bills` | the contract's twin or the admin | → [`Bill`]s, newest first |
//! | `GET /farms/{id}/earnings` | the farm's twin or the admin | → [`FarmEarnings`] |
//! | `POST /nodes/{id}/consumption` | the node's twin | [`ConsumptionReport`]s → [`ConsumptionRecorded`] |

use serde::{Deserialize, Serialize};

use crate::capacity::GIB;
use crate::deployment::ContractId;
use crate::{Capacity, FarmId, NodeId, TwinId};

/// An amount of money in the grid's smallest unit. One token is [`UNITS_PER_TOKEN`] units.
pub type Amount = u64;

/// Units in one token (seven decimals, as TFChain's TFT).
pub const UNITS_PER_TOKEN: u64 = 10_000_000;
/// Seconds in an hour: prices of CU, SU, IPv4 and names are per hour.
pub const SECS_PER_HOUR: u64 = 3600;
/// Bytes in the GB that NU counts (decimal, as TFChain's `factor_base_1000`).
pub const BYTES_PER_NU: u64 = 1_000_000_000;
/// The month of discount levels: 30 days.
pub const SECS_PER_MONTH: u64 = 30 * 24 * SECS_PER_HOUR;
/// The highest price the policy accepts for one unit (a thousandfold TFChain's CU price of
/// 100 000 units per hour would still be far below it).
pub const MAX_PRICE: Amount = 1_000_000_000_000;
/// The longest span one bill covers (a year): longer spans are refused, not billed.
pub const MAX_BILL_SECS: u64 = 366 * 24 * SECS_PER_HOUR;
/// The most traffic one bill counts (an exabyte): more is absurd.
pub const MAX_PUBLIC_BYTES: u64 = 1 << 60;

/// A discount level: a twin whose balance pays for at least `months` of a bill pays
/// `pay_percent` of it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DiscountLevel {
    pub months: u32,
    pub pay_percent: u8,
}

/// The prices of the grid, set by its admin twin. Each change makes a new version; bills name
/// the version they used.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PricingPolicy {
    /// Units per CU per hour.
    pub cu: Amount,
    /// Units per SU per hour.
    pub su: Amount,
    /// Units per NU (GB of public traffic).
    pub nu: Amount,
    /// Units per public IPv4 address per hour.
    pub ipv4: Amount,
    /// Units per name contract per hour.
    pub unique_name: Amount,
    /// Percent taken off the CU and SU of a whole node rented with a rent contract.
    pub dedicated_discount_percent: u8,
    /// Percent of each paid bill that goes to the farm of the node; the rest is the grid's.
    pub farmer_percent: u8,
    /// Discount levels by months of the bill the balance covers, in increasing `months`.
    pub discounts: Vec<DiscountLevel>,
}

impl Default for PricingPolicy {
    /// TFChain's genesis prices (in units of 10⁻⁷, as TFChain's policy values) and discount
    /// levels.
    fn default() -> Self {
        Self {
            cu: 100_000,
            su: 50_000,
            nu: 15_000,
            ipv4: 40_000,
            unique_name: 2_500,
            dedicated_discount_percent: 50,
            farmer_percent: 50,
            discounts: vec![
                DiscountLevel {
                    months: 3,
                    pay_percent: 80,
                },
                DiscountLevel {
                    months: 6,
                    pay_percent: 70,
                },
                DiscountLevel {
                    months: 12,
                    pay_percent: 60,
                },
                DiscountLevel {
                    months: 36,
                    pay_percent: 40,
                },
            ],
        }
    }
}

/// A policy that cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {reason}")]
pub struct PolicyError {
    pub field: &'static str,
    pub reason: String,
}

impl PricingPolicy {
    /// Refuses prices above [`MAX_PRICE`], percents above 100, and discount levels that are
    /// not increasing in months and decreasing in price.
    pub fn validate(&self) -> Result<(), PolicyError> {
        for (field, price) in [
            ("cu", self.cu),
            ("su", self.su),
            ("nu", self.nu),
            ("ipv4", self.ipv4),
            ("unique_name", self.unique_name),
        ] {
            if price > MAX_PRICE {
                return Err(PolicyError {
                    field,
                    reason: format!("{price} is above the limit of {MAX_PRICE} units"),
                });
            }
        }
        for (field, pct) in [
            (
                "dedicated_discount_percent",
                self.dedicated_discount_percent,
            ),
            ("farmer_percent", self.farmer_percent),
        ] {
            if pct > 100 {
                return Err(PolicyError {
                    field,
                    reason: format!("{pct} is above 100"),
                });
            }
        }
        if self.discounts.len() > 16 {
            return Err(PolicyError {
                field: "discounts",
                reason: "at most 16 levels".into(),
            });
        }
        let mut prev = (0u32, 100u8);
        for (i, d) in self.discounts.iter().enumerate() {
            if d.months == 0 || d.months <= prev.0 || d.pay_percent > prev.1 || d.pay_percent == 0 {
                return Err(PolicyError {
                    field: "discounts",
                    reason: format!(
                        "level {i} ({} months, pay {}%): levels need more months than the one before and a price of 1 to 100% no higher than it",
                        d.months, d.pay_percent
                    ),
                });
            }
            prev = (d.months, d.pay_percent);
        }
        Ok(())
    }
}

/// CU of `c` times `8 × GiB`: exact, since `c.mru` is in bytes and every divisor of the formula
/// divides 8.
pub fn cu_scaled(c: &Capacity) -> u128 {
    let cru = c.cru as u128 * GIB as u128;
    let mru = c.mru as u128;
    // 8 × max(cru/2, mru/4) etc., with cru in GiB-scaled cores and mru in bytes.
    let cu1 = (4 * cru).max(2 * mru);
    let cu2 = (8 * cru).max(mru);
    let cu3 = (2 * cru).max(4 * mru);
    cu1.min(cu2).min(cu3)
}

/// The divisor of [`cu_scaled`].
pub const CU_SCALE: u128 = 8 * GIB as u128;

/// SU of `c` times `1200 × GiB`: exact.
pub fn su_scaled(c: &Capacity) -> u128 {
    c.hru as u128 + 6 * c.sru as u128
}

/// The divisor of [`su_scaled`].
pub const SU_SCALE: u128 = 1200 * GIB as u128;

/// CU of `c` as a decimal number (for display; bills use [`cu_scaled`]).
pub fn cu(c: &Capacity) -> f64 {
    cu_scaled(c) as f64 / CU_SCALE as f64
}

/// SU of `c` as a decimal number (for display; bills use [`su_scaled`]).
pub fn su(c: &Capacity) -> f64 {
    su_scaled(c) as f64 / SU_SCALE as f64
}

fn ceil_div(num: u128, den: u128) -> Amount {
    let q = num.div_ceil(den);
    Amount::try_from(q).unwrap_or(Amount::MAX)
}

/// What a contract is billed for over one span of time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "kind")]
pub enum Usage {
    /// A node contract: the capacity its workloads reserve, its public IPv4 addresses and its
    /// public traffic. On a node its twin rents, only the addresses and the traffic are paid
    /// (the rent contract pays for the capacity).
    Node {
        capacity: Capacity,
        public_ips: u32,
        public_bytes: u64,
        on_rented_node: bool,
    },
    /// A rent contract: the whole node's capacity, at the dedicated discount.
    Rent { node_capacity: Capacity },
    /// A name contract.
    Name,
}

/// The lines of a bill, each rounded up to a whole unit, before the balance discount.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Lines {
    pub cu: Amount,
    pub su: Amount,
    pub nu: Amount,
    pub ipv4: Amount,
    pub unique_name: Amount,
    /// Taken off a rent contract's CU and SU (rounded down, so the rest rounds up).
    pub dedicated_discount: Amount,
}

impl Lines {
    /// The sum of the lines, less the dedicated discount.
    pub fn subtotal(&self) -> Amount {
        self.cu
            .saturating_add(self.su)
            .saturating_add(self.nu)
            .saturating_add(self.ipv4)
            .saturating_add(self.unique_name)
            .saturating_sub(self.dedicated_discount)
    }
}

/// The lines of `usage` over `secs` seconds (at most [`MAX_BILL_SECS`]) under `policy`.
pub fn price(policy: &PricingPolicy, usage: &Usage, secs: u64) -> Lines {
    let secs = secs.min(MAX_BILL_SECS) as u128;
    let hour = SECS_PER_HOUR as u128;
    let per_hour = |price: Amount, scaled: u128, scale: u128| {
        ceil_div(
            (price as u128).saturating_mul(scaled).saturating_mul(secs),
            scale * hour,
        )
    };
    match *usage {
        Usage::Node {
            capacity,
            public_ips,
            public_bytes,
            on_rented_node,
        } => {
            let (cu, su) = if on_rented_node {
                (0, 0)
            } else {
                (
                    per_hour(policy.cu, cu_scaled(&capacity), CU_SCALE),
                    per_hour(policy.su, su_scaled(&capacity), SU_SCALE),
                )
            };
            Lines {
                cu,
                su,
                nu: ceil_div(
                    policy.nu as u128 * public_bytes.min(MAX_PUBLIC_BYTES) as u128,
                    BYTES_PER_NU as u128,
                ),
                ipv4: per_hour(policy.ipv4, public_ips as u128, 1),
                ..Lines::default()
            }
        }
        Usage::Rent { node_capacity } => {
            let cu = per_hour(policy.cu, cu_scaled(&node_capacity), CU_SCALE);
            let su = per_hour(policy.su, su_scaled(&node_capacity), SU_SCALE);
            let pct = policy.dedicated_discount_percent.min(100) as u128;
            Lines {
                cu,
                su,
                dedicated_discount: ((cu as u128 + su as u128) * pct / 100) as Amount,
                ..Lines::default()
            }
        }
        Usage::Name => Lines {
            unique_name: per_hour(policy.unique_name, 1, 1),
            ..Lines::default()
        },
    }
}

/// The discount a twin holding `balance` gets on a bill of `subtotal` for a period of
/// `period_secs`: the level of the most months of such bills the balance pays for. Answers
/// the percent paid (100 without a level) and the amount due, rounded up.
pub fn discount(
    policy: &PricingPolicy,
    subtotal: Amount,
    balance: Amount,
    period_secs: u64,
) -> (u8, Amount) {
    if subtotal == 0 {
        return (100, 0);
    }
    // Months the balance pays for: balance / (subtotal × months' worth of periods).
    let monthly = subtotal as u128 * SECS_PER_MONTH as u128;
    let months = balance as u128 * period_secs.max(1) as u128 / monthly;
    let pay = policy
        .discounts
        .iter()
        .filter(|d| months >= d.months as u128)
        .map(|d| d.pay_percent.min(100))
        .min()
        .unwrap_or(100);
    (pay, ceil_div(subtotal as u128 * pay as u128, 100))
}

/// The farmer's and the grid's shares of a paid `amount`: the farmer's is rounded down, and
/// the two always add up to `amount`.
pub fn split(policy: &PricingPolicy, amount: Amount) -> (Amount, Amount) {
    let farmer = (amount as u128 * policy.farmer_percent.min(100) as u128 / 100) as Amount;
    (farmer, amount - farmer)
}

/// What `usage` costs per hour at full price (no traffic, no balance discount): what
/// `zos deploy` shows before it signs.
pub fn cost_per_hour(policy: &PricingPolicy, usage: &Usage) -> Amount {
    let usage = match *usage {
        Usage::Node {
            capacity,
            public_ips,
            on_rented_node,
            ..
        } => Usage::Node {
            capacity,
            public_ips,
            public_bytes: 0,
            on_rented_node,
        },
        other => other,
    };
    price(policy, &usage, SECS_PER_HOUR).subtotal()
}

/// `amount` in tokens with seven decimals, trailing zeros kept: `1.2500000`.
pub fn format_amount(amount: Amount) -> String {
    format!(
        "{}.{:07}",
        amount / UNITS_PER_TOKEN,
        amount % UNITS_PER_TOKEN
    )
}

/// Parses a token amount (`12`, `0.5`, at most seven decimals) into units.
pub fn parse_amount(text: &str) -> Result<Amount, String> {
    let bad =
        || format!("{text:?} is not an amount: write tokens like 12 or 0.5 (at most 7 decimals)");
    let (whole, frac) = text.trim().split_once('.').unwrap_or((text.trim(), ""));
    if whole.is_empty() && frac.is_empty()
        || frac.len() > 7
        || !whole.chars().all(|c| c.is_ascii_digit())
        || !frac.chars().all(|c| c.is_ascii_digit())
    {
        return Err(bad());
    }
    let whole: u64 = if whole.is_empty() {
        0
    } else {
        whole.parse().map_err(|_| bad())?
    };
    let frac: u64 = format!("{frac:0<7}").parse().map_err(|_| bad())?;
    whole
        .checked_mul(UNITS_PER_TOKEN)
        .and_then(|w| w.checked_add(frac))
        .ok_or_else(bad)
}

/// A version of the pricing policy.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicyVersion {
    pub version: u32,
    pub policy: PricingPolicy,
    pub set_by: Option<TwinId>,
    pub set_at: i64,
}

/// How the grid bills: `GET /billing`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BillingInfo {
    pub policy: PolicyVersion,
    /// Length of a billing period, seconds.
    pub period_secs: u64,
    /// How long a contract stays in grace for lack of money before it is cancelled, seconds.
    pub grace_secs: u64,
    /// On a devnet, the most a twin may deposit to itself at once (`None`: only the admin
    /// deposits).
    pub faucet_max: Option<Amount>,
}

/// A twin's account: `GET /accounts/{twin}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Account {
    pub twin_id: TwinId,
    /// What the twin holds now.
    pub balance: Amount,
    /// The bills it has not paid.
    pub debt: Amount,
    /// Its contracts in grace for lack of money.
    pub in_grace: Vec<ContractId>,
}

/// A deposit: `POST /accounts/{twin}/deposit`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Deposit {
    pub amount: Amount,
    /// A payment bridge's own reference of the payment: a deposit with a reference already
    /// used is answered as before and credits nothing (retries are safe).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reference: Option<String>,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub memo: String,
}

/// The most a single deposit may credit.
pub const MAX_DEPOSIT: Amount = 1_000_000_000 * UNITS_PER_TOKEN;

/// What happened to an account.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AccountEventKind {
    /// Money came in.
    Deposit,
    /// A bill was paid.
    BillPaid,
    /// A bill could not be paid: it is a debt.
    BillUnpaid,
    /// A contract went into grace for lack of money: its workloads are paused.
    GraceStarted,
    /// A deposit paid the contract's debts: its workloads resume.
    GraceEnded,
    /// Grace ran out: the contract was cancelled.
    Cancelled,
}

impl std::fmt::Display for AccountEventKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Deposit => "deposit",
            Self::BillPaid => "bill_paid",
            Self::BillUnpaid => "bill_unpaid",
            Self::GraceStarted => "grace_started",
            Self::GraceEnded => "grace_ended",
            Self::Cancelled => "cancelled",
        })
    }
}

/// One line of an account's history.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AccountEvent {
    pub id: u64,
    pub at: i64,
    pub kind: AccountEventKind,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub contract_id: Option<ContractId>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bill_id: Option<u64>,
    /// Money moved (0 for events that move none).
    pub amount: Amount,
    /// The balance after it.
    pub balance: Amount,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub memo: String,
}

/// One bill: a contract over one period.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Bill {
    pub id: u64,
    pub contract_id: ContractId,
    pub twin_id: TwinId,
    /// The period's number: it covers `[period × period_secs, (period + 1) × period_secs)`.
    pub period: i64,
    /// The seconds of the period the contract lived.
    pub secs: u64,
    pub policy_version: u32,
    /// The formula's inputs.
    pub usage: Usage,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_id: Option<NodeId>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub farm_id: Option<FarmId>,
    pub lines: Lines,
    /// Percent of the subtotal due after the balance discount.
    pub pay_percent: u8,
    pub amount: Amount,
    pub paid: bool,
    pub at: i64,
}

/// A node's report of what one of its contracts used in one period:
/// `POST /nodes/{id}/consumption`, signed by the node's twin, carries a list of them.
/// A period is reported once; reports of a period already billed are refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConsumptionReport {
    pub contract_id: ContractId,
    /// The period's number (see [`Bill::period`]).
    pub period: i64,
    /// The capacity the contract's workloads reserve.
    pub capacity: Capacity,
    /// Bytes of public traffic in and out during the period (NU).
    pub public_bytes: u64,
}

/// The answer to consumption reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConsumptionRecorded {
    pub recorded: u32,
}

/// The most reports one request carries.
pub const MAX_REPORTS: usize = 1000;

/// What a farm earned: `GET /farms/{id}/earnings`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FarmEarnings {
    pub farm_id: FarmId,
    /// Everything credited to the farm.
    pub total: Amount,
    /// Paid bills that credited it.
    pub bills: u64,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::capacity::{MAX_CRU, MAX_DISK, MAX_MRU};
    use proptest::prelude::*;

    fn vm(cru: u64, mru_gib: u64, sru_gib: u64) -> Capacity {
        Capacity {
            cru,
            mru: mru_gib * GIB,
            sru: sru_gib * GIB,
            hru: 0,
        }
    }

    fn node(capacity: Capacity, public_ips: u32) -> Usage {
        Usage::Node {
            capacity,
            public_ips,
            public_bytes: 0,
            on_rented_node: false,
        }
    }

    /// TFChain's CU, written as the max/min of its comment, in exact rationals (numerator
    /// over 8).
    fn cu_reference(cru: u64, mru_gib: u64) -> f64 {
        let (c, m) = (cru as f64, mru_gib as f64);
        let cu1 = (c / 2.0).max(m / 4.0);
        let cu2 = c.max(m / 8.0);
        let cu3 = (c / 4.0).max(m / 2.0);
        cu1.min(cu2).min(cu3)
    }

    #[test]
    fn worked_examples_of_cu_and_su() {
        // 1 core, 2 GiB: min(max(.5,.5), max(1,.25), max(.25,1)) = 0.5 CU.
        assert_eq!(cu(&vm(1, 2, 0)), 0.5);
        // 2 cores, 4 GiB: min(1, 2, 2) = 1 CU.
        assert_eq!(cu(&vm(2, 4, 0)), 1.0);
        // 1 core, 16 GiB: min(4, 2, 8) = 2 CU: memory beyond 8 GiB per core costs.
        assert_eq!(cu(&vm(1, 16, 0)), 2.0);
        // 8 cores, 1 GiB: min(4, 8, 2) = 2 CU.
        assert_eq!(cu(&vm(8, 1, 0)), 2.0);
        // 200 GiB of SSD is one SU, 1200 GiB of HDD another.
        let disks = Capacity {
            sru: 200 * GIB,
            hru: 1200 * GIB,
            ..Capacity::ZERO
        };
        assert_eq!(su(&disks), 2.0);
    }

    #[test]
    fn one_hour_of_a_small_vm_with_an_address_at_genesis_prices() {
        // 1 core, 2 GiB, 25 GiB SSD, one IPv4: 0.5 CU × 100 000 + 0.125 SU × 50 000 + 40 000.
        let p = PricingPolicy::default();
        let lines = price(&p, &node(vm(1, 2, 25), 1), 3600);
        assert_eq!(
            lines,
            Lines {
                cu: 50_000,
                su: 6_250,
                ipv4: 40_000,
                ..Lines::default()
            }
        );
        assert_eq!(lines.subtotal(), 96_250);
        assert_eq!(cost_per_hour(&p, &node(vm(1, 2, 25), 1)), 96_250);
        // A minute is a sixtieth, rounded up per line: 834 + 105 + 667.
        assert_eq!(price(&p, &node(vm(1, 2, 25), 1), 60).subtotal(), 1_606);
    }

    #[test]
    fn rent_name_and_traffic_examples() {
        let p = PricingPolicy::default();
        // A node of 8 cores, 32 GiB, 1 TiB SSD rented for an hour: min(8, 8, 16) = 8 CU and
        // 5.12 SU, at half price.
        let n = vm(8, 32, 1024);
        let lines = price(&p, &Usage::Rent { node_capacity: n }, 3600);
        assert_eq!((lines.cu, lines.su), (800_000, 256_000));
        assert_eq!(lines.subtotal(), 528_000);
        // A VM on that rented node pays for its address and its traffic only.
        let on_rented = Usage::Node {
            capacity: vm(4, 16, 100),
            public_ips: 1,
            public_bytes: 2_500_000_000,
            on_rented_node: true,
        };
        let lines = price(&p, &on_rented, 3600);
        assert_eq!((lines.cu, lines.su, lines.ipv4), (0, 0, 40_000));
        assert_eq!(lines.nu, 37_500); // 2.5 GB × 15 000
        assert_eq!(price(&p, &Usage::Name, 3600).subtotal(), 2_500);
    }

    #[test]
    fn discount_levels_follow_months_of_balance() {
        let p = PricingPolicy::default();
        let hour = 3600;
        // A bill of 100 an hour is 72 000 a month.
        assert_eq!(discount(&p, 100, 0, hour), (100, 100));
        assert_eq!(discount(&p, 100, 3 * 72_000 - 1, hour), (100, 100));
        assert_eq!(discount(&p, 100, 3 * 72_000, hour), (80, 80));
        assert_eq!(discount(&p, 100, 6 * 72_000, hour), (70, 70));
        assert_eq!(discount(&p, 100, 12 * 72_000, hour), (60, 60));
        assert_eq!(discount(&p, 100, 36 * 72_000, hour), (40, 40));
        assert_eq!(discount(&p, 0, 1_000_000, hour), (100, 0));
    }

    #[test]
    fn policies_with_absurd_values_are_refused() {
        assert!(PricingPolicy::default().validate().is_ok());
        let p = PricingPolicy {
            cu: MAX_PRICE + 1,
            ..PricingPolicy::default()
        };
        assert_eq!(p.validate().unwrap_err().field, "cu");
        let p = PricingPolicy {
            farmer_percent: 101,
            ..PricingPolicy::default()
        };
        assert_eq!(p.validate().unwrap_err().field, "farmer_percent");
        let mut p = PricingPolicy::default();
        p.discounts.swap(0, 1);
        assert_eq!(p.validate().unwrap_err().field, "discounts");
    }

    #[test]
    fn amounts_print_and_parse() {
        assert_eq!(format_amount(12_500_000), "1.2500000");
        assert_eq!(parse_amount("1.25"), Ok(12_500_000));
        assert_eq!(parse_amount("3"), Ok(30_000_000));
        assert_eq!(parse_amount(".5"), Ok(5_000_000));
        for bad in ["", ".", "-1", "1.23456789", "1e3", "x", "99999999999999"] {
            assert!(parse_amount(bad).is_err(), "{bad}");
        }
    }

    fn capacity() -> impl Strategy<Value = Capacity> {
        (0..=MAX_CRU, 0..=MAX_MRU, 0..=MAX_DISK, 0..=MAX_DISK)
            .prop_map(|(cru, mru, sru, hru)| Capacity { cru, mru, sru, hru })
    }

    fn policy() -> impl Strategy<Value = PricingPolicy> {
        (
            0..=1_000_000u64,
            0..=1_000_000u64,
            0..=1_000_000u64,
            0..=1_000_000u64,
            0..=100u8,
            0..=100u8,
        )
            .prop_map(|(cu, su, nu, ipv4, dedicated, farmer)| PricingPolicy {
                cu,
                su,
                nu,
                ipv4,
                unique_name: cu / 4,
                dedicated_discount_percent: dedicated,
                farmer_percent: farmer,
                ..PricingPolicy::default()
            })
    }

    proptest! {
        #[test]
        fn cu_matches_the_reference_on_whole_gib(cru in 0..=4096u64, mru in 0..=65_536u64) {
            let scaled = cu_scaled(&vm(cru, mru, 0));
            prop_assert_eq!(scaled as f64 / CU_SCALE as f64, cu_reference(cru, mru));
        }

        #[test]
        fn cu_and_su_are_monotonic(a in capacity(), b in capacity()) {
            let max = Capacity {
                cru: a.cru.max(b.cru),
                mru: a.mru.max(b.mru),
                sru: a.sru.max(b.sru),
                hru: a.hru.max(b.hru),
            };
            prop_assert!(cu_scaled(&max) >= cu_scaled(&a));
            prop_assert!(su_scaled(&max) >= su_scaled(&a));
        }

        #[test]
        fn an_hour_is_the_hourly_price_of_each_unit(p in policy(), c in capacity(), ips in 0..64u32) {
            let lines = price(&p, &node(c, ips), SECS_PER_HOUR);
            prop_assert_eq!(lines.cu as u128, (p.cu as u128 * cu_scaled(&c)).div_ceil(CU_SCALE));
            prop_assert_eq!(lines.su as u128, (p.su as u128 * su_scaled(&c)).div_ceil(SU_SCALE));
            prop_assert_eq!(lines.ipv4, p.ipv4 * ips as u64);
        }

        #[test]
        fn splitting_time_never_costs_less_and_rounds_at_most_a_unit_per_line(
            p in policy(), c in capacity(), ips in 0..64u32, a in 0..=400_000u64, b in 0..=400_000u64,
        ) {
            let u = node(c, ips);
            let whole = price(&p, &u, a + b).subtotal();
            let parts = price(&p, &u, a).subtotal() + price(&p, &u, b).subtotal();
            prop_assert!(parts >= whole);
            prop_assert!(parts <= whole + 3);
        }

        #[test]
        fn on_a_rented_node_only_addresses_and_traffic_are_paid(
            p in policy(), c in capacity(), ips in 0..64u32, bytes in 0..=u64::MAX, secs in 0..=MAX_BILL_SECS,
        ) {
            let rented = Usage::Node { capacity: c, public_ips: ips, public_bytes: bytes, on_rented_node: true };
            let zero = Usage::Node { capacity: Capacity::ZERO, public_ips: ips, public_bytes: bytes, on_rented_node: false };
            prop_assert_eq!(price(&p, &rented, secs), price(&p, &zero, secs));
        }

        #[test]
        fn rent_is_the_node_at_the_dedicated_discount(p in policy(), c in capacity(), secs in 0..=MAX_BILL_SECS) {
            let full = price(&p, &node(c, 0), secs);
            let rent = price(&p, &Usage::Rent { node_capacity: c }, secs);
            let base = full.cu as u128 + full.su as u128;
            prop_assert_eq!((rent.cu, rent.su), (full.cu, full.su));
            prop_assert_eq!(rent.subtotal() as u128, (base * (100 - p.dedicated_discount_percent as u128)).div_ceil(100));
        }

        #[test]
        fn more_balance_never_costs_more(p in policy(), subtotal in 0..=u32::MAX as u64, a in 0..=u64::MAX / 2, extra in 0..=u64::MAX / 2, period in 1..=86_400u64) {
            let (pay_a, due_a) = discount(&p, subtotal, a, period);
            let (pay_b, due_b) = discount(&p, subtotal, a + extra, period);
            prop_assert!(pay_b <= pay_a && due_b <= due_a && due_a <= subtotal);
            prop_assert_eq!(due_a as u128, (subtotal as u128 * pay_a as u128).div_ceil(100));
        }

        #[test]
        fn shares_add_up_to_the_bill(p in policy(), amount in 0..=u64::MAX) {
            let (farmer, grid) = split(&p, amount);
            prop_assert_eq!(farmer as u128 + grid as u128, amount as u128);
            prop_assert_eq!(farmer as u128, amount as u128 * p.farmer_percent as u128 / 100);
        }

        #[test]
        fn amounts_round_trip(amount in 0..=MAX_DEPOSIT) {
            prop_assert_eq!(parse_amount(&format_amount(amount)), Ok(amount));
        }
    }
}
