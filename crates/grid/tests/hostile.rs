//! Hostile requests, crafted with raw HTTP. Each must get the expected 4xx, a JSON error that
//! names the problem, and leave every table of the database exactly as it was.

mod common;

use common::{TestGrid, auth_header, error_message, raw, registration};
use serde_json::json;
use zos_grid::clock::Clock;
use zos_types::Identity;
use zos_types::auth::{MAX_SKEW_SECS, Signer, unix_now};
use zos_types::registry::MAX_BODY_BYTES;

/// A grid with a farmer (twin + farm) and a registered node, and the identities behind them.
struct World {
    g: TestGrid,
    farmer: Identity,
    farmer_twin: u32,
    farm_id: u32,
    node: Identity,
    node_twin: u32,
    node_id: u32,
}

async fn world() -> World {
    let g = TestGrid::start().await;
    let (farmer_client, farm) = g.farm("hostile-farm").await;
    let (node_client, node) = g.node(farm.id).await;
    World {
        farmer: farmer_client.identity().unwrap().clone(),
        farmer_twin: farm.twin_id,
        farm_id: farm.id,
        node: node_client.identity().unwrap().clone(),
        node_twin: node.twin_id,
        node_id: node.id,
        g,
    }
}

/// Sends a request and checks the status, that the error message contains `needle`, and that
/// the database is unchanged.
async fn refused(
    w: &World,
    method: &str,
    path: &str,
    body: Vec<u8>,
    auth: Option<&str>,
    expected: u16,
    needle: &str,
) {
    let before = w.g.dump();
    let (status, answer) = raw(&w.g.url(), method, path, body, auth).await;
    let message = error_message(&answer);
    assert_eq!(status, expected, "{method} {path}: {message}");
    assert!(
        message.to_lowercase().contains(&needle.to_lowercase()),
        "{method} {path}: expected {needle:?} in {message:?}"
    );
    assert_eq!(w.g.dump(), before, "{method} {path} changed the database");
}

fn farm_body(name: &str) -> Vec<u8> {
    serde_json::to_vec(&json!({ "name": name })).unwrap()
}

#[tokio::test]
async fn missing_signature_is_refused() {
    let w = world().await;
    refused(
        &w,
        "POST",
        "/api/v1/farms",
        farm_body("new-farm"),
        None,
        401,
        "missing authorization",
    )
    .await;
    refused(
        &w,
        "POST",
        "/api/v1/farms",
        farm_body("new-farm"),
        Some("Bearer abc"),
        401,
        "malformed",
    )
    .await;
}

#[tokio::test]
async fn bad_signature_is_refused() {
    let w = world().await;
    let body = farm_body("new-farm");
    let good = auth_header(
        &w.farmer,
        Signer::Twin(w.farmer_twin),
        "POST",
        "/api/v1/farms",
        unix_now(),
        &body,
    );
    // Flip one hex digit of the signature.
    let mut bad = good.into_bytes();
    let last = bad.len() - 1;
    bad[last] = if bad[last] == b'0' { b'1' } else { b'0' };
    let bad = String::from_utf8(bad).unwrap();
    refused(
        &w,
        "POST",
        "/api/v1/farms",
        body.clone(),
        Some(&bad),
        401,
        "signature does not match",
    )
    .await;
    // A signature over another body.
    let other = auth_header(
        &w.farmer,
        Signer::Twin(w.farmer_twin),
        "POST",
        "/api/v1/farms",
        unix_now(),
        &farm_body("other-farm"),
    );
    refused(
        &w,
        "POST",
        "/api/v1/farms",
        body,
        Some(&other),
        401,
        "signature does not match",
    )
    .await;
}

