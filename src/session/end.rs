//! The end of a run: who else still uses the instance, the end of life that is safe after what
//! the run did, applied; the conflicts and the summary line said; the exit status. What to do
//! is decided by `conclude`, a pure function of the run's outcome.

use anyhow::Result;

use super::Scene;
use super::earlier::{still_running, still_running_note};
use super::job::job_state;
use super::progress::Progress;
use super::pull::NoteSignals;
use super::reach::stopped_under_the_run;
use super::summary::{Span, say_summary};
use crate::cloud::Instance;
use crate::fleet::end_of_life::{self, Origin};
use crate::interrupt::{Interrupted, Signal};
use crate::remote::job::{Job, JobState};
use crate::settings::values::EndOfLife;
use crate::ssh::{RemoteExit, Target, held};
use crate::state::lock::DirLock;
use crate::status::ExitStatus;

/// Who else uses the instance as the run ends.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Sharing {
    /// The run never reached it: nobody could join it meanwhile.
    NotReached,
    Alone,
    /// Another run's live lease, or this directory's job still running.
    Shared,
    /// A command of an earlier run, whose client is gone, still runs (since when).
    EarlierCommand(String),
    /// It could not be told (why).
    Unknown(String),
}

/// What a run came to, as `conclude` weighs it.
#[derive(Debug, Clone)]
struct Outcome {
    policy: EndOfLife,
    origin: Origin,
    spot: bool,
    command_started: bool,
    results_home: bool,
    goes_on: bool,
    exit: Option<RemoteExit>,
    sharing: Sharing,
    /// The first signal before the end of life; later ones change nothing.
    interrupted: Option<Signal>,
    /// The run's work failed, and said why.
    failed: bool,
}

/// What to do about it.
#[derive(Debug, PartialEq, Eq)]
struct Conclusion {
    action: EndOfLife,
    /// Why the action is not the policy, to say before it is applied.
    why: Option<String>,
    /// The exit status once the end of life is applied (its failure outweighs everything).
    status: ExitStatus,
}

fn conclude(outcome: &Outcome) -> Conclusion {
    let (action, why) = match (outcome.goes_on, &outcome.sharing) {
        (true, _) => (EndOfLife::Leave, None),
        (false, Sharing::Shared) => (
            EndOfLife::Leave,
            Some(
                "another run of this directory (or its job) still uses it: leaving it running; \
                 the last one out applies the end of life"
                    .to_string(),
            ),
        ),
        (false, Sharing::EarlierCommand(note)) => (
            EndOfLife::Leave,
            Some(format!(
                "{note}: leaving it running; `ssh-ec2 --finish` here waits for that command and \
                 brings its results home, `ssh-ec2 --down --force` ends it"
            )),
        ),
        (false, Sharing::Unknown(e)) if outcome.policy != EndOfLife::Leave => (
            EndOfLife::Leave,
            Some(format!(
                "could not check whether another run still uses it ({e}): leaving it running; \
                 `ssh-ec2 --down` here brings its results home and ends it"
            )),
        ),
        _ => {
            let (action, why) = end_of_life::safe_action(
                outcome.policy,
                outcome.origin,
                outcome.command_started,
                outcome.results_home,
            );
            (action, why.map(str::to_string))
        }
    };
    let (action, why) = end_of_life::for_spot(outcome.spot, action, why);
    let status = match (outcome.interrupted, outcome.failed, &outcome.exit) {
        (Some(signal), _, _) => ExitStatus::Signal(signal),
        (None, true, _) => ExitStatus::Failed,
        (None, false, Some(RemoteExit::Status(status))) => ExitStatus::remote(*status),
        // Ctrl-C typed into the command's terminal: interrupted, as without a terminal (130),
        // so that make says "Interrupt".
        (None, false, Some(RemoteExit::Signal(signal))) if signal == "INT" => {
            ExitStatus::Signal(Signal::Interrupt)
        }
        (None, false, Some(RemoteExit::Signal(_)) | None) => ExitStatus::Failed,
    };
    Conclusion {
        action,
        why,
        status,
    }
}

