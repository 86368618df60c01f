//! Proposals over real HTTP against a real SQLite file: a group of twins deploys, updates and
//! cancels together. Every refusal is checked to leave the database exactly as it was.

mod common;

use common::TestGrid;
use zos_client::{ClientError, GridClient};
use zos_grid::clock::Clock;
use zos_types::contract::{ContractKind, ContractState, NodeEvent, UpdateNodeContract};
use zos_types::deployment::{
    Deployment, SignatureRequest, SignatureRequirement, Workload, cancel_message, signed_message,
};
use zos_types::proposal::{CreateProposal, Proposal, ProposalFilter, ProposalKind, ProposalState};
use zos_types::registry::Node;
use zos_types::workload::WorkloadType;
use zos_types::{Signature, TwinId};

/// The HTTP status of a refusal.
fn status<T: std::fmt::Debug>(r: Result<T, ClientError>) -> u16 {
    match r {
        Ok(v) => panic!("expected a refusal, got {v:?}"),
        Err(e) => e
            .status()
            .unwrap_or_else(|| panic!("expected an API error, got {e:?}")),
    }
}

/// A one-disk deployment of `twin`, version `version`, asking `requests` (twin, weight) for
/// `required` weight.
fn deployment(
    twin: TwinId,
    version: u32,
    size_gib: u64,
    requests: &[(TwinId, u32)],
    required: u32,
) -> Deployment {
    Deployment {
        version,
        twin_id: twin,
        contract_id: 0,
        metadata: String::new(),
        description: "shared disk".into(),
        signature_requirement: SignatureRequirement {
            requests: requests
                .iter()
                .map(|&(twin_id, weight)| SignatureRequest {
                    twin_id,
                    required: false,
                    weight,
                })
                .collect(),
            weight_required: required,
            signatures: vec![],
        },
        workloads: vec![Workload {
            version,
            name: "data".into(),
            kind: WorkloadType::Zmount,
            data: serde_json::json!({ "size": size_gib << 30 }),
            metadata: String::new(),
            description: String::new(),
            result: None,
        }],
    }
}

struct Group {
    g: TestGrid,
    node: Node,
    node_client: GridClient,
    /// Three twins: the proposer first.
    twins: Vec<GridClient>,
    stranger: GridClient,
}

impl Group {
    async fn start() -> Self {
        let g = TestGrid::start().await;
        let (_, farm) = g.farm("group-farm").await;
        let (node_client, node) = g.node(farm.id).await;
        let mut twins = Vec::new();
        for _ in 0..3 {
            twins.push(g.twin().await.0);
        }
        let stranger = g.twin().await.0;
        Self {
            g,
            node,
            node_client,
            twins,
            stranger,
        }
    }

    fn id(&self, i: usize) -> TwinId {
        self.twins[i].twin_id().unwrap()
    }

    /// Each twin weighs 1.
    fn requests(&self) -> Vec<(TwinId, u32)> {
        (0..3).map(|i| (self.id(i), 1)).collect()
    }

    /// The proposer proposes deploying `d` on the node.
    async fn propose(&self, d: &Deployment) -> Result<Proposal, ClientError> {
        let me = &self.twins[0];
        let sig = me
            .identity()
            .unwrap()
            .sign(&signed_message(self.node.id, &d.hash().unwrap()));
        me.create_proposal(&CreateProposal {
            kind: ProposalKind::Deploy,
            node_id: Some(self.node.id),
            contract_id: None,
            deployment: Some(d.clone()),
            signature: sig,
            lifetime_secs: None,
        })
        .await
    }

    async fn events(&self) -> Vec<NodeEvent> {
        self.node_client
            .node_events(self.node.id, 0)
            .await
            .unwrap()
            .into_iter()
            .map(|r| r.event)
            .collect()
    }
}

