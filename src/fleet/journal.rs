//! The launch journal. Before a launch creates anything, its record is written to the state
//! directory, beside the new instance's keys (`instances/pending-<launch id>/launch.json`). It
//! stays until the instance is adopted (the directory becomes `instances/<instance id>`) or
//! until everything the launch made is gone. So a lost RunInstances answer, a crash or a
//! SIGKILL never orphans an instance or its security group: the same run, or the next run in
//! the same directory, finds the instance by its `ssh-ec2:launch` tag, then adopts or ends it.
//! The records hold all it takes to do that without the run's settings (for a later `--gc`).

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

use super::end_of_life::TRANSITION_TIMEOUT;
use crate::cloud::{Cloud, GROUP_PREFIX, Instance, State, VISIBILITY_LAG};
use crate::poll::Poll;
use crate::printer::Printer;
use crate::state::Store;

#[derive(Debug, Serialize, Deserialize)]
pub struct Launch {
    /// Random. The instance's `ssh-ec2:launch` tag, and part of its client tokens and of its
    /// security group's name.
    pub id: String,
    pub region: String,
    /// The local directory the instance is for (its `ssh-ec2:dir` tag).
    pub dir: String,
    /// The security group's id, once it is created.
    pub group: Option<String>,
    /// The CIDR its tcp/22 rule lets in, once it is set.
    #[serde(default)]
    pub ingress: Option<ipnet::IpNet>,
    /// How many nodes it launches together (a cluster's).
    #[serde(default = "one")]
    pub nodes: u32,
    /// A cluster's own security group, once it is created.
    #[serde(default)]
    pub node_group: Option<String>,
    /// A cluster's placement group, once it is created.
    #[serde(default)]
    pub placement_group: Option<String>,
    /// When RunInstances was last sent, in seconds since the Unix epoch: until VISIBILITY_LAG
    /// after it, AWS may not show the instance yet. `None`: never sent, so no instance exists.
    pub sent: Option<u64>,
    /// The AWS account of the credentials that launched it, when STS said: only with that
    /// account's credentials can AWS's silence about the instance mean it is gone.
    #[serde(default)]
    pub account: Option<String>,
}

