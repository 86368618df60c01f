//! Engine tests on the in-memory storage fake and a fake grid.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::future::BoxFuture;
use serde_json::json;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use zos_types::capacity::{GIB, MIB};
use zos_types::contract::{Contract, ContractKind, ContractState, NodeEvent};
use zos_types::deployment::WorkloadId;
use zos_types::deployment::{
    ContractId, Deployment, ResultState, SignatureRequest, SignatureRequirement, Workload,
};
use zos_types::node_api::ErrorKind;
use zos_types::workload::{WorkloadData, WorkloadType};
use zos_types::{Capacity, Identity, PublicKey, TwinId};

use super::*;
use zos_storage::{DiskKind, MemoryStorage, Storage};

const NODE: u32 = 1;

#[derive(Default)]
struct FakeGrid {
    twins: Mutex<HashMap<TwinId, PublicKey>>,
    contracts: Mutex<HashMap<ContractId, Contract>>,
    /// Twin keys asked for.
    key_lookups: std::sync::atomic::AtomicUsize,
    /// Every question fails as if the grid could not be reached.
    unreachable: std::sync::atomic::AtomicBool,
}

impl FakeGrid {
    /// The grid's answer about `what`, or `Unavailable` while the grid is unreachable.
    fn answer<T>(&self, what: String, found: Option<T>) -> Result<T, GridViewError> {
        if self.unreachable.load(std::sync::atomic::Ordering::Relaxed) {
            return Err(GridViewError::Unavailable {
                what,
                source: Box::new(std::io::Error::from(std::io::ErrorKind::ConnectionRefused)),
            });
        }
        found.ok_or(GridViewError::NotFound { what })
    }
}

impl GridView for FakeGrid {
    fn twin_key(&self, twin: TwinId) -> BoxFuture<'_, Result<PublicKey, GridViewError>> {
        self.key_lookups
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let k = self.twins.lock().unwrap().get(&twin).copied();
        let answer = self.answer(format!("twin {twin}"), k);
        Box::pin(async move { answer })
    }
    fn contract(&self, id: ContractId) -> BoxFuture<'_, Result<Contract, GridViewError>> {
        let c = self.contracts.lock().unwrap().get(&id).cloned();
        let answer = self.answer(format!("contract {id}"), c);
        Box::pin(async move { answer })
    }
    fn contracts(
        &self,
        filter: zos_types::contract::ContractFilter,
    ) -> BoxFuture<'_, Result<Vec<Contract>, GridViewError>> {
        let all: Vec<Contract> = self
            .contracts
            .lock()
            .unwrap()
            .values()
            .filter(|c| filter.twin_id.is_none_or(|t| c.twin_id == t))
            .filter(|c| filter.state.is_none_or(|s| c.state == s))
            .cloned()
            .collect();
        let answer = self.answer("contracts".into(), Some(all));
        Box::pin(async move { answer })
    }
}

struct Bed {
    engine: Arc<Engine>,
    grid: Arc<FakeGrid>,
    storage: Arc<MemoryStorage>,
    user: Identity,
    stop: CancellationToken,
}

impl Drop for Bed {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

fn bed_with(
    store: Arc<Store>,
    storage: Arc<MemoryStorage>,
    grid: Arc<FakeGrid>,
    limited: Option<String>,
) -> Bed {
    bed_full(store, storage, grid, limited, None)
}

fn bed_full(
    store: Arc<Store>,
    storage: Arc<MemoryStorage>,
    grid: Arc<FakeGrid>,
    limited: Option<String>,
    flist_policy: Option<zos_mounts::FlistUrlPolicy>,
) -> Bed {
    let user = Identity::from_seed([9; 32]);
    grid.twins.lock().unwrap().insert(7, user.public_key());
    let mut managers: HashMap<WorkloadType, Arc<dyn Manager>> = HashMap::new();
    managers.insert(
        WorkloadType::Zmount,
        Arc::new(zmount_manager(storage.clone())),
    );
    managers.insert(
        WorkloadType::Volume,
        Arc::new(volume_manager(storage.clone())),
    );
    let (_tx, rx) = watch::channel(Some(NODE));
    std::mem::forget(_tx);
    let cfg = EngineConfig {
        total: Capacity {
            cru: 4,
            mru: 8 * GIB,
            sru: 10 * GIB,
            hru: 0,
        },
        reserved: Capacity {
            cru: 0,
            mru: 2 * GIB,
            sru: 0,
            hru: 0,
        },
        limited,
    };
    let mut engine = Engine::new(store, managers, grid.clone(), rx, cfg);
    if let Some(p) = flist_policy {
        engine = engine.with_flist_policy(p);
    }
    let engine = Arc::new(engine);
    let stop = CancellationToken::new();
    tokio::spawn(engine.clone().run(stop.clone()));
    Bed {
        engine,
        grid,
        storage,
        user,
        stop,
    }
}

fn bed() -> Bed {
    bed_with(
        Arc::new(Store::memory().unwrap()),
        Arc::new(MemoryStorage::new(&[("ssd1", DiskKind::Ssd, 10 * GIB)], 0)),
        Arc::new(FakeGrid::default()),
        None,
    )
}

fn workload(name: &str, kind: WorkloadType, data: serde_json::Value) -> Workload {
    Workload {
        version: 0,
        name: name.into(),
        kind,
        data,
        metadata: String::new(),
        description: String::new(),
        result: None,
    }
}

fn deployment(contract: ContractId) -> Deployment {
    Deployment {
        version: 0,
        twin_id: 7,
        contract_id: contract,
        metadata: String::new(),
        description: String::new(),
        signature_requirement: SignatureRequirement {
            requests: vec![SignatureRequest {
                twin_id: 7,
                required: true,
                weight: 1,
            }],
            weight_required: 1,
            signatures: vec![],
        },
        workloads: vec![
            workload("disk", WorkloadType::Zmount, json!({"size": GIB})),
            workload("vol", WorkloadType::Volume, json!({"size": 512 * MIB})),
        ],
    }
}

impl Bed {
    /// Registers a node contract for `d` (as it is now) and signs it.
    fn contract_and_sign(&self, d: &mut Deployment, node: u32) {
        self.grid.contracts.lock().unwrap().insert(
            d.contract_id,
            Contract {
                id: d.contract_id,
                twin_id: d.twin_id,
                state: ContractState::Created,
                kind: ContractKind::Node {
                    node_id: node,
                    deployment_hash: d.hash().unwrap(),
                    public_ips: 0,
                    public_ips_list: vec![],
                },
                created_at: 0,
                updated_at: 0,
            },
        );
        d.sign(node, 7, &self.user).unwrap();
    }

