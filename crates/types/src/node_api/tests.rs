//! Unit tests of the protocol: every command's body and answer round-trip in the JSON shape
//! nodes answered before these types, bodies refuse unknown fields, error kinds survive the
//! wire, and unknown commands are not in the table.

use serde_json::{Value, json};

use super::results::*;
use super::*;
use crate::envelope::Reply;

fn deployment() -> Value {
    json!({
        "version": 0, "twin_id": 7, "contract_id": 5, "metadata": "", "description": "d",
        "signature_requirement": {"requests": [], "weight_required": 0, "signatures": []},
        "workloads": [{
            "version": 0, "name": "disk", "type": "zmount", "data": {"size": 1024},
            "metadata": "", "description": "",
            "result": {"created": 1, "state": "ok", "message": "", "data": {"volume_id": "7-5-disk"}}
        }]
    })
}

/// `body` and `answer` read as `C`'s types and write back as the same JSON.
fn round_trip<C: NodeCommand>(body: Value, answer: Value) -> &'static str {
    let b: C::Body = serde_json::from_value(body.clone())
        .unwrap_or_else(|e| panic!("{}: body {body}: {e}", C::NAME));
    assert_eq!(serde_json::to_value(&b).unwrap(), body, "{} body", C::NAME);
    let a: C::Answer = serde_json::from_value(answer.clone())
        .unwrap_or_else(|e| panic!("{}: answer {answer}: {e}", C::NAME));
    assert_eq!(
        serde_json::to_value(&a).unwrap(),
        answer,
        "{} answer",
        C::NAME
    );
    C::NAME
}

#[test]
fn every_command_round_trips_in_its_old_json_shape() {
    let d = deployment();
    let entry = json!({"seq": 3, "name": "disk", "type": "zmount", "version": 0,
        "result": {"created": 1, "state": "ok", "message": "", "data": {"volume_id": "7-5-disk"}}});
    let cap = json!({"cru": 1, "mru": 2, "sru": 3, "hru": 4});
    let peer = json!({"public_key": "k", "endpoint": null, "allowed_ips": ["10.1.2.0/24"],
        "latest_handshake": 0, "rx_bytes": 1, "tx_bytes": 2, "persistent_keepalive": 25});
    let done = [
        round_trip::<Deploy>(d.clone(), Value::Null),
        round_trip::<Update>(d.clone(), Value::Null),
        round_trip::<Get>(json!({"contract_id": 5}), d.clone()),
        round_trip::<Changes>(
            json!({"contract_id": 5, "limit": 2, "cursor": 1}),
            json!([entry]),
        ),
        round_trip::<List>(json!({"limit": 1, "cursor": 4}), json!([d])),
        round_trip::<GetStatistics>(
            Value::Null,
            json!({"total": cap, "used": cap, "system": cap,
                   "users": {"deployments": 1, "workloads": 2}}),
        ),
        round_trip::<Pools>(
            Value::Null,
            json!([{"name": "p", "type": "ssd", "size": 10, "used": 1}]),
        ),
        round_trip::<Version>(Value::Null, json!({"zos": "0.1.0"})),
        round_trip::<GetDiagnostics>(
            Value::Null,
            json!({"healthy": false, "modules": {
                "storage": {"ok": true, "limited": "no SSD"},
                "registrar": {"ok": false, "node_id": 1, "twin_id": 2, "last_report": null,
                              "error": "grid down"},
                "provision": {"ok": true},
                "network": {"ok": true, "error": null}}}),
        ),
        round_trip::<WgPorts>(json!({}), json!([3000, 3001])),
        round_trip::<PublicConfigGet>(
            Value::Null,
            json!({"ipv4": "185.1.2.3/24", "gw4": "185.1.2.1"}),
        ),
        round_trip::<Interfaces>(
            Value::Null,
            json!([{"name": "eth0", "namespace": "host", "mac": "02:00:00:00:00:01",
                    "addrs": ["10.0.0.2/24", "fe80::1/64"]}]),
        ),
        round_trip::<PrivateIps>(
            json!({"network_name": "lan", "cursor": "10.1.2.3"}),
            json!(["10.1.2.4"]),
        ),
        round_trip::<PublicIps>(Value::Null, json!(["185.1.2.4"])),
        round_trip::<Wireguard>(
            json!({"network_name": "lan"}),
            json!({"network": {"netid": "a1b2c3d4e5f6", "twin": 7, "name": "lan",
                "namespace": "n-a1b2", "bridge": "b-a1b2", "wg_ifname": "w-a1b2",
                "wg_public_key": "k", "listen_port": 3000, "backend": "kernel",
                "ip_range": "10.1.0.0/16", "subnet": "10.1.2.0/24", "gateway": "10.1.2.1",
                "pid": null},
              "status": {"ifname": "w-a1b2", "public_key": "k", "listen_port": 3000,
                         "peers": [peer]}}),
        ),
        round_trip::<Console>(
            json!({"contract_id": 5, "name": "web", "bytes": 10}),
            json!({"name": "web", "console": "login:", "truncated": true}),
        ),
    ];
    let table: Vec<&str> = COMMANDS.iter().map(|c| c.name).collect();
    assert_eq!(
        done.to_vec(),
        table,
        "every command of the table is tested here"
    );
}

