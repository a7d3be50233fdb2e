//! The instance's fate once the run is over: terminated (and its security group and keys
//! removed), stopped (the next run in this directory starts it again), or left running.

use std::time::{Duration, Instant};

use anyhow::{Context, Result};

use super::release::{self, Held};
use crate::cloud::{Cloud, Instance, State};
use crate::printer::Printer;
use crate::settings::values::EndOfLife;
use crate::ssh::held;
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

/// Applies `action` to every node of an instance (one, or a cluster's, the head first).
pub async fn apply(
    cloud: &Cloud,
    store: &Store,
    nodes: &[Instance],
    action: EndOfLife,
    printer: &Printer,
) -> Result<()> {
    let ids: Vec<&str> = nodes.iter().map(|node| node.id.as_str()).collect();
    // A connection kept to them ends first: it never outlives their end of life.
    if action != EndOfLife::Leave {
        for id in &ids {
            held::release(&store.held_socket(id));
        }
    }
    let ended = match action {
        EndOfLife::Terminate => terminate(cloud, store, nodes, &ids, printer).await,
        EndOfLife::Stop => stop(cloud, &ids, printer).await,
        EndOfLife::Leave => {
            let it = if ids.len() == 1 { "it" } else { "them" };
            printer.warn(&format!(
                "{} left running (and billed): run ssh-ec2 here again to reuse {it}; `ssh-ec2 \
                 --down` here ends {it}",
                said(&ids)
            ));
            Ok(())
        }
    };
    match ended {
        Err(e) => Err(cloud.explain_denial(e).await),
        ended => ended,
    }
}

/// "i-1 is" / "i-1, i-2 and i-3 are".
fn said(ids: &[&str]) -> String {
    match ids {
        [one] => format!("{one} is"),
        [first @ .., last] => format!("{} and {last} are", first.join(", ")),
        [] => "nothing is".to_string(),
    }
}

async fn terminate(
    cloud: &Cloud,
    store: &Store,
    nodes: &[Instance],
    ids: &[&str],
    printer: &Printer,
) -> Result<()> {
    let names = ids.join(" ");
    let phase = printer.phase(format!("terminating {}", ids.join(", ")));
    cloud.terminate(ids).await.with_context(|| {
        format!(
            "{} may still run (and be billed): end it with `aws ec2 terminate-instances \
             --instance-ids {names}`",
            ids.join(", ")
        )
    })?;
    // Their keys are useless from here on, whatever happens next.
    for id in ids {
        store.forget(id);
    }
    // AWS lets go of the groups only once the instances are `terminated`, tens of seconds to
    // minutes from now: the prompt does not wait for that (see `release`).
    let mut held = Held::left_by(nodes, cloud);
    if !held.is_empty() {
        phase.update(format!("deleting {}", held.said()));
        held = release::release_once(cloud, &held).await?;
    }
    if held.is_empty() {
        phase.done(format!("terminated {}", ids.join(", ")));
        return Ok(());
    }
    if let Err(e) = release::hand_over(&held, store) {
        tracing::debug!("{e:#}: waiting here for AWS to let go of {}", held.said());
        phase.update(format!("waiting for AWS to let go of {}", held.said()));
        release::release(cloud, &held).await?;
        phase.done(format!("terminated {}", ids.join(", ")));
        return Ok(());
    }
    phase.done(format!(
        "terminated {}; {}: deleted in the background once AWS lets go",
        ids.join(", "),
        held.said(),
    ));
    Ok(())
}

async fn stop(cloud: &Cloud, ids: &[&str], printer: &Printer) -> Result<()> {
    let phase = printer.phase(format!("stopping {}", ids.join(", ")));
    let still_runs = || {
        format!(
            "{} may still run (and be billed): stop it with `aws ec2 stop-instances \
             --instance-ids {}`, or check the EC2 console",
            ids.join(", "),
            ids.join(" ")
        )
    };
    cloud.stop(ids).await.with_context(still_runs)?;
    for id in ids {
        cloud
            .wait_until(id, State::Stopped, Instant::now() + TRANSITION_TIMEOUT)
            .await
            .with_context(still_runs)?;
    }
    phase.done(format!(
        "stopped {}; run ssh-ec2 here again to start it",
        ids.join(", ")
    ));
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
