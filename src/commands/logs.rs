//! `ssh-ec2 --logs [-f] [--node K]`: this directory's job's log, printed without attaching,
//! from any terminal or a pipe; `-f` follows it until the job ends. No sync, no end of life;
//! a stopped instance stays stopped.

use anyhow::Result;

use crate::printer::Printer;
use crate::remote::job::Job;
use crate::session::{Ground, Plan, home_log, print_log, reach};
use crate::status::ExitStatus;

pub async fn logs(plan: &Plan, printer: &Printer, follow: bool, node: usize) -> Result<ExitStatus> {
    let ground = Ground::open(&plan.account, &plan.dirs).await?;
    let machine = match ground.find(plan, printer, false).await {
        Ok(machine) => machine,
        Err(e) => match home_log(&plan.local_dir, node) {
            Some(log) => return Err(e.context(format!("the log of the last job came home: {log}"))),
            None => return Err(e),
        },
    };
    let scene = ground.scene(plan, &machine, printer);
    let reached = reach(&scene).await?;
    let job = Job::for_dir(&plan.local_dir);
    let status = print_log(&scene, reached.node(node)?, &job, node, follow).await;
    reached.session.close().await;
    status
}
