//! The security group to launch in: the instance's own (SSH from the caller's address only,
//! deleted after terminate), or an admin-made one, used as it is.

use std::time::Duration;

use anyhow::{Context, Result, bail};
use aws_sdk_ec2::error::ProvideErrorMetadata;
use aws_sdk_ec2::types::{Filter, IpPermission, IpRange, Ipv6Range, ResourceType};
use ipnet::IpNet;

use super::tags::{Owner, TAG_DIR, TAG_OWNER, tag_filter, tag_of, tag_specification};
use super::{AwsError, AwsResultExt, Cloud};
use crate::poll::Poll;

/// A security group ssh-ec2 made for one of the owner's instances.
#[derive(Debug, Clone)]
pub struct SshGroup {
    pub id: String,
    pub name: String,
    /// The directory of the instance it was made for.
    pub dir: Option<String>,
    /// Made from this machine.
    pub this_machine: bool,
}

impl Cloud {
    /// The security groups ssh-ec2 made for `owner`'s instances, from any machine.
    pub async fn owner_ssh_groups(&self, owner: &Owner) -> Result<Vec<SshGroup>> {
        let found = self
            .ec2
            .describe_security_groups()
            .filters(tag_filter(TAG_OWNER, &owner.name))
            .filters(
                Filter::builder()
                    .name("group-name")
                    .values(format!("{GROUP_PREFIX}*"))
                    .build(),
            )
            .send()
            .await
            .explain(format_args!(
                "list your ssh-ec2 security groups in {}",
                self.region
            ))?;
        Ok(found
            .security_groups()
            .iter()
            .filter(|g| owner.same_owner(g.tags()))
            .filter(|g| g.group_name().is_some_and(|n| n.starts_with(GROUP_PREFIX)))
            .filter_map(|g| {
                Some(SshGroup {
                    id: g.group_id()?.to_string(),
                    name: g.group_name()?.to_string(),
                    dir: tag_of(g.tags(), TAG_DIR).map(str::to_string),
                    this_machine: owner.same_machine(g.tags()),
                })
            })
            .collect())
    }

    /// Creates the security group `name` of a new instance in `vpc`, for tcp/22 from the CIDR
    /// `cidr` gives (this machine's address, which may still be on its way: the group is created
    /// meanwhile) only; the rule itself is for `allow_ssh_from`, once the instance is on its
    /// way. The group's id and the CIDR.
    pub async fn create_ssh_group(
        &self,
        name: &str,
        vpc: &str,
        cidr: impl Future<Output = Result<IpNet>>,
        tags: &[(String, String)],
    ) -> Result<(String, IpNet)> {
        let purpose = "ssh-ec2: SSH from the launching machine only; deleted with the instance";
        let (group, cidr) = tokio::join!(self.create_group(name, vpc, tags, purpose), cidr);
        let group = group?;
        match cidr {
            Ok(cidr) => Ok((group, cidr)),
            Err(e) => Err(match self.delete_ssh_group(&group).await {
                Ok(()) => e,
                Err(leak) => e.context(format!("{leak:#}")),
            }),
        }
    }

    /// Creates the group `name` in `vpc`, with no rule yet. The name is the launch's own, so a
    /// retried creation whose first answer was lost finds the group it made.
    pub(super) async fn create_group(
        &self,
        name: &str,
        vpc: &str,
        tags: &[(String, String)],
        purpose: &str,
    ) -> Result<String> {
        let created = self
            .ec2
            .create_security_group()
            .group_name(name)
            .description(purpose)
            .vpc_id(vpc)
            .tag_specifications(tag_specification(ResourceType::SecurityGroup, tags))
            .send()
            .await
            .explain(format_args!("create security group {name} in {vpc}"));
        let group = match created {
            Ok(created) => created
                .group_id()
                .context("EC2 created a security group without an id")?
                .to_string(),
            Err(e) if e.code.as_deref() == Some("InvalidGroup.Duplicate") => self
                .group_named(name)
                .await?
                .with_context(|| format!("security group {name} exists but cannot be found"))?,
            Err(e) => return Err(e.into()),
        };
        self.note_created(&group);
        Ok(group)
    }

