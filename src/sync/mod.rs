//! rsync between the local directory and the instance, through the run's SSH session, deciding by
//! what changed since the last sync (the manifest), not by which timestamp is newer:
//!
//! - Push: archive mode (the instance gets local permissions), nothing deleted. It then records
//!   what both sides hold in the manifest.
//! - Pull: every file the instance changed since the last sync comes home. A local file that did
//!   not change since is replaced; one that did is kept, and the instance's version is saved
//!   beside it (a conflict). Files that come home keep the mode of the file they replace; new
//!   ones get the local umask, plus the executable bit when the remote file has it. Owners never
//!   apply. Any rsync error means not everything came home.
//! - Both ways: `.rsyncignore` honoured, credentials and private keys held back, symlinks that
//!   lead outside the tree skipped, names passed verbatim (`--secluded-args`), nanosecond times.

mod itemize;
mod manifest;

use std::ffi::{OsStr, OsString};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::time::SystemTime;

use anyhow::{Context, Result, bail};
use nix::sys::signal::Signal::{self as NixSignal, SIGHUP, SIGINT, SIGQUIT, SIGTERM};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt};

use crate::plan::SyncPlan;
use crate::printer::Printer;
use crate::remote::RemoteDir;
use crate::ssh::Session;
use crate::ssh::relay::Relay;
use itemize::{Item, Kind, Line};
pub use manifest::Manifest;
use manifest::Stamp;

