//! A new instance for this directory: fresh keys, its own security group, and RunInstances.
//! The launch is in the journal before anything exists, so whatever fails (or is lost)
//! half-way is found and cleaned up.

use anyhow::{Context, Result};

use super::end_of_life::{self, Origin};
use super::journal::Launch;
use super::{Machine, ingress_cidr};
use crate::cloud::userdata::UserData;
use crate::cloud::{AwsError, Cloud, Image, Instance, LaunchRequest, guess_user};
use crate::config::EndOfLife;
use crate::interrupt::Interrupt;
use crate::keys::{KeyStore, LoginKey};
use crate::plan::{ImageChoice, Plan};
use crate::printer::Printer;

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
}

pub async fn launch(
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
    let vpc = cloud.vpc_for(spec.subnet_id.as_deref()).await?;
    let cidr = ingress_cidr(&plan.ingress).await?;

    let mut launch = Launch::new(&cloud.region, &plan.ownership.dir);
    let new_keys = store.generate(&plan.login, &launch.id)?;
    if let Err(e) = launch.save(store) {
        store.discard(new_keys);
        return Err(e);
    }
    let outcome = match cloud
        .create_ssh_group(&launch.group_name(), &vpc, cidr, &spec.tags)
        .await
    {
        Ok(group) => {
            launch.group = Some(group);
            let user_data = UserData {
                host_private_openssh: &new_keys.host_private_openssh,
                host_public_openssh: &new_keys.host_public_openssh,
                authorized_key: new_keys.authorized_key.as_deref(),
                extra_commands: spec.extra_boot_commands.as_deref(),
            }
            .render();
            let attempts = Attempts {
                cloud,
                plan,
                store,
                printer,
                interrupt,
                user_data: &user_data,
            };
            attempts
                .attempt(&mut launch, 0, &spec.instance_type, &image)
                .await
                .unwrap_or_else(Outcome::Failed)
        }
        Err(e) => Outcome::Failed(e),
    };
    let (instance, user) = match outcome {
        Outcome::Launched { instance, user } => (instance, user),
        Outcome::Failed(e) => {
            if let Err(leak) = launch.abandon(cloud, store).await {
                printer.warn(&format!(
                    "{leak:#} (the next run here tries again to delete what the launch made)"
                ));
            }
            return Err(e);
        }
        Outcome::Unknown(e) => {
            return Err(e.context(format!(
                "the launch's answer was lost and its instance cannot be found yet: the next run \
                 here looks for it again, then uses it or terminates it (launch {})",
                launch.id
            )));
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
    phase.done(format!(
        "launched {} ({})",
        instance.id, instance.instance_type
    ));
    Ok(Machine {
        instance,
        keys,
        user,
        origin: Origin::Launched,
    })
}

/// The RunInstances attempts of one launch, once its keys and group exist.
struct Attempts<'a> {
    cloud: &'a Cloud,
    plan: &'a Plan,
    store: &'a KeyStore,
    printer: &'a Printer,
    interrupt: &'a Interrupt,
    user_data: &'a str,
}

impl Attempts<'_> {
    /// One RunInstances. An error is an answer: nothing was launched.
    async fn attempt(
        &self,
        launch: &mut Launch,
        n: usize,
        instance_type: &str,
        image: &Image,
    ) -> Result<Outcome> {
        self.interrupt.check()?;
        launch.sending(self.store)?;
        let spec = &self.plan.launch;
        let user = spec
            .user
            .clone()
            .unwrap_or_else(|| guess_user(&image.name).into());
        let group = launch.group.as_deref().context("the launch has no group")?;
        let launched = self
            .cloud
            .launch(&LaunchRequest {
                image,
                instance_type,
                user_data: self.user_data,
                security_group: group,
                login_user: &user,
                subnet_id: spec.subnet_id.as_deref(),
                key_name: match &self.plan.login {
                    LoginKey::KeyPair { name, .. } => Some(name.as_str()),
                    LoginKey::PerRun => None,
                },
                instance_profile: spec.instance_profile.as_deref(),
                volume_size: spec.volume_size,
                tags: &spec.tags,
                client_token: &launch.client_token(n),
                launch_id: &launch.id,
            })
            .await;
        let e = match launched {
            Ok(instance) => return Ok(Outcome::Launched { instance, user }),
            Err(e) => e,
        };
        let code = match e.downcast_ref::<AwsError>() {
            // Throttled, failed inside AWS, or no answer: it may have launched all the same.
            Some(aws) if aws.inconclusive => aws.code.clone().unwrap_or("no answer".into()),
            _ => return Err(e),
        };
        Ok(match launch.find_instance(self.cloud).await {
            Ok(Some(instance)) if instance.state.is_live() => {
                self.printer.info(&format!(
                    "the launch's answer was lost ({code}), but {} exists: using it",
                    instance.id
                ));
                let user = instance.login_user.clone().unwrap_or(user);
                Outcome::Launched { instance, user }
            }
            Ok(Some(ended)) => Outcome::Failed(e.context(format!(
                "{} was launched, but is {} already",
                ended.id,
                ended.state.as_str()
            ))),
            Ok(None) => Outcome::Failed(e),
            Err(lookup) => Outcome::Unknown(e.context(format!("{lookup:#}"))),
        })
    }
}
