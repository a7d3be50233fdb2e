//! A run's work on the instance it reached: sync up, run the command (directly, streamed like
//! `ssh host command`, or as this directory's job in tmux/screen), pull the results back. How
//! far it got is recorded in `Progress`, which decides the end of life.

use std::time::Duration;

use anyhow::{Context, Result, bail};

use super::Scene;
use super::cluster::{fan_out, start_worker_jobs};
use super::env::{JobStart, write_env};
use super::host_key;
use super::job::{
    Followed, choose_multiplexer, conclude_job, follow_job, taken_back, until_interrupted,
    wanted_multiplexer,
};
use super::lease::Presence;
use super::progress::Progress;
use super::pull::{NoteSignals, pull_nodes, pull_results, rsync};
use super::reach::{Reached, open_forwards, reach_and_join, reconnect_if_closed};
use super::workers::{
    Ended, WorkerCommands, first_failure, how_it_ended, node_failed, start_workers, workers_outcome,
};
use crate::fleet::end_of_life::Origin;
use crate::poll::Poll;
use crate::printer::Printer;
use crate::remote::job::Job;
use crate::remote::logs::LogName;
use crate::remote::pulled::PullMark;
use crate::remote::runs::RunRecord;
use crate::ssh::{RemoteExit, Session, run_command};
use crate::state::lock::DirLock;
use crate::sync::{Manifest, PushInto};

/// Connect, sync up, run, pull back; with `detach`, start the job and return.
pub async fn run(
    scene: &Scene<'_>,
    detach: bool,
    lock: DirLock,
    progress: &mut Progress,
) -> Result<()> {
    let Scene {
        plan,
        store,
        machine,
        printer,
        ..
    } = *scene;
    let mut reached = reach_and_join(scene, lock, progress, true).await?;
    let job = Job::for_dir(&plan.local_dir);
    let mut head_target = reached.target.clone();
    let due = reached.host_key_due;
    let settling = host_key::settle_due(scene, due, &reached.session, &mut head_target);
    let ready = async {
        // Checked before anything is synced: a job needs its multiplexer, and one at a time.
        let multiplexer = match wanted_multiplexer(plan, detach) {
            None => None,
            Some(wanted) => Some(choose_multiplexer(&reached.session, wanted, &job).await?),
        };
        let mut manifest = Manifest::load(&store.manifest_path(&machine.head().instance.id));
        sync_up(scene, &reached, &mut manifest, progress).await?;
        anyhow::Ok((multiplexer, manifest))
    };
    let ready = host_key::beside(ready, settling).await;
    reached.target = head_target;
    progress.reached(&reached);
    let (multiplexer, mut manifest) = ready?;

    let command = plan.command.as_deref();
    if plan.sync.is_some() {
        // Until a pull brings them home, its results are there only.
        store.note_unpulled(&machine.head().instance.id)?;
    }
    progress.command_started = true;
    printer.info(&match command {
        Some(command) => format!("running `{command}` in {}", plan.remote_dir),
        None => format!("opening a shell in {}", plan.remote_dir),
    });
    let Some(multiplexer) = multiplexer else {
        return run_directly(scene, reached, &mut manifest, progress).await;
    };
    let size = crossterm::terminal::size().unwrap_or((80, 24));
    let login_shell = "exec \"${SHELL:-/bin/sh}\" -l";
    let head_command = command.map(|c| reached.cluster.layout().command_for(0, c));
    let start = JobStart {
        job: &job,
        multiplexer,
        dir: &reached.remote_dir,
        size,
        env: &plan.env,
    };
    start
        .on(
            &reached.session,
            head_command.as_deref().unwrap_or(login_shell),
            &LogName::job(0, reached.cluster.addresses.len()),
        )
        .await?;
    if let Some(command) = command {
        start_worker_jobs(&reached, &start, command).await?;
    }
    printer.info(&format!(
        "started job {} in {multiplexer} on {}",
        job.name(),
        machine.head().instance.id
    ));
    let followed = match detach {
        true => Followed::Detached,
        false => {
            let attach = plan.terminal.pty;
            let followed = follow_job(scene, &mut reached, &job, multiplexer, attach).await;
            progress.reached(&reached);
            followed?
        }
    };
    conclude_job(scene, &reached, &job, followed, &mut manifest, progress).await
}

