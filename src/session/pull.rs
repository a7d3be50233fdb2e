//! The final pull, once nothing runs on the instance any more: results come home before the
//! end of life. Signals from then on are noted rather than obeyed, but for the second one,
//! which gives up the pull (the instance is then stopped, not terminated).

use std::sync::Arc;

use anyhow::{Context, Result};

use super::earlier::forget_ended;
use super::progress::Progress;
use super::reach::{Reached, stopped_under_the_run};
use super::{Plan, Scene};
use crate::interrupt::{Interrupt, Interrupted};
use crate::printer::Printer;
use crate::remote::RemoteDir;
use crate::remote::changes::Changes;
use crate::remote::job::Job;
use crate::remote::pulled::{Checked, PullMark};
use crate::settings::values::EndOfLife;
use crate::ssh::Session;
use crate::sync::{Manifest, Pulled, Rsync};

/// How many signals after the command give up the pull.
const SKIP_THE_PULL: u32 = 2;

/// Once the command is over, a signal cannot cut the run short without losing results or
/// leaving an instance running: say so rather than ignore it silently.
pub struct NoteSignals(tokio::task::JoinHandle<()>);

impl NoteSignals {
    pub fn start(interrupt: &Interrupt, printer: &Printer) -> NoteSignals {
        let mut interrupt = interrupt.only_new();
        let printer = printer.clone();
        NoteSignals(tokio::spawn(async move {
            loop {
                let (count, signal) = interrupt.next().await;
                let again = match count < SKIP_THE_PULL {
                    true => "; again to skip the pull (the instance is then stopped)",
                    false => "",
                };
                printer.warn(&format!(
                    "{signal}: finishing first, so that nothing is lost or left running{again}"
                ));
            }
        }))
    }
}

impl Drop for NoteSignals {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// rsync between this directory and `remote_dir`, over `session`; `label` names the copies
/// of files both sides changed (the instance's id, or a cluster node's `node-K`).
pub fn rsync<'a>(
    plan: &'a Plan,
    session: &Arc<Session>,
    remote_dir: &RemoteDir,
    printer: &'a Printer,
    label: &'a str,
) -> Result<Rsync<'a>> {
    let sync = plan
        .sync
        .as_ref()
        .context("rsync asked for with --no-rsync")?;
    Rsync::new(
        sync,
        &plan.local_dir,
        remote_dir,
        session.clone(),
        &plan.dirs.sockets,
        printer,
        label,
    )
}

/// The final pull, once the command has ended; a pull cut by the instance stopping says so.
/// `after_command` sees the signals since the command ended: the second one gives up the pull.
/// Whether the results are home: with --no-rsync, unless an earlier pull did not complete.
pub async fn pull_results(
    scene: &Scene<'_>,
    reached: &Reached,
    manifest: &mut Manifest,
    progress: &mut Progress,
    after_command: &Interrupt,
) -> Result<bool> {
    let Scene {
        cloud,
        plan,
        store,
        machine,
        printer,
        ..
    } = *scene;
    let id = &machine.head().instance.id;
    if plan.sync.is_none() {
        let home = !store.unpulled(id);
        if !home {
            printer.warn(&format!(
                "--no-rsync, but the last pull from {id} did not complete: results may be there \
                 only, so it is not terminated; `ssh-ec2 true` here brings them home"
            ));
        }
        return Ok(home);
    }
    let phase = printer.phase(format!("pulling results back from {}", plan.remote_dir));
    let rsync = rsync(plan, &reached.session, &reached.remote_dir, printer, id)?;
    // A second signal in all gives up the pull: the instance is then stopped, not terminated.
    let pulling = async {
        // An instance that stays needs no word now on what its rules keep there (a whole
        // pull's listing finds it): only what changed is looked at.
        let changed = match plan.machine.end_of_life {
            EndOfLife::Leave => changes_since_pull(scene, &reached.session).await,
            // Unless the answer covers all the directory holds: the push into it stamped it.
            EndOfLife::Stop | EndOfLife::Terminate if progress.push_stamped => {
                changes_since_pull(scene, &reached.session).await
            }
            EndOfLife::Stop | EndOfLife::Terminate => None,
        };
        pull_nodes(scene, reached, &rsync, manifest, progress, changed).await
    };
    let pulled = tokio::select! {
        pulled = pulling => pulled,
        signal = after_command.until_count(SKIP_THE_PULL) => {
            drop(phase);
            let fate = match machine.head().instance.spot {
                true => "left running (a spot instance cannot be stopped)",
                false => "stopped, not terminated",
            };
            printer.warn(&format!(
                "{signal} again: skipping the pull; {id} will be {fate}: run `ssh-ec2 true` \
                 here later to bring the results home"
            ));
            return Err(Interrupted(signal).into());
        }
    };
    let pulled = match pulled {
        Ok(pulled) => pulled,
        Err(e) if reached.session.is_closed() => {
            return Err(stopped_under_the_run(cloud, id).await.unwrap_or(e));
        }
        Err(e) => return Err(e),
    };
    phase.done(pulled.describe("pulled results back: nothing changed there"));
    forget_ended(&reached.session, progress).await;
    Ok(true)
}

