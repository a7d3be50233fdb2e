//! The instance's fate once the run is over: terminated (and its security group and keys
//! removed), stopped (the next run in this directory starts it again), or left running.

use std::time::Duration;

use anyhow::{Context, Result};

use crate::cloud::{Cloud, Instance, State};
use crate::config::EndOfLife;
use crate::keys::KeyStore;
use crate::printer::Printer;

/// Stopping a GPU instance can take minutes; past this it is stuck.
const TRANSITION_TIMEOUT: Duration = Duration::from_secs(900);

pub async fn apply(
    cloud: &Cloud,
    store: &KeyStore,
    instance: &Instance,
    action: EndOfLife,
    printer: Printer,
) -> Result<()> {
    let id = &instance.id;
    match action {
        EndOfLife::Terminate => {
            let phase = printer.phase(format!("terminating {id}"));
            cloud.terminate(id).await?;
            cloud
                .wait_until(id, State::Terminated, TRANSITION_TIMEOUT)
                .await?;
            if let Some(group) = &instance.security_group {
                phase.update(format!("deleting security group {group}"));
                cloud.delete_ssh_group(group).await?;
            }
            store.forget(id);
            phase.done(format!("terminated {id}"));
        }
        EndOfLife::Stop => {
            let phase = printer.phase(format!("stopping {id}"));
            cloud.stop(id).await?;
            cloud
                .wait_until(id, State::Stopped, TRANSITION_TIMEOUT)
                .await
                .context("it may still be stopping; check the EC2 console")?;
            phase.done(format!("stopped {id}; run ssh-ec2 here again to start it"));
        }
        EndOfLife::Leave => {
            printer.info(&format!(
                "{id} is left running (and billed): run ssh-ec2 here again to reuse it; end it \
                 with `ssh-ec2 --terminate true` here or `aws ec2 terminate-instances \
                 --instance-ids {id}`"
            ));
        }
    }
    Ok(())
}
