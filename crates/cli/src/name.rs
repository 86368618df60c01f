//! `zos name …`: gateway names. A `gateway-name-proxy` workload serves `NAME.<node's domain>`
//! only for the twin that holds a live name contract for `NAME` on the grid; these commands
//! take such a contract, list the caller's, and give one up.

use anyhow::Context;
use clap::Subcommand;
use zos_client::{ClientError, GridClient};
use zos_types::TwinId;
use zos_types::contract::{Contract, ContractFilter, ContractKind, ContractState};

use crate::exit::{Failure, Kind};
use crate::global::{Global, signed_client};
use crate::output::{self, Table, outln};

#[derive(Debug, Subcommand)]
pub enum NameCmd {
    /// Take a gateway name: a name contract for NAME, yours until you cancel it.
    ///
    /// A gateway-name-proxy workload with `name: NAME` then serves NAME.<node's domain> on any
    /// node that `zos node list --gateway` lists.
    Create {
        /// 1 to 63 of a-z, A-Z, 0-9, '-', '_'; unique on the grid regardless of case.
        name: String,
    },
    /// Your gateway names (name contracts that are not cancelled).
    List,
    /// Give a name up: cancel your name contract for it. Gateways using it stop serving it.
    Cancel { name: String },
}

/// The name a name contract holds, if `c` is one.
fn name_of(c: &Contract) -> Option<&str> {
    match &c.kind {
        ContractKind::Name { name } => Some(name),
        _ => None,
    }
}

/// The workloads of a deployment file with a gateway for `name`, as `zos name create` shows it.
fn workload_example(name: &str) -> String {
    format!(
        "workloads:\n  \
           - name: gateway\n    \
             type: gateway-name-proxy\n    \
             data: {{ name: {name}, network: lan, backends: [\"http://10.20.3.2:80\"] }}"
    )
}

/// A contract state as the grid writes it: `created`, `grace_period`, `deleted`.
pub fn state_text(s: ContractState) -> &'static str {
    match s {
        ContractState::Created => "created",
        ContractState::GracePeriod => "grace_period",
        ContractState::Deleted => "deleted",
    }
}

/// The live name contracts of `twin`, oldest first.
async fn live_names(c: &GridClient, twin: TwinId) -> anyhow::Result<Vec<Contract>> {
    let all = c
        .list_contracts(&ContractFilter {
            twin_id: Some(twin),
            ..ContractFilter::default()
        })
        .await
        .context("listing your contracts")?;
    Ok(all
        .into_iter()
        .filter(|k| k.state != ContractState::Deleted && name_of(k).is_some())
        .collect())
}

/// The contract among `live` that holds `name`; the grid treats names regardless of case.
fn holding<'a>(live: &'a [Contract], name: &str) -> Option<&'a Contract> {
    live.iter()
        .find(|k| name_of(k).is_some_and(|n| n.eq_ignore_ascii_case(name)))
}

/// What the grid's refusal of `name` means for the person who asked for it.
async fn refusal(c: &GridClient, twin: TwinId, name: &str, e: ClientError) -> anyhow::Error {
    match &e {
        ClientError::Api { status: 409, .. } => {
            let mine = live_names(c, twin).await.ok();
            let text = match mine.as_deref().and_then(|l| holding(l, name)) {
                Some(k) => format!(
                    "you already hold the name {name:?} (contract {}): `zos name list` shows your names",
                    k.id
                ),
                None => format!(
                    "the name {name:?} is taken: another twin holds it; pick another one \
                     (`zos name create OTHER`)"
                ),
            };
            Failure::new(Kind::Refused, text).into()
        }
        ClientError::Api {
            status: 400,
            message,
        } => {
            let rule = message.strip_prefix("name: ").unwrap_or(message);
            Failure::new(
                Kind::Refused,
                format!("{name:?} is not a valid gateway name: {rule}"),
            )
            .into()
        }
        _ => anyhow::Error::new(e).context(format!("creating a name contract for {name:?}")),
    }
}

pub async fn run(cmd: NameCmd, g: &Global) -> anyhow::Result<()> {
    let c = signed_client(g).await?;
    let me = c.twin_id().context("no twin")?;
    match cmd {
        NameCmd::Create { name } => {
            let k = match c.create_name_contract(&name).await {
                Ok(k) => k,
                Err(e) => return Err(refusal(&c, me, &name, e).await),
            };
            if g.structured() {
                return output::json(&k);
            }
            outln!("name {name} taken: contract {}", k.id)?;
            outln!(
                "\nServe it with a gateway-name-proxy workload, deployed on a node that \
                 `zos node list --gateway`\nlists; it answers at {name}.<that node's domain> \
                 and forwards to the backends (here a machine\nat 10.20.3.2 in your network \
                 lan):\n"
            )?;
            outln!("{}", workload_example(&name))?;
            Ok(())
        }
        NameCmd::List => {
            let live = live_names(&c, me).await?;
            if g.structured() {
                return output::json(&live);
            }
            let mut t = Table::new(&["CONTRACT", "NAME", "STATE", "CREATED"]);
            for k in &live {
                t.row(vec![
                    k.id.to_string(),
                    name_of(k).unwrap_or_default().to_string(),
                    state_text(k.state).to_string(),
                    output::when(k.created_at),
                ]);
            }
            t.print()?;
            Ok(())
        }
        NameCmd::Cancel { name } => {
            let live = live_names(&c, me).await?;
            let Some(k) = holding(&live, &name) else {
                return Err(Failure::new(
                    Kind::NotFound,
                    format!(
                        "you hold no name {name:?} (twin {me} has no live name contract for it): \
                         `zos name list` shows your names"
                    ),
                )
                .into());
            };
            let held = name_of(k).unwrap_or_default().to_string();
            let done = c
                .cancel_contract(k.id)
                .await
                .with_context(|| format!("cancelling name contract {}", k.id))?;
            if g.structured() {
                return output::json(&done);
            }
            outln!(
                "name {held} released: contract {} cancelled; gateways using it stop serving it",
                done.id
            )?;
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn name(id: u64, n: &str, state: ContractState) -> Contract {
        Contract {
            id,
            twin_id: 1,
            state,
            kind: ContractKind::Name { name: n.into() },
            created_at: 0,
            updated_at: 0,
        }
    }

    #[test]
    fn the_example_is_a_deployment_file() {
        let d = crate::deployfile::parse(&workload_example("web"), 7).unwrap();
        assert_eq!(d.workloads.len(), 1);
        assert_eq!(
            d.workloads[0].kind,
            zos_types::workload::WorkloadType::GatewayNameProxy
        );
        assert_eq!(d.workloads[0].data["name"], "web");
    }

    #[test]
    fn the_held_name_is_found_regardless_of_case() {
        let live = [
            name(3, "shop", ContractState::Created),
            name(5, "Web", ContractState::GracePeriod),
        ];
        assert_eq!(holding(&live, "web").map(|k| k.id), Some(5));
        assert_eq!(holding(&live, "shop").map(|k| k.id), Some(3));
        assert!(holding(&live, "blog").is_none());
    }
}
