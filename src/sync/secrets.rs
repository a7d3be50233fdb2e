//! What never crosses to the instance unless `.rsyncignore` re-includes it: credentials and
//! private keys by name, and the files where AWS access keys live (`.env` files, `credentials`,
//! the console's access-key downloads), at any depth, read to see whether they hold a key. One
//! that cannot be read is held back too: what cannot be checked does not go.

use std::path::{Path, PathBuf};

/// Held back by name, either way: AWS credentials and SSH private keys.
pub(super) const BY_NAME: &[&str] = &[
    ".aws/",
    ".ssh/",
    "*.pem",
    "id_rsa",
    "id_dsa",
    "id_ecdsa",
    "id_ed25519",
    "id_ecdsa_sk",
    "id_ed25519_sk",
];

/// The variables of an AWS access key in a `.env` file.
const AWS_KEY_VARIABLES: &[&str] = &[
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
];

/// Larger than any file of keys: one this big is not read, and not sent.
const READ_UP_TO: u64 = 1 << 20;

/// A file where keys live, held back, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyFile {
    /// Relative to the directory.
    pub path: PathBuf,
    /// `None`: it holds an AWS key; else why it could not be checked.
    pub unchecked: Option<String>,
}

/// How a file where keys live is read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Format {
    /// `.env`, `.env.*`, `*.env`: variables.
    Dotenv,
    /// The AWS CLI's `credentials`, the console's `*accessKeys.csv`, `credentials.csv` and
    /// `rootkey.csv`.
    Plain,
}

fn format_of(name: &str) -> Option<Format> {
    let lower = name.to_ascii_lowercase();
    if name == ".env" || name.starts_with(".env.") || name.ends_with(".env") {
        return Some(Format::Dotenv);
    }
    let plain = lower == "credentials"
        || lower == "credentials.csv"
        || lower == "rootkey.csv"
        || (lower.ends_with(".csv") && lower.contains("accesskeys"));
    plain.then_some(Format::Plain)
}

/// Whether `content` holds an AWS key; `Err`: it cannot be told (a `.env` that does not parse).
fn holds_key(format: Format, content: &[u8]) -> Result<bool, String> {
    if has_access_key_id(content) {
        return Ok(true);
    }
    match format {
        Format::Plain => Ok(String::from_utf8_lossy(content)
            .to_ascii_lowercase()
            .contains("aws_secret_access_key")),
        Format::Dotenv => {
            let text = std::str::from_utf8(content).map_err(|_| "it is not UTF-8 text")?;
            let entries = crate::settings::dotenv::parse(text)?;
            Ok(entries
                .iter()
                .any(|entry| AWS_KEY_VARIABLES.contains(&entry.key.as_str())))
        }
    }
}

/// An access-key id: `AKIA` (a user's) or `ASIA` (temporary), then 16 upper-case letters or
/// digits.
fn has_access_key_id(content: &[u8]) -> bool {
    content.windows(20).any(|window| {
        (window.starts_with(b"AKIA") || window.starts_with(b"ASIA"))
            && window[4..]
                .iter()
                .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit())
    })
}

/// Why the file at `file` (a file where keys live) must stay home, if it must.
fn check(format: Format, file: &Path) -> Option<Option<String>> {
    let read = std::fs::metadata(file).and_then(|meta| match meta.len() > READ_UP_TO {
        true => Err(std::io::Error::other("it is larger than 1 MiB")),
        false => std::fs::read(file),
    });
    match read
        .map_err(|e| e.to_string())
        .and_then(|content| holds_key(format, &content))
    {
        Ok(true) => Some(None),
        Ok(false) => None,
        Err(why) => Some(Some(why)),
    }
}

/// The files under `local_dir` where keys live that must stay home, sorted. A link is read
/// through: it is held back with the file it leads to, when that is in the directory too.
pub fn key_files(local_dir: &Path) -> Vec<KeyFile> {
    let mut found = Vec::new();
    let mut dirs = vec![PathBuf::new()];
    while let Some(dir) = dirs.pop() {
        let Ok(entries) = std::fs::read_dir(local_dir.join(&dir)) else {
            // rsync cannot read it either: its push fails rather than send it.
            continue;
        };
        for entry in entries.flatten() {
            let path = dir.join(entry.file_name());
            let Ok(kind) = entry.file_type() else {
                continue;
            };
            if kind.is_dir() {
                dirs.push(path);
                continue;
            }
            let format = entry.file_name().to_str().and_then(format_of);
            let Some(unchecked) = format.and_then(|f| check(f, &local_dir.join(&path))) else {
                continue;
            };
            if kind.is_symlink()
                && let Ok(target) = std::fs::canonicalize(local_dir.join(&path))
                && let Ok(inside) = target.strip_prefix(local_dir)
            {
                found.push(KeyFile {
                    path: inside.to_path_buf(),
                    unchecked: unchecked.clone(),
                });
            }
            found.push(KeyFile { path, unchecked });
        }
    }
    found.sort_by(|a, b| a.path.cmp(&b.path));
    found.dedup_by(|a, b| a.path == b.path);
    found
}

