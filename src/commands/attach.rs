//! `ssh-ec2 --attach`: this directory's job, live, in this terminal. No sync, no end of life;
//! detaching leaves everything running.

use anyhow::{Result, bail};

use crate::printer::Printer;
use crate::remote::job::{Job, JobState};
use crate::session::{Followed, Ground, Plan, come_back_hint, follow_job, job_state, reach};
use crate::status::ExitStatus;

pub async fn attach(plan: &Plan, printer: &Printer) -> Result<ExitStatus> {
    if !plan.terminal.pty {
        bail!(
            "--attach needs a terminal (stdin and stdout): from a script, `ssh-ec2 --finish \
             --no-attach` waits for the job instead"
        );
    }
    let ground = Ground::open(&plan.account, &plan.dirs).await?;
    // Never launches, and leaves a stopped instance stopped: no job runs there.
    let machine = ground.find(plan, printer, false).await?;
    let scene = ground.scene(plan, &machine, printer);
    let mut reached = reach(&scene).await?;
    let job = Job::for_dir(&plan.local_dir);
    let multiplexer = match job_state(&reached.session, &job).await? {
        JobState::Running(multiplexer) => multiplexer,
        JobState::None => bail!(
            "no job of this directory on {}: `ssh-ec2 --detach COMMAND` starts one",
            machine.instance.id
        ),
        JobState::Ended(_, status) => return Ok(ended(&job, status, printer)),
        JobState::Interrupted(_) => bail!(interrupted(&job, &machine.instance.id)),
        JobState::Lost(multiplexer) => bail!(
            "job {} ended without an exit status (its {multiplexer} session is gone): \
             `ssh-ec2 --finish` brings its results home",
            job.name()
        ),
    };
    let followed = follow_job(&scene, &mut reached, &job, multiplexer, true).await?;
    reached.session.close().await;
    Ok(match followed {
        Followed::Ended(status) => ended(&job, status, printer),
        Followed::Interrupted => bail!(interrupted(&job, &machine.instance.id)),
        Followed::Detached => {
            printer.info(&come_back_hint(&machine, &job));
            ExitStatus::Success
        }
    })
}

fn interrupted(job: &Job, id: &str) -> String {
    format!(
        "job {} is cut short: AWS is taking back spot instance {id} (interruption notice); \
         `ssh-ec2 --finish` now brings home what it has written",
        job.name()
    )
}

fn ended(job: &Job, status: i32, printer: &Printer) -> ExitStatus {
    printer.info(&format!(
        "job {} has ended with exit status {status}: `ssh-ec2 --finish` brings its results home \
         and ends the instance",
        job.name()
    ));
    u32::try_from(status).map_or(ExitStatus::Failed, ExitStatus::remote)
}
