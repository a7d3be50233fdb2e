//! `ssh-ec2 --generate …`: shell completions and the man page, made from clap's own definition
//! of the command line, so they cover every flag.

use std::io::Write;

use anyhow::{Context, Result};
use clap::CommandFactory;
use clap_complete::Shell;

use crate::cli::{Cli, Generated};

pub fn generate(what: Generated) -> Result<i32> {
    let mut command = Cli::command();
    // Made in memory first: clap_complete panics on a write error such as a closed pipe.
    let mut text = Vec::new();
    match shell(what) {
        Some(shell) => clap_complete::generate(shell, &mut command, "ssh-ec2", &mut text),
        None => clap_mangen::Man::new(command)
            .render(&mut text)
            .context("cannot render the man page")?,
    }
    std::io::stdout()
        .lock()
        .write_all(&text)
        .context("cannot write to standard output")?;
    Ok(0)
}

/// The shell a completion script is for; `None` for the man page.
fn shell(what: Generated) -> Option<Shell> {
    match what {
        Generated::CompleteBash => Some(Shell::Bash),
        Generated::CompleteZsh => Some(Shell::Zsh),
        Generated::CompleteFish => Some(Shell::Fish),
        Generated::CompletePowershell => Some(Shell::PowerShell),
        Generated::Man => None,
    }
}
