//! What `--help` and the man page say beyond the flags: examples, the environment, the files,
//! the exit status, where the documentation is. One text each, for both.

use crate::settings;

/// The documentation's pages, under the repository that Cargo.toml names (one address, set
/// once there).
pub const DOCS: &str = concat!(env!("CARGO_PKG_REPOSITORY"), "/tree/main/docs");

/// Where to read more: the pages, and what they hold.
pub const SEE_ALSO: &[(&str, &str)] = &[(
    DOCS,
    "usage (every option), configuration (every setting), jobs, clusters, the admin's set-up, \
     how it works, troubleshooting (the GPU quota, the errors people hit); also docs/ in \
     ssh-ec2's source",
)];

/// A few runs people start with.
pub const EXAMPLES: &[(&str, &str)] = &[
    (
        "ssh-ec2 make train",
        "launch, sync this directory, run, pull the results back, terminate",
    ),
    (
        "ssh-ec2 --stop nvidia-smi",
        "the same, but stop the instance: the next run starts it again",
    ),
    (
        "ssh-ec2 --stop -L 8888:localhost:8888 \"jupyter lab --no-browser\"",
        "Jupyter through the one SSH connection",
    ),
    (
        "ssh-ec2 --detach \"python train.py\"",
        "start a job and return; later `ssh-ec2 --attach`, or `ssh-ec2 --finish`",
    ),
    (
        "ssh-ec2 --dry-run make train",
        "what a run would do and cost; nothing is created",
    ),
    ("ssh-ec2 --list", "your instances, in every directory"),
];

/// Where ssh-ec2 reads and keeps things.
pub const FILES: &[(&str, &str)] = &[
    (
        "~/.config/ssh-ec2/config.toml",
        "your settings ($XDG_CONFIG_HOME is honoured)",
    ),
    ("./.ssh-ec2.toml", "this project's settings"),
    (
        "./.env",
        "ssh-ec2's variables for this project (its other keys are the project's)",
    ),
    (
        "./.rsyncignore",
        "what is not synced, as rsync's --exclude-from",
    ),
    (
        "./ssh-ec2-logs/",
        "each job's, run's and cluster node's output, as the instance logged it (it comes home)",
    ),
    (
        "~/.local/state/ssh-ec2/",
        "each instance's keys and manifest, locks, this machine's id ($XDG_STATE_HOME)",
    ),
];

/// What the exit status says.
pub const EXIT_STATUS: &[(&str, &str)] = &[
    ("N", "the remote command's (or job's) own status"),
    (
        "255",
        "ssh-ec2 itself failed (said on stderr), or a signal killed the remote command",
    ),
    (
        "130, 143, 129",
        "Ctrl-C, SIGTERM, SIGHUP ended ssh-ec2 (once nothing is left running)",
    ),
    ("1", "with --dry-run: AWS would refuse the launch"),
];

/// The environment variables, each with what it sets.
pub fn environment() -> Vec<(String, String)> {
    settings::variables()
        .into_iter()
        .map(|variable| {
            let key = variable
                .key
                .map_or(String::new(), |key| format!(" (config key `{key}`)"));
            (
                variable.name.to_string(),
                format!("{}{key}", variable.about),
            )
        })
        .collect()
}

/// The text after `--help`'s options.
pub fn long_help() -> String {
    let mut text = String::from("Examples:\n");
    for (command, what) in EXAMPLES {
        text.push_str(&format!("  {command}\n      {what}\n"));
    }
    text.push_str(
        "\nEnvironment (also read from ./.env; flags beat them, they beat the config files):\n",
    );
    for (name, what) in environment() {
        text.push_str(&format!("  {name}\n      {what}\n"));
    }
    text.push_str("\nFiles:\n");
    for (path, what) in FILES {
        text.push_str(&format!("  {path}\n      {what}\n"));
    }
    text.push_str("\nExit status:\n");
    for (status, what) in EXIT_STATUS {
        text.push_str(&format!("  {status:<14} {what}\n"));
    }
    text.push_str(
        "\n--show-config shows every setting and where it came from; `man ssh-ec2` says all this \
         too, once installed (`ssh-ec2 --generate man`, see README.md).\n\nDocumentation:\n",
    );
    for (address, what) in SEE_ALSO {
        text.push_str(&format!("  {address}\n      {what}\n"));
    }
    text
}

/// The text after `-h`'s options: the essentials, and where to read more.
pub fn short_help() -> String {
    format!(
        "Exit status: the remote command's; 255 if ssh-ec2 itself failed; 130 on Ctrl-C.\n\
         Settings also come from ~/.config/ssh-ec2/config.toml, ./.ssh-ec2.toml, a preset of \
         theirs, ./.env and the environment; flags win. --show-config shows where each one came \
         from; --help adds examples, the variables and the files.\n\
         Documentation: {DOCS}"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_environment_lists_every_variable_with_its_setting() {
        let environment = environment();
        let find = |name: &str| environment.iter().find(|(n, _)| n == name).map(|(_, w)| w);
        assert!(
            find("AWS_INSTANCE_TYPE")
                .unwrap()
                .contains("`instance_type`")
        );
        assert!(find("AWS_DEFAULT_REGION").unwrap().contains("`region`"));
        assert!(find("SSH_EC2_PRESET").unwrap().contains("--preset"));
        assert!(long_help().contains("ssh-ec2 --detach"));
        assert!(long_help().contains("https://github.com/ssh-ec2/ssh-ec2/tree/main/docs"));
    }
}