    /// The id of the security group called `name`, if there is one.
    pub async fn group_named(&self, name: &str) -> Result<Option<String>> {
        let found = self
            .ec2
            .describe_security_groups()
            .filters(Filter::builder().name("group-name").values(name).build())
            .send()
            .await
            .explain(format_args!("look for security group {name}"))?;
        Ok(found
            .security_groups()
            .first()
            .and_then(|g| g.group_id())
            .map(str::to_string))
    }

    /// The id of an admin-made security group of `vpc`, given by id (`sg-…`) or by name. It is
    /// only looked up: ssh-ec2 never changes nor deletes it.
    pub async fn existing_group(&self, id_or_name: &str, vpc: &str) -> Result<String> {
        let request = self
            .ec2
            .describe_security_groups()
            .filters(Filter::builder().name("vpc-id").values(vpc).build());
        let request = match id_or_name.starts_with("sg-") {
            true => request.group_ids(id_or_name),
            false => request.filters(
                Filter::builder()
                    .name("group-name")
                    .values(id_or_name)
                    .build(),
            ),
        };
        let found = match request.send().await {
            Err(e) if e.code() == Some("InvalidGroup.NotFound") => None,
            found => found
                .explain(format_args!("look up security group {id_or_name} in {vpc}"))?
                .security_groups()
                .first()
                .and_then(|g| g.group_id())
                .map(str::to_string),
        };
        found.with_context(|| {
            format!(
                "there is no security group {id_or_name} in {vpc} ({}): check --security-group \
                 (AWS_SECURITY_GROUP), and the region and subnet it goes with",
                self.region
            )
        })
    }

    /// Lets `cidr` in on tcp/22.
    pub async fn allow_ssh_from(&self, group: &str, cidr: IpNet) -> Result<()> {
        let result = self
            .despite_lag(group, "InvalidGroup.NotFound", async || {
                self.ec2
                    .authorize_security_group_ingress()
                    .group_id(group)
                    .ip_permissions(ssh_permission(&[cidr]))
                    .send()
                    .await
                    .explain(format_args!(
                        "allow SSH from {cidr} in security group {group}"
                    ))
            })
            .await;
        match result {
            Err(e) if e.code.as_deref() == Some("InvalidPermission.Duplicate") => Ok(()),
            other => other.map(drop).map_err(Into::into),
        }
    }

    /// Lets `cidr` in on tcp/22, and no longer the addresses earlier runs came from: `last`,
    /// the one this machine let in last, when it is known; else those ssh-ec2's rules name.
    pub async fn allow_ssh_only_from(
        &self,
        group: &str,
        cidr: IpNet,
        last: Option<IpNet>,
    ) -> Result<()> {
        // Added first, so that access never depends on the revoke going through.
        self.allow_ssh_from(group, cidr).await?;
        let earlier = match last {
            Some(last) => vec![last],
            None => self.caller_rules(group).await?,
        };
        let stale: Vec<IpNet> = earlier.into_iter().filter(|old| *old != cidr).collect();
        if stale.is_empty() {
            return Ok(());
        }
        let revoked = self
            .ec2
            .revoke_security_group_ingress()
            .group_id(group)
            .ip_permissions(ssh_permission(&stale))
            .send()
            .await
            .explain(format_args!(
                "remove earlier callers' SSH rules from security group {group}"
            ));
        match revoked {
            // Someone removed it already.
            Err(e) if e.code.as_deref() == Some("InvalidPermission.NotFound") => Ok(()),
            revoked => revoked.map(drop).map_err(Into::into),
        }
    }

    /// The CIDRs that ssh-ec2's own tcp/22 rules of `group` let in.
    async fn caller_rules(&self, group: &str) -> Result<Vec<IpNet>> {
        let found = self
            .ec2
            .describe_security_groups()
            .group_ids(group)
            .send()
            .await
            .explain(format_args!("read the rules of security group {group}"))?;
        let ours = |description: Option<&str>| description == Some(CALLER_RULE);
        Ok(found
            .security_groups()
            .iter()
            .flat_map(|g| g.ip_permissions())
            .filter(|p| p.from_port() == Some(22) && p.to_port() == Some(22))
            .flat_map(|p| {
                let v4 = p
                    .ip_ranges()
                    .iter()
                    .filter(|r| ours(r.description()))
                    .filter_map(|r| r.cidr_ip());
                let v6 = p
                    .ipv6_ranges()
                    .iter()
                    .filter(|r| ours(r.description()))
                    .filter_map(|r| r.cidr_ipv6());
                v4.chain(v6)
                    .filter_map(|c| c.parse::<IpNet>().ok())
                    .collect::<Vec<_>>()
            })
            .collect())
    }

