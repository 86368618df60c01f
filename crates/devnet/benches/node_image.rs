//! Figures for docs/benchmarks.md ("Node image"): the sizes of the node image of
//! `scripts/build-node.sh` and the blocks its runtime flists share with the VM guest image flist
//! (both content addressed). Run with `cargo bench -p zos-devnet --bench node_image` (builds both
//! images, cached by the hash of their inputs).

use std::collections::HashSet;

use zos_flist::{BlockId, Flist, Kind};
use zos_testkit::guest::{build_guest, build_node};

fn block_ids(fl: &Flist) -> HashSet<BlockId> {
    fl.walk()
        .iter()
        .flat_map(|(_, n)| n.blocks.iter().map(|b| b.id))
        .collect()
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let out = build_node();
    let work = tempfile::tempdir().unwrap();
    let guest_fl = work.path().join("guest.fl");
    let store = format!("dir://{}", work.path().join("blocks").display());
    build_guest(
        &["--flist", guest_fl.to_str().unwrap(), "--store", &store],
        &[],
    );
    let guest = block_ids(&Flist::open(&guest_fl).unwrap());
    let mut node = HashSet::new();
    for name in ["zos-base", "zos"] {
        let fl = Flist::open(&out.join(format!("{name}.fl"))).unwrap();
        let ids = block_ids(&fl);
        let bytes: u64 = fl
            .walk()
            .iter()
            .filter(|(_, n)| n.attrs.kind() == Kind::File)
            .map(|(_, n)| n.attrs.size)
            .sum();
        eprintln!(
            "{name}: {} entries, {} MiB of files, {} blocks, {} shared with the guest image",
            fl.len(),
            bytes >> 20,
            ids.len(),
            ids.intersection(&guest).count()
        );
        node.extend(ids);
    }
    let shared = node.intersection(&guest).count();
    eprintln!(
        "guest image flist: {} blocks; node runtime: {} blocks; shared: {shared}",
        guest.len(),
        node.len()
    );
    eprintln!(
        "{}",
        std::fs::read_to_string(out.join("sizes.txt")).unwrap()
    );
    assert!(
        !guest.is_empty() && !node.is_empty(),
        "nothing was measured"
    );
}
