//! What a cluster adds to a launch: its placement group (the nodes close together, when the
//! type allows it), its own security group (the nodes reach each other, on any port; nothing
//! else gets in through it), and the SSH group on its head only.

use anyhow::Result;
use aws_sdk_ec2::types::{IpPermission, PlacementStrategy, ResourceType, UserIdGroupPair};

use super::network::{deletion, once_released};
use super::tags::{Owner, TAG_DIR, TAG_OWNER, tag_filter, tag_of, tag_specification};
use super::{AwsResultExt, Cloud};

/// A placement group ssh-ec2 made for one of the owner's clusters.
#[derive(Debug, Clone)]
pub struct OwnedPlacementGroup {
    pub name: String,
    /// The directory of the cluster it was made for.
    pub dir: Option<String>,
}

impl Cloud {
    /// Creates the placement group `name` (strategy `cluster`). A retried creation whose first
    /// answer was lost finds the group it made.
    pub async fn create_placement_group(
        &self,
        name: &str,
        tags: &[(String, String)],
    ) -> Result<()> {
        let created = self
            .ec2
            .create_placement_group()
            .group_name(name)
            .strategy(PlacementStrategy::Cluster)
            .tag_specifications(tag_specification(ResourceType::PlacementGroup, tags))
            .send()
            .await
            .explain(format_args!("create placement group {name}"));
        match created {
            Err(e) if e.code.as_deref() == Some("InvalidPlacementGroup.Duplicate") => Ok(()),
            created => created.map(drop).map_err(Into::into),
        }
    }

    /// Deletes the placement group `name` once its instances are gone; one already gone is
    /// deleted. AWS refuses while terminated instances still count as in it: retried a while.
    pub async fn delete_placement_group(&self, name: &str) -> Result<()> {
        let what = format!("placement group {name}");
        once_released(&what, async || self.try_delete_placement_group(name).await).await
    }

    /// One try at deleting the placement group `name`: `false` while AWS still counts an
    /// instance in it; one already gone counts as deleted.
    pub async fn try_delete_placement_group(&self, name: &str) -> Result<bool> {
        let deleted = self
            .ec2
            .delete_placement_group()
            .group_name(name)
            .send()
            .await
            .explain(format_args!("delete placement group {name}"));
        let yourself = || {
            format!(
                "delete it yourself once its instances are gone: `aws ec2 \
                 delete-placement-group --group-name {name}`"
            )
        };
        let codes = [
            "InvalidPlacementGroup.Unknown",
            "InvalidPlacementGroup.InUse",
        ];
        deletion(deleted, codes, yourself)
    }

    /// The placement groups ssh-ec2 made for `owner`'s clusters, from this machine.
    pub async fn owner_placement_groups(&self, owner: &Owner) -> Result<Vec<OwnedPlacementGroup>> {
        let found = self
            .ec2
            .describe_placement_groups()
            .filters(tag_filter(TAG_OWNER, &owner.name))
            .send()
            .await
            .explain(format_args!(
                "list your placement groups in {}",
                self.region
            ))?;
        Ok(found
            .placement_groups()
            .iter()
            .filter(|g| owner.same_owner(g.tags()) && owner.same_machine(g.tags()))
            .filter_map(|g| {
                Some(OwnedPlacementGroup {
                    name: g.group_name()?.to_string(),
                    dir: tag_of(g.tags(), TAG_DIR).map(str::to_string),
                })
            })
            .collect())
    }

    /// Creates a cluster's own group `name` in `vpc`: its members reach each other on any
    /// port; nothing else is let in by it.
    pub async fn create_node_group(
        &self,
        name: &str,
        vpc: &str,
        tags: &[(String, String)],
    ) -> Result<String> {
        let group = self
            .create_group(
                name,
                vpc,
                tags,
                "ssh-ec2: a cluster's nodes reach each other",
            )
            .await?;
        let allowed = self
            .despite_lag(&group, "InvalidGroup.NotFound", async || {
                self.ec2
                    .authorize_security_group_ingress()
                    .group_id(&group)
                    .ip_permissions(members_of(&group))
                    .send()
                    .await
                    .explain(format_args!("let the nodes of security group {group} in"))
            })
            .await;
        match allowed {
            Err(e) if e.code.as_deref() != Some("InvalidPermission.Duplicate") => {
                Err(match self.delete_ssh_group(&group).await {
                    Ok(()) => e.into(),
                    Err(leak) => anyhow::Error::from(e).context(format!("{leak:#}")),
                })
            }
            _ => Ok(group),
        }
    }

    /// Puts instance `id` in exactly `groups` (the head of a cluster gets the SSH group).
    pub async fn set_groups(&self, id: &str, groups: &[&str]) -> Result<()> {
        self.ec2
            .modify_instance_attribute()
            .instance_id(id)
            .set_groups(Some(groups.iter().map(|g| g.to_string()).collect()))
            .send()
            .await
            .explain(format_args!(
                "put instance {id} in security groups {}",
                groups.join(", ")
            ))?;
        Ok(())
    }
}

/// Any protocol, any port, from members of `group`.
fn members_of(group: &str) -> IpPermission {
    IpPermission::builder()
        .ip_protocol("-1")
        .user_id_group_pairs(
            UserIdGroupPair::builder()
                .group_id(group)
                .description("ssh-ec2: the other nodes of the cluster")
                .build(),
        )
        .build()
}
