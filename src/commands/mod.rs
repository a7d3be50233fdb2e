//! The modes, one file each (`run` also detaches; `attach`; `finish`; `list`, `down` and `gc`
//! for what ssh-ec2 made; `dry_run` and `ssh_config`, which launch nothing; `setup`, for the
//! admin; `show_config` and `generate`, which stay local), and what the instance's modes share:
//! reaching the instance, pulling results home, following a job, and the end of a run (end of
//! life, conflicts, summary line with the cost, exit status).

mod attach;
mod down;
mod dry_run;
mod finish;
mod gc;
mod generate;
mod list;
mod run;
mod setup;
mod show_config;
mod ssh_config;

use std::fmt;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use crate::backoff::Backoff;
use crate::cli::{Cli, Mode};
use crate::cloud::{Cloud, Instance, State};
use crate::config::{EndOfLife, HostPort, Sources};
use crate::fleet::end_of_life;
use crate::fleet::{self, Machine};
use crate::interrupt::{Interrupt, Interrupted};
use crate::keys::KeyStore;
use crate::lock::DirLock;
use crate::plan::{Host, Plan};
use crate::printer::{Printer, format_duration};
use crate::remote::job::{Job, JobState, Multiplexer};
use crate::remote::lease::{self, Lease};
use crate::remote::watchdog::Limit;
use crate::remote::{self, RemoteDir};
use crate::ssh::forward::Forwarding;
use crate::ssh::{RemoteExit, Session, Target, run_command};
use crate::sync::{Conflict, Manifest, Rsync};

/// Runs the mode `cli` asks for; returns the exit status to use.
pub fn start(cli: &Cli, printer: &Printer) -> Result<i32> {
    let mode = cli.mode();
    // Before anything is looked up: works anywhere, with no settings and no rsync.
    if let Mode::Generate(what) = mode {
        return generate::generate(what);
    }
    let host = Host::detect()?;
    match mode {
        Mode::Generate(_) => unreachable!("handled above"),
        Mode::ShowConfig => show_config::show_config(cli, &sources(&host)),
        Mode::Setup { dry_run } => setup::setup(cli, &sources(&host), dry_run),
        Mode::Run => on_instance(cli, &host, async |plan| {
            run::run(plan, printer, false).await
        }),
        Mode::Detach => on_instance(cli, &host, async |plan| run::run(plan, printer, true).await),
        Mode::Attach => on_instance(cli, &host, async |plan| attach::attach(plan, printer).await),
        Mode::Finish { attach } => on_instance(cli, &host, async |plan| {
            finish::finish(plan, printer, attach).await
        }),
        Mode::List { json, all_regions } => on_instance(cli, &host, async |plan| {
            list::list(plan, printer, json, all_regions).await
        }),
        Mode::Down => on_instance(cli, &host, async |plan| down::down(plan, printer).await),
        Mode::Gc { yes, all_regions } => on_instance(cli, &host, async |plan| {
            gc::gc(plan, printer, yes, all_regions).await
        }),
        Mode::DryRun { json } => {
            on_instance(cli, &host, async |plan| dry_run::dry_run(plan, json).await)
        }
        Mode::SshConfig { install } => on_instance(cli, &host, async |plan| {
            ssh_config::ssh_config(plan, &host.home, install, printer).await
        }),
    }
}

/// Where this machine's and this directory's settings come from.
fn sources(host: &Host) -> Sources<'static> {
    fn process_env(name: &str) -> Option<String> {
        std::env::var(name).ok()
    }
    Sources {
        user_config: host.user_config.clone(),
        project_config: host.cwd.join(Sources::PROJECT_FILE),
        dot_env: host.cwd.join(Sources::DOT_ENV),
        home: host.home.clone(),
        env: &process_env,
    }
}

/// Reads the settings, validates them into a plan, and runs `mode` with it.
fn on_instance(
    cli: &Cli,
    host: &Host,
    mode: impl AsyncFnOnce(&Plan) -> Result<i32>,
) -> Result<i32> {
    let plan = Plan::new(cli, sources(host).load(cli)?.values, host)?;
    let runtime = tokio::runtime::Runtime::new().context("cannot start the async runtime")?;
    let code = runtime.block_on(mode(&plan));
    // A blocked read of local stdin must not hold the exit.
    runtime.shutdown_background();
    code
}

