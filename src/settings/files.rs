//! Reading the layers' files: the TOML config files (with their presets) and `.env`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, anyhow};

use super::{ConfigFile, Layer};

/// Reads a TOML config file: its settings and its presets; a missing file has none. Relative
/// paths in it are relative to the file's directory, and `~/` is the home directory.
pub(super) fn read_config_file(
    path: &Path,
    home: &Path,
) -> Result<(Layer, BTreeMap<String, Layer>)> {
    let Some(text) = read_if_present(path)? else {
        return Ok(Default::default());
    };
    check_keys(&text)
        .with_context(|| format!("{} is not a valid ssh-ec2 config file", path.display()))?;
    let file: ConfigFile = toml::from_str(&text).with_context(|| {
        format!(
            "{} is not a valid ssh-ec2 config file (see docs/configuration.md)",
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

/// Refuses a key that is no setting, suggesting the one it most likely meant, as clap does for
/// flags. What is not TOML at all is left to the parser's own message.
fn check_keys(text: &str) -> Result<()> {
    let Ok(table) = text.parse::<toml::Table>() else {
        return Ok(());
    };
    let settings: Vec<&str> = super::fallbacks()
        .into_iter()
        .map(|(name, _)| name)
        .collect();
    let known = |key: &str, in_preset: bool| {
        settings.contains(&key) || key == "tags" || (!in_preset && key == "preset")
    };
    let presets = table.get("preset").and_then(|p| p.as_table());
    let preset_keys = presets
        .into_iter()
        .flat_map(|presets| presets.iter())
        .filter_map(|(name, preset)| Some((name, preset.as_table()?)))
        .flat_map(|(name, preset)| preset.keys().map(move |key| (Some(name), key)));
    let keys = table.keys().map(|key| (None, key)).chain(preset_keys);
    for (preset, key) in keys {
        if known(key, preset.is_some()) {
            continue;
        }
        let place = preset.map_or(String::new(), |name| format!(" in [preset.{name}]"));
        let suggestion = closest(key, &settings)
            .map_or(String::new(), |close| format!(": did you mean `{close}`?"));
        anyhow::bail!(
            "unknown setting `{key}`{place}{suggestion} (`ssh-ec2 --show-config` lists them all)"
        );
    }
    Ok(())
}

/// The name `word` is most likely a typo or a shortening of, if any is close enough.
fn closest<'a>(word: &str, names: &[&'a str]) -> Option<&'a str> {
    let typo = names
        .iter()
        .map(|name| (edit_distance(word, name), *name))
        .filter(|(distance, name)| *distance <= name.len().max(3) / 3)
        .min()
        .map(|(_, name)| name);
    let shortening = || {
        (names.iter().copied())
            .filter(|name| word.len() >= 3 && name.starts_with(word))
            .min_by_key(|name| name.len())
    };
    typo.or_else(shortening)
}

/// Levenshtein's distance: the fewest insertions, deletions and substitutions.
fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut diagonal = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let substituted = diagonal + usize::from(ca != *cb);
            diagonal = row[j + 1];
            row[j + 1] = substituted.min(row[j] + 1).min(diagonal + 1);
        }
    }
    row[b.len()]
}

/// Reads ssh-ec2's own variables from a `.env` file (its other keys belong to the project); a
/// missing file has none.
pub(super) fn read_dot_env(path: &Path) -> Result<BTreeMap<String, String>> {
    let Some(text) = read_if_present(path)? else {
        return Ok(BTreeMap::new());
    };
    let entries = super::dotenv::parse(&text).map_err(|e| {
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

#[cfg(test)]
mod tests {
    use super::*;

    fn temp_dir(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("ssh-ec2-files-{name}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
        let path = dir.join(name);
        std::fs::write(&path, text).unwrap();
        path
    }

    #[test]
    fn an_unknown_key_gets_the_closest_setting() {
        let err = |text: &str| format!("{:#}", check_keys(text).unwrap_err());
        assert!(err("instance_typ = \"x\"").contains("did you mean `instance_type`?"));
        assert!(err("[preset.gpu]\nvolume = 3").contains("`volume` in [preset.gpu]"));
        assert!(err("[preset.gpu]\nvolume = 3").contains("did you mean `volume_size`?"));
        assert!(!err("frobnicate = 1").contains("did you mean"));
        assert!(check_keys("region = \"x\"\n[tags]\na = \"b\"\n[preset.p]\nspot = true").is_ok());
        assert_eq!(edit_distance("kitten", "sitting"), 3);
    }

    #[test]
    fn an_unknown_key_names_its_file() {
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
}
