//! The instance that belongs to a directory: finding it, launching it, and moving it between
//! states.

use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use aws_sdk_ec2::config::interceptors::InterceptorContext;
use aws_sdk_ec2::config::retry::{ClassifyRetry, RetryAction};
use aws_sdk_ec2::error::ProvideErrorMetadata;
use aws_sdk_ec2::operation::run_instances::RunInstancesError;
use aws_sdk_ec2::types::{
    BlockDeviceMapping, EbsBlockDevice, Filter, HttpTokensState, IamInstanceProfileSpecification,
    InstanceLifecycleType, InstanceMetadataEndpointState, InstanceMetadataOptionsRequest,
    InstanceStateName, InstanceType, ResourceType, ShutdownBehavior, TagSpecification, VolumeType,
};
use aws_sdk_ec2::types::{
    InstanceInterruptionBehavior, InstanceMarketOptionsRequest, MarketType, SpotInstanceType,
    SpotMarketOptions,
};
use base64::Engine;

use super::image::Image;
use super::{AwsError, AwsResultExt, Cloud};
use crate::backoff::Backoff;

pub(super) const TAG_OWNER: &str = "ssh-ec2:owner";
/// This machine's id (src/machine.rs); instances of the first version have none.
const TAG_MACHINE: &str = "ssh-ec2:machine";
/// The host name: for people reading the tags, and what the first version went by.
const TAG_HOST: &str = "ssh-ec2:host";
pub(super) const TAG_DIR: &str = "ssh-ec2:dir";
/// The security group made for this instance, deleted once it is terminated (an admin-made
/// group is not tagged, so it is never changed nor deleted).
const TAG_SECURITY_GROUP: &str = "ssh-ec2:security-group";
/// The login user, so a later run need not guess it again.
const TAG_USER: &str = "ssh-ec2:user";
/// The launch that made the instance (see fleet::journal): found by it after a lost answer.
const TAG_LAUNCH: &str = "ssh-ec2:launch";
/// When the instance stops itself (its dead-man switch, see `remote::watchdog`), ISO 8601 UTC;
/// kept current by every run, shown by --list, acted on by --gc.
const TAG_EXPIRES_AT: &str = "ssh-ec2:expires-at";

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

/// Who and what an instance belongs to: a directory on a machine, for an owner.
#[derive(Debug, Clone)]
pub struct Ownership {
    pub owner: String,
    pub machine: String,
    pub host: String,
    pub dir: String,
}

impl Ownership {
    /// The tags that mark a resource as this directory's.
    pub fn tags(&self) -> Vec<(String, String)> {
        vec![
            (TAG_OWNER.into(), self.owner.clone()),
            (TAG_MACHINE.into(), self.machine.clone()),
            (TAG_HOST.into(), self.host.clone()),
            (TAG_DIR.into(), self.dir.clone()),
        ]
    }

    /// Compares the tags exactly (EC2 filters treat `*` and `?` as wildcards). An instance
    /// without a machine tag was launched by the first version, which went by the host name.
    fn owns(&self, tags: &[aws_sdk_ec2::types::Tag]) -> bool {
        self.same_owner(tags) && tag_of(tags, TAG_DIR) == Some(&self.dir) && self.same_machine(tags)
    }

    /// Carries exactly this owner's tag (EC2's tag filters match by pattern).
    pub(super) fn same_owner(&self, tags: &[aws_sdk_ec2::types::Tag]) -> bool {
        tag_of(tags, TAG_OWNER) == Some(&self.owner)
    }

    /// Launched from this machine (whatever the owner and directory).
    pub(super) fn same_machine(&self, tags: &[aws_sdk_ec2::types::Tag]) -> bool {
        match tag_of(tags, TAG_MACHINE) {
            Some(machine) => machine == self.machine,
            None => tag_of(tags, TAG_HOST) == Some(&self.host),
        }
    }
}

pub(super) fn tag_of<'a>(tags: &'a [aws_sdk_ec2::types::Tag], key: &str) -> Option<&'a str> {
    tags.iter()
        .find(|t| t.key() == Some(key))
        .and_then(|t| t.value())
}

