//! `zos completion SHELL` and `zos man --dir DIR`: what a shell and `man` need to know about
//! `zos`, made from its own command definitions so they never drift from it.

use std::path::{Path, PathBuf};

use anyhow::Context;
use clap::Subcommand;
use clap_complete::Shell;

use crate::output::out;

#[derive(Debug, Subcommand)]
pub enum ShellCmd {
    /// Print the shell completion script of zos (bash, zsh, fish, elvish, powershell).
    ///
    /// E.g. `source <(zos completion bash)`, or save it as
    /// ~/.local/share/bash-completion/completions/zos.
    Completion { shell: Shell },
    /// Write the man pages of zos and its commands into a directory.
    ///
    /// One page per command: zos.1, zos-node.1, zos-node-list.1, … E.g.
    /// `zos man --dir ~/.local/share/man/man1`.
    Man {
        /// The directory to write them in (made if missing).
        #[arg(long, value_hint = clap::ValueHint::DirPath)]
        dir: PathBuf,
    },
}

pub fn run(cmd: ShellCmd, mut zos: clap::Command) -> anyhow::Result<()> {
    match cmd {
        ShellCmd::Completion { shell } => {
            let mut script = Vec::new();
            clap_complete::generate(shell, &mut zos, "zos", &mut script);
            out!("{}", String::from_utf8_lossy(&script))?;
            Ok(())
        }
        ShellCmd::Man { dir } => man(zos, &dir),
    }
}

/// One page per command and subcommand, named after its path (`zos-node-list.1`).
fn man(zos: clap::Command, dir: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir)
        .with_context(|| format!("cannot make {}: pick a --dir you may write", dir.display()))?;
    clap_mangen::generate_to(zos, dir)
        .with_context(|| format!("writing man pages in {}", dir.display()))?;
    Ok(())
}