#[tokio::test]
async fn a_signature_by_another_twin_is_refused() {
    let w = world().await;
    let path = format!("/api/v1/nodes/{}/uptime", w.node_id);
    let body = serde_json::to_vec(&json!({"uptime_secs": 10, "timestamp": unix_now()})).unwrap();
    // The farmer signs but claims to be the node's twin: the signature is not the node's.
    let forged = auth_header(
        &w.farmer,
        Signer::Twin(w.node_twin),
        "POST",
        &path,
        unix_now(),
        &body,
    );
    refused(
        &w,
        "POST",
        &path,
        body.clone(),
        Some(&forged),
        401,
        "signature does not match",
    )
    .await;
    // The farmer signs as itself: authenticated, but not the node.
    let honest = auth_header(
        &w.farmer,
        Signer::Twin(w.farmer_twin),
        "POST",
        &path,
        unix_now(),
        &body,
    );
    refused(
        &w,
        "POST",
        &path,
        body.clone(),
        Some(&honest),
        403,
        &format!("is not node {}", w.node_id),
    )
    .await;
    // The node signs an IP for the farmer's pool: authenticated, not the farmer.
    let ip_path = format!("/api/v1/farms/{}/ips", w.farm_id);
    let ip_body =
        serde_json::to_vec(&json!({"ip": "185.69.166.20/24", "gateway": "185.69.166.1"})).unwrap();
    let by_node = auth_header(
        &w.node,
        Signer::Twin(w.node_twin),
        "POST",
        &ip_path,
        unix_now(),
        &ip_body,
    );
    refused(
        &w,
        "POST",
        &ip_path,
        ip_body,
        Some(&by_node),
        403,
        "is not the farmer",
    )
    .await;
    // A twin that does not exist.
    let ghost = auth_header(
        &w.farmer,
        Signer::Twin(4242),
        "POST",
        &path,
        unix_now(),
        &body,
    );
    refused(
        &w,
        "POST",
        &path,
        body,
        Some(&ghost),
        401,
        "twin 4242 does not exist",
    )
    .await;
}

#[tokio::test]
async fn stale_timestamps_in_the_past_and_future_are_refused() {
    let w = world().await;
    let now = w.g.clock.now();
    let body = farm_body("new-farm");
    for ts in [
        now - MAX_SKEW_SECS - 1,
        now + MAX_SKEW_SECS + 1,
        0,
        i64::MIN,
        i64::MAX,
    ] {
        let header = auth_header(
            &w.farmer,
            Signer::Twin(w.farmer_twin),
            "POST",
            "/api/v1/farms",
            ts,
            &body,
        );
        refused(
            &w,
            "POST",
            "/api/v1/farms",
            body.clone(),
            Some(&header),
            401,
            "timestamp",
        )
        .await;
    }
    // The edge of the window is still accepted.
    let header = auth_header(
        &w.farmer,
        Signer::Twin(w.farmer_twin),
        "POST",
        "/api/v1/farms",
        now - MAX_SKEW_SECS,
        &body,
    );
    let (status, _) = raw(&w.g.url(), "POST", "/api/v1/farms", body, Some(&header)).await;
    assert_eq!(status, 201);
}

#[tokio::test]
async fn a_replayed_request_is_refused() {
    let w = world().await;
    let body = farm_body("replayed-farm");
    let header = auth_header(
        &w.farmer,
        Signer::Twin(w.farmer_twin),
        "POST",
        "/api/v1/farms",
        unix_now(),
        &body,
    );
    let (status, first) = raw(
        &w.g.url(),
        "POST",
        "/api/v1/farms",
        body.clone(),
        Some(&header),
    )
    .await;
    assert_eq!(status, 201, "{first}");
    refused(
        &w,
        "POST",
        "/api/v1/farms",
        body.clone(),
        Some(&header),
        401,
        "already received",
    )
    .await;
    // Also when the first use was refused by the handler (after the signature was checked).
    let uptime_path = format!("/api/v1/nodes/{}/uptime", w.node_id);
    let uptime = serde_json::to_vec(&json!({"uptime_secs": 5, "timestamp": unix_now()})).unwrap();
    let header = auth_header(
        &w.node,
        Signer::Twin(w.node_twin),
        "POST",
        &uptime_path,
        unix_now(),
        &uptime,
    );
    let (status, _) = raw(
        &w.g.url(),
        "POST",
        &uptime_path,
        uptime.clone(),
        Some(&header),
    )
    .await;
    assert_eq!(status, 200);
    refused(
        &w,
        "POST",
        &uptime_path,
        uptime,
        Some(&header),
        401,
        "already received",
    )
    .await;
}

/// Signs `body` as the farmer for `POST /api/v1/farms` and expects a refusal.
async fn farm_refused(w: &World, body: Vec<u8>, expected: u16, needle: &str) {
    let header = auth_header(
        &w.farmer,
        Signer::Twin(w.farmer_twin),
        "POST",
        "/api/v1/farms",
        unix_now(),
        &body,
    );
    refused(
        w,
        "POST",
        "/api/v1/farms",
        body,
        Some(&header),
        expected,
        needle,
    )
    .await;
}

