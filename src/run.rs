//! One run, start to end: find or launch this directory's instance, connect, sync up, run the
//! command, pull results back, then apply the end-of-life policy. Results come home before
//! anything is terminated; an instance whose results could not come home is stopped, not
//! terminated.

use std::sync::Arc;
use std::time::Instant;

use anyhow::{Context, Result};
use ipnet::IpNet;

use crate::cli::Cli;
use crate::cloud::userdata::UserData;
use crate::cloud::{Cloud, Instance, LaunchRequest, State, caller_cidr, guess_user};
use crate::config::{EndOfLife, HostPort, Sources};
use crate::end_of_life::{self, Origin};
use crate::interrupt::{Interrupt, Interrupted};
use crate::keys::{InstanceKeys, KeyStore, LoginKey};
use crate::plan::{Host, ImageChoice, Ingress, Plan};
use crate::printer::{Printer, Verbosity, format_duration};
use crate::remote::{self, RemoteDir};
use crate::ssh::relay::Relay;
use crate::ssh::{RemoteExit, Session, Target, run_command};
use crate::sync::Rsync;

/// Reads the settings, validates them, and runs; returns the exit status to use.
pub fn start(cli: &Cli, printer: Printer) -> Result<i32> {
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

/// The instance of this run and how to log in to it.
struct Machine {
    instance: Instance,
    keys: InstanceKeys,
    user: String,
    origin: Origin,
}

/// How far the run got, which decides what end of life is safe.
#[derive(Default)]
struct Progress {
    command_started: bool,
    exit: Option<RemoteExit>,
    /// The results are home: pulled back, or nothing to pull (--no-rsync).
    results_home: bool,
}

async fn run(plan: &Plan, printer: Printer) -> Result<i32> {
    let started = Instant::now();
    let interrupt = Interrupt::install();
    let cloud = Cloud::connect(plan.region.as_deref()).await;
    let store = KeyStore::new(&plan.state_dir);
    let machine = acquire(&cloud, plan, &store, printer, &interrupt).await?;

    let mut progress = Progress::default();
    let work = work(&cloud, plan, &machine, printer, &interrupt, &mut progress).await;
    if let Err(e) = &work {
        printer.error(e);
    }

    let (action, why) = end_of_life::safe_action(
        plan.end_of_life,
        machine.origin,
        progress.command_started,
        progress.results_home,
    );
    if let Some(why) = why {
        printer.warn(&format!("{}: {why}", machine.instance.id));
    }
    let note_task = tokio::spawn(explain_further_interrupts(interrupt.only_new(), printer));
    let ended = end_of_life::apply(&cloud, &store, &machine.instance, action, printer).await;
    note_task.abort();

    let fate = match (&ended, action) {
        (Err(_), _) => "end of life failed",
        (Ok(()), EndOfLife::Terminate) => "terminated",
        (Ok(()), EndOfLife::Stop) => "stopped",
        (Ok(()), EndOfLife::Leave) => "left running",
    };
    printer.info(&format!(
        "{} ({}, {}): {}, {}",
        machine.instance.id,
        machine.instance.instance_type,
        cloud.region,
        format_duration(started.elapsed()),
        fate
    ));
    if interrupt.happened() {
        return Err(Interrupted.into());
    }
    match (work, ended) {
        // The run's error was printed already; report the end-of-life one too.
        (Err(_), Err(end)) => Err(end.context("the run failed, and so did its end of life")),
        (Err(e), Ok(())) => {
            Err(e.context("the run failed (see above); the instance was handled as shown"))
        }
        (Ok(()), Err(end)) => Err(end),
        (Ok(()), Ok(())) => Ok(progress.exit.map_or(255, |exit| exit.code())),
    }
}

/// After the command, Ctrl-C cannot cut the run short without losing results or leaving an
/// instance running: say so rather than ignore it silently.
async fn explain_further_interrupts(mut interrupt: Interrupt, printer: Printer) {
    loop {
        interrupt.next().await;
        printer.warn("Ctrl-C: finishing the end of life first, so nothing is lost or left running");
    }
}

/// Finds this directory's instance (starting it if stopped), or launches one.
async fn acquire(
    cloud: &Cloud,
    plan: &Plan,
    store: &KeyStore,
    printer: Printer,
    interrupt: &Interrupt,
) -> Result<Machine> {
    let phase = printer.phase(format!(
        "looking for this directory's instance in {}",
        cloud.region
    ));
    let found = cloud.find_owned(&plan.ownership).await?;
    drop(phase);
    if interrupt.happened() {
        return Err(Interrupted.into());
    }
    match found {
        Some(instance) => reuse(cloud, plan, store, instance, printer).await,
        None => launch(cloud, plan, store, printer, interrupt).await,
    }
}

async fn reuse(
    cloud: &Cloud,
    plan: &Plan,
    store: &KeyStore,
    instance: Instance,
    printer: Printer,
) -> Result<Machine> {
    let keys = store.load(&instance.id, &plan.login)?;
    let user = plan
        .launch
        .user
        .clone()
        .or(instance.login_user.clone())
        .unwrap_or_else(|| guess_user("").into());
    let phase = printer.phase(format!(
        "reusing {} ({})",
        instance.id,
        instance.state.as_str()
    ));
    let origin = match instance.state {
        State::Pending | State::Running => Origin::FoundRunning,
        _ => Origin::FoundStopped,
    };
    if instance.state == State::Stopping {
        phase.update(format!("waiting for {} to finish stopping", instance.id));
        cloud
            .wait_until(
                &instance.id,
                State::Stopped,
                Instant::now() + end_of_life::TRANSITION_TIMEOUT,
            )
            .await?;
    }
    if matches!(instance.state, State::Stopping | State::Stopped) {
        phase.update(format!("starting {}", instance.id));
        cloud.start(&instance.id).await?;
    }
    if let Some(group) = &instance.security_group {
        // This machine's address may have changed since the instance was launched.
        cloud
            .allow_ssh_from(group, ingress_cidr(&plan.ingress).await?)
            .await?;
    }
    phase.done(format!("reusing {}", instance.id));
    Ok(Machine {
        instance,
        keys,
        user,
        origin,
    })
}

async fn ingress_cidr(ingress: &Ingress) -> Result<IpNet> {
    match ingress {
        Ingress::Cidr(cidr) => Ok(*cidr),
        Ingress::CallerIp { checkip_url } => caller_cidr(checkip_url).await,
    }
}

async fn launch(
    cloud: &Cloud,
    plan: &Plan,
    store: &KeyStore,
    printer: Printer,
    interrupt: &Interrupt,
) -> Result<Machine> {
    let spec = &plan.launch;
    let phase = printer.phase(format!(
        "launching a {} instance in {}",
        spec.instance_type, cloud.region
    ));
    if let Some(profile) = &spec.instance_profile {
        cloud.check_instance_profile(profile).await?;
    }
    let image = match &spec.image {
        ImageChoice::Id(id) => cloud.image_by_id(id).await?,
        ImageChoice::NewestNamed(pattern) => cloud.newest_image(pattern).await?,
    };
    let user = spec
        .user
        .clone()
        .unwrap_or_else(|| guess_user(&image.name).into());
    let cidr = ingress_cidr(&plan.ingress).await?;
    let new_keys = store.generate(&plan.login)?;
    let group = match cloud
        .create_ssh_group(spec.subnet_id.as_deref(), cidr, &spec.tags)
        .await
    {
        Ok(group) => group,
        Err(e) => {
            store.discard(new_keys);
            return Err(e);
        }
    };
    let user_data = UserData {
        host_private_openssh: &new_keys.host_private_openssh,
        host_public_openssh: &new_keys.host_public_openssh,
        authorized_key: new_keys.authorized_key.as_deref(),
        extra_commands: spec.extra_boot_commands.as_deref(),
    }
    .render();
    let key_name = match &plan.login {
        LoginKey::KeyPair { name, .. } => Some(name.as_str()),
        LoginKey::PerRun => None,
    };
    let client_token = format!("ssh-ec2-{:032x}", rand::random::<u128>());
    let launched = if interrupt.happened() {
        Err(Interrupted.into())
    } else {
        cloud
            .launch(&LaunchRequest {
                image: &image,
                instance_type: &spec.instance_type,
                user_data: &user_data,
                security_group: &group,
                login_user: &user,
                subnet_id: spec.subnet_id.as_deref(),
                key_name,
                instance_profile: spec.instance_profile.as_deref(),
                volume_size: spec.volume_size,
                terminate_on_shutdown: plan.end_of_life == EndOfLife::Terminate,
                tags: &spec.tags,
                client_token: &client_token,
            })
            .await
    };
    let instance = match launched {
        Ok(instance) => instance,
        Err(e) => {
            cloud.delete_group_now(&group).await;
            store.discard(new_keys);
            return Err(e);
        }
    };
    let keys = match store.adopt(new_keys, &instance.id) {
        Ok(keys) => keys,
        Err(e) => {
            // Unreachable without its keys: do not leave it running.
            let _ = cloud.terminate(&instance.id).await;
            return Err(e.context(format!(
                "terminated {} since it could not be reached",
                instance.id
            )));
        }
    };
    phase.done(format!("launched {} ({})", instance.id, image.name));
    Ok(Machine {
        instance,
        keys,
        user,
        origin: Origin::Launched,
    })
}

/// Connect, sync up, run, pull back. `progress` records how far it got, even on error.
async fn work(
    cloud: &Cloud,
    plan: &Plan,
    machine: &Machine,
    printer: Printer,
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
    let list_files = plan.verbosity >= Verbosity::ListFiles;

    let remote_dir = session
        .run_captured(&remote::prepare_dir_command(&plan.remote_dir))
        .await?;
    let remote_dir = RemoteDir::parse(remote_dir.trim_end_matches('\n')).with_context(|| {
        format!(
            "the instance reported a strange path for {}",
            plan.remote_dir
        )
    })?;
    if let Some(sync) = &plan.sync {
        let relay = Relay::start(session.clone(), &plan.state_dir)?;
        let phase = printer.phase(format!("syncing this directory to {}", plan.remote_dir));
        let rsync = Rsync::new(sync, &plan.local_dir, &remote_dir, &relay, list_files)?;
        interrupt.cancel(rsync.push()).await?;
        phase.done(format!("synced to {}", plan.remote_dir));
    }

    progress.command_started = true;
    printer.info(&match &plan.command {
        Some(command) => format!("running `{command}` in {}", plan.remote_dir),
        None => format!("opening a shell in {}", plan.remote_dir),
    });
    let command_line = remote::command_line(&remote_dir, plan.command.as_deref());
    let ran = run_command(&session, &command_line, plan.pty, interrupt).await;
    if let Ok(RemoteExit::Signal(signal)) = &ran {
        printer.warn(&format!("the remote command was killed by signal {signal}"));
    }
    progress.exit = ran.as_ref().ok().cloned();

    let pulled = match &plan.sync {
        None => Ok(()),
        Some(sync) => {
            // The command may have ended with the connection (a reboot, a network drop).
            let session = if session.is_closed() {
                let deadline = Instant::now() + plan.boot_timeout;
                connect(&target, deadline, printer).await?
            } else {
                session
            };
            let relay = Relay::start(session.clone(), &plan.state_dir)?;
            let phase = printer.phase(format!("pulling results back from {}", plan.remote_dir));
            let rsync = Rsync::new(sync, &plan.local_dir, &remote_dir, &relay, list_files)?;
            let pulled = rsync.pull().await;
            if pulled.is_ok() {
                phase.done("pulled results back");
            }
            session.close().await;
            pulled
        }
    };
    progress.results_home = pulled.is_ok();
    ran?;
    pulled
}

/// Waits until the instance runs and says where its sshd is.
async fn wait_for_ssh_target(
    cloud: &Cloud,
    plan: &Plan,
    machine: &Machine,
    deadline: Instant,
    printer: Printer,
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

async fn connect(target: &Target, deadline: Instant, printer: Printer) -> Result<Arc<Session>> {
    let phase = printer.phase(format!("connecting to {}@{}", target.user, target.address));
    let session = Session::connect(target, deadline, &phase).await?;
    phase.done(format!("connected to {}@{}", target.user, target.address));
    Ok(Arc::new(session))
}
