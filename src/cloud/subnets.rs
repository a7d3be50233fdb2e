//! The VPC and subnets to launch in: the ones asked for, or the default VPC's.

use anyhow::{Context, Result, bail};
use aws_sdk_ec2::error::ProvideErrorMetadata;
use aws_sdk_ec2::types::Filter;

use super::{AwsResultExt, Cloud};

/// A subnet to launch in, its availability zone and its VPC.
#[derive(Debug, Clone)]
pub struct Subnet {
    pub id: String,
    pub zone: String,
    pub vpc: String,
    /// The AWS account it belongs to (another's, for a subnet shared with this one).
    pub owner: Option<String>,
}

impl Subnet {
    fn from_sdk(subnet: &aws_sdk_ec2::types::Subnet) -> Option<Subnet> {
        Some(Subnet {
            id: subnet.subnet_id()?.to_string(),
            zone: subnet.availability_zone()?.to_string(),
            vpc: subnet.vpc_id()?.to_string(),
            owner: subnet.owner_id().map(str::to_string),
        })
    }
}

impl Cloud {
    /// The subnets `ids`, in that order, asked in one request; fails when one does not exist.
    pub async fn subnets(&self, ids: &[String]) -> Result<Vec<Subnet>> {
        let found = self
            .ec2
            .describe_subnets()
            .set_subnet_ids(Some(ids.to_vec()))
            .send()
            .await;
        let found = match found {
            Err(e) if e.code() == Some("InvalidSubnetID.NotFound") => None,
            found => Some(found.explain(format_args!("look up subnet {}", ids.join(", ")))?),
        };
        let known: Vec<Subnet> = (found.iter())
            .flat_map(|f| f.subnets())
            .filter_map(Subnet::from_sdk)
            .collect();
        (ids.iter())
            .map(|id| {
                let subnet = known.iter().find(|s| s.id == *id).cloned();
                subnet.with_context(|| {
                    format!(
                        "subnet {id} does not exist in {}: check --subnet-id and --subnet-ids",
                        self.region
                    )
                })
            })
            .collect()
    }

    /// The region's default VPC (for a region without default subnets: their VPC says it).
    pub async fn default_vpc(&self) -> Result<String> {
        let found = self
            .ec2
            .describe_vpcs()
            .filters(Filter::builder().name("is-default").values("true").build())
            .send()
            .await
            .explain(format_args!("find the default VPC of {}", self.region))?;
        match found.vpcs().first().and_then(|v| v.vpc_id()) {
            Some(vpc) => Ok(vpc.to_string()),
            None => bail!(
                "no default VPC in {}: pass --subnet-id (a public subnet of your VPC)",
                self.region
            ),
        }
    }

    /// The default subnet of each availability zone of the default VPC, by zone name.
    pub async fn default_subnets(&self) -> Result<Vec<Subnet>> {
        let found = self
            .ec2
            .describe_subnets()
            .filters(
                Filter::builder()
                    .name("default-for-az")
                    .values("true")
                    .build(),
            )
            .send()
            .await
            .explain(format_args!("list the default subnets of {}", self.region))?;
        let mut subnets: Vec<Subnet> = found
            .subnets()
            .iter()
            .filter_map(Subnet::from_sdk)
            .collect();
        subnets.sort_by(|a, b| a.zone.cmp(&b.zone));
        Ok(subnets)
    }
}
