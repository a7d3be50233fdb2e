//! The layers stacked, each from where it lives (the two config files and their presets, `.env`,
//! the environment, the flags), remembering where each value came from for `--show-config`.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::path::PathBuf;

use anyhow::{Result, bail};

use super::files::{read_config_file, read_dot_env};
use super::{Fallback, Layer, PRESET_VARIABLE, env_value};

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

    /// Stacks every layer under `flags`; `preset` is the one `--preset` chose, if any.
    pub fn load(&self, preset: Option<&str>, flags: Layer) -> Result<Settings> {
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
        let choice = match preset {
            Some(name) => Some((name.to_string(), Origin::Flag)),
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
                let known = user_presets.keys().chain(project_presets.keys());
                bail!(
                    "there is no preset `{name}` ({chosen_by}): {}; a preset is a \
                     [preset.NAME] table in {} or {}",
                    known_presets(known),
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
        settings.push(flags, |_| Origin::Flag);
        Ok(settings)
    }
}

/// "the config files define a, b", for an unknown preset's error.
fn known_presets<'a>(names: impl Iterator<Item = &'a String>) -> String {
    let known: BTreeSet<&str> = names.map(String::as_str).collect();
    match known.is_empty() {
        true => "none is defined".to_string(),
        false => format!(
            "the config files define {}",
            known.into_iter().collect::<Vec<_>>().join(", ")
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::settings::values::EndOfLife;
    use std::path::Path;

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
        let flags = Layer {
            final_state: Some(EndOfLife::Stop),
            tags: "team=c".parse().unwrap(),
            ..Layer::default()
        };
        let layer = sources.load(None, flags).unwrap().values;
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
        let settings = sources.load(None, Layer::default()).unwrap();
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

        let err = sources
            .load(Some("cpu"), Layer::default())
            .unwrap_err()
            .to_string();
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
    }
}
