//! What a mode needs, resolved from the settings and this machine's facts, and validated:
//! everything that can be refused is refused here, before any AWS call. Each mode resolves
//! only what it uses (`--list` and `--gc` read no key and bind no port). The resolvers are
//! named for what they resolve; the pure ones are unit-tested, and the I/O (the current
//! directory, the machine id, rsync's version, a key pair's file, the `-L` ports) is done
//! here once.
//!
//! - `host`: this machine's facts; `here`: this directory and its owner; `launch`: how its
//!   instance would be launched; `env`: the remote command's variables.

mod env;
pub mod here;
pub mod host;
pub mod launch;

use std::time::SystemTime;

use anyhow::{Result, bail};

use crate::cli::{InstanceMode, Request};
use crate::cloud::{Account, Owner, Ownership};
use crate::fleet::{Ingress, MachineSpec};
use crate::remote::env::Environment;
use crate::remote::watchdog::Arming;
use crate::session::{Dial, Forwards, Plan, Reach, Terminal};
use crate::settings::values::{EndOfLife, EnvEntries, Multiplex};
use crate::settings::{Layer, Values};
use crate::ssh::forward::LocalForward;
use crate::state::keys::LoginKey;
use crate::state::{Dirs, machine};
use host::Host;

/// The stacked settings of this directory, with `request`'s flags on top.
pub fn values(request: &Request, host: &Host) -> Result<Values> {
    let settings = host
        .sources()
        .load(request.preset.as_deref(), flags(request)?)?;
    Ok(settings.values.resolve())
}

/// The settings layer of the flags: `request.flags`, with the `--env-file`s' variables under
/// those of `-e` (like `-e`, they replace the lower layers' `env`).
pub fn flags(request: &Request) -> Result<Layer> {
    let mut flags = request.flags.clone();
    if !request.env_files.is_empty() {
        let mut entries = env::read_env_files(&request.env_files)?;
        entries.extend(flags.env.take().map(|e| e.0).unwrap_or_default());
        flags.env = Some(EnvEntries(entries));
    }
    Ok(flags)
}

/// What `--list` and `--gc` need: the owner's instances from anywhere, and how to reach them.
pub struct FleetPlan {
    pub account: Account,
    pub dirs: Dirs,
    pub owner: Owner,
    pub login: LoginKey,
    pub dial: Dial,
}

pub fn for_fleet(values: Values, host: &Host) -> Result<FleetPlan> {
    let owner = here::owner(&values, host, machine::load_or_create(&host.state_dir)?)?;
    Ok(FleetPlan {
        login: login(&values, &owner.name, host),
        account: account(&values),
        dirs: dirs(host),
        owner,
        dial: dial(&values),
    })
}

/// What a mode on this directory's instance needs (a run, a job's modes, `--down`, a dry run,
/// `--ssh-config`).
pub fn for_instance(
    mode: InstanceMode,
    request: Request,
    values: Values,
    host: &Host,
) -> Result<Plan> {
    if mode == InstanceMode::Detach && values.multiplex == Some(Multiplex::None) {
        bail!("--detach runs the command in tmux or screen: drop --multi none (or MULTIPLEX=none)");
    }
    if values.nodes > 1 && request.command.is_none() && mode == InstanceMode::Run {
        bail!(
            "--nodes {} runs a command on every node: give one (e.g. ssh-ec2 --nodes {} \
             torchrun train.py); a shell opens on one instance only",
            values.nodes,
            values.nodes
        );
    }
    let env = match launches(mode) {
        // Refused before any AWS call: an unset name, a secret not allowed.
        true => env::resolve(
            values.env.as_ref().map_or(&[], |e| &e.0),
            &|name| std::env::var_os(name),
            request.allow_secret_env,
        )?,
        false => Environment::default(),
    };
    let local_dir = here::local_dir(host)?;
    let owner = here::owner(&values, host, machine::load_or_create(&host.state_dir)?)?;
    let login = login(&values, &owner.name, host);
    if launches(mode) {
        // Refused before any AWS call: a run may have to launch with it.
        login.key_pair_key()?;
    }
    let ownership = Ownership {
        dir: here::dir_tag(&local_dir)?,
        owner,
    };
    let end_of_life = match mode {
        // What --down is for; --stop and --leave are refused with it.
        InstanceMode::Down { .. } => EndOfLife::Terminate,
        _ => values.final_state,
    };
    let sync = match syncs(mode) && !request.no_rsync {
        true => Some(crate::sync::Options::detect(
            &local_dir,
            host.path_var.as_deref(),
        )?),
        false => None,
    };
    let forwards = match forwards(mode) {
        // Bound now: a taken port is refused before anything is launched.
        true => Forwards {
            local: (request.local_forwards.into_iter())
                .map(LocalForward::bind)
                .collect::<Result<_>>()?,
            remote: request.remote_forwards,
        },
        false => Forwards::default(),
    };
    Ok(Plan {
        account: account(&values),
        dirs: dirs(host),
        remote_dir: here::remote_dir(&values, &local_dir)?,
        local_dir,
        machine: MachineSpec {
            launch: launch::spec(&values, &ownership, end_of_life)?,
            ownership,
            login,
            ingress: ingress(&values),
            watchdog: Arming::new(SystemTime::now(), values.max_lifetime, values.idle_stop),
            end_of_life,
        },
        reach: Reach {
            dial: dial(&values),
            boot_timeout: values.boot_timeout.duration(),
            reconnect_timeout: values.reconnect_timeout.duration(),
            keep_connection: values.keep_connection.duration(),
        },
        terminal: terminal(host),
        forwards,
        sync,
        command: request.command,
        env,
        multiplex: values.multiplex,
    })
}

