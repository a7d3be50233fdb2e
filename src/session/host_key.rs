//! The host key the user-data carried is no secret for long: anyone allowed
//! `ec2:DescribeInstanceAttribute`, and every process on the instance (through its metadata
//! service), can read it for the instance's whole life. Right after the first pinned
//! connection, a key made for the instance replaces it: staged here first (accepted beside the
//! pinned one, so no moment of the swap can lock us out), installed over that connection
//! (`remote::host_key`), then pinned once a new connection shows the instance presenting it.
//! Without sudo the run goes on, and says (once on this machine) that the user-data's key stays
//! live.

use std::time::{Duration, Instant};

use anyhow::Result;
use russh::keys::PublicKey;
use russh::keys::ssh_key::LineEnding;

use super::Scene;
use super::address::SSHD_PORT;
use crate::poll::Poll;
use crate::printer::Phase;
use crate::remote::host_key::{self, Install};
use crate::ssh::{Session, Target};
use crate::state::keys::new_host_key;
use crate::state::{self, host_keys::HostKeyOrigin};

/// The marker in the state directory of a machine that was told of an instance without sudo.
const SAID_NO_SUDO: &str = "warned-user-data-host-key";

/// How long the reloaded sshd has to present the new key before the run goes on without it.
const RELOAD_TIMEOUT: Duration = Duration::from_secs(15);

/// How long nothing may listen on the instance's 127.0.0.1 (sshd reloading) before the check
/// dials instead.
const INSIDE_PATIENCE: Duration = Duration::from_secs(2);

/// What the first connection of a run does about the instance's host key.
#[derive(Debug, PartialEq, Eq)]
enum Step {
    /// The instance presents the key staged by an earlier run: pin it.
    Pin,
    /// It presents the user-data's key: replace it.
    Replace,
    Keep,
}

fn step(origin: HostKeyOrigin, staged: &[PublicKey], presented: &PublicKey) -> Step {
    let same = |key: &PublicKey| key.key_data() == presented.key_data();
    match origin {
        _ if staged.iter().any(same) => Step::Pin,
        HostKeyOrigin::UserData => Step::Replace,
        HostKeyOrigin::UserDataKept | HostKeyOrigin::Installed => Step::Keep,
    }
}

/// Replaces the user-data's host key of the instance `id` (a node) that `session` reached, or
/// pins the one an earlier run installed; `target` then accepts what it should from now on. A
/// failure is said and the run goes on: the connection stays pinned either way.
pub async fn settle(scene: &Scene<'_>, id: &str, target: &mut Target, session: &Session) {
    let origin = scene.store.host_key_origin(id);
    let done = match step(origin, &target.keys.next_hosts, session.host_key()) {
        Step::Pin => pin(scene, id, target, session.host_key().clone()).map(|()| {
            scene.printer.info(&format!(
                "{id}: pinned the host key an earlier run installed; the one from its user-data \
                 is refused from now on"
            ));
        }),
        Step::Replace => replace(scene, id, target, session).await,
        Step::Keep => Ok(()),
    };
    if let Err(e) = done {
        scene.printer.warn(&format!(
            "{id}: the host key from its user-data could not be replaced ({e:#}); it stays in \
             use, and the next run here tries again"
        ));
    }
}

/// Settles the head's host key, which `session` reached, into `target` (a copy of the run's,
/// for the caller to take) when `due` (the reach left it for later), to go beside the push:
/// the connection the push goes over is pinned already, and a replacement waits for sshd's
/// reload. Its lines are lines: the push has the spinner.
pub async fn settle_due(scene: &Scene<'_>, due: bool, session: &Session, target: &mut Target) {
    if !due {
        return;
    }
    let printer = scene.printer.lines_only();
    let lines = Scene {
        printer: &printer,
        ..*scene
    };
    let id = &scene.machine.head().instance.id;
    let settling = async {
        settle(&lines, id, target, session).await;
        Ok(())
    };
    // A signal ends it: the run ends too, and the next run here settles the key.
    let _ = scene.interrupt.cancel(settling).await;
}

/// `work` while the host key is `settling` beside it. A failure of `work` is said at once: the
/// settling is dropped, and a key it staged is pinned by the next run that sees it presented.
pub async fn beside<T>(
    work: impl Future<Output = Result<T>>,
    settling: impl Future<Output = ()>,
) -> Result<T> {
    tokio::pin!(work, settling);
    tokio::select! {
        done = &mut work => {
            if done.is_ok() {
                settling.await;
            }
            done
        }
        () = &mut settling => work.await,
    }
}

/// From now on only `key` is accepted, by this run and the next.
fn pin(scene: &Scene<'_>, id: &str, target: &mut Target, key: PublicKey) -> Result<()> {
    scene.store.pin_staged_host_key(id, &key)?;
    target.keys.host = key;
    target.keys.next_hosts.clear();
    Ok(())
}