/// The EC2 filter on tag `key` that matches `value` only.
pub(super) fn tag_filter(key: &str, value: &str) -> Filter {
    Filter::builder()
        .name(format!("tag:{key}"))
        .values(filter_value(value))
        .build()
}

/// An EC2 filter value that matches `text` only: `*` and `?` are wildcards there, and `\`
/// escapes them (and itself).
fn filter_value(text: &str) -> String {
    let mut escaped = String::with_capacity(text.len());
    for c in text.chars() {
        if matches!(c, '*' | '?' | '\\') {
            escaped.push('\\');
        }
        escaped.push(c);
    }
    escaped
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    Pending,
    Running,
    Stopping,
    Stopped,
    ShuttingDown,
    Terminated,
}

impl State {
    fn from_sdk(name: Option<&InstanceStateName>) -> State {
        match name {
            Some(InstanceStateName::Pending) => State::Pending,
            Some(InstanceStateName::Running) => State::Running,
            Some(InstanceStateName::Stopping) => State::Stopping,
            Some(InstanceStateName::Stopped) => State::Stopped,
            Some(InstanceStateName::ShuttingDown) => State::ShuttingDown,
            _ => State::Terminated,
        }
    }

    /// Not (being) terminated.
    pub fn is_live(self) -> bool {
        !matches!(self, State::ShuttingDown | State::Terminated)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            State::Pending => "pending",
            State::Running => "running",
            State::Stopping => "stopping",
            State::Stopped => "stopped",
            State::ShuttingDown => "shutting-down",
            State::Terminated => "terminated",
        }
    }
}

#[derive(Debug, Clone)]
pub struct Instance {
    pub id: String,
    pub state: State,
    pub instance_type: String,
    pub public_ip: Option<String>,
    pub private_ip: Option<String>,
    pub security_group: Option<String>,
    pub login_user: Option<String>,
    /// A (one-time) spot instance: it cannot be stopped.
    pub spot: bool,
    /// Its availability zone, when known (a spot price is per zone).
    pub zone: Option<String>,
}

impl Instance {
    fn from_sdk(instance: &aws_sdk_ec2::types::Instance) -> Option<Instance> {
        let tag = |key: &str| tag_of(instance.tags(), key);
        Some(Instance {
            id: instance.instance_id()?.to_string(),
            state: State::from_sdk(instance.state().and_then(|s| s.name())),
            instance_type: instance
                .instance_type()
                .map_or("", |t| t.as_str())
                .to_string(),
            public_ip: instance.public_ip_address().map(str::to_string),
            private_ip: instance.private_ip_address().map(str::to_string),
            security_group: tag(TAG_SECURITY_GROUP).map(str::to_string),
            login_user: tag(TAG_USER).map(str::to_string),
            spot: instance.instance_lifecycle() == Some(&InstanceLifecycleType::Spot),
            zone: instance
                .placement()
                .and_then(|p| p.availability_zone())
                .map(str::to_string),
        })
    }

    /// Where its sshd listens: the public IP, else the private one (VPN, peered networks).
    pub fn address(&self) -> Option<&str> {
        self.public_ip.as_deref().or(self.private_ip.as_deref())
    }
}

/// An instance of the owner, with what `--list` and `--gc` tell about it.
#[derive(Debug, Clone)]
pub struct Owned {
    pub instance: Instance,
    pub region: String,
    /// The directory it belongs to (its `ssh-ec2:dir` tag).
    pub dir: Option<String>,
    /// The host name it was launched from.
    pub host: Option<String>,
    /// Launched from this machine (the others hold its keys, if anyone does).
    pub this_machine: bool,
    /// Its launch time, ISO 8601.
    pub launched: Option<String>,
    /// When it ends itself, ISO 8601 (its `ssh-ec2:expires-at` tag).
    pub expires_at: Option<String>,
    /// The launch that made it (see fleet::journal).
    pub launch: Option<String>,
}

