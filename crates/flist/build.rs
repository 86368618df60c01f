//! Generates the reader and builder types of the legacy 0-fs flist schema
//! (`schema/legacy.capnp`) with the Cap'n Proto compiler (Debian package `capnproto`).

fn main() {
    println!("cargo:rerun-if-changed=schema/legacy.capnp");
    if let Err(e) = capnpc::CompilerCommand::new()
        .src_prefix("schema")
        .file("schema/legacy.capnp")
        .default_parent_module(vec!["legacy".into()])
        .run()
    {
        panic!(
            "cannot compile schema/legacy.capnp: {e}; the Cap'n Proto compiler `capnp` is needed \
             (scripts/install-deps.sh installs it: apt-get install capnproto)"
        );
    }
}
