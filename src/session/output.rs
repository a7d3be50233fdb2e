//! What the instance prints, on its way here: a cluster worker's command, each of its lines
//! prefixed with its rank; a job's log, from a given byte on. Stdout goes through the printer.

use std::io::Write;

use anyhow::{Context, Result, bail};
use russh::ChannelMsg;

use crate::printer::Printer;
use crate::remote::job::Job;
use crate::ssh::{RemoteExit, Session};

/// Runs `line` on a worker, its output prefixed with its rank, until the command ends. A
/// closed local stdout drops the rest of its output (the command goes on, as a worker's
/// output is kept in its log anyway).
pub(super) async fn stream_worker(
    session: &Session,
    line: &str,
    rank: usize,
    printer: &Printer,
) -> Result<RemoteExit> {
    let mut channel = session.open_exec(line).await?;
    channel
        .eof()
        .await
        .context("the connection to the node was lost")?;
    let prefix = format!("[node {rank}] ");
    let (mut out, mut err) = (Prefixed::new(&prefix), Prefixed::new(&prefix));
    let to_stdout = |lines: Vec<u8>| {
        if !lines.is_empty() {
            let _ = printer.out(lines);
        }
    };
    let to_stderr = |lines: Vec<u8>| {
        let mut stderr = std::io::stderr().lock();
        let _ = stderr.write_all(&lines).and_then(|()| stderr.flush());
    };
    let mut exit = None;
    while let Some(message) = channel.wait().await {
        match message {
            ChannelMsg::Data { data } => to_stdout(out.lines(&data)),
            ChannelMsg::ExtendedData { data, .. } => to_stderr(err.lines(&data)),
            ChannelMsg::ExitStatus { exit_status } => exit = Some(RemoteExit::Status(exit_status)),
            ChannelMsg::ExitSignal { signal_name, .. } => {
                exit = Some(RemoteExit::Signal(format!("{signal_name:?}")));
            }
            ChannelMsg::Failure => bail!("node {rank} refused to run the command"),
            _ => {}
        }
    }
    to_stdout(out.rest());
    to_stderr(err.rest());
    exit.context("its connection closed before the command's exit status came")
}

/// Output cut into whole lines, each with a prefix, written in one piece (so that the nodes'
/// lines do not mix within a line).
struct Prefixed {
    prefix: Vec<u8>,
    partial: Vec<u8>,
}

impl Prefixed {
    fn new(prefix: &str) -> Prefixed {
        Prefixed {
            prefix: prefix.as_bytes().to_vec(),
            partial: Vec::new(),
        }
    }

    /// The lines `data` completes, prefixed; what follows the last newline waits for more.
    fn lines(&mut self, data: &[u8]) -> Vec<u8> {
        self.partial.extend_from_slice(data);
        let mut lines = Vec::new();
        while let Some(end) = self.partial.iter().position(|&b| b == b'\n') {
            lines.extend_from_slice(&self.prefix);
            lines.extend(self.partial.drain(..=end));
        }
        lines
    }

    /// The last line, if it had no newline.
    fn rest(&mut self) -> Vec<u8> {
        match self.partial.is_empty() {
            true => Vec::new(),
            false => self.lines(b"\n"),
        }
    }
}

/// Streams the job's log from byte `*at` on through `emit`, `*at` moving with what was
/// emitted; with `follow`, until what writes the log is done (see `remote::logs`). `false`:
/// the job has no log (a job started by an earlier ssh-ec2).
pub(super) async fn stream_log(
    session: &Session,
    job: &Job,
    at: &mut u64,
    follow: bool,
    emit: &mut impl FnMut(&[u8]) -> Result<()>,
) -> Result<bool> {
    let mut channel = session.open_exec(&job.log_command(*at, follow)).await?;
    let lost = "the connection to the instance was lost while showing the job's log";
    channel.eof().await.context(lost)?;
    let (mut errors, mut status) = (Vec::new(), None);
    while let Some(message) = channel.wait().await {
        match message {
            ChannelMsg::Data { data } => {
                emit(&data)?;
                *at += data.len() as u64;
            }
            ChannelMsg::ExtendedData { data, .. } => errors.extend_from_slice(&data),
            ChannelMsg::ExitStatus { exit_status } => status = Some(exit_status),
            _ => {}
        }
    }
    match status.context(lost)? {
        0 => Ok(true),
        2 => Ok(false),
        status => bail!(
            "cannot read the log of job {} on the instance (exit {status}): {}",
            job.name(),
            String::from_utf8_lossy(&errors).trim()
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_line_of_a_node_carries_its_rank() {
        let mut prefixed = Prefixed::new("[node 2] ");
        let mut out = prefixed.lines(b"a\nb");
        out.extend(prefixed.lines(b"c\n\nd"));
        out.extend(prefixed.rest());
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "[node 2] a\n[node 2] bc\n[node 2] \n[node 2] d\n"
        );
        assert!(prefixed.rest().is_empty());
    }
}
