//! What `--gc` found, one line per leftover.

use super::{Leftovers, Why, show};
use crate::cloud::State;

/// One line per leftover.
pub(super) fn report(found: &Leftovers, owner: &str) -> String {
    let mut lines = Vec::new();
    for (nodes, why) in &found.instances {
        let owned = &nodes[0];
        let i = &owned.instance;
        let reason = match why {
            Why::KeysGone => "its keys are gone from this machine",
            Why::Expired | Why::ExpiredWithHome => "its expiry passed",
        };
        let results = match (i.state, why) {
            (State::Pending | State::ShuttingDown | State::Terminated, _) => "",
            (_, Why::ExpiredWithHome) => {
                "; its results come home to its directory first, as `ssh-ec2 --down` there does"
            }
            (_, Why::Expired) => {
                "; may hold results not brought home, and its directory is gone from this machine"
            }
            (_, Why::KeysGone) => {
                "; may hold results not brought home, which cannot be pulled from here"
            }
        };
        let ids: Vec<&str> = nodes.iter().map(|n| n.instance.id.as_str()).collect();
        let what = match ids.len() {
            1 => format!("instance {}", i.id),
            n => format!("cluster of {n} nodes {}", ids.join(", ")),
        };
        lines.push(format!(
            "{what} ({}, {}) of {}: {reason}{results}",
            owned.region,
            i.state.as_str(),
            show(&owned.dir)
        ));
    }
    for (region, group) in &found.groups {
        lines.push(format!(
            "security group {} ({}, {region}) of {}: no instance uses it",
            group.id,
            group.name,
            show(&group.dir)
        ));
    }
    for (region, placement) in &found.placement_groups {
        lines.push(format!(
            "placement group {} ({region}) of {}: no instance is in it",
            placement.name,
            show(&placement.dir)
        ));
    }
    for launch in &found.launches {
        let sent = match launch.sent {
            Some(_) => "its instance, if any, is terminated",
            None => "it launched nothing",
        };
        lines.push(format!(
            "launch {} ({}) of {}: unfinished (its run ended first); {sent}",
            launch.id, launch.region, launch.dir
        ));
    }
    for (path, why) in &found.local {
        lines.push(format!("local state {}: {why}", path.display()));
    }
    for skipped in &found.skipped {
        lines.push(format!("left alone: {skipped}"));
    }
    if found.from_elsewhere > 0 {
        lines.push(format!(
            "left alone: {} instances of {owner} launched from other machines \
             (`ssh-ec2 --list` shows them; --gc there cleans them)",
            found.from_elsewhere
        ));
    }
    lines.iter().map(|line| format!("{line}\n")).collect()
}
