//! Settings, layered: defaults < ~/.config/ssh-ec2/config.toml < ./.ssh-ec2.toml < environment <
//! flags. Every layer is the same `Layer`; `plan` applies the defaults and validates the result.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use anyhow::{Context, Result, bail};
use serde::Deserialize;

use crate::cli::Cli;

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
        let types: Vec<String> = s.split(',').map(|t| t.trim().to_string()).collect();
        if types.iter().any(String::is_empty) {
            return Err(format!(
                "`{s}` is not a list of instance types: write e.g. g5.xlarge,g6.xlarge"
            ));
        }
        Ok(Self(types))
    }
}

/// The original tool's session multiplexer setting.
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

deserialize_from_str!(EndOfLife, HostPort, Multiplex);

/// Declares `Layer` once: each field with the environment variables that set it (first set wins).
macro_rules! layer {
    ($( $(#[$doc:meta])* $field:ident : $ty:ty = [$($env:literal),*] ),* $(,)?) => {
        /// One source of settings; every field is optional so layers can be stacked.
        #[derive(Debug, Default, Clone, Deserialize)]
        #[serde(deny_unknown_fields)]
        pub struct Layer {
            $( $(#[$doc])* pub $field: Option<$ty>, )*
            /// Tags merge key by key instead of replacing each other.
            #[serde(default)]
            pub tags: Tags,
        }

        impl Layer {
            /// `top` wins field by field.
            fn under(self, top: Layer) -> Layer {
                let mut tags = self.tags;
                tags.0.extend(top.tags.0);
                Layer { $( $field: top.$field.or(self.$field), )* tags }
            }

            fn from_env(env: &dyn Fn(&str) -> Option<String>) -> Result<Layer> {
                let mut layer = Layer::default();
                $( layer.$field = env_value(env, &[$($env),*])?; )*
                if let Some(tags) = env_value::<Tags>(env, &["SSH_EC2_TAGS"])? {
                    layer.tags = tags;
                }
                Ok(layer)
            }

        }
    };
}

layer! {
    region: String = ["AWS_REGION", "AWS_DEFAULT_REGION"],
    instance_type: String = ["AWS_INSTANCE_TYPE"],
    fallback_types: InstanceTypes = ["SSH_EC2_FALLBACK_TYPES"],
    image_id: String = ["AWS_IMAGE_ID"],
    image_name: String = ["AWS_IMAGE_NAME"],
    user: String = ["AWS_INSTANCE_USER"],
    instance_profile: String = ["AWS_IAM_INSTANCE_PROFILE"],
    subnet_id: String = ["SSH_EC2_SUBNET_ID"],
    volume_size: u32 = ["SSH_EC2_VOLUME_SIZE"],
    name: String = ["AWS_NAME_INSTANCE"],
    remote_dir: String = ["AWS_RSYNC_DIR"],
    key_name: String = ["AWS_KEY_NAME"],
    identity_file: PathBuf = ["AWS_PEM"],
    final_state: EndOfLife = ["AWS_FINAL_STATE"],
    connect: HostPort = ["SSH_EC2_CONNECT"],
    ssh_cidr: ipnet::IpNet = ["SSH_EC2_SSH_CIDR"],
    checkip_url: String = ["SSH_EC2_CHECKIP_URL"],
    boot_timeout: u64 = ["SSH_EC2_BOOT_TIMEOUT"],
    multiplex: Multiplex = ["MULTIPLEX"],
    /// Owner name for tags and the default key pair (the original tool's TRIGRAM).
    trigram: String = ["TRIGRAM"],
    /// Shell commands appended to the instance's boot script.
    user_data: String = ["AWS_USER_DATA"],
}

/// Reads the first set, non-empty variable of `names`; an unparsable value names the variable.
fn env_value<T: FromStr>(env: &dyn Fn(&str) -> Option<String>, names: &[&str]) -> Result<Option<T>>
where
    T::Err: fmt::Display,
{
    for name in names {
        if let Some(raw) = env(name).filter(|v| !v.is_empty()) {
            return match raw.parse() {
                Ok(value) => Ok(Some(value)),
                Err(e) => bail!("environment variable {name}={raw}: {e}"),
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
            instance_type: i.instance_type.clone(),
            fallback_types: i.fallback_types.clone(),
            image_id: i.image_id.clone(),
            image_name: i.image_name.clone(),
            user: i.user.clone(),
            instance_profile: i.instance_profile.clone(),
            subnet_id: i.subnet_id.clone(),
            volume_size: i.volume_size,
            name: i.name.clone(),
            remote_dir: i.remote_dir.clone(),
            key_name: cli.key_name.clone(),
            identity_file: cli.identity_file.clone(),
            final_state: cli.end_of_life.chosen(),
            connect: n.connect.clone(),
            ssh_cidr: n.ssh_cidr,
            checkip_url: None,
            boot_timeout: n.boot_timeout,
            multiplex: None,
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

    /// Reads a TOML config file; a missing file is an empty layer. Relative paths in it are
    /// relative to the file's directory, and `~/` is the home directory.
    fn from_file(path: &Path, home: &Path) -> Result<Layer> {
        let text = match std::fs::read_to_string(path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Layer::default()),
            Err(e) => return Err(e).with_context(|| format!("cannot read {}", path.display())),
        };
        let mut layer: Layer = toml::from_str(&text).with_context(|| {
            format!(
                "{} is not a valid ssh-ec2 config file (see README.md, \"Configuration\")",
                path.display()
            )
        })?;
        if let Some(file) = layer.identity_file.take() {
            let base = path.parent().unwrap_or(Path::new("."));
            layer.identity_file = Some(expand_home(&file, home, base));
        }
        Ok(layer)
    }
}

/// `~/x` → `$HOME/x`; a relative path is taken relative to `base`.
pub fn expand_home(path: &Path, home: &Path, base: &Path) -> PathBuf {
    match path.strip_prefix("~") {
        Ok(rest) => home.join(rest),
        Err(_) => base.join(path),
    }
}

/// Where the files of each layer live.
pub struct Sources<'a> {
    pub user_config: PathBuf,
    pub project_config: PathBuf,
    pub home: PathBuf,
    pub env: &'a dyn Fn(&str) -> Option<String>,
}

impl Sources<'_> {
    pub const PROJECT_FILE: &'static str = ".ssh-ec2.toml";

    /// Stacks every layer; the result still lacks the defaults (`plan` applies them).
    pub fn load(&self, cli: &Cli) -> Result<Layer> {
        let user = Layer::from_file(&self.user_config, &self.home)?;
        let project = Layer::from_file(&self.project_config, &self.home)?;
        let env = Layer::from_env(self.env)?;
        Ok(user.under(project).under(env).under(Layer::from_flags(cli)))
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
            home: dir.clone(),
            env: &env,
        };
        let cli = Cli::parse_from(["ssh-ec2", "--stop", "--tag", "team=c", "who", "am", "i"]);
        let layer = sources.load(&cli).unwrap();
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
    fn bad_values_name_their_source() {
        let env = |name: &str| (name == "AWS_FINAL_STATE").then(|| "explode".to_string());
        let err = Layer::from_env(&env).unwrap_err().to_string();
        assert!(err.contains("AWS_FINAL_STATE=explode"), "{err}");
        assert!(err.contains("terminate, stop or leave"), "{err}");

        let dir = temp_dir("typo");
        let file = write(&dir, "c.toml", "instance_typ = \"x\"\n");
        let err = format!("{:#}", Layer::from_file(&file, &dir).unwrap_err());
        assert!(
            err.contains("c.toml") && err.contains("instance_typ"),
            "{err}"
        );
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn identity_file_in_a_config_file_is_relative_to_it() {
        let dir = temp_dir("identity");
        let file = write(&dir, "c.toml", "identity_file = \"keys/k.pem\"\n");
        let layer = Layer::from_file(&file, Path::new("/home/me")).unwrap();
        assert_eq!(layer.identity_file, Some(dir.join("keys/k.pem")));
        let file = write(&dir, "d.toml", "identity_file = \"~/.ssh/k.pem\"\n");
        let layer = Layer::from_file(&file, Path::new("/home/me")).unwrap();
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