/// An error already printed (the run's, before its end of life): `main` only sets the status.
#[derive(Debug)]
pub struct AlreadyReported;

impl fmt::Display for AlreadyReported {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("the run failed (reported above)")
    }
}

impl std::error::Error for AlreadyReported {}

/// How far a run got, which decides what end of life is safe.
#[derive(Default)]
struct Progress {
    command_started: bool,
    exit: Option<RemoteExit>,
    /// The command is over and its results are home (pulled back, or --no-rsync).
    results_home: bool,
    /// A job goes on in tmux/screen: the instance stays as it is, whatever the policy.
    job_goes_on: bool,
    /// Files changed on both sides, whose instance version was saved beside them.
    conflicts: Vec<Conflict>,
    /// This run's lease on the instance, once it reached it.
    presence: Option<Presence>,
    /// The last session to the instance, to drop the lease and see who else is there.
    session: Option<Arc<Session>>,
}

/// This run's lease on the shared instance (see `remote::lease`), touched while it lives.
struct Presence {
    lease: Lease,
    renewing: tokio::task::JoinHandle<()>,
}

impl Presence {
    async fn take(session: &Arc<Session>, job: &Job) -> Result<Presence> {
        let lease = Lease::new(job.name());
        session.run_captured(&lease.take_command()).await?;
        let renew = lease.renew_command();
        let session = session.clone();
        let renewing = tokio::spawn(async move {
            loop {
                tokio::time::sleep(lease::RENEW_EVERY).await;
                if let Err(e) = session.run_captured(&renew).await {
                    tracing::debug!("could not renew the lease: {e:#}");
                }
            }
        });
        Ok(Presence { lease, renewing })
    }

    /// Drops the lease; whether anyone else still uses the instance: another run's live
    /// lease, or this directory's job still running.
    async fn release(self, session: &Session, job: &Job) -> Result<bool> {
        self.renewing.abort();
        let answer = session.run_captured(&self.lease.release_command()).await?;
        let others: u32 = answer
            .lines()
            .last()
            .and_then(|l| l.trim().parse().ok())
            .context("cannot count the other runs' leases on the instance")?;
        let job_runs = matches!(job_state(session, job).await?, JobState::Running(_));
        Ok(others > 0 || job_runs)
    }
}

/// What every mode opens before it knows the instance: signal handling, AWS, the keys.
struct Ground {
    interrupt: Interrupt,
    cloud: Cloud,
    store: KeyStore,
}

impl Ground {
    async fn open(plan: &Plan) -> Result<Ground> {
        Ok(Ground {
            interrupt: Interrupt::install()?,
            cloud: Cloud::connect(plan.region.as_deref(), plan.aws_profile.as_deref()).await,
            store: KeyStore::new(&plan.state_dir),
        })
    }

    /// Takes the directory's lock, waiting for another run's (Ctrl-C ends the wait).
    async fn lock(&self, plan: &Plan, printer: &Printer) -> Result<DirLock> {
        DirLock::wait(
            &plan.state_dir,
            &plan.local_dir,
            printer,
            Some(&self.interrupt),
        )
        .await
    }

    /// This directory's instance, reused or launched.
    async fn acquire(&self, plan: &Plan, printer: &Printer) -> Result<Machine> {
        fleet::acquire(&self.cloud, plan, &self.store, printer, &self.interrupt).await
    }

    /// This directory's instance, never launched; a stopped one is started if `start`.
    async fn find(&self, plan: &Plan, printer: &Printer, start: bool) -> Result<Machine> {
        fleet::find(
            &self.cloud,
            plan,
            &self.store,
            printer,
            &self.interrupt,
            start,
        )
        .await
    }

    /// This directory's instance to end, if it has one (started if stopped, to pull from it).
    async fn find_to_end(&self, plan: &Plan, printer: &Printer) -> Result<Option<Machine>> {
        fleet::find_to_end(&self.cloud, plan, &self.store, printer, &self.interrupt).await
    }