    /// Deletes a run's security group once its instance is gone. AWS refuses while the
    /// instance's network interface is still detaching, so this retries for a while.
    pub async fn delete_ssh_group(&self, group: &str) -> Result<()> {
        let what = format!("security group {group}");
        once_released(&what, async || self.try_delete_ssh_group(group).await).await
    }

    /// One try at deleting a run's security group: `false` while AWS still holds it (an
    /// instance in it is shutting down); one already gone counts as deleted.
    pub async fn try_delete_ssh_group(&self, group: &str) -> Result<bool> {
        // A group made moments ago that AWS does not show yet is not gone.
        let result = self
            .despite_lag(group, "InvalidGroup.NotFound", async || {
                self.ec2
                    .delete_security_group()
                    .group_id(group)
                    .send()
                    .await
                    .explain(format_args!("delete security group {group}"))
            })
            .await;
        let yourself = || {
            format!(
                "delete it yourself once nothing uses it: `aws ec2 delete-security-group \
                 --group-id {group}`"
            )
        };
        deletion(
            result,
            ["InvalidGroup.NotFound", "DependencyViolation"],
            yourself,
        )
    }
}

/// What one try at a deletion came to: `true` deleted (or gone already, `codes[0]`), `false`
/// still in use (`codes[1]`), else the error, with how to delete it by hand.
pub(super) fn deletion<T>(
    result: Result<T, AwsError>,
    codes: [&str; 2],
    yourself: impl FnOnce() -> String,
) -> Result<bool> {
    let [gone, in_use] = codes.map(Some);
    match result {
        Ok(_) => Ok(true),
        Err(e) if e.code.as_deref() == gone => Ok(true),
        Err(e) if e.code.as_deref() == in_use => {
            tracing::debug!("still in use: {e}");
            Ok(false)
        }
        Err(e) => Err(e).context(yourself()),
    }
}

/// Tries `delete` (one try at deleting `what`: `false` while AWS still holds it) again for a
/// while.
pub(super) async fn once_released(
    what: &str,
    mut delete: impl AsyncFnMut() -> Result<bool>,
) -> Result<()> {
    let mut poll = Poll::every(Duration::from_secs(5)).within(Duration::from_secs(180));
    while !delete().await? {
        if !poll.wait().await? {
            bail!(
                "{what} is still in use after 3 minutes: check the EC2 console, then `ssh-ec2 \
                 --gc --yes` deletes it"
            );
        }
    }
    Ok(())
}

/// How the names of ssh-ec2's security groups start (see fleet::journal).
pub const GROUP_PREFIX: &str = "ssh-ec2-";

/// The description that marks ssh-ec2's own tcp/22 rules.
const CALLER_RULE: &str = "ssh-ec2 caller";

/// tcp/22 from each of `cidrs`.
fn ssh_permission(cidrs: &[IpNet]) -> IpPermission {
    let v4: Vec<IpRange> = cidrs
        .iter()
        .filter(|c| matches!(c, IpNet::V4(_)))
        .map(|c| {
            IpRange::builder()
                .cidr_ip(c.to_string())
                .description(CALLER_RULE)
                .build()
        })
        .collect();
    let v6: Vec<Ipv6Range> = cidrs
        .iter()
        .filter(|c| matches!(c, IpNet::V6(_)))
        .map(|c| {
            Ipv6Range::builder()
                .cidr_ipv6(c.to_string())
                .description(CALLER_RULE)
                .build()
        })
        .collect();
    IpPermission::builder()
        .ip_protocol("tcp")
        .from_port(22)
        .to_port(22)
        .set_ip_ranges((!v4.is_empty()).then_some(v4))
        .set_ipv6_ranges((!v6.is_empty()).then_some(v6))
        .build()
}
