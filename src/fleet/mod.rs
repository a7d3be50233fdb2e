//! The instance of a run: this directory's own, found by its tags (and started if stopped), or
//! a new one launched with fresh keys and its own security group; then, at the end, its fate.
//! Whatever fails half-way is cleaned up, and what a launch creates is in the journal before
//! it exists, so nothing is left behind, even when AWS or the laptop misbehaves. Also the
//! owner's instances across directories and regions, for `--list` and `--gc`.
//!
//! - `journal`: the record of each launch until its instance is adopted;
//! - `launch`: where and what to launch, moving on when a zone has no capacity;
//! - `end_of_life`: terminate, stop or leave.

pub mod end_of_life;
pub mod journal;
mod launch;

use std::time::Instant;

use anyhow::{Context, Result, bail};
use ipnet::IpNet;

use crate::cloud::{
    Cloud, Image, Instance, Owned, Ownership, SshGroup, State, caller_cidr, guess_user,
};
use crate::interrupt::{Interrupt, Interrupted};
use crate::keys::{InstanceKeys, KeyStore};
use crate::plan::{Ingress, Plan};
use crate::printer::{Phase, Printer};
use end_of_life::Origin;
pub use launch::{Resolved, resolve, root_volume_gib};

/// The instance of this run and how to log in to it.
pub struct Machine {
    pub instance: Instance,
    pub keys: InstanceKeys,
    pub user: String,
    pub origin: Origin,
    /// Its root volume's size, when known (to price it).
    pub volume_gib: Option<u32>,
}

/// Finds this directory's instance (starting it if stopped), or launches one.
pub async fn acquire(
    cloud: &Cloud,
    plan: &Plan,
    store: &KeyStore,
    printer: &Printer,
    interrupt: &Interrupt,
) -> Result<Machine> {
    match find_or_launch(cloud, plan, store, printer, interrupt).await {
        Err(e) => Err(cloud.explain_denial(e).await),
        found => found,
    }
}

/// This directory's instance, for a mode that never launches one: started if stopped when
/// `start`, else refused unless it runs.
pub async fn find(
    cloud: &Cloud,
    plan: &Plan,
    store: &KeyStore,
    printer: &Printer,
    interrupt: &Interrupt,
    start: bool,
) -> Result<Machine> {
    let instance = cloud.find_owned(&plan.ownership).await?.with_context(|| {
        format!(
            "this directory has no instance in {}: nothing to do (`ssh-ec2 --detach COMMAND` \
             starts a job)",
            cloud.region
        )
    })?;
    let origin = match instance.state {
        State::Pending | State::Running => Origin::FoundRunning,
        _ if !start => bail!(
            "{} is {}: no job runs there; `ssh-ec2 --finish` starts it and brings the results home",
            instance.id,
            instance.state.as_str()
        ),
        _ => Origin::FoundStopped,
    };
    reuse(cloud, plan, store, instance, origin, printer, interrupt).await
}

/// This directory's instance, to end it (`--down`): what earlier runs here left unfinished is
/// settled first; a stopped instance is started, so that its results can come home. `None`:
/// there is none.
pub async fn find_to_end(
    cloud: &Cloud,
    plan: &Plan,
    store: &KeyStore,
    printer: &Printer,
    interrupt: &Interrupt,
) -> Result<Option<Machine>> {
    match find_here(cloud, plan, store, printer, interrupt).await? {
        Some((instance, origin)) => reuse(cloud, plan, store, instance, origin, printer, interrupt)
            .await
            .map(Some),
        None => Ok(None),
    }
}

/// The regions `for_each_region` could not look in.
#[derive(Default)]
pub struct Skipped(Vec<String>);

impl Skipped {
    /// Fails, once the rest is done, when a region was skipped: what it holds is missing.
    pub fn check(&self) -> Result<()> {
        if self.0.is_empty() {
            return Ok(());
        }
        bail!(
            "could not look in {} (see above): what is there is not included",
            self.0.join(", ")
        )
    }
}

/// Calls `visit` with the region's connection, or with one to each enabled region. A region
/// that fails among all (one an organization's policy denies, say) is said and skipped, so
/// that the others are still looked in.
pub async fn for_each_region(
    cloud: &Cloud,
    all_regions: bool,
    printer: &Printer,
    mut visit: impl AsyncFnMut(&Cloud) -> Result<()>,
) -> Result<Skipped> {
    if !all_regions {
        visit(cloud).await?;
        return Ok(Skipped::default());
    }
    let mut skipped = Skipped::default();
    for region in cloud.enabled_regions().await? {
        if let Err(e) = visit(&*cloud.in_region(&region)).await {
            printer.warn(&format!("skipping {region}: {e:#}"));
            skipped.0.push(region);
        }
    }
    Ok(skipped)
}

/// The owner's instances, from every machine and directory, by region and directory.
pub async fn owner_instances(
    cloud: &Cloud,
    ownership: &Ownership,
    all_regions: bool,
    printer: &Printer,
) -> Result<(Vec<Owned>, Skipped)> {
    let mut owned = Vec::new();
    let skipped = for_each_region(cloud, all_regions, printer, async |cloud| {
        owned.extend(cloud.owner_instances(ownership).await?);
        Ok(())
    })
    .await?;
    sort_by_place(&mut owned);
    Ok((owned, skipped))
}

