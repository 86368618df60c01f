//! The explorer in a real headless Chromium (Debian's `chromium`, driven over WebDriver by
//! `chromedriver`) against a real grid on loopback, populated through its API: farms, nodes
//! reporting uptime, a public config, contracts, a published release. Every page loads without
//! a console error and passes axe-core (no serious or critical violation); the filters and links
//! work; a node registered meanwhile shows up without a reload; the farm's bootloader link
//! returns the farm's boot script. Screenshots go to `target/explorer-screenshots/` (and to
//! `docs/img/` with `ZOS_UPDATE_SCREENSHOTS=1`).

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::TestGrid;
use fantoccini::wd::{Capabilities, WebDriverCompatibleCommand};
use fantoccini::{Client, ClientBuilder, Locator};
use serde_json::{Value, json};
use zos_client::GridClient;
use zos_flist::BlockStore;
use zos_flist::hub::HubClient;
use zos_flist::pack::{PackOptions, Progress, Source, pack};
use zos_grid::GridConfig;
use zos_grid::clock::SystemClock;
use zos_types::auth::{Signer, unix_now};
use zos_types::capacity::GIB;
use zos_types::contract::CreateNodeContract;
use zos_types::registry::{AddFarmIp, NodeFilter, NodeSort, PublicConfig, UptimeReport};
use zos_types::release::{Artifact, Release, ReleaseKeys, RunMode, RuntimeFlist};
use zos_types::{Capacity, Identity};

/// Where axe-core is (scripts/install-deps.sh puts it there).
const AXE: &str = "/usr/local/share/zos-test/axe-core-4.10.3/axe.min.js";

fn tool(name: &str) -> Option<PathBuf> {
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|p| p.join(name))
            .find(|p| p.is_file())
    })
}

/// Chromium and its driver, or `None` after saying loudly why the test is skipped.
fn browser_tools() -> Option<(PathBuf, PathBuf)> {
    match (tool("chromium"), tool("chromedriver")) {
        (Some(c), Some(d)) => Some((c, d)),
        _ => {
            eprintln!(
                "SKIPPED: chromium or chromedriver is missing; run scripts/install-deps.sh \
                 (it installs Debian's chromium and chromium-driver)"
            );
            None
        }
    }
}

/// A headless Chromium driven through a chromedriver this test started. Dropping it ends the
/// session and kills the driver's process group (the driver and the browser it started), by
/// the driver's PID, and removes the browser's profile.
struct Browser {
    client: Option<Client>,
    driver: Child,
    _profile: tempfile::TempDir,
}

/// The browser's console messages since the last time they were read (chromedriver's
/// Selenium-compatible log endpoint).
#[derive(Debug)]
struct ConsoleLog;

impl WebDriverCompatibleCommand for ConsoleLog {
    fn endpoint(
        &self,
        base: &url::Url,
        session: Option<&str>,
    ) -> Result<url::Url, url::ParseError> {
        base.join(&format!("session/{}/se/log", session.unwrap_or_default()))
    }

    fn method_and_body(&self, _: &url::Url) -> (http::Method, Option<String>) {
        (
            http::Method::POST,
            Some(json!({"type": "browser"}).to_string()),
        )
    }
}

