//! The run plan: flags and settings validated into what the run will do. Everything that can be
//! refused is refused here, before any AWS call.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use ipnet::IpNet;

use crate::cli::{Cli, Mode};
use crate::cloud::Ownership;
use crate::config::{EndOfLife, HostPort, Layer, Multiplex};
use crate::keys::{LoginKey, load_identity};
use crate::remote::RemoteDir;
use crate::remote::watchdog::{Arming, Limit};
use crate::ssh::forward::{Forward, LocalForward};

pub const DEFAULT_INSTANCE_TYPE: &str = "g4dn.xlarge";
pub const DEFAULT_IMAGE_NAME: &str = "Deep Learning Base OSS Nvidia Driver GPU AMI (Ubuntu 22.04)*";
pub const DEFAULT_CHECKIP_URL: &str = "https://checkip.amazonaws.com";
pub const DEFAULT_BOOT_TIMEOUT: Duration = Duration::from_secs(600);
/// Long enough for a laptop to wake up or change networks.
pub const DEFAULT_RECONNECT_TIMEOUT: Duration = Duration::from_secs(300);
/// A day: a forgotten instance costs at most that; a longer job asks for more.
pub const DEFAULT_MAX_LIFETIME: Limit = Limit::hours(24);
pub const DEFAULT_IDLE_STOP: Limit = Limit::hours(1);
/// EC2 tag values hold at most 256 characters.
const MAX_TAG_VALUE: usize = 256;

#[derive(Debug)]
pub struct Plan {
    /// tmux/screen as asked (`None`: not asked; the mode decides).
    pub multiplex: Option<Multiplex>,
    pub local_dir: PathBuf,
    /// The remote command; `None` opens a login shell.
    pub command: Option<String>,
    pub end_of_life: EndOfLife,
    /// `None` with --no-rsync.
    pub sync: Option<SyncPlan>,
    pub remote_dir: RemoteDir,
    /// ssh-ec2's own region setting; `None` leaves it to the AWS config chain.
    pub region: Option<String>,
    /// AWS_PROFILE, also from `.env` or a config file; `None`: the AWS default profile.
    pub aws_profile: Option<String>,
    pub launch: LaunchPlan,
    pub ownership: Ownership,
    pub login: LoginKey,
    pub connect: Option<HostPort>,
    pub ingress: Ingress,
    pub boot_timeout: Duration,
    /// How long to try to reconnect to a running job after the connection dropped.
    pub reconnect_timeout: Duration,
    /// Request a PTY and put the local terminal in raw mode.
    pub pty: bool,
    /// Pass local stdin on; not from a terminal we are in the background of (it would stop us).
    pub forward_stdin: bool,
    pub state_dir: PathBuf,
    /// Where rsync's relay socket goes.
    pub socket_dir: PathBuf,
    /// `-L`, their local ports already bound, and `-R`.
    pub local_forwards: Vec<LocalForward>,
    pub remote_forwards: Vec<Forward>,
    /// The instance's dead-man switch, as this run arms it.
    pub watchdog: Arming,
}

#[derive(Debug)]
pub struct LaunchPlan {
    pub instance_type: String,
    /// Tried in order when no zone has capacity for `instance_type`.
    pub fallback_types: Vec<String>,
    pub image: ImageChoice,
    /// `None`: guessed from the image name.
    pub user: Option<String>,
    pub instance_profile: Option<String>,
    /// The subnets to try in turn (`subnet_id`, then `subnet_ids`); none: the default VPC.
    pub subnets: Vec<String>,
    /// An admin-made security group (id or name): used as it is, never changed nor deleted.
    /// `None`: a group of its own for each instance.
    pub security_group: Option<String>,
    pub volume_size: Option<u32>,
    /// Ownership, Name and user tags for everything the run creates.
    pub tags: Vec<(String, String)>,
    pub extra_boot_commands: Option<String>,
    /// `None`: on-demand.
    pub spot: Option<SpotPlan>,
}

/// A one-time spot instance: interrupted (terminated) when AWS needs the capacity back.
#[derive(Debug, Clone)]
pub struct SpotPlan {
    /// USD per hour; `None`: up to the on-demand price.
    pub max_price: Option<String>,
    /// No on-demand fallback.
    pub only: bool,
}

