//! What a daily user of `zos` meets besides the workflows: output cut short by `head`, shell
//! completion, output formats, contexts, and errors with their exit codes. Each test runs the
//! real binary against real grids (in process, on loopback) or a devnet.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use serde_json::Value;
use zos_testkit::cli::ZosCli;
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

impl ZosCli for Zos {
    fn run(&self, args: &[&str]) -> Output {
        self.cmd(args).output().unwrap()
    }
}

/// Runs `args` (a `--watch`), waits for two renders (two lines starting with `header`), then
/// sends SIGINT as Ctrl-C does: the command ends with exit 0 and nothing on stderr.
fn watch_twice_then_interrupt(z: &Zos, args: &[&str], header: &str) {
    let mut child = z
        .cmd(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        use std::io::BufRead;
        for line in std::io::BufReader::new(stdout).lines() {
            if tx.send(line.unwrap()).is_err() {
                break;
            }
        }
    });
    let mut renders = 0;
    while renders < 2 {
        let line = rx
            .recv_timeout(Duration::from_secs(60))
            .unwrap_or_else(|_| panic!("zos {args:?} did not render twice"));
        if line.starts_with(header) {
            renders += 1;
        }
    }
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGINT,
    )
    .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "zos {args:?} after SIGINT: {:?}",
        out.status
    );
    assert!(
        out.stderr.is_empty(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
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

    // --watch on a deployment, as on the node list.
    watch_twice_then_interrupt(
        &z,
        &["deployment", "get", &contract, "--watch", "--every", "1"],
        "NAME ",
    );
    // Its JSON renders too, with the broken pipe handled inside the loop.
    assert_quiet_on_closed_stdout(&z, &["deployment", "get", &contract, "-w", "--json"]);

    z.ok(&["deployment", "cancel", &contract]);
}

/// A grid on loopback, in this process, with its data in `dir`.
async fn grid(dir: &Path) -> zos_grid::RunningGrid {
    zos_grid::start(zos_grid::GridConfig::new(
        "127.0.0.1:0".parse().unwrap(),
        dir.to_path_buf(),
    ))
    .await
    .unwrap()
}

/// A user with a key and a twin on `grid`, and a farm named `farm`.
fn farmer(home: &Path, grid: &str, farm: &str) -> Zos {
    let z = Zos::new(home, Some(grid));
    z.ok(&["key", "new"]);
    z.ok(&["twin", "create"]);
    z.ok(&["farm", "create", farm]);
    z
}

/// `zos completion bash` loads in bash and completes subcommands; zsh and fish scripts and man
/// pages are made; `scripts/install-cli.sh` installs them quietly, and again without change.
#[test]
fn completion_scripts_load_and_complete_and_man_pages_are_made() {
    let tmp = tempfile::tempdir().unwrap();
    let z = Zos::new(&tmp.path().join("home"), None);
    let bash = z.ok(&["completion", "bash"]);
    let script = tmp.path().join("zos.bash");
    std::fs::write(&script, &bash).unwrap();
    let complete = |line: &str| -> Vec<String> {
        let words: Vec<&str> = line.split(' ').collect();
        let out = Command::new("bash")
            .args([
                "--norc",
                "-c",
                &format!(
                    "source {}; complete -p zos >/dev/null || exit 9; \
                     COMP_WORDS=({line}); COMP_CWORD={}; COMP_LINE='{line}'; COMP_POINT={}; \
                     _zos zos '{}' '{}'; printf '%s\\n' \"${{COMPREPLY[@]}}\"",
                    script.display(),
                    words.len() - 1,
                    line.len(),
                    words[words.len() - 1],
                    words[words.len() - 2],
                ),
            ])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "bash: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout)
            .unwrap()
            .lines()
            .map(str::to_string)
            .collect()
    };
    let top = complete("zos dep");
    assert!(top.contains(&"deploy".to_string()), "{top:?}");
    assert!(top.contains(&"deployment".to_string()), "{top:?}");
    let sub = complete("zos node l");
    assert_eq!(sub, vec!["list"], "{sub:?}");
    let out_formats = complete("zos node list --output ");
    for f in ["table", "json", "yaml"] {
        assert!(out_formats.contains(&f.to_string()), "{out_formats:?}");
    }

    assert!(z.ok(&["completion", "zsh"]).contains("#compdef zos"));
    assert!(z.ok(&["completion", "fish"]).contains("complete -c zos"));
    let man = tmp.path().join("man");
    z.ok(&["man", "--dir", man.to_str().unwrap()]);
    for page in [
        "zos.1",
        "zos-node-list.1",
        "zos-context-add.1",
        "zos-deployment-get.1",
    ] {
        let text = std::fs::read_to_string(man.join(page)).unwrap();
        assert!(text.contains(".TH"), "{page} is not a man page");
    }

    // The installer the README's first command runs: quiet, and idempotent.
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../scripts/install-cli.sh");
    let install = || {
        let out = Command::new("bash")
            .arg(&script)
            .arg(env!("CARGO_BIN_EXE_zos"))
            .env("ZOS_COMPLETION_DIR", tmp.path().join("completions"))
            .env("ZOS_MAN_DIR", tmp.path().join("share/man"))
            .output()
            .unwrap();
        assert!(
            out.status.success() && out.stdout.is_empty() && out.stderr.is_empty(),
            "install-cli.sh: {:?} {} {}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    };
    install();
    let completion = tmp.path().join("completions/zos");
    let page = tmp.path().join("share/man/man1/zos-node-list.1");
    assert_eq!(std::fs::read_to_string(&completion).unwrap(), bash);
    let before = (
        std::fs::metadata(&completion).unwrap().modified().unwrap(),
        std::fs::metadata(&page).unwrap().modified().unwrap(),
    );
    install();
    let after = (
        std::fs::metadata(&completion).unwrap().modified().unwrap(),
        std::fs::metadata(&page).unwrap().modified().unwrap(),
    );
    assert_eq!(before, after, "a second install rewrote unchanged files");
}

/// `--output json|yaml` (and `--json`) print data with RFC 3339 times; tables show times
/// relative and absolute; colours appear only on a terminal without NO_COLOR; `--watch` renders
/// again until SIGINT, which ends it with success.
#[tokio::test(flavor = "multi_thread")]
async fn output_formats_colours_times_and_watch() {
    let tmp = tempfile::tempdir().unwrap();
    let g = grid(&tmp.path().join("grid")).await;
    let z = farmer(&tmp.path().join("home"), &g.url(), "alpha-farm");

    let j = z.json(&["twin", "show"]);
    let created = j["created_at"].as_str().expect("created_at is a string");
    assert!(
        created.len() == 20 && created.ends_with('Z') && created.as_bytes()[10] == b'T',
        "{created} is not RFC 3339 UTC"
    );
    let o: Value = serde_json::from_str(&z.ok(&["twin", "show", "-o", "json"])).unwrap();
    assert_eq!(o, j, "-o json and --json print the same");
    let y: Value = serde_saphyr::from_str(&z.ok(&["twin", "show", "--output", "yaml"])).unwrap();
    assert_eq!(y, j, "yaml holds the same data");
    let farms: Value = serde_saphyr::from_str(&z.ok(&["farm", "list", "-o", "yaml"])).unwrap();
    assert_eq!(farms[0]["name"], "alpha-farm");
    let table = z.ok(&["twin", "show"]);
    let line = table.lines().find(|l| l.starts_with("created")).unwrap();
    assert!(
        line.contains(" ago (") || line.contains("just now ("),
        "{line}"
    );
    assert!(line.ends_with(" UTC)"), "{line}");
    assert!(line.contains(&created[..10]), "{line} vs {created}");

    // Colours: none through a pipe; on a terminal (script(1) gives one) only without NO_COLOR.
    for args in [["farm", "list"], ["node", "list"], ["twin", "show"]] {
        for no_color in [None, Some("1")] {
            let mut c = z.cmd(&args);
            if let Some(v) = no_color {
                c.env("NO_COLOR", v);
            }
            let out = c.output().unwrap();
            assert!(out.status.success());
            assert!(!out.stdout.contains(&0x1b), "ESC in piped {args:?}");
        }
    }
    let on_terminal = |no_color: bool| -> Vec<u8> {
        let cmd = format!(
            "{} --grid {} --key {} farm list",
            env!("CARGO_BIN_EXE_zos"),
            g.url(),
            z.key().display()
        );
        let mut c = Command::new("script");
        c.args(["-qec", &cmd, "/dev/null"]).env("HOME", &z.home);
        if no_color {
            c.env("NO_COLOR", "1");
        } else {
            c.env_remove("NO_COLOR");
        }
        let out = c.output().unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(String::from_utf8_lossy(&out.stdout).contains("alpha-farm"));
        out.stdout
    };
    assert!(
        on_terminal(false).contains(&0x1b),
        "no colour on a terminal"
    );
    assert!(
        !on_terminal(true).contains(&0x1b),
        "colour despite NO_COLOR"
    );

    // --watch: two renders, then Ctrl-C (SIGINT) ends it cleanly.
    watch_twice_then_interrupt(&z, &["node", "list", "--watch", "--every", "1"], "ID ");
}

/// Two grids, two contexts: `zos context use` switches the grid (and key) that commands talk
/// to; --context, --grid and ZOS_GRID override the context; the file is private.
#[tokio::test(flavor = "multi_thread")]
async fn contexts_switch_grids() {
    let tmp = tempfile::tempdir().unwrap();
    let (g1, g2) = (
        grid(&tmp.path().join("grid1")).await,
        grid(&tmp.path().join("grid2")).await,
    );
    // One user with a key per grid: a twin on grid 1 with key 1, on grid 2 with key 2.
    let home = tmp.path().join("home");
    let one = farmer(&home.join("one"), &g1.url(), "farm-one");
    let two = farmer(&home.join("two"), &g2.url(), "farm-two");
    let pk = |z: &Zos| z.json(&["key", "show"])["public_key"].clone();
    let (pk1, pk2) = (pk(&one), pk(&two));

    // The user's own zos, with no --grid or --key: only contexts say where to go.
    let me = |args: &[&str]| -> Output {
        Command::new(env!("CARGO_BIN_EXE_zos"))
            .args(args)
            .env("HOME", &home)
            .env("XDG_CONFIG_HOME", home.join("config"))
            .env("XDG_STATE_HOME", home.join("state"))
            .env_remove("ZOS_GRID")
            .env_remove("ZOS_KEY")
            .env_remove("ZOS_CONTEXT")
            .output()
            .unwrap()
    };
    let ok = |args: &[&str]| -> String {
        let out = me(args);
        assert!(
            out.status.success(),
            "zos {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    };
    let json = |args: &[&str]| -> Value {
        let mut all = args.to_vec();
        all.push("--json");
        serde_json::from_str(&ok(&all)).unwrap()
    };
    let key1 = one.key();
    let key2 = two.key();
    ok(&[
        "context",
        "add",
        "one",
        "--grid",
        &g1.url(),
        "--key",
        key1.to_str().unwrap(),
    ]);
    ok(&[
        "context",
        "add",
        "two",
        "--grid",
        &g2.url(),
        "--key",
        key2.to_str().unwrap(),
        "--use",
    ]);
    let list = ok(&["context", "list"]);
    let current: Vec<&str> = list.lines().filter(|l| l.starts_with('*')).collect();
    assert_eq!(current.len(), 1, "{list}");
    assert!(
        current[0].contains("two") && current[0].contains(&g2.url()),
        "{list}"
    );

    // The current context decides the grid and the key.
    assert_eq!(json(&["twin", "show"])["public_key"], pk2);
    assert_eq!(json(&["farm", "list"])[0]["name"], "farm-two");
    ok(&["context", "use", "one"]);
    assert_eq!(json(&["twin", "show"])["public_key"], pk1);
    assert_eq!(json(&["farm", "list"])[0]["name"], "farm-one");
    assert!(ok(&["node", "list"]).starts_with("ID"));
    let shown = json(&["context", "show"]);
    assert_eq!(shown["context"], "one");
    assert_eq!(shown["grid"], g1.url());
    assert_eq!(shown["grid_from"], "the context");

    // --context picks another for one command; --grid and ZOS_GRID beat the context.
    assert_eq!(
        json(&["twin", "show", "--context", "two"])["public_key"],
        pk2
    );
    assert_eq!(
        json(&["farm", "list", "--grid", &g2.url()])[0]["name"],
        "farm-two"
    );
    let out = Command::new(env!("CARGO_BIN_EXE_zos"))
        .args(["farm", "list", "--json"])
        .env("HOME", &home)
        .env("XDG_CONFIG_HOME", home.join("config"))
        .env("ZOS_GRID", g2.url())
        .env_remove("ZOS_KEY")
        .output()
        .unwrap();
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v[0]["name"], "farm-two");
    // Key 1 has no twin on grid 2: the flag's grid with the context's key.
    let out = me(&["twin", "show", "--grid", &g2.url()]);
    assert_eq!(out.status.code(), Some(3));

    // Private: the file 0600 in a 0700 directory.
    use std::os::unix::fs::PermissionsExt;
    let file = home.join("config/zos/contexts.yaml");
    let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&file), 0o600);
    assert_eq!(mode(file.parent().unwrap()), 0o700);

    // Mistakes: unknown names, a name taken, a bad name or URL; remove unsets the current.
    assert_eq!(me(&["context", "use", "three"]).status.code(), Some(3));
    assert_eq!(
        me(&["twin", "show", "--context", "three"]).status.code(),
        Some(3)
    );
    assert_eq!(
        me(&["context", "add", "one", "--grid", &g2.url()])
            .status
            .code(),
        Some(4)
    );
    assert_eq!(
        me(&["context", "add", "a/b", "--grid", &g2.url()])
            .status
            .code(),
        Some(2)
    );
    assert_eq!(
        me(&["context", "add", "x", "--grid", "not a url"])
            .status
            .code(),
        Some(2)
    );
    ok(&["context", "remove", "one"]);
    let after = json(&["context", "list"]);
    assert_eq!(after.as_array().unwrap().len(), 1);
    assert_eq!(after[0]["name"], "two");
    assert_eq!(after[0]["current"], false);
    assert_eq!(json(&["context", "show"])["context"], Value::Null);
}

/// A command with bad input: its arguments, the flags replacing `--grid URL --key FILE` (none:
/// those of the test's user), the exit code, and what the first line of stderr starts with.
type Case<'a> = (Vec<&'a str>, Option<Vec<&'a str>>, i32, &'a str);

/// Each command with bad input: its exit code, and the first line of stderr says what failed.
#[tokio::test(flavor = "multi_thread")]
async fn errors_say_what_failed_with_documented_exit_codes() {
    let tmp = tempfile::tempdir().unwrap();
    let g = grid(&tmp.path().join("grid")).await;
    let z = farmer(&tmp.path().join("home"), &g.url(), "alpha-farm");
    let dir = tmp.path();
    let file = |name: &str, text: &str| -> String {
        let p = dir.join(name);
        std::fs::write(&p, text).unwrap();
        p.display().to_string()
    };
    let unclosed = file("unclosed.yaml", "workloads: [\n");
    let unknown = file(
        "unknown.yaml",
        "workloads:\n  - name: x\n    type: nosuch\n    data: {}\n",
    );
    let missing = dir.join("missing.yaml").display().to_string();
    let not_flist = file("not.fl", "plain text");
    let no_key = dir.join("nokey").display().to_string();
    let bad_key = file("badkey", "garbage");
    let down = "http://127.0.0.1:1".to_string();
    let empty = file("empty.yaml", "workloads: []\n");
    let out_fl = dir.join("out.fl").display().to_string();
    let store = format!("dir://{}", dir.join("store").display());

    let cases: Vec<Case> = vec![
        (
            vec!["devnet", "up", "--name", "zbad", "--vm-nodes", "1"],
            None,
            2,
            "error: --vm-nodes needs --node-image DIR and --release-key FILE",
        ),
        (
            vec!["devnet", "up", "--name", "zbad", "--boot", "floppy"],
            None,
            2,
            "error: invalid value 'floppy'",
        ),
        (
            vec!["node", "show", "abc"],
            None,
            2,
            "error: invalid value 'abc'",
        ),
        (
            vec!["nosuch"],
            None,
            2,
            "error: unrecognized subcommand 'nosuch'",
        ),
        (
            vec!["node", "list", "-o", "xml"],
            None,
            2,
            "error: invalid value 'xml'",
        ),
        (
            vec!["twin", "show", "999"],
            None,
            3,
            "error: grid answered 404: twin 999 does not exist",
        ),
        (
            vec!["node", "show", "999"],
            None,
            3,
            "error: grid answered 404: node 999 does not exist",
        ),
        (
            vec!["node", "stats", "999"],
            None,
            3,
            "error: grid answered 404: node 999 does not exist",
        ),
        (
            vec!["farm", "show", "nosuch"],
            None,
            3,
            "error: no farm named \"nosuch\": `zos farm list`",
        ),
        (
            vec!["farm", "ip", "list", "999"],
            None,
            3,
            "error: grid answered 404: farm 999",
        ),
        (
            vec!["deployment", "get", "999"],
            None,
            3,
            "error: contract 999: grid answered 404",
        ),
        (
            vec!["deployment", "changes", "999"],
            None,
            3,
            "error: contract 999: grid answered 404",
        ),
        (
            vec!["deployment", "cancel", "999"],
            None,
            3,
            "error: contract 999: grid answered 404",
        ),
        (
            vec!["deploy", &missing, "--node", "1"],
            None,
            3,
            "error: reading ",
        ),
        (
            vec!["deploy", &unclosed, "--node", "1"],
            None,
            4,
            "error: the deployment file is not valid",
        ),
        (
            vec!["deploy", &unknown, "--node", "1"],
            None,
            4,
            "error: workload \"x\": type: unknown workload type",
        ),
        (
            vec!["network", "show", "nosuch"],
            None,
            3,
            "error: no network \"nosuch\" made from this machine",
        ),
        (
            vec!["flist", "inspect", &missing],
            None,
            3,
            "error: cannot open flist",
        ),
        (vec!["flist", "inspect", &not_flist], None, 4, "error: "),
        (
            vec!["context", "use", "nosuch"],
            None,
            3,
            "error: no context named \"nosuch\"",
        ),
        (vec!["twin", "create"], None, 4, "error: key "),
        (
            vec!["deploy", &empty, "--node", "1"],
            None,
            4,
            "error: the deployment file lists no workloads",
        ),
        (
            vec!["flist", "pack", &missing, "-o", &out_fl, "--store", &store],
            None,
            3,
            "error: ",
        ),
        (
            vec!["network", "create", "n", "--nodes", "1,1"],
            None,
            2,
            "error: --nodes must list each node once",
        ),
        (
            vec!["farm", "create", "x"],
            None,
            4,
            "error: grid answered 400",
        ),
        (
            vec!["twin", "show"],
            Some(vec!["--key", &no_key]),
            3,
            "error: no key at ",
        ),
        (
            vec!["twin", "show"],
            Some(vec!["--key", &bad_key]),
            1,
            "error: the key file ",
        ),
        (
            vec!["node", "list"],
            Some(vec!["--grid", &down]),
            5,
            "error: cannot reach the grid at http://127.0.0.1:1",
        ),
        (
            vec!["node", "list"],
            Some(vec!["--grid", "not a url"]),
            2,
            "error: invalid grid URL",
        ),
    ];
    for (args, flags, code, first) in &cases {
        let mut c = match flags {
            None => z.cmd(args),
            Some(f) => {
                let mut c = Command::new(env!("CARGO_BIN_EXE_zos"));
                c.args(args)
                    .args(f)
                    .env("HOME", &z.home)
                    .env("XDG_CONFIG_HOME", z.home.join("config"))
                    .env_remove("ZOS_GRID")
                    .env_remove("ZOS_KEY");
                if !f.contains(&"--grid") {
                    c.args(["--grid", &g.url()]);
                }
                c
            }
        };
        let out = c.output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        let line = stderr.lines().next().unwrap_or("");
        assert_eq!(
            out.status.code(),
            Some(*code),
            "zos {args:?} {flags:?}: {stderr}"
        );
        assert!(
            line.starts_with(first),
            "zos {args:?}: first line {line:?}, expected {first:?}"
        );
        assert!(!stderr.contains("panicked"), "{stderr}");
        // What to do next: on the line, or on a hint line after it.
        if *code != 2 && !stderr.contains("`zos ") && !stderr.contains("--") {
            assert!(
                stderr.contains("\nhint: "),
                "zos {args:?} says nothing to do next: {stderr}"
            );
        }
    }
}