/// The owner's instances and ssh-ec2's security groups (with their region), for `--gc`. A
/// region is looked at whole or skipped whole: a group is never judged without its region's
/// instances.
pub async fn owner_instances_and_groups(
    cloud: &Cloud,
    ownership: &Ownership,
    all_regions: bool,
    printer: &Printer,
) -> Result<(Vec<Owned>, Vec<(String, SshGroup)>, Skipped)> {
    let (mut owned, mut groups) = (Vec::new(), Vec::new());
    let skipped = for_each_region(cloud, all_regions, printer, async |cloud| {
        let instances = cloud.owner_instances(ownership).await?;
        let found = cloud.owner_ssh_groups(ownership).await?;
        owned.extend(instances);
        groups.extend(found.into_iter().map(|group| (cloud.region.clone(), group)));
        Ok(())
    })
    .await?;
    sort_by_place(&mut owned);
    Ok((owned, groups, skipped))
}

fn sort_by_place(owned: &mut [Owned]) {
    owned.sort_by(|a, b| (&a.region, &a.dir).cmp(&(&b.region, &b.dir)));
}

async fn find_or_launch(
    cloud: &Cloud,
    plan: &Plan,
    store: &KeyStore,
    printer: &Printer,
    interrupt: &Interrupt,
) -> Result<Machine> {
    match find_here(cloud, plan, store, printer, interrupt).await? {
        Some((instance, origin)) => {
            reuse(cloud, plan, store, instance, origin, printer, interrupt).await
        }
        None => launch::launch(cloud, plan, store, printer, interrupt).await,
    }
}

/// This directory's instance and where it comes from, once the launches of earlier runs here
/// are settled.
async fn find_here(
    cloud: &Cloud,
    plan: &Plan,
    store: &KeyStore,
    printer: &Printer,
    interrupt: &Interrupt,
) -> Result<Option<(Instance, Origin)>> {
    // First what an earlier run here launched but never used (killed, or its answer lost).
    let adopted = journal::settle(cloud, &plan.ownership.dir, store, printer).await?;
    let phase = printer.phase(format!(
        "looking for this directory's instance in {}",
        cloud.region
    ));
    let found = cloud.find_owned(&plan.ownership).await?;
    drop(phase);
    interrupt.check()?;
    Ok(found.map(|instance| {
        let origin = match instance.state {
            _ if adopted.as_ref() == Some(&instance.id) => Origin::Launched,
            State::Pending | State::Running => Origin::FoundRunning,
            _ => Origin::FoundStopped,
        };
        (instance, origin)
    }))
}

async fn reuse(
    cloud: &Cloud,
    plan: &Plan,
    store: &KeyStore,
    instance: Instance,
    origin: Origin,
    printer: &Printer,
    interrupt: &Interrupt,
) -> Result<Machine> {
    let keys = store.load(&instance.id, &plan.login)?;
    let user = login_user(plan, &instance);
    let phase = printer.phase(format!(
        "reusing {} ({})",
        instance.id,
        instance.state.as_str()
    ));
    if let Some(group) = &instance.security_group {
        // This machine's address may have changed since the launch. Done before starting it,
        // so a failure here leaves the instance as it was.
        cloud
            .allow_ssh_only_from(group, ingress_cidr(&plan.ingress).await?)
            .await?;
    }
    // This run's settings of the dead-man switch, which `reach` re-arms on the instance.
    cloud
        .set_expiry(&instance.id, plan.watchdog.expires_at().as_deref())
        .await?;
    // A signal ends the wait for a stopping instance, or its start: the end of life follows.
    if let Err(e) = interrupt.cancel(start(cloud, &instance, &phase)).await {
        drop(phase);
        if e.is::<Interrupted>() {
            let (action, _) = end_of_life::safe_action(plan.end_of_life, origin, false, false);
            end_of_life::apply(cloud, store, &instance, action, printer).await?;
        }
        return Err(e);
    }
    phase.done(format!(
        "reusing {}; {}",
        instance.id,
        plan.watchdog.describe()
    ));
    Ok(Machine {
        volume_gib: store.volume(&instance.id),
        instance,
        keys,
        user,
        origin,
    })
}

/// Starts a stopped (or stopping) instance.
async fn start(cloud: &Cloud, instance: &Instance, phase: &Phase) -> Result<()> {
    if instance.state == State::Stopping {
        phase.update(format!("waiting for {} to finish stopping", instance.id));
        let deadline = Instant::now() + end_of_life::TRANSITION_TIMEOUT;
        cloud
            .wait_until(&instance.id, State::Stopped, deadline)
            .await?;
    }
    if matches!(instance.state, State::Stopping | State::Stopped) {
        phase.update(format!("starting {}", instance.id));
        cloud.start(&instance.id).await?;
    }
    Ok(())
}

/// Who logs in to an instance launched earlier: as set, else as recorded at its launch.
pub fn login_user(plan: &Plan, instance: &Instance) -> String {
    plan.launch
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
pub fn launch_user(plan: &Plan, image: &Image) -> String {
    plan.launch
        .user
        .clone()
        .unwrap_or_else(|| guess_user(&image.name).into())
}

/// The CIDR the SSH rule lets in.
pub async fn ingress_cidr(ingress: &Ingress) -> Result<IpNet> {
    match ingress {
        Ingress::Cidr(cidr) => Ok(*cidr),
        Ingress::CallerIp { checkip_url } => caller_cidr(checkip_url).await,
    }
}
