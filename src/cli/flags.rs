//! The flags, as clap sees them, in the groups `--help` shows. Values are only parsed here;
//! `request` turns them into one mode, a settings layer and the rest.

use std::path::PathBuf;

use clap::{ArgAction, ArgGroup, Args, Parser, ValueEnum};

use crate::settings::values::{
    Address, EnvEntry, HostPort, InstanceTypes, Limit, LoginUser, Multiplex, SubnetIds, Tag,
    Timeout,
};
use crate::ssh::forward::Forward;

/// The flags that choose a mode (at most one of them), but `--finish`; `--dry-run` is a mode
/// of its own, but also goes with `--setup`. `--logs` goes with none of them but `--finish`,
/// whose `-f` means `--follow` beside it, as with `tail -f`.
const MODES_BUT_FINISH: [&str; 9] = [
    "generate",
    "show_config",
    "setup",
    "list",
    "down",
    "gc",
    "ssh_config",
    "detach",
    "attach",
];
/// The modes `--dry-run` cannot go with.
const NOT_WITH_DRY_RUN: [&str; 10] = [
    "generate",
    "show_config",
    "list",
    "down",
    "gc",
    "ssh_config",
    "detach",
    "attach",
    "finish",
    "logs",
];
/// The modes that run no command (`--attach` and `--finish` say why themselves).
const WITHOUT_COMMAND: [&str; 7] = [
    "generate",
    "show_config",
    "setup",
    "list",
    "down",
    "gc",
    "ssh_config",
];

/// The modes that start no command, so take no environment for one: `-e` there would be
/// silently lost (`--show-config` and `--dry-run` show the names).
const NOT_WITH_ENV: [&str; 9] = [
    "generate",
    "setup",
    "list",
    "down",
    "gc",
    "ssh_config",
    "attach",
    "finish",
    "logs",
];

#[derive(Debug, Parser)]
#[command(
    name = "ssh-ec2",
    version,
    about = "Run a command on a throw-away AWS EC2 machine as if it were local.",
    long_about = "Launches (or reuses) the EC2 instance that belongs to the current directory, syncs \
                  the directory to it with rsync, runs COMMAND there (a login shell if none), pulls \
                  new and changed files back, then terminates, stops or leaves the instance."
)]
#[command(group(ArgGroup::new("mode").multiple(false).args(MODES_BUT_FINISH).arg("finish")))]
#[command(group(
    ArgGroup::new("without_command").multiple(true).args(WITHOUT_COMMAND).conflicts_with("command")
))]
#[command(group(ArgGroup::new("final_state").multiple(false).args(["terminate", "stop", "leave"])))]
#[command(group(ArgGroup::new("json_modes").args(["list", "dry_run"]).multiple(true)))]
#[command(group(ArgGroup::new("region_modes").args(["list", "gc"]).multiple(true)))]
#[command(group(ArgGroup::new("node_modes").args(["attach", "logs"]).multiple(true)))]
pub struct Cli {
    #[command(flatten)]
    pub end_of_life: EndOfLifeFlags,

    #[command(flatten)]
    pub sync: SyncFlags,

    #[command(flatten)]
    pub job: JobFlags,

    #[command(flatten)]
    pub env: EnvFlags,

    #[command(flatten)]
    pub forwards: ForwardFlags,

    #[command(flatten)]
    pub instance: InstanceFlags,

    #[command(flatten)]
    pub network: NetworkFlags,

    #[command(flatten)]
    pub config: ConfigFlags,

    #[command(flatten)]
    pub fleet: FleetFlags,

    #[command(flatten)]
    pub look: LookFlags,

    #[command(flatten)]
    pub output: OutputFlags,

    /// The remote command; its words are joined with spaces, like ssh. None: a login shell.
    #[arg(trailing_var_arg = true, value_name = "COMMAND")]
    pub command: Vec<String>,
}

/// What `--generate` prints.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Generated {
    CompleteBash,
    CompleteZsh,
    CompleteFish,
    CompletePowershell,
    Man,
}

