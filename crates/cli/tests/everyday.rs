//! What a daily user of `zos` meets besides the workflows: output cut short by `head`, shell
//! completion, output formats, contexts, and errors with their exit codes. Each test runs the
//! real binary against real grids (in process, on loopback) or a devnet.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use serde_json::Value;
use zos_testkit::devnet::DevnetGuard;
use zos_testkit::require_root;

/// `zos` run as a user whose home (config, state, key) is a test directory.
struct Zos {
    home: PathBuf,
    grid: Option<String>,
}

impl Zos {
    fn new(home: &Path, grid: Option<&str>) -> Self {
        std::fs::create_dir_all(home).unwrap();
        Self {
            home: home.to_path_buf(),
            grid: grid.map(str::to_string),
        }
    }

    fn key(&self) -> PathBuf {
        self.home.join("key")
    }

    /// The command, with `--grid` when this user has one, and nothing from the test's own
    /// environment that `zos` reads.
    fn cmd(&self, args: &[&str]) -> Command {
        let mut c = Command::new(env!("CARGO_BIN_EXE_zos"));
        c.args(args)
            .env("HOME", &self.home)
            .env("XDG_CONFIG_HOME", self.home.join("config"))
            .env("XDG_STATE_HOME", self.home.join("state"))
            .env_remove("ZOS_GRID")
            .env_remove("ZOS_KEY")
            .env_remove("NO_COLOR")
            .env_remove("RUST_LOG")
            .env("RUST_BACKTRACE", "1");
        if let Some(g) = &self.grid {
            c.args(["--grid", g]);
        }
        c.arg("--key").arg(self.key());
        c
    }

    fn run(&self, args: &[&str]) -> Output {
        self.cmd(args).output().unwrap()
    }

    fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(
            out.status.success(),
            "zos {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }

    fn json(&self, args: &[&str]) -> Value {
        let mut all = args.to_vec();
        all.push("--json");
        serde_json::from_str(&self.ok(&all)).unwrap()
    }

    /// Runs `args` with a stdout whose reader is already gone: every write fails with EPIPE.
    fn closed_stdout(&self, args: &[&str]) -> Output {
        let mut child = self
            .cmd(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        drop(child.stdout.take());
        child.wait_with_output().unwrap()
    }
}

fn assert_quiet_on_closed_stdout(z: &Zos, args: &[&str]) {
    let out = z.closed_stdout(args);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && stderr.is_empty(),
        "zos {args:?} with stdout closed: {:?}, stderr {stderr:?}",
        out.status
    );
}

/// Every command that reads and prints, with its stdout closed (as `zos … | head -c 1` closes
/// it), ends with exit 0 and nothing on stderr: no panic, no "Broken pipe" error.
#[tokio::test(flavor = "multi_thread")]
async fn read_commands_exit_quietly_when_stdout_is_closed() {
    if !require_root("read_commands_exit_quietly_when_stdout_is_closed") {
        return;
    }
    let net = DevnetGuard::up(1, Duration::from_secs(2)).await.unwrap();
    let grid = net.state.grid_url.clone();
    let node = net.state.nodes[0].node_id.unwrap().to_string();
    let tmp = tempfile::tempdir().unwrap();
    let z = Zos::new(&tmp.path().join("home"), Some(&grid));
    z.ok(&["key", "new"]);
    let twin = z.json(&["twin", "create"])["id"].to_string();
    let farm = z.json(&["node", "show", &node])["farm_id"].to_string();
    let file = tmp.path().join("d.yaml");
    std::fs::write(
        &file,
        "workloads:\n  - name: disk\n    type: zmount\n    data: {size: 1G}\n",
    )
    .unwrap();
    let deployed = z.json(&["deploy", file.to_str().unwrap(), "--node", &node]);
    let contract = deployed["contract_id"].to_string();
    // A flist packed to a local store, for inspect.
    let src = tmp.path().join("src");
    std::fs::create_dir_all(&src).unwrap();
    std::fs::write(src.join("hello"), "hello\n").unwrap();
    let fl = tmp.path().join("hello.fl");
    let store = format!("dir://{}", tmp.path().join("store").display());
    z.ok(&[
        "flist",
        "pack",
        src.to_str().unwrap(),
        "-o",
        fl.to_str().unwrap(),
        "--store",
        &store,
    ]);

    let reads: Vec<Vec<&str>> = vec![
        vec!["--help"],
        vec!["node", "--help"],
        vec!["--version"],
        vec!["key", "show"],
        vec!["twin", "show"],
        vec!["twin", "show", &twin],
        vec!["farm", "list"],
        vec!["farm", "show", &farm],
        vec!["farm", "ip", "list", &farm],
        vec!["node", "list"],
        vec!["node", "show", &node],
        vec!["node", "stats", &node],
        vec!["deployment", "list"],
        vec!["deployment", "get", &contract],
        vec!["deployment", "changes", &contract],
        vec!["flist", "inspect", fl.to_str().unwrap()],
        vec!["flist", "list"],
        vec!["network", "list"],
    ];
    for args in &reads {
        assert_quiet_on_closed_stdout(&z, args);
        if !args[0].starts_with("--") && !args.contains(&"--help") {
            let mut json = args.clone();
            json.push("--json");
            assert_quiet_on_closed_stdout(&z, &json);
        }
    }

    // The same through a shell pipeline, as a person types it.
    let out = Command::new("bash")
        .args([
            "-c",
            &format!(
                "set -o pipefail; {} --grid {grid} --key {} node list | head -c 1",
                env!("CARGO_BIN_EXE_zos"),
                z.key().display()
            ),
        ])
        .env("HOME", &z.home)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{:?}: {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(out.stdout, b"I");
    assert!(
        out.stderr.is_empty(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    z.ok(&["deployment", "cancel", &contract]);
}
