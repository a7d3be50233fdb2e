//! How this directory's instance would be launched: its type, image, place, tags and market.

use anyhow::{Result, bail};

use super::here::MAX_TAG_VALUE;
use crate::cloud::Ownership;
use crate::fleet::{ImageChoice, LaunchSpec, SpotSpec};
use crate::settings::Values;
use crate::settings::values::EndOfLife;

/// The instance's Name tag when none is set: `ssh-ec2-<owner>-<directory name>`.
pub fn default_name(owner: &str, dir: &str) -> String {
    let dir = dir.rsplit('/').next().filter(|n| !n.is_empty());
    format!("ssh-ec2-{owner}-{}", dir.unwrap_or("root"))
}

/// EBS volumes are 1 to 16 TiB.
const VOLUME_GIB: std::ops::RangeInclusive<u32> = 1..=16384;

pub fn spec(values: &Values, ownership: &Ownership, end_of_life: EndOfLife) -> Result<LaunchSpec> {
    let name = (values.name.clone())
        .unwrap_or_else(|| default_name(&ownership.owner.name, &ownership.dir));
    let mut tags = ownership.tags();
    tags.push(("Name".into(), name.chars().take(MAX_TAG_VALUE).collect()));
    tags.extend(values.tags.0.clone());
    if let Some(size) = values.volume_size
        && !VOLUME_GIB.contains(&size)
    {
        bail!("volume size {size} GiB is out of range: EBS volumes are 1 to 16384 GiB");
    }
    let image = match &values.image_id {
        Some(id) => ImageChoice::Id(id.clone()),
        None => ImageChoice::NewestNamed(values.image_name.clone()),
    };
    let subnets = values.subnet_id.iter().chain(
        values
            .subnet_ids
            .as_ref()
            .map_or(&[][..], |ids| ids.0.as_slice()),
    );
    Ok(LaunchSpec {
        instance_type: values.instance_type.clone(),
        fallback_types: values.fallback_types.clone().unwrap_or_default().0,
        image,
        user: values.user.as_ref().map(ToString::to_string),
        instance_profile: values.instance_profile.clone(),
        subnets: subnets.fold(Vec::new(), |mut subnets, id| {
            if !subnets.contains(id) {
                subnets.push(id.clone());
            }
            subnets
        }),
        security_group: values.security_group.clone(),
        volume_size: values.volume_size,
        tags,
        extra_boot_commands: values.user_data.clone(),
        spot: spot(values, end_of_life)?,
        nodes: nodes(values.nodes)?,
        efa: values.efa,
    })
}

/// The most nodes of one cluster: RunInstances launches at most this many at once in a
/// placement group, and a bigger cluster is a job for a scheduler.
const MAX_NODES: u32 = 64;

fn nodes(nodes: u32) -> Result<u32> {
    if !(1..=MAX_NODES).contains(&nodes) {
        bail!("--nodes {nodes}: a cluster has 1 to {MAX_NODES} nodes (SSH_EC2_NODES, nodes)");
    }
    Ok(nodes)
}

/// Spot settings, checked: `spot_only` implies `spot`.
fn spot(values: &Values, end_of_life: EndOfLife) -> Result<Option<SpotSpec>> {
    if !values.spot && !values.spot_only {
        if values.max_price.is_some() {
            bail!("--max-price (SSH_EC2_MAX_PRICE, max_price) is for spot instances: add --spot");
        }
        return Ok(None);
    }
    if end_of_life == EndOfLife::Stop {
        bail!(
            "--stop cannot work with --spot: AWS cannot stop a one-time spot instance; use \
             --terminate or --leave, or drop --spot (and spot = true, SSH_EC2_SPOT)"
        );
    }
    if let Some(price) = &values.max_price
        && !price.parse::<f64>().is_ok_and(|p| p.is_finite() && p > 0.0)
    {
        bail!("--max-price {price}: give a price per hour in USD, e.g. 0.50");
    }
    Ok(Some(SpotSpec {
        max_price: values.max_price.clone(),
        only: values.spot_only,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cloud::Owner;
    use crate::settings::Layer;

    fn ownership() -> Ownership {
        Ownership {
            owner: Owner {
                name: "ppr".into(),
                machine: "0123".into(),
                host: "laptop".into(),
            },
            dir: "/w/proj".into(),
        }
    }

    fn values(layer: Layer) -> Values {
        layer.resolve()
    }

    #[test]
    fn names_tags_and_subnets() {
        let spec = spec(
            &values(Layer {
                subnet_id: Some("subnet-a".into()),
                subnet_ids: Some("subnet-b,subnet-a".parse().unwrap()),
                tags: "team=x".parse().unwrap(),
                ..Layer::default()
            }),
            &ownership(),
            EndOfLife::Terminate,
        )
        .unwrap();
        assert_eq!(
            spec.subnets,
            ["subnet-a", "subnet-b"],
            "in order, once each"
        );
        let tag = |key: &str| {
            spec.tags
                .iter()
                .find(|(k, _)| k == key)
                .map(|(_, v)| v.as_str())
        };
        assert_eq!(tag("Name"), Some("ssh-ec2-ppr-proj"));
        assert_eq!(tag("team"), Some("x"));
        assert_eq!(tag("ssh-ec2:dir"), Some("/w/proj"));
        assert!(matches!(spec.image, ImageChoice::NewestNamed(_)));
    }

    #[test]
    fn refusals() {
        let refused = |layer: Layer, end_of_life: EndOfLife| {
            spec(&values(layer), &ownership(), end_of_life)
                .unwrap_err()
                .to_string()
        };
        let volume = Layer {
            volume_size: Some(0),
            ..Layer::default()
        };
        assert!(refused(volume, EndOfLife::Terminate).contains("1 to 16384"));
        let price_without_spot = Layer {
            max_price: Some("1".into()),
            ..Layer::default()
        };
        assert!(refused(price_without_spot, EndOfLife::Terminate).contains("add --spot"));
        let spot = || Layer {
            spot: Some(true),
            ..Layer::default()
        };
        assert!(refused(spot(), EndOfLife::Stop).contains("cannot stop"));
        let bad_price = Layer {
            max_price: Some("cheap".into()),
            ..spot()
        };
        assert!(refused(bad_price, EndOfLife::Terminate).contains("price per hour"));
        let none = Layer {
            nodes: Some(0),
            ..Layer::default()
        };
        assert!(refused(none, EndOfLife::Terminate).contains("1 to 64 nodes"));
        let only = Layer {
            spot_only: Some(true),
            ..Layer::default()
        };
        let spot = spec(&values(only), &ownership(), EndOfLife::Leave)
            .unwrap()
            .spot;
        assert!(spot.is_some_and(|s| s.only), "spot only implies spot");
    }
}
