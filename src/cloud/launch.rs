//! Launching an instance: the RunInstances request (keys through user-data, IMDSv2, its
//! security group, tags at creation, spot or on-demand), and EC2's DryRun of it.

use anyhow::{Context, Result, bail};
use aws_sdk_ec2::config::interceptors::InterceptorContext;
use aws_sdk_ec2::config::retry::{ClassifyRetry, RetryAction};
use aws_sdk_ec2::error::ProvideErrorMetadata;
use aws_sdk_ec2::operation::run_instances::RunInstancesError;
use aws_sdk_ec2::types::{
    BlockDeviceMapping, EbsBlockDevice, HttpTokensState, IamInstanceProfileSpecification,
    InstanceInterruptionBehavior, InstanceMarketOptionsRequest, InstanceMetadataEndpointState,
    InstanceMetadataOptionsRequest, InstanceType, MarketType, ResourceType, ShutdownBehavior,
    SpotInstanceType, SpotMarketOptions, VolumeType,
};
use base64::Engine;

use super::image::Image;
use super::instance::Instance;
use super::tags::{TAG_EXPIRES_AT, TAG_LAUNCH, TAG_SECURITY_GROUP, TAG_USER, tag_specification};
use super::{AwsResultExt, Cloud};

/// RunInstances errors that say "not here, not now": the launch may work in another zone or
/// with another type.
pub const CAPACITY_CODES: &[&str] = &["InsufficientInstanceCapacity", "Unsupported"];

/// RunInstances errors that say "no spot instance here, now" (besides `CAPACITY_CODES`): an
/// on-demand one may still be launched.
pub const SPOT_CAPACITY_CODES: &[&str] = &[
    "InsufficientSpotInstanceCapacity",
    "SpotMaxPriceTooLow",
    "MaxSpotInstanceCountExceeded",
];

/// EC2 answers InsufficientInstanceCapacity with HTTP 500, which the SDK would retry in the same
/// zone for a minute; it is an answer, and the launch moves on to another zone or type instead.
#[derive(Debug)]
pub(super) struct CapacityIsAnAnswer;

impl ClassifyRetry for CapacityIsAnAnswer {
    fn classify_retry(&self, ctx: &InterceptorContext) -> RetryAction {
        let code = match ctx.output_or_error() {
            Some(Err(error)) => error
                .as_operation_error()
                .and_then(|e| e.downcast_ref::<RunInstancesError>())
                .and_then(|e| e.code()),
            _ => None,
        };
        match code {
            Some(code) if CAPACITY_CODES.contains(&code) => RetryAction::RetryForbidden,
            _ => RetryAction::NoActionIndicated,
        }
    }

    fn name(&self) -> &'static str {
        "capacity errors are answers"
    }
}

/// Everything RunInstances needs, already decided by the plan.
pub struct LaunchRequest<'a> {
    pub image: &'a Image,
    pub instance_type: &'a str,
    pub user_data: &'a str,
    /// `None`: the VPC's default group (only to ask whether a launch would be allowed).
    pub security_group: Option<&'a str>,
    /// The group was made for this instance: tagged on it, to be deleted with it. An
    /// admin-made group is not.
    pub own_group: bool,
    pub login_user: &'a str,
    pub subnet_id: Option<&'a str>,
    pub key_name: Option<&'a str>,
    pub instance_profile: Option<&'a str>,
    pub volume_size: Option<u32>,
    /// Ownership, Name and user tags, applied at creation to the instance and its volumes.
    pub tags: &'a [(String, String)],
    /// Makes a retried RunInstances idempotent.
    pub client_token: &'a str,
    /// Its launch in the journal, tagged so that the instance is found if the answer is lost.
    pub launch_id: &'a str,
    /// The `ssh-ec2:expires-at` tag; `None`: the instance has no maximum lifetime.
    pub expires_at: Option<&'a str>,
    /// A one-time spot instance, up to this price per hour (`Some(None)`: the on-demand price).
    pub spot: Option<Option<&'a str>>,
}

impl Cloud {
    pub async fn launch(&self, request: &LaunchRequest<'_>) -> Result<Instance> {
        let run = self.run_instances(request)?;
        let group = request.security_group.unwrap_or_default();
        let launched = self
            .despite_lag(group, "InvalidGroup.NotFound", async || {
                run.clone().send().await.explain(self.launching(request))
            })
            .await?;
        let instance = launched
            .instances()
            .first()
            .and_then(Instance::from_sdk)
            .context("EC2 accepted the launch but returned no instance: check the EC2 console")?;
        self.note_created(&instance.id);
        Ok(instance)
    }

