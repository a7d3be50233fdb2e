//! One run, start to end: acquire this directory's instance, connect, sync up, run the
//! command, pull results back, then apply the end-of-life policy. Results come home before
//! anything is terminated; an instance whose results could not come home is stopped, not
//! terminated.

use std::fmt;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use crate::backoff::Backoff;
use crate::cli::Cli;
use crate::cloud::{Cloud, State};
use crate::config::{EndOfLife, HostPort, Sources};
use crate::fleet::end_of_life::{self, Origin};
use crate::fleet::{Machine, acquire};
use crate::interrupt::{Interrupt, Interrupted};
use crate::keys::KeyStore;
use crate::lock::DirLock;
use crate::plan::{Host, Plan};
use crate::printer::{Printer, format_duration};
use crate::remote::{self, RemoteDir, RunRecord};
use crate::ssh::{RemoteExit, Session, Target, run_command};
use crate::sync::{Conflict, Manifest, Rsync};

/// Reads the settings, validates them, and runs; returns the exit status to use.
pub fn start(cli: &Cli, printer: &Printer) -> Result<i32> {
    let host = Host::detect()?;
    let env = |name: &str| std::env::var(name).ok();
    let sources = Sources {
        user_config: host.user_config.clone(),
        project_config: host.cwd.join(Sources::PROJECT_FILE),
        home: host.home.clone(),
        env: &env,
    };
    let plan = Plan::new(cli, sources.load(cli)?, &host)?;
    let runtime = tokio::runtime::Runtime::new().context("cannot start the async runtime")?;
    let code = runtime.block_on(run(&plan, printer));
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

/// How far the run got, which decides what end of life is safe.
#[derive(Default)]
struct Progress {
    command_started: bool,
    exit: Option<RemoteExit>,
    /// The command is over and its results are home (pulled back, or --no-rsync).
    results_home: bool,
    /// Files changed on both sides, whose instance version was saved beside them.
    conflicts: Vec<Conflict>,
}

async fn run(plan: &Plan, printer: &Printer) -> Result<i32> {
    let started = Instant::now();
    let _lock = DirLock::acquire(&plan.state_dir, &plan.local_dir)?;
    let interrupt = Interrupt::install()?;
    let cloud = Cloud::connect(plan.region.as_deref()).await;
    tracing::debug!(
        "run in {}: {}, image {:?}, remote dir {}, end of life {:?}, pty {}",
        cloud.region,
        plan.launch.instance_type,
        plan.launch.image,
        plan.remote_dir,
        plan.end_of_life,
        plan.pty
    );
    let store = KeyStore::new(&plan.state_dir);
    let machine = acquire(&cloud, plan, &store, printer, &interrupt).await?;

    let mut progress = Progress::default();
    let work = work(
        &cloud,
        plan,
        &machine,
        &store,
        printer,
        &interrupt,
        &mut progress,
    )
    .await;
    // Only a signal before the end of life cuts the run short; later ones change nothing.
    let interrupted = interrupt.first();
    let work = work.map_err(|e| {
        // Said before the end of life, so the user knows why the instance is handled as it is.
        if !e.is::<Interrupted>() {
            printer.error(&e);
        }
        AlreadyReported
    });

    let (action, why) = end_of_life::safe_action(
        plan.end_of_life,
        machine.origin,
        progress.command_started,
        progress.results_home,
    );
    if let Some(why) = why {
        printer.warn(&format!("{}: {why}", machine.instance.id));
    }
    let ended = {
        let _notes = NoteSignals::start(&interrupt, printer);
        end_of_life::apply(&cloud, &store, &machine.instance, action, printer).await
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
    printer.info(&format!(
        "{} ({}, {}): {}, {fate}",
        machine.instance.id,
        machine.instance.instance_type,
        cloud.region,
        format_duration(started.elapsed()),
    ));
    match (interrupted, work, ended) {
        (Some(signal), _, Err(end)) => {
            printer.error(&end);
            Err(Interrupted(signal).into())
        }
        (Some(signal), _, Ok(())) => Err(Interrupted(signal).into()),
        (None, _, Err(end)) => Err(end),
        (None, Err(reported), Ok(())) => Err(reported.into()),
        (None, Ok(()), Ok(())) => Ok(progress.exit.map_or(255, |exit| exit.code())),
    }
}

/// Once the command is over, a signal cannot cut the run short without losing results or
/// leaving an instance running: say so rather than ignore it silently.
struct NoteSignals(tokio::task::JoinHandle<()>);

impl NoteSignals {
    fn start(interrupt: &Interrupt, printer: &Printer) -> NoteSignals {
        let mut interrupt = interrupt.only_new();
        let printer = printer.clone();
        NoteSignals(tokio::spawn(async move {
            loop {
                let (_, signal) = interrupt.next().await;
                printer.warn(&format!(
                    "{signal}: finishing first, so that nothing is lost or left running"
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

/// Connect, sync up, run, pull back. `progress` records how far it got, even on error.
async fn work(
    cloud: &Cloud,
    plan: &Plan,
    machine: &Machine,
    store: &KeyStore,
    printer: &Printer,
    interrupt: &Interrupt,
    progress: &mut Progress,
) -> Result<()> {
    // One boot deadline for the instance to run and its sshd to let us in.
    let deadline = Instant::now() + plan.boot_timeout;
    let target = interrupt
        .cancel(wait_for_ssh_target(cloud, plan, machine, deadline, printer))
        .await?;
    let session = interrupt
        .cancel(connect(&target, deadline, printer))
        .await?;

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
    let id = &machine.instance.id;
    let mut manifest = Manifest::load(&store.manifest_path(id));
    if let Some(sync) = &plan.sync {
        if let Some(warning) = crate::sync::outdated_warning(sync.version, &plan.state_dir) {
            printer.warn(&warning);
        }
        let rsync = rsync(plan, &session, &remote_dir, printer, id)?;
        if machine.origin != Origin::Launched {
            // An earlier run's results may still be only there: home first, so that the push
            // cannot overwrite them.
            let phase = printer.phase(format!(
                "bringing home what changed in {} since the last sync",
                plan.remote_dir
            ));
            interrupt
                .cancel(rsync.pull(&mut manifest, &mut progress.conflicts))
                .await?;
            phase.done("up to date with the instance");
        }
        let phase = printer.phase(format!("syncing this directory to {}", plan.remote_dir));
        interrupt.cancel(rsync.push(&mut manifest)).await?;
        phase.done(format!("synced to {}", plan.remote_dir));
    }

    // For as long as the command runs.
    let forwarding = session
        .forward(&plan.local_forwards, &plan.remote_forwards)
        .await?;
    for forward in &plan.local_forwards {
        printer.info(&format!("forwarding -L {}", forward.spec));
    }
    for forward in &plan.remote_forwards {
        printer.info(&format!("forwarding -R {forward}"));
    }

    progress.command_started = true;
    printer.info(&match &plan.command {
        Some(command) => format!("running `{command}` in {}", plan.remote_dir),
        None => format!("opening a shell in {}", plan.remote_dir),
    });
    let record = RunRecord::new();
    // Without a PTY, stdout is a pipe that `| head` may close: it goes through the record.
    let relay_stdout = !plan.pty;
    let cut_output = record.cut_output_command();
    let ran = run_command(
        &session,
        &record.command_line(&remote_dir, plan.command.as_deref(), relay_stdout),
        relay_stdout.then_some(cut_output.as_str()),
        plan.pty,
        plan.forward_stdin,
        interrupt,
        printer,
    )
    .await;
    drop(forwarding);
    let _notes = NoteSignals::start(interrupt, printer);
    if let Ok(RemoteExit::Signal(signal)) = &ran {
        printer.warn(&format!("the remote command was killed by signal {signal}"));
    }
    progress.exit = ran.as_ref().ok().cloned();

    // The pull starts only once the command is known to have ended: after a hang-up or a lost
    // connection, what is left of it is ended first, so that nothing still writes.
    let after = async {
        let session =
            session_after_command(cloud, plan, machine, &target, session, printer).await?;
        if ran.is_err() {
            end_command(&session, &record, printer).await?;
        }
        Ok::<_, anyhow::Error>(session)
    };
    let session = match (after.await, &ran) {
        (Ok(session), _) => session,
        (Err(e), Err(lost)) => return Err(e.context(format!("{lost:#}"))),
        (Err(e), Ok(_)) => return Err(e),
    };

    let pulled = match &plan.sync {
        None => Ok(()),
        Some(_) => {
            let phase = printer.phase(format!("pulling results back from {}", plan.remote_dir));
            let pulled = rsync(plan, &session, &remote_dir, printer, id)?
                .pull(&mut manifest, &mut progress.conflicts)
                .await;
            match pulled {
                Ok(()) => {
                    phase.done("pulled results back");
                    Ok(())
                }
                Err(e) if session.is_closed() => {
                    Err(stopped_under_the_run(cloud, id).await.unwrap_or(e))
                }
                Err(e) => Err(e),
            }
        }
    };
    if let Err(e) = session.run_captured(&record.cleanup_command()).await {
        tracing::debug!("leaving the run's record on the instance: {e:#}");
    }
    session.close().await;
    progress.results_home = pulled.is_ok();
    ran?;
    pulled
}

/// The session to go on with once the command is over: the same one, or a new one if it
/// dropped (a network change), unless the instance stopped under the run.
async fn session_after_command(
    cloud: &Cloud,
    plan: &Plan,
    machine: &Machine,
    target: &Target,
    session: Arc<Session>,
    printer: &Printer,
) -> Result<Arc<Session>> {
    if !session.is_closed() {
        return Ok(session);
    }
    if let Some(gone) = stopped_under_the_run(cloud, &machine.instance.id).await {
        return Err(gone);
    }
    connect(target, Instant::now() + plan.boot_timeout, printer).await
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

/// Ends what is left of the command (its whole process group: SIGTERM, then SIGKILL) and
/// waits until nothing of it runs.
async fn end_command(session: &Session, record: &RunRecord, printer: &Printer) -> Result<()> {
    let phase = printer.phase("ending what is left of the remote command before the pull");
    let started = Instant::now();
    let mut backoff = Backoff::new(Duration::from_secs(1));
    let mut signal = "TERM";
    loop {
        let answer = session.run_captured(&record.signal_command(signal)).await?;
        if answer.lines().last() != Some("alive") {
            phase.done("the remote command has ended");
            return Ok(());
        }
        signal = match started.elapsed() {
            waited if waited >= END_TIMEOUT => bail!(
                "the remote command still runs after SIGKILL: its results cannot be pulled safely"
            ),
            waited if waited >= KILL_AFTER => "KILL",
            _ => "0",
        };
        tokio::time::sleep(backoff.next_delay()).await;
    }
}

/// How long a command has to end on SIGTERM before SIGKILL, and to be gone after that.
const KILL_AFTER: Duration = Duration::from_secs(10);
const END_TIMEOUT: Duration = Duration::from_secs(30);

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

/// Waits until the instance runs and says where its sshd is.
async fn wait_for_ssh_target(
    cloud: &Cloud,
    plan: &Plan,
    machine: &Machine,
    deadline: Instant,
    printer: &Printer,
) -> Result<Target> {
    let id = &machine.instance.id;
    let phase = printer.phase(format!("waiting for {id} to run"));
    let running = cloud.wait_until(id, State::Running, deadline).await?;
    let address = match &plan.connect {
        Some(address) => address.clone(),
        None => HostPort {
            host: running
                .address()
                .with_context(|| {
                    format!("{id} has no IP address: pass --connect HOST:PORT (e.g. an SSM tunnel)")
                })?
                .to_string(),
            port: 22,
        },
    };
    phase.done(format!("{id} is running"));
    Ok(Target {
        address,
        user: machine.user.clone(),
        keys: machine.keys.clone(),
    })
}

async fn connect(target: &Target, deadline: Instant, printer: &Printer) -> Result<Arc<Session>> {
    let phase = printer.phase(format!("connecting to {}@{}", target.user, target.address));
    let session = Session::connect(target, deadline, &phase).await?;
    phase.done(format!("connected to {}@{}", target.user, target.address));
    Ok(Arc::new(session))
}