/// Signs `body` as the node for `POST /api/v1/nodes` and expects a refusal.
async fn registration_refused(w: &World, body: Vec<u8>, expected: u16, needle: &str) {
    let header = auth_header(
        &w.node,
        Signer::Twin(w.node_twin),
        "POST",
        "/api/v1/nodes",
        unix_now(),
        &body,
    );
    refused(
        w,
        "POST",
        "/api/v1/nodes",
        body,
        Some(&header),
        expected,
        needle,
    )
    .await;
}

/// A farm policy with hosts that are not host names, too many hosts, an unknown admission
/// mode or unknown fields is refused and changes nothing; so is one sent by another twin.
#[tokio::test]
async fn bad_farm_policies_are_refused() {
    let w = world().await;
    let path = format!("/api/v1/farms/{}/policy", w.farm_id);
    let put = |body: serde_json::Value, who: (&Identity, u32)| {
        let body = serde_json::to_vec(&body).unwrap();
        let header = auth_header(who.0, Signer::Twin(who.1), "PUT", &path, unix_now(), &body);
        (body, header)
    };
    let farmer = (&w.farmer, w.farmer_twin);
    for (body, needle) in [
        (
            json!({"flist_hosts": ["http://evil.example"]}),
            "flist_hosts[0]",
        ),
        (json!({"flist_hosts": ["Evil.Example"]}), "flist_hosts[0]"),
        (json!({"flist_hosts": vec!["h"; 17]}), "more than 16"),
        (json!({"node_admission": "anyone"}), "node_admission"),
        (
            json!({"rentable": true, "owner": 1}),
            "unknown field `owner`",
        ),
    ] {
        let (body, header) = put(body, farmer);
        refused(&w, "PUT", &path, body, Some(&header), 400, needle).await;
    }
    let (body, header) = put(json!({"rentable": true}), (&w.node, w.node_twin));
    refused(
        &w,
        "PUT",
        &path,
        body,
        Some(&header),
        403,
        "is not the farmer",
    )
    .await;
}

#[tokio::test]
async fn malformed_json_is_refused() {
    let w = world().await;
    farm_refused(&w, b"{\"name\": ".to_vec(), 400, "invalid JSON body").await;
    farm_refused(&w, b"not json at all".to_vec(), 400, "invalid JSON body").await;
    farm_refused(&w, Vec::new(), 400, "invalid JSON body").await;
    farm_refused(&w, b"{\"name\": 7}".to_vec(), 400, "name").await;
}

#[tokio::test]
async fn unknown_fields_are_refused() {
    let w = world().await;
    farm_refused(
        &w,
        serde_json::to_vec(&json!({"name": "new-farm", "owner": 1})).unwrap(),
        400,
        "unknown field `owner`",
    )
    .await;
    let mut reg = serde_json::to_value(registration(w.farm_id)).unwrap();
    reg["hardware"]["bios"] = json!("x");
    registration_refused(
        &w,
        serde_json::to_vec(&reg).unwrap(),
        400,
        "hardware.bios: unknown field `bios`",
    )
    .await;
}

#[tokio::test]
async fn oversize_body_is_refused() {
    let w = world().await;
    let huge = format!("{{\"name\": \"{}\"}}", "a".repeat(MAX_BODY_BYTES));
    farm_refused(&w, huge.into_bytes(), 413, "larger than").await;
}

#[tokio::test]
async fn duplicate_farm_name_is_refused() {
    let w = world().await;
    farm_refused(&w, farm_body("HOSTILE-farm"), 409, "taken").await;
    farm_refused(&w, farm_body("Hostile-Farm"), 409, "taken").await;
}

#[tokio::test]
async fn invalid_farm_name_is_refused() {
    let w = world().await;
    farm_refused(&w, farm_body("x"), 400, "name:").await;
    farm_refused(&w, farm_body("bad name"), 400, "name:").await;
}

#[tokio::test]
async fn negative_capacity_is_refused() {
    let w = world().await;
    let mut reg = serde_json::to_value(registration(w.farm_id)).unwrap();
    reg["capacity"]["cru"] = json!(-1);
    registration_refused(&w, serde_json::to_vec(&reg).unwrap(), 400, "capacity.cru").await;
}

#[tokio::test]
async fn absurd_capacity_is_refused() {
    let w = world().await;
    let mut reg = registration(w.farm_id);
    reg.capacity.mru = u64::MAX;
    registration_refused(&w, serde_json::to_vec(&reg).unwrap(), 400, "capacity: mru").await;
    let mut reg = registration(w.farm_id);
    reg.reserved.sru = reg.capacity.sru + 1;
    registration_refused(&w, serde_json::to_vec(&reg).unwrap(), 400, "reserved").await;
    let mut reg = registration(w.farm_id);
    reg.report_interval_secs = 0;
    registration_refused(
        &w,
        serde_json::to_vec(&reg).unwrap(),
        400,
        "report_interval_secs",
    )
    .await;
}