    /// Asks EC2 whether `request` would be allowed, with its own DryRun flag: nothing is
    /// launched. `Ok(())` means yes; the error says what AWS refused (the missing right, an
    /// image it cannot use…).
    pub async fn may_launch(&self, request: &LaunchRequest<'_>) -> Result<()> {
        let asked = self.run_instances(request)?.dry_run(true).send().await;
        let refused = match asked.explain(self.launching(request)) {
            Err(e) if e.code.as_deref() == Some("DryRunOperation") => return Ok(()),
            Err(e) => e,
            Ok(launched) => {
                // An endpoint that ignores DryRun launched it: it must not run on.
                for instance in launched.instances() {
                    if let Some(id) = instance.instance_id() {
                        self.terminate(id).await?;
                    }
                }
                bail!(
                    "the EC2 endpoint ignored DryRun and launched an instance (now terminated): \
                     check AWS_ENDPOINT_URL"
                );
            }
        };
        Err(self.explain_denial(refused.into()).await)
    }

    /// What a launch is, for its errors.
    fn launching(&self, request: &LaunchRequest<'_>) -> String {
        format!(
            "launch a {} instance of {} in {}",
            request.instance_type, request.image.id, self.region
        )
    }

    /// The RunInstances request of a launch, ready to send.
    fn run_instances(
        &self,
        request: &LaunchRequest<'_>,
    ) -> Result<aws_sdk_ec2::operation::run_instances::builders::RunInstancesFluentBuilder> {
        let user_data = base64::engine::general_purpose::STANDARD.encode(request.user_data);
        let mut tags = request.tags.to_vec();
        if let Some(group) = request.security_group.filter(|_| request.own_group) {
            tags.push((TAG_SECURITY_GROUP.into(), group.into()));
        }
        tags.push((TAG_USER.into(), request.login_user.into()));
        tags.push((TAG_LAUNCH.into(), request.launch_id.into()));
        if let Some(at) = request.expires_at {
            tags.push((TAG_EXPIRES_AT.into(), at.into()));
        }
        let root_volume = root_volume(request)?;
        let run = self
            .ec2
            .run_instances()
            .image_id(&request.image.id)
            .instance_type(InstanceType::from(request.instance_type))
            .min_count(1)
            .max_count(1)
            .user_data(user_data)
            .set_security_group_ids(request.security_group.map(|g| vec![g.to_string()]))
            .set_subnet_id(request.subnet_id.map(str::to_string))
            .set_key_name(request.key_name.map(str::to_string))
            .set_iam_instance_profile(request.instance_profile.map(|name| {
                IamInstanceProfileSpecification::builder()
                    .name(name)
                    .build()
            }))
            .set_block_device_mappings(root_volume.map(|mapping| vec![mapping]))
            .metadata_options(
                InstanceMetadataOptionsRequest::builder()
                    .http_tokens(HttpTokensState::Required)
                    .http_endpoint(InstanceMetadataEndpointState::Enabled)
                    .build(),
            )
            // Whatever the end of life: a shutdown from inside must not destroy results that are
            // not home yet. Only ssh-ec2 terminates, once they are. A one-time spot instance
            // cannot stop: AWS only takes "terminate" for it.
            .instance_initiated_shutdown_behavior(match request.spot {
                Some(_) => ShutdownBehavior::Terminate,
                None => ShutdownBehavior::Stop,
            })
            .set_instance_market_options(request.spot.map(one_time_spot))
            .tag_specifications(tag_specification(ResourceType::Instance, &tags))
            .tag_specifications(tag_specification(ResourceType::Volume, request.tags))
            .client_token(request.client_token);
        Ok(run)
    }
}

/// The image's own root volume, made deletable on termination (and resized if asked).
fn root_volume(request: &LaunchRequest<'_>) -> Result<Option<BlockDeviceMapping>> {
    let Some(root) = &request.image.root_volume else {
        if request.volume_size.is_some() {
            bail!(
                "image {} has no EBS root volume to resize: drop --volume-size",
                request.image.id
            );
        }
        return Ok(None);
    };
    let size = request.volume_size.map_or(root.size_gib, |gib| gib as i32);
    if size < root.size_gib {
        bail!(
            "image {} needs a root volume of at least {} GiB: raise --volume-size",
            request.image.id,
            root.size_gib
        );
    }
    let ebs = EbsBlockDevice::builder()
        .snapshot_id(&root.snapshot_id)
        .volume_size(size)
        .volume_type(VolumeType::Gp3)
        .delete_on_termination(true)
        .build();
    Ok(Some(
        BlockDeviceMapping::builder()
            .device_name(&root.device)
            .ebs(ebs)
            .build(),
    ))
}

/// A one-time spot instance, up to `max_price` per hour (`None`: the on-demand price), that AWS
/// terminates when it takes the capacity back.
fn one_time_spot(max_price: Option<&str>) -> InstanceMarketOptionsRequest {
    InstanceMarketOptionsRequest::builder()
        .market_type(MarketType::Spot)
        .spot_options(
            SpotMarketOptions::builder()
                .spot_instance_type(SpotInstanceType::OneTime)
                .instance_interruption_behavior(InstanceInterruptionBehavior::Terminate)
                .set_max_price(max_price.map(str::to_string))
                .build(),
        )
        .build()
}