#[tokio::test]
async fn two_of_three_deploy_update_and_cancel_together() {
    let gr = Group::start().await;
    let (a, b, c) = (&gr.twins[0], &gr.twins[1], &gr.twins[2]);
    let d = deployment(gr.id(0), 0, 1, &gr.requests(), 2);

    let p = gr.propose(&d).await.unwrap();
    assert_eq!(p.state, ProposalState::Open);
    assert_eq!(p.kind, ProposalKind::Deploy);
    assert_eq!(p.proposer, gr.id(0));
    assert_eq!(p.hash, Some(d.hash().unwrap()));
    assert_eq!(p.signatures.len(), 1, "the proposer's own signature counts");
    assert_eq!(p.contract_id, None);
    assert!(p.expires_at - p.created_at == 7 * 86_400);
    assert!(
        gr.g.client()
            .list_contracts(&Default::default())
            .await
            .unwrap()
            .is_empty()
    );

    // Every named twin sees it; a stranger neither lists nor reads it.
    for t in [a, b, c] {
        let listed = t.list_proposals(&ProposalFilter::default()).await.unwrap();
        assert_eq!(listed.iter().map(|p| p.id).collect::<Vec<_>>(), [p.id]);
    }
    assert!(
        gr.stranger
            .list_proposals(&ProposalFilter::default())
            .await
            .unwrap()
            .is_empty()
    );
    assert_eq!(status(gr.stranger.get_proposal(p.id).await), 403);

    let before = gr.g.dump();
    // A twin outside the requirement cannot sign.
    assert_eq!(status(gr.stranger.sign_proposal(&p).await), 403);
    // A signature over another hash (another deployment, or this one for another node) is
    // refused: the proposal as it was made is the only thing a signature counts for.
    let mut other = p.clone();
    other.hash = Some(
        deployment(gr.id(0), 0, 2, &gr.requests(), 2)
            .hash()
            .unwrap(),
    );
    let e = c.sign_proposal(&other).await.unwrap_err();
    assert_eq!(e.status(), Some(400), "{e}");
    assert!(e.to_string().contains("not over deployment hash"), "{e}");
    let mut elsewhere = p.clone();
    elsewhere.node_id += 1;
    assert_eq!(status(c.sign_proposal(&elsewhere).await), 400);
    // The proposer already voted.
    assert_eq!(status(a.sign_proposal(&p).await), 409);
    assert_eq!(gr.g.dump(), before, "refusals change nothing");

    // The second signature reaches the weight: the contract exists, for the proposer.
    let approved = b.sign_proposal(&p).await.unwrap();
    assert_eq!(approved.state, ProposalState::Approved);
    let contract = approved
        .contract_id
        .expect("an approved deploy names its contract");
    let k = gr.g.client().get_contract(contract).await.unwrap();
    assert_eq!(k.twin_id, gr.id(0));
    assert_eq!(k.state, ContractState::Created);
    let ContractKind::Node {
        node_id,
        deployment_hash,
        ..
    } = k.kind
    else {
        panic!("{k:?}")
    };
    assert_eq!((node_id, deployment_hash), (gr.node.id, d.hash().unwrap()));
    // What goes to the node carries both signatures and verifies as the node checks it.
    let signed = approved.signed_deployment().unwrap();
    assert_eq!(signed.contract_id, contract);
    let keys: Vec<_> = [a, b, c]
        .iter()
        .map(|t| (t.twin_id().unwrap(), t.identity().unwrap().public_key()))
        .collect();
    let key = |t| keys.iter().find(|(id, _)| *id == t).map(|(_, k)| *k);
    signed.verify_signatures(gr.node.id, key).unwrap();
    // Closed: no more votes.
    assert_eq!(status(c.sign_proposal(&p).await), 409);
    assert_eq!(status(c.reject_proposal(p.id, "late").await), 409);

    // The proposer alone can no longer change or cancel the contract.
    let before = gr.g.dump();
    let upd = UpdateNodeContract {
        deployment_hash: deployment(gr.id(0), 1, 2, &gr.requests(), 2)
            .hash()
            .unwrap(),
    };
    let e = a.update_node_contract(contract, &upd).await.unwrap_err();
    assert_eq!(e.status(), Some(403), "{e}");
    assert!(e.to_string().contains("proposal"), "{e}");
    assert_eq!(status(a.cancel_contract(contract).await), 403);
    assert_eq!(gr.g.dump(), before);

    // An update goes through the same twins and weights.
    let mut next = deployment(gr.id(0), 1, 2, &gr.requests(), 2);
    next.contract_id = contract;
    let propose_update = |next: Deployment| {
        let hash = next.hash().unwrap();
        let body = CreateProposal {
            kind: ProposalKind::Update,
            node_id: None,
            contract_id: Some(contract),
            deployment: Some(next),
            signature: a
                .identity()
                .unwrap()
                .sign(&signed_message(gr.node.id, &hash)),
            lifetime_secs: None,
        };
        async move { a.create_proposal(&body).await }
    };
    // Dropping the other twins from the requirement is refused.
    let solo = {
        let mut s = deployment(gr.id(0), 1, 2, &[(gr.id(0), 1)], 1);
        s.contract_id = contract;
        s
    };
    let e = propose_update(solo).await.unwrap_err();
    assert_eq!(e.status(), Some(400), "{e}");
    assert!(e.to_string().contains("governed"), "{e}");
    let u = propose_update(next.clone()).await.unwrap();
    assert_eq!(u.state, ProposalState::Open, "one signature of two");
    assert_eq!(u.node_id, gr.node.id);
    let u = c.sign_proposal(&u).await.unwrap();
    assert_eq!(u.state, ProposalState::Approved);
    assert_eq!(u.contract_id, Some(contract));
    let k = gr.g.client().get_contract(contract).await.unwrap();
    let ContractKind::Node {
        deployment_hash, ..
    } = k.kind
    else {
        panic!("{k:?}")
    };
    assert_eq!(deployment_hash, next.hash().unwrap());
    assert_eq!(
        gr.events().await,
        [NodeEvent::ContractUpdated {
            contract_id: contract,
            deployment_hash: next.hash().unwrap(),
        }]
    );

    // A cancel: signatures over a deployment hash do not count for it.
    let cancel_sig = a
        .identity()
        .unwrap()
        .sign(&cancel_message(gr.node.id, contract));
    let wrong = a
        .identity()
        .unwrap()
        .sign(&signed_message(gr.node.id, &next.hash().unwrap()));
    let make_cancel = |signature: Signature| CreateProposal {
        kind: ProposalKind::Cancel,
        node_id: None,
        contract_id: Some(contract),
        deployment: None,
        signature,
        lifetime_secs: None,
    };
    let before = gr.g.dump();
    assert_eq!(status(a.create_proposal(&make_cancel(wrong)).await), 400);
    assert_eq!(gr.g.dump(), before);
    let x = a.create_proposal(&make_cancel(cancel_sig)).await.unwrap();
    assert_eq!(x.kind, ProposalKind::Cancel);
    assert_eq!(x.requests.len(), 3, "a cancel takes the contract's twins");
    assert_eq!(x.weight_required, 2);
    let x = b.sign_proposal(&x).await.unwrap();
    assert_eq!(x.state, ProposalState::Approved);
    let k = gr.g.client().get_contract(contract).await.unwrap();
    assert_eq!(k.state, ContractState::Deleted);
    assert_eq!(
        gr.events().await.last(),
        Some(&NodeEvent::ContractCancelled {
            contract_id: contract
        })
    );

    // The lists filter by state and contract.
    let approved = b
        .list_proposals(&ProposalFilter {
            state: Some(ProposalState::Approved),
            contract_id: Some(contract),
        })
        .await
        .unwrap();
    assert_eq!(approved.len(), 3);
}

