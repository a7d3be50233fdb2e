//! How this directory is synced: the local rsync (found and checked to be recent enough),
//! `.rsyncignore`, the secrets that never cross, either way, and the version-control metadata
//! that never comes home.

use std::ffi::{OsStr, OsString};
use std::path::{Path, PathBuf};
use std::process::Stdio;

use anyhow::{Context, Result, bail};

use super::secrets::{self, KeyFile};
use super::{PUSH_OPTIONS, contents_of};
use crate::remote::logs::{LOG_DIR, LOG_SUFFIX};

/// How this directory is synced: with which rsync, and what it holds back.
#[derive(Debug)]
pub struct Options {
    pub rsync: PathBuf,
    pub version: Version,
    /// `.rsyncignore`, when the directory has one.
    pub ignore_file: Option<PathBuf>,
    /// Its files where AWS keys live that hold one or cannot be checked: never synced.
    pub key_files: Vec<KeyFile>,
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
            key_files: secrets::key_files(local_dir),
        })
    }
}

#[cfg(test)]
impl Options {
    /// No `.rsyncignore` and no key files, for the tests of what the rules decide.
    pub(super) fn plain() -> Options {
        Options {
            rsync: PathBuf::from("rsync"),
            version: SAFE_VERSION,
            ignore_file: None,
            key_files: Vec::new(),
        }
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
    // The number alone cannot tell: distributions backport the fixes to older versions.
    Some(format!(
        "your rsync is {version}: versions before {SAFE_VERSION} let a compromised instance write \
         outside this directory while pulling, unless your distribution backported the fixes \
         (CVE-2024-12084 to -12088; Debian 12 has them from 3.2.7-1+deb12u1). Check: `zcat \
         /usr/share/doc/rsync/changelog.Debian.gz | grep CVE-2024-12087` (Debian, Ubuntu) or \
         your distribution's security notices; without them, {UPGRADE} (said once on this \
         machine)"
    ))
}

/// Where rsync writes what it receives until it is complete, at the top of either side's
/// directory: a transfer cut short leaves its temporary files there, out of every transfer,
/// never among the project's files.
pub(super) const TEMP_DIR: &str = ".ssh-ec2-tmp";

/// Version-control metadata, files or directories at any depth: pushed, never pulled, since
/// git (or hg, svn) runs what its config and hooks say, as soon as a shell prompt asks it for
/// the status.
pub(super) const VERSION_CONTROL: &[&str] = &[".git", ".hg", ".svn"];

/// Whether `path` is version-control metadata or lies in it.
pub(super) fn is_version_control(path: &Path) -> bool {
    (path.components()).any(|part| VERSION_CONTROL.iter().any(|vcs| part.as_os_str() == *vcs))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Way {
    Push,
    Pull,
}

/// What a transfer leaves out: rsync's temporary files, then `.rsyncignore` (whose `+` rules
/// may re-include what follows), the secrets, and on a pull the version-control metadata.
///
/// The logs the instance writes (`remote::logs`) are its own, and ruled on before
/// `.rsyncignore` so that no line there changes it: never pushed (an older copy of a log would
/// replace the one a job appends to), always pulled (a common `*.log` line would keep them on
/// the instance). Only the logs' own names are let through: what lies under them is ruled on
/// as anywhere else.
pub(super) fn filters(options: &Options, way: Way) -> Vec<OsString> {
    let mut args: Vec<OsString> = vec![format!("--filter=- /{TEMP_DIR}/").into()];
    let logs: &[String] = match way {
        Way::Push => &[format!("- /{LOG_DIR}/")],
        Way::Pull => &[
            format!("+ /{LOG_DIR}/"),
            format!("+ /{LOG_DIR}/*{LOG_SUFFIX}"),
        ],
    };
    args.extend(logs.iter().map(|rule| format!("--filter={rule}").into()));
    if let Some(ignore) = &options.ignore_file {
        let mut option = OsString::from("--exclude-from=");
        option.push(ignore);
        args.push(option);
    }
    let pull_only = match way {
        Way::Push => &[][..],
        Way::Pull => VERSION_CONTROL,
    };
    let patterns = secret_patterns(options).into_iter();
    for pattern in patterns.chain(pull_only.iter().map(|p| p.to_string())) {
        args.push(format!("--filter=- {pattern}").into());
    }
    args
}

/// The patterns of the secrets rules: the fixed ones, and this directory's files where AWS
/// keys live that hold one or cannot be checked (anchored at the top).
pub(super) fn secret_patterns(options: &Options) -> Vec<String> {
    let fixed = secrets::BY_NAME.iter().map(|secret| secret.to_string());
    let key_files = (options.key_files.iter()).map(|file| secrets::anchored(&file.path));
    fixed.chain(key_files).collect()
}

/// How much a first push of `local_dir` sends: files and their bytes, as rsync itself counts
/// them with the push's options and filters, without a transfer and without an instance.
pub async fn first_push_size(options: &Options, local_dir: &Path) -> Result<(u64, u64)> {
    let output = tokio::process::Command::new(&options.rsync)
        .args(PUSH_OPTIONS)
        .args(["--dry-run", "--stats"])
        .args(filters(options, Way::Push))
        .arg(contents_of(local_dir))
        .arg(super::nowhere())
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
    fn an_old_rsync_is_warned_of_once_per_machine_with_how_to_check_for_backports() {
        let state = tempfile::tempdir().unwrap();
        let old = Version(3, 2, 7);
        let warning = outdated_warning(old, state.path()).expect("warned the first time");
        assert!(warning.contains("backported the fixes"), "{warning}");
        assert!(warning.contains("grep CVE-2024-12087"), "{warning}");
        assert_eq!(outdated_warning(old, state.path()), None, "said once");
        assert_eq!(outdated_warning(SAFE_VERSION, state.path()), None);
    }

    #[test]
    fn rsyncignore_may_re_include_what_the_fixed_rules_hold_back_and_the_pull_holds_back_more() {
        let options = Options {
            ignore_file: Some(PathBuf::from("/p/.rsyncignore")),
            key_files: vec![KeyFile {
                path: PathBuf::from("sub/.env"),
                unchecked: None,
            }],
            ..Options::plain()
        };
        let rules = |way| -> Vec<String> {
            (filters(&options, way).iter())
                .map(|arg| arg.to_string_lossy().into_owned())
                .collect()
        };
        let push = rules(Way::Push);
        assert_eq!(push[0], "--filter=- /.ssh-ec2-tmp/", "never overridden");
        assert_eq!(push[1], "--filter=- /ssh-ec2-logs/", "the instance's own");
        assert_eq!(
            push[2], "--exclude-from=/p/.rsyncignore",
            "first of the rest"
        );
        assert!(push.contains(&"--filter=- /sub/.env".to_string()));
        assert!(!push.iter().any(|rule| rule.ends_with(".git")), "pushed");
        let pull = rules(Way::Pull);
        assert_eq!(
            pull[1..3],
            [
                "--filter=+ /ssh-ec2-logs/",
                "--filter=+ /ssh-ec2-logs/*.log"
            ],
            "the logs come home, whatever .rsyncignore says"
        );
        assert_eq!(pull[3..push.len() + 1], push[2..]);
        assert_eq!(
            pull[push.len() + 1..],
            ["--filter=- .git", "--filter=- .hg", "--filter=- .svn"]
        );
        assert!(is_version_control(Path::new("vendor/lib/.git")));
        assert!(is_version_control(Path::new(".git/hooks/post-checkout")));
        assert!(!is_version_control(Path::new("notes.git/x")));
    }

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
