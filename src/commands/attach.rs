//! `ssh-ec2 --attach [--node K]`: this directory's job, live, in this terminal (on node K of a
//! cluster, through the head). No sync, no end of life; detaching leaves everything running.

use anyhow::{Result, bail};

use crate::printer::Printer;
use crate::remote::job::{Job, JobState};
use crate::session::{
    Followed, Ground, Plan, attach_node, come_back_hint, cut_short, follow_job, job_ended,
    job_state, lost, reach,
};
use crate::status::ExitStatus;

pub async fn attach(plan: &Plan, printer: &Printer, node: usize) -> Result<ExitStatus> {
    if !plan.terminal.pty {
        bail!(
            "--attach needs a terminal (stdin and stdout): from a script, `ssh-ec2 --logs -f` \
             prints the job's output as it comes, and `ssh-ec2 --finish --no-attach` waits for \
             it and brings its results home"
        );
    }
    let ground = Ground::open(&plan.account, &plan.dirs).await?;
    // Never launches, and leaves a stopped instance stopped: no job runs there.
    let machine = ground.find(plan, printer, false).await?;
    let scene = ground.scene(plan, &machine, printer);
    let mut reached = reach(&scene).await?;
    let session = reached.node(node)?.clone();
    let id = &machine.nodes[node].instance.id;
    let job = Job::for_dir(&plan.local_dir);
    let multiplexer = match job_state(&session, &job).await? {
        JobState::Running(multiplexer) => multiplexer,
        JobState::None => {
            bail!("no job of this directory on {id}: `ssh-ec2 --detach COMMAND` starts one")
        }
        JobState::Ended(_, status) => return Ok(job_ended(status, printer)),
        JobState::Interrupted(_) => bail!(cut_short(&job, &machine.head().instance.id)),
        JobState::Lost(multiplexer) => bail!(lost(&job, multiplexer)),
    };
    let followed = match node {
        0 => follow_job(&scene, &mut reached, &job, multiplexer, true).await,
        _ => attach_node(&scene, &session, (&job, node), multiplexer).await,
    };
    reached.session.close().await;
    Ok(match followed? {
        Followed::Ended(status) => job_ended(status, printer),
        Followed::Interrupted => bail!(cut_short(&job, &machine.head().instance.id)),
        Followed::Detached if node > 0 => {
            printer.info(&format!(
                "job {} goes on on node {node}: `ssh-ec2 --attach --node {node}` to watch it \
                 again, `ssh-ec2 --finish` to wait for it",
                job.name()
            ));
            ExitStatus::Success
        }
        Followed::Detached => {
            printer.info(&come_back_hint(&machine, &job));
            ExitStatus::Success
        }
    })
}