#[derive(Debug, Clone)]
pub enum ImageChoice {
    Id(String),
    NewestNamed(String),
}

/// Who may reach the instance's sshd.
#[derive(Debug, Clone)]
pub enum Ingress {
    Cidr(IpNet),
    /// This machine's public IP, as a checkip service sees it.
    CallerIp {
        checkip_url: String,
    },
}

#[derive(Debug)]
pub struct SyncPlan {
    pub rsync: PathBuf,
    pub version: crate::sync::Version,
    /// `.rsyncignore`, when the directory has one.
    pub ignore_file: Option<PathBuf>,
    /// Its top-level `.env` files that hold an AWS access key: never synced.
    pub env_files_with_aws_keys: Vec<String>,
}

/// What the plan needs to know about this machine.
pub struct Host {
    pub cwd: PathBuf,
    pub home: PathBuf,
    pub user_config: PathBuf,
    pub state_dir: PathBuf,
    pub runtime_dir: Option<PathBuf>,
    /// Identifies this machine's instances; the host name may change under them.
    pub machine_id: String,
    pub hostname: String,
    pub login_name: Option<String>,
    pub path_var: Option<std::ffi::OsString>,
    pub stdin_is_terminal: bool,
    pub stdout_is_terminal: bool,
    /// In the terminal's foreground process group (not `ssh-ec2 … &`).
    pub in_foreground: bool,
}

impl Host {
    pub fn detect() -> Result<Host> {
        use etcetera::BaseStrategy;
        use std::io::IsTerminal;
        let dirs = etcetera::base_strategy::Xdg::new()
            .context("cannot find your home directory: set HOME")?;
        let home = dirs.home_dir().to_path_buf();
        let login_name = std::env::var("USER")
            .ok()
            .filter(|u| !u.is_empty())
            .or_else(|| {
                nix::unistd::User::from_uid(nix::unistd::getuid())
                    .ok()
                    .flatten()
                    .map(|u| u.name)
            });
        let state_dir = dirs
            .state_dir()
            .unwrap_or_else(|| home.join(".local/state"))
            .join("ssh-ec2");
        Ok(Host {
            cwd: std::env::current_dir().context("cannot read the current directory")?,
            user_config: dirs.config_dir().join("ssh-ec2").join("config.toml"),
            machine_id: crate::machine::load_or_create(&state_dir)?,
            state_dir,
            home,
            hostname: nix::unistd::gethostname()
                .context("cannot read this machine's host name")?
                .to_string_lossy()
                .into_owned(),
            login_name,
            path_var: std::env::var_os("PATH"),
            stdin_is_terminal: std::io::stdin().is_terminal(),
            stdout_is_terminal: std::io::stdout().is_terminal(),
            in_foreground: nix::unistd::tcgetpgrp(std::io::stdin())
                .is_ok_and(|group| group == nix::unistd::getpgrp()),
            runtime_dir: dirs.runtime_dir(),
        })
    }
}

