//! Settings, layered: defaults < ~/.config/ssh-ec2/config.toml < ./.ssh-ec2.toml < the chosen
//! preset < ./.env < environment < flags. Every layer is the same `Layer`; `Settings` remembers
//! where each value came from (for `--show-config`); `plan` applies the defaults and validates.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use anyhow::{Context, Result, anyhow, bail};
use serde::Deserialize;

use crate::cli::Cli;
use crate::plan::{
    DEFAULT_BOOT_TIMEOUT, DEFAULT_CHECKIP_URL, DEFAULT_IMAGE_NAME, DEFAULT_INSTANCE_TYPE,
    DEFAULT_RECONNECT_TIMEOUT,
};
use crate::plan::{DEFAULT_IDLE_STOP, DEFAULT_MAX_LIFETIME};
use crate::remote::watchdog::Limit;

/// What happens to the instance once the command is done.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(try_from = "String")]
pub enum EndOfLife {
    Terminate,
    Stop,
    Leave,
}

impl FromStr for EndOfLife {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s.to_ascii_lowercase().as_str() {
            // "destroy" is the original bash tool's spelling.
            "terminate" | "destroy" => Ok(Self::Terminate),
            "stop" => Ok(Self::Stop),
            "leave" => Ok(Self::Leave),
            _ => Err(format!(
                "`{s}` is not an end-of-life policy: write terminate, stop or leave"
            )),
        }
    }
}

impl fmt::Display for EndOfLife {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Terminate => "terminate",
            Self::Stop => "stop",
            Self::Leave => "leave",
        })
    }
}

/// A `host:port` to dial instead of the instance's own address.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(try_from = "String")]
pub struct HostPort {
    pub host: String,
    pub port: u16,
}

impl FromStr for HostPort {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let hint = || format!("`{s}` is not HOST:PORT: write e.g. 127.0.0.1:2222 or [::1]:2222");
        let (host, port) = s.rsplit_once(':').ok_or_else(hint)?;
        let host = host
            .strip_prefix('[')
            .and_then(|h| h.strip_suffix(']'))
            .unwrap_or(host);
        let port: u16 = port.parse().map_err(|_| hint())?;
        if host.is_empty() || port == 0 {
            return Err(hint());
        }
        Ok(Self {
            host: host.to_string(),
            port,
        })
    }
}

impl fmt::Display for HostPort {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.host.contains(':') {
            write!(f, "[{}]:{}", self.host, self.port)
        } else {
            write!(f, "{}:{}", self.host, self.port)
        }
    }
}

/// A user tag `KEY=VALUE` for the instance and the resources of its run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tag {
    pub key: String,
    pub value: String,
}

impl FromStr for Tag {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let (key, value) = s
            .split_once('=')
            .ok_or_else(|| format!("`{s}` is not a tag: write KEY=VALUE"))?;
        check_tag(key, value)?;
        Ok(Self {
            key: key.to_string(),
            value: value.to_string(),
        })
    }
}

fn check_tag(key: &str, value: &str) -> Result<(), String> {
    if key.is_empty() || key.len() > 128 || value.len() > 256 {
        return Err(format!(
            "tag `{key}={value}`: keys are 1-128 characters and values at most 256"
        ));
    }
    if key.starts_with("aws:") || key.starts_with("ssh-ec2:") || key == "Name" {
        return Err(format!(
            "tag key `{key}` is reserved: aws:* belongs to AWS, ssh-ec2:* to this tool, Name to --name"
        ));
    }
    Ok(())
}

/// User tags, merged key by key across layers.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(try_from = "BTreeMap<String, String>")]
pub struct Tags(pub BTreeMap<String, String>);

impl TryFrom<BTreeMap<String, String>> for Tags {
    type Error = String;
    fn try_from(map: BTreeMap<String, String>) -> Result<Self, String> {
        map.iter().try_for_each(|(k, v)| check_tag(k, v))?;
        Ok(Self(map))
    }
}

