//! `ssh-ec2 [COMMAND]` and `ssh-ec2 --detach COMMAND`: acquire this directory's instance,
//! connect, sync up, run the command (directly, or as a job in tmux/screen), pull results
//! back, then apply the end-of-life policy. Results come home before anything is terminated;
//! an instance whose results could not come home is stopped, not terminated.

use std::time::{Duration, Instant};

use anyhow::{Result, bail};

use super::{
    Followed, Ground, NoteSignals, Progress, Reached, Scene, conclude_job, end_of_run, follow_job,
    job_state, pull_results, reach_and_join, reconnect_if_closed, rsync, until_interrupted,
};
use crate::backoff::Backoff;
use crate::config::Multiplex;
use crate::fleet::end_of_life::Origin;
use crate::lock::DirLock;
use crate::plan::Plan;
use crate::printer::Printer;
use crate::remote::RunRecord;
use crate::remote::job::{Job, JobState, Multiplexer};
use crate::ssh::{RemoteExit, Session, run_command};
use crate::sync::Manifest;

pub async fn run(plan: &Plan, printer: &Printer, detach: bool) -> Result<i32> {
    let started = Instant::now();
    let ground = Ground::open(plan).await?;
    // Held until this run's lease is on the instance: a run that joins must see it.
    let lock = ground.lock(plan, printer).await?;
    tracing::debug!(
        "run in {}: {}, image {:?}, remote dir {}, end of life {:?}, pty {}",
        ground.cloud.region,
        plan.launch.instance_type,
        plan.launch.image,
        plan.remote_dir,
        plan.end_of_life,
        plan.pty
    );
    let machine = ground.acquire(plan, printer).await?;
    let scene = ground.scene(plan, &machine, printer);
    let mut progress = Progress::default();
    let work = work(&scene, detach, lock, &mut progress).await;
    end_of_run(&scene, work, progress, started).await
}

/// Connect, sync up, run, pull back. `progress` records how far it got, even on error.
async fn work(
    scene: &Scene<'_>,
    detach: bool,
    lock: DirLock,
    progress: &mut Progress,
) -> Result<()> {
    let Scene {
        plan,
        store,
        machine,
        interrupt,
        printer,
        ..
    } = *scene;
    let mut reached = reach_and_join(scene, lock, progress).await?;
    let job = Job::for_dir(&plan.local_dir);
    // Checked before anything is synced: a job needs its multiplexer, and one at a time.
    let multiplexer = match job_multiplexer(plan, detach) {
        None => None,
        Some(wanted) => Some(choose_multiplexer(&reached.session, wanted, &job).await?),
    };

    let id = &machine.instance.id;
    let mut manifest = Manifest::load(&store.manifest_path(id));
    if let Some(sync) = &plan.sync {
        if let Some(warning) = crate::sync::outdated_warning(sync.version, &plan.state_dir) {
            printer.warn(&warning);
        }
        let rsync = rsync(plan, &reached.session, &reached.remote_dir, printer, id)?;
        if machine.origin != Origin::Launched {
            // An earlier run's results may still be only there: home first, so that the push
            // cannot overwrite them.
            let phase = printer.phase(format!(
                "bringing home what changed in {} since the last sync",
                plan.remote_dir
            ));
            interrupt
                .cancel(rsync.pull(&mut manifest, &mut progress.conflicts))
                .await?;
            phase.done("up to date with the instance");
        }
        let phase = printer.phase(format!("syncing this directory to {}", plan.remote_dir));
        interrupt.cancel(rsync.push(&mut manifest)).await?;
        phase.done(format!("synced to {}", plan.remote_dir));
    }

    let command = plan.command.as_deref();
    progress.command_started = true;
    printer.info(&match command {
        Some(command) => format!("running `{command}` in {}", plan.remote_dir),
        None => format!("opening a shell in {}", plan.remote_dir),
    });
    let Some(multiplexer) = multiplexer else {
        return run_directly(scene, reached, &mut manifest, progress).await;
    };
    let size = crossterm::terminal::size().unwrap_or((80, 24));
    let login_shell = "exec \"${SHELL:-/bin/sh}\" -l";
    reached
        .session
        .run_captured(&job.start_command(
            multiplexer,
            &reached.remote_dir,
            command.unwrap_or(login_shell),
            size,
        ))
        .await?;
    printer.info(&format!(
        "started job {} in {multiplexer} on {id}",
        job.name()
    ));
    let followed = match detach {
        true => Followed::Detached,
        false => {
            let followed = follow_job(scene, &mut reached, &job, multiplexer, plan.pty).await;
            progress.session = Some(reached.session.clone());
            followed?
        }
    };
    conclude_job(scene, &reached, &job, followed, &mut manifest, progress).await
}

