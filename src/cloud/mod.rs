//! Everything ssh-ec2 asks of AWS: images, instances, the security group, the instance profile
//! check, the IAM set-up of `--setup`, and prices. The SDK finds its endpoint, region and
//! credentials the standard way (AWS_ENDPOINT_URL, AWS_PROFILE, …); nothing here knows about
//! tests.

mod checkip;
mod cluster;
mod explain;
mod iam;
mod image;
mod instance;
mod launch;
mod network;
mod pricing;
mod refused;
mod sent;
mod subnets;
mod tags;
pub mod userdata;

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use aws_config::default_provider::region::DefaultRegionChain;
use aws_config::meta::region::RegionProviderChain;
use aws_config::retry::RetryConfig;
use aws_config::timeout::TimeoutConfig;
use aws_config::{BehaviorVersion, SdkConfig};
use aws_sdk_ec2::config::Region;

use crate::poll::Poll;
use crate::settings::defaults::REGION as FALLBACK_REGION;
pub use checkip::caller_cidr;
pub use cluster::OwnedPlacementGroup;
pub use explain::{AwsError, AwsResultExt};
pub use iam::Change;
pub use image::{Image, TypeInfo, guess_user, newest_for};
pub use instance::{Instance, Owned, State};
pub use launch::{CAPACITY_CODES, LaunchRequest, SPOT_CAPACITY_CODES};
pub use network::{GROUP_PREFIX, SshGroup};
pub use subnets::Subnet;
pub use tags::{Owner, Ownership};

/// Which AWS account and region to talk to, as the settings say.
#[derive(Debug, Clone, Default)]
pub struct Account {
    /// ssh-ec2's own region setting; `None` leaves it to the AWS config chain (else
    /// `settings::defaults::REGION`).
    pub region: Option<String>,
    /// AWS_PROFILE, also from `.env` or a config file; `None`: the AWS default profile.
    pub profile: Option<String>,
}

/// How long AWS may take to show what was just created: its answers are eventually consistent,
/// so until then a "not found" is no proof that something is gone.
pub const VISIBILITY_LAG: Duration = Duration::from_secs(120);

/// A connection to a region: the one at hand when it is that region's, else a new one.
pub enum InRegion<'a> {
    This(&'a Cloud),
    Other(Box<Cloud>),
}

impl std::ops::Deref for InRegion<'_> {
    type Target = Cloud;

    fn deref(&self) -> &Cloud {
        match self {
            InRegion::This(cloud) => cloud,
            InRegion::Other(cloud) => cloud,
        }
    }
}

pub struct Cloud {
    ec2: aws_sdk_ec2::Client,
    iam: aws_sdk_iam::Client,
    /// The AWS Price List, asked briefly.
    pricing: aws_sdk_pricing::Client,
    /// To decode why AWS refused something, and to learn the account.
    sts: aws_sdk_sts::Client,
    pub region: String,
    /// The AWS profile it was connected with (`Account::profile`), for a helper process that
    /// must act with the same credentials.
    pub profile: Option<String>,
    /// Set once a request to EC2 has left (see `sent`).
    sent: tokio::sync::watch::Receiver<bool>,
    /// What this process created (or found after a lost answer), and when.
    created: Mutex<HashMap<String, Instant>>,
    /// What the clients were made from, for a connection to another region.
    config: SdkConfig,
}

/// The AWS partition of a region, from its name.
fn partition(region: &str) -> &'static str {
    match region {
        r if r.starts_with("cn-") => "aws-cn",
        r if r.starts_with("us-gov-") => "aws-us-gov",
        r if r.starts_with("us-isob-") => "aws-iso-b",
        r if r.starts_with("us-iso-") => "aws-iso",
        _ => "aws",
    }
}

/// Throttling, AWS-side failures and network errors are retried with jittered exponential
/// backoff, from 0.25 s doubling up to 20 s, for 10 attempts: at most about 70 s per request,
/// so a burst of throttling does not fail the run. The SDK's default, 3 attempts, gives up
/// within a second or two.
fn patient_retries() -> RetryConfig {
    RetryConfig::standard()
        .with_max_attempts(10)
        .with_initial_backoff(Duration::from_millis(250))
        .with_max_backoff(Duration::from_secs(20))
}

/// No request may hang: a connection not made, an answer that stalls or one that never ends is
/// given up after these, and retried like a throttled request (the SDK's retries count timeouts
/// as transient). EC2 and IAM answer within a second or two; these leave ample room.
fn no_hang() -> TimeoutConfig {
    TimeoutConfig::builder()
        .connect_timeout(Duration::from_secs(5))
        .read_timeout(Duration::from_secs(10))
        .operation_attempt_timeout(Duration::from_secs(20))
        .build()
}

impl Cloud {
    /// `region` from ssh-ec2's own settings wins over the AWS config chain; `profile` (which may
    /// come from `.env`, which the SDK does not read) picks the chain's profile and credentials.
    pub async fn connect(account: &Account) -> Cloud {
        let (region, profile) = (account.region.as_deref(), account.profile.as_deref());
        let mut chain = DefaultRegionChain::builder();
        let mut loader = aws_config::defaults(BehaviorVersion::latest());
        if let Some(profile) = profile {
            chain = chain.profile_name(profile);
            loader = loader.profile_name(profile);
        }
        let region = RegionProviderChain::first_try(region.map(|r| Region::new(r.to_string())))
            .or_else(chain.build())
            .or_else(FALLBACK_REGION);
        let mut config = loader.region(region).timeout_config(no_hang()).load().await;
        // The user's own AWS retry settings (AWS_MAX_ATTEMPTS, AWS_RETRY_MODE, or max_attempts
        // and retry_mode in the profile) win; only the SDK's default is replaced.
        if config.retry_config() == Some(&RetryConfig::standard()) {
            config = config
                .into_builder()
                .retry_config(patient_retries())
                .build();
        }
        Cloud::from_config(config, account.profile.clone())
    }

