//! The instance that belongs to a directory: finding it, and moving it between states.

use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use aws_sdk_ec2::error::ProvideErrorMetadata;
use aws_sdk_ec2::types::{Filter, InstanceLifecycleType, InstanceStateName};

use super::tags::{
    Owner, Ownership, TAG_DIR, TAG_EXPIRES_AT, TAG_HOST, TAG_LAUNCH, TAG_NODE_GROUP, TAG_NODES,
    TAG_OWNER, TAG_SECURITY_GROUP, TAG_USER, tag_filter, tag_of,
};
use super::{AwsError, AwsResultExt, Cloud};
use crate::poll::Poll;

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
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

#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
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
    /// The launch that made it (see fleet::journal): a cluster's nodes share it.
    pub launch: Option<String>,
    /// Which node of its launch it is: rank 0 of 1 alone, else a cluster's.
    pub node: Node,
    /// A cluster's own security group, on every node.
    pub node_group: Option<String>,
    /// A cluster's placement group.
    pub placement_group: Option<String>,
    /// When it last started running (EC2's launch time; a start after a stop moves it).
    pub running_since: Option<std::time::SystemTime>,
    /// When it ends itself, ISO 8601 (its `ssh-ec2:expires-at` tag).
    pub expires_at: Option<String>,
}

/// An instance's place in the launch that made it: EC2's launch index among the launch's count.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Node {
    pub rank: u32,
    pub of: u32,
}

impl Instance {
    pub(super) fn from_sdk(instance: &aws_sdk_ec2::types::Instance) -> Option<Instance> {
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
            launch: tag(TAG_LAUNCH).map(str::to_string),
            node: Node {
                rank: instance.ami_launch_index().unwrap_or(0).max(0) as u32,
                of: tag(TAG_NODES).and_then(|n| n.parse().ok()).unwrap_or(1),
            },
            node_group: tag(TAG_NODE_GROUP).map(str::to_string),
            placement_group: (instance.placement())
                .and_then(|p| p.group_name())
                .filter(|name| !name.is_empty())
                .map(str::to_string),
            running_since: (instance.launch_time()).and_then(|t| (*t).try_into().ok()),
            expires_at: tag(TAG_EXPIRES_AT).map(str::to_string),
        })
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

impl Cloud {
    /// The live (not terminated) instance tagged as this directory's, if any.
    /// The nodes of this directory's instance (one, or a cluster's), in rank order; none when it
    /// has none.
    pub async fn find_owned(&self, owner: &Ownership) -> Result<Vec<Instance>> {
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
        for (key, value) in [(TAG_OWNER, &owner.owner.name), (TAG_DIR, &owner.dir)] {
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
        // A running one is the cheapest to reuse; a cluster is reused whole.
        owned.sort_by_key(|i| (i.state != State::Running, i.node.rank));
        let Some(chosen) = owned.first().map(|i| i.launch.clone()) else {
            return Ok(Vec::new());
        };
        owned.retain(|i| i.launch == chosen);
        owned.sort_by_key(|i| i.node.rank);
        Ok(owned)
    }

    /// Every instance of `owner` not terminated yet, from any machine and directory.
    pub async fn owner_instances(&self, owner: &Owner) -> Result<Vec<Owned>> {
        let found = self
            .ec2
            .describe_instances()
            .filters(tag_filter(TAG_OWNER, &owner.name))
            .send()
            .await
            .explain(format_args!("list your instances in {}", self.region))?;
        Ok(found
            .reservations()
            .iter()
            .flat_map(|r| r.instances())
            .filter(|i| owner.same_owner(i.tags()))
            .filter_map(|i| {
                let tag = |key| tag_of(i.tags(), key).map(str::to_string);
                Some(Owned {
                    instance: Instance::from_sdk(i)?,
                    region: self.region.clone(),
                    dir: tag(TAG_DIR),
                    host: tag(TAG_HOST),
                    this_machine: owner.same_machine(i.tags()),
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
    /// The instances of launch `launch_id` (a cluster's nodes), live ones in rank order first.
    pub async fn find_launched(&self, launch_id: &str) -> Result<Vec<Instance>, AwsError> {
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
        launched.sort_by_key(|i| (!i.state.is_live(), i.node.rank));
        Ok(launched)
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

    /// Keeps the `ssh-ec2:expires-at` tag in step with the dead-man switch a run re-arms;
    /// `None` removes it (no maximum lifetime).
    pub async fn set_expiry(&self, ids: &[&str], expires_at: Option<&str>) -> Result<()> {
        let names = ids.join(", ");
        let what = format_args!("update the {TAG_EXPIRES_AT} tag of {names}");
        let ids = Some(ids.iter().map(|id| id.to_string()).collect());
        let tag = aws_sdk_ec2::types::Tag::builder().key(TAG_EXPIRES_AT);
        match expires_at {
            Some(at) => {
                (self.ec2.create_tags().set_resources(ids))
                    .tags(tag.value(at).build())
                    .send()
                    .await
                    .explain(what)?;
            }
            None => {
                (self.ec2.delete_tags().set_resources(ids))
                    .tags(tag.build())
                    .send()
                    .await
                    .explain(what)?;
            }
        }
        Ok(())
    }

    pub async fn start(&self, ids: &[&str]) -> Result<()> {
        self.ec2
            .start_instances()
            .set_instance_ids(Some(owned(ids)))
            .send()
            .await
            .explain(format_args!("start {}", ids.join(", ")))?;
        Ok(())
    }

    pub async fn stop(&self, ids: &[&str]) -> Result<()> {
        self.ec2
            .stop_instances()
            .set_instance_ids(Some(owned(ids)))
            .send()
            .await
            .explain(format_args!("stop {}", ids.join(", ")))?;
        Ok(())
    }

    pub async fn terminate(&self, ids: &[&str]) -> Result<()> {
        let first = ids.first().copied().unwrap_or_default();
        self.despite_lag(first, "InvalidInstanceID.NotFound", async || {
            self.ec2
                .terminate_instances()
                .set_instance_ids(Some(owned(ids)))
                .send()
                .await
                .explain(format_args!("terminate {}", ids.join(", ")))
        })
        .await?;
        Ok(())
    }

    /// Polls until the instance reaches `target`; fails past `deadline`, or where it cannot come
    /// back from. A failed poll (throttled, a new instance AWS does not show yet) goes on.
    pub async fn wait_until(&self, id: &str, target: State, deadline: Instant) -> Result<Instance> {
        // A run waits for `running`, late by half a step on average: two requests a second.
        let step = Duration::from_millis(if target == State::Running { 500 } else { 5000 });
        let mut poll = Poll::every(step).until(deadline);
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
            if !poll.wait().await? {
                bail!(
                    "instance {id} is still {state}, not {}, after waiting: check it in the EC2 \
                     console",
                    target.as_str()
                );
            }
        }
    }
}

#[cfg(test)]
impl Instance {
    /// One instance alone, with nothing but its id and state known.
    pub fn example(id: &str, state: State) -> Instance {
        Instance {
            id: id.into(),
            state,
            instance_type: "g5.xlarge".into(),
            public_ip: None,
            private_ip: None,
            security_group: None,
            login_user: None,
            spot: false,
            zone: None,
            launch: None,
            node: Node { rank: 0, of: 1 },
            node_group: None,
            running_since: None,
            placement_group: None,
            expires_at: None,
        }
    }
}

fn owned(ids: &[&str]) -> Vec<String> {
    ids.iter().map(|id| id.to_string()).collect()
}

#[cfg(test)]
mod tests;
