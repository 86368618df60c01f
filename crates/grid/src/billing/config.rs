//! How the grid bills: periods, delay, grace, the faucet, batches and the tick (a leaf module,
//! so the application state can hold it without the billing routes).

use std::time::Duration;

use zos_types::billing::Amount;

use crate::store::BillingRules;

/// How the grid bills.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BillingConfig {
    /// Whether the grid runs the billing by itself (at start and every `tick`). Without it,
    /// prices, accounts and deposits still answer, and nothing is billed.
    pub enabled: bool,
    /// Length of a billing period (TFChain bills every hour).
    pub period: Duration,
    /// How long after a period ends it is billed: nodes send their reports meanwhile.
    pub delay: Duration,
    /// How long a contract stays in grace for lack of money before it is cancelled (TFChain:
    /// 14 days).
    pub grace: Duration,
    /// On a devnet, the most a twin may deposit to itself at once; `None` on a real grid,
    /// where only the admin twin (or the payment bridge acting as it) deposits.
    pub faucet_max: Option<Amount>,
    /// Contracts billed per transaction.
    pub batch: u32,
    /// How often the grid runs the billing (wall time); `None`: only at start and when
    /// [`crate::RunningGrid::bill_now`] asks.
    pub tick: Option<Duration>,
}

impl Default for BillingConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            period: Duration::from_secs(3600),
            delay: Duration::from_secs(300),
            grace: Duration::from_secs(14 * 24 * 3600),
            faucet_max: None,
            batch: 500,
            tick: Some(Duration::from_secs(30)),
        }
    }
}

impl BillingConfig {
    pub fn rules(&self) -> BillingRules {
        BillingRules {
            period_secs: self.period.as_secs().max(1),
            delay_secs: self.delay.as_secs(),
            grace_secs: self.grace.as_secs(),
        }
    }
}
