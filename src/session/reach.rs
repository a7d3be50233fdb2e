//! Reaching the instance: waiting for it to run and for its sshd to let us in (one boot
//! deadline for both), preparing it and a cluster's other nodes (`prepare`); reconnecting
//! after a dropped connection; and the `-L`/`-R` forwards on a session.

use std::sync::Arc;
use std::time::Instant;

use anyhow::{Context, Result};

use super::address::ssh_address;
use super::cluster::{Cluster, Worker, reach_workers, set_up};
use super::lease::Presence;
use super::prepare::prepare_head;
use super::progress::Progress;
use super::pull::changes_since_pull;
use super::{Plan, Scene};
use crate::cloud::{Cloud, Instance, State};
use crate::printer::Printer;
use crate::remote::RemoteDir;
use crate::remote::job::Job;
use crate::ssh::forward::Forwarding;
use crate::ssh::{Session, Target};
use crate::state::entries::Entry;
use crate::state::lock::DirLock;

/// The instance, reached: where its sshd is, the session, and the remote directory's path.
pub struct Reached {
    pub target: Target,
    /// The head as last seen running (its addresses: a launched one had none yet).
    pub running: Instance,
    pub session: Arc<Session>,
    pub remote_dir: RemoteDir,
    /// This run made the remote directory: nothing was there to compare with or bring home.
    pub new_dir: bool,
    /// A cluster's other nodes, reached through the head (none for one instance).
    pub workers: Vec<Worker>,
    /// How the nodes (one, or a cluster's) see each other.
    pub cluster: Cluster,
    /// The head's host key is still to be settled (see `host_key::settle_due`).
    pub host_key_due: bool,
}

impl Reached {
    /// The session to node `rank` of the machine (0: the head; a cluster's other nodes through
    /// it).
    pub fn node(&self, rank: usize) -> Result<&Arc<Session>> {
        if rank == 0 {
            return Ok(&self.session);
        }
        let nodes = self.cluster.addresses.len();
        (self.workers.iter())
            .find(|worker| worker.rank == rank)
            .map(|worker| &worker.session)
            .with_context(|| match nodes {
                1 => format!(
                    "--node {rank}: this directory's instance is one node, not a --nodes \
                     cluster; leave --node out"
                ),
                _ => format!(
                    "--node {rank}: this directory's cluster has {nodes} nodes, 0 (the head) to {}",
                    nodes - 1
                ),
            })
    }
}

impl Progress {
    /// Notes the session the end of the run uses, and where it goes.
    pub fn reached(&mut self, reached: &Reached) {
        self.session = Some(reached.session.clone());
        self.target = Some(reached.target.clone());
        self.running = Some(reached.running.clone());
    }
}

/// Waits until the instance runs and its sshd lets us in (one boot deadline for both), then
/// makes sure the remote directory exists.
pub async fn reach(scene: &Scene<'_>) -> Result<Reached> {
    let head = connect_head(scene).await?;
    prepare_machine(scene, head, true).await
}

/// The head, running, its sshd letting us in (before `deadline`, for the other nodes too).
struct Connected {
    target: Target,
    session: Arc<Session>,
    running: Instance,
    deadline: Instant,
}

/// The head's session, once the instance runs and its sshd lets us in.
async fn connect_head(scene: &Scene<'_>) -> Result<Connected> {
    let Scene {
        plan,
        interrupt,
        printer,
        ..
    } = *scene;
    let deadline = Instant::now() + plan.reach.boot_timeout;
    let (target, running) = interrupt
        .cancel(wait_for_ssh_target(scene, deadline))
        .await?;
    let id = &scene.machine.head().instance.id;
    let entry = Entry {
        local_dir: &plan.local_dir,
        login: &plan.machine.login,
        id,
        user: &target.user,
        address: &target.address,
    };
    if let Err(e) = scene.store.refresh_ssh_config_entry(&entry) {
        printer.warn(&format!(
            "{e:#}: `ssh-ec2 --ssh-config --install` writes the OpenSSH entry of {id} again"
        ));
    }
    let session = interrupt
        .cancel(connect(&target, deadline, printer))
        .await?;
    Ok(Connected {
        target,
        session,
        running,
        deadline,
    })
}

/// The head prepared (see `prepare`; its host key too when `host_key_now`) while a cluster's
/// other nodes are reached through it.
async fn prepare_machine(
    scene: &Scene<'_>,
    head: Connected,
    host_key_now: bool,
) -> Result<Reached> {
    let Connected {
        mut target,
        session,
        running,
        deadline,
    } = head;
    let printer = scene.printer;
    // A cluster's other nodes are reached while the head is set up (each costs round trips
    // over the laptop's link), their phases as lines: spinners would draw over each other.
    let printer = match scene.machine.nodes.len() {
        1 => printer.clone(),
        _ => printer.lines_only(),
    };
    let scene = &Scene {
        printer: &printer,
        ..*scene
    };
    let ((remote_dir, new_dir), workers) = tokio::try_join!(
        prepare_head(scene, &mut target, &session, host_key_now),
        reach_other_nodes(scene, &session, deadline)
    )?;
    let cluster = match workers.is_empty() {
        true => Cluster::of(scene.machine),
        false => set_up(scene, &target, &session, &workers).await?,
    };
    Ok(Reached {
        target,
        running,
        session,
        remote_dir,
        new_dir,
        workers,
        cluster,
        host_key_due: !host_key_now,
    })
}

