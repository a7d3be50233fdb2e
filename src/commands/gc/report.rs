//! What `--gc` found, one line per leftover.

use super::{Leftovers, Why, show};
use crate::cloud::State;

/// One line per leftover.
pub(super) fn report(found: &Leftovers, owner: &str) -> String {
    let mut lines = Vec::new();
    for (owned, why) in &found.instances {
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
        lines.push(format!(
            "instance {} ({}, {}) of {}: {reason}{results}",
            i.id,
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
    if found.locks > 0 {
        lines.push(format!("{} lock files that no run holds", found.locks));
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
