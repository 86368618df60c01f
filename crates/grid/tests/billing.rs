//! Billing on an in-process grid with a `ManualClock`: what an hour costs, who gets the money,
//! grace for lack of money and its end, and the refusals (see docs/billing.md).

mod common;

use std::time::Duration;

use common::{TestGrid, auth_header, error_message, raw};
use zos_client::{ClientError, GridClient};
use zos_grid::billing::BillingConfig;
use zos_grid::clock::Clock;
use zos_types::auth::Signer;
use zos_types::billing::{
    self, AccountEventKind, ConsumptionReport, Deposit, Lines, PricingPolicy, Usage,
};
use zos_types::capacity::GIB;
use zos_types::contract::{ContractKind, ContractState, CreateNodeContract, NodeEvent};
use zos_types::deployment::DeploymentHash;
use zos_types::registry::{AddFarmIp, Farm, Node};
use zos_types::{Capacity, TwinId};

const HOUR: i64 = 3600;

/// A grid billing every hour with no delay, two hours of grace, twin 1 as admin, and its
/// clock at the start of an hour.
async fn grid(faucet: Option<u64>) -> TestGrid {
    let g = TestGrid::start_signing_with_clock(move |c| {
        c.admin = Some(1);
        c.billing = BillingConfig {
            enabled: true,
            period: Duration::from_secs(HOUR as u64),
            delay: Duration::ZERO,
            grace: Duration::from_secs(2 * HOUR as u64),
            faucet_max: faucet,
            batch: 7,
            tick: None,
        };
    })
    .await;
    let now = g.clock.now();
    g.clock.set((now / HOUR + 1) * HOUR);
    g
}

struct World {
    admin: GridClient,
    farm: Farm,
    farmer: GridClient,
    node: Node,
    node_client: GridClient,
    user: GridClient,
    user_id: TwinId,
}

async fn world(g: &TestGrid, ips: u8) -> World {
    let (admin, a) = g.twin().await;
    assert_eq!(a.id, 1, "the first twin is the admin");
    let (farmer, farm) = g.farm("billed-farm").await;
    for i in 0..ips {
        farmer
            .add_farm_ip(
                farm.id,
                &AddFarmIp {
                    ip: format!("185.69.166.{}/24", 10 + i).parse().unwrap(),
                    gateway: "185.69.166.1".parse().unwrap(),
                },
            )
            .await
            .unwrap();
    }
    let (node_client, node) = g.node(farm.id).await;
    let (user, u) = g.twin().await;
    World {
        admin,
        farm,
        farmer,
        node,
        node_client,
        user,
        user_id: u.id,
    }
}

fn deposit(amount: u64) -> Deposit {
    Deposit {
        amount,
        reference: None,
        memo: String::new(),
    }
}

fn vm_with_ip(node: u32) -> CreateNodeContract {
    CreateNodeContract {
        node_id: node,
        deployment_hash: DeploymentHash([7; 32]),
        public_ips: 1,
    }
}

fn small_vm() -> Capacity {
    Capacity {
        cru: 1,
        mru: 2 * GIB,
        sru: 25 * GIB,
        hru: 0,
    }
}

fn status<T: std::fmt::Debug>(r: Result<T, ClientError>) -> u16 {
    match r {
        Ok(v) => panic!("expected a refusal, got {v:?}"),
        Err(e) => e
            .status()
            .unwrap_or_else(|| panic!("not an API error: {e:?}")),
    }
}

/// Runs one query on the grid's database file, answering one integer.
fn int(g: &TestGrid, sql: &str) -> i64 {
    let conn = rusqlite::Connection::open(g.db_path()).unwrap();
    conn.query_row(sql, [], |r| r.get(0)).unwrap()
}

/// Every ledger row, as text, in order.
fn ledger(g: &TestGrid) -> Vec<String> {
    let conn = rusqlite::Connection::open(g.db_path()).unwrap();
    let mut s = conn
        .prepare("SELECT id, at, debit, credit, amount, kind, bill_id FROM ledger ORDER BY id")
        .unwrap();
    s.query_map([], |r| {
        Ok(format!(
            "{} {} {} {} {} {} {:?}",
            r.get::<_, i64>(0)?,
            r.get::<_, i64>(1)?,
            r.get::<_, String>(2)?,
            r.get::<_, String>(3)?,
            r.get::<_, i64>(4)?,
            r.get::<_, String>(5)?,
            r.get::<_, Option<i64>>(6)?
        ))
    })
    .unwrap()
    .collect::<Result<_, _>>()
    .unwrap()
}

