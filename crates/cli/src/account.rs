//! `zos account …`, `zos contract bill`, `zos farm earnings` and the cost `zos deploy` shows:
//! what a twin holds and owes, what each period of a contract cost and why, what a farm
//! earned (docs/billing.md). Amounts are printed and read in tokens (seven decimals).

use anyhow::Context;
use clap::Subcommand;
use zos_client::GridClient;
use zos_types::billing::{
    self, AccountEvent, AccountEventKind, Amount, Bill, Deposit, PricingPolicy, Usage,
    format_amount, parse_amount,
};
use zos_types::contract::{ContractFilter, ContractKind, ContractState};
use zos_types::deployment::{ContractId, Deployment};
use zos_types::{Capacity, NodeId, TwinId};

use crate::exit::{Failure, Kind};
use crate::global::{Global, signed_client};
use crate::output::{self, Table, outln};

#[derive(Debug, Subcommand)]
pub enum AccountCmd {
    /// What your twin holds, what it owes, and its contracts in grace for lack of money.
    Balance {
        /// Another twin's account (the grid's admin reads any).
        #[arg(long)]
        twin: Option<TwinId>,
    },
    /// Put money on an account: the grid's admin for anyone, any twin for itself on a devnet
    /// with a faucet. A deposit pays debts first and resumes the contracts they paused.
    Deposit {
        /// Tokens, like 12 or 0.5 (at most 7 decimals).
        amount: String,
        /// The twin to credit (default: yours).
        #[arg(long)]
        twin: Option<TwinId>,
        /// The payment's own id, for a payment bridge: a reference is credited once.
        #[arg(long)]
        reference: Option<String>,
        #[arg(long, default_value = "")]
        memo: String,
    },
    /// What happened to the account, newest first: deposits, bills paid and unpaid, grace
    /// started and ended, contracts cancelled.
    History {
        #[arg(long)]
        twin: Option<TwinId>,
        /// How many events.
        #[arg(long, default_value_t = 50)]
        limit: u32,
    },
}

#[derive(Debug, Subcommand)]
pub enum ContractCmd {
    /// The bills of a contract, newest first: each line with the formula's inputs.
    Bill {
        id: ContractId,
        /// How many bills.
        #[arg(long, default_value_t = 24)]
        limit: u32,
    },
}

fn tokens(a: Amount) -> String {
    format_amount(a)
}

fn kind_text(k: AccountEventKind) -> &'static str {
    match k {
        AccountEventKind::Deposit => "deposit",
        AccountEventKind::BillPaid => "bill paid",
        AccountEventKind::BillUnpaid => "bill unpaid (debt)",
        AccountEventKind::GraceStarted => "grace started: workloads paused",
        AccountEventKind::GraceEnded => "grace ended: workloads resumed",
        AccountEventKind::Cancelled => "cancelled: grace ran out",
    }
}

