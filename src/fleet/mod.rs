//! The instance of a run: this directory's own, found by its tags (and started if stopped), or
//! a new one launched with fresh keys and its own security group; then, at the end, its fate.
//! Whatever fails half-way is cleaned up, and what a launch creates is in the journal before
//! it exists, so nothing is left behind, even when AWS or the laptop misbehaves. Also the
//! owner's instances across directories and regions, for `--list` and `--gc`.
//!
//! - `journal`: the record of each launch until its instance is adopted;
//! - `kept`: the instance found through the connection kept from the last run, AWS not asked;
//! - `launch`: where and what to launch, moving on when a zone has no capacity;
//! - `end_of_life`: terminate, stop or leave;
//! - `release`: the groups terminated instances leave, deleted once AWS lets go of them;
//! - `regions`: the owner's instances and groups in one region or all;
//! - `spec`: what the fleet is asked for.

pub mod end_of_life;
pub mod journal;
pub mod kept;
mod launch;
mod regions;
pub mod release;
mod spec;

use std::time::Instant;

use anyhow::{Context, Result, bail};
use ipnet::IpNet;

use crate::cloud::{Cloud, Image, Instance, State, caller_cidr, guess_user};
use crate::interrupt::{Interrupt, Interrupted};
use crate::printer::{Phase, Printer};
use crate::state::Store;
use crate::state::keys::InstanceKeys;
use end_of_life::Origin;
pub use launch::{Resolved, resolve, root_volume_gib};
pub use regions::{Skipped, machines, owner_instances, owner_made};
pub use spec::{ImageChoice, Ingress, LaunchSpec, MachineSpec, SpotSpec, wide_ingress_warning};

/// One node of a run's machine: its instance and how to log in to it.
pub struct Node {
    pub instance: Instance,
    pub keys: InstanceKeys,
}

/// The machine of this run: one instance, or a cluster's nodes in rank order (the head first).
pub struct Machine {
    /// Never empty.
    pub nodes: Vec<Node>,
    pub user: String,
    pub origin: Origin,
    /// Each node's root volume's size, when known (to price it).
    pub volume_gib: Option<u32>,
}

impl Machine {
    /// The node the laptop talks to; the only one, or a cluster's rank 0.
    pub fn head(&self) -> &Node {
        &self.nodes[0]
    }

    /// Every node's instance, the head first.
    pub fn instances(&self) -> Vec<Instance> {
        self.nodes
            .iter()
            .map(|node| node.instance.clone())
            .collect()
    }
}

/// Finds this directory's instance (starting it if stopped), or launches one.
pub async fn acquire(
    cloud: &Cloud,
    spec: &MachineSpec,
    store: &Store,
    printer: &Printer,
    interrupt: &Interrupt,
) -> Result<Machine> {
    match find_or_launch(cloud, spec, store, printer, interrupt).await {
        Err(e) => Err(cloud.explain_denial(e).await),
        found => found,
    }
}

/// This directory's instance, for a mode that never launches one: started if stopped when
/// `start`, else refused unless it runs.
pub async fn find(
    cloud: &Cloud,
    spec: &MachineSpec,
    store: &Store,
    printer: &Printer,
    interrupt: &Interrupt,
    start: bool,
) -> Result<Machine> {
    let nodes = interrupt.cancel(cloud.find_owned(&spec.ownership)).await?;
    let Some(head) = nodes.first() else {
        bail!(
            "this directory has no instance in {}: nothing to do (`ssh-ec2 --detach COMMAND` \
             starts a job)",
            cloud.region
        );
    };
    let origin = match head.state {
        State::Pending | State::Running => Origin::FoundRunning,
        _ if !start => bail!(
            "{} is {}: no job runs there; `ssh-ec2 --finish` starts it and brings the results home",
            head.id,
            head.state.as_str()
        ),
        _ => Origin::FoundStopped,
    };
    reuse(
        cloud,
        spec,
        store,
        (nodes, origin),
        None,
        printer,
        interrupt,
    )
    .await
}

/// This directory's instance, to end it (`--down`): what earlier runs here left unfinished is
/// settled first; a stopped instance is started, so that its results can come home. `None`:
/// there is none.
pub async fn find_to_end(
    cloud: &Cloud,
    spec: &MachineSpec,
    store: &Store,
    printer: &Printer,
    interrupt: &Interrupt,
) -> Result<Option<Machine>> {
    match find_here(cloud, spec, store, printer, interrupt).await? {
        Some(found) => reuse(cloud, spec, store, found, None, printer, interrupt)
            .await
            .map(Some),
        None => Ok(None),
    }
}