impl Plan {
    pub fn new(cli: &Cli, settings: Layer, host: &Host) -> Result<Plan> {
        let mode = cli.mode();
        match (mode, cli.command.is_empty()) {
            (Mode::Attach | Mode::Finish { .. }, false) => bail!(
                "--attach and --finish take no command: they come back to this directory's job \
                 (run `ssh-ec2 --detach COMMAND` to start one)"
            ),
            (Mode::Detach, true) => {
                bail!("--detach needs a command to run, e.g. ssh-ec2 --detach \"python train.py\"")
            }
            _ => {}
        }
        if cli.fleet.all_regions && !matches!(mode, Mode::List { .. } | Mode::Gc { .. }) {
            bail!("--all-regions goes with --list or --gc");
        }
        // --list and --gc look at all your instances, from any directory: nothing is synced.
        let whole_fleet = matches!(mode, Mode::List { .. } | Mode::Gc { .. });
        if mode == Mode::Detach && settings.multiplex == Some(Multiplex::None) {
            bail!(
                "--detach runs the command in tmux or screen: drop --multi none (or MULTIPLEX=none)"
            );
        }
        let local_dir = host.cwd.canonicalize().with_context(|| {
            format!(
                "cannot resolve the current directory {}",
                host.cwd.display()
            )
        })?;
        let home = host
            .home
            .canonicalize()
            .unwrap_or_else(|_| host.home.clone());
        let credentials = [".aws", ".ssh"].map(|dir| home.join(dir));
        if !whole_fleet
            && (home.starts_with(&local_dir)
                || credentials.iter().any(|c| local_dir.starts_with(c)))
        {
            bail!(
                "ssh-ec2 would copy {} to the instance, with your credentials (~/.aws, ~/.ssh): \
                 run it from a project directory",
                local_dir.display()
            );
        }
        let dir_tag = local_dir
            .to_str()
            .filter(|d| d.len() <= MAX_TAG_VALUE)
            .with_context(|| {
                format!(
                    "the path {} must be UTF-8 and at most {MAX_TAG_VALUE} bytes to tag the \
                     instance with it: run ssh-ec2 from a shorter path",
                    local_dir.display()
                )
            })?
            .to_string();
        let owner = settings
            .trigram
            .clone()
            .or_else(|| host.login_name.clone())
            .context("cannot tell who you are: set TRIGRAM (or USER) to your name")?;
        let ownership = Ownership {
            owner: owner.clone(),
            machine: host.machine_id.clone(),
            host: host.hostname.clone(),
            dir: dir_tag,
        };

        let remote_dir = match &settings.remote_dir {
            Some(dir) => RemoteDir::parse(dir)?,
            None => RemoteDir::default_for(&local_dir)?,
        };
        let sync = if cli.no_rsync || whole_fleet {
            None
        } else {
            let rsync = find_program("rsync", host.path_var.as_deref()).context(
                "rsync not found: install it with your package manager (apt install rsync, \
                 brew install rsync), or pass --no-rsync",
            )?;
            let version = crate::sync::local_rsync_version(&rsync)?;
            let ignore = local_dir.join(".rsyncignore");
            Some(SyncPlan {
                rsync,
                version,
                ignore_file: ignore.is_file().then_some(ignore),
                env_files_with_aws_keys: crate::sync::env_files_with_aws_keys(&local_dir),
            })
        };

        let login = match (&settings.identity_file, &settings.key_name) {
            (None, None) => LoginKey::PerRun,
            (identity, name) => {
                let name = name.clone().unwrap_or_else(|| owner.clone());
                let path = match identity {
                    Some(path) => crate::config::expand_home(path, &host.home, &host.cwd),
                    None => host.home.join(".ssh").join(format!("{name}.pem")),
                };
                let key = load_identity(&path).with_context(|| {
                    format!("key pair `{name}` needs its private key (-i FILE or AWS_PEM)")
                })?;
                LoginKey::KeyPair {
                    name,
                    key: Arc::new(key),
                    path,
                }
            }
        };

        let name = settings.name.clone().unwrap_or_else(|| {
            let dir = local_dir
                .file_name()
                .map_or("root".into(), |n| n.to_string_lossy());
            format!("ssh-ec2-{owner}-{dir}")
        });
        let mut tags = ownership.tags();
        tags.push(("Name".into(), name.chars().take(MAX_TAG_VALUE).collect()));
        tags.extend(settings.tags.0.clone());

        if let Some(size) = settings.volume_size
            && !(1..=16384).contains(&size)
        {
            bail!("volume size {size} GiB is out of range: EBS volumes are 1 to 16384 GiB");
        }
        let reconnect_timeout = match settings.reconnect_timeout {
            Some(0) => {
                bail!("a reconnect timeout of 0 seconds cannot work: give a number of seconds")
            }
            Some(secs) => Duration::from_secs(secs),
            None => DEFAULT_RECONNECT_TIMEOUT,
        };
        let boot_timeout = match settings.boot_timeout {
            Some(0) => bail!("a boot timeout of 0 seconds cannot work: give a number of seconds"),
            Some(secs) => Duration::from_secs(secs),
            None => DEFAULT_BOOT_TIMEOUT,
        };
        let image = match (&settings.image_id, &settings.image_name) {
            (Some(id), _) => ImageChoice::Id(id.clone()),
            (None, Some(pattern)) => ImageChoice::NewestNamed(pattern.clone()),
            (None, None) => ImageChoice::NewestNamed(DEFAULT_IMAGE_NAME.into()),
        };
        let ingress = match settings.ssh_cidr {
            Some(cidr) => Ingress::Cidr(cidr.trunc()),
            None => Ingress::CallerIp {
                checkip_url: settings
                    .checkip_url
                    .clone()
                    .unwrap_or(DEFAULT_CHECKIP_URL.into()),
            },
        };
        let end_of_life = match mode {
            // What --down is for; --stop and --leave are refused with it.
            Mode::Down => EndOfLife::Terminate,
            _ => settings.final_state.unwrap_or(EndOfLife::Terminate),
        };
        let spot = spot_plan(&settings, end_of_life)?;
        let command = (!cli.command.is_empty()).then(|| cli.command.join(" "));
        // Bound now: a taken port is refused before anything is launched.
        let local_forwards = cli
            .forwards
            .local
            .iter()
            .map(|spec| LocalForward::bind(spec.clone()))
            .collect::<Result<_>>()?;

        Ok(Plan {
            multiplex: settings.multiplex,
            local_dir,
            command,
            end_of_life,
            sync,
            remote_dir,
            region: settings.region,
            aws_profile: settings.aws_profile,
            launch: LaunchPlan {
                instance_type: settings
                    .instance_type
                    .unwrap_or(DEFAULT_INSTANCE_TYPE.into()),
                fallback_types: settings.fallback_types.unwrap_or_default().0,
                image,
                user: settings.user,
                instance_profile: settings.instance_profile,
                subnets: settings
                    .subnet_id
                    .into_iter()
                    .chain(settings.subnet_ids.unwrap_or_default().0)
                    .fold(Vec::new(), |mut subnets, id| {
                        if !subnets.contains(&id) {
                            subnets.push(id);
                        }
                        subnets
                    }),
                security_group: settings.security_group,
                volume_size: settings.volume_size,
                tags,
                extra_boot_commands: settings.user_data,
                spot,
            },
            ownership,
            login,
            connect: settings.connect,
            ingress,
            boot_timeout,
            reconnect_timeout,
            pty: host.stdin_is_terminal && host.stdout_is_terminal && host.in_foreground,
            forward_stdin: !host.stdin_is_terminal || host.in_foreground,
            state_dir: host.state_dir.clone(),
            socket_dir: host
                .runtime_dir
                .as_ref()
                .map_or(host.state_dir.clone(), |d| d.join("ssh-ec2")),
            local_forwards,
            remote_forwards: cli.forwards.remote.clone(),
            watchdog: Arming::new(
                std::time::SystemTime::now(),
                settings.max_lifetime.unwrap_or(DEFAULT_MAX_LIFETIME),
                settings.idle_stop.unwrap_or(DEFAULT_IDLE_STOP),
            ),
        })
    }
}

