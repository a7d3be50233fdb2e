//! What terminated instances leave behind: their security groups and a cluster's placement
//! group, which AWS refuses to delete until the instances are `terminated`, tens of seconds to
//! minutes after TerminateInstances. The user's prompt does not wait for that bookkeeping: the
//! run tries once, and hands what AWS still holds to a helper, ssh-ec2 itself detached from
//! the terminal, which tries again until AWS lets go (or gives up after `TRANSITION_TIMEOUT`,
//! saying why in the state directory's `release.log`). `--gc` finds and deletes what it could
//! not.
//!
//! Chosen over a security group that outlives its instances (one per region and machine, its
//! /32 kept current): a cluster's own group and placement group must still go with the
//! cluster; one instance's `--ssh-cidr` would open every instance of this machine; and each
//! instance keeps a group of its own that goes with it, so that "nothing is left" stays a
//! plain check.

use std::ffi::OsString;
use std::time::Duration;

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

use super::end_of_life::TRANSITION_TIMEOUT;
use crate::cloud::{Account, Cloud, Instance};
use crate::poll::Poll;
use crate::printer::{Printer, Verbosity};
use crate::state::Store;
use crate::status::ExitStatus;

/// The helper's entry point: `ssh-ec2 --release-groups JSON` (see `main`).
pub const HELPER_FLAG: &str = "--release-groups";

/// What AWS still holds of terminated instances, in one region.
#[derive(Debug, Default, Clone, PartialEq, Serialize, Deserialize)]
pub struct Held {
    pub region: String,
    /// The AWS profile to act with (it may come from `.env`, which the SDK does not read).
    pub profile: Option<String>,
    /// The instance's own security group (a cluster's head's).
    pub ssh_group: Option<String>,
    /// A cluster's own security group.
    pub node_group: Option<String>,
    pub placement_group: Option<String>,
}

impl Held {
    pub fn is_empty(&self) -> bool {
        self.said().is_empty()
    }

    /// What is held, for the user: "security group sg-1, placement group p".
    pub fn said(&self) -> String {
        let groups = [&self.ssh_group, &self.node_group].into_iter().flatten();
        (groups.map(|group| format!("security group {group}")))
            .chain((self.placement_group.iter()).map(|name| format!("placement group {name}")))
            .collect::<Vec<_>>()
            .join(", ")
    }

    /// What terminating `nodes` (one instance, or a cluster's, the head first) in `cloud`'s
    /// region leaves to delete.
    pub fn left_by(nodes: &[Instance], cloud: &Cloud) -> Held {
        Held {
            region: cloud.region.clone(),
            profile: cloud.profile.clone(),
            ..Held::of(&nodes[0])
        }
    }

    /// The groups of a cluster's head (or a lone instance), in no region yet.
    fn of(head: &Instance) -> Held {
        Held {
            ssh_group: head.security_group.clone(),
            node_group: head.node_group.clone(),
            placement_group: head.placement_group.clone(),
            ..Held::default()
        }
    }
}

/// Tries once to delete each of `held`, all at once (one round trip); what AWS still holds.
pub async fn release_once(cloud: &Cloud, held: &Held) -> Result<Held> {
    let group = async |group: &Option<String>| match group {
        Some(group) => cloud.try_delete_ssh_group(group).await,
        None => Ok(true),
    };
    let placement = async {
        match &held.placement_group {
            Some(name) => cloud.try_delete_placement_group(name).await,
            None => Ok(true),
        }
    };
    let (ssh, nodes, placement) =
        tokio::join!(group(&held.ssh_group), group(&held.node_group), placement);
    Ok(Held {
        ssh_group: still(&held.ssh_group, ssh)?,
        node_group: still(&held.node_group, nodes)?,
        placement_group: still(&held.placement_group, placement)?,
        ..held.clone()
    })
}

