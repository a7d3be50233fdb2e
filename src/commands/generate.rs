//! `ssh-ec2 --generate …`: shell completions and the man page, made from clap's own definition
//! of the command line (and `cli::about`'s texts, as `--help` shows them), so they cover every
//! flag.

use anyhow::{Context, Result};
use clap_complete::Shell;
use clap_mangen::roff::{Roff, bold, italic, roman};

use crate::cli::{Generated, about};
use crate::printer::Printer;
use crate::status::ExitStatus;

pub fn generate(what: Generated, printer: &Printer) -> Result<ExitStatus> {
    let mut command = crate::cli::command();
    // Made in memory first: clap_complete panics on a write error such as a closed pipe.
    let mut text = Vec::new();
    match shell(what) {
        Some(shell) => clap_complete::generate(shell, &mut command, "ssh-ec2", &mut text),
        None => man_page(command, &mut text).context("cannot render the man page")?,
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

/// clap_mangen's sections, with a synopsis that names each option's argument, and the
/// examples, environment, files, exit status and documentation of `--help`.
fn man_page(command: clap::Command, out: &mut Vec<u8>) -> std::io::Result<()> {
    let synopsis = synopsis(&command);
    let man = clap_mangen::Man::new(command);
    man.render_title(out)?;
    man.render_name_section(out)?;
    // The page's preamble is written once, by the title: these go without it.
    out.extend(synopsis.to_roff().bytes());
    man.render_description_section(out)?;
    man.render_options_section(out)?;
    let mut sections = Roff::new();
    section(&mut sections, "EXAMPLES", pairs(about::EXAMPLES));
    section(&mut sections, "ENVIRONMENT", about::environment());
    section(&mut sections, "FILES", pairs(about::FILES));
    section(&mut sections, "EXIT STATUS", pairs(about::EXIT_STATUS));
    section(&mut sections, "SEE ALSO", pairs(about::SEE_ALSO));
    out.extend(sections.to_roff().bytes());
    man.render_version_section(out)
}

/// `ssh-ec2 [-d|--detach] [--max-lifetime DURATION] … [COMMAND]…`.
fn synopsis(command: &clap::Command) -> Roff {
    let mut line = vec![bold("ssh-ec2")];
    let mut args: Vec<&clap::Arg> = command
        .get_arguments()
        .filter(|a| !a.is_hide_set())
        .collect();
    // As --help lists them: the command last.
    args.sort_by_key(|arg| (arg.is_positional(), arg.get_display_order()));
    for arg in args {
        let value = arg
            .get_value_names()
            .and_then(|names| names.first().map(|n| n.to_string()));
        let names: Vec<String> = (arg.get_short().map(|s| format!("-{s}")).into_iter())
            .chain(arg.get_long().map(|l| format!("--{l}")))
            .collect();
        line.push(roman(" ["));
        if names.is_empty() {
            line.push(italic(value.unwrap_or_else(|| arg.get_id().to_string())));
            line.push(roman("]..."));
            continue;
        }
        line.push(bold(names.join("|")));
        if let Some(value) = value.filter(|_| arg.get_action().takes_values()) {
            line.push(roman(" "));
            line.push(italic(value));
        }
        line.push(roman("]"));
    }
    let mut roff = Roff::new();
    roff.control("SH", ["SYNOPSIS"]).text(line);
    roff
}

/// `about`'s lists as a section's items.
fn pairs(items: &[(&str, &str)]) -> impl Iterator<Item = (String, String)> {
    items.iter().map(|(a, b)| (a.to_string(), b.to_string()))
}

/// A section of tagged paragraphs: each item in bold, what it is below it.
fn section(roff: &mut Roff, title: &str, items: impl IntoIterator<Item = (String, String)>) {
    roff.control("SH", [title]);
    for (item, what) in items {
        roff.control("TP", [])
            .text([bold(item)])
            .text([roman(what)]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_man_page_names_arguments_and_has_the_help_s_sections() {
        let mut text = Vec::new();
        man_page(crate::cli::command(), &mut text).unwrap();
        let text = String::from_utf8(text).unwrap();
        for section in [
            "SYNOPSIS",
            "OPTIONS",
            "EXAMPLES",
            "ENVIRONMENT",
            "FILES",
            "\"EXIT STATUS\"",
            "\"SEE ALSO\"",
        ] {
            assert!(text.contains(&format!(".SH {section}")), "{section}");
        }
        assert!(
            text.contains("\\fB\\-\\-max\\-lifetime\\fR \\fIDURATION\\fR"),
            "{text}"
        );
        assert!(text.contains("AWS_INSTANCE_TYPE"));
        // roff escapes each hyphen.
        assert!(text.contains(&about::DOCS.replace('-', "\\-")), "{text}");
    }
}