    async fn settled(&self, contract: ContractId) -> Deployment {
        for _ in 0..200 {
            if let Ok(d) = self.engine.get(7, contract)
                && d.workloads.iter().all(|w| {
                    w.result
                        .as_ref()
                        .is_some_and(|r| r.state != ResultState::Init)
                })
            {
                return d;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("deployment {contract} never settled");
    }

    /// Cancels `contract` and waits until its deployment is gone.
    async fn cancel(&self, contract: ContractId) {
        self.engine
            .handle_event(&NodeEvent::ContractCancelled {
                contract_id: contract,
            })
            .unwrap();
        for _ in 0..200 {
            if self.engine.get(7, contract).is_err() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("deployment {contract} is still there after its cancellation");
    }

    fn state(d: &Deployment, name: &str) -> ResultState {
        d.workloads
            .iter()
            .find(|w| w.name == name)
            .unwrap()
            .result
            .as_ref()
            .unwrap()
            .state
    }
}

#[tokio::test]
async fn deploy_update_and_cancel() {
    let b = bed();
    let mut d = deployment(1);
    b.contract_and_sign(&mut d, NODE);
    b.engine.deploy(7, d.clone()).await.unwrap();
    let got = b.settled(1).await;
    assert_eq!(Bed::state(&got, "disk"), ResultState::Ok);
    assert_eq!(Bed::state(&got, "vol"), ResultState::Ok);
    assert_eq!(
        b.storage.disk_get("7-1-disk").await.unwrap().unwrap().size,
        GIB
    );
    assert_eq!(
        b.storage.volume_get("7-1-vol").await.unwrap().unwrap().size,
        512 * MIB
    );
    assert_eq!(b.engine.usage().unwrap().workloads.sru, GIB + 512 * MIB);
    // Nobody else sees it.
    assert!(matches!(b.engine.get(8, 1), Err(EngineError::NotFound(_))));
    assert!(b.engine.list(8).unwrap().is_empty());

    // Update: the volume grows.
    let mut u = d.clone();
    u.version = 1;
    u.signature_requirement.signatures.clear();
    u.workloads[1].version = 1;
    u.workloads[1].data = json!({"size": GIB});
    b.contract_and_sign(&mut u, NODE);
    b.engine.update(7, u.clone()).await.unwrap();
    for _ in 0..200 {
        if b.storage.volume_get("7-1-vol").await.unwrap().unwrap().size == GIB {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(
        b.storage.volume_get("7-1-vol").await.unwrap().unwrap().size,
        GIB
    );

    // Update that shrinks: refused by storage, the volume stays, the state stays ok.
    let mut s = u.clone();
    s.version = 2;
    s.signature_requirement.signatures.clear();
    s.workloads[1].version = 2;
    s.workloads[1].data = json!({"size": 256 * MIB});
    b.contract_and_sign(&mut s, NODE);
    b.engine.update(7, s).await.unwrap();
    for _ in 0..200 {
        if b.engine
            .changes(7, 1)
            .unwrap()
            .iter()
            .any(|e| e.result.state == ResultState::Unchanged)
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(
        b.storage.volume_get("7-1-vol").await.unwrap().unwrap().size,
        GIB
    );
    assert_eq!(
        Bed::state(&b.engine.get(7, 1).unwrap(), "vol"),
        ResultState::Ok
    );

    // Cancel: everything goes, capacity is freed, the deployment disappears.
    b.cancel(1).await;
    assert!(b.storage.disk_list().await.unwrap().is_empty());
    assert!(b.storage.volume_list().await.unwrap().is_empty());
    assert_eq!(b.engine.usage().unwrap(), Usage::default());
}

/// Each refused deployment leaves nothing stored and nothing made.
async fn refused(b: &Bed, source: TwinId, d: Deployment, expect: &str) {
    let err = b.engine.deploy(source, d.clone()).await.unwrap_err();
    assert!(
        err.message().contains(expect),
        "expected {expect:?} in {}",
        err.message()
    );
    assert!(
        b.engine.store().get(d.contract_id).unwrap().is_none(),
        "{expect}: something was stored"
    );
    assert!(b.storage.disk_list().await.unwrap().is_empty());
}

/// Each signer costs the node a grid lookup; a contract costs the sender one on the grid. A
/// deployment without a valid contract is refused before any signer is looked up.
#[tokio::test]
async fn signers_of_a_deployment_without_its_contract_are_never_looked_up() {
    let b = bed();
    let mut d = deployment(11);
    // The owner and 63 twins the grid does not know, each with a signature.
    let signers: Vec<TwinId> = std::iter::once(7).chain(1000..1063).collect();
    d.signature_requirement.requests = signers
        .iter()
        .map(|&twin_id| SignatureRequest {
            twin_id,
            required: false,
            weight: 1,
        })
        .collect();
    for &t in &signers {
        d.sign(NODE, t, &b.user).unwrap();
    }
    refused(&b, 7, d.clone(), "contract 11 does not exist").await;
    // A contract for another node, and one with another hash, are refused the same way.
    b.contract_and_sign(&mut d, NODE + 1);
    refused(&b, 7, d.clone(), "is for node 2").await;
    let used = b
        .grid
        .key_lookups
        .load(std::sync::atomic::Ordering::Relaxed);
    assert_eq!(used, 0, "{used} twin keys looked up for refused contracts");
}

/// A grid the node cannot reach makes a deployment `Unavailable` (try again), naming what it
/// could not check and why; a contract the grid does not have stays a refusal.
#[tokio::test]
async fn an_unreachable_grid_is_unavailable_and_a_missing_contract_forbidden() {
    let b = bed();
    let mut d = deployment(12);
    b.contract_and_sign(&mut d, NODE);
    b.grid
        .unreachable
        .store(true, std::sync::atomic::Ordering::Relaxed);
    let err = b.engine.deploy(7, d.clone()).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Unavailable, "{}", err.message());
    assert!(
        err.message()
            .starts_with("cannot reach the grid to check contract 12: "),
        "{}",
        err.message()
    );
    assert!(b.engine.store().get(12).unwrap().is_none());
    b.grid
        .unreachable
        .store(false, std::sync::atomic::Ordering::Relaxed);
    let mut missing = deployment(13);
    missing.sign(NODE, 7, &b.user).unwrap();
    let err = b.engine.deploy(7, missing).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Forbidden, "{}", err.message());
    b.engine.deploy(7, d).await.unwrap();
}

#[tokio::test]
async fn bad_deployments_are_refused_and_store_nothing() {
    let b = bed();

    let mut tampered = deployment(2);
    b.contract_and_sign(&mut tampered, NODE);
    tampered.workloads[0].data = json!({"size": 2 * GIB});
    tampered.sign(NODE, 7, &b.user).unwrap();
    refused(&b, 7, tampered, "differs from the contract").await;

    let mut elsewhere = deployment(3);
    b.contract_and_sign(&mut elsewhere, NODE + 1);
    elsewhere.sign(NODE, 7, &b.user).unwrap();
    refused(&b, 7, elsewhere, "is for node 2").await;

    let mut unsigned = deployment(4);
    b.contract_and_sign(&mut unsigned, NODE);
    unsigned.signature_requirement.signatures.clear();
    refused(&b, 7, unsigned, "required signature of twin 7 is missing").await;

    let mut light = deployment(5);
    light.signature_requirement.requests.push(SignatureRequest {
        twin_id: 8,
        required: false,
        weight: 5,
    });
    light.signature_requirement.weight_required = 3;
    b.contract_and_sign(&mut light, NODE);
    refused(&b, 7, light, "signed weight 1 is below the required 3").await;

    let mut stranger = deployment(6);
    b.contract_and_sign(&mut stranger, NODE);
    refused(
        &b,
        8,
        stranger,
        "only the deployment's own twin or a twin of its",
    )
    .await;

    let mut greedy = deployment(7);
    greedy.workloads[0].data = json!({"size": 100 * GIB});
    b.contract_and_sign(&mut greedy, NODE);
    refused(&b, 7, greedy, "of SSD asked").await;

    let mut no_contract = deployment(8);
    no_contract.sign(NODE, 7, &b.user).unwrap();
    refused(&b, 7, no_contract, "contract 8 does not exist").await;

    let mut dup = deployment(9);
    dup.workloads[1].name = "disk".into();
    b.contract_and_sign(&mut dup, NODE);
    refused(&b, 7, dup, "used twice").await;
}

/// Twin 8 co-signs twin 7's deployment for another node; twin 7 attaches that co-signature
/// to the same deployment (same hash, its own contract) sent to this node.
#[tokio::test]
async fn co_signature_made_for_another_node_is_refused() {
    let b = bed();
    let cosigner = Identity::from_seed([8; 32]);
    b.grid
        .twins
        .lock()
        .unwrap()
        .insert(8, cosigner.public_key());
    let mut d = deployment(11);
    d.signature_requirement.requests.push(SignatureRequest {
        twin_id: 8,
        required: true,
        weight: 1,
    });
    d.signature_requirement.weight_required = 2;
    let mut for_other = d.clone();
    for_other.sign(NODE + 1, 8, &cosigner).unwrap();
    b.contract_and_sign(&mut d, NODE);
    d.signature_requirement
        .signatures
        .extend(for_other.signature_requirement.signatures);
    refused(
        &b,
        7,
        d.clone(),
        "twin 8's signature does not match this deployment on node 1",
    )
    .await;
    // Signed for this node, the same deployment is taken.
    d.sign(NODE, 8, &cosigner).unwrap();
    b.engine.deploy(7, d).await.unwrap();
}

/// A group deployment (twins 7, 8 and 9, two of three): the node counts the signed weight
/// whoever delivers it. Too little weight is refused even from a co-signer; a co-signer may
/// deliver a fully signed one (and follow it, and send its update); a twin outside the
/// requirement may not deliver it, however well signed.
#[tokio::test]
async fn a_co_signer_delivers_only_what_enough_weight_signed() {
    let b = bed();
    let cosigner = Identity::from_seed([8; 32]);
    let third = Identity::from_seed([9; 32]);
    let outsider = Identity::from_seed([10; 32]);
    for (twin, id) in [(8, &cosigner), (9, &third), (10, &outsider)] {
        b.grid.twins.lock().unwrap().insert(twin, id.public_key());
    }
    let mut d = deployment(21);
    for twin in [8, 9] {
        d.signature_requirement.requests.push(SignatureRequest {
            twin_id: twin,
            required: false,
            weight: 1,
        });
    }
    d.signature_requirement.weight_required = 2;
    b.contract_and_sign(&mut d, NODE);

    // The owner's signature alone: 1 of 2, refused whoever sends it.
    for source in [7, 8, 9] {
        refused(
            &b,
            source,
            d.clone(),
            "signed weight 1 is below the required 2",
        )
        .await;
    }
    // Fully signed (owner and twin 9): an outsider cannot deliver it…
    d.sign(NODE, 9, &third).unwrap();
    refused(
        &b,
        10,
        d.clone(),
        "only the deployment's own twin or a twin of its",
    )
    .await;
    // …and an outsider's own signature would not count either.
    let mut padded = d.clone();
    padded.sign(NODE, 10, &outsider).unwrap();
    refused(&b, 8, padded, "was not requested").await;
    // Co-signer 8, who did not even sign, delivers what the weight approved.
    b.engine.deploy(8, d.clone()).await.unwrap();
    let got = b.settled(21).await;
    assert_eq!(Bed::state(&got, "disk"), ResultState::Ok);
    // The co-signer follows it; the outsider does not see it.
    assert_eq!(b.engine.get(8, 21).unwrap().contract_id, 21);
    assert!(b.engine.get(10, 21).is_err());

    // An update goes the same way: too little weight is refused from the co-signer…
    let mut next = got.clone();
    next.version = 1;
    next.workloads.retain(|w| w.name == "disk");
    next.signature_requirement.signatures.clear();
    for w in &mut next.workloads {
        w.result = None;
    }
    b.contract_and_sign(&mut next, NODE);
    let err = b.engine.update(8, next.clone()).await.unwrap_err();
    assert!(
        err.message()
            .contains("signed weight 1 is below the required 2"),
        "{}",
        err.message()
    );
    // …an outsider cannot send even a fully signed one, and the co-signer can.
    next.sign(NODE, 8, &cosigner).unwrap();
    let err = b.engine.update(10, next.clone()).await.unwrap_err();
    assert!(err.message().contains("not found"), "{}", err.message());
    b.engine.update(8, next).await.unwrap();
    for _ in 0..200 {
        let d = b.engine.get(7, 21).unwrap();
        if d.version == 1 && d.workloads.len() == 1 {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("the co-signer's update was not applied");
}

/// A signature over the bare hash (the form before decision 0004) is refused with a hint.
#[tokio::test]
async fn signature_of_the_old_form_is_refused_with_a_hint_to_re_sign() {
    let b = bed();
    let mut d = deployment(12);
    b.contract_and_sign(&mut d, NODE);
    d.signature_requirement.signatures[0].signature = b.user.sign(&d.hash().unwrap().0);
    refused(&b, 7, d, "old form").await;
}

#[tokio::test]
async fn a_workload_cannot_change_type_and_replays_are_refused() {
    let b = bed();
    let mut d = deployment(1);
    b.contract_and_sign(&mut d, NODE);
    b.engine.deploy(7, d.clone()).await.unwrap();
    let again = b.engine.deploy(7, d.clone()).await.unwrap_err();
    assert_eq!(again.kind(), ErrorKind::Conflict);
    assert_eq!(
        again.message(),
        "deployment 1 already exists: send an update instead"
    );
    b.settled(1).await;
    let mut u = d.clone();
    u.version = 1;
    u.signature_requirement.signatures.clear();
    u.workloads[0] = workload("disk", WorkloadType::Volume, json!({"size": GIB}));
    u.workloads[0].version = 1;
    b.contract_and_sign(&mut u, NODE);
    let err = b.engine.update(7, u).await.unwrap_err();
    assert!(err.message().contains("cannot become"), "{err}");
    assert_eq!(b.engine.get(7, 1).unwrap().version, 0);
}

#[tokio::test]
async fn unsupported_types_fail_alone() {
    let b = bed();
    let mut d = deployment(1);
    d.workloads.push(workload(
        "db",
        WorkloadType::Zdb,
        json!({"size": GIB, "mode": "user"}),
    ));
    b.engine.config();
    let mut big = b.engine.config().clone();
    big.total.hru = 10 * GIB;
    let engine = Arc::new(Engine::new(
        Arc::new(Store::memory().unwrap()),
        HashMap::from([(
            WorkloadType::Zmount,
            Arc::new(zmount_manager(b.storage.clone())) as Arc<dyn Manager>,
        )]),
        b.grid.clone(),
        watch::channel(Some(NODE)).1,
        big,
    ));
    tokio::spawn(engine.clone().run(b.stop.clone()));
    b.contract_and_sign(&mut d, NODE);
    engine.deploy(7, d).await.unwrap();
    let mut got = None;
    for _ in 0..200 {
        let d = engine.get(7, 1).unwrap();
        if d.workloads
            .iter()
            .all(|w| w.result.as_ref().unwrap().state != ResultState::Init)
        {
            got = Some(d);
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let got = got.expect("settles");
    assert_eq!(Bed::state(&got, "disk"), ResultState::Ok);
    let db = got
        .workloads
        .iter()
        .find(|w| w.name == "db")
        .unwrap()
        .result
        .clone()
        .unwrap();
    assert_eq!(db.state, ResultState::Error);
    assert!(
        db.message.contains("not supported on this node yet"),
        "{}",
        db.message
    );
}

#[tokio::test]
async fn pause_and_resume() {
    let b = bed();
    let mut d = deployment(1);
    b.contract_and_sign(&mut d, NODE);
    b.engine.deploy(7, d).await.unwrap();
    b.settled(1).await;
    b.engine
        .handle_event(&NodeEvent::GracePeriodStarted { contract_id: 1 })
        .unwrap();
    let mut paused = false;
    for _ in 0..200 {
        let d = b.engine.get(7, 1).unwrap();
        if d.workloads
            .iter()
            .all(|w| w.result.as_ref().unwrap().state == ResultState::Paused)
        {
            paused = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(paused);
    b.engine
        .handle_event(&NodeEvent::GracePeriodEnded { contract_id: 1 })
        .unwrap();
    for _ in 0..200 {
        let d = b.engine.get(7, 1).unwrap();
        if d.workloads
            .iter()
            .all(|w| w.result.as_ref().unwrap().state == ResultState::Ok)
        {
            let r = d.workloads[0].result.as_ref().unwrap();
            assert_eq!(
                r.data,
                json!({"volume_id": "7-1-disk"}),
                "result data survives a pause"
            );
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("never resumed");
}

#[tokio::test]
async fn a_restart_finishes_work_and_reconciles_without_duplicates() {
    let store = Arc::new(Store::memory().unwrap());
    let storage = Arc::new(MemoryStorage::new(&[("ssd1", DiskKind::Ssd, 10 * GIB)], 0));
    let grid = Arc::new(FakeGrid::default());
    // A deployment stored, with its job queued, but never run (the node died right after).
    let b = bed_with(store.clone(), storage.clone(), grid.clone(), None);
    b.stop.cancel();
    let mut d = deployment(1);
    b.contract_and_sign(&mut d, NODE);
    store.create(&d, 1).unwrap();
    // Half done: the disk exists, its result was never written.
    storage.disk_create("7-1-disk", GIB).await.unwrap();
    drop(b);

    let b = bed_with(store.clone(), storage.clone(), grid, None);
    assert!(b.engine.jobs_pending().unwrap(), "the job of the dead node");
    assert!(b.engine.ok_workloads().unwrap().is_empty());
    b.engine.reconcile().unwrap();
    b.settled(1).await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    // What zosd tells zos-init's health gate: reconcile finished, the ok workloads by id.
    for _ in 0..500 {
        if !b.engine.jobs_pending().unwrap() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(!b.engine.jobs_pending().unwrap(), "the queue drained");
    assert_eq!(
        b.engine.ok_workloads().unwrap(),
        ["7-1-disk".to_string(), "7-1-vol".to_string()].into()
    );
    let log = b.engine.changes(7, 1).unwrap();
    for name in ["disk", "vol"] {
        let oks = log
            .iter()
            .filter(|e| e.name == name && e.result.state == ResultState::Ok)
            .count();
        assert_eq!(oks, 1, "{name} is ok exactly once: {log:?}");
    }
    assert_eq!(storage.disk_list().await.unwrap().len(), 1);
    assert_eq!(storage.volume_list().await.unwrap().len(), 1);
}

#[tokio::test]
async fn a_limited_node_takes_nothing() {
    let b = bed_with(
        Arc::new(Store::memory().unwrap()),
        Arc::new(MemoryStorage::new(&[("ssd1", DiskKind::Ssd, 10 * GIB)], 0)),
        Arc::new(FakeGrid::default()),
        Some("no ssd disk".into()),
    );
    let mut d = deployment(1);
    b.contract_and_sign(&mut d, NODE);
    refused(&b, 7, d, "takes no deployments: no ssd disk").await;
}

mod network {
    use super::*;
    use zos_net::{Call, Networker, PublicSetup, RecordingNetworker};
    use zos_types::registry::{FarmIp, PublicConfig};

    fn key(b: u8) -> String {
        use base64::Engine as _;
        base64::engine::general_purpose::STANDARD.encode([b; 32])
    }

    fn net_data(port: u16) -> serde_json::Value {
        json!({
            "ip_range": "10.20.0.0/16",
            "subnet": "10.20.2.0/24",
            "wireguard_private_key": key(1),
            "wireguard_listen_port": port,
            "peers": [{
                "subnet": "10.20.3.0/24",
                "wireguard_public_key": key(2),
                "allowed_ips": ["10.20.3.0/24"],
                "endpoint": "192.0.2.3:4000",
            }],
        })
    }

    struct NetBed {
        bed: Bed,
        net: Arc<RecordingNetworker>,
    }

    async fn net_bed() -> NetBed {
        let net = Arc::new(RecordingNetworker::new("t"));
        net.setup_node(Some(PublicSetup {
            config: PublicConfig {
                ipv4: "198.51.100.2/24".parse().unwrap(),
                gw4: "198.51.100.1".parse().unwrap(),
                ipv6: None,
                gw6: None,
                domain: None,
            },
            exit_iface: "eth1".into(),
        }))
        .await
        .unwrap();
        let grid = Arc::new(FakeGrid::default());
        let user = Identity::from_seed([9; 32]);
        grid.twins.lock().unwrap().insert(7, user.public_key());
        let mut managers: HashMap<WorkloadType, Arc<dyn Manager>> = HashMap::new();
        managers.insert(
            WorkloadType::Network,
            Arc::new(NetworkManager::new(net.clone())),
        );
        managers.insert(
            WorkloadType::Ip,
            Arc::new(IpManager::new(net.clone(), grid.clone())),
        );
        let cfg = EngineConfig {
            total: Capacity {
                cru: 4,
                mru: 8 * GIB,
                sru: 10 * GIB,
                hru: 0,
            },
            reserved: Capacity::default(),
            limited: None,
        };
        let engine = Arc::new(Engine::new(
            Arc::new(Store::memory().unwrap()),
            managers,
            grid.clone(),
            watch::channel(Some(NODE)).1,
            cfg,
        ));
        let stop = CancellationToken::new();
        tokio::spawn(engine.clone().run(stop.clone()));
        NetBed {
            bed: Bed {
                engine,
                grid,
                storage: Arc::new(MemoryStorage::new(&[("ssd1", DiskKind::Ssd, GIB)], 0)),
                user,
                stop,
            },
            net,
        }
    }

    fn net_deployment(contract: ContractId, port: u16, ips: bool) -> Deployment {
        let mut d = deployment(contract);
        d.workloads = vec![workload("mynet", WorkloadType::Network, net_data(port))];
        if ips {
            d.workloads
                .push(workload("pub", WorkloadType::Ip, json!({"v4": true})));
        }
        d
    }

    /// A contract reserving `ips` addresses of the farm's pool.
    fn contract_with_ips(b: &Bed, d: &mut Deployment, ips: &[&str]) {
        b.contract_and_sign(d, NODE);
        let mut contracts = b.grid.contracts.lock().unwrap();
        let k = contracts.get_mut(&d.contract_id).unwrap();
        if let ContractKind::Node {
            public_ips,
            public_ips_list,
            ..
        } = &mut k.kind
        {
            *public_ips = ips.len() as u32;
            *public_ips_list = ips
                .iter()
                .map(|ip| FarmIp {
                    ip: ip.parse().unwrap(),
                    gateway: "198.51.100.1".parse().unwrap(),
                    contract_id: Some(d.contract_id),
                })
                .collect();
        }
    }

    fn data(d: &Deployment, name: &str) -> serde_json::Value {
        d.workloads
            .iter()
            .find(|w| w.name == name)
            .unwrap()
            .result
            .as_ref()
            .unwrap()
            .data
            .clone()
    }

    #[tokio::test]
    async fn network_and_public_ip_live_and_die_with_the_deployment() {
        let nb = net_bed().await;
        let b = &nb.bed;
        let mut d = net_deployment(1, 4000, true);
        contract_with_ips(b, &mut d, &["198.51.100.10/24"]);
        b.engine.deploy(7, d.clone()).await.unwrap();
        let got = b.settled(1).await;
        assert_eq!(Bed::state(&got, "mynet"), ResultState::Ok);
        assert_eq!(Bed::state(&got, "pub"), ResultState::Ok);
        let n = data(&got, "mynet");
        assert_eq!(n["wireguard_listen_port"], 4000);
        assert_eq!(n["gateway"], "10.20.2.1");
        let ip = data(&got, "pub");
        assert_eq!(ip["ip"], "198.51.100.10/24");
        assert_eq!(ip["gateway"], "198.51.100.1");
        assert_eq!(nb.net.wireguard_ports().await.unwrap(), vec![4000]);
        assert_eq!(
            nb.net.public_ips().await.unwrap(),
            vec!["198.51.100.10".parse::<std::net::Ipv4Addr>().unwrap()]
        );

        // A restart provisions again: the same address, no second setup.
        b.engine.reconcile().unwrap();
        tokio::time::sleep(Duration::from_millis(200)).await;
        let setups = nb
            .net
            .calls()
            .iter()
            .filter(|c| matches!(c, Call::SetupPublicIp { .. }))
            .count();
        assert_eq!(setups, 1);
        assert_eq!(data(&b.engine.get(7, 1).unwrap(), "pub")["ip"], ip["ip"]);

        // Cancel: the network and the address go.
        b.cancel(1).await;
        assert!(nb.net.wireguard_ports().await.unwrap().is_empty());
        assert!(nb.net.public_ips().await.unwrap().is_empty());
        assert!(nb.net.network_info(7, "mynet").await.unwrap().is_none());
    }

    #[tokio::test]
    async fn refused_network_changes_leave_the_network_as_it_was() {
        let nb = net_bed().await;
        let b = &nb.bed;
        let mut d = net_deployment(1, 4000, false);
        b.contract_and_sign(&mut d, NODE);
        b.engine.deploy(7, d.clone()).await.unwrap();
        b.settled(1).await;
        // Another network of the same twin holds 4001.
        let mut other = net_deployment(2, 4001, false);
        other.workloads[0].name = "other".into();
        b.contract_and_sign(&mut other, NODE);
        b.engine.deploy(7, other).await.unwrap();
        b.settled(2).await;

        let mut u = d.clone();
        u.version = 1;
        u.signature_requirement.signatures.clear();
        u.workloads[0].version = 1;
        u.workloads[0].data = net_data(4001);
        b.contract_and_sign(&mut u, NODE);
        b.engine.update(7, u).await.unwrap();
        let mut refused = None;
        for _ in 0..200 {
            refused = b
                .engine
                .changes(7, 1)
                .unwrap()
                .into_iter()
                .find(|e| e.result.state == ResultState::Unchanged);
            if refused.is_some() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let refused = refused.expect("the port clash is refused");
        assert!(
            refused.result.message.contains("4001 is taken"),
            "{}",
            refused.result.message
        );
        let info = nb.net.network_info(7, "mynet").await.unwrap().unwrap();
        assert_eq!(info.listen_port, 4000);
        assert_eq!(
            Bed::state(&b.engine.get(7, 1).unwrap(), "mynet"),
            ResultState::Ok
        );
    }

    /// A twin makes network resources on a node until the node runs out of namespaces,
    /// bridges and ports: each one counts against the node's memory, and the 17th is refused
    /// with what to do, leaving the 16 as they were.
    #[tokio::test]
    async fn a_twin_cannot_fill_a_node_with_network_resources() {
        use super::super::engine::MAX_NETWORKS_PER_TWIN;
        use super::super::network::NETWORK_RESOURCE_COST;
        let nb = net_bed().await;
        let b = &nb.bed;
        let mut d = deployment(1);
        d.workloads = (0..MAX_NETWORKS_PER_TWIN)
            .map(|i| {
                workload(
                    &format!("net{i}"),
                    WorkloadType::Network,
                    net_data(4000 + i as u16),
                )
            })
            .collect();
        b.contract_and_sign(&mut d, NODE);
        b.engine.deploy(7, d).await.unwrap();
        let got = b.settled(1).await;
        assert!(
            got.workloads
                .iter()
                .all(|w| w.result.as_ref().unwrap().state == ResultState::Ok)
        );
        assert_eq!(
            b.engine.usage().unwrap().workloads.mru,
            MAX_NETWORKS_PER_TWIN as u64 * NETWORK_RESOURCE_COST.mru
        );

        let mut more = deployment(2);
        more.workloads = vec![workload("one_more", WorkloadType::Network, net_data(5000))];
        b.contract_and_sign(&mut more, NODE);
        let e = b.engine.deploy(7, more).await.unwrap_err();
        assert!(
            e.message()
                .contains("twin 7 would have 17 network resources on this node, at most 16"),
            "{e}"
        );
        assert!(b.engine.store().get(2).unwrap().is_none());
        assert_eq!(
            nb.net.wireguard_ports().await.unwrap().len(),
            MAX_NETWORKS_PER_TWIN
        );
    }

    /// An update that adds an ip workload beyond what the contract reserved is refused (a
    /// contract's addresses are fixed), and the deployment stays as it was.
    #[tokio::test]
    async fn an_update_using_more_addresses_than_its_contract_is_refused() {
        let nb = net_bed().await;
        let b = &nb.bed;
        let mut d = net_deployment(1, 4000, true);
        contract_with_ips(b, &mut d, &["198.51.100.10/24"]);
        b.engine.deploy(7, d.clone()).await.unwrap();
        b.settled(1).await;
        let mut u = d.clone();
        u.version = 1;
        u.signature_requirement.signatures.clear();
        u.workloads.push(Workload {
            version: 1,
            ..workload("pub2", WorkloadType::Ip, json!({"v4": true}))
        });
        contract_with_ips(b, &mut u, &["198.51.100.10/24"]);
        let e = b.engine.update(7, u).await.unwrap_err();
        assert!(
            e.message()
                .contains("reserves 1 public IPv4 address(es) but the update uses 2"),
            "{e}"
        );
        assert_eq!(b.engine.get(7, 1).unwrap().version, 0);
    }

    #[tokio::test]
    async fn an_ip_without_a_reserved_address_fails_alone() {
        let nb = net_bed().await;
        let b = &nb.bed;
        let mut d = net_deployment(1, 4000, true);
        contract_with_ips(b, &mut d, &[]);
        // The contract counts one address but its list lost it (the pool changed under it).
        if let Some(Contract {
            kind: ContractKind::Node { public_ips, .. },
            ..
        }) = b.grid.contracts.lock().unwrap().get_mut(&1)
        {
            *public_ips = 1;
        }
        b.engine.deploy(7, d).await.unwrap();
        let got = b.settled(1).await;
        assert_eq!(Bed::state(&got, "mynet"), ResultState::Ok);
        let r = got.workloads[1].result.clone().unwrap();
        assert_eq!(r.state, ResultState::Error);
        assert!(
            r.message.contains("reserved 0 public IPv4"),
            "{}",
            r.message
        );
        assert!(nb.net.public_ips().await.unwrap().is_empty());
    }
}

/// A zmachine manager that records the flist each machine it provisions names.
#[derive(Default)]
struct SeenFlists(Mutex<Vec<String>>);

impl Manager for SeenFlists {
    fn provision<'a>(
        &'a self,
        t: Target<'a>,
    ) -> BoxFuture<'a, Result<serde_json::Value, ManagerError>> {
        if let WorkloadData::Zmachine(m) = t.data {
            self.0.lock().unwrap().push(m.flist.clone());
        }
        Box::pin(async { Ok(json!({})) })
    }
    fn deprovision<'a>(&'a self, _id: &'a WorkloadId) -> BoxFuture<'a, Result<(), ManagerError>> {
        Box::pin(async { Ok(()) })
    }
}

#[tokio::test]
async fn a_hub_reference_reaches_managers_as_the_hub_url_and_stays_signed() {
    struct NoHosts;
    impl zos_mounts::FarmFlistHosts for NoHosts {
        fn hosts(&self) -> BoxFuture<'_, Result<Vec<String>, String>> {
            Box::pin(async { Ok(vec![]) })
        }
    }
    let b = bed();
    let seen = Arc::new(SeenFlists::default());
    let policy =
        zos_mounts::FlistUrlPolicy::new("http://10.9.0.1:8080", Arc::new(NoHosts)).unwrap();
    let engine = Arc::new(
        Engine::new(
            Arc::new(Store::memory().unwrap()),
            HashMap::from([(WorkloadType::Zmachine, seen.clone() as Arc<dyn Manager>)]),
            b.grid.clone(),
            watch::channel(Some(NODE)).1,
            b.engine.config().clone(),
        )
        .with_flist_policy(policy),
    );
    tokio::spawn(engine.clone().run(b.stop.clone()));
    let machine = |flist: &str| {
        json!({"flist": flist, "network": {"interfaces": [{"network": "lan", "ip": "10.20.2.2"}]},
               "compute_capacity": {"cpu": 1, "memory": 256 * MIB}})
    };
    let mut d = deployment(1);
    d.workloads = vec![
        workload("own", WorkloadType::Zmachine, machine("web.fl")),
        workload("other", WorkloadType::Zmachine, machine("1/web.fl")),
    ];
    b.contract_and_sign(&mut d, NODE);
    engine.deploy(7, d).await.unwrap();
    for _ in 0..200 {
        if seen.0.lock().unwrap().len() == 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let mut got = seen.0.lock().unwrap().clone();
    got.sort();
    assert_eq!(
        got,
        [
            "http://10.9.0.1:8080/api/v1/hub/flists/1/web.fl",
            "http://10.9.0.1:8080/api/v1/hub/flists/7/web.fl"
        ]
    );
    // The node keeps the deployment as it was signed.
    let kept = engine.get(7, 1).unwrap();
    assert_eq!(kept.workloads[0].data["flist"], "web.fl");
    assert_eq!(kept.workloads[1].data["flist"], "1/web.fl");
}

/// A zmachine manager whose guests come up when the test says (`up`), printing `console`
/// meanwhile; it counts the machines it removes.
#[derive(Default)]
struct BootingMachines {
    up: std::sync::atomic::AtomicBool,
    console: Mutex<String>,
    removed: std::sync::atomic::AtomicUsize,
}

impl Manager for BootingMachines {
    fn provision<'a>(
        &'a self,
        _t: Target<'a>,
    ) -> BoxFuture<'a, Result<serde_json::Value, ManagerError>> {
        Box::pin(async { Ok(json!({"ip": "10.20.2.2"})) })
    }
    fn readiness<'a>(
        &'a self,
        _id: &'a WorkloadId,
    ) -> BoxFuture<'a, Result<crate::managers::Readiness, ManagerError>> {
        let r = if self.up.load(std::sync::atomic::Ordering::SeqCst) {
            crate::managers::Readiness::Ready
        } else {
            crate::managers::Readiness::Starting {
                console: self.console.lock().unwrap().clone(),
            }
        };
        Box::pin(async move { Ok(r) })
    }
    fn deprovision<'a>(&'a self, _id: &'a WorkloadId) -> BoxFuture<'a, Result<(), ManagerError>> {
        self.removed
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        Box::pin(async { Ok(()) })
    }
}

/// An engine running only `machines` as the zmachine manager, with `wait` for guests to be up,
/// and one machine deployed as contract 1.
async fn booting_bed(machines: Arc<BootingMachines>, wait: Duration) -> (Bed, Arc<Engine>) {
    let b = bed();
    let engine = Arc::new(
        Engine::new(
            Arc::new(Store::memory().unwrap()),
            HashMap::from([(WorkloadType::Zmachine, machines as Arc<dyn Manager>)]),
            b.grid.clone(),
            watch::channel(Some(NODE)).1,
            b.engine.config().clone(),
        )
        .with_ready_wait(wait),
    );
    tokio::spawn(engine.clone().run(b.stop.clone()));
    let mut d = deployment(1);
    d.workloads = vec![workload(
        "web",
        WorkloadType::Zmachine,
        json!({"flist": "https://hub/web.fl",
               "network": {"interfaces": [{"network": "lan", "ip": "10.20.2.2"}]},
               "compute_capacity": {"cpu": 1, "memory": 256 * MIB}}),
    )];
    b.contract_and_sign(&mut d, NODE);
    engine.deploy(7, d).await.unwrap();
    (b, engine)
}

/// Waits (up to 5 s) until the machine `web` of contract 1 is in `state`, and answers its result.
async fn web_in(engine: &Engine, state: ResultState) -> zos_types::deployment::WorkloadResult {
    for _ in 0..500 {
        let d = engine.get(7, 1).unwrap();
        if let Some(r) = &d.workloads[0].result
            && r.state == state
        {
            return r.clone();
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!(
        "web never became {state}: {:?}",
        engine.get(7, 1).unwrap().workloads[0].result
    );
}

#[tokio::test]
async fn a_machine_is_starting_with_its_console_last_line_until_its_guest_is_up() {
    let machines = Arc::new(BootingMachines::default());
    *machines.console.lock().unwrap() =
        "[    0.1] Linux version 6.1\nguest-init: mounting the root\n\n".into();
    let (_b, engine) = booting_bed(machines.clone(), Duration::from_secs(60)).await;

    let r = web_in(&engine, ResultState::Starting).await;
    assert_eq!(r.message, "guest-init: mounting the root");
    assert_eq!(
        r.data["ip"], "10.20.2.2",
        "a starting machine shows its address"
    );
    assert_eq!(
        engine.usage().unwrap().workloads.cru,
        1,
        "a starting machine holds its capacity"
    );

    // What it prints next becomes the message.
    *machines.console.lock().unwrap() += "guest-init: entrypoint starting\n";
    for _ in 0..300 {
        if engine.get(7, 1).unwrap().workloads[0]
            .result
            .as_ref()
            .unwrap()
            .message
            == "guest-init: entrypoint starting"
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let now = web_in(&engine, ResultState::Starting).await;
    assert_eq!(now.message, "guest-init: entrypoint starting");

    machines.up.store(true, std::sync::atomic::Ordering::SeqCst);
    let r = web_in(&engine, ResultState::Ok).await;
    assert_eq!(r.data["ip"], "10.20.2.2");
    assert_eq!(
        machines.removed.load(std::sync::atomic::Ordering::SeqCst),
        0
    );
    // The log tells the story: init, starting (twice), ok.
    let states: Vec<ResultState> = engine
        .changes(7, 1)
        .unwrap()
        .iter()
        .map(|e| e.result.state)
        .collect();
    assert_eq!(
        states,
        [
            ResultState::Init,
            ResultState::Starting,
            ResultState::Starting,
            ResultState::Ok
        ]
    );
}

#[tokio::test]
async fn a_machine_whose_guest_never_comes_up_is_an_error_with_its_console_and_is_removed() {
    let machines = Arc::new(BootingMachines::default());
    *machines.console.lock().unwrap() =
        "Kernel panic - not syncing: VFS: Unable to mount root fs\n".into();
    let (_b, engine) = booting_bed(machines.clone(), Duration::from_millis(300)).await;
    web_in(&engine, ResultState::Starting).await;
    let r = web_in(&engine, ResultState::Error).await;
    assert!(r.message.contains("not up within"), "{}", r.message);
    assert!(
        r.message.contains("Unable to mount root fs"),
        "{}",
        r.message
    );
    assert_eq!(
        machines.removed.load(std::sync::atomic::Ordering::SeqCst),
        1
    );
    assert_eq!(
        engine.usage().unwrap().workloads.cru,
        0,
        "an error holds nothing"
    );
}