pub async fn account(cmd: AccountCmd, g: &Global) -> anyhow::Result<()> {
    let c = signed_client(g).await?;
    let me = c.twin_id().context("no twin")?;
    match cmd {
        AccountCmd::Balance { twin } => {
            let twin = twin.unwrap_or(me);
            let a = c
                .account(twin)
                .await
                .with_context(|| format!("reading the account of twin {twin}"))?;
            if g.structured() {
                return output::json(&a);
            }
            let grace = if a.in_grace.is_empty() {
                "none".to_string()
            } else {
                let ids: Vec<String> = a.in_grace.iter().map(|c| c.to_string()).collect();
                format!(
                    "{} (paused until a deposit pays the debt: `zos account deposit`)",
                    ids.join(", ")
                )
            };
            output::fields(&[
                ("twin", a.twin_id.to_string()),
                ("balance", tokens(a.balance)),
                ("debt", tokens(a.debt)),
                ("in grace", grace),
            ])?;
            Ok(())
        }
        AccountCmd::Deposit {
            amount,
            twin,
            reference,
            memo,
        } => {
            let amount = parse_amount(&amount).map_err(|e| Failure::new(Kind::Usage, e))?;
            let twin = twin.unwrap_or(me);
            let a = c
                .deposit(
                    twin,
                    &Deposit {
                        amount,
                        reference,
                        memo,
                    },
                )
                .await
                .with_context(|| format!("depositing to twin {twin}"))?;
            if g.structured() {
                return output::json(&a);
            }
            outln!(
                "deposited {} to twin {twin}: balance {}, debt {}",
                tokens(amount),
                tokens(a.balance),
                tokens(a.debt)
            )?;
            if !a.in_grace.is_empty() {
                outln!(
                    "still in grace (the debt is not paid yet): contracts {:?}",
                    a.in_grace
                )?;
            }
            Ok(())
        }
        AccountCmd::History { twin, limit } => {
            let twin = twin.unwrap_or(me);
            let h = c
                .account_history(twin, limit)
                .await
                .with_context(|| format!("reading the history of twin {twin}"))?;
            if g.structured() {
                return output::json(&h);
            }
            print_history(&h)
        }
    }
}

fn print_history(h: &[AccountEvent]) -> anyhow::Result<()> {
    let mut t = Table::new(&["WHEN", "EVENT", "CONTRACT", "AMOUNT", "BALANCE", "MEMO"]);
    for e in h {
        t.row(vec![
            output::when(e.at),
            kind_text(e.kind).into(),
            e.contract_id.map(|c| c.to_string()).unwrap_or_default(),
            if e.amount > 0 {
                tokens(e.amount)
            } else {
                String::new()
            },
            tokens(e.balance),
            e.memo.clone(),
        ]);
    }
    t.print()?;
    Ok(())
}

/// The formula's inputs of a bill, in words.
fn inputs(b: &Bill) -> String {
    let gib = |bytes: u64| bytes as f64 / zos_types::capacity::GIB as f64;
    let cap = |c: &Capacity| {
        format!(
            "cru {} mru {:.2} GiB sru {:.2} GiB hru {:.2} GiB = {:.4} CU, {:.4} SU",
            c.cru,
            gib(c.mru),
            gib(c.sru),
            gib(c.hru),
            billing::cu(c),
            billing::su(c)
        )
    };
    match &b.usage {
        Usage::Node {
            capacity,
            public_ips,
            public_bytes,
            on_rented_node,
        } => format!(
            "{}; {public_ips} IPv4; {:.3} GB public traffic{}",
            cap(capacity),
            *public_bytes as f64 / billing::BYTES_PER_NU as f64,
            if *on_rented_node {
                "; on a rented node: the rent pays CU and SU"
            } else {
                ""
            }
        ),
        Usage::Rent { node_capacity } => format!("whole node: {}", cap(node_capacity)),
        Usage::Name => "a unique name".into(),
    }
}

pub async fn contract(cmd: ContractCmd, g: &Global) -> anyhow::Result<()> {
    let c = signed_client(g).await?;
    match cmd {
        ContractCmd::Bill { id, limit } => {
            let bills = c
                .contract_bills(id, limit)
                .await
                .with_context(|| format!("reading the bills of contract {id}"))?;
            if g.structured() {
                return output::json(&bills);
            }
            if bills.is_empty() {
                outln!("contract {id} has no bill yet: it is billed after each period ends")?;
                return Ok(());
            }
            for (i, b) in bills.iter().enumerate() {
                if i > 0 {
                    outln!()?;
                }
                let l = &b.lines;
                output::fields(&[
                    ("bill", b.id.to_string()),
                    (
                        "period",
                        format!("{} ({} s, policy v{})", b.period, b.secs, b.policy_version),
                    ),
                    ("inputs", inputs(b)),
                    (
                        "lines",
                        format!(
                            "CU {} + SU {} + NU {} + IPv4 {} + name {} - dedicated {} = {}",
                            tokens(l.cu),
                            tokens(l.su),
                            tokens(l.nu),
                            tokens(l.ipv4),
                            tokens(l.unique_name),
                            tokens(l.dedicated_discount),
                            tokens(l.subtotal())
                        ),
                    ),
                    ("paid percent", format!("{}%", b.pay_percent)),
                    (
                        "amount",
                        format!(
                            "{} ({})",
                            tokens(b.amount),
                            if b.paid { "paid" } else { "unpaid: a debt" }
                        ),
                    ),
                ])?;
            }
            Ok(())
        }
    }
}