async fn replace(
    scene: &Scene<'_>,
    id: &str,
    target: &mut Target,
    session: &Session,
) -> Result<()> {
    let (store, printer) = (scene.store, scene.printer);
    let phase = printer.phase(format!("replacing the host key {id} got in its user-data"));
    let new = new_host_key()?;
    let public = new.public_key().clone();
    store.stage_host_key(id, &public)?;
    target.keys.next_hosts.push(public.clone());
    let command = host_key::install_command(&public.to_openssh()?);
    let private = new.to_openssh(LineEnding::LF)?;
    let answer = session
        .run_fed("the host key's install", &command, private.as_bytes())
        .await?;
    match host_key::outcome(&answer)? {
        Install::NoSudo => {
            drop(phase);
            store.unstage_host_key(id);
            target.keys.next_hosts.clear();
            // Not asked of this instance again: sudo logs each refusal.
            store.keep_user_data_host_key(id)?;
            if state::first_time(&scene.plan.dirs.root, SAID_NO_SUDO) {
                printer.warn(&format!(
                    "{id}: its login user {} may not use sudo without a password, so the host \
                     key its user-data carried stays in use: whoever can read that user-data \
                     (ec2:DescribeInstanceAttribute, or any process on the instance through \
                     its metadata service) could pose as it (said once)",
                    target.user
                ));
            }
            Ok(())
        }
        Install::Done if presents(target, session, &public, &phase).await => {
            pin(scene, id, target, public)?;
            phase.done(format!(
                "{id}: its host key is now one made for it, which only this machine knows; the \
                 one from its user-data is refused from now on"
            ));
            Ok(())
        }
        Install::Done => anyhow::bail!(
            "its sshd still presented the old key {}s after its reload; the new one is \
             installed, and is pinned once sshd presents it",
            RELOAD_TIMEOUT.as_secs()
        ),
    }
}

/// Whether a new connection finds the instance presenting `key`, within RELOAD_TIMEOUT. sshd
/// takes it on its reload; a connection made just before may still get the old one, and one
/// made during it finds nothing listening. The new connection is made from inside the
/// instance, through `session` (the handshake's first round trips, no login, nothing over the
/// laptop's link but the channel); where that is refused, dialled.
async fn presents(target: &Target, session: &Session, key: &PublicKey, phase: &Phase) -> bool {
    phase.update("checking that its sshd presents the new key");
    let deadline = Instant::now() + RELOAD_TIMEOUT;
    let mut poll = Poll::every(Duration::from_millis(500)).until(deadline);
    // Dialled: a connection kept from an earlier run shows the key sshd presented back then.
    let target = Target {
        held: None,
        ..target.clone()
    };
    let started = Instant::now();
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let inside = tokio::time::timeout(left, session.presented_inside(SSHD_PORT)).await;
        let presented = match inside {
            Ok(Ok(Some(presented))) => Some(presented),
            // Nothing listens there for a moment while sshd reloads; for longer, it may not
            // listen on 127.0.0.1 at all.
            Ok(Ok(None)) if started.elapsed() < INSIDE_PATIENCE => None,
            Ok(found) => {
                tracing::debug!("from inside: {found:?}; dialling to see the host key");
                dialled_key(&target, deadline, phase).await
            }
            Err(_) => None,
        };
        if presented.is_some_and(|presented| presented.key_data() == key.key_data()) {
            return true;
        }
        if !poll.wait().await.unwrap_or(false) {
            return false;
        }
    }
}

/// The host key a new connection to `target` finds.
async fn dialled_key(target: &Target, deadline: Instant, phase: &Phase) -> Option<PublicKey> {
    let session = Session::connect(target, deadline, phase).await.ok()?;
    let presented = session.host_key().clone();
    session.close().await;
    Some(presented)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key() -> PublicKey {
        new_host_key().unwrap().public_key().clone()
    }

    #[test]
    fn the_user_data_s_key_is_replaced_once_and_a_staged_one_pinned_when_presented() {
        let (user_data, staged) = (key(), key());
        use HostKeyOrigin::*;
        assert_eq!(step(UserData, &[], &user_data), Step::Replace);
        // Earlier installs that ended before their key was seen.
        let tries = [key(), staged.clone()];
        assert_eq!(step(UserData, &tries, &staged), Step::Pin);
        assert_eq!(step(UserData, &tries, &user_data), Step::Replace);
        assert_eq!(step(Installed, &[], &staged), Step::Keep);
        // Without sudo: said once, then left alone (sudo logs every refusal).
        assert_eq!(step(UserDataKept, &[], &user_data), Step::Keep);
    }
}
