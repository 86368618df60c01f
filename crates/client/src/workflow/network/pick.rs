//! Addresses for machines whose deployment file leaves `ip` out: picked from the network's local
//! record before the deployment is signed, as `zos network free-ip` picks one.

use std::net::Ipv4Addr;

use zos_types::NodeId;
use zos_types::deployment::Deployment;

use super::{NetworkError, NetworkRecord, free_ip_besides};
use crate::GridClient;
use crate::workflow::deploy::DeployEvent;

/// Fills in the address of every machine interface of `d` that leaves `ip` out (or sets it to
/// null, `ip: ~` in YAML): a free address
/// of that network on `node` (not one used there, nor one picked for another interface here),
/// from the network's local record as `record(name)` answers it. Reports each pick; `d` is
/// unchanged when it fails. Run before [`deploy`](super::deploy::deploy) signs `d`.
pub async fn pick_ips(
    c: &GridClient,
    node: NodeId,
    d: &mut Deployment,
    record: impl Fn(&str) -> Result<NetworkRecord, NetworkError>,
    on: &mut (impl FnMut(DeployEvent) + Send),
) -> Result<(), NetworkError> {
    let mut picked: Vec<(usize, usize, String, Ipv4Addr)> = Vec::new();
    for (wi, w) in d.workloads.iter().enumerate() {
        if w.kind != zos_types::workload::WorkloadType::Zmachine {
            continue;
        }
        let nics = w.data["network"]["interfaces"].as_array();
        for (ni, nic) in nics.into_iter().flatten().enumerate() {
            if !leaves_ip_out(nic) {
                continue;
            }
            let net = nic["network"].as_str().unwrap_or_default().to_string();
            let fail = |source| NetworkError::PickIp {
                workload: w.name.clone(),
                network: net.clone(),
                source: Box::new(source),
            };
            let rec = record(&net).map_err(fail)?;
            let taken: Vec<Ipv4Addr> = picked.iter().map(|p| p.3).collect();
            let (ip, _) = free_ip_besides(c, &rec, node, &taken).await.map_err(fail)?;
            picked.push((wi, ni, net, ip));
        }
    }
    for (wi, ni, network, ip) in picked {
        let w = &mut d.workloads[wi];
        w.data["network"]["interfaces"][ni]["ip"] = serde_json::json!(ip);
        tracing::debug!(workload = %w.name, network, %ip, "address picked");
        on(DeployEvent::IpPicked {
            workload: w.name.clone(),
            network,
            ip,
        });
    }
    Ok(())
}

/// Whether a machine interface leaves its address to be picked: no `ip`, or a null one.
pub fn leaves_ip_out(nic: &serde_json::Value) -> bool {
    nic.get("ip").is_none_or(serde_json::Value::is_null)
}

#[cfg(test)]
mod tests {
    use super::leaves_ip_out;

    #[test]
    fn an_interface_without_an_address_or_with_a_null_one_gets_one_picked() {
        let nics = [
            serde_json::json!({"network": "lan"}),
            serde_json::json!({"network": "lan", "ip": null}),
            serde_json::json!({"network": "lan", "ip": "10.20.2.5"}),
        ];
        let left: Vec<bool> = nics.iter().map(leaves_ip_out).collect();
        assert_eq!(left, [true, true, false]);
    }
}
