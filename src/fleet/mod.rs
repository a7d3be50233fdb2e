//! The instance of a run: this directory's own, found by its tags (and started if stopped), or
//! a new one launched with fresh keys and its own security group; then, at the end, its fate
//! (`end_of_life`). Whatever fails half-way is cleaned up here, so a failed acquisition leaves
//! nothing behind.

pub mod end_of_life;

use std::time::Instant;

use anyhow::Result;
use ipnet::IpNet;

use crate::cloud::userdata::UserData;
use crate::cloud::{Cloud, Instance, LaunchRequest, State, caller_cidr, guess_user};
use crate::config::EndOfLife;
use crate::interrupt::Interrupt;
use crate::keys::{InstanceKeys, KeyStore, LoginKey};
use crate::plan::{ImageChoice, Ingress, Plan};
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
    let phase = printer.phase(format!(
        "looking for this directory's instance in {}",
        cloud.region
    ));
    let found = cloud.find_owned(&plan.ownership).await?;
    drop(phase);
    interrupt.check()?;
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
    let origin = match instance.state {
        State::Pending | State::Running => Origin::FoundRunning,
        _ => Origin::FoundStopped,
    };
    if instance.state == State::Stopping {
        phase.update(format!("waiting for {} to finish stopping", instance.id));
        let deadline = Instant::now() + end_of_life::TRANSITION_TIMEOUT;
        cloud
            .wait_until(&instance.id, State::Stopped, deadline)
            .await?;
    }
    if origin == Origin::FoundStopped {
        phase.update(format!("starting {}", instance.id));
        cloud.start(&instance.id).await?;
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
    printer: &Printer,
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
        ImageChoice::Id(id) => cloud.image_by_id(id, &spec.instance_type).await?,
        ImageChoice::NewestNamed(pattern) => {
            cloud.newest_image(pattern, &spec.instance_type).await?
        }
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
    let launched = async {
        interrupt.check()?;
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
                tags: &spec.tags,
                client_token: &client_token,
            })
            .await
    }
    .await;
    let instance = match launched {
        Ok(instance) => instance,
        Err(e) => {
            if let Err(leak) = cloud.delete_ssh_group(&group).await {
                printer.warn(&format!("{leak:#}"));
            }
            store.discard(new_keys);
            return Err(e);
        }
    };
    let keys = match store.adopt(new_keys, &instance.id) {
        Ok(keys) => keys,
        Err(e) => {
            // Unreachable without its keys: it must not run on.
            let ended =
                end_of_life::apply(cloud, store, &instance, EndOfLife::Terminate, printer).await;
            return Err(match ended {
                Ok(()) => e.context(format!(
                    "{} was terminated: it could not be reached",
                    instance.id
                )),
                Err(end) => e.context(format!("{end:#}")),
            });
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
