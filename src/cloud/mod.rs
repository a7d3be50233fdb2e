//! Everything ssh-ec2 asks of AWS: images, instances, the per-run security group, the instance
//! profile check. The SDK finds its endpoint, region and credentials the standard way
//! (AWS_ENDPOINT_URL, AWS_PROFILE, …); nothing here knows about tests.

mod explain;
mod image;
mod instance;
mod network;
pub mod userdata;

use aws_config::BehaviorVersion;
use aws_config::default_provider::region::DefaultRegionChain;
use aws_config::meta::region::RegionProviderChain;
use aws_sdk_ec2::config::Region;

pub use explain::{AwsError, AwsResultExt};
pub use image::guess_user;
pub use instance::{Instance, LaunchRequest, Ownership, State};
pub use network::caller_cidr;

/// Used when neither ssh-ec2's settings nor the AWS config chain name a region.
pub const FALLBACK_REGION: &str = "eu-central-1";

pub struct Cloud {
    ec2: aws_sdk_ec2::Client,
    iam: aws_sdk_iam::Client,
    pub region: String,
}

impl Cloud {
    /// `region` from ssh-ec2's own settings wins over the AWS config chain; `profile` (which may
    /// come from `.env`, which the SDK does not read) picks the chain's profile and credentials.
    pub async fn connect(region: Option<&str>, profile: Option<&str>) -> Cloud {
        let mut chain = DefaultRegionChain::builder();
        let mut loader = aws_config::defaults(BehaviorVersion::latest());
        if let Some(profile) = profile {
            chain = chain.profile_name(profile);
            loader = loader.profile_name(profile);
        }
        let region = RegionProviderChain::first_try(region.map(|r| Region::new(r.to_string())))
            .or_else(chain.build())
            .or_else(FALLBACK_REGION);
        let config = loader.region(region).load().await;
        let region = config
            .region()
            .map_or(FALLBACK_REGION.to_string(), |r| r.to_string());
        Cloud {
            ec2: aws_sdk_ec2::Client::new(&config),
            iam: aws_sdk_iam::Client::new(&config),
            region,
        }
    }

    /// Fails early, with the admin's next step, when the instance profile does not exist.
    pub async fn check_instance_profile(&self, name: &str) -> Result<(), AwsError> {
        self.iam
            .get_instance_profile()
            .instance_profile_name(name)
            .send()
            .await
            .explain(format_args!("find the IAM instance profile `{name}`"))?;
        Ok(())
    }
}