/// An rsync rule pattern that matches exactly `path` (relative), anchored at the top.
pub(super) fn anchored(path: &Path) -> String {
    let text = path.to_string_lossy();
    // Backslashes escape only in a pattern that holds a wildcard.
    let escaped = match text.contains(['*', '?', '[']) {
        true => text
            .chars()
            .flat_map(|c| match c {
                '*' | '?' | '[' | '\\' => vec!['\\', c],
                _ => vec![c],
            })
            .collect(),
        false => text.into_owned(),
    };
    format!("/{escaped}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn files_where_keys_live_are_known_by_name() {
        for name in [
            ".env",
            ".env.local",
            "prod.env",
            "credentials",
            "alice_accessKeys.csv",
        ] {
            assert!(format_of(name).is_some(), "{name}");
        }
        assert_eq!(format_of("rootkey.csv"), Some(Format::Plain));
        for name in ["env.py", "data.csv", ".envrc", "credentials.py"] {
            assert_eq!(format_of(name), None, "{name}");
        }
    }

    #[test]
    fn a_key_is_recognised_and_what_cannot_be_read_is_not_taken_for_safe() {
        let dotenv = |text: &str| holds_key(Format::Dotenv, text.as_bytes());
        assert_eq!(dotenv("export AWS_SECRET_ACCESS_KEY=x\n"), Ok(true));
        assert_eq!(dotenv("MY_KEY=AKIAIOSFODNN7EXAMPLE\n"), Ok(true));
        assert_eq!(dotenv("WANDB_API_KEY=abc\n"), Ok(false));
        assert!(dotenv("A=\"never closed\n").is_err(), "unparsable");
        assert!(holds_key(Format::Dotenv, b"A=\xff\n").is_err(), "not text");
        let plain = |text: &str| holds_key(Format::Plain, text.as_bytes());
        assert_eq!(
            plain("User name,Access key ID\nalice,ASIAY34FZKBOKMUTVV7A\n"),
            Ok(true)
        );
        assert_eq!(plain("[default]\naws_secret_access_key = x\n"), Ok(true));
        assert_eq!(plain("[default]\nregion = eu-west-1\n"), Ok(false));
        assert!(!has_access_key_id(b"AKIAshort"));
        assert!(!has_access_key_id(b"AKIAIOSFODNN7exampl"));
    }

    #[test]
    fn key_files_are_found_at_any_depth_and_unreadable_ones_are_held_back() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let write = |path: &str, text: &str| {
            let file = dir.path().join(path);
            std::fs::create_dir_all(file.parent().unwrap()).unwrap();
            std::fs::write(file, text).unwrap();
        };
        write("a/b/.env", "AWS_ACCESS_KEY_ID=x\n");
        write(
            "a/credentials",
            "aws_access_key_id = AKIAIOSFODNN7EXAMPLE\n",
        );
        write("a/plain.env", "A=1\n");
        write("a/broken.env", "A=\"never closed\n");
        write("secrets/real", "AWS_ACCESS_KEY_ID=x\n");
        std::os::unix::fs::symlink("secrets/real", dir.path().join(".env.prod")).unwrap();
        write("locked/.env.x", "A=1\n");
        let locked = dir.path().join("locked/.env.x");
        std::fs::set_permissions(&locked, std::fs::Permissions::from_mode(0o000)).unwrap();
        let found = key_files(dir.path());
        let paths: Vec<&Path> = found.iter().map(|f| f.path.as_path()).collect();
        // Root reads it anyway: then it is checked, and holds no key.
        let unreadable = std::fs::read(&locked).is_err();
        let mut expected = vec![".env.prod", "a/b/.env", "a/broken.env", "a/credentials"];
        expected.extend(unreadable.then_some("locked/.env.x"));
        expected.push("secrets/real");
        assert_eq!(paths, expected.iter().map(Path::new).collect::<Vec<_>>());
        let unchecked: Vec<&Path> = (found.iter())
            .filter(|f| f.unchecked.is_some())
            .map(|f| f.path.as_path())
            .collect();
        let mut expected = vec![Path::new("a/broken.env")];
        expected.extend(unreadable.then_some(Path::new("locked/.env.x")));
        assert_eq!(unchecked, expected);
    }

    #[test]
    fn patterns_match_the_path_exactly() {
        assert_eq!(anchored(Path::new("a b/.env")), "/a b/.env");
        assert_eq!(anchored(Path::new("x[1]/.env")), r"/x\[1]/.env");
        assert_eq!(anchored(Path::new(r"a\b*/.env")), r"/a\\b\*/.env");
    }
}
