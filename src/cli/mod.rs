//! The command line: clap's flags (`flags`), made into one request (`request`): the mode they
//! choose, the settings layer of their values, and the rest. Nothing else of ssh-ec2 reads the
//! flags.

pub mod about;
mod flags;
mod request;

use clap::{CommandFactory, FromArgMatches};

pub use flags::{Cli, Generated};
pub use request::{FleetMode, InstanceMode, Mode, Request};

use crate::settings::{self, Fallback};

/// The command line ssh-ec2 parses (and `--generate` describes): clap's, with each setting's
/// default in its help, as `--show-config` shows it.
pub fn command() -> clap::Command {
    let mut command = Cli::command().after_long_help(about::long_help());
    for (name, fallback) in settings::fallbacks() {
        let Fallback::Value(value) = fallback else {
            continue;
        };
        let help = command
            .get_arguments()
            .find(|a| a.get_id() == name)
            .map(|arg| arg.get_help().map_or(String::new(), |h| h.to_string()));
        if let Some(help) = help {
            command = command.mut_arg(name, |arg| arg.help(format!("{help} [default: {value}]")));
        }
    }
    command
}

/// Parses `args` into a request; clap's error (or `--help`, `--version`) otherwise.
pub fn parse(args: &[std::ffi::OsString]) -> Result<Request, clap::Error> {
    let mut command = command();
    let matches = command.try_get_matches_from_mut(args)?;
    let cli = Cli::from_arg_matches(&matches).map_err(|e| e.format(&mut command))?;
    request::from_cli(cli)
        .map_err(|message| command.error(clap::error::ErrorKind::ArgumentConflict, message))
}