    fn scene<'a>(
        &'a self,
        plan: &'a Plan,
        machine: &'a Machine,
        printer: &'a Printer,
    ) -> Scene<'a> {
        Scene {
            cloud: &self.cloud,
            plan,
            store: &self.store,
            machine,
            interrupt: &self.interrupt,
            printer,
        }
    }
}

/// What a mode works with once this directory's instance is known.
struct Scene<'a> {
    cloud: &'a Cloud,
    plan: &'a Plan,
    store: &'a KeyStore,
    machine: &'a Machine,
    interrupt: &'a Interrupt,
    printer: &'a Printer,
}

/// Applies the end of life that is safe after `work`, reports, and gives the exit status.
async fn end_of_run(
    scene: &Scene<'_>,
    work: Result<()>,
    progress: Progress,
    started: Instant,
) -> Result<i32> {
    let Scene {
        cloud,
        plan,
        store,
        machine,
        interrupt,
        printer,
    } = *scene;
    // The last one out applies the end of life: the others' leases are read under the lock.
    let _lock = DirLock::wait(&plan.state_dir, &plan.local_dir, printer, None).await?;
    let mut progress = progress;
    let shared = match (progress.presence.take(), progress.session.take()) {
        (Some(presence), Some(session)) => {
            let job = Job::for_dir(&plan.local_dir);
            let shared = presence.release(&session, &job).await;
            session.close().await;
            Some(shared)
        }
        // Never reached the instance: nobody could join it meanwhile.
        _ => None,
    };
    // A stopped instance runs nobody's work: its end of life cannot hurt another run.
    let shared = match shared {
        Some(Err(e)) => match stopped_under_the_run(cloud, &machine.instance.id).await {
            Some(_) => None,
            None => Some(Err(e)),
        },
        shared => shared,
    };
    // Only a signal before the end of life cuts the run short; later ones change nothing.
    let interrupted = interrupt.first();
    let work = work.map_err(|e| {
        // Said before the end of life, so the user knows why the instance is handled as it is.
        if !e.is::<Interrupted>() {
            printer.error(&e);
        }
        AlreadyReported
    });
    let (action, why) = match (progress.job_goes_on, shared) {
        (true, _) => (EndOfLife::Leave, None),
        (false, Some(Ok(true))) => (
            EndOfLife::Leave,
            Some("another run of this directory (or its job) still uses it: leaving it running; the last one out applies the end of life".to_string()),
        ),
        (false, Some(Err(e))) if plan.end_of_life != EndOfLife::Leave => (
            EndOfLife::Leave,
            Some(format!("could not check whether another run still uses it ({e:#}): leaving it running; `ssh-ec2 --terminate true` here ends it")),
        ),
        _ => {
            let (action, why) = end_of_life::safe_action(
                plan.end_of_life,
                machine.origin,
                progress.command_started,
                progress.results_home,
            );
            (action, why.map(str::to_string))
        }
    };
    let (action, why) = end_of_life::for_spot(&machine.instance, action, why);
    if let Some(why) = why {
        printer.warn(&format!("{}: {why}", machine.instance.id));
    }
    let ended = {
        let _notes = NoteSignals::start(interrupt, printer);
        end_of_life::apply(cloud, store, &machine.instance, action, printer).await
    };
    for conflict in &progress.conflicts {
        printer.warn(&format!(
            "{} changed both here and on the instance: kept yours, and saved the instance's as {}",
            conflict.path.display(),
            conflict.saved_as.display()
        ));
    }
    let fate = match (&ended, action) {
        (Err(_), _) => "end of life failed",
        (Ok(()), EndOfLife::Terminate) => "terminated",
        (Ok(()), EndOfLife::Stop) => "stopped",
        (Ok(()), EndOfLife::Leave) => "left running",
    };
    let elapsed = started.elapsed();
    let hourly = crate::price::hourly(
        cloud,
        &machine.instance.instance_type,
        machine.instance.spot,
        machine.instance.zone.as_deref(),
    )
    .await;
    let stopped = match (&ended, action) {
        (Ok(()), EndOfLife::Stop) => crate::price::stopped_cost(&cloud.region, machine.volume_gib)
            .map(|cost| format!("; {cost}")),
        _ => None,
    };
    printer.info(&format!(
        "{} ({}, {}): {}, {fate}, {}{}",
        machine.instance.id,
        machine.instance.instance_type,
        cloud.region,
        format_duration(elapsed),
        crate::price::run_cost(
            hourly.as_ref(),
            &machine.instance.instance_type,
            &cloud.region,
            elapsed,
            machine.volume_gib
        ),
        stopped.unwrap_or_default(),
    ));
    match (interrupted, work, ended) {
        // Something the run made is still alive against the policy: that outweighs the signal.
        (Some(_), _, Err(end)) => Err(end),
        (Some(signal), _, Ok(())) => Err(Interrupted(signal).into()),
        (None, _, Err(end)) => Err(end),
        (None, Err(reported), Ok(())) => Err(reported.into()),
        (None, Ok(()), Ok(())) => Ok(progress.exit.map_or(255, |exit| exit.code())),
    }
}