#[tokio::test]
async fn twin_creation_signed_by_a_different_key_is_refused() {
    let w = world().await;
    let newcomer = Identity::generate().unwrap();
    let other = Identity::generate().unwrap();
    let body = serde_json::to_vec(&json!({"public_key": newcomer.public_key()})).unwrap();
    // Signed by another key, which names itself as the signer.
    let header = auth_header(
        &other,
        Signer::Key(other.public_key()),
        "POST",
        "/api/v1/twins",
        unix_now(),
        &body,
    );
    refused(
        &w,
        "POST",
        "/api/v1/twins",
        body.clone(),
        Some(&header),
        403,
        "is not the key that signed",
    )
    .await;
    // Signed by another key that claims to be the newcomer's.
    let header = auth_header(
        &other,
        Signer::Key(newcomer.public_key()),
        "POST",
        "/api/v1/twins",
        unix_now(),
        &body,
    );
    refused(
        &w,
        "POST",
        "/api/v1/twins",
        body.clone(),
        Some(&header),
        401,
        "signature does not match",
    )
    .await;
    // Signed by an existing twin instead of the key.
    let header = auth_header(
        &w.farmer,
        Signer::Twin(w.farmer_twin),
        "POST",
        "/api/v1/twins",
        unix_now(),
        &body,
    );
    refused(
        &w,
        "POST",
        "/api/v1/twins",
        body,
        Some(&header),
        401,
        "key=",
    )
    .await;
}

#[tokio::test]
async fn a_bare_key_cannot_act_as_a_twin() {
    let w = world().await;
    let body = farm_body("keyed-farm");
    let header = auth_header(
        &w.farmer,
        Signer::Key(w.farmer.public_key()),
        "POST",
        "/api/v1/farms",
        unix_now(),
        &body,
    );
    refused(
        &w,
        "POST",
        "/api/v1/farms",
        body,
        Some(&header),
        401,
        "registered twin",
    )
    .await;
}

#[tokio::test]
async fn bad_uptime_reports_are_refused() {
    let w = world().await;
    let path = format!("/api/v1/nodes/{}/uptime", w.node_id);
    let now = w.g.clock.now();
    for (body, needle) in [
        (
            json!({"uptime_secs": 10, "timestamp": now - 3600}),
            "timestamp",
        ),
        (
            json!({"uptime_secs": u64::MAX, "timestamp": now}),
            "uptime_secs",
        ),
        (json!({"uptime_secs": -5, "timestamp": now}), "uptime_secs"),
    ] {
        let body = serde_json::to_vec(&body).unwrap();
        let header = auth_header(
            &w.node,
            Signer::Twin(w.node_twin),
            "POST",
            &path,
            unix_now(),
            &body,
        );
        refused(&w, "POST", &path, body, Some(&header), 400, needle).await;
    }
}

#[tokio::test]
async fn unknown_routes_methods_and_parameters_answer_json_errors() {
    let w = world().await;
    refused(
        &w,
        "GET",
        "/api/v1/nothing",
        Vec::new(),
        None,
        404,
        "no route",
    )
    .await;
    refused(
        &w,
        "PATCH",
        "/api/v1/farms",
        Vec::new(),
        None,
        405,
        "does not take PATCH",
    )
    .await;
    refused(
        &w,
        "GET",
        "/api/v1/nodes/abc",
        Vec::new(),
        None,
        400,
        "invalid path",
    )
    .await;
    refused(
        &w,
        "GET",
        "/api/v1/nodes?color=red",
        Vec::new(),
        None,
        400,
        "unknown field `color`",
    )
    .await;
    refused(
        &w,
        "GET",
        "/api/v1/twins?public_key=zz",
        Vec::new(),
        None,
        400,
        "public_key",
    )
    .await;
    refused(
        &w,
        "GET",
        "/api/v1/twins",
        Vec::new(),
        None,
        400,
        "public_key",
    )
    .await;
    let path = format!("/api/v1/farms/{}/ips/not-an-ip", w.farm_id);
    let header = auth_header(
        &w.farmer,
        Signer::Twin(w.farmer_twin),
        "DELETE",
        &path,
        unix_now(),
        b"",
    );
    refused(
        &w,
        "DELETE",
        &path,
        Vec::new(),
        Some(&header),
        400,
        "is not an IPv4 address",
    )
    .await;
}