/// `what`, unless one try deleted it (`gone`).
fn still(what: &Option<String>, gone: Result<bool>) -> Result<Option<String>> {
    Ok(if gone? { None } else { what.clone() })
}

/// Starts the helper that deletes `held` once AWS lets go of it; it outlives this process.
pub fn hand_over(held: &Held, store: &Store) -> Result<()> {
    let exe = std::env::current_exe().context("cannot find ssh-ec2's own program")?;
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(store.release_log())
        .context("cannot open the state directory's release.log")?;
    let encoded = serde_json::to_string(held).context("cannot encode what is left to delete")?;
    std::process::Command::new(exe)
        .arg(HELPER_FLAG)
        .arg(encoded)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(log)
        .spawn()
        .context("cannot start the helper that deletes the groups")?;
    Ok(())
}

/// The helper: deletes what it was handed once AWS lets go of it. It leaves the terminal's
/// session first, so that closing the terminal or Ctrl-C in it does not end it.
pub fn helper_main(args: &[OsString]) -> ExitStatus {
    let _ = nix::unistd::setsid();
    let printer = Printer::new(Verbosity::Quiet);
    let held = (args.first().and_then(|a| a.to_str()))
        .context("no groups given")
        .and_then(|json| serde_json::from_str::<Held>(json).context("unreadable groups"));
    let released = match held {
        Ok(held) => tokio::runtime::Runtime::new()
            .context("cannot start the async runtime")
            .and_then(|runtime| runtime.block_on(connect_and_release(&held))),
        Err(e) => Err(e),
    };
    match released {
        Ok(()) => ExitStatus::Success,
        Err(e) => {
            printer.error(&e.context(format!(
                "{} (the helper that deletes what terminated instances leave gave up): \
                 `ssh-ec2 --gc --yes` deletes what is left",
                now()
            )));
            ExitStatus::Failed
        }
    }
}

/// The helper's work, with the account and region it was handed.
async fn connect_and_release(held: &Held) -> Result<()> {
    let account = Account {
        region: Some(held.region.clone()),
        profile: held.profile.clone(),
    };
    release(&Cloud::connect(&account).await, held).await
}

/// Tries again until nothing is held, for as long as an instance may take to terminate.
pub async fn release(cloud: &Cloud, held: &Held) -> Result<()> {
    let mut poll = Poll::every(Duration::from_secs(10)).within(TRANSITION_TIMEOUT);
    let mut held = held.clone();
    loop {
        held = release_once(cloud, &held).await?;
        if held.is_empty() {
            return Ok(());
        }
        if !poll.wait().await? {
            anyhow::bail!(
                "{} in {} still in use after {} minutes",
                held.said(),
                held.region,
                TRANSITION_TIMEOUT.as_secs() / 60
            );
        }
    }
}

/// The time now, for the log.
fn now() -> String {
    let now = aws_sdk_ec2::primitives::DateTime::from(std::time::SystemTime::now());
    now.fmt(aws_sdk_ec2::primitives::DateTimeFormat::DateTime)
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cloud::State;

    #[test]
    fn a_clusters_head_leaves_both_its_groups_and_its_placement_group() {
        let head = Instance {
            security_group: Some("sg-ssh".into()),
            node_group: Some("sg-nodes".into()),
            placement_group: Some("ssh-ec2-l".into()),
            ..Instance::example("i-1", State::Running)
        };
        let held = Held {
            region: String::new(),
            profile: None,
            ssh_group: Some("sg-ssh".into()),
            node_group: Some("sg-nodes".into()),
            placement_group: Some("ssh-ec2-l".into()),
        };
        assert_eq!(Held::of(&head), held);
        assert_eq!(
            held.said(),
            "security group sg-ssh, security group sg-nodes, placement group ssh-ec2-l"
        );
        let alone = Held::of(&Instance::example("i-2", State::Running));
        assert!(alone.is_empty());
        assert_eq!(alone.said(), "");
    }
}
