//! Shared helpers of the registry integration tests: a grid on 127.0.0.1 with a real SQLite
//! file in a temporary directory and a settable clock, cleaned up on drop.

#![allow(dead_code)]

pub mod nodes;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use serde_json::Value;
use tempfile::TempDir;
use zos_client::GridClient;
use zos_grid::clock::{Clock, ManualClock};
use zos_grid::{GridConfig, RunningGrid};
use zos_types::auth::{RequestAuth, Signer};
use zos_types::capacity::GIB;
use zos_types::registry::{
    AdmissionToken, Farm, Hardware, Interface, Node, NodeRegistration, Twin,
};
use zos_types::{Capacity, FarmId, Identity};

/// Changes made to the default config of a test grid.
type Configure = Arc<dyn Fn(&mut GridConfig) + Send + Sync>;

/// A grid under test. Dropping it stops the server and removes its data directory.
pub struct TestGrid {
    grid: Option<RunningGrid>,
    pub clock: ManualClock,
    configure: Configure,
    dir: TempDir,
    /// The farmer key of each farm [`Self::farm`] made, to sign node admissions.
    farmers: Mutex<HashMap<FarmId, Identity>>,
    /// Clients sign with the test clock rather than the system clock (for tests that move the
    /// clock by more than the allowed skew).
    sign_with_clock: bool,
}

impl TestGrid {
    pub async fn start() -> Self {
        Self::start_with(|_| {}).await
    }

    /// A grid whose config `configure` changed (kept across restarts).
    pub async fn start_with(configure: impl Fn(&mut GridConfig) + Send + Sync + 'static) -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let clock = ManualClock::starting_now();
        let configure: Configure = Arc::new(configure);
        let grid = Self::launch(&dir.path().join("data"), &clock, &configure).await;
        Self {
            grid: Some(grid),
            clock,
            configure,
            dir,
            farmers: Mutex::new(HashMap::new()),
            sign_with_clock: false,
        }
    }

    /// A grid like [`Self::start_with`] whose clients sign with the test clock, so the clock
    /// may move by hours.
    pub async fn start_signing_with_clock(
        configure: impl Fn(&mut GridConfig) + Send + Sync + 'static,
    ) -> Self {
        let mut g = Self::start_with(configure).await;
        g.sign_with_clock = true;
        g
    }

    async fn launch(
        data_dir: &std::path::Path,
        clock: &ManualClock,
        configure: &Configure,
    ) -> RunningGrid {
        let mut config = GridConfig::new("127.0.0.1:0".parse().unwrap(), data_dir.into())
            .with_clock(Arc::new(clock.clone()));
        configure(&mut config);
        zos_grid::start(config).await.expect("grid starts")
    }

    /// Stops the grid (waiting for it) and starts a new one on the same data directory.
    pub async fn restart(&mut self) {
        self.grid.take().unwrap().shutdown().await.unwrap();
        self.grid = Some(Self::launch(&self.data_dir(), &self.clock, &self.configure).await);
    }

    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    pub fn db_path(&self) -> PathBuf {
        self.data_dir().join(zos_grid::DATABASE_FILE)
    }

    pub fn url(&self) -> String {
        self.grid.as_ref().unwrap().url()
    }

    /// Runs the billing now, at the test clock.
    pub async fn bill_now(&self) -> zos_grid::billing::RunSummary {
        self.grid
            .as_ref()
            .unwrap()
            .bill_now()
            .await
            .expect("billing runs")
    }

    /// Every row of every table.
    pub fn dump(&self) -> String {
        self.grid.as_ref().unwrap().store().dump().unwrap()
    }

    /// How many times the boot service served the boot file with this SHA-256.
    pub fn boot_fetches(&self, sha256: &str) -> u64 {
        self.grid.as_ref().unwrap().boot().fetches(sha256)
    }

    /// An anonymous client.
    pub fn client(&self) -> GridClient {
        let c = GridClient::new(&self.url()).unwrap();
        if self.sign_with_clock {
            let clock = self.clock.clone();
            c.with_clock(zos_client::ClockFn(Arc::new(move || clock.now())))
        } else {
            c
        }
    }