/// How many signals after the command give up the pull.
const SKIP_THE_PULL: u32 = 2;

/// Once the command is over, a signal cannot cut the run short without losing results or
/// leaving an instance running: say so rather than ignore it silently.
struct NoteSignals(tokio::task::JoinHandle<()>);

impl NoteSignals {
    fn start(interrupt: &Interrupt, printer: &Printer) -> NoteSignals {
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

/// The instance, reached: where its sshd is, the session, and the remote directory's path.
struct Reached {
    target: Target,
    session: Arc<Session>,
    remote_dir: RemoteDir,
}

/// Waits until the instance runs and its sshd lets us in (one boot deadline for both), then
/// makes sure the remote directory exists.
async fn reach(scene: &Scene<'_>) -> Result<Reached> {
    let Scene {
        plan,
        interrupt,
        printer,
        ..
    } = *scene;
    let deadline = Instant::now() + plan.boot_timeout;
    let target = interrupt
        .cancel(wait_for_ssh_target(scene, deadline))
        .await?;
    let id = &scene.machine.instance.id;
    if let Err(e) =
        ssh_config::refresh_installed(plan, scene.store, id, &target.user, &target.address)
    {
        printer.warn(&format!(
            "{e:#}: `ssh-ec2 --ssh-config --install` writes the OpenSSH entry of {id} again"
        ));
    }
    let session = interrupt
        .cancel(connect(&target, deadline, printer))
        .await?;
    // Every connection re-arms the dead-man switch with this run's settings.
    let job = Job::for_dir(&plan.local_dir);
    session
        .run_captured(&plan.watchdog.arm_command(&job))
        .await
        .context("cannot re-arm the instance's dead-man switch (~/.ssh-ec2/watchdog)")?;
    if plan.watchdog.max_lifetime == Limit::Off {
        let until = match plan.watchdog.idle_stop {
            Limit::Off => "never stops by itself".to_string(),
            idle => format!("runs (and is billed) as long as it is used, until {idle} idle"),
        };
        printer.warn(&format!(
            "--max-lifetime off: {} {until}; end it yourself with `ssh-ec2 --terminate true` here",
            scene.machine.instance.id
        ));
    }
    let pwd = session
        .run_captured(&remote::prepare_dir_command(&plan.remote_dir))
        .await?;
    // The last line: a chatty shell profile may print before `pwd` does.
    let remote_dir =
        RemoteDir::parse(pwd.lines().last().unwrap_or_default()).with_context(|| {
            format!(
                "the instance did not report the path of {}: check --remote-dir",
                plan.remote_dir
            )
        })?;
    Ok(Reached {
        target,
        session,
        remote_dir,
    })
}

/// Waits until the instance runs and says where its sshd is.
async fn wait_for_ssh_target(scene: &Scene<'_>, deadline: Instant) -> Result<Target> {
    let Scene {
        cloud,
        plan,
        machine,
        printer,
        ..
    } = *scene;
    let id = &machine.instance.id;
    let phase = printer.phase(format!("waiting for {id} to run"));
    let running = cloud.wait_until(id, State::Running, deadline).await?;
    let address = ssh_address(plan, &running)?;
    phase.done(format!("{id} is running"));
    Ok(Target {
        address,
        user: machine.user.clone(),
        keys: machine.keys.clone(),
    })
}

/// Where the instance's sshd is reached: --connect, else its address, port 22.
fn ssh_address(plan: &Plan, instance: &Instance) -> Result<HostPort> {
    if let Some(address) = &plan.connect {
        return Ok(address.clone());
    }
    let host = instance.address().with_context(|| {
        format!(
            "{} has no IP address: pass --connect HOST:PORT (e.g. an SSM tunnel)",
            instance.id
        )
    })?;
    Ok(HostPort {
        host: host.to_string(),
        port: 22,
    })
}

async fn connect(target: &Target, deadline: Instant, printer: &Printer) -> Result<Arc<Session>> {
    let phase = printer.phase(format!("connecting to {}@{}", target.user, target.address));
    let session = Session::connect(target, deadline, &phase).await?;
    phase.done(format!("connected to {}@{}", target.user, target.address));
    Ok(Arc::new(session))
}

/// The session to go on with: the same one, or a new one if it dropped (a network change),
/// unless the instance stopped under the run.
async fn reconnect_if_closed(
    scene: &Scene<'_>,
    target: &Target,
    session: Arc<Session>,
) -> Result<Arc<Session>> {
    if !session.is_closed() {
        return Ok(session);
    }
    if let Some(gone) = stopped_under_the_run(scene.cloud, &scene.machine.instance.id).await {
        return Err(gone);
    }
    let deadline = Instant::now() + scene.plan.reconnect_timeout;
    connect(target, deadline, scene.printer).await
}

/// Why the connection went away, when it is because the instance stopped (a shutdown from
/// inside it) or was terminated.
async fn stopped_under_the_run(cloud: &Cloud, id: &str) -> Option<anyhow::Error> {
    match cloud.instance(id).await.ok()?.state {
        State::Stopping | State::Stopped => Some(anyhow::anyhow!(
            "{id} stopped under the run (shut down from inside it?); its disk, with the results, \
             is kept: run `ssh-ec2 true` here to start it and bring them home"
        )),
        State::ShuttingDown | State::Terminated => Some(anyhow::anyhow!(
            "{id} was terminated under the run: what was only on it is lost"
        )),
        State::Pending | State::Running => None,
    }
}

fn rsync<'a>(
    plan: &'a Plan,
    session: &Arc<Session>,
    remote_dir: &RemoteDir,
    printer: &'a Printer,
    instance_id: &'a str,
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
        &plan.socket_dir,
        printer,
        instance_id,
    )
}