#[tokio::test]
async fn one_of_three_does_not_deploy_and_enough_rejections_kill_it() {
    let gr = Group::start().await;
    let (b, c) = (&gr.twins[1], &gr.twins[2]);
    // All three must agree: one rejection leaves too little weight.
    let d = deployment(gr.id(0), 0, 1, &gr.requests(), 3);
    let p = gr.propose(&d).await.unwrap();
    let p2 = b.sign_proposal(&p).await.unwrap();
    assert_eq!(p2.state, ProposalState::Open, "two of three is not three");
    let r = c.reject_proposal(p.id, "too big").await.unwrap();
    assert_eq!(r.state, ProposalState::Rejected);
    assert_eq!(r.rejections.len(), 1);
    assert_eq!(r.rejections[0].reason, "too big");
    assert!(
        gr.g.client()
            .list_contracts(&Default::default())
            .await
            .unwrap()
            .is_empty()
    );
    assert_eq!(status(c.sign_proposal(&p).await), 409);

    // Two of three: one rejection leaves it alive, the second kills it; one signature alone
    // never makes a contract.
    let d = deployment(gr.id(0), 0, 2, &gr.requests(), 2);
    let p = gr.propose(&d).await.unwrap();
    let r = b.reject_proposal(p.id, "").await.unwrap();
    assert_eq!(r.state, ProposalState::Open, "twin 3 can still make it");
    let before = gr.g.dump();
    assert_eq!(status(b.sign_proposal(&p).await), 409, "a second vote");
    assert_eq!(
        status(b.reject_proposal(p.id, "").await),
        409,
        "a second vote"
    );
    assert_eq!(status(gr.stranger.reject_proposal(p.id, "").await), 403);
    assert_eq!(gr.g.dump(), before);
    let r = c.reject_proposal(p.id, "no").await.unwrap();
    assert_eq!(r.state, ProposalState::Rejected);
    assert!(
        gr.g.client()
            .list_contracts(&Default::default())
            .await
            .unwrap()
            .is_empty()
    );
}

