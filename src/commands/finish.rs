//! `ssh-ec2 --finish`: wait for this directory's job to end (attached on a terminal, else
//! showing what it prints), and for the commands of earlier runs whose clients are gone, bring
//! the results home, apply the end of life; the job's exit status. Also after a killed client.

use std::time::Instant;

use anyhow::{Result, bail};

use crate::printer::Printer;
use crate::remote::job::{Job, JobState};
use crate::session::{
    self, Followed, Ground, Plan, Progress, Scene, Span, conclude_job, follow_job, job_state,
    pull_home, reach_and_join, show_unseen, wait_for_earlier,
};
use crate::state::lock::DirLock;
use crate::status::ExitStatus;
use crate::sync::Manifest;

pub async fn finish(plan: &Plan, printer: &Printer, attach: bool) -> Result<ExitStatus> {
    let started = Instant::now();
    let ground = Ground::open(&plan.account, &plan.dirs).await?;
    // Held until this run's lease is on the instance: a run that joins must see it.
    let lock = ground.lock(plan, printer).await?;
    // Never launches; a stopped instance is started to bring its results home.
    let machine = ground.find(plan, printer, true).await?;
    let scene = ground.scene(plan, &machine, printer);
    let mut progress = Progress::default();
    let attach = attach && plan.terminal.pty;
    let work = work(&scene, attach, lock, &mut progress).await;
    session::end_of_run(&scene, work, progress, Span::life(&machine, started)).await
}

async fn work(
    scene: &Scene<'_>,
    attach: bool,
    lock: DirLock,
    progress: &mut Progress,
) -> Result<()> {
    let Scene {
        store,
        machine,
        printer,
        ..
    } = *scene;
    let mut reached = reach_and_join(scene, lock, progress, false).await?;
    let job = Job::for_dir(&scene.plan.local_dir);
    let state = job_state(&reached.session, &job).await?;
    if !matches!(state, JobState::None | JobState::Running(_)) {
        // Nothing to attach to: what it printed since the user last saw it.
        show_unseen(scene, &reached.session, &job, &mut None).await?;
    }
    let followed = match state {
        JobState::None if progress.earlier.is_empty() => bail!(
            "no job of this directory on {}, and no command of an earlier run: nothing to \
             finish (`ssh-ec2 --detach COMMAND` starts one)",
            machine.head().instance.id
        ),
        JobState::None => None,
        JobState::Ended(_, status) => Some(Followed::Ended(status)),
        JobState::Interrupted(_) => Some(Followed::Interrupted),
        JobState::Lost(multiplexer) => {
            printer.warn(&format!(
                "job {} ended without an exit status (its {multiplexer} session is gone): \
                 bringing home what it left",
                job.name()
            ));
            Some(Followed::Ended(255))
        }
        JobState::Running(multiplexer) => {
            // From here on, results of the job may be on the instance only.
            progress.command_started = true;
            let followed = follow_job(scene, &mut reached, &job, multiplexer, attach).await;
            progress.reached(&reached);
            Some(followed?)
        }
    };
    let mut manifest = Manifest::load(&store.manifest_path(&machine.head().instance.id));
    // A job that goes on, or a spot instance being taken back, waits for nothing more.
    let goes_on = matches!(followed, Some(Followed::Detached | Followed::Interrupted));
    if !goes_on && !wait_for_earlier(scene, &mut reached, progress).await? {
        return Ok(());
    }
    if let Some(followed) = followed {
        return conclude_job(scene, &reached, &job, followed, &mut manifest, progress).await;
    }
    progress.command_started = true;
    pull_home(scene, &reached, &mut manifest, progress).await?;
    bail!(
        "the command of an earlier run has ended and its results are home, but its exit status \
         is unknown: no ssh-ec2 was connected to it when it ended"
    )
}