impl Owned {
    /// Its `ssh-ec2:expires-at` is in the past (an unreadable one is not).
    pub fn expired(&self) -> bool {
        use aws_sdk_ec2::primitives::{DateTime, DateTimeFormat};
        self.expires_at
            .as_deref()
            .and_then(|at| DateTime::from_str(at, DateTimeFormat::DateTime).ok())
            .is_some_and(|at| at < DateTime::from(std::time::SystemTime::now()))
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

pub(super) fn tag_specification(kind: ResourceType, tags: &[(String, String)]) -> TagSpecification {
    let tags = tags
        .iter()
        .map(|(k, v)| aws_sdk_ec2::types::Tag::builder().key(k).value(v).build());
    TagSpecification::builder()
        .resource_type(kind)
        .set_tags(Some(tags.collect()))
        .build()
}

impl Cloud {
    /// The live (not terminated) instance tagged as this directory's, if any.
    pub async fn find_owned(&self, owner: &Ownership) -> Result<Option<Instance>> {
        let mut request = self.ec2.describe_instances().filters(
            Filter::builder()
                .name("instance-state-name")
                .values("pending")
                .values("running")
                .values("stopping")
                .values("stopped")
                .build(),
        );
        // Owner and directory only: the first version's instances have no machine tag, and
        // this version's may carry an old host name. `owns` decides which are ours.
        for (key, value) in [(TAG_OWNER, &owner.owner), (TAG_DIR, &owner.dir)] {
            request = request.filters(tag_filter(key, value));
        }
        let found = request
            .send()
            .await
            .explain(format_args!("list your instances in {}", self.region))?;
        let mut owned: Vec<Instance> = found
            .reservations()
            .iter()
            .flat_map(|r| r.instances())
            .filter(|i| owner.owns(i.tags()))
            .filter_map(Instance::from_sdk)
            .filter(|i| i.state.is_live())
            .collect();
        // A running one is the cheapest to reuse.
        owned.sort_by_key(|i| i.state != State::Running);
        Ok(owned.into_iter().next())
    }

    /// Every instance of `owner` not terminated yet, from any machine and directory.
    pub async fn owner_instances(&self, ownership: &Ownership) -> Result<Vec<Owned>> {
        let found = self
            .ec2
            .describe_instances()
            .filters(tag_filter(TAG_OWNER, &ownership.owner))
            .send()
            .await
            .explain(format_args!("list your instances in {}", self.region))?;
        Ok(found
            .reservations()
            .iter()
            .flat_map(|r| r.instances())
            .filter(|i| ownership.same_owner(i.tags()))
            .filter_map(|i| {
                let tag = |key| tag_of(i.tags(), key).map(str::to_string);
                Some(Owned {
                    instance: Instance::from_sdk(i)?,
                    region: self.region.clone(),
                    dir: tag(TAG_DIR),
                    host: tag(TAG_HOST),
                    this_machine: ownership.same_machine(i.tags()),
                    launched: i.launch_time().and_then(|t| {
                        t.fmt(aws_sdk_ec2::primitives::DateTimeFormat::DateTime)
                            .ok()
                    }),
                    expires_at: tag(TAG_EXPIRES_AT),
                    launch: tag(TAG_LAUNCH),
                })
            })
            .filter(|o| o.instance.state != State::Terminated)
            .collect())
    }

    /// The instance a launch made, by its tag, in whatever state; preferably a live one.
    pub async fn find_launched(&self, launch_id: &str) -> Result<Option<Instance>, AwsError> {
        let found = self
            .ec2
            .describe_instances()
            .filters(tag_filter(TAG_LAUNCH, launch_id))
            .send()
            .await
            .explain(format_args!("look for the instance of launch {launch_id}"))?;
        let mut launched: Vec<Instance> = found
            .reservations()
            .iter()
            .flat_map(|r| r.instances())
            .filter_map(Instance::from_sdk)
            .collect();
        launched.sort_by_key(|i| !i.state.is_live());
        Ok(launched.into_iter().next())
    }

    pub async fn instance(&self, id: &str) -> Result<Instance> {
        self.lookup(id)
            .await?
            .with_context(|| format!("instance {id} no longer exists in {}", self.region))
    }

    /// The instance, or `None` if AWS does not know it (or does not show it yet).
    pub async fn lookup(&self, id: &str) -> Result<Option<Instance>, AwsError> {
        let found = match self.ec2.describe_instances().instance_ids(id).send().await {
            Err(e) if e.code() == Some("InvalidInstanceID.NotFound") => return Ok(None),
            found => found.explain(format_args!("describe instance {id}"))?,
        };
        Ok(found
            .reservations()
            .iter()
            .flat_map(|r| r.instances())
            .find_map(Instance::from_sdk))
    }

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
        // The image's own root volume, made deletable on termination (and resized if asked).
        let root_volume = match &request.image.root_volume {
            Some(root) => {
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
                Some(
                    BlockDeviceMapping::builder()
                        .device_name(&root.device)
                        .ebs(ebs)
                        .build(),
                )
            }
            None if request.volume_size.is_some() => {
                bail!(
                    "image {} has no EBS root volume to resize: drop --volume-size",
                    request.image.id
                )
            }
            None => None,
        };
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
            .set_instance_market_options(request.spot.map(|max_price| {
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
            }))
            .tag_specifications(tag_specification(ResourceType::Instance, &tags))
            .tag_specifications(tag_specification(ResourceType::Volume, request.tags))
            .client_token(request.client_token);
        Ok(run)
    }

    /// Keeps the `ssh-ec2:expires-at` tag in step with the dead-man switch a run re-arms;
    /// `None` removes it (no maximum lifetime).
    pub async fn set_expiry(&self, id: &str, expires_at: Option<&str>) -> Result<()> {
        let what = format_args!("update the {TAG_EXPIRES_AT} tag of instance {id}");
        match expires_at {
            Some(at) => {
                self.ec2
                    .create_tags()
                    .resources(id)
                    .tags(
                        aws_sdk_ec2::types::Tag::builder()
                            .key(TAG_EXPIRES_AT)
                            .value(at)
                            .build(),
                    )
                    .send()
                    .await
                    .explain(what)?;
            }
            None => {
                self.ec2
                    .delete_tags()
                    .resources(id)
                    .tags(
                        aws_sdk_ec2::types::Tag::builder()
                            .key(TAG_EXPIRES_AT)
                            .build(),
                    )
                    .send()
                    .await
                    .explain(what)?;
            }
        }
        Ok(())
    }

    pub async fn start(&self, id: &str) -> Result<()> {
        self.ec2
            .start_instances()
            .instance_ids(id)
            .send()
            .await
            .explain(format_args!("start instance {id}"))?;
        Ok(())
    }

    pub async fn stop(&self, id: &str) -> Result<()> {
        self.ec2
            .stop_instances()
            .instance_ids(id)
            .send()
            .await
            .explain(format_args!("stop instance {id}"))?;
        Ok(())
    }

    pub async fn terminate(&self, id: &str) -> Result<()> {
        self.despite_lag(id, "InvalidInstanceID.NotFound", async || {
            self.ec2
                .terminate_instances()
                .instance_ids(id)
                .send()
                .await
                .explain(format_args!("terminate instance {id}"))
        })
        .await?;
        Ok(())
    }

    /// Polls until the instance reaches `target`, or fails once `deadline` has passed or it
    /// lands somewhere it cannot come back from. A failed poll (throttled, or a new instance
    /// that AWS does not show yet) does not end the wait.
    pub async fn wait_until(&self, id: &str, target: State, deadline: Instant) -> Result<Instance> {
        let mut backoff = Backoff::new(Duration::from_secs(5));
        loop {
            let state = match self.lookup(id).await {
                Ok(Some(instance)) if instance.state == target => return Ok(instance),
                Ok(Some(instance)) => {
                    let dead_end = match target {
                        State::Running | State::Stopped => !instance.state.is_live(),
                        _ => false,
                    };
                    if dead_end {
                        bail!(
                            "instance {id} is {} instead of {}: look at its state reason in the \
                             EC2 console",
                            instance.state.as_str(),
                            target.as_str()
                        );
                    }
                    instance.state.as_str().to_string()
                }
                Ok(None) if self.may_be_invisible(id) => "not visible yet".to_string(),
                Ok(None) => bail!("instance {id} no longer exists in {}", self.region),
                Err(e) if e.inconclusive => {
                    tracing::debug!("polling {id}: {e}");
                    format!("unknown ({e})")
                }
                Err(e) => return Err(e.into()),
            };
            if Instant::now() >= deadline {
                bail!(
                    "instance {id} is still {state}, not {}, after waiting: check it in the EC2 \
                     console",
                    target.as_str()
                );
            }
            tokio::time::sleep(backoff.next_delay()).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use aws_sdk_ec2::types::Tag;

    fn tags(pairs: &[(&str, &str)]) -> Vec<Tag> {
        pairs
            .iter()
            .map(|(k, v)| Tag::builder().key(*k).value(*v).build())
            .collect()
    }

    #[test]
    fn an_instance_is_ours_by_exact_tags_and_machine_id_else_by_host_name() {
        let ours = Ownership {
            owner: "ppr".into(),
            machine: "0123abcd".into(),
            host: "laptop".into(),
            dir: "/w/exp?".into(),
        };
        let launched: Vec<Tag> = ours
            .tags()
            .into_iter()
            .map(|(k, v)| Tag::builder().key(k).value(v).build())
            .collect();
        assert!(ours.owns(&launched));
        let renamed = tags(&[
            (TAG_OWNER, "ppr"),
            (TAG_MACHINE, "0123abcd"),
            (TAG_HOST, "laptop.vpn"),
            (TAG_DIR, "/w/exp?"),
        ]);
        assert!(
            ours.owns(&renamed),
            "the host name changed, not the machine"
        );
        let legacy = tags(&[
            (TAG_OWNER, "ppr"),
            (TAG_HOST, "laptop"),
            (TAG_DIR, "/w/exp?"),
        ]);
        assert!(ours.owns(&legacy), "launched by the first version");
        let other_machine = tags(&[
            (TAG_OWNER, "ppr"),
            (TAG_MACHINE, "ffff0000"),
            (TAG_HOST, "laptop"),
            (TAG_DIR, "/w/exp?"),
        ]);
        assert!(
            !ours.owns(&other_machine),
            "same host name, another machine"
        );
        let wildcard_match = tags(&[
            (TAG_OWNER, "ppr"),
            (TAG_MACHINE, "0123abcd"),
            (TAG_DIR, "/w/exp1"),
        ]);
        assert!(!ours.owns(&wildcard_match));
        assert_eq!(filter_value(r"/w/a*b?c\d"), r"/w/a\*b\?c\\d");
    }

    #[test]
    fn an_expiry_in_the_past_has_passed_and_an_unreadable_one_has_not() {
        let instance = Instance {
            id: "i-1".into(),
            state: State::Stopped,
            instance_type: "g5.xlarge".into(),
            public_ip: None,
            private_ip: None,
            security_group: None,
            login_user: None,
            spot: false,
            zone: None,
        };
        let at = |expires_at: Option<&str>| Owned {
            instance: instance.clone(),
            region: "eu-central-1".into(),
            dir: None,
            host: None,
            this_machine: true,
            launched: None,
            expires_at: expires_at.map(str::to_string),
            launch: None,
        };
        assert!(at(Some("2020-01-01T00:00:00Z")).expired());
        assert!(!at(Some("2999-01-01T00:00:00Z")).expired());
        assert!(!at(Some("tomorrow")).expired());
        assert!(!at(None).expired());
    }

    #[test]
    fn ssh_goes_to_the_public_ip_else_the_private_one() {
        let mut instance = Instance {
            id: "i-1".into(),
            state: State::Running,
            instance_type: "g4dn.xlarge".into(),
            public_ip: Some("54.1.2.3".into()),
            private_ip: Some("172.31.0.9".into()),
            security_group: None,
            login_user: None,
            spot: false,
            zone: None,
        };
        assert_eq!(instance.address(), Some("54.1.2.3"));
        instance.public_ip = None;
        assert_eq!(
            instance.address(),
            Some("172.31.0.9"),
            "a private subnet, over a VPN"
        );
    }
}
