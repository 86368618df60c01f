//! What every test of the `zos` command line asks of a run: its output when it must succeed, its
//! JSON, its error when it must fail. A test says how to run `zos` (binary, grid, key,
//! environment) in [`ZosCli::run`]; the rest comes with the trait.

use std::process::Output;

use serde_json::Value;

/// Runs `zos` as some user of a test.
pub trait ZosCli {
    /// Runs `zos args` and answers how it ended.
    fn run(&self, args: &[&str]) -> Output;

    /// The standard output of `zos args`, which must succeed.
    fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(
            out.status.success(),
            "zos {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }

    /// The JSON `zos args --json` prints, which must succeed.
    fn json(&self, args: &[&str]) -> Value {
        let mut all = args.to_vec();
        all.push("--json");
        serde_json::from_str(&self.ok(&all)).unwrap()
    }

    /// The standard error of `zos args`, which must fail.
    fn fails(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(!out.status.success(), "zos {args:?} should fail");
        String::from_utf8(out.stderr).unwrap()
    }
}