async fn find_or_launch(
    cloud: &Cloud,
    spec: &MachineSpec,
    store: &Store,
    printer: &Printer,
    interrupt: &Interrupt,
) -> Result<Machine> {
    if let Some(machine) = kept::through_kept(cloud, spec, store, printer).await? {
        return Ok(machine);
    }
    // This machine's address is needed whether the instance is found or launched (unless
    // into an admin-made group): asked from now, while the instance is looked for.
    let caller = (spec.launch.security_group.is_none())
        .then(|| Caller::ask_once_sent(&spec.ingress, printer, cloud.sent()));
    let find = find_here(cloud, spec, store, printer, interrupt);
    let lookups = launch::look_up(cloud, spec, store);
    let (found, lookups) = launch::beside(find, lookups, store, spec, &cloud.region).await;
    match found? {
        Some(found) => {
            check_nodes(spec, &found.0)?;
            reuse(cloud, spec, store, found, caller, printer, interrupt).await
        }
        None => launch::launch(cloud, spec, store, (caller, lookups), printer, interrupt).await,
    }
}

/// A reused cluster keeps its size: another `--nodes` is refused with what to do.
fn check_nodes(spec: &MachineSpec, nodes: &[Instance]) -> Result<()> {
    let (wanted, found) = (spec.launch.nodes, nodes.len() as u32);
    if wanted != found {
        bail!(
            "this directory's instance has {found} node{}, not the {wanted} asked (--nodes, \
             SSH_EC2_NODES): `ssh-ec2 --down` here ends it (its results come home first), then \
             run again; or ask for --nodes {found}",
            if found == 1 { "" } else { "s" }
        );
    }
    Ok(())
}

/// This directory's instance (its nodes) and where it comes from, once the launches of earlier
/// runs here are settled. A signal ends the lookups at once: what a launch left stays in the
/// journal.
async fn find_here(
    cloud: &Cloud,
    spec: &MachineSpec,
    store: &Store,
    printer: &Printer,
    interrupt: &Interrupt,
) -> Result<Option<(Vec<Instance>, Origin)>> {
    // First what an earlier run here launched but never used (killed, or its answer lost).
    let settled = journal::settle(cloud, &spec.ownership.dir, store, printer);
    let adopted = interrupt.cancel(settled).await?;
    let phase = printer.phase(format!(
        "looking for this directory's instance in {}",
        cloud.region
    ));
    let found = interrupt.cancel(cloud.find_owned(&spec.ownership)).await?;
    drop(phase);
    let Some(head) = found.first() else {
        return Ok(None);
    };
    let origin = match head.state {
        _ if adopted.contains(&head.id) => Origin::Launched,
        State::Pending | State::Running => Origin::FoundRunning,
        _ => Origin::FoundStopped,
    };
    Ok(Some((found, origin)))
}

/// The CIDR the SSH rule lets in, on its way: asked of checkip ahead of need (or the CIDR set,
/// said with its warning when wide).
pub struct Caller(tokio::task::JoinHandle<Result<IpNet>>);

impl Caller {
    /// Starts asking; a `Caller` never waited for is left to finish on its own.
    pub fn ask(ingress: &Ingress, printer: &Printer) -> Caller {
        Caller::ask_once_sent(ingress, printer, std::future::ready(true))
    }

    /// Starts asking once `sent` says the run's first AWS request has left: a run that cannot
    /// reach AWS (`false`) asks nothing of checkip either.
    pub fn ask_once_sent(
        ingress: &Ingress,
        printer: &Printer,
        sent: impl Future<Output = bool> + Send + 'static,
    ) -> Caller {
        Caller(match ingress {
            Ingress::Cidr(cidr) => {
                if let Some(warning) = wide_ingress_warning(cidr) {
                    printer.warn(&warning);
                }
                let cidr = *cidr;
                tokio::spawn(async move { Ok(cidr) })
            }
            Ingress::CallerIp { checkip_url } => {
                let url = checkip_url.clone();
                tokio::spawn(async move {
                    if !sent.await {
                        bail!("this machine's address was not asked: AWS was never reached");
                    }
                    caller_cidr(&url).await
                })
            }
        })
    }

    pub async fn cidr(self) -> Result<IpNet> {
        self.0.await.context("the checkip request panicked")?
    }
}