#[derive(Debug, Args)]
#[command(next_help_heading = "Jobs: sessions in tmux or screen on the instance")]
pub struct JobFlags {
    /// Sync up, start COMMAND in tmux (else screen) on the instance, and return at once.
    #[arg(short, long)]
    pub detach: bool,
    /// Attach to this directory's job (detach again with Ctrl-B d, or Ctrl-A d for screen).
    #[arg(short, long)]
    pub attach: bool,
    /// Wait for this directory's job to end (attached on a terminal, else printing what it
    /// prints), pull its results, apply the end of life; exit with the job's status. With
    /// --logs, -f is --follow.
    #[arg(short, long)]
    pub finish: bool,
    /// With --finish: wait without attaching.
    #[arg(long, requires = "finish")]
    pub no_attach: bool,
    /// Print this directory's job's log (ssh-ec2-logs/ on the instance) without attaching,
    /// from any terminal or a pipe; exit with the job's status once it ended.
    #[arg(long, conflicts_with_all = MODES_BUT_FINISH)]
    pub logs: bool,
    /// With --logs (also -f): go on printing the log while the job runs, until it ends.
    #[arg(long, requires = "logs")]
    pub follow: bool,
    /// With --attach or --logs: node K of a --nodes cluster (0 is the head).
    #[arg(long, value_name = "K", requires = "node_modes")]
    pub node: Option<usize>,
    /// Run the command inside tmux or screen (none: directly).
    #[arg(long = "multi", alias = "multiplex", value_name = "tmux|screen|none")]
    pub multiplex: Option<Multiplex>,
    /// How long to keep trying to reconnect to a tmux/screen job after the connection dropped.
    #[arg(long, value_name = "SECONDS")]
    pub reconnect_timeout: Option<Timeout>,
}

#[derive(Debug, Args)]
#[command(next_help_heading = "End of life")]
pub struct EndOfLifeFlags {
    /// Terminate the instance at the end (the default).
    #[arg(short, long)]
    pub terminate: bool,
    /// Stop the instance at the end; the next run in this directory starts it again.
    #[arg(short, long, conflicts_with = "down")]
    pub stop: bool,
    /// Leave the instance running at the end.
    #[arg(short, long, conflicts_with = "down")]
    pub leave: bool,
    /// The instance stops itself this long after the last run began, whatever it does
    /// (e.g. 24h, 90m, 1h30m); off: never (not recommended).
    #[arg(long, value_name = "DURATION")]
    pub max_lifetime: Option<Limit>,
    /// The instance stops itself once no run, job or SSH login running something has used it
    /// for this long; off: never.
    #[arg(long, value_name = "DURATION")]
    pub idle_stop: Option<Limit>,
}

#[derive(Debug, Args)]
#[command(next_help_heading = "Instance")]
pub struct InstanceFlags {
    /// AWS region.
    #[arg(long)]
    pub region: Option<String>,
    /// EC2 instance type.
    #[arg(long, value_name = "TYPE")]
    pub instance_type: Option<String>,
    /// Instance types to try, in order, when no zone has capacity for --instance-type.
    #[arg(long, value_name = "T1,T2")]
    pub fallback_types: Option<InstanceTypes>,
    /// AMI id to launch (wins over --image-name).
    #[arg(long, value_name = "AMI")]
    pub image_id: Option<String>,
    /// Launch the newest Amazon image whose name matches this pattern (`*` wildcards).
    #[arg(long, value_name = "PATTERN")]
    pub image_name: Option<String>,
    /// Remote login user.
    #[arg(long)]
    pub user: Option<LoginUser>,
    /// IAM instance profile given to the instance, so it needs no copied credentials.
    #[arg(long, value_name = "NAME")]
    pub instance_profile: Option<String>,
    /// Subnet to launch in.
    #[arg(long, value_name = "ID")]
    pub subnet_id: Option<String>,
    /// Subnets to try in turn (after --subnet-id) when one has no capacity; all in one VPC.
    #[arg(long, value_name = "S1,S2")]
    pub subnet_ids: Option<SubnetIds>,
    /// Root volume size in GiB.
    #[arg(long, value_name = "GIB")]
    pub volume_size: Option<u32>,
    /// Extra tag for the instance and its resources; repeat for more.
    #[arg(long = "tag", value_name = "KEY=VALUE")]
    pub tags: Vec<Tag>,
    /// The instance's Name tag.
    #[arg(long)]
    pub name: Option<String>,
    /// Remote directory to sync into and run in.
    #[arg(long, value_name = "DIR")]
    pub remote_dir: Option<String>,
    /// Launch a spot instance (one-time: it cannot be stopped); on-demand when there is no
    /// spot capacity.
    #[arg(long)]
    pub spot: bool,
    /// With --spot: the most to pay per hour, in USD.
    #[arg(long, value_name = "USD")]
    pub max_price: Option<String>,
    /// Spot or nothing: fail rather than launch on-demand when there is no spot capacity.
    #[arg(long)]
    pub spot_only: bool,
    /// Launch N instances as one cluster (one zone, a placement group where the type takes
    /// one) and run the command on each, with torchrun's and MPI's variables set.
    #[arg(long, value_name = "N")]
    pub nodes: Option<u32>,
    /// Give each node an Elastic Fabric Adapter, for types that have one (p4d, p5, g5.12xlarge…).
    #[arg(long)]
    pub efa: bool,
    /// Private key of the EC2 key pair named by --key-name, instead of a fresh per-instance key.
    #[arg(short = 'i', long = "identity", short_alias = 'I', value_name = "FILE")]
    pub identity_file: Option<PathBuf>,
    /// EC2 key pair to launch with (the owner is $TRIGRAM, else $USER); without -i its private
    /// key is read from ~/.ssh/NAME.pem.
    #[arg(long, value_name = "NAME")]
    pub key_name: Option<String>,
}