/// A cluster's workers, reached through the head's session (none for one machine).
async fn reach_other_nodes(
    scene: &Scene<'_>,
    head: &Arc<Session>,
    deadline: Instant,
) -> Result<Vec<Worker>> {
    let others = scene.machine.nodes.len() - 1;
    if others == 0 {
        return Ok(Vec::new());
    }
    let phase = scene.printer.phase(match others {
        1 => "reaching the other node".to_string(),
        others => format!("reaching the {others} other nodes"),
    });
    let workers = reach_workers(scene, head, deadline).await?;
    phase.done(format!("reached the {} nodes of the cluster", others + 1));
    Ok(workers)
}

/// Reaches the instance and takes this run's lease on it (learning what earlier runs' commands
/// left there); the directory's lock, held until a run that joins can see that lease, is
/// released then. A lone instance's host key is left `due` for the push to go beside
/// (`host_key::settle_due`), when one follows.
pub async fn reach_and_join(
    scene: &Scene<'_>,
    lock: DirLock,
    progress: &mut Progress,
    push_follows: bool,
) -> Result<Reached> {
    let head = connect_head(scene).await?;
    let session = head.session.clone();
    let job = Job::for_dir(&scene.plan.local_dir);
    // The lease is taken, and the instance asked whether anything changed there since the
    // last pull, while the machine is prepared: one round trip for all on a slow link.
    // A cluster's nodes are told each other's keys as settled.
    let host_key_now = !push_follows || scene.machine.nodes.len() > 1;
    let (prepared, taken, changed) = tokio::join!(
        prepare_machine(scene, head, host_key_now),
        Presence::take(&session, &job),
        changes_since_pull(scene, &session)
    );
    progress.changed_there = changed;
    // Taken, it is dropped at the end of the run whatever else failed.
    progress.session = Some(session);
    let (presence, earlier) = taken?;
    progress.presence = Some(presence);
    progress.earlier = earlier;
    let reached = prepared?;
    progress.reached(&reached);
    drop(lock);
    Ok(reached)
}

/// Waits until the instance runs (unless it was found running) and says where its sshd is;
/// the instance, running.
async fn wait_for_ssh_target(scene: &Scene<'_>, deadline: Instant) -> Result<(Target, Instance)> {
    let Scene {
        cloud,
        plan,
        machine,
        printer,
        ..
    } = *scene;
    let head = &machine.head().instance;
    let id = &head.id;
    // Found running moments ago (not started, nor just launched): its address is known.
    let running = match head.state {
        State::Running => head.clone(),
        _ => {
            let phase = printer.phase(format!("waiting for {id} to run"));
            let running = cloud.wait_until(id, State::Running, deadline).await?;
            phase.done(format!("{id} is running"));
            running
        }
    };
    let address = ssh_address(&plan.reach.dial, &running)?;
    // A held connection carries no `-R` (its holder does not take forwards back), and a
    // cluster's nodes have their own.
    let can_hold = machine.nodes.len() == 1 && plan.forwards.remote.is_empty();
    let target = Target {
        address,
        user: machine.user.clone(),
        keys: machine.head().keys.clone(),
        via: None,
        held: can_hold.then(|| scene.store.held_socket(id)),
    };
    Ok((target, running))
}

pub(super) async fn connect(
    target: &Target,
    deadline: Instant,
    printer: &Printer,
) -> Result<Arc<Session>> {
    let phase = printer.phase(format!("connecting to {}@{}", target.user, target.address));
    let session = Session::connect(target, deadline, &phase).await?;
    let kept = match session.is_held() {
        true => " (the connection kept since the last run)",
        false => "",
    };
    phase.done(format!(
        "connected to {}@{}{kept}",
        target.user, target.address
    ));
    Ok(Arc::new(session))
}

/// The session to go on with: the same one, or a new one if it dropped (a network change),
/// unless the instance stopped under the run.
pub async fn reconnect_if_closed(
    scene: &Scene<'_>,
    target: &Target,
    session: Arc<Session>,
) -> Result<Arc<Session>> {
    if !session.is_closed() {
        return Ok(session);
    }
    if let Some(gone) = stopped_under_the_run(scene.cloud, &scene.machine.head().instance.id).await
    {
        return Err(gone);
    }
    let deadline = Instant::now() + scene.plan.reach.reconnect_timeout;
    // Another run here may have replaced the host key meanwhile (see `host_key`).
    let mut target = target.clone();
    let (id, login) = (&scene.machine.head().instance.id, &scene.plan.machine.login);
    if let Ok(keys) = scene.store.load(id, login) {
        target.keys = keys;
    }
    connect(&target, deadline, scene.printer).await
}

/// Why the connection went away, when it is because the instance stopped (a shutdown from
/// inside it) or was terminated.
pub async fn stopped_under_the_run(cloud: &Cloud, id: &str) -> Option<anyhow::Error> {
    match cloud.instance(id).await.ok()?.state {
        State::Stopping | State::Stopped => Some(anyhow::anyhow!(
            "{id} stopped under the run (shut down from inside it?); its disk, with the results, \
             is kept: run `ssh-ec2 true` here to start it and bring them home"
        )),
        State::ShuttingDown | State::Terminated => Some(anyhow::anyhow!(
            "{id} was terminated under the run: what was only on it is lost"
        )),
        State::Pending | State::Running => None,
    }
}

/// Opens the `-L`/`-R` forwards on `session`, for as long as the result lives.
pub async fn open_forwards(
    session: &Arc<Session>,
    plan: &Plan,
    printer: &Printer,
    first_time: bool,
) -> Result<Forwarding> {
    let forwards = &plan.forwards;
    let forwarding = session
        .forward(&forwards.local, &forwards.remote, printer)
        .await?;
    if first_time {
        for forward in &forwards.local {
            printer.info(&format!("forwarding -L {}", forward.spec));
        }
        for forward in &forwards.remote {
            printer.info(&format!("forwarding -R {forward}"));
        }
    }
    Ok(forwarding)
}