/// The head's pull, then the other nodes'. A lone instance that said what `changed` since the
/// last whole pull may need no listing (see `sync::narrow`); a whole pull stamps itself as it
/// starts, and the stamp is noted here once everything came home (see `remote::pulled`).
pub async fn pull_nodes(
    scene: &Scene<'_>,
    reached: &Reached,
    rsync: &Rsync<'_>,
    manifest: &mut Manifest,
    progress: &mut Progress,
    changed: Option<Checked>,
) -> Result<Pulled> {
    let Scene { plan, store, .. } = *scene;
    let id = &scene.machine.head().instance.id;
    if let Some(checked) = changed.filter(|_| reached.workers.is_empty())
        && let Some(pulled) =
            (rsync.pull_changes(&checked.changes, manifest, &mut progress.sync)).await?
    {
        // All it said changed is home: the next run asks from the stamp its answer made.
        store.note_pull_mark(id, checked.next.token(), &plan.remote_dir.to_string());
        return Ok(pulled);
    }
    let job = Job::for_dir(&plan.local_dir);
    let mark = reached
        .workers
        .is_empty()
        .then(|| PullMark::new(job.name()));
    store.forget_pull_mark(id);
    let mut pulled = rsync
        .pull(manifest, &mut progress.sync, mark.as_ref())
        .await?;
    if let Some(mark) = &mark {
        store.note_pull_mark(id, mark.token(), &plan.remote_dir.to_string());
    }
    pulled.add(pull_workers(scene, reached, progress).await?);
    Ok(pulled)
}

/// What a lone instance changed in the remote directory since the last pull that brought
/// everything home (see `remote::pulled`): one command instead of rsync's listing. `None` when
/// not known (never pulled, another boot, no answer).
pub async fn changes_since_pull(scene: &Scene<'_>, session: &Session) -> Option<Checked> {
    let Scene {
        plan,
        store,
        machine,
        ..
    } = *scene;
    let id = &machine.head().instance.id;
    let token = store.pull_mark(id, &plan.remote_dir.to_string());
    let (1, Some(token)) = (machine.nodes.len(), token) else {
        return None;
    };
    let job = Job::for_dir(&plan.local_dir);
    let (mark, next) = (PullMark::of(job.name(), &token), PullMark::new(job.name()));
    let check = mark.changes_command(&plan.remote_dir, &next);
    let answer = session.run_captured_bytes(&check).await.ok()?;
    let changes = Changes::parse(&answer)?;
    Some(Checked { changes, next })
}

/// What a cluster's other nodes wrote that the head did not comes home too; what they changed
/// otherwise stays beside the head's version, named after the node (`node-K`). After the head.
pub async fn pull_workers(
    scene: &Scene<'_>,
    reached: &Reached,
    progress: &mut Progress,
) -> Result<Pulled> {
    let Scene {
        plan,
        store,
        machine,
        printer,
        ..
    } = *scene;
    let mut pulled = Pulled::default();
    for worker in &reached.workers {
        let node = &machine.nodes[worker.rank].instance.id;
        if worker.session.is_closed() {
            // The run fails for it already (see `cluster`): the others' results still come home.
            printer.warn(&format!(
                "node {} ({node}) is gone: what only it held cannot come home",
                worker.rank
            ));
            continue;
        }
        let label = format!("node-{}", worker.rank);
        let mut theirs = Manifest::load(&store.manifest_path(node));
        let theirs = rsync(plan, &worker.session, &reached.remote_dir, printer, &label)?
            .pull(&mut theirs, &mut progress.sync, None)
            .await
            .with_context(|| {
                format!("cannot bring home what node {} ({node}) wrote", worker.rank)
            })?;
        pulled.add(theirs);
    }
    Ok(pulled)
}

/// The final pull once nothing runs there any more, signals noted from now on; then the
/// results are home (but with --no-rsync after a pull that did not complete).
pub async fn pull_home(
    scene: &Scene<'_>,
    reached: &Reached,
    manifest: &mut Manifest,
    progress: &mut Progress,
) -> Result<()> {
    let _notes = NoteSignals::start(scene.interrupt, scene.printer);
    let after = scene.interrupt.only_new();
    progress.results_home = pull_results(scene, reached, manifest, progress, &after).await?;
    Ok(())
}