/// The final pull, once the command has ended; a pull cut by the instance stopping says so.
/// `after_command` sees the signals since the command ended: the second one gives up the pull.
async fn pull_results(
    scene: &Scene<'_>,
    reached: &Reached,
    manifest: &mut Manifest,
    progress: &mut Progress,
    after_command: &Interrupt,
) -> Result<()> {
    let Scene {
        cloud,
        plan,
        machine,
        printer,
        ..
    } = *scene;
    if plan.sync.is_none() {
        return Ok(());
    }
    let id = &machine.instance.id;
    let phase = printer.phase(format!("pulling results back from {}", plan.remote_dir));
    let rsync = rsync(plan, &reached.session, &reached.remote_dir, printer, id)?;
    // A second signal in all gives up the pull: the instance is then stopped, not terminated.
    let pulled = tokio::select! {
        pulled = rsync.pull(manifest, &mut progress.conflicts) => pulled,
        signal = after_command.until_count(SKIP_THE_PULL) => {
            drop(phase);
            let fate = match machine.instance.spot {
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
    match pulled {
        Ok(()) => {
            phase.done("pulled results back");
            Ok(())
        }
        Err(e) if reached.session.is_closed() => {
            Err(stopped_under_the_run(cloud, id).await.unwrap_or(e))
        }
        Err(e) => Err(e),
    }
}

/// The final pull once nothing runs there any more, signals noted from now on; then the
/// results are home.
async fn pull_home(
    scene: &Scene<'_>,
    reached: &Reached,
    manifest: &mut Manifest,
    progress: &mut Progress,
) -> Result<()> {
    let _notes = NoteSignals::start(scene.interrupt, scene.printer);
    let after = scene.interrupt.only_new();
    pull_results(scene, reached, manifest, progress, &after).await?;
    progress.results_home = true;
    Ok(())
}

/// Opens the `-L`/`-R` forwards on `session`, for as long as the result lives.
async fn open_forwards(
    session: &Arc<Session>,
    plan: &Plan,
    printer: &Printer,
    first_time: bool,
) -> Result<Forwarding> {
    let forwarding = session
        .forward(&plan.local_forwards, &plan.remote_forwards, printer)
        .await?;
    if first_time {
        for forward in &plan.local_forwards {
            printer.info(&format!("forwarding -L {}", forward.spec));
        }
        for forward in &plan.remote_forwards {
            printer.info(&format!("forwarding -R {forward}"));
        }
    }
    Ok(forwarding)
}

/// How following a job ended.
enum Followed {
    /// With the shell's status of the command.
    Ended(i32),
    /// The user detached (or a signal came): the job goes on.
    Detached,
    /// AWS is taking the spot instance back: the job will not end by itself.
    Interrupted,
}

/// The job's state, from its record on the instance.
async fn job_state(session: &Session, job: &Job) -> Result<JobState> {
    let answer = session.run_captured(&job.status_command()).await?;
    Job::parse_status(&answer).with_context(|| {
        format!(
            "cannot read the record of job {} on the instance",
            job.name()
        )
    })
}

/// Follows a running job until it ends or the user detaches: attached through a PTY when
/// `attach`, else by watching its record. A dropped connection is re-established (with the
/// forwards) until the reconnect deadline; past it, the job goes on and the error says how to
/// come back.
async fn follow_job(
    scene: &Scene<'_>,
    reached: &mut Reached,
    job: &Job,
    multiplexer: Multiplexer,
    attach: bool,
) -> Result<Followed> {
    let Scene {
        plan,
        machine,
        interrupt,
        printer,
        ..
    } = *scene;
    let mut forwarding = Some(open_forwards(&reached.session, plan, printer, true).await?);
    if attach {
        printer.info(&format!(
            "attaching to job {} ({} leaves it running)",
            job.name(),
            multiplexer.detach_keys()
        ));
    } else {
        printer.info(&format!("waiting for job {} to end", job.name()));
    }
    let mut poll = Backoff::new(Duration::from_secs(5));
    loop {
        let watched = match attach {
            true => {
                let attach_line = job.attach_command(multiplexer);
                let attached = run_command(
                    &reached.session,
                    &attach_line,
                    None,
                    true,
                    true,
                    interrupt,
                    printer,
                );
                tokio::pin!(attached);
                // AWS's interruption notice does not end the view: detach it then, as the
                // detach keys would, and the state below tells what happened.
                tokio::select! {
                    ran = &mut attached => ran.map(drop),
                    () = until_interrupted(machine.instance.spot, async || {
                        let state = job_state(&reached.session, job).await;
                        matches!(state, Ok(JobState::Interrupted(_)))
                    }) => {
                        let detach = job.detach_command(multiplexer);
                        let _ = reached.session.run_captured(&detach).await;
                        attached.await.map(drop)
                    }
                }
            }
            false => interrupt.sleep(poll.next_delay()).await,
        };
        if interrupt.first().is_some() {
            return Ok(Followed::Detached);
        }
        let state = match watched {
            Ok(()) => job_state(&reached.session, job).await,
            Err(lost) => Err(lost),
        };
        match state {
            Ok(JobState::Running(_)) if attach => return Ok(Followed::Detached),
            Ok(JobState::Running(_)) => continue,
            Ok(JobState::Ended(_, status)) => return Ok(Followed::Ended(status)),
            Ok(JobState::Interrupted(_)) => return Ok(Followed::Interrupted),
            Ok(JobState::Lost(_)) => bail!(
                "job {} ended without an exit status (its {multiplexer} session was killed, or \
                 the instance restarted)",
                job.name()
            ),
            Ok(JobState::None) => bail!("the record of job {} is gone", job.name()),
            Err(e) if !reached.session.is_closed() => return Err(e),
            Err(_) => {}
        }
        // The connection dropped: the job goes on over there; come back to it.
        drop(forwarding.take());
        printer.warn("the connection to the instance was lost: reconnecting (the job goes on)");
        let session = reconnect_if_closed(scene, &reached.target, reached.session.clone())
        .await
        .with_context(|| {
            format!(
                "the job goes on on {}: come back with `ssh-ec2 --attach`, or `ssh-ec2 --finish` \
                 to wait for it and bring its results home",
                machine.instance.id
            )
        })?;
        reached.session = session;
        forwarding = Some(open_forwards(&reached.session, plan, printer, false).await?);
    }
}

/// Reaches the instance and takes this run's lease on it; the directory's lock, held until a
/// run that joins can see that lease, is released then.
async fn reach_and_join(
    scene: &Scene<'_>,
    lock: DirLock,
    progress: &mut Progress,
) -> Result<Reached> {
    let reached = reach(scene).await?;
    progress.session = Some(reached.session.clone());
    let job = Job::for_dir(&scene.plan.local_dir);
    progress.presence = Some(Presence::take(&reached.session, &job).await?);
    drop(lock);
    Ok(reached)
}

/// Returns once `marked` finds the spot watch's interruption mark (see `remote::spot_watch`);
/// a failed look (a dropped connection, which ends what is watched anyway) is tried again.
/// Never, but on a spot instance.
async fn until_interrupted(spot: bool, mut marked: impl AsyncFnMut() -> bool) {
    if !spot {
        return std::future::pending().await;
    }
    let mut poll = Backoff::new(Duration::from_secs(5));
    loop {
        tokio::time::sleep(poll.next_delay()).await;
        if marked().await {
            return;
        }
    }
}

/// After following a job: one that goes on keeps the instance; one that ended gives the run its
/// status, and its results come home before its record is forgotten.
async fn conclude_job(
    scene: &Scene<'_>,
    reached: &Reached,
    job: &Job,
    followed: Followed,
    manifest: &mut Manifest,
    progress: &mut Progress,
) -> Result<()> {
    let status = match followed {
        Followed::Detached => {
            progress.job_goes_on = true;
            progress.exit = Some(RemoteExit::Status(0));
            scene.printer.info(&come_back_hint(scene.machine, job));
            return Ok(());
        }
        Followed::Ended(status) => Some(status),
        Followed::Interrupted => {
            scene.printer.warn(&format!(
                "AWS is taking back spot instance {} (interruption notice): bringing home what \
                 job {} has written so far",
                scene.machine.instance.id,
                job.name()
            ));
            None
        }
    };
    progress.command_started = true;
    progress.exit = status.map(|status| RemoteExit::Status(status as u32));
    pull_home(scene, reached, manifest, progress).await?;
    reached.session.run_captured(&job.forget_command()).await?;
    if status.is_none() {
        return Err(taken_back(
            &format!("job {}", job.name()),
            &scene.machine.instance.id,
        ));
    }
    Ok(())
}

/// The error of a run whose `what` (a job, the command) AWS cut short by taking back its spot
/// instance, once what it wrote is home.
fn taken_back(what: &str, id: &str) -> anyhow::Error {
    anyhow::anyhow!(
        "{what} was cut short: AWS took back spot instance {id}; what it had written is home \
         (run it again, or without --spot)"
    )
}

/// How to come back to a job that goes on.
fn come_back_hint(machine: &Machine, job: &Job) -> String {
    format!(
        "job {} goes on on {}: `ssh-ec2 --attach` to watch it, `ssh-ec2 --finish` to wait for \
         it, bring its results home and end the instance",
        job.name(),
        machine.instance.id
    )
}
