//! This directory's job in tmux or screen on the instance: choosing its multiplexer, following
//! it (attached through a PTY, or by watching its record), coming back to it after a dropped
//! connection, and concluding it (its status, its results home, its record forgotten).

use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, bail};

use super::cluster::{finish_worker_jobs, forget_worker_jobs};
use super::logs::{ended_line, mark_seen, settle_logs, show_unseen};
use super::progress::Progress;
use super::pull::pull_home;
use super::reach::{Reached, open_forwards, reconnect_if_closed};
use super::run::end_command;
use super::{Plan, Scene};
use crate::fleet::Machine;
use crate::poll::Poll;
use crate::remote::job::{Job, JobState, Multiplexer};
use crate::settings::values::Multiplex;
use crate::ssh::{RemoteExit, Session, run_command};
use crate::sync::Manifest;

/// How following a job ended.
pub enum Followed {
    /// With the shell's status of the command.
    Ended(i32),
    /// The user detached (or a signal came): the job goes on.
    Detached,
    /// AWS is taking the spot instance back: the job will not end by itself.
    Interrupted,
}

/// The job's state, from its record on the instance.
pub async fn job_state(session: &Session, job: &Job) -> Result<JobState> {
    let answer = session.run_captured(&job.status_command()).await?;
    Job::parse_status(&answer).with_context(|| {
        format!(
            "cannot read the record of job {} on the instance",
            job.name()
        )
    })
}

/// The multiplexer the run asks for: none for a foreground run unless set, tmux (else screen)
/// for --detach.
pub fn wanted_multiplexer(plan: &Plan, detach: bool) -> Option<Option<Multiplexer>> {
    match (plan.multiplex, detach) {
        (Some(Multiplex::Tmux), _) => Some(Some(Multiplexer::Tmux)),
        (Some(Multiplex::Screen), _) => Some(Some(Multiplexer::Screen)),
        (_, true) => Some(None),
        (_, false) => None,
    }
}

/// The multiplexer to run the job in (`None` asked: tmux, else screen), refusing when the
/// instance lacks it or when this directory's job still runs.
pub async fn choose_multiplexer(
    session: &Session,
    wanted: Option<Multiplexer>,
    job: &Job,
) -> Result<Multiplexer> {
    if let JobState::Running(multiplexer) = job_state(session, job).await? {
        bail!(
            "job {} of this directory still runs (in {multiplexer}): `ssh-ec2 --attach` to watch \
             it, or `ssh-ec2 --finish` to wait for it and bring its results home",
            job.name()
        );
    }
    let found = session
        .run_captured(Job::probe_multiplexers_command())
        .await?;
    let has = |m: Multiplexer| found.lines().any(|l| l.trim() == m.name());
    let install = "install it on the instance (`sudo apt-get install -y tmux screen`, \
                   `sudo dnf install -y tmux`), or at launch with AWS_USER_DATA='apt-get install \
                   -y tmux'";
    match wanted {
        Some(m) if has(m) => Ok(m),
        Some(m) => bail!("the instance has no {m}: {install}"),
        None if has(Multiplexer::Tmux) => Ok(Multiplexer::Tmux),
        None if has(Multiplexer::Screen) => Ok(Multiplexer::Screen),
        None => bail!("the instance has neither tmux nor screen to run a detached job: {install}"),
    }
}

