//! The node's console screen on a real node: a devnet node's zosd run again with `--console`
//! in a tmux pane (a terminal the test reads), showing the node's id once registered, switching
//! views on keys, logging to its file instead of the screen, and giving the terminal back when
//! stopped. The screen's states one by one are the snapshot tests of `zos-zui`.

use std::process::Command;
use std::time::Duration;

use zos_testkit::devnet::{self, DevnetGuard};
use zos_testkit::process::wait_until;
use zos_testkit::require_root;

/// A tmux server of the test's own (its own socket): killed, with what runs in it, on drop.
struct Tmux {
    socket: String,
}

impl Tmux {
    fn cmd(&self, args: &[&str]) -> std::process::Output {
        Command::new("tmux")
            .arg("-L")
            .arg(&self.socket)
            .args(args)
            .output()
            .expect("tmux runs (scripts/install-deps.sh installs it)")
    }

    fn capture(&self) -> String {
        String::from_utf8_lossy(&self.cmd(&["capture-pane", "-p", "-t", "zui"]).stdout).into_owned()
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        let _ = self.cmd(&["kill-server"]);
    }
}

fn alive(pid: i32) -> bool {
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), None).is_ok()
}

#[tokio::test(flavor = "multi_thread")]
async fn zosd_console_draws_the_node_screen_in_a_terminal() {
    if !require_root("zosd_console_draws_the_node_screen_in_a_terminal") {
        return;
    }
    let mut net = DevnetGuard::up(1, Duration::from_secs(2)).await.unwrap();
    let node = net.state.nodes[0].node_id.expect("the node registered");
    let log = net.state.nodes[0].log.with_extension("console.log");
    devnet::stop_node(&mut net.state, 1, false).unwrap();

    let cmd = devnet::zosd_command(
        &net.state,
        1,
        &["--console", "--log-file", log.to_str().unwrap()],
    )
    .unwrap();
    let tmux = Tmux {
        socket: format!("zos-console-{}", std::process::id()),
    };
    let mut args = vec!["new-session", "-d", "-s", "zui", "-x", "100", "-y", "30"];
    args.extend(cmd.iter().map(String::as_str));
    let out = tmux.cmd(&args);
    assert!(
        out.status.success(),
        "tmux: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let pid: i32 = String::from_utf8_lossy(
        &tmux
            .cmd(&["display", "-p", "-t", "zui", "#{pane_pid}"])
            .stdout,
    )
    .trim()
    .parse()
    .unwrap();

    // The same node, registered again under its id, drawn with its uplink up.
    let want = format!("node {node} · farm {}", net.state.farm_id);
    let screen = wait_until(
        Duration::from_secs(60),
        Duration::from_millis(500),
        || async {
            let s = tmux.capture();
            (s.contains(&want) && s.contains("up for")).then_some(s)
        },
    )
    .await
    .unwrap_or_else(|| {
        panic!(
            "the pane never showed {want:?} with the uplink up:\n{}",
            tmux.capture()
        )
    });
    assert!(screen.contains("Capacity (used / total)"), "{screen}");
    assert!(screen.contains("read-only"), "{screen}");
    assert!(
        !screen.contains(" INFO "),
        "logs stay off the screen:\n{screen}"
    );

    // Keys switch views, and only that.
    for (key, title) in [
        ("2", "┌ Workloads by type and state"),
        ("3", "┌ Last warnings and errors"),
        ("Tab", "┌ Node "),
        ("q", "┌ Node "),
    ] {
        tmux.cmd(&["send-keys", "-t", "zui", key]);
        let seen = wait_until(
            Duration::from_secs(10),
            Duration::from_millis(200),
            || async {
                let s = tmux.capture();
                s.contains(title).then_some(s)
            },
        )
        .await;
        assert!(
            seen.is_some(),
            "after {key}: no {title:?}:\n{}",
            tmux.capture()
        );
        assert!(alive(pid), "a key stopped zosd");
    }
    let logged = std::fs::read_to_string(&log).unwrap();
    assert!(
        logged.contains("zosd starting"),
        "the log file has zosd's logs"
    );

    // Stopped (as Ctrl-C or the service manager would), zosd ends and gives the terminal back.
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    let gone = wait_until(
        Duration::from_secs(30),
        Duration::from_millis(200),
        || async { (!alive(pid)).then_some(()) },
    )
    .await;
    assert!(gone.is_some(), "zosd {pid} did not stop on SIGTERM");
    drop(tmux);
    drop(net);
}