async fn reuse(
    cloud: &Cloud,
    spec: &MachineSpec,
    store: &Store,
    (instances, origin): (Vec<Instance>, Origin),
    caller: Option<Caller>,
    printer: &Printer,
    interrupt: &Interrupt,
) -> Result<Machine> {
    let nodes = (instances.iter())
        .map(|instance| {
            let keys = store.load(&instance.id, &spec.login)?;
            Ok(Node {
                instance: instance.clone(),
                keys,
            })
        })
        .collect::<Result<Vec<_>>>()?;
    let head = &instances[0];
    let user = login_user(spec, head);
    let ids: Vec<&str> = instances.iter().map(|i| i.id.as_str()).collect();
    let phase = printer.phase(format!(
        "reusing {} ({})",
        ids.join(", "),
        head.state.as_str()
    ));
    // Done before starting it, so a failure (or a signal) here leaves the instance as it was.
    let prepared = prepare(cloud, spec, store, &instances, caller, printer);
    interrupt.cancel(prepared).await?;
    // A signal ends the wait for a stopping instance, or its start: the end of life follows.
    if let Err(e) = interrupt.cancel(start(cloud, &instances, &phase)).await {
        drop(phase);
        if e.is::<Interrupted>() {
            let (action, _) = end_of_life::safe_action(spec.end_of_life, origin, false, false);
            end_of_life::apply(cloud, store, &instances, action, printer).await?;
        }
        return Err(e);
    }
    phase.done(format!(
        "reusing {}; {}",
        ids.join(", "),
        spec.watchdog.describe(head.spot)
    ));
    Ok(Machine {
        volume_gib: store.volume(&head.id),
        nodes,
        user,
        origin,
    })
}

/// Opens the machine's SSH rule (on its head) to this machine's address, which may have changed
/// since the launch, and tags this run's settings of the dead-man switch (`reach` re-arms it).
/// What is already so (the address this machine let in last, the same tag) is left as it is.
async fn prepare(
    cloud: &Cloud,
    spec: &MachineSpec,
    store: &Store,
    nodes: &[Instance],
    caller: Option<Caller>,
    printer: &Printer,
) -> Result<()> {
    let head = &nodes[0];
    if let Some(group) = &head.security_group {
        let caller = caller.unwrap_or_else(|| Caller::ask(&spec.ingress, printer));
        let cidr = caller.cidr().await?;
        let last = store.ingress(&head.id);
        if last == Some(cidr) {
            // Asked again all the same: someone may have removed the rule since (an admin, a
            // clean-up script), and a run that trusted its record would wait for a connection
            // that never comes. AWS answers a rule that is there as a duplicate.
            cloud.allow_ssh_from(group, cidr).await?;
        } else {
            cloud.allow_ssh_only_from(group, cidr, last).await?;
            store.note_ingress(&head.id, cidr);
        }
    }
    let tag = spec.watchdog.expiry_tag();
    if nodes.iter().any(|node| node.expires_at != tag) {
        let ids: Vec<&str> = nodes.iter().map(|node| node.id.as_str()).collect();
        cloud.set_expiry(&ids, tag.as_deref()).await?;
    }
    Ok(())
}

/// Starts the stopped (or stopping) nodes.
async fn start(cloud: &Cloud, nodes: &[Instance], phase: &Phase) -> Result<()> {
    for node in nodes.iter().filter(|n| n.state == State::Stopping) {
        phase.update(format!("waiting for {} to finish stopping", node.id));
        let deadline = Instant::now() + end_of_life::TRANSITION_TIMEOUT;
        cloud.wait_until(&node.id, State::Stopped, deadline).await?;
    }
    let stopped: Vec<&str> = (nodes.iter())
        .filter(|n| matches!(n.state, State::Stopping | State::Stopped))
        .map(|n| n.id.as_str())
        .collect();
    if !stopped.is_empty() {
        phase.update(format!("starting {}", stopped.join(", ")));
        cloud.start(&stopped).await?;
    }
    Ok(())
}

/// Who logs in to an instance launched earlier: as set, else as recorded at its launch.
pub fn login_user(spec: &MachineSpec, instance: &Instance) -> String {
    spec.launch
        .user
        .clone()
        .unwrap_or_else(|| recorded_user(instance))
}

/// Who logs in to an instance as its launch recorded it (its tag), else the default user.
pub fn recorded_user(instance: &Instance) -> String {
    instance
        .login_user
        .clone()
        .unwrap_or_else(|| guess_user("").into())
}

/// Who logs in to an instance launched from `image`: as set, else guessed from its name.
pub fn launch_user(spec: &MachineSpec, image: &Image) -> String {
    spec.launch
        .user
        .clone()
        .unwrap_or_else(|| guess_user(&image.name).into())
}

/// The CIDR the SSH rule lets in; one set wider than a site's is let in with a warning.
pub async fn ingress_cidr(ingress: &Ingress, printer: &Printer) -> Result<IpNet> {
    Caller::ask(ingress, printer).cidr().await
}