#[derive(Debug, Args)]
#[command(next_help_heading = "Network")]
pub struct NetworkFlags {
    /// Which of the instance's addresses to dial: public, private (from inside its VPC, over a
    /// VPN or Direct Connect) or auto (the public one, else the private one).
    #[arg(long, value_name = "public|private|auto")]
    pub address: Option<Address>,
    /// Dial this address instead of the instance's IP (SSM port forward, bastion tunnel).
    /// The instance's host key is still required.
    #[arg(long, value_name = "HOST:PORT")]
    pub connect: Option<HostPort>,
    /// Allow SSH from this CIDR instead of this machine's public IP /32.
    #[arg(long, value_name = "CIDR")]
    pub ssh_cidr: Option<ipnet::IpNet>,
    /// Launch into this security group (id or name, in the launch's VPC), made by your admin:
    /// it is used as it is, never changed nor deleted.
    #[arg(long, value_name = "ID|NAME")]
    pub security_group: Option<String>,
    /// Keep the connection to an instance left running this long, for the next run; off: never.
    #[arg(long, value_name = "DURATION")]
    pub keep_connection: Option<Limit>,
    /// Give up if the instance is not running with SSH letting us in after this many seconds.
    #[arg(long, value_name = "SECONDS")]
    pub boot_timeout: Option<Timeout>,
}

#[derive(Debug, Args)]
#[command(next_help_heading = "The command's environment")]
pub struct EnvFlags {
    /// Set NAME in the remote command's environment, to VALUE or to its value here (refused
    /// when unset). Repeat for more. Sent over SSH, never on a command line.
    #[arg(short = 'e', long = "env", value_name = "NAME[=VALUE]", conflicts_with_all = NOT_WITH_ENV)]
    pub env: Vec<EnvEntry>,
    /// Read variables for the remote command from FILE: NAME=VALUE lines (or NAME, for its
    /// value here), # comments. Repeat for more; -e wins.
    #[arg(long, value_name = "FILE", conflicts_with_all = NOT_WITH_ENV)]
    pub env_file: Vec<PathBuf>,
    /// Also send variables whose names look like secrets (AWS_*, *_TOKEN, *_SECRET*,
    /// *PASSWORD*): every process of the login user on the instance can read them.
    #[arg(long)]
    pub allow_secret_env: bool,
}

#[derive(Debug, Args)]
#[command(next_help_heading = "Forwards (over the one SSH connection)")]
pub struct ForwardFlags {
    /// Local port forward, as ssh: connections to [BIND:]PORT here (127.0.0.1 by default) go to
    /// HOST:HOSTPORT as seen from the instance. Repeat for more.
    #[arg(short = 'L', value_name = "[BIND:]PORT:HOST:HOSTPORT")]
    pub local: Vec<Forward>,
    /// Remote port forward, as ssh: connections to [BIND:]PORT on the instance (its loopback by
    /// default) come to HOST:HOSTPORT as seen from here. Repeat for more.
    #[arg(short = 'R', value_name = "[BIND:]PORT:HOST:HOSTPORT")]
    pub remote: Vec<Forward>,
}