/// Applies the end of life that is safe after `work`, reports, and gives the exit status.
pub async fn end_of_run(
    scene: &Scene<'_>,
    work: Result<()>,
    mut progress: Progress,
    span: Span,
) -> Result<ExitStatus> {
    let Scene {
        cloud,
        plan,
        store,
        machine,
        interrupt,
        printer,
    } = *scene;
    // The last one out applies the end of life: the others' leases are read under the lock.
    let _lock = DirLock::wait(&plan.dirs.root, &plan.local_dir, printer, None).await?;
    // A run through a held connection leaves it to its holder, which goes on.
    let to_keep = (progress.target.take())
        .filter(|_| !progress.session.as_ref().is_some_and(|s| s.is_held()));
    let running = progress.running.take();
    let sharing = sharing(scene, &mut progress).await;
    if progress.results_home && plan.sync.is_some() && sharing == Sharing::Alone {
        // Nobody else's command or job was there to write after this pull.
        store.note_pulled(&machine.head().instance.id);
    }
    let failed = match work {
        // Said before the end of life, so the user knows why the instance is handled as it is.
        Err(e) if !e.is::<Interrupted>() => {
            printer.error(&e);
            true
        }
        work => work.is_err(),
    };
    let conclusion = conclude(&Outcome {
        policy: plan.machine.end_of_life,
        origin: machine.origin,
        spot: machine.head().instance.spot,
        command_started: progress.command_started,
        results_home: progress.results_home,
        goes_on: progress.goes_on,
        exit: progress.exit.clone(),
        sharing,
        interrupted: interrupt.first(),
        failed,
    });
    let Conclusion {
        action,
        why,
        status,
    } = conclusion;
    // Before the instance is gone: the conflicts, and what stays on it.
    for line in progress.sync.lines() {
        printer.warn(&line);
    }
    if let Some(why) = why {
        printer.warn(&format!("{}: {why}", machine.head().instance.id));
    }
    let ended = {
        let _notes = NoteSignals::start(interrupt, printer);
        end_of_life::apply(cloud, store, &machine.instances(), action, printer).await
    };
    if let (Ok(()), EndOfLife::Leave, Some(target)) = (&ended, action, to_keep) {
        let head = running.as_ref().unwrap_or(&machine.head().instance);
        keep_connection(scene, &target, head);
    }
    say_summary(scene, ended.is_ok(), action, span).await;
    // Something the run made is still alive against the policy: that outweighs the rest.
    ended?;
    if let ExitStatus::Signal(signal) = status {
        printer.error(&Interrupted(signal).into());
    }
    Ok(status)
}

/// Keeps a connection to the instance left running (`head`, as last seen), for the next run
/// here (see `ssh::held`).
fn keep_connection(scene: &Scene<'_>, target: &Target, head: &Instance) {
    let (Some(keep), Some(socket)) = (scene.plan.reach.keep_connection, &target.held) else {
        return;
    };
    let known = crate::fleet::kept::known(&scene.plan.machine, scene.cloud, head);
    if let Err(e) = held::hand_over(target, socket, keep, known) {
        scene.printer.warn(&format!(
            "{e:#}: the next run here connects to the instance anew"
        ));
    }
}

