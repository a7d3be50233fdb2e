//! The owner's instances (and ssh-ec2's groups) from every machine and directory, in
//! the current region or in every enabled one, for `--list` and `--gc`.

use anyhow::{Result, bail};

use crate::cloud::{Cloud, Owned, OwnedPlacementGroup, Owner, SshGroup};
use crate::printer::Printer;

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
async fn for_each_region(
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
    owner: &Owner,
    all_regions: bool,
    printer: &Printer,
) -> Result<(Vec<Owned>, Skipped)> {
    let mut owned = Vec::new();
    let skipped = for_each_region(cloud, all_regions, printer, async |cloud| {
        owned.extend(cloud.owner_instances(owner).await?);
        Ok(())
    })
    .await?;
    sort_by_place(&mut owned);
    Ok((owned, skipped))
}

/// What ssh-ec2 made for the owner, for `--gc`.
pub struct Made {
    /// From every machine and directory.
    pub instances: Vec<Owned>,
    /// Security groups, with their region.
    pub groups: Vec<(String, SshGroup)>,
    /// Clusters' placement groups made from this machine, with their region.
    pub placement_groups: Vec<(String, OwnedPlacementGroup)>,
    pub skipped: Skipped,
}

/// The owner's instances and ssh-ec2's groups, for `--gc`. A region is looked at whole or
/// skipped whole: a group is never judged without its region's instances.
pub async fn owner_made(
    cloud: &Cloud,
    owner: &Owner,
    all_regions: bool,
    printer: &Printer,
) -> Result<Made> {
    let (mut instances, mut groups, mut placement_groups) = (Vec::new(), Vec::new(), Vec::new());
    let skipped = for_each_region(cloud, all_regions, printer, async |cloud| {
        let (found, ssh, placement) = tokio::try_join!(
            cloud.owner_instances(owner),
            cloud.owner_ssh_groups(owner),
            cloud.owner_placement_groups(owner)
        )?;
        let region = || cloud.region.clone();
        instances.extend(found);
        groups.extend(ssh.into_iter().map(|group| (region(), group)));
        placement_groups.extend(placement.into_iter().map(|group| (region(), group)));
        Ok(())
    })
    .await?;
    sort_by_place(&mut instances);
    Ok(Made {
        instances,
        groups,
        placement_groups,
        skipped,
    })
}

fn sort_by_place(owned: &mut [Owned]) {
    owned.sort_by(|a, b| {
        let key = |o: &Owned| {
            (
                o.region.clone(),
                o.dir.clone(),
                o.launch.clone(),
                o.instance.node.rank,
            )
        };
        key(a).cmp(&key(b))
    });
}

/// The instances as machines: a cluster's nodes together (head first), any other alone.
/// `owned` is sorted by place (see `sort_by_place`), so a cluster's nodes are next to each other.
pub fn machines(owned: Vec<Owned>) -> Vec<Vec<Owned>> {
    let mut machines: Vec<Vec<Owned>> = Vec::new();
    for node in owned {
        let joins = machines.last().and_then(|m| m.first()).is_some_and(|head| {
            node.instance.node.of > 1
                && head.launch.is_some()
                && head.launch == node.launch
                && head.region == node.region
        });
        match joins {
            true => machines.last_mut().expect("a machine").push(node),
            false => machines.push(vec![node]),
        }
    }
    machines
}
