//! The boot sequence of PID 1, step by step (see the crate documentation for the order).

use std::path::Path;
use std::sync::atomic::{AtomicI32, Ordering};
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::sys::reboot::{RebootMode, reboot, set_cad_enabled};
use nix::sys::signal::{SaFlags, SigAction, SigHandler, SigSet, Signal, kill, sigaction};
use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
use nix::unistd::Pid;

use crate::{cmdline, console, modules, mounts};

/// The last stop signal received (0: none).
static STOP: AtomicI32 = AtomicI32::new(0);

extern "C" fn on_stop(sig: libc::c_int) {
    STOP.store(sig, Ordering::SeqCst);
}

/// The signals that ask PID 1 to power off: SIGPWR (the kernel's and an ACPI daemon's way),
/// SIGTERM, and SIGINT (ctrl-alt-del, which the kernel sends to PID 1 once
/// [`set_cad_enabled`]`(false)` told it not to reboot at once).
pub const STOP_SIGNALS: [Signal; 3] = [Signal::SIGPWR, Signal::SIGTERM, Signal::SIGINT];

/// Installs the stop handlers (without `SA_RESTART`, so a blocking `waitpid` returns `EINTR`).
pub fn install_stop_handlers() {
    let action = SigAction::new(
        SigHandler::Handler(on_stop),
        SaFlags::empty(),
        SigSet::empty(),
    );
    for s in STOP_SIGNALS {
        // SAFETY: the handler only stores to an atomic.
        let _ = unsafe { sigaction(s, &action) };
    }
}

/// The stop signal received since the last call, if any.
pub fn stop_requested() -> Option<Signal> {
    match STOP.swap(0, Ordering::SeqCst) {
        0 => None,
        s => Signal::try_from(s).ok(),
    }
}

/// Runs the node: never returns.
pub fn main() -> ! {
    if std::process::id() != 1 {
        eprintln!("zos-init is the node's PID 1 and runs only from the node image's initramfs");
        std::process::exit(2);
    }
    let early = mounts::apply(Path::new("/"), &mounts::early());
    console::attach();
    console::init_logging();
    tracing::info!("zos-init {} starting", env!("CARGO_PKG_VERSION"));
    for (target, e) in early {
        tracing::warn!(%target, error = %e, "early mount failed");
    }
    let _ = set_cad_enabled(false);
    install_stop_handlers();

    let params = loop {
        match cmdline::read(Path::new(cmdline::PROC_CMDLINE)) {
            Ok(p) => break p,
            Err(e) => {
                tracing::error!("{}: cannot boot", zos_runtime::error_chain(&e));
                idle(Duration::from_secs(60));
            }
        }
    };
    for n in &params.notices {
        tracing::warn!("{n}");
    }
    tracing::info!(
        farm = params.farmer_id,
        runmode = %params.runmode,
        grid = %params.grid,
        debug = params.debug,
        "boot parameters"
    );

    load_modules();

    for step in [
        "network (dhcp)",
        "clock",
        "release",
        "runtime mounts",
        "services",
    ] {
        tracing::warn!("{step}: not yet");
    }
    idle(Duration::MAX);
    power_off()
}

/// Loads the modules of the initramfs (see [`modules`]).
fn load_modules() {
    let dir = modules::kernel_dir(Path::new(modules::MODULES_ROOT));
    let db = match modules::ModuleDb::read(&dir) {
        Ok(db) => db,
        Err(e) => {
            tracing::warn!("{}: no modules loaded", zos_runtime::error_chain(&e));
            return;
        }
    };
    let order = modules::wanted(Path::new(modules::WANTED_LIST), &db)
        .map_err(|e| zos_runtime::error_chain(&e))
        .and_then(|w| db.load_order(&w).map_err(|e| e.to_string()));
    match order {
        Ok(order) => {
            let r = modules::load(&dir, &order, &mut modules::Kernel);
            tracing::info!(
                loaded = r.loaded.len(),
                present = r.present.len(),
                failed = r.failed.len(),
                "kernel modules"
            );
        }
        Err(e) => tracing::error!("{e}: no modules loaded"),
    }
}

/// Reaps orphans for `limit` or until a stop signal; a stop signal powers off.
fn idle(limit: Duration) {
    let deadline = Instant::now().checked_add(limit);
    loop {
        if let Some(sig) = stop_requested() {
            tracing::info!(signal = %sig, "power-off requested");
            power_off();
        }
        if deadline.is_some_and(|d| Instant::now() >= d) {
            return;
        }
        match waitpid(None::<Pid>, Some(WaitPidFlag::WNOHANG)) {
            Ok(WaitStatus::StillAlive) | Err(Errno::ECHILD) => {
                std::thread::sleep(Duration::from_millis(200))
            }
            _ => {}
        }
    }
}

/// Stops every process (SIGTERM, SIGKILL after 10 s), syncs, unmounts and powers off.
pub fn power_off() -> ! {
    let _ = kill(Pid::from_raw(-1), Signal::SIGTERM);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match waitpid(None::<Pid>, Some(WaitPidFlag::WNOHANG)) {
            Err(Errno::ECHILD) => break,
            Ok(WaitStatus::StillAlive) if Instant::now() >= deadline => {
                let _ = kill(Pid::from_raw(-1), Signal::SIGKILL);
            }
            Ok(WaitStatus::StillAlive) => std::thread::sleep(Duration::from_millis(50)),
            _ => {}
        }
    }
    nix::unistd::sync();
    tracing::info!("powering off");
    let _ = reboot(RebootMode::RB_POWER_OFF);
    loop {
        std::thread::sleep(Duration::from_secs(3600));
    }
}