fn node_events(events: &[zos_types::contract::NodeEventRecord]) -> Vec<NodeEvent> {
    events.iter().map(|e| e.event.clone()).collect()
}

#[tokio::test]
async fn one_hour_of_a_vm_with_a_public_ip_costs_exactly_the_formula() {
    let g = grid(None).await;
    let w = world(&g, 1).await;
    // Ten tokens: less than three months of this VM, so no discount.
    w.admin
        .deposit(w.user_id, &deposit(10 * billing::UNITS_PER_TOKEN))
        .await
        .unwrap();
    let c = w
        .user
        .create_node_contract(&vm_with_ip(w.node.id))
        .await
        .unwrap();
    let period = g.clock.now() / HOUR;
    let traffic = 2_500_000_000;
    let report = ConsumptionReport {
        contract_id: c.id,
        period,
        capacity: small_vm(),
        public_bytes: traffic,
    };
    let r = w
        .node_client
        .report_consumption(w.node.id, &[report])
        .await
        .unwrap();
    assert_eq!(r.recorded, 1);

    g.clock.advance(HOUR);
    let run = g.bill_now().await;
    assert_eq!((run.bills, run.paid, run.graced), (1, 1, 0), "{run:?}");

    let bills = w.user.contract_bills(c.id, 10).await.unwrap();
    assert_eq!(bills.len(), 1);
    let b = &bills[0];
    let usage = Usage::Node {
        capacity: small_vm(),
        public_ips: 1,
        public_bytes: traffic,
        on_rented_node: false,
    };
    assert_eq!(b.usage, usage);
    assert_eq!((b.period, b.secs, b.policy_version), (period, 3600, 0));
    // 0.5 CU × 100 000 + 0.125 SU × 50 000 + 2.5 GB × 15 000 + one address × 40 000.
    let want = Lines {
        cu: 50_000,
        su: 6_250,
        nu: 37_500,
        ipv4: 40_000,
        ..Lines::default()
    };
    assert_eq!(b.lines, want);
    assert_eq!(
        b.lines,
        billing::price(&PricingPolicy::default(), &usage, 3600)
    );
    assert_eq!((b.pay_percent, b.amount, b.paid), (100, 133_750, true));
    assert_eq!(b.farm_id, Some(w.farm.id));

    // The twin paid it; the farm and the grid got their halves; the books balance.
    let account = w.user.account(w.user_id).await.unwrap();
    assert_eq!(account.balance, 10 * billing::UNITS_PER_TOKEN - 133_750);
    assert_eq!(account.debt, 0);
    let earned = w.farmer.farm_earnings(w.farm.id).await.unwrap();
    let grid_share = int(&g, "SELECT amount FROM balances WHERE account = 'grid'");
    assert_eq!(earned.total, 66_875);
    assert_eq!(earned.total as i64 + grid_share, 133_750);
    assert_eq!(int(&g, "SELECT SUM(amount) FROM balances"), 0);

    // Billing again changes nothing: the period has its bill.
    let before = ledger(&g);
    assert_eq!(g.bill_now().await.bills, 0);
    assert_eq!(ledger(&g), before);

    // Entries cannot be changed or removed, not even by SQL on the file.
    for (sql, why) in [
        (
            "UPDATE ledger SET amount = 1",
            "ledger entries are append-only",
        ),
        ("DELETE FROM ledger", "ledger entries are append-only"),
        ("UPDATE bills SET amount = 0", "bills are append-only"),
        ("DELETE FROM bills", "bills are append-only"),
        ("DELETE FROM bill_payments", "bill payments are append-only"),
        (
            "UPDATE account_events SET amount = 0",
            "account events are append-only",
        ),
    ] {
        let conn = rusqlite::Connection::open(g.db_path()).unwrap();
        let e = conn.execute_batch(sql).unwrap_err();
        assert!(e.to_string().contains(why), "{sql}: {e}");
    }
    // Later hours only add entries after the ones there.
    g.clock.advance(HOUR);
    w.admin.deposit(w.user_id, &deposit(1000)).await.unwrap();
    g.bill_now().await;
    let after = ledger(&g);
    assert!(after.len() > before.len());
    assert_eq!(after[..before.len()], before[..]);

    // The account's history says what happened, newest first.
    let h = w.user.account_history(w.user_id, 10).await.unwrap();
    let kinds: Vec<_> = h.iter().map(|e| e.kind).collect();
    assert_eq!(
        kinds,
        [
            AccountEventKind::BillPaid,
            AccountEventKind::Deposit,
            AccountEventKind::BillPaid,
            AccountEventKind::Deposit
        ]
    );
    assert_eq!(
        h[0].balance,
        w.user.account(w.user_id).await.unwrap().balance
    );
}