/// Drops this run's lease and tells who else uses the instance.
async fn sharing(scene: &Scene<'_>, progress: &mut Progress) -> Sharing {
    let (Some(presence), Some(session)) = (progress.presence.take(), progress.session.take())
    else {
        return Sharing::NotReached;
    };
    let job = Job::for_dir(&scene.plan.local_dir);
    // The job's state is asked beside the release (one round trip for both on a slow link),
    // though it counts only when no other run is there.
    let (released, job_now) =
        tokio::join!(presence.release(&session, &job), job_state(&session, &job));
    let shared = match released {
        Ok((others, earlier)) => match still_running(&earlier) {
            // Never ended under it: what it writes later would never come home.
            Some(command) => Ok(Sharing::EarlierCommand(still_running_note(command))),
            None if others > 0 => Ok(Sharing::Shared),
            // This directory's job still running counts as someone else.
            None => job_now.map(|state| match state {
                JobState::Running(_) => Sharing::Shared,
                _ => Sharing::Alone,
            }),
        },
        Err(e) => Err(e),
    };
    session.close().await;
    match shared {
        Ok(sharing) => sharing,
        // A stopped instance runs nobody's work: its end of life cannot hurt another run.
        Err(e) => match stopped_under_the_run(scene.cloud, &scene.machine.head().instance.id).await
        {
            Some(_) => Sharing::NotReached,
            None => Sharing::Unknown(format!("{e:#}")),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use EndOfLife::{Leave, Stop, Terminate};

    /// A run that launched its instance, ran its command (exit 0) and brought its results home.
    fn done() -> Outcome {
        Outcome {
            policy: Terminate,
            origin: Origin::Launched,
            spot: false,
            command_started: true,
            results_home: true,
            goes_on: false,
            exit: Some(RemoteExit::Status(0)),
            sharing: Sharing::Alone,
            interrupted: None,
            failed: false,
        }
    }

    #[test]
    fn the_end_of_life_exit_status_and_warning_follow_the_outcome() {
        let unknown = Sharing::Unknown("closed".into());
        #[rustfmt::skip]
        let table: Vec<(&str, Outcome, EndOfLife, ExitStatus, Option<&str>)> = vec![
            ("all went well", done(), Terminate, ExitStatus::Remote(0), None),
            ("the command's status", Outcome { exit: Some(RemoteExit::Status(3)), ..done() },
                Terminate, ExitStatus::Remote(3), None),
            ("a remote signal is ssh's 255", Outcome { exit: Some(RemoteExit::Signal("KILL".into())), ..done() },
                Terminate, ExitStatus::Failed, None),
            ("Ctrl-C in the command's terminal", Outcome { exit: Some(RemoteExit::Signal("INT".into())), ..done() },
                Terminate, ExitStatus::Signal(Signal::Interrupt), None),
            ("the pull failed", Outcome { results_home: false, failed: true, ..done() },
                Stop, ExitStatus::Failed, Some("may not have come home")),
            ("a spot instance cannot stop", Outcome { results_home: false, failed: true, spot: true, ..done() },
                Leave, ExitStatus::Failed, Some("cannot be stopped")),
            ("a job goes on", Outcome { goes_on: true, ..done() }, Leave, ExitStatus::Remote(0), None),
            ("another run uses it", Outcome { sharing: Sharing::Shared, ..done() },
                Leave, ExitStatus::Remote(0), Some("last one out")),
            ("an earlier run's command still runs", Outcome { sharing: Sharing::EarlierCommand(
                "a command from an earlier run is still running (since T)".into()), ..done() },
                Leave, ExitStatus::Remote(0), Some("(since T): leaving it running; `ssh-ec2 --finish`")),
            ("even with the leave policy, it is said", Outcome { policy: Leave,
                sharing: Sharing::EarlierCommand("…".into()), ..done() },
                Leave, ExitStatus::Remote(0), Some("--down --force")),
            ("who else is there is unknown", Outcome { sharing: unknown.clone(), ..done() },
                Leave, ExitStatus::Remote(0), Some("could not check")),
            ("a leave policy needs no check", Outcome { sharing: unknown, policy: Leave, ..done() },
                Leave, ExitStatus::Remote(0), None),
            ("a stop policy", Outcome { policy: Stop, ..done() }, Stop, ExitStatus::Remote(0), None),
            ("Ctrl-C before the command", Outcome { command_started: false, results_home: false,
                exit: None, interrupted: Some(Signal::Interrupt), sharing: Sharing::NotReached, ..done() },
                Terminate, ExitStatus::Signal(Signal::Interrupt), None),
            ("Ctrl-C on a reused instance", Outcome { origin: Origin::FoundRunning, command_started: false,
                results_home: false, exit: None, interrupted: Some(Signal::Interrupt), ..done() },
                Leave, ExitStatus::Signal(Signal::Interrupt), Some("as it was found")),
            ("a signal cut the pull short", Outcome { results_home: false, interrupted: Some(Signal::Terminate), ..done() },
                Stop, ExitStatus::Signal(Signal::Terminate), Some("may not have come home")),
        ];
        for (case, outcome, action, status, why) in table {
            let conclusion = conclude(&outcome);
            assert_eq!(conclusion.action, action, "{case}");
            assert_eq!(conclusion.status, status, "{case}");
            match (why, conclusion.why) {
                (None, None) => {}
                (Some(expected), Some(said)) => assert!(said.contains(expected), "{case}: {said}"),
                (expected, said) => panic!("{case}: expected {expected:?}, said {said:?}"),
            }
        }
    }
}