impl FromStr for Tags {
    type Err = String;
    /// `KEY=VALUE,KEY=VALUE`, the form of the SSH_EC2_TAGS variable.
    fn from_str(s: &str) -> Result<Self, String> {
        let tags = s
            .split(',')
            .filter(|t| !t.trim().is_empty())
            .map(|t| t.trim().parse::<Tag>().map(|t| (t.key, t.value)))
            .collect::<Result<_, _>>()?;
        Ok(Self(tags))
    }
}

/// Instance types to fall back on, in order (`T1,T2` in a flag or variable, a list in TOML).
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
pub struct InstanceTypes(pub Vec<String>);

impl FromStr for InstanceTypes {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        comma_list(s, "instance types", "g5.xlarge,g6.xlarge").map(Self)
    }
}

/// Subnets to launch in, in order, moving on when one has no capacity (`S1,S2` in a flag or
/// variable, a list in TOML).
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
pub struct SubnetIds(pub Vec<String>);

impl FromStr for SubnetIds {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        comma_list(s, "subnet ids", "subnet-0a1b,subnet-2c3d").map(Self)
    }
}

/// `A,B` (spaces around items ignored), none of them empty.
fn comma_list(s: &str, what: &str, example: &str) -> Result<Vec<String>, String> {
    let items: Vec<String> = s.split(',').map(|t| t.trim().to_string()).collect();
    if items.iter().any(String::is_empty) {
        return Err(format!(
            "`{s}` is not a list of {what}: write e.g. {example}"
        ));
    }
    Ok(items)
}

/// The original tool's session multiplexer setting (`""` is none, as its recipes set it).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(try_from = "String")]
pub enum Multiplex {
    None,
    Tmux,
    Screen,
}

impl FromStr for Multiplex {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "" | "none" => Ok(Self::None),
            "tmux" => Ok(Self::Tmux),
            "screen" => Ok(Self::Screen),
            _ => Err(format!(
                "`{s}` is not a multiplexer: write tmux, screen or none"
            )),
        }
    }
}

/// Config-file values that are read like their environment-variable form, through `FromStr`.
macro_rules! deserialize_from_str {
    ($($ty:ty),*) => {$(
        impl TryFrom<String> for $ty {
            type Error = String;
            fn try_from(s: String) -> Result<Self, String> {
                s.parse()
            }
        }
    )*};
}

impl fmt::Display for Multiplex {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::None => "none",
            Self::Tmux => "tmux",
            Self::Screen => "screen",
        })
    }
}

deserialize_from_str!(EndOfLife, HostPort, Multiplex, Limit);

/// A setting's value as `--show-config` prints it.
trait Shown {
    fn shown(&self) -> String;
}

macro_rules! shown_by_display {
    ($($ty:ty),*) => {$(
        impl Shown for $ty {
            fn shown(&self) -> String {
                self.to_string()
            }
        }
    )*};
}

shown_by_display!(
    String,
    u32,
    u64,
    EndOfLife,
    HostPort,
    ipnet::IpNet,
    Multiplex,
    Limit,
    bool
);

impl Shown for InstanceTypes {
    fn shown(&self) -> String {
        self.0.join(",")
    }
}

impl Shown for SubnetIds {
    fn shown(&self) -> String {
        self.0.join(",")
    }
}

impl Shown for PathBuf {
    fn shown(&self) -> String {
        self.display().to_string()
    }
}

/// What an unset setting becomes, as `--show-config` tells it; `plan` applies it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fallback {
    /// Nothing: the feature is off, or another setting decides.
    None,
    Value(String),
    /// Worked out during the run, as described.
    Computed(&'static str),
}

fn value(value: impl fmt::Display) -> Fallback {
    Fallback::Value(value.to_string())
}

fn computed(how: &'static str) -> Fallback {
    Fallback::Computed(how)
}

/// A setting declared without `=> fallback` has none.
macro_rules! fallback {
    () => {
        Fallback::None
    };
    ($fallback:expr) => {
        $fallback
    };
}

/// SSH_EC2_TAGS: `KEY=VALUE,KEY=VALUE`, merged key by key like the `[tags]` tables.
const TAGS_VARIABLE: &str = "SSH_EC2_TAGS";
/// Chooses a preset, like --preset.
pub const PRESET_VARIABLE: &str = "SSH_EC2_PRESET";

