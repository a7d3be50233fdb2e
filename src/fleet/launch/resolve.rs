//! What a launch needs settled before anything is created, also for `--dry-run`: the instance
//! profile, each type with its image, the VPC, where to try, an admin-made group.

use std::fmt;

use anyhow::{Result, bail};

use crate::cloud::{Cloud, Image, Subnet, TypeInfo, newest_for};
use crate::fleet::spec::{ImageChoice, LaunchSpec};
use crate::state::known::{Known, TYPE_AGE};

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
    /// The AWS account of the credentials, when the default subnets said it (a default subnet
    /// is always the account's own).
    pub account: Option<String>,
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
/// before anything is created), the VPC, where to try, and an admin-made group. The lookups do
/// not wait for each other: they go out together, in one round trip.
pub async fn resolve(cloud: &Cloud, known: &Known, spec: &LaunchSpec) -> Result<Resolved> {
    let names: Vec<&str> = std::iter::once(&spec.instance_type)
        .chain(&spec.fallback_types)
        .map(String::as_str)
        .collect();
    let profile = async {
        match &spec.instance_profile {
            Some(profile) => Ok(cloud.check_instance_profile(profile).await?),
            None => Ok(()),
        }
    };
    let images = async {
        match &spec.image {
            ImageChoice::Id(id) => Ok(vec![cloud.image_by_id(id).await?]),
            ImageChoice::NewestNamed(pattern) => cloud.images_named(pattern).await,
        }
    };
    let ((), kinds, images, (vpc, places, account)) = tokio::try_join!(
        profile,
        types(cloud, known, &names),
        images,
        network(cloud, &spec.subnets)
    )?;
    let types = pair(kinds, &images, &spec.image, spec.efa, &cloud.region)?;
    let admin_group = match &spec.security_group {
        Some(group) => Some(cloud.existing_group(group, &vpc).await?),
        None => None,
    };
    Ok(Resolved {
        types,
        vpc,
        admin_group,
        places,
        account,
    })
}

/// What an instance of each of `names` has, in that order: as kept (`Known`), else asked in
/// one request for those not kept.
async fn types(cloud: &Cloud, known: &Known, names: &[&str]) -> Result<Vec<TypeInfo>> {
    let key = |name: &str| format!("type/{}/{name}", cloud.region);
    let kept: Vec<Option<TypeInfo>> = (names.iter())
        .map(|name| known.get(&key(name), TYPE_AGE))
        .collect();
    let missing: Vec<&str> = (names.iter().zip(&kept))
        .filter(|(_, kept)| kept.is_none())
        .map(|(name, _)| *name)
        .collect();
    let mut asked = match missing.is_empty() {
        true => Vec::new(),
        false => cloud.instance_types(&missing).await?,
    };
    for info in &asked {
        known.put(&key(&info.name), info);
    }
    asked.reverse();
    // `asked` holds the missing ones in order: each fills the next gap.
    Ok((kept.into_iter())
        .map(|kept| kept.or_else(|| asked.pop()))
        .collect::<Option<Vec<_>>>()
        .expect("EC2 answered for every type asked"))
}

/// Each type with the image it would boot: the one given by id, or the newest of `images` for
/// its architecture; refused when it cannot boot it, or lacks the EFA asked for.
fn pair(
    kinds: Vec<TypeInfo>,
    images: &[Image],
    choice: &ImageChoice,
    efa: bool,
    region: &str,
) -> Result<Vec<(TypeInfo, Image)>> {
    (kinds.into_iter())
        .map(|kind| {
            let image = match choice {
                ImageChoice::Id(_) => images.first().cloned(),
                ImageChoice::NewestNamed(_) => newest_for(images, &kind),
            };
            let Some(image) = image else {
                let pattern = match choice {
                    ImageChoice::NewestNamed(pattern) => pattern.as_str(),
                    ImageChoice::Id(id) => id.as_str(),
                };
                bail!(
                    "no Amazon image named \"{pattern}\" for a {} in {region}: check \
                     --image-name, or pass --image-id",
                    kind.name
                );
            };
            kind.check_runs(&image)?;
            if efa && !kind.efa {
                bail!(
                    "--efa: {} has no Elastic Fabric Adapter; pick a type that has one (e.g. \
                     g5.12xlarge, p4d.24xlarge, p5.48xlarge; `aws ec2 describe-instance-types \
                     --filters Name=network-info.efa-supported,Values=true`), or drop --efa",
                    kind.name
                );
            }
            Ok((kind, image))
        })
        .collect()
}

