//! A cluster's other nodes running the run's own command (no multiplexer): started at once,
//! streamed here, and the first to fail (or be lost) ends the others and gives the run's status.

use std::sync::Arc;

use anyhow::{Context, Result};

use super::cluster::{Cluster, Worker};
use super::env::write_env;
use super::output::stream_worker;
use crate::fleet::Machine;
use crate::printer::Printer;
use crate::remote::RemoteDir;
use crate::remote::env::Environment;
use crate::remote::logs::LogName;
use crate::remote::runs::RunRecord;
use crate::ssh::{RemoteExit, Session};

/// How a worker's command ended.
pub struct Ended {
    pub rank: usize,
    pub exit: Result<RemoteExit>,
}

/// The command running on every worker, each streamed by a task of its own.
pub struct WorkerCommands {
    /// Each worker's session, to end what is left of its command.
    running: Vec<(usize, Arc<Session>)>,
    /// The run's record, the same on every node (each has its own files).
    record: RunRecord,
    ended: tokio::sync::mpsc::UnboundedReceiver<Ended>,
    left: usize,
}

/// Starts `command` on every worker, in the remote directory, with its node's variables and
/// the user's (`env`); its output comes here line by line, each prefixed `[node K] `, and goes
/// to its log on the node. Each records it as the head does (`record`).
pub fn start_workers(
    workers: &[Worker],
    dir: &RemoteDir,
    cluster: &Cluster,
    (command, env): (&str, &Environment),
    record: &RunRecord,
    printer: &Printer,
) -> WorkerCommands {
    let (sender, ended) = tokio::sync::mpsc::unbounded_channel();
    let mut running = Vec::new();
    for worker in workers {
        let command = cluster.layout().command_for(worker.rank, command);
        let log = LogName::run(worker.rank, cluster.addresses.len());
        let line = record.command_line(dir, Some(&command), Some(&log), !env.is_empty());
        let (session, rank, sender) = (worker.session.clone(), worker.rank, sender.clone());
        let (record, env) = (record.clone(), env.clone());
        let printer = printer.clone();
        tokio::spawn(async move {
            let exit = async {
                write_env(&session, &record, &env).await?;
                stream_worker(&session, &line, rank, &printer).await
            };
            let _ = sender.send(Ended {
                rank,
                exit: exit.await,
            });
        });
        running.push((worker.rank, worker.session.clone()));
    }
    WorkerCommands {
        left: running.len(),
        running,
        record: record.clone(),
        ended,
    }
}

impl WorkerCommands {
    /// The next worker whose command ends; `None` once they all have.
    pub async fn next(&mut self) -> Option<Ended> {
        if self.left == 0 {
            return None;
        }
        let ended = self.ended.recv().await?;
        self.left -= 1;
        Some(ended)
    }

    /// Ends what is left of every worker's command (TERM, then KILL).
    pub async fn end_all(&self, printer: &Printer) {
        self.end(None, printer).await;
    }

    /// The same, but for the worker `rank`, whose command has ended.
    async fn end_all_but(&self, rank: usize) {
        self.end(Some(rank), &Printer::new(crate::printer::Verbosity::Quiet))
            .await;
    }

    async fn end(&self, but: Option<usize>, printer: &Printer) {
        let others = self.running.iter().filter(|(rank, ..)| Some(*rank) != but);
        for (rank, session) in others {
            let what = format!("the command on node {rank}");
            let signal = |s: &str| self.record.signal_command(s);
            if let Err(e) = super::run::end_command(session, &what, signal, printer).await {
                printer.warn(&format!("{e:#}"));
            }
        }
    }

    /// Forgets each worker's run record on its node.
    pub async fn clean_up(&self) {
        for (_, session) in &self.running {
            let _ = session.run_captured(&self.record.cleanup_command()).await;
        }
    }
}

/// Whether a node's command failed (or its node was lost).
fn failed(exit: &Result<RemoteExit>) -> bool {
    !matches!(exit, Ok(RemoteExit::Status(0)))
}

/// The first worker whose command fails; never, when there are none or they all succeed.
pub async fn first_failure(workers: Option<&mut WorkerCommands>) -> Ended {
    if let Some(workers) = workers {
        while let Some(ended) = workers.next().await {
            if failed(&ended.exit) {
                workers.end_all_but(ended.rank).await;
                return ended;
            }
        }
    }
    std::future::pending().await
}

/// The worker whose failure is the run's, if any: one that failed while the head's command
/// ran (`first`: the head's was ended for it), else, when the head's succeeded, the first to
/// fail after it. The others are waited for (or ended, after a failure); their records go.
pub async fn workers_outcome(
    workers: &mut WorkerCommands,
    head: &Result<RemoteExit>,
    first: Option<Ended>,
    printer: &Printer,
) -> Option<Ended> {
    let head_failed = failed(head);
    let failure = match first {
        Some(first) => Some(first),
        None => (finish_workers(workers, head_failed, printer).await).filter(|_| !head_failed),
    };
    workers.clean_up().await;
    failure
}

/// Waits for the workers' commands once the head's has ended (after ending them, when the
/// head's failed); the first that fails ends the others. That one, if any.
async fn finish_workers(
    workers: &mut WorkerCommands,
    head_failed: bool,
    printer: &Printer,
) -> Option<Ended> {
    if head_failed {
        printer.warn("node 0 failed: ending the other nodes' commands");
        workers.end_all(printer).await;
    }
    let mut first = None;
    while let Some(ended) = workers.next().await {
        if first.is_none() && failed(&ended.exit) {
            if !head_failed {
                printer.warn(&format!(
                    "node {} {}: ending the other nodes' commands",
                    ended.rank,
                    how_it_ended(&ended.exit)
                ));
                workers.end_all(printer).await;
            }
            first = Some(ended);
        }
    }
    first
}

/// "exited with status 5", "was killed by signal KILL", "was lost".
pub fn how_it_ended(exit: &Result<RemoteExit>) -> String {
    match exit {
        Ok(RemoteExit::Status(status)) => format!("exited with status {status}"),
        Ok(RemoteExit::Signal(signal)) => format!("was killed by signal {signal}"),
        Err(e) => format!("was lost ({e:#})"),
    }
}

/// The run's status when node `failure.rank` of `machine` failed first: its command's, or the
/// error of a node that was lost.
pub fn node_failed(failure: Ended, machine: &Machine) -> Result<RemoteExit> {
    let rank = failure.rank;
    let id = &machine.nodes[rank].instance.id;
    failure
        .exit
        .with_context(|| format!("node {rank} ({id}) was lost before its command ended"))
}
