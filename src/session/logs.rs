//! A job's log, shown here without attaching: what the job printed since the user last saw it,
//! followed while the job runs (`--finish`, and a `--multi` run, without a terminal), or whole
//! (`--logs`); how much of it the user has seen, kept in the job's record on the instance
//! (attaching counts as seeing it all); and the log made complete before it is pulled home.

use std::path::Path;

use anyhow::{Context, Result, bail};

use super::Scene;
use super::job::{job_state, until_interrupted};
use super::output::stream_log;
use super::reach::Reached;
use crate::interrupt::Interrupted;
use crate::printer::Printer;
use crate::remote::job::{Job, JobState, Multiplexer};
use crate::remote::logs::LogName;
use crate::ssh::Session;
use crate::status::ExitStatus;

/// How many bytes of the job's log the user has seen.
async fn seen(session: &Session, job: &Job) -> Result<u64> {
    let answer = session.run_captured(&job.seen_command()).await?;
    let line = answer.lines().last().unwrap_or_default();
    line.trim()
        .parse()
        .with_context(|| format!("cannot read how much of job {}'s log was seen", job.name()))
}

/// Records that the user has seen `bytes` of the log (`None`: all of it); a failure only means
/// the next `--finish` shows some of it again.
pub async fn mark_seen(session: &Session, job: &Job, bytes: Option<u64>) {
    if let Err(e) = session.run_captured(&job.mark_seen_command(bytes)).await {
        tracing::debug!(
            "what was seen of job {}'s log is not recorded: {e:#}",
            job.name()
        );
    }
}

/// Streams the log from `*at`, following it while the job runs when `follow`, until what
/// writes it is done; a signal ends it (`Interrupted`), and so does AWS's interruption notice
/// (`Ok`). `false`: the job has no log.
async fn stream(
    scene: &Scene<'_>,
    session: &Session,
    job: &Job,
    (at, follow): (&mut u64, bool),
    emit: &mut impl FnMut(&[u8]) -> Result<()>,
) -> Result<bool> {
    let streaming = stream_log(session, job, at, follow, emit);
    let notice = until_interrupted(scene.machine.head().instance.spot, async || {
        matches!(job_state(session, job).await, Ok(JobState::Interrupted(_)))
    });
    let watched = async {
        tokio::select! {
            streamed = streaming => streamed,
            () = notice => Ok(true),
        }
    };
    scene.interrupt.cancel(watched).await
}

/// Shows on stdout what the job printed since the user last saw it, following it while the job
/// runs (see `stream`). `shown`: how far the showing got, kept across reconnections (`None`:
/// from what the user saw). A closed stdout ends the showing, not the wait. `false`: it cannot
/// be shown (said, but for a job without a log): the caller waits for the job without it.
/// Fails only on a signal or a lost connection.
pub async fn show_unseen(
    scene: &Scene<'_>,
    session: &Session,
    job: &Job,
    shown: &mut Option<u64>,
) -> Result<bool> {
    let mut at = *shown;
    let showing = async {
        let at = at.insert(match *shown {
            Some(at) => at,
            None => seen(session, job).await?,
        });
        let mut open = true;
        let mut emit = |data: &[u8]| {
            open = open && scene.printer.out(data).is_ok();
            Ok(())
        };
        stream(scene, session, job, (at, true), &mut emit).await
    };
    let streamed = showing.await;
    *shown = at;
    if let (Some(at), false) = (at, session.is_closed()) {
        mark_seen(session, job, Some(at)).await;
    }
    match streamed {
        Err(e) if !session.is_closed() && !e.is::<Interrupted>() => {
            scene.printer.warn(&format!(
                "cannot show what job {} prints ({e:#}): waiting for it without",
                job.name()
            ));
            Ok(false)
        }
        streamed => streamed,
    }
}

/// `--logs`: prints the log of the job on `session` (node `rank`) whole, following it while the
/// job runs with `follow`, then how the job stands: once it ended, its exit status is the
/// status.
pub async fn print_log(
    scene: &Scene<'_>,
    session: &Session,
    job: &Job,
    rank: usize,
    follow: bool,
) -> Result<ExitStatus> {
    let id = &scene.machine.nodes[rank].instance.id;
    let state = job_state(session, job).await?;
    if state == JobState::None {
        bail!(no_job(scene, rank));
    }
    let mut at = 0;
    let follow = follow && matches!(state, JobState::Running(_));
    let mut emit = |data: &[u8]| scene.printer.out(data);
    let streamed = stream(scene, session, job, (&mut at, follow), &mut emit).await;
    mark_seen(session, job, Some(at)).await;
    if !streamed? {
        bail!(
            "job {} on {id} has no log (an earlier ssh-ec2 started it): `ssh-ec2 --attach` \
             watches it",
            job.name()
        );
    }
    match job_state(session, job).await? {
        JobState::Running(_) | JobState::None => Ok(ExitStatus::Success),
        JobState::Ended(_, status) => Ok(job_ended(status, scene.printer)),
        JobState::Interrupted(_) => bail!(cut_short(job, &scene.machine.head().instance.id)),
        JobState::Lost(multiplexer) => bail!(lost(job, multiplexer)),
    }
}

/// The job ended, but nothing recorded its status.
pub fn lost(job: &Job, multiplexer: Multiplexer) -> String {
    format!(
        "job {} ended without an exit status (its {multiplexer} session is gone): `ssh-ec2 \
         --finish` brings its results home",
        job.name()
    )
}

/// Why there is no job to show on node `rank`, and where the last one's log is, if it is home.
fn no_job(scene: &Scene<'_>, rank: usize) -> String {
    let id = &scene.machine.nodes[rank].instance.id;
    let home = match home_log(&scene.plan.local_dir, rank) {
        Some(log) => format!("; the log of the last one came home: {log}"),
        None => String::new(),
    };
    format!("no job of this directory on {id}: `ssh-ec2 --detach COMMAND` starts one{home}")
}

/// The log of this directory's last job on node `rank`, if it came home: on one instance, or
/// on a cluster.
pub fn home_log(local_dir: &Path, rank: usize) -> Option<String> {
    let one = (rank == 0).then(|| LogName::job(0, 1));
    (one.into_iter().chain([LogName::job(rank, 2)]))
        .map(|name| name.path(""))
        .find(|log| local_dir.join(log).is_file())
}

/// The line that says how the job ended.
pub fn ended_line(status: i32) -> String {
    format!("job ended (exit {status})")
}

/// Says that the job ended (with its status), and what brings its results home; its status.
pub fn job_ended(status: i32, printer: &Printer) -> ExitStatus {
    printer.info(&format!(
        "{}: `ssh-ec2 --finish` brings its results home and ends the instance",
        ended_line(status)
    ));
    u32::try_from(status).map_or(ExitStatus::Failed, ExitStatus::remote)
}

/// The job will not end by itself: AWS is taking its spot instance back.
pub fn cut_short(job: &Job, id: &str) -> String {
    format!(
        "job {} is cut short: AWS is taking back spot instance {id} (interruption notice); \
         `ssh-ec2 --finish` now brings home what it has written",
        job.name()
    )
}

/// Waits (briefly) until every node's log of the job is complete: the last output of a job may
/// still be on its way from its pane when its exit status is recorded.
pub async fn settle_logs(reached: &Reached, job: &Job) {
    let workers = reached.workers.iter().map(|worker| &*worker.session);
    for session in std::iter::once(&*reached.session).chain(workers) {
        if let Err(e) = session.run_captured(&job.settle_log_command()).await {
            tracing::debug!("job {}'s log may not be complete: {e:#}", job.name());
        }
    }
}
