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
        bail!("the deployment file lists no workloads");
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
    d.validate().context("the deployment is not valid")?;
    Ok(d)
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
