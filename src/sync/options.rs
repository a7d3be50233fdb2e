//! How this directory is synced: the local rsync (found and checked to be recent enough),
//! `.rsyncignore`, and the secrets that never cross, either way.

use std::ffi::{OsStr, OsString};
use std::path::{Path, PathBuf};
use std::process::Stdio;

use anyhow::{Context, Result, bail};

use super::{PUSH_OPTIONS, contents_of};

/// Never synced, either way, unless `.rsyncignore` re-includes them with a `+` rule (its rules
/// come first, and rsync's first matching rule wins): AWS credentials and SSH private keys.
const SECRETS: &[&str] = &[
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

/// The variables of an AWS access key: a `.env` file that sets one is held back too.
const AWS_KEY_VARIABLES: &[&str] = &[
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
];

/// The `.env` and `.env.*` files at the top of `local_dir` that hold an AWS access key (by
/// name, sorted): the instance gets its AWS rights from its instance profile, never a copy of
/// the user's.
fn env_files_with_aws_keys(local_dir: &Path) -> Vec<String> {
    let Ok(entries) = std::fs::read_dir(local_dir) else {
        return Vec::new();
    };
    let mut found: Vec<String> = entries
        .flatten()
        .filter_map(|entry| entry.file_name().into_string().ok())
        .filter(|name| name == ".env" || name.starts_with(".env."))
        .filter(|name| {
            let text = std::fs::read_to_string(local_dir.join(name)).unwrap_or_default();
            crate::settings::dotenv::parse(&text)
                .unwrap_or_default()
                .iter()
                .any(|entry| AWS_KEY_VARIABLES.contains(&entry.key.as_str()))
        })
        .collect();
    found.sort();
    found
}

/// How this directory is synced: with which rsync, and what it holds back.
#[derive(Debug)]
pub struct Options {
    pub rsync: PathBuf,
    pub version: Version,
    /// `.rsyncignore`, when the directory has one.
    pub ignore_file: Option<PathBuf>,
    /// Its top-level `.env` files that hold an AWS access key: never synced.
    pub env_files_with_aws_keys: Vec<String>,
}

impl Options {
    /// The local rsync (found in `path_var` as a shell would, and checked to be recent enough)
    /// and the directory's own rules.
    pub fn detect(local_dir: &Path, path_var: Option<&OsStr>) -> Result<Options> {
        let rsync = find_program("rsync", path_var).context(
            "rsync not found: install it with your package manager (apt install rsync, \
             brew install rsync), or pass --no-rsync",
        )?;
        let ignore = local_dir.join(".rsyncignore");
        Ok(Options {
            version: local_rsync_version(&rsync)?,
            rsync,
            ignore_file: ignore.is_file().then_some(ignore),
            env_files_with_aws_keys: env_files_with_aws_keys(local_dir),
        })
    }
}

/// Looks `program` up in PATH, like a shell would.
fn find_program(program: &str, path_var: Option<&OsStr>) -> Option<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    std::env::split_paths(path_var?)
        .map(|dir| dir.join(program))
        .find(|candidate| {
            candidate
                .metadata()
                .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        })
}

/// The oldest rsync with everything used here (`--modify-window=-1`, `--secluded-args`,
/// `--debug=FILTER`, nanosecond times).
const MINIMUM_VERSION: Version = Version(3, 1, 3);
/// Older versions let a compromised sender write outside the target directory (CVE-2024-12087).
const SAFE_VERSION: Version = Version(3, 4, 0);
const UPGRADE: &str = "upgrade it: `brew install rsync` (macOS), `apt install rsync` (Debian, \
                       Ubuntu), or your package manager";

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Version(u32, u32, u32);

impl std::fmt::Display for Version {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}.{}.{}", self.0, self.1, self.2)
    }
}

/// Asks the local rsync its version, and refuses one too old to sync names verbatim.
fn local_rsync_version(rsync: &Path) -> Result<Version> {
    let output = std::process::Command::new(rsync)
        .arg("--version")
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("cannot run {} --version", rsync.display()))?;
    let text = String::from_utf8_lossy(&output.stdout);
    let version = parse_version(&text).with_context(|| {
        format!(
            "{} does not say which rsync version it is (`{}`): ssh-ec2 needs rsync {MINIMUM_VERSION} \
             or newer; {UPGRADE}",
            rsync.display(),
            text.lines().next().unwrap_or_default()
        )
    })?;
    if version < MINIMUM_VERSION {
        bail!(
            "{} is rsync {version}: ssh-ec2 needs {MINIMUM_VERSION} or newer to sync any file name \
             verbatim; {UPGRADE}",
            rsync.display()
        );
    }
    Ok(version)
}

