//! `ssh-ec2 --generate …`: shell completions and the man page, made from clap's own definition
//! of the command line, so they cover every flag.

use anyhow::{Context, Result};
use clap_complete::Shell;

use crate::cli::Generated;
use crate::printer::Printer;
use crate::status::ExitStatus;

pub fn generate(what: Generated, printer: &Printer) -> Result<ExitStatus> {
    let mut command = crate::cli::command();
    // Made in memory first: clap_complete panics on a write error such as a closed pipe.
    let mut text = Vec::new();
    match shell(what) {
        Some(shell) => clap_complete::generate(shell, &mut command, "ssh-ec2", &mut text),
        None => clap_mangen::Man::new(command)
            .render(&mut text)
            .context("cannot render the man page")?,
    }
    printer.out(text)?;
    Ok(ExitStatus::Success)
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