#[tokio::test]
async fn an_expired_proposal_takes_no_votes() {
    let gr = Group::start().await;
    let a = &gr.twins[0];
    let now = gr.g.clock.now();
    // Made 50 s in the past with the shortest lifetime: it ends 10 s from now.
    gr.g.clock.set(now - 50);
    let d = deployment(gr.id(0), 0, 1, &gr.requests(), 2);
    let p = a
        .create_proposal(&CreateProposal {
            kind: ProposalKind::Deploy,
            node_id: Some(gr.node.id),
            contract_id: None,
            deployment: Some(d.clone()),
            signature: a
                .identity()
                .unwrap()
                .sign(&signed_message(gr.node.id, &d.hash().unwrap())),
            lifetime_secs: Some(60),
        })
        .await
        .unwrap();
    assert_eq!(p.expires_at, now + 10);
    gr.g.clock.set(now + 15);
    let before = gr.g.dump();
    let e = gr.twins[1].sign_proposal(&p).await.unwrap_err();
    assert_eq!(e.status(), Some(409), "{e}");
    assert!(e.to_string().contains("expired"), "{e}");
    assert_eq!(gr.g.dump(), before);
    let shown = gr.twins[1].get_proposal(p.id).await.unwrap();
    assert_eq!(shown.state, ProposalState::Expired);
    let by_state = |state| ProposalFilter {
        state: Some(state),
        contract_id: None,
    };
    let b = &gr.twins[1];
    assert!(
        b.list_proposals(&by_state(ProposalState::Open))
            .await
            .unwrap()
            .is_empty()
    );
    let expired = b
        .list_proposals(&by_state(ProposalState::Expired))
        .await
        .unwrap();
    assert_eq!(expired.iter().map(|p| p.id).collect::<Vec<_>>(), [p.id]);
    assert!(
        gr.g.client()
            .list_contracts(&Default::default())
            .await
            .unwrap()
            .is_empty()
    );
    gr.g.clock.set(now);
}

#[tokio::test]
async fn a_proposal_is_its_proposers_and_signed_by_them() {
    let gr = Group::start().await;
    let (a, b) = (&gr.twins[0], &gr.twins[1]);
    let d = deployment(gr.id(0), 0, 1, &gr.requests(), 2);
    let hash = d.hash().unwrap();
    let body = |signature, deployment: Deployment, node| CreateProposal {
        kind: ProposalKind::Deploy,
        node_id: Some(node),
        contract_id: None,
        deployment: Some(deployment),
        signature,
        lifetime_secs: None,
    };
    let good = a
        .identity()
        .unwrap()
        .sign(&signed_message(gr.node.id, &hash));
    let before = gr.g.dump();
    // Twin b proposes twin a's deployment.
    let by_b = b
        .identity()
        .unwrap()
        .sign(&signed_message(gr.node.id, &hash));
    assert_eq!(
        status(b.create_proposal(&body(by_b, d.clone(), gr.node.id)).await),
        403
    );
    // A signature by another key, or for another node.
    assert_eq!(
        status(a.create_proposal(&body(by_b, d.clone(), gr.node.id)).await),
        400
    );
    let other_node = a
        .identity()
        .unwrap()
        .sign(&signed_message(gr.node.id + 1, &hash));
    assert_eq!(
        status(
            a.create_proposal(&body(other_node, d.clone(), gr.node.id))
                .await
        ),
        400
    );
    // A node that does not exist; a lifetime over 30 days; a requirement without its twin.
    assert_eq!(
        status(
            a.create_proposal(&body(good, d.clone(), gr.node.id + 7))
                .await
        ),
        400
    );
    let mut long = body(good, d.clone(), gr.node.id);
    long.lifetime_secs = Some(31 * 86_400);
    assert_eq!(status(a.create_proposal(&long).await), 400);
    let without_me = deployment(gr.id(0), 0, 1, &[(gr.id(1), 1), (gr.id(2), 1)], 2);
    assert_eq!(
        status(a.create_proposal(&body(good, without_me, gr.node.id)).await),
        400
    );
    // A requirement naming a twin that does not exist.
    let ghost = deployment(gr.id(0), 0, 1, &[(gr.id(0), 1), (9999, 1)], 2);
    let ghost_sig = a
        .identity()
        .unwrap()
        .sign(&signed_message(gr.node.id, &ghost.hash().unwrap()));
    let e = a
        .create_proposal(&body(ghost_sig, ghost, gr.node.id))
        .await
        .unwrap_err();
    assert_eq!(e.status(), Some(400), "{e}");
    assert!(e.to_string().contains("twin 9999 does not exist"), "{e}");
    // A cancel of a contract no proposal made.
    let k = a
        .create_node_contract(&zos_types::contract::CreateNodeContract {
            node_id: gr.node.id,
            deployment_hash: hash,
            public_ips: 0,
        })
        .await
        .unwrap();
    let before_cancel = gr.g.dump();
    let e = a
        .create_proposal(&CreateProposal {
            kind: ProposalKind::Cancel,
            node_id: None,
            contract_id: Some(k.id),
            deployment: None,
            signature: a
                .identity()
                .unwrap()
                .sign(&cancel_message(gr.node.id, k.id)),
            lifetime_secs: None,
        })
        .await
        .unwrap_err();
    assert_eq!(e.status(), Some(409), "{e}");
    assert_eq!(gr.g.dump(), before_cancel);
    assert_ne!(before, before_cancel);
    // The proposals list of everyone stays empty.
    assert!(
        a.list_proposals(&ProposalFilter::default())
            .await
            .unwrap()
            .is_empty()
    );
}

