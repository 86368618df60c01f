//! Figures for docs/benchmarks.md ("Node OS"): a node VM's power-on to online, split by the
//! clocks the console shows (the serial console lags at 115 200 baud, so the times the lines
//! arrive are not used): the kernel's and zos-init's uptime stamps inside the boot, zosd's UTC
//! stamps (the node's clock is set from the grid, this machine's), and this machine's clock for
//! the power-on (QEMU making the console file) and the end (the node answering over the relay).
//! Then the node OS's memory at idle as its kernel counts it. Run as root with
//! `cargo bench -p zos-devnet --bench vm_node`: builds the node image (cached), brings up a
//! devnet with one node VM and no namespace node, and takes it down.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use zos_testkit::devnet::{DevnetGuard, VmOptions, vms};
use zos_testkit::guest::{build_node, devnet_release_key};
use zos_types::node_api::GetDiagnostics;

/// The kernel's uptime stamp (`[    4.664981]`) of the first line holding `marker`.
fn kernel_stamp(console: &str, marker: &str) -> Option<f64> {
    let line = console.lines().find(|l| l.contains(marker))?;
    line.strip_prefix('[')?
        .split(']')
        .next()?
        .trim()
        .parse()
        .ok()
}

/// The time since its start (seconds) zos-init stamps the first line holding `marker` with.
fn uptime_of(console: &str, marker: &str) -> Option<f64> {
    let line = console.lines().find(|l| l.contains(marker))?;
    line.split_whitespace()
        .next()?
        .strip_suffix('s')?
        .parse()
        .ok()
}

/// The UTC time zosd stamps the first line holding `marker` with.
fn utc_of(console: &str, marker: &str) -> Option<SystemTime> {
    let line = console.lines().find(|l| l.contains(marker))?;
    humantime::parse_rfc3339_weak(line.split_whitespace().next()?.trim_end_matches('Z')).ok()
}

fn secs(d: Option<Duration>) -> String {
    d.map_or("?".into(), |d| format!("{:.1} s", d.as_secs_f64()))
}

/// The serial console of this process's devnet's first VM, once QEMU has made it.
fn serial_path() -> Option<PathBuf> {
    let me = format!("-{}", std::process::id());
    std::fs::read_dir(std::env::temp_dir())
        .ok()?
        .flatten()
        .map(|e| e.path())
        .find(|p| {
            let name = p.file_name().unwrap_or_default().to_string_lossy();
            name.starts_with("zos-devnet-") && name.ends_with(&me)
        })
        .map(|d| d.join("vm1/serial.log"))
        .filter(|p| p.exists())
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    if !zos_testkit::require_root("vm_node bench") {
        return;
    }
    let image = build_node();
    let (key, _) = devnet_release_key();
    let done = Arc::new(AtomicBool::new(false));
    let power_on: Arc<Mutex<Option<SystemTime>>> = Arc::default();
    let watcher = {
        let (done, power_on) = (done.clone(), power_on.clone());
        std::thread::spawn(move || {
            while !done.load(Ordering::SeqCst) && power_on.lock().unwrap().is_none() {
                if serial_path().is_some() {
                    *power_on.lock().unwrap() = Some(SystemTime::now());
                }
                std::thread::sleep(Duration::from_millis(10));
            }
        })
    };
    let rt = tokio::runtime::Runtime::new().unwrap();
    let bed = rt
        .block_on(DevnetGuard::up_with(
            0,
            Duration::from_secs(5),
            Some(VmOptions::new(1, image, key)),
        ))
        .expect("a devnet with one node VM");
    let online = SystemTime::now();
    done.store(true, Ordering::SeqCst);
    watcher.join().unwrap();
    std::thread::sleep(Duration::from_secs(30));
    let twin = bed.state.vms[0].twin_id.expect("the VM node has a twin");
    let diag = rt
        .block_on(
            bed.state
                .farmer_client()
                .unwrap()
                .node(twin)
                .call::<GetDiagnostics>(&()),
        )
        .expect("diagnostics of the VM node");
    let console = vms::console(&bed.state.vms[0]);
    let kept = std::env::temp_dir().join("zos-vm-node-bench-console.log");
    let _ = std::fs::write(&kept, &console);

    // The kernel starts at uptime 0 and runs /init at its stamp of "Run /init"; zos-init stamps
    // its lines with the time since its own start; the kernel's wall time is then zosd's first
    // UTC stamp less both.
    let init = kernel_stamp(&console, "Run /init as init process").map(Duration::from_secs_f64);
    let up = |m: &str| uptime_of(&console, m).map(Duration::from_secs_f64);
    let net = up(" INFO network up");
    let release = up(" INFO release verified");
    let service = up(" INFO service started service=\"zosd\"");
    let zosd = utc_of(&console, "zosd starting");
    let kernel = zosd.zip(init.zip(service)).map(|(z, (i, s))| z - i - s);
    let span =
        |a: Option<Duration>, b: Option<Duration>| b.zip(a).map(|(b, a)| b.saturating_sub(a));
    let wall = |a: Option<SystemTime>, b: Option<SystemTime>| {
        b.zip(a).and_then(|(b, a)| b.duration_since(a).ok())
    };
    let power_on = *power_on.lock().unwrap();
    let registered = utc_of(&console, "node registered");
    let uplink = utc_of(&console, "uplink connected");
    println!(
        "node VM power-on to online ({:?}):",
        zos_devnet::vmnode::accel()
    );
    let rows = [
        (
            "firmware, iPXE, kernel and initramfs download",
            wall(power_on, kernel),
        ),
        ("kernel start to /init", init),
        ("modules, NICs and DHCP", net),
        ("clock and the signed release", span(net, release)),
        (
            "runtime flists fetched, mounted and checked",
            span(release, service),
        ),
        (
            "zosd: disks, identity and registration",
            wall(zosd, registered),
        ),
        ("registration to uplink up", wall(registered, uplink)),
        (
            "uplink up to answering over the relay",
            wall(uplink, Some(online)),
        ),
        ("power-on to online, in all", wall(power_on, Some(online))),
    ];
    for (phase, d) in rows {
        println!("  {phase:<48} {:>8}", secs(d));
    }
    match diag.memory {
        Some(m) => println!(
            "node OS memory at idle, 30 s after online: {} MiB used of {} MiB",
            m.used() >> 20,
            m.total >> 20
        ),
        None => println!("the node did not report its memory"),
    }
}
