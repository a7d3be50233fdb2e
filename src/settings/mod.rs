//! Settings, layered: defaults < ~/.config/ssh-ec2/config.toml < ./.ssh-ec2.toml < the chosen
//! preset < ./.env < environment < flags. Each setting is declared once, in the table below;
//! its value type (in `values`) parses and refuses its forms, and its default (in `defaults`)
//! is shown by `--help` and `--show-config` as it is applied. This module reads nothing of the
//! rest of ssh-ec2: the command line hands it a flag layer (`cli`), and the plan (`plan`) turns
//! the stacked values into what a mode needs.
//!
//! - `values`: the value types; `defaults`: every default;
//! - `layers`: where each layer is read from, and where each value came from;
//! - `dotenv`: the `.env` format.

#[macro_use]
mod declare;
pub mod defaults;
pub mod dotenv;
mod files;
mod layers;
pub mod values;

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;

use anyhow::{Result, bail};

pub use files::expand_home;
pub use layers::{Effective, Sources};
use values::{
    Address, EndOfLife, EnvEntries, HostPort, InstanceTypes, Limit, LoginUser, Multiplex, Shown,
    SubnetIds, Tags, Timeout,
};

/// SSH_EC2_TAGS: `KEY=VALUE,KEY=VALUE`, merged key by key like the `[tags]` tables.
const TAGS_VARIABLE: &str = "SSH_EC2_TAGS";
/// Chooses a preset, like --preset.
pub const PRESET_VARIABLE: &str = "SSH_EC2_PRESET";

