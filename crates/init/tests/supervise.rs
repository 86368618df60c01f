//! zos-init's supervisor as PID 1 of a new PID namespace (`unshare --pid --fork`), with test
//! services: restart with backoff, reaping of an orphaned grandchild, and a clean stop in
//! reverse order on SIGTERM (in this mode it returns instead of powering off).

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use zos_init::supervise::Event;

/// Kills the `unshare` process (and with it, `--kill-child`, the namespace) if the test fails.
struct Guard(Child);

impl Drop for Guard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn events(path: &std::path::Path) -> Vec<Event> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

fn wait_for(what: &str, limit: Duration, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn the_supervisor_restarts_reaps_and_stops_in_reverse_order() {
    if !zos_testkit::require_root("the_supervisor_restarts_reaps_and_stops_in_reverse_order") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let list = dir.path().join("services.json");
    let ev = dir.path().join("events.jsonl");
    std::fs::write(
        &list,
        serde_json::json!([
            {"name": "crasher", "exec": ["/bin/sh", "-c", "exit 3"]},
            // Leaves an orphan behind: the inner shell exits at once, its sleep lives on.
            {"name": "orphaner", "exec": ["/bin/sh", "-c", "/bin/sh -c '/bin/sleep 0.3 &'; exec /bin/sleep 1000"]},
            {"name": "sleeper", "exec": ["/bin/sleep", "1000"]},
            // Ignores SIGTERM: needs SIGKILL after the grace.
            {"name": "stubborn", "exec": ["/bin/sh", "-c", "trap '' TERM; exec /bin/sleep 1000"]},
        ])
        .to_string(),
    )
    .unwrap();
    let child = Command::new("unshare")
        .args(["--pid", "--fork", "--mount-proc", "--kill-child"])
        .arg(env!("CARGO_BIN_EXE_zos-init"))
        .arg("--supervise")
        .arg(&list)
        .arg("--events")
        .arg(&ev)
        .args(["--backoff-ms", "100,400", "--grace-ms", "500"])
        .stdin(Stdio::null())
        .spawn()
        .unwrap();
    let mut guard = Guard(child);
    let unshare = guard.0.id();

    wait_for(
        "restarts, the orphan and the services",
        Duration::from_secs(60),
        || {
            let e = events(&ev);
            let exits = e
                .iter()
                .filter(|e| matches!(e, Event::Exited { service, .. } if service == "crasher"))
                .count();
            let reaped = e.iter().any(|e| matches!(e, Event::Reaped { .. }));
            let started = |n: &str| {
                e.iter()
                    .any(|e| matches!(e, Event::Started { service, .. } if service == n))
            };
            exits >= 5 && reaped && started("sleeper") && started("stubborn")
        },
    );

    // The namespace's PID 1 is the child of unshare; it gets the power-off signal.
    let children =
        std::fs::read_to_string(format!("/proc/{unshare}/task/{unshare}/children")).unwrap();
    let init: i32 = children.split_whitespace().next().unwrap().parse().unwrap();
    let comm = std::fs::read_to_string(format!("/proc/{init}/comm")).unwrap();
    assert_eq!(comm.trim(), "zos-init");
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(init),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();

    let deadline = Instant::now() + Duration::from_secs(60);
    let status = loop {
        if let Some(s) = guard.0.try_wait().unwrap() {
            break s;
        }
        assert!(Instant::now() < deadline, "the supervisor did not stop");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(status.success(), "{status}");

    let e = events(&ev);
    // Restarts with backoff: 100 ms, doubling, capped at 400 ms.
    let delays: Vec<u64> = e
        .iter()
        .filter_map(|e| match e {
            Event::Exited {
                service,
                restart_ms,
                status,
                ..
            } if service == "crasher" => {
                assert_eq!(status, "exit 3");
                Some(*restart_ms)
            }
            _ => None,
        })
        .collect();
    assert_eq!(&delays[..4], &[100, 200, 400, 400], "{delays:?}");
    // The orphan was reaped by PID 1, and it was none of the services.
    let service_pids: Vec<i32> = e
        .iter()
        .filter_map(|e| match e {
            Event::Started { pid, .. } => Some(*pid),
            _ => None,
        })
        .collect();
    let orphans: Vec<i32> = e
        .iter()
        .filter_map(|e| match e {
            Event::Reaped { pid, status } => {
                assert_eq!(status, "exit 0");
                Some(*pid)
            }
            _ => None,
        })
        .collect();
    assert!(!orphans.is_empty());
    assert!(
        orphans.iter().all(|p| !service_pids.contains(p)),
        "{orphans:?} {service_pids:?}"
    );
    // The stop: asked by SIGTERM, services in reverse order, the stubborn one killed.
    let stop_at = e
        .iter()
        .position(|e| matches!(e, Event::StopRequested { signal } if signal == "SIGTERM"))
        .expect("stop requested");
    let stopped: Vec<(String, String)> = e[stop_at..]
        .iter()
        .filter_map(|e| match e {
            Event::Stopped { service, how } => Some((service.clone(), how.clone())),
            _ => None,
        })
        .collect();
    let names: Vec<&str> = stopped.iter().map(|(s, _)| s.as_str()).collect();
    let expected: Vec<&str> = ["stubborn", "sleeper", "orphaner", "crasher"]
        .into_iter()
        .filter(|n| names.contains(n))
        .collect();
    assert_eq!(names, expected, "reverse order");
    assert_eq!(&names[..3], ["stubborn", "sleeper", "orphaner"]);
    assert_eq!(stopped[0].1, "killed");
    assert_eq!(stopped[1].1, "terminated");
    assert_eq!(stopped[2].1, "terminated");
    // Nothing was left for the final sweep, and no service was restarted after the stop.
    assert!(
        e[stop_at..]
            .iter()
            .any(|e| matches!(e, Event::Swept { killed: false }))
    );
    assert!(
        !e[stop_at..]
            .iter()
            .any(|e| matches!(e, Event::Started { .. }))
    );
    assert_eq!(e.last(), Some(&Event::Done));
}

#[test]
fn the_supervisor_mode_refuses_a_bad_list() {
    let dir = tempfile::tempdir().unwrap();
    let list = dir.path().join("services.json");
    std::fs::write(&list, r#"[{"name":"x","exec":["relative"]}]"#).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_zos-init"))
        .arg("--supervise")
        .arg(&list)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("absolute path"));
    // Outside a PID namespace and without the mode, it refuses to run at all.
    let out = Command::new(env!("CARGO_BIN_EXE_zos-init"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("PID 1"));
}