/// Follows a running job until it ends or the user detaches: attached through a PTY when
/// `attach`, else by showing its log as it is written (see `logs`). A dropped connection is
/// re-established (with the forwards) until the reconnect deadline; past it, the job goes on
/// and the error says how to come back.
pub async fn follow_job(
    scene: &Scene<'_>,
    reached: &mut Reached,
    job: &Job,
    multiplexer: Multiplexer,
    attach: bool,
) -> Result<Followed> {
    let Scene {
        plan,
        machine,
        interrupt,
        printer,
        ..
    } = *scene;
    let mut forwarding = Some(open_forwards(&reached.session, plan, printer, true).await?);
    printer.info(&match attach {
        true => format!(
            "attaching to job {} ({} leaves it running)",
            job.name(),
            multiplexer.detach_keys()
        ),
        false => format!("waiting for job {} to end; its output follows", job.name()),
    });
    let mut poll = Poll::every(Duration::from_secs(5)).interruptible(interrupt);
    let (mut shown, mut showing) = (None, true);
    loop {
        let watched = match (attach, showing) {
            (true, _) => watch_attached(scene, &reached.session, job, multiplexer).await,
            (false, true) => show_unseen(scene, &reached.session, job, &mut shown)
                .await
                .map(|shows| showing = shows),
            (false, false) => Ok(()),
        };
        if interrupt.first().is_some() {
            return Ok(Followed::Detached);
        }
        let state = match watched {
            Ok(()) => job_state(&reached.session, job).await,
            Err(lost) => Err(lost),
        };
        match state {
            Ok(state) => match followed(state, attach, job, multiplexer)? {
                Some(followed) => return Ok(followed),
                // Not shown, or its log's writer is unknown: look again.
                None => {
                    poll.wait().await?;
                    continue;
                }
            },
            Err(e) if !reached.session.is_closed() => return Err(e),
            Err(_) => {}
        }
        // The connection dropped: the job goes on over there; come back to it.
        drop(forwarding.take());
        printer.warn("the connection to the instance was lost: reconnecting (the job goes on)");
        let session = reconnect_if_closed(scene, &reached.target, reached.session.clone())
            .await
            .with_context(|| {
                format!(
                    "the job goes on on {}: come back with `ssh-ec2 --attach`, or `ssh-ec2 \
                     --finish` to wait for it and bring its results home",
                    machine.head().instance.id
                )
            })?;
        reached.session = session;
        forwarding = Some(open_forwards(&reached.session, plan, printer, false).await?);
    }
}

/// What the job's state says once the view of it ended: how following it ended, or `None` to
/// go on following it (still running, not attached).
fn followed(
    state: JobState,
    attach: bool,
    job: &Job,
    multiplexer: Multiplexer,
) -> Result<Option<Followed>> {
    Ok(Some(match state {
        JobState::Running(_) if attach => Followed::Detached,
        JobState::Running(_) => return Ok(None),
        JobState::Ended(_, status) => Followed::Ended(status),
        JobState::Interrupted(_) => Followed::Interrupted,
        JobState::Lost(_) => bail!(
            "job {} ended without an exit status (its {multiplexer} session was killed, or \
             the instance restarted)",
            job.name()
        ),
        JobState::None => bail!("the record of job {} is gone", job.name()),
    }))
}

/// Attaches this terminal to the job on a cluster's node other than the head (`session`,
/// reached through the head), until the user detaches or the job ends. A dropped connection
/// is not re-established: the error says how to come back.
pub async fn attach_node(
    scene: &Scene<'_>,
    session: &Arc<Session>,
    (job, rank): (&Job, usize),
    multiplexer: Multiplexer,
) -> Result<Followed> {
    scene.printer.info(&format!(
        "attaching to job {} on node {rank} ({} leaves it running)",
        job.name(),
        multiplexer.detach_keys()
    ));
    let watched = watch_attached(scene, session, job, multiplexer).await;
    let state = match watched {
        Ok(()) => job_state(session, job).await,
        Err(lost) => Err(lost),
    };
    let come_back = || {
        format!(
            "the job goes on on node {rank} ({}): come back with `ssh-ec2 --attach --node \
             {rank}`",
            scene.machine.nodes[rank].instance.id
        )
    };
    let followed = followed(state.with_context(come_back)?, true, job, multiplexer)?;
    Ok(followed.unwrap_or(Followed::Detached))
}

