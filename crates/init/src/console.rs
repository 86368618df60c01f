//! The console: where zos-init says what it does and why it refuses. Lines go to stdout (the
//! kernel's console once [`attach`] ran) through `tracing`, prefixed with seconds since boot.

use std::fs::OpenOptions;

/// Makes `/dev/console` stdin, stdout and stderr (the kernel may have started PID 1 without it,
/// when the initramfs had no `/dev/console`).
pub fn attach() {
    if let Ok(c) = OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/console")
    {
        let _ = nix::unistd::dup2_stdin(&c);
        let _ = nix::unistd::dup2_stdout(&c);
        let _ = nix::unistd::dup2_stderr(&c);
    }
}

/// Sends `tracing` events to the console: `info` and above, or what `ZOS_LOG` says
/// (`tracing_subscriber::EnvFilter` syntax).
pub fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("ZOS_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_timer(tracing_subscriber::fmt::time::uptime())
        .with_target(false)
        .with_ansi(false)
        .with_writer(std::io::stdout)
        .try_init();
}
