//! `ssh-ec2 [COMMAND]` and `ssh-ec2 --detach COMMAND`: acquire this directory's instance,
//! connect, sync up, run the command (directly, or as a job in tmux/screen), pull results
//! back, then apply the end-of-life policy. Results come home before anything is terminated;
//! an instance whose results could not come home is stopped, not terminated.

use std::time::Instant;

use anyhow::Result;

use crate::printer::Printer;
use crate::session::{self, Ground, Plan, Progress, Span};
use crate::status::ExitStatus;

pub async fn run(plan: &Plan, printer: &Printer, detach: bool) -> Result<ExitStatus> {
    let started = Instant::now();
    let ground = Ground::open(&plan.account, &plan.dirs).await?;
    // Held until this run's lease is on the instance: a run that joins must see it.
    let lock = ground.lock(plan, printer).await?;
    tracing::debug!(
        "run in {}: {}, image {:?}, remote dir {}, end of life {:?}, pty {}",
        ground.cloud.region,
        plan.machine.launch.instance_type,
        plan.machine.launch.image,
        plan.remote_dir,
        plan.machine.end_of_life,
        plan.terminal.pty
    );
    let machine = ground.acquire(plan, printer).await?;
    let scene = ground.scene(plan, &machine, printer);
    let mut progress = Progress::default();
    let work = session::run(&scene, detach, lock, &mut progress).await;
    session::end_of_run(&scene, work, progress, Span::Run(started)).await
}
