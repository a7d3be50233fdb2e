//! rsync between the local directory and the instance, through the run's SSH session, deciding by
//! what changed since the last sync (the manifest), not by which timestamp is newer:
//!
//! - Push (`push`): what changed here since the last sync goes up, in archive mode (the instance
//!   gets local permissions), nothing deleted, and nothing the instance changed since is ever
//!   replaced (a job may be writing it); a big new file in parts over several channels
//!   (`parts`). It then records what both sides hold in the manifest.
//! - Pull (`pull`): every file the instance changed since the last sync comes home. A local file
//!   that did not change since is replaced; one that did, or something of another kind (a
//!   directory there, a file or link here), is kept, and the instance's version is saved beside
//!   it (a conflict). Files that come home keep the mode of the file they replace; new ones get
//!   the local umask, plus the executable bit when the remote file has it. Owners never apply.
//!   Version-control metadata never comes home. What a rule keeps on the instance is found and
//!   reported (`held`). Any rsync error means not everything came home.
//! - Both ways: `.rsyncignore` honoured, credentials and private keys held back (`secrets`),
//!   symlinks that lead outside the tree skipped, names passed verbatim (`--secluded-args`),
//!   nanosecond times, temporary files kept apart (`temp`).

mod held;
mod invoke;
mod itemize;
mod manifest;
mod narrow;
mod narrow_plan;
mod options;
mod parts;
mod pull;
mod pull_plan;
mod push;
mod report;
mod secrets;
mod small;
mod temp;

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Result;

use crate::printer::{Printer, escape_path};
use crate::remote::RemoteDir;
use crate::ssh::Session;
use crate::ssh::relay::Relay;
use itemize::{Item, Kind};
pub use manifest::Manifest;
pub use options::{Options, first_push_size, outdated_warning};
use options::{Way, filters};
pub use push::PushInto;
pub use report::{Pulled, Report};

/// rsync's own name for the remote end; the transport ignores it.
const REMOTE_HOST: &str = "ec2";

pub struct Rsync<'a> {
    options: &'a Options,
    local_dir: &'a Path,
    remote_dir: RemoteDir,
    /// For the few shell commands a transfer needs over there (its temporary directory).
    session: Arc<Session>,
    /// rsync's transport; serves it while this lives.
    relay: Relay,
    printer: &'a Printer,
    /// Names the copies saved beside conflicting files.
    instance_id: &'a str,
}

/// What one rsync invocation did.
#[derive(Default)]
struct Outcome {
    items: Vec<Item>,
    /// Files and directories a filter rule held back, with the rule's pattern.
    hidden: Vec<(PathBuf, String)>,
    /// Links `--safe-links` skipped, with their targets.
    unsafe_links: Vec<(PathBuf, PathBuf)>,
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
            remote_dir: remote_dir.clone(),
            relay: Relay::start(session.clone(), socket_dir)?,
            session,
            printer,
            instance_id,
        })
    }

    /// `-v`: the names of what moved.
    fn list(&self, item: &Item) {
        if item.transferred() && item.kind != Kind::Dir {
            self.list_path(&item.path);
        }
    }

    fn list_path(&self, path: &Path) {
        if self.printer.verbose() {
            self.printer.info(&format!("  {}", escape_path(path)));
        }
    }

    fn local_root(&self) -> OsString {
        contents_of(self.local_dir)
    }

    /// `ec2:DIR/PATH`: verbatim thanks to `--secluded-args`, whatever PATH holds.
    fn remote_root(&self, path: &Path) -> OsString {
        let mut root = OsString::from(format!("{REMOTE_HOST}:"));
        root.push(self.remote_dir.for_rsync());
        root.push(path.as_os_str());
        root
    }

    /// rsync with what every transfer shares, and the filters of `way` (none: it lists what
    /// they hold back).
    fn command(&self, way: Option<Way>) -> tokio::process::Command {
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
        if let Some(way) = way {
            rsync.args(filters(self.options, way));
        }
        rsync
    }
}

/// What a listing shows without changing anything. `--force` only has rsync list a file that
/// would replace a non-empty directory (or the reverse) instead of skipping it in silence.
const LISTING: [&str; 2] = ["--dry-run", "--force"];

/// What a push keeps of local files: their times, modes and links, never their owners; symlinks
/// that lead outside the tree are skipped.
pub(super) const PUSH_OPTIONS: [&str; 4] =
    ["--archive", "--no-owner", "--no-group", "--safe-links"];

/// A local directory that is never made: a dry run into it lists everything the source holds.
fn nowhere() -> PathBuf {
    std::env::temp_dir().join(format!(
        "ssh-ec2-listing-{}-never-created",
        std::process::id()
    ))
}

/// Paths for `--files-from=- --from0`.
pub fn nul_separated<'p>(paths: impl IntoIterator<Item = &'p Path>) -> Vec<u8> {
    use std::os::unix::ffi::OsStrExt;
    let mut list = Vec::new();
    for path in paths {
        list.extend_from_slice(path.as_os_str().as_bytes());
        list.push(0);
    }
    list
}

/// `dir/`: to rsync, the directory's contents rather than the directory itself.
pub(super) fn contents_of(dir: &Path) -> OsString {
    let mut root = dir.as_os_str().to_os_string();
    root.push("/");
    root
}
