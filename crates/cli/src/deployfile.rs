//! Deployment files: the YAML a person writes, turned into a [`Deployment`].
//!
//! ```yaml
//! description: my app
//! workloads:
//!   - name: data
//!     type: zmount
//!     data: { size: 2G }
//! ```
//!
//! Sizes (`size`, `memory`, `cache` anywhere in `data`) may be written as `512M`, `2G`, `1T`.
//! The CLI fills in versions, the twin, the contract and the signatures.
//!
//! A machine's interface may leave its `ip` out (`interfaces: [{ network: lan }]`): `zos deploy`
//! then picks a free address of that network on the target node before signing
//! (`zos_client::workflow::network::pick_ips`). The file is checked here with a stand-in address in
//! its place; the deployment parsed keeps the `ip` out until it is picked.

use anyhow::{Context, bail};
use serde::Deserialize;
use serde_json::Value;
use zos_types::TwinId;
use zos_types::capacity::parse_bytes;
use zos_types::deployment::{Deployment, SignatureRequest, SignatureRequirement, Workload};
use zos_types::workload::WorkloadType;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    #[serde(default)]
    description: String,
    #[serde(default)]
    metadata: String,
    workloads: Vec<FileWorkload>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileWorkload {
    name: String,
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    data: serde_json::Value,
    #[serde(default)]
    description: String,
    #[serde(default)]
    metadata: String,
}

/// Turns human sizes into bytes in the size-like fields of `data`.
fn sizes(v: &mut Value) -> anyhow::Result<()> {
    match v {
        Value::Object(map) => {
            for (k, val) in map.iter_mut() {
                if matches!(k.as_str(), "size" | "memory" | "cache")
                    && let Value::String(s) = val
                {
                    let bytes = parse_bytes(s)
                        .with_context(|| format!("{k}: {s:?} is not a size like 512M or 2G"))?;
                    *val = Value::from(bytes);
                } else {
                    sizes(val)?;
                }
            }
        }
        Value::Array(items) => {
            for i in items {
                sizes(i)?;
            }
        }
        _ => {}
    }
    Ok(())
}

/// A version-0 deployment of `twin` from the file's text, checked locally.
pub fn parse(text: &str, twin: TwinId) -> anyhow::Result<Deployment> {
    let file: File = serde_saphyr::from_str(text).context("the deployment file is not valid")?;
    if file.workloads.is_empty() {
        bail!(
            "the deployment file lists no workloads: list them under `workloads:` (see examples/)"
        );
    }
    let mut workloads = Vec::new();
    for w in file.workloads {
        let kind: WorkloadType = w
            .kind
            .parse()
            .with_context(|| format!("workload {:?}", w.name))?;
        let mut data = w.data;
        sizes(&mut data).with_context(|| format!("workload {:?}", w.name))?;
        workloads.push(Workload {
            version: 0,
            name: w.name,
            kind,
            data,
            metadata: w.metadata,
            description: w.description,
            result: None,
        });
    }
    let d = Deployment {
        version: 0,
        twin_id: twin,
        contract_id: 0,
        metadata: file.metadata,
        description: file.description,
        signature_requirement: SignatureRequirement {
            requests: vec![SignatureRequest {
                twin_id: twin,
                required: true,
                weight: 1,
            }],
            weight_required: 1,
            signatures: vec![],
        },
        workloads,
    };
    with_stand_in_ips(&d)
        .validate()
        .context("the deployment is not valid")?;
    Ok(d)
}

/// Machine interfaces of `d` that leave `ip` out (or null): (workload, network).
fn missing_ips(d: &Deployment) -> Vec<(usize, usize)> {
    let mut out = Vec::new();
    for (wi, w) in d.workloads.iter().enumerate() {
        if w.kind != WorkloadType::Zmachine {
            continue;
        }
        let nics = w.data["network"]["interfaces"].as_array();
        for (ni, nic) in nics.into_iter().flatten().enumerate() {
            if nic.is_object() && zos_client::workflow::network::leaves_ip_out(nic) {
                out.push((wi, ni));
            }
        }
    }
    out
}

