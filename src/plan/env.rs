//! The remote command's variables, resolved before any AWS call: `--env-file`'s lines, `-e`,
//! the `env` setting; a bare NAME takes this machine's value (refused when unset), and a name
//! that looks like a secret is refused unless `--allow-secret-env`.

use std::ffi::OsString;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};

use crate::remote::env::Environment;
use crate::settings::dotenv::{self, Line};
use crate::settings::values::{EnvEntry, check_name};

/// Names that usually hold a credential (case does not matter; `*` is any text). A secret on
/// the instance is readable by every process of its login user, and the instance is untrusted.
const SECRET_PATTERNS: &[&str] = &["AWS_*", "*_TOKEN", "*_SECRET*", "*PASSWORD*"];

/// The pattern of `SECRET_PATTERNS` that `name` matches, if any.
pub fn looks_secret(name: &str) -> Option<&'static str> {
    let name = name.to_ascii_uppercase();
    SECRET_PATTERNS.iter().copied().find(|pattern| {
        let core = pattern.trim_matches('*');
        match (pattern.starts_with('*'), pattern.ends_with('*')) {
            (true, true) => name.contains(core),
            (true, false) => name.ends_with(core),
            (false, true) => name.starts_with(core),
            (false, false) => name == core,
        }
    })
}

/// The variables to send: `entries` in order (a later one wins), each bare name given this
/// machine's value by `local`.
pub fn resolve(
    entries: &[EnvEntry],
    local: &dyn Fn(&str) -> Option<OsString>,
    allow_secret: bool,
) -> Result<Environment> {
    let mut resolved = Vec::new();
    for EnvEntry { name, value } in entries {
        if let Some(pattern) = looks_secret(name).filter(|_| !allow_secret) {
            bail!(
                "{name} looks like a secret (it matches {pattern}), and on the instance every \
                 process of its login user could read it: give the instance its AWS rights \
                 with --instance-profile, or pass --allow-secret-env to send {name} anyway"
            );
        }
        let value = match value {
            Some(value) => value.clone(),
            None => local(name)
                .with_context(|| {
                    format!(
                        "{name} is to take its value from this machine (-e {name}, or a bare \
                         name in --env-file or the env setting), but it is not set here: set \
                         it, or write -e {name}=VALUE"
                    )
                })?
                .into_string()
                .map_err(|_| anyhow::anyhow!("{name}'s value here is not UTF-8 text"))?,
        };
        resolved.push((name.clone(), value));
    }
    Ok(Environment::new(resolved))
}

/// The entries of the `--env-file`s, in order.
pub fn read_env_files(files: &[PathBuf]) -> Result<Vec<EnvEntry>> {
    let mut entries = Vec::new();
    for file in files {
        let text = std::fs::read_to_string(file)
            .with_context(|| format!("cannot read the --env-file {}", file.display()))?;
        entries.extend(parse_env_file(&text, file).map_err(anyhow::Error::msg)?);
    }
    Ok(entries)
}

