//! `ssh-ec2 --down`: this directory's instance, ended: its results come home (it is started if
//! stopped), then it is terminated with its security group and keys. Never launches; no
//! instance is no error, so it can be run again. A failed pull stops it instead, as a run does.
//! What still runs there (this directory's job, an earlier run's command whose client is gone)
//! is left alone, unless `--force` ends it first.

use std::time::Instant;

use anyhow::{Result, bail};

use crate::printer::Printer;
use crate::remote::job::{Job, JobState};
use crate::session::{
    self, Ground, Plan, Progress, Scene, Span, end_earlier, end_job, job_state, pull_home,
    reach_and_join, still_running, still_running_note,
};
use crate::ssh::RemoteExit;
use crate::state::lock::DirLock;
use crate::status::ExitStatus;
use crate::sync::Manifest;

pub async fn down(plan: &Plan, printer: &Printer, force: bool) -> Result<ExitStatus> {
    let started = Instant::now();
    let ground = Ground::open(&plan.account, &plan.dirs).await?;
    // Held until this run's lease is on the instance: a run that joins must see it.
    let lock = ground.lock(plan, printer).await?;
    let found = ground.find_to_end(plan, printer).await?;
    let Some(machine) = found else {
        printer.info(&format!(
            "this directory has no instance in {}: nothing to end",
            ground.cloud.region
        ));
        return Ok(ExitStatus::Success);
    };
    let scene = ground.scene(plan, &machine, printer);
    // Anything on it may be results not home yet: unless they come home, it is stopped.
    let mut progress = Progress {
        command_started: true,
        ..Progress::default()
    };
    let work = work(&scene, lock, force, &mut progress).await;
    session::end_of_run(&scene, work, progress, Span::life(&machine, started)).await
}

async fn work(
    scene: &Scene<'_>,
    lock: DirLock,
    force: bool,
    progress: &mut Progress,
) -> Result<()> {
    let reached = reach_and_join(scene, lock, progress, false).await?;
    let id = &scene.machine.head().instance.id;
    let job = Job::for_dir(&scene.plan.local_dir);
    let job_runs = job_state(&reached.session, &job).await?;
    match (force, &job_runs, still_running(&progress.earlier)) {
        (true, JobState::Running(_), _) => end_job(scene, &reached.session, &job).await?,
        (false, JobState::Running(multiplexer), _) => {
            // Ending the instance would kill it: it is left as it is.
            progress.goes_on = true;
            bail!(
                "job {} of this directory still runs (in {multiplexer}) on {id}: `ssh-ec2 \
                 --finish` waits for it, brings its results home and ends the instance; \
                 `ssh-ec2 --down --force` ends the job first",
                job.name()
            );
        }
        (false, _, Some(command)) => {
            progress.goes_on = true;
            bail!(
                "{} on {id}: `ssh-ec2 --finish` waits for it, brings its results home and ends \
                 the instance; `ssh-ec2 --down --force` ends that command first",
                still_running_note(command)
            );
        }
        _ => {}
    }
    end_earlier(scene, &reached.session, progress).await?;
    let mut manifest = Manifest::load(&scene.store.manifest_path(id));
    pull_home(scene, &reached, &mut manifest, progress).await?;
    // Not done while results may be there only (--no-rsync after a pull that did not complete).
    progress.exit = progress.results_home.then_some(RemoteExit::Status(0));
    Ok(())
}
