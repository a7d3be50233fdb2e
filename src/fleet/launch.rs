//! A new instance for this directory: fresh keys, its own security group, and RunInstances in
//! the first zone (then type) that has capacity. The launch is in the journal before anything
//! exists, so whatever fails (or is lost) half-way is found and cleaned up.

use std::fmt;

use anyhow::{Result, bail};

use super::end_of_life::{self, Origin};
use super::journal::Launch;
use super::{Machine, ingress_cidr};
use crate::cloud::userdata::UserData;
use crate::cloud::{
    AwsError, CAPACITY_CODES, Cloud, Image, Instance, LaunchRequest, SPOT_CAPACITY_CODES, Subnet,
    TypeInfo,
};
use crate::config::EndOfLife;
use crate::interrupt::Interrupt;
use crate::keys::KeyStore;
use crate::plan::{ImageChoice, LaunchPlan, Plan, SpotPlan};
use crate::price;
use crate::printer::Printer;

/// Where to try a launch.
enum Place {
    /// The default VPC, in the zone EC2 picks (it avoids zones it knows to be short).
    Anywhere,
    /// A default subnet, in its zone.
    Zone(Subnet),
    /// The user's subnet.
    Given(String),
}

impl Place {
    fn subnet_id(&self) -> Option<&str> {
        match self {
            Place::Anywhere => None,
            Place::Zone(subnet) => Some(&subnet.id),
            Place::Given(id) => Some(id),
        }
    }
}

impl fmt::Display for Place {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Place::Anywhere => f.write_str("the zone EC2 picked"),
            Place::Zone(subnet) => write!(f, "{} ({})", subnet.zone, subnet.id),
            Place::Given(id) => f.write_str(id),
        }
    }
}

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
}