/// This directory to the instance; on an instance that may hold an earlier run's results, those
/// come home first, so that the push cannot overwrite them.
async fn sync_up(
    scene: &Scene<'_>,
    reached: &Reached,
    manifest: &mut Manifest,
    progress: &mut Progress,
) -> Result<()> {
    let Scene {
        plan,
        store,
        machine,
        interrupt,
        printer,
        ..
    } = *scene;
    let Some(sync) = &plan.sync else {
        return Ok(());
    };
    if let Some(warning) = crate::sync::outdated_warning(sync.version, &plan.dirs.root) {
        printer.warn(&warning);
    }
    let id = &machine.head().instance.id;
    let rsync = rsync(plan, &reached.session, &reached.remote_dir, printer, id)?;
    // A directory the run made holds nothing to bring home; a cluster's other nodes may.
    let nothing_there = reached.new_dir && reached.workers.is_empty();
    if machine.origin != Origin::Launched && !nothing_there {
        let phase = printer.phase(format!(
            "bringing home what changed in {} since the last sync",
            plan.remote_dir
        ));
        let changed = progress.changed_there.take();
        let pulling = pull_nodes(scene, reached, &rsync, manifest, progress, changed);
        let pulled = interrupt.cancel(pulling).await?;
        phase.done(pulled.describe("nothing changed there since the last sync"));
    }
    let phase = printer.phase(format!("syncing this directory to {}", plan.remote_dir));
    // A lone instance's new directory is stamped as the push starts: what the instance says
    // changed since then is all it holds that is not home (see `remote::pulled`).
    let stamp = (nothing_there).then(|| PullMark::new(Job::for_dir(&plan.local_dir).name()));
    let into = match reached.new_dir {
        true => PushInto::New {
            stamp: stamp.as_ref(),
        },
        false => PushInto::Existing,
    };
    if stamp.is_some() {
        store.forget_pull_mark(id);
    }
    let sent = interrupt.cancel(rsync.push(manifest, into)).await?;
    if let Some(stamp) = &stamp {
        store.note_pull_mark(id, stamp.token(), &plan.remote_dir.to_string());
        progress.push_stamped = true;
    }
    if !reached.workers.is_empty() {
        let others = reached.workers.len();
        phase.update(format!(
            "copying it from the head to the other {others} nodes"
        ));
        let copied = fan_out(
            &reached.session,
            &reached.remote_dir,
            &reached.cluster,
            &sent,
        );
        interrupt.cancel(copied).await?;
        // The nodes now hold what the head holds: their manifests are its own.
        let head = store.manifest_path(id);
        for node in &machine.nodes[1..] {
            let _ = std::fs::copy(&head, store.manifest_path(&node.instance.id));
        }
    }
    phase.done(format!("synced to {}", plan.remote_dir));
    Ok(())
}

/// How the run's own command is named while it is ended.
const THE_COMMAND: &str = "the remote command";

/// The command without a multiplexer, streamed over the session like `ssh host command`; its
/// record on the instance is named like the run's lease (see `remote::runs`).
async fn run_directly(
    scene: &Scene<'_>,
    mut reached: Reached,
    manifest: &mut Manifest,
    progress: &mut Progress,
) -> Result<()> {
    let Scene {
        plan,
        machine,
        interrupt,
        printer,
        ..
    } = *scene;
    let forwarding = open_forwards(&reached.session, plan, printer, true).await?;
    let record = (progress.presence.as_ref())
        .map(Presence::run_record)
        .context("the run holds no lease on the instance")?;
    let mut workers = (plan.command.as_deref())
        .filter(|_| !reached.workers.is_empty())
        .map(|command| {
            start_workers(
                &reached.workers,
                &reached.remote_dir,
                &reached.cluster,
                (command, &plan.env),
                &record,
                printer,
            )
        });
    let (ran, spot_notice, first) =
        stream_command(scene, &reached, &record, workers.as_mut()).await;
    drop(forwarding);
    let _notes = NoteSignals::start(interrupt, printer);
    let after_command = interrupt.only_new();
    // A signal that ended it for another node's failure is that node's to tell.
    // (Ctrl-C typed in its terminal needs no word: the user pressed it.)
    if let (Ok(RemoteExit::Signal(signal)), None) = (&ran, &first)
        && !(plan.terminal.pty && signal == "INT")
    {
        printer.warn(&format!("the remote command was killed by signal {signal}"));
    }
    progress.exit = ran.as_ref().ok().cloned();
    // A lost node fails the run, but only once the others' results are home.
    let mut node_lost = Ok(());
    if let Some(workers) = &mut workers
        && let Some(failure) = workers_outcome(workers, &ran, first, printer).await
    {
        match node_failed(failure, machine) {
            Ok(exit) => progress.exit = Some(exit),
            Err(lost) => node_lost = Err(lost),
        }
    }

    // The pull starts only once the command is known to have ended: after a hang-up or a lost
    // connection, what is left of it is ended first, so that nothing still writes.
    let after = async {
        let session = reconnect_if_closed(scene, &reached.target, reached.session.clone()).await?;
        if ran.is_err() {
            end_command(&session, THE_COMMAND, |s| record.signal_command(s), printer).await?;
        }
        Ok::<_, anyhow::Error>(session)
    };
    reached.session = match (after.await, &ran) {
        (Ok(session), _) => session,
        (Err(e), Err(lost)) => return Err(e.context(format!("{lost:#}"))),
        (Err(e), Ok(_)) => return Err(e),
    };
    progress.reached(&reached);
    let pulled = pull_results(scene, &reached, manifest, progress, &after_command).await;
    if let Some(presence) = &mut progress.presence {
        presence.command_over();
    }
    progress.results_home = matches!(pulled, Ok(true));
    ran?;
    node_lost?;
    pulled?;
    if spot_notice {
        return Err(taken_back("the command", &machine.head().instance.id));
    }
    Ok(())
}