/// Declares `Layer` once: each field with the environment variables that set it (first set wins)
/// and, after `=>`, what it is when no layer sets it.
macro_rules! layer {
    ($(
        $(#[$doc:meta])* $field:ident : $ty:ty = [$($env:literal),*] $(=> $fallback:expr)?
    ),* $(,)?) => {
        /// One source of settings; every field is optional so layers can be stacked.
        #[derive(Debug, Default, Clone, Deserialize)]
        #[serde(deny_unknown_fields)]
        pub struct Layer {
            $( $(#[$doc])* pub $field: Option<$ty>, )*
            /// Tags merge key by key instead of replacing each other.
            #[serde(default)]
            pub tags: Tags,
        }

        /// A config file: its settings, and `[preset.NAME]` tables of the same settings.
        #[derive(Deserialize)]
        #[serde(deny_unknown_fields)]
        struct ConfigFile {
            $( $field: Option<$ty>, )*
            #[serde(default)]
            tags: Tags,
            #[serde(default)]
            preset: BTreeMap<String, Layer>,
        }

        impl ConfigFile {
            fn split(self) -> (Layer, BTreeMap<String, Layer>) {
                (Layer { $( $field: self.$field, )* tags: self.tags }, self.preset)
            }
        }

        impl Layer {
            /// Every variable ssh-ec2 reads settings from, in the environment or in `.env`.
            const VARIABLES: &[&str] = &[$($($env,)*)* TAGS_VARIABLE, PRESET_VARIABLE];

            /// `top` wins field by field.
            fn under(self, top: Layer) -> Layer {
                let mut tags = self.tags;
                tags.0.extend(top.tags.0);
                Layer { $( $field: top.$field.or(self.$field), )* tags }
            }

            /// Reads the variables through `env`; also says which variable set each field.
            /// `source` names where they are, for errors.
            fn from_env(
                env: &dyn Fn(&str) -> Option<String>,
                source: &str,
            ) -> Result<(Layer, BTreeMap<&'static str, &'static str>)> {
                let mut layer = Layer::default();
                let mut set_by = BTreeMap::new();
                $(
                    if let Some((value, name)) = env_value(env, source, &[$($env),*])? {
                        layer.$field = Some(value);
                        set_by.insert(stringify!($field), name);
                    }
                )*
                if let Some((tags, name)) = env_value::<Tags>(env, source, &[TAGS_VARIABLE])? {
                    layer.tags = tags;
                    set_by.insert("tags", name);
                }
                Ok((layer, set_by))
            }

            /// The fields this layer sets (tags aside).
            fn set_fields(&self) -> Vec<&'static str> {
                let mut set = Vec::new();
                $( if self.$field.is_some() { set.push(stringify!($field)); } )*
                set
            }

            /// Each field in declaration order (tags aside): its name, its value as text, and
            /// what it is when unset.
            fn fields(&self) -> Vec<(&'static str, Option<String>, Fallback)> {
                vec![$(
                    (
                        stringify!($field),
                        self.$field.as_ref().map(Shown::shown),
                        fallback!($($fallback)?),
                    ),
                )*]
            }
        }
    };
}

layer! {
    region: String = ["AWS_REGION", "AWS_DEFAULT_REGION"]
        => computed("the AWS profile's, else eu-central-1"),
    /// The AWS profile whose region and credentials are used.
    aws_profile: String = ["AWS_PROFILE"] => computed("the AWS default profile"),
    instance_type: String = ["AWS_INSTANCE_TYPE"] => value(DEFAULT_INSTANCE_TYPE),
    /// Types to try in turn when AWS has no capacity for `instance_type`.
    fallback_types: InstanceTypes = ["SSH_EC2_FALLBACK_TYPES"] => computed("none"),
    image_id: String = ["AWS_IMAGE_ID"],
    image_name: String = ["AWS_IMAGE_NAME"] => value(DEFAULT_IMAGE_NAME),
    user: String = ["AWS_INSTANCE_USER"] => computed("guessed from the image name"),
    instance_profile: String = ["AWS_IAM_INSTANCE_PROFILE"],
    subnet_id: String = ["SSH_EC2_SUBNET_ID"] => computed("a default subnet of the default VPC"),
    /// An admin-made security group (id or name) to launch into, instead of one per instance.
    security_group: String = ["AWS_SECURITY_GROUP"]
        => computed("a new one per instance, SSH from your IP only"),
    /// Subnets to try in turn when one has no capacity (after `subnet_id`, if set).
    subnet_ids: SubnetIds = ["SSH_EC2_SUBNET_IDS"] => computed("none"),
    volume_size: u32 = ["SSH_EC2_VOLUME_SIZE"] => computed("the image's"),
    name: String = ["AWS_NAME_INSTANCE"] => computed("ssh-ec2-<owner>-<directory name>"),
    remote_dir: String = ["AWS_RSYNC_DIR"] => computed("~/<directory name>"),
    key_name: String = ["AWS_KEY_NAME"] => computed("a fresh key per instance; with -i, the owner"),
    identity_file: PathBuf = ["AWS_PEM"] => computed("with a key pair name, ~/.ssh/<name>.pem"),
    final_state: EndOfLife = ["AWS_FINAL_STATE"] => value(EndOfLife::Terminate),
    /// The instance stops itself this long after the last run began (its dead-man switch).
    max_lifetime: Limit = ["SSH_EC2_MAX_LIFETIME"] => value(DEFAULT_MAX_LIFETIME),
    /// The instance stops itself once nothing has used it for this long.
    idle_stop: Limit = ["SSH_EC2_IDLE_STOP"] => value(DEFAULT_IDLE_STOP),
    /// Launch a one-time spot instance; on-demand when there is no spot capacity.
    spot: bool = ["SSH_EC2_SPOT"] => value(false),
    /// The most to pay per hour for a spot instance, in USD.
    max_price: String = ["SSH_EC2_MAX_PRICE"] => computed("the on-demand price"),
    /// Spot or nothing: no on-demand fallback.
    spot_only: bool = ["SSH_EC2_SPOT_ONLY"] => value(false),
    connect: HostPort = ["SSH_EC2_CONNECT"] => computed("the instance's IP, port 22"),
    ssh_cidr: ipnet::IpNet = ["SSH_EC2_SSH_CIDR"] => computed("this machine's public IP"),
    checkip_url: String = ["SSH_EC2_CHECKIP_URL"] => value(DEFAULT_CHECKIP_URL),
    boot_timeout: u64 = ["SSH_EC2_BOOT_TIMEOUT"] => value(DEFAULT_BOOT_TIMEOUT.as_secs()),
    reconnect_timeout: u64 = ["SSH_EC2_RECONNECT_TIMEOUT"]
        => value(DEFAULT_RECONNECT_TIMEOUT.as_secs()),
    multiplex: Multiplex = ["MULTIPLEX"] => computed("none; tmux, else screen, for --detach"),
    /// Owner name for tags and the default key pair (the original tool's TRIGRAM).
    trigram: String = ["TRIGRAM"] => computed("$USER, else the account's name"),
    /// Shell commands appended to the instance's boot script.
    user_data: String = ["AWS_USER_DATA"],
}

/// Reads the first set, non-empty variable of `names`, and says which it was; an unparsable value
/// names the variable and its `source`.
fn env_value<T: FromStr>(
    env: &dyn Fn(&str) -> Option<String>,
    source: &str,
    names: &[&'static str],
) -> Result<Option<(T, &'static str)>>
where
    T::Err: fmt::Display,
{
    for &name in names {
        if let Some(raw) = env(name).filter(|v| !v.is_empty()) {
            return match raw.parse() {
                Ok(value) => Ok(Some((value, name))),
                Err(e) => bail!("{name}={raw} in {source}: {e}"),
            };
        }
    }
    Ok(None)
}

impl Layer {
    fn from_flags(cli: &Cli) -> Layer {
        let i = &cli.instance;
        let n = &cli.network;
        // Every field listed, so a new setting cannot be forgotten here.
        Layer {
            region: i.region.clone(),
            aws_profile: None,
            instance_type: i.instance_type.clone(),
            fallback_types: i.fallback_types.clone(),
            image_id: i.image_id.clone(),
            image_name: i.image_name.clone(),
            user: i.user.clone(),
            instance_profile: i.instance_profile.clone(),
            subnet_id: i.subnet_id.clone(),
            security_group: n.security_group.clone(),
            subnet_ids: i.subnet_ids.clone(),
            volume_size: i.volume_size,
            name: i.name.clone(),
            remote_dir: i.remote_dir.clone(),
            key_name: cli.key_name.clone(),
            identity_file: cli.identity_file.clone(),
            final_state: cli.end_of_life.chosen(),
            max_lifetime: i.max_lifetime,
            idle_stop: i.idle_stop,
            spot: i.spot.then_some(true),
            max_price: i.max_price.clone(),
            spot_only: i.spot_only.then_some(true),
            connect: n.connect.clone(),
            ssh_cidr: n.ssh_cidr,
            checkip_url: None,
            boot_timeout: n.boot_timeout,
            reconnect_timeout: n.reconnect_timeout,
            multiplex: cli.job.multiplex,
            trigram: None,
            user_data: None,
            tags: Tags(
                i.tags
                    .iter()
                    .map(|t| (t.key.clone(), t.value.clone()))
                    .collect(),
            ),
        }
    }
}

/// Reads a TOML config file: its settings and its presets; a missing file has none. Relative
/// paths in it are relative to the file's directory, and `~/` is the home directory.
fn read_config_file(path: &Path, home: &Path) -> Result<(Layer, BTreeMap<String, Layer>)> {
    let Some(text) = read_if_present(path)? else {
        return Ok(Default::default());
    };
    let file: ConfigFile = toml::from_str(&text).with_context(|| {
        format!(
            "{} is not a valid ssh-ec2 config file (see README.md, \"Configuration\")",
            path.display()
        )
    })?;
    let (mut layer, mut presets) = file.split();
    let base = path.parent().unwrap_or(Path::new("."));
    for layer in std::iter::once(&mut layer).chain(presets.values_mut()) {
        if let Some(file) = layer.identity_file.take() {
            layer.identity_file = Some(expand_home(&file, home, base));
        }
    }
    Ok((layer, presets))
}

/// Reads ssh-ec2's own variables from a `.env` file (its other keys belong to the project); a
/// missing file has none.
fn read_dot_env(path: &Path) -> Result<BTreeMap<String, String>> {
    let Some(text) = read_if_present(path)? else {
        return Ok(BTreeMap::new());
    };
    let entries = crate::dotenv::parse(&text).map_err(|e| {
        anyhow!(
            "{}, {e}: close the quote (ssh-ec2 reads this file for its own variables)",
            path.display()
        )
    })?;
    let mut own = BTreeMap::new();
    for entry in entries {
        if !Layer::VARIABLES.contains(&entry.key.as_str()) {
            continue;
        }
        let value = entry.value.map_err(|e| {
            anyhow!(
                "{}, line {}: {}: {e}",
                path.display(),
                entry.line,
                entry.key
            )
        })?;
        own.insert(entry.key, value);
    }
    Ok(own)
}

fn read_if_present(path: &Path) -> Result<Option<String>> {
    match std::fs::read_to_string(path) {
        Ok(text) => Ok(Some(text)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e).with_context(|| format!("cannot read {}", path.display())),
    }
}

/// `~/x` → `$HOME/x`; a relative path is taken relative to `base`.
pub fn expand_home(path: &Path, home: &Path, base: &Path) -> PathBuf {
    match path.strip_prefix("~") {
        Ok(rest) => home.join(rest),
        Err(_) => base.join(path),
    }
}

/// Which config file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConfigFileKind {
    User,
    Project,
}

impl fmt::Display for ConfigFileKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::User => "user file",
            Self::Project => "project file",
        })
    }
}