fn one() -> u32 {
    1
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

impl Launch {
    pub fn new(region: &str, dir: &str, nodes: u32, account: Option<String>) -> Launch {
        Launch {
            id: format!("{:032x}", rand::random::<u128>()),
            region: region.to_string(),
            dir: dir.to_string(),
            group: None,
            ingress: None,
            nodes,
            node_group: None,
            placement_group: None,
            sent: None,
            account,
        }
    }

    /// How long ago RunInstances was last sent; `None` if never, or if the clock went back.
    pub fn sent_ago(&self) -> Option<Duration> {
        let sent = self.sent?;
        now().checked_sub(sent).map(Duration::from_secs)
    }

    /// Ours alone, so that a creation retried after a lost answer finds the group it made.
    pub fn group_name(&self) -> String {
        format!("{GROUP_PREFIX}{}", self.id)
    }

    /// A cluster's own security group: its name, ours alone.
    pub fn node_group_name(&self) -> String {
        format!("{GROUP_PREFIX}{}-nodes", self.id)
    }

    /// A cluster's placement group: its name, ours alone.
    pub fn placement_group_name(&self) -> String {
        format!("{GROUP_PREFIX}{}", self.id)
    }

    /// RunInstances' idempotency token for the attempt `n`: each attempt (another zone or type)
    /// needs its own, since EC2 refuses a token again with other parameters.
    pub fn client_token(&self, n: usize) -> String {
        format!("ssh-ec2-{}-{n}", self.id)
    }

    pub fn save(&self, store: &Store) -> Result<()> {
        let record = serde_json::to_string_pretty(self).context("cannot encode a launch record")?;
        store.record_launch(&self.id, &record)
    }

    /// Records that RunInstances is about to be sent (again).
    pub fn sending(&mut self, store: &Store) -> Result<()> {
        self.sent = Some(now());
        self.save(store)
    }

    /// Its instances (a cluster's nodes), in whatever state. AWS may not show a new instance at
    /// once, so "none" is only the answer once VISIBILITY_LAG has passed since the launch was
    /// sent; a failed look (throttled, network) is tried again meanwhile.
    pub async fn find_instances(&self, cloud: &Cloud) -> Result<Vec<Instance>> {
        if self.sent.is_none() {
            return Ok(Vec::new());
        }
        let settles_in = VISIBILITY_LAG.saturating_sub(self.sent_ago().unwrap_or_default());
        let mut poll = Poll::every(Duration::from_secs(5)).within(settles_in);
        loop {
            match cloud.find_launched(&self.id).await {
                Ok(instances) if !instances.is_empty() => {
                    for instance in &instances {
                        cloud.note_created(&instance.id);
                    }
                    return Ok(instances);
                }
                Ok(_) if !poll.wait().await? => return Ok(Vec::new()),
                Err(e) if !e.inconclusive || !poll.wait().await? => return Err(e.into()),
                _ => {}
            }
        }
    }

    /// Ends what it made at once (a second signal during the launch): its instances, if AWS
    /// shows them already, are terminated, then its groups, keys and record go. One that AWS does
    /// not show yet stays in the journal, for the next run here (or `--gc`) to find and end.
    pub async fn end_now(&self, cloud: &Cloud, store: &Store, printer: &Printer) -> Result<()> {
        if self.sent.is_none() {
            return self.abandon(cloud, store).await;
        }
        let instances = cloud.find_launched(&self.id).await?;
        if instances.len() < self.nodes as usize {
            // Those it shows end now; the record stays for the others.
            terminate_live(cloud, &instances).await?;
            printer.warn(&format!(
                "not every instance of launch {} is visible yet: the next run here, or `ssh-ec2 \
                 --gc --yes`, looks for them again and terminates them",
                self.id
            ));
            return Ok(());
        }
        let ids = ids(&instances).join(", ");
        let phase = printer.phase(format!("terminating {ids}, which the launch made"));
        self.end_instances(cloud, store, &instances).await?;
        phase.done(format!("terminated {ids}"));
        Ok(())
    }

    /// Terminates its instances (unless ended already) and waits until they are, then abandons
    /// it.
    async fn end_instances(
        &self,
        cloud: &Cloud,
        store: &Store,
        instances: &[Instance],
    ) -> Result<()> {
        terminate_live(cloud, instances).await?;
        for id in ids(instances) {
            cloud
                .wait_until(id, State::Terminated, Instant::now() + TRANSITION_TIMEOUT)
                .await?;
        }
        self.abandon(cloud, store).await
    }

    /// Deletes its security groups and placement group (those it made), then its keys and
    /// record. If one cannot be deleted, the record stays, for the next run here to try again.
    pub async fn abandon(&self, cloud: &Cloud, store: &Store) -> Result<()> {
        // A creation may have happened with the answer lost, or a crash right after.
        let made = [
            (&self.group, self.group_name()),
            (&self.node_group, self.node_group_name()),
        ];
        for (recorded, name) in made {
            let group = match recorded {
                Some(group) => Some(group.clone()),
                None => cloud.group_named(&name).await?,
            };
            if let Some(group) = group {
                cloud.delete_ssh_group(&group).await?;
            }
        }
        if self.nodes > 1 {
            cloud
                .delete_placement_group(&self.placement_group_name())
                .await?;
        }
        store.discard_launch(&self.id);
        Ok(())
    }
}

/// Settles the launches of earlier runs in this directory that never adopted their instance
/// (killed, or their answer lost). An instance in this run's region is adopted and returned: it
/// never ran anything, so the run uses it as if it had launched it (its ids are returned). Any
/// other is terminated, and what each launch made deleted.
pub async fn settle(
    cloud: &Cloud,
    dir: &str,
    store: &Store,
    printer: &Printer,
) -> Result<Vec<String>> {
    let pending: Vec<Launch> = unfinished(store)
        .into_iter()
        // Other directories' launches may belong to runs going on right now.
        .filter(|launch| launch.dir == dir)
        .collect();
    let mut adopted = Vec::new();
    for launch in pending {
        let here = launch.region == cloud.region;
        let there = cloud.in_region(&launch.region);
        let settled = settle_one(&there, &launch, here && adopted.is_empty(), store, printer)
            .await
            .with_context(|| {
                format!(
                    "an earlier run here left launch {} in {} unfinished: run again to settle it",
                    launch.id, launch.region
                )
            })?;
        adopted.extend(settled);
    }
    Ok(adopted)
}

/// The record of the launch that made `instance_id`, kept with its keys; `None` for one
/// launched by an earlier version, which kept no record once the instance was adopted.
pub fn launched(store: &Store, instance_id: &str) -> Option<Launch> {
    serde_json::from_str(&store.launched_record(instance_id)?).ok()
}

/// The launches recorded here whose instances were never adopted, from every directory.
pub fn unfinished(store: &Store) -> Vec<Launch> {
    store
        .launch_records()
        .iter()
        .filter_map(|record| serde_json::from_str(record).ok())
        .collect()
}

/// Ends what an unfinished launch made (for `--gc`): its instance, if any, is terminated, and
/// its security group, keys and record removed. `cloud` is in the launch's region.
pub async fn end(cloud: &Cloud, launch: &Launch, store: &Store, printer: &Printer) -> Result<()> {
    settle_one(cloud, launch, false, store, printer)
        .await
        .map(drop)
}

async fn settle_one(
    cloud: &Cloud,
    launch: &Launch,
    may_adopt: bool,
    store: &Store,
    printer: &Printer,
) -> Result<Vec<String>> {
    let phase = printer.phase(format!(
        "looking for what an earlier run here launched before it ended ({})",
        launch.id
    ));
    let instances = launch.find_instances(cloud).await?;
    let ids = ids(&instances);
    if instances.is_empty() {
        launch.abandon(cloud, store).await?;
        phase.done(format!(
            "an earlier run here ended before its instance existed: removed what it left ({})",
            launch.id
        ));
        return Ok(Vec::new());
    }
    let whole = instances.len() == launch.nodes as usize;
    if may_adopt && whole && instances.iter().all(|i| i.state.is_live()) {
        store.adopt_launch(&launch.id, &ids)?;
        phase.done(format!(
            "adopted {}, launched by an earlier run here that ended before using it",
            ids.join(", ")
        ));
        return Ok(ids.iter().map(|id| id.to_string()).collect());
    }
    phase.update(format!(
        "terminating {} in {}, launched by an earlier run here",
        ids.join(", "),
        cloud.region
    ));
    launch.end_instances(cloud, store, &instances).await?;
    phase.done(format!(
        "terminated {} in {}, launched by an earlier run here that ended before using it",
        ids.join(", "),
        cloud.region
    ));
    Ok(Vec::new())
}

fn ids(instances: &[Instance]) -> Vec<&str> {
    instances.iter().map(|i| i.id.as_str()).collect()
}

async fn terminate_live(cloud: &Cloud, instances: &[Instance]) -> Result<()> {
    let live: Vec<&str> = (instances.iter())
        .filter(|i| i.state.is_live())
        .map(|i| i.id.as_str())
        .collect();
    if !live.is_empty() {
        cloud.terminate(&live).await?;
    }
    Ok(())
}