/// Spot settings, checked: `spot_only` implies `spot`.
fn spot_plan(settings: &Layer, end_of_life: EndOfLife) -> Result<Option<SpotPlan>> {
    let only = settings.spot_only == Some(true);
    if settings.spot != Some(true) && !only {
        if settings.max_price.is_some() {
            bail!("--max-price (SSH_EC2_MAX_PRICE, max_price) is for spot instances: add --spot");
        }
        return Ok(None);
    }
    if end_of_life == EndOfLife::Stop {
        bail!(
            "--stop cannot work with --spot: AWS cannot stop a one-time spot instance; use \
             --terminate or --leave, or drop --spot (and spot = true, SSH_EC2_SPOT)"
        );
    }
    if let Some(price) = &settings.max_price
        && !price.parse::<f64>().is_ok_and(|p| p.is_finite() && p > 0.0)
    {
        bail!("--max-price {price}: give a price per hour in USD, e.g. 0.50");
    }
    Ok(Some(SpotPlan {
        max_price: settings.max_price.clone(),
        only,
    }))
}

/// Looks `program` up in PATH, like a shell would.
fn find_program(program: &str, path_var: Option<&std::ffi::OsStr>) -> Option<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    std::env::split_paths(path_var?)
        .map(|dir| dir.join(program))
        .find(|candidate| {
            candidate
                .metadata()
                .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        })
}