#[tokio::test]
async fn no_money_pauses_a_deposit_resumes_and_grace_running_out_cancels() {
    let g = grid(None).await;
    let w = world(&g, 1).await;
    // Enough for one hour of one address (40 000) and a quarter.
    w.admin.deposit(w.user_id, &deposit(50_000)).await.unwrap();
    let c = w
        .user
        .create_node_contract(&vm_with_ip(w.node.id))
        .await
        .unwrap();
    let seen = w.node_client.node_events(w.node.id, 0).await.unwrap().len() as u64;

    g.clock.advance(HOUR);
    assert_eq!(g.bill_now().await.paid, 1);
    g.clock.advance(HOUR);
    let run = g.bill_now().await;
    assert_eq!((run.bills, run.paid, run.graced), (1, 0, 1), "{run:?}");
    let got = w.user.get_contract(c.id).await.unwrap();
    assert_eq!(got.state, ContractState::GracePeriod);
    let account = w.user.account(w.user_id).await.unwrap();
    assert_eq!((account.balance, account.debt), (10_000, 40_000));
    assert_eq!(account.in_grace, [c.id]);
    let events = w.node_client.node_events(w.node.id, seen).await.unwrap();
    assert_eq!(
        node_events(&events),
        [NodeEvent::GracePeriodStarted { contract_id: c.id }]
    );

    // A deposit that covers the debt pays it and resumes the contract.
    let a = w.admin.deposit(w.user_id, &deposit(100_000)).await.unwrap();
    assert_eq!((a.balance, a.debt), (70_000, 0));
    assert!(a.in_grace.is_empty());
    assert_eq!(
        w.user.get_contract(c.id).await.unwrap().state,
        ContractState::Created
    );
    let events = w
        .node_client
        .node_events(w.node.id, seen + 1)
        .await
        .unwrap();
    assert_eq!(
        node_events(&events),
        [NodeEvent::GracePeriodEnded { contract_id: c.id }]
    );

    // One more hour is paid, the next is not, and two hours later grace runs out.
    g.clock.advance(HOUR);
    assert_eq!(g.bill_now().await.paid, 1);
    g.clock.advance(HOUR);
    assert_eq!(g.bill_now().await.graced, 1);
    g.clock.advance(HOUR);
    assert_eq!(g.bill_now().await.cancelled, 0, "an hour of grace is left");
    g.clock.advance(HOUR);
    let run = g.bill_now().await;
    assert_eq!(run.cancelled, 1, "{run:?}");
    let gone = w.user.get_contract(c.id).await.unwrap();
    assert_eq!(gone.state, ContractState::Deleted);
    let ContractKind::Node {
        public_ips_list, ..
    } = &gone.kind
    else {
        panic!("{gone:?}")
    };
    assert!(
        public_ips_list.is_empty(),
        "its address went back to the farm"
    );
    let events = w
        .node_client
        .node_events(w.node.id, seen + 2)
        .await
        .unwrap();
    assert_eq!(
        node_events(&events),
        [
            NodeEvent::GracePeriodStarted { contract_id: c.id },
            NodeEvent::ContractCancelled { contract_id: c.id }
        ]
    );
    // The hours in grace were billed and are owed; a cancelled contract gets no more bills.
    let account = w.user.account(w.user_id).await.unwrap();
    assert_eq!((account.balance, account.debt), (30_000, 3 * 40_000));
    let bills_before = w.user.contract_bills(c.id, 100).await.unwrap().len();
    g.clock.advance(3 * HOUR);
    g.bill_now().await;
    let bills = w.user.contract_bills(c.id, 100).await.unwrap();
    assert_eq!(bills.len(), bills_before);
    assert_eq!(
        bills.len(),
        6,
        "hours 0 to 5: the contract was cancelled as hour 5 ended"
    );
    let kinds: Vec<_> = w
        .user
        .account_history(w.user_id, 3)
        .await
        .unwrap()
        .iter()
        .map(|e| e.kind)
        .collect();
    assert_eq!(
        kinds,
        [
            AccountEventKind::Cancelled,
            AccountEventKind::BillUnpaid,
            AccountEventKind::BillUnpaid
        ]
    );
}

