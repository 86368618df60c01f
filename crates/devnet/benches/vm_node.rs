//! Figures for docs/benchmarks.md ("Node OS"): a node VM's power-on to online, split by what
//! its serial console shows (read every 10 ms from this machine, so each time is when the line
//! reached the console, ±10 ms), and the node OS's memory at idle as its kernel counts it.
//! Run as root with `cargo bench -p zos-devnet --bench vm_node`: builds the node image (cached),
//! brings up a devnet with one node VM and no namespace node, and takes it down.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use zos_testkit::devnet::{DevnetGuard, VmOptions, vms};
use zos_testkit::guest::{build_node, devnet_release_key};
use zos_types::node_api::GetDiagnostics;

/// The console lines that end each phase, in boot order, with the phase's name.
const PHASES: [(&str, &str); 6] = [
    (
        "Linux version",
        "firmware, iPXE, kernel and initramfs download",
    ),
    ("zos-init", "kernel start to /init"),
    ("network up", "modules, NICs and DHCP"),
    ("release verified", "clock and the signed release"),
    (
        "service started",
        "runtime flists fetched, mounted and checked",
    ),
    ("node registered", "zosd: disks, identity and registration"),
];

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
    let seen: Arc<Mutex<Vec<Duration>>> = Arc::default();
    let power_on: Arc<Mutex<Option<Instant>>> = Arc::default();
    let watcher = {
        let (done, seen, power_on) = (done.clone(), seen.clone(), power_on.clone());
        std::thread::spawn(move || {
            while !done.load(Ordering::SeqCst) {
                std::thread::sleep(Duration::from_millis(10));
                let Some(path) = serial_path() else { continue };
                let start = *power_on.lock().unwrap().get_or_insert_with(Instant::now);
                let text = vms::plain(&std::fs::read(&path).unwrap_or_default());
                let mut seen = seen.lock().unwrap();
                while let Some((marker, _)) = PHASES.get(seen.len()) {
                    if !text.contains(marker) {
                        break;
                    }
                    seen.push(start.elapsed());
                }
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
    let online = power_on.lock().unwrap().map(|t| t.elapsed());
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
    done.store(true, Ordering::SeqCst);
    watcher.join().unwrap();

    let seen = seen.lock().unwrap().clone();
    println!(
        "node VM power-on to online ({:?}):",
        zos_devnet::vmnode::accel()
    );
    let mut last = Duration::ZERO;
    for ((_, phase), at) in PHASES.iter().zip(&seen) {
        println!(
            "  {phase:<48} {:>7.1} s   (at {:>6.1} s)",
            at.saturating_sub(last).as_secs_f64(),
            at.as_secs_f64()
        );
        last = *at;
    }
    if let Some(online) = online {
        println!(
            "  {:<48} {:>7.1} s   (at {:>6.1} s)",
            "uplink up, answering over the relay",
            online.saturating_sub(last).as_secs_f64(),
            online.as_secs_f64()
        );
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
