//! Reaching the instance: waiting for it to run and for its sshd to let us in (one boot
//! deadline for both), re-arming its dead-man switch, making sure the remote directory exists;
//! reconnecting after a dropped connection; and the `-L`/`-R` forwards on a session.

use std::sync::Arc;
use std::time::Instant;

use anyhow::{Context, Result};

use super::progress::Progress;
use super::lease::Presence;
use super::{Plan, Scene};
use crate::cloud::{Cloud, Instance, State};
use crate::printer::Printer;
use crate::remote::job::Job;
use crate::remote::{self, RemoteDir};
use crate::settings::values::{HostPort, Limit};
use crate::ssh::forward::Forwarding;
use crate::ssh::{Session, Target};
use crate::state::entries::Entry;
use crate::state::lock::DirLock;

/// The instance, reached: where its sshd is, the session, and the remote directory's path.
pub struct Reached {
    pub target: Target,
    pub session: Arc<Session>,
    pub remote_dir: RemoteDir,
}

/// Waits until the instance runs and its sshd lets us in (one boot deadline for both), then
/// makes sure the remote directory exists.
pub async fn reach(scene: &Scene<'_>) -> Result<Reached> {
    let Scene {
        plan,
        interrupt,
        printer,
        ..
    } = *scene;
    let deadline = Instant::now() + plan.reach.boot_timeout;
    let target = interrupt
        .cancel(wait_for_ssh_target(scene, deadline))
        .await?;
    let id = &scene.machine.instance.id;
    let entry = Entry {
        local_dir: &plan.local_dir,
        login: &plan.machine.login,
        id,
        user: &target.user,
        address: &target.address,
    };
    if let Err(e) = scene.store.refresh_ssh_config_entry(&entry) {
        printer.warn(&format!(
            "{e:#}: `ssh-ec2 --ssh-config --install` writes the OpenSSH entry of {id} again"
        ));
    }
    let session = interrupt
        .cancel(connect(&target, deadline, printer))
        .await?;
    arm_watchdog(scene, &session).await?;
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

/// Every connection re-arms the dead-man switch with this run's settings.
async fn arm_watchdog(scene: &Scene<'_>, session: &Session) -> Result<()> {
    let watchdog = &scene.plan.machine.watchdog;
    let job = Job::for_dir(&scene.plan.local_dir);
    session
        .run_captured(&watchdog.arm_command(&job))
        .await
        .context("cannot re-arm the instance's dead-man switch (~/.ssh-ec2/watchdog)")?;
    if watchdog.max_lifetime == Limit::Off {
        let until = match watchdog.idle_stop {
            Limit::Off => "never stops by itself".to_string(),
            idle => format!("runs (and is billed) as long as it is used, until {idle} idle"),
        };
        scene.printer.warn(&format!(
            "--max-lifetime off: {} {until}; end it yourself with `ssh-ec2 --terminate true` here",
            scene.machine.instance.id
        ));
    }
    Ok(())
}

/// Reaches the instance and takes this run's lease on it; the directory's lock, held until a
/// run that joins can see that lease, is released then.
pub async fn reach_and_join(
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
    let address = ssh_address(plan.reach.connect.as_ref(), &running)?;
    phase.done(format!("{id} is running"));
    Ok(Target {
        address,
        user: machine.user.clone(),
        keys: machine.keys.clone(),
    })
}

/// Where the instance's sshd is reached: `connect` (a tunnel), else its address, port 22.
pub fn ssh_address(connect: Option<&HostPort>, instance: &Instance) -> Result<HostPort> {
    if let Some(address) = connect {
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
pub async fn reconnect_if_closed(
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
    let deadline = Instant::now() + scene.plan.reach.reconnect_timeout;
    connect(target, deadline, scene.printer).await
}

/// Why the connection went away, when it is because the instance stopped (a shutdown from
/// inside it) or was terminated.
pub async fn stopped_under_the_run(cloud: &Cloud, id: &str) -> Option<anyhow::Error> {
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

/// Opens the `-L`/`-R` forwards on `session`, for as long as the result lives.
pub async fn open_forwards(
    session: &Arc<Session>,
    plan: &Plan,
    printer: &Printer,
    first_time: bool,
) -> Result<Forwarding> {
    let forwards = &plan.forwards;
    let forwarding = session
        .forward(&forwards.local, &forwards.remote, printer)
        .await?;
    if first_time {
        for forward in &forwards.local {
            printer.info(&format!("forwarding -L {}", forward.spec));
        }
        for forward in &forwards.remote {
            printer.info(&format!("forwarding -R {forward}"));
        }
    }
    Ok(forwarding)
}
