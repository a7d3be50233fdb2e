//! rsync between the local directory and the instance, through the run's SSH session.
//! Both ways: archive mode, compressed, `.rsyncignore` honoured, symlinks that lead outside the
//! tree skipped, nothing deleted, and a file newer on the receiving side never overwritten.

use std::path::Path;
use std::process::Stdio;
use std::sync::Arc;

use anyhow::{Context, Result, bail};

use crate::plan::SyncPlan;
use crate::remote::RemoteDir;
use crate::ssh::Session;
use crate::ssh::relay::Relay;

/// rsync's own name for the remote end; the transport ignores it.
const REMOTE_HOST: &str = "ec2";

pub struct Rsync<'a> {
    plan: &'a SyncPlan,
    local: String,
    remote: String,
    /// rsync's transport; serves it while this lives.
    relay: Relay,
    list_files: bool,
}

impl<'a> Rsync<'a> {
    pub fn new(
        plan: &'a SyncPlan,
        local_dir: &Path,
        remote_dir: &RemoteDir,
        session: Arc<Session>,
        socket_dir: &Path,
        list_files: bool,
    ) -> Result<Self> {
        Ok(Self {
            plan,
            local: format!("{}/", local_dir.display()),
            remote: format!("{REMOTE_HOST}:{}", remote_dir.for_rsync()),
            relay: Relay::start(session, socket_dir)?,
            list_files,
        })
    }

    pub async fn push(&self) -> Result<()> {
        self.run(&self.local, &self.remote)
            .await
            .context("could not sync this directory to the instance")
    }

    pub async fn pull(&self) -> Result<()> {
        self.run(&self.remote, &self.local)
            .await
            .context("could not pull the results back from the instance")
    }

    async fn run(&self, from: &str, to: &str) -> Result<()> {
        let mut rsync = tokio::process::Command::new(&self.plan.rsync);
        // Owners and groups of a throw-away machine mean nothing here.
        rsync.args([
            "--archive",
            "--no-owner",
            "--no-group",
            "--compress",
            "--update",
            "--safe-links",
            // Nanosecond mtimes: a result rewritten within the second of the upload, at the
            // same size, still counts as changed (receivers from rsync 3.1.3 on).
            "--modify-window=-1",
        ]);
        if let Some(ignore) = &self.plan.ignore_file {
            rsync.arg(format!("--exclude-from={}", ignore.display()));
        }
        if self.list_files {
            rsync.arg("--verbose");
        }
        rsync
            .arg("-e")
            .arg(self.relay.rsync_shell()?)
            .arg(from)
            .arg(to);
        rsync
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            // Its own process group: a Ctrl-C at the terminal must not kill a pull under way;
            // ssh-ec2 decides what Ctrl-C means (and kills rsync if it drops the transfer).
            // Not being in the terminal's group, it must not write there itself either.
            .process_group(0);
        tracing::debug!("running {rsync:?}");
        let mut child = rsync.spawn().context("cannot start rsync")?;
        // stdout is the remote command's: rsync's listing goes to stderr, as it comes.
        let mut listing = child.stdout.take().expect("piped");
        let list_files = self.list_files;
        let relay_listing = tokio::spawn(async move {
            match list_files {
                true => tokio::io::copy(&mut listing, &mut tokio::io::stderr()).await,
                false => tokio::io::copy(&mut listing, &mut tokio::io::sink()).await,
            }
        });
        let output = child.wait_with_output().await?;
        let _ = relay_listing.await;
        let stderr = String::from_utf8_lossy(&output.stderr);
        match output.status.code() {
            Some(0) => Ok(()),
            // Files that vanished while being listed: the rest made it.
            Some(24) => {
                tracing::debug!(
                    "rsync: some files vanished during the transfer: {}",
                    stderr.trim()
                );
                Ok(())
            }
            code => {
                let tail: Vec<&str> = stderr.lines().rev().take(12).collect();
                let tail: Vec<&str> = tail.into_iter().rev().collect();
                let hint = if stderr.contains("command not found") {
                    "\n  hint: the image has no rsync: install it there (e.g. through AWS_USER_DATA)"
                } else {
                    ""
                };
                bail!(
                    "rsync failed ({}):\n{}{hint}",
                    code.map_or("killed by a signal".to_string(), |c| format!(
                        "exit status {c}"
                    )),
                    tail.join("\n")
                )
            }
        }
    }
}
