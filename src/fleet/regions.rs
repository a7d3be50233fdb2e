//! The owner's instances (and ssh-ec2's security groups) from every machine and directory, in
//! the current region or in every enabled one, for `--list` and `--gc`.

use anyhow::{Result, bail};

use crate::cloud::{Cloud, Owned, Owner, SshGroup};
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

/// The owner's instances and ssh-ec2's security groups (with their region), for `--gc`. A
/// region is looked at whole or skipped whole: a group is never judged without its region's
/// instances.
pub async fn owner_instances_and_groups(
    cloud: &Cloud,
    owner: &Owner,
    all_regions: bool,
    printer: &Printer,
) -> Result<(Vec<Owned>, Vec<(String, SshGroup)>, Skipped)> {
    let (mut owned, mut groups) = (Vec::new(), Vec::new());
    let skipped = for_each_region(cloud, all_regions, printer, async |cloud| {
        let instances = cloud.owner_instances(owner).await?;
        let found = cloud.owner_ssh_groups(owner).await?;
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
