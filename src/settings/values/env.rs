//! The variables given to the remote command (`-e`, `--env-file`, the `env` setting): each a
//! `NAME=VALUE`, or a `NAME` that takes this machine's value at run time. Their values are never
//! printed: `--show-config` and `--dry-run` show the names, and so does `Debug`.

use std::fmt;
use std::str::FromStr;

use serde::Deserialize;

/// One variable for the remote command.
#[derive(Clone, PartialEq, Eq, Deserialize)]
#[serde(try_from = "String")]
pub struct EnvEntry {
    pub name: String,
    /// `None`: this machine's value, read when the run starts.
    pub value: Option<String>,
}

impl FromStr for EnvEntry {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let (name, value) = match s.split_once('=') {
            Some((name, value)) => (name, Some(value)),
            None => (s, None),
        };
        check_name(name)?;
        if value.is_some_and(|v| v.contains('\0')) {
            return Err(format!(
                "the value of {name} holds a NUL character, which no environment can hold"
            ));
        }
        Ok(EnvEntry {
            name: name.to_string(),
            value: value.map(str::to_string),
        })
    }
}

impl TryFrom<String> for EnvEntry {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        s.parse()
    }
}

/// Shows the name only: a value may be a secret.
impl fmt::Debug for EnvEntry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.value {
            Some(_) => write!(f, "{}=(value not shown)", self.name),
            None => write!(f, "{} (this machine's value)", self.name),
        }
    }
}

/// A name a POSIX shell can export: a letter or `_`, then letters, digits or `_`.
pub fn check_name(name: &str) -> Result<(), String> {
    let valid = name.starts_with(|c: char| c.is_ascii_alphabetic() || c == '_')
        && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
    match valid {
        true => Ok(()),
        false => Err(format!(
            "`{}` is not a variable name: write NAME=VALUE or NAME (letters, digits and _, \
             not starting with a digit)",
            name.escape_debug()
        )),
    }
}

/// The variables of one layer, in order (a list in TOML; `A,B=1` in SSH_EC2_ENV).
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
pub struct EnvEntries(pub Vec<EnvEntry>);

impl FromStr for EnvEntries {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        (s.split(',').map(str::trim).filter(|e| !e.is_empty()))
            .map(str::parse)
            .collect::<Result<_, _>>()
            .map(EnvEntries)
    }
}

impl EnvEntries {
    /// The names, as `--show-config` shows them: never a value.
    pub fn names(&self) -> String {
        let names: Vec<&str> = self.0.iter().map(|e| e.name.as_str()).collect();
        names.join(",")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_entry_is_a_name_with_or_without_its_value() {
        let entry: EnvEntry = "EPOCHS=2".parse().unwrap();
        assert_eq!(
            (entry.name.as_str(), entry.value.as_deref()),
            ("EPOCHS", Some("2"))
        );
        let entry: EnvEntry = "EPOCHS".parse().unwrap();
        assert_eq!(entry.value, None, "this machine's value");
        let entry: EnvEntry = "URL=a=b c".parse().unwrap();
        assert_eq!(
            entry.value.as_deref(),
            Some("a=b c"),
            "split at the first ="
        );
        assert_eq!(
            "EMPTY=".parse::<EnvEntry>().unwrap().value.as_deref(),
            Some("")
        );
        for bad in ["", "=x", "1X=2", "A-B=1", "A B", "é=1", "a.b=1", "X=\0"] {
            assert!(bad.parse::<EnvEntry>().is_err(), "{bad:?}");
        }
        let err = "my-var=1".parse::<EnvEntry>().unwrap_err();
        assert!(err.contains("`my-var` is not a variable name"), "{err}");
    }

    #[test]
    fn values_are_never_shown() {
        let entries: EnvEntries = "A=secret-1, B".parse().unwrap();
        assert_eq!(entries.names(), "A,B");
        let debug = format!("{entries:?}");
        assert!(!debug.contains("secret-1"), "{debug}");
    }
}