/// `d` with a distinct valid address in each interface that leaves `ip` out, to check the rest.
fn with_stand_in_ips(d: &Deployment) -> Deployment {
    let mut d = d.clone();
    for (k, (wi, ni)) in missing_ips(&d).into_iter().enumerate() {
        let ip = std::net::Ipv4Addr::from(u32::from_be_bytes([10, 255, 0, 2]) + k as u32);
        d.workloads[wi].data["network"]["interfaces"][ni]["ip"] = Value::from(ip.to_string());
    }
    d
}

/// Refuses a deployment that leaves a machine's `ip` out where nothing picks one (an update).
pub fn require_ips(d: &Deployment) -> anyhow::Result<()> {
    if let Some((wi, ni)) = missing_ips(d).first() {
        bail!(
            "workload {:?}: network.interfaces[{ni}].ip is needed in an update (the address the \
             machine has: `zos deployment get CONTRACT`)",
            d.workloads[*wi].name
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const FILE: &str = "description: two disks\nworkloads:\n  - name: data\n    type: zmount\n    data:\n      size: 2G\n  - name: shared\n    type: volume\n    data: {size: 1073741824}\n";

    #[test]
    fn the_examples_are_valid_deployments() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples");
        let mut seen = 0;
        for e in std::fs::read_dir(&dir).unwrap() {
            let p = e.unwrap().path();
            if p.extension().is_some_and(|x| x == "yaml") {
                let text = std::fs::read_to_string(&p).unwrap();
                parse(&text, 1).unwrap_or_else(|e| panic!("{}: {e:#}", p.display()));
                seen += 1;
            }
        }
        assert!(seen >= 3, "examples found: {seen}");
    }

    #[test]
    fn a_machine_may_leave_its_ip_out_for_deploy_to_pick() {
        let machine = |nics: &str| {
            format!(
                "workloads:\n  - name: web\n    type: zmachine\n    data:\n      flist: 1/web.fl\n      network: {{ interfaces: [{nics}] }}\n      compute_capacity: {{ cpu: 1, memory: 512M }}\n"
            )
        };
        let one = machine("{ network: lan }");
        let two = format!(
            "{one}{}",
            &one["workloads:\n".len()..].replace("name: web", "name: api")
        );
        let d = parse(&two, 4).unwrap();
        assert_eq!(missing_ips(&d), vec![(0, 0), (1, 0)]);
        assert_ne!(
            with_stand_in_ips(&d).workloads[0].data["network"]["interfaces"][0]["ip"],
            with_stand_in_ips(&d).workloads[1].data["network"]["interfaces"][0]["ip"]
        );
        assert!(
            d.workloads[0].data["network"]["interfaces"][0]
                .get("ip")
                .is_none()
        );
        let e = require_ips(&d).unwrap_err().to_string();
        assert!(e.contains("network.interfaces[0].ip is needed"), "{e}");
        // `ip: ~` leaves it out too.
        let d = parse(&machine("{ network: lan, ip: ~ }"), 4).unwrap();
        assert_eq!(missing_ips(&d), vec![(0, 0)]);
        let d = parse(&machine("{ network: lan, ip: 10.20.3.2 }"), 4).unwrap();
        assert!(missing_ips(&d).is_empty());
        require_ips(&d).unwrap();
        // The rest of the machine is still checked.
        let e = parse(&machine("{ network: 'bad name' }"), 4).unwrap_err();
        assert!(format!("{e:#}").contains("network"), "{e:#}");
    }

    #[test]
    fn files_parse_with_human_sizes() {
        let d = parse(FILE, 4).unwrap();
        assert_eq!(d.workloads.len(), 2);
        assert_eq!(d.workloads[0].data["size"], 2u64 << 30);
        assert_eq!(d.signature_requirement.requests[0].twin_id, 4);
        assert!(parse("workloads: []\n", 4).is_err());
        assert!(
            parse("workloads:\n  - name: x\n    type: vm\n    data: {}\n", 4)
                .unwrap_err()
                .to_string()
                .contains("workload")
        );
        assert!(parse("surprise: 1\nworkloads: []\n", 4).is_err());
        let e = parse(
            "workloads:\n  - name: x\n    type: zmount\n    data: {size: lots}\n",
            4,
        )
        .unwrap_err();
        assert!(format!("{e:#}").contains("not a size"), "{e:#}");
    }
}