/// Where a setting's value came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Origin {
    File(ConfigFileKind),
    Preset(String, ConfigFileKind),
    DotEnv(&'static str),
    Env(&'static str),
    Flag,
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::File(kind) => write!(f, "{kind}"),
            Self::Preset(name, kind) => write!(f, "preset {name} ({kind})"),
            Self::DotEnv(variable) => write!(f, ".env {variable}"),
            Self::Env(variable) => write!(f, "environment {variable}"),
            Self::Flag => f.write_str("flag"),
        }
    }
}

/// One setting as `--show-config` lists it.
pub struct Row {
    pub name: String,
    pub value: Effective,
}

pub enum Effective {
    Set { value: String, origin: Origin },
    Unset(Fallback),
}

/// The layers stacked, and where each value came from.
#[derive(Debug, Default)]
pub struct Settings {
    pub values: Layer,
    origins: BTreeMap<&'static str, Origin>,
    tag_origins: BTreeMap<String, Origin>,
    /// The chosen preset, and where the choice came from.
    pub preset: Option<(String, Origin)>,
}

impl Settings {
    /// Puts `layer` on top; `origin` says where the value of a field it sets came from.
    fn push(&mut self, layer: Layer, origin: impl Fn(&'static str) -> Origin) {
        for field in layer.set_fields() {
            self.origins.insert(field, origin(field));
        }
        for key in layer.tags.0.keys() {
            self.tag_origins.insert(key.clone(), origin("tags"));
        }
        self.values = std::mem::take(&mut self.values).under(layer);
    }

    /// Every setting in declaration order, then each tag.
    pub fn rows(&self) -> Vec<Row> {
        let fields = self
            .values
            .fields()
            .into_iter()
            .map(|(name, value, fallback)| {
                let value = match (value, self.origins.get(name)) {
                    (Some(value), Some(origin)) => Effective::Set {
                        value,
                        origin: origin.clone(),
                    },
                    _ => Effective::Unset(fallback),
                };
                Row {
                    name: name.to_string(),
                    value,
                }
            });
        let tags = self.values.tags.0.iter().map(|(key, value)| Row {
            name: format!("tags.{key}"),
            value: Effective::Set {
                value: value.clone(),
                origin: self.tag_origins[key].clone(),
            },
        });
        let no_tags = self.values.tags.0.is_empty().then(|| Row {
            name: "tags".to_string(),
            value: Effective::Unset(Fallback::None),
        });
        fields.chain(tags).chain(no_tags).collect()
    }
}

/// Where the files of each layer live.
pub struct Sources<'a> {
    pub user_config: PathBuf,
    pub project_config: PathBuf,
    pub dot_env: PathBuf,
    pub home: PathBuf,
    pub env: &'a dyn Fn(&str) -> Option<String>,
}

