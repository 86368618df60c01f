//! Running system commands with errors that say what failed.

use std::process::{Command, Output};

/// A system command that failed.
#[derive(Debug, thiserror::Error)]
pub enum CmdError {
    #[error("cannot run {cmd}: is it installed?")]
    Spawn { cmd: String, source: std::io::Error },
    #[error("{cmd} failed ({status}): {stderr}")]
    Failed {
        cmd: String,
        status: std::process::ExitStatus,
        stderr: String,
    },
}

fn describe(c: &Command) -> String {
    let mut s = c.get_program().to_string_lossy().into_owned();
    for a in c.get_args() {
        s.push(' ');
        s.push_str(&a.to_string_lossy());
    }
    s
}

/// Runs `c` and returns its output, or an error with its stderr.
pub fn run(c: &mut Command) -> Result<Output, CmdError> {
    let cmd = describe(c);
    tracing::debug!(%cmd, "run");
    let out = c.output().map_err(|source| CmdError::Spawn {
        cmd: cmd.clone(),
        source,
    })?;
    if !out.status.success() {
        return Err(CmdError::Failed {
            cmd,
            status: out.status,
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        });
    }
    Ok(out)
}

/// Runs `program args…` and returns its stdout as text.
pub fn run_args(program: &str, args: &[&str]) -> Result<String, CmdError> {
    let out = run(Command::new(program).args(args))?;
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Runs `ip args…`.
pub fn ip(args: &[&str]) -> Result<String, CmdError> {
    run_args("ip", args)
}
