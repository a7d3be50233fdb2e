//! A new instance for this directory: fresh keys, its own security group, and RunInstances in
//! the first zone (then type) that has capacity. The launch is in the journal before anything
//! exists, so whatever fails (or is lost) half-way is found and cleaned up.

mod attempts;
mod lookups;
mod resolve;

use anyhow::Result;

use super::end_of_life::{self, Origin};
use super::journal::Launch;
use super::spec::MachineSpec;
use super::{Caller, Machine, Node};
use crate::cloud::{Cloud, Image, Instance};
use crate::interrupt::{Interrupt, Interrupted, Signal};
use crate::price;
use crate::printer::Printer;
use crate::settings::values::EndOfLife;
use crate::state::Store;
use crate::state::keys::{InstanceKeys, NewKeys};
use attempts::Launcher;
pub use lookups::{Lookups, beside, look_up};
pub use resolve::{Resolved, resolve};

/// The security group to launch into.
enum Group {
    /// An admin-made one, by id: used as it is.
    Admin(String),
    /// One of its own, made for the launch, letting this CIDR (on its way) in on tcp/22.
    Own(Caller),
}

/// How a launch attempt ended.
enum Outcome {
    /// Every node, in rank order.
    Launched {
        instances: Vec<Instance>,
        user: String,
    },
    /// Nothing exists: what the launch made can go.
    Failed(anyhow::Error),
    /// The instance may exist but cannot be found yet: the journal keeps the launch.
    Unknown(anyhow::Error),
    /// A second signal came while it was under way: what it made is ended now.
    GivenUp(Signal),
    /// Launched, but this machine cannot be let in: the nodes must not run on.
    Unreachable(Vec<Instance>, anyhow::Error),
}