/// The job's pane in this terminal, until the user detaches, the job ends, or AWS's
/// interruption notice comes (which detaches the view, as the detach keys would). The user has
/// seen its log then.
async fn watch_attached(
    scene: &Scene<'_>,
    session: &Arc<Session>,
    job: &Job,
    multiplexer: Multiplexer,
) -> Result<()> {
    let attach_line = job.attach_command(multiplexer);
    let attached = run_command(
        session,
        &attach_line,
        None,
        true,
        true,
        scene.interrupt,
        scene.printer,
    );
    tokio::pin!(attached);
    let watched = tokio::select! {
        ran = &mut attached => ran.map(drop),
        () = until_interrupted(scene.machine.head().instance.spot, async || {
            let state = job_state(session, job).await;
            matches!(state, Ok(JobState::Interrupted(_)))
        }) => {
            let detach = job.detach_command(multiplexer);
            let _ = session.run_captured(&detach).await;
            attached.await.map(drop)
        }
    };
    if watched.is_ok() {
        mark_seen(session, job, None).await;
    }
    watched
}

/// Returns once `marked` finds the spot watch's interruption mark (see `remote::spot_watch`);
/// a failed look (a dropped connection, which ends what is watched anyway) is tried again.
/// Never, but on a spot instance.
pub async fn until_interrupted(spot: bool, mut marked: impl AsyncFnMut() -> bool) {
    if !spot {
        return std::future::pending().await;
    }
    let mut poll = Poll::every(Duration::from_secs(5));
    // Without a deadline nor a signal to end it, the wait always goes on.
    while poll.wait().await.unwrap_or(true) {
        if marked().await {
            return;
        }
    }
}

/// After following a job: one that goes on keeps the instance; one that ended gives the run its
/// status, and its results come home before its record is forgotten.
pub async fn conclude_job(
    scene: &Scene<'_>,
    reached: &Reached,
    job: &Job,
    followed: Followed,
    manifest: &mut Manifest,
    progress: &mut Progress,
) -> Result<()> {
    let status = match followed {
        Followed::Detached => {
            progress.goes_on = true;
            progress.exit = Some(RemoteExit::Status(0));
            scene.printer.info(&come_back_hint(scene.machine, job));
            return Ok(());
        }
        Followed::Ended(status) => Some(status),
        Followed::Interrupted => {
            scene.printer.warn(&format!(
                "AWS is taking back spot instance {} (interruption notice): bringing home what \
                 job {} has written so far",
                scene.machine.head().instance.id,
                job.name()
            ));
            None
        }
    };
    progress.command_started = true;
    let head_failed = status != Some(0);
    // A cluster's job ends when every node's has; the first node to fail gives its status.
    let status = match finish_worker_jobs(scene, reached, job, head_failed).await? {
        Some((rank, failed)) if !head_failed => {
            scene.printer.warn(&format!(
                "job {} failed on node {rank} (exit {failed})",
                job.name()
            ));
            Some(failed)
        }
        _ => status,
    };
    progress.exit = status.map(|status| RemoteExit::Status(status as u32));
    if let Some(status) = status {
        scene.printer.info(&ended_line(status));
    }
    settle_logs(reached, job).await;
    pull_home(scene, reached, manifest, progress).await?;
    reached.session.run_captured(&job.forget_command()).await?;
    forget_worker_jobs(reached, job).await?;
    if status.is_none() {
        return Err(taken_back(
            &format!("job {}", job.name()),
            &scene.machine.head().instance.id,
        ));
    }
    Ok(())
}

/// Ends what is left of a job that still runs (`--down --force`): its wrapper ends with it, so
/// its record keeps no exit status.
pub async fn end_job(scene: &Scene<'_>, session: &Session, job: &Job) -> Result<()> {
    let what = format!("job {}", job.name());
    end_command(session, &what, |s| job.signal_command(s), scene.printer).await
}

/// The error of a run whose `what` (a job, the command) AWS cut short by taking back its spot
/// instance, once what it wrote is home.
pub fn taken_back(what: &str, id: &str) -> anyhow::Error {
    anyhow::anyhow!(
        "{what} was cut short: AWS took back spot instance {id}; what it had written is home \
         (run it again, or without --spot)"
    )
}

/// How to come back to a job that goes on.
pub fn come_back_hint(machine: &Machine, job: &Job) -> String {
    format!(
        "job {} goes on on {}: `ssh-ec2 --attach` to watch it, `ssh-ec2 --finish` to wait for \
         it, bring its results home and end the instance",
        job.name(),
        machine.head().instance.id
    )
}