/// `zos farm earnings FARM`.
pub async fn farm_earnings(c: &GridClient, farm: u32, g: &Global) -> anyhow::Result<()> {
    let e = c
        .farm_earnings(farm)
        .await
        .with_context(|| format!("reading the earnings of farm {farm}"))?;
    if g.structured() {
        return output::json(&e);
    }
    output::fields(&[
        ("farm", e.farm_id.to_string()),
        ("earned", tokens(e.total)),
        ("bills", e.bills.to_string()),
    ])?;
    Ok(())
}

/// What deployment `d` on `node` costs per hour at the grid's prices (no traffic, no balance
/// discount), and the policy that says so.
pub async fn deployment_cost(
    c: &GridClient,
    node: NodeId,
    d: &Deployment,
) -> anyhow::Result<(Amount, Usage, PricingPolicy)> {
    let info = c
        .billing_info()
        .await
        .context("reading the grid's prices")?;
    let me = c.twin_id();
    let rented = c
        .list_contracts(&ContractFilter {
            node_id: Some(node),
            ..ContractFilter::default()
        })
        .await
        .context("reading the node's contracts")?
        .iter()
        .any(|k| {
            matches!(k.kind, ContractKind::Rent { .. })
                && k.state != ContractState::Deleted
                && Some(k.twin_id) == me
        });
    let usage = Usage::Node {
        capacity: d
            .capacity()
            .map_err(|e| Failure::new(Kind::Refused, e.to_string()))?,
        public_ips: d
            .public_ipv4_count()
            .map_err(|e| Failure::new(Kind::Refused, e.to_string()))?,
        public_bytes: 0,
        on_rented_node: rented,
    };
    let cost = billing::cost_per_hour(&info.policy.policy, &usage);
    Ok((cost, usage, info.policy.policy))
}

/// Says what `d` costs per hour (on stderr, so `--json` output stays one document), and
/// refuses it above `max_cost` (tokens) before anything is signed.
pub async fn check_cost(
    c: &GridClient,
    node: NodeId,
    d: &Deployment,
    max_cost: Option<&str>,
) -> anyhow::Result<()> {
    let max = max_cost
        .map(parse_amount)
        .transpose()
        .map_err(|e| Failure::new(Kind::Usage, format!("--max-cost: {e}")))?;
    let (cost, usage, policy) = deployment_cost(c, node, d).await?;
    let Usage::Node {
        capacity,
        public_ips,
        on_rented_node,
        ..
    } = usage
    else {
        unreachable!("a deployment is a node contract")
    };
    eprintln!(
        "cost: {} tokens per hour ({:.4} CU, {:.4} SU, {public_ips} IPv4{}), plus {} per GB of public traffic",
        tokens(cost),
        billing::cu(&capacity),
        billing::su(&capacity),
        if on_rented_node {
            "; on your rented node the rent pays CU and SU"
        } else {
            ""
        },
        tokens(policy.nu)
    );
    if let Some(max) = max
        && cost > max
    {
        return Err(Failure::new(
            Kind::Refused,
            format!(
                "this deployment costs {} tokens per hour, above --max-cost {}: nothing was signed; \
                 make it smaller or raise --max-cost",
                tokens(cost),
                tokens(max)
            ),
        )
        .into());
    }
    Ok(())
}
