//! The `settings!` macro: the table in `settings/mod.rs` declares each setting once (its name,
//! which is also its config key, its type, its environment variables, and what it is when no
//! layer sets it), and this makes of it every form a setting takes: a `Layer` (one source:
//! a file, `.env`, the environment, the flags), the config file's shape, and `Values`, the
//! stacked layers with their defaults applied.

/// A setting's type once the layers are stacked: with a default it is always there.
macro_rules! resolved_type {
    (default, $ty:ty) => { $ty };
    ($other:ident, $ty:ty) => { Option<$ty> };
}

/// A setting's value once the layers are stacked.
macro_rules! resolved_value {
    ($value:expr, default, $default:expr) => {
        $value.unwrap_or_else(|| $default)
    };
    ($value:expr, $other:ident $(, $how:expr)?) => {
        $value
    };
}

/// What an unset setting becomes, as `--show-config` and `--help` tell it.
macro_rules! fallback {
    (default, $default:expr) => {
        $crate::settings::Fallback::Value($crate::settings::values::Shown::shown(&$default))
    };
    (computed, $how:expr) => {
        $crate::settings::Fallback::Computed($how.to_string())
    };
    (none) => {
        $crate::settings::Fallback::None
    };
}

/// Declares `Layer`, `ConfigFile` and `Values` from one table. Each entry, documented (its first
/// line is what `--help` and the man page say of its variables):
/// `name: Type = ["VARIABLE", ...] => default(value) | computed("how") | none`.
macro_rules! settings {
    ($(
        #[doc = $about:literal]
        $(#[doc = $more:literal])*
        $field:ident : $ty:ty = [$($env:literal),*] => $kind:ident $(($fallback:expr))?
    ),* $(,)?) => {
        /// One source of settings; every field is optional so layers can be stacked.
        #[derive(Debug, Default, Clone, serde::Deserialize)]
        #[serde(deny_unknown_fields)]
        pub struct Layer {
            $( #[doc = $about] $(#[doc = $more])* pub $field: Option<$ty>, )*
            /// Tags merge key by key instead of replacing each other.
            #[serde(default)]
            pub tags: Tags,
        }

        /// Every setting, the layers stacked and the defaults applied.
        #[derive(Debug, Clone)]
        pub struct Values {
            $( #[doc = $about] $(#[doc = $more])* pub $field: resolved_type!($kind, $ty), )*
            pub tags: Tags,
        }

        /// A config file: its settings, and `[preset.NAME]` tables of the same settings.
        #[derive(serde::Deserialize)]
        #[serde(deny_unknown_fields)]
        pub(super) struct ConfigFile {
            $( $field: Option<$ty>, )*
            #[serde(default)]
            tags: Tags,
            #[serde(default)]
            preset: std::collections::BTreeMap<String, Layer>,
        }

        impl ConfigFile {
            pub(super) fn split(self) -> (Layer, std::collections::BTreeMap<String, Layer>) {
                (Layer { $( $field: self.$field, )* tags: self.tags }, self.preset)
            }
        }

        impl Layer {
            /// Every variable ssh-ec2 reads settings from, in the environment or in `.env`.
            pub(super) const VARIABLES: &[&str] =
                &[$($($env,)*)* TAGS_VARIABLE, PRESET_VARIABLE];

            /// Each setting: its name, its variables, and its first line of documentation.
            fn settings() -> Vec<(&'static str, &'static [&'static str], &'static str)> {
                vec![$( (stringify!($field), &[$($env),*], $about.trim_start()), )*]
            }

            /// The defaults applied where no layer set a value.
            pub fn resolve(self) -> Values {
                Values { $( $field: resolved_value!(self.$field, $kind $(, $fallback)?), )* tags: self.tags }
            }

            /// `top` wins field by field.
            pub(super) fn under(self, top: Layer) -> Layer {
                let mut tags = self.tags;
                tags.0.extend(top.tags.0);
                Layer { $( $field: top.$field.or(self.$field), )* tags }
            }

            /// Reads the variables through `env`; also says which variable set each field.
            /// `source` names where they are, for errors.
            pub(super) fn from_env(
                env: &dyn Fn(&str) -> Option<String>,
                source: &str,
            ) -> anyhow::Result<(Layer, std::collections::BTreeMap<&'static str, &'static str>)> {
                let mut layer = Layer::default();
                let mut set_by = std::collections::BTreeMap::new();
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
            pub(super) fn set_fields(&self) -> Vec<&'static str> {
                let mut set = Vec::new();
                $( if self.$field.is_some() { set.push(stringify!($field)); } )*
                set
            }

            /// Each field in declaration order (tags aside): its name, its value as text, and
            /// what it is when unset.
            pub(super) fn fields(&self) -> Vec<(&'static str, Option<String>, Fallback)> {
                vec![$(
                    (
                        stringify!($field),
                        self.$field.as_ref().map(Shown::shown),
                        fallback!($kind $(, $fallback)?),
                    ),
                )*]
            }
        }
    };
}