#[derive(Debug, Args)]
#[command(next_help_heading = "Settings")]
pub struct ConfigFlags {
    /// Use the settings of the [preset.NAME] table of the config files: they beat the files'
    /// other settings; .env, the environment and flags beat them. Also SSH_EC2_PRESET.
    #[arg(long, value_name = "NAME")]
    pub preset: Option<String>,
    /// Print every setting, its value and where it came from, then exit (no AWS call).
    #[arg(long)]
    pub show_config: bool,
    /// Print a shell completion script or the man page, then exit (see README.md, "Install").
    #[arg(long, value_name = "WHAT")]
    pub generate: Option<Generated>,
    /// For an AWS admin: create or update the IAM policy SshEc2Access, the group SshEc2 that
    /// carries it, and the instance roles and profiles ssh-ec2-* (the files of policies/),
    /// then exit. Running it again changes nothing.
    #[arg(long)]
    pub setup: bool,
}

#[derive(Debug, Args)]
#[command(next_help_heading = "Your instances")]
pub struct FleetFlags {
    /// List your instances in the region: directory, host, state, type, market, launch time,
    /// expiry, whether this machine holds their keys, and their job's state.
    #[arg(long)]
    pub list: bool,
    /// With --list or --gc: every enabled region, not only the current one.
    #[arg(long, requires = "region_modes")]
    pub all_regions: bool,
    /// Bring this directory's results home (starting its instance if stopped), then terminate
    /// it and remove its security group and keys. Launches nothing; no instance is no error.
    /// What still runs there (its job, an earlier run's command) is left alone, unless --force.
    #[arg(long)]
    pub down: bool,
    /// With --down: first end what still runs there (this directory's job, a command of an
    /// earlier run whose client is gone), then bring the results home and terminate.
    #[arg(long, requires = "down")]
    pub force: bool,
    /// Show what ssh-ec2 left behind: instances whose keys are gone from this machine or whose
    /// expiry passed, security groups and launches without an instance, stale local state.
    /// With --yes, remove them.
    #[arg(long)]
    pub gc: bool,
    /// With --gc: remove what it shows (terminating those instances).
    #[arg(long, requires = "gc")]
    pub yes: bool,
}

#[derive(Debug, Args)]
#[command(next_help_heading = "Before and beside a run")]
pub struct LookFlags {
    /// Change nothing: say what would be done (with a run: the region, image, type, subnet,
    /// SSH rule, user-data, what would be synced, the price, and whether AWS would allow the
    /// launch; with --setup: what it would create or update), then exit.
    #[arg(long, conflicts_with_all = NOT_WITH_DRY_RUN)]
    pub dry_run: bool,
    /// With --dry-run or --list: print JSON, for scripts.
    #[arg(long, requires = "json_modes")]
    pub json: bool,
    /// Print an OpenSSH config block (Host alias, key, pinned host key) for this directory's
    /// instance, for ssh, scp, sftp and VS Code Remote-SSH.
    #[arg(long)]
    pub ssh_config: bool,
    /// With --ssh-config: write it where ~/.ssh/config includes it (removed when the instance
    /// is terminated).
    #[arg(long, requires = "ssh_config")]
    pub install: bool,
}

#[derive(Debug, Args)]
#[command(next_help_heading = "Sync")]
pub struct SyncFlags {
    /// Do not sync the directory up before the command, nor pull results back after it.
    #[arg(long)]
    pub no_rsync: bool,
}

#[derive(Debug, Args)]
#[command(next_help_heading = "Output")]
pub struct OutputFlags {
    /// List the files rsync transfers; twice (-vv) for debug logs.
    #[arg(short, long, action = ArgAction::Count, alias = "no-quiet", conflicts_with = "quiet")]
    pub verbose: u8,
    /// Print nothing but errors and warnings (and the remote command's own output).
    #[arg(short, long)]
    pub quiet: bool,
}
