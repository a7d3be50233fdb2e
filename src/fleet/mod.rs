//! The instance of a run: this directory's own, found by its tags (and started if stopped), or
//! a new one launched with fresh keys and its own security group; then, at the end, its fate.
//! Whatever fails half-way is cleaned up, and what a launch creates is in the journal before
//! it exists, so nothing is left behind, even when AWS or the laptop misbehaves.
//!
//! - `journal`: the record of each launch until its instance is adopted;
//! - `launch`: where and what to launch, moving on when a zone has no capacity;
//! - `end_of_life`: terminate, stop or leave.

pub mod end_of_life;
mod journal;
mod launch;

use std::time::Instant;

use anyhow::{Context, Result, bail};
use ipnet::IpNet;

use crate::cloud::{Cloud, Instance, State, caller_cidr, guess_user};
use crate::interrupt::Interrupt;
use crate::keys::{InstanceKeys, KeyStore};
use crate::plan::{Ingress, Plan};
use crate::printer::Printer;
use end_of_life::Origin;

/// The instance of this run and how to log in to it.
pub struct Machine {
    pub instance: Instance,
    pub keys: InstanceKeys,
    pub user: String,
    pub origin: Origin,
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
    reuse(cloud, plan, store, instance, origin, printer).await
}

async fn find_or_launch(
    cloud: &Cloud,
    plan: &Plan,
    store: &KeyStore,
    printer: &Printer,
    interrupt: &Interrupt,
) -> Result<Machine> {
    // First what an earlier run here launched but never used (killed, or its answer lost).
    let adopted = journal::settle(cloud, &plan.ownership.dir, store, printer).await?;
    let phase = printer.phase(format!(
        "looking for this directory's instance in {}",
        cloud.region
    ));
    let found = cloud.find_owned(&plan.ownership).await?;
    drop(phase);
    interrupt.check()?;
    match found {
        Some(instance) => {
            let origin = match instance.state {
                _ if adopted.as_ref() == Some(&instance.id) => Origin::Launched,
                State::Pending | State::Running => Origin::FoundRunning,
                _ => Origin::FoundStopped,
            };
            reuse(cloud, plan, store, instance, origin, printer).await
        }
        None => launch::launch(cloud, plan, store, printer, interrupt).await,
    }
}

async fn reuse(
    cloud: &Cloud,
    plan: &Plan,
    store: &KeyStore,
    instance: Instance,
    origin: Origin,
    printer: &Printer,
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
    phase.done(format!(
        "reusing {}; {}",
        instance.id,
        plan.watchdog.describe()
    ));
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
