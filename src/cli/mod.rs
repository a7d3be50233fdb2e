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
/// default in its help, spelled as `--show-config` spells it (a value, or how it is worked out).
pub fn command() -> clap::Command {
    let mut command = Cli::command()
        .after_help(about::short_help())
        .after_long_help(about::long_help());
    for (name, fallback) in settings::fallbacks() {
        let (Fallback::Value(default) | Fallback::Computed(default)) = fallback else {
            continue;
        };
        let help = command
            .get_arguments()
            .find(|a| a.get_id() == name)
            .map(|arg| arg.get_help().map_or(String::new(), |h| h.to_string()));
        if let Some(help) = help {
            // As clap shows its own defaults.
            command = command.mut_arg(name, |arg| arg.help(format!("{help} [default: {default}]")));
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

#[cfg(test)]
mod tests {
    use super::*;

    /// The heading `--help` lists an option under, by its long name (or short one).
    fn heading_of(command: &clap::Command, flag: &str) -> String {
        let arg = command
            .get_arguments()
            .find(|a| match flag.strip_prefix("--") {
                Some(long) => a.get_long() == Some(long),
                None => a.get_short().map(|s| format!("-{s}")).as_deref() == Some(flag),
            })
            .unwrap_or_else(|| panic!("no option {flag}"));
        arg.get_help_heading().unwrap_or("Options").to_string()
    }

    #[test]
    fn help_groups_the_options_as_a_user_thinks_of_them() {
        let command = command();
        for (heading, flags) in [
            (
                "End of life",
                &["-t", "-s", "-l", "--max-lifetime", "--idle-stop"][..],
            ),
            ("Sync", &["--no-rsync"]),
            (
                "Jobs: sessions in tmux or screen on the instance",
                &["-d", "-a", "-f", "--multi"],
            ),
            ("Forwards (over the one SSH connection)", &["-L", "-R"]),
            (
                "Instance",
                &["--instance-type", "--spot", "-i", "--key-name"],
            ),
            ("Your instances", &["--list", "--down", "--gc"]),
            ("Output", &["-v", "-q"]),
        ] {
            for flag in flags {
                assert_eq!(heading_of(&command, flag), heading, "{flag}");
            }
        }
        // In that order, as a run goes: how it ends first, what it prints last.
        let help = command.clone().render_long_help().to_string();
        let at = |heading: &str| help.find(&format!("\n{heading}:\n")).expect(heading);
        let order = [
            "End of life",
            "Sync",
            "Forwards (over the one SSH connection)",
            "Output",
        ];
        assert!(
            order.windows(2).all(|pair| at(pair[0]) < at(pair[1])),
            "{help}"
        );
    }

    #[test]
    fn help_shows_each_setting_s_default_as_show_config_does() {
        let command = command();
        let mut shown = 0;
        for (name, fallback) in settings::fallbacks() {
            let (Fallback::Value(default) | Fallback::Computed(default)) = fallback else {
                continue;
            };
            let Some(arg) = command.get_arguments().find(|a| a.get_id() == name) else {
                continue;
            };
            let help = arg.get_help().unwrap().to_string();
            assert!(help.ends_with(&format!("[default: {default}]")), "{help}");
            shown += 1;
        }
        assert!(shown > 20, "only {shown} defaults shown");
        let help = command.clone().render_long_help().to_string();
        for default in ["[default: g4dn.xlarge]", "[default: 600]", "[default: 24h]"] {
            assert!(help.contains(default), "{default}");
        }
    }

    #[test]
    fn help_ends_with_examples_the_environment_and_the_documentation_s_address() {
        let long = command().render_long_help().to_string();
        let at = |text: &str| long.find(text).expect(text);
        assert!(at("\nExamples:\n") < at("\nEnvironment"));
        assert!(at("\nEnvironment") < at("AWS_INSTANCE_TYPE"));
        assert!(at("AWS_INSTANCE_TYPE") < at("\nDocumentation:\n"));
        assert!(long.contains(about::DOCS));
        let short = command().render_help().to_string();
        assert!(short.trim_end().ends_with(about::DOCS), "{short}");
    }
}
