//! What a run does beyond the head when its machine is a cluster: it reaches every other node
//! through the head's connection (no worker takes SSH from outside the cluster), sets the nodes
//! up to reach each other (a key of the run's own, every host key checked), copies what the
//! push sent from the head to the others inside the VPC, and starts their jobs (their foreground
//! commands: `workers`).

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use anyhow::{Context, Result};
use futures_util::future::try_join_all;
use russh::keys::ssh_key::LineEnding;

use super::Scene;
use super::env::JobStart;
use super::prepare::prepare_node;
use super::reach::{Reached, connect};
use crate::fleet::Machine;
use crate::poll::Poll;
use crate::printer::Printer;
use crate::remote::RemoteDir;
use crate::remote::cluster::{Layout, fan_out_command};
use crate::remote::job::{Job, JobState};
use crate::remote::logs::LogName;
use crate::settings::values::HostPort;
use crate::ssh::{Session, Target};

/// A node other than the head, reached through it.
pub struct Worker {
    pub rank: usize,
    pub target: Target,
    pub session: Arc<Session>,
}

/// The cluster as its nodes see it: their private addresses, in rank order.
pub struct Cluster {
    pub addresses: Vec<String>,
}

impl Cluster {
    /// The nodes of `machine`, by their private addresses.
    pub fn of(machine: &Machine) -> Cluster {
        Cluster {
            addresses: (machine.nodes.iter())
                .map(|node| node.instance.private_ip.clone().unwrap_or_default())
                .collect(),
        }
    }

    pub fn layout(&self) -> Layout<'_> {
        Layout {
            addresses: &self.addresses,
        }
    }
}

/// Reaches every worker through the head's session, by its private address, each pinned to
/// its own host key; re-arms its dead-man switch and makes its remote directory. All at once:
/// each costs round trips over the head's link, the same for one worker or many.
pub async fn reach_workers(
    scene: &Scene<'_>,
    head: &Arc<Session>,
    deadline: Instant,
) -> Result<Vec<Worker>> {
    let nodes = scene.machine.nodes.iter().enumerate().skip(1);
    try_join_all(nodes.map(|(rank, node)| async move {
        let address = node.instance.private_ip.clone().with_context(|| {
            format!(
                "node {rank} ({}) has no private address: the cluster cannot reach it",
                node.instance.id
            )
        })?;
        let mut target = Target {
            address: HostPort {
                host: address,
                port: 22,
            },
            user: scene.machine.user.clone(),
            keys: node.keys.clone(),
            via: Some(head.clone()),
            held: None,
        };
        let session = scene
            .interrupt
            .cancel(connect(&target, deadline, scene.printer))
            .await
            .with_context(|| format!("cannot reach node {rank} ({})", node.instance.id))?;
        prepare_node(scene, &node.instance.id, (&mut target, true), &session).await?;
        Ok(Worker {
            rank,
            target,
            session,
        })
    }))
    .await
}

/// Sets every node up so that they reach each other by SSH (a key made for this run, the host
/// keys each node may present in every node's known hosts) and find the hostfile; what it is.
pub async fn set_up(
    scene: &Scene<'_>,
    head_target: &Target,
    head: &Session,
    workers: &[Worker],
) -> Result<Cluster> {
    let nodes = &scene.machine.nodes;
    let cluster = Cluster::of(scene.machine);
    let targets = std::iter::once(head_target).chain(workers.iter().map(|w| &w.target));
    let host_keys = targets
        .map(|target| {
            (target.keys.accepted_hosts())
                .map(|key| key.to_openssh())
                .collect::<Result<Vec<_>, _>>()
        })
        .collect::<Result<Vec<_>, _>>()
        .context("cannot write a node's host key")?;
    let key = scene.store.cluster_key(&nodes[0].instance.id)?;
    let public = key.public_key().to_openssh()?;
    let private = key.to_openssh(LineEnding::LF)?;
    let command = cluster.layout().setup_command(&host_keys, &public);
    let sessions = std::iter::once(head).chain(workers.iter().map(|w| &*w.session));
    try_join_all(sessions.enumerate().map(|(rank, session)| {
        let installing = session.run_fed("the cluster's set-up", &command, private.as_bytes());
        async move {
            (installing.await)
                .with_context(|| format!("cannot set node {rank} up to reach the others"))
        }
    }))
    .await?;
    Ok(cluster)
}