/// The multiplexer the run asks for: none for a foreground run unless set, tmux (else screen)
/// for --detach.
fn job_multiplexer(plan: &Plan, detach: bool) -> Option<Option<Multiplexer>> {
    match (plan.multiplex, detach) {
        (Some(Multiplex::Tmux), _) => Some(Some(Multiplexer::Tmux)),
        (Some(Multiplex::Screen), _) => Some(Some(Multiplexer::Screen)),
        (_, true) => Some(None),
        (_, false) => None,
    }
}

/// The multiplexer to run the job in (`None` asked: tmux, else screen), refusing when the
/// instance lacks it or when this directory's job still runs.
async fn choose_multiplexer(
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

/// The command without a multiplexer, streamed over the session like `ssh host command`.
#[allow(clippy::too_many_arguments)]
async fn run_directly(
    scene: &Scene<'_>,
    mut reached: Reached,
    manifest: &mut Manifest,
    progress: &mut Progress,
) -> Result<()> {
    let Scene {
        plan,
        machine,
        interrupt,
        printer,
        ..
    } = *scene;
    let forwarding = super::open_forwards(&reached.session, plan, printer, true).await?;
    let record = RunRecord::new();
    // Without a PTY, stdout is a pipe that `| head` may close: it goes through the record.
    let relay_stdout = !plan.pty;
    let cut_output = record.cut_output_command();
    let command_line =
        record.command_line(&reached.remote_dir, plan.command.as_deref(), relay_stdout);
    let id = &machine.instance.id;
    let (ran, spot_notice) = {
        let session = &reached.session;
        let ran = run_command(
            session,
            &command_line,
            relay_stdout.then_some(cut_output.as_str()),
            plan.pty,
            plan.forward_stdin,
            interrupt,
            printer,
        );
        tokio::pin!(ran);
        // On AWS's notice the instance has about two minutes left: the command is ended now,
        // so that what it has written comes home before AWS takes the instance back.
        tokio::select! {
            ran = &mut ran => (ran, false),
            () = until_interrupted(machine.instance.spot, async || {
                let answer = session.run_captured(&record.interrupted_command()).await;
                answer.is_ok_and(|answer| answer.trim() == "interrupted")
            }) => {
                printer.warn(&format!(
                    "AWS is taking back spot instance {id} (interruption notice): ending the \
                     command to bring home what it has written so far"
                ));
                if let Err(e) = end_command(session, &record, printer).await {
                    printer.warn(&format!("{e:#}"));
                }
                (ran.await, true)
            }
        }
    };
    drop(forwarding);
    let _notes = NoteSignals::start(interrupt, printer);
    let after_command = interrupt.only_new();
    if let Ok(RemoteExit::Signal(signal)) = &ran {
        printer.warn(&format!("the remote command was killed by signal {signal}"));
    }
    progress.exit = ran.as_ref().ok().cloned();

    // The pull starts only once the command is known to have ended: after a hang-up or a lost
    // connection, what is left of it is ended first, so that nothing still writes.
    let after = async {
        let session = reconnect_if_closed(scene, &reached.target, reached.session.clone()).await?;
        if ran.is_err() {
            end_command(&session, &record, printer).await?;
        }
        Ok::<_, anyhow::Error>(session)
    };
    reached.session = match (after.await, &ran) {
        (Ok(session), _) => session,
        (Err(e), Err(lost)) => return Err(e.context(format!("{lost:#}"))),
        (Err(e), Ok(_)) => return Err(e),
    };
    progress.session = Some(reached.session.clone());
    let pulled = pull_results(scene, &reached, manifest, progress, &after_command).await;
    if let Err(e) = reached
        .session
        .run_captured(&record.cleanup_command())
        .await
    {
        tracing::debug!("leaving the run's record on the instance: {e:#}");
    }
    progress.results_home = pulled.is_ok();
    ran?;
    pulled?;
    if spot_notice {
        return Err(super::taken_back("the command", id));
    }
    Ok(())
}

/// Ends what is left of the command (its whole process group: SIGTERM, then SIGKILL) and
/// waits until nothing of it runs.
async fn end_command(session: &Session, record: &RunRecord, printer: &Printer) -> Result<()> {
    let phase = printer.phase("ending what is left of the remote command before the pull");
    let started = Instant::now();
    let mut backoff = Backoff::new(Duration::from_secs(1));
    let mut signal = "TERM";
    loop {
        let answer = session.run_captured(&record.signal_command(signal)).await?;
        if answer.lines().last() != Some("alive") {
            phase.done("the remote command has ended");
            return Ok(());
        }
        signal = match started.elapsed() {
            waited if waited >= END_TIMEOUT => bail!(
                "the remote command still runs after SIGKILL: its results cannot be pulled safely"
            ),
            waited if waited >= KILL_AFTER => "KILL",
            _ => "0",
        };
        tokio::time::sleep(backoff.next_delay()).await;
    }
}

/// How long a command has to end on SIGTERM before SIGKILL, and to be gone after that.
const KILL_AFTER: Duration = Duration::from_secs(10);
const END_TIMEOUT: Duration = Duration::from_secs(30);