pub async fn launch(
    cloud: &Cloud,
    plan: &Plan,
    store: &KeyStore,
    printer: &Printer,
    interrupt: &Interrupt,
) -> Result<Machine> {
    let spec = &plan.launch;
    // Before anything is paid for.
    let hourly = price::hourly(cloud, &spec.instance_type, spec.spot.is_some(), None).await;
    printer.info(&price::price_line(
        hourly.as_ref(),
        &spec.instance_type,
        &cloud.region,
    ));
    let phase = printer.phase(format!(
        "launching a {} instance in {}",
        spec.instance_type, cloud.region
    ));
    let Resolved {
        types,
        vpc,
        admin_group,
        places,
    } = resolve(cloud, spec).await?;
    // An admin-made group is only looked up; no checkip is needed for it.
    let group = match admin_group {
        Some(id) => Group::Admin(id),
        None => Group::Own(ingress_cidr(&plan.ingress).await?),
    };

    let mut launch = Launch::new(&cloud.region, &plan.ownership.dir);
    let new_keys = store.generate(&plan.login, &launch.id)?;
    if let Err(e) = launch.save(store) {
        store.discard(new_keys);
        return Err(e);
    }
    let group = match group {
        Group::Admin(id) => Ok(id),
        Group::Own(cidr) => {
            let created = cloud
                .create_ssh_group(&launch.group_name(), &vpc, cidr, &spec.tags)
                .await;
            // Recorded at once: the journal deletes the launch's own group, and only it.
            if let Ok(group) = &created {
                launch.group = Some(group.clone());
            }
            created
        }
    };
    let outcome = match group {
        Ok(group) => {
            let user_data = UserData {
                host_private_openssh: &new_keys.host_private_openssh,
                host_public_openssh: &new_keys.host_public_openssh,
                authorized_key: new_keys.authorized_key.as_deref(),
                extra_commands: spec.extra_boot_commands.as_deref(),
                watchdog: &plan.watchdog,
            }
            .render();
            let attempts = Attempts {
                cloud,
                plan,
                store,
                printer,
                interrupt,
                group: &group,
                user_data: &user_data,
            };
            attempts.run(&mut launch, &types, &places).await
        }
        Err(e) => Outcome::Failed(e),
    };
    let (instance, user) = match outcome {
        Outcome::Launched { instance, user } => (instance, user),
        Outcome::Failed(e) => {
            // Something left alive outweighs the failure (or the signal) that led here.
            if let Err(leak) = launch.abandon(cloud, store).await {
                return Err(leak.context(format!(
                    "{e:#}; then what the launch made could not all be deleted (the next run \
                     here, or `ssh-ec2 --gc --yes`, tries again)"
                )));
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
    let market = match instance.spot {
        true => "spot; terminated, not stopped, when it ends itself or AWS interrupts it",
        false => "on-demand",
    };
    phase.done(format!(
        "launched {} ({}, {market}); {}",
        instance.id,
        instance.instance_type,
        plan.watchdog.describe()
    ));
    let volume_gib = types
        .iter()
        .find(|(kind, _)| kind.name == instance.instance_type)
        .and_then(|(_, image)| root_volume_gib(plan, image));
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

/// What a launch needs settled before anything is created (`--dry-run` shows the same).
pub struct Resolved {
    /// The type asked for, then the fallback types, each with the image it would boot.
    pub types: Vec<(TypeInfo, Image)>,
    pub vpc: String,
    /// The id of the admin-made group to launch into (`--security-group`), checked to be in
    /// the VPC; `None`: the launch makes its own.
    pub admin_group: Option<String>,
    places: Vec<Place>,
}

impl Resolved {
    /// The zones whose default subnets are tried after EC2's own pick (none with subnets given).
    pub fn zones(&self) -> Vec<String> {
        self.places
            .iter()
            .filter_map(|place| match place {
                Place::Zone(subnet) => Some(subnet.zone.clone()),
                _ => None,
            })
            .collect()
    }
}

/// Checks the instance profile, every type and its image (a typo in --fallback-types fails
/// before anything is created), the VPC, where to try, and an admin-made group.
pub async fn resolve(cloud: &Cloud, spec: &LaunchPlan) -> Result<Resolved> {
    if let Some(profile) = &spec.instance_profile {
        cloud.check_instance_profile(profile).await?;
    }
    let mut by_id: Option<Image> = None;
    let mut types = Vec::new();
    for name in std::iter::once(&spec.instance_type).chain(&spec.fallback_types) {
        let kind = cloud.instance_type(name).await?;
        let image = match &spec.image {
            ImageChoice::Id(id) => match &by_id {
                Some(image) => image.clone(),
                None => by_id.insert(cloud.image_by_id(id).await?).clone(),
            },
            ImageChoice::NewestNamed(pattern) => cloud.newest_image(pattern, &kind).await?,
        };
        kind.check_runs(&image)?;
        types.push((kind, image));
    }
    let vpc = vpc_of(cloud, &spec.subnets).await?;
    let places = match spec.subnets.is_empty() {
        false => spec.subnets.iter().cloned().map(Place::Given).collect(),
        true => std::iter::once(Place::Anywhere)
            .chain(cloud.default_subnets().await?.into_iter().map(Place::Zone))
            .collect(),
    };
    let admin_group = match &spec.security_group {
        Some(group) => Some(cloud.existing_group(group, &vpc).await?),
        None => None,
    };
    Ok(Resolved {
        types,
        vpc,
        admin_group,
        places,
    })
}

/// The VPC of the user's subnets (the default VPC without them): the security group belongs
/// to one VPC, so they must all be in it.
async fn vpc_of(cloud: &Cloud, subnets: &[String]) -> Result<String> {
    let Some((first, others)) = subnets.split_first() else {
        return cloud.vpc_for(None).await;
    };
    let vpc = cloud.vpc_for(Some(first)).await?;
    for other in others {
        let theirs = cloud.vpc_for(Some(other)).await?;
        if theirs != vpc {
            bail!(
                "subnet {first} is in {vpc} but {other} is in {theirs}: the instance's security \
                 group belongs to one VPC, so list subnets of one VPC (subnet_id, subnet_ids)"
            );
        }
    }
    Ok(vpc)
}

/// The size of the root volume of an instance launched from `image`.
pub fn root_volume_gib(plan: &Plan, image: &Image) -> Option<u32> {
    plan.launch.volume_size.or(image
        .root_volume
        .as_ref()
        .map(|root| root.size_gib.max(0) as u32))
}

/// The RunInstances attempts of one launch, once its keys and group exist.
struct Attempts<'a> {
    cloud: &'a Cloud,
    plan: &'a Plan,
    store: &'a KeyStore,
    printer: &'a Printer,
    interrupt: &'a Interrupt,
    group: &'a str,
    user_data: &'a str,
}

impl Attempts<'_> {
    /// Each place for the first type, then each place for the next type, until one launches;
    /// with --spot, all of that as spot first, then on-demand (unless --spot-only).
    async fn run(
        &self,
        launch: &mut Launch,
        types: &[(TypeInfo, Image)],
        places: &[Place],
    ) -> Outcome {
        let given: Vec<&str> = places
            .iter()
            .filter_map(|p| match p {
                Place::Given(id) => Some(id.as_str()),
                _ => None,
            })
            .collect();
        let tried = match given.is_empty() {
            true => self.cloud.region.clone(),
            false => given.join(", "),
        };
        let names = types
            .iter()
            .map(|t| t.0.name.as_str())
            .collect::<Vec<_>>()
            .join(", ");
        let markets: &[Option<&SpotPlan>] = match &self.plan.launch.spot {
            Some(spot) if spot.only => &[Some(spot)],
            Some(spot) => &[Some(spot), None],
            None => &[None],
        };
        let mut no_capacity = None;
        for (m, market) in markets.iter().enumerate() {
            let kind = market.map_or("", |_| "spot ");
            if m > 0 {
                self.printer.info(&format!(
                    "no spot capacity for {names} in {tried}: launching on-demand instead \
                     (--spot-only forbids that)"
                ));
            }
            for (t, (type_info, image)) in types.iter().enumerate() {
                let instance_type = type_info.name.as_str();
                if t > 0 {
                    self.printer.info(&format!(
                        "no {kind}capacity for {} in {tried}: trying {instance_type} \
                         (--fallback-types)",
                        types[t - 1].0.name
                    ));
                }
                for (p, place) in places.iter().enumerate() {
                    if p > 0 {
                        self.printer.info(&format!(
                            "no {kind}capacity for {instance_type} in {}: trying {place}",
                            places[p - 1]
                        ));
                    }
                    let n = (m * types.len() + t) * places.len() + p;
                    let attempt = self.attempt(launch, n, instance_type, image, place, *market);
                    match attempt.await {
                        Err(e) if is_capacity(&e, market.is_some()) => no_capacity = Some(e),
                        Err(e) => return Outcome::Failed(e),
                        Ok(outcome) => return outcome,
                    }
                }
            }
        }
        let e = no_capacity.expect("there is at least one type and one place");
        let spot_only = match markets {
            [Some(_)] => "drop --spot-only to take an on-demand instance, ",
            _ => "",
        };
        Outcome::Failed(e.context(format!(
            "no capacity for {names} in {tried} right now: try again later, {spot_only}or name \
             other types to try with --fallback-types T1,T2",
        )))
    }

    /// One RunInstances. An error is an answer: nothing was launched.
    async fn attempt(
        &self,
        launch: &mut Launch,
        n: usize,
        instance_type: &str,
        image: &Image,
        place: &Place,
        spot: Option<&SpotPlan>,
    ) -> Result<Outcome> {
        self.interrupt.check()?;
        launch.sending(self.store)?;
        let spec = &self.plan.launch;
        let user = super::launch_user(self.plan, image);
        let launched = self
            .cloud
            .launch(&LaunchRequest {
                image,
                instance_type,
                user_data: self.user_data,
                security_group: Some(self.group),
                own_group: self.plan.launch.security_group.is_none(),
                login_user: &user,
                subnet_id: place.subnet_id(),
                key_name: self.plan.login.key_pair_name(),
                instance_profile: spec.instance_profile.as_deref(),
                volume_size: spec.volume_size,
                tags: &spec.tags,
                client_token: &launch.client_token(n),
                launch_id: &launch.id,
                expires_at: self.plan.watchdog.expires_at().as_deref(),
                spot: spot.map(|spot| spot.max_price.as_deref()),
            })
            .await;
        let e = match launched {
            Ok(instance) => return Ok(Outcome::Launched { instance, user }),
            Err(e) => e,
        };
        let code = match e.downcast_ref::<AwsError>() {
            // Throttled, failed inside AWS, or no answer: it may have launched all the same.
            Some(aws) if aws.inconclusive => aws.code.clone().unwrap_or("no answer".into()),
            Some(aws) if is_quota(aws) => return Err(quota_hint(e, instance_type)),
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

/// No capacity for this attempt (for a spot one: no spot capacity, or not at this price).
fn is_capacity(e: &anyhow::Error, spot: bool) -> bool {
    e.downcast_ref::<AwsError>()
        .and_then(|aws| aws.code.as_deref())
        .is_some_and(|code| {
            CAPACITY_CODES.contains(&code) || (spot && SPOT_CAPACITY_CODES.contains(&code))
        })
}

fn is_quota(aws: &AwsError) -> bool {
    matches!(
        aws.code.as_deref(),
        Some("VcpuLimitExceeded" | "InstanceLimitExceeded")
    )
}

/// Names the quota to raise: there is one per instance family.
fn quota_hint(e: anyhow::Error, instance_type: &str) -> anyhow::Error {
    e.context(format!(
        "your account may run no more {instance_type} instances here: raise the quota \
         \"Running On-Demand {} instances\" (Service Quotas console, Amazon EC2, in this \
         region), or end instances you no longer use",
        quota_family(instance_type)
    ))
}

/// The family in the name of a type's On-Demand vCPU quota.
fn quota_family(instance_type: &str) -> &'static str {
    let letters: String = instance_type
        .chars()
        .take_while(char::is_ascii_lowercase)
        .collect();
    match letters.as_str() {
        "g" | "vt" => "G and VT",
        "p" => "P",
        "f" => "F",
        "inf" => "Inf",
        "trn" => "Trn",
        "dl" => "DL",
        "x" => "X",
        "hpc" => "HPC",
        "u" => "High Memory",
        _ => "Standard (A, C, D, H, I, M, R, T, Z)",
    }
}

#[cfg(test)]
mod tests {
    use super::quota_family;

    #[test]
    fn quotas_are_named_by_family() {
        assert_eq!(quota_family("g4dn.xlarge"), "G and VT");
        assert_eq!(quota_family("p5.48xlarge"), "P");
        assert_eq!(quota_family("inf2.xlarge"), "Inf");
        assert_eq!(
            quota_family("t3.micro"),
            "Standard (A, C, D, H, I, M, R, T, Z)"
        );
    }
}
