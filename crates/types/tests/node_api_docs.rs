//! The node command tables of `docs/deployments.md` and `docs/network.md` are generated from
//! `zos_types::node_api::COMMANDS`: this test fails when a doc's table differs from the
//! table, and rewrites it when run with `ZOS_BLESS=1`. Between them the two docs list every
//! command exactly once.

use std::path::PathBuf;

use zos_types::node_api::{COMMANDS, markdown_table};

const BEGIN: &str = "<!-- node commands: generated from zos_types::node_api::COMMANDS -->\n";
const END: &str = "<!-- end of node commands -->";

/// Which commands each doc lists.
const DOCS: &[(&str, &[&str])] = &[
    (
        "deployments.md",
        &[
            "zos.deployment.",
            "zos.statistics.",
            "zos.storage.",
            "zos.system.",
            "zos.zmachine.",
        ],
    ),
    ("network.md", &["zos.network."]),
];

fn doc(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../docs")
        .join(name)
}

#[test]
fn docs_list_exactly_the_node_commands() {
    let mut listed = 0;
    for (name, prefixes) in DOCS {
        let path = doc(name);
        let text = std::fs::read_to_string(&path).expect("reading the doc");
        let start = text
            .find(BEGIN)
            .unwrap_or_else(|| panic!("docs/{name} has no line {BEGIN:?}"))
            + BEGIN.len();
        let end = start
            + text[start..]
                .find(END)
                .unwrap_or_else(|| panic!("docs/{name} has no line {END:?}"));
        let want = markdown_table(prefixes);
        listed += want.lines().count() - 2;
        if text[start..end] == want {
            continue;
        }
        if std::env::var_os("ZOS_BLESS").is_some() {
            let fixed = format!("{}{want}{}", &text[..start], &text[end..]);
            std::fs::write(&path, fixed).expect("writing the doc");
            continue;
        }
        panic!(
            "docs/{name}'s node command table is stale: run `ZOS_BLESS=1 cargo test -p zos-types \
             --test node_api_docs` to rewrite it from COMMANDS\nwant:\n{want}\nfound:\n{}",
            &text[start..end]
        );
    }
    assert_eq!(listed, COMMANDS.len(), "each command is in exactly one doc");
}
