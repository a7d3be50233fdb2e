//! One run, start to end: acquire this directory's instance, connect, sync up, run the
//! command, pull results back, then apply the end-of-life policy. Results come home before
//! anything is terminated; an instance whose results could not come home is stopped, not
//! terminated.

use std::fmt;
use std::sync::Arc;
use std::time::Instant;

use anyhow::{Context, Result};

use crate::acquire::{Machine, acquire};
use crate::cli::Cli;
use crate::cloud::{Cloud, State};
use crate::config::{EndOfLife, HostPort, Sources};
use crate::end_of_life;
use crate::interrupt::{Interrupt, Interrupted};
use crate::keys::KeyStore;
use crate::lock::DirLock;
use crate::plan::{Host, Plan};
use crate::printer::{Printer, format_duration};
use crate::remote::{self, RemoteDir};
use crate::ssh::{RemoteExit, Session, Target, run_command};
use crate::sync::Rsync;

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
    let work = work(&cloud, plan, &machine, printer, &interrupt, &mut progress).await;
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
    if plan.sync.is_some() {
        let phase = printer.phase(format!("syncing this directory to {}", plan.remote_dir));
        interrupt
            .cancel(rsync(plan, &session, &remote_dir, printer)?.push())
            .await?;
        phase.done(format!("synced to {}", plan.remote_dir));
    }

    progress.command_started = true;
    printer.info(&match &plan.command {
        Some(command) => format!("running `{command}` in {}", plan.remote_dir),
        None => format!("opening a shell in {}", plan.remote_dir),
    });
    let command_line = remote::command_line(&remote_dir, plan.command.as_deref());
    let ran = run_command(
        &session,
        &command_line,
        plan.pty,
        plan.forward_stdin,
        interrupt,
        printer,
    )
    .await;
    let _notes = NoteSignals::start(interrupt, printer);
    if let Ok(RemoteExit::Signal(signal)) = &ran {
        printer.warn(&format!("the remote command was killed by signal {signal}"));
    }
    progress.exit = ran.as_ref().ok().cloned();

    let pulled = match &plan.sync {
        None => Ok(()),
        Some(_) => {
            // The command may have ended with the connection (a reboot, a network drop).
            let session = match session.is_closed() {
                true => connect(&target, Instant::now() + plan.boot_timeout, printer).await?,
                false => session,
            };
            let phase = printer.phase(format!("pulling results back from {}", plan.remote_dir));
            let pulled = rsync(plan, &session, &remote_dir, printer)?.pull().await;
            if pulled.is_ok() {
                phase.done("pulled results back");
            }
            session.close().await;
            pulled
        }
    };
    // A command whose end was not seen may still be writing results.
    progress.results_home = pulled.is_ok() && ran.is_ok();
    ran?;
    pulled
}

fn rsync<'a>(
    plan: &'a Plan,
    session: &Arc<Session>,
    remote_dir: &RemoteDir,
    printer: &Printer,
) -> Result<Rsync<'a>> {
    let sync = plan
        .sync
        .as_ref()
        .context("rsync asked for with --no-rsync")?;
    let list_files = printer.lists_files();
    Rsync::new(
        sync,
        &plan.local_dir,
        remote_dir,
        session.clone(),
        &plan.socket_dir,
        list_files,
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
