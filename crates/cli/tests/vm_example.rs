//! `examples/vm.yaml` deploys as it is on a devnet: the farmer publishes the sample web
//! application as the devnet does (`scripts/build-sample.sh --push web.fl`), the file names it
//! `1/web.fl` and leaves the machine's address to `zos deploy`, which picks a free one of `lan`.
//! The machine boots under QEMU (TCG here) and its page is fetched over HTTP from the network's
//! namespace on the node; cancelling leaves nothing.

use std::path::Path;
use std::process::Command;

use zos_testkit::devnet;
use zos_testkit::guest::{VmBed, vm_bed, vm_leftovers, wait_http};
use zos_testkit::require_root;
use zos_testkit::user::nr_netns;

fn repo() -> &'static Path {
    Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../.."))
}

#[tokio::test(flavor = "multi_thread")]
async fn the_example_vm_deploys_verbatim_and_serves_the_sample_page() {
    if !require_root("the_example_vm_deploys_verbatim_and_serves_the_sample_page") {
        return;
    }
    let zos = Path::new(env!("CARGO_BIN_EXE_zos"));
    let VmBed {
        net, user: u, work, ..
    } = vm_bed(1, zos).await;
    let n1 = net.state.nodes[0].clone();
    assert_eq!(
        net.state.farmer_twin, 1,
        "the example names the farmer as twin 1"
    );

    // The farmer publishes the sample as the devnet does.
    let fl = work.path().join("web.fl");
    let out = Command::new(repo().join("scripts/build-sample.sh"))
        .args([
            "--flist",
            fl.to_str().unwrap(),
            "--push",
            devnet::SAMPLE_FLIST,
        ])
        .arg(work.path().join("sample"))
        .env("ZOS_GRID", &net.state.grid_url)
        .env("ZOS_KEY", &net.state.farmer_key)
        .env("ZOS_BIN", zos)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "build-sample.sh: {}",
        String::from_utf8_lossy(&out.stderr)
    );

    // The repository's file, unchanged.
    let example = repo().join("examples/vm.yaml");
    let text = std::fs::read_to_string(&example).unwrap();
    assert!(text.contains("flist: 1/web.fl"), "{text}");
    let node = n1.node_id.unwrap().to_string();
    let (ok, stdout, stderr) = u.zos_raw(&["deploy", example.to_str().unwrap(), "--node", &node]);
    assert!(ok, "zos deploy examples/vm.yaml: {stderr}\n{stdout}");
    eprintln!("{stderr}{stdout}");
    let picked = stderr
        .lines()
        .find_map(|l| l.strip_prefix("web: address ")?.split(' ').next())
        .unwrap_or_else(|| panic!("no address picked in: {stderr}"))
        .to_string();
    assert!(picked.starts_with("10.20.2."), "{picked}");

    let contract: u64 = stderr
        .lines()
        .find_map(|l| l.strip_prefix("contract ")?.split(' ').next()?.parse().ok())
        .unwrap_or_else(|| panic!("no contract in: {stderr}"));
    let d = u.zos(&["deployment", "get", &contract.to_string(), "--json"]);
    let web = d["workloads"]
        .as_array()
        .unwrap()
        .iter()
        .find(|w| w["name"] == "web")
        .unwrap()
        .clone();
    assert_eq!(web["state"], "ok", "{d}");
    assert_eq!(web["data"]["ip"], picked.as_str(), "{web}");

    // The page, over HTTP from the network's namespace on the node.
    let ns = nr_netns(&n1, u.twin(), "lan");
    let page = wait_http(&ns, &format!("{picked}:80"), "/", "Hello from zos", 180).await;
    assert!(page.contains("sample web application flist"), "{page}");

    // Cancel: nothing of the machine is left.
    u.zos(&["deployment", "cancel", &contract.to_string(), "--json"]);
    let vm = format!("{}-{contract}-web", u.twin());
    let left = vm_leftovers(&n1, &vm);
    assert!(left.is_empty(), "{left:?}");
    let list = u.zos(&["deployment", "list", "--json"]);
    let ids: Vec<u64> = list
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|k| k["id"].as_u64())
        .collect();
    assert!(!ids.contains(&contract), "{list}");
}