/// Copies what the push sent to the head (`paths`, relative to the directory) to every other
/// node, from the head, inside the VPC: the directory crosses the laptop's link once.
pub async fn fan_out(
    head: &Session,
    dir: &RemoteDir,
    cluster: &Cluster,
    paths: &[PathBuf],
) -> Result<()> {
    if paths.is_empty() {
        return Ok(());
    }
    let list = crate::sync::nul_separated(paths.iter().map(PathBuf::as_path));
    let workers = &cluster.addresses[1..];
    head.run_fed(
        "the copy to the other nodes",
        &fan_out_command(dir, workers),
        &list,
    )
    .await
    .context("cannot copy the directory from the head to the other nodes")?;
    Ok(())
}

/// Starts this directory's job on every worker, with its node's variables (the head's is
/// started by the caller).
pub async fn start_worker_jobs(
    reached: &Reached,
    start: &JobStart<'_>,
    command: &str,
) -> Result<()> {
    for worker in &reached.workers {
        let command = reached.cluster.layout().command_for(worker.rank, command);
        let log = LogName::job(worker.rank, reached.cluster.addresses.len());
        (start.on(&worker.session, &command, &log).await).with_context(|| {
            format!(
                "cannot start job {} on node {}",
                start.job.name(),
                worker.rank
            )
        })?;
    }
    Ok(())
}

/// Waits for the job on every worker once the head's has ended (ending them at once when the
/// head's failed); the first to fail ends the others. That one's rank and status, if any.
pub async fn finish_worker_jobs(
    scene: &Scene<'_>,
    reached: &Reached,
    job: &Job,
    head_failed: bool,
) -> Result<Option<(usize, i32)>> {
    let printer = scene.printer;
    if head_failed {
        end_worker_jobs(reached, job, printer).await;
    }
    let mut first = None;
    let mut poll = Poll::every(std::time::Duration::from_secs(5)).interruptible(scene.interrupt);
    let mut running: Vec<&Worker> = reached.workers.iter().collect();
    while !running.is_empty() {
        let mut still = Vec::new();
        for worker in running {
            let state = super::job::job_state(&worker.session, job)
                .await
                .with_context(|| format!("node {} was lost", worker.rank))?;
            let status = match state {
                JobState::Running(_) => {
                    still.push(worker);
                    continue;
                }
                JobState::Ended(_, status) => status,
                JobState::Lost(_) | JobState::Interrupted(_) | JobState::None => 255,
            };
            if status != 0 && first.is_none() {
                if !head_failed {
                    printer.warn(&format!(
                        "node {} exited with status {status}: ending the other nodes' jobs",
                        worker.rank
                    ));
                    end_worker_jobs(reached, job, printer).await;
                }
                first = Some((worker.rank, status));
            }
        }
        running = still;
        if !running.is_empty() {
            poll.wait().await?;
        }
    }
    Ok(first)
}

/// Ends the job on every worker (TERM, then KILL after a while).
async fn end_worker_jobs(reached: &Reached, job: &Job, printer: &Printer) {
    for worker in &reached.workers {
        let what = format!("the job on node {}", worker.rank);
        let signal = |s: &str| job.signal_command(s);
        if let Err(e) = super::run::end_command(&worker.session, &what, signal, printer).await {
            printer.warn(&format!("{e:#}"));
        }
    }
}

/// Forgets the job on every worker, once its results are home.
pub async fn forget_worker_jobs(reached: &Reached, job: &Job) -> Result<()> {
    for worker in &reached.workers {
        worker.session.run_captured(&job.forget_command()).await?;
    }
    Ok(())
}