/// Two updates proposed from the same version: the first approved wins, the second can no
/// longer set the contract's hash (it would name a version the node will refuse).
#[tokio::test]
async fn a_stale_update_cannot_be_approved_after_another() {
    let gr = Group::start().await;
    let (a, b) = (&gr.twins[0], &gr.twins[1]);
    let d = deployment(gr.id(0), 0, 1, &gr.requests(), 2);
    let p = gr.propose(&d).await.unwrap();
    let contract = b.sign_proposal(&p).await.unwrap().contract_id.unwrap();
    let update = |size| {
        let mut next = deployment(gr.id(0), 1, size, &gr.requests(), 2);
        next.contract_id = contract;
        let signature = a
            .identity()
            .unwrap()
            .sign(&signed_message(gr.node.id, &next.hash().unwrap()));
        CreateProposal {
            kind: ProposalKind::Update,
            node_id: None,
            contract_id: Some(contract),
            deployment: Some(next),
            signature,
            lifetime_secs: None,
        }
    };
    let first = a.create_proposal(&update(2)).await.unwrap();
    let second = a.create_proposal(&update(3)).await.unwrap();
    assert_eq!(
        b.sign_proposal(&first).await.unwrap().state,
        ProposalState::Approved
    );
    let before = gr.g.dump();
    let e = b.sign_proposal(&second).await.unwrap_err();
    assert_eq!(e.status(), Some(409), "{e}");
    assert!(e.to_string().contains("already updated contract"), "{e}");
    assert_eq!(gr.g.dump(), before);
    let k = gr.g.client().get_contract(contract).await.unwrap();
    let ContractKind::Node {
        deployment_hash, ..
    } = k.kind
    else {
        panic!("{k:?}")
    };
    assert_eq!(Some(deployment_hash), first.hash);
}

/// A proposal carries a whole deployment: its route takes bodies past the registry's 64 KiB, up
/// to a deployment's limit, and refuses larger ones with 413 before reading them whole.
#[tokio::test]
async fn a_proposal_takes_a_deployment_sized_body_and_no_more() {
    let gr = Group::start().await;
    let a = &gr.twins[0];
    let sized = |workloads: usize| {
        let mut d = deployment(gr.id(0), 0, 1, &gr.requests(), 2);
        let disk = d.workloads[0].clone();
        d.workloads = (0..workloads)
            .map(|i| {
                let mut w = disk.clone();
                w.name = format!("disk{i}");
                w.description = "x".repeat(4096);
                w
            })
            .collect();
        let signature = a
            .identity()
            .unwrap()
            .sign(&signed_message(gr.node.id, &d.hash().unwrap()));
        CreateProposal {
            kind: ProposalKind::Deploy,
            node_id: Some(gr.node.id),
            contract_id: None,
            deployment: Some(d),
            signature,
            lifetime_secs: None,
        }
    };
    // About 100 KiB: over the registry's usual limit, well under a deployment's.
    let big = sized(24);
    assert!(serde_json::to_vec(&big).unwrap().len() > zos_types::registry::MAX_BODY_BYTES);
    let p = a.create_proposal(&big).await.unwrap();
    assert_eq!(p.deployment.unwrap().workloads.len(), 24);
    // About 300 KiB: more than any deployment may be.
    let before = gr.g.dump();
    let huge = sized(72);
    assert!(serde_json::to_vec(&huge).unwrap().len() > zos_grid::proposals::MAX_PROPOSAL_BODY);
    assert_eq!(status(a.create_proposal(&huge).await), 413);
    assert_eq!(gr.g.dump(), before);
}