settings! {
    /// The AWS region.
    region: String = ["AWS_REGION", "AWS_DEFAULT_REGION"]
        => computed(format!("the AWS profile's, else {}", defaults::REGION)),
    /// The AWS profile whose region and credentials are used.
    aws_profile: String = ["AWS_PROFILE"] => computed("the AWS default profile"),
    /// The EC2 instance type.
    instance_type: String = ["AWS_INSTANCE_TYPE"] => default(defaults::INSTANCE_TYPE.to_string()),
    /// Types to try in turn when AWS has no capacity for `instance_type`.
    fallback_types: InstanceTypes = ["SSH_EC2_FALLBACK_TYPES"] => none,
    /// The AMI to launch (wins over `image_name`).
    image_id: String = ["AWS_IMAGE_ID"] => none,
    /// The newest Amazon image whose name matches this pattern.
    image_name: String = ["AWS_IMAGE_NAME"] => default(defaults::IMAGE_NAME.to_string()),
    /// The remote login user.
    user: LoginUser = ["AWS_INSTANCE_USER"] => computed("guessed from the image name"),
    /// The IAM instance profile the instance gets its AWS rights from.
    instance_profile: String = ["AWS_IAM_INSTANCE_PROFILE"] => none,
    /// The subnet to launch in.
    subnet_id: String = ["SSH_EC2_SUBNET_ID"] => computed("a default subnet of the default VPC"),
    /// An admin-made security group (id or name) to launch into, instead of one per instance.
    security_group: String = ["AWS_SECURITY_GROUP"]
        => computed("a new one per instance, SSH from your IP only"),
    /// Subnets to try in turn when one has no capacity (after `subnet_id`, if set).
    subnet_ids: SubnetIds = ["SSH_EC2_SUBNET_IDS"] => none,
    /// The root volume's size in GiB.
    volume_size: u32 = ["SSH_EC2_VOLUME_SIZE"] => computed("the image's"),
    /// The instance's Name tag.
    name: String = ["AWS_NAME_INSTANCE"] => computed("ssh-ec2-<owner>-<directory name>"),
    /// The directory on the instance to sync into and run in.
    remote_dir: String = ["AWS_RSYNC_DIR"] => computed("~/<directory name>"),
    /// The EC2 key pair to launch with, instead of a fresh key per instance.
    key_name: String = ["AWS_KEY_NAME"] => computed("a fresh key per instance; with -i, the owner"),
    /// The private key of that key pair.
    identity_file: PathBuf = ["AWS_PEM"] => computed("with a key pair name, ~/.ssh/<name>.pem"),
    /// What happens to the instance at the end: terminate, stop or leave.
    final_state: EndOfLife = ["AWS_FINAL_STATE"] => default(defaults::END_OF_LIFE),
    /// The instance stops itself this long after the last run began (its dead-man switch).
    max_lifetime: Limit = ["SSH_EC2_MAX_LIFETIME"] => default(defaults::MAX_LIFETIME),
    /// The instance stops itself once nothing has used it for this long.
    idle_stop: Limit = ["SSH_EC2_IDLE_STOP"] => default(defaults::IDLE_STOP),
    /// Launch a one-time spot instance; on-demand when there is no spot capacity.
    spot: bool = ["SSH_EC2_SPOT"] => default(false),
    /// The most to pay per hour for a spot instance, in USD.
    max_price: String = ["SSH_EC2_MAX_PRICE"] => computed("the on-demand price"),
    /// Spot or nothing: no on-demand fallback.
    spot_only: bool = ["SSH_EC2_SPOT_ONLY"] => default(false),
    /// How many instances, one cluster in one zone, the command run on each.
    nodes: u32 = ["SSH_EC2_NODES"] => default(1),
    /// Give each node an Elastic Fabric Adapter (types that have one).
    efa: bool = ["SSH_EC2_EFA"] => default(false),
    /// Which of the instance's addresses to dial: public, private or auto.
    address: Address = ["SSH_EC2_ADDRESS"] => default(Address::Auto),
    /// Dial this HOST:PORT instead of the instance's address (a tunnel).
    connect: HostPort = ["SSH_EC2_CONNECT"] => computed("the instance's address, port 22"),
    /// Allow SSH from this CIDR instead of this machine's public IP.
    ssh_cidr: ipnet::IpNet = ["SSH_EC2_SSH_CIDR"] => computed("this machine's public IP"),
    /// Where this machine's public IP is asked.
    checkip_url: String = ["SSH_EC2_CHECKIP_URL"] => default(defaults::CHECKIP_URL.to_string()),
    /// How long a connection to an instance left running is kept for the next run here.
    keep_connection: Limit = ["SSH_EC2_KEEP_CONNECTION"] => default(defaults::KEEP_CONNECTION),
    /// Seconds for the instance to run with its SSH letting ssh-ec2 in.
    boot_timeout: Timeout = ["SSH_EC2_BOOT_TIMEOUT"] => default(defaults::BOOT_TIMEOUT),
    /// Seconds to keep reconnecting to a job after the connection dropped.
    reconnect_timeout: Timeout = ["SSH_EC2_RECONNECT_TIMEOUT"]
        => default(defaults::RECONNECT_TIMEOUT),
    /// Run the command in tmux, screen or none.
    multiplex: Multiplex = ["MULTIPLEX"] => computed("none; tmux, else screen, for --detach"),
    /// Owner name for tags and the default key pair (the original tool's TRIGRAM).
    trigram: String = ["TRIGRAM"] => computed("$USER, else the account's name"),
    /// Shell commands appended to the instance's boot script.
    user_data: String = ["AWS_USER_DATA"] => none,
    /// Variables for the remote command: NAME=VALUE, or NAME for this machine's value.
    env: EnvEntries = ["SSH_EC2_ENV"] => none,
}

/// What an unset setting becomes, as `--show-config` and `--help` tell it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fallback {
    /// Nothing: the feature is off, or another setting decides.
    None,
    Value(String),
    /// Worked out during the run, as described.
    Computed(String),
}

/// An environment variable ssh-ec2 reads (in the environment or `.env`): what it sets.
pub struct Variable {
    pub name: &'static str,
    /// The config key of its setting (`None`: it is no setting, e.g. the preset's choice).
    pub key: Option<&'static str>,
    pub about: &'static str,
}