/// `rsync  version 3.2.7  protocol version 32`; openrsync says `rsync version 2.6.9 compatible`.
fn parse_version(text: &str) -> Option<Version> {
    let words: Vec<&str> = text.split_whitespace().collect();
    // Builds from git say `v3.4.1-12-gabc`.
    let number = (1..words.len())
        .filter(|&i| words[i - 1] == "version" && (i < 2 || words[i - 2] != "protocol"))
        .map(|i| words[i].trim_start_matches('v'))
        .find(|n| n.starts_with(|c: char| c.is_ascii_digit()))?;
    let mut parts = number
        .split(|c: char| !c.is_ascii_digit())
        .map(|p| p.parse().ok());
    Some(Version(
        parts.next()??,
        parts.next().flatten().unwrap_or(0),
        parts.next().flatten().unwrap_or(0),
    ))
}

/// The once-per-machine warning about an rsync older than 3.4.0, if it is due.
pub fn outdated_warning(version: Version, state_dir: &Path) -> Option<String> {
    if version >= SAFE_VERSION {
        return None;
    }
    // Said once per machine and version: a warning on every run would soon be ignored.
    let marker = state_dir.join(format!("warned-rsync-{version}"));
    if marker.exists() {
        return None;
    }
    let _ = std::fs::create_dir_all(state_dir).and_then(|()| std::fs::write(&marker, b""));
    Some(format!(
        "your rsync is {version}: versions before {SAFE_VERSION} let a compromised instance write \
         outside this directory while pulling; {UPGRADE} (said once)"
    ))
}

/// What every transfer leaves out: `.rsyncignore`, then the secrets.
pub(super) fn filters(options: &Options) -> Vec<OsString> {
    let mut args = Vec::new();
    if let Some(ignore) = &options.ignore_file {
        let mut option = OsString::from("--exclude-from=");
        option.push(ignore);
        args.push(option);
    }
    for secret in secret_patterns(options) {
        args.push(format!("--filter=- {secret}").into());
    }
    args
}

/// The patterns of the secrets rules: the fixed ones, and this directory's `.env` files that
/// hold an AWS access key (anchored at the top).
pub(super) fn secret_patterns(options: &Options) -> Vec<String> {
    let fixed = SECRETS.iter().map(|secret| secret.to_string());
    let env_files = (options.env_files_with_aws_keys.iter()).map(|name| format!("/{name}"));
    fixed.chain(env_files).collect()
}

/// How much a first push of `local_dir` sends: files and their bytes, as rsync itself counts
/// them with the push's options and filters, without a transfer and without an instance.
pub async fn first_push_size(options: &Options, local_dir: &Path) -> Result<(u64, u64)> {
    // Never created: rsync --dry-run only pretends to fill it.
    let nowhere = std::env::temp_dir().join(format!(
        "ssh-ec2-dry-run-{}-never-created",
        std::process::id()
    ));
    let output = tokio::process::Command::new(&options.rsync)
        .args(PUSH_OPTIONS)
        .args(["--dry-run", "--stats"])
        .args(filters(options))
        .arg(contents_of(local_dir))
        .arg(&nowhere)
        .stdin(Stdio::null())
        .output()
        .await
        .with_context(|| format!("cannot run {}", options.rsync.display()))?;
    let stdout = String::from_utf8_lossy(&output.stdout);
    if !output.status.success() {
        bail!(
            "rsync could not list {} ({}): {}",
            local_dir.display(),
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    let stat = |label: &str| {
        stdout
            .lines()
            .find_map(|l| l.strip_prefix(label))
            .map(|rest| rest.split_whitespace().next().unwrap_or_default())
            // Thousands separators, whatever the locale.
            .and_then(|n| n.replace([',', '.', '\''], "").parse::<u64>().ok())
            .with_context(|| format!("rsync --stats did not say `{label}`:\n{stdout}"))
    };
    Ok((
        stat("Number of regular files transferred: ")?,
        stat("Total transferred file size: ")?,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_are_read_and_compared() {
        assert_eq!(
            parse_version("rsync  version 3.2.7  protocol version 32\nCopyright"),
            Some(Version(3, 2, 7))
        );
        assert_eq!(
            parse_version("openrsync: protocol version 29\nrsync version 2.6.9 compatible"),
            Some(Version(2, 6, 9))
        );
        assert_eq!(
            parse_version("rsync  version v3.4.1-12-gabc  protocol version 32"),
            Some(Version(3, 4, 1))
        );
        assert!(Version(3, 1, 2) < MINIMUM_VERSION && Version(3, 10, 0) > SAFE_VERSION);
    }
}