impl Sources<'_> {
    pub const PROJECT_FILE: &'static str = ".ssh-ec2.toml";
    pub const DOT_ENV: &'static str = ".env";

    /// Stacks every layer; the result still lacks the defaults (`plan` applies them).
    pub fn load(&self, cli: &Cli) -> Result<Settings> {
        use ConfigFileKind::{Project, User};
        let (user, mut user_presets) = read_config_file(&self.user_config, &self.home)?;
        let (project, mut project_presets) = read_config_file(&self.project_config, &self.home)?;
        let dot_env = read_dot_env(&self.dot_env)?;
        let dot_env = |name: &str| dot_env.get(name).cloned();
        let dot_env_source = self.dot_env.display().to_string();
        let (dot_env_layer, dot_env_set_by) = Layer::from_env(&dot_env, &dot_env_source)?;
        let (env_layer, env_set_by) = Layer::from_env(self.env, "the environment")?;

        let mut settings = Settings::default();
        settings.push(user, |_| Origin::File(User));
        settings.push(project, |_| Origin::File(Project));
        // A preset is chosen on purpose, so it beats the files' plain settings; .env, the
        // environment and flags still adjust it.
        let choice = match &cli.config.preset {
            Some(name) => Some((name.clone(), Origin::Flag)),
            None => env_value(self.env, "the environment", &[PRESET_VARIABLE])?
                .map(|(name, variable)| (name, Origin::Env(variable)))
                .or(env_value(&dot_env, &dot_env_source, &[PRESET_VARIABLE])?
                    .map(|(name, variable)| (name, Origin::DotEnv(variable)))),
        };
        if let Some((name, chosen_by)) = &choice {
            let found = [
                (user_presets.remove(name), User),
                (project_presets.remove(name), Project),
            ];
            if found.iter().all(|(preset, _)| preset.is_none()) {
                let known: BTreeSet<&str> = user_presets
                    .keys()
                    .chain(project_presets.keys())
                    .map(String::as_str)
                    .collect();
                let known = match known.is_empty() {
                    true => "none is defined".to_string(),
                    false => format!(
                        "the config files define {}",
                        known.into_iter().collect::<Vec<_>>().join(", ")
                    ),
                };
                bail!(
                    "there is no preset `{name}` ({chosen_by}): {known}; a preset is a \
                     [preset.NAME] table in {} or {}",
                    self.user_config.display(),
                    self.project_config.display()
                );
            }
            for (preset, kind) in found {
                if let Some(preset) = preset {
                    settings.push(preset, |_| Origin::Preset(name.clone(), kind));
                }
            }
        }
        settings.preset = choice;
        settings.push(dot_env_layer, |field| Origin::DotEnv(dot_env_set_by[field]));
        settings.push(env_layer, |field| Origin::Env(env_set_by[field]));
        settings.push(Layer::from_flags(cli), |_| Origin::Flag);
        Ok(settings)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
        let path = dir.join(name);
        std::fs::write(&path, text).unwrap();
        path
    }

    fn temp_dir(name: &str) -> PathBuf {
        let dir =
            std::env::temp_dir().join(format!("ssh-ec2-config-{name}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn flags_beat_env_beat_project_beat_user_file() {
        let dir = temp_dir("layers");
        let user = write(
            &dir,
            "user.toml",
            "instance_type = \"from-user\"\nname = \"user-name\"\nregion = \"user-region\"\n[tags]\nteam = \"a\"\n",
        );
        let project = write(
            &dir,
            "project.toml",
            "instance_type = \"from-project\"\nregion = \"project-region\"\n[tags]\nproject = \"b\"\n",
        );
        let env = |name: &str| match name {
            "AWS_REGION" => Some("env-region".to_string()),
            "AWS_DEFAULT_REGION" => Some("ignored".to_string()),
            "AWS_FINAL_STATE" => Some("destroy".to_string()),
            "MULTIPLEX" => Some(String::new()),
            _ => None,
        };
        let sources = Sources {
            user_config: user,
            project_config: project,
            dot_env: dir.join("no.env"),
            home: dir.clone(),
            env: &env,
        };
        let cli = Cli::parse_from(["ssh-ec2", "--stop", "--tag", "team=c", "who", "am", "i"]);
        let layer = sources.load(&cli).unwrap().values;
        assert_eq!(layer.instance_type.as_deref(), Some("from-project"));
        assert_eq!(layer.name.as_deref(), Some("user-name"));
        assert_eq!(layer.region.as_deref(), Some("env-region"));
        assert_eq!(
            layer.final_state,
            Some(EndOfLife::Stop),
            "flag beats AWS_FINAL_STATE"
        );
        assert_eq!(layer.multiplex, None, "an empty variable counts as unset");
        let tags: Vec<_> = layer.tags.0.into_iter().collect();
        assert_eq!(
            tags,
            [("project".into(), "b".into()), ("team".into(), "c".into())],
            "tags merge key by key"
        );
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn a_preset_beats_the_files_and_dot_env_sits_below_the_environment() {
        let dir = temp_dir("preset");
        let user = write(
            &dir,
            "user.toml",
            "instance_type = \"user\"\n[preset.gpu]\ninstance_type = \"user-gpu\"\nvolume_size = 100\n\
             [preset.gpu.tags]\nkind = \"gpu\"\n",
        );
        let project = write(
            &dir,
            "project.toml",
            "instance_type = \"project\"\nuser = \"project-user\"\n\
             [preset.gpu]\nvolume_size = 200\nimage_id = \"ami-preset\"\n",
        );
        let dot_env = write(
            &dir,
            ".env",
            "SSH_EC2_PRESET=gpu\nexport AWS_IMAGE_ID='ami-dotenv' # theirs\nAWS_NAME_INSTANCE=\"n\"\n\
             DATABASE_URL=\"postgres://x\" not-our-business\n",
        );
        let env = |name: &str| (name == "AWS_NAME_INSTANCE").then(|| "env-name".to_string());
        let sources = Sources {
            user_config: user,
            project_config: project,
            dot_env,
            home: dir.clone(),
            env: &env,
        };
        let settings = sources.load(&Cli::parse_from(["ssh-ec2"])).unwrap();
        let origin = |name: &str| {
            settings
                .rows()
                .into_iter()
                .find(|r| r.name == name)
                .map(|r| match r.value {
                    Effective::Set { value, origin } => format!("{value} from {origin}"),
                    Effective::Unset(_) => "unset".into(),
                })
                .unwrap()
        };
        assert_eq!(
            settings.preset,
            Some(("gpu".into(), Origin::DotEnv("SSH_EC2_PRESET")))
        );
        assert_eq!(
            origin("instance_type"),
            "user-gpu from preset gpu (user file)"
        );
        assert_eq!(origin("volume_size"), "200 from preset gpu (project file)");
        assert_eq!(origin("user"), "project-user from project file");
        assert_eq!(origin("image_id"), "ami-dotenv from .env AWS_IMAGE_ID");
        assert_eq!(
            origin("name"),
            "env-name from environment AWS_NAME_INSTANCE"
        );
        assert_eq!(origin("tags.kind"), "gpu from preset gpu (user file)");
        assert_eq!(origin("region"), "unset");

        let cli = Cli::parse_from(["ssh-ec2", "--preset", "cpu"]);
        let err = sources.load(&cli).unwrap_err().to_string();
        assert!(err.contains("no preset `cpu` (flag)"), "{err}");
        assert!(err.contains("define gpu;"), "{err}");
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn bad_values_name_their_source() {
        let env = |name: &str| (name == "AWS_FINAL_STATE").then(|| "explode".to_string());
        let err = Layer::from_env(&env, "the environment")
            .unwrap_err()
            .to_string();
        assert!(err.contains("AWS_FINAL_STATE=explode"), "{err}");
        assert!(err.contains("terminate, stop or leave"), "{err}");

        let dir = temp_dir("typo");
        let file = write(&dir, "c.toml", "instance_typ = \"x\"\n");
        let err = format!("{:#}", read_config_file(&file, &dir).unwrap_err());
        assert!(
            err.contains("c.toml") && err.contains("instance_typ"),
            "{err}"
        );
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn identity_file_in_a_config_file_is_relative_to_it() {
        let dir = temp_dir("identity");
        let file = write(
            &dir,
            "c.toml",
            "identity_file = \"keys/k.pem\"\n[preset.p]\nidentity_file = \"p.pem\"\n",
        );
        let (layer, presets) = read_config_file(&file, Path::new("/home/me")).unwrap();
        assert_eq!(layer.identity_file, Some(dir.join("keys/k.pem")));
        assert_eq!(presets["p"].identity_file, Some(dir.join("p.pem")));
        let file = write(&dir, "d.toml", "identity_file = \"~/.ssh/k.pem\"\n");
        let (layer, _) = read_config_file(&file, Path::new("/home/me")).unwrap();
        assert_eq!(
            layer.identity_file,
            Some(PathBuf::from("/home/me/.ssh/k.pem"))
        );
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn parses_values() {
        assert_eq!(
            "[::1]:22".parse::<HostPort>().unwrap(),
            HostPort {
                host: "::1".into(),
                port: 22
            }
        );
        assert!("localhost".parse::<HostPort>().is_err());
        assert!("h:0".parse::<HostPort>().is_err());
        assert!("aws:x=1".parse::<Tag>().is_err());
        assert_eq!("a=1, b=2".parse::<Tags>().unwrap().0.len(), 2);
        assert_eq!(
            "g5.xlarge, g6.xlarge".parse::<InstanceTypes>().unwrap().0,
            ["g5.xlarge", "g6.xlarge"]
        );
        assert!("g5.xlarge,".parse::<InstanceTypes>().is_err());
        let layer: Layer = toml::from_str("fallback_types = [\"g5.xlarge\"]\n").unwrap();
        assert_eq!(layer.fallback_types.unwrap().0, ["g5.xlarge"]);
    }
}
