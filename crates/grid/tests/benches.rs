//! The grid's benchmarks, small: the measurements of `benches/common` (the same code the
//! `registry` and `relay` bench targets run) answer every request and report sane figures.

#[path = "../benches/common/mod.rs"]
mod bench;

use std::time::Duration;

#[test]
fn percentiles_use_nearest_rank() {
    let d: Vec<Duration> = (1..=100).map(Duration::from_millis).collect();
    assert_eq!(bench::percentile(&d, 50.0), 50.0);
    assert_eq!(bench::percentile(&d, 99.0), 99.0);
    assert_eq!(bench::percentile(&d, 100.0), 100.0);
    let d: Vec<Duration> = (1..=10).map(Duration::from_millis).collect();
    assert_eq!(bench::percentile(&d, 50.0), 5.0);
    assert_eq!(bench::percentile(&d, 99.0), 10.0);
    assert_eq!(bench::percentile(&[], 50.0), 0.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registry_bench_reports_figures_as_json() {
    let r = bench::uptime::run(bench::uptime::Options {
        nodes: 3,
        reports: 30,
        concurrency: 4,
    })
    .await
    .unwrap();
    let report = serde_json::to_value(&r).unwrap();
    assert_eq!(report["reports"], 30);
    assert_eq!(report["nodes"], 3);
    assert!(report["reports_per_sec"].as_f64().unwrap() > 0.0);
    assert!(
        report["latency_p99_ms"].as_f64().unwrap() >= report["latency_p50_ms"].as_f64().unwrap()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relay_bench_answers_every_call() {
    let r = bench::relay::run(bench::relay::Options {
        nodes: 2,
        calls: 40,
        concurrency: 4,
        body_bytes: 100,
    })
    .await
    .unwrap();
    assert_eq!(r.calls, 40);
    assert!(r.calls_per_sec > 0.0);
    assert!(r.latency_p50_ms <= r.latency_max_ms);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bench_options_of_zero_are_refused() {
    let err = bench::uptime::run(bench::uptime::Options {
        nodes: 0,
        reports: 1,
        concurrency: 1,
    })
    .await
    .unwrap_err();
    assert!(err.to_string().contains("at least 1"), "{err:#}");
}

#[test]
fn billing_bench_bills_every_contract_once() {
    let r = bench::billing::run(bench::billing::Options {
        contracts: 300,
        nodes: 3,
        twins: 7,
    })
    .unwrap();
    assert_eq!((r.bills, r.paid), (300, 300));
    assert!(
        r.run_secs > 0.0 && r.peak_rss_mib > 0.0 && r.database_mib > 0.0,
        "{r:?}"
    );
    assert!(
        bench::billing::run(bench::billing::Options {
            contracts: 0,
            nodes: 1,
            twins: 1
        })
        .is_err()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn explorer_bench_serves_every_page() {
    let r = bench::explorer::run(bench::explorer::Options {
        nodes: 120,
        farms: 3,
        requests: 2,
    })
    .await
    .unwrap();
    assert_eq!(r.pages.len(), bench::explorer::PAGES.len());
    for p in &r.pages {
        assert!(
            p.bytes > 0 && p.p50_ms > 0.0 && p.p50_ms <= p.max_ms,
            "{p:?}"
        );
    }
}