/// The VPC to launch in and where to try: the user's subnets (all in one VPC: the security
/// group belongs to one), else EC2's pick in the default VPC, then each of its default subnets
/// (which also name the account).
async fn network(cloud: &Cloud, given: &[String]) -> Result<(String, Vec<Place>, Option<String>)> {
    if given.is_empty() {
        let defaults = cloud.default_subnets().await?;
        // Default subnets are the default VPC's: it is asked for only when there are none.
        let vpc = match defaults.first() {
            Some(subnet) => subnet.vpc.clone(),
            None => cloud.default_vpc().await?,
        };
        let account = defaults.first().and_then(|subnet| subnet.owner.clone());
        let places = std::iter::once(Place::Anywhere)
            .chain(defaults.into_iter().map(Place::Zone))
            .collect();
        return Ok((vpc, places, account));
    }
    let vpc = one_vpc(&cloud.subnets(given).await?)?;
    Ok((vpc, given.iter().cloned().map(Place::Given).collect(), None))
}

/// The VPC of the user's subnets, which must all be in it.
fn one_vpc(subnets: &[Subnet]) -> Result<String> {
    let Some(first) = subnets.first() else {
        bail!("no subnet given");
    };
    if let Some(other) = subnets.iter().find(|s| s.vpc != first.vpc) {
        bail!(
            "subnet {} is in {} but {} is in {}: the instance's security group belongs to one \
             VPC, so list subnets of one VPC (subnet_id, subnet_ids)",
            first.id,
            first.vpc,
            other.id,
            other.vpc
        );
    }
    Ok(first.vpc.clone())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kind(name: &str, architecture: &str, efa: bool) -> TypeInfo {
        TypeInfo {
            name: name.into(),
            architectures: vec![architecture.into()],
            vcpus: None,
            memory_mib: None,
            gpus: Vec::new(),
            cluster_placement: true,
            efa,
        }
    }

    fn image(id: &str, architecture: &str, created: &str) -> Image {
        Image {
            id: id.into(),
            name: "Deep Learning AMI".into(),
            architecture: architecture.into(),
            created: created.into(),
            root_volume: None,
        }
    }

    #[test]
    fn each_type_boots_the_newest_image_of_its_architecture() {
        let images = [
            image("ami-old", "x86_64", "2026-03-01T00:00:00.000Z"),
            image("ami-arm", "arm64", "2026-12-01T00:00:00.000Z"),
            image("ami-new", "x86_64", "2026-10-15T00:00:00.000Z"),
        ];
        let named = ImageChoice::NewestNamed("Deep*".into());
        let kinds = vec![
            kind("g5.xlarge", "x86_64", false),
            kind("g5g.xlarge", "arm64", false),
        ];
        let paired = pair(kinds, &images, &named, false, "r").unwrap();
        let chosen: Vec<(&str, &str)> = (paired.iter())
            .map(|(kind, image)| (kind.name.as_str(), image.id.as_str()))
            .collect();
        assert_eq!(
            chosen,
            [("g5.xlarge", "ami-new"), ("g5g.xlarge", "ami-arm")]
        );

        let none = pair(vec![kind("x", "riscv", false)], &images, &named, false, "r");
        let said = none.unwrap_err().to_string();
        assert!(
            said.contains("no Amazon image named \"Deep*\" for a x"),
            "{said}"
        );

        let by_id = ImageChoice::Id("ami-arm".into());
        let x86 = || vec![kind("g5.xlarge", "x86_64", false)];
        let wrong = pair(x86(), &images[1..2], &by_id, false, "r");
        let said = wrong.unwrap_err().to_string();
        assert!(
            said.contains("built for arm64, but a g5.xlarge runs x86_64"),
            "{said}"
        );

        let refused = pair(x86(), &images, &named, true, "r");
        assert!(
            refused
                .unwrap_err()
                .to_string()
                .starts_with("--efa: g5.xlarge")
        );
        let efa = vec![kind("p5.48xlarge", "x86_64", true)];
        assert!(pair(efa, &images, &named, true, "r").is_ok());
    }

    #[test]
    fn the_subnets_given_must_share_a_vpc() {
        let subnet = |id: &str, vpc: &str| Subnet {
            id: id.into(),
            zone: "eu-central-1a".into(),
            vpc: vpc.into(),
            owner: None,
        };
        let same = [subnet("subnet-1", "vpc-a"), subnet("subnet-2", "vpc-a")];
        assert_eq!(one_vpc(&same).unwrap(), "vpc-a");
        let mixed = [subnet("subnet-1", "vpc-a"), subnet("subnet-2", "vpc-b")];
        let said = one_vpc(&mixed).unwrap_err().to_string();
        assert!(
            said.starts_with("subnet subnet-1 is in vpc-a but subnet-2 is in vpc-b"),
            "{said}"
        );
    }
}
