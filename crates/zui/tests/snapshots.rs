//! Each state of the console screen, drawn on ratatui's `TestBackend` (80×24, the size of a
//! text console) and compared with `tests/snapshots/*.txt`. After a deliberate change of the
//! screen, `ZUI_BLESS=1 cargo test -p zos-zui --test snapshots` writes them anew: read the diff.

use std::collections::BTreeMap;
use std::path::PathBuf;

use ratatui::Terminal;
use ratatui::backend::TestBackend;
use zos_types::Capacity;
use zos_types::capacity::GIB;
use zos_zui::{LoggedError, Screen, Uplink, View, draw};

const NOW: i64 = 1_796_000_000;

fn text(screen: &Screen, view: View) -> String {
    let mut t = Terminal::new(TestBackend::new(80, 24)).unwrap();
    t.draw(|f| draw(f, screen, view)).unwrap();
    let buf = t.backend().buffer();
    let mut out = String::new();
    for y in 0..buf.area.height {
        let line: String = (0..buf.area.width)
            .map(|x| buf[(x, y)].symbol().to_string())
            .collect();
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

fn check(name: &str, screen: &Screen, view: View) -> String {
    let got = text(screen, view);
    let path =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(format!("tests/snapshots/{name}.txt"));
    if std::env::var_os("ZUI_BLESS").is_some() {
        std::fs::write(&path, &got).unwrap();
    }
    let want = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("{}: {e} (ZUI_BLESS=1 writes it)", path.display()));
    assert_eq!(
        got,
        want,
        "{name}: the screen differs from {}",
        path.display()
    );
    got
}

fn online() -> Screen {
    let mut s = Screen::booting(1, "dev", "1.4.0", "https://grid.dev.example", NOW - 400);
    s.now = NOW;
    s.node_id = Some(12);
    s.twin_id = Some(34);
    s.uplink = Uplink::Up { since: NOW - 190 };
    s.addresses = vec![
        (
            "zos".into(),
            vec!["10.4.0.12/24".into(), "fd4e::12/64".into()],
        ),
        ("public".into(), vec!["198.51.100.7/24".into()]),
    ];
    s.capacity_total = Capacity {
        cru: 8,
        mru: 32 * GIB,
        sru: 512 * GIB,
        hru: 2048 * GIB,
    };
    s.capacity_used = Capacity {
        cru: 3,
        mru: 6 * GIB,
        sru: 120 * GIB,
        hru: 0,
    };
    s.workloads = BTreeMap::from([
        (
            "zmachine".into(),
            BTreeMap::from([("ok".into(), 3), ("paused".into(), 1)]),
        ),
        ("network".into(), BTreeMap::from([("ok".into(), 2)])),
        ("zmount".into(), BTreeMap::from([("ok".into(), 3)])),
    ]);
    s
}

#[test]
fn booting() {
    let s = Screen::booting(7, "prod", "1.4.0", "https://grid.example", NOW);
    let got = check("booting", &s, View::Node);
    assert!(got.contains("node (registering)"), "{got}");
    assert!(got.contains("waiting for the registration"), "{got}");
}

#[test]
fn online_node_workloads_and_no_errors() {
    let s = online();
    let got = check("online", &s, View::Node);
    assert!(got.contains("node 12 · farm 1 · dev · 1.4.0"), "{got}");
    assert!(got.contains("up for 3m 10s"), "{got}");
    assert!(got.contains("10.4.0.12/24, fd4e::12/64"), "{got}");
    assert!(got.contains("3 / 8 cores"), "{got}");
    assert!(
        got.contains("9 in all: 8 ok, 1 paused, 0 in error"),
        "{got}"
    );
    let got = check("workloads", &s, View::Workloads);
    assert!(
        got.lines()
            .any(|l| l.contains("zmachine") && l.contains('3') && l.contains('1')),
        "{got}"
    );
    let got = check("no-errors", &s, View::Errors);
    assert!(got.contains("no warnings or errors"), "{got}");
}

#[test]
fn uplink_down() {
    let mut s = online();
    s.uplink = Uplink::Down { since: NOW - 42 };
    s.grid_error = Some("connecting to the grid: connection refused".into());
    let got = check("uplink-down", &s, View::Node);
    assert!(got.contains("DOWN for 42s"), "{got}");
    assert!(got.contains("connection refused"), "{got}");
}

#[test]
fn errors_newest_first() {
    let mut s = online();
    s.workloads
        .get_mut("zmachine")
        .unwrap()
        .insert("error".into(), 1);
    s.errors = vec![
        LoggedError {
            at: NOW - 3600,
            subsystem: "storage".into(),
            level: "WARN".into(),
            message: "pool 3f2a is 91 % full".into(),
        },
        LoggedError {
            at: NOW - 60,
            subsystem: "provision".into(),
            level: "ERROR".into(),
            message: "job failed contract=41 error=the flist's image.raw is a symbolic link".into(),
        },
    ];
    let got = check("errors-node", &s, View::Node);
    assert!(got.contains("1 in error"), "{got}");
    assert!(got.contains("2 recent (view 3)"), "{got}");
    let got = check("errors", &s, View::Errors);
    let (newest, oldest) = (
        got.find("job failed").expect("the error is shown"),
        got.find("pool 3f2a").expect("the warning is shown"),
    );
    assert!(newest < oldest, "newest first:\n{got}");
}