/// Runs the command until it ends; on AWS's interruption notice (the instance has about two
/// minutes left) it is ended at once, so that what it has written comes home. Also says
/// whether that notice came.
async fn stream_command(
    scene: &Scene<'_>,
    reached: &Reached,
    record: &RunRecord,
    workers: Option<&mut WorkerCommands>,
) -> (Result<RemoteExit>, bool, Option<Ended>) {
    let session = &reached.session;
    let Scene {
        plan,
        machine,
        interrupt,
        printer,
        ..
    } = *scene;
    // Without a PTY, the output goes through relays that write the log too, and stdout is a
    // pipe that `| head` may close (see `RunRecord::command_line`).
    let nodes = reached.cluster.addresses.len();
    let log = (!plan.terminal.pty).then(|| LogName::run(0, nodes));
    let cut_output = record.cut_output_command();
    // The nodes' variables (for one instance too: rank 0 of 1).
    let command = (plan.command.as_deref()).map(|c| reached.cluster.layout().command_for(0, c));
    let env = !plan.env.is_empty();
    let command_line = record.command_line(&plan.remote_dir, command.as_deref(), log.as_ref(), env);
    let ran = async {
        write_env(session, record, &plan.env).await?;
        run_command(
            session,
            &command_line,
            log.is_some().then_some(cut_output.as_str()),
            plan.terminal.pty,
            plan.terminal.forward_stdin,
            interrupt,
            printer,
        )
        .await
    };
    tokio::pin!(ran);
    tokio::select! {
        ran = &mut ran => (ran, false, None),
        failed = first_failure(workers) => {
            printer.warn(&format!(
                "node {} {}: ending the other nodes' commands",
                failed.rank,
                how_it_ended(&failed.exit)
            ));
            let signal = |s: &str| record.signal_command(s);
            if let Err(e) = end_command(session, THE_COMMAND, signal, printer).await {
                printer.warn(&format!("{e:#}"));
            }
            (ran.await, false, Some(failed))
        }
        () = until_interrupted(machine.head().instance.spot, async || {
            let answer = session.run_captured(&record.interrupted_command()).await;
            answer.is_ok_and(|answer| answer.trim() == "interrupted")
        }) => {
            printer.warn(&format!(
                "AWS is taking back spot instance {} (interruption notice): ending the \
                 command to bring home what it has written so far",
                machine.head().instance.id
            ));
            let signal = |s: &str| record.signal_command(s);
            if let Err(e) = end_command(session, THE_COMMAND, signal, printer).await {
                printer.warn(&format!("{e:#}"));
            }
            (ran.await, true, None)
        }
    }
}

/// How long a command has to end on SIGTERM before SIGKILL, and to be gone after that.
const KILL_AFTER: Duration = Duration::from_secs(10);
const END_TIMEOUT: Duration = Duration::from_secs(30);

/// Ends what is left of `what` (a whole process group, signalled by the command `signal`
/// makes: SIGTERM, then SIGKILL) and waits until nothing of it runs.
pub(super) async fn end_command(
    session: &Session,
    what: &str,
    signal: impl Fn(&str) -> String,
    printer: &Printer,
) -> Result<()> {
    let phase = printer.phase(format!("ending what is left of {what} before the pull"));
    for (name, within) in [("TERM", KILL_AFTER), ("KILL", END_TIMEOUT - KILL_AFTER)] {
        let mut poll = Poll::every(Duration::from_secs(1)).within(within);
        let mut send = name;
        loop {
            let answer = session.run_captured(&signal(send)).await?;
            if answer.lines().last() != Some("alive") {
                phase.done(format!("{what} has ended"));
                return Ok(());
            }
            // Signal 0 only asks whether anything of it is left.
            send = "0";
            if !poll.wait().await? {
                break;
            }
        }
    }
    bail!("{what} still runs after SIGKILL: its results cannot be pulled safely")
}
