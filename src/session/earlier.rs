//! The commands of earlier runs of this directory whose clients are gone (killed, a closed lid)
//! but which may still run on the instance (see `remote::runs`): `--finish` waits for them,
//! `--down --force` ends them, and once one has ended, the next final pull brings its results
//! home and forgets its record. Meanwhile no run ends the instance under them (`end`).

use std::time::Duration;

use anyhow::Result;

use super::Scene;
use super::progress::Progress;
use super::reach::{Reached, reconnect_if_closed};
use super::run::end_command;
use crate::poll::Poll;
use crate::remote::job::Job;
use crate::remote::runs::{self, Earlier, since};
use crate::ssh::Session;

/// The first command of an earlier run that still runs, if any.
pub fn still_running(earlier: &[Earlier]) -> Option<&Earlier> {
    earlier.iter().find(|command| command.running)
}

/// What is said of it wherever it keeps the instance as it is.
pub fn still_running_note(command: &Earlier) -> String {
    format!(
        "a command from an earlier run is still running (since {})",
        since(command)
    )
}

/// Waits while a command of an earlier run still runs (a dropped connection is made again);
/// `false`: a signal came first, and it goes on.
pub async fn wait_for_earlier(
    scene: &Scene<'_>,
    reached: &mut Reached,
    progress: &mut Progress,
) -> Result<bool> {
    let Some(first) = still_running(&progress.earlier) else {
        return Ok(true);
    };
    // From here on, its results may be on the instance only.
    progress.command_started = true;
    scene.printer.info(&format!(
        "{}: waiting for it to end",
        still_running_note(first)
    ));
    let job = Job::for_dir(&scene.plan.local_dir);
    let mut poll = Poll::every(Duration::from_secs(5)).interruptible(scene.interrupt);
    loop {
        if poll.wait().await.is_err() {
            progress.goes_on = true;
            scene.printer.info(&format!(
                "the command of the earlier run goes on on {}: `ssh-ec2 --finish` waits for it \
                 again",
                scene.machine.head().instance.id
            ));
            return Ok(false);
        }
        match list(&reached.session, &job).await {
            Ok(listed) if still_running(&listed).is_none() => {
                progress.earlier = listed;
                return Ok(true);
            }
            Ok(_) => {}
            Err(e) if !reached.session.is_closed() => return Err(e),
            Err(_) => {
                let session = reached.session.clone();
                reached.session = reconnect_if_closed(scene, &reached.target, session).await?;
                progress.reached(reached);
            }
        }
    }
}

/// Ends what still runs of the commands of earlier runs (for `--down --force`).
pub async fn end_earlier(
    scene: &Scene<'_>,
    session: &Session,
    progress: &mut Progress,
) -> Result<()> {
    for command in progress.earlier.iter_mut().filter(|c| c.running) {
        let what = format!("the command of an earlier run (since {})", since(command));
        let record = &command.record;
        end_command(session, &what, |s| record.signal_command(s), scene.printer).await?;
        command.running = false;
    }
    Ok(())
}

/// Once a final pull is over, forgets the records of the earlier runs' commands that had
/// ended before it: what they wrote is home.
pub async fn forget_ended(session: &Session, progress: &mut Progress) {
    let (ended, running) = std::mem::take(&mut progress.earlier)
        .into_iter()
        .partition::<Vec<_>, _>(|command| !command.running);
    progress.earlier = running;
    if ended.is_empty() {
        return;
    }
    let forget: Vec<String> = ended.iter().map(|c| c.record.cleanup_command()).collect();
    if let Err(e) = session.run_captured(&forget.join("; ")).await {
        tracing::debug!("leaving the records of earlier runs' commands: {e:#}");
    }
}

async fn list(session: &Session, job: &Job) -> Result<Vec<Earlier>> {
    let answer = session
        .run_captured(&runs::earlier_command(job.name()))
        .await?;
    Ok(runs::parse_earlier(job.name(), &answer))
}
