//! A new instance for this directory: fresh keys, its own security group, and RunInstances in
//! the first zone (then type) that has capacity. The launch is in the journal before anything
//! exists, so whatever fails (or is lost) half-way is found and cleaned up.

mod attempts;
mod resolve;

use anyhow::Result;

use super::end_of_life::{self, Origin};
use super::journal::Launch;
use super::spec::MachineSpec;
use super::{Machine, ingress_cidr};
use crate::cloud::{Cloud, Image, Instance};
use crate::interrupt::{Interrupt, Interrupted, Signal};
use crate::price;
use crate::printer::Printer;
use crate::settings::values::EndOfLife;
use crate::state::Store;
use crate::state::keys::{InstanceKeys, NewKeys};
use attempts::Launcher;
pub use resolve::{Resolved, resolve};

/// The security group to launch into.
enum Group {
    /// An admin-made one, by id: used as it is.
    Admin(String),
    /// One of its own, made for the launch, letting this CIDR in on tcp/22.
    Own(ipnet::IpNet),
}

/// How a launch attempt ended.
enum Outcome {
    Launched {
        instance: Instance,
        user: String,
    },
    /// Nothing exists: what the launch made can go.
    Failed(anyhow::Error),
    /// The instance may exist but cannot be found yet: the journal keeps the launch.
    Unknown(anyhow::Error),
    /// A second signal came while it was under way: what it made is ended now.
    GivenUp(Signal),
}

pub async fn launch(
    cloud: &Cloud,
    spec: &MachineSpec,
    store: &Store,
    printer: &Printer,
    interrupt: &Interrupt,
) -> Result<Machine> {
    let wanted = &spec.launch;
    // Until something is created, a signal ends the launch at once.
    let spot = wanted.spot.is_some();
    let hourly = price::hourly(cloud, &wanted.instance_type, spot, None);
    let hourly = interrupt.cancel(async { Ok(hourly.await) }).await?;
    // Before anything is paid for.
    printer.info(&price::price_line(
        hourly.as_ref(),
        &wanted.instance_type,
        &cloud.region,
    ));
    let phase = printer.phase(format!(
        "launching a {} instance in {}",
        wanted.instance_type, cloud.region
    ));
    // The account goes into the launch's record, for a later --gc (see `journal::Launch`).
    let (resolved, account) = interrupt
        .cancel(async { Ok(tokio::join!(resolve(cloud, wanted), cloud.account_id())) })
        .await?;
    let resolved = resolved?;
    let account = account
        .inspect_err(|e| tracing::debug!("the launch records no account: {e:#}"))
        .ok();
    // An admin-made group is only looked up; no checkip is needed for it.
    let group = match &resolved.admin_group {
        Some(id) => Group::Admin(id.clone()),
        None => Group::Own(
            interrupt
                .cancel(ingress_cidr(&spec.ingress, printer))
                .await?,
        ),
    };
    let mut launch = Launch::new(&cloud.region, &spec.ownership.dir, account);
    let new_keys = store.generate(&spec.login, &launch.id)?;
    if let Err(e) = launch.save(store) {
        store.discard(new_keys);
        return Err(e);
    }
    let launcher = Launcher {
        cloud,
        spec,
        store,
        printer,
        interrupt,
    };
    let outcome = send(&launcher, &mut launch, group, &new_keys, &resolved).await;
    let (instance, user) = settle(cloud, store, printer, &launch, outcome).await?;
    let keys = adopt(cloud, store, printer, new_keys, &instance).await?;
    let market = match instance.spot {
        true => "spot; terminated, not stopped, when it ends itself or AWS interrupts it",
        false => "on-demand",
    };
    phase.done(format!(
        "launched {} ({}, {market}); {}",
        instance.id,
        instance.instance_type,
        spec.watchdog.describe()
    ));
    let volume_gib = (resolved.types.iter())
        .find(|(kind, _)| kind.name == instance.instance_type)
        .and_then(|(_, image)| root_volume_gib(spec, image));
    if let Some(gib) = volume_gib {
        store.note_volume(&instance.id, gib);
    }
    Ok(Machine {
        instance,
        keys,
        user,
        origin: Origin::Launched,
        volume_gib,
    })
}

/// Sends the launch. A first signal lets it go on, so that what it made is known and can be
/// ended (the run's end of life terminates it); a second one stops waiting for it.
async fn send(
    launcher: &Launcher<'_>,
    launch: &mut Launch,
    group: Group,
    keys: &NewKeys,
    resolved: &Resolved,
) -> Outcome {
    let mut signals = launcher.interrupt.only_new();
    let sending = launcher.send(launch, group, keys, resolved);
    tokio::pin!(sending);
    loop {
        tokio::select! {
            outcome = &mut sending => return outcome,
            (count, signal) = signals.next() => {
                if count >= 2 {
                    return Outcome::GivenUp(signal);
                }
                launcher.printer.warn(&format!(
                    "{signal}: the launch goes on, so that what it made can be ended; again to \
                     stop waiting and end it now"
                ));
            }
        }
    }
}

/// The launched instance and its login user; else what the launch made is deleted (or, when
/// it may exist but cannot be found yet, left to the journal), and the error says so.
async fn settle(
    cloud: &Cloud,
    store: &Store,
    printer: &Printer,
    launch: &Launch,
    outcome: Outcome,
) -> Result<(Instance, String)> {
    match outcome {
        Outcome::GivenUp(signal) => match launch.end_now(cloud, store, printer).await {
            Ok(()) => Err(Interrupted(signal).into()),
            // Something left alive outweighs the signal.
            Err(e) => Err(e.context(format!(
                "{signal}: stopped waiting for the launch, but what it made could not all be \
                 ended (the next run here, or `ssh-ec2 --gc --yes`, tries again)"
            ))),
        },
        Outcome::Launched { instance, user } => Ok((instance, user)),
        Outcome::Failed(e) => {
            // Something left alive outweighs the failure (or the signal) that led here.
            if let Err(leak) = launch.abandon(cloud, store).await {
                return Err(leak.context(format!(
                    "{e:#}; then what the launch made could not all be deleted (the next run \
                     here, or `ssh-ec2 --gc --yes`, tries again)"
                )));
            }
            Err(e)
        }
        Outcome::Unknown(e) => Err(e.context(format!(
            "the launch's answer was lost and its instance cannot be found yet: the next run \
             here looks for it again, then uses it or terminates it (launch {})",
            launch.id
        ))),
    }
}

/// Files the keys under the instance; one that could not be kept is unreachable, so the
/// instance must not run on.
async fn adopt(
    cloud: &Cloud,
    store: &Store,
    printer: &Printer,
    new_keys: NewKeys,
    instance: &Instance,
) -> Result<InstanceKeys> {
    let e = match store.adopt(new_keys, &instance.id) {
        Ok(keys) => return Ok(keys),
        Err(e) => e,
    };
    let ended = end_of_life::apply(cloud, store, instance, EndOfLife::Terminate, printer).await;
    Err(match ended {
        Ok(()) => e.context(format!(
            "{} was terminated: it could not be reached",
            instance.id
        )),
        Err(end) => e.context(format!("{end:#}")),
    })
}

/// The size of the root volume of an instance launched from `image`.
pub fn root_volume_gib(spec: &MachineSpec, image: &Image) -> Option<u32> {
    spec.launch.volume_size.or(image
        .root_volume
        .as_ref()
        .map(|root| root.size_gib.max(0) as u32))
}