    fn from_config(config: SdkConfig, profile: Option<String>) -> Cloud {
        let region = config
            .region()
            .map_or(FALLBACK_REGION.to_string(), |r| r.to_string());
        let (sent, sent_seen) = sent::Sent::new();
        let ec2 = aws_sdk_ec2::config::Builder::from(&config)
            .retry_classifier(launch::CapacityIsAnAnswer)
            .retry_classifier(refused::RefusedIsAnAnswer)
            .interceptor(sent)
            .build();
        let (retry, timeout) = pricing::brief();
        let pricing = aws_sdk_pricing::config::Builder::from(&config)
            .region(Region::new(pricing::PRICE_LIST_REGION))
            .retry_config(retry)
            .timeout_config(timeout)
            .build();
        Cloud {
            ec2: aws_sdk_ec2::Client::from_conf(ec2),
            iam: aws_sdk_iam::Client::new(&config),
            pricing: aws_sdk_pricing::Client::from_conf(pricing),
            sts: aws_sdk_sts::Client::new(&config),
            region,
            profile,
            sent: sent_seen,
            created: Mutex::default(),
            config,
        }
    }

    /// The same account and credentials (resolved once, for every region), in another region.
    pub fn in_region(&self, region: &str) -> InRegion<'_> {
        match region == self.region {
            true => InRegion::This(self),
            false => InRegion::Other(Box::new(Cloud::from_config(
                self.config
                    .clone()
                    .into_builder()
                    .region(Region::new(region.to_string()))
                    .build(),
                self.profile.clone(),
            ))),
        }
    }

    /// The regions enabled for the account (those it may launch in), in this region's partition:
    /// an account and its credentials belong to one (aws, aws-cn, aws-us-gov…).
    pub async fn enabled_regions(&self) -> Result<Vec<String>, AwsError> {
        let found = self
            .ec2
            .describe_regions()
            .send()
            .await
            .explain("list the regions enabled for your account")?;
        let mut regions: Vec<String> = found
            .regions()
            .iter()
            .filter_map(|r| r.region_name())
            .filter(|region| partition(region) == partition(&self.region))
            .map(str::to_string)
            .collect();
        regions.sort();
        Ok(regions)
    }

    /// The AWS account these credentials act in (STS GetCallerIdentity, which needs no right),
    /// to record with what is launched. Asked briefly: a run does not wait on bookkeeping.
    pub async fn account_id(&self) -> anyhow::Result<String> {
        let brief = aws_sdk_sts::config::Builder::default()
            .retry_config(RetryConfig::standard().with_max_attempts(3))
            .timeout_config(
                aws_config::timeout::TimeoutConfig::builder()
                    .operation_timeout(Duration::from_secs(10))
                    .build(),
            );
        let identity = self
            .sts
            .get_caller_identity()
            .customize()
            .config_override(brief)
            .send()
            .await
            .explain("learn which AWS account your credentials belong to")?;
        identity
            .account()
            .map(str::to_string)
            .ok_or_else(|| anyhow::anyhow!("STS named no account for your credentials"))
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

    /// Resolves once a request to EC2 has left (`true`: the credentials were found, the run
    /// reaches AWS), or once this connection is gone without one (`false`).
    pub fn sent(&self) -> impl Future<Output = bool> + Send + 'static {
        let mut sent = self.sent.clone();
        async move { sent.wait_for(|sent| *sent).await.is_ok() }
    }

    /// Remembers that `id` exists from now on, whatever AWS says in the next moments.
    pub fn note_created(&self, id: &str) {
        let mut created = self.created.lock().expect("not poisoned");
        created.insert(id.to_string(), Instant::now());
    }

    /// Whether `id` was created so recently that AWS may not show it yet.
    fn may_be_invisible(&self, id: &str) -> bool {
        let created = self.created.lock().expect("not poisoned");
        created
            .get(id)
            .is_some_and(|when| when.elapsed() < VISIBILITY_LAG)
    }

    /// Calls again while AWS answers `not_found` (e.g. InvalidGroup.NotFound) about `id`,
    /// created moments ago.
    async fn despite_lag<T>(
        &self,
        id: &str,
        not_found: &str,
        mut call: impl AsyncFnMut() -> Result<T, AwsError>,
    ) -> Result<T, AwsError> {
        let mut poll = Poll::every(Duration::from_secs(2));
        loop {
            match call().await {
                Err(e) if e.code.as_deref() == Some(not_found) && self.may_be_invisible(id) => {
                    tracing::debug!("{id} is not visible yet: {e}");
                    // No deadline of its own (`may_be_invisible` ends the wait), so no error.
                    let _ = poll.wait().await;
                }
                other => return other,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::partition;

    #[test]
    fn regions_are_grouped_by_partition() {
        assert_eq!(partition("eu-central-1"), "aws");
        assert_eq!(partition("us-east-1"), "aws");
        assert_eq!(partition("cn-north-1"), "aws-cn");
        assert_eq!(partition("us-gov-west-1"), "aws-us-gov");
    }
}