/// An env file (`.env`'s format: `NAME=VALUE`, `export NAME=VALUE`, quotes, `#` comments,
/// blank lines), where a line with a bare NAME takes this machine's value, as with `-e NAME`.
/// Anything else is refused as `FILE:LINE: why`.
fn parse_env_file(text: &str, file: &Path) -> Result<Vec<EnvEntry>, String> {
    let at = |line: usize| format!("{}:{line}", file.display());
    let lines = dotenv::parse_lines(text).map_err(|(line, why)| format!("{}: {why}", at(line)))?;
    let mut entries = Vec::new();
    for line in lines {
        let entry = match line {
            Line::Entry(entry) => {
                let value = entry
                    .value
                    .map_err(|why| format!("{}: {why}", at(entry.line)))?;
                format!("{}={value}", entry.key)
                    .parse()
                    .map_err(|why| format!("{}: {why}", at(entry.line)))?
            }
            Line::Other { text, .. } if text.trim().is_empty() || text.trim().starts_with('#') => {
                continue;
            }
            Line::Other { line, text } => {
                let name = text.trim();
                check_name(name).map_err(|_| {
                    format!(
                        "{}: `{}` is neither NAME=VALUE, NAME, a comment nor blank",
                        at(line),
                        name.escape_debug()
                    )
                })?;
                EnvEntry {
                    name: name.to_string(),
                    value: None,
                }
            }
        };
        entries.push(entry);
    }
    Ok(entries)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_that_look_like_secrets() {
        for secret in [
            "AWS_SECRET_ACCESS_KEY",
            "aws_profile",
            "GITHUB_TOKEN",
            "hf_token",
            "CLIENT_SECRET",
            "MY_SECRET_KEY",
            "PASSWORD",
            "db_password_file",
        ] {
            assert!(looks_secret(secret).is_some(), "{secret}");
        }
        assert_eq!(looks_secret("GITHUB_TOKEN"), Some("*_TOKEN"));
        for plain in [
            "EPOCHS",
            "TOKENIZER",
            "TOKENS_PER_BATCH",
            "SECRETARY",
            "LAWS_X",
        ] {
            assert_eq!(looks_secret(plain), None, "{plain}");
        }
    }

    fn entries(text: &str) -> Vec<EnvEntry> {
        text.split_whitespace()
            .map(|e| e.parse().unwrap())
            .collect()
    }

    #[test]
    fn bare_names_take_this_machine_s_value_and_the_last_value_wins() {
        let local = |name: &str| (name == "HERE").then(|| OsString::from("from here"));
        let env = resolve(&entries("A=1 HERE A=2 B="), &local, false).unwrap();
        assert_eq!(
            env.script(),
            "export A=2\nexport HERE='from here'\nexport B=''\n"
        );
        let err = resolve(&entries("A=1 MISSING"), &local, false).unwrap_err();
        let err = format!("{err:#}");
        assert!(
            err.contains("MISSING") && err.contains("not set here"),
            "{err}"
        );
    }

    #[test]
    fn a_secret_looking_name_needs_the_flag() {
        let local = |_: &str| Some(OsString::from("t"));
        let err = resolve(&entries("EPOCHS=1 HF_TOKEN"), &local, false).unwrap_err();
        let err = err.to_string();
        assert!(
            err.contains("HF_TOKEN") && err.contains("--allow-secret-env"),
            "{err}"
        );
        let env = resolve(&entries("EPOCHS=1 HF_TOKEN"), &local, true).unwrap();
        assert_eq!(env.names(), ["EPOCHS", "HF_TOKEN"]);
    }

    #[test]
    fn an_env_file_has_assignments_bare_names_comments_and_blank_lines() {
        let file = Path::new("vars.env");
        let text =
            "# the run's\n\nEPOCHS=2\nexport LR='0.1 # not a comment'\n  HERE \nX=\"a\nb\"\n";
        let parsed = parse_env_file(text, file).unwrap();
        let shown: Vec<_> = parsed
            .iter()
            .map(|e| (e.name.as_str(), e.value.as_deref()))
            .collect();
        assert_eq!(
            shown,
            [
                ("EPOCHS", Some("2")),
                ("LR", Some("0.1 # not a comment")),
                ("HERE", None),
                ("X", Some("a\nb")),
            ]
        );
        for (bad, says) in [
            ("A=1\nnot a line\n", "vars.env:2: `not a line`"),
            ("A=1\n9X=2\n", "vars.env:2:"),
            ("a.b=1\n", "vars.env:1: `a.b` is not a variable name"),
            ("A=\"x\" y\n", "vars.env:1: unexpected `y`"),
            (
                "A=1\nB='open\n",
                "vars.env:2: the ' that opens the value of B",
            ),
        ] {
            let err = parse_env_file(bad, file).unwrap_err();
            assert!(err.contains(says), "{bad:?}: {err}");
        }
    }
}