#[test]
fn bodies_refuse_unknown_fields() {
    let bad = [
        serde_json::from_value::<ContractBody>(json!({"contract_id": 1, "x": 2})).is_err(),
        serde_json::from_value::<ChangesBody>(json!({"contract_id": 1, "seq": 2})).is_err(),
        serde_json::from_value::<Page<u16>>(json!({"limit": 1, "after": 2})).is_err(),
        serde_json::from_value::<NetworkBody>(json!({"network_name": "a", "n": 1})).is_err(),
        serde_json::from_value::<PrivateIpsBody>(json!({"network_name": "a", "x": 1})).is_err(),
        serde_json::from_value::<ConsoleBody>(json!({"contract_id": 1, "name": "a", "b": 1}))
            .is_err(),
        serde_json::from_value::<ContractBody>(json!({"contract_id": -1})).is_err(),
        serde_json::from_value::<Page<u16>>(json!([1])).is_err(),
    ];
    assert_eq!(bad, [true; 8]);
    // Answers accept fields a newer node adds.
    let v: VersionAnswer = serde_json::from_value(json!({"zos": "1", "build": "x"})).unwrap();
    assert_eq!(v.zos, "1");
}

#[test]
fn error_kinds_survive_the_wire_and_old_replies_still_read() {
    let kinds = [
        ErrorKind::NotFound,
        ErrorKind::Forbidden,
        ErrorKind::Invalid,
        ErrorKind::Conflict,
        ErrorKind::Unavailable,
        ErrorKind::Busy,
        ErrorKind::Internal,
    ];
    for kind in kinds {
        let r = Reply::Error(NodeError::new(kind, "why, and what to do"));
        let text = serde_json::to_string(&r).unwrap();
        assert_eq!(
            text,
            format!(
                r#"{{"error":"why, and what to do","kind":"{}"}}"#,
                kind.as_str()
            )
        );
        assert_eq!(serde_json::from_str::<Reply>(&text).unwrap(), r);
        assert_eq!(
            serde_json::to_value(kind).unwrap(),
            json!(kind.as_str()),
            "serde and the wire name agree"
        );
    }
    // A node from before the kinds.
    let old: Reply = serde_json::from_str(r#"{"error":"no such deployment"}"#).unwrap();
    assert_eq!(
        old,
        Reply::Error(NodeError::new(ErrorKind::Internal, "no such deployment"))
    );
    // A kind from a newer node.
    let newer: Reply = serde_json::from_str(r#"{"error":"x","kind":"too_late"}"#).unwrap();
    assert_eq!(
        newer,
        Reply::Error(NodeError::new(ErrorKind::Internal, "x"))
    );
    assert_eq!(
        serde_json::to_string(&Reply::Ok(Value::Null)).unwrap(),
        r#"{"ok":null}"#
    );
    assert_eq!(
        serde_json::from_str::<Reply>(r#"{"ok":null}"#).unwrap(),
        Reply::Ok(Value::Null)
    );
    for bad in [
        r#"{"ok":1,"error":"x"}"#,
        r#"{"ok":1,"extra":2}"#,
        r#"{"error":1}"#,
        r#"{"error":"x","kind":3}"#,
        r#"{"kind":"busy"}"#,
        r#"{}"#,
        r#"[1]"#,
    ] {
        assert!(serde_json::from_str::<Reply>(bad).is_err(), "{bad}");
    }
}

#[test]
fn unknown_commands_are_not_in_the_table() {
    assert!(command("zos.nope").is_none());
    assert_eq!(command(Get::NAME).unwrap().name, "zos.deployment.get");
    let e = NodeError::unknown_command("zos.nope");
    assert_eq!(e.kind, ErrorKind::Invalid);
    assert_eq!(e.to_string(), r#"unknown command "zos.nope""#);
    let mut names: Vec<&str> = COMMANDS.iter().map(|c| c.name).collect();
    names.sort_unstable();
    names.dedup();
    assert_eq!(names.len(), COMMANDS.len(), "no name twice");
}

#[test]
fn paging_reads_and_sets_cursors() {
    let mut b = ChangesBody {
        contract_id: 1,
        limit: None,
        cursor: None,
    };
    Changes::set_cursor(&mut b, 9);
    assert_eq!(Changes::cursor(&b), Some(9));
    assert_eq!(
        serde_json::to_value(b).unwrap(),
        json!({"contract_id": 1, "cursor": 9})
    );
    assert_eq!(
        serde_json::to_value(Page::<u16>::default()).unwrap(),
        json!({})
    );
}

#[test]
fn stored_workload_results_read_as_their_types() {
    let r = |data: Value| WorkloadResult {
        created: 1,
        state: crate::deployment::ResultState::Ok,
        message: String::new(),
        data,
    };
    let z: ZmachineResult = r(json!({"id": "7-5-vm", "ip": "10.1.2.2", "public_ip": "",
        "public_ip6": "", "mode": "vm", "console_url": "file:///var/log/vm.log"}))
    .data_as()
    .unwrap();
    assert_eq!((z.id.as_str(), z.mode.as_str()), ("7-5-vm", "vm"));
    let n: NetworkResult = r(json!({"netid": "ab", "subnet": "10.1.2.0/24",
        "gateway": "10.1.2.1", "wireguard_public_key": "k", "wireguard_listen_port": 3000,
        "backend": "kernel"}))
    .data_as()
    .unwrap();
    assert_eq!(n.wireguard_listen_port, 3000);
    let d: ZmountResult = r(json!({"volume_id": "7-5-disk"})).data_as().unwrap();
    assert_eq!(d.volume_id, "7-5-disk");
    let v: VolumeResult = r(json!({"id": "7-5-vol"})).data_as().unwrap();
    assert_eq!(v.id, "7-5-vol");
    let ip: IpResult = r(
        json!({"ip": "185.1.2.4/24", "gateway": "185.1.2.1", "ip6": "",
        "gateway6": "", "mac": "02:00:00:00:00:01"}),
    )
    .data_as()
    .unwrap();
    assert_eq!(ip.mac, "02:00:00:00:00:01");
    // A failed workload's empty data reads as empty results.
    assert_eq!(
        r(json!({})).data_as::<ZmachineResult>().unwrap(),
        ZmachineResult::default()
    );
    assert!(r(json!({"id": 5})).data_as::<VolumeResult>().is_err());
}

#[test]
fn memory_use_reads_meminfo() {
    let m = MemoryUse::from_meminfo(
        "MemTotal:        3000000 kB\nMemFree:          100 kB\nMemAvailable:    2000000 kB\n",
    )
    .unwrap();
    assert_eq!(m.total, 3_000_000 * 1024);
    assert_eq!(m.used(), 1_000_000 * 1024);
    assert!(MemoryUse::from_meminfo("MemTotal: 1 kB\n").is_none());
    assert!(MemoryUse::from_meminfo("MemTotal: x kB\nMemAvailable: 1 kB\n").is_none());
}
