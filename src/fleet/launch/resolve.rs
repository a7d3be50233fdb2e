//! What a launch needs settled before anything is created, also for `--dry-run`: the instance
//! profile, each type with its image, the VPC, where to try, an admin-made group.

use std::fmt;

use anyhow::{Result, bail};

use crate::cloud::{Cloud, Image, Subnet, TypeInfo};
use crate::fleet::spec::{ImageChoice, LaunchSpec};

/// Where to try a launch.
pub(super) enum Place {
    /// The default VPC, in the zone EC2 picks (it avoids zones it knows to be short).
    Anywhere,
    /// A default subnet, in its zone.
    Zone(Subnet),
    /// The user's subnet.
    Given(String),
}

impl Place {
    pub(super) fn subnet_id(&self) -> Option<&str> {
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

/// What a launch needs settled before anything is created (`--dry-run` shows the same).
pub struct Resolved {
    /// The type asked for, then the fallback types, each with the image it would boot.
    pub types: Vec<(TypeInfo, Image)>,
    pub vpc: String,
    /// The id of the admin-made group to launch into (`--security-group`), checked to be in
    /// the VPC; `None`: the launch makes its own.
    pub admin_group: Option<String>,
    pub(super) places: Vec<Place>,
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
pub async fn resolve(cloud: &Cloud, spec: &LaunchSpec) -> Result<Resolved> {
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
        if spec.efa && !kind.efa {
            bail!(
                "--efa: {name} has no Elastic Fabric Adapter; pick a type that has one (e.g. \
                 g5.12xlarge, p4d.24xlarge, p5.48xlarge; `aws ec2 describe-instance-types \
                 --filters Name=network-info.efa-supported,Values=true`), or drop --efa"
            );
        }
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
