//! The command line made into one request: the mode its flags choose (decided here, once), the
//! settings layer of its values (every flag mapped, or it does not compile), and the rest.

use super::flags::{
    Cli, ConfigFlags, EndOfLifeFlags, EnvFlags, FleetFlags, ForwardFlags, Generated, InstanceFlags,
    JobFlags, LookFlags, NetworkFlags, OutputFlags, SyncFlags,
};
use crate::printer::Verbosity;
use crate::settings::Layer;
use crate::settings::values::{EndOfLife, EnvEntries, Limit, Multiplex, Timeout};
use crate::ssh::forward::Forward;

/// What ssh-ec2 is asked to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Print a completion script or the man page; needs no settings at all.
    Generate(Generated),
    /// Print every setting and where it came from; no AWS call.
    ShowConfig,
    /// Create or update the IAM policy, group, roles and instance profiles of policies/
    /// (`dry_run`: only say what would change).
    Setup { dry_run: bool },
    /// On the owner's instances, from any directory.
    Fleet(FleetMode),
    /// On this directory's instance.
    Instance(InstanceMode),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FleetMode {
    /// List this owner's instances (in every enabled region with `all_regions`).
    List { json: bool, all_regions: bool },
    /// Show (and with `yes`, remove) what ssh-ec2 left behind.
    Gc { yes: bool, all_regions: bool },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InstanceMode {
    /// Launch or reuse, sync, run (in the foreground), pull, end of life.
    Run,
    /// Like Run, but start the command in tmux/screen and return at once.
    Detach,
    /// Attach to this directory's job (on node `node` of a cluster); no sync, no end of life.
    Attach { node: usize },
    /// Print this directory's job's log (node `node`'s), following it while it runs with
    /// `follow`; no sync, no end of life.
    Logs { follow: bool, node: usize },
    /// Wait for this directory's job (attached or not), pull, end of life.
    Finish { attach: bool },
    /// Pull this directory's results, then terminate its instance; never launches. `force`:
    /// end what still runs there first.
    Down { force: bool },
    /// Resolve what a run would do and what it would cost; create nothing.
    DryRun { json: bool },
    /// Print (or install) an OpenSSH config block for this directory's instance.
    SshConfig { install: bool },
}

/// The command line, made sense of.
#[derive(Debug)]
pub struct Request {
    pub mode: Mode,
    /// The settings the flags give: the top layer.
    pub flags: Layer,
    /// `--preset`, which chooses a layer rather than being one.
    pub preset: Option<String>,
    pub verbosity: Verbosity,
    /// The remote command, its words joined with spaces as ssh does; `None`: a login shell.
    pub command: Option<String>,
    /// `-L` and `-R`.
    pub local_forwards: Vec<Forward>,
    pub remote_forwards: Vec<Forward>,
    pub no_rsync: bool,
    /// `--env-file`, read by the plan: its variables go under those of `-e` in `flags.env`.
    pub env_files: Vec<std::path::PathBuf>,
    /// `--allow-secret-env`: send the variables whose names look like secrets too.
    pub allow_secret_env: bool,
}

/// Every flag is named here, so one that is added and not mapped does not compile.
pub fn from_cli(cli: Cli) -> Result<Request, String> {
    let Cli {
        end_of_life,
        sync: SyncFlags { no_rsync },
        job,
        env:
            EnvFlags {
                env,
                env_file: env_files,
                allow_secret_env,
            },
        forwards: ForwardFlags { local, remote },
        instance,
        network,
        config,
        fleet,
        look,
        output: OutputFlags { verbose, quiet },
        command,
    } = cli;
    // clap lets `--force COMMAND` through: `--down` conflicts with a command, which clap takes
    // as a reason not to require it.
    if fleet.force && !fleet.down {
        return Err("--force goes with --down: `ssh-ec2 --down --force`".into());
    }
    let (mode, job_layer, preset) = choose_mode(job, config, fleet, look);
    let command = (!command.is_empty()).then(|| command.join(" "));
    check_command(mode, command.is_some())?;
    let mut flags = instance_layer(instance, network);
    let (final_state, max_lifetime, idle_stop) = end_of_life_layer(end_of_life);
    flags.final_state = final_state;
    flags.max_lifetime = max_lifetime;
    flags.idle_stop = idle_stop;
    (flags.multiplex, flags.reconnect_timeout) = job_layer;
    flags.env = (!env.is_empty()).then_some(EnvEntries(env));
    Ok(Request {
        mode,
        flags,
        preset,
        verbosity: Verbosity::from_flags(quiet, verbose),
        command,
        local_forwards: local,
        remote_forwards: remote,
        no_rsync,
        env_files,
        allow_secret_env,
    })
}

/// The mode the flags choose (clap lets at most one of them through, `flags::MODE_FLAGS`, and
/// `--dry-run` only beside `--setup`); also the settings and the preset of those groups.
fn choose_mode(
    job: JobFlags,
    config: ConfigFlags,
    fleet: FleetFlags,
    look: LookFlags,
) -> (Mode, (Option<Multiplex>, Option<Timeout>), Option<String>) {
    let JobFlags {
        detach,
        attach,
        finish,
        no_attach,
        logs,
        follow,
        node,
        multiplex,
        reconnect_timeout,
    } = job;
    let node = node.unwrap_or(0);
    let ConfigFlags {
        preset,
        show_config,
        generate,
        setup,
    } = config;
    let FleetFlags {
        list,
        all_regions,
        down,
        force,
        gc,
        yes,
    } = fleet;
    let LookFlags {
        dry_run,
        json,
        ssh_config,
        install,
    } = look;
    let instance = || {
        Mode::Instance(match () {
            () if down => InstanceMode::Down { force },
            () if ssh_config => InstanceMode::SshConfig { install },
            () if detach => InstanceMode::Detach,
            () if attach => InstanceMode::Attach { node },
            // `-f` beside `--logs` is `--follow` (see `flags::MODES_BUT_FINISH`).
            () if logs => InstanceMode::Logs {
                follow: follow || finish,
                node,
            },
            () if finish => InstanceMode::Finish { attach: !no_attach },
            () if dry_run => InstanceMode::DryRun { json },
            () => InstanceMode::Run,
        })
    };
    let mode = match generate {
        Some(what) => Mode::Generate(what),
        None if show_config => Mode::ShowConfig,
        None if setup => Mode::Setup { dry_run },
        None if list => Mode::Fleet(FleetMode::List { json, all_regions }),
        None if gc => Mode::Fleet(FleetMode::Gc { yes, all_regions }),
        None => instance(),
    };
    (mode, (multiplex, reconnect_timeout), preset)
}

/// Refuses a command where the mode runs none, or none where it needs one.
fn check_command(mode: Mode, has_command: bool) -> Result<(), String> {
    let Mode::Instance(mode) = mode else {
        // clap refuses a command beside the other modes.
        return Ok(());
    };
    match (mode, has_command) {
        (
            InstanceMode::Attach { .. } | InstanceMode::Finish { .. } | InstanceMode::Logs { .. },
            true,
        ) => Err(
            "--attach, --finish and --logs take no command: they come back to this directory's \
             job (run `ssh-ec2 --detach COMMAND` to start one)"
                .into(),
        ),
        (InstanceMode::Detach, false) => {
            Err("--detach needs a command to run, e.g. ssh-ec2 --detach \"python train.py\"".into())
        }
        _ => Ok(()),
    }
}

/// The end of life chosen (clap lets one through), and the instance's own limits.
fn end_of_life_layer(flags: EndOfLifeFlags) -> (Option<EndOfLife>, Option<Limit>, Option<Limit>) {
    let EndOfLifeFlags {
        terminate,
        stop,
        leave,
        max_lifetime,
        idle_stop,
    } = flags;
    let chosen = match (terminate, stop, leave) {
        (true, _, _) => Some(EndOfLife::Terminate),
        (_, true, _) => Some(EndOfLife::Stop),
        (_, _, true) => Some(EndOfLife::Leave),
        _ => None,
    };
    (chosen, max_lifetime, idle_stop)
}

/// The settings of the instance and network flags; the other groups' are set by the caller.
fn instance_layer(instance: InstanceFlags, network: NetworkFlags) -> Layer {
    let InstanceFlags {
        region,
        instance_type,
        fallback_types,
        image_id,
        image_name,
        user,
        instance_profile,
        subnet_id,
        subnet_ids,
        volume_size,
        tags,
        name,
        remote_dir,
        spot,
        max_price,
        spot_only,
        nodes,
        efa,
        identity_file,
        key_name,
    } = instance;
    let NetworkFlags {
        address,
        connect,
        ssh_cidr,
        security_group,
        keep_connection,
        boot_timeout,
    } = network;
    // Every field listed: a setting added to the table must be mapped (or set to None) here.
    Layer {
        region,
        aws_profile: None,
        instance_type,
        fallback_types,
        image_id,
        image_name,
        user,
        instance_profile,
        subnet_id,
        security_group,
        subnet_ids,
        volume_size,
        name,
        remote_dir,
        key_name,
        identity_file,
        final_state: None,
        max_lifetime: None,
        idle_stop: None,
        spot: spot.then_some(true),
        max_price,
        spot_only: spot_only.then_some(true),
        nodes,
        efa: efa.then_some(true),
        address,
        connect,
        ssh_cidr,
        checkip_url: None,
        keep_connection,
        boot_timeout,
        reconnect_timeout: None,
        multiplex: None,
        trigram: None,
        user_data: None,
        // Set by the caller: -e is not an instance flag.
        env: None,
        tags: tags.into_iter().collect(),
    }
}

#[cfg(test)]
mod tests;