    /// A new twin and a client acting as it.
    pub async fn twin(&self) -> (GridClient, Twin) {
        let client = self.client().with_identity(Identity::generate().unwrap());
        let twin = client.create_twin(None).await.expect("twin created");
        (client.with_twin(twin.id), twin)
    }

    /// A farmer with a farm.
    pub async fn farm(&self, name: &str) -> (GridClient, Farm) {
        let (farmer, _) = self.twin().await;
        let farm = farmer.create_farm(name).await.expect("farm created");
        let key = farmer.identity().unwrap().clone();
        self.farmers.lock().unwrap().insert(farm.id, key);
        (farmer, farm)
    }

    /// An admission into `farm` signed by its farmer (a farm [`Self::farm`] made), valid for
    /// a day of the grid's clock.
    pub fn admission(&self, farm: FarmId) -> AdmissionToken {
        let farmers = self.farmers.lock().unwrap();
        let farmer = farmers.get(&farm).expect("a farm this grid's helper made");
        AdmissionToken::sign(farmer, farm, self.clock.now() + 86_400)
    }

    /// A registration in `farm` carrying its farmer's admission.
    pub fn admitted(&self, farm: FarmId) -> NodeRegistration {
        NodeRegistration {
            admission: Some(self.admission(farm)),
            ..registration(farm)
        }
    }

    /// A new node twin registered in `farm`, admitted by its farmer.
    pub async fn node(&self, farm: FarmId) -> (GridClient, Node) {
        let (client, _) = self.twin().await;
        let (node, created) = client
            .register_node(&self.admitted(farm))
            .await
            .expect("node registered");
        assert!(created);
        (client, node)
    }

    /// Runs a statement on the database file, as a contract module would.
    pub fn sql(&self, statement: &str) {
        let conn = rusqlite::Connection::open(self.db_path()).unwrap();
        conn.busy_timeout(std::time::Duration::from_secs(5))
            .unwrap();
        conn.execute_batch(statement).unwrap();
    }
}

/// A plausible node registration in `farm`.
pub fn registration(farm_id: FarmId) -> NodeRegistration {
    NodeRegistration {
        farm_id,
        capacity: Capacity {
            cru: 4,
            mru: 16 * GIB,
            sru: 500 * GIB,
            hru: 2000 * GIB,
        },
        reserved: Capacity {
            cru: 0,
            mru: 2 * GIB,
            sru: 20 * GIB,
            hru: 0,
        },
        hardware: Hardware {
            serial: "SN-1234".into(),
            virtualized: true,
            cpu_model: "Test CPU".into(),
        },
        interfaces: vec![Interface {
            name: "eth0".into(),
            mac: "52:54:00:aa:bb:cc".into(),
            ips: vec!["10.0.2.15/24".parse().unwrap()],
        }],
        zos_version: "0.1.0".into(),
        report_interval_secs: 60,
        limited: None,
        admission: None,
    }
}

/// The `Authorization` header value of a request.
pub fn auth_header(
    identity: &Identity,
    signer: Signer,
    method: &str,
    path: &str,
    timestamp: i64,
    body: &[u8],
) -> String {
    RequestAuth::sign(identity, signer, method, path, timestamp, body).to_string()
}

/// A raw HTTP request, for crafting what the typed client never sends. Returns the status and
/// the JSON body (Null when the body is not JSON).
pub async fn raw(
    base: &str,
    method: &str,
    path: &str,
    body: Vec<u8>,
    auth: Option<&str>,
) -> (u16, Value) {
    let client = reqwest::Client::new();
    let mut req = client
        .request(method.parse().unwrap(), format!("{base}{path}"))
        .header("content-type", "application/json")
        .body(body);
    if let Some(a) = auth {
        req = req.header("authorization", a);
    }
    let resp = req.send().await.expect("the grid answers");
    let status = resp.status().as_u16();
    let bytes = resp.bytes().await.unwrap();
    (
        status,
        serde_json::from_slice(&bytes).unwrap_or(Value::Null),
    )
}

/// The `error` message of an [`zos_types::registry::ApiError`] body; panics when there is none.
pub fn error_message(body: &Value) -> String {
    body.get("error")
        .and_then(Value::as_str)
        .unwrap_or_else(|| panic!("expected a JSON error body, got {body}"))
        .to_string()
}