/// rsync's own name for the remote end; the transport ignores it.
const REMOTE_HOST: &str = "ec2";

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
pub fn env_files_with_aws_keys(local_dir: &Path) -> Vec<String> {
    let Ok(entries) = std::fs::read_dir(local_dir) else {
        return Vec::new();
    };
    let mut found: Vec<String> = entries
        .flatten()
        .filter_map(|entry| entry.file_name().into_string().ok())
        .filter(|name| name == ".env" || name.starts_with(".env."))
        .filter(|name| {
            let text = std::fs::read_to_string(local_dir.join(name)).unwrap_or_default();
            crate::dotenv::parse(&text)
                .unwrap_or_default()
                .iter()
                .any(|entry| AWS_KEY_VARIABLES.contains(&entry.key.as_str()))
        })
        .collect();
    found.sort();
    found
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
pub fn local_rsync_version(rsync: &Path) -> Result<Version> {
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

/// A file both sides changed since the last sync: the instance's version was saved beside it.
pub struct Conflict {
    pub path: PathBuf,
    pub saved_as: PathBuf,
}

pub struct Rsync<'a> {
    plan: &'a SyncPlan,
    local_dir: &'a Path,
    remote_dir: String,
    /// rsync's transport; serves it while this lives.
    relay: Relay,
    printer: &'a Printer,
    /// Names the copies saved beside conflicting files.
    instance_id: &'a str,
}

/// What one rsync invocation did.
struct Outcome {
    items: Vec<Item>,
    /// Files and directories a filter rule held back, with the rule's pattern.
    hidden: Vec<(PathBuf, String)>,
    /// rsync's own account of what went wrong, when it did not exit 0.
    failure: Option<String>,
}

impl<'a> Rsync<'a> {
    pub fn new(
        plan: &'a SyncPlan,
        local_dir: &'a Path,
        remote_dir: &RemoteDir,
        session: Arc<Session>,
        socket_dir: &Path,
        printer: &'a Printer,
        instance_id: &'a str,
    ) -> Result<Self> {
        Ok(Self {
            plan,
            local_dir,
            remote_dir: remote_dir.for_rsync(),
            relay: Relay::start(session, socket_dir)?,
            printer,
            instance_id,
        })
    }

    /// Sends this directory to the instance and records what both sides now hold. Run a pull
    /// first on an instance that may hold changes not yet home: a push overwrites them.
    pub async fn push(&self, manifest: &mut Manifest) -> Result<()> {
        let started = SystemTime::now();
        let mut rsync = self.command();
        rsync
            .args(PUSH_OPTIONS)
            // Twice: unchanged files are listed too, so the manifest covers everything synced.
            .args(["-ii", "--debug=FILTER1"])
            .arg(self.local_root())
            .arg(self.remote_root(Path::new("")));
        let outcome = self.invoke(rsync, None).await?;
        if let Some(failure) = outcome.failure {
            // The manifest stays as it was: what the instance holds now is not known.
            bail!("could not sync this directory to the instance: {failure}");
        }
        for item in &outcome.items {
            self.list(item);
            if !matches!(item.kind, Kind::File | Kind::Link) {
                continue;
            }
            let file = self.local_dir.join(&item.path);
            match Stamp::of(&file) {
                // Changed while being sent: which version the instance got is unknown, so the
                // next pull treats it as changed on both sides and keeps both.
                Some(stamp) if stamp.size == item.size && !written_since(&stamp, started) => {
                    manifest.set(item.path.clone(), stamp, &file)
                }
                _ => manifest.remove(&item.path),
            }
        }
        manifest.save()?;
        let secrets = secret_patterns(self.plan);
        let names: Vec<String> = (outcome.hidden.iter())
            .filter(|(_, pattern)| secrets.contains(pattern))
            .map(|(path, _)| path.display().to_string())
            .collect();
        if !names.is_empty() {
            self.printer.info(&format!(
                "held back (credentials and private keys are never synced): {}; to send one, \
                 re-include it in .rsyncignore with `+ NAME`",
                names.join(", ")
            ));
        }
        Ok(())
    }

    /// Brings home what the instance changed since the last sync, keeping both versions of
    /// files changed on both sides (added to `conflicts`). Fails, after bringing home what it
    /// could, if anything could not come home.
    pub async fn pull(&self, manifest: &mut Manifest, conflicts: &mut Vec<Conflict>) -> Result<()> {
        // What differs, without changing anything.
        let mut rsync = self.command();
        rsync
            .args(["--recursive", "--times", "--no-perms"])
            .args(HOME_LINKS)
            .args(["--dry-run", "-i"])
            .arg(self.remote_root(Path::new("")))
            .arg(self.local_root());
        let listed = self.invoke(rsync, None).await?;
        let mut failures: Vec<String> = listed.failure.into_iter().collect();

        let mut fetch = Vec::new();
        let mut both_changed = Vec::new();
        for item in listed.items.into_iter().filter(Item::transferred) {
            match item.kind {
                Kind::Dir => fetch.push(item),
                Kind::File | Kind::Link => match self.decide(&item, manifest) {
                    Decision::Fetch => fetch.push(item),
                    Decision::KeepBoth => both_changed.push(item),
                    Decision::KeepLocal => {}
                },
                Kind::Other => {}
            }
        }

        if !fetch.is_empty() {
            let list: Vec<u8> = fetch
                .iter()
                .flat_map(|item| item.path.as_os_str().as_bytes().iter().chain([&0]))
                .copied()
                .collect();
            let mut rsync = self.command();
            rsync
                .args(["--times", "--dirs"])
                .args(HOME_LINKS)
                .args(HOME_MODES)
                .args(["-i", "--files-from=-", "--from0"])
                .arg(self.remote_root(Path::new("")))
                .arg(self.local_root());
            let fetched = self.invoke(rsync, Some(list)).await?;
            for item in &fetched.items {
                self.list(item);
                let file = self.local_dir.join(&item.path);
                if let Some(stamp) = Stamp::of(&file)
                    && matches!(item.kind, Kind::File | Kind::Link)
                    && stamp.matches_listing(item.size, &item.mtime)
                {
                    manifest.set(item.path.clone(), stamp, &file);
                }
            }
            failures.extend(fetched.failure);
        }

        for item in both_changed {
            let saved_as = beside(self.local_dir, &item.path, self.instance_id);
            let mut rsync = self.command();
            rsync
                .arg("--times")
                .args(HOME_LINKS)
                .args(HOME_MODES)
                .arg(self.remote_root(&item.path))
                .arg(self.local_dir.join(&saved_as));
            let copied = self.invoke(rsync, None).await?;
            match copied.failure {
                Some(failure) => failures.push(failure),
                None => {
                    // The instance's version is home now: the local one may go up next time.
                    let saved = self.local_dir.join(&saved_as);
                    if let Some(stamp) = Stamp::of(&saved) {
                        manifest.set(item.path.clone(), stamp, &saved);
                    }
                    conflicts.push(Conflict {
                        path: item.path,
                        saved_as,
                    });
                }
            }
        }
        manifest.save()?;
        if !failures.is_empty() {
            bail!(
                "not everything came home from the instance:\n{}",
                failures.join("\n")
            );
        }
        Ok(())
    }

    fn decide(&self, item: &Item, manifest: &Manifest) -> Decision {
        let file = self.local_dir.join(&item.path);
        let remote_unchanged = manifest
            .get(&item.path)
            .is_some_and(|synced| synced.stamp.matches_listing(item.size, &item.mtime));
        match Stamp::of(&file) {
            // Deleted here since the last sync, and untouched there: stays deleted.
            None if remote_unchanged => Decision::KeepLocal,
            None => Decision::Fetch,
            Some(local) if manifest.unchanged(&item.path, &local, &file) => Decision::Fetch,
            Some(_) if remote_unchanged => Decision::KeepLocal,
            Some(_) => Decision::KeepBoth,
        }
    }

    /// `-v`: the names of what moved.
    fn list(&self, item: &Item) {
        if self.printer.lists_files() && item.transferred() && item.kind != Kind::Dir {
            self.printer.info(&format!("  {}", item.path.display()));
        }
    }

    fn local_root(&self) -> OsString {
        contents_of(self.local_dir)
    }

    /// `ec2:DIR/PATH`: verbatim thanks to `--secluded-args`, whatever PATH holds.
    fn remote_root(&self, path: &Path) -> OsString {
        let mut root = OsString::from(format!("{REMOTE_HOST}:"));
        root.push(&self.remote_dir);
        root.push(path.as_os_str());
        root
    }

    /// rsync with what every transfer shares.
    fn command(&self) -> tokio::process::Command {
        let mut rsync = tokio::process::Command::new(&self.plan.rsync);
        rsync.args([
            "--compress",
            // Arguments go through rsync's protocol, not the remote shell: any name is verbatim.
            "--secluded-args",
            "--8-bit-output",
            // Nanosecond mtimes: a result rewritten within the second of the upload, at the
            // same size, still counts as changed (receivers from rsync 3.1.3 on).
            "--modify-window=-1",
        ]);
        rsync.arg(itemize::out_format());
        rsync.args(filters(self.plan));
        rsync
    }

    /// Runs rsync through the relay and reads back what it did.
    async fn invoke(
        &self,
        mut rsync: tokio::process::Command,
        files_from: Option<Vec<u8>>,
    ) -> Result<Outcome> {
        rsync
            .arg("-e")
            .arg(self.relay.rsync_shell()?)
            // `%M` in UTC, to compare with the manifest's times.
            .env("TZ", "UTC")
            .stdin(match files_from {
                Some(_) => Stdio::piped(),
                None => Stdio::null(),
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            // Its own process group: a Ctrl-C at the terminal must not kill a pull under way;
            // ssh-ec2 decides what Ctrl-C means (and kills rsync if it drops the transfer).
            // Not being in the terminal's group, it must not write there itself either.
            .process_group(0);
        tracing::debug!("running {rsync:?}");
        let mut attempts = 1;
        loop {
            let (outcome, status) = attempt(&mut rsync, files_from.clone()).await?;
            // A Ctrl-C sent to the terminal's process group in the instant rsync is being spawned
            // (forked, not yet in its own group) kills it before it did anything: run it again.
            // Each run does the same transfer, so a repeat is harmless.
            let terminal_signal = status
                .signal()
                .and_then(|s| NixSignal::try_from(s).ok())
                .is_some_and(|s| [SIGINT, SIGTERM, SIGHUP, SIGQUIT].contains(&s));
            if terminal_signal && attempts < SPAWN_RACE_ATTEMPTS {
                tracing::debug!("rsync was killed by a signal at its start ({status}): again");
                attempts += 1;
                continue;
            }
            return Ok(outcome);
        }
    }
}

/// What every transfer leaves out: `.rsyncignore`, then the secrets.
fn filters(plan: &SyncPlan) -> Vec<OsString> {
    let mut args = Vec::new();
    if let Some(ignore) = &plan.ignore_file {
        let mut option = OsString::from("--exclude-from=");
        option.push(ignore);
        args.push(option);
    }
    for secret in secret_patterns(plan) {
        args.push(format!("--filter=- {secret}").into());
    }
    args
}

/// The patterns of the secrets rules: the fixed ones, and this directory's `.env` files that
/// hold an AWS access key (anchored at the top).
fn secret_patterns(plan: &SyncPlan) -> Vec<String> {
    let fixed = SECRETS.iter().map(|secret| secret.to_string());
    let env_files = (plan.env_files_with_aws_keys.iter()).map(|name| format!("/{name}"));
    fixed.chain(env_files).collect()
}

/// What a push keeps of local files: their times, modes and links, never their owners; symlinks
/// that lead outside the tree are skipped.
const PUSH_OPTIONS: [&str; 4] = ["--archive", "--no-owner", "--no-group", "--safe-links"];

/// `dir/`: to rsync, the directory's contents rather than the directory itself.
fn contents_of(dir: &Path) -> OsString {
    let mut root = dir.as_os_str().to_os_string();
    root.push("/");
    root
}

/// How much a first push of `local_dir` sends: files and their bytes, as rsync itself counts
/// them with the push's options and filters, without a transfer and without an instance.
pub async fn first_push_size(plan: &SyncPlan, local_dir: &Path) -> Result<(u64, u64)> {
    // Never created: rsync --dry-run only pretends to fill it.
    let nowhere = std::env::temp_dir().join(format!(
        "ssh-ec2-dry-run-{}-never-created",
        std::process::id()
    ));
    let output = tokio::process::Command::new(&plan.rsync)
        .args(PUSH_OPTIONS)
        .args(["--dry-run", "--stats"])
        .args(filters(plan))
        .arg(contents_of(local_dir))
        .arg(&nowhere)
        .stdin(Stdio::null())
        .output()
        .await
        .with_context(|| format!("cannot run {}", plan.rsync.display()))?;
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

/// How often a transfer is started when signals keep killing rsync as it starts.
const SPAWN_RACE_ATTEMPTS: u32 = 3;

/// One run of rsync: what it did, and how it ended.
async fn attempt(
    rsync: &mut tokio::process::Command,
    files_from: Option<Vec<u8>>,
) -> Result<(Outcome, std::process::ExitStatus)> {
    let mut child = rsync.spawn().context("cannot start rsync")?;
    if let (Some(list), Some(mut stdin)) = (files_from, child.stdin.take()) {
        tokio::spawn(async move {
            let _ = stdin.write_all(&list).await;
        });
    }
    let mut stderr = child.stderr.take().expect("piped");
    let errors = tokio::spawn(async move {
        let mut text = Vec::new();
        let _ = stderr.read_to_end(&mut text).await;
        String::from_utf8_lossy(&text).into_owned()
    });
    let mut outcome = Outcome {
        items: Vec::new(),
        hidden: Vec::new(),
        failure: None,
    };
    let mut lines = tokio::io::BufReader::new(child.stdout.take().expect("piped")).split(b'\n');
    while let Some(line) = lines.next_segment().await? {
        match itemize::parse(&line) {
            Line::Item(item) => outcome.items.push(item),
            Line::Hidden { path, pattern } => outcome.hidden.push((path, pattern)),
            _ => {}
        }
    }
    let status = child.wait().await?;
    let errors = errors.await.unwrap_or_default();
    if !status.success() {
        outcome.failure = Some(describe_failure(status.code(), &errors));
    }
    Ok((outcome, status))
}

/// Links that come home: as links, but not those that lead outside the tree (a compromised or
/// careless instance could point one at the laptop's own files).
const HOME_LINKS: [&str; 2] = ["--links", "--safe-links"];

/// Modes of files that come home: an existing file keeps its own (`--no-perms`); a new one
/// gets rw for everyone, plus x where the remote file has one, masked by the local umask.
const HOME_MODES: [&str; 2] = ["--no-perms", "--chmod=ugo=rwX"];

enum Decision {
    Fetch,
    KeepLocal,
    KeepBoth,
}

fn written_since(stamp: &Stamp, moment: SystemTime) -> bool {
    let written = SystemTime::UNIX_EPOCH
        + std::time::Duration::new(stamp.mtime_secs.max(0) as u64, stamp.mtime_nanos);
    stamp.mtime_secs < 0 || written >= moment
}

/// `results.csv` → `results.from-i-0123.csv` (then `-2`, `-3`… if that exists already).
fn beside(local_dir: &Path, path: &Path, instance_id: &str) -> PathBuf {
    let name = path.file_name().unwrap_or(OsStr::new("file"));
    let bytes = name.as_bytes();
    // A leading dot starts a hidden name, not an extension.
    let split = bytes
        .iter()
        .rposition(|&b| b == b'.')
        .filter(|&at| at > 0)
        .unwrap_or(bytes.len());
    let (stem, extension) = bytes.split_at(split);
    (1..)
        .map(|n| {
            let mut side = stem.to_vec();
            side.extend_from_slice(format!(".from-{instance_id}").as_bytes());
            if n > 1 {
                side.extend_from_slice(format!("-{n}").as_bytes());
            }
            side.extend_from_slice(extension);
            path.with_file_name(OsStr::from_bytes(&side))
        })
        .find(|candidate| local_dir.join(candidate).symlink_metadata().is_err())
        .expect("some name is free")
}

/// rsync's exit status and its messages, which name the files it could not handle.
fn describe_failure(code: Option<i32>, stderr: &str) -> String {
    let lines: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
    let shown = &lines[lines.len().saturating_sub(20)..];
    let hint = if stderr.contains("command not found") {
        "\n  hint: the image has no rsync: install it there (e.g. through AWS_USER_DATA)"
    } else {
        ""
    };
    format!(
        "rsync failed ({}):\n  {}{hint}",
        code.map_or("killed by a signal".to_string(), |c| format!(
            "exit status {c}"
        )),
        shown.join("\n  ")
    )
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

    #[test]
    fn conflict_copies_say_where_they_came_from() {
        let dir = tempfile::tempdir().unwrap();
        let side = beside(dir.path(), Path::new("out/results.csv"), "i-0abc");
        assert_eq!(side, Path::new("out/results.from-i-0abc.csv"));
        std::fs::create_dir(dir.path().join("out")).unwrap();
        std::fs::write(dir.path().join(&side), "taken").unwrap();
        assert_eq!(
            beside(dir.path(), Path::new("out/results.csv"), "i-0abc"),
            Path::new("out/results.from-i-0abc-2.csv")
        );
        assert_eq!(
            beside(dir.path(), Path::new(".env"), "i-1"),
            Path::new(".env.from-i-1")
        );
    }
}