/// The modes that may launch an instance: also those that start a command.
fn launches(mode: InstanceMode) -> bool {
    use InstanceMode::*;
    matches!(mode, Run | Detach | DryRun { .. })
}

/// The modes that sync the directory (a dry run counts what it would send).
fn syncs(mode: InstanceMode) -> bool {
    use InstanceMode::*;
    matches!(
        mode,
        Run | Detach | Finish { .. } | Down { .. } | DryRun { .. }
    )
}

/// The modes that open `-L` and `-R` while they follow a command or a job.
fn forwards(mode: InstanceMode) -> bool {
    use InstanceMode::*;
    matches!(mode, Run | Detach | Attach { .. } | Finish { .. })
}

fn dial(values: &Values) -> Dial {
    Dial {
        address: values.address,
        connect: values.connect.clone(),
    }
}

fn account(values: &Values) -> Account {
    Account {
        region: values.region.clone(),
        profile: values.aws_profile.clone(),
    }
}

fn dirs(host: &Host) -> Dirs {
    Dirs {
        root: host.state_dir.clone(),
        sockets: host.socket_dir(),
    }
}

/// A fresh key per instance, unless a key pair is named (by name or by its file).
fn login(values: &Values, owner: &str, host: &Host) -> LoginKey {
    if values.identity_file.is_none() && values.key_name.is_none() {
        return LoginKey::PerRun;
    }
    let name = values.key_name.clone().unwrap_or_else(|| owner.to_string());
    let path = match &values.identity_file {
        Some(path) => crate::settings::expand_home(path, &host.home, &host.cwd),
        None => host.home.join(".ssh").join(format!("{name}.pem")),
    };
    LoginKey::key_pair(name, path)
}

/// Who may reach the instance's sshd: the CIDR set, else this machine's public address.
fn ingress(values: &Values) -> Ingress {
    match values.ssh_cidr {
        Some(cidr) => Ingress::Cidr(cidr.trunc()),
        None => Ingress::CallerIp {
            checkip_url: values.checkip_url.clone(),
        },
    }
}

/// A PTY and raw mode only on a terminal we are in the foreground of; stdin is passed on unless
/// it is a terminal we are in the background of (reading it would stop us).
fn terminal(host: &Host) -> Terminal {
    Terminal {
        pty: host.stdin_is_terminal && host.stdout_is_terminal && host.in_foreground,
        forward_stdin: !host.stdin_is_terminal || host.in_foreground,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::settings::Layer;
    use std::path::PathBuf;

    fn host() -> Host {
        Host {
            cwd: PathBuf::from("/w/proj"),
            home: PathBuf::from("/home/me"),
            user_config: PathBuf::from("/home/me/.config/ssh-ec2/config.toml"),
            state_dir: PathBuf::from("/home/me/.local/state/ssh-ec2"),
            runtime_dir: None,
            hostname: "laptop".into(),
            login_name: Some("me".into()),
            path_var: None,
            stdin_is_terminal: true,
            stdout_is_terminal: true,
            in_foreground: false,
        }
    }

    #[test]
    fn a_key_pair_is_named_by_its_name_or_its_file() {
        let resolve = |layer: Layer| login(&layer.resolve(), "ppr", &host());
        assert!(matches!(resolve(Layer::default()), LoginKey::PerRun));
        let named = resolve(Layer {
            key_name: Some("team".into()),
            ..Layer::default()
        });
        let LoginKey::KeyPair { name, path, .. } = named else {
            panic!("a key pair")
        };
        assert_eq!(
            (name.as_str(), path),
            ("team", "/home/me/.ssh/team.pem".into())
        );
        let by_file = resolve(Layer {
            identity_file: Some("keys/k.pem".into()),
            ..Layer::default()
        });
        let LoginKey::KeyPair { name, path, .. } = by_file else {
            panic!("a key pair")
        };
        assert_eq!((name.as_str(), path), ("ppr", "/w/proj/keys/k.pem".into()));
    }

    #[test]
    fn a_background_run_gets_no_pty_and_leaves_the_terminal_alone() {
        let background = terminal(&host());
        assert!(!background.pty && !background.forward_stdin);
        let piped = terminal(&Host {
            stdin_is_terminal: false,
            ..host()
        });
        assert!(!piped.pty && piped.forward_stdin);
    }

    #[test]
    fn ingress_is_the_cidr_set_or_the_caller() {
        let cidr = ingress(
            &Layer {
                ssh_cidr: Some("10.1.2.3/16".parse().unwrap()),
                ..Layer::default()
            }
            .resolve(),
        );
        assert!(matches!(cidr, Ingress::Cidr(net) if net.to_string() == "10.1.0.0/16"));
        let caller = ingress(&Layer::default().resolve());
        assert!(
            matches!(caller, Ingress::CallerIp { checkip_url } if checkip_url == crate::settings::defaults::CHECKIP_URL)
        );
    }
}
