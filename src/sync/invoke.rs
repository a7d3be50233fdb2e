//! One rsync run through the relay, read back: what it did (its itemized lines), what the
//! filters and `--safe-links` held back, and how it ended.

use std::os::unix::process::ExitStatusExt;
use std::process::Stdio;

use anyhow::{Context, Result};
use nix::sys::signal::Signal::{self as NixSignal, SIGHUP, SIGINT, SIGQUIT, SIGTERM};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt};

use super::itemize::{self, Line};
use super::{Outcome, Rsync};

impl Rsync<'_> {
    /// Runs rsync through the relay and reads back what it did.
    pub(super) async fn invoke(
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
        unsafe_links: Vec::new(),
        failure: None,
    };
    let mut lines = tokio::io::BufReader::new(child.stdout.take().expect("piped")).split(b'\n');
    while let Some(line) = lines.next_segment().await? {
        match itemize::parse(&line) {
            Line::Item(item) => outcome.items.push(item),
            Line::Hidden { path, pattern } => outcome.hidden.push((path, pattern)),
            Line::Unsafe { path, target } => outcome.unsafe_links.push((path, target)),
            Line::Other => {}
        }
    }
    let status = child.wait().await?;
    let errors = errors.await.unwrap_or_default();
    if !status.success() {
        outcome.failure = Some(describe_failure(status.code(), &errors));
    }
    Ok((outcome, status))
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
