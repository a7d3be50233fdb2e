//! The instance's fate once the run is over: terminated (and its security group and keys
//! removed), stopped (the next run in this directory starts it again), or left running.

use std::time::{Duration, Instant};

use anyhow::{Context, Result};

use crate::cloud::{Cloud, Instance, State};
use crate::printer::Printer;
use crate::settings::values::EndOfLife;
use crate::state::Store;

/// Where the run's instance came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    /// Launched by this run: nothing of the user's lives only on it before the command runs.
    Launched,
    /// Reused, and running (or pending) when found.
    FoundRunning,
    /// Reused, and stopped (or stopping) when found.
    FoundStopped,
}

/// The end of life to apply: the policy, unless terminating could lose results that are not
/// home; then the instance is stopped (or left as it was found), with a warning saying why.
pub fn safe_action(
    policy: EndOfLife,
    origin: Origin,
    command_started: bool,
    results_home: bool,
) -> (EndOfLife, Option<&'static str>) {
    if policy != EndOfLife::Terminate || results_home {
        return (policy, None);
    }
    match (origin, command_started) {
        (Origin::Launched, false) => (EndOfLife::Terminate, None),
        (_, true) => (
            EndOfLife::Stop,
            Some(
                "its results may not have come home: stopping it instead of terminating it; run \
                 `ssh-ec2 true` in this directory to start it, pull them back and terminate it",
            ),
        ),
        (Origin::FoundRunning, false) => (
            EndOfLife::Leave,
            Some("it may hold results of an earlier run: leaving it running, as it was found"),
        ),
        (Origin::FoundStopped, false) => (
            EndOfLife::Stop,
            Some("it may hold results of an earlier run: stopping it again, as it was found"),
        ),
    }
}

/// A one-time spot instance cannot be stopped: where stopping was the safe end of life, it is
/// left running instead (its dead-man switch ends it later), with the reason.
pub fn for_spot(spot: bool, action: EndOfLife, why: Option<String>) -> (EndOfLife, Option<String>) {
    if !spot || action != EndOfLife::Stop {
        return (action, why);
    }
    let why = why.map_or(String::new(), |why| format!("{why}; but "));
    (
        EndOfLife::Leave,
        Some(format!(
            "{why}a spot instance cannot be stopped: leaving it running; `ssh-ec2 true` here \
             brings its results home (its dead-man switch terminates it when it ends itself)"
        )),
    )
}

/// Stopping a GPU instance can take minutes; past this it is stuck.
pub const TRANSITION_TIMEOUT: Duration = Duration::from_secs(900);

pub async fn apply(
    cloud: &Cloud,
    store: &Store,
    instance: &Instance,
    action: EndOfLife,
    printer: &Printer,
) -> Result<()> {
    match end(cloud, store, instance, action, printer).await {
        Err(e) => Err(cloud.explain_denial(e).await),
        ended => ended,
    }
}

async fn end(
    cloud: &Cloud,
    store: &Store,
    instance: &Instance,
    action: EndOfLife,
    printer: &Printer,
) -> Result<()> {
    let id = &instance.id;
    match action {
        EndOfLife::Terminate => {
            let phase = printer.phase(format!("terminating {id}"));
            cloud.terminate(id).await.with_context(|| {
                format!(
                    "{id} may still run (and be billed): end it with `aws ec2 \
                     terminate-instances --instance-ids {id}`"
                )
            })?;
            // Its keys are useless from here on, whatever happens next.
            store.forget(id);
            let leftover = instance
                .security_group
                .as_deref()
                .map_or(String::new(), |group| {
                    format!(", then `aws ec2 delete-security-group --group-id {group}`")
                });
            cloud
                .wait_until(id, State::Terminated, Instant::now() + TRANSITION_TIMEOUT)
                .await
                .with_context(|| {
                    format!("check that {id} terminates in the EC2 console{leftover}")
                })?;
            if let Some(group) = &instance.security_group {
                phase.update(format!("deleting security group {group}"));
                cloud.delete_ssh_group(group).await?;
            }
            phase.done(format!("terminated {id}"));
        }
        EndOfLife::Stop => {
            let phase = printer.phase(format!("stopping {id}"));
            let still_runs = || {
                format!(
                    "{id} may still run (and be billed): stop it with `aws ec2 stop-instances \
                     --instance-ids {id}`, or check the EC2 console"
                )
            };
            cloud.stop(id).await.with_context(still_runs)?;
            cloud
                .wait_until(id, State::Stopped, Instant::now() + TRANSITION_TIMEOUT)
                .await
                .with_context(still_runs)?;
            phase.done(format!("stopped {id}; run ssh-ec2 here again to start it"));
        }
        EndOfLife::Leave => {
            printer.warn(&format!(
                "{id} is left running (and billed): run ssh-ec2 here again to reuse it; end it \
                 with `ssh-ec2 --terminate true` here or `aws ec2 terminate-instances \
                 --instance-ids {id}`"
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use EndOfLife::*;

    #[test]
    fn terminate_only_when_nothing_can_be_lost() {
        let decide = |origin, started, home| safe_action(Terminate, origin, started, home).0;
        assert_eq!(
            decide(Origin::Launched, true, true),
            Terminate,
            "results are home"
        );
        assert_eq!(
            decide(Origin::FoundStopped, true, true),
            Terminate,
            "results are home"
        );
        assert_eq!(
            decide(Origin::Launched, false, false),
            Terminate,
            "nothing ran on a new one"
        );
        assert_eq!(
            decide(Origin::Launched, true, false),
            Stop,
            "the pull failed"
        );
        assert_eq!(
            decide(Origin::FoundRunning, true, false),
            Stop,
            "the pull failed"
        );
        assert_eq!(
            decide(Origin::FoundRunning, false, false),
            Leave,
            "as it was found"
        );
        assert_eq!(
            decide(Origin::FoundStopped, false, false),
            Stop,
            "as it was found"
        );
        assert_eq!(
            safe_action(Leave, Origin::Launched, true, false),
            (Leave, None)
        );
        assert_eq!(
            safe_action(Stop, Origin::FoundRunning, false, false),
            (Stop, None)
        );
    }

    #[test]
    fn a_spot_instance_is_left_running_where_another_would_be_stopped() {
        let why = Some("its results may not have come home".to_string());
        let (action, said) = for_spot(true, Stop, why.clone());
        assert_eq!(action, Leave);
        let said = said.unwrap();
        assert!(
            said.starts_with("its results may not have come home; but a spot instance"),
            "{said}"
        );
        assert_eq!(for_spot(true, Terminate, None), (Terminate, None));
        assert_eq!(for_spot(false, Stop, why.clone()), (Stop, why));
    }
}