/// Every variable, in the table's order, then the tags' and the preset's.
pub fn variables() -> Vec<Variable> {
    let tags = Variable {
        name: TAGS_VARIABLE,
        key: Some("tags"),
        about: "Extra tags, KEY=VALUE,KEY=VALUE, merged key by key.",
    };
    let preset = Variable {
        name: PRESET_VARIABLE,
        key: None,
        about: "The preset to use, like --preset.",
    };
    Layer::settings()
        .into_iter()
        .flat_map(|(key, names, about)| {
            names.iter().map(move |&name| Variable {
                name,
                key: Some(key),
                about,
            })
        })
        .chain([tags, preset])
        .collect()
}

/// Every setting's name with what it is when no layer sets it, in declaration order.
pub fn fallbacks() -> Vec<(&'static str, Fallback)> {
    Layer::default()
        .fields()
        .into_iter()
        .map(|(name, _, fallback)| (name, fallback))
        .collect()
}

impl fmt::Display for Fallback {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Fallback::Value(value) => f.write_str(value),
            Fallback::Computed(how) => write!(f, "({how})"),
            Fallback::None => f.write_str("(none)"),
        }
    }
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
                // Escaped: a value's control characters must not drive the terminal.
                Err(e) => bail!("{name}={} in {source}: {e}", raw.escape_debug()),
            };
        }
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_apply_where_no_layer_sets_a_value() {
        let values = Layer {
            instance_type: Some("g5.xlarge".into()),
            ..Layer::default()
        }
        .resolve();
        assert_eq!(values.instance_type, "g5.xlarge");
        assert_eq!(values.boot_timeout, defaults::BOOT_TIMEOUT);
        assert_eq!(values.final_state, EndOfLife::Terminate);
        assert_eq!(values.region, None, "worked out during the run");
        let shown: Vec<_> = fallbacks()
            .into_iter()
            .filter(|(name, _)| ["max_lifetime", "idle_stop", "boot_timeout"].contains(name))
            .map(|(_, fallback)| fallback.to_string())
            .collect();
        assert_eq!(shown, ["24h", "1h", "600"], "spelled as values are");
    }

    #[test]
    fn config_files_read_durations_as_flags_do() {
        let file: Layer =
            toml::from_str("max_lifetime = \"3d\"\nidle_stop = \"off\"\nboot_timeout = 90\n")
                .unwrap();
        let days = std::time::Duration::from_secs(3 * 86_400);
        assert_eq!(file.max_lifetime, Some(Limit::After(days)));
        assert_eq!(file.idle_stop, Some(Limit::Off));
        assert_eq!(file.boot_timeout, Some(Timeout::secs(90)));
        let layer: Layer = toml::from_str("fallback_types = [\"g5.xlarge\"]\n").unwrap();
        assert_eq!(layer.fallback_types.unwrap().0, ["g5.xlarge"]);
        let layer: Layer = toml::from_str("env = [\"EPOCHS=2\", \"HOME_DIR\"]\n").unwrap();
        assert_eq!(layer.env.unwrap().names(), "EPOCHS,HOME_DIR");
        assert!(toml::from_str::<Layer>("env = [\"2X=1\"]\n").is_err());
    }

    /// The settings table of docs/configuration.md shows the defaults `--help` and
    /// `--show-config` show.
    #[test]
    fn the_documented_table_gives_each_default() {
        let docs = include_str!("../../docs/configuration.md");
        for (name, fallback) in fallbacks() {
            let Fallback::Value(value) = fallback else {
                continue;
            };
            let key = format!("| `{name}`");
            let row = docs
                .lines()
                .find(|line| line.starts_with('|') && line.contains(&key))
                .unwrap_or_else(|| panic!("docs/configuration.md has no row for `{name}`"));
            let default = row
                .trim_end_matches('|')
                .rsplit('|')
                .next()
                .unwrap_or_default();
            let shown = value.trim_end_matches('*');
            assert!(
                default.contains(&format!("`{value}`")) || default.contains(shown),
                "docs/configuration.md gives `{name}` the default {default:?}, not `{value}`"
            );
        }
    }
}