#[tokio::test]
async fn a_node_contract_on_a_rented_node_pays_its_addresses_and_the_rent_the_node() {
    let g = grid(None).await;
    let w = world(&g, 1).await;
    let policy = zos_types::registry::FarmPolicy {
        rentable: true,
        ..Default::default()
    };
    w.farmer.set_farm_policy(w.farm.id, &policy).await.unwrap();
    w.admin
        .deposit(w.user_id, &deposit(billing::UNITS_PER_TOKEN))
        .await
        .unwrap();
    let rent = w.user.create_rent_contract(w.node.id).await.unwrap();
    let c = w
        .user
        .create_node_contract(&vm_with_ip(w.node.id))
        .await
        .unwrap();
    let period = g.clock.now() / HOUR;
    w.node_client
        .report_consumption(
            w.node.id,
            &[ConsumptionReport {
                contract_id: c.id,
                period,
                capacity: small_vm(),
                public_bytes: 0,
            }],
        )
        .await
        .unwrap();
    g.clock.advance(HOUR);
    g.bill_now().await;
    let vm = &w.user.contract_bills(c.id, 1).await.unwrap()[0];
    assert_eq!(
        vm.lines,
        Lines {
            ipv4: 40_000,
            ..Lines::default()
        }
    );
    let r = &w.user.contract_bills(rent.id, 1).await.unwrap()[0];
    let whole = billing::price(
        &PricingPolicy::default(),
        &Usage::Rent {
            node_capacity: w.node.capacity,
        },
        3600,
    );
    assert_eq!(r.lines, whole);
    assert_eq!(r.amount, (whole.cu + whole.su).div_ceil(2));
}

#[tokio::test]
async fn the_admin_sets_versioned_prices_and_bills_name_their_version() {
    let g = grid(None).await;
    let w = world(&g, 0).await;
    let before = g.dump();
    assert_eq!(
        status(w.user.set_pricing_policy(&PricingPolicy::default()).await),
        403
    );
    let absurd = PricingPolicy {
        farmer_percent: 150,
        ..PricingPolicy::default()
    };
    assert_eq!(status(w.admin.set_pricing_policy(&absurd).await), 400);
    assert_eq!(g.dump(), before);
    let cheaper = PricingPolicy {
        unique_name: 1_000,
        ..PricingPolicy::default()
    };
    let v = w.admin.set_pricing_policy(&cheaper).await.unwrap();
    assert_eq!((v.version, v.set_by), (1, Some(1)));
    let info = g.client().billing_info().await.unwrap();
    assert_eq!(info.policy, v);
    assert_eq!(
        (info.period_secs, info.grace_secs, info.faucet_max),
        (3600, 7200, None)
    );
    w.admin.deposit(w.user_id, &deposit(100_000)).await.unwrap();
    let n = w.user.create_name_contract("priced").await.unwrap();
    g.clock.advance(HOUR / 2);
    let later = PricingPolicy {
        unique_name: 2_000,
        ..cheaper
    };
    assert_eq!(w.admin.set_pricing_policy(&later).await.unwrap().version, 2);
    for sql in [
        "DELETE FROM pricing_policies",
        "UPDATE pricing_policies SET set_at = 0",
    ] {
        let conn = rusqlite::Connection::open(g.db_path()).unwrap();
        let e = conn.execute_batch(sql).unwrap_err();
        assert!(e.to_string().contains("append-only"), "{sql}: {e}");
    }
    g.clock.advance(HOUR / 2);
    g.bill_now().await;
    let b = &w.user.contract_bills(n.id, 1).await.unwrap()[0];
    assert_eq!((b.policy_version, b.amount), (2, 2_000));
    assert_eq!(b.farm_id, None, "a name contract pays the grid alone");
}

#[tokio::test]
async fn deposits_come_from_the_admin_or_a_devnet_faucet_and_references_count_once() {
    let g = grid(None).await;
    let w = world(&g, 0).await;
    let before = g.dump();
    let e = w.user.deposit(w.user_id, &deposit(1000)).await.unwrap_err();
    assert_eq!(e.status(), Some(403));
    assert!(e.to_string().contains("payment bridge"), "{e}");
    assert_eq!(status(w.admin.deposit(w.user_id, &deposit(0)).await), 400);
    assert_eq!(status(w.admin.deposit(9999, &deposit(5)).await), 404);
    assert_eq!(status(w.user.account(1).await), 403);
    assert_eq!(g.dump(), before);

    // A bridge retrying a payment credits it once.
    let paid = Deposit {
        amount: 5_000,
        reference: Some("tx-0001".into()),
        memo: "bridge".into(),
    };
    assert_eq!(
        w.admin.deposit(w.user_id, &paid).await.unwrap().balance,
        5_000
    );
    assert_eq!(
        w.admin.deposit(w.user_id, &paid).await.unwrap().balance,
        5_000
    );
    let (_, other) = g.twin().await;
    assert_eq!(status(w.admin.deposit(other.id, &paid).await), 409);

    let g = grid(Some(1_000_000)).await;
    let w = world(&g, 0).await;
    let (_, other) = g.twin().await;
    assert_eq!(
        w.user
            .deposit(w.user_id, &deposit(1_000_000))
            .await
            .unwrap()
            .balance,
        1_000_000
    );
    assert_eq!(
        status(w.user.deposit(w.user_id, &deposit(1_000_001)).await),
        400
    );
    assert_eq!(status(w.user.deposit(other.id, &deposit(5)).await), 403);
}

