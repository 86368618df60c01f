//! Supervision on real processes: `sh` and `sleep` started detached.

use super::*;

/// A token no other process carries: test name, our PID, the time.
fn token(what: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!("zos-supervise-{what}-{}-{nanos}", std::process::id())
}

/// Starts `sh -c script token` detached, logging to `log`; the marker is the token.
fn start(script: &str, what: &str, log: &Path) -> (i32, Marker) {
    let t = token(what);
    let mut cmd = Command::new("sh");
    cmd.arg("-c").arg(script).arg(&t);
    let pid = Detach::new(log).spawn(cmd).unwrap();
    let marker = Marker::program("sh").arg(&t);
    // Under load the child may still be the forked test process for a moment.
    let deadline = Instant::now() + Duration::from_secs(5);
    while !alive(pid, &marker) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    assert!(alive(pid, &marker), "{pid} never showed its command line");
    (pid, marker)
}

fn wait_for_log(log: &Path, text: &str) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while !std::fs::read_to_string(log)
        .unwrap_or_default()
        .contains(text)
    {
        assert!(Instant::now() < deadline, "{text:?} never logged");
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn a_detached_child_has_its_own_session_and_logs_both_streams() {
    let d = tempfile::tempdir().unwrap();
    let log = d.path().join("child.log");
    let script = "echo out; echo err >&2; while :; do sleep 0.2; done";
    let (pid, marker) = start(script, "spawn", &log);
    wait_for_log(&log, "err");
    let sid = nix::unistd::getsid(Some(Pid::from_raw(pid))).unwrap();
    assert_eq!(sid.as_raw(), pid, "the child leads a session of its own");
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(text.contains("out") && text.contains("err"), "{text}");
    assert_eq!(
        stop_blocking(pid, &marker, Duration::from_secs(5)),
        Stopped::Terminated
    );
    assert!(!alive(pid, &marker));
}

#[test]
fn a_reused_pid_running_another_command_is_not_ours_and_is_never_signalled() {
    let d = tempfile::tempdir().unwrap();
    let mut cmd = Command::new("sleep");
    cmd.arg("31");
    let pid = Detach::new(d.path().join("log")).spawn(cmd).unwrap();
    let sleeping = Marker::program("sleep").arg("31");
    let deadline = Instant::now() + Duration::from_secs(5);
    while !alive(pid, &sleeping) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    // The PID now runs `sleep 31`: a record naming it with the old marker (a QEMU socket) sees
    // a stranger that happens to hold the number.
    let recorded = Marker::containing("/run/zos/vm/0123456789ab/qmp.sock");
    assert!(!alive(pid, &recorded));
    assert!(
        !alive(pid, &Marker::default()),
        "a bare PID is never enough"
    );
    assert_eq!(
        stop_blocking(pid, &recorded, Duration::from_secs(1)),
        Stopped::NotRunning
    );
    assert!(alive(pid, &sleeping), "the stranger was left alone");
    assert_eq!(
        stop_blocking(pid, &sleeping, Duration::from_secs(5)),
        Stopped::Terminated
    );
    assert!(!alive(pid, &sleeping));
}

#[test]
fn a_process_ignoring_sigterm_is_killed_after_the_grace_period() {
    let d = tempfile::tempdir().unwrap();
    let log = d.path().join("log");
    let script = "trap '' TERM; echo ready; while :; do sleep 0.1; done";
    let (pid, marker) = start(script, "term", &log);
    wait_for_log(&log, "ready");
    let t = Instant::now();
    let grace = Duration::from_millis(500);
    assert_eq!(stop_blocking(pid, &marker, grace), Stopped::Killed);
    assert!(t.elapsed() >= grace, "SIGKILL only after the grace period");
    assert!(!alive(pid, &marker));
    // It was this process's child: stopping it reaped it too (no zombie holds its PID).
    assert!(
        nix::sys::signal::kill(Pid::from_raw(pid), None).is_err(),
        "reaped"
    );
}

#[tokio::test]
async fn a_restarted_supervisor_adopts_its_process_by_marker() {
    let d = tempfile::tempdir().unwrap();
    let (pid, marker) = start(
        "while :; do sleep 0.2; done",
        "adopt",
        &d.path().join("log"),
    );
    assert_eq!(
        adopt(Some(pid), &marker),
        Some(pid),
        "the record still holds"
    );
    // The record was lost, or names a PID now held by another process (init here).
    assert_eq!(adopt(None, &marker), Some(pid));
    assert_eq!(adopt(Some(1), &marker), Some(pid));
    assert_eq!(find(&marker).len(), 1);
    assert_eq!(
        stop(pid, &marker, Duration::from_secs(5)).await,
        Stopped::Terminated
    );
    assert_eq!(adopt(Some(pid), &marker), None);
}

/// A shell's subshell is a fork carrying the same command line: it is not a second copy to
/// adopt (adopting it, or counting two, would make a restart kill the wrong one).
#[test]
fn a_fork_that_has_not_run_its_own_program_is_not_a_second_copy() {
    let d = tempfile::tempdir().unwrap();
    let (pid, marker) = start(
        "(while :; do sleep 0.2; done)",
        "fork",
        &d.path().join("log"),
    );
    let deadline = Instant::now() + Duration::from_secs(5);
    let carriers = || {
        std::fs::read_dir("/proc")
            .unwrap()
            .flatten()
            .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
            .filter(|p| alive(*p, &marker))
            .count()
    };
    while carriers() < 2 {
        assert!(Instant::now() < deadline, "the subshell never started");
        std::thread::sleep(Duration::from_millis(10));
    }
    let found: Vec<i32> = find(&marker).into_iter().map(|(p, _)| p).collect();
    assert_eq!(found, vec![pid]);
    assert_eq!(adopt(None, &marker), Some(pid));
    // The whole session goes: the shell and its subshell.
    let _ = kill(Pid::from_raw(-pid), Signal::SIGKILL);
    let deadline = Instant::now() + Duration::from_secs(5);
    while carriers() > 0 {
        assert!(Instant::now() < deadline, "the session outlived SIGKILL");
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn markers_check_program_arguments_and_last_argument() {
    let argv: Vec<OsString> = ["/usr/bin/zos-flist-mount", "--flist", "/a.fl", "/mnt/x"]
        .iter()
        .map(OsString::from)
        .collect();
    let m = Marker::program("zos-flist-mount").arg("--flist");
    assert!(m.clone().last_arg("/mnt/x").matches(&argv));
    assert!(!m.clone().last_arg("/mnt/y").matches(&argv));
    assert!(!Marker::program("flist").arg("--store").matches(&argv));
    assert!(
        !Marker::program("mnt").matches(&argv),
        "only the program's file name"
    );
    assert!(Marker::containing("a.fl").matches(&argv));
}

#[test]
fn backoff_doubles_up_to_its_cap_and_resets_after_a_long_run() {
    let (min, max) = (Duration::from_millis(100), Duration::from_millis(350));
    let mut b = Backoff::new(min, max);
    let now = Instant::now();
    assert!(!b.pending());
    let waits: Vec<u128> = (0..4).map(|_| b.failed(now).as_millis()).collect();
    assert_eq!(waits, [100, 200, 350, 350]);
    assert!(b.pending() && !b.due(now) && b.due(now + max));
    b.started();
    assert!(!b.pending());
    b.running(Instant::now());
    assert_eq!(b.delay(), max, "a short run keeps the delay");
    b.running(Instant::now() + max * 2);
    assert_eq!(b.delay(), min);
}