/// Launches this directory's instance with what `lookups` find (see `look_up`).
pub async fn launch(
    cloud: &Cloud,
    spec: &MachineSpec,
    store: &Store,
    (caller, lookups): (Option<Caller>, Lookups<'_>),
    printer: &Printer,
    interrupt: &Interrupt,
) -> Result<Machine> {
    let wanted = &spec.launch;
    let Settled {
        resolved,
        account,
        group,
    } = settle_first(cloud, spec, (caller, lookups), printer, interrupt).await?;
    // Only once the type, its image and price are known: a bad type is refused before it.
    let phase = printer.phase(match wanted.nodes {
        1 => format!(
            "launching a {} instance in {}",
            wanted.instance_type, cloud.region
        ),
        n => format!(
            "launching {n} {} instances as one cluster in {}",
            wanted.instance_type, cloud.region
        ),
    });
    let mut launch = Launch::new(&cloud.region, &spec.ownership.dir, wanted.nodes, account);
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
    let (instances, user) = settle(cloud, store, printer, &launch, outcome).await?;
    let keys = adopt(cloud, store, printer, new_keys, &launch, &instances).await?;
    let head = &instances[0];
    if let Some(cidr) = launch.ingress {
        store.note_ingress(&head.id, cidr);
    }
    let market = match head.spot {
        true => "spot: AWS may take it back",
        false => "on-demand",
    };
    let ids: Vec<&str> = instances.iter().map(|i| i.id.as_str()).collect();
    phase.done(format!(
        "launched {} ({}, {market}); {}",
        ids.join(", "),
        head.instance_type,
        spec.watchdog.describe(head.spot)
    ));
    let volume_gib = (resolved.types.iter())
        .find(|(kind, _)| kind.name == head.instance_type)
        .and_then(|(_, image)| root_volume_gib(spec, image));
    if let Some(gib) = volume_gib {
        for id in &ids {
            store.note_volume(id, gib);
        }
    }
    Ok(Machine {
        nodes: (instances.into_iter())
            .map(|instance| Node {
                instance,
                keys: keys.clone(),
            })
            .collect(),
        user,
        origin: Origin::Launched,
        volume_gib,
    })
}

/// What a launch settles before it creates anything.
struct Settled {
    resolved: Resolved,
    /// The AWS account, for the launch's record (for a later --gc, see `journal::Launch`).
    account: Option<String>,
    group: Group,
}

/// The price (said before anything is paid for), what to launch and where, the account (from
/// `lookups`), and this machine's address. Until something is created, a signal ends the
/// launch at once.
async fn settle_first(
    cloud: &Cloud,
    spec: &MachineSpec,
    (caller, lookups): (Option<Caller>, Lookups<'_>),
    printer: &Printer,
    interrupt: &Interrupt,
) -> Result<Settled> {
    let wanted = &spec.launch;
    let lookups::LookedUp {
        hourly,
        resolved,
        account,
    } = interrupt.cancel(lookups).await?;
    printer.info(&price::price_line(
        hourly.as_ref(),
        &wanted.instance_type,
        &cloud.region,
    ));
    let account = match (&resolved.account, account) {
        (Some(account), _) => Ok(account.clone()),
        (None, Some(asked)) => asked,
        (None, None) => cloud.account_id().await,
    };
    let account = account
        .inspect_err(|e| tracing::debug!("the launch records no account: {e:#}"))
        .ok();
    for (kind, _) in resolved
        .types
        .iter()
        .filter(|(k, _)| wanted.nodes > 1 && !k.cluster_placement)
    {
        printer.info(&format!(
            "{} takes no cluster placement group: its nodes are launched in one zone, but \
             maybe not close together",
            kind.name
        ));
    }
    // An admin-made group is only looked up; no checkip is needed for it (nor asked). This
    // machine's address is waited for only once the group exists.
    let group = match (&resolved.admin_group, caller) {
        (Some(id), _) => Group::Admin(id.clone()),
        (None, Some(caller)) => Group::Own(caller),
        (None, None) => Group::Own(Caller::ask(&spec.ingress, printer)),
    };
    Ok(Settled {
        resolved,
        account,
        group,
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
) -> Result<(Vec<Instance>, String)> {
    match outcome {
        Outcome::GivenUp(signal) => match launch.end_now(cloud, store, printer).await {
            Ok(()) => Err(Interrupted(signal).into()),
            // Something left alive outweighs the signal.
            Err(e) => Err(e.context(format!(
                "{signal}: stopped waiting for the launch, but what it made could not all be \
                 ended (the next run here, or `ssh-ec2 --gc --yes`, tries again)"
            ))),
        },
        Outcome::Launched { instances, user } => Ok((instances, user)),
        Outcome::Unreachable(instances, e) => {
            Err(end_unreachable(cloud, store, printer, launch, &instances, e).await)
        }
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

/// Files the keys under the nodes, and gives a cluster's head its SSH group (its nodes were
/// launched in their own group alone). What cannot be done leaves the nodes unreachable, so they
/// must not run on.
async fn adopt(
    cloud: &Cloud,
    store: &Store,
    printer: &Printer,
    new_keys: NewKeys,
    launch: &Launch,
    instances: &[Instance],
) -> Result<InstanceKeys> {
    let ids: Vec<&str> = instances.iter().map(|i| i.id.as_str()).collect();
    let opened = async {
        if let (Some(nodes), Some(ssh)) = (&launch.node_group, &launch.group) {
            cloud.set_groups(ids[0], &[nodes, ssh]).await?;
        }
        store.adopt(new_keys, &ids)
    };
    match opened.await {
        Ok(keys) => Ok(keys),
        Err(e) => Err(end_unreachable(cloud, store, printer, launch, instances, e).await),
    }
}

/// Terminates the nodes of `launch`, which cannot be reached (`e` says why), and forgets the
/// launch; the error to give.
async fn end_unreachable(
    cloud: &Cloud,
    store: &Store,
    printer: &Printer,
    launch: &Launch,
    instances: &[Instance],
    e: anyhow::Error,
) -> anyhow::Error {
    // The groups to delete as the launch recorded them, should AWS's answer lack their tags.
    let recorded: Vec<Instance> = (instances.iter())
        .map(|instance| Instance {
            security_group: instance.security_group.clone().or(launch.group.clone()),
            node_group: instance.node_group.clone().or(launch.node_group.clone()),
            placement_group: (instance.placement_group.clone()).or(launch.placement_group.clone()),
            ..instance.clone()
        })
        .collect();
    let ended = end_of_life::apply(cloud, store, &recorded, EndOfLife::Terminate, printer).await;
    let ids: Vec<&str> = instances.iter().map(|i| i.id.as_str()).collect();
    match ended {
        Ok(()) => {
            // Its groups go with the instances (the end of life's helper deletes them).
            store.discard_launch(&launch.id);
            e.context(format!(
                "{} terminated: it could not be reached",
                ids.join(", ")
            ))
        }
        Err(end) => e.context(format!("{end:#}")),
    }
}

/// The size of the root volume of an instance launched from `image`.
pub fn root_volume_gib(spec: &MachineSpec, image: &Image) -> Option<u32> {
    spec.launch.volume_size.or(image
        .root_volume
        .as_ref()
        .map(|root| root.size_gib.max(0) as u32))
}
