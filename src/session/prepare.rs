//! What every node gets once reached, over its first connection: the host key of its
//! user-data replaced, its dead-man switch re-armed with this run's settings, the remote
//! directory made.

use anyhow::{Context, Result};

use super::Scene;
use super::host_key;
use crate::remote::job::Job;
use crate::remote::{self, RemoteDir};
use crate::settings::values::Limit;
use crate::ssh::{Session, Target};

/// Prepares the head (`prepare_node`; its host key left for later unless `host_key_now`) and
/// returns the remote directory's path, and whether this run made it.
pub(super) async fn prepare_head(
    scene: &Scene<'_>,
    target: &mut Target,
    session: &Session,
    host_key_now: bool,
) -> Result<(RemoteDir, bool)> {
    let id = &scene.machine.head().instance.id;
    let answer = prepare_node(scene, id, (target, host_key_now), session).await?;
    let (pwd, made) = remote::prepared_dir(&answer);
    let dir = RemoteDir::parse(pwd).with_context(|| {
        format!(
            "the instance did not report the path of {}: check --remote-dir",
            scene.plan.remote_dir
        )
    })?;
    Ok((dir, made))
}

/// Replaces the host key the node `id` got in its user-data (an exec channel, then a second
/// connection; unless not `host_key_now`) while, beside it on this one, its dead-man switch is
/// re-armed and the remote directory made (each a channel of its own: a round trip for all
/// three on a slow link); what the instance said of the directory (see
/// `remote::prepared_dir`).
pub(super) async fn prepare_node(
    scene: &Scene<'_>,
    id: &str,
    (target, host_key_now): (&mut Target, bool),
    session: &Session,
) -> Result<String> {
    let settling = async {
        if host_key_now {
            host_key::settle(scene, id, target, session).await;
        }
        Ok(())
    };
    let make_dir = remote::prepare_dir_command(&scene.plan.remote_dir);
    let made_dir = session.run_captured(&make_dir);
    let ((), (), pwd) = tokio::try_join!(
        scene.interrupt.cancel(settling),
        arm_watchdog(scene, session),
        made_dir
    )?;
    Ok(pwd)
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
            "--max-lifetime off: {} {until}; end it yourself: `ssh-ec2 --finish` here waits for \
             a job and applies the end of life, `ssh-ec2 --down` brings the results home and ends it",
            scene.machine.head().instance.id
        ));
    }
    Ok(())
}