impl Browser {
    async fn start(chromium: &Path, chromedriver: &Path) -> Self {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let driver = {
            use std::os::unix::process::CommandExt;
            Command::new(chromedriver)
                .arg(format!("--port={port}"))
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .process_group(0)
                .spawn()
                .expect("chromedriver starts")
        };
        let profile = tempfile::tempdir().unwrap();
        let mut browser = Self {
            client: None,
            driver,
            _profile: profile,
        };
        let url = format!("http://127.0.0.1:{port}");
        let deadline = Instant::now() + Duration::from_secs(20);
        while reqwest::get(format!("{url}/status")).await.is_err() {
            assert!(Instant::now() < deadline, "chromedriver did not start");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let caps: Capabilities = serde_json::from_value(json!({
            "browserName": "chrome",
            "goog:chromeOptions": {
                "binary": chromium,
                "args": [
                    "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                    "--window-size=1280,900", "--hide-scrollbars",
                    format!("--user-data-dir={}", browser._profile.path().display()),
                ],
            },
            "goog:loggingPrefs": { "browser": "ALL" },
        }))
        .unwrap();
        let connector = hyper_util::client::legacy::connect::HttpConnector::new();
        let client = ClientBuilder::new(connector)
            .capabilities(caps)
            .connect(&url)
            .await
            .expect("a WebDriver session");
        browser.client = Some(client);
        browser
    }

    fn c(&self) -> &Client {
        self.client.as_ref().unwrap()
    }

    /// Loads `url` and waits for the page to be complete.
    async fn open(&self, url: &str) {
        self.c().goto(url).await.unwrap();
        self.loaded().await;
    }

    async fn loaded(&self) {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let state = self
                .c()
                .execute("return document.readyState", vec![])
                .await
                .unwrap();
            if state == "complete" {
                return;
            }
            assert!(Instant::now() < deadline, "the page did not finish loading");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Console errors (level SEVERE) since the last call.
    async fn console_errors(&self) -> Vec<String> {
        let log = self
            .c()
            .issue_cmd(ConsoleLog)
            .await
            .expect("the console log");
        log.as_array()
            .into_iter()
            .flatten()
            .filter(|e| e["level"] == "SEVERE")
            .map(|e| e["message"].as_str().unwrap_or_default().to_string())
            .collect()
    }

    async fn text(&self, css: &str) -> String {
        self.c()
            .find(Locator::Css(css))
            .await
            .unwrap_or_else(|e| panic!("{css}: {e}"))
            .text()
            .await
            .unwrap()
    }

    async fn texts(&self, css: &str) -> Vec<String> {
        let mut out = Vec::new();
        for e in self.c().find_all(Locator::Css(css)).await.unwrap() {
            out.push(e.text().await.unwrap());
        }
        out
    }

    /// Runs axe-core on the page; answers the serious and critical violations.
    async fn axe(&self) -> Vec<Value> {
        let axe = std::fs::read_to_string(AXE).unwrap_or_else(|e| {
            panic!("{AXE}: {e}: run scripts/install-deps.sh (it fetches axe-core from npm)")
        });
        self.c()
            .execute(&axe, vec![])
            .await
            .expect("axe-core loads");
        let result = self
            .c()
            .execute_async(
                "const done = arguments[arguments.length - 1];
                 axe.run(document, { resultTypes: ['violations'] })
                    .then(r => done(r.violations.map(v => ({ id: v.id, impact: v.impact,
                        help: v.help, nodes: v.nodes.map(n => n.html).slice(0, 3) }))))
                    .catch(e => done([{ id: 'axe-failed', impact: 'critical', help: String(e) }]));",
                vec![],
            )
            .await
            .expect("axe-core runs");
        result
            .as_array()
            .unwrap()
            .iter()
            .filter(|v| v["impact"] == "serious" || v["impact"] == "critical")
            .cloned()
            .collect()
    }

    /// Saves a screenshot as `target/explorer-screenshots/NAME.png` (and in `docs/img/` when
    /// `ZOS_UPDATE_SCREENSHOTS` is set).
    async fn screenshot(&self, name: &str) {
        let png = self.c().screenshot().await.unwrap();
        assert!(png.starts_with(b"\x89PNG"), "a PNG screenshot");
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
        let dir = root.join("target/explorer-screenshots");
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join(format!("{name}.png")), &png).unwrap();
        if std::env::var_os("ZOS_UPDATE_SCREENSHOTS").is_some() {
            std::fs::write(root.join(format!("docs/img/explorer-{name}.png")), &png).unwrap();
        }
    }

    /// Waits until `check` holds on the page (live updates), failing after `secs`.
    async fn wait_for(&self, secs: u64, what: &str, script: &str) {
        let deadline = Instant::now() + Duration::from_secs(secs);
        loop {
            if self.c().execute(script, vec![]).await.unwrap() == Value::Bool(true) {
                return;
            }
            assert!(Instant::now() < deadline, "{what}: not within {secs} s");
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        if let Some(client) = self.client.take() {
            // End the session (the driver quits the browser) when a runtime is still there.
            if let Ok(rt) = tokio::runtime::Handle::try_current() {
                let _ = std::thread::scope(|s| {
                    s.spawn(|| rt.block_on(async { client.close().await }))
                        .join()
                });
            }
        }
        let pgid = nix::unistd::Pid::from_raw(self.driver.id() as i32);
        let _ = nix::sys::signal::killpg(pgid, nix::sys::signal::Signal::SIGKILL);
        let _ = self.driver.wait();
    }
}

/// A grid on the system clock that samples its totals every second and serves dev releases,
/// populated through its API.
struct Populated {
    grid: TestGrid,
    dev: Identity,
    farms: Vec<u32>,
    kernel_sha: String,
    /// A node's twin per node, to report its uptime.
    nodes: Vec<(GridClient, u32)>,
    user_twin: u32,
}

fn report(uptime_secs: u64, used: Option<Capacity>) -> UptimeReport {
    UptimeReport {
        uptime_secs,
        timestamp: unix_now(),
        used,
    }
}

async fn populate() -> Populated {
    let dev = Identity::generate().unwrap();
    let keys = ReleaseKeys {
        keys: vec![dev.public_key()],
        threshold: 1,
    };
    let grid = TestGrid::start_with(move |c: &mut GridConfig| {
        c.clock = Arc::new(SystemClock);
        c.stats_interval = Duration::from_secs(1);
        c.boot.release_keys.insert(RunMode::Dev, keys.clone());
    })
    .await;
    let (farmer_a, farm_a) = grid.farm("amsterdam-1").await;
    let (_, farm_b) = grid.farm("ghent-2").await;
    for (ip, gw) in [
        ("185.69.166.20/24", "185.69.166.1"),
        ("185.69.166.21/24", "185.69.166.1"),
    ] {
        farmer_a
            .add_farm_ip(
                farm_a.id,
                &AddFarmIp {
                    ip: ip.parse().unwrap(),
                    gateway: gw.parse().unwrap(),
                },
            )
            .await
            .unwrap();
    }
    let mut nodes = Vec::new();
    for farm in [farm_a.id, farm_a.id, farm_b.id, farm_b.id] {
        let (client, node) = grid.node(farm).await;
        nodes.push((client, node.id));
    }
    // Three report (one of them twice, with capacity in use); the last never does: offline.
    for (i, (client, id)) in nodes.iter().take(3).enumerate() {
        client
            .report_uptime(*id, &report(3600 * (i as u64 + 1), None))
            .await
            .unwrap();
    }
    // A second later (the registry keeps one report per node and second).
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let used = Capacity {
        cru: 2,
        mru: 8 * GIB,
        sru: 100 * GIB,
        hru: 0,
    };
    nodes[0]
        .0
        .report_uptime(nodes[0].1, &report(3700, Some(used)))
        .await
        .unwrap();
    farmer_a
        .set_public_config(
            nodes[0].1,
            &PublicConfig {
                ipv4: "185.69.167.10/24".parse().unwrap(),
                gw4: "185.69.167.1".parse().unwrap(),
                ipv6: None,
                gw6: None,
                domain: Some("gw.amsterdam.example".into()),
            },
        )
        .await
        .unwrap();
    let (user, user_twin) = grid.twin().await;
    user.create_node_contract(&CreateNodeContract {
        node_id: nodes[0].1,
        deployment_hash: "ab".repeat(32).parse().unwrap(),
        public_ips: 1,
    })
    .await
    .unwrap();
    user.create_name_contract("myblog").await.unwrap();

    // A dev release: kernel, initramfs and a runtime flist on the grid, signed, published.
    let url = grid.url();
    let put = |path: String, body: Vec<u8>| {
        let dev = dev.clone();
        let url = url.clone();
        async move {
            let auth = common::auth_header(
                &dev,
                Signer::Key(dev.public_key()),
                "PUT",
                &path,
                unix_now(),
                &body,
            );
            let r = reqwest::Client::new()
                .put(format!("{url}{path}"))
                .header("authorization", auth)
                .body(body)
                .send()
                .await
                .unwrap();
            assert!(r.status().is_success(), "PUT {path}: {}", r.status());
        }
    };
    let mut artifacts = Vec::new();
    for data in [b"kernel 1.0.0".as_slice(), b"initramfs 1.0.0".as_slice()] {
        let sha = zos_flist::hub::sha256_hex(data);
        put(format!("/boot/files/{sha}"), data.to_vec()).await;
        artifacts.push(Artifact {
            sha256: sha,
            size: data.len() as u64,
        });
    }
    let flist = runtime_flist(&grid).await;
    let release = Release {
        version: "1.0.0".into(),
        runmode: RunMode::Dev,
        created: unix_now() - 3600,
        kernel: artifacts[0].clone(),
        initramfs: artifacts[1].clone(),
        flists: vec![flist],
        debug: None,
    };
    let signed = release.sign(&[&dev]).unwrap();
    put("/releases/dev".into(), serde_json::to_vec(&signed).unwrap()).await;
    // Two samples of the totals at least, for the charts.
    tokio::time::sleep(Duration::from_millis(2200)).await;
    Populated {
        grid,
        dev,
        farms: vec![farm_a.id, farm_b.id],
        kernel_sha: artifacts[0].sha256.clone(),
        nodes,
        user_twin: user_twin.id,
    }
}

/// A small runtime flist pushed to the grid's hub by a new twin.
async fn runtime_flist(grid: &TestGrid) -> RuntimeFlist {
    let id = Identity::generate().unwrap();
    let c = GridClient::new(&grid.url())
        .unwrap()
        .with_identity(id.clone());
    let twin = c.create_twin(None).await.unwrap();
    let hub = HubClient::new(&grid.url()).unwrap().with_auth(id, twin.id);
    let store: Arc<dyn BlockStore> = Arc::new(hub.block_store().unwrap());
    let work = tempfile::tempdir().unwrap();
    let src = work.path().join("root");
    std::fs::create_dir_all(src.join("usr/bin")).unwrap();
    std::fs::write(src.join("usr/bin/zosd"), "zosd").unwrap();
    let out = work.path().join("r.fl");
    pack(
        &Source::Dir(src),
        &out,
        store,
        &PackOptions::default(),
        &|_: &Progress| {},
    )
    .await
    .unwrap();
    let pushed = hub
        .push("zos.fl", std::fs::read(&out).unwrap(), false)
        .await
        .unwrap();
    RuntimeFlist {
        name: "zos".into(),
        sha256: pushed.flist.sha256,
        size: pushed.flist.size,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_page_loads_without_console_errors_and_passes_axe() {
    let Some((chromium, driver)) = browser_tools() else {
        return;
    };
    let p = populate().await;
    let b = Browser::start(&chromium, &driver).await;
    let base = format!("{}/explorer", p.grid.url());
    let node = p.nodes[0].1;
    let pages = [
        ("overview", format!("{base}/"), "The grid"),
        ("nodes", format!("{base}/nodes"), "Nodes"),
        (
            "node",
            format!("{base}/nodes/{node}"),
            &*format!("Node {node}"),
        ),
        ("farms", format!("{base}/farms"), "Farms"),
        (
            "farm",
            format!("{base}/farms/{}", p.farms[0]),
            "Farm 1: amsterdam-1",
        ),
        (
            "twin",
            format!("{base}/twins/{}", p.user_twin),
            &*format!("Contracts of twin {}", p.user_twin),
        ),
        ("releases", format!("{base}/releases"), "Releases"),
    ]
    .map(|(n, u, h)| (n, u, h.to_string()));
    for (name, url, heading) in &pages {
        b.open(url).await;
        assert_eq!(b.text("h1").await, *heading, "{url}");
        let errors = b.console_errors().await;
        assert!(errors.is_empty(), "{url}: console errors: {errors:#?}");
        let violations = b.axe().await;
        assert!(
            violations.is_empty(),
            "{url}: serious accessibility violations: {}",
            serde_json::to_string_pretty(&violations).unwrap()
        );
        b.screenshot(name).await;
    }
    // What the pages say comes from the registry.
    b.open(&format!("{base}/")).await;
    assert_eq!(b.text("#nodes-total").await, "4");
    assert_eq!(b.text("#nodes-online").await, "3");
    assert_eq!(b.text("#contracts-total").await, "2");
    assert_eq!(b.text("#ipv4").await, "1 of 2");
    let caption = b.text("#chart-nodes figcaption").await;
    assert!(caption.starts_with("Nodes online: now 3"), "{caption}");
    b.open(&format!("{base}/nodes/{node}")).await;
    let facts = b.text("main").await;
    assert!(facts.contains("185.69.167.10/24"), "{facts}");
    assert!(facts.contains("gw.amsterdam.example"), "{facts}");
    assert!(facts.contains("1.0.0"), "{facts}");
    let uptime = b.text("#chart-uptime figcaption").await;
    assert!(uptime.contains("(2 samples)"), "{uptime}");
    b.open(&format!("{base}/releases")).await;
    let rollout = b.text("#rollout-dev").await;
    assert!(rollout.contains("Rollout of 1.0.0"), "{rollout}");

    // At a phone's width nothing is wider than the screen but the tables, which scroll.
    b.c().set_window_size(390, 844).await.unwrap();
    for (name, url, _) in &pages {
        b.open(url).await;
        let wide = b
            .c()
            .execute(
                "const w = document.documentElement.clientWidth;
                 return [...document.querySelectorAll('body *')]
                    .filter(e => !e.closest('.scroll') && e.getBoundingClientRect().right > w + 1)
                    .slice(0, 5)
                    .map(e => e.tagName + '.' + e.className + '#' + e.id + ' ends at '
                        + Math.round(e.getBoundingClientRect().right) + ' of ' + w)
                    .concat(document.documentElement.scrollWidth > w + 1
                        ? ['the page scrolls sideways: ' + document.documentElement.scrollWidth]
                        : []);",
                vec![],
            )
            .await
            .unwrap();
        assert_eq!(wide, json!([]), "{url} is wider than a phone");
        if ["overview", "nodes", "node"].contains(name) {
            b.screenshot(&format!("{name}-phone")).await;
        }
    }
    // Unknown objects and bad filters are clear pages, not JSON.
    b.open(&format!("{base}/nodes/999")).await;
    assert!(b.text("main").await.contains("node 999 does not exist"));
    b.open(&format!("{base}/nodes?free_mru=lots")).await;
    assert!(b.text("main").await.contains("free_mru"));
    drop(b);
    drop(p.dev);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn filters_links_live_updates_and_the_bootloader_download_work() {
    let Some((chromium, driver)) = browser_tools() else {
        return;
    };
    let p = populate().await;
    let b = Browser::start(&chromium, &driver).await;
    let base = format!("{}/explorer", p.grid.url());
    let api = p.grid.client();

    // `/` leads to the overview.
    b.open(&format!("{}/", p.grid.url())).await;
    assert_eq!(b.c().current_url().await.unwrap().path(), "/explorer/");

    // Filter by farm through the form.
    b.open(&format!("{base}/nodes")).await;
    let farm_b = p.farms[1];
    b.c()
        .find(Locator::Css(&format!("#f-farm option[value='{farm_b}']")))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    b.c()
        .find(Locator::Css("form.filters button[type=submit]"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    b.loaded().await;
    assert!(
        b.c()
            .current_url()
            .await
            .unwrap()
            .query()
            .unwrap()
            .contains(&format!("farm={farm_b}"))
    );
    let farms = b.texts("#nodes-table tbody td:nth-child(2)").await;
    assert_eq!(farms, vec![format!("Farm {farm_b}"); 2]);

    // Offline nodes only: the one that never reported.
    b.open(&format!("{base}/nodes?state=offline")).await;
    let rows = b.texts("#nodes-table tbody th").await;
    assert_eq!(rows, vec![format!("Node {}", p.nodes[3].1)]);

    // Sorted by free memory, largest first: the order the API gives.
    b.open(&format!("{base}/nodes?sort=free_mru&order=desc"))
        .await;
    let shown = b.texts("#nodes-table tbody th").await;
    let want: Vec<String> = api
        .list_nodes(&NodeFilter {
            sort: Some(NodeSort::FreeMru),
            desc: Some(true),
            ..NodeFilter::default()
        })
        .await
        .unwrap()
        .iter()
        .map(|n| format!("Node {}", n.id))
        .collect();
    assert_eq!(shown, want);
    assert_eq!(
        shown[3],
        format!("Node {}", p.nodes[0].1),
        "the busy node is last"
    );

    // Free capacity and version filters.
    b.open(&format!("{base}/nodes?free_mru=10&version=0.1.0"))
        .await;
    assert_eq!(b.texts("#nodes-table tbody th").await.len(), 3);
    b.open(&format!("{base}/nodes?version=9.9.9")).await;
    assert!(b.text("#node-list").await.contains("No node passes"));

    // Links: a node, then its farm, then the farm's bootloader.
    b.open(&format!("{base}/nodes")).await;
    let first = p.nodes[0].1;
    b.c()
        .find(Locator::LinkText(&format!("Node {first}")))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    b.loaded().await;
    assert_eq!(b.text("h1").await, format!("Node {first}"));
    b.c()
        .find(Locator::Css("#node-facts a[href*='/farms/']"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    b.loaded().await;
    assert_eq!(
        b.text("h1").await,
        format!("Farm {}: amsterdam-1", p.farms[0])
    );
    let link = b.c().find(Locator::Css("a.download")).await.unwrap();
    let href = link.prop("href").await.unwrap().unwrap();
    assert_eq!(
        href,
        format!("{}/boot/dev/farms/{}.ipxe", p.grid.url(), p.farms[0])
    );
    let fetched = b
        .c()
        .execute_async(
            "const done = arguments[arguments.length - 1];
             fetch(arguments[0]).then(r => r.text().then(t => done([r.status, t])));",
            vec![json!(href)],
        )
        .await
        .unwrap();
    assert_eq!(fetched[0], 200);
    let script = fetched[1].as_str().unwrap();
    assert!(script.starts_with("#!ipxe"), "{script}");
    assert!(script.contains(&p.kernel_sha), "{script}");
    let direct = reqwest::get(&href).await.unwrap().text().await.unwrap();
    assert_eq!(script, direct);

    // Live: a node registered and reporting while the overview is open shows up without a
    // reload (the mark set on the page survives).
    b.open(&format!("{base}/")).await;
    assert_eq!(b.text("#nodes-total").await, "4");
    b.c().execute("window.zosMark = 42", vec![]).await.unwrap();
    let (client, node) = p.grid.node(p.farms[1]).await;
    client
        .report_uptime(node.id, &report(60, None))
        .await
        .unwrap();
    b.wait_for(
        20,
        "the new node on the overview",
        "return document.getElementById('nodes-total').textContent === '5' \
         && document.getElementById('nodes-online').textContent === '4'",
    )
    .await;
    let mark = b
        .c()
        .execute("return window.zosMark", vec![])
        .await
        .unwrap();
    assert_eq!(mark, 42, "the page was not reloaded");
    let status = b.text("#live-status").await;
    assert!(status.starts_with("Updated at"), "{status}");

    // The node list follows too: the farm's list now has three nodes.
    b.open(&format!("{base}/nodes?farm={}", p.farms[1])).await;
    b.c().execute("window.zosMark = 7", vec![]).await.unwrap();
    let (_, another) = p.grid.node(p.farms[1]).await;
    b.wait_for(
        20,
        "the new node in the list",
        &format!(
            "return document.querySelectorAll('#nodes-table tbody tr').length === 4 \
             && document.body.textContent.includes('Node {}') && window.zosMark === 7",
            another.id
        ),
    )
    .await;
    let errors = b.console_errors().await;
    assert!(errors.is_empty(), "console errors: {errors:#?}");
}