#[tokio::test]
async fn consumption_reports_refused_for_other_nodes_replays_and_absurd_figures() {
    let g = grid(None).await;
    let w = world(&g, 0).await;
    let (other_client, other) = g.node(w.farm.id).await;
    let c = w
        .user
        .create_node_contract(&CreateNodeContract {
            node_id: w.node.id,
            deployment_hash: DeploymentHash([1; 32]),
            public_ips: 0,
        })
        .await
        .unwrap();
    let period = g.clock.now() / HOUR;
    let good = ConsumptionReport {
        contract_id: c.id,
        period,
        capacity: small_vm(),
        public_bytes: 1000,
    };
    let before = g.dump();

    // A contract on another node.
    let e = other_client
        .report_consumption(other.id, &[good])
        .await
        .unwrap_err();
    assert_eq!(e.status(), Some(403));
    assert!(
        e.to_string().contains(&format!("on node {}", w.node.id)),
        "{e}"
    );
    // Signed by someone who is not the node.
    assert_eq!(
        status(w.user.report_consumption(w.node.id, &[good]).await),
        403
    );
    // Absurd figures: more than the node has, more traffic than 100 Gbit/s, a future period.
    let mut big = good;
    big.capacity.cru = w.node.capacity.cru + 1;
    assert_eq!(
        status(w.node_client.report_consumption(w.node.id, &[big]).await),
        400
    );
    let mut flood = good;
    flood.public_bytes = 3600 * zos_grid::billing::MAX_BYTES_PER_SEC + 1;
    assert_eq!(
        status(w.node_client.report_consumption(w.node.id, &[flood]).await),
        400
    );
    let mut future = good;
    future.period = period + 1;
    assert_eq!(
        status(w.node_client.report_consumption(w.node.id, &[future]).await),
        400
    );
    // One bad report refuses the whole request.
    assert_eq!(
        status(
            w.node_client
                .report_consumption(w.node.id, &[good, big])
                .await
        ),
        400
    );
    // Negative figures do not parse.
    let id = w.node_client.identity().unwrap().clone();
    let node_twin = w.node.twin_id;
    let path = format!("/api/v1/nodes/{}/consumption", w.node.id);
    let negative = format!(
        r#"[{{"contract_id":{},"period":{period},"capacity":{{"cru":-1,"mru":0,"sru":0,"hru":0}},"public_bytes":0}}]"#,
        c.id
    );
    let now = g.clock.now();
    let auth = auth_header(
        &id,
        Signer::Twin(node_twin),
        "POST",
        &path,
        now,
        negative.as_bytes(),
    );
    let (code, body) = raw(&g.url(), "POST", &path, negative.into_bytes(), Some(&auth)).await;
    assert_eq!(code, 400, "{body}");
    assert_eq!(g.dump(), before, "refused reports change nothing");

    // A good report, sent raw, then replayed byte for byte: the replay is refused.
    let body = serde_json::to_vec(&[good]).unwrap();
    let auth = auth_header(&id, Signer::Twin(node_twin), "POST", &path, now + 1, &body);
    let (code, answer) = raw(&g.url(), "POST", &path, body.clone(), Some(&auth)).await;
    assert_eq!(code, 200, "{answer}");
    let (code, answer) = raw(&g.url(), "POST", &path, body, Some(&auth)).await;
    assert_eq!(code, 401, "{answer}");
    assert!(error_message(&answer).contains("accepted once"), "{answer}");
    // The same period reported again in a new request is refused too: a period counts once.
    let e = w
        .node_client
        .report_consumption(w.node.id, &[good])
        .await
        .unwrap_err();
    assert_eq!(e.status(), Some(409));
    assert!(e.to_string().contains("reported once"), "{e}");
    // Once billed, a period takes no report.
    g.clock.advance(HOUR);
    g.bill_now().await;
    let late = ConsumptionReport {
        contract_id: c.id,
        period: period + 1,
        ..good
    };
    g.clock.advance(HOUR);
    g.bill_now().await;
    let e = w
        .node_client
        .report_consumption(w.node.id, &[late])
        .await
        .unwrap_err();
    assert_eq!(e.status(), Some(409));
    assert!(e.to_string().contains("billed already"), "{e}");
}
