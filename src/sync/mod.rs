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

mod invoke;
mod itemize;
mod manifest;
mod options;
mod pull;

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::SystemTime;

use anyhow::{Result, bail};

use crate::printer::Printer;
use crate::remote::RemoteDir;
use crate::ssh::Session;
use crate::ssh::relay::Relay;
use itemize::{Item, Kind};
pub use manifest::Manifest;
use manifest::Stamp;
pub use options::{Options, first_push_size, outdated_warning};
use options::{filters, secret_patterns};

/// rsync's own name for the remote end; the transport ignores it.
const REMOTE_HOST: &str = "ec2";

/// A file both sides changed since the last sync: the instance's version was saved beside it.
pub struct Conflict {
    pub path: PathBuf,
    pub saved_as: PathBuf,
}

pub struct Rsync<'a> {
    options: &'a Options,
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
        options: &'a Options,
        local_dir: &'a Path,
        remote_dir: &RemoteDir,
        session: Arc<Session>,
        socket_dir: &Path,
        printer: &'a Printer,
        instance_id: &'a str,
    ) -> Result<Self> {
        Ok(Self {
            options,
            local_dir,
            remote_dir: remote_dir.for_rsync(),
            relay: Relay::start(session, socket_dir)?,
            printer,
            instance_id,
        })
    }

    /// Sends this directory to the instance and records what both sides now hold. Run a pull
    /// first on an instance that may hold changes not yet home: a push overwrites them.
    /// What it sent is returned (the paths, relative to the directory): a cluster's head
    /// copies them on to its other nodes.
    pub async fn push(&self, manifest: &mut Manifest) -> Result<Vec<PathBuf>> {
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
        let secrets = secret_patterns(self.options);
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
        let sent = (outcome.items.iter())
            .filter(|item| item.transferred())
            .map(|item| item.path.clone())
            .collect();
        Ok(sent)
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
        let mut rsync = tokio::process::Command::new(&self.options.rsync);
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
        rsync.args(filters(self.options));
        rsync
    }
}

/// What a push keeps of local files: their times, modes and links, never their owners; symlinks
/// that lead outside the tree are skipped.
pub(super) const PUSH_OPTIONS: [&str; 4] =
    ["--archive", "--no-owner", "--no-group", "--safe-links"];

/// `dir/`: to rsync, the directory's contents rather than the directory itself.
pub(super) fn contents_of(dir: &Path) -> OsString {
    let mut root = dir.as_os_str().to_os_string();
    root.push("/");
    root
}

fn written_since(stamp: &Stamp, moment: SystemTime) -> bool {
    let written = SystemTime::UNIX_EPOCH
        + std::time::Duration::new(stamp.mtime_secs.max(0) as u64, stamp.mtime_nanos);
    stamp.mtime_secs < 0 || written >= moment
}
